//! Login throttling that slows guessing down without locking the owner out.
//!
//! Three counters, each checked before the password is:
//! - **per account and address**: after [`PAIR_FREE`] failed attempts for one
//!   account from one client address, each further attempt from there waits
//!   2, 4, 8, ... seconds after the previous one (at most [`PAIR_CAP_S`]);
//! - **per account**, from every address together: after [`ACCOUNT_FREE`]
//!   failures the waits are 1, 2, 4, ... seconds (at most
//!   [`ACCOUNT_CAP_S`]), so that guessing from many addresses stays slow
//!   while the owner, from an address of their own, waits seconds at most;
//! - **per address**, across accounts: [`PER_ADDRESS_PER_MINUTE`] attempts a
//!   minute.
//!
//! An attempt counts as a failure from the moment it is let through (so that
//! a burst of parallel guesses is limited like a sequence) until it succeeds;
//! a successful login clears the account's counter and its counter from
//! that address (guesses from other addresses keep their waits). Counters are forgotten
//! [`FAILURE_WINDOW_S`] after the last failure.
//!
//! With `CRM_REDIS_URL` the counters live in Redis, shared by every crm-api
//! instance (keys under the configured prefix, expiring by themselves; the
//! account's two keys share a hash tag, so Redis Cluster works). The same
//! counts are kept in this process too: when Redis does not answer, the
//! local ones decide (and a warning is logged), so logins never wait on
//! Redis and an outage does not lift the limits for this instance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_indexer::redis_link::{Link, LinkConfig, Target};
use parking_lot::{Mutex, RwLock};

use crate::error::ApiError;

/// Failed attempts for one account from one address before waits begin.
pub const PAIR_FREE: u32 = 5;
/// First wait for one account from one address, in seconds; doubles.
pub const PAIR_BASE_S: u64 = 2;
/// Longest wait for one account from one address, in seconds.
pub const PAIR_CAP_S: u64 = 900;
/// Failed attempts for one account (all addresses) before waits begin.
pub const ACCOUNT_FREE: u32 = 10;
/// First wait for one account from anywhere, in seconds; doubles.
pub const ACCOUNT_BASE_S: u64 = 1;
/// Longest wait for one account from anywhere, in seconds.
pub const ACCOUNT_CAP_S: u64 = 60;
/// Login attempts per client address per minute, across accounts.
pub const PER_ADDRESS_PER_MINUTE: u32 = 20;
/// Seconds after the last failure that an account's counters are forgotten.
pub const FAILURE_WINDOW_S: u64 = 3600;

const ADDRESS_WINDOW_MS: u64 = 60_000;
/// Forget idle local counters after this many checks, so memory stays bounded.
const CLEANUP_EVERY: u64 = 1024;
/// Longest wait for Redis on a login.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Least time between two warnings that Redis is not answering.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Least time between two attempts at a fresh Redis connection.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// One exponential-delay rule.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    free: u32,
    base_ms: u64,
    cap_ms: u64,
}

const PAIR: Backoff = Backoff {
    free: PAIR_FREE,
    base_ms: PAIR_BASE_S * 1000,
    cap_ms: PAIR_CAP_S * 1000,
};
const ACCOUNT: Backoff = Backoff {
    free: ACCOUNT_FREE,
    base_ms: ACCOUNT_BASE_S * 1000,
    cap_ms: ACCOUNT_CAP_S * 1000,
};

impl Backoff {
    /// Milliseconds still to wait after `failures` failures, the last at `last_ms`.
    fn wait_ms(self, failures: u32, last_ms: u64, now_ms: u64) -> u64 {
        if failures < self.free {
            return 0;
        }
        let doublings = (failures - self.free).min(40);
        let delay = self
            .base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cap_ms);
        last_ms.saturating_add(delay).saturating_sub(now_ms)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    last_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start_ms: u64,
    count: u32,
}

