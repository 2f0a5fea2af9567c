// A Converger real-time client with the official `phoenix` JS client.
//
// With a tenant API key it sets up what an application backend would (a websocket
// channel, a conversation, a client token for one end user), then connects as that
// end user, joins the conversation, posts one message over REST and pushes one over
// the socket, and prints each `new_activity` as it arrives.
//
//   npm install
//   CONVERGER_API_KEY=cvg_... node client.mjs              # WebSocket
//   CONVERGER_API_KEY=cvg_... node client.mjs --longpoll   # long-poll transport
//   CONVERGER_API_KEY=cvg_... node client.mjs --follow     # keep listening (Ctrl-C ends)
//
// CONVERGER_URL defaults to http://localhost:4000. In a browser, the same code works
// without `ws`: `new Socket("/socket", {params: {token}})`.

import { LongPoll, Socket } from "phoenix";
import WebSocket from "ws";

const base = (process.env.CONVERGER_URL || "http://localhost:4000").replace(/\/$/, "");
const apiKey = process.env.CONVERGER_API_KEY;
const longpoll = process.argv.includes("--longpoll");
const follow = process.argv.includes("--follow");
if (!apiKey) {
  console.error("set CONVERGER_API_KEY to a tenant API key (converger tenant create NAME prints one)");
  process.exit(2);
}

/** A REST call with the tenant API key (server side: never ship the key to end users). */
async function api(method, path, body) {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { "x-api-key": apiKey, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

// 1. Backend side: a conversation and a client token for one user of it.
const channel = (await api("POST", "/channels", { name: "realtime example", type: "websocket", config: {} })).data;
const conversation = (await api("POST", "/conversations", { channel_id: channel.id })).data;
const { token, expires_in } = await api("POST", "/tokens", { conversation_id: conversation.id, user_id: "demo-user" });
console.log(`conversation ${conversation.id}: client token for demo-user, valid ${expires_in} s`);

// 2. End-user side: connect with the token, join, listen. `ws://host/socket` is the
// mount point; the client appends /websocket (or /longpoll) and ?token=...&vsn=2.0.0.
const socket = new Socket(`${base.replace(/^http/, "ws")}/socket`, {
  params: { token },
  transport: longpoll ? LongPoll : WebSocket,
});
socket.onError((error) => console.error("socket error", error));
socket.connect();

// The params function runs on every (re)join: after a reconnect the server replays
// exactly what was missed after the last activity seen.
let lastSeen = null;
const topic = socket.channel(`conversation:${conversation.id}`, () =>
  lastSeen ? { last_activity_id: lastSeen } : {},
);
let received = 0;
const done = new Promise((resolve) => {
  topic.on("new_activity", (activity) => {
    lastSeen = activity.id;
    console.log(`new_activity #${activity.seq} ${activity.sender} (${activity.direction}): ${activity.text}`);
    if (++received === 2 && !follow) resolve();
  });
});
topic.on("typing", ({ sender }) => console.log(`${sender} is typing`));

await new Promise((resolve, reject) => {
  topic
    .join()
    .receive("ok", (reply) => {
      console.log(`joined over ${longpoll ? "long-poll" : "WebSocket"} (last_seq ${reply.last_seq})`);
      resolve();
    })
    .receive("error", (reply) => reject(new Error(`join refused: ${JSON.stringify(reply)}`)));
});

// 3. One message from the application (REST), one from the end user (socket push).
await api("POST", `/conversations/${conversation.id}/activities`, { text: "Hello from the REST API" });
topic
  .push("new_activity", { text: "Hello from the socket" })
  .receive("ok", ({ id, seq }) => console.log(`push accepted: activity ${id}, seq ${seq}`))
  .receive("error", (reply) => console.error("push refused", reply));

if (follow) {
  console.log(`listening; post to /api/v1/conversations/${conversation.id}/activities to see more`);
} else {
  const timeout = setTimeout(() => {
    console.error("timed out waiting for the two messages");
    process.exit(1);
  }, 15_000);
  await done;
  clearTimeout(timeout);
  socket.disconnect(() => process.exit(0));
}
