//! Outbound delivery: the `deliveries` table is the durable job queue.
//!
//! Stage 4 of the flow. `ingest` commits delivery rows with their activity and then
//! wakes the workers through its [`DeliveryWaker`], so the happy path has no polling
//! delay; a timer covers scheduled retries, expired leases and rows written by other
//! nodes. Every node runs workers; leases keep two nodes from attempting one
//! delivery at the same time.

mod backoff;
mod breaker;
mod nodes;
mod ops_sender;
mod outcome;
mod probe;
mod pruner;
mod recorder;
mod repair;
mod throttle;
mod worker;

use std::time::Duration;

use crate::config::Config;

pub use crate::ingest::DeliveryWaker;
pub use backoff::{MAX_ATTEMPTS, next_delay};
pub use breaker::{BreakerSettings, observe};
pub use nodes::{MISSED_BEATS, NodeIdentity, run_heartbeat, stale_before};
pub use ops_sender::{OpsSenderSettings, ops_payload, run_ops_sender};
pub use outcome::{
    REPLAY_BATCH, StatusApplied, apply_provider_status, attempt_result, observation, pause_channel,
    replay_failed, resume_channel, retry_now,
};
pub use probe::run_probes;
pub use pruner::{PRUNE_BATCH, run_pruner};
pub use repair::{HEAD_REPAIR_INTERVAL, run_head_repair};
pub use throttle::Throttle;
pub use worker::DeliveryEngine;

/// Settings of the delivery engine.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Most attempts in flight on this node (HTTP requests, not DB connections).
    pub concurrency: usize,
    /// Multiplies every retry wait.
    pub backoff_scale: f64,
    /// How long a claimed delivery stays leased; a node that dies leaves it to others
    /// after this. Every attempt's timeout is kept below it.
    pub lease: Duration,
    /// Longest sleep between looks at the queue when nothing wakes the workers.
    pub poll_interval: Duration,
    /// How often the head flags of the queue are checked (see [`run_head_repair`]).
    pub head_repair_interval: Duration,
    /// What names this node in the attempt log ([`crate::telemetry::node_name`]).
    pub node: String,
    /// The channels' circuit breaker.
    pub breaker: BreakerSettings,
}

impl DeliverySettings {
    /// The settings `config` asks for (`CONVERGER_DELIVERY_*`, `CONVERGER_BREAKER_*`);
    /// the poll and repair intervals are fixed, the node's name is its host's and
    /// process's.
    pub fn from_config(config: &Config) -> Self {
        Self {
            concurrency: config.delivery_concurrency,
            backoff_scale: config.delivery_backoff_scale,
            lease: Duration::from_secs(config.delivery_lease_secs),
            poll_interval: Duration::from_secs(1),
            head_repair_interval: HEAD_REPAIR_INTERVAL,
            node: crate::telemetry::node_name(),
            breaker: BreakerSettings::from_config(config),
        }
    }
}

impl Default for DeliverySettings {
    /// The settings of the default config.
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_are_the_config_defaults() {
        let config = Config::default();
        let settings = DeliverySettings::default();
        assert_eq!(settings.concurrency, config.delivery_concurrency);
        assert_eq!(settings.backoff_scale, config.delivery_backoff_scale);
        assert_eq!(
            settings.lease,
            Duration::from_secs(config.delivery_lease_secs)
        );
    }
}
