//! Operational events (`ops_events`) and the tenants' ops webhooks (`ops_webhooks`).
//!
//! An event is written by [`record_ops_events!`] in the transaction of what it reports
//! (a delivery's failed outcome, a breaker's transition, a pause), so there is an event
//! exactly when the change committed. It is marked for sending when its tenant has an
//! ops webhook at that moment; the sender then leases due events as the delivery
//! workers lease deliveries ([`Store::claim_ops_events`]) and records each attempt
//! under its lease ([`Store::record_ops_attempt`]).

use serde_json::Value;
use sqlx::types::Json;

use super::{Backend, Store, StoreError, StoreResult, reader, writer};
use crate::domain::{
    Channel, ChannelId, DeliveryId, OpsDispatch, OpsDispatchStatus, OpsEvent, OpsEventId,
    OpsEventType, OpsWebhook, TenantId, Timestamp,
};

/// Writes one event, pending for the ops webhook when its tenant has one; `$7` is the
/// time of what it reports.
pub(super) const INSERT_EVENT: &str = "INSERT INTO ops_events (id, tenant_id, type, channel_id, \
     delivery_id, data, created_at, webhook_status, next_attempt_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, \
     CASE WHEN EXISTS (SELECT 1 FROM ops_webhooks w WHERE w.tenant_id = $2) \
         THEN 'pending' ELSE NULL END, $7";

