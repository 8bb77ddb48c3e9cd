//! Least privilege over HTTP: API keys write evidence and read nothing, each
//! route needs its scope; staff edits that name another customer's
//! identifiers are refused until the merge is confirmed; writes on a merged
//! id are refused while reads follow it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use common::{expect_json, expect_problem, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn sg(config: &mut crm_api::config::Config) {
    config.default_region = Some("SG".into());
}

/// Keys of a customer profile: none may appear in an answer to a key.
const PROFILE_FIELDS: [&str; 10] = [
    "name",
    "emails",
    "phones",
    "email",
    "phone",
    "social",
    "counts",
    "last_engagement_at",
    "customer",
    "customers",
];

/// Panics when `value` holds a profile field or a personal value anywhere.
fn assert_no_profile(route: &str, value: &Value, personal: &[&str]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                assert!(
                    !PROFILE_FIELDS.contains(&k.as_str()),
                    "{route} answered a key with the profile field `{k}`: {value}"
                );
                assert_no_profile(route, v, personal);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| assert_no_profile(route, v, personal)),
        Value::String(s) => {
            for p in personal {
                assert!(
                    !s.to_lowercase().contains(&p.to_lowercase()),
                    "{route} answered a key with personal data {p:?}: {value}"
                );
            }
        }
        _ => {}
    }
}

