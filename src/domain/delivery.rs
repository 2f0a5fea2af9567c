//! Deliveries: one activity owed to one channel, the durable job of the outbox.

use serde_json::Value;

use super::{ActivityId, ChannelId, ConversationId, DeliveryId, TenantId, Timestamp, string_enum};

string_enum! {
    /// Life cycle of a delivery: `pending` until delivered or given up on.
    pub enum DeliveryStatus { Pending => "pending", Delivered => "delivered", Failed => "failed" }
}

string_enum! {
    /// What one attempt recorded on its delivery: delivered, scheduled again, or
    /// failed for good.
    pub enum AttemptOutcome { Delivered => "delivered", Retry => "retry", Failed => "failed" }
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
    /// Attempts made so far, over every manual retry: the number of the latest one.
    pub attempts: i32,
    /// Attempts made before the last manual retry. The attempt budget counts from here,
    /// so a retry grants a fresh budget while the numbering goes on.
    #[serde(skip)]
    #[sqlx(default)]
    pub budget_start: i32,
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

/// One attempt of a delivery whose outcome was recorded, as the attempt log keeps it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    pub delivery_id: DeliveryId,
    pub tenant_id: TenantId,
    /// 1 for the first attempt; numbering goes on across manual retries.
    pub attempt: i32,
    pub started_at: Timestamp,
    pub duration_ms: i64,
    #[sqlx(try_from = "String")]
    pub outcome: AttemptOutcome,
    /// The receiver's HTTP status; `null` when no answer came (a transport error or a
    /// timeout) or the channel type speaks no HTTP.
    pub http_status: Option<i32>,
    /// Why the attempt did not deliver; `null` when it did.
    pub error: Option<String>,
    /// The first 1 KiB of the receiver's answer, cut at a character boundary.
    pub response_body: Option<String>,
    /// The node that made the attempt: its host name and process id.
    pub node: String,
}
