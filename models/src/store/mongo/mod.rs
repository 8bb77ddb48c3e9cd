//! The MongoDB adapter, on the official `mongodb` driver.
//!
//! Collections and indexes follow `DESIGN.md` ("Data"). Records are the domain
//! structs serialised with serde; the struct's key field (`id`, or `token_hash`
//! for refresh tokens) is stored as `_id`, ids in their string UUID form and
//! timestamps as fixed-width RFC 3339 strings (they sort in time order).
//!
//! # Writes
//! Every write that has events (customers, identities, engagements, merges,
//! users, devices) is one multi-document transaction together with its events
//! in the `events` collection (see [`tx`] for the runner and its retries), so
//! MongoDB must run as a replica set (or a sharded cluster): [`MongoStore::connect`]
//! refuses a standalone server. Writes without events (tokens, API keys, call
//! signals, shared marks, suggestions) are single-document or idempotent
//! batch writes outside transactions.
//!
//! Race-freedom still comes from unique keys where it can: an identifier is
//! owned through its record in `identities`, keyed by the identifier, and two
//! transactions that claim it conflict on that key (one of them reruns).
//!
//! One file per aggregate: [`customers`] (customers and identities),
//! [`engagements`], [`merges`] (merges and suggestions), [`staff`] (users,
//! refresh tokens, API keys), [`devices`] (devices and call signals),
//! [`events`] (the event log and the relay lease), [`tx`] (transactions).

mod codec;
mod customers;
mod devices;
mod engagements;
mod events;
mod merges;
mod staff;
mod tx;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use self::codec::map_err;
use super::{
    CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, Store, StoreError,
    StoreResult, TxWork,
};
use crate::customer::Customer;
use crate::device::{CallSignal, Device};
use crate::email::Email;
use crate::engagement::Engagement;
use crate::event::EventEnvelope;
use crate::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord, Suggestion};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::time::Timestamp;

/// How long an operation waits for a usable server before failing with
/// `Unavailable`, unless the URI sets `serverSelectionTimeoutMS`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening one connection may take, unless the URI sets `connectTimeoutMS`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do about a standalone server.
const NEEDS_REPLICA_SET: &str = "MongoDB must run as a replica set (transactions): start \
    mongod with --replSet rs0 and run rs.initiate(), or use the docker compose file \
    (docker/compose.yaml)";

/// Stripes of [`MongoStore::customer_locks`].
const CUSTOMER_LOCKS: usize = 256;

const CUSTOMERS: &str = "customers";
const IDENTITIES: &str = "identities";
const ENGAGEMENTS: &str = "engagements";
const USERS: &str = "users";
const REFRESH_TOKENS: &str = "refresh_tokens";
const API_KEYS: &str = "api_keys";
const MERGES: &str = "merges";
const SUGGESTIONS: &str = "suggestions";
const DEVICES: &str = "devices";
const CALL_SIGNALS: &str = "call_signals";
const EVENTS: &str = "events";
const RELAY_LEASE: &str = "relay_lease";

/// A [`Store`] on a MongoDB replica set (or a server speaking its wire protocol).
#[derive(Clone, Debug)]
pub struct MongoStore {
    client: Client,
    db: Database,
    customers: Collection<Document>,
    identities: Collection<Document>,
    engagements: Collection<Document>,
    users: Collection<Document>,
    refresh_tokens: Collection<Document>,
    api_keys: Collection<Document>,
    merges: Collection<Document>,
    suggestions: Collection<Document>,
    devices: Collection<Document>,
    call_signals: Collection<Document>,
    events: Collection<Document>,
    relay_lease: Collection<Document>,
    /// Striped by customer: engagement batches of this process that name
    /// the same customer take turns instead of conflicting (see
    /// [`engagements`]).
    customer_locks: Arc<[tokio::sync::Mutex<()>]>,
}

