//! Caller-ID reads share round trips (automatic pipelining).
//!
//! Each caller-ID lookup is one `HGETALL` of a `ph:` key, plus the check of
//! the live generation that every read makes. Sent one by one, every lookup
//! costs Redis (and this process) a socket read and a socket write, which
//! under load cost more than the commands. Here lookups queue for one task
//! that sends whatever has queued as one pipeline: one generation check,
//! then one `HGETALL` per lookup, and hands each lookup its reply. While two
//! pipelines are in flight the next lookups queue, so batches grow with the
//! load; a lone lookup is sent at once.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use ::redis::Value;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::{read_live, Connection};
use crate::{IndexError, IndexResult};

/// Most lookups sent in one pipeline.
const MAX_BATCH: usize = 256;

/// Most pipelines awaiting their replies. With one, lookups that queue while
/// a pipeline is out wait for all of its replies, however late (Redis shares
/// the cores with this process); with two, they go out as soon as the task
/// has them. More would shrink batches: each costs Redis a read and a write.
const MAX_IN_FLIGHT: usize = 2;

struct Lookup {
    e164: String,
    reply: oneshot::Sender<IndexResult<Value>>,
}

/// What the batching task needs, shared with the index that owns it.
#[derive(Clone)]
pub(super) struct Target {
    pub conn: Arc<Connection>,
    pub prefix: String,
    pub generation: Arc<AtomicU64>,
}

pub(super) struct PhoneReads {
    target: Target,
    /// The queue of the running task; replaced when that task is gone (its
    /// runtime shut down).
    queue: Mutex<Option<mpsc::UnboundedSender<Lookup>>>,
}

impl PhoneReads {
    pub(super) fn new(target: Target) -> Self {
        PhoneReads {
            target,
            queue: Mutex::new(None),
        }
    }

    /// The raw `HGETALL` reply of `ph:<e164>` in the live generation.
    pub(super) async fn hgetall(&self, e164: &str) -> IndexResult<Value> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Lookup {
            e164: e164.to_string(),
            reply,
        });
        wait(answer).await
    }

    fn enqueue(&self, lookup: Lookup) {
        let mut queue = self.queue.lock();
        let lookup = match queue.as_ref() {
            Some(tx) => match tx.send(lookup) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => back,
            },
            None => lookup,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(self.target.clone(), rx));
        // Cannot fail: the receiver was just handed to the task.
        let _ = tx.send(lookup);
        *queue = Some(tx);
    }
}

async fn wait(answer: oneshot::Receiver<IndexResult<Value>>) -> IndexResult<Value> {
    answer
        .await
        .map_err(|_| IndexError::Unavailable("the caller-ID read task stopped".into()))?
}

/// Sends what has queued as one pipeline, with up to [`MAX_IN_FLIGHT`]
/// pipelines awaiting their replies; ends when the index (the only sender)
/// is dropped and every pipeline sent has been answered.
async fn serve(target: Target, mut queue: mpsc::UnboundedReceiver<Lookup>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        let room = open && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            Some((batch, result)) = in_flight.next(), if !in_flight.is_empty() => {
                answer(batch, result);
            }
            first = queue.recv(), if room => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                // Let the requests already runnable on this runtime queue
                // their lookups too (under load, several are): they go in
                // this pipeline instead of each in one of their own. Idle,
                // this costs nothing.
                tokio::task::yield_now().await;
                let mut batch = Vec::with_capacity(MAX_BATCH);
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let target = target.clone();
                in_flight.push(async move {
                    let result = read(&target, &batch).await;
                    (batch, result)
                });
            }
        }
    }
}

fn answer(batch: Vec<Lookup>, result: IndexResult<Vec<Value>>) {
    match result {
        Ok(values) => {
            for (lookup, value) in batch.into_iter().zip(values) {
                let _ = lookup.reply.send(Ok(value));
            }
        }
        Err(e) => {
            for lookup in batch {
                let _ = lookup.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One pipeline for the batch, against the live generation. One reply per
/// lookup, in order.
async fn read(target: &Target, batch: &[Lookup]) -> IndexResult<Vec<Value>> {
    let (_, values) = read_live(
        &target.conn,
        &target.prefix,
        &target.generation,
        |keys, pipe| {
            for lookup in batch {
                pipe.cmd("HGETALL").arg(keys.ph(&lookup.e164));
            }
        },
    )
    .await?;
    if values.len() != batch.len() {
        return Err(IndexError::Internal(format!(
            "{} replies to {} lookups",
            values.len(),
            batch.len()
        )));
    }
    Ok(values)
}
