//! Identity linking in the service: looking identifiers up under the
//! safeguards, merging customers (automatically or by hand), undoing a
//! merge, and the history and suggestions that go with them.
//!
//! A merge is one store transaction: inside it the survivor is read again
//! (following `merged_into`, so it is active), each customer to merge is read
//! again (skipped when it is the survivor or merged already), identities and
//! engagements move, the merged customers are marked, the survivor's profile
//! is filled, the merge record is kept and `customers.merged` is appended.
//! Since the survivor is active and every merged customer was active and
//! distinct from it, `merged_into` never forms a cycle; two crossing merges
//! end with one survivor, or one of them refused. An undo is one
//! transaction too. Writes that race with a merge are redirected by the
//! store inside their own transaction (an engagement for a merged customer
//! lands on its survivor), so nothing is left behind to finish later;
//! [`Crm::settle`] remains for stores written by older versions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use async_trait::async_trait;

use super::txn::{current_in, settle_answer, Answer, MAX_CHAIN};
use super::{has_identifier, Crm, CrmError};
use crate::customer::{Customer, CustomerStatus, Identifier};
use crate::event::{Actor, DomainEvent, EventEnvelope};
use crate::ids::{CustomerId, EngagementId, MergeId};
use crate::linking::{MergeActor, MergeRecord, MergedPart, Suggestion, SuggestionReason};
use crate::store::{StoreResult, Tx, TxWork};
use crate::time::{self, Timestamp};

/// Identifiers sorted by what they can do.
#[derive(Debug, Default)]
pub(super) struct Lookup {
    /// Owned identifiers that may link: `(owner, key)`.
    pub owned: Vec<(CustomerId, String)>,
    /// Identifiers that may link and nobody owns.
    pub free: Vec<Identifier>,
    /// Blocked or shared: kept on the profile, never claimed or linked.
    pub unlinkable: Vec<Identifier>,
}

/// What an automatic merge did.
#[derive(Debug, Clone)]
pub enum MergeOutcome {
    /// The customers are one now; this is the survivor.
    Merged(Customer),
    /// A safeguard stopped it (a suggestion was kept); the oldest customer.
    Refused(Customer),
}

/// One line of a customer's merge history.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub merge_id: MergeId,
    /// `merge` or `undo`.
    pub action: &'static str,
    #[schema(value_type = String, format = DateTime)]
    pub at: String,
    /// A user (by id), or `auto` with the identifier that linked them.
    pub by: MergeActor,
    pub survivor_id: CustomerId,
    pub merged_ids: Vec<CustomerId>,
}

impl Crm {
    /// Sorts identifiers into owned, free and unlinkable (blocked by the
    /// policy, or marked shared), one store read each.
    pub(super) async fn look_up(&self, identifiers: &[Identifier]) -> Result<Lookup, CrmError> {
        let mut out = Lookup::default();
        for identifier in identifiers {
            if self.policy.blocked_reason(identifier).is_some() {
                out.unlinkable.push(identifier.clone());
                continue;
            }
            let key = identifier.key();
            match self.store.identity(&key).await? {
                Some(info) if info.shared => out.unlinkable.push(identifier.clone()),
                Some(info) => match info.owner {
                    Some(owner) => out.owned.push((owner, key)),
                    None => out.free.push(identifier.clone()),
                },
                None => out.free.push(identifier.clone()),
            }
        }
        Ok(out)
    }

    /// The customer, or the one it was merged into; `None` when erased.
    pub(super) async fn current_opt(&self, id: CustomerId) -> Result<Option<Customer>, CrmError> {
        let mut at = id;
        for _ in 0..MAX_CHAIN {
            let Some(c) = self.store.get_customer(at).await? else {
                return Ok(None);
            };
            match (c.status, c.merged_into) {
                (CustomerStatus::Merged, Some(next)) if next != at => at = next,
                _ => return Ok(Some(c)),
            }
        }
        Err(CrmError::Contention)
    }

    /// [`Crm::current_opt`], with erased customers an error.
    pub(super) async fn current(&self, id: CustomerId) -> Result<Customer, CrmError> {
        self.current_opt(id)
            .await?
            .ok_or(CrmError::CustomerNotFound(id))
    }

