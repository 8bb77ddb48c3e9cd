//! A simulated fleet of Android devices, for trying the bridge out and for
//! the benchmarks (`crm-device-sim`, `api/benches/mobile.rs`).
//!
//! Each device is enrolled by a staff user and gets its own token, then
//! uploads a synthetic, deterministic SMS and call log (a few hundred
//! contacts, Singapore numbers typed the way phones store them) in batches,
//! the way the app's upload queue does: every batch overlaps the previous
//! one by a few events, some batches are sent twice (the answer was lost),
//! and a failed request is retried with back-off. Caller-ID lookups are
//! fired at a list of numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// How a fleet uploads.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    pub events_per_device: usize,
    /// Events per batch (at most 500).
    pub batch: usize,
    /// Events of the previous batch repeated at the start of the next one.
    pub overlap: usize,
    /// Share of batches sent a second time, as after a lost answer.
    pub resend_rate: f64,
    /// Distinct counterparts per device.
    pub contacts: usize,
    pub seed: u64,
    /// A later pass sends new events (new ids) to the same contacts.
    pub pass: u32,
}

impl Default for UploadPlan {
    fn default() -> Self {
        UploadPlan {
            events_per_device: 2_000,
            batch: 500,
            overlap: 10,
            resend_rate: 0.1,
            contacts: 200,
            seed: 42,
            pass: 0,
        }
    }
}

/// What an upload run did.
#[derive(Debug, Clone, Default)]
pub struct UploadReport {
    pub devices: usize,
    pub requests: usize,
    /// Events sent, repeats included.
    pub events_sent: usize,
    pub created: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// Requests that failed and were retried.
    pub retries: usize,
    pub elapsed: Duration,
    /// Per request, sorted.
    pub latencies: Vec<Duration>,
}

impl UploadReport {
    /// Events handled (created or found duplicate) per second of wall time.
    pub fn events_per_second(&self) -> f64 {
        (self.created + self.duplicates) as f64 / self.elapsed.as_secs_f64()
    }

    /// New events stored per second of wall time.
    pub fn created_per_second(&self) -> f64 {
        self.created as f64 / self.elapsed.as_secs_f64()
    }
}

/// What a caller-ID run did.
#[derive(Debug, Clone, Default)]
pub struct LookupReport {
    pub lookups: usize,
    pub known: usize,
    pub elapsed: Duration,
    /// Sorted.
    pub latencies: Vec<Duration>,
}

/// The `p`-quantile (0 to 1) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// The HTTP client a simulated device uses: an Android app's, which follows
/// no redirects from its own backend.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("HTTP client")
}

/// A staff access token.
pub async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let resp = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .context("login request")?;
    anyhow::ensure!(resp.status().is_success(), "login: {}", resp.status());
    let body: Value = resp.json().await?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .context("login answer without access_token")
}

/// Enrolls `n` devices for the staff user; returns their tokens.
pub async fn enroll(
    client: &reqwest::Client,
    base: &str,
    staff_token: &str,
    n: usize,
    region: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let resp = client
            .post(format!("{base}/v1/devices"))
            .bearer_auth(staff_token)
            .json(&json!({ "name": format!("simulated phone {i}"), "default_region": region }))
            .send()
            .await
            .context("enroll request")?;
        anyhow::ensure!(resp.status().is_success(), "enroll: {}", resp.status());
        let body: Value = resp.json().await?;
        tokens.push(
            body["token"]
                .as_str()
                .context("enroll answer without token")?
                .to_string(),
        );
    }
    Ok(tokens)
}

/// A device's contacts: Singapore mobiles, stored the way phones keep
/// them (`8122 6418`, `+65 8122 6418`, `+6581226418`), with names.
pub fn contacts(device: usize, n: usize, seed: u64) -> Vec<(String, String)> {
    const FIRST: [&str; 12] = [
        "Wei Ming",
        "Siew Ling",
        "Aisyah",
        "Rajesh",
        "Priya",
        "Daniel",
        "Mei Hua",
        "Farid",
        "Kavitha",
        "Jun Jie",
        "Nurul",
        "Sarah",
    ];
    const LAST: [&str; 10] = [
        "Tan", "Lim", "Lee", "Ng", "Rahman", "Kumar", "Pillai", "Wong", "Goh", "Smith",
    ];
    let mut rng = StdRng::seed_from_u64(seed ^ (device as u64).wrapping_mul(0x9e37_79b9));
    (0..n)
        .map(|_| {
            // Half the contacts are shared across the fleet (colleagues'
            // customers), half are the device's own.
            let subscriber: u32 = if rng.gen_bool(0.5) {
                rng.gen_range(0..5_000)
            } else {
                rng.gen_range(0..14_000_000)
            };
            // Mobile ranges in use: 81-88 and 91-97, then six digits.
            let block = subscriber / 1_000_000;
            let lead = if block < 7 {
                81 + block
            } else {
                91 + (block - 7)
            };
            let digits = format!("{lead}{:06}", subscriber % 1_000_000);
            let typed = match rng.gen_range(0..3) {
                0 => format!("{} {}", &digits[..4], &digits[4..]),
                1 => format!("+65 {} {}", &digits[..4], &digits[4..]),
                _ => format!("+65{digits}"),
            };
            let name = format!(
                "{} {}",
                FIRST[rng.gen_range(0..FIRST.len())],
                LAST[rng.gen_range(0..LAST.len())]
            );
            (typed, name)
        })
        .collect()
}

