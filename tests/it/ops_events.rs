//! Operational events end to end: a failing channel's deliveries and breaker, and an
//! operator's pause and resume, are reported as events the tenant lists and receives
//! at its ops webhook, signed, retried, and never about another tenant.

use std::time::Duration;

use converger::adapters::signing::verify_standard_webhooks;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::node::Node;
use crate::common::sink::{Received, Reply, Sink};
use crate::common::{
    Backend, TestApp, TestDb, both_backends, eventually, expect_data, expect_error, postgres_only,
    s,
};

both_backends!(
    a_failing_channel_is_reported_to_the_ops_webhook,
    pause_and_resume_are_reported_and_listed_without_a_webhook,
    the_ops_webhook_is_retried_then_given_up_without_feeding_itself,
    ops_webhooks_and_events_stay_within_their_tenant,
    the_admin_dashboard_shows_every_tenants_events_live,
    the_admin_feed_is_behind_the_admin_guard,
);

postgres_only!(two_nodes_send_each_event_once);

const WAIT: Duration = Duration::from_secs(30);

async fn ops_webhook_to(app: &TestApp, key: &str, sink: &Sink) -> Value {
    let channel = app
        .create_channel_as(key, "webhook", json!({"url": sink.url}))
        .await;
    let resp = app
        .with_key(key, Method::PUT, "/api/v1/ops-webhook")
        .json(&json!({"channel_id": channel["id"]}))
        .send()
        .await
        .unwrap();
    let set = expect_data(resp, StatusCode::OK).await;
    assert_eq!(set["channel_id"], channel["id"]);
    channel
}

/// `method path` as the app's tenant, refused with `status` and `code`.
async fn refused_with(app: &TestApp, method: Method, path: &str, status: StatusCode, code: &str) {
    let resp = app.req(method, path).send().await.unwrap();
    expect_error(resp, status, code).await;
}

async fn events(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let resp = app
        .with_key(key, Method::GET, &format!("/api/v1/ops-events{query}"))
        .send()
        .await
        .unwrap();
    let page = expect_data(resp, StatusCode::OK).await;
    page.as_array().unwrap().clone()
}

/// Checks a request the ops webhook received: signed with the channel's secret under
/// the event's id, and the body the event's; returns the body.
fn verified(request: &Received, ops_channel: &Value) -> Value {
    let body = request.json();
    assert_eq!(request.header("webhook-id"), s(&body, "id"));
    verify_standard_webhooks(
        s(ops_channel, "secret"),
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
        &request.body,
        chrono::Utc::now().timestamp(),
    )
    .expect("a valid Standard Webhooks signature");
    body
}

fn of_type<'a>(bodies: &'a [Value], kind: &str) -> &'a Value {
    bodies
        .iter()
        .find(|b| b["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event among {bodies:?}"))
}

