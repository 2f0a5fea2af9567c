//! Fan-out of committed activities, delivery status reports and ephemeral typing
//! signals to the sockets of a conversation.
//!
//! Stage 3 of the flow, beside the store. `ingest` publishes after commit; real-time
//! sessions subscribe per conversation. Events are notifications, not the record: a
//! subscriber that lags or misses one catches up from the store, which is why a slow
//! subscriber is dropped rather than buffered without bound, and why PubSub may tell
//! subscribers to [`Event::Resync`] instead of guaranteeing delivery.
//!
//! On SQLite every subscriber lives in this process ([`LocalPubSub`]); on PostgreSQL
//! [`PgPubSub`] also carries events between the nodes sharing the database.

mod local;
mod notice;
mod postgres;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{Activity, ActivityId, ChannelId, ConversationId, DeliveryId};
use crate::store::Store;

pub use local::{LocalPubSub, Subscription};
pub use postgres::PgPubSub;

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
    /// Events may have been lost (the link to the other nodes was down): catch up from
    /// the store after the last activity delivered, as after a lag. Local to a node:
    /// never forwarded to other nodes.
    Resync,
}

/// The node's PubSub, cheap to clone.
#[derive(Clone)]
pub enum PubSub {
    /// In-process: every subscriber lives in this process.
    Local(LocalPubSub),
    /// In-process fan-out plus PostgreSQL LISTEN/NOTIFY between nodes.
    Postgres(PgPubSub),
}

impl PubSub {
    /// An in-process PubSub whose topics buffer `capacity` events per subscriber.
    pub fn local(capacity: usize) -> Self {
        PubSub::Local(LocalPubSub::new(capacity))
    }

    /// The PubSub a node over `store` needs: in-process on SQLite, LISTEN/NOTIFY on
    /// PostgreSQL. On PostgreSQL its listener and notifier tasks are spawned on `tasks`;
    /// the listener stops when `shutdown` is cancelled, the notifier when the last handle
    /// of this PubSub is dropped (see [`PgPubSub`]).
    ///
    /// # Panics
    /// Outside a Tokio runtime, on PostgreSQL.
    pub fn for_store(
        store: &Store,
        capacity: usize,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        match store.pg_pool() {
            Some(pool) => PubSub::Postgres(PgPubSub::start(
                pool.clone(),
                store.clone(),
                capacity,
                shutdown.clone(),
                tasks,
            )),
            None => PubSub::local(capacity),
        }
    }

    /// Sends an event to every current subscriber of the conversation, on this node and
    /// (on PostgreSQL) on the others.
    pub fn publish(&self, conversation: ConversationId, event: Event) {
        match self {
            PubSub::Local(local) => local.publish(conversation, Arc::new(event)),
            PubSub::Postgres(pg) => pg.publish(conversation, Arc::new(event)),
        }
    }

    /// Subscribes to the events of a conversation from now on.
    pub fn subscribe(&self, conversation: ConversationId) -> Subscription {
        match self {
            PubSub::Local(local) => local.subscribe(conversation),
            PubSub::Postgres(pg) => pg.subscribe(conversation),
        }
    }
}
