//! Searches (names, emails, numbers) read on connections of their own, one
//! search at a time on each.
//!
//! A search is a few pipelines in a row, each waiting for the one before.
//! On the shared multiplexed connection every pipeline goes through the
//! `redis` crate's connection task and back (two task wake-ups, often
//! across threads, and a general reply parser) before the search can go
//! on: under load, more of this process's CPU than the search itself. Here a
//! search takes an idle connection for all its rounds and writes and reads
//! it itself ([`resp`]), so a reply wakes the search directly.
//!
//! At most [`MAX_LINKS`] connections are open; a search that finds none idle
//! and none to open, or Redis refusing connections (for
//! [`RECONNECT_EVERY`] after a refusal), uses the shared connection. A
//! connection is given back only after a complete answer: one that failed,
//! timed out, or whose search was dropped mid-read is closed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::{ConnectionInfo, Pipeline, Value};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::phone_reads::{connect, Link};
use super::resp::{self, Frame};
use crate::{IndexError, IndexResult};

/// Most connections open for searches (Redis's default allows 10,000
/// clients; a crm-api instance serves at most a few dozen searches at once).
pub(super) const MAX_LINKS: usize = 32;

/// Least time between two attempts to connect after one failed.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

pub(super) struct SearchLinks {
    info: ConnectionInfo,
    idle: Mutex<Vec<Link>>,
    /// Connections open, idle or in use.
    open: AtomicUsize,
    refused_at: Mutex<Option<Instant>>,
    /// Pipelines sent so far, for benchmarks.
    sent: AtomicU64,
}

/// A connection taken for one search; given back when dropped, unless it
/// failed or was dropped mid-read.
pub(super) struct Taken<'a> {
    links: &'a SearchLinks,
    link: Option<Link>,
}

impl SearchLinks {
    pub(super) fn new(info: ConnectionInfo) -> Self {
        SearchLinks {
            info,
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            refused_at: Mutex::new(None),
            sent: AtomicU64::new(0),
        }
    }

    /// An idle connection, or a new one; `None` when there are
    /// [`MAX_LINKS`] already, or connecting failed (the search then uses
    /// the shared connection, which says whether Redis is reachable).
    pub(super) async fn take(&self) -> Option<Taken<'_>> {
        if let Some(link) = self.idle.lock().pop() {
            return Some(Taken {
                links: self,
                link: Some(link),
            });
        }
        if self
            .refused_at
            .lock()
            .is_some_and(|at| at.elapsed() < RECONNECT_EVERY)
        {
            return None;
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= MAX_LINKS {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        match tokio::time::timeout(super::READ_TIMEOUT, connect(&self.info)).await {
            Ok(Ok(link)) => Some(Taken {
                links: self,
                link: Some(link),
            }),
            Ok(Err(_)) | Err(_) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                *self.refused_at.lock() = Some(Instant::now());
                None
            }
        }
    }
}

