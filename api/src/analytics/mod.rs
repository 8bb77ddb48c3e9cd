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
    /// to what is counted from then on; `crm-api analytics rebuild`
    /// recounts everything in the new zone.
    #[arg(
        long = "timezone",
        env = "CRM_TIMEZONE",
        default_value = "UTC",
        global = true
    )]
    pub timezone: Zone,
    /// Run the analytics consumer in this process (several processes
    /// share the work).
    #[arg(id = "analytics_worker", long = "analytics-worker", env = "CRM_ANALYTICS_WORKER", default_value_t = true, action = clap::ArgAction::Set, global = true)]
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

/// `crm-api analytics rebuild`: counts the store again and replaces the
/// rollups with the result.
pub async fn rebuild(store: Arc<dyn Store>, zone: Zone) -> anyhow::Result<()> {
    let recount = recount(store.as_ref(), zone).await?;
    store
        .replace_analytics(recount.head, &recount.batch)
        .await?;
    println!(
        "rebuilt the analytics of {} customers and {} engagements ({} daily rows, time zone {zone})",
        recount.customers,
        recount.engagements,
        recount.rows().len()
    );
    Ok(())
}

/// `crm-api analytics verify`: counts the store again and prints every
/// figure the rollups hold otherwise; true when there is none.
pub async fn verify(store: Arc<dyn Store>, zone: Zone) -> anyhow::Result<bool> {
    let recount = recount(store.as_ref(), zone).await?;
    let differences = crm_models::analytics::verify(store.as_ref(), &recount).await?;
    for d in &differences {
        println!("{d}");
    }
    println!(
        "{} differences over {} customers and {} engagements (time zone {zone})",
        differences.len(),
        recount.customers,
        recount.engagements
    );
    Ok(differences.is_empty())
}

async fn recount(store: &dyn Store, zone: Zone) -> anyhow::Result<crm_models::analytics::Recount> {
    let consumer = Consumer::new(zone);
    let mut last = 0;
    let recount = consumer
        .recount(store, &mut |customers| {
            if customers >= last + 500 {
                last = customers;
                eprintln!("counted {customers} customers");
            }
        })
        .await?;
    Ok(recount)
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::config::Cli;

    #[test]
    fn the_command_line_is_well_formed_and_reads_the_zone() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "crm-api",
            "--timezone",
            "Asia/Singapore",
            "--analytics-worker",
            "false",
        ])
        .map_err(|e| e.to_string());
        let cli = match cli {
            Ok(cli) => cli,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cli.config.analytics.timezone.name(), "Asia/Singapore");
        assert!(!cli.config.analytics.worker);
        assert!(Cli::try_parse_from(["crm-api", "--timezone", "Mars/Base"]).is_err());
    }
}
