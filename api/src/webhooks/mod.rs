//! Webhooks out (Standard Webhooks): durable, at-least-once delivery of the
//! event log to the endpoints admins register (`/v1/webhooks`).
//!
//! - The **dispatcher** ([`run_dispatcher`]) reads the store's event log in
//!   feed order from its own cursor, kept in the store, and for each page
//!   creates one delivery per event and matching enabled endpoint and moves
//!   the cursor, in one transaction. A delivery's id comes from the
//!   endpoint's and the event's, so a page handled twice (after a crash, or
//!   by two instances) creates nothing twice.
//! - The **worker** ([`run_worker`]) claims due deliveries with a lease,
//!   posts each one signed ([`signing`]), and records the outcome: 2xx
//!   succeeds; 410 disables the endpoint; anything else (3xx too: no
//!   redirect is followed, timeouts, refused addresses) is retried after the
//!   next pause of the schedule, or after `Retry-After` for 429 and 503;
//!   after the last pause it has failed. An endpoint failing continuously
//!   for `CRM_WEBHOOK_DISABLE_AFTER` is disabled with a `webhook.disabled`
//!   event. At most `CRM_WEBHOOK_CONCURRENCY` attempts per endpoint are in
//!   flight in one process, so a slow endpoint never holds up another.
//! - Addresses are checked at creation and at every connection
//!   ([`guard`]). Neither bodies nor secrets are logged.

pub mod config;
pub mod guard;
pub mod payload;
pub mod signing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crm_models::event::EventFilter;
use crm_models::store::Store;
use crm_models::time::{self, Timestamp};
use crm_models::webhook::{
    AttemptResult, ClaimRequest, Delivery, DeliveryStatus, EndpointOutcome, Webhook,
};
use parking_lot::Mutex;
use rand::Rng;
use reqwest::StatusCode;
use tokio::sync::{mpsc, watch, Notify};

pub use config::WebhookConfig;

/// Events the dispatcher reads per page.
const PAGE: usize = 500;
/// How often the dispatcher looks for new events when it is at the head of
/// the log, and the worker for due deliveries when it has nothing to do.
const POLL: Duration = Duration::from_millis(100);
/// Most attempts one process has in flight.
const MAX_IN_FLIGHT: usize = 512;
/// Most deliveries one claim takes.
const CLAIM_BATCH: usize = 128;
/// Most attempt results recorded in one store write.
const RECORD_BATCH: usize = 512;
/// How long deliveries are kept.
pub const KEEP_DELIVERIES_DAYS: i64 = 30;
/// How often old deliveries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// After a store error, the loops pause this long.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// The webhook machinery a process shares: settings, the HTTP client and
/// the wake-up from the dispatcher to the worker.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    config: WebhookConfig,
    client: reqwest::Client,
    /// The dispatcher created deliveries (or a route queued some again).
    wake: Notify,
}

impl Webhooks {
    pub fn new(config: WebhookConfig) -> anyhow::Result<Webhooks> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Straight to the endpoint: a proxy would resolve names past
            // the address check.
            .no_proxy()
            .timeout(config.timeout.0)
            .connect_timeout(config.timeout.0)
            .dns_resolver(guard::GuardedResolver::shared(config.allow_private))
            .user_agent(concat!("crm-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Webhooks {
            inner: Arc::new(Inner {
                config,
                client,
                wake: Notify::new(),
            }),
        })
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.inner.config
    }

    /// Tells the worker that deliveries may be due now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads the event log and creates deliveries until `stop` turns true.
