//! One way to reach Redis, whether `CRM_REDIS_URL` names one server or a
//! Redis Cluster.
//!
//! - `redis://host:port/db` (or `rediss://`, `unix://`) is one server.
//! - `redis+cluster://[user:password@]host1:port1,host2:port2` is a cluster:
//!   the hosts listed are where the slot map is first read (any nodes will
//!   do; the others are found from there).
//!
//! A [`Link`] is a reconnecting handle either way, and it is what the index,
//! the event stream, live push and the login limits send commands on. On a
//! cluster each command goes to the master serving its key's slot, and the
//! cluster client follows `MOVED` and `ASK` and reads the slot map again when
//! it changes (a failover). A pipeline is split by node, after the slot map
//! as last read: the commands of one node go together, in their order, the
//! nodes' pipelines are sent at the same time, and the replies come back in
//! the pipeline's order. When a node's part fails (a slot moved, the node
//! is gone), the slot map is read again and that part is sent again a slot
//! at a time, which the cluster client redirects. A command may so be sent
//! twice: the index's writes are idempotent, and an event published twice
//! to the stream does the index no harm (the worker reads the customer
//! fresh from the store), though a live stream may then show it twice. Nothing is atomic across slots, which the index does not need (its writes are
//! pipelines, not transactions, on one server as well). A command marked
//! with [`defer_next`] is held back until every unmarked command of the
//! pipeline has been answered: the index writes a customer's summary last,
//! so that a write cut short is repaired by the next one, as on one server.
//! A multi-key `MGET`, `DEL`, `UNLINK`, `EXISTS` or `TOUCH` in a pipeline is
//! sent one key at a time and its reply put back together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Arg, Client, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, Value,
};

/// The scheme of a cluster URL.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The argument of the marker command [`defer_next`] adds.
const DEFER_MARK: &[u8] = b"\0crm:defer-next";

/// Where Redis is: one server, or the seed nodes of a cluster.
#[derive(Clone)]
pub enum Target {
    Single(Client),
    Cluster {
        client: ClusterClient,
        /// The nodes the URL listed, for what needs one node (a
        /// subscription to a channel, which a cluster delivers on every
        /// node).
        seeds: Vec<ConnectionInfo>,
    },
}

/// How a [`Link`] connects and how long it waits.
#[derive(Clone, Copy, Debug)]
pub struct LinkConfig {
    pub connect_timeout: Duration,
    /// `None`: a command may take as long as it takes (a blocking read).
    pub response_timeout: Option<Duration>,
    /// Reconnection attempts (one server) or retries of a command (cluster).
    pub retries: usize,
    /// One server: the growth of the wait between reconnection attempts, and
    /// its cap in milliseconds.
    pub backoff: Option<(u64, u64)>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Some(Duration::from_secs(2)),
            retries: 3,
            backoff: None,
        }
    }
}

