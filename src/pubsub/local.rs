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

    /// Sends an event to every topic with subscribers (a resynchronisation).
    pub(super) fn publish_all(&self, event: &Arc<Event>) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.retain(|_, sender| sender.send(event.clone()).is_ok());
    }

    /// Whether anyone in this process listens to the topic, so work done only for local
    /// subscribers (loading an activity sent by reference) can be skipped.
    pub(super) fn has_subscribers(&self, topic: ConversationId) -> bool {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.get(&topic).is_some_and(|s| s.receiver_count() > 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_all_reaches_every_topic_and_forgets_abandoned_ones() {
        let pubsub = LocalPubSub::new(4);
        let (a, b) = (ConversationId::new(), ConversationId::new());
        let mut sub_a = pubsub.subscribe(a);
        let sub_b = pubsub.subscribe(b);
        assert!(pubsub.has_subscribers(a));
        assert!(!pubsub.has_subscribers(ConversationId::new()));
        drop(sub_b);
        assert!(!pubsub.has_subscribers(b));
        pubsub.publish_all(&Arc::new(Event::Resync));
        assert_eq!(*sub_a.try_recv().unwrap(), Event::Resync);
        assert_eq!(pubsub.topic_count(), 1);
    }
}
