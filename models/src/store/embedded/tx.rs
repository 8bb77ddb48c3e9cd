//! The embedded store's transactions and event log.
//!
//! A [`RedbTx`] owns one redb write transaction; every [`Tx`] operation runs
//! on it synchronously (the futures are ready at once), so a whole
//! [`TxWork`](crate::store::TxWork) commits or rolls back as one. redb
//! serialises write transactions, so two works never interleave and there is
//! nothing to retry.
//!
//! The event log is the table `events` (id → event record: the frequent
//! `engagement.recorded` in a small binary form, the rest as JSON) and a cursor,
//! the id of the last event relayed (`event_cursors`). An event's id is
//! re-stamped when it is appended, inside the write transaction, to be
//! larger than every id before it: ids are then in commit order, so the
//! relay's cursor splits the log into relayed and unrelayed events, and a
//! reader that pages through the log by id never skips an event that
//! committed late.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{
    customer_id, db_err, decode, decode_engagement, encode, encode_engagement, engagement_key,
    read_customer, time_key, write_claim, write_customer, EngagementKey, CUSTOMERS,
    CUSTOMERS_BY_UPDATED, ENGAGEMENTS, ENGAGEMENT_IDS, IDENTITIES, IDENTITIES_BY_CUSTOMER,
    IDENTITIES_SHARED, MERGES, MERGES_BY_CUSTOMER, SUGGESTIONS,
};
use crate::customer::{ChannelCounts, Customer};
use crate::engagement::{Channel, Direction, Engagement};
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{CustomerId, DeviceId, EngagementId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord, Suggestion};
use crate::store::tx::{EngagementRef, Erased, Tx};
use crate::store::{Claim, StoreError, StoreResult};
use crate::time::Timestamp;

pub(super) const EVENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("events");
/// `relayed_through` → the id of the last event relayed: ids are in commit
/// order and one relay reads them in order, so everything after it is
/// unrelayed.
pub(super) const EVENT_CURSORS: TableDefinition<&str, u128> = TableDefinition::new("event_cursors");
pub(super) const RELAYED_THROUGH: &str = "relayed_through";
/// Flags kept with the data: `erased` is set by an erasure and cleared by the
/// compaction that follows it.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ERASED: &str = "erased";

/// After an erasure, compacts the file when the store opens (redb keeps the
/// bytes of freed pages until it reuses them; compaction rewrites the file
/// without them), so that no copy of an erased person stays on disk. Needs
/// the database to itself, which only opening gives.
pub(super) fn compact_after_erasure(db: &mut redb::Database) -> StoreResult<()> {
    let erased = {
        let txn = db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let flag = meta.get(ERASED).map_err(db_err)?.map(|g| g.value());
        flag.unwrap_or(0) > 0
    };
    if !erased {
        return Ok(());
    }
    let started = std::time::Instant::now();
    db.compact().map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot compact the embedded store after an erasure: {}",
            e.to_string().to_lowercase()
        ))
    })?;
    let txn = db.begin_write().map_err(db_err)?;
    txn.open_table(META)
        .map_err(db_err)?
        .remove(ERASED)
        .map_err(db_err)?;
    txn.commit().map_err(db_err)?;
    // Compaction frees the pages the flag's own removal left behind only on
    // the next run; those hold no personal data.
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "embedded store compacted after an erasure"
    );
    Ok(())
}

