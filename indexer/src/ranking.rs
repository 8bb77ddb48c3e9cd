//! Name search, the same on every adapter: which posting lists to read, in
//! which order, and when to stop.
//!
//! An adapter keeps, per name token and per whole name, a posting list of
//! the customers it names in ranking order (most recent engagement first,
//! then highest id), each entry carrying the customer's name tokens and
//! words; and a vocabulary of tokens with a typo table. It answers reads of
//! those lists ([`NameLists`]); everything else happens here:
//!
//! - Each query token is expanded to the vocabulary tokens it matches:
//!   tokens it is a prefix of (at most [`MAX_EXPANSIONS`], in token order)
//!   and tokens one typo from it (query tokens of [`names::MIN_TYPO_CHARS`]
//!   characters or more; a typo may reach a three-letter token: `tann` →
//!   `tan`).
//! - Whole-name lists give names whose every word was typed: the words in
//!   the order typed score 1, any other order (or a subset, `ann an` names
//!   `Ann`) scores [`query::ORDER_PENALTY`] less. With typos corrected, the
//!   names the query would name (`tan wei mnig` → `Tan Wei Ming`).
//! - The lists of the query token with the fewest entries (the driver) give
//!   every other match: each entry is checked against the other query tokens.
//! - When the query has two tokens or more, the lists of the next smallest
//!   token give the partial matches (every query token but one matches),
//!   which rank after every full match.
//!
//! Lists are read a chunk at a time, in rounds; a list stops when nothing
//! unread in it can enter the page (its entries' best score, [`Cursor::bound`],
//! with the recency of the last entry read, ranks below the page's last hit),
//! and the search stops after [`MAX_SCANNED`] entries with the best it has.

use std::collections::{BTreeSet, HashMap, HashSet};

use foldhash::{HashMap as FastMap, HashMapExt, HashSet as FastSet, HashSetExt};
use std::sync::Arc;

use async_trait::async_trait;

use crm_models::names;
use crm_models::time::Timestamp;
use crm_models::CustomerId;

use crate::query::{self, Brief, Match, NameScore, SearchResults};
use crate::IndexResult;

/// Most vocabulary tokens one query token stands for: the tokens it is a
/// prefix of (in token order), and as many one-typo neighbours. `t` alone
/// may start thousands of tokens; the first ones are used.
pub const MAX_EXPANSIONS: usize = 64;

/// Most posting-list entries one name search reads. A search that has not
/// proven its page by then answers with the best it has read (at one
/// million generated customers this happens to queries of two or more
/// common partial tokens whose combination is rare).
pub const MAX_SCANNED: usize = 1_500;

/// Entries read per list in the first round of a multi-token search; each
/// further round reads four times as many.
const FIRST_CHUNK: usize = 64;

/// The recency of a customer that never engaged: below every date.
pub const NEVER: f64 = -9.0e18;

/// A posting list's order key: the last engagement in microseconds.
pub fn recency_of(at: Option<&Timestamp>) -> f64 {
    at.map_or(NEVER, |t| t.timestamp_micros() as f64)
}

/// Where a hit stands in the ranking: score, then recency, then id, each
/// highest first. A page cursor is the key of the last hit shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankKey {
    pub score: f64,
    /// [`recency_of`] the last engagement.
    pub recency: f64,
    pub id: CustomerId,
}

impl RankKey {
    /// True when `self` ranks before `other`.
    pub fn before(&self, other: &RankKey) -> bool {
        match self.score.partial_cmp(&other.score) {
            Some(std::cmp::Ordering::Greater) => true,
            Some(std::cmp::Ordering::Less) | None => false,
            Some(std::cmp::Ordering::Equal) => match self.recency.partial_cmp(&other.recency) {
                Some(std::cmp::Ordering::Greater) => true,
                Some(std::cmp::Ordering::Less) | None => false,
                Some(std::cmp::Ordering::Equal) => self.id > other.id,
            },
        }
    }

    pub fn cmp_rank(&self, other: &RankKey) -> std::cmp::Ordering {
        if self.before(other) {
            std::cmp::Ordering::Less
        } else if other.before(self) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }
}

/// A customer's name as its posting-list entries carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTerms {
    /// Search tokens ([`names::tokenize`]).
    pub tokens: Vec<String>,
    /// Words as read ([`names::words`]), in name order.
    pub words: Vec<String>,
}

/// One posting-list entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: CustomerId,
    pub recency: f64,
    pub terms: Arc<NameTerms>,
}

/// A posting list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum List {
    /// The customers with this name token.
    Token(String),
    /// The customers whose name is exactly these words, in this order
    /// ([`whole_name_key`]).
    Whole(String),
    /// The customers whose name has all of these two or three tokens
    /// ([`token_sets`]).
    Set(String),
    /// The customers whose name has too many tokens for [`token_sets`].
    Long,
}

