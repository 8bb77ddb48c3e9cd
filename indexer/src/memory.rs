//! The embedded index: the same behaviour as the Redis one, in process
//! memory, for the single-binary deployment and for tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::RwLock;

use crm_models::names;
use crm_models::{CustomerId, PhoneNumber};

use crate::doc::{fingerprint_of, CustomerSummary, IndexEntries, IndexedCustomer};
use crate::query::{self, Brief, Match, MatchedOn, NameCandidate, Plan, Query, SearchHit};
use crate::{
    FingerprintPage, IndexError, IndexResult, IndexedFingerprint, RebuildReport, SearchIndex,
};

/// In-process index behind one lock. Searches take the read lock, upserts the
/// write lock; every operation is short.
#[derive(Default)]
pub struct MemoryIndex {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    current: Generation,
    /// The generation a rebuild is writing, with its number.
    building: Option<(u64, Generation)>,
    generation: u64,
}

#[derive(Default)]
struct Generation {
    customers: BTreeMap<CustomerId, Stored>,
    /// name token → customer ids; ordered, so a range is a prefix search.
    names: BTreeMap<String, BTreeSet<CustomerId>>,
    /// deletion variant (or the token itself) → tokens.
    typos: HashMap<String, BTreeSet<String>>,
    /// email → customer ids; ordered for prefix search.
    emails: BTreeMap<String, BTreeSet<CustomerId>>,
    phones: HashMap<String, BTreeSet<CustomerId>>,
    national: HashMap<String, BTreeSet<CustomerId>>,
    /// While this generation is being built: the customers upserts and
    /// removals wrote into it, which the rebuild then leaves as they are
    /// (its document may have been read before theirs).
    live: HashSet<CustomerId>,
}

struct Stored {
    summary: CustomerSummary,
    entries: IndexEntries,
    fingerprint: String,
}

impl MemoryIndex {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Generation {
    fn upsert(&mut self, doc: &IndexedCustomer) {
        if !doc.is_searchable() {
            self.remove(doc.id(), &IndexEntries::default());
            return;
        }
        let entries = doc.entries();
        self.remove(doc.id(), &IndexEntries::default());
        let id = doc.id();
        for t in &entries.tokens {
            // A token already indexed has its typo keys already: only a new
            // one computes them (most tokens are common names).
            if let Some(ids) = self.names.get_mut(t) {
                ids.insert(id);
                continue;
            }
            self.names.insert(t.clone(), BTreeSet::from([id]));
            for v in typo_keys(t) {
                self.typos.entry(v).or_default().insert(t.clone());
            }
        }
        for e in &entries.emails {
            self.emails.entry(e.clone()).or_default().insert(id);
        }
        for p in &entries.phones {
            self.phones.entry(p.clone()).or_default().insert(id);
        }
        for n in &entries.national {
            self.national.entry(n.clone()).or_default().insert(id);
        }
        let summary = doc.summary();
        self.customers.insert(
            id,
            Stored {
                fingerprint: fingerprint_of(&summary),
                summary,
                entries,
            },
        );
    }

    /// Removes what the customer is indexed under, and `also` (identifiers
    /// the caller says it had).
    fn remove(&mut self, id: CustomerId, also: &IndexEntries) {
        let entries = match self.customers.remove(&id) {
            Some(stored) => stored.entries.union(also),
            None => also.clone(),
        };
        for t in &entries.tokens {
            if drop_member(&mut self.names, t, &id) {
                for v in typo_keys(t) {
                    if let Some(set) = self.typos.get_mut(&v) {
                        set.remove(t);
                        if set.is_empty() {
                            self.typos.remove(&v);
                        }
                    }
                }
            }
        }
        for e in &entries.emails {
            drop_member(&mut self.emails, e, &id);
        }
        for p in &entries.phones {
            drop_hashed(&mut self.phones, p, &id);
        }
        for n in &entries.national {
            drop_hashed(&mut self.national, n, &id);
        }
    }

