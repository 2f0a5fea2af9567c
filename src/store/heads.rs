//! The head-of-line flag of the delivery queue.
//!
//! Deliveries of one conversation to one channel go out in `seq` order (docs/design.md#ordering),
//! so of each (conversation, channel) only the pending delivery with the smallest `seq`
//! may be attempted. `deliveries.head` marks that row: a claim reads the heads alone
//! through `deliveries_head_due_idx`, and its cost follows the pairs with work to do,
//! not the backlog behind them.
//!
//! # Invariant
//!
//! For each (conversation, channel) with pending deliveries, exactly the pending row
//! with the smallest `seq` has `head`. Every transaction that adds a pending row or
//! ends one keeps it:
//! - an append (`activities.rs`) marks a new row iff its pair has no pending row;
//! - a completion, delivered or failed (`queue.rs`), clears the row's flag and marks
//!   the pair's first pending row;
//! - an operator's retry (`deliveries.rs`, `admin.rs`) sets rows pending unmarked and
//!   then settles the pairs it touched ([`settle_heads!`]).
//!
//! A retry scheduled by the worker keeps the row pending and first: nothing moves. The
//! flag of a delivered or failed row means nothing; it is cleared on the way out only
//! so that the table reads plainly.
//!
//! # Races (PostgreSQL, READ COMMITTED)
//!
//! Each of those transactions holds its conversation's row lock while it reads and
//! writes the pair's flags: an append through its `last_seq` bump (`UPDATE
//! conversations`), the others through [`lock_conversation!`] (`FOR NO KEY UPDATE`,
//! which conflicts with that update). Without the lock an append and the completion of
//! the pair's head can each miss the other: the append sees the head still pending and
//! inserts an unmarked row, the completion's promote cannot see that uncommitted row,
//! and the new row is never claimed. With it they are ordered, and each statement of a
//! READ COMMITTED transaction sees what committed before the statement began:
//! - completion first: the append's bump waits for the completion's commit; the
//!   append's insert, a later statement, sees the head delivered (and whichever row it
//!   promoted), so the new row is marked iff nothing of its pair is still pending;
//! - append first: the completion's lock waits for the append's commit; its update and
//!   promote, later statements, see the new row and mark it if it is now first.
//!
//! Retries set rows pending first and lock afterwards, so the settle statements see
//! everything committed in those conversations up to the lock. A retry of many
//! conversations locks them in id order; everything else takes one conversation lock
//! at most, before any delivery row lock it may wait for; so these transactions cannot
//! wait on each other in a cycle. SQLite has one writer connection: each of these
//! transactions runs alone.
//!
//! # Older nodes
//!
//! During a rolling upgrade, nodes of the previous release insert rows unmarked and
//! never promote. [`Store::repair_delivery_heads`], which the delivery engine runs at
//! start and every minute, settles the pairs they leave wrong; it also covers any case
//! missed here, at the old per-claim cost once a minute.

use super::{Store, StoreResult, reader, writer};
use crate::domain::{ChannelId, ConversationId};

/// Takes a conversation's row lock until the end of the transaction (PostgreSQL). The
/// lock of an append's `last_seq` bump: head changes of one conversation are serialised.
pub(super) const LOCK_CONVERSATION: &str =
    "SELECT 1 FROM conversations WHERE id = $1 FOR NO KEY UPDATE";

/// Unmarks the pending rows of a pair that have an earlier pending row.
pub(super) const DEMOTE_LATER: &str = "UPDATE deliveries SET head = FALSE \
     WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending' AND head \
     AND seq > (SELECT MIN(seq) FROM deliveries \
         WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending')";

/// Marks the first pending row of a pair, if it is not marked yet.
pub(super) const PROMOTE_FIRST: &str = "UPDATE deliveries SET head = TRUE WHERE id = (\
     SELECT id FROM deliveries \
     WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending' \
     ORDER BY seq LIMIT 1) AND NOT head";

/// Pairs whose flags break the invariant: a first pending row unmarked, or a later one
/// marked. One pass over the pending rows in `deliveries_order_idx` order.
const BROKEN_PAIRS: &str = "SELECT DISTINCT conversation_id, channel_id FROM (\
     SELECT conversation_id, channel_id, head, \
     ROW_NUMBER() OVER (PARTITION BY conversation_id, channel_id ORDER BY seq) AS n \
     FROM deliveries WHERE status = 'pending') AS pending \
     WHERE (n = 1 AND NOT head) OR (n > 1 AND head)";

/// In a transaction of `$store` (`$tx`), takes the conversation's row lock on
/// PostgreSQL; a no-op on SQLite, whose single writer already serialises.
macro_rules! lock_conversation {
    ($store:expr, $tx:expr, $conversation:expr) => {
        if $store.backend() == $crate::store::Backend::Postgres {
            sqlx::query($crate::store::heads::LOCK_CONVERSATION)
                .bind($conversation)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

/// In transaction `$tx`, which holds the conversation's lock, makes the first pending
/// row of the pair its only head; evaluates to the number of rows changed.
macro_rules! settle_heads {
    ($tx:expr, $conversation:expr, $channel:expr) => {{
        let demoted = sqlx::query($crate::store::heads::DEMOTE_LATER)
            .bind($conversation)
            .bind($channel)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        let promoted = sqlx::query($crate::store::heads::PROMOTE_FIRST)
            .bind($conversation)
            .bind($channel)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        demoted + promoted
    }};
}
pub(super) use {lock_conversation, settle_heads};

impl Store {
    /// Settles every (conversation, channel) whose head flags break the invariant;
    /// returns how many rows it changed, 0 when all was well.
    ///
    /// The search walks every pending row, the cost the flag saves each claim, so it
    /// is for a periodic check, not the hot path. Each broken pair is then settled in
    /// a transaction of its own under its conversation's lock, so a repair never
    /// undoes the work of a concurrent append, completion or retry.
    ///
    /// # Errors
    /// Database failures.
    pub async fn repair_delivery_heads(&self) -> StoreResult<u64> {
        let broken: Vec<(ConversationId, ChannelId)> = reader!(self, |pool| {
            sqlx::query_as(BROKEN_PAIRS).fetch_all(pool).await
        })?;
        let mut changed = 0;
        for (conversation_id, channel_id) in broken {
            changed += writer!(self, |pool| {
                let mut tx = pool.begin().await?;
                lock_conversation!(self, tx, conversation_id);
                let n = settle_heads!(tx, conversation_id, channel_id);
                tx.commit().await?;
                Ok::<u64, sqlx::Error>(n)
            })?;
        }
        Ok(changed)
    }
}
