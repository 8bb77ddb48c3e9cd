//! Sales analytics at a year's scale: leaderboard and series queries over
//! the rollups of 200 agents' 10,000,000 engagements, the time from an
//! engagement to the live board that shows it, and ingest with the
//! analytics consumer on beside off.
//!
//! ```text
//! cargo bench -p crm-api --bench analytics -- --agents 200 --engagements 10000000 --seconds 5
//! ```
//!
//! - **Rollups.** A year of engagements (ending today, in UTC) is drawn from
//!   a fixed seed: agents skewed so that the boards have a clear top,
//!   calls, SMS, WhatsApp, email and web views, a fifth of the outbound
//!   ones answering a waiting customer. They are counted with the
//!   consumer's own [`Tally`], a day at a time, and written with
//!   [`AnalyticsStore::apply_analytics`] into the embedded store of the
//!   running crm-api (its consumer goes on after them): the same rows,
//!   hourly totals and distinct-customer markers that counting them one
//!   event at a time would leave, without storing 10,000,000 engagements
//!   first.
//! - **Queries.** `--clients` concurrent clients for `--seconds` per row,
//!   against a bare axum route in the same process (the baseline).
//! - **Live board.** A staff stream subscribed to `leaderboard=calls_outbound`;
//!   the top agent records an outbound call; the time until an update shows
//!   its new count. One at a time, each after the board's one-second
//!   minimum interval.
//! - **Ingest.** Two more crm-api instances on fresh stores, one with the
//!   analytics consumer off, one with it on, take the same batches of 1,000
//!   engagements in alternating rounds; for the one with it on, the time
//!   from the last batch to the rollups counting every engagement.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get as route_get;
use axum::{Json, Router};
use chrono::{Duration as Days, NaiveDate, TimeZone, Utc};
use crm_api::config::Config;
use crm_api::Application;
use crm_models::analytics::{Metric, Tally, Zone};
use crm_models::engagement::{
    CallStatus, Direction, Engagement, EngagementDetail, PayloadType, Source,
};
use crm_models::ids::{CustomerId, EngagementId};
use serde_json::{json, Value};

const ADMIN_EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "bench-password-123";
const TEAMS: [&str; 8] = [
    "North", "South", "East", "West", "Central", "Harbour", "Airport", "Online",
];
/// Customers the synthetic engagements are spread over.
const CUSTOMERS: u64 = 1_000_000;
const BATCH: usize = 1000;

struct Args {
    agents: usize,
    engagements: u64,
    days: i64,
    seconds: u64,
    clients: usize,
    samples: usize,
    ingest_batches: usize,
    ingest_rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        agents: 200,
        engagements: 10_000_000,
        days: 365,
        seconds: 5,
        clients: 8,
        samples: 40,
        ingest_batches: 50,
        ingest_rounds: 3,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).map(String::as_str);
        let n = || next.and_then(|v| v.parse::<u64>().ok()).unwrap();
        match argv[i].as_str() {
            "--agents" => a.agents = n() as usize,
            "--engagements" => a.engagements = n(),
            "--days" => a.days = n() as i64,
            "--seconds" => a.seconds = n(),
            "--clients" => a.clients = n() as usize,
            "--samples" => a.samples = n() as usize,
            "--ingest-batches" => a.ingest_batches = n() as usize,
            "--ingest-rounds" => a.ingest_rounds = n() as usize,
            _ => {}
        }
        i += 1;
    }
    a
}

/// xorshift64*: the same year on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config(dir: &std::path::Path, analytics: bool) -> Config {
    let mut config = Config::for_data_dir(dir.to_path_buf());
    config.admin_email = Some(ADMIN_EMAIL.into());
    config.admin_password = Some(PASSWORD.into());
    config.default_region = Some("SG".into());
    config.log = "warn".into();
    config.analytics.worker = analytics;
    config
}

async fn start(dir: &std::path::Path, analytics: bool) -> Application {
    let app = Application::build(config(dir, analytics)).await.unwrap();
    app.state().projector.warmup().wait_ready().await;
    app
}

