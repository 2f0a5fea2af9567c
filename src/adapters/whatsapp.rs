//! What the two WhatsApp adapters share: who an outbound message goes to, what text it
//! carries, how a provider's message becomes an inbound message, and the order of
//! provider statuses.
//!
//! Pure functions, no I/O: the adapters speak each provider's wire format around them.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::webhook::{retry_after, transport_error};
use super::{AdapterError, InboundMessage, Outbound};
use crate::domain::ActivityType;

/// WhatsApp's limit on a text message body, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Request timeout of one send, below the worker's lease.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of a provider's answer is read; the rest is never downloaded.
const RESPONSE_BODY_LIMIT: usize = 64 * 1024;

/// A provider endpoint built from a validated base URL.
///
/// # Errors
/// Permanent when the result is no URL (a config that predates validation).
pub fn endpoint(url: String) -> Result<url::Url, AdapterError> {
    url::Url::parse(&url).map_err(|e| AdapterError::permanent(format!("bad provider URL: {e}")))
}

/// Sends one message to a provider: `request` is the provider's URL with its
/// credentials, `body` the provider's JSON. Returns the answer's status, `Retry-After`
/// and body, which each provider reads its own way; notes the answer in the attempt's
/// exchange.
///
/// # Errors
/// Retryable for transport failures and timeouts.
pub async fn send(
    request: reqwest::RequestBuilder,
    body: &Value,
    out: &Outbound<'_>,
) -> Result<(u16, Option<Duration>, String), AdapterError> {
    let response = request
        .timeout(REQUEST_TIMEOUT.min(out.max_timeout))
        .json(body)
        .send()
        .await
        .map_err(|e| transport_error(&e))?;
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    let body = crate::egress::read_capped(response, RESPONSE_BODY_LIMIT)
        .await
        .unwrap_or_default();
    out.exchange.answered(status, &body);
    Ok((status, after, String::from_utf8_lossy(&body).into_owned()))
}

/// The recipient of an outbound message: the conversation's external id (the user's
/// phone number or `wa_id`), else the activity's `metadata.recipient_phone` or
/// `metadata.to`. A conversation of another channel (a routed activity) names that
/// channel's party, so the activity's metadata comes first there.
///
/// # Errors
/// Permanent when no recipient is known: retrying cannot find one.
pub fn recipient(out: &Outbound<'_>) -> Result<String, AdapterError> {
    let from_conversation = out
        .conversation
        .external_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let metadata = &out.activity.metadata;
    let from_metadata = ["recipient_phone", "to"].iter().find_map(|key| {
        metadata
            .get(*key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    });
    let own_conversation = out.conversation.channel_id == out.channel.id;
    let found = if own_conversation {
        from_conversation.or(from_metadata)
    } else {
        from_metadata.or(from_conversation)
    };
    found.map(str::to_owned).ok_or_else(|| {
        AdapterError::permanent(
            "no WhatsApp recipient: the conversation has no external_id and the activity \
             has no metadata.recipient_phone or metadata.to",
        )
    })
}

/// The text of an outbound message.
///
/// # Errors
/// Permanent for a message without text (only text messages are sent) or longer than
/// WhatsApp takes.
pub fn text(out: &Outbound<'_>) -> Result<String, AdapterError> {
    let text = out
        .activity
        .text
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            AdapterError::permanent("only text messages are sent to WhatsApp; this one has no text")
        })?;
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(AdapterError::permanent(format!(
            "WhatsApp text messages hold at most {MAX_TEXT_CHARS} characters; this one has {chars}"
        )));
    }
    Ok(text.to_owned())
}

/// Where a delivery stands at the provider, in the only order it may move: `sent <
/// delivered < read`; `failed` is terminal and counts only before `delivered` (a
/// message the user's phone has is not undone by a late failure report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl ProviderStatus {
    /// The name stored in the delivery's metadata and sent to sockets.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderStatus::Sent => "sent",
            ProviderStatus::Delivered => "delivered",
            ProviderStatus::Read => "read",
            ProviderStatus::Failed => "failed",
        }
    }

    /// Parses a stored or reported name; Meta's `played` (voice messages) counts as read.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sent" => Some(ProviderStatus::Sent),
            "delivered" => Some(ProviderStatus::Delivered),
            "read" | "played" => Some(ProviderStatus::Read),
            "failed" => Some(ProviderStatus::Failed),
            _ => None,
        }
    }

    /// Whether a delivery at `current` (none yet: `None`) moves to `self`. Duplicates
    /// and reports that arrive out of order never move it back.
    pub fn advances(self, current: Option<ProviderStatus>) -> bool {
        use ProviderStatus::*;
        match (current, self) {
            (Some(Failed), _) => false,
            (None, _) => true,
            (Some(Sent), Failed) => true,
            (Some(_), Failed) => false,
            (Some(cur), new) => new.rank() > cur.rank(),
        }
    }

    fn rank(self) -> u8 {
        match self {
            ProviderStatus::Sent => 1,
            ProviderStatus::Delivered => 2,
            ProviderStatus::Read => 3,
            ProviderStatus::Failed => 4,
        }
    }
}

/// The parts of one provider message that become an inbound activity.
#[derive(Debug, Default)]
pub struct Incoming {
    pub provider_id: String,
    pub from: String,
    pub contact_name: Option<String>,
    /// The provider's type name, lowercased (`text`, `image`, `location`, ...).
    pub wa_type: String,
    pub text: Option<String>,
    /// The typed content of a non-text message, as the provider sent it.
    pub content: Option<Value>,
    pub timestamp: Option<String>,
    /// The provider id of the message this one answers.
    pub reply_to: Option<String>,
}

