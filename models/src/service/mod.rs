//! The CRM's domain operations over any [`Store`] and [`EventStream`]: creating
//! and resolving customers from identifiers, patching and erasing them, and
//! recording engagements. HTTP handlers call these and nothing below them.
//!
//! Linking is race-free because claiming an identifier is an insert keyed by
//! the identifier: a new customer is inserted, then claims its identifiers;
//! a writer that loses a claim erases its fresh customer and resolves again,
//! now finding the winner.

mod batch;
mod linking;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub use linking::{HistoryEntry, MergeOutcome};

use crate::customer::{Customer, CustomerStatus, Identifier};
use crate::engagement::{Engagement, EngagementDetail, Source};
use crate::event::DomainEvent;
use crate::events::{envelopes, EventStream};
use crate::ids::{CustomerId, EngagementId, MergeId};
use crate::linking::LinkPolicy;
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
    #[error("merge {0} not found")]
    MergeNotFound(MergeId),
    /// The request cannot be carried out in the current state (a merge
    /// already undone, nothing left to merge).
    #[error("{0}")]
    Refused(String),
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
    /// This customer, which the identifiers also name: identifiers owned by
    /// other customers link them (a web visitor who logs in).
    CustomerWith {
        id: CustomerId,
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
    policy: Arc<LinkPolicy>,
}

impl Crm {
    pub fn new(store: Arc<dyn Store>, events: Arc<dyn EventStream>) -> Self {
        Crm {
            store,
            events,
            policy: Arc::new(LinkPolicy::default()),
        }
    }

