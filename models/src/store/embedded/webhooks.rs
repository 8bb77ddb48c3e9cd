//! Webhook endpoints and deliveries ([`WebhookStore`]).
//!
//! Tables:
//! - `webhooks`: id → endpoint JSON.
//! - `webhook_deliveries`: id → delivery JSON.
//! - `webhook_deliveries_by_webhook`: (endpoint, newest-first created_at,
//!   newest-first id) → (), for an endpoint's list.
//! - `webhook_due`: (endpoint, due time, id) → (), one entry per pending
//!   delivery: when its next attempt is due, or when the lease of the
//!   worker holding it ends. A claim scans each endpoint with room up to
//!   now, so an endpoint at its limit costs nothing however many of its
//!   deliveries wait.
//! - `webhook_cursor`: `dispatched` → the last event the dispatcher handled.
//!
//! Claims and attempt results are committed without a sync of their own
//! (the next durable commit takes them to disk): a crash that loses one
//! makes the delivery due again, and it is sent again, which at-least-once
//! delivery allows. Creating deliveries is durable.

use std::collections::HashMap;
use std::ops::Bound;

use async_trait::async_trait;
use redb::{Durability, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{db_err, decode, encode, time_key, tx, EmbeddedStore, DELETE_CHUNK};
use crate::store::{StoreError, StoreResult, WebhookStore};
use crate::time::Timestamp;
use crate::webhook::{
    AttemptResult, ClaimRequest, Delivery, DeliveryCursor, DeliveryStatus, EndpointOutcome,
    Requeue, Webhook,
};

const WEBHOOKS: TableDefinition<u128, &[u8]> = TableDefinition::new("webhooks");
const DELIVERIES: TableDefinition<u128, &[u8]> = TableDefinition::new("webhook_deliveries");
const BY_WEBHOOK: TableDefinition<(u128, u64, u128), ()> =
    TableDefinition::new("webhook_deliveries_by_webhook");
const DUE: TableDefinition<(u128, u64, u128), ()> = TableDefinition::new("webhook_due");
const CURSOR: TableDefinition<&str, u128> = TableDefinition::new("webhook_cursor");
const DISPATCHED: &str = "dispatched";

/// Creates the tables (at open, with the others).
pub(super) fn open_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(WEBHOOKS).map_err(db_err)?;
    txn.open_table(DELIVERIES).map_err(db_err)?;
    txn.open_table(BY_WEBHOOK).map_err(db_err)?;
    txn.open_table(DUE).map_err(db_err)?;
    txn.open_table(CURSOR).map_err(db_err)?;
    Ok(())
}

fn list_key(d: &Delivery) -> (u128, u64, u128) {
    (
        d.webhook_id.as_u128(),
        !time_key(&d.created_at),
        !d.id.as_u128(),
    )
}

