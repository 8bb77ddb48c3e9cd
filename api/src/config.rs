//! Configuration: environment variables, and the same as flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "crm-api",
    version,
    about = "Customer-engagement CRM: the HTTP API"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI contract (YAML) and exit.
    Openapi,
    /// Manage staff users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a staff user. The password is read from CRM_NEW_USER_PASSWORD or,
    /// when unset, from the first line of standard input.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["admin", "agent"])]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "CRM_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// Directory of the embedded store (used when no MongoDB URI is set).
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
    /// Redis URL for the event stream and search index; unset means in-process.
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
    /// Run an index worker in this process (it shares the work with any
    /// `crm-indexer run` through the consumer group).
    #[arg(long, env = "CRM_INDEX_WORKER", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub index_worker: bool,
    /// HS256 secret for access tokens, at least 32 bytes. In embedded mode a
    /// random one is created once and kept in the data directory.
    #[arg(long, env = "CRM_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Email of the first admin, created when there is no user.
    #[arg(long, env = "CRM_ADMIN_EMAIL", global = true)]
    pub admin_email: Option<String>,
    /// Password of the first admin.
    #[arg(
        long,
        env = "CRM_ADMIN_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub admin_password: Option<String>,
    /// ISO country for phone numbers typed without `+` (e.g. SG).
    #[arg(long, env = "CRM_DEFAULT_REGION", global = true)]
    pub default_region: Option<String>,
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
    /// Access token lifetime in seconds.
    #[arg(
        long,
        env = "CRM_ACCESS_TOKEN_TTL",
        default_value_t = 900,
        global = true
    )]
    pub access_token_ttl_s: u64,
    /// Refresh token lifetime in seconds.
    #[arg(long, env = "CRM_REFRESH_TOKEN_TTL", default_value_t = 30 * 24 * 3600, global = true)]
    pub refresh_token_ttl_s: u64,
}

impl Config {
    /// Defaults for tests and tools: embedded store in `data_dir`, port 0.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            mongodb_uri: None,
            mongodb_database: "crm".into(),
            redis_url: None,
            redis_prefix: "crm:".into(),
            redis_stream_max_len: 1_000_000,
            index_worker: true,
            jwt_secret: None,
            admin_email: None,
            admin_password: None,
            default_region: None,
            log: "info".into(),
            log_format: LogFormat::Text,
            access_token_ttl_s: 900,
            refresh_token_ttl_s: 30 * 24 * 3600,
        }
    }
}
