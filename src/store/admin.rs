//! Operator queries for the admin panel: counts and lists across tenants. Only the
//! IP-restricted admin edge calls these; tenant-facing code never does.

use super::heads::{lock_conversation, settle_heads};
use super::health::HELD_BY_CHANNEL;
use super::{Store, StoreResult, reader, writer};
use crate::domain::{Channel, ChannelId, ChannelType, ConversationId, Delivery, Timestamp};

/// Delivery counts of one channel.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ChannelDeliveryStats {
    pub channel_id: ChannelId,
    pub channel_name: String,
    pub tenant_name: String,
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
}

/// A failed delivery with the name of its channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedDelivery {
    #[sqlx(flatten)]
    pub delivery: Delivery,
    pub channel_name: String,
}

impl Store {
    /// Delivery counts per channel (of one channel, when given), channels with
    /// failures first.
    pub async fn delivery_stats_by_channel(
        &self,
        channel: Option<ChannelId>,
        limit: i64,
    ) -> StoreResult<Vec<ChannelDeliveryStats>> {
        const SQL: &str = "SELECT c.id AS channel_id, c.name AS channel_name, t.name AS tenant_name, \
             SUM(CASE WHEN d.status = 'pending' THEN 1 ELSE 0 END) AS pending, \
             SUM(CASE WHEN d.status = 'delivered' THEN 1 ELSE 0 END) AS delivered, \
             SUM(CASE WHEN d.status = 'failed' THEN 1 ELSE 0 END) AS failed \
             FROM deliveries d JOIN channels c ON c.id = d.channel_id JOIN tenants t ON t.id = c.tenant_id \
             WHERE ($2 IS NULL OR d.channel_id = $2) \
             GROUP BY c.id, c.name, t.name ORDER BY failed DESC, pending DESC, c.id LIMIT $1";
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .bind(limit)
            .bind(channel)
            .fetch_all(pool)
            .await)?)
    }

    /// The newest failed deliveries, over all tenants.
    pub async fn recent_failed_deliveries(&self, limit: i64) -> StoreResult<Vec<FailedDelivery>> {
        const SQL: &str = "SELECT d.id, d.tenant_id, d.activity_id, d.channel_id, d.conversation_id, d.seq, \
             d.status, d.attempts, d.next_attempt_at, d.locked_until, d.last_error, d.delivered_at, \
             d.external_id, d.metadata, d.inserted_at, d.updated_at, c.name AS channel_name \
             FROM deliveries d JOIN channels c ON c.id = d.channel_id \
             WHERE d.status = 'failed' ORDER BY d.updated_at DESC LIMIT $1";
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .bind(limit)
            .fetch_all(pool)
            .await)?)
    }

    /// Activities created since `since`, over all tenants.
    pub async fn count_activities_since(&self, since: Timestamp) -> StoreResult<i64> {
        const SQL: &str = "SELECT COUNT(*) FROM activities WHERE inserted_at >= $1";
        let (n,): (i64,) = reader!(self, |pool| sqlx::query_as(SQL)
            .bind(since)
            .fetch_one(pool)
            .await)?;
        Ok(n)
    }

    /// A page of channels over all tenants, in id order, optionally of one type.
    pub async fn list_all_channels(
        &self,
        kind: Option<ChannelType>,
        after: Option<ChannelId>,
        limit: i64,
    ) -> StoreResult<Vec<Channel>> {
        const SQL: &str = "SELECT id, tenant_id, name, type, secret, config, status, inserted_at, updated_at \
             FROM channels WHERE ($1 IS NULL OR type = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3";
        let stored: Vec<Channel> = reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(kind.map(ChannelType::as_str))
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        stored.into_iter().map(|c| self.sealer().open(c)).collect()
    }

    /// The deliveries of a conversation's activities with `seq` in `first..=last`.
    pub async fn list_deliveries_for_seq_range(
        &self,
        conversation_id: crate::domain::ConversationId,
        first: i64,
        last: i64,
    ) -> StoreResult<Vec<Delivery>> {
        const SQL: &str = "SELECT id, tenant_id, activity_id, channel_id, conversation_id, seq, status, \
             attempts, next_attempt_at, locked_until, last_error, delivered_at, external_id, metadata, \
             inserted_at, updated_at FROM deliveries WHERE conversation_id = $1 AND seq >= $2 AND seq <= $3 \
             ORDER BY seq, id";
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(conversation_id)
                .bind(first)
                .bind(last)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Puts every failed delivery of a channel back in the queue, as
    /// [`Store::retry_failed_delivery`] does for one; returns how many.
    ///
    /// Then, in the same transaction, settles the head of each (conversation, channel)
    /// it touched, taking the conversations' locks in id order so that two retries, or
    /// a retry and the workers, never wait on each other in a cycle (`heads.rs`).
    pub async fn retry_failed_deliveries_of_channel(
        &self,
        channel_id: ChannelId,
    ) -> StoreResult<u64> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE deliveries SET status = 'pending', head = FALSE, attempts = 0, \
             next_attempt_at = $2, locked_until = NULL, updated_at = $2, held = ",
            HELD_BY_CHANNEL,
            " WHERE channel_id = $1 AND status = 'failed' RETURNING conversation_id"
        );
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            let retried: Vec<(ConversationId,)> = sqlx::query_as(SQL)
                .bind(channel_id)
                .bind(Timestamp::now())
                .fetch_all(&mut *tx)
                .await?;
            let mut conversations: Vec<ConversationId> = retried.iter().map(|r| r.0).collect();
            conversations.sort_unstable();
            conversations.dedup();
            for conversation_id in conversations {
                lock_conversation!(self, tx, conversation_id);
                let _moved = settle_heads!(tx, conversation_id, channel_id);
            }
            tx.commit().await?;
            Ok(retried.len() as u64)
        })
    }
}

impl Store {
    /// Records that the admin session `sid` was logged out; it would have expired at
    /// `expires_at` (Unix seconds). Forgets revocations that have expired.
    pub async fn revoke_admin_session(
        &self,
        sid: &str,
        expires_at: i64,
        now: i64,
    ) -> StoreResult<()> {
        const INSERT: &str = "INSERT INTO admin_session_revocations (sid, expires_at) VALUES ($1, $2) \
             ON CONFLICT (sid) DO NOTHING";
        const PURGE: &str = "DELETE FROM admin_session_revocations WHERE expires_at < $1";
        writer!(self, |pool| {
            sqlx::query(PURGE).bind(now).execute(pool).await?;
            sqlx::query(INSERT)
                .bind(sid)
                .bind(expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Whether the admin session `sid` was logged out.
    pub async fn admin_session_revoked(&self, sid: &str) -> StoreResult<bool> {
        const SQL: &str = "SELECT COUNT(*) FROM admin_session_revocations WHERE sid = $1";
        let count: i64 = reader!(self, |pool| {
            sqlx::query_scalar(SQL).bind(sid).fetch_one(pool).await?
        });
        Ok(count > 0)
    }
}
