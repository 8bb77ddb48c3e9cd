//! Repairing what older versions wrote, when a merge was several separate
//! store steps: `merged_into` cycles, merges without a record, and merged
//! customers that still hold identities or engagements.
//!
//! The repair reads every customer once, then mends each finding in a
//! transaction of its own (so it can be interrupted and run again):
//! - a cycle is broken at its oldest customer, which becomes active again;
//! - a merged customer pointing at a customer that does not exist becomes
//!   active again;
//! - a merged customer's leftovers (identities, engagements) move to the
//!   customer it was merged into, whose profile gains its identifiers;
//! - a merged customer with no merge record gets one, marked `repaired`, so
//!   that it shows in the history and can be undone.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::Serialize;

use super::txn::{current_in, settle_answer, Answer};
use super::{has_identifier, Crm, CrmError};
use crate::customer::{Customer, CustomerStatus, Identifier};
use crate::event::{Actor, DomainEvent, EventEnvelope};
use crate::ids::{CustomerId, MergeId};
use crate::linking::{MergeActor, MergeRecord, MergedPart};
use crate::store::{CustomerCursor, StoreResult, Tx, TxWork};
use crate::time;

/// Customers read per page.
const PAGE: usize = 500;

/// What a repair found and mended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Customers read.
    pub customers: u64,
    /// The customer kept active in each `merged_into` cycle broken.
    pub cycles_broken: Vec<CustomerId>,
    /// Merged customers whose `merged_into` named nobody, active again.
    pub dangling: Vec<CustomerId>,
    /// Merged customers whose leftovers moved to their survivor.
    pub leftovers_moved: Vec<CustomerId>,
    /// Merge records written for merges that had none.
    pub records_added: Vec<MergeId>,
}

impl RepairReport {
    pub fn is_clean(&self) -> bool {
        self.cycles_broken.is_empty()
            && self.dangling.is_empty()
            && self.leftovers_moved.is_empty()
            && self.records_added.is_empty()
    }
}

impl Crm {
    /// Mends one merged customer (see [`RepairMerged`]).
    pub(super) async fn repair_merged(
        &self,
        id: CustomerId,
    ) -> Result<(bool, Option<MergeId>), CrmError> {
        let mut work = RepairMerged { id, answer: None };
        self.run_tx(&mut work, |w| w.answer.take()).await
    }

    /// Finds and mends what half-applied merges of older versions left (see
    /// the module documentation). Safe to run at any time, and again.
    pub async fn repair(&self) -> Result<RepairReport, CrmError> {
        let mut report = RepairReport::default();
        // id → (merged_into, created_at) of every merged customer.
        let mut merged: BTreeMap<CustomerId, (Option<CustomerId>, Customer)> = BTreeMap::new();
        let mut after: Option<CustomerCursor> = None;
        loop {
            let page = self.store.list_customers(None, after, PAGE).await?;
            report.customers += page.len() as u64;
            after = page.last().map(|c| CustomerCursor {
                updated_at: c.updated_at,
                id: c.id,
            });
            for c in &page {
                if c.status == CustomerStatus::Merged {
                    merged.insert(c.id, (c.merged_into, c.clone()));
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        // Cycles and dangling pointers, found on the snapshot, mended in
        // transactions that check again.
        let mut seen: BTreeSet<CustomerId> = BTreeSet::new();
        for start in merged.keys().copied().collect::<Vec<_>>() {
            if seen.contains(&start) {
                continue;
            }
            let mut path: Vec<CustomerId> = Vec::new();
            let mut at = start;
            loop {
                if let Some(pos) = path.iter().position(|p| *p == at) {
                    let cycle = path[pos..].to_vec();
                    let mut work = BreakCycle {
                        members: &cycle,
                        answer: None,
                    };
                    if let Some(kept) = self.run_tx(&mut work, |w| w.answer.take()).await? {
                        tracing::warn!(customer = %kept, size = cycle.len(), "merged_into cycle broken");
                        report.cycles_broken.push(kept);
                    }
                    break;
                }
                if seen.contains(&at) {
                    break;
                }
                path.push(at);
                match merged.get(&at) {
                    Some((Some(next), _)) if *next != at => {
                        if !merged.contains_key(next)
                            && self.store.get_customer(*next).await?.is_none()
                        {
                            let mut work = Reactivate {
                                id: at,
                                answer: None,
                            };
                            if self.run_tx(&mut work, |w| w.answer.take()).await? {
                                report.dangling.push(at);
                            }
                            break;
                        }
                        at = *next;
                    }
                    _ => break,
                }
            }
            seen.extend(path);
        }
        for id in merged.keys() {
            let (moved, record) = self.repair_merged(*id).await?;
            if moved {
                report.leftovers_moved.push(*id);
            }
            if let Some(record) = record {
                report.records_added.push(record);
            }
        }
        if !report.is_clean() {
            tracing::warn!(
                cycles = report.cycles_broken.len(),
                dangling = report.dangling.len(),
                leftovers = report.leftovers_moved.len(),
                records = report.records_added.len(),
                "repaired what earlier versions left of merges"
            );
        }
        Ok(report)
    }
}

/// Breaks a cycle at its oldest member, if it is still a cycle.
struct BreakCycle<'a> {
    members: &'a [CustomerId],
    answer: Answer<Option<CustomerId>>,
}

#[async_trait]
impl TxWork for BreakCycle<'_> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let mut members = Vec::new();
        for id in self.members {
            match tx.customer(*id).await? {
                Some(c)
                    if c.status == CustomerStatus::Merged
                        && c.merged_into.is_some_and(|n| self.members.contains(&n)) =>
                {
                    members.push(c)
                }
                // Changed meanwhile: no longer this cycle.
                _ => {
                    self.answer = Some(Ok(None));
                    return Ok(());
                }
            }
        }
        let Some(mut oldest) = members.into_iter().min_by_key(|c| (c.created_at, c.id)) else {
            self.answer = Some(Ok(None));
            return Ok(());
        };
        oldest.status = CustomerStatus::Active;
        oldest.merged_into = None;
        oldest.updated_at = time::now().max(oldest.updated_at);
        tx.put_customer(&oldest).await?;
        tx.append_events(&[EventEnvelope::about(
            oldest.id,
            DomainEvent::CustomerUpdated {
                fields: vec!["status".into()],
            },
        )])
        .await?;
        self.answer = Some(Ok(Some(oldest.id)));
        Ok(())
    }
}

