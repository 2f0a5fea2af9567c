//! The `conversation:<id>` channel: who may join, what a join resumes from, and what
//! client pushes do (docs/design.md#real-time).
//!
//! Resume is gap-free and duplicate-free: a join subscribes to PubSub first, then reads
//! the conversation's watermark; the [`Stream`](super::stream::Stream) the session
//! starts from the [`Joined`] then replays after the client's watermark before
//! streaming live events. This module decides; it does not own the socket (that is
//! `session`) nor stream events (that is `stream`), and it never writes an activity
//! except through `ingest`.
//!
//! Server events on a joined topic:
//! - `new_activity`: an activity, as the REST API returns it, exactly once and in
//!   `seq` order;
//! - `typing`: `{"sender"}`, someone else is typing (ephemeral, dropped under load);
//! - `delivery_status`: `{"delivery_id", "activity_id", "channel_id", "status",
//!   "error"?}`, a provider's report on a delivered message (`sent`, `delivered`,
//!   `read`, `failed`; only forward moves are sent). Live only: a socket that was away
//!   reads the delivery's `metadata` instead.

use serde::Deserialize;
use serde_json::{Value, json};

use super::SocketAuth;
use crate::domain::{
    ActivityId, ActivityType, ChannelStatus, ConversationId, ConversationStatus, Direction,
    NewActivity, TenantStatus,
};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::ingest::{IngestRequest, Ingested};
use crate::pubsub::{Event, Subscription};
use crate::store::StoreError;

/// Topic prefix of conversation channels.
pub(super) const TOPIC_PREFIX: &str = "conversation:";
/// Server event carrying an activity; clients push it to post one.
pub(super) const NEW_ACTIVITY: &str = "new_activity";
/// Server event carrying a typing signal; clients push it to send one.
pub(super) const TYPING: &str = "typing";
/// Server event carrying a provider's report on a delivered message, payload
/// `{"delivery_id", "activity_id", "channel_id", "status", "error"?}` with `status` one
/// of `sent`, `delivered`, `read`, `failed`. Live only: not replayed on join (the
/// delivery's `metadata` in the REST API is the record).
pub(super) const DELIVERY_STATUS: &str = "delivery_status";

/// Why a join or a push was refused: the `response` of an `error` reply,
/// `{"reason": "<stable code>", ...}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal(pub Value);

impl Refusal {
    fn reason(reason: &str, message: &str) -> Self {
        Refusal(json!({ "reason": reason, "message": message }))
    }
}

/// The REST error codes, reused as reasons so one failure has one name everywhere. A
/// refusal worth retrying as it is (`store_unavailable`, `rate_limited`) carries the
/// REST answer's `Retry-After` as `retry_after`, in seconds.
impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        let mut response = json!({ "reason": err.code, "message": err.message });
        if let (Some(secs), Value::Object(map)) = (err.retry_after, &mut response) {
            map.insert("retry_after".into(), secs.into());
        }
        if let (Some(Value::Object(details)), Value::Object(map)) = (err.details, &mut response) {
            map.extend(details);
        }
        Refusal(response)
    }
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Self {
        ApiError::from(err).into()
    }
}

/// Where a join resumes. Without `last_activity_id` or `last_seq` the client gets live
/// events only: it has nothing yet, or loads the history over REST (whose last `seq`
/// it can then pass as `last_seq` on its next join).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resume {
    Live,
    AfterSeq(i64),
    AfterActivity(ActivityId),
}

fn parse_resume(payload: &Value) -> Result<Resume, Refusal> {
    let invalid = |message| Refusal::reason("invalid_params", message);
    let params = match payload {
        Value::Null => return Ok(Resume::Live),
        Value::Object(map) => map,
        _ => return Err(invalid("join params must be an object")),
    };
    match (params.get("last_activity_id"), params.get("last_seq")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => Ok(Resume::Live),
        (Some(id), None | Some(Value::Null)) => id
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Resume::AfterActivity)
            .ok_or_else(|| invalid("last_activity_id must be an activity id")),
        (None | Some(Value::Null), Some(seq)) => seq
            .as_i64()
            .filter(|n| *n >= 0)
            .map(Resume::AfterSeq)
            .ok_or_else(|| invalid("last_seq must be a non-negative integer")),
        (Some(_), Some(_)) => Err(invalid("send last_activity_id or last_seq, not both")),
    }
}

