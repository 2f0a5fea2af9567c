//! The delivery queue: claiming due deliveries under a lease and recording outcomes.
//!
//! Used by the delivery workers only. Not tenant-scoped: workers serve every tenant.
//! A claim sets `locked_until`; outcomes are recorded only while that lease is still
//! the row's, so a worker whose lease expired and was taken over cannot overwrite the
//! newer attempt's result.

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
/// is never delivered before an earlier pending one.
macro_rules! claimable {
    () => {
        "d.status = 'pending' AND d.next_attempt_at <= $1 \
         AND (d.locked_until IS NULL OR d.locked_until < $1) \
         AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.conversation_id = d.conversation_id \
             AND e.channel_id = d.channel_id AND e.status = 'pending' AND e.seq < d.seq)"
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
            Store::Postgres(pool) => {
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
    /// is pending.
    pub async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>> {
        const SQL: &str = "SELECT MIN(CASE WHEN d.locked_until IS NOT NULL \
             AND d.locked_until > d.next_attempt_at THEN d.locked_until ELSE d.next_attempt_at END) \
             FROM deliveries d WHERE d.status = 'pending' AND NOT EXISTS (SELECT 1 FROM deliveries e \
             WHERE e.conversation_id = d.conversation_id AND e.channel_id = d.channel_id \
             AND e.status = 'pending' AND e.seq < d.seq)";
        let row: (Option<Timestamp>,) =
            reader!(self, |pool| sqlx::query_as(SQL).fetch_one(pool).await)?;
        Ok(row.0)
    }

    /// Records the end of an attempt made under `lease`. Returns `false` when the lease
    /// was lost (another worker took the row over) and nothing was written.
    pub async fn record_attempt(
        &self,
        id: DeliveryId,
        lease: Timestamp,
        now: Timestamp,
        result: &AttemptResult,
    ) -> StoreResult<bool> {
        const DELIVERED: &str = "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, \
             delivered_at = $3, external_id = COALESCE($4, external_id), last_error = NULL, \
             locked_until = NULL, next_attempt_at = NULL, updated_at = $3 \
             WHERE id = $1 AND locked_until = $2 AND status = 'pending'";
        const RETRY: &str = "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $4, \
             last_error = $5, locked_until = NULL, updated_at = $3 \
             WHERE id = $1 AND locked_until = $2 AND status = 'pending'";
        const FAILED: &str = "UPDATE deliveries SET status = 'failed', attempts = attempts + 1, \
             last_error = $4, locked_until = NULL, next_attempt_at = NULL, updated_at = $3 \
             WHERE id = $1 AND locked_until = $2 AND status = 'pending'";
        let rows = writer!(self, |pool| {
            let query = match result {
                AttemptResult::Delivered { external_id } => sqlx::query(DELIVERED)
                    .bind(id)
                    .bind(lease)
                    .bind(now)
                    .bind(external_id.as_deref()),
                AttemptResult::RetryAt { at, error } => sqlx::query(RETRY)
                    .bind(id)
                    .bind(lease)
                    .bind(now)
                    .bind(*at)
                    .bind(error.as_str()),
                AttemptResult::Failed { error } => sqlx::query(FAILED)
                    .bind(id)
                    .bind(lease)
                    .bind(now)
                    .bind(error.as_str()),
            };
            query.execute(pool).await.map(|r| r.rows_affected())
        })?;
        Ok(rows == 1)
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
