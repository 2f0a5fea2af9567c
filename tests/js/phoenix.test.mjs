// Compatibility of the Phoenix Channels endpoint (/socket/websocket) with the official
// `phoenix` JS client (pinned in package.json), run under Node with `ws` as transport.
//
// It starts `converger serve` (CONVERGER_BIN, default ../../target/debug/converger) on
// a free loopback port over a temporary SQLite file, creates a tenant with the CLI, then
// a websocket channel, conversations and client tokens over REST, and drives the real
// client: connect (token in params or in Sec-WebSocket-Protocol via `authToken`), join
// with a params function, live `new_activity`, pushes with idempotency, `typing`,
// rejoin after a disconnect and after a dropped connection (replay of exactly what was
// missed), refused connects and refused joins.
//
// Run: cd tests/js && npm ci && CONVERGER_BIN=$PWD/../../target/debug/converger node --test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { outcome, sleep, until } from "./support.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.CONVERGER_BIN || path.resolve(here, "../../target/debug/converger");

/** Bound on any single wait for the server or the client. */
const WAIT_MS = 10_000;
/** Bound on one test. */
const TEST_MS = 30_000;

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

/** `ws` with every frame the client sends recorded, to check what went over the wire. */
function spyTransport(sent) {
  return class SpyWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      sent.push({ kind: "connect", url, protocols });
    }
    send(data, ...rest) {
      sent.push({ kind: "frame", frame: JSON.parse(data) });
      return super.send(data, ...rest);
    }
  };
}

/** Frames the client sent for `event` on `topic`, as [join_ref, ref, topic, event, payload]. */
const framesOf = (sent, topic, event) =>
  sent.filter((s) => s.kind === "frame" && s.frame[2] === topic && s.frame[3] === event).map((s) => s.frame);

// ------------------------------------------------------------------ server and REST

const server = { proc: null, dir: null, base: "", wsBase: "", key: "", log: [] };
const sockets = [];

function killServer() {
  if (server.proc && server.proc.exitCode === null && server.proc.signalCode === null) {
    server.proc.kill("SIGKILL");
  }
}
// Also when the test process dies on its own.
process.on("exit", killServer);

