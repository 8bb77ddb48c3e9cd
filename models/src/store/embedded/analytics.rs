//! Sales analytics rollups ([`AnalyticsStore`]).
//!
//! Tables:
//! - `analytics_daily`: (day, agent, channel) → the row's counts as JSON;
//!   the day is days since 0001-01-01, the agent `""` for none, the channel
//!   a code (`255` for none).
//! - `analytics_hourly`: (day, hour, channel) → that hour's totals as JSON.
//! - `analytics_engaged`: (day, agent, customer) → (): one customer counted
//!   once per agent and day; `analytics_engaged_by_customer`: (customer,
//!   day, agent) → (), to forget an erased customer.
//! - `analytics_cursor`: `daily` → the last event counted.
//!
//! Increments, markers and the cursor move in one write transaction.

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{channel_code, db_err, decode, encode, EmbeddedStore};
use crate::analytics::{AnalyticsBatch, Counts, DailyRow, HourKey, HourRow, RowKey};
use crate::engagement::Channel;
use crate::ids::CustomerId;
use crate::store::{AnalyticsStore, StoreError, StoreResult};

type DayKey<'a> = (i32, &'a str, u8);

const DAILY: TableDefinition<(i32, &str, u8), &[u8]> = TableDefinition::new("analytics_daily");
const HOURLY: TableDefinition<(i32, u8, u8), &[u8]> = TableDefinition::new("analytics_hourly");
const ENGAGED: TableDefinition<(i32, &str, u128), ()> = TableDefinition::new("analytics_engaged");
const ENGAGED_BY_CUSTOMER: TableDefinition<(u128, i32, &str), ()> =
    TableDefinition::new("analytics_engaged_by_customer");
const CURSOR: TableDefinition<&str, u128> = TableDefinition::new("analytics_cursor");
const COUNTED: &str = "daily";
/// The channel code of a row without a channel.
const NO_CHANNEL: u8 = 255;

/// Creates the tables (at open, with the others).
pub(super) fn open_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(DAILY).map_err(db_err)?;
    txn.open_table(HOURLY).map_err(db_err)?;
    txn.open_table(ENGAGED).map_err(db_err)?;
    txn.open_table(ENGAGED_BY_CUSTOMER).map_err(db_err)?;
    txn.open_table(CURSOR).map_err(db_err)?;
    Ok(())
}

fn day_number(day: NaiveDate) -> i32 {
    day.num_days_from_ce()
}

fn day_of(number: i32) -> StoreResult<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(number)
        .ok_or_else(|| StoreError::Internal(format!("corrupt analytics day {number}")))
}

fn channel_of(code: u8) -> StoreResult<Option<Channel>> {
    if code == NO_CHANNEL {
        return Ok(None);
    }
    Channel::ALL
        .into_iter()
        .find(|c| channel_code(*c) == code)
        .map(Some)
        .ok_or_else(|| StoreError::Internal(format!("corrupt analytics channel {code}")))
}

fn row_key(key: &RowKey) -> DayKey<'_> {
    (
        day_number(key.day),
        key.agent.as_deref().unwrap_or(""),
        key.channel.map_or(NO_CHANNEL, channel_code),
    )
}

/// Adds `counts` to the stored row.
fn add_row<K: redb::Key + 'static>(
    table: &mut redb::Table<'_, K, &'static [u8]>,
    key: K::SelfType<'_>,
    counts: &Counts,
) -> StoreResult<()>
where
    for<'a> K::SelfType<'a>: Copy,
{
    let mut now: Counts = match table.get(key).map_err(db_err)? {
        Some(bytes) => decode("analytics row", bytes.value())?,
        None => Counts::default(),
    };
    now.add(counts);
    let bytes = encode("analytics row", &now)?;
    table.insert(key, bytes.as_slice()).map_err(db_err)?;
    Ok(())
}

