//! Multi-document transactions: the runner and [`MongoTx`], the store's
//! view inside one transaction.
//!
//! [`MongoStore::run`] starts a transaction on a session (read concern
//! `snapshot`, write concern `majority`), runs the work against a
//! [`MongoTx`] and commits. A commit whose outcome is unknown
//! (`UnknownTransactionCommitResult`) is committed again; a conflict with a
//! concurrent transaction (`TransientTransactionError`, from any statement or
//! from the commit) aborts and reruns the whole work from a fresh
//! transaction after a short jittered pause, up to [`ATTEMPTS`] times, then
//! gives up with `Contention`. Any other error aborts and is returned as it
//! is, leaving the store unchanged.
//!
//! A [`StoreError`] does not carry the driver's error labels, so `MongoTx`
//! remembers whether one of its statements failed in a way that a rerun can
//! fix.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection};

use super::codec::{
    event_to_doc, from_doc, identity_info, is_duplicate_key, map_err, parse_id, string_id,
    time_field, to_doc,
};
use super::MongoStore;
use crate::customer::Customer;
use crate::event::EventEnvelope;
use crate::ids::{CustomerId, EngagementId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord};
use crate::store::tx::{EngagementRef, Erased, Tx, TxWork};
use crate::store::{Claim, StoreError, StoreResult};
use crate::time::{self, Timestamp};

/// How often a work runs before the runner gives up with `Contention`.
const ATTEMPTS: u32 = 30;
/// How often a commit with an unknown outcome is sent again.
const COMMIT_ATTEMPTS: u32 = 10;
/// First pause before a rerun; it doubles up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The profile fields [`Tx::put_customer`] writes on an existing customer;
/// counts, `created_at` and `last_engagement_at` are only set on insert.
const PROFILE_FIELDS: [&str; 7] = [
    "name",
    "emails",
    "phones",
    "social",
    "status",
    "merged_into",
    "updated_at",
];

/// Work the adapter itself runs in a transaction (the store's own writes),
/// with access to [`MongoTx`]'s helpers. Like [`TxWork`], it may run more
/// than once and must reset what it collects at the start of each run.
#[async_trait]
pub(super) trait Work: Send {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()>;
}

/// A caller's [`TxWork`] as a [`Work`].
struct Public<'w>(&'w mut dyn TxWork);

#[async_trait]
impl Work for Public<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        self.0.run(tx).await
    }
}

impl MongoStore {
    /// [`crate::store::Store::transaction`].
    pub(super) async fn run_tx_work(&self, work: &mut dyn TxWork) -> StoreResult<()> {
        self.run(&mut Public(work)).await
    }

    /// Runs the work in one transaction (see the module documentation).
    pub(super) async fn run(&self, work: &mut dyn Work) -> StoreResult<()> {
        let mut session = self.client.start_session().await.map_err(map_err)?;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await
                .map_err(map_err)?;
            let mut tx = MongoTx {
                store: self,
                session: &mut session,
                transient: None,
            };
            let result = work.run(&mut tx).await;
            let transient = tx.transient.take();
            match result {
                Ok(()) => match commit(&mut session).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                        last = brief(&e);
                    }
                    Err(e) => return Err(map_err(e)),
                },
                Err(e) => {
                    // The server may have aborted it already; the driver
                    // ignores what the server answers to an abort.
                    let _ = session.abort_transaction().await;
                    match transient {
                        Some(why) => last = why,
                        None => return Err(e),
                    }
                }
            }
        }
        Err(StoreError::Contention(format!(
            "the transaction conflicted with concurrent ones {ATTEMPTS} times (last: {last})"
        )))
    }
}

/// A driver error in a few words (its full text carries the raw reply).
fn brief(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => format!("{} ({})", c.code_name, c.code),
        _ => e.to_string().chars().take(200).collect(),
    }
}

