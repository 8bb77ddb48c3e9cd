//! The CRM's domain operations over any [`Store`] and [`EventStream`]: creating
//! and resolving customers from identifiers, patching and erasing them, and
//! recording engagements. HTTP handlers call these and nothing below them.
//!
//! Linking is race-free because claiming an identifier is an insert keyed by
//! the identifier: a new customer is inserted together with its identifiers
//! or not at all, and a writer that loses a claim resolves again, now finding
//! the winner.
//!
//! Every change commits with its events in one store transaction (see
//! [`crate::store`]); this layer never publishes. It wakes the relay after a
//! write so that the events move on at once.

mod batch;
mod import;
mod linking;
mod repair;
mod txn;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use linking::Merge;
pub use linking::{HistoryEntry, MergeOutcome};
pub use repair::RepairReport;
pub use txn::FaultInjection;
use txn::{current_in, settle_answer, Answer};

use crate::customer::{Customer, CustomerStatus, Identifier};
use crate::engagement::{Engagement, EngagementDetail, Source};
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{CustomerId, EngagementId, MergeId};
use crate::linking::{LinkPolicy, MergeActor};
use crate::store::{
    Claim, CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
    StoreResult, Tx, TxWork,
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
    /// A staff edit named identifiers that other customers own
    /// ([`LinkMode::Confirm`]): nothing was changed. Merging them is a
    /// separate, explicit step.
    #[error("an identifier belongs to another customer")]
    IdentifierTaken { customers: Vec<CustomerId> },
    /// A write named a customer that was merged: it is refused, so that it
    /// does not silently change the survivor. Reads follow `merged_into`.
    #[error("customer {id} was merged into {merged_into}")]
    CustomerMerged {
        id: CustomerId,
        merged_into: CustomerId,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What identifiers that other customers own do to a write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LinkMode {
    /// Evidence from a channel (engagements, page views, mobile uploads,
    /// API-key writes): the identifiers link, and customers they name
    /// together are merged into the oldest, under the safeguards.
    #[default]
    Auto,
    /// A staff hand edit: an identifier another customer owns refuses the
    /// whole write with [`CrmError::IdentifierTaken`]; nothing is changed or
    /// merged. Decided inside the write's transaction, so a concurrent
    /// writer cannot slip a merge in either.
    Confirm,
    /// A staff edit that confirmed the merge (`"merge": true`): the customers
    /// the identifiers name are merged by that user, as the merge route
    /// does (an edited customer stays the survivor; a new one goes into the
    /// oldest named).
    Merge { user_id: String },
    /// Evidence that names its customer (`/v1/track` with a `customer_id`):
    /// an identifier must be new or already that customer's, else the write
    /// is refused with [`CrmError::IdentifierTaken`] and nothing is written.
    /// Only the visitor id of a customer known by nothing else (the same
    /// visitor before logging in) still joins it.
    Attach,
}

/// What a create did with the customers its identifiers named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// No identifier was known: a new customer.
    Created,
    /// The identifiers named one customer; new ones were attached to it.
    Linked,
    /// They named several customers, which were merged.
    Merged,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Created => "created",
            Resolution::Linked => "linked",
            Resolution::Merged => "merged",
        }
    }
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
    policy: Arc<LinkPolicy>,
    /// Told after each write, so that the relay moves its events at once.
    relay_wake: Arc<Notify>,
    /// Told after each write too, for relays in other processes (crm-api
    /// passes it on through Redis when several instances share a store).
    remote_wake: Arc<Notify>,
    fault: Arc<FaultInjection>,
}

impl Crm {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Crm {
            store,
            policy: Arc::new(LinkPolicy::default()),
            relay_wake: Arc::new(Notify::new()),
            remote_wake: Arc::new(Notify::new()),
            fault: Arc::new(FaultInjection::default()),
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