fn apply(txn: &WriteTransaction, batch: &AnalyticsBatch) -> StoreResult<()> {
    let mut daily = txn.open_table(DAILY).map_err(db_err)?;
    let mut engaged = txn.open_table(ENGAGED).map_err(db_err)?;
    let mut by_customer = txn.open_table(ENGAGED_BY_CUSTOMER).map_err(db_err)?;
    for row in &batch.rows {
        add_row(&mut daily, row_key(&row.key), &row.counts)?;
    }
    {
        let mut hourly = txn.open_table(HOURLY).map_err(db_err)?;
        for h in &batch.hours {
            let key = (
                day_number(h.key.day),
                h.key.hour,
                h.key.channel.map_or(NO_CHANNEL, channel_code),
            );
            add_row(&mut hourly, key, &h.counts)?;
        }
    }
    for m in &batch.engaged {
        let day = day_number(m.day);
        let customer = m.customer.0.as_u128();
        if engaged
            .insert((day, m.agent.as_str(), customer), ())
            .map_err(db_err)?
            .is_some()
        {
            continue;
        }
        by_customer
            .insert((customer, day, m.agent.as_str()), ())
            .map_err(db_err)?;
        let one = Counts {
            customers_engaged: 1,
            ..Counts::default()
        };
        add_row(&mut daily, (day, m.agent.as_str(), NO_CHANNEL), &one)?;
    }
    for customer in &batch.forget {
        forget(&mut engaged, &mut by_customer, *customer)?;
    }
    Ok(())
}

fn forget(
    engaged: &mut redb::Table<'_, (i32, &'static str, u128), ()>,
    by_customer: &mut redb::Table<'_, (u128, i32, &'static str), ()>,
    customer: CustomerId,
) -> StoreResult<()> {
    let id = customer.0.as_u128();
    let mut marks: Vec<(i32, String)> = Vec::new();
    for entry in by_customer.range((id, i32::MIN, "")..).map_err(db_err)? {
        let (key, _) = entry.map_err(db_err)?;
        let (c, day, agent) = key.value();
        if c != id {
            break;
        }
        marks.push((day, agent.to_string()));
    }
    for (day, agent) in &marks {
        engaged.remove((*day, agent.as_str(), id)).map_err(db_err)?;
        by_customer
            .remove((id, *day, agent.as_str()))
            .map_err(db_err)?;
    }
    Ok(())
}

/// Moves the cursor from `from` to `to` and applies `batch`, in one
/// transaction; false when the cursor was not at `from`.
fn apply_from(
    db: &Database,
    from: Option<Uuid>,
    to: Uuid,
    batch: &AnalyticsBatch,
) -> StoreResult<bool> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut cursor = txn.open_table(CURSOR).map_err(db_err)?;
        let now = cursor.get(COUNTED).map_err(db_err)?.map(|g| g.value());
        if now != from.map(|f| f.as_u128()) {
            return Ok(false);
        }
        cursor.insert(COUNTED, to.as_u128()).map_err(db_err)?;
    }
    apply(&txn, batch)?;
    txn.commit().map_err(db_err)?;
    Ok(true)
}

/// Replaces every rollup with `batch` and sets the cursor, in one transaction.
fn replace(db: &Database, cursor: Option<Uuid>, batch: &AnalyticsBatch) -> StoreResult<()> {
    let txn = db.begin_write().map_err(db_err)?;
    txn.delete_table(DAILY).map_err(db_err)?;
    txn.delete_table(HOURLY).map_err(db_err)?;
    txn.delete_table(ENGAGED).map_err(db_err)?;
    txn.delete_table(ENGAGED_BY_CUSTOMER).map_err(db_err)?;
    open_tables(&txn)?;
    {
        let mut table = txn.open_table(CURSOR).map_err(db_err)?;
        match cursor {
            Some(c) => {
                table.insert(COUNTED, c.as_u128()).map_err(db_err)?;
            }
            None => {
                table.remove(COUNTED).map_err(db_err)?;
            }
        }
    }
    apply(&txn, batch)?;
    txn.commit().map_err(db_err)?;
    Ok(())
}