/// The counters of this process.
struct Local {
    epoch: Instant,
    accounts: HashMap<String, Failures>,
    pairs: HashMap<(String, IpAddr), Failures>,
    addresses: HashMap<IpAddr, Window>,
}

impl Local {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts the attempt when it may go ahead; else the milliseconds to wait.
    fn attempt(&mut self, account: &str, address: IpAddr, now_ms: u64) -> Result<(), u64> {
        let window = self.addresses.entry(address).or_default();
        if now_ms.saturating_sub(window.start_ms) >= ADDRESS_WINDOW_MS || window.count == 0 {
            *window = Window {
                start_ms: now_ms,
                count: 0,
            };
        }
        window.count = window.count.saturating_add(1);
        if window.count > PER_ADDRESS_PER_MINUTE {
            return Err((window.start_ms + ADDRESS_WINDOW_MS).saturating_sub(now_ms));
        }
        let window_ms = FAILURE_WINDOW_S * 1000;
        let current = |f: Option<&Failures>| {
            f.copied()
                .filter(|f| now_ms.saturating_sub(f.last_ms) < window_ms)
                .unwrap_or_default()
        };
        let pair_key = (account.to_string(), address);
        let pair = current(self.pairs.get(&pair_key));
        let acct = current(self.accounts.get(account));
        let wait = PAIR
            .wait_ms(pair.count, pair.last_ms, now_ms)
            .max(ACCOUNT.wait_ms(acct.count, acct.last_ms, now_ms));
        if wait > 0 {
            return Err(wait);
        }
        let bump = |f: Failures| Failures {
            count: f.count.saturating_add(1),
            last_ms: now_ms,
        };
        self.pairs.insert(pair_key, bump(pair));
        self.accounts.insert(account.to_string(), bump(acct));
        Ok(())
    }

    fn succeeded(&mut self, account: &str, address: IpAddr) {
        self.accounts.remove(account);
        self.pairs.remove(&(account.to_string(), address));
    }

    fn forget_idle(&mut self, now_ms: u64) {
        let window_ms = FAILURE_WINDOW_S * 1000;
        self.accounts
            .retain(|_, f| now_ms.saturating_sub(f.last_ms) < window_ms);
        self.pairs
            .retain(|_, f| now_ms.saturating_sub(f.last_ms) < window_ms);
        self.addresses
            .retain(|_, w| now_ms.saturating_sub(w.start_ms) < ADDRESS_WINDOW_MS);
    }
}

/// Counts and limits login attempts; see the module documentation.
pub struct LoginLimiter {
    local: Mutex<Local>,
    checks: AtomicU64,
    shared: Option<Arc<SharedLimits>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::local()
    }
}

impl LoginLimiter {
    /// Counters in this process only.
    pub fn local() -> Self {
        LoginLimiter {
            local: Mutex::new(Local {
                epoch: Instant::now(),
                accounts: HashMap::new(),
                pairs: HashMap::new(),
                addresses: HashMap::new(),
            }),
            checks: AtomicU64::new(0),
            shared: None,
        }
    }

    /// Counters in Redis, shared by every instance using the same prefix.
    pub async fn shared(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let shared = SharedLimits::connect(url, prefix).await?;
        Ok(LoginLimiter {
            shared: Some(Arc::new(shared)),
            ..Self::local()
        })
    }

    /// Counts one attempt; `TooManyRequests` (with the wait) when it must wait.
    pub async fn check(&self, account: &str, address: IpAddr) -> Result<(), ApiError> {
        let account = account_key(account);
        let address = address_key(address);
        let local = {
            let mut local = self.local.lock();
            let now = local.now_ms();
            if self.checks.fetch_add(1, Ordering::Relaxed) % CLEANUP_EVERY == CLEANUP_EVERY - 1 {
                local.forget_idle(now);
            }
            local.attempt(&account, address, now)
        };
        let decision = match &self.shared {
            None => local,
            Some(shared) => match shared.attempt(&account, address).await {
                Ok(decision) => decision,
                Err(e) => {
                    shared.warn_unavailable(&e);
                    local
                }
            },
        };
        decision.map_err(too_many)
    }

