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
//! - **Payload**: the JSON [`Envelope`](super::notice::Envelope) of `notice`. NOTIFY refuses payloads of 8000 bytes or more:
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

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::notice::{Notice, PAYLOAD_LIMIT, decode, encode, encode_resync, now_micros};
use super::{Event, LocalPubSub, Subscription};
use crate::domain::ConversationId;
use crate::store::{Store, StoreError};

/// The NOTIFY channel every node listens on.
pub const CHANNEL: &str = "converger_events";
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
            Notice::DeliveryStatus(report) => self
                .local
                .publish(report.conversation_id, Arc::new(report.into_event())),
            Notice::Resync => self.resync_all(),
        }
    }
}
