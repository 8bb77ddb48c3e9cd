//! From the store to the index: builds each customer's [`IndexedCustomer`]
//! from the store and writes it, for events (the worker's [`EventHandler`]),
//! for a rebuild, and for verify.
//!
//! Events are only triggers: the document is always read fresh from the
//! store, so applying an event twice, late, or out of order converges on what
//! the store holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};

use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::linking::{similar_profiles, Suggestion, SuggestionReason};
use crm_models::store::{EngagementFilter, Store, StoreError};
use crm_models::{Customer, CustomerId, CustomerStatus, PhoneNumber};

use crate::memory::snapshot::{Snapshot, Source};
use crate::memory::{MemoryIndex, Prepared};
use crate::query::Query;
use crate::warmup::Warmup;
use crate::worker::{ApplyError, EventHandler};
use crate::{
    CustomerSummary, IndexError, IndexResult, IndexedCustomer, RebuildReport, SearchIndex,
    SUMMARY_ENGAGEMENTS,
};

/// Customers read from the store per page while rebuilding or verifying.
const PAGE: usize = 500;

/// Customers read from the store per page by [`Projector::documents`], each
/// with its latest engagements.
const LOAD_PAGE: usize = 4_096;

/// Pages [`Projector::documents`] reads ahead of its consumer.
const PAGES_AHEAD: usize = 2;

pub struct Projector {
    store: Arc<dyn Store>,
    index: Arc<dyn SearchIndex>,
    /// Whether the index has been loaded (ready unless a load began).
    warmup: Arc<Warmup>,
    /// The in-process index and the file of its snapshot, when it has one
    /// ([`Projector::with_snapshot`]).
    snapshot: Option<(Arc<MemoryIndex>, PathBuf)>,
}

/// What a load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub rebuild: RebuildReport,
    /// Customers taken from the snapshot as they were.
    pub from_snapshot: u64,
    /// Customers read from the store with their engagements (every one
    /// when there was no usable snapshot).
    pub from_store: u64,
}

impl LoadReport {
    /// Whether a new snapshot would spare the next start-up reads: more
    /// than a tenth of the customers came from the store.
    pub fn snapshot_is_stale(&self) -> bool {
        self.from_store > 0 && self.from_store * 10 > self.from_snapshot + self.from_store
    }
}

/// A load from a snapshot, before its generation goes live.
struct Reused {
    generation: u64,
    prepared: Vec<(CustomerId, Prepared)>,
    customers: u64,
    from_snapshot: u64,
    from_store: u64,
}

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Customers the index should have.
    pub expected: u64,
    /// In the store (and searchable), not in the index.
    pub missing: Vec<CustomerId>,
    /// Indexed with content that differs from the store.
    pub stale: Vec<CustomerId>,
    /// In the index, not (or no longer searchable) in the store.
    pub extra: Vec<CustomerId>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.stale.is_empty() && self.extra.is_empty()
    }
}

fn store_err(e: StoreError) -> IndexError {
    match e {
        StoreError::Unavailable(m) => IndexError::Unavailable(format!("store: {m}")),
        other => IndexError::Internal(format!("store: {other}")),
    }
}

fn apply_err(e: IndexError) -> ApplyError {
    match e {
        IndexError::Unavailable(m) => ApplyError::Unavailable(m),
        other => ApplyError::Rejected(other.to_string()),
    }
}

impl Projector {
    pub fn new(store: Arc<dyn Store>, index: Arc<dyn SearchIndex>) -> Self {
        Projector {
            store,
            index,
            warmup: Arc::new(Warmup::ready()),
            snapshot: None,
        }
    }

    /// Loads ([`Projector::load`]) take what they can from the snapshot of
    /// `index` (which must be this projector's index) at `path`, and
    /// [`Projector::write_snapshot`] writes it there.
    pub fn with_snapshot(mut self, index: Arc<MemoryIndex>, path: PathBuf) -> Self {
        self.snapshot = Some((index, path));
        self
    }

