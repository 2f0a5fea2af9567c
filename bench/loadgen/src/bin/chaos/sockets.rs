//! WebSocket clients (Phoenix Channels V2) that stay joined to their conversation
//! through node deaths.
//!
//! Each client remembers the highest `seq` it received and joins with it as
//! `last_seq`, so the server replays what it missed. A dropped connection is
//! reconnected (first to its own node, for about three seconds, then to the others in
//! turn); a `phx_error` on the topic is answered with a new join on the same socket; a
//! refused join is retried after its `retry_after`. Every `new_activity` is counted
//! per `seq`, so that missing and repeated activities can be told after the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::load::stopped;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnect attempts on a client's own node before it tries the others.
const OWN_NODE_ATTEMPTS: u32 = 10;
/// Pause between reconnect attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(300);
/// Clients heartbeat this often (the server's idle timeout is 60 s by default).
const HEARTBEAT: Duration = Duration::from_secs(20);
/// Longest a handshake or a join reply may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct SocketState {
    /// Index into the run's conversations.
    pub conversation: usize,
    /// Times each `seq` arrived.
    pub received: HashMap<i64, u32>,
    /// Highest `seq` received: the `last_seq` of the next join.
    pub last_seq: i64,
    /// Arrivals whose `seq` was more than one past the previous highest.
    pub jumps: u64,
    /// First arrivals of a `seq` below the highest already received.
    pub backwards: u64,
    /// Successful joins (the first one included).
    pub joins: u64,
    /// Handshakes that failed (node down, refused).
    pub connect_failures: u64,
    /// `phx_error` frames on the topic (the server's stream failed; rejoined).
    pub phx_errors: u64,
    /// Refused joins, by reason.
    pub refusals: BTreeMap<String, u64>,
}

impl SocketState {
    fn record(&mut self, seq: i64) {
        let count = self.received.entry(seq).or_default();
        *count += 1;
        if *count == 1 {
            if seq > self.last_seq + 1 {
                self.jumps += 1;
            } else if seq <= self.last_seq {
                self.backwards += 1;
            }
        }
        self.last_seq = self.last_seq.max(seq);
    }
}

/// One client: which conversation, which token, which node it prefers.
pub struct Client {
    pub conversation: usize,
    pub conversation_id: String,
    pub token: String,
    pub own_node: usize,
}

/// Starts `clients` against `nodes` (`127.0.0.1:port` addresses) and returns their
/// shared states. They run until `stop` turns true.
pub fn spawn_all(
    clients: Vec<Client>,
    nodes: Vec<String>,
    stop: &watch::Receiver<bool>,
) -> Vec<Arc<Mutex<SocketState>>> {
    let nodes = Arc::new(nodes);
    clients
        .into_iter()
        .map(|client| {
            let state = Arc::new(Mutex::new(SocketState {
                conversation: client.conversation,
                ..SocketState::default()
            }));
            tokio::spawn(run(
                client,
                Arc::clone(&nodes),
                Arc::clone(&state),
                stop.clone(),
            ));
            state
        })
        .collect()
}

enum End {
    Stop,
    /// Connection lost or join refused; pause this long before reconnecting.
    Reconnect(Duration),
}

