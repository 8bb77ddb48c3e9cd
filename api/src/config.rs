//! Configuration: environment variables, and the same as flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
pub use crm_indexer::startup::{LogFormat, SharedConfig};

use crate::auth::client_addr::Cidr;

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
    /// Sales analytics: recount the daily rollups from the store.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// Export every customer or every engagement to a file (or standard
    /// output), read from the configured store a page at a time, with a
    /// progress bar on standard error.
    Export {
        /// `customers` or `engagements`.
        #[arg(long, value_parser = ["customers", "engagements"])]
        kind: String,
        /// `ndjson` or `csv`.
        #[arg(long, default_value = "ndjson", value_parser = ["ndjson", "csv"])]
        format: String,
        /// The file to write (created readable by its owner only); standard
        /// output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only customers changed at or after this time (RFC 3339).
        #[arg(long)]
        updated_since: Option<String>,
        /// Engagements only: one channel.
        #[arg(long)]
        channel: Option<String>,
        /// Engagements only: `occurred_at` at or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Engagements only: `occurred_at` before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Resume after the row with this `cursor`.
        #[arg(long)]
        after: Option<String>,
    },
    /// Import customers or engagements from a CSV or NDJSON file into the
    /// configured store, through the same parsing and identity linking as
    /// live traffic; prints the summary as JSON, and the first rejected
    /// rows on standard error.
    Import {
        /// The file (`.csv`, or `.ndjson` / `.jsonl`).
        file: PathBuf,
        /// `customers` or `engagements`.
        #[arg(long, value_parser = ["customers", "engagements"])]
        kind: String,
        /// `csv` or `ndjson`; by default from the file's extension.
        #[arg(long, value_parser = ["ndjson", "csv"])]
        format: Option<String>,
        /// Column names to fields, as JSON: `{"Mobile": "phones", "E-mail": "emails"}`.
        #[arg(long)]
        mapping: Option<String>,
        /// ISO country for this file's numbers written without `+`
        /// (default: CRM_DEFAULT_REGION).
        #[arg(long)]
        region: Option<String>,
        /// Report what would happen, and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Go on with an import of this file that stopped before its end
        /// (its id, as the command printed it): from its last committed row.
        #[arg(long, value_name = "IMPORT_ID")]
        resume: Option<String>,
    },
    /// Find and mend what half-applied merges of older versions left
    /// (merged_into cycles, merges without a record, leftovers); print what
    /// was done. crm-api also does this in the background at every start.
    Repair,
}

#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// Count every customer and engagement in the store again (days in
    /// CRM_TIMEZONE) and replace the rollups with the result; the consumer
    /// goes on from the event log's head as it was when the count began.
    /// Run it while nothing is written (engagements written meanwhile may
    /// count twice on MongoDB; run `verify` after). Prints a line per 500
    /// customers.
    Rebuild,
    /// Count again and compare with the rollups: print each figure that
    /// differs; exit 1 when there is any.
    Verify,
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
    // The store, Redis and logging, read as `crm-indexer` reads them (also
    // reachable as fields of `Config`: `config.redis_url`).
    #[command(flatten)]
    pub shared: SharedConfig,
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
    /// Phones and emails that never link customers, comma-separated (any
    /// format; numbers without `+` use CRM_DEFAULT_REGION).
    #[arg(long, env = "CRM_LINK_BLOCKED", value_delimiter = ',', global = true)]
    pub link_blocked: Vec<String>,
    /// Email local parts that name a role, not a person, comma-separated
    /// (replaces the default list: test, noreply, info, admin, support, sales, ...).
    #[arg(
        long,
        env = "CRM_LINK_ROLE_EMAILS",
        value_delimiter = ',',
        global = true
    )]
    pub link_role_emails: Option<Vec<String>>,
    /// Email domains that never link (placeholders), comma-separated.
    #[arg(
        long,
        env = "CRM_LINK_BLOCKED_DOMAINS",
        value_delimiter = ',',
        global = true
    )]
    pub link_blocked_domains: Vec<String>,
    /// Numbers with fewer significant digits never link.
    #[arg(
        long,
        env = "CRM_LINK_MIN_PHONE_DIGITS",
        default_value_t = 6,
        global = true
    )]
    pub link_min_phone_digits: usize,
    /// Most phones a customer may have after an automatic merge; a merge
    /// beyond it becomes a suggestion.
    #[arg(long, env = "CRM_LINK_MAX_PHONES", default_value_t = 10, global = true)]
    pub link_max_phones: usize,
    /// Most emails a customer may have after an automatic merge.
    #[arg(long, env = "CRM_LINK_MAX_EMAILS", default_value_t = 10, global = true)]
    pub link_max_emails: usize,
    /// Proxies (addresses or networks, comma-separated: `10.0.0.0/8,::1`)
    /// whose `X-Forwarded-For` is believed. Unset: the client is the
    /// socket's peer and the header is ignored.
    #[arg(
        long,
        env = "CRM_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<Cidr>,
    /// Where `/metrics` (Prometheus) is served: an address of its own,
    /// loopback by default, or `off`.
    #[arg(
        long,
        env = "CRM_METRICS_LISTEN",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_listen: MetricsListen,
    /// When set, `/metrics` is also served on the API's port, to requests
    /// that send `Authorization: Bearer <this token>`.
    #[arg(long, env = "CRM_METRICS_TOKEN", global = true, hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Origins of front ends served elsewhere that may call the API from a
    /// browser (comma-separated: `https://crm.example.com,http://localhost:3000`).
    /// Unset: none (the console at `/` is the API's own origin).
    #[arg(long, env = "CRM_CORS_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_origins: Vec<crate::cors::CorsOrigin>,
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookConfig,
    #[command(flatten)]
    pub analytics: crate::analytics::AnalyticsConfig,
}

