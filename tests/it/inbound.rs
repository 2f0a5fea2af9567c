//! Inbound webhooks of generic channels: signatures, parsing, conversation
//! resolution, idempotency, and routing on to other channels.

use std::time::Duration;

use converger::adapters::signing::converger_signature;
use converger::domain::RouteDirection;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::sink::Sink;
use crate::common::{Backend, TestApp, both_backends, expect_error, s};

both_backends!(
    signed_messages_open_conversations_once,
    bad_signatures_write_nothing,
    bad_payloads_write_nothing,
    unknown_inactive_and_unsupported_channels,
    inbound_messages_are_routed_to_the_bot_not_back,
    replayed_signed_requests_create_nothing,
);

/// Messages without an id, in a signed request: the same request again (a replay
/// inside the timestamp tolerance, or any time for `sha256=`) creates nothing and
/// answers with the activities it created the first time.
async fn replayed_signed_requests_create_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel(
            "webhook",
            json!({"url": "https://hooks.example.com/unused"}),
        )
        .await;
    let batch = json!({"messages": [
        {"text": "pay 100", "from": "+4915100001"},
        {"text": "pay 100", "from": "+4915100001"},
    ]});
    let t0 = chrono::Utc::now().timestamp() - 10;
    let timestamped = signed_at(&ch, &batch, t0);
    let first = accepted(send(&app, &ch, &batch, timestamped.clone()).await).await;
    assert_eq!(first.len(), 2);
    assert_ne!(
        first[0], first[1],
        "two messages of one request are two activities"
    );
    let replay = accepted(send(&app, &ch, &batch, timestamped).await).await;
    assert_eq!(replay, first);

    let single = json!({"text": "transfer", "from": "+4915100002"});
    let header = sha256_header(s(&ch, "secret"), single.to_string().as_bytes());
    let once = accepted(send(&app, &ch, &single, Some(header.clone())).await).await;
    let again = accepted(send(&app, &ch, &single, Some(header)).await).await;
    assert_eq!(again, once);

    // A new signed request with the same content is a new message.
    let later = accepted(send(&app, &ch, &batch, signed_at(&ch, &batch, t0 - 1)).await).await;
    assert_ne!(later, first);

    let convs = conversations(&app).await;
    let mut total = 0;
    for conv in &convs {
        total += app.activities(s(conv, "id")).await.len();
    }
    assert_eq!(total, 5, "2 + 1 + 2 activities, none from the replays");
}

/// A signature timestamped `at` (Unix seconds).
fn signed_at(channel: &Value, body: &Value, at: i64) -> Option<String> {
    Some(converger_signature(
        s(channel, "secret"),
        at,
        body.to_string().as_bytes(),
    ))
}

