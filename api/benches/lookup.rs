//! Caller-ID lookup, search and freshness through HTTP, on Redis.
//!
//! `cargo bench -p crm-api --bench lookup [-- --customers 1000000 --seconds 10 --concurrency 32 --rounds 3 --no-settle]`
//!
//! Starts its own `redis-server` on a free loopback port, writes N generated
//! customers straight into the index (`RedisIndex::rebuild` under the prefix
//! crm-api is then configured with), and starts crm-api in-process on Redis
//! (stream, index, index worker) with a nearly empty embedded store: the
//! index holds N customers, the store only the admin and the customers the
//! freshness run creates. Redis is then let finish resizing its key table
//! (see `finish_resizing`; `--no-settle` measures without waiting). In the same run a bare axum route returning a
//! small JSON body is measured as the baseline, taking turns with the
//! lookup for `--rounds` rounds; the table shows the round with the median
//! ratio. Client, servers and Redis share the machine's cores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

#[path = "support/cpu.rs"]
mod cpu;
#[path = "../../indexer/benches/support/load.rs"]
mod load;
#[path = "support/preload.rs"]
mod preload;
#[path = "../../indexer/benches/support/redis_server.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::{ms, run, stats, thousands, Op};

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use crm_api::config::Config;
use crm_api::Application;
use crm_indexer::generate::{self, SplitMix64};
use crm_models::names;
use futures::FutureExt;
use serde_json::{json, Value};

const PREFIX: &str = "crmbench:";
const SAMPLE: u64 = 20_000;

struct Args {
    customers: u64,
    seconds: f64,
    concurrency: usize,
    freshness: usize,
    rounds: usize,
    seed: u64,
    /// Let Redis finish resizing its key table before measuring.
    settle: bool,
}