/// Entries `start..start + count` of a list, in ranking order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub list: List,
    pub start: usize,
    pub count: usize,
}

/// What a query token finds in the vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    /// Tokens starting with it, in token order, at most [`MAX_EXPANSIONS`].
    pub prefixed: Vec<String>,
    /// Tokens in the typo table under its [`query_typo_keys`].
    pub near: Vec<String>,
}

/// What the first round of a name search answers.
pub struct FirstRound {
    pub vocabulary: Vec<Vocabulary>,
    /// The first round's own reads.
    pub replies: Vec<Vec<Entry>>,
    /// The sizes and reads asked for ahead, when the vocabulary they were
    /// planned from is still current.
    pub ahead: Option<(Vec<u64>, Vec<Vec<Entry>>)>,
}

/// The reads an adapter answers. Each call is one round trip to the index;
/// no lock is held between calls.
#[async_trait]
pub(crate) trait NameLists: Sync {
    /// The vocabulary of each query token as an earlier search read it,
    /// when the adapter kept it; [`vocabulary_and_read`](Self::vocabulary_and_read)
    /// then checks that it is still current.
    fn vocabulary_hint(&self, _tokens: &[String]) -> Option<Vec<Vocabulary>> {
        None
    }

    /// The vocabulary of each query token, and `reads`; with `ahead` (the
    /// sizes and reads planned from [`vocabulary_hint`](Self::vocabulary_hint)),
    /// those too, answered only when the hint was current.
    async fn vocabulary_and_read(
        &self,
        tokens: &[String],
        reads: &[Read],
        ahead: Option<(&[List], &[Read])>,
    ) -> IndexResult<FirstRound>;

    /// The number of entries of each list, and `reads`.
    async fn sizes_and_read(
        &self,
        lists: &[List],
        reads: &[Read],
    ) -> IndexResult<(Vec<u64>, Vec<Vec<Entry>>)>;

    /// What the hits show of these customers (those gone are left out).
    async fn briefs(&self, ids: &[CustomerId]) -> IndexResult<Vec<Brief>>;

    /// [`briefs`](Self::briefs) of `ids`, and whether each of `check` has
    /// one, in the same round trip: a page's hits, and the one after them
    /// that tells whether a next page exists (only its presence matters).
    async fn briefs_and_presence(
        &self,
        ids: &[CustomerId],
        check: &[CustomerId],
    ) -> IndexResult<(Vec<Brief>, Vec<bool>)> {
        let mut all = ids.to_vec();
        all.extend_from_slice(check);
        let mut briefs = self.briefs(&all).await?;
        let present = check
            .iter()
            .map(|id| briefs.iter().any(|b| b.id == *id))
            .collect();
        briefs.retain(|b| ids.contains(&b.id));
        Ok((briefs, present))
    }
}

/// The typo-table keys of an indexed token: itself and its deletion
/// variants; a three-letter token only itself (a longer query reaches it by
/// a deletion: `tann` → `tan`); nothing for shorter or CJK tokens.
pub fn typo_keys(token: &str) -> Vec<String> {
    let variants = names::deletion_variants(token);
    if variants.is_empty() {
        let short =
            token.chars().count() == names::MIN_TYPO_CHARS - 1 && !token.chars().any(names::is_cjk);
        return if short {
            vec![token.to_string()]
        } else {
            Vec::new()
        };
    }
    let mut keys = Vec::with_capacity(variants.len() + 1);
    keys.push(token.to_string());
    keys.extend(variants);
    keys
}

/// The typo-table keys a query token looks up: none when it is too short
/// to be corrected.
pub fn query_typo_keys(q: &str) -> Vec<String> {
    if q.chars().count() < names::MIN_TYPO_CHARS {
        Vec::new()
    } else {
        typo_keys(q)
    }
}

/// Most name tokens (not counting CJK ones) whose sets of two and three
/// are indexed (20 lists at five); a longer name goes to [`List::Long`].
pub const MAX_SET_TOKENS: usize = 5;

/// What a name is indexed under besides its tokens: the key of every set
/// of two and of three of its tokens ([`set_key`]; CJK tokens left out,
/// they never match a query that has other tokens), or `None` when there
/// are more than [`MAX_SET_TOKENS`] such tokens (the name goes to
/// [`List::Long`] instead).
pub fn token_sets(tokens: &[String]) -> Option<Vec<String>> {
    let latin: Vec<&str> = tokens
        .iter()
        .filter(|t| !t.chars().any(names::is_cjk))
        .map(String::as_str)
        .collect();
    if latin.len() > MAX_SET_TOKENS {
        return None;
    }
    let mut keys = Vec::new();
    for size in 2..=latin.len().min(3) {
        for subset in subsets(latin.len(), size) {
            let picked: Vec<&str> = subset.iter().map(|&i| latin[i]).collect();
            keys.extend(set_key(&picked));
        }
    }
    keys.sort();
    keys.dedup();
    Some(keys)
}