    /// The attempt succeeded: clear the account's failures, and those of
    /// the account from this address (other addresses keep theirs).
    pub async fn succeeded(&self, account: &str, address: IpAddr) {
        let account = account_key(account);
        let address = address_key(address);
        self.local.lock().succeeded(&account, address);
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.succeeded(&account, address).await {
                shared.warn_unavailable(&e);
            }
        }
    }
}

fn too_many(wait_ms: u64) -> ApiError {
    // Round up: a client that waits exactly this long gets through.
    ApiError::TooManyRequests {
        retry_after_s: wait_ms.div_ceil(1000).max(1),
    }
}

/// Checks the per-address budget: `KEYS[1]` the address's counter;
/// `ARGV[1]` the budget, `ARGV[2]` the window in ms. Returns the ms to wait.
const ADDRESS_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); ttl = tonumber(ARGV[2]) end
  return ttl
end
return 0
";

/// Checks and counts one attempt against two failure counters (hashes
/// `n`, `last`): `KEYS[1]` the account's, `KEYS[2]` the account-and-address
/// one. `ARGV`: window ms, then free, base ms, cap ms for the account, then
/// for the pair. Time is the Redis server's, the same for every instance.
/// Returns the ms to wait, 0 when the attempt was counted.
const FAILURES_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local wait = 0
for i = 1, 2 do
  local free = tonumber(ARGV[i * 3 - 1])
  local base = tonumber(ARGV[i * 3])
  local cap = tonumber(ARGV[i * 3 + 1])
  local n = tonumber(redis.call('HGET', KEYS[i], 'n') or '0')
  local last = tonumber(redis.call('HGET', KEYS[i], 'last') or '0')
  if n >= free then
    local delay = math.min(base * 2 ^ math.min(n - free, 40), cap)
    local left = last + delay - now
    if left > wait then wait = left end
  end
end
if wait > 0 then return math.ceil(wait) end
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'n', 1)
  redis.call('HSET', KEYS[i], 'last', now)
  redis.call('PEXPIRE', KEYS[i], window)
end
return 0
";

/// The Redis side of the limiter.
struct SharedLimits {
    target: Target,
    connection: RwLock<Link>,
    prefix: String,
    address: redis::Script,
    failures: redis::Script,
    last_warning: Mutex<Option<Instant>>,
    renewing: AtomicBool,
    last_renewal: Mutex<Option<Instant>>,
}

fn manager_config() -> LinkConfig {
    LinkConfig {
        connect_timeout: REDIS_TIMEOUT,
        response_timeout: Some(REDIS_TIMEOUT),
        retries: 1,
        backoff: None,
    }
}

