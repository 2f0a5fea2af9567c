//! U+0000 in any text a client sends: refused with 422 naming the field, and nothing
//! written, on SQLite as on PostgreSQL (whose `text` and `jsonb` cannot hold it).
//! Inbound webhooks included: a refused message opens no conversation.

use converger::adapters::signing::converger_signature;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    activity_fields_with_nul_are_refused,
    names_and_channel_config_with_nul_are_refused,
    conversations_and_tokens_with_nul_are_refused,
    generic_inbound_with_nul_writes_nothing,
    whatsapp_meta_inbound_with_nul_opens_no_conversation,
);

const APP_SECRET: &str = "test_app_secret";

/// Asserts a 422 `validation_failed` naming exactly these fields.
async fn refused(resp: Response, fields: &[&str]) {
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let named: Vec<&str> = err["details"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no field list in {err}"))
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(named, fields, "{err}");
}

async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let resp = app.req(Method::GET, path).send().await.unwrap();
    expect_data(resp, StatusCode::OK)
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn activity_fields_with_nul_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let channel = app.websocket_channel().await;
    let conversation = app.create_conversation(s(&channel, "id"), Some("u1")).await;
    let id = s(&conversation, "id");
    let cases = [
        (json!({"text": "he\u{0}llo"}), "text"),
        (json!({"text": "hi", "sender": "bo\u{0}t"}), "sender"),
        (
            json!({"text": "hi", "metadata": {"foo": "a\u{0}"}}),
            "metadata.foo",
        ),
        (
            json!({"text": "hi", "metadata": {"k\u{0}": 1}}),
            "metadata.k\\u0000",
        ),
        (
            json!({"attachments": [{"url": "https://x.example/\u{0}"}]}),
            "attachments[0].url",
        ),
        (
            json!({"text": "hi", "idempotency_key": "key\u{0}"}),
            "idempotency_key",
        ),
    ];
    for (body, field) in cases {
        refused(app.post_activity(id, body).await, &[field]).await;
    }
    assert_eq!(app.activities_count_direct(id).await, 0);
    assert!(app.activities(id).await.is_empty());
}

