//! Search speed: the embedded (memory) index, the Redis index and a
//! Twenty-style PostgreSQL peer, on the same customers, in one run.
//!
//! `cargo bench -p crm-indexer --bench search [-- --customers 1000000 --names narrow --seconds 5 --seed 42 --pg-recency-index]`
//!
//! Generates `--customers` customers (`generate::customers_with`, with their
//! last engagements; `--names narrow` for the low-variety Singapore pool,
//! `wide` by default) and loads them, one backend at a time, into
//! - a `MemoryIndex` (`SearchIndex::rebuild`), as embedded crm-api runs;
//! - a `RedisIndex` on a `redis-server` the bench starts (free loopback
//!   port, no persistence), one multiplexed connection as in crm-api;
//! - a PostgreSQL the bench starts when `initdb`, `pg_ctl` and `postgres`
//!   are installed (temporary data directory, loopback, `fsync` off; stopped
//!   and deleted at the end): a Twenty-style `person` table with a `simple`
//!   tsvector of the name under GIN, searched with a prefix per token and
//!   sorted by last engagement (see `support/postgres.rs`);
//!   `--pg-recency-index` adds a B-tree on the last engagement, which Twenty
//!   does not have and which lets the planner walk by recency. Without
//!   PostgreSQL one line says the peer was skipped and why.
//!
//! Each backend answers the same queries, drawn deterministically from the
//! generated customers: a name prefix (3-5 letters of a first name or
//! surname), a full name as stored (2-3 words), an email, a national phone
//! number (digits without country code), its last four digits (the peer
//! filters numbers with `LIKE '%dddd'`, as a contains-filter on phone fields
//! does), the first six digits of an eight-digit national number (digits
//! inside a number; the peer: `LIKE '%dddddd%'`), and the mix of the first
//! four in equal shares;
//! at 8 clients, and the mix at 32; `limit` 10. The table gives `q/s, p50,
//! p99` per cell; a second one the share of queries whose check passed
//! (names: any hit; email and phone: the customer among the hits). A bare
//! Redis `GET` at 8 clients, measured in the same run, is the baseline to
//! compare figures across runs. Every measurement lasts `--seconds` (after
//! half a second of warm-up).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

/// As the `crm-indexer` and `crm-api` programs run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/load.rs"]
mod load;
#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;

use load::{ms, run, thousands, Stats};

use crm_indexer::generate::{self, Names, SplitMix64};
use crm_indexer::{IndexResult, IndexedCustomer, MemoryIndex, Query, RedisIndex, SearchIndex};
use crm_models::{names, CustomerId};

const PREFIX: &str = "bench:";
/// Customers the queries are drawn from.
const SAMPLE: u64 = 20_000;
/// Results asked for, as a type-ahead list shows.
const LIMIT: usize = 10;
/// Clients of every row but the last.
const CLIENTS: usize = 8;
/// Clients of the last row (the whole mix).
const MANY_CLIENTS: usize = 32;

struct Args {
    customers: u64,
    seconds: f64,
    seed: u64,
    names: Names,
    /// Give the Postgres peer a B-tree on `last_engagement_at` (Twenty has none).
    pg_recency_index: bool,
    /// The backends to measure (`--only redis,postgres`); all by default.
    only: Vec<String>,
    /// The rows to measure (`--rows prefix,full,email,phone,ending,mix,mix32`); all by default.
    rows: Vec<String>,
}

impl Args {
    fn runs(&self, backend: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|b| b == backend)
    }
}

