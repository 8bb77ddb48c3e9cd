//! Searches by name and email, and what a hit shows (numbers: `numbers`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::{from_owned_redis_value, Pipeline, Value};
use async_trait::async_trait;

use crm_models::CustomerId;

use std::sync::atomic::Ordering;

use super::keys::{gen_key, parse_name_member, split_cust, split_member, Keys};
use super::search_links::{Failed, Taken};
use super::{corrupt, next_value, parse_generation, RedisIndex, CANDIDATES, READ_TIMEOUT};
use crate::query::{self, Brief, Match, MatchedOn, SearchHit, SearchResults};
use crate::ranking::{
    self, query_typo_keys, Entry, FirstRound, List, NameLists, NameTerms, RankKey, Read,
    Vocabulary, MAX_EXPANSIONS,
};
use crate::{IndexError, IndexResult};

impl RedisIndex {
    /// A page of name hits ([`ranking::name_page`] over this index's
    /// lists), then the briefs of the hits (one `HGET` each).
    pub(crate) async fn search_names(
        &self,
        tokens: &[String],
        words: &[String],
        limit: usize,
        after: Option<RankKey>,
    ) -> IndexResult<SearchResults> {
        let lists = Lists {
            reader: Reader::new(self).await,
            keys: parking_lot::Mutex::new(None),
            hint: parking_lot::Mutex::new(None),
        };
        ranking::name_page(&lists, tokens, words, limit, after).await
    }

    pub(super) async fn search_emails(
        &self,
        text: &str,
        exact: bool,
    ) -> IndexResult<Vec<SearchHit>> {
        let reader = Reader::new(self).await;
        // The prefix range lists the customers with exactly `text` first.
        let (keys, values) = reader
            .read_live(|k, p| {
                zrange_prefix(p, &k.ex(), text.as_bytes());
            })
            .await?;
        let mut matches: HashMap<CustomerId, Match> = HashMap::new();
        let mut values = values.into_iter();
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
        rank_found(&reader, &keys, MatchedOn::Email, matches).await
    }
}

async fn rank_found(
    reader: &Reader<'_>,
    keys: &Keys,
    on: MatchedOn,
    matches: HashMap<CustomerId, Match>,
) -> IndexResult<Vec<SearchHit>> {
    let ids: Vec<CustomerId> = matches.keys().copied().collect();
    let found = reader
        .briefs(keys, &ids)
        .await?
        .into_iter()
        .filter_map(|brief| matches.get(&brief.id).map(|m| (brief, *m)))
        .collect::<Vec<_>>();
    Ok(query::rank_matches(on, found))
}

/// The reads of one search: on the search's own connection (see
/// `search_links`) when it got one, else on the shared one.
pub(super) struct Reader<'a> {
    index: &'a RedisIndex,
    /// `None` to use the shared connection.
    link: parking_lot::Mutex<Option<Taken<'a>>>,
}

