//! Identity linking in the service: looking identifiers up under the
//! safeguards, merging customers (automatically or by hand), finishing merges
//! that raced with other writes, undoing a merge, and the history and
//! suggestions that go with them.
//!
//! A merge is a sequence of steps that are each atomic in the store: mark the
//! merged customer (`mark_merged` refuses a customer merged already, so two
//! merges never both take it), move its identities, move its engagements,
//! fill the survivor's profile, keep the record. A write that raced with a
//! merge (an identity claimed for, or an engagement stored on, a customer that
//! was being merged) is finished by [`Crm::settle`], which moves whatever a
//! merged customer still holds to the customer it was merged into. Every step
//! only moves what the source still has, so running one twice is harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::{has_identifier, Crm, CrmError};
use crate::customer::{Customer, CustomerStatus, Identifier};
use crate::event::DomainEvent;
use crate::ids::{CustomerId, EngagementId, MergeId};
use crate::linking::{MergeActor, MergeRecord, MergedPart, Suggestion, SuggestionReason};
use crate::store::{EngagementCursor, EngagementFilter, MarkMerged};
use crate::time::{self, Timestamp};

/// Longest `merged_into` chain followed before giving up (a chain only grows
/// when a survivor is merged again).
const MAX_CHAIN: usize = 32;
/// Engagements read per page when an undo sorts the survivor's timeline.
const UNDO_PAGE: usize = 1_000;

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

    /// Moves whatever a merged customer still holds (identities claimed or
    /// engagements stored while it was being merged) to the customer it was
    /// merged into. Returns that customer; an active customer is returned as
    /// it is.
    pub async fn settle(&self, id: CustomerId) -> Result<Customer, CrmError> {
        let Some(merged) = self.store.get_customer(id).await? else {
            return Err(CrmError::CustomerNotFound(id));
        };
        if merged.status != CustomerStatus::Merged {
            return Ok(merged);
        }
        let survivor = self.current(id).await?;
        if survivor.id == id {
            return Ok(survivor);
        }
        let keys = self.store.move_identities(id, survivor.id, None).await?;
        let moved = self.store.move_engagements(id, survivor.id, None).await?;
        let mut missing: Vec<Identifier> = merged
            .identifiers()
            .into_iter()
            .chain(keys.iter().filter_map(|k| Identifier::from_key(k)))
            .filter(|i| !has_identifier(&survivor, i))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        missing.retain(|i| !matches!(i, Identifier::Anonymous(_)));
        let survivor = if missing.is_empty() {
            self.current(survivor.id).await?
        } else {
            self.store
                .add_identifiers(survivor.id, &missing, time::now())
                .await?
        };
        if !keys.is_empty() || !moved.is_empty() || !missing.is_empty() {
            self.publish(vec![DomainEvent::CustomersMerged {
                merge_id: None,
                survivor_id: survivor.id,
                merged_ids: vec![id],
            }])
            .await;
        }
        Ok(survivor)
    }

    /// What stops these customers from being merged automatically: an undone
    /// merge between two of them, or the caps on phones and emails.
    pub(super) async fn merge_blocker(
        &self,
        customers: &[Customer],
    ) -> Result<Option<(SuggestionReason, String)>, CrmError> {
        let ids: Vec<CustomerId> = customers.iter().map(|c| c.id).collect();
        for c in customers {
            for m in self.store.merges_of(c.id).await? {
                let protected = ids.iter().any(|other| m.protects(c.id, *other));
                if protected {
                    return Ok(Some((
                        SuggestionReason::UndoneMerge,
                        format!(
                            "a merge of these customers was undone ({}); merge them by hand if they are one person",
                            m.id
                        ),
                    )));
                }
            }
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
    pub async fn merge_customers(
        &self,
        survivor: CustomerId,
        others: &[CustomerId],
        user_id: &str,
    ) -> Result<(MergeRecord, Customer), CrmError> {
        let survivor = self.current(survivor).await?;
        let mut ids = Vec::new();
        for id in others {
            let c = self.current(*id).await?;
            if c.id != survivor.id && !ids.contains(&c.id) {
                ids.push(c.id);
            }
        }
        if ids.is_empty() {
            return Err(CrmError::Refused(
                "nothing to merge: every id is this customer or merged into it already".into(),
            ));
        }
        self.merge_into(
            survivor.id,
            &ids,
            MergeActor::User {
                user_id: user_id.to_string(),
            },
        )
        .await
    }

    /// The merge itself (see the module documentation for the steps).
    async fn merge_into(
        &self,
        survivor: CustomerId,
        others: &[CustomerId],
        by: MergeActor,
    ) -> Result<(MergeRecord, Customer), CrmError> {
        let mut survivor = self.current(survivor).await?;
        let mut currents: Vec<Customer> = Vec::new();
        for id in others {
            if let Some(other) = self.current_opt(*id).await? {
                currents.push(other);
            }
        }
        if matches!(by, MergeActor::Auto { .. }) {
            // Automatic merges always go into the oldest customer, even when
            // a concurrent merge changed where the others are now; so merges
            // only ever point at older customers and never form a cycle.
            if let Some(oldest) = currents
                .iter()
                .filter(|c| (c.created_at, c.id) < (survivor.created_at, survivor.id))
                .min_by_key(|c| (c.created_at, c.id))
                .cloned()
            {
                currents.push(survivor);
                survivor = oldest;
            }
        }
        let before = survivor.clone();
        let now = time::now();
        let mut parts: Vec<MergedPart> = Vec::new();
        for other in currents {
            if other.id == survivor.id || parts.iter().any(|p| p.before.id == other.id) {
                continue;
            }
            let MarkMerged::Marked(was) =
                self.store.mark_merged(other.id, survivor.id, now).await?
            else {
                continue;
            };
            let identities = self
                .store
                .move_identities(other.id, survivor.id, None)
                .await?;
            let engagements = self
                .store
                .move_engagements(other.id, survivor.id, None)
                .await?;
            parts.push(MergedPart {
                before: *was,
                identities,
                engagements,
            });
        }
        if parts.is_empty() {
            return Err(CrmError::Refused(
                "nothing to merge: the customers are merged already".into(),
            ));
        }
        let add: Vec<Identifier> = parts
            .iter()
            .flat_map(|p| p.before.identifiers())
            .filter(|i| !has_identifier(&before, i))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut merged = if add.is_empty() {
            self.current(survivor.id).await?
        } else {
            self.store.add_identifiers(survivor.id, &add, now).await?
        };
        if merged.name.is_none() {
            if let Some(name) = parts.iter().find_map(|p| p.before.name.clone()) {
                merged.name = Some(name);
                merged.updated_at = now;
                self.store.update_profile(&merged).await?;
            }
        }
        let record = MergeRecord {
            id: MergeId::new(),
            survivor_id: survivor.id,
            merged_ids: parts.iter().map(|p| p.before.id).collect(),
            by,
            at: now,
            survivor_before: before,
            parts,
            undone_at: None,
            undone_by: None,
        };
        self.store.insert_merge(&record).await?;
        tracing::info!(merge = %record.id, survivor = %record.survivor_id, merged = record.merged_ids.len(), "customers merged");
        // A concurrent merge may have taken our survivor meanwhile.
        let current = self.settle(survivor.id).await?;
        self.publish(vec![DomainEvent::CustomersMerged {
            merge_id: Some(record.id),
            survivor_id: record.survivor_id,
            merged_ids: record.merged_ids.clone(),
        }])
        .await;
        Ok((record, current))
    }

    /// Undoes a merge: the merged customers come back with the profile,
    /// identities and engagements they had; engagements recorded since go to
    /// whichever of them owns the identifier they came through. The pair is
    /// protected from automatic merging afterwards. Returns the customers,
    /// survivor first.
    pub async fn undo_merge(&self, id: MergeId, user_id: &str) -> Result<Vec<Customer>, CrmError> {
        let merge = self
            .store
            .get_merge(id)
            .await?
            .ok_or(CrmError::MergeNotFound(id))?;
        if merge.undone_at.is_some()
            || !self
                .store
                .mark_merge_undone(id, time::now(), user_id)
                .await?
        {
            return Err(CrmError::Refused(format!("merge {id} is undone already")));
        }
        let holder = self.current(merge.survivor_id).await?;
        let now = time::now();
        let survivor_had: BTreeSet<Identifier> =
            merge.survivor_before.identifiers().into_iter().collect();
        let mut from_parts: BTreeSet<Identifier> = BTreeSet::new();
        let mut owner_of: HashMap<String, CustomerId> = HashMap::new();
        let mut moved_back: BTreeSet<EngagementId> = BTreeSet::new();
        let mut restored_ids = Vec::new();
        for part in &merge.parts {
            let mut c = part.before.clone();
            if c.status == CustomerStatus::Merged {
                c.status = CustomerStatus::Active;
            }
            c.merged_into = None;
            c.updated_at = now;
            if let Err(e) = self.store.update_profile(&c).await {
                tracing::warn!(error = %e, customer = %c.id, "a merged customer is gone; cannot restore it");
                continue;
            }
            self.store
                .move_identities(holder.id, c.id, Some(&part.identities))
                .await?;
            moved_back.extend(
                self.store
                    .move_engagements(holder.id, c.id, Some(&part.engagements))
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
        let mut after: Option<EngagementCursor> = None;
        loop {
            let page = self
                .store
                .list_engagements(holder.id, &EngagementFilter::default(), after, UNDO_PAGE)
                .await?;
            for e in &page {
                if e.recorded_at < merge.at || moved_back.contains(&e.id) {
                    continue;
                }
                if let Some(owner) = e.source.via.as_ref().and_then(|k| owner_of.get(k)) {
                    follow.entry(*owner).or_default().push(e.id);
                }
            }
            if page.len() < UNDO_PAGE {
                break;
            }
            after = page.last().map(|e| EngagementCursor {
                occurred_at: e.occurred_at,
                id: e.id,
            });
        }
        for (owner, ids) in follow {
            self.store
                .move_engagements(holder.id, owner, Some(&ids))
                .await?;
        }
        // The survivor loses what the merge gave it.
        let mut survivor = self.current(holder.id).await?;
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
        survivor.updated_at = now;
        self.store.update_profile(&survivor).await?;
        let mut customer_ids = vec![holder.id];
        customer_ids.extend(restored_ids.iter().copied());
        tracing::info!(merge = %id, restored = restored_ids.len(), "merge undone");
        self.publish(vec![DomainEvent::CustomersUnmerged {
            merge_id: id,
            customer_ids: customer_ids.clone(),
        }])
        .await;
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

    /// Suggested duplicates still open (both customers exist, neither merged),
    /// most likely first.
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
