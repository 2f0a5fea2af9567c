//! `whatsapp_infobip`: WhatsApp through Infobip's API, docs/protocols.md#infobip.
//!
//! Outbound: `POST {base_url}/whatsapp/1/message/text` with `Authorization: App
//! <api_key>`; the returned `messageId` is the delivery's external id, which delivery
//! and seen reports name. 429 and 5xx are retried; other errors, and a 200 whose status
//! group is `REJECTED`, are permanent.
//!
//! Inbound: one URL takes Infobip's three webhook kinds, told apart per `results[]`
//! entry: inbound messages (a `message` object; keyed by `messageId`), delivery reports
//! (a `status` object) and seen reports (`seenAt`, no `status`). Infobip signs nothing
//! by default (docs/protocols.md#infobip-signing), so requests are accepted unsigned: the channel's inbound URL,
//! which holds its random id, is the shared secret. Like Meta, Infobip re-sends refused
//! requests, so this adapter is lenient: only a body that is not JSON is refused. The
//! API key never appears in errors or logs.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::config::{ConfigSpec, HttpUrl, stored};
use super::whatsapp::{self, Incoming, ProviderStatus, excerpt, str_field};
use super::{
    AdapterError, ChannelAdapter, Delivered, InboundBatch, InboundError, Outbound, StatusUpdate,
};
use crate::domain::{ActivityType, Channel, ChannelType, DeliveryOrdering, Direction, RateLimit};

/// Settings of a `whatsapp_infobip` channel.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(title = "whatsapp_infobip")]
pub struct WhatsappInfobipConfig {
    /// Base URL
    ///
    /// Your account's base URL, e.g. https://xyz.api.infobip.com
    #[schema(inline)]
    pub base_url: HttpUrl,
    /// API key
    ///
    /// Sent as the Authorization: App header of every request.
    #[schema(format = Password)]
    pub api_key: String,
    /// Sender number
    ///
    /// The registered WhatsApp sender number.
    pub sender: String,
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

/// Adapter of `whatsapp_infobip` channels.
pub struct WhatsappInfobipAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for WhatsappInfobipAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::WhatsappInfobip
    }

    fn config_spec(&self) -> &'static ConfigSpec {
        static SPEC: LazyLock<ConfigSpec> = LazyLock::new(ConfigSpec::of::<WhatsappInfobipConfig>);
        &SPEC
    }

    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool {
        direction == Direction::Outbound && kind == ActivityType::Message
    }

    async fn deliver(&self, out: &Outbound<'_>) -> Result<Delivered, AdapterError> {
        let config: WhatsappInfobipConfig =
            stored(&out.channel.config).map_err(AdapterError::permanent)?;
        let to = whatsapp::recipient(out)?;
        let text = whatsapp::text(out)?;
        let url = whatsapp::endpoint(format!(
            "{}/whatsapp/1/message/text",
            config.base_url.base()
        ))?;
        let body = send_body(&config.sender, &to, &text, &out.delivery_id.to_string());
        let request = out
            .http
            .request(reqwest::Method::POST, &url)?
            .header(
                reqwest::header::AUTHORIZATION,
                format!("App {}", config.api_key),
            )
            .header(reqwest::header::ACCEPT, "application/json");
        let (status, after, text) = whatsapp::send(request, &body, out).await?;
        classify(status, after, &text)
    }

    fn verify_inbound(
        &self,
        _channel: &Channel,
        _headers: &HeaderMap,
        _body: &[u8],
        _now: i64,
    ) -> Result<(), InboundError> {
        Ok(())
    }

    fn parse_inbound(&self, channel: &Channel, body: &[u8]) -> Result<InboundBatch, InboundError> {
        let config: WhatsappInfobipConfig =
            stored(&channel.config).map_err(InboundError::Malformed)?;
        parse_webhook(Some(&config.sender), body)
    }

    fn lenient_inbound(&self) -> bool {
        true
    }
}