impl<'a> Reader<'a> {
    /// Takes a connection for the search, if one is to be had.
    pub(super) async fn new(index: &'a RedisIndex) -> Reader<'a> {
        Reader {
            index,
            link: parking_lot::Mutex::new(match &index.search_links {
                Some(links) => links.take().await,
                None => None,
            }),
        }
    }

    /// Runs `pipe` on the search's own connection, or on the shared one
    /// when it has none or its own just failed to carry the pipeline.
    pub(super) async fn run(&self, pipe: &Pipeline) -> IndexResult<Vec<Value>> {
        let taken = self.link.lock().take();
        if let Some(mut own) = taken {
            match own.query(pipe, READ_TIMEOUT).await {
                Ok(values) => {
                    *self.link.lock() = Some(own);
                    return Ok(values);
                }
                Err(Failed::Answer(e)) => {
                    *self.link.lock() = Some(own);
                    return Err(e);
                }
                // Closed while idle (Redis restarted), say: the shared
                // connection reconnects by itself.
                Err(Failed::Link(e)) => {
                    tracing::debug!(error = %e, "index: a search connection failed; using the shared one");
                }
            }
        }
        self.index.read_query(pipe).await
    }

    /// The commands `build` adds against the live generation, with the
    /// generation check every first read makes (see `read_live`).
    pub(super) async fn read_live(
        &self,
        build: impl Fn(&Keys, &mut Pipeline),
    ) -> IndexResult<(Keys, Vec<Value>)> {
        let seen = &self.index.generation;
        let mut generation = seen.load(Ordering::Relaxed);
        for _ in 0..3 {
            let keys = Keys::of(&self.index.prefix, generation);
            let mut pipe = ::redis::pipe();
            pipe.cmd("HGET")
                .arg(gen_key(&self.index.prefix))
                .arg("current");
            build(&keys, &mut pipe);
            let mut values = self.run(&pipe).await?;
            if values.is_empty() {
                return Err(IndexError::Internal("empty pipeline reply".into()));
            }
            let live = parse_generation(values.remove(0))?;
            if live == generation {
                return Ok((keys, values));
            }
            seen.store(live, Ordering::Relaxed);
            generation = live;
        }
        Err(IndexError::Internal(
            "the index generation changed three times during one read".into(),
        ))
    }

    /// The brief of each id (one round trip); ids without a summary (stale
    /// entries) are left out.
    pub(super) async fn briefs(&self, keys: &Keys, ids: &[CustomerId]) -> IndexResult<Vec<Brief>> {
        Ok(self.briefs_and_presence(keys, ids, &[]).await?.0)
    }

    /// [`briefs`](Self::briefs) of `ids`, and whether each of `check` has
    /// a summary, in one round trip.
    async fn briefs_and_presence(
        &self,
        keys: &Keys,
        ids: &[CustomerId],
        check: &[CustomerId],
    ) -> IndexResult<(Vec<Brief>, Vec<bool>)> {
        if ids.is_empty() && check.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let pipe = briefs_pipeline(keys, ids, check);
        briefs_of_replies(self.run(&pipe).await?, ids, check.len())
    }
}

/// The name lists of one generation of the Redis index, for
/// [`ranking::search_names`]: the first call reads the live generation
/// along with its data, the later ones use it.
struct Lists<'a> {
    reader: Reader<'a>,
    keys: parking_lot::Mutex<Option<Keys>>,
    /// The kept vocabulary handed out by `vocabulary_hint`.
    hint: parking_lot::Mutex<Option<Hint>>,
}

/// The vocabulary of query tokens as searches last read it, with the
/// generation and the vocabulary version (`vv`) they read it at: a search
/// whose tokens are all here sends its second round with its first and
/// checks the version in the same round trip.
#[derive(Default)]
pub(super) struct KnownVocabulary(parking_lot::Mutex<Known>);

/// What a search was handed by [`KnownVocabulary::get`].
struct Hint {
    base: String,
    version: Vec<u8>,
    vocabulary: Vec<Vocabulary>,
}

#[derive(Default)]
struct Known {
    /// The generation's key prefix (`Keys::base`).
    base: String,
    version: Vec<u8>,
    /// Each token's vocabulary and when it was read.
    tokens: HashMap<String, (Instant, Vocabulary)>,
}

/// Most query tokens kept; all are forgotten when there would be more.
const KNOWN_TOKENS: usize = 4096;

/// How long a token's vocabulary is used as read. A writer that stopped
/// between adding a token and setting `vv` (killed, or Redis gone) leaves
/// the version unchanged: readers then see the new token this long after.
const KNOWN_FOR: Duration = Duration::from_secs(5);

