//! Activity queries, and the one transaction that appends an activity.

use sqlx::{PgPool, SqliteConnection};

use super::{Store, StoreError, StoreResult, reader};
use crate::domain::{
    Activity, ActivityId, ChannelId, Conversation, ConversationId, ConversationStatus, DeliveryId,
    NewActivity, TenantId, Timestamp,
};

const COLUMNS: &str = "id, conversation_id, tenant_id, seq, type, direction, sender, text, \
     attachments, metadata, idempotency_key, inserted_at";

/// Everything `ingest` decided about a new activity.
#[derive(Debug, Clone)]
pub struct ActivityAppend {
    pub tenant_id: TenantId,
    pub conversation_id: ConversationId,
    pub activity: NewActivity,
    /// Channels that get a delivery row, in the same transaction.
    pub targets: Vec<ChannelId>,
    /// The request that created the activity, kept on its deliveries for their logs.
    pub request_id: Option<String>,
}

/// What appending did.
#[derive(Debug, Clone)]
pub enum AppendOutcome {
    /// The activity and its deliveries are committed.
    Created {
        activity: Activity,
        deliveries: Vec<(DeliveryId, ChannelId)>,
    },
    /// An activity with the same idempotency key exists; nothing was written.
    Existing(Activity),
    /// The conversation is missing or not active; nothing was written.
    NotActive,
}

/// A conversation's move to another status, recorded as its next activity (a
/// `conversationUpdate` that `ingest` made).
#[derive(Debug, Clone)]
pub struct StatusChange {
    /// The activity recording the change, and its delivery rows.
    pub append: ActivityAppend,
    pub to: ConversationStatus,
    /// For the idle closer: change only a conversation whose last activity is older
    /// than this, as it stands once locked (an activity may have just arrived).
    pub idle_before: Option<Timestamp>,
}

/// What a status change did.
#[derive(Debug, Clone)]
pub enum StatusOutcome {
    /// The conversation moved; it, its activity and the activity's deliveries are
    /// committed together.
    Changed {
        conversation: Conversation,
        activity: Box<Activity>,
        deliveries: Vec<(DeliveryId, ChannelId)>,
    },
    /// Nothing was written: the conversation is in that status already, or (for the
    /// idle closer) had an activity since. It is as it stands.
    Unchanged(Conversation),
}

const CONVERSATION_COLUMNS: &str = "id, tenant_id, channel_id, external_id, status, metadata, \
     last_seq, inserted_at, updated_at";
// Takes the conversation's row lock as the bump of an append does, so appends and the
// change are ordered by `seq` whichever comes first.
const SET_STATUS: &str = const_format::concatcp!(
    "UPDATE conversations SET status = $3, last_seq = last_seq + 1, updated_at = $4 \
     WHERE tenant_id = $1 AND id = $2 AND status <> $3 AND ($5 IS NULL OR updated_at < $5) \
     RETURNING ",
    CONVERSATION_COLUMNS
);
const GET_CONVERSATION: &str = const_format::concatcp!(
    "SELECT ",
    CONVERSATION_COLUMNS,
    " FROM conversations WHERE tenant_id = $1 AND id = $2"
);

/// Moves `$change`'s conversation to its status on `$conn`, a transaction of either
/// backend, and evaluates to the changed conversation, whose `last_seq` is the `seq` of
/// the activity recording the change; or returns [`StatusOutcome::Unchanged`] early. `?` returns database errors (a
/// reopening that would give the party two active conversations among them) and
/// `NotFound` from the enclosing function.
macro_rules! set_status {
    ($conn:expr, $change:expr, $now:expr) => {{
        let change = $change;
        let changed: Option<Conversation> = sqlx::query_as(SET_STATUS)
            .bind(change.append.tenant_id)
            .bind(change.append.conversation_id)
            .bind(change.to.as_str())
            .bind($now)
            .bind(change.idle_before)
            .fetch_optional(&mut *$conn)
            .await?;
        match changed {
            Some(conversation) => conversation,
            None => {
                let current: Option<Conversation> = sqlx::query_as(GET_CONVERSATION)
                    .bind(change.append.tenant_id)
                    .bind(change.append.conversation_id)
                    .fetch_optional(&mut *$conn)
                    .await?;
                return match current {
                    Some(conversation) => Ok(StatusOutcome::Unchanged(conversation)),
                    None => Err(StoreError::NotFound),
                };
            }
        }
    }};
}

