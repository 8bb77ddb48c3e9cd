//! Sales analytics rollups ([`AnalyticsStore`]).
//!
//! Collections: `analytics_daily` (one document per day, agent and channel:
//! `_id` = `<day>|<agent>|<channel>`, `day` as `YYYY-MM-DD`, `agent` and
//! `channel` or null, and `counts` with the non-zero figures),
//! `analytics_hourly` (the same per day, hour and channel, no agent:
//! `_id` = `<day>|<hour>|<channel>`), `analytics_engaged` (one marker per day, agent and customer, with
//! `customer_id` to forget an erased customer) and `analytics_cursor` (the
//! consumer's position in the feed). Increments (`$inc`, upserted),
//! markers and the cursor move in one transaction.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDate;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use uuid::Uuid;

use super::codec::{is_duplicate_key, map_err};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::analytics::{AnalyticsBatch, Counts, DailyRow, HourKey, HourRow, RowKey};
use crate::engagement::Channel;
use crate::store::{AnalyticsStore, StoreError, StoreResult};

const DAILY: &str = "analytics_daily";
const HOURLY: &str = "analytics_hourly";
const ENGAGED: &str = "analytics_engaged";
const CURSOR: &str = "analytics_cursor";
const COUNTED: &str = "daily";

impl MongoStore {
    fn analytics_daily(&self) -> Collection<Document> {
        self.db.collection(DAILY)
    }

    fn analytics_hourly(&self) -> Collection<Document> {
        self.db.collection(HOURLY)
    }

    fn analytics_engaged(&self) -> Collection<Document> {
        self.db.collection(ENGAGED)
    }

    fn analytics_cursor_coll(&self) -> Collection<Document> {
        self.db.collection(CURSOR)
    }
}

/// Creates the indexes, and so the collections a transaction writes.
pub(super) async fn create_indexes(store: &MongoStore) -> StoreResult<()> {
    let plain = |keys: Document| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().build())
            .build()
    };
    store
        .analytics_daily()
        .create_indexes([plain(doc! { "day": 1 })])
        .await
        .map_err(map_err)?;
    store
        .analytics_hourly()
        .create_indexes([plain(doc! { "day": 1 })])
        .await
        .map_err(map_err)?;
    store
        .analytics_engaged()
        .create_indexes([plain(doc! { "customer_id": 1 })])
        .await
        .map_err(map_err)?;
    store
        .analytics_cursor_coll()
        .create_indexes([plain(doc! { "at": 1 })])
        .await
        .map_err(map_err)?;
    Ok(())
}

fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

fn row_id(key: &RowKey) -> String {
    format!(
        "{}|{}|{}",
        day_text(key.day),
        key.agent.as_deref().unwrap_or(""),
        key.channel.map_or("", Channel::as_str)
    )
}

fn optional(value: Option<&str>) -> Bson {
    value.map_or(Bson::Null, |v| Bson::String(v.to_string()))
}

fn number(value: &Bson) -> Option<u64> {
    match value {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if *n >= 0.0 => Some(*n as u64),
        _ => None,
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("corrupt analytics row: {what}"))
}

/// The day, channel and counts every row has.
fn parts_of(doc: &Document) -> StoreResult<(NaiveDate, Option<Channel>, Counts)> {
    let day = doc
        .get_str("day")
        .ok()
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .ok_or_else(|| corrupt("day"))?;
    let channel = match doc.get_str("channel") {
        Ok(c) => Some(c.parse::<Channel>().map_err(|_| corrupt("channel"))?),
        Err(_) => None,
    };
    let mut counts = Counts::default();
    if let Ok(fields) = doc.get_document("counts") {
        for (name, value) in fields {
            let n = number(value).ok_or_else(|| corrupt(name))?;
            counts.set(name, n);
        }
    }
    Ok((day, channel, counts))
}

fn hour_from(doc: &Document) -> StoreResult<HourRow> {
    let (day, channel, counts) = parts_of(doc)?;
    let hour = doc
        .get("hour")
        .and_then(number)
        .and_then(|h| u8::try_from(h).ok())
        .ok_or_else(|| corrupt("hour"))?;
    Ok(HourRow {
        key: HourKey { day, hour, channel },
        counts,
    })
}

fn row_from(doc: &Document) -> StoreResult<DailyRow> {
    let (day, channel, counts) = parts_of(doc)?;
    let agent = doc.get_str("agent").ok().map(str::to_string);
    Ok(DailyRow {
        key: RowKey {
            day,
            agent,
            channel,
        },
        counts,
    })
}