/// The conversation a topic names, if it is a conversation topic at all. `Some(None)`
/// is a conversation topic with an id that cannot be anyone's.
pub(super) fn conversation_topic(topic: &str) -> Option<Option<ConversationId>> {
    topic
        .strip_prefix(TOPIC_PREFIX)
        .map(|id| id.parse::<ConversationId>().ok())
}

/// A granted join, before its stream starts.
pub(super) struct Joined {
    /// Subscribed before the watermark was read, so nothing committed after it is missed.
    pub subscription: Subscription,
    /// The conversation's `last_seq` when the join was granted.
    pub watermark: i64,
    /// Replay starts after this `seq`.
    pub after: i64,
}

/// Decides a join of `conversation:<id>` by the socket's client.
///
/// # Errors
/// The refusal to reply with: `unauthorized` (the token is for another conversation),
/// `not_found`, `conversation_closed`, `channel_inactive`, `tenant_inactive`,
/// `invalid_params`, `activity_not_found`, `invalid_watermark`.
pub(super) async fn join(
    state: &AppState,
    auth: &SocketAuth,
    conversation: Option<ConversationId>,
    payload: &Value,
) -> Result<Joined, Refusal> {
    if conversation != Some(auth.conversation_id) {
        return Err(Refusal::reason(
            "unauthorized",
            "the token does not give access to this conversation",
        ));
    }
    let resume = parse_resume(payload)?;
    let subscription = state.pubsub.subscribe(auth.conversation_id);
    let (context, tenant) = match tokio::try_join!(
        state
            .store
            .get_conversation_context(auth.tenant_id, auth.conversation_id),
        state.store.get_tenant(auth.tenant_id),
    ) {
        Ok(found) => found,
        Err(StoreError::NotFound) => {
            return Err(Refusal::reason("not_found", "conversation not found"));
        }
        Err(e) => return Err(e.into()),
    };
    if tenant.status != TenantStatus::Active {
        return Err(Refusal::reason("tenant_inactive", "the tenant is inactive"));
    }
    if context.channel_status != ChannelStatus::Active {
        return Err(Refusal::reason(
            "channel_inactive",
            "the channel is inactive",
        ));
    }
    if context.conversation.status == ConversationStatus::Closed {
        return Err(Refusal::reason(
            "conversation_closed",
            "the conversation is closed",
        ));
    }
    let watermark = context.conversation.last_seq;
    let after = match resume {
        Resume::Live => watermark,
        Resume::AfterSeq(seq) if seq <= watermark => seq,
        Resume::AfterSeq(_) => {
            return Err(Refusal::reason(
                "invalid_watermark",
                "last_seq is beyond the conversation's last activity",
            ));
        }
        Resume::AfterActivity(id) => match state.store.get_activity(auth.tenant_id, id).await {
            Ok(a) if a.conversation_id == auth.conversation_id => a.seq,
            Ok(_) | Err(StoreError::NotFound) => {
                return Err(Refusal::reason(
                    "activity_not_found",
                    "last_activity_id names no activity of this conversation",
                ));
            }
            Err(e) => return Err(e.into()),
        },
    };
    Ok(Joined {
        subscription,
        watermark,
        after,
    })
}

/// What a client may push to post an activity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityPush {
    #[serde(rename = "type")]
    kind: Option<ActivityType>,
    text: Option<String>,
    attachments: Option<Value>,
    metadata: Option<Value>,
    idempotency_key: Option<String>,
}

/// Handles a client push on a joined conversation topic; returns the `response` of an
/// `ok` reply.
///
/// # Errors
/// The refusal to reply with, named as the REST API names it (`validation_failed` with
/// `fields`, `conversation_closed`, `idempotency_conflict`, ...), or `unknown_event`.
pub(super) async fn push(
    state: &AppState,
    auth: &SocketAuth,
    event: &str,
    payload: Value,
) -> Result<Value, Refusal> {
    match event {
        NEW_ACTIVITY => post_activity(state, auth, payload).await,
        TYPING => {
            state.pubsub.publish(
                auth.conversation_id,
                Event::Typing {
                    conversation_id: auth.conversation_id,
                    sender: auth.user_id.clone(),
                },
            );
            Ok(json!({}))
        }
        _ => Err(Refusal::reason(
            "unknown_event",
            "this topic accepts the events new_activity and typing",
        )),
    }
}