impl SearchLinks {
    /// Pipelines sent on these connections so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        match self.link.take() {
            Some(link) => self.links.idle.lock().push(link),
            None => {
                self.links.open.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// How a pipeline on a taken connection failed.
pub(super) enum Failed {
    /// Writing or reading the connection failed before `limit`: it may have
    /// been closed while idle (Redis restarted); the shared connection may
    /// do better.
    Link(IndexError),
    /// No complete answer within `limit`, or an answer that is an error.
    Answer(IndexError),
}

impl Taken<'_> {
    /// Runs `pipe` and returns its replies, as `query_async` would; the
    /// connection is closed on any failure but a Redis error reply.
    pub(super) async fn query(
        &mut self,
        pipe: &Pipeline,
        limit: Duration,
    ) -> Result<Vec<Value>, Failed> {
        let Some(mut link) = self.link.take() else {
            return Err(Failed::Link(IndexError::Unavailable(
                "the search connection was closed".into(),
            )));
        };
        self.links.sent.fetch_add(1, Ordering::Relaxed);
        let expected = pipe.len();
        let out = pipe.get_packed_pipeline();
        match tokio::time::timeout(limit, exchange(&mut link, &out, expected)).await {
            Ok(Ok(replies)) => {
                // Every reply was read: the connection is in step, even
                // after an error reply.
                self.link = Some(link);
                replies.map_err(Failed::Answer)
            }
            Ok(Err(e)) => Err(Failed::Link(IndexError::Unavailable(format!(
                "Redis search connection: {e}"
            )))),
            Err(_) => Err(Failed::Answer(IndexError::Unavailable(format!(
                "Redis did not answer within {} ms",
                limit.as_millis()
            )))),
        }
    }
}

/// Writes `out` and reads `expected` replies. The outer error is the
/// connection's (it is then closed); the inner one an error reply of Redis,
/// after every reply was read (the connection stays usable).
async fn exchange(
    link: &mut Link,
    out: &[u8],
    expected: usize,
) -> std::io::Result<IndexResult<Vec<Value>>> {
    link.writer.write_all(out).await?;
    let mut values = Vec::with_capacity(expected);
    let mut error: Option<IndexError> = None;
    let mut used = 0;
    while values.len() < expected {
        match resp::parse(&link.buf[used..]) {
            Ok(Some((frame, len))) => {
                used += len;
                match value_of(frame) {
                    Ok(v) => values.push(v),
                    Err(e) => {
                        error.get_or_insert(e);
                        values.push(Value::Nil);
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("an unreadable reply: {}", e.0),
                ))
            }
        }
        link.buf.drain(..used);
        used = 0;
        if link.buf.capacity() - link.buf.len() < 16 * 1024 {
            link.buf.reserve(64 * 1024);
        }
        if link.reader.read_buf(&mut link.buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "Redis closed the connection",
            ));
        }
    }
    link.buf.drain(..used);
    Ok(match error {
        Some(e) => Err(e),
        None => Ok(values),
    })
}

