//! The mobile bridge over HTTP: device enrollment and tokens, batch upload
//! of SMS and call logs (idempotent, per-event results), caller-ID and the
//! incoming-call signals it leaves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{expect_json, expect_problem, spawn_app, spawn_app_with, TestApp};
use crm_indexer::IndexedCustomer;
use crm_models::{Customer, CustomerId, PhoneNumber};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Enrolls a device for the holder of `staff` and returns `(id, token)`.
async fn enroll(app: &TestApp, staff: &str, name: &str) -> (String, String) {
    let created: Value = expect_json(
        app.post(
            "/v1/devices",
            staff,
            &json!({ "name": name, "default_region": "SG" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    (
        created["id"].as_str().unwrap().to_string(),
        created["token"].as_str().unwrap().to_string(),
    )
}

fn sms(id: &str, number: &str, at: &str) -> Value {
    json!({
        "client_event_id": id, "kind": "sms", "direction": "inbound",
        "number": number, "occurred_at": at, "body": "is the flat still available?",
    })
}

fn call(id: &str, number: &str, at: &str) -> Value {
    json!({
        "client_event_id": id, "kind": "call", "direction": "outbound",
        "number": number, "occurred_at": at, "duration_s": 95, "status": "answered",
        "contact_name": "Ann Tan",
    })
}

async fn upload(app: &TestApp, token: &str, events: Vec<Value>) -> Vec<Value> {
    let answer: Value = expect_json(
        app.post("/v1/mobile/events", token, &json!({ "events": events }))
            .await,
        StatusCode::OK,
    )
    .await;
    answer["results"].as_array().unwrap().clone()
}

fn statuses(results: &[Value]) -> Vec<&str> {
    results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect()
}

/// The customer's timeline, newest first.
async fn timeline(app: &TestApp, customer: &str) -> Vec<Value> {
    let admin = app.admin_token().await;
    let page: Value = expect_json(
        app.get(
            &format!("/v1/customers/{customer}/engagements?limit=500"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    page["items"].as_array().unwrap().clone()
}

/// Caller-ID, polled until the index has caught up with the store.
async fn caller_id_until_known(app: &TestApp, token: &str, number: &str) -> Value {
    for _ in 0..100 {
        let answer: Value = expect_json(
            app.get(&format!("/v1/mobile/caller-id?number={number}"), token)
                .await,
            StatusCode::OK,
        )
        .await;
        if answer["known"] == true {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{number} never became known to caller-ID");
}

#[tokio::test]
async fn devices_are_enrolled_with_a_token_shown_once_and_listed_per_owner() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let ann = app.agent_token("ann@example.com").await;
    let bob = app.agent_token("bob@example.com").await;

    let created: Value = expect_json(
        app.post(
            "/v1/devices",
            &ann,
            &json!({ "name": "Ann's Pixel", "default_region": "sg" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("crm_dev_"), "{created}");
    assert_eq!(created["default_region"], "SG");
    assert!(token.starts_with(created["token_prefix"].as_str().unwrap()));
    enroll(&app, &bob, "Bob's phone").await;

    let mine: Value = expect_json(app.get("/v1/devices", &ann).await, StatusCode::OK).await;
    let names: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Ann's Pixel"]);
    assert!(
        !mine.to_string().contains(token),
        "lists never show the token"
    );
    assert!(mine["items"][0].get("token").is_none());

    let all: Value = expect_json(app.get("/v1/devices", &admin).await, StatusCode::OK).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);

    // The token is stored only as its hash.
    let stored = app.state.crm.store().list_devices(None).await.unwrap();
    assert!(stored
        .iter()
        .all(|d| d.token_hash.len() == 64 && d.token_hash != token));

    let problem = expect_problem(
        app.post(
            "/v1/devices",
            &ann,
            &json!({ "name": " ", "default_region": "XX" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2, "{problem}");
    let key = app.service_key("website").await;
    expect_problem(
        app.post("/v1/devices", &key, &json!({ "name": "x" })).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_device_token_is_refused_from_the_next_request_on() {
    let app = spawn_app().await;
    let ann = app.agent_token("ann@example.com").await;
    let bob = app.agent_token("bob@example.com").await;
    let (id, token) = enroll(&app, &ann, "Ann's Pixel").await;
    let at = "2026-11-20T10:00:00Z";
    upload(&app, &token, vec![sms("1", "+6581226418", at)]).await;

    // Not Bob's to revoke.
    expect_problem(
        app.delete(&format!("/v1/devices/{id}"), &bob).await,
        StatusCode::NOT_FOUND,
        "device_not_found",
    )
    .await;
    let response = app.delete(&format!("/v1/devices/{id}"), &ann).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let problem = expect_problem(
        app.post(
            "/v1/mobile/events",
            &token,
            &json!({ "events": [sms("2", "+6581226418", at)] }),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(problem["detail"], "invalid or revoked device token");
    expect_problem(
        app.get("/v1/mobile/caller-id?number=%2B6581226418", &token)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        app.delete(&format!("/v1/devices/{id}"), &ann).await,
        StatusCode::NOT_FOUND,
        "device_not_found",
    )
    .await;
    let listed: Value = expect_json(app.get("/v1/devices", &ann).await, StatusCode::OK).await;
    assert!(listed["items"][0]["revoked_at"].is_string(), "{listed}");
    assert!(listed["items"][0]["last_upload_at"].is_string(), "{listed}");
}

#[tokio::test]
async fn a_deactivated_users_devices_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = app.create_user("ann@example.com", "agent").await;
    let ann = app
        .login("ann@example.com", common::USER_PASSWORD)
        .await
        .access_token;
    let (_, token) = enroll(&app, &ann, "Ann's Pixel").await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let response = app.patch(&path, &admin, &json!({ "active": false })).await;
    assert_eq!(response.status(), StatusCode::OK);
    expect_problem(
        app.get("/v1/mobile/caller-id?number=%2B6581226418", &token)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn staff_tokens_and_api_keys_are_refused_on_the_mobile_routes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let key = app.service_key("website").await;
    let body = json!({ "events": [sms("1", "+6581226418", "2026-11-20T10:00:00Z")] });
    for credential in [&admin, &key] {
        let problem = expect_problem(
            app.post("/v1/mobile/events", credential, &body).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains("device token"),
            "{problem}"
        );
        expect_problem(
            app.get("/v1/mobile/caller-id?number=%2B6581226418", credential)
                .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let response = app
        .client
        .get(app.url("/v1/mobile/caller-id?number=%2B6581226418"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    expect_problem(
        app.request(Method::POST, "/v1/mobile/events", None, Some(&body))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        app.post("/v1/mobile/events", "crm_dev_made-up", &body)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn a_device_token_is_refused_outside_the_mobile_routes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = enroll(&app, &admin, "Admin's phone").await;
    let customer = json!({ "name": "Ann", "phones": ["+6581226418"] });
    for (method, path, body) in [
        (Method::GET, "/v1/customers", None),
        (Method::POST, "/v1/customers", Some(&customer)),
        (Method::GET, "/v1/me", None),
        (Method::GET, "/v1/devices", None),
        (Method::GET, "/v1/search?q=ann", None),
        (Method::GET, "/v1/lookup/phone/%2B6581226418", None),
        (Method::GET, "/v1/calls/incoming", None),
    ] {
        let problem = expect_problem(
            app.request(method, path, Some(&token), body).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert_eq!(
            problem["detail"], "device tokens work only on /v1/mobile/*",
            "{path}"
        );
    }
}

#[tokio::test]
async fn an_unparseable_number_is_rejected_with_its_reason_and_the_rest_is_stored() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = enroll(&app, &admin, "phone").await;
    let at = "2026-11-20T10:00:00Z";
    let results = upload(
        &app,
        &token,
        vec![
            sms("1", "8122 6418", at),
            sms("2", "call me maybe", at),
            json!({ "kind": "fax", "number": "+6581226418" }),
            call("3", "+65 8122 6418", at),
        ],
    )
    .await;
    assert_eq!(
        statuses(&results),
        ["created", "rejected", "rejected", "created"]
    );
    let error = &results[1]["error"];
    assert_eq!(error["code"], "invalid_event");
    assert_eq!(error["errors"][0]["field"], "number", "{error}");
    assert!(
        error["detail"].as_str().unwrap().contains("phone number"),
        "{error}"
    );
    assert_eq!(results[1]["client_event_id"], "2");
    assert!(results[2]["client_event_id"].is_null());
    let fields: Vec<&str> = results[2]["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["client_event_id", "kind", "direction", "occurred_at"]
    );
    // The national number was read with the device's region: one customer,
    // named from the contact.
    assert_eq!(results[0]["customer_id"], results[3]["customer_id"]);
    let customer = results[0]["customer_id"].as_str().unwrap();
    let stored: Value = expect_json(
        app.get(&format!("/v1/customers/{customer}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stored["name"], "Ann Tan");
    assert_eq!(stored["phones"], json!(["+6581226418"]));
    assert_eq!(timeline(&app, customer).await.len(), 2);
}

#[tokio::test]
async fn a_batch_over_500_events_or_1_mib_is_refused_with_413() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = enroll(&app, &admin, "phone").await;
    let events: Vec<Value> = (0..600)
        .map(|i| sms(&format!("e{i}"), "+6581226418", "2026-11-20T10:00:00Z"))
        .collect();
    let problem = expect_problem(
        app.post("/v1/mobile/events", &token, &json!({ "events": events }))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_eq!(
        problem["detail"],
        "a batch holds at most 500 events; this one has 600: split it"
    );
    // Nothing of it was stored.
    let known: Value = expect_json(
        app.get("/v1/mobile/caller-id?number=%2B6581226418", &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(known["known"], false);
    assert!(app
        .state
        .crm
        .store()
        .identity_owner("phone:+6581226418")
        .await
        .unwrap()
        .is_none());

    let mut big = sms("big", "+6581226418", "2026-11-20T10:00:00Z");
    big["body"] = json!("x".repeat(1024 * 1024));
    let problem = expect_problem(
        app.post("/v1/mobile/events", &token, &json!({ "events": [big] }))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("1 MiB"),
        "{problem}"
    );
    expect_problem(
        app.post("/v1/mobile/events", &token, &json!({ "items": [] }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn the_same_batch_twice_and_overlapping_batches_store_each_event_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = enroll(&app, &admin, "phone").await;
    let batch: Vec<Value> = (0..20)
        .map(|i| {
            sms(
                &format!("e{i}"),
                "+6581226418",
                &format!("2026-11-20T10:{i:02}:00Z"),
            )
        })
        .collect();
    let first = upload(&app, &token, batch.clone()).await;
    assert!(statuses(&first).iter().all(|s| *s == "created"));
    let customer = first[0]["customer_id"].as_str().unwrap().to_string();
    assert_eq!(timeline(&app, &customer).await.len(), 20);

    let again = upload(&app, &token, batch.clone()).await;
    assert!(
        statuses(&again).iter().all(|s| *s == "duplicate"),
        "{again:?}"
    );
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["engagement_id"], b["engagement_id"]);
        assert_eq!(a["customer_id"], b["customer_id"]);
    }
    // Overlapping: the last ten again plus five new, one of them twice.
    let mut overlap: Vec<Value> = batch[10..].to_vec();
    overlap.extend((20..25).map(|i| sms(&format!("e{i}"), "+6581226418", "2026-11-20T11:00:00Z")));
    overlap.push(sms("e24", "+6581226418", "2026-11-20T11:00:00Z"));
    let results = upload(&app, &token, overlap).await;
    let s = statuses(&results);
    assert_eq!(s.iter().filter(|s| **s == "duplicate").count(), 11, "{s:?}");
    assert_eq!(s.iter().filter(|s| **s == "created").count(), 5, "{s:?}");
    assert_eq!(timeline(&app, &customer).await.len(), 25);

    // Another device may use the same client ids: they are its own events.
    let (_, other) = enroll(&app, &admin, "second phone").await;
    let results = upload(&app, &other, batch[..3].to_vec()).await;
    assert_eq!(statuses(&results), ["created"; 3]);
    assert_eq!(timeline(&app, &customer).await.len(), 28);
}

#[tokio::test]
async fn concurrent_retries_of_one_batch_store_each_event_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = enroll(&app, &admin, "phone").await;
    // Two counterparts, one of them unknown until this batch: the concurrent
    // uploads also race to create it.
    let batch: Vec<Value> = (0..50)
        .map(|i| {
            let number = if i % 2 == 0 {
                "+6581226418"
            } else {
                "+6591234567"
            };
            call(
                &format!("c{i}"),
                number,
                &format!("2026-11-20T09:{i:02}:00Z"),
            )
        })
        .collect();
    let uploads = (0..8).map(|_| {
        let app = &app;
        let token = token.clone();
        let batch = batch.clone();
        async move { upload(app, &token, batch).await }
    });
    let answers = futures::future::join_all(uploads).await;
    for i in 0..batch.len() {
        let created = answers
            .iter()
            .filter(|results| results[i]["status"] == "created")
            .count();
        let duplicates = answers
            .iter()
            .filter(|results| results[i]["status"] == "duplicate")
            .count();
        assert_eq!((created, duplicates), (1, 7), "event {i}");
        let ids: std::collections::BTreeSet<String> = answers
            .iter()
            .map(|results| results[i]["engagement_id"].to_string())
            .collect();
        assert_eq!(ids.len(), 1, "event {i} has one engagement id");
    }
    let customers: std::collections::BTreeSet<String> = answers
        .iter()
        .flat_map(|results| results.iter().map(|r| r["customer_id"].to_string()))
        .collect();
    assert_eq!(customers.len(), 2, "one customer per number: {customers:?}");
    let mut total = 0;
    for customer in &customers {
        total += timeline(&app, customer.trim_matches('"')).await.len();
    }
    assert_eq!(total, 50);
}

#[tokio::test]
async fn an_event_older_than_the_last_upload_lands_at_its_time() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let (_, token) = enroll(&app, &admin, "phone").await;
    let recent = upload(
        &app,
        &token,
        vec![
            sms("new-1", "+6581226418", "2026-11-20T10:00:00Z"),
            sms("new-2", "+6581226418", "2026-11-20T12:00:00Z"),
        ],
    )
    .await;
    let customer = recent[0]["customer_id"].as_str().unwrap().to_string();
    // The phone was offline for days: this call is older than everything sent.
    let late = upload(
        &app,
        &token,
        vec![call("old-1", "+6581226418", "2026-11-17T08:30:00Z")],
    )
    .await;
    assert_eq!(statuses(&late), ["created"]);
    let items = timeline(&app, &customer).await;
    let times: Vec<&str> = items
        .iter()
        .map(|e| e["occurred_at"].as_str().unwrap())
        .collect();
    assert_eq!(times.len(), 3);
    assert!(times[2].starts_with("2026-11-17T08:30:00"), "{times:?}");
    assert_eq!(items[2]["channel"], "call");
    assert_eq!(items[2]["id"], late[0]["engagement_id"]);
}

#[tokio::test]
async fn caller_id_answers_known_unknown_and_shared_numbers_and_signals_the_desktop() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    let ann = app.agent_token("ann@example.com").await;
    let (device_id, token) = enroll(&app, &ann, "Ann's Pixel").await;
    let events: Vec<Value> = (0..7)
        .map(|i| {
            sms(
                &format!("s{i}"),
                "81226418",
                &format!("2026-11-20T10:0{i}:00Z"),
            )
        })
        .collect();
    let mut events = events;
    events.push(call("c1", "81226418", "2026-11-20T11:00:00Z"));
    let results = upload(&app, &token, events).await;
    let customer = results[0]["customer_id"].as_str().unwrap().to_string();
    // Wait until the index worker has applied every engagement (without
    // asking caller-ID, which would record more signals than this test counts).
    let id: CustomerId = customer.parse().unwrap();
    for attempt in 0.. {
        let summary = app.state.index.summary(id).await.unwrap();
        if summary.is_some_and(|s| s.counts.total() == 8) {
            break;
        }
        assert!(attempt < 200, "the index never caught up with the upload");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let answer = caller_id_until_known(&app, &token, "8122%206418").await;
    let customers = answer["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 1, "{answer}");
    let found = &customers[0];
    assert_eq!(found["id"], customer.as_str());
    assert_eq!(found["name"], "Ann Tan");
    assert_eq!(found["main_phone"], "+6581226418");
    assert_eq!(found["counts"]["sms"], 7);
    assert_eq!(found["counts"]["call"], 1);
    let last = found["last_engagements"].as_array().unwrap();
    assert_eq!(last.len(), 5, "{found}");
    assert_eq!(last[0]["channel"], "call");

    let unknown: Value = expect_json(
        app.get("/v1/mobile/caller-id?number=%2B6590000000", &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unknown, json!({ "known": false, "customers": [] }));
    expect_problem(
        app.get("/v1/mobile/caller-id?number=not-a-number", &token)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.get("/v1/mobile/caller-id", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // A switchboard number on two profiles (as the index may hold it).
    let switchboard = PhoneNumber::parse("+6562000000", None).unwrap();
    let mut shared = Vec::new();
    for name in ["Acme Pte Ltd", "Acme Holdings"] {
        let mut c = Customer::new(
            CustomerId::new(),
            Some(name.into()),
            crm_models::time::now(),
        );
        c.phones.push(switchboard.clone());
        app.state
            .index
            .upsert(&IndexedCustomer::new(c.clone(), Vec::new()))
            .await
            .unwrap();
        shared.push(c.id.to_string());
    }
    let answer: Value = expect_json(
        app.get("/v1/mobile/caller-id?number=6200%200000", &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["known"], true);
    let mut ids: Vec<String> = answer["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    shared.sort();
    assert_eq!(ids, shared);

    // The lookups are incoming-call signals for Ann's desktop, not Bob's.
    let mut signals = Vec::new();
    for _ in 0..100 {
        let page: Value =
            expect_json(app.get("/v1/calls/incoming", &ann).await, StatusCode::OK).await;
        signals = page["items"].as_array().unwrap().clone();
        if signals.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(signals.len(), 4, "{signals:?}");
    assert_eq!(signals[0]["customer_id"], customer.as_str());
    assert_eq!(signals[0]["device_id"], device_id.as_str());
    assert_eq!(signals[0]["number"], "+6581226418");
    // The unknown number is a signal too, about no customer, so that Ann's
    // desktop can offer to create one.
    let unknown: Vec<&Value> = signals
        .iter()
        .filter(|s| s["number"] == "+6590000000")
        .collect();
    assert_eq!(unknown.len(), 1, "{signals:?}");
    assert_eq!(unknown[0]["customer_id"], Value::Null);
    assert_eq!(unknown[0]["device_id"], device_id.as_str());
    let bob = app.agent_token("bob@example.com").await;
    let theirs: Value =
        expect_json(app.get("/v1/calls/incoming", &bob).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
    let all: Value = expect_json(
        app.get("/v1/calls/incoming?since=2000-01-01T00:00:00Z", &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
    for bad in ["yesterday", "2026-11-21T09:30:60Z", "0000-01-01T00:00:00Z"] {
        let problem = expect_problem(
            app.get(&format!("/v1/calls/incoming?since={bad}"), &ann)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "since", "{problem}");
    }
}

#[tokio::test]
async fn the_device_simulator_counts_known_and_unknown_caller_id_answers() {
    let app = spawn_app_with(|c| c.default_region = Some("SG".into())).await;
    let ann = app.agent_token("ann@example.com").await;
    let (_, token) = enroll(&app, &ann, "Ann's Pixel").await;
    upload(
        &app,
        &token,
        vec![sms("s1", "81226418", "2026-11-20T10:00:00Z")],
    )
    .await;
    caller_id_until_known(&app, &token, "81226418").await;

    // One device asks for a known number (typed with a space, sent
    // percent-encoded) and an unknown one in turn.
    let numbers = std::sync::Arc::new(vec!["8122 6418".to_string(), "+6590000000".to_string()]);
    let report = crm_mobile_bridge::sim::caller_id_fleet(
        &app.address,
        std::slice::from_ref(&token),
        numbers.clone(),
        0.3,
        None,
    )
    .await
    .unwrap();
    assert!(report.lookups >= 2, "{} lookups", report.lookups);
    assert_eq!(report.latencies.len(), report.lookups);
    assert_eq!(report.known, report.lookups.div_ceil(2));

    // A refused lookup stops the device with the status.
    let refused = crm_mobile_bridge::sim::caller_id_fleet(
        &app.address,
        &["crm_dev_not-a-token".to_string()],
        numbers,
        0.3,
        None,
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused:#}");
}
