// The long-poll endpoint (/socket/longpoll) with the official `phoenix` JS client's
// `LongPoll` transport, under Node (which has `fetch` but no global WebSocket, so the
// client picks LongPoll on its own when no transport is given).
//
// It starts `converger serve` (CONVERGER_BIN, default ../../target/debug/converger) on
// a free loopback port over a temporary SQLite file, creates a tenant with the CLI and
// a websocket channel, conversations and client tokens over REST, then drives the real
// client: join, live `new_activity`, pushes, resume after a reconnect and after the
// server restarts (exactly the missed activities, once, in order), the fallback from a
// failing WebSocket, and a refused connect.
//
// Run: cd tests/js && npm ci && CONVERGER_BIN=$PWD/../../target/debug/converger node --test

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { LongPoll, Socket } from "phoenix";
import WebSocket from "ws";
import {
  WAIT_MS, api, clientToken, killServer, newConversation, outcome, postActivity, restartServer, server, sleep,
  startServer, until,
} from "./support.mjs";

/** Bound on one test. */
const TEST_MS = 60_000;

/** `LongPoll` with every request it makes recorded, to check what went over the wire. */
function spyLongPoll(requests) {
  return class SpyLongPoll extends LongPoll {
    ajax(method, headers, body, onCallerTimeout, callback) {
      requests.push({ method, url: this.endpointURL(), headers, body });
      return super.ajax(method, headers, body, onCallerTimeout, callback);
    }
  };
}

const sockets = [];

