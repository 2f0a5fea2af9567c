//! WhatsApp channels end to end: a real server sending to a fake Graph API and a fake
//! Infobip (local sinks checking method, path, headers and body as docs/protocols.md#whatsapp-cloud-api and docs/protocols.md#infobip
//! document them), inbound notifications from the documented fixtures, status
//! callbacks reaching the delivery and the conversation's sockets, and routing.

use std::time::Duration;

use converger::domain::RouteDirection;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestApp, both_backends, eventually, expect_data, s};

both_backends!(
    meta_sends_the_documented_request_and_keeps_the_wamid,
    meta_errors_are_classified_by_code,
    infobip_sends_the_documented_request_and_classifies_errors,
    meta_handshake_and_signatures,
    meta_notifications_ingest_every_message_once,
    infobip_messages_and_reports,
    statuses_move_forward_and_reach_sockets,
    inbound_whatsapp_is_routed_to_the_bot_not_back,
    early_status_reports_are_asked_again,
    replies_land_in_the_conversation_opened_for_the_number,
);

const WAIT: Duration = Duration::from_secs(20);
/// Backoff scale of these tests: 30 s becomes 30 ms.
const SCALE: f64 = 0.001;

const PHONE_NUMBER_ID: &str = "106540352242922";
const ACCESS_TOKEN: &str = "EAAGm0PX4ZCpsBAtesttoken";
const APP_SECRET: &str = "test_app_secret";
const WAMID: &str = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3N0EyQUJDMjFEQzZCQUMzODMA";
const INFOBIP_KEY: &str = "003026bbc133714df1834b8638bb496e-8f4b3d9a-e931-478d-a994-28a725159ab9";
const INFOBIP_ID: &str = "a28dd97c-1ffb-4fcf-99f1-0b557ed381da";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn hub_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn graph_success(wamid: &str) -> Reply {
    Reply::status(200)
        .header("content-type", "application/json")
        .body(
            &json!({"messaging_product": "whatsapp",
                "contacts": [{"input": "16505551234", "wa_id": "16505551234"}],
                "messages": [{"id": wamid}]})
            .to_string(),
        )
}

