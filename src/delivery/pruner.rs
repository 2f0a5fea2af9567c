//! The periodic pruner: removes activities whose deliveries all succeeded, and
//! operational events no longer waiting to be sent, once they are older than the
//! retention. Off unless a retention is configured.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Timestamp;
use crate::store::Store;

/// Activities deleted per transaction.
pub const PRUNE_BATCH: i64 = 1000;

/// Prunes every `interval` until `shutdown`.
pub async fn run_pruner(
    store: Store,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!(retention_secs = retention.as_secs(), "pruner started");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        let cutoff = Timestamp::now().minus(retention);
        // Stop between batches at shutdown rather than finishing a long backlog.
        tokio::select! {
            () = shutdown.cancelled() => break,
            result = store.prune_delivered(cutoff, PRUNE_BATCH) => match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(activities = n, "pruned delivered activities"),
                Err(e) => tracing::warn!(error = %e, "pruning failed; will retry"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            result = store.prune_ops_events(cutoff, PRUNE_BATCH) => match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "pruned operational events"),
                Err(e) => tracing::warn!(error = %e, "pruning operational events failed; will retry"),
            },
        }
    }
}