/// The key of a set of tokens: sorted, each once, space-separated; `None`
/// for fewer than two distinct tokens.
pub fn set_key(tokens: &[&str]) -> Option<String> {
    let set: BTreeSet<&str> = tokens.iter().copied().collect();
    (set.len() >= 2).then(|| set.into_iter().collect::<Vec<_>>().join(" "))
}

/// The key of a whole name: its words in order, space-separated.
pub fn whole_name_key(words: &[String]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

/// Most query words whose every arrangement of every subset is looked up as
/// a whole name (64 lists at 4 words).
const WHOLE_NAME_WORDS: usize = 4;

/// The whole names a query can match with no partial-name penalty (names
/// whose every word is a query token), each with the best score its
/// entries can have: the words as typed (1), every other arrangement of
/// every subset of the tokens when there are at most [`WHOLE_NAME_WORDS`]
/// (`tan ann` names `Ann Tan`, `ann an` names `Ann`), otherwise the tokens
/// in order; and the words as typed when they differ from the tokens
/// (`陈大文`).
fn whole_name_keys(tokens: &[String], words: &[String]) -> Vec<(String, f64)> {
    let typed = whole_name_key(words);
    let mut keys: Vec<String> = Vec::new();
    let distinct: Vec<&String> = {
        let mut seen = BTreeSet::new();
        tokens.iter().filter(|t| seen.insert(*t)).collect()
    };
    if distinct.len() <= WHOLE_NAME_WORDS {
        let mut used = vec![false; distinct.len()];
        let mut current: Vec<String> = Vec::new();
        arrangements(&distinct, &mut used, &mut current, &mut keys);
    } else {
        keys.extend(whole_name_key(tokens));
    }
    keys.extend(typed.clone());
    let mut seen = HashSet::new();
    keys.into_iter()
        .filter(|k| seen.insert(k.clone()))
        .map(|k| {
            let bound = whole_name_bound(tokens, words, &k, Some(&k) == typed.as_ref());
            (k, bound)
        })
        .collect()
}

/// The score of every entry of a whole-name list (their words are the
/// key's, and so are their tokens unless the name is CJK, whose tokens are
/// substrings): then the list is read only as far as it can rank.
fn whole_name_bound(tokens: &[String], words: &[String], key: &str, typed: bool) -> f64 {
    if key.chars().any(names::is_cjk) {
        return if typed {
            1.0
        } else {
            1.0 - query::ORDER_PENALTY
        };
    }
    let key_words: Vec<String> = key.split(' ').map(str::to_string).collect();
    query::name_score(tokens, words, &key_words, &key_words).map_or(0.0, |s| s.score)
}

/// Every non-empty arrangement of the unused `tokens`, after `current`.
fn arrangements(
    tokens: &[&String],
    used: &mut [bool],
    current: &mut Vec<String>,
    out: &mut Vec<String>,
) {
    for i in 0..tokens.len() {
        if used[i] {
            continue;
        }
        used[i] = true;
        current.push(tokens[i].clone());
        out.extend(whole_name_key(current));
        arrangements(tokens, used, current, out);
        current.pop();
        used[i] = false;
    }
}

/// Typo corrections tried per query token for whole-name lookups.
const CORRECTIONS_PER_TOKEN: usize = 4;

/// Most whole-name lookups of corrected queries.
const MAX_CORRECTED: usize = 16;

/// Whole names the query names once its typos are corrected, in the order
/// typed: each query token that is not itself a known token is replaced by
/// the known tokens one typo from it (the first [`CORRECTIONS_PER_TOKEN`]).
/// Empty when no token needs correcting, when one matches neither exactly
/// nor by a typo (a prefix names no whole word), or when there would be more
/// than [`MAX_CORRECTED`] combinations.
fn typo_whole_name_keys(tokens: &[String], expansions: &[Vec<(String, Match)>]) -> Vec<String> {
    let mut choices: Vec<Vec<&String>> = Vec::with_capacity(tokens.len());
    let mut corrected = false;
    for (q, found) in tokens.iter().zip(expansions) {
        if found.iter().any(|(t, m)| t == q && *m == Match::Exact) {
            choices.push(vec![q]);
            continue;
        }
        let near: Vec<&String> = found
            .iter()
            .filter(|(_, m)| *m == Match::Typo)
            .map(|(t, _)| t)
            .take(CORRECTIONS_PER_TOKEN)
            .collect();
        if near.is_empty() {
            return Vec::new();
        }
        corrected = true;
        choices.push(near);
    }
    let combinations = choices.iter().map(Vec::len).product::<usize>();
    if !corrected || combinations > MAX_CORRECTED {
        return Vec::new();
    }
    let mut keys: Vec<Vec<String>> = vec![Vec::new()];
    for options in &choices {
        keys = keys
            .into_iter()
            .flat_map(|prefix| {
                options.iter().map(move |t| {
                    let mut k = prefix.clone();
                    k.push((*t).clone());
                    k
                })
            })
            .collect();
    }
    keys.iter().filter_map(|k| whole_name_key(k)).collect()
}

/// The vocabulary tokens a query token stands for, and how each matches.
fn expansion(q: &str, vocabulary: Vocabulary) -> Vec<(String, Match)> {
    let mut found: Vec<(String, Match)> = vocabulary
        .prefixed
        .into_iter()
        .map(|t| {
            let m = if t == q { Match::Exact } else { Match::Prefix };
            (t, m)
        })
        .collect();
    let near: BTreeSet<String> = vocabulary
        .near
        .into_iter()
        .filter(|t| !t.starts_with(q))
        .collect();
    found.extend(
        near.into_iter()
            .filter(|t| query::token_match(q, t) == Some(Match::Typo))
            .take(MAX_EXPANSIONS)
            .map(|t| (t, Match::Typo)),
    );
    found
}

/// A name hit before its summary is read.
#[derive(Debug, Clone)]
pub struct Scored {
    pub id: CustomerId,
    pub score: f64,
    pub partial: bool,
    pub recency: f64,
}

impl Scored {
    pub fn key(&self) -> RankKey {
        RankKey {
            score: self.score,
            recency: self.recency,
            id: self.id,
        }
    }
}

/// One page of name hits.
#[derive(Debug, Clone)]
pub struct NamePage {
    /// Best first, at most the `limit` asked for.
    pub top: Vec<Scored>,
    /// How many customers match in all (exact when every list was read).
    pub total_estimate: u64,
}

/// One list being read.
struct Cursor {
    list: List,
    /// The best score an unread entry can have.
    bound: f64,
    read: usize,
    /// The recency and id of the last entry read.
    last: Option<(f64, CustomerId)>,
    done: bool,
    /// One of the driver's lists (for the estimate).
    driver: bool,
    /// Read for partial matches only: after the lists of full matches.
    partial: bool,
    /// Entries its next read asks for (four times more each time).
    next: usize,
}

impl Cursor {
    fn new(list: List, bound: f64) -> Self {
        Cursor {
            list,
            bound,
            read: 0,
            last: None,
            done: false,
            driver: false,
            partial: false,
            next: FIRST_CHUNK,
        }
    }
}

/// The query, and the best page read so far.
struct Ranked<'q> {
    tokens: &'q [String],
    words: &'q [String],
    limit: usize,
    after: Option<RankKey>,
    found: FastMap<CustomerId, Scored>,
    /// Every customer that matched, for the estimate.
    matched: FastSet<CustomerId>,
    /// `memo[i][token]`: how query token `i` matches a token.
    memo: Vec<FastMap<String, Option<Match>>>,
}

