//! The event stream: where domain events go after the store accepted a write.
//! In embedded mode it is in-process ([`MemoryEventStream`]); with Redis it is
//! the `crm:events` stream (the indexer crate's adapter).

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::event::{DomainEvent, EventEnvelope};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event stream unavailable: {0}")]
    Unavailable(String),
    #[error("event stream error: {0}")]
    Internal(String),
}

#[async_trait]
pub trait EventStream: Send + Sync + 'static {
    /// Appends the events in order. Called after the store write succeeded.
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError>;
}

/// In-process stream: subscribers get every event published after they subscribed.
pub struct MemoryEventStream {
    sender: broadcast::Sender<EventEnvelope>,
}

impl MemoryEventStream {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        MemoryEventStream { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.sender.subscribe()
    }
}

impl Default for MemoryEventStream {
    fn default() -> Self {
        Self::new(65_536)
    }
}

#[async_trait]
impl EventStream for MemoryEventStream {
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError> {
        for e in events {
            // No subscriber is fine: nothing is listening yet.
            let _ = self.sender.send(e);
        }
        Ok(())
    }
}

/// Wraps events for publishing, stamped now.
pub fn envelopes(events: impl IntoIterator<Item = DomainEvent>) -> Vec<EventEnvelope> {
    let at = crate::time::now();
    events
        .into_iter()
        .map(|event| EventEnvelope { at, event })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::Customer;
    use crate::ids::CustomerId;

    #[tokio::test]
    async fn subscribers_see_events_in_order() {
        let s = MemoryEventStream::new(8);
        let mut rx = s.subscribe();
        let a = Customer::new(CustomerId::new(), Some("a".into()), crate::time::now());
        let b = Customer::new(CustomerId::new(), Some("b".into()), crate::time::now());
        s.publish(envelopes([
            DomainEvent::CustomerCreated {
                customer: a.clone(),
            },
            DomainEvent::CustomerCreated {
                customer: b.clone(),
            },
        ]))
        .await
        .unwrap();
        assert_eq!(rx.recv().await.unwrap().event.customer_id(), a.id);
        assert_eq!(rx.recv().await.unwrap().event.customer_id(), b.id);
    }
}
