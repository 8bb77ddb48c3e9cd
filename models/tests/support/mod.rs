//! Shared helpers for the integration tests (`mod support;`).

#![allow(dead_code)]

pub mod mongo_server;

use std::ops::Deref;

use crm_models::store::mongo::MongoStore;

/// A [`MongoStore`] on a database of its own, on the shared test server.
pub struct TestMongo {
    pub store: MongoStore,
    pub database: String,
}

impl TestMongo {
    /// Connects to the test server (starting it on first use) with a fresh database.
    pub async fn new() -> TestMongo {
        let uri = mongo_server::mongodb_uri();
        let database = format!("crm_test_{}", uuid::Uuid::new_v4().simple());
        let store = MongoStore::connect(&uri, &database)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server at {uri}: {e}"));
        TestMongo { store, database }
    }

    /// Drops the test's database. (A test that panics leaves its database
    /// behind; on the in-memory test server that goes away with the server.)
    pub async fn cleanup(self) {
        let _ = self.store.database().drop().await;
    }
}

impl Deref for TestMongo {
    type Target = MongoStore;

    fn deref(&self) -> &MongoStore {
        &self.store
    }
}
