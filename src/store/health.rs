//! Channel health: pause and resume, the circuit breaker's state and the attempts it
//! is fed, the probe let through when a cool-down ends, and the `held` flag these put
//! on a channel's pending deliveries.
//!
//! # Held deliveries
//!
//! While a channel is paused or its breaker is open, its pending deliveries are
//! `held`: they stay pending with their attempts untouched, and the claim, which walks
//! the unheld heads alone (`deliveries_head_due_idx`), never sees them. So a paused
//! channel's backlog costs claims nothing. The one exception is the half-open probe,
//! released when the cool-down ends ([`Store::release_probes`]).
//!
//! Only heads are ever claimed, so only heads need the flag right: a row takes its
//! channel's flag when it becomes a head (`heads.rs`), and a change of the channel's
//! state sets or clears the flag of its heads alone, one per conversation with pending
//! deliveries (every pending row, on a channel that keeps no order). Each transaction
//! that changes whether a channel is held takes its `channel_health` row lock first,
//! then moves the flags: pause and resume, the outcomes fed to the breaker
//! ([`Store::observe_channels`]) and the probe. A new head (an append, a completion's
//! promotion, an operator's retry) reads its channel's state in its own statement,
//! without that lock; on PostgreSQL one written while a pause or an open commits may
//! therefore get the old value. The claim
//! reads the channel's state with each row it claims and gives back held a row whose
//! channel turned out held ([`Store::hold_claimed`]); the periodic repair
//! ([`Store::repair_held_deliveries`]) releases a row held after its channel resumed.
//! SQLite has one writer: there these transactions run one at a time and never race.
//!
//! Lock order: `channel_health` row, then delivery rows. None of these transactions
//! takes a conversation's lock, so they cannot wait in a cycle with the head-flag
//! transactions (`heads.rs`), which take conversations' locks before delivery rows.

use std::collections::BTreeMap;

use serde_json::json;

use super::ops::record_ops_events;
use super::{Backend, Store, StoreError, StoreResult, reader, writer};
use crate::domain::{
    ChannelHealth, ChannelId, DeliveryId, HealthTransition, NewOpsEvent, Observation, OpsEventType,
    PauseReason, TenantId, Timestamp,
};

/// Whether the channel of the `deliveries` row being written is held now: the value of
/// `held` for a row set pending outside [`Store::observe_channels`] and its kin.
pub(super) const HELD_BY_CHANNEL: &str = "EXISTS (SELECT 1 FROM channel_health h \
     WHERE h.channel_id = deliveries.channel_id AND (h.paused OR h.open_until IS NOT NULL))";

macro_rules! columns {
    () => {
        "channel_id, tenant_id, paused, pause_reason, paused_at, open_until, opens, probe_id, \
         consecutive_failures, failing_since, last_error, last_failure_at, last_success_at, \
         window_start, window_attempts, window_failures, previous_attempts, previous_failures, \
         updated_at"
    };
}

/// A channel without a row yet gets one, healthy.
const INSERT_MISSING: &str = "INSERT INTO channel_health (channel_id, tenant_id, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (channel_id) DO NOTHING";

const SELECT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM channel_health WHERE channel_id = $1"
);
const SELECT_FOR_UPDATE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM channel_health WHERE channel_id = $1 FOR UPDATE"
);

const WRITE: &str = "UPDATE channel_health SET paused = $2, pause_reason = $3, paused_at = $4, \
     open_until = $5, opens = $6, probe_id = $7, consecutive_failures = $8, failing_since = $9, \
     last_error = $10, last_failure_at = $11, last_success_at = $12, window_start = $13, \
     window_attempts = $14, window_failures = $15, previous_attempts = $16, \
     previous_failures = $17, updated_at = $18 WHERE channel_id = $1";

/// Holds every head of a channel but the probe (`$2`, when there is one).
const HOLD: &str = "UPDATE deliveries SET held = TRUE \
     WHERE channel_id = $1 AND status = 'pending' AND head AND NOT held \
     AND ($2 IS NULL OR id <> $2)";

/// Releases every held head of a channel, due at once (`$2`): it waited long enough.
const RELEASE: &str = "UPDATE deliveries SET held = FALSE, \
     next_attempt_at = CASE WHEN next_attempt_at > $2 THEN $2 ELSE next_attempt_at END \
     WHERE channel_id = $1 AND status = 'pending' AND head AND held";

