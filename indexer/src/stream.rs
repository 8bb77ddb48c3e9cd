//! The event stream on Redis: `<prefix>events`, a Redis stream read in
//! consumer groups, and `<prefix>events:dead` for entries given up on.
//!
//! Each entry has one field `e`, the JSON of an [`EventEnvelope`]. A dead
//! letter has `e` (as it was), `error` and `id` (the entry's id in the stream).
//! Both streams are capped with approximate `MAXLEN ~ N` trimming.

use std::collections::HashMap;
use std::time::Duration;

use crate::redis_link::{Link, LinkConfig, Target};
use async_trait::async_trait;
use crm_models::event::EventEnvelope;
use crm_models::events::{DeadLetter, Delivery, EventError, EventLog, EventStream, PendingEntry};
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply, StreamReadReply,
};
use redis::{ErrorKind, RedisError};
use tokio::sync::Mutex;

/// How long a command may take before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStreamConfig {
    /// Prefix of every key, `crm:` by default.
    pub prefix: String,
    /// Approximate cap on the length of the stream and of the dead letters.
    pub max_len: usize,
}

impl Default for RedisStreamConfig {
    fn default() -> Self {
        RedisStreamConfig {
            prefix: "crm:".to_string(),
            max_len: 1_000_000,
        }
    }
}

/// The event log on a Redis stream.
pub struct RedisEventStream {
    conn: Link,
    /// Blocking reads get their own connection: a blocked `XREADGROUP` holds
    /// its connection, and publishing or acknowledging must not wait behind it.
    blocking: Mutex<Link>,
    stream_key: String,
    dead_key: String,
    max_len: usize,
}

impl RedisEventStream {
    /// Connects to Redis at `url` (`redis://host:port/db`).
    pub async fn connect(url: &str, config: RedisStreamConfig) -> Result<Self, EventError> {
        let target = Target::parse(url)
            .map_err(|e| EventError::Internal(format!("invalid redis url: {e}")))?;
        // Reconnect attempts wait about 1 s, then 2 s at most: redis-rs hands
        // `factor` to its backoff as the growth per attempt (its default of
        // 100 makes the second wait a minute).
        let reconnect = LinkConfig {
            connect_timeout: CONNECT_TIMEOUT,
            response_timeout: None,
            retries: 3,
            backoff: Some((2, 2_000)),
        };
        let commands = LinkConfig {
            response_timeout: Some(RESPONSE_TIMEOUT),
            ..reconnect
        };
        // No response timeout: a blocked read legitimately takes its time;
        // `read` bounds it instead.
        let conn = target.connect(commands).await.map_err(map_err)?;
        let blocking = target.connect(reconnect).await.map_err(map_err)?;
        Ok(RedisEventStream {
            conn,
            blocking: Mutex::new(blocking),
            stream_key: format!("{}events", config.prefix),
            dead_key: format!("{}events:dead", config.prefix),
            max_len: config.max_len.max(1),
        })
    }

    /// The key of the stream, `<prefix>events`.
    pub fn stream_key(&self) -> &str {
        &self.stream_key
    }

    /// The key of the dead letters, `<prefix>events:dead`.
    pub fn dead_key(&self) -> &str {
        &self.dead_key
    }

    async fn dead_letter_raw(
        &self,
        group: &str,
        id: &str,
        payload: &str,
        error: &str,
    ) -> Result<(), EventError> {
        let mut conn = self.conn.clone();
        let () = redis::cmd("XADD")
            .arg(&self.dead_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("e")
            .arg(payload)
            .arg("error")
            .arg(error)
            .arg("id")
            .arg(id)
            .exec_async(&mut conn)
            .await
            .map_err(map_err)?;
        let _: u64 = redis::cmd("XACK")
            .arg(&self.stream_key)
            .arg(group)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Decodes entries; one that is not an event goes straight to the dead
    /// letters, since no retry could make it one.
    async fn decode(
        &self,
        group: &str,
        entries: Vec<StreamId>,
        attempts: impl Fn(&str) -> u64,
    ) -> Result<Vec<Delivery>, EventError> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let payload: Option<String> = entry.get("e");
            let decoded = payload
                .as_deref()
                .ok_or_else(|| "the entry has no field e".to_string())
                .and_then(|json| {
                    serde_json::from_str::<EventEnvelope>(json)
                        .map_err(|e| format!("the entry is not an event: {e}"))
                });
            match decoded {
                Ok(envelope) => out.push(Delivery {
                    attempts: attempts(&entry.id),
                    id: entry.id,
                    envelope,
                }),
                Err(error) => {
                    tracing::warn!(entry_id = %entry.id, %error, "undecodable stream entry moved to the dead letters");
                    self.dead_letter_raw(
                        group,
                        &entry.id,
                        payload.as_deref().unwrap_or(""),
                        &error,
                    )
                    .await?;
                }
            }
        }
        Ok(out)
    }
}