/// Commits, again while the outcome is unknown (committing twice is safe).
async fn commit(session: &mut ClientSession) -> mongodb::error::Result<()> {
    let mut attempt = 0;
    loop {
        match session.commit_transaction().await {
            Err(e)
                if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && attempt + 1 < COMMIT_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

/// The pause before rerun `attempt` (1, 2, ...): anywhere up to a cap that
/// doubles from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`] ("full jitter"), so
/// that conflicting writers drift apart and a writer that lost often still
/// gets early turns.
fn backoff(attempt: u32) -> Duration {
    let cap = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let cap_micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX).max(1);
    // Random bits without another dependency: a v4 UUID is 122 random bits.
    let random = (uuid::Uuid::new_v4().as_u128() & u128::from(u64::MAX)) as u64;
    Duration::from_micros(random % (cap_micros + 1))
}

/// The store inside one MongoDB transaction. Every statement runs on the
/// transaction's session.
pub(super) struct MongoTx<'a> {
    pub(super) store: &'a MongoStore,
    pub(super) session: &'a mut ClientSession,
    /// Why a rerun can fix a statement that failed, if one did.
    transient: Option<String>,
}

impl MongoTx<'_> {
    /// Maps a driver error, remembering whether it asks for a rerun.
    pub(super) fn fail(&mut self, e: mongodb::error::Error) -> StoreError {
        if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
            self.transient = Some(brief(&e));
        }
        map_err(e)
    }

    /// For a write that collided with a concurrent transaction in a way the
    /// server does not label (a duplicate key on a key this transaction had
    /// read as free): the rerun sees the other write.
    pub(super) fn rerun(&mut self, what: &str) -> StoreError {
        self.transient = Some(what.to_string());
        StoreError::Contention(what.to_string())
    }

    /// A duplicate key means `conflict`; anything else as usual.
    pub(super) fn fail_conflict(&mut self, e: mongodb::error::Error, conflict: &str) -> StoreError {
        if is_duplicate_key(&e) {
            StoreError::Conflict(conflict.to_string())
        } else {
            self.fail(e)
        }
    }

    pub(super) async fn find_one(
        &mut self,
        coll: &Collection<Document>,
        filter: Document,
    ) -> StoreResult<Option<Document>> {
        let result = coll.find_one(filter).session(&mut *self.session).await;
        result.map_err(|e| self.fail(e))
    }

    /// Every document matching `filter`, in `sort` order, with `projection`.
    pub(super) async fn find_all(
        &mut self,
        coll: &Collection<Document>,
        filter: Document,
        sort: Option<Document>,
        projection: Option<Document>,
    ) -> StoreResult<Vec<Document>> {
        let result = coll
            .find(filter)
            .optional(sort, |a, s| a.sort(s))
            .optional(projection, |a, p| a.projection(p))
            .session(&mut *self.session)
            .await;
        let mut cursor = result.map_err(|e| self.fail(e))?;
        let docs = cursor
            .stream(&mut *self.session)
            .try_collect::<Vec<Document>>()
            .await;
        docs.map_err(|e| self.fail(e))
    }

    pub(super) async fn insert_many(
        &mut self,
        coll: &Collection<Document>,
        docs: Vec<Document>,
    ) -> Result<(), mongodb::error::Error> {
        if docs.is_empty() {
            return Ok(());
        }
        coll.insert_many(docs)
            .session(&mut *self.session)
            .await
            .map(|_| ())
    }

    pub(super) async fn update_one(
        &mut self,
        coll: &Collection<Document>,
        filter: Document,
        update: Document,
    ) -> StoreResult<mongodb::results::UpdateResult> {
        let result = coll
            .update_one(filter, update)
            .session(&mut *self.session)
            .await;
        result.map_err(|e| self.fail(e))
    }

    pub(super) async fn update_many(
        &mut self,
        coll: &Collection<Document>,
        filter: Document,
        update: Document,
    ) -> StoreResult<mongodb::results::UpdateResult> {
        let result = coll
            .update_many(filter, update)
            .session(&mut *self.session)
            .await;
        result.map_err(|e| self.fail(e))
    }

    pub(super) async fn delete_many(
        &mut self,
        coll: &Collection<Document>,
        filter: Document,
    ) -> StoreResult<u64> {
        let result = coll.delete_many(filter).session(&mut *self.session).await;
        result.map(|r| r.deleted_count).map_err(|e| self.fail(e))
    }

    /// Inserts one document; a duplicate key is `conflict`.
    pub(super) async fn insert_one(
        &mut self,
        coll: &Collection<Document>,
        doc: Document,
        conflict: &str,
    ) -> StoreResult<()> {
        let result = coll.insert_one(doc).session(&mut *self.session).await;
        result
            .map(|_| ())
            .map_err(|e| self.fail_conflict(e, conflict))
    }

    /// The newest `occurred_at` of the customer's engagements, as stored.
    async fn newest_engagement_at(&mut self, customer: &str) -> StoreResult<Bson> {
        let engagements = &self.store.engagements;
        let result = engagements
            .find_one(doc! { "customer_id": customer })
            .sort(doc! { "occurred_at": -1, "_id": -1 })
            .projection(doc! { "occurred_at": 1 })
            .session(&mut *self.session)
            .await;
        let newest = result.map_err(|e| self.fail(e))?;
        Ok(newest
            .and_then(|d| d.get("occurred_at").cloned())
            .unwrap_or(Bson::Null))
    }
}

