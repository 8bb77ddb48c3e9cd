//! Rebuilding the index into a new generation, switching to it, and
//! deleting or abandoning generations; the fingerprint walk of the live one.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::redis::from_owned_redis_value;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::Mutex;

use crm_models::CustomerId;

use super::keys::split_cust;
use super::writes::{Change, NewCustomers};
use super::{
    corrupt, next_value, query_within, RedisIndex, DELETE_BATCH, READ_TIMEOUT, REBUILD_WRITERS,
    SCANS_PER_PAGE, WRITE_TIMEOUT,
};
use crate::doc::IndexedCustomer;
use crate::{
    FingerprintPage, IndexError, IndexResult, IndexedFingerprint, RebuildReport, REBUILD_BATCH,
};

impl RedisIndex {
    pub(super) async fn rebuild_generation(
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
    /// started in; on a cluster `<generation>:<master>:<SCAN cursor>`, the
    /// masters walked one after another in slot order) and reads each one's
    /// fingerprint. A `cust:<id>` without one holds only the `live` mark of a
    /// removal: nobody to report.
    pub(super) async fn fingerprint_page(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> IndexResult<FingerprintPage> {
        let bad = |c: &str| IndexError::Internal(format!("not a fingerprint cursor: {c:?}"));
        let (generation, mut node, scan) = match cursor {
            None => (self.generations().await?.0, 0usize, 0u64),
            Some(c) => {
                let parts: Vec<&str> = c.split(':').collect();
                let number = |s: &str| s.parse::<u64>().map_err(|_| bad(&c));
                match parts[..] {
                    [g, s] => (number(g)?, 0, number(s)?),
                    [g, n, s] => (number(g)?, number(n)? as usize, number(s)?),
                    _ => return Err(bad(&c)),
                }
            }
        };
        let keys = self.keys(generation);
        let prefix = keys.cust_prefix();
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut link = self.conn.get();
        let nodes = link.nodes().await?;
        // `COUNT` bounds the buckets one `SCAN` looks at, not the matches: on
        // a Redis shared with other data most calls find nothing. Scan on
        // until the page has `limit` keys, the walk ends, or
        // `SCANS_PER_PAGE` calls were made.
        let mut found: Vec<Vec<u8>> = Vec::new();
        let mut next = scan;
        for _ in 0..SCANS_PER_PAGE {
            let Some(at) = nodes.get(node) else {
                next = 0;
                break;
            };
            let (after, keys) =
                tokio::time::timeout(READ_TIMEOUT, link.scan(at, next, &pattern, limit.max(1)))
                    .await
                    .map_err(|_| IndexError::Unavailable("Redis did not answer a SCAN".into()))??;
            found.extend(keys);
            next = after;
            if next == 0 {
                node += 1;
                if node >= nodes.len() {
                    break;
                }
            }
            if found.len() >= limit {
                break;
            }
        }
        let ids: Vec<CustomerId> = found
            .iter()
            .filter_map(|k| super::keys::id_from(k.strip_prefix(prefix.as_bytes())?))
            .collect();
        let mut items = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let mut pipe = ::redis::pipe();
            for id in &ids {
                pipe.cmd("GET").arg(keys.cust(*id));
            }
            let values = query_within(&self.conn, &pipe, READ_TIMEOUT).await?;
            for (id, v) in ids.into_iter().zip(values) {
                let value: Option<Vec<u8>> = from_owned_redis_value(v)?;
                if let Some(p) = value.as_deref().and_then(|v| split_cust(v).1) {
                    let summary = crate::packed::unpack(id, p).map_err(corrupt)?;
                    items.push(IndexedFingerprint {
                        id,
                        fingerprint: crate::doc::fingerprint_of(&summary),
                    });
                }
            }
        }
        let more = next != 0 || node < nodes.len();
        Ok(FingerprintPage {
            items,
            next: more.then(|| match nodes.len() {
                1 => format!("{generation}:{next}"),
                _ => format!("{generation}:{node}:{next}"),
            }),
        })
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
            pipe.cmd("GET").arg(keys.cust(doc.id()));
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
            let value: Option<Vec<u8>> = from_owned_redis_value(next_value(&mut replies)?)?;
            let (live, summary) = value.as_deref().map_or((false, None), split_cust);
            if live {
                continue;
            }
            match summary {
                None if doc.is_searchable() => {
                    let entries = doc.entries();
                    new.add(&keys, doc, &entries)?;
                    tokens.extend(entries.tokens);
                }
                // Not indexed, and not to be.
                None => {}
                Some(packed) => {
                    let old = crate::packed::unpack(doc.id(), packed)
                        .map_err(corrupt)?
                        .entries();
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
            keys.vocabulary_changed(&mut write);
            query_within(&self.conn, &write, WRITE_TIMEOUT).await?;
        }
        Ok(())
    }

    /// `(current, building)` from `crm:gen`.
    pub(super) async fn generations(&self) -> IndexResult<(u64, Option<u64>)> {
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

    /// Unlinks every key of a generation, a batch at a time, one key per
    /// command (so it works on Cluster). Returns how many went.
    async fn delete_generation(&self, generation: u64) -> IndexResult<u64> {
        let pattern = format!("{}g{generation}:*", glob_escape(&self.prefix));
        let mut conn = self.conn.get();
        let mut deleted = 0u64;
        for node in conn.nodes().await? {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys) = conn.scan(&node, cursor, &pattern, DELETE_BATCH).await?;
                if !keys.is_empty() {
                    let mut pipe = ::redis::pipe();
                    for k in &keys {
                        pipe.cmd("UNLINK").arg(k).ignore();
                    }
                    pipe.query_async::<()>(&mut conn).await?;
                    deleted += keys.len() as u64;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }

    /// Whether a live generation may hold customers' keys: `used` is set by
    /// every customer written into it (`ids` by older versions), and never
    /// unset. (Not for a generation a rebuild left half-written.)
    async fn ever_indexed(&self, generation: u64) -> IndexResult<bool> {
        let keys = self.keys(generation);
        // One key per command (the three may live on three cluster nodes).
        let mut pipe = ::redis::pipe();
        for key in [keys.used(), keys.ids(), keys.tk()] {
            pipe.cmd("EXISTS").arg(key);
        }
        let present: Vec<u64> = pipe.query_async(&mut self.conn.get()).await?;
        let present: u64 = present.iter().sum();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("crm:t[1]*?\\"), "crm:t\\[1\\]\\*\\?\\\\");
    }
}
