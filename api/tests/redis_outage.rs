//! Redis goes away: writes still succeed, their events wait in the store's
//! outbox, `/readyz` says the index is degraded, and when Redis is back the
//! events are delivered and the customer becomes searchable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{expect_json, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A redis-server of this test's own, so that it can be stopped and started.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed: run the README's test command ./scripts/test.sh");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_redis_outage_and_are_indexed_when_it_returns() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = OwnRedis::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(move |c| c.redis_url = Some(url)).await;
    let token = app.admin_token().await;

    redis.stop();
    let created: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Outage Olsen", "emails": ["olsen@example.com"], "phones": ["+6581226418"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["index_reachable"], false, "{ready}");
    assert!(ready["outbox"].as_u64().unwrap() >= 1, "{ready}");
    // The store still answers reads.
    let id = created["id"].as_str().unwrap();
    expect_json::<Value>(
        app.get(&format!("/v1/customers/{id}"), &token).await,
        StatusCode::OK,
    )
    .await;
    // Caller-ID answers from the store, however the number is typed (each
    // index read gives up after a second). These reads must not keep the
    // index from recovering below.
    for typed in ["%2B65%208122%206418", "8122%206418?region=SG"] {
        let found: Value = expect_json(
            app.get(&format!("/v1/lookup/phone/{typed}"), &token).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(found["matches"][0]["id"], id, "{typed}: {found}");
        assert_eq!(found["matches"][0]["summary"]["name"], "Outage Olsen");
    }

    let _redis = OwnRedis::start(redis.port);
    let started = Instant::now();
    loop {
        let r = app.get("/v1/search?q=olsen", &token).await;
        if r.status() == StatusCode::OK {
            let body: Value = r.json().await.unwrap();
            if body["items"].as_array().is_some_and(|i| !i.is_empty()) {
                assert_eq!(body["items"][0]["id"], id);
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the kept event was never indexed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["outbox"], 0, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
}
