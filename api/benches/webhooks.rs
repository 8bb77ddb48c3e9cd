//! Webhook deliveries per second to a local receiver, and engagement ingest
//! with a webhook endpoint registered beside ingest without one, on the
//! embedded store.
//!
//! `cargo bench -p crm-api --bench webhooks [-- --batches 20 --concurrency 4 --per-endpoint 16]`
//!
//! Two fresh crm-api applications (each its own temporary store) run in
//! this process with the client and a bare axum receiver that answers 200 at
//! once (they all share the machine's cores). The first has no endpoint;
//! the second one endpoint for `engagement.recorded`. The same batches of
//! 1000 engagements go to both; for the second, every engagement is one
//! delivery, counted by the receiver until all have arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use crm_api::config::Config;
use crm_api::Application;
use serde_json::{json, Value};
use tokio::sync::Notify;

const BATCH: usize = 1000;
const CUSTOMERS: usize = 200;
const LATENCY_SAMPLES: usize = 50;

struct Args {
    batches: usize,
    concurrency: usize,
    per_endpoint: usize,
}

fn args() -> Args {
    let mut a = Args {
        batches: 20,
        concurrency: 4,
        per_endpoint: 16,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--batches", Some(n)) => a.batches = n,
            ("--concurrency", Some(n)) => a.concurrency = n,
            ("--per-endpoint", Some(n)) => a.per_endpoint = n,
            _ => {}
        }
        i += 1;
    }
    a
}

/// What the receiver counts.
struct Counter {
    n: AtomicUsize,
    first: parking_lot::Mutex<Option<Instant>>,
    last: parking_lot::Mutex<Option<Instant>>,
    changed: Notify,
}

async fn receive(State(c): State<Arc<Counter>>) -> StatusCode {
    let now = Instant::now();
    c.first.lock().get_or_insert(now);
    *c.last.lock() = Some(now);
    c.n.fetch_add(1, Ordering::SeqCst);
    c.changed.notify_waiters();
    StatusCode::OK
}

async fn spawn_receiver() -> (SocketAddr, Arc<Counter>) {
    let counter = Arc::new(Counter {
        n: AtomicUsize::new(0),
        first: parking_lot::Mutex::new(None),
        last: parking_lot::Mutex::new(None),
        changed: Notify::new(),
    });
    let router = Router::new().fallback(receive).with_state(counter.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, counter)
}

async fn start_app(dir: &std::path::Path, per_endpoint: usize) -> SocketAddr {
    let mut config = Config::for_data_dir(dir.to_path_buf());
    config.admin_email = Some("bench@example.com".into());
    config.admin_password = Some("bench-password-123".into());
    config.log = "warn".into();
    config.webhooks.allow_private = true;
    config.webhooks.per_endpoint = per_endpoint;
    let app = Application::build(config).await.unwrap();
    // The in-process index loads beside the server: measure once it has.
    app.state().projector.warmup().wait_ready().await;
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    addr
}

async fn post(client: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) -> Value {
    let mut req = client.post(url).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn login(client: &reqwest::Client, addr: SocketAddr) -> String {
    let v = post(
        client,
        &format!("http://{addr}/v1/auth/login"),
        None,
        &json!({"email": "bench@example.com", "password": "bench-password-123"}),
    )
    .await;
    v["access_token"].as_str().unwrap().to_string()
}

fn batch(b: usize, customers: &[String]) -> Vec<u8> {
    let items: Vec<Value> = (0..BATCH)
        .map(|i| {
            let n = b * BATCH + i;
            json!({
                "customer_id": customers[n % customers.len()],
                "channel": "call", "direction": "inbound", "duration_s": 42, "status": "answered",
                "occurred_at": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + n % 20, n % 24, n % 60),
                "client_event_id": format!("bench-{n}"),
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "items": items })).unwrap()
}

/// Posts the batches with `concurrency` clients; engagements per second.
async fn ingest(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    batches: Arc<Vec<Vec<u8>>>,
    concurrency: usize,
) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, token, next, batches) = (
            client.clone(),
            token.to_string(),
            next.clone(),
            batches.clone(),
        );
        let url = format!("http://{addr}/v1/engagements/batch");
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = batches.get(i) else { break };
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (batches.len() * BATCH) as f64 / start.elapsed().as_secs_f64()
}

