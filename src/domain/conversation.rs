//! Conversations: ordered streams of activities on one channel.

use serde_json::Value;

use super::{ChannelId, ConversationId, TenantId, Timestamp, string_enum};

string_enum! {
    /// Closed conversations accept no new activities.
    pub enum ConversationStatus { Active => "active", Closed => "closed" }
}

/// A conversation, serialized exactly as the REST API returns it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    /// The external party's id on the channel (e.g. a WhatsApp `wa_id`); unique per
    /// channel among active conversations.
    pub external_id: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ConversationStatus,
    #[sqlx(json)]
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The `seq` of the newest activity; 0 when there is none.
    pub last_seq: i64,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}
