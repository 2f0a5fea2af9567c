//! Routing rule queries, scoped by tenant.

use super::{Store, StoreResult, reader, writer};
use crate::domain::{ChannelId, ChannelType, Route, RouteDirection, RouteId, TenantId, Timestamp};

/// One forwarding target of a channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RouteTarget {
    pub target_channel_id: ChannelId,
    #[sqlx(try_from = "String")]
    pub direction: RouteDirection,
    #[sqlx(try_from = "String")]
    pub target_type: ChannelType,
}

const COLUMNS: &str =
    "id, tenant_id, source_channel_id, target_channel_id, direction, inserted_at, updated_at";

impl Store {
    /// Inserts a route; the caller has checked both channels belong to the tenant.
    pub async fn insert_route(
        &self,
        tenant_id: TenantId,
        source: ChannelId,
        target: ChannelId,
        direction: RouteDirection,
    ) -> StoreResult<Route> {
        const SQL: &str = const_format::concatcp!(
            "INSERT INTO routes (id, tenant_id, source_channel_id, target_channel_id, direction, inserted_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING ",
            COLUMNS
        );
        Ok(writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(RouteId::new())
                .bind(tenant_id)
                .bind(source)
                .bind(target)
                .bind(direction.as_str())
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?)
    }

    /// Every route of a tenant, oldest first.
    pub async fn list_routes(&self, tenant_id: TenantId) -> StoreResult<Vec<Route>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM routes WHERE tenant_id = $1 ORDER BY id"
        );
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .bind(tenant_id)
            .fetch_all(pool)
            .await)?)
    }

    /// Where activities of conversations on `source` are forwarded: the targets of its
    /// routes whose channel is active.
    pub async fn list_route_targets(
        &self,
        tenant_id: TenantId,
        source: ChannelId,
    ) -> StoreResult<Vec<RouteTarget>> {
        const SQL: &str = "SELECT r.target_channel_id, r.direction, t.type AS target_type \
             FROM routes r JOIN channels t ON t.id = r.target_channel_id \
             WHERE r.tenant_id = $1 AND r.source_channel_id = $2 AND t.status = 'active' ORDER BY r.id";
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(source)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Deletes a route of a tenant.
    pub async fn delete_route(&self, tenant_id: TenantId, id: RouteId) -> StoreResult<()> {
        let done = writer!(self, |pool| {
            sqlx::query("DELETE FROM routes WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if done == 0 {
            return Err(super::StoreError::NotFound);
        }
        Ok(())
    }
}
