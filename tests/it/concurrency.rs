//! Concurrency: gap-free `seq` and exactly-once idempotency under parallel writers.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, s};

both_backends!(
    concurrent_posts_get_consecutive_seqs,
    concurrent_replays_create_one_activity,
    a_refused_append_fails_alone,
    appends_to_a_closed_conversation_write_nothing,
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

/// Appends committed together (SQLite's writer batches whatever queued) fail alone: an
/// append that the database refuses does not take the others with it, and the others
/// still get consecutive `seq`s.
async fn a_refused_append_fails_alone(backend: Backend) {
    use converger::domain::{ChannelId, ConversationId};
    use converger::store::{AppendOutcome, StoreError, test_support};

    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let conversation_id: ConversationId = s(&conv, "id").parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40 {
        // Every tenth names a channel that does not exist: a foreign key refuses it.
        let targets = if n % 10 == 5 {
            vec![ChannelId::new()]
        } else {
            vec![]
        };
        let store = app.store.clone();
        let append = app.append_of(conversation_id, &format!("m{n}"), None, targets);
        // Below ingest, which would never name a missing channel.
        tasks.spawn(async move { (n, test_support::append_activity(&store, &append).await) });
    }
    let mut created = 0;
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            (n, Ok(AppendOutcome::Created { .. })) => {
                assert_ne!(n % 10, 5, "m{n} was refused by nothing");
                created += 1;
            }
            (n, Err(StoreError::Conflict { constraint })) => {
                assert_eq!(n % 10, 5, "m{n} refused: {constraint}");
            }
            (n, other) => panic!("m{n}: {other:?}"),
        }
    }
    assert_eq!(created, 36);
    let seqs: Vec<i64> = app
        .activities(s(&conv, "id"))
        .await
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=36).collect::<Vec<_>>());
}

/// The store itself refuses appends to a closed conversation, whatever path an append
/// takes (with or without key and delivery rows), and writes nothing: the check in
/// ingest may have passed a moment before the close.
async fn appends_to_a_closed_conversation_write_nothing(backend: Backend) {
    use converger::domain::ConversationId;
    use converger::store::{AppendOutcome, test_support};

    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let other = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let id = s(&conv, "id");
    app.post(id, "before").await;
    let resp = app
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/conversations/{id}/close"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let conversation_id: ConversationId = id.parse().unwrap();
    for (key, targets) in [
        (None, vec![]),
        (Some("k1"), vec![]),
        (None, vec![s(&other, "id").parse().unwrap()]),
    ] {
        let append = app.append_of(conversation_id, "after", key, targets);
        // Below ingest, as if its check had passed just before the close.
        let outcome = test_support::append_activity(&app.store, &append)
            .await
            .unwrap();
        assert!(
            matches!(outcome, AppendOutcome::NotActive),
            "{key:?}: {outcome:?}"
        );
    }
    // The message and the close's conversationUpdate; nothing after.
    let stored = app.activities(id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1]["type"], "conversationUpdate");
    let read = app
        .req(reqwest::Method::GET, &format!("/api/v1/conversations/{id}"))
        .send()
        .await
        .unwrap();
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["data"]["last_seq"], 2, "{read}");
}
