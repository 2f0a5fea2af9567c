//! In-process PubSub: one bounded tokio broadcast channel per conversation with
//! subscribers (mini-redis `Db::subscribe`/`publish`).
//!
//! A topic exists exactly while it has subscribers: the last [`Subscription`] to go
//! removes it. A broadcast channel allocates all its slots up front, so topics left
//! behind by conversations nobody watches any more would otherwise hold memory for
//! the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::Event;
use crate::domain::ConversationId;

type Topics = Arc<Mutex<HashMap<ConversationId, broadcast::Sender<Arc<Event>>>>>;

/// Topics of this process.
#[derive(Clone)]
pub struct LocalPubSub {
    topics: Topics,
    capacity: usize,
}

/// A stream of events of one conversation; forgets the topic when it is the last.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    topic: ConversationId,
    topics: Topics,
}

impl Subscription {
    /// The next event. `Lagged` when this subscription fell more than the capacity
    /// behind; the events in between are lost to it (the store has them).
    ///
    /// # Errors
    /// `Lagged(n)`, or `Closed` once the node's PubSub is gone.
    pub async fn recv(&mut self) -> Result<Arc<Event>, RecvError> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    ///
    /// # Errors
    /// `Empty`, `Lagged(n)` or `Closed`.
    pub fn try_recv(&mut self) -> Result<Arc<Event>, TryRecvError> {
        self.receiver.try_recv()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = lock(&self.topics);
        // This receiver still counts: 1 means it is the last. Subscribing takes the
        // same lock, so no subscriber can join the topic between check and removal.
        if topics
            .get(&self.topic)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            topics.remove(&self.topic);
        }
    }
}

/// A std mutex: held for a map operation only, never across an await.
fn lock(
    topics: &Topics,
) -> std::sync::MutexGuard<'_, HashMap<ConversationId, broadcast::Sender<Arc<Event>>>> {
    topics.lock().unwrap_or_else(|e| e.into_inner())
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
        if let Some(sender) = lock(&self.topics).get(&topic) {
            // No receiver left can only be a subscription being dropped right now.
            let _ = sender.send(event);
        }
    }

    /// Sends an event to every topic with subscribers (a resynchronisation).
    pub(super) fn publish_all(&self, event: &Arc<Event>) {
        for sender in lock(&self.topics).values() {
            let _ = sender.send(event.clone());
        }
    }

    /// Whether anyone in this process listens to the topic, so work done only for local
    /// subscribers (loading an activity sent by reference) can be skipped.
    pub(super) fn has_subscribers(&self, topic: ConversationId) -> bool {
        lock(&self.topics).contains_key(&topic)
    }

    pub(super) fn subscribe(&self, topic: ConversationId) -> Subscription {
        let receiver = lock(&self.topics)
            .entry(topic)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        Subscription {
            receiver,
            topic,
            topics: self.topics.clone(),
        }
    }

    /// How many topics have subscribers (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        lock(&self.topics).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_all_reaches_every_topic_and_the_last_subscriber_forgets_its_topic() {
        let pubsub = LocalPubSub::new(4);
        let (a, b) = (ConversationId::new(), ConversationId::new());
        let mut sub_a = pubsub.subscribe(a);
        let sub_b = pubsub.subscribe(b);
        let sub_b2 = pubsub.subscribe(b);
        assert!(pubsub.has_subscribers(a));
        assert!(!pubsub.has_subscribers(ConversationId::new()));
        drop(sub_b);
        assert!(pubsub.has_subscribers(b), "one subscriber of b is left");
        drop(sub_b2);
        assert!(!pubsub.has_subscribers(b));
        assert_eq!(pubsub.topic_count(), 1);
        pubsub.publish_all(&Arc::new(Event::Resync));
        assert_eq!(*sub_a.try_recv().unwrap(), Event::Resync);
        drop(sub_a);
        assert_eq!(pubsub.topic_count(), 0);
    }

    #[test]
    fn a_topic_resubscribed_after_its_last_subscriber_left_works() {
        let pubsub = LocalPubSub::new(4);
        let topic = ConversationId::new();
        drop(pubsub.subscribe(topic));
        let mut again = pubsub.subscribe(topic);
        pubsub.publish(topic, Arc::new(Event::Resync));
        assert_eq!(*again.try_recv().unwrap(), Event::Resync);
    }
}
