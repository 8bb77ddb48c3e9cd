//! Caller-ID reads share round trips (automatic pipelining), on a connection
//! of their own.
//!
//! Each caller-ID lookup is two reads, each with the check of the live
//! generation that every read makes: `ZRANGE` of the number's five-digit
//! `sx:` bucket (its members with the number are its owners), then `MGET` of those customers' `cust:` keys (their summaries;
//! the summary is kept once, not under each number). Sent one by one, every
//! read costs Redis (and this process) a socket read and a socket write,
//! which under load cost more than the commands. Here reads queue for one
//! task that sends whatever has queued as one pipeline: one generation
//! check, then one command per read, and hands each read its reply as soon
//! as it is read. While two pipelines are in flight the next reads queue, so
//! batches grow with the load; a lone read is sent at once. A lookup's
//! second read must find the generation of its first still live, or the
//! lookup starts over.
//!
//! The task owns its connection and speaks the protocol itself ([`resp`]):
//! no hop to the `redis` crate's connection task, and each reply is read
//! once, straight into the strings the lookup needs. A connection that
//! fails, closes, or leaves a pipeline unanswered for [`READ_TIMEOUT`] is
//! dropped, every lookup awaiting it fails as unavailable (crm-api then
//! answers from the store), and the next pipeline connects afresh, at most
//! once per [`RECONNECT_EVERY`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::{ConnectionAddr, ConnectionInfo};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::numbers;
use super::resp::{self, Frame};
use super::{gen_key, Keys, READ_TIMEOUT};
use crate::{IndexError, IndexResult};

/// Most lookups sent in one pipeline.
const MAX_BATCH: usize = 256;

/// Most pipelines awaiting their replies. With one, lookups that queue while
/// a pipeline is out wait for all of its replies, however late (Redis shares
/// the cores with this process); with two, they go out as soon as the task
/// has them. More would shrink batches: each costs Redis a read and a write.
const MAX_IN_FLIGHT: usize = 2;

/// Least time between two attempts to connect after one failed: meanwhile
/// lookups fail at once instead of each waiting for a connection.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// A pipeline whose generation check found another generation live is sent
/// again, at most this many times in all.
const MAX_ATTEMPTS: u8 = 3;

/// The owners of a number: each customer's id (its 16 bytes, the field of
/// the number's bucket) and its `cust:<id>` value.
pub(super) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What one queued read asks.
enum Ask {
    /// `ZRANGE` of the number's bucket (`sx:<bucket>`) in the live
    /// generation: who has the number `e164` (the members with it).
    Owners { e164: String, bucket: String },
    /// `MGET cust:<id> ...` in `generation`: their summaries.
    Summaries { generation: u64, ids: Vec<Vec<u8>> },
}

/// What a read answers.
enum Answer {
    Owners {
        generation: u64,
        ids: Vec<Vec<u8>>,
    },
    /// One value per id asked, `None` where there is none.
    Summaries(Vec<Option<Vec<u8>>>),
    /// Another generation is live than the one the summaries were asked in.
    Stale,
}

struct Lookup {
    ask: Ask,
    attempts: u8,
    reply: oneshot::Sender<IndexResult<Answer>>,
}

/// What the batching task needs, shared with the index that owns it.
#[derive(Clone)]
pub(super) struct Target {
    /// Where Redis is, and how to log in and select the database.
    pub info: ConnectionInfo,
    pub prefix: String,
    pub generation: Arc<AtomicU64>,
}

pub(super) struct PhoneReads {
    target: Target,
    /// The queue of the running task; replaced when that task is gone (its
    /// runtime shut down).
    queue: Mutex<Option<mpsc::UnboundedSender<Lookup>>>,
}

impl PhoneReads {
    pub(super) fn new(target: Target) -> Self {
        PhoneReads {
            target,
            queue: Mutex::new(None),
        }
    }

