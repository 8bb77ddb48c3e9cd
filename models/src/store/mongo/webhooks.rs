//! Webhook endpoints and deliveries ([`WebhookStore`]).
//!
//! Collections: `webhooks` (one document per endpoint), `webhook_deliveries`
//! (one per delivery, with `due`: when a pending delivery may be taken,
//! the later of its next attempt and its lease; null when done) and
//! `webhook_cursor` (the dispatcher's position in the feed). Records go
//! through their JSON form, as events do, so the stored document is the
//! record's public shape with its id as `_id`.
//!
//! Creating deliveries and moving the cursor is one transaction; a claim
//! takes each delivery with an update conditional on the `due` it read, so
//! two workers never take the same one; disabling an endpoint and its
//! `webhook.disabled` event are one transaction.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::codec::{is_duplicate_key, limit_of, map_err};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::store::{StoreError, StoreResult, Tx, WebhookStore};
use crate::time::{self, Timestamp};
use crate::webhook::{
    disabled_event, AttemptResult, ClaimRequest, Delivery, DeliveryCursor, DeliveryStatus,
    EndpointOutcome, Requeue, Webhook,
};

const WEBHOOKS: &str = "webhooks";
const DELIVERIES: &str = "webhook_deliveries";
const CURSOR: &str = "webhook_cursor";
const DISPATCHED: &str = "dispatched";

impl MongoStore {
    fn webhooks(&self) -> Collection<Document> {
        self.db.collection(WEBHOOKS)
    }

    fn deliveries(&self) -> Collection<Document> {
        self.db.collection(DELIVERIES)
    }

    fn webhook_cursor_coll(&self) -> Collection<Document> {
        self.db.collection(CURSOR)
    }

    /// [`WebhookStore::finish_attempts`] of one.
    async fn finish_one(&self, result: &AttemptResult) -> StoreResult<()> {
        let mut d = result.delivery.clone();
        d.locked_until = None;
        let replaced = self
            .deliveries()
            .replace_one(doc! { "_id": d.id.to_string() }, delivery_doc(&d)?)
            .await
            .map_err(map_err)?;
        if replaced.matched_count == 0 {
            return Ok(());
        }
        let now = d.last_attempt_at.unwrap_or_else(time::now);
        // Most attempts change nothing about a healthy endpoint: a read
        // tells, and only a change runs a transaction.
        if result.endpoint == EndpointOutcome::Unchanged {
            return Ok(());
        }
        let Some(mut w) = self.get_webhook(d.webhook_id).await? else {
            return Ok(());
        };
        if !w.apply_outcome(&result.endpoint, now).0 {
            return Ok(());
        }
        self.run(&mut RecordEndpoint {
            webhook: d.webhook_id,
            outcome: &result.endpoint,
            now,
        })
        .await
    }
}

/// Creates the collections and their indexes (at connect, with the others).
pub(super) async fn create_indexes(store: &MongoStore) -> StoreResult<()> {
    let plain = |keys: Document| IndexModel::builder().keys(keys).build();
    store
        .webhooks()
        .create_indexes([plain(doc! { "created_at": 1 })])
        .await
        .map_err(map_err)?;
    store
        .deliveries()
        .create_indexes([
            plain(doc! { "status": 1, "due": 1 }),
            plain(doc! { "webhook_id": 1, "created_at": 1, "_id": 1 }),
            plain(doc! { "created_at": 1 }),
        ])
        .await
        .map_err(map_err)?;
    store
        .webhook_cursor_coll()
        .create_indexes([IndexModel::builder()
            .keys(doc! { "at": 1 })
            .options(IndexOptions::builder().build())
            .build()])
        .await
        .map_err(map_err)?;
    Ok(())
}

/// A record as a document: its JSON form, `id` as `_id`.
fn to_json_doc<T: Serialize>(value: &T) -> StoreResult<Document> {
    let json = serde_json::to_value(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode a record: {e}")))?;
    let Bson::Document(mut fields) = bson::to_bson(&json)
        .map_err(|e| StoreError::Internal(format!("cannot encode a record: {e}")))?
    else {
        return Err(StoreError::Internal(
            "a record did not encode as an object".into(),
        ));
    };
    let id = fields
        .remove("id")
        .ok_or_else(|| StoreError::Internal("a record without an id".into()))?;
    let mut out = Document::new();
    out.insert("_id", id);
    out.extend(fields);
    Ok(out)
}

fn from_json_doc<T: DeserializeOwned>(mut doc: Document) -> StoreResult<T> {
    doc.remove("due");
    if let Some(id) = doc.remove("_id") {
        doc.insert("id", id);
    }
    let json = Bson::Document(doc).into_relaxed_extjson();
    serde_json::from_value(json)
        .map_err(|e| StoreError::Internal(format!("cannot decode a record: {e}")))
}

fn due_of(d: &Delivery) -> Bson {
    match d.due() {
        Some(at) => Bson::String(time::format(&at)),
        None => Bson::Null,
    }
}

fn delivery_doc(d: &Delivery) -> StoreResult<Document> {
    let mut doc = to_json_doc(d)?;
    doc.insert("due", due_of(d));
    Ok(doc)
}

async fn collect_docs<T: DeserializeOwned>(
    cursor: mongodb::Cursor<Document>,
) -> StoreResult<Vec<T>> {
    let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
    docs.into_iter().map(from_json_doc).collect()
}

/// [`WebhookStore::dispatch_deliveries`].
struct Dispatch<'a> {
    from: Option<Uuid>,
    to: Uuid,
    deliveries: &'a [Delivery],
    moved: bool,
}

