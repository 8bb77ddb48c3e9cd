//! The console in a real browser: how long a salesperson waits.
//!
//! `cargo bench -p crm-api --bench console [-- --customers 20000 --rounds 200]`
//!
//! Starts crm-api in this process (embedded store, no Redis) with
//! `--customers` customers, then drives the console in headless Chromium
//! through the same Playwright script as `tests/console.rs`, in its bench
//! mode, logged in as an agent:
//! - keystroke to results: the search box holds all of a query but its last
//!   letter (with its results shown); the time from typing that letter to
//!   the results of the whole query on screen (debounce, one search, drawing);
//! - lookup to popup: the agent's phone asks caller-ID; the time from
//!   sending the lookup to the popup on screen (the lookup, the event through
//!   the live stream, drawing).
//!
//! Needs Chromium and the test virtualenv (`./scripts/test.sh` installs both).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops loudly on any failure

use std::path::PathBuf;
use std::time::Instant;

use crm_api::config::Config;
use crm_api::Application;
use futures::StreamExt;
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "correct horse battery staple";
const AGENT_PASSWORD: &str = "a long enough password";

const FIRST: [&str; 40] = [
    "Narendra", "Priya", "Ann", "Wei", "Siti", "Rahul", "Mei", "Arjun", "Nurul", "Kumar", "Li",
    "Aisha", "Daniel", "Grace", "Hafiz", "Jia", "Kavya", "Lakshmi", "Ming", "Nadia", "Omar",
    "Pooja", "Qing", "Ravi", "Sarah", "Tan", "Umar", "Vikram", "Wen", "Xin", "Yusof", "Zara",
    "Anand", "Bee", "Chandra", "Dewi", "Eng", "Farah", "Gopal", "Hui",
];
const LAST: [&str; 25] = [
    "Tan", "Lim", "Lee", "Ng", "Wong", "Singh", "Kumar", "Nair", "Rahman", "Ismail", "Chua", "Goh",
    "Ong", "Koh", "Teo", "Menon", "Pillai", "Iyer", "Abdullah", "Yeo", "Chan", "Ho", "Low", "Sim",
    "Chong",
];

fn arg(name: &str, default: usize) -> usize {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn send(client: &reqwest::Client, base: &str, token: &str, path: &str, body: Value) -> Value {
    let response = client
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

async fn login(client: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let tokens: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokens["access_token"].as_str().unwrap().to_string()
}

#[tokio::main]
async fn main() {
    let customers = arg("--customers", 20_000);
    let rounds = arg("--rounds", 200);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var("CRM_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../.venv"));
    let python = venv.join("bin/python");
    let chromium =
        std::env::var("CRM_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        python.exists() && PathBuf::from(&chromium).exists(),
        "needs Chromium and the test virtualenv: run ./scripts/test.sh once, which installs them"
    );

    let data = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(data.path().to_path_buf());
    config.admin_email = Some("admin@example.com".into());
    config.admin_password = Some(ADMIN_PASSWORD.into());
    let app = Application::build(config).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    state.projector.warmup().wait_ready().await;

    let client = reqwest::Client::new();
    let admin = login(&client, &base, "admin@example.com", ADMIN_PASSWORD).await;
    let agent = send(
        &client,
        &base,
        &admin,
        "/v1/users",
        json!({"email": "agent@example.com", "name": "Agent", "password": AGENT_PASSWORD, "role": "agent"}),
    )
    .await;
    let agent_token = login(&client, &base, "agent@example.com", AGENT_PASSWORD).await;
    let device = send(
        &client,
        &base,
        &agent_token,
        "/v1/devices",
        json!({"name": "Pixel", "default_region": "SG"}),
    )
    .await;

    let started = Instant::now();
    let created: Vec<(String, String)> = futures::stream::iter(0..customers)
        .map(|i| {
            let (client, base, token) = (&client, &base, &agent_token);
            async move {
                let name = format!(
                    "{} {}",
                    FIRST[i % FIRST.len()],
                    LAST[(i / FIRST.len()) % LAST.len()]
                );
                let phone = format!("+659{:07}", i);
                let body = json!({"name": name, "phones": [phone], "emails": [format!("c{i}@example.com")]});
                let customer = send(client, base, token, "/v1/customers", body).await;
                (phone, customer["id"].as_str().unwrap().to_string())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    eprintln!(
        "{customers} customers written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Measure on a quiet server: every event of the set-up relayed.
    while state.crm.pending_events().await.unwrap() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Prefixes a salesperson types: first names, and first name plus the
    // start of a last name.
    let queries: Vec<String> = FIRST
        .iter()
        .zip(LAST.iter().cycle())
        .flat_map(|(f, l)| {
            [
                f.to_lowercase(),
                format!("{} {}", f.to_lowercase(), &l[..2].to_lowercase()),
            ]
        })
        .collect();
    // Caller-ID must know a number before it can ring: ask for every one,
    // twice for those not found the first time (the index may lag the
    // writes), and ring only numbers that are found. Numbers still not
    // found are reported: they should be none.
    let mut missing = created.clone();
    for pass in 1..=2 {
        let found: Vec<bool> = futures::stream::iter(missing.iter())
            .map(|(phone, id)| {
                let (client, base, token) = (&client, &base, &agent_token);
                async move {
                    let answer: Value = client
                        .get(format!(
                            "{base}/v1/lookup/phone/{}",
                            phone.replace('+', "%2B")
                        ))
                        .bearer_auth(token)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    answer["matches"][0]["id"] == id.as_str()
                }
            })
            .buffered(8)
            .collect()
            .await;
        missing = missing
            .into_iter()
            .zip(found)
            .filter(|(_, found)| !found)
            .map(|(customer, _)| customer)
            .collect();
        eprintln!(
            "caller-ID check {pass}: {} of {customers} numbers not found",
            missing.len()
        );
    }
    if !missing.is_empty() {
        eprintln!(
            "not found by caller-ID, e.g.: {:?}",
            &missing[..missing.len().min(5)]
        );
    }
    let numbers: Vec<(String, String)> = created
        .into_iter()
        .filter(|c| !missing.contains(c))
        .step_by((customers / 50).max(1))
        .collect();
    let config = json!({
        "base": base,
        "chromium": chromium,
        "screenshots": std::env::temp_dir(),
        "agent": {"email": "agent@example.com", "password": AGENT_PASSWORD, "id": agent["id"],
                  "token": agent_token, "device_token": device["token"]},
        "bench": {"rounds": rounds, "queries": queries, "numbers": numbers},
    });
    let output = tokio::process::Command::new(python)
        .arg(root.join("tests/console/console.py"))
        .arg(config.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the browser failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What the page logged (streams closed or interrupted), if anything.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("console, {customers} customers, {rounds} rounds each (ms):");
    println!("| | n | p50 | p95 | max |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (label, key) in [
        ("keystroke to results", "keystroke_to_results_ms"),
        ("caller-ID lookup to popup", "lookup_to_popup_ms"),
    ] {
        let s = &summary[key];
        println!(
            "| {label} | {} | {} | {} | {} |",
            s["n"], s["p50"], s["p95"], s["max"]
        );
    }
}
