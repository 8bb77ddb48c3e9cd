//! The mobile bridge under a fleet of simulated devices (`crm-device-sim`'s
//! logic, `crm_mobile_bridge::sim`).
//!
//! `cargo bench -p crm-api --bench mobile [-- --devices 32 --events 3000 --customers 100000 --seconds 10 --paced-rate 3200]`
//!
//! 1. Upload: crm-api in-process on a fresh embedded store (redb) with the
//!    in-process index, as the single-binary deployment runs; `--devices`
//!    devices enrolled, each uploading its synthetic SMS/call log in batches
//!    of 500 (overlapping by 10 events, 10% of batches sent twice). Baseline
//!    in the same run: the same fleet against a bare axum route that only
//!    parses the batch and answers one result per event.
//! 2. Caller-ID: a `redis-server` of its own, `--customers` generated
//!    customers written straight into the index (`RedisIndex::rebuild`, as
//!    `benches/lookup.rs` does, then Redis let finish resizing its key
//!    table), crm-api on Redis; `--devices` devices ask
//!    `GET /v1/mobile/caller-id` one request at a time each, on a keep-alive
//!    connection of its own, for `--seconds`.
//!    Baseline: the same fleet against a bare axum route answering a small
//!    JSON body. Then both again with the devices paced, `--paced-rate`
//!    lookups a second in all, each timed from when it was due: the latency
//!    of a lookup on a server that is not saturated.
//!
//! Client, servers and Redis share the machine's cores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/preload.rs"]
mod preload;
#[path = "../../indexer/benches/support/redis_server.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use crm_api::config::Config;
use crm_api::Application;
use crm_indexer::generate::{self, SplitMix64};
use crm_mobile_bridge::sim::{self, percentile, LookupReport, UploadPlan, UploadReport};
use serde_json::{json, Value};

const PREFIX: &str = "crmbench:";
const ADMIN: &str = "bench@example.com";
const PASSWORD: &str = "bench-password-123";
const SAMPLE: u64 = 20_000;

struct Args {
    devices: usize,
    events: usize,
    customers: u64,
    seconds: f64,
    seed: u64,
    upload: bool,
    caller_id: bool,
    /// Lookups a second, all devices together, for the paced caller-ID rows.
    paced_rate: f64,
}

