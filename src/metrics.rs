//! Prometheus metrics: one name per measured thing, recorded through the `metrics`
//! facade and rendered by `GET /metrics`.
//!
//! The recorder is process-global (the `metrics` macros have no other target), so a
//! process serving several nodes, as the test suite does, reports their sum. Each
//! `record_*` function below is the only place its metric is written, which keeps
//! names and labels consistent with the dashboard in `deploy/grafana/`.
//!
//! Gauges read from the database (queue depth, channel health, pool usage) are sampled
//! when scraped: every node sharing a database reports the same queue depth and
//! channel health, so dashboards take `max`, not `sum`, of them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{ChannelType, Direction};
use crate::store::{HealthCounts, PoolStats, QueueDepth};

pub const HTTP_REQUESTS: &str = "converger_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "converger_http_request_duration_seconds";
pub const ACTIVITIES_INGESTED: &str = "converger_activities_ingested_total";
pub const DELIVERY_ATTEMPTS: &str = "converger_delivery_attempts_total";
pub const DELIVERY_ATTEMPT_DURATION: &str = "converger_delivery_attempt_duration_seconds";
pub const OPS_WEBHOOK_ATTEMPTS: &str = "converger_ops_webhook_attempts_total";
pub const DELIVERY_QUEUE_DEPTH: &str = "converger_delivery_queue_depth";
pub const CHANNEL_HEALTH: &str = "converger_channel_health";
/// Live nodes in the node registry, as this node counted them at its last heartbeat.
pub const NODES_LIVE: &str = "converger_nodes_live";
pub const NODES_DELIVERING: &str = "converger_nodes_delivering";
pub const WEBSOCKET_CONNECTIONS: &str = "converger_websocket_connections";
pub const WEBSOCKET_JOINED_TOPICS: &str = "converger_websocket_joined_topics";
pub const PUBSUB_LAG: &str = "converger_pubsub_lag_seconds";
pub const PUBSUB_LAGGED: &str = "converger_pubsub_lagged_total";
pub const DB_POOL_CONNECTIONS: &str = "converger_db_pool_connections";
pub const DB_POOL_MAX_CONNECTIONS: &str = "converger_db_pool_max_connections";
pub const RATE_LIMITED: &str = "converger_rate_limited_total";
pub const CONNECTIONS: &str = "converger_connections";
pub const CONNECTIONS_MAX: &str = "converger_connections_max";
pub const CONNECTIONS_REFUSED: &str = "converger_connections_refused_total";
pub const BUILD_INFO: &str = "converger_build_info";

/// Latency buckets (seconds) of every `_seconds` histogram: 1 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How often histograms are compacted; the exporter leaves that to its installer.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle. `None`
/// when another recorder was installed first (by an embedding program): metrics then
/// go there and `/metrics` has nothing of its own to render.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                    // Present from the start, so dashboards show 0 rather than no data.
                    gauge!(WEBSOCKET_CONNECTIONS).set(0.0);
                    gauge!(WEBSOCKET_JOINED_TOPICS).set(0.0);
                    counter!(PUBSUB_LAGGED).absolute(0);
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed: /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

/// Compacts histograms; run every [`UPKEEP_INTERVAL`].
pub fn upkeep() {
    if let Some(handle) = install() {
        handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route template and status"
    );
    describe_counter!(
        ACTIVITIES_INGESTED,
        "Activities committed, by channel type and direction"
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery attempts, by adapter and recorded outcome"
    );
    describe_counter!(
        OPS_WEBHOOK_ATTEMPTS,
        "Attempts to send operational events to ops webhooks, by recorded outcome"
    );
    describe_histogram!(
        DELIVERY_ATTEMPT_DURATION,
        Unit::Seconds,
        "Delivery attempt latency, by adapter and recorded outcome"
    );
    describe_gauge!(
        DELIVERY_QUEUE_DEPTH,
        "Deliveries in the shared database: pending_due, pending_scheduled, pending_held, failed"
    );
    describe_gauge!(
        CHANNEL_HEALTH,
        "Channels by delivery health in the shared database: healthy, degraded, open, paused"
    );
    describe_gauge!(
        NODES_LIVE,
        "Live nodes in the node registry, this one included"
    );
    describe_gauge!(
        NODES_DELIVERING,
        "Live nodes that run delivery workers; they share each channel's rate_limit"
    );
    describe_gauge!(
        WEBSOCKET_CONNECTIONS,
        "Open WebSocket connections on this node"
    );
    describe_gauge!(
        WEBSOCKET_JOINED_TOPICS,
        "Conversation topics joined on this node"
    );
    describe_histogram!(
        PUBSUB_LAG,
        Unit::Seconds,
        "From publish on one node to receipt on this one"
    );
    describe_counter!(
        PUBSUB_LAGGED,
        "Subscriptions that fell behind PubSub and resynchronised from the store"
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database connections of this node, idle or in use"
    );
    describe_gauge!(
        DB_POOL_MAX_CONNECTIONS,
        "Most database connections this node opens"
    );
    describe_counter!(RATE_LIMITED, "Requests refused with 429, by limit");
    describe_gauge!(
        CONNECTIONS,
        "Connections this node holds open: HTTP, WebSocket and TLS handshakes"
    );
    describe_gauge!(CONNECTIONS_MAX, "Most connections this node holds open");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused at a cap, by cap (node or address)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
}

