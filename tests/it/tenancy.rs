//! Tenant isolation: another tenant's ids answer 404 on every route, exactly like ids
//! that do not exist, and lists never show another tenant's rows.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(other_tenants_rows_are_not_found);

async fn other_tenants_rows_are_not_found(backend: Backend) {
    let app = TestApp::start(backend).await;
    // Tenant A's resources.
    let ch = app
        .create_channel("webhook", json!({"url": "https://a.example/h"}))
        .await;
    let conv = app.create_conversation(s(&ch, "id"), Some("a-user")).await;
    let act = expect_data(
        app.post_activity(s(&conv, "id"), json!({"text": "secret of A"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let (ch_id, conv_id, act_id) = (s(&ch, "id"), s(&conv, "id"), s(&act, "id"));

    // Tenant B, with resources of its own.
    let (_, key_b) = app.create_tenant("globex").await;
    let ch_b = app.create_channel_as(&key_b, "websocket", json!({})).await;

    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/channels/{ch_id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/channels/{ch_id}"),
            Some(json!({"name": "mine now"})),
        ),
        (
            Method::GET,
            format!("/api/v1/channels/{ch_id}/secret"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/channels/{ch_id}/rotate_secret"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/conversations/{conv_id}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conv_id}/close"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/conversations/{conv_id}/activities"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{conv_id}/activities"),
            Some(json!({"text": "intrusion"})),
        ),
        (
            Method::GET,
            format!("/api/v1/activities/{act_id}/deliveries"),
            None,
        ),
        (
            Method::POST,
            "/api/v1/tokens".into(),
            Some(json!({"conversation_id": conv_id, "user_id": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/conversations".into(),
            Some(json!({"channel_id": ch_id})),
        ),
    ];
    for (method, path, body) in &routes {
        let mut req = app.with_key(&key_b, method.clone(), path);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body["error"]["code"], "not_found",
            "{method} {path}: {text}"
        );
        assert!(
            !text.contains("secret of A") && !text.contains("a-user"),
            "{method} {path} leaks: {text}"
        );
    }

    // A random id answers exactly the same way.
    let missing = converger::domain::ConversationId::new();
    let resp = app
        .with_key(
            &key_b,
            Method::GET,
            &format!("/api/v1/conversations/{missing}"),
        )
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app
        .with_key(
            &key_b,
            Method::GET,
            &format!("/api/v1/conversations/{conv_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await,
        err
    );

    // Lists show only B's rows.
    let channels = expect_data(
        app.with_key(&key_b, Method::GET, "/api/v1/channels")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(channels.as_array().unwrap().len(), 1);
    assert_eq!(channels[0]["id"], ch_b["id"]);
    let convs = expect_data(
        app.with_key(&key_b, Method::GET, "/api/v1/conversations")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(convs, json!([]));
    let filtered = expect_data(
        app.with_key(
            &key_b,
            Method::GET,
            &format!("/api/v1/conversations?channel_id={ch_id}"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered, json!([]));

    // B's channel token cannot reach A's conversation either.
    let resp = app
        .anon(Method::GET, &format!("/api/v1/conversations/{conv_id}"))
        .header("x-channel-token", s(&ch_b, "token"))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    // Nothing of A changed.
    let a_channel = app
        .store
        .get_channel(app.tenant_id, ch_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(a_channel.name, "webhook channel");
    assert_eq!(a_channel.secret, s(&ch, "secret"));
    assert_eq!(app.activities(conv_id).await.len(), 1);
    let conv_now = app
        .store
        .get_conversation(app.tenant_id, conv_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(conv_now.status.as_str(), "active");
}
