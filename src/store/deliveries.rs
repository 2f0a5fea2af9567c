//! Delivery queries, scoped by tenant.

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
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .fetch_one(pool)
                .await
        })?)
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
    pub async fn retry_failed_delivery(
        &self,
        tenant_id: TenantId,
        id: DeliveryId,
    ) -> StoreResult<Delivery> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, \
             locked_until = NULL, updated_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'failed' RETURNING ",
            COLUMNS
        );
        Ok(writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?)
    }
}
