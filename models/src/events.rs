//! The event stream: where the relay ([`crate::relay`]) puts the domain events
//! the store committed, and where the indexer reads them back.
//!
//! [`EventStream`] is the publishing side the relay uses. [`EventLog`]
//! adds the consuming side with Redis Streams consumer-group semantics, so one
//! worker serves both deployments: in embedded mode the log is in-process
//! ([`MemoryEventStream`]); with Redis it is the `crm:events` stream (the
//! indexer crate's adapter).
//!
//! Delivery is at least once: an entry stays pending for its group until it is
//! acknowledged, and a pending entry idle for long enough can be claimed by
//! another consumer. Consumers therefore apply events idempotently.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

#[cfg(test)]
use crate::event::DomainEvent;
use crate::event::EventEnvelope;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event stream unavailable: {0}")]
    Unavailable(String),
    #[error("event stream error: {0}")]
    Internal(String),
}

#[async_trait]
pub trait EventStream: Send + Sync + 'static {
    /// Appends the events in order. Called by the relay with events the
    /// store committed.
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError>;
}

/// One log entry handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The entry id in the log (a Redis stream id); opaque to consumers.
    pub id: String,
    pub envelope: EventEnvelope,
    /// How often the entry has been delivered, this time included.
    pub attempts: u64,
}

/// An entry of a consumer group that was delivered and not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub id: String,
    pub consumer: String,
    /// Time since the entry was last delivered.
    pub idle: Duration,
    pub attempts: u64,
}

/// An entry that was given up on, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The id the entry had in the log.
    pub id: String,
    pub error: String,
    /// `None` when the entry could not be decoded as an event.
    pub envelope: Option<EventEnvelope>,
}

/// The consuming side of the event stream, with consumer groups: every group
/// sees every entry; within a group each entry goes to one consumer at a time.
#[async_trait]
pub trait EventLog: EventStream {
    /// Creates the consumer group if it does not exist. A new group starts at
    /// the beginning of the log, so nothing published before it is missed.
    async fn ensure_group(&self, group: &str) -> Result<(), EventError>;

