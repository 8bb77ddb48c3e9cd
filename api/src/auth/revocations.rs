//! The revoked-sessions set: which sessions (refresh-token families) ended
//! recently, so that their access tokens stop working at once.
//!
//! The store keeps the revocations (every instance writes and reads the
//! same ones). Each instance holds the set of sessions revoked within the
//! access tokens' lifetime and reloads it from the store when it is older
//! than [`MAX_AGE`], so a session ended on any instance is refused by every
//! instance within a second; a revocation made here is seen here at once.
//! Checking a token costs a look-up in memory; the store is read at most
//! about twice a second, whatever the number of sessions.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_models::store::{Store, StoreResult};
use parking_lot::RwLock;

/// Oldest the in-memory set may be when a token is checked against it.
pub const MAX_AGE: Duration = Duration::from_millis(500);

/// Clock difference tolerated between the instances that write and read
/// revocations.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How often revocations older than the horizon are deleted from the store.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Revocations {
    store: Arc<dyn Store>,
    /// Revocations older than this cannot matter: every access token of the
    /// session has expired since.
    horizon: Duration,
    snapshot: RwLock<Snapshot>,
    /// One reload at a time; the others wait for it, then read its result.
    reload: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Snapshot {
    revoked: HashSet<String>,
    loaded_at: Option<Instant>,
    pruned_at: Option<Instant>,
}

impl Snapshot {
    fn fresh(&self) -> bool {
        self.loaded_at.is_some_and(|t| t.elapsed() < MAX_AGE)
    }
}

impl Revocations {
    /// `access_ttl_s` and `leeway_s`: how long an access token can be used.
    pub fn new(store: Arc<dyn Store>, access_ttl_s: i64, leeway_s: u64) -> Self {
        let ttl = Duration::from_secs(u64::try_from(access_ttl_s).unwrap_or(0));
        Revocations {
            store,
            horizon: ttl + Duration::from_secs(leeway_s) + CLOCK_SKEW,
            snapshot: RwLock::new(Snapshot::default()),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// True when session `sid` has been revoked (here or on any instance).
    pub async fn is_revoked(&self, sid: &str) -> StoreResult<bool> {
        {
            let snapshot = self.snapshot.read();
            if snapshot.fresh() {
                return Ok(snapshot.revoked.contains(sid));
            }
        }
        let _reloading = self.reload.lock().await;
        if !self.snapshot.read().fresh() {
            self.load().await?;
        }
        Ok(self.snapshot.read().revoked.contains(sid))
    }

    /// Session `sid` was revoked by this instance: refuse it from now on,
    /// and read the store again at the next check.
    pub fn revoked_here(&self, sid: &str) {
        let mut snapshot = self.snapshot.write();
        snapshot.revoked.insert(sid.to_string());
        snapshot.loaded_at = None;
    }

    /// Sessions were revoked by this instance without their ids being known
    /// here (all of a user's): read the store again at the next check.
    pub fn changed_here(&self) {
        self.snapshot.write().loaded_at = None;
    }

    async fn load(&self) -> StoreResult<()> {
        let started = Instant::now();
        let since = crm_models::time::now() - chrono_duration(self.horizon);
        let revoked: HashSet<String> = self
            .store
            .revoked_sessions(since)
            .await?
            .into_iter()
            .collect();
        let prune = {
            let mut snapshot = self.snapshot.write();
            snapshot.revoked = revoked;
            snapshot.loaded_at = Some(started);
            let due = snapshot
                .pruned_at
                .is_none_or(|t| t.elapsed() >= PRUNE_EVERY);
            if due {
                snapshot.pruned_at = Some(started);
            }
            due
        };
        if prune {
            // Twice the horizon: what another instance with a longer token
            // lifetime still needs is kept a while longer.
            let before = crm_models::time::now() - chrono_duration(self.horizon * 2);
            match self.store.prune_revoked_sessions(before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(revocations = n, "pruned old session revocations"),
                Err(e) => tracing::warn!(error = %e, "pruning old session revocations failed"),
            }
        }
        Ok(())
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_models::ids::UserId;
    use crm_models::staff::RefreshToken;
    use crm_models::store::embedded::EmbeddedStore;

    fn token(hash: &str, user: UserId, family: &str) -> RefreshToken {
        let now = crm_models::time::now();
        RefreshToken {
            token_hash: hash.into(),
            user_id: user,
            family_id: family.into(),
            used: false,
            revoked: false,
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
        }
    }

    #[tokio::test]
    async fn revocations_by_another_instance_are_seen_within_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let here = Revocations::new(store.clone(), 900, 5);
        let user = UserId::new();
        store
            .insert_refresh_token(&token("h1", user, "f1"))
            .await
            .unwrap();
        store
            .insert_refresh_token(&token("h2", user, "f2"))
            .await
            .unwrap();
        assert!(!here.is_revoked("f1").await.unwrap());

        // Another instance revokes f1 in the store: seen once the set is
        // older than MAX_AGE (reloaded), here forced by `changed_here`.
        store.revoke_refresh_family("f1").await.unwrap();
        here.changed_here();
        assert!(here.is_revoked("f1").await.unwrap());
        assert!(!here.is_revoked("f2").await.unwrap());

        // A revocation made here (stored first, as `Auth` does) counts at once.
        store
            .insert_refresh_token(&token("h3", user, "f3"))
            .await
            .unwrap();
        assert!(!here.is_revoked("f3").await.unwrap());
        store.revoke_refresh_family("f3").await.unwrap();
        here.revoked_here("f3");
        assert!(here.is_revoked("f3").await.unwrap());

        // A user-wide revocation (a new password) ends f2 too.
        store.revoke_user_refresh_tokens(user).await.unwrap();
        here.changed_here();
        assert!(here.is_revoked("f2").await.unwrap());
    }
}
