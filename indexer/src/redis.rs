//! The production index on Redis. The key schema is in the crate docs.
//!
//! - **Round trips.** Every read is one pipeline that also asks for the live
//!   generation (`HGET crm:gen current`) beside the data commands, which use the
//!   generation cached from the previous call. When the two agree (always,
//!   except right after a rebuild switched), the answer is complete. When
//!   they differ, the cache is updated and the pipeline sent again. A
//!   caller-ID lookup is two such reads: the number's owners, then their
//!   summaries (kept once, under the customer).
//! - **Hot paths stay cheap.** No command takes several posting lists
//!   (`SINTER` blocks Redis for milliseconds on big sets). A name search is
//!   [`ranking::search_names`](crate::ranking::search_names) over this
//!   index's lists: the vocabulary (`tk` prefix range, typo table `ty:`),
//!   the whole-name lists `wn:` and the posting lists `nm:<token>`, read in
//!   ranking order (most recent first) a chunk at a time, a round trip a
//!   round: about three for a type-ahead query, two when the vocabulary of
//!   its tokens is kept from an earlier search (checked against `vv` in the
//!   first round). Only the hits it answers with have their summary read.
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
//!   the rebuild's copy (see `keys::LIVE`).
//! - The connection is a `ConnectionManager` (see `connection`): it
//!   reconnects by itself; a command sent while Redis is down fails with
//!   [`IndexError::Unavailable`]. On one Redis, caller-ID reads have a
//!   connection of their own (see `phone_reads`), and so do searches, each
//!   taking one for all its rounds (see `search_links`). On a Redis Cluster
//!   (see [`crate::redis_link`]) both use the shared connection, whose
//!   pipelines go to each master at once.
//!
//! Modules: `keys` (key names, member encodings and scores), `writes`
//! (upserts and removals, and what a rebuild batch writes for customers new
//! to the generation), `rebuild` (generations, rebuild, delete, abandon,
//! fingerprints), `search` (names and emails, and the briefs a hit shows),
//! `numbers` (phone numbers, whole, national or by their last digits);
//! `connection`, `phone_reads`, `search_links` and `resp` carry the
//! commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::{from_owned_redis_value, Pipeline, RedisError, Script, Value};
use async_trait::async_trait;
use futures::stream::BoxStream;

use crm_models::{CustomerId, PhoneNumber};

use crate::doc::{CustomerSummary, IndexEntries, IndexedCustomer, SummaryJson};
use crate::query::{self, Plan, Query, SearchResults};
use crate::ranking::RankKey;
use crate::{
    FingerprintPage, IndexError, IndexResult, RebuildReport, SearchIndex, MAX_SEARCH_LIMIT,
};

/// Most members read from one email prefix range. A prefix matching more
/// (`a`) answers from the first ones in address order.
pub const CANDIDATES: usize = 500;

/// Most `SCAN` calls one page of [`SearchIndex::fingerprints`] makes.
const SCANS_PER_PAGE: usize = 256;

/// Batches a rebuild writes at the same time, each on its own task: the
/// documents are produced (read from the store) while earlier batches are
/// encoded and written.
const REBUILD_WRITERS: usize = 4;

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
mod keys;
mod numbers;
mod phone_reads;
mod rebuild;
mod resp;
mod search;
mod search_links;
mod writes;

use connection::Connection;
use keys::{gen_key, split_cust, Keys};
use writes::Change;

pub struct RedisIndex {
    conn: Arc<Connection>,
    prefix: String,
    /// The live generation as last seen; checked on every read.
    generation: Arc<AtomicU64>,
    switch: Script,
    abandon: Script,
    /// Caller-ID lookups, pipelined together (one Redis; on a cluster each
    /// lookup is two reads on the shared connection).
    phone_reads: Option<phone_reads::PhoneReads>,
    /// Connections name searches take, one search at a time each (one
    /// Redis; on a cluster searches use the shared connection).
    search_links: Option<search_links::SearchLinks>,
    /// Query tokens' vocabulary, as searches last read it.
    known_vocabulary: search::KnownVocabulary,
}

