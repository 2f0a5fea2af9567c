//! Graceful shutdown of a `converger serve` process on SIGTERM: `/ready` turns 503
//! first, then the listener closes and sockets get 1012, in-flight requests and
//! delivery attempts finish within the deadline, and what cannot finish is handed to
//! the next node at once (leases released, attempts not counted).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::node::Node;
use crate::common::sink::{Reply, Sink};
use crate::common::socket::{Socket, topic, ws_url};
use crate::common::{Backend, TestDb, both_backends, eventually, expect_data, s};
use converger::store::Store;

both_backends!(
    sigterm_drains_then_hands_unfinished_deliveries_over,
    work_in_flight_finishes_before_the_deadline,
);

/// `(status, attempts, leased)` of every delivery, read past the API.
async fn deliveries(store: &Store) -> Vec<(String, i32, bool)> {
    const SQL: &str =
        "SELECT status, attempts, locked_until IS NOT NULL FROM deliveries ORDER BY id";
    match store {
        Store::Sqlite { writer, .. } => sqlx::query_as(SQL).fetch_all(writer).await,
        Store::Postgres(pool, _) => sqlx::query_as(SQL).fetch_all(pool).await,
    }
    .unwrap()
}

/// The API of one node for one tenant.
struct Api<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    key: &'a str,
}

impl Api<'_> {
    async fn post(&self, path: &str, body: Value, status: StatusCode) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-api-key", self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_data(resp, status).await
    }

    /// A conversation on a new channel of this type and config; returns its id.
    async fn conversation(&self, kind: &str, config: Value) -> String {
        let channel = self
            .post(
                "/api/v1/channels",
                json!({"name": kind, "type": kind, "config": config}),
                StatusCode::CREATED,
            )
            .await;
        let conversation = self
            .post(
                "/api/v1/conversations",
                json!({"channel_id": channel["id"]}),
                StatusCode::CREATED,
            )
            .await;
        s(&conversation, "id").to_owned()
    }

    /// Posts a message; returns the activity id.
    async fn message(&self, conversation: &str, text: &str) -> String {
        let activity = self
            .post(
                &format!("/api/v1/conversations/{conversation}/activities"),
                json!({"text": text}),
                StatusCode::CREATED,
            )
            .await;
        s(&activity, "id").to_owned()
    }

    /// `conversations` conversations on one webhook channel to `sink`, two messages
    /// each: the first of each is attempted at once, the second waits behind it (one
    /// conversation's deliveries go out in order). Returns the activity ids.
    async fn fill(&self, sink: &Sink, conversations: usize) -> HashSet<String> {
        let channel = self
            .post(
                "/api/v1/channels",
                // Attempts time out after a minute, long after every deadline here.
                json!({"name": "hook", "type": "webhook",
                       "config": {"url": sink.url, "timeout_ms": 60_000}}),
                StatusCode::CREATED,
            )
            .await;
        let mut ids = HashSet::new();
        for _ in 0..conversations {
            let conversation = self
                .post(
                    "/api/v1/conversations",
                    json!({"channel_id": channel["id"]}),
                    StatusCode::CREATED,
                )
                .await;
            for text in ["first", "second"] {
                ids.insert(self.message(s(&conversation, "id"), text).await);
            }
        }
        ids
    }

    /// A V2 socket joined to `conversation`.
    async fn joined_socket(&self, conversation: &str) -> Socket {
        let token = self
            .post(
                "/api/v1/tokens",
                json!({"conversation_id": conversation, "user_id": "alice"}),
                StatusCode::CREATED,
            )
            .await;
        let mut socket =
            Socket::connect(&ws_url(self.base, s(&token, "token"), Some("2.0.0"))).await;
        let reply = socket.join(&topic(conversation), "1", json!({})).await;
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        socket
    }
}