    /// Moves whatever a merged customer still holds (identities or
    /// engagements an older version left on it) to the customer it was
    /// merged into, in one transaction (see [`Crm::repair`]). Returns that
    /// customer; an active customer is returned as it is.
    pub async fn settle(&self, id: CustomerId) -> Result<Customer, CrmError> {
        self.repair_merged(id).await?;
        self.current(id).await
    }

    /// An undone merge between two of `ids`: it keeps them from being merged
    /// automatically again (see [`MergeRecord::protects`]).
    pub async fn undone_merge_between(
        &self,
        ids: &[CustomerId],
    ) -> StoreResult<Option<MergeRecord>> {
        for a in ids {
            for m in self.store.merges_of(*a).await? {
                if ids.iter().any(|b| m.protects(*a, *b)) {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    /// What stops these customers from being merged automatically: an undone
    /// merge between two of them, or the caps on phones and emails.
    pub(super) async fn merge_blocker(
        &self,
        customers: &[Customer],
    ) -> Result<Option<(SuggestionReason, String)>, CrmError> {
        let ids: Vec<CustomerId> = customers.iter().map(|c| c.id).collect();
        if let Some(m) = self.undone_merge_between(&ids).await? {
            return Ok(Some((
                SuggestionReason::UndoneMerge,
                format!(
                    "a merge of these customers was undone ({}); merge them by hand if they are one person",
                    m.id
                ),
            )));
        }
        let phones: BTreeSet<_> = customers.iter().flat_map(|c| c.phones.iter()).collect();
        let emails: BTreeSet<_> = customers.iter().flat_map(|c| c.emails.iter()).collect();
        if !self.policy.within_caps(phones.len(), emails.len()) {
            return Ok(Some((
                SuggestionReason::IdentifierCap,
                format!(
                    "merged they would have {} phones and {} emails (at most {} and {})",
                    phones.len(),
                    emails.len(),
                    self.policy.max_phones,
                    self.policy.max_emails
                ),
            )));
        }
        Ok(None)
    }

    /// Keeps a suggestion for each pair (oldest customer with each other one).
    pub(super) async fn suggest(
        &self,
        customers: &[Customer],
        reason: SuggestionReason,
        detail: &str,
    ) -> Result<(), CrmError> {
        let mut sorted: Vec<&Customer> = customers.iter().collect();
        sorted.sort_by_key(|c| (c.created_at, c.id));
        let Some((first, rest)) = sorted.split_first() else {
            return Ok(());
        };
        let score = match reason {
            SuggestionReason::UndoneMerge => 0.9,
            SuggestionReason::IdentifierCap => 0.8,
            SuggestionReason::SimilarProfile => 0.5,
        };
        for other in rest {
            self.store
                .upsert_suggestion(&Suggestion::new(first.id, other.id, reason, detail, score))
                .await?;
        }
        Ok(())
    }

    /// Merges customers that one write named together into the oldest of
    /// them, unless a safeguard says no.
    pub(super) async fn merge_auto(
        &self,
        mut customers: Vec<Customer>,
        identifier: &str,
    ) -> Result<MergeOutcome, CrmError> {
        customers.sort_by_key(|c| (c.created_at, c.id));
        let Some(survivor) = customers.first().cloned() else {
            return Err(CrmError::Contention);
        };
        if let Some((reason, detail)) = self.merge_blocker(&customers).await? {
            tracing::info!(survivor = %survivor.id, ?reason, "merge refused by a safeguard; suggestion kept");
            self.suggest(&customers, reason, &detail).await?;
            return Ok(MergeOutcome::Refused(survivor));
        }
        let others: Vec<CustomerId> = customers[1..].iter().map(|c| c.id).collect();
        let by = MergeActor::Auto {
            identifier: identifier.to_string(),
        };
        match self.merge_into(survivor.id, &others, by).await {
            Ok((_, c)) => Ok(MergeOutcome::Merged(c)),
            // Somebody else merged them first.
            Err(CrmError::Refused(_)) => Ok(MergeOutcome::Merged(self.current(survivor.id).await?)),
            Err(e) => Err(e),
        }
    }

    /// Merges `others` into `survivor` by hand: the survivor's own values win,
    /// empty fields are filled from the others.
    ///
    /// Every id must name a customer as it is: one that was merged is
    /// refused with [`CrmError::CustomerMerged`] (checked again inside the
    /// merge's transaction), so that a merge meant for one person never
    /// lands on whoever it went into.
    pub async fn merge_customers(
        &self,
        survivor: CustomerId,
        others: &[CustomerId],
        user_id: &str,
    ) -> Result<(MergeRecord, Customer), CrmError> {
        let survivor = self.writable(survivor).await?;
        let mut ids = Vec::new();
        for id in others {
            let c = self.writable(*id).await?;
            if c.id != survivor.id && !ids.contains(&c.id) {
                ids.push(c.id);
            }
        }
        if ids.is_empty() {
            return Err(CrmError::Refused(
                "nothing to merge: every id is this customer".into(),
            ));
        }
        let by = MergeActor::User {
            user_id: user_id.to_string(),
        };
        let mut work = Merge::new(survivor.id, &ids, &by, true);
        let (record, customer) = self.run_tx(&mut work, |w| w.answer.take()).await?;
        tracing::info!(merge = %record.id, survivor = %record.survivor_id, merged = record.merged_ids.len(), "customers merged");
        Ok((record, customer))
    }

    /// Merges customers that a confirmed staff create named together
    /// ([`super::LinkMode::Merge`]) into the oldest of them, as that user; no
    /// safeguard stops it, as none stops the merge route. Returns the
    /// survivor.
    pub(super) async fn merge_confirmed(
        &self,
        mut customers: Vec<Customer>,
        user_id: &str,
    ) -> Result<Customer, CrmError> {
        customers.sort_by_key(|c| (c.created_at, c.id));
        let Some(survivor) = customers.first().map(|c| c.id) else {
            return Err(CrmError::Contention);
        };
        let others: Vec<CustomerId> = customers[1..].iter().map(|c| c.id).collect();
        let by = MergeActor::User {
            user_id: user_id.to_string(),
        };
        match self.merge_into(survivor, &others, by).await {
            Ok((_, c)) => Ok(c),
            // Somebody else merged them first.
            Err(CrmError::Refused(_)) => self.current(survivor).await,
            Err(e) => Err(e),
        }
    }

    /// The merge itself, one transaction (see the module documentation).
    async fn merge_into(
        &self,
        survivor: CustomerId,
        others: &[CustomerId],
        by: MergeActor,
    ) -> Result<(MergeRecord, Customer), CrmError> {
        let mut work = Merge::new(survivor, others, &by, false);
        let (record, customer) = self.run_tx(&mut work, |w| w.answer.take()).await?;
        tracing::info!(merge = %record.id, survivor = %record.survivor_id, merged = record.merged_ids.len(), "customers merged");
        Ok((record, customer))
    }

    /// Undoes a merge, in one transaction: the merged customers come back
    /// with the profile, identities and engagements they had; engagements
    /// recorded since go to whichever of them owns the identifier they came
    /// through. The pair is protected from automatic merging afterwards.
    /// Returns the customers, survivor first.
    pub async fn undo_merge(&self, id: MergeId, user_id: &str) -> Result<Vec<Customer>, CrmError> {
        let mut work = Undo {
            id,
            user_id,
            answer: None,
        };
        let customer_ids = self.run_tx(&mut work, |w| w.answer.take()).await?;
        tracing::info!(merge = %id, restored = customer_ids.len().saturating_sub(1), "merge undone");
        let mut out = Vec::new();
        for id in customer_ids {
            out.extend(self.store.get_customer(id).await?);
        }
        Ok(out)
    }

    /// Merges and un-merges that touched the customer, oldest first.
    pub async fn history(&self, id: CustomerId) -> Result<Vec<HistoryEntry>, CrmError> {
        if self.store.get_customer(id).await?.is_none() {
            return Err(CrmError::CustomerNotFound(id));
        }
        let mut out: Vec<(Timestamp, HistoryEntry)> = Vec::new();
        for m in self.store.merges_of(id).await? {
            out.push((
                m.at,
                HistoryEntry {
                    merge_id: m.id,
                    action: "merge",
                    at: time::format(&m.at),
                    by: m.by.clone(),
                    survivor_id: m.survivor_id,
                    merged_ids: m.merged_ids.clone(),
                },
            ));
            if let Some(at) = m.undone_at {
                out.push((
                    at,
                    HistoryEntry {
                        merge_id: m.id,
                        action: "undo",
                        at: time::format(&at),
                        by: MergeActor::User {
                            user_id: m.undone_by.clone().unwrap_or_default(),
                        },
                        survivor_id: m.survivor_id,
                        merged_ids: m.merged_ids.clone(),
                    },
                ));
            }
        }
        out.sort_by_key(|(at, _)| *at);
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    /// Marks an identifier shared (a switchboard): it no longer links anybody,
    /// and new customers may list it too.
    pub async fn set_shared(&self, identifier: &Identifier, shared: bool) -> Result<(), CrmError> {
        self.store
            .set_identity_shared(&identifier.key(), shared)
            .await?;
        Ok(())
    }

    /// The keys of the customer's identifiers that are marked shared, in the
    /// profile's order.
    pub async fn shared_identifiers(&self, customer: &Customer) -> Result<Vec<String>, CrmError> {
        let keys: Vec<String> = customer.identifiers().iter().map(Identifier::key).collect();
        if keys.is_empty() {
            return Ok(keys);
        }
        let infos = self.store.identities(&keys).await?;
        Ok(keys
            .into_iter()
            .zip(infos)
            .filter(|(_, info)| info.is_some_and(|i| i.shared))
            .map(|(key, _)| key)
            .collect())
    }

    /// Dismisses the suggested pair ("not the same person"): it is not
    /// listed or suggested again. False when the pair was never suggested.
    pub async fn dismiss_duplicate(&self, a: CustomerId, b: CustomerId) -> Result<bool, CrmError> {
        Ok(self.store.dismiss_suggestion(a, b, time::now()).await?)
    }

    /// Suggested duplicates still open (both customers exist, neither merged,
    /// not dismissed), most likely first.
    pub async fn duplicates(&self, limit: usize) -> Result<Vec<Suggestion>, CrmError> {
        const SCAN: usize = 500;
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_suggestions(after.as_deref(), SCAN).await?;
            let ids: Vec<CustomerId> = page
                .iter()
                .flat_map(|s| s.customer_ids)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let active: BTreeSet<CustomerId> = self
                .store
                .get_customers(&ids)
                .await?
                .into_iter()
                .filter(|c| c.status != CustomerStatus::Merged)
                .map(|c| c.id)
                .collect();
            out.extend(
                page.iter()
                    .filter(|s| s.dismissed_at.is_none())
                    .filter(|s| s.customer_ids.iter().all(|id| active.contains(id)))
                    .cloned(),
            );
            if page.len() < SCAN {
                break;
            }
            after = page.last().map(Suggestion::key);
        }
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.at.cmp(&a.at))
                .then(a.key().cmp(&b.key()))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// Keeps a suggestion found outside a write (the duplicate finder).
    pub async fn keep_suggestion(&self, suggestion: &Suggestion) -> Result<(), CrmError> {
        Ok(self.store.upsert_suggestion(suggestion).await?)
    }
}

impl From<&MergeActor> for Actor {
    fn from(by: &MergeActor) -> Self {
        match by {
            MergeActor::User { user_id } => Actor::User(user_id.clone()),
            MergeActor::Auto { .. } => Actor::Auto,
        }
    }
}

/// The merge transaction.
pub(super) struct Merge<'a> {
    survivor: CustomerId,
    others: &'a [CustomerId],
    by: &'a MergeActor,
    /// The ids were named by a caller: one that is merged (now, as the
    /// transaction reads it) refuses the merge instead of being followed.
    strict: bool,
    answer: Answer<(MergeRecord, Customer)>,
}

impl<'a> Merge<'a> {
    pub(super) fn new(
        survivor: CustomerId,
        others: &'a [CustomerId],
        by: &'a MergeActor,
        strict: bool,
    ) -> Self {
        Merge {
            survivor,
            others,
            by,
            strict,
            answer: None,
        }
    }
}

#[async_trait]
impl TxWork for Merge<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.merge(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

/// Refuses a merged customer named by a caller.
async fn refuse_merged(tx: &mut dyn Tx, id: CustomerId) -> Result<(), CrmError> {
    let c = tx
        .customer(id)
        .await?
        .ok_or(CrmError::CustomerNotFound(id))?;
    if c.status != CustomerStatus::Merged {
        return Ok(());
    }
    let merged_into = current_in(tx, id)
        .await?
        .ok_or(CrmError::CustomerNotFound(id))?
        .id;
    Err(CrmError::CustomerMerged { id, merged_into })
}

impl Merge<'_> {
    pub(super) async fn merge(&self, tx: &mut dyn Tx) -> Result<(MergeRecord, Customer), CrmError> {
        self.merge_recording(tx, None).await
    }

    /// The merge, keeping `recorded_before` as the survivor's profile before
    /// it in the record (what an undo takes back to) when the same
    /// transaction changed the survivor first.
    pub(super) async fn merge_recording(
        &self,
        tx: &mut dyn Tx,
        recorded_before: Option<Customer>,
    ) -> Result<(MergeRecord, Customer), CrmError> {
        let now = time::now();
        if self.strict {
            refuse_merged(tx, self.survivor).await?;
            for id in self.others {
                refuse_merged(tx, *id).await?;
            }
        }
        let mut survivor = current_in(tx, self.survivor)
            .await?
            .ok_or(CrmError::CustomerNotFound(self.survivor))?;
        let mut currents: Vec<Customer> = Vec::new();
        for id in self.others {
            if let Some(other) = current_in(tx, *id).await? {
                if other.id != survivor.id && !currents.iter().any(|c| c.id == other.id) {
                    currents.push(other);
                }
            }
        }
        if matches!(self.by, MergeActor::Auto { .. }) {
            // Automatic merges always go into the oldest customer, even when
            // a concurrent merge changed where the others are now.
            if let Some(oldest) = currents
                .iter()
                .filter(|c| (c.created_at, c.id) < (survivor.created_at, survivor.id))
                .min_by_key(|c| (c.created_at, c.id))
                .cloned()
            {
                currents.retain(|c| c.id != oldest.id);
                currents.push(survivor);
                survivor = oldest;
            }
        }
        if currents.is_empty() {
            return Err(CrmError::Refused(
                "nothing to merge: the customers are merged already".into(),
            ));
        }
        let before = survivor.clone();
        let mut parts: Vec<MergedPart> = Vec::new();
        for other in currents {
            let identities = tx.move_identities(other.id, survivor.id, None).await?;
            let engagements = tx
                .move_engagements(other.id, survivor.id, None, now)
                .await?;
            let mut marked = tx
                .customer(other.id)
                .await?
                .unwrap_or_else(|| other.clone());
            marked.status = CustomerStatus::Merged;
            marked.merged_into = Some(survivor.id);
            marked.updated_at = now;
            tx.put_customer(&marked).await?;
            parts.push(MergedPart {
                before: other,
                identities,
                engagements,
            });
        }
        // The survivor as the moves left it (counts), with what it lacked.
        let mut merged = tx.customer(survivor.id).await?.unwrap_or(survivor);
        for identifier in parts
            .iter()
            .flat_map(|p| p.before.identifiers())
            .filter(|i| !has_identifier(&before, i))
            .collect::<BTreeSet<_>>()
        {
            merged.add_identifier(&identifier);
        }
        if merged.name.is_none() {
            merged.name = parts.iter().find_map(|p| p.before.name.clone());
        }
        merged.updated_at = now;
        tx.put_customer(&merged).await?;
        let record = MergeRecord {
            id: MergeId::new(),
            survivor_id: merged.id,
            merged_ids: parts.iter().map(|p| p.before.id).collect(),
            by: self.by.clone(),
            at: now,
            survivor_before: recorded_before.unwrap_or(before),
            parts,
            undone_at: None,
            undone_by: None,
            repaired: false,
        };
        tx.put_merge(&record).await?;
        tx.append_events(&[EventEnvelope::about(
            record.survivor_id,
            DomainEvent::CustomersMerged {
                merge_id: Some(record.id),
                survivor_id: record.survivor_id,
                merged_ids: record.merged_ids.clone(),
                by: self.by.into(),
            },
        )])
        .await?;
        Ok((record, merged))
    }
}

/// The undo transaction; answers the customers' ids, survivor first.
struct Undo<'a> {
    id: MergeId,
    user_id: &'a str,
    answer: Answer<Vec<CustomerId>>,
}

#[async_trait]
impl TxWork for Undo<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.undo(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

impl Undo<'_> {
    async fn undo(&self, tx: &mut dyn Tx) -> Result<Vec<CustomerId>, CrmError> {
        let id = self.id;
        let mut merge = tx.merge(id).await?.ok_or(CrmError::MergeNotFound(id))?;
        if merge.undone_at.is_some() {
            return Err(CrmError::Refused(format!("merge {id} is undone already")));
        }
        let holder = current_in(tx, merge.survivor_id)
            .await?
            .ok_or(CrmError::CustomerNotFound(merge.survivor_id))?;
        let now = time::now();
        let survivor_had: BTreeSet<Identifier> =
            merge.survivor_before.identifiers().into_iter().collect();
        let mut from_parts: BTreeSet<Identifier> = BTreeSet::new();
        let mut owner_of: HashMap<String, CustomerId> = HashMap::new();
        let mut moved_back: BTreeSet<EngagementId> = BTreeSet::new();
        let mut restored_ids = Vec::new();
        for part in &merge.parts {
            let Some(stored) = tx.customer(part.before.id).await? else {
                tracing::warn!(customer = %part.before.id, "a merged customer is gone; cannot restore it");
                continue;
            };
            let mut c = part.before.clone();
            if c.status == CustomerStatus::Merged {
                c.status = CustomerStatus::Active;
            }
            c.merged_into = None;
            c.updated_at = now.max(stored.updated_at);
            tx.put_customer(&c).await?;
            tx.move_identities(holder.id, c.id, Some(&part.identities))
                .await?;
            moved_back.extend(
                tx.move_engagements(holder.id, c.id, Some(&part.engagements), now)
                    .await?,
            );
            for key in &part.identities {
                owner_of.insert(key.clone(), c.id);
            }
            for identifier in c.identifiers() {
                owner_of.entry(identifier.key()).or_insert(c.id);
                if !survivor_had.contains(&identifier) {
                    from_parts.insert(identifier);
                }
            }
            restored_ids.push(c.id);
        }
        // Engagements that arrived after the merge, through an identifier
        // that a restored customer owns again.
        let mut follow: BTreeMap<CustomerId, Vec<EngagementId>> = BTreeMap::new();
        for e in tx.engagement_refs(holder.id).await? {
            if e.recorded_at < merge.at || moved_back.contains(&e.id) {
                continue;
            }
            if let Some(owner) = e.via.as_ref().and_then(|k| owner_of.get(k)) {
                follow.entry(*owner).or_default().push(e.id);
            }
        }
        for (owner, ids) in follow {
            tx.move_engagements(holder.id, owner, Some(&ids), now)
                .await?;
        }
        // The survivor loses what the merge gave it.
        let mut survivor = tx
            .customer(holder.id)
            .await?
            .ok_or(CrmError::CustomerNotFound(holder.id))?;
        survivor
            .phones
            .retain(|p| !from_parts.contains(&Identifier::Phone(p.clone())));
        survivor
            .emails
            .retain(|e| !from_parts.contains(&Identifier::Email(e.clone())));
        survivor.social.retain(|network, id| {
            !from_parts.contains(&Identifier::Social {
                network: network.clone(),
                id: id.clone(),
            })
        });
        if merge.survivor_before.name.is_none()
            && merge
                .parts
                .iter()
                .any(|p| p.before.name.is_some() && p.before.name == survivor.name)
        {
            survivor.name = None;
        }
        survivor.updated_at = now.max(survivor.updated_at);
        tx.put_customer(&survivor).await?;
        merge.undone_at = Some(now);
        merge.undone_by = Some(self.user_id.to_string());
        tx.put_merge(&merge).await?;
        let mut customer_ids = vec![holder.id];
        customer_ids.extend(restored_ids.iter().copied());
        tx.append_events(&[EventEnvelope::about(
            holder.id,
            DomainEvent::CustomersUnmerged {
                merge_id: id,
                customer_ids: customer_ids.clone(),
                by: Actor::User(self.user_id.to_string()),
            },
        )])
        .await?;
        Ok(customer_ids)
    }
}
