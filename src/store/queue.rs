//! The delivery queue: claiming due deliveries under a lease and recording outcomes.
//!
//! Used by the delivery workers only. Not tenant-scoped: workers serve every tenant.
//! A claim sets `locked_until`; outcomes are recorded only while that lease is still
//! the row's, so a worker whose lease expired and was taken over cannot overwrite the
//! newer attempt's result. Only the head of each (conversation, channel) is claimed;
//! completing it hands the flag on (`heads.rs`). Every outcome written is logged, in
//! the same transaction, as a row of `delivery_attempts` numbered by the delivery's
//! new `attempts`.

use serde_json::Value;
use sqlx::types::Json;

use super::heads::PROMOTE_FIRST;
use super::health::HELD_BY_CHANNEL;
use super::ops::record_ops_events;
use super::{QueueDepth, Sealer, Store, StoreError, StoreResult, reader, writer};
use crate::domain::{
    Activity, AttemptOutcome, Channel, ChannelId, Conversation, ConversationId, Delivery,
    DeliveryId, NewOpsEvent, NodeId, OpsEventType, Timestamp,
};

/// The columns of a [`Delivery`] the workers read, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, tenant_id, activity_id, channel_id, conversation_id, seq, status, attempts, \
         next_attempt_at, locked_until, last_error, delivered_at, external_id, metadata, \
         inserted_at, updated_at, request_id, budget_start"
    };
}
const COLUMNS: &str = columns!();

/// Due, unleased, not held, and first in line for its (conversation, channel): a later
/// activity is never delivered before an earlier pending one. Being first in line is
/// the `head` flag (see `heads.rs`); a delivery of a paused channel, or of one whose
/// breaker is open, is `held` (see `health.rs`). The claim walks
/// `deliveries_head_due_idx`, which holds the unheld heads alone, and stops after
/// `LIMIT` rows, however many deliveries wait behind the heads or behind a pause.
macro_rules! claimable {
    () => {
        "d.status = 'pending' AND d.head AND NOT d.held AND d.next_attempt_at <= $1 \
         AND (d.locked_until IS NULL OR d.locked_until < $1)"
    };
}

macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET locked_until = $2, locked_by = $4, updated_at = $1 WHERE id IN (\
             SELECT d.id FROM deliveries d WHERE ",
            claimable!(),
            " ORDER BY d.next_attempt_at, d.id LIMIT $3",
            $lock,
            ") RETURNING ",
            columns!()
        )
    };
}

/// The PostgreSQL claim, which also reads what each attempt needs: the activity, the
/// conversation and the channel, joined to the claimed rows in the same statement,
/// and whether the channel is held now (an append that raced its pause or the opening
/// of its breaker can have written a row unheld). The joins are outer, so a row whose
/// activity or channel is gone is still leased and handed over (and fails for good)
/// rather than leased and forgotten.
const CLAIM_WITH_CONTEXT: &str = concat!(
    "WITH claimed AS (",
    claim_sql!(" FOR UPDATE SKIP LOCKED"),
    ") SELECT claimed.*, \
     a.type AS a_type, a.direction AS a_direction, a.sender AS a_sender, a.text AS a_text, \
     a.attachments AS a_attachments, a.metadata AS a_metadata, \
     a.idempotency_key AS a_idempotency_key, a.inserted_at AS a_inserted_at, \
     c.channel_id AS c_channel_id, c.external_id AS c_external_id, c.status AS c_status, \
     c.metadata AS c_metadata, c.last_seq AS c_last_seq, c.inserted_at AS c_inserted_at, \
     c.updated_at AS c_updated_at, \
     ch.name AS ch_name, ch.type AS ch_type, ch.secret AS ch_secret, ch.config AS ch_config, \
     ch.status AS ch_status, ch.inserted_at AS ch_inserted_at, ch.updated_at AS ch_updated_at, \
     COALESCE(h.paused OR (h.open_until IS NOT NULL AND h.probe_id IS DISTINCT FROM claimed.id), \
         FALSE) AS h_held \
     FROM claimed \
     LEFT JOIN activities a ON a.id = claimed.activity_id \
     LEFT JOIN conversations c ON c.id = claimed.conversation_id \
     LEFT JOIN channels ch ON ch.id = claimed.channel_id \
     LEFT JOIN channel_health h ON h.channel_id = claimed.channel_id"
);

