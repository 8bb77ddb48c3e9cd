//! Write latency with Redis up and with Redis down (issue 14), on the
//! embedded store and on MongoDB.
//!
//! `cargo bench -p crm-api --bench write_outage [-- --writes 2000 --mongo-writes 500 --writers 4]`
//!
//! For each store, crm-api runs in-process with a `redis-server` of the
//! benchmark's own (the event stream and the index): the embedded store in a
//! temporary directory, then MongoDB (a `secantusd-py` of the benchmark's
//! own, or `CRM_TEST_MONGODB_URI`, in a database of its own). Four writers
//! post single engagements (`POST /v1/engagements`), each naming a customer
//! of its own by a new phone and email, so every write creates a customer
//! and records an engagement. A fixed number of writes is measured with
//! Redis up (normal), then Redis is SIGKILLed and the same number is
//! measured again (outage). Printed: p50, p99 and max write latency and
//! writes/s per phase and store, and outage p99 / normal p99. A write's
//! commit carries its events into the store's own log; the relay publishes
//! them later, so an outage should not slow writes down. Client, server,
//! Redis and secantusd-py share the machine's cores; secantusd-py is a
//! Python server, so its figures are only relative.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "../tests/common/processes.rs"]
mod processes;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_api::config::Config;
use crm_api::Application;
use processes::RedisProcess;
use serde_json::{json, Value};

const ADMIN_EMAIL: &str = "bench@example.com";
const ADMIN_PASSWORD: &str = "bench-password-123";
/// Writes before the measured ones (connections, caches), not measured.
const WARM_UP: usize = 50;
/// A client that waits this long for one write has a problem worth seeing.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the benchmark waits for crm-api to stop gracefully at the end.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

struct Args {
    writes: usize,
    mongo_writes: usize,
    writers: usize,
}

fn args() -> Args {
    let mut a = Args {
        writes: 2000,
        mongo_writes: 500,
        writers: 4,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--writes", Some(n)) => a.writes = n,
            ("--mongo-writes", Some(n)) => a.mongo_writes = n,
            ("--writers", Some(n)) => a.writers = n,
            _ => {}
        }
        i += 1;
    }
    a
}

struct Phase {
    writes: usize,
    failed: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// `count` writes by `writers` concurrent clients; phone numbers start
/// with `+65 8<series>`.
async fn phase(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    series: u8,
    count: usize,
    writers: usize,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (client, url, token, next) = (
                client.clone(),
                format!("{base}/v1/engagements"),
                token.to_string(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        break;
                    }
                    let body = json!({
                        "customer": {
                            "phone": format!("+658{series}{n:06}"),
                            "email": format!("w{series}.{n}@bench.example"),
                            "name": format!("Bench {series} {n}"),
                        },
                        "channel": "call", "direction": "inbound",
                        "duration_s": 42, "status": "answered",
                    });
                    let t = Instant::now();
                    let ok = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let elapsed = t.elapsed();
                    if ok {
                        latencies.push(elapsed);
                    } else {
                        failed += 1;
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap();
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Phase {
        writes: latencies.len(),
        failed,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

/// Runs both phases on one store; returns `(normal, outage)`.
async fn bench_store(mongo: bool, writes: usize, writers: usize) -> (Phase, Phase) {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProcess::start(&dir.path().join("redis"), false);
    let mut config = Config::for_data_dir(dir.path().join("data"));
    config.admin_email = Some(ADMIN_EMAIL.into());
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.default_region = Some("SG".into());
    config.log = "warn".into();
    config.redis_url = Some(redis.url());
    config.redis_prefix = format!("crmbench:{}:", uuid::Uuid::new_v4().simple());
    let database = format!("crm_bench_outage_{}", uuid::Uuid::new_v4().simple());
    if mongo {
        config.mongodb_uri = Some(mongo_server::mongodb_uri());
        config.mongodb_database = database.clone();
        config.jwt_secret = Some("write-outage-bench-secret-0123456789abcdef".into());
    }
    let app = Application::build(config).await.unwrap();
    // The in-process index loads beside the server: measure once it has.
    app.state().projector.warmup().wait_ready().await;
    let base = format!("http://{}", app.local_addr());
    let crm = app.state().crm.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let login: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();

    phase(&client, &base, &token, 9, WARM_UP, writers).await;
    let normal = phase(&client, &base, &token, 1, writes, writers).await;
    redis.kill();
    let outage = phase(&client, &base, &token, 2, writes, writers).await;
    let pending = crm.pending_events().await.unwrap();
    eprintln!(
        "{}: {pending} events waiting in the store's log at the end of the outage",
        crm.store().kind()
    );

    // A graceful stop with Redis still down (as after SIGTERM in production).
    let _ = stop.send(());
    let stopping = Instant::now();
    match tokio::time::timeout(SHUTDOWN_LIMIT, server).await {
        Ok(_) => eprintln!(
            "{}: crm-api stopped {:.1} s after the shutdown signal",
            crm.store().kind(),
            stopping.elapsed().as_secs_f64()
        ),
        Err(_) => eprintln!(
            "{}: crm-api did not stop within {} s of the shutdown signal; going on",
            crm.store().kind(),
            SHUTDOWN_LIMIT.as_secs()
        ),
    }
    if mongo {
        let db =
            crm_models::store::mongo::MongoStore::connect(&mongo_server::mongodb_uri(), &database)
                .await
                .unwrap();
        let _ = db.database().drop().await;
    }
    (normal, outage)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    let args = args();
    let mut rows = Vec::new();
    for (name, mongo, writes) in [
        ("embedded", false, args.writes),
        ("mongo (secantusd-py)", true, args.mongo_writes),
    ] {
        let (normal, outage) = bench_store(mongo, writes, args.writers).await;
        rows.push((name, normal, outage));
    }
    println!(
        "write latency, Redis up vs down: {} writers, POST /v1/engagements creating a customer each",
        args.writers
    );
    println!();
    println!("| store | phase | writes | failed | writes/s | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, normal, outage) in &rows {
        for (phase, r) in [("normal", normal), ("Redis down", outage)] {
            println!(
                "| {name} | {phase} | {} | {} | {:.0} | {} | {} | {} |",
                r.writes,
                r.failed,
                r.per_second,
                ms(r.p50),
                ms(r.p99),
                ms(r.max)
            );
        }
    }
    println!();
    for (name, normal, outage) in &rows {
        println!(
            "{name}: outage p99 / normal p99 = {:.2}",
            outage.p99.as_secs_f64() / normal.p99.as_secs_f64().max(1e-9)
        );
    }
}
