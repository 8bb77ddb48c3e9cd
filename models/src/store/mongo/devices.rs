//! Devices (enrolment and revocation are written with their events in one
//! transaction) and incoming-call signals (each with its `call.incoming`
//! event, in one transaction per batch).

use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::ReturnDocument;

use super::codec::{collect, from_doc, limit_of, map_err, parse_id, to_doc, DUPLICATE_KEY};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::device::{CallSignal, Device};
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{DeviceId, UserId};
use crate::store::{DeviceStore, StoreError, StoreResult, Tx};
use crate::time::{self, Timestamp};

/// [`crate::store::DeviceStore::insert_device`] with `device.enrolled`.
struct InsertDevice<'d>(&'d Device);

#[async_trait]
impl Work for InsertDevice<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        let device = self.0;
        let store = tx.store;
        tx.insert_one(
            &store.devices,
            to_doc(device, "id")?,
            "a device with this id or token hash exists",
        )
        .await?;
        tx.append_events(&[EventEnvelope::new(
            None,
            DomainEvent::DeviceEnrolled {
                device_id: device.id,
                user_id: device.user_id,
            },
        )])
        .await
    }
}

/// [`crate::store::DeviceStore::insert_call_signals`] with a `call.incoming`
/// event for each signal.
struct InsertSignals {
    signals: Vec<CallSignal>,
}

#[async_trait]
impl Work for InsertSignals {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        let store = tx.store;
        // A signal stored before (a batch retried) is kept once, and its
        // event is in the log already: only the new ones are written.
        let ids: Vec<String> = self.signals.iter().map(|s| s.id.to_string()).collect();
        let stored = tx
            .find_all(
                &store.call_signals,
                doc! { "_id": { "$in": ids } },
                None,
                Some(doc! { "_id": 1 }),
            )
            .await?;
        let mut seen: std::collections::HashSet<String> = stored
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        let new: Vec<&CallSignal> = self
            .signals
            .iter()
            .filter(|s| seen.insert(s.id.to_string()))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let docs = new
            .iter()
            .map(|s| to_doc(*s, "id"))
            .collect::<StoreResult<Vec<_>>>()?;
        match tx.insert_many(&store.call_signals, docs).await {
            Ok(()) => {}
            // Stored by a concurrent transaction meanwhile: run again.
            Err(e) if duplicate_only(&e) => {
                return Err(tx.rerun("a call signal was stored meanwhile"))
            }
            Err(e) => return Err(tx.fail(e)),
        }
        let events: Vec<EventEnvelope> = new.iter().map(|s| s.incoming_event()).collect();
        tx.append_events(&events).await
    }
}

/// Whether every write error of an insert is a duplicate key.
fn duplicate_only(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| DUPLICATE_KEY.contains(&w.code)))
        }
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            DUPLICATE_KEY.contains(&w.code)
        }
        _ => false,
    }
}

/// [`crate::store::DeviceStore::revoke_device`] with `device.revoked`.
struct RevokeDevice {
    id: DeviceId,
    at: Timestamp,
    revoked: bool,
}

#[async_trait]
impl Work for RevokeDevice {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        self.revoked = false;
        let store = tx.store;
        let result = store
            .devices
            .find_one_and_update(
                doc! { "_id": self.id.to_string(), "revoked_at": Bson::Null },
                doc! { "$set": { "revoked_at": time::format(&self.at) } },
            )
            .projection(doc! { "user_id": 1 })
            .return_document(ReturnDocument::Before)
            .session(&mut *tx.session)
            .await;
        let Some(before) = result.map_err(|e| tx.fail(e))? else {
            return Ok(());
        };
        let user_id: UserId = parse_id(&before, "user_id")?;
        tx.append_events(&[EventEnvelope::new(
            None,
            DomainEvent::DeviceRevoked {
                device_id: self.id,
                user_id,
            },
        )])
        .await?;
        self.revoked = true;
        Ok(())
    }
}

impl MongoStore {
    async fn find_device(&self, filter: Document) -> StoreResult<Option<Device>> {
        let found = self.devices.find_one(filter).await.map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }
}

#[async_trait]
impl DeviceStore for MongoStore {
    async fn insert_device(&self, device: &Device) -> StoreResult<()> {
        self.run(&mut InsertDevice(device)).await
    }

    async fn get_device(&self, id: DeviceId) -> StoreResult<Option<Device>> {
        self.find_device(doc! { "_id": id.to_string() }).await
    }

    async fn get_device_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Device>> {
        self.find_device(doc! { "token_hash": token_hash }).await
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
        let mut work = RevokeDevice {
            id,
            at,
            revoked: false,
        };
        self.run(&mut work).await?;
        Ok(work.revoked)
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
        self.run(&mut InsertSignals { signals }).await
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
