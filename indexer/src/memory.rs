//! The embedded index: the same behaviour as the Redis one, in process
//! memory, for the single-binary deployment and for tests.
//!
//! Name posting lists are ordered maps in ranking order (most recent
//! engagement first), one per token and one per whole name, each entry
//! holding the customer's name terms; a name search reads them through
//! [`ranking::search_names`], a chunk at a time, taking the read lock only
//! for each read, and stops as soon as its page is proven.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::RwLock;

use crm_models::{CustomerId, PhoneNumber};

use crate::doc::{fingerprint_of, CustomerSummary, IndexEntries, IndexedCustomer};
use crate::query::{self, Brief, Match, MatchedOn, Plan, Query, SearchResults};
use crate::ranking::{
    self, query_typo_keys, token_sets, typo_keys, whole_name_key, Entry, FirstRound, List,
    NameLists, NameTerms, RankKey, Read, Vocabulary, MAX_EXPANSIONS,
};
use crate::{
    FingerprintPage, IndexError, IndexResult, IndexedFingerprint, RebuildReport, SearchIndex,
    MAX_SEARCH_LIMIT,
};

mod bulk;
mod numbers;
pub mod snapshot;

/// In-process index behind one lock. Searches take the read lock for each
/// of their few reads, upserts the write lock; every operation is short.
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

/// A posting-list position: last engagement (µs; never: `i64::MIN`) and
/// id, highest first.
type Rank = Reverse<(i64, CustomerId)>;

/// A posting list in ranking order, each entry with the customer's name.
type Posting = BTreeMap<Rank, Arc<NameTerms>>;

#[derive(Default)]
struct Generation {
    customers: BTreeMap<CustomerId, Stored>,
    /// name token → its posting list; ordered, so a range is a prefix search.
    names: BTreeMap<String, Posting>,
    /// whole name (words in order) → its posting list.
    whole: HashMap<String, Posting>,
    /// set of two or three tokens → its posting list.
    sets: HashMap<String, Posting>,
    /// Names with too many tokens for sets.
    long: Posting,
    /// typo key ([`typo_keys`]) → tokens.
    typos: HashMap<String, BTreeSet<String>>,
    /// email → customer ids; ordered for prefix search.
    emails: BTreeMap<String, BTreeSet<CustomerId>>,
    phones: HashMap<String, BTreeSet<CustomerId>>,
    national: HashMap<String, BTreeSet<CustomerId>>,
    /// The digits of each E.164 number reversed → customer ids, each with
    /// its recency: the range of the reversed digits typed holds the
    /// numbers ending with them (see `numbers`).
    suffixes: BTreeMap<String, BTreeMap<CustomerId, f64>>,
    /// While this generation is being built: the customers upserts and
    /// removals wrote into it, which the rebuild then leaves as they are
    /// (its document may have been read before theirs).
    live: HashSet<CustomerId>,
}

struct Stored {
    summary: CustomerSummary,
    entries: IndexEntries,
    /// Computed when verify asks (it hashes the summary's JSON).
    fingerprint: OnceLock<String>,
    rank: Rank,
    whole: Option<String>,
    /// [`token_sets`]: `None` for a name in `long`.
    sets: Option<Vec<String>>,
    /// The customer record this was made from ([`snapshot::source_of`]).
    source: snapshot::Source,
}

impl From<Prepared> for Stored {
    fn from(p: Prepared) -> Stored {
        Stored {
            summary: p.summary,
            entries: p.entries,
            fingerprint: OnceLock::new(),
            rank: p.rank,
            whole: p.whole,
            sets: p.sets,
            source: p.source,
        }
    }
}

impl Stored {
    fn into_prepared(self) -> Prepared {
        Prepared {
            terms: Arc::new(NameTerms {
                tokens: self.entries.tokens.clone(),
                words: self.entries.words.clone(),
            }),
            summary: self.summary,
            entries: self.entries,
            rank: self.rank,
            whole: self.whole,
            sets: self.sets,
            source: self.source,
        }
    }
}

/// A document made ready for the index outside the lock.
#[derive(Clone)]
pub(crate) struct Prepared {
    summary: CustomerSummary,
    entries: IndexEntries,
    terms: Arc<NameTerms>,
    rank: Rank,
    whole: Option<String>,
    /// [`token_sets`]: `None` for a name in `long`.
    sets: Option<Vec<String>>,
    source: snapshot::Source,
}