    /// The same service with other linking safeguards.
    pub fn with_policy(mut self, policy: LinkPolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
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
    /// not own yet, or creates a customer for them. When they name several
    /// customers, those are merged into the oldest (unless a safeguard stops
    /// it: then the oldest is used and a suggestion is kept).
    pub async fn resolve(
        &self,
        name: Option<&str>,
        identifiers: &[Identifier],
        status: Option<CustomerStatus>,
    ) -> Result<(Customer, bool), CrmError> {
        self.resolve_with(name, identifiers, status, None).await
    }

    /// [`Crm::resolve`], with a customer the identifiers are known to name too.
    async fn resolve_with(
        &self,
        name: Option<&str>,
        identifiers: &[Identifier],
        status: Option<CustomerStatus>,
        pinned: Option<CustomerId>,
    ) -> Result<(Customer, bool), CrmError> {
        let identifiers: Vec<Identifier> = identifiers
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for _ in 0..MAX_RESOLVE_ATTEMPTS {
            let lookup = self.look_up(&identifiers).await?;
            // The customers named, as they are now (merged ones followed).
            let mut named: BTreeMap<CustomerId, Customer> = BTreeMap::new();
            // (customer now, identifier key) for each owned identifier.
            let mut owners: Vec<(CustomerId, &str)> = Vec::new();
            let mut gone = false;
            for (owner, key) in &lookup.owned {
                // Identifiers of one customer (a phone and an email): read it once.
                if let Some(c) = named.get(owner) {
                    owners.push((c.id, key));
                    continue;
                }
                match self.current_opt(*owner).await? {
                    Some(c) => {
                        if c.id != *owner {
                            // An identity left behind by a concurrent merge.
                            self.settle(*owner).await?;
                        }
                        owners.push((c.id, key));
                        named.insert(c.id, c);
                    }
                    None => {
                        // The owner was erased between our reads.
                        self.store.release_identity(key, *owner).await?;
                        gone = true;
                    }
                }
            }
            if gone {
                continue;
            }
            if let Some(pinned) = pinned {
                let c = self.current(pinned).await?;
                named.insert(c.id, c);
            }
            // The identifier that names a customer other than the oldest: the
            // one that links them (for the merge record).
            let oldest = named
                .values()
                .min_by_key(|c| (c.created_at, c.id))
                .map(|c| c.id);
            let linked_by = owners
                .iter()
                .find(|(c, _)| Some(*c) != oldest)
                .or(owners.first())
                .map(|(_, k)| k.to_string());
            let target = match named.len() {
                0 => {
                    if let Some(created) = self
                        .try_create(name, &lookup.free, &lookup.unlinkable, status)
                        .await?
                    {
                        return Ok((created, true));
                    }
                    continue;
                }
                1 => named.into_values().next().ok_or(CrmError::Contention)?,
                _ => {
                    let identifier = linked_by.unwrap_or_default();
                    match self
                        .merge_auto(named.into_values().collect(), &identifier)
                        .await?
                    {
                        MergeOutcome::Merged(c) | MergeOutcome::Refused(c) => c,
                    }
                }
            };
            let owner = target.id;
            let mut attached = Vec::new();
            let mut lost = false;
            for identifier in &lookup.free {
                match self.store.claim_identity(&identifier.key(), owner).await? {
                    Claim::Claimed => attached.push(identifier.clone()),
                    Claim::OwnedBy(o) if o == owner => {}
                    Claim::OwnedBy(_) => lost = true,
                }
            }
            for identifier in &lookup.unlinkable {
                if !has_identifier(&target, identifier) {
                    attached.push(identifier.clone());
                }
            }
            let customer = self.attach(target, &attached, name).await?;
            if lost || customer.status == CustomerStatus::Merged {
                // Someone else took an identifier, or merged our customer,
                // meanwhile: look again, which now sees where things are.
                if customer.status == CustomerStatus::Merged {
                    self.settle(customer.id).await?;
                }
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
        unlinkable: &[Identifier],
        status: Option<CustomerStatus>,
    ) -> Result<Option<Customer>, CrmError> {
        let c = new_customer(name, identifiers.iter().chain(unlinkable), status);
        let keys = identifiers.iter().map(Identifier::key).collect();
        let created = self
            .store
            .insert_customers_owning(&[(c.clone(), keys)])
            .await?;
        if created.first() != Some(&true) {
            return Ok(None);
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

    /// The customer, or the one it was merged into.
    pub async fn get_customer(&self, id: CustomerId) -> Result<Customer, CrmError> {
        self.current(id).await
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
        let current = self.current(id).await?;
        let id = current.id;
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
        let added: Vec<Identifier> = after.difference(&before).cloned().collect();
        let lookup = self.look_up(&added).await?;
        // Identifiers that other customers own: the patch links them, so
        // they are merged (checked against the safeguards before any write).
        let mut others: BTreeMap<CustomerId, Customer> = BTreeMap::new();
        let mut linked_by = String::new();
        for (owner, key) in &lookup.owned {
            if let Some(c) = self.current_opt(*owner).await? {
                if c.id != id {
                    if linked_by.is_empty() {
                        linked_by = key.clone();
                    }
                    others.insert(c.id, c);
                }
            }
        }
        if !others.is_empty() {
            let mut all = vec![current.clone()];
            all.extend(others.values().cloned());
            if let Some(refusal) = self.merge_blocker(&all).await? {
                self.suggest(&all, refusal.0, &refusal.1).await?;
                let mut customers = vec![id];
                customers.extend(others.keys().copied());
                return Err(CrmError::IdentifiersConflict { customers });
            }
        }
        let mut claimed = Vec::new();
        for added in &lookup.free {
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
        let stored = self.current(id).await?;
        self.publish(vec![DomainEvent::CustomerUpdated {
            customer: stored.clone(),
        }])
        .await;
        if others.is_empty() {
            return Ok(stored);
        }
        let mut all = vec![stored];
        all.extend(others.into_values());
        match self.merge_auto(all, &linked_by).await? {
            MergeOutcome::Merged(c) | MergeOutcome::Refused(c) => Ok(c),
        }
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
        let customer = self.current(customer).await?.id;
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
        // Which named customers exist (and where merged ones went), in one
        // store round trip for the usual case.
        let named: Vec<CustomerId> = items
            .iter()
            .filter_map(|i| match i.target {
                EngagementTarget::Customer(id) => Some(id),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut known: HashMap<CustomerId, CustomerId> = HashMap::new();
        if !named.is_empty() {
            match self.store.get_customers(&named).await {
                Ok(found) => {
                    for c in found {
                        if c.status == CustomerStatus::Merged {
                            match self.current(c.id).await {
                                Ok(current) => known.insert(c.id, current.id),
                                Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
                            };
                        } else {
                            known.insert(c.id, c.id);
                        }
                    }
                }
                Err(e) => return items.iter().map(|_| Err(e.clone().into())).collect(),
            }
        }
        // Identifier sets already resolved in this batch (a phone's upload
        // names a few dozen counterparts in hundreds of events): the known
        // and the new ones at once, the others as they come.
        let batch::Preresolved {
            found: mut resolved_in_batch,
            mut created,
        } = self.preresolve(&items).await;
        let mut outcomes: Vec<Result<Recorded, CrmError>> = Vec::with_capacity(items.len());
        let mut to_insert: Vec<Engagement> = Vec::with_capacity(items.len());
        let mut slots: Vec<usize> = Vec::with_capacity(items.len());
        for mut item in items {
            let resolved = match item.target {
                EngagementTarget::Customer(id) => match known.get(&id) {
                    Some(current) => Ok((*current, false)),
                    None => Err(CrmError::CustomerNotFound(id)),
                },
                EngagementTarget::Identify { name, identifiers } => {
                    if identifiers.is_empty() {
                        Err(CrmError::Invalid(vec![FieldError::new(
                            "customer",
                            "give a phone or an email to identify the customer",
                        )]))
                    } else {
                        item.source.via = self.via(&identifiers);
                        let memo_key = batch::memo_key(&identifiers);
                        match (
                            clean_name(name.as_deref(), "customer.name"),
                            resolved_in_batch.get(&memo_key).copied(),
                        ) {
                            (Err(e), _) => Err(e),
                            // The same identifiers earlier in this batch: the
                            // same customer, without resolving again (unless
                            // this item could give it the name it lacks).
                            (Ok(name), Some((id, named))) if named || name.is_none() => {
                                Ok((id, created.remove(&id)))
                            }
                            (Ok(name), _) => self
                                .resolve(name.as_deref(), &identifiers, None)
                                .await
                                .map(|(c, created)| {
                                    resolved_in_batch.insert(memo_key, (c.id, c.name.is_some()));
                                    (c.id, created)
                                }),
                        }
                    }
                }
                EngagementTarget::CustomerWith { id, identifiers } => {
                    item.source.via = self.via(&identifiers);
                    self.resolve_with(None, &identifiers, None, Some(id))
                        .await
                        .map(|(c, created)| (c.id, created))
                }
            };
            match resolved {
                Ok((customer_id, customer_created)) => {
                    known.insert(customer_id, customer_id);
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
        let targets: Vec<CustomerId> = to_insert
            .iter()
            .map(|e| e.customer_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        match self.store.insert_engagements(&to_insert).await {
            Ok(results) => {
                let mut events = Vec::new();
                for ((engagement, result), slot) in to_insert
                    .into_iter()
                    .zip(results)
                    .zip(slots.iter().copied())
                {
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
                return outcomes;
            }
        }
        // A customer merged while we wrote: its new engagements follow it.
        if let Ok(now) = self.store.get_customers(&targets).await {
            for c in now
                .into_iter()
                .filter(|c| c.status == CustomerStatus::Merged)
            {
                match self.settle(c.id).await {
                    Ok(survivor) => {
                        for r in outcomes.iter_mut().flatten() {
                            if r.customer_id == c.id {
                                r.customer_id = survivor.id;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, customer = %c.id, "cannot move engagements of a merged customer yet")
                    }
                }
            }
        }
        outcomes
    }

    /// The identifier key an engagement came through: the first one that can
    /// link (not anonymous when there is another).
    fn via(&self, identifiers: &[Identifier]) -> Option<String> {
        identifiers
            .iter()
            .filter(|i| self.policy.blocked_reason(i).is_none())
            .min_by_key(|i| matches!(i, Identifier::Anonymous(_)))
            .or_else(|| identifiers.first())
            .map(Identifier::key)
    }
}

/// A new customer with these identifiers on its profile.
fn new_customer<'a>(
    name: Option<&str>,
    identifiers: impl Iterator<Item = &'a Identifier>,
    status: Option<CustomerStatus>,
) -> Customer {
    let mut c = Customer::new(CustomerId::new(), name.map(str::to_string), time::now());
    c.status = status.unwrap_or_default();
    for identifier in identifiers {
        c.add_identifier(identifier);
    }
    c
}

/// True when the profile lists the identifier.
fn has_identifier(customer: &Customer, identifier: &Identifier) -> bool {
    match identifier {
        Identifier::Phone(p) => customer.phones.contains(p),
        Identifier::Email(e) => customer.emails.contains(e),
        Identifier::Social { network, id } => customer.social.get(network) == Some(id),
        Identifier::Anonymous(_) => true,
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