impl<'q> Ranked<'q> {
    fn new(
        tokens: &'q [String],
        words: &'q [String],
        limit: usize,
        after: Option<RankKey>,
    ) -> Self {
        Ranked {
            tokens,
            words,
            limit,
            after,
            found: FastMap::new(),
            matched: FastSet::new(),
            memo: vec![FastMap::new(); tokens.len()],
        }
    }

    /// Scores an entry and keeps it if it matches and comes after the
    /// cursor. True when it matched.
    fn offer(&mut self, entry: &Entry) -> bool {
        if self.found.contains_key(&entry.id) {
            return true;
        }
        let memo = &mut self.memo;
        let tokens = self.tokens;
        let Some(NameScore { score, partial }) = query::name_score_with(
            tokens,
            self.words,
            &entry.terms.tokens,
            &entry.terms.words,
            |i, t| {
                if let Some(m) = memo[i].get(t) {
                    return *m;
                }
                let m = query::token_match(&tokens[i], t);
                memo[i].insert(t.to_string(), m);
                m
            },
        ) else {
            return false;
        };
        self.matched.insert(entry.id);
        let scored = Scored {
            id: entry.id,
            score,
            partial,
            recency: entry.recency,
        };
        if self.after.is_some_and(|a| !a.before(&scored.key())) {
            return true;
        }
        self.found.insert(entry.id, scored);
        if self.found.len() > 4 * self.limit + 64 {
            self.trim();
        }
        true
    }

    fn trim(&mut self) {
        let kept = sorted(
            std::mem::take(&mut self.found).into_values().collect(),
            self.limit,
        );
        self.found = kept.into_iter().map(|c| (c.id, c)).collect();
    }

    /// The `limit`-th best so far, if there are that many.
    fn threshold(&self) -> Option<RankKey> {
        if self.found.len() < self.limit {
            return None;
        }
        let mut keys: Vec<RankKey> = self.found.values().map(Scored::key).collect();
        let k = self.limit - 1;
        keys.select_nth_unstable_by(k, |a, b| a.cmp_rank(b));
        Some(keys[k])
    }