pub async fn run_dispatcher(
    store: Arc<dyn Store>,
    webhooks: Webhooks,
    live: crm_models::live::LiveHub,
    mut stop: watch::Receiver<bool>,
) {
    // Woken by each event the relay publishes: new events are in the feed.
    let mut heard = live.subscribe();
    let mut cursor = None;
    let mut loaded = false;
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if !loaded {
            match store.webhook_cursor().await {
                Ok(c) => {
                    cursor = c;
                    loaded = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read the dispatcher's cursor");
                    pause(&mut stop, STORE_BACKOFF).await;
                    continue;
                }
            }
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let before = time::now() - chrono::Duration::days(KEEP_DELIVERIES_DAYS);
            match store.prune_deliveries(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deliveries = n, "webhooks: pruned old deliveries"),
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot prune old deliveries"),
            }
        }
        match dispatch_page(store.as_ref(), cursor).await {
            Ok(Step::Moved { to, created, full }) => {
                cursor = Some(to);
                if created > 0 {
                    webhooks.wake();
                }
                if !full {
                    news(&mut stop, &mut heard).await;
                }
            }
            Ok(Step::Idle) => news(&mut stop, &mut heard).await,
            Ok(Step::Lost) => {
                // Another instance moved the cursor: go on from where it is.
                loaded = false;
            }
            Ok(Step::Expired) => {
                tracing::warn!(
                    "webhooks: the dispatcher's cursor is no longer in the event log; \
                     starting again from the oldest event kept"
                );
                cursor = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: dispatching failed; trying again");
                pause(&mut stop, STORE_BACKOFF).await;
            }
        }
    }
}

/// What one dispatcher step did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The cursor moved to `to`; `created` deliveries; `full`: more may follow at once.
    Moved {
        to: uuid::Uuid,
        created: usize,
        full: bool,
    },
    /// Nothing new.
    Idle,
    /// Another dispatcher moved the cursor first.
    Lost,
    /// The cursor is not in the log any more.
    Expired,
}

async fn dispatch_page(
    store: &dyn Store,
    cursor: Option<uuid::Uuid>,
) -> crm_models::store::StoreResult<Step> {
    let Some(page) = store
        .read_feed(cursor, &EventFilter::default(), PAGE)
        .await?
    else {
        return Ok(Step::Expired);
    };
    let Some(last) = page.last.filter(|l| Some(*l) != cursor) else {
        return Ok(Step::Idle);
    };
    let endpoints: Vec<Webhook> = if page.events.is_empty() {
        Vec::new()
    } else {
        store.list_webhooks().await?
    };
    let now = time::now();
    let deliveries: Vec<Delivery> = page
        .events
        .iter()
        .flat_map(|e| {
            endpoints
                .iter()
                .filter(|w| w.wants(e))
                .map(move |w| Delivery::new(w.id, e, now))
        })
        .collect();
    if !store.dispatch_deliveries(cursor, last, &deliveries).await? {
        return Ok(Step::Lost);
    }
    Ok(Step::Moved {
        to: last,
        created: deliveries.len(),
        full: page.events.len() >= PAGE,
    })
}

/// Waits until the relay published something (or [`POLL`] passed, or `stop`).
async fn news(
    stop: &mut watch::Receiver<bool>,
    heard: &mut tokio::sync::broadcast::Receiver<Arc<crm_models::event::EventEnvelope>>,
) {
    tokio::select! {
        _ = stopped(stop) => {}
        _ = tokio::time::sleep(POLL) => {}
        // Lagging is news too; what was missed is read from the feed.
        _ = heard.recv() => {}
    }
    // One read of the feed takes what else arrived meanwhile.
    while heard.try_recv().is_ok() {}
}

async fn pause(stop: &mut watch::Receiver<bool>, how_long: Duration) {
    tokio::select! {
        _ = stopped(stop) => {}
        _ = tokio::time::sleep(how_long) => {}
    }
}

/// What this process has in flight, per endpoint.
#[derive(Default)]
struct InFlight {
    per_webhook: HashMap<uuid::Uuid, usize>,
    total: usize,
}

