//! Channel adapters: everything Converger knows about one kind of channel.
//!
//! Stage 4 of the flow. An adapter declares its channel's config as one typed struct
//! (see `config`: validation, secrets, the admin form and the OpenAPI schema follow
//! from it), says which activities it delivers, and (with the delivery engine) speaks
//! the external wire format. Adapters know external formats, not the store: they never read or write
//! rows themselves.

mod config;
mod echo;
mod inbound;
pub mod signing;
pub(crate) mod webhook;
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
use crate::egress::{EgressClient, EgressPolicy, EgressRefused};

pub use config::{
    ConfigSpec, FieldSpec, FieldType, HttpUrl, MASK, credential_pointers, mask_config,
    masked_paths, merge_config_patch, replace_config,
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
    /// The node's one outbound client, under the egress policy; connection pools are
    /// reused across deliveries.
    pub http: &'a EgressClient,
    /// Upper bound for this attempt's request, below the worker's lease.
    pub max_timeout: Duration,
    /// Where the adapter notes the receiver's answer, for the attempt log.
    pub exchange: &'a Exchange,
}

/// The most of a receiver's answer the attempt log keeps, in bytes.
pub const RESPONSE_EXCERPT_BYTES: usize = 1024;

/// What the receiver answered to one attempt, for the attempt log: noted by the
/// adapter that made the request, taken by the worker once the attempt is over. Empty
/// when no answer came (a transport error, a timeout) or the channel speaks no HTTP.
#[derive(Debug, Default)]
pub struct Exchange(std::sync::Mutex<Option<Answer>>);

/// A receiver's answer, as the attempt log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The start of the body ([`excerpt`]).
    pub body: String,
}

impl Exchange {
    /// Notes the answer: its status and (the start of) its body. A later answer
    /// replaces an earlier one.
    pub fn answered(&self, status: u16, body: &[u8]) {
        let answer = Answer {
            status,
            body: excerpt(body),
        };
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer);
    }

    /// The answer noted, if any.
    pub fn take(&self) -> Option<Answer> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The start of a response body as text that any store keeps: invalid UTF-8 and
/// U+0000 replaced by U+FFFD, then cut at the last character boundary within
/// [`RESPONSE_EXCERPT_BYTES`].
pub fn excerpt(body: &[u8]) -> String {
    // Replacements only lengthen the text, so decoding a few bytes more than the limit
    // is enough, and a character cut at their end falls beyond the limit.
    let read = &body[..body.len().min(RESPONSE_EXCERPT_BYTES + 4)];
    let text = String::from_utf8_lossy(read).replace('\0', "\u{FFFD}");
    let mut end = text.len().min(RESPONSE_EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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
        /// The attempt reached the receiver (see [`AdapterError::reached`]).
        reached: bool,
    },
    /// Retrying cannot help (other 4xx, bad config, no recipient).
    #[error("{message}")]
    Permanent {
        message: String,
        /// The attempt reached the receiver (see [`AdapterError::reached`]).
        reached: bool,
    },
}

impl AdapterError {
    /// A permanent failure found before anything was sent (a config, a message
    /// without a recipient): the receiver is not to blame.
    pub fn permanent(message: impl Into<String>) -> Self {
        AdapterError::Permanent {
            message: message.into(),
            reached: false,
        }
    }

    /// A retryable failure without `Retry-After`, found before anything was sent.
    pub fn retryable(message: impl Into<String>) -> Self {
        AdapterError::Retryable {
            message: message.into(),
            retry_after: None,
            reached: false,
        }
    }

    /// The receiver's answer to a request, or the failure to reach it (a timeout, a
    /// refused connection): what counts towards its channel's health.
    pub fn from_receiver(mut self) -> Self {
        match &mut self {
            AdapterError::Retryable { reached, .. } | AdapterError::Permanent { reached, .. } => {
                *reached = true;
            }
        }
        self
    }

