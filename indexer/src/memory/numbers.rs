//! Searches by phone number on the memory index: the whole number, the
//! national number, the last digits (the range of the reversed digits
//! typed in `suffixes`) and digits inside a number (the ranges of each
//! ending they may have), ranked before any brief is built.

use std::collections::{BTreeMap, HashMap};

use crm_models::CustomerId;

use crate::number_search::NumberMatches;
use crate::query::{self, Brief, Match, SearchResults};
use crate::ranking::{recency_of, RankKey};

use super::{prefixed, Generation};

impl Generation {
    /// A page of the customers with a number that is one of `e164`, has the
    /// national number `national`, or ends with the digits `suffix`.
    pub(super) fn search_numbers(
        &self,
        e164: &[String],
        national: Option<&str>,
        suffix: Option<&str>,
        limit: usize,
        after: Option<RankKey>,
    ) -> SearchResults {
        let mut found = NumberMatches::default();
        for p in e164 {
            for id in self.phones.get(p).into_iter().flatten() {
                found.add(*id, Match::Exact);
            }
        }
        if let Some(n) = national {
            for id in self.national.get(n).into_iter().flatten() {
                found.add(*id, Match::National);
            }
        }
        // The recency of every customer found by its last digits, kept
        // beside them: no lookup of each customer to rank a hundred.
        let mut recency: HashMap<CustomerId, f64> = HashMap::new();
        if let Some(digits) = suffix {
            let reversed = query::reversed_digits(digits);
            for (_, ids) in prefixed(&self.suffixes, &reversed) {
                for (id, r) in ids {
                    found.add(*id, Match::Suffix);
                    recency.insert(*id, *r);
                }
            }
        }
        // Digits inside numbers: those ending with the digits and one or two
        // more, every such tail's range.
        if let Some(inner) = query::inner_digits(suffix) {
            let reversed = query::reversed_digits(inner);
            for tail in query::inner_tails() {
                let key = format!("{}{reversed}", query::reversed_digits(&tail));
                for (_, ids) in prefixed(&self.suffixes, &key) {
                    for (id, r) in ids {
                        found.add(*id, Match::Inner);
                        recency.insert(*id, *r);
                    }
                }
            }
        }
        let page = found.page(limit, after, |id| match recency.get(&id) {
            Some(r) => Some(*r),
            None => {
                let stored = self.customers.get(&id)?;
                Some(recency_of(stored.summary.last_engagement_at.as_ref()))
            }
        });
        let briefs: HashMap<_, _> = page
            .iter()
            .filter_map(|k| {
                let stored = self.customers.get(&k.id)?;
                Some((k.id, Brief::from(&stored.summary)))
            })
            .collect();
        found.results(&page, briefs, limit, found.len() as u64)
    }
}

/// Removes `id` from the suffix entry of the number `e164`.
pub(super) fn drop_suffix(
    suffixes: &mut BTreeMap<String, BTreeMap<CustomerId, f64>>,
    e164: &str,
    id: &CustomerId,
) {
    let reversed = query::reversed_digits(e164);
    if let Some(ids) = suffixes.get_mut(&reversed) {
        ids.remove(id);
        if ids.is_empty() {
            suffixes.remove(&reversed);
        }
    }
}
