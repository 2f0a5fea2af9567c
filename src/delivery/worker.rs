//! The delivery loop: claim due rows under a lease, deliver through the channel's
//! adapter, record the outcome. In the mini-redis shape: one loop per node,
//! `select!` over wake-ups, a timer and shutdown; attempts run as tasks bounded by a
//! semaphore, so hundreds of slow receivers hold permits, not database connections.
//!
//! Shutdown has two steps: `stop` ends the loop (nothing more is claimed) while the
//! attempts in flight finish and are recorded; `abort`, at the node's deadline, makes
//! the attempts still waiting on a receiver give their lease back unrecorded, so the
//! delivery is due again at once for any node and the attempt does not count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::outcome::{attempt_result, observation};
use super::probe::run_probes;
use super::recorder::Recorder;
use super::repair::run_head_repair;
use super::{DeliverySettings, DeliveryWaker, NodeIdentity, Throttle};
use crate::adapters::{AdapterError, Adapters, Delivered, Exchange, Outbound};
use crate::domain::{ChannelStatus, Delivery, Observation, Timestamp};
use crate::egress::EgressClient;
use crate::ingest::{IngestError, IngestRequest, Ingestor};
use crate::metrics::AttemptOutcome;
use crate::store::{
    AttemptContext, AttemptLog, AttemptResult, Backend, ClaimedDelivery, Completion, Store,
    StoreError,
};

/// Most rows claimed in one query.
const CLAIM_BATCH: usize = 64;
/// Pause after a failing queue query before the next look.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// First and longest pause between tries of an outcome write the database refused
/// for being out of reach.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(250);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest a receiver's `429` `Retry-After` holds back its whole channel (the delivery
/// that got it waits as long as it asks).
const MAX_CHANNEL_BACK_OFF: Duration = Duration::from_secs(600);

/// What one claim found.
enum Claimed {
    /// Nothing due.
    None,
    /// Fewer rows than asked for: nothing more is due right now.
    Some,
    /// As many as asked for: more may be due.
    Full,
}

/// Everything the delivery loop needs; cheap to clone into attempt tasks.
#[derive(Clone)]
pub struct DeliveryEngine {
    store: Store,
    adapters: Adapters,
    ingest: Ingestor,
    waker: DeliveryWaker,
    http: EgressClient,
    settings: Arc<DeliverySettings>,
    recorder: Recorder,
    /// The node whose leases this engine takes; it counts the live nodes that share
    /// each channel's rate limit.
    node: Arc<NodeIdentity>,
    /// This node's pace per channel.
    throttle: Arc<Throttle>,
}

impl DeliveryEngine {
    /// An engine of node `node` over the node's store and adapters. Its outcome
    /// recorder runs on `tasks` until the engine and every attempt it started are gone.
    pub fn new(
        node: Arc<NodeIdentity>,
        store: Store,
        adapters: Adapters,
        ingest: Ingestor,
        waker: DeliveryWaker,
        settings: DeliverySettings,
        tasks: &TaskTracker,
    ) -> Self {
        // The one outbound client of the node: the egress policy and same-origin
        // redirects live there (src/egress.rs).
        let http = EgressClient::new(adapters.egress().clone())
            .unwrap_or_else(|e| panic!("the TLS backend of the delivery client failed: {e}"));
        Self {
            recorder: Recorder::start(store.clone(), settings.breaker.clone(), tasks),
            store,
            adapters,
            ingest,
            waker,
            http,
            settings: Arc::new(settings),
            node,
            throttle: Arc::default(),
        }
    }