    /// Who has the number `e164` in the live generation, with their
    /// `cust:<id>` values read in the same generation.
    pub(super) async fn owners(&self, e164: &str) -> IndexResult<Entries> {
        let Some(bucket) = numbers::owners_bucket(e164) else {
            return Ok(Vec::new());
        };
        for _ in 0..MAX_ATTEMPTS {
            let ask = Ask::Owners {
                e164: e164.to_string(),
                bucket: bucket.to_string(),
            };
            let (generation, ids) = match self.ask(ask).await? {
                Answer::Owners { generation, ids } => (generation, ids),
                _ => return Err(IndexError::Internal("caller-ID read out of step".into())),
            };
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let ask = Ask::Summaries {
                generation,
                ids: ids.clone(),
            };
            match self.ask(ask).await? {
                Answer::Summaries(values) => {
                    return Ok(ids
                        .into_iter()
                        .zip(values)
                        .filter_map(|(id, v)| Some((id, v?)))
                        .collect())
                }
                Answer::Stale => continue,
                Answer::Owners { .. } => {
                    return Err(IndexError::Internal("caller-ID read out of step".into()))
                }
            }
        }
        Err(IndexError::Internal(
            "the index generation changed three times during one read".into(),
        ))
    }

    async fn ask(&self, ask: Ask) -> IndexResult<Answer> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Lookup {
            ask,
            attempts: 0,
            reply,
        });
        answer
            .await
            .map_err(|_| IndexError::Unavailable("the caller-ID read task stopped".into()))?
    }

    fn enqueue(&self, lookup: Lookup) {
        let mut queue = self.queue.lock();
        let lookup = match queue.as_ref() {
            Some(tx) => match tx.send(lookup) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => back,
            },
            None => lookup,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(self.target.clone(), rx));
        // Cannot fail: the receiver was just handed to the task.
        let _ = tx.send(lookup);
        *queue = Some(tx);
    }
}

/// An open connection: its two halves and what has been read but not yet
/// parsed.
pub(super) struct Link {
    pub(super) reader: Box<dyn AsyncRead + Send + Unpin>,
    pub(super) writer: Box<dyn AsyncWrite + Send + Unpin>,
    pub(super) buf: Vec<u8>,
}

impl Link {
    fn new(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        Link {
            reader: Box::new(reader),
            writer: Box::new(writer),
            buf: Vec::with_capacity(64 * 1024),
        }
    }
}

/// A pipeline sent and not fully answered.
struct Sent {
    /// The generation its keys are in.
    generation: u64,
    /// Its generation check has not been answered yet.
    check_pending: bool,
    /// The check found another generation live: its lookups go again.
    stale: bool,
    /// The check failed: so do its lookups.
    failed: Option<IndexError>,
    /// The lookups not answered yet, in the order their commands were sent.
    lookups: VecDeque<Lookup>,
    deadline: Instant,
}

/// The batching task's state.
struct Reads {
    target: Target,
    link: Option<Link>,
    in_flight: VecDeque<Sent>,
    /// When connecting last failed.
    refused_at: Option<Instant>,
    /// Lookups to send again against the new live generation.
    again: Vec<Lookup>,
}

/// Sends what has queued as one pipeline, with up to [`MAX_IN_FLIGHT`]
/// pipelines awaiting their replies; ends when the index (the only sender)
/// is dropped and every pipeline sent has been answered.
async fn serve(target: Target, mut queue: mpsc::UnboundedReceiver<Lookup>) {
    let mut reads = Reads {
        target,
        link: None,
        in_flight: VecDeque::new(),
        refused_at: None,
        again: Vec::new(),
    };
    let mut open = true;
    while open || !reads.in_flight.is_empty() {
        let room = open && reads.in_flight.len() < MAX_IN_FLIGHT;
        let deadline = reads.in_flight.front().map(|s| s.deadline);
        tokio::select! {
            biased;
            read = read_more(reads.link.as_mut()), if deadline.is_some() => {
                reads.received(read);
                if !reads.again.is_empty() {
                    let again = std::mem::take(&mut reads.again);
                    reads.send(again).await;
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                reads.drop_link(&IndexError::Unavailable(format!(
                    "Redis did not answer within {} ms",
                    READ_TIMEOUT.as_millis()
                )));
            }
            first = queue.recv(), if room => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                // Let the requests already runnable on this runtime queue
                // their lookups too (under load, several are): they go in
                // this pipeline instead of each in one of their own. Idle,
                // this costs nothing.
                tokio::task::yield_now().await;
                let mut batch = Vec::with_capacity(MAX_BATCH);
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                reads.send(batch).await;
            }
        }
    }
}

