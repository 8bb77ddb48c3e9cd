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

use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::codec::{event_from_doc, is_duplicate_key, limit_of, map_err};
use super::MongoStore;
use crate::event::EventEnvelope;
use crate::store::{EventLogStore, StoreResult};
use crate::time::{self, Timestamp};

/// The `_id` of the one lease document.
const LEASE_ID: &str = "relay";

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

#[async_trait]
impl EventLogStore for MongoStore {
    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        self.find_events(doc! { "relayed": false }, limit).await
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
