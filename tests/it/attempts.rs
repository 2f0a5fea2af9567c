//! The attempt log of deliveries (`GET /api/v1/deliveries/:id/attempts`): a row per
//! attempt with its outcome, HTTP status or transport error, the start of the
//! receiver's answer and the node; numbered on across manual retries, scoped by tenant,
//! pruned with its delivery. Retrying a delivery waiting in backoff now, and replaying
//! a channel's failed deliveries (`POST /api/v1/channels/:id/deliveries/retry`).

use std::time::Duration;

use converger::domain::Timestamp;
use converger::store::{AttemptLog, AttemptResult, Completion, Store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestApp, both_backends, eventually, expect_data, expect_error, s};

both_backends!(
    failures_then_success_are_logged_with_status_and_answer,
    transport_errors_are_logged_without_a_status,
    attempts_are_paginated_and_scoped_by_tenant,
    pruning_removes_the_attempts,
    retry_now_delivers_a_delivery_waiting_in_backoff,
    a_retry_grants_a_new_budget_and_numbering_goes_on,
    replay_requeues_failed_deliveries_in_order,
    replay_input_is_checked_and_scoped,
    outcomes_of_lost_leases_log_nothing,
);

const WAIT: Duration = Duration::from_secs(20);

/// More failures in a row than these tests make: they see the attempt log and the
/// retry budget alone.
async fn fast_app(backend: Backend) -> TestApp {
    TestApp::with_fast_retries(backend, 100).await
}

/// A webhook channel to `url` and a conversation on it: (channel id, conversation id).
async fn webhook_conversation(app: &TestApp, url: &str) -> (String, String) {
    let channel = app.create_channel("webhook", json!({ "url": url })).await;
    let conv = app.create_conversation(s(&channel, "id"), None).await;
    (s(&channel, "id").to_owned(), s(&conv, "id").to_owned())
}

