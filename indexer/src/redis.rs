//! The production index on Redis. The key schema is in the crate docs.
//!
//! - **Round trips.** Every read is one pipeline that also asks for the live
//!   generation (`HGET crm:gen current`) beside the data commands, which use the
//!   generation cached from the previous call. When the two agree (always,
//!   except right after a rebuild switched), the answer is complete: a
//!   caller-ID lookup is one `HGET` + one `HGETALL` in one round trip. When
//!   they differ, the cache is updated and the pipeline sent again.
//! - **Hot paths stay cheap.** No command takes several posting lists
//!   (`SINTER` blocks Redis for milliseconds on big sets). A name search
//!   (see [`RedisIndex::search_names`]) expands each query token to the
//!   vocabulary tokens it matches (`tk` prefix range, typo table), reads the
//!   whole-name lists `wn:` the query could name, then reads the posting
//!   lists `nm:<token>` of the query token with the fewest entries in
//!   ranking order (most recent first) a chunk at a time, checking the other
//!   query tokens against the tokens each entry carries, and stops as soon as
//!   nothing unread can enter the top `limit` (or after [`MAX_SCANNED`]
//!   entries). Only the `limit` hits it answers with have their summary read.
//! - **Writes** are pipelined, not transactions (`MULTI` cannot span Cluster
//!   slots): a reader may see a half-applied upsert for a moment; the next
//!   upsert of the customer, or a rebuild, repairs any interrupted one.
//!   Upserts of one customer must not run concurrently (the event worker
//!   applies one customer's events in order).
//! - **Rebuild** writes batches of `REBUILD_BATCH` documents into the new
//!   generation from up to `REBUILD_WRITERS` tasks, two round trips a
//!   batch: one reads what the generation already holds for those customers,
//!   one writes. Customers new to the generation (nearly all) are written
//!   with one command per key and batch, sorted-set members in order
//!   (see `NewCustomers`); upserts and removals applied meanwhile win over
//!   the rebuild's copy (see `LIVE_FIELD`).
//! - The connection is a `ConnectionManager` (see `connection`): it
//!   reconnects by itself; a command sent while Redis is down fails with
//!   [`IndexError::Unavailable`]. Caller-ID reads have a connection of their
//!   own (see `phone_reads`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;

use ::redis::{from_owned_redis_value, Pipeline, RedisError, Script, Value};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;

use crm_models::time;
use crm_models::{CustomerId, Email, PhoneNumber};

use crate::doc::{CustomerSummary, IndexEntries, IndexedCustomer, SummaryJson};
use crate::memory::typo_keys;
use crate::query::{self, Brief, Match, MatchedOn, NameCandidate, Plan, Query, SearchHit};
use crate::{
    FingerprintPage, IndexError, IndexResult, IndexedFingerprint, RebuildReport, SearchIndex,
    REBUILD_BATCH,
};

/// Most members read from one email prefix range. A prefix matching more
/// (`a`) answers from the first ones in address order.
pub const CANDIDATES: usize = 500;

/// Most vocabulary tokens one query token stands for: the tokens it is a
/// prefix of (from `tk`, in token order), and as many one-typo neighbours.
/// `t` alone may start thousands of tokens; the first ones are used.
pub const MAX_EXPANSIONS: usize = 64;

/// Most posting-list entries one name search reads. A search that has not
/// proven its top `limit` by then answers with the best it has read (at one
/// million generated customers this happens to queries of two or more
/// common partial tokens whose combination is rare).
pub const MAX_SCANNED: usize = 1_500;

/// Most `SCAN` calls one page of [`SearchIndex::fingerprints`] makes.
const SCANS_PER_PAGE: usize = 256;

/// Entries read per posting list in the first round of a multi-token
/// search; each further round reads four times as many.
const FIRST_CHUNK: usize = 64;

/// Batches a rebuild writes at the same time, each on its own task: the
/// documents are produced (read from the store) while earlier batches are
/// encoded and written.
const REBUILD_WRITERS: usize = 4;

/// The recency score of a customer that never engaged: below every date.
const NEVER: f64 = -9.0e18;

/// How long a read may take before the index counts as unreachable (the
/// routes then answer from the store). The connection manager keeps
/// retrying a refused connection for far longer than a caller can wait.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The same for writes, whose pipelines can be large (a rebuild batch).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `pipe`, giving up after `limit` as unreachable.
async fn query_within(
    conn: &Arc<Connection>,
    pipe: &Pipeline,
    limit: Duration,
) -> IndexResult<Vec<Value>> {
    let mut manager = conn.get();
    let result = match tokio::time::timeout(limit, pipe.query_async(&mut manager)).await {
        Ok(replies) => replies.map_err(IndexError::from),
        Err(_) => Err(IndexError::Unavailable(format!(
            "Redis did not answer within {} ms",
            limit.as_millis()
        ))),
    };
    if let Err(IndexError::Unavailable(_)) = &result {
        conn.unreachable();
    }
    result
}

/// Runs the commands `build` adds against the live generation of the index
/// under `prefix`, in one round trip unless a rebuild switched since the
/// generation was last seen (`generation_seen`, updated here). The replies
/// are those of `build`'s commands.
async fn read_live(
    conn: &Arc<Connection>,
    prefix: &str,
    generation_seen: &AtomicU64,
    build: impl Fn(&Keys, &mut Pipeline),
) -> IndexResult<(Keys, Vec<Value>)> {
    let mut generation = generation_seen.load(Ordering::Relaxed);
    for _ in 0..3 {
        let keys = Keys::of(prefix, generation);
        let mut pipe = ::redis::pipe();
        pipe.cmd("HGET").arg(gen_key(prefix)).arg("current");
        build(&keys, &mut pipe);
        let mut values = query_within(conn, &pipe, READ_TIMEOUT).await?;
        if values.is_empty() {
            return Err(IndexError::Internal("empty pipeline reply".into()));
        }
        let live = parse_generation(values.remove(0))?;
        if live == generation {
            return Ok((keys, values));
        }
        generation_seen.store(live, Ordering::Relaxed);
        generation = live;
    }
    Err(IndexError::Internal(
        "the index generation changed three times during one read".into(),
    ))
}