async fn a_failing_channel_is_reported_to_the_ops_webhook(backend: Backend) {
    // Five failures in a row use up a delivery's attempts and open the breaker.
    let app = TestApp::start_with(backend, |c| {
        c.delivery_backoff_scale = 0.0001;
        c.breaker_failures = 5;
        c.breaker_cooldown_secs = 3600;
    })
    .await;
    let ops = Sink::start().await;
    let ops_channel = ops_webhook_to(&app, &app.api_key, &ops).await;
    let failing = Sink::start().await;
    failing.always(Reply::status(500).body("down"));
    let channel = app
        .create_channel("webhook", json!({"url": failing.url}))
        .await;
    let conv = app.create_conversation(s(&channel, "id"), None).await;
    let activity = expect_data(
        app.post_activity(s(&conv, "id"), json!({"text": "lost"}))
            .await,
        StatusCode::CREATED,
    )
    .await;

    let received = ops.wait_for(2, WAIT).await;
    let bodies: Vec<Value> = received.iter().map(|r| verified(r, &ops_channel)).collect();
    let failed = of_type(&bodies, "delivery.failed");
    assert_eq!(failed["tenant_id"], app.tenant_id.to_string());
    assert_eq!(failed["data"]["activity_id"], activity["id"]);
    assert_eq!(failed["data"]["conversation_id"], conv["id"]);
    assert_eq!(failed["data"]["channel_id"], channel["id"]);
    assert_eq!(failed["data"]["attempts"], 5);
    assert!(s(&failed["data"], "error").contains("500"), "{failed}");
    let opened = of_type(&bodies, "channel.breaker_opened");
    assert_eq!(opened["data"]["channel_id"], channel["id"]);
    assert_eq!(opened["data"]["consecutive_failures"], 5);
    assert!(opened["data"]["open_until"].is_string(), "{opened}");
    assert!(opened["timestamp"].is_string(), "{opened}");

    // The list shows both, newest first, sent once each.
    let listed = eventually(WAIT, "both events to be marked delivered", || async {
        let listed = events(&app, &app.api_key, "").await;
        listed
            .iter()
            .all(|e| e["webhook"]["status"] == "delivered")
            .then_some(listed)
    })
    .await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    for event in &listed {
        assert_eq!(event["webhook"]["attempts"], 1);
        assert!(event["webhook"]["delivered_at"].is_string());
        let sent = of_type(&bodies, s(event, "type"));
        assert_eq!(sent["id"], event["id"]);
        assert_eq!(sent["data"], event["data"]);
    }
    let failed_only = events(&app, &app.api_key, "?type=delivery.failed").await;
    assert_eq!(failed_only.len(), 1);
    assert_eq!(failed_only[0]["delivery_id"], failed["data"]["delivery_id"]);

    // A resume closes the breaker and says so; nothing else was sent meanwhile.
    let resp = app
        .req(
            Method::POST,
            &format!("/api/v1/channels/{}/resume", s(&channel, "id")),
        )
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    let received = ops.wait_for(3, WAIT).await;
    let resumed = verified(&received[2], &ops_channel);
    assert_eq!(resumed["type"], "channel.resumed");
    assert_eq!(resumed["data"]["from"], "open");
    assert_eq!(ops.received().len(), 3);
}

