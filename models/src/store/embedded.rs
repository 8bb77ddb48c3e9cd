//! The embedded store: one redb file (`crm.redb`) under the data directory.
//!
//! redb is synchronous, so every operation runs on tokio's blocking pool. Each
//! write is one redb write transaction (durable on commit, and serialised by
//! redb, which is what makes claims and token rotation race-free); engagement
//! batches that wait for the write lock together share one (`group_commit`). Records are
//! stored as JSON; the secondary tables hold only keys.
//!
//! # Tables
//! - `customers`: id → customer JSON.
//! - `customers_by_updated`: (updated_at, id) → (), for [`Store::list_customers`].
//! - `identities`: key → customer id; `identities_by_customer`: (customer, key) → ().
//! - `engagements`: (customer, newest-first time, newest-first id) → channel byte ++
//!   JSON, so a prefix scan is a timeline; `engagement_ids`: id → that key.
//! - `users`, `users_by_email`; `refresh_tokens` (hash → JSON),
//!   `refresh_by_family`, `refresh_by_user`; `api_keys`, `api_keys_by_hash`.
//! - `identities_shared`: keys marked shared; `merges` (id → JSON) with
//!   `merges_by_customer`; `suggestions` (pair key → JSON).
//! - `devices` (id → JSON), `devices_by_hash` (token hash → id).
//! - `call_signals`: (time, id) of a batch's newest signal → the batch's signals
//!   in a binary form, so a range scan reads them in time order (see
//!   `call_signals`).
//!
//! Times in keys are microseconds since the epoch with the sign bit flipped, so
//! that the big-endian bytes sort in time order (negative times too).

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

mod call_signals;
mod tx;

use super::group_commit::GroupCommit;
use super::record_cache::RecordCache;
use super::{
    CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
    StoreResult, TxWork,
};
use crate::customer::{ChannelCounts, Customer};
use crate::device::{CallSignal, Device};
use crate::email::Email;
use crate::engagement::{Channel, Engagement};
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord, Suggestion};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::time::Timestamp;

/// The file inside the data directory.
pub const FILE_NAME: &str = "crm.redb";

type EngagementKey = (u128, u64, u128);

/// Most records one pruning transaction deletes.
const DELETE_CHUNK: usize = 10_000;

const CUSTOMERS: TableDefinition<u128, &[u8]> = TableDefinition::new("customers");
const CUSTOMERS_BY_UPDATED: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("customers_by_updated");
const IDENTITIES: TableDefinition<&str, u128> = TableDefinition::new("identities");
const IDENTITIES_BY_CUSTOMER: TableDefinition<(u128, &str), ()> =
    TableDefinition::new("identities_by_customer");
const ENGAGEMENTS: TableDefinition<EngagementKey, &[u8]> = TableDefinition::new("engagements");
const ENGAGEMENT_IDS: TableDefinition<u128, EngagementKey> = TableDefinition::new("engagement_ids");
const USERS: TableDefinition<u128, &[u8]> = TableDefinition::new("users");
const USERS_BY_EMAIL: TableDefinition<&str, u128> = TableDefinition::new("users_by_email");
const REFRESH_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
const REFRESH_BY_FAMILY: TableDefinition<(&str, &str), ()> =
    TableDefinition::new("refresh_by_family");
const REFRESH_BY_USER: TableDefinition<(u128, &str), ()> = TableDefinition::new("refresh_by_user");
const API_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("api_keys");
const API_KEYS_BY_HASH: TableDefinition<&str, u128> = TableDefinition::new("api_keys_by_hash");
const IDENTITIES_SHARED: TableDefinition<&str, ()> = TableDefinition::new("identities_shared");
const MERGES: TableDefinition<u128, &[u8]> = TableDefinition::new("merges");
const MERGES_BY_CUSTOMER: TableDefinition<(u128, u128), ()> =
    TableDefinition::new("merges_by_customer");
const SUGGESTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("suggestions");
const DEVICES: TableDefinition<u128, &[u8]> = TableDefinition::new("devices");
const DEVICES_BY_HASH: TableDefinition<&str, u128> = TableDefinition::new("devices_by_hash");
const CALL_SIGNALS: TableDefinition<(u64, u128), &[u8]> = TableDefinition::new("call_signals");

