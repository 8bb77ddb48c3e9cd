//! The consumer loop: reads the event log in a consumer group, hands batches
//! to an [`EventHandler`], and acknowledges what was applied. The same loop
//! runs in `crm-indexer run` on Redis and inside `crm-api` in embedded mode.
//!
//! Delivery is at least once, so handlers must be idempotent:
//! - a batch is acknowledged only after the handler applied it;
//! - a batch the handler rejects is retried one event at a time, so one
//!   poison event does not hold back the rest; a rejected event stays pending
//!   and comes back through [`EventLog::claim_stale`], and once it has been
//!   delivered `max_attempts` times its next rejection moves it to the dead
//!   letters with the error;
//! - while the handler reports its backend unavailable, the worker retries
//!   the same batch with backoff and never dead-letters it;
//! - every `claim_interval` the worker claims entries left pending for
//!   `min_idle` by a consumer that died (or by itself, before a restart);
//! - on shutdown it finishes the batch in hand, acknowledges it and returns.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crm_models::event::EventEnvelope;
use crm_models::events::{Delivery, EventError, EventLog};
use futures::FutureExt;
use tokio::time::Instant;

/// Why a handler could not apply events. The message is logged and kept
/// with dead letters: name the problem, never the event's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The handler's backend is unreachable: retry later, the events are fine.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// These events cannot be applied; retrying as is may not help.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Applies events, idempotently: an event may arrive more than once.
#[async_trait]
pub trait EventHandler: Send + Sync {
    async fn apply(&self, events: &[EventEnvelope]) -> Result<(), ApplyError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The consumer group, `indexer` by default.
    pub group: String,
    /// This worker's name in the group; unique among live workers.
    pub consumer: String,
    /// Entries per read.
    pub batch_size: usize,
    /// How long a read waits for new entries.
    pub block: Duration,
    /// Deliveries after which a rejected event goes to the dead letters.
    pub max_attempts: u64,
    /// How often to look for entries other consumers left pending.
    pub claim_interval: Duration,
    /// How long an entry must have been pending before it is claimed.
    pub min_idle: Duration,
    /// The longest wait between retries while something is unavailable.
    pub max_backoff: Duration,
}

impl WorkerConfig {
    pub fn new(consumer: impl Into<String>) -> Self {
        WorkerConfig {
            group: "indexer".to_string(),
            consumer: consumer.into(),
            batch_size: 256,
            block: Duration::from_secs(2),
            max_attempts: 5,
            claim_interval: Duration::from_secs(5),
            min_idle: Duration::from_secs(30),
            // As the relay's: after an outage the index follows within
            // seconds of the events reaching the stream.
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A consumer name that differs between processes: `<host>-<pid>`.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "indexer".to_string());
    format!("{host}-{}", std::process::id())
}

/// Runs the consumer loop until `shutdown` completes.
pub async fn run_worker<'a>(
    log: Arc<dyn EventLog>,
    handler: Arc<dyn EventHandler>,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'a,
) {
    let mut worker = Worker {
        log,
        handler,
        shutdown: Shutdown {
            signal: Box::pin(shutdown),
            done: false,
        },
        config,
    };
    worker.run().await;
}

/// A shutdown signal that can be awaited more than once (mini-redis style).
struct Shutdown<'a> {
    signal: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    done: bool,
}

impl Shutdown<'_> {
    async fn wait(&mut self) {
        if !self.done {
            (&mut self.signal).await;
            self.done = true;
        }
    }

    /// Whether shutdown has begun, without waiting.
    fn begun(&mut self) -> bool {
        if !self.done && self.signal.as_mut().now_or_never().is_some() {
            self.done = true;
        }
        self.done
    }
}

struct Worker<'a> {
    log: Arc<dyn EventLog>,
    handler: Arc<dyn EventHandler>,
    shutdown: Shutdown<'a>,
    config: WorkerConfig,
}

/// Where a batch ended.
enum Outcome {
    Done,
    /// Shutdown came while waiting to retry; the rest stays pending.
    Interrupted,
}

