//! Live push in a real browser: a desktop's `EventSource`, opened with a
//! single-use ticket (browsers cannot set headers on it), receives
//! `call.incoming` with the popup after the user's phone asks caller-ID.
//!
//! Runs Debian's `chromium` headless through Playwright for Python from the
//! test virtualenv (`CRM_TEST_VENV`); `./scripts/test.sh` installs both.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{chromium, expect_json, playwright_python, spawn_app};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The browser's next line on stdout.
async fn next<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the browser answers within a minute")
        .unwrap()
        .expect("the browser printed a line")
}

#[tokio::test]
async fn an_event_source_with_a_ticket_receives_the_incoming_call_popup() {
    let app = spawn_app().await;
    let agent = app.agent_token("agent@example.com").await;
    let me: Value = expect_json(app.get("/v1/me", &agent).await, StatusCode::OK).await;
    let ann: Value = expect_json(
        app.post(
            "/v1/customers",
            &agent,
            &json!({"name": "Ann Tan", "phones": ["+65 8122 6418"], "emails": ["ann@example.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
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
    let ticket: Value = expect_json(
        app.post("/v1/stream/tickets", &agent, &json!({})).await,
        StatusCode::OK,
    )
    .await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/sse_ticket.py");
    let mut browser = tokio::process::Command::new(playwright_python())
        .arg(script)
        .arg(&app.address)
        .arg(ticket["ticket"].as_str().unwrap())
        .arg(chromium())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    assert_eq!(next(&mut lines).await, "open");

    // The phone rings: its app asks who is calling.
    let popup: Value = expect_json(
        app.get("/v1/mobile/caller-id?number=%2B6581226418", &device)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(popup["customers"][0]["id"], ann["id"]);

    let call: Value = serde_json::from_str(&next(&mut lines).await).unwrap();
    // The SSE `data:` is the envelope, the popup in its `data`.
    let envelope = &call["data"];
    assert_eq!(envelope["id"], call["id"], "{call}");
    assert_eq!(envelope["type"], "call.incoming", "{call}");
    assert_eq!(envelope["customer_id"], ann["id"], "{call}");
    let data = &envelope["data"];
    assert_eq!(data["customer_id"], ann["id"], "{call}");
    assert_eq!(data["user_id"], me["id"], "{call}");
    assert_eq!(data["device_id"], enrolled["id"], "{call}");
    assert_eq!(data["customer"]["name"], "Ann Tan", "{call}");
    assert_eq!(data["customer"]["main_phone"], "+6581226418", "{call}");
    assert_eq!(data["customer"]["main_email"], "ann@example.com", "{call}");
    let status = tokio::time::timeout(Duration::from_secs(30), browser.wait())
        .await
        .expect("the browser exits")
        .unwrap();
    assert!(status.success());

    // The ticket was single use.
    let again = app
        .client
        .get(app.url(&format!(
            "/v1/stream?ticket={}",
            ticket["ticket"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
}
