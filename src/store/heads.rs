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
//! with the smallest `seq` has `head`; on a channel whose `ordering` is `none`, every
//! pending row has it. Every transaction that adds a pending row or ends one keeps it:
//! - an append (`activities.rs`) marks a new row iff its pair has no pending row;
//! - a completion, delivered or failed (`queue.rs`), clears the row's flag and marks
//!   the pair's first pending row;
//! - an operator's retry (`deliveries.rs`, `admin.rs`) sets rows pending unmarked and
//!   then settles the pairs it touched ([`settle_heads!`]);
//! - changing a channel's `ordering` (`channels.rs`) marks all of its pending rows, or
//!   unmarks all but the first of each conversation, under the locks of the
//!   conversations with pending rows ([`reorder_channel!`]).
//!
//! A retry scheduled by the worker keeps the row pending and first: nothing moves. The
//! flag of a delivered or failed row means nothing; it is cleared on the way out only
//! so that the table reads plainly. A row that becomes a head also takes its channel's
//! `held` flag (`health.rs`), which only heads need right.
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
//! An append reads its channel's `ordering` in its insert, without the channel's lock:
//! one racing a change of the setting can mark a row by the old setting, which the
//! repair below settles. During a rolling upgrade, nodes of the previous release insert
//! rows unmarked and never promote. [`Store::repair_delivery_heads`], which the delivery engine runs at
//! start and every minute, settles the pairs they leave wrong; it also covers any case
//! missed here, at the old per-claim cost once a minute.

use const_format::concatcp;

use super::health::HELD_BY_CHANNEL;
use super::{Store, StoreResult, reader, writer};
use crate::domain::{ChannelId, ConversationId};

/// Takes a conversation's row lock until the end of the transaction (PostgreSQL). The
/// lock of an append's `last_seq` bump: head changes of one conversation are serialised.
pub(super) const LOCK_CONVERSATION: &str =
    "SELECT 1 FROM conversations WHERE id = $1 FOR NO KEY UPDATE";

/// Unmarks the pending rows of a pair that have an earlier pending row, when the
/// channel keeps conversation order.
pub(super) const DEMOTE_LATER: &str = "UPDATE deliveries SET head = FALSE \
     WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending' AND head \
     AND seq > (SELECT MIN(seq) FROM deliveries \
         WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending') \
     AND EXISTS (SELECT 1 FROM channels WHERE id = $2 AND ordering = 'conversation')";

/// Marks every pending row of a pair, when the channel keeps no order.
pub(super) const PROMOTE_UNORDERED: &str = concatcp!(
    "UPDATE deliveries SET head = TRUE, held = ",
    HELD_BY_CHANNEL,
    " WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending' AND NOT head \
     AND EXISTS (SELECT 1 FROM channels WHERE id = $2 AND ordering = 'none')"
);

/// The locks of every conversation with a pending delivery to a channel, in id order
/// (PostgreSQL): taken before a change of the channel's `ordering` moves their flags.
pub(super) const LOCK_CONVERSATIONS_OF_CHANNEL: &str = "SELECT 1 FROM conversations \
     WHERE id IN (SELECT conversation_id FROM deliveries WHERE channel_id = $1 AND status = 'pending') \
     ORDER BY id FOR NO KEY UPDATE";

/// Marks every pending row of a channel: its `ordering` is now `none`.
pub(super) const MARK_ALL_OF_CHANNEL: &str = concatcp!(
    "UPDATE deliveries SET head = TRUE, held = ",
    HELD_BY_CHANNEL,
    " WHERE channel_id = $1 AND status = 'pending' AND NOT head"
);

/// Unmarks every pending row of a channel that has an earlier pending row of its
/// conversation: its `ordering` is now `conversation`.
pub(super) const DEMOTE_LATER_OF_CHANNEL: &str = "UPDATE deliveries SET head = FALSE \
     WHERE channel_id = $1 AND status = 'pending' AND head AND seq > (\
     SELECT MIN(e.seq) FROM deliveries e WHERE e.conversation_id = deliveries.conversation_id \
     AND e.channel_id = $1 AND e.status = 'pending')";

