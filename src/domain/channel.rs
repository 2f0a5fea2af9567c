//! Channels (where messages come from and go to) and routes between them.

use serde_json::Value;

use super::{ChannelId, RouteId, TenantId, Timestamp, string_enum};

string_enum! {
    /// The adapter that speaks for a channel.
    pub enum ChannelType {
        /// Answers every inbound message with a bot reply (testing and demos).
        Echo => "echo",
        /// Generic HTTP: signed inbound webhooks, signed outbound POSTs.
        Webhook => "webhook",
        /// Real-time clients only; delivery happens through PubSub.
        Websocket => "websocket",
        /// WhatsApp through Meta's Cloud API.
        WhatsappMeta => "whatsapp_meta",
        /// WhatsApp through Infobip.
        WhatsappInfobip => "whatsapp_infobip",
    }
}

string_enum! {
    /// Whether a channel takes part in traffic.
    pub enum ChannelStatus { Active => "active", Inactive => "inactive" }
}

string_enum! {
    /// Which activities a route forwards.
    pub enum RouteDirection { Inbound => "inbound", Outbound => "outbound", Any => "any" }
}

impl ChannelType {
    /// Whether the channel's external parties are phone numbers, kept in E.164 form
    /// ([`super::normalise_phone`]): WhatsApp, through either provider.
    pub fn keys_by_phone(self) -> bool {
        matches!(
            self,
            ChannelType::WhatsappMeta | ChannelType::WhatsappInfobip
        )
    }
}

impl RouteDirection {
    /// Whether an activity travelling in `direction` passes this filter.
    pub fn matches(self, direction: super::Direction) -> bool {
        match self {
            RouteDirection::Any => true,
            RouteDirection::Inbound => direction == super::Direction::Inbound,
            RouteDirection::Outbound => direction == super::Direction::Outbound,
        }
    }
}

/// A channel as stored. Not serialized directly: the API masks secrets in `config`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Channel {
    pub id: ChannelId,
    pub tenant_id: TenantId,
    pub name: String,
    #[sqlx(rename = "type", try_from = "String")]
    pub kind: ChannelType,
    /// Standard Webhooks secret (`whsec_...`): signs outbound webhooks, verifies inbound
    /// ones and binds channel tokens (rotating it revokes them).
    pub secret: String,
    /// Settings of the channel's type: what the type's config struct serializes to once
    /// validated (defaults filled in). Kept as JSON here; adapters read it back typed.
    #[sqlx(json)]
    pub config: Value,
    #[sqlx(try_from = "String")]
    pub status: ChannelStatus,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A routing rule: activities of conversations on `source` are also delivered to `target`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Route {
    pub id: RouteId,
    pub tenant_id: TenantId,
    pub source_channel_id: ChannelId,
    pub target_channel_id: ChannelId,
    #[sqlx(try_from = "String")]
    pub direction: RouteDirection,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}
