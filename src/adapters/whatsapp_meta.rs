//! `whatsapp_meta`: WhatsApp through Meta's Cloud API (Graph API), docs/protocols.md#whatsapp-cloud-api.
//!
//! Outbound: a text message per delivery, `POST {api_base_url}/{api_version}/
//! {phone_number_id}/messages` with the access token as bearer; the returned `wamid` is
//! the delivery's external id, which status notifications name. Failures are classified
//! by the Graph error's `code`, not the HTTP status (docs/protocols.md#meta-send-errors).
//!
//! Inbound: the `GET` verification handshake (`hub.verify_token`), and notifications
//! signed with `X-Hub-Signature-256` over the raw body with the app secret. Every
//! message of every entry and change becomes an inbound message keyed by its `wamid`;
//! `statuses[]` become status updates. Meta re-sends anything not answered 200 for up to
//! 7 days, so this adapter is lenient: a JSON payload of an unexpected shape, or an item
//! that cannot be read, is skipped and logged; only a body that is not JSON at all is
//! refused (400). The access token never appears in errors or logs.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa::openapi::schema::SchemaFormat;

use super::config::{ConfigSpec, HttpUrl, checked_string, stored};
use super::signing::verify_hub_signature;
use super::whatsapp::{self, Incoming, ProviderStatus, excerpt, str_field};
use super::{
    AdapterError, ChannelAdapter, Delivered, InboundBatch, InboundError, Outbound, StatusUpdate,
};
use crate::domain::{ActivityType, Channel, ChannelType, DeliveryOrdering, Direction, RateLimit};

/// Settings of a `whatsapp_meta` channel.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(title = "whatsapp_meta")]
pub struct WhatsappMetaConfig {
    /// Phone number ID
    ///
    /// The numeric id Meta shows for the number.
    #[schema(inline)]
    pub phone_number_id: PhoneNumberId,
    /// Access token
    ///
    /// Sent as the bearer token of every Graph API request.
    #[schema(format = Password)]
    pub access_token: String,
    /// Verify token
    ///
    /// Meta sends it back during webhook verification.
    #[schema(format = Password)]
    pub verify_token: String,
    /// App secret
    ///
    /// Verifies X-Hub-Signature-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Password)]
    pub app_secret: Option<String>,
    /// API version
    ///
    /// The Graph API version sent to.
    #[serde(default = "default_api_version")]
    #[schema(inline, default = default_api_version)]
    pub api_version: ApiVersion,
    /// API base URL
    ///
    /// Where the Graph API is.
    #[serde(default = "default_api_base_url")]
    #[schema(inline, default = default_api_base_url)]
    pub api_base_url: HttpUrl,
    /// Accept unsigned notifications (no app secret)
    ///
    /// Without an app secret, unsigned inbound notifications are refused unless this is true.
    #[serde(default)]
    #[schema(default = false)]
    pub allow_unsigned_inbound: bool,
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

fn default_api_version() -> ApiVersion {
    ApiVersion::from("v18.0")
}

fn default_api_base_url() -> HttpUrl {
    HttpUrl::from("https://graph.facebook.com")
}

checked_string! {
    /// The id Meta shows for a phone number: digits only.
    PhoneNumberId,
    None::<SchemaFormat>,
    "must be the numeric id Meta shows for the number",
    |s| s.chars().all(|c| c.is_ascii_digit())
}

checked_string! {
    /// A Graph API version such as `v18.0`.
    ApiVersion,
    None::<SchemaFormat>,
    "must look like v18.0",
    |s| {
        s.strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(major, minor)| {
                !major.is_empty()
                    && !minor.is_empty()
                    && major.chars().chain(minor.chars()).all(|c| c.is_ascii_digit())
            })
    }
}

/// Adapter of `whatsapp_meta` channels.
pub struct WhatsappMetaAdapter;

/// Reads a channel's stored config, for the inbound side.
fn inbound_config(channel: &Channel) -> Result<WhatsappMetaConfig, InboundError> {
    stored(&channel.config).map_err(InboundError::Unauthorized)
}