    /// Writes the index's snapshot, once the index is loaded (a snapshot of
    /// a half-loaded index would replace a better one); returns how many
    /// customers it holds, `None` when there is nothing to write.
    pub async fn write_snapshot(&self) -> IndexResult<Option<u64>> {
        let Some((index, path)) = self.snapshot.clone() else {
            return Ok(None);
        };
        if !self.warmup.is_ready() {
            return Ok(None);
        }
        let written = tokio::task::spawn_blocking(move || index.write_snapshot(&path))
            .await
            .map_err(|e| IndexError::Internal(format!("writing the snapshot: {e}")))?
            .map_err(|e| IndexError::Internal(e.to_string()))?;
        Ok(Some(written))
    }

    pub fn index(&self) -> &Arc<dyn SearchIndex> {
        &self.index
    }

    /// The index's load since start-up ([`Projector::load`]).
    pub fn warmup(&self) -> &Arc<Warmup> {
        &self.warmup
    }

    /// Whether the index holds every customer, so that its misses are real.
    pub fn index_ready(&self) -> bool {
        self.warmup.is_ready()
    }

    /// The customer as the index should hold it, or `None` when it is gone.
    pub async fn document(&self, id: CustomerId) -> IndexResult<Option<IndexedCustomer>> {
        let Some(customer) = self.store.get_customer(id).await.map_err(store_err)? else {
            return Ok(None);
        };
        self.indexed(customer).await.map(Some)
    }

