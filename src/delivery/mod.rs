//! Outbound delivery: the `deliveries` table is the durable job queue.
//!
//! Stage 4 of the flow. `ingest` commits delivery rows with their activity and then
//! wakes the workers through the [`DeliveryWaker`], so the happy path has no polling
//! delay; a timer covers scheduled retries, expired leases and rows written by other
//! nodes. Every node runs workers; leases keep two nodes from attempting one
//! delivery at the same time.

mod backoff;
mod outcome;
mod pruner;
mod repair;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use backoff::{MAX_ATTEMPTS, next_delay};
pub use outcome::{
    StatusApplied, apply_provider_status, attempt_result, retry_all_failed, retry_failed,
};
pub use pruner::{PRUNE_BATCH, run_pruner};
pub use repair::{HEAD_REPAIR_INTERVAL, run_head_repair};
pub use worker::DeliveryEngine;

/// Wakes the delivery workers of this node when new work was committed.
#[derive(Clone, Default)]
pub struct DeliveryWaker(Arc<Notify>);

impl DeliveryWaker {
    /// Signals that due deliveries may exist. A wake-up with no one waiting is kept
    /// for the next wait, so none is lost.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for the next wake-up.
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

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
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            concurrency: 256,
            backoff_scale: 1.0,
            lease: Duration::from_secs(90),
            poll_interval: Duration::from_secs(1),
            head_repair_interval: HEAD_REPAIR_INTERVAL,
        }
    }
}