/// Posts an outbound message; returns (activity, its one delivery's id).
async fn post(app: &TestApp, conversation_id: &str, text: &str) -> (Value, String) {
    let activity = expect_data(
        app.post_activity(conversation_id, json!({ "text": text }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let deliveries = delivery_list(app, s(&activity, "id")).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    let id = s(&deliveries[0], "id").to_owned();
    (activity, id)
}

async fn delivery_list(app: &TestApp, activity_id: &str) -> Vec<Value> {
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

/// A delivery as the tenant lists it.
async fn delivery(app: &TestApp, id: &str) -> Value {
    let resp = app
        .req(Method::GET, "/api/v1/deliveries?limit=500")
        .send()
        .await
        .unwrap();
    let all = expect_data(resp, StatusCode::OK).await;
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("delivery {id} not listed"))
}

/// Waits until the delivery has `status`; returns it.
async fn settled(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(WAIT, &format!("delivery {id} {status}"), || async {
        let d = delivery(app, id).await;
        (d["status"] == status).then_some(d)
    })
    .await
}

/// Every attempt of a delivery, read a page at a time with `key`.
async fn attempts_as(app: &TestApp, key: &str, id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut query = String::new();
    loop {
        let resp = app
            .with_key(
                key,
                Method::GET,
                &format!("/api/v1/deliveries/{id}/attempts?limit=3{query}"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let page: Value = resp.json().await.unwrap();
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("&cursor={cursor}"),
            None => return all,
        }
    }
}

async fn attempts(app: &TestApp, id: &str) -> Vec<Value> {
    attempts_as(app, &app.api_key, id).await
}

/// Attempt numbers and outcomes, in the order listed.
fn summary(attempts: &[Value]) -> Vec<(i64, String)> {
    attempts
        .iter()
        .map(|a| (a["attempt"].as_i64().unwrap(), s(a, "outcome").to_owned()))
        .collect()
}

async fn failures_then_success_are_logged_with_status_and_answer(backend: Backend) {
    let app = fast_app(backend).await;
    let sink = Sink::start().await;
    // A long answer with a NUL (which PostgreSQL's text cannot hold, kept as U+FFFD,
    // three bytes) near its start, and whose 1,024th byte then falls inside a two-byte
    // character.
    let long = format!("x\0{}é and more", "y".repeat(1019));
    sink.script([
        Reply::status(500).body("upstream is down"),
        Reply::status(503).body(&long),
        Reply::status(200).body("thanks"),
    ]);
    let (_, conv) = webhook_conversation(&app, &format!("{}/hook", sink.url)).await;
    let (_, id) = post(&app, &conv, "hello").await;
    let delivered = settled(&app, &id, "delivered").await;
    assert_eq!(delivered["attempts"], 3);

    let log = attempts(&app, &id).await;
    assert_eq!(
        summary(&log),
        [
            (1, "retry".to_owned()),
            (2, "retry".to_owned()),
            (3, "delivered".to_owned())
        ]
    );
    let node = converger::telemetry::node_name();
    for a in &log {
        assert_eq!(a["delivery_id"], id.as_str());
        assert_eq!(a["tenant_id"], app.tenant_id.to_string());
        assert_eq!(a["node"], node.as_str());
        assert!(a["duration_ms"].as_i64().unwrap() >= 0, "{a}");
    }
    let started: Vec<&str> = log.iter().map(|a| s(a, "started_at")).collect();
    assert!(started.windows(2).all(|w| w[0] < w[1]), "{started:?}");

    assert_eq!(log[0]["http_status"], 500);
    assert_eq!(log[0]["response_body"], "upstream is down");
    assert!(
        s(&log[0], "error").contains("500") && s(&log[0], "error").contains("upstream is down"),
        "{}",
        log[0]
    );
    assert_eq!(log[1]["http_status"], 503);
    let body = s(&log[1], "response_body");
    assert_eq!(
        body.len(),
        1023,
        "cut before the character that does not fit"
    );
    assert_eq!(body, format!("x\u{FFFD}{}", "y".repeat(1019)).as_str());
    assert!(s(&log[1], "error").starts_with("HTTP 503"), "{}", log[1]);
    assert_eq!(log[2]["http_status"], 200);
    assert_eq!(log[2]["response_body"], "thanks");
    assert_eq!(log[2]["error"], Value::Null);
}

async fn transport_errors_are_logged_without_a_status(backend: Backend) {
    let app = fast_app(backend).await;
    // A port nobody listens on any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (_, conv) = webhook_conversation(&app, &format!("http://127.0.0.1:{closed}/hook")).await;
    let (_, id) = post(&app, &conv, "into the void").await;
    let failed = settled(&app, &id, "failed").await;
    assert_eq!(failed["attempts"], 5);
    let log = attempts(&app, &id).await;
    assert_eq!(
        summary(&log),
        (1..=5)
            .map(|n| (n, if n < 5 { "retry" } else { "failed" }.to_owned()))
            .collect::<Vec<_>>()
    );
    for a in &log {
        assert_eq!(a["http_status"], Value::Null, "{a}");
        assert_eq!(a["response_body"], Value::Null, "{a}");
        assert!(s(a, "error").contains("connection failed"), "{a}");
    }
    assert!(s(&log[4], "error").contains("gave up after 5 attempts"));
}

async fn attempts_are_paginated_and_scoped_by_tenant(backend: Backend) {
    let app = fast_app(backend).await;
    let sink = Sink::start().await;
    sink.script((0..4).map(|_| Reply::status(502)));
    let (_, conv) = webhook_conversation(&app, &sink.url).await;
    let (_, id) = post(&app, &conv, "paged").await;
    settled(&app, &id, "delivered").await;

    // Pages of two follow each other by attempt number.
    let first = expect_data(
        app.req(
            Method::GET,
            &format!("/api/v1/deliveries/{id}/attempts?limit=2"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(summary(first.as_array().unwrap()).len(), 2);
    let page: Value = app
        .req(
            Method::GET,
            &format!("/api/v1/deliveries/{id}/attempts?limit=2&cursor=2"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        summary(page["data"].as_array().unwrap()),
        [(3, "retry".to_owned()), (4, "retry".to_owned())]
    );
    assert_eq!(page["next_cursor"], "4");
    let all = attempts(&app, &id).await;
    assert_eq!(
        all.iter()
            .map(|a| a["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );

    // Another tenant's delivery is as unknown as a missing one.
    let (_, key_b) = app.create_tenant("globex").await;
    let missing = uuid::Uuid::now_v7().to_string();
    for (key, delivery) in [(&key_b, &id), (&app.api_key, &missing)] {
        let resp = app
            .with_key(
                key,
                Method::GET,
                &format!("/api/v1/deliveries/{delivery}/attempts"),
            )
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    let bad_id = app
        .req(Method::GET, "/api/v1/deliveries/x/attempts")
        .send()
        .await
        .unwrap();
    expect_error(bad_id, StatusCode::BAD_REQUEST, "invalid_id").await;
    let bad_cursor = app
        .req(
            Method::GET,
            &format!("/api/v1/deliveries/{id}/attempts?cursor=x"),
        )
        .send()
        .await
        .unwrap();
    expect_error(bad_cursor, StatusCode::BAD_REQUEST, "invalid_query").await;
    let no_key = app
        .anon(Method::GET, &format!("/api/v1/deliveries/{id}/attempts"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
}

/// Rows of the attempt log, all tenants, read past the API.
async fn attempt_rows(store: &Store) -> i64 {
    const SQL: &str = "SELECT COUNT(*) FROM delivery_attempts";
    match store {
        Store::Sqlite { reader, .. } => sqlx::query_scalar(SQL).fetch_one(reader).await,
        Store::Postgres(pool, _) => sqlx::query_scalar(SQL).fetch_one(pool).await,
    }
    .expect("count attempts")
}

async fn pruning_removes_the_attempts(backend: Backend) {
    let app = fast_app(backend).await;
    let sink = Sink::start().await;
    sink.script([Reply::status(500)]);
    let (_, conv) = webhook_conversation(&app, &sink.url).await;
    let (_, pruned) = post(&app, &conv, "old").await;
    settled(&app, &pruned, "delivered").await;
    // A failed delivery is kept, and its attempts with it.
    sink.always(Reply::status(400));
    let (_, kept) = post(&app, &conv, "failing").await;
    settled(&app, &kept, "failed").await;
    assert_eq!(attempts(&app, &pruned).await.len(), 2);
    assert_eq!(attempt_rows(&app.store).await, 3);

    let future = Timestamp::now().plus(Duration::from_secs(60));
    assert_eq!(app.store.prune_delivered(future, 100).await.unwrap(), 1);
    assert_eq!(attempt_rows(&app.store).await, 1);
    let gone = app
        .req(
            Method::GET,
            &format!("/api/v1/deliveries/{pruned}/attempts"),
        )
        .send()
        .await
        .unwrap();
    expect_error(gone, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        summary(&attempts(&app, &kept).await),
        [(1, "failed".to_owned())]
    );
}

async fn retry(app: &TestApp, id: &str) -> reqwest::Response {
    app.req(Method::POST, &format!("/api/v1/deliveries/{id}/retry"))
        .send()
        .await
        .unwrap()
}

async fn retry_now_delivers_a_delivery_waiting_in_backoff(backend: Backend) {
    // The real schedule, and a receiver asking for an hour's pause: without a retry by
    // hand the second attempt is an hour away.
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    sink.script([Reply::status(503)
        .header("retry-after", "3600")
        .body("maintenance")]);
    let (_, conv) = webhook_conversation(&app, &format!("{}/hook", sink.url)).await;
    let (_, id) = post(&app, &conv, "wait for me").await;
    let waiting = eventually(WAIT, "the first attempt to be recorded", || async {
        let d = delivery(&app, &id).await;
        (d["attempts"] == 1).then_some(d)
    })
    .await;
    assert_eq!(waiting["status"], "pending");
    let next: chrono::DateTime<chrono::Utc> = s(&waiting, "next_attempt_at").parse().unwrap();
    assert!(
        next > chrono::Utc::now() + chrono::Duration::minutes(50),
        "{waiting}"
    );

    // The receiver is fixed; the operator does not wait for the hour.
    let retried = expect_data(retry(&app, &id).await, StatusCode::OK).await;
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attempts"], 1);
    let delivered = settled(&app, &id, "delivered").await;
    assert_eq!(delivered["attempts"], 2);
    assert_eq!(sink.received().len(), 2);
    let log = attempts(&app, &id).await;
    assert_eq!(
        summary(&log),
        [(1, "retry".to_owned()), (2, "delivered".to_owned())]
    );
    assert_eq!(log[0]["response_body"], "maintenance");
    // Delivered, it cannot be retried.
    expect_error(
        retry(&app, &id).await,
        StatusCode::CONFLICT,
        "delivery_not_failed",
    )
    .await;
}

async fn a_retry_grants_a_new_budget_and_numbering_goes_on(backend: Backend) {
    let app = fast_app(backend).await;
    let sink = Sink::start().await;
    sink.always(Reply::status(500));
    let (_, conv) = webhook_conversation(&app, &sink.url).await;
    let (_, id) = post(&app, &conv, "stubborn").await;
    settled(&app, &id, "failed").await;

    let retried = expect_data(retry(&app, &id).await, StatusCode::OK).await;
    assert_eq!(retried["attempts"], 5);
    // Five more attempts, numbered 6 to 10, before it fails again.
    let failed = eventually(WAIT, "the second budget to be spent", || async {
        let d = delivery(&app, &id).await;
        (d["status"] == "failed" && d["attempts"] == 10).then_some(d)
    })
    .await;
    assert!(
        s(&failed, "last_error").contains("gave up after 5 attempts"),
        "{failed}"
    );
    let outcomes: Vec<(i64, String)> = (1..=10)
        .map(|n| (n, if n % 5 == 0 { "failed" } else { "retry" }.to_owned()))
        .collect();
    assert_eq!(summary(&attempts(&app, &id).await), outcomes);
    assert_eq!(sink.received().len(), 10);
}

/// The creation time of an activity, as the API reports it.
fn created(activity: &Value) -> String {
    s(activity, "inserted_at").to_owned()
}

async fn replay(app: &TestApp, key: &str, channel: &str, body: Value) -> reqwest::Response {
    app.with_key(
        key,
        Method::POST,
        &format!("/api/v1/channels/{channel}/deliveries/retry"),
    )
    .json(&body)
    .send()
    .await
    .unwrap()
}

async fn replay_requeues_failed_deliveries_in_order(backend: Backend) {
    let app = fast_app(backend).await;
    let sink = Sink::start().await;
    // Every attempt is refused for good until the receiver is fixed.
    sink.always(Reply::status(400).body("not yet"));
    let channel = app
        .create_channel("webhook", json!({"url": format!("{}/hook", sink.url)}))
        .await;
    let channel = s(&channel, "id").to_owned();
    let a = s(&app.create_conversation(&channel, None).await, "id").to_owned();
    let b = s(&app.create_conversation(&channel, None).await, "id").to_owned();

    // Before the window, in it (two per conversation), after it.
    let (_, a1) = post(&app, &a, "a1").await;
    let (first_in, a2) = post(&app, &a, "a2").await;
    let (_, b1) = post(&app, &b, "b1").await;
    let (_, a3) = post(&app, &a, "a3").await;
    let (_, b2) = post(&app, &b, "b2").await;
    let (first_after, a4) = post(&app, &a, "a4").await;
    for id in [&a1, &a2, &b1, &a3, &b2, &a4] {
        settled(&app, id, "failed").await;
    }
    let refused = sink.received().len();
    assert_eq!(refused, 6);

    sink.always(Reply::status(200));
    let window = json!({"since": created(&first_in), "until": created(&first_after)});
    let answer = expect_data(
        replay(&app, &app.api_key, &channel, window.clone()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer, json!({"requeued": 4}));
    for id in [&a2, &b1, &a3, &b2] {
        let d = settled(&app, id, "delivered").await;
        assert_eq!(d["attempts"], 2, "{d}");
        assert_eq!(
            summary(&attempts(&app, id).await),
            [(1, "failed".to_owned()), (2, "delivered".to_owned())]
        );
    }
    for id in [&a1, &a4] {
        assert_eq!(delivery(&app, id).await["status"], "failed");
    }
    // Each conversation's deliveries went out in order.
    let replayed: Vec<(String, String)> = sink.received()[refused..]
        .iter()
        .map(|r| {
            let body = r.json();
            (
                s(&body, "conversation_id").to_owned(),
                s(&body, "text").to_owned(),
            )
        })
        .collect();
    assert_eq!(replayed.len(), 4);
    let of = |conv: &str| -> Vec<&str> {
        replayed
            .iter()
            .filter(|(c, _)| c == conv)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    assert_eq!(of(&a), ["a2", "a3"]);
    assert_eq!(of(&b), ["b1", "b2"]);

    // Nothing failed is left in the window; without `until` the rest is taken.
    let again = replay(&app, &app.api_key, &channel, window).await;
    assert_eq!(expect_data(again, StatusCode::OK).await["requeued"], 0);
    let rest = replay(
        &app,
        &app.api_key,
        &channel,
        json!({"since": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(expect_data(rest, StatusCode::OK).await["requeued"], 2);
    for id in [&a1, &a4] {
        settled(&app, id, "delivered").await;
    }
}

async fn replay_input_is_checked_and_scoped(backend: Backend) {
    let app = fast_app(backend).await;
    let channel = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    let channel = s(&channel, "id").to_owned();
    for (body, field) in [
        (
            json!({"since": "2026-12-03T10:00:00Z", "until": "2026-12-03T10:00:00Z"}),
            "until",
        ),
        (
            json!({"since": "2026-12-03T10:00:00Z", "until": "2026-12-03T09:00:00Z"}),
            "until",
        ),
        (json!({"since": "yesterday"}), "since"),
        (json!({"until": "2026-12-03T10:00:00Z"}), "body"),
        (
            json!({"since": "2026-12-03T10:00:00Z", "limit": 5}),
            "limit",
        ),
    ] {
        let err = expect_error(
            replay(&app, &app.api_key, &channel, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        let named = err["details"]["fields"][0]["field"].as_str().unwrap();
        assert!(named.starts_with(field), "{body}: {err}");
    }
    let not_json = app
        .req(
            Method::POST,
            &format!("/api/v1/channels/{channel}/deliveries/retry"),
        )
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    expect_error(not_json, StatusCode::BAD_REQUEST, "invalid_json").await;

    // Another tenant's channel is as unknown as a missing one.
    let (_, key_b) = app.create_tenant("globex").await;
    let window = json!({"since": "2000-01-01T00:00:00Z"});
    let missing = uuid::Uuid::now_v7().to_string();
    for (key, id) in [(&key_b, &channel), (&app.api_key, &missing)] {
        expect_error(
            replay(&app, key, id, window.clone()).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    expect_error(
        replay(&app, &app.api_key, "x", window.clone()).await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;
    let answer = replay(&app, &app.api_key, &channel, window).await;
    assert_eq!(expect_data(answer, StatusCode::OK).await["requeued"], 0);
}

/// The store alone, on a server whose workers are off: a batch of outcomes logs one
/// row per outcome written, numbered by the delivery's attempts, and nothing for an
/// outcome whose lease was lost.
async fn outcomes_of_lost_leases_log_nothing(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_enabled = false).await;
    let (_, one) = webhook_conversation(&app, "http://127.0.0.1:9/").await;
    let channel = app
        .create_channel("webhook", json!({"url": "http://127.0.0.1:9/"}))
        .await;
    let two = s(
        &app.create_conversation(s(&channel, "id"), None).await,
        "id",
    )
    .to_owned();
    let (_, first) = post(&app, &one, "first").await;
    let (_, second) = post(&app, &two, "second").await;
    let now = Timestamp::now();
    let lease = now.plus(Duration::from_secs(60));
    let claimed = app
        .store
        .claim_due(converger::domain::NodeId::new(), now, lease, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let log = |status: Option<i32>| AttemptLog {
        started_at: now,
        duration_ms: 12,
        http_status: status,
        response_body: status.map(|s| format!("answer {s}")),
        node: "node-a:1".into(),
    };
    let completion = |i: usize, lease: Timestamp, result: AttemptResult, status| Completion {
        delivery: claimed[i].delivery.clone(),
        lease,
        now: Timestamp::now(),
        result,
        log: log(status),
    };
    let retry = AttemptResult::RetryAt {
        at: Timestamp::now(),
        error: "HTTP 502".into(),
    };
    // A lease that is not the row's: nothing written, nothing logged.
    let stale = lease.plus(Duration::from_secs(1));
    let written = app
        .store
        .record_attempts(&[
            completion(0, stale, retry.clone(), Some(502)),
            completion(1, stale, retry.clone(), Some(502)),
        ])
        .await
        .unwrap();
    assert_eq!(written, [false, false]);
    assert_eq!(attempt_rows(&app.store).await, 0);
    // With the lease, both are logged in one batch.
    let written = app
        .store
        .record_attempts(&[
            completion(0, lease, retry.clone(), Some(502)),
            completion(
                1,
                lease,
                AttemptResult::Failed {
                    error: "connection failed: refused".into(),
                },
                None,
            ),
        ])
        .await
        .unwrap();
    assert_eq!(written, [true, true]);
    assert_eq!(attempt_rows(&app.store).await, 2);
    let by_id = |id: &str| {
        claimed
            .iter()
            .position(|c| c.delivery.id.to_string() == id)
            .unwrap()
    };
    let (first_log, second_log) = (attempts(&app, &first).await, attempts(&app, &second).await);
    let (retried, failed) = if by_id(&first) == 0 {
        (first_log, second_log)
    } else {
        (second_log, first_log)
    };
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["attempt"], 1);
    assert_eq!(retried[0]["outcome"], "retry");
    assert_eq!(retried[0]["http_status"], 502);
    assert_eq!(retried[0]["response_body"], "answer 502");
    assert_eq!(retried[0]["error"], "HTTP 502");
    assert_eq!(retried[0]["duration_ms"], 12);
    assert_eq!(retried[0]["node"], "node-a:1");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["outcome"], "failed");
    assert_eq!(failed[0]["http_status"], Value::Null);
    assert_eq!(failed[0]["error"], "connection failed: refused");
}