    /// The customer's summary (the caller-ID view): from the index, else
    /// read from the store (an index that misses it, is loading or cannot
    /// be reached); `None` when the customer is gone or merged away.
    pub async fn summary(&self, id: CustomerId) -> IndexResult<Option<CustomerSummary>> {
        match self.index.summary(id).await {
            Ok(Some(summary)) => return Ok(Some(summary)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "index unavailable; reading the summary from the store")
            }
        }
        Ok(self
            .document(id)
            .await?
            .filter(|d| d.is_searchable())
            .map(|d| d.summary()))
    }

    /// A customer read from the store, with its latest engagements.
    async fn indexed(&self, customer: Customer) -> IndexResult<IndexedCustomer> {
        let last = self
            .store
            .list_engagements(
                customer.id,
                &EngagementFilter::default(),
                None,
                SUMMARY_ENGAGEMENTS,
            )
            .await
            .map_err(store_err)?;
        Ok(IndexedCustomer::new(customer, last))
    }

    /// Caller ID from the store: the summary of every customer whose
    /// profile lists this phone (merged ones excepted), most recently
    /// engaged first, as the index would answer
    /// ([`SearchIndex::lookup_phone`]).
    pub async fn lookup_phone(&self, phone: &PhoneNumber) -> IndexResult<Vec<CustomerSummary>> {
        let holders = self
            .store
            .customers_with_phone(phone)
            .await
            .map_err(store_err)?;
        let mut summaries = Vec::with_capacity(holders.len());
        for customer in holders {
            let doc = self.indexed(customer).await?;
            if doc.is_searchable() {
                summaries.push(doc.summary());
            }
        }
        Ok(crate::query::most_recent_first(summaries))
    }

    /// Brings one customer's index entries in line with the store.
    /// `identifiers` are keys it had, used when it is gone from the store.
    pub async fn refresh(&self, id: CustomerId, identifiers: &[String]) -> IndexResult<()> {
        match self.document(id).await? {
            Some(doc) => self.index.upsert(&doc).await,
            None => self.index.remove(id, identifiers).await,
        }
    }

    /// Every customer in the store, as documents, page by page (in id
    /// order): each page is one store read of the customers and their
    /// latest engagements. The next page is read while the caller consumes
    /// this one (a task reads ahead, [`PAGES_AHEAD`] pages at most).
    /// [`Projector::documents`], calling `progress` with the number read so
    /// far after every page.
    fn documents_counted<'a>(
        &self,
        progress: impl Fn(u64) + Send + Sync + 'a,
    ) -> impl futures::Stream<Item = IndexResult<IndexedCustomer>> + Send + 'a {
        let mut seen = 0u64;
        self.documents().inspect(move |_| {
            seen += 1;
            if seen.is_multiple_of(PAGE as u64) {
                progress(seen);
            }
        })
    }

    pub fn documents(&self) -> BoxStream<'static, IndexResult<IndexedCustomer>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<IndexResult<Vec<IndexedCustomer>>>(PAGES_AHEAD);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut after = None;
            loop {
                let page = store
                    .customers_with_latest_engagements(after, LOAD_PAGE, SUMMARY_ENGAGEMENTS)
                    .await
                    .map_err(store_err);
                let (docs, last) = match page {
                    Ok(page) => {
                        let last = page.len() < LOAD_PAGE;
                        after = page.last().map(|(c, _)| c.id);
                        let docs = page
                            .into_iter()
                            .map(|(customer, latest)| IndexedCustomer::new(customer, latest))
                            .collect();
                        (Ok(docs), last)
                    }
                    Err(e) => (Err(e), true),
                };
                // The reader went away: nothing more to read.
                if tx.send(docs).await.is_err() || last {
                    return;
                }
            }
        });
        stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|page| (page, rx))
        })
        .flat_map(|page| {
            stream::iter(match page {
                Ok(docs) => docs.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        })
        .boxed()
    }

    /// The hash of every customer record, as the snapshot checks it
    /// ([`crate::memory::snapshot::source_of`]), read a page at a time.
    async fn record_hashes(&self) -> IndexResult<Vec<(CustomerId, Source)>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .customer_record_hashes(after, LOAD_PAGE * 4)
                .await
                .map_err(store_err)?;
            let last = page.len() < LOAD_PAGE * 4;
            after = page.last().map(|(id, _)| *id);
            out.extend(page);
            self.warmup.progress(out.len() as u64);
            if last {
                return Ok(out);
            }
        }
    }

    /// Rebuilds the whole index from the store; `progress` is called with the
    /// number of customers read so far, every page.
    pub async fn rebuild(
        &self,
        progress: impl Fn(u64) + Send + Sync,
    ) -> IndexResult<RebuildReport> {
        let docs = self.documents_counted(progress).boxed();
        self.index.rebuild(docs).await
    }

    /// Fills an index that starts empty (the in-process one) from the store
    /// while the service already answers: [`Projector::warmup`] reports the
    /// progress and becomes ready when the index holds every customer.
    /// Events applied meanwhile go to the index as usual (a rebuild keeps
    /// what they wrote over the document it read: [`SearchIndex::rebuild`]),
    /// so none is lost. With a snapshot ([`Projector::with_snapshot`]) the
    /// load reads the customer records only, and the engagements of those
    /// whose record changed since the snapshot was written
    /// ([`crate::memory::snapshot`]). `hold` is awaited after the last
    /// customer is read and before the index switches to what was loaded
    /// (tests hold the load there; pass `std::future::ready(())` otherwise).
    pub async fn load(
        &self,
        hold: impl std::future::Future<Output = ()> + Send,
    ) -> IndexResult<LoadReport> {
        self.warmup.begin();
        let started = Instant::now();
        let report = match self.reuse().await? {
            Some((reused, index)) => {
                hold.await;
                let rebuild = index
                    .finish_build(
                        reused.generation,
                        reused.prepared,
                        reused.customers,
                        started,
                    )
                    .await?;
                LoadReport {
                    rebuild,
                    from_snapshot: reused.from_snapshot,
                    from_store: reused.from_store,
                }
            }
            None => {
                let warmup = self.warmup.clone();
                let docs = self
                    .documents_counted(move |seen| warmup.progress(seen))
                    .chain(stream::once(hold).filter_map(|()| std::future::ready(None)))
                    .boxed();
                let rebuild = self.index.rebuild(docs).await?;
                LoadReport {
                    rebuild,
                    from_snapshot: 0,
                    from_store: rebuild.customers,
                }
            }
        };
        // Duplicate checks of writes made meanwhile searched an incomplete
        // index: they run now.
        for id in self.warmup.finish(report.rebuild.customers) {
            if let Err(e) = self.suggest_duplicates(id).await {
                tracing::warn!(error = %e, customer = %id, "duplicate check failed");
            }
        }
        Ok(report)
    }

    /// Takes what it can from the snapshot: reads and checks the snapshot
    /// while the hash of every customer record is read (the embedded store
    /// hashes its records as stored, decoding none), takes the snapshot's
    /// entry of each customer whose record has not changed since, and reads
    /// the others as an event would. `None`
    /// (and nothing built) without a usable snapshot, or when so many
    /// customers changed that reading everything is faster.
    async fn reuse(&self) -> IndexResult<Option<(Reused, Arc<MemoryIndex>)>> {
        let Some((index, path)) = self.snapshot.clone() else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let generation = index.begin_build();
        let reused = self.reuse_into(generation, path).await;
        match reused {
            Ok(Some(reused)) => Ok(Some((reused, index))),
            other => {
                index.abandon(generation);
                other.map(|_| None)
            }
        }
    }

    async fn reuse_into(&self, generation: u64, path: PathBuf) -> IndexResult<Option<Reused>> {
        let read = tokio::task::spawn_blocking(move || Snapshot::read(&path));
        let records = self.record_hashes().await;
        let mut snapshot = match read.await {
            Ok(Ok(Some(snapshot))) => snapshot,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the search index snapshot is not used; loading from the store");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the search index snapshot failed");
                return Ok(None);
            }
        };
        let records = records?;
        let customers = records.len() as u64;
        // Beyond this many changed customers, a full read is faster.
        let most_changed = snapshot.len() / 5 + 10_000;
        let (mut prepared, changed) = tokio::task::spawn_blocking(move || {
            let mut prepared = Vec::with_capacity(snapshot.len());
            let mut changed = Vec::new();
            for (id, source) in records {
                match snapshot.take(id, &source) {
                    Some(p) => prepared.push((id, p)),
                    None => changed.push(id),
                }
            }
            (prepared, changed)
        })
        .await
        .map_err(|e| IndexError::Internal(format!("checking the snapshot: {e}")))?;
        let from_snapshot = prepared.len() as u64;
        // The others (merged customers too: the snapshot has none) are read
        // as an event would read them.
        let mut from_store = 0u64;
        for ids in changed.chunks(LOAD_PAGE) {
            let records = self.store.get_customers(ids).await.map_err(store_err)?;
            let unmerged: Vec<Customer> = records
                .into_iter()
                .filter(|c| c.status != CustomerStatus::Merged)
                .collect();
            from_store += unmerged.len() as u64;
            if from_store > most_changed as u64 {
                tracing::info!(
                    changed = changed.len(),
                    "the search index snapshot is too old to help; loading from the store"
                );
                return Ok(None);
            }
            let mut docs = stream::iter(unmerged).map(|c| self.indexed(c)).buffered(16);
            while let Some(doc) = docs.next().await {
                let doc = doc?;
                if let Some(p) = Prepared::of(&doc) {
                    prepared.push((doc.id(), p));
                }
            }
        }
        Ok(Some(Reused {
            generation,
            prepared,
            customers,
            from_snapshot,
            from_store,
        }))
    }

    /// Compares the index with the store.
    pub async fn verify(&self) -> IndexResult<VerifyReport> {
        let mut expected: BTreeMap<CustomerId, String> = BTreeMap::new();
        let mut docs = self.documents();
        while let Some(doc) = docs.next().await {
            let doc = doc?;
            if doc.is_searchable() {
                expected.insert(doc.id(), doc.fingerprint());
            }
        }
        let mut report = VerifyReport {
            expected: expected.len() as u64,
            ..Default::default()
        };
        for f in self.index.all_fingerprints().await? {
            match expected.remove(&f.id) {
                Some(fp) if fp == f.fingerprint => {}
                Some(_) => report.stale.push(f.id),
                None => report.extra.push(f.id),
            }
        }
        report.missing = expected.into_keys().collect();
        Ok(report)
    }
}

