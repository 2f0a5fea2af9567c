//! The `conversation:<id>` channel: who may join, what a join resumes from, and what
//! client pushes do (DESIGN.md §3 "Real time").
//!
//! Resume is gap-free and duplicate-free: a join subscribes to PubSub first, then reads
//! the conversation's watermark, and its [`Stream`] replays from the store after the
//! client's watermark before streaming live events, filling any gap (or a lagged
//! subscription, or one told to resynchronise) from the store. This module decides; it does not own the socket
//! (that is `session`), and it never writes an activity except through `ingest`.
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
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SocketAuth;
use super::frame::{Frame, PHX_ERROR, Payload, Ref, Vsn};
use crate::domain::{
    Activity, ActivityId, ActivityType, ChannelStatus, ConversationId, ConversationStatus,
    Direction, NewActivity, TenantStatus,
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
/// Activities read from the store per query while replaying or filling a gap.
const REPLAY_PAGE: i64 = 200;

/// Why a join or a push was refused: the `response` of an `error` reply,
/// `{"reason": "<stable code>", ...}`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal(pub Value);

impl Refusal {
    fn reason(reason: &str, message: &str) -> Self {
        Refusal(json!({ "reason": reason, "message": message }))
    }
}

/// The REST error codes, reused as reasons so one failure has one name everywhere.
impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        let mut response = json!({ "reason": err.code, "message": err.message });
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

/// Why a stream stopped on its own.
#[derive(Debug)]
pub(super) enum StreamEnd {
    /// The session is gone (its queue closed).
    SessionGone,
    /// The subscription lagged while the session's queue was full; the session must
    /// close the socket so the client resumes from its watermark.
    Overloaded,
    /// The store failed; `phx_error` was sent so the client rejoins.
    Failed,
}

/// One joined channel instance: replays, then streams live events, into the session's
/// bounded outbound queue.
pub(super) struct Stream {
    pub state: AppState,
    pub auth: SocketAuth,
    pub vsn: Vsn,
    pub topic: String,
    pub join_ref: Option<Ref>,
    pub subscription: Subscription,
    /// The `seq` of the last activity delivered (or known to the client).
    pub last: i64,
    /// Encoded frames for the socket, in order.
    pub out: mpsc::Sender<String>,
    /// Cancelled to ask the session to close with 1013.
    pub overloaded: CancellationToken,
}

impl Stream {
    /// Runs until the session drops it or something ends it.
    pub async fn run(mut self) -> StreamEnd {
        match self.serve().await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn serve(&mut self) -> Result<StreamEnd, StreamEnd> {
        self.catch_up().await?;
        loop {
            match self.subscription.recv().await {
                Ok(event) => match &*event {
                    Event::Activity(activity) => {
                        if activity.seq > self.last + 1 {
                            // Missed or not yet seen: the store has everything committed.
                            self.catch_up().await?;
                        }
                        if activity.seq == self.last + 1 {
                            self.deliver(activity).await?;
                        }
                    }
                    Event::Typing { sender, .. } if *sender != self.auth.user_id => {
                        let frame = Frame::push(
                            self.join_ref.clone(),
                            &self.topic,
                            TYPING,
                            Payload::Json(json!({ "sender": sender })),
                        );
                        // Ephemeral: under pressure a typing signal is dropped, not queued.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            self.out.try_send(frame.encode(self.vsn))
                        {
                            return Err(StreamEnd::SessionGone);
                        }
                    }
                    Event::Typing { .. } => {}
                    Event::DeliveryStatus {
                        delivery_id,
                        activity_id,
                        channel_id,
                        status,
                        error,
                        ..
                    } => {
                        let mut payload = json!({
                            "delivery_id": delivery_id,
                            "activity_id": activity_id,
                            "channel_id": channel_id,
                            "status": status,
                        });
                        if let (Some(error), Value::Object(map)) = (error, &mut payload) {
                            map.insert("error".into(), json!(error));
                        }
                        let frame = Frame::push(
                            self.join_ref.clone(),
                            &self.topic,
                            DELIVERY_STATUS,
                            Payload::Json(payload),
                        );
                        self.out
                            .send(frame.encode(self.vsn))
                            .await
                            .map_err(|_| StreamEnd::SessionGone)?;
                    }
                    // Events may have been lost on the way from another node.
                    Event::Resync => self.catch_up().await?,
                },
                Err(RecvError::Lagged(skipped)) => {
                    crate::metrics::record_pubsub_lagged();
                    if self.out.capacity() == 0 {
                        tracing::info!(topic = %self.topic, skipped, "socket too slow for its conversation");
                        self.overloaded.cancel();
                        return Ok(StreamEnd::Overloaded);
                    }
                    self.catch_up().await?;
                }
                // Every sender is gone: only when the node's PubSub is dropped.
                Err(RecvError::Closed) => return Ok(StreamEnd::SessionGone),
            }
        }
    }

    /// Delivers every stored activity after `last`, page by page, in `seq` order.
    async fn catch_up(&mut self) -> Result<(), StreamEnd> {
        loop {
            let page = match self
                .state
                .store
                .list_activities(
                    self.auth.tenant_id,
                    self.auth.conversation_id,
                    self.last,
                    REPLAY_PAGE,
                )
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(topic = %self.topic, error = %e, "cannot replay activities");
                    let frame = Frame::push(
                        self.join_ref.clone(),
                        &self.topic,
                        PHX_ERROR,
                        Payload::Json(json!({ "reason": "internal_error" })),
                    );
                    let _ = self.out.send(frame.encode(self.vsn)).await;
                    return Err(StreamEnd::Failed);
                }
            };
            let full = page.len() as i64 >= REPLAY_PAGE;
            for activity in &page {
                if activity.seq > self.last {
                    self.deliver(activity).await?;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn deliver(&mut self, activity: &Activity) -> Result<(), StreamEnd> {
        let payload = Payload::serialize(activity);
        let frame = Frame::push(self.join_ref.clone(), &self.topic, NEW_ACTIVITY, payload);
        self.out
            .send(frame.encode(self.vsn))
            .await
            .map_err(|_| StreamEnd::SessionGone)?;
        self.last = activity.seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::delivery::DeliveryWaker;
    use crate::domain::ChannelType;
    use crate::ingest::Ingestor;
    use crate::pubsub::PubSub;
    use crate::store::{NewChannel, NewConversation};

    /// A state over a fresh SQLite file whose PubSub buffers `capacity` events, and a
    /// socket's credentials for a new conversation.
    async fn fixture(capacity: usize) -> (AppState, SocketAuth, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(format!("sqlite://{}", dir.path().join("t.db").display()));
        config.jwt_secret = Some("x".repeat(40));
        let store = crate::app::open_store(&config).await.unwrap();
        let mut state = crate::app::build_state(
            config,
            store.clone(),
            CancellationToken::new(),
            CancellationToken::new(),
        )
        .unwrap();
        state.pubsub = PubSub::local(capacity);
        state.ingest = Ingestor::new(
            store.clone(),
            state.adapters.clone(),
            state.pubsub.clone(),
            DeliveryWaker::default(),
        );
        let tenant = store.insert_tenant("t", "hash", "prefix").await.unwrap();
        let channel = store
            .insert_channel(
                tenant.id,
                NewChannel {
                    name: "web".into(),
                    kind: ChannelType::Websocket,
                    secret: crate::auth::generate_channel_secret(),
                    config: json!({}),
                },
            )
            .await
            .unwrap();
        let conversation = store
            .insert_conversation(
                tenant.id,
                NewConversation {
                    channel_id: channel.id,
                    external_id: None,
                    metadata: json!({}),
                },
            )
            .await
            .unwrap();
        let auth = SocketAuth {
            tenant_id: tenant.id,
            channel_id: channel.id,
            conversation_id: conversation.id,
            user_id: "u".into(),
        };
        (state, auth, dir)
    }

    async fn post(state: &AppState, auth: &SocketAuth, n: usize) {
        for i in 0..n {
            post_activity(state, auth, json!({"text": format!("m{i}")}))
                .await
                .unwrap();
        }
    }

    fn stream(
        state: &AppState,
        auth: &SocketAuth,
        joined: Joined,
        out: mpsc::Sender<String>,
    ) -> (Stream, CancellationToken) {
        let overloaded = CancellationToken::new();
        let stream = Stream {
            state: state.clone(),
            auth: auth.clone(),
            vsn: Vsn::V2,
            topic: "conversation:x".into(),
            join_ref: Some(Ref::from("1")),
            subscription: joined.subscription,
            last: joined.after,
            out,
            overloaded: overloaded.clone(),
        };
        (stream, overloaded)
    }

    fn seq_of(frame: &str) -> i64 {
        let v: Value = serde_json::from_str(frame).unwrap();
        v[4]["seq"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn lagging_subscription_is_filled_from_the_store() {
        let (state, auth, _dir) = fixture(2).await;
        post(&state, &auth, 3).await;
        let joined = join(
            &state,
            &auth,
            Some(auth.conversation_id),
            &json!({"last_seq": 1}),
        )
        .await
        .unwrap();
        assert_eq!((joined.watermark, joined.after), (3, 1));
        // Ten events into a buffer of two, before the stream reads any.
        post(&state, &auth, 10).await;
        let (tx, mut rx) = mpsc::channel(64);
        let (stream, overloaded) = stream(&state, &auth, joined, tx);
        let task = tokio::spawn(stream.run());
        let mut seen = Vec::new();
        while seen.len() < 12 {
            seen.push(seq_of(&rx.recv().await.unwrap()));
        }
        assert_eq!(seen, (2..=13).collect::<Vec<_>>());
        post(&state, &auth, 1).await;
        assert_eq!(seq_of(&rx.recv().await.unwrap()), 14);
        assert!(!overloaded.is_cancelled());
        task.abort();
    }

    #[tokio::test]
    async fn resync_fills_what_never_reached_the_subscription() {
        let (mut state, auth, _dir) = fixture(8).await;
        let joined = join(&state, &auth, Some(auth.conversation_id), &json!({}))
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let (stream, _) = stream(&state, &auth, joined, tx);
        let task = tokio::spawn(stream.run());
        // Activities published where this subscription cannot see them, as when a
        // notification from another node is lost.
        let subscribed = state.pubsub.clone();
        state.ingest = Ingestor::new(
            state.store.clone(),
            state.adapters.clone(),
            PubSub::local(8),
            DeliveryWaker::default(),
        );
        post(&state, &auth, 3).await;
        subscribed.publish(auth.conversation_id, Event::Resync);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(seq_of(&rx.recv().await.unwrap()));
        }
        assert_eq!(seen, [1, 2, 3]);
        // A resync with nothing new delivers nothing twice.
        subscribed.publish(auth.conversation_id, Event::Resync);
        state.ingest = Ingestor::new(
            state.store.clone(),
            state.adapters.clone(),
            subscribed,
            DeliveryWaker::default(),
        );
        post(&state, &auth, 1).await;
        assert_eq!(seq_of(&rx.recv().await.unwrap()), 4);
        task.abort();
    }

    #[tokio::test]
    async fn lagging_with_a_full_queue_asks_the_session_to_close() {
        let (state, auth, _dir) = fixture(2).await;
        let mut joined = join(&state, &auth, Some(auth.conversation_id), &json!({}))
            .await
            .unwrap();
        post(&state, &auth, 5).await;
        // The client already has these (say, from REST): nothing to catch up on, so the
        // stream reaches the lagged subscription with a full queue.
        joined.after = 5;
        let (tx, _rx) = mpsc::channel(1);
        tx.send("queued".into()).await.unwrap();
        let (stream, overloaded) = stream(&state, &auth, joined, tx);
        assert!(matches!(stream.run().await, StreamEnd::Overloaded));
        assert!(overloaded.is_cancelled());
    }

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
    }
}