#[async_trait]
impl Work for Dispatch<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        self.moved = false;
        let store = tx.store;
        let cursor = tx
            .find_one(&store.webhook_cursor_coll(), doc! { "_id": DISPATCHED })
            .await?;
        let at = cursor
            .as_ref()
            .and_then(|d| d.get_str("at").ok())
            .map(str::to_string);
        if at != self.from.map(|f| f.to_string()) {
            return Ok(());
        }
        if !self.deliveries.is_empty() {
            let ids: Vec<String> = self.deliveries.iter().map(|d| d.id.to_string()).collect();
            let existing = tx
                .find_all(
                    &store.deliveries(),
                    doc! { "_id": { "$in": ids } },
                    None,
                    Some(doc! { "_id": 1 }),
                )
                .await?;
            let existing: std::collections::HashSet<String> = existing
                .iter()
                .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
                .collect();
            let docs = self
                .deliveries
                .iter()
                .filter(|d| !existing.contains(&d.id.to_string()))
                .map(delivery_doc)
                .collect::<StoreResult<Vec<_>>>()?;
            match tx.insert_many(&store.deliveries(), docs).await {
                Ok(()) => {}
                Err(e) if is_duplicate_key(&e) => {
                    return Err(tx.rerun("a concurrent dispatcher created the same delivery"))
                }
                Err(e) => return Err(tx.fail(e)),
            }
        }
        let result = store
            .webhook_cursor_coll()
            .update_one(
                doc! { "_id": DISPATCHED },
                doc! { "$set": { "at": self.to.to_string() } },
            )
            .upsert(true)
            .session(&mut *tx.session)
            .await;
        result.map_err(|e| tx.fail(e))?;
        self.moved = true;
        Ok(())
    }
}

/// The endpoint part of [`WebhookStore::finish_attempt`]: its change and,
/// when it is disabled, its event.
struct RecordEndpoint<'a> {
    webhook: Uuid,
    outcome: &'a EndpointOutcome,
    now: Timestamp,
}

