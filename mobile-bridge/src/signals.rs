//! Incoming-call signals: each caller-ID hit, kept so that the desktop can
//! show a popup. Recording must not slow the lookup, so it goes through a
//! bounded queue to one background writer that stores them in batches (what
//! arrives within [`LINGER`] of the first); when
//! the queue is full (the store is slow or down) signals are dropped and
//! counted, never waited for.

use std::sync::Arc;
use std::time::Duration;

use crm_models::device::CallSignal;
use crm_models::store::Store;
use tokio::sync::mpsc;

/// Signals waiting to be written before new ones are dropped.
const QUEUE: usize = 4096;
/// Most signals written in one store call.
const BATCH: usize = 1024;
/// How long a signal waits for others to share its write: at most ten
/// durable commits a second while calls come in, instead of one per
/// handful of lookups (each commit is an fsync). A desktop popup shows a
/// tenth of a second later; the caller-ID answer itself never waits.
const LINGER: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(crate) struct SignalRecorder {
    queue: mpsc::Sender<CallSignal>,
}

impl SignalRecorder {
    /// Starts the writer on the current tokio runtime; it ends when the last
    /// recorder is dropped, after writing what is queued.
    pub(crate) fn start(store: Arc<dyn Store>) -> Self {
        let (queue, mut rx) = mpsc::channel::<CallSignal>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if batch.len() < BATCH {
                    tokio::time::sleep(LINGER).await;
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(signal) => batch.push(signal),
                            Err(_) => break,
                        }
                    }
                }
                if let Err(e) = store.insert_call_signals(&batch).await {
                    metrics::counter!("crm_call_signals_dropped_total")
                        .increment(batch.len() as u64);
                    tracing::warn!(error = %e, signals = batch.len(), "incoming-call signals not stored");
                }
                batch.clear();
            }
        });
        SignalRecorder { queue }
    }

    /// Queues the signal without waiting.
    pub(crate) fn record(&self, signal: CallSignal) {
        if self.queue.try_send(signal).is_err() {
            metrics::counter!("crm_call_signals_dropped_total").increment(1);
            tracing::debug!("incoming-call signal queue full; signal dropped");
        }
    }
}