/// Appends events to the log in this transaction, with ids in commit order.
pub(super) fn append_events(txn: &WriteTransaction, events: &[EventEnvelope]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut log = txn.open_table(EVENTS).map_err(db_err)?;
    let mut last = log
        .last()
        .map_err(db_err)?
        .map(|(k, _)| k.value())
        .unwrap_or(0);
    let mut buf = Vec::with_capacity(128);
    for event in events {
        let id = event
            .id
            .as_u128()
            .max(Uuid::now_v7().as_u128())
            .max(last + 1);
        last = id;
        buf.clear();
        encode_event(event, &mut buf)?;
        log.insert(id, buf.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

/// An event as the log keeps it in JSON: the id is the key; the time in
/// microseconds. Plain fields decode several times faster than the public
/// envelope's flattened form, and the relay decodes every event.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEvent<E> {
    t: i64,
    c: Option<CustomerId>,
    e: E,
}

/// The first byte of an `engagement.recorded` event stored in binary (see
/// [`encode_event`]); a JSON record starts with `{`.
const BINARY_ENGAGEMENT_RECORDED: u8 = 1;

/// Encodes an event for the log into `out`. `engagement.recorded`, one per
/// engagement and by far the most frequent, is stored in a fixed binary
/// form about a third of its JSON size (the engagement batch's transaction
/// writes, checksums and syncs fewer pages, and the relay decodes it
/// without parsing text); every other event as [`StoredEvent`] JSON.
fn encode_event(event: &EventEnvelope, out: &mut Vec<u8>) -> StoreResult<()> {
    if let DomainEvent::EngagementRecorded {
        engagement_id,
        channel,
        direction,
        occurred_at,
        device_id,
        user_id,
    } = &event.event
    {
        // Times are kept to the microsecond; anything finer (never written
        // by this service) keeps the JSON form, which loses nothing.
        let exact = |t: &Timestamp| {
            chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).as_ref() == Some(t)
        };
        if exact(&event.occurred_at) && exact(occurred_at) {
            out.push(BINARY_ENGAGEMENT_RECORDED);
            out.extend_from_slice(&event.occurred_at.timestamp_micros().to_le_bytes());
            put_id(out, event.customer_id.map(|c| c.0));
            out.extend_from_slice(engagement_id.0.as_bytes());
            out.push(super::channel_code(*channel));
            out.push(match direction {
                None => 0,
                Some(Direction::Inbound) => 1,
                Some(Direction::Outbound) => 2,
            });
            out.extend_from_slice(&occurred_at.timestamp_micros().to_le_bytes());
            put_id(out, device_id.map(|d| d.0));
            match user_id {
                None => out.push(0),
                Some(user) => {
                    out.push(1);
                    let len = u32::try_from(user.len()).map_err(|_| {
                        StoreError::Internal("cannot encode event: user id too long".into())
                    })?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(user.as_bytes());
                }
            }
            return Ok(());
        }
    }
    serde_json::to_writer(
        &mut *out,
        &StoredEvent {
            t: event.occurred_at.timestamp_micros(),
            c: event.customer_id,
            e: &event.event,
        },
    )
    .map_err(|e| StoreError::Internal(format!("cannot encode event: {e}")))
}

/// An optional id: a presence byte, then its 16 bytes.
fn put_id(out: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
    }
}

/// Reads a binary event record front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt_event(StoreError::Internal(
                "binary event record too short".into(),
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> StoreResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn time(&mut self) -> StoreResult<Timestamp> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        chrono::DateTime::from_timestamp_micros(i64::from_le_bytes(raw))
            .ok_or_else(|| corrupt_event(StoreError::Internal("event time out of range".into())))
    }

    fn uuid(&mut self) -> StoreResult<Uuid> {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(self.take(16)?);
        Ok(Uuid::from_bytes(raw))
    }

    fn optional_uuid(&mut self) -> StoreResult<Option<Uuid>> {
        match self.byte()? {
            0 => Ok(None),
            _ => self.uuid().map(Some),
        }
    }
}

/// The `engagement.recorded` envelope stored in binary under `id`.
fn decode_binary_engagement(id: u128, bytes: &[u8]) -> StoreResult<EventEnvelope> {
    let mut r = Reader(bytes);
    let at = r.time()?;
    let customer_id = r.optional_uuid()?.map(CustomerId);
    let engagement_id = EngagementId(r.uuid()?);
    let channel = match r.byte()? {
        0 => Channel::Web,
        1 => Channel::Call,
        2 => Channel::Sms,
        3 => Channel::Whatsapp,
        4 => Channel::Email,
        other => {
            return Err(corrupt_event(StoreError::Internal(format!(
                "unknown channel code {other}"
            ))))
        }
    };
    let direction = match r.byte()? {
        0 => None,
        1 => Some(Direction::Inbound),
        2 => Some(Direction::Outbound),
        other => {
            return Err(corrupt_event(StoreError::Internal(format!(
                "unknown direction code {other}"
            ))))
        }
    };
    let occurred_at = r.time()?;
    let device_id = r.optional_uuid()?.map(DeviceId);
    let user_id = match r.byte()? {
        0 => None,
        _ => {
            let mut raw = [0u8; 4];
            raw.copy_from_slice(r.take(4)?);
            let len = usize::try_from(u32::from_le_bytes(raw)).map_err(|_| {
                corrupt_event(StoreError::Internal("user id length out of range".into()))
            })?;
            let user = std::str::from_utf8(r.take(len)?)
                .map_err(|_| corrupt_event(StoreError::Internal("user id is not UTF-8".into())))?;
            Some(user.to_string())
        }
    };
    Ok(EventEnvelope {
        id: Uuid::from_u128(id),
        occurred_at: at,
        customer_id,
        event: DomainEvent::EngagementRecorded {
            engagement_id,
            channel,
            direction,
            occurred_at,
            device_id,
            user_id,
        },
    })
}