    /// Runs the loop until `stop`; attempts are spawned on `tasks`, so the node can
    /// wait for those in flight, and give their leases back when `abort` is cancelled.
    pub async fn run(self, stop: CancellationToken, abort: CancellationToken, tasks: TaskTracker) {
        if self.store.backend() == Backend::Sqlite {
            // The only node of its database: leases still held are its previous run's,
            // which ended (perhaps killed) mid-attempt. Taken over now, not at expiry.
            match self.store.release_all_leases().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "leases of the previous run released"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the previous run's leases; they expire instead")
                }
            }
        }
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        tracing::info!(
            concurrency = self.settings.concurrency,
            "delivery workers started"
        );
        // Beside the loop and stopped with it: marks what older nodes leave unmarked.
        tasks.spawn(run_head_repair(
            self.store.clone(),
            self.waker.clone(),
            self.settings.head_repair_interval,
            stop.clone(),
        ));
        // Beside the loop too: lets the probe through once a breaker's cool-down ends.
        tasks.spawn(run_probes(
            self.store.clone(),
            self.waker.clone(),
            self.settings.poll_interval,
            stop.clone(),
        ));
        // Checked before every claim, not only while waiting: a long backlog keeps the
        // loop claiming without ever waiting.
        while !stop.is_cancelled() {
            let wait = match self.claim_and_spawn(&permits, &tasks, &abort).await {
                Ok(Claimed::Full) => continue,
                // The attempts just started wake the loop when they end: asking when
                // the next row is due would cost a query per wake-up for nothing.
                Ok(Claimed::Some) => self.settings.poll_interval,
                Ok(Claimed::None) => {
                    self.throttle.forget_idle();
                    self.time_to_next_due().await
                }
                Err(e) => {
                    if e.is_unavailable() {
                        self.store.report_unavailable();
                    }
                    tracing::warn!(error = %e, "delivery queue unavailable");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.waker.woken() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!(
            in_flight = self.settings.concurrency.max(1) - permits.available_permits(),
            "delivery workers stopped claiming"
        );
    }

    /// Claims as many due rows as there are free permits and starts their attempts.
    async fn claim_and_spawn(
        &self,
        permits: &Arc<Semaphore>,
        tasks: &TaskTracker,
        abort: &CancellationToken,
    ) -> Result<Claimed, StoreError> {
        let free = permits.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            // A finishing attempt wakes the loop.
            return Ok(Claimed::Some);
        }
        let now = Timestamp::now();
        let lease = now.plus(self.settings.lease);
        let claimed = self
            .store
            .claim_due(self.node.id, now, lease, free as i64)
            .await?;
        let got = match claimed.len() {
            0 => Claimed::None,
            n if n == free => Claimed::Full,
            _ => Claimed::Some,
        };
        for claimed in claimed {
            let delivery = &claimed.delivery;
            if claimed.held {
                // Written unheld as its channel paused or its breaker opened: held now
                // with the channel's others, not attempted.
                self.store.hold_claimed(delivery.id, lease).await?;
                tracing::debug!(delivery_id = %delivery.id, "claimed while its channel is held; held");
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Cannot happen (only this loop takes permits); give the row back.
                self.store.release_delivery(delivery.id, lease).await?;
                continue;
            };
            let engine = self.clone();
            // The attempt logs, and any reply it ingests, carry the id of the request
            // that created the activity.
            let request_id = delivery
                .request_id
                .clone()
                .unwrap_or_else(crate::telemetry::new_request_id);
            let span = tracing::info_span!("delivery", delivery_id = %delivery.id, request_id);
            let abort = abort.clone();
            tasks.spawn(async move {
                crate::telemetry::with_request_id(
                    request_id,
                    engine.attempt(claimed, lease, &abort).instrument(span),
                )
                .await;
                drop(permit);
                // The next delivery of this conversation and channel may be due now.
                engine.waker.wake();
            });
        }
        Ok(got)
    }

    async fn time_to_next_due(&self) -> Duration {
        let poll = self.settings.poll_interval;
        match self.store.next_delivery_due().await {
            Ok(Some(at)) => (at.0 - Timestamp::now().0)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(5), poll),
            Ok(None) => poll,
            Err(_) => ERROR_PAUSE,
        }
    }

    /// One attempt of one leased delivery, recorded with its row of the attempt log;
    /// or, when `abort` comes first, abandoned and its lease given back without
    /// counting it. An attempt that cannot start because the database is out of
    /// reach is not counted either.
    async fn attempt(&self, claimed: ClaimedDelivery, lease: Timestamp, abort: &CancellationToken) {
        let ClaimedDelivery {
            delivery, context, ..
        } = claimed;
        // Numbered over the delivery's life; the budget counts from the last manual
        // retry.
        let attempt = u32::try_from(delivery.attempts).unwrap_or(0) + 1;
        let in_budget = attempt
            .saturating_sub(u32::try_from(delivery.budget_start).unwrap_or(0))
            .max(1);
        let started_at = Timestamp::now();
        let started = Instant::now();
        let loaded = match context {
            Some(context) => Ok(context),
            None => match self.store.attempt_context(&delivery).await {
                Ok(Some(context)) => Ok(context),
                Ok(None) => Err(AdapterError::permanent(
                    "the activity or channel no longer exists",
                )),
                // The receiver was not tried: nothing to count. The lease goes back
                // (or, with the database away, expires) and the delivery is retried.
                Err(e) => {
                    self.unattempted(&delivery, lease, &e).await;
                    return;
                }
            },
        };
        // The channel's rate limit, or a receiver's 429 with Retry-After, may hold it
        // back: the lease goes back and the delivery is due at the channel's next slot,
        // with no attempt counted.
        if let Ok(context) = &loaded {
            let channel = &context.channel;
            let nodes = self.node.delivering_nodes();
            if let Some(wait) = self.throttle.admit(channel.id, channel.rate_limit(), nodes) {
                let due = Timestamp::now().plus(wait);
                if let Err(e) = self.store.defer_delivery(delivery.id, lease, due).await {
                    tracing::warn!(delivery_id = %delivery.id, error = %e, "cannot hand back a throttled delivery; its lease expires instead");
                }
                return;
            }
        }
        let exchange = Exchange::default();
        let attempted = async {
            match loaded {
                Ok(loaded) => (
                    loaded.channel.kind.as_str(),
                    self.deliver(&delivery, attempt, loaded, &exchange).await,
                ),
                Err(e) => ("unknown", Err(e)),
            }
        };
        let (adapter, result) = tokio::select! {
            // An answer that is in is recorded, even at the abort.
            biased;
            attempted = attempted => attempted,
            () = abort.cancelled() => {
                // The receiver may have got the request: it sees the same webhook-id
                // again from whichever node takes the delivery, and can drop it.
                match self.store.release_delivery(delivery.id, lease).await {
                    Ok(()) => tracing::info!(delivery_id = %delivery.id, "delivery abandoned at shutdown; lease released"),
                    Err(e) => tracing::warn!(delivery_id = %delivery.id, error = %e, "cannot release the lease of an abandoned delivery; it expires instead"),
                }
                return;
            }
        };
        let now = Timestamp::now();
        let recorded = attempt_result(&result, in_budget, now, self.settings.backoff_scale);
        let observed = observation(&delivery, &result, now);
        let outcome = match &recorded {
            AttemptResult::Delivered { .. } => {
                tracing::debug!(delivery_id = %delivery.id, attempt, "delivered");
                AttemptOutcome::Delivered
            }
            AttemptResult::RetryAt { error, at } => {
                tracing::info!(delivery_id = %delivery.id, attempt, %error, retry_at = ?at.0, "delivery attempt failed");
                AttemptOutcome::Retry
            }
            AttemptResult::Failed { error } => {
                tracing::warn!(delivery_id = %delivery.id, attempt, %error, "delivery failed");
                AttemptOutcome::Failed
            }
        };
        let elapsed = started.elapsed();
        let answer = exchange.take();
        let log = AttemptLog {
            started_at,
            duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            http_status: answer.as_ref().map(|a| i32::from(a.status)),
            response_body: answer.map(|a| a.body),
            node: self.settings.node.clone(),
        };
        if let (
            Some(429),
            Err(AdapterError::Retryable {
                retry_after: Some(wait),
                ..
            }),
        ) = (log.http_status, &result)
        {
            // Too many requests, and told for how long: the whole channel waits on this
            // node, not only this delivery (scaled as the delivery's own retry is).
            let wait = wait.mul_f64(self.settings.backoff_scale);
            self.throttle
                .back_off(delivery.channel_id, wait.min(MAX_CHANNEL_BACK_OFF));
        }
        let completion = Completion {
            delivery: delivery.clone(),
            lease,
            now,
            result: recorded,
            log,
        };
        match self.record(completion, observed, abort).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery_id = %delivery.id, "lease lost before the outcome was recorded")
            }
            // The lease expires and another attempt follows: delivered at least once.
            Err(e) => {
                tracing::error!(delivery_id = %delivery.id, error = %e, "cannot record delivery outcome")
            }
        }
        // Counted once the outcome is stored, so a scrape never runs ahead of the queue.
        crate::metrics::record_delivery_attempt(adapter, outcome, elapsed);
    }

    /// Records an attempt's outcome. While the database is out of reach the write is
    /// tried again, for as long as the lease holds and the node is not aborting: the
    /// receiver has had this attempt, and an outcome that is never written would have
    /// it make the same delivery again once the lease expires.
    async fn record(
        &self,
        completion: Completion,
        observed: Option<Observation>,
        abort: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let (delivery, lease) = (completion.delivery.id, completion.lease);
        let mut pause = RECORD_RETRY_FIRST;
        loop {
            match self
                .recorder
                .record(completion.clone(), observed.clone())
                .await
            {
                Err(e) if e.is_unavailable() => {
                    self.store.report_unavailable();
                    // Past the lease another node may have the delivery, and the
                    // write would be refused anyway.
                    if Timestamp::now().plus(pause) >= lease || abort.is_cancelled() {
                        return Err(e);
                    }
                    tracing::warn!(delivery_id = %delivery, error = %e, "cannot record the outcome yet; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = abort.cancelled() => return Err(e),
                    }
                    pause = (pause * 2).min(RECORD_RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// An attempt that could not start for a store error: gives the lease back without
    /// counting an attempt, so the delivery is due again for any node.
    async fn unattempted(&self, delivery: &Delivery, lease: Timestamp, error: &StoreError) {
        if error.is_unavailable() {
            self.store.report_unavailable();
        }
        tracing::warn!(delivery_id = %delivery.id, %error, "cannot read what the attempt needs; not attempted");
        if let Err(e) = self.store.release_delivery(delivery.id, lease).await {
            tracing::warn!(delivery_id = %delivery.id, error = %e, "cannot release the lease; it expires instead");
        }
    }

    async fn deliver(
        &self,
        delivery: &Delivery,
        attempt: u32,
        loaded: AttemptContext,
        exchange: &Exchange,
    ) -> Result<Delivered, AdapterError> {
        let tenant = delivery.tenant_id;
        let AttemptContext {
            activity,
            conversation,
            channel,
        } = loaded;
        if channel.status != ChannelStatus::Active {
            return Err(AdapterError::permanent("the channel is inactive"));
        }
        let outbound = Outbound {
            delivery_id: delivery.id,
            attempt,
            activity: &activity,
            conversation: &conversation,
            channel: &channel,
            http: &self.http,
            max_timeout: self.settings.lease.mul_f64(0.8),
            exchange,
        };
        let delivered = self.adapters.get(channel.kind).deliver(&outbound).await?;
        if let Some(reply) = delivered.reply.clone() {
            let request = IngestRequest {
                tenant_id: tenant,
                conversation_id: conversation.id,
                activity: reply,
                origin_channel: Some(channel.id),
            };
            match self.ingest.ingest(request).await {
                Ok(_) => {}
                Err(IngestError::Store(e)) => {
                    return Err(AdapterError::retryable(format!(
                        "cannot store the reply: {e}"
                    )));
                }
                Err(e) => return Err(AdapterError::permanent(format!("reply refused: {e}"))),
            }
        }
        Ok(delivered)
    }
}