async fn customers(client: &reqwest::Client, addr: SocketAddr, token: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..CUSTOMERS {
        let v = post(
            client,
            &format!("http://{addr}/v1/customers"),
            Some(token),
            &json!({"name": format!("Customer {i}"), "emails": [format!("c{i}@example.com")]}),
        )
        .await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::main]
async fn main() {
    let args = args();
    let client = reqwest::Client::new();
    let total = args.batches * BATCH;

    // Without an endpoint.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = start_app(plain_dir.path(), args.per_endpoint).await;
    let token = login(&client, plain).await;
    let ids = customers(&client, plain, &token).await;
    let batches = Arc::new(
        (0..args.batches)
            .map(|b| batch(b, &ids))
            .collect::<Vec<_>>(),
    );
    let without = ingest(&client, plain, &token, batches, args.concurrency).await;

    // With one endpoint for every engagement.
    let (receiver, counter) = spawn_receiver().await;
    let hooked_dir = tempfile::tempdir().unwrap();
    let hooked = start_app(hooked_dir.path(), args.per_endpoint).await;
    let token = login(&client, hooked).await;
    let ids = customers(&client, hooked, &token).await;
    post(
        &client,
        &format!("http://{hooked}/v1/webhooks"),
        Some(&token),
        &json!({"url": format!("http://{receiver}/hooks"), "types": ["engagement.recorded"]}),
    )
    .await;
    let batches = Arc::new(
        (0..args.batches)
            .map(|b| batch(b, &ids))
            .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let with = ingest(&client, hooked, &token, batches, args.concurrency).await;
    let ingested = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let changed = counter.changed.notified();
        if counter.n.load(Ordering::SeqCst) >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {total} deliveries arrived within 10 minutes",
            counter.n.load(Ordering::SeqCst)
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
    }
    let delivered = started.elapsed();
    let first = counter.first.lock().unwrap();
    let last = counter.last.lock().unwrap();
    let per_second = total as f64 / (last - first).as_secs_f64();

    // Latency: one customer at a time, from the write's answer to its
    // delivery (the endpoint takes every type).
    post(
        &client,
        &format!("http://{hooked}/v1/webhooks"),
        Some(&token),
        &json!({"url": format!("http://{receiver}/latency"), "types": ["customer.created"]}),
    )
    .await;
    let mut latencies = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let before = counter.n.load(Ordering::SeqCst);
        let sent = Instant::now();
        post(
            &client,
            &format!("http://{hooked}/v1/customers"),
            Some(&token),
            &json!({"name": format!("Latency {i}"), "emails": [format!("l{i}@example.com")]}),
        )
        .await;
        loop {
            let changed = counter.changed.notified();
            if counter.n.load(Ordering::SeqCst) > before {
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), changed)
                .await
                .expect("a delivery within 10 s");
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    println!(
        "webhooks, embedded store: {} batches of {BATCH} engagements, {} concurrent clients, \
         one endpoint (engagement.recorded), at most {} attempts in flight to it",
        args.batches, args.concurrency, args.per_endpoint
    );
    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| ingest without an endpoint | {without:.0} engagements/s |");
    println!("| ingest with the endpoint | {with:.0} engagements/s |");
    println!("| deliveries to the local receiver (first to last) | {per_second:.0} /s |");
    println!(
        "| write to delivery, one at a time ({LATENCY_SAMPLES}) | p50 {:.0} ms, p99 {:.0} ms |",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    println!(
        "| all {total} delivered after the first batch was sent | {:.1} s (ingest took {:.1} s) |",
        delivered.as_secs_f64(),
        ingested.as_secs_f64()
    );
}