fn sha256_header(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send(
    app: &TestApp,
    channel: &Value,
    body: &Value,
    signature: Option<String>,
) -> reqwest::Response {
    let mut req = app
        .anon(
            Method::POST,
            &format!("/api/v1/channels/{}/inbound", s(channel, "id")),
        )
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(sig) = signature {
        req = req.header("x-converger-signature", sig);
    }
    req.send().await.unwrap()
}

fn signed(channel: &Value, body: &Value) -> Option<String> {
    let now = chrono::Utc::now().timestamp();
    Some(converger_signature(
        s(channel, "secret"),
        now,
        body.to_string().as_bytes(),
    ))
}

async fn accepted(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    body["activity_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn conversations(app: &TestApp) -> Vec<Value> {
    let resp = app
        .req(Method::GET, "/api/v1/conversations")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["data"].as_array().unwrap().clone()
}

async fn signed_messages_open_conversations_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/unused"}))
        .await;

    let first = json!({"text": "hello", "from": "+4915100001", "id": "ext-1"});
    let header = sha256_header(s(&ch, "secret"), first.to_string().as_bytes());
    let ids = accepted(send(&app, &ch, &first, Some(header.clone())).await).await;
    assert_eq!(ids.len(), 1);

    // A batch from the same sender and a new one, with the timestamped signature.
    let batch = json!({"messages": [
        {"text": "second", "sender": {"id": "+4915100001", "name": "Ann"}, "id": "ext-2"},
        {"message": "hi there", "from": "+4915100002", "id": "ext-3", "metadata": {"campaign": "x"}},
        {"body": "third", "from": "+4915100001", "id": "ext-4"},
    ]});
    let batch_ids = accepted(send(&app, &ch, &batch, signed(&ch, &batch)).await).await;
    assert_eq!(batch_ids.len(), 3);

    let convs = conversations(&app).await;
    assert_eq!(convs.len(), 2, "one conversation per sender");
    let ann = convs
        .iter()
        .find(|c| c["external_id"] == "+4915100001")
        .unwrap();
    let acts = app.activities(s(ann, "id")).await;
    let texts: Vec<&str> = acts.iter().map(|a| s(a, "text")).collect();
    assert_eq!(texts, ["hello", "second", "third"]);
    assert!(
        acts.iter()
            .all(|a| a["direction"] == "inbound" && a["sender"] == "+4915100001")
    );
    assert_eq!(acts[1]["metadata"]["sender_name"], "Ann");
    assert_eq!(acts[0]["idempotency_key"], "ext-1");

    // The provider re-delivers: same ids, nothing new.
    let again = accepted(send(&app, &ch, &first, Some(header)).await).await;
    assert_eq!(again, ids);
    assert_eq!(app.activities(s(ann, "id")).await.len(), 3);

    // A message may name its conversation.
    let named =
        json!({"text": "into this one", "from": "someone-else", "conversation_id": ann["id"]});
    accepted(send(&app, &ch, &named, signed(&ch, &named)).await).await;
    assert_eq!(app.activities(s(ann, "id")).await.len(), 4);
}

async fn bad_signatures_write_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/unused"}))
        .await;
    let body = json!({"text": "hello", "from": "u1"});
    let stale = converger_signature(
        s(&ch, "secret"),
        chrono::Utc::now().timestamp() - 301,
        body.to_string().as_bytes(),
    );
    let other_secret = sha256_header("whsec_other", body.to_string().as_bytes());
    for sig in [
        None,
        Some(other_secret.clone()),
        Some(stale),
        Some("sha256=zz".into()),
        Some("nonsense".into()),
    ] {
        let resp = send(&app, &ch, &body, sig.clone()).await;
        let err = expect_error(resp, StatusCode::UNAUTHORIZED, "invalid_signature").await;
        assert!(!err.to_string().contains(s(&ch, "secret")), "{sig:?}");
    }
    // A signature over other bytes does not match.
    let resp = send(
        &app,
        &ch,
        &json!({"text": "tampered", "from": "u1"}),
        signed(&ch, &body),
    )
    .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "invalid_signature").await;
    assert!(conversations(&app).await.is_empty());

    // Unsigned requests are accepted only when the channel says so; wrong ones never.
    let open = app
        .create_channel(
            "webhook",
            json!({"url": "http://127.0.0.1:9/unused", "require_signature": false}),
        )
        .await;
    accepted(send(&app, &open, &body, None).await).await;
    let resp = send(&app, &open, &body, Some(other_secret)).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "invalid_signature").await;
    assert_eq!(conversations(&app).await.len(), 1);
}