impl Target {
    /// Reads a URL: a cluster's (`redis+cluster://`) or one server's.
    pub fn parse(url: &str) -> RedisResult<Target> {
        const TLS_CLUSTER: &str = "rediss+cluster://";
        if url
            .get(..TLS_CLUSTER.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(TLS_CLUSTER))
        {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "TLS to a Redis Cluster (rediss+cluster://) is not supported; use redis+cluster://",
            )));
        }
        let scheme = url.get(..CLUSTER_SCHEME.len());
        if !scheme.is_some_and(|s| s.eq_ignore_ascii_case(CLUSTER_SCHEME)) {
            return Ok(Target::Single(Client::open(url)?));
        }
        let rest = url[CLUSTER_SCHEME.len()..].trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (Some(auth), hosts),
            None => (None, rest),
        };
        let seeds = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| match auth {
                Some(a) => format!("redis://{a}@{h}"),
                None => format!("redis://{h}"),
            })
            .map(|u| u.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a redis+cluster:// URL names no node",
            )));
        }
        let client = ClusterClientBuilder::new(seeds.clone())
            .retries(5)
            .build()?;
        Ok(Target::Cluster { client, seeds })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    /// One server's address and login; `None` on a cluster.
    pub fn single_info(&self) -> Option<&ConnectionInfo> {
        match self {
            Target::Single(client) => Some(client.get_connection_info()),
            Target::Cluster { .. } => None,
        }
    }

    /// A client of one node: the server, or the `n`th seed of a cluster
    /// (wrapping around), for a subscription.
    pub fn node_client(&self, n: usize) -> RedisResult<Client> {
        match self {
            Target::Single(client) => Ok(client.clone()),
            Target::Cluster { seeds, .. } => Client::open(seeds[n % seeds.len()].clone()),
        }
    }

    /// Connects.
    pub async fn connect(&self, config: LinkConfig) -> RedisResult<Link> {
        match self {
            Target::Single(client) => {
                let mut c = ConnectionManagerConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_number_of_retries(config.retries);
                if let Some(t) = config.response_timeout {
                    c = c.set_response_timeout(t);
                }
                if let Some((factor, max_delay)) = config.backoff {
                    c = c.set_factor(factor).set_max_delay(max_delay);
                }
                Ok(Link::Single(
                    ConnectionManager::new_with_config(client.clone(), c).await?,
                ))
            }
            Target::Cluster { client, .. } => {
                let mut c = ClusterConfig::new().set_connection_timeout(config.connect_timeout);
                // The cluster client's default is no limit; a blocking read
                // still needs a bound, far beyond any block it asks for.
                c = c.set_response_timeout(
                    config.response_timeout.unwrap_or(Duration::from_secs(600)),
                );
                let mut conn = client.get_async_connection_with_config(c).await?;
                let map = SlotMap::read(&mut conn).await?;
                Ok(Link::Cluster(ClusterLink {
                    conn,
                    map: Arc::new(RwLock::new(Arc::new(map))),
                }))
            }
        }
    }
}

/// Marks the next command of `p` to be sent after all the unmarked ones on a
/// cluster (see the module docs). Only for links to a cluster: one server
/// would be sent the marker.
pub fn defer_next(p: &mut Pipeline) {
    p.cmd("ECHO").arg(DEFER_MARK).ignore();
}

/// Whether a blocked read was released because its master became a
/// replica (a cluster's failover): nothing was read, and the next read goes
/// to the new master.
pub fn is_unblocked_by_failover(e: &RedisError) -> bool {
    e.code() == Some("UNBLOCKED")
}

/// A node whose keys a walk (`SCAN`) must visit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// The one server.
    Only,
    /// A cluster master.
    At { host: String, port: u16 },
}

/// A reconnecting connection to one server or to a cluster.
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterLink),
}

/// A cluster connection, and which master serves which slots as last read.
#[derive(Clone)]
pub struct ClusterLink {
    conn: ClusterConnection,
    map: Arc<RwLock<Arc<SlotMap>>>,
}

/// A range of slots: its first and last slot and the master serving it.
type SlotRange = (u16, u16, (String, u16));

/// `CLUSTER SLOTS`: ranges of slots and the master serving each.
struct SlotMap {
    /// By first slot.
    ranges: Vec<SlotRange>,
}

impl SlotMap {
    async fn read(conn: &mut ClusterConnection) -> RedisResult<SlotMap> {
        let slots = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let mut ranges = slot_ranges(slots)?;
        ranges.sort_by_key(|r| r.0);
        Ok(SlotMap { ranges })
    }

    /// The master serving `slot`, if the map has one.
    fn master(&self, slot: u16) -> Option<&(String, u16)> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (start, end, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(node)
    }

    /// Each master once, in the order of the first slot it serves.
    fn masters(&self) -> Vec<(String, u16)> {
        let mut first: BTreeMap<(String, u16), u16> = BTreeMap::new();
        for (start, _, node) in &self.ranges {
            let e = first.entry(node.clone()).or_insert(*start);
            *e = (*e).min(*start);
        }
        let mut masters: Vec<((String, u16), u16)> = first.into_iter().collect();
        masters.sort_by_key(|(_, start)| *start);
        masters.into_iter().map(|(node, _)| node).collect()
    }
}

impl ClusterLink {
    /// Reads the slot map again (after a part of a pipeline failed).
    async fn refresh(&mut self) {
        match SlotMap::read(&mut self.conn).await {
            Ok(map) => *self.map.write() = Arc::new(map),
            Err(e) => tracing::debug!(error = %e, "cannot read the cluster's slot map"),
        }
    }
}

