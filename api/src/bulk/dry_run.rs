//! A dry run of customer rows: the outcome each row would have, worked out
//! from the store and the file's earlier rows, with nothing written.
//!
//! The rows go through the linker's rules in file order: blocked values and
//! identifiers marked shared never link; no owner creates a customer; one
//! owner links to it (and its free identifiers would be attached); several
//! owners merge, unless a safeguard refuses it (the caps on phones and
//! emails a merged customer may have, an undone merge between two of them),
//! which makes the row a link to the oldest. A merge joins the customers for
//! the rows after it, so a later row naming both links.
//!
//! What the file's earlier rows would have made (one entry per identifier
//! and per customer) is kept in memory, up to [`MAX_IDENTIFIERS`]
//! identifiers: a dry run of a larger file stops there with an error that
//! says so, rather than grow without bound or guess.

use std::collections::{BTreeSet, HashMap, HashSet};

use crm_models::customer::{Customer, Identifier};
use crm_models::ids::CustomerId;
use crm_models::service::{Crm, CustomerInput, Resolution};
use crm_models::store::StoreError;

/// The most identifiers a dry run follows.
pub const MAX_IDENTIFIERS: usize = 2_000_000;

/// Why a dry run cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("a dry run follows at most {MAX_IDENTIFIERS} phones, emails and social ids; dry-run a part of the file")]
    TooLarge,
    /// The store failed before the chunk was looked at: try it again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed half-way through the chunk's rows, some of which
    /// are counted already: the dry run cannot go on.
    #[error("the store failed during the dry run ({0}); start it again")]
    Interrupted(StoreError),
}

/// A customer a row would find or make. Stored customers sort before the
/// file's (they are older), and the file's by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Who {
    Stored(CustomerId),
    Row(u64),
}

/// What the caps look at: a customer's phones and emails.
#[derive(Debug, Default)]
struct Profile {
    /// Phones and emails it would own.
    phones: usize,
    emails: usize,
    /// Keys on its profile that nobody owns (blocked or shared values):
    /// several customers may list the same one.
    unowned: BTreeSet<String>,
    merged_into: Option<Who>,
}

impl Profile {
    fn of(customer: &Customer, crm: &Crm) -> Profile {
        let mut p = Profile::default();
        for id in customer
            .phones
            .iter()
            .cloned()
            .map(Identifier::Phone)
            .chain(customer.emails.iter().cloned().map(Identifier::Email))
        {
            if crm.policy().blocked_reason(&id).is_some() {
                p.unowned.insert(id.key());
            } else {
                p.count(&id.key(), 1);
            }
        }
        p
    }

    fn count(&mut self, key: &str, n: usize) {
        if key.starts_with("phone:") {
            self.phones += n;
        } else if key.starts_with("email:") {
            self.emails += n;
        }
    }
}

/// The dry run's view of the file so far.
#[derive(Default)]
pub struct DryRun {
    owners: HashMap<String, Who>,
    shared: HashSet<String>,
    profiles: HashMap<Who, Profile>,
}

impl DryRun {
    fn survivor(&self, mut who: Who) -> Who {
        for _ in 0..=self.profiles.len() {
            match self.profiles.get(&who).and_then(|p| p.merged_into) {
                Some(next) if next != who => who = next,
                _ => break,
            }
        }
        who
    }