/// Posts an activity through `ingest`, as the token's user, inbound, from the token's
/// channel: the payload cannot choose any of these.
async fn post_activity(
    state: &AppState,
    auth: &SocketAuth,
    payload: Value,
) -> Result<Value, Refusal> {
    let body: ActivityPush = serde_path_to_error::deserialize(payload).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "payload".to_owned()
        } else {
            path
        };
        ApiError::invalid_field(&field, &err.into_inner().to_string())
    })?;
    let request = IngestRequest {
        tenant_id: auth.tenant_id,
        conversation_id: auth.conversation_id,
        activity: NewActivity {
            kind: body.kind.unwrap_or(ActivityType::Message),
            direction: Direction::Inbound,
            sender: auth.user_id.clone(),
            text: body.text,
            attachments: body.attachments.unwrap_or_else(|| json!([])),
            metadata: body.metadata.unwrap_or_else(|| json!({})),
            idempotency_key: body.idempotency_key,
        },
        origin_channel: Some(auth.channel_id),
    };
    match state.ingest.ingest(request).await {
        Ok(Ingested::Created(a) | Ingested::Replayed(a)) => Ok(json!({ "id": a.id, "seq": a.seq })),
        Err(e) => Err(ApiError::from(e).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::fixture::fixture;

    #[tokio::test]
    async fn joins_are_refused_with_reasons() {
        let (state, auth, _dir) = fixture(8).await;
        let refuse = |payload: Value, conversation| {
            let (state, auth) = (state.clone(), auth.clone());
            async move {
                join(&state, &auth, conversation, &payload)
                    .await
                    .err()
                    .unwrap()
                    .0["reason"]
                    .clone()
            }
        };
        assert_eq!(
            refuse(json!({}), Some(ConversationId::new())).await,
            "unauthorized"
        );
        assert_eq!(refuse(json!({}), None).await, "unauthorized");
        assert_eq!(
            refuse(json!({"last_seq": 1}), Some(auth.conversation_id)).await,
            "invalid_watermark"
        );
        assert_eq!(
            refuse(
                json!({"last_activity_id": ActivityId::new().to_string()}),
                Some(auth.conversation_id)
            )
            .await,
            "activity_not_found"
        );
        state
            .store
            .set_tenant_status(auth.tenant_id, TenantStatus::Inactive)
            .await
            .unwrap();
        assert_eq!(
            refuse(json!({}), Some(auth.conversation_id)).await,
            "tenant_inactive"
        );
    }

    #[test]
    fn resume_params() {
        assert_eq!(parse_resume(&json!({})), Ok(Resume::Live));
        assert_eq!(parse_resume(&Value::Null), Ok(Resume::Live));
        assert_eq!(
            parse_resume(&json!({"last_seq": null, "other": 1})),
            Ok(Resume::Live)
        );
        assert_eq!(
            parse_resume(&json!({"last_seq": 7})),
            Ok(Resume::AfterSeq(7))
        );
        let id = ActivityId::new();
        assert_eq!(
            parse_resume(&json!({"last_activity_id": id.to_string()})),
            Ok(Resume::AfterActivity(id))
        );
        for bad in [
            json!({"last_seq": -1}),
            json!({"last_seq": "7"}),
            json!({"last_seq": 1.5}),
            json!({"last_activity_id": "nope"}),
            json!({"last_activity_id": id.to_string(), "last_seq": 1}),
            json!([1]),
        ] {
            assert_eq!(
                parse_resume(&bad).unwrap_err().0["reason"],
                "invalid_params",
                "{bad}"
            );
        }
    }

    #[test]
    fn topics() {
        let id = ConversationId::new();
        assert_eq!(
            conversation_topic(&format!("conversation:{id}")),
            Some(Some(id))
        );
        assert_eq!(conversation_topic("conversation:x"), Some(None));
        assert_eq!(conversation_topic("room:1"), None);
    }

    #[test]
    fn api_errors_become_reasons_with_details() {
        let refusal = Refusal::from(ApiError::invalid_field("text", "too long"));
        assert_eq!(refusal.0["reason"], "validation_failed");
        assert_eq!(refusal.0["fields"][0]["field"], "text");
        assert_eq!(refusal.0.get("retry_after"), None);
    }

    #[test]
    fn an_unreachable_store_is_a_retryable_reason() {
        let err = sqlx::Error::PoolTimedOut;
        let refusal = Refusal::from(StoreError::from(err));
        assert_eq!(refusal.0["reason"], "store_unavailable");
        assert_eq!(refusal.0["retry_after"], 1);
    }
}
