//! The store trait with its per-aggregate sub-traits, for calling their
//! methods on an adapter's own type (`EmbeddedStore`, `MongoStore`; a
//! `dyn Store` needs no import): `use crm_models::store::prelude::*;`.

pub use super::{
    AnalyticsStore, CustomerStore, DeviceStore, EngagementStore, EventLogStore, ImportStore,
    MergeStore, StaffStore, Store,
};
