//! The event log ([`EventLogStore`]): the relay reads what the writes
//! appended (see [`super::tx`]), marks it relayed and prunes old events.

use std::ops::Bound;

use async_trait::async_trait;
use redb::{Durability, ReadableTable, ReadableTableMetadata};
use uuid::Uuid;

use super::{db_err, decode, tx, EmbeddedStore, DELETE_CHUNK};
use crate::event::EventEnvelope;
use crate::store::{EventLogStore, StoreResult};
use crate::time::Timestamp;

#[async_trait]
impl EventLogStore for EmbeddedStore {
    async fn unrelayed_events(&self, limit: usize) -> StoreResult<Vec<EventEnvelope>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
            let log = txn.open_table(tx::EVENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in unrelayed.iter().map_err(db_err)?.take(limit) {
                let id = entry.map_err(db_err)?.0.value();
                if let Some(bytes) = log.get(id).map_err(db_err)? {
                    out.push(decode("event", bytes.value()).map_err(tx::corrupt_event)?);
                }
            }
            Ok(out)
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
                let mut unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
                for id in ids {
                    unrelayed.remove(id.as_u128()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn unrelayed_count(&self) -> StoreResult<u64> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
            unrelayed.len().map_err(db_err)
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
            let start: Bound<u128> = match after {
                Some(a) => Bound::Excluded(a.as_u128()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for entry in log
                .range::<u128>((start, Bound::Unbounded))
                .map_err(db_err)?
                .take(limit)
            {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("event", v.value()).map_err(tx::corrupt_event)?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_events(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut pruned = 0u64;
            {
                let mut log = txn.open_table(tx::EVENTS).map_err(db_err)?;
                let unrelayed = txn.open_table(tx::EVENTS_UNRELAYED).map_err(db_err)?;
                let mut gone = Vec::new();
                // Ids are in commit order, so the old ones come first.
                for entry in log.iter().map_err(db_err)?.take(DELETE_CHUNK) {
                    let (k, v) = entry.map_err(db_err)?;
                    let event: EventEnvelope =
                        decode("event", v.value()).map_err(tx::corrupt_event)?;
                    if event.occurred_at >= before {
                        break;
                    }
                    if unrelayed.get(k.value()).map_err(db_err)?.is_none() {
                        gone.push(k.value());
                    }
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