impl KnownVocabulary {
    /// The vocabulary of every one of `tokens`, if all are kept, and the
    /// generation and version it was read at.
    fn get(&self, tokens: &[String]) -> Option<Hint> {
        let known = self.0.lock();
        let vocabulary = tokens
            .iter()
            .map(|t| {
                let (read_at, v) = known.tokens.get(t)?;
                (read_at.elapsed() < KNOWN_FOR).then(|| v.clone())
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Hint {
            base: known.base.clone(),
            version: known.version.clone(),
            vocabulary,
        })
    }

    /// Keeps what a search read at `version` of `base`'s vocabulary; what
    /// was kept at another version goes.
    fn put(&self, base: &str, version: &[u8], tokens: &[String], vocabulary: &[Vocabulary]) {
        let mut known = self.0.lock();
        if known.base != base || known.version != version || known.tokens.len() >= KNOWN_TOKENS {
            known.base = base.to_string();
            known.version = version.to_vec();
            known.tokens.clear();
        }
        let now = Instant::now();
        for (t, v) in tokens.iter().zip(vocabulary) {
            known.tokens.insert(t.clone(), (now, v.clone()));
        }
    }
}

/// The vocabulary version a `GET vv` answered; `None` when it was never
/// set (an index written before versions were).
fn version_of(v: Value) -> IndexResult<Option<Vec<u8>>> {
    bulk_of(v)
}

impl Lists<'_> {
    fn keys(&self) -> IndexResult<Keys> {
        self.keys
            .lock()
            .clone()
            .ok_or_else(|| IndexError::Internal("name lists read before the vocabulary".into()))
    }
}

fn list_key(keys: &Keys, list: &List) -> String {
    match list {
        List::Token(t) => keys.nm(t),
        List::Whole(w) => keys.wn(w),
        List::Set(k) => keys.ns(k),
        List::Long => keys.nl(),
    }
}

fn add_read(keys: &Keys, p: &mut Pipeline, r: &Read) {
    let key = list_key(keys, &r.list);
    p.cmd("ZRANGE")
        .arg(key)
        .arg(r.start)
        .arg(r.start + r.count.max(1) - 1)
        .arg("REV")
        .arg("WITHSCORES");
}

/// The entries of the next `count` replies, each a posting list's chunk.
fn entries_of_each(
    values: &mut impl Iterator<Item = Value>,
    count: usize,
) -> IndexResult<Vec<Vec<Entry>>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(entries_of(next_value(values)?)?);
    }
    Ok(out)
}

/// A posting list's entries; one that does not parse ends the chunk (the
/// list then counts as read to its end).
fn entries_of(v: Value) -> IndexResult<Vec<Entry>> {
    // `ZRANGE .. WITHSCORES` over RESP2: member, score, member, score...
    // read in place; any other shape goes through the generic conversion.
    let v = match v {
        Value::Array(items) if items.len() % 2 == 0 => match entries_in_place(&items) {
            Some(out) => return Ok(out),
            None => Value::Array(items),
        },
        other => other,
    };
    let raw: Vec<(Vec<u8>, f64)> = from_owned_redis_value(v)?;
    let mut out = Vec::with_capacity(raw.len());
    for (m, recency) in raw {
        let Some((id, tokens, words)) = parse_name_member(&m) else {
            break;
        };
        out.push(Entry {
            id,
            recency,
            terms: Arc::new(NameTerms { tokens, words }),
        });
    }
    Ok(out)
}

/// [`entries_of`] a flat array of member and score bulk strings; `None`
/// when it is not one.
fn entries_in_place(items: &[Value]) -> Option<Vec<Entry>> {
    let mut out = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks_exact(2) {
        let (Value::BulkString(member), Value::BulkString(score)) = (&pair[0], &pair[1]) else {
            return None;
        };
        let recency: f64 = std::str::from_utf8(score).ok()?.parse().ok()?;
        let Some((id, tokens, words)) = parse_name_member(member) else {
            break;
        };
        out.push(Entry {
            id,
            recency,
            terms: Arc::new(NameTerms { tokens, words }),
        });
    }
    Some(out)
}