/// A claimed delivery, with what its attempt needs when the claim read it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: Delivery,
    /// `None`: not read with the claim (SQLite), or the activity, conversation or
    /// channel no longer exists; [`Store::attempt_context`] tells which.
    pub context: Option<AttemptContext>,
    /// The channel was found held as the row was claimed (PostgreSQL): the row is to be
    /// given back held ([`Store::hold_claimed`]), not attempted. SQLite's one writer
    /// writes every row as its channel is, so there it is always `false`.
    pub held: bool,
}

/// What one attempt reads besides its delivery row.
#[derive(Debug, Clone)]
pub struct AttemptContext {
    pub activity: Activity,
    pub conversation: Conversation,
    pub channel: Channel,
}

/// One row of [`CLAIM_WITH_CONTEXT`]: the delivery and the joined columns, prefixed.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    delivery: Delivery,
    a_type: Option<String>,
    a_direction: Option<String>,
    a_sender: Option<String>,
    a_text: Option<String>,
    a_attachments: Option<Json<Value>>,
    a_metadata: Option<Json<Value>>,
    a_idempotency_key: Option<String>,
    a_inserted_at: Option<Timestamp>,
    c_channel_id: Option<ChannelId>,
    c_external_id: Option<String>,
    c_status: Option<String>,
    c_metadata: Option<Json<Value>>,
    c_last_seq: Option<i64>,
    c_inserted_at: Option<Timestamp>,
    c_updated_at: Option<Timestamp>,
    ch_name: Option<String>,
    ch_type: Option<String>,
    ch_secret: Option<String>,
    ch_config: Option<Json<Value>>,
    ch_status: Option<String>,
    ch_inserted_at: Option<Timestamp>,
    ch_updated_at: Option<Timestamp>,
    h_held: bool,
}

/// A stored enum column that does not parse: the same error a plain read would give.
fn bad_column(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: e.to_string().into(),
    })
}

impl ClaimRow {
    /// The claimed delivery, its channel's credentials opened by `sealer`.
    fn into_claimed(self, sealer: &Sealer) -> StoreResult<ClaimedDelivery> {
        let d = &self.delivery;
        let activity = match (
            self.a_type,
            self.a_direction,
            self.a_sender,
            self.a_inserted_at,
        ) {
            (Some(kind), Some(direction), Some(sender), Some(inserted_at)) => Some(Activity {
                id: d.activity_id,
                conversation_id: d.conversation_id,
                tenant_id: d.tenant_id,
                seq: d.seq,
                kind: kind.try_into().map_err(|e| bad_column("a_type", e))?,
                direction: direction
                    .try_into()
                    .map_err(|e| bad_column("a_direction", e))?,
                sender,
                text: self.a_text,
                attachments: self.a_attachments.map_or(Value::Null, |j| j.0),
                metadata: self.a_metadata.map_or(Value::Null, |j| j.0),
                idempotency_key: self.a_idempotency_key,
                inserted_at,
            }),
            _ => None,
        };
        let conversation = match (
            self.c_channel_id,
            self.c_status,
            self.c_last_seq,
            self.c_inserted_at,
            self.c_updated_at,
        ) {
            (
                Some(channel_id),
                Some(status),
                Some(last_seq),
                Some(inserted_at),
                Some(updated_at),
            ) => Some(Conversation {
                id: d.conversation_id,
                tenant_id: d.tenant_id,
                channel_id,
                external_id: self.c_external_id,
                status: status.try_into().map_err(|e| bad_column("c_status", e))?,
                metadata: self.c_metadata.map_or(Value::Null, |j| j.0),
                last_seq,
                inserted_at,
                updated_at,
            }),
            _ => None,
        };
        let channel = match (
            self.ch_name,
            self.ch_type,
            self.ch_secret,
            self.ch_config,
            self.ch_status,
            self.ch_inserted_at,
            self.ch_updated_at,
        ) {
            (
                Some(name),
                Some(kind),
                Some(secret),
                Some(config),
                Some(status),
                Some(inserted_at),
                Some(updated_at),
            ) => Some(sealer.open(Channel {
                id: d.channel_id,
                tenant_id: d.tenant_id,
                name,
                kind: kind.try_into().map_err(|e| bad_column("ch_type", e))?,
                secret,
                config: config.0,
                status: status.try_into().map_err(|e| bad_column("ch_status", e))?,
                inserted_at,
                updated_at,
            })?),
            _ => None,
        };
        let context = match (activity, conversation, channel) {
            (Some(activity), Some(conversation), Some(channel)) => Some(AttemptContext {
                activity,
                conversation,
                channel,
            }),
            _ => None,
        };
        Ok(ClaimedDelivery {
            delivery: self.delivery,
            context,
            held: self.h_held,
        })
    }
}

