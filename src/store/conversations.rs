//! Conversation queries, scoped by tenant.

use serde_json::Value;

use super::{Store, StoreResult, reader, writer};
use crate::domain::{
    ChannelId, ChannelStatus, ChannelType, Conversation, ConversationId, ConversationStatus,
    TenantId, Timestamp,
};

const COLUMNS: &str =
    "id, tenant_id, channel_id, external_id, status, metadata, last_seq, inserted_at, updated_at";

/// A conversation to create on an active channel of the tenant.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub channel_id: ChannelId,
    pub external_id: Option<String>,
    pub metadata: Value,
}

/// Filters and keyset cursor for listing conversations, newest first.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub channel_id: Option<ChannelId>,
    pub status: Option<ConversationStatus>,
    /// Return conversations older than this one (ids are time-ordered).
    pub before: Option<ConversationId>,
    pub limit: i64,
}

/// A conversation with what `ingest` needs to know of its channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationContext {
    #[sqlx(flatten)]
    pub conversation: Conversation,
    #[sqlx(try_from = "String")]
    pub channel_type: ChannelType,
    #[sqlx(try_from = "String")]
    pub channel_status: ChannelStatus,
}

const CONTEXT: &str = "SELECT c.id, c.tenant_id, c.channel_id, c.external_id, c.status, \
     c.metadata, c.last_seq, c.inserted_at, c.updated_at, ch.type AS channel_type, \
     ch.status AS channel_status FROM conversations c JOIN channels ch ON ch.id = c.channel_id \
     WHERE c.tenant_id = $1 AND c.id = $2";

impl Store {
    /// Inserts a conversation.
    pub async fn insert_conversation(
        &self,
        tenant_id: TenantId,
        new: NewConversation,
    ) -> StoreResult<Conversation> {
        const SQL: &str = const_format::concatcp!(
            "INSERT INTO conversations (id, tenant_id, channel_id, external_id, status, metadata, last_seq, inserted_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'active', $5, 0, $6, $6) RETURNING ",
            COLUMNS
        );
        Ok(writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(ConversationId::new())
                .bind(tenant_id)
                .bind(new.channel_id)
                .bind(new.external_id.as_deref())
                .bind(sqlx::types::Json(&new.metadata))
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?)
    }

    /// One conversation of a tenant.
    pub async fn get_conversation(
        &self,
        tenant_id: TenantId,
        id: ConversationId,
    ) -> StoreResult<Conversation> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM conversations WHERE tenant_id = $1 AND id = $2"
        );
        self.fetch_scoped(SQL, tenant_id, id).await
    }

    /// A conversation by id alone, for the operator's admin panel.
    pub async fn get_conversation_unscoped(&self, id: ConversationId) -> StoreResult<Conversation> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM conversations WHERE id = $1");
        self.fetch_by_id(SQL, id).await
    }

    /// One conversation of a tenant with its channel's type and status.
    pub async fn get_conversation_context(
        &self,
        tenant_id: TenantId,
        id: ConversationId,
    ) -> StoreResult<ConversationContext> {
        self.fetch_scoped(CONTEXT, tenant_id, id).await
    }

    /// [`Store::get_conversation_context`], served from the read cache when this node
    /// read it within the last second: for `ingest`, which checks the conversation's
    /// status again in the append's transaction. Its `last_seq` may be behind.
    pub async fn cached_conversation_context(
        &self,
        tenant_id: TenantId,
        id: ConversationId,
    ) -> StoreResult<ConversationContext> {
        let cache = &self.cache().contexts;
        let generation = self.cache().generation();
        if let Some(context) = cache.get(&(tenant_id, id), generation) {
            return Ok(context);
        }
        let context: ConversationContext = self.fetch_scoped(CONTEXT, tenant_id, id).await?;
        cache.put((tenant_id, id), context.clone(), generation);
        Ok(context)
    }

    /// The active conversation on a channel with an external party, if any.
    pub async fn find_active_conversation(
        &self,
        tenant_id: TenantId,
        channel_id: ChannelId,
        external_id: &str,
    ) -> StoreResult<Option<Conversation>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM conversations \
             WHERE tenant_id = $1 AND channel_id = $2 AND external_id = $3 AND status = 'active'"
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

    /// A page of a tenant's conversations, newest first.
    pub async fn list_conversations(
        &self,
        tenant_id: TenantId,
        filter: &ConversationFilter,
    ) -> StoreResult<Vec<Conversation>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM conversations WHERE tenant_id = $1 \
             AND ($2 IS NULL OR channel_id = $2) AND ($3 IS NULL OR status = $3) \
             AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(filter.channel_id)
                .bind(filter.status.map(ConversationStatus::as_str))
                .bind(filter.before)
                .bind(filter.limit)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Closes a conversation; closing a closed one changes nothing.
    pub async fn close_conversation(
        &self,
        tenant_id: TenantId,
        id: ConversationId,
    ) -> StoreResult<Conversation> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE conversations SET status = 'closed', \
             updated_at = CASE WHEN status = 'closed' THEN updated_at ELSE $3 END \
             WHERE tenant_id = $1 AND id = $2 RETURNING ",
            COLUMNS
        );
        let conversation = writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(id)
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?;
        self.cache().invalidate();
        Ok(conversation)
    }
}
