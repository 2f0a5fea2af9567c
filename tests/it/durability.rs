//! Durability of delivery: nothing is lost when a node dies mid-flight, nodes sharing
//! a database never attempt one delivery at the same time, and pruning keeps what is
//! still owed.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::node::Node;
use crate::common::sink::{Reply, Sink};
use crate::common::{
    Backend, TestApp, TestDb, both_backends, eventually, expect_data, postgres_only, s,
};

both_backends!(
    killed_node_loses_no_delivery,
    prune_removes_only_fully_delivered_activities,
);

// One SQLite file serves one node: sharing a queue between nodes is PostgreSQL's.
postgres_only!(
    nodes_share_the_queue_without_double_attempts,
    a_surviving_node_takes_a_killed_nodes_leases_within_seconds,
);

async fn delivered_count(store: &converger::store::Store) -> i64 {
    store
        .count_deliveries_by_status()
        .await
        .unwrap()
        .into_iter()
        .find(|(status, _)| status == "delivered")
        .map_or(0, |(_, n)| n)
}

/// Creates `conversations × per_conversation` outbound activities on a webhook
/// channel pointing at `sink`, through the node at `base`; returns their ids.
async fn fill_queue(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    sink: &Sink,
    conversations: usize,
    per_conversation: usize,
) -> HashSet<String> {
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    let channel = expect_data(
        post(
            "/api/v1/channels",
            json!({"name": "sink", "type": "webhook", "config": {"url": sink.url}}),
        )
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let mut ids = HashSet::new();
    for _ in 0..conversations {
        let conv = expect_data(
            post(
                "/api/v1/conversations",
                json!({"channel_id": channel["id"]}),
            )
            .await
            .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        for n in 0..per_conversation {
            let a = expect_data(
                post(
                    &format!("/api/v1/conversations/{}/activities", s(&conv, "id")),
                    json!({"text": format!("m{n}")}),
                )
                .await
                .unwrap(),
                StatusCode::CREATED,
            )
            .await;
            ids.insert(s(&a, "id").to_owned());
        }
    }
    ids
}

/// SQLite has one node: restarted after `kill -9`, it takes its own leases back at
/// once instead of after `CONVERGER_DELIVERY_LEASE_SECS` (90 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sqlite_node_takes_its_leases_back_at_once() {
    let (_db, url, store, key) = TestDb::with_tenant(Backend::Sqlite).await;
    let http = reqwest::Client::new();
    let sink = Sink::start().await;
    // Slow enough that the kill lands while the first attempt waits on the receiver.
    sink.always(Reply::status(200).delay(Duration::from_secs(3)));

    // The default lease: a takeover by expiry would take 90 s.
    let lease = [("CONVERGER_DELIVERY_LEASE_SECS", "90")];
    let mut first = Node::start_with(&url, &lease, Stdio::null());
    first.ready(&http).await;
    // One conversation: everything queues behind its leased head.
    let ids = fill_queue(&http, &first.base, &key, &sink, 1, 3).await;
    sink.wait_for(1, Duration::from_secs(30)).await;
    first.kill();
    assert_eq!(delivered_count(&store).await, 0, "killed mid-attempt");

    let second = Node::start_with(&url, &lease, Stdio::null());
    second.ready(&http).await;
    // Far below the 90 s lease the killed run left on its head.
    sink.wait_for(2, Duration::from_secs(20)).await;
    eventually(
        Duration::from_secs(60),
        "every delivery to be delivered",
        || async { (delivered_count(&store).await == 3).then_some(()) },
    )
    .await;
    let received: HashSet<String> = sink
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, ids);
    drop(second);
    store.close().await;
}

/// PostgreSQL, two nodes: one is killed mid-attempt and not restarted. The other sees
/// its heartbeat stop and takes its leases over within a few heartbeats, not after
/// `CONVERGER_DELIVERY_LEASE_SECS` (90 s by default).
async fn a_surviving_node_takes_a_killed_nodes_leases_within_seconds(backend: Backend) {
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::new();
    let sink = Sink::start().await;
    // The first attempt waits on the receiver long enough for the kill to land in it
    // (and less than the attempt's 15 s timeout); the others are answered at once.
    sink.script([Reply::status(200).delay(Duration::from_secs(12))]);

    // The default lease and heartbeat: a takeover by expiry would take 90 s.
    let env = [
        ("CONVERGER_DELIVERY_LEASE_SECS", "90"),
        ("CONVERGER_NODE_HEARTBEAT_SECS", "2"),
    ];
    let mut doomed = Node::start_with(&url, &env, Stdio::null());
    doomed.ready(&http).await;
    // One conversation: the doomed node leases its head, and the rest waits behind
    // it, so the survivor started now has nothing it may deliver before the kill.
    let ids = fill_queue(&http, &doomed.base, &key, &sink, 1, 3).await;
    sink.wait_for(1, Duration::from_secs(30)).await;
    let survivor = Node::start_with(&url, &env, Stdio::null());
    survivor.ready(&http).await;
    let live = || async {
        store
            .live_nodes(converger::domain::Timestamp::now().minus(Duration::from_secs(6)))
            .await
            .expect("nodes")
    };
    eventually(
        Duration::from_secs(10),
        "both nodes to be registered",
        || async { (live().await.len() == 2).then_some(()) },
    )
    .await;
    doomed.kill();
    assert_eq!(delivered_count(&store).await, 0, "killed mid-attempt");

    // Three missed 2 s beats, one beat of the survivor to notice, the attempt: about
    // 10 s, where waiting for the lease the killed node left would take 90 s.
    sink.wait_for(2, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(60),
        "every delivery to be delivered",
        || async { (delivered_count(&store).await == 3).then_some(()) },
    )
    .await;
    let received: HashSet<String> = sink
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, ids);
    let left = live().await;
    assert_eq!(left.len(), 1, "the dead node left the registry: {left:?}");
    drop(survivor);
    store.close().await;
}