fn args() -> Args {
    let mut a = Args {
        customers: 100_000,
        seconds: 10.0,
        concurrency: 32,
        freshness: 200,
        rounds: 3,
        seed: 42,
        settle: true,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1);
        match (argv[i].as_str(), next) {
            ("--customers", Some(n)) => a.customers = n.replace('_', "").parse().unwrap(),
            ("--seconds", Some(n)) => a.seconds = n.parse().unwrap(),
            ("--concurrency", Some(n)) => a.concurrency = n.parse().unwrap(),
            ("--freshness", Some(n)) => a.freshness = n.parse().unwrap(),
            ("--rounds", Some(n)) => a.rounds = n.parse::<usize>().unwrap().max(1),
            ("--seed", Some(n)) => a.seed = n.parse().unwrap(),
            ("--no-settle", _) => a.settle = false,
            _ => {}
        }
        i += 1;
    }
    a
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn spawn_baseline() -> SocketAddr {
    async fn lookup(Path(number): Path<String>) -> Json<Value> {
        Json(
            json!({ "matches": [{ "id": "0193a5b0-0000-7000-8000-000000000000", "name": "Tan Wei Ming", "number": number }] }),
        )
    }
    let router = Router::new().route("/lookup/{number}", get(lookup));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn get_json(client: &reqwest::Client, url: &str, token: Option<&str>) -> Value {
    let mut req = client.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.unwrap()
}

/// What the load rows check in an answer: how many matches or items it has.
/// The rest is skipped without being built (still parsed, so a malformed
/// body fails), to keep the clients' share of the CPU small and alike for
/// every route.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    matches: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

fn get_op(
    client: &reqwest::Client,
    token: Option<&str>,
    urls: Arc<Vec<String>>,
    check: fn(&Answer) -> bool,
) -> Op {
    let (client, token) = (client.clone(), token.map(str::to_string));
    Arc::new(move |i| {
        let (client, token, urls) = (client.clone(), token.clone(), urls.clone());
        async move {
            let url = &urls[i as usize % urls.len()];
            let mut req = client.get(url);
            if let Some(token) = &token {
                req = req.bearer_auth(token);
            }
            let resp = req.send().await.unwrap();
            assert!(resp.status().is_success(), "{url}: {}", resp.status());
            let body = resp.bytes().await.unwrap();
            check(&serde_json::from_slice::<Answer>(&body).unwrap())
        }
        .boxed()
    })
}

#[tokio::main]
async fn main() {
    let args = args();
    let url = redis_server::start();

    // The index: N customers written straight into Redis.
    let preload = preload::preload(&url, PREFIX, args.customers, args.seed).await;
    let settle = if args.settle {
        eprintln!("letting Redis finish resizing its key table");
        Some(redis_server::finish_resizing(&url).await)
    } else {
        None
    };

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path().to_path_buf());
    config.admin_email = Some("bench@example.com".into());
    config.admin_password = Some("bench-password-123".into());
    config.default_region = Some("SG".into());
    config.redis_url = Some(url.clone());
    config.redis_prefix = PREFIX.into();
    config.log = "warn".into();
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let baseline = spawn_baseline().await;

    let client = reqwest::Client::new();
    let login = client
        .post(format!("http://{addr}/v1/auth/login"))
        .json(&json!({"email": "bench@example.com", "password": "bench-password-123"}))
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success(), "login: {}", login.status());
    let token = login.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // Requests from a sample of the indexed customers.
    let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
    let mut lookups = Vec::new();
    let mut bare = Vec::new();
    let mut searches = Vec::new();
    for k in 0..SAMPLE.min(args.customers) {
        let doc = generate::customer(args.seed, rng.below(args.customers));
        let phone = rng.pick(&doc.customer.phones);
        // As people type it: +65 8122 6418, (065) 8122-6418 (with ?region=), 0065 81226418.
        let variant = *rng.pick(&[0usize, 2, 3]);
        let typed = generate::typed_phone(phone, variant);
        let region = generate::region_of(phone).unwrap();
        lookups.push(format!(
            "http://{addr}/v1/lookup/phone/{}?region={region}",
            encode(&typed)
        ));
        bare.push(format!("http://{baseline}/lookup/{}", encode(&typed)));
        let name = doc.customer.name.unwrap();
        let mut words = names::words(&name);
        words.retain(|w| w.chars().count() >= 2 || !w.is_ascii());
        let q = if k % 2 == 0 {
            // Type-ahead: 2-4 letters of a word.
            let w: Vec<char> = rng.pick(&words).chars().collect();
            let n = if w[0].is_ascii() {
                2 + rng.below(3) as usize
            } else {
                1 + rng.below(2) as usize
            };
            w[..n.min(w.len())].iter().collect()
        } else {
            name
        };
        searches.push(format!("http://{addr}/v1/search?q={}&limit=10", encode(&q)));
    }
    let (lookups, bare, searches) = (Arc::new(lookups), Arc::new(bare), Arc::new(searches));

    let c = args.concurrency;
    let secs = args.seconds;
    // Bare route and lookup take turns, `rounds` times: the machine's speed
    // drifts, and each ratio compares two runs a few seconds apart.
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round}: bare route");
        let cpu_before = cpu::process();
        let base = run(
            c,
            secs,
            get_op(&client, None, bare.clone(), |a| a.matches.len() == 1),
        )
        .await;
        let (cpu_between, redis_before) = (cpu::process(), cpu::redis(&url).await);
        eprintln!("round {round}: lookup");
        let lookup = run(
            c,
            secs,
            get_op(&client, Some(&token), lookups.clone(), |a| {
                !a.matches.is_empty()
            }),
        )
        .await;
        let (cpu_after, redis_after) = (cpu::process(), cpu::redis(&url).await);
        let cpu = (
            cpu::per_op(cpu_between - cpu_before, base.ops as u64),
            cpu::per_op(cpu_after - cpu_between, lookup.ops as u64),
            cpu::per_op(redis_after - redis_before, lookup.ops as u64),
        );
        rounds.push((base, lookup, cpu));
    }
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|(b, l, _)| l.per_second / b.per_second)
        .collect();
    // The round with the median ratio goes in the table.
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
    let (base, lookup, cpu) = rounds.swap_remove(order[order.len() / 2]);
    let search = run(
        c,
        secs,
        get_op(&client, Some(&token), searches, |a| !a.items.is_empty()),
    )
    .await;

    // Freshness: an engagement for a new number, then poll caller ID every
    // 1 ms until the new customer appears.
    let mut from_request = Vec::new();
    let mut from_response = Vec::new();
    let mut posts = Vec::new();
    let start = Instant::now();
    for k in 0..args.freshness as u64 {
        let doc = generate::customer(args.seed, args.customers + k);
        let phone = doc.customer.phones[0].as_str().to_string();
        let t0 = Instant::now();
        let resp = client
            .post(format!("http://{addr}/v1/engagements"))
            .bearer_auth(&token)
            .json(&json!({
                "customer": {"phone": phone, "name": doc.customer.name},
                "channel": "sms", "direction": "inbound",
                "body": "Hi, is the 3-bedroom unit at Tampines still available?",
                "client_event_id": format!("fresh-{k}"),
            }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "POST: {}", resp.status());
        let t1 = Instant::now();
        posts.push(t1 - t0);
        let url = format!("http://{addr}/v1/lookup/phone/{}", encode(&phone));
        loop {
            let v = get_json(&client, &url, Some(&token)).await;
            if v["matches"].as_array().is_some_and(|m| !m.is_empty()) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{phone} never appeared"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        from_request.push(t0.elapsed());
        from_response.push(t1.elapsed());
    }
    let elapsed = start.elapsed();
    let n = from_request.len();
    let post = stats(posts, n, elapsed);
    let fresh_req = stats(from_request, n, elapsed);
    let fresh_resp = stats(from_response, n, elapsed);

    println!(
        "caller ID and search through HTTP on Redis: {} customers in the index (seed {}), {c} concurrent clients, {secs} s per row ({} rounds of bare route then lookup)",
        thousands(args.customers as f64),
        args.seed,
        args.rounds
    );
    println!(
        "(the index was pre-loaded straight into Redis in {:.1} s; the store holds only the admin and the {} freshness customers)",
        preload.as_secs_f64(),
        args.freshness
    );
    match settle {
        Some(t) => println!(
            "(Redis then finished resizing its key table, as a long-running Redis has, in {:.1} s)",
            t.as_secs_f64()
        ),
        None => println!("(--no-settle: measured while Redis may still be resizing its key table)"),
    }
    println!();
    println!("machine: {}", redis_server::machine());
    println!("{}", redis_server::version());
    println!();
    println!("| route | requests | requests/s | p50 | p99 | check |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, s, check) in [
        ("bare axum JSON route", &base, "JSON"),
        (
            "`GET /v1/lookup/phone/{number}` (typed as people do)",
            &lookup,
            "match",
        ),
        (
            "`GET /v1/search?q=` (half 2-4 letter prefixes, half full names)",
            &search,
            "any hit",
        ),
        (
            "`POST /v1/engagements` (new customer by phone), sequential",
            &post,
            "201",
        ),
        (
            "freshness: POST sent -> caller ID finds it",
            &fresh_req,
            "found",
        ),
        (
            "freshness: POST answered -> caller ID finds it",
            &fresh_resp,
            "found",
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {check} {:.1}% |",
            thousands(s.ops as f64),
            thousands(s.per_second),
            ms(s.p50),
            ms(s.p99),
            s.ok * 100.0
        );
    }
    println!();
    println!(
        "ratio lookup/bare: {:.2} (the median round of {}; every round: {}), search/bare: {:.3}",
        lookup.per_second / base.per_second,
        ratios.len(),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        search.per_second / base.per_second
    );
    println!(
        "CPU per request (this process: clients and server together; the Redis server apart): \
         bare route {:.0} µs; lookup {:.0} µs + Redis {:.0} µs",
        cpu.0, cpu.1, cpu.2,
    );
}
