//! The search index: name, email and phone lookups and the per-customer
//! caller-ID summary, derived from the store and rebuildable from it.
//!
//! It owns the Redis key schema, the ranking of search hits, rebuild and
//! verify. It does not read the store: whoever feeds it (the event worker, the
//! rebuild command) builds an [`IndexedCustomer`] from the store and hands it
//! over. It knows nothing of HTTP.
//!
//! # Layout
//! - [`SearchIndex`]: the trait; [`MemoryIndex`] (embedded, in-process) and
//!   [`RedisIndex`] implement it, and `tests/index_conformance.rs` runs one
//!   suite against both.
//! - [`doc`]: what gets indexed ([`IndexedCustomer`]) and the caller-ID
//!   summary it answers with ([`CustomerSummary`]).
//! - [`query`]: [`Query`], [`SearchHit`] and the ranking both adapters share.
//! - [`projector`], [`worker`], [`stream`]: from the store and the event
//!   stream to the index; [`cli`]: the `crm-indexer` binary's commands.
//! - [`caller_id`]: who has a number, from the index or else the store; the
//!   one path of every caller-ID route.
//! - [`startup`]: configuration, logging, shutdown and opening the store,
//!   stream and index, shared by `crm-indexer` and `crm-api`.
//!
//! # Redis keys
//! Every key starts with a configurable prefix (default `crm:`, as written
//! here; tests use one of their own). Index data lives under a generation `N`
//! so that a rebuild can write a complete new index beside the live one and
//! switch in one step:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `crm:gen` | HASH | `current`: the generation readers use (absent: 0); `building`: the one a rebuild is writing, if any |
//! | `crm:g<N>:cust:<id>` | STRING | a flags byte, then the caller-ID summary packed (`packed`: postcard, under a third of its JSON; the id is left out, the key names it); the flag `live` (1) marks a customer an upsert or removal wrote while a rebuild was building this generation (a removal leaves the flags byte alone), so that the rebuild does not overwrite it with a document it read earlier. What the customer is indexed under (for a re-upsert to remove what is gone) and its fingerprint are computed from the summary |
//! | `crm:g<N>:sx:<dddd>` | ZSET | the numbers ending with the four digits `dddd`, and `sx:<ddddd>` those ending with the five: member `<id><e164>` per customer and number, score the customer's last engagement as in `nm:`; a number's owners are the members of its five-digit bucket with that number (a caller-ID lookup is `ZRANGE` of the bucket, then `MGET` of the owners' `cust:` keys: two round trips, each shared by the lookups queued meanwhile; a number of fewer than five digits has a bucket of all of them); four trailing digits typed (`6418`) read the bucket of their last four, five or more (`81226418`) the bucket of their last five, most recent first, and keep the numbers ending with all of them; a number whose national number is the digits typed (trunk zeros dropped) is a national match; five to seven digits typed also read the buckets of those digits followed by each tail of one or two digits, for numbers with the digits inside them |
//! | `crm:g<N>:ex` | ZSET | `<email>\0<id>`, score 0: email search with `ZRANGEBYLEX` (an address's own members sort first in its prefix range, so the range gives exact matches too) |
//! | `crm:g<N>:nm:<token>` | ZSET | the customers with that name token: member `<id><tokens>[\0<words>]` (the customer's name tokens, space-separated, and its words when they differ), score the last engagement in µs since 1970 (never: -9e18); read most recent first |
//! | `crm:g<N>:tk` | ZSET | every name token, score 0: the vocabulary; a query token's prefix range (`ZRANGEBYLEX`) gives the posting lists it matches |
//! | `crm:g<N>:wn:<words>` | ZSET | the customers whose name is exactly these words in this order (space-separated), as in `nm:`: whole-name matches without scanning (a query looks up every arrangement of its words, the order typed ranking first) |
//! | `crm:g<N>:ns:<tokens>` | ZSET | the customers whose name has all of these two or three tokens (sorted, space-separated), as in `nm:`: a query of several words reads the customers having them together instead of checking every customer with its commonest word; names with more than five tokens go to `nl` instead |
//! | `crm:g<N>:nl` | ZSET | the customers whose name has more than five tokens (not counting CJK ones), as in `nm:`: read beside `ns:` lists |
//! | `crm:g<N>:ty:<variant>` | SET | name tokens (not ids) having that deletion variant, or being it (a three-letter token is its own only key, so that a four-letter query reaches it by a deletion): one-typo matching |
//! | `crm:g<N>:vv` | STRING | the vocabulary's version: a new random value after every change to `tk` or `ty:` (a token new to the vocabulary, or gone from it). A name search keeps the vocabulary it read for its query tokens with this version (for at most 5 s, so that a writer stopped between a change and `vv` delays readers no longer), and next time sends its second round's reads with its first and `GET vv`: the reads count when the version is the same, and it reads the vocabulary again when not (an index without `vv` is read every time) |
//! | `crm:g<N>:used` | STRING | set when a customer is written into the generation: replacing a generation without it deletes nothing (versions before kept every customer id in a `crm:g<N>:ids` ZSET, looked for too). Verify walks the `cust:` keys with `SCAN` |
//!
//! `<id>` in a key, member or field is the customer id's 16 bytes, not its
//! 36 characters.
//!
//! Every command touches one key (pipelined, never `SINTER`/`SUNION`
//! across keys; the two small Lua scripts touch only `crm:gen`), except the
//! caller-ID reads' `MGET` of a number's owners on one Redis. On a Redis
//! Cluster (`redis+cluster://`, see [`redis_link`]) pipelines are split by
//! node and caller-ID reads each summary with its own `GET`.
//!
//! `ph:<e164>` keys (a HASH of a number's owners) went: a caller-ID lookup
//! reads the number's five-digit `sx:` bucket instead, which an index
//! written before has too; the old keys stay until the next rebuild deletes
//! that generation. The packed summary's format changed with it (version 2:
//! no id, times as differences, a call's preview as its status and
//! duration); summaries of version 1 are still read. No rebuild is needed.
//!
//! The layout of `cust:`, `ph:`, `sx:` and the members changed, and `em:`
//! and `pn:` went, to halve the memory per customer: an index written
//! before needs `crm-indexer rebuild` (the fingerprint version changed with
//! it).
//!
//! `wn:` keys were the sorted words before the word order counted, and
//! three-letter tokens had no `ty:` key: an index written before needs
//! `crm-indexer rebuild` (the fingerprint version changed with it).
//!
//! The layout of `nm:`, `tk` and `wn:` changed from the first version (a SET
//! of ids per token and one `nx` ZSET of `<token>\0<id>`): an index written
//! before needs `crm-indexer rebuild` (verify reports every customer stale,
//! since the fingerprint version changed with it). So did `cust:<id>`, which
//! held one field per summary field before the summary became one JSON field.
//! The `sx:` buckets (trailing digits) came with that change too: an index
//! written before them finds no number by its last digits until it is
//! rebuilt.