const BUMP: &str = "UPDATE conversations SET last_seq = last_seq + 1, updated_at = $3 \
     WHERE tenant_id = $1 AND id = $2 AND status = 'active' RETURNING last_seq";
const FIND_KEY: &str = const_format::concatcp!(
    "SELECT ",
    COLUMNS,
    " FROM activities WHERE conversation_id = $1 AND idempotency_key = $2"
);
const INSERT: &str = const_format::concatcp!(
    "INSERT INTO activities (id, conversation_id, tenant_id, seq, type, direction, sender, text, \
     attachments, metadata, idempotency_key, inserted_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
    COLUMNS
);
// First in line for its (conversation, channel) iff nothing of the pair is pending, or
// its channel keeps no order. Decided after the bump, which holds the conversation's
// lock that completions take too (see `heads.rs`); on SQLite the one writer orders
// everything. Asked as `MIN(seq) IS NULL` rather than `NOT EXISTS`: a MIN over `seq`
// leads both planners to `deliveries_order_idx` (one index probe), where SQLite answers
// `NOT EXISTS` through `deliveries_channel_status_idx`, walking the channel's pending
// rows of every conversation.
macro_rules! head_of {
    ($conversation:literal, $channel:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM channels WHERE id = ",
            $channel,
            " AND ordering = 'none') OR (SELECT MIN(seq) FROM deliveries WHERE conversation_id = ",
            $conversation,
            " AND channel_id = ",
            $channel,
            " AND status = 'pending') IS NULL)"
        )
    };
}
// Held iff its channel is paused or its breaker open (`health.rs`): a row written while
// it is stays pending, out of the claim, like the channel's others.
macro_rules! held_of {
    ($channel:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM channel_health WHERE channel_id = ",
            $channel,
            " AND (paused OR open_until IS NOT NULL))"
        )
    };
}
const INSERT_DELIVERY: &str = concat!(
    "INSERT INTO deliveries (id, tenant_id, activity_id, channel_id, \
     conversation_id, seq, status, attempts, next_attempt_at, metadata, inserted_at, updated_at, \
     request_id, head, held) \
     VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, '{}', $7, $7, $8, ",
    head_of!("$5", "$4"),
    ", ",
    held_of!("$4"),
    ")"
);

/// Takes the next `seq` of `$append`'s conversation on `$conn`, a connection or
/// transaction of either backend: `Some(seq)`, or `None` when the conversation is
/// missing or not active. `?` returns database errors from the enclosing function.
macro_rules! bump_seq {
    ($conn:expr, $append:expr, $now:expr) => {{
        let bumped: Option<(i64,)> = sqlx::query_as(BUMP)
            .bind($append.tenant_id)
            .bind($append.conversation_id)
            .bind($now)
            .fetch_optional(&mut *$conn)
            .await?;
        bumped.map(|(seq,)| seq)
    }};
}

/// The activity of `$append`'s conversation with idempotency key `$key`, if any, read
/// on `$conn` as [`bump_seq!`] does.
macro_rules! find_by_key {
    ($conn:expr, $append:expr, $key:expr) => {{
        let existing: Option<Activity> = sqlx::query_as(FIND_KEY)
            .bind($append.conversation_id)
            .bind($key)
            .fetch_optional(&mut *$conn)
            .await?;
        existing
    }};
}

