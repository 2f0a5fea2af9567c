//! Lets the half-open probe through: once a channel's breaker has cooled down, one of
//! its held deliveries is released for the workers to attempt (`delivery::breaker`).
//!
//! Every node runs this beside its delivery loop; the store lets one probe through per
//! channel however many nodes look ([`Store::release_probes`]). It never attempts a
//! delivery itself.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DeliveryWaker;
use crate::domain::Timestamp;
use crate::store::Store;

/// Looks for cooled-down breakers every `interval` until `stop`, and wakes the workers
/// when it let a probe through.
pub async fn run_probes(
    store: Store,
    waker: DeliveryWaker,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            released = store.release_probes(Timestamp::now()) => match released {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(probes = n, "breaker cool-down over: probe let through");
                    waker.wake();
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for cooled-down breakers; will retry"),
            },
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
