//! The MongoDB adapter, on the official `mongodb` driver.
//!
//! Collections and indexes follow `DESIGN.md` ("Data"). Records are the domain
//! structs serialised with serde; the struct's key field (`id`, or `token_hash`
//! for refresh tokens) is stored as `_id`, ids in their string UUID form and
//! timestamps as fixed-width RFC 3339 strings (they sort in time order).
//!
//! Race-freedom comes from unique keys, not from transactions: claiming an
//! identifier is an insert into `identities` keyed by the identifier, and a
//! duplicate-key error means somebody else owns it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    Claim, CustomerCursor, EngagementCursor, EngagementFilter, EngagementInsert, MarkMerged, Store,
    StoreError, StoreResult,
};
use crate::customer::CustomerStatus;
use crate::customer::{Customer, Identifier};
use crate::device::{CallSignal, Device};
use crate::email::Email;
use crate::engagement::Engagement;
use crate::event::EventEnvelope;
use crate::ids::{ApiKeyId, CustomerId, DeviceId, EngagementId, UserId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord, Suggestion};
use crate::staff::{ApiKey, RefreshToken, User};
use crate::time::{self, Timestamp};

/// How long an operation waits for a usable server before failing with
/// `Unavailable`, unless the URI sets `serverSelectionTimeoutMS`.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening one connection may take, unless the URI sets `connectTimeoutMS`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// MongoDB's duplicate key error code (11001 is its pre-2.6 spelling).
const DUPLICATE_KEY: [i32; 2] = [11000, 11001];
/// How often `claim_identity` retries when the owner it lost to released the
/// identifier before it could be read.
const CLAIM_ATTEMPTS: usize = 8;

const CUSTOMERS: &str = "customers";
const IDENTITIES: &str = "identities";
const ENGAGEMENTS: &str = "engagements";
const USERS: &str = "users";
const REFRESH_TOKENS: &str = "refresh_tokens";
const API_KEYS: &str = "api_keys";
const OUTBOX: &str = "outbox";
const MERGES: &str = "merges";
const SUGGESTIONS: &str = "suggestions";
const DEVICES: &str = "devices";
const CALL_SIGNALS: &str = "call_signals";

/// The profile fields `update_profile` writes.
const PROFILE_FIELDS: [&str; 7] = [
    "name",
    "emails",
    "phones",
    "social",
    "status",
    "merged_into",
    "updated_at",
];

/// A [`Store`] on a MongoDB database (or a server speaking its wire protocol).
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
    outbox: Collection<Document>,
    merges: Collection<Document>,
    suggestions: Collection<Document>,
    devices: Collection<Document>,
    call_signals: Collection<Document>,
}

