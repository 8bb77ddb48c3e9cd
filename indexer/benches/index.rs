//! The Redis search index at scale: rebuild, caller-ID, type-ahead.
//!
//! `cargo bench -p crm-indexer --bench index [-- --customers 1000000 --seconds 10 --concurrency 32 --rebuild-only --cluster]`
//!
//! With `--cluster` the index is on a Redis Cluster of its own instead: three
//! masters with a replica each, on loopback (memory is the masters' sum, the
//! server CPU time all six servers').
//!
//! Starts its own `redis-server` on a free loopback port (no persistence),
//! rebuilds the index from `generate::customers(seed, N)`, then measures
//! caller-ID lookups and searches at `--concurrency` tasks sharing one
//! `RedisIndex` (one multiplexed connection, as in crm-api). The baseline,
//! measured in the same run, is a plain `PING` and `GET` through the same
//! redis client at the same concurrency: what one round trip costs here.
//! Client and server share the machine's cores; the rebuild line says how
//! much CPU time each of them spent on it. `--rebuild-only` stops after the
//! rebuild line and Redis's memory by kind of key (and prints Redis's
//! `INFO commandstats` to stderr).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

/// As the `crm-indexer` and `crm-api` programs run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/load.rs"]
mod load;
#[path = "../tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use load::{ms, run, stats, thousands, Stats};

use crm_indexer::generate::{self, SplitMix64};
use crm_indexer::{IndexResult, IndexedCustomer, Query, RedisIndex, SearchIndex};
use crm_models::names;
use crm_models::{CustomerId, PhoneNumber};
use futures::{FutureExt, StreamExt};
use redis::AsyncCommands;

/// The product's default prefix, as a deployment has it (key names count:
/// Redis rounds each up to its allocator's size classes).
const PREFIX: &str = crm_indexer::RedisIndex::DEFAULT_PREFIX;
/// Distinct customers the queries are drawn from.
const SAMPLE: u64 = 20_000;
/// Results asked for by a search, as a type-ahead list shows.
const LIMIT: usize = 10;

struct Args {
    customers: u64,
    seconds: f64,
    concurrency: usize,
    seed: u64,
    rebuild_only: bool,
    cluster: bool,
}

fn args() -> Args {
    let mut a = Args {
        customers: 100_000,
        seconds: 10.0,
        concurrency: 32,
        seed: 42,
        rebuild_only: false,
        cluster: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1);
        match (argv[i].as_str(), next) {
            ("--customers", Some(n)) => a.customers = n.replace('_', "").parse().unwrap(),
            ("--seconds", Some(n)) => a.seconds = n.parse().unwrap(),
            ("--concurrency", Some(n)) => a.concurrency = n.parse().unwrap(),
            ("--seed", Some(n)) => a.seed = n.parse().unwrap(),
            ("--rebuild-only", _) => a.rebuild_only = true,
            ("--cluster", _) => a.cluster = true,
            _ => {}
        }
        i += 1;
    }
    a
}

/// The servers holding the keys: the one Redis, or the cluster's masters.
type Servers = Vec<redis::aio::ConnectionManager>;

async fn connect_each(urls: &[String]) -> Servers {
    let mut out = Vec::new();
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        out.push(client.get_connection_manager().await.unwrap());
    }
    out
}

/// `used_memory`, summed over `servers`.
async fn used_memory(servers: &mut Servers) -> u64 {
    let mut sum = 0;
    for conn in servers.iter_mut() {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(conn)
            .await
            .unwrap();
        sum += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap();
    }
    sum
}

