//! The delivery queue: claiming due deliveries under a lease and recording outcomes.
//!
//! Used by the delivery workers only. Not tenant-scoped: workers serve every tenant.
//! A claim sets `locked_until`; outcomes are recorded only while that lease is still
//! the row's, so a worker whose lease expired and was taken over cannot overwrite the
//! newer attempt's result. Only the head of each (conversation, channel) is claimed;
//! completing it hands the flag on (`heads.rs`).

use super::heads::{PROMOTE_FIRST, lock_conversation};
use super::{QueueDepth, Store, StoreResult, reader, writer};
use crate::domain::{Delivery, DeliveryId, Timestamp};

/// The columns of a [`Delivery`] the workers read, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, tenant_id, activity_id, channel_id, conversation_id, seq, status, attempts, \
         next_attempt_at, locked_until, last_error, delivered_at, external_id, metadata, \
         inserted_at, updated_at, request_id"
    };
}
const COLUMNS: &str = columns!();

/// Due, unleased, and first in line for its (conversation, channel): a later activity
/// is never delivered before an earlier pending one. Being first in line is the `head`
/// flag (see `heads.rs`), so the claim walks `deliveries_head_due_idx` and stops after
/// `LIMIT` rows, however many deliveries wait behind the heads.
macro_rules! claimable {
    () => {
        "d.status = 'pending' AND d.head AND d.next_attempt_at <= $1 \
         AND (d.locked_until IS NULL OR d.locked_until < $1)"
    };
}

macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET locked_until = $2, updated_at = $1 WHERE id IN (\
             SELECT d.id FROM deliveries d WHERE ",
            claimable!(),
            " ORDER BY d.next_attempt_at, d.id LIMIT $3",
            $lock,
            ") RETURNING ",
            columns!()
        )
    };
}

/// How a leased delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Delivered { external_id: Option<String> },
    RetryAt { at: Timestamp, error: String },
    Failed { error: String },
}

