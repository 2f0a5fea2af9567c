//! Deliveries: one activity owed to one channel, the durable job of the outbox.

use serde_json::Value;

use super::{ActivityId, ChannelId, ConversationId, DeliveryId, TenantId, Timestamp, string_enum};

string_enum! {
    /// Life cycle of a delivery: `pending` until delivered or given up on.
    pub enum DeliveryStatus { Pending => "pending", Delivered => "delivered", Failed => "failed" }
}

/// A delivery row, serialized as the REST API returns it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: DeliveryId,
    pub tenant_id: TenantId,
    pub activity_id: ActivityId,
    pub channel_id: ChannelId,
    pub conversation_id: ConversationId,
    /// The activity's `seq`, copied so deliveries of a conversation keep their order.
    pub seq: i64,
    #[sqlx(try_from = "String")]
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<Timestamp>,
    #[serde(skip)]
    pub locked_until: Option<Timestamp>,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
    /// The receiving system's id for the delivered message (e.g. a `wamid`).
    pub external_id: Option<String>,
    #[sqlx(json)]
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
    /// The request that created the activity; for logs only, so read by the workers'
    /// queries and absent (`None`) from the others.
    #[serde(skip)]
    #[sqlx(default)]
    pub request_id: Option<String>,
}
