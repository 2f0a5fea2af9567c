//! Concurrency: gap-free `seq` and exactly-once idempotency under parallel writers.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, s};

both_backends!(
    concurrent_posts_get_consecutive_seqs,
    concurrent_replays_create_one_activity
);

async fn concurrent_posts_get_consecutive_seqs(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let id = s(&conv, "id");
    let posts = (0..50).map(|n| {
        let app = &app;
        async move {
            let resp = app
                .post_activity(id, json!({"text": format!("m{n}")}))
                .await;
            assert_eq!(resp.status(), StatusCode::CREATED);
            resp.json::<Value>().await.unwrap()["data"]["seq"]
                .as_i64()
                .unwrap()
        }
    });
    let mut seqs = futures_util::future::join_all(posts).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let stored: Vec<i64> = app
        .activities(id)
        .await
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(stored, (1..=50).collect::<Vec<_>>());
}

async fn concurrent_replays_create_one_activity(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let id = s(&conv, "id");
    let posts = (0..20).map(|_| {
        let app = &app;
        async move {
            let resp = app
                .post_activity(id, json!({"text": "once", "idempotency_key": "same"}))
                .await;
            let status = resp.status();
            (
                status,
                resp.json::<Value>().await.unwrap()["data"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        }
    });
    let results = futures_util::future::join_all(posts).await;
    let created = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::CREATED)
        .count();
    let replayed = results
        .iter()
        .filter(|(st, _)| *st == StatusCode::OK)
        .count();
    assert_eq!((created, replayed), (1, 19));
    let ids: HashSet<_> = results.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 1);
    let stored = app.activities(id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["seq"], 1);
}