/// Binds `$1` to `$12` of an activity insert: a new id, then `$append`'s activity as
/// number `$seq`, created `$now`, in the order of the `activities` columns.
macro_rules! bind_activity {
    ($query:expr, $append:expr, $seq:expr, $now:expr) => {{
        let new = &$append.activity;
        $query
            .bind(ActivityId::new())
            .bind($append.conversation_id)
            .bind($append.tenant_id)
            .bind($seq)
            .bind(new.kind.as_str())
            .bind(new.direction.as_str())
            .bind(&new.sender)
            .bind(new.text.as_deref())
            .bind(sqlx::types::Json(&new.attachments))
            .bind(sqlx::types::Json(&new.metadata))
            .bind(new.idempotency_key.as_deref())
            .bind($now)
    }};
}

/// Inserts `$append`'s activity as number `$seq` and its delivery rows on `$conn`, a
/// transaction of either backend; evaluates to the activity and its deliveries. `?`
/// returns database errors from the enclosing function.
macro_rules! insert_appended {
    ($conn:expr, $append:expr, $seq:expr, $now:expr) => {{
        let (append, seq, now) = ($append, $seq, $now);
        let activity: Activity = bind_activity!(sqlx::query_as(INSERT), append, seq, now)
            .fetch_one(&mut *$conn)
            .await?;
        let mut deliveries = Vec::with_capacity(append.targets.len());
        for &channel_id in &append.targets {
            let id = DeliveryId::new();
            sqlx::query(INSERT_DELIVERY)
                .bind(id)
                .bind(append.tenant_id)
                .bind(activity.id)
                .bind(channel_id)
                .bind(append.conversation_id)
                .bind(seq)
                .bind(now)
                .bind(append.request_id.as_deref())
                .execute(&mut *$conn)
                .await?;
            deliveries.push((id, channel_id));
        }
        (activity, deliveries)
    }};
}

impl Store {
    /// Appends an activity and its delivery rows in one transaction: on SQLite through
    /// the group-committing writer task ([`super::appender`]), on PostgreSQL in a
    /// transaction of its own. Either way the answer comes after the commit.
    ///
    /// Crate-private: `ingest` is the one write path (tests reach it through
    /// `store::test_support`).
    pub(crate) async fn append_activity(
        &self,
        append: &ActivityAppend,
    ) -> StoreResult<AppendOutcome> {
        match self {
            Store::Sqlite { appender, .. } => appender.append(append.clone()).await,
            Store::Postgres(pool, _) => append_postgres(pool, append).await,
        }
    }

    /// Moves a conversation to another status and appends the activity recording it,
    /// with its delivery rows, in one transaction; the answer comes after the commit.
    /// A conversation already in that status (or, with `idle_before`, active since) is
    /// left as it is and nothing is written.
    ///
    /// Crate-private, as [`Store::append_activity`]: `ingest` decides the activity.
    ///
    /// # Errors
    /// `NotFound` for a conversation missing from the tenant; `Conflict` on
    /// `conversations_channel_id_external_id_key` when reopening it would give its
    /// party a second active conversation on the channel.
    pub(crate) async fn change_conversation_status(
        &self,
        change: &StatusChange,
    ) -> StoreResult<StatusOutcome> {
        let outcome = match self {
            Store::Sqlite { writer, .. } => change_status_sqlite(writer, change).await,
            Store::Postgres(pool, _) => change_status_postgres(pool, change).await,
        }?;
        if matches!(outcome, StatusOutcome::Changed { .. }) {
            self.cache().invalidate();
        }
        Ok(outcome)
    }

    /// Activities of a conversation with `seq` greater than `after_seq`, in `seq` order.
    pub async fn list_activities(
        &self,
        tenant_id: TenantId,
        conversation_id: ConversationId,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<Activity>> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM activities \
             WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
        );
        Ok(reader!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(tenant_id)
                .bind(conversation_id)
                .bind(after_seq)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?)
    }

    /// One activity of a tenant.
    pub async fn get_activity(&self, tenant_id: TenantId, id: ActivityId) -> StoreResult<Activity> {
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM activities WHERE tenant_id = $1 AND id = $2"
        );
        self.fetch_scoped(SQL, tenant_id, id).await
    }
}

