//! PubSub between the nodes sharing one PostgreSQL database, over LISTEN/NOTIFY.
//!
//! # Shape
//!
//! - **Publish** fans out to this node's subscribers at once, then queues the event for
//!   the *notifier* task, which sends queued events in batches with `pg_notify` on a
//!   pool connection, in publish order. `ingest` publishes after commit, so a NOTIFY is
//!   never sent inside the transaction that creates the activity (and a receiver can
//!   always load what a notification names).
//! - **Receive**: one dedicated connection per node (a [`PgListener`] on a pool of its
//!   own, so it never takes a slot of the store's pool) runs `LISTEN` in the *listener*
//!   task, which fans every notification of another node into the local topics. Each
//!   payload names its node; a node skips its own, which it already delivered locally.
//! - **Payload**: the JSON [`Envelope`]. NOTIFY refuses payloads of 8000 bytes or more:
//!   an activity whose JSON would not fit travels by reference (tenant, conversation,
//!   activity id, seq) and the receiving node loads it with `Store::get_activity`, only
//!   if it has subscribers for that conversation. An oversize typing signal is dropped.
//!
//! # Loss
//!
//! Notifications are not durable: those sent while a node's LISTEN connection is down
//! are gone. Each place where loss can happen ends in [`Event::Resync`], which sessions
//! treat like a lag (refill from the store after the last delivered `seq`):
//! - the listener connection drops: [`PgListener::try_recv`] reconnects and re-LISTENs,
//!   then returns `Ok(None)`; any other error makes the listener start afresh. Either
//!   way, once LISTEN is in place again, every local topic gets `Resync`. Anything
//!   committed before that is in the store; anything after arrives as a notification.
//! - the notifier cannot keep up (its queue is full) or `pg_notify` fails: it sends a
//!   resync notice with its next successful batch (retrying on a timer), and every other
//!   node resynchronises all its topics.
//!
//! # What it must not do
//!
//! - Notify inside a transaction, or block `publish` on the database: publishing is
//!   synchronous and never waits.
//! - Trust payloads: they come from anyone who may NOTIFY on the database. Decoding is
//!   total (a malformed payload is logged and skipped) and never panics.
//! - Be the record: the store is. Nothing here retries a lost event; it only makes the
//!   subscribers look in the store.
//!
//! Within one `pg_notify` batch PostgreSQL folds identical payloads into one; only a
//! repeated typing signal or resync notice can be identical, so nothing is lost by it.
//! The size limit counts bytes in the database encoding, assumed to be UTF-8.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{Event, LocalPubSub, Subscription};
use crate::domain::{Activity, ActivityId, ChannelId, ConversationId, DeliveryId, TenantId};
use crate::store::{Store, StoreError};

/// The NOTIFY channel every node listens on.
pub const CHANNEL: &str = "converger_events";
/// PostgreSQL refuses NOTIFY payloads of this many bytes or more.
pub const PAYLOAD_LIMIT: usize = 8000;
/// Events waiting for the notifier before publishers start losing them (and the
/// other nodes are told to resynchronise instead).
const OUTBOX_CAPACITY: usize = 4096;
/// Most payloads sent in one `pg_notify` statement.
const NOTIFY_BATCH: usize = 64;
/// Wait before retrying a failed NOTIFY.
const NOTIFY_RETRY: Duration = Duration::from_secs(1);
/// First and longest wait before reconnecting the listener after a failure.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// One batch of payloads, sent in order in one statement (one transaction).
const NOTIFY_SQL: &str = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload";

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
fn now_micros() -> i64 {
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
    DeliveryStatus {
        conversation_id: ConversationId,
        delivery_id: DeliveryId,
        activity_id: ActivityId,
        channel_id: ChannelId,
        status: Cow<'a, str>,
        error: Option<Cow<'a, str>>,
    },
    /// The sender lost notifications: every node resynchronises all its topics.
    Resync,
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
        } => payload(Notice::DeliveryStatus {
            conversation_id: *conversation_id,
            delivery_id: *delivery_id,
            activity_id: *activity_id,
            channel_id: *channel_id,
            status: Cow::Borrowed(status),
            error: error.as_deref().map(Cow::Borrowed),
        })
        // The delivery's metadata keeps the record; a report too large is not sent.
        .filter(|p| p.len() < limit),
        Event::Resync => None,
    }
}

/// The resync notice of `node`.
fn encode_resync(node: Uuid) -> String {
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

/// PubSub over PostgreSQL: local topics plus the queue of the notifier task. Cheap to
/// clone; the notifier ends once every clone is gone.
#[derive(Clone)]
pub struct PgPubSub {
    node: Uuid,
    local: LocalPubSub,
    outbox: mpsc::Sender<Arc<Event>>,
    /// Signalled when an event could not be queued: the notifier owes a resync notice.
    overflow: Arc<Notify>,
}

impl PgPubSub {
    /// Starts the listener (stopped by `shutdown`) and the notifier (stopped when the
    /// last handle is dropped, so that what is published while the node drains still
    /// reaches the other nodes) on `tasks`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn start(
        pool: PgPool,
        store: Store,
        capacity: usize,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let node = Uuid::now_v7();
        let local = LocalPubSub::new(capacity);
        let (outbox, queued) = mpsc::channel(OUTBOX_CAPACITY);
        let overflow = Arc::new(Notify::new());
        let listener = Listener {
            node,
            local: local.clone(),
            store,
            // A pool of one that outlives its connection: PgListener reconnects through
            // it. Unbounded lifetime, as a LISTEN connection must not be recycled.
            pool: PgPoolOptions::new()
                .max_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(
                    (*pool.connect_options())
                        .clone()
                        .application_name("converger listener"),
                ),
            shutdown,
        };
        tasks.spawn(listener.run());
        tasks.spawn(notify_loop(pool, node, queued, overflow.clone()));
        Self {
            node,
            local,
            outbox,
            overflow,
        }
    }

    /// This node's id in notifications.
    pub fn node(&self) -> Uuid {
        self.node
    }

    pub(super) fn publish(&self, topic: ConversationId, event: Arc<Event>) {
        self.local.publish(topic, event.clone());
        if matches!(*event, Event::Resync) {
            return;
        }
        match self.outbox.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("NOTIFY queue full: other nodes will resynchronise");
                self.overflow.notify_one();
            }
            // Only after the notifier gave up on a closed pool, at shutdown.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(super) fn subscribe(&self, topic: ConversationId) -> Subscription {
        self.local.subscribe(topic)
    }
}