impl Store {
    /// Leases up to `limit` due deliveries until `lease_until`.
    pub async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        // PostgreSQL: rows another node is claiming right now are skipped, not waited
        // for. SQLite has one writer, so claims never overlap.
        const SQLITE: &str = claim_sql!("");
        const POSTGRES: &str = claim_sql!(" FOR UPDATE SKIP LOCKED");
        let mut claimed: Vec<Delivery> = match self {
            Store::Sqlite { writer, .. } => {
                sqlx::query_as(SQLITE)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .fetch_all(writer)
                    .await?
            }
            Store::Postgres(pool, _) => {
                sqlx::query_as(POSTGRES)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        claimed.sort_by_key(|d| (d.next_attempt_at, d.id));
        Ok(claimed)
    }

    /// When the next delivery becomes claimable (due, or its lease expires), if any
    /// is pending. Only heads can become claimable, so only heads are read.
    pub async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>> {
        // The inner ORDER BY is that of `deliveries_head_due_idx`: without statistics
        // (SQLite is never analyzed) the planner would otherwise walk every pending row
        // through `deliveries_due_idx` and test each for `head`.
        const SQL: &str = "SELECT MIN(at) FROM (SELECT CASE WHEN locked_until IS NOT NULL \
             AND locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END AS at \
             FROM deliveries WHERE status = 'pending' AND head ORDER BY next_attempt_at, id) AS heads";
        let row: (Option<Timestamp>,) =
            reader!(self, |pool| sqlx::query_as(SQL).fetch_one(pool).await)?;
        Ok(row.0)
    }

    /// Records the end of an attempt at `delivery` made under `lease`. Returns `false`
    /// when the lease was lost (another worker took the row over) and nothing was
    /// written.
    ///
    /// A delivered or failed row leaves the queue: in the same transaction its flag is
    /// cleared and the next pending delivery of its (conversation, channel) becomes the
    /// head, under the conversation's lock (see `heads.rs` for the race this closes).
    /// A retry keeps the row pending and first in line: no flag moves.
    pub async fn record_attempt(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        now: Timestamp,
        result: &AttemptResult,
    ) -> StoreResult<bool> {
        const DELIVERED: &str = "UPDATE deliveries SET status = 'delivered', head = FALSE, \
             attempts = attempts + 1, delivered_at = $3, external_id = COALESCE($4, external_id), \
             last_error = NULL, locked_until = NULL, next_attempt_at = NULL, updated_at = $3 \
             WHERE id = $1 AND locked_until = $2 AND status = 'pending'";
        const RETRY: &str = "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $4, \
             last_error = $5, locked_until = NULL, updated_at = $3 \
             WHERE id = $1 AND locked_until = $2 AND status = 'pending'";
        const FAILED: &str = "UPDATE deliveries SET status = 'failed', head = FALSE, \
             attempts = attempts + 1, last_error = $4, locked_until = NULL, \
             next_attempt_at = NULL, updated_at = $3 \
             WHERE id = $1 AND locked_until = $2 AND status = 'pending'";
        let id = delivery.id;
        // `$4` is the external id of a delivered row, the error of a failed one.
        let (sql, text) = match result {
            AttemptResult::RetryAt { at, error } => {
                let rows = writer!(self, |pool| {
                    sqlx::query(RETRY)
                        .bind(id)
                        .bind(lease)
                        .bind(now)
                        .bind(*at)
                        .bind(error.as_str())
                        .execute(pool)
                        .await
                        .map(|r| r.rows_affected())
                })?;
                return Ok(rows == 1);
            }
            AttemptResult::Delivered { external_id } => (DELIVERED, external_id.as_deref()),
            AttemptResult::Failed { error } => (FAILED, Some(error.as_str())),
        };
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            // First, before any delivery row: the lock order of every head change.
            lock_conversation!(self, tx, delivery.conversation_id);
            let ended = sqlx::query(sql)
                .bind(id)
                .bind(lease)
                .bind(now)
                .bind(text)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if ended != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            // The pair's other flags are right (the invariant held before, under this
            // lock), so marking its first pending row is all that is left to do.
            sqlx::query(PROMOTE_FIRST)
                .bind(delivery.conversation_id)
                .bind(delivery.channel_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Gives a lease back without an attempt (shutdown), so another node may take the
    /// delivery at once.
    pub async fn release_delivery(&self, id: DeliveryId, lease: Timestamp) -> StoreResult<()> {
        writer!(self, |pool| {
            sqlx::query(
                "UPDATE deliveries SET locked_until = NULL WHERE id = $1 AND locked_until = $2",
            )
            .bind(id)
            .bind(lease)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// How many deliveries each status holds, over all tenants (operations).
    pub async fn count_deliveries_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        const SQL: &str = "SELECT status, COUNT(*) FROM deliveries GROUP BY status ORDER BY status";
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await)?)
    }

    /// The queue's depth at `now`. Both counts walk partial indexes of pending and
    /// failed rows only, so their cost follows the backlog, not the table.
    pub async fn queue_depth(&self, now: Timestamp) -> StoreResult<QueueDepth> {
        const PENDING: &str = "SELECT COALESCE(SUM(CASE WHEN next_attempt_at <= $1 THEN 1 ELSE 0 END), 0), \
             COUNT(*) FROM deliveries WHERE status = 'pending'";
        const FAILED: &str = "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'";
        let ((due, pending), (failed,)): ((i64, i64), (i64,)) = reader!(self, |pool| {
            tokio::try_join!(
                sqlx::query_as(PENDING).bind(now).fetch_one(pool),
                sqlx::query_as(FAILED).fetch_one(pool),
            )
        })?;
        Ok(QueueDepth {
            pending_due: due,
            pending_scheduled: pending - due,
            failed,
        })
    }

    /// A delivery by id, unscoped (workers and tests).
    pub async fn get_delivery_unscoped(&self, id: DeliveryId) -> StoreResult<Delivery> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM deliveries WHERE id = $1");
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .bind(id)
            .fetch_one(pool)
            .await)?)
    }
}
