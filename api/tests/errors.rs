//! The error table over HTTP: every route and every error code a client can
//! get, each checked for its status, its `code`, its problem document and
//! `Content-Type: application/problem+json`, and the headers that go with
//! some codes (`Retry-After`, `Allow`, `WWW-Authenticate`).
//!
//! One table of (method, path, credentials, body) rows, run in order against
//! one application; the last check is that every documented route has a row
//! and that every code of `ErrorCode` was seen (or is listed as produced only
//! inside a 200, or not through HTTP).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::collections::{BTreeSet, HashSet};

use common::{expect_json, spawn_app_with, TestApp, ADMIN_EMAIL, USER_PASSWORD};
use crm_models::problem::ErrorCode;
use crm_models::store::StoreError;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Who calls.
#[derive(Debug, Clone, Copy)]
enum Caller {
    Nobody,
    Admin,
    Agent,
    Key,
    Device,
}

/// What the request carries.
#[derive(Debug, Clone)]
enum Body {
    None,
    Json(Value),
    /// A body with this content type, as it is.
    Raw(&'static str, Vec<u8>),
}

#[derive(Debug, Clone)]
struct Row {
    method: Method,
    /// The route as documented (`/v1/customers/{id}`).
    route: &'static str,
    /// The path requested.
    path: String,
    caller: Caller,
    body: Body,
    /// Make the next store transaction fail with this.
    fault: Option<StoreError>,
    status: u16,
    code: ErrorCode,
}

fn row(
    method: Method,
    route: &'static str,
    path: impl Into<String>,
    caller: Caller,
    body: Body,
    code: ErrorCode,
) -> Row {
    Row {
        method,
        route,
        path: path.into(),
        caller,
        body,
        fault: None,
        status: code.status(),
        code,
    }
}

struct Credentials {
    admin: String,
    agent: String,
    key: String,
    device: String,
}

impl Credentials {
    fn of(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Nobody => None,
            Caller::Admin => Some(&self.admin),
            Caller::Agent => Some(&self.agent),
            Caller::Key => Some(&self.key),
            Caller::Device => Some(&self.device),
        }
    }
}

async fn send(app: &TestApp, creds: &Credentials, r: &Row) -> reqwest::Response {
    let mut req = app.client.request(r.method.clone(), app.url(&r.path));
    if let Some(token) = creds.of(r.caller) {
        req = req.bearer_auth(token);
    }
    req = match &r.body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Raw(content_type, bytes) => req
            .header("content-type", *content_type)
            .body(bytes.clone()),
    };
    req.send().await.expect("the request is sent")
}

/// Fails `check` with a message instead of panicking, so that one run
/// lists every row that is wrong.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Checks one row's answer; returns the problem document and the headers.
async fn check(
    app: &TestApp,
    creds: &Credentials,
    r: &Row,
) -> Result<(Value, reqwest::header::HeaderMap), String> {
    if let Some(fault) = &r.fault {
        app.state
            .crm
            .fault_injection()
            .fail_next_transaction_with(0, fault.clone());
    }
    let response = send(app, creds, r).await;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let what = format!(
        "{} {} as {:?} (want {} {})",
        r.method, r.path, r.caller, r.status, r.code
    );
    ensure!(status.as_u16() == r.status, "{what}: got {status}: {text}");
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    ensure!(
        content_type == Some("application/problem+json"),
        "{what}: content type {content_type:?}: {text}"
    );
    let problem: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Err(format!("{what}: not JSON ({e}): {text}")),
    };
    ensure!(problem["code"] == r.code.as_str(), "{what}: {text}");
    ensure!(problem["status"] == r.status, "{what}: {text}");
    ensure!(
        problem["type"] == format!("urn:crm:problem:{}", r.code.as_str()),
        "{what}: {text}"
    );
    ensure!(problem["title"] == r.code.title(), "{what}: {text}");
    let detail = problem["detail"].as_str().unwrap_or("");
    ensure!(!detail.is_empty(), "{what}: no detail: {text}");
    for leak in [
        "at line",
        "Failed to deserialize",
        "struct ",
        "crm_models",
        "crm_api",
    ] {
        ensure!(!text.contains(leak), "{what} leaks {leak:?}: {text}");
    }
    let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok());
    match r.code {
        ErrorCode::Contention => ensure!(
            retry_after == Some("1"),
            "{what}: Retry-After {retry_after:?}"
        ),
        ErrorCode::Unavailable => ensure!(
            retry_after == Some("5"),
            "{what}: Retry-After {retry_after:?}"
        ),
        ErrorCode::RateLimited => ensure!(retry_after.is_some(), "{what}: no Retry-After"),
        _ => ensure!(retry_after.is_none(), "{what}: Retry-After {retry_after:?}"),
    }
    if r.code == ErrorCode::Unauthorized {
        let challenge = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        ensure!(
            challenge == Some("Bearer realm=\"crm\""),
            "{what}: WWW-Authenticate {challenge:?}"
        );
    }
    Ok((problem, headers))
}