fn args() -> Args {
    let mut a = Args {
        customers: 100_000,
        seconds: 5.0,
        seed: 42,
        names: Names::Wide,
        pg_recency_index: false,
        only: Vec::new(),
        rows: Vec::new(),
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1);
        match (argv[i].as_str(), next) {
            ("--customers", Some(n)) => a.customers = n.replace('_', "").parse().unwrap(),
            ("--seconds", Some(n)) => a.seconds = n.parse().unwrap(),
            ("--seed", Some(n)) => a.seed = n.parse().unwrap(),
            ("--names", Some(n)) => a.names = n.parse().unwrap(),
            ("--pg-recency-index", _) => a.pg_recency_index = true,
            ("--only", Some(list)) => {
                a.only = list.split(',').map(str::to_string).collect();
                for b in &a.only {
                    assert!(
                        ["embedded", "redis", "postgres"].contains(&b.as_str()),
                        "--only takes embedded, redis and postgres, comma-separated"
                    );
                }
            }
            ("--rows", Some(list)) => {
                a.rows = list.split(',').map(str::to_string).collect();
                for r in &a.rows {
                    assert!(
                        ROW_NAMES.contains(&r.as_str()),
                        "--rows takes {}, comma-separated",
                        ROW_NAMES.join(", ")
                    );
                }
            }
            ("--help", _) | ("-h", _) => {
                println!(
                    "search bench: --customers N (100000) --names wide|narrow (wide) --seconds S (5) \
                     --seed N (42) --pg-recency-index --only embedded,redis,postgres (all) \
                     --rows prefix,full,email,phone,ending,mix,mix32 (all)"
                );
                std::process::exit(0);
            }
            _ => {}
        }
        i += 1;
    }
    a
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Prefix,
    FullName,
    Email,
    Phone,
    /// The last four digits of a number.
    Ending,
    /// The first six digits of a national number of eight.
    Inside,
}

/// One query as typed, and the customer it was drawn from.
#[derive(Clone)]
struct Typed {
    kind: Kind,
    text: String,
    id: CustomerId,
}

/// The names `--rows` knows the rows by, in table order.
const ROW_NAMES: [&str; 8] = [
    "prefix", "full", "email", "phone", "ending", "inside", "mix", "mix32",
];

/// The rows of the table: a label, the clients, and the queries.
struct Row {
    label: &'static str,
    clients: usize,
    queries: Arc<Vec<Typed>>,
}

/// A backend's search as the bench sees it: query text in, ids out.
type Searcher = Arc<dyn Fn(String) -> BoxFuture<'static, Vec<CustomerId>> + Send + Sync>;

/// Whether the answer is what that kind of query should get.
fn check(q: &Typed, ids: &[CustomerId]) -> bool {
    match q.kind {
        // Low-variety names have thousands of namesakes: any hit will do.
        Kind::Prefix | Kind::FullName | Kind::Ending => !ids.is_empty(),
        Kind::Email | Kind::Phone | Kind::Inside => ids.contains(&q.id),
    }
}

/// 3-5 letters of the first name or the surname (the whole word when it is
/// shorter; a word of three letters or more when the name has one).
fn prefix_of(name: &str, rng: &mut SplitMix64) -> String {
    let words = names::words(name);
    let ends: Vec<&String> = [words.first(), words.last()]
        .into_iter()
        .flatten()
        .collect();
    let long: Vec<&String> = ends
        .iter()
        .copied()
        .filter(|w| w.chars().count() >= 3)
        .collect();
    let word = if long.is_empty() {
        *rng.pick(&ends)
    } else {
        *rng.pick(&long)
    };
    let want = 3 + rng.below(3) as usize;
    word.chars().take(want).collect()
}

fn queries(args: &Args) -> ([Vec<Typed>; 4], Vec<Typed>, Vec<Typed>) {
    let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
    let (mut prefix, mut full, mut email, mut phone) = (vec![], vec![], vec![], vec![]);
    let mut ending = vec![];
    let mut inside = vec![];
    for _ in 0..SAMPLE.min(args.customers) {
        let doc = generate::customer_with(args.seed, rng.below(args.customers), args.names);
        let c = &doc.customer;
        let id = c.id;
        let name = c.name.clone().unwrap_or_default();
        prefix.push(Typed {
            kind: Kind::Prefix,
            text: prefix_of(&name, &mut rng),
            id,
        });
        full.push(Typed {
            kind: Kind::FullName,
            text: name,
            id,
        });
        if !c.emails.is_empty() {
            email.push(Typed {
                kind: Kind::Email,
                text: rng.pick(&c.emails).as_str().to_string(),
                id,
            });
        }
        let national = postgres::national(rng.pick(&c.phones));
        if national.len() == 8 {
            inside.push(Typed {
                kind: Kind::Inside,
                text: national[..6].to_string(),
                id,
            });
        }
        ending.push(Typed {
            kind: Kind::Ending,
            text: national[national.len().saturating_sub(4)..].to_string(),
            id,
        });
        phone.push(Typed {
            kind: Kind::Phone,
            text: national,
            id,
        });
    }
    ([prefix, full, email, phone], ending, inside)
}

