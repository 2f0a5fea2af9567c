//! Activities: the messages, events and typing signals of a conversation.

use serde_json::Value;

use super::{
    ActivityId, ConversationId, FieldError, TenantId, Timestamp, check_json_no_nul, check_no_nul,
    string_enum,
};

/// Longest `text`, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most attachments on one activity.
pub const MAX_ATTACHMENTS: usize = 20;
/// Largest `metadata`, in bytes of its compact JSON form.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest `sender` and `idempotency_key`, in characters.
const MAX_ID_CHARS: usize = 255;

string_enum! {
    /// What an activity is.
    pub enum ActivityType {
        Message => "message",
        Event => "event",
        Typing => "typing",
        /// The conversation was closed or reopened (Bot Framework's name). Recorded by
        /// the hub itself, never accepted from a client; `metadata.status` is the new
        /// status.
        #[serde(rename = "conversationUpdate")]
        ConversationUpdate => "conversationUpdate",
    }
}

string_enum! {
    /// Who an activity comes from: the conversation's external party (`inbound`) or the
    /// tenant's application or bot (`outbound`).
    pub enum Direction { Inbound => "inbound", Outbound => "outbound" }
}

/// A stored activity, serialized exactly as REST and WebSocket clients receive it.
#[derive(
    Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Activity {
    pub id: ActivityId,
    pub conversation_id: ConversationId,
    pub tenant_id: TenantId,
    /// Position in the conversation: 1, 2, 3, ... without gaps.
    pub seq: i64,
    #[serde(rename = "type")]
    #[sqlx(rename = "type", try_from = "String")]
    pub kind: ActivityType,
    #[sqlx(try_from = "String")]
    pub direction: Direction,
    pub sender: String,
    pub text: Option<String>,
    #[sqlx(json)]
    #[schema(value_type = Vec<Object>)]
    pub attachments: Value,
    #[sqlx(json)]
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    pub inserted_at: Timestamp,
}

/// An activity to be created: what a client may choose. `ingest` adds the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    pub kind: ActivityType,
    pub direction: Direction,
    pub sender: String,
    pub text: Option<String>,
    /// A JSON array of attachment objects.
    pub attachments: Value,
    /// A JSON object.
    pub metadata: Value,
    pub idempotency_key: Option<String>,
}

