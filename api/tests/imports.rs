//! Bulk import and export over HTTP, on the embedded store and on MongoDB:
//! a 1,000-row CSV with duplicates in three phone formats, emails in mixed
//! case, blocked values, bad rows and an existing customer gives exactly the
//! expected counts and rejected rows; a dry run writes nothing and counts
//! what the import then does, under the linker's safeguards; posting
//! again with the same `Idempotency-Key` starts nothing; an export imports
//! into a fresh store with the same customers and timelines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{expect_json, expect_problem, problem_fields, spawn_app, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MAPPING: &str = r#"{"Full Name": "name", "Mobile": "phones", "E-mail": "emails"}"#;
const EXISTING_PHONE: &str = "+6561234567";

/// Person `i`'s number, in one of three ways of writing it.
fn phone(i: usize, way: usize) -> String {
    let n = 91_000_000 + i;
    let (a, b) = (n / 10_000, n % 10_000);
    match way % 3 {
        0 => format!("+65{n}"),
        1 => format!("+65 {a} {b:04}"),
        _ => format!("{a}-{b:04}"),
    }
}

fn cell(text: &str) -> String {
    if text.contains([',', '"']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The 1,000 rows, and what they must give: 630 created, 270 linked,
/// 10 merged, 90 rejected.
fn thousand_rows() -> String {
    let mut rows: Vec<[String; 3]> = Vec::new();
    // 1-600: new people, numbers written three ways, emails in mixed case.
    for i in 1..=600 {
        rows.push([
            format!("Person {i}"),
            phone(i, i),
            format!("Person{i}@Acme.io"),
        ]);
    }
    // 601-800: people 1-200 again, the number written another way, the
    // email in capitals: each links to the customer row i created.
    for i in 1..=200 {
        rows.push([
            format!("Person {i} again"),
            phone(i, i + 1),
            format!("PERSON{i}@ACME.IO"),
        ]);
    }
    // 801-850: people 201-250 by their email only, in lower case.
    for i in 201..=250 {
        rows.push([String::new(), String::new(), format!("person{i}@acme.io")]);
    }
    // 851-870: the customer the store already has, by its number.
    for i in 0..20 {
        rows.push([
            "Existing".into(),
            ["+65 6123 4567", "61234567", "6123-4567"][i % 3].into(),
            String::new(),
        ]);
    }
    // 871-900: blocked values only (all-same digits, a role address).
    for i in 0..30 {
        if i % 2 == 0 {
            rows.push(["Blocked".into(), "+65 8888 8888".into(), String::new()]);
        } else {
            rows.push(["Blocked".into(), String::new(), "test@acme.io".into()]);
        }
    }
    // 901-920: a blocked number beside a new email: created, never linked
    // through the number.
    for i in 0..20 {
        rows.push([
            format!("Shared line {i}"),
            "8888 8888".into(),
            format!("shared{i}@acme.io"),
        ]);
    }
    // 921-940: a number that is no number; 941-960: a broken email.
    for i in 0..20 {
        rows.push(["Bad".into(), format!("call me {i}"), String::new()]);
    }
    for i in 0..20 {
        rows.push(["Bad".into(), String::new(), format!("nobody{i}@")]);
    }
    // 961-980: nothing that identifies anyone.
    for i in 0..20 {
        rows.push([format!("Nameless {i}"), String::new(), String::new()]);
    }
    // 981-990: the number of person 300+k and the email of person 400+k:
    // the two are merged.
    for k in 1..=10 {
        rows.push([
            String::new(),
            phone(300 + k, 0),
            format!("person{}@acme.io", 400 + k),
        ]);
    }
    // 991-1000: new people by number only.
    for i in 601..=610 {
        rows.push([format!("Person {i}"), phone(i, 2), String::new()]);
    }
    assert_eq!(rows.len(), 1000);
    let mut csv = String::from("Full Name,Mobile,E-mail\r\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{}\r\n",
            cell(&r[0]),
            cell(&r[1]),
            cell(&r[2])
        ));
    }
    csv
}