/// [`AnalyticsStore::apply_analytics`].
struct Apply<'a> {
    from: Option<Uuid>,
    to: Uuid,
    batch: &'a AnalyticsBatch,
    moved: bool,
}

impl Apply<'_> {
    /// Adds `counts` to the document `id` of `coll`, setting `fields` (what
    /// the id is made of) as well.
    async fn add(
        tx: &mut MongoTx<'_>,
        coll: Collection<Document>,
        id: String,
        fields: Document,
        counts: &Counts,
    ) -> StoreResult<()> {
        let figures = counts.fields();
        if figures.is_empty() {
            return Ok(());
        }
        let mut inc = Document::new();
        for (name, n) in figures {
            inc.insert(
                format!("counts.{name}"),
                Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
            );
        }
        let update = doc! { "$set": fields, "$inc": inc };
        let result = coll
            .update_one(doc! { "_id": id }, update)
            .upsert(true)
            .session(&mut *tx.session)
            .await;
        result.map(|_| ()).map_err(|e| tx.fail(e))
    }
}

#[async_trait]
impl Work for Apply<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        self.moved = false;
        let store = tx.store;
        let cursor = tx
            .find_one(&store.analytics_cursor_coll(), doc! { "_id": COUNTED })
            .await?;
        let at = cursor
            .as_ref()
            .and_then(|d| d.get_str("at").ok())
            .map(str::to_string);
        if at != self.from.map(|f| f.to_string()) {
            return Ok(());
        }
        let mut rows: BTreeMap<RowKey, Counts> = BTreeMap::new();
        for r in &self.batch.rows {
            rows.entry(r.key.clone()).or_default().add(&r.counts);
        }
        if !self.batch.engaged.is_empty() {
            let marker = |m: &crate::analytics::Engaged| {
                format!("{}|{}|{}", day_text(m.day), m.agent, m.customer)
            };
            let ids: Vec<String> = self.batch.engaged.iter().map(marker).collect();
            let existing = tx
                .find_all(
                    &store.analytics_engaged(),
                    doc! { "_id": { "$in": ids } },
                    None,
                    Some(doc! { "_id": 1 }),
                )
                .await?;
            let existing: HashSet<String> = existing
                .iter()
                .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
                .collect();
            let mut new = Vec::new();
            for m in &self.batch.engaged {
                let id = marker(m);
                if existing.contains(&id) {
                    continue;
                }
                new.push(doc! { "_id": id, "customer_id": m.customer.to_string() });
                rows.entry(RowKey {
                    day: m.day,
                    agent: Some(m.agent.clone()),
                    channel: None,
                })
                .or_default()
                .customers_engaged += 1;
            }
            match tx.insert_many(&store.analytics_engaged(), new).await {
                Ok(()) => {}
                Err(e) if is_duplicate_key(&e) => {
                    return Err(tx.rerun("a concurrent consumer added the same marker"))
                }
                Err(e) => return Err(tx.fail(e)),
            }
        }
        if !self.batch.forget.is_empty() {
            let ids: Vec<String> = self.batch.forget.iter().map(|c| c.to_string()).collect();
            tx.delete_many(
                &store.analytics_engaged(),
                doc! { "customer_id": { "$in": ids } },
            )
            .await?;
        }
        for (key, counts) in &rows {
            let fields = doc! {
                "day": day_text(key.day),
                "agent": optional(key.agent.as_deref()),
                "channel": optional(key.channel.map(Channel::as_str)),
            };
            Self::add(tx, store.analytics_daily(), row_id(key), fields, counts).await?;
        }
        for h in &self.batch.hours {
            let k = &h.key;
            let channel = k.channel.map_or("", Channel::as_str);
            let id = format!("{}|{:02}|{channel}", day_text(k.day), k.hour);
            let fields = doc! {
                "day": day_text(k.day),
                "hour": i32::from(k.hour),
                "channel": optional(k.channel.map(Channel::as_str)),
            };
            Self::add(tx, store.analytics_hourly(), id, fields, &h.counts).await?;
        }
        let result = store
            .analytics_cursor_coll()
            .update_one(
                doc! { "_id": COUNTED },
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

#[async_trait]
impl AnalyticsStore for MongoStore {
    async fn analytics_cursor(&self) -> StoreResult<Option<Uuid>> {
        let found = self
            .analytics_cursor_coll()
            .find_one(doc! { "_id": COUNTED })
            .await
            .map_err(map_err)?;
        match found.as_ref().and_then(|d| d.get_str("at").ok()) {
            None => Ok(None),
            Some(at) => at
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Internal("the analytics cursor is not an id".into())),
        }
    }

    async fn apply_analytics(
        &self,
        from: Option<Uuid>,
        to: Uuid,
        batch: &AnalyticsBatch,
    ) -> StoreResult<bool> {
        let mut work = Apply {
            from,
            to,
            batch,
            moved: false,
        };
        self.run(&mut work).await?;
        Ok(work.moved)
    }

    async fn replace_analytics(
        &self,
        cursor: Option<Uuid>,
        batch: &AnalyticsBatch,
    ) -> StoreResult<()> {
        const CHUNK: usize = 5_000;
        for coll in [
            self.analytics_daily(),
            self.analytics_hourly(),
            self.analytics_engaged(),
        ] {
            coll.delete_many(doc! {}).await.map_err(map_err)?;
        }
        // The rows with their distinct customers, written as they are.
        let mut rows: BTreeMap<RowKey, Counts> = BTreeMap::new();
        for r in &batch.rows {
            rows.entry(r.key.clone()).or_default().add(&r.counts);
        }
        let mut markers = Vec::new();
        let mut seen = HashSet::new();
        for m in &batch.engaged {
            let id = format!("{}|{}|{}", day_text(m.day), m.agent, m.customer);
            if !seen.insert(id.clone()) {
                continue;
            }
            markers.push(doc! { "_id": id, "customer_id": m.customer.to_string() });
            rows.entry(RowKey {
                day: m.day,
                agent: Some(m.agent.clone()),
                channel: None,
            })
            .or_default()
            .customers_engaged += 1;
        }
        let counts_doc = |c: &Counts| {
            let mut d = Document::new();
            for (name, n) in c.fields() {
                d.insert(name, Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)));
            }
            d
        };
        let daily: Vec<Document> = rows
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(k, c)| {
                doc! {
                    "_id": row_id(k),
                    "day": day_text(k.day),
                    "agent": optional(k.agent.as_deref()),
                    "channel": optional(k.channel.map(Channel::as_str)),
                    "counts": counts_doc(c),
                }
            })
            .collect();
        let hourly: Vec<Document> = batch
            .hours
            .iter()
            .map(|h| {
                let k = &h.key;
                let channel = k.channel.map_or("", Channel::as_str);
                doc! {
                    "_id": format!("{}|{:02}|{channel}", day_text(k.day), k.hour),
                    "day": day_text(k.day),
                    "hour": i32::from(k.hour),
                    "channel": optional(k.channel.map(Channel::as_str)),
                    "counts": counts_doc(&h.counts),
                }
            })
            .collect();
        for (coll, docs) in [
            (self.analytics_daily(), daily),
            (self.analytics_hourly(), hourly),
            (self.analytics_engaged(), markers),
        ] {
            for chunk in docs.chunks(CHUNK) {
                coll.insert_many(chunk.to_vec()).await.map_err(map_err)?;
            }
        }
        match cursor {
            Some(c) => {
                self.analytics_cursor_coll()
                    .update_one(
                        doc! { "_id": COUNTED },
                        doc! { "$set": { "at": c.to_string() } },
                    )
                    .upsert(true)
                    .await
                    .map_err(map_err)?;
            }
            None => {
                self.analytics_cursor_coll()
                    .delete_one(doc! { "_id": COUNTED })
                    .await
                    .map_err(map_err)?;
            }
        }
        Ok(())
    }

    async fn analytics_rows(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<DailyRow>> {
        if to < from {
            return Ok(Vec::new());
        }
        let cursor = self
            .analytics_daily()
            .find(doc! { "day": { "$gte": day_text(from), "$lte": day_text(to) } })
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let mut rows = docs.iter().map(row_from).collect::<StoreResult<Vec<_>>>()?;
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(rows)
    }

    async fn analytics_hours(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<HourRow>> {
        if to < from {
            return Ok(Vec::new());
        }
        let cursor = self
            .analytics_hourly()
            .find(doc! { "day": { "$gte": day_text(from), "$lte": day_text(to) } })
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let mut rows = docs
            .iter()
            .map(hour_from)
            .collect::<StoreResult<Vec<_>>>()?;
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(rows)
    }
}