/// A device's log: `n` events, oldest first, SMS and calls (and some
/// WhatsApp) over the last weeks, each with a `client_event_id` unique to
/// the device.
pub fn synthetic_log(device: usize, n: usize, plan: &UploadPlan, end: DateTime<Utc>) -> Vec<Value> {
    let people = contacts(device, plan.contacts.max(1), plan.seed);
    let mut rng = StdRng::seed_from_u64(
        plan.seed
            .wrapping_add(device as u64)
            .wrapping_add(u64::from(plan.pass) << 32),
    );
    let start = end - chrono::Duration::days(30);
    let step = 30 * 24 * 3600 / n.max(1) as i64;
    (0..n)
        .map(|i| {
            let (number, name) = &people[rng.gen_range(0..people.len())];
            let at = start + chrono::Duration::seconds(step * i as i64 + rng.gen_range(0..step.max(1)));
            let occurred_at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let direction = if rng.gen_bool(0.5) { "inbound" } else { "outbound" };
            let id = format!("d{device}-p{}-e{i}", plan.pass);
            let contact = rng.gen_bool(0.7).then_some(name.as_str());
            match rng.gen_range(0..10) {
                0..=4 => json!({
                    "client_event_id": id, "kind": "sms", "direction": direction,
                    "number": number, "occurred_at": occurred_at, "contact_name": contact,
                    "body": "Hi, is the 3-bedroom unit at Tampines still available? Can view on Saturday.",
                }),
                5..=8 => {
                    let duration: u32 = if rng.gen_bool(0.3) { 0 } else { rng.gen_range(5..900) };
                    json!({
                        "client_event_id": id, "kind": "call", "direction": direction,
                        "number": number, "occurred_at": occurred_at, "contact_name": contact,
                        "duration_s": duration,
                    })
                }
                _ => json!({
                    "client_event_id": id, "kind": "whatsapp", "direction": direction,
                    "number": number, "occurred_at": occurred_at, "contact_name": contact,
                    "body": "Sent the floor plan, please take a look",
                }),
            }
        })
        .collect()
}