/// Makes a merged customer whose survivor does not exist active again.
struct Reactivate {
    id: CustomerId,
    answer: Answer<bool>,
}

#[async_trait]
impl TxWork for Reactivate {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = Some(Ok(false));
        let Some(mut c) = tx.customer(self.id).await? else {
            return Ok(());
        };
        let Some(next) = c.merged_into.filter(|_| c.status == CustomerStatus::Merged) else {
            return Ok(());
        };
        if tx.customer(next).await?.is_some() {
            return Ok(());
        }
        c.status = CustomerStatus::Active;
        c.merged_into = None;
        c.updated_at = time::now().max(c.updated_at);
        tx.put_customer(&c).await?;
        tx.append_events(&[EventEnvelope::about(
            c.id,
            DomainEvent::CustomerUpdated {
                fields: vec!["status".into()],
            },
        )])
        .await?;
        self.answer = Some(Ok(true));
        Ok(())
    }
}

/// Moves a merged customer's leftovers to its survivor and gives its merge
/// a record when it has none. Answers (leftovers moved, record written).
struct RepairMerged {
    id: CustomerId,
    answer: Answer<(bool, Option<MergeId>)>,
}

#[async_trait]
impl TxWork for RepairMerged {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.answer = None;
        let result = self.repair(tx).await;
        settle_answer(&mut self.answer, result)
    }
}

impl RepairMerged {
    async fn repair(&self, tx: &mut dyn Tx) -> Result<(bool, Option<MergeId>), CrmError> {
        let id = self.id;
        let Some(merged) = tx.customer(id).await? else {
            return Ok((false, None));
        };
        if merged.status != CustomerStatus::Merged {
            return Ok((false, None));
        }
        let Some(survivor) = current_in(tx, id).await? else {
            return Ok((false, None));
        };
        if survivor.id == id {
            return Ok((false, None));
        }
        let now = time::now();
        let identities = tx.move_identities(id, survivor.id, None).await?;
        let engagements = tx.move_engagements(id, survivor.id, None, now).await?;
        let moved = !identities.is_empty() || !engagements.is_empty();
        let mut after = tx
            .customer(survivor.id)
            .await?
            .ok_or(CrmError::CustomerNotFound(survivor.id))?;
        let before = after.clone();
        let missing: BTreeSet<Identifier> = merged
            .identifiers()
            .into_iter()
            .chain(identities.iter().filter_map(|k| Identifier::from_key(k)))
            .filter(|i| !matches!(i, Identifier::Anonymous(_)) && !has_identifier(&after, i))
            .collect();
        for identifier in &missing {
            after.add_identifier(identifier);
        }
        let recorded = tx
            .merges_of(id)
            .await?
            .iter()
            .any(|m| m.undone_at.is_none() && m.merged_ids.contains(&id));
        if !moved && missing.is_empty() && recorded {
            return Ok((false, None));
        }
        after.updated_at = now.max(after.updated_at);
        tx.put_customer(&after).await?;
        let mut record_id = None;
        if !recorded {
            let mut was = merged.clone();
            was.status = CustomerStatus::Active;
            was.merged_into = None;
            let record = MergeRecord {
                id: MergeId::new(),
                survivor_id: survivor.id,
                merged_ids: vec![id],
                by: MergeActor::Auto {
                    identifier: String::new(),
                },
                at: now,
                survivor_before: before,
                parts: vec![MergedPart {
                    before: was,
                    identities: identities.clone(),
                    engagements: engagements.clone(),
                }],
                undone_at: None,
                undone_by: None,
                repaired: true,
            };
            tx.put_merge(&record).await?;
            record_id = Some(record.id);
        }
        tx.append_events(&[EventEnvelope::about(
            survivor.id,
            DomainEvent::CustomersMerged {
                merge_id: record_id,
                survivor_id: survivor.id,
                merged_ids: vec![id],
                by: Actor::Auto,
            },
        )])
        .await?;
        Ok((moved || !missing.is_empty(), record_id))
    }
}
