//! Redis goes away for 20 s while four clients write (issue 14).
//!
//! crm-api runs in-process on an embedded store, with a `redis-server` of
//! the test's own (append-only file, fsync on every write, as a production
//! Redis with AOF) for the event stream and the index. Four writers post
//! customers and engagements, each with its own phone and email, through a
//! client that gives up after 2 s. The test SIGKILLs Redis for 20 s in the
//! middle and starts it again on the same port. Then:
//!
//! - every write the server acknowledged is in the store;
//! - writes were acknowledged while Redis was down (a count, not a time);
//! - while it was down, `/readyz` said `degraded` (index unreachable, relay
//!   not relaying), the store still answered reads and caller-ID answered
//!   from the store;
//! - once Redis is back, `events_pending` drops to 0, `/readyz` says
//!   `ready`, and the index converges to the store with no rebuild
//!   (`Projector::verify` clean);
//! - every customer acknowledged is found by its phone through
//!   `GET /v1/search`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "common/processes.rs"]
mod processes;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect_json, spawn_app_with, TestApp};
use crm_models::ids::{CustomerId, EngagementId};
use futures::StreamExt;
use parking_lot::Mutex;
use processes::RedisProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WRITERS: usize = 4;
/// Upper bound of each writer's requests, whatever happens.
const MAX_WRITES_PER_WRITER: usize = 500;
/// Each writer sends at most one request per tick (a pace, not a wait for
/// anything: the checks never depend on it).
const PACE: Duration = Duration::from_millis(100);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(20);
/// Acknowledged writes wanted before the outage and after it.
const WRITES_AROUND_OUTAGE: usize = 20;

const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

/// A write the server acknowledged.
#[derive(Debug, Clone)]
struct Ack {
    customer_id: CustomerId,
    engagement_id: Option<EngagementId>,
    phone: String,
}

#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    /// Acknowledged writes that were sent and answered in the same phase.
    acked_in: [AtomicUsize; 3],
    /// Writes without an answer (the client gave up), by the phase they began in.
    unanswered_in: [AtomicUsize; 3],
    /// Answers that are neither 2xx nor a client timeout.
    unexpected: Mutex<Vec<String>>,
}

/// The n-th write of writer w: a phone (a Singapore mobile number of its
/// own) and an email nobody else uses.
fn identifiers(w: usize, n: usize) -> (String, String) {
    (
        format!("+658{}{n:06}", w + 1),
        format!("writer{w}.n{n}@outage.example"),
    )
}

