//! The CRM's domain operations over any [`Store`] and [`EventStream`]: creating
//! and resolving customers from identifiers, patching and erasing them, and
//! recording engagements. HTTP handlers call these and nothing below them.
//!
//! Linking is race-free because claiming an identifier is an insert keyed by
//! the identifier: a new customer is inserted, then claims its identifiers;
//! a writer that loses a claim erases its fresh customer and resolves again,
//! now finding the winner.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::customer::{Customer, CustomerStatus, Identifier};
use crate::engagement::{Engagement, EngagementDetail, Source};
use crate::event::DomainEvent;
use crate::events::{envelopes, EventStream};
use crate::ids::{CustomerId, EngagementId};
use crate::store::{
    Claim, CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
};
use crate::time::{self, Timestamp};

/// How often a write retries after losing an identifier to a concurrent writer.
const MAX_RESOLVE_ATTEMPTS: usize = 16;
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    #[error("customer {0} not found")]
    CustomerNotFound(CustomerId),
    #[error("the identifiers belong to different customers")]
    IdentifiersConflict { customers: Vec<CustomerId> },
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("too many concurrent changes to the same identifiers; try again")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One invalid field: `field` is a JSON pointer-ish path (`phones[1]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl ToString) -> Self {
        FieldError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// A request to create a customer, or find the one its identifiers name.
#[derive(Debug, Clone, Default)]
pub struct CustomerInput {
    pub name: Option<String>,
    pub identifiers: Vec<Identifier>,
    pub status: Option<CustomerStatus>,
}

/// A JSON merge patch of a customer's profile, already parsed.
#[derive(Debug, Clone, Default)]
pub struct CustomerPatch {
    /// `Some(None)` clears the name.
    pub name: Option<Option<String>>,
    pub emails: Option<Vec<crate::email::Email>>,
    pub phones: Option<Vec<crate::phone::PhoneNumber>>,
    /// `None` for a network removes it.
    pub social: Option<BTreeMap<String, Option<String>>>,
    pub status: Option<CustomerStatus>,
}

/// Whom an engagement is about.
#[derive(Debug, Clone)]
pub enum EngagementTarget {
    Customer(CustomerId),
    /// Resolve (or create) the customer these identifiers name.
    Identify {
        name: Option<String>,
        identifiers: Vec<Identifier>,
    },
}

#[derive(Debug, Clone)]
pub struct NewEngagement {
    pub target: EngagementTarget,
    pub occurred_at: Timestamp,
    pub source: Source,
    pub detail: EngagementDetail,
}

/// The outcome of recording one engagement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: EngagementId,
    pub customer_id: CustomerId,
    pub customer_created: bool,
    /// The same client event was recorded before; nothing changed.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Crm {
    store: Arc<dyn Store>,
    events: Arc<dyn EventStream>,
}

impl Crm {
    pub fn new(store: Arc<dyn Store>, events: Arc<dyn EventStream>) -> Self {
        Crm { store, events }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Publishes after a successful store write. When the stream cannot take
    /// the events they go to the store's outbox, and [`Crm::drain_outbox`]
    /// publishes them later: the write has succeeded and no event is lost.
    async fn publish(&self, events: Vec<DomainEvent>) {
        if events.is_empty() {
            return;
        }
        let envelopes = envelopes(events);
        let Err(e) = self.events.publish(envelopes.clone()).await else {
            return;
        };
        tracing::warn!(error = %e, count = envelopes.len(), "event stream unavailable; keeping events in the outbox");
        if let Err(e) = self.store.outbox_push(&envelopes).await {
            tracing::error!(error = %e, "events lost: neither the stream nor the outbox took them; run a rebuild");
        }
    }

    /// Publishes what the outbox holds, oldest first, up to `limit` events.
    /// Returns how many were published; stops at the first failure.
    pub async fn drain_outbox(&self, limit: usize) -> Result<usize, CrmError> {
        let kept = self.store.outbox_peek(limit).await?;
        if kept.is_empty() {
            return Ok(0);
        }
        let (ids, events): (Vec<String>, Vec<_>) = kept.into_iter().unzip();
        self.events
            .publish(events)
            .await
            .map_err(|e| CrmError::Store(StoreError::Unavailable(e.to_string())))?;
        self.store.outbox_remove(&ids).await?;
        Ok(ids.len())
    }

    /// Events waiting in the outbox (for `/readyz`).
    pub async fn outbox_len(&self) -> Result<u64, CrmError> {
        Ok(self.store.outbox_len().await?)
    }

    /// Creates a customer, or when an identifier already belongs to one,
    /// attaches the new identifiers to it. Returns the customer and whether it
    /// was created.
    pub async fn create_customer(
        &self,
        input: CustomerInput,
    ) -> Result<(Customer, bool), CrmError> {
        let name = clean_name(input.name.as_deref(), "name")?;
        if input.status == Some(CustomerStatus::Merged) {
            return Err(CrmError::Invalid(vec![FieldError::new(
                "status",
                "a customer cannot be created as merged",
            )]));
        }
        if input.identifiers.is_empty() {
            let mut c = Customer::new(CustomerId::new(), name, time::now());
            c.status = input.status.unwrap_or_default();
            self.store.insert_customer(&c).await?;
            self.publish(vec![DomainEvent::CustomerCreated {
                customer: c.clone(),
            }])
            .await;
            return Ok((c, true));
        }
        self.resolve(name.as_deref(), &input.identifiers, input.status)
            .await
    }

    /// Finds the one customer the identifiers name, attaching the ones it does
    /// not own yet, or creates a customer for them.
    pub async fn resolve(
        &self,
        name: Option<&str>,
        identifiers: &[Identifier],
        status: Option<CustomerStatus>,
    ) -> Result<(Customer, bool), CrmError> {
        let identifiers: Vec<Identifier> = identifiers
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for _ in 0..MAX_RESOLVE_ATTEMPTS {
            let mut owners = BTreeSet::new();
            let mut unowned = Vec::new();
            for identifier in &identifiers {
                match self.store.identity_owner(&identifier.key()).await? {
                    Some(owner) => {
                        owners.insert(owner);
                    }
                    None => unowned.push(identifier.clone()),
                }
            }
            let owner = match owners.len() {
                0 => {
                    if let Some(created) = self.try_create(name, &identifiers, status).await? {
                        return Ok((created, true));
                    }
                    continue;
                }
                1 => owners.into_iter().next().ok_or(CrmError::Contention)?,
                _ => {
                    return Err(CrmError::IdentifiersConflict {
                        customers: owners.into_iter().collect(),
                    })
                }
            };
            let Some(customer) = self.store.get_customer(owner).await? else {
                // The owner was erased between our reads; its identities go with it.
                for identifier in &identifiers {
                    self.store
                        .release_identity(&identifier.key(), owner)
                        .await?;
                }
                continue;
            };
            let mut attached = Vec::new();
            let mut lost = false;
            for identifier in &unowned {
                match self.store.claim_identity(&identifier.key(), owner).await? {
                    Claim::Claimed => attached.push(identifier.clone()),
                    Claim::OwnedBy(o) if o == owner => {}
                    Claim::OwnedBy(_) => lost = true,
                }
            }
            let customer = self.attach(customer, &attached, name).await?;
            if lost {
                // Someone else took an identifier meanwhile: look again, which
                // now sees two owners and reports the conflict.
                continue;
            }
            return Ok((customer, false));
        }
        Err(CrmError::Contention)
    }

    /// Inserts a customer owning the identifiers; `None` when a concurrent
    /// writer claimed one of them first (our customer is erased again).
    async fn try_create(
        &self,
        name: Option<&str>,
        identifiers: &[Identifier],
        status: Option<CustomerStatus>,
    ) -> Result<Option<Customer>, CrmError> {
        let mut c = Customer::new(CustomerId::new(), name.map(str::to_string), time::now());
        c.status = status.unwrap_or_default();
        for identifier in identifiers {
            c.add_identifier(identifier);
        }
        self.store.insert_customer(&c).await?;
        for identifier in identifiers {
            match self.store.claim_identity(&identifier.key(), c.id).await {
                Ok(Claim::Claimed) => {}
                Ok(Claim::OwnedBy(o)) if o == c.id => {}
                Ok(Claim::OwnedBy(_)) => {
                    self.store.delete_customer(c.id).await?;
                    return Ok(None);
                }
                Err(e) => {
                    // Leave nothing half-written behind.
                    let _ = self.store.delete_customer(c.id).await;
                    return Err(e.into());
                }
            }
        }
        self.publish(vec![DomainEvent::CustomerCreated {
            customer: c.clone(),
        }])
        .await;
        Ok(Some(c))
    }

    /// Puts newly claimed identifiers (and a name, if it had none) on the profile.
    async fn attach(
        &self,
        mut customer: Customer,
        attached: &[Identifier],
        name: Option<&str>,
    ) -> Result<Customer, CrmError> {
        let mut changed = false;
        if !attached.is_empty() {
            customer = self
                .store
                .add_identifiers(customer.id, attached, time::now())
                .await?;
            changed = true;
        }
        if let (None, Some(name)) = (&customer.name, name) {
            customer.name = Some(name.to_string());
            customer.updated_at = time::now();
            self.store.update_profile(&customer).await?;
            changed = true;
        }
        if changed {
            self.publish(vec![DomainEvent::CustomerUpdated {
                customer: customer.clone(),
            }])
            .await;
        }
        Ok(customer)
    }

    pub async fn get_customer(&self, id: CustomerId) -> Result<Customer, CrmError> {
        self.store
            .get_customer(id)
            .await?
            .ok_or(CrmError::CustomerNotFound(id))
    }

    pub async fn list_customers(
        &self,
        updated_since: Option<Timestamp>,
        after: Option<CustomerCursor>,
        limit: usize,
    ) -> Result<Vec<Customer>, CrmError> {
        Ok(self
            .store
            .list_customers(updated_since, after, limit)
            .await?)
    }

    /// Applies a merge patch; identifier changes claim and release identities
    /// so that they stay consistent with the profile.
    pub async fn patch_customer(
        &self,
        id: CustomerId,
        patch: CustomerPatch,
    ) -> Result<Customer, CrmError> {
        let current = self.get_customer(id).await?;
        let mut next = current.clone();
        if let Some(name) = &patch.name {
            next.name = clean_name(name.as_deref(), "name")?;
        }
        if let Some(emails) = patch.emails {
            next.emails = dedup_keep_order(emails);
        }
        if let Some(phones) = patch.phones {
            next.phones = dedup_keep_order(phones);
        }
        if let Some(social) = patch.social {
            for (network, value) in social {
                match value {
                    Some(v) => next.social.insert(network, v),
                    None => next.social.remove(&network),
                };
            }
        }
        if let Some(status) = patch.status {
            if status == CustomerStatus::Merged {
                return Err(CrmError::Invalid(vec![FieldError::new(
                    "status",
                    "use a merge to mark a customer merged",
                )]));
            }
            next.status = status;
        }
        if next == current {
            return Ok(current);
        }
        let before: BTreeSet<Identifier> = current.identifiers().into_iter().collect();
        let after: BTreeSet<Identifier> = next.identifiers().into_iter().collect();
        let mut claimed = Vec::new();
        for added in after.difference(&before) {
            match self.store.claim_identity(&added.key(), id).await? {
                Claim::Claimed => claimed.push(added.key()),
                Claim::OwnedBy(o) if o == id => {}
                Claim::OwnedBy(other) => {
                    for key in &claimed {
                        self.store.release_identity(key, id).await?;
                    }
                    return Err(CrmError::IdentifiersConflict {
                        customers: vec![id, other],
                    });
                }
            }
        }
        next.updated_at = time::now();
        self.store.update_profile(&next).await?;
        for removed in before.difference(&after) {
            self.store.release_identity(&removed.key(), id).await?;
        }
        let stored = self.get_customer(id).await?;
        self.publish(vec![DomainEvent::CustomerUpdated {
            customer: stored.clone(),
        }])
        .await;
        Ok(stored)
    }

    /// Erases the customer, its identities and its engagements.
    pub async fn delete_customer(&self, id: CustomerId) -> Result<(), CrmError> {
        let identifiers = self.store.identities_of(id).await?;
        match self.store.delete_customer(id).await? {
            Some(_) => {
                self.publish(vec![DomainEvent::CustomerDeleted {
                    customer_id: id,
                    identifiers,
                }])
                .await;
                Ok(())
            }
            None => Err(CrmError::CustomerNotFound(id)),
        }
    }

    pub async fn list_engagements(
        &self,
        customer: CustomerId,
        filter: &EngagementFilter,
        after: Option<EngagementCursor>,
        limit: usize,
    ) -> Result<Vec<Engagement>, CrmError> {
        self.get_customer(customer).await?;
        Ok(self
            .store
            .list_engagements(customer, filter, after, limit)
            .await?)
    }

    pub async fn record_engagement(&self, item: NewEngagement) -> Result<Recorded, CrmError> {
        self.record_engagements(vec![item])
            .await
            .pop()
            .unwrap_or(Err(CrmError::Contention))
    }

    /// Records a batch: each item gets its own outcome, and the good ones are
    /// stored together (one transaction on the embedded store).
    pub async fn record_engagements(
        &self,
        items: Vec<NewEngagement>,
    ) -> Vec<Result<Recorded, CrmError>> {
        let recorded_at = time::now();
        // Which named customers exist, in one store round trip.
        let named: Vec<CustomerId> = items
            .iter()
            .filter_map(|i| match i.target {
                EngagementTarget::Customer(id) => Some(id),
                EngagementTarget::Identify { .. } => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut known: HashMap<CustomerId, bool> = named.iter().map(|id| (*id, false)).collect();
        if !named.is_empty() {
            match self.store.get_customers(&named).await {
                Ok(found) => {
                    for c in found {
                        known.insert(c.id, true);
                    }
                }
                Err(e) => return items.iter().map(|_| Err(e.clone().into())).collect(),
            }
        }
        let mut outcomes: Vec<Result<Recorded, CrmError>> = Vec::with_capacity(items.len());
        let mut to_insert: Vec<Engagement> = Vec::with_capacity(items.len());
        let mut slots: Vec<usize> = Vec::with_capacity(items.len());
        for item in items {
            let resolved = match item.target {
                EngagementTarget::Customer(id) => match known.get(&id) {
                    Some(true) => Ok((id, false)),
                    _ => Err(CrmError::CustomerNotFound(id)),
                },
                EngagementTarget::Identify { name, identifiers } => {
                    if identifiers.is_empty() {
                        Err(CrmError::Invalid(vec![FieldError::new(
                            "customer",
                            "give a phone or an email to identify the customer",
                        )]))
                    } else {
                        match clean_name(name.as_deref(), "customer.name") {
                            Ok(name) => self
                                .resolve(name.as_deref(), &identifiers, None)
                                .await
                                .map(|(c, created)| (c.id, created)),
                            Err(e) => Err(e),
                        }
                    }
                }
            };
            match resolved {
                Ok((customer_id, customer_created)) => {
                    known.insert(customer_id, true);
                    let id = item.source.idempotent_id().unwrap_or_default();
                    to_insert.push(Engagement {
                        id,
                        customer_id,
                        occurred_at: item.occurred_at,
                        recorded_at,
                        source: item.source,
                        detail: item.detail,
                    });
                    slots.push(outcomes.len());
                    outcomes.push(Ok(Recorded {
                        id,
                        customer_id,
                        customer_created,
                        duplicate: false,
                    }));
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        if to_insert.is_empty() {
            return outcomes;
        }
        match self.store.insert_engagements(&to_insert).await {
            Ok(results) => {
                let mut events = Vec::new();
                for ((engagement, result), slot) in to_insert.into_iter().zip(results).zip(slots) {
                    match result {
                        EngagementInsert::Created => {
                            events.push(DomainEvent::EngagementRecorded { engagement });
                        }
                        EngagementInsert::Duplicate { customer_id } => {
                            if let Some(Ok(r)) = outcomes.get_mut(slot) {
                                r.duplicate = true;
                                r.customer_id = customer_id;
                            }
                        }
                    }
                }
                self.publish(events).await;
            }
            Err(e) => {
                for slot in slots {
                    outcomes[slot] = Err(e.clone().into());
                }
            }
        }
        outcomes
    }
}

/// Trims a name; empty becomes none; too long is refused.
pub fn clean_name(name: Option<&str>, field: &str) -> Result<Option<String>, CrmError> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(CrmError::Invalid(vec![FieldError::new(
            field,
            format!("at most {MAX_NAME_CHARS} characters"),
        )]));
    }
    if name.chars().any(char::is_control) {
        return Err(CrmError::Invalid(vec![FieldError::new(
            field,
            "contains control characters",
        )]));
    }
    Ok(Some(name.to_string()))
}

fn dedup_keep_order<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}