fn graph_error(status: u16, code: i64, title: &str) -> Reply {
    Reply::status(status)
        .header("content-type", "application/json")
        .body(
            &json!({"error": {"message": format!("(#{code}) {title}"), "type": "OAuthException", "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": format!("{title} details")},
                "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}})
            .to_string(),
        )
}

fn infobip_success(id: &str) -> Reply {
    Reply::status(200)
        .header("content-type", "application/json")
        .body(
            &json!({"to": "441134960001", "messageCount": 1, "messageId": id,
                "status": {"groupId": 1, "groupName": "PENDING", "id": 7, "name": "PENDING_ENROUTE",
                    "description": "Message sent to next instance"}})
            .to_string(),
        )
}

fn infobip_error(status: u16, id: &str, text: &str) -> Reply {
    Reply::status(status)
        .header("content-type", "application/json")
        .body(
            &json!({"requestError": {"serviceException": {"messageId": id, "text": text}}})
                .to_string(),
        )
}

async fn meta_channel(app: &TestApp, graph: &str, extra: Value) -> Value {
    let mut config = json!({
        "phone_number_id": PHONE_NUMBER_ID,
        "access_token": ACCESS_TOKEN,
        "verify_token": "meatyhamhock",
        "app_secret": APP_SECRET,
        "api_base_url": graph,
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.create_channel("whatsapp_meta", config).await
}

async fn infobip_channel(app: &TestApp, base: &str, sender: &str) -> Value {
    app.create_channel(
        "whatsapp_infobip",
        json!({"base_url": base, "api_key": INFOBIP_KEY, "sender": sender}),
    )
    .await
}

async fn post_text(app: &TestApp, conversation: &str, body: Value) -> Value {
    expect_data(
        app.post_activity(conversation, body).await,
        StatusCode::CREATED,
    )
    .await
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
async fn settled(app: &TestApp, activity_id: &str) -> Value {
    eventually(WAIT, "the delivery to settle", || async {
        let list = deliveries_of(app, activity_id).await;
        assert_eq!(list.len(), 1, "{list:?}");
        (list[0]["status"] != "pending").then(|| list[0].clone())
    })
    .await
}

async fn inbound(
    app: &TestApp,
    channel: &Value,
    body: &[u8],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut req = app
        .anon(
            Method::POST,
            &format!("/api/v1/channels/{}/inbound", s(channel, "id")),
        )
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap()
}

/// Posts a Meta notification signed with the app secret; expects 200 and returns the
/// activity ids.
async fn meta_notify(app: &TestApp, channel: &Value, body: &[u8]) -> Vec<String> {
    let sig = hub_signature(APP_SECRET, body);
    accepted(inbound(app, channel, body, &[("x-hub-signature-256", sig)]).await).await
}

async fn accepted(resp: reqwest::Response) -> Vec<String> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
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
    expect_data(resp, StatusCode::OK)
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn meta_sends_the_documented_request_and_keeps_the_wamid(backend: Backend) {
    let app = TestApp::start(backend).await;
    let graph = Sink::start().await;
    graph.always(graph_success(WAMID));
    let ch = meta_channel(&app, &graph.url, json!({})).await;
    let conv = app
        .create_conversation(s(&ch, "id"), Some("16505551234"))
        .await;
    let activity = post_text(&app, s(&conv, "id"), json!({"text": "Your order shipped"})).await;

    let delivery = settled(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(delivery["external_id"], WAMID);
    assert_eq!(delivery["attempts"], 1);

    let got = graph.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, format!("/v18.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        req.header("authorization"),
        format!("Bearer {ACCESS_TOKEN}")
    );
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(
        req.json(),
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+16505551234",
            "type": "text",
            "text": {"preview_url": false, "body": "Your order shipped"},
            "biz_opaque_callback_data": s(&delivery, "id"),
        })
    );

    // Without an external id, the activity's metadata names the recipient; another
    // api_version is honoured.
    let graph2 = Sink::start().await;
    graph2.always(graph_success("wamid.second"));
    let ch2 = meta_channel(&app, &graph2.url, json!({"api_version": "v21.0"})).await;
    let conv2 = app.create_conversation(s(&ch2, "id"), None).await;
    let a2 = post_text(
        &app,
        s(&conv2, "id"),
        json!({"text": "hi", "metadata": {"recipient_phone": "+4915112345678"}}),
    )
    .await;
    assert_eq!(
        settled(&app, s(&a2, "id")).await["external_id"],
        "wamid.second"
    );
    let req = &graph2.received()[0];
    assert_eq!(req.path, format!("/v21.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(req.json()["to"], "+4915112345678");
}

async fn meta_errors_are_classified_by_code(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_backoff_scale = SCALE).await;

    // Throttled (code 130429, which Meta has sent as 400 and as 429), then accepted.
    let throttled = Sink::start().await;
    throttled.script([
        graph_error(400, 130429, "Rate limit hit"),
        graph_error(503, 131000, "Something went wrong"),
    ]);
    throttled.always(graph_success("wamid.later"));
    let ch = meta_channel(&app, &throttled.url, json!({})).await;
    let conv = app
        .create_conversation(s(&ch, "id"), Some("15550001555"))
        .await;
    let a = post_text(&app, s(&conv, "id"), json!({"text": "retry me"})).await;

    // Outside the 24-hour window: permanent, one attempt, the code in last_error.
    let closed = Sink::start().await;
    closed.always(graph_error(400, 131047, "Re-engagement message"));
    let ch_closed = meta_channel(&app, &closed.url, json!({})).await;
    let conv_closed = app
        .create_conversation(s(&ch_closed, "id"), Some("15550001666"))
        .await;
    let b = post_text(&app, s(&conv_closed, "id"), json!({"text": "too late"})).await;

    // Expired token (401, code 190): permanent.
    let expired = Sink::start().await;
    expired.always(
        Reply::status(401).header("content-type", "application/json").body(
            r#"{"error":{"message":"Error validating access token: Session has expired on Friday, 01-Mar-24 10:00:00 PST.","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"A1b2C3d4E5f6"}}"#,
        ),
    );
    let ch_expired = meta_channel(&app, &expired.url, json!({})).await;
    let conv_expired = app
        .create_conversation(s(&ch_expired, "id"), Some("15550001777"))
        .await;
    let c = post_text(&app, s(&conv_expired, "id"), json!({"text": "token?"})).await;

    // No recipient at all: permanent before any request.
    let nobody = Sink::start().await;
    let ch_nobody = meta_channel(&app, &nobody.url, json!({})).await;
    let conv_nobody = app.create_conversation(s(&ch_nobody, "id"), None).await;
    let d = post_text(&app, s(&conv_nobody, "id"), json!({"text": "to whom?"})).await;

    let retried = settled(&app, s(&a, "id")).await;
    assert_eq!(retried["status"], "delivered", "{retried}");
    assert_eq!(retried["attempts"], 3);
    assert_eq!(retried["external_id"], "wamid.later");
    let times: Vec<_> = throttled.received().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 3);
    // 30 s and 90 s at scale 0.001.
    assert!(times[1] - times[0] >= Duration::from_millis(30));
    assert!(times[2] - times[1] >= Duration::from_millis(90));

    let failed = settled(&app, s(&b, "id")).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attempts"], 1);
    let error = s(&failed, "last_error");
    assert!(
        error.starts_with("WhatsApp error 131047 (HTTP 400): (#131047) Re-engagement message"),
        "{error}"
    );
    assert!(
        error.contains("fbtrace_id Az8or2yhqkZfEZ-_4Qn_Bam"),
        "{error}"
    );
    assert_eq!(closed.received().len(), 1);

    let failed = settled(&app, s(&c, "id")).await;
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("failed"), Some(1))
    );
    let error = s(&failed, "last_error");
    assert!(error.contains("WhatsApp error 190"), "{error}");
    assert!(!error.contains(ACCESS_TOKEN));

    let failed = settled(&app, s(&d, "id")).await;
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("failed"), Some(1))
    );
    assert!(
        s(&failed, "last_error").contains("no WhatsApp recipient"),
        "{failed}"
    );
    assert!(nobody.received().is_empty());
}