impl NewActivity {
    /// Checks every rule of docs/design.md#limits and returns all that are broken.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let sender = self.sender.trim();
        if sender.is_empty() {
            errors.push(FieldError::new("sender", "must not be empty"));
        } else if self.sender.chars().count() > MAX_ID_CHARS {
            errors.push(FieldError::new(
                "sender",
                format!("must be at most {MAX_ID_CHARS} characters"),
            ));
        }
        if let Some(text) = &self.text
            && text.len() > MAX_TEXT_BYTES
        {
            errors.push(FieldError::new(
                "text",
                format!("must be at most {MAX_TEXT_BYTES} bytes"),
            ));
        }
        match &self.attachments {
            Value::Array(items) => {
                if items.len() > MAX_ATTACHMENTS {
                    errors.push(FieldError::new(
                        "attachments",
                        format!("must hold at most {MAX_ATTACHMENTS} items"),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    if !item.is_object() {
                        errors.push(FieldError::new(
                            format!("attachments[{i}]"),
                            "must be an object",
                        ));
                    }
                }
            }
            _ => errors.push(FieldError::new("attachments", "must be an array")),
        }
        if !self.metadata.is_object() {
            errors.push(FieldError::new("metadata", "must be an object"));
        } else if serde_json::to_vec(&self.metadata).map_or(0, |v| v.len()) > MAX_METADATA_BYTES {
            errors.push(FieldError::new(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
            ));
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.chars().count() > MAX_ID_CHARS)
        {
            errors.push(FieldError::new(
                "idempotency_key",
                format!("must be 1 to {MAX_ID_CHARS} characters"),
            ));
        }
        let texts = [
            ("sender", Some(self.sender.as_str())),
            ("text", self.text.as_deref()),
            ("idempotency_key", self.idempotency_key.as_deref()),
        ];
        for (field, text) in texts {
            if let Some(text) = text {
                errors.extend(check_no_nul(field, text).err());
            }
        }
        errors.extend(check_json_no_nul("attachments", &self.attachments).err());
        errors.extend(check_json_no_nul("metadata", &self.metadata).err());
        if self.kind == ActivityType::ConversationUpdate {
            errors.push(FieldError::new(
                "type",
                "conversationUpdate activities are recorded by the hub when a conversation \
                 is closed or reopened",
            ));
        }
        let has_text = self.text.as_deref().is_some_and(|t| !t.trim().is_empty());
        let has_attachments = self.attachments.as_array().is_some_and(|a| !a.is_empty());
        if self.kind == ActivityType::Message && !has_text && !has_attachments {
            errors.push(FieldError::new(
                "text",
                "a message needs text or at least one attachment",
            ));
        }
        errors
    }

    /// Whether `existing`, found under the same idempotency key, was created from the same
    /// request. A replay must match on everything the client chose.
    pub fn same_request_as(&self, existing: &Activity) -> bool {
        self.kind == existing.kind
            && self.direction == existing.direction
            && self.sender == existing.sender
            && self.text == existing.text
            && self.attachments == existing.attachments
            && self.metadata == existing.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn message(text: &str) -> NewActivity {
        NewActivity {
            kind: ActivityType::Message,
            direction: Direction::Inbound,
            sender: "user-1".into(),
            text: Some(text.into()),
            attachments: json!([]),
            metadata: json!({}),
            idempotency_key: None,
        }
    }

    #[test]
    fn accepts_plain_message() {
        assert!(message("hi").validate().is_empty());
    }

    #[test]
    fn message_needs_content() {
        let errors = message("  ").validate();
        assert_eq!(
            errors,
            vec![FieldError::new(
                "text",
                "a message needs text or at least one attachment"
            )]
        );
        let mut typing = message("");
        typing.kind = ActivityType::Typing;
        assert!(typing.validate().is_empty());
    }

    #[test]
    fn reports_every_broken_rule() {
        let mut a = message(&"x".repeat(MAX_TEXT_BYTES + 1));
        a.sender = String::new();
        a.attachments = json!([1]);
        a.metadata = json!([]);
        let fields: Vec<_> = a.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["sender", "text", "attachments[0]", "metadata"]);
    }

    #[test]
    fn a_nul_anywhere_is_refused_on_its_field() {
        let mut a = message("he\0llo");
        a.sender = "us\0er".into();
        a.attachments = json!([{"url": "u\0"}]);
        a.metadata = json!({"foo": "\0"});
        a.idempotency_key = Some("k\0".into());
        let fields: Vec<_> = a.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "sender",
                "text",
                "idempotency_key",
                "attachments[0].url",
                "metadata.foo"
            ]
        );
    }

    #[test]
    fn conversation_updates_are_not_for_clients() {
        let mut a = message("");
        a.kind = ActivityType::ConversationUpdate;
        let fields: Vec<_> = a.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["type"]);
        assert_eq!(
            serde_json::to_value(ActivityType::ConversationUpdate).unwrap(),
            "conversationUpdate"
        );
        assert_eq!(
            "conversationUpdate".parse::<ActivityType>(),
            Ok(ActivityType::ConversationUpdate)
        );
    }

    #[test]
    fn limits_are_inclusive() {
        let mut a = message(&"é".repeat(MAX_TEXT_BYTES / 2));
        a.attachments = serde_json::Value::Array(vec![json!({}); MAX_ATTACHMENTS]);
        assert!(a.validate().is_empty());
        a.attachments = serde_json::Value::Array(vec![json!({}); MAX_ATTACHMENTS + 1]);
        assert_eq!(a.validate()[0].field, "attachments");
    }

    proptest! {
        /// Validation is total: any input gets an answer, and an accepted activity
        /// respects every documented limit.
        #[test]
        fn accepted_activities_respect_limits(
            text in proptest::option::of(".{0,64}"),
            sender in ".{0,300}",
            n_attachments in 0usize..30,
            meta_len in 0usize..20_000,
            kind in prop_oneof![Just(ActivityType::Message), Just(ActivityType::Event), Just(ActivityType::Typing)],
        ) {
            let a = NewActivity {
                kind,
                direction: Direction::Outbound,
                sender,
                text,
                attachments: serde_json::Value::Array(vec![json!({"url": "u"}); n_attachments]),
                metadata: json!({"k": "v".repeat(meta_len)}),
                idempotency_key: None,
            };
            if a.validate().is_empty() {
                prop_assert!(!a.sender.trim().is_empty() && a.sender.chars().count() <= 255);
                prop_assert!(n_attachments <= MAX_ATTACHMENTS);
                prop_assert!(serde_json::to_vec(&a.metadata).unwrap().len() <= MAX_METADATA_BYTES);
                if kind == ActivityType::Message {
                    prop_assert!(a.text.as_deref().is_some_and(|t| !t.trim().is_empty()) || n_attachments > 0);
                }
            }
        }
    }
}
