//! The relay: moves committed events from the store's event log to the
//! event stream, in log order, and prunes the log.
//!
//! - Only the relay publishes; a request never does, so a dropped request, a
//!   timed-out client or a dead stream cannot lose an event, and write
//!   latency does not depend on the stream.
//! - An event is marked relayed only after the stream took it. A crash in
//!   between publishes it again on restart; consumers apply events
//!   idempotently, so that is harmless.
//! - Several relays (several crm-api instances, crm-indexer) share one
//!   store: a lease in the store lets one of them publish at a time, so in
//!   the normal case nothing is published twice.
//! - When the stream is down the relay retries with a growing pause (up to
//!   [`MAX_BACKOFF`]); events wait in the log meanwhile.
//! - Relayed events older than the retention are pruned, a chunk at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::events::EventStream;
use crate::store::{Store, StoreError};
use crate::time;

/// Events read and published per round.
pub const BATCH: usize = 4096;
/// How often an idle relay looks at the log without being woken.
pub const POLL: Duration = Duration::from_millis(100);
/// The longest pause between attempts while the stream is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a relay's lease lasts unless renewed.
pub const LEASE: Duration = Duration::from_secs(10);
/// How long a relay that found the lease taken waits before it asks again
/// (however often it is woken).
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// How often relayed events past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("event log: {0}")]
    Store(#[from] StoreError),
    #[error("event stream: {0}")]
    Stream(String),
}

pub struct Relay {
    store: Arc<dyn Store>,
    stream: Arc<dyn EventStream>,
    holder: String,
    wake: Arc<Notify>,
    retention: Duration,
    healthy: Arc<AtomicBool>,
    /// When another relay last held the lease, as this one found.
    lease_taken_at: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Relay {
    /// A relay for `store` into `stream`; `wake` is notified after writes
    /// (see `Crm::relay_wake`).
    pub fn new(store: Arc<dyn Store>, stream: Arc<dyn EventStream>, wake: Arc<Notify>) -> Self {
        Relay {
            store,
            stream,
            holder: uuid::Uuid::now_v7().to_string(),
            wake,
            retention: Duration::from_secs(30 * 86_400),
            healthy: Arc::new(AtomicBool::new(true)),
            lease_taken_at: std::sync::Mutex::new(None),
        }
    }

    /// How long relayed events are kept (`CRM_EVENT_RETENTION_DAYS`).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Reports its health in `healthy`: false while the last attempt to
    /// publish failed (for `/readyz`).
    pub fn sharing_health(mut self, healthy: Arc<AtomicBool>) -> Self {
        self.healthy = healthy;
        self
    }

    /// Publishes one batch of unrelayed events if this relay holds the
    /// lease. Returns how many it published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let recently_taken =
            |at: &Option<std::time::Instant>| at.is_some_and(|at| at.elapsed() < LEASE_RETRY);
        if self
            .lease_taken_at
            .lock()
            .is_ok_and(|at| recently_taken(&at))
        {
            return Ok(0);
        }
        let holds = self.store.relay_lease(&self.holder, LEASE).await?;
        if let Ok(mut at) = self.lease_taken_at.lock() {
            *at = (!holds).then(std::time::Instant::now);
        }
        if !holds {
            return Ok(0);
        }
        let events = self.store.unrelayed_events(BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
        self.stream
            .publish(events)
            .await
            .map_err(|e| RelayError::Stream(e.to_string()))?;
        self.store.mark_events_relayed(&ids).await?;
        Ok(ids.len())
    }

    /// Publishes until the log holds nothing unrelayed (or a failure).
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let n = self.relay_once().await?;
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// Deletes relayed events older than the retention.
    pub async fn prune(&self) -> Result<u64, RelayError> {
        let cutoff = time::now()
            - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::days(30));
        Ok(self.store.prune_events(cutoff).await?)
    }

    /// Runs until `shutdown` resolves: relays whenever woken or every
    /// [`POLL`], backs off while the stream or the store fails, prunes
    /// every ten minutes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::ZERO;
        let mut last_prune = tokio::time::Instant::now();
        loop {
            let wait = if backoff.is_zero() { POLL } else { backoff };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified(), if backoff.is_zero() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            match self.drain().await {
                Ok(_) => {
                    if !backoff.is_zero() {
                        tracing::info!("event stream reachable again; relay resumed");
                    }
                    backoff = Duration::ZERO;
                    self.healthy.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    if backoff.is_zero() {
                        tracing::warn!(error = %e, "relay cannot publish; events wait in the store");
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
                    self.healthy.store(false, Ordering::Relaxed);
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                match self.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "old events pruned from the log"),
                    Err(e) => tracing::warn!(error = %e, "pruning the event log failed"),
                }
            }
        }
        // What was committed before shutdown goes out if the stream takes it.
        if let Err(e) = self.drain().await {
            tracing::warn!(error = %e, "events left in the log at shutdown; the next start relays them");
        }
    }
}
