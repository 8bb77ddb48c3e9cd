//! The one ingest parser over HTTP: `/v1/engagements` (and its batch),
//! `/v1/track` and `/v1/mobile/events` give the same bad input the same field
//! error, refuse keys given twice, strict times and bidi controls, and read a
//! number or an address written any way as the customer of its plain form.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{expect_json, expect_problem, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn sg(config: &mut crm_api::config::Config) {
    config.default_region = Some("SG".into());
}

/// Enrolls a phone (region SG) as the admin; returns its device token.
async fn device_token(app: &TestApp) -> String {
    let admin = app.admin_token().await;
    let created: Value = expect_json(
        app.post(
            "/v1/devices",
            &admin,
            &json!({"name": "phone", "default_region": "SG"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    created["token"].as_str().unwrap().to_string()
}

/// Posts a body as written (JSON that `serde_json` could not produce, such
/// as a key given twice).
async fn post_raw(app: &TestApp, path: &str, token: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// `(field, message)` of every error in a problem or an item's error.
fn errors(error: &Value) -> Vec<(String, String)> {
    error["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {error}"))
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The errors `/v1/engagements` answers for `body` (which must be refused).
async fn single_errors(app: &TestApp, key: &str, body: &Value) -> Vec<(String, String)> {
    let problem = expect_problem(
        app.post("/v1/engagements", key, body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    errors(&problem)
}

/// The errors of the only item of a batch (which must be rejected).
async fn batch_errors(app: &TestApp, key: &str, item: &Value) -> Vec<(String, String)> {
    let answer: Value = expect_json(
        app.post("/v1/engagements/batch", key, &json!({"items": [item]}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "rejected", "{answer}");
    errors(&answer["results"][0]["error"])
}

async fn track_errors(app: &TestApp, key: &str, body: &Value) -> Vec<(String, String)> {
    let problem = expect_problem(
        app.post("/v1/track", key, body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    errors(&problem)
}

/// Uploads events; returns the results.
async fn upload(app: &TestApp, device: &str, events: Value) -> Vec<Value> {
    let answer: Value = expect_json(
        app.post("/v1/mobile/events", device, &json!({"events": events}))
            .await,
        StatusCode::OK,
    )
    .await;
    answer["results"].as_array().unwrap().clone()
}

async fn event_errors(app: &TestApp, device: &str, event: &Value) -> Vec<(String, String)> {
    let results = upload(app, device, json!([event])).await;
    assert_eq!(results[0]["status"], "rejected", "{results:?}");
    assert_eq!(results[0]["error"]["code"], "invalid_event");
    errors(&results[0]["error"])
}

fn web(extra: Value) -> Value {
    let mut v = json!({"channel": "web", "url": "https://shop.example/", "view": "home",
                       "customer": {"email": "ann.tan@example.com"}});
    merge(&mut v, extra);
    v
}

fn page_view(extra: Value) -> Value {
    let mut v = json!({"anonymous_id": "v-1", "url": "https://shop.example/", "view": "home"});
    merge(&mut v, extra);
    v
}

fn sms(extra: Value) -> Value {
    let mut v = json!({"client_event_id": "e-1", "kind": "sms", "direction": "inbound",
                       "number": "+65 8122 6418", "occurred_at": "2026-11-21T09:30:00Z",
                       "body": "hello"});
    merge(&mut v, extra);
    v
}

fn merge(v: &mut Value, extra: Value) {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
}

#[tokio::test]
async fn the_same_bad_input_gets_the_same_field_error_on_every_route() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let device = device_token(&app).await;
    for (field, bad, message) in [
        (
            "occurred_at",
            json!("2026-11-21T09:30:60Z"),
            "has second 60 (a leap second), which is not accepted; write :59",
        ),
        (
            "occurred_at",
            json!("0000-01-01T00:00:00Z"),
            "must be between the years 1970 and 9999 (UTC)",
        ),
        (
            "occurred_at",
            json!("2026-11-21 09:30:00"),
            "must be an RFC 3339 time, e.g. 2026-01-31T09:30:00Z",
        ),
        (
            "occurred_at",
            json!("9999-12-31T23:59:59Z"),
            "must not be more than 24 hours in the future",
        ),
        ("client_event_id", json!(""), "must not be empty"),
        ("client_event_id", json!("   "), "must not be empty"),
        (
            "client_event_id",
            json!("pv\u{7}1"),
            "must not contain a control character (U+0007)",
        ),
        (
            "client_event_id",
            json!("pv\u{202e}1"),
            "must not contain U+202E, a character that reorders how text is displayed",
        ),
        (
            "client_event_id",
            json!("x".repeat(129)),
            "must be at most 128 characters long",
        ),
        ("client_event_id", json!(42), "must be a string"),
    ] {
        let extra = json!({ field: bad });
        let expected = vec![(field.to_string(), message.to_string())];
        assert_eq!(
            single_errors(&app, &key, &web(extra.clone())).await,
            expected,
            "/v1/engagements {field} {bad}"
        );
        assert_eq!(
            batch_errors(&app, &key, &web(extra.clone())).await,
            vec![(format!("items[0].{field}"), message.to_string())],
            "/v1/engagements/batch {field} {bad}"
        );
        assert_eq!(
            track_errors(&app, &key, &page_view(extra.clone())).await,
            expected,
            "/v1/track {field} {bad}"
        );
        assert_eq!(
            event_errors(&app, &device, &sms(extra)).await,
            expected,
            "/v1/mobile/events {field} {bad}"
        );
    }
    // A number that is not one: the same message whatever the field is called.
    let not_a_number = "phone number contains characters that are not digits or separators";
    assert_eq!(
        single_errors(
            &app,
            &key,
            &web(json!({"customer": {"phone": "call me maybe"}}))
        )
        .await,
        [("customer.phone".to_string(), not_a_number.to_string())]
    );
    assert_eq!(
        track_errors(&app, &key, &page_view(json!({"phone": "call me maybe"}))).await,
        [("phone".to_string(), not_a_number.to_string())]
    );
    assert_eq!(
        event_errors(&app, &device, &sms(json!({"number": "call me maybe"}))).await,
        [("number".to_string(), not_a_number.to_string())]
    );
    // Nothing of it was stored.
    let admin = app.admin_token().await;
    let page: Value = expect_json(
        app.get("/v1/customers?limit=10", &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"], json!([]), "{page}");
}

#[tokio::test]
async fn a_key_given_twice_is_refused_on_every_ingest_route() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let device = device_token(&app).await;
    let twice = "is given more than once; give it once";

    let problem = expect_problem(
        post_raw(
            &app,
            "/v1/engagements",
            &key,
            r#"{"channel": "web", "url": "https://a.example/", "view": "home",
                "customer": {"email": "ann@example.com", "email": "peter@example.com"}}"#,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        errors(&problem),
        [("customer.email".to_string(), twice.to_string())]
    );

    let answer: Value = expect_json(
        post_raw(
            &app,
            "/v1/engagements/batch",
            &key,
            r#"{"items": [
                {"channel": "web", "url": "https://a.example/", "view": "home",
                 "customer": {"email": "ann@example.com"}},
                {"channel": "web", "url": "https://a.example/", "url": "https://b.example/",
                 "view": "home", "customer": {"email": "ann@example.com"}}]}"#,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "created", "{answer}");
    assert_eq!(answer["results"][1]["status"], "rejected", "{answer}");
    assert_eq!(
        errors(&answer["results"][1]["error"]),
        [("items[1].url".to_string(), twice.to_string())]
    );

    // `items` itself twice: the whole batch is refused.
    expect_problem(
        post_raw(
            &app,
            "/v1/engagements/batch",
            &key,
            r#"{"items": [], "items": [{"channel": "web"}]}"#,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let problem = expect_problem(
        post_raw(
            &app,
            "/v1/track",
            &key,
            r#"{"anonymous_id": "v-1", "anonymous_id": "v-2", "url": "https://a.example/", "view": "home"}"#,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        errors(&problem),
        [("anonymous_id".to_string(), twice.to_string())]
    );

    let answer: Value = expect_json(
        post_raw(
            &app,
            "/v1/mobile/events",
            &device,
            r#"{"events": [{"client_event_id": "1", "kind": "sms", "direction": "inbound",
                "number": "+6581226418", "number": "+6591234567",
                "occurred_at": "2026-11-21T09:30:00Z", "body": "hi"}]}"#,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "rejected", "{answer}");
    assert_eq!(
        errors(&answer["results"][0]["error"]),
        [("number".to_string(), twice.to_string())]
    );
}

#[tokio::test]
async fn a_batch_with_another_field_or_no_items_is_refused() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let problem = expect_problem(
        app.post(
            "/v1/engagements/batch",
            &key,
            &json!({"items": [], "evil": 1}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert!(
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["field"].as_str().unwrap_or_default().contains("evil")),
        "{problem}"
    );
    let problem = expect_problem(
        app.post("/v1/engagements/batch", &key, &json!({"items": []}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        errors(&problem),
        [(
            "items".to_string(),
            "give 1 to 1000 engagements".to_string()
        )]
    );
}

#[tokio::test]
async fn a_bidi_control_in_a_name_is_refused() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let device = device_token(&app).await;
    for c in ['\u{202E}', '\u{2067}', '\u{200F}', '\u{061C}'] {
        let name = format!("Ann{c} Tan");
        let message = format!(
            "must not contain U+{:04X}, a character that reorders how text is displayed",
            u32::from(c)
        );
        assert_eq!(
            single_errors(
                &app,
                &key,
                &web(json!({"customer": {"phone": "81226418", "name": name}}))
            )
            .await,
            [("customer.name".to_string(), message.clone())]
        );
        assert_eq!(
            event_errors(&app, &device, &sms(json!({"contact_name": name}))).await,
            [("contact_name".to_string(), message)]
        );
    }
    // In a message they are how Arabic and Hebrew text is written: kept.
    let admin = app.admin_token().await;
    let body = "\u{200F}שלום, 42 \u{2067}Ann\u{2069}";
    let recorded: Value = expect_json(
        app.post(
            "/v1/engagements",
            &admin,
            &json!({"customer": {"phone": "81226418"}, "channel": "sms", "direction": "inbound",
                    "body": body, "client_event_id": "rtl-1"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let customer = recorded["customer_id"].as_str().unwrap();
    let page: Value = expect_json(
        app.get(&format!("/v1/customers/{customer}/engagements"), &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"][0]["body"], body, "{page}");
}

#[tokio::test]
async fn times_are_stored_and_echoed_in_utc_that_every_client_reads() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let recorded: Value = expect_json(
        app.post(
            "/v1/engagements",
            &key,
            &web(json!({"occurred_at": "2026-11-21t17:30:59.1234567+08:00"})),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let admin = app.admin_token().await;
    let customer = recorded["customer_id"].as_str().unwrap();
    let page: Value = expect_json(
        app.get(&format!("/v1/customers/{customer}/engagements"), &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        page["items"][0]["occurred_at"], "2026-11-21T09:30:59.123456Z",
        "{page}"
    );
}

#[tokio::test]
async fn numbers_and_addresses_written_any_way_land_on_the_customer_of_the_plain_form() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let device = device_token(&app).await;
    let first: Value = expect_json(
        app.post(
            "/v1/engagements",
            &key,
            &web(json!({"customer": {"phone": "+6581226418", "email": "ann.tan@example.com"}})),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let ann = first["customer_id"].as_str().unwrap().to_string();

    let phones = [
        "tel:+65-8122-6418",
        "tel:81226418;phone-context=+65",
        "+65 8122 6418 ext. 12",
        "+65 8122 6418 x12",
        "+65 8122 6418;ext=12",
        "８１２２ ６４１８",
        "+65 8122 6418 (mobile)",
        "+65-8122-6418 / Ann",
        "00 65 8122 6418",
        "(065) 8122-6418",
        "+65\u{a0}8122\u{a0}6418",
        "+65\u{2009}8122\u{2009}6418",
        "+65.8122.6418",
    ];
    let emails = [
        "mailto:ann.tan@example.com",
        "Ann Tan <Ann.Tan@Example.com>",
        "\"Tan, Ann\" <ann.tan@example.com>",
        "<ann.tan@example.com>",
        "ann.tan@example.com. ",
        "ann.tan＠example.com",
    ];
    let mut owners: Vec<(String, String)> = Vec::new();
    let written = phones
        .iter()
        .map(|p| ("phone", "p", *p))
        .chain(emails.iter().map(|e| ("email", "e", *e)));
    for (i, (field, id_prefix, value)) in written.enumerate() {
        let one: Value = expect_json(
            app.post(
                "/v1/engagements",
                &key,
                &web(json!({"customer": {field: value}, "client_event_id": format!("{id_prefix}{i}")})),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        owners.push((
            format!("/v1/engagements {value}"),
            one["customer_id"].as_str().unwrap().into(),
        ));
        let viewed: Value = expect_json(
            app.post(
                "/v1/track",
                &key,
                &json!({field: value, "url": "https://shop.example/", "view": "home"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        owners.push((
            format!("/v1/track {value}"),
            viewed["customer_id"].as_str().unwrap().into(),
        ));
    }
    let items: Vec<Value> = phones
        .iter()
        .map(|p| web(json!({"customer": {"phone": p}})))
        .chain(
            emails
                .iter()
                .map(|e| web(json!({"customer": {"email": e}}))),
        )
        .collect();
    let batch: Value = expect_json(
        app.post("/v1/engagements/batch", &key, &json!({"items": items}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(batch["rejected"], 0, "{batch}");
    for r in batch["results"].as_array().unwrap() {
        owners.push((
            format!("batch item {}", r["index"]),
            r["customer_id"].as_str().unwrap().into(),
        ));
    }
    let events: Vec<Value> = phones
        .iter()
        .enumerate()
        .map(|(i, p)| sms(json!({"client_event_id": format!("m{i}"), "number": p})))
        .collect();
    for (i, r) in upload(&app, &device, Value::Array(events))
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(r["status"], "created", "{}: {r}", phones[i]);
        owners.push((
            format!("/v1/mobile/events {}", phones[i]),
            r["customer_id"].as_str().unwrap().into(),
        ));
    }
    for (what, owner) in &owners {
        assert_eq!(owner, &ann, "{what}");
    }
    // Still one phone and one email on the profile: the extension is not
    // part of the key.
    let admin = app.admin_token().await;
    let profile: Value = expect_json(
        app.get(&format!("/v1/customers/{ann}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(profile["phones"], json!(["+6581226418"]), "{profile}");
    assert_eq!(
        profile["emails"],
        json!(["ann.tan@example.com"]),
        "{profile}"
    );
}

#[tokio::test]
async fn a_key_attaches_to_a_named_customer_only_identifiers_that_are_new_or_its_own() {
    let app = spawn_app_with(sg).await;
    let key = app.service_key("website").await;
    let admin = app.admin_token().await;
    let customer_of = |v: &Value| v["customer_id"].as_str().unwrap().to_string();
    let ann: Value = expect_json(
        app.post(
            "/v1/track",
            &key,
            &json!({"email": "ann@example.com", "url": "https://shop.example/", "view": "home"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let ann = customer_of(&ann);
    let peter: Value = expect_json(
        app.post(
            "/v1/track",
            &key,
            &json!({"email": "peter@example.com", "anonymous_id": "v-peter",
                    "url": "https://shop.example/", "view": "home"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let peter = customer_of(&peter);
    let timeline_len = |id: String| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let page: Value = expect_json(
                app.get(&format!("/v1/customers/{id}/engagements"), &admin)
                    .await,
                StatusCode::OK,
            )
            .await;
            page["items"].as_array().unwrap().len()
        }
    };

    // Peter's address, or Peter's visitor id, on Ann: refused, nothing written.
    for who in [
        json!({"email": "Peter <peter@example.com>"}),
        json!({"anonymous_id": "v-peter"}),
        json!({"email": "ann@example.com", "phone": "+65 8122 6418", "anonymous_id": "v-peter"}),
    ] {
        let mut body =
            json!({"customer_id": ann, "url": "https://shop.example/x", "view": "product"});
        merge(&mut body, who.clone());
        let problem = expect_problem(
            app.post("/v1/track", &key, &body).await,
            StatusCode::CONFLICT,
            "identifier_taken",
        )
        .await;
        // A key learns that the identifier is someone else's, not whose.
        assert!(!problem.to_string().contains(&peter), "{who}: {problem}");
        assert!(problem.get("customers").is_none(), "{who}: {problem}");
    }
    assert_eq!(timeline_len(ann.clone()).await, 1);
    assert_eq!(timeline_len(peter.clone()).await, 1);
    let ann_profile: Value = expect_json(
        app.get(&format!("/v1/customers/{ann}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ann_profile["emails"], json!(["ann@example.com"]));
    assert_eq!(
        ann_profile["phones"],
        json!([]),
        "the new phone was not attached either"
    );

    // A new number, Ann's own address and a first-time visitor id: attached.
    let linked: Value = expect_json(
        app.post(
            "/v1/track",
            &key,
            &json!({"customer_id": ann, "email": "ann@example.com", "phone": "+65 8122 6418",
                    "anonymous_id": "v-ann", "url": "https://shop.example/x", "view": "product"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(customer_of(&linked), ann);
    // A visitor seen only anonymously, then logged in as Ann: history joins Ann.
    let anonymous: Value = expect_json(
        app.post(
            "/v1/track",
            &key,
            &json!({"anonymous_id": "v-new", "url": "https://shop.example/", "view": "home"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(customer_of(&anonymous), ann);
    let joined: Value = expect_json(
        app.post(
            "/v1/track",
            &key,
            &json!({"customer_id": ann, "anonymous_id": "v-new",
                    "url": "https://shop.example/y", "view": "product"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(customer_of(&joined), ann);
    assert_eq!(timeline_len(ann.clone()).await, 4);
    let profile: Value = expect_json(
        app.get(&format!("/v1/customers/{ann}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(profile["phones"], json!(["+6581226418"]));
}
