//! Channel adapters: everything Converger knows about one kind of channel.
//!
//! Stage 4 of the flow. An adapter validates its channel's config, says which
//! activities it delivers, and (with the delivery engine) speaks the external wire
//! format. Adapters know external formats, not the store: they never read or write
//! rows themselves.

mod config;
mod echo;
mod inbound;
pub mod signing;
mod webhook;
mod websocket;
mod whatsapp;
mod whatsapp_infobip;
mod whatsapp_meta;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::Value;

use crate::domain::{
    Activity, ActivityType, Channel, ChannelType, Conversation, DeliveryId, Direction, FieldError,
    NewActivity,
};

pub use config::{
    ConfigSpec, FieldSpec, FieldType, HttpUrl, MASK, mask_config, merge_config_patch,
};
pub use inbound::{InboundBatch, InboundError, InboundMessage, StatusUpdate};
pub use whatsapp::ProviderStatus;

/// One attempt to deliver an activity to a channel.
pub struct Outbound<'a> {
    pub delivery_id: DeliveryId,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub activity: &'a Activity,
    pub conversation: &'a Conversation,
    pub channel: &'a Channel,
    /// Shared client: connection pools are reused across deliveries.
    pub http: &'a reqwest::Client,
    /// Upper bound for this attempt's request, below the worker's lease.
    pub max_timeout: Duration,
}

/// A successful delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivered {
    /// The receiver's id for the message, for status callbacks.
    pub external_id: Option<String>,
    /// An activity to create in answer (the echo adapter's reply); the worker ingests it.
    pub reply: Option<NewActivity>,
}

/// A failed delivery attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    /// Worth another attempt (transport errors, timeouts, 408, 425, 429, 5xx).
    #[error("{message}")]
    Retryable {
        message: String,
        /// The receiver's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (other 4xx, bad config, no recipient).
    #[error("{message}")]
    Permanent { message: String },
}

impl AdapterError {
    /// A permanent failure with a message.
    pub fn permanent(message: impl Into<String>) -> Self {
        AdapterError::Permanent {
            message: message.into(),
        }
    }

    /// A retryable failure without `Retry-After`.
    pub fn retryable(message: impl Into<String>) -> Self {
        AdapterError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The behaviour of one channel type.
#[async_trait::async_trait]
pub trait ChannelAdapter: Send + Sync + 'static {
    /// The channel type this adapter serves.
    fn channel_type(&self) -> ChannelType;

    /// The settings of this channel type, read from its config struct.
    fn config_spec(&self) -> &'static ConfigSpec;

    /// Checks a channel config and returns it with defaults filled in.
    ///
    /// # Errors
    /// Every broken rule, each naming its field as `config.<path>`.
    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        self.config_spec().validate(config)
    }

    /// Config fields holding credentials: masked on every read.
    fn secret_fields(&self) -> &'static [&'static str] {
        self.config_spec().secrets
    }

    /// Whether an activity of this direction and type, in a conversation on a channel of
    /// this type (or routed to one), gets a delivery row for this channel.
    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool;

    /// Whether an activity forwarded to a channel of this type by a route gets a
    /// delivery row. The route's direction filter has already matched.
    fn accepts_routed(&self, kind: ActivityType) -> bool {
        kind != ActivityType::Typing
    }

    /// Makes one delivery attempt.
    ///
    /// # Errors
    /// Retryable or permanent, as the receiver's answer says.
    async fn deliver(&self, outbound: &Outbound<'_>) -> Result<Delivered, AdapterError> {
        let _ = outbound;
        Err(AdapterError::permanent(format!(
            "{} channels deliver nothing",
            self.channel_type()
        )))
    }

    /// Checks that an inbound request comes from the channel's sender.
    ///
    /// # Errors
    /// `Unauthorized` for a missing or wrong signature; `NotSupported` for channel types
    /// without inbound webhooks.
    fn verify_inbound(
        &self,
        channel: &Channel,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), InboundError> {
        let _ = (channel, headers, body, now);
        Err(InboundError::NotSupported)
    }

    /// Parses a verified inbound payload into messages and status updates.
    ///
    /// # Errors
    /// `Malformed` for a payload this channel type cannot read.
    fn parse_inbound(&self, channel: &Channel, body: &[u8]) -> Result<InboundBatch, InboundError> {
        let _ = (channel, body);
        Err(InboundError::NotSupported)
    }

    /// Whether inbound requests come from a provider that re-sends everything not
    /// answered with 200 (Meta for 7 days). Such requests are answered 200 once stored,
    /// and what cannot be stored (a payload of an unexpected shape, a message that fails
    /// validation) is logged and skipped instead of refusing the request: a refusal
    /// would only bring the same payload back. Signature failures are still refused.
    fn lenient_inbound(&self) -> bool {
        false
    }

    /// Answers a `GET` on the inbound URL: `Ok(Some(body))` to answer with that text
    /// (Meta's `hub.challenge`), `Ok(None)` for the plain reachability answer.
    ///
    /// # Errors
    /// `Forbidden` when the sender's handshake token does not match.
    fn verify_subscription(
        &self,
        channel: &Channel,
        params: &[(String, String)],
    ) -> Result<Option<String>, InboundError> {
        let _ = (channel, params);
        Ok(None)
    }
}