    fn summaries(&self, ids: impl IntoIterator<Item = CustomerId>) -> Vec<CustomerSummary> {
        ids.into_iter()
            .filter_map(|id| self.customers.get(&id).map(|s| s.summary.clone()))
            .collect()
    }

    fn briefs(&self, ids: impl IntoIterator<Item = CustomerId>, m: Match) -> Vec<(Brief, Match)> {
        ids.into_iter()
            .filter_map(|id| {
                self.customers
                    .get(&id)
                    .map(|s| (Brief::from(&s.summary), m))
            })
            .collect()
    }

    fn search(&self, plan: Plan) -> Vec<SearchHit> {
        match plan {
            Plan::Nothing => Vec::new(),
            Plan::Name(tokens) => {
                // Candidates come from the token with the fewest; the ranking
                // then checks every token against each candidate's tokens.
                let mut smallest: Option<BTreeSet<CustomerId>> = None;
                for q in &tokens {
                    let ids = self.name_candidates(q);
                    let narrower = match &smallest {
                        Some(s) => ids.len() < s.len(),
                        None => true,
                    };
                    if narrower {
                        smallest = Some(ids);
                    }
                }
                let candidates = smallest
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|id| self.customers.get(&id))
                    .map(|s| NameCandidate {
                        brief: Brief::from(&s.summary),
                        tokens: s.entries.tokens.clone(),
                    })
                    .collect();
                query::rank_names(&tokens, candidates)
            }
            Plan::Email { text, exact } => {
                let mut found = Vec::new();
                for (email, ids) in prefixed(&self.emails, &text) {
                    let m = if exact && *email == text {
                        Match::Exact
                    } else {
                        Match::Prefix
                    };
                    found.extend(self.briefs(ids.iter().copied(), m));
                }
                query::rank_matches(MatchedOn::Email, found)
            }
            Plan::Phone { e164, national } => {
                let mut found = Vec::new();
                for p in &e164 {
                    let ids = self.phones.get(p).into_iter().flatten().copied();
                    found.extend(self.briefs(ids, Match::Exact));
                }
                if let Some(n) = &national {
                    let ids = self.national.get(n).into_iter().flatten().copied();
                    found.extend(self.briefs(ids, Match::National));
                }
                query::rank_matches(MatchedOn::Phone, found)
            }
        }
    }

    /// Customers with a token that is, starts with, or is one typo from `q`.
    fn name_candidates(&self, q: &str) -> BTreeSet<CustomerId> {
        let mut ids: BTreeSet<CustomerId> = prefixed(&self.names, q)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        for v in typo_keys(q) {
            for token in self.typos.get(&v).into_iter().flatten() {
                ids.extend(self.names.get(token).into_iter().flatten().copied());
            }
        }
        ids
    }
}

/// The typo-table keys of a token: itself and its deletion variants, or
/// nothing when the token is too short for typos.
pub(crate) fn typo_keys(token: &str) -> Vec<String> {
    let variants = names::deletion_variants(token);
    if variants.is_empty() {
        return variants;
    }
    let mut keys = Vec::with_capacity(variants.len() + 1);
    keys.push(token.to_string());
    keys.extend(variants);
    keys
}

fn prefixed<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// Removes `id` from the set at `key`; true when the set became empty (and went).
fn drop_member(
    map: &mut BTreeMap<String, BTreeSet<CustomerId>>,
    key: &str,
    id: &CustomerId,
) -> bool {
    let Some(set) = map.get_mut(key) else {
        return false;
    };
    set.remove(id);
    if set.is_empty() {
        map.remove(key);
        return true;
    }
    false
}