#[async_trait]
impl NameLists for Lists<'_> {
    fn vocabulary_hint(&self, tokens: &[String]) -> Option<Vec<Vocabulary>> {
        let hint = self.reader.index.known_vocabulary.get(tokens)?;
        let vocabulary = hint.vocabulary.clone();
        *self.hint.lock() = Some(hint);
        Some(vocabulary)
    }

    async fn vocabulary_and_read(
        &self,
        tokens: &[String],
        reads: &[Read],
        ahead: Option<(&[List], &[Read])>,
    ) -> IndexResult<FirstRound> {
        let hint = self.hint.lock().take();
        if let (Some(known), Some((sized, planned))) = (hint, ahead) {
            let (keys, values) = self
                .reader
                .read_live(|k, p| {
                    p.cmd("GET").arg(k.vv());
                    for r in reads {
                        add_read(k, p, r);
                    }
                    for l in sized {
                        p.cmd("ZCARD").arg(list_key(k, l));
                    }
                    for r in planned {
                        add_read(k, p, r);
                    }
                })
                .await?;
            let mut values = values.into_iter();
            let version = version_of(next_value(&mut values)?)?;
            if keys.base == known.base && version.as_deref() == Some(known.version.as_slice()) {
                *self.keys.lock() = Some(keys);
                let replies = entries_of_each(&mut values, reads.len())?;
                let mut sizes = Vec::with_capacity(sized.len());
                for _ in sized {
                    sizes.push(from_owned_redis_value::<u64>(next_value(&mut values)?)?);
                }
                let ahead = entries_of_each(&mut values, planned.len())?;
                return Ok(FirstRound {
                    vocabulary: known.vocabulary,
                    replies,
                    ahead: Some((sizes, ahead)),
                });
            }
            // The vocabulary changed since it was kept: read it.
        }
        let (keys, values) = self
            .reader
            .read_live(|k, p| {
                p.cmd("GET").arg(k.vv());
                for q in tokens {
                    p.cmd("ZRANGEBYLEX")
                        .arg(k.tk())
                        .arg(lex_from(q.as_bytes()))
                        .arg(lex_to(q.as_bytes()))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(MAX_EXPANSIONS);
                    for v in query_typo_keys(q) {
                        p.cmd("SMEMBERS").arg(k.ty(&v));
                    }
                }
                for r in reads {
                    add_read(k, p, r);
                }
            })
            .await?;
        let mut values = values.into_iter();
        let version = version_of(next_value(&mut values)?)?;
        let mut vocabulary = Vec::with_capacity(tokens.len());
        for q in tokens {
            let prefixed: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
            let mut near = Vec::new();
            for _ in query_typo_keys(q) {
                let found: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
                near.extend(found);
            }
            vocabulary.push(Vocabulary { prefixed, near });
        }
        if let Some(version) = version {
            self.reader
                .index
                .known_vocabulary
                .put(&keys.base, &version, tokens, &vocabulary);
        }
        *self.keys.lock() = Some(keys);
        let replies = entries_of_each(&mut values, reads.len())?;
        Ok(FirstRound {
            vocabulary,
            replies,
            ahead: None,
        })
    }

    async fn sizes_and_read(
        &self,
        lists: &[List],
        reads: &[Read],
    ) -> IndexResult<(Vec<u64>, Vec<Vec<Entry>>)> {
        if lists.is_empty() && reads.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let keys = self.keys()?;
        let mut pipe = ::redis::pipe();
        for l in lists {
            pipe.cmd("ZCARD").arg(list_key(&keys, l));
        }
        for r in reads {
            add_read(&keys, &mut pipe, r);
        }
        let mut values = self.reader.run(&pipe).await?.into_iter();
        let mut sizes = Vec::with_capacity(lists.len());
        for _ in lists {
            sizes.push(from_owned_redis_value::<u64>(next_value(&mut values)?)?);
        }
        Ok((sizes, entries_of_each(&mut values, reads.len())?))
    }

    async fn briefs(&self, ids: &[CustomerId]) -> IndexResult<Vec<Brief>> {
        self.reader.briefs(&self.keys()?, ids).await
    }

    async fn briefs_and_presence(
        &self,
        ids: &[CustomerId],
        check: &[CustomerId],
    ) -> IndexResult<(Vec<Brief>, Vec<bool>)> {
        self.reader
            .briefs_and_presence(&self.keys()?, ids, check)
            .await
    }
}

