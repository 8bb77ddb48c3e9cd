//! Searches by name, email and phone number, and what a hit shows.

use std::collections::{BTreeSet, HashMap};

use ::redis::{from_owned_redis_value, Pipeline};

use crm_models::time;
use crm_models::{CustomerId, Email, PhoneNumber};

use super::keys::{parse_name_member, split_member, whole_name, Keys, SUMMARY_FIELD};
use super::{
    corrupt, next_value, RedisIndex, CANDIDATES, FIRST_CHUNK, MAX_EXPANSIONS, MAX_SCANNED,
};
use crate::memory::typo_keys;
use crate::query::{self, Brief, Match, MatchedOn, NameCandidate, SearchHit};
use crate::IndexResult;

impl RedisIndex {
    /// Reads the brief of each id (one round trip); ids without a summary
    /// (stale entries) are left out.
    async fn briefs(&self, keys: &Keys, ids: &[CustomerId]) -> IndexResult<Vec<Brief>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HGET").arg(keys.cust(*id)).arg(SUMMARY_FIELD);
        }
        let mut out = Vec::with_capacity(ids.len());
        for v in self.query(&pipe).await? {
            let json: Option<Vec<u8>> = from_owned_redis_value(v)?;
            if let Some(json) = json {
                out.push(brief_of_json(&json)?);
            }
        }
        Ok(out)
    }

    /// Name search, best first, at most `limit` hits.
    ///
    /// 1. One round trip: each query token's vocabulary (`tk` prefix range and
    ///    typo-table entries), and the whole-name lists `wn:` of the query's
    ///    word sets (see [`whole_name_keys`]), `limit` entries each. Every
    ///    entry of one `wn:` list has the same tokens, so the same score: its
    ///    first `limit` entries are its best.
    /// 2. For several query tokens, `ZCARD` of every expansion: the query
    ///    token with the fewest entries drives.
    /// 3. The driver's expansions' posting lists are read in their order
    ///    (most recent engagement first), a chunk at a time. Each entry
    ///    carries the customer's tokens, so it is scored in process. An
    ///    unread entry of a list can score at most
    ///    [`query::best_partial_score`] (whole-name matches come from step
    ///    1), with a recency no better than the last one read: once the
    ///    `limit`-th best read beats that for every list, the answer is
    ///    exact. [`MAX_SCANNED`] bounds the work.
    /// 4. The briefs of the best `limit` (one `HMGET` each), ranked as the
    ///    memory index ranks them.
    pub(crate) async fn search_names(
        &self,
        tokens: &[String],
        words: &[String],
        limit: usize,
    ) -> IndexResult<Vec<SearchHit>> {
        let limit = limit.clamp(1, crate::MAX_SEARCH_LIMIT);
        let whole_keys = whole_name_keys(tokens, words);
        let (keys, values) = self
            .read(|k, p| {
                for q in tokens {
                    p.cmd("ZRANGEBYLEX")
                        .arg(k.tk())
                        .arg(lex_from(q.as_bytes()))
                        .arg(lex_to(q.as_bytes()))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(MAX_EXPANSIONS);
                    for v in typo_keys(q) {
                        p.cmd("SMEMBERS").arg(k.ty(&v));
                    }
                }
                for w in &whole_keys {
                    p.cmd("ZRANGE")
                        .arg(k.wn(w))
                        .arg(0)
                        .arg(limit - 1)
                        .arg("REV")
                        .arg("WITHSCORES");
                }
            })
            .await?;
        let mut values = values.into_iter();
        // Per query token: the vocabulary tokens it matches, and how.
        let mut expansions: Vec<Vec<(String, Match)>> = Vec::with_capacity(tokens.len());
        for q in tokens {
            let prefixed: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
            let mut found: Vec<(String, Match)> = prefixed
                .into_iter()
                .map(|t| {
                    let m = if &t == q { Match::Exact } else { Match::Prefix };
                    (t, m)
                })
                .collect();
            let mut typos = BTreeSet::new();
            for _ in typo_keys(q) {
                let near: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
                typos.extend(near.into_iter().filter(|t| !t.starts_with(q.as_str())));
            }
            found.extend(
                typos
                    .into_iter()
                    .filter(|t| query::token_match(q, t) == Some(Match::Typo))
                    .take(MAX_EXPANSIONS)
                    .map(|t| (t, Match::Typo)),
            );
            expansions.push(found);
        }
        let mut best = Ranked::new(limit);
        for _ in &whole_keys {
            let entries: Vec<(Vec<u8>, f64)> = from_owned_redis_value(next_value(&mut values)?)?;
            for (m, recency) in entries {
                let _ = best.offer(tokens, &m, recency);
            }
        }
        if expansions.iter().any(Vec::is_empty) {
            // Some query token matches nothing: nobody has every token.
            return Ok(Vec::new());
        }

        // The driver: the query token with the fewest posting-list entries;
        // in the same round trip, the whole names the query names with its
        // typos corrected (`tan wei mnig` → `wn:ming tan wei`).
        let corrected: Vec<String> = typo_whole_name_keys(tokens, &expansions)
            .into_iter()
            .filter(|k| !whole_keys.contains(k))
            .collect();
        let many = tokens.len() > 1;
        let mut driver = 0;
        if many || !corrected.is_empty() {
            let mut pipe = ::redis::pipe();
            if many {
                for found in &expansions {
                    for (t, _) in found {
                        pipe.cmd("ZCARD").arg(keys.nm(t));
                    }
                }
            }
            for w in &corrected {
                pipe.cmd("ZRANGE")
                    .arg(keys.wn(w))
                    .arg(0)
                    .arg(limit - 1)
                    .arg("REV")
                    .arg("WITHSCORES");
            }
            let mut replies = self.query(&pipe).await?.into_iter();
            if many {
                let mut sizes = Vec::with_capacity(expansions.len());
                for found in &expansions {
                    let mut total = 0u64;
                    for _ in found {
                        total += from_owned_redis_value::<u64>(next_value(&mut replies)?)?;
                    }
                    sizes.push(total);
                }
                driver = (0..sizes.len()).min_by_key(|&i| sizes[i]).unwrap_or(0);
            }
            for _ in &corrected {
                let entries: Vec<(Vec<u8>, f64)> =
                    from_owned_redis_value(next_value(&mut replies)?)?;
                for (m, recency) in entries {
                    let _ = best.offer(tokens, &m, recency);
                }
            }
        }

        let mut lists: Vec<Cursor> = expansions[driver]
            .iter()
            .map(|(t, m)| Cursor {
                key: keys.nm(t),
                bound: query::best_partial_score(tokens.len(), *m),
                read: 0,
                last: None,
                done: false,
            })
            .collect();
        let mut next_chunk = if tokens.len() == 1 {
            limit
        } else {
            FIRST_CHUNK.max(limit)
        };
        let mut scanned = 0usize;
        loop {
            let open: Vec<usize> = (0..lists.len())
                .filter(|&i| !lists[i].done && best.may_improve(&lists[i]))
                .collect();
            if open.is_empty() {
                break;
            }
            if scanned >= MAX_SCANNED {
                tracing::debug!(?tokens, scanned, "name search stopped at its read budget");
                break;
            }
            // This round's share of what is left of the budget.
            let chunk = next_chunk.min(((MAX_SCANNED - scanned) / open.len()).max(limit));
            let mut pipe = ::redis::pipe();
            for &i in &open {
                let c = &lists[i];
                pipe.cmd("ZRANGE")
                    .arg(&c.key)
                    .arg(c.read)
                    .arg(c.read + chunk - 1)
                    .arg("REV")
                    .arg("WITHSCORES");
            }
            let replies = self.query(&pipe).await?;
            for (&i, v) in open.iter().zip(replies) {
                let entries: Vec<(Vec<u8>, f64)> = from_owned_redis_value(v)?;
                let c = &mut lists[i];
                c.read += entries.len();
                c.done = entries.len() < chunk;
                scanned += entries.len();
                for (m, recency) in entries {
                    if let Some(id) = best.offer(tokens, &m, recency) {
                        c.last = Some((recency, id));
                    } else {
                        // An entry that does not parse: end the list here.
                        c.done = true;
                    }
                }
            }
            next_chunk = next_chunk.saturating_mul(4);
        }

        let top = best.into_sorted();
        let ids: Vec<CustomerId> = top.iter().map(|c| c.id).collect();
        let mut tokens_of: HashMap<CustomerId, Vec<String>> =
            top.into_iter().map(|c| (c.id, c.tokens)).collect();
        let candidates = self
            .briefs(&keys, &ids)
            .await?
            .into_iter()
            .map(|brief| NameCandidate {
                tokens: tokens_of.remove(&brief.id).unwrap_or_default(),
                brief,
            })
            .collect();
        Ok(query::rank_names(tokens, candidates))
    }

    pub(super) async fn search_emails(
        &self,
        text: &str,
        exact: bool,
    ) -> IndexResult<Vec<SearchHit>> {
        let (keys, values) = self
            .read(|k, p| {
                if exact {
                    p.cmd("SMEMBERS").arg(k.em(text));
                }
                zrange_prefix(p, &k.ex(), text.as_bytes());
            })
            .await?;
        let mut matches: HashMap<CustomerId, Match> = HashMap::new();
        let mut values = values.into_iter();
        if exact {
            let ids: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
            for id in ids.iter().filter_map(|s| s.parse().ok()) {
                matches.insert(id, Match::Exact);
            }
        }
        let members: Vec<Vec<u8>> = from_owned_redis_value(next_value(&mut values)?)?;
        for (email, id) in members.iter().filter_map(|m| split_member(m)) {
            let m = if exact && email == text {
                Match::Exact
            } else {
                Match::Prefix
            };
            let entry = matches.entry(id).or_insert(m);
            *entry = (*entry).max(m);
        }
        self.rank_found(&keys, MatchedOn::Email, matches).await
    }

    pub(super) async fn search_phones(
        &self,
        e164: &[String],
        national: Option<&str>,
    ) -> IndexResult<Vec<SearchHit>> {
        let (keys, values) = self
            .read(|k, p| {
                for number in e164 {
                    p.cmd("HKEYS").arg(k.ph(number));
                }
                if let Some(n) = national {
                    p.cmd("SMEMBERS").arg(k.pn(n));
                }
            })
            .await?;
        let mut matches: HashMap<CustomerId, Match> = HashMap::new();
        for (i, v) in values.into_iter().enumerate() {
            let m = if i < e164.len() {
                Match::Exact
            } else {
                Match::National
            };
            let ids: Vec<String> = from_owned_redis_value(v)?;
            for id in ids.iter().filter_map(|s| s.parse().ok()) {
                let entry = matches.entry(id).or_insert(m);
                *entry = (*entry).max(m);
            }
        }
        self.rank_found(&keys, MatchedOn::Phone, matches).await
    }

    async fn rank_found(
        &self,
        keys: &Keys,
        on: MatchedOn,
        matches: HashMap<CustomerId, Match>,
    ) -> IndexResult<Vec<SearchHit>> {
        let ids: Vec<CustomerId> = matches.keys().copied().collect();
        let found = self
            .briefs(keys, &ids)
            .await?
            .into_iter()
            .filter_map(|brief| matches.get(&brief.id).map(|m| (brief, *m)))
            .collect::<Vec<_>>();
        Ok(query::rank_matches(on, found))
    }
}

