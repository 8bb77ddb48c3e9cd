//! The store: the source of truth. One trait, two adapters:
//! [`embedded`] (a redb file, the single-binary default) and [`mongo`];
//! [`open`] picks one from a [`StoreConfig`].
//!
//! The trait is storage-shaped; the linking rules live in [`crate::service`],
//! above it, so both adapters share them. Every adapter passes the same
//! conformance suite (`models/tests/store_conformance.rs`).
//!
//! [`Store`] combines one sub-trait per aggregate: [`CustomerStore`]
//! (customers and identities), [`EngagementStore`], [`MergeStore`] (merges
//! and suggestions), [`StaffStore`] (users, refresh tokens, API keys),
//! [`DeviceStore`] (devices and call signals), [`EventLogStore`] and
//! [`ImportStore`] (bulk imports); each
//! adapter implements them in one file per aggregate. A `dyn Store` has all
//! their methods; [`prelude`] brings the traits into scope for calls on an
//! adapter's own type.
//!
//! # The write model
//! Every write commits together with its domain events: the events go to the
//! store's own event log in the same transaction (a redb write transaction;
//! a MongoDB multi-document transaction), and a write is acknowledged only
//! after that commit. Single-record writes and batches are methods of the
//! sub-traits that append their events themselves; changes that span records
//! (merges, undo, erasure, profile edits) run as a [`TxWork`] through
//! [`Store::transaction`]. A relay ([`crate::relay`]), never the request,
//! moves committed events on to the event stream.

mod analytics;
pub mod embedded;
mod group_commit;
mod imports;
pub mod mongo;
pub mod prelude;
mod record_cache;
pub mod tx;
mod webhooks;

pub use analytics::AnalyticsStore;
pub use imports::ImportStore;
pub use tx::{EngagementRef, Erased, Tx, TxWork};
pub use webhooks::WebhookStore;

pub use embedded::EmbeddedStore;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::customer::Customer;
use crate::device::{CallSignal, Device};
use crate::email::Email;
use crate::engagement::{Channel, Engagement};
use crate::event::EventEnvelope;
use crate::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord, Suggestion};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::time::Timestamp;
use mongo::MongoStore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record to change does not exist.
    #[error("not found")]
    NotFound,
    /// A unique value (a user's email, an id) is taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend cannot be reached or refused to work (another process holds the file).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A transaction kept conflicting with concurrent ones; try again.
    #[error("contention: {0}")]
    Contention(String),
    /// Anything else; the message is for logs, not for clients.
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which store to open: MongoDB when a URI is given, otherwise the embedded
/// store in the data directory.
#[derive(Clone)]
pub struct StoreConfig {
    /// MongoDB connection string; `None` means the embedded store.
    pub mongodb_uri: Option<String>,
    /// MongoDB database name.
    pub mongodb_database: String,
    /// Directory of the embedded store (used when no MongoDB URI is set).
    pub data_dir: PathBuf,
}

/// Opens MongoDB when a URI is configured, otherwise the embedded store.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.mongodb_uri {
        Some(uri) => Arc::new(MongoStore::connect(uri, &config.mongodb_database).await?),
        None => Arc::new(EmbeddedStore::open(&config.data_dir)?),
    })
}

/// The answer to "may this customer own this identifier?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The identifier was free and now belongs to the customer.
    Claimed,
    /// The identifier already belongs to this customer (maybe the one asking).
    OwnedBy(CustomerId),
}

/// The outcome of inserting one engagement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngagementInsert {
    /// Stored on `customer_id`: the customer it named, or the one that
    /// customer was merged into.
    Created { customer_id: CustomerId },
    /// An engagement with the same id exists (a retried upload); nothing changed.
    Duplicate { customer_id: CustomerId },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngagementFilter {
    pub channel: Option<Channel>,
    /// Inclusive lower bound on `occurred_at`.
    pub since: Option<Timestamp>,
    /// Exclusive upper bound on `occurred_at`.
    pub until: Option<Timestamp>,
}

/// Position in a timeline: the last engagement of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngagementCursor {
    pub occurred_at: Timestamp,
    pub id: EngagementId,
}

