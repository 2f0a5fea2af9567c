//! In-process PubSub: one bounded tokio broadcast channel per conversation with
//! subscribers (mini-redis `Db::subscribe`/`publish`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{Event, Subscription};
use crate::domain::ConversationId;

/// Topics of this process. A topic exists while it has subscribers.
#[derive(Clone)]
pub struct LocalPubSub {
    topics: Arc<Mutex<HashMap<ConversationId, broadcast::Sender<Arc<Event>>>>>,
    capacity: usize,
}

impl LocalPubSub {
    /// A PubSub whose subscribers may fall `capacity` events behind before they lag.
    pub fn new(capacity: usize) -> Self {
        Self {
            topics: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    pub(super) fn publish(&self, topic: ConversationId, event: Arc<Event>) {
        // A std mutex: held for a map lookup only, never across an await.
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = topics.get(&topic)
            && sender.send(event).is_err()
        {
            // Every subscriber has gone: forget the topic.
            topics.remove(&topic);
        }
    }

    pub(super) fn subscribe(&self, topic: ConversationId) -> Subscription {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    /// How many topics have subscribers (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
