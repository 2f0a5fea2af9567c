//! Connection caps and timeouts, attacked from outside over raw TCP: slow request
//! heads, stalled bodies, connection floods from one address or many, and WebSocket
//! clients that stop reading.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::socket::{Socket, refused, topic};
use crate::common::{Backend, TestApp, both_backends, eventually};

both_backends!(
    slow_request_heads_are_closed,
    stalled_request_bodies_are_closed,
    node_cap_answers_503_and_recovers,
    address_cap_answers_429,
    sockets_through_a_trusted_proxy_count_per_forwarded_client,
    a_socket_whose_client_stops_reading_is_closed,
);

/// Longer than any timeout these tests configure, and short enough for a hung test
/// to fail rather than stall the suite.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; fails if it stays open.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(ENDS_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&seen)
    );
    seen
}

/// One `GET /health` on a kept-alive raw connection: the status and the body.
async fn raw_get(stream: &mut TcpStream) -> (u16, Value) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(ENDS_WITHIN, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("content-length");
        if body.len() < length {
            continue;
        }
        let status = head[9..12].parse().unwrap();
        if status != 200 {
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 1"),
                "{head}"
            );
        }
        return (status, serde_json::from_str(body).unwrap());
    }
}

/// Opens up to `n` connections, each answering a request, until one is refused: the
/// connections admitted, and the refusal's status and body. A refused connection is
/// closed by the server after its answer.
async fn connect_until_refused(app: &TestApp, n: usize) -> (Vec<TcpStream>, Option<(u16, Value)>) {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr(app)).await.unwrap();
        let (status, body) = raw_get(&mut stream).await;
        if status != 200 {
            read_until_closed(&mut stream).await;
            return (held, Some((status, body)));
        }
        held.push(stream);
    }
    (held, None)
}

async fn slow_request_heads_are_closed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.header_read_timeout_secs = 1).await;
    // A WebSocket handshake that never ends its head, on a fresh connection ...
    let mut first = TcpStream::connect(addr(&app)).await.unwrap();
    first
        .write_all(b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\n")
        .await
        .unwrap();
    // ... and one on a kept-alive connection, after a complete request.
    let mut kept = TcpStream::connect(addr(&app)).await.unwrap();
    assert_eq!(raw_get(&mut kept).await.0, 200);
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: loc")
        .await
        .unwrap();
    read_until_closed(&mut first).await;
    read_until_closed(&mut kept).await;
    // An idle kept-alive connection is closed after as long.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    assert_eq!(raw_get(&mut idle).await.0, 200);
    read_until_closed(&mut idle).await;
}

async fn stalled_request_bodies_are_closed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.idle_timeout_secs = 1).await;
    let conversation = app.conversation().await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /api/v1/conversations/{conversation}/activities HTTP/1.1\r\nhost: localhost\r\n\
         x-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"text\": \"",
        app.api_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    read_until_closed(&mut stream).await;
    // Nothing was written. Read past HTTP: the client's pooled connection has idled
    // out under the same one-second timeout, and reusing it would race its close.
    assert_eq!(app.activities_count_direct(&conversation).await, 0);
}

async fn node_cap_answers_503_and_recovers(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.max_connections = Some(4);
        c.max_connections_per_ip = 0;
    })
    .await;
    // The test client's own pooled connection may hold a place: the refusal comes at
    // the fourth connection or the fifth.
    let (mut held, refusal) = connect_until_refused(&app, 5).await;
    let (status, body) = refusal.expect("a connection beyond the cap is refused");
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert!(held.len() >= 3, "{} admitted", held.len());
    // The held connections still work; once they close, new ones are admitted.
    assert_eq!(raw_get(&mut held[0]).await.0, 200);
    drop(held);
    eventually(ENDS_WITHIN, "a connection admitted again", || async {
        let mut stream = TcpStream::connect(addr(&app)).await.ok()?;
        (raw_get(&mut stream).await.0 == 200).then_some(())
    })
    .await;
    let metrics = app
        .anon(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("converger_connections_refused_total{cap=\"node\"}")),
        "refusals are counted"
    );
    assert!(metrics.contains("converger_connections_max 4"));
}

async fn address_cap_answers_429(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_connections_per_ip = 3).await;
    let (_held, refusal) = connect_until_refused(&app, 4).await;
    let (status, body) = refusal.expect("a fourth connection from one address is refused");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_connections");
}

async fn sockets_through_a_trusted_proxy_count_per_forwarded_client(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.max_connections_per_ip = 2;
        c.trusted_proxies = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
    })
    .await;
    let conversation = app.conversation().await;
    let token = app.token(&conversation, "u1").await;
    let request = |client: &str| {
        let mut request = app
            .url(&token, Some("2.0.0"))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        request
    };
    // Connections from the proxy are not capped: more than two sockets come through.
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async(request("198.51.100.7"))
            .await
            .unwrap();
        sockets.push(ws);
    }
    // The forwarded client is: its third socket is refused before the upgrade.
    assert_eq!(refused(request("198.51.100.7")).await, 429);
    let (other, _) = tokio_tungstenite::connect_async(request("198.51.100.8"))
        .await
        .unwrap();
    sockets.push(other);
    // A closed socket gives its place back.
    drop(sockets.remove(0));
    eventually(ENDS_WITHIN, "the client's place given back", || async {
        tokio_tungstenite::connect_async(request("198.51.100.7"))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

async fn a_socket_whose_client_stops_reading_is_closed(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.socket_send_timeout_secs = 1;
        // Large enough that only the send timeout, not a full queue, can end the
        // session.
        c.socket_outbound_queue = 1024;
    })
    .await;
    let conversation = app.conversation().await;
    let token = app.token(&conversation, "reader").await;
    // A client with a small receive window, so that the server's writes stall soon.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr(&app).parse().unwrap()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        app.url(&token, Some("2.0.0")),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut socket = Socket { ws };
    let reply = socket.join(&topic(&conversation), "1", json!({})).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");

    // About 9 MB of activities, more than the kernel buffers between the two, while
    // the client reads nothing.
    let text = "x".repeat(60 * 1024);
    const POSTED: usize = 150;
    for _ in 0..POSTED {
        app.post(&conversation, &text).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Reading now finds what was buffered, then the end of the socket: the session
    // gave up on its client rather than waiting for it.
    let mut received = 0;
    let ended = tokio::time::timeout(ENDS_WITHIN, async {
        while let Some(message) = socket.ws.next().await {
            match message {
                Ok(Message::Text(frame)) if frame.contains("new_activity") => received += 1,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the socket stayed open after {received} activities"
    );
    assert!(received < POSTED, "all {received} arrived: nothing stalled");
    // The node goes on serving sockets.
    let mut fresh = app.socket(&conversation, "reader").await;
    let reply = fresh
        .join(&topic(&conversation), "1", json!({"last_seq": POSTED}))
        .await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    assert_eq!(app.post(&conversation, "after").await["seq"], POSTED + 1);
    assert_eq!(fresh.activities(1).await[0]["text"], "after");
}
