//! The NOTIFY payloads PostgreSQL PubSub nodes exchange: encoding an [`Event`] into an
//! [`Envelope`] of JSON text, and decoding one back.
//!
//! Pure: no connection, no store, no task. The listener and notifier of `postgres`
//! own the I/O; this module only decides what a payload says and how it reads. Payloads
//! come from anyone who may NOTIFY on the database, so [`decode`] is total over any text
//! (an error, never a panic; property-tested below). Payloads stay readable by nodes of
//! the previous release and theirs by this one: fields are only ever added, as optional.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Event;
use crate::domain::{Activity, ActivityId, ChannelId, ConversationId, DeliveryId, TenantId};

/// PostgreSQL refuses NOTIFY payloads of this many bytes or more.
pub const PAYLOAD_LIMIT: usize = 8000;

/// A NOTIFY payload: the sending node and what it says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// The node that published: receivers skip their own notifications.
    pub node: Uuid,
    pub notice: Notice<'a>,
    /// When it was published, in microseconds since the Unix epoch, to measure the
    /// lag to each receiver. Absent from payloads of older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
}

/// Now, in microseconds since the Unix epoch.
pub(super) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice<'a> {
    /// A committed activity, whole.
    Activity { activity: Cow<'a, Activity> },
    /// A committed activity too large for a payload: load it from the store.
    ActivityRef {
        tenant_id: TenantId,
        conversation_id: ConversationId,
        activity_id: ActivityId,
        seq: i64,
    },
    /// Someone is typing.
    Typing {
        conversation_id: ConversationId,
        sender: Cow<'a, str>,
    },
    /// A provider's report on a delivered message.
    DeliveryStatus(DeliveryReport<'a>),
    /// The sender lost notifications: every node resynchronises all its topics.
    Resync,
}

/// The fields of [`Event::DeliveryStatus`] in a notice, inline beside its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryReport<'a> {
    pub conversation_id: ConversationId,
    pub delivery_id: DeliveryId,
    pub activity_id: ActivityId,
    pub channel_id: ChannelId,
    pub status: Cow<'a, str>,
    pub error: Option<Cow<'a, str>>,
}

impl DeliveryReport<'_> {
    /// The event this report announces, for the receiving node's subscribers.
    pub fn into_event(self) -> Event {
        Event::DeliveryStatus {
            conversation_id: self.conversation_id,
            delivery_id: self.delivery_id,
            activity_id: self.activity_id,
            channel_id: self.channel_id,
            status: self.status.into_owned(),
            error: self.error.map(Cow::into_owned),
        }
    }
}

/// The payload announcing `event` from `node`, within `limit` bytes: the whole activity
/// when it fits, else a reference to it. `None` for what is not sent at all: a typing
/// signal that does not fit, and [`Event::Resync`] (local to a node).
pub fn encode(node: Uuid, event: &Event, limit: usize) -> Option<String> {
    let payload = |notice| {
        serde_json::to_string(&Envelope {
            node,
            notice,
            sent_at: Some(now_micros()),
        })
        .inspect_err(|e| tracing::error!(error = %e, "cannot encode a notification"))
        .ok()
    };
    match event {
        Event::Activity(activity) => {
            let whole = payload(Notice::Activity {
                activity: Cow::Borrowed(activity),
            })?;
            if whole.len() < limit {
                return Some(whole);
            }
            payload(Notice::ActivityRef {
                tenant_id: activity.tenant_id,
                conversation_id: activity.conversation_id,
                activity_id: activity.id,
                seq: activity.seq,
            })
            .filter(|r| r.len() < limit)
        }
        Event::Typing {
            conversation_id,
            sender,
        } => payload(Notice::Typing {
            conversation_id: *conversation_id,
            sender: Cow::Borrowed(sender),
        })
        .filter(|p| p.len() < limit),
        Event::DeliveryStatus {
            conversation_id,
            delivery_id,
            activity_id,
            channel_id,
            status,
            error,
        } => payload(Notice::DeliveryStatus(DeliveryReport {
            conversation_id: *conversation_id,
            delivery_id: *delivery_id,
            activity_id: *activity_id,
            channel_id: *channel_id,
            status: Cow::Borrowed(status),
            error: error.as_deref().map(Cow::Borrowed),
        }))
        // The delivery's metadata keeps the record; a report too large is not sent.
        .filter(|p| p.len() < limit),
        Event::Resync => None,
    }
}

/// The resync notice of `node`.
pub fn encode_resync(node: Uuid) -> String {
    serde_json::to_string(&Envelope {
        node,
        notice: Notice::Resync,
        sent_at: Some(now_micros()),
    })
    .unwrap_or_default()
}