async fn writer(w: usize, address: String, token: String, shared: Arc<Shared>) {
    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..MAX_WRITES_PER_WRITER {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        pace.tick().await;
        let (phone, email) = identifiers(w, n);
        let (path, body) = if n % 2 == 0 {
            (
                "/v1/customers",
                json!({"name": format!("Writer{w} Number{n}"), "phones": [phone], "emails": [email]}),
            )
        } else {
            (
                "/v1/engagements",
                json!({
                    "customer": {"phone": phone, "email": email, "name": format!("Caller{w} Number{n}")},
                    "channel": "sms", "direction": "inbound",
                    "body": format!("message {n} from writer {w}"),
                    "client_event_id": format!("w{w}-n{n}"),
                }),
            )
        };
        let began = shared.phase.load(Ordering::SeqCst);
        let sent = client
            .post(format!("{address}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        let answer = match sent {
            Ok(r) => {
                let status = r.status();
                r.text().await.map(|text| (status, text))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((status, text)) if status.is_success() => {
                let ended = shared.phase.load(Ordering::SeqCst);
                let v: Value = serde_json::from_str(&text).unwrap();
                let ack = if n % 2 == 0 {
                    Ack {
                        customer_id: v["id"].as_str().unwrap().parse().unwrap(),
                        engagement_id: None,
                        phone,
                    }
                } else {
                    Ack {
                        customer_id: v["customer_id"].as_str().unwrap().parse().unwrap(),
                        engagement_id: Some(v["id"].as_str().unwrap().parse().unwrap()),
                        phone,
                    }
                };
                shared.acks.lock().push(ack);
                if began == ended {
                    shared.acked_in[usize::from(began)].fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok((status, text)) => shared
                .unexpected
                .lock()
                .push(format!("{path} answered {status}: {text}")),
            Err(e) if e.is_timeout() => {
                shared.unanswered_in[usize::from(began)].fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => shared.unexpected.lock().push(format!("{path}: {e}")),
        }
    }
}

async fn readyz(app: &TestApp) -> Value {
    app.readyz().await
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {}s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_redis_outage_and_the_index_converges_without_a_rebuild() {
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProcess::start(redis_dir.path(), true);
    let url = redis.url();
    let prefix = format!("crmoutage:{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(move |c| {
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
    })
    .await;
    let token = app.admin_token().await;
    let ready = readyz(&app).await;
    assert_eq!(ready["status"], "ready", "{ready}");

    let shared = Arc::new(Shared::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                app.address.clone(),
                token.clone(),
                shared.clone(),
            ))
        })
        .collect();
    wait_for(
        "writes acknowledged before the outage",
        Duration::from_secs(30),
        || shared.acked_in[usize::from(BEFORE)].load(Ordering::SeqCst) >= WRITES_AROUND_OUTAGE,
    )
    .await;

    // --- Redis down ---
    tokio::task::block_in_place(|| redis.kill());
    shared.phase.store(DURING, Ordering::SeqCst);
    let outage_began = Instant::now();

    let created: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Outage Olsen", "emails": ["olsen@example.com"], "phones": ["+6581226418"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let olsen = created["id"].as_str().unwrap().to_string();
    let ready = readyz(&app).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["index_reachable"], false, "{ready}");
    assert!(
        ready["events_pending"].as_u64().unwrap() >= 1,
        "Olsen's event waits in the store: {ready}"
    );
    // The store still answers reads.
    expect_json::<Value>(
        app.get(&format!("/v1/customers/{olsen}"), &token).await,
        StatusCode::OK,
    )
    .await;
    // Caller-ID answers from the store, however the number is typed.
    for typed in ["%2B65%208122%206418", "8122%206418?region=SG"] {
        let found: Value = expect_json(
            app.get(&format!("/v1/lookup/phone/{typed}"), &token).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            found["matches"][0]["id"],
            olsen.as_str(),
            "{typed}: {found}"
        );
        assert_eq!(found["matches"][0]["summary"]["name"], "Outage Olsen");
    }
    // `/readyz` says degraded for as long as Redis is down.
    let mut most_pending = 0;
    let mut relay_said_stuck = false;
    let mut polls = 0;
    while outage_began.elapsed() < OUTAGE {
        let ready = readyz(&app).await;
        assert_eq!(ready["status"], "degraded", "during the outage: {ready}");
        assert_eq!(
            ready["index_reachable"], false,
            "during the outage: {ready}"
        );
        most_pending = most_pending.max(ready["events_pending"].as_u64().unwrap());
        relay_said_stuck |= ready["events_relaying"] == false;
        polls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        relay_said_stuck,
        "/readyz never reported events_relaying=false in {polls} polls"
    );

    // --- Redis back, with what it held ---
    shared.phase.store(AFTER, Ordering::SeqCst);
    tokio::task::block_in_place(|| redis.restart());
    let back = Instant::now();
    wait_for(
        "writes acknowledged after the outage",
        Duration::from_secs(60),
        || shared.acked_in[usize::from(AFTER)].load(Ordering::SeqCst) >= WRITES_AROUND_OUTAGE,
    )
    .await;
    shared.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    let acks = shared.acks.lock().clone();
    let count = |c: &[AtomicUsize; 3]| c.each_ref().map(|n| n.load(Ordering::SeqCst));
    println!(
        "acknowledged: {} in all; before/during/after the outage: {:?}; \
         unanswered within 2 s (by phase begun): {:?}; most events pending: {most_pending}",
        acks.len(),
        count(&shared.acked_in),
        count(&shared.unanswered_in),
    );
    let unexpected = shared.unexpected.lock().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    assert!(
        shared.acked_in[usize::from(DURING)].load(Ordering::SeqCst) > 0,
        "no write was acknowledged while Redis was down"
    );
    assert!(most_pending >= 1);

    // The relay catches up, and the index follows, with no rebuild.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = readyz(&app).await;
        if ready["events_pending"] == 0 && ready["status"] == "ready" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not catch up within 60 s: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relayed_after = back.elapsed();
    let lag = app.state.projector.verify().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = app.state.projector.verify().await.unwrap();
        if report.is_clean() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the index did not converge to the store within 60 s: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Timings are printed, never asserted on.
    println!(
        "after Redis came back: the relay caught up in {:.1} s (then /readyz said ready with \
         0 pending while {} customers were missing from the index), the index matched the \
         store in {:.1} s",
        relayed_after.as_secs_f64(),
        lag.missing.len(),
        back.elapsed().as_secs_f64()
    );
    // Every acknowledged write is in the store.
    let store = app.state.crm.store().clone();
    for ack in &acks {
        assert!(
            store.get_customer(ack.customer_id).await.unwrap().is_some(),
            "acknowledged customer {} is not in the store",
            ack.customer_id
        );
        if let Some(id) = ack.engagement_id {
            let stored = store.get_engagement(id).await.unwrap();
            assert!(
                stored.is_some_and(|e| e.customer_id == ack.customer_id),
                "acknowledged engagement {id} of {} is not in the store",
                ack.customer_id
            );
        }
    }

    // Every acknowledged customer is found by its phone.
    let token = &token;
    let app = &app;
    let not_found: Vec<String> = futures::stream::iter(acks.iter())
        .map(|ack| async move {
            let r = app
                .client
                .get(app.url("/v1/search"))
                .query(&[("q", ack.phone.as_str())])
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let body: Value = expect_json(r, StatusCode::OK).await;
            let id = ack.customer_id.to_string();
            let found = body["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["id"] == id.as_str()));
            (!found).then(|| format!("{} ({id}): {body}", ack.phone))
        })
        .buffer_unordered(8)
        .filter_map(|missing| async move { missing })
        .collect()
        .await;
    assert!(
        not_found.is_empty(),
        "{} of {} acknowledged customers are not found by phone: {:#?}",
        not_found.len(),
        acks.len(),
        &not_found[..not_found.len().min(20)]
    );
    let found: Value =
        expect_json(app.get("/v1/search?q=olsen", token).await, StatusCode::OK).await;
    assert_eq!(found["items"][0]["id"], olsen.as_str(), "{found}");
}
