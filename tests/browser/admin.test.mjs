// The operator's admin panel (/admin) in headless Chromium, clicked through as an
// operator would: tenants, channels (type-dependent fields, validation errors), routes,
// conversations, deliveries (failure, attempt log, retry), channel health (an open
// breaker, pause and resume), the live dashboard and its operational events, retry
// now of a delivery in backoff, editing a channel's config, replaying failures and
// the API reference page.
//
// It starts `converger serve` (CONVERGER_BIN, default ../../target/debug/converger)
// on a free loopback port with a temporary SQLite database, and a local HTTP sink that
// stands in for the webhook receiver. Screenshots of every page visited go to
// <repo>/test-artifacts/browser/NN-name.png.
//
// Run: cd tests/browser && npm ci && CONVERGER_BIN=$PWD/../../target/debug/converger node --test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, "../..");
const BIN = process.env.CONVERGER_BIN || path.resolve(here, "../../target/debug/converger");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const SHOTS = path.join(repoRoot, "test-artifacts", "browser");

/** Bound on any single wait for the UI or the server. */
const WAIT_MS = 15_000;

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Calls `fn` until it returns a truthy value, at most `timeoutMs`. */
async function until(what, fn, timeoutMs = WAIT_MS, everyMs = 200) {
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
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    }
    await sleep(everyMs);
  }
}

/** The local webhook receiver: answers `status` (with `retryAfter` as Retry-After when
 * set) and records requests. */
function startSink() {
  const sink = { status: 500, retryAfter: null, requests: [], server: null, url: "" };
  sink.server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const status = sink.status;
      sink.requests.push({ method: req.method, url: req.url, headers: req.headers, status, body: Buffer.concat(chunks).toString("utf8") });
      const headers = { "content-type": "text/plain" };
      if (sink.retryAfter) headers["retry-after"] = sink.retryAfter;
      res.writeHead(status, headers);
      res.end(status === 200 ? "ok" : "sink says no");
    });
  });
  return new Promise((resolve, reject) => {
    sink.server.on("error", reject);
    sink.server.listen(0, "127.0.0.1", () => {
      sink.url = `http://127.0.0.1:${sink.server.address().port}`;
      resolve(sink);
    });
  });
}

// ------------------------------------------------------------------ shared state

const S = {
  tmp: "",
  base: "",
  server: null,
  serverLog: "",
  sink: null,
  browser: null,
  context: null,
  page: null,
  consoleErrors: [],
  cspViolations: [],
  failedResponses: [],
  shot: 0,
  apiKey: "",
  botId: "",
  waId: "",
  conversationId: "",
  activityId: "",
  deliveryId: "",
  broken: false, // a step failed: later steps depend on it and are skipped
};

async function shoot(name) {
  S.shot += 1;
  const file = path.join(SHOTS, `${String(S.shot).padStart(2, "0")}-${name}.png`);
  await S.page.screenshot({ path: file, fullPage: true, timeout: WAIT_MS });
  return file;
}

/** Clicks something that loads a new document (link or form submit) and waits for it. */
async function clickAndLoad(locator) {
  const loaded = S.page.waitForEvent("load", { timeout: WAIT_MS });
  await locator.click();
  await loaded;
}

/** GET the admin page `p` as a typed URL would. */
async function visit(p) {
  const res = await S.page.goto(S.base + p, { waitUntil: "load", timeout: WAIT_MS });
  assert.ok(res && res.ok(), `GET ${p} answered ${res && res.status()}`);
  return res;
}