    /// What a relay waits on between polls of the event log.
    pub fn relay_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.relay_wake)
    }

    /// What is told after each write for the relays of other processes.
    pub fn remote_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.remote_wake)
    }

    /// Tells the relays that events wait: after a write that committed
    /// events without going through this service (call signals).
    pub fn wake_relay(&self) {
        self.relay_wake.notify_one();
        self.remote_wake.notify_one();
    }

    /// The test hook that fails a transaction part-way.
    #[doc(hidden)]
    pub fn fault_injection(&self) -> &FaultInjection {
        &self.fault
    }

    /// Events committed and not relayed yet (for `/readyz`).
    pub async fn pending_events(&self) -> Result<u64, CrmError> {
        Ok(self.store.unrelayed_count().await?)
    }

    /// Creates a customer, or when an identifier already belongs to one,
    /// attaches the new identifiers to it (evidence: [`LinkMode::Auto`]).
    /// Returns the customer and whether it was created.
    pub async fn create_customer(
        &self,
        input: CustomerInput,
    ) -> Result<(Customer, bool), CrmError> {
        let (customer, how) = self.create_customer_with(input, LinkMode::Auto).await?;
        Ok((customer, how == Resolution::Created))
    }

    /// [`Crm::create_customer`] under a [`LinkMode`]: with
    /// [`LinkMode::Confirm`] (a staff create) an identifier that any customer
    /// owns answers [`CrmError::IdentifierTaken`] and nothing is created.
    pub async fn create_customer_with(
        &self,
        input: CustomerInput,
        mode: LinkMode,
    ) -> Result<(Customer, Resolution), CrmError> {
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
            self.wake_relay();
            return Ok((c, Resolution::Created));
        }
        self.resolve_with(
            name.as_deref(),
            &input.identifiers,
            input.status,
            None,
            &mode,
        )
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
        let (customer, how) = self
            .resolve_with(name, identifiers, status, None, &LinkMode::Auto)
            .await?;
        Ok((customer, how == Resolution::Created))
    }

    /// [`Crm::resolve`] under a [`LinkMode`], with a customer the identifiers
    /// are known to name too.
    async fn resolve_with(
        &self,
        name: Option<&str>,
        identifiers: &[Identifier],
        status: Option<CustomerStatus>,
        pinned: Option<CustomerId>,
        mode: &LinkMode,
    ) -> Result<(Customer, Resolution), CrmError> {
        let identifiers: Vec<Identifier> = identifiers
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut merged = false;
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
                            // An identity an older version left on a merged
                            // customer.
                            self.settle(*owner).await?;
                        }
                        owners.push((c.id, key));
                        named.insert(c.id, c);
                    }
                    None => {
                        // The owner was erased between our reads (or an
                        // older version left the identity behind).
                        self.release_orphan(key, *owner).await?;
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
            if let (LinkMode::Attach, Some(pinned)) = (mode, pinned) {
                let pinned = self.current(pinned).await?.id;
                let taken: BTreeSet<CustomerId> = owners
                    .iter()
                    .filter(|(owner, key)| {
                        *owner != pinned
                            && !(key.starts_with("anon:")
                                && named.get(owner).is_some_and(|c| {
                                    c.emails.is_empty()
                                        && c.phones.is_empty()
                                        && c.social.is_empty()
                                }))
                    })
                    .map(|(owner, _)| *owner)
                    .collect();
                if !taken.is_empty() {
                    return Err(CrmError::IdentifierTaken {
                        customers: taken.into_iter().collect(),
                    });
                }
            }
            if *mode == LinkMode::Confirm && !named.is_empty() {
                // A staff create names somebody else's identifier: the staff
                // decide (merge, or edit that customer). A create that lost a
                // claim to a concurrent one ends here too, on its retry.
                return Err(CrmError::IdentifierTaken {
                    customers: named.into_keys().collect(),
                });
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
                        return Ok((created, Resolution::Created));
                    }
                    continue;
                }
                1 => named.into_values().next().ok_or(CrmError::Contention)?,
                _ => match mode {
                    LinkMode::Merge { user_id } => {
                        merged = true;
                        self.merge_confirmed(named.into_values().collect(), user_id)
                            .await?
                    }
                    _ => {
                        let identifier = linked_by.unwrap_or_default();
                        match self
                            .merge_auto(named.into_values().collect(), &identifier)
                            .await?
                        {
                            MergeOutcome::Merged(c) => {
                                merged = true;
                                c
                            }
                            MergeOutcome::Refused(c) => c,
                        }
                    }
                },
            };
            let mut work = Attach {
                target: target.id,
                free: &lookup.free,
                unlinkable: &lookup.unlinkable,
                name,
                answer: None,
            };
            let (customer, lost) = self.run_tx(&mut work, |w| w.answer.take()).await?;
            if lost || customer.status == CustomerStatus::Merged {
                // Someone else took an identifier, or merged our customer,
                // meanwhile: look again, which now sees where things are.
                continue;
            }
            let how = if merged {
                Resolution::Merged
            } else {
                Resolution::Linked
            };
            return Ok((customer, how));
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
        self.wake_relay();
        Ok(Some(c))
    }

    /// Frees an identifier whose owner is gone.
    async fn release_orphan(&self, key: &str, owner: CustomerId) -> Result<(), CrmError> {
        let mut work = ReleaseOrphan {
            key,
            owner,
            answer: None,
        };
        self.run_tx(&mut work, |w| w.answer.take()).await
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

    /// The customer itself for a write: an id that was merged is refused
    /// with [`CrmError::CustomerMerged`] (reads follow it; writes do not, so
    /// that an edit meant for one person never lands on another).
    pub async fn writable(&self, id: CustomerId) -> Result<Customer, CrmError> {
        let c = self
            .store
            .get_customer(id)
            .await?
            .ok_or(CrmError::CustomerNotFound(id))?;
        if c.status == CustomerStatus::Merged {
            let merged_into = self.current(id).await?.id;
            return Err(CrmError::CustomerMerged { id, merged_into });
        }
        Ok(c)
    }

    /// Applies a merge patch; identifier changes claim and release identities
    /// so that they stay consistent with the profile, in one transaction
    /// with the profile and its event. A merged id is refused
    /// ([`CrmError::CustomerMerged`]). What an added identifier that another
    /// customer owns does depends on `mode`: [`LinkMode::Confirm`] refuses
    /// the patch ([`CrmError::IdentifierTaken`]), [`LinkMode::Merge`] merges
    /// that customer into this one in the same transaction, and
    /// [`LinkMode::Auto`] merges them into the oldest afterwards.
    pub async fn patch_customer(
        &self,
        id: CustomerId,
        patch: CustomerPatch,
        mode: LinkMode,
    ) -> Result<Customer, CrmError> {
        let current = self.writable(id).await?;
        let next = apply_patch(&current, &patch)?;
        if next == current {
            return Ok(current);
        }
        let before: BTreeSet<Identifier> = current.identifiers().into_iter().collect();
        let after: BTreeSet<Identifier> = next.identifiers().into_iter().collect();
        let added: Vec<Identifier> = after.difference(&before).cloned().collect();
        let lookup = self.look_up(&added).await?;
        // Identifiers that other customers own: the patch links them.
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
            match &mode {
                LinkMode::Confirm | LinkMode::Attach => {
                    return Err(CrmError::IdentifierTaken {
                        customers: others.into_keys().collect(),
                    })
                }
                LinkMode::Auto => {
                    // Checked against the safeguards before any write.
                    let mut all = vec![current.clone()];
                    all.extend(others.values().cloned());
                    if let Some(refusal) = self.merge_blocker(&all).await? {
                        self.suggest(&all, refusal.0, &refusal.1).await?;
                        let mut customers = vec![id];
                        customers.extend(others.keys().copied());
                        return Err(CrmError::IdentifiersConflict { customers });
                    }
                }
                LinkMode::Merge { .. } => {}
            }
        }
        let claimable: BTreeSet<String> = lookup.free.iter().map(Identifier::key).collect();
        let work = Patch {
            id,
            patch: &patch,
            claimable: &claimable,
            mode: &mode,
            answer: None,
        };
        if let (LinkMode::Merge { user_id }, false) = (&mode, others.is_empty()) {
            // The edit and the merge it confirms, in one transaction.
            let ids: Vec<CustomerId> = others.keys().copied().collect();
            let by = MergeActor::User {
                user_id: user_id.clone(),
            };
            let mut both = PatchThenMerge {
                patch: work,
                merge: Merge::new(id, &ids, &by, false),
                answer: None,
            };
            let customer = self.run_tx(&mut both, |w| w.answer.take()).await?;
            tracing::info!(survivor = %customer.id, merged = ids.len(), "customers merged by a confirmed edit");
            return Ok(customer);
        }
        let mut work = work;
        let stored = self.run_tx(&mut work, |w| w.answer.take()).await?;
        if others.is_empty() {
            return Ok(stored);
        }
        let mut all = vec![stored];
        all.extend(others.into_values());
        match self.merge_auto(all, &linked_by).await? {
            MergeOutcome::Merged(c) | MergeOutcome::Refused(c) => Ok(c),
        }
    }

    /// Erases the customer and every customer merged into it, with their
    /// identities, engagements, call signals, suggestions and the merge
    /// records that name them, in one transaction with `customer.erased`.
    pub async fn delete_customer(&self, id: CustomerId) -> Result<(), CrmError> {
        let mut work = Erase { id, answer: None };
        let erased = self.run_tx(&mut work, |w| w.answer.take()).await?;
        tracing::info!(customer = %id, merged = erased.len().saturating_sub(1), "customer erased");
        Ok(())
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
                    self.resolve_with(None, &identifiers, None, Some(id), &LinkMode::Attach)
                        .await
                        .map(|(c, how)| (c.id, how == Resolution::Created))
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
        match self.store.insert_engagements(&to_insert).await {
            Ok(results) => {
                self.wake_relay();
                // Where each one is stored: a customer merged while we
                // wrote had its engagements put on the survivor, so answer
                // with that one.
                for (result, slot) in results.into_iter().zip(slots.iter().copied()) {
                    if let Some(Ok(r)) = outcomes.get_mut(slot) {
                        match result {
                            EngagementInsert::Created { customer_id } => {
                                r.customer_id = customer_id;
                            }
                            EngagementInsert::Duplicate { customer_id } => {
                                r.duplicate = true;
                                r.customer_id = customer_id;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                for slot in slots {
                    outcomes[slot] = Err(e.clone().into());
                }
                return outcomes;
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
    // Control and bidirectional characters, as the ingest parser refuses them.
    if let Err(message) = crate::ingest::check_text(name, crate::ingest::TextKind::Line) {
        return Err(CrmError::Invalid(vec![FieldError::new(field, message)]));
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

/// The profile a patch makes of `current` (validated).
fn apply_patch(current: &Customer, patch: &CustomerPatch) -> Result<Customer, CrmError> {
    let mut next = current.clone();
    if let Some(name) = &patch.name {
        next.name = clean_name(name.as_deref(), "name")?;
    }
    if let Some(emails) = &patch.emails {
        next.emails = dedup_keep_order(emails.clone());
    }
    if let Some(phones) = &patch.phones {
        next.phones = dedup_keep_order(phones.clone());
    }
    if let Some(social) = &patch.social {
        for (network, value) in social {
            match value {
                Some(v) => next.social.insert(network.clone(), v.clone()),
                None => next.social.remove(network),
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
    Ok(next)
}

/// The profile fields that differ (for `customer.updated`).
fn changed_fields(before: &Customer, after: &Customer) -> Vec<String> {
    let mut fields = Vec::new();
    if before.name != after.name {
        fields.push("name");
    }
    if before.emails != after.emails {
        fields.push("emails");
    }
    if before.phones != after.phones {
        fields.push("phones");
    }
    if before.social != after.social {
        fields.push("social");
    }
    if before.status != after.status {
        fields.push("status");
    }
    fields.into_iter().map(str::to_string).collect()
}

/// Puts identifiers on a customer: claims the free ones (losing a claim to
/// a concurrent writer is reported, not an error), lists the unlinkable ones
/// and gives it a name if it had none. Answers the customer and whether a
/// claim was lost.
struct Attach<'a> {
    target: CustomerId,
    free: &'a [Identifier],
    unlinkable: &'a [Identifier],
    name: Option<&'a str>,
    answer: Answer<(Customer, bool)>,
}

#[async_trait]
impl TxWork for Attach<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.attach(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

impl Attach<'_> {
    async fn attach(&self, tx: &mut dyn Tx) -> Result<(Customer, bool), CrmError> {
        let c = tx
            .customer(self.target)
            .await?
            .ok_or(CrmError::CustomerNotFound(self.target))?;
        if c.status == CustomerStatus::Merged {
            return Ok((c, true));
        }
        let mut next = c.clone();
        let mut lost = false;
        for identifier in self.free {
            match tx.claim(&identifier.key(), c.id).await? {
                Claim::Claimed => {
                    next.add_identifier(identifier);
                }
                Claim::OwnedBy(o) if o == c.id => {}
                Claim::OwnedBy(_) => lost = true,
            }
        }
        for identifier in self.unlinkable {
            if !has_identifier(&next, identifier) {
                next.add_identifier(identifier);
            }
        }
        if let (None, Some(name)) = (&next.name, self.name) {
            next.name = Some(name.to_string());
        }
        let fields = changed_fields(&c, &next);
        if fields.is_empty() {
            return Ok((c, lost));
        }
        next.updated_at = time::now().max(c.updated_at);
        tx.put_customer(&next).await?;
        tx.append_events(&[EventEnvelope::about(
            c.id,
            DomainEvent::CustomerUpdated { fields },
        )])
        .await?;
        Ok((next, lost))
    }
}

/// A profile edit: the patch applied to the customer as the transaction
/// reads it, new identifiers claimed, dropped ones released.
struct Patch<'a> {
    id: CustomerId,
    patch: &'a CustomerPatch,
    /// Identifiers nobody owned when the edit was checked: claimed now.
    claimable: &'a BTreeSet<String>,
    mode: &'a LinkMode,
    answer: Answer<Customer>,
}

#[async_trait]
impl TxWork for Patch<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.patch(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

impl Patch<'_> {
    async fn patch(&self, tx: &mut dyn Tx) -> Result<Customer, CrmError> {
        let current = tx
            .customer(self.id)
            .await?
            .ok_or(CrmError::CustomerNotFound(self.id))?;
        if current.status == CustomerStatus::Merged {
            // Merged since the edit was checked.
            let merged_into = current_in(tx, self.id)
                .await?
                .ok_or(CrmError::CustomerNotFound(self.id))?
                .id;
            return Err(CrmError::CustomerMerged {
                id: self.id,
                merged_into,
            });
        }
        let mut next = apply_patch(&current, self.patch)?;
        let fields = changed_fields(&current, &next);
        if fields.is_empty() {
            return Ok(current);
        }
        let before: BTreeSet<Identifier> = current.identifiers().into_iter().collect();
        let after: BTreeSet<Identifier> = next.identifiers().into_iter().collect();
        for added in after.difference(&before) {
            let key = added.key();
            if !self.claimable.contains(&key) {
                continue;
            }
            match tx.claim(&key, self.id).await? {
                Claim::Claimed => {}
                Claim::OwnedBy(o) if o == self.id => {}
                Claim::OwnedBy(other) => {
                    // Claimed by a concurrent writer since the edit was checked.
                    return Err(match self.mode {
                        LinkMode::Auto => CrmError::IdentifiersConflict {
                            customers: vec![self.id, other],
                        },
                        LinkMode::Confirm | LinkMode::Attach | LinkMode::Merge { .. } => {
                            let owner = current_in(tx, other).await?.map_or(other, |c| c.id);
                            CrmError::IdentifierTaken {
                                customers: vec![owner],
                            }
                        }
                    });
                }
            }
        }
        for removed in before.difference(&after) {
            tx.release(&removed.key(), self.id).await?;
        }
        next.updated_at = time::now().max(current.updated_at);
        tx.put_customer(&next).await?;
        tx.append_events(&[EventEnvelope::about(
            self.id,
            DomainEvent::CustomerUpdated { fields },
        )])
        .await?;
        Ok(next)
    }
}

/// A confirmed edit ([`LinkMode::Merge`]): the patch, then the merge of the
/// customers owning its identifiers into the edited one, in one transaction.
struct PatchThenMerge<'a> {
    patch: Patch<'a>,
    merge: Merge<'a>,
    answer: Answer<Customer>,
}

#[async_trait]
impl TxWork for PatchThenMerge<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.patch_then_merge(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

impl PatchThenMerge<'_> {
    async fn patch_then_merge(&self, tx: &mut dyn Tx) -> Result<Customer, CrmError> {
        // The record keeps the profile from before the edit, so that an
        // undo takes back the identifiers the merge brought.
        let before = tx.customer(self.patch.id).await?;
        let patched = self.patch.patch(tx).await?;
        match self.merge.merge_recording(tx, before).await {
            Ok((_, merged)) => Ok(merged),
            // Merged into this customer meanwhile: nothing is left to merge.
            Err(CrmError::Refused(_)) => Ok(patched),
            Err(e) => Err(e),
        }
    }
}

/// Erasure (see [`Crm::delete_customer`]); answers every id erased.
struct Erase {
    id: CustomerId,
    answer: Answer<Vec<CustomerId>>,
}

#[async_trait]
impl TxWork for Erase {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.erase(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

impl Erase {
    async fn erase(&self, tx: &mut dyn Tx) -> Result<Vec<CustomerId>, CrmError> {
        let root = tx
            .customer(self.id)
            .await?
            .ok_or(CrmError::CustomerNotFound(self.id))?;
        if root.status == CustomerStatus::Merged {
            let merged_into = current_in(tx, root.id)
                .await?
                .ok_or(CrmError::CustomerNotFound(root.id))?
                .id;
            return Err(CrmError::CustomerMerged {
                id: root.id,
                merged_into,
            });
        }
        // The person: the customer and everything merged into it (merges
        // not undone), transitively.
        let mut ids = vec![root.id];
        let mut at = 0;
        while at < ids.len() {
            let x = ids[at];
            at += 1;
            for m in tx.merges_of(x).await? {
                if m.survivor_id == x && m.undone_at.is_none() {
                    for merged in m.merged_ids {
                        if !ids.contains(&merged) {
                            ids.push(merged);
                        }
                    }
                }
            }
        }
        for id in &ids {
            for m in tx.merges_of(*id).await? {
                tx.delete_merge(m.id).await?;
            }
            tx.erase_customer(*id).await?;
        }
        tx.append_events(&[EventEnvelope::about(
            root.id,
            DomainEvent::CustomerErased {
                merged_ids: ids[1..].to_vec(),
            },
        )])
        .await?;
        Ok(ids)
    }
}

/// Frees an identifier whose owner no longer exists.
struct ReleaseOrphan<'a> {
    key: &'a str,
    owner: CustomerId,
    answer: Answer<()>,
}

#[async_trait]
impl TxWork for ReleaseOrphan<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        if tx.customer(self.owner).await?.is_none() {
            tx.release(self.key, self.owner).await?;
        }
        self.answer = Some(Ok(()));
        Ok(())
    }
}