impl MongoStore {
    /// Connects to `uri`, checks that the server answers (failing fast with
    /// `Unavailable` when it does not) and creates the indexes (idempotent).
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
            outbox: db.collection(OUTBOX),
            merges: db.collection(MERGES),
            suggestions: db.collection(SUGGESTIONS),
            devices: db.collection(DEVICES),
            call_signals: db.collection(CALL_SIGNALS),
            client,
            db,
        };
        store
            .db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot reach MongoDB at {hosts}: {e}"))
            })?;
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
            .create_indexes([plain(doc! { "at": 1, "_id": 1 })])
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// The customers that own the existing engagements the `items` collided
    /// with: by id in one query, then (rarely) by device and client event id.
    async fn duplicate_owners(&self, items: &[&Engagement]) -> StoreResult<Vec<CustomerId>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = items.iter().map(|e| e.id.to_string()).collect();
        let cursor = self
            .engagements
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "customer_id": 1 })
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let mut by_id: HashMap<String, CustomerId> = HashMap::with_capacity(docs.len());
        for d in &docs {
            let id = d
                .get_str("_id")
                .map_err(|_| StoreError::Internal("engagement with a non-string _id".into()))?;
            by_id.insert(id.to_string(), parse_id(d, "customer_id")?);
        }
        let mut owners = Vec::with_capacity(items.len());
        for item in items {
            let owner = match by_id.get(&item.id.to_string()) {
                Some(owner) => *owner,
                None => self
                    .owner_by_client_event(item)
                    .await?
                    .unwrap_or(item.customer_id),
            };
            owners.push(owner);
        }
        Ok(owners)
    }

    /// The customer of the engagement with the item's device and client event id.
    async fn owner_by_client_event(&self, item: &Engagement) -> StoreResult<Option<CustomerId>> {
        let (Some(device), Some(client_event)) =
            (&item.source.device_id, &item.source.client_event_id)
        else {
            return Ok(None);
        };
        let existing = self
            .engagements
            .find_one(doc! {
                "source.device_id": device.to_string(),
                "source.client_event_id": client_event,
            })
            .projection(doc! { "customer_id": 1 })
            .await
            .map_err(map_err)?;
        existing.map(|d| parse_id(&d, "customer_id")).transpose()
    }

    /// Applies the counters of newly created engagements: per customer,
    /// `$inc counts.<channel>` and `$max last_engagement_at`.
    async fn bump_counts(&self, created: &[&Engagement]) -> StoreResult<()> {
        let mut per_customer: BTreeMap<CustomerId, (BTreeMap<&'static str, i64>, Timestamp)> =
            BTreeMap::new();
        for e in created {
            let entry = per_customer
                .entry(e.customer_id)
                .or_insert_with(|| (BTreeMap::new(), e.occurred_at));
            *entry.0.entry(e.channel().as_str()).or_insert(0) += 1;
            entry.1 = entry.1.max(e.occurred_at);
        }
        let updates = per_customer
            .into_iter()
            .map(|(customer, (counts, latest))| {
                let mut inc = Document::new();
                for (channel, n) in counts {
                    inc.insert(format!("counts.{channel}"), n);
                }
                let update = doc! {
                    "$inc": inc,
                    "$max": { "last_engagement_at": time::format(&latest) },
                };
                let customers = self.customers.clone();
                async move {
                    customers
                        .update_one(doc! { "_id": customer.to_string() }, update)
                        .await
                        .map_err(map_err)
                }
            });
        futures::future::try_join_all(updates).await?;
        Ok(())
    }
}

// --- documents ---

/// Serialises a record with its key field `key` stored as `_id` (first).
fn to_doc<T: Serialize>(value: &T, key: &str) -> StoreResult<Document> {
    let mut doc = bson::to_document(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode a record: {e}")))?;
    let id = doc
        .remove(key)
        .ok_or_else(|| StoreError::Internal(format!("record has no `{key}` field")))?;
    let mut out = Document::new();
    out.insert("_id", id);
    out.extend(doc);
    Ok(out)
}

/// Reads a record back, with `_id` as its key field `key`.
fn from_doc<T: DeserializeOwned>(mut doc: Document, key: &str) -> StoreResult<T> {
    if let Some(id) = doc.remove("_id") {
        doc.insert(key, id);
    }
    bson::from_document(doc)
        .map_err(|e| StoreError::Internal(format!("cannot decode a record: {e}")))
}

/// An identity record: its owner (none when only marked shared) and flag.
fn identity_info(d: &Document) -> StoreResult<IdentityInfo> {
    let owner = if d.contains_key("customer_id") {
        Some(parse_id(d, "customer_id")?)
    } else {
        None
    };
    Ok(IdentityInfo {
        owner,
        shared: d.get_bool("shared").unwrap_or(false),
    })
}

/// Sets `revoked_at` on the record unless it is revoked already: `true` when
/// this call revoked it (API keys, devices).
async fn revoke_once(
    records: &Collection<Document>,
    id: String,
    at: &Timestamp,
) -> StoreResult<bool> {
    let result = records
        .update_one(
            doc! { "_id": id, "revoked_at": Bson::Null },
            doc! { "$set": { "revoked_at": time::format(at) } },
        )
        .await
        .map_err(map_err)?;
    Ok(result.modified_count == 1)
}

fn parse_id<I: std::str::FromStr>(doc: &Document, field: &str) -> StoreResult<I> {
    doc.get_str(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Internal(format!("record has no valid `{field}`")))
}

fn encode<T: Serialize + ?Sized>(value: &T) -> StoreResult<Bson> {
    bson::to_bson(value).map_err(|e| StoreError::Internal(format!("cannot encode a value: {e}")))
}

/// Mongo treats a limit of 0 as "no limit"; the trait means nothing.
fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

async fn collect<T: DeserializeOwned>(
    cursor: mongodb::Cursor<Document>,
    key: &str,
) -> StoreResult<Vec<T>> {
    let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
    docs.into_iter().map(|d| from_doc(d, key)).collect()
}

// --- errors ---

/// Whether the error is (or, for a batch, contains) a duplicate key error.
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => DUPLICATE_KEY.contains(&w.code),
        ErrorKind::Command(c) => DUPLICATE_KEY.contains(&c.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .any(|w| DUPLICATE_KEY.contains(&w.code)),
        ErrorKind::BulkWrite(b) => b
            .write_errors
            .values()
            .any(|w| DUPLICATE_KEY.contains(&w.code)),
        _ => false,
    }
}