pub mod caller_id;
pub mod cli;
pub mod doc;
pub mod generate;
pub mod live_tail;
pub mod memory;
mod number_search;
mod packed;
pub mod projector;
pub mod query;
pub mod ranking;
pub mod redis;
pub mod redis_link;
pub mod startup;
pub mod stream;
pub mod warmup;
pub mod worker;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crm_models::{CustomerId, PhoneError, PhoneNumber, Region};

pub use crate::doc::{CustomerSummary, EngagementBrief, IndexedCustomer, SummaryJson};
pub use crate::memory::MemoryIndex;
pub use crate::query::{MatchedOn, Query, SearchHit, SearchResults};
pub use crate::ranking::RankKey;
pub use crate::redis::RedisIndex;

/// Most engagements kept in a summary.
pub const SUMMARY_ENGAGEMENTS: usize = 10;

/// Largest `limit` a search answers.
pub const MAX_SEARCH_LIMIT: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The backend cannot be reached (connection refused, dropped, timed out).
    #[error("index unavailable: {0}")]
    Unavailable(String),
    /// A rebuild was given up: its source failed or was interrupted. The live
    /// index is unchanged.
    #[error("rebuild abandoned: {0}")]
    RebuildAbandoned(String),
    /// Anything else; the message is for logs.
    #[error("index error: {0}")]
    Internal(String),
}

pub type IndexResult<T> = Result<T, IndexError>;

