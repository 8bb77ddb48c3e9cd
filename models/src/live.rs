//! Live push: every event the relay published, fanned out to the streams
//! held by this process (desktops' SSE streams, see crm-api).
//!
//! The hub is one bounded ring shared by every subscriber
//! ([`tokio::sync::broadcast`]): an event is kept once however many streams
//! read it, so a stream costs its own position and no copy. A subscriber that
//! falls a whole ring behind is told it lagged ([`broadcast::error::RecvError::Lagged`])
//! instead of holding memory: its stream closes and the client replays the
//! events it missed from the log when it reconnects.
//!
//! Where the events come from:
//! - in one process (no Redis): the relay's stream is wrapped in a [`Tee`],
//!   which hands the hub what the stream accepted;
//! - with Redis: every instance tails the Redis stream the relay (on any
//!   instance) publishes to (crm-indexer's `tail_into_hub`), so a user's
//!   stream may be held by any instance.
//!
//! Either way a subscriber sees events in the order the relay published
//! them, which is the feed's order.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::event::EventEnvelope;
use crate::events::{EventError, EventStream};

/// Events a subscriber may fall behind before it counts as stalled.
pub const RING: usize = 4096;

/// This process's fan-out of published events.
#[derive(Clone)]
pub struct LiveHub {
    sender: broadcast::Sender<Arc<EventEnvelope>>,
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new(RING)
    }
}

impl LiveHub {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        LiveHub { sender }
    }

    /// Events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventEnvelope>> {
        self.sender.subscribe()
    }

    /// Hands published events to every subscriber (none: dropped).
    pub fn push(&self, events: impl IntoIterator<Item = EventEnvelope>) {
        for event in events {
            // An error only means nobody listens right now.
            let _ = self.sender.send(Arc::new(event));
        }
    }

    /// How many streams listen.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// An event stream that also pushes to a hub whatever its inner stream
/// accepted (the in-process deployment's live source).
pub struct Tee {
    inner: Arc<dyn EventStream>,
    hub: LiveHub,
}

impl Tee {
    pub fn new(inner: Arc<dyn EventStream>, hub: LiveHub) -> Self {
        Tee { inner, hub }
    }
}

#[async_trait]
impl EventStream for Tee {
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError> {
        let copy = if self.hub.subscribers() > 0 {
            Some(events.clone())
        } else {
            None
        };
        self.inner.publish(events).await?;
        if let Some(events) = copy {
            self.hub.push(events);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::DomainEvent;
    use crate::events::MemoryEventStream;
    use crate::ids::CustomerId;

    fn event() -> EventEnvelope {
        EventEnvelope::about(CustomerId::new(), DomainEvent::CustomerCreated {})
    }

    #[tokio::test]
    async fn a_tee_hands_subscribers_what_the_stream_took_in_order() {
        let hub = LiveHub::new(8);
        let tee = Tee::new(Arc::new(MemoryEventStream::default()), hub.clone());
        let mut rx = hub.subscribe();
        let sent = vec![event(), event(), event()];
        tee.publish(sent.clone()).await.unwrap();
        for e in &sent {
            assert_eq!(rx.recv().await.unwrap().id, e.id);
        }
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_subscriber_a_whole_ring_behind_is_told_it_lagged() {
        let hub = LiveHub::new(4);
        let mut rx = hub.subscribe();
        hub.push((0..6).map(|_| event()));
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(2))
        ));
    }
}