/// The summary (`GET`) of each of `ids`, and whether each of `check` has
/// one (`STRLEN`, which sends no summary back: a value of one byte is the
/// live mark of a removal).
fn briefs_pipeline(keys: &Keys, ids: &[CustomerId], check: &[CustomerId]) -> Pipeline {
    let mut pipe = ::redis::pipe();
    for id in ids {
        pipe.cmd("GET").arg(keys.cust(*id));
    }
    for id in check {
        pipe.cmd("STRLEN").arg(keys.cust(*id));
    }
    pipe
}

/// The replies of [`briefs_pipeline`]: the briefs of the ids with a
/// summary (stale entries are left out), and the presence of the others.
fn briefs_of_replies(
    replies: Vec<Value>,
    ids: &[CustomerId],
    check: usize,
) -> IndexResult<(Vec<Brief>, Vec<bool>)> {
    let mut values = replies.into_iter();
    let mut briefs = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(value) = bulk_of(next_value(&mut values)?)? {
            if let Some(packed) = split_cust(&value).1 {
                briefs.push(brief_of_packed(id, packed)?);
            }
        }
    }
    let mut present = Vec::with_capacity(check);
    for _ in 0..check {
        present.push(from_owned_redis_value::<u64>(next_value(&mut values)?)? > 1);
    }
    Ok((briefs, present))
}

/// A bulk string reply's bytes, moved out; `None` for nil.
fn bulk_of(v: Value) -> IndexResult<Option<Vec<u8>>> {
    match v {
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::Nil => Ok(None),
        other => Ok(from_owned_redis_value(other)?),
    }
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

/// What a search hit shows, from a packed summary.
fn brief_of_packed(id: CustomerId, packed: &[u8]) -> IndexResult<Brief> {
    Ok(Brief::from(
        &crate::packed::unpack(id, packed).map_err(corrupt)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::EngagementBrief;
    use crm_models::{Channel, EngagementId};

    #[test]
    fn list_entries_are_read_in_place() {
        let id = CustomerId::new();
        let member = |id: CustomerId| [id.0.as_bytes().as_slice(), b"ann tan"].concat();
        let reply = Value::Array(vec![
            Value::BulkString(member(id)),
            Value::BulkString(b"1765432100000000".to_vec()),
            Value::BulkString(member(id)),
            Value::BulkString(b"-9e+18".to_vec()),
        ]);
        let entries = entries_of(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, id);
        assert_eq!(entries[0].recency, 1_765_432_100_000_000.0);
        assert_eq!(entries[1].recency, ranking::NEVER);
        assert_eq!(
            entries[0].terms.tokens,
            vec!["ann".to_string(), "tan".to_string()]
        );
        // RESP3 pairs take the generic path.
        let pairs = Value::Array(vec![Value::Array(vec![
            Value::BulkString(member(id)),
            Value::Double(5.0),
        ])]);
        let entries = entries_of(pairs).unwrap();
        assert_eq!((entries.len(), entries[0].recency), (1, 5.0));
    }

    #[test]
    fn engagement_ids_survive_the_summary_json() {
        let brief = EngagementBrief {
            id: EngagementId::new(),
            channel: Channel::Sms,
            direction: None,
            occurred_at: crm_models::time::now(),
            preview: "hi".into(),
        };
        let json = serde_json::to_string(&vec![brief.clone()]).unwrap();
        let back: Vec<EngagementBrief> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![brief]);
    }
}
