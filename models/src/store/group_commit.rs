//! Group commit for the embedded store's busiest write.
//!
//! Every engagement batch (an API batch, a phone's upload) is one durable
//! redb commit, and redb runs one write transaction at a time. Under load
//! the batches queue for the write lock anyway; each then pays for its own
//! commit: the dirty B-tree pages written out and checksummed, and an
//! `fdatasync`. Here the batches that arrive while a commit is running wait
//! together and are written by the next one transaction, in arrival order, so
//! that each batch still sees those before it (a duplicate of an engagement
//! stored by an earlier batch of the same commit is reported as a
//! duplicate). Every caller gets its own answer when that transaction is
//! durable; if it fails, every batch in it fails and none is stored.

use std::sync::{Arc, Mutex, MutexGuard};

use redb::Database;
use tokio::sync::oneshot;

use super::{StoreError, StoreResult};

/// At most this many items go into one transaction (the batches that
/// arrived first; the rest wait for the next commit).
const MAX_ITEMS_PER_COMMIT: usize = 8_000;

type Reply<R> = oneshot::Sender<StoreResult<Vec<R>>>;

/// Writes batches (in order) in one transaction and commits it; one answer
/// list per batch.
pub(super) type WriteBatches<T, R> = fn(&Database, &[Vec<T>]) -> StoreResult<Vec<Vec<R>>>;

/// Writes queued batches of `T`, each answered with one `R` per item, with
/// one transaction for all the batches waiting.
pub(super) struct GroupCommit<T, R> {
    state: Mutex<Queue<T, R>>,
    write: WriteBatches<T, R>,
}

struct Queue<T, R> {
    waiting: Vec<(Vec<T>, Reply<R>)>,
    /// A writer task is running and will take what is waiting.
    writing: bool,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    pub(super) fn new(write: WriteBatches<T, R>) -> Self {
        GroupCommit {
            state: Mutex::new(Queue {
                waiting: Vec::new(),
                writing: false,
            }),
            write,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T, R>> {
        // The queue stays consistent whatever panicked while it was held.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `batch` and waits until the transaction holding it commits.
    pub(super) async fn submit(
        self: &Arc<Self>,
        db: &Arc<Database>,
        batch: Vec<T>,
    ) -> StoreResult<Vec<R>> {
        let (reply, answer) = oneshot::channel();
        let start_writer = {
            let mut q = self.lock();
            q.waiting.push((batch, reply));
            !std::mem::replace(&mut q.writing, true)
        };
        if start_writer {
            let this = Arc::clone(self);
            let db = Arc::clone(db);
            tokio::task::spawn_blocking(move || this.write_all(&db));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the embedded store's writer stopped before answering".into(),
            ))
        })
    }

    /// Writes until nothing is waiting.
    fn write_all(&self, db: &Database) {
        // Marks the writer gone if a write panics, so that the next batch
        // starts a new one (the panicked group's callers get an error when
        // their reply senders drop).
        struct OnPanic<'a, T, R>(&'a GroupCommit<T, R>);
        impl<T, R> Drop for OnPanic<'_, T, R> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut q = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                    q.writing = false;
                }
            }
        }
        let _on_panic = OnPanic(self);
        loop {
            let group = {
                let mut q = self.lock();
                if q.waiting.is_empty() {
                    q.writing = false;
                    return;
                }
                let mut items = 0;
                let take = q
                    .waiting
                    .iter()
                    .take_while(|(batch, _)| {
                        let first = items == 0;
                        items += batch.len();
                        first || items <= MAX_ITEMS_PER_COMMIT
                    })
                    .count();
                q.waiting.drain(..take).collect::<Vec<_>>()
            };
            let (batches, replies): (Vec<Vec<T>>, Vec<Reply<R>>) = group.into_iter().unzip();
            match (self.write)(db, &batches) {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redb::{ReadableTable, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// Inserts each key unless present; answers whether it was new, and how
    /// many batches the transaction held.
    fn write(db: &Database, batches: &[Vec<u64>]) -> StoreResult<Vec<Vec<(bool, usize)>>> {
        let err = |e: &dyn std::fmt::Display| StoreError::Internal(e.to_string());
        let txn = db.begin_write().map_err(|e| err(&e))?;
        let mut out = Vec::new();
        {
            let mut t = txn.open_table(T).map_err(|e| err(&e))?;
            for batch in batches {
                let mut answers = Vec::new();
                for &k in batch {
                    let new = t.get(k).map_err(|e| err(&e))?.is_none();
                    if new {
                        t.insert(k, 1).map_err(|e| err(&e))?;
                    }
                    answers.push((new, batches.len()));
                }
                out.push(answers);
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_batches_share_commits_and_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("t.redb")).unwrap());
        let group = Arc::new(GroupCommit::new(write));
        // 64 batches of 10 keys, each key in two batches.
        let tasks: Vec<_> = (0..64u64)
            .map(|b| {
                let (group, db) = (Arc::clone(&group), Arc::clone(&db));
                tokio::spawn(async move {
                    let keys: Vec<u64> = (0..10).map(|i| (b * 10 + i) % 320).collect();
                    let answers = group.submit(&db, keys.clone()).await.unwrap();
                    (keys, answers)
                })
            })
            .collect();
        let mut new_per_key = std::collections::HashMap::new();
        let mut largest_group = 0;
        for task in tasks {
            let (keys, answers) = task.await.unwrap();
            assert_eq!(answers.len(), keys.len());
            for (k, (new, group_size)) in keys.into_iter().zip(answers) {
                *new_per_key.entry(k).or_insert(0) += usize::from(new);
                largest_group = largest_group.max(group_size);
            }
        }
        // Every key stored once, reported new exactly once.
        assert_eq!(new_per_key.len(), 320);
        assert!(new_per_key.values().all(|&n| n == 1));
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(T).unwrap().iter().unwrap().count(), 320);
        // 64 batches submitted at once cannot all have had a commit each
        // while one was running: some were grouped.
        assert!(largest_group > 1, "no two batches shared a commit");
        // And a later batch starts a writer again.
        let answers = group.submit(&db, vec![1_000]).await.unwrap();
        assert_eq!(answers, vec![(true, 1)]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_batch_in_it() {
        fn fail(_: &Database, _: &[Vec<u64>]) -> StoreResult<Vec<Vec<bool>>> {
            Err(StoreError::Unavailable("disk full".into()))
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("t.redb")).unwrap());
        let group = Arc::new(GroupCommit::new(fail));
        let err = group.submit(&db, vec![1, 2]).await.unwrap_err();
        assert_eq!(err, StoreError::Unavailable("disk full".into()));
        // The writer is free again.
        assert!(group.submit(&db, vec![3]).await.is_err());
    }
}
