//! Records the ends of delivery attempts in batches: group commit for outcomes.
//!
//! Attempts that end while a write is under way wait for it and are then written
//! together, in one transaction ([`Store::record_attempts`]), so under load the
//! cost of recording is paid per batch rather than per attempt; alone, an attempt is
//! written at once, as before. Each attempt is answered after the commit that holds
//! its outcome. A batch the store refuses as a whole (a deadlock with an operator's
//! retry, say) is written again one attempt at a time, so one row cannot fail the
//! others.

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::domain::{Delivery, Timestamp};
use crate::store::{AttemptLog, AttemptResult, Completion, Store, StoreResult};

/// Most outcomes written in one transaction.
const BATCH: usize = 128;

/// One outcome waiting to be written, and who waits for it.
struct Pending {
    completion: Completion,
    done: oneshot::Sender<StoreResult<bool>>,
}

/// The handle attempts record through; cheap to clone. The writing task ends when
/// the last handle is dropped, after writing what it was given.
#[derive(Clone)]
pub(super) struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// Starts the writing task on `tasks`.
    pub(super) fn start(store: Store, tasks: &TaskTracker) -> Self {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tasks.spawn(write_batches(store, rx));
        Self { tx }
    }

    /// Records the end of an attempt under `lease`, and its row of the attempt log, in
    /// the next batch (see [`Store::record_attempts`]); returns once that batch is
    /// committed.
    pub(super) async fn record(
        &self,
        delivery: &Delivery,
        lease: Timestamp,
        now: Timestamp,
        result: &AttemptResult,
        log: AttemptLog,
    ) -> StoreResult<bool> {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            completion: Completion {
                delivery: delivery.clone(),
                lease,
                now,
                result: result.clone(),
                log,
            },
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

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut completions = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (dones, taken): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|p: Pending| (p.done, p.completion))
            .unzip();
        completions.extend(taken);
        match store.record_attempts(&completions).await {
            Ok(recorded) => {
                for (done, recorded) in dones.into_iter().zip(recorded) {
                    let _ = done.send(Ok(recorded));
                }
            }
            Err(e) if completions.len() > 1 => {
                tracing::debug!(error = %e, size = completions.len(), "outcome batch refused; writing one by one");
                for (done, completion) in dones.into_iter().zip(&completions) {
                    let recorded = store
                        .record_attempts(std::slice::from_ref(completion))
                        .await
                        .map(|recorded| recorded.first().copied().unwrap_or(false));
                    let _ = done.send(recorded);
                }
            }
            Err(e) => {
                if let Some(done) = dones.into_iter().next() {
                    let _ = done.send(Err(e));
                }
            }
        }
        completions.clear();
    }
}