impl Link {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// The nodes holding keys: the server, or each master of the cluster,
    /// in the order of the slots they serve.
    pub async fn nodes(&mut self) -> RedisResult<Vec<Node>> {
        let Link::Cluster(c) = self else {
            return Ok(vec![Node::Only]);
        };
        let map = SlotMap::read(&mut c.conn).await?;
        let masters = map.masters();
        *c.map.write() = Arc::new(map);
        Ok(masters
            .into_iter()
            .map(|(host, port)| Node::At { host, port })
            .collect())
    }

    /// One `SCAN` step on `node`: the next cursor and the keys found.
    pub async fn scan(
        &mut self,
        node: &Node,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count.max(1));
        match (self, node) {
            (Link::Single(c), _) => cmd.query_async(c).await,
            (Link::Cluster(c), Node::At { host, port }) => {
                let v = c
                    .conn
                    .route_command(
                        &cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await?;
                redis::from_owned_redis_value(v)
            }
            (Link::Cluster(_), Node::Only) => Err(RedisError::from((
                ErrorKind::ClientError,
                "a cluster walk names its node",
            ))),
        }
    }
}

/// `CLUSTER SLOTS`: each range's first and last slot and its master.
fn slot_ranges(v: Value) -> RedisResult<Vec<SlotRange>> {
    let bad = || RedisError::from((ErrorKind::TypeError, "unexpected CLUSTER SLOTS reply"));
    let Value::Array(ranges) = v else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(parts) = r else {
            return Err(bad());
        };
        let mut parts = parts.into_iter();
        let start: u16 = redis::from_owned_redis_value(parts.next().ok_or_else(bad)?)?;
        let end: u16 = redis::from_owned_redis_value(parts.next().ok_or_else(bad)?)?;
        let Some(Value::Array(master)) = parts.next() else {
            return Err(bad());
        };
        let mut master = master.into_iter();
        let host: String = redis::from_owned_redis_value(master.next().ok_or_else(bad)?)?;
        let port: u16 = redis::from_owned_redis_value(master.next().ok_or_else(bad)?)?;
        out.push((start, end, (host, port)));
    }
    Ok(out)
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipe, offset, count),
            Link::Cluster(c) => {
                if pipe.is_transaction() {
                    // A transaction must be one slot's: the cluster client
                    // says so.
                    c.conn.req_packed_commands(pipe, offset, count)
                } else {
                    Box::pin(split_by_node(c.clone(), pipe))
                }
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(_) => 0,
        }
    }
}

/// What became of one command of a pipeline split by slot.
enum Part {
    /// A [`defer_next`] marker: answered here.
    Mark,
    /// Sent as it is: the slot's pipeline and the position in it.
    One(usize, usize),
    /// Split per key: where each key's command went, and how the replies
    /// combine.
    Keys(Vec<(usize, usize)>, Combine),
}

#[derive(Clone, Copy)]
enum Combine {
    /// `MGET`: the values in key order.
    Concat,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: the sum.
    Sum,
}

/// Where a group of commands goes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    /// The master serving the slot, as the map says.
    Node(String, u16),
    /// A slot the map does not place: the cluster client finds it.
    Slot(u16),
    /// Commands without a key: any node.
    Any,
}

/// One pipeline of a split: where it goes, its stage, its commands with
/// their slots.
struct Group {
    to: To,
    stage: usize,
    pipe: Pipeline,
    slots: Vec<Option<u16>>,
}

/// Pipelines by node, in two stages: everything unmarked, then what
/// [`defer_next`] marked.
struct Plan {
    map: Arc<SlotMap>,
    /// Per stage, the group of each destination.
    index: [BTreeMap<To, usize>; 2],
    groups: Vec<Group>,
    parts: Vec<Part>,
}

impl Plan {
    fn add(&mut self, stage: usize, slot: Option<u16>, cmd: Cmd) -> (usize, usize) {
        let to = match slot {
            None => To::Any,
            Some(s) => match self.map.master(s) {
                Some((host, port)) => To::Node(host.clone(), *port),
                None => To::Slot(s),
            },
        };
        let groups = &mut self.groups;
        let g = *self.index[stage].entry(to.clone()).or_insert_with(|| {
            groups.push(Group {
                to,
                stage,
                pipe: Pipeline::new(),
                slots: Vec::new(),
            });
            groups.len() - 1
        });
        let group = &mut self.groups[g];
        group.pipe.add_command(cmd);
        group.slots.push(slot);
        (g, group.pipe.len() - 1)
    }
}