/// The close code the server ends a socket with, skipping other frames.
async fn close_code(socket: &mut Socket, timeout: Duration) -> Option<CloseCode> {
    tokio::time::timeout(timeout, async {
        loop {
            match socket.ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the socket is closed in time")
}

async fn sigterm_drains_then_hands_unfinished_deliveries_over(backend: Backend) {
    const DELAY: u64 = 5;
    const TIMEOUT: u64 = 3;
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let sink = Sink::start().await;
    // Slower than the whole shutdown: these attempts are still in flight at the deadline.
    sink.always(Reply::status(200).delay(Duration::from_secs(120)));
    let mut node = Node::start_with(
        &url,
        &[
            ("CONVERGER_SHUTDOWN_DELAY_SECS", &DELAY.to_string()),
            ("CONVERGER_SHUTDOWN_TIMEOUT_SECS", &TIMEOUT.to_string()),
            // Ten-minute leases: only their release lets the next node in soon.
            ("CONVERGER_DELIVERY_LEASE_SECS", "600"),
        ],
        std::process::Stdio::null(),
    );
    node.ready(&http).await;
    let api = Api {
        http: &http,
        base: &node.base,
        key: &key,
    };
    let chat = api.conversation("websocket", json!({})).await;
    let mut socket = api.joined_socket(&chat).await;
    let ids = api.fill(&sink, 3).await;
    sink.wait_for(3, Duration::from_secs(30)).await;

    node.terminate();
    // Draining: not ready, yet alive and serving, sockets included.
    let body: Value = eventually(
        Duration::from_secs(DELAY),
        "/ready to answer 503",
        || async {
            let r = http.get(format!("{}/ready", node.base)).send().await.ok()?;
            if r.status() != StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            r.json().await.ok()
        },
    )
    .await;
    assert_eq!(body["status"], "shutting_down");
    let health = http
        .get(format!("{}/health", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let posted = api.message(&chat, "while draining").await;
    assert_eq!(socket.activities(1).await[0]["id"], posted.as_str());
    // Then sockets are told to reconnect elsewhere, and the process ends in time.
    assert_eq!(
        close_code(&mut socket, Duration::from_secs(DELAY + 20)).await,
        Some(CloseCode::Restart)
    );
    let status = node.exited(Duration::from_secs(DELAY + TIMEOUT + 10)).await;
    assert_eq!(status.code(), Some(0), "{status}");

    // The abandoned attempts left no lease and count for nothing; the waiting
    // deliveries were not claimed.
    let rows = deliveries(&store).await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(status, attempts, leased)| status == "pending" && *attempts == 0 && !leased),
        "{rows:?}"
    );

    // The next node delivers everything at once, not after the leases' ten minutes.
    sink.always(Reply::status(200));
    let next = Node::start(&url);
    next.ready(&http).await;
    eventually(
        Duration::from_secs(60),
        "every delivery to be delivered",
        || async {
            let rows = deliveries(&store).await;
            rows.iter()
                .all(|(status, _, _)| status == "delivered")
                .then_some(())
        },
    )
    .await;
    let rows = deliveries(&store).await;
    assert!(
        rows.iter()
            .all(|(_, attempts, leased)| *attempts == 1 && !leased),
        "one counted attempt each: {rows:?}"
    );
    let received: HashSet<String> = sink
        .received()
        .iter()
        .map(|r| s(&r.json(), "id").to_owned())
        .collect();
    assert_eq!(received, ids, "none lost");
    store.close().await;
}

async fn work_in_flight_finishes_before_the_deadline(backend: Backend) {
    const TIMEOUT: u64 = 30;
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let sink = Sink::start().await;
    // Long enough to be in flight at the signal, well within the deadline.
    sink.always(Reply::status(200).delay(Duration::from_secs(10)));
    let mut node = Node::start_with(
        &url,
        &[
            ("CONVERGER_SHUTDOWN_TIMEOUT_SECS", &TIMEOUT.to_string()),
            // Attempts are bounded by the lease: keep it well above the sink's delay.
            ("CONVERGER_DELIVERY_LEASE_SECS", "600"),
        ],
        std::process::Stdio::null(),
    );
    node.ready(&http).await;
    let api = Api {
        http: &http,
        base: &node.base,
        key: &key,
    };
    let chat = api.conversation("websocket", json!({})).await;

    // A request in flight: its handler has asked for the body (100 Continue), which
    // is sent only once the listener is closed.
    let addr = node.base.trim_start_matches("http://").to_owned();
    let mut request = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = json!({"text": "sent during shutdown"}).to_string();
    let head = format!(
        "POST /api/v1/conversations/{chat}/activities HTTP/1.1\r\nhost: {addr}\r\n\
         x-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\n\r\n",
        body.len()
    );
    request.write_all(head.as_bytes()).await.unwrap();
    let mut continued = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !continued.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                request.read(&mut byte).await.unwrap(),
                1,
                "connection closed"
            );
            continued.push(byte[0]);
        }
    })
    .await
    .expect("100 Continue in time");
    assert!(
        continued.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&continued)
    );

    api.fill(&sink, 3).await;
    sink.wait_for(3, Duration::from_secs(30)).await;
    node.terminate();
    eventually(
        Duration::from_secs(10),
        "new connections to be refused",
        || async {
            tokio::net::TcpStream::connect(&addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    request.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), request.read_to_end(&mut answer))
        .await
        .expect("the in-flight request is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = node.exited(Duration::from_secs(TIMEOUT + 10)).await;
    assert_eq!(status.code(), Some(0), "{status}");

    // The attempts in flight were recorded before the exit; the ones behind them were
    // not claimed once the node had stopped.
    let mut rows = deliveries(&store).await;
    rows.sort();
    assert_eq!(
        rows,
        [
            ("delivered".to_owned(), 1, false),
            ("delivered".to_owned(), 1, false),
            ("delivered".to_owned(), 1, false),
            ("pending".to_owned(), 0, false),
            ("pending".to_owned(), 0, false),
            ("pending".to_owned(), 0, false),
        ]
    );
    let received: Vec<String> = sink
        .received()
        .iter()
        .map(|r| s(&r.json(), "text").to_owned())
        .collect();
    assert_eq!(received, ["first"; 3]);
    let tenant = store
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let stored = store
        .list_activities(tenant.id, chat.parse().unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        stored.len(),
        1,
        "the in-flight request's activity is stored"
    );
    store.close().await;
}