/// A `channel_health` row as stored.
#[derive(sqlx::FromRow)]
struct HealthRow {
    channel_id: ChannelId,
    tenant_id: TenantId,
    paused: bool,
    pause_reason: Option<String>,
    paused_at: Option<Timestamp>,
    open_until: Option<Timestamp>,
    opens: i32,
    probe_id: Option<DeliveryId>,
    consecutive_failures: i32,
    failing_since: Option<Timestamp>,
    last_error: Option<String>,
    last_failure_at: Option<Timestamp>,
    last_success_at: Option<Timestamp>,
    window_start: Option<Timestamp>,
    window_attempts: i32,
    window_failures: i32,
    previous_attempts: i32,
    previous_failures: i32,
    updated_at: Timestamp,
}

impl TryFrom<HealthRow> for ChannelHealth {
    type Error = StoreError;

    fn try_from(row: HealthRow) -> Result<Self, Self::Error> {
        let pause_reason =
            row.pause_reason
                .map(|r| r.parse())
                .transpose()
                .map_err(|e: String| {
                    StoreError::Db(sqlx::Error::ColumnDecode {
                        index: "pause_reason".into(),
                        source: e.into(),
                    })
                })?;
        Ok(ChannelHealth {
            channel_id: row.channel_id,
            tenant_id: row.tenant_id,
            paused: row.paused,
            pause_reason,
            paused_at: row.paused_at,
            open_until: row.open_until,
            opens: row.opens,
            probe_id: row.probe_id,
            consecutive_failures: row.consecutive_failures,
            failing_since: row.failing_since,
            last_error: row.last_error,
            last_failure_at: row.last_failure_at,
            last_success_at: row.last_success_at,
            window_start: row.window_start,
            window_attempts: row.window_attempts,
            window_failures: row.window_failures,
            previous_attempts: row.previous_attempts,
            previous_failures: row.previous_failures,
            updated_at: row.updated_at,
        })
    }
}

/// A channel's health with the names the admin panel shows.
#[derive(Debug, Clone)]
pub struct NamedChannelHealth {
    pub health: ChannelHealth,
    pub channel_name: String,
    pub tenant_name: String,
}

#[derive(sqlx::FromRow)]
struct NamedRow {
    #[sqlx(flatten)]
    row: HealthRow,
    channel_name: String,
    tenant_name: String,
}

/// How many channels are in each health state (`ChannelHealth::state`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounts {
    pub healthy: i64,
    pub degraded: i64,
    pub open: i64,
    pub paused: i64,
}

/// Binds `$1` to `$18` of [`WRITE`] from a [`ChannelHealth`].
macro_rules! bind_health {
    ($query:expr, $h:expr) => {{
        let h: &ChannelHealth = $h;
        $query
            .bind(h.channel_id)
            .bind(h.paused)
            .bind(h.pause_reason.map(|r| r.as_str()))
            .bind(h.paused_at)
            .bind(h.open_until)
            .bind(h.opens)
            .bind(h.probe_id)
            .bind(h.consecutive_failures)
            .bind(h.failing_since)
            .bind(h.last_error.as_deref())
            .bind(h.last_failure_at)
            .bind(h.last_success_at)
            .bind(h.window_start)
            .bind(h.window_attempts)
            .bind(h.window_failures)
            .bind(h.previous_attempts)
            .bind(h.previous_failures)
            .bind(h.updated_at)
    }};
}

/// In transaction `$tx`, which holds the channel's `channel_health` lock, holds or
/// releases its heads (`$hold`: hold all but `$probe`); evaluates to the number of rows
/// changed.
macro_rules! set_held {
    ($tx:expr, $channel:expr, $hold:expr, $probe:expr, $now:expr) => {{
        let query = if $hold {
            sqlx::query(HOLD).bind($channel).bind($probe)
        } else {
            sqlx::query(RELEASE).bind($channel).bind($now)
        };
        query.execute(&mut *$tx).await?.rows_affected()
    }};
}

