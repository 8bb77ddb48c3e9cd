//! Incoming-call signals: each caller-ID hit, kept so that the desktop can
//! show a popup. Storing one also writes its `call.incoming` event, which
//! the relay pushes to the desktops' streams. Recording must not slow the
//! lookup, so it goes through a bounded queue to one background writer that
//! stores them in batches: what arrived while the previous batch was being
//! written, so a lone call is written at once (its popup is due on the
//! desktop within a tenth of a second) and a burst shares commits. When the
//! queue is full (the store is slow or down) signals are dropped and
//! counted, never waited for.
//! The writer also deletes signals older than [`RETENTION`], at most once
//! every [`PRUNE_EVERY`]: a popup is about the call ringing now, and the
//! engagement the app uploads afterwards is the lasting record of it.

use std::time::Duration;

use crm_models::device::CallSignal;
use crm_models::service::Crm;
use crm_models::store::Store;
use tokio::sync::mpsc;

/// Signals waiting to be written before new ones are dropped.
const QUEUE: usize = 4096;
/// Most signals written in one store call. Under load batches fill at
/// once; a smaller batch keeps each write short (writing 1,024 took a few
/// milliseconds of CPU, long enough to show in caller-ID latency on two
/// cores) for a few more commits a second.
const BATCH: usize = 256;
/// How long signals are kept.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often old signals are deleted (while calls come in).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub(crate) struct SignalRecorder {
    queue: mpsc::Sender<CallSignal>,
}

impl SignalRecorder {
    /// Starts the writer on the current tokio runtime; it ends when the last
    /// recorder is dropped, after writing what is queued.
    /// Writes to `crm`'s store and wakes its relays after each write
    /// ([`Crm::wake_relay`]), so the `call.incoming` events go out at once
    /// instead of at the relay's next poll.
    pub(crate) fn start(crm: Crm) -> Self {
        let store = crm.store().clone();
        let (queue, mut rx) = mpsc::channel::<CallSignal>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut pruned_at: Option<tokio::time::Instant> = None;
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    pruned_at = Some(tokio::time::Instant::now());
                    prune(store.as_ref()).await;
                }
                let signals = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let count = signals.len();
                match store.insert_call_signals(signals).await {
                    Ok(()) => crm.wake_relay(),
                    Err(e) => {
                        metrics::counter!("crm_call_signals_dropped_total").increment(count as u64);
                        tracing::warn!(error = %e, signals = count, "incoming-call signals not stored");
                    }
                }
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

/// Deletes the signals older than [`RETENTION`].
async fn prune(store: &dyn Store) {
    let Ok(keep) = chrono::Duration::from_std(RETENTION) else {
        return;
    };
    match store
        .delete_call_signals_before(crm_models::time::now() - keep)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(signals = n, "deleted incoming-call signals past retention"),
        Err(e) => tracing::warn!(error = %e, "cannot delete old incoming-call signals yet"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crm_models::ids::{CustomerId, DeviceId, UserId};
    use crm_models::store::embedded::EmbeddedStore;
    use crm_models::PhoneNumber;

    fn signal(at: crm_models::time::Timestamp) -> CallSignal {
        CallSignal {
            id: uuid::Uuid::now_v7(),
            customer_id: Some(CustomerId::new()),
            device_id: DeviceId::new(),
            user_id: UserId::new(),
            number: PhoneNumber::parse("+6581226418", None).unwrap(),
            at,
        }
    }

    #[tokio::test]
    async fn signals_are_written_together_and_old_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let now = crm_models::time::now();
        let old = signal(now - chrono::Duration::days(8));
        let recent = signal(now - chrono::Duration::days(6));
        store
            .insert_call_signals(vec![old.clone(), recent.clone()])
            .await
            .unwrap();

        let recorder = SignalRecorder::start(Crm::new(store.clone()));
        let fresh: Vec<CallSignal> = (0..3).map(|_| signal(now)).collect();
        for s in &fresh {
            recorder.record(s.clone());
        }
        let since = now - chrono::Duration::days(30);
        let mut stored = Vec::new();
        for _ in 0..100 {
            stored = store.list_call_signals(None, since, 10).await.unwrap();
            if stored.len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut expected = vec![recent];
        expected.extend(fresh);
        expected.sort_by_key(|s| (s.at, s.id));
        assert_eq!(
            stored, expected,
            "the 8-day-old signal is gone, the rest kept"
        );
    }
}