impl Worker<'_> {
    async fn run(&mut self) {
        let group = self.config.group.clone();
        let consumer = self.config.consumer.clone();
        tracing::info!(%group, %consumer, "event worker started");
        if let Err(e) = self.log.ensure_group(&group).await {
            // Reads fail until it exists; the retry path ensures it again.
            tracing::warn!(%group, error = %e, "consumer group not ensured");
        }
        let mut failures = 0u32;
        // Claim at once: a restarted worker picks up what it left pending.
        let mut next_claim = Instant::now();
        while !self.shutdown.begun() {
            let step = if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.config.claim_interval;
                self.claim().await
            } else {
                self.read().await
            };
            match step {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = self.backoff(failures);
                    tracing::warn!(%group, %consumer, error = %e, retry_in_ms = wait.as_millis() as u64, "event log read failed");
                    self.sleep(wait).await;
                    // The group may be gone with its stream (a flushed Redis).
                    if let Err(e) = self.log.ensure_group(&group).await {
                        tracing::debug!(%group, error = %e, "consumer group not ensured");
                    }
                }
            }
        }
        tracing::info!(%group, %consumer, "event worker stopped");
    }

    async fn read(&mut self) -> Result<(), EventError> {
        let block = self.config.block.min(self.config.claim_interval);
        let deliveries = tokio::select! {
            biased;
            () = self.shutdown.wait() => return Ok(()),
            read = self.log.read(&self.config.group, &self.config.consumer, self.config.batch_size, block) => read?,
        };
        if !deliveries.is_empty() {
            self.process(deliveries).await;
        }
        Ok(())
    }

    /// Claims stale entries until there are none or shutdown begins.
    async fn claim(&mut self) -> Result<(), EventError> {
        while !self.shutdown.begun() {
            let claimed = self
                .log
                .claim_stale(
                    &self.config.group,
                    &self.config.consumer,
                    self.config.min_idle,
                    self.config.batch_size,
                )
                .await?;
            if claimed.is_empty() {
                break;
            }
            tracing::info!(group = %self.config.group, consumer = %self.config.consumer, count = claimed.len(), "claimed stale entries");
            let full = claimed.len() >= self.config.batch_size;
            if let Outcome::Interrupted = self.process(claimed).await {
                break;
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Applies a batch, then acknowledges it; on rejection goes one by one.
    async fn process(&mut self, deliveries: Vec<Delivery>) -> Outcome {
        let envelopes: Vec<EventEnvelope> = deliveries.iter().map(|d| d.envelope.clone()).collect();
        let rejected = match self.apply_until_available(&envelopes).await {
            None => return Outcome::Interrupted,
            Some(Ok(())) => {
                let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
                self.ack(&ids).await;
                return Outcome::Done;
            }
            Some(Err(error)) => error,
        };
        if let [delivery] = deliveries.as_slice() {
            self.reject(delivery, &rejected).await;
            return Outcome::Done;
        }
        tracing::debug!(count = deliveries.len(), error = %rejected, "batch rejected; applying its events one by one");
        let mut applied = Vec::with_capacity(deliveries.len());
        let mut outcome = Outcome::Done;
        for delivery in &deliveries {
            match self
                .apply_until_available(std::slice::from_ref(&delivery.envelope))
                .await
            {
                None => {
                    outcome = Outcome::Interrupted;
                    break;
                }
                Some(Ok(())) => applied.push(delivery.id.clone()),
                Some(Err(error)) => self.reject(delivery, &error).await,
            }
        }
        self.ack(&applied).await;
        outcome
    }

    /// Applies events, waiting out unavailability; `None` when shutdown
    /// came while waiting; otherwise the handler's success or rejection.
    async fn apply_until_available(
        &mut self,
        events: &[EventEnvelope],
    ) -> Option<Result<(), String>> {
        let mut failures = 0u32;
        loop {
            let applied = AssertUnwindSafe(self.handler.apply(events))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(ApplyError::Rejected("the handler panicked".into())));
            match applied {
                Ok(()) => return Some(Ok(())),
                Err(ApplyError::Rejected(error)) => return Some(Err(error)),
                Err(ApplyError::Unavailable(error)) => {
                    if self.shutdown.done {
                        return None;
                    }
                    failures = failures.saturating_add(1);
                    let wait = self.backoff(failures);
                    tracing::warn!(consumer = %self.config.consumer, %error, retry_in_ms = wait.as_millis() as u64, "event handler unavailable; retrying");
                    if !self.sleep(wait).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A rejected event stays pending for a retry until it has used up its
    /// attempts; then it goes to the dead letters.
    async fn reject(&mut self, delivery: &Delivery, error: &str) {
        let group = &self.config.group;
        if delivery.attempts < self.config.max_attempts {
            tracing::warn!(%group, entry_id = %delivery.id, attempts = delivery.attempts, event = delivery.envelope.event.name(), %error, "event rejected; left pending for a retry");
            return;
        }
        match self.log.dead_letter(group, delivery, error).await {
            Ok(()) => {
                tracing::error!(%group, entry_id = %delivery.id, attempts = delivery.attempts, event = delivery.envelope.event.name(), %error, "event moved to the dead letters")
            }
            Err(e) => {
                tracing::error!(%group, entry_id = %delivery.id, error = %e, "dead letter failed; the entry stays pending")
            }
        }
    }

    async fn ack(&mut self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.log.ack(&self.config.group, ids).await {
            // Harmless beyond the extra work: the entries come back and are
            // applied again.
            tracing::warn!(group = %self.config.group, count = ids.len(), error = %e, "acknowledgement failed; entries will be redelivered");
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = Duration::from_millis(100);
        base.saturating_mul(1u32 << failures.min(16))
            .min(self.config.max_backoff)
    }

    /// Sleeps unless shutdown comes first; `false` when it did.
    async fn sleep(&mut self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.shutdown.wait() => false,
        }
    }
}