/// Turns a provider message into an inbound message. Non-text messages keep their
/// content as one attachment `{"type": <wa type>, ...}`; a message with neither text
/// nor content becomes an `event` (a WhatsApp `system` or `unsupported` notice), so
/// no provider message is refused for lack of text.
///
/// The sender's number (the provider's digits, `4915112345678`) becomes the E.164
/// form WhatsApp conversations are keyed by (`+4915112345678`), as `external_id` and
/// `sender`, so the reply lands in the conversation the application opened for that
/// number. An id that is no phone number (a provider's user id) is kept as sent.
pub fn inbound_message(incoming: Incoming) -> InboundMessage {
    let text = incoming.text.filter(|t| !t.trim().is_empty());
    let mut attachments = Vec::new();
    if incoming.wa_type != "text" {
        let mut attachment = match incoming.content {
            Some(Value::Object(map)) => map,
            Some(other) => Map::from_iter([("value".to_owned(), other)]),
            None => Map::new(),
        };
        attachment.insert("type".into(), Value::String(incoming.wa_type.clone()));
        attachments.push(Value::Object(attachment));
    }
    let kind = if text.is_none() && attachments.is_empty() {
        ActivityType::Event
    } else {
        ActivityType::Message
    };
    let mut metadata = Map::new();
    metadata.insert("whatsapp_type".into(), json!(incoming.wa_type));
    if let Some(name) = &incoming.contact_name {
        metadata.insert("sender_name".into(), json!(name));
    }
    if let Some(ts) = incoming.timestamp {
        metadata.insert("provider_timestamp".into(), json!(ts));
    }
    if let Some(id) = incoming.reply_to {
        metadata.insert("reply_to".into(), json!(id));
    }
    let from = crate::domain::normalise_phone(&incoming.from).unwrap_or(incoming.from);
    InboundMessage {
        provider_id: Some(incoming.provider_id),
        external_id: from.clone(),
        sender: from,
        conversation_id: None,
        contact_name: incoming.contact_name,
        kind,
        text,
        attachments: Value::Array(attachments),
        metadata: Value::Object(metadata),
    }
}

/// A string field that may also arrive as a number.
pub fn str_field(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A provider's time as RFC 3339 UTC: Meta's Unix seconds (`"1750857384"`) or Infobip's
/// `2019-04-09T16:01:56.494-0300` (offset without colon, docs/protocols.md#infobip-webhooks); anything else as sent.
pub fn provider_time(raw: &str) -> String {
    use chrono::{DateTime, SecondsFormat, Utc};
    let parsed = match raw.parse::<i64>() {
        Ok(secs) => DateTime::<Utc>::from_timestamp(secs, 0),
        Err(_) => DateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f%z")
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    };
    match parsed {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => raw.to_owned(),
    }
}

/// Cuts provider text kept in `last_error` to a readable length.
pub fn excerpt(text: &str, chars: usize) -> String {
    let mut out: String = text.chars().take(chars).collect();
    if text.chars().count() > chars {
        out.push('…');
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A provider payload sample from `tests/fixtures`.
    pub(in crate::adapters) fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn provider_times() {
        assert_eq!(provider_time("1750857384"), "2025-06-25T13:16:24Z");
        assert_eq!(
            provider_time("2019-04-09T16:01:56.494-0300"),
            "2019-04-09T19:01:56.494Z"
        );
        assert_eq!(provider_time("yesterday"), "yesterday");
    }

    #[test]
    fn statuses_only_move_forward() {
        use ProviderStatus::*;
        assert!(Sent.advances(None));
        assert!(Read.advances(Some(Delivered)));
        assert!(Read.advances(Some(Sent)), "delivered may be skipped");
        assert!(!Delivered.advances(Some(Read)));
        assert!(
            !Delivered.advances(Some(Delivered)),
            "duplicates change nothing"
        );
        assert!(Failed.advances(Some(Sent)));
        assert!(Failed.advances(None));
        assert!(!Failed.advances(Some(Delivered)));
        assert!(!Failed.advances(Some(Read)));
        assert!(!Read.advances(Some(Failed)));
        assert_eq!(ProviderStatus::parse("played"), Some(Read));
        assert_eq!(ProviderStatus::parse("deleted"), None);
    }

    #[test]
    fn senders_are_keyed_by_their_e164_number() {
        let m = inbound_message(Incoming {
            provider_id: "w1".into(),
            from: "4915112345678".into(),
            wa_type: "text".into(),
            text: Some("hi".into()),
            ..Incoming::default()
        });
        assert_eq!(
            (m.external_id.as_str(), m.sender.as_str()),
            ("+4915112345678", "+4915112345678")
        );
        let m = inbound_message(Incoming {
            provider_id: "w2".into(),
            from: "US.13491208655302741918".into(),
            wa_type: "text".into(),
            text: Some("hi".into()),
            ..Incoming::default()
        });
        assert_eq!(m.external_id, "US.13491208655302741918");
    }

    #[test]
    fn non_text_keeps_its_content_and_empty_text_is_an_event() {
        let m = inbound_message(Incoming {
            provider_id: "w1".into(),
            from: "1".into(),
            wa_type: "unsupported".into(),
            ..Incoming::default()
        });
        assert_eq!(m.kind, ActivityType::Message);
        assert_eq!(m.attachments, json!([{"type": "unsupported"}]));
        let m = inbound_message(Incoming {
            provider_id: "w2".into(),
            from: "1".into(),
            wa_type: "text".into(),
            text: Some("  ".into()),
            ..Incoming::default()
        });
        assert_eq!((m.kind, m.text), (ActivityType::Event, None));
    }
}