    /// Whether the attempt reached the receiver: it answered (any HTTP status), or the
    /// connection to it failed or timed out. Refusals of the egress policy and checks
    /// made before sending did not.
    pub fn reached(&self) -> bool {
        match self {
            AdapterError::Retryable { reached, .. } | AdapterError::Permanent { reached, .. } => {
                *reached
            }
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

    /// The request header that carries the inbound signature, if this type signs
    /// inbound requests. A verified signature identifies its request: messages
    /// without a provider id are keyed by it, so a replayed request creates nothing.
    fn inbound_signature_header(&self) -> Option<&'static str> {
        None
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

/// The schema of a channel's `config`: one of the channel types' config structs, each
/// titled with its type, for the OpenAPI document.
pub fn config_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let adapters = Adapters::new();
    let mut one_of = utoipa::openapi::schema::OneOfBuilder::new().description(Some(
        "Settings of the channel's type: the schema titled with the type applies. \
         Secret fields (format password) read as ********.",
    ));
    for &kind in ChannelType::ALL {
        one_of = one_of.item(adapters.get(kind).config_spec().schema());
    }
    one_of.into()
}

/// Every adapter, by channel type. Built once and shared.
#[derive(Clone)]
pub struct Adapters {
    by_type: Arc<HashMap<ChannelType, Arc<dyn ChannelAdapter>>>,
    /// Where channel URLs may point; checked when a config is validated.
    egress: Arc<EgressPolicy>,
}

impl Default for Adapters {
    fn default() -> Self {
        Self::new()
    }
}

impl Adapters {
    /// The registry with one adapter for each channel type, under the default egress
    /// policy (public destinations only).
    pub fn new() -> Self {
        Self::with_egress(EgressPolicy::default())
    }

    /// The registry under an egress policy.
    pub fn with_egress(egress: EgressPolicy) -> Self {
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
            egress: Arc::new(egress),
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

    /// Where a config of a channel type holds credentials, as JSON pointers: what the
    /// APIs mask and the store encrypts ([`credential_pointers`]).
    pub fn credentials(&self, kind: ChannelType, config: &Value) -> Vec<String> {
        credential_pointers(config, self.get(kind).secret_fields())
    }

    /// The egress policy delivery clients are built with.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// Validates a config for a channel type: the adapter's rules, then the egress
    /// policy for every URL field, so a channel cannot be pointed at an internal
    /// address in the first place. Delivery checks again after resolution.
    ///
    /// # Errors
    /// Every broken rule, each naming its field as `config.<path>`.
    pub fn validate_config(
        &self,
        kind: ChannelType,
        config: &Value,
    ) -> Result<Value, Vec<FieldError>> {
        let adapter = self.get(kind);
        let valid = adapter.validate_config(config)?;
        let mut errors: Vec<FieldError> = adapter
            .config_spec()
            .fields
            .iter()
            .filter(|field| field.url)
            .filter_map(|field| {
                let url = url::Url::parse(valid.get(field.name)?.as_str()?).ok()?;
                let refused = self.egress.check_url(&url).err()?;
                Some(FieldError::new(
                    format!("config.{}", field.name),
                    format!("refused by the egress policy: {}", refused.reason),
                ))
            })
            .collect();
        // Extra request headers may not be ones that steer routing or framing, nor
        // names HTTP cannot carry.
        if let Some(Value::Object(headers)) = valid.get("headers") {
            for name in headers.keys() {
                let message = if crate::egress::is_reserved_header(name) {
                    "is set by Converger and cannot be configured"
                } else if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    "is not a valid HTTP header name"
                } else {
                    continue;
                };
                errors.push(FieldError::new(format!("config.headers.{name}"), message));
            }
        }
        if errors.is_empty() {
            Ok(valid)
        } else {
            Err(errors)
        }
    }
}

impl From<EgressRefused> for AdapterError {
    fn from(refused: EgressRefused) -> Self {
        AdapterError::permanent(format!("egress_refused: {refused}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Arbitrary JSON from `leaf` values, nested up to `depth` in arrays and in objects
    /// whose keys come from `key`: payloads shaped like what a parser looks for.
    pub(super) fn json_tree(
        leaf: impl Strategy<Value = Value> + 'static,
        key: impl Strategy<Value = String> + Clone + 'static,
        depth: u32,
        size: u32,
    ) -> impl Strategy<Value = Value> {
        leaf.prop_recursive(depth, size, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Keys of `keys`, as owned strings.
    pub(super) fn keys(keys: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
        prop::sample::select(keys).prop_map(str::to_owned)
    }

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
        let key = prop_oneof![
            keys(&[
                "url",
                "method",
                "headers",
                "timeout_ms",
                "phone_number_id",
                "access_token",
                "verify_token",
                "api_version",
                "base_url",
                "api_key",
                "sender",
            ]),
            "[a-z_]{1,8}",
        ];
        json_tree(leaf, key, 3, 24)
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
    fn excerpts_are_storable_text_cut_at_a_character() {
        assert_eq!(excerpt(b"plain"), "plain");
        assert_eq!(excerpt(b"a\0b\xffc"), "a\u{FFFD}b\u{FFFD}c");
        // 1023 ASCII bytes then a two-byte character: it does not fit, and is not
        // split.
        let mut body = vec![b'x'; RESPONSE_EXCERPT_BYTES - 1];
        body.extend("é and more".as_bytes());
        let cut = excerpt(&body);
        assert_eq!(cut.len(), RESPONSE_EXCERPT_BYTES - 1);
        assert!(cut.bytes().all(|b| b == b'x'));
        let long = "ü".repeat(2000);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.len(), RESPONSE_EXCERPT_BYTES);
        assert!(cut.chars().all(|c| c == 'ü'));
    }

    proptest! {
        /// Whatever the bytes, the excerpt is UTF-8 (a `String`), without U+0000, at
        /// most the limit long, and a prefix of the body when the body is clean text.
        #[test]
        fn excerpts_stay_within_the_limit(body in prop::collection::vec(any::<u8>(), 0..3000)) {
            let cut = excerpt(&body);
            prop_assert!(cut.len() <= RESPONSE_EXCERPT_BYTES);
            prop_assert!(!cut.contains('\0'));
            if let Ok(text) = std::str::from_utf8(&body) && !text.contains('\0') {
                prop_assert!(text.starts_with(&cut));
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

    /// The smallest valid config of each channel type.
    fn minimal(kind: ChannelType) -> Value {
        match kind {
            ChannelType::Webhook => serde_json::json!({"url": "https://x.example/h"}),
            ChannelType::WhatsappMeta => {
                serde_json::json!({"phone_number_id": "1", "access_token": "t", "verify_token": "v"})
            }
            ChannelType::WhatsappInfobip => {
                serde_json::json!({"base_url": "https://x.api.infobip.com", "api_key": "k", "sender": "1"})
            }
            ChannelType::Echo | ChannelType::Websocket => serde_json::json!({}),
        }
    }

    #[test]
    fn schema_defaults_are_the_stored_defaults() {
        let adapters = Adapters::new();
        for &kind in ChannelType::ALL {
            let adapter = adapters.get(kind);
            let stored = adapter.validate_config(&minimal(kind)).unwrap();
            for field in &adapter.config_spec().fields {
                if let Some(default) = &field.default {
                    assert_eq!(&stored[field.name], default, "{kind}.{}", field.name);
                } else if !field.required {
                    assert!(stored.get(field.name).is_none(), "{kind}.{}", field.name);
                }
            }
        }
    }

    #[test]
    fn secrets_are_the_password_fields() {
        let a = Adapters::new();
        assert_eq!(
            a.get(ChannelType::WhatsappMeta).secret_fields(),
            ["access_token", "verify_token", "app_secret"]
        );
        assert_eq!(
            a.get(ChannelType::WhatsappInfobip).secret_fields(),
            ["api_key"]
        );
        for kind in [
            ChannelType::Webhook,
            ChannelType::Echo,
            ChannelType::Websocket,
        ] {
            assert!(a.get(kind).secret_fields().is_empty(), "{kind}");
        }
    }

    #[test]
    fn the_openapi_config_schema_has_every_type_flattened() {
        let schema = serde_json::to_value(config_schema()).unwrap();
        let titles: Vec<&str> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["title"].as_str().unwrap())
            .collect();
        assert_eq!(
            titles,
            [
                "echo",
                "webhook",
                "websocket",
                "whatsapp_meta",
                "whatsapp_infobip"
            ]
        );
        let webhook = &schema["oneOf"][1];
        assert_eq!(webhook["additionalProperties"], false);
        assert_eq!(webhook["required"], serde_json::json!(["url"]));
        assert_eq!(webhook["properties"]["url"]["format"], "uri");
        assert_eq!(
            webhook["properties"]["method"]["enum"],
            serde_json::json!(["POST", "PUT", "PATCH"])
        );
        assert!(!schema.to_string().contains("allOf"));
        assert_eq!(
            schema["oneOf"][3]["properties"]["access_token"]["format"],
            "password"
        );
    }
}
