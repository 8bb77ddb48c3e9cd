//! A Redis Cluster for tests.
//!
//! With `CRM_TEST_REDIS_CLUSTER_URL` set, [`url`] returns that cluster.
//! Otherwise the first test that asks starts one for the whole test process:
//! three masters and three replicas, six `redis-server` processes on free
//! loopback ports, without persistence, in a temporary directory of their
//! own, joined with `redis-cli --cluster create`. A watchdog shell stops them
//! and removes the directory when the test process is gone. A test that
//! disrupts a cluster (a failover, a killed master) starts one of its own
//! with [`start_private`], stopped when the [`Cluster`] is dropped. Each test
//! works under its own key prefix ([`unique_prefix`]), so tests sharing the
//! cluster run in parallel without seeing each other's keys.
//!
//! Cluster URLs have the form `redis+cluster://host:port,host:port,host:port`
//! (the seed nodes; for the clusters started here, the three masters).

#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, Value};

const HOW_TO_FIX: &str = "redis-server and redis-cli are needed by the Redis Cluster tests: \
    run the README's test command `./scripts/test.sh` (it installs them when missing), or set \
    CRM_TEST_REDIS_CLUSTER_URL to a Redis Cluster you already have";

/// Number of hash slots of a Redis Cluster.
const SLOTS: u32 = 16384;
/// Masters of a cluster started here; each has one replica.
const MASTERS: usize = 3;
const NODES: usize = 2 * MASTERS;
/// Redis listens on the cluster bus at its port + 10000.
const BUS_PORT_OFFSET: u16 = 10000;
/// How often the polling loops look again.
const POLL: Duration = Duration::from_millis(50);
/// Until every node of a new cluster is up, joined and synchronised.
const START_DEADLINE: Duration = Duration::from_secs(60);
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
const KILL_DEADLINE: Duration = Duration::from_secs(30);

/// The URL of the test process's shared cluster; starts it on first use.
///
/// Do not fail over or kill its nodes: other tests use it at the same time
/// (see [`start_private`]).
pub fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("CRM_TEST_REDIS_CLUSTER_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        // A static is never dropped: the watchdog stops these servers.
        _ => SHARED.get_or_init(start_private).url.clone(),
    })
    .clone()
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("crmtest:{}:", uuid::Uuid::new_v4().simple())
}

/// A cluster of one test's own: three masters with one replica each, on
/// loopback. Its servers are stopped and its directory removed when it is
/// dropped (or by the watchdog if the test process dies first).
pub struct Cluster {
    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, the masters
    /// at the start.
    pub url: String,
    dir: PathBuf,
    nodes: Mutex<Vec<Node>>,
}

struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

impl Cluster {
    /// `host:port` of every node of this cluster that was not killed.
    pub fn live_nodes(&self) -> Vec<String> {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| loopback(node.port))
            .collect()
    }

    fn log_tails(&self) -> String {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        nodes
            .iter()
            .map(|node| log_tail(&self.dir, node.port))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let nodes = self.nodes.get_mut().unwrap_or_else(PoisonError::into_inner);
        for node in nodes.iter_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The watchdog ends when the directory is gone.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a cluster of the caller's own (whether or not
/// `CRM_TEST_REDIS_CLUSTER_URL` is set), for a test that disrupts it.
pub fn start_private() -> Cluster {
    check_tools();
    let mut failures = Vec::new();
    // A free port can be taken by another process before redis-server binds
    // it: then start again on other ports.
    for _ in 0..3 {
        match try_start() {
            Ok(cluster) => return cluster,
            Err(failure) => failures.push(failure),
        }
    }
    panic!(
        "could not start a Redis Cluster in 3 attempts:\n{}",
        failures.join("\n")
    );
}

fn check_tools() {
    for tool in ["redis-server", "redis-cli"] {
        match Command::new(tool).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "{tool} --version failed ({}): {HOW_TO_FIX}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run {tool} ({e}): {HOW_TO_FIX}"),
        }
    }
}