/// The signature header of Meta's notifications.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Graph error codes worth retrying with backoff: transient errors (docs/protocols.md#meta-send-errors).
const TRANSIENT_CODES: &[i64] = &[1, 2, 131000, 131016, 133004, 131057];
/// Throttling codes: retried later, with the backoff schedule.
const THROTTLING_CODES: &[i64] = &[4, 80007, 130429, 131056, 133016];
/// Codes after which Meta asks not to retry until someone looks (quality, limits).
const PAUSE_CODES: &[i64] = &[131048, 131049, 132015, 131064];

#[async_trait::async_trait]
impl ChannelAdapter for WhatsappMetaAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::WhatsappMeta
    }

    fn config_spec(&self) -> &'static ConfigSpec {
        static SPEC: LazyLock<ConfigSpec> = LazyLock::new(ConfigSpec::of::<WhatsappMetaConfig>);
        &SPEC
    }

    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool {
        direction == Direction::Outbound && kind == ActivityType::Message
    }

    async fn deliver(&self, out: &Outbound<'_>) -> Result<Delivered, AdapterError> {
        let config: WhatsappMetaConfig =
            stored(&out.channel.config).map_err(AdapterError::permanent)?;
        let to = whatsapp::recipient(out)?;
        let text = whatsapp::text(out)?;
        let url = whatsapp::endpoint(format!(
            "{}/{}/{}/messages",
            config.api_base_url.base(),
            config.api_version.as_str(),
            config.phone_number_id.as_str()
        ))?;
        let body = send_body(&to, &text, &out.delivery_id.to_string());
        let request = out
            .http
            .request(reqwest::Method::POST, &url)?
            .bearer_auth(&config.access_token);
        let (status, after, text) = whatsapp::send(request, &body, out).await?;
        classify(status, after, &text)
    }

    fn verify_inbound(
        &self,
        channel: &Channel,
        headers: &HeaderMap,
        body: &[u8],
        _now: i64,
    ) -> Result<(), InboundError> {
        let config = inbound_config(channel)?;
        let app_secret = config.app_secret.as_deref().filter(|s| !s.is_empty());
        let header = headers.get(SIGNATURE_HEADER);
        match (app_secret, header) {
            (Some(secret), Some(value)) => {
                let value = value.to_str().map_err(|_| {
                    InboundError::Unauthorized("the signature header is not ASCII".into())
                })?;
                verify_hub_signature(secret, value, body)
                    .map_err(|e| InboundError::Unauthorized(e.to_string()))
            }
            (Some(_), None) => Err(InboundError::Unauthorized(format!(
                "the {SIGNATURE_HEADER} header is required"
            ))),
            (None, _) if config.allow_unsigned_inbound => Ok(()),
            (None, _) => Err(InboundError::Unauthorized(
                "the channel has no app_secret to verify notifications with, and \
                 allow_unsigned_inbound is false"
                    .into(),
            )),
        }
    }

    fn parse_inbound(&self, channel: &Channel, body: &[u8]) -> Result<InboundBatch, InboundError> {
        let config: WhatsappMetaConfig =
            stored(&channel.config).map_err(InboundError::Malformed)?;
        parse_notification(Some(config.phone_number_id.as_str()), body)
    }

    fn inbound_signature_header(&self) -> Option<&'static str> {
        Some(SIGNATURE_HEADER)
    }

    fn lenient_inbound(&self) -> bool {
        true
    }

    fn verify_subscription(
        &self,
        channel: &Channel,
        params: &[(String, String)],
    ) -> Result<Option<String>, InboundError> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let config: WhatsappMetaConfig =
            stored(&channel.config).map_err(InboundError::Forbidden)?;
        let expected = config.verify_token.as_str();
        let token_ok = param("hub.verify_token").is_some_and(|given| {
            !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
        });
        match (param("hub.mode"), param("hub.challenge")) {
            (Some("subscribe"), Some(challenge)) if token_ok => Ok(Some(challenge.to_owned())),
            _ => Err(InboundError::Forbidden(
                "hub.mode must be subscribe and hub.verify_token must match the channel's".into(),
            )),
        }
    }
}