impl RedisIndex {
    /// The summaries of the customers with the number `phone` (any order).
    async fn owners_of(&self, phone: &PhoneNumber) -> IndexResult<Vec<CustomerSummary>> {
        let owners = match &self.phone_reads {
            Some(reads) => reads.owners(phone.as_str()).await?,
            None => self.owners_read(phone.as_str()).await?,
        };
        let mut found = Vec::new();
        for (id, value) in owners {
            let Some(id) = keys::id_from(&id) else {
                return Err(IndexError::Internal("index data: a malformed id".into()));
            };
            // A customer removed since its number was read has no summary,
            // and one whose number changed meanwhile no longer has it.
            if let Some(packed) = split_cust(&value).1 {
                let summary = crate::packed::unpack(id, packed).map_err(corrupt)?;
                if summary.phones.contains(phone) {
                    found.push(summary);
                }
            }
        }
        Ok(found)
    }

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
            phone_reads: conn.info().map(|info| {
                phone_reads::PhoneReads::new(phone_reads::Target {
                    info: info.clone(),
                    prefix: prefix.to_string(),
                    generation: generation.clone(),
                })
            }),
            search_links: conn
                .info()
                .map(|info| search_links::SearchLinks::new(info.clone())),
            conn,
            prefix: prefix.to_string(),
            generation,
            switch: Script::new(SWITCH),
            abandon: Script::new(ABANDON),
            known_vocabulary: search::KnownVocabulary::default(),
        }
    }

    fn gen_key(&self) -> String {
        gen_key(&self.prefix)
    }

    fn keys(&self, generation: u64) -> Keys {
        Keys::of(&self.prefix, generation).on_cluster(self.conn.is_cluster())
    }

    /// Caller-ID on a cluster: the number's owners, then their summaries,
    /// each read against the live generation; a rebuild switching between
    /// the two starts it over.
    async fn owners_read(&self, e164: &str) -> IndexResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(bucket) = numbers::owners_bucket(e164) else {
            return Ok(Vec::new());
        };
        for _ in 0..3 {
            let (keys, mut values) = self
                .read(|k, p| {
                    p.cmd("ZRANGE").arg(k.sx(bucket)).arg(0).arg(-1);
                })
                .await?;
            let members: Vec<Vec<u8>> = from_owned_redis_value(next_value(&mut values.drain(..))?)?;
            let ids = numbers::owners_among(members.iter().map(Vec::as_slice), e164);
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let (again, values) = self
                .read(|k, p| {
                    for id in &ids {
                        p.cmd("GET").arg(k.cust_bytes(id));
                    }
                })
                .await?;
            if again.base != keys.base {
                continue;
            }
            let mut found = Vec::with_capacity(ids.len());
            for (id, v) in ids.into_iter().zip(values) {
                if let Some(v) = from_owned_redis_value::<Option<Vec<u8>>>(v)? {
                    found.push((id, v));
                }
            }
            return Ok(found);
        }
        Err(IndexError::Internal(
            "the index generation changed three times during one lookup".into(),
        ))
    }

    async fn query(&self, pipe: &Pipeline) -> IndexResult<Vec<Value>> {
        query_within(&self.conn, pipe, WRITE_TIMEOUT).await
    }

    /// A read a caller waits for (a search round after the first, the
    /// hits' briefs): unreachable after [`READ_TIMEOUT`], as the first
    /// round is, not after a write's limit.
    async fn read_query(&self, pipe: &Pipeline) -> IndexResult<Vec<Value>> {
        query_within(&self.conn, pipe, READ_TIMEOUT).await
    }

    /// Runs the commands `build` adds against the live generation, in one
    /// round trip unless a rebuild switched since the last call.
    async fn read(&self, build: impl Fn(&Keys, &mut Pipeline)) -> IndexResult<(Keys, Vec<Value>)> {
        read_live(&self.conn, &self.prefix, &self.generation, build).await
    }

    /// Pipelines (round trips) sent so far on the index's shared
    /// connection and the name searches' own (every read and write but
    /// caller-ID lookups), for benchmarks.
    pub fn round_trips(&self) -> u64 {
        self.conn.sent() + self.search_links.as_ref().map_or(0, |l| l.sent())
    }

    /// Another handle on the same connection and keys, for writer tasks.
    fn sibling(&self) -> RedisIndex {
        RedisIndex::with_connection(self.conn.clone(), &self.prefix)
    }
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

fn corrupt(e: impl std::fmt::Display) -> IndexError {
    IndexError::Internal(format!("index data does not decode: {e}"))
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

    async fn search_page(
        &self,
        query: &Query,
        limit: usize,
        after: Option<RankKey>,
    ) -> IndexResult<SearchResults> {
        let limit = limit.clamp(1, MAX_SEARCH_LIMIT);
        let hits = match Plan::of(query) {
            Plan::Nothing => Vec::new(),
            Plan::Name(tokens) => {
                let words = query::query_words(query);
                return self.search_names(&tokens, &words, limit, after).await;
            }
            Plan::Email { text, exact } => self.search_emails(&text, exact).await?,
            Plan::Phone {
                e164,
                national,
                suffix,
            } => {
                return self
                    .search_numbers(&e164, national.as_deref(), suffix.as_deref(), limit, after)
                    .await;
            }
        };
        Ok(SearchResults::page_of(hits, limit, after))
    }

    async fn lookup_phone(&self, phone: &PhoneNumber) -> IndexResult<Vec<CustomerSummary>> {
        Ok(query::most_recent_first(self.owners_of(phone).await?))
    }

    async fn lookup_phone_json(&self, phone: &PhoneNumber) -> IndexResult<Vec<SummaryJson>> {
        query::most_recent_first(self.owners_of(phone).await?)
            .iter()
            .map(|s| SummaryJson::of(s).map_err(corrupt))
            .collect()
    }

    async fn summary(&self, id: CustomerId) -> IndexResult<Option<CustomerSummary>> {
        let (_, mut values) = self
            .read(|k, p| {
                p.cmd("GET").arg(k.cust(id));
            })
            .await?;
        let value: Option<Vec<u8>> = from_owned_redis_value(next_value(&mut values.drain(..))?)?;
        value
            .as_deref()
            .and_then(|v| split_cust(v).1)
            .map(|p| crate::packed::unpack(id, p).map_err(corrupt))
            .transpose()
    }

    async fn rebuild(
        &self,
        docs: BoxStream<'_, IndexResult<IndexedCustomer>>,
    ) -> IndexResult<RebuildReport> {
        self.rebuild_generation(docs).await
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
        self.fingerprint_page(cursor, limit).await
    }
}