async fn bad_payloads_write_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel(
            "webhook",
            json!({"url": "http://127.0.0.1:9/unused", "require_signature": false}),
        )
        .await;
    for body in [
        json!("just a string"),
        json!({"text": "no sender"}),
        json!([]),
        json!({"messages": 3}),
    ] {
        expect_error(
            send(&app, &ch, &body, None).await,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
        )
        .await;
    }
    let raw = app
        .anon(
            Method::POST,
            &format!("/api/v1/channels/{}/inbound", s(&ch, "id")),
        )
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(raw, StatusCode::BAD_REQUEST, "invalid_payload").await;
    // One bad message spoils the batch: the good ones before it are not written.
    let batch = json!([
        {"text": "fine", "from": "a"},
        {"text": "x".repeat(70 * 1024), "from": "b"},
    ]);
    let err = expect_error(
        send(&app, &ch, &batch, None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(err["details"]["fields"][0]["field"], "messages[1].text");
    let foreign = json!({"text": "x", "from": "a", "conversation_id": converger::domain::ConversationId::new()});
    expect_error(
        send(&app, &ch, &foreign, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(conversations(&app).await.is_empty());
}

async fn unknown_inactive_and_unsupported_channels(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel(
            "webhook",
            json!({"url": "http://127.0.0.1:9/unused", "require_signature": false}),
        )
        .await;
    let body = json!({"text": "hi", "from": "u"});
    let get = app
        .anon(
            Method::GET,
            &format!("/api/v1/channels/{}/inbound", s(&ch, "id")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);

    let missing = json!({"id": converger::domain::ChannelId::new().to_string()});
    expect_error(
        send(&app, &missing, &body, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let ws = app.websocket_channel().await;
    expect_error(
        send(&app, &ws, &body, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.req(Method::PATCH, &format!("/api/v1/channels/{}", s(&ch, "id")))
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap();
    expect_error(
        send(&app, &ch, &body, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let get = app
        .anon(
            Method::GET,
            &format!("/api/v1/channels/{}/inbound", s(&ch, "id")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    assert!(conversations(&app).await.is_empty());
}

async fn inbound_messages_are_routed_to_the_bot_not_back(backend: Backend) {
    let app = TestApp::start(backend).await;
    let customer_side = Sink::start().await;
    let bot = Sink::start().await;
    let a = app
        .create_channel(
            "webhook",
            json!({"url": customer_side.url, "require_signature": false}),
        )
        .await;
    let b = app.create_channel("webhook", json!({"url": bot.url})).await;
    app.store
        .insert_route(
            app.tenant_id,
            s(&a, "id").parse().unwrap(),
            s(&b, "id").parse().unwrap(),
            RouteDirection::Inbound,
        )
        .await
        .unwrap();

    let ids = accepted(
        send(
            &app,
            &a,
            &json!({"text": "I need help", "from": "cust-1"}),
            None,
        )
        .await,
    )
    .await;
    let got = bot.wait_for(1, Duration::from_secs(20)).await;
    let body = got[0].json();
    assert_eq!(body["id"], ids[0].as_str());
    assert_eq!(body["text"], "I need help");
    assert_eq!(
        body["channel"]["id"], b["id"],
        "the bot sees which channel it receives for"
    );
    assert_eq!(body["conversation"]["channel_id"], a["id"]);

    // The bot answers through the API: the answer goes to the customer's channel only.
    let conv = s(&conversations(&app).await[0], "id").to_owned();
    let reply = app
        .post_activity(&conv, json!({"text": "On it!", "sender": "bot"}))
        .await;
    assert_eq!(reply.status(), StatusCode::CREATED);
    let out = customer_side.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(out[0].json()["text"], "On it!");

    // Each channel gets a conversation's activities in order: once a later message
    // has reached a channel, anything wrongly queued for it before that has too.
    let later =
        accepted(send(&app, &a, &json!({"text": "Thanks", "from": "cust-1"}), None).await).await;
    let to_bot = bot.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(to_bot[1].json()["conversation"]["id"], conv.as_str());
    assert_eq!(
        to_bot[1].json()["id"],
        later[0].as_str(),
        "the outbound answer was not routed to the bot"
    );
    assert_eq!(
        bot.received().len(),
        2,
        "the outbound answer was not routed to the bot"
    );
    let bye = app
        .post_activity(&conv, json!({"text": "Bye", "sender": "bot"}))
        .await;
    assert_eq!(bye.status(), StatusCode::CREATED);
    let out = customer_side.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(
        out[1].json()["text"],
        "Bye",
        "the inbound messages were not sent back"
    );
    assert_eq!(
        customer_side.received().len(),
        2,
        "the inbound messages were not sent back"
    );
}