/** The REST API, as the tenant's application would call it (not the operator). */
async function api(method, p, body) {
  const res = await fetch(S.base + "/api/v1" + p, {
    method,
    headers: { "x-api-key": S.apiKey, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return json;
}

async function postActivity(text) {
  const r = await api("POST", `/conversations/${S.conversationId}/activities`, { text });
  return r.data;
}

/** The text of the `dd` following the `dt` named `label` in a `dl.facts`. */
async function fact(label) {
  const dd = S.page.locator(`dl.facts dt:text-is("${label}") + dd`);
  return (await dd.innerText({ timeout: WAIT_MS })).trim();
}

function assertPageClean(where) {
  assert.deepEqual(S.consoleErrors, [], `console errors (${where}); responses ≥ 400: ${JSON.stringify(S.failedResponses)}`);
  assert.deepEqual(S.cspViolations, [], `CSP violations (${where})`);
}

/** A step of the walk-through: skipped once an earlier one has failed. */
function step(name, fn) {
  it(name, { timeout: 90_000 }, async (t) => {
    if (S.broken) {
      t.skip("an earlier step failed");
      return;
    }
    try {
      await fn(t);
      assertPageClean(name);
    } catch (e) {
      S.broken = true;
      if (S.page) {
        try {
          await shoot("FAILED-" + name.replace(/[^a-z0-9]+/gi, "-").slice(0, 40));
        } catch {
          /* the page may be gone */
        }
      }
      throw e;
    }
  });
}

// ------------------------------------------------------------------ setup / teardown

describe("admin panel in headless Chromium", () => {
  before(async () => {
    assert.ok(fs.existsSync(BIN), `converger binary not found at ${BIN} (set CONVERGER_BIN)`);
    assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}`);
    fs.rmSync(SHOTS, { recursive: true, force: true });
    fs.mkdirSync(SHOTS, { recursive: true });
    S.tmp = fs.mkdtempSync(path.join(os.tmpdir(), "converger-browser-"));

    S.sink = await startSink();

    const port = await freePort();
    S.base = `http://127.0.0.1:${port}`;
    const env = {
      ...process.env,
      CONVERGER_DATABASE_URL: `sqlite://${path.join(S.tmp, "x.db")}`,
      CONVERGER_LISTEN: `127.0.0.1:${port}`,
      CONVERGER_PUBLIC_URL: S.base,
      CONVERGER_JWT_SECRET: "browser-test-secret-0123456789-abcdefghijklmnop",
      CONVERGER_DELIVERY_BACKOFF_SCALE: "0.001",
      // The test's receiver listens on loopback, which deliveries may not reach by default.
      CONVERGER_EGRESS_ALLOW: "127.0.0.0/8",
      RUST_LOG: "warn",
      NO_PROXY: "127.0.0.1,localhost",
      no_proxy: "127.0.0.1,localhost",
    };
    delete env.CONVERGER_ADMIN_PASSWORD;
    S.server = spawn(BIN, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
    const keep = (d) => {
      S.serverLog = (S.serverLog + d.toString()).slice(-20_000);
    };
    S.server.stdout.on("data", keep);
    S.server.stderr.on("data", keep);
    let exited = null;
    S.server.on("exit", (code, signal) => {
      exited = { code, signal };
    });
    await until(
      "the server to be ready",
      async () => {
        if (exited) throw new Error(`converger exited early (${JSON.stringify(exited)}):\n${S.serverLog}`);
        const r = await fetch(S.base + "/ready", { signal: AbortSignal.timeout(2000) });
        return r.ok;
      },
      30_000,
    );

    S.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    S.context = await S.browser.newContext({ viewport: { width: 1280, height: 800 } });
    S.page = await S.context.newPage();
    S.page.setDefaultTimeout(WAIT_MS);
    S.page.setDefaultNavigationTimeout(WAIT_MS);
    S.page.on("console", (m) => {
      if (m.type() !== "error") return;
      const where = m.location()?.url || "";
      S.consoleErrors.push(`${S.page.url()}: ${m.text()} (${where})`);
    });
    S.page.on("pageerror", (e) => S.consoleErrors.push(`${S.page.url()}: uncaught ${e.message}`));
    // Which resource a "Failed to load resource" console error is about.
    S.page.on("response", (r) => {
      if (r.status() >= 400) S.failedResponses.push(`${r.request().method()} ${r.url()} → ${r.status()}`);
    });
    // CSP violations, reported from inside each document (in addition to the
    // console messages Chromium prints for them).
    await S.page.exposeFunction("__cspViolation", (v) => S.cspViolations.push(v));
    await S.page.addInitScript(() => {
      document.addEventListener("securitypolicyviolation", (e) => {
        window.__cspViolation(`${e.documentURI}: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
      });
    });
  });

  after(async () => {
    const failed = S.broken;
    try {
      if (S.browser) await S.browser.close();
    } catch {
      /* already gone */
    }
    if (S.server && S.server.exitCode === null && S.server.signalCode === null) {
      S.server.kill("SIGTERM");
      const exited = once(S.server, "exit");
      const timer = sleep(5000).then(() => "timeout");
      if ((await Promise.race([exited, timer])) === "timeout") {
        S.server.kill("SIGKILL");
        await Promise.race([once(S.server, "exit"), sleep(2000)]);
      }
    }
    if (S.sink) {
      const closed = new Promise((r) => S.sink.server.close(() => r()));
      S.sink.server.closeAllConnections();
      await Promise.race([closed, sleep(2000)]);
    }
    if (failed && S.serverLog) console.error("converger log (tail):\n" + S.serverLog.slice(-4000));
    if (S.tmp) fs.rmSync(S.tmp, { recursive: true, force: true });
  });

  // ---------------------------------------------------------------- the walk-through

  step("1. dashboard loads with its numbers", async () => {
    await visit("/admin");
    const page = S.page;
    assert.match(await page.title(), /Dashboard/);
    for (const stat of ["pending", "delivered", "failed", "activities_last_minute"]) {
      const text = await page.locator(`[data-stat=${stat}]`).innerText();
      assert.match(text.trim(), /^\d+$/, `[data-stat=${stat}] shows a number`);
      assert.ok(await page.locator(`[data-stat=${stat}]`).isVisible());
    }
    assert.equal((await page.locator("[data-stat=delivered]").innerText()).trim(), "0");
    assert.equal(await page.locator("header nav a.on").innerText(), "Dashboard");
    await shoot("dashboard-empty");
  });

  step("2. tenants: create Acme, its API key is shown once", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Tenants" }));
    assert.match(page.url(), /\/admin\/tenants$/);
    await expectText(page.locator("td.empty"), "No tenants yet.");
    await shoot("tenants-empty");

    await page.getByLabel("New tenant").fill("Acme");
    await clickAndLoad(page.getByRole("button", { name: "Create tenant" }));
    const secret = page.locator(".secret");
    assert.ok(await secret.isVisible(), "the API key box is shown");
    assert.match(await secret.innerText(), /API key of Acme/);
    S.apiKey = (await secret.locator("input").inputValue()).trim();
    assert.ok(S.apiKey.length >= 20, `an API key is shown (${S.apiKey.length} chars)`);
    const row = page.locator("tbody tr", { hasText: "Acme" });
    assert.equal(await row.count(), 1);
    const prefix = (await row.locator("td.mono").nth(1).innerText()).replace("…", "").trim();
    assert.ok(prefix.length > 0 && S.apiKey.startsWith(prefix), `key prefix ${prefix} matches the key`);
    await expectText(row.locator(".badge"), "active");
    await shoot("tenant-created-key");

    // The key works against the REST API.
    const list = await api("GET", "/channels");
    assert.deepEqual(list.data, []);

    // Shown once: the tenants page, visited again, no longer has it.
    await clickAndLoad(page.locator("header nav a", { hasText: "Tenants" }));
    assert.equal(await page.locator(".secret").count(), 0, "the key is not shown again");
    assert.equal(await page.content().then((h) => h.includes(S.apiKey)), false);
  });

  step("3. channels: new webhook channel Bot; fields follow the type; secret, token and inbound URL shown", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Channels" }));
    await expectText(page.locator("td.empty"), "No channels.");
    await shoot("channels-empty");
    await clickAndLoad(page.getByRole("link", { name: "New channel" }));
    assert.match(page.url(), /\/admin\/channels\/new/);

    const type = page.locator("select[name=type]");
    const fields = (kind) => page.locator(`fieldset[data-type-fields="${kind}"]`);
    await page.locator("select[name=tenant]").selectOption({ label: "Acme" });
    await type.selectOption("webhook");
    assert.ok(await fields("webhook").isVisible(), "webhook fields shown for webhook");
    for (const other of ["whatsapp_meta", "whatsapp_infobip", "echo", "websocket"]) {
      assert.equal(await fields(other).isVisible(), false, `${other} fields hidden for webhook`);
    }
    assert.equal(await page.locator('input[name="whatsapp_meta.phone_number_id"]').isVisible(), false);
    assert.ok(await page.locator('input[name="webhook.url"]').isVisible());

    await type.selectOption("whatsapp_meta");
    assert.ok(await fields("whatsapp_meta").isVisible(), "whatsapp_meta fields shown after switching");
    assert.ok(await page.locator('input[name="whatsapp_meta.phone_number_id"]').isVisible());
    assert.equal(await fields("webhook").isVisible(), false, "webhook fields hidden after switching");
    await shoot("channel-new-whatsapp-fields");

    await type.selectOption("webhook");
    assert.ok(await fields("webhook").isVisible());
    assert.equal(await fields("whatsapp_meta").isVisible(), false);

    await page.locator("input[name=name]").fill("Bot");
    await page.locator('input[name="webhook.url"]').fill(S.sink.url + "/hooks/bot");
    await shoot("channel-new-webhook-filled");
    await clickAndLoad(page.getByRole("button", { name: "Create channel" }));

    await expectText(page.locator("h1"), "Bot");
    await expectText(page.locator(".notice"), "Channel created");
    const secret = (await page.locator(".secret input").inputValue()).trim();
    assert.ok(secret.length >= 16, "the channel secret is shown");
    S.botId = await fact("Id");
    assert.match(S.botId, /\S/);
    assert.equal(await fact("Tenant"), "Acme");
    assert.equal(await fact("Type"), "webhook");
    assert.equal(await fact("Inbound URL"), `${S.base}/api/v1/channels/${S.botId}/inbound`);
    const token = (await page.locator("dl.facts textarea").inputValue()).trim();
    assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, "the channel token is a JWT");
    const config = JSON.parse(await fact("Config"));
    assert.equal(config.url, S.sink.url + "/hooks/bot");
    await shoot("channel-bot-created");

    // Shown once: the channel page reached from the list has no secret box.
    await clickAndLoad(page.locator("header nav a", { hasText: "Channels" }));
    const row = page.locator("tbody tr", { hasText: "Bot" });
    await expectText(row, "webhook");
    await shoot("channels-list-bot");
    await clickAndLoad(row.getByRole("link", { name: "Bot" }));
    assert.equal(await page.locator(".secret").count(), 0, "the secret is not shown again");
    assert.equal(await fact("Id"), S.botId);
    await shoot("channel-bot-again");
  });

  step("4. new whatsapp_meta channel: error next to phone_number_id, then fixed and created", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Channels" }));
    await clickAndLoad(page.getByRole("link", { name: "New channel" }));
    await page.locator("select[name=tenant]").selectOption({ label: "Acme" });
    await page.locator("input[name=name]").fill("WhatsApp");
    await page.locator("select[name=type]").selectOption("whatsapp_meta");
    await page.locator('input[name="whatsapp_meta.access_token"]').fill("EAAG-test-token");
    await page.locator('input[name="whatsapp_meta.verify_token"]').fill("verify-me");
    await clickAndLoad(page.getByRole("button", { name: "Create channel" }));

    const err = page.locator('.field-error[data-field="config.phone_number_id"]');
    assert.ok(await err.isVisible(), "the phone_number_id error is shown");
    assert.match(await err.innerText(), /required/);
    // Next to the field: right after the field's own label in the same fieldset.
    const prevName = await err.evaluate((el) => el.previousElementSibling?.querySelector("input")?.name);
    assert.equal(prevName, "whatsapp_meta.phone_number_id", "the error follows its field");
    // The form kept what was entered and the selected type.
    assert.equal(await page.locator("select[name=type]").inputValue(), "whatsapp_meta");
    assert.equal(await page.locator("input[name=name]").inputValue(), "WhatsApp");
    assert.ok(await page.locator('fieldset[data-type-fields="whatsapp_meta"]').isVisible());
    assert.equal(await page.locator('fieldset[data-type-fields="webhook"]').isVisible(), false);
    assert.equal(await page.locator(".field-error").count(), 1, "only that field is in error");
    // Secrets are not written back into the page.
    assert.equal(await page.locator('input[name="whatsapp_meta.access_token"]').inputValue(), "");
    assert.ok(!(await page.content()).includes("EAAG-test-token"), "the token is not in the HTML");
    await shoot("channel-new-whatsapp-error");

    await page.locator('input[name="whatsapp_meta.phone_number_id"]').fill("106540352242922");
    await page.locator('input[name="whatsapp_meta.access_token"]').fill("EAAG-test-token");
    await page.locator('input[name="whatsapp_meta.verify_token"]').fill("verify-me");
    await clickAndLoad(page.getByRole("button", { name: "Create channel" }));
    await expectText(page.locator("h1"), "WhatsApp");
    assert.equal(await fact("Type"), "whatsapp_meta");
    S.waId = await fact("Id");
    const config = JSON.parse(await fact("Config"));
    assert.equal(config.phone_number_id, "106540352242922");
    assert.notEqual(config.access_token, "EAAG-test-token", "the access token is masked");
    await shoot("channel-whatsapp-created");
  });

  step("5. routes: WhatsApp → Bot (inbound) is created and listed", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Routes" }));
    await expectText(page.locator("td.empty"), "No routes.");
    await shoot("routes-empty");
    await page.locator("select[name=source]").selectOption({ label: "WhatsApp (whatsapp_meta)" });
    await page.locator("select[name=target]").selectOption({ label: "Bot (webhook)" });
    await page.locator("select[name=direction]").selectOption("inbound");
    await clickAndLoad(page.getByRole("button", { name: "Create route" }));
    await expectText(page.locator(".notice"), "Route created.");
    const rows = page.locator("tbody tr");
    assert.equal(await rows.count(), 1);
    const cells = await rows.first().locator("td").allInnerTexts();
    assert.deepEqual(cells.slice(0, 3).map((s) => s.trim()), ["WhatsApp", "Bot", "inbound"]);
    await shoot("routes-created");

    const viaApi = await api("GET", "/routes");
    assert.equal(viaApi.data.length, 1);
    assert.equal(viaApi.data[0].source_channel_id, S.waId);
  });

  step("6. an activity posted via the REST API fails to deliver after 5 attempts", async () => {
    S.sink.status = 500;
    const conv = await api("POST", "/conversations", { channel_id: S.botId });
    S.conversationId = conv.data.id;
    const activity = await postActivity("Hello from the test");
    S.activityId = activity.id;
    const delivery = await until("the delivery to be failed", async () => {
      const r = await api("GET", `/activities/${S.activityId}/deliveries`);
      return r.data.find((d) => d.status === "failed");
    }, 30_000, 250);
    S.deliveryId = delivery.id;
    assert.equal(delivery.attempts, 5);
    assert.equal(delivery.channel_id, S.botId);
    const hits = S.sink.requests.filter((r) => r.url === "/hooks/bot");
    assert.equal(hits.length, 5, "the sink was called five times");
    assert.match(hits[0].body, /Hello from the test/);
  });

  step("7. conversation page lists the activity with its failed delivery and last error", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Conversations" }));
    const row = page.locator("tbody tr", { hasText: S.conversationId });
    assert.equal(await row.count(), 1, "the conversation is listed");
    await expectText(row, "Bot");
    await shoot("conversations-list");
    await clickAndLoad(row.getByRole("link", { name: S.conversationId }));
    assert.match(page.url(), new RegExp(`/admin/conversations/${S.conversationId}$`));
    const act = page.locator("tr[data-seq]", { hasText: "Hello from the test" });
    assert.equal(await act.count(), 1, "the activity is listed");
    await expectText(act, "outbound");
    const d = act.locator(`.delivery[data-delivery="${S.deliveryId}"]`);
    await expectText(d.locator(".badge"), "failed");
    await expectText(d, "5 attempt(s)");
    await expectText(d, "Bot");
    const err = (await d.locator(":scope > .err").innerText()).trim();
    assert.match(err, /500/, `last error names the status: ${err}`);
    assert.ok(await d.getByRole("button", { name: "Retry" }).isVisible());
    await shoot("conversation-failed");
  });

  step("7b. five failures in a row open Bot's breaker: shown on the dashboard and the channel page; Pause, then Resume closes it", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Dashboard" }));
    const healthRow = page.locator("tbody[data-live-rows=health] tr", { hasText: "Bot" });
    await expectText(healthRow.locator(".badge"), "open");
    await expectText(healthRow, "Acme");
    assert.match(await healthRow.locator("td.err").innerText(), /500/);
    await shoot("dashboard-breaker-open");

    await clickAndLoad(healthRow.getByRole("link", { name: "Bot" }));
    const state = page.locator("[data-health-state]");
    await expectText(state, "open");
    assert.match(await fact("Breaker"), /^open · cool-down until /);
    assert.match(await fact("Failures in a row"), /^5 \(the breaker opens at 5\)/);
    assert.match(await fact("Last error"), /500/);
    const pause = page.getByRole("button", { name: "Pause deliveries" });
    const resume = page.getByRole("button", { name: "Resume deliveries" });
    assert.ok(await pause.isVisible(), "an open channel can be paused");
    assert.ok(await resume.isVisible(), "an open breaker can be closed by resuming");
    await shoot("channel-breaker-open");

    await clickAndLoad(pause);
    await expectText(page.locator(".notice"), "Deliveries paused");
    await expectText(state, "paused");
    assert.equal(await pause.count(), 0, "no pause button on a paused channel");
    assert.equal((await api("GET", `/channels/${S.botId}/health`)).data.state, "paused");
    await shoot("channel-paused");

    await clickAndLoad(resume);
    await expectText(page.locator(".notice"), "Deliveries resumed");
    await expectText(state, "healthy");
    assert.equal(await resume.count(), 0, "nothing to resume on a healthy channel");
    assert.ok(await pause.isVisible());
    const health = (await api("GET", `/channels/${S.botId}/health`)).data;
    assert.equal(health.state, "healthy");
    assert.equal(health.breaker, "closed");
    assert.equal(health.consecutive_failures, 0);
    await shoot("channel-resumed");
  });

  step("8. deliveries page (failed) → Retry after the sink recovers → delivered", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Deliveries" }));
    await page.locator("form.filters select[name=status]").selectOption("failed");
    await clickAndLoad(page.locator("form.filters").getByRole("button", { name: "Filter" }));
    assert.match(page.url(), /status=failed/);
    const row = page.locator(`tr[data-delivery="${S.deliveryId}"]`);
    assert.equal(await row.count(), 1, "the failed delivery is listed");
    await expectText(row.locator(".badge"), "failed");
    await expectText(row, "Bot");
    assert.match(await row.locator("td.err").innerText(), /500/);
    await shoot("deliveries-failed");

    S.sink.status = 200;
    await clickAndLoad(row.getByRole("button", { name: "Retry" }));
    await expectText(page.locator(".notice"), "Delivery queued again.");
    assert.match(page.url(), /\/admin\/deliveries\?.*status=failed/, "back on the filtered list");
    await shoot("deliveries-retried");

    await sleep(500);
    await visit(`/admin/conversations/${S.conversationId}`);
    const badge = page.locator(`.delivery[data-delivery="${S.deliveryId}"] > .badge`);
    await until("the delivery to show delivered", async () => {
      if ((await badge.innerText()).trim() === "delivered") return true;
      await page.reload({ waitUntil: "load" });
      return false;
    }, WAIT_MS, 500);
    const d = page.locator(`.delivery[data-delivery="${S.deliveryId}"]`);
    await expectText(d, "6 attempt(s)"); // a retry grants new attempts; numbering goes on
    assert.equal(await d.getByRole("button", { name: "Retry" }).count(), 0, "no retry for delivered");
    // The attempt log, folded away until opened.
    const log = d.locator("details.attempts");
    const rows = log.locator("tr[data-attempt]");
    assert.equal(await rows.first().isVisible(), false, "the attempts start folded");
    await log.locator("summary").click();
    assert.equal(await rows.count(), 6);
    for (let n = 1; n <= 5; n++) {
      const row = log.locator(`tr[data-attempt="${n}"]`);
      await expectText(row.locator("td[data-http]"), "500");
      await expectText(row, n === 5 ? "failed" : "retry");
      await expectText(row.locator("pre.answer"), "sink says no");
    }
    const last = log.locator('tr[data-attempt="6"]');
    await expectText(last.locator("td[data-http]"), "200");
    await expectText(last, "delivered");
    await expectText(last.locator("pre.answer"), "ok");
    await shoot("conversation-delivered-attempts");
    assert.ok(S.sink.requests.some((r) => r.status === 200), "the sink got the retried delivery");
  });

  step("9. dashboard shows delivered ≥ 1 and updates live", async () => {
    const page = S.page;
    await clickAndLoad(page.locator("header nav a", { hasText: "Dashboard" }));
    const delivered = page.locator("[data-stat=delivered]");
    const before = Number((await delivered.innerText()).trim());
    assert.ok(before >= 1, `delivered ≥ 1 (${before})`);
    const channelRow = page.locator("tbody[data-live-rows=channels] tr", { hasText: "Bot" });
    await expectText(channelRow, "Acme");
    await shoot("dashboard-delivered");

    const url = page.url();
    await postActivity("Second message, delivered at once");
    await until("[data-stat=delivered] to change without a reload", async () => {
      return Number((await delivered.innerText()).trim()) > before;
    }, 12_000, 250);
    assert.equal(page.url(), url, "no navigation happened");
    const after = Number((await delivered.innerText()).trim());
    assert.equal(after, before + 1);
    // The channel table was refreshed too.
    const cells = await page.locator("tbody[data-live-rows=channels] tr", { hasText: "Bot" }).locator("td").allInnerTexts();
    assert.equal(cells[3].trim(), String(after), "Bot's delivered cell follows");
    await shoot("dashboard-live");
  });

  step("9b. operational events: the failure and the breaker are listed; a pause arrives live over the socket", async () => {
    const page = S.page;
    const feed = page.locator("tbody[data-ops-feed]");
    const failed = feed.locator("tr", { hasText: "delivery.failed" }).first();
    await expectText(failed, "failed for good");
    await expectText(failed, "gave up after 5 attempts");
    const opened = feed.locator("tr", { hasText: "channel.breaker_opened" }).first();
    await expectText(opened, "Acme");
    await expectText(opened.getByRole("link"), "Bot");
    await until("the dashboard's event socket to open", async () => {
      return (await feed.getAttribute("data-connected")) === "true";
    });
    const paused = feed.locator("tr", { hasText: "channel.paused" });
    const before = await paused.count();
    const url = page.url();
    await api("POST", `/channels/${S.botId}/pause`);
    await until("the pause to appear without a reload", async () => (await paused.count()) > before, 12_000, 250);
    await expectText(paused.first(), "paused (operator)");
    await expectText(paused.first().getByRole("link"), "Bot");
    assert.equal(page.url(), url, "no navigation happened");
    await api("POST", `/channels/${S.botId}/resume`);
    await expectText(feed.locator("tr").first(), "channel.resumed");
    const listed = (await api("GET", "/ops-events?limit=2")).data;
    assert.deepEqual(listed.map((e) => e.type), ["channel.resumed", "channel.paused"]);
    await shoot("dashboard-ops-events");
  });

  step("10. retry now: a delivery waiting in backoff is delivered at once", async () => {
    const page = S.page;
    // The receiver asks for a long pause (100 s at this server's backoff scale of
    // 0.001): without a retry by hand nothing happens within this step's waits.
    S.sink.status = 503;
    S.sink.retryAfter = "100000";
    const activity = await postActivity("Waiting in backoff");
    const waiting = await until("the first attempt to be recorded", async () => {
      const r = await api("GET", `/activities/${activity.id}/deliveries`);
      return r.data.find((d) => d.attempts === 1 && d.status === "pending");
    }, 30_000, 250);
    assert.ok(Date.parse(waiting.next_attempt_at) - Date.now() > 60_000, `next attempt far off: ${waiting.next_attempt_at}`);
    await visit(`/admin/conversations/${S.conversationId}`);
    const d = page.locator(`.delivery[data-delivery="${waiting.id}"]`);
    await expectText(d.locator(":scope > .badge"), "pending");
    await expectText(d.locator("[data-next-attempt]"), "next attempt");
    await shoot("conversation-waiting");

    S.sink.status = 200;
    S.sink.retryAfter = null;
    await clickAndLoad(d.getByRole("button", { name: "Retry now" }));
    await expectText(page.locator(".notice"), "Delivery queued again.");
    await until("the delivery to show delivered", async () => {
      const badge = page.locator(`.delivery[data-delivery="${waiting.id}"] > .badge`);
      if ((await badge.innerText()).trim() === "delivered") return true;
      await page.reload({ waitUntil: "load" });
      return false;
    }, WAIT_MS, 500);
    const log = page.locator(`.delivery[data-delivery="${waiting.id}"] details.attempts`);
    await log.locator("summary").click();
    await expectText(log.locator('tr[data-attempt="1"] td[data-http]'), "503");
    await expectText(log.locator('tr[data-attempt="2"] td[data-http]'), "200");
    assert.equal(await page.getByRole("button", { name: "Retry now" }).count(), 0, "nothing waits any more");
    await shoot("conversation-retried-now");
  });

  step("11. channel config: the JSON editor refuses a bad URL next to it, then saves", async () => {
    const page = S.page;
    await visit(`/admin/channels/${S.botId}`);
    const editor = page.locator('#config-form textarea[name="config"]');
    const config = JSON.parse(await editor.inputValue());
    assert.equal(config.url, S.sink.url + "/hooks/bot");

    await editor.fill(JSON.stringify({ ...config, url: "not a url" }, null, 2));
    await clickAndLoad(page.getByRole("button", { name: "Save config" }));
    const err = page.locator('#config-form .field-error[data-field="config.url"]');
    assert.ok(await err.isVisible(), "the url error is shown");
    assert.match(await err.innerText(), /http/);
    assert.equal(JSON.parse(await editor.inputValue()).url, "not a url", "what was entered is kept");
    assert.equal(JSON.parse(await fact("Config")).url, S.sink.url + "/hooks/bot", "nothing was saved");
    await shoot("channel-config-error");

    const edited = { ...config, timeout_ms: 2000, headers: { "X-Team": "support" } };
    await page.locator('#config-form textarea[name="config"]').fill(JSON.stringify(edited, null, 2));
    await clickAndLoad(page.getByRole("button", { name: "Save config" }));
    await expectText(page.locator(".notice"), "Config saved.");
    const shown = JSON.parse(await fact("Config"));
    assert.equal(shown.timeout_ms, 2000);
    assert.deepEqual(shown.headers, { "X-Team": "support" });
    const viaApi = await api("GET", `/channels/${S.botId}`);
    assert.equal(viaApi.data.config.timeout_ms, 2000);
    await shoot("channel-config-saved");

    // Deliveries go out with the new header.
    S.sink.status = 200;
    const before = S.sink.requests.length;
    await postActivity("After the config change");
    await until("a delivery with the new config", async () => S.sink.requests.length > before, WAIT_MS, 200);
    assert.equal(S.sink.requests[before].headers["x-team"], "support");
  });

  step("12. replay: the channel's failed deliveries since a time are queued again", async () => {
    const page = S.page;
    const since = new Date(Date.now() - 60_000).toISOString().slice(0, 19);
    S.sink.status = 400;
    const first = await postActivity("Replay me first");
    const second = await postActivity("Replay me second");
    for (const a of [first, second]) {
      await until(`${a.text} to fail`, async () => {
        const r = await api("GET", `/activities/${a.id}/deliveries`);
        return r.data[0].status === "failed";
      }, 30_000, 250);
    }
    S.sink.status = 200;
    const before = S.sink.requests.length;
    await visit(`/admin/channels/${S.botId}`);
    await page.locator('#replay-form input[name="since"]').fill(since);
    await shoot("channel-replay");
    await clickAndLoad(page.getByRole("button", { name: "Replay failed deliveries" }));
    await expectText(page.locator(".notice"), "2 failed deliveries queued again.");
    for (const a of [first, second]) {
      await until(`${a.text} to be delivered`, async () => {
        const r = await api("GET", `/activities/${a.id}/deliveries`);
        return r.data[0].status === "delivered";
      }, 30_000, 250);
    }
    const texts = S.sink.requests.slice(before).map((r) => JSON.parse(r.body).text);
    assert.deepEqual(texts, ["Replay me first", "Replay me second"], "in conversation order");
    await shoot("channel-replayed");
  });

  step("13. API reference: / leads to /docs, which renders the OpenAPI document offline", async () => {
    const page = S.page;
    const res = await visit("/");
    assert.match(page.url(), /\/docs\/$/, "redirected to the reference page");
    assert.equal(res.status(), 200);
    // Rendered by Swagger UI from /openapi.json, with the assets the binary carries.
    await expectText(page.locator(".swagger-ui .info .title"), "Converger");
    await expectText(page.locator(".swagger-ui .opblock-summary-path").filter({ hasText: "/api/v1/conversations/{id}/activities" }), "/api/v1/conversations/{id}/activities");
    // An operation opens with its documented answers, the layers' errors included.
    await page.locator(".opblock-summary-path", { hasText: "/api/v1/deliveries/{id}/retry" }).first().click();
    await expectText(page.locator(".opblock.is-open .responses-table"), "store_unavailable");
    const external = [];
    page.on("request", (r) => {
      if (!r.url().startsWith(S.base)) external.push(r.url());
    });
    await page.reload({ waitUntil: "load" });
    await expectText(page.locator(".swagger-ui .info .title"), "Converger");
    assert.deepEqual(external, [], "nothing is fetched from outside the server");
    await shoot("api-reference");
  });
});

/** Asserts that `locator` contains `text`, retrying until WAIT_MS. */
async function expectText(locator, text) {
  let seen = "";
  await until(`"${text}" in ${locator}`, async () => {
    seen = await locator.first().innerText({ timeout: 2000 });
    return seen.includes(text);
  }).catch((e) => {
    throw new Error(`${e.message}\nseen: ${JSON.stringify(seen)}`);
  });
}