/// One posting list being read for a name search.
struct Cursor {
    key: String,
    /// The best score an unread entry can have ([`query::best_partial_score`]).
    bound: f64,
    /// Entries read so far.
    read: usize,
    /// The recency and id of the last entry read.
    last: Option<(f64, CustomerId)>,
    /// Nothing left to read.
    done: bool,
}

/// A customer read from a posting list, scored.
struct Scored {
    id: CustomerId,
    tokens: Vec<String>,
    score: f64,
    recency: f64,
}

impl Scored {
    /// The ranking order: score, recency, id, each highest first (the
    /// order of [`query::best_first`] and of the posting lists).
    fn key(&self) -> (f64, f64, CustomerId) {
        (self.score, self.recency, self.id)
    }
}

fn better(a: (f64, f64, CustomerId), b: (f64, f64, CustomerId)) -> bool {
    match a.0.partial_cmp(&b.0) {
        Some(std::cmp::Ordering::Greater) => true,
        Some(std::cmp::Ordering::Less) | None => false,
        Some(std::cmp::Ordering::Equal) => match a.1.partial_cmp(&b.1) {
            Some(std::cmp::Ordering::Greater) => true,
            Some(std::cmp::Ordering::Less) | None => false,
            Some(std::cmp::Ordering::Equal) => a.2 > b.2,
        },
    }
}