/// An unreachable or failing connection is `Unavailable` (worth retrying);
/// anything Redis itself refused is `Internal`.
fn map_err(e: RedisError) -> EventError {
    let unavailable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
        );
    if unavailable {
        EventError::Unavailable(e.to_string())
    } else {
        EventError::Internal(e.to_string())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl EventStream for RedisEventStream {
    async fn publish(&self, events: Vec<EventEnvelope>) -> Result<(), EventError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for envelope in &events {
            let json = serde_json::to_string(envelope)
                .map_err(|e| EventError::Internal(format!("event not serialisable: {e}")))?;
            pipe.cmd("XADD")
                .arg(&self.stream_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("e")
                .arg(json)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.exec_async(&mut conn).await.map_err(map_err)
    }
}

#[async_trait]
impl EventLog for RedisEventStream {
    async fn ensure_group(&self, group: &str) -> Result<(), EventError> {
        let mut conn = self.conn.clone();
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream_key)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(map_err),
        }
    }

    async fn read(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, EventError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1));
        let reply: Option<StreamReadReply> = if block.is_zero() {
            cmd.arg("STREAMS").arg(&self.stream_key).arg(">");
            let mut conn = self.conn.clone();
            cmd.query_async(&mut conn).await.map_err(map_err)?
        } else {
            // `BLOCK 0` would mean forever.
            cmd.arg("BLOCK")
                .arg(millis(block).max(1))
                .arg("STREAMS")
                .arg(&self.stream_key)
                .arg(">");
            let mut conn = self.blocking.lock().await;
            let limit = block + RESPONSE_TIMEOUT;
            let read = tokio::time::timeout(limit, cmd.query_async(&mut *conn))
                .await
                .map_err(|_| EventError::Unavailable("blocking read timed out".into()))?;
            match read {
                // The master became a replica while the read waited (a
                // cluster's failover): nothing was delivered, and the next
                // read goes to the new master.
                Err(e) if crate::redis_link::is_unblocked_by_failover(&e) => None,
                other => other.map_err(map_err)?,
            }
        };
        let entries = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        self.decode(group, entries, |_| 1).await
    }

    async fn ack(&self, group: &str, ids: &[String]) -> Result<(), EventError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("XACK")
            .arg(&self.stream_key)
            .arg(group)
            .arg(ids)
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn claim_stale(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, EventError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut claimed: Vec<StreamId> = Vec::new();
        let mut cursor = "0-0".to_string();
        // XAUTOCLAIM scans a bounded part of the pending list per call; follow
        // its cursor until enough are claimed or the list was walked once.
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream_key)
                .arg(group)
                .arg(consumer)
                .arg(millis(min_idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg(count.saturating_sub(claimed.len()))
                .query_async(&mut conn)
                .await
                .map_err(map_err)?;
            if !reply.deleted_ids.is_empty() {
                tracing::warn!(
                    group,
                    count = reply.deleted_ids.len(),
                    "pending entries were trimmed from the stream before they were acknowledged"
                );
            }
            claimed.extend(reply.claimed);
            cursor = reply.next_stream_id;
            if claimed.len() >= count || cursor == "0-0" {
                break;
            }
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // XAUTOCLAIM does not say how often an entry was delivered; ask for
        // each claimed entry in one round trip.
        let mut pipe = redis::pipe();
        for entry in &claimed {
            pipe.cmd("XPENDING")
                .arg(&self.stream_key)
                .arg(group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> =
            pipe.query_async(&mut conn).await.map_err(map_err)?;
        let attempts: HashMap<String, u64> = replies
            .into_iter()
            .flat_map(|r| r.ids)
            .map(|p| (p.id, p.times_delivered as u64))
            .collect();
        self.decode(group, claimed, |id| attempts.get(id).copied().unwrap_or(1))
            .await
    }

    async fn dead_letter(
        &self,
        group: &str,
        delivery: &Delivery,
        error: &str,
    ) -> Result<(), EventError> {
        let payload = serde_json::to_string(&delivery.envelope)
            .map_err(|e| EventError::Internal(format!("event not serialisable: {e}")))?;
        self.dead_letter_raw(group, &delivery.id, &payload, error)
            .await
    }

    async fn pending(&self, group: &str, count: usize) -> Result<Vec<PendingEntry>, EventError> {
        let mut conn = self.conn.clone();
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream_key)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| PendingEntry {
                id: p.id,
                consumer: p.consumer,
                idle: Duration::from_millis(p.last_delivered_ms as u64),
                attempts: p.times_delivered as u64,
            })
            .collect())
    }

    async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, EventError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.dead_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| DeadLetter {
                id: entry.get("id").unwrap_or_default(),
                error: entry.get("error").unwrap_or_default(),
                envelope: entry
                    .get::<String>("e")
                    .and_then(|json| serde_json::from_str(&json).ok()),
            })
            .collect())
    }

    async fn entry_count(&self) -> Result<u64, EventError> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(&self.stream_key)
            .query_async(&mut conn)
            .await
            .map_err(map_err)
    }
}