/// The four kinds in turn: query `i` of the mix is of kind `i % 4`.
fn mix(kinds: &[Vec<Typed>; 4]) -> Vec<Typed> {
    let n = kinds.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .flat_map(|i| kinds.iter().map(move |k| k[i].clone()))
        .collect()
}

fn rows(args: &Args) -> Vec<Row> {
    let (kinds, ending, inside) = queries(args);
    let mix = Arc::new(mix(&kinds));
    let [prefix, full, email, phone] = kinds.map(Arc::new);
    vec![
        Row {
            label: "name prefix (3-5 letters)",
            clients: CLIENTS,
            queries: prefix,
        },
        Row {
            label: "full name (2-3 words)",
            clients: CLIENTS,
            queries: full,
        },
        Row {
            label: "email",
            clients: CLIENTS,
            queries: email,
        },
        Row {
            label: "national phone number",
            clients: CLIENTS,
            queries: phone,
        },
        Row {
            label: "last four digits of a number",
            clients: CLIENTS,
            queries: Arc::new(ending),
        },
        Row {
            label: "six digits inside a number (its first six of eight)",
            clients: CLIENTS,
            queries: Arc::new(inside),
        },
        Row {
            label: "whole mix",
            clients: CLIENTS,
            queries: mix.clone(),
        },
        Row {
            label: "whole mix",
            clients: MANY_CLIENTS,
            queries: mix,
        },
    ]
    .into_iter()
    .zip(ROW_NAMES)
    .filter(|(_, name)| args.rows.is_empty() || args.rows.iter().any(|r| r == name))
    .map(|(row, _)| row)
    .collect()
}

/// Every row on one backend.
async fn measure(backend: &str, search: Searcher, rows: &[Row], seconds: f64) -> Vec<Stats> {
    let mut out = Vec::new();
    for row in rows {
        let (search, queries) = (search.clone(), row.queries.clone());
        let stats = run(
            row.clients,
            seconds,
            Arc::new(move |i| {
                let (search, queries) = (search.clone(), queries.clone());
                async move {
                    let q = &queries[i as usize % queries.len()];
                    let ids = search(q.text.clone()).await;
                    check(q, &ids)
                }
                .boxed()
            }),
        )
        .await;
        eprintln!(
            "{backend}: {} at {} clients: {} queries, {} q/s, p50 {}, p99 {}, check {:.1}%",
            row.label,
            row.clients,
            thousands(stats.ops as f64),
            thousands(stats.per_second),
            latency(stats.p50),
            latency(stats.p99),
            stats.ok * 100.0
        );
        out.push(stats);
    }
    out
}

fn index_searcher<I: SearchIndex>(index: Arc<I>) -> Searcher {
    Arc::new(move |q| {
        let index = index.clone();
        async move {
            let hits = index.search(&Query::Any(q), LIMIT).await.unwrap();
            hits.into_iter().map(|h| h.id).collect()
        }
        .boxed()
    })
}

fn docs(
    args: &Args,
    what: &'static str,
) -> futures::stream::BoxStream<'static, IndexResult<IndexedCustomer>> {
    let step = (args.customers / 10).max(1);
    futures::stream::iter(
        generate::customers_with(args.seed, args.customers as usize, args.names)
            .enumerate()
            .map(move |(i, doc)| {
                let n = i as u64 + 1;
                if n.checked_rem(step) == Some(0) {
                    eprintln!("{what}: {n} customers");
                }
                IndexResult::Ok(doc)
            }),
    )
    .boxed()
}

/// Resident memory of this process, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1048576.0)
}

/// Milliseconds with two decimals, or microseconds below 0.1 ms.
fn latency(d: std::time::Duration) -> String {
    if d.as_micros() < 100 {
        format!("{} µs", d.as_micros())
    } else {
        ms(d)
    }
}

fn cell(s: &Stats) -> String {
    format!(
        "{} q/s, {}, {}",
        thousands(s.per_second),
        latency(s.p50),
        latency(s.p99)
    )
}