    /// Entries no consumer of the group has seen yet, oldest first, at most
    /// `count`; they become pending for `consumer`. Waits up to `block` for
    /// one to arrive (`Duration::ZERO`: does not wait).
    async fn read(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventError>;

    /// Acknowledges entries: they are no longer pending for the group.
    async fn ack(&self, group: &str, ids: &[String]) -> Result<(), EventError>;

    /// Moves up to `count` entries that have been pending for at least
    /// `min_idle`, whoever owns them, to `consumer` (Redis `XAUTOCLAIM`).
    /// Each delivery counts as an attempt. Pending entries that were trimmed
    /// from the log meanwhile are dropped from the group.
    async fn claim_stale(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, EventError>;

    /// Copies the entry to the dead-letter log with the error, then
    /// acknowledges it.
    async fn dead_letter(
        &self,
        group: &str,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), EventError>;

    /// The group's pending entries, oldest first, at most `count`.
    async fn pending(&self, group: &str, count: usize) -> Result<Vec<PendingEntry>, EventError>;

    /// The oldest dead letters, at most `count`.
    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, EventError>;

    /// How many entries the log holds.
    async fn entry_count(&self) -> Result<u64, EventError>;
}

/// The in-process event log for embedded mode.
///
/// Holds at most `max_len` entries: entries every consumer group has
/// acknowledged are dropped as soon as they are, and when the log is full the
/// oldest entries go even if a group had not acknowledged them yet (as with
/// Redis `MAXLEN`; logged as a warning, and `crm-indexer rebuild` recovers).
pub struct MemoryEventStream {
    state: Mutex<LogState>,
    /// Wakes readers blocked in [`EventLog::read`].
    published: Notify,
}

struct LogState {
    max_len: usize,
    /// The sequence number of `entries[0]`; sequence numbers start at 1.
    first_seq: u64,
    entries: VecDeque<EventEnvelope>,
    groups: HashMap<String, GroupState>,
    dead: VecDeque<DeadLetter>,
}

#[derive(Default)]
struct GroupState {
    /// The last sequence number handed to a consumer; 0 before the first.
    last_delivered: u64,
    pending: BTreeMap<u64, PendingState>,
}

struct PendingState {
    consumer: String,
    delivered_at: Instant,
    attempts: u64,
}

impl MemoryEventStream {
    pub fn new(max_len: usize) -> Self {
        MemoryEventStream {
            state: Mutex::new(LogState {
                max_len: max_len.max(1),
                first_seq: 1,
                entries: VecDeque::new(),
                groups: HashMap::new(),
                dead: VecDeque::new(),
            }),
            published: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock leaves no half-made change behind:
        // every mutation below completes before it could panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemoryEventStream {
    fn default() -> Self {
        Self::new(65_536)
    }
}

fn entry_id(seq: u64) -> String {
    format!("{seq}-0")
}

fn parse_entry_id(id: &str) -> Result<u64, EventError> {
    id.split_once('-')
        .and_then(|(seq, _)| seq.parse().ok())
        .ok_or_else(|| EventError::Internal(format!("invalid entry id {id:?}")))
}

fn no_group(group: &str) -> EventError {
    EventError::Internal(format!("no consumer group {group:?}"))
}

impl LogState {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// Whether every group has delivered and acknowledged the entry.
    fn acknowledged_by_all(&self, seq: u64) -> bool {
        self.groups
            .values()
            .all(|g| g.last_delivered >= seq && !g.pending.contains_key(&seq))
    }

    /// Drops acknowledged entries from the front, then the oldest entries
    /// beyond `max_len`; returns how many of the latter a group still needed.
    fn trim(&mut self) -> usize {
        while !self.groups.is_empty()
            && !self.entries.is_empty()
            && self.acknowledged_by_all(self.first_seq)
        {
            self.entries.pop_front();
            self.first_seq += 1;
        }
        let mut lost = 0;
        while self.entries.len() > self.max_len {
            if !self.acknowledged_by_all(self.first_seq) {
                lost += 1;
            }
            self.entries.pop_front();
            self.first_seq += 1;
        }
        lost
    }
}

#[async_trait]
impl EventStream for MemoryEventStream {
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError> {
        if events.is_empty() {
            return Ok(());
        }
        let lost = {
            let mut state = self.lock();
            state.entries.extend(events);
            state.trim()
        };
        if lost > 0 {
            tracing::warn!(
                count = lost,
                "event log full; dropped entries a consumer group had not acknowledged"
            );
        }
        self.published.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl EventLog for MemoryEventStream {
    async fn ensure_group(&self, group: &str) -> Result<(), EventError> {
        self.lock().groups.entry(group.to_string()).or_default();
        Ok(())
    }

    async fn read(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventError> {
        let count = count.max(1);
        let deadline = Instant::now() + block;
        loop {
            // Registered before looking, so a publish in between still wakes us.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            {
                let mut guard = self.lock();
                let state = &mut *guard;
                let first_seq = state.first_seq;
                let next_seq = state.next_seq();
                let entries = &state.entries;
                let g = state.groups.get_mut(group).ok_or_else(|| no_group(group))?;
                let start = (g.last_delivered + 1).max(first_seq);
                let end = next_seq.min(start.saturating_add(count as u64));
                if start < end {
                    let now = Instant::now();
                    let mut out = Vec::with_capacity((end - start) as usize);
                    for seq in start..end {
                        let Some(envelope) = usize::try_from(seq - first_seq)
                            .ok()
                            .and_then(|i| entries.get(i))
                        else {
                            break;
                        };
                        g.pending.insert(
                            seq,
                            PendingState {
                                consumer: consumer.to_string(),
                                delivered_at: now,
                                attempts: 1,
                            },
                        );
                        g.last_delivered = seq;
                        out.push(Delivery {
                            id: entry_id(seq),
                            envelope: envelope.clone(),
                            attempts: 1,
                        });
                    }
                    return Ok(out);
                }
            }
            if tokio::time::timeout_at(deadline, published).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, group: &str, ids: &[String]) -> Result<(), EventError> {
        let seqs = ids
            .iter()
            .map(|id| parse_entry_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.lock();
        let g = state.groups.get_mut(group).ok_or_else(|| no_group(group))?;
        for seq in seqs {
            g.pending.remove(&seq);
        }
        state.trim();
        Ok(())
    }

    async fn claim_stale(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, EventError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let g = state.groups.get_mut(group).ok_or_else(|| no_group(group))?;
        let mut out = Vec::new();
        let mut trimmed = Vec::new();
        for (&seq, pending) in g.pending.iter_mut() {
            if out.len() >= count {
                break;
            }
            if now.saturating_duration_since(pending.delivered_at) < min_idle {
                continue;
            }
            let Some(envelope) = seq
                .checked_sub(state.first_seq)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| state.entries.get(i))
            else {
                trimmed.push(seq);
                continue;
            };
            pending.consumer = consumer.to_string();
            pending.delivered_at = now;
            pending.attempts += 1;
            out.push(Delivery {
                id: entry_id(seq),
                envelope: envelope.clone(),
                attempts: pending.attempts,
            });
        }
        for seq in trimmed {
            g.pending.remove(&seq);
        }
        Ok(out)
    }

    async fn dead_letter(
        &self,
        group: &str,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), EventError> {
        let seq = parse_entry_id(&delivery.id)?;
        let mut state = self.lock();
        let g = state.groups.get_mut(group).ok_or_else(|| no_group(group))?;
        g.pending.remove(&seq);
        state.dead.push_back(DeadLetter {
            id: delivery.id.clone(),
            error: error.to_string(),
            envelope: Some(delivery.envelope.clone()),
        });
        while state.dead.len() > state.max_len {
            state.dead.pop_front();
        }
        state.trim();
        Ok(())
    }

    async fn pending(&self, group: &str, count: usize) -> Result<Vec<PendingEntry>, EventError> {
        let now = Instant::now();
        let state = self.lock();
        let g = state.groups.get(group).ok_or_else(|| no_group(group))?;
        Ok(g.pending
            .iter()
            .take(count)
            .map(|(&seq, p)| PendingEntry {
                id: entry_id(seq),
                consumer: p.consumer.clone(),
                idle: now.saturating_duration_since(p.delivered_at),
                attempts: p.attempts,
            })
            .collect())
    }

    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, EventError> {
        Ok(self.lock().dead.iter().take(count).cloned().collect())
    }

    async fn entry_count(&self) -> Result<u64, EventError> {
        Ok(self.lock().entries.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::CustomerId;

    fn created(name: &str) -> DomainEvent {
        DomainEvent::CustomerUpdated {
            fields: vec![name.to_string()],
        }
    }

    fn envelopes(events: impl IntoIterator<Item = DomainEvent>) -> Vec<EventEnvelope> {
        events
            .into_iter()
            .map(|e| EventEnvelope::about(CustomerId::new(), e))
            .collect()
    }

    #[tokio::test]
    async fn a_group_reads_events_in_order() {
        let log = MemoryEventStream::new(8);
        log.ensure_group("g").await.unwrap();
        let (a, b) = (created("a"), created("b"));
        log.publish(envelopes([a.clone(), b.clone()]))
            .await
            .unwrap();
        let got = log.read("g", "c", 10, Duration::ZERO).await.unwrap();
        let events: Vec<_> = got.iter().map(|d| d.envelope.event.clone()).collect();
        assert_eq!(events, vec![a, b]);
        assert!(got.iter().all(|d| d.attempts == 1));
    }

    #[tokio::test]
    async fn acknowledged_entries_are_dropped_and_unread_ones_kept() {
        let log = MemoryEventStream::new(8);
        log.ensure_group("g").await.unwrap();
        log.publish(envelopes([created("a"), created("b"), created("c")]))
            .await
            .unwrap();
        let got = log.read("g", "c", 2, Duration::ZERO).await.unwrap();
        log.ack("g", &[got[1].id.clone()]).await.unwrap();
        // The first is still pending, so nothing can go yet.
        assert_eq!(log.entry_count().await.unwrap(), 3);
        log.ack("g", &[got[0].id.clone()]).await.unwrap();
        assert_eq!(log.entry_count().await.unwrap(), 1);
        let rest = log.read("g", "c", 10, Duration::ZERO).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].id, "3-0");
    }

    #[tokio::test]
    async fn claims_wait_for_min_idle() {
        let log = MemoryEventStream::new(8);
        log.ensure_group("g").await.unwrap();
        log.publish(envelopes([created("a")])).await.unwrap();
        log.read("g", "one", 1, Duration::ZERO).await.unwrap();
        let idle = Duration::from_millis(50);
        assert!(log
            .claim_stale("g", "two", idle, 10)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(idle).await;
        let claimed = log.claim_stale("g", "two", idle, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempts, 2);
        let pending = log.pending("g", 10).await.unwrap();
        assert_eq!(pending[0].consumer, "two");
    }

    #[tokio::test]
    async fn a_full_log_drops_the_oldest_and_forgets_their_pending_state() {
        let log = MemoryEventStream::new(2);
        log.ensure_group("g").await.unwrap();
        log.publish(envelopes([created("a")])).await.unwrap();
        log.read("g", "one", 1, Duration::ZERO).await.unwrap();
        log.publish(envelopes([created("b"), created("c")]))
            .await
            .unwrap();
        assert_eq!(log.entry_count().await.unwrap(), 2);
        // The pending "a" was trimmed: a claim drops it instead of handing it out.
        assert!(log
            .claim_stale("g", "two", Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(log.pending("g", 10).await.unwrap().is_empty());
        let rest = log.read("g", "one", 10, Duration::ZERO).await.unwrap();
        assert_eq!(rest.len(), 2);
    }

    #[tokio::test]
    async fn reading_an_unknown_group_fails() {
        let log = MemoryEventStream::default();
        assert!(matches!(
            log.read("nope", "c", 1, Duration::ZERO).await,
            Err(EventError::Internal(_))
        ));
    }
}