/// Sends one group: to its node, and when that fails (a slot moved, the
/// node is gone), after reading the slot map again, a slot at a time
/// through the cluster client, which follows redirections.
async fn send_group(mut link: ClusterLink, group: &Group) -> RedisResult<Vec<Value>> {
    let first = match &group.to {
        To::Node(host, port) => {
            let route = SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            };
            let sent = link
                .conn
                .route_pipeline(&group.pipe, 0, group.pipe.len(), route)
                .await;
            match sent {
                Ok(values) if !values.iter().any(is_redirection) => return Ok(values),
                Ok(_) => None,
                Err(e) => Some(e),
            }
        }
        To::Slot(_) | To::Any => None,
    };
    if let Some(e) = &first {
        tracing::debug!(error = %e, "a cluster node's part of a pipeline failed; sending it by slot");
    }
    if matches!(group.to, To::Node(..)) {
        link.refresh().await;
    }
    // A slot at a time, the slots at the same time.
    let mut by_slot: BTreeMap<Option<u16>, (Pipeline, Vec<usize>)> = BTreeMap::new();
    for (i, (cmd, slot)) in group.pipe.cmd_iter().zip(&group.slots).enumerate() {
        let (p, at) = by_slot
            .entry(*slot)
            .or_insert_with(|| (Pipeline::new(), Vec::new()));
        p.add_command(cmd.clone());
        at.push(i);
    }
    let sends = by_slot.values().map(|(p, at)| {
        let mut conn = link.conn.clone();
        async move {
            let values = conn.req_packed_commands(p, 0, p.len()).await?;
            Ok::<_, RedisError>((at, values))
        }
    });
    let mut out = vec![Value::Nil; group.pipe.len()];
    for (at, values) in futures::future::try_join_all(sends).await? {
        for (i, v) in at.iter().zip(values) {
            out[*i] = v;
        }
    }
    Ok(out)
}

/// A reply saying the command belongs on another node.
fn is_redirection(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => matches!(
            e.code(),
            "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "LOADING"
        ),
        _ => false,
    }
}

async fn split_by_node(link: ClusterLink, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
    let mut plan = Plan {
        map: link.map.read().clone(),
        index: Default::default(),
        groups: Vec::new(),
        parts: Vec::new(),
    };
    let mut deferred = false;
    for cmd in pipe.cmd_iter() {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|a| match a {
                Arg::Simple(b) => Some(b),
                Arg::Cursor => None,
            })
            .collect();
        let name = args
            .first()
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        if name == b"ECHO" && args.get(1) == Some(&DEFER_MARK) {
            deferred = true;
            plan.parts.push(Part::Mark);
            continue;
        }
        let stage = usize::from(std::mem::take(&mut deferred));
        let combine = match name.as_slice() {
            b"MGET" => Some(Combine::Concat),
            b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => Some(Combine::Sum),
            _ => None,
        };
        match combine {
            Some(combine) if args.len() > 2 => {
                let places = args[1..]
                    .iter()
                    .map(|key| {
                        let mut one = redis::cmd(std::str::from_utf8(&name).unwrap_or("GET"));
                        one.arg(*key);
                        plan.add(stage, Some(slot(key)), one)
                    })
                    .collect();
                plan.parts.push(Part::Keys(places, combine));
            }
            _ => {
                let at = plan.add(stage, key_of(&name, &args).map(slot), cmd.clone());
                plan.parts.push(Part::One(at.0, at.1));
            }
        }
    }
    let mut replies: Vec<Option<Vec<Value>>> = vec![None; plan.groups.len()];
    for stage in 0..2 {
        let sends = plan
            .groups
            .iter()
            .enumerate()
            .filter(|(_, group)| group.stage == stage)
            .map(|(g, group)| {
                let link = link.clone();
                async move { Ok::<_, RedisError>((g, send_group(link, group).await?)) }
            });
        for (g, values) in futures::future::try_join_all(sends).await? {
            replies[g] = Some(values);
        }
    }
    let mut take = |(g, i): (usize, usize)| -> RedisResult<Value> {
        replies
            .get_mut(g)
            .and_then(|r| r.as_mut())
            .and_then(|r| r.get_mut(i))
            .map(|v| std::mem::replace(v, Value::Nil))
            .ok_or_else(|| RedisError::from((ErrorKind::ResponseError, "short pipeline reply")))
    };
    let mut out = Vec::with_capacity(plan.parts.len());
    for part in plan.parts {
        out.push(match part {
            Part::Mark => Value::Okay,
            Part::One(g, i) => take((g, i))?,
            Part::Keys(places, Combine::Concat) => Value::Array(
                places
                    .into_iter()
                    .map(&mut take)
                    .collect::<RedisResult<Vec<_>>>()?,
            ),
            Part::Keys(places, Combine::Sum) => {
                let mut sum = Value::Int(0);
                for p in places {
                    match (take(p)?, &mut sum) {
                        (Value::Int(n), Value::Int(s)) => *s += n,
                        (e @ Value::ServerError(_), _) => sum = e,
                        _ => {}
                    }
                }
                sum
            }
        });
    }
    Ok(out)
}