/// Sets an option on a builder only when there is one.
trait Optional: Sized {
    fn optional<V>(self, value: Option<V>, set: impl FnOnce(Self, V) -> Self) -> Self {
        match value {
            Some(v) => set(self, v),
            None => self,
        }
    }
}

impl<T> Optional for T {}

#[async_trait]
impl Tx for MongoTx<'_> {
    async fn customer(&mut self, id: CustomerId) -> StoreResult<Option<Customer>> {
        let customers = &self.store.customers;
        let found = self
            .find_one(customers, doc! { "_id": id.to_string() })
            .await?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn put_customer(&mut self, customer: &Customer) -> StoreResult<()> {
        let full = to_doc(customer, "id")?;
        let mut set = Document::new();
        let mut on_insert = Document::new();
        for (field, value) in full {
            if field == "_id" {
                continue;
            }
            if PROFILE_FIELDS.contains(&field.as_str()) {
                set.insert(field, value);
            } else {
                on_insert.insert(field, value);
            }
        }
        for field in PROFILE_FIELDS {
            if !set.contains_key(field) {
                set.insert(field, Bson::Null);
            }
        }
        let customers = &self.store.customers;
        let result = customers
            .update_one(
                doc! { "_id": customer.id.to_string() },
                doc! { "$set": set, "$setOnInsert": on_insert },
            )
            .upsert(true)
            .session(&mut *self.session)
            .await;
        match result {
            Ok(_) => Ok(()),
            // Inserted by a concurrent transaction after this one read it.
            Err(e) if is_duplicate_key(&e) => Err(self.rerun("customer inserted concurrently")),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn identity(&mut self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        let identities = &self.store.identities;
        let found = self.find_one(identities, doc! { "_id": key }).await?;
        found.as_ref().map(identity_info).transpose()
    }

    async fn claim(&mut self, key: &str, customer: CustomerId) -> StoreResult<Claim> {
        let identities = &self.store.identities;
        // Read first: inside a transaction a duplicate key aborts it.
        match self.find_one(identities, doc! { "_id": key }).await? {
            Some(d) if d.contains_key("customer_id") => {
                Ok(Claim::OwnedBy(parse_id(&d, "customer_id")?))
            }
            Some(_) => {
                // Marked shared before anybody owned it.
                self.update_one(
                    identities,
                    doc! { "_id": key, "customer_id": { "$exists": false } },
                    doc! { "$set": { "customer_id": customer.to_string() } },
                )
                .await?;
                Ok(Claim::Claimed)
            }
            None => {
                let result = identities
                    .insert_one(doc! { "_id": key, "customer_id": customer.to_string() })
                    .session(&mut *self.session)
                    .await;
                match result {
                    Ok(_) => Ok(Claim::Claimed),
                    Err(e) if is_duplicate_key(&e) => {
                        Err(self.rerun("identifier claimed concurrently"))
                    }
                    Err(e) => Err(self.fail(e)),
                }
            }
        }
    }

    async fn release(&mut self, key: &str, customer: CustomerId) -> StoreResult<()> {
        let identities = &self.store.identities;
        let owned = doc! { "_id": key, "customer_id": customer.to_string() };
        let Some(d) = self.find_one(identities, owned.clone()).await? else {
            return Ok(());
        };
        if d.get_bool("shared").unwrap_or(false) {
            // Keep the shared mark, drop the owner.
            self.update_one(identities, owned, doc! { "$unset": { "customer_id": "" } })
                .await?;
        } else {
            self.delete_many(identities, owned).await?;
        }
        Ok(())
    }

    async fn identities_of(&mut self, customer: CustomerId) -> StoreResult<Vec<String>> {
        let identities = &self.store.identities;
        let docs = self
            .find_all(
                identities,
                doc! { "customer_id": customer.to_string() },
                None,
                Some(doc! { "_id": 1 }),
            )
            .await?;
        let mut keys = docs
            .iter()
            .map(string_id)
            .collect::<StoreResult<Vec<_>>>()?;
        keys.sort();
        Ok(keys)
    }

    async fn move_identities(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>> {
        let owned = self.identities_of(from).await?;
        let moved: Vec<String> = owned
            .into_iter()
            .filter(|k| keys.is_none_or(|wanted| wanted.contains(k)))
            .collect();
        if moved.is_empty() {
            return Ok(moved);
        }
        let identities = &self.store.identities;
        self.update_many(
            identities,
            doc! { "_id": { "$in": &moved }, "customer_id": from.to_string() },
            doc! { "$set": { "customer_id": to.to_string() } },
        )
        .await?;
        Ok(moved)
    }

    async fn move_engagements(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
        at: Timestamp,
    ) -> StoreResult<Vec<EngagementId>> {
        let (f, t) = (from.to_string(), to.to_string());
        let mut filter = doc! { "customer_id": &f };
        if let Some(ids) = ids {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            filter.insert("_id", doc! { "$in": ids });
        }
        let engagements = &self.store.engagements;
        let docs = self
            .find_all(
                engagements,
                filter,
                None,
                Some(doc! { "_id": 1, "channel": 1 }),
            )
            .await?;
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let mut moved = Vec::with_capacity(docs.len());
        let mut per_channel: BTreeMap<String, i64> = BTreeMap::new();
        for d in &docs {
            moved.push(EngagementId(parse_id(d, "_id")?));
            let channel = d
                .get_str("channel")
                .map_err(|_| StoreError::Internal("an engagement without a channel".into()))?;
            *per_channel.entry(channel.to_string()).or_insert(0) += 1;
        }
        let id_strings: Vec<String> = moved.iter().map(ToString::to_string).collect();
        self.update_many(
            engagements,
            doc! { "_id": { "$in": id_strings }, "customer_id": &f },
            doc! { "$set": { "customer_id": &t } },
        )
        .await?;
        let (mut take, mut give) = (Document::new(), Document::new());
        for (channel, n) in per_channel {
            take.insert(format!("counts.{channel}"), -n);
            give.insert(format!("counts.{channel}"), n);
        }
        let at = time::format(&at);
        let customers = &self.store.customers;
        for (customer, inc) in [(&f, take), (&t, give)] {
            let newest = self.newest_engagement_at(customer).await?;
            self.update_one(
                customers,
                doc! { "_id": customer },
                doc! {
                    "$inc": inc,
                    "$set": { "last_engagement_at": newest },
                    "$max": { "updated_at": &at },
                },
            )
            .await?;
        }
        Ok(moved)
    }

    async fn engagement_refs(&mut self, customer: CustomerId) -> StoreResult<Vec<EngagementRef>> {
        let engagements = &self.store.engagements;
        let docs = self
            .find_all(
                engagements,
                doc! { "customer_id": customer.to_string() },
                Some(doc! { "occurred_at": 1, "_id": 1 }),
                Some(doc! { "_id": 1, "recorded_at": 1, "source.via": 1 }),
            )
            .await?;
        docs.iter()
            .map(|d| {
                let recorded_at = time_field(d, "recorded_at")?.ok_or_else(|| {
                    StoreError::Internal("an engagement without `recorded_at`".into())
                })?;
                let via = d
                    .get_document("source")
                    .ok()
                    .and_then(|s| s.get_str("via").ok())
                    .map(str::to_string);
                Ok(EngagementRef {
                    id: EngagementId(parse_id(d, "_id")?),
                    recorded_at,
                    via,
                })
            })
            .collect()
    }

    async fn merge(&mut self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        let merges = &self.store.merges;
        let found = self
            .find_one(merges, doc! { "_id": id.to_string() })
            .await?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn put_merge(&mut self, merge: &MergeRecord) -> StoreResult<()> {
        let doc = to_doc(merge, "id")?;
        let merges = &self.store.merges;
        let result = merges
            .replace_one(doc! { "_id": merge.id.to_string() }, doc)
            .upsert(true)
            .session(&mut *self.session)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(self.rerun("merge written concurrently")),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn merges_of(&mut self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        let c = customer.to_string();
        let merges = &self.store.merges;
        let docs = self
            .find_all(
                merges,
                doc! { "$or": [ { "survivor_id": &c }, { "merged_ids": &c } ] },
                None,
                None,
            )
            .await?;
        let mut out = docs
            .into_iter()
            .map(|d| from_doc(d, "id"))
            .collect::<StoreResult<Vec<MergeRecord>>>()?;
        out.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn delete_merge(&mut self, id: MergeId) -> StoreResult<()> {
        let merges = &self.store.merges;
        self.delete_many(merges, doc! { "_id": id.to_string() })
            .await
            .map(|_| ())
    }

    async fn erase_customer(&mut self, id: CustomerId) -> StoreResult<Option<Erased>> {
        let c = id.to_string();
        let store = self.store;
        if self
            .delete_many(&store.customers, doc! { "_id": &c })
            .await?
            == 0
        {
            return Ok(None);
        }
        let owned = doc! { "customer_id": &c };
        // A shared mark is about the number (a switchboard), not the
        // person: it stays, without its owner.
        let unowned = self
            .update_many(
                &store.identities,
                doc! { "customer_id": &c, "shared": true },
                doc! { "$unset": { "customer_id": "" } },
            )
            .await?
            .modified_count;
        let identities = unowned + self.delete_many(&store.identities, owned.clone()).await?;
        let engagements = self.delete_many(&store.engagements, owned.clone()).await?;
        let call_signals = self.delete_many(&store.call_signals, owned).await?;
        self.delete_many(&store.suggestions, doc! { "customer_ids": &c })
            .await?;
        Ok(Some(Erased {
            identities,
            engagements,
            call_signals,
        }))
    }

    async fn append_events(&mut self, events: &[EventEnvelope]) -> StoreResult<()> {
        let docs = events
            .iter()
            .map(event_to_doc)
            .collect::<StoreResult<Vec<_>>>()?;
        let events_coll = &self.store.events;
        let result = self.insert_many(events_coll, docs).await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict(
                "an event with this id is in the log".into(),
            )),
            Err(e) => Err(self.fail(e)),
        }
    }
}