async fn post(client: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) -> Value {
    let mut req = client.post(url).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

async fn get(client: &reqwest::Client, url: &str, token: &str) -> Value {
    let resp = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

async fn login(client: &reqwest::Client, addr: SocketAddr, email: &str) -> String {
    let v = post(
        client,
        &format!("http://{addr}/v1/auth/login"),
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await;
    v["access_token"].as_str().unwrap().to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The engagement of draw `n` on `day`, by one of `agents` agents.
fn draw(rng: &mut Rng, day: NaiveDate, agents: usize) -> (Engagement, usize) {
    // Two uniform draws, the lower kept: agent 0 works the most.
    let agent = rng.below(agents as u64).min(rng.below(agents as u64)) as usize;
    let second = 8 * 3600 + rng.below(12 * 3600) as i64;
    let at = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap()) + Days::seconds(second);
    let direction = if rng.below(2) == 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let detail = match rng.below(10) {
        0..=3 => EngagementDetail::Call {
            direction,
            duration_s: rng.below(900) as u32,
            status: if rng.below(4) == 0 {
                CallStatus::Missed
            } else {
                CallStatus::Answered
            },
        },
        4..=5 => EngagementDetail::Sms {
            direction,
            body: String::new(),
        },
        6..=7 => EngagementDetail::Whatsapp {
            direction,
            payload_type: PayloadType::Text,
            payload: String::new(),
        },
        8 => EngagementDetail::Email {
            direction,
            subject: String::new(),
        },
        _ => EngagementDetail::Web {
            url: String::new(),
            view: String::new(),
            view_desc: None,
            category: None,
            object_id: None,
        },
    };
    let engagement = Engagement {
        id: EngagementId::new(),
        customer_id: CustomerId(uuid::Uuid::from_u128(u128::from(rng.below(CUSTOMERS)) + 1)),
        occurred_at: at,
        recorded_at: at,
        source: Source::default(),
        detail,
    };
    (engagement, agent)
}

/// Writes a year of rollups for `agents` (their ids) into the store in `dir`.
async fn fill_rollups(
    store: &dyn crm_models::store::Store,
    args: &Args,
    agents: &[String],
    today: NaiveDate,
) {
    let started = Instant::now();
    let mut rng = Rng(0x5EED_2026_1207);
    let per_day = args.engagements / args.days as u64;
    // The consumer is running: go on from wherever it stands.
    let mut cursor = store.analytics_cursor().await.unwrap();
    let (mut rows, mut markers) = (0usize, 0usize);
    for d in 0..args.days {
        let day = today - Days::days(args.days - 1 - d);
        let mut tally = Tally::new(Zone::default());
        for _ in 0..per_day {
            let (e, agent) = draw(&mut rng, day, agents.len());
            let agent = Some(agents[agent].as_str());
            tally.engagement(&e, e.customer_id, agent);
            let outbound = e.detail.direction() == Some(Direction::Outbound);
            if outbound && e.channel() != crm_models::engagement::Channel::Web && rng.below(5) == 0
            {
                let waited = 30 + rng.below(4 * 3600);
                tally.response(&e, agent, waited);
            }
        }
        let batch = tally.into_batch();
        rows += batch.rows.len();
        markers += batch.engaged.len();
        let to = uuid::Uuid::now_v7();
        while !store.apply_analytics(cursor, to, &batch).await.unwrap() {
            cursor = store.analytics_cursor().await.unwrap();
        }
        cursor = Some(to);
    }
    println!(
        "rollups: {} engagements over {} days, {} agents: {rows} daily rows, {markers} distinct-customer markers, written in {:.1} s",
        per_day * args.days as u64,
        args.days,
        agents.len(),
        started.elapsed().as_secs_f64()
    );
}

struct Load {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// `clients` clients send the `urls` round robin for `seconds`.
async fn load(
    client: &reqwest::Client,
    urls: &[String],
    token: Option<&str>,
    clients: usize,
    seconds: u64,
) -> Load {
    let urls = Arc::new(urls.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    // Warm-up, not measured.
    for url in urls.iter() {
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert!(req.send().await.unwrap().status().is_success(), "{url}");
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, urls, next, token) = (
            client.clone(),
            urls.clone(),
            next.clone(),
            token.map(str::to_string),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                let t = Instant::now();
                let mut req = client.get(url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{url}: {}", resp.status());
                let body = resp.bytes().await.unwrap();
                assert!(!body.is_empty());
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
    Load {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

async fn spawn_baseline() -> SocketAddr {
    async fn small() -> Json<Value> {
        Json(json!({"metric": "calls_outbound", "items": [{"rank": 1, "value": 1}]}))
    }
    let router = Router::new().route("/small", route_get(small));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// The next `leaderboard.updated` on `response` whose data `done` accepts.
async fn board_update(
    response: &mut reqwest::Response,
    buffer: &mut String,
    done: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if !block.lines().any(|l| l == "event: leaderboard.updated") {
                    continue;
                }
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                let data: Value = serde_json::from_str(data).unwrap();
                if done(&data) {
                    return data;
                }
            }
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("a leaderboard update within 30 s")
}

fn value_of(board: &Value, agent: &str) -> Option<u64> {
    board["items"]
        .as_array()?
        .iter()
        .find(|i| i["agent"]["id"] == agent)
        .and_then(|i| i["value"].as_u64())
}

fn detail(i: usize) -> Value {
    match i % 5 {
        0 => {
            json!({"channel": "sms", "direction": "inbound", "body": "Is the unit still available?"})
        }
        1 => {
            json!({"channel": "call", "direction": "outbound", "duration_s": 95, "status": "answered"})
        }
        2 => {
            json!({"channel": "whatsapp", "direction": "inbound", "payload_type": "text", "payload": "Saturday?"})
        }
        3 => json!({"channel": "email", "direction": "outbound", "subject": "Viewing confirmed"}),
        _ => {
            json!({"channel": "call", "direction": "inbound", "duration_s": 30, "status": "answered"})
        }
    }
}

fn ingest_batch(b: usize, customers: &[String], today: NaiveDate) -> Vec<u8> {
    let items: Vec<Value> = (0..BATCH)
        .map(|i| {
            let n = b * BATCH + i;
            let mut item = detail(n);
            item["customer_id"] = json!(customers[n % customers.len()]);
            item["occurred_at"] = json!(format!(
                "{today}T{:02}:{:02}:{:02}Z",
                n % 24,
                (n / 24) % 60,
                n % 60
            ));
            item
        })
        .collect();
    serde_json::to_vec(&json!({ "items": items })).unwrap()
}

/// Posts `batches` (4 at a time) and gives engagements per second.
async fn ingest(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    batches: &[Vec<u8>],
) -> f64 {
    let url = format!("http://{addr}/v1/engagements/batch");
    let next = Arc::new(AtomicUsize::new(0));
    let batches = Arc::new(batches.to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, token, next, batches) = (
            client.clone(),
            url.clone(),
            token.to_string(),
            next.clone(),
            batches.clone(),
        );
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
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["rejected"], 0, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (batches.len() * BATCH) as f64 / start.elapsed().as_secs_f64()
}

async fn create_customers(client: &reqwest::Client, addr: SocketAddr, token: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..500 {
        let v = post(
            client,
            &format!("http://{addr}/v1/customers"),
            Some(token),
            &json!({"name": format!("Customer {i}"), "phones": [format!("+65 9100 {i:04}")]}),
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
    let today = Zone::default().day_of(&crm_models::time::now());

    // The agents, made through the API (with their teams), then the year's
    // rollups written into the store.
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), true).await;
    let addr = app.local_addr();
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let admin = login(&client, addr, ADMIN_EMAIL).await;
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let user = post(
            &client,
            &format!("http://{addr}/v1/users"),
            Some(&admin),
            &json!({"email": format!("agent{i}@example.com"), "name": format!("Agent {i}"),
                    "password": PASSWORD, "role": "agent", "team": TEAMS[i % TEAMS.len()]}),
        )
        .await;
        agents.push(format!("user:{}", user["id"].as_str().unwrap()));
    }
    fill_rollups(state.crm.store().as_ref(), &args, &agents, today).await;
    let baseline = spawn_baseline().await;
    let admin = login(&client, addr, ADMIN_EMAIL).await;
    let agent = login(&client, addr, "agent0@example.com").await;

    // Queries.
    let base = format!("http://{addr}/v1/analytics");
    let metrics = [
        "calls_outbound",
        "talk_seconds",
        "sms_outbound",
        "whatsapp_outbound",
        "customers_engaged",
        "first_response_median",
    ];
    let board = |period: &str, team: Option<&str>| -> Vec<String> {
        metrics
            .iter()
            .map(|m| {
                let mut url = format!("{base}/leaderboard?metric={m}&period={period}&limit=10");
                if let Some(t) = team {
                    url.push_str(&format!("&team={t}"));
                }
                url
            })
            .collect()
    };
    let year_from = today - Days::days(args.days - 1);
    let series = |group_by: &str| -> Vec<String> {
        metrics
            .iter()
            .map(|m| {
                format!("{base}/series?metric={m}&group_by={group_by}&from={year_from}&to={today}")
            })
            .collect()
    };
    let first = get(&client, &board("today", None)[0], &admin).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 10, "{first}");
    let year = get(&client, &series("day")[0], &admin).await;
    assert_eq!(
        year["items"].as_array().map(Vec::len),
        Some(args.days as usize),
        "a point per day: {year}"
    );

    let rows: Vec<(String, Vec<String>, Option<&str>)> = vec![
        (
            "baseline: bare axum route, small JSON".into(),
            vec![format!("http://{baseline}/small")],
            None,
        ),
        (
            "leaderboard, today".into(),
            board("today", None),
            Some(&admin),
        ),
        (
            "leaderboard, today, one team".into(),
            board("today", Some("North")),
            Some(&admin),
        ),
        (
            "leaderboard, this week".into(),
            board("week", None),
            Some(&admin),
        ),
        (
            "leaderboard, this month".into(),
            board("month", None),
            Some(&admin),
        ),
        (
            "leaderboard, today, asked by an agent".into(),
            board("today", None),
            Some(&agent),
        ),
        ("series: a year by day".into(), series("day"), Some(&admin)),
        (
            "series: a year by agent".into(),
            series("agent"),
            Some(&admin),
        ),
        (
            "series: a year by team".into(),
            series("team"),
            Some(&admin),
        ),
        (
            "overview".into(),
            vec![format!("{base}/overview")],
            Some(&admin),
        ),
    ];
    println!();
    println!(
        "| query ({} agents, {} engagements, {} days) | clients | q/s | p50 | p99 |",
        args.agents, args.engagements, args.days
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, urls, token) in &rows {
        let r = load(&client, urls, *token, args.clients, args.seconds).await;
        println!(
            "| {name} | {} | {:.0} | {} | {} |",
            args.clients,
            r.per_second,
            ms(r.p50),
            ms(r.p99)
        );
        let one = load(&client, urls, *token, 1, args.seconds.div_ceil(2)).await;
        println!(
            "| {name} | 1 | {:.0} | {} | {} |",
            one.per_second,
            ms(one.p50),
            ms(one.p99)
        );
    }

    // Engagement to live board.
    let mut stream = client
        .get(format!(
            "http://{addr}/v1/stream?leaderboard=calls_outbound"
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(stream.status().is_success());
    let mut buffer = String::new();
    let now_board = get(&client, &board("today", None)[0], &admin).await;
    let top_id = now_board["items"][0]["agent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let leader = agents.iter().position(|a| *a == top_id).unwrap();
    let top = login(&client, addr, &format!("agent{leader}@example.com")).await;
    let top_id = &top_id;
    let before = value_of(&now_board, top_id).unwrap();
    let mut delays = Vec::new();
    // The first one brings the watcher's boards up to date (the rollups
    // above were written behind its back), not measured.
    for i in 0..=args.samples {
        let at = crm_models::time::format(&crm_models::time::now());
        let t = Instant::now();
        post(
            &client,
            &format!("http://{addr}/v1/engagements"),
            Some(&top),
            &json!({"customer": {"phone": format!("+65 8123 {:04}", i % 10_000)}, "channel": "call",
                    "direction": "outbound", "occurred_at": at, "duration_s": 60, "status": "answered"}),
        )
        .await;
        let expected = before + i as u64 + 1;
        board_update(&mut stream, &mut buffer, |d| {
            value_of(d, top_id).is_some_and(|v| v >= expected)
        })
        .await;
        if i > 0 {
            delays.push(t.elapsed());
        }
        // The next one after the board's minimum interval: each update is
        // the first the limit allows.
        tokio::time::sleep(crm_api::analytics::boards::MIN_INTERVAL + Duration::from_millis(100))
            .await;
    }
    delays.sort();
    println!();
    println!(
        "engagement to leaderboard.updated ({} samples, one at a time): p50 {}, p99 {}, max {}",
        delays.len(),
        ms(percentile(&delays, 0.50)),
        ms(percentile(&delays, 0.99)),
        ms(*delays.last().unwrap())
    );

    // Ingest with the consumer off and on.
    let off_dir = tempfile::tempdir().unwrap();
    let on_dir = tempfile::tempdir().unwrap();
    let mut instances = Vec::new();
    for (dir, on) in [(&off_dir, false), (&on_dir, true)] {
        let app = start(dir.path(), on).await;
        let addr = app.local_addr();
        let state = app.state().clone();
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let token = login(&client, addr, ADMIN_EMAIL).await;
        let customers = create_customers(&client, addr, &token).await;
        instances.push((addr, token, customers, state));
    }
    println!();
    println!(
        "| ingest, batches of {BATCH}, 4 clients, round | analytics off: engagements/s | analytics on: engagements/s | on/off |"
    );
    println!("| --- | --- | --- | --- |");
    let mut ratios = Vec::new();
    let mut sent = 0usize;
    let mut lag = Vec::new();
    for round in 0..args.ingest_rounds {
        let batches: Vec<Vec<u8>> = (0..args.ingest_batches)
            .map(|b| ingest_batch(round * args.ingest_batches + b, &instances[0].2, today))
            .collect();
        let off = ingest(&client, instances[0].0, &instances[0].1, &batches).await;
        let batches: Vec<Vec<u8>> = (0..args.ingest_batches)
            .map(|b| ingest_batch(round * args.ingest_batches + b, &instances[1].2, today))
            .collect();
        let on = ingest(&client, instances[1].0, &instances[1].1, &batches).await;
        let done = Instant::now();
        sent += batches.len() * BATCH;
        // The consumer catches up (bounded: it counts a page at a time).
        let deadline = done + Duration::from_secs(600);
        while counted_on(&instances[1].3, today).await < sent as u64 {
            assert!(Instant::now() < deadline, "the consumer did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lag.push(done.elapsed());
        ratios.push(on / off);
        println!("| {} | {off:.0} | {on:.0} | {:.2} |", round + 1, on / off);
    }
    ratios.sort_by(f64::total_cmp);
    println!();
    println!(
        "median on/off {:.2}; rollups counted every engagement {} after the last batch (per round: {})",
        ratios[ratios.len() / 2],
        ms(*lag.iter().max().unwrap()),
        lag.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );
}

async fn counted_on(state: &crm_api::state::AppState, day: NaiveDate) -> u64 {
    let rows = state.crm.store().analytics_rows(day, day).await.unwrap();
    rows.iter()
        .map(|r| Metric::Engagements.of(&r.counts) + r.counts.web_views)
        .sum()
}
