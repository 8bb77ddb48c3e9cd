//! SIGKILL of crm-api in the middle of an import: started again, it resumes
//! the import from its last committed chunk and ends with the same result
//! as an import that ran without interruption (the counts of created,
//! linked and merged rows, the rejected rows and the customers). The real
//! `crm-api` binary runs as a child process, configured by environment, on
//! the embedded store and on MongoDB.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "common/processes.rs"]
mod processes;

use std::collections::BTreeSet;
use std::time::Duration;

use processes::ApiProcess as Api;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN_EMAIL: &str = "admin@example.com";
const ADMIN_PASSWORD: &str = "correct horse battery staple";
const JWT_SECRET: &str = "import-crash-test-secret-of-at-least-32-bytes";
/// Rows of the file: fewer on the test MongoDB server (a Python server on
/// which each merge's transaction takes about a second), two chunks.
const ROWS: usize = 30_000;
const MONGODB_ROWS: usize = 2_000;

/// Rows of new people, people seen before in the file (another way of
/// writing the number, the email in capitals), rows that name two people
/// (merged), bad rows and blocked ones.
fn file(rows: usize) -> String {
    let mut csv = String::from("name,Mobile,Email\n");
    for i in 1..=rows {
        let line = match i % 10 {
            // The number of the person 18 rows back and the email of the
            // one 8 rows back (two new people, named together by no other
            // row): the two are merged.
            9 if i % 20 == 19 => format!(
                "Merge {i},+65{},person{}@acme.io",
                90_000_000 + i - 18,
                i - 8
            ),
            // Someone from up to 1,500 rows back: within the chunk or an
            // earlier one.
            3 | 7 => {
                // A row i' < i with i' % 10 == 1: always a new person's.
                let decade = i - i % 10 + 1;
                let back = ((i * 7919) % 150 + 1) * 10;
                let j = if decade > back { decade - back } else { decade };
                let n = 90_000_000 + j;
                format!(
                    "Again {j},{} {:04},PERSON{j}@ACME.IO",
                    n / 10_000,
                    n % 10_000
                )
            }
            5 => format!("Bad {i},no number {i},"),
            9 if i % 20 == 9 => "Blocked,+65 8888 8888,".to_string(),
            _ => format!("Person {i},+65{},person{i}@acme.io", 90_000_000 + i),
        };
        csv.push_str(&line);
        csv.push('\n');
    }
    csv
}

/// Where a crm-api keeps its data: the embedded store, or a database of
/// its own on the test MongoDB server.
#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    MongoDb,
}