/// How often a commit of incoming-call signals is made durable (written and
/// synced to disk); the ones in between are kept in memory until the next
/// durable commit of any write, or until the store closes. Under caller-ID
/// load signals are committed many times a second, and a sync each time
/// cost more than the inserts. A signal is for a popup about the call
/// ringing now: a crash may lose the last second of them, never anything
/// else (every other write is durable on commit, and makes the signals
/// before it durable too).
pub const SIGNALS_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The redb-backed [`Store`]. Cheap to share: clone the `Arc` around it.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// Engagement batches waiting for the next commit.
    engagement_writes: Arc<GroupCommit<Engagement, EngagementInsert>>,
    /// Staff users by id, and devices by token hash: read by every staff and
    /// every mobile request.
    users: Arc<RecordCache<UserId, User>>,
    devices: Arc<RecordCache<String, Device>>,
    /// When incoming-call signals were last committed durably.
    signals_synced: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `crm.redb` in `dir`, creating the directory if needed.
    /// Fails with [`StoreError::Unavailable`] when another process (or another
    /// open store in this one) holds the file.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "the data directory {} is in use by another crm-api process",
                dir.display()
            )),
            other => StoreError::Unavailable(format!(
                "cannot open the embedded store {}: {}",
                path.display(),
                other.to_string().to_lowercase()
            )),
        })?;
        // Create every table once, so that readers never meet a missing one.
        let txn = db.begin_write().map_err(db_err)?;
        open_all_tables(&txn)?;
        txn.commit().map_err(db_err)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            engagement_writes: Arc::new(GroupCommit::new(write_engagements)),
            users: Arc::new(RecordCache::new()),
            devices: Arc::new(RecordCache::new()),
            signals_synced: Arc::new(parking_lot::Mutex::new(None)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read of a few keys on the calling thread: a redb read
    /// transaction takes no lock and, with the pages cached, costs a few
    /// microseconds, less than a hop to the blocking pool and back (two
    /// thread wake-ups). Only for point reads: the ones every request makes
    /// and the ones resolving an identifier makes.
    fn read_now<T>(&self, f: impl FnOnce(&Database) -> StoreResult<T>) -> StoreResult<T> {
        f(&self.db)
    }

    /// [`run`](Self::run) for a write to records `cache` keeps: the cache
    /// is cleared once the write has committed or failed, on the blocking
    /// thread, so that it happens even when the caller stops waiting.
    async fn run_clearing<T, K, V, F>(&self, cache: &Arc<RecordCache<K, V>>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        K: Eq + std::hash::Hash + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let cache = Arc::clone(cache);
        self.run(move |db| {
            let result = f(db);
            cache.clear();
            result
        })
        .await
    }

    /// Runs a synchronous operation on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Internal(format!("embedded store task failed: {e}")))?
    }
}

/// The identity records of `keys`, in order (see [`Store::identity`]).
fn read_identities<K: AsRef<str>>(
    db: &Database,
    keys: &[K],
) -> StoreResult<Vec<Option<IdentityInfo>>> {
    let txn = db.begin_read().map_err(db_err)?;
    let owners = txn.open_table(IDENTITIES).map_err(db_err)?;
    let shared = txn.open_table(IDENTITIES_SHARED).map_err(db_err)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let key = key.as_ref();
        let owner = owners
            .get(key)
            .map_err(db_err)?
            .map(|g| customer_id(g.value()));
        let shared = shared.get(key).map_err(db_err)?.is_some();
        out.push((owner.is_some() || shared).then_some(IdentityInfo { owner, shared }));
    }
    Ok(out)
}

/// Records `key` as owned by `customer` (the caller checked it is free).
fn write_claim(txn: &WriteTransaction, key: &str, customer: u128) -> StoreResult<()> {
    txn.open_table(IDENTITIES)
        .map_err(db_err)?
        .insert(key, customer)
        .map_err(db_err)?;
    txn.open_table(IDENTITIES_BY_CUSTOMER)
        .map_err(db_err)?
        .insert((customer, key), ())
        .map_err(db_err)?;
    Ok(())
}

/// Stores batches of engagements in one transaction, in order, with the
/// per-customer counters and the `engagement.recorded` events (see
/// [`GroupCommit`]): each batch's answers, one per engagement. An engagement
/// for a merged customer goes to the customer it was merged into.
fn write_engagements(
    db: &Database,
    batches: &[Vec<Engagement>],
) -> StoreResult<Vec<Vec<EngagementInsert>>> {
    let txn = db.begin_write().map_err(db_err)?;
    let owners = tx::owners_now(&txn, batches)?;
    let mut out = Vec::with_capacity(batches.len());
    // Per customer: counts to add, the latest occurred_at, the latest recorded_at.
    let mut totals: HashMap<u128, (ChannelCounts, Timestamp, Timestamp)> = HashMap::new();
    let mut events = Vec::new();
    {
        let mut engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
        let mut ids = txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
        for items in batches {
            let mut results = Vec::with_capacity(items.len());
            for e in items {
                let id = e.id.0.as_u128();
                let existing = ids.get(id).map_err(db_err)?.map(|g| g.value());
                if let Some((owner, _, _)) = existing {
                    results.push(EngagementInsert::Duplicate {
                        customer_id: customer_id(owner),
                    });
                    continue;
                }
                let named = e.customer_id.0.as_u128();
                let owner = owners.get(&named).copied().unwrap_or(named);
                let mut e = e.clone();
                e.customer_id = customer_id(owner);
                let key = engagement_key(e.customer_id, &e.occurred_at, e.id);
                let bytes = encode_engagement(&e)?;
                engagements.insert(key, bytes.as_slice()).map_err(db_err)?;
                ids.insert(id, key).map_err(db_err)?;
                let total = totals.entry(owner).or_insert((
                    ChannelCounts::default(),
                    e.occurred_at,
                    e.recorded_at,
                ));
                *total.0.get_mut(e.channel()) += 1;
                total.1 = total.1.max(e.occurred_at);
                total.2 = total.2.max(e.recorded_at);
                events.push(EventEnvelope::about(
                    e.customer_id,
                    DomainEvent::engagement_recorded(&e),
                ));
                results.push(EngagementInsert::Created);
            }
            out.push(results);
        }
    }
    for (cid, (mut added, latest, recorded)) in totals {
        let stored = {
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            read_customer(&customers, cid)?
        };
        // An engagement for a missing customer is kept, uncounted.
        let Some(stored) = stored else {
            continue;
        };
        let mut c = stored.clone();
        for channel in Channel::ALL {
            *c.counts.get_mut(channel) += *added.get_mut(channel);
        }
        c.last_engagement_at = Some(match c.last_engagement_at {
            Some(t) if t > latest => t,
            _ => latest,
        });
        c.updated_at = c.updated_at.max(recorded);
        write_customer(&txn, Some(&stored), &c)?;
    }
    tx::append_events(&txn, &events)?;
    txn.commit().map_err(db_err)?;
    Ok(out)
}

