//! Events out: the feed (`GET /v1/events`) and live push over Server-Sent
//! Events (`GET /v1/stream`, `POST /v1/stream/tickets`).
//!
//! The SSE client here reads the response's bytes and parses `id:`,
//! `event:` and `data:` lines. No test sleeps to let something happen: each
//! waits for a specific event, or for a condition, with a bounded timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "common/processes.rs"]
mod processes;

use std::time::{Duration, Instant};

use common::{expect_json, expect_problem, spawn_app, spawn_app_with, TestApp, USER_PASSWORD};
use crm_api::auth::StreamSession;
use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::ids::{CustomerId, UserId};
use crm_models::staff::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Longest wait for one expected event or condition.
const WAIT: Duration = Duration::from_secs(20);

// --- an SSE client ---

#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<String>,
    event: String,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {}", self.data))
    }
}

struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// The next event (comments skipped); `None` when the server ended the
    /// stream. Panics when nothing comes within `WAIT`.
    async fn next(&mut self) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within the wait")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// Events up to and including the first that `done` accepts.
    async fn until(&mut self, done: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            let event = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended; seen: {seen:?}"));
            let last = done(&event);
            seen.push(event);
            if last {
                return seen;
            }
        }
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut id = None;
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if event.is_none() && data.is_empty() {
        return None;
    }
    Some(SseEvent {
        id,
        event: event.unwrap_or_else(|| "message".into()),
        data: data.join("\n"),
    })
}

