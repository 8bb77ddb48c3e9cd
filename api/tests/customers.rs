//! Customers and engagements over HTTP, on the embedded store.

mod common;

use std::collections::BTreeSet;

use common::{expect_json, expect_problem, problem_fields, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn sg(config: &mut crm_api::config::Config) {
    config.default_region = Some("SG".into());
}

#[tokio::test]
async fn a_known_phone_links_instead_of_creating() {
    let app = spawn_app_with(sg).await;
    let token = app.admin_token().await;
    let created: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Ann Tan", "phones": ["+65 8122 6418"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["phones"], json!(["+6581226418"]));
    assert_eq!(created["status"], "active");

    // The same number typed another way, with a new email: a staff create
    // that names Ann's number is refused, naming her, until it confirms.
    let taken = expect_problem(
        app.post(
            "/v1/customers",
            &token,
            &json!({"phones": ["(065) 8122-6418"], "emails": ["Ann@Example.COM"]}),
        )
        .await,
        StatusCode::CONFLICT,
        "identifier_taken",
    )
    .await;
    assert_eq!(taken["customers"], json!([created["id"]]));
    // Confirmed: the same customer, email attached.
    let linked: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"phones": ["(065) 8122-6418"], "emails": ["Ann@Example.COM"], "merge": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(linked["id"], created["id"]);
    assert_eq!(linked["emails"], json!(["ann@example.com"]));
    assert_eq!(linked["name"], "Ann Tan");

    // Identifiers of two different customers, confirmed: they are one
    // person, merged into the older; the other id answers with the survivor.
    let other: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"emails": ["bob@example.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let merged: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"emails": ["bob@example.com", "ann@example.com"], "merge": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(merged["id"], created["id"]);
    let emails: BTreeSet<&str> = merged["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        BTreeSet::from(["ann@example.com", "bob@example.com"])
    );
    let via_old_id: Value = expect_json(
        app.get(
            &format!("/v1/customers/{}", other["id"].as_str().unwrap()),
            &token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(via_old_id["id"], created["id"]);
}

#[tokio::test]
async fn bad_input_gets_per_field_problems_and_writes_nothing() {
    let app = spawn_app_with(sg).await;
    let token = app.admin_token().await;
    let problem = expect_problem(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "X", "phones": ["81226418", "call me"], "emails": ["nope"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["phones[1]", "emails[0]"]);
    // The valid phone in the refused request was not claimed.
    let list: Value = expect_json(app.get("/v1/customers", &token).await, StatusCode::OK).await;
    assert_eq!(list["items"], json!([]));

    expect_problem(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "X", "favourite_colour": "red"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let malformed = app
        .client
        .post(app.url("/v1/customers"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    expect_problem(malformed, StatusCode::BAD_REQUEST, "malformed_json").await;
    let huge = json!({"name": "x".repeat(2 * 1024 * 1024)});
    expect_problem(
        app.post("/v1/customers", &token, &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    expect_problem(
        app.get("/v1/nothing-here", &token).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    expect_problem(
        app.get("/v1/customers/not-a-uuid", &token).await,
        StatusCode::NOT_FOUND,
        "customer_not_found",
    )
    .await;
    expect_problem(
        app.get("/v1/customers?limit=0", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn patch_keeps_identities_consistent_and_delete_erases() {
    // A staff edit never merges on its own: taking another customer's
    // number is refused until the merge is confirmed.
    let app = spawn_app_with(|c| {
        sg(c);
        c.link_max_phones = 1;
    })
    .await;
    let token = app.admin_token().await;
    let ann: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Ann", "phones": ["81226418"], "social": {"facebook": "ann.tan"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = ann["id"].as_str().unwrap();
    let bob: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Bob", "phones": ["91234567"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    // Taking Bob's number: refused with Bob's id, nothing changes.
    let taken = expect_problem(
        app.patch(
            &format!("/v1/customers/{id}"),
            &token,
            &json!({"phones": ["81226418", "91234567"]}),
        )
        .await,
        StatusCode::CONFLICT,
        "identifier_taken",
    )
    .await;
    assert_eq!(taken["customers"], json!([bob["id"]]));
    let mut unchanged: Value = expect_json(
        app.get(&format!("/v1/customers/{id}"), &token).await,
        StatusCode::OK,
    )
    .await;
    // A read adds which identifiers are shared (none here) to the profile.
    assert_eq!(
        unchanged
            .as_object_mut()
            .unwrap()
            .remove("shared_identifiers"),
        Some(json!([]))
    );
    assert_eq!(unchanged, ann);
    let patched: Value = expect_json(
        app.patch(
            &format!("/v1/customers/{id}"),
            &token,
            &json!({"name": null, "phones": ["+65 9000 0001"], "emails": ["ann@example.com"], "social": {"facebook": null}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["name"], Value::Null);
    assert_eq!(patched["phones"], json!(["+6590000001"]));
    assert_eq!(patched["social"], json!({}));
    // The old number was released: it now creates a new customer.
    let fresh: Value = expect_json(
        app.post("/v1/customers", &token, &json!({"phones": ["81226418"]}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(fresh["id"], ann["id"]);
    // The new email names Ann.
    let again = expect_problem(
        app.post(
            "/v1/customers",
            &token,
            &json!({"emails": ["ANN@example.com"]}),
        )
        .await,
        StatusCode::CONFLICT,
        "identifier_taken",
    )
    .await;
    assert_eq!(again["customers"], json!([ann["id"]]));

    // Erasure is admin-only and takes the engagements with it.
    expect_json::<Value>(
        app.post(
            "/v1/engagements",
            &token,
            &json!({"customer_id": id, "channel": "email", "direction": "inbound", "subject": "hello"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let agent = app.agent_token("agent@example.com").await;
    expect_problem(
        app.delete(&format!("/v1/customers/{id}"), &agent).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.delete(&format!("/v1/customers/{id}"), &token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    expect_problem(
        app.get(&format!("/v1/customers/{id}"), &token).await,
        StatusCode::NOT_FOUND,
        "customer_not_found",
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/customers/{id}/engagements"), &token)
            .await,
        StatusCode::NOT_FOUND,
        "customer_not_found",
    )
    .await;
    let reused: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"emails": ["ann@example.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(reused["id"], ann["id"]);
    assert_eq!(bob["phones"], json!(["+6591234567"]));
}

#[tokio::test]
async fn customers_list_pages_by_cursor() {
    let app = spawn_app().await;
    let token = app.admin_token().await;
    let mut created = BTreeSet::new();
    for i in 0..7 {
        let c: Value = expect_json(
            app.post("/v1/customers", &token, &json!({"name": format!("C{i}")}))
                .await,
            StatusCode::CREATED,
        )
        .await;
        created.insert(c["id"].as_str().unwrap().to_string());
    }
    let mut seen = BTreeSet::new();
    let mut path = "/v1/customers?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page: Value = expect_json(app.get(&path, &token).await, StatusCode::OK).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            assert!(
                seen.insert(item["id"].as_str().unwrap().to_string()),
                "duplicate {item}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/customers?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 3);
    expect_problem(
        app.get("/v1/customers?cursor=garbage", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // `updated_since`: what changed at or after a time; a time the ingest
    // routes would refuse is refused here too, naming the field.
    let last: Value = expect_json(
        app.post("/v1/customers", &token, &json!({"name": "Later"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let since = last["updated_at"].as_str().unwrap();
    let changed: Value = expect_json(
        app.get(&format!("/v1/customers?updated_since={since}"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> = changed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [last["id"].as_str().unwrap()], "{changed}");
    for bad in ["2026-11-21T09:30:60Z", "0000-01-01T00:00:00Z", "yesterday"] {
        let problem = expect_problem(
            app.get(&format!("/v1/customers?updated_since={bad}"), &token)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "updated_since", "{problem}");
    }
}

#[tokio::test]
async fn engagements_make_one_timeline_and_retries_are_stored_once() {
    let app = spawn_app_with(sg).await;
    let token = app.admin_token().await;
    let sms = json!({
        "customer": {"phone": "8122 6418", "name": "Ann Tan"}, "channel": "sms", "direction": "inbound",
        "occurred_at": "2026-11-01T09:00:00Z", "body": "hello", "client_event_id": "sms-1",
    });
    let first: Value = expect_json(
        app.post("/v1/engagements", &token, &sms).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(first["customer_created"], true);
    assert_eq!(first["duplicate"], false);
    let retry: Value = expect_json(
        app.post("/v1/engagements", &token, &sms).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["id"], first["id"]);
    let customer_id = first["customer_id"].as_str().unwrap();

    let call = json!({
        "customer": {"phone": "+65 8122 6418"}, "channel": "call", "direction": "outbound",
        "occurred_at": "2026-11-02T09:00:00+08:00", "duration_s": 42, "status": "answered",
    });
    let second: Value = expect_json(
        app.post("/v1/engagements", &token, &call).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(second["customer_id"], customer_id);
    assert_eq!(second["customer_created"], false);
    let web = json!({
        "customer_id": customer_id, "channel": "web", "url": "https://example.com/l/1", "view": "listing",
        "occurred_at": "2026-11-03T00:00:00Z",
    });
    expect_json::<Value>(
        app.post("/v1/engagements", &token, &web).await,
        StatusCode::CREATED,
    )
    .await;

    let timeline: Value = expect_json(
        app.get(&format!("/v1/customers/{customer_id}/engagements"), &token)
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
    assert_eq!(channels, vec!["web", "call", "sms"]);
    assert_eq!(
        timeline["items"][1]["occurred_at"],
        "2026-11-02T01:00:00.000000Z"
    );
    assert_eq!(timeline["items"][2]["body"], "hello");

    let only_calls: Value = expect_json(
        app.get(
            &format!("/v1/customers/{customer_id}/engagements?channel=call"),
            &token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(only_calls["items"].as_array().unwrap().len(), 1);
    let page: Value = expect_json(
        app.get(
            &format!("/v1/customers/{customer_id}/engagements?limit=2"),
            &token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = expect_json(
        app.get(
            &format!("/v1/customers/{customer_id}/engagements?limit=2&cursor={cursor}"),
            &token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest["items"][0]["channel"], "sms");
    assert!(rest.get("next_cursor").is_none());

    let customer: Value = expect_json(
        app.get(&format!("/v1/customers/{customer_id}"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        customer["counts"],
        json!({"web": 1, "call": 1, "sms": 1, "whatsapp": 0, "email": 0})
    );
    assert_eq!(
        customer["last_engagement_at"],
        "2026-11-03T00:00:00.000000Z"
    );
    assert_eq!(customer["name"], "Ann Tan");

    // Per-field reasons for a bad engagement.
    let problem = expect_problem(
        app.post("/v1/engagements", &token, &json!({"customer_id": customer_id, "channel": "web", "direction": "inbound", "colour": 1}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields = problem_fields(&problem);
    assert_eq!(
        fields,
        BTreeSet::from(["direction", "url", "view", "colour"])
    );
}

#[tokio::test]
async fn a_batch_stores_the_good_items_and_explains_the_bad() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let items = json!([
        {"customer": {"email": "ann@example.com"}, "channel": "web", "url": "https://e.com/a", "view": "home"},
        {"customer": {"phone": "not a phone"}, "channel": "sms", "direction": "inbound", "body": "x"},
        {"customer": {"email": "ann@example.com"}, "channel": "email", "direction": "inbound", "subject": "hi", "client_event_id": "e1"},
        {"customer": {"email": "ann@example.com"}, "channel": "email", "direction": "inbound", "subject": "hi", "client_event_id": "e1"},
        {"customer_id": "00000000-0000-0000-0000-000000000000", "channel": "call", "direction": "inbound", "duration_s": 1, "status": "missed"},
    ]);
    let result: Value = expect_json(
        app.post("/v1/engagements/batch", &key, &json!({"items": items}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            result["created"].as_u64(),
            result["duplicates"].as_u64(),
            result["rejected"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
    let statuses: Vec<&str> = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec!["created", "rejected", "created", "duplicate", "rejected"]
    );
    assert_eq!(
        result["results"][1]["error"]["errors"][0]["field"],
        "items[1].customer.phone"
    );
    assert_eq!(result["results"][4]["error"]["code"], "customer_not_found");
    assert_eq!(
        result["results"][0]["customer_id"],
        result["results"][2]["customer_id"]
    );

    // A service key ingests but does not read.
    let id = result["results"][0]["customer_id"].as_str().unwrap();
    expect_problem(
        app.get(&format!("/v1/customers/{id}"), &key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"customer_id": id, "channel": "sms", "direction": "inbound", "body": format!("{i}")}))
        .collect();
    let problem = expect_problem(
        app.post("/v1/engagements/batch", &key, &json!({"items": too_many}))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("1000"),
        "{problem}"
    );
    let token = app.admin_token().await;
    let customer: Value = expect_json(
        app.get(&format!("/v1/customers/{id}"), &token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        customer["counts"]["sms"], 0,
        "nothing of the refused batch was stored"
    );
    assert_eq!(customer["counts"]["email"], 1);
}

#[tokio::test]
async fn concurrent_engagements_for_one_new_number_make_one_customer() {
    let app = spawn_app_with(sg).await;
    let token = app.admin_token().await;
    let formats = [
        "+65 8122 6418",
        "(065) 8122-6418",
        "0065 81226418",
        "81226418",
    ];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/v1/engagements"),
            token.clone(),
        );
        let phone = formats[i % formats.len()];
        tasks.push(tokio::spawn(async move {
            let body = json!({"customer": {"phone": phone}, "channel": "sms", "direction": "inbound", "body": format!("{i}")});
            let r = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.unwrap()["customer_id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let list: Value = expect_json(app.get("/v1/customers", &token).await, StatusCode::OK).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["counts"]["sms"], 200);
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = crm_api::config::Config::for_data_dir(dir.path().to_path_buf());
        c.admin_email = Some(common::ADMIN_EMAIL.into());
        c.admin_password = Some(common::ADMIN_PASSWORD.into());
        c
    };
    let client = reqwest::Client::new();
    let login = |addr: String| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("{addr}/v1/auth/login"))
                .json(&json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };

    let app = crm_api::Application::build(config()).await.unwrap();
    let addr = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let token = login(addr.clone()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = client
            .post(format!("{addr}/v1/engagements"))
            .bearer_auth(&token)
            .json(&json!({"customer": {"email": format!("c{i}@example.com")}, "channel": "email", "direction": "outbound", "subject": format!("s{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(
            r.json::<Value>().await.unwrap()["customer_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // Same directory, new process state: the same data, the same signing secret.
    let app = crm_api::Application::build(config()).await.unwrap();
    let addr = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let r = client
        .get(format!("{addr}/v1/customers?limit=100"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "a token from before the restart still verifies"
    );
    let list: Value = r.json().await.unwrap();
    let listed: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect());
    for id in &ids {
        let t: Value = client
            .get(format!("{addr}/v1/customers/{id}/engagements"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(t["items"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(health.headers().contains_key("x-request-id"));
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    let ready = app.readyz().await;
    // Events committed at start-up (the first admin) may still be on their
    // way to the stream: the count is there, whatever it is now.
    assert!(ready["events_pending"].is_u64(), "{ready}");
    let mut ready = ready;
    ready.as_object_mut().unwrap().remove("events_pending");
    assert_eq!(
        ready,
        json!({"status": "ready", "store": "embedded", "index": "memory", "index_reachable": true, "events_relaying": true, "search": "ready"})
    );
    let metrics_url = format!("{}/metrics", app.metrics_address.as_ref().unwrap());
    let metrics = app
        .client
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_requests_total{")
                && l.contains(r#"method="GET""#)
                && l.contains(r#"path="/readyz""#)
                && l.contains(r#"status="200""#)),
        "{metrics}"
    );
    let yaml = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        yaml.starts_with("openapi: 3.1"),
        "{}",
        &yaml[..40.min(yaml.len())]
    );
    let unauthenticated = app
        .client
        .get(app.url("/v1/customers"))
        .send()
        .await
        .unwrap();
    expect_problem(unauthenticated, StatusCode::UNAUTHORIZED, "unauthorized").await;
}
