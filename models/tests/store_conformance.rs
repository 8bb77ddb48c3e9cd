//! The store conformance suite, run against every adapter. Adding an adapter
//! is one `store_suite!` line: a name and a factory for a fresh, empty store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod conformance;

use std::sync::Arc;

use conformance::TestStore;
use crm_models::store::embedded::EmbeddedStore;

store_suite!(embedded, || async {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
    TestStore::new(Arc::new(store), dir)
});