    /// Whether an unread entry of `list` could enter the page.
    fn may_improve(&self, kth: Option<RankKey>, list: &Cursor) -> bool {
        let Some(kth) = kth else {
            return true;
        };
        // Nothing read yet: its first entry may be as recent as can be.
        let Some((recency, id)) = list.last else {
            return list.bound >= kth.score;
        };
        RankKey {
            score: list.bound,
            recency,
            id,
        }
        .before(&kth)
    }
}

fn sorted(mut v: Vec<Scored>, limit: usize) -> Vec<Scored> {
    v.sort_by(|a, b| a.key().cmp_rank(&b.key()));
    v.truncate(limit);
    v
}

/// A page of name hits after `after`: [`search_names`] asked for one more
/// than `limit` (to know whether a next page exists), then the briefs of the
/// page.
pub(crate) async fn name_page(
    lists: &dyn NameLists,
    tokens: &[String],
    words: &[String],
    limit: usize,
    after: Option<RankKey>,
) -> IndexResult<SearchResults> {
    let page = search_names(lists, tokens, words, limit + 1, after).await?;
    let ids: Vec<CustomerId> = page.top.iter().map(|s| s.id).collect();
    let (shown, after_page) = ids.split_at(ids.len().min(limit));
    // The hit after the page only says whether a next page exists: its
    // presence is read, not its summary.
    let (mut briefs, present) = lists.briefs_and_presence(shown, after_page).await?;
    if briefs.len() == shown.len() {
        let hits = query::name_hits(page.top, briefs);
        let next = if present.iter().any(|p| *p) {
            hits.last().map(|h| h.rank_key())
        } else {
            None
        };
        return Ok(SearchResults {
            hits,
            total_estimate: page.total_estimate,
            next,
        });
    }
    // A hit of the page is gone (a removal half applied): the one after
    // the page takes its place.
    briefs.extend(lists.briefs(after_page).await?);
    Ok(SearchResults::first(
        query::name_hits(page.top, briefs),
        limit,
        page.total_estimate,
    ))
}

/// A group of lists that together hold every customer matching some query
/// tokens: the lists of one token's expansions, or of a set of tokens'
/// combined expansions.
struct Group {
    /// The query tokens it covers.
    covers: Vec<usize>,
    /// Each list, with the sum of the match scores of its tokens.
    lists: Vec<(List, f64)>,
}

impl Group {
    fn size(&self, sizes: &HashMap<List, u64>) -> u64 {
        self.lists
            .iter()
            .map(|(l, _)| sizes.get(l).copied().unwrap_or(0))
            .sum()
    }

    /// The cursors of its lists; `bound(kinds, covered)` is the best score
    /// an entry can have given its covered tokens' match scores.
    fn cursors(&self, bound: impl Fn(f64, usize) -> f64) -> Vec<Cursor> {
        self.lists
            .iter()
            .map(|(l, kinds)| Cursor::new(l.clone(), bound(*kinds, self.covers.len())))
            .collect()
    }
}

/// Most lists one token set stands for (the product of its tokens'
/// expansions): `ann ta` is fine, `a b c` is read through single tokens.
const MAX_SET_LISTS: usize = 16;

/// The set lists of query tokens `covers`: every combination of their
/// expansions, or `None` when there would be too many (or a token has none).
fn set_group(covers: Vec<usize>, expansions: &[Vec<(String, Match)>]) -> Option<Group> {
    let count = covers
        .iter()
        .map(|&i| expansions[i].len())
        .product::<usize>();
    if count == 0 || count > MAX_SET_LISTS {
        return None;
    }
    let mut combos: Vec<(Vec<&str>, f64)> = vec![(Vec::new(), 0.0)];
    for &i in &covers {
        combos = combos
            .into_iter()
            .flat_map(|(prefix, kinds)| {
                expansions[i].iter().map(move |(t, m)| {
                    let mut k = prefix.clone();
                    k.push(t.as_str());
                    (k, kinds + m.score())
                })
            })
            .collect();
    }
    let mut seen = HashSet::new();
    let mut lists: Vec<(List, f64)> = combos
        .into_iter()
        .filter_map(|(tokens, kinds)| {
            // Two query tokens expanding to one token: its customers have both.
            let list = match set_key(&tokens) {
                Some(key) => List::Set(key),
                None => List::Token(tokens.first()?.to_string()),
            };
            seen.insert(list.clone()).then_some((list, kinds))
        })
        .collect();
    // Names too long for token sets may have these tokens too.
    lists.push((List::Long, covers.len() as f64));
    Some(Group { covers, lists })
}

fn token_group(i: usize, expansions: &[Vec<(String, Match)>]) -> Group {
    Group {
        covers: vec![i],
        lists: expansions[i]
            .iter()
            .map(|(t, m)| (List::Token(t.clone()), m.score()))
            .collect(),
    }
}

/// Subsets of `0..n` of `size` elements.
fn subsets(n: usize, size: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for mask in 0u32..(1 << n.min(16)) {
        if mask.count_ones() as usize == size {
            out.push((0..n).filter(|i| mask & (1 << i) != 0).collect());
        }
    }
    out
}