/// Reads a notification payload. Total over any input.
///
/// # Errors
/// The payload is not an [`Envelope`].
pub fn decode(payload: &str) -> Result<Envelope<'static>, serde_json::Error> {
    serde_json::from_str(payload)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::domain::{ActivityType, Direction, Timestamp};

    fn activity(text: &str) -> Activity {
        Activity {
            id: ActivityId::new(),
            conversation_id: ConversationId::new(),
            tenant_id: TenantId::new(),
            seq: 7,
            kind: ActivityType::Message,
            direction: Direction::Inbound,
            sender: "alice".into(),
            text: Some(text.into()),
            attachments: json!([{"url": "https://example.com/a.png"}]),
            metadata: json!({"k": "v"}),
            idempotency_key: Some("k1".into()),
            inserted_at: Timestamp::now(),
        }
    }

    #[test]
    fn small_activities_travel_whole() {
        let node = Uuid::now_v7();
        let a = activity("héllo \u{0} \"quoted\"");
        let payload = encode(node, &Event::Activity(a.clone()), PAYLOAD_LIMIT).unwrap();
        assert!(payload.len() < PAYLOAD_LIMIT);
        let envelope = decode(&payload).unwrap();
        assert_eq!(envelope.node, node);
        assert_eq!(
            envelope.notice,
            Notice::Activity {
                activity: Cow::Owned(a)
            }
        );
    }

    #[test]
    fn large_activities_travel_by_reference() {
        let node = Uuid::now_v7();
        let a = activity(&"x".repeat(PAYLOAD_LIMIT));
        let payload = encode(node, &Event::Activity(a.clone()), PAYLOAD_LIMIT).unwrap();
        assert!(payload.len() < 300, "{payload}");
        assert_eq!(
            decode(&payload).unwrap().notice,
            Notice::ActivityRef {
                tenant_id: a.tenant_id,
                conversation_id: a.conversation_id,
                activity_id: a.id,
                seq: 7,
            }
        );
    }

    #[test]
    fn the_limit_is_exclusive() {
        let node = Uuid::now_v7();
        let event = Event::Activity(activity("fits"));
        let whole = encode(node, &event, usize::MAX).unwrap();
        // Payloads differ only in their send time, whose length is fixed.
        let again = encode(node, &event, whole.len() + 1).unwrap();
        assert_eq!(again.len(), whole.len());
        assert_eq!(
            decode(&again).unwrap().notice,
            decode(&whole).unwrap().notice
        );
        let reference = encode(node, &event, whole.len()).unwrap();
        assert!(matches!(
            decode(&reference).unwrap().notice,
            Notice::ActivityRef { .. }
        ));
        // Not even the reference fits: nothing is sent.
        assert_eq!(encode(node, &event, 10), None);
    }

    #[test]
    fn typing_is_sent_when_it_fits_and_resync_never() {
        let node = Uuid::now_v7();
        let conversation_id = ConversationId::new();
        let typing = |sender: &str| Event::Typing {
            conversation_id,
            sender: sender.into(),
        };
        let payload = encode(node, &typing("bob"), PAYLOAD_LIMIT).unwrap();
        assert_eq!(
            decode(&payload).unwrap().notice,
            Notice::Typing {
                conversation_id,
                sender: "bob".into()
            }
        );
        assert_eq!(
            encode(node, &typing(&"b".repeat(PAYLOAD_LIMIT)), PAYLOAD_LIMIT),
            None
        );
        assert_eq!(encode(node, &Event::Resync, PAYLOAD_LIMIT), None);
        let resync = decode(&encode_resync(node)).unwrap();
        assert_eq!((resync.node, resync.notice), (node, Notice::Resync));
        assert!(resync.sent_at.is_some());
    }

    #[test]
    fn delivery_reports_keep_their_fields_beside_the_type() {
        let node = Uuid::now_v7();
        let event = Event::DeliveryStatus {
            conversation_id: ConversationId::new(),
            delivery_id: DeliveryId::new(),
            activity_id: ActivityId::new(),
            channel_id: ChannelId::new(),
            status: "failed".into(),
            error: Some("131047 Re-engagement message".into()),
        };
        let payload = encode(node, &event, PAYLOAD_LIMIT).unwrap();
        let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let Event::DeliveryStatus { delivery_id, .. } = &event else {
            unreachable!()
        };
        assert_eq!(json["notice"]["type"], "delivery_status");
        assert_eq!(json["notice"]["delivery_id"], delivery_id.to_string());
        assert_eq!(json["notice"]["status"], "failed");
        match decode(&payload).unwrap().notice {
            Notice::DeliveryStatus(report) => assert_eq!(report.into_event(), event),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payloads_of_older_nodes_have_no_send_time() {
        let old = r#"{"node":"0190b7c8-3a4e-7000-8000-000000000000","notice":{"type":"resync"}}"#;
        let envelope = decode(old).unwrap();
        assert_eq!((envelope.notice, envelope.sent_at), (Notice::Resync, None));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for bad in [
            "",
            "null",
            "{}",
            r#"{"node":"x","notice":{"type":"resync"}}"#,
            r#"{"node":"0190b7c8-3a4e-7000-8000-000000000000","notice":{"type":"other"}}"#,
            r#"{"node":"0190b7c8-3a4e-7000-8000-000000000000","notice":{"type":"activity_ref","seq":1}}"#,
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    /// A valid payload of any kind, for mutation.
    fn valid_payload() -> impl Strategy<Value = String> {
        (any::<bool>(), "\\PC{0,40}").prop_map(|(whole, text)| {
            let node = Uuid::now_v7();
            let event = if whole {
                Event::Activity(activity(&text))
            } else {
                Event::Typing {
                    conversation_id: ConversationId::new(),
                    sender: text,
                }
            };
            encode(node, &event, PAYLOAD_LIMIT).unwrap()
        })
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(payload in "\\PC{0,200}") {
            let _ = decode(&payload);
        }

        #[test]
        fn decoding_mutated_payloads_never_panics(
            payload in valid_payload(),
            cut in any::<prop::sample::Index>(),
            insert in "\\PC{0,8}",
        ) {
            let mut at = cut.index(payload.len() + 1);
            while !payload.is_char_boundary(at) {
                at -= 1;
            }
            let _ = decode(&payload[..at]);
            let spliced = format!("{}{insert}{}", &payload[..at], &payload[at..]);
            let _ = decode(&spliced);
        }

        #[test]
        fn encoded_events_decode_to_themselves(payload in valid_payload()) {
            let envelope = decode(&payload).unwrap();
            prop_assert_eq!(serde_json::to_string(&envelope).unwrap(), payload);
        }
    }
}
