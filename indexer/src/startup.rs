//! Start-up shared by `crm-api` and `crm-indexer`: the configuration both
//! read (the same environment variables and flags, with the same defaults),
//! logging, the shutdown signal, and opening the store, the event stream and
//! the index.
//!
//! Each binary flattens [`SharedConfig`] into its own command line
//! (`#[command(flatten)]`) and adds what only it needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use crm_models::events::{EventLog, EventStream, MemoryEventStream};
use crm_models::store::{Store, StoreConfig, StoreError};
use tracing_subscriber::{fmt, EnvFilter};

use crate::stream::{RedisEventStream, RedisStreamConfig};
use crate::{MemoryIndex, RedisIndex, SearchIndex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    /// For commands whose reports go to stdout.
    Stderr,
}

/// The configuration both binaries read; every flag is also an environment
/// variable, and is global (it may follow the subcommand).
#[derive(Debug, Clone, Args)]
pub struct SharedConfig {
    /// Directory of the embedded store (used when no MongoDB URI is set).
    /// One process at a time may open it (redb locks the file).
    #[arg(long, env = "CRM_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// MongoDB connection string; unset means the embedded store.
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
    /// Redis URL for the event stream and search index; unset means
    /// in-process (crm-api) or an error (crm-indexer, whose index lives in
    /// Redis).
    #[arg(long, env = "CRM_REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (stream and index).
    #[arg(long, env = "CRM_REDIS_PREFIX", default_value = "crm:", global = true)]
    pub redis_prefix: String,
    /// Approximate length the Redis event stream is trimmed to.
    #[arg(
        long,
        env = "CRM_REDIS_STREAM_MAXLEN",
        default_value_t = 1_000_000,
        global = true
    )]
    pub redis_stream_max_len: usize,
    /// Days relayed events are kept in the store's event log.
    #[arg(
        long,
        env = "CRM_EVENT_RETENTION_DAYS",
        default_value_t = 30,
        global = true
    )]
    pub event_retention_days: u32,
    /// Log level or filter (`info`, `crm_api=debug,info`).
    #[arg(long, env = "CRM_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(
        long,
        env = "CRM_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl SharedConfig {
    /// The defaults, with the embedded store in `data_dir`.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        SharedConfig {
            data_dir,
            mongodb_uri: None,
            mongodb_database: "crm".into(),
            redis_url: None,
            redis_prefix: "crm:".into(),
            redis_stream_max_len: 1_000_000,
            event_retention_days: 30,
            log: "info".into(),
            log_format: LogFormat::Text,
        }
    }

    /// Which store to open: MongoDB when a URI is set (and not blank),
    /// otherwise the embedded store in the data directory.
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            mongodb_uri: self.mongodb_uri.clone().filter(|u| !u.trim().is_empty()),
            mongodb_database: self.mongodb_database.clone(),
            data_dir: self.data_dir.clone(),
        }
    }

    /// The Redis URL, when one is set (and not blank).
    pub fn redis(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|u| !u.trim().is_empty())
    }

    /// How long relayed events stay in the store's event log.
    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.event_retention_days) * 86_400)
    }

    fn stream_config(&self) -> RedisStreamConfig {
        RedisStreamConfig {
            prefix: self.redis_prefix.clone(),
            max_len: self.redis_stream_max_len,
        }
    }
}