/// How a leased delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    Delivered { external_id: Option<String> },
    RetryAt { at: Timestamp, error: String },
    Failed { error: String },
}

impl AttemptResult {
    /// What the attempt log calls this end.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            AttemptResult::Delivered { .. } => AttemptOutcome::Delivered,
            AttemptResult::RetryAt { .. } => AttemptOutcome::Retry,
            AttemptResult::Failed { .. } => AttemptOutcome::Failed,
        }
    }

    /// Why the attempt did not deliver, if it did not.
    pub fn error(&self) -> Option<&str> {
        match self {
            AttemptResult::Delivered { .. } => None,
            AttemptResult::RetryAt { error, .. } | AttemptResult::Failed { error } => Some(error),
        }
    }
}

/// What the attempt log keeps of an attempt besides its outcome and error.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptLog {
    pub started_at: Timestamp,
    pub duration_ms: i64,
    /// The receiver's HTTP status, when it answered.
    pub http_status: Option<i32>,
    /// The start of the receiver's answer, when it answered.
    pub response_body: Option<String>,
    /// The node that made the attempt.
    pub node: String,
}

/// The end of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Completion {
    pub delivery: Delivery,
    /// The lease the attempt was made under: nothing is written if it was lost.
    pub lease: Timestamp,
    pub now: Timestamp,
    pub result: AttemptResult,
    pub log: AttemptLog,
}

impl Completion {
    /// Whether the row leaves the queue (delivered or failed), moving its pair's head.
    fn ends(&self) -> bool {
        !matches!(self.result, AttemptResult::RetryAt { .. })
    }

    /// The `delivery.failed` event of a completion that gives its delivery up, once
    /// recorded as attempt number `attempt`.
    fn failure_event(&self, attempt: i32) -> Option<NewOpsEvent> {
        let AttemptResult::Failed { error } = &self.result else {
            return None;
        };
        let d = &self.delivery;
        Some(NewOpsEvent {
            tenant_id: d.tenant_id,
            kind: OpsEventType::DeliveryFailed,
            channel_id: Some(d.channel_id),
            delivery_id: Some(d.id),
            data: serde_json::json!({
                "delivery_id": d.id,
                "activity_id": d.activity_id,
                "conversation_id": d.conversation_id,
                "channel_id": d.channel_id,
                "attempts": attempt,
                "error": error,
            }),
        })
    }
}

const DELIVERED: &str = "UPDATE deliveries SET status = 'delivered', head = FALSE, \
     attempts = attempts + 1, delivered_at = $3, external_id = COALESCE($4, external_id), \
     last_error = NULL, locked_until = NULL, next_attempt_at = NULL, updated_at = $3 \
     WHERE id = $1 AND locked_until = $2 AND status = 'pending' RETURNING attempts";
const RETRY: &str = "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = $4, \
     last_error = $5, locked_until = NULL, updated_at = $3 \
     WHERE id = $1 AND locked_until = $2 AND status = 'pending' RETURNING attempts";
const FAILED: &str = "UPDATE deliveries SET status = 'failed', head = FALSE, \
     attempts = attempts + 1, last_error = $4, locked_until = NULL, \
     next_attempt_at = NULL, updated_at = $3 \
     WHERE id = $1 AND locked_until = $2 AND status = 'pending' RETURNING attempts";
/// One row of the attempt log (SQLite; PostgreSQL writes a batch's rows in its
/// outcome statement). A number already logged (a retry by a node of an older
/// release restarts `attempts` at 0) keeps its first row: the outcome is recorded
/// all the same.
const LOG_ATTEMPT: &str = "INSERT INTO delivery_attempts (delivery_id, tenant_id, attempt, \
     started_at, duration_ms, outcome, http_status, error, response_body, node) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     ON CONFLICT (delivery_id, attempt) DO NOTHING";