/// A reply as the `redis` crate gives it, so that both connections' replies
/// decode alike; an error reply as an error.
fn value_of(frame: Frame<'_>) -> IndexResult<Value> {
    Ok(match frame {
        Frame::Simple(b"OK") => Value::Okay,
        Frame::Simple(s) => Value::SimpleString(String::from_utf8_lossy(s).into_owned()),
        Frame::Error(e) => {
            return Err(IndexError::Internal(format!(
                "Redis: {}",
                String::from_utf8_lossy(e)
            )))
        }
        Frame::Integer(i) => Value::Int(i),
        Frame::Bulk(None) | Frame::Array(None) => Value::Nil,
        Frame::Bulk(Some(bytes)) => Value::BulkString(bytes.to_vec()),
        Frame::Array(Some(items)) => Value::Array(
            items
                .into_iter()
                .map(value_of)
                .collect::<IndexResult<Vec<_>>>()?,
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::READ_TIMEOUT;
    use super::*;
    use ::redis::IntoConnectionInfo;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// What the fake Redis answers to one command: bytes, nothing (stay
    /// silent), or `None` to close the connection.
    type Answer = Arc<dyn Fn(&[Vec<u8>]) -> Option<Vec<u8>> + Send + Sync>;

    /// A server speaking enough RESP to stand in for Redis; returns its
    /// URL and how many connections it accepted.
    async fn fake_redis(answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/0", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let mut used = 0;
                        let mut out = Vec::new();
                        while let Ok(Some((frame, len))) = resp::parse(&buf[used..]) {
                            used += len;
                            let Frame::Array(Some(items)) = frame else {
                                return;
                            };
                            let args: Vec<Vec<u8>> = items
                                .iter()
                                .map(|f| match f {
                                    Frame::Bulk(Some(b)) => b.to_vec(),
                                    _ => Vec::new(),
                                })
                                .collect();
                            match answer(&args) {
                                Some(bytes) => out.extend(bytes),
                                None => return,
                            }
                        }
                        buf.drain(..used);
                        if socket.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn links(url: &str) -> SearchLinks {
        SearchLinks::new(url.into_connection_info().unwrap())
    }

    fn two_commands() -> Pipeline {
        let mut pipe = ::redis::pipe();
        pipe.cmd("HEXISTS").arg("k").arg("f");
        pipe.cmd("GET").arg("big");
        pipe
    }

    #[tokio::test]
    async fn a_search_connection_answers_and_is_used_again() {
        let big = "x".repeat(100_000);
        let reply = format!("${}\r\n{big}\r\n", big.len());
        let (url, accepted) = fake_redis(Arc::new(move |args: &[Vec<u8>]| {
            Some(match args[0].as_slice() {
                b"HEXISTS" => b":1\r\n".to_vec(),
                b"GET" => reply.clone().into_bytes(),
                _ => b"-ERR unknown command\r\n".to_vec(),
            })
        }))
        .await;
        let links = links(&url);
        for _ in 0..3 {
            let mut taken = links.take().await.unwrap();
            let Ok(values) = taken.query(&two_commands(), READ_TIMEOUT).await else {
                panic!("no answer");
            };
            assert_eq!(
                values,
                vec![Value::Int(1), Value::BulkString(big.clone().into_bytes())]
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(links.sent(), 3);

        // An error reply fails the pipeline; every reply was read, so the
        // connection stays in use.
        let mut taken = links.take().await.unwrap();
        let mut unknown = ::redis::pipe();
        unknown.cmd("NOPE");
        unknown.cmd("HEXISTS").arg("k").arg("f");
        match taken.query(&unknown, READ_TIMEOUT).await {
            Err(Failed::Answer(IndexError::Internal(e))) => assert!(e.contains("unknown command")),
            _ => panic!("an error reply should fail the pipeline"),
        }
        let Ok(values) = taken.query(&two_commands(), READ_TIMEOUT).await else {
            panic!("the connection should still answer");
        };
        assert_eq!(values[0], Value::Int(1));
        drop(taken);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(links.open.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unanswered_or_closed_connection_is_not_used_again() {
        let (url, accepted) = fake_redis(Arc::new(|args: &[Vec<u8>]| match args[0].as_slice() {
            b"SILENT" => Some(Vec::new()),
            b"CLOSE" => None,
            _ => Some(b":1\r\n".to_vec()),
        }))
        .await;
        let links = links(&url);
        let mut silent = ::redis::pipe();
        silent.cmd("SILENT");
        let mut taken = links.take().await.unwrap();
        match taken.query(&silent, Duration::from_millis(50)).await {
            Err(Failed::Answer(IndexError::Unavailable(_))) => {}
            _ => panic!("an unanswered pipeline should time out"),
        }
        drop(taken);
        assert_eq!(links.open.load(Ordering::SeqCst), 0);
        assert!(links.idle.lock().is_empty());

        let mut close = ::redis::pipe();
        close.cmd("CLOSE");
        let mut taken = links.take().await.unwrap();
        assert!(matches!(
            taken.query(&close, READ_TIMEOUT).await,
            Err(Failed::Link(IndexError::Unavailable(_)))
        ));
        drop(taken);
        assert_eq!(links.open.load(Ordering::SeqCst), 0);

        // A search dropped while waiting for its answer closes its
        // connection too.
        let mut taken = links.take().await.unwrap();
        let waiting = taken.query(&silent, READ_TIMEOUT);
        assert!(tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .is_err());
        drop(taken);
        assert_eq!(links.open.load(Ordering::SeqCst), 0);

        let mut taken = links.take().await.unwrap();
        assert!(taken.query(&two_commands(), READ_TIMEOUT).await.is_ok());
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn no_connection_when_redis_refuses_or_all_are_taken() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = links(&format!("redis://127.0.0.1:{port}/0"));
        assert!(refused.take().await.is_none());
        assert_eq!(refused.open.load(Ordering::SeqCst), 0);

        let (url, _) = fake_redis(Arc::new(|_: &[Vec<u8>]| Some(b":1\r\n".to_vec()))).await;
        let links = links(&url);
        let mut all = Vec::new();
        for _ in 0..MAX_LINKS {
            all.push(links.take().await.unwrap());
        }
        assert!(links.take().await.is_none());
        all.pop();
        assert!(links.take().await.is_some());
    }
}