/// Installs the global subscriber. `CRM_LOG` is an `EnvFilter` directive
/// (an invalid one means `info`). Safe to call more than once (later calls
/// do nothing).
pub fn init_tracing(filter: &str, format: LogFormat, output: LogOutput) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = match (format, output) {
        (LogFormat::Json, LogOutput::Stdout) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, LogOutput::Stdout) => builder.try_init(),
        (LogFormat::Json, LogOutput::Stderr) => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .try_init(),
        (LogFormat::Text, LogOutput::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
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

/// Opens MongoDB when a URI is configured, otherwise the embedded store; an
/// error says which, and why the embedded store may be locked.
pub async fn open_store(config: &SharedConfig) -> anyhow::Result<Arc<dyn Store>> {
    let store = config.store();
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

/// The Redis URL, or an error naming the setting.
pub fn require_redis(config: &SharedConfig) -> anyhow::Result<&str> {
    config
        .redis()
        .context("no redis url: set CRM_REDIS_URL or --redis-url (the index lives in redis)")
}

/// The Redis index, answering.
pub async fn open_redis_index(url: &str, config: &SharedConfig) -> anyhow::Result<RedisIndex> {
    let index = RedisIndex::connect(url, &config.redis_prefix)
        .await
        .context("cannot reach Redis (CRM_REDIS_URL) for the index")?;
    index
        .ping()
        .await
        .context("the Redis index (CRM_REDIS_URL) does not answer")?;
    Ok(index)
}

/// The Redis event stream (trimmed to `CRM_REDIS_STREAM_MAXLEN`).
pub async fn open_redis_stream(
    url: &str,
    config: &SharedConfig,
) -> anyhow::Result<RedisEventStream> {
    RedisEventStream::connect(url, config.stream_config())
        .await
        .context("cannot reach Redis (CRM_REDIS_URL) for the event stream")
}

/// The event stream (where the relay publishes), the log consumers read
/// (the same stream) and the index.
pub struct EventsAndIndex {
    pub events: Arc<dyn EventStream>,
    pub log: Arc<dyn EventLog>,
    pub index: Arc<dyn SearchIndex>,
    /// The same index when it is the in-process one (it has a snapshot).
    pub memory: Option<Arc<MemoryIndex>>,
}

impl EventsAndIndex {
    /// Whether the index lives in this process (and starts empty).
    pub fn in_process(&self) -> bool {
        self.memory.is_some()
    }
}

/// The Redis stream and index when `CRM_REDIS_URL` is set; otherwise an
/// in-process log and index.
pub async fn open_events_and_index(config: &SharedConfig) -> anyhow::Result<EventsAndIndex> {
    Ok(match config.redis() {
        Some(url) => {
            let stream = Arc::new(open_redis_stream(url, config).await?);
            let index = open_redis_index(url, config).await?;
            EventsAndIndex {
                events: stream.clone(),
                log: stream,
                index: Arc::new(index),
                memory: None,
            }
        }
        None => {
            let log = Arc::new(MemoryEventStream::default());
            let memory = Arc::new(MemoryIndex::new());
            EventsAndIndex {
                events: log.clone(),
                log,
                index: memory.clone(),
                memory: Some(memory),
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: SharedConfig,
    }

    #[test]
    fn the_defaults_are_those_of_for_data_dir() {
        let parsed = Cli::try_parse_from(["crm"]).unwrap().config;
        let defaults = SharedConfig::for_data_dir("./data".into());
        assert_eq!(parsed.data_dir, defaults.data_dir);
        assert_eq!(parsed.mongodb_uri, None);
        assert_eq!(parsed.mongodb_database, defaults.mongodb_database);
        assert_eq!(parsed.redis_url, None);
        assert_eq!(parsed.redis_prefix, defaults.redis_prefix);
        assert_eq!(parsed.redis_stream_max_len, defaults.redis_stream_max_len);
        assert_eq!(parsed.event_retention_days, defaults.event_retention_days);
        assert_eq!(parsed.log, defaults.log);
        assert_eq!(parsed.log_format, defaults.log_format);
        assert_eq!(parsed.event_retention(), Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn blank_urls_mean_unset() {
        let parsed = Cli::try_parse_from([
            "crm",
            "--mongodb-uri",
            " ",
            "--redis-url",
            "",
            "--redis-stream-max-len",
            "500",
            "--log-format",
            "json",
        ])
        .unwrap()
        .config;
        assert_eq!(parsed.store().mongodb_uri, None);
        assert_eq!(parsed.redis(), None);
        assert!(require_redis(&parsed).is_err());
        assert_eq!(parsed.redis_stream_max_len, 500);
        assert_eq!(parsed.log_format, LogFormat::Json);
    }
}
