//! [`AnalyticsStore`]: the daily rollups of sales analytics, their
//! distinct-customer markers and the consumer's cursor (see
//! [`crate::analytics`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;
use uuid::Uuid;

use super::StoreResult;
use crate::analytics::{AnalyticsBatch, DailyRow, HourRow};

/// Daily rollups per day, agent and channel.
#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    /// The last event of the log the analytics consumer has counted (feed order).
    async fn analytics_cursor(&self) -> StoreResult<Option<Uuid>>;

    /// In one transaction: adds the batch's increments to the rollups (daily
    /// rows and hourly totals), adds
    /// each marker of `batch.engaged` that does not exist yet (one more
    /// `customers_engaged` on its `(day, agent, no channel)` row for each
    /// new one), deletes the markers of `batch.forget`, and moves the
    /// cursor from `from` to `to`. False, with nothing changed, when the
    /// cursor is not `from` any more (another consumer moved it): so a page
    /// of events is counted once.
    async fn apply_analytics(
        &self,
        from: Option<Uuid>,
        to: Uuid,
        batch: &AnalyticsBatch,
    ) -> StoreResult<bool>;

    /// Replaces every rollup, hourly total and marker with what `batch`
    /// gives (applied to nothing) and sets the cursor to `cursor`: a
    /// rebuild. Not meant to run beside a consumer: on MongoDB it is not
    /// one transaction (a rebuild may be larger than one), so an
    /// interrupted rebuild leaves partial figures until it runs again.
    async fn replace_analytics(
        &self,
        cursor: Option<Uuid>,
        batch: &AnalyticsBatch,
    ) -> StoreResult<()>;

    /// The rows of the days `from..=to`, in [`RowKey`](crate::analytics::RowKey)
    /// order (day, agent with none first, channel with none last).
    async fn analytics_rows(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<DailyRow>>;

    /// The same rows as [`analytics_rows`](Self::analytics_rows), in the
    /// same order, as shared blocks: what a query that only reads them
    /// takes (the embedded store hands out the days it keeps decoded, a
    /// block each, without copying a row).
    async fn analytics_row_blocks(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<Arc<Vec<DailyRow>>>> {
        Ok(vec![Arc::new(self.analytics_rows(from, to).await?)])
    }

    /// The hourly totals of the days `from..=to`, in
    /// [`HourKey`](crate::analytics::HourKey) order.
    async fn analytics_hours(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<HourRow>>;
}
