//! The event log (`events`) and the relay lease (`relay_lease`).
//!
//! Events are appended inside the transactions of the writes that made them
//! ([`super::tx::MongoTx`]'s `append_events`); here the relay reads them,
//! marks them relayed and prunes old ones. A document is the envelope's JSON
//! form with its id as `_id` and a `relayed` flag; ids are UUIDv7 strings,
//! which sort in the order the events were made.
//!
//! Ids are stamped when an event is made, before its transaction commits, so
//! two concurrent transactions may commit their events out of id order: a
//! reader paging with [`EventLogStore::events_after`] right at the head of
//! the log can miss an event that commits late with a smaller id. The relay
//! does not depend on that order (it reads what is not relayed yet).
//!
//! The public feed therefore has an order of its own: when the relay takes a
//! batch of events to publish, it stamps them with the next batch number
//! (`seq`, from a counter beside the lease). The feed is the sequenced events
//! ordered by `(seq, _id)`, a batch's events in id order, which is also the
//! order the relay publishes them in. An event that commits late lands in a
//! later batch, after every event a feed reader has seen. Events not yet
//! sequenced are not in the feed.

use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::codec::{event_from_doc, is_duplicate_key, limit_of, map_err};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::event::{EventEnvelope, EventFilter, EventPage};
use crate::store::{EventLogStore, StoreError, StoreResult};
use crate::time::{self, Timestamp};

/// The `_id` of the one lease document.
const LEASE_ID: &str = "relay";
/// The `_id` of the feed's batch counter (in the lease collection).
const SEQ_ID: &str = "feed_seq";
/// The field holding an event's batch number in the feed.
const SEQ: &str = "seq";

impl MongoStore {
    async fn find_events(&self, filter: Document, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cursor = self
            .events
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        docs.into_iter().map(event_from_doc).collect()
    }
}

/// Stamps events with the next feed batch number (see the module documentation).
struct Sequence {
    ids: Vec<String>,
}

#[async_trait]
impl Work for Sequence {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        let store = tx.store;
        let counter = store
            .relay_lease
            .find_one_and_update(doc! { "_id": SEQ_ID }, doc! { "$inc": { "n": 1_i64 } })
            .upsert(true)
            .return_document(mongodb::options::ReturnDocument::After)
            .session(&mut *tx.session)
            .await;
        let counter = counter.map_err(|e| tx.fail(e))?;
        let seq = counter
            .as_ref()
            .and_then(|d| d.get_i64("n").ok())
            .ok_or_else(|| StoreError::Internal("the feed counter did not count".into()))?;
        tx.update_many(
            &store.events,
            doc! { "_id": { "$in": self.ids.clone() }, SEQ: { "$exists": false } },
            doc! { "$set": { SEQ: seq } },
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl EventLogStore for MongoStore {
    /// Also stamps the events with the next feed batch number, unless an
    /// earlier attempt did (a relay that crashed before marking them keeps
    /// their place in the feed).
    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        let events = self.find_events(doc! { "relayed": false }, limit).await?;
        if events.is_empty() {
            return Ok(events);
        }
        let ids = events.iter().map(|e| e.id.to_string()).collect();
        // One transaction: a feed reader sees the whole batch stamped or
        // none of it, never a later event of the batch before an earlier one.
        self.run(&mut Sequence { ids }).await?;
        Ok(events)
    }

    async fn mark_events_relayed(&self, ids: &[uuid::Uuid]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.events
            .update_many(
                doc! { "_id": { "$in": ids } },
                doc! { "$set": { "relayed": true } },
            )
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn unrelayed_count(&self) -> StoreResult<u64> {
        self.events
            .count_documents(doc! { "relayed": false })
            .await
            .map_err(map_err)
    }

    async fn events_after(
        &self,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<EventEnvelope>> {
        let filter = match after {
            Some(id) => doc! { "_id": { "$gt": id.to_string() } },
            None => Document::new(),
        };
        self.find_events(filter, limit).await
    }

    async fn read_feed(
        &self,
        after: Option<uuid::Uuid>,
        filter: &EventFilter,
        limit: usize,
    ) -> StoreResult<Option<EventPage>> {
        let mut query = Document::new();
        if let Some(after) = after {
            let id = after.to_string();
            let Some(at) = self
                .events
                .find_one(doc! { "_id": &id })
                .projection(doc! { SEQ: 1 })
                .await
                .map_err(map_err)?
            else {
                return Ok(None);
            };
            let Ok(seq) = at.get_i64(SEQ) else {
                // Not in the feed yet: no reader can have seen it.
                return Ok(None);
            };
            query.insert(
                "$or",
                vec![
                    doc! { SEQ: seq, "_id": { "$gt": id } },
                    doc! { SEQ: { "$gt": seq } },
                ],
            );
        } else {
            query.insert(SEQ, doc! { "$exists": true });
        }
        if !filter.types.is_empty() {
            query.insert("type", doc! { "$in": filter.types.clone() });
        }
        if let Some(c) = filter.customer_id {
            query.insert("customer_id", c.to_string());
        }
        if limit == 0 {
            return Ok(Some(EventPage {
                events: Vec::new(),
                last: after,
            }));
        }
        let cursor = self
            .events
            .find(query)
            .sort(doc! { SEQ: 1, "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let events = docs
            .into_iter()
            .map(event_from_doc)
            .collect::<StoreResult<Vec<_>>>()?;
        let last = events.last().map(|e| e.id).or(after);
        Ok(Some(EventPage { events, last }))
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        self.events
            .delete_many(doc! {
                "relayed": true,
                "occurred_at": { "$lt": time::format(&before) },
            })
            .await
            .map(|r| r.deleted_count)
            .map_err(map_err)
    }

    /// Takes the lease when it is free, expired or held by `holder` already
    /// (then renews it). When another holder has it, the filter matches
    /// nothing and the upsert's insert collides with the lease's `_id`.
    async fn relay_lease(&self, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let now = time::now();
        // At most a century: the expiry must stay a four-digit-year text.
        let century = TimeDelta::days(36_500);
        let ttl = TimeDelta::from_std(ttl).unwrap_or(century).min(century);
        let until = now.checked_add_signed(ttl).unwrap_or(now);
        let result = self
            .relay_lease
            .update_one(
                doc! {
                    "_id": LEASE_ID,
                    "$or": [
                        { "holder": holder },
                        { "expires_at": { "$lte": time::format(&now) } },
                    ],
                },
                doc! { "$set": { "holder": holder, "expires_at": time::format(&until) } },
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }
}
