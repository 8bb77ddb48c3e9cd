//! Resolving a batch's identifiers in bulk.
//!
//! A phone's upload names a few dozen counterparts in hundreds of events, and
//! most of them are either known (one customer owns the number) or new (nobody
//! does). Those two cases need no linking: [`Crm::preresolve`] answers them
//! for the whole batch with one identity read, one customer read and one
//! store write for every new customer together. Everything else (identifiers
//! of several customers, a merged owner, blocked or shared values, a name to
//! give a customer that has none) goes through [`Crm::resolve`] one by one,
//! as before.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{clean_name, new_customer, Crm, EngagementTarget, NewEngagement};
use crate::customer::{CustomerStatus, Identifier};
use crate::ids::CustomerId;

/// What a batch's identifier sets resolved to before its items are stored.
#[derive(Debug, Default)]
pub(super) struct Preresolved {
    /// Sorted identifier keys → (customer, whether it has a name).
    pub found: HashMap<Vec<String>, (CustomerId, bool)>,
    /// Customers created here, until the first item naming them reports it.
    pub created: HashSet<CustomerId>,
}

/// One distinct identifier set of a batch.
struct Group {
    key: Vec<String>,
    identifiers: Vec<Identifier>,
    /// The first name an item with these identifiers gives.
    name: Option<String>,
}

/// The identifier keys of a set, sorted and distinct: how a batch tells
/// items naming the same customer apart from the others.
pub(super) fn memo_key(identifiers: &[Identifier]) -> Vec<String> {
    identifiers
        .iter()
        .map(Identifier::key)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

impl Crm {
    /// Resolves the batch's identifier sets that need no linking. A failing
    /// read or write leaves the rest to [`Crm::resolve`] (which then reports
    /// the failure per item).
    pub(super) async fn preresolve(&self, items: &[NewEngagement]) -> Preresolved {
        let mut out = Preresolved::default();
        let groups = self.groups(items);
        if groups.is_empty() {
            return out;
        }
        let keys: Vec<String> = groups
            .iter()
            .flat_map(|g| g.key.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let infos = match self.store.identities(&keys).await {
            Ok(infos) => infos,
            Err(e) => {
                tracing::debug!(error = %e, "batch identity read failed; resolving one by one");
                return out;
            }
        };
        let info: HashMap<&str, _> = keys.iter().map(String::as_str).zip(infos).collect();

        let mut known: Vec<(&Group, CustomerId)> = Vec::new();
        let mut new: Vec<&Group> = Vec::new();
        for group in &groups {
            let mut owners = BTreeSet::new();
            let mut free = 0;
            let mut unlinkable = false;
            for key in &group.key {
                match info.get(key.as_str()).copied().flatten() {
                    Some(i) if i.shared => unlinkable = true,
                    Some(i) => match i.owner {
                        Some(owner) => {
                            owners.insert(owner);
                        }
                        None => free += 1,
                    },
                    None => free += 1,
                }
            }
            match (unlinkable, owners.len(), free) {
                (false, 0, _) => new.push(group),
                (false, 1, 0) => {
                    if let Some(owner) = owners.first() {
                        known.push((group, *owner));
                    }
                }
                // Links customers, or gives one new identifiers: one by one.
                _ => {}
            }
        }

        if !known.is_empty() {
            let ids: Vec<CustomerId> = known
                .iter()
                .map(|(_, id)| *id)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if let Ok(customers) = self.store.get_customers(&ids).await {
                let by_id: HashMap<CustomerId, _> =
                    customers.into_iter().map(|c| (c.id, c)).collect();
                for (group, owner) in known {
                    let Some(c) = by_id.get(&owner) else { continue };
                    // A merged owner is followed (and settled) by `resolve`;
                    // so is a name to give a customer that has none.
                    if c.status == CustomerStatus::Merged
                        || (c.name.is_none() && group.name.is_some())
                    {
                        continue;
                    }
                    out.found
                        .insert(group.key.clone(), (c.id, c.name.is_some()));
                }
            }
        }

        if !new.is_empty() {
            let customers: Vec<_> = new
                .iter()
                .map(|g| {
                    let c = new_customer(g.name.as_deref(), g.identifiers.iter(), None);
                    (c, g.key.clone())
                })
                .collect();
            match self.store.insert_customers_owning(&customers).await {
                Ok(created) => {
                    for ((customer, key), created) in customers.into_iter().zip(created) {
                        // Not created: an identifier was taken meanwhile (by
                        // another writer, or by an earlier set of this batch).
                        if created {
                            out.found
                                .insert(key, (customer.id, customer.name.is_some()));
                            out.created.insert(customer.id);
                        }
                    }
                    self.wake_relay();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "batch customer insert failed; resolving one by one");
                }
            }
        }
        out
    }

    /// The batch's distinct identifier sets that may be resolved in bulk:
    /// none with a blocked value, which `resolve` keeps off the identity
    /// records.
    fn groups(&self, items: &[NewEngagement]) -> Vec<Group> {
        let mut groups: Vec<Group> = Vec::new();
        let mut at: HashMap<Vec<String>, usize> = HashMap::new();
        for item in items {
            let EngagementTarget::Identify { name, identifiers } = &item.target else {
                continue;
            };
            if identifiers.is_empty()
                || identifiers
                    .iter()
                    .any(|i| self.policy.blocked_reason(i).is_some())
            {
                continue;
            }
            // An invalid name fails its own item later.
            let name = clean_name(name.as_deref(), "customer.name").ok().flatten();
            let key = memo_key(identifiers);
            match at.get(&key) {
                Some(&i) => {
                    if groups[i].name.is_none() {
                        groups[i].name = name;
                    }
                }
                None => {
                    at.insert(key.clone(), groups.len());
                    groups.push(Group {
                        key,
                        identifiers: identifiers
                            .iter()
                            .cloned()
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        name,
                    });
                }
            }
        }
        groups
    }
}