fn open_all_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(CUSTOMERS).map_err(db_err)?;
    txn.open_table(CUSTOMERS_BY_UPDATED).map_err(db_err)?;
    txn.open_table(IDENTITIES).map_err(db_err)?;
    txn.open_table(IDENTITIES_BY_CUSTOMER).map_err(db_err)?;
    txn.open_table(ENGAGEMENTS).map_err(db_err)?;
    txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
    txn.open_table(USERS).map_err(db_err)?;
    txn.open_table(USERS_BY_EMAIL).map_err(db_err)?;
    txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
    txn.open_table(REFRESH_BY_FAMILY).map_err(db_err)?;
    txn.open_table(REFRESH_BY_USER).map_err(db_err)?;
    txn.open_table(API_KEYS).map_err(db_err)?;
    txn.open_table(API_KEYS_BY_HASH).map_err(db_err)?;
    txn.open_table(tx::EVENTS).map_err(db_err)?;
    txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
    txn.open_table(IDENTITIES_SHARED).map_err(db_err)?;
    txn.open_table(MERGES).map_err(db_err)?;
    txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
    txn.open_table(SUGGESTIONS).map_err(db_err)?;
    txn.open_table(DEVICES).map_err(db_err)?;
    txn.open_table(DEVICES_BY_HASH).map_err(db_err)?;
    txn.open_table(CALL_SIGNALS).map_err(db_err)?;
    Ok(())
}

/// Reads a record through a unique secondary index (`email → id → user`).
fn read_via_index<T: DeserializeOwned>(
    db: &Database,
    index: TableDefinition<'static, &'static str, u128>,
    records: TableDefinition<'static, u128, &'static [u8]>,
    key: &str,
    what: &str,
) -> StoreResult<Option<T>> {
    let txn = db.begin_read().map_err(db_err)?;
    let ids = txn.open_table(index).map_err(db_err)?;
    let Some(id) = ids.get(key).map_err(db_err)?.map(|g| g.value()) else {
        return Ok(None);
    };
    let records = txn.open_table(records).map_err(db_err)?;
    match records.get(id).map_err(db_err)? {
        Some(bytes) => decode(what, bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Inserts a record with a unique hash (an API key's, a device token's) and
/// its `hash → id` index entry; `Conflict` when the id or the hash is taken.
fn insert_with_unique_hash(
    db: &Database,
    (records, index): (
        TableDefinition<'static, u128, &'static [u8]>,
        TableDefinition<'static, &'static str, u128>,
    ),
    id: u128,
    hash: &str,
    bytes: &[u8],
    label: &str,
    events: &[EventEnvelope],
) -> StoreResult<()> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut records = txn.open_table(records).map_err(db_err)?;
        let mut by_hash = txn.open_table(index).map_err(db_err)?;
        if records.get(id).map_err(db_err)?.is_some() {
            return Err(StoreError::Conflict(format!("{label} exists")));
        }
        if by_hash.get(hash).map_err(db_err)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "{label}: its hash belongs to another record"
            )));
        }
        records.insert(id, bytes).map_err(db_err)?;
        by_hash.insert(hash, id).map_err(db_err)?;
    }
    tx::append_events(&txn, events)?;
    txn.commit().map_err(db_err)
}

/// Changes one JSON record in place: `change` says whether it changed
/// anything, and only then is it written, with the events `events` gives
/// for the changed record. False when there is no record.
fn update_record<T: Serialize + DeserializeOwned>(
    db: &Database,
    table: TableDefinition<'static, u128, &'static [u8]>,
    id: u128,
    what: &str,
    change: impl FnOnce(&mut T) -> bool,
    events: impl FnOnce(&T) -> Vec<EventEnvelope>,
) -> StoreResult<bool> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut records = txn.open_table(table).map_err(db_err)?;
        let mut record: T = match records.get(id).map_err(db_err)? {
            Some(bytes) => decode(what, bytes.value())?,
            None => return Ok(false),
        };
        if !change(&mut record) {
            return Ok(false);
        }
        let bytes = encode(what, &record)?;
        records.insert(id, bytes.as_slice()).map_err(db_err)?;
        tx::append_events(&txn, &events(&record))?;
    }
    txn.commit().map_err(db_err)?;
    Ok(true)
}