/// In transaction `$tx` of `$store`, checks that the channel is the tenant's
/// (`NotFound` otherwise), gives it a `channel_health` row if it has none, and takes
/// that row's lock (PostgreSQL).
macro_rules! own_health_row {
    ($store:expr, $tx:expr, $tenant:expr, $channel:expr, $now:expr) => {{
        const OWNED: &str = "SELECT 1 FROM channels WHERE tenant_id = $1 AND id = $2";
        const LOCK: &str = "SELECT 1 FROM channel_health WHERE channel_id = $1 FOR UPDATE";
        let owned = sqlx::query(OWNED)
            .bind($tenant)
            .bind($channel)
            .fetch_optional(&mut *$tx)
            .await?;
        if owned.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query(INSERT_MISSING)
            .bind($channel)
            .bind($tenant)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        if $store.backend() == Backend::Postgres {
            sqlx::query(LOCK).bind($channel).execute(&mut *$tx).await?;
        }
    }};
}

/// A channel's pause and breaker state, for what a pause or a resume reports.
const STATE: &str = "SELECT paused, open_until FROM channel_health WHERE channel_id = $1";

/// The operational event a breaker's transition reports, given the channel's health
/// after it. A probe that fails again reports nothing: the breaker was open already.
fn transition_event(
    health: &ChannelHealth,
    tenant_id: TenantId,
    transition: HealthTransition,
) -> Option<NewOpsEvent> {
    let channel = health.channel_id;
    let (kind, data) = match transition {
        HealthTransition::Opened { until } => (
            OpsEventType::BreakerOpened,
            json!({
                "open_until": until,
                "consecutive_failures": health.consecutive_failures,
                "last_error": health.last_error,
            }),
        ),
        HealthTransition::Reopened { .. } => return None,
        HealthTransition::Closed => (OpsEventType::BreakerClosed, json!({})),
        HealthTransition::Disabled => (
            OpsEventType::ChannelPaused,
            json!({"reason": PauseReason::Failing, "last_error": health.last_error}),
        ),
    };
    Some(NewOpsEvent::channel(tenant_id, channel, kind, data))
}

impl Store {
    /// The health of a tenant's channel: a healthy one when the channel has never been
    /// attempted nor paused. `NotFound` for a channel of another tenant.
    pub async fn get_channel_health(
        &self,
        tenant_id: TenantId,
        id: ChannelId,
    ) -> StoreResult<ChannelHealth> {
        const SQL: &str = "SELECT c.id AS channel_id, c.tenant_id, \
             COALESCE(h.paused, FALSE) AS paused, h.pause_reason, h.paused_at, h.open_until, \
             COALESCE(h.opens, 0) AS opens, h.probe_id, \
             COALESCE(h.consecutive_failures, 0) AS consecutive_failures, h.failing_since, \
             h.last_error, h.last_failure_at, h.last_success_at, h.window_start, \
             COALESCE(h.window_attempts, 0) AS window_attempts, \
             COALESCE(h.window_failures, 0) AS window_failures, \
             COALESCE(h.previous_attempts, 0) AS previous_attempts, \
             COALESCE(h.previous_failures, 0) AS previous_failures, \
             COALESCE(h.updated_at, c.updated_at) AS updated_at \
             FROM channels c LEFT JOIN channel_health h ON h.channel_id = c.id \
             WHERE c.tenant_id = $1 AND c.id = $2";
        let row: HealthRow = self.fetch_scoped(SQL, tenant_id, id).await?;
        row.try_into()
    }

