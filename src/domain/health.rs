//! The delivery health of a channel: what its pause, its circuit breaker and its
//! recent attempts say about it. Plain data shared by every node through the store;
//! the rules that move it are `delivery::breaker`.

use std::time::Duration;

use super::{ChannelId, DeliveryId, TenantId, Timestamp, string_enum};

/// Length of one bucket of the recent failure rate: the rate covers the current
/// bucket and the previous one, so between one and two of these.
pub const RATE_WINDOW: Duration = Duration::from_secs(30 * 60);

string_enum! {
    /// A channel's delivery health, worst first when several apply.
    pub enum HealthState {
        /// The latest attempt that reached the receiver succeeded (or none was made).
        Healthy => "healthy",
        /// The latest attempts failed, fewer of them in a row than open the breaker.
        Degraded => "degraded",
        /// The breaker is open: nothing is attempted until its cool-down ends, then
        /// one probe.
        Open => "open",
        /// Paused by an operator, or disabled after failing for too long: nothing is
        /// attempted until it is resumed.
        Paused => "paused",
    }
}

string_enum! {
    /// Where a channel's circuit breaker stands.
    pub enum BreakerState {
        /// Deliveries are attempted.
        Closed => "closed",
        /// Cooling down: nothing is attempted.
        Open => "open",
        /// The cool-down is over: one probe is let through, whose outcome closes or
        /// reopens the breaker.
        HalfOpen => "half_open",
    }
}

string_enum! {
    /// Why a channel is paused.
    pub enum PauseReason {
        /// An operator or the tenant paused it.
        Operator => "operator",
        /// Its attempts failed for longer than the disable limit, without a success.
        Failing => "failing",
    }
}

/// What an attempt's outcome did to a channel's breaker or pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthTransition {
    /// Too many failures in a row: attempts stop until `until`.
    Opened { until: Timestamp },
    /// The probe failed: attempts stop again, for longer.
    Reopened { until: Timestamp },
    /// A success: attempts resume.
    Closed,
    /// Failing without a success for longer than the limit: paused until resumed.
    Disabled,
}

/// How an attempt that reached a channel's receiver ended: it answered, or the
/// connection to it failed. Attempts stopped before sending (a refused destination, a
/// message without a recipient) say nothing about the receiver and are not observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Delivered,
    /// A non-2xx answer, a timeout or a connection failure; the delivery's error.
    Failed(String),
}

/// The end of one attempt, for its channel's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub channel_id: ChannelId,
    pub tenant_id: TenantId,
    pub delivery_id: DeliveryId,
    pub at: Timestamp,
    pub outcome: Observed,
}

/// The delivery health of one channel, as stored (one row per channel that has been
/// attempted or paused).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelHealth {
    pub channel_id: ChannelId,
    pub tenant_id: TenantId,
    /// Nothing of the channel is attempted while set; only a resume clears it.
    pub paused: bool,
    pub pause_reason: Option<PauseReason>,
    pub paused_at: Option<Timestamp>,
    /// Set while the breaker is open: the end of the cool-down.
    pub open_until: Option<Timestamp>,
    /// Opens since the last success; each doubles the cool-down.
    pub opens: i32,
    /// The delivery let through as the half-open probe.
    pub probe_id: Option<DeliveryId>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// When the first of those failures was.
    pub failing_since: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_failure_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    /// Start of the current bucket of the failure rate.
    pub window_start: Option<Timestamp>,
    pub window_attempts: i32,
    pub window_failures: i32,
    /// The bucket before the current one.
    pub previous_attempts: i32,
    pub previous_failures: i32,
    pub updated_at: Timestamp,
}

/// Attempts that reached a channel's receiver recently, and how many failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recent {
    pub attempts: i64,
    pub failures: i64,
    /// Since when they are counted; `None` when none ever were.
    pub since: Option<Timestamp>,
}

impl Recent {
    /// Failures per attempt, `None` without attempts.
    pub fn failure_rate(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (self.attempts > 0).then(|| self.failures as f64 / self.attempts as f64)
    }
}

impl ChannelHealth {
    /// A channel never attempted nor paused: healthy.
    pub fn new(channel_id: ChannelId, tenant_id: TenantId, now: Timestamp) -> Self {
        Self {
            channel_id,
            tenant_id,
            paused: false,
            pause_reason: None,
            paused_at: None,
            open_until: None,
            opens: 0,
            probe_id: None,
            consecutive_failures: 0,
            failing_since: None,
            last_error: None,
            last_failure_at: None,
            last_success_at: None,
            window_start: None,
            window_attempts: 0,
            window_failures: 0,
            previous_attempts: 0,
            previous_failures: 0,
            updated_at: now,
        }
    }

