//! What an operator sees: `/metrics` counts what happened, and log lines carry request
//! ids but never a secret. Each test runs a `converger serve` process of its own, since
//! the metrics recorder is global to a process and the log output is the process's.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use converger::adapters::signing::converger_signature;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::node::Node;
use crate::common::sink::{Reply, Sink};
use crate::common::socket::topic;
use crate::common::{Backend, JWT_SECRET, TestApp, both_backends, eventually, expect_data, s};

both_backends!(
    metrics_count_what_happened,
    logs_carry_request_ids_and_no_secrets
);

/// One scrape of `/metrics`: every sample with its labels.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn of(http: &reqwest::Client, base: &str) -> Self {
        let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Self::parse(&resp.text().await.unwrap())
    }

    /// Parses the text exposition format (label values here never hold quotes).
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a value");
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value)
            })
            .collect();
        Scrape(samples)
    }

    /// The sum of the samples of `name` that have all of `labels`; 0 when none has.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Metric names, with histogram suffixes removed.
    fn names(&self) -> BTreeSet<String> {
        self.0
            .iter()
            .map(|(n, _, _)| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| n.strip_suffix(suffix))
                    .unwrap_or(n)
                    .to_owned()
            })
            .collect()
    }
}

/// A node on `app`'s database serving the test's requests in place of `app`, whose own
/// server then only stands by (its delivery workers off).
fn serve_on_node(app: &mut TestApp, env: &[(&str, &str)], stderr: Stdio) -> Node {
    let node = Node::start_with(&app.database_url, env, stderr);
    app.base.clone_from(&node.base);
    node
}

async fn in_process(backend: Backend) -> TestApp {
    TestApp::start_with(backend, |c| c.delivery_enabled = false).await
}