fn args() -> Args {
    let mut a = Args {
        devices: 32,
        events: 3_000,
        customers: 100_000,
        seconds: 10.0,
        seed: 42,
        upload: true,
        caller_id: true,
        paced_rate: 3_200.0,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1);
        match (argv[i].as_str(), next) {
            ("--devices", Some(n)) => a.devices = n.parse().unwrap(),
            ("--events", Some(n)) => a.events = n.replace('_', "").parse().unwrap(),
            ("--customers", Some(n)) => a.customers = n.replace('_', "").parse().unwrap(),
            ("--seconds", Some(n)) => a.seconds = n.parse().unwrap(),
            ("--seed", Some(n)) => a.seed = n.parse().unwrap(),
            ("--only-upload", _) => a.caller_id = false,
            ("--only-caller-id", _) => a.upload = false,
            ("--paced-rate", Some(n)) => a.paced_rate = n.replace('_', "").parse().unwrap(),
            _ => {}
        }
        i += 1;
    }
    a
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn thousands(x: f64) -> String {
    let s = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bare route in this process: parses a batch and answers one result per
/// event, or answers a caller-ID-sized JSON body.
async fn spawn_baseline() -> SocketAddr {
    async fn events(Json(body): Json<Value>) -> Json<Value> {
        let results: Vec<Value> = body["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| json!({ "index": i, "client_event_id": e["client_event_id"], "status": "created" }))
                    .collect()
            })
            .unwrap_or_default();
        Json(json!({ "results": results }))
    }
    async fn caller_id() -> Json<Value> {
        Json(json!({ "known": true, "customers": [{
            "id": "0193a5b0-0000-7000-8000-000000000000", "name": "Tan Wei Ming",
            "main_phone": "+6581226418", "counts": { "sms": 3, "call": 2 }, "last_engagements": [],
        }] }))
    }
    let router = Router::new()
        .route("/v1/mobile/events", post(events))
        .route("/v1/mobile/caller-id", get(caller_id));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn start_app(dir: &std::path::Path, redis: Option<&str>) -> SocketAddr {
    let mut config = Config::for_data_dir(dir.to_path_buf());
    config.admin_email = Some(ADMIN.into());
    config.admin_password = Some(PASSWORD.into());
    config.default_region = Some("SG".into());
    config.log = "warn".into();
    if let Some(url) = redis {
        config.redis_url = Some(url.to_string());
        config.redis_prefix = PREFIX.into();
    }
    let app = Application::build(config).await.unwrap();
    // The in-process index loads beside the server: measure once it has.
    app.state().projector.warmup().wait_ready().await;
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    addr
}

async fn fleet(client: &reqwest::Client, base: &str, devices: usize) -> Vec<String> {
    let staff = sim::login(client, base, ADMIN, PASSWORD).await.unwrap();
    sim::enroll(client, base, &staff, devices, Some("SG"))
        .await
        .unwrap()
}

fn upload_row(name: &str, r: &UploadReport) {
    println!(
        "| {name} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
        r.devices,
        thousands(r.requests as f64),
        thousands(r.events_sent as f64),
        thousands(r.created as f64),
        thousands(r.events_per_second()),
        ms(percentile(&r.latencies, 0.5)),
        ms(percentile(&r.latencies, 0.99)),
        r.rejected,
    );
}

fn lookup_row(name: &str, devices: usize, r: &LookupReport) {
    println!(
        "| {name} | {devices} | {} | {} | {} | **{}** | {:.1}% |",
        thousands(r.lookups as f64),
        thousands(r.lookups as f64 / r.elapsed.as_secs_f64()),
        ms(percentile(&r.latencies, 0.5)),
        ms(percentile(&r.latencies, 0.99)),
        100.0 * r.known as f64 / r.lookups.max(1) as f64,
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let client = sim::client().unwrap();
    let baseline = spawn_baseline().await;
    let bare = format!("http://{baseline}");
    let bare_tokens: Vec<String> = (0..args.devices)
        .map(|i| format!("crm_dev_bare{i}"))
        .collect();
    println!("machine: {}", redis_server::machine());

    if args.upload {
        let dir = tempfile::tempdir().unwrap();
        let addr = start_app(dir.path(), None).await;
        let base = format!("http://{addr}");
        let tokens = fleet(&client, &base, args.devices).await;
        let plan = UploadPlan {
            events_per_device: args.events,
            seed: args.seed,
            ..UploadPlan::default()
        };
        let base_report = sim::upload_fleet(&client, &bare, &bare_tokens, &plan)
            .await
            .unwrap();
        let report = sim::upload_fleet(&client, &base, &tokens, &plan)
            .await
            .unwrap();
        // Again, new events to the same contacts: every counterpart is known.
        let warm_plan = UploadPlan {
            pass: 1,
            ..plan.clone()
        };
        let warm = sim::upload_fleet(&client, &base, &tokens, &warm_plan)
            .await
            .unwrap();
        println!();
        println!("| upload target | devices | requests | events sent | new events stored | events/s | batch p50 | batch p99 | rejected |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        upload_row(
            "bare axum route (parse JSON, answer per event)",
            &base_report,
        );
        upload_row(
            "`POST /v1/mobile/events`, embedded store, first upload (counterparts created)",
            &report,
        );
        upload_row(
            "`POST /v1/mobile/events`, embedded store, second upload (counterparts known)",
            &warm,
        );
        println!(
            "new events stored per second: first {}, second {}; events/s counts duplicates too; ratio mobile/bare: {:.3} and {:.3}",
            thousands(report.created_per_second()),
            thousands(warm.created_per_second()),
            report.events_per_second() / base_report.events_per_second(),
            warm.events_per_second() / base_report.events_per_second()
        );
    }

    if args.caller_id {
        let url = redis_server::start();
        println!("redis: {}", redis_server::version());
        let preloaded = preload::preload(&url, PREFIX, args.customers, args.seed).await;
        println!(
            "index pre-loaded with {} customers in {:.1} s",
            thousands(args.customers as f64),
            preloaded.as_secs_f64()
        );
        eprintln!("letting Redis finish resizing its key table");
        println!(
            "Redis then finished resizing its key table, as a long-running Redis has, in {:.1} s",
            redis_server::finish_resizing(&url).await.as_secs_f64()
        );

        let dir = tempfile::tempdir().unwrap();
        let addr = start_app(dir.path(), Some(&url)).await;
        let base = format!("http://{addr}");
        let tokens = fleet(&client, &base, args.devices).await;

        // Numbers of indexed customers, as a phone shows them: with the
        // country code (`+60 12 3456789`, `0060 123456789`), or without it
        // for Singapore numbers (the devices' region).
        let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
        let mut numbers = Vec::new();
        for _ in 0..SAMPLE.min(args.customers) {
            let doc = generate::customer(args.seed, rng.below(args.customers));
            let phone = rng.pick(&doc.customer.phones);
            let sg = generate::region_of(phone) == Some("SG");
            let variant = if sg {
                *rng.pick(&[0usize, 1, 3])
            } else {
                *rng.pick(&[0usize, 3])
            };
            numbers.push(generate::typed_phone(phone, variant));
        }
        let numbers = Arc::new(numbers);
        let cpu_before = cpu::process();
        eprintln!("caller-ID: bare route");
        let base_report =
            sim::caller_id_fleet(&bare, &bare_tokens, numbers.clone(), args.seconds, None)
                .await
                .unwrap();
        let (cpu_between, redis_before) = (cpu::process(), cpu::redis(&url).await);
        eprintln!("caller-ID: /v1/mobile/caller-id");
        let report = sim::caller_id_fleet(&base, &tokens, numbers.clone(), args.seconds, None)
            .await
            .unwrap();
        let (cpu_after, redis_after) = (cpu::process(), cpu::redis(&url).await);
        // The same devices at a steady rate, well below what saturates the
        // machine: the latency a ringing phone sees when the server is not
        // flooded.
        let pace = sim::pace(args.paced_rate, args.devices);
        eprintln!("caller-ID: paced, {} lookups/s", args.paced_rate);
        let paced_bare =
            sim::caller_id_fleet(&bare, &bare_tokens, numbers.clone(), args.seconds, pace)
                .await
                .unwrap();
        let paced = sim::caller_id_fleet(&base, &tokens, numbers, args.seconds, pace)
            .await
            .unwrap();
        println!();
        println!("| caller-ID target | devices | lookups | lookups/s | p50 | p99 | known |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        lookup_row("bare axum JSON route", args.devices, &base_report);
        lookup_row(
            &format!(
                "`GET /v1/mobile/caller-id`, Redis, {} customers",
                thousands(args.customers as f64)
            ),
            args.devices,
            &report,
        );
        let rate = thousands(args.paced_rate);
        lookup_row(
            &format!("bare axum JSON route, paced at {rate} lookups/s"),
            args.devices,
            &paced_bare,
        );
        lookup_row(
            &format!(
                "`GET /v1/mobile/caller-id`, Redis, {} customers, paced at {rate} lookups/s",
                thousands(args.customers as f64)
            ),
            args.devices,
            &paced,
        );
        println!();
        println!(
            "CPU per lookup (this process: simulated devices and server together; the Redis server apart): \
             bare route {:.0} µs; caller-ID {:.0} µs + Redis {:.0} µs",
            cpu::per_op(cpu_between - cpu_before, base_report.lookups as u64),
            cpu::per_op(cpu_after - cpu_between, report.lookups as u64),
            cpu::per_op(redis_after - redis_before, report.lookups as u64),
        );
    }
}
