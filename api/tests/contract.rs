//! The spec says what the server does: schemathesis (`--checks all`) runs
//! against `openapi.yaml` and the real application, and must report no
//! failure. Staff routes run with an admin's token, the mobile routes with a
//! device token. The number of examples per operation is bounded (and the seed
//! fixed), so the run takes a minute or less; `CRM_TEST_SCHEMATHESIS_EXAMPLES`
//! raises it for a deeper local run.
//!
//! schemathesis comes from the test virtualenv that `./scripts/test.sh`
//! installs (`CRM_TEST_VENV`), or from `PATH`. Its settings, and why each
//! is what it is, are in `api/tests/schemathesis.toml`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{expect_json, spawn_app_with, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn schemathesis() -> PathBuf {
    if let Ok(venv) = std::env::var("CRM_TEST_VENV") {
        let path = PathBuf::from(venv).join("bin").join("schemathesis");
        if path.exists() {
            return path;
        }
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("schemathesis"))
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/schemathesis");
        assert!(
            local.exists(),
            "schemathesis is not installed: run the README's test command, `./scripts/test.sh`, \
             which installs it into ./.venv"
        );
        local
    })
}

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

async fn run_schemathesis(app: &TestApp, token: &str, paths: &[&str]) -> (bool, String) {
    let examples = std::env::var("CRM_TEST_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let report = tempfile::tempdir().expect("a report directory");
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .arg("--config-file")
        .arg(repo_file("tests/schemathesis.toml"))
        .arg("run")
        .arg(repo_file("../openapi.yaml"))
        .args(["--url", &app.address])
        .args(["--checks", "all"])
        .args(["--max-examples", &examples])
        .args(["--seed", "20261207"])
        .args(["--workers", "2"])
        .args(["--generation-database", "none"])
        .args(["--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    for p in paths {
        command.args(p.split(' '));
    }
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis finishes within 10 minutes")
        .expect("schemathesis starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// [`run_schemathesis`], once more when the run failed only because
/// schemathesis itself crashed (its coverage phase has raised a Python
/// `SystemError` from inside the AST constructor now and then): a crash of
/// the tool is not a finding about the API, but a second crash fails the test.
async fn run_checked(app: &TestApp, token: &str, paths: &[&str]) -> (bool, String) {
    let (ok, text) = run_schemathesis(app, token, paths).await;
    if ok || !tool_crashed_only(&text) {
        return (ok, text);
    }
    let (ok, again) = run_schemathesis(app, token, paths).await;
    (
        ok,
        format!("{text}\n--- run again after a crash of schemathesis ---\n{again}"),
    )
}

/// The run reports runtime errors of schemathesis and no failed check.
fn tool_crashed_only(text: &str) -> bool {
    text.contains("Runtime Error") && !text.contains("FAILURES") && !text.contains('\u{274c}')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_matches_the_server() {
    let app = spawn_app_with(|config| config.default_region = Some("SG".into())).await;
    let admin = app.admin_token().await;
    // Something to find, so that reads reach past "not found".
    expect_json::<Value>(
        app.post(
            "/v1/customers",
            &admin,
            &json!({"name": "Ann Tan", "phones": ["+65 8122 6418"], "emails": ["ann.tan@example.com"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let device: Value = expect_json(
        app.post(
            "/v1/devices",
            &admin,
            &json!({"name": "test phone", "default_region": "SG"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let device_token = device["token"]
        .as_str()
        .expect("a device token")
        .to_string();

    // `/v1/stream` never ends by itself (tests/events.rs checks it).
    let (staff_ok, staff) = run_checked(
        &app,
        &admin,
        &["--exclude-path-regex ^/v1/(mobile/|stream$)"],
    )
    .await;
    let (mobile_ok, mobile) =
        run_checked(&app, &device_token, &["--include-path-regex ^/v1/mobile/"]).await;
    assert!(
        staff_ok,
        "schemathesis found failures on the staff routes:\n{staff}"
    );
    assert!(
        mobile_ok,
        "schemathesis found failures on the mobile routes:\n{mobile}"
    );
    // It did test something: every operation of each part ran.
    for text in [&staff, &mobile] {
        assert!(
            text.contains("Tested:"),
            "schemathesis printed no summary:\n{text}"
        );
    }
}