/// The key a command routes by, as the cluster client decides; `None` for
/// a command without one.
fn key_of<'a>(name: &[u8], args: &[&'a [u8]]) -> Option<&'a [u8]> {
    match name {
        b"PING" | b"ECHO" | b"SCAN" | b"INFO" | b"CLUSTER" | b"PUBLISH" | b"TIME" | b"DBSIZE"
        | b"SCRIPT" | b"FLUSHALL" | b"FLUSHDB" => None,
        b"EVAL" | b"EVALSHA" | b"FCALL" => {
            let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            (n > 0).then(|| args.get(3).copied()).flatten()
        }
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1).copied()
        }
        b"XGROUP" | b"XINFO" => args.get(2).copied(),
        _ => args.get(1).copied(),
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of the key, or of its hash
/// tag (the part between the first `{` and the next `}`, when not empty),
/// modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn the_slot_map_places_slots() {
        let node = |p: u16| ("127.0.0.1".to_string(), p);
        let map = SlotMap {
            ranges: vec![
                (0, 5460, node(7001)),
                (5461, 10922, node(7002)),
                (10923, 16000, node(7003)),
                (16001, 16383, node(7001)),
            ],
        };
        assert_eq!(map.master(0), Some(&node(7001)));
        assert_eq!(map.master(5460), Some(&node(7001)));
        assert_eq!(map.master(5461), Some(&node(7002)));
        assert_eq!(map.master(16383), Some(&node(7001)));
        assert_eq!(map.masters(), vec![node(7001), node(7002), node(7003)]);
        let gap = SlotMap {
            ranges: vec![(10, 20, node(7001))],
        };
        assert_eq!(gap.master(5), None);
        assert_eq!(gap.master(21), None);
    }

    #[test]
    fn cluster_urls() {
        let t = Target::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001/").unwrap();
        let Target::Cluster { seeds, .. } = &t else {
            panic!("not a cluster")
        };
        assert_eq!(seeds.len(), 2);
        assert!(t.single_info().is_none());
        let t = Target::parse("REDIS+CLUSTER://:secret@h1:7000,h2:7001").unwrap();
        let Target::Cluster { seeds, .. } = &t else {
            panic!("not a cluster")
        };
        assert_eq!(seeds[1].redis.password.as_deref(), Some("secret"));
        assert!(Target::parse("redis+cluster://").is_err());
        let tls = Target::parse("rediss+cluster://h1:7000").err().unwrap();
        assert!(tls.to_string().contains("not supported"), "{tls}");
        assert!(!Target::parse("redis://127.0.0.1:6379/0")
            .unwrap()
            .is_cluster());
    }

    #[test]
    fn keys_commands_route_by() {
        let k = |args: &[&[u8]]| key_of(&args[0].to_ascii_uppercase(), args).map(|k| k.to_vec());
        assert_eq!(k(&[b"GET", b"a"]), Some(b"a".to_vec()));
        assert_eq!(
            k(&[b"EVALSHA", b"sha", b"1", b"gen"]),
            Some(b"gen".to_vec())
        );
        assert_eq!(k(&[b"EVALSHA", b"sha", b"0"]), None);
        assert_eq!(
            k(&[b"XREADGROUP", b"GROUP", b"g", b"c", b"STREAMS", b"s", b">"]),
            Some(b"s".to_vec())
        );
        assert_eq!(
            k(&[b"XGROUP", b"CREATE", b"s", b"g", b"$"]),
            Some(b"s".to_vec())
        );
        assert_eq!(k(&[b"PING"]), None);
    }
}
