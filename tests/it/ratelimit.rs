//! Per-channel outbound rate limits (`rate_limit` in a channel's config), held by one
//! node and by two nodes sharing one database, counted at a recording sink; and a
//! receiver's `429` with `Retry-After` holding back its whole channel.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::node::Node;
use crate::common::sink::{Received, Reply, Sink};
use crate::common::{
    Backend, TestApp, TestDb, both_backends, eventually, expect_data, postgres_only, s,
};

both_backends!(
    one_node_keeps_a_channel_within_its_rate_limit,
    retry_after_holds_back_the_whole_channel
);
postgres_only!(
    two_nodes_share_a_channels_rate_limit,
    an_api_only_node_takes_no_share
);

/// The most arrivals within any `window`.
fn busiest(arrivals: &[Instant], window: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    let mut most = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

fn arrivals(received: &[Received]) -> Vec<Instant> {
    received.iter().map(|r| r.at).collect()
}

/// Posts `n` activities to a new conversation of `channel`, through `base` with `key`.
async fn post_many(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    channel: &str,
    n: usize,
) -> Vec<String> {
    let conv = expect_data(
        http.post(format!("{base}/api/v1/conversations"))
            .header("x-api-key", key)
            .json(&json!({"channel_id": channel}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..n {
        let activity = expect_data(
            http.post(format!(
                "{base}/api/v1/conversations/{}/activities",
                s(&conv, "id")
            ))
            .header("x-api-key", key)
            .json(&json!({"text": format!("message {i}")}))
            .send()
            .await
            .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        ids.push(s(&activity, "id").to_owned());
    }
    ids
}

/// An unordered webhook channel to `sink` limited to 4/s, created through `base`.
async fn limited_channel(http: &reqwest::Client, base: &str, key: &str, sink: &Sink) -> Value {
    expect_data(
        http.post(format!("{base}/api/v1/channels"))
            .header("x-api-key", key)
            .json(&json!({"name": "limited", "type": "webhook",
                "config": {"url": sink.url, "ordering": "none", "rate_limit": "4/s"}}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await
}

/// Every delivery of `channel` was delivered in one attempt: a delivery held back by
/// the limit used none up. Waits for the outcomes to be recorded first: a sink sees
/// a request before its node records the answer.
async fn all_delivered_once(app_store: &converger::store::Store, count: usize) {
    let read = || async {
        let sql = "SELECT status, attempts FROM deliveries";
        let rows: Vec<(String, i32)> = match app_store {
            converger::store::Store::Postgres(pool, _) => {
                sqlx::query_as(sql).fetch_all(pool).await.unwrap()
            }
            converger::store::Store::Sqlite { reader, .. } => {
                sqlx::query_as(sql).fetch_all(reader).await.unwrap()
            }
        };
        rows
    };
    let rows = eventually(
        Duration::from_secs(10),
        "every outcome recorded",
        || async {
            let rows = read().await;
            rows.iter()
                .all(|(status, _)| status != "pending")
                .then_some(rows)
        },
    )
    .await;
    assert_eq!(rows.len(), count);
    assert!(
        rows.iter()
            .all(|(status, attempts)| status == "delivered" && *attempts == 1),
        "{rows:?}"
    );
}

async fn one_node_keeps_a_channel_within_its_rate_limit(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    // Unordered, so every delivery is due at once and only the limit spaces them.
    let channel = app
        .create_channel(
            "webhook",
            json!({"url": sink.url, "ordering": "none", "rate_limit": "5/s"}),
        )
        .await;
    assert_eq!(channel["config"]["rate_limit"], "5/s");
    post_many(&app.http, &app.base, &app.api_key, s(&channel, "id"), 15).await;
    let received = sink.wait_for(15, Duration::from_secs(30)).await;
    let at = arrivals(&received);
    // One slot every 200 ms: at most 5 in any second (one more for timer jitter at
    // the window's edges), and 15 need at least 2.8 s.
    let most = busiest(&at, Duration::from_secs(1));
    assert!(most <= 6, "{most} deliveries within one second");
    let span = *at.iter().max().unwrap() - *at.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(2_400),
        "15 deliveries in {span:?}"
    );
    eventually(
        Duration::from_secs(10),
        "every outcome recorded",
        || async {
            let r = app
                .req(reqwest::Method::GET, "/api/v1/deliveries?status=delivered")
                .send()
                .await
                .ok()?;
            let body: Value = r.json().await.ok()?;
            (body["data"].as_array()?.len() == 15).then_some(())
        },
    )
    .await;
    all_delivered_once(&app.store, 15).await;

    // Bad limits are refused, naming the field.
    let r = app
        .req(reqwest::Method::POST, "/api/v1/channels")
        .json(&json!({"name": "x", "type": "webhook", "config": {"url": sink.url, "rate_limit": "fast"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["details"]["fields"][0]["field"], "config.rate_limit",
        "{body}"
    );
}

async fn retry_after_holds_back_the_whole_channel(backend: Backend) {
    let app = TestApp::start(backend).await;
    let sink = Sink::start().await;
    // The first delivery is answered 429 with Retry-After: 3; the rest 200 at once.
    sink.script([Reply::status(429).header("retry-after", "3")]);
    let channel = app
        .create_channel("webhook", json!({"url": sink.url, "ordering": "none"}))
        .await;
    post_many(&app.http, &app.base, &app.api_key, s(&channel, "id"), 1).await;
    let first = sink.wait_for(1, Duration::from_secs(30)).await[0].at;
    // Posted after the 429: without the channel-wide pause they would go at once.
    post_many(&app.http, &app.base, &app.api_key, s(&channel, "id"), 3).await;
    // The 429'd delivery itself comes back on the retry schedule, 30 s after the 429.
    let received = sink.wait_for(5, Duration::from_secs(60)).await;
    for r in &received[1..] {
        assert!(
            r.at - first >= Duration::from_millis(2_500),
            "a delivery went {:?} after the 429 that asked for 3 s",
            r.at - first
        );
    }
}

async fn two_nodes_share_a_channels_rate_limit(backend: Backend) {
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::new();
    let sink = Sink::start().await;
    let env = [("CONVERGER_NODE_HEARTBEAT_SECS", "1")];
    let first = Node::start_with(&url, &env, Stdio::null());
    let second = Node::start_with(&url, &env, Stdio::null());
    first.ready(&http).await;
    second.ready(&http).await;
    // Both nodes count each other before the first delivery.
    eventually(Duration::from_secs(10), "both nodes registered", || async {
        let since = converger::domain::Timestamp::now().minus(Duration::from_secs(3));
        (store.live_nodes(since).await.ok()?.len() == 2).then_some(())
    })
    .await;
    // Each node counts two live nodes, and so takes half of each limit.
    for node in [&first, &second] {
        eventually(
            Duration::from_secs(10),
            "each node to count two live nodes",
            || async {
                let text = http
                    .get(format!("{}/metrics", node.base))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                text.lines()
                    .any(|l| l == "converger_nodes_live 2")
                    .then_some(())
            },
        )
        .await;
    }
    let channel = limited_channel(&http, &first.base, &key, &sink).await;
    post_many(&http, &first.base, &key, s(&channel, "id"), 8).await;
    post_many(&http, &second.base, &key, s(&channel, "id"), 8).await;
    let received = sink.wait_for(16, Duration::from_secs(60)).await;
    let at = arrivals(&received);
    // 4/s over both nodes: each sends one every 500 ms. At most 4 in any second, two
    // more for the nodes' slots falling at the window's edges; 16 take at least 3 s.
    let most = busiest(&at, Duration::from_secs(1));
    assert!(
        most <= 6,
        "{most} deliveries within one second over two nodes"
    );
    let span = *at.iter().max().unwrap() - *at.iter().min().unwrap();
    assert!(span >= Duration::from_secs(3), "16 deliveries in {span:?}");
    // Both nodes delivered: the limit was shared, not held by one.
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *per_id.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 16);
    all_delivered_once(&store, 16).await;
    drop((first, second));
    store.close().await;
}

/// A node that runs no delivery workers counts as live but takes no share of a
/// limit: the delivering node alone uses all of it.
async fn an_api_only_node_takes_no_share(backend: Backend) {
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let http = reqwest::Client::new();
    let sink = Sink::start().await;
    let beat = ("CONVERGER_NODE_HEARTBEAT_SECS", "1");
    let worker = Node::start_with(&url, &[beat], Stdio::null());
    let api = Node::start_with(
        &url,
        &[beat, ("CONVERGER_DELIVERY_ENABLED", "false")],
        Stdio::null(),
    );
    worker.ready(&http).await;
    api.ready(&http).await;
    eventually(
        Duration::from_secs(10),
        "the worker to count two live nodes, one delivering",
        || async {
            let text = http
                .get(format!("{}/metrics", worker.base))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let has = |line: &str| text.lines().any(|l| l == line);
            (has("converger_nodes_live 2") && has("converger_nodes_delivering 1")).then_some(())
        },
    )
    .await;
    let channel = limited_channel(&http, &api.base, &key, &sink).await;
    post_many(&http, &api.base, &key, s(&channel, "id"), 12).await;
    let received = sink.wait_for(12, Duration::from_secs(60)).await;
    let mut at = arrivals(&received);
    at.sort();
    // 4/s from one node: one every 250 ms, never faster. Had the API node taken half
    // the limit, no two would come closer than 500 ms.
    let mut gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    assert!(
        busiest(&at, Duration::from_secs(1)) <= 5,
        "more than 4/s: {gaps:?}"
    );
    assert!(
        gaps[gaps.len() / 2] < Duration::from_millis(450),
        "the delivering node used half the limit: {gaps:?}"
    );
    all_delivered_once(&store, 12).await;
    drop((worker, api));
    store.close().await;
}
