//! Decoded copies of records every request reads and few requests write:
//! staff users (each staff request checks that its user is still active)
//! and devices (each mobile request finds its device by token hash).
//!
//! The embedded store is the only writer of its file (redb locks it), so a
//! cache it clears on each of its own writes is never stale. A read that
//! raced a write cannot put back what the write replaced: a reader notes
//! the epoch before it opens its read transaction, every write bumps the
//! epoch after it commits, and a copy is kept only if the epoch has not
//! moved meanwhile.

use std::collections::HashMap;
use std::hash::Hash;

use parking_lot::Mutex;

/// Most records kept; when full, the cache starts again empty.
const CAPACITY: usize = 4096;

pub(crate) struct RecordCache<K, V> {
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    epoch: u64,
    records: HashMap<K, V>,
}

impl<K: Eq + Hash, V: Clone> RecordCache<K, V> {
    pub(crate) fn new() -> Self {
        RecordCache {
            inner: Mutex::new(Inner {
                epoch: 0,
                records: HashMap::new(),
            }),
        }
    }

    /// The cached copy, or the epoch to hand to [`RecordCache::keep`] after
    /// reading the record from the file.
    pub(crate) fn get<Q>(&self, key: &Q) -> Result<V, u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let inner = self.inner.lock();
        inner.records.get(key).cloned().ok_or(inner.epoch)
    }

    /// Keeps a copy read from the file, unless a write committed since
    /// `epoch` was handed out.
    pub(crate) fn keep(&self, epoch: u64, key: K, record: V) {
        let mut inner = self.inner.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.records.len() >= CAPACITY {
            inner.records.clear();
        }
        inner.records.insert(key, record);
    }

    /// Forgets everything: call after each write to the records' tables,
    /// once it has committed (or failed).
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        inner.records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_read_before_a_write_is_not_kept() {
        let cache: RecordCache<String, u32> = RecordCache::new();
        let before = cache.get("a").unwrap_err();
        cache.clear(); // a write committed meanwhile
        cache.keep(before, "a".into(), 1);
        let now = cache.get("a").unwrap_err();
        assert_ne!(now, before);
        cache.keep(now, "a".into(), 2);
        assert_eq!(cache.get("a"), Ok(2));
        cache.clear();
        assert!(cache.get("a").is_err());
    }

    #[test]
    fn a_full_cache_starts_again() {
        let cache: RecordCache<u32, u32> = RecordCache::new();
        for k in 0..CAPACITY as u32 + 1 {
            let epoch = cache.get(&k).unwrap_err();
            cache.keep(epoch, k, k);
        }
        assert!(cache.get(&0).is_err());
        assert_eq!(cache.get(&(CAPACITY as u32)), Ok(CAPACITY as u32));
    }
}