/// What a search reads in its second round, worked out from the
/// vocabulary: each token's expansions, the groups of lists that may drive,
/// the whole names the query names with its typos corrected, the lists
/// whose sizes pick the driver, and the first chunks read at once.
struct Plan {
    expansions: Vec<Vec<(String, Match)>>,
    token_groups: Vec<Group>,
    set_groups: Vec<Group>,
    corrected: Vec<String>,
    sized: Vec<List>,
    /// The corrected whole names' first chunks, then the early cursors'.
    reads: Vec<Read>,
    /// With one query token there is no driver to choose: its lists' first
    /// chunks come in the same round as their sizes.
    early: Vec<Cursor>,
}

impl Plan {
    fn of(
        tokens: &[String],
        whole: &[(String, f64)],
        vocabulary: Vec<Vocabulary>,
        limit: usize,
    ) -> Plan {
        let n = tokens.len();
        let expansions: Vec<Vec<(String, Match)>> = tokens
            .iter()
            .zip(vocabulary)
            .map(|(q, v)| expansion(q, v))
            .collect();
        // The groups of lists that may drive: each token's, and each set of
        // two or three tokens' (customers having them all, in ranking order).
        let token_groups: Vec<Group> = (0..n).map(|i| token_group(i, &expansions)).collect();
        let mut set_groups: Vec<Group> = Vec::new();
        if query::partial_allowed(tokens) && n <= MAX_SET_TOKENS {
            for size in 2..=n.min(3) {
                set_groups.extend(
                    subsets(n, size)
                        .into_iter()
                        .filter_map(|covers| set_group(covers, &expansions)),
                );
            }
        }
        let corrected: Vec<String> = typo_whole_name_keys(tokens, &expansions)
            .into_iter()
            .filter(|k| !whole.iter().any(|(w, _)| w == k))
            .collect();
        let mut sized: Vec<List> = Vec::new();
        for g in token_groups.iter().chain(&set_groups) {
            for (l, _) in &g.lists {
                if !sized.contains(l) {
                    sized.push(l.clone());
                }
            }
        }
        let mut reads: Vec<Read> = corrected
            .iter()
            .map(|k| Read {
                list: List::Whole(k.clone()),
                start: 0,
                count: limit,
            })
            .collect();
        let mut early: Vec<Cursor> = Vec::new();
        if n == 1 {
            for mut c in token_groups[0].cursors(|kinds, _| full_bound(n, kinds, 1)) {
                c.driver = true;
                reads.push(Read {
                    list: c.list.clone(),
                    start: 0,
                    count: limit,
                });
                early.push(c);
            }
        }
        Plan {
            expansions,
            token_groups,
            set_groups,
            corrected,
            sized,
            reads,
            early,
        }
    }
}