/// PostgreSQL: one transaction per append. Bumping the conversation's `last_seq`
/// comes first: it takes the conversation's row lock, so concurrent writers of one
/// conversation queue there and get consecutive `seq`s, and an idempotent retry
/// racing its original sees the committed original. Bailing out rolls the bump back,
/// so `seq` stays gap-free.
async fn append_postgres(pool: &PgPool, append: &ActivityAppend) -> StoreResult<AppendOutcome> {
    let now = Timestamp::now();
    if append.activity.idempotency_key.is_none() && append.targets.is_empty() {
        return append_postgres_alone(pool, append, now).await;
    }
    let mut tx = pool.begin().await?;
    let Some(seq) = bump_seq!(tx, append, now) else {
        tx.rollback().await?;
        return Ok(AppendOutcome::NotActive);
    };
    if let Some(key) = &append.activity.idempotency_key
        && let Some(existing) = find_by_key!(tx, append, key)
    {
        tx.rollback().await?;
        return Ok(AppendOutcome::Existing(existing));
    }
    let (activity, deliveries) = insert_postgres(&mut tx, append, seq, now).await?;
    tx.commit().await?;
    Ok(AppendOutcome::Created {
        activity,
        deliveries,
    })
}

/// PostgreSQL: inserts the activity numbered `seq` and its delivery rows in one
/// statement, in the transaction that bumped `seq` (or changed the conversation's
/// status). The head flags are decided in this
/// statement, whose snapshot postdates the conversation's lock (see `heads.rs`).
async fn insert_postgres(
    tx: &mut sqlx::PgConnection,
    append: &ActivityAppend,
    seq: i64,
    now: Timestamp,
) -> StoreResult<(Activity, Vec<(DeliveryId, ChannelId)>)> {
    const INSERT_ALL: &str = const_format::concatcp!(
        "WITH deliveries_inserted AS (\
         INSERT INTO deliveries (id, tenant_id, activity_id, channel_id, conversation_id, seq, \
         status, attempts, next_attempt_at, metadata, inserted_at, updated_at, request_id, head, \
         held) \
         SELECT t.id, $3, $1, t.channel_id, $2, $4, 'pending', 0, $12, '{}', $12, $12, $13, ",
        head_of!("$2", "t.channel_id"),
        ", ",
        held_of!("t.channel_id"),
        " FROM UNNEST($14::uuid[], $15::uuid[]) AS t(id, channel_id)) \
         INSERT INTO activities (id, conversation_id, tenant_id, seq, type, direction, sender, text, \
         attachments, metadata, idempotency_key, inserted_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
        COLUMNS
    );
    let ids: Vec<DeliveryId> = append.targets.iter().map(|_| DeliveryId::new()).collect();
    let activity: Activity = bind_activity!(sqlx::query_as(INSERT_ALL), append, seq, now)
        .bind(append.request_id.as_deref())
        .bind(ids.iter().map(|id| id.0).collect::<Vec<_>>())
        .bind(append.targets.iter().map(|c| c.0).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
    let deliveries = ids
        .into_iter()
        .zip(append.targets.iter().copied())
        .collect();
    Ok((activity, deliveries))
}

/// PostgreSQL, an append without idempotency key or delivery rows (chat on a
/// websocket channel, say): the bump and the insert in one statement, atomic by
/// itself, so one round trip instead of four (`BEGIN`, bump, insert, `COMMIT`). The
/// insert reads `seq` from the bump, which holds the conversation's row lock as in
/// the transaction. Appends with delivery rows keep the transaction: a statement's
/// snapshot predates the lock it waits for, and the head flag of a new delivery row
/// must see what committed before that lock (see `heads.rs`).
async fn append_postgres_alone(
    pool: &PgPool,
    append: &ActivityAppend,
    now: Timestamp,
) -> StoreResult<AppendOutcome> {
    const BUMP_AND_INSERT: &str = const_format::concatcp!(
        "WITH bumped AS (UPDATE conversations SET last_seq = last_seq + 1, updated_at = $3 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'active' RETURNING last_seq) \
         INSERT INTO activities (id, conversation_id, tenant_id, seq, type, direction, sender, \
         text, attachments, metadata, idempotency_key, inserted_at) \
         SELECT $4, $2, $1, last_seq, $5, $6, $7, $8, $9, $10, NULL, $3 FROM bumped RETURNING ",
        COLUMNS
    );
    let new = &append.activity;
    let activity: Option<Activity> = sqlx::query_as(BUMP_AND_INSERT)
        .bind(append.tenant_id)
        .bind(append.conversation_id)
        .bind(now)
        .bind(ActivityId::new())
        .bind(new.kind.as_str())
        .bind(new.direction.as_str())
        .bind(&new.sender)
        .bind(new.text.as_deref())
        .bind(sqlx::types::Json(&new.attachments))
        .bind(sqlx::types::Json(&new.metadata))
        .fetch_optional(pool)
        .await?;
    Ok(match activity {
        Some(activity) => AppendOutcome::Created {
            activity,
            deliveries: Vec::new(),
        },
        // The conversation is not active: the bump matched nothing, nothing was written.
        None => AppendOutcome::NotActive,
    })
}

/// SQLite: a transaction of its own on the one writer connection, between two batches
/// of the appender, which shares that connection.
async fn change_status_sqlite(
    writer: &sqlx::SqlitePool,
    change: &StatusChange,
) -> StoreResult<StatusOutcome> {
    let now = Timestamp::now();
    let mut tx = writer.begin().await?;
    let conn: &mut SqliteConnection = &mut tx;
    let conversation = set_status!(conn, change, now);
    let seq = conversation.last_seq;
    let (activity, deliveries) = insert_appended!(conn, &change.append, seq, now);
    tx.commit().await?;
    Ok(StatusOutcome::Changed {
        conversation,
        activity: Box::new(activity),
        deliveries,
    })
}

/// PostgreSQL: the status change takes the conversation's row lock first, as the bump
/// of an append does; the activity and its deliveries follow in the same transaction.
async fn change_status_postgres(
    pool: &PgPool,
    change: &StatusChange,
) -> StoreResult<StatusOutcome> {
    let now = Timestamp::now();
    let mut tx = pool.begin().await?;
    let conn: &mut sqlx::PgConnection = &mut tx;
    let conversation = set_status!(conn, change, now);
    let seq = conversation.last_seq;
    let (activity, deliveries) = insert_postgres(conn, &change.append, seq, now).await?;
    tx.commit().await?;
    Ok(StatusOutcome::Changed {
        conversation,
        activity: Box::new(activity),
        deliveries,
    })
}

/// SQLite: one append inside the writer task's transaction, which may hold others
/// before and after it. SQLite has one writer, so nothing can come between the
/// idempotency lookup and the insert: the lookup goes first, and an append that ends
/// early has written nothing and needs no rollback (the rest of the batch commits).
/// The outcomes are PostgreSQL's: a conversation that is not active wins over a
/// known key.
pub(super) async fn append_sqlite(
    conn: &mut SqliteConnection,
    append: &ActivityAppend,
) -> StoreResult<AppendOutcome> {
    const ACTIVE: &str =
        "SELECT 1 FROM conversations WHERE tenant_id = $1 AND id = $2 AND status = 'active'";
    let now = Timestamp::now();
    if let Some(key) = &append.activity.idempotency_key
        && let Some(existing) = find_by_key!(conn, append, key)
    {
        let active: Option<(i64,)> = sqlx::query_as(ACTIVE)
            .bind(append.tenant_id)
            .bind(append.conversation_id)
            .fetch_optional(&mut *conn)
            .await?;
        return Ok(match active {
            Some(_) => AppendOutcome::Existing(existing),
            None => AppendOutcome::NotActive,
        });
    }
    let Some(seq) = bump_seq!(conn, append, now) else {
        return Ok(AppendOutcome::NotActive);
    };
    let (activity, deliveries) = insert_appended!(conn, append, seq, now);
    Ok(AppendOutcome::Created {
        activity,
        deliveries,
    })
}