/// Every adapter, by channel type. Built once and shared.
#[derive(Clone)]
pub struct Adapters {
    by_type: Arc<HashMap<ChannelType, Arc<dyn ChannelAdapter>>>,
}

impl Default for Adapters {
    fn default() -> Self {
        Self::new()
    }
}

impl Adapters {
    /// The registry with one adapter for each channel type.
    pub fn new() -> Self {
        let all: [Arc<dyn ChannelAdapter>; 5] = [
            Arc::new(echo::EchoAdapter),
            Arc::new(webhook::WebhookAdapter),
            Arc::new(websocket::WebsocketAdapter),
            Arc::new(whatsapp_meta::WhatsappMetaAdapter),
            Arc::new(whatsapp_infobip::WhatsappInfobipAdapter),
        ];
        let by_type = all.into_iter().map(|a| (a.channel_type(), a)).collect();
        Self {
            by_type: Arc::new(by_type),
        }
    }

    /// The adapter of a channel type.
    pub fn get(&self, kind: ChannelType) -> &dyn ChannelAdapter {
        // `new` registers every variant of `ChannelType`; the test below keeps it so.
        self.by_type
            .get(&kind)
            .map(|a| a.as_ref())
            .unwrap_or_else(|| unreachable!("no adapter registered for {kind}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON, biased towards objects with the keys adapters know.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
            Just(Value::String("https://x.example/h".into())),
            Just(Value::String("12345".into())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let key = prop_oneof![
                Just("url".to_owned()),
                Just("method".to_owned()),
                Just("headers".to_owned()),
                Just("timeout_ms".to_owned()),
                Just("phone_number_id".to_owned()),
                Just("access_token".to_owned()),
                Just("verify_token".to_owned()),
                Just("api_version".to_owned()),
                Just("base_url".to_owned()),
                Just("api_key".to_owned()),
                Just("sender".to_owned()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Validation is total (never panics), and what it accepts is a fixed point:
        /// the normalised config validates again to itself, so stored configs stay valid.
        #[test]
        fn config_validation_is_total_and_idempotent(config in json_value(), kind in 0usize..5) {
            let adapters = Adapters::new();
            let adapter = adapters.get(ChannelType::ALL[kind]);
            match adapter.validate_config(&config) {
                Ok(normalised) => {
                    prop_assert!(normalised.is_object());
                    prop_assert_eq!(adapter.validate_config(&normalised), Ok(normalised.clone()));
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for e in errors {
                        prop_assert!(e.field.starts_with("config"), "{}", e.field);
                    }
                }
            }
        }
    }

    #[test]
    fn every_channel_type_has_its_adapter() {
        let adapters = Adapters::new();
        for &kind in ChannelType::ALL {
            assert_eq!(adapters.get(kind).channel_type(), kind);
        }
    }

    #[test]
    fn delivery_directions_follow_the_design() {
        let a = Adapters::new();
        let msg = ActivityType::Message;
        assert!(
            a.get(ChannelType::Webhook)
                .delivers(Direction::Outbound, msg)
        );
        assert!(
            !a.get(ChannelType::Webhook)
                .delivers(Direction::Inbound, msg)
        );
        assert!(a.get(ChannelType::Echo).delivers(Direction::Inbound, msg));
        assert!(!a.get(ChannelType::Echo).delivers(Direction::Outbound, msg));
        assert!(
            !a.get(ChannelType::Websocket)
                .delivers(Direction::Outbound, msg)
        );
        for kind in [
            ChannelType::Webhook,
            ChannelType::WhatsappMeta,
            ChannelType::WhatsappInfobip,
        ] {
            assert!(
                !a.get(kind)
                    .delivers(Direction::Outbound, ActivityType::Typing)
            );
        }
    }
}