/// Writes `$events` (a slice of [`crate::domain::NewOpsEvent`]) at `$now` in the open
/// transaction `$tx`, with [`INSERT_EVENT`].
macro_rules! record_ops_events {
    ($tx:expr, $events:expr, $now:expr) => {{
        for event in $events {
            sqlx::query($crate::store::ops::INSERT_EVENT)
                .bind($crate::domain::OpsEventId::new())
                .bind(event.tenant_id)
                .bind(event.kind.as_str())
                .bind(event.channel_id)
                .bind(event.delivery_id)
                .bind(sqlx::types::Json(&event.data))
                .bind($now)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(super) use record_ops_events;

const COLUMNS: &str = "id, tenant_id, type, channel_id, delivery_id, data, created_at, \
     webhook_status, attempts, last_error, delivered_at";

/// An `ops_events` row as stored.
#[derive(sqlx::FromRow)]
struct EventRow {
    id: OpsEventId,
    tenant_id: TenantId,
    #[sqlx(rename = "type")]
    kind: String,
    channel_id: Option<ChannelId>,
    delivery_id: Option<DeliveryId>,
    data: Json<Value>,
    created_at: Timestamp,
    webhook_status: Option<String>,
    attempts: i32,
    last_error: Option<String>,
    delivered_at: Option<Timestamp>,
}

fn decode_error(column: &str, message: String) -> StoreError {
    StoreError::Db(sqlx::Error::ColumnDecode {
        index: column.into(),
        source: message.into(),
    })
}

impl TryFrom<EventRow> for OpsEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        let kind: OpsEventType = row.kind.parse().map_err(|e| decode_error("type", e))?;
        let webhook = row
            .webhook_status
            .map(|s| s.parse::<OpsDispatchStatus>())
            .transpose()
            .map_err(|e| decode_error("webhook_status", e))?
            .map(|status| OpsDispatch {
                status,
                attempts: row.attempts,
                last_error: row.last_error,
                delivered_at: row.delivered_at,
            });
        Ok(OpsEvent {
            id: row.id,
            tenant_id: row.tenant_id,
            kind,
            channel_id: row.channel_id,
            delivery_id: row.delivery_id,
            data: row.data.0,
            created_at: row.created_at,
            webhook,
        })
    }
}

fn events(rows: Vec<EventRow>) -> StoreResult<Vec<OpsEvent>> {
    rows.into_iter().map(OpsEvent::try_from).collect()
}

/// An event of the admin panel's feed, with its tenant's name and its channel's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantOpsEvent {
    #[serde(flatten)]
    pub event: OpsEvent,
    pub tenant_name: String,
    /// `None` for an event about no channel, or one since deleted.
    pub channel_name: Option<String>,
}

/// How an attempt to send an event to the ops webhook ended.
#[derive(Debug, Clone, PartialEq)]
pub enum OpsAttemptEnd {
    Delivered,
    RetryAt { at: Timestamp, error: String },
    Failed { error: String },
}

impl Store {
    /// Makes a tenant's channel its ops webhook, replacing the one it had.
    pub async fn set_ops_webhook(
        &self,
        tenant_id: TenantId,
        channel_id: ChannelId,
        now: Timestamp,
    ) -> StoreResult<OpsWebhook> {
        const SQL: &str = "INSERT INTO ops_webhooks (tenant_id, channel_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (tenant_id) DO UPDATE \
             SET channel_id = excluded.channel_id, updated_at = excluded.updated_at \
             RETURNING tenant_id, channel_id, created_at, updated_at";
        Ok(writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(channel_id)
                .bind(now)
                .fetch_one(pool)
                .await
        })?)
    }

    /// A tenant's ops webhook; `NotFound` when it has none.
    pub async fn get_ops_webhook(&self, tenant_id: TenantId) -> StoreResult<OpsWebhook> {
        const SQL: &str = "SELECT tenant_id, channel_id, created_at, updated_at \
             FROM ops_webhooks WHERE tenant_id = $1";
        let row: Option<OpsWebhook> = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .fetch_optional(pool)
                .await
        })?;
        row.ok_or(StoreError::NotFound)
    }

    /// Removes a tenant's ops webhook: events from now on are recorded without being
    /// sent, and those still waiting are given up when their turn comes. `NotFound`
    /// when it had none.
    pub async fn delete_ops_webhook(&self, tenant_id: TenantId) -> StoreResult<()> {
        const SQL: &str = "DELETE FROM ops_webhooks WHERE tenant_id = $1";
        let done = writer!(self, |pool| {
            sqlx::query(SQL)
                .bind(tenant_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// A page of a tenant's events, newest first, older than `before` when given,
    /// of one type when given.
    pub async fn list_ops_events(
        &self,
        tenant_id: TenantId,
        kind: Option<OpsEventType>,
        before: Option<OpsEventId>,
        limit: i64,
    ) -> StoreResult<Vec<OpsEvent>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM ops_events WHERE tenant_id = $1 AND ($2 IS NULL OR type = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        );
        let rows: Vec<EventRow> = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(kind.map(OpsEventType::as_str))
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        events(rows)
    }

    /// The events of every tenant written at `since` or later, newest first, at most
    /// `limit`, with their tenants' and channels' names: the admin panel's feed.
    pub async fn recent_ops_events(
        &self,
        since: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<TenantOpsEvent>> {
        const SQL: &str = "SELECT e.id, e.tenant_id, e.type, e.channel_id, e.delivery_id, \
             e.data, e.created_at, e.webhook_status, e.attempts, e.last_error, e.delivered_at, \
             t.name AS tenant_name, c.name AS channel_name \
             FROM ops_events e JOIN tenants t ON t.id = e.tenant_id \
             LEFT JOIN channels c ON c.id = e.channel_id \
             WHERE e.created_at >= $1 ORDER BY e.created_at DESC, e.id DESC LIMIT $2";
        #[derive(sqlx::FromRow)]
        struct Named {
            #[sqlx(flatten)]
            row: EventRow,
            tenant_name: String,
            channel_name: Option<String>,
        }
        let rows: Vec<Named> = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(since)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter()
            .map(|n| {
                Ok(TenantOpsEvent {
                    event: n.row.try_into()?,
                    tenant_name: n.tenant_name,
                    channel_name: n.channel_name,
                })
            })
            .collect()
    }

    /// Leases up to `limit` events due for the ops webhook until `lease_until`, oldest
    /// due first. PostgreSQL skips rows another node is claiming right now. The usual
    /// answer, nothing due, is a read alone: no write transaction (SQLite's one writer)
    /// every second on every node.
    pub async fn claim_ops_events(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<OpsEvent>> {
        const ANY_DUE: &str = "SELECT 1 FROM ops_events WHERE webhook_status = 'pending' \
             AND next_attempt_at <= $1 AND (locked_until IS NULL OR locked_until <= $1) LIMIT 1";
        let any: Option<(i32,)> = reader!(self, |pool| {
            sqlx::query_as(ANY_DUE).bind(now).fetch_optional(pool).await
        })?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        const DUE: &str = "SELECT id FROM ops_events WHERE webhook_status = 'pending' \
             AND next_attempt_at <= $1 AND (locked_until IS NULL OR locked_until <= $1) \
             ORDER BY next_attempt_at LIMIT $3";
        const SQLITE: &str = const_format::concatcp!(
            "UPDATE ops_events SET locked_until = $2 WHERE id IN (",
            DUE,
            ") RETURNING ",
            COLUMNS
        );
        const POSTGRES: &str = const_format::concatcp!(
            "UPDATE ops_events SET locked_until = $2 WHERE id IN (",
            DUE,
            " FOR UPDATE SKIP LOCKED) RETURNING ",
            COLUMNS
        );
        let sql = match self.backend() {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        };
        let rows: Vec<EventRow> = writer!(self, |pool| {
            sqlx::query_as(sql)
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        events(rows)
    }

    /// The channel a tenant's events are sent to, opened; `NotFound` when the tenant
    /// has no ops webhook.
    pub async fn ops_webhook_channel(&self, tenant_id: TenantId) -> StoreResult<Channel> {
        let webhook = self.get_ops_webhook(tenant_id).await?;
        self.get_channel(tenant_id, webhook.channel_id).await
    }

    /// Records how an attempt to send an event under `lease` ended; returns whether the
    /// lease still held (`false`: another node took the event over and nothing was
    /// written).
    pub async fn record_ops_attempt(
        &self,
        id: OpsEventId,
        lease: Timestamp,
        now: Timestamp,
        end: &OpsAttemptEnd,
    ) -> StoreResult<bool> {
        const SQL: &str = "UPDATE ops_events SET webhook_status = $3, attempts = attempts + 1, \
             next_attempt_at = $4, last_error = $5, \
             delivered_at = CASE WHEN $3 = 'delivered' THEN $6 ELSE delivered_at END, \
             locked_until = NULL \
             WHERE id = $1 AND locked_until = $2 AND webhook_status = 'pending'";
        let (status, next, error) = match end {
            OpsAttemptEnd::Delivered => (OpsDispatchStatus::Delivered, None, None),
            OpsAttemptEnd::RetryAt { at, error } => {
                (OpsDispatchStatus::Pending, Some(*at), Some(error.as_str()))
            }
            OpsAttemptEnd::Failed { error } => {
                (OpsDispatchStatus::Failed, None, Some(error.as_str()))
            }
        };
        let done = writer!(self, |pool| {
            sqlx::query(SQL)
                .bind(id)
                .bind(lease)
                .bind(status.as_str())
                .bind(next)
                .bind(error)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Deletes the events written before `cutoff` that are not waiting to be sent,
    /// `batch` per transaction; returns how many.
    pub async fn prune_ops_events(&self, cutoff: Timestamp, batch: i64) -> StoreResult<u64> {
        const SQL: &str = "DELETE FROM ops_events WHERE id IN (SELECT id FROM ops_events \
             WHERE created_at < $1 \
             AND (webhook_status IS NULL OR webhook_status <> 'pending') LIMIT $2)";
        let mut total = 0;
        loop {
            let deleted = writer!(self, |pool| {
                sqlx::query(SQL)
                    .bind(cutoff)
                    .bind(batch)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected())
            })?;
            total += deleted;
            if deleted < batch as u64 {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}