/// The best `limit` name candidates read so far.
struct Ranked {
    limit: usize,
    found: HashMap<CustomerId, Scored>,
    /// `matches[i][token]`: how query token `i` matches a token, as found
    /// so far.
    matches: Vec<HashMap<String, Option<Match>>>,
}

impl Ranked {
    fn new(limit: usize) -> Self {
        Ranked {
            limit,
            found: HashMap::new(),
            matches: Vec::new(),
        }
    }

    /// Scores the posting-list entry `member` (`<id>\0<tokens>[\0<words>]`)
    /// and keeps it if it matches every query token. Returns its id, or
    /// `None` when the entry does not parse.
    fn offer(&mut self, query: &[String], member: &[u8], recency: f64) -> Option<CustomerId> {
        let (id, tokens, words) = parse_name_member(member)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.found.entry(id) {
            let memo = &mut self.matches;
            if memo.len() < query.len() {
                memo.resize_with(query.len(), HashMap::new);
            }
            let score = query::name_score_with(query, &tokens, &words, |i, t| {
                if let Some(m) = memo[i].get(t) {
                    return *m;
                }
                let m = query::token_match(&query[i], t);
                memo[i].insert(t.to_string(), m);
                m
            });
            if let Some(score) = score {
                slot.insert(Scored {
                    id,
                    tokens,
                    score,
                    recency,
                });
                if self.found.len() > 4 * self.limit + 64 {
                    self.trim();
                }
            }
        }
        Some(id)
    }

