//! The node registry: which `serve` processes are alive on this database.
//!
//! Every node refreshes its row in `nodes` every few seconds. A row that has not been
//! refreshed for a few intervals belongs to a node that died (killed, partitioned,
//! its machine gone); any live node then gives that node's delivery leases back, so
//! its deliveries, and the conversations queued behind them, move on within seconds
//! rather than when the leases expire. Timestamps are the nodes' own clocks, which
//! must agree to within an interval, as leases already assume.

use super::{Store, StoreResult, reader, writer};
use crate::domain::{NodeId, Timestamp};

/// A node as its row tells.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRow {
    pub id: NodeId,
    pub name: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// Whether it runs delivery workers, and so takes a share of rate limits.
    pub delivers: bool,
}

/// What giving back the leases of dead nodes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Nodes found dead, whose rows are gone.
    pub nodes: u64,
    /// Leases of theirs given back: those deliveries are due again now.
    pub leases: u64,
}

impl Store {
    /// Writes `node`'s heartbeat: its row, created when missing (the node is new, or
    /// was taken for dead while it could not reach the database), saying whether it
    /// `delivers`. Returns whether the row had to be created.
    pub async fn heartbeat_node(
        &self,
        node: NodeId,
        name: &str,
        started_at: Timestamp,
        delivers: bool,
        now: Timestamp,
    ) -> StoreResult<bool> {
        const REFRESH: &str = "UPDATE nodes SET heartbeat_at = $2 WHERE id = $1";
        const INSERT: &str = "INSERT INTO nodes (id, name, started_at, heartbeat_at, delivers) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at";
        let refreshed = writer!(self, |pool| {
            sqlx::query(REFRESH)
                .bind(node)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if refreshed > 0 {
            return Ok(false);
        }
        writer!(self, |pool| {
            sqlx::query(INSERT)
                .bind(node)
                .bind(name)
                .bind(started_at)
                .bind(now)
                .bind(delivers)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(true)
    }

    /// Takes every node whose last heartbeat is older than `stale_before` for dead:
    /// gives its delivery leases back and deletes its row, in one transaction. Safe to
    /// run on every node at once. A node taken for dead that was only cut off finds
    /// its leases gone when it comes back: its outcomes are then refused (see
    /// [`Store::record_attempts`]) and the deliveries are made by whoever holds them
    /// now, at least once as always.
    pub async fn reap_dead_nodes(&self, stale_before: Timestamp) -> StoreResult<Reaped> {
        const DEAD: &str = "SELECT COUNT(*) FROM nodes WHERE heartbeat_at < $1";
        const RELEASE: &str = "UPDATE deliveries SET locked_until = NULL \
             WHERE status = 'pending' AND locked_until IS NOT NULL \
             AND locked_by IN (SELECT id FROM nodes WHERE heartbeat_at < $1)";
        const FORGET: &str = "DELETE FROM nodes WHERE heartbeat_at < $1";
        // The common case, nobody dead, is one read of a table of a few rows.
        let (dead,): (i64,) = reader!(self, |pool| sqlx::query_as(DEAD)
            .bind(stale_before)
            .fetch_one(pool)
            .await)?;
        if dead == 0 {
            return Ok(Reaped::default());
        }
        Ok(writer!(self, |pool| {
            async {
                let mut tx = pool.begin().await?;
                let leases = sqlx::query(RELEASE)
                    .bind(stale_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let nodes = sqlx::query(FORGET)
                    .bind(stale_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Reaped { nodes, leases })
            }
            .await
        })?)
    }

    /// Removes `node`'s row: it is stopping, and has given its leases back.
    pub async fn deregister_node(&self, node: NodeId) -> StoreResult<()> {
        writer!(self, |pool| {
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(node)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// The nodes whose heartbeat is not older than `since`, oldest first.
    pub async fn live_nodes(&self, since: Timestamp) -> StoreResult<Vec<NodeRow>> {
        const SQL: &str = "SELECT id, name, started_at, heartbeat_at, delivers FROM nodes \
             WHERE heartbeat_at >= $1 ORDER BY started_at, id";
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .bind(since)
            .fetch_all(pool)
            .await)?)
    }
}