async fn names_and_channel_config_with_nul_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    // Tenants, through the admin API.
    let before = expect_data(
        app.anon(Method::GET, "/admin/api/tenants")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let resp = app
        .anon(Method::POST, "/admin/api/tenants")
        .json(&json!({"name": "Ac\u{0}me"}))
        .send()
        .await
        .unwrap();
    refused(resp, &["name"]).await;
    let after = expect_data(
        app.anon(Method::GET, "/admin/api/tenants")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(before, after);

    // Channels: the name, and any string or key of the config.
    let post_channel = |body: Value| app.req(Method::POST, "/api/v1/channels").json(&body).send();
    let url = "http://127.0.0.1:9/hook";
    refused(
        post_channel(json!({"name": "B\u{0}t", "type": "websocket"}))
            .await
            .unwrap(),
        &["name"],
    )
    .await;
    refused(
        post_channel(json!({"name": "Bot", "type": "webhook",
            "config": {"url": url, "headers": {"X": "a\u{0}b"}}}))
        .await
        .unwrap(),
        &["config.headers.X"],
    )
    .await;
    refused(
        post_channel(
            json!({"name": "Bot", "type": "webhook", "config": {"url": format!("{url}\u{0}")}}),
        )
        .await
        .unwrap(),
        &["config.url"],
    )
    .await;
    assert!(list(&app, "/api/v1/channels").await.is_empty());

    // Renaming and reconfiguring are held to the same rule.
    let channel = app.create_channel("webhook", json!({"url": url})).await;
    let path = format!("/api/v1/channels/{}", s(&channel, "id"));
    let patch = |body: Value| app.req(Method::PATCH, &path).json(&body).send();
    refused(patch(json!({"name": "B\u{0}t"})).await.unwrap(), &["name"]).await;
    refused(
        patch(json!({"config": {"headers": {"X-Team": "\u{0}"}}}))
            .await
            .unwrap(),
        &["config.headers.X-Team"],
    )
    .await;
    let stored = expect_data(
        app.req(Method::GET, &path).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(stored["name"], channel["name"]);
    assert_eq!(stored["config"], channel["config"]);
}

async fn conversations_and_tokens_with_nul_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let channel = app.websocket_channel().await;
    let channel_id = s(&channel, "id");
    let post = |body: Value| {
        app.req(Method::POST, "/api/v1/conversations")
            .json(&body)
            .send()
    };
    refused(
        post(json!({"channel_id": channel_id, "external_id": "u\u{0}1"}))
            .await
            .unwrap(),
        &["external_id"],
    )
    .await;
    refused(
        post(json!({"channel_id": channel_id, "metadata": {"a": [{"b\u{0}": true}]}}))
            .await
            .unwrap(),
        &["metadata.a[0].b\\u0000"],
    )
    .await;
    assert!(list(&app, "/api/v1/conversations").await.is_empty());

    // A client token's user becomes the sender of all it posts.
    let conversation = app.create_conversation(channel_id, Some("u1")).await;
    let resp = app
        .req(Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": s(&conversation, "id"), "user_id": "u\u{0}1"}))
        .send()
        .await
        .unwrap();
    refused(resp, &["user_id"]).await;
}

fn signed(channel: &Value, body: &Value) -> String {
    converger_signature(
        s(channel, "secret"),
        chrono::Utc::now().timestamp(),
        body.to_string().as_bytes(),
    )
}

async fn send_generic(app: &TestApp, channel: &Value, body: &Value) -> Response {
    app.anon(
        Method::POST,
        &format!("/api/v1/channels/{}/inbound", s(channel, "id")),
    )
    .header("content-type", "application/json")
    .header("x-converger-signature", signed(channel, body))
    .body(body.to_string())
    .send()
    .await
    .unwrap()
}

async fn generic_inbound_with_nul_writes_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let channel = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/unused"}))
        .await;
    // A good first message does not open its conversation when a later one is refused.
    let cases = [
        (
            json!({"messages": [{"text": "fine", "sender": "u1"}, {"text": "b\u{0}d", "sender": "u2"}]}),
            "messages[1].text",
        ),
        (
            json!({"messages": [{"text": "fine", "sender": "u1"}, {"text": "hi", "external_id": "u\u{0}2"}]}),
            "messages[1].external_id",
        ),
        (
            json!({"messages": [{"text": "hi", "sender": "u1", "metadata": {"k": "\u{0}"}}]}),
            "messages[0].metadata.k",
        ),
        (
            json!({"messages": [{"text": "hi", "sender": "u1", "id": "p\u{0}1"}]}),
            "messages[0].idempotency_key",
        ),
    ];
    for (body, field) in cases {
        let resp = send_generic(&app, &channel, &body).await;
        let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let named: Vec<&str> = err["details"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert!(named.contains(&field), "{field} not in {err}");
        assert!(
            list(&app, "/api/v1/conversations").await.is_empty(),
            "{body}"
        );
    }
}

fn hub_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn whatsapp_meta_inbound_with_nul_opens_no_conversation(backend: Backend) {
    let app = TestApp::start(backend).await;
    let channel = app
        .create_channel(
            "whatsapp_meta",
            json!({"phone_number_id": "106540352242922", "access_token": "EAAGtoken",
                "verify_token": "v", "app_secret": APP_SECRET, "api_base_url": "http://127.0.0.1:9"}),
        )
        .await;
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
            "messages": [{"from": "16505551234", "id": "wamid.NUL1", "timestamp": "1749416383",
                "type": "text", "text": {"body": "he\u{0}llo"}}]
        }}]}]})
    .to_string();
    let resp = app
        .anon(
            Method::POST,
            &format!("/api/v1/channels/{}/inbound", s(&channel, "id")),
        )
        .header("content-type", "application/json")
        .header("x-hub-signature-256", hub_signature(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    // A provider retries anything but 200: what can never be stored is skipped.
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["activity_ids"], json!([]));
    assert!(list(&app, "/api/v1/conversations").await.is_empty());

    // A status report that names no message Converger could have sent is skipped too.
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [{"id": "wamid.\u{0}", "status": "delivered", "timestamp": "1749416383",
                "recipient_id": "16505551234"}]
        }}]}]})
    .to_string();
    let resp = app
        .anon(
            Method::POST,
            &format!("/api/v1/channels/{}/inbound", s(&channel, "id")),
        )
        .header("content-type", "application/json")
        .header("x-hub-signature-256", hub_signature(body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
}
