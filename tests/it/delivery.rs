//! The delivery engine end to end: a real server delivering to a local sink, with
//! signatures checked by an independent Standard Webhooks verifier.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestApp, both_backends, eventually, expect_data, s};

both_backends!(
    webhooks_are_signed_and_recorded_as_delivered,
    retries_follow_the_schedule_and_honour_retry_after,
    gives_up_after_five_attempts,
    permanent_errors_are_not_retried,
    one_conversation_is_delivered_in_order,
    echo_answers_inbound_messages_once,
    redirects_to_other_hosts_are_refused,
);

const WAIT: Duration = Duration::from_secs(20);

/// More failures in a row than one delivery's attempts: these tests see the retry
/// schedule alone.
async fn app_with_fast_retries(backend: Backend) -> TestApp {
    TestApp::with_fast_retries(backend, 10).await
}

/// Verifies a Standard Webhooks request from the spec alone (docs/protocols.md#standard-webhooks),
/// independently of the server's signing code.
pub(crate) fn verify_standard_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let now = chrono::Utc::now().timestamp();
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (now - t).abs() <= 300);
    fresh
        && signatures
            .split(' ')
            .any(|sig| sig == format!("v1,{expected}"))
}

async fn deliveries_of(app: &TestApp, activity_id: &str) -> Vec<Value> {
    let resp = app
        .req(
            Method::GET,
            &format!("/api/v1/activities/{activity_id}/deliveries"),
        )
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK)
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the activity's single delivery leaves `pending`; returns it.
pub(crate) async fn settled_delivery(app: &TestApp, activity_id: &str) -> Value {
    eventually(WAIT, "the delivery to settle", || async {
        let list = deliveries_of(app, activity_id).await;
        assert_eq!(list.len(), 1);
        (list[0]["status"] != "pending").then(|| list[0].clone())
    })
    .await
}

pub(crate) async fn webhook_conversation(app: &TestApp, sink: &Sink, path: &str) -> (Value, Value) {
    let channel = app
        .create_channel(
            "webhook",
            json!({"url": format!("{}{path}", sink.url), "headers": {"X-Team": "support"}}),
        )
        .await;
    let conv = app
        .create_conversation(s(&channel, "id"), Some("customer-1"))
        .await;
    (channel, conv)
}

pub(crate) async fn post(app: &TestApp, conv: &Value, text: &str) -> Value {
    expect_data(
        app.post_activity(s(conv, "id"), json!({"text": text}))
            .await,
        StatusCode::CREATED,
    )
    .await
}

/// Posts a message and waits until it is delivered: the worker is then past every
/// earlier activity of the conversation, which is delivered in order.
async fn sentinel_delivered(app: &TestApp, conv: &Value) {
    let sentinel = post(app, conv, "sentinel").await;
    let delivery = settled_delivery(app, s(&sentinel, "id")).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
}

/// How many attempts of a delivery the sink has received (its webhook-id).
fn attempts_received(sink: &Sink, delivery: &Value) -> usize {
    sink.received()
        .iter()
        .filter(|r| r.header("webhook-id") == s(delivery, "id"))
        .count()
}

/// Posts an inbound message with an attachment through the channel's token.
async fn inbound_to(app: &TestApp, channel: &Value, conv: &Value, text: &str) -> Value {
    expect_data(
        app.anon(
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(conv, "id")),
        )
        .header("x-channel-token", s(channel, "token"))
        .json(&json!({"text": text, "attachments": [{"url": "https://x.example/p.png"}]}))
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await
}

async fn webhooks_are_signed_and_recorded_as_delivered(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    let (channel, conv) = webhook_conversation(&app, &sink, "/hooks/converger").await;
    let activity = post(&app, &conv, "Your order shipped").await;

    let got = sink.wait_for(1, WAIT).await;
    let req = &got[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/hooks/converger");
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(req.header("x-team"), "support");
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(req.header("webhook-id"), s(&delivery, "id"));
    assert!(verify_standard_webhook(
        s(&channel, "secret"),
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
        &req.body,
    ));
    assert!(!verify_standard_webhook(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
        &req.body
    ));

    // The body is the activity JSON with its conversation and channel.
    let body = req.json();
    for key in [
        "id",
        "seq",
        "type",
        "direction",
        "sender",
        "text",
        "attachments",
        "metadata",
        "inserted_at",
    ] {
        assert_eq!(body[key], activity[key], "{key}");
    }
    assert_eq!(body["conversation"]["external_id"], "customer-1");
    assert_eq!(body["channel"]["id"], channel["id"]);

    assert_eq!(delivery["status"], "delivered");
    assert_eq!(delivery["attempts"], 1);
    assert!(delivery["delivered_at"].is_string());
    assert_eq!(delivery["last_error"], Value::Null);
}

async fn retries_follow_the_schedule_and_honour_retry_after(backend: Backend) {
    let app = app_with_fast_retries(backend).await;
    let sink = Sink::start().await;
    sink.script([
        Reply::status(503).body("down for maintenance"),
        // Retry-After 200 s beats the schedule's 90 s: 200 ms at this scale.
        Reply::status(429).header("Retry-After", "200"),
        Reply::status(500),
        Reply::status(200),
    ]);
    let (_, conv) = webhook_conversation(&app, &sink, "/").await;
    let activity = post(&app, &conv, "retry me").await;

    let got = sink.wait_for(4, WAIT).await;
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "delivered");
    assert_eq!(delivery["attempts"], 4);
    assert_eq!(delivery["last_error"], Value::Null);
    // The same webhook-id on every attempt, so receivers can deduplicate.
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == s(&delivery, "id"))
    );
    // Waits of at least 30, 200 (Retry-After, longer than the schedule's 90) and 270 ms;
    // never shorter than scheduled (later is fine: the machine may be busy).
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, min_ms) in gaps.iter().zip([30u64, 200, 270]) {
        assert!(
            *gap >= Duration::from_millis(min_ms * 9 / 10),
            "gaps {gaps:?}"
        );
    }
}

