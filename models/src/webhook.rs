//! Webhook endpoints and their deliveries (Standard Webhooks).
//!
//! An endpoint ([`Webhook`]) names a URL, the event types it wants (every
//! type when empty) and its signing secrets. The dispatcher reads the event
//! log in feed order and creates one [`Delivery`] per event and matching
//! endpoint; its id is derived from the endpoint's and the event's
//! ([`delivery_id`]), so creating it twice is harmless. Delivery workers
//! claim due deliveries with a lease (`locked_until`), so several workers
//! share them and the claims of a worker that died come back when the lease
//! ends.
//!
//! Secrets are kept as they are (`whsec_` and base64): the server signs with
//! them, so they cannot be hashed like API keys.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::EventEnvelope;
use crate::time::{self, Timestamp};

/// The namespace of delivery ids (UUIDv5 of endpoint id and event id).
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x6c0f_3b7e_8e1d_4a57_9f0a_5d2c_1b4e_7a90);

/// The delivery of `event` to `webhook`: the same id every time.
pub fn delivery_id(webhook: Uuid, event: Uuid) -> Uuid {
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(webhook.as_bytes());
    name[16..].copy_from_slice(event.as_bytes());
    Uuid::new_v5(&DELIVERY_NAMESPACE, &name)
}

/// One signing secret of an endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSecret {
    /// `whsec_<base64 of the key bytes>`.
    pub secret: String,
    /// When a rotated-out secret stops signing; `None` for the current one.
    #[serde(default, with = "time::rfc3339_option")]
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An endpoint events are posted to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Event types it receives; every type when empty.
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub enabled: bool,
    /// Why it was disabled by the service (410, failing too long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Since when every attempt failed; `None` after a success.
    #[serde(default, with = "time::rfc3339_option")]
    pub failing_since: Option<Timestamp>,
    /// The current secret first, then rotated-out ones until they expire.
    pub secrets: Vec<WebhookSecret>,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Timestamp,
}

impl Webhook {
    /// Whether the endpoint wants this event: its type is subscribed and it
    /// happened after the endpoint was created.
    pub fn wants(&self, event: &EventEnvelope) -> bool {
        self.enabled
            && event.occurred_at >= self.created_at
            && (self.types.is_empty() || self.types.iter().any(|t| t == event.name()))
    }

    /// The secrets that sign at `now`: the current one and rotated-out ones
    /// not expired yet.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|e| e > now))
            .map(|s| s.secret.as_str())
            .collect()
    }
}

impl Webhook {
    /// Applies an attempt's outcome: whether the endpoint changed, and the
    /// reason when this disabled it (the caller appends
    /// [`disabled_event`] in the same transaction).
    pub fn apply_outcome(
        &mut self,
        outcome: &EndpointOutcome,
        now: Timestamp,
    ) -> (bool, Option<String>) {
        match outcome {
            EndpointOutcome::Unchanged => (false, None),
            EndpointOutcome::Succeeded => {
                if self.failing_since.is_none() {
                    return (false, None);
                }
                self.failing_since = None;
                (true, None)
            }
            EndpointOutcome::Failed {
                disable_if_failing_since,
            } => {
                let first = self.failing_since.is_none();
                let since = *self.failing_since.get_or_insert(now);
                if self.enabled && since <= *disable_if_failing_since {
                    let reason = format!("every attempt failed since {}", time::format(&since));
                    self.disable(&reason, now);
                    return (true, Some(reason));
                }
                (first, None)
            }
            EndpointOutcome::Disable { reason } => {
                if !self.enabled {
                    return (false, None);
                }
                self.disable(reason, now);
                (true, Some(reason.clone()))
            }
        }
    }

    fn disable(&mut self, reason: &str, now: Timestamp) {
        self.enabled = false;
        self.disabled_reason = Some(reason.to_string());
        self.updated_at = now;
    }
}