/// Claims due deliveries and attempts them until `stop` turns true.
pub async fn run_worker(
    store: Arc<dyn Store>,
    webhooks: Webhooks,
    mut stop: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let finished = Arc::new(Notify::new());
    let (results, to_record) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record(store.clone(), to_record));
    let mut tasks = tokio::task::JoinSet::new();
    let config = webhooks.config().clone();
    loop {
        if *stop.borrow() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let (room, snapshot) = {
            let f = in_flight.lock();
            (MAX_IN_FLIGHT - f.total, f.per_webhook.clone())
        };
        let mut more = false;
        if room > 0 {
            let request = ClaimRequest {
                now: time::now(),
                lease: config.lease(),
                limit: room.min(CLAIM_BATCH),
                per_webhook: config.per_endpoint.max(1),
                in_flight: snapshot,
            };
            match store.claim_deliveries(&request).await {
                Ok(claimed) => {
                    more = claimed.len() >= request.limit;
                    for d in claimed {
                        {
                            let mut f = in_flight.lock();
                            *f.per_webhook.entry(d.webhook_id).or_insert(0) += 1;
                            f.total += 1;
                        }
                        let (store, webhooks) = (store.clone(), webhooks.clone());
                        let (in_flight, finished) = (in_flight.clone(), finished.clone());
                        let results = results.clone();
                        tasks.spawn(async move {
                            let webhook = d.webhook_id;
                            if let Some(result) = attempt(store.as_ref(), &webhooks, d).await {
                                // The recorder is gone only once this loop ended.
                                let _ = results.send(result);
                            }
                            let mut f = in_flight.lock();
                            if let Some(n) = f.per_webhook.get_mut(&webhook) {
                                *n -= 1;
                                if *n == 0 {
                                    f.per_webhook.remove(&webhook);
                                }
                            }
                            f.total -= 1;
                            drop(f);
                            finished.notify_one();
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot claim deliveries");
                    pause(&mut stop, STORE_BACKOFF).await;
                    continue;
                }
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = webhooks.inner.wake.notified() => {}
            _ = finished.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Attempts in flight finish (each within the timeout); what they do not
    // record comes back when their lease ends.
    while tasks.join_next().await.is_some() {}
    drop(results);
    let _ = recorder.await;
}

/// Records attempt results as they come, many in one store write.
async fn record(store: Arc<dyn Store>, mut results: mpsc::UnboundedReceiver<AttemptResult>) {
    let mut batch = Vec::new();
    while let Some(first) = results.recv().await {
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match results.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if let Err(e) = store.finish_attempts(&batch).await {
            tracing::warn!(
                attempts = batch.len(),
                error = %e,
                "webhooks: cannot record attempts; they are made again when their lease ends"
            );
        }
        batch.clear();
    }
}

/// How one attempt went.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
    succeeded: bool,
    gone: bool,
    retry_after: Option<Duration>,
}

/// Sends one delivery; what to record of it (nothing when the delivery is
/// left to come back when its lease ends).
async fn attempt(store: &dyn Store, webhooks: &Webhooks, mut d: Delivery) -> Option<AttemptResult> {
    let config = webhooks.config();
    let webhook = match store.get_webhook(d.webhook_id).await {
        Ok(Some(w)) => w,
        // Deleted with its deliveries.
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(delivery = %d.id, error = %e, "webhooks: cannot read the endpoint; the delivery comes back when its lease ends");
            return None;
        }
    };
    let now = time::now();
    if !webhook.enabled {
        d.status = DeliveryStatus::Failed;
        d.next_attempt_at = None;
        d.last_error = Some("the endpoint is disabled".into());
        return Some(AttemptResult {
            delivery: d,
            endpoint: EndpointOutcome::Unchanged,
        });
    }
    let body = match payload::body(store, &d.event).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(delivery = %d.id, error = %e, "webhooks: cannot read the event's object; the delivery comes back when its lease ends");
            return None;
        }
    };
    let body = match serde_json::to_vec(&body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(delivery = %d.id, error = %e, "webhooks: cannot encode a body");
            return None;
        }
    };
    let outcome = send(webhooks, &webhook, &d, now, body).await;
    d.attempts += 1;
    d.last_attempt_at = Some(now);
    d.last_status_code = outcome.status;
    d.last_error = outcome.error.clone();
    let endpoint = if outcome.succeeded {
        d.status = DeliveryStatus::Succeeded;
        d.next_attempt_at = None;
        EndpointOutcome::Succeeded
    } else if outcome.gone {
        d.status = DeliveryStatus::Failed;
        d.next_attempt_at = None;
        EndpointOutcome::Disable {
            reason: "the endpoint answered 410 Gone".into(),
        }
    } else {
        let pause = outcome
            .retry_after
            .or_else(|| next_pause(&config.retry_schedule.0, d.attempts));
        match pause {
            Some(p) => {
                d.next_attempt_at = Some(now + to_chrono(p));
            }
            None => {
                d.status = DeliveryStatus::Failed;
                d.next_attempt_at = None;
            }
        }
        EndpointOutcome::Failed {
            disable_if_failing_since: now - to_chrono(config.disable_after.0),
        }
    };
    tracing::debug!(
        delivery = %d.id,
        webhook = %d.webhook_id,
        status = ?outcome.status,
        attempts = d.attempts,
        outcome = d.status.as_str(),
        "webhook attempt"
    );
    metrics::counter!(
        "crm_webhook_attempts_total",
        "outcome" => if outcome.succeeded { "succeeded" } else { "failed" }
    )
    .increment(1);
    Some(AttemptResult {
        delivery: d,
        endpoint,
    })
}