fn read_delivery(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> StoreResult<Option<Delivery>> {
    match table.get(id).map_err(db_err)? {
        Some(bytes) => decode("delivery", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes a delivery and moves its due entry (`previous` is what was stored).
fn put_delivery(
    txn: &WriteTransaction,
    previous: Option<&Delivery>,
    d: &Delivery,
) -> StoreResult<()> {
    let id = d.id.as_u128();
    let mut deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
    let mut due = txn.open_table(DUE).map_err(db_err)?;
    deliveries
        .insert(id, encode("delivery", d)?.as_slice())
        .map_err(db_err)?;
    match previous {
        Some(p) => {
            if let Some(at) = p.due() {
                due.remove((p.webhook_id.as_u128(), time_key(&at), id))
                    .map_err(db_err)?;
            }
        }
        None => {
            txn.open_table(BY_WEBHOOK)
                .map_err(db_err)?
                .insert(list_key(d), ())
                .map_err(db_err)?;
        }
    }
    if let Some(at) = d.due() {
        due.insert((d.webhook_id.as_u128(), time_key(&at), id), ())
            .map_err(db_err)?;
    }
    Ok(())
}

/// Deletes a delivery and its index entries.
fn remove_delivery(txn: &WriteTransaction, d: &Delivery) -> StoreResult<()> {
    let id = d.id.as_u128();
    txn.open_table(DELIVERIES)
        .map_err(db_err)?
        .remove(id)
        .map_err(db_err)?;
    txn.open_table(BY_WEBHOOK)
        .map_err(db_err)?
        .remove(list_key(d))
        .map_err(db_err)?;
    if let Some(at) = d.due() {
        txn.open_table(DUE)
            .map_err(db_err)?
            .remove((d.webhook_id.as_u128(), time_key(&at), id))
            .map_err(db_err)?;
    }
    Ok(())
}

fn read_webhook(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> StoreResult<Option<Webhook>> {
    match table.get(id).map_err(db_err)? {
        Some(bytes) => decode("webhook", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Records what an attempt said about its endpoint; the events to append.
fn record_endpoint(
    txn: &WriteTransaction,
    webhook: Uuid,
    outcome: &EndpointOutcome,
    now: Timestamp,
) -> StoreResult<()> {
    if *outcome == EndpointOutcome::Unchanged {
        return Ok(());
    }
    let mut table = txn.open_table(WEBHOOKS).map_err(db_err)?;
    let Some(mut w) = read_webhook(&table, webhook.as_u128())? else {
        return Ok(());
    };
    let (changed, disabled) = w.apply_outcome(outcome, now);
    if changed {
        table
            .insert(w.id.as_u128(), encode("webhook", &w)?.as_slice())
            .map_err(db_err)?;
    }
    drop(table);
    if let Some(reason) = disabled {
        tx::append_events(txn, &[crate::webhook::disabled_event(w.id, reason)])?;
    }
    Ok(())
}

#[async_trait]
impl WebhookStore for EmbeddedStore {
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let bytes = encode("webhook", webhook)?;
        let id = webhook.id.as_u128();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(WEBHOOKS).map_err(db_err)?;
                if table.get(id).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("a webhook with this id exists".into()));
                }
                table.insert(id, bytes.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            read_webhook(&txn.open_table(WEBHOOKS).map_err(db_err)?, id.as_u128())
        })
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(WEBHOOKS).map_err(db_err)?;
            let mut out: Vec<Webhook> = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("webhook", v.value())?);
            }
            out.sort_by_key(|w| (w.created_at, w.id));
            Ok(out)
        })
        .await
    }

    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let bytes = encode("webhook", webhook)?;
        let id = webhook.id.as_u128();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(WEBHOOKS).map_err(db_err)?;
                if table.get(id).map_err(db_err)?.is_none() {
                    return Err(StoreError::NotFound);
                }
                table.insert(id, bytes.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn delete_webhook(&self, id: Uuid) -> StoreResult<bool> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let existed = {
                let mut table = txn.open_table(WEBHOOKS).map_err(db_err)?;
                let existed = table.remove(id.as_u128()).map_err(db_err)?.is_some();
                existed
            };
            let mut gone = Vec::new();
            {
                let by_webhook = txn.open_table(BY_WEBHOOK).map_err(db_err)?;
                let deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
                let w = id.as_u128();
                for entry in by_webhook
                    .range((w, 0u64, 0u128)..=(w, u64::MAX, u128::MAX))
                    .map_err(db_err)?
                {
                    let (k, _) = entry.map_err(db_err)?;
                    if let Some(d) = read_delivery(&deliveries, !k.value().2)? {
                        gone.push(d);
                    }
                }
            }
            for d in &gone {
                remove_delivery(&txn, d)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(existed)
        })
        .await
    }

    async fn webhook_cursor(&self) -> StoreResult<Option<Uuid>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CURSOR).map_err(db_err)?;
            Ok(table
                .get(DISPATCHED)
                .map_err(db_err)?
                .map(|g| Uuid::from_u128(g.value())))
        })
    }

    async fn dispatch_deliveries(
        &self,
        from: Option<Uuid>,
        to: Uuid,
        deliveries: &[Delivery],
    ) -> StoreResult<bool> {
        let deliveries = deliveries.to_vec();
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            // Moving the cursor alone need not reach the disk now: a crash
            // that loses it makes the dispatcher read those events again,
            // and they create nothing. New deliveries are durable.
            if deliveries.is_empty() {
                txn.set_durability(Durability::None);
            }
            {
                let mut cursor = txn.open_table(CURSOR).map_err(db_err)?;
                let now = cursor.get(DISPATCHED).map_err(db_err)?.map(|g| g.value());
                if now != from.map(|f| f.as_u128()) {
                    return Ok(false);
                }
                cursor.insert(DISPATCHED, to.as_u128()).map_err(db_err)?;
            }
            for d in &deliveries {
                let exists = txn
                    .open_table(DELIVERIES)
                    .map_err(db_err)?
                    .get(d.id.as_u128())
                    .map_err(db_err)?
                    .is_some();
                if !exists {
                    put_delivery(&txn, None, d)?;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn claim_deliveries(&self, request: &ClaimRequest) -> StoreResult<Vec<Delivery>> {
        let request = request.clone();
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(Durability::None);
            let counts: HashMap<u128, usize> = request
                .in_flight
                .iter()
                .map(|(k, v)| (k.as_u128(), *v))
                .collect();
            let mut chosen = Vec::new();
            {
                let mut endpoints = Vec::new();
                for entry in txn
                    .open_table(WEBHOOKS)
                    .map_err(db_err)?
                    .iter()
                    .map_err(db_err)?
                {
                    endpoints.push(entry.map_err(db_err)?.0.value());
                }
                // Start at a different endpoint each time, so that a claim
                // that fills up early does not always favour the same ones.
                if !endpoints.is_empty() {
                    let start = (Uuid::new_v4().as_u128() % endpoints.len() as u128) as usize;
                    endpoints.rotate_left(start);
                }
                let due = txn.open_table(DUE).map_err(db_err)?;
                let now = time_key(&request.now);
                for w in endpoints {
                    let room = request
                        .per_webhook
                        .saturating_sub(counts.get(&w).copied().unwrap_or(0))
                        .min(request.limit - chosen.len());
                    if room == 0 {
                        if chosen.len() >= request.limit {
                            break;
                        }
                        continue;
                    }
                    for entry in due
                        .range((w, 0u64, 0u128)..=(w, now, u128::MAX))
                        .map_err(db_err)?
                        .take(room)
                    {
                        chosen.push(entry.map_err(db_err)?.0.value().2);
                    }
                }
            }
            let locked_until = request.locked_until();
            let mut claimed = Vec::with_capacity(chosen.len());
            for id in chosen {
                let previous = {
                    let table = txn.open_table(DELIVERIES).map_err(db_err)?;
                    read_delivery(&table, id)?
                };
                let Some(previous) = previous else { continue };
                let mut d = previous.clone();
                d.locked_until = Some(locked_until);
                put_delivery(&txn, Some(&previous), &d)?;
                claimed.push(d);
            }
            txn.commit().map_err(db_err)?;
            Ok(claimed)
        })
        .await
    }

    async fn finish_attempts(&self, results: &[AttemptResult]) -> StoreResult<()> {
        if results.is_empty() {
            return Ok(());
        }
        let results = results.to_vec();
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            // An endpoint disabled writes an event: that commit is durable.
            let quiet = results.iter().all(|r| {
                matches!(
                    r.endpoint,
                    EndpointOutcome::Unchanged | EndpointOutcome::Succeeded
                )
            });
            if quiet {
                txn.set_durability(Durability::None);
            }
            for result in &results {
                let previous = {
                    let table = txn.open_table(DELIVERIES).map_err(db_err)?;
                    read_delivery(&table, result.delivery.id.as_u128())?
                };
                // Gone with its endpoint.
                let Some(previous) = previous else { continue };
                let mut d = result.delivery.clone();
                d.locked_until = None;
                put_delivery(&txn, Some(&previous), &d)?;
                let now = d.last_attempt_at.unwrap_or_else(crate::time::now);
                record_endpoint(&txn, d.webhook_id, &result.endpoint, now)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_delivery(&self, id: Uuid) -> StoreResult<Option<Delivery>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            read_delivery(&txn.open_table(DELIVERIES).map_err(db_err)?, id.as_u128())
        })
    }

    async fn list_deliveries(
        &self,
        webhook: Uuid,
        after: Option<DeliveryCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let by_webhook = txn.open_table(BY_WEBHOOK).map_err(db_err)?;
            let deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
            let w = webhook.as_u128();
            let start = match after {
                Some(c) => Bound::Excluded((w, !time_key(&c.created_at), !c.id.as_u128())),
                None => Bound::Included((w, 0u64, 0u128)),
            };
            let mut out = Vec::new();
            for entry in by_webhook
                .range::<(u128, u64, u128)>((start, Bound::Included((w, u64::MAX, u128::MAX))))
                .map_err(db_err)?
                .take(limit)
            {
                let (k, _) = entry.map_err(db_err)?;
                if let Some(d) = read_delivery(&deliveries, !k.value().2)? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn requeue_deliveries(
        &self,
        webhook: Uuid,
        which: Requeue,
        now: Timestamp,
    ) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut chosen = Vec::new();
            {
                let deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
                match which {
                    Requeue::One(id) => {
                        if let Some(d) = read_delivery(&deliveries, id.as_u128())? {
                            if d.webhook_id == webhook {
                                chosen.push(d);
                            }
                        }
                    }
                    Requeue::FailedSince(since) => {
                        let by_webhook = txn.open_table(BY_WEBHOOK).map_err(db_err)?;
                        let w = webhook.as_u128();
                        // Newest first: stop at the first one created before `since`.
                        for entry in by_webhook
                            .range((w, 0u64, 0u128)..=(w, !time_key(&since), u128::MAX))
                            .map_err(db_err)?
                        {
                            let (k, _) = entry.map_err(db_err)?;
                            if let Some(d) = read_delivery(&deliveries, !k.value().2)? {
                                if d.status == DeliveryStatus::Failed {
                                    chosen.push(d);
                                }
                            }
                        }
                    }
                }
            }
            let mut n = 0;
            for previous in chosen {
                let leased = previous.status == DeliveryStatus::Pending
                    && previous.locked_until.is_some_and(|l| l > now);
                if leased {
                    continue;
                }
                let mut d = previous.clone();
                d.status = DeliveryStatus::Pending;
                d.next_attempt_at = Some(now);
                d.locked_until = None;
                put_delivery(&txn, Some(&previous), &d)?;
                n += 1;
            }
            txn.commit().map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn prune_deliveries(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut gone = Vec::new();
            {
                let deliveries = txn.open_table(DELIVERIES).map_err(db_err)?;
                for entry in deliveries.iter().map_err(db_err)? {
                    let (_, v) = entry.map_err(db_err)?;
                    let d: Delivery = decode("delivery", v.value())?;
                    if d.created_at < before && d.status != DeliveryStatus::Pending {
                        gone.push(d);
                        if gone.len() >= DELETE_CHUNK {
                            break;
                        }
                    }
                }
            }
            for d in &gone {
                remove_delivery(&txn, d)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(gone.len() as u64)
        })
        .await
    }
}