/// The batches a device sends for its log: consecutive slices overlapping
/// by `plan.overlap`, some of them twice.
fn batches(log: &[Value], plan: &UploadPlan, rng: &mut StdRng) -> Vec<Vec<Value>> {
    let size = plan.batch.clamp(1, 500);
    let overlap = plan.overlap.min(size - 1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < log.len() {
        let from = start.saturating_sub(overlap);
        let to = (start + size - (start - from)).min(log.len());
        let batch = log[from..to].to_vec();
        if rng.gen_bool(plan.resend_rate.clamp(0.0, 1.0)) {
            out.push(batch.clone());
        }
        out.push(batch);
        start = to;
    }
    out
}

/// Posts one batch, retrying failures (connection errors, 5xx, and any
/// answer with `Retry-After`: 429, 409 `contention`) with
/// exponential back-off. Returns the results and how many retries it took.
async fn post_batch(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    batch: &[Value],
) -> anyhow::Result<(Vec<Value>, usize)> {
    let body = json!({ "events": batch });
    let mut delay = Duration::from_millis(50);
    for attempt in 0..6 {
        let sent = client
            .post(format!("{base}/v1/mobile/events"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let answer: Value = resp.json().await?;
                let results = answer["results"]
                    .as_array()
                    .context("upload answer without results")?
                    .clone();
                return Ok((results, attempt));
            }
            Ok(resp)
                if resp.status().is_client_error()
                    && resp.status().as_u16() != 429
                    && !resp.headers().contains_key(reqwest::header::RETRY_AFTER) =>
            {
                anyhow::bail!("upload refused: {} {}", resp.status(), resp.text().await?);
            }
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    anyhow::bail!("upload failed after 6 attempts")
}

/// Every device uploads its log at once, batch after batch.
pub async fn upload_fleet(
    client: &reqwest::Client,
    base: &str,
    tokens: &[String],
    plan: &UploadPlan,
) -> anyhow::Result<UploadReport> {
    let end = Utc::now();
    let work: Vec<(String, Vec<Vec<Value>>)> = tokens
        .iter()
        .enumerate()
        .map(|(d, token)| {
            let log = synthetic_log(d, plan.events_per_device, plan, end);
            let mut rng = StdRng::seed_from_u64(plan.seed ^ 0xba7c4 ^ d as u64);
            (token.clone(), batches(&log, plan, &mut rng))
        })
        .collect();
    let base: Arc<str> = Arc::from(base);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (token, batches) in work {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut report = UploadReport::default();
            for batch in batches {
                let t = Instant::now();
                let (results, retries) = post_batch(&client, &base, &token, &batch).await?;
                report.latencies.push(t.elapsed());
                report.requests += 1;
                report.retries += retries;
                report.events_sent += batch.len();
                for r in &results {
                    match r["status"].as_str() {
                        Some("created") => report.created += 1,
                        Some("duplicate") => report.duplicates += 1,
                        _ => report.rejected += 1,
                    }
                }
            }
            anyhow::Ok(report)
        }));
    }
    let mut total = UploadReport {
        devices: tokens.len(),
        ..UploadReport::default()
    };
    for task in tasks {
        let r = task.await.context("device task")??;
        total.requests += r.requests;
        total.events_sent += r.events_sent;
        total.created += r.created;
        total.duplicates += r.duplicates;
        total.rejected += r.rejected;
        total.retries += r.retries;
        total.latencies.extend(r.latencies);
    }
    total.elapsed = started.elapsed();
    total.latencies.sort();
    Ok(total)
}

/// A device's keep-alive HTTP/1.1 connection for its caller-ID lookups, as
/// the app keeps one open. Lighter than a pooled client: the simulated
/// devices share the server's cores, and their HTTP stack's work is
/// counted against the server's latency.
struct Line {
    send: http1::SendRequest<Empty<Bytes>>,
}