impl Prepared {
    /// `None` for a customer the index drops (merged).
    pub(crate) fn of(doc: &IndexedCustomer) -> Option<Prepared> {
        if !doc.is_searchable() {
            return None;
        }
        Some(Prepared::from_parts(
            doc.summary(),
            doc.entries(),
            snapshot::source_of(&doc.customer),
        ))
    }

    /// What is derived from the summary and the entries (the ranking, the
    /// name lists' keys) made again.
    fn from_parts(
        summary: CustomerSummary,
        entries: IndexEntries,
        source: snapshot::Source,
    ) -> Prepared {
        let recency = summary
            .last_engagement_at
            .map_or(i64::MIN, |t| t.timestamp_micros());
        Prepared {
            terms: Arc::new(NameTerms {
                tokens: entries.tokens.clone(),
                words: entries.words.clone(),
            }),
            whole: whole_name_key(&entries.words),
            sets: token_sets(&entries.tokens),
            rank: Reverse((recency, summary.id)),
            summary,
            entries,
            source,
        }
    }
}

impl MemoryIndex {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Generation {
    /// Indexes a prepared document (`None`: removes the customer).
    fn upsert(&mut self, id: CustomerId, doc: Option<Prepared>) {
        self.remove(id, &IndexEntries::default());
        let Some(p) = doc else {
            return;
        };
        for t in &p.entries.tokens {
            match self.names.get_mut(t) {
                // A token already indexed has its typo keys already: only a
                // new one computes them (most tokens are common names).
                Some(posting) => {
                    posting.insert(p.rank, p.terms.clone());
                }
                None => {
                    self.names
                        .insert(t.clone(), BTreeMap::from([(p.rank, p.terms.clone())]));
                    for v in typo_keys(t) {
                        self.typos.entry(v).or_default().insert(t.clone());
                    }
                }
            }
        }
        if let Some(w) = &p.whole {
            self.whole
                .entry(w.clone())
                .or_default()
                .insert(p.rank, p.terms.clone());
        }
        match &p.sets {
            Some(sets) => {
                for k in sets {
                    self.sets
                        .entry(k.clone())
                        .or_default()
                        .insert(p.rank, p.terms.clone());
                }
            }
            None => {
                self.long.insert(p.rank, p.terms.clone());
            }
        }
        for e in &p.entries.emails {
            self.emails.entry(e.clone()).or_default().insert(id);
        }
        for ph in &p.entries.phones {
            self.phones.entry(ph.clone()).or_default().insert(id);
            let recency = ranking::recency_of(p.summary.last_engagement_at.as_ref());
            let reversed = query::reversed_digits(ph);
            self.suffixes
                .entry(reversed)
                .or_default()
                .insert(id, recency);
        }
        for n in &p.entries.national {
            self.national.entry(n.clone()).or_default().insert(id);
        }
        self.customers.insert(id, Stored::from(p));
    }

