//! Search, caller-ID and summaries over HTTP: in-process (embedded store,
//! memory index) and with Redis (stream and index).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "../../indexer/tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../../indexer/tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::{expect_json, expect_problem, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Polls `path` until `ready` holds for its JSON body, for up to 5 s.
async fn eventually(
    app: &TestApp,
    token: &str,
    path: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let body: Value = expect_json(app.get(path, token).await, StatusCode::OK).await;
        if ready(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} never became ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn search_and_lookup(app: TestApp) {
    let token = app.admin_token().await;
    let ann: Value = expect_json(
        app.post("/v1/customers", &token, &json!({"name": "Narendra Kumar", "phones": ["+65 8122 6418"], "emails": ["naren@example.com"]}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let id = ann["id"].as_str().unwrap().to_string();
    let jose: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "José Tan", "phones": ["+65 9123 4567"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_json::<Value>(
        app.post(
            "/v1/engagements",
            &token,
            &json!({"customer": {"phone": "8122 6418"}, "channel": "sms", "direction": "inbound", "body": "Is the flat still available?"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    // One typo, a prefix, an accent, an email prefix, a number typed any way.
    let hits = eventually(&app, &token, "/v1/search?q=Narendar", |b| {
        b["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    assert_eq!(hits["items"][0]["id"], id.as_str());
    let prefix = eventually(&app, &token, "/v1/search?q=nare", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(prefix["items"][0]["matched_on"], "name");
    let accent = eventually(&app, &token, "/v1/search?name=jose", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(accent["items"][0]["id"], jose["id"]);
    let email = eventually(&app, &token, "/v1/search?q=naren@", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(email["items"][0]["matched_on"], "email");
    let by_phone = eventually(&app, &token, "/v1/search?q=81226418", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(by_phone["items"][0]["id"], id.as_str());
    assert_eq!(by_phone["items"][0]["matched_on"], "phone");

    // Hits carry the last engagement (once the engagement is indexed);
    // pages follow one another by cursor.
    let by_phone = eventually(&app, &token, "/v1/search?q=81226418", |b| {
        !b["items"][0]["last_engagement"].is_null()
    })
    .await;
    assert_eq!(
        by_phone["items"][0]["last_engagement"]["preview"],
        "Is the flat still available?"
    );
    assert_eq!(by_phone["items"][0]["last_engagement"]["channel"], "sms");
    for i in 0..4 {
        expect_json::<Value>(
            app.post(
                "/v1/customers",
                &token,
                &json!({"name": format!("Tan Page{i}")}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    let first = eventually(&app, &token, "/v1/search?q=tan&limit=2", |b| {
        b["total_estimate"] == 5
    })
    .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let mut seen: Vec<Value> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].clone())
        .collect();
    let mut cursor = first["next_cursor"].as_str().unwrap().to_string();
    loop {
        let page: Value = expect_json(
            app.get(&format!("/v1/search?q=tan&limit=2&cursor={cursor}"), &token)
                .await,
            StatusCode::OK,
        )
        .await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    seen.sort_by_key(|v| v.to_string());
    seen.dedup();
    assert_eq!(seen.len(), 5, "no hit twice");
    // A cursor of another query, or none of ours, is refused.
    for bad in [
        format!("/v1/search?q=lim&cursor={cursor}"),
        "/v1/search?q=tan&cursor=bm90IGEgY3Vyc29y".to_string(),
        "/v1/search?q=tan&cursor=%%%".to_string(),
    ] {
        expect_problem(
            app.get(&bad, &token).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }

    // Caller-ID with the latest engagement.
    let lookup = eventually(&app, &token, "/v1/lookup/phone/(065)%208122-6418", |b| {
        b["matches"][0]["summary"]["counts"]["sms"] == 1
    })
    .await;
    assert_eq!(lookup["matches"].as_array().unwrap().len(), 1);
    assert_eq!(lookup["matches"][0]["name"], "Narendra Kumar");
    assert_eq!(
        lookup["matches"][0]["summary"]["last_engagements"][0]["preview"],
        "Is the flat still available?"
    );
    let unknown: Value = expect_json(
        app.get("/v1/lookup/phone/+6590000000", &token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unknown["matches"], json!([]));
    let summary: Value = expect_json(
        app.get(&format!("/v1/customers/{id}/summary"), &token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(summary["phone"], "+6581226418");
    assert_eq!(summary["email"], "naren@example.com");

    // A rename is searchable under the new name only.
    expect_json::<Value>(
        app.patch(
            &format!("/v1/customers/{id}"),
            &token,
            &json!({"name": "Priya Nair"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    eventually(&app, &token, "/v1/search?q=priya", |b| {
        !b["items"].as_array().unwrap().is_empty()
    })
    .await;
    eventually(&app, &token, "/v1/search?name=narendra", |b| {
        b["items"] == json!([])
    })
    .await;

    // Bad requests.
    expect_problem(
        app.get("/v1/search", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.get("/v1/search?q=a&name=b", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.get("/v1/lookup/phone/hello", &token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/customers/{}/summary", uuid_like()), &token)
            .await,
        StatusCode::NOT_FOUND,
        "customer_not_found",
    )
    .await;
    let key = app.service_key("website").await;
    expect_problem(
        app.get("/v1/search?q=priya", &key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Erasure takes the customer out of search.
    assert_eq!(
        app.delete(&format!("/v1/customers/{id}"), &token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    eventually(&app, &token, "/v1/lookup/phone/+6581226418", |b| {
        b["matches"] == json!([])
    })
    .await;
}

fn uuid_like() -> &'static str {
    "0190b5a0-0000-7000-8000-000000000000"
}

#[tokio::test]
async fn search_and_caller_id_in_process() {
    search_and_lookup(spawn_app_with(|c| c.default_region = Some("SG".into())).await).await;
}

#[tokio::test]
async fn search_and_caller_id_with_redis() {
    search_and_lookup_on_redis(redis_server::url(), redis_server::unique_prefix()).await;
}

#[tokio::test]
async fn search_and_caller_id_on_a_redis_cluster() {
    let url = redis_cluster::url();
    let prefix = redis_cluster::unique_prefix();
    let _keys = redis_cluster::DeleteOnDrop {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    search_and_lookup_on_redis(url, prefix).await;
}

/// crm-api with its index and event stream on the Redis (or cluster) at
/// `url`, under `prefix`.
async fn search_and_lookup_on_redis(url: String, prefix: String) {
    let app = spawn_app_with(move |c| {
        c.default_region = Some("SG".into());
        c.redis_url = Some(url);
        c.redis_prefix = prefix;
    })
    .await;
    let ready = app.readyz().await;
    assert_eq!(ready["index"], "redis");
    assert_eq!(ready["status"], "ready");
    search_and_lookup(app).await;
}