/// The pause after failed attempt number `attempts` (1 for the first), with
/// up to a tenth of jitter either way; `None` after the last.
fn next_pause(schedule: &[Duration], attempts: u32) -> Option<Duration> {
    let base = *schedule.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    let tenth = base / 10;
    if tenth.is_zero() {
        return Some(base);
    }
    let jitter = rand::thread_rng().gen_range(0..=tenth.as_millis() as u64 * 2);
    Some(base - tenth + Duration::from_millis(jitter))
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Posts the delivery: headers `webhook-id`, `webhook-timestamp`,
/// `webhook-signature`.
async fn send(
    webhooks: &Webhooks,
    webhook: &Webhook,
    d: &Delivery,
    now: Timestamp,
    body: Vec<u8>,
) -> Outcome {
    let failed = |error: String| Outcome {
        status: None,
        error: Some(error),
        succeeded: false,
        gone: false,
        retry_after: None,
    };
    let config = webhooks.config();
    // The form and any address written in the URL; names are checked by
    // the client's resolver when it connects.
    let url = match guard::check_form(&webhook.url, config.allow_private) {
        Ok(url) => url,
        Err(e) => return failed(format!("refused: {e}")),
    };
    let id = d.id.to_string();
    let timestamp = now.timestamp();
    let signature = signing::signature_header(&webhook.signing_secrets(now), &id, timestamp, &body);
    let sent = webhooks
        .inner
        .client
        .post(url)
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return failed(describe(&e)),
    };
    let status = response.status();
    let retry_after =
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now))
        } else {
            None
        };
    // The answer's body is not read: nothing of it is kept.
    drop(response);
    let succeeded = status.is_success();
    Outcome {
        status: Some(status.as_u16()),
        error: (!succeeded).then(|| match status.as_u16() {
            300..=399 => format!("HTTP {} (redirects are not followed)", status.as_u16()),
            code => format!("HTTP {code}"),
        }),
        succeeded,
        gone: status == StatusCode::GONE,
        retry_after,
    }
}

/// A transport error in a few words, without the URL (it may carry a token).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connect() {
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(refused) = s.downcast_ref::<guard::Refused>() {
                return format!("refused: {refused}");
            }
            source = s.source();
        }
        return "cannot connect".into();
    }
    "the request failed".into()
}

/// `Retry-After`: seconds, or an HTTP date; at most a day.
pub fn parse_retry_after(raw: &str, now: Timestamp) -> Option<Duration> {
    let raw = raw.trim();
    let wait = if let Ok(seconds) = raw.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = time::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 00:00:30 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn pauses_follow_the_schedule_with_a_tenth_of_jitter() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        for _ in 0..100 {
            let p = next_pause(&schedule, 1).unwrap();
            assert!(
                p >= Duration::from_secs(9) && p <= Duration::from_secs(11),
                "{p:?}"
            );
            let p = next_pause(&schedule, 2).unwrap();
            assert!(
                p >= Duration::from_secs(90) && p <= Duration::from_secs(110),
                "{p:?}"
            );
        }
        assert_eq!(next_pause(&schedule, 3), None);
        assert_eq!(next_pause(&schedule, 0), None);
    }
}
