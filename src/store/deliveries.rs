//! Delivery queries, scoped by tenant.

use serde_json::Value;

use super::heads::{lock_conversation, settle_heads};
use super::health::HELD_BY_CHANNEL;
use super::{Store, StoreResult, reader, writer};
use crate::domain::{
    ActivityId, ChannelId, Delivery, DeliveryId, DeliveryStatus, TenantId, Timestamp,
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

    /// Puts a failed delivery of a tenant back in the queue: `pending`, due now, with
    /// its attempts reset and its lease cleared; `last_error` stays for the record.
    /// `NotFound` when the tenant has no *failed* delivery with this id.
    ///
    /// An earlier delivery is first in line again: in the same transaction, under its
    /// conversation's lock, the head of its (conversation, channel) is settled, so a
    /// later pending delivery waits behind it (`heads.rs`). On a paused channel, or one
    /// whose breaker is open, it waits with the channel's others (`health.rs`).
    pub async fn retry_failed_delivery(
        &self,
        tenant_id: TenantId,
        id: DeliveryId,
    ) -> StoreResult<Delivery> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE deliveries SET status = 'pending', head = FALSE, attempts = 0, \
             next_attempt_at = $3, locked_until = NULL, updated_at = $3, held = ",
            HELD_BY_CHANNEL,
            " WHERE tenant_id = $1 AND id = $2 AND status = 'failed' RETURNING ",
            COLUMNS
        );
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            let delivery: Delivery = sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(Timestamp::now())
                .fetch_one(&mut *tx)
                .await?;
            lock_conversation!(self, tx, delivery.conversation_id);
            let _moved = settle_heads!(tx, delivery.conversation_id, delivery.channel_id);
            tx.commit().await?;
            Ok(delivery)
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