// --- encoding ---

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    StoreError::Internal(format!("embedded store: {}", e.to_string().to_lowercase()))
}

fn encode<T: Serialize>(what: &str, value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode {what}: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Internal(format!("corrupt {what} record: {e}")))
}

/// Microseconds since the epoch, mapped so that unsigned order is time order.
fn time_key(t: &Timestamp) -> u64 {
    (t.timestamp_micros() as u64) ^ (1 << 63)
}

/// The engagements key: newest first, ties larger id first.
fn engagement_key(
    customer: CustomerId,
    occurred_at: &Timestamp,
    id: EngagementId,
) -> EngagementKey {
    (
        customer.0.as_u128(),
        !time_key(occurred_at),
        !id.0.as_u128(),
    )
}

fn channel_code(channel: Channel) -> u8 {
    match channel {
        Channel::Web => 0,
        Channel::Call => 1,
        Channel::Sms => 2,
        Channel::Whatsapp => 3,
        Channel::Email => 4,
    }
}

fn encode_engagement(e: &Engagement) -> StoreResult<Vec<u8>> {
    let mut out = vec![channel_code(e.channel())];
    serde_json::to_writer(&mut out, e)
        .map_err(|err| StoreError::Internal(format!("cannot encode engagement: {err}")))?;
    Ok(out)
}

fn decode_engagement(bytes: &[u8]) -> StoreResult<Engagement> {
    match bytes.split_first() {
        Some((_, json)) => decode("engagement", json),
        None => Err(StoreError::Internal(
            "corrupt engagement record: empty".into(),
        )),
    }
}

fn customer_id(raw: u128) -> CustomerId {
    CustomerId(Uuid::from_u128(raw))
}

// --- transaction bodies shared by several operations ---