impl MongoStore {
    /// Connects to `uri`, checks that the server answers and runs as a
    /// replica set (failing fast with `Unavailable` when not) and creates the
    /// indexes (idempotent).
    pub async fn connect(uri: &str, database: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Unavailable(format!("invalid MongoDB URI: {e}")))?;
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        }
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(CONNECT_TIMEOUT);
        }
        if options.app_name.is_none() {
            options.app_name = Some("crm".to_string());
        }
        // Hosts only: the URI may carry credentials.
        let hosts = options
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::with_options(options)
            .map_err(|e| StoreError::Unavailable(format!("MongoDB client for {hosts}: {e}")))?;
        let db = client.database(database);
        let store = MongoStore {
            customers: db.collection(CUSTOMERS),
            identities: db.collection(IDENTITIES),
            engagements: db.collection(ENGAGEMENTS),
            users: db.collection(USERS),
            refresh_tokens: db.collection(REFRESH_TOKENS),
            api_keys: db.collection(API_KEYS),
            merges: db.collection(MERGES),
            suggestions: db.collection(SUGGESTIONS),
            devices: db.collection(DEVICES),
            call_signals: db.collection(CALL_SIGNALS),
            events: db.collection(EVENTS),
            relay_lease: db.collection(RELAY_LEASE),
            customer_locks: (0..CUSTOMER_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            client,
            db,
        };
        store.check_replica_set(&hosts).await?;
        store.create_indexes().await?;
        Ok(store)
    }

    /// The database this store works in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The driver's client (for health checks and tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Asks the server what it is: a replica set member (`setName`) or a
    /// mongos (`msg: "isdbgrid"`) can run transactions, a standalone cannot.
    async fn check_replica_set(&self, hosts: &str) -> StoreResult<()> {
        let admin = self.client.database("admin");
        let unreachable = |e: mongodb::error::Error| {
            StoreError::Unavailable(format!("cannot reach MongoDB at {hosts}: {e}"))
        };
        let hello = match admin.run_command(doc! { "hello": 1 }).await {
            Ok(reply) => reply,
            // Servers before 4.4.2 know only the legacy name.
            Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(_)) => admin
                .run_command(doc! { "isMaster": 1 })
                .await
                .map_err(unreachable)?,
            Err(e) => return Err(unreachable(e)),
        };
        let replica_set = hello.get_str("setName").is_ok_and(|name| !name.is_empty());
        let mongos = hello.get_str("msg") == Ok("isdbgrid");
        if replica_set || mongos {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "MongoDB at {hosts} is a standalone server. {NEEDS_REPLICA_SET}"
            )))
        }
    }

    /// Creates the indexes, and so every collection a transaction writes:
    /// servers before 4.4 refuse to create a collection inside one.
    async fn create_indexes(&self) -> StoreResult<()> {
        let unique = || IndexOptions::builder().unique(true).build();
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        self.customers
            .create_indexes([plain(doc! { "updated_at": 1, "_id": 1 })])
            .await
            .map_err(map_err)?;
        self.identities
            .create_indexes([plain(doc! { "customer_id": 1 })])
            .await
            .map_err(map_err)?;
        // Unique only where both parts are present: an engagement recorded by a
        // user or an API key has a client event id but no device.
        let client_event = IndexOptions::builder()
            .unique(true)
            .partial_filter_expression(doc! {
                "source.device_id": { "$exists": true },
                "source.client_event_id": { "$exists": true },
            })
            .build();
        // Timelines read newest first, `(occurred_at, _id)` descending; MongoDB
        // walks this ascending index backwards for that, as fast as a descending
        // one. Ascending on purpose: secantusd 0.7 (the test server) drops
        // documents equal to an inclusive bound that ends an index scan on a
        // key followed by more keys, which a descending index hits with
        // `occurred_at >= since`.
        self.engagements
            .create_indexes([
                plain(doc! { "customer_id": 1, "occurred_at": 1, "_id": 1 }),
                IndexModel::builder()
                    .keys(doc! { "source.device_id": 1, "source.client_event_id": 1 })
                    .options(client_event)
                    .build(),
            ])
            .await
            .map_err(map_err)?;
        self.merges
            .create_indexes([
                plain(doc! { "survivor_id": 1 }),
                plain(doc! { "merged_ids": 1 }),
            ])
            .await
            .map_err(map_err)?;
        self.suggestions
            .create_indexes([plain(doc! { "customer_ids": 1 })])
            .await
            .map_err(map_err)?;
        self.users
            .create_indexes([IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(unique())
                .build()])
            .await
            .map_err(map_err)?;
        self.refresh_tokens
            .create_indexes([plain(doc! { "family_id": 1 }), plain(doc! { "user_id": 1 })])
            .await
            .map_err(map_err)?;
        self.api_keys
            .create_indexes([IndexModel::builder()
                .keys(doc! { "key_hash": 1 })
                .options(unique())
                .build()])
            .await
            .map_err(map_err)?;
        self.devices
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "token_hash": 1 })
                    .options(unique())
                    .build(),
                plain(doc! { "user_id": 1, "created_at": 1 }),
            ])
            .await
            .map_err(map_err)?;
        self.call_signals
            .create_indexes([
                plain(doc! { "at": 1, "_id": 1 }),
                plain(doc! { "customer_id": 1 }),
            ])
            .await
            .map_err(map_err)?;
        self.events
            .create_indexes([
                plain(doc! { "relayed": 1, "_id": 1 }),
                plain(doc! { "occurred_at": 1 }),
            ])
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl Store for MongoStore {
    fn kind(&self) -> &'static str {
        "mongo"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("MongoDB ping: {e}")))
    }

    // --- customers ---

    async fn transaction(&self, work: &mut dyn TxWork) -> StoreResult<()> {
        self.run_tx_work(work).await
    }

    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()> {
        self.insert_customer_tx(customer).await
    }

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        self.find_customer(id).await
    }

    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>> {
        self.find_customers(ids).await
    }

    async fn list_customers(
        &self,
        updated_since: Option<Timestamp>,
        after: Option<CustomerCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Customer>> {
        self.find_customer_page(updated_since, after, limit).await
    }

    // --- identities ---

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>> {
        Ok(self.find_identity(key).await?.and_then(|i| i.owner))
    }

    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>> {
        self.find_identities_of(customer).await
    }

    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        self.find_identity(key).await
    }

    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()> {
        self.write_identity_shared(key, shared).await
    }

    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>> {
        self.find_identities(keys).await
    }

    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>> {
        self.insert_customers_owning_tx(new).await
    }

    // --- merges and suggestions ---

    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        self.find_merge(id).await
    }

    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        self.find_merges_of(customer).await
    }

    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()> {
        self.write_suggestion(suggestion).await
    }

    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>> {
        self.find_suggestions(after, limit).await
    }

    // --- engagements ---

    async fn insert_engagements(&self, items: &[Engagement]) -> StoreResult<Vec<EngagementInsert>> {
        self.insert_engagements_tx(items).await
    }

    async fn get_engagement(&self, id: EngagementId) -> StoreResult<Option<Engagement>> {
        self.find_engagement(id).await
    }

    async fn list_engagements(
        &self,
        customer: CustomerId,
        filter: &EngagementFilter,
        after: Option<EngagementCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Engagement>> {
        self.find_engagement_page(customer, filter, after, limit)
            .await
    }

    // --- staff users ---

    async fn insert_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        self.insert_user_tx(user, events).await
    }

    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.find_user(id).await
    }

    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        self.find_user_by_email(email).await
    }

    async fn update_user(&self, user: &User, events: &[EventEnvelope]) -> StoreResult<()> {
        self.update_user_tx(user, events).await
    }

    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>> {
        self.find_users(after, limit).await
    }

    async fn count_users(&self) -> StoreResult<u64> {
        self.users
            .count_documents(Document::new())
            .await
            .map_err(map_err)
    }

    // --- refresh tokens ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        self.write_refresh_token(token).await
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        self.find_refresh_token(token_hash).await
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        self.mark_refresh_token_used(token_hash).await
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        self.revoke_refresh_tokens(doc! { "family_id": family_id })
            .await
    }

    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()> {
        self.revoke_refresh_tokens(doc! { "user_id": user.to_string() })
            .await
    }

    // --- API keys ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        self.write_api_key(key).await
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        self.find_api_key_by_hash(key_hash).await
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.find_api_keys().await
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool> {
        self.write_api_key_revoked(id, at).await
    }

    // --- the event log ---

    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        self.find_unrelayed_events(limit).await
    }

    async fn mark_events_relayed(&self, ids: &[uuid::Uuid]) -> StoreResult<()> {
        self.write_events_relayed(ids).await
    }

    async fn unrelayed_count(&self) -> StoreResult<u64> {
        self.count_unrelayed_events().await
    }

    async fn events_after(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<EventEnvelope>> {
        self.find_events_after(after, limit).await
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        self.delete_events_before(before).await
    }

    async fn relay_lease(&self, holder: &str, ttl: Duration) -> StoreResult<bool> {
        self.take_relay_lease(holder, ttl).await
    }

    // --- devices ---

    async fn insert_device(&self, device: &Device) -> StoreResult<()> {
        self.insert_device_tx(device).await
    }

    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>> {
        self.find_device(doc! { "_id": id.to_string() }).await
    }

    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>> {
        self.find_device(doc! { "token_hash": token_hash }).await
    }

    async fn list_devices(&self, user: Option<UserId>) -> StoreResult<Vec<Device>> {
        self.find_devices(user).await
    }

    async fn revoke_device(&self, id: DeviceId, at: Timestamp) -> StoreResult<bool> {
        self.revoke_device_tx(id, at).await
    }

    async fn set_device_last_upload(&self, id: DeviceId, at: Timestamp) -> StoreResult<()> {
        self.write_device_last_upload(id, at).await
    }

    // --- incoming-call signals ---

    async fn insert_call_signals(&self, signals: Vec<CallSignal>) -> StoreResult<()> {
        self.write_call_signals(signals).await
    }

    async fn list_call_signals(
        &self,
        user: Option<UserId>,
        since: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<CallSignal>> {
        self.find_call_signals(user, since, limit).await
    }

    async fn delete_call_signals_before(&self, before: Timestamp) -> StoreResult<u64> {
        self.delete_old_call_signals(before).await
    }
}
