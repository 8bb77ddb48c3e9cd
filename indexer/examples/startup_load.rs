//! How long the embedded crm-api takes to load its memory index from the
//! store at start-up, per number of customers.
//!
//! ```text
//! cargo run --release -p crm-indexer --example startup_load -- --customers 1000000 --dir <dir>
//! ```
//!
//! Fills an embedded store in `--dir` with the deterministic generator's
//! customers and their engagements (once: a store that already holds
//! customers is reused), then times, on the same store:
//! - `store read`: every customer's index document read from the store
//!   ([`Projector::documents`]: a page of customers with their latest
//!   engagements per store read), nothing indexed;
//! - `rebuild`: [`Projector::rebuild`] into an empty memory index (what
//!   `crm-indexer rebuild` runs);
//! - `load`: [`Projector::load`] into an empty memory index, without a
//!   snapshot (the first start, or one after the snapshot was lost);
//! - `snapshot`: the same load with the snapshot written beside the store
//!   (written first from a loaded index when there is none), what crm-api
//!   runs at start-up after a restart;
//! - with `--only parts`: the two reads that load makes side by side, each
//!   alone (the snapshot file, and the store's record hashes).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: a panic says what failed

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crm_indexer::projector::Projector;
use crm_indexer::{generate, MemoryIndex, SearchIndex};
use crm_models::store::embedded::EmbeddedStore;
use crm_models::store::Store;
use crm_models::Identifier;
use futures::StreamExt;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEED: u64 = 17;
const FILL_BATCH: usize = 10_000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn fill(store: &dyn Store, n: usize) {
    let started = Instant::now();
    let mut created = 0usize;
    let mut engagements = 0usize;
    let mut docs = generate::customers(SEED, n).peekable();
    while docs.peek().is_some() {
        let batch: Vec<_> = docs.by_ref().take(FILL_BATCH).collect();
        let mut new = Vec::with_capacity(batch.len());
        for doc in &batch {
            let mut customer = doc.customer.clone();
            // The engagements' insert counts them again.
            customer.counts = Default::default();
            customer.last_engagement_at = None;
            let keys = customer
                .phones
                .iter()
                .map(|p| Identifier::Phone(p.clone()).key())
                .chain(
                    customer
                        .emails
                        .iter()
                        .map(|e| Identifier::Email(e.clone()).key()),
                )
                .collect();
            new.push((customer, keys));
        }
        let inserted = store.insert_customers_owning(&new).await.unwrap();
        let mut items = Vec::new();
        for (doc, ok) in batch.iter().zip(&inserted) {
            if *ok {
                created += 1;
                items.extend(doc.last_engagements.iter().cloned());
            }
        }
        engagements += items.len();
        for chunk in items.chunks(FILL_BATCH) {
            store.insert_engagements(chunk).await.unwrap();
        }
        if created % 100_000 < FILL_BATCH {
            eprintln!(
                "filled {created} customers, {engagements} engagements ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "store filled: {created} customers (of {n} generated; the rest share an identifier), {engagements} engagements in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--customers")
        .map(|v| v.parse().expect("--customers N"))
        .unwrap_or(100_000);
    let dir = arg("--dir").map(PathBuf::from).expect("--dir <directory>");
    let runs: usize = arg("--runs").map_or(1, |v| v.parse().expect("--runs N"));
    let only = arg("--only");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).expect("the store opens"));
    if store
        .list_customers(None, None, 1)
        .await
        .unwrap()
        .is_empty()
    {
        fill(store.as_ref(), n).await;
    }
    for run in 1..=runs {
        if only.as_deref().is_none_or(|o| o == "read") {
            let projector = Projector::new(store.clone(), Arc::new(MemoryIndex::new()));
            let started = Instant::now();
            let mut count = 0u64;
            let mut docs = projector.documents();
            while let Some(doc) = docs.next().await {
                doc.unwrap();
                count += 1;
            }
            println!(
                "run {run} store read: {count} customers in {:.2} s (RSS {:.0} MiB)",
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
        if only.as_deref().is_none_or(|o| o == "rebuild") {
            let index = Arc::new(MemoryIndex::new());
            let projector = Projector::new(store.clone(), index.clone());
            let started = Instant::now();
            let report = projector.rebuild(|_| {}).await.unwrap();
            println!(
                "run {run} rebuild: {} customers in {:.2} s (RSS {:.0} MiB)",
                report.customers,
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
            drop(projector);
            check(index.as_ref()).await;
        }
        if only.as_deref().is_none_or(|o| o == "load") {
            let index = Arc::new(MemoryIndex::new());
            let projector = Projector::new(store.clone(), index.clone());
            let started = Instant::now();
            let report = projector.load(std::future::ready(())).await.unwrap();
            println!(
                "run {run} load: {} customers in {:.2} s (RSS {:.0} MiB)",
                report.rebuild.customers,
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
            drop(projector);
            check(index.as_ref()).await;
        }
        if only.as_deref() == Some("parts") {
            // The two reads a load with the snapshot makes side by side,
            // each alone.
            let path = dir.join(crm_indexer::memory::snapshot::SNAPSHOT_FILE);
            let started = Instant::now();
            let snapshot = tokio::task::spawn_blocking(move || {
                crm_indexer::memory::snapshot::Snapshot::read(&path)
            })
            .await
            .unwrap()
            .unwrap()
            .expect("a snapshot (run --only snapshot first)");
            println!(
                "run {run} snapshot file read: {} customers in {:.2} s",
                snapshot.len(),
                started.elapsed().as_secs_f64()
            );
            drop(snapshot);
            let started = Instant::now();
            let (mut after, mut count) = (None, 0usize);
            loop {
                let page = store.customer_record_hashes(after, 16_384).await.unwrap();
                count += page.len();
                match page.last() {
                    Some((id, _)) if page.len() == 16_384 => after = Some(*id),
                    _ => break,
                }
            }
            println!(
                "run {run} record hashes: {count} customers in {:.2} s",
                started.elapsed().as_secs_f64()
            );
        }
        if only.as_deref().is_none_or(|o| o == "snapshot") {
            let path = dir.join(crm_indexer::memory::snapshot::SNAPSHOT_FILE);
            if !path.exists() {
                let index = Arc::new(MemoryIndex::new());
                Projector::new(store.clone(), index.clone())
                    .load(std::future::ready(()))
                    .await
                    .unwrap();
                let started = Instant::now();
                let written = index.write_snapshot(&path).unwrap();
                println!(
                    "snapshot written: {written} customers, {:.0} MiB in {:.2} s",
                    std::fs::metadata(&path).unwrap().len() as f64 / 1048576.0,
                    started.elapsed().as_secs_f64()
                );
            }
            let index = Arc::new(MemoryIndex::new());
            let projector =
                Projector::new(store.clone(), index.clone()).with_snapshot(index.clone(), path);
            let started = Instant::now();
            let report = projector.load(std::future::ready(())).await.unwrap();
            println!(
                "run {run} load with the snapshot: {} customers ({} from the snapshot, {} from the store) in {:.2} s (RSS {:.0} MiB)",
                report.rebuild.customers,
                report.from_snapshot,
                report.from_store,
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
            drop(projector);
            check(index.as_ref()).await;
        }
    }
}

/// The index answers: a name search finds customers.
async fn check(index: &dyn SearchIndex) {
    let hits = index
        .search(&crm_indexer::Query::Any("tan".into()), 5)
        .await
        .unwrap();
    assert!(!hits.is_empty(), "the loaded index finds nobody");
}