/// Sends queued events to the other nodes, in order, until every publisher is gone.
async fn notify_loop(
    pool: PgPool,
    node: Uuid,
    mut queued: mpsc::Receiver<Arc<Event>>,
    overflow: Arc<Notify>,
) {
    let mut events = Vec::with_capacity(NOTIFY_BATCH);
    // Set when notifications were lost; cleared by a successful resync notice.
    let mut owe_resync = false;
    loop {
        let open = tokio::select! {
            received = queued.recv_many(&mut events, NOTIFY_BATCH) => received > 0,
            () = overflow.notified() => {
                owe_resync = true;
                true
            }
            () = tokio::time::sleep(NOTIFY_RETRY), if owe_resync => true,
        };
        if !open && !owe_resync {
            return;
        }
        let mut payloads = Vec::with_capacity(events.len() + 1);
        if owe_resync {
            payloads.push(encode_resync(node));
        }
        payloads.extend(
            events
                .drain(..)
                .filter_map(|e| encode(node, &e, PAYLOAD_LIMIT)),
        );
        if !payloads.is_empty() {
            let sent = sqlx::query(NOTIFY_SQL)
                .bind(CHANNEL)
                .bind(&payloads)
                .execute(&pool)
                .await;
            match sent {
                Ok(_) => owe_resync = false,
                Err(e) => {
                    tracing::warn!(error = %e, lost = payloads.len(), "cannot NOTIFY: other nodes will resynchronise");
                    owe_resync = true;
                }
            }
        }
        if !open || pool.is_closed() {
            return;
        }
    }
}

/// The LISTEN side: owns the dedicated connection and feeds the local topics.
struct Listener {
    node: Uuid,
    local: LocalPubSub,
    store: Store,
    pool: PgPool,
    shutdown: CancellationToken,
}

impl Listener {
    /// Listens until shutdown, reconnecting with backoff; resynchronises every local
    /// topic each time LISTEN is (re-)established.
    async fn run(self) {
        let mut delay = RECONNECT_MIN;
        loop {
            let connected = tokio::select! {
                () = self.shutdown.cancelled() => return,
                connected = self.listen() => connected,
            };
            let mut listener = match connected {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot LISTEN");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            delay = RECONNECT_MIN;
            // What other nodes announced before LISTEN took effect was missed.
            self.resync_all();
            loop {
                let received = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        tokio::select! {
                            () = self.shutdown.cancelled() => return,
                            () = self.on_notification(notification.payload()) => {}
                        }
                    }
                    Ok(None) => {
                        // Reconnected and listening again (eager reconnect).
                        tracing::warn!("LISTEN connection was lost: resynchronising subscribers");
                        self.resync_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed");
                        break;
                    }
                }
            }
        }
    }

    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    fn resync_all(&self) {
        self.local.publish_all(&Arc::new(Event::Resync));
    }

    async fn on_notification(&self, payload: &str) {
        let envelope = match decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, bytes = payload.len(), "skipping a malformed notification");
                return;
            }
        };
        if envelope.node == self.node {
            return;
        }
        if let Some(sent_at) = envelope.sent_at {
            let lag = u64::try_from(now_micros().saturating_sub(sent_at)).unwrap_or(0);
            crate::metrics::record_pubsub_lag(Duration::from_micros(lag));
        }
        match envelope.notice {
            Notice::Activity { activity } => {
                let activity = activity.into_owned();
                self.local.publish(
                    activity.conversation_id,
                    Arc::new(Event::Activity(activity)),
                );
            }
            Notice::ActivityRef {
                tenant_id,
                conversation_id,
                activity_id,
                seq,
            } => {
                if !self.local.has_subscribers(conversation_id) {
                    return;
                }
                let event = match self.store.get_activity(tenant_id, activity_id).await {
                    Ok(a) if a.conversation_id == conversation_id && a.seq == seq => {
                        Event::Activity(a)
                    }
                    Ok(_) | Err(StoreError::NotFound) => {
                        tracing::warn!(%activity_id, "a notification names an unknown activity");
                        return;
                    }
                    Err(e) => {
                        // The subscribers will try the store themselves.
                        tracing::warn!(error = %e, %activity_id, "cannot load a notified activity");
                        Event::Resync
                    }
                };
                self.local.publish(conversation_id, Arc::new(event));
            }
            Notice::Typing {
                conversation_id,
                sender,
            } => self.local.publish(
                conversation_id,
                Arc::new(Event::Typing {
                    conversation_id,
                    sender: sender.into_owned(),
                }),
            ),
            Notice::DeliveryStatus {
                conversation_id,
                delivery_id,
                activity_id,
                channel_id,
                status,
                error,
            } => self.local.publish(
                conversation_id,
                Arc::new(Event::DeliveryStatus {
                    conversation_id,
                    delivery_id,
                    activity_id,
                    channel_id,
                    status: status.into_owned(),
                    error: error.map(Cow::into_owned),
                }),
            ),
            Notice::Resync => self.resync_all(),
        }
    }
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
