//! The tenant's deliveries: listing by status and channel, keyset pages, and the
//! operator's retry of a failed delivery, or of a pending one now (docs/design.md#delivery, docs/design.md#api).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestApp, both_backends, eventually, expect_data, expect_error, s};

both_backends!(
    list_filters_by_status_and_channel,
    list_is_paginated_newest_first,
    only_failed_and_idle_pending_deliveries_are_retried,
    a_retried_delivery_is_delivered_again,
);

/// A webhook target nobody listens on: the worker's attempts fail as retryable, 30 s
/// apart, so the rows stay `pending` for the length of a test.
const UNROUTABLE: &str = "http://127.0.0.1:9/";

/// A conversation on a new webhook channel to `url`; returns (channel id, conversation id).
async fn webhook_conversation(app: &TestApp, url: &str) -> (String, String) {
    let ch = app.create_channel("webhook", json!({ "url": url })).await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    (s(&ch, "id").to_owned(), s(&conv, "id").to_owned())
}

/// Posts an outbound message, which the conversation's webhook channel delivers;
/// returns the id of its one delivery.
async fn delivered_message(app: &TestApp, conversation_id: &str, text: &str) -> String {
    let activity = expect_data(
        app.post_activity(conversation_id, json!({ "text": text }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let list = expect_data(
        app.req(
            Method::GET,
            &format!("/api/v1/activities/{}/deliveries", s(&activity, "id")),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    s(&list[0], "id").to_owned()
}

async fn list(app: &TestApp, key: &str, query: &str) -> Value {
    let resp = app
        .with_key(key, Method::GET, &format!("/api/v1/deliveries{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn list_ids(app: &TestApp, query: &str) -> Vec<String> {
    list(app, &app.api_key, query).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| s(d, "id").to_owned())
        .collect()
}

async fn retry(app: &TestApp, key: &str, delivery_id: &str) -> reqwest::Response {
    app.with_key(
        key,
        Method::POST,
        &format!("/api/v1/deliveries/{delivery_id}/retry"),
    )
    .send()
    .await
    .unwrap()
}

async fn list_filters_by_status_and_channel(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (one, conv_one) = webhook_conversation(&app, UNROUTABLE).await;
    let (two, conv_two) = webhook_conversation(&app, UNROUTABLE).await;
    let mut one_ids = Vec::new();
    for n in 0..3 {
        one_ids.push(delivered_message(&app, &conv_one, &format!("one {n}")).await);
    }
    let mut two_ids = Vec::new();
    for n in 0..2 {
        two_ids.push(delivered_message(&app, &conv_two, &format!("two {n}")).await);
    }
    app.set_delivery_status_direct(&one_ids[0], "failed").await;
    app.set_delivery_status_direct(&two_ids[1], "delivered")
        .await;

    // Newest first; every row of the tenant without filters.
    let all = list(&app, &app.api_key, "").await;
    assert_eq!(all["next_cursor"], Value::Null);
    let all = all["data"].as_array().unwrap();
    let ids: Vec<&str> = all.iter().map(|d| s(d, "id")).collect();
    let mut expected: Vec<&str> = one_ids.iter().chain(&two_ids).map(String::as_str).collect();
    expected.reverse();
    assert_eq!(ids, expected);
    assert!(
        all.iter()
            .all(|d| d["tenant_id"] == app.tenant_id.to_string())
    );
    assert!(all.iter().all(|d| d.get("locked_until").is_none()));

    assert_eq!(
        list_ids(&app, "?status=failed").await,
        [one_ids[0].as_str()]
    );
    assert_eq!(
        list_ids(&app, "?status=delivered").await,
        [two_ids[1].as_str()]
    );
    assert_eq!(
        list_ids(&app, "?status=pending").await,
        [
            two_ids[0].as_str(),
            one_ids[2].as_str(),
            one_ids[1].as_str()
        ]
    );
    assert_eq!(
        list_ids(&app, &format!("?channel_id={two}")).await,
        [two_ids[1].as_str(), two_ids[0].as_str()]
    );
    assert_eq!(
        list_ids(&app, &format!("?channel_id={one}&status=pending")).await,
        [one_ids[2].as_str(), one_ids[1].as_str()]
    );
    assert_eq!(
        list_ids(&app, &format!("?channel_id={one}&status=delivered")).await,
        Vec::<String>::new()
    );
    let failed = &list(&app, &app.api_key, "?status=failed").await["data"][0];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["last_error"], "boom");
    assert_eq!(failed["channel_id"], one.as_str());

    // Another tenant sees none of them, even filtering by our channel.
    let (_, key_b) = app.create_tenant("globex").await;
    for query in ["", "?status=failed", &format!("?channel_id={one}")] {
        assert_eq!(list(&app, &key_b, query).await["data"], json!([]));
    }

    // Unknown statuses and malformed ids are bad queries.
    for query in ["?status=lost", "?channel_id=x", "?cursor=x"] {
        let resp = app
            .req(Method::GET, &format!("/api/v1/deliveries{query}"))
            .send()
            .await
            .unwrap();
        expect_error(resp, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
}

async fn list_is_paginated_newest_first(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, conv) = webhook_conversation(&app, UNROUTABLE).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(delivered_message(&app, &conv, &format!("m{n}")).await);
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = list(&app, &app.api_key, &query).await;
        pages += 1;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|d| s(d, "id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(cursor, seen.last().unwrap());
                query = format!("?limit=2&cursor={cursor}");
            }
            None => break,
        }
        assert!(pages < 5, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // The cursor composes with filters.
    let page = list(
        &app,
        &app.api_key,
        &format!("?status=pending&limit=10&cursor={}", ids[1]),
    )
    .await;
    let rest: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| s(d, "id"))
        .collect();
    assert_eq!(
        rest,
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(page["next_cursor"], Value::Null);
}

async fn only_failed_and_idle_pending_deliveries_are_retried(backend: Backend) {
    // No workers: the test alone leases deliveries.
    let app = TestApp::start_with(backend, |c| c.delivery_enabled = false).await;
    let (_, conv) = webhook_conversation(&app, UNROUTABLE).await;
    let failed = delivered_message(&app, &conv, "to be failed").await;
    let pending = delivered_message(&app, &conv, "stays pending").await;
    let delivered = delivered_message(&app, &conv, "to be delivered").await;
    app.set_delivery_status_direct(&failed, "failed").await;
    app.set_delivery_status_direct(&delivered, "delivered")
        .await;

    // Other tenants' deliveries are as unknown as missing ones.
    let (_, key_b) = app.create_tenant("globex").await;
    expect_error(
        retry(&app, &key_b, &failed).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let missing = uuid::Uuid::now_v7().to_string();
    expect_error(
        retry(&app, &app.api_key, &missing).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        retry(&app, &app.api_key, "x").await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;

    // A delivered one has nothing to retry.
    let err = expect_error(
        retry(&app, &app.api_key, &delivered).await,
        StatusCode::CONFLICT,
        "delivery_not_failed",
    )
    .await;
    assert_eq!(err["details"]["status"], "delivered");

    // A pending one whose attempt is under way (leased) is left to that attempt.
    let now = converger::domain::Timestamp::now();
    let lease = now.plus(Duration::from_secs(60));
    let claimed = app
        .store
        .claim_due(converger::domain::NodeId::new(), now, lease, 10)
        .await
        .unwrap();
    let ids: Vec<String> = claimed.iter().map(|c| c.delivery.id.to_string()).collect();
    assert_eq!(ids, [pending.as_str()], "the head is the pending one");
    expect_error(
        retry(&app, &app.api_key, &pending).await,
        StatusCode::CONFLICT,
        "delivery_in_flight",
    )
    .await;
    app.store
        .release_delivery(claimed[0].delivery.id, lease)
        .await
        .unwrap();
    // Not leased, it is made due now, as often as asked.
    for _ in 0..2 {
        let retried = expect_data(retry(&app, &app.api_key, &pending).await, StatusCode::OK).await;
        assert_eq!(retried["status"], "pending");
        assert_eq!(retried["attempts"], 0);
        assert!(retried["next_attempt_at"].is_string());
    }

    // The failed one is queued again: pending, due now, its attempts counted on (the
    // budget starts again, the numbering does not), its error kept.
    let retried = expect_data(retry(&app, &app.api_key, &failed).await, StatusCode::OK).await;
    assert_eq!(retried["id"], failed.as_str());
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attempts"], 5);
    assert_eq!(retried["last_error"], "boom");
    assert!(retried["next_attempt_at"].is_string());
    assert_eq!(retried["delivered_at"], Value::Null);
    // It is first in line again, ahead of the later pending one.
    let now = converger::domain::Timestamp::now();
    let claimed = app
        .store
        .claim_due(
            converger::domain::NodeId::new(),
            now,
            now.plus(Duration::from_secs(60)),
            10,
        )
        .await
        .unwrap();
    let ids: Vec<String> = claimed.iter().map(|c| c.delivery.id.to_string()).collect();
    assert_eq!(ids, [failed.as_str()]);
    // The other rows were not touched.
    assert_eq!(
        list_ids(&app, "?status=delivered").await,
        [delivered.as_str()]
    );
}

async fn a_retried_delivery_is_delivered_again(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    // A 4xx other than 408/425/429 is permanent: the first attempt fails the delivery.
    sink.script([Reply::status(400).body("not yet")]);
    let (_, conv) = webhook_conversation(&app, &format!("{}/hook", sink.url)).await;
    let id = delivered_message(&app, &conv, "second chance").await;
    let state = |wanted: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            eventually(
                Duration::from_secs(20),
                &format!("delivery {wanted}"),
                || async {
                    let page = list(app, &app.api_key, &format!("?status={wanted}")).await;
                    page["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|d| d["id"] == id.as_str())
                        .cloned()
                },
            )
            .await
        }
    };
    let failed = state("failed").await;
    assert_eq!(failed["attempts"], 1);
    assert!(s(&failed, "last_error").contains("400"), "{failed}");

    let retried = expect_data(retry(&app, &app.api_key, &id).await, StatusCode::OK).await;
    assert_eq!(retried["status"], "pending");
    assert_eq!(
        retried["attempts"], 1,
        "attempts are counted on across retries"
    );
    // Due now, without a backoff wait; the sink accepts this time.
    let received = sink.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(
        received[1].header("webhook-id"),
        id,
        "same id across retries"
    );
    let delivered = state("delivered").await;
    assert_eq!(delivered["attempts"], 2);
    assert!(delivered["delivered_at"].is_string());
}