/** A phoenix Socket, disconnected after the test run. */
function newSocket(opts) {
  const socket = new Socket(server.socketBase, opts);
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
 * seen; records every `new_activity` it receives and every join params it sent. */
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

describe("phoenix JS client over long-poll against converger", { timeout: 5 * 60_000 }, () => {
  let channelId;

  before(async () => {
    // A quiet poll comes back after 2 s, so the tests see several polls; a restart
    // does not wait for load balancers.
    await startServer({ CONVERGER_LONGPOLL_WINDOW_SECS: "2", CONVERGER_SHUTDOWN_DELAY_SECS: "0" });
    const channel = await api("POST", "/channels", { name: "web", type: "websocket", config: {} }, 201);
    channelId = channel.data.id;
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

  it("without WebSocket the client long-polls: join, live new_activity, pushes, typing", { timeout: TEST_MS }, async () => {
    assert.equal(typeof globalThis.WebSocket, "undefined", "this test needs a runtime without WebSocket");
    const conv = await newConversation(channelId);
    const token = await clientToken(conv.id, "customer-7");
    const socket = newSocket({ params: { token } });
    assert.equal(socket.transport, LongPoll);
    socket.connect();
    await waitOpen(socket);
    assert.ok(socket.conn instanceof LongPoll);

    const { channel, state } = conversationChannel(socket, conv.id);
    const joined = await outcome(channel.join());
    assert.equal(joined.status, "ok", JSON.stringify(joined));
    assert.deepEqual(joined.response, { last_seq: 0 });

    // An activity posted over REST arrives, payload = the REST activity JSON.
    const rest = await postActivity(conv.id, "hello from REST");
    await until("the REST activity", () => state.activities.length === 1);
    assert.deepEqual(state.activities[0], rest);

    // A push posts one as the token's user; the same idempotency key again changes nothing.
    const first = await outcome(channel.push("new_activity", { text: "hi over long-poll", idempotency_key: "lp-1" }));
    assert.equal(first.status, "ok", JSON.stringify(first));
    assert.equal(first.response.seq, rest.seq + 1);
    await until("the pushed activity", () => state.activities.length === 2);
    assert.equal(state.activities[1].id, first.response.id);
    assert.equal(state.activities[1].sender, "customer-7");
    assert.equal(state.activities[1].direction, "inbound");
    const again = await outcome(channel.push("new_activity", { text: "hi over long-poll", idempotency_key: "lp-1" }));
    assert.deepEqual(again.response, first.response);

    // A refused push answers an error reply with a reason.
    const bad = await outcome(channel.push("new_activity", { text: 42 }));
    assert.equal(bad.status, "error", JSON.stringify(bad));
    assert.equal(bad.response.reason, "validation_failed");

    // typing from a WebSocket client of the same conversation reaches the long-poller.
    const agent = newSocket({ params: { token: await clientToken(conv.id, "agent-1") }, transport: WebSocket });
    agent.connect();
    const { channel: agentChannel } = conversationChannel(agent, conv.id);
    assert.equal((await outcome(agentChannel.join())).status, "ok");
    assert.equal((await outcome(agentChannel.push("typing", {}))).status, "ok");
    await until("typing over long-poll", () => state.typing.length === 1);
    assert.deepEqual(state.typing[0], { sender: "agent-1" });
    await sleep(300);
    assert.equal(state.activities.length, 2, "a replayed push is not broadcast again");
    agent.disconnect();
    socket.disconnect();
  });

  // Joined and live, gone, 3 posted while away (and one pushed), back: exactly those.
  async function resumeScenario({ goAway, comeBack }) {
    const conv = await newConversation(channelId);
    const token = await clientToken(conv.id, "resumer");
    const seen = await postActivity(conv.id, "already seen");
    const requests = [];
    const socket = newSocket({ params: { token }, transport: spyLongPoll(requests), reconnectAfterMs: () => 200 });
    socket.connect();
    const { channel, state } = conversationChannel(socket, conv.id, { lastSeen: seen.id });
    const joined = await outcome(channel.join());
    assert.equal(joined.status, "ok", JSON.stringify(joined));
    const live = await postActivity(conv.id, "live before");
    await until("the live activity", () => state.activities.length === 1);
    assert.equal(state.activities[0].id, live.id);

    const missed = await goAway(socket, async () => {
      const posted = [];
      for (const text of ["away 1", "away 2", "away 3"]) posted.push(await postActivity(conv.id, text));
      return posted;
    });
    // A push made while away is buffered by the client and sent after the rejoin.
    const buffered = outcome(channel.push("new_activity", { text: "pushed while away", idempotency_key: "away" }));
    await comeBack(socket);
    const pushed = await buffered;
    assert.equal(pushed.status, "ok", JSON.stringify(pushed));
    assert.equal(pushed.response.seq, missed[2].seq + 1);
    await until("the missed activities and the buffered push", () => state.activities.length >= 5);
    const after = await postActivity(conv.id, "live after");
    await until("the live activity after the rejoin", () => state.activities.length >= 6);
    await sleep(500); // anything duplicated would arrive by now

    assert.deepEqual(
      state.activities.map((a) => a.text),
      ["live before", "away 1", "away 2", "away 3", "pushed while away", "live after"],
    );
    assert.deepEqual(state.activities.slice(1, 4), missed);
    assert.deepEqual(state.activities[5], after);
    // The rejoin resumed after the last activity seen, through a new session.
    assert.deepEqual(state.paramsCalls.at(-1), { last_activity_id: live.id });
    const sessions = new Set(
      requests.map((r) => new URL(r.url).searchParams.getAll("token").find((t) => t.startsWith("lps_"))).filter(Boolean),
    );
    assert.ok(sessions.size >= 2, `a new session after coming back (${sessions.size})`);
    // Messages were sent as NDJSON batches with the session token.
    const post = requests.find((r) => r.method === "POST");
    assert.equal(post.headers["Content-Type"], "application/x-ndjson");
    assert.match(post.url, /[?&]token=lps_/);
    socket.disconnect();
  }

  it("disconnect()/connect(): a new session resumes with exactly the missed activities", { timeout: TEST_MS }, async () => {
    await resumeScenario({
      goAway: async (socket, postWhileAway) => {
        const closed = new Promise((resolve) => socket.onClose(resolve));
        socket.disconnect();
        await closed;
        return postWhileAway();
      },
      comeBack: async (socket) => {
        const opened = waitOpen(socket);
        socket.connect();
        await opened;
      },
    });
  });

  it("the server restarts: the client reconnects by itself and resumes with no gaps", { timeout: TEST_MS }, async () => {
    await resumeScenario({
      goAway: async (socket, postWhileAway) => {
        const errored = new Promise((resolve) => socket.onError(resolve));
        // The session is on the node that stopped: the client must open a new one.
        await restartServer();
        const posted = await postWhileAway();
        await errored;
        return posted;
      },
      comeBack: (socket) => until("the socket to reconnect", () => socket.isConnected()),
    });
  });

  it("a WebSocket that fails falls back to long-poll (longPollFallbackMs)", { timeout: TEST_MS }, async () => {
    const conv = await newConversation(channelId);
    const token = await clientToken(conv.id, "fallback");
    // A WebSocket that cannot connect, as behind a proxy that drops upgrades.
    class UnreachableWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url.replace("/socket/websocket", "/socket/nowhere"), protocols);
      }
    }
    const socket = newSocket({ params: { token }, transport: UnreachableWebSocket, longPollFallbackMs: 5_000 });
    socket.connect();
    await until("the fallback to open", () => socket.isConnected() && socket.conn instanceof LongPoll);
    assert.equal(socket.transport, LongPoll);
    const { channel, state } = conversationChannel(socket, conv.id);
    assert.equal((await outcome(channel.join())).status, "ok");
    const posted = await postActivity(conv.id, "after the fallback");
    await until("the activity", () => state.activities.length === 1);
    assert.deepEqual(state.activities[0], posted);
    socket.disconnect();
  });

  it("a bad token: the long-poll connect is refused with 403 and never opens", { timeout: TEST_MS }, async () => {
    // What the server answers.
    const res = await fetch(`${server.base}/socket/longpoll?token=not-a-token&vsn=2.0.0`);
    assert.equal(res.status, 403);
    assert.deepEqual(await res.json(), {
      status: 403,
      error: { code: "invalid_token", message: "the token is not valid" },
    });
    // What the client sees: errors with status 403, never open.
    const socket = newSocket({ params: { token: "not-a-token" }, transport: LongPoll, reconnectAfterMs: () => 200 });
    let opened = false;
    const errors = [];
    socket.onOpen(() => { opened = true; });
    socket.onError((error) => errors.push(error));
    socket.connect();
    await until("onError twice (the client keeps retrying)", () => errors.length >= 2);
    assert.equal(opened, false);
    assert.equal(errors[0], 403);
    socket.disconnect();
  });
});
