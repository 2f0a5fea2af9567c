//! REST load: activities posted open loop at a fixed rate, round-robin over the
//! conversations and the nodes, each with its own idempotency key.
//!
//! An activity is posted until it is acknowledged (201, or 200 for a key the server
//! already stored): a connection error, a timeout, a 5xx or a 429 is retried with the
//! same key, on the next node, after a short pause. A 4xx other than 429 is not
//! retried. An activity still unacknowledged after `give_up` is abandoned. Every
//! response (and every transport error) is logged with its node and time, so that
//! any window of the run can be read back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// An acknowledged activity.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    /// Index into the run's conversations.
    pub conversation: usize,
    pub id: String,
    pub seq: i64,
    /// When the 2xx was read.
    pub at: Instant,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A response with this status and, for errors, the body's `error.code`.
    Status(u16, Option<String>),
    /// No response: `connect`, `timeout` or `transport`.
    Transport(&'static str),
}

impl Outcome {
    /// `201`, `503 store_unavailable`, `connect`, ...
    pub fn label(&self) -> String {
        match self {
            Outcome::Status(status, Some(code)) => format!("{status} {code}"),
            Outcome::Status(status, None) => status.to_string(),
            Outcome::Transport(kind) => (*kind).to_owned(),
        }
    }

    /// A 5xx that is not `503`: the server failed rather than refused.
    pub fn server_error(&self) -> bool {
        matches!(self, Outcome::Status(s, _) if *s >= 500 && *s != 503)
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Response {
    pub node: usize,
    pub sent: Instant,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Everything the load saw.
#[derive(Default)]
pub struct LoadLog {
    /// Activities scheduled (each with its own key).
    pub scheduled: u64,
    pub acks: Vec<Ack>,
    pub responses: Vec<Response>,
    /// Keys given up after `give_up`.
    pub abandoned: Vec<String>,
    /// Keys refused with a 4xx that is not worth retrying, and the answer.
    pub rejected: Vec<(String, Outcome)>,
    /// Activities that waited more than a second for a free slot.
    pub late: u64,
}

/// What to post where.
pub struct LoadConfig {
    pub client: reqwest::Client,
    pub nodes: Vec<String>,
    pub api_key: String,
    /// Conversation ids; activity `n` goes to `conversations[n % len]`.
    pub conversations: Vec<String>,
    pub rate: f64,
    /// Activities in flight at most (a retried one keeps its slot).
    pub concurrency: usize,
    /// Prefix of the idempotency keys.
    pub key_prefix: String,
    pub give_up: Duration,
}

/// Posts at `rate`/s from now until `stop` turns true, then waits for the activities
/// in flight (each at most `give_up`), and returns the log.
pub async fn run(config: LoadConfig, mut stop: watch::Receiver<bool>) -> LoadLog {
    let config = Arc::new(config);
    let log = Arc::new(Mutex::new(LoadLog::default()));
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut n = 0u64;
    loop {
        let at = start + Duration::from_secs_f64(n as f64 / config.rate);
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = stopped(&mut stop) => break,
        }
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("never closed");
        if at.elapsed() > Duration::from_secs(1) {
            log.lock().expect("load log poisoned").late += 1;
        }
        let (config, log) = (Arc::clone(&config), Arc::clone(&log));
        tasks.spawn(async move {
            post_until_acknowledged(&config, &log, n).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        n += 1;
    }
    while tasks.join_next().await.is_some() {}
    let mut log = Arc::into_inner(log)
        .expect("every poster has finished")
        .into_inner()
        .expect("load log poisoned");
    log.scheduled = n;
    log
}

async fn post_until_acknowledged(config: &LoadConfig, log: &Mutex<LoadLog>, n: u64) {
    let key = format!("{}-{n}", config.key_prefix);
    let conversation = usize::try_from(n).unwrap_or(0) % config.conversations.len();
    let path = format!(
        "/api/v1/conversations/{}/activities",
        config.conversations[conversation]
    );
    let body = json!({ "text": format!("chaos message {n}") });
    let first = Instant::now();
    let mut node = usize::try_from(n).unwrap_or(0) % config.nodes.len();
    for attempt in 0u32.. {
        let sent = Instant::now();
        let (outcome, ack) = post_once(config, &config.nodes[node], &path, &key, &body).await;
        let latency = sent.elapsed();
        let retry = match &outcome {
            Outcome::Status(200 | 201, _) => false,
            Outcome::Status(status, _) => *status == 429 || *status >= 500,
            Outcome::Transport(_) => true,
        };
        {
            let mut entry = log.lock().expect("load log poisoned");
            entry.responses.push(Response {
                node,
                sent,
                latency,
                outcome: outcome.clone(),
            });
            if let Some((id, seq)) = ack {
                entry.acks.push(Ack {
                    key,
                    conversation,
                    id,
                    seq,
                    at: Instant::now(),
                });
                return;
            }
            if !retry {
                entry.rejected.push((key, outcome));
                return;
            }
            if first.elapsed() >= config.give_up {
                entry.abandoned.push(key);
                return;
            }
        }
        node = (node + 1) % config.nodes.len();
        let pause = Duration::from_millis(50 * u64::from(attempt.min(6) + 1));
        tokio::time::sleep(pause).await;
    }
}

/// One POST; on a 2xx with an activity, its id and seq.
async fn post_once(
    config: &LoadConfig,
    base: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (Outcome, Option<(String, i64)>) {
    let response = match config
        .client
        .post(format!("{base}{path}"))
        .header("x-api-key", &config.api_key)
        .header("x-idempotency-key", key)
        .json(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (Outcome::Transport(transport_kind(&e)), None),
    };
    let status = response.status().as_u16();
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return (Outcome::Transport(transport_kind(&e)), None),
    };
    let value: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status == 200 || status == 201 {
        let ack = value.as_ref().and_then(|v| {
            Some((
                v.pointer("/data/id")?.as_str()?.to_owned(),
                v.pointer("/data/seq")?.as_i64()?,
            ))
        });
        return match ack {
            Some(ack) => (Outcome::Status(status, None), Some(ack)),
            // A 2xx without an activity is a broken answer: retried like a 5xx.
            None => (Outcome::Status(status, Some("no_activity".into())), None),
        };
    }
    let code = value
        .as_ref()
        .and_then(|v| v.pointer("/error/code"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    (Outcome::Status(status, code), None)
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}
