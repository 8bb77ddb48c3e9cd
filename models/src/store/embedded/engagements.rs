//! Engagements ([`EngagementStore`]): a timeline is a prefix scan of
//! `engagements`; batches that wait for the write lock together share one
//! transaction (`group_commit`).

use std::collections::HashMap;
use std::ops::Bound;

use async_trait::async_trait;
use redb::{Database, ReadableTable};

use super::{
    channel_code, customer_id, db_err, decode, decode_engagement, encode_engagement_into,
    engagement_key, put_customer, read_customer, time_key, tx, EmbeddedStore, EngagementKey,
    CUSTOMERS, CUSTOMERS_BY_UPDATED, ENGAGEMENTS, ENGAGEMENT_IDS,
};
use crate::customer::{ChannelCounts, Customer};
use crate::engagement::{Channel, Engagement};
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::{CustomerId, EngagementId};
use crate::store::{
    record_hash, EngagementCursor, EngagementFilter, EngagementInsert, EngagementStore, RecordHash,
    StoreResult,
};
use crate::time::Timestamp;

/// Stores batches of engagements in one transaction, in order, with the
/// per-customer counters and the `engagement.recorded` events (see
/// [`GroupCommit`]): each batch's answers, one per engagement. An engagement
/// for a merged customer goes to the customer it was merged into.
///
/// [`GroupCommit`]: crate::store::group_commit::GroupCommit
pub(super) fn write_engagements(
    db: &Database,
    batches: &[Vec<Engagement>],
) -> StoreResult<Vec<Vec<EngagementInsert>>> {
    let txn = db.begin_write().map_err(db_err)?;
    let mut out = Vec::with_capacity(batches.len());
    let mut events = Vec::new();
    {
        let mut customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
        let (owners, mut stored_customers) = tx::owners_now(&customers, batches)?;
        // Per customer: counts to add, the latest occurred_at, the latest recorded_at.
        let mut totals: HashMap<u128, (ChannelCounts, Timestamp, Timestamp)> =
            HashMap::with_capacity(owners.len());
        {
            let mut engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            let mut ids = txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
            let mut bytes = Vec::with_capacity(512);
            for items in batches {
                let mut results = Vec::with_capacity(items.len());
                for e in items {
                    let id = e.id.0.as_u128();
                    let existing = ids.get(id).map_err(db_err)?.map(|g| g.value());
                    if let Some((owner, _, _)) = existing {
                        results.push(EngagementInsert::Duplicate {
                            customer_id: customer_id(owner),
                        });
                        continue;
                    }
                    let named = e.customer_id.0.as_u128();
                    let owner = owners.get(&named).copied().unwrap_or(named);
                    let landed = customer_id(owner);
                    let key = engagement_key(landed, &e.occurred_at, e.id);
                    bytes.clear();
                    if owner == named {
                        encode_engagement_into(e, &mut bytes)?;
                    } else {
                        let mut moved = e.clone();
                        moved.customer_id = landed;
                        encode_engagement_into(&moved, &mut bytes)?;
                    }
                    engagements.insert(key, bytes.as_slice()).map_err(db_err)?;
                    ids.insert(id, key).map_err(db_err)?;
                    let total = totals.entry(owner).or_insert((
                        ChannelCounts::default(),
                        e.occurred_at,
                        e.recorded_at,
                    ));
                    *total.0.get_mut(e.channel()) += 1;
                    total.1 = total.1.max(e.occurred_at);
                    total.2 = total.2.max(e.recorded_at);
                    events.push(EventEnvelope::about(
                        landed,
                        DomainEvent::engagement_recorded(e),
                    ));
                    results.push(EngagementInsert::Created {
                        customer_id: landed,
                    });
                }
                out.push(results);
            }
        }
        let mut by_updated = txn.open_table(CUSTOMERS_BY_UPDATED).map_err(db_err)?;
        for (cid, (mut added, latest, recorded)) in totals {
            let stored = match stored_customers.remove(&cid) {
                Some(c) => Some(c),
                None => read_customer(&customers, cid)?,
            };
            // An engagement for a missing customer is kept, uncounted.
            let Some(stored) = stored else {
                continue;
            };
            let mut c = stored.clone();
            for channel in Channel::ALL {
                *c.counts.get_mut(channel) += *added.get_mut(channel);
            }
            c.last_engagement_at = Some(match c.last_engagement_at {
                Some(t) if t > latest => t,
                _ => latest,
            });
            c.updated_at = c.updated_at.max(recorded);
            put_customer(&mut customers, &mut by_updated, Some(&stored), &c)?;
        }
    }
    tx::append_events(&txn, &events)?;
    txn.commit().map_err(db_err)?;
    Ok(out)
}

