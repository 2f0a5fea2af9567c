//! `webhook`: generic HTTP. Inbound messages arrive signed at the channel's inbound
//! URL; outbound activities are sent as Standard Webhooks to the configured `url`.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::config::{ConfigSpec, HttpUrl, stored};
use super::signing::{standard_webhooks_signature, verify_converger_signature};
use super::{
    AdapterError, ChannelAdapter, Delivered, Exchange, InboundBatch, InboundError, InboundMessage,
    Outbound, RESPONSE_EXCERPT_BYTES,
};
use crate::domain::{ActivityType, Channel, ChannelType, DeliveryOrdering, Direction, RateLimit};
use crate::egress::EgressClient;

/// Settings of a `webhook` channel.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(title = "webhook")]
pub struct WebhookConfig {
    /// URL
    ///
    /// Where outbound activities are sent.
    #[schema(inline)]
    pub url: HttpUrl,
    /// Method
    ///
    /// The HTTP method of outbound requests.
    #[serde(default)]
    #[schema(inline, default = WebhookMethod::default)]
    pub method: WebhookMethod,
    /// Extra headers
    ///
    /// Extra HTTP headers of outbound requests; webhook-* headers are Converger's own
    /// and are not overridden.
    #[serde(default)]
    #[schema(default = json!({}))]
    pub headers: BTreeMap<String, String>,
    /// Timeout (ms)
    ///
    /// How long one outbound request may take, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    #[schema(default = default_timeout_ms, minimum = 100, maximum = 60_000)]
    pub timeout_ms: u64,
    /// Require signed inbound requests
    ///
    /// Inbound requests without a signature are refused unless this is false.
    #[serde(default = "default_require_signature")]
    #[schema(default = default_require_signature)]
    pub require_signature: bool,
    /// Delivery order
    ///
    /// conversation: one delivery of a conversation at a time, in order; a failing one
    /// holds back the later ones of its conversation until it is delivered or given up.
    /// none: each delivery on its own; nothing waits for a failing one, and a
    /// conversation's messages may arrive out of order.
    #[serde(default)]
    #[schema(inline, default = DeliveryOrdering::default)]
    pub ordering: DeliveryOrdering,
    /// Rate limit
    ///
    /// The most deliveries this channel receives per second, minute or hour, all nodes
    /// together: `N/s`, `N/m` or `N/h` (e.g. `80/s`, Meta's default per phone number).
    /// A delivery over the limit waits for the channel's next slot; no attempt is used
    /// up. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "80/s", pattern = "^[0-9]+/[smh]$")]
    pub rate_limit: Option<RateLimit>,
}

fn default_timeout_ms() -> u64 {
    15_000
}

fn default_require_signature() -> bool {
    true
}

/// The HTTP method of a webhook channel's outbound requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    #[default]
    Post,
    Put,
    Patch,
}

impl From<WebhookMethod> for reqwest::Method {
    fn from(method: WebhookMethod) -> Self {
        match method {
            WebhookMethod::Post => reqwest::Method::POST,
            WebhookMethod::Put => reqwest::Method::PUT,
            WebhookMethod::Patch => reqwest::Method::PATCH,
        }
    }
}

/// Adapter of `webhook` channels.
pub struct WebhookAdapter;

/// Most messages in one inbound batch.
pub const MAX_INBOUND_BATCH: usize = 100;

/// Header carrying inbound signatures.
pub const SIGNATURE_HEADER: &str = "x-converger-signature";

/// How much of a failed response body is kept in `last_error`.
const ERROR_BODY_CHARS: usize = 200;

#[async_trait::async_trait]
impl ChannelAdapter for WebhookAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::Webhook
    }

    fn config_spec(&self) -> &'static ConfigSpec {
        static SPEC: LazyLock<ConfigSpec> = LazyLock::new(ConfigSpec::of::<WebhookConfig>);
        &SPEC
    }

    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool {
        direction == Direction::Outbound && kind != ActivityType::Typing
    }

    async fn deliver(&self, out: &Outbound<'_>) -> Result<Delivered, AdapterError> {
        let body = serde_json::to_vec(&payload(out))
            .map_err(|e| AdapterError::permanent(format!("cannot encode the activity: {e}")))?;
        send_signed(
            out.http,
            out.channel,
            &out.delivery_id.to_string(),
            body,
            out.max_timeout,
            out.exchange,
        )
        .await
    }

    fn verify_inbound(
        &self,
        channel: &Channel,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), InboundError> {
        match headers.get(SIGNATURE_HEADER) {
            Some(value) => {
                let value = value.to_str().map_err(|_| {
                    InboundError::Unauthorized("the signature header is not ASCII".into())
                })?;
                verify_converger_signature(&channel.secret, value, body, now)
                    .map_err(|e| InboundError::Unauthorized(e.to_string()))
            }
            None if !require_signature(channel)? => Ok(()),
            None => Err(InboundError::Unauthorized(format!(
                "the {SIGNATURE_HEADER} header is required"
            ))),
        }
    }

    fn parse_inbound(&self, _channel: &Channel, body: &[u8]) -> Result<InboundBatch, InboundError> {
        parse_generic(body)
    }

    fn inbound_signature_header(&self) -> Option<&'static str> {
        Some(SIGNATURE_HEADER)
    }
}