async fn key_with(app: &TestApp, scopes: Value) -> String {
    let admin = app.admin_token().await;
    let created: Value = expect_json(
        app.post(
            "/v1/api-keys",
            &admin,
            &json!({ "name": "website", "scopes": scopes }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    created["key"].as_str().unwrap().to_string()
}

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    expect_json(
        app.post("/v1/customers", token, &body).await,
        StatusCode::CREATED,
    )
    .await
}

/// The profile as `GET /v1/customers/{id}` reads it, without the list of
/// shared identifiers that a read adds (none in these tests).
async fn read_customer(app: &TestApp, token: &str, id: String) -> Value {
    let mut customer: Value = expect_json(
        app.get(&format!("/v1/customers/{id}"), token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        customer
            .as_object_mut()
            .unwrap()
            .remove("shared_identifiers"),
        Some(json!([])),
        "{customer}"
    );
    customer
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_key_gets_ids_and_statuses_never_a_profile() {
    let app = spawn_app_with(sg).await;
    let admin = app.admin_token().await;
    let key = key_with(&app, json!(["track", "engagements", "customers:write"])).await;
    let ann = create(
        &app,
        &admin,
        json!({"name": "Ann Tan", "emails": ["ann@acme.com"], "phones": ["+65 8122 6418"], "social": {"facebook": "ann.tan.77"}}),
    )
    .await;
    let bob = create(
        &app,
        &admin,
        json!({"name": "Bob Lim", "emails": ["bob@acme.com"]}),
    )
    .await;
    let personal = [
        "Ann Tan",
        "ann@acme.com",
        "81226418",
        "ann.tan.77",
        "Bob Lim",
        "bob@acme.com",
    ];

    // A known number: linked, answered with the id only.
    let linked: Value = expect_json(
        app.post("/v1/customers", &key, &json!({"phones": ["81226418"]}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(linked, json!({"id": id(&ann), "status": "linked"}));

    // A new person.
    let created: Value = expect_json(
        app.post(
            "/v1/customers",
            &key,
            &json!({"name": "Cat Ng", "emails": ["cat@acme.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["status"], "created");
    assert_eq!(created.as_object().unwrap().len(), 2, "{created}");

    // One identifier of each of two customers: evidence merges them, and
    // the key learns only the survivor's id.
    let merged: Value = expect_json(
        app.post(
            "/v1/customers",
            &key,
            &json!({"phones": ["+6581226418"], "emails": ["bob@acme.com"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(merged, json!({"id": id(&ann), "status": "merged"}));
    let bob_now: Value = expect_json(
        app.get(&format!("/v1/customers/{}", id(&bob)), &admin)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(bob_now["id"], ann["id"], "staff reads follow the merge");

    // Every write route a key may use.
    let mut answers: Vec<(&str, Value)> = vec![
        ("POST /v1/customers (linked)", linked),
        ("POST /v1/customers (created)", created),
        ("POST /v1/customers (merged)", merged),
    ];
    let track: Value = expect_json(
        app.post(
            "/v1/track",
            &key,
            &json!({"anonymous_id": "v-1", "email": "ann@acme.com", "url": "https://shop.example/p/1", "view": "product"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(track["customer_id"], ann["id"]);
    answers.push(("POST /v1/track", track));
    let one: Value = expect_json(
        app.post(
            "/v1/engagements",
            &key,
            &json!({"customer": {"phone": "+6581226418", "name": "Somebody"}, "channel": "sms", "direction": "inbound", "body": "hi"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(one["customer_id"], ann["id"]);
    answers.push(("POST /v1/engagements", one));
    let batch: Value = expect_json(
        app.post(
            "/v1/engagements/batch",
            &key,
            &json!({"items": [
                {"customer": {"email": "ann@acme.com"}, "channel": "web", "url": "https://shop.example/", "view": "home"},
                {"customer_id": id(&ann), "channel": "email", "direction": "inbound", "subject": "hello"},
                {"customer": {"phone": "not a phone"}, "channel": "sms", "direction": "inbound", "body": "x"},
            ]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (batch["created"].as_u64(), batch["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{batch}"
    );
    answers.push(("POST /v1/engagements/batch", batch));
    for (route, answer) in &answers {
        assert_no_profile(route, answer, &personal);
    }

    // Reads are refused.
    let ann_id = id(&ann);
    for path in [
        format!("/v1/customers/{ann_id}"),
        format!("/v1/customers/{ann_id}/engagements"),
        format!("/v1/customers/{ann_id}/summary"),
        format!("/v1/customers/{ann_id}/history"),
        "/v1/customers".to_string(),
        "/v1/search?q=ann".to_string(),
        "/v1/lookup/phone/+6581226418".to_string(),
        "/v1/duplicates".to_string(),
    ] {
        let problem = expect_problem(
            app.get(&path, &key).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert_no_profile(&path, &problem, &personal);
    }
    // And so are staff writes.
    expect_problem(
        app.patch(
            &format!("/v1/customers/{ann_id}"),
            &key,
            &json!({"name": "Peter Lim"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        app.post(
            &format!("/v1/customers/{ann_id}/merge"),
            &key,
            &json!({"ids": [id(&bob)]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn each_key_route_needs_its_scope() {
    let app = spawn_app_with(sg).await;
    let admin = app.admin_token().await;

    // Without scopes named, a key gets `track` and `engagements`.
    let created: Value = expect_json(
        app.post("/v1/api-keys", &admin, &json!({"name": "default"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["scopes"], json!(["track", "engagements"]));
    let default_key = created["key"].as_str().unwrap().to_string();
    let customers_only = key_with(&app, json!(["customers:write"])).await;
    let list: Value = expect_json(app.get("/v1/api-keys", &admin).await, StatusCode::OK).await;
    let scopes: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["scopes"])
        .collect();
    assert_eq!(
        scopes,
        [
            &json!(["track", "engagements"]),
            &json!(["customers:write"])
        ]
    );

    let page_view = json!({"anonymous_id": "v-1", "url": "https://shop.example/", "view": "home"});
    let sms = json!({"customer": {"phone": "+6581226418"}, "channel": "sms", "direction": "inbound", "body": "hi"});
    let customer = json!({"phones": ["+6590001234"]});
    let batch = json!({"items": [sms.clone()]});

    // The default key: evidence yes, customers no.
    assert_eq!(
        app.post("/v1/track", &default_key, &page_view)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.post("/v1/engagements", &default_key, &sms)
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.post("/v1/engagements/batch", &default_key, &batch)
            .await
            .status(),
        StatusCode::OK
    );
    let problem = expect_problem(
        app.post("/v1/customers", &default_key, &customer).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`customers:write`"),
        "{problem}"
    );

    // A `customers:write` key: customers yes, evidence routes no.
    assert_eq!(
        app.post("/v1/customers", &customers_only, &customer)
            .await
            .status(),
        StatusCode::CREATED
    );
    for (path, body, scope) in [
        ("/v1/track", &page_view, "`track`"),
        ("/v1/engagements", &sms, "`engagements`"),
        ("/v1/engagements/batch", &batch, "`engagements`"),
    ] {
        let problem = expect_problem(
            app.post(path, &customers_only, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains(scope),
            "{path}: {problem}"
        );
    }

    // Scopes are checked when the key is created.
    let problem = expect_problem(
        app.post(
            "/v1/api-keys",
            &admin,
            &json!({"name": "bad", "scopes": ["read", "track", "admin"]}),
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
    assert_eq!(fields, ["scopes[0]", "scopes[2]"]);
    let problem = expect_problem(
        app.post(
            "/v1/api-keys",
            &admin,
            &json!({"name": "none", "scopes": []}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "scopes");
}

#[tokio::test]
async fn a_staff_patch_naming_another_customers_phone_changes_nothing_until_confirmed() {
    let app = spawn_app_with(sg).await;
    let agent = app.agent_token("agent@example.com").await;
    let ann = create(
        &app,
        &agent,
        json!({"name": "Ann Tan", "phones": ["+65 8122 6418"]}),
    )
    .await;
    let bob = create(
        &app,
        &agent,
        json!({"name": "Bob Lim", "emails": ["bob@acme.com"]}),
    )
    .await;
    let (ann_id, bob_id) = (id(&ann), id(&bob));
    let read = |id: String| read_customer(&app, &agent, id);

    let problem = expect_problem(
        app.patch(
            &format!("/v1/customers/{bob_id}"),
            &agent,
            &json!({"name": "Peter Lim", "phones": ["81226418", "+65 9000 1234"]}),
        )
        .await,
        StatusCode::CONFLICT,
        "identifier_taken",
    )
    .await;
    assert_eq!(problem["customers"], json!([ann_id]));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("POST /v1/customers/{id}/merge"),
        "{problem}"
    );
    assert_eq!(read(ann_id.clone()).await, ann, "Ann is unchanged");
    assert_eq!(read(bob_id.clone()).await, bob, "Bob is unchanged");
    // The free number of the refused patch was not claimed either.
    let cat: Value = create(&app, &agent, json!({"phones": ["+65 9000 1234"]})).await;
    assert_eq!(cat["phones"], json!(["+6590001234"]));

    // Confirmed: Ann is merged into Bob, the customer being edited.
    let merged: Value = expect_json(
        app.patch(
            &format!("/v1/customers/{bob_id}"),
            &agent,
            &json!({"phones": ["81226418"], "merge": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(merged["id"], bob_id.as_str());
    assert_eq!(merged["name"], "Bob Lim");
    assert_eq!(merged["phones"], json!(["+6581226418"]));
    assert_eq!(merged["emails"], json!(["bob@acme.com"]));
    let history: Value = expect_json(
        app.get(&format!("/v1/customers/{bob_id}/history"), &agent)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(history["items"][0]["merged_ids"], json!([ann_id]));
    assert_eq!(history["items"][0]["by"]["kind"], "user");

    // Writes on the merged id are refused with where it went; reads follow.
    for response in [
        app.patch(
            &format!("/v1/customers/{ann_id}"),
            &agent,
            &json!({"name": "Peter Lim"}),
        )
        .await,
        app.delete(&format!("/v1/customers/{ann_id}"), &app.admin_token().await)
            .await,
        app.post(
            &format!("/v1/customers/{ann_id}/merge"),
            &agent,
            &json!({"ids": [id(&cat)]}),
        )
        .await,
        app.post(
            &format!("/v1/customers/{}/merge", id(&cat)),
            &agent,
            &json!({"ids": [ann_id]}),
        )
        .await,
    ] {
        let problem = expect_problem(response, StatusCode::CONFLICT, "customer_merged").await;
        assert_eq!(problem["merged_into"], bob_id.as_str(), "{problem}");
    }
    let followed = read(ann_id.clone()).await;
    assert_eq!(followed["id"], bob_id.as_str());
    assert_eq!(followed["name"], "Bob Lim", "nobody renamed the survivor");
    assert_eq!(read(id(&cat)).await["status"], "active");
}

#[tokio::test]
async fn a_staff_create_naming_two_customers_creates_nothing_until_confirmed() {
    let app = spawn_app_with(sg).await;
    let agent = app.agent_token("agent@example.com").await;
    let ann = create(
        &app,
        &agent,
        json!({"name": "Ann Tan", "phones": ["+65 8122 6418"]}),
    )
    .await;
    let bob = create(
        &app,
        &agent,
        json!({"name": "Bob Lim", "emails": ["bob@acme.com"]}),
    )
    .await;
    let listing = || async {
        expect_json::<Value>(app.get("/v1/customers", &agent).await, StatusCode::OK).await
    };
    let before = listing().await;
    assert_eq!(before["items"].as_array().unwrap().len(), 2);

    let body = json!({"name": "Someone", "phones": ["81226418"], "emails": ["bob@acme.com", "new@acme.com"]});
    let problem = expect_problem(
        app.post("/v1/customers", &agent, &body).await,
        StatusCode::CONFLICT,
        "identifier_taken",
    )
    .await;
    let mut owners: Vec<String> = problem["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    owners.sort();
    let mut expected = vec![id(&ann), id(&bob)];
    expected.sort();
    assert_eq!(owners, expected);
    assert_eq!(
        listing().await,
        before,
        "nothing created, merged or changed"
    );
    // One known identifier is enough to refuse a staff create.
    expect_problem(
        app.post("/v1/customers", &agent, &json!({"phones": ["81226418"]}))
            .await,
        StatusCode::CONFLICT,
        "identifier_taken",
    )
    .await;
    assert_eq!(listing().await, before);

    // Confirmed: the two are merged into the oldest, the new email attached.
    let mut confirmed = body.clone();
    confirmed["merge"] = json!(true);
    let merged: Value = expect_json(
        app.post("/v1/customers", &agent, &confirmed).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(merged["id"], ann["id"]);
    assert_eq!(merged["name"], "Ann Tan");
    let mut emails: Vec<&str> = merged["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    emails.sort();
    assert_eq!(emails, ["bob@acme.com", "new@acme.com"]);
    let bob_now: Value = expect_json(
        app.get(&format!("/v1/customers/{}", id(&bob)), &agent)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(bob_now["id"], ann["id"]);
}
