//! Live push across instances: each crm-api instance tails the Redis event
//! stream (`<prefix>events`, where whichever instance holds the relay lease
//! publishes) into its own [`LiveHub`], so a desktop's stream can be held by
//! any instance.
//!
//! The tail reads with plain `XREAD` (no consumer group: every instance sees
//! every entry) from the last entry it saw, so a dropped connection resumes
//! where it stopped instead of skipping what arrived meanwhile.

use std::future::Future;
use std::time::Duration;

use crate::redis_link::{Link, LinkConfig, Target};
use crm_models::event::EventEnvelope;
use crm_models::live::LiveHub;
use redis::streams::StreamReadReply;

/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per `XREAD`.
const COUNT: usize = 1000;
/// The longest pause between attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Tails `stream_key` at `url` into `hub` until `shutdown` resolves, from the
/// entries added after it starts.
pub async fn tail_into_hub(
    url: String,
    stream_key: String,
    hub: LiveHub,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last: Option<String> = None;
    let mut conn: Option<Link> = None;
    let mut backoff = Duration::ZERO;
    loop {
        if !backoff.is_zero() {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        let step = async {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Target::parse(&url)?.connect(blocking()).await?),
            };
            let from = match &last {
                Some(id) => id.clone(),
                None => newest_id(c, &stream_key).await?,
            };
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream_key)
                .arg(&from)
                .query_async(c)
                .await;
            let reply = match read {
                // A cluster's failover turned the master into a replica
                // while the read waited: read again, from the new master.
                Err(e) if crate::redis_link::is_unblocked_by_failover(&e) => None,
                other => other?,
            };
            Ok::<_, redis::RedisError>((from, reply))
        };
        let result = tokio::select! {
            _ = &mut shutdown => return,
            r = step => r,
        };
        match result {
            Ok((from, reply)) => {
                backoff = Duration::ZERO;
                last = Some(from);
                let entries = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
                    .unwrap_or_default();
                let mut events = Vec::with_capacity(entries.len());
                for entry in entries {
                    last = Some(entry.id.clone());
                    let payload: Option<String> = entry.get("e");
                    match payload.map(|p| serde_json::from_str::<EventEnvelope>(&p)) {
                        Some(Ok(e)) => events.push(e),
                        _ => {
                            tracing::warn!(entry = %entry.id, "an event stream entry is not an event; not pushed live")
                        }
                    }
                }
                hub.push(events);
            }
            Err(e) => {
                if backoff.is_zero() {
                    tracing::warn!(error = %e, "cannot tail the event stream for live push; retrying");
                }
                conn = None;
                backoff = (backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
            }
        }
    }
}

/// A connection for reads that block up to [`BLOCK`].
fn blocking() -> LinkConfig {
    LinkConfig {
        response_timeout: Some(BLOCK * 2),
        ..LinkConfig::default()
    }
}

/// The id of the newest entry (`0-0` when the stream is empty or missing).
async fn newest_id(conn: &mut Link, key: &str) -> redis::RedisResult<String> {
    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(newest
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_else(|| "0-0".to_string()))
}

/// Pause after passing a wake on, so that a burst of writes is one message.
const WAKE_COALESCE: Duration = Duration::from_millis(5);

/// Wakes relays across instances: after a local write (`local_writes`) it
/// publishes on `channel`; when another instance publishes there, it wakes
/// this process's relay (`relay_wake`). Whichever instance holds the relay
/// lease then publishes events at once, not at its next poll. Runs until
/// `shutdown`; while Redis is unreachable relays simply poll.
pub async fn relay_wake_bridge(
    url: String,
    channel: String,
    local_writes: std::sync::Arc<tokio::sync::Notify>,
    relay_wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: impl Future<Output = ()>,
) {
    use futures::StreamExt;
    tokio::pin!(shutdown);
    // Who this process is on the channel (its own messages are not news).
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let me = format!("{}:{started}", std::process::id());
    let publish = async {
        let mut conn: Option<Link> = None;
        loop {
            local_writes.notified().await;
            if conn.is_none() {
                if let Ok(target) = Target::parse(&url) {
                    conn = target.connect(LinkConfig::default()).await.ok();
                }
            }
            if let Some(c) = conn.as_mut() {
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&me)
                    .query_async(c)
                    .await;
                if sent.is_err() {
                    conn = None;
                }
            }
            tokio::time::sleep(WAKE_COALESCE).await;
        }
    };
    let listen = async {
        let mut backoff = Duration::from_millis(100);
        // On a cluster a message published on any node reaches every node:
        // one node is subscribed to, the next one after a failure.
        let mut node = 0usize;
        loop {
            let subscribed = async {
                let client = Target::parse(&url)?.node_client(node)?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            match subscribed {
                Ok(mut pubsub) => {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let from: String = msg.get_payload().unwrap_or_default();
                        if from != me {
                            relay_wake.notify_one();
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot subscribe to relay wake-ups; relays poll")
                }
            }
            node = node.wrapping_add(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    };
    tokio::select! {
        _ = &mut shutdown => {}
        _ = publish => {}
        _ = listen => {}
    }
}
