//! The attempt log: reads of `delivery_attempts`. Rows are written only with the
//! outcomes they log (`queue.rs`) and go with their delivery (a foreign key that
//! cascades), so pruning a delivery prunes its attempts.

use super::{Store, StoreResult, reader};
use crate::domain::{ConversationId, DeliveryAttempt, DeliveryId, TenantId};

const COLUMNS: &str = "delivery_id, tenant_id, attempt, started_at, duration_ms, outcome, \
     http_status, error, response_body, node";

impl Store {
    /// A page of the attempts of a tenant's delivery, oldest first, numbered above
    /// `after`. Empty for a delivery of another tenant, as for a missing one.
    pub async fn list_delivery_attempts(
        &self,
        tenant_id: TenantId,
        delivery_id: DeliveryId,
        after: i32,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        // `delivery_attempts_pkey` finds the rows in order; the tenant scopes them.
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM delivery_attempts WHERE delivery_id = $2 AND tenant_id = $1 AND attempt > $3 \
             ORDER BY attempt LIMIT $4"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(delivery_id)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?)
    }

    /// The attempts of the deliveries of a conversation's activities with `seq` in
    /// `first..=last`, by delivery and then oldest first (the admin panel, beside
    /// [`Store::list_deliveries_for_seq_range`]).
    pub async fn list_attempts_for_seq_range(
        &self,
        conversation_id: ConversationId,
        first: i64,
        last: i64,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        const SQL: &str = "SELECT a.delivery_id, a.tenant_id, a.attempt, a.started_at, \
             a.duration_ms, a.outcome, a.http_status, a.error, a.response_body, a.node \
             FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id \
             WHERE d.conversation_id = $1 AND d.seq >= $2 AND d.seq <= $3 \
             ORDER BY a.delivery_id, a.attempt";
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(conversation_id)
                .bind(first)
                .bind(last)
                .fetch_all(pool)
                .await
        })?)
    }
}
