// Helpers shared by the Node suites that run their own `converger serve`: a server on
// a free loopback port over a temporary SQLite file with one tenant (created with the
// CLI), REST calls with its API key, and waits bounded in time.

import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.CONVERGER_BIN || path.resolve(here, "../../target/debug/converger");

/** Bound on any single wait for the server or the client. */
export const WAIT_MS = 15_000;

// ------------------------------------------------------------------ helpers

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Calls `fn` until it returns a truthy value, at most `timeoutMs`. */
export async function until(what, fn, timeoutMs = WAIT_MS, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${detail}`);
    }
    await sleep(everyMs);
  }
}

/** A promise settled by the callbacks of a phoenix `Push` (join, push, leave). */
export function outcome(push, timeoutMs = WAIT_MS) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ status: "test_timeout" }), timeoutMs);
    const done = (status) => (response) => {
      clearTimeout(timer);
      resolve({ status, response });
    };
    push.receive("ok", done("ok")).receive("error", done("error")).receive("timeout", done("timeout"));
  });
}

// ------------------------------------------------------------------ server and REST

export const server = { proc: null, dir: null, port: 0, base: "", socketBase: "", key: "", log: [], env: null };

export function killServer() {
  if (server.proc && server.proc.exitCode === null && server.proc.signalCode === null) {
    server.proc.kill("SIGKILL");
  }
}
process.on("exit", killServer);

async function serve() {
  server.proc = spawn(BIN, ["serve"], { env: server.env, stdio: ["ignore", "pipe", "pipe"] });
  for (const stream of [server.proc.stdout, server.proc.stderr]) {
    stream.setEncoding("utf8");
    stream.on("data", (d) => server.log.push(d));
  }
  const proc = server.proc;
  await until("the server to answer /health", async () => {
    if (proc.exitCode !== null) throw new Error(`converger exited: ${server.log.join("")}`);
    return (await fetch(`${server.base}/health`)).ok;
  });
}

/** Starts the server with `extraEnv`; `stop` with [killServer]. */
export async function startServer(extraEnv = {}) {
  assert.ok(fs.existsSync(BIN), `converger binary not found at ${BIN} (set CONVERGER_BIN)`);
  server.dir = fs.mkdtempSync(path.join(os.tmpdir(), "converger-js-"));
  server.port = await freePort();
  server.env = {
    ...process.env,
    CONVERGER_DATABASE_URL: `sqlite://${path.join(server.dir, "x.db")}`,
    CONVERGER_JWT_SECRET: "phoenix-longpoll-test-secret-0123456789abcdef",
    CONVERGER_LISTEN: `127.0.0.1:${server.port}`,
    CONVERGER_PUBLIC_URL: `http://127.0.0.1:${server.port}`,
    RUST_LOG: "warn",
    ...extraEnv,
  };
  // Tenant commands use an existing database only: create it first.
  await promisify(execFile)(BIN, ["migrate"], { env: server.env, timeout: WAIT_MS });
  const { stdout } = await promisify(execFile)(BIN, ["tenant", "create", "js"], { env: server.env, timeout: WAIT_MS });
  const keyLine = stdout.split("\n").find((l) => /^api key\s/.test(l));
  assert.ok(keyLine, `no "api key" line in the output of tenant create:\n${stdout}`);
  server.key = keyLine.replace(/^api key\s+/, "").trim();
  server.base = `http://127.0.0.1:${server.port}`;
  // What a browser app passes to `new Socket(...)`; the client derives both endpoints.
  server.socketBase = `ws://127.0.0.1:${server.port}/socket`;
  await serve();
}

/** Stops the server gracefully (SIGTERM) and starts it again on the same port and data. */
export async function restartServer() {
  const proc = server.proc;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  proc.kill("SIGTERM");
  await exited;
  await serve();
}

/** A REST call with the tenant API key; returns the parsed body, checking the status. */
export async function api(method, route, body, expectStatus) {
  const res = await fetch(`${server.base}/api/v1${route}`, {
    method,
    headers: { "x-api-key": server.key, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const json = await res.json();
  if (expectStatus !== undefined) {
    assert.equal(res.status, expectStatus, `${method} ${route}: ${JSON.stringify(json)}`);
  } else {
    assert.ok(res.ok, `${method} ${route}: ${res.status} ${JSON.stringify(json)}`);
  }
  return json;
}

export const newConversation = async (channelId) =>
  (await api("POST", "/conversations", { channel_id: channelId }, 201)).data;

export const clientToken = async (conversationId, userId) =>
  (await api("POST", "/tokens", { conversation_id: conversationId, user_id: userId }, 201)).token;

export const postActivity = async (conversationId, text) =>
  (await api("POST", `/conversations/${conversationId}/activities`, { text }, 201)).data;