/// Server error codes that mean "not now, this server cannot serve": host
/// unreachable or not found, network timeout, shutting down, not (or no
/// longer) primary.
const UNAVAILABLE_CODES: [i32; 10] = [6, 7, 89, 91, 189, 10107, 11600, 11602, 13435, 13436];

/// Connection, server selection and "not primary" errors are `Unavailable`;
/// everything else is `Internal`.
fn map_err(e: mongodb::error::Error) -> StoreError {
    let unavailable = match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => UNAVAILABLE_CODES.contains(&c.code),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(format!("MongoDB: {e}"))
    } else {
        StoreError::Internal(format!("MongoDB: {e}"))
    }
}

/// `Conflict` for a duplicate key, else the usual mapping.
fn map_conflict(e: mongodb::error::Error, what: &str) -> StoreError {
    if is_duplicate_key(&e) {
        StoreError::Conflict(what.to_string())
    } else {
        map_err(e)
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

    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()> {
        let doc = to_doc(customer, "id")?;
        self.customers
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, &format!("customer {} exists", customer.id)))
    }

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        let found = self
            .customers
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let docs: Vec<Document> = self
            .customers
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.into_iter().map(|d| from_doc(d, "id")).collect()
    }

    async fn update_profile(&self, customer: &Customer) -> StoreResult<()> {
        let full = to_doc(customer, "id")?;
        let mut set = Document::new();
        for field in PROFILE_FIELDS {
            set.insert(field, full.get(field).cloned().unwrap_or(Bson::Null));
        }
        let result = self
            .customers
            .update_one(
                doc! { "_id": customer.id.to_string() },
                doc! { "$set": set },
            )
            .await
            .map_err(map_err)?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn add_identifiers(
        &self,
        id: CustomerId,
        identifiers: &[Identifier],
        at: Timestamp,
    ) -> StoreResult<Customer> {
        let mut phones = Vec::new();
        let mut emails = Vec::new();
        let mut set = doc! { "updated_at": time::format(&at) };
        for identifier in identifiers {
            match identifier {
                Identifier::Phone(p) => phones.push(encode(p)?),
                Identifier::Email(e) => emails.push(encode(e)?),
                Identifier::Social { network, id } => {
                    // The network becomes part of a field path.
                    if network.is_empty() || network.contains('.') || network.starts_with('$') {
                        return Err(StoreError::Internal(format!(
                            "invalid social network name {network:?}"
                        )));
                    }
                    set.insert(format!("social.{network}"), id.as_str());
                }
                Identifier::Anonymous(_) => {}
            }
        }
        let mut update = doc! { "$set": set };
        let mut add = Document::new();
        if !phones.is_empty() {
            add.insert("phones", doc! { "$each": phones });
        }
        if !emails.is_empty() {
            add.insert("emails", doc! { "$each": emails });
        }
        if !add.is_empty() {
            update.insert("$addToSet", add);
        }
        let stored = self
            .customers
            .find_one_and_update(doc! { "_id": id.to_string() }, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_err)?;
        match stored {
            Some(d) => from_doc(d, "id"),
            None => Err(StoreError::NotFound),
        }
    }

    async fn delete_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        // Dependants first: a failure half-way leaves the customer in place,
        // so deleting again finishes the job.
        let owner = doc! { "customer_id": id.to_string() };
        self.engagements
            .delete_many(owner.clone())
            .await
            .map_err(map_err)?;
        self.identities.delete_many(owner).await.map_err(map_err)?;
        let deleted = self
            .customers
            .find_one_and_delete(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        deleted.map(|d| from_doc(d, "id")).transpose()
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
        let mut clauses = Vec::new();
        if let Some(since) = updated_since {
            clauses.push(doc! { "updated_at": { "$gte": time::format(&since) } });
        }
        if let Some(c) = after {
            let at = time::format(&c.updated_at);
            clauses.push(doc! { "$or": [
                { "updated_at": { "$gt": &at } },
                { "updated_at": &at, "_id": { "$gt": c.id.to_string() } },
            ] });
        }
        let filter = if clauses.is_empty() {
            Document::new()
        } else {
            doc! { "$and": clauses }
        };
        let cursor = self
            .customers
            .find(filter)
            .sort(doc! { "updated_at": 1, "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    // --- identities ---

    async fn claim_identity(&self, key: &str, customer: CustomerId) -> StoreResult<Claim> {
        for _ in 0..CLAIM_ATTEMPTS {
            match self
                .identities
                .insert_one(doc! { "_id": key, "customer_id": customer.to_string() })
                .await
            {
                Ok(_) => return Ok(Claim::Claimed),
                Err(e) if is_duplicate_key(&e) => {
                    if let Some(owner) = self.identity_owner(key).await? {
                        return Ok(Claim::OwnedBy(owner));
                    }
                    // A record marked shared before anybody owned it.
                    let taken = self
                        .identities
                        .update_one(
                            doc! { "_id": key, "customer_id": { "$exists": false } },
                            doc! { "$set": { "customer_id": customer.to_string() } },
                        )
                        .await
                        .map_err(map_err)?;
                    if taken.modified_count == 1 {
                        return Ok(Claim::Claimed);
                    }
                    // Released between our insert and our read: try again.
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        Err(StoreError::Internal(format!(
            "identity {key} keeps changing owner"
        )))
    }

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>> {
        let found = self
            .identities
            .find_one(doc! { "_id": key })
            .await
            .map_err(map_err)?;
        match found {
            Some(d) if d.contains_key("customer_id") => parse_id(&d, "customer_id").map(Some),
            _ => Ok(None),
        }
    }

    async fn release_identity(&self, key: &str, customer: CustomerId) -> StoreResult<()> {
        self.identities
            .delete_one(doc! { "_id": key, "customer_id": customer.to_string() })
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>> {
        let cursor = self
            .identities
            .find(doc! { "customer_id": customer.to_string() })
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let mut keys = docs
            .iter()
            .map(|d| {
                d.get_str("_id")
                    .map(str::to_string)
                    .map_err(|_| StoreError::Internal("identity with a non-string _id".into()))
            })
            .collect::<StoreResult<Vec<String>>>()?;
        // The server sorts already; make "sorted" not depend on its collation.
        keys.sort();
        Ok(keys)
    }

    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        let found = self
            .identities
            .find_one(doc! { "_id": key })
            .await
            .map_err(map_err)?;
        found.as_ref().map(identity_info).transpose()
    }

    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cursor = self
            .identities
            .find(doc! { "_id": { "$in": keys } })
            .await
            .map_err(map_err)?;
        let mut found: HashMap<String, IdentityInfo> = HashMap::with_capacity(keys.len());
        while let Some(d) = cursor.try_next().await.map_err(map_err)? {
            let Ok(key) = d.get_str("_id").map(str::to_string) else {
                continue;
            };
            found.insert(key, identity_info(&d)?);
        }
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }

    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>> {
        // No multi-document transactions here: each customer is inserted,
        // then claims its keys; losing a claim erases it again (which
        // releases what it had claimed).
        let mut created = Vec::with_capacity(new.len());
        for (customer, keys) in new {
            match self.insert_customer(customer).await {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => {
                    created.push(false);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let mut won = true;
            for key in keys {
                match self.claim_identity(key, customer.id).await {
                    Ok(Claim::Claimed) => {}
                    Ok(Claim::OwnedBy(o)) if o == customer.id => {}
                    Ok(Claim::OwnedBy(_)) => {
                        won = false;
                        break;
                    }
                    Err(e) => {
                        // Leave nothing half-written behind.
                        let _ = self.delete_customer(customer.id).await;
                        return Err(e);
                    }
                }
            }
            if !won {
                self.delete_customer(customer.id).await?;
            }
            created.push(won);
        }
        Ok(created)
    }

    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()> {
        self.identities
            .update_one(doc! { "_id": key }, doc! { "$set": { "shared": shared } })
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    // --- merging ---

    async fn mark_merged(
        &self,
        id: CustomerId,
        into: CustomerId,
        at: Timestamp,
    ) -> StoreResult<MarkMerged> {
        let before = self
            .customers
            .find_one_and_update(
                doc! { "_id": id.to_string(), "status": { "$ne": "merged" } },
                doc! { "$set": {
                    "status": "merged",
                    "merged_into": into.to_string(),
                    "updated_at": time::format(&at),
                } },
            )
            .return_document(ReturnDocument::Before)
            .await
            .map_err(map_err)?;
        if let Some(d) = before {
            return Ok(MarkMerged::Marked(Box::new(from_doc(d, "id")?)));
        }
        Ok(match self.get_customer(id).await? {
            None => MarkMerged::NotFound,
            Some(c) if c.status == CustomerStatus::Merged => {
                MarkMerged::AlreadyMerged(c.merged_into)
            }
            // Changed back between our two reads: the caller tries again.
            Some(_) => MarkMerged::AlreadyMerged(None),
        })
    }

    async fn move_identities(
        &self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>> {
        let owned = self.identities_of(from).await?;
        let mut moved = Vec::new();
        for key in owned {
            if keys.is_some_and(|wanted| !wanted.contains(&key)) {
                continue;
            }
            let r = self
                .identities
                .update_one(
                    doc! { "_id": &key, "customer_id": from.to_string() },
                    doc! { "$set": { "customer_id": to.to_string() } },
                )
                .await
                .map_err(map_err)?;
            if r.modified_count == 1 {
                moved.push(key);
            }
        }
        Ok(moved)
    }

    async fn move_engagements(
        &self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
    ) -> StoreResult<Vec<EngagementId>> {
        let mut filter = doc! { "customer_id": from.to_string() };
        if let Some(ids) = ids {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            filter.insert("_id", doc! { "$in": ids });
        }
        let docs: Vec<Document> = self
            .engagements
            .find(filter)
            .projection(doc! { "_id": 1, "channel": 1, "occurred_at": 1 })
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        // Per channel, so that the counters move by what really moved.
        let mut by_channel: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
        for d in &docs {
            let id = d
                .get_str("_id")
                .map_err(|_| StoreError::Internal("engagement with a non-string _id".into()))?;
            let channel = d.get_str("channel").unwrap_or("web").to_string();
            let at = d.get_str("occurred_at").unwrap_or_default().to_string();
            let entry = by_channel.entry(channel).or_default();
            entry.0.push(id.to_string());
            if at > entry.1 {
                entry.1 = at;
            }
        }
        let mut moved = Vec::new();
        for (channel, (ids, latest)) in by_channel {
            let r = self
                .engagements
                .update_many(
                    doc! { "_id": { "$in": &ids }, "customer_id": from.to_string() },
                    doc! { "$set": { "customer_id": to.to_string() } },
                )
                .await
                .map_err(map_err)?;
            let n = i64::try_from(r.modified_count).unwrap_or(i64::MAX);
            if n == 0 {
                continue;
            }
            let field = format!("counts.{channel}");
            self.customers
                .update_one(
                    doc! { "_id": from.to_string() },
                    doc! { "$inc": { &field: -n } },
                )
                .await
                .map_err(map_err)?;
            self.customers
                .update_one(
                    doc! { "_id": to.to_string() },
                    doc! { "$inc": { &field: n }, "$max": { "last_engagement_at": latest } },
                )
                .await
                .map_err(map_err)?;
            for id in ids {
                moved.extend(id.parse().ok().map(EngagementId));
            }
        }
        if !moved.is_empty() {
            let newest = self
                .engagements
                .find_one(doc! { "customer_id": from.to_string() })
                .sort(doc! { "customer_id": 1, "occurred_at": -1, "_id": -1 })
                .projection(doc! { "occurred_at": 1 })
                .await
                .map_err(map_err)?;
            let newest = newest
                .and_then(|d| {
                    d.get_str("occurred_at")
                        .ok()
                        .map(|s| Bson::String(s.into()))
                })
                .unwrap_or(Bson::Null);
            self.customers
                .update_one(
                    doc! { "_id": from.to_string() },
                    doc! { "$set": { "last_engagement_at": newest } },
                )
                .await
                .map_err(map_err)?;
        }
        Ok(moved)
    }

    async fn insert_merge(&self, merge: &MergeRecord) -> StoreResult<()> {
        let doc = to_doc(merge, "id")?;
        self.merges
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, &format!("merge {} exists", merge.id)))
    }

    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        let found = self
            .merges
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn mark_merge_undone(&self, id: MergeId, at: Timestamp, by: &str) -> StoreResult<bool> {
        let r = self
            .merges
            .update_one(
                doc! { "_id": id.to_string(), "undone_at": Bson::Null },
                doc! { "$set": { "undone_at": time::format(&at), "undone_by": by } },
            )
            .await
            .map_err(map_err)?;
        Ok(r.modified_count == 1)
    }

    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        let c = customer.to_string();
        let cursor = self
            .merges
            .find(doc! { "$or": [ { "survivor_id": &c }, { "merged_ids": &c } ] })
            .await
            .map_err(map_err)?;
        let mut merges: Vec<MergeRecord> = collect(cursor, "id").await?;
        merges.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        Ok(merges)
    }

    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()> {
        let mut doc = bson::to_document(suggestion)
            .map_err(|e| StoreError::Internal(format!("cannot encode a suggestion: {e}")))?;
        doc.insert("_id", suggestion.key());
        self.suggestions
            .replace_one(doc! { "_id": suggestion.key() }, doc)
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(a) => doc! { "_id": { "$gt": a } },
            None => Document::new(),
        };
        let docs: Vec<Document> = self
            .suggestions
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.into_iter()
            .map(|mut d| {
                d.remove("_id");
                bson::from_document(d)
                    .map_err(|e| StoreError::Internal(format!("cannot decode a suggestion: {e}")))
            })
            .collect()
    }

    // --- engagements ---

    async fn insert_engagements(&self, items: &[Engagement]) -> StoreResult<Vec<EngagementInsert>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let docs = items
            .iter()
            .map(|e| to_doc(e, "id"))
            .collect::<StoreResult<Vec<_>>>()?;
        // Unordered: every item is tried; duplicates come back as write errors.
        let mut failed: HashMap<usize, i32> = HashMap::new();
        let mut other_error = None;
        if let Err(e) = self.engagements.insert_many(docs).ordered(false).await {
            match e.kind.as_ref() {
                ErrorKind::InsertMany(m) => {
                    for w in m.write_errors.iter().flatten() {
                        failed.insert(w.index, w.code);
                    }
                    if let Some(wc) = &m.write_concern_error {
                        other_error = Some(StoreError::Internal(format!(
                            "MongoDB write concern: {}",
                            wc.message
                        )));
                    }
                    if m.write_errors
                        .iter()
                        .flatten()
                        .any(|w| !DUPLICATE_KEY.contains(&w.code))
                    {
                        other_error = Some(map_err(e.clone()));
                    }
                }
                _ => return Err(map_err(e)),
            }
        }
        let is_duplicate = |i: &usize| {
            failed
                .get(i)
                .is_some_and(|code| DUPLICATE_KEY.contains(code))
        };
        // The counters follow what was stored, even when other items failed.
        let created: Vec<&Engagement> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains_key(i))
            .map(|(_, e)| e)
            .collect();
        self.bump_counts(&created).await?;
        if let Some(e) = other_error {
            return Err(e);
        }
        let duplicates: Vec<&Engagement> = items
            .iter()
            .enumerate()
            .filter(|(i, _)| is_duplicate(i))
            .map(|(_, e)| e)
            .collect();
        let mut owners = self.duplicate_owners(&duplicates).await?.into_iter();
        (0..items.len())
            .map(|i| {
                if !is_duplicate(&i) {
                    return Ok(EngagementInsert::Created);
                }
                owners
                    .next()
                    .map(|customer_id| EngagementInsert::Duplicate { customer_id })
                    .ok_or_else(|| StoreError::Internal("a duplicate without an owner".into()))
            })
            .collect()
    }

    async fn get_engagement(&self, id: EngagementId) -> StoreResult<Option<Engagement>> {
        let found = self
            .engagements
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
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
        let mut query = doc! { "customer_id": customer.to_string() };
        if let Some(channel) = filter.channel {
            query.insert("channel", channel.as_str());
        }
        let mut occurred = Document::new();
        if let Some(since) = &filter.since {
            occurred.insert("$gte", time::format(since));
        }
        if let Some(until) = &filter.until {
            occurred.insert("$lt", time::format(until));
        }
        if !occurred.is_empty() {
            query.insert("occurred_at", occurred);
        }
        if let Some(c) = after {
            let at = time::format(&c.occurred_at);
            query.insert(
                "$or",
                vec![
                    doc! { "occurred_at": { "$lt": &at } },
                    doc! { "occurred_at": &at, "_id": { "$lt": c.id.to_string() } },
                ],
            );
        }
        let cursor = self
            .engagements
            .find(query)
            .sort(doc! { "occurred_at": -1, "_id": -1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    // --- staff users ---

    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        let doc = to_doc(user, "id")?;
        self.users.insert_one(doc).await.map(|_| ()).map_err(|e| {
            map_conflict(
                e,
                &format!("a user with email {} or id {} exists", user.email, user.id),
            )
        })
    }

    async fn get_user(&self, id: UserId) -> StoreResult<Option<User>> {
        let found = self
            .users
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn get_user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        let found = self
            .users
            .find_one(doc! { "email": encode(email)? })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let doc = to_doc(user, "id")?;
        let result = self
            .users
            .replace_one(doc! { "_id": user.id.to_string() }, doc)
            .await
            .map_err(|e| map_conflict(e, &format!("a user with email {} exists", user.email)))?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn list_users(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<User>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(id) => doc! { "_id": { "$gt": id.to_string() } },
            None => Document::new(),
        };
        let cursor = self
            .users
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    async fn count_users(&self) -> StoreResult<u64> {
        self.users
            .count_documents(Document::new())
            .await
            .map_err(map_err)
    }

    // --- refresh tokens ---

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let doc = to_doc(token, "token_hash")?;
        self.refresh_tokens
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, "the refresh token exists"))
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let found = self
            .refresh_tokens
            .find_one(doc! { "_id": token_hash })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "token_hash")).transpose()
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let result = self
            .refresh_tokens
            .update_one(
                doc! { "_id": token_hash, "used": false, "revoked": false },
                doc! { "$set": { "used": true } },
            )
            .await
            .map_err(map_err)?;
        Ok(result.modified_count == 1)
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        self.refresh_tokens
            .update_many(
                doc! { "family_id": family_id },
                doc! { "$set": { "revoked": true } },
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn revoke_user_refresh_tokens(&self, user: UserId) -> StoreResult<()> {
        self.refresh_tokens
            .update_many(
                doc! { "user_id": user.to_string() },
                doc! { "$set": { "revoked": true } },
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    // --- API keys ---

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let doc = to_doc(key, "id")?;
        self.api_keys
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, "an API key with this id or hash exists"))
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<ApiKey>> {
        let found = self
            .api_keys
            .find_one(doc! { "key_hash": key_hash })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let cursor = self
            .api_keys
            .find(Document::new())
            .sort(doc! { "created_at": 1, "_id": 1 })
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: Timestamp) -> StoreResult<bool> {
        revoke_once(&self.api_keys, id.to_string(), &at).await
    }

    // --- outbox ---

    async fn outbox_push(&self, events: &[EventEnvelope]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut docs = Vec::with_capacity(events.len());
        for (id, event) in super::outbox_ids(events.len()).into_iter().zip(events) {
            let json = serde_json::to_string(event)
                .map_err(|e| StoreError::Internal(format!("cannot encode an event: {e}")))?;
            docs.push(doc! { "_id": id.to_string(), "event": json });
        }
        self.outbox.insert_many(docs).await.map_err(map_err)?;
        Ok(())
    }

    async fn outbox_peek(&self, limit: usize) -> StoreResult<Vec<(String, EventEnvelope)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let docs: Vec<Document> = self
            .outbox
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .limit(limit as i64)
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.into_iter()
            .map(|d| {
                let id = d
                    .get_str("_id")
                    .map_err(|e| StoreError::Internal(format!("outbox id: {e}")))?;
                let json = d
                    .get_str("event")
                    .map_err(|e| StoreError::Internal(format!("outbox event: {e}")))?;
                let event = serde_json::from_str(json)
                    .map_err(|e| StoreError::Internal(format!("cannot decode an event: {e}")))?;
                Ok((id.to_string(), event))
            })
            .collect()
    }

    async fn outbox_remove(&self, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.outbox
            .delete_many(doc! { "_id": { "$in": ids.to_vec() } })
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn outbox_len(&self) -> StoreResult<u64> {
        self.outbox.count_documents(doc! {}).await.map_err(map_err)
    }

    // --- devices ---

    async fn insert_device(&self, device: &Device) -> StoreResult<()> {
        let doc = to_doc(device, "id")?;
        self.devices
            .insert_one(doc)
            .await
            .map(|_| ())
            .map_err(|e| map_conflict(e, "a device with this id or token hash exists"))
    }

    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>> {
        let found = self
            .devices
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>> {
        let found = self
            .devices
            .find_one(doc! { "token_hash": token_hash })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn list_devices(&self, user: Option<UserId>) -> StoreResult<Vec<Device>> {
        let filter = match user {
            Some(u) => doc! { "user_id": u.to_string() },
            None => Document::new(),
        };
        let cursor = self
            .devices
            .find(filter)
            .sort(doc! { "created_at": 1, "_id": 1 })
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    async fn revoke_device(&self, id: DeviceId, at: Timestamp) -> StoreResult<bool> {
        revoke_once(&self.devices, id.to_string(), &at).await
    }

    async fn set_device_last_upload(&self, id: DeviceId, at: Timestamp) -> StoreResult<()> {
        let result = self
            .devices
            .update_one(
                doc! { "_id": id.to_string() },
                doc! { "$set": { "last_upload_at": time::format(&at) } },
            )
            .await
            .map_err(map_err)?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // --- incoming-call signals ---

    async fn insert_call_signals(&self, signals: Vec<CallSignal>) -> StoreResult<()> {
        if signals.is_empty() {
            return Ok(());
        }
        let docs = signals
            .iter()
            .map(|s| to_doc(s, "id"))
            .collect::<StoreResult<Vec<_>>>()?;
        // One round trip for the batch, unordered so that a signal stored
        // before (a retried batch) does not stop the ones after it.
        match self.call_signals.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(m)
                    if m.write_concern_error.is_none()
                        && m.write_errors.as_ref().is_some_and(|errors| {
                            errors.iter().all(|w| DUPLICATE_KEY.contains(&w.code))
                        }) =>
                {
                    Ok(())
                }
                _ => Err(map_err(e)),
            },
        }
    }

    async fn list_call_signals(
        &self,
        user: Option<UserId>,
        since: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<CallSignal>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! { "at": { "$gte": time::format(&since) } };
        if let Some(u) = user {
            filter.insert("user_id", u.to_string());
        }
        let cursor = self
            .call_signals
            .find(filter)
            .sort(doc! { "at": 1, "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    async fn delete_call_signals_before(&self, before: Timestamp) -> StoreResult<u64> {
        self.call_signals
            .delete_many(doc! { "at": { "$lt": time::format(&before) } })
            .await
            .map(|r| r.deleted_count)
            .map_err(map_err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engagement::{Direction, EngagementDetail, Source};
    use crate::ids::DeviceId;

    #[test]
    fn records_keep_their_key_as_id_and_round_trip() {
        let mut c = Customer::new(CustomerId::new(), Some("Ann".into()), time::now());
        c.social.insert("facebook".into(), "123".into());
        let doc = to_doc(&c, "id").unwrap();
        assert_eq!(doc.keys().next().map(String::as_str), Some("_id"));
        assert_eq!(doc.get_str("_id").unwrap(), c.id.to_string());
        assert!(doc.get("id").is_none());
        assert_eq!(from_doc::<Customer>(doc, "id").unwrap(), c);

        let e = Engagement {
            id: EngagementId::new(),
            customer_id: c.id,
            occurred_at: time::now(),
            recorded_at: time::now(),
            source: Source {
                device_id: Some(DeviceId::new()),
                client_event_id: Some("7".into()),
                user_id: None,
                via: None,
            },
            detail: EngagementDetail::Call {
                direction: Direction::Inbound,
                duration_s: 42,
                status: crate::engagement::CallStatus::Answered,
            },
        };
        let doc = to_doc(&e, "id").unwrap();
        assert_eq!(doc.get_str("channel").unwrap(), "call");
        assert_eq!(doc.get_str("customer_id").unwrap(), c.id.to_string());
        assert_eq!(from_doc::<Engagement>(doc, "id").unwrap(), e);
    }

    /// A merge that moves an engagement between its insert and its counter's
    /// `$inc` leaves the old owner at -1 for a moment; reading it then works.
    #[test]
    fn a_counter_caught_below_zero_reads_as_zero() {
        let mut c = Customer::new(CustomerId::new(), None, time::now());
        c.counts.sms = 2;
        let mut doc = to_doc(&c, "id").unwrap();
        let counts = doc.get_document_mut("counts").unwrap();
        counts.insert("call", Bson::Int64(-1));
        counts.insert("web", Bson::Int32(-2));
        let read = from_doc::<Customer>(doc, "id").unwrap();
        assert_eq!(read.counts.call, 0);
        assert_eq!(read.counts.web, 0);
        assert_eq!(read.counts.sms, 2);
    }
}