/// The best `limit` name hits after `after` for the query `tokens` (typed
/// as `words`).
pub(crate) async fn search_names(
    lists: &dyn NameLists,
    tokens: &[String],
    words: &[String],
    limit: usize,
    after: Option<RankKey>,
) -> IndexResult<NamePage> {
    let limit = limit.max(1);
    let n = tokens.len();
    let mut best = Ranked::new(tokens, words, limit, after);
    let whole = whole_name_keys(tokens, words);
    let first: Vec<Read> = whole
        .iter()
        .map(|(k, _)| Read {
            list: List::Whole(k.clone()),
            start: 0,
            count: limit,
        })
        .collect();
    // With the vocabulary the adapter kept from an earlier search, the
    // second round's sizes and reads go out with the first, and are used
    // when the vocabulary has not changed since.
    let hinted = lists
        .vocabulary_hint(tokens)
        .map(|v| Plan::of(tokens, &whole, v, limit));
    let ahead = hinted
        .as_ref()
        .map(|p| (p.sized.as_slice(), p.reads.as_slice()));
    let round = lists.vocabulary_and_read(tokens, &first, ahead).await?;
    let mut cursors: Vec<Cursor> = Vec::new();
    for ((key, bound), entries) in whole.iter().zip(round.replies) {
        let mut c = Cursor::new(List::Whole(key.clone()), *bound);
        take(&mut c, entries, limit, &mut best);
        cursors.push(c);
    }
    let (plan, sizes, replies) = match (hinted, round.ahead) {
        (Some(plan), Some((sizes, replies))) => (plan, sizes, replies),
        _ => {
            let plan = Plan::of(tokens, &whole, round.vocabulary, limit);
            // The whole names may have proven the page already (a full
            // name with namesakes): when no list of the groups can enter
            // it, nothing else is read, as the loop below would conclude
            // once it had the sizes.
            if n > 1
                && plan.corrected.is_empty()
                && proven(&best, &cursors, &plan.token_groups, &plan.set_groups, n)
            {
                return Ok(NamePage {
                    top: sorted(best.found.into_values().collect(), limit),
                    total_estimate: best.matched.len() as u64,
                });
            }
            let (sizes, replies) = if plan.sized.is_empty() && plan.reads.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                lists.sizes_and_read(&plan.sized, &plan.reads).await?
            };
            (plan, sizes, replies)
        }
    };
    let Plan {
        expansions,
        token_groups,
        set_groups,
        corrected,
        sized,
        early,
        ..
    } = plan;
    let sizes: HashMap<List, u64> = sized.into_iter().zip(sizes).collect();
    let mut replies = replies.into_iter();
    for key in &corrected {
        let entries = replies.next().unwrap_or_default();
        let bound = whole_name_bound(tokens, words, key, false);
        let mut c = Cursor::new(List::Whole(key.clone()), bound);
        take(&mut c, entries, limit, &mut best);
        cursors.push(c);
    }
    let (mut driver_read, mut driver_matched) = (0u64, 0u64);
    for mut c in early {
        let entries = replies.next().unwrap_or_default();
        driver_read += entries.len() as u64;
        driver_matched += take(&mut c, entries, limit, &mut best);
        cursors.push(c);
    }

    // The driver: the group with the fewest entries that every full match
    // is in. Then the groups every partial match (all tokens but one) is
    // in: with three tokens the three pairs, otherwise the two smallest
    // tokens (one of them when the other matches nothing).
    let empty: Vec<usize> = (0..n).filter(|&i| expansions[i].is_empty()).collect();
    let mut driver_size = token_groups.iter().map(|g| g.size(&sizes)).sum::<u64>();
    if n > 1 && empty.is_empty() {
        let driver = token_groups
            .iter()
            .chain(&set_groups)
            .min_by_key(|g| (g.size(&sizes), std::cmp::Reverse(g.covers.len())));
        if let Some(g) = driver {
            driver_size = g.size(&sizes);
            for mut c in g.cursors(|kinds, covered| full_bound(n, kinds, covered)) {
                c.driver = true;
                cursors.push(c);
            }
        }
    }
    if query::partial_allowed(tokens) && empty.len() <= 1 {
        let mut partial: Vec<&Group> = Vec::new();
        let pairs: Vec<&Group> = set_groups.iter().filter(|g| g.covers.len() == 2).collect();
        if n == 3 && empty.is_empty() && pairs.len() == 3 {
            partial = pairs;
        } else if n == 3 && empty.len() == 1 {
            partial.extend(pairs.iter().filter(|g| !g.covers.contains(&empty[0])));
        }
        if partial.is_empty() {
            let mut order: Vec<&Group> = token_groups
                .iter()
                .filter(|g| !empty.contains(&g.covers[0]))
                .collect();
            order.sort_by_key(|g| (g.size(&sizes), g.covers[0]));
            order.truncate(if empty.is_empty() { 2 } else { 1 });
            partial = order;
        }
        let first_driver = cursors.iter().any(|c| c.driver);
        for g in partial {
            for mut c in g.cursors(|kinds, covered| partial_bound(n, kinds, covered)) {
                if cursors.iter().any(|d| d.list == c.list) {
                    continue;
                }
                c.partial = true;
                if !first_driver {
                    c.driver = true;
                }
                cursors.push(c);
            }
        }
        if !first_driver {
            driver_size = cursors
                .iter()
                .filter(|c| c.driver)
                .map(|c| sizes.get(&c.list).copied().unwrap_or(0))
                .sum();
        }
    }

    let mut scanned = driver_read as usize;
    for c in cursors.iter_mut() {
        c.next = if c.read > 0 || c.partial {
            // Whole-name lists and single-token lists read `limit` already;
            // partial lists start small (their entries mostly match).
            limit.saturating_mul(if c.read > 0 { 4 } else { 1 })
        } else {
            FIRST_CHUNK.max(limit)
        };
    }
    loop {
        let kth = best.threshold();
        let open: Vec<usize> = (0..cursors.len())
            .filter(|&i| !cursors[i].done && best.may_improve(kth, &cursors[i]))
            .collect();
        if open.is_empty() {
            break;
        }
        if scanned >= MAX_SCANNED {
            tracing::debug!(?tokens, scanned, "name search stopped at its read budget");
            break;
        }
        // Partial matches rank below every full one: their lists wait
        // until no list of full matches can improve the page.
        let full: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| !cursors[i].partial)
            .collect();
        let open = if full.is_empty() { open } else { full };
        let share = ((MAX_SCANNED - scanned) / open.len()).max(limit);
        let reads: Vec<Read> = open
            .iter()
            .map(|&i| Read {
                list: cursors[i].list.clone(),
                start: cursors[i].read,
                count: cursors[i].next.min(share),
            })
            .collect();
        let (_, replies) = lists.sizes_and_read(&[], &reads).await?;
        for ((&i, entries), read) in open.iter().zip(replies).zip(&reads) {
            scanned += entries.len();
            let c = &mut cursors[i];
            let got = entries.len() as u64;
            let matched = take(c, entries, read.count, &mut best);
            c.next = c.next.saturating_mul(4);
            if c.driver {
                driver_read += got;
                driver_matched += matched;
            }
        }
    }

    let exhaustive = cursors
        .iter()
        .filter(|c| !matches!(c.list, List::Whole(_)))
        .all(|c| c.done);
    let matched = best.matched.len() as u64;
    let total_estimate = if exhaustive || driver_read == 0 {
        matched
    } else {
        let ratio = driver_matched as f64 / driver_read as f64;
        matched.max((driver_size as f64 * ratio).round() as u64)
    };
    let top = sorted(best.found.into_values().collect(), limit);
    Ok(NamePage {
        top,
        total_estimate,
    })
}

