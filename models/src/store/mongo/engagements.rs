//! Engagements: one document each; inserts keep the customer's counters and
//! append `engagement.recorded`, all in one transaction.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document};

use super::codec::{collect, from_doc, is_duplicate_key, limit_of, map_err, parse_id, to_doc};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::customer::Customer;
use crate::engagement::Engagement;
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{CustomerId, DeviceId, EngagementId};
use crate::store::{
    EngagementCursor, EngagementFilter, EngagementInsert, EngagementStore, StoreError, StoreResult,
    Tx,
};
use crate::time::{self, Timestamp};

/// How many `merged_into` links an engagement follows to the customer that
/// holds a merged customer's records now.
const MAX_HOPS: usize = 32;

/// What a batch adds to one customer.
#[derive(Default)]
struct Bump {
    counts: BTreeMap<&'static str, i64>,
    latest: Option<Timestamp>,
    recorded: Option<Timestamp>,
}

/// [`crate::store::EngagementStore::insert_engagements`] in one transaction.
struct InsertEngagements<'i> {
    items: &'i [Engagement],
    out: Vec<EngagementInsert>,
}

#[async_trait]
impl Work for InsertEngagements<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        self.out.clear();
        let store = tx.store;
        let owners = survivors(tx, self.items).await?;

        // What is stored already, by id and by (device, client event id).
        let ids: Vec<String> = self.items.iter().map(|e| e.id.to_string()).collect();
        let mut by_id: HashMap<String, CustomerId> = HashMap::new();
        for d in tx
            .find_all(
                &store.engagements,
                doc! { "_id": { "$in": &ids } },
                None,
                Some(doc! { "customer_id": 1 }),
            )
            .await?
        {
            by_id.insert(super::codec::string_id(&d)?, parse_id(&d, "customer_id")?);
        }
        let mut client_events: BTreeMap<DeviceId, Vec<&str>> = BTreeMap::new();
        for e in self.items {
            if let (Some(device), Some(event)) = (e.source.device_id, &e.source.client_event_id) {
                client_events.entry(device).or_default().push(event);
            }
        }
        let mut by_event: HashMap<(DeviceId, String), CustomerId> = HashMap::new();
        for (device, events) in client_events {
            for d in tx
                .find_all(
                    &store.engagements,
                    doc! {
                        "source.device_id": device.to_string(),
                        "source.client_event_id": { "$in": events },
                    },
                    None,
                    Some(doc! { "customer_id": 1, "source.client_event_id": 1 }),
                )
                .await?
            {
                let event = d
                    .get_document("source")
                    .ok()
                    .and_then(|s| s.get_str("client_event_id").ok())
                    .ok_or_else(|| {
                        StoreError::Internal("an engagement without its client event id".into())
                    })?;
                by_event.insert((device, event.to_string()), parse_id(&d, "customer_id")?);
            }
        }

        let mut docs = Vec::new();
        let mut events = Vec::new();
        let mut bumps: BTreeMap<CustomerId, Bump> = BTreeMap::new();
        for item in self.items {
            let event_key = match (item.source.device_id, &item.source.client_event_id) {
                (Some(device), Some(event)) => Some((device, event.clone())),
                _ => None,
            };
            let existing = by_id
                .get(&item.id.to_string())
                .or_else(|| event_key.as_ref().and_then(|k| by_event.get(k)));
            if let Some(customer_id) = existing {
                self.out.push(EngagementInsert::Duplicate {
                    customer_id: *customer_id,
                });
                continue;
            }
            let owner = owners
                .get(&item.customer_id)
                .copied()
                .unwrap_or(item.customer_id);
            let mut stored = item.clone();
            stored.customer_id = owner;
            docs.push(to_doc(&stored, "id")?);
            events.push(EventEnvelope::about(
                owner,
                DomainEvent::engagement_recorded(&stored),
            ));
            // Later items of the batch with the same id or client event id
            // are duplicates of this one.
            by_id.insert(stored.id.to_string(), owner);
            if let Some(k) = event_key {
                by_event.insert(k, owner);
            }
            let bump = bumps.entry(owner).or_default();
            *bump.counts.entry(stored.channel().as_str()).or_insert(0) += 1;
            bump.latest = bump.latest.max(Some(stored.occurred_at));
            bump.recorded = bump.recorded.max(Some(stored.recorded_at));
            self.out
                .push(EngagementInsert::Created { customer_id: owner });
        }

        match tx.insert_many(&store.engagements, docs).await {
            Ok(()) => {}
            // Stored by a concurrent transaction after this one read: the
            // rerun reports it as a duplicate.
            Err(e) if is_duplicate_key(&e) => {
                return Err(tx.rerun("engagements inserted concurrently"))
            }
            Err(e) => return Err(tx.fail(e)),
        }
        for (customer, bump) in bumps {
            let mut inc = Document::new();
            for (channel, n) in bump.counts {
                inc.insert(format!("counts.{channel}"), n);
            }
            let mut max = Document::new();
            if let Some(latest) = bump.latest {
                max.insert("last_engagement_at", time::format(&latest));
            }
            if let Some(recorded) = bump.recorded {
                max.insert("updated_at", time::format(&recorded));
            }
            tx.update_one(
                &store.customers,
                doc! { "_id": customer.to_string() },
                doc! { "$inc": inc, "$max": max },
            )
            .await?;
        }
        tx.append_events(&events).await
    }
}

