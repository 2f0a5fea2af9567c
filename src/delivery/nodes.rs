//! This node in the node registry ([`crate::store::NodeRow`]): its heartbeat, and the
//! takeover of the leases of nodes that stopped beating.
//!
//! A node killed mid-attempt leaves its deliveries leased for the lease's length
//! (90 s by default), and with per-conversation order everything queued behind them
//! waits as long. With a heartbeat every `interval`, a node silent for
//! [`MISSED_BEATS`] intervals is taken for dead by the next live node to look, and its
//! leases are given back at once: its deliveries are due again within a few
//! intervals of its death.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DeliveryWaker;
use crate::domain::{NodeId, Timestamp};
use crate::store::Store;

/// Heartbeats a node may miss before it is taken for dead.
pub const MISSED_BEATS: u32 = 3;

/// Who this node is in the registry, and how many delivering nodes it saw there
/// last.
#[derive(Debug)]
pub struct NodeIdentity {
    pub id: NodeId,
    /// `host:pid` ([`crate::telemetry::node_name`]), as in the attempt log.
    pub name: String,
    pub started_at: Timestamp,
    /// Whether this node runs delivery workers (`CONVERGER_DELIVERY_ENABLED`).
    pub delivers: bool,
    delivering_nodes: AtomicU32,
}

impl NodeIdentity {
    /// A new identity for a node starting now, running delivery workers or not.
    pub fn new(delivers: bool) -> Self {
        Self {
            id: NodeId::new(),
            name: crate::telemetry::node_name(),
            started_at: Timestamp::now(),
            delivers,
            delivering_nodes: AtomicU32::new(1),
        }
    }

    /// The live nodes of the registry that deliver, at this node's last heartbeat
    /// (at least 1, and 1 until it has looked): they share each channel's
    /// `rate_limit`. Nodes serving the API alone take no share.
    pub fn delivering_nodes(&self) -> u32 {
        self.delivering_nodes.load(Ordering::Relaxed)
    }
}

/// How old a heartbeat may be, at `now`, before its node is taken for dead.
pub fn stale_before(now: Timestamp, interval: Duration) -> Timestamp {
    now.minus(interval * MISSED_BEATS)
}

/// Beats every `interval` until `stop`, and after each beat gives back the leases of
/// nodes that stopped beating, waking the workers when there were any, and counts the
/// live ones. On `stop` the
/// node's row is removed: its workers have given their leases back by then.
pub async fn run_heartbeat(
    store: Store,
    node: Arc<NodeIdentity>,
    interval: Duration,
    waker: DeliveryWaker,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = Timestamp::now();
        match store
            .heartbeat_node(node.id, &node.name, node.started_at, node.delivers, now)
            .await
        {
            Ok(true) if !first => tracing::warn!(
                node = %node.name,
                "this node was taken for dead while it could not beat; its leases were given to others"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot write this node's heartbeat");
                continue;
            }
        }
        first = false;
        match store.reap_dead_nodes(stale_before(now, interval)).await {
            Ok(reaped) if reaped.nodes > 0 => {
                tracing::warn!(
                    nodes = reaped.nodes,
                    leases = reaped.leases,
                    "nodes stopped beating: their delivery leases are given back"
                );
                if reaped.leases > 0 {
                    waker.wake();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for dead nodes"),
        }
        match store.live_nodes(stale_before(now, interval)).await {
            Ok(live) => {
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                let delivering = count(live.iter().filter(|n| n.delivers).count());
                node.delivering_nodes
                    .store(delivering.max(1), Ordering::Relaxed);
                metrics::gauge!(crate::metrics::NODES_LIVE).set(f64::from(count(live.len())));
                metrics::gauge!(crate::metrics::NODES_DELIVERING).set(f64::from(delivering));
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the live nodes"),
        }
    }
    if let Err(e) = store.deregister_node(node.id).await {
        tracing::warn!(error = %e, "cannot remove this node from the registry; it ages out");
    }
}
