//! Conversations: ordered streams of activities on one channel.

use serde_json::Value;

use super::{
    ChannelId, ChannelType, ConversationId, PhoneError, TenantId, Timestamp, normalise_phone,
    string_enum,
};

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
    /// The external party's id on the channel; unique per channel among active
    /// conversations. On WhatsApp channels a phone number in E.164 form
    /// (`+4915112345678`), see [`normalise_external_id`].
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

/// The stored form of an external party's id on a channel of type `kind`: on WhatsApp
/// channels the phone number in E.164 form, so that `+49 151 12345678` written by an
/// application and `4915112345678` sent by the provider name one party; on other
/// channels the id as given.
///
/// # Errors
/// On a WhatsApp channel, a text that is not an international phone number.
pub fn normalise_external_id(kind: ChannelType, raw: &str) -> Result<String, PhoneError> {
    if kind.keys_by_phone() {
        normalise_phone(raw)
    } else {
        Ok(raw.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whatsapp_channels_normalise() {
        for kind in [ChannelType::WhatsappMeta, ChannelType::WhatsappInfobip] {
            assert_eq!(
                normalise_external_id(kind, "0049 151 12345678").as_deref(),
                Ok("+4915112345678")
            );
            assert!(normalise_external_id(kind, "user-7").is_err());
        }
        for kind in [
            ChannelType::Webhook,
            ChannelType::Websocket,
            ChannelType::Echo,
        ] {
            assert_eq!(
                normalise_external_id(kind, " 0049 151 ").as_deref(),
                Ok(" 0049 151 ")
            );
        }
    }
}