async fn pause_and_resume_are_reported_and_listed_without_a_webhook(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    let channel = app
        .create_channel("webhook", json!({"url": sink.url}))
        .await;
    let act = |action: &'static str| {
        let path = format!("/api/v1/channels/{}/{action}", s(&channel, "id"));
        let app = &app;
        async move {
            let resp = app.req(Method::POST, &path).send().await.unwrap();
            expect_data(resp, StatusCode::OK).await
        }
    };
    act("pause").await;
    // A second pause, and a resume of a channel that is not held, change nothing and
    // report nothing.
    act("pause").await;
    act("resume").await;
    act("resume").await;

    let listed = events(&app, &app.api_key, "").await;
    let kinds: Vec<&str> = listed.iter().map(|e| s(e, "type")).collect();
    assert_eq!(kinds, ["channel.resumed", "channel.paused"], "{listed:?}");
    assert_eq!(listed[1]["data"]["reason"], "operator");
    assert_eq!(listed[0]["data"]["from"], "paused");
    for event in &listed {
        assert_eq!(event["channel_id"], channel["id"]);
        assert_eq!(event["tenant_id"], app.tenant_id.to_string());
        assert_eq!(event["webhook"], Value::Null, "no ops webhook was set");
    }

    // Keyset pages, newest first.
    let resp = app
        .req(Method::GET, "/api/v1/ops-events?limit=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["data"][0]["id"], listed[0]["id"]);
    let cursor = s(&page, "next_cursor").to_owned();
    let rest = events(&app, &app.api_key, &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(rest[0]["id"], listed[1]["id"]);

    // Bad queries are refused with their codes.
    refused_with(
        &app,
        Method::GET,
        "/api/v1/ops-events?type=channel.exploded",
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    refused_with(
        &app,
        Method::GET,
        "/api/v1/ops-events?cursor=nope",
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
}

async fn the_ops_webhook_is_retried_then_given_up_without_feeding_itself(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.delivery_backoff_scale = 0.0001;
    })
    .await;
    let ops = Sink::start().await;
    ops.script([Reply::status(503), Reply::status(200)]);
    let ops_channel = ops_webhook_to(&app, &app.api_key, &ops).await;
    let sink = Sink::start().await;
    let channel = app
        .create_channel("webhook", json!({"url": sink.url}))
        .await;
    let pause = format!("/api/v1/channels/{}/pause", s(&channel, "id"));
    let resp = app.req(Method::POST, &pause).send().await.unwrap();
    expect_data(resp, StatusCode::OK).await;

    // The first answer is a 503: the same event, same id, comes again and is kept.
    let received = ops.wait_for(2, WAIT).await;
    let (first, second) = (
        verified(&received[0], &ops_channel),
        verified(&received[1], &ops_channel),
    );
    assert_eq!(first, second);
    assert_eq!(first["type"], "channel.paused");
    let listed = eventually(WAIT, "the event to be marked delivered", || async {
        let listed = events(&app, &app.api_key, "").await;
        (listed[0]["webhook"]["status"] == "delivered").then_some(listed)
    })
    .await;
    assert_eq!(listed[0]["webhook"]["attempts"], 2);
    assert_eq!(listed[0]["webhook"]["last_error"], Value::Null);

    // A webhook that never answers 2xx gets the delivery schedule's five attempts, and
    // its failure is not itself an event.
    ops.always(Reply::status(500));
    let resume = format!("/api/v1/channels/{}/resume", s(&channel, "id"));
    let resp = app.req(Method::POST, &resume).send().await.unwrap();
    expect_data(resp, StatusCode::OK).await;
    let listed = eventually(WAIT, "the event to be given up", || async {
        let listed = events(&app, &app.api_key, "").await;
        (listed[0]["webhook"]["status"] == "failed").then_some(listed)
    })
    .await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["type"], "channel.resumed");
    assert_eq!(listed[0]["webhook"]["attempts"], 5);
    assert!(s(&listed[0]["webhook"], "last_error").contains("gave up after 5 attempts"));
    assert_eq!(ops.received().len(), 2 + 5);

    // Every outcome is counted (the metrics of all servers in this process add up).
    let metrics = app
        .anon(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, least) in [("delivered", 1.0), ("retry", 5.0), ("failed", 1.0)] {
        let line = format!("converger_ops_webhook_attempts_total{{outcome=\"{outcome}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
            .parse()
            .unwrap();
        assert!(count >= least, "{line}{count}");
    }
}

async fn ops_webhooks_and_events_stay_within_their_tenant(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, other_key) = app.create_tenant("globex").await;
    let sink = Sink::start().await;

    // Neither GET nor DELETE finds a webhook that was never set.
    refused_with(
        &app,
        Method::GET,
        "/api/v1/ops-webhook",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    refused_with(
        &app,
        Method::DELETE,
        "/api/v1/ops-webhook",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Another tenant's channel is not found; a channel of another type is refused.
    let theirs = app
        .create_channel_as(&other_key, "webhook", json!({"url": sink.url}))
        .await;
    let resp = app
        .req(Method::PUT, "/api/v1/ops-webhook")
        .json(&json!({"channel_id": theirs["id"]}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    let socket = app.websocket_channel().await;
    let resp = app
        .req(Method::PUT, "/api/v1/ops-webhook")
        .json(&json!({"channel_id": socket["id"]}))
        .send()
        .await
        .unwrap();
    let refused = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(refused["details"]["fields"][0]["field"], "channel_id");
    let resp = app
        .req(Method::PUT, "/api/v1/ops-webhook")
        .json(&json!({"channel": theirs["id"]}))
        .send()
        .await
        .unwrap();
    let refused = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(refused["details"]["fields"][0]["field"], "channel");

    // Set, read, replaced and removed.
    let ours = ops_webhook_to(&app, &app.api_key, &sink).await;
    let resp = app
        .req(Method::GET, "/api/v1/ops-webhook")
        .send()
        .await
        .unwrap();
    let got = expect_data(resp, StatusCode::OK).await;
    assert_eq!(got["channel_id"], ours["id"]);
    let replacement = ops_webhook_to(&app, &app.api_key, &sink).await;
    let resp = app
        .req(Method::GET, "/api/v1/ops-webhook")
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(resp, StatusCode::OK).await["channel_id"],
        replacement["id"]
    );

    // Their pause is theirs alone: listed for them and sent to their webhook, never
    // to ours. Ours, which comes after, is the one thing our webhook receives.
    let their_sink = Sink::start().await;
    let their_ops = ops_webhook_to(&app, &other_key, &their_sink).await;
    let resp = app
        .with_key(
            &other_key,
            Method::POST,
            &format!("/api/v1/channels/{}/pause", s(&theirs, "id")),
        )
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    assert_eq!(events(&app, &other_key, "").await.len(), 1);
    assert!(events(&app, &app.api_key, "").await.is_empty());
    let resp = app
        .req(
            Method::POST,
            &format!("/api/v1/channels/{}/pause", s(&ours, "id")),
        )
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;
    let received = sink.wait_for(1, WAIT).await;
    let body = verified(&received[0], &replacement);
    assert_eq!(body["data"]["channel_id"], ours["id"]);
    assert_eq!(body["tenant_id"], app.tenant_id.to_string());
    let theirs_received = their_sink.wait_for(1, WAIT).await;
    let body = verified(&theirs_received[0], &their_ops);
    assert_eq!(body["data"]["channel_id"], theirs["id"]);
    assert_ne!(body["tenant_id"], app.tenant_id.to_string());

    let resp = app
        .req(Method::DELETE, "/api/v1/ops-webhook")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    refused_with(
        &app,
        Method::GET,
        "/api/v1/ops-webhook",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(sink.received().len(), 1, "{:?}", sink.received());
    assert_eq!(their_sink.received().len(), 1);
}

async fn the_admin_dashboard_shows_every_tenants_events_live(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, other_key) = app.create_tenant("globex").await;
    let ws = format!(
        "{}/admin/ops-events/socket",
        app.base.replacen("http", "ws", 1)
    );
    let (mut feed, _) = tokio_tungstenite::connect_async(ws.as_str())
        .await
        .expect("the admin feed opens from loopback");
    let sink = Sink::start().await;
    let mut paused = Vec::new();
    for key in [app.api_key.clone(), other_key] {
        let channel = app
            .create_channel_as(&key, "webhook", json!({"url": sink.url}))
            .await;
        let path = format!("/api/v1/channels/{}/pause", s(&channel, "id"));
        let resp = app
            .with_key(&key, Method::POST, &path)
            .send()
            .await
            .unwrap();
        expect_data(resp, StatusCode::OK).await;
        paused.push(channel);
    }

    // Both tenants' pauses come over the socket, each once, with their tenants.
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let frame = tokio::time::timeout(WAIT, feed.next())
            .await
            .expect("an event within the wait")
            .expect("the feed stays open")
            .expect("a frame");
        let Message::Text(text) = frame else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(frame["event"], "ops_event");
        rows.push(frame["payload"].clone());
    }
    let mut tenants: Vec<&str> = rows.iter().map(|r| s(r, "tenant_name")).collect();
    tenants.sort_unstable();
    assert_eq!(tenants, ["acme", "globex"]);
    for (row, channel) in rows.iter().zip(&paused) {
        assert_eq!(row["type"], "channel.paused");
        assert_eq!(row["summary"], "paused (operator)");
        assert_eq!(row["channel_id"], channel["id"]);
        assert_eq!(row["channel_name"], channel["name"]);
        assert_eq!(row["webhook"], "-");
    }
    assert_ne!(rows[0]["id"], rows[1]["id"]);

    // The dashboard renders them too.
    let page = app
        .anon(Method::GET, "/admin")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for row in &rows {
        assert!(
            page.contains(&format!("data-id=\"{}\"", s(row, "id"))),
            "{page}"
        );
    }
    assert!(page.contains("paused (operator)"));
}

async fn the_admin_feed_is_behind_the_admin_guard(backend: Backend) {
    let app =
        TestApp::start_with(backend, |c| c.admin_password = Some("correct horse".into())).await;
    let ws = format!(
        "{}/admin/ops-events/socket",
        app.base.replacen("http", "ws", 1)
    );
    // A page of another site cannot open it from the operator's browser, which would
    // send the session cookie along.
    let app_open = TestApp::start(backend).await;
    let ws_open = format!(
        "{}/admin/ops-events/socket",
        app_open.base.replacen("http", "ws", 1)
    );
    let mut foreign = ws_open.as_str().into_client_request().unwrap();
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    let (status, body) = crate::common::socket::refusal(foreign).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "csrf_rejected", "{body}");
    let mut own = ws_open.as_str().into_client_request().unwrap();
    let origin = app_open.base.clone();
    own.headers_mut().insert("origin", origin.parse().unwrap());
    tokio_tungstenite::connect_async(own)
        .await
        .expect("the panel's own pages open the feed");
    // Without a session the handshake is sent to the login page, as any admin page.
    assert_eq!(crate::common::socket::refused(ws.as_str()).await, 303);
    let app = TestApp::start_with(backend, |c| {
        c.admin_allowed_ips = converger::access::parse_cidrs("10.0.0.0/8").unwrap();
    })
    .await;
    let ws = format!(
        "{}/admin/ops-events/socket",
        app.base.replacen("http", "ws", 1)
    );
    assert_eq!(crate::common::socket::refused(ws.as_str()).await, 403);
}

/// Both nodes look for due events every second; each event still goes out once.
async fn two_nodes_send_each_event_once(backend: Backend) {
    const EVENTS: usize = 20;
    let (_db, url, _store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::new();
    let ops = Sink::start().await;
    // A slow receiver widens the window in which both nodes see the same due events.
    ops.always(Reply::status(200).delay(Duration::from_millis(300)));
    let nodes = [
        Node::start_with(&url, &[], std::process::Stdio::null()),
        Node::start_with(&url, &[], std::process::Stdio::null()),
    ];
    for node in &nodes {
        node.ready(&http).await;
    }
    let call = |node: &Node, method: Method, path: &str| {
        http.request(method, format!("{}/api/v1{path}", node.base))
            .header("x-api-key", &key)
    };
    let create = |url: &str| json!({"name": "ops", "type": "webhook", "config": {"url": url}});
    let resp = call(&nodes[0], Method::POST, "/channels")
        .json(&create(&ops.url))
        .send()
        .await
        .unwrap();
    let ops_channel = expect_data(resp, StatusCode::CREATED).await;
    let resp = call(&nodes[0], Method::PUT, "/ops-webhook")
        .json(&json!({"channel_id": ops_channel["id"]}))
        .send()
        .await
        .unwrap();
    expect_data(resp, StatusCode::OK).await;

    // Pauses and resumes through either node: one event each.
    let sink = Sink::start().await;
    let resp = call(&nodes[1], Method::POST, "/channels")
        .json(&create(&sink.url))
        .send()
        .await
        .unwrap();
    let channel = expect_data(resp, StatusCode::CREATED).await;
    for i in 0..EVENTS {
        let action = if i % 2 == 0 { "pause" } else { "resume" };
        let path = format!("/channels/{}/{action}", s(&channel, "id"));
        let resp = call(&nodes[i % 2], Method::POST, &path)
            .send()
            .await
            .unwrap();
        expect_data(resp, StatusCode::OK).await;
    }

    // Once every event is recorded as delivered at its first attempt, anything sent
    // twice would have reached the sink already.
    let listed = eventually(WAIT, "every event to be delivered", || async {
        let resp = call(&nodes[1], Method::GET, "/ops-events?limit=100")
            .send()
            .await
            .ok()?;
        let page: Value = resp.json().await.ok()?;
        let listed = page["data"].as_array()?.clone();
        (listed.len() == EVENTS && listed.iter().all(|e| e["webhook"]["status"] == "delivered"))
            .then_some(listed)
    })
    .await;
    assert!(
        listed.iter().all(|e| e["webhook"]["attempts"] == 1),
        "{listed:?}"
    );
    let mut ids: Vec<String> = ops
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), EVENTS, "each event once: {ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), EVENTS);
}
