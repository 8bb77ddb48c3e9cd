//! One conformance suite for [`EventLog`], run against every adapter: the
//! in-process log and the Redis stream. The worker runs on both as well.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is how a test fails

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crm_indexer::stream::{RedisEventStream, RedisStreamConfig};
use crm_indexer::worker::{run_worker, ApplyError, EventHandler, WorkerConfig};
use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::events::{EventLog, EventStream, MemoryEventStream};
use crm_models::CustomerId;

const GROUP: &str = "indexer";

async fn memory_log(max_len: usize) -> Arc<dyn EventLog> {
    Arc::new(MemoryEventStream::new(max_len))
}

async fn redis_log(max_len: usize) -> Arc<dyn EventLog> {
    let url = support::redis_server::url();
    let config = RedisStreamConfig {
        prefix: support::redis_server::unique_prefix(),
        max_len,
    };
    Arc::new(RedisEventStream::connect(&url, config).await.unwrap())
}

/// The Redis stream on a Redis Cluster of three masters with a replica each.
async fn redis_cluster_log(max_len: usize) -> Arc<dyn EventLog> {
    let url = support::redis_cluster::url();
    let config = RedisStreamConfig {
        prefix: support::redis_cluster::unique_prefix(),
        max_len,
    };
    Arc::new(RedisEventStream::connect(&url, config).await.unwrap())
}