/// The envelope of the event stored under `id`.
pub(super) fn decode_event(id: u128, bytes: &[u8]) -> StoreResult<EventEnvelope> {
    if let Some((&BINARY_ENGAGEMENT_RECORDED, rest)) = bytes.split_first() {
        return decode_binary_engagement(id, rest);
    }
    let stored: StoredEvent<DomainEvent> = decode("event", bytes).map_err(corrupt_event)?;
    let occurred_at = chrono::DateTime::from_timestamp_micros(stored.t)
        .ok_or_else(|| corrupt_event(StoreError::Internal("event time out of range".into())))?;
    Ok(EventEnvelope {
        id: Uuid::from_u128(id),
        occurred_at,
        customer_id: stored.c,
        event: stored.e,
    })
}

/// The time of the event stored as `bytes`, without decoding the rest of
/// a binary record (pruning reads only that).
pub(super) fn event_time(id: u128, bytes: &[u8]) -> StoreResult<Timestamp> {
    match bytes.split_first() {
        Some((&BINARY_ENGAGEMENT_RECORDED, rest)) => Reader(rest).time(),
        _ => decode_event(id, bytes).map(|e| e.occurred_at),
    }
}

/// Follows `merged_into` from `id` to the customer that holds its records
/// now (at most `MAX_HOPS` steps); `id` itself when it is not merged or gone.
/// Returns it with the customer as stored (`None` when gone).
pub(super) fn survivor_of(
    customers: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> StoreResult<(u128, Option<Customer>)> {
    const MAX_HOPS: usize = 32;
    let mut at = id;
    let mut found = None;
    for _ in 0..MAX_HOPS {
        found = read_customer(customers, at)?;
        match &found {
            Some(Customer {
                merged_into: Some(next),
                status: crate::customer::CustomerStatus::Merged,
                ..
            }) if next.0.as_u128() != at => at = next.0.as_u128(),
            _ => return Ok((at, found)),
        }
    }
    Ok((at, found))
}

/// The keys a customer owns, sorted.
fn owned_keys(txn: &WriteTransaction, cid: u128) -> StoreResult<Vec<String>> {
    let by_customer = txn.open_table(IDENTITIES_BY_CUSTOMER).map_err(db_err)?;
    let mut keys = Vec::new();
    for entry in by_customer.range((cid, "")..).map_err(db_err)? {
        let (k, _) = entry.map_err(db_err)?;
        let (owner, key) = k.value();
        if owner != cid {
            break;
        }
        keys.push(key.to_string());
    }
    Ok(keys)
}

/// Every engagement of a customer, with its key.
fn engagements_of(
    txn: &WriteTransaction,
    cid: u128,
) -> StoreResult<Vec<(EngagementKey, Engagement)>> {
    let engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
    let mut out = Vec::new();
    for entry in engagements
        .range((cid, 0u64, 0u128)..=(cid, u64::MAX, u128::MAX))
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        out.push((k.value(), decode_engagement(v.value())?));
    }
    Ok(out)
}