fn read_customer(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> StoreResult<Option<Customer>> {
    match table.get(id).map_err(db_err)? {
        Some(bytes) => decode("customer", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes a customer and moves its `customers_by_updated` entry.
fn write_customer(
    txn: &WriteTransaction,
    previous: Option<&Customer>,
    customer: &Customer,
) -> StoreResult<()> {
    let id = customer.id.0.as_u128();
    let bytes = encode("customer", customer)?;
    txn.open_table(CUSTOMERS)
        .map_err(db_err)?
        .insert(id, bytes.as_slice())
        .map_err(db_err)?;
    let mut by_updated = txn.open_table(CUSTOMERS_BY_UPDATED).map_err(db_err)?;
    if let Some(previous) = previous {
        by_updated
            .remove((time_key(&previous.updated_at), id))
            .map_err(db_err)?;
    }
    by_updated
        .insert((time_key(&customer.updated_at), id), ())
        .map_err(db_err)?;
    Ok(())
}

fn read_refresh(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    hash: &str,
) -> StoreResult<Option<RefreshToken>> {
    match table.get(hash).map_err(db_err)? {
        Some(bytes) => decode("refresh token", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Marks the given refresh tokens revoked.
fn revoke_tokens(txn: &WriteTransaction, hashes: &[String]) -> StoreResult<()> {
    let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
    for hash in hashes {
        if let Some(mut token) = read_refresh(&tokens, hash)? {
            if !token.revoked {
                token.revoked = true;
                let bytes = encode("refresh token", &token)?;
                tokens
                    .insert(hash.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            txn.open_table(CUSTOMERS).map_err(db_err)?;
            Ok(())
        })
        .await
    }

    // --- customers ---

    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()> {
        let customer = customer.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
                if customers
                    .get(customer.id.0.as_u128())
                    .map_err(db_err)?
                    .is_some()
                {
                    return Err(StoreError::Conflict(format!(
                        "customer {} exists",
                        customer.id
                    )));
                }
            }
            write_customer(&txn, None, &customer)?;
            tx::append_events(
                &txn,
                &[EventEnvelope::about(
                    customer.id,
                    DomainEvent::CustomerCreated {},
                )],
            )?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        // A point read: resolving an identifier makes one per owner.
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            read_customer(&customers, id.0.as_u128())
        })
    }

    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.extend(read_customer(&customers, id.0.as_u128())?);
            }
            Ok(found)
        })
        .await
    }

    async fn list_customers(
        &self,
        updated_since: Option<Timestamp>,
        after: Option<CustomerCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Customer>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |db| {
            let since = updated_since.map(|t| (time_key(&t), 0u128));
            let cursor = after.map(|c| (time_key(&c.updated_at), c.id.0.as_u128()));
            let start: Bound<(u64, u128)> = match (since, cursor) {
                (Some(s), Some(c)) if c >= s => Bound::Excluded(c),
                (Some(s), _) => Bound::Included(s),
                (None, Some(c)) => Bound::Excluded(c),
                (None, None) => Bound::Unbounded,
            };
            let txn = db.begin_read().map_err(db_err)?;
            let by_updated = txn.open_table(CUSTOMERS_BY_UPDATED).map_err(db_err)?;
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in by_updated
                .range::<(u64, u128)>((start, Bound::Unbounded))
                .map_err(db_err)?
            {
                let (k, _) = entry.map_err(db_err)?;
                let (_, id) = k.value();
                // The index and the records change in one transaction, so a
                // miss would be corruption; skip it rather than fail the list.
                if let Some(c) = read_customer(&customers, id)? {
                    out.push(c);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    // --- identities ---

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let identities = txn.open_table(IDENTITIES).map_err(db_err)?;
            let owner = identities
                .get(key.as_str())
                .map_err(db_err)?
                .map(|g| g.value());
            Ok(owner.map(customer_id))
        })
        .await
    }

    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>> {
        self.run(move |db| {
            let cid = customer.0.as_u128();
            let txn = db.begin_read().map_err(db_err)?;
            let by_customer = txn.open_table(IDENTITIES_BY_CUSTOMER).map_err(db_err)?;
            let mut keys = Vec::new();
            for entry in by_customer.range((cid, "")..).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (owner, key) = k.value();
                if owner != cid {
                    break;
                }
                keys.push(key.to_string());
            }
            Ok(keys)
        })
        .await
    }

    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        // A point read: every identifier of every write is looked up.
        self.read_now(|db| Ok(read_identities(db, &[key])?.pop().flatten()))
    }

    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>> {
        let keys = keys.to_vec();
        self.run(move |db| read_identities(db, &keys)).await
    }

    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let new = new.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut created = Vec::with_capacity(new.len());
            for (customer, keys) in &new {
                let cid = customer.id.0.as_u128();
                let free = {
                    let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
                    let identities = txn.open_table(IDENTITIES).map_err(db_err)?;
                    let mut free = customers.get(cid).map_err(db_err)?.is_none();
                    for key in keys {
                        free = free && identities.get(key.as_str()).map_err(db_err)?.is_none();
                    }
                    free
                };
                if free {
                    write_customer(&txn, None, customer)?;
                    for key in keys {
                        write_claim(&txn, key, cid)?;
                    }
                    tx::append_events(
                        &txn,
                        &[EventEnvelope::about(
                            customer.id,
                            DomainEvent::CustomerCreated {},
                        )],
                    )?;
                }
                created.push(free);
            }
            txn.commit().map_err(db_err)?;
            Ok(created)
        })
        .await
    }

    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(IDENTITIES_SHARED).map_err(db_err)?;
                if shared {
                    table.insert(key.as_str(), ()).map_err(db_err)?;
                } else {
                    table.remove(key.as_str()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    // --- merges ---

    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let merges = txn.open_table(MERGES).map_err(db_err)?;
            match merges.get(id.0.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("merge", bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        self.run(move |db| {
            let c = customer.0.as_u128();
            let txn = db.begin_read().map_err(db_err)?;
            let by_customer = txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
            let merges = txn.open_table(MERGES).map_err(db_err)?;
            let mut out: Vec<MergeRecord> = Vec::new();
            for entry in by_customer
                .range((c, 0u128)..=(c, u128::MAX))
                .map_err(db_err)?
            {
                let (k, _) = entry.map_err(db_err)?;
                if let Some(bytes) = merges.get(k.value().1).map_err(db_err)? {
                    out.push(decode("merge", bytes.value())?);
                }
            }
            out.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()> {
        let suggestion = suggestion.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let bytes = encode("suggestion", &suggestion)?;
                txn.open_table(SUGGESTIONS)
                    .map_err(db_err)?
                    .insert(suggestion.key().as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>> {
        let after = after.map(str::to_string);
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(SUGGESTIONS).map_err(db_err)?;
            let start: Bound<&str> = match &after {
                Some(a) => Bound::Excluded(a.as_str()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for entry in table
                .range::<&str>((start, Bound::Unbounded))
                .map_err(db_err)?
                .take(limit)
            {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("suggestion", v.value())?);
            }
            Ok(out)
        })
        .await
    }

    // --- engagements ---

    async fn insert_engagements(&self, items: &[Engagement]) -> StoreResult<Vec<EngagementInsert>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.engagement_writes
            .submit(&self.db, items.to_vec())
            .await
    }

    async fn get_engagement(&self, id: EngagementId) -> StoreResult<Option<Engagement>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let ids = txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
            let Some(key) = ids.get(id.0.as_u128()).map_err(db_err)?.map(|g| g.value()) else {
                return Ok(None);
            };
            let engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            match engagements.get(key).map_err(db_err)? {
                Some(bytes) => decode_engagement(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_engagements(
        &self,
        customer: CustomerId,
        filter: &EngagementFilter,
        after: Option<EngagementCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Engagement>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = filter.clone();
        self.run(move |db| {
            let cid = customer.0.as_u128();
            let wanted = filter.channel.map(channel_code);
            // occurred_at < until  <=>  newest-first time > !time_key(until)
            let until = filter.until.map(|t| !time_key(&t));
            // occurred_at >= since <=>  newest-first time <= !time_key(since)
            let since = filter.since.map(|t| !time_key(&t));
            let cursor = after.map(|c| engagement_key(customer, &c.occurred_at, c.id));
            let mut start: EngagementKey = (cid, 0, 0);
            if let Some(u) = until {
                start = start.max((cid, u, 0));
            }
            if let Some(c) = cursor {
                start = start.max(c);
            }
            let txn = db.begin_read().map_err(db_err)?;
            let engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in engagements
                .range(start..=(cid, u64::MAX, u128::MAX))
                .map_err(db_err)?
            {
                let (k, v) = entry.map_err(db_err)?;
                let key = k.value();
                if since.is_some_and(|s| key.1 > s) {
                    break;
                }
                if until.is_some_and(|u| key.1 <= u) || cursor.is_some_and(|c| key <= c) {
                    continue;
                }
                let bytes = v.value();
                if wanted.is_some_and(|w| bytes.first() != Some(&w)) {
                    continue;
                }
                out.push(decode_engagement(bytes)?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    // --- staff users ---

    async fn insert_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        let user = user.clone();
        let events = events.to_vec();
        self.run_clearing(&self.users, move |db| {
            let id = user.id.0.as_u128();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut users = txn.open_table(USERS).map_err(db_err)?;
                let mut by_email = txn.open_table(USERS_BY_EMAIL).map_err(db_err)?;
                if users.get(id).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict(format!("user {} exists", user.id)));
                }
                if by_email.get(user.email.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("the email is taken".into()));
                }
                let bytes = encode("user", &user)?;
                users.insert(id, bytes.as_slice()).map_err(db_err)?;
                by_email.insert(user.email.as_str(), id).map_err(db_err)?;
            }
            tx::append_events(&txn, &events)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let epoch = match self.users.get(&id) {
            Ok(user) => return Ok(Some(user)),
            Err(epoch) => epoch,
        };
        let user: Option<User> = self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            match users.get(id.0.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("user", bytes.value()).map(Some),
                None => Ok(None),
            }
        })?;
        if let Some(user) = &user {
            self.users.keep(epoch, id, user.clone());
        }
        Ok(user)
    }

    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        let email = email.clone();
        self.run(move |db| read_via_index(db, USERS_BY_EMAIL, USERS, email.as_str(), "user"))
            .await
    }

    async fn update_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        let user = user.clone();
        let events = events.to_vec();
        self.run_clearing(&self.users, move |db| {
            let id = user.id.0.as_u128();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut users = txn.open_table(USERS).map_err(db_err)?;
                let mut by_email = txn.open_table(USERS_BY_EMAIL).map_err(db_err)?;
                let stored: User = match users.get(id).map_err(db_err)? {
                    Some(bytes) => decode("user", bytes.value())?,
                    None => return Err(StoreError::NotFound),
                };
                if stored.email != user.email {
                    let owner = by_email
                        .get(user.email.as_str())
                        .map_err(db_err)?
                        .map(|g| g.value());
                    if owner.is_some_and(|o| o != id) {
                        return Err(StoreError::Conflict("the email is taken".into()));
                    }
                    by_email.remove(stored.email.as_str()).map_err(db_err)?;
                    by_email.insert(user.email.as_str(), id).map_err(db_err)?;
                }
                let bytes = encode("user", &user)?;
                users.insert(id, bytes.as_slice()).map_err(db_err)?;
            }
            tx::append_events(&txn, &events)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |db| {
            let start = match after {
                Some(id) => Bound::Excluded(id.0.as_u128()),
                None => Bound::Unbounded,
            };
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in users
                .range::<u128>((start, Bound::Unbounded))
                .map_err(db_err)?
            {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("user", v.value())?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn count_users(&self) -> StoreResult<u64> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            users.len().map_err(db_err)
        })
        .await
    }

    // --- refresh tokens ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let token = token.clone();
        self.run(move |db| {
            let hash = token.token_hash.as_str();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
                if tokens.get(hash).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("the refresh token exists".into()));
                }
                let bytes = encode("refresh token", &token)?;
                tokens.insert(hash, bytes.as_slice()).map_err(db_err)?;
                txn.open_table(REFRESH_BY_FAMILY)
                    .map_err(db_err)?
                    .insert((token.family_id.as_str(), hash), ())
                    .map_err(db_err)?;
                txn.open_table(REFRESH_BY_USER)
                    .map_err(db_err)?
                    .insert((token.user_id.0.as_u128(), hash), ())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let hash = token_hash.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
            read_refresh(&tokens, &hash)
        })
        .await
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let hash = token_hash.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(db_err)?;
                let Some(mut token) = read_refresh(&tokens, &hash)? else {
                    return Ok(false);
                };
                if token.used || token.revoked {
                    return Ok(false);
                }
                token.used = true;
                let bytes = encode("refresh token", &token)?;
                tokens
                    .insert(hash.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        let family = family_id.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut hashes = Vec::new();
            {
                let by_family = txn.open_table(REFRESH_BY_FAMILY).map_err(db_err)?;
                for entry in by_family.range((family.as_str(), "")..).map_err(db_err)? {
                    let (k, _) = entry.map_err(db_err)?;
                    let (f, hash) = k.value();
                    if f != family {
                        break;
                    }
                    hashes.push(hash.to_string());
                }
            }
            revoke_tokens(&txn, &hashes)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()> {
        self.run(move |db| {
            let uid = user.0.as_u128();
            let txn = db.begin_write().map_err(db_err)?;
            let mut hashes = Vec::new();
            {
                let by_user = txn.open_table(REFRESH_BY_USER).map_err(db_err)?;
                for entry in by_user.range((uid, "")..).map_err(db_err)? {
                    let (k, _) = entry.map_err(db_err)?;
                    let (u, hash) = k.value();
                    if u != uid {
                        break;
                    }
                    hashes.push(hash.to_string());
                }
            }
            revoke_tokens(&txn, &hashes)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    // --- API keys ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let bytes = encode("api key", key)?;
        let (id, hash) = (key.id.0.as_u128(), key.key_hash.clone());
        let label = format!("api key {}", key.id);
        self.run(move |db| {
            insert_with_unique_hash(
                db,
                (API_KEYS, API_KEYS_BY_HASH),
                id,
                &hash,
                &bytes,
                &label,
                &[],
            )
        })
        .await
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        self.read_now(|db| read_via_index(db, API_KEYS_BY_HASH, API_KEYS, key_hash, "api key"))
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let keys = txn.open_table(API_KEYS).map_err(db_err)?;
            let mut out: Vec<ApiKey> = Vec::new();
            for entry in keys.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("api key", v.value())?);
            }
            out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool> {
        self.run(move |db| {
            update_record(
                db,
                API_KEYS,
                id.0.as_u128(),
                "api key",
                |key: &mut ApiKey| {
                    let fresh = key.revoked_at.is_none();
                    key.revoked_at = key.revoked_at.or(Some(at));
                    fresh
                },
                |_: &ApiKey| Vec::new(),
            )
        })
        .await
    }

    // --- transactions and the event log ---

    async fn transaction(&self, work: &mut dyn TxWork) -> StoreResult<()> {
        // Waiting for the write lock and the commit's sync happen on the
        // blocking pool; the work's operations in between are synchronous
        // reads and writes of pages redb holds in memory.
        let db = Arc::clone(&self.db);
        let txn = tokio::task::spawn_blocking(move || db.begin_write().map_err(db_err))
            .await
            .map_err(|e| StoreError::Internal(format!("embedded store task failed: {e}")))??;
        let mut tx = tx::RedbTx { txn };
        work.run(&mut tx).await?;
        let tx::RedbTx { txn } = tx;
        tokio::task::spawn_blocking(move || txn.commit().map_err(db_err))
            .await
            .map_err(|e| StoreError::Internal(format!("embedded store task failed: {e}")))?
    }

    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
            let log = txn.open_table(tx::EVENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in unrelayed.iter().map_err(db_err)?.take(limit) {
                let id = entry.map_err(db_err)?.0.value();
                if let Some(bytes) = log.get(id).map_err(db_err)? {
                    out.push(decode("event", bytes.value()).map_err(tx::corrupt_event)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn mark_events_relayed(&self, ids: &[Uuid]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
                for id in ids {
                    unrelayed.remove(id.as_u128()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn unrelayed_count(&self) -> StoreResult<u64> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
            unrelayed.len().map_err(db_err)
        })
        .await
    }

    async fn events_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<EventEnvelope>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let log = txn.open_table(tx::EVENTS).map_err(db_err)?;
            let start: Bound<u128> = match after {
                Some(a) => Bound::Excluded(a.as_u128()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for entry in log
                .range::<u128>((start, Bound::Unbounded))
                .map_err(db_err)?
                .take(limit)
            {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("event", v.value()).map_err(tx::corrupt_event)?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut pruned = 0u64;
            {
                let mut log = txn.open_table(tx::EVENTS).map_err(db_err)?;
                let unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
                let mut gone = Vec::new();
                // Ids are in commit order, so the old ones come first.
                for entry in log.iter().map_err(db_err)?.take(DELETE_CHUNK) {
                    let (k, v) = entry.map_err(db_err)?;
                    let event: EventEnvelope =
                        decode("event", v.value()).map_err(tx::corrupt_event)?;
                    if event.occurred_at >= before {
                        break;
                    }
                    if unrelayed.get(k.value()).map_err(db_err)?.is_none() {
                        gone.push(k.value());
                    }
                }
                for id in gone {
                    log.remove(id).map_err(db_err)?;
                    pruned += 1;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(pruned)
        })
        .await
    }

    async fn relay_lease(&self, _holder: &str, _ttl: std::time::Duration) -> StoreResult<bool> {
        // One process holds the file, so its relay is the only one.
        Ok(true)
    }

    // --- devices (by SHA-256 of the device token) ---

    async fn insert_device(&self, device: &Device) -> StoreResult<()> {
        let bytes = encode("device", device)?;
        let (id, hash) = (device.id.0.as_u128(), device.token_hash.clone());
        let label = format!("device {}", device.id);
        let events = [EventEnvelope::new(
            None,
            DomainEvent::DeviceEnrolled {
                device_id: device.id,
                user_id: device.user_id,
            },
        )];
        self.run_clearing(&self.devices, move |db| {
            insert_with_unique_hash(
                db,
                (DEVICES, DEVICES_BY_HASH),
                id,
                &hash,
                &bytes,
                &label,
                &events,
            )
        })
        .await
    }

    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let devices = txn.open_table(DEVICES).map_err(db_err)?;
            match devices.get(id.0.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("device", bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>> {
        let epoch = match self.devices.get(token_hash) {
            Ok(device) => return Ok(Some(device)),
            Err(epoch) => epoch,
        };
        let device: Option<Device> =
            self.read_now(|db| read_via_index(db, DEVICES_BY_HASH, DEVICES, token_hash, "device"))?;
        if let Some(device) = &device {
            self.devices
                .keep(epoch, token_hash.to_string(), device.clone());
        }
        Ok(device)
    }

    async fn list_devices(&self, user: Option<UserId>) -> StoreResult<Vec<Device>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let devices = txn.open_table(DEVICES).map_err(db_err)?;
            let mut out: Vec<Device> = Vec::new();
            for entry in devices.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                let device: Device = decode("device", v.value())?;
                if user.is_none_or(|u| u == device.user_id) {
                    out.push(device);
                }
            }
            out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn revoke_device(&self, id: DeviceId, at: Timestamp) -> StoreResult<bool> {
        self.run_clearing(&self.devices, move |db| {
            update_record(
                db,
                DEVICES,
                id.0.as_u128(),
                "device",
                |device: &mut Device| {
                    let fresh = device.revoked_at.is_none();
                    device.revoked_at = device.revoked_at.or(Some(at));
                    fresh
                },
                |device: &Device| {
                    vec![EventEnvelope::new(
                        None,
                        DomainEvent::DeviceRevoked {
                            device_id: device.id,
                            user_id: device.user_id,
                        },
                    )]
                },
            )
        })
        .await
    }

    async fn set_device_last_upload(&self, id: DeviceId, at: Timestamp) -> StoreResult<()> {
        self.run_clearing(&self.devices, move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut devices = txn.open_table(DEVICES).map_err(db_err)?;
                let mut device: Device = match devices.get(id.0.as_u128()).map_err(db_err)? {
                    Some(bytes) => decode("device", bytes.value())?,
                    None => return Err(StoreError::NotFound),
                };
                device.last_upload_at = Some(at);
                let bytes = encode("device", &device)?;
                devices
                    .insert(id.0.as_u128(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    // --- incoming-call signals ---

    async fn insert_call_signals(&self, signals: Vec<CallSignal>) -> StoreResult<()> {
        if signals.is_empty() {
            return Ok(());
        }
        let synced = Arc::clone(&self.signals_synced);
        self.run(move |db| {
            // Write transactions take turns anyway: holding the lock across
            // one costs nothing.
            let mut synced = synced.lock();
            let durable = synced.is_none_or(|at| at.elapsed() >= SIGNALS_SYNC_EVERY);
            let mut txn = db.begin_write().map_err(db_err)?;
            if !durable {
                txn.set_durability(Durability::None);
            }
            {
                let mut table = txn.open_table(CALL_SIGNALS).map_err(db_err)?;
                // A record written before (a retried batch) has the same key
                // and content: writing it again changes nothing, and costs
                // less than looking first.
                for (key, record) in call_signals::records(signals) {
                    table.insert(key, record.as_slice()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            if durable {
                *synced = Some(std::time::Instant::now());
            }
            Ok(())
        })
        .await
    }

    async fn list_call_signals(
        &self,
        user: Option<UserId>,
        since: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<CallSignal>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CALL_SIGNALS).map_err(db_err)?;
            call_signals::list(&table, user, since, limit)
        })
        .await
    }

    async fn delete_call_signals_before(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let mut deleted = HashSet::new();
            // In bounded transactions, so that a long backlog does not hold
            // the write lock for long.
            loop {
                let txn = db.begin_write().map_err(db_err)?;
                let done = {
                    let mut table = txn.open_table(CALL_SIGNALS).map_err(db_err)?;
                    let n =
                        call_signals::delete_whole(&mut table, before, DELETE_CHUNK, &mut deleted)?;
                    if n < DELETE_CHUNK {
                        call_signals::trim_straddling(&mut table, before, &mut deleted)?;
                    }
                    n < DELETE_CHUNK
                };
                txn.commit().map_err(db_err)?;
                if done {
                    return Ok(deleted.len() as u64);
                }
            }
        })
        .await
    }
}