/// Where the engagements of each named customer go: the customer itself, or
/// for a merged one the customer it was merged into (followed to the end,
/// at most [`MAX_HOPS`] links). One read for the batch, one more per link.
async fn survivors(
    tx: &mut MongoTx<'_>,
    items: &[Engagement],
) -> StoreResult<HashMap<CustomerId, CustomerId>> {
    let store = tx.store;
    let mut named: Vec<CustomerId> = items.iter().map(|e| e.customer_id).collect();
    named.sort();
    named.dedup();
    let ids: Vec<String> = named.iter().map(ToString::to_string).collect();
    let mut next_of: HashMap<CustomerId, CustomerId> = HashMap::new();
    for d in tx
        .find_all(
            &store.customers,
            doc! { "_id": { "$in": ids }, "status": "merged" },
            None,
            Some(doc! { "merged_into": 1 }),
        )
        .await?
    {
        if let (Ok(id), Ok(into)) = (parse_id(&d, "_id"), parse_id(&d, "merged_into")) {
            next_of.insert(id, into);
        }
    }
    let mut out = HashMap::with_capacity(named.len());
    for id in named {
        let mut at = id;
        let mut hops = 0;
        while let Some(next) = next_of.get(&at).copied() {
            if next == at || hops >= MAX_HOPS {
                break;
            }
            at = next;
            hops += 1;
            if next_of.contains_key(&at) {
                continue;
            }
            // Is the next one merged too?
            let found = tx
                .find_one(
                    &store.customers,
                    doc! { "_id": at.to_string(), "status": "merged" },
                )
                .await?;
            if let Some(d) = found {
                if let Ok(into) = parse_id(&d, "merged_into") {
                    next_of.insert(at, into);
                }
            }
        }
        out.insert(id, at);
    }
    Ok(out)
}

#[async_trait]
impl EngagementStore for MongoStore {
    async fn insert_engagements(&self, items: &[Engagement]) -> StoreResult<Vec<EngagementInsert>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Batches for one customer conflict on its counters, and under load
        // a conflict costs more than waiting: batches of this process that
        // name the same customers take turns (stripes locked in order, so
        // no deadlock). Other processes and merges still conflict, and rerun.
        let stripes = self.customer_locks.len();
        let mut wanted: Vec<usize> = items
            .iter()
            .map(|e| (e.customer_id.0.as_u128() % stripes as u128) as usize)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut guards = Vec::with_capacity(wanted.len());
        for stripe in wanted {
            if let Some(lock) = self.customer_locks.get(stripe) {
                guards.push(lock.lock().await);
            }
        }
        let mut work = InsertEngagements {
            items,
            out: Vec::with_capacity(items.len()),
        };
        self.run(&mut work).await?;
        drop(guards);
        Ok(work.out)
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

    async fn customers_with_latest_engagements(
        &self,
        after: Option<CustomerId>,
        limit: usize,
        per_customer: usize,
    ) -> StoreResult<Vec<(Customer, Vec<Engagement>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Ids are hyphenated lowercase UUIDs: their text order is id order.
        let filter = match after {
            Some(id) => doc! { "_id": { "$gt": id.to_string() } },
            None => Document::new(),
        };
        let cursor = self
            .customers
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        let customers: Vec<Customer> = collect(cursor, "id").await?;
        // Each customer's latest engagements are one query on the
        // (customer_id, occurred_at) index; several run at once.
        let unfiltered = EngagementFilter::default();
        let unfiltered = &unfiltered;
        futures::stream::iter(customers)
            .map(|customer| async move {
                let latest = self
                    .list_engagements(customer.id, unfiltered, None, per_customer)
                    .await?;
                Ok((customer, latest))
            })
            .buffered(LATEST_READS_IN_FLIGHT)
            .try_collect()
            .await
    }
}

/// Customers whose latest engagements are read at the same time by
/// [`EngagementStore::customers_with_latest_engagements`].
const LATEST_READS_IN_FLIGHT: usize = 32;
