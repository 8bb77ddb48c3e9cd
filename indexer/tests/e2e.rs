//! End to end: the real `crm-indexer` binary against a MongoDB-compatible
//! server and Redis, fed by the domain service exactly as crm-api feeds it.
//!
//! Hermetic: `secantusd-py` and `redis-server` are started by the test
//! process (see `support/`), each test works in its own database and key
//! prefix, and every child process is killed when a test ends, also on
//! failure (their logs are printed then).

// A panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support {
    #[path = "../../../models/tests/support/mongo_server.rs"]
    pub mod mongo_server;
    pub mod redis_cluster;
    pub mod redis_server;
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_indexer::redis_link::{Link, LinkConfig, Target};
use crm_indexer::{RedisIndex, SearchIndex};
use crm_models::service::{Crm, CustomerInput, EngagementTarget, NewEngagement};
use crm_models::store::mongo::MongoStore;
use crm_models::store::{CustomerCursor, Store};
use crm_models::{
    CallStatus, ChannelCounts, Customer, CustomerId, Direction, EngagementDetail, Identifier,
    PhoneNumber, Source,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_crm-indexer");

/// The engagements the main test writes, in batches of `BATCH`.
const ENGAGEMENTS: usize = 10_000;
const BATCH: usize = 100;
/// Distinct phone numbers the engagements name (one customer each).
const PHONES: usize = 500;
/// Of those, customers created up front; the rest are created by phone.
const PRECREATED: usize = 200;

/// Where one test's data lives.
struct Backends {
    mongodb_uri: String,
    database: String,
    redis_url: String,
    prefix: String,
    store: Arc<MongoStore>,
    /// Deletes the test's keys when dropped.
    _keys: Box<dyn std::any::Any + Send + Sync>,
}

impl Backends {
    /// On one Redis, or on a Redis Cluster (three masters with a replica
    /// each) with `cluster`.
    async fn new(cluster: bool) -> Backends {
        let mongodb_uri = support::mongo_server::mongodb_uri();
        let database = format!("crm_e2e_{}", uuid::Uuid::new_v4().simple());
        let store = MongoStore::connect(&mongodb_uri, &database)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server at {mongodb_uri}: {e}"));
        let (redis_url, prefix, keys): (String, String, Box<dyn std::any::Any + Send + Sync>) =
            if cluster {
                let url = support::redis_cluster::url();
                let prefix = support::redis_cluster::unique_prefix();
                let keys = support::redis_cluster::DeleteOnDrop {
                    url: url.clone(),
                    prefix: prefix.clone(),
                };
                (url, prefix, Box::new(keys))
            } else {
                let url = support::redis_server::url();
                let prefix = support::redis_server::unique_prefix();
                let keys = support::redis_server::DeleteOnDrop {
                    url: url.clone(),
                    prefix: prefix.clone(),
                };
                (url, prefix, Box::new(keys))
            };
        Backends {
            _keys: keys,
            mongodb_uri,
            database,
            redis_url,
            prefix,
            store: Arc::new(store),
        }
    }

    /// The domain service as crm-api builds it on a Mongo store.
    /// Its events reach the Redis stream through the relay of the
    /// `crm-indexer run` processes.
    async fn crm(&self) -> Crm {
        Crm::new(self.store.clone())
    }

    async fn index(&self) -> RedisIndex {
        RedisIndex::connect(&self.redis_url, &self.prefix)
            .await
            .unwrap()
    }

    /// A connection to the Redis or the cluster.
    async fn redis(&self) -> Link {
        Target::parse(&self.redis_url)
            .unwrap()
            .connect(LinkConfig::default())
            .await
            .unwrap()
    }

    /// `crm-indexer <args>` configured for these backends, by environment.
    fn command(&self, data_dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("CRM_MONGODB_URI", &self.mongodb_uri)
            .env("CRM_MONGODB_DATABASE", &self.database)
            .env("CRM_REDIS_URL", &self.redis_url)
            .env("CRM_REDIS_PREFIX", &self.prefix)
            .env("CRM_DATA_DIR", data_dir)
            .env("CRM_LOG", "info")
            .env("CRM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    async fn drop_database(&self) {
        let _ = self.store.database().drop().await;
    }
}

/// The `crm-indexer` processes of a test. Dropping it kills them all; when
/// the test is failing, their logs are printed.
struct Indexers {
    dir: tempfile::TempDir,
    running: Vec<(String, Child)>,
    logs: Vec<PathBuf>,
}

impl Indexers {
    fn new() -> Indexers {
        Indexers {
            dir: tempfile::tempdir().unwrap(),
            running: Vec::new(),
            logs: Vec::new(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `crm-indexer run` as `consumer`, claiming after 1 s idle.
    fn start(&mut self, backends: &Backends, consumer: &str) {
        let log = self
            .dir
            .path()
            .join(format!("run-{}-{consumer}.log", self.logs.len()));
        let file = std::fs::File::create(&log).unwrap();
        let child = backends
            .command(
                &self.data_dir(),
                &[
                    "run",
                    "--consumer",
                    consumer,
                    "--min-idle",
                    "1s",
                    "--claim-interval",
                    "1s",
                ],
            )
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.logs.push(log);
        self.running.push((consumer.to_string(), child));
    }

    /// SIGKILLs the running process of `consumer`.
    fn kill(&mut self, consumer: &str) {
        let at = self
            .running
            .iter()
            .position(|(name, _)| name == consumer)
            .unwrap();
        let (_, mut child) = self.running.remove(at);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Every run log so far, concatenated.
    fn all_logs(&self) -> String {
        let mut out = String::new();
        for log in &self.logs {
            out.push_str(&format!("--- {} ---\n", log.display()));
            out.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        out
    }

    /// Runs a one-shot command (`verify`, `rebuild`) to completion.
    async fn once(&self, backends: &Backends, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::from(backends.command(&self.data_dir(), args));
        cmd.kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("crm-indexer {args:?} did not finish within 120 s"))
            .unwrap()
    }
}

impl Drop for Indexers {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.all_logs());
        }
    }
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn phone(n: usize) -> PhoneNumber {
    // Singapore mobile numbers 9100 0000 onwards.
    PhoneNumber::parse(&format!("+659{:07}", 1_000_000 + n), None).unwrap()
}

fn detail(n: usize) -> EngagementDetail {
    if n.is_multiple_of(2) {
        EngagementDetail::Sms {
            direction: Direction::Inbound,
            body: format!("message {n}"),
        }
    } else {
        EngagementDetail::Call {
            direction: Direction::Outbound,
            duration_s: (n % 300) as u32,
            status: CallStatus::Answered,
        }
    }
}

fn engagement(target: EngagementTarget, n: usize) -> NewEngagement {
    NewEngagement {
        target,
        occurred_at: crm_models::time::now(),
        source: Source::default(),
        detail: detail(n),
    }
}

fn by_phone(p: usize) -> EngagementTarget {
    EngagementTarget::Identify {
        name: Some(format!("Customer {p}")),
        identifiers: vec![Identifier::Phone(phone(p))],
    }
}

async fn all_customers(store: &dyn Store) -> Vec<Customer> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_customers(None, after, 500).await.unwrap();
        let done = page.len() < 500;
        after = page.last().map(|c| CustomerCursor {
            updated_at: c.updated_at,
            id: c.id,
        });
        out.extend(page);
        if done {
            return out;
        }
    }
}

fn total(c: &ChannelCounts) -> u64 {
    c.web + c.call + c.sms + c.whatsapp + c.email
}

fn int(v: Option<&redis::Value>) -> Option<i64> {
    match v? {
        redis::Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Pending and unread (lag) entries of the `indexer` group; `None` while the
/// group does not exist or Redis cannot tell the lag.
async fn backlog(conn: &mut Link, prefix: &str) -> Option<(i64, i64)> {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(format!("{prefix}events"))
        .query_async(conn)
        .await
        .ok()?;
    let group = groups.iter().find(
        |g| matches!(g.get("name"), Some(redis::Value::BulkString(name)) if name == b"indexer"),
    )?;
    Some((int(group.get("pending"))?, int(group.get("lag"))?))
}

async fn pending_count(conn: &mut Link, prefix: &str) -> i64 {
    backlog(conn, prefix)
        .await
        .map_or(0, |(pending, _)| pending)
}

/// Ten thousand engagements through the domain service while indexers are
/// SIGKILLed and restarted (under another name, then under the same one);
/// the index ends up equal to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_survives_kills_and_catches_up_with_ten_thousand_engagements() {
    survives_kills_and_catches_up(false).await;
}

/// The same on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_indexer_survives_kills_and_catches_up() {
    survives_kills_and_catches_up(true).await;
}

async fn survives_kills_and_catches_up(cluster: bool) {
    let started = Instant::now();
    let backends = Backends::new(cluster).await;
    let crm = backends.crm().await;
    let mut redis = backends.redis().await;
    let mut indexers = Indexers::new();

    let mut precreated: HashMap<usize, CustomerId> = HashMap::new();
    for p in 0..PRECREATED {
        let (customer, created) = crm
            .create_customer(CustomerInput {
                name: Some(format!("Known Customer {p}")),
                identifiers: vec![Identifier::Phone(phone(p))],
                status: None,
            })
            .await
            .unwrap();
        assert!(created);
        precreated.insert(p, customer.id);
    }

    indexers.start(&backends, "indexer-a");
    let batches = ENGAGEMENTS / BATCH;
    let mut pending_at_kill = 0;
    for batch in 0..batches {
        match batch {
            // About a third in: the first indexer dies mid-stream.
            33 => {
                indexers.kill("indexer-a");
                pending_at_kill += pending_count(&mut redis, &backends.prefix).await;
            }
            // A new process under another name claims what it left pending.
            50 => indexers.start(&backends, "indexer-b"),
            66 => {
                indexers.kill("indexer-b");
                pending_at_kill += pending_count(&mut redis, &backends.prefix).await;
            }
            // The same name again: it claims its own pending entries.
            80 => indexers.start(&backends, "indexer-b"),
            _ => {}
        }
        let items: Vec<NewEngagement> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|n| {
                // Spreads the engagements over every phone (7919 is prime to 500).
                let p = (n * 7919) % PHONES;
                match precreated.get(&p) {
                    Some(id) if n.is_multiple_of(5) => {
                        engagement(EngagementTarget::Customer(*id), n)
                    }
                    _ => engagement(by_phone(p), n),
                }
            })
            .collect();
        for outcome in crm.record_engagements(items).await {
            let recorded = outcome.unwrap();
            assert!(!recorded.duplicate);
        }
    }
    let written = started.elapsed();

    // Wait until the group has read and acknowledged every entry.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if backlog(&mut redis, &backends.prefix).await == Some((0, 0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the indexers did not catch up within 120 s: backlog {:?}",
            backlog(&mut redis, &backends.prefix).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let caught_up = started.elapsed();
    if pending_at_kill > 0 {
        assert!(
            indexers.all_logs().contains("claimed stale entries"),
            "{pending_at_kill} entries were pending at the kills, yet no claim was logged"
        );
    }

    let customers = all_customers(backends.store.as_ref()).await;
    assert_eq!(customers.len(), PHONES);
    assert_eq!(
        customers.iter().map(|c| total(&c.counts)).sum::<u64>(),
        ENGAGEMENTS as u64
    );

    let verify = indexers.once(&backends, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        stdout.contains(&format!("customers expected: {PHONES}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing: 0\nstale: 0\nextra: 0\n"),
        "{stdout}"
    );

    // Every caller-ID summary carries the store's counts.
    let index = backends.index().await;
    let mut indexed_total = 0;
    for customer in &customers {
        let summary = index
            .summary(customer.id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no summary for {}", customer.id));
        assert_eq!(summary.counts, customer.counts, "customer {}", customer.id);
        indexed_total += total(&summary.counts);
    }
    assert_eq!(indexed_total, ENGAGEMENTS as u64);
    let callers = index.lookup_phone(&phone(7)).await.unwrap();
    assert_eq!(callers.len(), 1);
    assert_eq!(callers[0].name.as_deref(), Some("Known Customer 7"));

    interrupted_rebuild_leaves_the_live_index(&backends, &indexers).await;

    eprintln!(
        "e2e: {ENGAGEMENTS} engagements written in {:.1} s, indexed {:.1} s in, \
         {pending_at_kill} entries pending at the kills, total {:.1} s",
        written.as_secs_f64(),
        caught_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(indexers);
    backends.drop_database().await;
}

/// Ctrl-C during a rebuild: exit 130, the live generation unchanged and
/// still complete; the next rebuild finishes the job.
async fn interrupted_rebuild_leaves_the_live_index(backends: &Backends, indexers: &Indexers) {
    let mut redis = backends.redis().await;
    let live = || {
        redis::cmd("HGET")
            .arg(format!("{}gen", backends.prefix))
            .arg("current")
            .clone()
    };
    let before: Option<u64> = live().query_async(&mut redis).await.unwrap();

    let mut cmd =
        tokio::process::Command::from(backends.command(&indexers.data_dir(), &["rebuild"]));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once it logs the start, its signal handlers are installed.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("rebuild started") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "the rebuild did not start:\n{seen}");
    let pid = child.id().unwrap().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    while let Ok(Some(line)) = stderr.next_line().await {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("rebuild interrupted; the live index is unchanged"),
        "{seen}"
    );
    let after: Option<u64> = live().query_async(&mut redis).await.unwrap();
    assert_eq!(after, before);
    let verify = indexers.once(backends, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));

    let rebuild = indexers.once(backends, &["rebuild"]).await;
    assert_eq!(rebuild.status.code(), Some(0), "{}", describe(&rebuild));
    assert!(
        String::from_utf8_lossy(&rebuild.stdout).contains(&format!("{PHONES} customers")),
        "{}",
        describe(&rebuild)
    );
    let verify = indexers.once(backends, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
}

/// Verify names what drifted (exit 1) and a rebuild mends it (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_drifted_customers_and_rebuild_mends_them() {
    verify_and_rebuild_mend(false).await;
}

/// The same on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_verify_names_drifted_customers_and_rebuild_mends_them() {
    verify_and_rebuild_mend(true).await;
}

async fn verify_and_rebuild_mend(cluster: bool) {
    let backends = Backends::new(cluster).await;
    let crm = backends.crm().await;
    let indexers = Indexers::new();
    for n in 0..60 {
        crm.record_engagement(engagement(by_phone(n % 12), n))
            .await
            .unwrap();
    }

    let rebuild = indexers.once(&backends, &["rebuild"]).await;
    assert_eq!(rebuild.status.code(), Some(0), "{}", describe(&rebuild));
    let stdout = String::from_utf8_lossy(&rebuild.stdout);
    assert!(
        stdout.contains("rebuilt: generation 1, 12 customers"),
        "{stdout}"
    );
    let verify = indexers.once(&backends, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));

    let customers = all_customers(backends.store.as_ref()).await;
    let (gone, missed) = (customers[0].id, customers[1].id);
    // One summary deleted by hand...
    let mut redis = backends.redis().await;
    let generation: u64 = redis::cmd("HGET")
        .arg(format!("{}gen", backends.prefix))
        .arg("current")
        .query_async(&mut redis)
        .await
        .unwrap();
    let deleted: u64 = redis::cmd("DEL")
        .arg(
            [
                format!("{}g{generation}:cust:", backends.prefix).into_bytes(),
                gone.0.as_bytes().to_vec(),
            ]
            .concat(),
        )
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // ...and one engagement whose event the index never sees.
    Crm::new(backends.store.clone())
        .record_engagement(engagement(EngagementTarget::Customer(missed), 99))
        .await
        .unwrap();

    let verify = indexers.once(&backends, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(1), "{}", describe(&verify));
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(stdout.contains("stale: 1\n"), "{stdout}");
    assert!(stdout.contains("missing: 1\n"), "{stdout}");
    assert!(stdout.contains(&format!("missing {gone}\n")), "{stdout}");
    assert!(stdout.contains(&format!("stale {missed}\n")), "{stdout}");

    let rebuild = indexers.once(&backends, &["rebuild"]).await;
    assert_eq!(rebuild.status.code(), Some(0), "{}", describe(&rebuild));
    let verify = indexers.once(&backends, &["verify"]).await;
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));
    let summary = backends
        .index()
        .await
        .summary(missed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(total(&summary.counts), 6);
    backends.drop_database().await;
}

/// Configuration errors exit 2 with a message that says what to do.
#[tokio::test]
async fn configuration_errors_exit_two_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("verify")
            .env_remove("CRM_MONGODB_URI")
            .env_remove("CRM_REDIS_URL")
            .env("CRM_DATA_DIR", dir.path())
            .env("NO_COLOR", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };

    let no_redis = run(&[]);
    assert_eq!(no_redis.status.code(), Some(2), "{}", describe(&no_redis));
    assert!(String::from_utf8_lossy(&no_redis.stderr).contains("no redis url"));

    // The embedded store is locked while another process (crm-api) has it.
    let held = crm_models::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
    let locked = run(&[("CRM_REDIS_URL", "redis://127.0.0.1:1/0")]);
    assert_eq!(locked.status.code(), Some(2), "{}", describe(&locked));
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("while crm-api is not running"),
        "{}",
        describe(&locked)
    );
    drop(held);

    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("CRM_REDIS_URL") && help.contains("crm-api is NOT"),
        "{help}"
    );
}