async function startServer() {
  assert.ok(fs.existsSync(BIN), `converger binary not found at ${BIN} (set CONVERGER_BIN)`);
  server.dir = fs.mkdtempSync(path.join(os.tmpdir(), "converger-js-"));
  const port = await freePort();
  const env = {
    ...process.env,
    CONVERGER_DATABASE_URL: `sqlite://${path.join(server.dir, "x.db")}`,
    CONVERGER_JWT_SECRET: "phoenix-js-compat-test-secret-0123456789abcdef",
    CONVERGER_LISTEN: `127.0.0.1:${port}`,
    CONVERGER_PUBLIC_URL: `http://127.0.0.1:${port}`,
    RUST_LOG: "warn",
  };
  // Tenant commands use an existing database only: create it first.
  await promisify(execFile)(BIN, ["migrate"], { env, timeout: WAIT_MS });
  const { stdout } = await promisify(execFile)(BIN, ["tenant", "create", "js"], { env, timeout: WAIT_MS });
  const keyLine = stdout.split("\n").find((l) => /^api key\s/.test(l));
  assert.ok(keyLine, `no "api key" line in the output of tenant create:\n${stdout}`);
  server.key = keyLine.replace(/^api key\s+/, "").trim();

  server.proc = spawn(BIN, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
  for (const stream of [server.proc.stdout, server.proc.stderr]) {
    stream.setEncoding("utf8");
    stream.on("data", (d) => server.log.push(d));
  }
  server.base = `http://127.0.0.1:${port}`;
  server.wsBase = `ws://127.0.0.1:${port}/socket`;
  await until("the server to answer /health", async () => {
    if (server.proc.exitCode !== null) throw new Error(`converger exited: ${server.log.join("")}`);
    return (await fetch(`${server.base}/health`)).ok;
  });
}

/** A REST call with the tenant API key; returns the parsed body, checking the status. */
async function api(method, route, body, expectStatus) {
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

const newConversation = async (channelId) =>
  (await api("POST", "/conversations", { channel_id: channelId }, 201)).data;

const clientToken = async (conversationId, userId) =>
  (await api("POST", "/tokens", { conversation_id: conversationId, user_id: userId }, 201)).token;

const postActivity = async (conversationId, text) =>
  (await api("POST", `/conversations/${conversationId}/activities`, { text }, 201)).data;

const listActivities = async (conversationId) =>
  (await api("GET", `/conversations/${conversationId}/activities?after=0&limit=200`)).data;

/** A phoenix Socket over `ws`, closed after the test run. */
function newSocket(opts, sent = []) {
  const socket = new Socket(server.wsBase, { transport: spyTransport(sent), ...opts });
  sockets.push(socket);
  return socket;
}

function waitOpen(socket) {
  return new Promise((resolve, reject) => {
    if (socket.isConnected()) return resolve();
    const timer = setTimeout(() => reject(new Error("socket did not open")), WAIT_MS);
    const refs = [
      socket.onOpen(() => {
        clearTimeout(timer);
        socket.off(refs);
        resolve();
      }),
    ];
  });
}

/** A channel on `conversation:<id>` whose params function resumes after the last activity
 * seen; records every `new_activity` and `typing` it receives and every params call. */
function conversationChannel(socket, conversationId, { lastSeen = null } = {}) {
  const state = { lastSeen, activities: [], typing: [], paramsCalls: [] };
  const channel = socket.channel(`conversation:${conversationId}`, () => {
    const params = state.lastSeen ? { last_activity_id: state.lastSeen } : {};
    state.paramsCalls.push(params);
    return params;
  });
  channel.on("new_activity", (activity) => {
    state.activities.push(activity);
    state.lastSeen = activity.id;
  });
  channel.on("typing", (payload) => state.typing.push(payload));
  return { channel, state };
}

// ------------------------------------------------------------------ tests

describe("phoenix JS client against converger", { timeout: 5 * 60_000 }, () => {
  let channelId;
  let conv;
  let token;

  before(async () => {
    await startServer();
    const channel = await api("POST", "/channels", { name: "web", type: "websocket", config: {} }, 201);
    channelId = channel.data.id;
    conv = await newConversation(channelId);
    token = await clientToken(conv.id, "customer-7");
  });

  after(() => {
    for (const socket of sockets) {
      try {
        socket.disconnect();
      } catch {
        // already gone
      }
    }
    killServer();
    if (server.dir) fs.rmSync(server.dir, { recursive: true, force: true });
  });

  it("heartbeat: socket.ping gets a reply", { timeout: TEST_MS }, async () => {
    const socket = newSocket({ params: { token } });
    socket.connect();
    await waitOpen(socket);
    const rtt = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no heartbeat reply")), WAIT_MS);
      assert.ok(socket.ping((ms) => { clearTimeout(timer); resolve(ms); }));
    });
    assert.equal(typeof rtt, "number");
    socket.disconnect();
  });

  it("live new_activity, pushes with idempotency, typing, leave", { timeout: TEST_MS }, async () => {
    const sent = [];
    const socket = newSocket({ params: { token } }, sent);
    socket.connect();
    const { channel, state } = conversationChannel(socket, conv.id);
    const joined = await outcome(channel.join());
    assert.equal(joined.status, "ok", JSON.stringify(joined));
    assert.equal(typeof joined.response.last_seq, "number");
    // The join frame: join_ref == ref, payload from the params function.
    const [joinFrame] = framesOf(sent, `conversation:${conv.id}`, "phx_join");
    assert.equal(joinFrame[0], joinFrame[1]);
    assert.deepEqual(joinFrame[4], {});
    assert.match(sent[0].url, /\/socket\/websocket\?token=[^&]+&vsn=2\.0\.0$/);

    // An activity posted over REST arrives, payload = the REST activity JSON.
    const rest = await postActivity(conv.id, "hello from REST");
    await until("the REST activity on the socket", () => state.activities.length === 1);
    assert.deepEqual(state.activities[0], rest);

    // A push posts one; its reply carries id and seq; the activity comes back as an event.
    const key = `idem-${Date.now()}`;
    const first = await outcome(channel.push("new_activity", { text: "hi from js", idempotency_key: key }));
    assert.equal(first.status, "ok", JSON.stringify(first));
    assert.equal(typeof first.response.id, "string");
    assert.equal(first.response.seq, rest.seq + 1);
    await until("the pushed activity on the socket", () => state.activities.length === 2);
    assert.equal(state.activities[1].id, first.response.id);
    assert.equal(state.activities[1].text, "hi from js");
    assert.equal(state.activities[1].sender, "customer-7");
    assert.equal(state.activities[1].direction, "inbound");

    // The same idempotency key again: the same activity, nothing new.
    const again = await outcome(channel.push("new_activity", { text: "hi from js", idempotency_key: key }));
    assert.equal(again.status, "ok", JSON.stringify(again));
    assert.equal(again.response.id, first.response.id);
    assert.equal(again.response.seq, first.response.seq);
    const listed = await listActivities(conv.id);
    assert.deepEqual(listed.map((a) => a.id), [rest.id, first.response.id]);
    await sleep(200);
    assert.equal(state.activities.length, 2, "a replayed push must not be broadcast again");

    // A push the server refuses answers an error reply with a reason.
    const bad = await outcome(channel.push("new_activity", { text: 42 }));
    assert.equal(bad.status, "error", JSON.stringify(bad));
    assert.equal(typeof bad.response.reason, "string");

    // typing from a second socket (another user of the same conversation) arrives here.
    const otherToken = await clientToken(conv.id, "agent-1");
    const other = newSocket({ params: { token: otherToken } });
    other.connect();
    const { channel: otherChannel, state: otherState } = conversationChannel(other, conv.id);
    assert.equal((await outcome(otherChannel.join())).status, "ok");
    const typed = await outcome(otherChannel.push("typing", {}));
    assert.equal(typed.status, "ok", JSON.stringify(typed));
    await until("typing on the first socket", () => state.typing.length === 1);
    assert.deepEqual(state.typing[0], { sender: "agent-1" });
    await sleep(200);
    assert.equal(otherState.typing.length, 0, "the typer does not get its own typing");

    // Leave: ok reply, the channel is closed, nothing arrives any more.
    const left = await outcome(otherChannel.leave());
    assert.equal(left.status, "ok", JSON.stringify(left));
    assert.equal(otherChannel.state, "closed");
    await postActivity(conv.id, "after leave");
    await until("the activity on the joined socket", () => state.activities.length === 3);
    await sleep(200);
    assert.equal(otherState.activities.length, 0, "nothing arrives after leaving");
    socket.disconnect();
    other.disconnect();
  });

  // Shared by both rejoin tests: joined and live, gone, 3 posted while away, back.
  async function rejoinScenario({ goAway, comeBack, socketOpts = {} }) {
    const conversation = await newConversation(channelId);
    const tok = await clientToken(conversation.id, "resumer");
    const topic = `conversation:${conversation.id}`;
    const seen = await postActivity(conversation.id, "already seen");
    const sent = [];
    const socket = newSocket({ params: { token: tok }, ...socketOpts }, sent);
    const received = [];
    socket.onMessage((msg) => received.push(msg));
    socket.connect();
    // Starts from an activity the client already had (e.g. loaded over REST).
    const { channel, state } = conversationChannel(socket, conversation.id, { lastSeen: seen.id });
    const joined = await outcome(channel.join());
    assert.equal(joined.status, "ok", JSON.stringify(joined));
    const live = await postActivity(conversation.id, "live before");
    await until("the live activity", () => state.activities.length === 1);
    assert.equal(state.activities[0].id, live.id);

    const closed = new Promise((resolve) => socket.onClose(resolve));
    await goAway(socket);
    await closed;
    assert.equal(socket.isConnected(), false);
    const missed = [];
    for (const text of ["away 1", "away 2", "away 3"]) missed.push(await postActivity(conversation.id, text));
    // A push made while away is buffered by the client and sent after the rejoin.
    const buffered = outcome(channel.push("new_activity", { text: "pushed while away", idempotency_key: "away-push" }));

    const reopened = waitOpen(socket);
    await comeBack(socket);
    await reopened;
    const pushed = await buffered;
    assert.equal(pushed.status, "ok", JSON.stringify(pushed));
    assert.equal(pushed.response.seq, missed[2].seq + 1);
    await until("the 3 missed activities and the buffered push", () => state.activities.length >= 5);
    const after = await postActivity(conversation.id, "live after");
    await until("the live activity after the rejoin", () => state.activities.length >= 6);
    await sleep(300); // anything duplicated would arrive by now

    // The rejoin sent the params function's current value, with a new join ref.
    const joins = framesOf(sent, topic, "phx_join");
    assert.equal(joins.length, 2, JSON.stringify(joins));
    assert.deepEqual(joins[0][4], { last_activity_id: seen.id });
    assert.deepEqual(joins[1][4], { last_activity_id: live.id });
    assert.notEqual(joins[1][0], joins[0][0], "a rejoin uses a new join ref");
    assert.equal(joins[1][0], joins[1][1]);
    assert.equal(channel.state, "joined");
    // The rejoin was granted when all three were committed: they came by replay.
    const rejoinReply = received.find((m) => m.event === "phx_reply" && m.ref === joins[1][1]);
    assert.ok(rejoinReply, "a reply to the rejoin");
    assert.equal(rejoinReply.join_ref, joins[1][0]);
    assert.deepEqual(rejoinReply.payload, { status: "ok", response: { last_seq: missed[2].seq } });
    // Pushes after the rejoin carry the new join ref (or null), never the old one, and so
    // does the buffered push, sent only once the rejoin was granted.
    const pushes = received.filter((m) => m.event === "new_activity");
    assert.ok(pushes.slice(1).every((m) => m.join_ref === null || m.join_ref === joins[1][0]));
    const bufferedFrames = framesOf(sent, topic, "new_activity");
    assert.equal(bufferedFrames.length, 1);
    assert.equal(bufferedFrames[0][0], joins[1][0]);
    const sentAt = (frame) => sent.findIndex((s) => s.frame === frame);
    assert.ok(sentAt(bufferedFrames[0]) > sentAt(joins[1]));

    // Exactly the missed ones, once, in seq order, then live.
    assert.deepEqual(
      state.activities.map((a) => a.text),
      ["live before", "away 1", "away 2", "away 3", "pushed while away", "live after"],
    );
    assert.deepEqual(state.activities.slice(1, 4), missed);
    assert.equal(state.activities[4].id, pushed.response.id);
    assert.deepEqual(state.activities[5], after);
    const seqs = state.activities.map((a) => a.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    socket.disconnect();
  }

  it("rejoin after disconnect()/connect(): exactly the missed activities, then live", { timeout: TEST_MS }, async () => {
    await rejoinScenario({
      goAway: (socket) => socket.disconnect(),
      comeBack: (socket) => socket.connect(),
    });
  });

  it("automatic reconnect and rejoin after the connection drops", { timeout: TEST_MS }, async () => {
    await rejoinScenario({
      // The client reconnects on its own; one second leaves time to post while away.
      socketOpts: { reconnectAfterMs: () => 1000 },
      goAway: (socket) => socket.conn.terminate(), // abnormal closure (1006), as a network drop
      comeBack: () => {},
    });
  });

  it("token in Sec-WebSocket-Protocol via the authToken option", { timeout: TEST_MS }, async () => {
    const sent = [];
    const socket = newSocket({ authToken: token }, sent);
    socket.connect();
    await waitOpen(socket);
    assert.deepEqual(sent[0].protocols.slice(0, 1), ["phoenix"]);
    assert.match(sent[0].protocols[1], /^base64url\.bearer\.phx\.[A-Za-z0-9+/]+$/);
    assert.doesNotMatch(sent[0].url, /token=/);
    assert.equal(socket.conn.protocol, "phoenix", "the server must select the phoenix subprotocol");
    const { channel } = conversationChannel(socket, conv.id);
    const joined = await outcome(channel.join());
    assert.equal(joined.status, "ok", JSON.stringify(joined));
    socket.disconnect();
  });

  it("a bad token: the upgrade is refused with 403 and the socket never opens", { timeout: TEST_MS }, async () => {
    // What the server answers: 403 before upgrading.
    const status = await new Promise((resolve, reject) => {
      const raw = new WebSocket(`${server.wsBase}/websocket?token=not-a-token&vsn=2.0.0`);
      const timer = setTimeout(() => reject(new Error("no answer to the upgrade")), WAIT_MS);
      raw.on("unexpected-response", (_req, res) => {
        clearTimeout(timer);
        resolve(res.statusCode);
        raw.terminate();
      });
      raw.on("open", () => reject(new Error("opened with a bad token")));
      raw.on("error", () => {});
    });
    assert.equal(status, 403);

    // What the client sees: errors, never open, for the query token and for authToken.
    for (const opts of [{ params: { token: "not-a-token" } }, { authToken: "not-a-token" }]) {
      const socket = newSocket({ ...opts, reconnectAfterMs: () => 200 });
      let opened = false;
      let errors = 0;
      socket.onOpen(() => { opened = true; });
      socket.onError(() => { errors += 1; });
      socket.connect();
      await until("onError twice (the client keeps retrying)", () => errors >= 2);
      assert.equal(opened, false);
      socket.disconnect();
    }
  });

  it("joining another conversation is refused with reason unauthorized", { timeout: TEST_MS }, async () => {
    const other = await newConversation(channelId);
    const socket = newSocket({ params: { token } });
    socket.connect();
    const channel = socket.channel(`conversation:${other.id}`, () => ({}));
    const refused = await outcome(channel.join());
    assert.equal(refused.status, "error", JSON.stringify(refused));
    assert.equal(refused.response.reason, "unauthorized");
    // The client would retry the join forever; the app leaves.
    channel.leave();
    // A topic the server does not route at all.
    const stray = socket.channel("room:lobby", {});
    const unmatched = await outcome(stray.join());
    assert.equal(unmatched.status, "error", JSON.stringify(unmatched));
    assert.equal(unmatched.response.reason, "unmatched topic");
    stray.leave();
    socket.disconnect();
  });
});
