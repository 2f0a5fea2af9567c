//! Group commit for SQLite: appends queue for one task, which writes whatever has
//! queued in one transaction and answers each caller after the commit.
//!
//! SQLite has one writer, so appends are serial anyway; what they cost is per
//! transaction and per statement hand-off to the connection's thread, not per row. A
//! batch shares its `BEGIN` and `COMMIT`, and the connection is taken from the writer
//! pool once per batch, not per append. Batches form by themselves: whatever queued
//! while the previous one committed. Nothing waits for a batch to fill.
//!
//! Each caller gets the outcome of its own append. A database error fails the whole
//! transaction, so then every append of the batch is tried again alone, and only the
//! one that fails again reports the error. An answer is sent only after the commit:
//! what a caller acknowledges is committed.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::StoreResult;
use super::activities::{ActivityAppend, AppendOutcome, append_sqlite};

/// Most appends in one transaction: bounds the time the writer is held and the
/// latency of the first append of a batch.
const MAX_BATCH: usize = 128;
/// Appends waiting for the writer task before callers wait to queue.
const QUEUE: usize = 4096;

type Request = (ActivityAppend, oneshot::Sender<StoreResult<AppendOutcome>>);

/// The queue of the writer task; cheap to clone. The task ends with the last clone.
#[derive(Clone, Debug)]
pub struct Appender {
    queue: mpsc::Sender<Request>,
}

impl Appender {
    /// Starts the writer task over `writer`, the pool of the one write connection.
    pub(super) fn start(writer: SqlitePool) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, requests));
        Self { queue }
    }

    /// Appends through the writer task; answers after the commit.
    pub(super) async fn append(&self, append: ActivityAppend) -> StoreResult<AppendOutcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((append, reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> super::StoreError {
    super::StoreError::Db(sqlx::Error::PoolClosed)
}

async fn run(writer: SqlitePool, mut requests: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let appends: Vec<&ActivityAppend> = batch.iter().map(|(append, _)| append).collect();
        let result = append_batch(&writer, &appends).await;
        drop(appends);
        match result {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    // A caller that went away still had its append committed.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some((_, reply)) = batch.pop() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, appends = batch.len(), "a batch of appends failed; trying each alone");
                for (append, reply) in batch.drain(..) {
                    let outcome = append_batch(&writer, &[&append])
                        .await
                        .and_then(|mut outcomes| outcomes.pop().ok_or_else(closed));
                    let _ = reply.send(outcome);
                }
            }
        }
    }
}

/// Appends in order in one transaction; all or nothing.
async fn append_batch(
    writer: &SqlitePool,
    appends: &[&ActivityAppend],
) -> StoreResult<Vec<AppendOutcome>> {
    let mut tx = writer.begin().await?;
    let mut outcomes = Vec::with_capacity(appends.len());
    for append in appends {
        outcomes.push(append_sqlite(&mut tx, append).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}
