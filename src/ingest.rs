//! The one write path: every activity, from any edge, is created here.
//!
//! Stage 2 of the flow: validate → resolve the conversation → choose delivery targets
//! → one transaction (activity + delivery rows, idempotency, gap-free `seq`) → commit
//! → publish to PubSub → wake the delivery workers. Nothing is published or delivered
//! before the commit, so what a client sees or receives is never lost.
//!
//! Ingest knows the store, the adapters' delivery rules and PubSub, but not the
//! delivery engine: it only signals the [`DeliveryWaker`], which the workers wait on.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Notify;

use crate::adapters::Adapters;
use crate::domain::{
    Activity, ActivityType, ChannelId, ChannelStatus, ChannelType, Conversation, ConversationId,
    ConversationStatus, Direction, FieldError, NewActivity, TenantId, Timestamp,
};
use crate::pubsub::{Event, PubSub};
use crate::store::{ActivityAppend, AppendOutcome, StatusChange, StatusOutcome, Store, StoreError};

/// Wakes the delivery workers of this node when new work was committed. Ingest
/// signals it after each commit that wrote delivery rows; the workers wait on it.
#[derive(Clone, Default)]
pub struct DeliveryWaker(Arc<Notify>);

impl DeliveryWaker {
    /// Signals that due deliveries may exist. A wake-up with no one waiting is kept
    /// for the next wait, so none is lost.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for the next wake-up.
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

/// Why an activity was not created. Nothing was written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("invalid activity")]
    Invalid(Vec<FieldError>),
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("conversation is closed")]
    ConversationClosed,
    #[error("the conversation's channel is inactive")]
    ChannelInactive,
    /// The idempotency key was used before for a different activity.
    #[error("idempotency key reused with a different payload")]
    IdempotencyConflict { existing: Box<Activity> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `ingest` did.
#[derive(Debug, Clone)]
pub enum Ingested {
    /// A new activity was committed, published and handed to delivery.
    Created(Activity),
    /// The idempotency key was used before for the same activity: this is it, and
    /// nothing new was created.
    Replayed(Activity),
}

impl Ingested {
    /// The activity, new or replayed.
    pub fn activity(&self) -> &Activity {
        match self {
            Ingested::Created(a) | Ingested::Replayed(a) => a,
        }
    }
}

/// A request to create one activity.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub activity: NewActivity,
    /// The channel the activity arrived from, which never gets it delivered back.
    pub origin_channel: Option<ChannelId>,
}

/// Who moved a conversation to another status; named in its `conversationUpdate`
/// activity (`sender`, `metadata.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCause {
    /// The tenant's application, through the API.
    Api,
    /// An operator, through the admin panel or its API.
    Admin,
    /// The idle closer: no activity for `CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS`.
    Idle,
}

impl StatusCause {
    /// `metadata.reason` of the activity.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCause::Api => "api",
            StatusCause::Admin => "admin",
            StatusCause::Idle => "idle",
        }
    }

    /// `sender` of the activity, as the sender of an application's own activity is
    /// `app` by default.
    fn sender(self) -> &'static str {
        match self {
            StatusCause::Api => "app",
            StatusCause::Admin => "admin",
            StatusCause::Idle => "system",
        }
    }
}

/// A request to move a conversation to another status.
#[derive(Debug, Clone)]
pub struct StatusRequest {
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub to: ConversationStatus,
    pub cause: StatusCause,
    /// Only if the conversation's last activity is older than this (the idle closer).
    pub idle_before: Option<Timestamp>,
}

/// What a status change did.
#[derive(Debug, Clone)]
pub enum StatusChanged {
    /// The conversation moved; this activity records it, committed and published.
    Changed {
        conversation: Conversation,
        activity: Box<Activity>,
    },
    /// It was in that status already (or, for the idle closer, not idle any more):
    /// nothing was written.
    Unchanged(Conversation),
}

/// The handles `ingest` needs; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    store: Store,
    adapters: Adapters,
    pubsub: PubSub,
    waker: DeliveryWaker,
}

impl Ingestor {
    /// Builds the write path over the node's store, adapters, PubSub and workers.
    pub fn new(store: Store, adapters: Adapters, pubsub: PubSub, waker: DeliveryWaker) -> Self {
        Self {
            store,
            adapters,
            pubsub,
            waker,
        }
    }

