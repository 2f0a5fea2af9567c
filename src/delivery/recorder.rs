//! Records the ends of delivery attempts in batches: group commit for outcomes.
//!
//! Attempts that end while a write is under way wait for it and are then written
//! together, in one transaction ([`Store::record_attempts`]), so under load the
//! cost of recording is paid per batch rather than per attempt; alone, an attempt is
//! written at once, as before. Then the attempts that reached their receivers are fed
//! to their channels' breakers ([`Store::observe_channels`]), in one more transaction
//! per batch. Each attempt is answered after both commits, so the loop never claims
//! work of a channel whose breaker its last answer opened. A batch the store refuses
//! as a whole (a deadlock with an operator's retry, say) is written again one attempt
//! at a time, so one row cannot fail the others.

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::breaker::{self, BreakerSettings};
use crate::domain::{HealthTransition, Observation};
use crate::store::{Completion, Store, StoreResult};

/// Most outcomes written in one transaction.
const BATCH: usize = 128;

/// One outcome waiting to be written, and who waits for it.
struct Pending {
    completion: Completion,
    /// What the attempt tells about the channel's receiver, if it reached it.
    observation: Option<Observation>,
    done: oneshot::Sender<StoreResult<bool>>,
}

/// The handle attempts record through; cheap to clone. The writing task ends when
/// the last handle is dropped, after writing what it was given.
#[derive(Clone)]
pub(super) struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Starts the writing task on `tasks`; `breaker` rules the channels' health.
    pub(super) fn start(store: Store, breaker: BreakerSettings, tasks: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tasks.spawn(write_batches(store, breaker, rx));
        Self { tx }
    }

    /// Records the end of an attempt under `lease`, and its row of the attempt log, in
    /// the next batch (see [`Store::record_attempts`]), and what it tells about the
    /// channel's receiver (see [`Store::observe_channels`]); returns once both are
    /// committed.
    pub(super) async fn record(
        &self,
        completion: Completion,
        observation: Option<Observation>,
    ) -> StoreResult<bool> {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            completion,
            observation,
            done,
        };
        if self.tx.send(pending).await.is_err() {
            return Err(crate::store::StoreError::Config(
                "the outcome recorder has stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(crate::store::StoreError::Config(
                "the outcome recorder stopped before answering".into(),
            ))
        })
    }
}

async fn write_batches(store: Store, breaker: BreakerSettings, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut completions = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut dones = Vec::with_capacity(batch.len());
        let mut observations = Vec::with_capacity(batch.len());
        for p in batch.drain(..) {
            dones.push(p.done);
            observations.push(p.observation);
            completions.push(p.completion);
        }
        let results: Vec<StoreResult<bool>> = match store.record_attempts(&completions).await {
            Ok(recorded) => recorded.into_iter().map(Ok).collect(),
            Err(e) if completions.len() > 1 => {
                tracing::debug!(error = %e, size = completions.len(), "outcome batch refused; writing one by one");
                let mut results = Vec::with_capacity(completions.len());
                for completion in &completions {
                    results.push(
                        store
                            .record_attempts(std::slice::from_ref(completion))
                            .await
                            .map(|recorded| recorded.first().copied().unwrap_or(false)),
                    );
                }
                results
            }
            Err(e) => vec![Err(e)],
        };
        // Only attempts whose outcome was written count for their channel: one whose
        // lease was lost is another node's to count.
        let observed: Vec<Observation> = observations
            .into_iter()
            .zip(&results)
            .filter_map(|(o, r)| o.filter(|_| matches!(r, Ok(true))))
            .collect();
        observe(&store, &breaker, &observed).await;
        for (done, result) in dones.into_iter().zip(results) {
            let _ = done.send(result);
        }
        completions.clear();
    }
}

/// Feeds attempts to their channels' breakers and logs what that changed. A failure
/// here loses these observations only: the outcomes are already recorded.
async fn observe(store: &Store, settings: &BreakerSettings, observed: &[Observation]) {
    if observed.is_empty() {
        return;
    }
    let transitions = match store
        .observe_channels(observed, |health, o| breaker::observe(health, o, settings))
        .await
    {
        Ok(transitions) => transitions,
        Err(e) => {
            tracing::warn!(error = %e, "cannot update channel health");
            return;
        }
    };
    for (channel_id, transition) in transitions {
        match transition {
            HealthTransition::Opened { until } => {
                tracing::warn!(%channel_id, until = %until.0, "channel breaker opened: its deliveries wait")
            }
            HealthTransition::Reopened { until } => {
                tracing::warn!(%channel_id, until = %until.0, "channel breaker probe failed: reopened")
            }
            HealthTransition::Closed => {
                tracing::info!(%channel_id, "channel breaker closed: deliveries resume")
            }
            HealthTransition::Disabled => tracing::error!(
                %channel_id,
                "channel paused after failing too long without a success: resume it once fixed"
            ),
        }
    }
}
