//! The `crm-indexer` command line: configuration (environment variables, and
//! the same as flags, named as in `crm-api`) and the three commands.
//!
//! - `run`: consumes the event stream in the `indexer` consumer group and
//!   applies it to the index until Ctrl-C or SIGTERM (the batch in hand is
//!   finished and acknowledged first). Several processes share the work.
//! - `rebuild`: writes a new index generation from the store and switches to
//!   it; interrupted, it leaves the live index as it was.
//! - `verify`: compares the index with the store.
//!
//! Exit status: 0 on success (verify: the index matches the store), 1 when
//! verify found differences, 2 on errors, 130 when a rebuild was interrupted.

use std::fmt::Display;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crm_models::events::EventLog;
use crm_models::CustomerId;

use crate::projector::{Projector, VerifyReport};
pub use crate::startup::{init_tracing, shutdown_signal, LogFormat, SharedConfig};
use crate::startup::{open_redis_index, open_redis_stream, open_store, require_redis};
use crate::worker::{default_consumer_name, run_worker, WorkerConfig};
use crate::SearchIndex;

/// Exit status when verify found differences.
pub const EXIT_DIFFERENCES: u8 = 1;
/// Exit status on errors.
pub const EXIT_ERROR: u8 = 2;
/// Exit status when a rebuild was interrupted (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Ids listed per kind of difference before verify summarises the rest.
const VERIFY_LIST_LIMIT: usize = 50;

const AFTER_HELP: &str = "\
Store: MongoDB when CRM_MONGODB_URI is set, otherwise the embedded store in \
CRM_DATA_DIR. The embedded store can only be opened while crm-api is NOT \
running on the same data directory: redb locks the file for one process.

Exit status: 0 success (verify: index matches the store), 1 verify found \
differences, 2 error, 130 rebuild interrupted (the live index is unchanged).";

#[derive(Debug, Parser)]
#[command(
    name = "crm-indexer",
    version,
    about = "Keeps the CRM search index in step with the store",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the event stream and apply it to the index, until Ctrl-C or
    /// SIGTERM (the current batch is finished first).
    Run(RunArgs),
    /// Rebuild the whole index from the store beside the live one, then
    /// switch to it. Ctrl-C leaves the live index untouched.
    Rebuild,
    /// Compare the index with the store; exit 1 on any difference.
    Verify,
    /// Find and mend what half-applied merges of older versions left in the
    /// store (merged_into cycles, merges without a record, leftovers).
    Repair,
}

/// The configuration: [`SharedConfig`], named as in `crm-api`.
pub type Config = SharedConfig;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This worker's name in the consumer group; unique among live workers
    /// (default: `<host>-<pid>`).
    #[arg(long, env = "CRM_INDEXER_CONSUMER")]
    pub consumer: Option<String>,
    /// How long an entry must have been pending (its consumer presumably
    /// dead) before this worker claims it: `30s`, `500ms`, `2m`.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub min_idle: Duration,
    /// How often to look for entries other consumers left pending.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub claim_interval: Duration,
    /// Events read per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
}

/// `500ms`, `1s`, `2m`, or a plain number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {raw:?}: expected e.g. 500ms, 1s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {raw:?}: {e}"))
}

/// Runs the command; the exit status follows the module doc.
pub async fn execute(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run(&cli.config, args).await,
        Command::Repair => repair(&cli.config).await,
        Command::Rebuild => rebuild(&cli.config).await,
        Command::Verify => verify(&cli.config).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn open_index(config: &Config) -> anyhow::Result<Arc<dyn SearchIndex>> {
    let url = require_redis(config)?;
    Ok(Arc::new(open_redis_index(url, config).await?))
}

async fn projector(config: &Config) -> anyhow::Result<Projector> {
    let store = open_store(config).await?;
    let index = open_index(config).await?;
    Ok(Projector::new(store, index))
}

async fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let projector = Projector::new(store.clone(), open_index(config).await?);
    let stream = open_redis_stream(require_redis(config)?, config).await?;
    let stream = Arc::new(stream);
    // The relay moves what writers committed to the store's event log onto
    // the stream; with several relays (crm-api instances) a lease in the
    // store lets one publish at a time.
    let relay =
        crm_models::relay::Relay::new(store, stream.clone(), Arc::new(tokio::sync::Notify::new()))
            .with_retention(config.event_retention());
    let relaying = tokio::spawn(relay.run(shutdown_signal()));
    let log: Arc<dyn EventLog> = stream;
    let mut worker = WorkerConfig::new(args.consumer.unwrap_or_else(default_consumer_name));
    worker.min_idle = args.min_idle;
    worker.claim_interval = args.claim_interval;
    worker.batch_size = args.batch_size as usize;
    run_worker(log, Arc::new(projector), worker, shutdown_signal()).await;
    let _ = relaying.await;
    Ok(ExitCode::SUCCESS)
}