/// The `webhook.disabled` event of an endpoint the service disabled.
pub fn disabled_event(webhook: Uuid, reason: String) -> EventEnvelope {
    EventEnvelope::new(
        None,
        crate::event::DomainEvent::WebhookDisabled {
            webhook_id: webhook.to_string(),
            reason,
        },
    )
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    /// The endpoint answered 2xx.
    Succeeded,
    /// Every attempt failed, or the endpoint is disabled or gone.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One event for one endpoint, with its attempts so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// [`delivery_id`] of the endpoint and the event; sent as `webhook-id`.
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The event (ids only; the body is read from the store at each attempt).
    pub event: EventEnvelope,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    /// When a pending delivery is due.
    #[serde(default, with = "time::rfc3339_option")]
    pub next_attempt_at: Option<Timestamp>,
    /// Claimed by a worker until then (its lease).
    #[serde(default, with = "time::rfc3339_option")]
    pub locked_until: Option<Timestamp>,
    #[serde(default, with = "time::rfc3339_option")]
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last answer, if one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed (no body of the answer is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Delivery {
    /// A new pending delivery of `event` to `webhook`, due at `now`.
    pub fn new(webhook: Uuid, event: &EventEnvelope, now: Timestamp) -> Delivery {
        Delivery {
            id: delivery_id(webhook, event.id),
            webhook_id: webhook,
            event: event.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_at: now,
            next_attempt_at: Some(now),
            locked_until: None,
            last_attempt_at: None,
            last_status_code: None,
            last_error: None,
        }
    }

    /// When a worker may take it: at its next attempt, or when the lease
    /// of the worker that holds it ends. `None` when it is done.
    pub fn due(&self) -> Option<Timestamp> {
        if self.status != DeliveryStatus::Pending {
            return None;
        }
        match (self.next_attempt_at, self.locked_until) {
            (Some(n), Some(l)) => Some(n.max(l)),
            (n, l) => n.or(l),
        }
    }
}

/// What a worker asks for: due deliveries, at most `limit`, at most
/// `per_webhook` per endpoint counting the ones it has in flight.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub now: Timestamp,
    /// The claimed ones are locked until `now + lease`.
    pub lease: std::time::Duration,
    pub limit: usize,
    pub per_webhook: usize,
    /// Deliveries the worker has in flight, per endpoint.
    pub in_flight: std::collections::HashMap<Uuid, usize>,
}

impl ClaimRequest {
    /// The end of the lease of what this request claims.
    pub fn locked_until(&self) -> Timestamp {
        self.now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::zero())
    }
}

/// What an attempt says about its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointOutcome {
    /// It answered 2xx: it is healthy again.
    Succeeded,
    /// It failed; when it has been failing since `disable_if_failing_since`
    /// or earlier, disable it.
    Failed { disable_if_failing_since: Timestamp },
    /// Disable it now (it answered 410 Gone).
    Disable { reason: String },
    /// Nothing to record about the endpoint.
    Unchanged,
}

/// The end of one attempt: the delivery as it is now (lease released) and
/// what to record about its endpoint. Disabling an endpoint appends
/// `webhook.disabled` in the same transaction.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub delivery: Delivery,
    pub endpoint: EndpointOutcome,
}

/// Which failed deliveries of an endpoint to queue again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// This one, whatever its status (a manual retry).
    One(Uuid),
    /// Every failed one created at or after this time.
    FailedSince(Timestamp),
}

/// Position in an endpoint's deliveries (newest first): the last of the
/// previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryCursor {
    pub created_at: Timestamp,
    pub id: Uuid,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::DomainEvent;

    #[test]
    fn a_delivery_id_is_the_same_for_the_same_pair_only() {
        let (w, e) = (Uuid::new_v4(), Uuid::now_v7());
        assert_eq!(delivery_id(w, e), delivery_id(w, e));
        assert_ne!(delivery_id(w, e), delivery_id(e, w));
        assert_ne!(delivery_id(w, e), delivery_id(w, Uuid::now_v7()));
    }

    #[test]
    fn due_is_the_later_of_the_attempt_and_the_lease() {
        let now = time::now();
        let event = EventEnvelope::new(None, DomainEvent::CustomerCreated {});
        let mut d = Delivery::new(Uuid::new_v4(), &event, now);
        assert_eq!(d.due(), Some(now));
        let later = now + chrono::Duration::seconds(30);
        d.locked_until = Some(later);
        assert_eq!(d.due(), Some(later));
        d.status = DeliveryStatus::Succeeded;
        assert_eq!(d.due(), None);
    }

    #[test]
    fn rotated_secrets_sign_until_they_expire() {
        let now = time::now();
        let w = Webhook {
            id: Uuid::new_v4(),
            url: "https://example.com/hook".into(),
            types: vec!["customer.created".into()],
            description: None,
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            secrets: vec![
                WebhookSecret {
                    secret: "whsec_new".into(),
                    expires_at: None,
                },
                WebhookSecret {
                    secret: "whsec_old".into(),
                    expires_at: Some(now + chrono::Duration::hours(24)),
                },
                WebhookSecret {
                    secret: "whsec_older".into(),
                    expires_at: Some(now - chrono::Duration::seconds(1)),
                },
            ],
            created_at: now,
            updated_at: now,
        };
        assert_eq!(w.signing_secrets(now), vec!["whsec_new", "whsec_old"]);
        let created = EventEnvelope::new(None, DomainEvent::CustomerCreated {});
        assert!(w.wants(&created));
        let updated = EventEnvelope::new(None, DomainEvent::CustomerUpdated { fields: vec![] });
        assert!(!w.wants(&updated));
        assert!(format!("{:?}", w.secrets[0]).contains("redacted"));
    }
}
