//! Writing customers into a generation: live upserts and removals, and the
//! per-key batches a rebuild writes for customers new to the generation.

use std::collections::HashMap;

use ::redis::{from_owned_redis_value, Pipeline, Value};

use crm_models::CustomerId;

use super::keys::{
    cust_value, id_bytes, member, member_of, name_member, name_member_of, recency_score,
    split_cust, whole_name, Keys,
};
use super::{corrupt, query_within, RedisIndex, WRITE_TIMEOUT};
use crate::doc::{IndexEntries, IndexedCustomer};
use crate::packed;
use crate::ranking::typo_keys;
use crate::IndexResult;

impl RedisIndex {
    /// Applies upserts and removals to the live generation and to the one
    /// being built, if any: reads what each customer is indexed under now,
    /// writes the difference, then drops typo-table entries of tokens nobody
    /// has any more. In the generation being built, every customer written
    /// (or removed) is marked live, so that the rebuild does not overwrite it
    /// with a document it read earlier.
    pub(super) async fn apply(
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
                pipe.cmd("GET").arg(keys.cust(change.id()));
            }
        }
        let previous = self.query(&pipe).await?;

        let mut write = ::redis::pipe();
        let mut orphan_candidates: Vec<(u64, String)> = Vec::new();
        let mut previous = previous.into_iter();
        for &(g, live) in &targets {
            let keys = self.keys(g);
            for change in changes {
                let old = match previous.next() {
                    Some(Value::Nil) | None => IndexEntries::default(),
                    Some(v) => indexed_under(change.id(), &from_owned_redis_value::<Vec<u8>>(v)?)?,
                };
                let gone = keys.write_change(&mut write, change, old, live, None)?;
                orphan_candidates.extend(gone.into_iter().map(|t| (g, t)));
            }
        }
        // The only replies: `ZADD tk`, 1 for a token new to the vocabulary.
        let added = query_within(&self.conn, &write, WRITE_TIMEOUT).await?;
        if added.iter().any(|v| matches!(v, Value::Int(n) if *n > 0)) {
            let mut changed = ::redis::pipe();
            for &(g, _) in &targets {
                self.keys(g).vocabulary_changed(&mut changed);
            }
            query_within(&self.conn, &changed, WRITE_TIMEOUT).await?;
        }
        self.drop_orphan_tokens(orphan_candidates).await
    }

    /// Vocabulary (`tk`) and typo-table entries point at tokens, not
    /// customers: a token's entries go when no customer has the token any
    /// more. (A customer getting the token between the check and the removal
    /// loses prefix and typo matching on it until its next upsert; exact
    /// matching by that token goes too, since the vocabulary is how a query
    /// token finds its posting list.)
    pub(super) async fn drop_orphan_tokens(&self, tokens: Vec<(u64, String)>) -> IndexResult<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (g, t) in &tokens {
            pipe.cmd("ZCARD").arg(self.keys(*g).nm(t));
        }
        let counts = self.query(&pipe).await?;
        let mut cleanup = ::redis::pipe();
        let mut changed: Vec<u64> = Vec::new();
        for ((g, t), count) in tokens.iter().zip(counts) {
            let count: u64 = from_owned_redis_value(count)?;
            if count == 0 {
                let keys = self.keys(*g);
                cleanup.cmd("ZREM").arg(keys.tk()).arg(t).ignore();
                for v in typo_keys(t) {
                    cleanup.cmd("SREM").arg(keys.ty(&v)).arg(t).ignore();
                }
                if !changed.contains(g) {
                    changed.push(*g);
                }
            }
        }
        for g in &changed {
            self.keys(*g).vocabulary_changed(&mut cleanup);
        }
        if !changed.is_empty() {
            query_within(&self.conn, &cleanup, WRITE_TIMEOUT).await?;
        }
        Ok(())
    }
}

/// One change to apply.
pub(super) enum Change<'a> {
    Upsert(&'a IndexedCustomer),
    /// A customer to drop, and identifiers it had besides what the index knows.
    Remove(CustomerId, IndexEntries),
}

impl Change<'_> {
    pub(super) fn id(&self) -> CustomerId {
        match self {
            Change::Upsert(doc) => doc.id(),
            Change::Remove(id, _) => *id,
        }
    }
}

impl Keys {
    /// Writes one change given what the customer is indexed under now
    /// (`old`): removes what it no longer has, writes the rest. `live` marks
    /// the customer in a generation being built (see [`LIVE`](super::keys::LIVE)). With
    /// `vocabulary`, the token-level keys are not written but the tokens are
    /// added to it (a rebuild writes them once at the end). Returns the tokens
    /// that may have lost their last customer.
    pub(super) fn write_change(
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
    pub(super) fn index(
        &self,
        p: &mut Pipeline,
        doc: &IndexedCustomer,
        entries: &IndexEntries,
        live: bool,
        vocabulary: bool,
    ) -> IndexResult<()> {
        let id = doc.id();
        let id_b = id_bytes(id);
        let summary = doc.summary();
        let packed = packed::pack(&summary);
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
            for set in self.name_sets(&entries.tokens) {
                p.cmd("ZADD").arg(set).arg(recency).arg(&entry).ignore();
            }
        }
        for e in &entries.emails {
            p.cmd("ZADD")
                .arg(self.ex())
                .arg(0)
                .arg(member(e, id))
                .ignore();
        }
        for ph in &entries.phones {
            for (key, member) in self.suffix_entries(&id_b, ph) {
                let recency = recency_score(summary.last_engagement_at.as_ref());
                p.cmd("ZADD").arg(key).arg(recency).arg(member).ignore();
            }
        }
        self.defer_summary(p);
        p.cmd("SET")
            .arg(self.cust(id))
            .arg(cust_value(Some(&packed), live))
            .ignore();
        p.cmd("SET").arg(self.used()).arg(1).ignore();
        Ok(())
    }