    /// Keeps the best `limit`.
    fn trim(&mut self) {
        let kept = std::mem::take(&mut self.found)
            .into_values()
            .collect::<Vec<_>>();
        self.found = sorted(kept, self.limit)
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
    }

    /// The `limit`-th best so far, if there are that many.
    fn threshold(&self) -> Option<(f64, f64, CustomerId)> {
        if self.found.len() < self.limit {
            return None;
        }
        let mut keys: Vec<(f64, f64, CustomerId)> = self.found.values().map(Scored::key).collect();
        keys.sort_by(|a, b| {
            if better(*a, *b) {
                std::cmp::Ordering::Less
            } else if better(*b, *a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        keys.get(self.limit - 1).copied()
    }

    /// Whether an unread entry of `list` could enter the best `limit`.
    fn may_improve(&self, list: &Cursor) -> bool {
        let (Some(kth), Some((recency, id))) = (self.threshold(), list.last) else {
            return true;
        };
        better((list.bound, recency, id), kth)
    }

    fn into_sorted(self) -> Vec<Scored> {
        let limit = self.limit;
        sorted(self.found.into_values().collect(), limit)
    }
}

fn sorted(mut v: Vec<Scored>, limit: usize) -> Vec<Scored> {
    v.sort_by(|a, b| {
        if better(a.key(), b.key()) {
            std::cmp::Ordering::Less
        } else if better(b.key(), a.key()) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    v.truncate(limit);
    v
}

/// Most query tokens whose every subset is looked up as a whole name.
const WHOLE_NAME_SUBSETS: usize = 4;

/// The whole names a query can match with no penalty: names whose every word
/// is a query token. Every subset of the query's tokens when there are at most
/// [`WHOLE_NAME_SUBSETS`] (`ann an` names `Ann`); otherwise the tokens and
/// the words as typed (`陈大文`).
fn whole_name_keys(tokens: &[String], words: &[String]) -> Vec<String> {
    let distinct: Vec<&String> = tokens.iter().collect::<BTreeSet<_>>().into_iter().collect();
    let mut keys = BTreeSet::new();
    if distinct.len() <= WHOLE_NAME_SUBSETS {
        for mask in 1u32..(1 << distinct.len()) {
            let subset: Vec<String> = distinct
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, t)| (*t).clone())
                .collect();
            keys.extend(whole_name(&subset));
        }
    } else {
        keys.extend(whole_name(tokens));
    }
    keys.extend(whole_name(words));
    keys.into_iter().collect()
}

/// Typo corrections tried per query token for whole-name lookups.
const CORRECTIONS_PER_TOKEN: usize = 4;

/// Most whole-name lookups of corrected queries.
const MAX_CORRECTED: usize = 16;

/// Whole names the query names once its typos are corrected: each query
/// token that is not itself a known token is replaced by the known tokens
/// one typo from it (the first [`CORRECTIONS_PER_TOKEN`]). Empty when no
/// token needs correcting, when one matches neither exactly nor by a typo (a
/// prefix names no whole word), or when there would be more than
/// [`MAX_CORRECTED`] combinations. Their entries score alike (same tokens),
/// so their first `limit` entries are their best.
fn typo_whole_name_keys(tokens: &[String], expansions: &[Vec<(String, Match)>]) -> Vec<String> {
    let mut choices: Vec<Vec<&String>> = Vec::with_capacity(tokens.len());
    let mut corrected = false;
    for (q, found) in tokens.iter().zip(expansions) {
        if found.iter().any(|(t, m)| *m == Match::Exact && t == q) {
            choices.push(vec![q]);
            continue;
        }
        let typos: Vec<&String> = found
            .iter()
            .filter(|(_, m)| *m == Match::Typo)
            .map(|(t, _)| t)
            .take(CORRECTIONS_PER_TOKEN)
            .collect();
        if typos.is_empty() {
            return Vec::new();
        }
        corrected = true;
        choices.push(typos);
    }
    let combinations = choices.iter().map(Vec::len).product::<usize>();
    if !corrected || combinations > MAX_CORRECTED {
        return Vec::new();
    }
    let mut combos: Vec<Vec<String>> = vec![Vec::new()];
    for options in &choices {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                options.iter().map(move |t| {
                    let mut c = c.clone();
                    c.push((*t).clone());
                    c
                })
            })
            .collect();
    }
    let keys: BTreeSet<String> = combos.iter().filter_map(|c| whole_name(c)).collect();
    keys.into_iter().collect()
}

pub(super) fn lex_from(prefix: &[u8]) -> Vec<u8> {
    let mut from = Vec::with_capacity(prefix.len() + 1);
    from.push(b'[');
    from.extend_from_slice(prefix);
    from
}

pub(super) fn lex_to(prefix: &[u8]) -> Vec<u8> {
    let mut to = Vec::with_capacity(prefix.len() + 2);
    to.push(b'(');
    to.extend_from_slice(prefix);
    to.push(0xff);
    to
}

/// `ZRANGEBYLEX key [prefix (prefix\xff LIMIT 0 CANDIDATES`: members that
/// start with `prefix` (UTF-8 never contains 0xff).
fn zrange_prefix(p: &mut Pipeline, key: &str, prefix: &[u8]) {
    p.cmd("ZRANGEBYLEX")
        .arg(key)
        .arg(lex_from(prefix))
        .arg(lex_to(prefix))
        .arg("LIMIT")
        .arg(0)
        .arg(CANDIDATES);
}

/// What a search hit shows, read from a summary's JSON (the rest of it is
/// skipped). Its values were normalised before they were written, so they
/// are trusted.
fn brief_of_json(json: &[u8]) -> IndexResult<Brief> {
    #[derive(serde::Deserialize)]
    struct Stored {
        id: CustomerId,
        #[serde(default)]
        name: Option<String>,
        phones: Vec<String>,
        emails: Vec<String>,
        #[serde(default, with = "time::rfc3339_option")]
        last_engagement_at: Option<time::Timestamp>,
    }
    let s: Stored = serde_json::from_slice(json).map_err(corrupt)?;
    Ok(Brief {
        id: s.id,
        name: s.name,
        phones: s
            .phones
            .into_iter()
            .map(PhoneNumber::from_e164_unchecked)
            .collect(),
        emails: s
            .emails
            .into_iter()
            .map(Email::from_normalised_unchecked)
            .collect(),
        last_engagement_at: s.last_engagement_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{CustomerSummary, EngagementBrief};
    use crm_models::{Channel, EngagementId};

    #[test]
    fn typos_are_corrected_for_whole_name_lookups() {
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let exp = |v: &[(&str, Match)]| {
            v.iter()
                .map(|(t, m)| (t.to_string(), *m))
                .collect::<Vec<_>>()
        };
        let tokens = q(&["tan", "wei", "mnig"]);
        let expansions = vec![
            exp(&[("tan", Match::Exact), ("tanaka", Match::Prefix)]),
            exp(&[("wei", Match::Exact)]),
            exp(&[("ming", Match::Typo), ("mnigx", Match::Prefix)]),
        ];
        assert_eq!(
            typo_whole_name_keys(&tokens, &expansions),
            vec!["ming tan wei"]
        );
        // Nothing to correct, or a token that is only a prefix.
        let exact = vec![expansions[0].clone(), expansions[1].clone()];
        assert!(typo_whole_name_keys(&tokens[..2], &exact).is_empty());
        let prefix_only = vec![exp(&[("tanaka", Match::Prefix)]), expansions[2].clone()];
        assert!(typo_whole_name_keys(&q(&["tana", "mnig"]), &prefix_only).is_empty());
    }

    #[test]
    fn briefs_are_read_from_the_summary_json() {
        let mut summary = CustomerSummary {
            id: CustomerId::new(),
            name: Some("Ann \"phones\":[] Tan".into()),
            status: crm_models::CustomerStatus::Active,
            phone: None,
            email: None,
            phones: vec![PhoneNumber::parse("+6581226418", None).unwrap()],
            emails: vec![Email::parse("ann@example.com").unwrap()],
            counts: crm_models::ChannelCounts::default(),
            last_engagement_at: Some(time::now()),
            last_engagements: vec![EngagementBrief {
                id: EngagementId::new(),
                channel: Channel::Sms,
                direction: None,
                occurred_at: time::now(),
                preview: "{\"emails\":[\"x@y.z\"]}".into(),
            }],
        };
        let json = serde_json::to_vec(&summary).unwrap();
        assert_eq!(brief_of_json(&json).unwrap(), Brief::from(&summary));
        summary.name = None;
        summary.last_engagement_at = None;
        let json = serde_json::to_vec(&summary).unwrap();
        assert_eq!(brief_of_json(&json).unwrap(), Brief::from(&summary));
        assert!(brief_of_json(b"{\"id\":1}").is_err());
    }

    #[test]
    fn engagement_ids_survive_the_summary_json() {
        let brief = EngagementBrief {
            id: EngagementId::new(),
            channel: Channel::Sms,
            direction: None,
            occurred_at: time::now(),
            preview: "hi".into(),
        };
        let json = serde_json::to_string(&vec![brief.clone()]).unwrap();
        let back: Vec<EngagementBrief> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![brief]);
    }
}
