//! The retry schedule (docs/design.md#delivery), pure.
//!
//! Attempt 1 is immediate; after the n-th failed attempt the next is due
//! `3^n * 10 s` later (30 s, 90 s, 270 s, 810 s), or after the receiver's
//! `Retry-After` when that is longer. The 5th failure is final. Every wait is
//! multiplied by the configured scale, so tests can run the schedule in moments.

use std::time::Duration;

/// Attempts before a delivery is `failed`.
pub const MAX_ATTEMPTS: u32 = 5;

/// Base of the schedule.
const BASE: Duration = Duration::from_secs(10);

/// When to try again after `attempts` failed attempts, or `None` when they are spent.
pub fn next_delay(attempts: u32, retry_after: Option<Duration>, scale: f64) -> Option<Duration> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let schedule = BASE.saturating_mul(3u32.saturating_pow(attempts));
    let wait = retry_after.map_or(schedule, |ra| ra.max(schedule));
    Some(wait.mul_f64(scale.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_thirty_ninety_two_seventy_eight_ten() {
        let waits: Vec<_> = (1..MAX_ATTEMPTS)
            .map(|n| next_delay(n, None, 1.0).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [30, 90, 270, 810]);
        assert_eq!(next_delay(MAX_ATTEMPTS, None, 1.0), None);
    }

    #[test]
    fn retry_after_only_lengthens() {
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(5)), 1.0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(600)), 1.0),
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn scale_multiplies_every_wait() {
        assert_eq!(next_delay(2, None, 0.01), Some(Duration::from_millis(900)));
        assert_eq!(
            next_delay(1, Some(Duration::from_secs(100)), 0.5),
            Some(Duration::from_secs(50))
        );
        assert_eq!(next_delay(1, None, -1.0), Some(Duration::ZERO));
    }
}