/// Engagements of one customer beyond the ones wanted that a scan steps
/// over before it seeks to the next customer instead (a seek is a descent
/// of the tree; stepping over a few entries is cheaper).
const SKIP_BEFORE_SEEK: usize = 32;

/// Customers per thread at least, before a page is read on several threads.
const THREAD_SHARE: usize = 1_024;

/// [`EngagementStore::customers_with_latest_engagements`]: the page's
/// customers read and decoded in parts ([`read_in_parts`]).
fn read_latest_page(
    db: &Database,
    after: Option<CustomerId>,
    limit: usize,
    per_customer: usize,
) -> StoreResult<Vec<(Customer, Vec<Engagement>)>> {
    read_in_parts(db, after, limit, |db, from, to| {
        read_part(db, from, to, per_customer)
    })
}

/// [`EngagementStore::customer_record_hashes`]: each stored record's
/// bytes hashed as they are, in parts ([`read_in_parts`]); nothing decoded.
fn read_hash_page(
    db: &Database,
    after: Option<CustomerId>,
    limit: usize,
) -> StoreResult<Vec<(CustomerId, RecordHash)>> {
    read_in_parts(db, after, limit, |db, from, to| {
        let txn = db.begin_read().map_err(db_err)?;
        let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in customers
            .range::<u128>((from, Bound::Included(to)))
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            out.push((customer_id(k.value()), record_hash(v.value())));
        }
        Ok(out)
    })
}

/// The customers after `after` (at most `limit`), in id order: the page's
/// ids first, then `part` of each range of them, each on its own thread and
/// in its own read transaction.
fn read_in_parts<T: Send>(
    db: &Database,
    after: Option<CustomerId>,
    limit: usize,
    part: impl Fn(&Database, Bound<u128>, u128) -> StoreResult<Vec<T>> + Sync,
) -> StoreResult<Vec<T>> {
    let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.0.as_u128()));
    let ids = {
        let txn = db.begin_read().map_err(db_err)?;
        let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
        let mut ids = Vec::with_capacity(limit.min(64 * THREAD_SHARE));
        for entry in customers
            .range::<u128>((start, Bound::Unbounded))
            .map_err(db_err)?
        {
            ids.push(entry.map_err(db_err)?.0.value());
            if ids.len() >= limit {
                break;
            }
        }
        ids
    };
    let Some(&last) = ids.last() else {
        return Ok(Vec::new());
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(ids.len() / THREAD_SHARE)
        .max(1);
    // Parts that follow each other, so that together they cover the whole
    // range of the page: (after, end of part 1], (end of part 1, end of
    // part 2], ... A customer written meanwhile is read by the part whose
    // range holds it.
    let share = ids.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut from = start;
    for chunk in ids.chunks(share) {
        let end = chunk.last().copied().unwrap_or(last);
        parts.push((from, end));
        from = Bound::Excluded(end);
    }
    let mut out = if parts.len() == 1 {
        part(db, start, last)?
    } else {
        let part = &part;
        let results: Vec<StoreResult<Vec<T>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|&(from, to)| scope.spawn(move || part(db, from, to)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(crate::store::StoreError::Internal(
                            "a store read thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(ids.len());
        for part in results {
            out.extend(part?);
        }
        out
    };
    out.truncate(limit);
    Ok(out)
}

/// The customers with ids in `(from, to]` and their latest engagements: one
/// range of `customers` and one walk over the same customers' part of
/// `engagements` (both are in customer id order), decoded as read.
fn read_part(
    db: &Database,
    from: Bound<u128>,
    to: u128,
    per_customer: usize,
) -> StoreResult<Vec<(Customer, Vec<Engagement>)>> {
    let txn = db.begin_read().map_err(db_err)?;
    let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
    let mut ids = Vec::new();
    let mut out: Vec<(Customer, Vec<Engagement>)> = Vec::new();
    for entry in customers
        .range::<u128>((from, Bound::Included(to)))
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        ids.push(k.value());
        out.push((decode("customer", v.value())?, Vec::new()));
    }
    let (Some(&first), true) = (ids.first(), per_customer > 0) else {
        return Ok(out);
    };
    let engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
    // The customer whose engagements the walk is at (an engagement of a
    // customer that is not stored is kept uncounted: stepped over).
    let mut at = 0usize;
    let mut start: EngagementKey = (first, 0, 0);
    'walk: loop {
        let mut skipped = 0usize;
        let mut seek = None;
        for entry in engagements
            .range(start..=(to, u64::MAX, u128::MAX))
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            let owner = k.value().0;
            while ids.get(at).is_some_and(|&id| id < owner) {
                at += 1;
                skipped = 0;
            }
            let (Some(&id), Some((_, latest))) = (ids.get(at), out.get_mut(at)) else {
                break 'walk;
            };
            if id != owner {
                continue;
            }
            if latest.len() < per_customer {
                latest.push(decode_engagement(v.value())?);
                continue;
            }
            skipped += 1;
            if skipped > SKIP_BEFORE_SEEK {
                seek = owner.checked_add(1);
                break;
            }
        }
        match seek {
            Some(next) if next <= to => start = (next, 0, 0),
            _ => break,
        }
    }
    Ok(out)
}

