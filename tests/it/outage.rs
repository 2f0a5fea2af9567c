//! The database going away under a running node, cut off by a proxy: requests are
//! refused fast with `503 store_unavailable` (never a 500), `/ready` says so, no
//! delivery attempt is used up by the outage, and nothing is lost or delivered twice
//! once the database is back.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::node::Node;
use crate::common::proxy::Proxy;
use crate::common::sink::{Reply, Sink};
use crate::common::{Backend, TestDb, eventually, expect_data, postgres_only};

postgres_only!(a_database_outage_is_refused_fast_and_costs_no_attempt);

async fn a_database_outage_is_refused_fast_and_costs_no_attempt(backend: Backend) {
    let (_db, url, store, key) = TestDb::with_tenant(backend).await;
    let mut proxied = url::Url::parse(&url).unwrap();
    let upstream = tokio::net::lookup_host(format!(
        "{}:{}",
        proxied.host_str().unwrap(),
        proxied.port().unwrap_or(5432)
    ))
    .await
    .unwrap()
    .next()
    .unwrap();
    let proxy = Proxy::start(upstream).await;
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.addr.port())).unwrap();

    let sink = Sink::start().await;
    // Long enough for the attempts in flight to end while the database is away.
    sink.always(Reply::status(200).delay(Duration::from_secs(2)));
    let log = tempfile::NamedTempFile::new().unwrap();
    let node = Node::start_with(
        proxied.as_str(),
        &[("CONVERGER_DELIVERY_LEASE_SECS", "90")],
        Stdio::from(log.reopen().unwrap()),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    node.ready(&http).await;
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", node.base))
            .header("x-api-key", &key)
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
    // Five conversations of two activities: the first of each is in flight at the cut,
    // the second waits behind it.
    let mut conversations = Vec::new();
    for _ in 0..5 {
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
        let id = conv["id"].as_str().unwrap().to_owned();
        for n in 0..2 {
            expect_data(
                post(
                    &format!("/api/v1/conversations/{id}/activities"),
                    json!({"text": format!("message {n}")}),
                )
                .await
                .unwrap(),
                StatusCode::CREATED,
            )
            .await;
        }
        conversations.push(id);
    }
    sink.wait_for(5, Duration::from_secs(30)).await;

    proxy.cut();
    // `/ready` notices within a probe, and answers within about a second.
    eventually(Duration::from_secs(15), "/ready to answer 503", || async {
        let r = http
            .get(format!("{}/ready", node.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    // Known down: every request that needs the database is refused, retryably.
    for _ in 0..10 {
        let r = post(
            &format!("/api/v1/conversations/{}/activities", conversations[0]),
            json!({"text": "during the outage"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    }
    let r = http
        .get(format!("{}/api/v1/channels", node.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The attempts in flight end now, with the database away: their outcomes wait.
    tokio::time::sleep(Duration::from_secs(3)).await;

    proxy.restore();
    node.ready(&http).await;
    eventually(Duration::from_secs(60), "all ten delivered", || async {
        let (delivered,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'")
                .fetch_one(store.pg_pool().unwrap())
                .await
                .unwrap();
        (delivered == 10).then_some(())
    })
    .await;
    // No attempt was counted for the outage, and none was made twice: the outcomes
    // of the attempts that ended during it were written once it was back.
    let attempts: Vec<(i32,)> = sqlx::query_as("SELECT attempts FROM deliveries")
        .fetch_all(store.pg_pool().unwrap())
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|&(n,)| n == 1),
        "attempts per delivery: {attempts:?}"
    );
    let mut per_webhook: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        *per_webhook
            .entry(r.header("webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_webhook.len(), 10);
    assert!(
        per_webhook.values().all(|&n| n == 1),
        "deliveries made twice: {per_webhook:?}"
    );
    // Writes work again.
    let r = post(
        &format!("/api/v1/conversations/{}/activities", conversations[0]),
        json!({"text": "after the outage"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // The outage was logged once, not once per refused request nor per look at the
    // queue of operational events. The node is stopped first, so its log is all
    // written.
    let mut node = node;
    node.terminate();
    node.exited(Duration::from_secs(30)).await;
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(
        logged.matches("the database is unreachable").count(),
        1,
        "{logged}"
    );
    assert!(!logged.contains("response failed"), "{logged}");
    assert!(!logged.contains("operational event"), "{logged}");
    store.close().await;
}