async fn post_import(
    app: &TestApp,
    token: &str,
    query: &str,
    body: String,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(&format!("/v1/imports?{query}")))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

/// Waits for the import to finish; its summary.
async fn finished(app: &TestApp, token: &str, id: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let v: Value = expect_json(
                app.get(&format!("/v1/imports/{id}"), token).await,
                StatusCode::OK,
            )
            .await;
            if v["state"] == "completed" || v["state"] == "failed" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the import finishes")
}

async fn import_and_wait(app: &TestApp, token: &str, query: &str, body: String) -> Value {
    let accepted: Value = expect_json(
        post_import(app, token, query, body, None).await,
        StatusCode::ACCEPTED,
    )
    .await;
    finished(app, token, accepted["id"].as_str().unwrap()).await
}

async fn existing_customer(app: &TestApp, token: &str) -> String {
    let created: Value = expect_json(
        app.post(
            "/v1/customers",
            token,
            &json!({"name": "Existing", "phones": [EXISTING_PHONE]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    created["id"].as_str().unwrap().to_string()
}

async fn all_customers(app: &TestApp) -> Vec<crm_models::Customer> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = app
            .state
            .crm
            .store()
            .list_customers(None, after, 500)
            .await
            .unwrap();
        after = page.last().map(|c| crm_models::store::CustomerCursor {
            updated_at: c.updated_at,
            id: c.id,
        });
        let done = page.len() < 500;
        out.extend(page);
        if done {
            return out;
        }
    }
}

async fn the_thousand_rows(app: &TestApp) {
    let admin = app.admin_token().await;
    let existing = existing_customer(app, &admin).await;
    let query = format!("kind=customers&region=SG&mapping={}", urlencode(MAPPING));

    // A dry run first: the same counts, nothing written.
    let events_before = app
        .state
        .crm
        .store()
        .events_after(None, 100_000)
        .await
        .unwrap()
        .len();
    let dry = import_and_wait(
        app,
        &admin,
        &format!("{query}&dry_run=true"),
        thousand_rows(),
    )
    .await;
    assert_eq!(dry["state"], "completed");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (
            dry["rows_read"].as_u64(),
            dry["created"].as_u64(),
            dry["linked"].as_u64(),
            dry["merged"].as_u64(),
            dry["rejected"].as_u64()
        ),
        (Some(1000), Some(630), Some(270), Some(10), Some(90))
    );
    assert_eq!(dry["first_rejected"][0]["row"], 871);
    assert_eq!(all_customers(app).await.len(), 1);
    let events_after = app
        .state
        .crm
        .store()
        .events_after(None, 100_000)
        .await
        .unwrap()
        .len();
    assert_eq!(events_before, events_after, "a dry run appends no event");

    // The import, with an idempotency key.
    let accepted: Value = expect_json(
        post_import(app, &admin, &query, thousand_rows(), Some("first-import")).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    let done = finished(app, &admin, &id).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(
        (
            done["rows_read"].as_u64(),
            done["created"].as_u64(),
            done["linked"].as_u64(),
            done["merged"].as_u64(),
            done["rejected"].as_u64()
        ),
        (Some(1000), Some(630), Some(270), Some(10), Some(90))
    );
    for count in ["rows_read", "created", "linked", "merged", "rejected"] {
        assert_eq!(dry[count], done[count], "the dry run's {count}");
    }

    // The store: the existing customer, 630 created, 10 of them merged away.
    let customers = all_customers(app).await;
    let active: Vec<_> = customers
        .iter()
        .filter(|c| c.status != crm_models::CustomerStatus::Merged)
        .collect();
    assert_eq!(customers.len(), 631);
    assert_eq!(active.len(), 621);
    let existing = active
        .iter()
        .find(|c| c.id.to_string() == existing)
        .unwrap();
    assert_eq!(existing.phones.len(), 1);
    // Person 1: both spellings of the number are one, the email lowercased.
    let one = active
        .iter()
        .find(|c| c.emails.iter().any(|e| e.as_str() == "person1@acme.io"))
        .unwrap();
    assert_eq!(
        one.phones.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        vec!["+6591000001"]
    );
    assert_eq!(one.emails.len(), 1);
    assert_eq!(one.name.as_deref(), Some("Person 1"));
    // The blocked number is on 20 customers, and owned by none.
    assert_eq!(
        active
            .iter()
            .filter(|c| c.phones.iter().any(|p| p.to_string() == "+6588888888"))
            .count(),
        20
    );
    assert_eq!(
        app.state
            .crm
            .store()
            .identity_owner("phone:+6588888888")
            .await
            .unwrap(),
        None
    );

    // The same key again: the same import, nothing new.
    let again: Value = expect_json(
        post_import(app, &admin, &query, thousand_rows(), Some("first-import")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["id"], json!(id));
    assert_eq!(all_customers(app).await.len(), 631);

    // The rejected rows, with the file's columns and an error naming the field.
    let response = app.get(&format!("/v1/imports/{id}/rejected"), &admin).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        vec!["row", "Full Name", "Mobile", "E-mail", "error"]
    );
    let rejected: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rejected.len(), 90);
    let rows: Vec<u64> = rejected.iter().map(|r| r[0].parse().unwrap()).collect();
    let expected: Vec<u64> = (871..=900).chain(921..=980).collect();
    assert_eq!(rows, expected);
    assert_eq!(&rejected[0][2], "+65 8888 8888");
    assert_eq!(
        &rejected[0][4],
        "Mobile: all digits are the same; no other phone, email or social id names the customer"
    );
    assert_eq!(
        &rejected[1][4],
        "E-mail: a role address, not a person; no other phone, email or social id names the customer"
    );
    assert!(
        rejected[30][4].starts_with("Mobile: "),
        "{}",
        &rejected[30][4]
    );
    assert_eq!(&rejected[30][2], "call me 0");
    assert!(
        rejected[50][4].starts_with("E-mail: "),
        "{}",
        &rejected[50][4]
    );
    assert_eq!(
        &rejected[70][4],
        "phones: a row needs a phone, an email or a social id"
    );

    // Agents may not import, export or read imports.
    let agent = app.agent_token("agent.imports@example.com").await;
    expect_problem(
        post_import(app, &agent, &query, thousand_rows(), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/imports/{id}"), &agent).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.get("/v1/export/customers", &agent).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn mongo_app() -> (TestApp, String) {
    let uri = mongo_server::mongodb_uri();
    let database = format!("crm_imports_{}", uuid::Uuid::new_v4().simple());
    let (u, d) = (uri.clone(), database.clone());
    let app = spawn_app_with(move |c| {
        c.mongodb_uri = Some(u);
        c.mongodb_database = d;
        c.jwt_secret = Some("a test secret that is long enough for HS256".into());
    })
    .await;
    (app, database)
}

async fn drop_database(database: &str) {
    let client = mongodb::Client::with_uri_str(mongo_server::mongodb_uri())
        .await
        .unwrap();
    let _ = client.database(database).drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rows_give_the_expected_counts_on_the_embedded_store() {
    let app = spawn_app().await;
    the_thousand_rows(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rows_give_the_expected_counts_on_mongodb() {
    let (app, database) = mongo_app().await;
    the_thousand_rows(&app).await;
    drop_database(&database).await;
}

/// Rows the merge safeguards decide: a merge past the cap on phones is
/// refused (the row links), a merge within it happens, and a later row
/// naming two customers already merged links.
fn capped_rows() -> String {
    let phones = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("+659200{i:04}"))
            .collect::<Vec<_>>()
            .join(";")
    };
    [
        "name,phones,emails".to_string(),
        format!("A,{},a@acme.io", phones(1, 6)),
        format!("B,{},b@acme.io", phones(11, 5)),
        // 11 phones merged: over the cap of 10.
        ",,a@acme.io;b@acme.io".into(),
        "C,+6592000101,c@acme.io".into(),
        "D,+6592000102,d@acme.io".into(),
        // C and D merged.
        ",+6592000101,d@acme.io".into(),
        // The same two, already one customer.
        ",+6592000102,c@acme.io".into(),
        // A and B again: still over the cap.
        ",+6592000001,b@acme.io".into(),
    ]
    .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_what_the_import_does_under_the_merge_safeguards() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let counts = |v: &Value| {
        (
            v["rows_read"].as_u64(),
            v["created"].as_u64(),
            v["linked"].as_u64(),
            v["merged"].as_u64(),
            v["rejected"].as_u64(),
        )
    };
    let query = "kind=customers&region=SG";
    let dry = import_and_wait(
        &app,
        &admin,
        &format!("{query}&dry_run=true"),
        capped_rows(),
    )
    .await;
    assert_eq!(dry["state"], "completed", "{dry}");
    assert!(all_customers(&app).await.is_empty());
    let done = import_and_wait(&app, &admin, query, capped_rows()).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(counts(&done), (Some(8), Some(4), Some(3), Some(1), Some(0)));
    assert_eq!(counts(&dry), counts(&done));
    // A and B were kept apart; C and D are one.
    assert_eq!(
        all_customers(&app)
            .await
            .iter()
            .filter(|c| c.status != crm_models::CustomerStatus::Merged)
            .count(),
        3
    );

    // The same file again, now that the store holds its customers: every
    // row links, and the dry run says so first.
    let dry = import_and_wait(
        &app,
        &admin,
        &format!("{query}&dry_run=true"),
        capped_rows(),
    )
    .await;
    let done = import_and_wait(&app, &admin, query, capped_rows()).await;
    assert_eq!(counts(&done), (Some(8), Some(0), Some(8), Some(0), Some(0)));
    assert_eq!(counts(&dry), counts(&done));
}

#[tokio::test]
async fn bad_imports_are_refused_with_the_fields_named() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let problem = expect_problem(
        post_import(
            &app,
            &admin,
            "kind=people&mapping=%7B",
            "a\n1\n".into(),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, BTreeSet::from(["kind", "mapping"]));
    let problem = expect_problem(
        post_import(
            &app,
            &admin,
            &format!(
                "kind=customers&mapping={}",
                urlencode(r#"{"Phone": "phones", "Mobile": "fax"}"#)
            ),
            "Name,Mobile\nAnn,+6591234567\n".into(),
            None,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, BTreeSet::from(["mapping.Mobile", "mapping.Phone"]));
    // Nothing was kept of either.
    assert!(std::fs::read_dir(app.data_dir.path().join("imports"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    expect_problem(
        app.get(
            "/v1/export/engagements?format=xml&channel=fax&after=x",
            &admin,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

/// Customers by what identifies them; each one's timeline by what happened.
async fn snapshot(app: &TestApp) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut customers = BTreeSet::new();
    let mut timelines = BTreeSet::new();
    for c in all_customers(app).await {
        if c.status == crm_models::CustomerStatus::Merged {
            continue;
        }
        let mut phones: Vec<String> = c.phones.iter().map(|p| p.to_string()).collect();
        phones.sort();
        let mut emails: Vec<String> = c.emails.iter().map(|e| e.to_string()).collect();
        emails.sort();
        let who = format!(
            "{:?}|{phones:?}|{emails:?}|{:?}|{:?}",
            c.name, c.social, c.status
        );
        let engagements = app
            .state
            .crm
            .store()
            .list_engagements(c.id, &Default::default(), None, 1000)
            .await
            .unwrap();
        let mut timeline: Vec<String> = engagements
            .iter()
            .map(|e| {
                format!(
                    "{}|{}|{}",
                    crm_models::time::format(&e.occurred_at),
                    serde_json::to_string(&e.detail).unwrap(),
                    e.source.client_event_id.clone().unwrap_or_default()
                )
            })
            .collect();
        timeline.sort();
        timelines.insert(format!("{who} => {timeline:?}"));
        customers.insert(who);
    }
    (customers, timelines)
}

async fn export(app: &TestApp, token: &str, path: &str) -> String {
    let response = app.get(path, token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

async fn round_trip(from: &TestApp, to: &TestApp) {
    let admin = from.admin_token().await;
    let query = format!("kind=customers&region=SG&mapping={}", urlencode(MAPPING));
    let done = import_and_wait(from, &admin, &query, thousand_rows()).await;
    assert_eq!(done["created"], 630);
    // A history on a few customers, on every channel.
    for (i, item) in [
        json!({"channel": "sms", "direction": "inbound", "body": "Is the flat, \"still\" available?\nCall me", "customer": {"phone": "+6591000001"}}),
        json!({"channel": "call", "direction": "outbound", "duration_s": 75, "status": "answered", "customer": {"phone": "+6591000001"}}),
        json!({"channel": "email", "direction": "outbound", "subject": "=SUM(A1) viewing", "customer": {"email": "person2@acme.io"}}),
        json!({"channel": "whatsapp", "direction": "inbound", "payload_type": "text", "payload": "hi", "customer": {"email": "shared3@acme.io"}}),
        json!({"channel": "web", "url": "https://acme.io/flats/1", "view": "flat", "customer": {"phone": "+6561234567"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut item = item;
        item["occurred_at"] = json!(format!("2026-11-2{i}T09:30:00Z"));
        item["client_event_id"] = json!(format!("history-{i}"));
        assert_eq!(from.post("/v1/engagements", &admin, &item).await.status(), StatusCode::CREATED);
    }

    // Customers as CSV, engagements as NDJSON, each resumed once half-way.
    let customers = export(from, &admin, "/v1/export/customers?format=csv").await;
    assert_eq!(customers.lines().count(), 1 + 621);
    let engagements = export(from, &admin, "/v1/export/engagements?format=ndjson").await;
    let lines: Vec<&str> = engagements.lines().collect();
    assert_eq!(lines.len(), 5);
    let cursor: Value = serde_json::from_str(lines[1]).unwrap();
    let rest = export(
        from,
        &admin,
        &format!(
            "/v1/export/engagements?after={}",
            cursor["cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(rest.lines().collect::<Vec<_>>(), lines[2..].to_vec());
    let sms = export(
        from,
        &admin,
        "/v1/export/engagements?format=csv&channel=sms",
    )
    .await;
    assert_eq!(
        sms.lines().count(),
        1 + 2,
        "the header and a row whose body holds a line break"
    );

    let to_admin = to.admin_token().await;
    let existing = existing_customer(to, &to_admin).await;
    assert!(!existing.is_empty());
    let done = import_and_wait(to, &to_admin, "kind=customers", customers).await;
    assert_eq!(done["rejected"], 0, "{done}");
    let accepted: Value = expect_json(
        to.client
            .post(to.url("/v1/imports?kind=engagements"))
            .bearer_auth(&to_admin)
            .header("content-type", "application/x-ndjson")
            .body(engagements)
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await;
    let done = finished(to, &to_admin, accepted["id"].as_str().unwrap()).await;
    assert_eq!(
        (
            done["created"].as_u64(),
            done["rejected"].as_u64(),
            done["customers_created"].as_u64()
        ),
        (Some(5), Some(0), Some(0)),
        "{done}"
    );
    assert_eq!(snapshot(from).await, snapshot(to).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_into_a_fresh_embedded_store_with_the_same_customers_and_timelines() {
    let from = spawn_app().await;
    let admin = from.admin_token().await;
    existing_customer(&from, &admin).await;
    let to = spawn_app().await;
    round_trip(&from, &to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_into_a_fresh_mongodb_with_the_same_customers_and_timelines() {
    let (from, a) = mongo_app().await;
    let admin = from.admin_token().await;
    existing_customer(&from, &admin).await;
    let (to, b) = mongo_app().await;
    round_trip(&from, &to).await;
    drop_database(&a).await;
    drop_database(&b).await;
}
