//! Decoded daily rollups, a day at a time: what leaderboards over weeks and
//! months and a year's series read again and again. Decoding a stored row
//! costs far more than copying a decoded one, and a past day changes only
//! when an engagement recorded late lands on it.
//!
//! As with [`RecordCache`](crate::store::record_cache::RecordCache), the
//! embedded store is its file's only writer, so clearing a day on each of
//! its own writes keeps the copies true. A reader notes the epoch before
//! it opens its read transaction; a write bumps the epoch after it commits
//! and marks the days it touched with it; a day read is kept only if no
//! write touched it (and no rebuild cleared everything) since the reader's
//! epoch.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::analytics::DailyRow;

/// Most days kept (about three years); when full, the cache starts again
/// empty.
const CAPACITY: usize = 1100;

#[derive(Default)]
pub(super) struct DayCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    epoch: u64,
    /// The epoch of the last rebuild.
    cleared: u64,
    /// The epoch of the last write to each day.
    touched: HashMap<i32, u64>,
    days: HashMap<i32, Arc<Vec<DailyRow>>>,
}

impl DayCache {
    /// The epoch to hand to [`DayCache::keep`], and the days of `days`
    /// held (`None` for the others).
    pub(super) fn get(
        &self,
        days: impl Iterator<Item = i32>,
    ) -> (u64, Vec<Option<Arc<Vec<DailyRow>>>>) {
        let inner = self.inner.lock();
        (
            inner.epoch,
            days.map(|d| inner.days.get(&d).cloned()).collect(),
        )
    }

    /// Keeps a day read from the file, unless a write touched it since
    /// `epoch`.
    pub(super) fn keep(&self, epoch: u64, day: i32, rows: Arc<Vec<DailyRow>>) {
        let mut inner = self.inner.lock();
        if inner.cleared > epoch || inner.touched.get(&day).is_some_and(|t| *t > epoch) {
            return;
        }
        if inner.days.len() >= CAPACITY {
            inner.days.clear();
        }
        inner.days.insert(day, rows);
    }

    /// After a write that committed (or failed) touching `days`.
    pub(super) fn touched(&self, days: impl Iterator<Item = i32>) {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        let epoch = inner.epoch;
        for day in days {
            inner.days.remove(&day);
            inner.touched.insert(day, epoch);
        }
    }

    /// After a rebuild, which replaces every day.
    pub(super) fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        inner.cleared = inner.epoch;
        inner.days.clear();
        inner.touched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_read_before_a_write_to_it_is_not_kept() {
        let cache = DayCache::default();
        let (epoch, held) = cache.get([1, 2].into_iter());
        assert_eq!(held, vec![None, None]);
        cache.touched([1].into_iter());
        cache.keep(epoch, 1, Arc::new(Vec::new()));
        cache.keep(epoch, 2, Arc::new(Vec::new()));
        let (_, held) = cache.get([1, 2].into_iter());
        assert!(held[0].is_none(), "day 1 was written while it was read");
        assert!(held[1].is_some());

        let (epoch, _) = cache.get([1].into_iter());
        cache.clear();
        cache.keep(epoch, 1, Arc::new(Vec::new()));
        let (epoch, held) = cache.get([1, 2].into_iter());
        assert_eq!(held, vec![None, None], "a rebuild drops every day");
        cache.keep(epoch, 1, Arc::new(Vec::new()));
        assert!(cache.get([1].into_iter()).1[0].is_some());
        cache.touched([1].into_iter());
        assert!(
            cache.get([1].into_iter()).1[0].is_none(),
            "a write drops its days"
        );
    }
}
