//! Searches by phone number on the memory index: the whole number, the
//! national number, and the last digits (the range of the reversed digits
//! typed in `suffixes`), ranked before any brief is built.

use std::collections::HashMap;

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
        if let Some(digits) = suffix {
            let reversed = query::reversed_digits(digits);
            for (_, ids) in prefixed(&self.suffixes, &reversed) {
                for id in ids {
                    found.add(*id, Match::Suffix);
                }
            }
        }
        let page = found.page(limit, after, |id| {
            let stored = self.customers.get(&id)?;
            Some(recency_of(stored.summary.last_engagement_at.as_ref()))
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
