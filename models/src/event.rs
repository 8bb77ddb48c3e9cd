//! Domain events: what the store accepted, in the order it accepted it.
//!
//! Every store write appends its events to the store's event log in the same
//! transaction as the change; a relay moves them to the event stream, and
//! consumers (the index, later webhooks and live push) apply them
//! idempotently, so redelivery is harmless.
//!
//! Events are ids, not data: who and what changed, never a name, a number,
//! an address or a message body. Consumers read current state from the store.
//! The envelope is stable and public:
//! `{"id", "type", "occurred_at", "customer_id"?, "data"}`, with ids that
//! sort in the order they were made and are unique across instances (UUIDv7).

use serde::{Deserialize, Serialize};

use crate::engagement::{Channel, Direction, Engagement};
use crate::ids::{CustomerId, DeviceId, EngagementId, MergeId, UserId};
use crate::time::{self, Timestamp};

/// Who made a change that events report: a staff user, a device, an API
/// key, or the service itself (an automatic merge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Actor {
    User(String),
    Device(DeviceId),
    /// Linking on evidence from a channel.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum DomainEvent {
    #[serde(rename = "customer.created")]
    CustomerCreated {},
    /// Profile fields that changed (`name`, `phones`, `emails`, `social`,
    /// `status`).
    #[serde(rename = "customer.updated")]
    CustomerUpdated { fields: Vec<String> },
    /// The customer and every customer merged into it are erased.
    #[serde(rename = "customer.erased")]
    CustomerErased {
        #[serde(default)]
        merged_ids: Vec<CustomerId>,
    },
    #[serde(rename = "engagement.recorded")]
    EngagementRecorded {
        engagement_id: EngagementId,
        channel: Channel,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direction: Option<Direction>,
        #[serde(with = "time::rfc3339")]
        occurred_at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// Customers merged into the survivor (the envelope's `customer_id`).
    /// `merge_id` is `None` when a write that raced with a merge was moved
    /// after it.
    #[serde(rename = "customers.merged")]
    CustomersMerged {
        #[serde(default)]
        merge_id: Option<MergeId>,
        survivor_id: CustomerId,
        merged_ids: Vec<CustomerId>,
        by: Actor,
    },
    #[serde(rename = "customers.unmerged")]
    CustomersUnmerged {
        merge_id: MergeId,
        customer_ids: Vec<CustomerId>,
        by: Actor,
    },
    #[serde(rename = "user.created")]
    UserCreated { user_id: UserId },
    #[serde(rename = "user.updated")]
    UserUpdated {
        user_id: UserId,
        fields: Vec<String>,
    },
    #[serde(rename = "user.deactivated")]
    UserDeactivated { user_id: UserId },
    #[serde(rename = "device.enrolled")]
    DeviceEnrolled {
        device_id: DeviceId,
        user_id: UserId,
    },
    #[serde(rename = "device.revoked")]
    DeviceRevoked {
        device_id: DeviceId,
        user_id: UserId,
    },
    /// A device's caller-ID lookup found the customer (the envelope's
    /// `customer_id`): the phone of `user_id` is ringing with their call.
    /// `signal_id` is the stored incoming-call signal.
    #[serde(rename = "call.incoming")]
    CallIncoming {
        signal_id: uuid::Uuid,
        device_id: DeviceId,
        user_id: UserId,
    },
    /// A webhook endpoint was disabled: it answered 410, or failed for too long.
    #[serde(rename = "webhook.disabled")]
    WebhookDisabled { webhook_id: String, reason: String },
}

impl DomainEvent {
    /// Every customer the event changes (the index refreshes each).
    pub fn customer_ids(&self, subject: Option<CustomerId>) -> Vec<CustomerId> {
        match self {
            DomainEvent::CustomersMerged {
                survivor_id,
                merged_ids,
                ..
            } => std::iter::once(*survivor_id)
                .chain(merged_ids.iter().copied())
                .collect(),
            DomainEvent::CustomersUnmerged { customer_ids, .. } => customer_ids.clone(),
            DomainEvent::CustomerErased { merged_ids } => subject
                .into_iter()
                .chain(merged_ids.iter().copied())
                .collect(),
            // A lookup changes nothing about the customer.
            DomainEvent::CallIncoming { .. } | DomainEvent::WebhookDisabled { .. } => Vec::new(),
            _ => subject.into_iter().collect(),
        }
    }

