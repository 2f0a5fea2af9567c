//! HTTPS and WSS served directly, and `CONVERGER_FORCE_HTTPS` behind a proxy.
//!
//! Storage plays no part here, so these tests run on SQLite only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HOST, LOCATION, STRICT_TRANSPORT_SECURITY};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::socket::topic;
use crate::common::{Backend, TestApp, expect_data, s};

const HSTS: &str = "max-age=31536000; includeSubDomains";

/// A self-signed certificate for `localhost` and `127.0.0.1`, written to `dir`;
/// returns the certificate and key paths.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn hsts(resp: &reqwest::Response) -> Option<&str> {
    resp.headers()
        .get(STRICT_TRANSPORT_SECURITY)
        .map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_are_served_with_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);

    let resp = app.anon(Method::GET, "/health").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(hsts(&resp), Some(HSTS));
    let channel = app.websocket_channel().await;
    let conversation = app.create_conversation(s(&channel, "id"), None).await;
    let conversation = s(&conversation, "id");
    let resp = app
        .req(
            Method::GET,
            &format!("/api/v1/conversations/{conversation}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(hsts(&resp), Some(HSTS));
    expect_data(resp, StatusCode::OK).await;

    // Phoenix over WSS: join, then receive what is posted over HTTPS.
    let mut socket = app.socket(conversation, "alice").await;
    let reply = socket.join(&topic(conversation), "1", json!({})).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let posted = app.post(conversation, "over TLS").await;
    let got = socket.activities(1).await;
    assert_eq!(got[0]["id"], posted["id"]);
    assert_eq!(got[0]["text"], "over TLS");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let addr = app.base.trim_start_matches("https://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    assert!(read.is_ok() || answer.is_empty(), "{read:?}");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    let plain = no_redirects()
        .get(format!("http://{addr}/health"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificates_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_key) = self_signed(other.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem");
    for (cert, key) in [
        (garbage.clone(), key.clone()),
        (cert.clone(), garbage),
        (cert.clone(), other_key),
        (missing, key),
    ] {
        let mut config =
            converger::Config::new(format!("sqlite://{}", dir.path().join("c.db").display()));
        config.jwt_secret = Some(crate::common::JWT_SECRET.into());
        config.tls_cert = Some(cert.clone());
        config.tls_key = Some(key.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let run = converger::run(config, listener, CancellationToken::new());
        let err = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("start-up fails at once")
            .expect_err("the node must not start");
        let message = format!("{err:#}");
        assert!(
            message.contains(&cert.display().to_string()),
            "{cert:?} {key:?}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_https_redirects_what_a_trusted_proxy_forwards_over_http() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.force_https = true;
        c.trusted_proxies = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
        c.public_url = "http://hub.example.com:8080".into();
    })
    .await;
    let client = no_redirects();
    let url = |path: &str| format!("{}{path}", app.base);

    // Forwarded http: 308 (a POST is repeated as a POST) to the public URL's host,
    // without its plain-HTTP port, path and query kept; never to the host the
    // request names.
    let resp = client
        .post(url("/api/v1/channels?x=1&y=%20"))
        .header("x-forwarded-proto", "http")
        .header(HOST, "evil.example:8080")
        .header("x-api-key", &app.api_key)
        .json(&json!({"name": "n", "type": "websocket", "config": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()[LOCATION],
        "https://hub.example.com/api/v1/channels?x=1&y=%20"
    );
    assert_eq!(hsts(&resp), None);
    // Nothing was created by the redirected request.
    let listed = app
        .req(Method::GET, "/api/v1/channels")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(hsts(&listed), Some(HSTS));
    assert_eq!(
        expect_data(listed, StatusCode::OK).await,
        json!([]),
        "the redirected POST created nothing"
    );

    // Without the header the request is plain HTTP too.
    let resp = client
        .get(url("/api/v1/channels"))
        .header(HOST, "hub.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()[LOCATION],
        "https://hub.example.com/api/v1/channels"
    );

    // Forwarded https is served, with HSTS.
    let resp = client
        .get(url("/api/v1/channels"))
        .header("x-forwarded-proto", "https")
        .header("x-api-key", &app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(hsts(&resp), Some(HSTS));

    // Health checks and scrapes stay on plain HTTP.
    for path in ["/health", "/ready", "/metrics"] {
        let resp = client
            .get(url(path))
            .header("x-forwarded-proto", "http")
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::PERMANENT_REDIRECT, "{path}");
        assert_eq!(hsts(&resp), None, "{path}");
    }
    let resp = client
        .get(url("/health"))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_https_ignores_the_proto_of_untrusted_peers_and_prefers_the_public_url() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.force_https = true;
        c.public_url = "https://converger.example.com".into();
        // The test client (127.0.0.1) is not a trusted proxy.
        c.trusted_proxies = converger::access::parse_cidrs("10.0.0.0/8").unwrap();
    })
    .await;
    let client = no_redirects();
    let resp = client
        .get(format!("{}/api/v1/channels?cursor=abc", app.base))
        .header("x-forwarded-proto", "https")
        .header(HOST, "evil.example")
        .header("x-api-key", &app.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()[LOCATION],
        "https://converger.example.com/api/v1/channels?cursor=abc",
        "the host comes from the public URL, never from the request"
    );
    assert_eq!(hsts(&resp), None);
    let resp = client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_force_https_forwarded_requests_are_served_as_they_come() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.trusted_proxies = converger::access::parse_cidrs("127.0.0.1/32").unwrap();
    })
    .await;
    for proto in ["http", "https"] {
        let resp = app
            .req(Method::GET, "/api/v1/channels")
            .header("x-forwarded-proto", proto)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{proto}");
        assert_eq!(hsts(&resp), None, "{proto}");
    }
    app.stop().await;
}
