//! The periodic check of the queue's head flags (`store/heads.rs`).
//!
//! The store keeps the flags right in every transaction that changes a pair's pending
//! rows, so in a cluster of this release the check finds nothing. It is there for what
//! the store cannot see: nodes of an older release sharing the database during a
//! rolling upgrade insert unmarked rows and never promote, and their deliveries would
//! otherwise wait forever. It also settles the `held` flags that an append racing a
//! pause, a resume or a breaker can leave wrong (`store/health.rs`). Runs once at
//! start, then every `interval`, beside the delivery loop and stopped with it; it
//! never attempts a delivery itself.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DeliveryWaker;
use crate::store::Store;

/// How often the delivery engine checks the head flags.
pub const HEAD_REPAIR_INTERVAL: Duration = Duration::from_secs(60);

/// Settles broken head flags at once and then every `interval` until `stop`; wakes the
/// workers when it marked something, since that row may be due.
pub async fn run_head_repair(
    store: Store,
    waker: DeliveryWaker,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            result = store.repair_delivery_heads() => match result {
                Ok(0) => {}
                Ok(changed) => {
                    tracing::warn!(
                        changed,
                        "repaired delivery head flags; expected only while nodes of an \
                         older release share the database"
                    );
                    waker.wake();
                }
                Err(e) => tracing::warn!(error = %e, "cannot check delivery head flags; will retry"),
            },
        }
        tokio::select! {
            () = stop.cancelled() => break,
            result = store.repair_held_deliveries() => match result {
                Ok(0) => {}
                Ok(changed) => {
                    tracing::info!(changed, "set the held flags of deliveries written as their channel paused or resumed");
                    waker.wake();
                }
                Err(e) => tracing::warn!(error = %e, "cannot check held deliveries; will retry"),
            },
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
