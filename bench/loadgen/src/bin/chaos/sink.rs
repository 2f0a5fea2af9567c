//! The webhook receiver: answers every `POST /hook` with 200 after a fixed delay and
//! records what arrived, when, and under which `webhook-id`. The delay keeps deliveries
//! in flight, so that a killed node always holds some.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    /// The activity id (`id` of the body).
    pub activity: String,
    /// `conversation_id` of the body.
    pub conversation: String,
    pub seq: i64,
    /// The `webhook-id` header: the delivery id, stable across retries.
    pub webhook_id: String,
}

/// What the sink has seen.
#[derive(Default)]
pub struct Sink {
    arrivals: Mutex<Vec<Arrival>>,
    malformed: Mutex<u64>,
    delay: Duration,
}

impl Sink {
    /// Every arrival so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().expect("sink lock poisoned").clone()
    }

    /// Requests whose body or headers could not be read.
    pub fn malformed(&self) -> u64 {
        *self.malformed.lock().expect("sink lock poisoned")
    }
}

async fn hook(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let parsed = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        Some(Arrival {
            at,
            activity: v.get("id")?.as_str()?.to_owned(),
            conversation: v.get("conversation_id")?.as_str()?.to_owned(),
            seq: v.get("seq")?.as_i64()?,
            webhook_id: headers.get("webhook-id")?.to_str().ok()?.to_owned(),
        })
    });
    match parsed {
        Some(arrival) => {
            sink.arrivals
                .lock()
                .expect("sink lock poisoned")
                .push(arrival);
            tokio::time::sleep(sink.delay).await;
            StatusCode::OK
        }
        None => {
            *sink.malformed.lock().expect("sink lock poisoned") += 1;
            StatusCode::BAD_REQUEST
        }
    }
}

/// Starts the sink on `addr` (127.0.0.x), answering after `delay`; it runs as long as
/// the process.
///
/// # Errors
/// `addr` is not loopback or cannot be bound.
pub async fn start(addr: SocketAddr, delay: Duration) -> anyhow::Result<Arc<Sink>> {
    anyhow::ensure!(addr.ip().is_loopback(), "the sink must listen on loopback");
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let sink = Arc::new(Sink {
        delay,
        ..Sink::default()
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(Arc::clone(&sink));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("chaos: sink stopped: {e}");
        }
    });
    Ok(sink)
}
