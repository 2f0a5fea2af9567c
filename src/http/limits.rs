//! Rate limits (GCRA, `governor`): per client IP on the API, per tenant after
//! authentication, per channel on inbound webhooks, and on token issuance per tenant
//! (API key) or per IP (channel token).
//!
//! Limits are kept in memory and hold per node: N nodes behind a load balancer allow
//! up to N times the configured rate in total. No shared store is involved, so a
//! limit check never waits on the network.
//!
//! The limiters only; the middleware that applies the per-IP one is in the router.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use crate::access::PasswordAttempts;
use crate::config::Config;
use crate::domain::{ChannelId, TenantId};

/// Every limiter of a node; `None` where the configured rate is 0 (off).
pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_tenant: Option<DefaultKeyedRateLimiter<TenantId>>,
    inbound: Option<DefaultKeyedRateLimiter<ChannelId>>,
    tokens: Option<DefaultKeyedRateLimiter<IpAddr>>,
    tenant_tokens: Option<DefaultKeyedRateLimiter<TenantId>>,
    /// Wrong admin passwords per client address (always on).
    pub admin_passwords: PasswordAttempts,
    clock: DefaultClock,
}

/// A quota of `rate` per second with bursts of twice that.
fn per_second(rate: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(rate)?;
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    /// The limiters the config asks for.
    pub fn new(config: &Config) -> Self {
        Self {
            per_ip: per_second(config.rate_limit_per_ip).map(RateLimiter::keyed),
            per_tenant: per_second(config.rate_limit_per_tenant).map(RateLimiter::keyed),
            inbound: per_second(config.rate_limit_inbound_per_channel).map(RateLimiter::keyed),
            tokens: NonZeroU32::new(config.rate_limit_tokens_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            tenant_tokens: NonZeroU32::new(config.rate_limit_tokens_per_tenant_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            admin_passwords: PasswordAttempts::default(),
            clock: DefaultClock::default(),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
        scope: &'static str,
        what: &str,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            crate::metrics::record_rate_limited(scope);
            ApiError::rate_limited(wait, what)
        })
    }

    /// Requests from one client address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(&self.per_ip, &ip, "ip", "requests from this address")
    }

    /// Requests of one tenant, after authentication.
    pub fn check_tenant(&self, tenant: TenantId) -> Result<(), ApiError> {
        self.check(
            &self.per_tenant,
            &tenant,
            "tenant",
            "requests of this tenant",
        )
    }

    /// Inbound webhook requests of one channel.
    pub fn check_inbound(&self, channel: ChannelId) -> Result<(), ApiError> {
        self.check(
            &self.inbound,
            &channel,
            "inbound",
            "inbound requests of this channel",
        )
    }

    /// Client tokens issued to one address (callers without the API key).
    pub fn check_token_issue(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            &self.tokens,
            &ip,
            "tokens",
            "token requests from this address",
        )
    }

    /// Client tokens issued to one tenant's application (callers with its API key).
    pub fn check_tenant_token_issue(&self, tenant: TenantId) -> Result<(), ApiError> {
        self.check(
            &self.tenant_tokens,
            &tenant,
            "tenant_tokens",
            "token requests of this tenant",
        )
    }

    /// Forgets keys that are back to full capacity, bounding memory.
    pub fn retain_recent(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.per_tenant {
            l.retain_recent();
        }
        if let Some(l) = &self.inbound {
            l.retain_recent();
        }
        if let Some(l) = &self.tokens {
            l.retain_recent();
        }
        if let Some(l) = &self.tenant_tokens {
            l.retain_recent();
        }
    }
}

/// How often idle limiter keys are forgotten.
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_with_a_wait() {
        let mut config = Config::new("sqlite::memory:");
        config.rate_limit_per_ip = 3;
        config.rate_limit_tokens_per_minute = 2;
        let limits = RateLimits::new(&config);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..6 {
            assert!(limits.check_ip(ip).is_ok());
        }
        let err = limits.check_ip(ip).unwrap_err();
        assert_eq!(err.code, "rate_limited");
        assert!(err.retry_after.is_some_and(|s| s >= 1));
        assert!(
            limits.check_ip("192.0.2.2".parse().unwrap()).is_ok(),
            "keys are separate"
        );
        assert!(limits.check_token_issue(ip).is_ok() && limits.check_token_issue(ip).is_ok());
        assert!(limits.check_token_issue(ip).is_err());
        config.rate_limit_per_ip = 0;
        let off = RateLimits::new(&config);
        assert!((0..1000).all(|_| off.check_ip(ip).is_ok()));
    }

    #[test]
    fn tenant_token_budgets_are_separate_and_a_minute_long() {
        let mut config = Config::new("sqlite::memory:");
        config.rate_limit_tokens_per_tenant_per_minute = 3;
        let limits = RateLimits::new(&config);
        let (a, b) = (TenantId::new(), TenantId::new());
        assert!((0..3).all(|_| limits.check_tenant_token_issue(a).is_ok()));
        let err = limits.check_tenant_token_issue(a).unwrap_err();
        assert_eq!(err.code, "rate_limited");
        // One token back every 20 s.
        assert!(err.retry_after.is_some_and(|s| (1..=20).contains(&s)));
        assert!(limits.check_tenant_token_issue(b).is_ok());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            limits.check_token_issue(ip).is_ok(),
            "the per-address budget is another one"
        );
    }
}