async fn metrics_count_what_happened(backend: Backend) {
    let mut app = in_process(backend).await;
    let standby = app.base.clone();
    let node = serve_on_node(
        &mut app,
        &[("CONVERGER_RATE_LIMIT_TOKENS_PER_TENANT_PER_MINUTE", "1")],
        Stdio::null(),
    );
    node.ready(&app.http).await;

    let ok = Sink::start().await;
    ok.always(Reply::status(200));
    let gone = Sink::start().await;
    gone.always(Reply::status(410));
    let to_ok = app.create_channel("webhook", json!({"url": ok.url})).await;
    let to_gone = app
        .create_channel("webhook", json!({"url": gone.url}))
        .await;
    let conv_ok = app.create_conversation(s(&to_ok, "id"), None).await;
    let conv_gone = app.create_conversation(s(&to_gone, "id"), None).await;
    let mut directions = BTreeMap::<String, f64>::new();
    for (conv, n) in [(&conv_ok, 3), (&conv_gone, 2)] {
        for i in 0..n {
            let resp = app
                .post_activity(s(conv, "id"), json!({"text": format!("m{i}")}))
                .await;
            let activity = expect_data(resp, StatusCode::CREATED).await;
            *directions
                .entry(s(&activity, "direction").to_owned())
                .or_default() += 1.0;
        }
    }
    let resp = app
        .post_activity(s(&conv_ok, "id"), json!({"type": "no_such_type"}))
        .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Token issuance with the API key allows one per minute and tenant here: the
    // second is refused.
    let token_request = || {
        app.req(Method::POST, "/api/v1/tokens")
            .json(&json!({"conversation_id": conv_ok["id"], "user_id": "u1"}))
            .send()
    };
    let token = expect_data(token_request().await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(
        token_request().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let mut socket =
        crate::common::socket::Socket::connect(&app.url(s(&token, "token"), Some("2.0.0"))).await;
    socket.join(&topic(s(&conv_ok, "id")), "1", json!({})).await;

    ok.wait_for(3, Duration::from_secs(30)).await;
    gone.wait_for(2, Duration::from_secs(30)).await;
    let scrape = eventually(
        Duration::from_secs(30),
        "every attempt recorded",
        || async {
            let scrape = Scrape::of(&app.http, &app.base).await;
            (scrape.value("converger_delivery_attempts_total", &[]) >= 5.0).then_some(scrape)
        },
    )
    .await;

    let activities_route = [
        ("method", "POST"),
        ("route", "/api/v1/conversations/{id}/activities"),
    ];
    let http = "converger_http_requests_total";
    assert_eq!(
        scrape.value(
            http,
            &[activities_route[0], activities_route[1], ("status", "201")]
        ),
        5.0
    );
    assert_eq!(
        scrape.value(
            http,
            &[activities_route[0], activities_route[1], ("status", "422")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            "converger_http_request_duration_seconds_count",
            &[activities_route[0], activities_route[1]]
        ),
        6.0
    );
    assert_eq!(
        scrape.value(http, &[("route", "/api/v1/tokens"), ("status", "429")]),
        1.0
    );
    assert_eq!(
        scrape.value(
            "converger_rate_limited_total",
            &[("scope", "tenant_tokens")]
        ),
        1.0
    );
    for (direction, n) in &directions {
        assert_eq!(
            scrape.value(
                "converger_activities_ingested_total",
                &[("channel_type", "webhook"), ("direction", direction)]
            ),
            *n,
            "{direction}"
        );
    }
    assert_eq!(
        scrape.value("converger_activities_ingested_total", &[]),
        5.0
    );
    let attempts = "converger_delivery_attempts_total";
    let webhook = ("adapter", "webhook");
    assert_eq!(
        scrape.value(attempts, &[webhook, ("outcome", "delivered")]),
        3.0
    );
    assert_eq!(
        scrape.value(attempts, &[webhook, ("outcome", "failed")]),
        2.0
    );
    assert_eq!(scrape.value(attempts, &[("outcome", "retry")]), 0.0);
    assert_eq!(
        scrape.value(
            "converger_delivery_attempt_duration_seconds_count",
            &[webhook, ("outcome", "delivered")]
        ),
        3.0
    );
    let depth = "converger_delivery_queue_depth";
    assert_eq!(scrape.value(depth, &[("state", "failed")]), 2.0);
    assert_eq!(scrape.value(depth, &[("state", "pending_due")]), 0.0);
    assert_eq!(scrape.value(depth, &[("state", "pending_scheduled")]), 0.0);
    assert_eq!(scrape.value(depth, &[("state", "pending_held")]), 0.0);
    // The receiver answering 410 failed twice in a row: degraded, below the breaker's
    // threshold.
    let health = "converger_channel_health";
    assert_eq!(scrape.value(health, &[("state", "healthy")]), 1.0);
    assert_eq!(scrape.value(health, &[("state", "degraded")]), 1.0);
    assert_eq!(scrape.value(health, &[("state", "open")]), 0.0);
    assert_eq!(scrape.value(health, &[("state", "paused")]), 0.0);
    assert_eq!(scrape.value("converger_websocket_connections", &[]), 1.0);
    assert_eq!(scrape.value("converger_websocket_joined_topics", &[]), 1.0);
    assert!(scrape.value("converger_db_pool_max_connections", &[]) >= 1.0);
    assert_eq!(
        scrape.value(
            "converger_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // On PostgreSQL an activity committed by another node reaches this one's socket
    // through LISTEN/NOTIFY, and the lag of that notification is measured.
    if backend == Backend::Postgres {
        let other = app
            .http
            .post(format!(
                "{standby}/api/v1/conversations/{}/activities",
                s(&conv_ok, "id")
            ))
            .header("x-api-key", &app.api_key)
            .json(&json!({"text": "from the other node", "direction": "inbound"}))
            .send()
            .await
            .unwrap();
        expect_data(other, StatusCode::CREATED).await;
        let pushed = socket.activities(1).await;
        assert_eq!(pushed[0]["text"], "from the other node");
        let scrape = Scrape::of(&app.http, &app.base).await;
        assert_eq!(scrape.value("converger_pubsub_lag_seconds_count", &[]), 1.0);
        assert_eq!(
            scrape.value("converger_activities_ingested_total", &[]),
            5.0,
            "counted by the node that committed it"
        );
    }

    socket.ws.close(None).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the socket gauges to fall",
        || async {
            let scrape = Scrape::of(&app.http, &app.base).await;
            (scrape.value("converger_websocket_connections", &[]) == 0.0
                && scrape.value("converger_websocket_joined_topics", &[]) == 0.0)
                .then_some(())
        },
    )
    .await;

    // Everything the provisioned Grafana dashboard charts is exported (PubSub lag only
    // once a notification from another node arrived).
    let names = Scrape::of(&app.http, &app.base).await.names();
    let charted = crate::deploy::dashboard_metric_names();
    assert!(charted.len() >= 10, "{charted:?}");
    for expected in charted {
        if expected == "converger_pubsub_lag_seconds" && backend == Backend::Sqlite {
            continue;
        }
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

async fn logs_carry_request_ids_and_no_secrets(backend: Backend) {
    let mut app = in_process(backend).await;
    let admin_password = "admin-password-never-logged";
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // On PostgreSQL, a password in the URL (unused with trust authentication) must
    // not appear either.
    let database_password = "db-password-never-logged";
    let database_url = match backend {
        Backend::Sqlite => app.database_url.clone(),
        Backend::Postgres => {
            let mut url = url::Url::parse(&app.database_url).unwrap();
            url.set_password(Some(database_password)).unwrap();
            url.to_string()
        }
    };
    let node = Node::start_with(
        &database_url,
        &[
            ("RUST_LOG", "debug"),
            ("CONVERGER_LOG_FORMAT", "json"),
            ("CONVERGER_ADMIN_PASSWORD", admin_password),
        ],
        Stdio::from(log),
    );
    app.base.clone_from(&node.base);
    node.ready(&app.http).await;

    let sink = Sink::start().await;
    sink.always(Reply::status(200));
    let channel = app
        .create_channel("webhook", json!({"url": sink.url}))
        .await;
    let channel_id = s(&channel, "id");
    let shown = expect_data(
        app.req(
            Method::GET,
            &format!("/api/v1/channels/{channel_id}/secret"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    let rotated = expect_data(
        app.req(
            Method::POST,
            &format!("/api/v1/channels/{channel_id}/rotate_secret"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    let access_token = "EAAG-provider-access-token-never-logged";
    let app_secret = "provider-app-secret-never-logged";
    app.create_channel(
        "whatsapp_meta",
        json!({
            "phone_number_id": "1234567890",
            "access_token": access_token,
            "verify_token": "verify-token-value",
            "app_secret": app_secret,
        }),
    )
    .await;
    let conversation = app.create_conversation(channel_id, None).await;
    let conversation_id = s(&conversation, "id");
    let token = app.token(conversation_id, "u1").await;

    // One traced request: its id reaches ingest and the delivery it causes.
    let request_id = "req-observability-0001";
    let resp = app
        .req(
            Method::POST,
            &format!("/api/v1/conversations/{conversation_id}/activities"),
        )
        .header("x-request-id", request_id)
        .json(&json!({"text": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], request_id);
    expect_data(resp, StatusCode::CREATED).await;
    // A forged id is replaced, not logged.
    let resp = app
        .req(
            Method::GET,
            &format!("/api/v1/conversations/{conversation_id}"),
        )
        .header("x-request-id", "forged\tlevel=ERROR")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "forged\tlevel=ERROR");
    sink.wait_for(1, Duration::from_secs(30)).await;

    // Credentials in use, right and wrong.
    let resp = app
        .with_bearer(
            &token,
            Method::GET,
            &format!("/api/v1/conversations/{conversation_id}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let wrong_key = "cvg_wrongkeywrongkeywrongkeywrongkey";
    let resp = app
        .with_key(wrong_key, Method::GET, "/api/v1/channels")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Rotating the secret revoked the channel token.
    let channel_token = s(&channel, "token");
    let resp = app
        .anon(
            Method::GET,
            &format!("/api/v1/conversations/{conversation_id}"),
        )
        .header("x-channel-token", channel_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body = json!({"text": "inbound", "from": "+4915100009", "id": "ext-9"});
    let signature = converger_signature(
        s(&rotated, "secret"),
        chrono::Utc::now().timestamp(),
        body.to_string().as_bytes(),
    );
    let resp = app
        .anon(
            Method::POST,
            &format!("/api/v1/channels/{channel_id}/inbound"),
        )
        .header("content-type", "application/json")
        .header("x-converger-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created = app
        .anon(Method::POST, "/admin/api/tenants")
        .bearer_auth(admin_password)
        .json(&json!({"name": "second"}))
        .send()
        .await
        .unwrap();
    let created: Value = created.json().await.unwrap();
    let second_key = created["data"]["api_key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();

    drop(node);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.len() > 20,
        "debug logging produced {} lines",
        lines.len()
    );

    let secrets = [
        ("tenant API key", app.api_key.as_str()),
        ("second tenant's API key", second_key.as_str()),
        ("wrong API key", wrong_key),
        ("channel secret", s(&channel, "secret")),
        ("channel secret shown again", s(&shown, "secret")),
        ("rotated channel secret", s(&rotated, "secret")),
        ("channel token", channel_token),
        ("client token", token.as_str()),
        ("provider access token", access_token),
        ("provider app secret", app_secret),
        ("admin password", admin_password),
        ("JWT secret", JWT_SECRET),
        ("database password", database_password),
    ];
    for (what, secret) in secrets {
        assert!(!secret.is_empty(), "{what}");
        if let Some(line) = log.lines().find(|line| line.contains(secret)) {
            panic!("the {what} is in the log: {line}");
        }
    }
    assert!(!log.contains("forged"), "a forged request id was logged");

    // The traced request's id is on its ingest line and on its delivery's line.
    let traced = |message: &str| {
        lines
            .iter()
            .any(|line| line["message"] == message && line.to_string().contains(request_id))
    };
    assert!(
        traced("activity ingested"),
        "ingest line without the request id"
    );
    assert!(traced("delivered"), "delivery line without the request id");
}

/// With the `otlp` feature, spans reach an OTLP/HTTP collector, and a collector that
/// is down changes nothing for clients.
#[cfg(feature = "otlp")]
mod otlp {
    use super::*;

    async fn node_exporting_to(endpoint: &str) -> (TestApp, Node) {
        let mut app = in_process(Backend::Sqlite).await;
        let node = serve_on_node(
            &mut app,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("RUST_LOG", "info"),
            ],
            Stdio::null(),
        );
        node.ready(&app.http).await;
        (app, node)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_the_collector() {
        let collector = Sink::start().await;
        collector.always(Reply::status(200));
        let (app, _node) = node_exporting_to(&collector.url).await;
        let conversation = app.conversation().await;
        app.post(&conversation, "traced").await;
        let exported = collector.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(exported[0].path, "/v1/traces");
        assert_eq!(exported[0].header("content-type"), "application/x-protobuf");
        // The protobuf names the service and the HTTP span.
        let body = String::from_utf8_lossy(&exported[0].body);
        assert!(body.contains("converger"), "{body}");
        assert!(body.contains("http"), "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_that_is_down_changes_nothing() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let (app, _node) = node_exporting_to(&endpoint).await;
        let conversation = app.conversation().await;
        for i in 0..20 {
            app.post(&conversation, &format!("m{i}")).await;
        }
        assert_eq!(app.activities(&conversation).await.len(), 20);
    }
}
