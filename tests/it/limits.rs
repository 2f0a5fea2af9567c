//! Rate limits and CORS through real HTTP.

use reqwest::header::{ACCESS_CONTROL_ALLOW_ORIGIN, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    per_ip_and_per_tenant_limits_answer_429,
    token_issuance_is_limited_per_address,
    token_issuance_with_the_api_key_is_limited_per_tenant,
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

/// With a channel token (which browsers may hold), tokens are limited per address.
async fn token_issuance_is_limited_per_address(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let mut got = Vec::new();
    for n in 0..11 {
        let resp = app
            .anon(Method::POST, "/api/v1/tokens")
            .header("x-channel-token", s(&ch, "token"))
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
    // The tenant's application, with its API key, has a budget of its own.
    let resp = app
        .req(Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": s(&conv, "id"), "user_id": "from-the-backend"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

async fn issue(app: &TestApp, key: &str, conversation: &str) -> reqwest::Response {
    app.with_key(key, Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": conversation, "user_id": "u"}))
        .send()
        .await
        .unwrap()
}

/// A tenant's application issues tokens for all its users from one address: with its
/// API key the budget is the tenant's, far above one address's, and every tenant has
/// its own.
async fn token_issuance_with_the_api_key_is_limited_per_tenant(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limit_tokens_per_minute = 2;
        c.rate_limit_tokens_per_tenant_per_minute = 5;
    })
    .await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let (_, other_key) = app.create_tenant("other").await;
    let other_ch = app
        .create_channel_as(&other_key, "websocket", json!({}))
        .await;
    let other_conv = expect_data(
        app.with_key(&other_key, Method::POST, "/api/v1/conversations")
            .json(&json!({"channel_id": s(&other_ch, "id")}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;

    // More than the address's 2 a minute, up to the tenant's 5, all from this address.
    for n in 0..5 {
        let resp = issue(&app, &app.api_key, s(&conv, "id")).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "token {n}");
    }
    let refused = issue(&app, &app.api_key, s(&conv, "id")).await;
    assert!(
        refused.headers()[RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let err = expect_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(err["message"].as_str().unwrap().contains("tenant"), "{err}");
    // The other tenant, from the same address, is not held back.
    for _ in 0..5 {
        assert_eq!(
            issue(&app, &other_key, s(&other_conv, "id")).await.status(),
            StatusCode::CREATED
        );
    }
    // Nor are browsers with the exhausted tenant's channel token: they count per address.
    let resp = app
        .anon(Method::POST, "/api/v1/tokens")
        .header("x-channel-token", s(&ch, "token"))
        .json(&json!({"conversation_id": s(&conv, "id"), "user_id": "browser"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
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
