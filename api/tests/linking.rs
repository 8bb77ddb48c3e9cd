//! Identity linking over HTTP: web stitching through `/v1/track`, merge by
//! hand, history, undo, shared numbers, suggested duplicates; after each
//! case the index agrees with the store (the check `crm-indexer verify` runs),
//! in-process and with Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "../../indexer/tests/support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{expect_json, expect_problem, problem_fields, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn sg(config: &mut crm_api::config::Config) {
    config.default_region = Some("SG".into());
}

/// Waits until the index agrees with the store (what `crm-indexer verify`
/// checks), for up to 10 s.
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

async fn page_view(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app.post("/v1/track", key, &body).await;
    expect_json(response, StatusCode::CREATED).await
}

async fn web_then_login_then_call(app: TestApp) {
    let token = app.admin_token().await;
    let key = app.service_key("website").await;
    let ann: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Ann Tan", "emails": ["ann@acme.com"], "phones": ["+65 8122 6418"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let ann_id = id(&ann);

    // Two anonymous page views, then the visitor logs in with Ann's email.
    let first = page_view(
        &app,
        &key,
        json!({"anonymous_id": "v-7f3a", "url": "https://shop.example/p/1", "view": "product", "occurred_at": "2026-11-20T09:00:00Z"}),
    )
    .await;
    let visitor_id = first["customer_id"].as_str().unwrap().to_string();
    assert_ne!(visitor_id, ann_id);
    page_view(
        &app,
        &key,
        json!({"anonymous_id": "v-7f3a", "url": "https://shop.example/p/2", "view": "product", "category": "shoes", "object_id": "2"}),
    )
    .await;
    let login = page_view(
        &app,
        &key,
        json!({"anonymous_id": "v-7f3a", "email": "ANN@acme.com", "url": "https://shop.example/account", "view": "login"}),
    )
    .await;
    assert_eq!(login["customer_id"], ann_id.as_str());

    // A call from the profile's phone, typed another way.
    let call: Value = expect_json(
        app.post(
            "/v1/engagements",
            &token,
            &json!({"customer": {"phone": "8122 6418"}, "channel": "call", "direction": "inbound", "duration_s": 40, "status": "answered"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(call["customer_id"], ann_id.as_str());

    let timeline: Value = expect_json(
        app.get(
            &format!("/v1/customers/{ann_id}/engagements?limit=50"),
            &token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let channels: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels.len(), 4, "{timeline}");
    assert_eq!(channels.iter().filter(|c| **c == "web").count(), 3);

    // The visitor's old id answers with Ann, on every customer route.
    let old: Value = expect_json(
        app.get(&format!("/v1/customers/{visitor_id}"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(old["id"], ann_id.as_str());
    let old_timeline: Value = expect_json(
        app.get(&format!("/v1/customers/{visitor_id}/engagements"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(old_timeline["items"].as_array().unwrap().len(), 4);
    index_agrees(&app).await;
    let summary: Value = expect_json(
        app.get(&format!("/v1/customers/{visitor_id}/summary"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(summary["id"], ann_id.as_str());
    assert_eq!(summary["counts"]["web"], 3);

    // The history says who linked them, and with which identifier.
    let history: Value = expect_json(
        app.get(&format!("/v1/customers/{visitor_id}/history"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{history}");
    assert_eq!(items[0]["action"], "merge");
    assert_eq!(items[0]["by"]["kind"], "auto");
    assert_eq!(items[0]["survivor_id"], ann_id.as_str());
    assert_eq!(items[0]["merged_ids"], json!([visitor_id]));

    // Search finds Ann once, by the email the visitor logged in with.
    let found: Value = expect_json(
        app.get("/v1/search?q=ann@acme.com", &token).await,
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![ann_id.as_str()]);
}

#[tokio::test]
async fn web_visitor_login_and_call_make_one_customer_in_process() {
    web_then_login_then_call(spawn_app_with(sg).await).await;
}

#[tokio::test]
async fn web_visitor_login_and_call_make_one_customer_with_redis() {
    let url = redis_server::url();
    let prefix = redis_server::unique_prefix();
    let app = spawn_app_with(move |c| {
        sg(c);
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
    })
    .await;
    web_then_login_then_call(app).await;
}

#[tokio::test]
async fn merge_by_hand_history_and_undo() {
    let app = spawn_app_with(sg).await;
    let admin = app.admin_token().await;
    let agent = app.agent_token("agent@example.com").await;
    let a: Value = expect_json(
        app.post(
            "/v1/customers",
            &agent,
            &json!({"name": "Wei Ming Tan", "emails": ["weiming@acme.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let b: Value = expect_json(
        app.post(
            "/v1/customers",
            &agent,
            &json!({"name": "Tan Wei Ming", "phones": ["+65 9123 4567"], "emails": ["wm.tan@gmail.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let (a_id, b_id) = (id(&a), id(&b));
    for i in 0..3 {
        expect_json::<Value>(
            app.post(
                "/v1/engagements",
                &agent,
                &json!({"customer": {"phone": "91234567"}, "channel": "sms", "direction": "inbound", "body": format!("hello {i}")}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }

    // Bad requests first: nothing changes.
    expect_problem(
        app.post(
            &format!("/v1/customers/{a_id}/merge"),
            &agent,
            &json!({"ids": []}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.post(
            &format!("/v1/customers/{a_id}/merge"),
            &agent,
            &json!({"ids": ["not-a-uuid"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.post(
            &format!("/v1/customers/{a_id}/merge"),
            &agent,
            &json!({"ids": [uuid::Uuid::new_v4().to_string()]}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "customer_not_found",
    )
    .await;
    expect_problem(
        app.post(
            &format!("/v1/customers/{a_id}/merge"),
            &agent,
            &json!({"ids": [a_id]}),
        )
        .await,
        StatusCode::CONFLICT,
        "merge_refused",
    )
    .await;

    let merged: Value = expect_json(
        app.post(
            &format!("/v1/customers/{a_id}/merge"),
            &agent,
            &json!({"ids": [b_id]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let merge_id = merged["merge_id"].as_str().unwrap().to_string();
    assert_eq!(merged["customer"]["id"], a_id.as_str());
    assert_eq!(
        merged["customer"]["name"], "Wei Ming Tan",
        "the survivor's values win"
    );
    assert_eq!(merged["customer"]["phones"], json!(["+6591234567"]));
    assert_eq!(merged["customer"]["counts"]["sms"], 3);
    index_agrees(&app).await;
    let lookup: Value = expect_json(
        app.get("/v1/lookup/phone/+6591234567", &agent).await,
        StatusCode::OK,
    )
    .await;
    let matches = lookup["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{lookup}");
    assert_eq!(matches[0]["id"], a_id.as_str());

    let history: Value = expect_json(
        app.get(&format!("/v1/customers/{a_id}/history"), &agent)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(history["items"][0]["by"]["kind"], "user");
    assert!(history["items"][0]["by"]["user_id"]
        .as_str()
        .unwrap()
        .starts_with("user:"));

    // Undo is for admins.
    expect_problem(
        app.post(&format!("/v1/merges/{merge_id}/undo"), &agent, &json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let undone: Value = expect_json(
        app.post(&format!("/v1/merges/{merge_id}/undo"), &admin, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let customers = undone["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 2);
    let restored: Value = expect_json(
        app.get(&format!("/v1/customers/{b_id}"), &agent).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(restored["id"], b_id.as_str());
    assert_eq!(restored["status"], "active");
    assert_eq!(restored["name"], "Tan Wei Ming");
    assert_eq!(restored["phones"], json!(["+6591234567"]));
    assert_eq!(restored["emails"], json!(["wm.tan@gmail.com"]));
    assert_eq!(restored["counts"]["sms"], 3);
    let survivor: Value = expect_json(
        app.get(&format!("/v1/customers/{a_id}"), &agent).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(survivor["emails"], json!(["weiming@acme.com"]));
    assert_eq!(survivor["phones"], json!([]));
    assert_eq!(survivor["counts"]["sms"], 0);
    expect_problem(
        app.post(&format!("/v1/merges/{merge_id}/undo"), &admin, &json!({}))
            .await,
        StatusCode::CONFLICT,
        "merge_refused",
    )
    .await;
    expect_problem(
        app.post(
            &format!("/v1/merges/{}/undo", uuid::Uuid::new_v4()),
            &admin,
            &json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "merge_not_found",
    )
    .await;
    index_agrees(&app).await;

    // The pair no longer merges on its own: an email naming both goes to the
    // older one and is suggested instead.
    expect_json::<Value>(
        app.post(
            "/v1/engagements",
            &agent,
            &json!({"customer": {"phone": "91234567", "email": "weiming@acme.com"}, "channel": "email", "direction": "inbound", "subject": "hi"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let dupes: Value = expect_json(app.get("/v1/duplicates", &agent).await, StatusCode::OK).await;
    let items = dupes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dupes}");
    assert_eq!(items[0]["reason"], "undone_merge");
    let pair: BTreeSet<&str> = items[0]["customer_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(pair, BTreeSet::from([a_id.as_str(), b_id.as_str()]));
    expect_problem(
        app.get("/v1/duplicates?limit=0", &agent).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let history: Value = expect_json(
        app.get(&format!("/v1/customers/{b_id}/history"), &agent)
            .await,
        StatusCode::OK,
    )
    .await;
    let actions: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["merge", "undo"]);
    index_agrees(&app).await;
}

#[tokio::test]
async fn shared_and_blocked_numbers_never_merge() {
    let app = spawn_app_with(|c| {
        sg(c);
        c.link_blocked = vec!["6561234567".into()];
    })
    .await;
    let admin = app.admin_token().await;
    let agent = app.agent_token("agent@example.com").await;
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

    let read = |id: Value| {
        let app = &app;
        let agent = agent.clone();
        async move {
            expect_json::<Value>(
                app.get(&format!("/v1/customers/{}", id.as_str().unwrap()), &agent)
                    .await,
                StatusCode::OK,
            )
            .await
        }
    };
    assert_eq!(
        read(guest["id"].clone()).await["shared_identifiers"],
        json!([])
    );

    // Only admins mark a number shared; bad values are refused.
    expect_problem(
        app.post(
            "/v1/identities/phone:+6563388888/shared",
            &agent,
            &json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.post("/v1/identities/phone:12/shared", &admin, &json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.post(
            "/v1/identities/6338%208888/shared",
            &admin,
            &json!({"shared": "yes"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let shared: Value = expect_json(
        app.post("/v1/identities/6338%208888/shared", &admin, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        shared,
        json!({"identifier": "phone:+6563388888", "shared": true})
    );
    // The customer says which of its identifiers are shared, to anyone
    // who reads it.
    assert_eq!(
        read(guest["id"].clone()).await["shared_identifiers"],
        json!(["phone:+6563388888"])
    );

    let second: Value = expect_json(
        app.post(
            "/v1/engagements",
            &agent,
            &json!({"customer": {"phone": "63388888", "email": "two@guest.co", "name": "Guest Two"}, "channel": "call", "direction": "inbound", "duration_s": 10, "status": "answered"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(second["customer_id"], guest["id"]);
    assert_eq!(second["customer_created"], true);
    index_agrees(&app).await;
    let lookup: Value = expect_json(
        app.get("/v1/lookup/phone/+6563388888", &agent).await,
        StatusCode::OK,
    )
    .await;
    let ids: BTreeSet<&str> = lookup["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            guest["id"].as_str().unwrap(),
            second["customer_id"].as_str().unwrap()
        ]),
        "a shared number finds all its customers"
    );
    let second_read = read(second["customer_id"].clone()).await;
    assert_eq!(
        second_read["shared_identifiers"],
        json!(["phone:+6563388888"]),
        "{second_read}"
    );
    // Unmarked, it is no longer shown shared.
    let unshared: Value = expect_json(
        app.post(
            "/v1/identities/phone:+6563388888/shared",
            &admin,
            &json!({"shared": false}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unshared["shared"], false);
    assert_eq!(
        read(guest["id"].clone()).await["shared_identifiers"],
        json!([])
    );
    // Marked again for the rest of the test.
    expect_json::<Value>(
        app.post("/v1/identities/6338%208888/shared", &admin, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;

    // A number blocked in configuration never links two calls.
    let mut callers = BTreeSet::new();
    for _ in 0..2 {
        let r: Value = expect_json(
            app.post(
                "/v1/engagements",
                &agent,
                &json!({"customer": {"phone": "+65 6123 4567"}, "channel": "call", "direction": "inbound", "duration_s": 5, "status": "missed"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        callers.insert(r["customer_id"].as_str().unwrap().to_string());
    }
    assert_eq!(callers.len(), 2);
    let dupes: Value = expect_json(app.get("/v1/duplicates", &agent).await, StatusCode::OK).await;
    assert!(
        dupes["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["reason"] != "undone_merge"),
        "{dupes}"
    );
    index_agrees(&app).await;
}

#[tokio::test]
async fn track_validates_and_is_for_ingest_roles() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let problem = expect_problem(
        app.post(
            "/v1/track",
            &key,
            &json!({"url": "https://shop.example/", "view": "home"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "anonymous_id");
    let problem = expect_problem(
        app.post("/v1/track", &key, &json!({"anonymous_id": "v1", "email": "not an email", "view": "home", "colour": "red"}))
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields = problem_fields(&problem);
    assert_eq!(fields, BTreeSet::from(["email", "url", "colour"]));
    // A retried page view with the same client event id is stored once.
    let body = json!({"anonymous_id": "v1", "url": "https://shop.example/", "view": "home", "client_event_id": "pv-1"});
    let first = page_view(&app, &key, body.clone()).await;
    let again: Value = expect_json(app.post("/v1/track", &key, &body).await, StatusCode::OK).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], true);
    // A service key may not merge or read history.
    let customer = first["customer_id"].as_str().unwrap();
    expect_problem(
        app.get(&format!("/v1/customers/{customer}/history"), &key)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn similar_profiles_are_suggested_not_merged() {
    let app = spawn_app_with(sg).await;
    let agent = app.agent_token("agent@example.com").await;
    let mut ids = BTreeSet::new();
    for body in [
        json!({"name": "Tan Wei Ming", "emails": ["weiming@acme.com"]}),
        json!({"name": "Wei Ming Tan", "emails": ["wm.tan@acme.com"]}),
        json!({"name": "Wei Ming Tan", "emails": ["wm.tan@gmail.com"]}),
        json!({"name": "Tan Wei Jie", "emails": ["weijie@acme.com"]}),
    ] {
        let c: Value = expect_json(
            app.post("/v1/customers", &agent, &body).await,
            StatusCode::CREATED,
        )
        .await;
        ids.insert(id(&c));
    }
    assert_eq!(ids.len(), 4, "nothing was merged");
    let started = Instant::now();
    let dupes = loop {
        let dupes: Value =
            expect_json(app.get("/v1/duplicates", &agent).await, StatusCode::OK).await;
        if !dupes["items"].as_array().unwrap().is_empty() {
            break dupes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no suggestion appeared"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let items = dupes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the pair at one company: {dupes}");
    assert_eq!(items[0]["reason"], "similar_profile");
    assert!(items[0]["detail"].as_str().unwrap().contains("acme.com"));
    index_agrees(&app).await;

    // Staff dismiss the pair (in either order): it is not listed again, not
    // even after a change to one of them has the finder look at it again.
    let pair: Vec<&str> = items[0]["customer_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let key = app.service_key("website").await;
    expect_problem(
        app.delete(&format!("/v1/duplicates/{}/{}", pair[0], pair[1]), &key)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for _ in 0..2 {
        let dismissed = app
            .delete(&format!("/v1/duplicates/{}/{}", pair[1], pair[0]), &agent)
            .await;
        assert_eq!(dismissed.status(), StatusCode::NO_CONTENT);
    }
    let dupes: Value = expect_json(app.get("/v1/duplicates", &agent).await, StatusCode::OK).await;
    assert_eq!(dupes["items"], json!([]), "{dupes}");
    let second: Value = expect_json(
        app.get(&format!("/v1/customers/{}", pair[1]), &agent).await,
        StatusCode::OK,
    )
    .await;
    expect_json::<Value>(
        app.patch(
            &format!("/v1/customers/{}", pair[0]),
            &agent,
            &json!({"name": second["name"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    index_agrees(&app).await;
    let dupes: Value = expect_json(app.get("/v1/duplicates", &agent).await, StatusCode::OK).await;
    assert_eq!(
        dupes["items"],
        json!([]),
        "dismissed stays dismissed: {dupes}"
    );
    // A pair never suggested, and the same customer twice.
    let others: Vec<&String> = ids.iter().filter(|i| !pair.contains(&i.as_str())).collect();
    expect_problem(
        app.delete(
            &format!("/v1/duplicates/{}/{}", others[0], others[1]),
            &agent,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let problem = expect_problem(
        app.delete(&format!("/v1/duplicates/{}/{}", pair[0], pair[0]), &agent)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem_fields(&problem), BTreeSet::from(["b"]));
}