    /// Whether the channel's pending deliveries are held (not attempted): paused, or
    /// the breaker open. The half-open probe is the one exception, per delivery.
    pub fn held(&self) -> bool {
        self.paused || self.open_until.is_some()
    }

    /// The state to show.
    pub fn state(&self) -> HealthState {
        if self.paused {
            HealthState::Paused
        } else if self.open_until.is_some() {
            HealthState::Open
        } else if self.consecutive_failures > 0 {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        }
    }

    /// Where the breaker stands at `now`.
    pub fn breaker(&self, now: Timestamp) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Moves the rate's buckets on to `now`: a bucket older than [`RATE_WINDOW`]
    /// becomes the previous one, and one older than twice that is forgotten.
    pub fn roll_window(&mut self, now: Timestamp) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let next = start.plus(RATE_WINDOW);
        if now < next {
            return;
        }
        if now < next.plus(RATE_WINDOW) {
            self.previous_attempts = self.window_attempts;
            self.previous_failures = self.window_failures;
            self.window_start = Some(next);
        } else {
            self.previous_attempts = 0;
            self.previous_failures = 0;
            self.window_start = Some(now);
        }
        self.window_attempts = 0;
        self.window_failures = 0;
    }

    /// The attempts of the current and the previous bucket as they stand at `now`.
    pub fn recent(&self, now: Timestamp) -> Recent {
        let mut rolled = self.clone();
        rolled.roll_window(now);
        let since = match (self.window_start, rolled.window_start) {
            (None, _) => None,
            (_, Some(start)) if rolled.previous_attempts > 0 => Some(start.minus(RATE_WINDOW)),
            (_, start) => start,
        };
        Recent {
            attempts: i64::from(rolled.window_attempts) + i64::from(rolled.previous_attempts),
            failures: i64::from(rolled.window_failures) + i64::from(rolled.previous_failures),
            since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> (ChannelHealth, Timestamp) {
        let now = Timestamp::now();
        (
            ChannelHealth::new(ChannelId::new(), TenantId::new(), now),
            now,
        )
    }

    #[test]
    fn the_worst_condition_names_the_state() {
        let (mut h, now) = health();
        assert_eq!(h.state(), HealthState::Healthy);
        h.consecutive_failures = 2;
        assert_eq!(h.state(), HealthState::Degraded);
        h.open_until = Some(now.plus(Duration::from_secs(60)));
        assert_eq!(h.state(), HealthState::Open);
        assert!(h.held());
        h.paused = true;
        assert_eq!(h.state(), HealthState::Paused);
    }

    #[test]
    fn the_breaker_is_half_open_once_the_cool_down_ends() {
        let (mut h, now) = health();
        assert_eq!(h.breaker(now), BreakerState::Closed);
        let until = now.plus(Duration::from_secs(60));
        h.open_until = Some(until);
        assert_eq!(h.breaker(now), BreakerState::Open);
        assert_eq!(h.breaker(until), BreakerState::HalfOpen);
    }

    #[test]
    fn the_rate_covers_the_current_and_the_previous_bucket() {
        let (mut h, now) = health();
        assert_eq!(h.recent(now).failure_rate(), None);
        assert_eq!(h.recent(now).since, None);
        h.roll_window(now);
        (h.window_attempts, h.window_failures) = (4, 1);
        assert_eq!(h.recent(now).failure_rate(), Some(0.25));

        // Half an hour on, the bucket is the previous one and still counts.
        let later = now.plus(RATE_WINDOW);
        h.roll_window(later);
        (h.window_attempts, h.window_failures) = (h.window_attempts + 4, 3);
        let recent = h.recent(later);
        assert_eq!((recent.attempts, recent.failures), (8, 4));
        assert_eq!(recent.since, Some(now));

        // Another half hour drops it; an hour of silence drops both.
        let recent = h.recent(later.plus(RATE_WINDOW));
        assert_eq!((recent.attempts, recent.failures), (4, 3));
        let recent = h.recent(later.plus(RATE_WINDOW * 2));
        assert_eq!((recent.attempts, recent.failures), (0, 0));
    }
}