#[async_trait]
impl EngagementStore for EmbeddedStore {
    async fn insert_engagements(&self, items: &[Engagement]) -> StoreResult<Vec<EngagementInsert>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.engagement_writes
            .submit(&self.db, items.to_vec())
            .await
    }

    async fn get_engagement(&self, id: EngagementId) -> StoreResult<Option<Engagement>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let ids = txn.open_table(ENGAGEMENT_IDS).map_err(db_err)?;
            let Some(key) = ids.get(id.0.as_u128()).map_err(db_err)?.map(|g| g.value()) else {
                return Ok(None);
            };
            let engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            match engagements.get(key).map_err(db_err)? {
                Some(bytes) => decode_engagement(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
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
        let filter = filter.clone();
        self.run(move |db| {
            let cid = customer.0.as_u128();
            let wanted = filter.channel.map(channel_code);
            // occurred_at < until  <=>  newest-first time > !time_key(until)
            let until = filter.until.map(|t| !time_key(&t));
            // occurred_at >= since <=>  newest-first time <= !time_key(since)
            let since = filter.since.map(|t| !time_key(&t));
            let cursor = after.map(|c| engagement_key(customer, &c.occurred_at, c.id));
            let mut start: EngagementKey = (cid, 0, 0);
            if let Some(u) = until {
                start = start.max((cid, u, 0));
            }
            if let Some(c) = cursor {
                start = start.max(c);
            }
            let txn = db.begin_read().map_err(db_err)?;
            let engagements = txn.open_table(ENGAGEMENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in engagements
                .range(start..=(cid, u64::MAX, u128::MAX))
                .map_err(db_err)?
            {
                let (k, v) = entry.map_err(db_err)?;
                let key = k.value();
                if since.is_some_and(|s| key.1 > s) {
                    break;
                }
                if until.is_some_and(|u| key.1 <= u) || cursor.is_some_and(|c| key <= c) {
                    continue;
                }
                let bytes = v.value();
                if wanted.is_some_and(|w| bytes.first() != Some(&w)) {
                    continue;
                }
                out.push(decode_engagement(bytes)?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
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
        self.run(move |db| read_latest_page(db, after, limit, per_customer))
            .await
    }

    async fn customer_record_hashes(
        &self,
        after: Option<CustomerId>,
        limit: usize,
    ) -> StoreResult<Vec<(CustomerId, RecordHash)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |db| read_hash_page(db, after, limit)).await
    }
}