#[tokio::main]
async fn main() {
    let args = args();
    let rows = rows(&args);
    let secs = args.seconds;
    let mut loads = Vec::new();

    // Embedded: the memory index, loaded as crm-api loads it.
    let embedded = if !args.runs("embedded") {
        None
    } else {
        let before = rss_bytes();
        let index = Arc::new(MemoryIndex::new());
        let t = Instant::now();
        let report = index.rebuild(docs(&args, "embedded load")).await.unwrap();
        let took = t.elapsed();
        assert_eq!(report.customers, args.customers);
        loads.push(format!(
            "embedded: {:.1} s (`rebuild` from the generator; process RSS +{})",
            took.as_secs_f64(),
            mib(rss_bytes().saturating_sub(before))
        ));
        Some(measure("embedded", index_searcher(index), &rows, secs).await)
    };

    // Redis.
    let mut redis_costs = Vec::new();
    let (on_redis, get) = if !args.runs("redis") {
        (None, None)
    } else {
        let url = redis_server::start();
        let index = Arc::new(RedisIndex::connect(&url, PREFIX).await.unwrap());
        let t = Instant::now();
        let report = index.rebuild(docs(&args, "Redis load")).await.unwrap();
        let took = t.elapsed();
        assert_eq!(report.customers, args.customers);
        let resizing = redis_server::finish_resizing(&url).await;
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_connection_manager().await.unwrap();
        let used: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .unwrap();
        let used = used
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        loads.push(format!(
            "Redis: {:.1} s (`rebuild` from the generator, live after {:.1} s; then {:.1} s to finish Redis's key-table resize; used_memory {})",
            took.as_secs_f64(),
            report.live_after.as_secs_f64(),
            resizing.as_secs_f64(),
            mib(used)
        ));
        let mut stats = Vec::new();
        for row in &rows {
            let before = RedisCost::now(&index, &mut conn).await;
            let searches = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counted = {
                let (search, searches) = (index_searcher(index.clone()), searches.clone());
                let counted: Searcher = Arc::new(move |q| {
                    searches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    search(q)
                });
                counted
            };
            stats.extend(measure("Redis", counted, std::slice::from_ref(row), secs).await);
            let after = RedisCost::now(&index, &mut conn).await;
            let cost = after
                .per_search_since(&before, searches.load(std::sync::atomic::Ordering::Relaxed));
            eprintln!("Redis: {} at {} clients: {cost}", row.label, row.clients);
            redis_costs.push(cost);
        }

        // The baseline: one round trip through the same client.
        let () = redis::cmd("SET")
            .arg(format!("{PREFIX}baseline"))
            .arg("x".repeat(200))
            .query_async(&mut conn)
            .await
            .unwrap();
        let get = run(
            CLIENTS,
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
        .await;
        // Free Redis's memory for the next backend.
        let mut conn = client.get_connection_manager().await.unwrap();
        let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        (Some(stats), Some(get))
    };

    // The Twenty-style PostgreSQL peer, when PostgreSQL is installed.
    let started = if args.runs("postgres") {
        postgres::start()
    } else {
        Err("not asked for (--only)".to_string())
    };
    let (on_postgres, pg_line) = match started {
        Ok(pg) => {
            let t = Instant::now();
            let rows_loaded = pg
                .load(
                    generate::customers_with(args.seed, args.customers as usize, args.names),
                    args.pg_recency_index,
                )
                .await;
            let took = t.elapsed();
            assert_eq!(rows_loaded, args.customers);
            loads.push(format!(
                "Twenty-style Postgres: {:.1} s (`COPY` from the generator, then indexes and `VACUUM ANALYZE`; tables and indexes {}; {})",
                took.as_secs_f64(),
                mib(pg.size().await),
                if args.pg_recency_index {
                    "with a B-tree on last_engagement_at (--pg-recency-index)"
                } else {
                    "no index on last_engagement_at, as in Twenty"
                }
            ));
            let mut peers = Vec::new();
            for _ in 0..MANY_CLIENTS {
                peers.push(postgres::Peer::new(&pg).await);
            }
            let pool = Arc::new(Mutex::new(peers));
            let search: Searcher = Arc::new(move |q| {
                let pool = pool.clone();
                async move {
                    // As many connections as clients: never empty.
                    let peer = pool.lock().pop().unwrap();
                    let ids = peer.search(&q, LIMIT).await;
                    pool.lock().push(peer);
                    ids.iter().map(|id| id.parse().unwrap()).collect()
                }
                .boxed()
            });
            let stats = measure("Postgres", search, &rows, secs).await;
            let line = pg.version.clone();
            drop(pg);
            (Some(stats), line)
        }
        Err(why) => (None, format!("Twenty-style Postgres peer skipped: {why}")),
    };

    println!(
        "search: {} customers, {} names (seed {}), `limit` {LIMIT}, {secs} s per cell after 0.5 s of warm-up; \
         queries drawn from {} customers",
        thousands(args.customers as f64),
        match args.names {
            Names::Wide => "wide",
            Names::Narrow => "narrow",
        },
        args.seed,
        thousands(SAMPLE.min(args.customers) as f64),
    );
    println!();
    println!("machine: {}", redis_server::machine());
    println!("{}", redis_server::version());
    println!("{pg_line}");
    println!();
    println!("load times:");
    for l in &loads {
        println!("- {l}");
    }
    println!();
    if let Some(get) = &get {
        println!(
            "baseline: redis `GET` (200 B value), {CLIENTS} clients: {}",
            cell(get)
        );
        println!();
    }
    let column = |results: &Option<Vec<Stats>>, i: usize, f: &dyn Fn(&Stats) -> String| {
        results
            .as_ref()
            .map_or_else(|| "not run".to_string(), |s| f(&s[i]))
    };
    let pg_cell = |i: usize, f: &dyn Fn(&Stats) -> String| {
        on_postgres
            .as_ref()
            .map_or_else(|| "skipped".to_string(), |s| f(&s[i]))
    };
    println!("| query | clients | embedded (memory): q/s, p50, p99 | Redis: q/s, p50, p99 | Twenty-style Postgres: q/s, p50, p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, row) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.label,
            row.clients,
            column(&embedded, i, &cell),
            column(&on_redis, i, &cell),
            pg_cell(i, &cell)
        );
    }
    println!();
    let share = |s: &Stats| format!("{:.1}%", s.ok * 100.0);
    println!("| check passed (names: any hit; email, phone: the customer in the top {LIMIT}) | clients | embedded | Redis | Postgres |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, row) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.label,
            row.clients,
            column(&embedded, i, &share),
            column(&on_redis, i, &share),
            pg_cell(i, &share)
        );
    }
    if !redis_costs.is_empty() {
        println!();
        println!("| Redis, per search | clients | round trips | commands | redis-server CPU | bench process CPU |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for (row, c) in rows.iter().zip(&redis_costs) {
            println!(
                "| {} | {} | {:.2} | {:.1} | {:.0} µs | {:.0} µs |",
                row.label, row.clients, c.round_trips, c.commands, c.server_us, c.client_us
            );
        }
    }
}

