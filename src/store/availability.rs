//! Whether the database can be reached, as this node last saw it.
//!
//! While the database is out of reach, every request that needs it would wait for
//! the pool's acquire timeout and then fail. Instead, the first request that meets an
//! [`StoreError::Unavailable`](super::StoreError::Unavailable) has the store probed;
//! if the probe fails too, the store is marked down and requests are refused at once
//! (`503 store_unavailable`) while a probe runs every [`PROBE_INTERVAL`], until one
//! succeeds. A single busy moment does not mark it down: the probe must fail as well.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Store;

/// Pause between probes while the database is down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a probe waits for the database.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Shared by the clones of a store.
#[derive(Debug, Default)]
pub(super) struct Availability {
    /// The last probe failed, and none has succeeded since.
    down: AtomicBool,
    /// A probe task is running.
    probing: AtomicBool,
}

impl Store {
    /// Whether the database was reachable when last looked at: `false` only between a
    /// failed probe and a successful one.
    pub fn is_available(&self) -> bool {
        !self.shared().availability.down.load(Ordering::Acquire)
    }

    /// Reports that a query found the database out of reach: probes it, unless a
    /// probe is under way, and marks the store down until a probe succeeds.
    pub fn report_unavailable(&self) {
        let availability = &self.shared().availability;
        if availability.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let availability = &store.shared().availability;
            loop {
                if store.probe().await {
                    if availability.down.swap(false, Ordering::AcqRel) {
                        tracing::info!("the database is reachable again");
                    }
                    break;
                }
                if !availability.down.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        "the database is unreachable: requests that need it are refused until it answers"
                    );
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            availability.probing.store(false, Ordering::Release);
        });
    }

    /// Whether the database answers a trivial query within [`PROBE_TIMEOUT`].
    pub async fn probe(&self) -> bool {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.ping()).await,
            Ok(Ok(()))
        )
    }
}
