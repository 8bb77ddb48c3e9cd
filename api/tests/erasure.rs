//! Erasure erases the person: after `DELETE /v1/customers/{id}`, a dump of
//! every MongoDB collection and of every Redis key (streams included) holds
//! none of the person's names, numbers, addresses or message bodies, nor
//! those of the customer merged into it. (The embedded store's file is
//! checked in `models/tests/embedded_store.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

mod common;
#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "common/processes.rs"]
mod processes;

use std::time::{Duration, Instant};

use common::{expect_json, spawn_app_with, TestApp};
use futures::TryStreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What the person wrote or is called; none of it may survive the erasure.
const PERSONAL: [&str; 9] = [
    "Zyxwvut",
    "Plonkett",
    "Quorvath",
    "Bellweather",
    "81234567",
    "91234567",
    "zyx.plonkett",
    "q.bellweather",
    "unmistakable-body-phrase",
];

fn leaks(dump: &str) -> Vec<&'static str> {
    PERSONAL
        .iter()
        .copied()
        .filter(|p| dump.contains(p))
        .collect()
}

/// Polls `check` until it holds; fails after 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pending_events(app: &TestApp) -> u64 {
    app.readyz().await["events_pending"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Writes the person (two customers merged into one, with an SMS), checks
/// that it is findable, erases it, and waits until the index has followed.
async fn write_and_erase(app: &TestApp) {
    let token = app.admin_token().await;
    let ann: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Zyxwvut Plonkett", "phones": ["+65 8123 4567"],
                    "emails": ["zyx.plonkett@erase.example"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let other: Value = expect_json(
        app.post(
            "/v1/customers",
            &token,
            &json!({"name": "Quorvath Bellweather", "phones": ["+65 9123 4567"],
                    "emails": ["q.bellweather@erase.example"]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = ann["id"].as_str().unwrap().to_string();
    expect_json::<Value>(
        app.post(
            "/v1/engagements",
            &token,
            &json!({"customer": {"phone": "+65 9123 4567"}, "channel": "sms",
                    "direction": "inbound", "occurred_at": "2026-11-21T09:30:00Z",
                    "body": "unmistakable-body-phrase", "client_event_id": "erase-1"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_json::<Value>(
        app.post(
            &format!("/v1/customers/{id}/merge"),
            &token,
            &json!({"ids": [other["id"]]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    eventually("the merged customer to be searchable", || async {
        let found: Value = app
            .get("/v1/search?q=91234567", &token)
            .await
            .json()
            .await
            .unwrap();
        found["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|h| h["id"] == id.as_str()))
    })
    .await;

    let erased = app.delete(&format!("/v1/customers/{id}"), &token).await;
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    eventually("the erasure to reach the index", || async {
        pending_events(app).await == 0 && app.state.projector.verify().await.unwrap().is_clean()
    })
    .await;
    let found: Value = app
        .get("/v1/search?q=81234567", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"], json!([]), "{found}");
}

/// Every key under the prefix, with its contents, as text.
async fn dump_redis(url: &str, prefix: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Key names, members and values may be binary (ids are 16 bytes, the
    // summaries packed): everything is read as bytes and shown lossily, so
    // that any text in them is still seen.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(page);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(
        !keys.is_empty(),
        "the index and the stream live under {prefix}"
    );
    let mut dump = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut cmd = match kind.as_str() {
            "string" => redis::cmd("GET"),
            "hash" => redis::cmd("HGETALL"),
            "set" => redis::cmd("SMEMBERS"),
            "zset" | "list" => redis::cmd(if kind == "zset" { "ZRANGE" } else { "LRANGE" }),
            "stream" => redis::cmd("XRANGE"),
            other => panic!(
                "unexpected key type {other} for {}",
                String::from_utf8_lossy(&key)
            ),
        };
        cmd.arg(&key);
        match kind.as_str() {
            "zset" | "list" => {
                cmd.arg(0).arg(-1);
            }
            "stream" => {
                cmd.arg("-").arg("+");
            }
            _ => {}
        }
        let value: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        dump.push_str(&String::from_utf8_lossy(&key));
        dump.push(' ');
        render(&value, &mut dump);
        dump.push('\n');
    }
    dump
}

/// A reply as text, byte strings decoded lossily.
fn render(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                render(item, out);
                out.push(' ');
            }
        }
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                render(k, out);
                out.push(' ');
                render(v, out);
                out.push(' ');
            }
        }
        other => out.push_str(&format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_nothing_in_mongodb_or_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = processes::RedisProcess::start(dir.path(), false);
    let mongodb_uri = mongo_server::mongodb_uri();
    let database = format!("crm_erasure_{}", uuid::Uuid::new_v4().simple());
    let prefix = format!("crm_erasure_{}:", uuid::Uuid::new_v4().simple());
    let (uri, db_name, redis_url, key_prefix) = (
        mongodb_uri.clone(),
        database.clone(),
        redis.url(),
        prefix.clone(),
    );
    let app = spawn_app_with(move |c| {
        c.mongodb_uri = Some(uri);
        c.mongodb_database = db_name;
        c.redis_url = Some(redis_url);
        c.redis_prefix = key_prefix;
        c.jwt_secret = Some("a test secret that is long enough for HS256".into());
    })
    .await;
    write_and_erase(&app).await;

    let client = mongodb::Client::with_uri_str(&mongodb_uri).await.unwrap();
    let db = client.database(&database);
    let mut dump = String::new();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<mongodb::bson::Document> = db
            .collection::<mongodb::bson::Document>(&name)
            .find(mongodb::bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        dump.push_str(&format!("{name}: {docs:?}\n"));
    }
    assert!(dump.contains("events"), "the event log is dumped too");
    assert_eq!(
        leaks(&dump),
        Vec::<&str>::new(),
        "MongoDB keeps personal data"
    );
    let _ = db.drop().await;

    let dump = dump_redis(&redis.url(), &prefix).await;
    assert_eq!(
        leaks(&dump),
        Vec::<&str>::new(),
        "Redis keeps personal data"
    );
}
