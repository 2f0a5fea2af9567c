//! Outbound delivery: the `deliveries` table is the durable job queue.
//!
//! Stage 4 of the flow. `ingest` commits delivery rows with their activity and then
//! wakes the workers through the [`DeliveryWaker`], so the happy path has no polling
//! delay.

use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes the delivery workers of this node when new work was committed.
#[derive(Clone, Default)]
pub struct DeliveryWaker(Arc<Notify>);

impl DeliveryWaker {
    /// Signals that due deliveries may exist.
    pub fn wake(&self) {
        self.0.notify_waiters();
        self.0.notify_one();
    }

    /// Waits for the next wake-up.
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}