fn drop_hashed(map: &mut HashMap<String, BTreeSet<CustomerId>>, key: &str, id: &CustomerId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl State {
    /// Applies a change to the live generation and to the one being built,
    /// where it marks the customer live.
    fn apply(&mut self, id: CustomerId, change: impl Fn(&mut Generation)) {
        change(&mut self.current);
        if let Some((_, building)) = self.building.as_mut() {
            change(building);
            building.live.insert(id);
        }
    }
}

#[async_trait]
impl SearchIndex for MemoryIndex {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> IndexResult<()> {
        Ok(())
    }

    async fn upsert(&self, doc: &IndexedCustomer) -> IndexResult<()> {
        self.state.write().apply(doc.id(), |g| g.upsert(doc));
        Ok(())
    }

    async fn remove(&self, id: CustomerId, identifiers: &[String]) -> IndexResult<()> {
        let also = IndexEntries::from_identifier_keys(identifiers);
        self.state.write().apply(id, |g| g.remove(id, &also));
        Ok(())
    }

    async fn search(&self, query: &Query, limit: usize) -> IndexResult<Vec<SearchHit>> {
        let plan = Plan::of(query);
        let hits = self.state.read().current.search(plan);
        Ok(query::best_first(hits, limit))
    }

    async fn lookup_phone(&self, phone: &PhoneNumber) -> IndexResult<Vec<CustomerSummary>> {
        let state = self.state.read();
        let g = &state.current;
        let ids = g.phones.get(phone.as_str()).into_iter().flatten().copied();
        Ok(query::most_recent_first(g.summaries(ids)))
    }

    async fn summary(&self, id: CustomerId) -> IndexResult<Option<CustomerSummary>> {
        let state = self.state.read();
        Ok(state.current.customers.get(&id).map(|s| s.summary.clone()))
    }

    async fn rebuild(
        &self,
        mut docs: BoxStream<'_, IndexResult<IndexedCustomer>>,
    ) -> IndexResult<RebuildReport> {
        let started = std::time::Instant::now();
        let generation = {
            let mut state = self.state.write();
            let next = state
                .generation
                .max(state.building.as_ref().map_or(0, |b| b.0))
                + 1;
            state.building = Some((next, Generation::default()));
            next
        };
        let mut customers = 0u64;
        while let Some(item) = docs.next().await {
            let doc = match item {
                Ok(doc) => doc,
                Err(e) => {
                    self.abandon(generation);
                    return Err(IndexError::RebuildAbandoned(e.to_string()));
                }
            };
            let mut state = self.state.write();
            match state.building.as_mut() {
                Some((g, building)) if *g == generation => {
                    if !building.live.contains(&doc.id()) {
                        building.upsert(&doc);
                    }
                }
                _ => {
                    return Err(IndexError::RebuildAbandoned(
                        "another rebuild started".to_string(),
                    ))
                }
            }
            customers += 1;
        }
        let mut state = self.state.write();
        match state.building.take() {
            Some((g, mut building)) if g == generation => {
                building.live.clear();
                state.current = building;
                state.generation = generation;
                Ok(RebuildReport {
                    generation,
                    customers,
                    live_after: started.elapsed(),
                })
            }
            other => {
                state.building = other;
                Err(IndexError::RebuildAbandoned(
                    "another rebuild started".to_string(),
                ))
            }
        }
    }

    async fn fingerprints(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> IndexResult<FingerprintPage> {
        let lower =
            match cursor {
                Some(c) => Bound::Excluded(c.parse::<CustomerId>().map_err(|_| {
                    IndexError::Internal(format!("not a fingerprint cursor: {c:?}"))
                })?),
                None => Bound::Unbounded,
            };
        let limit = limit.max(1);
        let state = self.state.read();
        let items: Vec<IndexedFingerprint> = state
            .current
            .customers
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(id, s)| IndexedFingerprint {
                id: *id,
                fingerprint: s.fingerprint.clone(),
            })
            .collect();
        let next = (items.len() == limit)
            .then(|| items.last().map(|f| f.id.to_string()))
            .flatten();
        Ok(FingerprintPage { items, next })
    }
}

impl MemoryIndex {
    fn abandon(&self, generation: u64) {
        let mut state = self.state.write();
        if state.building.as_ref().is_some_and(|b| b.0 == generation) {
            state.building = None;
        }
    }
}
