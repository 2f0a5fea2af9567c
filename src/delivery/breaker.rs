//! The circuit breaker of a channel and its disable limit, pure.
//!
//! Only attempts that reached the receiver are observed (see [`Observed`]). After
//! `failures` of them failed in a row the breaker opens: the channel's deliveries are
//! held, pending and with their attempts untouched, for a cool-down that doubles with
//! each open since the last success (up to a cap). When it ends, one delivery is let
//! through as a probe (half-open): its success closes the breaker, its failure opens it
//! again. A success from any attempt closes it. A channel that has failed without a
//! single success for `disable_after` is paused, for an operator to resume.
//!
//! The state lives in the database (`store/health.rs`), which applies these rules
//! under the channel's row lock, so every node sees one breaker per channel.

use std::time::Duration;

use crate::config::Config;
use crate::domain::{ChannelHealth, HealthTransition, Observation, Observed, PauseReason};

/// Settings of every channel's breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// Failed attempts in a row that open the breaker.
    pub failures: u32,
    /// The first cool-down; each further open without a success doubles it.
    pub cooldown: Duration,
    /// The longest cool-down.
    pub max_cooldown: Duration,
    /// Failing this long without a success pauses the channel; `None`: never.
    pub disable_after: Option<Duration>,
}

impl Default for BreakerSettings {
    /// The settings of the default config.
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl BreakerSettings {
    /// The settings `config` asks for (`CONVERGER_BREAKER_*`).
    pub fn from_config(config: &Config) -> Self {
        Self {
            failures: config.breaker_failures,
            cooldown: Duration::from_secs(config.breaker_cooldown_secs),
            max_cooldown: Duration::from_secs(config.breaker_max_cooldown_secs),
            disable_after: (config.breaker_disable_after_secs > 0)
                .then(|| Duration::from_secs(config.breaker_disable_after_secs)),
        }
    }

    /// The cool-down of the `opens`-th open since the last success (1-based).
    pub fn cooldown(&self, opens: i32) -> Duration {
        let doublings = u32::try_from(opens.max(1) - 1).unwrap_or(0).min(31);
        self.cooldown
            .saturating_mul(1u32 << doublings)
            .min(self.max_cooldown.max(self.cooldown))
    }
}

/// Applies one observed attempt to its channel's health; returns what it did to the
/// breaker or the pause, if anything.
pub fn observe(
    health: &mut ChannelHealth,
    observed: &Observation,
    settings: &BreakerSettings,
) -> Option<HealthTransition> {
    let at = observed.at;
    health.roll_window(at);
    health.window_attempts = health.window_attempts.saturating_add(1);
    health.updated_at = health.updated_at.max(at);
    let error = match &observed.outcome {
        Observed::Delivered => {
            health.consecutive_failures = 0;
            health.failing_since = None;
            health.last_success_at = Some(at);
            health.opens = 0;
            health.probe_id = None;
            return health.open_until.take().map(|_| HealthTransition::Closed);
        }
        Observed::Failed(error) => error,
    };
    health.window_failures = health.window_failures.saturating_add(1);
    health.consecutive_failures = health.consecutive_failures.saturating_add(1);
    let failing_since = *health.failing_since.get_or_insert(at);
    health.last_error = Some(error.clone());
    health.last_failure_at = Some(at);
    if health.paused {
        // An attempt that began before the pause: counted, nothing more.
        return None;
    }
    if settings
        .disable_after
        .is_some_and(|limit| failing_since.plus(limit) <= at)
    {
        health.paused = true;
        health.pause_reason = Some(PauseReason::Failing);
        health.paused_at = Some(at);
        health.open_until = None;
        health.probe_id = None;
        return Some(HealthTransition::Disabled);
    }
    let reopen = match health.open_until {
        // The probe failed.
        Some(_) if health.probe_id == Some(observed.delivery_id) => true,
        // An attempt that began before the breaker opened.
        Some(_) => return None,
        None => {
            let failures = u32::try_from(health.consecutive_failures).unwrap_or(0);
            if failures < settings.failures.max(1) {
                return None;
            }
            false
        }
    };
    health.opens = health.opens.saturating_add(1);
    let until = at.plus(settings.cooldown(health.opens));
    health.open_until = Some(until);
    health.probe_id = None;
    Some(if reopen {
        HealthTransition::Reopened { until }
    } else {
        HealthTransition::Opened { until }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChannelId, DeliveryId, HealthState, TenantId, Timestamp};

    const SECOND: Duration = Duration::from_secs(1);

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            cooldown: 10 * SECOND,
            max_cooldown: 25 * SECOND,
            disable_after: Some(1000 * SECOND),
        }
    }

    struct Channel {
        health: ChannelHealth,
        now: Timestamp,
    }

    impl Channel {
        fn new() -> Self {
            let now = Timestamp::now();
            Self {
                health: ChannelHealth::new(ChannelId::new(), TenantId::new(), now),
                now,
            }
        }

        fn after(&mut self, wait: Duration) -> &mut Self {
            self.now = self.now.plus(wait);
            self
        }

        fn attempt(&mut self, delivery: DeliveryId, ok: bool) -> Option<HealthTransition> {
            let observed = Observation {
                channel_id: self.health.channel_id,
                tenant_id: self.health.tenant_id,
                delivery_id: delivery,
                at: self.now,
                outcome: if ok {
                    Observed::Delivered
                } else {
                    Observed::Failed("HTTP 503".into())
                },
            };
            observe(&mut self.health, &observed, &settings())
        }

