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
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use crm_models::events::EventLog;
use crm_models::store::{Store, StoreConfig, StoreError};
use crm_models::CustomerId;
use tracing_subscriber::{fmt, EnvFilter};

use crate::projector::{Projector, VerifyReport};
use crate::stream::{RedisEventStream, RedisStreamConfig};
use crate::worker::{default_consumer_name, run_worker, WorkerConfig};
use crate::{RedisIndex, SearchIndex};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Shared configuration; the names match `crm-api`'s.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// MongoDB connection string; unset means the embedded store in the data
    /// directory.
    #[arg(long, env = "CRM_MONGODB_URI", global = true, hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// MongoDB database name.
    #[arg(
        long,
        env = "CRM_MONGODB_DATABASE",
        default_value = "crm",
        global = true
    )]
    pub mongodb_database: String,
    /// Directory of the embedded store (used when no MongoDB URI is set). It
    /// can only be opened while crm-api is not running on it (redb locks the
    /// file).
    #[arg(long, env = "CRM_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// Redis URL of the event stream and the search index (required).
    #[arg(long, env = "CRM_REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "CRM_REDIS_PREFIX", default_value = "crm:", global = true)]
    pub redis_prefix: String,
    /// Log level or filter (`info`, `crm_indexer=debug,info`).
    #[arg(long, env = "CRM_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format (logs go to stderr).
    #[arg(
        long,
        env = "CRM_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

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

/// Installs the global subscriber on stderr (stdout carries the reports).
/// `CRM_LOG` is an `EnvFilter` directive.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
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

fn redis_url(config: &Config) -> anyhow::Result<&str> {
    config
        .redis_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .context("no redis url: set CRM_REDIS_URL or --redis-url (the index lives in redis)")
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = StoreConfig {
        mongodb_uri: config.mongodb_uri.clone().filter(|u| !u.trim().is_empty()),
        mongodb_database: config.mongodb_database.clone(),
        data_dir: config.data_dir.clone(),
    };
    let on_mongodb = store.mongodb_uri.is_some();
    crm_models::store::open(&store).await.map_err(|e| {
        if on_mongodb {
            anyhow::Error::new(e).context(format!(
                "cannot open the mongodb store (database {})",
                config.mongodb_database
            ))
        } else {
            embedded_error(&config.data_dir, e)
        }
    })
}

fn embedded_error(dir: &Path, e: StoreError) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot open the embedded store in {}: {e} (the embedded store can only be opened \
         while crm-api is not running on it, since redb locks the file; stop crm-api, or \
         set CRM_MONGODB_URI when crm-api runs on mongodb)",
        dir.display()
    )
}

async fn open_index(config: &Config) -> anyhow::Result<Arc<dyn SearchIndex>> {
    let index = RedisIndex::connect(redis_url(config)?, &config.redis_prefix)
        .await
        .context("cannot connect to the redis index")?;
    index
        .ping()
        .await
        .context("the redis index does not answer")?;
    Ok(Arc::new(index))
}

async fn projector(config: &Config) -> anyhow::Result<Projector> {
    let store = open_store(config).await?;
    let index = open_index(config).await?;
    Ok(Projector::new(store, index))
}

async fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let projector = Projector::new(store.clone(), open_index(config).await?);
    let stream = RedisEventStream::connect(
        redis_url(config)?,
        RedisStreamConfig {
            prefix: config.redis_prefix.clone(),
            ..RedisStreamConfig::default()
        },
    )
    .await
    .context("cannot connect to the redis event stream")?;
    let stream = Arc::new(stream);
    // The relay moves what writers committed to the store's event log onto
    // the stream; with several relays (crm-api instances) a lease in the
    // store lets one publish at a time.
    let relay =
        crm_models::relay::Relay::new(store, stream.clone(), Arc::new(tokio::sync::Notify::new()));
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

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received; shutting down"),
        () = terminate => tracing::info!("sigterm received; shutting down"),
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