    /// The outcome each row (its number and input) would have, in order.
    pub async fn chunk(
        &mut self,
        crm: &Crm,
        rows: &[(u64, &CustomerInput)],
    ) -> Result<Vec<Resolution>, DryRunError> {
        // Each row's keys: the ones that may link, and the blocked ones.
        let keys: Vec<(Vec<String>, Vec<String>)> = rows
            .iter()
            .map(|(_, input)| {
                let (linkable, blocked): (Vec<&Identifier>, Vec<&Identifier>) = input
                    .identifiers
                    .iter()
                    .partition(|id| crm.policy().blocked_reason(id).is_none());
                // Each key once, in order.
                let keys = |ids: Vec<&Identifier>| -> Vec<String> {
                    ids.into_iter()
                        .map(Identifier::key)
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect()
                };
                (keys(linkable), keys(blocked))
            })
            .collect();
        self.read_store(crm, &keys).await?;
        let mut out = Vec::with_capacity(rows.len());
        for ((number, _), (linkable, blocked)) in rows.iter().zip(&keys) {
            let linking: Vec<&String> = linkable
                .iter()
                .filter(|k| !self.shared.contains(*k))
                .collect();
            let named: BTreeSet<Who> = linking
                .iter()
                .filter_map(|k| self.owners.get(*k))
                .map(|w| self.survivor(*w))
                .collect();
            let (target, how) = match named.first() {
                None => {
                    let who = Who::Row(*number);
                    self.profiles.insert(who, Profile::default());
                    (who, Resolution::Created)
                }
                Some(first) if named.len() == 1 => (*first, Resolution::Linked),
                Some(first) => {
                    let refused = self
                        .merge_refused(crm, &named)
                        .await
                        .map_err(DryRunError::Interrupted)?;
                    if refused {
                        (*first, Resolution::Linked)
                    } else {
                        self.merge(*first, &named);
                        (*first, Resolution::Merged)
                    }
                }
            };
            // Attach what the row adds.
            let mut added = Vec::new();
            for k in linking {
                if !self.owners.contains_key(k) {
                    self.owners.insert(k.clone(), target);
                    added.push(k);
                }
            }
            let shared: Vec<String> = linkable
                .iter()
                .filter(|k| self.shared.contains(*k))
                .cloned()
                .collect();
            if let Some(p) = self.profiles.get_mut(&target) {
                for k in added {
                    p.count(k, 1);
                }
                p.unowned.extend(blocked.iter().cloned());
                p.unowned.extend(shared);
            }
            out.push(how);
        }
        if self.owners.len() + self.shared.len() > MAX_IDENTIFIERS {
            return Err(DryRunError::TooLarge);
        }
        Ok(out)
    }

    /// Learns the owners (and their profiles) of the chunk's identifiers
    /// the file has not named before.
    async fn read_store(
        &mut self,
        crm: &Crm,
        keys: &[(Vec<String>, Vec<String>)],
    ) -> Result<(), StoreError> {
        let unknown: Vec<String> = keys
            .iter()
            .flat_map(|(linkable, _)| linkable.iter())
            .filter(|k| !self.owners.contains_key(*k) && !self.shared.contains(*k))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let infos = crm.store().identities(&unknown).await?;
        let mut customers = BTreeSet::new();
        for (key, info) in unknown.into_iter().zip(infos) {
            match info {
                Some(i) if i.shared => {
                    self.shared.insert(key);
                }
                Some(i) => {
                    if let Some(owner) = i.owner {
                        if !self.profiles.contains_key(&Who::Stored(owner)) {
                            customers.insert(owner);
                        }
                        self.owners.insert(key, Who::Stored(owner));
                    }
                }
                None => {}
            }
        }
        let ids: Vec<CustomerId> = customers.into_iter().collect();
        let found = crm.store().get_customers(&ids).await?;
        for c in &found {
            self.profiles.insert(Who::Stored(c.id), Profile::of(c, crm));
        }
        for id in ids {
            // An owner gone meanwhile (erased): a profile of its identifiers.
            self.profiles.entry(Who::Stored(id)).or_default();
        }
        Ok(())
    }

    /// The linker's safeguards: the caps, and an undone merge between two
    /// of the stored customers.
    async fn merge_refused(&self, crm: &Crm, named: &BTreeSet<Who>) -> Result<bool, StoreError> {
        let (mut phones, mut emails) = (0, 0);
        let mut unowned = BTreeSet::new();
        for who in named {
            if let Some(p) = self.profiles.get(who) {
                phones += p.phones;
                emails += p.emails;
                unowned.extend(p.unowned.iter().map(String::as_str));
            }
        }
        phones += unowned.iter().filter(|k| k.starts_with("phone:")).count();
        emails += unowned.iter().filter(|k| k.starts_with("email:")).count();
        if !crm.policy().within_caps(phones, emails) {
            return Ok(true);
        }
        let stored: Vec<CustomerId> = named
            .iter()
            .filter_map(|w| match w {
                Who::Stored(id) => Some(*id),
                Who::Row(_) => None,
            })
            .collect();
        Ok(stored.len() >= 2 && crm.undone_merge_between(&stored).await?.is_some())
    }

    /// Joins the customers into the first (the oldest).
    fn merge(&mut self, survivor: Who, named: &BTreeSet<Who>) {
        let (mut phones, mut emails) = (0, 0);
        let mut unowned = BTreeSet::new();
        for who in named.iter().filter(|w| **w != survivor) {
            if let Some(p) = self.profiles.get_mut(who) {
                phones += p.phones;
                emails += p.emails;
                unowned.append(&mut p.unowned);
                p.merged_into = Some(survivor);
            }
        }
        if let Some(p) = self.profiles.get_mut(&survivor) {
            p.phones += phones;
            p.emails += emails;
            p.unowned.append(&mut unowned);
        }
    }
}