/// The documented text-message body (docs/protocols.md#infobip-send); numbers go without a leading `+`. The
/// delivery id rides along as `callbackData`, which reports echo.
fn send_body(sender: &str, to: &str, text: &str, delivery_id: &str) -> Value {
    json!({
        "from": sender.trim().trim_start_matches('+'),
        "to": to.trim_start_matches('+'),
        "content": { "text": text, "previewUrl": false },
        "callbackData": delivery_id,
    })
}

/// Reads a send answer (docs/protocols.md#infobip-send): the `messageId` of an accepted message; a
/// `REJECTED` status group or a 4xx is permanent, 408/425/429/5xx retryable.
fn classify(status: u16, after: Option<Duration>, body: &str) -> Result<Delivered, AdapterError> {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        let group = parsed.pointer("/status/groupName").and_then(Value::as_str);
        let group_id = parsed.pointer("/status/groupId").and_then(Value::as_i64);
        if group == Some("REJECTED") || group_id == Some(5) {
            return Err(AdapterError::permanent(format!(
                "Infobip rejected the message: {}",
                describe_status(&parsed["status"])
            ))
            .from_receiver());
        }
        let external_id = str_field(&parsed, "messageId");
        if external_id.is_none() {
            tracing::warn!("Infobip accepted a message without returning its id");
        }
        return Ok(Delivered {
            external_id,
            reply: None,
        });
    }
    let mut message = match describe_error(&parsed) {
        Some(error) => format!("Infobip error {error}"),
        None if body.trim().is_empty() => "Infobip error".to_owned(),
        None => format!("Infobip error: {}", excerpt(body, 200)),
    };
    message.push_str(&format!(" (HTTP {status})"));
    if matches!(status, 408 | 425 | 429) || status >= 500 {
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

/// `BAD_REQUEST: Bad request; content.text: must not be blank` from either error
/// envelope: the classic `requestError.serviceException` or the flat `errorCode` one.
fn describe_error(body: &Value) -> Option<String> {
    if let Some(exception) = body.pointer("/requestError/serviceException") {
        let mut out = str_field(exception, "messageId").unwrap_or_else(|| "UNKNOWN".into());
        if let Some(text) = exception.get("text").and_then(Value::as_str) {
            out.push_str(": ");
            out.push_str(&excerpt(text, 200));
        }
        if let Some(fields) = exception.get("validationErrors").and_then(Value::as_object) {
            for (field, problems) in fields.iter().take(5) {
                let problems: Vec<&str> = problems
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                out.push_str(&format!(
                    "; {field}: {}",
                    excerpt(&problems.join(", "), 100)
                ));
            }
        }
        return Some(out);
    }
    let code = str_field(body, "errorCode")?;
    let mut out = code;
    if let Some(text) = body.get("description").and_then(Value::as_str) {
        out.push_str(": ");
        out.push_str(&excerpt(text, 200));
    }
    for violation in body
        .get("violations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(5)
    {
        if let (Some(p), Some(v)) = (
            violation.get("property").and_then(Value::as_str),
            violation.get("violation").and_then(Value::as_str),
        ) {
            out.push_str(&format!("; {}: {}", excerpt(p, 60), excerpt(v, 100)));
        }
    }
    Some(out)
}

/// `UNDELIVERABLE_NOT_DELIVERED (Message sent not delivered)` from a status object.
fn describe_status(status: &Value) -> String {
    let name = str_field(status, "name")
        .or_else(|| str_field(status, "groupName"))
        .unwrap_or_else(|| "UNKNOWN".into());
    match status.get("description").and_then(Value::as_str) {
        Some(d) => format!("{name} ({})", excerpt(d, 200)),
        None => name,
    }
}

/// Digits only, to compare numbers written with or without `+` or spaces.
fn digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

/// Reads an inbound message, delivery report or seen report webhook (docs/protocols.md#infobip-webhooks, docs/protocols.md#infobip-reports).
/// Messages to another sender than the channel's (one account may route several
/// numbers to one URL) are skipped.
///
/// # Errors
/// `Malformed` only for a body that is not JSON.
pub fn parse_webhook(sender: Option<&str>, body: &[u8]) -> Result<InboundBatch, InboundError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| InboundError::Malformed(format!("the body is not valid JSON: {e}")))?;
    let mut batch = InboundBatch::default();
    let Some(results) = root.get("results").and_then(Value::as_array) else {
        batch
            .skipped
            .push("not an Infobip webhook: no results array".into());
        return Ok(batch);
    };
    let ours = sender.map(digits).filter(|d| !d.is_empty());
    for (i, result) in results.iter().enumerate() {
        if result.get("message").is_some_and(Value::is_object) {
            let to = result.get("to").and_then(Value::as_str).map(digits);
            if let (Some(to), Some(ours)) = (&to, &ours)
                && to != ours
            {
                batch
                    .skipped
                    .push(format!("result {i}: a message to another sender"));
                continue;
            }
            match parse_message(result) {
                Some(incoming) => batch.messages.push(whatsapp::inbound_message(incoming)),
                None => batch
                    .skipped
                    .push(format!("result {i}: a message without from or messageId")),
            }
        } else if let Some(update) = parse_report(result) {
            batch.statuses.push(update);
        } else {
            batch.skipped.push(format!(
                "result {i}: neither a message nor a report with messageId"
            ));
        }
    }
    Ok(batch)
}