async fn infobip_sends_the_documented_request_and_classifies_errors(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_backoff_scale = SCALE).await;
    let infobip = Sink::start().await;
    infobip.script([
        infobip_error(429, "TOO_MANY_REQUESTS", "Too many requests").header("retry-after", "0")
    ]);
    infobip.always(infobip_success(INFOBIP_ID));
    let ch = infobip_channel(&app, &infobip.url, "441134960000").await;
    let conv = app
        .create_conversation(s(&ch, "id"), Some("441134960001"))
        .await;
    let a = post_text(&app, s(&conv, "id"), json!({"text": "Some text"})).await;
    let delivery = settled(&app, s(&a, "id")).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(delivery["attempts"], 2);
    assert_eq!(delivery["external_id"], INFOBIP_ID);
    let got = infobip.received();
    assert!(got[1].at - got[0].at >= Duration::from_millis(30));
    let req = &got[1];
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/whatsapp/1/message/text");
    assert_eq!(req.header("authorization"), format!("App {INFOBIP_KEY}"));
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(req.header("accept"), "application/json");
    assert_eq!(
        req.json(),
        json!({"from": "441134960000", "to": "441134960001",
            "content": {"text": "Some text", "previewUrl": false},
            "callbackData": s(&delivery, "id")})
    );

    // 400 and 401: permanent after one attempt, with Infobip's code.
    for (status, code, text) in [
        (400, "BAD_REQUEST", "Bad request"),
        (401, "UNAUTHORIZED", "Invalid login details"),
    ] {
        let sink = Sink::start().await;
        sink.always(infobip_error(status, code, text));
        let ch = infobip_channel(&app, &sink.url, "441134960000").await;
        let conv = app
            .create_conversation(s(&ch, "id"), Some("441134960011"))
            .await;
        let a = post_text(&app, s(&conv, "id"), json!({"text": "x"})).await;
        let failed = settled(&app, s(&a, "id")).await;
        assert_eq!(
            (failed["status"].as_str(), failed["attempts"].as_i64()),
            (Some("failed"), Some(1))
        );
        assert_eq!(
            s(&failed, "last_error"),
            format!("Infobip error {code}: {text} (HTTP {status})")
        );
        assert!(!s(&failed, "last_error").contains(INFOBIP_KEY));
    }

    // No recipient: permanent, nothing sent.
    let sink = Sink::start().await;
    let ch = infobip_channel(&app, &sink.url, "441134960000").await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let a = post_text(&app, s(&conv, "id"), json!({"text": "x"})).await;
    let failed = settled(&app, s(&a, "id")).await;
    assert_eq!(
        (failed["status"].as_str(), failed["attempts"].as_i64()),
        (Some("failed"), Some(1))
    );
    assert!(s(&failed, "last_error").contains("no WhatsApp recipient"));
    assert!(sink.received().is_empty());
}