async fn read_more(link: Option<&mut Link>) -> std::io::Result<usize> {
    match link {
        Some(link) => {
            if link.buf.capacity() - link.buf.len() < 16 * 1024 {
                link.buf.reserve(64 * 1024);
            }
            link.reader.read_buf(&mut link.buf).await
        }
        // Not reached: pipelines in flight have a link.
        None => Err(std::io::ErrorKind::NotConnected.into()),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Reads {
    /// Sends `batch` as one pipeline, connecting first if need be; on
    /// failure, its lookups (and any in flight) fail.
    async fn send(&mut self, batch: Vec<Lookup>) {
        let mut batch = batch;
        batch.retain(|l| !l.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        if self.link.is_none() {
            if self
                .refused_at
                .is_some_and(|at| at.elapsed() < RECONNECT_EVERY)
            {
                fail(
                    batch,
                    &IndexError::Unavailable("Redis is unreachable".into()),
                );
                return;
            }
            match tokio::time::timeout(READ_TIMEOUT, connect(&self.target.info)).await {
                Ok(Ok(link)) => {
                    self.link = Some(link);
                    self.refused_at = None;
                }
                Ok(Err(e)) => {
                    self.refused_at = Some(Instant::now());
                    fail(batch, &e);
                    return;
                }
                Err(_) => {
                    self.refused_at = Some(Instant::now());
                    let e = IndexError::Unavailable(format!(
                        "could not connect to Redis within {} ms",
                        READ_TIMEOUT.as_millis()
                    ));
                    fail(batch, &e);
                    return;
                }
            }
        }
        let generation = self.target.generation.load(Ordering::Relaxed);
        // Summaries asked in another generation than the one live now (as
        // far as this task knows) start over.
        let (batch, stale): (Vec<Lookup>, Vec<Lookup>) = batch.into_iter().partition(
            |l| !matches!(&l.ask, Ask::Summaries { generation: g, .. } if *g != generation),
        );
        for l in stale {
            let _ = l.reply.send(Ok(Answer::Stale));
        }
        if batch.is_empty() {
            return;
        }
        let keys = Keys::of(&self.target.prefix, generation);
        let gen_key = gen_key(&self.target.prefix);
        let mut out = Vec::with_capacity(64 + batch.len() * (keys.base.len() + 40));
        resp::command(&mut out, &[b"HGET", gen_key.as_bytes(), b"current"]);
        for lookup in &batch {
            match &lookup.ask {
                Ask::Owners { bucket, .. } => {
                    let key = keys.sx(bucket);
                    resp::command(&mut out, &[b"ZRANGE", key.as_bytes(), b"0", b"-1"]);
                }
                Ask::Summaries { ids, .. } => {
                    let names: Vec<Vec<u8>> = ids.iter().map(|id| keys.cust_bytes(id)).collect();
                    let mut args: Vec<&[u8]> = Vec::with_capacity(1 + names.len());
                    args.push(b"MGET");
                    args.extend(names.iter().map(Vec::as_slice));
                    resp::command(&mut out, &args);
                }
            }
        }
        self.in_flight.push_back(Sent {
            generation,
            check_pending: true,
            stale: false,
            failed: None,
            lookups: batch.into(),
            deadline: Instant::now() + READ_TIMEOUT,
        });
        let written = match self.link.as_mut() {
            Some(link) => tokio::time::timeout(READ_TIMEOUT, link.writer.write_all(&out)).await,
            None => return,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.drop_link(&IndexError::Unavailable(format!(
                "writing to Redis failed: {e}"
            ))),
            Err(_) => self.drop_link(&IndexError::Unavailable(format!(
                "Redis did not take a pipeline within {} ms",
                READ_TIMEOUT.as_millis()
            ))),
        }
    }

    /// Hands out the replies that `read` completed.
    fn received(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(0) => {
                return self.drop_link(&IndexError::Unavailable(
                    "Redis closed the connection".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return self.drop_link(&IndexError::Unavailable(format!(
                    "reading from Redis failed: {e}"
                )))
            }
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let mut used = 0;
        let outcome = loop {
            match resp::parse(&link.buf[used..]) {
                Ok(Some((frame, len))) => {
                    used += len;
                    if let Err(e) = deliver(
                        &mut self.in_flight,
                        &mut self.again,
                        &self.target.generation,
                        frame,
                    ) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("Redis sent an unreadable reply: {}", e.0)),
            }
        };
        link.buf.drain(..used);
        if let Err(e) = outcome {
            self.drop_link(&IndexError::Unavailable(e));
        }
    }

    /// Closes the connection; every lookup awaiting it gets `e`.
    fn drop_link(&mut self, e: &IndexError) {
        self.link = None;
        for sent in self.in_flight.drain(..) {
            fail(sent.lookups, e);
        }
        for lookup in self.again.drain(..) {
            let _ = lookup.reply.send(Err(e.clone()));
        }
    }
}

/// The next reply goes to the oldest pipeline in flight: first its
/// generation check, then its lookups in order. A reply nothing awaits means
/// the connection is out of step.
fn deliver(
    in_flight: &mut VecDeque<Sent>,
    again: &mut Vec<Lookup>,
    generation_seen: &AtomicU64,
    frame: Frame<'_>,
) -> Result<(), String> {
    let Some(sent) = in_flight.front_mut() else {
        return Err("Redis sent a reply nothing asked for".into());
    };
    if sent.check_pending {
        sent.check_pending = false;
        match generation_of(&frame) {
            Ok(live) if live == sent.generation => {}
            Ok(live) => {
                generation_seen.store(live, Ordering::Relaxed);
                sent.stale = true;
            }
            Err(e) => sent.failed = Some(e),
        }
    } else {
        let Some(mut lookup) = sent.lookups.pop_front() else {
            return Err("Redis sent more replies than commands".into());
        };
        if let Some(e) = &sent.failed {
            let _ = lookup.reply.send(Err(e.clone()));
        } else if sent.stale && matches!(lookup.ask, Ask::Summaries { .. }) {
            let _ = lookup.reply.send(Ok(Answer::Stale));
        } else if sent.stale {
            lookup.attempts += 1;
            if lookup.attempts >= MAX_ATTEMPTS {
                let _ = lookup.reply.send(Err(IndexError::Internal(
                    "the index generation changed three times during one read".into(),
                )));
            } else {
                again.push(lookup);
            }
        } else {
            let answer = match &lookup.ask {
                Ask::Owners { e164, .. } => members_of(&frame).map(|members| Answer::Owners {
                    generation: sent.generation,
                    ids: numbers::owners_among(members, e164),
                }),
                Ask::Summaries { .. } => values_of(&frame).map(Answer::Summaries),
            };
            let _ = lookup.reply.send(answer);
        }
    }
    if !sent.check_pending && sent.lookups.is_empty() {
        in_flight.pop_front();
    }
    Ok(())
}

fn fail(lookups: impl IntoIterator<Item = Lookup>, e: &IndexError) {
    for lookup in lookups {
        let _ = lookup.reply.send(Err(e.clone()));
    }
}

/// `HGET <prefix>gen current`: the live generation, 0 before any rebuild.
fn generation_of(frame: &Frame<'_>) -> IndexResult<u64> {
    match frame {
        Frame::Bulk(None) => Ok(0),
        Frame::Bulk(Some(digits)) => std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| IndexError::Internal("index data: a malformed generation".into())),
        Frame::Error(e) => Err(redis_error(e)),
        _ => Err(IndexError::Internal(
            "Redis answered the generation check with something else".into(),
        )),
    }
}

/// A `ZRANGE` reply: the members.
fn members_of<'f>(frame: &'f Frame<'_>) -> IndexResult<Vec<&'f [u8]>> {
    let other = || IndexError::Internal("Redis answered ZRANGE with something else".into());
    match frame {
        Frame::Array(Some(items)) => items
            .iter()
            .map(|f| match f {
                Frame::Bulk(Some(bytes)) => Ok(*bytes),
                _ => Err(other()),
            })
            .collect(),
        Frame::Error(e) => Err(redis_error(e)),
        _ => Err(other()),
    }
}

/// An `MGET` reply: a value or nil per key.
fn values_of(frame: &Frame<'_>) -> IndexResult<Vec<Option<Vec<u8>>>> {
    let other = || IndexError::Internal("Redis answered MGET with something else".into());
    match frame {
        Frame::Array(Some(items)) => items
            .iter()
            .map(|f| match f {
                Frame::Bulk(Some(bytes)) => Ok(Some(bytes.to_vec())),
                Frame::Bulk(None) => Ok(None),
                _ => Err(other()),
            })
            .collect(),
        Frame::Error(e) => Err(redis_error(e)),
        _ => Err(other()),
    }
}

fn redis_error(message: &[u8]) -> IndexError {
    IndexError::Internal(format!("Redis: {}", String::from_utf8_lossy(message)))
}

/// Opens a connection to Redis and logs in, as the index's URL says (the
/// caller-ID reads' and the name searches' own connections).
pub(super) async fn connect(info: &ConnectionInfo) -> IndexResult<Link> {
    let unreachable = |e: std::io::Error| IndexError::Unavailable(format!("Redis: {e}"));
    let mut link = match &info.addr {
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(unreachable)?;
            stream.set_nodelay(true).map_err(unreachable)?;
            let (reader, writer) = stream.into_split();
            Link::new(reader, writer)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(unreachable)?;
            let (reader, writer) = stream.into_split();
            Link::new(reader, writer)
        }
        #[allow(unreachable_patterns)]
        _ => {
            return Err(IndexError::Unavailable(
                "the index's own connections reach Redis over TCP or a Unix socket only".into(),
            ))
        }
    };
    let redis = &info.redis;
    let mut hello = Vec::new();
    let mut expected = 0;
    if let Some(password) = &redis.password {
        match &redis.username {
            Some(user) => {
                resp::command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()])
            }
            None => resp::command(&mut hello, &[b"AUTH", password.as_bytes()]),
        }
        expected += 1;
    }
    if redis.db != 0 {
        resp::command(&mut hello, &[b"SELECT", redis.db.to_string().as_bytes()]);
        expected += 1;
    }
    if expected == 0 {
        return Ok(link);
    }
    link.writer.write_all(&hello).await.map_err(unreachable)?;
    let mut answered = 0;
    while answered < expected {
        let n = link
            .reader
            .read_buf(&mut link.buf)
            .await
            .map_err(unreachable)?;
        if n == 0 {
            return Err(IndexError::Unavailable(
                "Redis closed the connection while logging in".into(),
            ));
        }
        let mut used = 0;
        while answered < expected {
            match resp::parse(&link.buf[used..]) {
                Ok(Some((Frame::Simple(_), len))) => {
                    used += len;
                    answered += 1;
                }
                Ok(Some((Frame::Error(e), _))) => {
                    return Err(IndexError::Unavailable(format!(
                        "Redis refused the index's connection: {}",
                        String::from_utf8_lossy(e)
                    )))
                }
                Ok(Some(_)) | Err(_) => {
                    return Err(IndexError::Unavailable(
                        "Redis answered the log-in with something else".into(),
                    ))
                }
                Ok(None) => break,
            }
        }
        link.buf.drain(..used);
    }
    Ok(link)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ::redis::IntoConnectionInfo;
    use std::collections::HashMap;

    /// What a fake Redis does with one command of connection `conn`: the
    /// bytes to answer (maybe none), or `None` to close the connection.
    type Handler = Arc<dyn Fn(usize, &[Vec<u8>]) -> Option<Vec<u8>> + Send + Sync>;

    /// The commands a fake Redis received, each with its connection's number.
    type Log = Arc<Mutex<Vec<(usize, Vec<String>)>>>;

    /// A server speaking just enough RESP to stand in for Redis; returns
    /// its URL address part (`127.0.0.1:<port>`).
    async fn fake_redis(handler: Handler) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                conn += 1;
                let handler = handler.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut used = 0;
                        while let Some((frame, len)) = resp::parse(&buf[used..]).unwrap() {
                            used += len;
                            let Frame::Array(Some(items)) = frame else {
                                panic!("not a command")
                            };
                            let args: Vec<Vec<u8>> = items
                                .iter()
                                .map(|i| match i {
                                    Frame::Bulk(Some(b)) => b.to_vec(),
                                    other => panic!("not an argument: {other:?}"),
                                })
                                .collect();
                            match handler(conn, &args) {
                                Some(reply) => stream.write_all(&reply).await.unwrap(),
                                None => return,
                            }
                        }
                        buf.drain(..used);
                    }
                });
            }
        });
        addr
    }

    fn reads(url: &str) -> PhoneReads {
        PhoneReads::new(Target {
            info: url.into_connection_info().unwrap(),
            prefix: "p:".into(),
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    fn bulk(s: &str) -> Vec<u8> {
        format!("${}\r\n{s}\r\n", s.len()).into_bytes()
    }

    fn text(args: &[Vec<u8>]) -> Vec<String> {
        args.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    /// Answers like Redis holding `numbers` (`p:g<N>:<e164>` to the one
    /// customer id of 16 bytes that has it, and that customer's `cust:`
    /// value in the same generation: the number is a member of its bucket)
    /// and `p:gen current` from `live`; records every command.
    /// `after_owners` runs after each `ZRANGE`.
    fn store(
        numbers: HashMap<String, (String, String)>,
        live: Arc<Mutex<Option<u64>>>,
        log: Log,
        after_owners: Arc<dyn Fn() + Send + Sync>,
    ) -> Handler {
        let custs: HashMap<String, String> = numbers
            .iter()
            .filter_map(|(key, (id, value))| {
                let (generation, _) = key.split_once('+')?;
                Some((format!("{generation}cust:{id}"), value.clone()))
            })
            .collect();
        // Bucket key → its members.
        let mut buckets: HashMap<String, Vec<String>> = HashMap::new();
        for (key, (id, _)) in &numbers {
            let (generation, digits) = key.split_once('+').unwrap();
            let bucket = format!("{generation}sx:{}", &digits[digits.len() - 5..]);
            buckets
                .entry(bucket)
                .or_default()
                .push(format!("{id}+{digits}"));
        }
        Arc::new(move |conn, args| {
            let args = text(args);
            log.lock().push((conn, args.clone()));
            let reply = match args[0].as_str() {
                "AUTH" | "SELECT" => b"+OK\r\n".to_vec(),
                "HGET" => match *live.lock() {
                    Some(g) => bulk(&g.to_string()),
                    None => b"$-1\r\n".to_vec(),
                },
                "ZRANGE" => {
                    let members = buckets.get(&args[1]).cloned().unwrap_or_default();
                    let mut reply = format!("*{}\r\n", members.len()).into_bytes();
                    for m in &members {
                        reply.extend(bulk(m));
                    }
                    after_owners();
                    reply
                }
                "MGET" => {
                    let mut reply = format!("*{}\r\n", args.len() - 1).into_bytes();
                    for key in &args[1..] {
                        match custs.get(key) {
                            Some(v) => reply.extend(bulk(v)),
                            None => reply.extend(b"$-1\r\n"),
                        }
                    }
                    reply
                }
                _ => b"-ERR unknown command\r\n".to_vec(),
            };
            Some(reply)
        })
    }

    fn nothing() -> Arc<dyn Fn() + Send + Sync> {
        Arc::new(|| {})
    }

    #[tokio::test]
    async fn lookups_log_in_select_the_database_and_follow_the_live_generation() {
        let hashes = HashMap::from([
            (
                "p:g2:+6581226418".to_string(),
                ("customer-0000002".into(), "{\"g\":2}".into()),
            ),
            (
                "p:g3:+6581226418".to_string(),
                ("customer-0000003".into(), "{\"g\":3}".into()),
            ),
            (
                "p:g3:+6590000000".to_string(),
                ("customer-0000009".into(), "{}".into()),
            ),
        ]);
        let live = Arc::new(Mutex::new(Some(2)));
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = fake_redis(store(hashes, live.clone(), log.clone(), nothing())).await;
        let reads = reads(&format!("redis://ann:s3cret@{addr}/3"));

        // The first read finds generation 2 live (it assumed 0) and goes
        // again against it.
        let found = reads.owners("+6581226418").await.unwrap();
        assert_eq!(
            found,
            [(b"customer-0000002".to_vec(), b"{\"g\":2}".to_vec())]
        );
        assert_eq!(reads.owners("+6500000000").await.unwrap(), []);
        *live.lock() = Some(3);
        let (a, b) = tokio::join!(reads.owners("+6581226418"), reads.owners("+6590000000"));
        assert_eq!(a.unwrap()[0].0, b"customer-0000003");
        assert_eq!(b.unwrap()[0].0, b"customer-0000009");

        let log = log.lock();
        assert!(log.iter().all(|(conn, _)| *conn == 1), "one connection");
        assert_eq!(log[0].1, ["AUTH", "ann", "s3cret"]);
        assert_eq!(log[1].1, ["SELECT", "3"]);
        assert_eq!(log[2].1, ["HGET", "p:gen", "current"]);
        assert_eq!(log[3].1, ["ZRANGE", "p:g0:sx:26418", "0", "-1"]);
        assert_eq!(log[4].1, ["HGET", "p:gen", "current"]);
        assert_eq!(log[5].1, ["ZRANGE", "p:g2:sx:26418", "0", "-1"]);
        assert_eq!(log[6].1, ["HGET", "p:gen", "current"]);
        assert_eq!(log[7].1, ["MGET", "p:g2:cust:customer-0000002"]);
    }

    #[tokio::test]
    async fn a_generation_switch_between_the_two_reads_starts_the_lookup_over() {
        let numbers = HashMap::from([
            (
                "p:g2:+6581226418".to_string(),
                ("customer-0000002".into(), "old".into()),
            ),
            (
                "p:g3:+6581226418".to_string(),
                ("customer-0000003".into(), "new".into()),
            ),
        ]);
        let live = Arc::new(Mutex::new(Some(2)));
        let log = Arc::new(Mutex::new(Vec::new()));
        // A rebuild switches to generation 3 right after the owners are read
        // in generation 2 (the first time only).
        let switch = {
            let live = live.clone();
            Arc::new(move || {
                let mut live = live.lock();
                if *live == Some(2) {
                    *live = Some(3);
                }
            })
        };
        let addr = fake_redis(store(numbers, live.clone(), log.clone(), switch)).await;
        let reads = reads(&format!("redis://{addr}"));
        reads.target.generation.store(2, Ordering::Relaxed);
        let found = reads.owners("+6581226418").await.unwrap();
        assert_eq!(found, [(b"customer-0000003".to_vec(), b"new".to_vec())]);
        let sent: Vec<Vec<String>> = log
            .lock()
            .iter()
            .map(|(_, c)| c.clone())
            .filter(|c| c[0] != "HGET")
            .collect();
        assert_eq!(
            sent,
            [
                vec!["ZRANGE", "p:g2:sx:26418", "0", "-1"],
                // Answered after the switch: not used.
                vec!["MGET", "p:g2:cust:customer-0000002"],
                vec!["ZRANGE", "p:g3:sx:26418", "0", "-1"],
                vec!["MGET", "p:g3:cust:customer-0000003"],
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_log_in_or_a_missing_generation_key_is_an_answer_too() {
        let refuse: Handler = Arc::new(|_, args| {
            Some(match args[0].as_slice() {
                b"AUTH" => b"-WRONGPASS invalid username-password pair\r\n".to_vec(),
                _ => b"*0\r\n".to_vec(),
            })
        });
        let addr = fake_redis(refuse).await;
        let err = reads(&format!("redis://:wrong@{addr}"))
            .owners("+6581226418")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IndexError::Unavailable(m) if m.contains("WRONGPASS")),
            "{err:?}"
        );

        // No rebuild yet: generation 0, and a key of the wrong type is an
        // error for its lookup only.
        let wrongtype: Handler = Arc::new(|_, args| {
            Some(match (args[0].as_slice(), args.get(1).map(Vec::as_slice)) {
                (b"HGET", _) => b"$-1\r\n".to_vec(),
                (b"ZRANGE", Some(b"p:g0:sx:1")) => {
                    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
                        .to_vec()
                }
                (b"ZRANGE", _) => [b"*1\r\n".to_vec(), bulk("customer-0000001+2")].concat(),
                _ => [b"*1\r\n".to_vec(), bulk("{}")].concat(),
            })
        });
        let addr = fake_redis(wrongtype).await;
        let reads = reads(&format!("redis://{addr}"));
        let (bad, good) = tokio::join!(reads.owners("+1"), reads.owners("+2"));
        assert!(
            matches!(&bad, Err(IndexError::Internal(m)) if m.contains("WRONGTYPE")),
            "{bad:?}"
        );
        assert_eq!(
            good.unwrap(),
            [(b"customer-0000001".to_vec(), b"{}".to_vec())]
        );
    }

    #[tokio::test]
    async fn a_dropped_connection_fails_its_lookups_and_the_next_one_reconnects() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        // The first connection closes when asked for a hash; later ones answer.
        let handler: Handler = Arc::new(move |conn, args| {
            seen.lock().push(conn);
            match args[0].as_slice() {
                b"HGET" => Some(b"$-1\r\n".to_vec()),
                _ if conn == 1 => None,
                b"ZRANGE" => {
                    Some([b"*1\r\n".to_vec(), bulk("customer-0000001+6581226418")].concat())
                }
                _ => Some([b"*1\r\n".to_vec(), bulk("{}")].concat()),
            }
        });
        let addr = fake_redis(handler).await;
        let reads = reads(&format!("redis://{addr}"));
        let err = reads.owners("+6581226418").await.unwrap_err();
        assert!(matches!(err, IndexError::Unavailable(_)), "{err:?}");
        let found = reads.owners("+6581226418").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(log.lock().last(), Some(&2), "a second connection");
    }

    #[tokio::test]
    async fn an_unanswered_pipeline_fails_as_unavailable_and_an_unreachable_redis_at_once() {
        let silent: Handler = Arc::new(|_, _| Some(Vec::new()));
        let addr = fake_redis(silent).await;
        let reads_silent = reads(&format!("redis://{addr}"));
        let err = tokio::time::timeout(Duration::from_secs(30), reads_silent.owners("+6581226418"))
            .await
            .expect("the read gives up by itself")
            .unwrap_err();
        assert!(
            matches!(&err, IndexError::Unavailable(m) if m.contains("did not answer")),
            "{err:?}"
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let reads = reads(&format!("redis://127.0.0.1:{port}"));
        for _ in 0..2 {
            let err = reads.owners("+6581226418").await.unwrap_err();
            assert!(matches!(err, IndexError::Unavailable(_)), "{err:?}");
        }
    }
}