fn read_merge(txn: &WriteTransaction, id: u128) -> StoreResult<Option<MergeRecord>> {
    let merges = txn.open_table(MERGES).map_err(db_err)?;
    let found = merges.get(id).map_err(db_err)?;
    match found {
        Some(bytes) => decode("merge", bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// One redb write transaction seen as a [`Tx`].
pub(super) struct RedbTx {
    pub(super) txn: WriteTransaction,
}

impl RedbTx {
    fn customer_now(&self, id: u128) -> StoreResult<Option<Customer>> {
        let customers = self.txn.open_table(CUSTOMERS).map_err(db_err)?;
        read_customer(&customers, id)
    }
}

#[async_trait]
impl Tx for RedbTx {
    async fn customer(&mut self, id: CustomerId) -> StoreResult<Option<Customer>> {
        self.customer_now(id.0.as_u128())
    }

    async fn put_customer(&mut self, customer: &Customer) -> StoreResult<()> {
        let stored = self.customer_now(customer.id.0.as_u128())?;
        let next = match &stored {
            Some(stored) => Customer {
                created_at: stored.created_at,
                last_engagement_at: stored.last_engagement_at,
                counts: stored.counts,
                ..customer.clone()
            },
            None => customer.clone(),
        };
        write_customer(&self.txn, stored.as_ref(), &next)
    }

    async fn identity(&mut self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        let owner = self
            .txn
            .open_table(IDENTITIES)
            .map_err(db_err)?
            .get(key)
            .map_err(db_err)?
            .map(|g| customer_id(g.value()));
        let shared = self
            .txn
            .open_table(IDENTITIES_SHARED)
            .map_err(db_err)?
            .get(key)
            .map_err(db_err)?
            .is_some();
        Ok((owner.is_some() || shared).then_some(IdentityInfo { owner, shared }))
    }

    async fn claim(&mut self, key: &str, customer: CustomerId) -> StoreResult<Claim> {
        let owner = self
            .txn
            .open_table(IDENTITIES)
            .map_err(db_err)?
            .get(key)
            .map_err(db_err)?
            .map(|g| g.value());
        if let Some(owner) = owner {
            return Ok(Claim::OwnedBy(customer_id(owner)));
        }
        write_claim(&self.txn, key, customer.0.as_u128())?;
        Ok(Claim::Claimed)
    }

    async fn release(&mut self, key: &str, customer: CustomerId) -> StoreResult<()> {
        let cid = customer.0.as_u128();
        let mut identities = self.txn.open_table(IDENTITIES).map_err(db_err)?;
        let owner = identities.get(key).map_err(db_err)?.map(|g| g.value());
        if owner != Some(cid) {
            return Ok(());
        }
        identities.remove(key).map_err(db_err)?;
        self.txn
            .open_table(IDENTITIES_BY_CUSTOMER)
            .map_err(db_err)?
            .remove((cid, key))
            .map_err(db_err)?;
        Ok(())
    }

    async fn identities_of(&mut self, customer: CustomerId) -> StoreResult<Vec<String>> {
        owned_keys(&self.txn, customer.0.as_u128())
    }

    async fn move_identities(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>> {
        let (f, t) = (from.0.as_u128(), to.0.as_u128());
        let owned = owned_keys(&self.txn, f)?;
        let mut by_customer = self
            .txn
            .open_table(IDENTITIES_BY_CUSTOMER)
            .map_err(db_err)?;
        let mut identities = self.txn.open_table(IDENTITIES).map_err(db_err)?;
        let mut moved = Vec::new();
        for key in owned {
            if keys.is_some_and(|wanted| !wanted.contains(&key)) {
                continue;
            }
            by_customer.remove((f, key.as_str())).map_err(db_err)?;
            by_customer.insert((t, key.as_str()), ()).map_err(db_err)?;
            identities.insert(key.as_str(), t).map_err(db_err)?;
            moved.push(key);
        }
        moved.sort();
        Ok(moved)
    }

    async fn move_engagements(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
        at: Timestamp,
    ) -> StoreResult<Vec<EngagementId>> {
        let wanted: Option<HashSet<EngagementId>> = ids.map(|ids| ids.iter().copied().collect());
        let f = from.0.as_u128();
        let mut moved = Vec::new();
        let mut delta = ChannelCounts::default();
        let mut latest: Option<Timestamp> = None;
        let mut newest_left: Option<Timestamp> = None;
        {
            let found = engagements_of(&self.txn, f)?;
            let mut engagements = self.txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            let mut index = self.txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
            for (key, mut e) in found {
                if wanted.as_ref().is_some_and(|w| !w.contains(&e.id)) {
                    // Newest first: the first one left is the newest left.
                    if newest_left.is_none() {
                        newest_left = Some(e.occurred_at);
                    }
                    continue;
                }
                engagements.remove(key).map_err(db_err)?;
                e.customer_id = to;
                let new_key = engagement_key(to, &e.occurred_at, e.id);
                let bytes = encode_engagement(&e)?;
                engagements
                    .insert(new_key, bytes.as_slice())
                    .map_err(db_err)?;
                index.insert(e.id.0.as_u128(), new_key).map_err(db_err)?;
                *delta.get_mut(e.channel()) += 1;
                latest = latest.max(Some(e.occurred_at));
                moved.push(e.id);
            }
        }
        if moved.is_empty() {
            return Ok(moved);
        }
        if let Some(stored) = self.customer_now(f)? {
            let mut c = stored.clone();
            for channel in Channel::ALL {
                let n = c.counts.get_mut(channel);
                *n = n.saturating_sub(*delta.get_mut(channel));
            }
            c.last_engagement_at = newest_left;
            c.updated_at = c.updated_at.max(at);
            write_customer(&self.txn, Some(&stored), &c)?;
        }
        if let Some(stored) = self.customer_now(to.0.as_u128())? {
            let mut c = stored.clone();
            for channel in Channel::ALL {
                *c.counts.get_mut(channel) += *delta.get_mut(channel);
            }
            c.last_engagement_at = c.last_engagement_at.max(latest);
            c.updated_at = c.updated_at.max(at);
            write_customer(&self.txn, Some(&stored), &c)?;
        }
        Ok(moved)
    }

    async fn engagement_refs(&mut self, customer: CustomerId) -> StoreResult<Vec<EngagementRef>> {
        Ok(engagements_of(&self.txn, customer.0.as_u128())?
            .into_iter()
            .map(|(_, e)| EngagementRef {
                id: e.id,
                recorded_at: e.recorded_at,
                via: e.source.via,
            })
            .collect())
    }

    async fn merge(&mut self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        read_merge(&self.txn, id.0.as_u128())
    }

    async fn put_merge(&mut self, merge: &MergeRecord) -> StoreResult<()> {
        let bytes = encode("merge", merge)?;
        let mid = merge.id.0.as_u128();
        self.txn
            .open_table(MERGES)
            .map_err(db_err)?
            .insert(mid, bytes.as_slice())
            .map_err(db_err)?;
        let mut by_customer = self.txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
        for c in merge.customer_ids() {
            by_customer
                .insert((c.0.as_u128(), mid), ())
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn merges_of(&mut self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        let c = customer.0.as_u128();
        let ids: Vec<u128> = {
            let by_customer = self.txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
            let mut ids = Vec::new();
            for entry in by_customer
                .range((c, 0u128)..=(c, u128::MAX))
                .map_err(db_err)?
            {
                ids.push(entry.map_err(db_err)?.0.value().1);
            }
            ids
        };
        let mut out = Vec::new();
        for id in ids {
            out.extend(read_merge(&self.txn, id)?);
        }
        out.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn delete_merge(&mut self, id: MergeId) -> StoreResult<()> {
        let mid = id.0.as_u128();
        let Some(merge) = read_merge(&self.txn, mid)? else {
            return Ok(());
        };
        self.txn
            .open_table(MERGES)
            .map_err(db_err)?
            .remove(mid)
            .map_err(db_err)?;
        let mut by_customer = self.txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
        for c in merge.customer_ids() {
            by_customer.remove((c.0.as_u128(), mid)).map_err(db_err)?;
        }
        Ok(())
    }

    async fn erase_customer(&mut self, id: CustomerId) -> StoreResult<Option<Erased>> {
        let cid = id.0.as_u128();
        let Some(customer) = self.customer_now(cid)? else {
            return Ok(None);
        };
        // Freed pages keep their bytes until compaction: the next open
        // compacts the file.
        self.txn
            .open_table(META)
            .map_err(db_err)?
            .insert(ERASED, 1)
            .map_err(db_err)?;
        let mut erased = Erased::default();
        self.txn
            .open_table(CUSTOMERS)
            .map_err(db_err)?
            .remove(cid)
            .map_err(db_err)?;
        self.txn
            .open_table(CUSTOMERS_BY_UPDATED)
            .map_err(db_err)?
            .remove((time_key(&customer.updated_at), cid))
            .map_err(db_err)?;
        for key in owned_keys(&self.txn, cid)? {
            self.release(&key, id).await?;
            erased.identities += 1;
        }
        let engagements = engagements_of(&self.txn, cid)?;
        {
            let mut table = self.txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            let mut index = self.txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
            for (key, e) in &engagements {
                table.remove(*key).map_err(db_err)?;
                index.remove(e.id.0.as_u128()).map_err(db_err)?;
                erased.engagements += 1;
            }
        }
        erased.call_signals = super::call_signals::erase_customer(&self.txn, id)?;
        {
            let mut suggestions = self.txn.open_table(SUGGESTIONS).map_err(db_err)?;
            let mut gone = Vec::new();
            for entry in suggestions.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let s: Suggestion = decode("suggestion", v.value())?;
                if s.customer_ids.contains(&id) {
                    gone.push(k.value().to_string());
                }
            }
            for key in gone {
                suggestions.remove(key.as_str()).map_err(db_err)?;
            }
        }
        Ok(Some(erased))
    }

    async fn append_events(&mut self, events: &[EventEnvelope]) -> StoreResult<()> {
        append_events(&self.txn, events)
    }
}

/// Where each engagement of a batch goes: the customer it names, or the one
/// that customer was merged into; with those customers as stored, so that
/// the counters are raised without reading them again. One lookup per
/// customer.
pub(super) fn owners_now(
    customers: &impl ReadableTable<u128, &'static [u8]>,
    batches: &[Vec<Engagement>],
) -> StoreResult<(HashMap<u128, u128>, HashMap<u128, Customer>)> {
    let mut owners = HashMap::new();
    let mut stored = HashMap::new();
    for e in batches.iter().flatten() {
        let cid = e.customer_id.0.as_u128();
        if let std::collections::hash_map::Entry::Vacant(v) = owners.entry(cid) {
            let (owner, customer) = survivor_of(customers, cid)?;
            v.insert(owner);
            if let Some(customer) = customer {
                stored.insert(owner, customer);
            }
        }
    }
    Ok((owners, stored))
}

/// An error for an event record that does not decode.
pub(super) fn corrupt_event(e: StoreError) -> StoreError {
    StoreError::Internal(format!("event log: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    fn stored_and_read(event: &EventEnvelope) -> (Vec<u8>, EventEnvelope) {
        let mut bytes = Vec::new();
        encode_event(event, &mut bytes).unwrap();
        let id = event.id.as_u128();
        let read = decode_event(id, &bytes).unwrap();
        assert_eq!(event_time(id, &bytes).unwrap(), event.occurred_at);
        (bytes, read)
    }

    #[test]
    fn engagement_recorded_is_stored_in_binary_and_read_back_unchanged() {
        let occurred_at = crate::time::parse("2026-11-03T09:30:15.123456Z").unwrap();
        for (direction, device_id, user_id) in [
            (None, None, None),
            (Some(Direction::Inbound), Some(DeviceId::new()), None),
            (
                Some(Direction::Outbound),
                None,
                Some(UserId::new().to_string()),
            ),
        ] {
            for channel in Channel::ALL {
                let event = EventEnvelope::about(
                    CustomerId::new(),
                    DomainEvent::EngagementRecorded {
                        engagement_id: EngagementId::new(),
                        channel,
                        direction,
                        occurred_at,
                        device_id,
                        user_id: user_id.clone(),
                    },
                );
                let (bytes, read) = stored_and_read(&event);
                assert_eq!(bytes[0], BINARY_ENGAGEMENT_RECORDED);
                assert_eq!(read, event);
            }
        }
    }

    #[test]
    fn other_events_stay_json_and_a_short_binary_record_is_an_error() {
        let event = EventEnvelope::about(
            CustomerId::new(),
            DomainEvent::CustomerUpdated {
                fields: vec!["name".into()],
            },
        );
        let (bytes, read) = stored_and_read(&event);
        assert_eq!(bytes[0], b'{');
        assert_eq!(read, event);

        let mut binary = Vec::new();
        let recorded = EventEnvelope::about(
            CustomerId::new(),
            DomainEvent::EngagementRecorded {
                engagement_id: EngagementId::new(),
                channel: Channel::Sms,
                direction: Some(Direction::Inbound),
                occurred_at: crate::time::now(),
                device_id: None,
                user_id: Some("staff".into()),
            },
        );
        encode_event(&recorded, &mut binary).unwrap();
        let cut = &binary[..binary.len() - 2];
        assert!(matches!(
            decode_event(recorded.id.as_u128(), cut),
            Err(StoreError::Internal(m)) if m.contains("too short")
        ));
    }
}
