//! Sales analytics: the consumer that keeps the daily rollups (see
//! [`crm_models::analytics`] for what is counted and why each event counts
//! once) and its settings (`CRM_TIMEZONE`, `CRM_ANALYTICS_WORKER`). The
//! routes are in [`crate::routes::analytics`]; live boards on the stream
//! in [`boards`].
//!
//! The consumer reads the store's event log in feed order from its own
//! cursor (kept in the store), folds each page into increments and commits
//! them with the cursor in one transaction. Several instances may run it:
//! the one whose cursor is stale is refused and reads the cursor again.
//! It wakes on each event the relay publishes, so the figures follow an
//! engagement within a moment.

pub mod boards;

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use crm_models::analytics::{Consumer, Step, Zone};
use crm_models::store::Store;
use tokio::sync::watch;

/// Events read per step.
const PAGE: usize = 500;
/// How often the consumer looks for new events when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// After a store error, the consumer pauses this long.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// Analytics settings.
#[derive(Debug, Clone, Args)]
pub struct AnalyticsConfig {
    /// The time zone whose calendar days the figures are counted in (an
    /// IANA name: `Asia/Singapore`, `Europe/Berlin`). Changing it applies
    /// to what is counted from then on (`crm-api analytics rebuild`
    /// recounts).
    #[arg(
        long = "timezone",
        env = "CRM_TIMEZONE",
        default_value = "UTC",
        global = true
    )]
    pub timezone: Zone,
    /// Run the analytics consumer in this process (several processes
    /// share the work).
    #[arg(long = "analytics-worker", env = "CRM_ANALYTICS_WORKER", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub worker: bool,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            timezone: Zone::default(),
            worker: true,
        }
    }
}

/// Counts the event log into the rollups until `stop` turns true.
pub async fn run_consumer(
    store: Arc<dyn Store>,
    consumer: Arc<Consumer>,
    live: crm_models::live::LiveHub,
    mut stop: watch::Receiver<bool>,
) {
    let mut heard = live.subscribe();
    let mut cursor = None;
    let mut loaded = false;
    loop {
        if *stop.borrow() {
            return;
        }
        if !loaded {
            match store.analytics_cursor().await {
                Ok(c) => {
                    cursor = c;
                    loaded = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "analytics: cannot read the consumer's cursor");
                    pause(&mut stop, STORE_BACKOFF).await;
                    continue;
                }
            }
        }
        match consumer.step(store.as_ref(), cursor, PAGE).await {
            Ok(Step::Moved { to, full, .. }) => {
                cursor = Some(to);
                if !full {
                    news(&mut stop, &mut heard).await;
                }
            }
            Ok(Step::Idle) => news(&mut stop, &mut heard).await,
            Ok(Step::Lost) => loaded = false,
            Ok(Step::Expired) => {
                tracing::warn!(
                    "analytics: the consumer's cursor is no longer in the event log; counting \
                     on from the oldest event kept (events pruned meanwhile are not counted)"
                );
                match consumer.restart(store.as_ref(), cursor, PAGE).await {
                    Ok(Step::Moved { to, .. }) => cursor = Some(to),
                    Ok(_) => loaded = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "analytics: cannot count from the oldest event");
                        pause(&mut stop, STORE_BACKOFF).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "analytics: counting failed; trying again");
                pause(&mut stop, STORE_BACKOFF).await;
            }
        }
    }
}

/// Waits until the relay published something (or [`POLL`] passed, or `stop`).
async fn news(
    stop: &mut watch::Receiver<bool>,
    heard: &mut tokio::sync::broadcast::Receiver<Arc<crm_models::event::EventEnvelope>>,
) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = tokio::time::sleep(POLL) => {}
        _ = heard.recv() => {}
    }
    while heard.try_recv().is_ok() {}
}

async fn pause(stop: &mut watch::Receiver<bool>, how_long: Duration) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = tokio::time::sleep(how_long) => {}
    }
}