/// Sends `body` to a webhook channel's URL as a Standard Webhook: signed with the
/// channel's secret under `msg_id` (the `webhook-id`), with its method and extra
/// headers, within its timeout and `max_timeout`; the receiver's answer is noted on
/// `exchange`. Activities and operational events both leave through here.
pub(crate) async fn send_signed(
    http: &EgressClient,
    channel: &Channel,
    msg_id: &str,
    body: Vec<u8>,
    max_timeout: Duration,
    exchange: &Exchange,
) -> Result<Delivered, AdapterError> {
    let config: WebhookConfig = stored(&channel.config).map_err(AdapterError::permanent)?;
    let timeout = Duration::from_millis(config.timeout_ms).min(max_timeout);
    let timestamp = chrono::Utc::now().timestamp();
    let signature = standard_webhooks_signature(&channel.secret, msg_id, timestamp, &body);

    let url = url::Url::parse(config.url.as_str())
        .map_err(|e| AdapterError::permanent(format!("bad URL: {e}")))?;
    let mut request = http.request(config.method.into(), &url)?.timeout(timeout);
    for (name, value) in &config.headers {
        if !name.to_ascii_lowercase().starts_with("webhook-") {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let response = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    classify(response, exchange).await
}

/// Whether a channel refuses unsigned inbound requests.
fn require_signature(channel: &Channel) -> Result<bool, InboundError> {
    let config: WebhookConfig = stored(&channel.config).map_err(InboundError::Unauthorized)?;
    Ok(config.require_signature)
}

/// The webhook body: the activity JSON, plus the conversation and channel it belongs to.
fn payload(out: &Outbound<'_>) -> Value {
    let mut body = serde_json::to_value(out.activity).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut body {
        map.insert(
            "conversation".into(),
            json!({
                "id": out.conversation.id,
                "channel_id": out.conversation.channel_id,
                "external_id": out.conversation.external_id,
                "metadata": out.conversation.metadata,
            }),
        );
        map.insert(
            "channel".into(),
            json!({"id": out.channel.id, "name": out.channel.name, "type": out.channel.kind}),
        );
    }
    body
}

pub(crate) fn transport_error(e: &reqwest::Error) -> AdapterError {
    if let Some(refused) = crate::egress::refusal(e) {
        return refused.clone().into();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        return AdapterError::permanent("refused a redirect to another origin").from_receiver();
    } else {
        "request failed"
    };
    // The error's Display includes the URL, whose query may carry a credential.
    AdapterError::retryable(format!("{what}: {}", without_url(e))).from_receiver()
}

fn without_url(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    last.unwrap_or_else(|| "no details".into())
}

/// A `Retry-After` of seconds or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

async fn classify(
    response: reqwest::Response,
    exchange: &Exchange,
) -> Result<Delivered, AdapterError> {
    let status = response.status();
    let after = retry_after(response.headers());
    // Only the start is kept, in the attempt log and the error, so only that is read.
    // A success stays one whatever happens to its body.
    let body = crate::egress::read_capped(response, RESPONSE_EXCERPT_BYTES + 4)
        .await
        .unwrap_or_default();
    exchange.answered(status.as_u16(), &body);
    if status.is_success() {
        return Ok(Delivered::default());
    }
    let excerpt: String = String::from_utf8_lossy(&body)
        .chars()
        .take(ERROR_BODY_CHARS)
        .collect();
    let message = if excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {excerpt}")
    };
    let code = status.as_u16();
    if matches!(code, 408 | 425 | 429) || status.is_server_error() {
        Err(AdapterError::Retryable {
            message,
            retry_after: after,
            reached: true,
        })
    } else {
        Err(AdapterError::Permanent {
            message,
            reached: true,
        })
    }
}

/// Reads the generic inbound format: one message object, `{"messages": [...]}`, or a
/// bare array of messages.
pub fn parse_generic(body: &[u8]) -> Result<InboundBatch, InboundError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| InboundError::Malformed(format!("the body is not valid JSON: {e}")))?;
    let items: Vec<Value> = match value {
        Value::Array(items) => items,
        Value::Object(mut map) if map.contains_key("messages") => match map.remove("messages") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(InboundError::Malformed(
                    "`messages` must be an array".into(),
                ));
            }
        },
        Value::Object(map) => vec![Value::Object(map)],
        _ => {
            return Err(InboundError::Malformed(
                "expected a message object or an array".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(InboundError::Malformed("the batch holds no message".into()));
    }
    if items.len() > MAX_INBOUND_BATCH {
        return Err(InboundError::Malformed(format!(
            "a batch holds at most {MAX_INBOUND_BATCH} messages"
        )));
    }
    let messages = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            parse_message(item).map_err(|e| InboundError::Malformed(format!("message {i}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(InboundBatch {
        messages,
        ..InboundBatch::default()
    })
}

fn string_field(map: &Map<String, Value>, names: &[&str]) -> Result<Option<String>, String> {
    for name in names {
        match map.get(*name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(_) => return Err(format!("`{name}` must be a string")),
        }
    }
    Ok(None)
}

fn parse_message(item: Value) -> Result<InboundMessage, String> {
    let Value::Object(map) = item else {
        return Err("must be an object".into());
    };
    let text = string_field(&map, &["text", "message", "body"])?;
    // `sender`/`from` may be a plain id or an object with `id` and `name`.
    let mut sender_name = None;
    let sender = match map.get("sender").or_else(|| map.get("from")) {
        Some(Value::Object(from)) => {
            sender_name = string_field(from, &["name"])?;
            string_field(from, &["id"])?
        }
        _ => string_field(&map, &["sender", "from"])?,
    };
    let external_id = string_field(&map, &["external_id"])?;
    let conversation_id = match string_field(&map, &["conversation_id"])? {
        Some(id) => Some(
            id.parse()
                .map_err(|_| "`conversation_id` is not a UUID".to_string())?,
        ),
        None => None,
    };
    let sender = sender
        .or_else(|| external_id.clone())
        .filter(|s| !s.trim().is_empty())
        .ok_or("`sender` (or `from`, or `external_id`) is required")?;
    let kind = match string_field(&map, &["type"])? {
        None => ActivityType::Message,
        Some(t) => t.parse().map_err(|e| format!("`type`: {e}"))?,
    };
    let attachments = match map.get("attachments") {
        None | Some(Value::Null) => json!([]),
        Some(v) => v.clone(),
    };
    let mut metadata = match map.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(_) => return Err("`metadata` must be an object".into()),
    };
    if let (Some(name), Value::Object(m)) = (sender_name, &mut metadata) {
        m.entry("sender_name").or_insert(Value::String(name));
    }
    Ok(InboundMessage {
        provider_id: string_field(&map, &["id", "message_id", "idempotency_key"])?,
        external_id: external_id.unwrap_or_else(|| sender.clone()),
        sender,
        conversation_id,
        contact_name: None,
        kind,
        text,
        attachments,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_single_batch_and_array_forms() {
        let one = parse_generic(br#"{"text": "hi", "from": "+49151", "id": "m1"}"#).unwrap();
        assert_eq!(one.messages.len(), 1);
        let m = &one.messages[0];
        assert_eq!(
            (m.sender.as_str(), m.external_id.as_str()),
            ("+49151", "+49151")
        );
        assert_eq!(m.provider_id.as_deref(), Some("m1"));
        assert_eq!(m.text.as_deref(), Some("hi"));

        let batch = parse_generic(
            br#"{"messages": [{"message": "a", "sender": {"id": "u1", "name": "Ann"}}, {"body": "b", "sender": "u2", "type": "event", "metadata": {"k": 1}}]}"#,
        )
        .unwrap();
        assert_eq!(batch.messages[0].metadata, json!({"sender_name": "Ann"}));
        assert_eq!(batch.messages[1].kind, ActivityType::Event);
        let array = parse_generic(br#"[{"text": "a", "external_id": "x"}]"#).unwrap();
        assert_eq!(array.messages[0].sender, "x");
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for body in [
            &br#"{"text": "no sender"}"#[..],
            br#"{"messages": {}}"#,
            br#"[]"#,
            br#"[1]"#,
            br#"{"sender": "u", "type": "shout"}"#,
            br#"{"sender": "u", "conversation_id": "nope"}"#,
            br#"{"sender": "u", "metadata": []}"#,
            b"\xff",
            br#""text""#,
        ] {
            assert!(
                matches!(parse_generic(body), Err(InboundError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_generic(&body);
        }

        #[test]
        fn arbitrary_json_messages_never_panic(text in ".{0,40}", sender in ".{0,20}", extra in ".{0,20}") {
            let body = json!({"text": text, "sender": sender, "metadata": {"x": extra}, "attachments": [extra]});
            if let Ok(batch) = parse_generic(body.to_string().as_bytes()) {
                prop_assert_eq!(batch.messages.len(), 1);
                prop_assert!(!batch.messages[0].sender.trim().is_empty());
            }
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        assert!(retry_after(&h).is_some_and(|d| d > Duration::from_secs(80)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn fills_defaults() {
        let out = WebhookAdapter
            .validate_config(&json!({"url": "https://bot.example.com/hook"}))
            .unwrap();
        assert_eq!(
            out,
            json!({"url": "https://bot.example.com/hook", "method": "POST", "headers": {}, "timeout_ms": 15000, "require_signature": true, "ordering": "conversation"})
        );
    }

    #[test]
    fn names_every_bad_field() {
        let errors = WebhookAdapter
            .validate_config(
                &json!({"url": "ftp://x", "method": "GET", "headers": {"a": 1}, "retries": 3}),
            )
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "config.url",
                "config.method",
                "config.headers.a",
                "config.retries"
            ]
        );
    }
}
