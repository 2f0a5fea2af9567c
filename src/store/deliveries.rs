//! Delivery queries, scoped by tenant.

use super::{Store, StoreResult, reader};
use crate::domain::{ActivityId, Delivery, TenantId};

const COLUMNS: &str = "id, tenant_id, activity_id, channel_id, conversation_id, seq, status, attempts, \
     next_attempt_at, locked_until, last_error, delivered_at, external_id, metadata, inserted_at, updated_at";

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
}