/// The documented text-message body (docs/protocols.md#meta-send). The delivery id rides along as
/// `biz_opaque_callback_data`, which Meta echoes in status notifications.
fn send_body(to: &str, text: &str, delivery_id: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": { "preview_url": false, "body": text },
        "biz_opaque_callback_data": delivery_id,
    })
}

/// Reads a send answer: the `wamid` of a 2xx, else the Graph error classified by its
/// `code` (docs/protocols.md#meta-send-errors); without an error envelope, by HTTP status.
fn classify(status: u16, after: Option<Duration>, body: &str) -> Result<Delivered, AdapterError> {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    if (200..300).contains(&status) {
        let external_id = parsed
            .as_ref()
            .and_then(|v| v.pointer("/messages/0/id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if external_id.is_none() {
            tracing::warn!("the Graph API accepted a message without returning its id");
        }
        return Ok(Delivered {
            external_id,
            reply: None,
        });
    }
    let retryable_status = matches!(status, 408 | 425 | 429) || status >= 500;
    let Some(error) = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|e| e.is_object())
    else {
        let message = if body.trim().is_empty() {
            format!("Graph API HTTP {status}")
        } else {
            format!("Graph API HTTP {status}: {}", excerpt(body, 200))
        };
        return Err(if retryable_status {
            AdapterError::Retryable {
                message,
                retry_after: after,
                reached: true,
            }
        } else {
            AdapterError::Permanent {
                message,
                reached: true,
            }
        });
    };
    let code = error["code"].as_i64();
    let mut message = match code {
        Some(code) => format!("WhatsApp error {code} (HTTP {status})"),
        None => format!("WhatsApp error without code (HTTP {status})"),
    };
    if let Some(text) = error["message"].as_str() {
        message.push_str(": ");
        message.push_str(&excerpt(text, 200));
    }
    if let Some(details) = error.pointer("/error_data/details").and_then(Value::as_str) {
        message.push_str(" — ");
        message.push_str(&excerpt(details, 300));
    }
    if let Some(trace) = error["fbtrace_id"].as_str() {
        message.push_str(&format!(" [fbtrace_id {}]", excerpt(trace, 64)));
    }
    let retry = match code {
        Some(c) if TRANSIENT_CODES.contains(&c) || THROTTLING_CODES.contains(&c) => true,
        Some(c) if PAUSE_CODES.contains(&c) => {
            message.push_str(
                " (Meta asks not to retry until this is resolved; retry the delivery then)",
            );
            false
        }
        Some(_) => error["is_transient"].as_bool() == Some(true),
        None => error["is_transient"].as_bool() == Some(true) || retryable_status,
    };
    Err(if retry {
        AdapterError::Retryable {
            message,
            retry_after: after,
            reached: true,
        }
    } else {
        AdapterError::Permanent {
            message,
            reached: true,
        }
    })
}

/// Reads a notification (docs/protocols.md#meta-notifications): every message and status of every entry and change.
/// Changes for another phone number id than the channel's (one Meta app may serve
/// several numbers through one URL) are skipped.
///
/// # Errors
/// `Malformed` only for a body that is not JSON.
pub fn parse_notification(
    phone_number_id: Option<&str>,
    body: &[u8],
) -> Result<InboundBatch, InboundError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| InboundError::Malformed(format!("the body is not valid JSON: {e}")))?;
    let mut batch = InboundBatch::default();
    if let Some(object) = root.get("object").and_then(Value::as_str)
        && object != "whatsapp_business_account"
    {
        batch
            .skipped
            .push(format!("notification of object {object:?}"));
        return Ok(batch);
    }
    let Some(entries) = root.get("entry").and_then(Value::as_array) else {
        batch
            .skipped
            .push("not a WhatsApp notification: no entry array".into());
        return Ok(batch);
    };
    for entry in entries {
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            batch.skipped.push("an entry without changes".into());
            continue;
        };
        for change in changes {
            let field = change.get("field").and_then(Value::as_str).unwrap_or("");
            let value = change.get("value").unwrap_or(&Value::Null);
            if field != "messages" || !value.is_object() {
                batch
                    .skipped
                    .push(format!("a change of field {field:?} without messages"));
                continue;
            }
            let number = value.pointer("/metadata/phone_number_id").and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            });
            if let (Some(number), Some(ours)) = (&number, phone_number_id)
                && number != ours
            {
                batch
                    .skipped
                    .push(format!("a change for phone number id {number}"));
                continue;
            }
            parse_value(value, &mut batch);
        }
    }
    Ok(batch)
}

