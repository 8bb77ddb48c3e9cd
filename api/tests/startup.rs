//! Start-up in embedded mode: crm-api answers at once after a restart while
//! its memory index loads from the store beside it. The load is held by the
//! test (`StartOptions::hold_index_load`) after it has read every customer,
//! so that what answers during the warm-up, and writes made during it, are
//! checked deterministically.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::time::{Duration, Instant};

use crm_api::config::Config;
use crm_api::{Application, StartOptions};
use crm_indexer::SearchIndex;
use crm_models::CustomerId;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use common::{ADMIN_EMAIL, ADMIN_PASSWORD};

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_data_dir(dir.to_path_buf());
    config.admin_email = Some(ADMIN_EMAIL.into());
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.jwt_secret = None;
    config
}

async fn send(req: reqwest::RequestBuilder, status: StatusCode) -> Value {
    let response = req.send().await.unwrap();
    let actual = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn login(client: &Client, addr: &str) -> String {
    let body = send(
        client
            .post(format!("{addr}/v1/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})),
        StatusCode::OK,
    )
    .await;
    body["access_token"].as_str().unwrap().to_string()
}

async fn create(client: &Client, addr: &str, token: &str, body: Value) -> String {
    let created = send(
        client
            .post(format!("{addr}/v1/customers"))
            .bearer_auth(token)
            .json(&body),
        StatusCode::CREATED,
    )
    .await;
    created["id"].as_str().unwrap().to_string()
}

/// Waits until the index (what the worker has written into it) holds the
/// customer with this name: the worker's progress is observable only there.
async fn indexed_as(index: &dyn SearchIndex, id: &str, name: &str) {
    let id: CustomerId = id.parse().unwrap();
    let started = Instant::now();
    loop {
        let summary = index.summary(id).await.unwrap();
        if summary.as_ref().and_then(|s| s.name.as_deref()) == Some(name) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the worker never indexed {id} as {name}: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hit_ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

// On one thread, as `data_survives_a_restart`: the first server's
// connections are gone when it returns, so the second can open the store.
#[tokio::test]
async fn a_restart_answers_at_once_and_search_follows_when_the_index_is_loaded() {
    restart(Snapshot::Kept).await;
}

/// The same restart when the snapshot written at the last stop is gone (a
/// first start after an upgrade from a version without one, a lost file):
/// the load reads every customer from the store.
#[tokio::test]
async fn a_restart_without_a_snapshot_loads_from_the_store() {
    restart(Snapshot::Lost).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snapshot {
    Kept,
    Lost,
}

async fn restart(snapshot: Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();

    // First run: customers in the store.
    let app = Application::build(config(dir.path())).await.unwrap();
    let addr = format!("http://{}", app.local_addr());
    let first = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let token = login(&client, &addr).await;
    let ann = create(
        &client,
        &addr,
        &token,
        json!({"name": "Ann Tan", "phones": ["+65 8122 6418"], "emails": ["ann@example.com"]}),
    )
    .await;
    let bob = create(
        &client,
        &addr,
        &token,
        json!({"name": "Bob Lim", "phones": ["+65 9123 4567"]}),
    )
    .await;
    let weiming = create(
        &client,
        &addr,
        &token,
        json!({"name": "Tan Wei Ming", "emails": ["weiming@acme.com"]}),
    )
    .await;
    // What the index holds at the stop is what the snapshot holds (a
    // customer it missed would be read from the store at the restart).
    indexed_as(first.index.as_ref(), &weiming, "Tan Wei Ming").await;
    indexed_as(first.index.as_ref(), &bob, "Bob Lim").await;
    indexed_as(first.index.as_ref(), &ann, "Ann Tan").await;
    drop(first);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    // The stop wrote the index's snapshot beside the store.
    let snapshot_file = dir
        .path()
        .join(crm_indexer::memory::snapshot::SNAPSHOT_FILE);
    let written = crm_indexer::memory::snapshot::Snapshot::read(&snapshot_file)
        .unwrap()
        .unwrap();
    assert_eq!(written.len(), 3, "every customer");
    if snapshot == Snapshot::Lost {
        std::fs::remove_file(&snapshot_file).unwrap();
    }

    // Restart with the index's load held after it has read every customer.
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let options = StartOptions {
        hold_index_load: Some(Box::pin(async move {
            let _ = held.await;
        })),
    };
    let app = Application::build_with(config(dir.path()), options)
        .await
        .unwrap();
    let addr = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    assert!(!state.projector.index_ready());

    let health = send(client.get(format!("{addr}/healthz")), StatusCode::OK).await;
    assert_eq!(health["status"], "ok");
    let ready = send(client.get(format!("{addr}/readyz")), StatusCode::OK).await;
    assert_eq!(ready["status"], "warming_up", "{ready}");
    assert_eq!(ready["search"], "warming_up", "{ready}");
    // Held after every customer was read (or checked against the
    // snapshot); progress is counted a page at a time, so it says 0 or 3.
    let loaded = ready["search_customers_loaded"].as_u64().unwrap();
    assert!(loaded == 0 || loaded == 3, "{ready}");

    // Logins, reads and caller-ID answer from the store.
    let token = login(&client, &addr).await;
    let read = send(
        client
            .get(format!("{addr}/v1/customers/{ann}"))
            .bearer_auth(&token),
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["name"], "Ann Tan");
    let caller = send(
        client
            .get(format!("{addr}/v1/lookup/phone/+6581226418"))
            .bearer_auth(&token),
        StatusCode::OK,
    )
    .await;
    let matches = caller["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{caller}");
    assert_eq!(matches[0]["id"], ann.as_str());
    assert_eq!(matches[0]["name"], "Ann Tan");
    let nobody = send(
        client
            .get(format!("{addr}/v1/lookup/phone/+6590000001"))
            .bearer_auth(&token),
        StatusCode::OK,
    )
    .await;
    assert_eq!(nobody["matches"], json!([]));

    // Search waits for the index.
    let response = client
        .get(format!("{addr}/v1/search?q=Ann"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["retry-after"].to_str().unwrap(),
        crm_models::problem::UNAVAILABLE_RETRY_AFTER_S.to_string()
    );
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");
    assert!(
        problem["detail"].as_str().unwrap().contains("warming up"),
        "{problem}"
    );

    // Writes during the warm-up: a new customer, and a rename of one the
    // load has already read (its older document must not win).
    let carla = create(
        &client,
        &addr,
        &token,
        json!({"name": "Carla Wong", "phones": ["+65 8765 4321"]}),
    )
    .await;
    send(
        client
            .patch(format!("{addr}/v1/customers/{bob}"))
            .bearer_auth(&token)
            .json(&json!({"name": "Bob Lee"})),
        StatusCode::OK,
    )
    .await;
    // A likely duplicate of a customer the index has not loaded yet: its
    // check waits for the load.
    let wm_tan = create(
        &client,
        &addr,
        &token,
        json!({"name": "Wei Ming Tan", "emails": ["wm.tan@acme.com"]}),
    )
    .await;
    indexed_as(state.index.as_ref(), &wm_tan, "Wei Ming Tan").await;
    indexed_as(state.index.as_ref(), &carla, "Carla Wong").await;
    indexed_as(state.index.as_ref(), &bob, "Bob Lee").await;
    let caller = send(
        client
            .get(format!("{addr}/v1/lookup/phone/+6587654321"))
            .bearer_auth(&token),
        StatusCode::OK,
    )
    .await;
    assert_eq!(caller["matches"][0]["id"], carla.as_str(), "{caller}");

    // Released: the load switches in, and search answers.
    release.send(()).unwrap();
    state.projector.warmup().wait_ready().await;
    let ready = send(client.get(format!("{addr}/readyz")), StatusCode::OK).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["search"], "ready", "{ready}");

    for (q, expected) in [
        ("Ann", vec![ann.clone()]),
        ("ann@example.com", vec![ann.clone()]),
        ("Carla", vec![carla.clone()]),
        ("Bob Lee", vec![bob.clone()]),
        ("+65 9123 4567", vec![bob.clone()]),
    ] {
        let found = send(
            client
                .get(format!("{addr}/v1/search"))
                .query(&[("q", q)])
                .bearer_auth(&token),
            StatusCode::OK,
        )
        .await;
        assert_eq!(hit_ids(&found), expected, "{q}: {found}");
    }
    let old_name = send(
        client
            .get(format!("{addr}/v1/search?name=Lim"))
            .bearer_auth(&token),
        StatusCode::OK,
    )
    .await;
    assert!(!hit_ids(&old_name).contains(&bob), "{old_name}");
    let verify = state.projector.verify().await.unwrap();
    assert!(verify.is_clean(), "{verify:?}");
    assert_eq!(verify.expected, 5);

    // The duplicate check deferred during the warm-up has run.
    let started = Instant::now();
    let dupes = loop {
        let dupes = send(
            client
                .get(format!("{addr}/v1/duplicates"))
                .bearer_auth(&token),
            StatusCode::OK,
        )
        .await;
        if !dupes["items"].as_array().unwrap().is_empty() {
            break dupes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no suggestion appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let items = dupes["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{dupes}");
    assert_eq!(items[0]["reason"], "similar_profile", "{dupes}");
    let mut pair: Vec<&str> = items[0]["customer_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    pair.sort_unstable();
    let mut expected = vec![weiming.as_str(), wm_tan.as_str()];
    expected.sort_unstable();
    assert_eq!(pair, expected, "{dupes}");
}
