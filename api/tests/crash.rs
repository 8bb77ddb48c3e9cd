//! SIGKILL of crm-api during concurrent merges and engagement batches
//! (issue 14), five rounds.
//!
//! The real `crm-api` binary runs as a child process on MongoDB (a
//! `secantusd-py` of the test's own, its own database) and Redis (a
//! `redis-server` of the test's own, its own key prefix), configured by
//! environment as in production. Each round creates customer pairs, runs
//! hand merges (some of them crossing: A into B and B into A at once) and
//! engagement batches that name the pairs' phones (some items name one
//! customer's phone with the other's email, so that automatic merges race
//! the hand ones), and SIGKILLs crm-api while they are in flight. crm-api
//! is started again, and then:
//!
//! - no half-applied merge: every merged customer points at an existing
//!   customer, its chain ends at an active one (no cycle), a merge record
//!   names it, it owns no identity and holds no engagement; every open merge
//!   record's customers are merged; every identifier is owned by an active
//!   customer (read from the store);
//! - no acknowledged write lost: every customer, merge and engagement the
//!   server acknowledged is in the store, and every engagement is on the
//!   timeline `GET /v1/customers/{id}/engagements` of the customer it was
//!   acknowledged for;
//! - at the end, once the relay has caught up (`events_pending` 0),
//!   `crm-indexer verify` exits 0 with the same environment, and caller-ID
//!   (`GET /v1/lookup/phone/..`) answers each phone's owner;
//! - every merge is undoable: `POST /v1/merges/{id}/undo` answers 200 once,
//!   then 409 `merge_refused`, for every merge record of the five rounds
//!   (acknowledged or not); afterwards the store's invariants hold, nothing
//!   is merged, and `crm-indexer verify` exits 0 again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "common/processes.rs"]
mod processes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_models::customer::{Customer, CustomerStatus};
use crm_models::ids::{CustomerId, EngagementId, MergeId};
use crm_models::linking::MergeRecord;
use crm_models::store::mongo::MongoStore;
use crm_models::store::prelude::*;
use crm_models::store::{CustomerCursor, EngagementFilter};
use futures::StreamExt;
use parking_lot::Mutex;
use processes::{crm_indexer_binary, ApiProcess as Api, RedisProcess};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ROUNDS: usize = 5;
/// Customer pairs created per round.
const PAIRS: usize = 16;
/// Every third pair is also merged the other way round at the same moment.
const CROSSING_EVERY: usize = 3;
const MERGE_WORKERS: usize = 3;
const BATCH_WORKERS: usize = 2;
/// Upper bound of each batch worker's batches in a round.
const MAX_BATCHES: usize = 40;
const BATCH_ITEMS: usize = 10;
/// crm-api is killed once this many merges of the round are acknowledged
/// (and one batch), while the rest are in flight or queued.
const KILL_AFTER_MERGES: usize = 4;

const ADMIN_EMAIL: &str = "crash-admin@example.com";
const ADMIN_PASSWORD: &str = "a long enough admin password";
const JWT_SECRET: &str = "crash-test-secret-of-at-least-32-bytes-0123456789";

/// Sends a request; `None` when no answer came (the server is gone).
async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Option<(StatusCode, Value)> {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(body);
    }
    let response = req.send().await.ok()?;
    let status = response.status();
    let text = response.text().await.ok()?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some((status, value))
}

/// Like [`send`], for requests that must be answered.
async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    send(client, method.clone(), url, token, body)
        .await
        .unwrap_or_else(|| panic!("{method} {url}: no answer"))
}

fn phone(round: usize, pair: usize, side: usize) -> String {
    // Singapore mobile numbers: 9, a digit 1-5, six more.
    format!("+659{round}{pair:03}{side}00")
}

fn email(round: usize, pair: usize, side: usize) -> String {
    format!("person.r{round}.p{pair}.s{side}@crash.example")
}