fn api(dir: &std::path::Path, backend: Backend) -> Api {
    let mut env = vec![
        ("CRM_DATA_DIR".into(), dir.display().to_string()),
        ("CRM_ADMIN_EMAIL".into(), ADMIN_EMAIL.into()),
        ("CRM_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ("CRM_DEFAULT_REGION".into(), "SG".into()),
        ("CRM_LOG".into(), "info".into()),
    ];
    if let Backend::MongoDb = backend {
        env.extend([
            ("CRM_MONGODB_URI".into(), mongo_server::mongodb_uri()),
            (
                "CRM_MONGODB_DATABASE".into(),
                format!("crm_import_crash_{}", uuid::Uuid::new_v4().simple()),
            ),
            ("CRM_JWT_SECRET".into(), JWT_SECRET.into()),
        ]);
    }
    Api::new(env)
}

async fn login(client: &reqwest::Client, api: &Api) -> String {
    let r = client
        .post(api.url("/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(client: &reqwest::Client, api: &Api, token: &str, id: &str) -> Value {
    let r = client
        .get(api.url(&format!("/v1/imports/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn post(client: &reqwest::Client, api: &Api, token: &str, rows: usize) -> String {
    let r = client
        .post(api.url("/v1/imports?kind=customers&mapping=%7B%22Mobile%22%3A%22phones%22%7D"))
        .bearer_auth(token)
        .header("content-type", "text/csv")
        .body(file(rows))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls until `done` holds for the import's status.
async fn until(
    client: &reqwest::Client,
    api: &Api,
    token: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let v = status(client, api, token, id).await;
            if done(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the import gets there")
}

/// What an import left: its counts, its rejected rows, and the customers.
async fn outcome(
    client: &reqwest::Client,
    api: &Api,
    token: &str,
    id: &str,
) -> (Value, String, BTreeSet<String>) {
    let v = status(client, api, token, id).await;
    let counts = json!({
        "state": v["state"], "rows_read": v["rows_read"], "created": v["created"],
        "linked": v["linked"], "merged": v["merged"], "rejected": v["rejected"],
    });
    let rejected = client
        .get(api.url(&format!("/v1/imports/{id}/rejected")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let export = client
        .get(api.url("/v1/export/customers?format=csv"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(export.as_bytes());
    let customers = reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            // name, status, phones, emails, social: not ids or times.
            format!("{}|{}|{}|{}|{}", &r[1], &r[2], &r[3], &r[4], &r[5])
        })
        .collect();
    (counts, rejected, customers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_half_way_resumes_to_the_same_result_on_the_embedded_store() {
    killed_half_way(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_half_way_resumes_to_the_same_result_on_mongodb() {
    killed_half_way(Backend::MongoDb).await;
}

async fn killed_half_way(backend: Backend) {
    let client = reqwest::Client::new();
    let rows = match backend {
        Backend::Embedded => ROWS,
        Backend::MongoDb => MONGODB_ROWS,
    };

    // Without interruption.
    let dir = tempfile::tempdir().unwrap();
    let mut whole = api(dir.path(), backend);
    whole.start(&client).await;
    let token = login(&client, &whole).await;
    let id = post(&client, &whole, &token, rows).await;
    until(&client, &whole, &token, &id, |v| v["state"] == "completed").await;
    let expected = outcome(&client, &whole, &token, &id).await;
    // Of every 20 rows: 3 rejected, 4 linked, 1 merged, 12 created.
    assert_eq!(expected.0["rows_read"], rows);
    assert_eq!(expected.0["rejected"], rows / 20 * 3);
    assert_eq!(expected.0["linked"], rows / 20 * 4);
    assert_eq!(expected.0["merged"], rows / 20);
    assert_eq!(expected.0["created"], rows / 20 * 12);
    whole.kill();

    // Killed once some chunks are committed, and started again.
    let dir = tempfile::tempdir().unwrap();
    let mut killed = api(dir.path(), backend);
    killed.start(&client).await;
    let token = login(&client, &killed).await;
    let id = post(&client, &killed, &token, rows).await;
    let at_kill = until(&client, &killed, &token, &id, |v| {
        v["rows_read"].as_u64().unwrap_or(0) >= rows as u64 / 6
    })
    .await;
    killed.kill();
    assert_eq!(
        at_kill["state"], "running",
        "the import must still be running when crm-api is killed: {at_kill}"
    );
    assert!(at_kill["rows_read"].as_u64().unwrap() < rows as u64);
    killed.start(&client).await;
    let token = login(&client, &killed).await;
    until(&client, &killed, &token, &id, |v| v["state"] == "completed").await;
    let resumed = outcome(&client, &killed, &token, &id).await;
    assert_eq!(resumed.0, expected.0);
    assert_eq!(resumed.1, expected.1);
    assert_eq!(resumed.2.len(), expected.2.len());
    assert_eq!(resumed.2, expected.2);
    // The spooled file is gone once the import is done.
    assert_eq!(
        std::fs::read_dir(dir.path().join("imports"))
            .unwrap()
            .count(),
        0
    );
}

/// `crm-api import` killed as soon as it has begun, then run again with the
/// `--resume <id>` it printed: it goes on and ends with the counts of an
/// uninterrupted run; resumed once more, it says the import is done.
#[test]
fn the_import_command_killed_resumes_with_the_id_it_printed() {
    use std::io::BufRead;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, file(ROWS)).unwrap();
    let data = dir.path().join("data");
    let api = api(&data, Backend::Embedded);
    let import = |extra: &[&str]| {
        let mut cmd = api.command(std::path::Path::new(env!("CARGO_BIN_EXE_crm-api")));
        // Logs go to standard output, beside the summary: errors only.
        cmd.env("CRM_LOG", "error")
            .arg("import")
            .arg(&csv)
            .args([
                "--kind",
                "customers",
                "--mapping",
                r#"{"Mobile": "phones"}"#,
            ])
            .args(extra);
        cmd
    };

    let mut first = import(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    processes::watch(first.id());
    let stderr = std::io::BufReader::new(first.stderr.take().unwrap());
    let hint = stderr
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("import ") && l.contains("--resume"))
        .expect("the command prints the import's id first");
    first.kill().unwrap();
    first.wait().unwrap();
    let id = hint
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(';')
        .to_string();
    assert!(hint.ends_with(&format!("--resume {id}")), "{hint}");

    let resumed = import(&["--resume", &id]).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let summary: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(summary["id"], json!(id));
    assert_eq!(summary["state"], "completed");
    assert_eq!(
        [
            &summary["rows_read"],
            &summary["rejected"],
            &summary["linked"],
            &summary["merged"],
            &summary["created"]
        ],
        [
            &json!(ROWS),
            &json!(ROWS / 20 * 3),
            &json!(ROWS / 20 * 4),
            &json!(ROWS / 20),
            &json!(ROWS / 20 * 12)
        ]
    );

    let again = import(&["--resume", &id]).output().unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is already completed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