/// SQLite: records one attempt in a transaction of the one writer, which orders it
/// against every append; returns whether the lease held. A delivered or failed row
/// leaves the queue: its flag is cleared and the next pending delivery of its
/// (conversation, channel) becomes the head. A retry keeps the row pending and first
/// in line: no flag moves. The attempt is logged under the row's new `attempts`.
async fn record_sqlite(conn: &mut sqlx::SqliteConnection, c: &Completion) -> StoreResult<bool> {
    let d = &c.delivery;
    let attempt: Option<(i32,)> = match &c.result {
        AttemptResult::RetryAt { at, error } => {
            sqlx::query_as(RETRY)
                .bind(d.id)
                .bind(c.lease)
                .bind(c.now)
                .bind(*at)
                .bind(error.as_str())
                .fetch_optional(&mut *conn)
                .await?
        }
        // `$4` is the external id of a delivered row, the error of a failed one.
        AttemptResult::Delivered { external_id } => {
            sqlx::query_as(DELIVERED)
                .bind(d.id)
                .bind(c.lease)
                .bind(c.now)
                .bind(external_id.as_deref())
                .fetch_optional(&mut *conn)
                .await?
        }
        AttemptResult::Failed { error } => {
            sqlx::query_as(FAILED)
                .bind(d.id)
                .bind(c.lease)
                .bind(c.now)
                .bind(error.as_str())
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    let Some((attempt,)) = attempt else {
        return Ok(false);
    };
    let log = &c.log;
    sqlx::query(LOG_ATTEMPT)
        .bind(d.id)
        .bind(d.tenant_id)
        .bind(attempt)
        .bind(log.started_at)
        .bind(log.duration_ms)
        .bind(c.result.outcome().as_str())
        .bind(log.http_status)
        .bind(c.result.error())
        .bind(log.response_body.as_deref())
        .bind(log.node.as_str())
        .execute(&mut *conn)
        .await?;
    if let Some(event) = c.failure_event(attempt) {
        record_ops_events!(conn, [event], c.now);
    }
    if c.ends() {
        // The pair's other flags are right (the invariant held before), so marking its
        // first pending row is all that is left to do.
        sqlx::query(PROMOTE_FIRST)
            .bind(d.conversation_id)
            .bind(d.channel_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

/// PostgreSQL: a batch of completions in one transaction of five statements.
async fn record_attempts_postgres(
    pool: &sqlx::PgPool,
    batch: &[Completion],
) -> StoreResult<Vec<bool>> {
    // Every outcome in one statement: the row's new state per completion, matched on
    // id and lease, as `record_sqlite`'s statements would write it; and the attempt
    // log's row of each outcome written, numbered by the row's new `attempts` (a
    // number already logged keeps its row, as in `LOG_ATTEMPT`).
    const RECORD: &str = "WITH recorded AS (UPDATE deliveries d SET \
         status = u.status, \
         head = CASE WHEN u.status = 'pending' THEN d.head ELSE FALSE END, \
         attempts = d.attempts + 1, \
         delivered_at = CASE WHEN u.status = 'delivered' THEN u.now ELSE d.delivered_at END, \
         external_id = CASE WHEN u.status = 'delivered' THEN COALESCE(u.external_id, d.external_id) \
             ELSE d.external_id END, \
         last_error = u.error, locked_until = NULL, next_attempt_at = u.next_at, updated_at = u.now \
         FROM UNNEST($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[], \
             $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::text[], \
             $11::int[], $12::text[], $13::text[]) \
             AS u(id, lease, now, status, external_id, error, next_at, started_at, duration_ms, \
             outcome, http_status, response_body, node) \
         WHERE d.id = u.id AND d.locked_until = u.lease AND d.status = 'pending' \
         RETURNING d.id, d.tenant_id, d.attempts, u.started_at, u.duration_ms, u.outcome, \
             u.http_status, u.error, u.response_body, u.node), \
         logged AS (INSERT INTO delivery_attempts (delivery_id, tenant_id, attempt, started_at, \
             duration_ms, outcome, http_status, error, response_body, node) \
             SELECT id, tenant_id, attempts, started_at, duration_ms, outcome, http_status, error, \
             response_body, node FROM recorded ON CONFLICT (delivery_id, attempt) DO NOTHING) \
         SELECT id, attempts FROM recorded";
    // The first pending row of each pair whose head left, marked if it is not yet.
    // A new head takes its channel's `held` flag (`health.rs`).
    const PROMOTE: &str = const_format::concatcp!(
        "UPDATE deliveries SET head = TRUE, held = ",
        HELD_BY_CHANNEL,
        " WHERE id IN (\
         SELECT first.id FROM UNNEST($1::uuid[], $2::uuid[]) AS p(conversation_id, channel_id) \
         CROSS JOIN LATERAL (SELECT id FROM deliveries \
             WHERE conversation_id = p.conversation_id AND channel_id = p.channel_id \
             AND status = 'pending' ORDER BY seq LIMIT 1) AS first) \
         AND NOT head"
    );
    const LOCK: &str = "SELECT 1 FROM conversations WHERE id = ANY($1::uuid[]) \
         ORDER BY id FOR NO KEY UPDATE";

    let n = batch.len();
    let (mut ids, mut leases, mut nows) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut external_ids, mut errors, mut next_ats) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut started, mut durations, mut outcomes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut http_statuses, mut bodies, mut nodes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut locks = Vec::new();
    let mut pairs: Vec<(ConversationId, ChannelId)> = Vec::new();
    for c in batch {
        let d = &c.delivery;
        ids.push(d.id.0);
        leases.push(c.lease.0);
        nows.push(c.now.0);
        let (status, external_id, error, next_at) = match &c.result {
            AttemptResult::Delivered { external_id } => {
                ("delivered", external_id.clone(), None, None)
            }
            AttemptResult::RetryAt { at, error } => {
                ("pending", None, Some(error.clone()), Some(at.0))
            }
            AttemptResult::Failed { error } => ("failed", None, Some(error.clone()), None),
        };
        statuses.push(status);
        external_ids.push(external_id);
        errors.push(error);
        next_ats.push(next_at);
        started.push(c.log.started_at.0);
        durations.push(c.log.duration_ms);
        outcomes.push(c.result.outcome().as_str());
        http_statuses.push(c.log.http_status);
        bodies.push(c.log.response_body.as_deref());
        nodes.push(c.log.node.as_str());
        if c.ends() {
            locks.push(d.conversation_id.0);
            pairs.push((d.conversation_id, d.channel_id));
        }
    }
    locks.sort_unstable();
    locks.dedup();
    pairs.sort_unstable_by_key(|(conversation, channel)| (conversation.0, channel.0));
    pairs.dedup();

    let mut tx = pool.begin().await?;
    if !locks.is_empty() {
        // First, before any delivery row: the lock order of every head change.
        sqlx::query(LOCK).bind(&locks).execute(&mut *tx).await?;
    }
    let written: Vec<(DeliveryId, i32)> = sqlx::query_as(RECORD)
        .bind(&ids)
        .bind(&leases)
        .bind(&nows)
        .bind(&statuses)
        .bind(&external_ids)
        .bind(&errors)
        .bind(&next_ats)
        .bind(&started)
        .bind(&durations)
        .bind(&outcomes)
        .bind(&http_statuses)
        .bind(&bodies)
        .bind(&nodes)
        .fetch_all(&mut *tx)
        .await?;
    if !pairs.is_empty() {
        let (conversations, channels): (Vec<_>, Vec<_>) = pairs
            .iter()
            .map(|(conversation, channel)| (conversation.0, channel.0))
            .unzip();
        sqlx::query(PROMOTE)
            .bind(&conversations)
            .bind(&channels)
            .execute(&mut *tx)
            .await?;
    }
    let written: std::collections::HashMap<_, _> = written.into_iter().collect();
    // Each delivery given up for good is reported, in this transaction.
    for c in batch {
        if let Some(event) = written
            .get(&c.delivery.id)
            .and_then(|&n| c.failure_event(n))
        {
            record_ops_events!(tx, [event], c.now);
        }
    }
    tx.commit().await?;
    Ok(batch
        .iter()
        .map(|c| written.contains_key(&c.delivery.id))
        .collect())
}

impl Store {
    /// Leases up to `limit` due deliveries to `node` until `lease_until`, in due order, each
    /// with the activity, conversation and channel its attempt needs where the claim
    /// could read them at no extra cost ([`Store::attempt_context`] reads the rest).
    ///
    /// PostgreSQL reads them in the claim's statement, and skips rows another node is
    /// claiming right now rather than waiting for them. SQLite has one writer, so
    /// claims never overlap; it leaves the reading to the attempts, which run it on
    /// its local readers side by side instead of on the writer's turn.
    pub async fn claim_due(
        &self,
        node: NodeId,
        now: Timestamp,
        lease_until: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        const SQLITE: &str = claim_sql!("");
        let mut claimed = match self {
            Store::Sqlite { writer, .. } => {
                let deliveries: Vec<Delivery> = sqlx::query_as(SQLITE)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .bind(node)
                    .fetch_all(writer)
                    .await?;
                deliveries
                    .into_iter()
                    .map(|delivery| ClaimedDelivery {
                        delivery,
                        context: None,
                        held: false,
                    })
                    .collect()
            }
            Store::Postgres(pool, shared) => {
                let rows: Vec<ClaimRow> = sqlx::query_as(CLAIM_WITH_CONTEXT)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .bind(node)
                    .fetch_all(pool)
                    .await?;
                // The channel's credentials are sealed at rest, as on every read.
                rows.into_iter()
                    .map(|row| row.into_claimed(&shared.sealer))
                    .collect::<StoreResult<Vec<_>>>()?
            }
        };
        claimed.sort_by_key(|c| (c.delivery.next_attempt_at, c.delivery.id));
        Ok(claimed)
    }

    /// The activity, conversation and channel of a delivery, or `None` when one of
    /// them no longer exists.
    pub async fn attempt_context(
        &self,
        delivery: &Delivery,
    ) -> StoreResult<Option<AttemptContext>> {
        let tenant = delivery.tenant_id;
        let loaded = tokio::try_join!(
            self.get_activity(tenant, delivery.activity_id),
            self.get_conversation(tenant, delivery.conversation_id),
            self.get_channel(tenant, delivery.channel_id),
        );
        match loaded {
            Ok((activity, conversation, channel)) => Ok(Some(AttemptContext {
                activity,
                conversation,
                channel,
            })),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// When the next delivery becomes claimable (due, or its lease expires), if any
    /// is pending. Only heads can become claimable, so only heads are read.
    pub async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>> {
        // The inner ORDER BY is that of `deliveries_head_due_idx`: without statistics
        // (SQLite is never analyzed) the planner would otherwise walk every pending row
        // through `deliveries_due_idx` and test each for `head`.
        const SQL: &str = "SELECT MIN(at) FROM (SELECT CASE WHEN locked_until IS NOT NULL \
             AND locked_until > next_attempt_at THEN locked_until ELSE next_attempt_at END AS at \
             FROM deliveries WHERE status = 'pending' AND head AND NOT held \
             ORDER BY next_attempt_at, id) AS heads";
        let row: (Option<Timestamp>,) =
            reader!(self, |pool| sqlx::query_as(SQL).fetch_one(pool).await)?;
        Ok(row.0)
    }

    /// Records the ends of many attempts at once; for each, in order, whether its
    /// lease still held and the outcome was written (`false`: another worker took the
    /// row over, and nothing of it was written).
    ///
    /// A delivered or failed row leaves the queue: in the same transaction its flag is
    /// cleared and the next pending delivery of its (conversation, channel) becomes the
    /// head, under the conversation's lock (see `heads.rs` for the race this closes).
    /// A retry keeps the row pending and first in line: no flag moves.
    ///
    /// Each outcome written is logged as a row of `delivery_attempts`, numbered by the
    /// row's new `attempts`, in the same transaction; an outcome not written (lease
    /// lost) logs nothing.
    ///
    /// One transaction for the whole batch. On PostgreSQL it takes the locks of the
    /// conversations whose heads move (in id order, the order every multi-conversation
    /// transaction uses), writes every outcome and its log row in one statement and
    /// hands the head flags on in another: five round trips however large the batch.
    /// SQLite runs the statements of each completion in one transaction on its writer:
    /// one commit, one fsync.
    pub async fn record_attempts(&self, batch: &[Completion]) -> StoreResult<Vec<bool>> {
        match self {
            Store::Postgres(pool, _) => record_attempts_postgres(pool, batch).await,
            Store::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await?;
                let mut recorded = Vec::with_capacity(batch.len());
                for c in batch {
                    recorded.push(record_sqlite(&mut tx, c).await?);
                }
                tx.commit().await?;
                Ok(recorded)
            }
        }
    }

    /// Gives back every lease at once; returns how many there were. For a node that
    /// is the only one on its database (SQLite) and has just started: whatever is
    /// leased was leased by its own previous run, which died before recording it, and
    /// waiting for those leases to expire would hold up their conversations.
    pub async fn release_all_leases(&self) -> StoreResult<u64> {
        Ok(writer!(self, |pool| {
            sqlx::query(
                "UPDATE deliveries SET locked_until = NULL \
                 WHERE status = 'pending' AND locked_until IS NOT NULL",
            )
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?)
    }

    /// Gives back the lease of a row claimed while its channel was held, and holds it
    /// with the channel's others; returns whether the lease was still this one.
    pub async fn hold_claimed(&self, id: DeliveryId, lease: Timestamp) -> StoreResult<bool> {
        let rows = writer!(self, |pool| {
            sqlx::query(
                "UPDATE deliveries SET held = TRUE, locked_until = NULL \
                 WHERE id = $1 AND locked_until = $2 AND status = 'pending'",
            )
            .bind(id)
            .bind(lease)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(rows == 1)
    }

    /// Gives a lease back without an attempt, the delivery due again at `due` (its
    /// channel's rate limit held it back). Nothing happens if the lease was lost.
    pub async fn defer_delivery(
        &self,
        id: DeliveryId,
        lease: Timestamp,
        due: Timestamp,
    ) -> StoreResult<()> {
        writer!(self, |pool| {
            sqlx::query(
                "UPDATE deliveries SET locked_until = NULL, next_attempt_at = $3 \
                 WHERE id = $1 AND locked_until = $2 AND status = 'pending'",
            )
            .bind(id)
            .bind(lease)
            .bind(due)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Gives a lease back without an attempt (shutdown), so another node may take the
    /// delivery at once.
    pub async fn release_delivery(&self, id: DeliveryId, lease: Timestamp) -> StoreResult<()> {
        writer!(self, |pool| {
            sqlx::query(
                "UPDATE deliveries SET locked_until = NULL WHERE id = $1 AND locked_until = $2",
            )
            .bind(id)
            .bind(lease)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// How many deliveries each status holds, over all tenants (operations).
    pub async fn count_deliveries_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        const SQL: &str = "SELECT status, COUNT(*) FROM deliveries GROUP BY status ORDER BY status";
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await)?)
    }

    /// The queue's depth at `now`. Both counts walk partial indexes of pending and
    /// failed rows only, so their cost follows the backlog, not the table.
    pub async fn queue_depth(&self, now: Timestamp) -> StoreResult<QueueDepth> {
        // Held: of a channel that is held now, whether or not the row's flag says so
        // (only heads carry it, see `health.rs`).
        const PENDING: &str = "SELECT \
             COALESCE(SUM(CASE WHEN h.channel_id IS NOT NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN h.channel_id IS NULL AND d.next_attempt_at <= $1 \
                 THEN 1 ELSE 0 END), 0), \
             COUNT(*) FROM deliveries d LEFT JOIN channel_health h ON h.channel_id = d.channel_id \
                 AND (h.paused OR h.open_until IS NOT NULL) \
             WHERE d.status = 'pending'";
        const FAILED: &str = "SELECT COUNT(*) FROM deliveries WHERE status = 'failed'";
        let ((held, due, pending), (failed,)): ((i64, i64, i64), (i64,)) = reader!(self, |pool| {
            tokio::try_join!(
                sqlx::query_as(PENDING).bind(now).fetch_one(pool),
                sqlx::query_as(FAILED).fetch_one(pool),
            )
        })?;
        Ok(QueueDepth {
            pending_due: due,
            pending_scheduled: pending - due - held,
            pending_held: held,
            failed,
        })
    }

    /// A delivery by id, unscoped (workers and tests).
    pub async fn get_delivery_unscoped(&self, id: DeliveryId) -> StoreResult<Delivery> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM deliveries WHERE id = $1");
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .bind(id)
            .fetch_one(pool)
            .await)?)
    }
}
