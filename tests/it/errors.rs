//! Bad input: every malformed request gets the error envelope with a stable code,
//! never a 500, and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Backend, TestApp, both_backends, expect_error, s};

both_backends!(malformed_requests_get_clear_errors_and_write_nothing);

async fn malformed_requests_get_clear_errors_and_write_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let path = format!("/api/v1/conversations/{}/activities", s(&conv, "id"));
    let post_raw = |body: &'static str| {
        app.req(Method::POST, &path)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    for body in ["{", "", "not json", r#"{"text": "x"} trailing"#] {
        expect_error(
            post_raw(body).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        )
        .await;
    }
    for (body, field) in [
        (r#"{"text": 5}"#, "text"),
        (r#"{"type": "shout", "text": "x"}"#, "type"),
        (r#"{"direction": "sideways", "text": "x"}"#, "direction"),
        (r#"{"text": "x", "color": "red"}"#, "color"),
        ("[]", "body"),
        ("null", "body"),
    ] {
        let err = expect_error(
            post_raw(body).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(err["details"]["fields"][0]["field"], field, "{body}");
    }
    // Domain rules, all reported at once.
    let resp = app
        .post_activity(
            s(&conv, "id"),
            json!({"text": "x".repeat(64 * 1024 + 1), "attachments": ["not an object"], "metadata": {"k": "v".repeat(17 * 1024)}}),
        )
        .await;
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let fields: Vec<&str> = err["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["text", "attachments[0]", "metadata"]);
    expect_error(
        app.post_activity(s(&conv, "id"), json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // Oversize body.
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(300 * 1024));
    let resp = app
        .req(Method::POST, &path)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // Wrong content type.
    let resp = app
        .req(Method::POST, &path)
        .header("content-type", "text/plain")
        .body(r#"{"text":"x"}"#)
        .send()
        .await
        .unwrap();
    expect_error(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    // Ids that are not UUIDs: 400 invalid_id, the same on every route.
    for (method, p) in [
        (Method::GET, "/api/v1/conversations/123"),
        (Method::GET, "/api/v1/conversations/not-a-uuid/activities"),
        (Method::GET, "/api/v1/channels/xyz"),
        (Method::GET, "/api/v1/activities/%20/deliveries"),
        (Method::POST, "/api/v1/conversations/zzz/close"),
    ] {
        expect_error(
            app.req(method, p).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_id",
        )
        .await;
    }
    // Unknown ids in bodies and queries.
    let resp = app
        .req(Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": "nope", "user_id": "u"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    expect_error(
        app.req(Method::GET, "/api/v1/conversations?channel_id=nope")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;

    // Missing and garbage credentials.
    let conv_path = format!("/api/v1/conversations/{}", s(&conv, "id"));
    expect_error(
        app.anon(Method::GET, &conv_path).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    for (header, value, code) in [
        ("x-api-key", "cvg_nope", "invalid_api_key"),
        ("x-api-key", "", "invalid_api_key"),
        ("authorization", "Bearer cvg_wrong", "invalid_api_key"),
        ("authorization", "Bearer x.y.z", "invalid_token"),
        ("x-channel-token", "garbage", "invalid_token"),
    ] {
        let resp = app
            .anon(Method::GET, &conv_path)
            .header(header, value)
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::UNAUTHORIZED, code).await;
    }
    let resp = app
        .anon(Method::GET, &conv_path)
        .header("authorization", "Basic dTpw")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Unknown routes and methods answer in the same envelope.
    expect_error(
        app.req(Method::GET, "/api/v1/nothing")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        app.req(Method::DELETE, &conv_path).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;

    // None of it wrote anything.
    assert_eq!(app.activities_count_direct(s(&conv, "id")).await, 0);
    let stored = app
        .store
        .get_conversation(app.tenant_id, s(&conv, "id").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.last_seq, 0);
}
