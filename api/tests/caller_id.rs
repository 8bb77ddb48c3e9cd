//! One caller-ID path: the staff lookup (`GET /v1/lookup/phone/{number}`)
//! and the phone's popup (`GET /v1/mobile/caller-id`) name the same
//! customers, in the same order, whether the index answers or Redis is gone
//! and the store does: one owner, a shared number's several customers, a
//! blocked number on several profiles, and nobody.
//!
//! crm-api runs in-process on an embedded store with a `redis-server` of the
//! test's own for the event stream and the index; the test SIGKILLs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "common/processes.rs"]
mod processes;

use std::time::{Duration, Instant};

use common::{expect_json, spawn_app_with, TestApp};
use processes::RedisProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Waits until the index holds what the store holds (verify is clean).
async fn index_agrees(app: &TestApp) {
    let started = Instant::now();
    loop {
        let report = app.state.projector.verify().await.unwrap();
        if report.is_clean() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the index never caught up with the store: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Both routes' answers for a number: the staff lookup's body and the
/// popup's body.
async fn both(app: &TestApp, staff: &str, device: &str, number: &str) -> (Value, Value) {
    let encoded = number.replace('+', "%2B").replace(' ', "%20");
    let lookup: Value = expect_json(
        app.get(&format!("/v1/lookup/phone/{encoded}"), staff).await,
        StatusCode::OK,
    )
    .await;
    let popup: Value = expect_json(
        app.get(&format!("/v1/mobile/caller-id?number={encoded}"), device)
            .await,
        StatusCode::OK,
    )
    .await;
    (lookup, popup)
}

/// Customer ids with their names, in the order an answer gives them.
type Named = Vec<(String, Value)>;

/// The customers each answer names, in order, with their names.
fn named(lookup: &Value, popup: &Value) -> (Named, Named) {
    let staff = lookup["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (id(m), m["name"].clone()))
        .collect();
    let phone = popup["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (id(c), c["name"].clone()))
        .collect();
    (staff, phone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_lookup_and_mobile_caller_id_name_the_same_customers_with_and_without_the_index() {
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProcess::start(redis_dir.path(), false);
    let url = redis.url();
    let prefix = format!("crmcallerid:{}:", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(move |c| {
        c.default_region = Some("SG".into());
        c.link_blocked = vec!["+6561234567".into()];
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
    })
    .await;
    assert_eq!(app.readyz().await["index"], "redis");
    let admin = app.admin_token().await;
    let agent = app.agent_token("agent@example.com").await;
    let enrolled: Value = expect_json(
        app.post(
            "/v1/devices",
            &agent,
            &json!({"name": "Pixel", "default_region": "SG"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let device = enrolled["token"].as_str().unwrap().to_string();

    // One owner.
    let ann: Value = expect_json(
        app.post(
            "/v1/customers",
            &agent,
            &json!({"name": "Ann Tan", "phones": ["+65 8122 6418"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // A shared switchboard number: its first customer, then (once marked
    // shared) a caller who gets a customer of their own with it.
    let guest: Value = expect_json(
        app.post(
            "/v1/customers",
            &agent,
            &json!({"name": "Guest One", "phones": ["+65 6338 8888"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_json::<Value>(
        app.post("/v1/identities/6338%208888/shared", &admin, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let second: Value = expect_json(
        app.post(
            "/v1/engagements",
            &agent,
            &json!({"customer": {"phone": "63388888", "email": "two@guest.example", "name": "Guest Two"}, "channel": "call", "direction": "inbound", "duration_s": 10, "status": "answered"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(second["customer_id"], guest["id"]);
    // A number blocked in configuration: each call gets a customer of its
    // own, none owns the number.
    let mut blocked = Vec::new();
    for (name, at) in [
        ("Caller A", "2026-01-05T09:00:00Z"),
        ("Caller B", "2026-01-06T09:00:00Z"),
    ] {
        let r: Value = expect_json(
            app.post(
                "/v1/engagements",
                &agent,
                &json!({"customer": {"phone": "+65 6123 4567", "name": name}, "channel": "call", "direction": "inbound", "duration_s": 5, "status": "missed", "occurred_at": at}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        blocked.push(r["customer_id"].as_str().unwrap().to_string());
    }
    assert_ne!(blocked[0], blocked[1]);
    index_agrees(&app).await;

    let second_id = second["customer_id"].as_str().unwrap().to_string();
    // Most recently engaged first: the caller before the guest who never
    // called; the later blocked call first.
    let cases: Vec<(&str, Named)> = vec![
        ("+65 8122 6418", vec![(id(&ann), json!("Ann Tan"))]),
        ("81226418", vec![(id(&ann), json!("Ann Tan"))]),
        (
            "+6563388888",
            vec![
                (second_id.clone(), json!("Guest Two")),
                (id(&guest), json!("Guest One")),
            ],
        ),
        (
            "6338 8888",
            vec![
                (second_id.clone(), json!("Guest Two")),
                (id(&guest), json!("Guest One")),
            ],
        ),
        (
            "+6561234567",
            vec![
                (blocked[1].clone(), json!("Caller B")),
                (blocked[0].clone(), json!("Caller A")),
            ],
        ),
        ("+65 9123 4567", vec![]),
    ];

    let mut with_index = Vec::new();
    for (number, expected) in &cases {
        let (lookup, popup) = both(&app, &agent, &device, number).await;
        let (staff, phone) = named(&lookup, &popup);
        assert_eq!(&staff, expected, "staff lookup of {number} with the index");
        assert_eq!(&phone, expected, "caller-ID of {number} with the index");
        assert_eq!(popup["known"], json!(!expected.is_empty()), "{number}");
        with_index.push((lookup, popup));
    }

    redis.kill();
    assert!(
        app.state.index.ping().await.is_err(),
        "the index still answers"
    );

    for ((number, expected), (lookup_before, popup_before)) in cases.iter().zip(&with_index) {
        let (lookup, popup) = both(&app, &agent, &device, number).await;
        let (staff, phone) = named(&lookup, &popup);
        assert_eq!(&staff, expected, "staff lookup of {number} from the store");
        assert_eq!(&phone, expected, "caller-ID of {number} from the store");
        // The store's answer is the index's, field for field.
        assert_eq!(&lookup, lookup_before, "staff lookup of {number}");
        assert_eq!(&popup, popup_before, "caller-ID of {number}");
    }
}