async fn gives_up_after_five_attempts(backend: Backend) {
    let app = app_with_fast_retries(backend).await;
    let sink = Sink::start().await;
    sink.always(Reply::status(502).body("bad gateway"));
    let (_, conv) = webhook_conversation(&app, &sink, "/").await;
    let activity = post(&app, &conv, "doomed").await;

    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 5);
    let error = s(&delivery, "last_error");
    assert!(
        error.contains("502") && error.contains("bad gateway") && error.contains("gave up"),
        "{error}"
    );
    // A later activity of the same conversation is delivered only once the worker has
    // finished with this one: no attempt of it can come after that.
    sink.always(Reply::status(200));
    sentinel_delivered(&app, &conv).await;
    assert_eq!(attempts_received(&sink, &delivery), 5);
    assert_eq!(sink.received().len(), 6);
}

async fn permanent_errors_are_not_retried(backend: Backend) {
    let app = app_with_fast_retries(backend).await;
    let sink = Sink::start().await;
    sink.always(Reply::status(404).body("no such hook"));
    let (_, conv) = webhook_conversation(&app, &sink, "/").await;
    let activity = post(&app, &conv, "nobody home").await;

    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 1);
    assert!(s(&delivery, "last_error").contains("404"));
    sink.always(Reply::status(200));
    sentinel_delivered(&app, &conv).await;
    assert_eq!(attempts_received(&sink, &delivery), 1);
    assert_eq!(sink.received().len(), 2);
}

async fn one_conversation_is_delivered_in_order(backend: Backend) {
    let app = app_with_fast_retries(backend).await;
    let sink = Sink::start().await;
    // The first attempt fails: the later activities must wait for its retry.
    sink.script([Reply::status(503)]);
    let (_, conv) = webhook_conversation(&app, &sink, "/").await;
    for n in 1..=5 {
        post(&app, &conv, &format!("m{n}")).await;
    }
    let got = sink.wait_for(6, WAIT).await;
    let seqs: Vec<i64> = got
        .iter()
        .map(|r| r.json()["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 1, 2, 3, 4, 5]);
}

async fn echo_answers_inbound_messages_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let echo = app
        .create_channel("echo", json!({"prefix": "echo: "}))
        .await;
    let conv = app
        .create_conversation(s(&echo, "id"), Some("tester"))
        .await;
    let inbound = inbound_to(&app, &echo, &conv, "ping").await;
    let all = eventually(WAIT, "the echo reply", || async {
        let all = app.activities(s(&conv, "id")).await;
        (all.len() >= 2).then_some(all)
    })
    .await;
    let reply = &all[1];
    assert_eq!(reply["seq"], 2);
    assert_eq!(reply["direction"], "outbound");
    assert_eq!(reply["sender"], "echo-bot");
    assert_eq!(reply["text"], "echo: ping");
    assert_eq!(reply["attachments"], inbound["attachments"]);
    assert_eq!(reply["metadata"]["echo_of"], inbound["id"]);
    assert_eq!(
        settled_delivery(&app, s(&inbound, "id")).await["status"],
        "delivered"
    );
    // The bot's reply is not answered.
    assert!(deliveries_of(&app, s(reply, "id")).await.is_empty());
    // A second message is delivered to the bot after anything queued before it: once
    // it is answered, an answer to the first reply would be there too.
    let second = inbound_to(&app, &echo, &conv, "pong").await;
    assert_eq!(
        settled_delivery(&app, s(&second, "id")).await["status"],
        "delivered"
    );
    let all = app.activities(s(&conv, "id")).await;
    let texts: Vec<&str> = all.iter().map(|a| s(a, "text")).collect();
    assert_eq!(texts, ["ping", "echo: ping", "pong", "echo: pong"]);
    assert!(deliveries_of(&app, s(&all[3], "id")).await.is_empty());
}

async fn redirects_to_other_hosts_are_refused(backend: Backend) {
    let app = app_with_fast_retries(backend).await;
    let elsewhere = Sink::start().await;
    let sink = Sink::start().await;
    // Same host, other port... and the loopback name: a different host string.
    let target = elsewhere.url.replace("127.0.0.1", "localhost");
    sink.always(Reply::status(307).header("Location", &format!("{target}/stolen")));
    let (_, conv) = webhook_conversation(&app, &sink, "/").await;
    let activity = post(&app, &conv, "stay here").await;
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "failed");
    assert!(
        s(&delivery, "last_error").contains("redirect"),
        "{delivery}"
    );
    assert!(elsewhere.received().is_empty());
}