/// Keys unlinked per pipeline when a generation is deleted.
const DELETE_BATCH: usize = 500;

/// Switches `crm:gen` to the rebuilt generation if it is still the one being
/// built; returns the generation it replaced, or nil. One key, so it is
/// Cluster-safe.
const SWITCH: &str = r#"
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] then return false end
local old = redis.call('HGET', KEYS[1], 'current') or '0'
redis.call('HSET', KEYS[1], 'current', ARGV[1])
redis.call('HDEL', KEYS[1], 'building')
return old
"#;

/// Forgets the generation being built if it is still `ARGV[1]`.
const ABANDON: &str = r#"
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'building')
return 1
"#;

mod connection;
mod phone_reads;
mod resp;

use connection::Connection;

pub struct RedisIndex {
    conn: Arc<Connection>,
    prefix: String,
    /// The live generation as last seen; checked on every read.
    generation: Arc<AtomicU64>,
    switch: Script,
    abandon: Script,
    /// Caller-ID lookups, pipelined together.
    phone_reads: phone_reads::PhoneReads,
}

impl RedisIndex {
    pub const DEFAULT_PREFIX: &'static str = "crm:";

    /// Connects to `url` (`redis://host:6379/0`); keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> IndexResult<Self> {
        Ok(Self::with_connection(
            Arc::new(Connection::open(url).await?),
            prefix,
        ))
    }

    fn with_connection(conn: Arc<Connection>, prefix: &str) -> Self {
        let generation = Arc::new(AtomicU64::new(0));
        RedisIndex {
            phone_reads: phone_reads::PhoneReads::new(phone_reads::Target {
                info: conn.info().clone(),
                prefix: prefix.to_string(),
                generation: generation.clone(),
            }),
            conn,
            prefix: prefix.to_string(),
            generation,
            switch: Script::new(SWITCH),
            abandon: Script::new(ABANDON),
        }
    }

    fn gen_key(&self) -> String {
        gen_key(&self.prefix)
    }

    fn keys(&self, generation: u64) -> Keys {
        Keys::of(&self.prefix, generation)
    }

    async fn query(&self, pipe: &Pipeline) -> IndexResult<Vec<Value>> {
        query_within(&self.conn, pipe, WRITE_TIMEOUT).await
    }

    /// Runs the commands `build` adds against the live generation, in one
    /// round trip unless a rebuild switched since the last call.
    async fn read(&self, build: impl Fn(&Keys, &mut Pipeline)) -> IndexResult<(Keys, Vec<Value>)> {
        read_live(&self.conn, &self.prefix, &self.generation, build).await
    }

    /// Another handle on the same connection and keys, for writer tasks.
    fn sibling(&self) -> RedisIndex {
        RedisIndex::with_connection(self.conn.clone(), &self.prefix)
    }

    /// Writes one rebuild batch into `generation`, unless another rebuild
    /// took over. Returns how many documents it handled.
    ///
    /// One round trip reads whether this rebuild is still the one building
    /// and what the generation holds for each customer of the batch; a second
    /// writes. A customer the generation does not have yet (nearly all of
    /// them) is written without removing anything first, its entries gathered
    /// per key with the rest of the batch ([`NewCustomers`]). A customer a
    /// live upsert or removal already wrote into the generation is skipped:
    /// the live write read the store after its event, while the batch may
    /// hold a copy read before it, and any later change brings another
    /// event. (A live write landing between this read and the write below
    /// can still be overwritten, as before.) A customer the
    /// rebuild wrote before (the source gave it twice, having seen it change)
    /// is replaced as an upsert replaces it.
    async fn write_batch(
        self: Arc<Self>,
        generation: u64,
        batch: Vec<IndexedCustomer>,
        vocabulary: Arc<Mutex<HashSet<String>>>,
    ) -> IndexResult<u64> {
        let handled = batch.len() as u64;
        let batch = latest_per_customer(batch);
        let keys = self.keys(generation);
        let mut pipe = ::redis::pipe();
        pipe.cmd("HGET").arg(self.gen_key()).arg("building");
        for doc in &batch {
            pipe.cmd("HMGET")
                .arg(keys.cust(doc.id()))
                .arg("indexed")
                .arg(LIVE_FIELD);
        }
        let mut replies = self.query(&pipe).await?.into_iter();
        let building: Option<u64> = from_owned_redis_value(next_value(&mut replies)?)?;
        if building != Some(generation) {
            return Err(IndexError::RebuildAbandoned(
                "another rebuild started".into(),
            ));
        }

        let mut new = NewCustomers::default();
        let mut write = ::redis::pipe();
        let mut tokens: Vec<String> = Vec::new();
        for doc in &batch {
            let (indexed, live): (Option<String>, Option<String>) =
                from_owned_redis_value(next_value(&mut replies)?)?;
            if live.is_some() {
                continue;
            }
            match indexed {
                None if doc.is_searchable() => {
                    let entries = doc.entries();
                    new.add(&keys, doc, &entries)?;
                    tokens.extend(entries.tokens);
                }
                // Not indexed, and not to be.
                None => {}
                Some(raw) => {
                    let old: IndexEntries = serde_json::from_str(&raw).map_err(corrupt)?;
                    // Tokens this leaves without customers keep their
                    // token-level keys out: `write_vocabulary` checks.
                    let _ = keys.write_change(
                        &mut write,
                        &Change::Upsert(doc),
                        old,
                        false,
                        Some(&mut tokens),
                    )?;
                }
            }
        }
        new.write(&keys, &mut write);
        query_within(&self.conn, &write, WRITE_TIMEOUT).await?;
        let mut v = vocabulary.lock();
        for t in tokens {
            if !v.contains(&t) {
                v.insert(t);
            }
        }
        Ok(handled)
    }

    /// The token-level keys of every token a rebuild wrote, for those that
    /// still have customers (an upsert during the rebuild may have taken a
    /// token's last one away).
    async fn write_vocabulary(&self, generation: u64, tokens: &[String]) -> IndexResult<()> {
        let keys = self.keys(generation);
        for chunk in tokens.chunks(DELETE_BATCH) {
            let mut pipe = ::redis::pipe();
            for t in chunk {
                pipe.cmd("ZCARD").arg(keys.nm(t));
            }
            let counts = self.query(&pipe).await?;
            let mut write = ::redis::pipe();
            for (t, count) in chunk.iter().zip(counts) {
                if from_owned_redis_value::<u64>(count)? > 0 {
                    keys.add_token(&mut write, t);
                }
            }
            query_within(&self.conn, &write, WRITE_TIMEOUT).await?;
        }
        Ok(())
    }

    /// `(current, building)` from `crm:gen`.
    async fn generations(&self) -> IndexResult<(u64, Option<u64>)> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.gen_key())
            .arg("current")
            .arg("building");
        let mut values = self.query(&pipe).await?;
        let fields: Vec<Option<u64>> = match values.pop() {
            Some(v) => from_owned_redis_value(v)?,
            None => Vec::new(),
        };
        let current = fields.first().copied().flatten().unwrap_or(0);
        let building = fields.get(1).copied().flatten();
        self.generation.store(current, Ordering::Relaxed);
        Ok((current, building))
    }

    /// Applies upserts and removals to the live generation and to the one
    /// being built, if any: reads what each customer is indexed under now,
    /// writes the difference, then drops typo-table entries of tokens nobody
    /// has any more. In the generation being built, every customer written
    /// (or removed) is marked live, so that the rebuild does not overwrite it
    /// with a document it read earlier.
    async fn apply(
        &self,
        current: u64,
        building: Option<u64>,
        changes: &[Change<'_>],
    ) -> IndexResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let targets: Vec<(u64, bool)> = std::iter::once((current, false))
            .chain(building.filter(|b| *b != current).map(|b| (b, true)))
            .collect();
        let mut pipe = ::redis::pipe();
        for &(g, _) in &targets {
            let keys = self.keys(g);
            for change in changes {
                pipe.cmd("HGET").arg(keys.cust(change.id())).arg("indexed");
            }
        }
        let previous = self.query(&pipe).await?;

        let mut write = ::redis::pipe();
        let mut orphan_candidates: Vec<(u64, String)> = Vec::new();
        let mut previous = previous.into_iter();
        for &(g, live) in &targets {
            let keys = self.keys(g);
            for change in changes {
                let old: IndexEntries = match previous.next() {
                    Some(Value::Nil) | None => IndexEntries::default(),
                    Some(v) => {
                        let raw: String = from_owned_redis_value(v)?;
                        serde_json::from_str(&raw).map_err(corrupt)?
                    }
                };
                let gone = keys.write_change(&mut write, change, old, live, None)?;
                orphan_candidates.extend(gone.into_iter().map(|t| (g, t)));
            }
        }
        query_within(&self.conn, &write, WRITE_TIMEOUT).await?;
        self.drop_orphan_tokens(orphan_candidates).await
    }

    /// Vocabulary (`tk`) and typo-table entries point at tokens, not
    /// customers: a token's entries go when no customer has the token any
    /// more. (A customer getting the token between the check and the removal
    /// loses prefix and typo matching on it until its next upsert; exact
    /// matching by that token goes too, since the vocabulary is how a query
    /// token finds its posting list.)
    async fn drop_orphan_tokens(&self, tokens: Vec<(u64, String)>) -> IndexResult<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (g, t) in &tokens {
            pipe.cmd("ZCARD").arg(self.keys(*g).nm(t));
        }
        let counts = self.query(&pipe).await?;
        let mut cleanup = ::redis::pipe();
        let mut any = false;
        for ((g, t), count) in tokens.iter().zip(counts) {
            let count: u64 = from_owned_redis_value(count)?;
            if count == 0 {
                let keys = self.keys(*g);
                cleanup.cmd("ZREM").arg(keys.tk()).arg(t).ignore();
                any = true;
                for v in typo_keys(t) {
                    cleanup.cmd("SREM").arg(keys.ty(&v)).arg(t).ignore();
                    any = true;
                }
            }
        }
        if any {
            query_within(&self.conn, &cleanup, WRITE_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Unlinks every key of a generation, a batch at a time, one key per
    /// command (so it works on Cluster). Returns how many went.
    async fn delete_generation(&self, generation: u64) -> IndexResult<u64> {
        let pattern = format!("{}g{generation}:*", glob_escape(&self.prefix));
        let mut conn = self.conn.get();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(DELETE_BATCH)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let mut pipe = ::redis::pipe();
                for k in &keys {
                    pipe.cmd("UNLINK").arg(k).ignore();
                }
                pipe.query_async::<()>(&mut conn).await?;
                deleted += keys.len() as u64;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Whether a live generation may hold customers' keys: `used` is set by
    /// every customer written into it (`ids` by older versions), and never
    /// unset. (Not for a generation a rebuild left half-written.)
    async fn ever_indexed(&self, generation: u64) -> IndexResult<bool> {
        let keys = self.keys(generation);
        let present: u64 = ::redis::cmd("EXISTS")
            .arg(keys.used())
            .arg(keys.ids())
            .arg(keys.tk())
            .query_async(&mut self.conn.get())
            .await?;
        Ok(present > 0)
    }

    async fn abandon_rebuild(&self, generation: u64) -> IndexResult<()> {
        let mut conn = self.conn.get();
        let _: i64 = self
            .abandon
            .key(self.gen_key())
            .arg(generation)
            .invoke_async(&mut conn)
            .await?;
        self.delete_generation(generation).await?;
        Ok(())
    }

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

    async fn search_emails(&self, text: &str, exact: bool) -> IndexResult<Vec<SearchHit>> {
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

    async fn search_phones(
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

/// Why a rebuild stopped.
enum RebuildFailure {
    /// The documents' source failed: the rebuild is abandoned.
    Source(IndexError),
    /// Writing failed.
    Write(IndexError),
}

/// A spawned task that is cancelled when its handle is dropped (a rebuild
/// given up stops its writers).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// One change to apply.
enum Change<'a> {
    Upsert(&'a IndexedCustomer),
    /// A customer to drop, and identifiers it had besides what the index knows.
    Remove(CustomerId, IndexEntries),
}

impl Change<'_> {
    fn id(&self) -> CustomerId {
        match self {
            Change::Upsert(doc) => doc.id(),
            Change::Remove(id, _) => *id,
        }
    }
}

/// Key names of one generation.
struct Keys {
    /// `crm:g<N>:`
    base: String,
}

/// `<prefix>gen`: the live generation (`current`) and the one being built.
fn gen_key(prefix: &str) -> String {
    format!("{prefix}gen")
}

impl Keys {
    /// The keys of `generation` under `prefix`.
    fn of(prefix: &str, generation: u64) -> Keys {
        Keys {
            base: format!("{prefix}g{generation}:"),
        }
    }

    /// `<base><kind><name>`, without `format!` (a rebuild builds millions).
    fn key(&self, kind: &str, name: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + kind.len() + name.len());
        k.push_str(&self.base);
        k.push_str(kind);
        k.push_str(name);
        k
    }
    fn cust(&self, id: CustomerId) -> String {
        self.key("cust:", &id.to_string())
    }
    /// What every `cust:<id>` key of the generation starts with.
    fn cust_prefix(&self) -> String {
        self.key("cust:", "")
    }
    fn ph(&self, e164: &str) -> String {
        self.key("ph:", e164)
    }
    fn pn(&self, national: &str) -> String {
        self.key("pn:", national)
    }
    fn em(&self, email: &str) -> String {
        self.key("em:", email)
    }
    fn ex(&self) -> String {
        self.key("ex", "")
    }
    fn nm(&self, token: &str) -> String {
        self.key("nm:", token)
    }
    fn tk(&self) -> String {
        self.key("tk", "")
    }
    fn wn(&self, whole_name: &str) -> String {
        self.key("wn:", whole_name)
    }
    fn ty(&self, variant: &str) -> String {
        self.key("ty:", variant)
    }
    /// Written by the versions that kept every customer id in one sorted
    /// set; only looked for now (see `ever_indexed`).
    fn ids(&self) -> String {
        self.key("ids", "")
    }
    fn used(&self) -> String {
        self.key("used", "")
    }

    /// Writes one change given what the customer is indexed under now
    /// (`old`): removes what it no longer has, writes the rest. `live` marks
    /// the customer in a generation being built (see [`LIVE_FIELD`]). With
    /// `vocabulary`, the token-level keys are not written but the tokens are
    /// added to it (a rebuild writes them once at the end). Returns the tokens
    /// that may have lost their last customer.
    fn write_change(
        &self,
        p: &mut Pipeline,
        change: &Change<'_>,
        old: IndexEntries,
        live: bool,
        vocabulary: Option<&mut Vec<String>>,
    ) -> IndexResult<Vec<String>> {
        let gone = match change {
            Change::Upsert(doc) if doc.is_searchable() => {
                let new = doc.entries();
                let gone = old.minus(&new);
                if name_member(doc.id(), &old) != name_member(doc.id(), &new) {
                    self.unindex_name(p, doc.id(), &old);
                }
                self.unindex(p, doc.id(), &gone);
                self.index(p, doc, &new, live, vocabulary.is_none())?;
                if let Some(v) = vocabulary {
                    v.extend(new.tokens.iter().cloned());
                }
                gone
            }
            Change::Upsert(doc) => {
                self.remove_customer(p, doc.id(), live);
                self.unindex_name(p, doc.id(), &old);
                self.unindex(p, doc.id(), &old);
                old
            }
            Change::Remove(id, also) => {
                self.unindex_name(p, *id, &old);
                let gone = old.union(also);
                self.remove_customer(p, *id, live);
                self.unindex(p, *id, &gone);
                gone
            }
        };
        Ok(gone.tokens)
    }

    /// Writes every key of `entries` and the summary (all idempotent).
    fn index(
        &self,
        p: &mut Pipeline,
        doc: &IndexedCustomer,
        entries: &IndexEntries,
        live: bool,
        vocabulary: bool,
    ) -> IndexResult<()> {
        let id = doc.id();
        let id_s = id.to_string();
        let summary = doc.summary();
        let summary_json = serde_json::to_string(&summary).map_err(corrupt)?;
        if !entries.tokens.is_empty() {
            let recency = recency_score(summary.last_engagement_at.as_ref());
            let entry = name_member(id, entries);
            for t in &entries.tokens {
                p.cmd("ZADD")
                    .arg(self.nm(t))
                    .arg(recency)
                    .arg(&entry)
                    .ignore();
                if vocabulary {
                    self.add_token(p, t);
                }
            }
            if let Some(whole) = whole_name(&entries.words) {
                p.cmd("ZADD")
                    .arg(self.wn(&whole))
                    .arg(recency)
                    .arg(&entry)
                    .ignore();
            }
        }
        for e in &entries.emails {
            p.cmd("SADD").arg(self.em(e)).arg(&id_s).ignore();
            p.cmd("ZADD")
                .arg(self.ex())
                .arg(0)
                .arg(member(e, id))
                .ignore();
        }
        for ph in &entries.phones {
            p.cmd("HSET")
                .arg(self.ph(ph))
                .arg(&id_s)
                .arg(&summary_json)
                .ignore();
        }
        for n in &entries.national {
            p.cmd("SADD").arg(self.pn(n)).arg(&id_s).ignore();
        }
        let mut fields = summary_fields(summary_json, entries)?;
        if live {
            fields.push((LIVE_FIELD, "1".into()));
        }
        p.cmd("HSET").arg(self.cust(id)).arg(&fields).ignore();
        p.cmd("SET").arg(self.used()).arg(1).ignore();
        Ok(())
    }

    /// The token-level entries of `t`: the vocabulary and the typo table.
    fn add_token(&self, p: &mut Pipeline, t: &str) {
        p.cmd("ZADD").arg(self.tk()).arg(0).arg(t).ignore();
        for v in typo_keys(t) {
            p.cmd("SADD").arg(self.ty(&v)).arg(t).ignore();
        }
    }

    /// Removes the customer's name entries as written for `indexed` (what
    /// it was indexed under): its posting-list entry under each token and its
    /// whole-name entry.
    fn unindex_name(&self, p: &mut Pipeline, id: CustomerId, indexed: &IndexEntries) {
        if indexed.tokens.is_empty() {
            return;
        }
        let entry = name_member(id, indexed);
        for t in &indexed.tokens {
            p.cmd("ZREM").arg(self.nm(t)).arg(&entry).ignore();
        }
        if let Some(whole) = whole_name(&indexed.words) {
            p.cmd("ZREM").arg(self.wn(&whole)).arg(&entry).ignore();
        }
    }

    /// Removes the customer from the identifier keys of `entries` (name
    /// entries go with `unindex_name`; typo-table and vocabulary entries are
    /// token-level, see `drop_orphan_tokens`).
    fn unindex(&self, p: &mut Pipeline, id: CustomerId, entries: &IndexEntries) {
        let id_s = id.to_string();
        for e in &entries.emails {
            p.cmd("SREM").arg(self.em(e)).arg(&id_s).ignore();
            p.cmd("ZREM").arg(self.ex()).arg(member(e, id)).ignore();
        }
        for ph in &entries.phones {
            p.cmd("HDEL").arg(self.ph(ph)).arg(&id_s).ignore();
        }
        for n in &entries.national {
            p.cmd("SREM").arg(self.pn(n)).arg(&id_s).ignore();
        }
    }

    /// Deletes the summary and the id; `live` leaves a marked, empty
    /// summary behind (see [`LIVE_FIELD`]).
    fn remove_customer(&self, p: &mut Pipeline, id: CustomerId, live: bool) {
        let cust = self.cust(id);
        p.cmd("DEL").arg(&cust).ignore();
        if live {
            p.cmd("HSET").arg(&cust).arg(LIVE_FIELD).arg("1").ignore();
        }
    }
}

/// The field of `cust:<id>` that marks a customer written into a generation
/// being built by a live upsert or removal (a removal leaves a `cust:<id>`
/// holding only this field, which readers take for no summary): the rebuild
/// leaves such a customer as it is.
const LIVE_FIELD: &str = "live";

/// Field names and values of a `cust:<id>` hash.
type Fields = Vec<(&'static str, String)>;

/// The field of `cust:<id>` holding the caller-ID summary as JSON.
const SUMMARY_FIELD: &str = "summary";

/// The `cust:<id>` fields of a summary (`summary_json` is its JSON): the
/// summary, its fingerprint and what it is indexed under. Three fields
/// instead of one per summary field (17) take a tenth less memory per
/// customer: Redis keeps a hash with a value over 64 bytes as a hash table,
/// with an entry per field.
fn summary_fields(summary_json: String, entries: &IndexEntries) -> IndexResult<Fields> {
    let fingerprint = crate::doc::fingerprint_of_json(summary_json.as_bytes());
    Ok(vec![
        (SUMMARY_FIELD, summary_json),
        ("fingerprint", fingerprint),
        ("indexed", serde_json::to_string(entries).map_err(corrupt)?),
    ])
}

/// The batch without earlier copies of a customer it has twice (the source
/// read it again after a change: the later copy is the newer).
fn latest_per_customer(batch: Vec<IndexedCustomer>) -> Vec<IndexedCustomer> {
    let mut last: HashMap<CustomerId, usize> = HashMap::with_capacity(batch.len());
    for (i, doc) in batch.iter().enumerate() {
        last.insert(doc.id(), i);
    }
    if last.len() == batch.len() {
        return batch;
    }
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, doc)| last.get(&doc.id()) == Some(i))
        .map(|(_, doc)| doc)
        .collect()
}

/// What a rebuild batch writes for customers the generation does not have
/// yet, gathered per key: one command per key and batch instead of one per
/// customer, with nothing to remove first (no `HDEL` of absent fields, no
/// old entries). Sorted-set members go in their sort order, so that
/// consecutive inserts walk mostly the same path of the set's skip list
/// (Redis spends most of a rebuild inserting into the big sets: `ids`, `ex`,
/// the posting lists).
#[derive(Default)]
struct NewCustomers {
    /// Sorted-set key → (score, member).
    sorted: HashMap<String, Vec<(f64, String)>>,
    /// Set key → members.
    sets: HashMap<String, Vec<String>>,
    /// `ph:<e164>` → the customers (indexes into `customers`) with it.
    phones: HashMap<String, Vec<usize>>,
    /// Per customer: its id, `cust:<id>` and its fields.
    customers: Vec<NewCustomer>,
}

struct NewCustomer {
    id: String,
    key: String,
    /// [`summary_fields`]: the summary JSON first.
    fields: Fields,
}

impl NewCustomers {
    fn add(
        &mut self,
        keys: &Keys,
        doc: &IndexedCustomer,
        entries: &IndexEntries,
    ) -> IndexResult<()> {
        let id = doc.id().to_string();
        let summary = doc.summary();
        let summary_json = serde_json::to_string(&summary).map_err(corrupt)?;
        if !entries.tokens.is_empty() {
            let recency = recency_score(summary.last_engagement_at.as_ref());
            let entry = name_member_of(&id, entries);
            for t in &entries.tokens {
                self.zadd(keys.nm(t), recency, entry.clone());
            }
            if let Some(whole) = whole_name(&entries.words) {
                self.zadd(keys.wn(&whole), recency, entry);
            }
        }
        for e in &entries.emails {
            self.sadd(keys.em(e), id.clone());
            self.zadd(keys.ex(), 0.0, member_of(e, &id));
        }
        for n in &entries.national {
            self.sadd(keys.pn(n), id.clone());
        }
        let at = self.customers.len();
        for ph in &entries.phones {
            self.phones.entry(keys.ph(ph)).or_default().push(at);
        }
        self.customers.push(NewCustomer {
            key: keys.key("cust:", &id),
            id,
            fields: summary_fields(summary_json, entries)?,
        });
        Ok(())
    }

    fn zadd(&mut self, key: String, score: f64, member: String) {
        self.sorted.entry(key).or_default().push((score, member));
    }

    fn sadd(&mut self, key: String, member: String) {
        self.sets.entry(key).or_default().push(member);
    }

    fn write(self, keys: &Keys, p: &mut Pipeline) {
        if !self.customers.is_empty() {
            p.cmd("SET").arg(keys.used()).arg(1).ignore();
        }
        for c in &self.customers {
            p.cmd("HSET").arg(&c.key).arg(&c.fields).ignore();
        }
        for (key, at) in &self.phones {
            p.cmd("HSET").arg(key);
            for &i in at {
                let c = &self.customers[i];
                p.arg(&c.id).arg(&c.fields[0].1);
            }
            p.ignore();
        }
        for (key, members) in &self.sets {
            p.cmd("SADD").arg(key).arg(members).ignore();
        }
        for (key, mut members) in self.sorted {
            members.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            p.cmd("ZADD").arg(&key);
            for (score, m) in &members {
                p.arg(*score).arg(m);
            }
            p.ignore();
        }
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

/// A posting-list entry: `<id>\0<tokens>`, and `\0<words>` when the words
/// differ from the tokens (CJK substrings), space-separated (neither has
/// spaces). It carries what scoring needs, so no summary is read for
/// candidates that are not answered.
fn name_member(id: CustomerId, entries: &IndexEntries) -> String {
    name_member_of(&id.to_string(), entries)
}

/// [`name_member`] with the id as text.
fn name_member_of(id: &str, entries: &IndexEntries) -> String {
    let joined = |words: &[String], m: &mut String| {
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                m.push(' ');
            }
            m.push_str(w);
        }
    };
    let mut m = String::with_capacity(id.len() + 64);
    m.push_str(id);
    m.push('\0');
    joined(&entries.tokens, &mut m);
    if entries.words != entries.tokens {
        m.push('\0');
        joined(&entries.words, &mut m);
    }
    m
}

fn parse_name_member(m: &[u8]) -> Option<(CustomerId, Vec<String>, Vec<String>)> {
    let text = std::str::from_utf8(m).ok()?;
    let mut parts = text.split('\0');
    let id = parts.next()?.parse().ok()?;
    let split = |s: &str| -> Vec<String> {
        s.split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    };
    let tokens = split(parts.next()?);
    let words = match parts.next() {
        Some(w) => split(w),
        None => tokens.clone(),
    };
    Some((id, tokens, words))
}

/// The `wn:` key name of a set of words: sorted, each once, space-separated.
fn whole_name(words: &[String]) -> Option<String> {
    let set: BTreeSet<&str> = words.iter().map(String::as_str).collect();
    if set.is_empty() {
        None
    } else {
        Some(set.into_iter().collect::<Vec<_>>().join(" "))
    }
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

/// A posting list's score: the last engagement in microseconds, so that the
/// list's order is the ranking's tie-break.
fn recency_score(at: Option<&time::Timestamp>) -> f64 {
    at.map_or(NEVER, |t| t.timestamp_micros() as f64)
}

fn lex_from(prefix: &[u8]) -> Vec<u8> {
    let mut from = Vec::with_capacity(prefix.len() + 1);
    from.push(b'[');
    from.extend_from_slice(prefix);
    from
}

fn lex_to(prefix: &[u8]) -> Vec<u8> {
    let mut to = Vec::with_capacity(prefix.len() + 2);
    to.push(b'(');
    to.extend_from_slice(prefix);
    to.push(0xff);
    to
}

/// `<value>\0<id>`: a sorted-set member for prefix search.
fn member(value: &str, id: CustomerId) -> String {
    member_of(value, &id.to_string())
}

/// [`member`] with the id as text.
fn member_of(value: &str, id: &str) -> String {
    let mut m = String::with_capacity(value.len() + 1 + id.len());
    m.push_str(value);
    m.push('\0');
    m.push_str(id);
    m
}

fn split_member(m: &[u8]) -> Option<(&str, CustomerId)> {
    let at = m.iter().position(|b| *b == 0)?;
    let value = std::str::from_utf8(&m[..at]).ok()?;
    let id = std::str::from_utf8(&m[at + 1..]).ok()?.parse().ok()?;
    Some((value, id))
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

fn next_value(values: &mut impl Iterator<Item = Value>) -> IndexResult<Value> {
    values
        .next()
        .ok_or_else(|| IndexError::Internal("short pipeline reply".into()))
}

fn parse_generation(v: Value) -> IndexResult<u64> {
    let g: Option<u64> = from_owned_redis_value(v)?;
    Ok(g.unwrap_or(0))
}

fn corrupt(e: serde_json::Error) -> IndexError {
    IndexError::Internal(format!("index data does not decode: {e}"))
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

/// Escapes the glob characters of `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl From<RedisError> for IndexError {
    fn from(e: RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped()
        {
            IndexError::Unavailable(e.to_string())
        } else {
            IndexError::Internal(e.to_string())
        }
    }
}

#[async_trait]
impl SearchIndex for RedisIndex {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> IndexResult<()> {
        let mut ping = ::redis::pipe();
        ping.cmd("PING");
        query_within(&self.conn, &ping, READ_TIMEOUT).await?;
        Ok(())
    }

    async fn upsert(&self, doc: &IndexedCustomer) -> IndexResult<()> {
        let (current, building) = self.generations().await?;
        self.apply(current, building, &[Change::Upsert(doc)]).await
    }

    async fn remove(&self, id: CustomerId, identifiers: &[String]) -> IndexResult<()> {
        let (current, building) = self.generations().await?;
        let also = IndexEntries::from_identifier_keys(identifiers);
        self.apply(current, building, &[Change::Remove(id, also)])
            .await
    }

    async fn search(&self, query: &Query, limit: usize) -> IndexResult<Vec<SearchHit>> {
        let hits = match Plan::of(query) {
            Plan::Nothing => Vec::new(),
            Plan::Name(tokens) => {
                let words = query::query_words(query);
                self.search_names(&tokens, &words, limit).await?
            }
            Plan::Email { text, exact } => self.search_emails(&text, exact).await?,
            Plan::Phone { e164, national } => {
                self.search_phones(&e164, national.as_deref()).await?
            }
        };
        Ok(query::best_first(hits, limit))
    }

    async fn lookup_phone(&self, phone: &PhoneNumber) -> IndexResult<Vec<CustomerSummary>> {
        self.lookup_phone_json(phone)
            .await?
            .iter()
            .map(|s| s.decode().map_err(corrupt))
            .collect()
    }

    async fn lookup_phone_json(&self, phone: &PhoneNumber) -> IndexResult<Vec<SummaryJson>> {
        let found = self
            .phone_reads
            .hgetall(phone.as_str())
            .await?
            .into_iter()
            .map(|(id, json)| {
                let id = id
                    .parse()
                    .map_err(|_| IndexError::Internal(format!("index data: bad id {id:?}")))?;
                Ok(SummaryJson { id, json })
            })
            .collect::<IndexResult<Vec<_>>>()?;
        crate::doc::most_recent_json_first(found).map_err(corrupt)
    }

    async fn summary(&self, id: CustomerId) -> IndexResult<Option<CustomerSummary>> {
        let (_, mut values) = self
            .read(|k, p| {
                p.cmd("HGET").arg(k.cust(id)).arg(SUMMARY_FIELD);
            })
            .await?;
        let json: Option<Vec<u8>> = from_owned_redis_value(next_value(&mut values.drain(..))?)?;
        json.map(|json| serde_json::from_slice(&json).map_err(corrupt))
            .transpose()
    }

    async fn rebuild(
        &self,
        docs: BoxStream<'_, IndexResult<IndexedCustomer>>,
    ) -> IndexResult<RebuildReport> {
        let started = std::time::Instant::now();
        let (current, building) = self.generations().await?;
        let generation = current.max(building.unwrap_or(0)) + 1;
        let mut pipe = ::redis::pipe();
        pipe.cmd("HSET")
            .arg(self.gen_key())
            .arg("building")
            .arg(generation)
            .ignore();
        self.query(&pipe).await?;
        if let Some(stale) = building {
            // A rebuild that died (or is being replaced) left this behind.
            tracing::warn!(generation = stale, "deleting an unfinished rebuild");
            self.delete_generation(stale).await?;
        }
        tracing::info!(generation, "rebuild started");

        // Batches are written by up to REBUILD_WRITERS tasks at once while
        // the next documents are read; token-level keys are written once per
        // token at the end instead of once per customer.
        let writer = Arc::new(self.sibling());
        let vocabulary = Arc::new(Mutex::new(HashSet::new()));
        let mut written = docs
            .chunks(REBUILD_BATCH)
            .map(|items| {
                let writer = writer.clone();
                let vocabulary = vocabulary.clone();
                async move {
                    let batch = items
                        .into_iter()
                        .collect::<IndexResult<Vec<_>>>()
                        .map_err(RebuildFailure::Source)?;
                    let task = tokio::spawn(writer.write_batch(generation, batch, vocabulary));
                    AbortOnDrop(task)
                        .await
                        .map_err(|e| RebuildFailure::Write(IndexError::Internal(e.to_string())))?
                        .map_err(RebuildFailure::Write)
                }
            })
            .buffer_unordered(REBUILD_WRITERS);
        let mut customers = 0u64;
        while let Some(batch) = written.next().await {
            match batch {
                Ok(n) => {
                    customers += n;
                    tracing::debug!(generation, customers, "rebuild progress");
                }
                Err(RebuildFailure::Source(e)) => {
                    drop(written);
                    self.abandon_rebuild(generation).await?;
                    return Err(IndexError::RebuildAbandoned(e.to_string()));
                }
                Err(RebuildFailure::Write(e)) => return Err(e),
            }
        }
        drop(written);
        let tokens: Vec<String> = vocabulary.lock().drain().collect();
        self.write_vocabulary(generation, &tokens).await?;

        let mut conn = self.conn.get();
        let replaced: Option<u64> = self
            .switch
            .key(self.gen_key())
            .arg(generation)
            .invoke_async(&mut conn)
            .await?;
        let Some(old) = replaced else {
            return Err(IndexError::RebuildAbandoned(
                "another rebuild started".into(),
            ));
        };
        self.generation.store(generation, Ordering::Relaxed);
        let live_after = started.elapsed();
        // Readers with the old generation cached notice the switch on their
        // next read, so the old keys can go at once. A generation that never
        // indexed anyone (before the first rebuild, on a new deployment) has
        // nothing to delete: that saves walking the whole keyspace.
        let deleted = if self.ever_indexed(old).await? {
            self.delete_generation(old).await?
        } else {
            0
        };
        tracing::info!(
            generation,
            customers,
            deleted_keys = deleted,
            "rebuild switched"
        );
        Ok(RebuildReport {
            generation,
            customers,
            live_after,
        })
    }

    /// Walks the live generation's `cust:<id>` keys with `SCAN` (the cursor
    /// is `<generation>:<SCAN cursor>`, so a walk stays in the generation it
    /// started in) and reads each one's fingerprint. A `cust:<id>` without
    /// one holds only the `live` mark of a removal: nobody to report.
    async fn fingerprints(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> IndexResult<FingerprintPage> {
        let (generation, scan) = match cursor {
            None => (self.generations().await?.0, 0u64),
            Some(c) => c
                .split_once(':')
                .and_then(|(g, s)| Some((g.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| IndexError::Internal(format!("not a fingerprint cursor: {c:?}")))?,
        };
        let keys = self.keys(generation);
        let prefix = keys.cust_prefix();
        let pattern = format!("{}*", glob_escape(&prefix));
        // `COUNT` bounds the buckets one `SCAN` looks at, not the matches: on
        // a Redis shared with other data most calls find nothing. Scan on
        // until the page has `limit` keys, the walk ends, or
        // `SCANS_PER_PAGE` calls were made.
        let mut found: Vec<String> = Vec::new();
        let mut next = scan;
        for _ in 0..SCANS_PER_PAGE {
            let mut pipe = ::redis::pipe();
            pipe.cmd("SCAN")
                .arg(next)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(limit.max(1));
            let mut replies = query_within(&self.conn, &pipe, READ_TIMEOUT).await?;
            let (after, keys): (u64, Vec<String>) =
                from_owned_redis_value(next_value(&mut replies.drain(..))?)?;
            found.extend(keys);
            next = after;
            if next == 0 || found.len() >= limit {
                break;
            }
        }
        let ids: Vec<CustomerId> = found
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.parse().ok())
            .collect();
        let mut items = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let mut pipe = ::redis::pipe();
            for id in &ids {
                pipe.cmd("HGET").arg(keys.cust(*id)).arg("fingerprint");
            }
            let prints = query_within(&self.conn, &pipe, READ_TIMEOUT).await?;
            for (id, v) in ids.into_iter().zip(prints) {
                if let Some(fingerprint) = from_owned_redis_value::<Option<String>>(v)? {
                    items.push(IndexedFingerprint { id, fingerprint });
                }
            }
        }
        Ok(FingerprintPage {
            items,
            next: (next != 0).then(|| format!("{generation}:{next}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::EngagementBrief;
    use crm_models::{Channel, EngagementId};

    #[test]
    fn members_round_trip() {
        let id = CustomerId::new();
        let m = member("ann", id);
        assert_eq!(split_member(m.as_bytes()), Some(("ann", id)));
        assert_eq!(split_member(b"no-separator"), None);
    }

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
    fn name_members_round_trip() {
        let id = CustomerId::new();
        let latin = IndexEntries {
            tokens: vec!["ann".into(), "tan".into()],
            words: vec!["ann".into(), "tan".into()],
            ..IndexEntries::default()
        };
        let m = name_member(id, &latin);
        assert_eq!(m, format!("{id}\0ann tan"));
        assert_eq!(
            parse_name_member(m.as_bytes()),
            Some((id, latin.tokens.clone(), latin.words.clone()))
        );
        let cjk = IndexEntries {
            tokens: vec!["陈大".into(), "陈".into(), "大".into()],
            words: vec!["陈大".into()],
            ..IndexEntries::default()
        };
        let m = name_member(id, &cjk);
        assert_eq!(
            parse_name_member(m.as_bytes()),
            Some((id, cjk.tokens.clone(), cjk.words.clone()))
        );
        assert_eq!(parse_name_member(b"not-an-id\0ann"), None);
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
    fn name_members_with_text_ids_match() {
        let id = CustomerId::new();
        let entries = IndexEntries {
            tokens: vec!["陈大".into(), "陈".into()],
            words: vec!["陈大".into()],
            ..IndexEntries::default()
        };
        assert_eq!(
            name_member_of(&id.to_string(), &entries),
            format!("{id}\0陈大 陈\0陈大")
        );
        assert_eq!(
            member("ann@example.com", id),
            format!("ann@example.com\0{id}")
        );
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("crm:t[1]*?\\"), "crm:t\\[1\\]\\*\\?\\\\");
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