    /// The token-level entries of `t`: the vocabulary and the typo table.
    /// The `ZADD` to the vocabulary answers (1 when the token is new to it):
    /// the writer then marks the vocabulary changed.
    pub(super) fn add_token(&self, p: &mut Pipeline, t: &str) {
        p.cmd("ZADD").arg(self.tk()).arg(0).arg(t);
        for v in typo_keys(t) {
            p.cmd("SADD").arg(self.ty(&v)).arg(t).ignore();
        }
    }

    /// Removes the customer's name entries as written for `indexed` (what
    /// it was indexed under): its posting-list entry under each token and its
    /// whole-name entry.
    pub(super) fn unindex_name(&self, p: &mut Pipeline, id: CustomerId, indexed: &IndexEntries) {
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
        for set in self.name_sets(&indexed.tokens) {
            p.cmd("ZREM").arg(set).arg(&entry).ignore();
        }
    }

    /// Removes the customer from the identifier keys of `entries` (name
    /// entries go with `unindex_name`; typo-table and vocabulary entries are
    /// token-level, see `drop_orphan_tokens`).
    pub(super) fn unindex(&self, p: &mut Pipeline, id: CustomerId, entries: &IndexEntries) {
        let id_b = id_bytes(id);
        for e in &entries.emails {
            p.cmd("ZREM").arg(self.ex()).arg(member(e, id)).ignore();
        }
        for ph in &entries.phones {
            for (key, member) in self.suffix_entries(&id_b, ph) {
                p.cmd("ZREM").arg(key).arg(member).ignore();
            }
        }
    }

    /// Deletes the summary; `live` leaves the live mark behind instead (see
    /// [`LIVE`](super::keys::LIVE)).
    pub(super) fn remove_customer(&self, p: &mut Pipeline, id: CustomerId, live: bool) {
        let cust = self.cust(id);
        self.defer_summary(p);
        if live {
            p.cmd("SET").arg(&cust).arg(cust_value(None, true)).ignore();
        } else {
            p.cmd("DEL").arg(&cust).ignore();
        }
    }
}

/// What a `cust:<id>` value says the customer is indexed under: the
/// entries of its summary (none for the mark a removal leaves).
pub(super) fn indexed_under(id: CustomerId, value: &[u8]) -> IndexResult<IndexEntries> {
    match split_cust(value).1 {
        Some(p) => Ok(packed::unpack(id, p).map_err(corrupt)?.entries()),
        None => Ok(IndexEntries::default()),
    }
}

/// What a rebuild batch writes for customers the generation does not have
/// yet, gathered per key: one command per key and batch instead of one per
/// customer, with nothing to remove first (no `HDEL` of absent fields, no
/// old entries). Sorted-set members go in their sort order, so that
/// consecutive inserts walk mostly the same path of the set's skip list
/// (Redis spends most of a rebuild inserting into the big sets: `ex`, the
/// posting lists).
#[derive(Default)]
pub(super) struct NewCustomers {
    /// Sorted-set key → (score, member).
    sorted: HashMap<String, Vec<(f64, Vec<u8>)>>,
    /// Per customer: `cust:<id>` and its packed summary.
    customers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl NewCustomers {
    pub(super) fn add(
        &mut self,
        keys: &Keys,
        doc: &IndexedCustomer,
        entries: &IndexEntries,
    ) -> IndexResult<()> {
        let id = id_bytes(doc.id());
        let summary = doc.summary();
        let recency = recency_score(summary.last_engagement_at.as_ref());
        if !entries.tokens.is_empty() {
            let entry = name_member_of(&id, entries);
            for t in &entries.tokens {
                self.zadd(keys.nm(t), recency, entry.clone());
            }
            for set in keys.name_sets(&entries.tokens) {
                self.zadd(set, recency, entry.clone());
            }
            if let Some(whole) = whole_name(&entries.words) {
                self.zadd(keys.wn(&whole), recency, entry);
            }
        }
        for e in &entries.emails {
            self.zadd(keys.ex(), 0.0, member_of(e, &id));
        }
        for ph in &entries.phones {
            for (key, member) in keys.suffix_entries(&id, ph) {
                self.zadd(key, recency, member);
            }
        }
        self.customers
            .push((keys.cust(doc.id()), packed::pack(&summary)));
        Ok(())
    }

    fn zadd(&mut self, key: String, score: f64, member: Vec<u8>) {
        self.sorted.entry(key).or_default().push((score, member));
    }

    pub(super) fn write(self, keys: &Keys, p: &mut Pipeline) {
        if !self.customers.is_empty() {
            p.cmd("SET").arg(keys.used()).arg(1).ignore();
        }
        for (key, packed) in &self.customers {
            p.cmd("SET")
                .arg(key)
                .arg(cust_value(Some(packed), false))
                .ignore();
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
