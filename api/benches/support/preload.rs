//! The index the lookup and mobile benches read: generated customers
//! written straight into Redis, as `RedisIndex::rebuild` writes them.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use crm_indexer::generate;
use crm_indexer::{IndexResult, RedisIndex, SearchIndex};
use futures::StreamExt;

/// Writes `customers` customers of `generate::customers(seed, _)` into the
/// index under `prefix` at `url`, with a progress line on stderr every
/// tenth; returns how long it took.
pub async fn preload(url: &str, prefix: &str, customers: u64, seed: u64) -> Duration {
    let index = RedisIndex::connect(url, prefix).await.unwrap();
    let step = (customers / 10).max(1);
    let docs = futures::stream::iter(
        generate::customers(seed, customers as usize)
            .enumerate()
            .map(move |(i, doc)| {
                if (i as u64 + 1).checked_rem(step) == Some(0) {
                    eprintln!("pre-loading the index: {} customers", i + 1);
                }
                IndexResult::Ok(doc)
            }),
    )
    .boxed();
    let t = Instant::now();
    index.rebuild(docs).await.unwrap();
    t.elapsed()
}