/// Redis memory by kind of key (`cust`, `ph`, `nm`, ...: what follows the
/// generation in the key), from `MEMORY USAGE` of every key (all elements
/// counted): lines of kind, keys, bytes per customer, share of the total.
async fn memory_by_kind(servers: &mut Servers, customers: u64) -> Vec<String> {
    let mut kinds: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for conn in servers.iter_mut() {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(2000)
                .query_async(conn)
                .await
                .unwrap();
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(conn).await.unwrap();
            for (key, size) in keys.iter().zip(sizes) {
                let rest = &key[PREFIX.len()..];
                // `g<N>:` first for index data.
                let rest = match rest.iter().position(|&b| b == b':') {
                    Some(i) if rest.first() == Some(&b'g') => &rest[i + 1..],
                    _ => rest,
                };
                let kind = rest.split(|&b| b == b':').next().unwrap_or(rest);
                let entry = kinds
                    .entry(String::from_utf8_lossy(kind).into_owned())
                    .or_default();
                entry.0 += 1;
                entry.1 += size.unwrap_or(0);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    let total: u64 = kinds.values().map(|(_, b)| b).sum();
    let mut rows: Vec<_> = kinds.into_iter().collect();
    rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    rows.into_iter()
        .map(|(kind, (keys, bytes))| {
            format!(
                "memory: {kind:<5} {:>10} keys {:>7.0} bytes per customer {:>5.1}%",
                thousands(keys as f64),
                bytes as f64 / customers as f64,
                100.0 * bytes as f64 / total.max(1) as f64
            )
        })
        .collect()
}

/// The process ids of the servers (`INFO server`).
async fn server_pids(servers: &mut Servers) -> Vec<String> {
    let mut pids = Vec::new();
    for conn in servers.iter_mut() {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(conn)
            .await
            .unwrap();
        pids.push(
            info.lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    pids
}

/// CPU time of every server process so far.
fn servers_cpu(pids: &[String]) -> f64 {
    pids.iter().map(|p| cpu_seconds(p)).sum()
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; zero where there is no such file.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// A query that should find `doc`, with one typo in its longest word of
/// five or more letters; `None` when the name has no such word.
fn with_typo(name: &str, rng: &mut SplitMix64) -> Option<String> {
    let words = names::words(name);
    let word = words
        .iter()
        .filter(|w| w.chars().count() >= 5 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .max_by_key(|w| w.len())?;
    let mut chars: Vec<char> = word.chars().collect();
    let at = 1 + rng.below(chars.len() as u64 - 2) as usize;
    match rng.below(3) {
        // substitution
        0 => chars[at] = if chars[at] == 'x' { 'q' } else { 'x' },
        // deletion
        1 => {
            chars.remove(at);
        }
        // transposition
        _ => chars.swap(at, at + 1),
    }
    let typo: String = chars.into_iter().collect();
    Some(
        words
            .iter()
            .map(|w| if w == word { typo.as_str() } else { w.as_str() })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// A 2-4 letter prefix of one of the name's words (1-2 characters of a Han name).
fn prefix_of(name: &str, rng: &mut SplitMix64) -> String {
    let mut words = names::words(name);
    // Not the `s` and `o` of `s/o`: nobody types one letter and waits.
    words.retain(|w| w.chars().count() >= 2 || !w.is_ascii());
    let word = rng.pick(&words);
    let chars: Vec<char> = word.chars().collect();
    let cjk = chars.iter().any(|c| !c.is_ascii());
    let want = if cjk && chars.iter().all(|c| *c > '\u{2e80}') {
        1 + rng.below(2) as usize
    } else {
        2 + rng.below(3) as usize
    };
    chars[..want.min(chars.len())].iter().collect()
}

#[tokio::main]
async fn main() {
    let args = args();
    let (url, _cluster) = if args.cluster {
        let cluster = redis_cluster::start_private();
        (cluster.url.clone(), Some(cluster))
    } else {
        (redis_server::start(), None)
    };
    // Memory and keys are the masters'; CPU time every server's.
    let (masters, all): (Vec<String>, Vec<String>) = if args.cluster {
        let node = |a: String| format!("redis://{a}");
        let masters: Vec<String> = redis_cluster::masters(&url).into_iter().map(node).collect();
        let mut all = masters.clone();
        all.extend(redis_cluster::replicas(&url).into_iter().map(node));
        (masters, all)
    } else {
        (vec![url.clone()], vec![url.clone()])
    };
    let mut servers = connect_each(&masters).await;
    let pids = server_pids(&mut connect_each(&all).await).await;
    let index = Arc::new(RedisIndex::connect(&url, PREFIX).await.unwrap());
    let mut conn = crm_indexer::redis_link::Target::parse(&url)
        .unwrap()
        .connect(crm_indexer::redis_link::LinkConfig::default())
        .await
        .unwrap();
    let before = used_memory(&mut servers).await;

    // The generator alone, to tell its share of the rebuild time.
    let gen_n = args.customers.min(100_000);
    let t = Instant::now();
    let mut sink = 0usize;
    for doc in generate::customers(args.seed, gen_n as usize) {
        sink += doc.last_engagements.len();
    }
    let gen_rate = gen_n as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "generator: {} customers/s ({sink} engagements in {gen_n} customers)",
        thousands(gen_rate)
    );

    // Rebuild from the generated stream.
    let done = Arc::new(AtomicU64::new(0));
    let progress = done.clone();
    let step = (args.customers / 10).max(1);
    let docs = futures::stream::iter(generate::customers(args.seed, args.customers as usize))
        .map(move |doc| {
            let n = progress.fetch_add(1, Ordering::Relaxed) + 1;
            if n.checked_rem(step) == Some(0) {
                eprintln!("rebuild: {n} customers");
            }
            IndexResult::Ok(doc)
        })
        .boxed();
    let (client_cpu, server_cpu) = (cpu_seconds("self"), servers_cpu(&pids));
    let t = Instant::now();
    let report = index.rebuild(docs).await.unwrap();
    let rebuild = t.elapsed();
    let client_cpu = cpu_seconds("self") - client_cpu;
    let server_cpu = servers_cpu(&pids) - server_cpu;
    assert_eq!(report.customers, args.customers);
    let after = used_memory(&mut servers).await;
    let mut keys = 0u64;
    for server in servers.iter_mut() {
        keys += redis::cmd("DBSIZE")
            .query_async::<u64>(server)
            .await
            .unwrap();
    }
    let per_customer = (after - before) as f64 / args.customers as f64;
    eprintln!("rebuild: {:.1} s", rebuild.as_secs_f64());
    let rebuild_line = format!(
        "rebuild: live after {:.1} s ({} customers/s), finished (old generation deleted) after {:.1} s \
         (generator alone: {} customers/s); \
         CPU time: bench {:.1} s, redis-server {:.1} s; \
         Redis used_memory {:.1} MiB -> {:.1} MiB, {:.0} bytes per customer, {} keys",
        report.live_after.as_secs_f64(),
        thousands(args.customers as f64 / report.live_after.as_secs_f64()),
        rebuild.as_secs_f64(),
        thousands(gen_rate),
        client_cpu,
        server_cpu,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_customer,
        thousands(keys as f64)
    );
    if args.rebuild_only {
        // Where Redis spent its time: calls and microseconds per command.
        for server in servers.iter_mut() {
            let stats: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(server)
                .await
                .unwrap();
            for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
                eprintln!("{line}");
            }
        }
        println!("{rebuild_line}");
        for line in memory_by_kind(&mut servers, args.customers).await {
            println!("{line}");
        }
        println!("{}", verify_walk(&index, args.customers).await);
        return;
    }

    println!("{}", verify_walk(&index, args.customers).await);

    // Queries from a sample of the customers.
    let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
    let sample: Vec<IndexedCustomer> = (0..SAMPLE.min(args.customers))
        .map(|_| generate::customer(args.seed, rng.below(args.customers)))
        .collect();
    let phones: Arc<Vec<PhoneNumber>> = Arc::new(
        sample
            .iter()
            .map(|d| rng.pick(&d.customer.phones).clone())
            .collect(),
    );
    let named: Vec<(CustomerId, String)> = sample
        .iter()
        .map(|d| (d.customer.id, d.customer.name.clone().unwrap()))
        .collect();
    let prefixes: Arc<Vec<String>> =
        Arc::new(named.iter().map(|(_, n)| prefix_of(n, &mut rng)).collect());
    let full: Arc<Vec<(CustomerId, String)>> = Arc::new(named.clone());
    let typos: Arc<Vec<(CustomerId, String)>> = Arc::new(
        named
            .iter()
            .filter_map(|(id, n)| with_typo(n, &mut rng).map(|q| (*id, q)))
            .collect(),
    );

    let c = args.concurrency;
    let secs = args.seconds;

    conn.set::<_, _, ()>(format!("{PREFIX}baseline"), "x".repeat(200))
        .await
        .unwrap();
    let ping = {
        let conn = conn.clone();
        run(
            c,
            secs,
            Arc::new(move |_| {
                let mut conn = conn.clone();
                async move {
                    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                    pong == "PONG"
                }
                .boxed()
            }),
        )
        .await
    };
    let get = {
        let conn = conn.clone();
        run(
            c,
            secs,
            Arc::new(move |_| {
                let mut conn = conn.clone();
                async move {
                    let v: Option<String> = redis::cmd("GET")
                        .arg(format!("{PREFIX}baseline"))
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    v.is_some()
                }
                .boxed()
            }),
        )
        .await
    };
    let lookup = {
        let index = index.clone();
        run(
            c,
            secs,
            Arc::new(move |i| {
                let (index, phones) = (index.clone(), phones.clone());
                async move {
                    let p = &phones[i as usize % phones.len()];
                    !index.lookup_phone(p).await.unwrap().is_empty()
                }
                .boxed()
            }),
        )
        .await
    };
    let search_secs = (secs / 2.0).max(1.0);
    let prefix = {
        let index = index.clone();
        let prefixes = prefixes.clone();
        run(
            c,
            search_secs,
            Arc::new(move |i| {
                let (index, prefixes) = (index.clone(), prefixes.clone());
                async move {
                    let q = Query::Any(prefixes[i as usize % prefixes.len()].clone());
                    !index.search(&q, LIMIT).await.unwrap().is_empty()
                }
                .boxed()
            }),
        )
        .await
    };
    let prefix_1 = {
        let index = index.clone();
        let prefixes = prefixes.clone();
        run(
            1,
            search_secs,
            Arc::new(move |i| {
                let (index, prefixes) = (index.clone(), prefixes.clone());
                async move {
                    let q = Query::Any(prefixes[i as usize % prefixes.len()].clone());
                    !index.search(&q, LIMIT).await.unwrap().is_empty()
                }
                .boxed()
            }),
        )
        .await
    };
    // Search quality, one query at a time (not timed): is the customer
    // whose name (or name with a typo) was typed in the top 10? And if not,
    // are the top 10 all namesakes (customers with the same words in their
    // name, which rank the same and go by recency)?
    let names_by_id: std::collections::HashMap<CustomerId, String> =
        named.iter().cloned().collect();
    let full_recall = recall(&index, &full, &names_by_id).await;
    let typo_recall = recall(&index, &typos, &names_by_id).await;

    let full_name = search_run(index.clone(), c, search_secs, full.clone()).await;
    let full_name_1 = search_run(index.clone(), 1, search_secs, full).await;
    let typo = search_run(index.clone(), c, search_secs, typos.clone()).await;
    let typo_1 = search_run(index.clone(), 1, search_secs, typos).await;

    // Event-to-searchable at the index level: upsert a new customer, then
    // look its number up (one client, while nothing else runs).
    let mut fresh = Vec::new();
    let mut fresh_ok = 0;
    let start = Instant::now();
    for k in 0..500u64 {
        let doc = generate::customer(args.seed, args.customers + k);
        let t = Instant::now();
        index.upsert(&doc).await.unwrap();
        let found = index.lookup_phone(&doc.customer.phones[0]).await.unwrap();
        fresh.push(t.elapsed());
        fresh_ok += usize::from(found.iter().any(|s| s.id == doc.customer.id));
    }
    let fresh = stats(fresh, fresh_ok, start.elapsed());

    println!(
        "search index on {}: {} customers (seed {}), {c} concurrent tasks on one connection, {secs} s per row ({search_secs} s for searches)",
        if args.cluster {
            "a Redis Cluster (3 masters, 3 replicas)"
        } else {
            "Redis"
        },
        thousands(args.customers as f64),
        args.seed
    );
    println!();
    println!("machine: {}", redis_server::machine());
    println!("{}", redis_server::version());
    println!();
    println!("{rebuild_line}");
    println!();
    println!("| operation | clients | ops | ops/s | p50 | p99 | check |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let one = 1;
    for (name, clients, s, check) in [
        ("baseline: redis `PING`", &c, &ping, "PONG"),
        ("baseline: redis `GET` (200 B value)", &c, &get, "value"),
        ("caller ID: `lookup_phone`", &c, &lookup, "found"),
        (
            "type-ahead: `search(Any(2-4 letter prefix))`",
            &c,
            &prefix,
            "any hit",
        ),
        (
            "type-ahead: `search(Any(2-4 letter prefix))`",
            &one,
            &prefix_1,
            "any hit",
        ),
        ("search: full name", &c, &full_name, "customer in top 10"),
        (
            "search: full name",
            &one,
            &full_name_1,
            "customer in top 10",
        ),
        (
            "search: full name with one typo",
            &c,
            &typo,
            "customer in top 10",
        ),
        (
            "search: full name with one typo",
            &one,
            &typo_1,
            "customer in top 10",
        ),
        (
            "freshness: `upsert` then `lookup_phone`",
            &one,
            &fresh,
            "found",
        ),
    ] {
        println!(
            "| {name} | {clients} | {} | {} | {} | {} | {check} {:.1}% |",
            thousands(s.ops as f64),
            thousands(s.per_second),
            ms(s.p50),
            ms(s.p99),
            s.ok * 100.0
        );
    }
    println!();
    println!(
        "caller ID / GET throughput: {:.2}",
        lookup.per_second / get.per_second
    );
    println!();
    println!("| search quality (top 10, one query at a time) | queries | customer in top 10 | customer or 10 namesakes in top 10 |");
    println!("| --- | --- | --- | --- |");
    for (name, r) in [
        ("full name", &full_recall),
        ("full name with one typo", &typo_recall),
    ] {
        println!(
            "| {name} | {} | {:.1}% | {:.1}% |",
            thousands(r.0 as f64),
            r.1 * 100.0,
            r.2 * 100.0
        );
    }
}

/// `(queries, share with the customer in the top 10, share with the
/// customer or ten namesakes in the top 10)` over the first
/// `RECALL_QUERIES` queries.
async fn recall(
    index: &RedisIndex,
    queries: &[(CustomerId, String)],
    names: &std::collections::HashMap<CustomerId, String>,
) -> (usize, f64, f64) {
    const RECALL_QUERIES: usize = 2_000;
    let word_set = |name: &str| {
        names::words(name)
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (mut found, mut namesakes, mut n) = (0usize, 0usize, 0usize);
    for (id, q) in queries.iter().take(RECALL_QUERIES) {
        let hits = index.search(&Query::Any(q.clone()), LIMIT).await.unwrap();
        let own = word_set(&names[id]);
        let hit = hits.iter().any(|h| h.id == *id);
        let all_namesakes = hits.len() == LIMIT
            && hits
                .iter()
                .all(|h| h.name.as_deref().map(word_set).as_ref() == Some(&own));
        found += usize::from(hit);
        namesakes += usize::from(hit || all_namesakes);
        n += 1;
    }
    let share = |k: usize| k as f64 / n.max(1) as f64;
    (n, share(found), share(namesakes))
}

async fn search_run(
    index: Arc<RedisIndex>,
    concurrency: usize,
    seconds: f64,
    queries: Arc<Vec<(CustomerId, String)>>,
) -> Stats {
    run(
        concurrency,
        seconds,
        Arc::new(move |i| {
            let (index, queries) = (index.clone(), queries.clone());
            async move {
                let (id, q) = &queries[i as usize % queries.len()];
                let hits = index.search(&Query::Any(q.clone()), LIMIT).await.unwrap();
                hits.iter().any(|h| h.id == *id)
            }
            .boxed()
        }),
    )
    .await
}

/// How long `crm-indexer verify` takes to read the index's side: every
/// fingerprint (a `SCAN` of the keyspace and an `HGET` per customer).
async fn verify_walk(index: &RedisIndex, customers: u64) -> String {
    let t = Instant::now();
    let prints = index.all_fingerprints().await.unwrap();
    assert_eq!(prints.len() as u64, customers, "every customer once");
    format!(
        "verify walk: {} fingerprints read in {:.1} s",
        thousands(prints.len() as f64),
        t.elapsed().as_secs_f64()
    )
}