async fn run(
    client: Client,
    nodes: Arc<Vec<String>>,
    state: Arc<Mutex<SocketState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if stop_requested(&stop) {
            return;
        }
        let node = if failures < OWN_NODE_ATTEMPTS {
            client.own_node
        } else {
            (client.own_node + failures as usize) % nodes.len()
        };
        let url = format!(
            "ws://{}/socket/websocket?token={}&vsn=2.0.0",
            nodes[node], client.token
        );
        let pause = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => match session(&client, ws, &state, &mut stop).await {
                (End::Stop, _) => return,
                (End::Reconnect(pause), joined) => {
                    failures = if joined { 0 } else { failures + 1 };
                    pause
                }
            },
            _ => {
                state
                    .lock()
                    .expect("socket state poisoned")
                    .connect_failures += 1;
                failures += 1;
                RECONNECT_PAUSE
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// One connection: joins, then reads until it ends. Returns whether a join succeeded.
async fn session(
    client: &Client,
    mut ws: Ws,
    state: &Mutex<SocketState>,
    stop: &mut watch::Receiver<bool>,
) -> (End, bool) {
    let topic = format!("conversation:{}", client.conversation_id);
    let mut refs = 0u64;
    let mut joined = false;
    let mut join_ref = match send_join(&mut ws, &topic, state, &mut refs).await {
        Ok(r) => r,
        Err(_) => return (End::Reconnect(RECONNECT_PAUSE), false),
    };
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    // A join must be answered in time; a silent node is left.
    let mut join_deadline = Some(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
    loop {
        let deadline = join_deadline.unwrap_or_else(|| tokio::time::Instant::now() + HEARTBEAT * 3);
        let msg = tokio::select! {
            () = stopped(stop) => {
                let _ = ws.close(None).await;
                return (End::Stop, joined);
            }
            () = tokio::time::sleep_until(deadline), if join_deadline.is_some() => {
                return (End::Reconnect(RECONNECT_PAUSE), joined);
            }
            _ = beat.tick() => {
                refs += 1;
                let frame = json!([null, refs.to_string(), "phoenix", "heartbeat", {}]).to_string();
                if ws.send(Message::text(frame)).await.is_err() {
                    return (End::Reconnect(RECONNECT_PAUSE), joined);
                }
                continue;
            }
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                return (End::Reconnect(RECONNECT_PAUSE), joined);
            }
            Some(Ok(_)) => continue,
        };
        let Ok(Value::Array(frame)) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if frame.get(2).and_then(Value::as_str) != Some(topic.as_str()) {
            continue;
        }
        match frame.get(3).and_then(Value::as_str) {
            Some("new_activity") => {
                if let Some(seq) = frame
                    .get(4)
                    .and_then(|p| p.get("seq"))
                    .and_then(Value::as_i64)
                {
                    state.lock().expect("socket state poisoned").record(seq);
                }
            }
            Some("phx_reply")
                if frame.first().and_then(Value::as_str) == Some(join_ref.as_str()) =>
            {
                if join_deadline.is_none() {
                    continue;
                }
                join_deadline = None;
                let payload = frame.get(4).cloned().unwrap_or(Value::Null);
                if payload.get("status").and_then(Value::as_str) == Some("ok") {
                    joined = true;
                    state.lock().expect("socket state poisoned").joins += 1;
                } else {
                    let reason = payload
                        .pointer("/response/reason")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_owned();
                    let retry_after = payload
                        .pointer("/response/retry_after")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.5);
                    *state
                        .lock()
                        .expect("socket state poisoned")
                        .refusals
                        .entry(reason)
                        .or_default() += 1;
                    let _ = ws.close(None).await;
                    return (
                        End::Reconnect(Duration::from_secs_f64(retry_after.clamp(0.1, 5.0))),
                        joined,
                    );
                }
            }
            Some("phx_error") => {
                state.lock().expect("socket state poisoned").phx_errors += 1;
                join_ref = match send_join(&mut ws, &topic, state, &mut refs).await {
                    Ok(r) => r,
                    Err(_) => return (End::Reconnect(RECONNECT_PAUSE), joined),
                };
                join_deadline = Some(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
            }
            Some("phx_close") => return (End::Reconnect(RECONNECT_PAUSE), joined),
            _ => {}
        }
    }
}

fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Sends a join resuming after the highest `seq` received; returns its join ref.
async fn send_join(
    ws: &mut Ws,
    topic: &str,
    state: &Mutex<SocketState>,
    refs: &mut u64,
) -> anyhow::Result<String> {
    *refs += 1;
    let join_ref = refs.to_string();
    let last_seq = state.lock().expect("socket state poisoned").last_seq;
    let frame = json!([join_ref, join_ref, topic, "phx_join", {"last_seq": last_seq}]).to_string();
    ws.send(Message::text(frame)).await.context("send join")?;
    Ok(join_ref)
}
