//! Per-channel delivery rates on this node: a channel's `rate_limit`, shared equally
//! by the live nodes of the registry, and a receiver's `Retry-After`, which holds
//! back the whole channel on this node rather than the one delivery.
//!
//! Each node sends a limited channel at most one delivery per `interval` = the
//! limit's period × live nodes ÷ its count (GCRA without bursts), so together the
//! nodes stay within the limit; while nodes join or leave, within a heartbeat or two
//! of it. A delivery that may not go yet is handed back, not attempted, due again
//! when its channel's next slot comes (see [`Throttle::admit`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{ChannelId, RateLimit};

/// The delivery pace of each channel this node has sent to.
#[derive(Debug, Default)]
pub struct Throttle {
    channels: Mutex<HashMap<ChannelId, Pace>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Pace {
    /// When the channel's next delivery may go (GCRA's theoretical arrival time).
    next: Option<Instant>,
    /// A receiver's `Retry-After`: nothing goes before it.
    blocked_until: Option<Instant>,
}

impl Throttle {
    /// Whether a delivery to `channel`, limited to `limit` if at all, may go now, with
    /// `nodes` live nodes sharing the limit: `None` (and its slot is taken), or how
    /// long until the channel's next slot.
    pub fn admit(
        &self,
        channel: ChannelId,
        limit: Option<RateLimit>,
        nodes: u32,
    ) -> Option<Duration> {
        self.admit_at(channel, limit, nodes, Instant::now())
    }

    fn admit_at(
        &self,
        channel: ChannelId,
        limit: Option<RateLimit>,
        nodes: u32,
        now: Instant,
    ) -> Option<Duration> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pace) = channels.get_mut(&channel) else {
            if let Some(limit) = limit {
                channels.insert(
                    channel,
                    Pace {
                        next: Some(now + limit.interval(nodes)),
                        blocked_until: None,
                    },
                );
            }
            return None;
        };
        if let Some(until) = pace.blocked_until {
            if until > now {
                return Some(until - now);
            }
            pace.blocked_until = None;
        }
        let Some(limit) = limit else {
            pace.next = None;
            return None;
        };
        match pace.next {
            Some(next) if next > now => Some(next - now),
            _ => {
                pace.next = Some(now + limit.interval(nodes));
                None
            }
        }
    }

    /// Holds back every delivery to `channel` on this node for `wait` (a receiver's
    /// `Retry-After`), unless it is held back longer already.
    pub fn back_off(&self, channel: ChannelId, wait: Duration) {
        let until = Instant::now() + wait;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let pace = channels.entry(channel).or_default();
        if pace.blocked_until.is_none_or(|t| t < until) {
            pace.blocked_until = Some(until);
        }
    }

    /// Forgets channels with nothing pending on their pace: called now and then so
    /// that the map holds only channels delivered to lately.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, pace| {
            pace.next.is_some_and(|t| t > now) || pace.blocked_until.is_some_and(|t| t > now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_channel_gets_one_slot_per_interval_shared_by_the_nodes() {
        let throttle = Throttle::default();
        let channel = ChannelId::new();
        let limit: RateLimit = "10/s".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(channel, Some(limit), 1, t0), None);
        // The next slot is 100 ms later; nothing goes before it.
        let wait = throttle
            .admit_at(channel, Some(limit), 1, t0 + Duration::from_millis(30))
            .unwrap();
        assert_eq!(wait, Duration::from_millis(70));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(throttle.admit_at(channel, Some(limit), 1, t1), None);
        // Two live nodes: each takes every other slot, 200 ms apart.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(throttle.admit_at(channel, Some(limit), 2, t2), None);
        assert_eq!(
            throttle.admit_at(channel, Some(limit), 2, t2 + Duration::from_millis(150)),
            Some(Duration::from_millis(50))
        );
        // Other channels and unlimited ones are not held back.
        assert_eq!(
            throttle.admit_at(ChannelId::new(), Some(limit), 2, t2),
            None
        );
        assert_eq!(throttle.admit_at(ChannelId::new(), None, 2, t2), None);
    }

    #[test]
    fn retry_after_holds_back_the_whole_channel() {
        let throttle = Throttle::default();
        let channel = ChannelId::new();
        throttle.back_off(channel, Duration::from_secs(30));
        let wait = throttle.admit(channel, None, 1).unwrap();
        assert!(wait > Duration::from_secs(29), "{wait:?}");
        // A shorter one does not shorten it.
        throttle.back_off(channel, Duration::from_secs(1));
        assert!(throttle.admit(channel, None, 1).unwrap() > Duration::from_secs(29));
        assert_eq!(throttle.admit(ChannelId::new(), None, 1), None);
    }
}
