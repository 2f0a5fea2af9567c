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
    pub external_id: Option<ExternalIdSearch>,
    /// Return conversations older than this one (ids are time-ordered).
    pub before: Option<ConversationId>,
    pub limit: i64,
}

/// An external party to look for, in the form each channel type stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdSearch {
    /// Compared with the external ids of channels that keep them verbatim.
    pub verbatim: String,
    /// Compared with those of WhatsApp channels: the E.164 form, when the text is a
    /// phone number (otherwise nothing there matches).
    pub phone: Option<String>,
}

impl ExternalIdSearch {
    /// A search for `raw` as a client wrote it.
    pub fn new(raw: &str) -> Self {
        Self {
            verbatim: raw.to_owned(),
            phone: crate::domain::normalise_phone(raw).ok(),
        }
    }
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
        // An external id is compared in the form its channel's type stores: `$7` (the
        // E.164 form) on WhatsApp channels, `$6` verbatim on the others. The `IN` leads
        // the planner to `conversations_tenant_external_id_idx`.
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM conversations WHERE tenant_id = $1 \
             AND ($2 IS NULL OR channel_id = $2) AND ($3 IS NULL OR status = $3) \
             AND ($4 IS NULL OR id < $4) \
             AND ($6 IS NULL OR (external_id IN ($6, $7) AND external_id = CASE WHEN EXISTS (\
             SELECT 1 FROM channels ch WHERE ch.id = conversations.channel_id \
             AND ch.type IN ('whatsapp_meta', 'whatsapp_infobip')) THEN $7 ELSE $6 END)) \
             ORDER BY id DESC LIMIT $5"
        );
        let search = filter.external_id.as_ref();
        let verbatim = search.map(|s| s.verbatim.as_str());
        // Without a phone form nothing on a WhatsApp channel matches; `$7` must still
        // be a text for the `IN`.
        let phone = search.map(|s| s.phone.as_deref().unwrap_or(""));
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(filter.channel_id)
                .bind(filter.status.map(ConversationStatus::as_str))
                .bind(filter.before)
                .bind(filter.limit)
                .bind(verbatim)
                .bind(phone)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Active conversations of every tenant whose last activity (or opening, or
    /// reopening) is older than `cutoff`, oldest first: the idle closer's candidates.
    /// Not scoped by tenant: the closer serves the whole installation, and closes each
    /// one with its tenant's scope.
    pub async fn list_idle_conversations(
        &self,
        cutoff: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<(TenantId, ConversationId)>> {
        const SQL: &str = "SELECT tenant_id, id FROM conversations \
             WHERE status = 'active' AND updated_at < $1 ORDER BY updated_at LIMIT $2";
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(cutoff)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?)
    }
}
