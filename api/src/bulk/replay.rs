//! The outcomes of a chunk of customer rows applied again (after a restart,
//! or after the store failed part-way through the chunk).
//!
//! Applied a second time, a row finds what its first application made: the
//! customer it created, or the survivor of the merge it caused, now owns its
//! identifiers, so the service answers "linked". The first outcome of each
//! row is worked out from the store instead:
//! - each identifier's owner before the chunk: its owner now, with the
//!   merges made since the chunk began undone, newest first (a merge record
//!   lists the identities it moved from each merged customer);
//! - then the rows in file order, as the linker saw them: an identifier
//!   whose owner was created since the chunk began (by a row of this chunk)
//!   has no owner until the first row that names it; a row naming no owner
//!   created one; one owner, linked; several owners, merged when a merge of
//!   exactly those customers was made since the chunk began (the safeguards
//!   may have refused it: then linked).
//!
//! Rows the first application did not reach get their outcome now, and the
//! same reasoning gives it back, so the counts of a resumed import are those
//! of an uninterrupted one.

use std::collections::{BTreeSet, HashMap, HashSet};

use crm_models::customer::Identifier;
use crm_models::ids::CustomerId;
use crm_models::linking::{LinkPolicy, MergeActor, MergeRecord};
use crm_models::service::Resolution;
use crm_models::store::{Store, StoreError};
use crm_models::time::Timestamp;

/// How many customers the merges of one chunk may reach through each other
/// (a guard against a cycle in damaged records).
const MAX_MERGE_WALK: usize = 100_000;

/// The first outcome of each row (its linkable identifiers), in order.
pub(super) async fn first_outcomes(
    store: &dyn Store,
    policy: &LinkPolicy,
    since: Timestamp,
    rows: &[&[Identifier]],
) -> Result<Vec<Resolution>, StoreError> {
    let keys_of: Vec<Vec<String>> = rows
        .iter()
        .map(|ids| {
            ids.iter()
                .filter(|id| policy.blocked_reason(id).is_none())
                .map(Identifier::key)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .collect();
    let all: Vec<String> = keys_of
        .iter()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let infos = store.identities(&all).await?;
    let mut owner_now: HashMap<&str, CustomerId> = HashMap::new();
    for (key, info) in all.iter().zip(infos) {
        if let Some(info) = info.filter(|i| !i.shared) {
            if let Some(owner) = info.owner {
                owner_now.insert(key.as_str(), owner);
            }
        }
    }

    // The automatic merges since the chunk began, among these customers.
    let mut merges: Vec<MergeRecord> = Vec::new();
    let mut seen_merges = HashSet::new();
    let mut created: HashMap<CustomerId, Timestamp> = HashMap::new();
    let mut walk: Vec<CustomerId> = owner_now.values().copied().collect();
    let mut walked: HashSet<CustomerId> = HashSet::new();
    while let Some(c) = walk.pop() {
        if !walked.insert(c) || walked.len() > MAX_MERGE_WALK {
            continue;
        }
        for m in store.merges_of(c).await? {
            let auto = matches!(m.by, MergeActor::Auto { .. });
            if m.at < since || !auto || m.undone_at.is_some() || !seen_merges.insert(m.id) {
                continue;
            }
            created.insert(m.survivor_id, m.survivor_before.created_at);
            for part in &m.parts {
                created.insert(part.before.id, part.before.created_at);
            }
            walk.extend(m.customer_ids());
            merges.push(m);
        }
    }
    merges.sort_by_key(|m| m.at);
    let unknown: Vec<CustomerId> = owner_now
        .values()
        .copied()
        .filter(|c| !created.contains_key(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for c in store.get_customers(&unknown).await? {
        created.insert(c.id, c.created_at);
    }

    // Each identifier's owner before the chunk's merges.
    let mut before: HashMap<&str, CustomerId> = HashMap::new();
    for (key, owner) in &owner_now {
        let mut at = *owner;
        for m in merges.iter().rev() {
            if m.survivor_id != at {
                continue;
            }
            if let Some(part) = m
                .parts
                .iter()
                .find(|p| p.identities.iter().any(|k| k == key))
            {
                at = part.before.id;
            }
        }
        before.insert(key, at);
    }

    // The rows in order, as the linker saw them.
    let new = |c: &CustomerId| created.get(c).is_some_and(|t| *t >= since);
    let mut born: HashSet<CustomerId> = HashSet::new();
    let mut merged_into: HashMap<CustomerId, CustomerId> = HashMap::new();
    let survivor = |merged_into: &HashMap<CustomerId, CustomerId>, mut c: CustomerId| {
        for _ in 0..merged_into.len() + 1 {
            match merged_into.get(&c) {
                Some(next) if *next != c => c = *next,
                _ => break,
            }
        }
        c
    };
    let mut used = vec![false; merges.len()];
    let mut out = Vec::with_capacity(rows.len());
    for keys in &keys_of {
        let owners: Vec<CustomerId> = keys
            .iter()
            .filter_map(|k| before.get(k.as_str()).copied())
            .collect();
        let named: BTreeSet<CustomerId> = owners
            .iter()
            .filter(|c| !new(c) || born.contains(c))
            .map(|c| survivor(&merged_into, *c))
            .collect();
        born.extend(owners);
        out.push(match named.len() {
            0 => Resolution::Created,
            1 => Resolution::Linked,
            _ => {
                let found = merges.iter().enumerate().find(|(i, m)| {
                    !used[*i]
                        && m.customer_ids()
                            .into_iter()
                            .map(|c| survivor(&merged_into, c))
                            .collect::<BTreeSet<_>>()
                            == named
                });
                match found {
                    Some((i, m)) => {
                        used[i] = true;
                        for c in &m.merged_ids {
                            merged_into.insert(*c, m.survivor_id);
                        }
                        Resolution::Merged
                    }
                    None => Resolution::Linked,
                }
            }
        });
    }
    Ok(out)
}