    /// The store this write path writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates an activity, or returns the one its idempotency key already names.
    ///
    /// # Errors
    /// See [`IngestError`]; nothing is written when an error is returned.
    pub async fn ingest(&self, request: IngestRequest) -> Result<Ingested, IngestError> {
        let errors = request.activity.validate();
        if !errors.is_empty() {
            return Err(IngestError::Invalid(errors));
        }
        let context = match self
            .store
            .cached_conversation_context(request.tenant_id, request.conversation_id)
            .await
        {
            Ok(context) => context,
            Err(StoreError::NotFound) => return Err(IngestError::ConversationNotFound),
            Err(e) => return Err(e.into()),
        };
        let conversation = &context.conversation;
        if context.channel_status != ChannelStatus::Active {
            return Err(IngestError::ChannelInactive);
        }
        if conversation.status == ConversationStatus::Closed {
            return Err(IngestError::ConversationClosed);
        }

        let targets = self
            .delivery_targets(
                request.tenant_id,
                &request.activity,
                request.origin_channel,
                conversation.channel_id,
                context.channel_type,
            )
            .await?;
        let append = ActivityAppend {
            tenant_id: request.tenant_id,
            conversation_id: request.conversation_id,
            activity: request.activity,
            targets,
            request_id: crate::telemetry::current_request_id(),
        };
        match self.store.append_activity(&append).await? {
            AppendOutcome::Created {
                activity,
                deliveries,
            } => {
                crate::metrics::record_activity_ingested(context.channel_type, activity.direction);
                self.pubsub
                    .publish(activity.conversation_id, Event::Activity(activity.clone()));
                if !deliveries.is_empty() {
                    self.waker.wake();
                }
                tracing::debug!(
                    activity_id = %activity.id,
                    conversation_id = %activity.conversation_id,
                    seq = activity.seq,
                    deliveries = deliveries.len(),
                    "activity ingested"
                );
                Ok(Ingested::Created(activity))
            }
            AppendOutcome::Existing(existing) => {
                if append.activity.same_request_as(&existing) {
                    Ok(Ingested::Replayed(existing))
                } else {
                    Err(IngestError::IdempotencyConflict {
                        existing: Box::new(existing),
                    })
                }
            }
            // Closed between the read above and the transaction.
            AppendOutcome::NotActive => Err(IngestError::ConversationClosed),
        }
    }

    /// Closes or reopens a conversation, recording the change as its next activity: a
    /// `conversationUpdate` (direction `outbound`, `metadata.status` the new status,
    /// `metadata.reason` the [`StatusCause`]), delivered where an outbound activity of
    /// the conversation would be (the adapters decide: webhooks take it, WhatsApp
    /// does not) and published to the conversation's sockets after the commit.
    ///
    /// # Errors
    /// `NotFound` for a conversation missing from the tenant; `Conflict` on
    /// `conversations_channel_id_external_id_key` when reopening would give its party
    /// a second active conversation on the channel. Nothing is written in either case.
    pub async fn change_status(&self, request: StatusRequest) -> Result<StatusChanged, StoreError> {
        let context = self
            .store
            .cached_conversation_context(request.tenant_id, request.conversation_id)
            .await?;
        let activity = NewActivity {
            kind: ActivityType::ConversationUpdate,
            direction: Direction::Outbound,
            sender: request.cause.sender().to_owned(),
            text: None,
            attachments: json!([]),
            metadata: json!({"status": request.to, "reason": request.cause.as_str()}),
            idempotency_key: None,
        };
        let channel_id = context.conversation.channel_id;
        let targets = self
            .delivery_targets(
                request.tenant_id,
                &activity,
                None,
                channel_id,
                context.channel_type,
            )
            .await?;
        let change = StatusChange {
            append: ActivityAppend {
                tenant_id: request.tenant_id,
                conversation_id: request.conversation_id,
                activity,
                targets,
                request_id: crate::telemetry::current_request_id(),
            },
            to: request.to,
            idle_before: request.idle_before,
        };
        match self.store.change_conversation_status(&change).await? {
            StatusOutcome::Changed {
                conversation,
                activity,
                deliveries,
            } => {
                crate::metrics::record_activity_ingested(context.channel_type, activity.direction);
                self.pubsub.publish(
                    activity.conversation_id,
                    Event::Activity((*activity).clone()),
                );
                if !deliveries.is_empty() {
                    self.waker.wake();
                }
                tracing::info!(
                    conversation_id = %conversation.id,
                    tenant_id = %conversation.tenant_id,
                    status = %conversation.status,
                    cause = request.cause.as_str(),
                    seq = activity.seq,
                    "conversation status changed"
                );
                Ok(StatusChanged::Changed {
                    conversation,
                    activity,
                })
            }
            StatusOutcome::Unchanged(conversation) => Ok(StatusChanged::Unchanged(conversation)),
        }
    }

    /// The channels that get a delivery row (docs/design.md#semantics): the conversation's own
    /// channel when its adapter delivers this activity, and every matching route's
    /// target except the channel the activity came from. The own channel needs no such
    /// exclusion: what arrives from a channel is inbound, and adapters deliver outbound
    /// only, but for echo, whose delivery of an inbound message is its reply.
    async fn delivery_targets(
        &self,
        tenant_id: TenantId,
        activity: &NewActivity,
        origin_channel: Option<ChannelId>,
        channel_id: ChannelId,
        channel_type: ChannelType,
    ) -> Result<Vec<ChannelId>, StoreError> {
        let mut targets = Vec::new();
        if self
            .adapters
            .get(channel_type)
            .delivers(activity.direction, activity.kind)
        {
            targets.push(channel_id);
        }
        for route in self.store.list_route_targets(tenant_id, channel_id).await? {
            if route.direction.matches(activity.direction)
                && self
                    .adapters
                    .get(route.target_type)
                    .accepts_routed(activity.kind)
                && Some(route.target_channel_id) != origin_channel
                && !targets.contains(&route.target_channel_id)
            {
                targets.push(route.target_channel_id);
            }
        }
        Ok(targets)
    }
}