/// Position in the customer list: the last customer of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerCursor {
    pub updated_at: Timestamp,
    pub id: CustomerId,
}

/// The store: every aggregate's operations ([`CustomerStore`],
/// [`EngagementStore`], [`MergeStore`], [`StaffStore`], [`DeviceStore`],
/// [`EventLogStore`]) and the transactions that span them. Callers use it as
/// `Arc<dyn Store>`, on which every method can be called as it is; on an
/// adapter's own type, bring the sub-traits into scope with
/// `use crm_models::store::prelude::*;`.
#[async_trait]
pub trait Store:
    CustomerStore
    + EngagementStore
    + MergeStore
    + StaffStore
    + DeviceStore
    + EventLogStore
    + WebhookStore
    + AnalyticsStore
    + ImportStore
    + Send
    + Sync
    + 'static
{
    /// `embedded` or `mongo`.
    fn kind(&self) -> &'static str;

    /// Succeeds when the store can serve requests (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Runs the work in one transaction and commits it when the work
    /// returns `Ok` (see [`tx`]); an error rolls everything back.
    /// `Contention` when it kept conflicting with concurrent transactions.
    async fn transaction(&self, work: &mut dyn TxWork) -> StoreResult<()>;
}

/// Customers and their identities (key: `phone:+65...`, `email:...`).
#[async_trait]
pub trait CustomerStore: Send + Sync {
    /// Inserts a new customer with its `customer.created` event; `Conflict`
    /// when the id exists.
    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()>;

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>>;

    /// The customers with these ids that exist, in no particular order (one
    /// round trip for a batch).
    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>>;

    /// Customers ordered by `(updated_at, id)` ascending, with
    /// `updated_at >= updated_since`, after the cursor, at most `limit`.
    async fn list_customers(
        &self,
        updated_since: Option<Timestamp>,
        after: Option<CustomerCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Customer>>;

    /// Customers (merged ones excepted) whose profile lists this phone,
    /// whoever owns its identity: a shared or blocked number is on several
    /// profiles. Caller ID from the store when the index cannot answer. The
    /// default walks every customer; an adapter with an index on phones
    /// answers from it.
    async fn customers_with_phone(&self, phone: &crate::PhoneNumber) -> StoreResult<Vec<Customer>> {
        const PAGE: usize = 500;
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_customers(None, after, PAGE).await?;
            after = page.last().map(|c| CustomerCursor {
                updated_at: c.updated_at,
                id: c.id,
            });
            let last = page.len() < PAGE;
            found.extend(page.into_iter().filter(|c| {
                c.status != crate::customer::CustomerStatus::Merged && c.phones.contains(phone)
            }));
            if last {
                return Ok(found);
            }
        }
    }

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>>;

    /// Every identifier key the customer owns, sorted.
    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>>;

    /// The identity record: its owner (none when only marked shared) and
    /// whether it is shared.
    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>>;

    /// Marks an identifier shared (or not), creating the record when needed.
    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()>;

    /// [`CustomerStore::identity`] of several keys, in their order (one read where
    /// the adapter can).
    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>>;

    /// Inserts each customer owning its identity keys, all or nothing per
    /// customer: a customer is inserted, and its keys claimed, only when
    /// none of them has an owner (keys taken by an earlier entry of the same
    /// call count as owned). `true` for each one created. Race-free like
    /// [`Tx::claim`]; the embedded store writes the whole call
    /// in one transaction.
    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>>;
}

/// Engagements, with the counters they keep on their customer.
#[async_trait]
pub trait EngagementStore: Send + Sync {
    /// Inserts each engagement, in one transaction where the backend has them.
    /// An existing id is reported as `Duplicate`, not an error. An engagement
    /// for a merged customer goes to the customer it was merged into (its
    /// `customer_id` in the store says where it went). For each one created,
    /// in the same transaction: its `engagement.recorded` event, the
    /// customer's `counts.<channel>` goes up by one, `last_engagement_at`
    /// becomes the later of itself and `occurred_at`, and `updated_at` moves
    /// to `recorded_at`.
    async fn insert_engagements(&self, items: &[Engagement]) -> StoreResult<Vec<EngagementInsert>>;

