// The runnable example examples/realtime-client/client.mjs, run as its README says,
// over WebSocket and over long-poll, against `converger serve` with a fresh tenant.
//
// The script is copied next to this suite's node_modules, so it runs with the same
// pinned phoenix and ws as the other suites (and the example pins the same versions).
//
// Run: cd tests/js && npm ci && CONVERGER_BIN=$PWD/../../target/debug/converger node --test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { killServer, server, startServer } from "./support.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const exampleDir = path.resolve(here, "../../examples/realtime-client");
const runDir = path.join(here, ".example");

describe("examples/realtime-client", { timeout: 2 * 60_000 }, () => {
  before(async () => {
    await startServer();
    fs.mkdirSync(runDir, { recursive: true });
    fs.copyFileSync(path.join(exampleDir, "client.mjs"), path.join(runDir, "client.mjs"));
  });

  after(() => {
    killServer();
    fs.rmSync(runDir, { recursive: true, force: true });
    if (server.dir) fs.rmSync(server.dir, { recursive: true, force: true });
  });

  it("pins the client versions these suites test", () => {
    const example = JSON.parse(fs.readFileSync(path.join(exampleDir, "package.json"), "utf8"));
    const tested = JSON.parse(fs.readFileSync(path.join(here, "package.json"), "utf8"));
    assert.deepEqual(example.dependencies, tested.devDependencies);
  });

  for (const [flag, name] of [[[], "WebSocket"], [["--longpoll"], "long-poll"]]) {
    it(`receives both messages over ${name}`, { timeout: 60_000 }, async () => {
      const { stdout } = await promisify(execFile)(process.execPath, ["client.mjs", ...flag], {
        cwd: runDir,
        env: { ...process.env, CONVERGER_URL: server.base, CONVERGER_API_KEY: server.key },
        timeout: 30_000,
      });
      assert.match(stdout, new RegExp(`joined over ${name} \\(last_seq 0\\)`));
      assert.match(stdout, /new_activity #1 app \(outbound\): Hello from the REST API/);
      assert.match(stdout, /new_activity #2 demo-user \(inbound\): Hello from the socket/);
      assert.match(stdout, /push accepted: activity \S+, seq 2/);
    });
  }
});
