//! Channel queries, scoped by tenant. Credentials are sealed on the way in and opened
//! on the way out (`sealing`): callers see plaintext channels.

use serde_json::Value;

use super::heads::reorder_channel;
use super::{Store, StoreError, StoreResult, reader, writer};
use crate::domain::{
    Channel, ChannelId, ChannelStatus, ChannelType, DeliveryOrdering, TenantId, Timestamp,
};

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
            "INSERT INTO channels (id, tenant_id, name, type, secret, config, status, inserted_at, updated_at, \
             ordering) VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $7, $8) RETURNING ",
            COLUMNS
        );
        let id = ChannelId::new();
        let secret = self.sealer().seal_secret(id, &new.secret)?;
        let config = self.sealer().seal_config(id, new.kind, &new.config)?;
        let stored: Channel = writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(id)
                .bind(tenant_id)
                .bind(&new.name)
                .bind(new.kind.as_str())
                .bind(&secret)
                .bind(sqlx::types::Json(&config))
                .bind(Timestamp::now())
                .bind(DeliveryOrdering::of_config(&new.config).as_str())
                .fetch_one(pool)
                .await
        })?;
        self.sealer().open(stored)
    }

    /// One channel of a tenant.
    pub async fn get_channel(&self, tenant_id: TenantId, id: ChannelId) -> StoreResult<Channel> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM channels WHERE tenant_id = $1 AND id = $2"
        );
        let stored = self.fetch_scoped(SQL, tenant_id, id).await?;
        self.sealer().open(stored)
    }

    /// A channel by id alone, for inbound webhooks, which are authenticated by the
    /// channel's own signature rather than by a tenant credential.
    pub async fn get_channel_unscoped(&self, id: ChannelId) -> StoreResult<Channel> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM channels WHERE id = $1");
        let stored = self.fetch_by_id(SQL, id).await?;
        self.sealer().open(stored)
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
        let stored: Vec<Channel> = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(filter.kind.map(ChannelType::as_str))
                .bind(filter.status.map(ChannelStatus::as_str))
                .bind(filter.after)
                .bind(filter.limit)
                .fetch_all(pool)
                .await
        })?;
        stored.into_iter().map(|c| self.sealer().open(c)).collect()
    }

    /// Applies an update to one channel of a tenant. A new config ends an open
    /// breaker's cool-down ([`Store::end_cooldown`]).
    ///
    /// A config whose `ordering` differs from the channel's moves the head flags of its
    /// pending deliveries in the same transaction (`heads.rs`): with `none` every one
    /// becomes claimable, with `conversation` only the first of each conversation.
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
        let secret = match &update.secret {
            Some(secret) => Some(self.sealer().seal_secret(id, secret)?),
            None => None,
        };
        let config = match &update.config {
            // Which config values are credentials depends on the channel's type.
            Some(config) => {
                const KIND: &str = "SELECT type FROM channels WHERE tenant_id = $1 AND id = $2";
                let (kind,): (String,) = self.fetch_scoped(KIND, tenant_id, id).await?;
                let kind = ChannelType::try_from(kind).map_err(StoreError::Config)?;
                Some(self.sealer().seal_config(id, kind, config)?)
            }
            None => None,
        };
        // The copy of `config.ordering` the queue reads; changed only when it differs.
        const SET_ORDERING: &str =
            "UPDATE channels SET ordering = $2 WHERE id = $1 AND ordering <> $2";
        let ordering = update.config.as_ref().map(DeliveryOrdering::of_config);
        let stored: Channel = writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            let stored: Channel = sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(update.name.as_deref())
                .bind(config.as_ref().map(sqlx::types::Json))
                .bind(update.status.map(ChannelStatus::as_str))
                .bind(secret.as_deref())
                .bind(Timestamp::now())
                .fetch_one(&mut *tx)
                .await?;
            if let Some(ordering) = ordering {
                let changed = sqlx::query(SET_ORDERING)
                    .bind(id)
                    .bind(ordering.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed == 1 {
                    let moved = reorder_channel!(self, tx, id, ordering);
                    tracing::info!(channel_id = %id, %ordering, moved, "delivery order changed");
                }
            }
            tx.commit().await?;
            stored
        });
        self.cache().invalidate();
        // A new config deserves a probe now, not at the end of an open breaker's
        // cool-down. Its own statement: health rows are locked before delivery rows,
        // and the transaction above moved delivery rows.
        if update.config.is_some() {
            self.probe_soon(id, "config changed").await;
        }
        self.sealer().open(stored)
    }
}
