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
//! One file per aggregate, each implementing its trait: [`customers`]
//! (customers and identities), [`engagements`], [`merges`] (merges and
//! suggestions), [`staff`] (users, refresh tokens, API keys), [`devices`]
//! (devices and call signals), [`events`] (the event log and the relay
//! lease); [`tx`] runs transactions; this file connects and implements
//! [`Store`] itself.

mod analytics;
mod codec;
mod customers;
mod devices;
mod engagements;
mod events;
mod imports;
mod merges;
mod staff;
mod tx;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use self::codec::map_err;
use super::{Store, StoreError, StoreResult, TxWork};

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
            .create_indexes([
                plain(doc! { "updated_at": 1, "_id": 1 }),
                // Caller ID from the store when the index is down.
                plain(doc! { "phones": 1 }),
            ])
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
                // The feed's order (see `events::SEQ`).
                plain(doc! { "seq": 1, "_id": 1 }),
            ])
            .await
            .map_err(map_err)?;
        // Every instance reads the sessions revoked since its last look.
        self.db
            .collection::<Document>("revoked_sessions")
            .create_index(plain(doc! { "revoked_at": 1 }))
            .await
            .map_err(map_err)?;
        webhooks::create_indexes(self).await?;
        imports::create_indexes(self).await?;
        analytics::create_indexes(self).await?;
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

    async fn transaction(&self, work: &mut dyn TxWork) -> StoreResult<()> {
        self.run_tx_work(work).await
    }
}
