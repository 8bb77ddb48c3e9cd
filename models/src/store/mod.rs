//! The store: the source of truth. One trait, two adapters:
//! [`embedded`] (a redb file, the single-binary default) and [`mongo`].
//!
//! The trait is deliberately small and storage-shaped; the linking rules live in
//! [`crate::service`], above it, so both adapters share them. Every adapter
//! passes the same conformance suite (`models/tests/store_conformance.rs`).

pub mod embedded;
mod group_commit;
pub mod mongo;
mod record_cache;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;

use crate::customer::{Customer, Identifier};
use crate::device::{CallSignal, Device};
use crate::email::Email;
use crate::engagement::{Channel, Engagement};
use crate::event::EventEnvelope;
use crate::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord, Suggestion};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::time::Timestamp;

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
    /// Anything else; the message is for logs, not for clients.
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

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
    Created,
    /// An engagement with the same id exists (a retried upload); nothing changed.
    Duplicate {
        customer_id: CustomerId,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngagementFilter {
    pub channel: Option<Channel>,
    /// Inclusive lower bound on `occurred_at`.
    pub since: Option<Timestamp>,
    /// Exclusive upper bound on `occurred_at`.
    pub until: Option<Timestamp>,
}

/// The outcome of [`Store::mark_merged`].
#[derive(Debug, Clone, PartialEq)]
pub enum MarkMerged {
    /// The customer is now merged; this is how it was before.
    Marked(Box<Customer>),
    /// It was merged already, into this customer.
    AlreadyMerged(Option<CustomerId>),
    NotFound,
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `mongo`.
    fn kind(&self) -> &'static str;

    /// Succeeds when the store can serve requests (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    // --- customers ---

    /// Inserts a new customer; `Conflict` when the id exists.
    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()>;

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>>;

    /// The customers with these ids that exist, in no particular order (one
    /// round trip for a batch).
    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>>;

    /// Writes the profile fields (`name`, `emails`, `phones`, `social`, `status`,
    /// `merged_into`, `updated_at`). Never touches `counts` or
    /// `last_engagement_at`, which engagements maintain. `NotFound` when missing.
    async fn update_profile(&self, customer: &Customer) -> StoreResult<()>;

    /// Adds identifiers to the profile's `phones`, `emails` and `social` (set
    /// semantics, anonymous ids are not profile fields) and sets `updated_at`.
    /// Returns the customer as stored afterwards; `NotFound` when missing.
    async fn add_identifiers(
        &self,
        id: CustomerId,
        identifiers: &[Identifier],
        at: Timestamp,
    ) -> StoreResult<Customer>;

    /// Erases the customer, every identity it owns and all its engagements.
    /// Returns the customer as it was, or `None` when there was none.
    async fn delete_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>>;

    /// Customers ordered by `(updated_at, id)` ascending, with
    /// `updated_at >= updated_since`, after the cursor, at most `limit`.
    async fn list_customers(
        &self,
        updated_since: Option<Timestamp>,
        after: Option<CustomerCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Customer>>;

    // --- identities (key: `phone:+65...`, `email:...`) ---

    /// Claims the identifier for the customer. Race-free: exactly one of two
    /// concurrent claims for one key gets `Claimed`.
    async fn claim_identity(&self, key: &str, customer: CustomerId) -> StoreResult<Claim>;

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>>;

    /// Frees the identifier if (and only if) this customer owns it.
    async fn release_identity(&self, key: &str, customer: CustomerId) -> StoreResult<()>;

    /// Every identifier key the customer owns, sorted.
    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>>;

    /// The identity record: its owner (none when only marked shared) and
    /// whether it is shared.
    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>>;

    /// Marks an identifier shared (or not), creating the record when needed.
    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()>;

    /// [`Store::identity`] of several keys, in their order (one read where
    /// the adapter can).
    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>>;

    /// Inserts each customer owning its identity keys, all or nothing per
    /// customer: a customer is inserted, and its keys claimed, only when
    /// none of them has an owner (keys taken by an earlier entry of the same
    /// call count as owned). `true` for each one created. Race-free like
    /// [`Store::claim_identity`]; the embedded store writes the whole call
    /// in one transaction.
    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>>;

    // --- merging (each step atomic on its own; the service orders them) ---

    /// Marks `id` merged into `into` unless it is merged already.
    async fn mark_merged(
        &self,
        id: CustomerId,
        into: CustomerId,
        at: Timestamp,
    ) -> StoreResult<MarkMerged>;

    /// Moves identities owned by `from` to `to`: the given keys, or all of
    /// them. Only keys `from` still owns move. Returns the keys moved, sorted.
    async fn move_identities(
        &self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>>;

    /// Moves engagements of `from` to `to`: the given ids, or all of them.
    /// Only engagements `from` still has move. Counts move with them, and
    /// both customers' `last_engagement_at` follow. Returns the ids moved.
    async fn move_engagements(
        &self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
    ) -> StoreResult<Vec<EngagementId>>;

    async fn insert_merge(&self, merge: &MergeRecord) -> StoreResult<()>;
    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>>;
    /// Sets `undone_at` and `undone_by` if the merge is not undone yet; true
    /// when this call did it (of two concurrent calls exactly one).
    async fn mark_merge_undone(&self, id: MergeId, at: Timestamp, by: &str) -> StoreResult<bool>;
    /// Merges that involve the customer (as survivor or merged), oldest first.
    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>>;

    /// Keeps a suggestion, replacing the one for the same pair.
    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()>;
    /// Suggestions by pair key, after the given key, at most `limit`.
    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>>;

    // --- engagements ---

    /// Inserts each engagement, in one transaction where the backend has them.
    /// An existing id is reported as `Duplicate`, not an error. For each one
    /// created, the customer's `counts.<channel>` goes up by one and
    /// `last_engagement_at` becomes the later of itself and `occurred_at`.
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

    // --- staff users ---

    /// `Conflict` when the email (or id) is taken.
    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>>;
    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>>;
    /// Replaces the user; `NotFound` when missing, `Conflict` when the new email is taken.
    async fn update_user(&self, user: &User) -> StoreResult<()>;
    /// Users ordered by id, after the given id, at most `limit`.
    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>>;
    async fn count_users(&self) -> StoreResult<u64>;

    // --- refresh tokens (by SHA-256 of the token) ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Marks the token used if it is unused and not revoked. True when this
    /// call did it; of two concurrent calls exactly one gets true.
    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool>;
    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()>;
    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()>;

    // --- API keys (by SHA-256 of the key) ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>>;
    /// All keys, revoked ones too, by creation time.
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Sets `revoked_at`; false when there is no such key or it was revoked already.
    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool>;

    // --- outbox: events the event stream could not take yet ---

    /// Keeps events, in order, until they can be published.
    async fn outbox_push(&self, events: &[EventEnvelope]) -> StoreResult<()>;
    /// The oldest kept events with their outbox ids, at most `limit`.
    async fn outbox_peek(&self, limit: usize) -> StoreResult<Vec<(String, EventEnvelope)>>;
    /// Forgets events that were published.
    async fn outbox_remove(&self, ids: &[String]) -> StoreResult<()>;
    async fn outbox_len(&self) -> StoreResult<u64>;

    // --- devices (by SHA-256 of the device token) ---

    /// `Conflict` when the id or the token hash exists.
    async fn insert_device(&self, device: &Device) -> StoreResult<()>;
    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>>;
    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>>;
    /// The user's devices, or every device for `None`; revoked ones too,
    /// by creation time.
    async fn list_devices(&self, user: Option<UserId>) -> StoreResult<Vec<Device>>;
    /// Sets `revoked_at`; false when there is no such device or it was revoked already.
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

/// Ids for a batch of outbox entries: time-ordered, in batch order.
pub(crate) fn outbox_ids(n: usize) -> Vec<uuid::Uuid> {
    let base = uuid::Uuid::now_v7().as_u128();
    (0..n as u128)
        .map(|i| uuid::Uuid::from_u128(base + i))
        .collect()
}