#[async_trait]
impl EventHandler for Projector {
    /// Refreshes each customer the events touch, once per batch.
    async fn apply(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        let mut order: Vec<CustomerId> = Vec::new();
        for envelope in events {
            for id in envelope.customer_ids() {
                if !order.contains(&id) {
                    order.push(id);
                }
            }
        }
        for id in &order {
            // A customer gone from the store is removed with the keys the
            // index holds for it.
            self.refresh(*id, &[]).await.map_err(apply_err)?;
        }
        // Look for likely duplicates of customers whose profile changed. A
        // failure here costs a suggestion, never the event.
        let mut suggestions: Vec<Suggestion> = Vec::new();
        for envelope in events {
            if let (
                DomainEvent::CustomerCreated {} | DomainEvent::CustomerUpdated { .. },
                Some(id),
            ) = (&envelope.event, envelope.customer_id)
            {
                // While the index loads its name search misses customers:
                // the check runs when the load is complete.
                if self.warmup.defer(id) {
                    continue;
                }
                match self.duplicate_suggestions(id).await {
                    Ok(found) => suggestions.extend(found),
                    Err(e) => {
                        tracing::warn!(error = %e, customer = %id, "duplicate check failed")
                    }
                }
            }
        }
        // One write for the batch's suggestions: a burst of new namesakes
        // (an import, say) must not hold the index back behind one store
        // transaction per pair.
        if let Err(e) = self.store.upsert_suggestions(&suggestions).await {
            tracing::warn!(error = %e, count = suggestions.len(), "keeping duplicate suggestions failed");
        }
        Ok(())
    }
}