/// Whether the page read so far is final: no whole-name list read in the
/// first round (`cursors`) and no list of the `groups`, with the best score
/// a full or a partial match from it can have, can enter it. Then the
/// search ends without reading the lists' sizes; it estimates no more than
/// it matched, as it does when the driver was never read.
fn proven(
    best: &Ranked<'_>,
    cursors: &[Cursor],
    token_groups: &[Group],
    set_groups: &[Group],
    n: usize,
) -> bool {
    let Some(kth) = best.threshold() else {
        return false;
    };
    if cursors
        .iter()
        .any(|c| !c.done && best.may_improve(Some(kth), c))
    {
        return false;
    }
    let may_improve = |bound: f64| bound >= kth.score;
    !token_groups.iter().chain(set_groups).any(|g| {
        g.lists.iter().any(|(_, kinds)| {
            let covered = g.covers.len();
            may_improve(full_bound(n, *kinds, covered))
                || may_improve(partial_bound(n, *kinds, covered))
        })
    })
}

/// The best score of a full match that is not a whole name, when the
/// `covered` query tokens a list stands for match with scores summing to
/// `kinds` and every other one exactly.
fn full_bound(n: usize, kinds: f64, covered: usize) -> f64 {
    let n = n.max(1) as f64;
    round_bound((kinds + (n - covered as f64)) / n - query::PARTIAL_NAME_PENALTY)
}

/// The best score of a partial match read from a list whose `covered`
/// tokens match with scores summing to `kinds`: one other token misses,
/// the rest match exactly.
fn partial_bound(n: usize, kinds: f64, covered: usize) -> f64 {
    let missing_others = (n - covered).saturating_sub(1) as f64;
    round_bound(query::PARTIAL_WEIGHT * (kinds + missing_others) / n.max(2) as f64)
}

fn round_bound(score: f64) -> f64 {
    (score * 1000.0).round() / 1000.0
}

/// Offers a chunk of a list's entries; returns how many matched.
fn take(c: &mut Cursor, entries: Vec<Entry>, asked: usize, best: &mut Ranked<'_>) -> u64 {
    c.read += entries.len();
    c.done = entries.len() < asked;
    let mut matched = 0;
    for e in &entries {
        if best.offer(e) {
            matched += 1;
        }
        c.last = Some((e.recency, e.id));
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn typo_keys_reach_three_letter_tokens() {
        assert_eq!(typo_keys("tan"), s(&["tan"]));
        assert!(typo_keys("tan").len() == 1 && typo_keys("an").is_empty());
        assert!(typo_keys("tann").contains(&"tan".to_string()));
        assert!(query_typo_keys("tan").is_empty());
        assert!(typo_keys("陈大").is_empty());
    }

    #[test]
    fn whole_names_in_every_order_and_the_typed_one_first() {
        let keys = whole_name_keys(&s(&["xin", "priya"]), &s(&["xin", "priya"]));
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["xin", "xin priya", "priya", "priya xin"]);
        let bound = |k: &str| keys.iter().find(|(w, _)| w == k).map(|(_, b)| *b);
        assert_eq!(bound("xin priya"), Some(1.0));
        assert_eq!(bound("priya xin"), Some(1.0 - query::ORDER_PENALTY));
        assert_eq!(
            whole_name_keys(&s(&["a", "b", "c", "d"]), &s(&["a", "b", "c", "d"])).len(),
            64
        );
        let many = s(&["a", "b", "c", "d", "e"]);
        assert_eq!(whole_name_keys(&many, &many).len(), 1);
    }

    #[test]
    fn rank_keys_order_score_recency_id() {
        let a = CustomerId::new();
        let b = CustomerId::new();
        let k = |score, recency, id| RankKey { score, recency, id };
        assert!(k(1.0, 0.0, a).before(&k(0.9, 5.0, b)));
        assert!(k(0.9, 5.0, a).before(&k(0.9, 4.0, b)));
        assert!(k(0.9, 5.0, b).before(&k(0.9, 5.0, a)) == (b > a));
        assert!(!k(0.9, 5.0, a).before(&k(0.9, 5.0, a)));
    }
}