fn parse_value(value: &Value, batch: &mut InboundBatch) {
    let mut names = HashMap::new();
    for contact in value
        .get("contacts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(wa_id), Some(name)) = (
            str_field(contact, "wa_id"),
            contact.pointer("/profile/name").and_then(Value::as_str),
        ) {
            names.insert(wa_id, name.to_owned());
        }
    }
    for (i, message) in value
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match parse_message(message, &names) {
            Some(incoming) => batch.messages.push(whatsapp::inbound_message(incoming)),
            None => batch
                .skipped
                .push(format!("message {i} without from or id")),
        }
    }
    for (i, status) in value
        .get("statuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match parse_status(status) {
            Some(update) => batch.statuses.push(update),
            None => batch
                .skipped
                .push(format!("status {i} without id or with an unknown status")),
        }
    }
    for error in value
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        batch.skipped.push(format!(
            "an error notification: {}",
            describe_error(error).unwrap_or_default()
        ));
    }
}

fn parse_message(message: &Value, names: &HashMap<String, String>) -> Option<Incoming> {
    let from = str_field(message, "from")?;
    let provider_id = str_field(message, "id")?;
    let wa_type = message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_ascii_lowercase();
    let content = message.get(&wa_type).cloned();
    let pick = |paths: &[&str]| {
        paths.iter().find_map(|p| {
            content
                .as_ref()
                .and_then(|c| c.pointer(p))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    };
    let text = match wa_type.as_str() {
        "text" => pick(&["/body"]),
        "image" | "video" | "document" => pick(&["/caption"]),
        "button" => pick(&["/text"]),
        "interactive" => pick(&[
            "/button_reply/title",
            "/list_reply/title",
            "/nfm_reply/body",
        ]),
        "reaction" => pick(&["/emoji"]),
        "location" => pick(&["/name", "/address"]),
        "system" => pick(&["/body"]),
        _ => None,
    };
    Some(Incoming {
        contact_name: names.get(&from).cloned(),
        provider_id,
        from,
        content: if wa_type == "text" { None } else { content },
        wa_type,
        text,
        timestamp: str_field(message, "timestamp"),
        reply_to: message
            .pointer("/context/id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn parse_status(status: &Value) -> Option<StatusUpdate> {
    let provider_id = str_field(status, "id")?;
    let state = ProviderStatus::parse(status.get("status")?.as_str()?)?;
    let error = status
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|errors| errors.first())
        .and_then(describe_error);
    Some(StatusUpdate {
        provider_id,
        status: state,
        timestamp: str_field(status, "timestamp").map(|t| whatsapp::provider_time(&t)),
        error,
    })
}

/// `131047 Re-engagement message: <details>` from one entry of an `errors` array.
fn describe_error(error: &Value) -> Option<String> {
    let code = error.get("code").and_then(Value::as_i64);
    let title = error
        .get("title")
        .or_else(|| error.get("message"))
        .and_then(Value::as_str);
    let details = error.pointer("/error_data/details").and_then(Value::as_str);
    if code.is_none() && title.is_none() && details.is_none() {
        return None;
    }
    let mut out = code.map(|c| c.to_string()).unwrap_or_default();
    if let Some(title) = title {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&excerpt(title, 200));
    }
    if let Some(details) = details {
        out.push_str(": ");
        out.push_str(&excerpt(details, 300));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::tests::{json_tree, keys};
    use crate::adapters::whatsapp::tests::fixture;
    use proptest::prelude::*;

    const PHONE: Option<&str> = Some("106540352242922");

    fn graph_error(code: i64) -> String {
        json!({"error": {"message": format!("(#{code}) Title"), "type": "OAuthException", "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": "Details here"}, "fbtrace_id": "Az8or2"}})
        .to_string()
    }

    #[test]
    fn send_answers_are_classified_by_error_code() {
        let ok = r#"{"messaging_product":"whatsapp","contacts":[{"input":"+16505551234","wa_id":"16505551234"}],"messages":[{"id":"wamid.X"}]}"#;
        assert_eq!(
            classify(200, None, ok).unwrap().external_id.as_deref(),
            Some("wamid.X")
        );

        for code in [
            1, 2, 131000, 131016, 133004, 131057, 4, 80007, 130429, 131056, 133016,
        ] {
            // Throttling codes come as 400 or 429: the code decides, not the status.
            let err = classify(400, Some(Duration::from_secs(7)), &graph_error(code)).unwrap_err();
            assert!(
                matches!(&err, AdapterError::Retryable { message, retry_after: Some(_), .. } if message.contains(&code.to_string())),
                "{code}: {err:?}"
            );
        }
        for code in [
            0, 190, 3, 10, 200, 33, 131005, 133010, 100, 131008, 131009, 131026, 131047, 132001,
            368, 131031, 131048, 131064,
        ] {
            let err = classify(400, None, &graph_error(code)).unwrap_err();
            let AdapterError::Permanent { message, .. } = &err else {
                panic!("{code}: {err:?}")
            };
            assert!(message.starts_with(&format!("WhatsApp error {code} (HTTP 400): (#{code}) Title — Details here [fbtrace_id Az8or2]")), "{message}");
        }
        let expired = r#"{"error":{"message":"Error validating access token: Session has expired on Friday, 01-Mar-24 10:00:00 PST.","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"A1b2C3d4E5f6"}}"#;
        assert!(
            matches!(classify(401, None, expired), Err(AdapterError::Permanent { message, .. }) if message.contains("190") && message.contains("access token"))
        );
        let transient = r#"{"error":{"message":"x","code":99999,"is_transient":true}}"#;
        assert!(matches!(
            classify(400, None, transient),
            Err(AdapterError::Retryable { .. })
        ));
        assert!(matches!(
            classify(503, None, ""),
            Err(AdapterError::Retryable { .. })
        ));
        assert!(matches!(
            classify(502, None, "<html>bad gateway</html>"),
            Err(AdapterError::Retryable { .. })
        ));
        assert!(matches!(
            classify(404, None, "nope"),
            Err(AdapterError::Permanent { .. })
        ));
    }

    #[test]
    fn send_body_is_the_documented_one() {
        assert_eq!(
            send_body("16505551234", "hi", "d1"),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
                "type": "text", "text": {"preview_url": false, "body": "hi"}, "biz_opaque_callback_data": "d1"})
        );
    }

    #[test]
    fn reads_every_message_of_every_entry_and_change() {
        let batch = parse_notification(PHONE, &fixture("meta_batch.json")).unwrap();
        let ids: Vec<_> = batch
            .messages
            .iter()
            .map(|m| m.provider_id.clone().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "wamid.BATCH1",
                "wamid.BATCH2",
                "wamid.BATCH3",
                "wamid.BATCH4"
            ]
        );
        let omar = &batch.messages[1];
        assert_eq!(
            (omar.sender.as_str(), omar.external_id.as_str()),
            ("+4915112345678", "+4915112345678")
        );
        assert_eq!(omar.contact_name.as_deref(), Some("Omar Haddad"));
        assert_eq!(omar.metadata["sender_name"], "Omar Haddad");
        assert_eq!(
            batch.messages[2].metadata["reply_to"],
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3N0EyQUJDMjFEQzZCQUMzODMA"
        );
        assert!(batch.skipped.is_empty(), "{:?}", batch.skipped);

        let one = parse_notification(PHONE, &fixture("meta_text.json")).unwrap();
        let m = &one.messages[0];
        assert_eq!(m.text.as_deref(), Some("Does it come in another color?"));
        assert_eq!(
            m.metadata,
            json!({"whatsapp_type": "text", "sender_name": "Sheena Nelson", "provider_timestamp": "1749416383"})
        );
        assert_eq!(m.attachments, json!([]));

        // Another number of the same app: not this channel's.
        let other = parse_notification(Some("999"), &fixture("meta_text.json")).unwrap();
        assert!(other.messages.is_empty() && other.skipped.len() == 1);
    }

    #[test]
    fn non_text_messages_keep_their_content() {
        let batch = parse_notification(PHONE, &fixture("meta_non_text.json")).unwrap();
        let summary: Vec<_> = batch
            .messages
            .iter()
            .map(|m| {
                (
                    m.metadata["whatsapp_type"].as_str().unwrap(),
                    m.text.as_deref(),
                    m.attachments[0]["type"].as_str().unwrap(),
                    m.kind,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "image",
                    Some("the blue one"),
                    "image",
                    ActivityType::Message
                ),
                (
                    "location",
                    Some("Main Street Store"),
                    "location",
                    ActivityType::Message
                ),
                (
                    "reaction",
                    Some("\u{1F44D}"),
                    "reaction",
                    ActivityType::Message
                ),
                ("sticker", None, "sticker", ActivityType::Message),
                ("unsupported", None, "unsupported", ActivityType::Message),
            ]
        );
        assert_eq!(batch.messages[0].attachments[0]["id"], "1003383421387256");
        assert_eq!(batch.messages[1].attachments[0]["latitude"], 37.4841);
        for m in &batch.messages {
            let activity = crate::domain::NewActivity {
                kind: m.kind,
                direction: Direction::Inbound,
                sender: m.sender.clone(),
                text: m.text.clone(),
                attachments: m.attachments.clone(),
                metadata: m.metadata.clone(),
                idempotency_key: m.provider_id.clone(),
            };
            assert!(activity.validate().is_empty(), "{m:?}");
        }
    }

    #[test]
    fn reads_statuses_with_their_errors() {
        let batch = parse_notification(PHONE, &fixture("meta_statuses.json")).unwrap();
        assert!(batch.messages.is_empty());
        assert_eq!(
            batch.statuses,
            [StatusUpdate {
                provider_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3N0EyQUJDMjFEQzZCQUMzODMA".into(),
                status: ProviderStatus::Delivered,
                timestamp: Some("2025-06-25T13:16:24Z".into()),
                error: None,
            }]
        );
        let failed = parse_notification(PHONE, &fixture("meta_status_failed.json")).unwrap();
        assert_eq!(failed.statuses[0].status, ProviderStatus::Failed);
        assert_eq!(
            failed.statuses[0].error.as_deref(),
            Some(
                "131047 Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number."
            )
        );
    }

    #[test]
    fn unexpected_shapes_are_skipped_and_non_json_refused() {
        for body in [
            &b"[]"[..],
            b"{}",
            b"42",
            br#"{"object":"page","entry":[]}"#,
            br#"{"entry":[{"changes":[{"field":"account_update","value":{}}]}]}"#,
        ] {
            let batch = parse_notification(PHONE, body).unwrap();
            assert!(batch.messages.is_empty() && batch.statuses.is_empty());
            assert!(
                !batch.skipped.is_empty(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            parse_notification(PHONE, b"not json"),
            Err(InboundError::Malformed(_))
        ));
    }

    fn channel(config: Value) -> Channel {
        Channel {
            id: crate::domain::ChannelId::new(),
            tenant_id: crate::domain::TenantId::new(),
            name: "wa".into(),
            kind: ChannelType::WhatsappMeta,
            secret: "whsec_x".into(),
            config: WhatsappMetaAdapter.validate_config(&config).unwrap(),
            status: crate::domain::ChannelStatus::Active,
            inserted_at: crate::domain::Timestamp::now(),
            updated_at: crate::domain::Timestamp::now(),
        }
    }

    #[test]
    fn signatures_and_the_unsigned_switch() {
        let body = fixture("meta_signed_test_vector.json");
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            "sha256=bfc18852d7e7fcff57820b3d1d6fc1432d5b6463fcc1abbd11874381d479c01e"
                .parse()
                .unwrap(),
        );
        let base =
            json!({"phone_number_id": "106540352242922", "access_token": "t", "verify_token": "v"});
        let mut signed = base.clone();
        signed["app_secret"] = json!("test_app_secret");
        let signed = channel(signed);
        assert_eq!(
            WhatsappMetaAdapter.verify_inbound(&signed, &headers, &body, 0),
            Ok(())
        );
        assert!(
            WhatsappMetaAdapter
                .verify_inbound(&signed, &HeaderMap::new(), &body, 0)
                .is_err()
        );
        assert!(
            WhatsappMetaAdapter
                .verify_inbound(&signed, &headers, b"{}", 0)
                .is_err()
        );
        let unsigned = channel(base.clone());
        assert!(
            WhatsappMetaAdapter
                .verify_inbound(&unsigned, &HeaderMap::new(), &body, 0)
                .is_err()
        );
        let mut open = base;
        open["allow_unsigned_inbound"] = json!(true);
        assert_eq!(
            WhatsappMetaAdapter.verify_inbound(&channel(open), &HeaderMap::new(), &body, 0),
            Ok(())
        );
    }

    #[test]
    fn verification_handshake() {
        let ch = channel(
            json!({"phone_number_id": "1", "access_token": "t", "verify_token": "meatyhamhock"}),
        );
        let params = |mode: &str, token: &str| {
            vec![
                ("hub.mode".to_owned(), mode.to_owned()),
                ("hub.challenge".to_owned(), "1158201444".to_owned()),
                ("hub.verify_token".to_owned(), token.to_owned()),
            ]
        };
        assert_eq!(
            WhatsappMetaAdapter.verify_subscription(&ch, &params("subscribe", "meatyhamhock")),
            Ok(Some("1158201444".into()))
        );
        assert!(
            WhatsappMetaAdapter
                .verify_subscription(&ch, &params("subscribe", "wrong"))
                .is_err()
        );
        assert!(
            WhatsappMetaAdapter
                .verify_subscription(&ch, &params("unsubscribe", "meatyhamhock"))
                .is_err()
        );
        assert!(WhatsappMetaAdapter.verify_subscription(&ch, &[]).is_err());
    }

    /// Arbitrary JSON shaped like notifications: the keys the parser looks for, nested.
    fn notification_like() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
            Just(json!("messages")),
            Just(json!("text")),
            Just(json!("failed")),
            Just(json!("106540352242922")),
        ];
        let key = keys(&[
            "object",
            "entry",
            "changes",
            "field",
            "value",
            "metadata",
            "phone_number_id",
            "contacts",
            "profile",
            "name",
            "wa_id",
            "messages",
            "statuses",
            "errors",
            "from",
            "id",
            "type",
            "text",
            "body",
            "status",
            "timestamp",
            "context",
            "code",
            "title",
            "error_data",
            "details",
            "image",
            "interactive",
            "button_reply",
        ]);
        json_tree(leaf, key, 6, 64)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_notification(PHONE, &body);
        }

        #[test]
        fn arbitrary_json_never_panics(value in notification_like()) {
            let body = value.to_string();
            prop_assert!(parse_notification(PHONE, body.as_bytes()).is_ok());
            let _ = classify(400, None, &body);
            let _ = classify(200, None, &body);
        }
    }

    #[test]
    fn requires_credentials_and_fills_defaults() {
        let errors = WhatsappMetaAdapter.validate_config(&json!({})).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "config.phone_number_id",
                "config.access_token",
                "config.verify_token"
            ]
        );

        let ok = WhatsappMetaAdapter
            .validate_config(&json!({"phone_number_id": "106540352242922", "access_token": "EAAG", "verify_token": "v"}))
            .unwrap();
        assert_eq!(ok["api_version"], "v18.0");
        assert_eq!(ok["api_base_url"], "https://graph.facebook.com");
    }

    #[test]
    fn rejects_malformed_version() {
        let errors = WhatsappMetaAdapter
            .validate_config(&json!({"phone_number_id": "1", "access_token": "a", "verify_token": "v", "api_version": "18"}))
            .unwrap_err();
        assert_eq!(errors[0].field, "config.api_version");
    }
}