async fn repair(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let report = crm_models::service::Crm::new(store)
        .repair()
        .await
        .context("repair failed")?;
    println!(
        "customers: {}\ncycles broken: {}\ndangling: {}\nleftovers moved: {}\nrecords added: {}",
        report.customers,
        report.cycles_broken.len(),
        report.dangling.len(),
        report.leftovers_moved.len(),
        report.records_added.len()
    );
    for id in &report.cycles_broken {
        println!("cycle broken at {id}");
    }
    for id in &report.records_added {
        println!("record added {id}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rebuild(config: &Config) -> anyhow::Result<ExitCode> {
    let projector = projector(config).await?;
    let started = Instant::now();
    let progress = move |customers: u64| {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "rebuild: {customers} customers read ({:.0}/s)",
            customers as f64 / secs.max(1e-3)
        );
    };
    // Dropping the rebuild future is how it is interrupted: the SearchIndex
    // contract leaves the live generation as it was.
    tokio::select! {
        report = projector.rebuild(progress) => {
            let report = report.context("rebuild failed; the live index is unchanged")?;
            println!(
                "rebuilt: generation {}, {} customers, {:.1} s",
                report.generation,
                report.customers,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        () = shutdown_signal() => {
            eprintln!(
                "rebuild interrupted; the live index is unchanged (the next rebuild deletes \
                 the half-written generation)"
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

async fn verify(config: &Config) -> anyhow::Result<ExitCode> {
    let projector = projector(config).await?;
    let report = projector.verify().await.context("verify failed")?;
    print!("{}", render_verify(&report));
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENCES)
    })
}

/// The verify report as printed: counts, then each differing id with its kind.
pub fn render_verify(report: &VerifyReport) -> String {
    let mut out = format!(
        "customers expected: {}\nmissing: {}\nstale: {}\nextra: {}\n",
        report.expected,
        report.missing.len(),
        report.stale.len(),
        report.extra.len()
    );
    list_ids(&mut out, "missing", &report.missing);
    list_ids(&mut out, "stale", &report.stale);
    list_ids(&mut out, "extra", &report.extra);
    out.push_str(if report.is_clean() {
        "the index matches the store\n"
    } else {
        "the index differs from the store: run `crm-indexer rebuild`\n"
    });
    out
}

fn list_ids(out: &mut String, kind: impl Display, ids: &[CustomerId]) {
    for id in ids.iter().take(VERIFY_LIST_LIMIT) {
        out.push_str(&format!("{kind} {id}\n"));
    }
    if ids.len() > VERIFY_LIST_LIMIT {
        out.push_str(&format!(
            "{kind} ... and {} more\n",
            ids.len() - VERIFY_LIST_LIMIT
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn verify_lists_at_most_fifty_ids_per_kind() {
        let report = VerifyReport {
            expected: 60,
            missing: (0..53).map(|_| CustomerId::new()).collect(),
            stale: vec![CustomerId::new()],
            extra: Vec::new(),
        };
        let text = render_verify(&report);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("missing ")).count(),
            51
        );
        assert!(text.contains("missing ... and 3 more\n"));
        assert!(text.contains(&format!("stale {}\n", report.stale[0])));
        assert!(text.contains("customers expected: 60\n"));
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