    /// The public type name (`customer.created`).
    pub fn name(&self) -> &'static str {
        match self {
            DomainEvent::CustomerCreated { .. } => "customer.created",
            DomainEvent::CustomerUpdated { .. } => "customer.updated",
            DomainEvent::CustomerErased { .. } => "customer.erased",
            DomainEvent::EngagementRecorded { .. } => "engagement.recorded",
            DomainEvent::CustomersMerged { .. } => "customers.merged",
            DomainEvent::CustomersUnmerged { .. } => "customers.unmerged",
            DomainEvent::UserCreated { .. } => "user.created",
            DomainEvent::UserUpdated { .. } => "user.updated",
            DomainEvent::UserDeactivated { .. } => "user.deactivated",
            DomainEvent::DeviceEnrolled { .. } => "device.enrolled",
            DomainEvent::DeviceRevoked { .. } => "device.revoked",
            DomainEvent::CallIncoming { .. } => "call.incoming",
            DomainEvent::WebhookDisabled { .. } => "webhook.disabled",
        }
    }

    /// `engagement.recorded` for a stored engagement (ids and channel only).
    pub fn engagement_recorded(e: &Engagement) -> Self {
        DomainEvent::EngagementRecorded {
            engagement_id: e.id,
            channel: e.detail.channel(),
            direction: e.detail.direction(),
            occurred_at: e.occurred_at,
            device_id: e.source.device_id,
            user_id: e.source.user_id.clone(),
        }
    }
}

/// Every public event type, in the catalogue's order.
pub const EVENT_TYPES: [&str; 13] = [
    "customer.created",
    "customer.updated",
    "customer.erased",
    "customers.merged",
    "customers.unmerged",
    "engagement.recorded",
    "call.incoming",
    "device.enrolled",
    "device.revoked",
    "user.created",
    "user.updated",
    "user.deactivated",
    "webhook.disabled",
];

/// Which events a reader of the log wants: every type when `types` is
/// empty; only events about `customer_id` when it is set (the envelope's
/// `customer_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub types: Vec<String>,
    pub customer_id: Option<CustomerId>,
}

impl EventFilter {
    pub fn matches(&self, e: &EventEnvelope) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == e.name()))
            && self.customer_id.is_none_or(|c| e.customer_id == Some(c))
    }
}

/// One page of the log in feed order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventPage {
    /// The events that matched, in feed order.
    pub events: Vec<EventEnvelope>,
    /// The last event examined, matching or not: the next page starts after
    /// it. `None` when nothing after the cursor exists yet.
    pub last: Option<uuid::Uuid>,
}

/// An event as the log keeps it: `{id, type, occurred_at, customer_id?, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// A UUIDv7: sorts in the order events were made, unique across instances.
    pub id: uuid::Uuid,
    #[serde(with = "time::rfc3339")]
    pub occurred_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    #[serde(flatten)]
    pub event: DomainEvent,
}

impl EventEnvelope {
    /// The event about `customer` (if any), stamped now with a new id.
    pub fn new(customer_id: Option<CustomerId>, event: DomainEvent) -> Self {
        EventEnvelope {
            id: uuid::Uuid::now_v7(),
            occurred_at: time::now(),
            customer_id,
            event,
        }
    }

    /// An event about a customer.
    pub fn about(customer_id: CustomerId, event: DomainEvent) -> Self {
        Self::new(Some(customer_id), event)
    }

    /// Every customer the event changes.
    pub fn customer_ids(&self) -> Vec<CustomerId> {
        self.event.customer_ids(self.customer_id)
    }

    pub fn name(&self) -> &'static str {
        self.event.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_flat_with_type_and_data() {
        let id = CustomerId::new();
        let e = EventEnvelope::about(
            id,
            DomainEvent::CustomerUpdated {
                fields: vec!["name".into()],
            },
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "customer.updated");
        assert_eq!(json["customer_id"], id.to_string());
        assert_eq!(json["data"]["fields"][0], "name");
        assert!(json["id"].is_string() && json["occurred_at"].is_string());
        let back: EventEnvelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn erasure_names_every_customer_it_erased() {
        let (a, b) = (CustomerId::new(), CustomerId::new());
        let e = EventEnvelope::about(
            a,
            DomainEvent::CustomerErased {
                merged_ids: vec![b],
            },
        );
        assert_eq!(e.customer_ids(), vec![a, b]);
    }
}