        fn fail(&mut self) -> Option<HealthTransition> {
            self.attempt(DeliveryId::new(), false)
        }
    }

    #[test]
    fn opens_after_the_failures_in_a_row_and_not_before() {
        let mut ch = Channel::new();
        assert_eq!(ch.fail(), None);
        assert_eq!(ch.health.state(), HealthState::Degraded);
        assert_eq!(ch.fail(), None);
        let until = ch.now.plus(10 * SECOND);
        assert_eq!(ch.fail(), Some(HealthTransition::Opened { until }));
        assert_eq!(ch.health.state(), HealthState::Open);
        assert_eq!(ch.health.consecutive_failures, 3);
        assert_eq!(ch.health.last_error.as_deref(), Some("HTTP 503"));
        let recent = ch.health.recent(ch.now);
        assert_eq!((recent.attempts, recent.failures), (3, 3));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut ch = Channel::new();
        ch.fail();
        ch.fail();
        assert_eq!(ch.attempt(DeliveryId::new(), true), None);
        assert_eq!(ch.health.state(), HealthState::Healthy);
        assert_eq!(ch.health.failing_since, None);
        assert_eq!(ch.fail(), None);
        assert_eq!(ch.fail(), None);
        assert!(ch.fail().is_some());
    }

    #[test]
    fn the_probe_reopens_for_longer_or_closes() {
        let mut ch = Channel::new();
        for _ in 0..3 {
            ch.fail();
        }
        // A late answer of an attempt begun before the open changes nothing.
        assert_eq!(ch.fail(), None);
        let probe = DeliveryId::new();
        ch.after(10 * SECOND).health.probe_id = Some(probe);
        let until = ch.now.plus(20 * SECOND);
        assert_eq!(
            ch.attempt(probe, false),
            Some(HealthTransition::Reopened { until })
        );
        assert_eq!(ch.health.probe_id, None);
        // Doubling stops at the cap.
        ch.after(20 * SECOND).health.probe_id = Some(probe);
        let until = ch.now.plus(25 * SECOND);
        assert_eq!(
            ch.attempt(probe, false),
            Some(HealthTransition::Reopened { until })
        );
        ch.after(25 * SECOND).health.probe_id = Some(probe);
        assert_eq!(ch.attempt(probe, true), Some(HealthTransition::Closed));
        assert_eq!(ch.health.state(), HealthState::Healthy);
        assert_eq!((ch.health.opens, ch.health.open_until), (0, None));
        // The next open starts from the first cool-down again.
        for _ in 0..2 {
            ch.fail();
        }
        let until = ch.now.plus(10 * SECOND);
        assert_eq!(ch.fail(), Some(HealthTransition::Opened { until }));
    }

    #[test]
    fn failing_too_long_pauses_the_channel() {
        let mut ch = Channel::new();
        for _ in 0..3 {
            ch.fail();
        }
        let probe = DeliveryId::new();
        ch.after(999 * SECOND).health.probe_id = Some(probe);
        assert!(matches!(
            ch.attempt(probe, false),
            Some(HealthTransition::Reopened { .. })
        ));
        ch.after(SECOND).health.probe_id = Some(probe);
        assert_eq!(ch.attempt(probe, false), Some(HealthTransition::Disabled));
        assert_eq!(ch.health.state(), HealthState::Paused);
        assert_eq!(ch.health.pause_reason, Some(PauseReason::Failing));
        assert_eq!(ch.health.open_until, None);
        // Paused, failures are counted and change nothing else.
        assert_eq!(ch.fail(), None);
        assert_eq!(ch.health.consecutive_failures, 6);
    }

    #[test]
    fn without_a_limit_a_channel_is_never_disabled() {
        let mut ch = Channel::new();
        let never = BreakerSettings {
            disable_after: None,
            ..settings()
        };
        let observed = |ch: &Channel| Observation {
            channel_id: ch.health.channel_id,
            tenant_id: ch.health.tenant_id,
            delivery_id: DeliveryId::new(),
            at: ch.now,
            outcome: Observed::Failed("timed out".into()),
        };
        for _ in 0..3 {
            let o = observed(&ch);
            observe(&mut ch.health, &o, &never);
        }
        ch.after(Duration::from_secs(30 * 24 * 3600));
        ch.health.probe_id = Some(DeliveryId::new());
        let mut o = observed(&ch);
        o.delivery_id = ch.health.probe_id.unwrap();
        assert!(matches!(
            observe(&mut ch.health, &o, &never),
            Some(HealthTransition::Reopened { .. })
        ));
    }

    #[test]
    fn the_defaults_are_five_failures_a_minute_an_hour_and_five_days() {
        let d = BreakerSettings::default();
        assert_eq!(d.failures, 5);
        assert_eq!(d.cooldown, 60 * SECOND);
        assert_eq!(d.max_cooldown, 3600 * SECOND);
        assert_eq!(d.disable_after, Some(5 * 24 * 3600 * SECOND));
    }

    #[test]
    fn cooldowns_double_up_to_the_cap() {
        let s = BreakerSettings {
            cooldown: 60 * SECOND,
            max_cooldown: 3600 * SECOND,
            ..settings()
        };
        let waits: Vec<u64> = (1..=8).map(|n| s.cooldown(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(s.cooldown(1000), 3600 * SECOND);
    }
}
