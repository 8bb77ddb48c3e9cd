//! The event log ([`EventLogStore`]): the relay reads what the writes
//! appended (see [`super::tx`]), marks it relayed and prunes old events.

use std::ops::Bound;

use async_trait::async_trait;
use redb::{Durability, ReadableTable};
use uuid::Uuid;

use super::{db_err, tx, EmbeddedStore, DELETE_CHUNK};
use crate::event::{EventEnvelope, EventFilter, EventPage};
use crate::store::{EventLogStore, StoreResult};
use crate::time::Timestamp;

/// The most events one feed read examines.
const FEED_SCAN: usize = 10_000;

#[async_trait]
impl EventLogStore for EmbeddedStore {
    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let cursor = relayed_through(&txn.open_table(tx::EVENT_CURSORS).map_err(db_err)?)?;
            read_after(&txn.open_table(tx::EVENTS).map_err(db_err)?, cursor, limit)
        })
        .await
    }

    async fn mark_events_relayed(&self, ids: &[Uuid]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.run(move |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            // Not synced on its own: the next durable commit of any write
            // takes it to disk. A crash before that relays these events
            // again, which consumers take in their stride (they apply events
            // idempotently); a sync per relayed batch would cost more.
            txn.set_durability(Durability::None);
            {
                // The relay marks what it read, in order: the cursor moves
                // to the newest (never back).
                let mut cursors = txn.open_table(tx::EVENT_CURSORS).map_err(db_err)?;
                let newest = ids.iter().map(|id| id.as_u128()).max().unwrap_or(0);
                let cursor = relayed_through(&cursors)?.unwrap_or(0);
                if newest > cursor {
                    cursors
                        .insert(tx::RELAYED_THROUGH, newest)
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn unrelayed_count(&self) -> StoreResult<u64> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let cursor = relayed_through(&txn.open_table(tx::EVENT_CURSORS).map_err(db_err)?)?;
            let log = txn.open_table(tx::EVENTS).map_err(db_err)?;
            let mut n = 0u64;
            for entry in log.range::<u128>(after(cursor)).map_err(db_err)? {
                entry.map_err(db_err)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn events_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<EventEnvelope>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let log = txn.open_table(tx::EVENTS).map_err(db_err)?;
            read_after(&log, after.map(|a| a.as_u128()), limit)
        })
        .await
    }

    async fn read_feed(
        &self,
        after: Option<Uuid>,
        filter: &EventFilter,
        limit: usize,
    ) -> StoreResult<Option<EventPage>> {
        let filter = filter.clone();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let log = txn.open_table(tx::EVENTS).map_err(db_err)?;
            let cursor = after.map(|a| a.as_u128());
            if let Some(c) = cursor {
                if log.get(c).map_err(db_err)?.is_none() {
                    return Ok(None);
                }
            }
            let mut page = EventPage {
                events: Vec::new(),
                last: after,
            };
            for entry in log
                .range::<u128>(self::after(cursor))
                .map_err(db_err)?
                .take(FEED_SCAN)
            {
                let (k, v) = entry.map_err(db_err)?;
                let event = tx::decode_event(k.value(), v.value())?;
                page.last = Some(event.id);
                if filter.matches(&event) {
                    page.events.push(event);
                    if page.events.len() >= limit {
                        break;
                    }
                }
            }
            Ok(Some(page))
        })
        .await
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut pruned = 0u64;
            {
                let mut log = txn.open_table(tx::EVENTS).map_err(db_err)?;
                let cursor = relayed_through(&txn.open_table(tx::EVENT_CURSORS).map_err(db_err)?)?
                    .unwrap_or(0);
                let mut gone = Vec::new();
                // Ids are in commit order, so the old ones come first.
                for entry in log.iter().map_err(db_err)?.take(DELETE_CHUNK) {
                    let (k, v) = entry.map_err(db_err)?;
                    let occurred_at = tx::event_time(k.value(), v.value())?;
                    // Unrelayed events stay whatever their age.
                    if occurred_at >= before || k.value() > cursor {
                        break;
                    }
                    gone.push(k.value());
                }
                for id in gone {
                    log.remove(id).map_err(db_err)?;
                    pruned += 1;
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(pruned)
        })
        .await
    }

    async fn relay_lease(&self, _holder: &str, _ttl: std::time::Duration) -> StoreResult<bool> {
        // One process holds the file, so its relay is the only one.
        Ok(true)
    }
}

/// The id of the last event relayed, if any.
fn relayed_through(cursors: &impl ReadableTable<&'static str, u128>) -> StoreResult<Option<u128>> {
    Ok(cursors
        .get(tx::RELAYED_THROUGH)
        .map_err(db_err)?
        .map(|g| g.value()))
}

/// The range of ids strictly after `cursor` (all of them for `None`).
fn after(cursor: Option<u128>) -> (Bound<u128>, Bound<u128>) {
    match cursor {
        Some(c) => (Bound::Excluded(c), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// Up to `limit` events after `cursor`, in id order.
fn read_after(
    log: &impl ReadableTable<u128, &'static [u8]>,
    cursor: Option<u128>,
    limit: usize,
) -> StoreResult<Vec<EventEnvelope>> {
    let mut out = Vec::new();
    for entry in log
        .range::<u128>(after(cursor))
        .map_err(db_err)?
        .take(limit)
    {
        let (k, v) = entry.map_err(db_err)?;
        out.push(tx::decode_event(k.value(), v.value())?);
    }
    Ok(out)
}