impl SharedLimits {
    async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let target = Target::parse(url)?;
        let connection = target.connect(manager_config()).await?;
        Ok(SharedLimits {
            target,
            connection: RwLock::new(connection),
            prefix: prefix.to_string(),
            address: redis::Script::new(ADDRESS_SCRIPT),
            failures: redis::Script::new(FAILURES_SCRIPT),
            last_warning: Mutex::new(None),
            renewing: AtomicBool::new(false),
            last_renewal: Mutex::new(None),
        })
    }

    /// An account's two keys share a hash tag, `{login:<SHA-256 of the
    /// account>}`, so that one script may use both (Redis Cluster). The
    /// email itself is not written to Redis.
    fn account_keys(&self, account: &str, address: IpAddr) -> (String, String) {
        let tag = &super::tokens::sha256_hex(account)[..32];
        (
            format!("{}{{login:{tag}}}:account", self.prefix),
            format!("{}{{login:{tag}}}:from:{address}", self.prefix),
        )
    }

    async fn attempt(
        self: &Arc<Self>,
        account: &str,
        address: IpAddr,
    ) -> anyhow::Result<Result<(), u64>> {
        let mut conn = self.connection.read().clone();
        let address_key = format!("{}login-address:{address}", self.prefix);
        let (account_key, pair_key) = self.account_keys(account, address);
        let result = tokio::time::timeout(REDIS_TIMEOUT, async {
            let wait: u64 = self
                .address
                .key(&address_key)
                .arg(PER_ADDRESS_PER_MINUTE)
                .arg(ADDRESS_WINDOW_MS)
                .invoke_async(&mut conn)
                .await?;
            if wait > 0 {
                return Ok::<_, redis::RedisError>(Err(wait));
            }
            let wait: u64 = self
                .failures
                .key(&account_key)
                .key(&pair_key)
                .arg(FAILURE_WINDOW_S * 1000)
                .arg(ACCOUNT.free)
                .arg(ACCOUNT.base_ms)
                .arg(ACCOUNT.cap_ms)
                .arg(PAIR.free)
                .arg(PAIR.base_ms)
                .arg(PAIR.cap_ms)
                .invoke_async(&mut conn)
                .await?;
            Ok(if wait > 0 { Err(wait) } else { Ok(()) })
        })
        .await;
        self.settle(result)
    }

    /// Clears the account's counter and the one of this address (others'
    /// failed guesses keep their waits).
    async fn succeeded(self: &Arc<Self>, account: &str, address: IpAddr) -> anyhow::Result<()> {
        let mut conn = self.connection.read().clone();
        let (account_key, pair_key) = self.account_keys(account, address);
        let result = tokio::time::timeout(REDIS_TIMEOUT, async {
            redis::cmd("DEL")
                .arg(&account_key)
                .arg(&pair_key)
                .query_async::<()>(&mut conn)
                .await
        })
        .await;
        self.settle(result)
    }

    /// A timeout or a connection error asks for a fresh connection.
    fn settle<T>(
        self: &Arc<Self>,
        result: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
    ) -> anyhow::Result<T> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.renew();
                }
                Err(e.into())
            }
            Err(_) => {
                self.renew();
                Err(anyhow::anyhow!(
                    "Redis did not answer within {REDIS_TIMEOUT:?}"
                ))
            }
        }
    }

    /// Builds a fresh connection manager in the background (at most every
    /// [`RENEW_EVERY`]): one that met an outage may stay unusable after it.
    fn renew(self: &Arc<Self>) {
        {
            let mut last = self.last_renewal.lock();
            if last.is_some_and(|t| t.elapsed() < RENEW_EVERY)
                || self.renewing.swap(true, Ordering::AcqRel)
            {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let fresh = tokio::time::timeout(
                Duration::from_secs(2),
                this.target.connect(manager_config()),
            )
            .await;
            match fresh {
                Ok(Ok(manager)) => {
                    *this.connection.write() = manager;
                    tracing::info!("login limits: a fresh connection to Redis is in use");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "login limits: Redis still unreachable"),
                Err(_) => tracing::debug!("login limits: Redis still unreachable (timed out)"),
            }
            this.renewing.store(false, Ordering::Release);
        });
    }

    fn warn_unavailable(&self, error: &anyhow::Error) {
        let mut last = self.last_warning.lock();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                error = %error,
                "login limits: Redis is not answering; this instance limits logins with its own counts until it is back"
            );
        }
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

    fn local() -> Local {
        Local {
            epoch: Instant::now(),
            accounts: HashMap::new(),
            pairs: HashMap::new(),
            addresses: HashMap::new(),
        }
    }

    const ANN: &str = "ann@example.com";

    #[test]
    fn five_failures_from_one_address_slow_that_address_down_not_the_owner() {
        let mut l = local();
        let attacker = ip("192.0.2.1");
        for _ in 0..PAIR_FREE {
            l.attempt(ANN, attacker, 0).unwrap();
        }
        assert_eq!(l.attempt(ANN, attacker, 0), Err(2000));
        assert_eq!(l.attempt(ANN, attacker, 1500), Err(500));
        // The owner, from another address, goes ahead at once.
        l.attempt(ANN, ip("198.51.100.9"), 10).unwrap();
        // The waits double: 2 s, then 4 s, then 8 s after each failure.
        l.attempt(ANN, attacker, 2000).unwrap();
        assert_eq!(l.attempt(ANN, attacker, 2000), Err(4000));
        l.attempt(ANN, attacker, 6000).unwrap();
        assert_eq!(l.attempt(ANN, attacker, 6001), Err(7999));
        // Another account from the attacker's address is not slowed.
        l.attempt("bob@example.com", attacker, 6001).unwrap();
    }

    #[test]
    fn failures_from_many_addresses_slow_the_account_down_up_to_a_cap() {
        let mut l = local();
        for i in 0..ACCOUNT_FREE {
            l.attempt(ANN, ip(&format!("10.0.0.{i}")), 0).unwrap();
        }
        let fresh = ip("10.0.1.1");
        assert_eq!(l.attempt(ANN, fresh, 0), Err(1000));
        let mut now = 1000;
        let mut expected = 2000;
        for k in 0..12 {
            // Each from an address of its own: only the account's wait applies.
            l.attempt(ANN, ip(&format!("10.0.3.{k}")), now).unwrap();
            assert_eq!(l.attempt(ANN, ip("10.0.2.2"), now), Err(expected));
            now += expected;
            expected = (expected * 2).min(ACCOUNT_CAP_S * 1000);
        }
        assert_eq!(expected, ACCOUNT_CAP_S * 1000);
    }

    #[test]
    fn success_clears_the_account_and_that_address_only() {
        let mut l = local();
        let (attacker, owner) = (ip("192.0.2.1"), ip("198.51.100.9"));
        for _ in 0..PAIR_FREE {
            l.attempt(ANN, attacker, 0).unwrap();
            l.attempt(ANN, owner, 0).unwrap();
        }
        assert!(l.attempt(ANN, owner, 0).is_err());
        l.succeeded(ANN, owner);
        l.attempt(ANN, owner, 0).unwrap();
        assert_eq!(l.attempt(ANN, attacker, 0), Err(2000));
    }

    #[test]
    fn counters_are_forgotten_after_the_window() {
        let mut l = local();
        let a = ip("192.0.2.1");
        for _ in 0..PAIR_FREE {
            l.attempt(ANN, a, 0).unwrap();
        }
        assert!(l.attempt(ANN, a, 0).is_err());
        let later = FAILURE_WINDOW_S * 1000;
        l.attempt(ANN, a, later).unwrap();
        l.forget_idle(2 * later);
        assert!(l.accounts.is_empty() && l.pairs.is_empty() && l.addresses.is_empty());
    }

    #[test]
    fn one_address_gets_twenty_attempts_a_minute_across_accounts() {
        let mut l = local();
        let a = ip("192.0.2.1");
        for i in 0..PER_ADDRESS_PER_MINUTE {
            l.attempt(&format!("user{i}@example.com"), a, 100).unwrap();
        }
        assert_eq!(l.attempt("someone@example.com", a, 100), Err(60_000));
        l.attempt("someone@example.com", ip("192.0.2.2"), 100)
            .unwrap();
        l.attempt("someone@example.com", a, 60_100).unwrap();
    }

    #[tokio::test]
    async fn the_limiter_answers_429_with_whole_seconds() {
        let limiter = LoginLimiter::local();
        for i in 0..PAIR_FREE {
            // Different spellings: one account.
            let who = if i % 2 == 0 {
                "Ann@Example.com"
            } else {
                " ann@example.com"
            };
            limiter.check(who, ip("10.0.0.1")).await.unwrap();
        }
        match limiter.check(ANN, ip("10.0.0.1")).await {
            Err(ApiError::TooManyRequests { retry_after_s }) => assert_eq!(retry_after_s, 2),
            other => panic!("expected 429, got {other:?}"),
        }
        limiter.check(ANN, ip("10.0.0.2")).await.unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}