    /// Pauses a tenant's channel: its pending deliveries are held, and so are those
    /// written until it is resumed (one row per conversation moves; every pending row,
    /// on a channel that keeps no order). Pausing a paused channel changes nothing but the
    /// reason, which becomes the operator's. `NotFound` for a channel of another
    /// tenant.
    pub async fn pause_channel(
        &self,
        tenant_id: TenantId,
        id: ChannelId,
        now: Timestamp,
    ) -> StoreResult<ChannelHealth> {
        const PAUSE: &str = concat!(
            "UPDATE channel_health SET paused_at = CASE WHEN paused THEN paused_at ELSE $2 END, \
             paused = TRUE, pause_reason = 'operator', updated_at = $2 WHERE channel_id = $1 \
             RETURNING ",
            columns!()
        );
        let row: HealthRow = writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            own_health_row!(self, tx, tenant_id, id, now);
            let (was_paused, _): (bool, Option<Timestamp>) =
                sqlx::query_as(STATE).bind(id).fetch_one(&mut *tx).await?;
            let row: HealthRow = sqlx::query_as(PAUSE)
                .bind(id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            set_held!(tx, id, true, None::<DeliveryId>, now);
            if !was_paused {
                let reason = json!({"reason": PauseReason::Operator});
                let event =
                    NewOpsEvent::channel(tenant_id, id, OpsEventType::ChannelPaused, reason);
                record_ops_events!(tx, [event], now);
            }
            tx.commit().await?;
            row
        });
        row.try_into()
    }

    /// Resumes a tenant's channel: unpaused, its breaker closed and its failures in a
    /// row forgotten, and every held delivery due at once. Resuming a channel that is
    /// neither paused nor open changes nothing. `NotFound` for a channel of another
    /// tenant.
    pub async fn resume_channel(
        &self,
        tenant_id: TenantId,
        id: ChannelId,
        now: Timestamp,
    ) -> StoreResult<ChannelHealth> {
        const RESUME: &str = concat!(
            "UPDATE channel_health SET paused = FALSE, pause_reason = NULL, paused_at = NULL, \
             open_until = NULL, opens = 0, probe_id = NULL, consecutive_failures = 0, \
             failing_since = NULL, updated_at = $2 WHERE channel_id = $1 RETURNING ",
            columns!()
        );
        let row: HealthRow = writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            own_health_row!(self, tx, tenant_id, id, now);
            let (was_paused, open_until): (bool, Option<Timestamp>) =
                sqlx::query_as(STATE).bind(id).fetch_one(&mut *tx).await?;
            let row: HealthRow = sqlx::query_as(RESUME)
                .bind(id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            set_held!(tx, id, false, None::<DeliveryId>, now);
            if was_paused || open_until.is_some() {
                let from = if was_paused { "paused" } else { "open" };
                let event = NewOpsEvent::channel(
                    tenant_id,
                    id,
                    OpsEventType::ChannelResumed,
                    json!({"from": from}),
                );
                record_ops_events!(tx, [event], now);
            }
            tx.commit().await?;
            row
        });
        row.try_into()
    }

    /// Applies the ends of attempts that reached their receivers to their channels'
    /// health with `rule` (the breaker, `delivery::breaker`), in one transaction;
    /// returns what changed, per channel. A channel whose breaker opens, or that is
    /// disabled, gets its pending deliveries held; one whose breaker closes gets them
    /// released (unless it is paused), due at once.
    ///
    /// Channels are locked in id order, the order every transaction taking several
    /// `channel_health` locks uses.
    pub async fn observe_channels<F>(
        &self,
        observations: &[Observation],
        mut rule: F,
    ) -> StoreResult<Vec<(ChannelId, HealthTransition)>>
    where
        F: FnMut(&mut ChannelHealth, &Observation) -> Option<HealthTransition>,
    {
        let mut by_channel: BTreeMap<ChannelId, Vec<&Observation>> = BTreeMap::new();
        for o in observations {
            by_channel.entry(o.channel_id).or_default().push(o);
        }
        if by_channel.is_empty() {
            return Ok(Vec::new());
        }
        let select = match self.backend() {
            Backend::Postgres => SELECT_FOR_UPDATE,
            Backend::Sqlite => SELECT,
        };
        let now = Timestamp::now();
        let mut transitions = Vec::new();
        writer!(self, |pool| {
            let mut tx = pool.begin().await?;
            for (&channel_id, observed) in &by_channel {
                sqlx::query(INSERT_MISSING)
                    .bind(channel_id)
                    .bind(observed[0].tenant_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let row: HealthRow = sqlx::query_as(select)
                    .bind(channel_id)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut health = ChannelHealth::try_from(row)?;
                let was_held = health.held();
                let mut hold = false;
                let mut events = Vec::new();
                for o in observed {
                    if let Some(t) = rule(&mut health, o) {
                        hold |= !matches!(t, HealthTransition::Closed);
                        events.extend(transition_event(&health, o.tenant_id, t));
                        transitions.push((channel_id, t));
                    }
                }
                record_ops_events!(tx, &events, now);
                bind_health!(sqlx::query(WRITE), &health)
                    .execute(&mut *tx)
                    .await?;
                if health.held() && (hold || !was_held) {
                    set_held!(tx, channel_id, true, None::<DeliveryId>, now);
                } else if was_held && !health.held() {
                    set_held!(tx, channel_id, false, None::<DeliveryId>, now);
                }
            }
            tx.commit().await?;
        });
        Ok(transitions)
    }

    /// Ends the cool-down of a channel's open breaker now, so that the next look for
    /// cooled-down breakers ([`Store::release_probes`], within a poll interval) lets
    /// its probe through: after its config changed or an operator retried one of its
    /// deliveries, the receiver is tried again at once rather than at the end of a
    /// cool-down of up to an hour. Still one probe: its failure reopens the breaker as
    /// any other's. Returns whether the breaker was open and cooling down.
    pub async fn end_cooldown(&self, channel_id: ChannelId, now: Timestamp) -> StoreResult<bool> {
        const SQL: &str = "UPDATE channel_health SET open_until = $2 \
             WHERE channel_id = $1 AND open_until > $2";
        let ended = writer!(self, |pool| {
            sqlx::query(SQL)
                .bind(channel_id)
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(ended > 0)
    }

    /// [`Store::end_cooldown`] after a change that has already committed (`why`, for
    /// the log): a failure is logged, not returned, and the breaker then probes at the
    /// end of its cool-down, as it would have anyway.
    pub async fn probe_soon(&self, channel_id: ChannelId, why: &str) {
        match self.end_cooldown(channel_id, Timestamp::now()).await {
            Ok(true) => tracing::info!(%channel_id, "{why}: the open breaker probes now"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%channel_id, error = %e,
                "{why}, but the open breaker's cool-down could not be ended; it probes when it ends"),
        }
    }

    /// Lets one delivery through on every channel whose breaker's cool-down has ended
    /// and that has no probe on its way (half-open): the first due head not leased,
    /// released and due at once. Each channel is its own transaction, under its
    /// `channel_health` lock, so nodes running this side by side let one probe through,
    /// not one each. Returns how many were let through.
    pub async fn release_probes(&self, now: Timestamp) -> StoreResult<u64> {
        // Half-open channels without a probe, or whose probe left the queue without
        // an outcome the breaker saw (a failure before sending, say).
        const WAITING: &str = "SELECT channel_id FROM channel_health \
             WHERE open_until IS NOT NULL AND open_until <= $1 AND NOT paused \
             AND (probe_id IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p \
                 WHERE p.id = channel_health.probe_id AND p.status = 'pending'))";
        const FIRST: &str = "SELECT id FROM deliveries WHERE channel_id = $1 \
             AND status = 'pending' AND head AND (locked_until IS NULL OR locked_until < $2) \
             ORDER BY next_attempt_at, id LIMIT 1";
        // Again under the lock: another node may have let one through meanwhile.
        const CLAIM_PROBE: &str = "UPDATE channel_health SET probe_id = $2, updated_at = $3 \
             WHERE channel_id = $1 AND open_until IS NOT NULL AND open_until <= $3 AND NOT paused \
             AND (probe_id IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p \
                 WHERE p.id = channel_health.probe_id AND p.status = 'pending'))";
        const RELEASE_PROBE: &str = "UPDATE deliveries SET held = FALSE, \
             next_attempt_at = CASE WHEN next_attempt_at > $2 THEN $2 ELSE next_attempt_at END \
             WHERE id = $1 AND status = 'pending'";
        let waiting: Vec<(ChannelId,)> = reader!(self, |pool| {
            sqlx::query_as(WAITING).bind(now).fetch_all(pool).await
        })?;
        let mut released = 0;
        for (channel_id,) in waiting {
            let first: Option<(DeliveryId,)> = reader!(self, |pool| {
                sqlx::query_as(FIRST)
                    .bind(channel_id)
                    .bind(now)
                    .fetch_optional(pool)
                    .await
            })?;
            let Some((probe,)) = first else { continue };
            released += writer!(self, |pool| {
                let mut tx = pool.begin().await?;
                let claimed = sqlx::query(CLAIM_PROBE)
                    .bind(channel_id)
                    .bind(probe)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let n = if claimed == 1 {
                    sqlx::query(RELEASE_PROBE)
                        .bind(probe)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                } else {
                    0
                };
                tx.commit().await?;
                n
            });
        }
        Ok(released)
    }

    /// Sets the `held` flag of every head whose channel's state says otherwise (see the
    /// module's notes on the races it covers); returns how many rows it changed. Walks
    /// every pending head: for a periodic check, as the head repair is.
    pub async fn repair_held_deliveries(&self) -> StoreResult<u64> {
        const WRONG: &str = "SELECT DISTINCT d.channel_id FROM deliveries d \
             LEFT JOIN channel_health h ON h.channel_id = d.channel_id \
             WHERE d.status = 'pending' AND d.head AND CASE WHEN h.paused OR h.open_until IS NOT NULL \
             THEN NOT d.held AND (h.paused OR h.probe_id IS NULL OR h.probe_id <> d.id) \
             ELSE d.held END";
        let select = match self.backend() {
            Backend::Postgres => SELECT_FOR_UPDATE,
            Backend::Sqlite => SELECT,
        };
        let wrong: Vec<(ChannelId,)> =
            reader!(self, |pool| { sqlx::query_as(WRONG).fetch_all(pool).await })?;
        let mut changed = 0;
        for (channel_id,) in wrong {
            let now = Timestamp::now();
            changed += writer!(self, |pool| {
                let mut tx = pool.begin().await?;
                let row: Option<HealthRow> = sqlx::query_as(select)
                    .bind(channel_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let health = row.map(ChannelHealth::try_from).transpose()?;
                let n = match health {
                    Some(h) if h.held() => {
                        let probe = if h.paused { None } else { h.probe_id };
                        set_held!(tx, channel_id, true, probe, now)
                    }
                    _ => set_held!(tx, channel_id, false, None::<DeliveryId>, now),
                };
                tx.commit().await?;
                n
            });
        }
        Ok(changed)
    }

    /// The channels that are not healthy, over all tenants, paused and open first
    /// (the admin dashboard).
    pub async fn list_unhealthy_channels(
        &self,
        limit: i64,
    ) -> StoreResult<Vec<NamedChannelHealth>> {
        const SQL: &str = "SELECT h.channel_id, h.tenant_id, h.paused, h.pause_reason, \
             h.paused_at, h.open_until, h.opens, h.probe_id, h.consecutive_failures, \
             h.failing_since, h.last_error, h.last_failure_at, h.last_success_at, h.window_start, \
             h.window_attempts, h.window_failures, h.previous_attempts, h.previous_failures, \
             h.updated_at, c.name AS channel_name, t.name AS tenant_name \
             FROM channel_health h JOIN channels c ON c.id = h.channel_id \
             JOIN tenants t ON t.id = h.tenant_id \
             WHERE h.paused OR h.open_until IS NOT NULL OR h.consecutive_failures > 0 \
             ORDER BY h.paused DESC, h.open_until IS NULL, h.consecutive_failures DESC, \
             h.channel_id LIMIT $1";
        let rows: Vec<NamedRow> = reader!(self, |pool| {
            sqlx::query_as(SQL).bind(limit).fetch_all(pool).await
        })?;
        rows.into_iter()
            .map(|r| {
                Ok(NamedChannelHealth {
                    health: r.row.try_into()?,
                    channel_name: r.channel_name,
                    tenant_name: r.tenant_name,
                })
            })
            .collect()
    }

    /// How many channels, over all tenants, are in each health state (operations).
    pub async fn count_channels_by_health(&self) -> StoreResult<HealthCounts> {
        // The rule of `ChannelHealth::state`, worst first; a channel without a row is
        // healthy.
        const STATES: &str = "SELECT \
             COALESCE(SUM(CASE WHEN paused THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN NOT paused AND open_until IS NOT NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN NOT paused AND open_until IS NULL \
                 AND consecutive_failures > 0 THEN 1 ELSE 0 END), 0) \
             FROM channel_health";
        const CHANNELS: &str = "SELECT COUNT(*) FROM channels";
        let ((paused, open, degraded), (channels,)): ((i64, i64, i64), (i64,)) =
            reader!(self, |pool| {
                tokio::try_join!(
                    sqlx::query_as(STATES).fetch_one(pool),
                    sqlx::query_as(CHANNELS).fetch_one(pool),
                )
            })?;
        Ok(HealthCounts {
            healthy: (channels - paused - open - degraded).max(0),
            degraded,
            open,
            paused,
        })
    }
}