    async fn get_engagement(&self, id: EngagementId) -> StoreResult<Option<Engagement>>;

    /// A customer's engagements, newest `occurred_at` first (ties: larger id
    /// first), strictly after the cursor, at most `limit`.
    async fn list_engagements(
        &self,
        customer: CustomerId,
        filter: &EngagementFilter,
        after: Option<EngagementCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Engagement>>;

    /// Customers in id order (merged ones too), strictly after `after`, at
    /// most `limit`, each with its latest `per_customer` engagements in
    /// timeline order (as [`EngagementStore::list_engagements`] lists
    /// them). What a rebuild or load of the index reads: one read for a
    /// page of customers instead of one per customer.
    async fn customers_with_latest_engagements(
        &self,
        after: Option<CustomerId>,
        limit: usize,
        per_customer: usize,
    ) -> StoreResult<Vec<(Customer, Vec<Engagement>)>>;

    /// Customers in id order (merged ones too), strictly after `after`, at
    /// most `limit`, each with the [`record_hash`] of its record as JSON:
    /// what a load checks the index's snapshot against. The default reads
    /// and encodes every record; an adapter that stores the JSON hashes it
    /// as stored, without decoding it.
    async fn customer_record_hashes(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> StoreResult<Vec<(CustomerId, RecordHash)>> {
        let page = self
            .customers_with_latest_engagements(after, limit, 0)
            .await?;
        Ok(page
            .iter()
            .map(|(c, _)| (c.id, customer_record_hash(c)))
            .collect())
    }
}

/// A hash of a customer record's JSON (the first 16 bytes of its SHA-256).
pub type RecordHash = [u8; 16];

/// The [`RecordHash`] of these bytes.
pub fn record_hash(json: &[u8]) -> RecordHash {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(json);
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

/// The [`RecordHash`] of a customer as its JSON, the same for every store
/// and every run (the embedded store keeps exactly this JSON).
pub fn customer_record_hash(customer: &Customer) -> RecordHash {
    // Serialising a customer cannot fail (no maps with non-string keys); an
    // empty record's hash would only make it never match.
    record_hash(&serde_json::to_vec(customer).unwrap_or_default())
}

/// Merge records (written by merge and undo transactions, see [`tx`]) and
/// merge suggestions.
#[async_trait]
pub trait MergeStore: Send + Sync {
    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>>;
    /// Merges that involve the customer (as survivor or merged), oldest first.
    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>>;

    /// Keeps a suggestion, replacing the one for the same pair; a pair
    /// dismissed before stays dismissed (its `dismissed_at` is kept).
    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()>;
    /// [`upsert_suggestion`](Self::upsert_suggestion) of each, in order (a
    /// later one for the same pair wins); the embedded store writes them in
    /// one transaction.
    async fn upsert_suggestions(&self, suggestions: &[Suggestion]) -> StoreResult<()> {
        for s in suggestions {
            self.upsert_suggestion(s).await?;
        }
        Ok(())
    }
    /// Marks the pair's suggestion dismissed at `at` (kept if it was
    /// dismissed before): false when there is no suggestion for the pair.
    async fn dismiss_suggestion(
        &self,
        a: CustomerId,
        b: CustomerId,
        at: Timestamp,
    ) -> StoreResult<bool>;
    /// Suggestions by pair key (dismissed ones too), after the given key, at
    /// most `limit`.
    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>>;
}

/// Staff and their sessions: users, refresh tokens and API keys.
#[async_trait]
pub trait StaffStore: Send + Sync {
    /// `Conflict` when the email (or id) is taken. Appends the events with it.
    async fn insert_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()>;
    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>>;
    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>>;
    /// Replaces the user; `NotFound` when missing, `Conflict` when the new email is taken.
    /// Appends the events with it.
    async fn update_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()>;
    /// Users ordered by id, after the given id, at most `limit`.
    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>>;
    async fn count_users(&self) -> StoreResult<u64>;

    // --- refresh tokens (by SHA-256 of the token) ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Marks the token used if it is unused and not revoked. True when this
    /// call did it; of two concurrent calls exactly one gets true.
    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool>;
    /// Revokes every token of the family and records the family (the
    /// session id access tokens carry) as a revoked session.
    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()>;
    /// Revokes every token of the user and records each family that still
    /// had a live token as a revoked session.
    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()>;
    /// Session ids (refresh families) revoked at or after `since`: what
    /// every instance needs to refuse the access tokens of ended sessions.
    async fn revoked_sessions(&self, since: Timestamp) -> StoreResult<Vec<String>>;
    /// Forgets session revocations made before `before`; how many went.
    async fn prune_revoked_sessions(&self, before: Timestamp) -> StoreResult<u64>;

    // --- API keys (by SHA-256 of the key) ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>>;
    /// All keys, revoked ones too, by creation time.
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Sets `revoked_at`; false when there is no such key or it was revoked already.
    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool>;
}

/// Devices (by SHA-256 of the device token) and incoming-call signals.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// `Conflict` when the id or the token hash exists. Appends
    /// `device.enrolled` with it.
    async fn insert_device(&self, device: &Device) -> StoreResult<()>;
    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>>;
    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>>;
    /// The user's devices, or every device for `None`; revoked ones too,
    /// by creation time.
    async fn list_devices(&self, user: Option<UserId>) -> StoreResult<Vec<Device>>;
    /// Sets `revoked_at` and appends `device.revoked`; false when there is no
    /// such device or it was revoked already.
    async fn revoke_device(&self, id: DeviceId, at: Timestamp) -> StoreResult<bool>;
    /// Sets `last_upload_at`; `NotFound` when there is no such device.
    async fn set_device_last_upload(&self, id: DeviceId, at: Timestamp) -> StoreResult<()>;

    // --- incoming-call signals ---

    /// Keeps the signals (ids are unique; an existing id is left as it is).
    /// Takes them by value: the embedded store writes them on another thread.
    async fn insert_call_signals(&self, signals: Vec<CallSignal>) -> StoreResult<()>;
    /// Signals at or after `since`, of one user's devices or of all (`None`),
    /// oldest first (ties by id), at most `limit`.
    async fn list_call_signals(
        &self,
        user: Option<UserId>,
        since: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<CallSignal>>;
    /// Deletes the signals from before `before`; returns how many went.
    async fn delete_call_signals_before(&self, before: Timestamp) -> StoreResult<u64>;
}

/// The event log (see the module documentation) and the relay lease.
#[async_trait]
pub trait EventLogStore: Send + Sync {
    /// Events not relayed yet, oldest first, at most `limit`.
    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>>;
    /// Marks events relayed (they stay in the log until pruned).
    async fn mark_events_relayed(&self, ids: &[uuid::Uuid]) -> StoreResult<()>;
    async fn unrelayed_count(&self) -> StoreResult<u64>;
    /// The log in id order, strictly after `after`, at most `limit`.
    async fn events_after(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<EventEnvelope>>;
    /// The public feed: up to `limit` events matching `filter`, in feed
    /// order, strictly after the event `after` (from the start of the log
    /// when `None`). Examines a bounded number of events per call, so a page
    /// may hold fewer than `limit` (even none) with more to come: continue
    /// after [`EventPage::last`](crate::event::EventPage).
    ///
    /// Feed order is the order in which events became visible, so a reader
    /// at the head never skips one that committed late: commit order in the
    /// embedded store; in MongoDB the order the relay sequenced them in
    /// (only sequenced events are in the feed). `None` when `after` is not
    /// in the log (pruned past the retention, or never an event).
    async fn read_feed(
        &self,
        after: Option<uuid::Uuid>,
        filter: &crate::event::EventFilter,
        limit: usize,
    ) -> StoreResult<Option<crate::event::EventPage>>;
    /// Deletes relayed events that occurred before `before`; returns how many went.
    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64>;
    /// Takes or renews the right to relay for `ttl`: true when `holder` has
    /// it now. Keeps several instances from publishing the same events.
    async fn relay_lease(&self, holder: &str, ttl: std::time::Duration) -> StoreResult<bool>;
}
