//! Conversations: creation by API key and channel token, uniqueness of external ids,
//! listing, closing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    create_with_api_key_and_channel_token,
    one_active_conversation_per_external_id,
    list_filters_and_paginates_newest_first,
    closed_conversations_refuse_activities,
);

async fn create_with_api_key_and_channel_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let ch_id = s(&ch, "id");

    // API key: channel_id required.
    let resp = app
        .req(Method::POST, "/api/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(err["details"]["fields"][0]["field"], "channel_id");

    let conv = app.create_conversation(ch_id, Some("+4915112345678")).await;
    assert_eq!(conv["channel_id"], ch_id);
    assert_eq!(conv["tenant_id"], app.tenant_id.to_string());
    assert_eq!(conv["status"], "active");
    assert_eq!(conv["last_seq"], 0);
    assert_eq!(conv["metadata"], json!({}));
    for key in ["id", "external_id", "inserted_at", "updated_at"] {
        assert!(conv.get(key).is_some(), "{key}");
    }

    // Channel token: the channel is implied, metadata kept.
    let resp = app
        .anon(Method::POST, "/api/v1/conversations")
        .header("x-channel-token", s(&ch, "token"))
        .json(&json!({"metadata": {"locale": "de"}}))
        .send()
        .await
        .unwrap();
    let conv2 = expect_data(resp, StatusCode::CREATED).await;
    assert_eq!(conv2["channel_id"], ch_id);
    assert_eq!(conv2["metadata"], json!({"locale": "de"}));

    // A channel token names only its own channel.
    let other = app.websocket_channel().await;
    let resp = app
        .anon(Method::POST, "/api/v1/conversations")
        .header("x-channel-token", s(&ch, "token"))
        .json(&json!({"channel_id": s(&other, "id")}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    // Metadata must be an object.
    let resp = app
        .req(Method::POST, "/api/v1/conversations")
        .json(&json!({"channel_id": ch_id, "metadata": [1]}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // An inactive channel takes no new conversations.
    app.req(Method::PATCH, &format!("/api/v1/channels/{ch_id}"))
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap();
    let resp = app
        .req(Method::POST, "/api/v1/conversations")
        .json(&json!({"channel_id": ch_id}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "channel_inactive").await;
}

async fn one_active_conversation_per_external_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let first = app.create_conversation(s(&ch, "id"), Some("user-7")).await;
    let resp = app
        .req(Method::POST, "/api/v1/conversations")
        .json(&json!({"channel_id": s(&ch, "id"), "external_id": "user-7"}))
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::CONFLICT, "conversation_exists").await;
    assert_eq!(err["details"]["conversation_id"], first["id"]);

    // The same party on another channel is another conversation.
    let other = app.websocket_channel().await;
    app.create_conversation(s(&other, "id"), Some("user-7"))
        .await;

    // Once closed, the party may start a new conversation.
    expect_data(
        app.req(
            Method::POST,
            &format!("/api/v1/conversations/{}/close", s(&first, "id")),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    let again = app.create_conversation(s(&ch, "id"), Some("user-7")).await;
    assert_ne!(again["id"], first["id"]);
}

async fn list_filters_and_paginates_newest_first(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = app.websocket_channel().await;
    let b = app.websocket_channel().await;
    let mut on_a = Vec::new();
    for _ in 0..5 {
        on_a.push(s(&app.create_conversation(s(&a, "id"), None).await, "id").to_owned());
    }
    app.create_conversation(s(&b, "id"), None).await;
    on_a.reverse();

    let mut seen = Vec::new();
    let mut query = format!("?channel_id={}&limit=2", s(&a, "id"));
    loop {
        let resp = app
            .req(Method::GET, &format!("/api/v1/conversations{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| s(c, "id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?channel_id={}&limit=2&cursor={cursor}", s(&a, "id")),
            None => break,
        }
    }
    assert_eq!(seen, on_a);

    app.req(
        Method::POST,
        &format!("/api/v1/conversations/{}/close", on_a[0]),
    )
    .send()
    .await
    .unwrap();
    let closed = expect_data(
        app.req(Method::GET, "/api/v1/conversations?status=closed")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(closed.as_array().unwrap().len(), 1);
    assert_eq!(closed[0]["id"], on_a[0].as_str());

    let resp = app
        .req(Method::GET, "/api/v1/conversations?status=archived")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_query").await;
}

async fn closed_conversations_refuse_activities(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let id = s(&conv, "id");
    assert_eq!(
        app.post_activity(id, json!({"text": "before"}))
            .await
            .status(),
        StatusCode::CREATED
    );
    let closed = expect_data(
        app.req(Method::POST, &format!("/api/v1/conversations/{id}/close"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(closed["status"], "closed");
    // The close is the conversation's second activity.
    assert_eq!(closed["last_seq"], 2);
    expect_error(
        app.post_activity(id, json!({"text": "after"})).await,
        StatusCode::CONFLICT,
        "conversation_closed",
    )
    .await;
    // Closing twice is harmless and records nothing more.
    let again = expect_data(
        app.req(Method::POST, &format!("/api/v1/conversations/{id}/close"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["last_seq"], 2);
    let activities = app.activities(id).await;
    assert_eq!(activities.len(), 2);
    assert_eq!(activities[1]["type"], "conversationUpdate");
}