/// Candidates read per duplicate check.
const DUPLICATE_CANDIDATES: usize = 20;

impl Projector {
    /// Finds customers with the same (or a one-typo) full name and a shared
    /// email domain or phone prefix, and keeps a suggestion for each pair
    /// (`GET /v1/duplicates`). Candidates come from the name index.
    pub async fn suggest_duplicates(&self, id: CustomerId) -> IndexResult<usize> {
        let suggestions = self.duplicate_suggestions(id).await?;
        self.store
            .upsert_suggestions(&suggestions)
            .await
            .map_err(store_err)?;
        Ok(suggestions.len())
    }

    /// The suggestions [`Projector::suggest_duplicates`] keeps for `id`.
    async fn duplicate_suggestions(&self, id: CustomerId) -> IndexResult<Vec<Suggestion>> {
        let Some(customer) = self.store.get_customer(id).await.map_err(store_err)? else {
            return Ok(Vec::new());
        };
        let Some(name) = customer.name.clone() else {
            return Ok(Vec::new());
        };
        if customer.status == CustomerStatus::Merged || crm_models::names::words(&name).len() < 2 {
            return Ok(Vec::new());
        }
        let hits = self
            .index
            .search(&Query::Name(name), DUPLICATE_CANDIDATES)
            .await?;
        let ids: Vec<CustomerId> = hits.iter().map(|h| h.id).filter(|h| *h != id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let others = self.store.get_customers(&ids).await.map_err(store_err)?;
        Ok(others
            .iter()
            .filter(|other| other.status != CustomerStatus::Merged)
            .filter_map(|other| {
                let (score, detail) = similar_profiles(&customer, other)?;
                Some(Suggestion::new(
                    customer.id,
                    other.id,
                    SuggestionReason::SimilarProfile,
                    detail,
                    score,
                ))
            })
            .collect())
    }
}