/// `Err` when a server exited at start (its port was taken); any other
/// failure panics, and the partly started cluster is dropped (stopped).
fn try_start() -> Result<Cluster, String> {
    let ports = free_ports(NODES);
    let dir = std::env::temp_dir().join(format!(
        "crm-redis-cluster-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the directory {}: {e}", dir.display()));
    let mut cluster = Cluster {
        url: String::new(),
        dir,
        nodes: Mutex::new(Vec::with_capacity(NODES)),
    };
    for &port in &ports {
        let child = spawn_server(&cluster.dir, port);
        cluster
            .nodes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Node {
                port,
                child: Some(child),
            });
    }
    spawn_watchdog(&cluster);

    let addrs: Vec<String> = ports.iter().map(|&port| loopback(port)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in cluster
        .nodes
        .get_mut()
        .unwrap_or_else(PoisonError::into_inner)
        .iter_mut()
    {
        let node_url = format!("redis://{}", loopback(node.port));
        let pid = node.child.as_ref().map(Child::id).unwrap_or_default();
        loop {
            // Ours answers, and not another process that took the port.
            let answering = connect(&node_url)
                .and_then(|mut conn| query::<String>(&mut conn, redis::cmd("INFO").arg("server")))
                .ok()
                .and_then(|info| info_field(&info, "process_id")?.parse::<u32>().ok());
            if answering == Some(pid) {
                break;
            }
            if let Some(other) = answering {
                return Err(format!(
                    "port {} is taken by process {other}, not our redis-server {pid}",
                    node.port
                ));
            }
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return Err(format!(
                        "redis-server on port {} exited at start ({status}){}",
                        node.port,
                        log_tail(&cluster.dir, node.port)
                    ));
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer within 15 s: {HOW_TO_FIX}{}",
                    node.port,
                    log_tail(&cluster.dir, node.port)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    create_cluster(&cluster.dir, &addrs);
    let seeds = Seeds::parse(&format!("redis+cluster://{}", addrs.join(",")));
    let mut masters = Vec::new();
    poll(START_DEADLINE, || {
        masters = started(&seeds, &addrs)?;
        Ok(())
    })
    .unwrap_or_else(|why| {
        panic!(
            "the Redis Cluster on {} was not ready within {} s: {why}{}",
            addrs.join(","),
            START_DEADLINE.as_secs(),
            cluster.log_tails()
        )
    });
    cluster.url = format!("redis+cluster://{}", masters.join(","));
    Ok(cluster)
}

fn spawn_server(dir: &Path, port: u16) -> Child {
    Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        .arg("--cluster-config-file")
        .arg(dir.join(format!("nodes-{port}.conf")))
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        // A replica's first synchronisation starts at once instead of after
        // the default 5 s wait for more replicas.
        .args(["--repl-diskless-sync-delay", "0"])
        // CLUSTER SLOTS lists a replica once its replication offset is not
        // 0; on an empty master that takes the first ping to its replicas,
        // 10 s by default.
        .args(["--repl-ping-replica-period", "1"])
        .arg("--logfile")
        .arg(dir.join(format!("redis-{port}.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): {HOW_TO_FIX}"))
}

/// The shell waits while this test process lives and the cluster's directory
/// exists. When the test process is gone (the harness exits without running
/// destructors) it stops the servers and removes the directory; when the
/// directory is gone, `Cluster::drop` has stopped them already.
fn spawn_watchdog(cluster: &Cluster) {
    let script = "pid=$1; dir=$2; shift 2; \
        while kill -0 \"$pid\" 2>/dev/null && [ -d \"$dir\" ]; do sleep 0.5; done; \
        if [ -d \"$dir\" ]; then kill -9 \"$@\" 2>/dev/null; rm -rf \"$dir\"; fi";
    let pids: Vec<String> = cluster
        .nodes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(|node| node.child.as_ref().map(|child| child.id().to_string()))
        .collect();
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(&cluster.dir)
        .args(pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the watchdog shell of the Redis Cluster: {e}"));
    // Reaps the watchdog when it ends while the tests still run.
    std::thread::spawn(move || watchdog.wait());
}

/// `redis-cli --cluster create`, with a deadline.
fn create_cluster(dir: &Path, addrs: &[String]) {
    let log_path = dir.join("cluster-create.log");
    let log = File::create(&log_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot open {} twice: {e}", log_path.display()));
    let mut create = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): {HOW_TO_FIX}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match create.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = create.kill();
                let _ = create.wait();
                panic!(
                    "redis-cli --cluster create {} did not finish within 60 s:\n{}",
                    addrs.join(" "),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            Err(e) => panic!("cannot wait for redis-cli --cluster create: {e}"),
        }
    };
    if !status.success() {
        panic!(
            "redis-cli --cluster create {} failed ({status}):\n{}",
            addrs.join(" "),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
}

/// The masters (`host:port`, sorted) once every node says the cluster is ok,
/// sees all slots served, each by a master with a replica, and every replica
/// is in sync with its master.
fn started(seeds: &Seeds, addrs: &[String]) -> Result<Vec<String>, String> {
    for addr in addrs {
        let view = NodeView::of(seeds, addr)?;
        view.serves_all_slots()?;
        if let Some(range) = view.slots.iter().find(|range| range.replicas.is_empty()) {
            return Err(format!(
                "{addr}: slots {}-{} have no replica in CLUSTER SLOTS",
                range.start, range.end
            ));
        }
        if view.role() == Some("slave") && !view.link_up() {
            return Err(format!("{addr}: replica with master_link_status not up"));
        }
    }
    let nodes = cluster_nodes(seeds)?;
    let mut masters: Vec<String> = nodes
        .iter()
        .filter(|node| node.is_master() && !node.slots.is_empty())
        .map(|node| node.addr.clone())
        .collect();
    if masters.len() != MASTERS {
        return Err(format!("masters {masters:?}, expected {MASTERS}"));
    }
    masters.sort();
    Ok(masters)
}

/// `host:port` of each master (not failed) right now, as the first node of
/// the URL that answers sees them.
pub fn masters(url: &str) -> Vec<String> {
    nodes_where(url, NodeEntry::is_master)
}

/// `host:port` of each replica (not failed) right now, as the first node of
/// the URL that answers sees them.
pub fn replicas(url: &str) -> Vec<String> {
    nodes_where(url, NodeEntry::is_replica)
}

fn nodes_where(url: &str, keep: fn(&NodeEntry) -> bool) -> Vec<String> {
    let nodes = cluster_nodes(&Seeds::parse(url))
        .unwrap_or_else(|e| panic!("cannot list the nodes of {url}: {e}"));
    let mut addrs: Vec<String> = nodes
        .iter()
        .filter(|node| keep(node))
        .map(|node| node.addr.clone())
        .collect();
    addrs.sort();
    addrs
}

/// Every key starting with `prefix` on every master, sorted.
pub fn keys_with_prefix(url: &str, prefix: &str) -> Vec<Vec<u8>> {
    let seeds = Seeds::parse(url);
    let masters = cluster_nodes(&seeds)
        .unwrap_or_else(|e| panic!("cannot list the nodes of {url}: {e}"))
        .into_iter()
        .filter(NodeEntry::is_master);
    let mut keys = Vec::new();
    for master in masters {
        let mut conn = connect(&seeds.node_url(&master.addr))
            .unwrap_or_else(|e| panic!("cannot connect to master {}: {e}", master.addr));
        scan_prefix(&mut conn, prefix, |batch| keys.extend(batch))
            .unwrap_or_else(|e| panic!("SCAN on master {} failed: {e}", master.addr));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every key starting with `prefix` on one node (`host:port`, as [`masters`]
/// gives it) of the cluster of `url`, sorted.
pub fn keys_on_node(url: &str, node: &str, prefix: &str) -> Vec<Vec<u8>> {
    let mut conn = connect(&Seeds::parse(url).node_url(node))
        .unwrap_or_else(|e| panic!("cannot connect to {node}: {e}"));
    let mut keys = Vec::new();
    scan_prefix(&mut conn, prefix, |batch| keys.extend(batch))
        .unwrap_or_else(|e| panic!("SCAN on {node} failed: {e}"));
    keys.sort();
    keys.dedup();
    keys
}

/// Deletes a test's keys on every master when dropped (best effort), so a
/// shared cluster named by `CRM_TEST_REDIS_CLUSTER_URL` is left as it was
/// found.
pub struct DeleteOnDrop {
    pub url: String,
    pub prefix: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let seeds = Seeds::parse(&self.url);
        let Ok(nodes) = cluster_nodes(&seeds) else {
            return;
        };
        for master in nodes.iter().filter(|node| node.is_master()) {
            let Ok(mut conn) = connect(&seeds.node_url(&master.addr)) else {
                continue;
            };
            let mut batches = Vec::new();
            let _ = scan_prefix(&mut conn, &self.prefix, |batch| batches.push(batch));
            for batch in batches {
                // One UNLINK per key: keys of different slots cannot share one.
                let mut pipe = redis::pipe();
                for key in &batch {
                    pipe.cmd("UNLINK").arg(key).ignore();
                }
                let _: redis::RedisResult<()> = pipe.query(&mut conn);
            }
        }
    }
}

/// Fails over the master serving `key`'s slot to one of its replicas with
/// `CLUSTER FAILOVER` (no write is lost), and waits until every node sees
/// the new master serve the slot and the old master as its replica, in sync.
/// Returns (old master, new master) as `host:port`. Meant for a
/// [`start_private`] cluster.
pub fn failover_master_of(url: &str, key: &[u8]) -> (String, String) {
    let seeds = Seeds::parse(url);
    let slot = keyslot(&seeds, key);
    let nodes =
        cluster_nodes(&seeds).unwrap_or_else(|e| panic!("cannot list the nodes of {url}: {e}"));
    let (master, replica) = master_and_replica(&nodes, slot, url);
    let everyone: Vec<String> = nodes
        .iter()
        .filter(|node| node.healthy())
        .map(|node| node.addr.clone())
        .collect();

    let mut conn = connect(&seeds.node_url(&replica.addr))
        .unwrap_or_else(|e| panic!("cannot connect to replica {}: {e}", replica.addr));
    query::<()>(&mut conn, redis::cmd("CLUSTER").arg("FAILOVER"))
        .unwrap_or_else(|e| panic!("CLUSTER FAILOVER on replica {} failed: {e}", replica.addr));

    poll(FAILOVER_DEADLINE, || {
        let view = NodeView::of(&seeds, &replica.addr)?;
        if view.role() != Some("master") {
            return Err(format!("{} is not master yet", replica.addr));
        }
        let view = NodeView::of(&seeds, &master.addr)?;
        if view.role() != Some("slave") || !view.link_up() {
            return Err(format!(
                "old master {} is not a replica in sync yet",
                master.addr
            ));
        }
        for addr in &everyone {
            let view = NodeView::of(&seeds, addr)?;
            view.serves_all_slots()?;
            view.names_master(slot, &replica.addr)?;
            view.names_replica(slot, &master.addr)?;
        }
        Ok(())
    })
    .unwrap_or_else(|why| {
        panic!(
            "failover of slot {slot} from {} to {} did not complete within {} s: {why}",
            master.addr,
            replica.addr,
            FAILOVER_DEADLINE.as_secs()
        )
    });
    (master.addr.clone(), replica.addr.clone())
}

/// Kills (SIGKILL) the master serving `key`'s slot, once its replica has
/// caught up with it (so no acknowledged write is lost: the test sees a
/// crash and a promotion, not a data loss), and waits until the replica is
/// promoted and every remaining node sees all slots served again. Returns
/// (killed, promoted) as `host:port`.
pub fn kill_master_of(cluster: &Cluster, key: &[u8]) -> (String, String) {
    let live = cluster.live_nodes();
    let seeds = Seeds::parse(&format!("redis+cluster://{}", live.join(",")));
    let slot = keyslot(&seeds, key);
    let nodes = cluster_nodes(&seeds)
        .unwrap_or_else(|e| panic!("cannot list the nodes of {}: {e}", cluster.url));
    let (master, replica) = master_and_replica(&nodes, slot, &cluster.url);

    poll(Duration::from_secs(10), || {
        let master_view = NodeView::of(&seeds, &master.addr)?;
        let replica_view = NodeView::of(&seeds, &replica.addr)?;
        let master_offset = master_view.replication_number("master_repl_offset")?;
        let replica_offset = replica_view.replication_number("slave_repl_offset")?;
        if replica_view.link_up() && replica_offset >= master_offset {
            Ok(())
        } else {
            Err(format!(
                "replica {} at offset {replica_offset}, master {} at {master_offset}",
                replica.addr, master.addr
            ))
        }
    })
    .unwrap_or_else(|why| panic!("replica not in sync before the kill: {why}"));

    let port = port_of(&master.addr);
    {
        let mut nodes = cluster.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let node = nodes
            .iter_mut()
            .find(|node| node.port == port && node.child.is_some())
            .unwrap_or_else(|| panic!("{} is not a live node of {}", master.addr, cluster.url));
        if let Some(mut child) = node.child.take() {
            child
                .kill()
                .unwrap_or_else(|e| panic!("cannot kill redis-server {}: {e}", master.addr));
            let _ = child.wait();
        }
    }

    let remaining = cluster.live_nodes();
    poll(KILL_DEADLINE, || {
        let view = NodeView::of(&seeds, &replica.addr)?;
        if view.role() != Some("master") {
            return Err(format!("{} is not promoted yet", replica.addr));
        }
        for addr in &remaining {
            let view = NodeView::of(&seeds, addr)?;
            view.serves_all_slots()?;
            view.names_master(slot, &replica.addr)?;
        }
        Ok(())
    })
    .unwrap_or_else(|why| {
        panic!(
            "after killing master {}, its replica {} was not serving slot {slot} within {} s: \
             {why}{}",
            master.addr,
            replica.addr,
            KILL_DEADLINE.as_secs(),
            cluster.log_tails()
        )
    });
    (master.addr.clone(), replica.addr.clone())
}

fn master_and_replica<'a>(
    nodes: &'a [NodeEntry],
    slot: u32,
    url: &str,
) -> (&'a NodeEntry, &'a NodeEntry) {
    let master = nodes
        .iter()
        .find(|node| node.is_master() && node.serves(slot))
        .unwrap_or_else(|| panic!("no master of {url} serves slot {slot}"));
    let replica = nodes
        .iter()
        .find(|node| node.is_replica() && node.master_id == master.id)
        .unwrap_or_else(|| panic!("master {} of {url} has no replica", master.addr));
    (master, replica)
}

fn keyslot(seeds: &Seeds, key: &[u8]) -> u32 {
    seeds
        .first_answering(|conn| query::<u32>(conn, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)))
        .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT failed: {e}"))
}

/// Calls `check` every 50 ms until it returns `Ok` or the deadline passes;
/// then the last reason it gave.
fn poll(deadline: Duration, mut check: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + deadline;
    loop {
        let why = match check() {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            return Err(why);
        }
        std::thread::sleep(POLL);
    }
}

/// SCAN of one node for keys starting with `prefix`, a batch at a time.
fn scan_prefix(
    conn: &mut redis::Connection,
    prefix: &str,
    mut each: impl FnMut(Vec<Vec<u8>>),
) -> Result<(), String> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = query(
            conn,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000),
        )?;
        if !batch.is_empty() {
            each(batch);
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The nodes named by a cluster URL, and how to connect to any node of it.
struct Seeds {
    /// `redis://` or `rediss://`, with the URL's credentials if any.
    base: String,
    addrs: Vec<String>,
}

impl Seeds {
    fn parse(url: &str) -> Seeds {
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
        let scheme = if scheme.starts_with("rediss") {
            "rediss"
        } else {
            "redis"
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), authority),
        };
        let addrs: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(|addr| {
                if addr
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
                {
                    addr.to_string()
                } else {
                    format!("{addr}:6379")
                }
            })
            .collect();
        assert!(!addrs.is_empty(), "no node in the cluster URL {url:?}");
        Seeds {
            base: format!("{scheme}://{userinfo}"),
            addrs,
        }
    }

    fn node_url(&self, addr: &str) -> String {
        format!("{}{addr}", self.base)
    }

    /// `f` on the first seed that accepts a connection.
    fn first_answering<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut failures = Vec::new();
        for addr in &self.addrs {
            match connect(&self.node_url(addr)) {
                Ok(mut conn) => return f(&mut conn),
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        Err(format!("no node answers ({})", failures.join("; ")))
    }
}

fn connect(node_url: &str) -> Result<redis::Connection, String> {
    let client = redis::Client::open(node_url).map_err(|e| e.to_string())?;
    let conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

fn query<T: FromRedisValue>(conn: &mut redis::Connection, cmd: &redis::Cmd) -> Result<T, String> {
    cmd.query(conn).map_err(|e| e.to_string())
}

/// One line of `CLUSTER NODES`.
struct NodeEntry {
    id: String,
    /// `host:port`
    addr: String,
    flags: Vec<String>,
    /// `-` for a master.
    master_id: String,
    slots: Vec<(u32, u32)>,
}

impl NodeEntry {
    fn parse(line: &str) -> Option<NodeEntry> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        // ip:port@cport[,hostname]
        let addr = fields[1].split('@').next().unwrap_or_default().to_string();
        let slots = fields[8..]
            .iter()
            // `[slot->-node]` and `[slot-<-node]`: a slot being migrated.
            .filter(|field| !field.starts_with('['))
            .filter_map(|field| match field.split_once('-') {
                Some((start, end)) => Some((start.parse().ok()?, end.parse().ok()?)),
                None => {
                    let slot = field.parse().ok()?;
                    Some((slot, slot))
                }
            })
            .collect();
        Some(NodeEntry {
            id: fields[0].to_string(),
            addr,
            flags: fields[2].split(',').map(str::to_string).collect(),
            master_id: fields[3].to_string(),
            slots,
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn healthy(&self) -> bool {
        !["fail", "fail?", "noaddr", "handshake"]
            .iter()
            .any(|flag| self.has(flag))
    }

    fn is_master(&self) -> bool {
        self.has("master") && self.healthy()
    }

    fn is_replica(&self) -> bool {
        self.has("slave") && self.healthy()
    }

    fn serves(&self, slot: u32) -> bool {
        self.slots
            .iter()
            .any(|&(start, end)| start <= slot && slot <= end)
    }
}

/// `CLUSTER NODES` of the first seed that answers.
fn cluster_nodes(seeds: &Seeds) -> Result<Vec<NodeEntry>, String> {
    let text: String =
        seeds.first_answering(|conn| query(conn, redis::cmd("CLUSTER").arg("NODES")))?;
    Ok(text.lines().filter_map(NodeEntry::parse).collect())
}

/// One range of `CLUSTER SLOTS`.
struct SlotRange {
    start: u32,
    end: u32,
    /// `host:port`
    master: String,
    replicas: Vec<String>,
}

/// What one node says about the cluster and its own replication.
struct NodeView {
    addr: String,
    cluster_info: String,
    slots: Vec<SlotRange>,
    replication: String,
}

impl NodeView {
    fn of(seeds: &Seeds, addr: &str) -> Result<NodeView, String> {
        let mut conn = connect(&seeds.node_url(addr)).map_err(|e| format!("{addr}: {e}"))?;
        let cluster_info: String = query(&mut conn, redis::cmd("CLUSTER").arg("INFO"))
            .map_err(|e| format!("{addr}: CLUSTER INFO: {e}"))?;
        let slots: Value = query(&mut conn, redis::cmd("CLUSTER").arg("SLOTS"))
            .map_err(|e| format!("{addr}: CLUSTER SLOTS: {e}"))?;
        let replication: String = query(&mut conn, redis::cmd("INFO").arg("replication"))
            .map_err(|e| format!("{addr}: INFO replication: {e}"))?;
        Ok(NodeView {
            addr: addr.to_string(),
            cluster_info,
            slots: parse_slots(&slots).map_err(|e| format!("{addr}: CLUSTER SLOTS: {e}"))?,
            replication,
        })
    }

    /// `cluster_state:ok`, and `CLUSTER SLOTS` covers every slot once.
    fn serves_all_slots(&self) -> Result<(), String> {
        if info_field(&self.cluster_info, "cluster_state") != Some("ok") {
            return Err(format!(
                "{}: cluster_state is {:?}",
                self.addr,
                info_field(&self.cluster_info, "cluster_state")
            ));
        }
        let mut ranges: Vec<(u32, u32)> = self.slots.iter().map(|r| (r.start, r.end)).collect();
        ranges.sort_unstable();
        let mut next = 0;
        for (start, end) in ranges {
            if start != next {
                return Err(format!(
                    "{}: CLUSTER SLOTS does not cover slot {next}",
                    self.addr
                ));
            }
            next = end + 1;
        }
        if next != SLOTS {
            return Err(format!(
                "{}: CLUSTER SLOTS covers slots up to {next} only",
                self.addr
            ));
        }
        Ok(())
    }

    fn names_master(&self, slot: u32, master: &str) -> Result<(), String> {
        match self
            .slots
            .iter()
            .find(|range| range.start <= slot && slot <= range.end)
        {
            Some(range) if range.master == master => Ok(()),
            Some(range) => Err(format!(
                "{}: slot {slot} is served by {}, not {master}",
                self.addr, range.master
            )),
            None => Err(format!("{}: slot {slot} is not served", self.addr)),
        }
    }

    fn names_replica(&self, slot: u32, replica: &str) -> Result<(), String> {
        let range = self
            .slots
            .iter()
            .find(|range| range.start <= slot && slot <= range.end)
            .ok_or_else(|| format!("{}: slot {slot} is not served", self.addr))?;
        if range.replicas.iter().any(|r| r == replica) {
            Ok(())
        } else {
            Err(format!(
                "{}: {replica} is not a replica for slot {slot} yet",
                self.addr
            ))
        }
    }

    fn role(&self) -> Option<&str> {
        info_field(&self.replication, "role")
    }

    fn link_up(&self) -> bool {
        info_field(&self.replication, "master_link_status") == Some("up")
    }

    fn replication_number(&self, field: &str) -> Result<u64, String> {
        info_field(&self.replication, field)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("{}: no {field} in INFO replication", self.addr))
    }
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

fn parse_slots(value: &Value) -> Result<Vec<SlotRange>, String> {
    let Value::Array(ranges) = value else {
        return Err(format!("not an array: {value:?}"));
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(fields) = range else {
                return Err(format!("range not an array: {range:?}"));
            };
            let number = |value: Option<&Value>| match value {
                Some(Value::Int(n)) => u32::try_from(*n).map_err(|e| e.to_string()),
                other => Err(format!("slot not a number: {other:?}")),
            };
            let mut nodes = fields.iter().skip(2).map(node_addr);
            Ok(SlotRange {
                start: number(fields.first())?,
                end: number(fields.get(1))?,
                master: nodes.next().ok_or("range without a master")??,
                replicas: nodes.collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// `host:port` of a node entry of `CLUSTER SLOTS`: `[ip, port, id, ...]`.
fn node_addr(node: &Value) -> Result<String, String> {
    let Value::Array(fields) = node else {
        return Err(format!("node not an array: {node:?}"));
    };
    let host = match fields.first() {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(text)) => text.clone(),
        other => return Err(format!("node host not a string: {other:?}")),
    };
    let port = match fields.get(1) {
        Some(Value::Int(port)) => *port,
        other => return Err(format!("node port not a number: {other:?}")),
    };
    Ok(format!("{host}:{port}"))
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// `count` free loopback ports whose cluster bus port (+10000) is free too.
/// All are held until all are found, so they differ from each other.
fn free_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == count {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a free loopback port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("no local address: {e}"))
            .port();
        held.push(listener);
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else {
            continue;
        };
        if let Ok(bus_listener) = TcpListener::bind(("127.0.0.1", bus)) {
            held.push(bus_listener);
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        count,
        "could not find {count} free loopback ports with free cluster bus ports"
    );
    ports
}

/// The last lines of a node's log, for a failure message.
fn log_tail(dir: &Path, port: u16) -> String {
    let log = std::fs::read_to_string(dir.join(format!("redis-{port}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    format!("\n--- redis-server {port} (last lines of its log) ---\n{tail}")
}
