//! Channel queries, scoped by tenant.

use serde_json::Value;

use super::{Store, StoreResult, reader, writer};
use crate::domain::{Channel, ChannelId, ChannelStatus, ChannelType, TenantId, Timestamp};

const COLUMNS: &str = "id, tenant_id, name, type, secret, config, status, inserted_at, updated_at";

/// A channel to insert; its config has been validated by its adapter.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    pub kind: ChannelType,
    pub secret: String,
    pub config: Value,
}

/// Filters and keyset cursor for listing channels.
#[derive(Debug, Clone, Default)]
pub struct ChannelFilter {
    pub kind: Option<ChannelType>,
    pub status: Option<ChannelStatus>,
    /// Return channels with ids greater than this one.
    pub after: Option<ChannelId>,
    pub limit: i64,
}

/// Fields of a channel to change; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct ChannelUpdate {
    pub name: Option<String>,
    pub config: Option<Value>,
    pub status: Option<ChannelStatus>,
    pub secret: Option<String>,
}

impl Store {
    /// Inserts a channel for a tenant.
    pub async fn insert_channel(
        &self,
        tenant_id: TenantId,
        new: NewChannel,
    ) -> StoreResult<Channel> {
        const SQL: &str = const_format::concatcp!(
            "INSERT INTO channels (id, tenant_id, name, type, secret, config, status, inserted_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $7) RETURNING ",
            COLUMNS
        );
        Ok(writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(ChannelId::new())
                .bind(tenant_id)
                .bind(&new.name)
                .bind(new.kind.as_str())
                .bind(&new.secret)
                .bind(sqlx::types::Json(&new.config))
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?)
    }

    /// One channel of a tenant.
    pub async fn get_channel(&self, tenant_id: TenantId, id: ChannelId) -> StoreResult<Channel> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM channels WHERE tenant_id = $1 AND id = $2"
        );
        self.fetch_scoped(SQL, tenant_id, id).await
    }

    /// A channel by id alone, for inbound webhooks, which are authenticated by the
    /// channel's own signature rather than by a tenant credential.
    pub async fn get_channel_unscoped(&self, id: ChannelId) -> StoreResult<Channel> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM channels WHERE id = $1");
        self.fetch_by_id(SQL, id).await
    }

    /// A page of a tenant's channels in id order.
    pub async fn list_channels(
        &self,
        tenant_id: TenantId,
        filter: &ChannelFilter,
    ) -> StoreResult<Vec<Channel>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM channels WHERE tenant_id = $1 \
             AND ($2 IS NULL OR type = $2) AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR id > $4) \
             ORDER BY id LIMIT $5"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(filter.kind.map(ChannelType::as_str))
                .bind(filter.status.map(ChannelStatus::as_str))
                .bind(filter.after)
                .bind(filter.limit)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Applies an update to one channel of a tenant.
    pub async fn update_channel(
        &self,
        tenant_id: TenantId,
        id: ChannelId,
        update: ChannelUpdate,
    ) -> StoreResult<Channel> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE channels SET name = COALESCE($3, name), config = COALESCE($4, config), \
             status = COALESCE($5, status), secret = COALESCE($6, secret), updated_at = $7 \
             WHERE tenant_id = $1 AND id = $2 RETURNING ",
            COLUMNS
        );
        Ok(writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(update.name.as_deref())
                .bind(update.config.as_ref().map(sqlx::types::Json))
                .bind(update.status.map(ChannelStatus::as_str))
                .bind(update.secret.as_deref())
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?)
    }
}
