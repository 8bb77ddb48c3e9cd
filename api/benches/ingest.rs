//! Engagement ingest through HTTP batches on the embedded store.
//!
//! `cargo bench -p crm-api --bench ingest [-- --batches 200 --concurrency 4]`
//!
//! Starts crm-api on a fresh embedded store in a temporary directory, and in
//! the same run a bare axum route that only parses the same JSON batch, so the
//! figures can be compared on whatever machine runs them. Client and servers
//! share the process (and the machine's cores).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::post as route_post;
use axum::{Json, Router};
use crm_api::config::Config;
use crm_api::Application;
use serde_json::{json, Value};

const BATCH: usize = 1000;

struct Args {
    batches: usize,
    concurrency: usize,
    customers: usize,
}

fn args() -> Args {
    let mut a = Args {
        batches: 200,
        concurrency: 4,
        customers: 1000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--batches", Some(n)) => a.batches = n,
            ("--concurrency", Some(n)) => a.concurrency = n,
            ("--customers", Some(n)) => a.customers = n,
            _ => {}
        }
        i += 1;
    }
    a
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path().to_path_buf());
    config.admin_email = Some("bench@example.com".into());
    config.admin_password = Some("bench-password-123".into());
    config.default_region = Some("SG".into());
    config.log = "warn".into();
    let app = Application::build(config).await.unwrap();
    // The in-process index loads beside the server: measure once it has.
    app.state().projector.warmup().wait_ready().await;
    let addr = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let baseline = spawn_baseline().await;

    let client = reqwest::Client::new();
    let token = login(&client, addr).await;
    let customers = create_customers(&client, addr, &token, args.customers).await;

    let by_id: Vec<Value> = (0..args.batches + 2)
        .map(|b| batch_by_id(b, &customers))
        .collect();
    let by_phone: Vec<Value> = (0..(args.batches / 4).max(2) + 2)
        .map(|b| batch_by_phone(b, args.customers))
        .collect();

    let base = run(
        &client,
        &format!("http://{baseline}/batch"),
        None,
        &by_id,
        args.concurrency,
    )
    .await;
    let ids = run(
        &client,
        &format!("http://{addr}/v1/engagements/batch"),
        Some(&token),
        &by_id,
        args.concurrency,
    )
    .await;
    let phones = run(
        &client,
        &format!("http://{addr}/v1/engagements/batch"),
        Some(&token),
        &by_phone,
        args.concurrency,
    )
    .await;

    println!(
        "engagement ingest, batches of {BATCH}, {} concurrent clients, {} customers",
        args.concurrency, args.customers
    );
    println!();
    println!("| route | batches | engagements/s | batch p50 | batch p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, r) in [
        ("bare axum route (parse JSON only)", &base),
        ("POST /v1/engagements/batch, by customer_id", &ids),
        ("POST /v1/engagements/batch, by phone (resolve)", &phones),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.1} ms | {:.1} ms |",
            r.batches,
            r.per_second,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "ratio crm/bare (by customer_id): {:.2}",
        ids.per_second / base.per_second
    );
}

struct RunResult {
    batches: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    bodies: &[Value],
    concurrency: usize,
) -> RunResult {
    // Two warm-up batches, not measured.
    for body in &bodies[..2] {
        post(client, url, token, body).await;
    }
    let bodies: Vec<Vec<u8>> = bodies[2..]
        .iter()
        .map(|b| serde_json::to_vec(b).unwrap())
        .collect();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = std::sync::Arc::new(bodies);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, token, next, bodies) = (
            client.clone(),
            url.to_string(),
            token.map(str::to_string),
            next.clone(),
            bodies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(token) = &token {
                    req = req.bearer_auth(token);
                }
                let resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
                let v: Value = resp.json().await.unwrap();
                if let Some(rejected) = v.get("rejected") {
                    assert_eq!(rejected, 0, "{v}");
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    RunResult {
        batches: bodies.len(),
        per_second: (bodies.len() * BATCH) as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
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

async fn spawn_baseline() -> SocketAddr {
    async fn batch(Json(body): Json<Value>) -> Json<Value> {
        let n = body["items"].as_array().map_or(0, Vec::len);
        Json(json!({ "created": n, "rejected": 0 }))
    }
    let router = Router::new()
        .route("/batch", route_post(batch))
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
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

fn phone(i: usize) -> String {
    // Singapore mobile numbers: 9 then 1..8, then six digits.
    format!(
        "+65 9{}{:02} {:04}",
        1 + (i / 1_000_000) % 8,
        (i / 10_000) % 100,
        i % 10_000
    )
}

async fn create_customers(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let v = post(
            client,
            &format!("http://{addr}/v1/customers"),
            Some(token),
            &json!({"name": format!("Customer {i}"), "phones": [phone(i)], "emails": [format!("c{i}@example.com")]}),
        )
        .await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    ids
}

fn detail(i: usize) -> Value {
    match i % 5 {
        0 => {
            json!({"channel": "sms", "direction": "inbound", "body": "Is the 3-bedroom unit at Tampines still available?"})
        }
        1 => {
            json!({"channel": "call", "direction": "outbound", "duration_s": 95, "status": "answered"})
        }
        2 => {
            json!({"channel": "whatsapp", "direction": "inbound", "payload_type": "text", "payload": "Can we view it on Saturday?"})
        }
        3 => json!({"channel": "email", "direction": "outbound", "subject": "Viewing confirmed"}),
        _ => {
            json!({"channel": "web", "url": "https://example.com/listings/4411", "view": "listing", "view_desc": "3BR Tampines"})
        }
    }
}

fn batch_by_id(b: usize, customers: &[String]) -> Value {
    let items: Vec<Value> = (0..BATCH)
        .map(|i| {
            let n = b * BATCH + i;
            let mut item = detail(n);
            item["customer_id"] = json!(customers[n % customers.len()]);
            item["occurred_at"] = json!(format!(
                "2026-11-{:02}T{:02}:{:02}:00Z",
                1 + n % 20,
                n % 24,
                n % 60
            ));
            item["client_event_id"] = json!(format!("bench-{n}"));
            item
        })
        .collect();
    json!({ "items": items })
}

fn batch_by_phone(b: usize, customers: usize) -> Value {
    let items: Vec<Value> = (0..BATCH)
        .map(|i| {
            let n = b * BATCH + i;
            let mut item = detail(n);
            // Typed without the country code: resolved with the default region.
            let p = phone(n % customers);
            item["customer"] = json!({ "phone": p.trim_start_matches("+65 ") });
            item["occurred_at"] = json!(format!(
                "2026-11-{:02}T{:02}:{:02}:00Z",
                1 + n % 20,
                n % 24,
                n % 60
            ));
            item
        })
        .collect();
    json!({ "items": items })
}