async fn meta_handshake_and_signatures(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = meta_channel(&app, "http://127.0.0.1:9", json!({})).await;
    let path = format!("/api/v1/channels/{}/inbound", s(&ch, "id"));

    let resp = app
        .anon(
            Method::GET,
            &format!(
                "{path}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meatyhamhock"
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(resp.text().await.unwrap(), "1158201444");
    for query in [
        "?hub.mode=subscribe&hub.challenge=1&hub.verify_token=wrong",
        "?hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=meatyhamhock",
        "",
    ] {
        let resp = app
            .anon(Method::GET, &format!("{path}{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{query}");
    }

    // The docs/protocols.md#meta-signature-test-vector test vector, byte for byte, with its published signature.
    let body = fixture("meta_signed_test_vector.json");
    assert_eq!(body.len(), 420);
    let published =
        "sha256=bfc18852d7e7fcff57820b3d1d6fc1432d5b6463fcc1abbd11874381d479c01e".to_owned();
    let header = |v: &str| [("x-hub-signature-256", v.to_owned())];
    for bad in ["sha256=00", "bfc1", &hub_signature("other", &body)] {
        let resp = inbound(&app, &ch, &body, &header(bad)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    assert_eq!(
        inbound(&app, &ch, &body, &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(
        conversations(&app).await.is_empty(),
        "refused requests write nothing"
    );

    let ids = accepted(inbound(&app, &ch, &body, &header(&published)).await).await;
    assert_eq!(ids.len(), 1);
    // Meta re-delivers: the same activity, nothing new.
    assert_eq!(
        accepted(inbound(&app, &ch, &body, &header(&published)).await).await,
        ids
    );
    let convs = conversations(&app).await;
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["external_id"], "+16505551234");
    assert_eq!(convs[0]["metadata"]["contact_name"], "Sheena Nelson");
    let acts = app.activities(s(&convs[0], "id")).await;
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0]["text"], "hi");
    assert_eq!(acts[0]["direction"], "inbound");
    assert_eq!(acts[0]["sender"], "+16505551234");
    assert_eq!(acts[0]["idempotency_key"], "wamid.TEST1");
    assert_eq!(acts[0]["metadata"]["sender_name"], "Sheena Nelson");

    // Without an app secret: refused unless unsigned notifications are allowed.
    let unsigned =
        json!({"phone_number_id": PHONE_NUMBER_ID, "access_token": "t", "verify_token": "v"});
    let strict = app.create_channel("whatsapp_meta", unsigned.clone()).await;
    assert_eq!(
        inbound(&app, &strict, &body, &[]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut open_config = unsigned;
    open_config["allow_unsigned_inbound"] = json!(true);
    let open = app.create_channel("whatsapp_meta", open_config).await;
    assert_eq!(
        accepted(inbound(&app, &open, &body, &[]).await).await.len(),
        1
    );
}

async fn meta_notifications_ingest_every_message_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = meta_channel(&app, "http://127.0.0.1:9", json!({})).await;

    let ids = meta_notify(&app, &ch, &fixture("meta_batch.json")).await;
    assert_eq!(ids.len(), 4);
    let convs = conversations(&app).await;
    assert_eq!(convs.len(), 2, "one conversation per wa_id");
    let sheena = convs
        .iter()
        .find(|c| c["external_id"] == "+16505551234")
        .unwrap();
    let omar = convs
        .iter()
        .find(|c| c["external_id"] == "+4915112345678")
        .unwrap();
    assert_eq!(omar["metadata"]["contact_name"], "Omar Haddad");
    let texts: Vec<_> = app
        .activities(s(sheena, "id"))
        .await
        .iter()
        .map(|a| a["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["first", "second", "third"]);
    assert_eq!(app.activities(s(omar, "id")).await[0]["text"], "hallo");

    // Non-text messages: stored with their WhatsApp type, never refused.
    let ids = meta_notify(&app, &ch, &fixture("meta_non_text.json")).await;
    assert_eq!(ids.len(), 5);
    let acts = app.activities(s(sheena, "id")).await;
    let kinds: Vec<_> = acts[3..]
        .iter()
        .map(|a| a["metadata"]["whatsapp_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["image", "location", "reaction", "sticker", "unsupported"]
    );
    assert_eq!(acts[3]["text"], "the blue one");
    assert_eq!(acts[3]["attachments"][0]["id"], "1003383421387256");
    assert_eq!(acts[4]["attachments"][0]["latitude"], 37.4841);

    // The whole batch again: nothing new.
    assert_eq!(
        meta_notify(&app, &ch, &fixture("meta_batch.json"))
            .await
            .len(),
        4
    );
    assert_eq!(app.activities_count_direct(s(sheena, "id")).await, 8);

    // Valid JSON of another shape: 200, logged, nothing stored; not JSON at all: 400.
    for body in [
        &br#"{"object":"page","entry":[]}"#[..],
        b"[]",
        br#"{"entry":[{"changes":[{"field":"account_update","value":{"x":1}}]}]}"#,
    ] {
        assert!(meta_notify(&app, &ch, body).await.is_empty());
    }
    let garbage = b"not json";
    let resp = inbound(
        &app,
        &ch,
        garbage,
        &[("x-hub-signature-256", hub_signature(APP_SECRET, garbage))],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(conversations(&app).await.len(), 2);
}

async fn infobip_messages_and_reports(backend: Backend) {
    let app = TestApp::start(backend).await;
    let infobip = Sink::start().await;
    infobip.always(infobip_success(INFOBIP_ID));
    let ch = infobip_channel(&app, &infobip.url, "447860099299").await;

    let body = fixture("infobip_inbound.json");
    let ids = accepted(inbound(&app, &ch, &body, &[]).await).await;
    assert_eq!(ids.len(), 2);
    assert_eq!(accepted(inbound(&app, &ch, &body, &[]).await).await, ids);
    let convs = conversations(&app).await;
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["external_id"], "+385919998888");
    assert_eq!(convs[0]["metadata"]["contact_name"], "Frank");
    let acts = app.activities(s(&convs[0], "id")).await;
    assert_eq!(acts[0]["text"], "Support hello");
    assert_eq!(
        acts[0]["idempotency_key"],
        "ABEGOFl3VCQoAhBalbc6rTQT6mgS29EmGZ7a"
    );
    assert_eq!(acts[1]["metadata"]["whatsapp_type"], "image");
    assert_eq!(acts[1]["text"], "receipt");

    // A reply goes out to the user; Infobip's reports then move its delivery forward.
    let reply = post_text(
        &app,
        s(&convs[0], "id"),
        json!({"text": "How can we help?"}),
    )
    .await;
    let delivery = settled(&app, s(&reply, "id")).await;
    assert_eq!(delivery["external_id"], INFOBIP_ID);
    assert_eq!(infobip.received()[0].json()["to"], "385919998888");

    for (report, expected) in [
        ("infobip_delivery_report.json", "delivered"),
        ("infobip_seen_report.json", "read"),
        // A late failure report after the user read it changes nothing.
        ("infobip_undeliverable_report.json", "read"),
    ] {
        let ids = accepted(inbound(&app, &ch, &fixture(report), &[]).await).await;
        assert!(ids.is_empty());
        let d = &deliveries_of(&app, s(&reply, "id")).await[0];
        assert_eq!(d["metadata"]["provider_status"], expected, "{report}: {d}");
        assert_eq!(d["status"], "delivered");
    }
    let d = &deliveries_of(&app, s(&reply, "id")).await[0];
    assert_eq!(
        d["metadata"]["provider_status_at"],
        "2019-04-09T19:02:10.251Z"
    );

    // Reports on messages another channel sent are accepted and ignored: the
    // lookup is scoped to the channel (and its tenant).
    let other = infobip_channel(&app, &infobip.url, "447860099299").await;
    let ids =
        accepted(inbound(&app, &other, &fixture("infobip_delivery_report.json"), &[]).await).await;
    assert!(ids.is_empty());
}

async fn statuses_move_forward_and_reach_sockets(backend: Backend) {
    let app = TestApp::start(backend).await;
    let graph = Sink::start().await;
    graph.always(graph_success(WAMID));
    let ch = meta_channel(&app, &graph.url, json!({})).await;
    let conv = app
        .create_conversation(s(&ch, "id"), Some("16505551234"))
        .await;
    let conv_id = s(&conv, "id");
    let activity = post_text(&app, conv_id, json!({"text": "Your order shipped"})).await;
    let delivery = settled(&app, s(&activity, "id")).await;
    assert_eq!(delivery["external_id"], WAMID);

    let mut socket = Socket::join(&app, conv_id).await;
    let status_body = |status: &str| {
        let mut body = fixture_json("meta_statuses.json");
        body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] = json!(status);
        body.to_string().into_bytes()
    };
    for status in ["delivered", "read", "delivered"] {
        assert!(
            meta_notify(&app, &ch, &status_body(status))
                .await
                .is_empty()
        );
    }
    // A failure after the read is ignored too.
    assert!(
        meta_notify(&app, &ch, &fixture("meta_status_failed.json"))
            .await
            .is_empty()
    );

    let d = &deliveries_of(&app, s(&activity, "id")).await[0];
    assert_eq!(d["metadata"]["provider_status"], "read", "{d}");
    assert_eq!(d["metadata"]["provider_status_at"], "2025-06-25T13:16:24Z");
    assert!(d["metadata"].get("provider_error").is_none());

    let events = socket.delivery_statuses(2).await;
    let expected = |status: &str| {
        json!({"delivery_id": delivery["id"], "activity_id": activity["id"],
            "channel_id": ch["id"], "status": status})
    };
    assert_eq!(events, [expected("delivered"), expected("read")]);

    // A failure before delivery is recorded with Meta's code and reaches the socket.
    let second = post_text(&app, conv_id, json!({"text": "second"})).await;
    graph.always(graph_success("wamid.SECOND"));
    let _ = settled(&app, s(&second, "id")).await;
    let wamid = deliveries_of(&app, s(&second, "id")).await[0]["external_id"].clone();
    let mut failed = fixture_json("meta_status_failed.json");
    failed["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = wamid;
    meta_notify(&app, &ch, failed.to_string().as_bytes()).await;
    let d = &deliveries_of(&app, s(&second, "id")).await[0];
    assert_eq!(d["metadata"]["provider_status"], "failed");
    assert!(s(&d["metadata"], "provider_error").starts_with("131047 Re-engagement message"));
    let events = socket.delivery_statuses(1).await;
    assert_eq!(events[0]["status"], "failed");
    assert!(events[0]["error"].as_str().unwrap().starts_with("131047"));
}

async fn inbound_whatsapp_is_routed_to_the_bot_not_back(backend: Backend) {
    let app = TestApp::start(backend).await;
    let graph = Sink::start().await;
    let bot = Sink::start().await;
    let wa = meta_channel(&app, &graph.url, json!({})).await;
    let hook = app.create_channel("webhook", json!({"url": bot.url})).await;
    app.store
        .insert_route(
            app.tenant_id,
            s(&wa, "id").parse().unwrap(),
            s(&hook, "id").parse().unwrap(),
            RouteDirection::Inbound,
        )
        .await
        .unwrap();

    let ids = meta_notify(&app, &wa, &fixture("meta_text.json")).await;
    assert_eq!(ids.len(), 1);
    let got = bot.wait_for(1, WAIT).await;
    let payload = got[0].json();
    assert_eq!(payload["text"], "Does it come in another color?");
    assert_eq!(payload["direction"], "inbound");
    assert_eq!(payload["conversation"]["external_id"], "+16505551234");

    let deliveries = deliveries_of(&app, &ids[0]).await;
    assert_eq!(
        deliveries.len(),
        1,
        "only the bot's webhook: {deliveries:?}"
    );
    assert_eq!(deliveries[0]["channel_id"], hook["id"]);
    assert!(graph.received().is_empty(), "nothing goes back to WhatsApp");
}

/// A Phoenix V2 socket joined to one conversation.
struct Socket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Socket {
    async fn join(app: &TestApp, conversation: &str) -> Socket {
        let resp = app
            .req(Method::POST, "/api/v1/tokens")
            .json(&json!({"conversation_id": conversation, "user_id": "agent"}))
            .send()
            .await
            .unwrap();
        let body = expect_data(resp, StatusCode::CREATED).await;
        let url = format!(
            "{}/socket/websocket?token={}&vsn=2.0.0",
            app.base.replacen("http", "ws", 1),
            s(&body, "token")
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut socket = Socket { ws };
        let topic = format!("conversation:{conversation}");
        socket.send(json!(["1", "1", topic, "phx_join", {}])).await;
        let reply = socket.recv().await;
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        socket
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time")
                .expect("socket closed")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    /// Waits for `n` `delivery_status` pushes, then returns them with any further ones
    /// that arrive before a heartbeat round trip.
    async fn delivery_statuses(&mut self, n: usize) -> Vec<Value> {
        let mut found = Vec::new();
        while found.len() < n {
            let frame = self.recv().await;
            if frame[3] == "delivery_status" {
                found.push(frame[4].clone());
            }
        }
        self.send(json!([null, "hb", "phoenix", "heartbeat", {}]))
            .await;
        loop {
            let frame = self.recv().await;
            if frame[1] == "hb" {
                return found;
            }
            if frame[3] == "delivery_status" {
                found.push(frame[4].clone());
            }
        }
    }
}

/// A status report that overtakes the answer to its send (the provider is quicker than
/// our write) is refused with 503 while the send is in flight, so the provider reports
/// it again, and is recorded once the answer is.
async fn early_status_reports_are_asked_again(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_backoff_scale = SCALE).await;
    let graph = Sink::start().await;
    graph.always(graph_success(WAMID).delay(Duration::from_secs(3)));
    let ch = meta_channel(&app, &graph.url, json!({})).await;
    let conv = app
        .create_conversation(s(&ch, "id"), Some("16505551234"))
        .await;
    let activity = post_text(&app, s(&conv, "id"), json!({"text": "quick"})).await;
    graph.wait_for(1, WAIT).await;

    let mut body = fixture_json("meta_statuses.json");
    let status = &mut body["entry"][0]["changes"][0]["value"]["statuses"][0];
    status["status"] = json!("delivered");
    status["timestamp"] = json!(chrono::Utc::now().timestamp().to_string());
    let body = body.to_string().into_bytes();
    let signed = || vec![("x-hub-signature-256", hub_signature(APP_SECRET, &body))];
    let early = inbound(&app, &ch, &body, &signed()).await;
    assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(early.headers()["retry-after"], "5");
    let error: Value = early.json().await.unwrap();
    assert_eq!(error["error"]["code"], "status_before_send");

    let delivery = settled(&app, s(&activity, "id")).await;
    assert_eq!(delivery["external_id"], WAMID);
    assert!(meta_notify(&app, &ch, &body).await.is_empty());
    let d = &deliveries_of(&app, s(&activity, "id")).await[0];
    assert_eq!(d["metadata"]["provider_status"], "delivered", "{d}");

    // An old report for a message sent elsewhere is taken and dropped even while a
    // send is in flight; so is a recent one once nothing is in flight.
    let second = post_text(&app, s(&conv, "id"), json!({"text": "slow"})).await;
    graph.wait_for(2, WAIT).await;
    let mut old = fixture_json("meta_statuses.json");
    old["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = json!("wamid.ELSEWHERE");
    assert!(
        meta_notify(&app, &ch, old.to_string().as_bytes())
            .await
            .is_empty()
    );
    settled(&app, s(&second, "id")).await;
    let mut other = old.clone();
    other["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] =
        json!(chrono::Utc::now().timestamp().to_string());
    assert!(
        meta_notify(&app, &ch, other.to_string().as_bytes())
            .await
            .is_empty()
    );
}

/// The application writes a number its own way; the provider names the user by digits
/// alone. Both are one party: the user's reply lands in the conversation the
/// application opened, on either provider.
async fn replies_land_in_the_conversation_opened_for_the_number(backend: Backend) {
    let app = TestApp::start(backend).await;
    let graph = Sink::start().await;
    graph.always(graph_success(WAMID));
    let meta = meta_channel(&app, &graph.url, json!({})).await;
    let conv = app
        .create_conversation(s(&meta, "id"), Some("+1 (650) 555-1234"))
        .await;
    assert_eq!(conv["external_id"], "+16505551234");
    let out = post_text(&app, s(&conv, "id"), json!({"text": "Your order shipped"})).await;
    assert_eq!(settled(&app, s(&out, "id")).await["status"], "delivered");
    assert_eq!(graph.received()[0].json()["to"], "+16505551234");

    // Meta's notification names the sender `16505551234`.
    let ids = meta_notify(&app, &meta, &fixture("meta_text.json")).await;
    assert_eq!(conversations(&app).await.len(), 1, "no second conversation");
    let acts = app.activities(s(&conv, "id")).await;
    assert_eq!(acts.len(), 2);
    assert_eq!(acts[1]["id"], ids[0].as_str());
    assert_eq!(acts[1]["sender"], "+16505551234");
    assert_eq!(acts[1]["direction"], "inbound");

    // Infobip likewise: written with the 00 prefix, reported as `385919998888`.
    let infobip = Sink::start().await;
    infobip.always(infobip_success(INFOBIP_ID));
    let ib = infobip_channel(&app, &infobip.url, "447860099299").await;
    let conv = app
        .create_conversation(s(&ib, "id"), Some("00385 91 999 8888"))
        .await;
    assert_eq!(conv["external_id"], "+385919998888");
    let out = post_text(&app, s(&conv, "id"), json!({"text": "Hello Frank"})).await;
    assert_eq!(settled(&app, s(&out, "id")).await["status"], "delivered");
    assert_eq!(infobip.received()[0].json()["to"], "385919998888");
    let ids = accepted(inbound(&app, &ib, &fixture("infobip_inbound.json"), &[]).await).await;
    assert_eq!(ids.len(), 2);
    assert_eq!(conversations(&app).await.len(), 2, "no third conversation");
    let acts = app.activities(s(&conv, "id")).await;
    let senders: Vec<_> = acts.iter().map(|a| a["sender"].as_str().unwrap()).collect();
    assert_eq!(senders, ["app", "+385919998888", "+385919998888"]);
}