/// What a finished rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// The generation now live.
    pub generation: u64,
    /// Customers written (merged ones are counted but not indexed).
    pub customers: u64,
    /// From the start until the new generation was live (answering every
    /// read); deleting the replaced one came after.
    pub live_after: std::time::Duration,
}

/// One indexed customer and the fingerprint of what is indexed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedFingerprint {
    pub id: CustomerId,
    /// Equal to [`IndexedCustomer::fingerprint`] of the document indexed.
    pub fingerprint: String,
}

/// A page of [`SearchIndex::fingerprints`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FingerprintPage {
    pub items: Vec<IndexedFingerprint>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<String>,
}

#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Succeeds when the index can serve requests (for `/readyz`).
    async fn ping(&self) -> IndexResult<()>;

    /// Indexes the customer as given, replacing whatever was indexed for it
    /// before (tokens, phones and emails it no longer has are removed).
    /// Idempotent. A customer with status `merged` is removed instead. While
    /// a rebuild runs, the new generation is written too.
    async fn upsert(&self, doc: &IndexedCustomer) -> IndexResult<()>;

    /// Removes everything indexed for the customer. `identifiers` are its
    /// identifier keys (`phone:+65...`, `email:...`), used as well as what the
    /// index remembers, in case the two disagree.
    async fn remove(&self, id: CustomerId, identifiers: &[String]) -> IndexResult<()>;

    /// A page of hits, best first: exact, then prefix, then one-typo
    /// matches, then partial names; ties by most recent engagement, then the
    /// newest customer. At most `limit` (1 to [`MAX_SEARCH_LIMIT`]) ranked
    /// after `after` (the previous page's `next`).
    async fn search_page(
        &self,
        query: &Query,
        limit: usize,
        after: Option<RankKey>,
    ) -> IndexResult<SearchResults>;

    /// The first page of [`search_page`](Self::search_page), its hits only.
    async fn search(&self, query: &Query, limit: usize) -> IndexResult<Vec<SearchHit>> {
        Ok(self.search_page(query, limit, None).await?.hits)
    }

    /// Caller ID: every customer with this number (several when it is
    /// shared), most recently engaged first.
    async fn lookup_phone(&self, phone: &PhoneNumber) -> IndexResult<Vec<CustomerSummary>>;

    /// [`lookup_phone`](Self::lookup_phone) without decoding: the summaries
    /// as JSON, in the same order. The caller-ID routes' hot path.
    async fn lookup_phone_json(&self, phone: &PhoneNumber) -> IndexResult<Vec<SummaryJson>> {
        self.lookup_phone(phone)
            .await?
            .iter()
            .map(|s| SummaryJson::of(s).map_err(|e| IndexError::Internal(e.to_string())))
            .collect()
    }

    /// The caller-ID summary of one customer.
    async fn summary(&self, id: CustomerId) -> IndexResult<Option<CustomerSummary>>;

    /// Builds a new generation from `docs` (every customer in the store) while
    /// the live one keeps answering, then switches to it and deletes the old
    /// one. Upserts that arrive meanwhile go to both. When `docs` yields an
    /// error, or the returned future is dropped, the live generation stays as
    /// it was (a dropped rebuild leaves its half-written generation behind
    /// until the next rebuild deletes it).
    async fn rebuild(
        &self,
        docs: BoxStream<'_, IndexResult<IndexedCustomer>>,
    ) -> IndexResult<RebuildReport>;

    /// Indexed customers with their fingerprints, to compare with
    /// [`IndexedCustomer::fingerprint`] of the store's documents (verify), a
    /// page at a time in an order of the adapter's choosing: start with
    /// `None`, then pass each page's `next` until it is `None`. A page holds
    /// about `limit` customers (it may be empty without being the last). A
    /// customer indexed for the whole walk comes at least once, maybe more
    /// than once (Redis's `SCAN` may repeat keys); one written or removed
    /// meanwhile may or may not come.
    async fn fingerprints(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> IndexResult<FingerprintPage>;

    /// Every indexed customer's fingerprint, once each, ordered by id.
    async fn all_fingerprints(&self) -> IndexResult<Vec<IndexedFingerprint>> {
        let mut all = std::collections::BTreeMap::new();
        let mut cursor = None;
        loop {
            let page = self.fingerprints(cursor, FINGERPRINT_PAGE).await?;
            for f in page.items {
                all.insert(f.id, f.fingerprint);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(all
            .into_iter()
            .map(|(id, fingerprint)| IndexedFingerprint { id, fingerprint })
            .collect())
    }
}

/// Customers per page when verify walks the index's fingerprints.
const FINGERPRINT_PAGE: usize = 1_000;

/// Caller ID for a number as typed: the number read (with `region` for one
/// without country code) and the index's answer for it
/// ([`SearchIndex::lookup_phone_json`]). A number written internationally
/// (`+65 8122 6418`, as phones report callers), or nationally without trunk
/// prefix (`8122 6418` with region SG), is looked up as written first
/// ([`PhoneNumber::international_form`], [`PhoneNumber::national_form`]),
/// and parsed only when nobody has it: only parsed numbers are indexed, so
/// a hit is a valid number and parsing it would give it back.
/// Fails only on a number that does not parse; an index error comes back as
/// the answer, for the caller to fall back on the store.
pub async fn lookup_typed_phone(
    index: &dyn SearchIndex,
    raw: &str,
    region: Option<Region>,
) -> Result<(PhoneNumber, IndexResult<Vec<SummaryJson>>), PhoneError> {
    let as_written = PhoneNumber::international_form(raw)
        .or_else(|| region.and_then(|r| PhoneNumber::national_form(raw, r)));
    let tried = match as_written {
        Some(key) => {
            let found = index.lookup_phone_json(&key).await;
            if found.as_ref().is_ok_and(|f| !f.is_empty()) {
                return Ok((key, found));
            }
            Some((key, found))
        }
        None => None,
    };
    let phone = PhoneNumber::parse(raw, region)?;
    match tried {
        // The same number, or an index that cannot answer: asking again
        // would give the same answer (or wait for the same timeout).
        Some((key, found)) if key == phone || found.is_err() => Ok((phone, found)),
        _ => {
            let found = index.lookup_phone_json(&phone).await;
            Ok((phone, found))
        }
    }
}

/// Documents written per batch while rebuilding.
pub(crate) const REBUILD_BATCH: usize = 2000;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn typed_numbers_find_their_owner_however_written() {
        let index = MemoryIndex::new();
        let mut doc = generate::customer(5, 0);
        doc.customer.phones = vec![
            PhoneNumber::parse("+6581226418", None).unwrap(),
            PhoneNumber::parse("+447911123456", None).unwrap(),
        ];
        index.upsert(&doc).await.unwrap();
        let sg = Region::parse("SG").ok();
        let gb = Region::parse("GB").ok();
        for (raw, region, e164) in [
            ("+65 8122 6418", None, "+6581226418"),
            ("0065 8122 6418", None, "+6581226418"),
            ("8122 6418", sg, "+6581226418"),
            ("(065) 8122-6418", sg, "+6581226418"),
            // Written internationally but with the trunk prefix: not a key
            // as written; parsing finds it.
            ("+44 07911 123456", None, "+447911123456"),
            // Nationally, with and without the trunk prefix.
            ("7911 123456", gb, "+447911123456"),
            ("07911 123-456", gb, "+447911123456"),
            // The country code without `+`: not a key as written.
            ("65 8122 6418", sg, "+6581226418"),
        ] {
            let (phone, found) = lookup_typed_phone(&index, raw, region).await.unwrap();
            assert_eq!(phone.as_str(), e164, "{raw}");
            let found = found.unwrap();
            assert_eq!(found.len(), 1, "{raw}");
            assert_eq!(found[0].id, doc.customer.id);
        }
        let (phone, found) = lookup_typed_phone(&index, "+65 9123 4567", None)
            .await
            .unwrap();
        assert_eq!((phone.as_str(), found.unwrap().len()), ("+6591234567", 0));
        let (phone, found) = lookup_typed_phone(&index, "9123 4567", sg).await.unwrap();
        assert_eq!((phone.as_str(), found.unwrap().len()), ("+6591234567", 0));
        assert_eq!(
            lookup_typed_phone(&index, "+65 0000", None)
                .await
                .unwrap_err(),
            PhoneError::Invalid
        );
        assert_eq!(
            lookup_typed_phone(&index, "8122 6418", None)
                .await
                .unwrap_err(),
            PhoneError::NoRegion
        );
    }
}
