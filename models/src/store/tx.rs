//! Store transactions: several reads and writes that commit together with
//! their events, or not at all.
//!
//! The service writes each change that touches more than one record (a
//! merge, an undo, an erasure, a profile edit that claims and releases
//! identifiers) as a [`TxWork`]: code run against a [`Tx`], the store's view
//! inside one transaction (a redb write transaction; a MongoDB
//! multi-document transaction). The adapter commits when the work returns
//! `Ok` and rolls everything back when it returns an error, so a failure at
//! any step leaves the store as it was. On MongoDB a write conflict reruns
//! the work from the start, so a work must not keep anything from a run that
//! failed.

use async_trait::async_trait;

use super::{Claim, StoreResult};
use crate::customer::Customer;
use crate::event::EventEnvelope;
use crate::ids::{CustomerId, EngagementId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord};
use crate::time::Timestamp;

/// An engagement as an undo needs it: where it came from and when it was
/// recorded, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngagementRef {
    pub id: EngagementId,
    pub recorded_at: Timestamp,
    /// The identifier key it came through (see `Source::via`).
    pub via: Option<String>,
}

/// What an erasure removed, beyond the customer itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    pub identities: u64,
    pub engagements: u64,
    pub call_signals: u64,
}

/// The store inside one transaction. Reads see the transaction's own writes.
#[async_trait]
pub trait Tx: Send {
    async fn customer(&mut self, id: CustomerId) -> StoreResult<Option<Customer>>;

    /// Inserts or replaces the customer's profile fields (`name`, `emails`,
    /// `phones`, `social`, `status`, `merged_into`, `updated_at`); counts
    /// and `last_engagement_at` are kept as stored (engagements maintain
    /// them). A new customer is inserted whole.
    async fn put_customer(&mut self, customer: &Customer) -> StoreResult<()>;

    async fn identity(&mut self, key: &str) -> StoreResult<Option<IdentityInfo>>;

    /// Claims the identifier for the customer unless somebody owns it.
    async fn claim(&mut self, key: &str, customer: CustomerId) -> StoreResult<Claim>;

    /// Frees the identifier if (and only if) this customer owns it.
    async fn release(&mut self, key: &str, customer: CustomerId) -> StoreResult<()>;

    /// Every identifier key the customer owns, sorted.
    async fn identities_of(&mut self, customer: CustomerId) -> StoreResult<Vec<String>>;

    /// Moves identities owned by `from` to `to`: the given keys, or all of
    /// them. Only keys `from` still owns move. Returns the keys moved, sorted.
    async fn move_identities(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>>;

    /// Moves engagements of `from` to `to`: the given ids, or all of them.
    /// Only engagements `from` still has move. Counts move with them, both
    /// customers' `last_engagement_at` follow, and both get `updated_at =
    /// at` when anything moved. Returns the ids moved.
    async fn move_engagements(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
        at: Timestamp,
    ) -> StoreResult<Vec<EngagementId>>;

    /// The customer's engagements (id, when recorded, identifier it came through).
    async fn engagement_refs(&mut self, customer: CustomerId) -> StoreResult<Vec<EngagementRef>>;

    async fn merge(&mut self, id: MergeId) -> StoreResult<Option<MergeRecord>>;

    /// Inserts or replaces the merge record.
    async fn put_merge(&mut self, merge: &MergeRecord) -> StoreResult<()>;

    /// Merges that name the customer (as survivor or merged), oldest first.
    async fn merges_of(&mut self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>>;

    async fn delete_merge(&mut self, id: MergeId) -> StoreResult<()>;

    /// Deletes the customer record with its identities, engagements, call
    /// signals and suggestions. `None` when there was no such customer.
    async fn erase_customer(&mut self, id: CustomerId) -> StoreResult<Option<Erased>>;

    /// Appends events to the store's event log, committed with the rest.
    async fn append_events(&mut self, events: &[EventEnvelope]) -> StoreResult<()>;
}

/// Work run inside one transaction (see the module documentation). It may
/// run more than once; each run starts from a fresh transaction.
#[async_trait]
pub trait TxWork: Send {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()>;
}