/// What the server acknowledged, over all rounds.
#[derive(Default)]
struct Acked {
    customers: Mutex<Vec<CustomerId>>,
    /// Engagement and the customer it was acknowledged for.
    engagements: Mutex<Vec<(EngagementId, CustomerId)>>,
    merges: Mutex<Vec<MergeId>>,
    /// Answers that should not happen (neither success, nor a refusal the
    /// race explains, nor a dead server).
    unexpected: Mutex<Vec<String>>,
}

struct Round {
    /// `(a, b)` per pair.
    pairs: Vec<(CustomerId, CustomerId)>,
}

async fn create_pairs(
    client: &reqwest::Client,
    api: &Api,
    token: &str,
    round: usize,
    acked: &Acked,
) -> Round {
    let url = api.url("/v1/customers");
    let made: Vec<(usize, usize, CustomerId)> =
        futures::stream::iter((0..PAIRS).flat_map(|p| [(p, 0), (p, 1)]))
            .map(|(p, side)| {
                let url = url.clone();
                async move {
                    let body = json!({
                        "name": format!("Crash R{round} {} {p}", ["Alpha", "Beta"][side]),
                        "phones": [phone(round, p, side)],
                        "emails": [email(round, p, side)],
                    });
                    let (status, v) = call(client, Method::POST, &url, token, Some(&body)).await;
                    assert_eq!(status, StatusCode::CREATED, "{v}");
                    (p, side, v["id"].as_str().unwrap().parse().unwrap())
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
    let mut pairs = vec![(CustomerId::new(), CustomerId::new()); PAIRS];
    for (p, side, id) in made {
        if side == 0 {
            pairs[p].0 = id;
        } else {
            pairs[p].1 = id;
        }
        acked.customers.lock().push(id);
    }
    Round { pairs }
}

/// What a round had acknowledged, and had in flight, when crm-api was killed.
struct Killed {
    merges: usize,
    items: usize,
    merges_in_flight: usize,
    batches_in_flight: usize,
}

/// Runs merges and batches against crm-api and SIGKILLs it while they are
/// in flight.
async fn race_and_kill(
    client: &reqwest::Client,
    api: &mut Api,
    token: &str,
    round: usize,
    r: &Round,
    acked: &Arc<Acked>,
) -> Killed {
    // Merge jobs `(survivor, merged)`; a crossing one right after its twin.
    let mut jobs = Vec::new();
    for (p, &(a, b)) in r.pairs.iter().enumerate() {
        jobs.push((b, a));
        if p % CROSSING_EVERY == 0 {
            jobs.push((a, b));
        }
    }
    let jobs = Arc::new(jobs);
    let next_job = Arc::new(AtomicUsize::new(0));
    let merges_acked = Arc::new(AtomicUsize::new(0));
    let items_acked = Arc::new(AtomicUsize::new(0));
    let batches_acked = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    // Requests sent and not answered yet, of both kinds.
    let in_flight = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    // The merges begin once a batch has been acknowledged, so that the kill
    // finds both kinds in flight.
    let (first_batch, batch_acked) = tokio::sync::watch::channel(false);
    let first_batch = Arc::new(first_batch);
    let mut tasks = Vec::new();
    for _ in 0..MERGE_WORKERS {
        let (client, token, address) = (client.clone(), token.to_string(), api.address.clone());
        let (jobs, next_job, merges_acked, killed, acked, in_flight) = (
            jobs.clone(),
            next_job.clone(),
            merges_acked.clone(),
            killed.clone(),
            acked.clone(),
            in_flight.clone(),
        );
        let mut batch_acked = batch_acked.clone();
        tasks.push(tokio::spawn(async move {
            let _ = batch_acked.wait_for(|acked| *acked).await;
            while !killed.load(Ordering::SeqCst) {
                let Some(&(survivor, merged)) = jobs.get(next_job.fetch_add(1, Ordering::SeqCst))
                else {
                    break;
                };
                let url = format!("{address}/v1/customers/{survivor}/merge");
                let body = json!({ "ids": [merged.to_string()] });
                in_flight[0].fetch_add(1, Ordering::SeqCst);
                let answer = send(&client, Method::POST, &url, &token, Some(&body)).await;
                in_flight[0].fetch_sub(1, Ordering::SeqCst);
                match answer {
                    None => break,
                    Some((StatusCode::OK, v)) => {
                        acked
                            .merges
                            .lock()
                            .push(v["merge_id"].as_str().unwrap().parse().unwrap());
                        merges_acked.fetch_add(1, Ordering::SeqCst);
                    }
                    // The crossing twin won, or an automatic merge did.
                    Some((StatusCode::CONFLICT, v))
                        if v["code"] == "merge_refused" || v["code"] == "customer_merged" => {}
                    Some((status, v)) => acked
                        .unexpected
                        .lock()
                        .push(format!("merge {merged} into {survivor}: {status} {v}")),
                }
            }
        }));
    }
    for worker in 0..BATCH_WORKERS {
        let (client, token, address) = (client.clone(), token.to_string(), api.address.clone());
        let (items_acked, batches_acked, killed, acked, in_flight, first_batch) = (
            items_acked.clone(),
            batches_acked.clone(),
            killed.clone(),
            acked.clone(),
            in_flight.clone(),
            first_batch.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for batch in 0..MAX_BATCHES {
                if killed.load(Ordering::SeqCst) {
                    break;
                }
                let items: Vec<Value> = (0..BATCH_ITEMS)
                    .map(|k| {
                        let p = (batch + k + worker) % PAIRS;
                        let customer = if k % 7 == 3 {
                            // Evidence that A and B are one person.
                            json!({"phone": phone(round, p, 0), "email": email(round, p, 1)})
                        } else {
                            json!({"phone": phone(round, p, k % 2)})
                        };
                        json!({
                            "customer": customer, "channel": "sms", "direction": "inbound",
                            "body": format!("round {round} worker {worker} batch {batch} item {k}"),
                            "client_event_id": format!("r{round}-w{worker}-b{batch}-k{k}"),
                        })
                    })
                    .collect();
                let url = format!("{address}/v1/engagements/batch");
                let body = json!({ "items": items });
                in_flight[1].fetch_add(1, Ordering::SeqCst);
                let answer = send(&client, Method::POST, &url, &token, Some(&body)).await;
                in_flight[1].fetch_sub(1, Ordering::SeqCst);
                match answer {
                    None => break,
                    Some((StatusCode::OK, v)) => {
                        let mut engagements = Vec::new();
                        for item in v["results"].as_array().unwrap() {
                            match item["status"].as_str().unwrap() {
                                "created" | "duplicate" => engagements.push((
                                    item["id"].as_str().unwrap().parse().unwrap(),
                                    item["customer_id"].as_str().unwrap().parse().unwrap(),
                                )),
                                _ => acked
                                    .unexpected
                                    .lock()
                                    .push(format!("batch item rejected: {item}")),
                            }
                        }
                        items_acked.fetch_add(engagements.len(), Ordering::SeqCst);
                        acked.engagements.lock().extend(engagements);
                        batches_acked.fetch_add(1, Ordering::SeqCst);
                        first_batch.send_replace(true);
                    }
                    Some((status, v)) => {
                        acked.unexpected.lock().push(format!("batch: {status} {v}"))
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while merges_acked.load(Ordering::SeqCst) < KILL_AFTER_MERGES
        || batches_acked.load(Ordering::SeqCst) < 1
    {
        assert!(
            Instant::now() < deadline,
            "round {round}: {} merges and {} batches acknowledged in 30 s",
            merges_acked.load(Ordering::SeqCst),
            batches_acked.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flying = in_flight.each_ref().map(|n| n.load(Ordering::SeqCst));
    tokio::task::block_in_place(|| api.kill());
    killed.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    Killed {
        merges: merges_acked.load(Ordering::SeqCst),
        items: items_acked.load(Ordering::SeqCst),
        merges_in_flight: flying[0],
        batches_in_flight: flying[1],
    }
}

/// Every customer in the store.
async fn all_customers(store: &MongoStore) -> BTreeMap<CustomerId, Customer> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store.list_customers(None, after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(CustomerCursor {
            updated_at: last.updated_at,
            id: last.id,
        });
        let full = page.len() == 500;
        out.extend(page.into_iter().map(|c| (c.id, c)));
        if !full {
            break;
        }
    }
    out
}

/// Checks the store's invariants and the acknowledged writes; returns the
/// problems found and the merge records that are not undone.
async fn check_store(
    store: &MongoStore,
    identifier_keys: &[String],
    acked: &Acked,
) -> (Vec<String>, BTreeMap<MergeId, MergeRecord>) {
    let customers = all_customers(store).await;
    let mut problems = Vec::new();
    let mut open: BTreeMap<MergeId, MergeRecord> = BTreeMap::new();
    let is_active = |id: &CustomerId| {
        customers
            .get(id)
            .is_some_and(|c| c.status != CustomerStatus::Merged)
    };
    for c in customers.values() {
        let records = store.merges_of(c.id).await.unwrap();
        for m in records.iter().filter(|m| m.undone_at.is_none()) {
            open.insert(m.id, m.clone());
        }
        if c.status != CustomerStatus::Merged {
            if let Some(into) = c.merged_into {
                problems.push(format!(
                    "{} is {:?} with merged_into {into}",
                    c.id, c.status
                ));
            }
            continue;
        }
        let Some(into) = c.merged_into else {
            problems.push(format!("{} is merged into nothing", c.id));
            continue;
        };
        if !customers.contains_key(&into) {
            problems.push(format!(
                "{} is merged into {into}, which does not exist",
                c.id
            ));
            continue;
        }
        let mut at = into;
        let mut steps = 0;
        while !is_active(&at) && steps <= customers.len() {
            match customers.get(&at).and_then(|x| x.merged_into) {
                Some(next) => at = next,
                None => break,
            }
            steps += 1;
        }
        if !is_active(&at) {
            problems.push(format!(
                "{}: its merged_into chain never reaches an active customer (a cycle)",
                c.id
            ));
        }
        let recorded = records.iter().any(|m| {
            m.undone_at.is_none() && m.survivor_id == into && m.merged_ids.contains(&c.id)
        });
        if !recorded {
            problems.push(format!(
                "{} is merged into {into} with no merge record",
                c.id
            ));
        }
        let identities = store.identities_of(c.id).await.unwrap();
        if !identities.is_empty() {
            problems.push(format!("merged {} still owns {identities:?}", c.id));
        }
        let held = store
            .list_engagements(c.id, &EngagementFilter::default(), None, 5)
            .await
            .unwrap();
        if !held.is_empty() {
            problems.push(format!(
                "merged {} still holds {} engagements",
                c.id,
                held.len()
            ));
        }
    }
    for m in open.values() {
        for id in &m.merged_ids {
            let c = customers.get(id);
            if !c.is_some_and(|c| c.status == CustomerStatus::Merged) {
                problems.push(format!(
                    "merge {} is recorded and not undone, but {id} is {:?}",
                    m.id,
                    c.map(|c| c.status)
                ));
            }
        }
    }
    for key in identifier_keys {
        match store.identity_owner(key).await.unwrap() {
            Some(owner) if is_active(&owner) => {}
            owner => problems.push(format!(
                "{key} is owned by {owner:?}, not an active customer"
            )),
        }
    }
    for id in acked.customers.lock().iter() {
        if !customers.contains_key(id) {
            problems.push(format!("acknowledged customer {id} is lost"));
        }
    }
    let merges = acked.merges.lock().clone();
    for id in merges {
        if store.get_merge(id).await.unwrap().is_none() {
            problems.push(format!("acknowledged merge {id} has no record"));
        }
    }
    let engagements = acked.engagements.lock().clone();
    for (id, _) in engagements {
        match store.get_engagement(id).await.unwrap() {
            None => problems.push(format!("acknowledged engagement {id} is lost")),
            Some(e) if !is_active(&e.customer_id) => problems.push(format!(
                "engagement {id} is held by {}, which is not active",
                e.customer_id
            )),
            Some(_) => {}
        }
    }
    (problems, open)
}

/// Every acknowledged engagement is on the timeline of the customer it was
/// acknowledged for (reads of a merged customer follow to the survivor).
async fn check_timelines(client: &reqwest::Client, api: &Api, token: &str, acked: &Acked) {
    let mut by_customer: BTreeMap<CustomerId, BTreeSet<EngagementId>> = BTreeMap::new();
    for (e, c) in acked.engagements.lock().iter() {
        by_customer.entry(*c).or_default().insert(*e);
    }
    for (customer, wanted) in by_customer {
        let mut seen = BTreeSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = api.url(&format!("/v1/customers/{customer}/engagements?limit=500"));
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (status, v) = call(client, Method::GET, &url, token, None).await;
            assert_eq!(status, StatusCode::OK, "{url}: {v}");
            for e in v["items"].as_array().unwrap() {
                seen.insert(e["id"].as_str().unwrap().parse::<EngagementId>().unwrap());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let missing: Vec<_> = wanted.difference(&seen).collect();
        assert!(
            missing.is_empty(),
            "the timeline of {customer} lacks acknowledged engagements {missing:?}"
        );
    }
}

/// Undoes every open merge: 200 once, then 409 `merge_refused`.
///
/// An undo that answers 409 `contention` is tried again (an undo is
/// retryable): on MongoDB, a transaction that a killed crm-api left open
/// holds its documents until the server aborts it
/// (`transactionLifetimeLimitSeconds`, 60 s by default; secantusd-py does
/// the same). Returns how many undos had to be tried again.
async fn undo_all(
    client: &reqwest::Client,
    api: &Api,
    token: &str,
    open: &BTreeMap<MergeId, MergeRecord>,
) -> usize {
    let mut retried = 0;
    for id in open.keys() {
        let url = api.url(&format!("/v1/merges/{id}/undo"));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (status, v) = call(client, Method::POST, &url, token, None).await;
            if status == StatusCode::CONFLICT && v["code"] == "contention" {
                assert!(Instant::now() < deadline, "undo {id}: {v}");
                retried += 1;
                continue;
            }
            assert_eq!(status, StatusCode::OK, "undo {id}: {v}");
            break;
        }
        let (status, v) = call(client, Method::POST, &url, token, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "second undo of {id}: {v}");
        assert_eq!(v["code"], "merge_refused", "second undo of {id}: {v}");
    }
    retried
}

async fn wait_relayed(client: &reqwest::Client, api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready: Value = client
            .get(api.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["events_pending"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "events still pending after 60 s: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `crm-indexer verify` until it exits 0; panics with its last output
/// after `limit` (the index worker applies what the relay published
/// asynchronously, and entries a killed worker had read are claimed after
/// they have been idle for 30 s).
async fn verify_until_clean(api: &Api, limit: Duration) {
    let binary = crm_indexer_binary();
    let deadline = Instant::now() + limit;
    loop {
        let out = tokio::task::block_in_place(|| api.command(&binary).arg("verify").output())
            .expect("crm-indexer runs");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "crm-indexer verify did not exit 0 within {}s: {}\n{}{}",
            limit.as_secs(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_merges_and_batches_leaves_no_half_applied_merge_and_loses_nothing() {
    crm_indexer_binary();
    let mongodb_uri = mongo_server::mongodb_uri();
    let database = format!("crm_crash_{}", uuid::Uuid::new_v4().simple());
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = RedisProcess::start(redis_dir.path(), false);
    let data_dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("CRM_MONGODB_URI", mongodb_uri.clone()),
        ("CRM_MONGODB_DATABASE", database.clone()),
        ("CRM_REDIS_URL", redis.url()),
        (
            "CRM_REDIS_PREFIX",
            format!("crmcrash:{}:", uuid::Uuid::new_v4().simple()),
        ),
        ("CRM_DATA_DIR", data_dir.path().display().to_string()),
        ("CRM_JWT_SECRET", JWT_SECRET.into()),
        ("CRM_ADMIN_EMAIL", ADMIN_EMAIL.into()),
        ("CRM_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        ("CRM_DEFAULT_REGION", "SG".into()),
        ("CRM_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let store = MongoStore::connect(&mongodb_uri, &database)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test server at {mongodb_uri}: {e}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut api = Api::new(env);
    api.start(&client).await;
    // One login: the token stays valid across restarts (same secret).
    let login = client
        .post(api.url("/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let token = login.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let acked = Arc::new(Acked::default());
    let mut identifier_keys = Vec::new();
    let mut open = BTreeMap::new();
    for round in 1..=ROUNDS {
        let r = create_pairs(&client, &api, &token, round, &acked).await;
        for p in 0..PAIRS {
            for side in 0..2 {
                identifier_keys.push(format!("phone:{}", phone(round, p, side)));
                identifier_keys.push(format!("email:{}", email(round, p, side)));
            }
        }
        let k = race_and_kill(&client, &mut api, &token, round, &r, &acked).await;
        api.start(&client).await;

        let (problems, now_open) = check_store(&store, &identifier_keys, &acked).await;
        println!(
            "round {round}: killed with {} merges and {} batches in flight, after {} merges \
             and {} batch items acknowledged; {} more merges in the store after the restart",
            k.merges_in_flight,
            k.batches_in_flight,
            k.merges,
            k.items,
            now_open.len() - open.len()
        );
        open = now_open;
        assert!(problems.is_empty(), "round {round}: {problems:#?}");
        check_timelines(&client, &api, &token, &acked).await;
        let unexpected = acked.unexpected.lock().clone();
        assert!(unexpected.is_empty(), "round {round}: {unexpected:#?}");
    }

    // The index catches up with no rebuild, and caller-ID answers each
    // phone's owner (the survivor, for a merged customer's).
    wait_relayed(&client, &api).await;
    verify_until_clean(&api, Duration::from_secs(90)).await;
    for key in identifier_keys.iter().filter(|k| k.starts_with("phone:")) {
        let owner = store.identity_owner(key).await.unwrap().unwrap();
        let number = key.trim_start_matches("phone:").replace('+', "%2B");
        let url = api.url(&format!("/v1/lookup/phone/{number}"));
        let (status, v) = call(&client, Method::GET, &url, &token, None).await;
        assert_eq!(status, StatusCode::OK, "{key}: {v}");
        assert_eq!(v["matches"][0]["id"], owner.to_string(), "{key}: {v}");
    }

    // Every merge of every round is undoable. (At the end rather than after
    // each round: the undo of a merge whose customers a killed batch had
    // written waits for the server to reap that batch's transaction.)
    let retried = undo_all(&client, &api, &token, &open).await;
    println!(
        "undone: {} merges ({retried} undo attempts answered 409 contention first)",
        open.len()
    );
    let (problems, still_open) = check_store(&store, &identifier_keys, &acked).await;
    assert!(problems.is_empty(), "after the undos: {problems:#?}");
    assert!(
        still_open.is_empty(),
        "merges open after the undos: {still_open:?}"
    );
    wait_relayed(&client, &api).await;
    verify_until_clean(&api, Duration::from_secs(60)).await;
    api.kill();
    // The database is not dropped: transactions the killed processes left
    // open make secantusd-py's dropDatabase wait for ever (it reaps them
    // only when another transaction comes). Its in-memory storage goes
    // with the server when this test process ends.
}
