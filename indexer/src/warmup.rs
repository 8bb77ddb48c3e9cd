//! Whether the in-process index has been loaded since start-up.
//!
//! In embedded mode the memory index starts empty and is filled from the
//! store beside the running server. Until it is, searches answer
//! `503 unavailable` (an incomplete index would miss customers), `/readyz`
//! reports the progress, and caller-ID reads the store instead of trusting
//! the index's misses. An index that lives elsewhere (Redis) is loaded
//! already: its warm-up starts and stays ready.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crm_models::CustomerId;
use tokio::sync::watch;

/// The load's state, shared by the loader, the routes and `/readyz`.
#[derive(Debug)]
pub struct Warmup {
    ready: watch::Sender<bool>,
    /// Customers read from the store by the load so far.
    loaded: AtomicU64,
    started: parking_lot::Mutex<Option<Instant>>,
    /// While loading: customers whose duplicate check waits for the whole
    /// index (its candidates come from name searches). `None` once ready.
    deferred: parking_lot::Mutex<Option<Vec<CustomerId>>>,
}

/// What `/readyz` says of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmupStatus {
    /// The index holds every customer; its misses are real.
    Ready,
    /// Still loading: `loaded` customers so far, for `elapsed`.
    WarmingUp { loaded: u64, elapsed: Duration },
}

impl Default for Warmup {
    fn default() -> Self {
        Self::ready()
    }
}

impl Warmup {
    /// A warm-up that is over: nothing to load.
    pub fn ready() -> Self {
        Warmup {
            ready: watch::Sender::new(true),
            loaded: AtomicU64::new(0),
            started: parking_lot::Mutex::new(None),
            deferred: parking_lot::Mutex::new(None),
        }
    }

    /// Starts (or restarts) a load: not ready until [`Warmup::finish`].
    pub fn begin(&self) {
        self.loaded.store(0, Ordering::Relaxed);
        *self.started.lock() = Some(Instant::now());
        // Checks deferred by a load that failed wait for this one.
        let mut deferred = self.deferred.lock();
        deferred.get_or_insert_with(Vec::new);
        self.ready.send_replace(false);
    }

    /// Records the customers read so far.
    pub fn progress(&self, loaded: u64) {
        self.loaded.store(loaded, Ordering::Relaxed);
    }

    /// The load is complete: searches may answer. Returns the customers
    /// whose duplicate check was deferred ([`Warmup::defer`]), each once.
    pub fn finish(&self, loaded: u64) -> Vec<CustomerId> {
        self.loaded.store(loaded, Ordering::Relaxed);
        let mut deferred = self.deferred.lock();
        self.ready.send_replace(true);
        let mut ids = deferred.take().unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Keeps the customer's duplicate check for when the load is complete;
    /// false (and nothing kept) when it is already.
    pub fn defer(&self, id: CustomerId) -> bool {
        match self.deferred.lock().as_mut() {
            Some(ids) => {
                ids.push(id);
                true
            }
            None => false,
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn status(&self) -> WarmupStatus {
        if self.is_ready() {
            return WarmupStatus::Ready;
        }
        WarmupStatus::WarmingUp {
            loaded: self.loaded.load(Ordering::Relaxed),
            elapsed: self.started.lock().map_or(Duration::ZERO, |s| s.elapsed()),
        }
    }

    /// Resolves once the index is ready (at once if it is).
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives in `self`, which outlives this borrow.
        let _ = ready.wait_for(|r| *r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_load_is_warming_until_finished_and_reports_progress() {
        let warmup = std::sync::Arc::new(Warmup::ready());
        assert_eq!(warmup.status(), WarmupStatus::Ready);
        warmup.begin();
        warmup.progress(500);
        assert!(matches!(
            warmup.status(),
            WarmupStatus::WarmingUp { loaded: 500, .. }
        ));
        let waiting = tokio::spawn({
            let warmup = warmup.clone();
            async move { warmup.wait_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let (a, b) = (CustomerId::new(), CustomerId::new());
        assert!(warmup.defer(b));
        assert!(warmup.defer(a));
        assert!(warmup.defer(b));
        let mut expected = vec![a, b];
        expected.sort_unstable();
        assert_eq!(warmup.finish(1_000), expected);
        assert!(!warmup.defer(a), "nothing is deferred once ready");
        waiting.await.expect("the waiter ends");
        assert!(warmup.is_ready());
        assert_eq!(warmup.status(), WarmupStatus::Ready);
    }
}
