//! Devices and incoming-call signals ([`DeviceStore`]); the signals' record
//! format is in [`super::call_signals`].

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Durability, ReadableTable};

use super::{
    call_signals, db_err, decode, encode, insert_with_unique_hash, read_via_index, update_record,
    EmbeddedStore, CALL_SIGNALS, DELETE_CHUNK, DEVICES, DEVICES_BY_HASH, SIGNALS_SYNC_EVERY,
};
use crate::device::{CallSignal, Device};
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{DeviceId, UserId};
use crate::store::{DeviceStore, StoreError, StoreResult};
use crate::time::Timestamp;

#[async_trait]
impl DeviceStore for EmbeddedStore {
    // --- devices (by SHA-256 of the device token) ---

    async fn insert_device(&self, device: &Device) -> StoreResult<()> {
        let bytes = encode("device", device)?;
        let (id, hash) = (device.id.0.as_u128(), device.token_hash.clone());
        let label = format!("device {}", device.id);
        let events = [EventEnvelope::new(
            None,
            DomainEvent::DeviceEnrolled {
                device_id: device.id,
                user_id: device.user_id,
            },
        )];
        self.run_clearing(&self.devices, move |db| {
            insert_with_unique_hash(
                db,
                (DEVICES, DEVICES_BY_HASH),
                id,
                &hash,
                &bytes,
                &label,
                &events,
            )
        })
        .await
    }

    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let devices = txn.open_table(DEVICES).map_err(db_err)?;
            match devices.get(id.0.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("device", bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>> {
        let epoch = match self.devices.get(token_hash) {
            Ok(device) => return Ok(Some(device)),
            Err(epoch) => epoch,
        };
        let device: Option<Device> =
            self.read_now(|db| read_via_index(db, DEVICES_BY_HASH, DEVICES, token_hash, "device"))?;
        if let Some(device) = &device {
            self.devices
                .keep(epoch, token_hash.to_string(), device.clone());
        }
        Ok(device)
    }

    async fn list_devices(&self, user: Option<UserId>) -> StoreResult<Vec<Device>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let devices = txn.open_table(DEVICES).map_err(db_err)?;
            let mut out: Vec<Device> = Vec::new();
            for entry in devices.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                let device: Device = decode("device", v.value())?;
                if user.is_none_or(|u| u == device.user_id) {
                    out.push(device);
                }
            }
            out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn revoke_device(&self, id: DeviceId, at: Timestamp) -> StoreResult<bool> {
        self.run_clearing(&self.devices, move |db| {
            update_record(
                db,
                DEVICES,
                id.0.as_u128(),
                "device",
                |device: &mut Device| {
                    let fresh = device.revoked_at.is_none();
                    device.revoked_at = device.revoked_at.or(Some(at));
                    fresh
                },
                |device: &Device| {
                    vec![EventEnvelope::new(
                        None,
                        DomainEvent::DeviceRevoked {
                            device_id: device.id,
                            user_id: device.user_id,
                        },
                    )]
                },
            )
        })
        .await
    }

    async fn set_device_last_upload(&self, id: DeviceId, at: Timestamp) -> StoreResult<()> {
        self.run_clearing(&self.devices, move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut devices = txn.open_table(DEVICES).map_err(db_err)?;
                let mut device: Device = match devices.get(id.0.as_u128()).map_err(db_err)? {
                    Some(bytes) => decode("device", bytes.value())?,
                    None => return Err(StoreError::NotFound),
                };
                device.last_upload_at = Some(at);
                let bytes = encode("device", &device)?;
                devices
                    .insert(id.0.as_u128(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    // --- incoming-call signals ---

    async fn insert_call_signals(&self, signals: Vec<CallSignal>) -> StoreResult<()> {
        if signals.is_empty() {
            return Ok(());
        }
        let synced = Arc::clone(&self.signals_synced);
        // One event per signal of the batch. (The recorder never sends a
        // signal twice; a signal repeated in a later batch is kept once,
        // but would have its event again.)
        let mut ids = HashSet::with_capacity(signals.len());
        let events: Vec<_> = signals
            .iter()
            .filter(|s| ids.insert(s.id))
            .map(CallSignal::incoming_event)
            .collect();
        self.run(move |db| {
            // Write transactions take turns anyway: holding the lock across
            // one costs nothing.
            let mut synced = synced.lock();
            let durable = synced.is_none_or(|at| at.elapsed() >= SIGNALS_SYNC_EVERY);
            let mut txn = db.begin_write().map_err(db_err)?;
            if !durable {
                txn.set_durability(Durability::None);
            }
            {
                let mut table = txn.open_table(CALL_SIGNALS).map_err(db_err)?;
                // A record written before (a retried batch) has the same key
                // and content: writing it again changes nothing, and costs
                // less than looking first.
                for (key, record) in call_signals::records(signals) {
                    table.insert(key, record.as_slice()).map_err(db_err)?;
                }
            }
            // Not synced every time either: a lost `call.incoming` is a
            // popup for a call that rang before the crash.
            super::tx::append_events(&txn, &events)?;
            txn.commit().map_err(db_err)?;
            if durable {
                *synced = Some(std::time::Instant::now());
            }
            Ok(())
        })
        .await
    }

    async fn list_call_signals(
        &self,
        user: Option<UserId>,
        since: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<CallSignal>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CALL_SIGNALS).map_err(db_err)?;
            call_signals::list(&table, user, since, limit)
        })
        .await
    }

    async fn delete_call_signals_before(&self, before: Timestamp) -> StoreResult<u64> {
        self.run(move |db| {
            let mut deleted = HashSet::new();
            // In bounded transactions, so that a long backlog does not hold
            // the write lock for long.
            loop {
                let txn = db.begin_write().map_err(db_err)?;
                let done = {
                    let mut table = txn.open_table(CALL_SIGNALS).map_err(db_err)?;
                    let n =
                        call_signals::delete_whole(&mut table, before, DELETE_CHUNK, &mut deleted)?;
                    if n < DELETE_CHUNK {
                        call_signals::trim_straddling(&mut table, before, &mut deleted)?;
                    }
                    n < DELETE_CHUNK
                };
                txn.commit().map_err(db_err)?;
                if done {
                    return Ok(deleted.len() as u64);
                }
            }
        })
        .await
    }
}
