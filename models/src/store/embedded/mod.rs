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
//! - `customers_by_updated`: (updated_at, id) → (), for
//!   [`CustomerStore::list_customers`](super::CustomerStore::list_customers).
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
//! - `imports`, `imports_by_key`, `import_rejected`: bulk imports (see `imports`).
//!
//! Times in keys are microseconds since the epoch with the sign bit flipped, so
//! that the big-endian bytes sort in time order (negative times too).
//!
//! # Layout
//! This file holds the store, its tables and the helpers every aggregate
//! uses; one file per aggregate implements its trait: `customers`
//! (customers and identities), `engagements`, `merges` (merges and
//! suggestions), `staff` (users, refresh tokens, API keys), `devices`
//! (devices and call signals, whose record format is in `call_signals`),
//! `events` (the event log); `tx` is the store inside one transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, DatabaseError, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

mod analytics;
mod analytics_days;
mod call_signals;
mod customers;
mod devices;
mod engagements;
mod events;
mod imports;
mod merges;
mod staff;
mod stored_engagement;
mod tx;
mod webhooks;

use super::group_commit::GroupCommit;
use super::record_cache::RecordCache;
use super::{EngagementInsert, Store, StoreError, StoreResult, TxWork};
use crate::customer::Customer;
use crate::device::Device;
use crate::engagement::{Channel, Engagement};
use crate::event::EventEnvelope;
use crate::ids::{CustomerId, EngagementId, UserId};
use crate::staff::User;
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
    /// Decoded daily analytics rollups, a day at a time.
    analytics_days: Arc<analytics_days::DayCache>,
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
        // A directory it creates is its owner's only (0700), like the
        // files in it.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        // Only its owner may read the store: created 0600, and an older
        // file made with the default mode is narrowed to it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let owner_only = |e: std::io::Error| {
                StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let narrowed =
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                    if let Err(e) = narrowed {
                        tracing::warn!(path = %path.display(), error = %e, "cannot make the store readable by its owner only");
                    }
                }
                Err(e) => return Err(owner_only(e)),
            }
        }
        let mut db = Database::create(&path).map_err(|e| match e {
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
        tx::compact_after_erasure(&mut db)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            engagement_writes: Arc::new(GroupCommit::new(engagements::write_engagements)),
            users: Arc::new(RecordCache::new()),
            devices: Arc::new(RecordCache::new()),
            signals_synced: Arc::new(parking_lot::Mutex::new(None)),
            analytics_days: Arc::default(),
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
    txn.open_table(tx::EVENT_CURSORS).map_err(db_err)?;
    txn.open_table(tx::META).map_err(db_err)?;
    txn.open_table(IDENTITIES_SHARED).map_err(db_err)?;
    txn.open_table(MERGES).map_err(db_err)?;
    txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
    txn.open_table(SUGGESTIONS).map_err(db_err)?;
    txn.open_table(DEVICES).map_err(db_err)?;
    txn.open_table(DEVICES_BY_HASH).map_err(db_err)?;
    txn.open_table(CALL_SIGNALS).map_err(db_err)?;
    webhooks::open_tables(txn)?;
    imports::open_tables(txn)?;
    analytics::open_tables(txn)?;
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
    let mut out = Vec::new();
    encode_engagement_into(e, &mut out)?;
    Ok(out)
}

/// [`encode_engagement`] appending to `out`.
fn encode_engagement_into(e: &Engagement, out: &mut Vec<u8>) -> StoreResult<()> {
    out.push(channel_code(e.channel()));
    serde_json::to_writer(&mut *out, e)
        .map_err(|err| StoreError::Internal(format!("cannot encode engagement: {err}")))
}

fn decode_engagement(bytes: &[u8]) -> StoreResult<Engagement> {
    match bytes.split_first() {
        Some((_, json)) => match stored_engagement::decode(json) {
            Some(e) => Ok(e),
            None => decode("engagement", json),
        },
        None => Err(StoreError::Internal(
            "corrupt engagement record: empty".into(),
        )),
    }
}

fn customer_id(raw: u128) -> CustomerId {
    CustomerId(Uuid::from_u128(raw))
}

// --- records that several operations read and write ---

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
    let mut customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
    let mut by_updated = txn.open_table(CUSTOMERS_BY_UPDATED).map_err(db_err)?;
    put_customer(&mut customers, &mut by_updated, previous, customer)
}

/// [`write_customer`] with both tables open already (a write of many
/// customers opens them once).
fn put_customer(
    customers: &mut redb::Table<'_, u128, &'static [u8]>,
    by_updated: &mut redb::Table<'_, (u64, u128), ()>,
    previous: Option<&Customer>,
    customer: &Customer,
) -> StoreResult<()> {
    let id = customer.id.0.as_u128();
    let bytes = encode("customer", customer)?;
    customers.insert(id, bytes.as_slice()).map_err(db_err)?;
    let now = time_key(&customer.updated_at);
    match previous.map(|p| time_key(&p.updated_at)) {
        // Unchanged: the entry stays where it is.
        Some(before) if before == now => return Ok(()),
        Some(before) => {
            by_updated.remove((before, id)).map_err(db_err)?;
        }
        None => {}
    }
    by_updated.insert((now, id), ()).map_err(db_err)?;
    Ok(())
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
}