/// What one search cost on Redis, averaged over a row (warm-up included):
/// round trips, commands Redis ran, and CPU time of redis-server and of
/// this process (the index client, and the bench's own small share).
struct RedisCost {
    round_trips: f64,
    commands: f64,
    server_us: f64,
    client_us: f64,
}

impl std::fmt::Display for RedisCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} round trips, {:.1} commands, redis-server CPU {:.0} µs, bench process CPU {:.0} µs per search",
            self.round_trips, self.commands, self.server_us, self.client_us
        )
    }
}

/// Counters behind [`RedisCost`] at one moment.
struct RedisCounters {
    round_trips: u64,
    commands: u64,
    server_s: f64,
    client_s: f64,
}

impl RedisCost {
    async fn now(index: &RedisIndex, conn: &mut redis::aio::ConnectionManager) -> RedisCounters {
        let info: String = redis::cmd("INFO")
            .arg("all")
            .query_async(conn)
            .await
            .unwrap();
        let field = |name: &str| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        RedisCounters {
            round_trips: index.round_trips(),
            commands: field("total_commands_processed") as u64,
            server_s: field("used_cpu_user") + field("used_cpu_sys"),
            client_s: process_cpu_seconds(),
        }
    }
}

impl RedisCounters {
    fn per_search_since(&self, before: &RedisCounters, searches: u64) -> RedisCost {
        let n = searches.max(1) as f64;
        RedisCost {
            round_trips: self.round_trips.saturating_sub(before.round_trips) as f64 / n,
            // The INFO of the measurement itself is one command.
            commands: self.commands.saturating_sub(before.commands + 1) as f64 / n,
            server_us: (self.server_s - before.server_s) * 1e6 / n,
            client_us: (self.client_s - before.client_s) * 1e6 / n,
        }
    }
}

/// User and system CPU time of this process so far, from `/proc/self/stat`.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 from 0 here.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks per second: 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}