async fn killed_node_loses_no_delivery(backend: Backend) {
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::new();
    let sink = Sink::start().await;
    sink.always(Reply::status(200).delay(Duration::from_millis(100)));

    let mut first = Node::start(&url);
    first.ready(&http).await;
    let ids = fill_queue(&http, &first.base, &key, &sink, 20, 10).await;
    assert_eq!(ids.len(), 200);
    sink.wait_for(20, Duration::from_secs(30)).await;
    first.kill();
    let before_restart = delivered_count(&store).await;
    assert!(
        before_restart < 200,
        "the kill came too late to test anything"
    );

    // A new node (two, on PostgreSQL) takes over, including the dead node's leases.
    let second = Node::start(&url);
    let third = (backend == Backend::Postgres).then(|| Node::start(&url));
    second.ready(&http).await;
    if let Some(n) = &third {
        n.ready(&http).await;
    }
    eventually(
        Duration::from_secs(90),
        "every delivery to be delivered",
        || async { (delivered_count(&store).await == 200).then_some(()) },
    )
    .await;
    let received: HashSet<String> = sink
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, ids, "every activity reached the receiver");
    // Duplicates are possible (an attempt in flight at the kill), always with the
    // delivery's own webhook-id, so the receiver can drop them.
    let mut by_webhook_id: HashMap<String, HashSet<String>> = HashMap::new();
    for r in sink.received() {
        by_webhook_id
            .entry(r.header("webhook-id").to_owned())
            .or_default()
            .insert(r.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_webhook_id.len(), 200);
    assert!(
        by_webhook_id
            .values()
            .all(|activities| activities.len() == 1)
    );
    store.close().await;
}

async fn nodes_share_the_queue_without_double_attempts(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.delivery_lease_secs = 30).await;
    let other = Node::start(&app.database_url);
    other.ready(&app.http).await;
    let sink = Sink::start().await;
    sink.always(Reply::status(200).delay(Duration::from_millis(20)));
    let ids = fill_queue(&app.http, &app.base, &app.api_key, &sink, 40, 5).await;
    eventually(
        Duration::from_secs(60),
        "every delivery to be delivered",
        || async { (delivered_count(&app.store).await == 200).then_some(()) },
    )
    .await;
    let got = sink.received();
    let webhook_ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    let unique: HashSet<&str> = webhook_ids.iter().copied().collect();
    assert_eq!(
        webhook_ids.len(),
        unique.len(),
        "no delivery was attempted twice"
    );
    let received: HashSet<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, ids);
}

async fn prune_removes_only_fully_delivered_activities(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ok = Sink::start().await;
    let broken = Sink::start().await;
    broken.always(Reply::status(404));
    let good = app.create_channel("webhook", json!({"url": ok.url})).await;
    let bad = app
        .create_channel("webhook", json!({"url": broken.url}))
        .await;
    let quiet = app.websocket_channel().await;
    let good_conv = app.create_conversation(s(&good, "id"), None).await;
    let bad_conv = app.create_conversation(s(&bad, "id"), None).await;
    let quiet_conv = app.create_conversation(s(&quiet, "id"), None).await;
    for n in 0..3 {
        app.post_activity(s(&good_conv, "id"), json!({"text": format!("ok {n}")}))
            .await;
    }
    app.post_activity(s(&bad_conv, "id"), json!({"text": "fails"}))
        .await;
    app.post_activity(s(&quiet_conv, "id"), json!({"text": "history"}))
        .await;
    eventually(Duration::from_secs(20), "deliveries to settle", || async {
        let counts = app.store.count_deliveries_by_status().await.unwrap();
        (counts == [("delivered".to_owned(), 3), ("failed".to_owned(), 1)]).then_some(())
    })
    .await;

    // Nothing is old enough yet.
    let past = converger::domain::Timestamp::now().minus(Duration::from_secs(3600));
    assert_eq!(app.store.prune_delivered(past, 2).await.unwrap(), 0);
    // Everything is, in batches of 2.
    let future = converger::domain::Timestamp::now().plus(Duration::from_secs(1));
    assert_eq!(app.store.prune_delivered(future, 2).await.unwrap(), 3);
    assert!(app.activities(s(&good_conv, "id")).await.is_empty());
    assert_eq!(
        app.activities(s(&bad_conv, "id")).await.len(),
        1,
        "a failed delivery keeps its activity"
    );
    assert_eq!(
        app.activities(s(&quiet_conv, "id")).await.len(),
        1,
        "activities without deliveries are kept"
    );
    assert_eq!(
        app.store.count_deliveries_by_status().await.unwrap(),
        [("failed".to_owned(), 1)]
    );
    let resp = app
        .req(
            Method::GET,
            &format!("/api/v1/conversations/{}", s(&good_conv, "id")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(resp, StatusCode::OK).await["last_seq"],
        3,
        "seq keeps counting after pruning"
    );
}