impl Line {
    async fn open(address: &str) -> anyhow::Result<Line> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        let (send, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Line { send })
    }

    /// Sends one request and reads the whole answer; a connection the
    /// server has closed is opened again once, as a phone's would be.
    async fn send(
        &mut self,
        address: &str,
        request: hyper::Request<Empty<Bytes>>,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        if self.send.ready().await.is_err() {
            *self = Line::open(address).await?;
            self.send.ready().await?;
        }
        let response = self.send.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

#[derive(serde::Deserialize)]
struct Known {
    known: bool,
}

/// The interval between one device's lookups for `rate` lookups a second
/// from `devices` devices together; `None` (as fast as answers come) for a
/// rate that is not positive.
pub fn pace(rate: f64, devices: usize) -> Option<Duration> {
    (rate > 0.0 && rate.is_finite())
        .then(|| Duration::try_from_secs_f64(devices.max(1) as f64 / rate).ok())
        .flatten()
}

/// Every device asks caller-ID for numbers from `numbers` in turn, for
/// `seconds`, one request at a time per device: as fast as answers come
/// (`pace` `None`), or one every `pace` per device, the devices' schedules
/// spread over the interval. A paced lookup that is due while the device
/// still waits for the previous answer is timed from when it was due, so
/// that a slow answer also counts against the lookups it held up. Each
/// device keeps one connection of its own (plain HTTP).
pub async fn caller_id_fleet(
    base: &str,
    tokens: &[String],
    numbers: Arc<Vec<String>>,
    seconds: f64,
    pace: Option<Duration>,
) -> anyhow::Result<LookupReport> {
    anyhow::ensure!(!numbers.is_empty(), "no numbers to look up");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let devices = u32::try_from(tokens.len().max(1)).unwrap_or(u32::MAX);
    let endpoint =
        reqwest::Url::parse(&format!("{base}/v1/mobile/caller-id")).context("caller-ID URL")?;
    anyhow::ensure!(
        endpoint.scheme() == "http",
        "caller-ID lookups are simulated over plain HTTP, not {}",
        endpoint.scheme()
    );
    let host = endpoint.host_str().context("caller-ID URL has no host")?;
    // The address to connect to, also sent as the `Host` header.
    let address = format!("{host}:{}", endpoint.port().unwrap_or(80));
    // Each number's request target, built once: a phone builds one per
    // ringing call, and building it here, on the server's cores, is not
    // the server's work.
    let targets = numbers
        .iter()
        .map(|n| {
            let mut url = endpoint.clone();
            url.query_pairs_mut().append_pair("number", n);
            hyper::Uri::try_from(format!(
                "{}?{}",
                url.path(),
                url.query().unwrap_or_default()
            ))
        })
        .collect::<Result<Vec<_>, _>>()
        .context("caller-ID request target")?;
    let targets = Arc::new(targets);
    let mut tasks = Vec::new();
    for (d, token) in tokens.iter().enumerate() {
        let (targets, address) = (targets.clone(), address.clone());
        let bearer = hyper::header::HeaderValue::try_from(format!("Bearer {token}"))
            .context("device token")?;
        let first = pace.map(|p| started + p * u32::try_from(d).unwrap_or(0) / devices);
        tasks.push(tokio::spawn(async move {
            let mut line = Line::open(&address).await?;
            let mut latencies = Vec::new();
            let mut known = 0usize;
            let mut i = d * 7919;
            let mut due = first;
            while Instant::now() < deadline {
                let target = &targets[i % targets.len()];
                i += 1;
                let t = match (due, pace) {
                    (Some(at), Some(p)) => {
                        due = Some(at + p);
                        if Instant::now() < at {
                            // On time: the clock starts when the timer
                            // (1 ms granularity) lets the request go.
                            tokio::time::sleep_until(at.into()).await;
                            Instant::now()
                        } else {
                            // Behind schedule, because the previous
                            // answer was late: the wait counts.
                            at
                        }
                    }
                    _ => Instant::now(),
                };
                let request = hyper::Request::get(target.clone())
                    .header(hyper::header::HOST, address.as_str())
                    .header(hyper::header::AUTHORIZATION, bearer.clone())
                    .body(Empty::<Bytes>::new())?;
                let (status, body) = line.send(&address, request).await?;
                anyhow::ensure!(status.is_success(), "caller-id: {status}");
                // Only `known` is read; the customers are parsed, not built.
                let answer: Known = serde_json::from_slice(&body)?;
                latencies.push(t.elapsed());
                known += usize::from(answer.known);
            }
            anyhow::Ok((latencies, known))
        }));
    }
    let mut report = LookupReport::default();
    for task in tasks {
        let (l, k) = task.await.context("device task")??;
        report.lookups += l.len();
        report.known += k;
        report.latencies.extend(l);
    }
    report.elapsed = started.elapsed();
    report.latencies.sort();
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_shared_by_the_devices() {
        assert_eq!(pace(3_200.0, 32), Some(Duration::from_millis(10)));
        assert_eq!(pace(10.0, 0), Some(Duration::from_millis(100)));
        assert_eq!(pace(0.0, 32), None);
        assert_eq!(pace(-1.0, 32), None);
        assert_eq!(pace(f64::NAN, 32), None);
    }

    #[test]
    fn every_contact_number_is_a_valid_singapore_number() {
        let sg = crm_models::Region::parse("SG").ok();
        for device in 0..8 {
            for (number, name) in contacts(device, 500, 42) {
                assert!(
                    crm_models::PhoneNumber::parse(&number, sg).is_ok(),
                    "{number} ({name})"
                );
            }
        }
    }

    #[test]
    fn logs_are_deterministic_and_batches_overlap_and_repeat() {
        let plan = UploadPlan {
            events_per_device: 1_000,
            batch: 100,
            overlap: 10,
            resend_rate: 0.5,
            ..UploadPlan::default()
        };
        let end = Utc::now();
        let a = synthetic_log(3, 1_000, &plan, end);
        assert_eq!(a, synthetic_log(3, 1_000, &plan, end));
        assert_ne!(a, synthetic_log(4, 1_000, &plan, end));
        let mut rng = StdRng::seed_from_u64(1);
        let sent = batches(&a, &plan, &mut rng);
        assert!(sent.iter().all(|b| b.len() <= 100));
        let ids: std::collections::BTreeSet<&str> = sent
            .iter()
            .flatten()
            .map(|e| e["client_event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1_000, "every event is sent");
        let total: usize = sent.iter().map(Vec::len).sum();
        assert!(total > 1_100, "overlaps and resends repeat events: {total}");
    }
}
