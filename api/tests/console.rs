//! The console: how its files are served (types, ETags and 304, gzip, the
//! security headers), `CRM_CORS_ORIGINS`, and the console itself end to end
//! in a real browser.
//!
//! The browser test runs Debian's `chromium` headless through Playwright for
//! Python from the test virtualenv (`CRM_TEST_VENV`), as `browser.rs` does;
//! `./scripts/test.sh` installs both. It writes a screenshot of each page
//! under `target/console-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{
    chromium, expect_json, playwright_python, spawn_app, spawn_app_with, TestApp, ADMIN_EMAIL,
    ADMIN_PASSWORD, USER_PASSWORD,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
    X_CONTENT_TYPE_OPTIONS,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types_and_a_strict_policy() {
    let app = spawn_app().await;
    let page = get(&app, "/", &[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(page.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let policy = page.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self';",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "connect-src 'self'",
    ] {
        assert!(
            policy.contains(directive),
            "{directive} missing from {policy}"
        );
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await.unwrap();
    // No inline script, nothing from another origin.
    assert!(!html.contains("<script>"), "an inline script in the page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "a foreign URL"
    );

    for (path, content_type) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/search.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let asset = get(&app, path, &[]).await;
        assert_eq!(asset.status(), StatusCode::OK, "{path}");
        assert_eq!(asset.headers()[CONTENT_TYPE], content_type, "{path}");
        assert!(
            asset.headers().contains_key(CONTENT_SECURITY_POLICY),
            "{path}"
        );
    }
    // Every module the page loads is there: a missing import would break it.
    let app_js = get(&app, "/assets/app.js", &[]).await.text().await.unwrap();
    for line in app_js.lines().filter(|l| l.starts_with("import")) {
        let module = line.rsplit("'./").next().unwrap().trim_end_matches("';");
        let asset = get(&app, &format!("/assets/{module}"), &[]).await;
        assert_eq!(
            asset.status(),
            StatusCode::OK,
            "{module}, imported by app.js"
        );
    }

    let missing = get(&app, "/assets/nothing.js", &[]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()[CONTENT_TYPE], "application/problem+json");
    let page_again = get(&app, "/assets/index.html", &[]).await;
    assert_eq!(page_again.status(), StatusCode::NOT_FOUND);
    // The JSON API's own 404 is unchanged.
    let route = get(&app, "/v1/nothing", &[]).await;
    assert_eq!(route.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn files_revalidate_with_etags_and_are_gzipped_when_accepted() {
    let app = spawn_app().await;
    let plain = get(&app, "/assets/app.js", &[]).await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(plain.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(plain.headers()["vary"], "accept-encoding");
    let etag = plain.headers()[ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let source = plain.bytes().await.unwrap();

    let again = get(&app, "/assets/app.js", &[(IF_NONE_MATCH.as_str(), &etag)]).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[ETAG].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let changed = get(
        &app,
        "/assets/app.js",
        &[(IF_NONE_MATCH.as_str(), "\"other\"")],
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);

    let zipped = get(
        &app,
        "/assets/app.js",
        &[(ACCEPT_ENCODING.as_str(), "gzip, br")],
    )
    .await;
    assert_eq!(zipped.status(), StatusCode::OK);
    assert_eq!(zipped.headers()[CONTENT_ENCODING], "gzip");
    let zipped_etag = zipped.headers()[ETAG].to_str().unwrap().to_string();
    assert_ne!(zipped_etag, etag, "one tag per representation");
    let body = zipped.bytes().await.unwrap();
    assert!(body.len() < source.len());
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, source);
    let not_modified = get(
        &app,
        "/assets/app.js",
        &[
            (ACCEPT_ENCODING.as_str(), "gzip"),
            (IF_NONE_MATCH.as_str(), &zipped_etag),
        ],
    )
    .await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    let refused = get(
        &app,
        "/assets/app.js",
        &[(ACCEPT_ENCODING.as_str(), "gzip;q=0")],
    )
    .await;
    assert!(refused.headers().get(CONTENT_ENCODING).is_none());
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url("/v1/search?q=ann"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn listed_origins_may_call_the_api_from_a_browser_and_others_may_not() {
    let app = spawn_app_with(|c| {
        c.cors_origins = vec![
            "https://crm.example.com".parse().unwrap(),
            "http://localhost:3000".parse().unwrap(),
        ];
    })
    .await;
    let answer = preflight(&app, "https://crm.example.com").await;
    assert!(answer.status().is_success(), "{}", answer.status());
    let h = answer.headers();
    assert_eq!(h["access-control-allow-origin"], "https://crm.example.com");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("PATCH"), "{methods}");

    let other = preflight(&app, "https://evil.example.net").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let token = app.admin_token().await;
    let read = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(&token)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        read.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(read.headers()["vary"].to_str().unwrap().contains("origin"));

    // Nothing is allowed by default.
    let default = spawn_app().await;
    let answer = preflight(&default, "https://crm.example.com").await;
    assert!(answer
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

/// The same token, expired an hour ago (signed with the real secret): the
/// server answers it 401, as it does once an access token's time is up.
fn expired(token: &str, secret: &[u8]) -> String {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now - 7200);
    claims["nbf"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// The suggested pair of these customers (ids in the suggestion's order),
/// once the duplicate finder has suggested it.
async fn wait_for_suggestion(app: &TestApp, token: &str, ids: &[String]) -> Vec<String> {
    for _ in 0..400 {
        let dupes: Value =
            expect_json(app.get("/v1/duplicates", token).await, StatusCode::OK).await;
        for item in dupes["items"].as_array().unwrap() {
            let mut pair: Vec<String> = item["customer_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            let shown = pair.clone();
            pair.sort();
            if pair == ids {
                return shown;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the duplicate finder never suggested {ids:?}");
}

/// What the browser script needs: the people, their tokens and customers.
async fn seed(app: &TestApp) -> Value {
    let admin = app.admin_token().await;
    let agent: Value = expect_json(
        app.post(
            "/v1/users",
            &admin,
            &json!({"email": "asha@example.com", "name": "Asha Rao", "password": USER_PASSWORD,
                    "role": "agent", "team": "North"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let agent_token = app
        .login("asha@example.com", USER_PASSWORD)
        .await
        .access_token;
    let device: Value = expect_json(
        app.post(
            "/v1/devices",
            &agent_token,
            &json!({"name": "Pixel", "default_region": "SG"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let customer = |name: &str, phones: Value, emails: Value| json!({"name": name, "phones": phones, "emails": emails});
    let mut ids = Vec::new();
    for body in [
        customer(
            "Narendra Kumar",
            json!(["+6591234567"]),
            json!(["narendra@example.com"]),
        ),
        customer(
            "Priya Nair",
            json!(["+6581112222"]),
            json!(["priya@example.com"]),
        ),
        customer("Priya N", json!([]), json!(["priya.n@example.com"])),
    ] {
        let created: Value = expect_json(
            app.post("/v1/customers", &agent_token, &body).await,
            StatusCode::CREATED,
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    expect_json::<Value>(
        app.post(
            "/v1/engagements",
            &agent_token,
            &json!({"customer_id": ids[0], "channel": "sms", "direction": "outbound",
                    "body": "Hello Narendra, the viewing is at 5 pm"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // Two profiles the duplicate finder pairs (the same name, one company).
    let mut similar = Vec::new();
    for body in [
        json!({"name": "Tan Wei Ming", "emails": ["weiming@acme.com"]}),
        json!({"name": "Wei Ming Tan", "emails": ["wm.tan@acme.com"]}),
    ] {
        let created: Value = expect_json(
            app.post("/v1/customers", &agent_token, &body).await,
            StatusCode::CREATED,
        )
        .await;
        similar.push(created["id"].as_str().unwrap().to_string());
    }
    similar.sort();
    let pair = wait_for_suggestion(app, &agent_token, &similar).await;
    let screenshots =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    json!({
        "base": app.address,
        "chromium": chromium(),
        "screenshots": screenshots,
        "admin": {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "token": admin},
        "agent": {"email": "asha@example.com", "password": USER_PASSWORD, "id": agent["id"],
                  "token": agent_token, "device_token": device["token"],
                  "expired_token": expired(&agent_token, &app.jwt_secret())},
        "narendra": {"id": ids[0], "name": "Narendra Kumar"},
        "priya": {"id": ids[1], "name": "Priya Nair", "phone": "+6581112222"},
        "duplicate": {"id": ids[2], "email": "priya.n@example.com"},
        "stranger": {"name": "Walk-in Caller", "phone": "+6588887777"},
        "similar": {"pair": pair},
    })
}

#[tokio::test]
async fn a_salesperson_works_the_console_in_a_real_browser() {
    let app = spawn_app().await;
    let config = seed(&app).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.py");
    let mut browser = tokio::process::Command::new(playwright_python())
        .arg(script)
        .arg(config.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    for expected in [
        "log in",
        "search nare",
        "open customer",
        "live sms",
        "edit and filter",
        "call popup",
        "reload keeps the session",
        "unknown caller created",
        "expired token refreshed silently",
        "merge and undo",
        "mark shared",
        "dismiss duplicates",
        "wall board",
        "deactivated user logged out",
    ] {
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser reaches `{expected}` within 3 minutes"))
            .unwrap();
        assert_eq!(
            line.as_deref(),
            Some(format!("ok {expected}").as_str()),
            "the browser stopped before `{expected}` (its error is above)"
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(60), browser.wait())
        .await
        .expect("the browser exits")
        .unwrap();
    assert!(status.success());

    // What the browser did is in the store.
    let admin = app.admin_token().await;
    for who in ["priya", "duplicate"] {
        let id = config[who]["id"].as_str().unwrap();
        let customer: Value = expect_json(
            app.get(&format!("/v1/customers/{id}"), &admin).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            customer["status"], "active",
            "the merge was undone: {customer}"
        );
        assert_eq!(customer["id"], id);
    }
    let history: Value = expect_json(
        app.get(
            &format!(
                "/v1/customers/{}/history",
                config["priya"]["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let actions: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["merge", "undo"]);
    let agent: Value = expect_json(
        app.get(
            &format!("/v1/users/{}", config["agent"]["id"].as_str().unwrap()),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(agent["active"], false);
    let timeline: Value = expect_json(
        app.get(
            &format!(
                "/v1/customers/{}/engagements?channel=sms",
                config["narendra"]["id"].as_str().unwrap()
            ),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(timeline["items"].as_array().unwrap().len(), 2, "{timeline}");
    // The pair dismissed in the browser is no longer suggested.
    let dupes: Value = expect_json(app.get("/v1/duplicates", &admin).await, StatusCode::OK).await;
    assert!(
        dupes["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["customer_ids"] != config["similar"]["pair"]),
        "{dupes}"
    );
}