#[async_trait]
impl Work for RecordEndpoint<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        let store = tx.store;
        let Some(found) = tx
            .find_one(&store.webhooks(), doc! { "_id": self.webhook.to_string() })
            .await?
        else {
            return Ok(());
        };
        let mut w: Webhook = from_json_doc(found)?;
        let (changed, disabled) = w.apply_outcome(self.outcome, self.now);
        if !changed {
            return Ok(());
        }
        let doc = to_json_doc(&w)?;
        let result = store
            .webhooks()
            .replace_one(doc! { "_id": w.id.to_string() }, doc)
            .session(&mut *tx.session)
            .await;
        result.map_err(|e| tx.fail(e))?;
        if let Some(reason) = disabled {
            tx.append_events(&[disabled_event(w.id, reason)]).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl WebhookStore for MongoStore {
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        match self.webhooks().insert_one(to_json_doc(webhook)?).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => {
                Err(StoreError::Conflict("a webhook with this id exists".into()))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get_webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>> {
        self.webhooks()
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?
            .map(from_json_doc)
            .transpose()
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let cursor = self
            .webhooks()
            .find(doc! {})
            .sort(doc! { "created_at": 1, "_id": 1 })
            .await
            .map_err(map_err)?;
        collect_docs(cursor).await
    }

    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let result = self
            .webhooks()
            .replace_one(
                doc! { "_id": webhook.id.to_string() },
                to_json_doc(webhook)?,
            )
            .await
            .map_err(map_err)?;
        if result.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete_webhook(&self, id: Uuid) -> StoreResult<bool> {
        let gone = self
            .webhooks()
            .delete_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        self.deliveries()
            .delete_many(doc! { "webhook_id": id.to_string() })
            .await
            .map_err(map_err)?;
        Ok(gone.deleted_count > 0)
    }

    async fn webhook_cursor(&self) -> StoreResult<Option<Uuid>> {
        let found = self
            .webhook_cursor_coll()
            .find_one(doc! { "_id": DISPATCHED })
            .await
            .map_err(map_err)?;
        match found.as_ref().and_then(|d| d.get_str("at").ok()) {
            None => Ok(None),
            Some(at) => at
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Internal("the webhook cursor is not an id".into())),
        }
    }

    async fn dispatch_deliveries(
        &self,
        from: Option<Uuid>,
        to: Uuid,
        deliveries: &[Delivery],
    ) -> StoreResult<bool> {
        let mut work = Dispatch {
            from,
            to,
            deliveries,
            moved: false,
        };
        self.run(&mut work).await?;
        Ok(work.moved)
    }

    async fn claim_deliveries(&self, request: &ClaimRequest) -> StoreResult<Vec<Delivery>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let mut counts: HashMap<Uuid, usize> = request.in_flight.clone();
        let full: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n >= request.per_webhook)
            .map(|(w, _)| w.to_string())
            .collect();
        let mut filter = doc! {
            "status": DeliveryStatus::Pending.as_str(),
            "due": { "$lte": time::format(&request.now) },
        };
        if !full.is_empty() {
            filter.insert("webhook_id", doc! { "$nin": full });
        }
        let scan = request.limit.saturating_mul(4).clamp(1, 2_000);
        let cursor = self
            .deliveries()
            .find(filter)
            .sort(doc! { "due": 1 })
            .limit(limit_of(scan))
            .await
            .map_err(map_err)?;
        let candidates: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let locked_until = request.locked_until();
        let mut claimed = Vec::new();
        for found in candidates {
            if claimed.len() >= request.limit {
                break;
            }
            let old_due = found.get("due").cloned().unwrap_or(Bson::Null);
            let mut d: Delivery = from_json_doc(found)?;
            let n = counts.entry(d.webhook_id).or_insert(0);
            if *n >= request.per_webhook {
                continue;
            }
            d.locked_until = Some(locked_until);
            let taken = self
                .deliveries()
                .find_one_and_update(
                    doc! {
                        "_id": d.id.to_string(),
                        "status": DeliveryStatus::Pending.as_str(),
                        "due": old_due,
                    },
                    doc! { "$set": {
                        "locked_until": time::format(&locked_until),
                        "due": due_of(&d),
                    } },
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(map_err)?;
            // Someone else took it (or it changed) since it was read.
            let Some(taken) = taken else { continue };
            *n += 1;
            claimed.push(from_json_doc(taken)?);
        }
        Ok(claimed)
    }

    async fn finish_attempts(&self, results: &[AttemptResult]) -> StoreResult<()> {
        for result in results {
            self.finish_one(result).await?;
        }
        Ok(())
    }

    async fn get_delivery(&self, id: Uuid) -> StoreResult<Option<Delivery>> {
        self.deliveries()
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?
            .map(from_json_doc)
            .transpose()
    }

    async fn list_deliveries(
        &self,
        webhook: Uuid,
        after: Option<DeliveryCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! { "webhook_id": webhook.to_string() };
        if let Some(c) = after {
            let at = time::format(&c.created_at);
            filter.insert(
                "$or",
                vec![
                    doc! { "created_at": { "$lt": &at } },
                    doc! { "created_at": &at, "_id": { "$lt": c.id.to_string() } },
                ],
            );
        }
        let cursor = self
            .deliveries()
            .find(filter)
            .sort(doc! { "created_at": -1, "_id": -1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect_docs(cursor).await
    }

    async fn requeue_deliveries(
        &self,
        webhook: Uuid,
        which: Requeue,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let now_s = time::format(&now);
        let set = doc! { "$set": {
            "status": DeliveryStatus::Pending.as_str(),
            "next_attempt_at": &now_s,
            "locked_until": Bson::Null,
            "due": &now_s,
        } };
        let result = match which {
            Requeue::One(id) => {
                self.deliveries()
                    .update_one(
                        doc! {
                            "_id": id.to_string(),
                            "webhook_id": webhook.to_string(),
                            "$or": [
                                { "status": { "$ne": DeliveryStatus::Pending.as_str() } },
                                { "locked_until": Bson::Null },
                                { "locked_until": { "$lte": &now_s } },
                            ],
                        },
                        set,
                    )
                    .await
            }
            Requeue::FailedSince(since) => {
                self.deliveries()
                    .update_many(
                        doc! {
                            "webhook_id": webhook.to_string(),
                            "status": DeliveryStatus::Failed.as_str(),
                            "created_at": { "$gte": time::format(&since) },
                        },
                        set,
                    )
                    .await
            }
        };
        Ok(result.map_err(map_err)?.modified_count)
    }

    async fn prune_deliveries(&self, before: Timestamp) -> StoreResult<u64> {
        let result = self
            .deliveries()
            .delete_many(doc! {
                "status": { "$ne": DeliveryStatus::Pending.as_str() },
                "created_at": { "$lt": time::format(&before) },
            })
            .await
            .map_err(map_err)?;
        Ok(result.deleted_count)
    }
}