/// Opens `/v1/stream{query}` with `token` as bearer (if any) and
/// `Last-Event-ID` (if any); checks the headers of a stream.
async fn open_stream(
    app: &TestApp,
    token: Option<&str>,
    query: &str,
    last_event_id: Option<&str>,
) -> SseStream {
    let response = try_stream(app, token, query, last_event_id).await;
    let status = response.status();
    if status != StatusCode::OK {
        panic!(
            "the stream did not open ({status}): {}",
            response.text().await.unwrap()
        );
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(header("content-type"), "text/event-stream");
    assert_eq!(header("cache-control"), "no-cache");
    assert_eq!(header("x-accel-buffering"), "no");
    SseStream {
        response,
        buffer: String::new(),
    }
}

async fn try_stream(
    app: &TestApp,
    token: Option<&str>,
    query: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.get(app.url(&format!("/v1/stream{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

// --- helpers ---

async fn create_customer(app: &TestApp, token: &str, name: &str, phone: &str) -> String {
    let created: Value = expect_json(
        app.post(
            "/v1/customers",
            token,
            &json!({"name": name, "phones": [phone]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    created["id"].as_str().unwrap().to_string()
}

async fn record_sms(app: &TestApp, token: &str, phone: &str, body: &str) -> String {
    let recorded: Value = expect_json(
        app.post(
            "/v1/engagements",
            token,
            &json!({"customer": {"phone": phone}, "channel": "sms", "direction": "inbound", "body": body}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    recorded["id"].as_str().unwrap().to_string()
}

/// Enrolls a device for the caller: `(device id, device token)`.
async fn enroll(app: &TestApp, token: &str) -> (String, String) {
    let enrolled: Value = expect_json(
        app.post(
            "/v1/devices",
            token,
            &json!({"name": "Pixel", "default_region": "SG"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    (
        enrolled["id"].as_str().unwrap().to_string(),
        enrolled["token"].as_str().unwrap().to_string(),
    )
}

/// Polls `check` until it holds, at most `WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the staff caller-ID lookup knows `phone` (the index caught
/// up), so that a device's lookup finds the customer.
async fn wait_known(app: &TestApp, token: &str, phone: &str) {
    let path = format!("/v1/lookup/phone/{}", phone.replace('+', "%2B"));
    eventually(&format!("the index to know {phone}"), || async {
        let found: Value = expect_json(app.get(&path, token).await, StatusCode::OK).await;
        !found["matches"].as_array().unwrap().is_empty()
    })
    .await;
}

/// Waits until the index holds what the store holds.
async fn index_agrees(app: &TestApp) {
    let projector = app.state.projector.clone();
    eventually("the index to agree with the store", || {
        let projector = projector.clone();
        async move { projector.verify().await.unwrap().is_clean() }
    })
    .await;
}

/// A device's caller-ID lookup; returns the popup answer.
async fn caller_id(app: &TestApp, device_token: &str, phone: &str) -> Value {
    expect_json(
        app.get(
            &format!("/v1/mobile/caller-id?number={}", phone.replace('+', "%2B")),
            device_token,
        )
        .await,
        StatusCode::OK,
    )
    .await
}

async fn user_id_of(app: &TestApp, token: &str) -> String {
    let me: Value = expect_json(app.get("/v1/me", token).await, StatusCode::OK).await;
    me["id"].as_str().unwrap().to_string()
}

/// Every event of the feed after `after` (all of them without), page by
/// page of `limit`, with the query `extra`.
async fn whole_feed(app: &TestApp, token: &str, extra: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/events?limit={limit}{extra}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page: Value = expect_json(app.get(&path, token).await, StatusCode::OK).await;
        let got = page["items"].as_array().unwrap().clone();
        let next = page["next_cursor"].as_str().map(str::to_string);
        if got.is_empty() && next == after {
            return items;
        }
        assert!(got.len() <= limit);
        items.extend(got);
        after = next;
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

async fn all_relayed(app: &TestApp) {
    let store = app.state.crm.store().clone();
    eventually("the relay to publish every event", || {
        let store = store.clone();
        async move { store.unrelayed_count().await.unwrap() == 0 }
    })
    .await;
}

// --- the feed ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_pages_in_order_filters_and_refuses_a_cursor_it_does_not_hold() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    let mut customers = Vec::new();
    for i in 0..7 {
        customers.push(
            create_customer(
                &app,
                &admin,
                &format!("Feed Person{i}"),
                &format!("+658100000{i}"),
            )
            .await,
        );
    }
    record_sms(&app, &admin, "+6581000003", "hello").await;

    // The whole log in one page, and the same in pages of 3, in one order.
    let all: Value = expect_json(
        app.get("/v1/events?limit=1000", &admin).await,
        StatusCode::OK,
    )
    .await;
    let all = all["items"].as_array().unwrap().clone();
    assert!(all.len() >= 9, "users, customers, the engagement: {all:?}");
    let paged = whole_feed(&app, &admin, "", 3).await;
    assert_eq!(ids(&paged), ids(&all));
    for event in &all {
        let keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in &keys {
            assert!(
                ["id", "type", "occurred_at", "customer_id", "data"].contains(key),
                "envelope field {key}: {event}"
            );
        }
    }
    let text = serde_json::to_string(&all).unwrap();
    assert!(
        !text.contains("Feed Person") && !text.contains("hello"),
        "ids only: {text}"
    );

    // Filters: types (repeated or comma-separated) and one customer.
    let created = whole_feed(&app, &admin, "&types=customer.created", 2).await;
    let created_for: Vec<&str> = created
        .iter()
        .map(|e| e["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        created_for,
        customers.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let two = whole_feed(
        &app,
        &admin,
        "&types=customer.created&types=engagement.recorded",
        100,
    )
    .await;
    let comma = whole_feed(
        &app,
        &admin,
        "&types=customer.created,engagement.recorded",
        100,
    )
    .await;
    assert_eq!(ids(&two), ids(&comma));
    assert_eq!(two.len(), 8);
    assert_eq!(two.last().unwrap()["type"], "engagement.recorded");
    let about = whole_feed(&app, &admin, &format!("&customer_id={}", customers[3]), 100).await;
    let types: Vec<&str> = about.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["customer.created", "engagement.recorded"]);

    // An empty page at the head still carries the cursor to poll with.
    let last = all.last().unwrap()["id"].as_str().unwrap().to_string();
    let head: Value = expect_json(
        app.get(&format!("/v1/events?after={last}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(head["items"], json!([]));
    assert_eq!(head["next_cursor"], json!(last));

    // Bad requests.
    let problem = expect_problem(
        app.get("/v1/events?types=customer.created,nope.event", &admin)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(problem.to_string().contains("nope.event"), "{problem}");
    for bad in [
        "limit=0",
        "limit=1001",
        "after=xyz",
        "customer_id=xyz",
        "cursor=abc",
    ] {
        expect_problem(
            app.get(&format!("/v1/events?{bad}"), &admin).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }

    // A cursor the log never held, and one pruned away: 410.
    let unknown = uuid::Uuid::now_v7();
    expect_problem(
        app.get(&format!("/v1/events?after={unknown}"), &admin)
            .await,
        StatusCode::GONE,
        "cursor_expired",
    )
    .await;
    all_relayed(&app).await;
    let pruned = app
        .state
        .crm
        .store()
        .prune_events(crm_models::time::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(pruned as usize, all.len());
    expect_problem(
        app.get(&format!("/v1/events?after={last}"), &admin).await,
        StatusCode::GONE,
        "cursor_expired",
    )
    .await;
    let empty: Value = expect_json(app.get("/v1/events", &admin).await, StatusCode::OK).await;
    assert_eq!(empty, json!({"items": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_for_admins_and_keys_with_events_read() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let agent = app.agent_token("feed.agent@example.com").await;
    expect_problem(
        app.get("/v1/events", &agent).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let ingest_key = app.service_key("website").await;
    let problem = expect_problem(
        app.get("/v1/events", &ingest_key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("events:read"),
        "{problem}"
    );
    let created: Value = expect_json(
        app.post(
            "/v1/api-keys",
            &admin,
            &json!({"name": "warehouse", "scopes": ["events:read"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["scopes"], json!(["events:read"]));
    let reader = created["key"].as_str().unwrap();
    let page: Value = expect_json(app.get("/v1/events", reader).await, StatusCode::OK).await;
    let types: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["user.created", "user.created"],
        "the admin and the agent"
    );
    // A reading key writes nothing.
    expect_problem(
        app.post("/v1/engagements", reader, &json!({"customer": {"phone": "+6581234567"}, "channel": "sms", "direction": "inbound", "body": "x"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.request(reqwest::Method::GET, "/v1/events", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

// --- live push ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_disconnect_delivers_every_missed_event_once_in_order() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    let mut stream = open_stream(&app, Some(&admin), "?types=customer.created", None).await;
    let first = create_customer(&app, &admin, "Before Disconnect", "+6582000000").await;
    let seen = stream.next().await.unwrap();
    assert_eq!(seen.event, "customer.created");
    assert_eq!(seen.json()["customer_id"], json!(first));
    let last_seen = seen.id.clone().unwrap();
    drop(stream);

    // Written while nobody listens.
    const MISSED: usize = 30;
    let mut missed = Vec::new();
    for i in 0..MISSED {
        missed.push(
            create_customer(
                &app,
                &admin,
                &format!("Missed Number{i}"),
                &format!("+65820001{i:02}"),
            )
            .await,
        );
    }

    let mut stream = open_stream(
        &app,
        Some(&admin),
        "?types=customer.created",
        Some(&last_seen),
    )
    .await;
    let mut replayed = Vec::new();
    for _ in 0..MISSED {
        let e = stream.next().await.unwrap();
        assert_eq!(e.event, "customer.created");
        assert_eq!(e.id.as_deref(), e.json()["id"].as_str());
        replayed.push(e);
    }
    let replayed_customers: Vec<String> = replayed
        .iter()
        .map(|e| e.json()["customer_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(replayed_customers, missed, "every missed event, in order");
    let feed = whole_feed(
        &app,
        &admin,
        &format!("&types=customer.created&after={last_seen}"),
        1000,
    )
    .await;
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.id.clone().unwrap())
            .collect::<Vec<_>>(),
        ids(&feed),
        "the replay is the feed"
    );
    // Then live, with nothing repeated: the next event is the new one.
    let after = create_customer(&app, &admin, "After Reconnect", "+6582000999").await;
    let next = stream.next().await.unwrap();
    assert_eq!(next.json()["customer_id"], json!(after));

    // `?after=` does the same as the header.
    let mut again = open_stream(
        &app,
        Some(&admin),
        &format!(
            "?types=customer.created&after={}",
            replayed[MISSED - 2].id.clone().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(again.next().await.unwrap().id, replayed[MISSED - 1].id);
    assert_eq!(
        again.next().await.unwrap().json()["customer_id"],
        json!(after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_racing_new_writes_has_no_gap_and_no_duplicate() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    for i in 0..20 {
        create_customer(
            &app,
            &admin,
            &format!("Backlog Number{i}"),
            &format!("+65870001{i:02}"),
        )
        .await;
    }
    all_relayed(&app).await;
    let backlog = whole_feed(&app, &admin, "&types=customer.created", 1000).await;
    let cursor = backlog[0]["id"].as_str().unwrap().to_string();

    // Writes go on while the stream replays, so events are both replayed
    // and heard live; each must come once, in feed order.
    let writer = {
        let (address, token) = (app.address.clone(), admin.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..40 {
                let response = client
                    .post(format!("{address}/v1/customers"))
                    .bearer_auth(&token)
                    .json(&json!({"name": format!("Racing Number{i}"), "phones": [format!("+65870002{i:02}")]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        })
    };
    let mut stream =
        open_stream(&app, Some(&admin), "?types=customer.created", Some(&cursor)).await;
    writer.await.unwrap();
    let sentinel = create_customer(&app, &admin, "Racing Sentinel", "+6587000300").await;
    let seen = stream.until(|e| e.data.contains(&sentinel)).await;
    let feed = whole_feed(
        &app,
        &admin,
        &format!("&types=customer.created&after={cursor}"),
        1000,
    )
    .await;
    assert_eq!(seen.len(), 19 + 40 + 1);
    assert_eq!(
        seen.iter()
            .map(|e| e.id.clone().unwrap())
            .collect::<Vec<_>>(),
        ids(&feed),
        "every event once, in feed order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_the_log_does_not_hold_gets_a_reset_then_live_events() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    all_relayed(&app).await;
    let old = uuid::Uuid::now_v7().to_string();
    let mut stream = open_stream(&app, Some(&admin), "", Some(&old)).await;
    let reset = stream.next().await.unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id, None);
    assert_eq!(reset.json()["reason"], "cursor_expired");
    let id = create_customer(&app, &admin, "After Reset", "+6583000000").await;
    let next = stream.next().await.unwrap();
    assert_eq!(next.event, "customer.created");
    assert_eq!(next.json()["customer_id"], json!(id));
    // A malformed id is refused before the stream opens.
    let response = try_stream(&app, Some(&admin), "", Some("not-an-id")).await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_only_their_calls_devices_and_subscribed_customers() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    let ann_agent = app.agent_token("ann.agent@example.com").await;
    let bob_agent = app.agent_token("bob.agent@example.com").await;
    let ann_id = user_id_of(&app, &ann_agent).await;
    let (ann_device, ann_phone) = enroll(&app, &ann_agent).await;
    let (_, bob_phone) = enroll(&app, &bob_agent).await;
    let mine = create_customer(&app, &admin, "Subscribed Customer", "+6584000001").await;
    let other = create_customer(&app, &admin, "Other Customer", "+6584000002").await;
    record_sms(&app, &admin, "+6584000001", "an earlier message").await;
    index_agrees(&app).await;

    let mut stream = open_stream(&app, Some(&ann_agent), &format!("?customer={mine}"), None).await;
    // What Ann must not see: Bob's call about her customer, an engagement
    // of a customer she did not subscribe to, users, Bob's new device.
    caller_id(&app, &bob_phone, "+6584000001").await;
    record_sms(&app, &admin, "+6584000002", "not for ann").await;
    app.create_user("carol.agent@example.com", "agent").await;
    enroll(&app, &bob_agent).await;
    // What she sees: her own call (with the popup), her customer's
    // engagement, her own new device. (Each is read before the next write,
    // so that the popup is read before another engagement changes it.)
    let popup = caller_id(&app, &ann_phone, "+6584000001").await;
    assert_eq!(popup["known"], true);
    let mut seen = stream.until(|e| e.event == "call.incoming").await;
    let engagement = record_sms(&app, &admin, "+6584000001", "for ann").await;
    seen.extend(stream.until(|e| e.event == "engagement.recorded").await);
    let (new_device, _) = enroll(&app, &ann_agent).await;
    seen.extend(stream.until(|e| e.event == "device.enrolled").await);

    let types: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        types,
        ["call.incoming", "engagement.recorded", "device.enrolled"],
        "{seen:?}"
    );
    let call = seen[0].json();
    assert_eq!(call["customer_id"], json!(mine));
    assert_eq!(call["data"]["user_id"], json!(ann_id));
    assert_eq!(call["data"]["device_id"], json!(ann_device));
    assert_eq!(call["data"]["customer_id"], json!(mine));
    assert!(call["data"]["signal_id"].is_string());
    let customer = &call["data"]["customer"];
    assert_eq!(
        customer, &popup["customers"][0],
        "the popup is the caller-ID answer's customer"
    );
    assert_eq!(customer["name"], "Subscribed Customer");
    assert_eq!(customer["main_phone"], "+6584000001");
    assert_eq!(customer["last_engagements"].as_array().unwrap().len(), 1);
    assert_eq!(seen[1].json()["data"]["engagement_id"], json!(engagement));
    assert_eq!(seen[2].json()["data"]["device_id"], json!(new_device));
    assert!(!seen.iter().any(|e| e.data.contains(&other)));

    // The feed keeps call.incoming ids-only.
    let feed = whole_feed(&app, &admin, "&types=call.incoming", 100).await;
    assert_eq!(feed.len(), 2);
    for event in &feed {
        assert!(event["data"].get("customer").is_none(), "{event}");
    }

    // Agents may not ask for staff events, nor for more than 50 customers.
    let response = try_stream(&app, Some(&ann_agent), "?types=user.created", None).await;
    let problem = expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(problem.to_string().contains("user.created"), "{problem}");
    let many: String = (0..51)
        .map(|_| format!("customer={}&", CustomerId::new()))
        .collect();
    let response = try_stream(&app, Some(&ann_agent), &format!("?{many}"), None).await;
    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // Keys and devices cannot hold a stream.
    let key = app.service_key("website").await;
    expect_problem(
        try_stream(&app, Some(&key), "", None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        try_stream(&app, Some(&ann_phone), "", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        try_stream(&app, None, "", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_caller_pops_up_with_its_number_on_the_owners_stream_only() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    let ann_agent = app.agent_token("ann.agent@example.com").await;
    let ann_id = user_id_of(&app, &ann_agent).await;
    let (ann_device, ann_phone) = enroll(&app, &ann_agent).await;
    let mut mine = open_stream(&app, Some(&ann_agent), "?types=call.incoming", None).await;
    let mut everything = open_stream(&app, Some(&admin), "?types=call.incoming", None).await;

    let answer = caller_id(&app, &ann_phone, "+6589990000").await;
    assert_eq!(answer, json!({"known": false, "customers": []}));

    let seen = mine.until(|e| e.event == "call.incoming").await;
    let call = seen.last().unwrap().json();
    assert_eq!(call["customer_id"], Value::Null, "{call}");
    assert_eq!(call["data"]["user_id"], json!(ann_id));
    assert_eq!(call["data"]["device_id"], json!(ann_device));
    assert_eq!(call["data"]["customer"], Value::Null);
    assert_eq!(call["data"]["number"], "+6589990000", "{call}");
    // An admin hears every phone, but not the number of somebody else's caller.
    let heard = everything.until(|e| e.event == "call.incoming").await;
    let theirs = heard.last().unwrap();
    assert_eq!(
        theirs.json()["data"]["signal_id"],
        call["data"]["signal_id"]
    );
    assert_eq!(theirs.json()["data"]["number"], Value::Null);
    assert!(!theirs.data.contains("89990000"), "{}", theirs.data);

    // The log keeps the event about no customer, with ids only.
    let feed = whole_feed(&app, &admin, "&types=call.incoming", 100).await;
    assert_eq!(feed.len(), 1, "{feed:?}");
    assert!(
        feed[0].get("customer_id").is_none_or(Value::is_null),
        "{}",
        feed[0]
    );
    assert_eq!(feed[0]["data"]["signal_id"], call["data"]["signal_id"]);
    assert!(!feed[0].to_string().contains("89990000"), "{}", feed[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_everything_unless_narrowed() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    all_relayed(&app).await;
    let mut everything = open_stream(&app, Some(&admin), "", None).await;
    let c = create_customer(&app, &admin, "Narrowed Customer", "+6585000001").await;
    let mut narrowed = open_stream(
        &app,
        Some(&admin),
        &format!("?types=engagement.recorded&customer={c}"),
        None,
    )
    .await;
    app.create_user("dave.agent@example.com", "agent").await;
    create_customer(&app, &admin, "Someone Else", "+6585000002").await;
    record_sms(&app, &admin, "+6585000002", "elsewhere").await;
    let engagement = record_sms(&app, &admin, "+6585000001", "here").await;
    let all = everything.until(|e| e.data.contains(&engagement)).await;
    let types: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        types,
        [
            "customer.created",
            "user.created",
            "customer.created",
            "engagement.recorded",
            "engagement.recorded"
        ]
    );
    let only = narrowed.next().await.unwrap();
    assert_eq!(only.json()["data"]["engagement_id"], json!(engagement));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_stream_once_within_a_minute() {
    let app = spawn_app().await;
    let agent_tokens = {
        app.create_user("ticket.agent@example.com", "agent").await;
        app.login("ticket.agent@example.com", USER_PASSWORD).await
    };
    let agent = agent_tokens.access_token.clone();
    let response = app.post("/v1/stream/tickets", &agent, &json!({})).await;
    let ticket: Value = expect_json(response, StatusCode::OK).await;
    let expires_at = crm_models::time::parse(ticket["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires_at - crm_models::time::now();
    assert!(
        ttl <= chrono::Duration::seconds(60) && ttl > chrono::Duration::seconds(50),
        "{ttl:?}"
    );
    let ticket = ticket["ticket"].as_str().unwrap().to_string();
    assert!(!ticket.contains(&agent));

    // The ticket opens a stream as the agent, without any header.
    let mut stream = open_stream(&app, None, &format!("?ticket={ticket}"), None).await;
    let (device, _) = enroll(&app, &agent).await;
    let enrolled = stream.next().await.unwrap();
    assert_eq!(enrolled.event, "device.enrolled");
    assert_eq!(enrolled.json()["data"]["device_id"], json!(device));
    // Once only.
    expect_problem(
        try_stream(&app, None, &format!("?ticket={ticket}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // Not after its minute.
    let user_id: UserId = user_id_of(&app, &agent).await.parse().unwrap();
    let session = StreamSession {
        user_id,
        role: Role::Agent,
        sid: "any".into(),
    };
    let old = app
        .state
        .streams
        .tickets
        .issue_at(&session, chrono::Utc::now().timestamp() - 61 - 5)
        .unwrap();
    expect_problem(
        try_stream(&app, None, &format!("?ticket={}", old.ticket), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // Not for a session that ended since.
    let fresh: Value = expect_json(
        app.post("/v1/stream/tickets", &agent, &json!({})).await,
        StatusCode::OK,
    )
    .await;
    let logout = app
        .post(
            "/v1/auth/logout",
            &agent,
            &json!({"refresh_token": agent_tokens.refresh_token}),
        )
        .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    expect_problem(
        try_stream(
            &app,
            None,
            &format!("?ticket={}", fresh["ticket"].as_str().unwrap()),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // An access token is never read from the URL, and keys get no ticket.
    let admin = app.admin_token().await;
    expect_problem(
        try_stream(&app, None, &format!("?access_token={admin}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        try_stream(&app, Some(&admin), &format!("?access_token={admin}"), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        try_stream(&app, None, &format!("?ticket={admin}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let key = app.service_key("website").await;
    expect_problem(
        app.post("/v1/stream/tickets", &key, &json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_session_ends_or_its_user_is_deactivated() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user("leaving.agent@example.com", "agent").await;
    let tokens = app.login("leaving.agent@example.com", USER_PASSWORD).await;
    let mut by_header = open_stream(&app, Some(&tokens.access_token), "", None).await;
    let ticket: Value = expect_json(
        app.post("/v1/stream/tickets", &tokens.access_token, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let mut by_ticket = open_stream(
        &app,
        None,
        &format!("?ticket={}", ticket["ticket"].as_str().unwrap()),
        None,
    )
    .await;
    let logout = app
        .post(
            "/v1/auth/logout",
            &tokens.access_token,
            &json!({"refresh_token": tokens.refresh_token}),
        )
        .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    for stream in [&mut by_header, &mut by_ticket] {
        let closed = stream.next().await.unwrap();
        assert_eq!(closed.event, "closed");
        assert_eq!(closed.json(), json!({"reason": "session_ended"}));
        assert!(stream.next().await.is_none(), "the stream ends");
    }

    let user = app
        .create_user("deactivated.agent@example.com", "agent")
        .await;
    let token = app
        .login("deactivated.agent@example.com", USER_PASSWORD)
        .await
        .access_token;
    let mut stream = open_stream(&app, Some(&token), "", None).await;
    let id = user["id"].as_str().unwrap();
    let patched = app
        .patch(
            &format!("/v1/users/{id}"),
            &admin,
            &json!({"active": false}),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let closed = stream.next().await.unwrap();
    assert_eq!(closed.json(), json!({"reason": "session_ended"}));
    assert!(stream.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_a_whole_ring_behind_is_closed_as_too_slow() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    all_relayed(&app).await;
    // The stream is subscribed once its answer has begun; the client then
    // reads nothing while more than a ring of events is published.
    let mut stream = open_stream(&app, Some(&admin), "", None).await;
    let published = crm_models::live::RING * 4;
    app.state.live.push(
        (0..published)
            .map(|_| EventEnvelope::about(CustomerId::new(), DomainEvent::CustomerCreated {})),
    );
    let mut delivered = 0;
    let closed = loop {
        let event = stream.next().await.expect("closed before the end");
        if event.event == "closed" {
            break event;
        }
        assert_eq!(event.event, "customer.created");
        delivered += 1;
    };
    assert_eq!(closed.json(), json!({"reason": "too_slow"}));
    assert!(delivered < published, "{delivered} of {published}");
    assert!(stream.next().await.is_none(), "the stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_ends_open_streams_and_does_not_wait_for_them() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = crm_api::config::Config::for_data_dir(data_dir.path().to_path_buf());
    config.admin_email = Some(common::ADMIN_EMAIL.into());
    config.admin_password = Some(common::ADMIN_PASSWORD.into());
    let app = crm_api::Application::build(config).await.unwrap();
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{address}/v1/auth/login"))
        .json(&json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = client
        .get(format!("{address}/v1/stream"))
        .bearer_auth(login["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = SseStream {
        response,
        buffer: String::new(),
    };
    stop.send(()).unwrap();
    let closed = stream.next().await.unwrap();
    assert_eq!(closed.json(), json!({"reason": "shutdown"}));
    assert!(stream.next().await.is_none());
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server stops with a stream open")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_looked_up_on_one_instance_reaches_a_stream_held_by_another() {
    let redis_dir = tempfile::tempdir().unwrap();
    let redis = processes::RedisProcess::start(redis_dir.path(), false);
    let mongodb_uri = mongo_server::mongodb_uri();
    let database = format!("crm_events_{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("crm_events_{}:", uuid::Uuid::new_v4().simple());
    let instance = || {
        let (uri, db, url, prefix) = (
            mongodb_uri.clone(),
            database.clone(),
            redis.url(),
            prefix.clone(),
        );
        spawn_app_with(move |c| {
            c.mongodb_uri = Some(uri);
            c.mongodb_database = db;
            c.redis_url = Some(url);
            c.redis_prefix = prefix;
            c.jwt_secret = Some("a test secret that is long enough for HS256".into());
            c.default_region = Some("SG".into());
        })
    };
    let a = instance().await;
    let b = instance().await;
    let admin = a.admin_token().await;
    let agent = a.agent_token("two.instances@example.com").await;
    let agent_id = user_id_of(&b, &agent).await;
    let (device_id, device_token) = enroll(&a, &agent).await;
    let customer = create_customer(&a, &admin, "Two Instances", "+6586000001").await;
    wait_known(&a, &admin, "+6586000001").await;

    // A ticket from A opens the stream on B, once across both.
    let ticket: Value = expect_json(
        a.post("/v1/stream/tickets", &agent, &json!({})).await,
        StatusCode::OK,
    )
    .await;
    let ticket = ticket["ticket"].as_str().unwrap();
    let mut on_b = open_stream(&b, None, &format!("?ticket={ticket}"), None).await;
    expect_problem(
        try_stream(&a, None, &format!("?ticket={ticket}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    let popup = caller_id(&a, &device_token, "+6586000001").await;
    assert_eq!(popup["known"], true);
    let call = on_b
        .until(|e| e.event == "call.incoming")
        .await
        .pop()
        .unwrap();
    let call = call.json();
    assert_eq!(call["customer_id"], json!(customer));
    assert_eq!(call["data"]["user_id"], json!(agent_id));
    assert_eq!(call["data"]["device_id"], json!(device_id));
    assert_eq!(call["data"]["customer"]["name"], "Two Instances");
    assert_eq!(call["data"]["customer"], popup["customers"][0]);

    // The feed is the same on both instances.
    let on_a = whole_feed(&a, &admin, "", 100).await;
    assert_eq!(ids(&on_a), ids(&whole_feed(&b, &admin, "", 100).await));
    assert!(on_a.iter().any(|e| e["type"] == "call.incoming"));

    let client = mongodb::Client::with_uri_str(&mongodb_uri).await.unwrap();
    let _ = client.database(&database).drop().await;
}
