//! Webhooks: the routes, and delivery to a receiver of the test's own (an
//! axum server on a free port that records every request and answers as the
//! test tells it). Retry schedules are shrunk to milliseconds; every wait
//! is for something the receiver or the store shows, with a bound.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "common/processes.rs"]
mod processes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use common::{expect_json, expect_problem, spawn_app_with, TestApp};
use crm_api::webhooks::signing;
use parking_lot::Mutex;
use processes::ApiProcess;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// How long any wait in these tests may take.
const BOUND: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
    /// What the receiver answered.
    answered: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the receiver answers to the n-th request (0-based) for one
/// `webhook-id` on a path: a status and headers; `None` holds the request
/// open until the test ends (a stalled endpoint).
type Answer = Box<dyn Fn(&str, usize) -> Option<(u16, Vec<(&'static str, String)>)> + Send + Sync>;

struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    answer: Mutex<Answer>,
    seen: Notify,
    /// Requests that arrived, answered or held.
    arrived: std::sync::atomic::AtomicUsize,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Starts a receiver that answers 200 to everything.
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState {
            requests: Mutex::new(Vec::new()),
            answer: Mutex::new(Box::new(|_, _| Some((200, vec![])))),
            seen: Notify::new(),
            arrived: std::sync::atomic::AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, state }
    }

    fn answer(
        &self,
        answer: impl Fn(&str, usize) -> Option<(u16, Vec<(&'static str, String)>)>
            + Send
            + Sync
            + 'static,
    ) {
        *self.state.answer.lock() = Box::new(answer);
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().clone()
    }

    /// Waits until `done` holds for the requests so far.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + BOUND;
        loop {
            let seen = self.state.seen.notified();
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the receiver did not see {what} within {BOUND:?}; it got {} requests: {:?}",
                requests.len(),
                requests
                    .iter()
                    .map(|r| (&r.path, &r.id, r.answered))
                    .collect::<Vec<_>>()
            );
            let _ = tokio::time::timeout(left, seen).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let id = header("webhook-id");
    let path = uri.path().to_string();
    let answer = {
        let requests = state.requests.lock();
        let n = requests
            .iter()
            .filter(|r| r.id == id && r.path == path)
            .count();
        (state.answer.lock())(&path, n)
    };
    state
        .arrived
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state.seen.notify_waiters();
    let Some((status, extra)) = answer else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    state.requests.lock().push(Received {
        at: Instant::now(),
        path,
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: body.to_vec(),
        answered: status,
    });
    state.seen.notify_waiters();
    let mut response = AxumStatus::from_u16(status).unwrap().into_response();
    for (k, v) in extra {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

/// An app that may post to loopback, retrying quickly.
async fn app_with_schedule(schedule: &str) -> TestApp {
    let schedule = schedule.to_string();
    spawn_app_with(move |c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_schedule = schedule.parse().unwrap();
        c.webhooks.timeout = "5s".parse().unwrap();
    })
    .await
}

/// Registers an endpoint; returns `(id, secret)`.
async fn create_webhook(app: &TestApp, url: &str, types: &[&str]) -> (String, String) {
    let admin = app.admin_token().await;
    let created: Value = expect_json(
        app.post(
            "/v1/webhooks",
            &admin,
            &json!({ "url": url, "types": types }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    (
        created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    )
}

/// Creates a customer; returns its id.
async fn create_customer(app: &TestApp, n: usize) -> String {
    let admin = app.admin_token().await;
    let c: Value = expect_json(
        app.post(
            "/v1/customers",
            &admin,
            &json!({ "name": format!("Customer {n}"), "emails": [format!("c{n}@example.com")] }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    c["id"].as_str().unwrap().to_string()
}

/// The endpoint's deliveries (first page).
async fn deliveries(app: &TestApp, webhook: &str) -> Vec<Value> {
    let admin = app.admin_token().await;
    let page: Value = expect_json(
        app.get(
            &format!("/v1/webhooks/{webhook}/deliveries?limit=500"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    page["items"].as_array().unwrap().clone()
}

/// Waits until the endpoint's deliveries satisfy `done` (polling the API).
async fn wait_deliveries(
    app: &TestApp,
    webhook: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + BOUND;
    loop {
        let items = deliveries(app, webhook).await;
        if done(&items) {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries never became {what}: {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check_signature(r: &Received, secret: &str) {
    let ts: i64 = r.timestamp.parse().unwrap();
    assert!(
        signing::verify(secret, &r.id, ts, &r.body, &r.signature),
        "bad signature {:?}",
        r.signature
    );
}

/// Waits until the receiver acknowledged (200) a delivery about each of
/// `customers`; returns every request it saw.
async fn every_customer_acked(
    receiver: &Receiver,
    what: &str,
    customers: &BTreeSet<String>,
) -> Vec<Received> {
    receiver
        .wait_for(what, |rs| {
            let acked: BTreeSet<String> = rs
                .iter()
                .filter(|r| r.answered == 200)
                .map(customer_of)
                .collect();
            &acked == customers
        })
        .await
}

fn customer_of(r: &Received) -> String {
    r.json()["data"]["customer_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Each customer's event was sent under one `webhook-id`, whatever the attempts.
fn one_id_per_customer(requests: &[Received]) {
    let mut ids: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in requests {
        ids.entry(customer_of(r)).or_default().insert(r.id.clone());
    }
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
}

#[tokio::test]
async fn endpoints_are_admin_only_and_their_secret_is_shown_once() {
    let app = app_with_schedule("1s").await;
    let admin = app.admin_token().await;
    let created: Value = expect_json(
        app.post(
            "/v1/webhooks",
            &admin,
            &json!({"url": "https://example.com/hooks", "types": ["customer.created", "customer.created"], "description": "CRM sync"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 6 + 32,
        "{secret}"
    );
    assert_eq!(created["types"], json!(["customer.created"]));
    assert_eq!(created["enabled"], true);

    // Lists and reads never show the secret again.
    let list: Value = expect_json(app.get("/v1/webhooks", &admin).await, StatusCode::OK).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret));
    assert!(list["items"][0].get("secret").is_none());
    let one: Value = expect_json(
        app.get(&format!("/v1/webhooks/{id}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(one["description"], "CRM sync");
    assert!(!one.to_string().contains("whsec_"));

    // An unknown type is named.
    let problem = expect_problem(
        app.post(
            "/v1/webhooks",
            &admin,
            &json!({"url": "https://example.com/x", "types": ["customer.created", "customer.teleported"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "types[1]");
    assert!(problem["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("customer.teleported"));

    // Patch: types, disable, enable.
    let patched: Value = expect_json(
        app.patch(
            &format!("/v1/webhooks/{id}"),
            &admin,
            &json!({"types": [], "enabled": false, "description": ""}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["types"], json!([]));
    assert_eq!(patched["enabled"], false);
    assert!(patched.get("description").is_none());

    // Rotation gives a new secret, shown once.
    let rotated: Value = expect_json(
        app.post(
            &format!("/v1/webhooks/{id}/secret/rotate"),
            &admin,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(rotated["secret"], created["secret"]);

    // Agents and keys may do none of it.
    let agent = app.agent_token("agent@example.com").await;
    let key = app.service_key("website").await;
    for token in [&agent, &key] {
        expect_problem(
            app.get("/v1/webhooks", token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        expect_problem(
            app.post(
                "/v1/webhooks",
                token,
                &json!({"url": "https://example.com/hooks"}),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        expect_problem(
            app.delete(&format!("/v1/webhooks/{id}"), token).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }

    // Deleted: gone for every route.
    let deleted = app.delete(&format!("/v1/webhooks/{id}"), &admin).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for path in [
        format!("/v1/webhooks/{id}"),
        format!("/v1/webhooks/{id}/deliveries"),
    ] {
        expect_problem(
            app.get(&path, &admin).await,
            StatusCode::NOT_FOUND,
            "webhook_not_found",
        )
        .await;
    }
    expect_problem(
        app.get("/v1/webhooks/not-an-id", &admin).await,
        StatusCode::NOT_FOUND,
        "webhook_not_found",
    )
    .await;
}

#[tokio::test]
async fn private_addresses_and_plain_http_are_refused_without_the_setting() {
    let app = common::spawn_app().await;
    let admin = app.admin_token().await;
    for url in [
        "http://example.com/hooks",
        "https://127.0.0.1/hooks",
        "https://10.1.2.3/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/",
        "https://[::1]/hooks",
        "https://[fd00:ec2::254]/",
        "https://localhost/hooks",
        "https://metadata.google.internal/",
        "file:///etc/passwd",
    ] {
        let problem = expect_problem(
            app.post("/v1/webhooks", &admin, &json!({ "url": url }))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], "url", "{url}: {problem}");
    }
    // An endpoint whose address became private since it was created (the
    // store holds one): every attempt is refused before connecting.
    let receiver = Receiver::start().await;
    let inside = receiver.url.replace("http://", "https://") + "/hooks";
    let now = crm_models::time::now();
    let planted = crm_models::webhook::Webhook {
        id: uuid::Uuid::now_v7(),
        url: inside,
        types: vec!["customer.created".into()],
        description: None,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        secrets: vec![crm_models::webhook::WebhookSecret {
            secret: signing::new_secret(),
            expires_at: None,
        }],
        created_at: now,
        updated_at: now,
    };
    app.state
        .crm
        .store()
        .insert_webhook(&planted)
        .await
        .unwrap();
    create_customer(&app, 1).await;
    let items = wait_deliveries(&app, &planted.id.to_string(), "refused", |items| {
        items.len() == 1 && items[0]["attempts"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        items[0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("refused"),
        "{items:?}"
    );
    assert!(items[0].get("last_status_code").is_none());
    assert_eq!(
        receiver
            .state
            .arrived
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // The same check on a change.
    let (id, _) = create_webhook(&app, "https://93.184.216.34/hooks", &[]).await;
    expect_problem(
        app.patch(
            &format!("/v1/webhooks/{id}"),
            &admin,
            &json!({"url": "https://192.168.0.10/hooks"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn a_receiver_down_for_three_attempts_then_up_receives_every_event_signed() {
    let receiver = Receiver::start().await;
    // Down (503) for each delivery's first three attempts, then up.
    receiver.answer(|_, n| Some(if n < 3 { (503, vec![]) } else { (200, vec![]) }));
    let app = app_with_schedule("50ms,50ms,50ms,50ms,50ms").await;
    let url = format!("{}/hooks", receiver.url);
    let (webhook, secret) = create_webhook(&app, &url, &["customer.created"]).await;
    let mut customers = BTreeSet::new();
    for n in 0..5 {
        customers.insert(create_customer(&app, n).await);
    }
    let requests = receiver
        .wait_for("every customer acknowledged", |rs| {
            let acked: BTreeSet<String> = rs
                .iter()
                .filter(|r| r.answered == 200)
                .map(|r| {
                    r.json()["data"]["customer_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            acked == customers
        })
        .await;
    // Each webhook-id: three refusals, then the one that succeeded, with
    // the same id, body type and a valid signature every time.
    let mut by_id: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in &requests {
        by_id.entry(r.id.clone()).or_default().push(r);
    }
    assert_eq!(by_id.len(), 5);
    for (id, attempts) in &by_id {
        let answers: Vec<u16> = attempts.iter().map(|r| r.answered).collect();
        assert_eq!(answers, vec![503, 503, 503, 200], "{id}");
        for r in attempts {
            check_signature(r, &secret);
            assert_eq!(r.content_type, "application/json");
            let body = r.json();
            assert_eq!(body["type"], "customer.created");
            let customer = body["data"]["customer_id"].as_str().unwrap();
            // The customer's current state, read at delivery.
            assert_eq!(body["data"]["customer"]["id"], customer);
            assert!(body["data"]["customer"]["name"]
                .as_str()
                .unwrap()
                .starts_with("Customer "));
            assert!(body["timestamp"].is_string());
        }
    }
    // The log says so too.
    let items = wait_deliveries(&app, &webhook, "all succeeded", |items| {
        items.len() == 5 && items.iter().all(|d| d["status"] == "succeeded")
    })
    .await;
    for d in &items {
        assert_eq!(d["attempts"], 4);
        assert_eq!(d["last_status_code"], 200);
        assert_eq!(d["event_type"], "customer.created");
        assert!(by_id.contains_key(d["id"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_says_so_in_a_webhook_disabled_event() {
    let receiver = Receiver::start().await;
    receiver.answer(|path, _| {
        Some(if path == "/gone" {
            (410, vec![])
        } else {
            (200, vec![])
        })
    });
    let app = app_with_schedule("50ms,50ms").await;
    let admin = app.admin_token().await;
    let (gone, _) = create_webhook(
        &app,
        &format!("{}/gone", receiver.url),
        &["customer.created"],
    )
    .await;
    let (watcher, _) = create_webhook(
        &app,
        &format!("{}/watch", receiver.url),
        &["webhook.disabled"],
    )
    .await;
    create_customer(&app, 1).await;
    let requests = receiver
        .wait_for("the webhook.disabled event", |rs| {
            rs.iter().any(|r| r.path == "/watch")
        })
        .await;
    let notice = requests.iter().find(|r| r.path == "/watch").unwrap().json();
    assert_eq!(notice["type"], "webhook.disabled");
    assert_eq!(notice["data"]["webhook_id"], gone.as_str());
    assert!(notice["data"]["reason"].as_str().unwrap().contains("410"));
    // One attempt only: 410 is final.
    assert_eq!(requests.iter().filter(|r| r.path == "/gone").count(), 1);
    let shown: Value = expect_json(
        app.get(&format!("/v1/webhooks/{gone}"), &admin).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(shown["enabled"], false);
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));
    let items = deliveries(&app, &gone).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "failed");
    assert_eq!(items[0]["last_status_code"], 410);
    // Nothing more goes to a disabled endpoint: an endpoint created now
    // gets the next event, the disabled one does not.
    create_webhook(
        &app,
        &format!("{}/after", receiver.url),
        &["customer.created"],
    )
    .await;
    create_customer(&app, 2).await;
    receiver
        .wait_for("the next event at /after", |rs| {
            rs.iter().any(|r| r.path == "/after")
        })
        .await;
    assert_eq!(deliveries(&app, &gone).await.len(), 1);
    assert_eq!(deliveries(&app, &watcher).await.len(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_redirect_is_a_failure() {
    let receiver = Receiver::start().await;
    receiver.answer(|path, n| {
        Some(match (path, n) {
            ("/busy", 0) => (429, vec![("retry-after", "2".to_string())]),
            ("/busy", _) => (200, vec![]),
            ("/moved", _) => (302, vec![("location", "/elsewhere".to_string())]),
            _ => (200, vec![]),
        })
    });
    let app = app_with_schedule("50ms").await;
    let (_busy, _) = create_webhook(
        &app,
        &format!("{}/busy", receiver.url),
        &["customer.created"],
    )
    .await;
    let (moved, _) = create_webhook(
        &app,
        &format!("{}/moved", receiver.url),
        &["customer.created"],
    )
    .await;
    create_customer(&app, 1).await;
    let requests = receiver
        .wait_for("the second attempt at /busy", |rs| {
            rs.iter().filter(|r| r.path == "/busy").count() >= 2
        })
        .await;
    let busy: Vec<&Received> = requests.iter().filter(|r| r.path == "/busy").collect();
    let waited = busy[1].at - busy[0].at;
    assert!(
        waited >= Duration::from_millis(1_900),
        "the retry came after {waited:?}, not after Retry-After: 2"
    );
    // 302 is not followed: two attempts (the schedule has one retry), both
    // failures, and nothing at the redirect's target.
    let items = wait_deliveries(&app, &moved, "failed", |items| {
        items.len() == 1 && items[0]["status"] == "failed"
    })
    .await;
    assert_eq!(items[0]["attempts"], 2);
    assert_eq!(items[0]["last_status_code"], 302);
    let requests = receiver.requests();
    assert_eq!(requests.iter().filter(|r| r.path == "/moved").count(), 2);
    assert!(requests.iter().all(|r| r.path != "/elsewhere"));
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign() {
    let receiver = Receiver::start().await;
    let app = app_with_schedule("50ms").await;
    let admin = app.admin_token().await;
    let (webhook, old) = create_webhook(
        &app,
        &format!("{}/hooks", receiver.url),
        &["customer.created"],
    )
    .await;
    create_customer(&app, 1).await;
    receiver
        .wait_for("the first event", |rs| rs.len() == 1)
        .await;
    let rotated: Value = expect_json(
        app.post(
            &format!("/v1/webhooks/{webhook}/secret/rotate"),
            &admin,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    create_customer(&app, 2).await;
    let requests = receiver
        .wait_for("the second event", |rs| rs.len() == 2)
        .await;
    assert_eq!(requests[0].signature.split(' ').count(), 1);
    check_signature(&requests[0], &old);
    assert!(!signing::verify(
        &new,
        &requests[0].id,
        requests[0].timestamp.parse().unwrap(),
        &requests[0].body,
        &requests[0].signature
    ));
    assert_eq!(requests[1].signature.split(' ').count(), 2);
    check_signature(&requests[1], &old);
    check_signature(&requests[1], &new);
}

/// The test virtualenv's Python (`CRM_TEST_VENV`, else `./.venv`), with the
/// reference `standardwebhooks` library.
fn venv_python() -> PathBuf {
    let venv = std::env::var("CRM_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let python = venv.join("bin").join("python");
    let has_library = Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_library,
        "{} cannot import standardwebhooks: run the README's test command, \
         `./scripts/test.sh`, which installs it into ./.venv",
        python.display()
    );
    python
}

#[tokio::test]
async fn signatures_verify_with_the_reference_library() {
    let python = venv_python();
    let receiver = Receiver::start().await;
    let app = app_with_schedule("50ms").await;
    let (_, secret) = create_webhook(&app, &format!("{}/hooks", receiver.url), &[]).await;
    for n in 0..3 {
        create_customer(&app, n).await;
    }
    let requests = receiver
        .wait_for("three customer.created", |rs| {
            rs.iter()
                .filter(|r| r.json()["type"] == "customer.created")
                .count()
                >= 3
        })
        .await;
    let cases: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "body": String::from_utf8(r.body.clone()).unwrap(),
                "headers": {
                    "webhook-id": r.id,
                    "webhook-timestamp": r.timestamp,
                    "webhook-signature": r.signature,
                },
            })
        })
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
data = json.load(sys.stdin)
hook = Webhook(data["secret"])
for case in data["cases"]:
    payload = hook.verify(case["body"], case["headers"])
    print(payload["type"])
tampered = data["cases"][0]
try:
    hook.verify(tampered["body"].replace("customer", "kustomer", 1), tampered["headers"])
    print("tampered body accepted")
except Exception:
    print("tampered body refused")
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "secret": secret, "cases": cases }).to_string();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the reference library refused our signatures: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), requests.len() + 1, "{stdout}");
    assert_eq!(lines.last(), Some(&"tampered body refused"));
    assert_eq!(
        lines.iter().filter(|l| **l == "customer.created").count(),
        3,
        "{stdout}"
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_by_hand_and_recovered() {
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Some((500, vec![])));
    let app = app_with_schedule("20ms").await;
    let admin = app.admin_token().await;
    let started = common_now();
    let (webhook, _) = create_webhook(
        &app,
        &format!("{}/hooks", receiver.url),
        &["customer.created"],
    )
    .await;
    for n in 0..3 {
        create_customer(&app, n).await;
    }
    let items = wait_deliveries(&app, &webhook, "failed", |items| {
        items.len() == 3 && items.iter().all(|d| d["status"] == "failed")
    })
    .await;
    for d in &items {
        assert_eq!(d["attempts"], 2);
        assert_eq!(d["last_status_code"], 500);
        assert_eq!(d["last_error"], "HTTP 500");
        assert!(d.get("next_attempt_at").is_none());
    }
    assert_eq!(receiver.requests().len(), 6);
    receiver.answer(|_, _| Some((200, vec![])));

    // One by hand.
    let one = items[0]["id"].as_str().unwrap();
    let queued: Value = expect_json(
        app.post(
            &format!("/v1/webhooks/{webhook}/deliveries/{one}/retry"),
            &admin,
            &json!({}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(queued["id"], one);
    receiver
        .wait_for("the retried delivery", |rs| {
            rs.iter().any(|r| r.id == one && r.answered == 200)
        })
        .await;
    expect_problem(
        app.post(
            &format!(
                "/v1/webhooks/{webhook}/deliveries/{}/retry",
                uuid::Uuid::new_v4()
            ),
            &admin,
            &json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "delivery_not_found",
    )
    .await;

    // The rest since the start.
    let recovered: Value = expect_json(
        app.post(
            &format!("/v1/webhooks/{webhook}/recover"),
            &admin,
            &json!({ "since": started }),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(recovered["requeued"], 2);
    wait_deliveries(&app, &webhook, "all succeeded", |items| {
        items.iter().all(|d| d["status"] == "succeeded")
    })
    .await;
    let acked: BTreeSet<String> = receiver
        .requests()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(acked.len(), 3);
    expect_problem(
        app.post(
            &format!("/v1/webhooks/{webhook}/recover"),
            &admin,
            &json!({ "since": "yesterday" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // Pages of the log.
    let page: Value = expect_json(
        app.get(
            &format!("/v1/webhooks/{webhook}/deliveries?limit=2"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = expect_json(
        app.get(
            &format!("/v1/webhooks/{webhook}/deliveries?limit=2&cursor={cursor}"),
            &admin,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest.get("next_cursor").is_none());
}

fn common_now() -> String {
    crm_models::time::format(&crm_models::time::now())
}

#[tokio::test]
async fn a_stalled_endpoint_never_delays_another() {
    let receiver = Receiver::start().await;
    // `/stalled` never answers; `/healthy` at once.
    receiver.answer(|path, _| (path != "/stalled").then_some((200, vec![])));
    let app = spawn_app_with(|c| {
        c.webhooks.allow_private = true;
        c.webhooks.retry_schedule = "50ms".parse().unwrap();
        c.webhooks.timeout = "20s".parse().unwrap();
        c.webhooks.per_endpoint = 2;
    })
    .await;
    create_webhook(
        &app,
        &format!("{}/stalled", receiver.url),
        &["customer.created"],
    )
    .await;
    create_webhook(
        &app,
        &format!("{}/healthy", receiver.url),
        &["customer.created"],
    )
    .await;
    let mut customers = BTreeSet::new();
    for n in 0..10 {
        customers.insert(create_customer(&app, n).await);
    }
    receiver
        .wait_for("every event at the healthy endpoint", |rs| {
            let seen: BTreeSet<String> = rs
                .iter()
                .filter(|r| r.path == "/healthy")
                .map(|r| {
                    r.json()["data"]["customer_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            seen == customers
        })
        .await;
}

// --- SIGKILL of crm-api mid-delivery ---

const ADMIN_EMAIL: &str = "hooks-admin@example.com";
const ADMIN_PASSWORD: &str = "a long enough admin password";
const JWT_SECRET: &str = "webhook-test-secret-of-at-least-32-bytes-0123";

/// The crm-api binary on an embedded store in `data`, as production runs it,
/// delivering to this machine with a short retry schedule.
fn api_process(data: &Path) -> ApiProcess {
    let env = [
        ("CRM_DATA_DIR", data.display().to_string()),
        ("CRM_JWT_SECRET", JWT_SECRET.into()),
        ("CRM_ADMIN_EMAIL", ADMIN_EMAIL.into()),
        ("CRM_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
        ("CRM_METRICS_LISTEN", "off".into()),
        ("CRM_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        (
            "CRM_WEBHOOK_RETRY_SCHEDULE",
            "100ms,100ms,100ms,100ms,100ms".into(),
        ),
        ("CRM_WEBHOOK_TIMEOUT", "1s".into()),
    ];
    ApiProcess::new(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[tokio::test]
async fn sigkill_of_crm_api_mid_delivery_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut api = api_process(data.path());
    let client = reqwest::Client::new();
    api.start(&client).await;
    let login = |address: String| {
        let client = client.clone();
        async move {
            let tokens: Value = client
                .post(format!("{address}/v1/auth/login"))
                .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens["access_token"].as_str().unwrap().to_string()
        }
    };
    let token = login(api.address.clone()).await;
    let receiver = Receiver::start().await;
    // Every request is held open: crm-api is killed while it waits.
    receiver.answer(|_, _| None);
    let created: Value = client
        .post(format!("{}/v1/webhooks", api.address))
        .bearer_auth(&token)
        .json(&json!({"url": format!("{}/hooks", receiver.url), "types": ["customer.created"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let webhook = created["id"].as_str().unwrap().to_string();
    let mut customers = BTreeSet::new();
    for n in 0..20 {
        let c: Value = client
            .post(format!("{}/v1/customers", api.address))
            .bearer_auth(&token)
            .json(&json!({"name": format!("Killed {n}"), "emails": [format!("k{n}@example.com")]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        customers.insert(c["id"].as_str().unwrap().to_string());
    }
    // Wait until deliveries are in flight (held by the receiver: as many as
    // one process sends to one endpoint at once), then SIGKILL.
    {
        let state = receiver.state.clone();
        let deadline = Instant::now() + BOUND;
        loop {
            let seen = state.seen.notified();
            if state.arrived.load(std::sync::atomic::Ordering::SeqCst) >= 16 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no delivery reached the receiver");
            let _ = tokio::time::timeout(left, seen).await;
        }
    }
    assert!(receiver.requests().is_empty(), "nothing was answered yet");
    api.kill();

    // Up again, and the receiver answers now.
    receiver.answer(|_, _| Some((200, vec![])));
    api.start(&client).await;
    let requests = every_customer_acked(
        &receiver,
        "every customer acknowledged after the restart",
        &customers,
    )
    .await;
    // Each event has one webhook-id, whatever the attempts.
    one_id_per_customer(&requests);
    let secret = created["secret"].as_str().unwrap();
    for r in &requests {
        check_signature(r, secret);
    }
    // The log of the restarted process agrees.
    let deadline = Instant::now() + BOUND;
    loop {
        let token = login(api.address.clone()).await;
        let items: Value = client
            .get(format!(
                "{}/v1/webhooks/{webhook}/deliveries?limit=500",
                api.address
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = items["items"].as_array().unwrap().clone();
        if items.len() == customers.len() && items.iter().all(|d| d["status"] == "succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries: {items:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_mongodb_share_the_deliveries_and_lose_none() {
    let receiver = Receiver::start().await;
    // Every delivery fails once, so that retries are shared too.
    receiver.answer(|_, n| Some(if n == 0 { (503, vec![]) } else { (200, vec![]) }));
    let mongodb_uri = mongo_server::mongodb_uri();
    let database = format!("crm_webhooks_{}", uuid::Uuid::new_v4().simple());
    let configure = |uri: String, db: String| {
        move |c: &mut crm_api::config::Config| {
            c.mongodb_uri = Some(uri);
            c.mongodb_database = db;
            c.jwt_secret = Some("a test secret that is long enough for HS256".into());
            c.webhooks.allow_private = true;
            c.webhooks.retry_schedule = "50ms,50ms,50ms".parse().unwrap();
            c.webhooks.timeout = "5s".parse().unwrap();
        }
    };
    let one = spawn_app_with(configure(mongodb_uri.clone(), database.clone())).await;
    let two = spawn_app_with(configure(mongodb_uri, database)).await;
    let (webhook, secret) = create_webhook(
        &one,
        &format!("{}/hooks", receiver.url),
        &["customer.created"],
    )
    .await;
    let mut customers = BTreeSet::new();
    for n in 0..10 {
        let app = if n % 2 == 0 { &one } else { &two };
        customers.insert(create_customer(app, n).await);
    }
    let requests = every_customer_acked(&receiver, "every customer acknowledged", &customers).await;
    for r in &requests {
        check_signature(r, &secret);
    }
    one_id_per_customer(&requests);
    // Either instance shows the same log.
    let items = wait_deliveries(&two, &webhook, "all succeeded", |items| {
        items.len() == customers.len() && items.iter().all(|d| d["status"] == "succeeded")
    })
    .await;
    assert!(items.iter().all(|d| d["attempts"].as_u64() >= Some(2)));
}
