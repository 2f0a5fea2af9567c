//! Fan-out of committed activities, delivery status reports and ephemeral typing
//! signals to the sockets of a conversation.
//!
//! Stage 3 of the flow, beside the store. `ingest` publishes after commit; real-time
//! sessions subscribe per conversation. Events are notifications, not the record: a
//! subscriber that lags or misses one catches up from the store, which is why a slow
//! subscriber is dropped rather than buffered without bound.

mod local;

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::{Activity, ActivityId, ChannelId, ConversationId, DeliveryId};

pub use local::LocalPubSub;

/// Something that happened in a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An activity was committed.
    Activity(Activity),
    /// Someone is typing. Ephemeral: never stored, so a subscriber that misses it
    /// has nothing to catch up on.
    Typing {
        conversation_id: ConversationId,
        /// The user id of the typist, as in their client token.
        sender: String,
    },
    /// A provider reported on a delivered message (WhatsApp `sent`, `delivered`,
    /// `read`, `failed`), after the report was recorded on the delivery. Not replayed:
    /// the delivery's `metadata` is the record.
    DeliveryStatus {
        conversation_id: ConversationId,
        delivery_id: DeliveryId,
        activity_id: ActivityId,
        channel_id: ChannelId,
        status: String,
        /// The provider's code and message, for `failed`.
        error: Option<String>,
    },
}

/// A stream of events of one conversation.
pub type Subscription = broadcast::Receiver<Arc<Event>>;

/// The node's PubSub, cheap to clone.
#[derive(Clone)]
pub enum PubSub {
    /// In-process: every subscriber lives in this process.
    Local(LocalPubSub),
}

impl PubSub {
    /// An in-process PubSub whose topics buffer `capacity` events per subscriber.
    pub fn local(capacity: usize) -> Self {
        PubSub::Local(LocalPubSub::new(capacity))
    }

    /// Sends an event to every current subscriber of the conversation.
    pub fn publish(&self, conversation: ConversationId, event: Event) {
        match self {
            PubSub::Local(local) => local.publish(conversation, Arc::new(event)),
        }
    }

    /// Subscribes to the events of a conversation from now on.
    pub fn subscribe(&self, conversation: ConversationId) -> Subscription {
        match self {
            PubSub::Local(local) => local.subscribe(conversation),
        }
    }
}