    /// Removes what the customer is indexed under, and `also` (identifiers
    /// the caller says it had).
    fn remove(&mut self, id: CustomerId, also: &IndexEntries) {
        let stored = self.customers.remove(&id);
        if let Some(s) = &stored {
            for t in &s.entries.tokens {
                let Some(posting) = self.names.get_mut(t) else {
                    continue;
                };
                posting.remove(&s.rank);
                if posting.is_empty() {
                    self.names.remove(t);
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
            if let Some(w) = &s.whole {
                drop_entry(&mut self.whole, w, &s.rank);
            }
            match &s.sets {
                Some(sets) => {
                    for k in sets {
                        drop_entry(&mut self.sets, k, &s.rank);
                    }
                }
                None => {
                    self.long.remove(&s.rank);
                }
            }
        }
        let entries = match stored {
            Some(s) => s.entries.union(also),
            None => also.clone(),
        };
        for e in &entries.emails {
            drop_member(&mut self.emails, e, &id);
        }
        for p in &entries.phones {
            drop_hashed(&mut self.phones, p, &id);
            numbers::drop_suffix(&mut self.suffixes, p, &id);
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

    /// Every hit of an email or phone query (they are few).
    fn search_identifiers(&self, plan: Plan) -> Vec<query::SearchHit> {
        match plan {
            // Numbers: see `numbers`.
            Plan::Nothing | Plan::Name(_) | Plan::Phone { .. } => Vec::new(),
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
        }
    }

    fn posting(&self, list: &List) -> Option<&Posting> {
        match list {
            List::Token(t) => self.names.get(t),
            List::Whole(w) => self.whole.get(w),
            List::Set(k) => self.sets.get(k),
            List::Long => Some(&self.long),
        }
    }

    fn read(&self, r: &Read) -> Vec<Entry> {
        self.posting(&r.list)
            .map(|posting| {
                posting
                    .iter()
                    .skip(r.start)
                    .take(r.count)
                    .map(|(Reverse((recency, id)), terms)| Entry {
                        id: *id,
                        recency: if *recency == i64::MIN {
                            ranking::NEVER
                        } else {
                            *recency as f64
                        },
                        terms: terms.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The name lists of the live generation, read one lock at a time.
struct Lists<'a>(&'a RwLock<State>);

#[async_trait]
impl NameLists for Lists<'_> {
    async fn vocabulary_and_read(
        &self,
        tokens: &[String],
        reads: &[Read],
        _ahead: Option<(&[List], &[Read])>,
    ) -> IndexResult<FirstRound> {
        let state = self.0.read();
        let g = &state.current;
        let vocabulary = tokens
            .iter()
            .map(|q| Vocabulary {
                prefixed: prefixed(&g.names, q)
                    .take(MAX_EXPANSIONS)
                    .map(|(t, _)| t.clone())
                    .collect(),
                near: query_typo_keys(q)
                    .iter()
                    .filter_map(|v| g.typos.get(v))
                    .flatten()
                    .cloned()
                    .collect(),
            })
            .collect();
        Ok(FirstRound {
            vocabulary,
            replies: reads.iter().map(|r| g.read(r)).collect(),
            ahead: None,
        })
    }

    async fn sizes_and_read(
        &self,
        lists: &[List],
        reads: &[Read],
    ) -> IndexResult<(Vec<u64>, Vec<Vec<Entry>>)> {
        let state = self.0.read();
        let g = &state.current;
        let sizes = lists
            .iter()
            .map(|l| g.posting(l).map_or(0, |p| p.len() as u64))
            .collect();
        Ok((sizes, reads.iter().map(|r| g.read(r)).collect()))
    }

    async fn briefs(&self, ids: &[CustomerId]) -> IndexResult<Vec<Brief>> {
        let state = self.0.read();
        Ok(ids
            .iter()
            .filter_map(|id| state.current.customers.get(id))
            .map(|s| Brief::from(&s.summary))
            .collect())
    }
}

fn prefixed<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// Removes an entry from the posting list at `key`, and the list when it
/// became empty.
fn drop_entry(map: &mut HashMap<String, Posting>, key: &str, rank: &Rank) {
    if let Some(posting) = map.get_mut(key) {
        posting.remove(rank);
        if posting.is_empty() {
            map.remove(key);
        }
    }
}

/// Removes `id` from the set at `key`, and the set when it became empty.
fn drop_member(map: &mut BTreeMap<String, BTreeSet<CustomerId>>, key: &str, id: &CustomerId) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
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

/// Documents a rebuild prepares before taking the lock once for all of them.
const REBUILD_CHUNK: usize = 256;

#[async_trait]
impl SearchIndex for MemoryIndex {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> IndexResult<()> {
        Ok(())
    }

    async fn upsert(&self, doc: &IndexedCustomer) -> IndexResult<()> {
        let prepared = Prepared::of(doc);
        self.state
            .write()
            .apply(doc.id(), |g| g.upsert(doc.id(), prepared.clone()));
        Ok(())
    }

    async fn remove(&self, id: CustomerId, identifiers: &[String]) -> IndexResult<()> {
        let also = IndexEntries::from_identifier_keys(identifiers);
        self.state.write().apply(id, |g| g.remove(id, &also));
        Ok(())
    }

    async fn search_page(
        &self,
        query: &Query,
        limit: usize,
        after: Option<RankKey>,
    ) -> IndexResult<SearchResults> {
        let limit = limit.clamp(1, MAX_SEARCH_LIMIT);
        match Plan::of(query) {
            Plan::Name(tokens) => {
                let words = query::query_words(query);
                ranking::name_page(&Lists(&self.state), &tokens, &words, limit, after).await
            }
            Plan::Phone {
                e164,
                national,
                suffix,
            } => Ok(self.state.read().current.search_numbers(
                &e164,
                national.as_deref(),
                suffix.as_deref(),
                limit,
                after,
            )),
            plan => {
                let hits = self.state.read().current.search_identifiers(plan);
                Ok(SearchResults::page_of(hits, limit, after))
            }
        }
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
        docs: BoxStream<'_, IndexResult<IndexedCustomer>>,
    ) -> IndexResult<RebuildReport> {
        let started = std::time::Instant::now();
        let generation = self.begin_build();
        let mut customers = 0u64;
        let mut prepared: Vec<(CustomerId, Prepared)> = Vec::new();
        let mut chunks = docs.ready_chunks(REBUILD_CHUNK);
        // A chunk is prepared (summary, tokens, sets) on a blocking thread
        // while the next one is read; the generation is built from all of
        // them at the end ([`Generation::bulk`]).
        let mut pending: Option<tokio::task::JoinHandle<Vec<(CustomerId, Option<Prepared>)>>> =
            None;
        loop {
            let next = match chunks.next().await {
                Some(chunk) => {
                    let mut docs = Vec::with_capacity(chunk.len());
                    for item in chunk {
                        match item {
                            Ok(doc) => docs.push(doc),
                            Err(e) => {
                                self.abandon(generation);
                                return Err(IndexError::RebuildAbandoned(e.to_string()));
                            }
                        }
                    }
                    Some(tokio::task::spawn_blocking(move || {
                        docs.iter()
                            .map(|doc| (doc.id(), Prepared::of(doc)))
                            .collect::<Vec<_>>()
                    }))
                }
                None => None,
            };
            if let Some(ready) = pending.take() {
                let chunk = ready.await.map_err(|e| {
                    self.abandon(generation);
                    IndexError::RebuildAbandoned(format!("preparing documents failed: {e}"))
                })?;
                customers += chunk.len() as u64;
                prepared.extend(chunk.into_iter().filter_map(|(id, p)| Some((id, p?))));
                if !self.is_building(generation) {
                    return Err(another_rebuild());
                }
            }
            match next {
                Some(handle) => pending = Some(handle),
                None => break,
            }
        }
        self.finish_build(generation, prepared, customers, started)
            .await
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
                fingerprint: s
                    .fingerprint
                    .get_or_init(|| fingerprint_of(&s.summary))
                    .clone(),
            })
            .collect();
        let next = (items.len() == limit)
            .then(|| items.last().map(|f| f.id.to_string()))
            .flatten();
        Ok(FingerprintPage { items, next })
    }
}

impl MemoryIndex {
    /// Starts building a generation beside the live one: from now on,
    /// upserts and removals also go into it and win over what the build
    /// puts there ([`MemoryIndex::finish_build`]). Returns its number.
    pub(crate) fn begin_build(&self) -> u64 {
        let mut state = self.state.write();
        let next = state
            .generation
            .max(state.building.as_ref().map_or(0, |b| b.0))
            + 1;
        state.building = Some((next, Generation::default()));
        next
    }

    /// Builds the generation out of `prepared` ([`Generation::bulk`]), lays
    /// what was written meanwhile over it, and makes it the live one.
    /// `customers`: how many documents the build read.
    pub(crate) async fn finish_build(
        &self,
        generation: u64,
        prepared: Vec<(CustomerId, Prepared)>,
        customers: u64,
        started: std::time::Instant,
    ) -> IndexResult<RebuildReport> {
        let mut built = tokio::task::spawn_blocking(move || Generation::bulk(prepared))
            .await
            .map_err(|e| {
                self.abandon(generation);
                IndexError::RebuildAbandoned(format!("building the index failed: {e}"))
            })?;
        let mut state = self.state.write();
        match state.building.take() {
            Some((g, mut building)) if g == generation => {
                // What upserts and removals wrote while the documents were
                // read is newer than the documents: it wins.
                for id in std::mem::take(&mut building.live) {
                    let doc = building.customers.remove(&id).map(Stored::into_prepared);
                    built.upsert(id, doc);
                }
                let replaced = std::mem::replace(&mut state.current, built);
                state.generation = generation;
                drop(state);
                // Freeing a million customers takes a while: not under the lock.
                drop(replaced);
                drop(building);
                Ok(RebuildReport {
                    generation,
                    customers,
                    live_after: started.elapsed(),
                })
            }
            other => {
                state.building = other;
                Err(another_rebuild())
            }
        }
    }
}

fn another_rebuild() -> IndexError {
    IndexError::RebuildAbandoned("another rebuild started".to_string())
}

impl MemoryIndex {
    fn is_building(&self, generation: u64) -> bool {
        self.state
            .read()
            .building
            .as_ref()
            .is_some_and(|b| b.0 == generation)
    }

    pub(crate) fn abandon(&self, generation: u64) {
        let mut state = self.state.write();
        if state.building.as_ref().is_some_and(|b| b.0 == generation) {
            state.building = None;
        }
    }
}
