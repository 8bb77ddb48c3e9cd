//! The page of a phone-number search, ranked before any brief is read.
//!
//! Four digits typed (`6418`) match about one number in ten thousand: a
//! hundred customers per million. Both adapters find each customer's best
//! match and recency from their keys, rank those here, and build hits (a
//! brief each) for the page only.

use std::collections::HashMap;

use crm_models::CustomerId;

use crate::query::{self, Brief, Match, MatchedOn, SearchResults};
use crate::ranking::RankKey;

/// Each customer found and how it matched at best.
#[derive(Default)]
pub(crate) struct NumberMatches {
    best: HashMap<CustomerId, Match>,
}

impl NumberMatches {
    pub(crate) fn add(&mut self, id: CustomerId, m: Match) {
        let entry = self.best.entry(id).or_insert(m);
        *entry = (*entry).max(m);
    }

    pub(crate) fn len(&self) -> usize {
        self.best.len()
    }

    pub(crate) fn get(&self, id: &CustomerId) -> Option<Match> {
        self.best.get(id).copied()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (CustomerId, Match)> + '_ {
        self.best.iter().map(|(id, m)| (*id, *m))
    }

    /// The rank keys of the page: the best `limit + 1` after `after` (one
    /// more than the page, to tell whether another follows), best first;
    /// `recency` gives each customer's ([`crate::ranking::recency_of`] its
    /// last engagement), `None` for a customer no longer indexed.
    pub(crate) fn page(
        &self,
        limit: usize,
        after: Option<RankKey>,
        mut recency: impl FnMut(CustomerId) -> Option<f64>,
    ) -> Vec<RankKey> {
        let mut keys: Vec<RankKey> = self
            .iter()
            .filter_map(|(id, m)| {
                Some(RankKey {
                    score: m.score(),
                    recency: recency(id)?,
                    id,
                })
            })
            .filter(|k| after.is_none_or(|a| a.before(k)))
            .collect();
        keys.sort_by(RankKey::cmp_rank);
        keys.truncate(limit.saturating_add(1));
        keys
    }

    /// The page of hits from the briefs of `page` (a customer without one,
    /// removed meanwhile, is left out).
    pub(crate) fn results(
        &self,
        page: &[RankKey],
        mut briefs: HashMap<CustomerId, Brief>,
        limit: usize,
        total_estimate: u64,
    ) -> SearchResults {
        let found = page
            .iter()
            .filter_map(|k| Some((briefs.remove(&k.id)?, self.get(&k.id)?)));
        let hits = query::best_first(query::rank_matches(MatchedOn::Phone, found));
        SearchResults::first(hits, limit, total_estimate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_rank_by_match_then_recency_then_id() {
        let ids: Vec<CustomerId> = (0..5).map(|_| CustomerId::new()).collect();
        let mut m = NumberMatches::default();
        m.add(ids[0], Match::Suffix);
        m.add(ids[0], Match::National);
        m.add(ids[1], Match::Suffix);
        m.add(ids[2], Match::Suffix);
        m.add(ids[3], Match::Suffix);
        m.add(ids[4], Match::Suffix);
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(&ids[0]), Some(Match::National));
        // ids[2] and ids[3] engaged at the same time: the newer id first;
        // ids[4] is no longer indexed.
        let recency = |id: CustomerId| match ids.iter().position(|i| *i == id) {
            Some(0) => Some(1.0),
            Some(1) => Some(30.0),
            Some(2) | Some(3) => Some(20.0),
            _ => None,
        };
        let order = |keys: Vec<RankKey>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
        let all = m.page(10, None, recency);
        assert_eq!(order(all.clone()), vec![ids[0], ids[1], ids[3], ids[2]]);
        assert_eq!(all[0].score, 0.9);
        assert_eq!(all[1].score, 0.6);
        assert_eq!(order(m.page(1, None, recency)), vec![ids[0], ids[1]]);
        assert_eq!(
            order(m.page(1, Some(all[1]), recency)),
            vec![ids[3], ids[2]]
        );
        assert!(m.page(5, Some(all[3]), recency).is_empty());
    }
}
