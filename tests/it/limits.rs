//! Rate limits and CORS through real HTTP.

use reqwest::header::{ACCESS_CONTROL_ALLOW_ORIGIN, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Backend, TestApp, both_backends, expect_error, s};

both_backends!(
    per_ip_and_per_tenant_limits_answer_429,
    token_issuance_is_limited_per_address,
    cors_preflight_and_origins,
);

async fn statuses(app: &TestApp, key: &str, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            app.with_key(key, Method::GET, "/api/v1/channels")
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    out
}

async fn per_ip_and_per_tenant_limits_answer_429(backend: Backend) {
    // One request a second, bursts of two: the third in a row is refused (unless the
    // machine takes a full second for two requests, which would refill one token).
    let app = TestApp::start_with(backend, |c| c.rate_limit_per_ip = 1).await;
    let got = statuses(&app, &app.api_key, 4).await;
    assert_eq!(got[..2], [StatusCode::OK, StatusCode::OK], "{got:?}");
    assert!(got[2..].contains(&StatusCode::TOO_MANY_REQUESTS), "{got:?}");
    let resp = app
        .req(Method::GET, "/api/v1/channels")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Health checks are not rate limited.
    assert_eq!(
        app.anon(Method::GET, "/health")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let app = TestApp::start_with(backend, |c| {
        c.rate_limit_per_ip = 0;
        c.rate_limit_per_tenant = 1;
    })
    .await;
    let (_, other_key) = app.create_tenant("other").await;
    let got = statuses(&app, &app.api_key, 4).await;
    assert_eq!(got[..2], [StatusCode::OK, StatusCode::OK], "{got:?}");
    assert!(got[2..].contains(&StatusCode::TOO_MANY_REQUESTS), "{got:?}");
    // Another tenant has its own budget.
    assert_eq!(
        statuses(&app, &other_key, 2).await,
        [StatusCode::OK, StatusCode::OK]
    );
}

async fn token_issuance_is_limited_per_address(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let mut got = Vec::new();
    for n in 0..11 {
        let resp = app
            .req(Method::POST, "/api/v1/tokens")
            .json(&json!({"conversation_id": s(&conv, "id"), "user_id": format!("u{n}")}))
            .send()
            .await
            .unwrap();
        got.push(resp.status());
    }
    assert!(
        got[..10].iter().all(|s| *s == StatusCode::CREATED),
        "{got:?}"
    );
    assert_eq!(got[10], StatusCode::TOO_MANY_REQUESTS);
}

async fn cors_preflight_and_origins(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.cors_origins = Some("https://app.example.com".into())
    })
    .await;
    let preflight = app
        .anon(Method::OPTIONS, "/api/v1/conversations")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-api-key, content-type, x-idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let h = preflight.headers();
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "x-api-key",
        "x-channel-token",
        "x-idempotency-key",
        "content-type",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    let get = app
        .req(Method::GET, "/api/v1/channels")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    let evil = app
        .req(Method::GET, "/api/v1/channels")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(evil.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // No origins configured: no CORS headers at all.
    let closed = TestApp::start(backend).await;
    let get = closed
        .req(Method::GET, "/api/v1/channels")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(get.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}
