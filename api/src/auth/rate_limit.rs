//! Login throttling: per account (the email as typed, normalised) and per
//! client address, so that neither one address nor many can guess one
//! account's password quickly. Every attempt counts, successful or not.
//!
//! The state is in this process: with several `crm-api` instances behind a
//! load balancer each one keeps its own counts.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// Login attempts per account per minute.
pub const PER_ACCOUNT_PER_MINUTE: u32 = 5;
/// Login attempts per client address per minute.
pub const PER_ADDRESS_PER_MINUTE: u32 = 20;
/// Forget idle keys after this many checks, so memory stays bounded.
const CLEANUP_EVERY: u64 = 1024;

pub struct LoginLimiter {
    per_account: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(PER_ACCOUNT_PER_MINUTE, PER_ADDRESS_PER_MINUTE)
    }
}

impl LoginLimiter {
    pub fn new(per_account_per_minute: u32, per_address_per_minute: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        LoginLimiter {
            per_account: DefaultKeyedRateLimiter::keyed(quota(per_account_per_minute)),
            per_address: DefaultKeyedRateLimiter::keyed(quota(per_address_per_minute)),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one attempt; `TooManyRequests` (with the wait) when over either limit.
    pub fn check(&self, account: &str, address: IpAddr) -> Result<(), ApiError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % CLEANUP_EVERY == CLEANUP_EVERY - 1 {
            self.per_account.retain_recent();
            self.per_address.retain_recent();
        }
        let clock = DefaultClock::default();
        let too_many = |wait: Duration| {
            // Round up: a client that waits exactly this long gets through.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::TooManyRequests {
                retry_after_s: secs.max(1),
            }
        };
        self.per_address
            .check_key(&address_key(address))
            .map_err(|n| too_many(n.wait_time_from(clock.now())))?;
        self.per_account
            .check_key(&account_key(account))
            .map_err(|n| too_many(n.wait_time_from(clock.now())))?;
        Ok(())
    }
}

/// The email as the store would see it, so that `Ann@X.com ` and `ann@x.com`
/// share a budget; text that is not an email is only trimmed and lowercased.
fn account_key(account: &str) -> String {
    match crm_models::Email::parse(account) {
        Ok(email) => email.as_str().to_string(),
        Err(_) => account
            .trim()
            .chars()
            .take(256)
            .collect::<String>()
            .to_lowercase(),
    }
}

/// IPv4 addresses as they are; IPv6 by their /64, which one client
/// typically holds whole.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn retry_after(r: Result<(), ApiError>) -> u64 {
        match r {
            Err(ApiError::TooManyRequests { retry_after_s }) => retry_after_s,
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[test]
    fn the_sixth_attempt_for_one_account_in_a_minute_is_refused() {
        let limiter = LoginLimiter::default();
        for i in 0..5 {
            // Different addresses, different spellings: still one account.
            let who = if i % 2 == 0 {
                "Ann@Example.com"
            } else {
                " ann@example.com"
            };
            limiter.check(who, ip(&format!("10.0.0.{i}"))).unwrap();
        }
        let wait = retry_after(limiter.check("ann@example.com", ip("10.0.0.9")));
        assert!((1..=12).contains(&wait), "{wait}");
        // Another account is not affected.
        limiter.check("bob@example.com", ip("10.0.0.9")).unwrap();
    }

    #[test]
    fn one_address_gets_twenty_attempts_a_minute_across_accounts() {
        let limiter = LoginLimiter::default();
        for i in 0..20 {
            limiter
                .check(&format!("user{i}@example.com"), ip("192.0.2.1"))
                .unwrap();
        }
        retry_after(limiter.check("someone@example.com", ip("192.0.2.1")));
        limiter
            .check("someone@example.com", ip("192.0.2.2"))
            .unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let limiter = LoginLimiter::new(100, 1);
        limiter.check("a@example.com", ip("2001:db8::1")).unwrap();
        retry_after(limiter.check("a@example.com", ip("2001:db8::2")));
    }
}