/// `CRM_METRICS_LISTEN`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") {
            return Ok(MetricsListen(None));
        }
        raw.parse()
            .map(|a| MetricsListen(Some(a)))
            .map_err(|_| format!("{raw:?} is neither an address (127.0.0.1:9464) nor `off`"))
    }
}

/// The shared fields read and written as `Config`'s own
/// (`config.redis_url`, `config.store()`).
impl std::ops::Deref for Config {
    type Target = SharedConfig;

    fn deref(&self) -> &SharedConfig {
        &self.shared
    }
}

impl std::ops::DerefMut for Config {
    fn deref_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }
}

impl Config {
    /// Defaults for tests and tools: embedded store in `data_dir`, port 0
    /// (for the API and for `/metrics`).
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared: SharedConfig::for_data_dir(data_dir),
            index_worker: true,
            jwt_secret: None,
            admin_email: None,
            admin_password: None,
            default_region: None,
            access_token_ttl_s: 900,
            refresh_token_ttl_s: 30 * 24 * 3600,
            link_blocked: Vec::new(),
            link_role_emails: None,
            link_blocked_domains: Vec::new(),
            link_min_phone_digits: 6,
            link_max_phones: 10,
            link_max_emails: 10,
            trusted_proxies: Vec::new(),
            // Tests run many applications at once: each its own free port.
            metrics_listen: MetricsListen(Some(SocketAddr::from(([127, 0, 0, 1], 0)))),
            metrics_token: None,
            cors_origins: Vec::new(),
            webhooks: crate::webhooks::WebhookConfig::default(),
            analytics: crate::analytics::AnalyticsConfig::default(),
        }
    }
}

impl Config {
    /// The linking safeguards, with blocked values normalised.
    pub fn link_policy(
        &self,
        region: Option<crm_models::Region>,
    ) -> anyhow::Result<crm_models::linking::LinkPolicy> {
        use crm_models::{Email, Identifier, PhoneNumber};
        let mut policy = crm_models::linking::LinkPolicy {
            min_phone_digits: self.link_min_phone_digits,
            max_phones: self.link_max_phones,
            max_emails: self.link_max_emails,
            ..Default::default()
        };
        if let Some(locals) = &self.link_role_emails {
            policy.role_locals = locals
                .iter()
                .map(|l| l.trim().to_lowercase())
                .filter(|l| !l.is_empty())
                .collect();
        }
        policy.placeholder_domains.extend(
            self.link_blocked_domains
                .iter()
                .map(|d| d.trim().to_lowercase())
                .filter(|d| !d.is_empty()),
        );
        for raw in self
            .link_blocked
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
        {
            let identifier = if raw.contains('@') {
                Identifier::Email(
                    Email::parse(raw)
                        .map_err(|e| anyhow::anyhow!("CRM_LINK_BLOCKED: {raw:?}: {e}"))?,
                )
            } else {
                Identifier::Phone(
                    PhoneNumber::parse(raw, region)
                        .map_err(|e| anyhow::anyhow!("CRM_LINK_BLOCKED: {raw:?}: {e}"))?,
                )
            };
            policy.blocked.insert(identifier.key());
        }
        Ok(policy)
    }
}