/// Marks the first pending row of each conversation of a channel, if it is not yet.
pub(super) const PROMOTE_FIRST_OF_CHANNEL: &str = concatcp!(
    "UPDATE deliveries SET head = TRUE, held = ",
    HELD_BY_CHANNEL,
    " WHERE channel_id = $1 AND status = 'pending' AND NOT head AND seq = (\
     SELECT MIN(e.seq) FROM deliveries e WHERE e.conversation_id = deliveries.conversation_id \
     AND e.channel_id = $1 AND e.status = 'pending')"
);

/// Marks the first pending row of a pair, if it is not marked yet.
pub(super) const PROMOTE_FIRST: &str = concatcp!(
    "UPDATE deliveries SET head = TRUE, held = ",
    HELD_BY_CHANNEL,
    " WHERE id = (SELECT id FROM deliveries \
     WHERE conversation_id = $1 AND channel_id = $2 AND status = 'pending' \
     ORDER BY seq LIMIT 1) AND NOT head"
);

/// Pairs whose flags break the invariant: a first pending row unmarked, or a later one
/// marked when its channel keeps conversation order, unmarked when it keeps none. One
/// pass over the pending rows in `deliveries_order_idx` order.
const BROKEN_PAIRS: &str = "SELECT DISTINCT conversation_id, channel_id FROM (\
     SELECT d.conversation_id, d.channel_id, d.head, ch.ordering, \
     ROW_NUMBER() OVER (PARTITION BY d.conversation_id, d.channel_id ORDER BY d.seq) AS n \
     FROM deliveries d JOIN channels ch ON ch.id = d.channel_id \
     WHERE d.status = 'pending') AS pending \
     WHERE (NOT head AND (n = 1 OR ordering = 'none')) \
     OR (head AND n > 1 AND ordering = 'conversation')";

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
/// row of the pair its only head (every pending row, on a channel that keeps no
/// order); evaluates to the number of rows changed.
macro_rules! settle_heads {
    ($tx:expr, $conversation:expr, $channel:expr) => {{
        let mut changed = 0;
        for sql in [
            $crate::store::heads::DEMOTE_LATER,
            $crate::store::heads::PROMOTE_FIRST,
            $crate::store::heads::PROMOTE_UNORDERED,
        ] {
            changed += sqlx::query(sql)
                .bind($conversation)
                .bind($channel)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
        }
        changed
    }};
}

/// In transaction `$tx` of `$store`, which has just changed the channel's `ordering`
/// to `$ordering`, moves the head flags of its pending rows to match, under the
/// conversations' locks (PostgreSQL); evaluates to the number of rows changed.
macro_rules! reorder_channel {
    ($store:expr, $tx:expr, $channel:expr, $ordering:expr) => {{
        if $store.backend() == $crate::store::Backend::Postgres {
            sqlx::query($crate::store::heads::LOCK_CONVERSATIONS_OF_CHANNEL)
                .bind($channel)
                .execute(&mut *$tx)
                .await?;
        }
        let statements: &[&'static str] = match $ordering {
            $crate::domain::DeliveryOrdering::None => &[$crate::store::heads::MARK_ALL_OF_CHANNEL],
            $crate::domain::DeliveryOrdering::Conversation => &[
                $crate::store::heads::DEMOTE_LATER_OF_CHANNEL,
                $crate::store::heads::PROMOTE_FIRST_OF_CHANNEL,
            ],
        };
        let mut changed = 0;
        for &sql in statements {
            changed += sqlx::query(sql)
                .bind($channel)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
        }
        changed
    }};
}
pub(super) use {lock_conversation, reorder_channel, settle_heads};

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
