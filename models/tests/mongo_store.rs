//! The MongoDB adapter against a MongoDB-compatible server (see
//! `support/mongo_server.rs`: `CRM_TEST_MONGODB_URI`, or a `secantusd-py`
//! started for this test binary). Each test works in a database of its own.
//! What every adapter must do is in the conformance suite
//! (`store_conformance.rs`); this file holds what only MongoDB has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use crm_models::store::mongo::MongoStore;
use crm_models::store::{EventLogStore, Store, StoreError};
use support::TestMongo;

// --- connecting ---

#[tokio::test]
async fn connects_pings_and_creates_indexes_idempotently() {
    let db = TestMongo::new().await;
    assert_eq!(db.kind(), "mongo");
    db.ping().await.unwrap();
    // A second store on the same database creates the same indexes again.
    let again = MongoStore::connect(&support::mongo_server::mongodb_uri(), &db.database)
        .await
        .unwrap();
    again.ping().await.unwrap();
    let names = db
        .database()
        .collection::<mongodb::bson::Document>("engagements")
        .list_index_names()
        .await
        .unwrap();
    assert_eq!(names.len(), 3, "{names:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300");
    match MongoStore::connect(&uri, "crm_test_unreachable").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        MongoStore::connect("not a uri", "crm").await,
        Err(StoreError::Unavailable(_))
    ));
}

// --- the relay lease ---

/// Several crm-api instances share one database: one relay publishes at a
/// time, and another takes over once the holder's lease runs out.
#[tokio::test]
async fn one_relay_holds_the_lease_until_it_runs_out() {
    use std::time::{Duration, Instant};
    let db = TestMongo::new().await;
    let long = Duration::from_secs(60);
    assert!(db.relay_lease("a", long).await.unwrap());
    assert!(!db.relay_lease("b", long).await.unwrap(), "a holds it");
    assert!(
        db.relay_lease("a", long).await.unwrap(),
        "the holder renews"
    );
    // A lease that runs out at once is free for the next relay.
    assert!(db.relay_lease("a", Duration::ZERO).await.unwrap());
    let started = Instant::now();
    while !db.relay_lease("b", long).await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "b never got the lease a let run out"
        );
        tokio::task::yield_now().await;
    }
    assert!(!db.relay_lease("a", long).await.unwrap(), "now b holds it");
    db.cleanup().await;
}
