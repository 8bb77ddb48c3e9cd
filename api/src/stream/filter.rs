//! Which events a stream carries, decided on the server.
//!
//! - Admins may have everything; `types` and `customer` narrow it.
//! - Agents get `call.incoming` and device events about themselves (their
//!   own phones' lookups, their own devices), and customer and engagement
//!   events only for the customers they subscribed to (`customer=`, at most
//!   [`MAX_CUSTOMERS`]); never `user.*` nor `webhook.*`.

use std::collections::HashSet;

use crm_models::event::{DomainEvent, EventEnvelope, EventFilter, EVENT_TYPES};
use crm_models::ids::{CustomerId, UserId};
use crm_models::service::FieldError;

use crate::error::ApiError;

/// Most customers one stream may subscribe to.
pub const MAX_CUSTOMERS: usize = 50;

/// Event types no agent may receive.
fn staff_only(name: &str) -> bool {
    name.starts_with("user.") || name.starts_with("webhook.")
}

/// Reads `types` values (each comma-separated; repeated parameters add up)
/// against the catalogue; every unknown one is reported under `field`.
pub fn parse_types<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<&'static str>, ApiError> {
    let mut types = Vec::new();
    let mut errors = Vec::new();
    for raw in values.into_iter().flat_map(|v| v.split(',')) {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        match EVENT_TYPES.iter().find(|t| **t == name) {
            Some(t) if !types.contains(t) => types.push(*t),
            Some(_) => {}
            None => errors.push(FieldError::new(
                field,
                format!(
                    "unknown event type `{name}`; the types are {}",
                    EVENT_TYPES.join(", ")
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Reads customer ids, each reported under `field` when it is not one.
pub fn parse_customers<'a>(
    field: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<CustomerId>, ApiError> {
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for raw in values {
        match raw.trim().parse::<CustomerId>() {
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
            Err(_) => errors.push(FieldError::new(
                field,
                format!("`{raw}` is not a customer id"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(ids)
}

/// What one stream lets through.
#[derive(Debug, Clone)]
pub struct StreamFilter {
    /// Empty: every type the role may have.
    types: Vec<&'static str>,
    /// Admins: narrows to events about these customers when not empty.
    /// Agents: the customers whose events they receive.
    customers: HashSet<CustomerId>,
    /// Set for an agent: whose calls and devices they receive.
    agent: Option<UserId>,
    /// The live leaderboards it asked for (`leaderboard=`, `team=`).
    boards: Option<crate::analytics::boards::BoardFilter>,
}

impl StreamFilter {
    /// An admin's stream: everything, narrowed by `types` and `customers`.
    pub fn admin(types: Vec<&'static str>, customers: Vec<CustomerId>) -> Result<Self, ApiError> {
        Self::new(types, customers, None)
    }

    /// Agent `user`'s stream. Asking for a type no agent receives is
    /// refused (422), naming it.
    pub fn agent(
        user: UserId,
        types: Vec<&'static str>,
        customers: Vec<CustomerId>,
    ) -> Result<Self, ApiError> {
        let refused: Vec<FieldError> = types
            .iter()
            .filter(|t| staff_only(t))
            .map(|t| FieldError::new("types", format!("`{t}` events are for admins only")))
            .collect();
        if !refused.is_empty() {
            return Err(ApiError::Validation(refused));
        }
        Self::new(types, customers, Some(user))
    }

    fn new(
        types: Vec<&'static str>,
        customers: Vec<CustomerId>,
        agent: Option<UserId>,
    ) -> Result<Self, ApiError> {
        if customers.len() > MAX_CUSTOMERS {
            return Err(ApiError::field(
                "customer",
                format!("at most {MAX_CUSTOMERS} customers per stream"),
            ));
        }
        Ok(StreamFilter {
            types,
            customers: customers.into_iter().collect(),
            agent,
            boards: None,
        })
    }

    /// Also carries `leaderboard.updated` for these boards (staff may see
    /// every board).
    pub fn with_boards(mut self, boards: Option<crate::analytics::boards::BoardFilter>) -> Self {
        self.boards = boards;
        self
    }

    /// Whether the stream carries this board's update.
    pub fn allows_board(&self, update: &crate::analytics::boards::BoardUpdate) -> bool {
        self.boards.as_ref().is_some_and(|b| b.allows(update))
    }

    /// What the store can filter on before [`StreamFilter::allows`] looks:
    /// the types (every event the stream carries is of one of them).
    pub fn store_filter(&self) -> EventFilter {
        let types = if self.types.is_empty() {
            match self.agent {
                None => Vec::new(),
                Some(_) => EVENT_TYPES
                    .iter()
                    .filter(|t| !staff_only(t))
                    .map(|t| t.to_string())
                    .collect(),
            }
        } else {
            self.types.iter().map(|t| t.to_string()).collect()
        };
        // Not the customers: an event names some in its data (a merge's
        // merged ids), where the store's filter does not look.
        EventFilter {
            types,
            customer_id: None,
        }
    }

    /// Whether the stream carries this event.
    pub fn allows(&self, e: &EventEnvelope) -> bool {
        if !self.types.is_empty() && !self.types.contains(&e.name()) {
            return false;
        }
        match self.agent {
            None => self.customers.is_empty() || self.about_subscribed(e),
            Some(me) => match &e.event {
                DomainEvent::CallIncoming { user_id, .. }
                | DomainEvent::DeviceEnrolled { user_id, .. }
                | DomainEvent::DeviceRevoked { user_id, .. } => *user_id == me,
                DomainEvent::UserCreated { .. }
                | DomainEvent::UserUpdated { .. }
                | DomainEvent::UserDeactivated { .. }
                | DomainEvent::WebhookDisabled { .. } => false,
                DomainEvent::CustomerCreated { .. }
                | DomainEvent::CustomerUpdated { .. }
                | DomainEvent::CustomerErased { .. }
                | DomainEvent::EngagementRecorded { .. }
                | DomainEvent::CustomersMerged { .. }
                | DomainEvent::CustomersUnmerged { .. } => self.about_subscribed(e),
            },
        }
    }

    /// The event names a subscribed customer (its subject, or any customer
    /// a merge, undo or erasure involved).
    fn about_subscribed(&self, e: &EventEnvelope) -> bool {
        e.customer_id
            .into_iter()
            .chain(e.customer_ids())
            .any(|c| self.customers.contains(&c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_models::engagement::Channel;
    use crm_models::ids::{DeviceId, EngagementId};

    fn engagement(c: CustomerId) -> EventEnvelope {
        EventEnvelope::about(
            c,
            DomainEvent::EngagementRecorded {
                engagement_id: EngagementId::new(),
                channel: Channel::Sms,
                direction: None,
                occurred_at: crm_models::time::now(),
                device_id: None,
                user_id: None,
            },
        )
    }

    fn call(c: CustomerId, user: UserId) -> EventEnvelope {
        EventEnvelope::about(
            c,
            DomainEvent::CallIncoming {
                signal_id: uuid::Uuid::now_v7(),
                device_id: DeviceId::new(),
                user_id: user,
            },
        )
    }

    #[test]
    fn types_are_read_from_lists_and_repeats_and_unknown_ones_are_named() {
        assert_eq!(
            parse_types(
                "types",
                ["call.incoming,engagement.recorded", "call.incoming"]
            )
            .unwrap(),
            vec!["call.incoming", "engagement.recorded"]
        );
        let Err(ApiError::Validation(errors)) = parse_types("types", ["call.incoming,nope.x"])
        else {
            panic!("an unknown type is refused");
        };
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("`nope.x`"), "{errors:?}");
    }

    #[test]
    fn an_agent_sees_own_calls_and_subscribed_customers_only() {
        let (me, other) = (UserId::new(), UserId::new());
        let (mine, theirs) = (CustomerId::new(), CustomerId::new());
        let f = StreamFilter::agent(me, vec![], vec![mine]).unwrap();
        assert!(f.allows(&call(theirs, me)));
        assert!(!f.allows(&call(mine, other)));
        assert!(f.allows(&engagement(mine)));
        assert!(!f.allows(&engagement(theirs)));
        assert!(!f.allows(&EventEnvelope::new(
            None,
            DomainEvent::UserCreated { user_id: me }
        )));
        let merged = EventEnvelope::about(
            theirs,
            DomainEvent::CustomersMerged {
                merge_id: None,
                survivor_id: theirs,
                merged_ids: vec![mine],
                by: crm_models::event::Actor::Auto,
            },
        );
        assert!(f.allows(&merged), "a merge of a subscribed customer");
        assert!(StreamFilter::agent(me, vec!["user.created"], vec![]).is_err());
        let too_many: Vec<CustomerId> = (0..=MAX_CUSTOMERS).map(|_| CustomerId::new()).collect();
        assert!(StreamFilter::agent(me, vec![], too_many).is_err());
    }

    #[test]
    fn an_admin_sees_everything_unless_narrowed() {
        let (c, d) = (CustomerId::new(), CustomerId::new());
        let all = StreamFilter::admin(vec![], vec![]).unwrap();
        assert!(all.allows(&EventEnvelope::new(
            None,
            DomainEvent::UserCreated {
                user_id: UserId::new()
            }
        )));
        assert!(all.allows(&call(c, UserId::new())));
        let narrowed = StreamFilter::admin(vec!["engagement.recorded"], vec![c]).unwrap();
        assert!(narrowed.allows(&engagement(c)));
        assert!(!narrowed.allows(&engagement(d)));
        assert!(!narrowed.allows(&call(c, UserId::new())));
    }
}
