//! What adapters make of inbound requests: messages to ingest and status updates.

use serde_json::Value;

use super::whatsapp::ProviderStatus;
use crate::domain::{ActivityType, ConversationId};

/// One message an external party sent.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The provider's id for the message (e.g. `wamid...`): the idempotency key, so a
    /// provider's re-delivery creates nothing.
    pub provider_id: Option<String>,
    /// The external party's id; becomes the activity's `sender`.
    pub sender: String,
    /// An explicit conversation, when the sender names one.
    pub conversation_id: Option<ConversationId>,
    /// The external party's id on the channel, to find or open its conversation.
    pub external_id: String,
    /// The external party's display name, kept on a conversation opened for it.
    pub contact_name: Option<String>,
    pub kind: ActivityType,
    pub text: Option<String>,
    /// A JSON array.
    pub attachments: Value,
    /// A JSON object (e.g. the contact's display name, the original message type).
    pub metadata: Value,
}

/// A provider's report on a message Converger delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// The provider's id of the delivered message (the delivery's `external_id`).
    pub provider_id: String,
    pub status: ProviderStatus,
    /// Provider timestamp, as sent.
    pub timestamp: Option<String>,
    /// Error details for `failed`: the provider's code and message.
    pub error: Option<String>,
}

/// Everything one inbound request carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundBatch {
    pub messages: Vec<InboundMessage>,
    pub statuses: Vec<StatusUpdate>,
    /// Items of the payload that were left out, with the reason, for the log. Only
    /// lenient adapters (providers that retry refused requests) skip items.
    pub skipped: Vec<String>,
}

/// Why an inbound request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// Missing or wrong signature (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A subscription handshake with the wrong token (403).
    #[error("{0}")]
    Forbidden(String),
    /// A payload this channel type cannot read (400).
    #[error("{0}")]
    Malformed(String),
    /// This channel type takes no inbound webhooks (404).
    #[error("this channel type takes no inbound webhooks")]
    NotSupported,
}