/// One answered HTTP request. `route` is the matched route template, never the path.
pub fn record_http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// One committed activity (not an idempotent replay).
pub fn record_activity_ingested(channel_type: ChannelType, direction: Direction) {
    counter!(
        ACTIVITIES_INGESTED,
        "channel_type" => channel_type.as_str(),
        "direction" => direction.as_str(),
    )
    .increment(1);
}

/// What an attempt recorded on its delivery: the `outcome` label.
pub use crate::domain::AttemptOutcome;

/// One finished delivery attempt. `adapter` is `unknown` when the channel could not
/// be loaded.
pub fn record_delivery_attempt(adapter: &'static str, outcome: AttemptOutcome, elapsed: Duration) {
    let labels = [("adapter", adapter), ("outcome", outcome.as_str())];
    counter!(DELIVERY_ATTEMPTS, &labels).increment(1);
    histogram!(DELIVERY_ATTEMPT_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// The queue as last sampled from the database.
pub fn record_queue_depth(depth: &QueueDepth) {
    for (state, n) in [
        ("pending_due", depth.pending_due),
        ("pending_scheduled", depth.pending_scheduled),
        ("pending_held", depth.pending_held),
        ("failed", depth.failed),
    ] {
        #[allow(clippy::cast_precision_loss)]
        gauge!(DELIVERY_QUEUE_DEPTH, "state" => state).set(n as f64);
    }
}

/// The channels' delivery health as last sampled.
pub fn record_channel_health(counts: &HealthCounts) {
    for (state, n) in [
        ("healthy", counts.healthy),
        ("degraded", counts.degraded),
        ("open", counts.open),
        ("paused", counts.paused),
    ] {
        #[allow(clippy::cast_precision_loss)]
        gauge!(CHANNEL_HEALTH, "state" => state).set(n as f64);
    }
}

/// This node's connection pools as last sampled.
pub fn record_pool(stats: &PoolStats) {
    gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(f64::from(stats.idle));
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use")
        .set(f64::from(stats.size.saturating_sub(stats.idle)));
    gauge!(DB_POOL_MAX_CONNECTIONS).set(f64::from(stats.max));
}

/// A notification from another node arrived `lag` after it was published.
pub fn record_pubsub_lag(lag: Duration) {
    histogram!(PUBSUB_LAG).record(lag.as_secs_f64());
}

/// A subscription fell behind and resynchronises from the store.
pub fn record_pubsub_lagged() {
    counter!(PUBSUB_LAGGED).increment(1);
}

/// A request refused by the limit named `scope` (`ip`, `tenant`, `inbound`, `tokens`,
/// `tenant_tokens`).
pub fn record_rate_limited(scope: &'static str) {
    counter!(RATE_LIMITED, "scope" => scope).increment(1);
}

/// Connections open and the cap, sampled when scraped.
pub fn record_connections(open: usize, max: usize) {
    gauge!(CONNECTIONS).set(open as f64);
    gauge!(CONNECTIONS_MAX).set(max as f64);
}

/// One connection refused at a cap (`node` or `address`).
pub fn record_connection_refused(cap: &'static str) {
    counter!(CONNECTIONS_REFUSED, "cap" => cap).increment(1);
}

/// Counts something open for as long as the value lives: a socket or a joined topic.
#[derive(Debug)]
pub struct Open(&'static str);

impl Open {
    /// An open WebSocket connection.
    pub fn connection() -> Self {
        Self::new(WEBSOCKET_CONNECTIONS)
    }

    /// A joined conversation topic.
    pub fn topic() -> Self {
        Self::new(WEBSOCKET_JOINED_TOPICS)
    }

    fn new(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}
