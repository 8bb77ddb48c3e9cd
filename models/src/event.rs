//! Domain events: what the store accepted, in the order it accepted it.
//! The indexer applies them idempotently, so redelivery is harmless.

use serde::{Deserialize, Serialize};

use crate::customer::Customer;
use crate::engagement::Engagement;
use crate::ids::{CustomerId, MergeId};
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DomainEvent {
    /// A customer was created; carries the whole profile.
    CustomerCreated { customer: Customer },
    /// A customer's profile or identifiers changed; carries the whole profile.
    CustomerUpdated { customer: Customer },
    /// A customer was erased with its identities and engagements.
    CustomerDeleted {
        customer_id: CustomerId,
        /// Identifier keys the customer had, so the index can drop them.
        identifiers: Vec<String>,
    },
    /// An engagement was stored.
    EngagementRecorded { engagement: Engagement },
    /// Customers were merged into a survivor (or a merge was finished after
    /// a concurrent one): identities and engagements moved to it.
    CustomersMerged {
        #[serde(default)]
        merge_id: Option<MergeId>,
        survivor_id: CustomerId,
        merged_ids: Vec<CustomerId>,
    },
    /// A merge was undone: the customers are separate again.
    CustomersUnmerged {
        merge_id: MergeId,
        customer_ids: Vec<CustomerId>,
    },
}

impl DomainEvent {
    /// The customer the event is about.
    pub fn customer_id(&self) -> CustomerId {
        match self {
            DomainEvent::CustomerCreated { customer }
            | DomainEvent::CustomerUpdated { customer } => customer.id,
            DomainEvent::CustomerDeleted { customer_id, .. } => *customer_id,
            DomainEvent::EngagementRecorded { engagement } => engagement.customer_id,
            DomainEvent::CustomersMerged { survivor_id, .. } => *survivor_id,
            DomainEvent::CustomersUnmerged { customer_ids, .. } => {
                customer_ids.first().copied().unwrap_or_default()
            }
        }
    }

    /// Every customer the event changes (the index refreshes each).
    pub fn customer_ids(&self) -> Vec<CustomerId> {
        match self {
            DomainEvent::CustomersMerged {
                survivor_id,
                merged_ids,
                ..
            } => std::iter::once(*survivor_id)
                .chain(merged_ids.iter().copied())
                .collect(),
            DomainEvent::CustomersUnmerged { customer_ids, .. } => customer_ids.clone(),
            other => vec![other.customer_id()],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DomainEvent::CustomerCreated { .. } => "CustomerCreated",
            DomainEvent::CustomerUpdated { .. } => "CustomerUpdated",
            DomainEvent::CustomerDeleted { .. } => "CustomerDeleted",
            DomainEvent::EngagementRecorded { .. } => "EngagementRecorded",
            DomainEvent::CustomersMerged { .. } => "CustomersMerged",
            DomainEvent::CustomersUnmerged { .. } => "CustomersUnmerged",
        }
    }
}

/// An event with when it was emitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    #[serde(with = "time::rfc3339")]
    pub at: Timestamp,
    pub event: DomainEvent,
}