async fn created_id(app: &TestApp, token: &str, path: &str, body: Value) -> String {
    let created: Value = expect_json(app.post(path, token, &body).await, StatusCode::CREATED).await;
    created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} answers an id: {created}"))
        .to_string()
}

fn sms(id: &str, number: &str, contact_name: Option<&str>) -> Value {
    let mut event = json!({
        "client_event_id": id, "kind": "sms", "direction": "inbound",
        "number": number, "occurred_at": "2026-11-20T10:00:00Z", "body": "hello",
    });
    if let Some(name) = contact_name {
        event["contact_name"] = json!(name);
    }
    event
}

#[tokio::test]
async fn every_route_and_every_error_code_answer_a_problem_with_the_tables_status() {
    use Caller::*;
    use ErrorCode as C;

    // A webhook endpoint on this machine (disabled: nothing is delivered).
    let app = spawn_app_with(|c| c.webhooks.allow_private = true).await;
    let admin = app.admin_token().await;
    let agent = app.agent_token("agent@example.com").await;
    let key = app.service_key("website").await;
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
    let device = enrolled["token"]
        .as_str()
        .expect("a device token")
        .to_string();
    let device_id = enrolled["device"]["id"]
        .as_str()
        .or_else(|| enrolled["id"].as_str())
        .expect("a device id")
        .to_string();
    let creds = Credentials {
        admin: admin.clone(),
        agent,
        key,
        device,
    };

    let ann = created_id(
        &app,
        &admin,
        "/v1/customers",
        json!({"name": "Ann Tan", "phones": ["+6581226418"]}),
    )
    .await;
    // Merged and kept merged: writes on `peter` answer customer_merged.
    let lim = created_id(&app, &admin, "/v1/customers", json!({"name": "Lim"})).await;
    let peter = created_id(&app, &admin, "/v1/customers", json!({"name": "Peter"})).await;
    expect_json::<Value>(
        app.post(
            &format!("/v1/customers/{lim}/merge"),
            &admin,
            &json!({"ids": [peter]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    // Merged and undone: undoing again is merge_refused.
    let kim = created_id(&app, &admin, "/v1/customers", json!({"name": "Kim"})).await;
    let joe = created_id(&app, &admin, "/v1/customers", json!({"name": "Joe"})).await;
    let merged: Value = expect_json(
        app.post(
            &format!("/v1/customers/{kim}/merge"),
            &admin,
            &json!({"ids": [joe]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let undone_merge = merged["merge_id"].as_str().expect("a merge id").to_string();
    expect_json::<Value>(
        app.post(
            &format!("/v1/merges/{undone_merge}/undo"),
            &admin,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;

    let hook = created_id(
        &app,
        &admin,
        "/v1/webhooks",
        json!({"url": "http://127.0.0.1:9/hooks", "types": ["customer.created"], "enabled": false}),
    )
    .await;

    let nobody = "0190a5a0-0000-7000-8000-000000000000";
    let json_body = |v: Value| Body::Json(v);
    let customer = json!({"name": "Zoe"});
    let event = json!({"events": [sms("e-1", "+6581226418", None)]});
    let engagement = json!({"customer_id": ann, "channel": "sms", "direction": "inbound",
                            "occurred_at": "2026-11-20T10:00:00Z", "body": "hi"});
    let too_large = {
        let mut body = b"{\"name\": \"".to_vec();
        body.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 1));
        body.extend(b"\"}");
        body
    };

    let mut rows: Vec<Row> = Vec::new();

    // 401 `unauthorized` without credentials, on every route that needs them.
    let protected: Vec<(Method, &'static str, String, Body)> = vec![
        (
            Method::POST,
            "/v1/api-keys",
            "/v1/api-keys".into(),
            json_body(json!({"name": "k"})),
        ),
        (
            Method::GET,
            "/v1/api-keys",
            "/v1/api-keys".into(),
            Body::None,
        ),
        (
            Method::DELETE,
            "/v1/api-keys/{id}",
            format!("/v1/api-keys/{nobody}"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/auth/logout",
            "/v1/auth/logout".into(),
            json_body(json!({})),
        ),
        (Method::GET, "/v1/me", "/v1/me".into(), Body::None),
        (
            Method::POST,
            "/v1/customers",
            "/v1/customers".into(),
            json_body(customer.clone()),
        ),
        (
            Method::GET,
            "/v1/customers",
            "/v1/customers".into(),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/customers/{id}",
            format!("/v1/customers/{ann}"),
            Body::None,
        ),
        (
            Method::PATCH,
            "/v1/customers/{id}",
            format!("/v1/customers/{ann}"),
            json_body(customer.clone()),
        ),
        (
            Method::DELETE,
            "/v1/customers/{id}",
            format!("/v1/customers/{ann}"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/devices",
            "/v1/devices".into(),
            json_body(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/devices", "/v1/devices".into(), Body::None),
        (
            Method::DELETE,
            "/v1/devices/{id}",
            format!("/v1/devices/{device_id}"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/calls/incoming",
            "/v1/calls/incoming".into(),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/engagements",
            "/v1/engagements".into(),
            json_body(engagement.clone()),
        ),
        (
            Method::POST,
            "/v1/engagements/batch",
            "/v1/engagements/batch".into(),
            json_body(json!({"items": [engagement.clone()]})),
        ),
        (
            Method::POST,
            "/v1/track",
            "/v1/track".into(),
            json_body(json!({"customer_id": ann, "url": "https://example.com/"})),
        ),
        (
            Method::GET,
            "/v1/customers/{id}/engagements",
            format!("/v1/customers/{ann}/engagements"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/customers/{id}/merge",
            format!("/v1/customers/{ann}/merge"),
            json_body(json!({"ids": [lim]})),
        ),
        (
            Method::GET,
            "/v1/customers/{id}/history",
            format!("/v1/customers/{ann}/history"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/merges/{merge_id}/undo",
            format!("/v1/merges/{undone_merge}/undo"),
            json_body(json!({})),
        ),
        (
            Method::GET,
            "/v1/duplicates",
            "/v1/duplicates".into(),
            Body::None,
        ),
        (
            Method::DELETE,
            "/v1/duplicates/{a}/{b}",
            format!("/v1/duplicates/{ann}/{lim}"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/identities/{identifier}/shared",
            "/v1/identities/+6581226418/shared".into(),
            json_body(json!({"shared": true})),
        ),
        (
            Method::GET,
            "/v1/search",
            "/v1/search?q=ann".into(),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/customers/{id}/summary",
            format!("/v1/customers/{ann}/summary"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/lookup/phone/{number}",
            "/v1/lookup/phone/81226418".into(),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/users",
            "/v1/users".into(),
            json_body(
                json!({"email": "x@example.com", "password": USER_PASSWORD, "role": "agent"}),
            ),
        ),
        (Method::GET, "/v1/users", "/v1/users".into(), Body::None),
        (
            Method::GET,
            "/v1/users/{id}",
            format!("/v1/users/{nobody}"),
            Body::None,
        ),
        (
            Method::PATCH,
            "/v1/users/{id}",
            format!("/v1/users/{nobody}"),
            json_body(json!({"name": "x"})),
        ),
        (
            Method::POST,
            "/v1/mobile/events",
            "/v1/mobile/events".into(),
            json_body(event.clone()),
        ),
        (
            Method::GET,
            "/v1/mobile/caller-id",
            "/v1/mobile/caller-id?number=81226418".into(),
            Body::None,
        ),
    ];
    for (method, route, path, body) in &protected {
        rows.push(row(
            method.clone(),
            route,
            path.clone(),
            Nobody,
            body.clone(),
            C::Unauthorized,
        ));
    }
    // Events out: the feed (admins and `events:read` keys) and the live
    // stream with its tickets (staff access tokens only).
    for (method, path) in [
        (Method::GET, "/v1/events"),
        (Method::POST, "/v1/stream/tickets"),
        (Method::GET, "/v1/stream"),
    ] {
        rows.push(row(
            method.clone(),
            path,
            path,
            Nobody,
            Body::None,
            C::Unauthorized,
        ));
        rows.push(row(method, path, path, Key, Body::None, C::Forbidden));
    }
    rows.push(row(
        Method::GET,
        "/v1/events",
        "/v1/events",
        Agent,
        Body::None,
        C::Forbidden,
    ));
    rows.push(row(
        Method::GET,
        "/v1/events",
        format!("/v1/events?after={nobody}"),
        Admin,
        Body::None,
        C::CursorExpired,
    ));
    for path in ["/v1/events?types=nope", "/v1/stream?types=nope"] {
        let route = path.split('?').next().unwrap_or(path);
        rows.push(row(
            Method::GET,
            route,
            path,
            Admin,
            Body::None,
            C::ValidationFailed,
        ));
    }
    // Sales analytics: staff read the boards, admins export; keys nothing.
    for path in [
        "/v1/analytics/leaderboard",
        "/v1/analytics/series",
        "/v1/analytics/overview",
        "/v1/analytics/export",
    ] {
        rows.push(row(
            Method::GET,
            path,
            path,
            Nobody,
            Body::None,
            C::Unauthorized,
        ));
        rows.push(row(Method::GET, path, path, Key, Body::None, C::Forbidden));
    }
    rows.push(row(
        Method::GET,
        "/v1/analytics/export",
        "/v1/analytics/export",
        Agent,
        Body::None,
        C::Forbidden,
    ));
    for path in [
        "/v1/analytics/leaderboard?metric=nope",
        "/v1/analytics/series?group_by=nope",
        "/v1/analytics/export?format=nope",
    ] {
        let route = path.split('?').next().unwrap_or(path);
        rows.push(row(
            Method::GET,
            route,
            path,
            Admin,
            Body::None,
            C::ValidationFailed,
        ));
    }
    // Bulk import and export: admins only.
    let bulk_routes: [(Method, &'static str, String); 5] = [
        (
            Method::GET,
            "/v1/export/customers",
            "/v1/export/customers".into(),
        ),
        (
            Method::GET,
            "/v1/export/engagements",
            "/v1/export/engagements".into(),
        ),
        (
            Method::POST,
            "/v1/imports",
            "/v1/imports?kind=customers".into(),
        ),
        (
            Method::GET,
            "/v1/imports/{id}",
            format!("/v1/imports/{nobody}"),
        ),
        (
            Method::GET,
            "/v1/imports/{id}/rejected",
            format!("/v1/imports/{nobody}/rejected"),
        ),
    ];
    for (method, route, path) in bulk_routes {
        for (who, code) in [
            (Nobody, C::Unauthorized),
            (Key, C::Forbidden),
            (Agent, C::Forbidden),
        ] {
            rows.push(row(method.clone(), route, &path, who, Body::None, code));
        }
    }
    for (method, path) in [
        (Method::GET, "/v1/export/customers?format=nope"),
        (Method::GET, "/v1/export/engagements?channel=nope"),
        (Method::POST, "/v1/imports?kind=nope"),
    ] {
        let route = path.split('?').next().unwrap_or(path);
        let body = if method == Method::POST {
            Body::Raw("text/csv", b"name\nAnn\n".to_vec())
        } else {
            Body::None
        };
        rows.push(row(method, route, path, Admin, body, C::ValidationFailed));
    }
    // Webhooks: admins only.
    let hook_body = json!({"url": "http://127.0.0.1:9/other", "types": []});
    let webhook_routes: [(Method, &'static str, String, Body); 9] = [
        (
            Method::GET,
            "/v1/webhooks",
            "/v1/webhooks".into(),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/webhooks",
            "/v1/webhooks".into(),
            json_body(hook_body.clone()),
        ),
        (
            Method::GET,
            "/v1/webhooks/{id}",
            format!("/v1/webhooks/{hook}"),
            Body::None,
        ),
        (
            Method::PATCH,
            "/v1/webhooks/{id}",
            format!("/v1/webhooks/{hook}"),
            json_body(json!({"enabled": false})),
        ),
        (
            Method::DELETE,
            "/v1/webhooks/{id}",
            format!("/v1/webhooks/{hook}"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/webhooks/{id}/deliveries",
            format!("/v1/webhooks/{hook}/deliveries"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            format!("/v1/webhooks/{hook}/deliveries/{nobody}/retry"),
            json_body(json!({})),
        ),
        (
            Method::POST,
            "/v1/webhooks/{id}/recover",
            format!("/v1/webhooks/{hook}/recover"),
            json_body(json!({"since": "2026-11-20T10:00:00Z"})),
        ),
        (
            Method::POST,
            "/v1/webhooks/{id}/secret/rotate",
            format!("/v1/webhooks/{hook}/secret/rotate"),
            json_body(json!({})),
        ),
    ];
    for (method, route, path, body) in webhook_routes {
        rows.push(row(
            method.clone(),
            route,
            path.clone(),
            Nobody,
            body.clone(),
            C::Unauthorized,
        ));
        rows.push(row(method, route, path, Agent, body, C::Forbidden));
    }
    rows.push(row(
        Method::GET,
        "/v1/webhooks/{id}",
        format!("/v1/webhooks/{nobody}"),
        Admin,
        Body::None,
        C::WebhookNotFound,
    ));
    rows.push(row(
        Method::POST,
        "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
        format!("/v1/webhooks/{hook}/deliveries/{nobody}/retry"),
        Admin,
        json_body(json!({})),
        C::DeliveryNotFound,
    ));
    rows.push(row(
        Method::POST,
        "/v1/webhooks",
        "/v1/webhooks",
        Admin,
        json_body(json!({"url": "ftp://example.com/hooks", "types": ["no.such"]})),
        C::ValidationFailed,
    ));
    // Device tokens work only on /v1/mobile/*, staff tokens and keys only off it.
    rows.push(row(
        Method::GET,
        "/v1/customers/{id}",
        format!("/v1/customers/{ann}"),
        Device,
        Body::None,
        C::Unauthorized,
    ));
    rows.push(row(
        Method::POST,
        "/v1/mobile/events",
        "/v1/mobile/events",
        Admin,
        json_body(event.clone()),
        C::Unauthorized,
    ));
    rows.push(row(
        Method::GET,
        "/v1/mobile/caller-id",
        "/v1/mobile/caller-id?number=81226418",
        Key,
        Body::None,
        C::Unauthorized,
    ));
    // Public routes: bad credentials in the body.
    rows.push(row(
        Method::POST,
        "/v1/auth/login",
        "/v1/auth/login",
        Nobody,
        json_body(json!({"email": ADMIN_EMAIL, "password": "wrong password"})),
        C::Unauthorized,
    ));
    rows.push(row(
        Method::POST,
        "/v1/auth/refresh",
        "/v1/auth/refresh",
        Nobody,
        json_body(json!({"refresh_token": "not-a-token"})),
        C::Unauthorized,
    ));

    // 403 `forbidden`: agents on admin routes, API keys on staff routes.
    for (method, route, path, body) in &protected {
        let admin_only = matches!(
            *route,
            "/v1/api-keys"
                | "/v1/api-keys/{id}"
                | "/v1/users"
                | "/v1/users/{id}"
                | "/v1/merges/{merge_id}/undo"
                | "/v1/identities/{identifier}/shared"
        ) || (*route == "/v1/customers/{id}" && *method == Method::DELETE);
        if admin_only {
            rows.push(row(
                method.clone(),
                route,
                path.clone(),
                Agent,
                body.clone(),
                C::Forbidden,
            ));
        }
    }
    for (method, route, path) in [
        (
            Method::GET,
            "/v1/customers/{id}",
            format!("/v1/customers/{ann}"),
        ),
        (Method::GET, "/v1/customers", "/v1/customers".to_string()),
        (Method::GET, "/v1/search", "/v1/search?q=ann".to_string()),
        (Method::GET, "/v1/devices", "/v1/devices".to_string()),
        (Method::GET, "/v1/duplicates", "/v1/duplicates".to_string()),
        (
            Method::DELETE,
            "/v1/duplicates/{a}/{b}",
            format!("/v1/duplicates/{ann}/{lim}"),
        ),
    ] {
        rows.push(row(method, route, path, Key, Body::None, C::Forbidden));
    }

    // 404s.
    rows.push(row(
        Method::GET,
        "/v1/nothing-here",
        "/v1/nothing-here",
        Admin,
        Body::None,
        C::RouteNotFound,
    ));
    rows.push(row(
        Method::GET,
        "/v1/mobile/nothing-here",
        "/v1/mobile/nothing-here",
        Device,
        Body::None,
        C::RouteNotFound,
    ));
    for (method, route, path, body) in [
        (
            Method::GET,
            "/v1/customers/{id}",
            format!("/v1/customers/{nobody}"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/customers/{id}",
            "/v1/customers/not-an-id".to_string(),
            Body::None,
        ),
        (
            Method::PATCH,
            "/v1/customers/{id}",
            format!("/v1/customers/{nobody}"),
            json_body(customer.clone()),
        ),
        (
            Method::DELETE,
            "/v1/customers/{id}",
            format!("/v1/customers/{nobody}"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/customers/{id}/engagements",
            format!("/v1/customers/{nobody}/engagements"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/customers/{id}/history",
            format!("/v1/customers/{nobody}/history"),
            Body::None,
        ),
        (
            Method::GET,
            "/v1/customers/{id}/summary",
            format!("/v1/customers/{nobody}/summary"),
            Body::None,
        ),
        (
            Method::POST,
            "/v1/customers/{id}/merge",
            format!("/v1/customers/{nobody}/merge"),
            json_body(json!({"ids": [ann]})),
        ),
        (
            Method::POST,
            "/v1/engagements",
            "/v1/engagements".to_string(),
            json_body(
                json!({"customer_id": nobody, "channel": "sms", "direction": "inbound",
                             "occurred_at": "2026-11-20T10:00:00Z", "body": "hi"}),
            ),
        ),
    ] {
        rows.push(row(method, route, path, Admin, body, C::CustomerNotFound));
    }
    rows.push(row(
        Method::POST,
        "/v1/merges/{merge_id}/undo",
        format!("/v1/merges/{nobody}/undo"),
        Admin,
        json_body(json!({})),
        C::MergeNotFound,
    ));
    // A pair never suggested, and an id that is no customer id.
    rows.push(row(
        Method::DELETE,
        "/v1/duplicates/{a}/{b}",
        format!("/v1/duplicates/{ann}/{nobody}"),
        Agent,
        Body::None,
        C::NotFound,
    ));
    rows.push(row(
        Method::DELETE,
        "/v1/duplicates/{a}/{b}",
        format!("/v1/duplicates/not-an-id/{ann}"),
        Agent,
        Body::None,
        C::CustomerNotFound,
    ));
    rows.push(row(
        Method::DELETE,
        "/v1/api-keys/{id}",
        format!("/v1/api-keys/{nobody}"),
        Admin,
        Body::None,
        C::ApiKeyNotFound,
    ));
    rows.push(row(
        Method::GET,
        "/v1/users/{id}",
        format!("/v1/users/{nobody}"),
        Admin,
        Body::None,
        C::UserNotFound,
    ));
    rows.push(row(
        Method::PATCH,
        "/v1/users/{id}",
        format!("/v1/users/{nobody}"),
        Admin,
        json_body(json!({"name": "x"})),
        C::UserNotFound,
    ));
    rows.push(row(
        Method::DELETE,
        "/v1/devices/{id}",
        format!("/v1/devices/{nobody}"),
        Admin,
        Body::None,
        C::DeviceNotFound,
    ));

    // 405, with `Allow` (checked below).
    rows.push(row(
        Method::DELETE,
        "/v1/me",
        "/v1/me",
        Admin,
        Body::None,
        C::MethodNotAllowed,
    ));
    rows.push(row(
        Method::PUT,
        "/v1/customers",
        "/v1/customers",
        Admin,
        json_body(customer.clone()),
        C::MethodNotAllowed,
    ));
    rows.push(row(
        Method::PUT,
        "/v1/mobile/events",
        "/v1/mobile/events",
        Device,
        json_body(event.clone()),
        C::MethodNotAllowed,
    ));

    // 415, 413, 400: the body itself.
    rows.push(row(
        Method::POST,
        "/v1/customers",
        "/v1/customers",
        Admin,
        Body::Raw("text/plain", b"{\"name\": \"Zoe\"}".to_vec()),
        C::UnsupportedMediaType,
    ));
    rows.push(row(
        Method::POST,
        "/v1/customers",
        "/v1/customers",
        Admin,
        Body::None,
        C::UnsupportedMediaType,
    ));
    rows.push(row(
        Method::POST,
        "/v1/mobile/events",
        "/v1/mobile/events",
        Device,
        Body::Raw("text/plain", b"{}".to_vec()),
        C::UnsupportedMediaType,
    ));
    rows.push(row(
        Method::POST,
        "/v1/customers",
        "/v1/customers",
        Admin,
        Body::Raw("application/json", too_large.clone()),
        C::PayloadTooLarge,
    ));
    rows.push(row(
        Method::POST,
        "/v1/mobile/events",
        "/v1/mobile/events",
        Device,
        Body::Raw("application/json", too_large),
        C::PayloadTooLarge,
    ));
    for (method, route, path, caller) in [
        (Method::POST, "/v1/customers", "/v1/customers", Admin),
        (Method::POST, "/v1/users", "/v1/users", Admin),
        (Method::POST, "/v1/auth/login", "/v1/auth/login", Nobody),
        (
            Method::POST,
            "/v1/mobile/events",
            "/v1/mobile/events",
            Device,
        ),
    ] {
        rows.push(row(
            method.clone(),
            route,
            path,
            caller,
            Body::Raw("application/json", b"{\"name\": ".to_vec()),
            C::MalformedJson,
        ));
        rows.push(row(
            method,
            route,
            path,
            caller,
            Body::Raw("application/json", b"{} []".to_vec()),
            C::MalformedJson,
        ));
    }

    // 422 `validation_failed` (the fields are checked below).
    rows.push(row(
        Method::POST,
        "/v1/users",
        "/v1/users",
        Admin,
        json_body(json!({"email": 5, "password": USER_PASSWORD, "role": "boss"})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/auth/login",
        "/v1/auth/login",
        Nobody,
        json_body(json!({})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/mobile/events",
        "/v1/mobile/events",
        Device,
        json_body(json!({"items": []})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/mobile/caller-id",
        "/v1/mobile/caller-id?number=not-a-number",
        Device,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/mobile/caller-id",
        "/v1/mobile/caller-id",
        Device,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/lookup/phone/{number}",
        "/v1/lookup/phone/not-a-number",
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/search",
        "/v1/search",
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/customers",
        "/v1/customers?limit=lots",
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/calls/incoming",
        "/v1/calls/incoming?since=yesterday",
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/duplicates",
        "/v1/duplicates?limit=0",
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::DELETE,
        "/v1/duplicates/{a}/{b}",
        format!("/v1/duplicates/{ann}/{ann}"),
        Agent,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/users",
        "/v1/users?cursor=nope",
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::GET,
        "/v1/customers/{id}/engagements",
        format!("/v1/customers/{ann}/engagements?since=yesterday"),
        Admin,
        Body::None,
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/customers",
        "/v1/customers",
        Admin,
        json_body(json!({"emails": ["not an email"]})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::PATCH,
        "/v1/users/{id}",
        format!("/v1/users/{nobody}"),
        Admin,
        json_body(json!({"role": "boss"})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/api-keys",
        "/v1/api-keys",
        Admin,
        json_body(json!({"name": ""})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/devices",
        "/v1/devices",
        Admin,
        json_body(json!({"name": " ", "default_region": "XX"})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/customers/{id}/merge",
        format!("/v1/customers/{ann}/merge"),
        Admin,
        json_body(json!({"ids": []})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/identities/{identifier}/shared",
        "/v1/identities/not-an-identifier/shared",
        Admin,
        json_body(json!({"shared": true})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/engagements",
        "/v1/engagements",
        Admin,
        json_body(json!({"channel": "fax"})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/engagements/batch",
        "/v1/engagements/batch",
        Admin,
        json_body(json!({"items": [], "evil": 1})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/track",
        "/v1/track",
        Admin,
        json_body(json!({"url": 5})),
        C::ValidationFailed,
    ));
    rows.push(row(
        Method::POST,
        "/v1/auth/logout",
        "/v1/auth/logout",
        Admin,
        json_body(json!({"refresh_token": 5})),
        C::ValidationFailed,
    ));

    // 409s.
    rows.push(row(
        Method::POST,
        "/v1/users",
        "/v1/users",
        Admin,
        json_body(json!({"email": ADMIN_EMAIL, "password": USER_PASSWORD, "role": "agent"})),
        C::EmailTaken,
    ));
    rows.push(row(
        Method::POST,
        "/v1/customers",
        "/v1/customers",
        Admin,
        json_body(json!({"name": "Someone else", "phones": ["+6581226418"]})),
        C::IdentifierTaken,
    ));
    rows.push(row(
        Method::PATCH,
        "/v1/customers/{id}",
        format!("/v1/customers/{peter}"),
        Admin,
        json_body(json!({"name": "Peter Lim"})),
        C::CustomerMerged,
    ));
    rows.push(row(
        Method::POST,
        "/v1/merges/{merge_id}/undo",
        format!("/v1/merges/{undone_merge}/undo"),
        Admin,
        json_body(json!({})),
        C::MergeRefused,
    ));
    // Store failures, whatever the route: a unique value taken, contention
    // (409 and `Retry-After: 1`), the store down (503 and `Retry-After: 5`),
    // anything else (500, with nothing of the cause in the answer).
    for (fault, code) in [
        (
            StoreError::Conflict("a unique value is taken".into()),
            C::Conflict,
        ),
        (
            StoreError::Contention("write conflict".into()),
            C::Contention,
        ),
        (
            StoreError::Unavailable("connection refused".into()),
            C::Unavailable,
        ),
        (StoreError::Internal("disk on fire".into()), C::Internal),
    ] {
        let mut r = row(
            Method::PATCH,
            "/v1/customers/{id}",
            format!("/v1/customers/{ann}"),
            Admin,
            json_body(json!({"name": "Ann B. Tan"})),
            code,
        );
        r.fault = Some(fault);
        rows.push(r);
    }

    let mut seen_codes: HashSet<ErrorCode> = HashSet::new();
    let mut seen_routes: BTreeSet<(String, String)> = BTreeSet::new();
    let mut failures: Vec<String> = Vec::new();
    for r in &rows {
        seen_codes.insert(r.code);
        seen_routes.insert((r.method.to_string().to_lowercase(), r.route.to_string()));
        let (problem, headers) = match check(&app, &creds, r).await {
            Ok(answer) => answer,
            Err(failure) => {
                failures.push(failure);
                continue;
            }
        };
        match r.code {
            ErrorCode::MethodNotAllowed => {
                let allow = headers
                    .get("allow")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let methods: BTreeSet<&str> = allow.split(',').map(str::trim).collect();
                let expected: &[&str] = match r.route {
                    "/v1/me" => &["GET"],
                    "/v1/customers" => &["GET", "POST"],
                    _ => &["POST"],
                };
                if !expected.iter().all(|m| methods.contains(m))
                    || methods.contains(r.method.as_str())
                {
                    failures.push(format!("{} {}: Allow {allow:?}", r.method, r.path));
                }
            }
            ErrorCode::Internal => {
                assert_eq!(problem["detail"], "internal error");
                assert!(!problem.to_string().contains("fire"));
            }
            ErrorCode::CustomerMerged => {
                assert_eq!(problem["merged_into"], lim, "{problem}");
            }
            ErrorCode::IdentifierTaken => {
                assert_eq!(problem["customers"], json!([ann]), "{problem}");
            }
            _ => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Validation lists every bad field, in words for people.
    let invalid = check(
        &app,
        &creds,
        &row(
            Method::POST,
            "/v1/users",
            "/v1/users",
            Admin,
            json_body(json!({"email": 5, "password": USER_PASSWORD, "role": "boss"})),
            C::ValidationFailed,
        ),
    )
    .await
    .unwrap()
    .0;
    assert_eq!(
        invalid["errors"],
        json!([
            {"field": "email", "message": "must be a string, not a number"},
            {"field": "role", "message": "must be admin or agent"},
        ]),
        "{invalid}"
    );
    let missing = check(
        &app,
        &creds,
        &row(
            Method::POST,
            "/v1/auth/login",
            "/v1/auth/login",
            Nobody,
            json_body(json!({"extra": 1})),
            C::ValidationFailed,
        ),
    )
    .await
    .unwrap()
    .0;
    let fields: Vec<&str> = missing["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["extra", "email", "password"], "{missing}");

    // Mobile upload: a conflict or contention on one event is 409 in that
    // event's result, and the others are stored; never a 503 for the batch.
    for (fault, code) in [
        (
            StoreError::Conflict("a unique value is taken".into()),
            "conflict",
        ),
        (
            StoreError::Contention("write conflict".into()),
            "contention",
        ),
    ] {
        // A known, unnamed customer that the event names: resolving it runs
        // a transaction, which the fault fails.
        let number = if code == "conflict" {
            "+6590000001"
        } else {
            "+6590000002"
        };
        created_id(&app, &admin, "/v1/customers", json!({"phones": [number]})).await;
        app.state
            .crm
            .fault_injection()
            .fail_next_transaction_with(0, fault);
        let answer: Value = expect_json(
            app.post(
                "/v1/mobile/events",
                &creds.device,
                &json!({"events": [sms(&format!("{code}-1"), number, Some("Eve")), sms(&format!("{code}-2"), "+6590000099", None)]}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results[0]["status"], "rejected", "{answer}");
        assert_eq!(results[0]["error"]["code"], code, "{answer}");
        assert_eq!(results[0]["error"]["status"], 409, "{answer}");
        assert_eq!(results[1]["status"], "created", "{answer}");
    }
    seen_codes.insert(ErrorCode::InvalidEvent);
    let answer: Value = expect_json(
        app.post(
            "/v1/mobile/events",
            &creds.device,
            &json!({"events": [{"kind": "fax"}]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        answer["results"][0]["error"]["code"], "invalid_event",
        "{answer}"
    );
    assert_eq!(answer["results"][0]["error"]["status"], 422, "{answer}");

    // 429 `rate_limited`, last: it uses up this address's login budget.
    let mut limited = None;
    for i in 0..40 {
        let response = app
            .try_login(&format!("nobody-{i}@example.com"), "wrong password")
            .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("logins from one address are limited");
    assert!(limited.headers().contains_key("retry-after"));
    let problem: Value = expect_json(limited, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(problem["code"], "rate_limited");
    seen_codes.insert(ErrorCode::RateLimited);

    // Every documented route has rows.
    let doc = crm_api::openapi::document();
    for (path, item) in &doc.paths.paths {
        if !path.starts_with("/v1/") {
            continue;
        }
        let methods = [
            ("get", item.get.is_some()),
            ("post", item.post.is_some()),
            ("patch", item.patch.is_some()),
            ("put", item.put.is_some()),
            ("delete", item.delete.is_some()),
        ];
        for (method, present) in methods {
            if present {
                assert!(
                    seen_routes.contains(&(method.to_string(), path.clone())),
                    "no error row for {method} {path}"
                );
            }
        }
    }
    // Every code was seen, but these, which cannot be provoked from
    // outside: `bad_request` (a body that cannot be read), `not_found` (a
    // record gone between two reads of one request), `identifiers_conflict`
    // (an automatic link that the merge safeguards refuse, on a store whose
    // customers are at the identifier cap).
    let unreachable = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::IdentifiersConflict,
    ];
    for code in ErrorCode::ALL {
        assert!(
            seen_codes.contains(&code) || unreachable.contains(&code),
            "no row produces {code}"
        );
    }
}