/// The suite, once per adapter: `event_log_suite!(module, factory)` where
/// `factory(max_len)` makes an empty log.
macro_rules! event_log_suite {
    ($adapter:ident, $make:path) => {
        mod $adapter {
            use super::*;

            async fn log() -> Arc<dyn EventLog> {
                $make(100_000).await
            }

            #[tokio::test]
            async fn a_group_reads_entries_in_publish_order() {
                cases::a_group_reads_entries_in_publish_order(log().await).await
            }

            #[tokio::test]
            async fn a_blocked_read_wakes_on_publish() {
                cases::a_blocked_read_wakes_on_publish(log().await).await
            }

            #[tokio::test]
            async fn ack_removes_from_pending() {
                cases::ack_removes_from_pending(log().await).await
            }

            #[tokio::test]
            async fn an_unacked_entry_is_claimed_after_min_idle() {
                cases::an_unacked_entry_is_claimed_after_min_idle(log().await).await
            }

            #[tokio::test]
            async fn consumers_of_a_group_split_the_entries() {
                cases::consumers_of_a_group_split_the_entries(log().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_consumers_never_share_an_entry() {
                cases::concurrent_consumers_never_share_an_entry(log().await).await
            }

            #[tokio::test]
            async fn a_dead_letter_keeps_the_error_and_is_acked() {
                cases::a_dead_letter_keeps_the_error_and_is_acked(log().await).await
            }

            #[tokio::test]
            async fn trimming_keeps_about_max_len() {
                cases::trimming_keeps_about_max_len($make(100).await, 100).await
            }

            #[tokio::test]
            async fn reading_without_a_group_fails() {
                cases::reading_without_a_group_fails(log().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn worker_dead_letters_a_poison_event_and_applies_the_rest() {
                cases::worker_dead_letters_a_poison_event_and_applies_the_rest(log().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_second_worker_finishes_what_a_killed_one_left() {
                cases::a_second_worker_finishes_what_a_killed_one_left(log().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn worker_finishes_its_batch_on_shutdown() {
                cases::worker_finishes_its_batch_on_shutdown(log().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn worker_waits_out_an_unavailable_handler() {
                cases::worker_waits_out_an_unavailable_handler(log().await).await
            }
        }
    };
}

event_log_suite!(memory, memory_log);
event_log_suite!(redis, redis_log);
event_log_suite!(redis_cluster, redis_cluster_log);

/// `n` distinct events, each about its own new customer.
fn events(n: usize) -> Vec<EventEnvelope> {
    (0..n)
        .map(|_| EventEnvelope::about(CustomerId::new(), DomainEvent::CustomerCreated {}))
        .collect()
}

fn ids_of(events: &[EventEnvelope]) -> Vec<CustomerId> {
    events
        .iter()
        .map(|e| e.customer_id.unwrap_or_default())
        .collect()
}

/// Polls `check` until it holds; fails the test after 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast_worker(consumer: &str) -> WorkerConfig {
    WorkerConfig {
        batch_size: 100,
        block: Duration::from_millis(50),
        max_attempts: 3,
        claim_interval: Duration::from_millis(50),
        min_idle: Duration::from_millis(300),
        max_backoff: Duration::from_millis(100),
        ..WorkerConfig::new(consumer)
    }
}

/// Records what it applied; can reject a poison event, hang on a given call,
/// report itself unavailable for the first calls, or take its time.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<CustomerId>>,
    calls: AtomicUsize,
    poison: Option<CustomerId>,
    hang_on_call: Option<usize>,
    unavailable_calls: usize,
    delay: Duration,
}

impl Recorder {
    fn applied(&self) -> HashSet<CustomerId> {
        self.applied.lock().unwrap().iter().copied().collect()
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn apply(&self, events: &[EventEnvelope]) -> Result<(), ApplyError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(call) == self.hang_on_call {
            std::future::pending::<()>().await;
        }
        if call <= self.unavailable_calls {
            return Err(ApplyError::Unavailable("the index is down".into()));
        }
        if let Some(poison) = self.poison {
            if events
                .iter()
                .any(|e| e.customer_id.unwrap_or_default() == poison)
            {
                return Err(ApplyError::Rejected("poison event".into()));
            }
        }
        tokio::time::sleep(self.delay).await;
        self.applied.lock().unwrap().extend(ids_of(events));
        Ok(())
    }
}

async fn pending_count(log: &Arc<dyn EventLog>) -> usize {
    log.pending(GROUP, 10_000).await.unwrap().len()
}

mod cases {
    use super::*;

    pub async fn a_group_reads_entries_in_publish_order(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        log.ensure_group(GROUP).await.unwrap();
        let first = events(3);
        let second = events(2);
        log.publish(first.clone()).await.unwrap();
        log.publish(second.clone()).await.unwrap();
        let published: Vec<EventEnvelope> = first.into_iter().chain(second).collect();

        let got = log.read(GROUP, "c", 10, Duration::ZERO).await.unwrap();
        assert_eq!(
            got.iter().map(|d| d.envelope.clone()).collect::<Vec<_>>(),
            published
        );
        assert!(got.iter().all(|d| d.attempts == 1));
        let ids: HashSet<&String> = got.iter().map(|d| &d.id).collect();
        assert_eq!(ids.len(), got.len());
        assert!(log
            .read(GROUP, "c", 10, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty());

        // Another group sees every entry too, from the start.
        log.ensure_group("other").await.unwrap();
        let other = log.read("other", "c", 10, Duration::ZERO).await.unwrap();
        assert_eq!(other.len(), published.len());
    }

    pub async fn a_blocked_read_wakes_on_publish(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let got = log
                    .read(GROUP, "c", 10, Duration::from_secs(10))
                    .await
                    .unwrap();
                (got, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let published = events(1);
        log.publish(published.clone()).await.unwrap();
        let (got, waited) = reader.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].envelope, published[0]);
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    pub async fn ack_removes_from_pending(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        log.publish(events(3)).await.unwrap();
        let got = log.read(GROUP, "c", 10, Duration::ZERO).await.unwrap();
        let pending = log.pending(GROUP, 10).await.unwrap();
        assert_eq!(pending.len(), 3);
        assert!(pending.iter().all(|p| p.consumer == "c" && p.attempts == 1));

        let acked = vec![got[0].id.clone(), got[1].id.clone()];
        log.ack(GROUP, &acked).await.unwrap();
        let pending = log.pending(GROUP, 10).await.unwrap();
        assert_eq!(
            pending.iter().map(|p| &p.id).collect::<Vec<_>>(),
            vec![&got[2].id]
        );
        // Acknowledging twice is harmless.
        log.ack(GROUP, &acked).await.unwrap();
        log.ack(GROUP, &[got[2].id.clone()]).await.unwrap();
        assert_eq!(pending_count(&log).await, 0);
    }

    pub async fn an_unacked_entry_is_claimed_after_min_idle(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        log.publish(events(1)).await.unwrap();
        let read = log.read(GROUP, "a", 10, Duration::ZERO).await.unwrap();
        let min_idle = Duration::from_millis(300);
        assert!(log
            .claim_stale(GROUP, "b", min_idle, 10)
            .await
            .unwrap()
            .is_empty());

        tokio::time::sleep(min_idle + Duration::from_millis(100)).await;
        let claimed = log.claim_stale(GROUP, "b", min_idle, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, read[0].id);
        assert_eq!(claimed[0].envelope, read[0].envelope);
        assert_eq!(claimed[0].attempts, 2);
        let pending = log.pending(GROUP, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].consumer, "b");
        assert_eq!(pending[0].attempts, 2);

        // A claim makes the entry fresh again.
        assert!(log
            .claim_stale(GROUP, "c", min_idle, 10)
            .await
            .unwrap()
            .is_empty());
        log.ack(GROUP, &[claimed[0].id.clone()]).await.unwrap();
        tokio::time::sleep(min_idle + Duration::from_millis(100)).await;
        assert!(log
            .claim_stale(GROUP, "c", min_idle, 10)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn consumers_of_a_group_split_the_entries(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        let published = events(100);
        log.publish(published.clone()).await.unwrap();
        let mut seen: Vec<String> = Vec::new();
        let mut applied: Vec<CustomerId> = Vec::new();
        let mut per_consumer = [0usize; 2];
        loop {
            let mut got_any = false;
            for (i, consumer) in ["a", "b"].into_iter().enumerate() {
                let got = log.read(GROUP, consumer, 7, Duration::ZERO).await.unwrap();
                got_any |= !got.is_empty();
                per_consumer[i] += got.len();
                seen.extend(got.iter().map(|d| d.id.clone()));
                applied.extend(
                    got.iter()
                        .map(|d| d.envelope.customer_id.unwrap_or_default()),
                );
            }
            if !got_any {
                break;
            }
        }
        assert_eq!(applied, ids_of(&published), "every entry once, in order");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 100);
        assert!(per_consumer.iter().all(|&n| n >= 49), "{per_consumer:?}");
        let pending = log.pending(GROUP, 1000).await.unwrap();
        assert_eq!(pending.len(), 100);
        assert_eq!(
            pending.iter().filter(|p| p.consumer == "a").count(),
            per_consumer[0]
        );
    }

    pub async fn concurrent_consumers_never_share_an_entry(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        let published = events(500);
        let total = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|consumer| {
                let (log, total) = (log.clone(), total.clone());
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while total.load(Ordering::SeqCst) < 500 {
                        let got = log
                            .read(GROUP, consumer, 10, Duration::from_millis(50))
                            .await
                            .unwrap();
                        total.fetch_add(got.len(), Ordering::SeqCst);
                        mine.extend(
                            got.into_iter()
                                .map(|d| d.envelope.customer_id.unwrap_or_default()),
                        );
                        tokio::task::yield_now().await;
                    }
                    mine
                })
            })
            .collect();
        for chunk in published.chunks(50) {
            log.publish(chunk.to_vec()).await.unwrap();
        }
        let mut all = HashSet::new();
        for reader in readers {
            for id in reader.await.unwrap() {
                assert!(all.insert(id), "{id} delivered to both consumers");
            }
        }
        assert_eq!(all, ids_of(&published).into_iter().collect());
    }

    pub async fn a_dead_letter_keeps_the_error_and_is_acked(log: Arc<dyn EventLog>) {
        log.ensure_group(GROUP).await.unwrap();
        log.publish(events(2)).await.unwrap();
        let got = log.read(GROUP, "c", 10, Duration::ZERO).await.unwrap();
        log.dead_letter(GROUP, &got[0], "cannot apply: bad data")
            .await
            .unwrap();
        let pending = log.pending(GROUP, 10).await.unwrap();
        assert_eq!(
            pending.iter().map(|p| &p.id).collect::<Vec<_>>(),
            vec![&got[1].id]
        );
        let dead = log.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, got[0].id);
        assert_eq!(dead[0].error, "cannot apply: bad data");
        assert_eq!(dead[0].envelope.as_ref(), Some(&got[0].envelope));
    }

    pub async fn trimming_keeps_about_max_len(log: Arc<dyn EventLog>, max_len: usize) {
        let published = events(10 * max_len);
        for chunk in published.chunks(max_len / 2) {
            log.publish(chunk.to_vec()).await.unwrap();
        }
        let len = log.entry_count().await.unwrap() as usize;
        // Redis trims whole nodes (`MAXLEN ~`), so up to a node more is kept.
        assert!(
            (max_len..=2 * max_len).contains(&len),
            "{len} entries kept for max_len {max_len}"
        );
        // What is kept is the newest, in order.
        log.ensure_group(GROUP).await.unwrap();
        let got = log
            .read(GROUP, "c", 10 * max_len, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), len);
        let kept: Vec<EventEnvelope> = got.into_iter().map(|d| d.envelope).collect();
        assert_eq!(kept.as_slice(), &published[published.len() - len..]);
    }

    pub async fn reading_without_a_group_fails(log: Arc<dyn EventLog>) {
        log.publish(events(1)).await.unwrap();
        assert!(log
            .read("no-such-group", "c", 1, Duration::ZERO)
            .await
            .is_err());
    }

    pub async fn worker_dead_letters_a_poison_event_and_applies_the_rest(log: Arc<dyn EventLog>) {
        let published = events(1000);
        let poison = published[500].customer_id.unwrap_or_default();
        let handler = Arc::new(Recorder {
            poison: Some(poison),
            ..Recorder::default()
        });
        log.ensure_group(GROUP).await.unwrap();
        log.publish(published.clone()).await.unwrap();

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run_worker(
            log.clone(),
            handler.clone(),
            fast_worker("a"),
            async move {
                let _ = stopped.await;
            },
        ));
        eventually("the poison event is dead-lettered", || async {
            log.dead_letters(10).await.unwrap().len() == 1 && pending_count(&log).await == 0
        })
        .await;
        stop.send(()).unwrap();
        worker.await.unwrap();

        let mut expected: HashSet<CustomerId> = ids_of(&published).into_iter().collect();
        expected.remove(&poison);
        assert_eq!(handler.applied(), expected);
        let dead = log.dead_letters(10).await.unwrap();
        assert_eq!(dead[0].error, "poison event");
        let envelope = dead[0].envelope.as_ref().unwrap();
        assert_eq!(envelope.customer_id.unwrap_or_default(), poison);
    }

    pub async fn a_second_worker_finishes_what_a_killed_one_left(log: Arc<dyn EventLog>) {
        let published = events(1000);
        log.ensure_group(GROUP).await.unwrap();
        log.publish(published.clone()).await.unwrap();

        // The first worker applies two batches, then hangs in the third.
        let first = Arc::new(Recorder {
            hang_on_call: Some(3),
            ..Recorder::default()
        });
        let killed = tokio::spawn(run_worker(
            log.clone(),
            first.clone(),
            fast_worker("a"),
            std::future::pending(),
        ));
        eventually("the first worker hangs", || async {
            first.calls.load(Ordering::SeqCst) >= 3
        })
        .await;
        killed.abort();
        let _ = killed.await;
        let left_pending = log.pending(GROUP, 1000).await.unwrap();
        assert!(
            !left_pending.is_empty() && left_pending.iter().all(|p| p.consumer == "a"),
            "{left_pending:?}"
        );

        let second = Arc::new(Recorder::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run_worker(
            log.clone(),
            second.clone(),
            fast_worker("b"),
            async move {
                let _ = stopped.await;
            },
        ));
        let everything: HashSet<CustomerId> = ids_of(&published).into_iter().collect();
        eventually("every event is applied and acknowledged", || async {
            let applied: HashSet<CustomerId> =
                first.applied().union(&second.applied()).copied().collect();
            applied == everything && pending_count(&log).await == 0
        })
        .await;
        stop.send(()).unwrap();
        worker.await.unwrap();
        // The first applied two batches of 100; the second took over the rest,
        // the hung batch included.
        assert_eq!(first.applied().len(), 200);
        assert_eq!(left_pending.len(), 100);
        let rest: HashSet<CustomerId> = everything.difference(&first.applied()).copied().collect();
        assert!(second.applied().is_superset(&rest));
        assert!(log.dead_letters(10).await.unwrap().is_empty());
    }

    pub async fn worker_finishes_its_batch_on_shutdown(log: Arc<dyn EventLog>) {
        let published = events(10);
        // No ensure_group: the worker creates its group.
        log.publish(published.clone()).await.unwrap();
        let handler = Arc::new(Recorder {
            delay: Duration::from_millis(300),
            ..Recorder::default()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run_worker(
            log.clone(),
            handler.clone(),
            fast_worker("a"),
            async move {
                let _ = stopped.await;
            },
        ));
        eventually("the batch is being applied", || async {
            handler.calls.load(Ordering::SeqCst) >= 1
        })
        .await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), worker)
            .await
            .expect("the worker stops")
            .unwrap();
        assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            handler.applied(),
            ids_of(&published).into_iter().collect::<HashSet<_>>()
        );
        assert_eq!(pending_count(&log).await, 0);
    }

    pub async fn worker_waits_out_an_unavailable_handler(log: Arc<dyn EventLog>) {
        let published = events(20);
        log.ensure_group(GROUP).await.unwrap();
        log.publish(published.clone()).await.unwrap();
        let handler = Arc::new(Recorder {
            unavailable_calls: 4,
            ..Recorder::default()
        });
        let config = WorkerConfig {
            max_attempts: 1,
            ..fast_worker("a")
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(run_worker(
            log.clone(),
            handler.clone(),
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        eventually("every event is applied", || async {
            handler.applied().len() == 20 && pending_count(&log).await == 0
        })
        .await;
        stop.send(()).unwrap();
        worker.await.unwrap();
        assert!(log.dead_letters(10).await.unwrap().is_empty());
    }
}

/// What only the Redis adapter can meet.
mod redis_only {
    use super::*;

    #[tokio::test]
    async fn an_undecodable_entry_goes_to_the_dead_letters() {
        let url = support::redis_server::url();
        let prefix = support::redis_server::unique_prefix();
        let log = RedisEventStream::connect(
            &url,
            RedisStreamConfig {
                prefix: prefix.clone(),
                max_len: 1000,
            },
        )
        .await
        .unwrap();
        log.ensure_group(GROUP).await.unwrap();
        let client = ::redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: String = ::redis::cmd("XADD")
            .arg(format!("{prefix}events"))
            .arg("*")
            .arg("e")
            .arg("not json")
            .query_async(&mut conn)
            .await
            .unwrap();
        let published = events(1);
        log.publish(published.clone()).await.unwrap();

        let got = log.read(GROUP, "c", 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].envelope, published[0]);
        let dead = log.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].error.contains("not an event"), "{}", dead[0].error);
        assert_eq!(dead[0].envelope, None);
        assert_eq!(log.pending(GROUP, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}/");
        match RedisEventStream::connect(&url, RedisStreamConfig::default()).await {
            Err(crm_models::events::EventError::Unavailable(_)) => {}
            Err(e) => panic!("expected unavailable, got {e}"),
            Ok(_) => panic!("connected to a closed port"),
        }
    }

    #[tokio::test]
    async fn keys_follow_the_prefix() {
        let url = support::redis_server::url();
        let log = RedisEventStream::connect(
            &url,
            RedisStreamConfig {
                prefix: "crmtest:keys:".into(),
                max_len: 10,
            },
        )
        .await
        .unwrap();
        assert_eq!(log.stream_key(), "crmtest:keys:events");
        assert_eq!(log.dead_key(), "crmtest:keys:events:dead");
        assert_eq!(RedisStreamConfig::default().prefix, "crm:");
        assert_eq!(RedisStreamConfig::default().max_len, 1_000_000);
    }
}

/// What only a Redis Cluster can meet.
mod redis_cluster_only {
    use super::*;

    /// The master holding the stream fails over (`CLUSTER FAILOVER` on its
    /// replica) between a read and its acknowledgement, with a blocked read
    /// waiting: the group, its pending entry and every entry published
    /// before and after are all there on the new master, each delivered once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stream_and_its_group_survive_a_failover() {
        let cluster = support::redis_cluster::start_private();
        let prefix = support::redis_cluster::unique_prefix();
        let log = Arc::new(
            RedisEventStream::connect(
                &cluster.url,
                RedisStreamConfig {
                    prefix: prefix.clone(),
                    max_len: 1000,
                },
            )
            .await
            .unwrap(),
        );
        log.ensure_group(GROUP).await.unwrap();
        let before = events(20);
        log.publish(before.clone()).await.unwrap();
        let first = log.read(GROUP, "c", 100, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 20);

        let blocked = {
            let log = log.clone();
            tokio::spawn(async move {
                log.read(GROUP, "waiting", 100, Duration::from_secs(20))
                    .await
                    .unwrap()
            })
        };
        let url = cluster.url.clone();
        let stream_key = log.stream_key().to_string();
        let (old, new) = tokio::task::spawn_blocking(move || {
            support::redis_cluster::failover_master_of(&url, stream_key.as_bytes())
        })
        .await
        .unwrap();
        assert_ne!(old, new);

        let after = events(10);
        log.publish(after.clone()).await.unwrap();
        // The blocked reader gets the new entries (or times out, when its
        // read went to the old master); the first consumer takes the rest.
        let mut seen: Vec<CustomerId> = first
            .iter()
            .map(|d| d.envelope.customer_id.unwrap_or_default())
            .collect();
        seen.extend(
            blocked
                .await
                .unwrap()
                .iter()
                .map(|d| d.envelope.customer_id.unwrap_or_default()),
        );
        loop {
            let more = log.read(GROUP, "c", 100, Duration::ZERO).await.unwrap();
            if more.is_empty() {
                break;
            }
            seen.extend(
                more.iter()
                    .map(|d| d.envelope.customer_id.unwrap_or_default()),
            );
        }
        let mut expected = ids_of(&before);
        expected.extend(ids_of(&after));
        assert_eq!(seen.len(), expected.len(), "each entry delivered once");
        let seen: HashSet<CustomerId> = seen.into_iter().collect();
        assert_eq!(seen, expected.into_iter().collect::<HashSet<_>>());
        // The entry read before the switch is still pending, and acks.
        let pending = log.pending(GROUP, 100).await.unwrap();
        assert!(pending.iter().any(|p| p.id == first[0].id), "{pending:?}");
        log.ack(GROUP, &[first[0].id.clone()]).await.unwrap();
        let pending = log.pending(GROUP, 100).await.unwrap();
        assert!(pending.iter().all(|p| p.id != first[0].id));
    }
}
