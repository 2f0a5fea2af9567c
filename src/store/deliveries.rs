//! Delivery queries, scoped by tenant.

use serde_json::Value;

use super::heads::{lock_conversation, settle_heads};
use super::health::HELD_BY_CHANNEL;
use super::{Store, StoreResult, reader, writer};
use crate::domain::{
    ActivityId, ChannelId, ConversationId, Delivery, DeliveryId, DeliveryStatus, TenantId,
    Timestamp,
};

const COLUMNS: &str = "id, tenant_id, activity_id, channel_id, conversation_id, seq, status, attempts, \
     next_attempt_at, locked_until, last_error, delivered_at, external_id, metadata, inserted_at, updated_at";

/// One listing query per filter combination rather than `($N IS NULL OR ...)`, so that
/// PostgreSQL's generic plans can still use `deliveries_tenant_status_idx` and
/// `deliveries_channel_status_idx` on this high-growth table.
macro_rules! list_sql {
    ($filter:literal) => {
        const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM deliveries WHERE tenant_id = $1 AND id < $2",
            $filter,
            " ORDER BY id DESC LIMIT $3"
        )
    };
}

impl Store {
    /// The deliveries of one activity, one per target channel.
    pub async fn list_deliveries_for_activity(
        &self,
        tenant_id: TenantId,
        activity_id: ActivityId,
    ) -> StoreResult<Vec<Delivery>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM deliveries WHERE tenant_id = $1 AND activity_id = $2 ORDER BY id"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(activity_id)
                .fetch_all(pool)
                .await
        })?)
    }

    /// One delivery of a tenant.
    pub async fn get_delivery(&self, tenant_id: TenantId, id: DeliveryId) -> StoreResult<Delivery> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM deliveries WHERE tenant_id = $1 AND id = $2"
        );
        self.fetch_scoped(SQL, tenant_id, id).await
    }

    /// A page of a tenant's deliveries, newest first, optionally of one status and one
    /// channel, older than the delivery `before` (ids are time-ordered).
    pub async fn list_deliveries(
        &self,
        tenant_id: TenantId,
        status: Option<DeliveryStatus>,
        channel_id: Option<ChannelId>,
        before: Option<DeliveryId>,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        const ALL: &str = list_sql!("");
        const BY_STATUS: &str = list_sql!(" AND status = $4");
        const BY_CHANNEL: &str = list_sql!(" AND channel_id = $4");
        const BY_BOTH: &str = list_sql!(" AND status = $4 AND channel_id = $5");
        let sql = match (status, channel_id) {
            (None, None) => ALL,
            (Some(_), None) => BY_STATUS,
            (None, Some(_)) => BY_CHANNEL,
            (Some(_), Some(_)) => BY_BOTH,
        };
        // No cursor: start above every id rather than adding a fourth dimension of SQL.
        let before = before.unwrap_or(DeliveryId(uuid::Uuid::max()));
        Ok(reader!(self, |pool| {
            let mut query = sqlx::query_as(sql).bind(tenant_id).bind(before).bind(limit);
            if let Some(status) = status {
                query = query.bind(status.as_str());
            }
            if let Some(channel_id) = channel_id {
                query = query.bind(channel_id);
            }
            query.fetch_all(pool).await
        })?)
    }

    /// An operator's retry of a tenant's delivery: a failed one goes back in the queue,
    /// a pending one waiting for its next attempt becomes due; either is due at `now`
    /// with a fresh attempt budget (`budget_start = attempts`: the numbering goes on),
    /// its lease cleared and `last_error` kept for the record. `NotFound` when the
    /// tenant has no delivery with this id that is failed, or pending and not leased
    /// (leased: an attempt is under way).
    ///
    /// A failed delivery is first in line again: in the same transaction, under its
    /// conversation's lock, the head of its (conversation, channel) is settled, so a
    /// later pending delivery waits behind it (`heads.rs`). A pending one keeps its
    /// place; settling its pair changes nothing. On a paused channel, or one whose
    /// breaker is open, either waits with the channel's others (`health.rs`).
    pub async fn retry_delivery(
        &self,
        tenant_id: TenantId,
        id: DeliveryId,
        now: Timestamp,
    ) -> StoreResult<Delivery> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE deliveries SET head = CASE WHEN status = 'pending' THEN head ELSE FALSE END, \
             status = 'pending', budget_start = attempts, next_attempt_at = $3, \
             locked_until = NULL, updated_at = $3, held = ",
            HELD_BY_CHANNEL,
            " WHERE tenant_id = $1 AND id = $2 AND (status = 'failed' OR (status = 'pending' \
             AND (locked_until IS NULL OR locked_until < $3))) RETURNING ",
            COLUMNS
        );
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            let delivery: Delivery = sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            lock_conversation!(self, tx, delivery.conversation_id);
            let _moved = settle_heads!(tx, delivery.conversation_id, delivery.channel_id);
            tx.commit().await?;
            Ok(delivery)
        })
    }

    /// Puts up to `limit` failed deliveries of a tenant's channel back in the queue, as
    /// [`Store::retry_delivery`] does for one: those of activities created in
    /// `created`, with ids above `after`, lowest ids first. Returns how many, and the
    /// highest id among them (where the next batch starts).
    ///
    /// One transaction: the rows, then the head of each (conversation, channel) they
    /// belong to, taking the conversations' locks in id order so that two replays, or a
    /// replay and the workers, never wait on each other in a cycle (`heads.rs`).
    pub async fn requeue_failed_batch(
        &self,
        tenant_id: TenantId,
        channel_id: ChannelId,
        created: std::ops::Range<Timestamp>,
        after: Option<DeliveryId>,
        limit: i64,
        now: Timestamp,
    ) -> StoreResult<(u64, Option<DeliveryId>)> {
        // The inner select walks `deliveries_channel_status_idx` in id order; the outer
        // condition is checked again on rows that changed meanwhile.
        const SQL: &str = const_format::concatcp!(
            "UPDATE deliveries SET status = 'pending', head = FALSE, \
             budget_start = attempts, next_attempt_at = $7, locked_until = NULL, updated_at = $7, \
             held = ",
            HELD_BY_CHANNEL,
            " WHERE status = 'failed' AND id IN (SELECT id FROM deliveries \
                 WHERE channel_id = $2 AND status = 'failed' AND id > $5 AND tenant_id = $1 \
                 AND inserted_at >= $3 AND inserted_at < $4 ORDER BY id LIMIT $6) \
             RETURNING id, conversation_id"
        );
        let after = after.unwrap_or(DeliveryId(uuid::Uuid::nil()));
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            let requeued: Vec<(DeliveryId, ConversationId)> = sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(channel_id)
                .bind(created.start)
                .bind(created.end)
                .bind(after)
                .bind(limit)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            let mut conversations: Vec<ConversationId> = requeued.iter().map(|(_, c)| *c).collect();
            conversations.sort_unstable();
            conversations.dedup();
            for conversation_id in conversations {
                lock_conversation!(self, tx, conversation_id);
                let _moved = settle_heads!(tx, conversation_id, channel_id);
            }
            tx.commit().await?;
            let last = requeued.iter().map(|(id, _)| *id).max();
            Ok((requeued.len() as u64, last))
        })
    }

    /// Whether a delivery on the channel is being attempted right now (leased), so a
    /// status report for a message id not yet recorded may be for its answer.
    pub async fn channel_has_attempt_in_flight(
        &self,
        tenant_id: TenantId,
        channel_id: ChannelId,
        now: Timestamp,
    ) -> StoreResult<bool> {
        const SQL: &str = "SELECT EXISTS (SELECT 1 FROM deliveries WHERE channel_id = $2 \
             AND tenant_id = $1 AND status = 'pending' AND locked_until > $3)";
        let (found,): (bool,) = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(channel_id)
                .bind(now)
                .fetch_one(pool)
                .await
        })?;
        Ok(found)
    }

    /// The delivery of a tenant's channel that the receiving system knows by
    /// `external_id` (status callbacks); the newest if the id was ever reused.
    pub async fn find_delivery_by_external_id(
        &self,
        tenant_id: TenantId,
        channel_id: ChannelId,
        external_id: &str,
    ) -> StoreResult<Option<Delivery>> {
        // `deliveries_external_id_idx` finds the row; tenant and channel scope it.
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM deliveries WHERE external_id = $3 AND tenant_id = $1 AND channel_id = $2 \
             ORDER BY id DESC LIMIT 1"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(channel_id)
                .bind(external_id)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Replaces a tenant's delivery's metadata, provided the row is unchanged since it
    /// was read (`updated_at` still `read_at`): a compare-and-set, so concurrent
    /// callbacks cannot overwrite each other's decision. Returns whether it was written.
    pub async fn update_delivery_metadata(
        &self,
        tenant_id: TenantId,
        id: DeliveryId,
        read_at: Timestamp,
        metadata: &Value,
        now: Timestamp,
    ) -> StoreResult<bool> {
        const SQL: &str = "UPDATE deliveries SET metadata = $4, updated_at = $5 \
             WHERE tenant_id = $1 AND id = $2 AND updated_at = $3";
        // Strictly later than what was read, so a second writer's compare fails even
        // within one microsecond.
        let now = if now.0 > read_at.0 {
            now
        } else {
            read_at.plus(std::time::Duration::from_micros(1))
        };
        let rows = writer!(self, |pool| {
            sqlx::query(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(read_at)
                .bind(sqlx::types::Json(metadata))
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(rows == 1)
    }
}