fn parse_message(result: &Value) -> Option<Incoming> {
    let from = str_field(result, "from")?;
    let provider_id = str_field(result, "messageId")?;
    let message = &result["message"];
    let wa_type = message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_ascii_lowercase();
    let text = ["text", "caption", "title"]
        .iter()
        .find_map(|key| message.get(*key).and_then(Value::as_str))
        .map(str::to_owned);
    let content = (wa_type != "text").then(|| {
        let mut content = message.clone();
        if let Value::Object(map) = &mut content {
            map.remove("type");
        }
        content
    });
    Some(Incoming {
        provider_id,
        contact_name: result
            .pointer("/contact/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        from,
        wa_type,
        text,
        content,
        timestamp: str_field(result, "receivedAt"),
        reply_to: message
            .pointer("/context/id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// A delivery report (`status`) or a seen report (`seenAt` without `status`), mapped
/// as docs/protocols.md#infobip-reports says: PENDING/ACCEPTED → sent, DELIVERED → delivered, seen → read,
/// UNDELIVERABLE/EXPIRED/REJECTED → failed.
fn parse_report(result: &Value) -> Option<StatusUpdate> {
    let provider_id = str_field(result, "messageId")?;
    let status = result.get("status").filter(|s| s.is_object());
    let Some(status) = status else {
        let seen = str_field(result, "seenAt")?;
        return Some(StatusUpdate {
            provider_id,
            status: ProviderStatus::Read,
            timestamp: Some(whatsapp::provider_time(&seen)),
            error: None,
        });
    };
    let group = status.get("groupName").and_then(Value::as_str);
    let group_id = status.get("groupId").and_then(Value::as_i64);
    let state = match (group, group_id) {
        (Some("PENDING" | "ACCEPTED"), _) | (None, Some(1)) => ProviderStatus::Sent,
        (Some("DELIVERED"), _) | (None, Some(3)) => ProviderStatus::Delivered,
        (Some("UNDELIVERABLE" | "EXPIRED" | "REJECTED"), _) | (None, Some(2 | 4 | 5)) => {
            ProviderStatus::Failed
        }
        _ => return None,
    };
    let error = (state == ProviderStatus::Failed).then(|| {
        let mut text = describe_status(status);
        if let Some(error) = result.get("error").filter(|e| e.is_object()) {
            text.push_str(&format!("; error {}", describe_status(error)));
            if let Some(permanent) = error.get("permanent").and_then(Value::as_bool) {
                text.push_str(&format!(", permanent: {permanent}"));
            }
        }
        text
    });
    Some(StatusUpdate {
        provider_id,
        status: state,
        timestamp: str_field(result, "doneAt")
            .or_else(|| str_field(result, "sentAt"))
            .map(|t| whatsapp::provider_time(&t)),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::tests::{json_tree, keys};
    use crate::adapters::whatsapp::tests::fixture;
    use proptest::prelude::*;

    #[test]
    fn send_body_is_the_documented_one() {
        assert_eq!(
            send_body("441134960000", "+441134960001", "Some text", "d1"),
            json!({"from": "441134960000", "to": "441134960001",
                "content": {"text": "Some text", "previewUrl": false}, "callbackData": "d1"})
        );
    }

    #[test]
    fn send_answers() {
        let ok = r#"{"to":"441134960001","messageCount":1,"messageId":"a28dd97c-1ffb-4fcf-99f1-0b557ed381da","status":{"groupId":1,"groupName":"PENDING","id":7,"name":"PENDING_ENROUTE","description":"Message sent to next instance"}}"#;
        assert_eq!(
            classify(200, None, ok).unwrap().external_id.as_deref(),
            Some("a28dd97c-1ffb-4fcf-99f1-0b557ed381da")
        );
        let rejected = r#"{"messageId":"m","status":{"groupId":5,"groupName":"REJECTED","id":12,"name":"REJECTED_NOT_ENOUGH_CREDITS","description":"Not enough credits"}}"#;
        assert_eq!(
            classify(200, None, rejected),
            Err(AdapterError::permanent(
                "Infobip rejected the message: REJECTED_NOT_ENOUGH_CREDITS (Not enough credits)"
            )
            .from_receiver())
        );
        let bad = r#"{"requestError":{"serviceException":{"messageId":"BAD_REQUEST","text":"Bad request","validationErrors":{"content.text":["must not be blank"]}}}}"#;
        assert_eq!(
            classify(400, None, bad),
            Err(AdapterError::permanent(
                "Infobip error BAD_REQUEST: Bad request; content.text: must not be blank (HTTP 400)"
            )
            .from_receiver())
        );
        let unauthorized = r#"{"requestError":{"serviceException":{"messageId":"UNAUTHORIZED","text":"Invalid login details"}}}"#;
        assert!(
            matches!(classify(401, None, unauthorized), Err(AdapterError::Permanent { message, .. }) if message.contains("UNAUTHORIZED"))
        );
        let flat = r#"{"errorCode":"E429","description":"Too many requests","action":"Slow down","violations":[],"resources":[]}"#;
        assert_eq!(
            classify(429, Some(Duration::from_secs(3)), flat),
            Err(AdapterError::Retryable {
                message: "Infobip error E429: Too many requests (HTTP 429)".into(),
                retry_after: Some(Duration::from_secs(3)),
                reached: true,
            })
        );
        let general = r#"{"requestError":{"serviceException":{"messageId":"GENERAL_ERROR","text":"Something went wrong. Please contact support."}}}"#;
        assert!(matches!(
            classify(500, None, general),
            Err(AdapterError::Retryable { .. })
        ));
        assert!(matches!(
            classify(503, None, ""),
            Err(AdapterError::Retryable { .. })
        ));
        assert!(matches!(
            classify(404, None, "<html/>"),
            Err(AdapterError::Permanent { .. })
        ));
    }

    #[test]
    fn reads_inbound_messages() {
        let batch = parse_webhook(Some("447860099299"), &fixture("infobip_inbound.json")).unwrap();
        assert_eq!(batch.messages.len(), 2);
        let text = &batch.messages[0];
        assert_eq!(
            text.provider_id.as_deref(),
            Some("ABEGOFl3VCQoAhBalbc6rTQT6mgS29EmGZ7a")
        );
        assert_eq!(
            (text.sender.as_str(), text.text.as_deref()),
            ("+385919998888", Some("Support hello"))
        );
        assert_eq!(text.contact_name.as_deref(), Some("Frank"));
        assert_eq!(text.metadata["whatsapp_type"], "text");
        let image = &batch.messages[1];
        assert_eq!(image.text.as_deref(), Some("receipt"));
        assert_eq!(
            image.attachments,
            json!([{"type": "image", "url": "https://example.infobip.com/whatsapp/1/media/abc", "caption": "receipt"}])
        );

        let other = parse_webhook(Some("+44 111"), &fixture("infobip_inbound.json")).unwrap();
        assert!(other.messages.is_empty());
        assert_eq!(other.skipped.len(), 2);
    }

    #[test]
    fn reads_delivery_and_seen_reports() {
        let id = "a28dd97c-1ffb-4fcf-99f1-0b557ed381da";
        let delivered = parse_webhook(None, &fixture("infobip_delivery_report.json")).unwrap();
        assert_eq!(
            delivered.statuses,
            [StatusUpdate {
                provider_id: id.into(),
                status: ProviderStatus::Delivered,
                timestamp: Some("2019-04-09T19:01:56.494Z".into()),
                error: None
            }]
        );
        let seen = parse_webhook(None, &fixture("infobip_seen_report.json")).unwrap();
        assert_eq!(seen.statuses[0].status, ProviderStatus::Read);
        assert_eq!(
            seen.statuses[0].timestamp.as_deref(),
            Some("2019-04-09T19:02:10.251Z")
        );
        let failed = parse_webhook(None, &fixture("infobip_undeliverable_report.json")).unwrap();
        assert_eq!(failed.statuses[0].status, ProviderStatus::Failed);
        assert_eq!(
            failed.statuses[0].error.as_deref(),
            Some(
                "UNDELIVERABLE_NOT_DELIVERED (Message sent not delivered); error EC_ABSENT_SUBSCRIBER (Absent Subscriber), permanent: false"
            )
        );
        assert!(delivered.messages.is_empty() && seen.messages.is_empty());
    }

    #[test]
    fn unexpected_shapes_are_skipped_and_non_json_refused() {
        for body in [
            &b"[]"[..],
            b"{}",
            b"null",
            br#"{"results": {}}"#,
            br#"{"results": [1, {"to": "x"}]}"#,
        ] {
            let batch = parse_webhook(None, body).unwrap();
            assert!(batch.messages.is_empty() && batch.statuses.is_empty());
            assert!(!batch.skipped.is_empty());
        }
        assert!(matches!(
            parse_webhook(None, b"<xml/>"),
            Err(InboundError::Malformed(_))
        ));
    }

    fn webhook_like() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
            Just(json!("TEXT")),
            Just(json!("DELIVERED")),
            Just(json!("REJECTED")),
        ];
        let key = keys(&[
            "results",
            "from",
            "to",
            "messageId",
            "message",
            "type",
            "text",
            "caption",
            "contact",
            "name",
            "status",
            "groupName",
            "groupId",
            "error",
            "permanent",
            "seenAt",
            "doneAt",
            "context",
            "id",
            "description",
            "requestError",
            "serviceException",
            "validationErrors",
            "errorCode",
            "violations",
            "property",
            "violation",
        ]);
        json_tree(leaf, key, 5, 48)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_webhook(Some("1"), &body);
        }

        #[test]
        fn arbitrary_json_never_panics(value in webhook_like()) {
            let body = value.to_string();
            prop_assert!(parse_webhook(Some("447860099299"), body.as_bytes()).is_ok());
            for status in [200, 400, 429, 500] {
                let _ = classify(status, None, &body);
            }
        }
    }

    #[test]
    fn requires_every_field() {
        let errors = WhatsappInfobipAdapter
            .validate_config(&json!({"base_url": "nope"}))
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["config.base_url", "config.api_key", "config.sender"]
        );
    }
}