/// The stored rows of one day, in key order.
fn read_day(
    table: &impl ReadableTable<DayKey<'static>, &'static [u8]>,
    day: i32,
) -> StoreResult<Vec<DailyRow>> {
    let mut rows = Vec::new();
    for entry in table
        .range((day, "", 0u8)..(day.saturating_add(1), "", 0u8))
        .map_err(db_err)?
    {
        let (key, value) = entry.map_err(db_err)?;
        let (day, agent, channel) = key.value();
        rows.push(DailyRow {
            key: RowKey {
                day: day_of(day)?,
                agent: (!agent.is_empty()).then(|| agent.to_string()),
                channel: channel_of(channel)?,
            },
            counts: decode("analytics row", value.value())?,
        });
    }
    Ok(rows)
}

/// The days a batch changes daily rows of.
fn days_of(batch: &AnalyticsBatch) -> Vec<i32> {
    let mut days: Vec<i32> = batch
        .rows
        .iter()
        .map(|r| day_number(r.key.day))
        .chain(batch.engaged.iter().map(|m| day_number(m.day)))
        .collect();
    days.sort_unstable();
    days.dedup();
    days
}

#[async_trait]
impl AnalyticsStore for EmbeddedStore {
    async fn analytics_cursor(&self) -> StoreResult<Option<Uuid>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CURSOR).map_err(db_err)?;
            Ok(table
                .get(COUNTED)
                .map_err(db_err)?
                .map(|g| Uuid::from_u128(g.value())))
        })
    }

    async fn apply_analytics(
        &self,
        from: Option<Uuid>,
        to: Uuid,
        batch: &AnalyticsBatch,
    ) -> StoreResult<bool> {
        let batch = batch.clone();
        let cache = Arc::clone(&self.analytics_days);
        self.run(move |db| {
            let applied = apply_from(db, from, to, &batch);
            // Committed or not, the days it touched are read again.
            cache.touched(days_of(&batch).into_iter());
            applied
        })
        .await
    }

    async fn replace_analytics(
        &self,
        cursor: Option<Uuid>,
        batch: &AnalyticsBatch,
    ) -> StoreResult<()> {
        let batch = batch.clone();
        let cache = Arc::clone(&self.analytics_days);
        self.run(move |db| {
            let replaced = replace(db, cursor, &batch);
            cache.clear();
            replaced
        })
        .await
    }

    async fn analytics_rows(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<DailyRow>> {
        let days = self.analytics_row_blocks(from, to).await?;
        let mut rows = Vec::with_capacity(days.iter().map(|d| d.len()).sum());
        for day_rows in &days {
            rows.extend(day_rows.iter().cloned());
        }
        Ok(rows)
    }

    async fn analytics_row_blocks(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<Arc<Vec<DailyRow>>>> {
        if to < from {
            return Ok(Vec::new());
        }
        let (first, last) = (day_number(from), day_number(to));
        let cache = Arc::clone(&self.analytics_days);
        self.run(move |db| {
            // The epoch before the read transaction opens (see DayCache).
            let (epoch, held) = cache.get(first..=last);
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(DAILY).map_err(db_err)?;
            let mut days = Vec::with_capacity(held.len());
            for (day, held) in (first..=last).zip(held) {
                days.push(match held {
                    Some(day_rows) => day_rows,
                    None => {
                        let day_rows = Arc::new(read_day(&table, day)?);
                        cache.keep(epoch, day, Arc::clone(&day_rows));
                        day_rows
                    }
                });
            }
            Ok(days)
        })
        .await
    }

    async fn analytics_hours(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<HourRow>> {
        if to < from {
            return Ok(Vec::new());
        }
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(HOURLY).map_err(db_err)?;
            let mut rows = Vec::new();
            let end = day_number(to).saturating_add(1);
            for entry in table
                .range((day_number(from), 0u8, 0u8)..(end, 0u8, 0u8))
                .map_err(db_err)?
            {
                let (key, value) = entry.map_err(db_err)?;
                let (day, hour, channel) = key.value();
                rows.push(HourRow {
                    key: HourKey {
                        day: day_of(day)?,
                        hour,
                        channel: channel_of(channel)?,
                    },
                    counts: decode("analytics hour", value.value())?,
                });
            }
            Ok(rows)
        })
        .await
    }
}
