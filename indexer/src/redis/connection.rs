//! The index's connection to Redis, renewed when Redis stops answering.
//!
//! A `ConnectionManager` reconnects by itself after most failures, but
//! after commands sent while Redis was down it stayed unusable once Redis
//! was back: its reconnection never finished, and every command waited on
//! it until its timeout. So a command that finds Redis unreachable also
//! asks for a fresh connection manager, built in the background at most once
//! a second and given two seconds to connect; until one connects, the
//! current one keeps being used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::ConnectionInfo;
use parking_lot::{Mutex, RwLock};

use crate::redis_link::{Link, LinkConfig, Target};
use crate::{IndexError, IndexResult};

/// Least time between two attempts at a fresh connection.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for a fresh connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Connection {
    target: Target,
    current: RwLock<Link>,
    renewing: AtomicBool,
    last_attempt: Mutex<Option<Instant>>,
    /// Pipelines sent so far (round trips), for benchmarks.
    sent: AtomicU64,
}

impl Connection {
    pub(crate) async fn open(url: &str) -> IndexResult<Self> {
        let target = Target::parse(url).map_err(IndexError::from)?;
        let manager = target
            .connect(LinkConfig::default())
            .await
            .map_err(IndexError::from)?;
        Ok(Connection {
            target,
            current: RwLock::new(manager),
            renewing: AtomicBool::new(false),
            last_attempt: Mutex::new(None),
            sent: AtomicU64::new(0),
        })
    }

    /// Where the one Redis is and how to log in, as the URL said; `None`
    /// for a cluster.
    pub(crate) fn info(&self) -> Option<&ConnectionInfo> {
        self.target.single_info()
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    /// A handle on the current connection, to send one pipeline.
    pub(crate) fn get(&self) -> Link {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.current.read().clone()
    }

    /// Pipelines sent through [`get`](Self::get) so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Redis did not answer: start building a fresh connection manager,
    /// unless one is being built or the last attempt was under a second ago.
    pub(crate) fn unreachable(self: &Arc<Self>) {
        let target = self.target.clone();
        {
            let mut last = self.last_attempt.lock();
            if last.is_some_and(|t| t.elapsed() < RENEW_EVERY) {
                return;
            }
            if self.renewing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Connecting can hang while Redis is down, hence the bound.
            let fresh =
                tokio::time::timeout(CONNECT_TIMEOUT, target.connect(LinkConfig::default())).await;
            match fresh {
                Ok(Ok(manager)) => {
                    *this.current.write() = manager;
                    tracing::info!("index: a fresh connection to Redis is in use");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "index: Redis still unreachable"),
                Err(_) => tracing::debug!("index: Redis still unreachable (connect timed out)"),
            }
            this.renewing.store(false, Ordering::Release);
        });
    }
}
