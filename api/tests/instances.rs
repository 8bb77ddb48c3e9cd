//! Several instances on one MongoDB and one Redis (issue 21).
//!
//! Two `crm-api` processes and two `crm-indexer run` workers share one
//! MongoDB database (the test server) and one Redis key prefix, as N
//! instances behind a load balancer do. The API instances run no index
//! worker of their own (`CRM_INDEX_WORKER=false`): the two workers share the
//! consumer group. All four run a relay, so four relays compete for the
//! lease. Everything starts once; the checks then run in order:
//!
//! 1. customers and engagements written through both instances are read and
//!    found by search through both;
//! 2. failed logins sent to both instances are counted together;
//! 3. a session ended, then a user deactivated, through A is refused by B
//!    within a second, and the user's live stream on B ends;
//! 4. a device revoked through A is refused by B within a second;
//! 5. every event reaches the Redis stream exactly once, and the feed is the
//!    same through both instances;
//! 6. a live stream held by either instance hears every event, whichever
//!    instance took the write.
//!
//! "Within a second" is a deadline on polling (every 20 ms), never a sleep
//! before a check. Other waits (the index catching up, events arriving)
//! are bounded polls too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is how a test fails

#[path = "../../models/tests/support/mongo_server.rs"]
mod mongo_server;
#[path = "common/processes.rs"]
mod processes;
#[path = "../../indexer/tests/support/redis_cluster.rs"]
mod redis_cluster;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_indexer::redis_link::{LinkConfig, Target};
use parking_lot::Mutex;
use processes::{crm_indexer_binary, ApiProcess, RedisProcess};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_EMAIL: &str = "instances-admin@example.com";
const ADMIN_PASSWORD: &str = "a long enough admin password";
const USER_PASSWORD: &str = "a long enough user password";
const JWT_SECRET: &str = "instances-test-secret-of-at-least-32-bytes-0123";
/// How soon a change made through one instance must hold on the other.
const PROPAGATION: Duration = Duration::from_secs(1);
/// How often a propagation check asks again.
const POLL: Duration = Duration::from_millis(20);
/// Longest wait for the index, the relay or a stream to catch up.
const CATCH_UP: Duration = Duration::from_secs(20);
/// Customers written (half through each instance); each gets one SMS
/// through the other instance.
const CUSTOMERS: usize = 8;
/// Surnames the search looks for: one each, found by nothing else.
const SURNAMES: [&str; CUSTOMERS] = [
    "Abernathy",
    "Brightwater",
    "Castellano",
    "Dunmore",
    "Everhart",
    "Fairweather",
    "Galloway",
    "Hollingsworth",
];

/// A `crm-indexer run` worker; killed when dropped, its log printed when
/// the test fails.
struct IndexerProcess {
    child: Child,
    log: PathBuf,
}

impl IndexerProcess {
    fn start(env: &[(String, String)], consumer: &str, logs: &Path) -> IndexerProcess {
        let log = logs.join(format!("{consumer}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = ApiProcess::new(env.to_vec())
            .command(&crm_indexer_binary())
            .args(["run", "--consumer", consumer])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("crm-indexer starts");
        processes::watch(child.id());
        IndexerProcess { child, log }
    }
}

impl Drop for IndexerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} (last lines) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// Everything the checks talk to.
struct Cluster {
    client: reqwest::Client,
    a: ApiProcess,
    b: ApiProcess,
    redis_url: String,
    prefix: String,
    mongodb_uri: String,
    database: String,
}

/// One of the two instances, by name (for messages).
#[derive(Clone, Copy)]
struct On<'a> {
    name: &'static str,
    api: &'a ApiProcess,
    client: &'a reqwest::Client,
}

impl On<'_> {
    /// Sends a request; `forwarded_for` is the client address the load
    /// balancer (a trusted proxy) reports.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        forwarded_for: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, self.api.url(path))
            .timeout(Duration::from_secs(10));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(address) = forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} did not answer {path}: {e}", self.name));
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A request that must answer `expected`; returns the body.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        expected: StatusCode,
    ) -> Value {
        let (status, value) = self
            .send(method.clone(), path, Some(token), body, None)
            .await;
        assert_eq!(
            status, expected,
            "{method} {path} on instance {}: {value}",
            self.name
        );
        value
    }

    /// Waits (at most [`PROPAGATION`] after `since`) until this instance
    /// answers the request with 401.
    async fn refuses_within(
        &self,
        what: &str,
        since: Instant,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) {
        within(what, since, PROPAGATION, || async {
            let (status, _) = self.send(method.clone(), path, token, body, None).await;
            status == StatusCode::UNAUTHORIZED
        })
        .await;
    }

    async fn login(&self, email: &str, password: &str, forwarded_for: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(&json!({ "email": email, "password": password })),
            Some(forwarded_for),
        )
        .await
    }
}

impl Cluster {
    /// On a Redis of its own, or with `on_redis_cluster` on the test
    /// process's Redis Cluster (three masters with a replica each).
    async fn start(
        dirs: &Path,
        on_redis_cluster: bool,
    ) -> (Cluster, Option<RedisProcess>, Vec<IndexerProcess>) {
        let (redis, redis_url) = if on_redis_cluster {
            (None, redis_cluster::url())
        } else {
            let redis = RedisProcess::start(&dirs.join("redis"), false);
            let url = redis.url();
            (Some(redis), url)
        };
        let mongodb_uri = mongo_server::mongodb_uri();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("crm_instances_{id}");
        let prefix = format!("crm_instances_{id}:");
        let shared = vec![
            ("CRM_MONGODB_URI".to_string(), mongodb_uri.clone()),
            ("CRM_MONGODB_DATABASE".to_string(), database.clone()),
            ("CRM_REDIS_URL".to_string(), redis_url.clone()),
            ("CRM_REDIS_PREFIX".to_string(), prefix.clone()),
            ("CRM_LOG".to_string(), "info".to_string()),
        ];
        let api_env = |name: &str| {
            let data_dir = dirs.join(name);
            std::fs::create_dir_all(&data_dir).unwrap();
            let mut env = shared.clone();
            env.extend(
                [
                    ("CRM_DATA_DIR", data_dir.to_str().unwrap()),
                    ("CRM_JWT_SECRET", JWT_SECRET),
                    ("CRM_ADMIN_EMAIL", ADMIN_EMAIL),
                    ("CRM_ADMIN_PASSWORD", ADMIN_PASSWORD),
                    ("CRM_DEFAULT_REGION", "SG"),
                    ("CRM_INDEX_WORKER", "false"),
                    // The load balancer in front of both.
                    ("CRM_TRUSTED_PROXIES", "127.0.0.1"),
                    ("CRM_METRICS_LISTEN", "off"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            env
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut a = ApiProcess::new(api_env("a"));
        let mut b = ApiProcess::new(api_env("b"));
        let (_, _) = tokio::join!(a.start(&client), b.start(&client));
        let logs = dirs.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let workers = vec![
            IndexerProcess::start(&shared, "instances-worker-1", &logs),
            IndexerProcess::start(&shared, "instances-worker-2", &logs),
        ];
        let cluster = Cluster {
            client,
            a,
            b,
            redis_url,
            prefix,
            mongodb_uri,
            database,
        };
        (cluster, redis, workers)
    }

    fn a(&self) -> On<'_> {
        On {
            name: "A",
            api: &self.a,
            client: &self.client,
        }
    }

    fn b(&self) -> On<'_> {
        On {
            name: "B",
            api: &self.b,
            client: &self.client,
        }
    }

    fn both(&self) -> [On<'_>; 2] {
        [self.a(), self.b()]
    }

    async fn mongo(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .unwrap()
            .database(&self.database)
    }
}

/// Polls `check` every [`POLL`] until it holds; panics with `what` once
/// `limit` has passed since `since`.
async fn within<F, Fut>(what: &str, since: Instant, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = since + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} ms",
            limit.as_millis()
        );
        tokio::time::sleep(POLL).await;
    }
}

// --- an SSE reader ---

/// The `id` and `event` of each event a live stream sent, collected by a
/// task of its own so that the stream never lags while the test writes.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<(String, String)>>>);

impl Heard {
    fn ids(&self) -> Vec<String> {
        self.0.lock().iter().map(|(id, _)| id.clone()).collect()
    }

    fn names(&self) -> Vec<String> {
        self.0.lock().iter().map(|(_, e)| e.clone()).collect()
    }
}

/// Opens `/v1/stream` on `on` as `token` and collects what it sends.
async fn listen(on: On<'_>, token: &str) -> Heard {
    let response = on
        .client
        .get(on.api.url("/v1/stream"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the stream on {} did not open",
        on.name
    );
    let heard = Heard::default();
    let sink = heard.clone();
    tokio::spawn(async move {
        let mut response = response;
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut event = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_string());
                    }
                }
                if let Some(event) = event {
                    sink.0.lock().push((id.unwrap_or_default(), event));
                }
            }
        }
    });
    heard
}

// --- the checks ---

/// The event ids of the whole feed, through `on`, page by page.
async fn feed_ids(on: On<'_>, token: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut path = "/v1/events?limit=100".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let page = on
            .expect(Method::GET, &path, token, None, StatusCode::OK)
            .await;
        let items = page["items"].as_array().unwrap();
        let next = page["next_cursor"].as_str().map(str::to_string);
        if items.is_empty() && next == after {
            return ids;
        }
        ids.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        after = next;
    }
    panic!("the feed through {} does not end", on.name);
}

/// 1. Customers written through both instances, each with an SMS written
///    through the other; all read and found through both.
async fn writes_through_both_are_read_and_found_through_both(cluster: &Cluster, admin: &str) {
    let writes = (0..CUSTOMERS).map(|i| {
        let (first, second) = if i % 2 == 0 {
            (cluster.a(), cluster.b())
        } else {
            (cluster.b(), cluster.a())
        };
        let phone = format!("+65877000{i:02}");
        let surname = SURNAMES[i];
        async move {
            let created = first
                .expect(
                    Method::POST,
                    "/v1/customers",
                    admin,
                    Some(&json!({
                        "name": format!("Instance {surname}"),
                        "phones": [phone],
                        "emails": [format!("{}@instances.example", surname.to_lowercase())],
                    })),
                    StatusCode::CREATED,
                )
                .await;
            let customer = created["id"].as_str().unwrap().to_string();
            // The other instance links the SMS to the customer by its number.
            let recorded = second
                .expect(
                    Method::POST,
                    "/v1/engagements",
                    admin,
                    Some(&json!({
                        "customer": {"phone": phone},
                        "channel": "sms", "direction": "inbound",
                        "body": format!("message {i}"),
                        "client_event_id": format!("instances-{i}"),
                    })),
                    StatusCode::CREATED,
                )
                .await;
            assert_eq!(
                recorded["customer_id"].as_str(),
                Some(customer.as_str()),
                "instance {} linked the SMS to another customer than {} created",
                second.name,
                first.name
            );
            (customer, recorded["id"].as_str().unwrap().to_string())
        }
    });
    let written: Vec<(String, String)> = futures::future::join_all(writes).await;

    for on in cluster.both() {
        for (i, (customer, engagement)) in written.iter().enumerate() {
            let read = on
                .expect(
                    Method::GET,
                    &format!("/v1/customers/{customer}"),
                    admin,
                    None,
                    StatusCode::OK,
                )
                .await;
            assert_eq!(read["name"], format!("Instance {}", SURNAMES[i]));
            let timeline = on
                .expect(
                    Method::GET,
                    &format!("/v1/customers/{customer}/engagements"),
                    admin,
                    None,
                    StatusCode::OK,
                )
                .await;
            let ids: Vec<&str> = timeline["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, [engagement.as_str()], "timeline through {}", on.name);
        }
    }

    // The workers index what either instance wrote; both search the same index.
    let started = Instant::now();
    for on in cluster.both() {
        for (i, (customer, _)) in written.iter().enumerate() {
            for query in [
                format!("q={}", SURNAMES[i]),
                format!("phone=%2B65877000{i:02}"),
            ] {
                let path = format!("/v1/search?{query}");
                within(
                    &format!("search {query} through {} to find {customer}", on.name),
                    started,
                    CATCH_UP,
                    || async {
                        let found = on
                            .expect(Method::GET, &path, admin, None, StatusCode::OK)
                            .await;
                        let hits = found["items"].as_array().unwrap();
                        hits.len() == 1
                            && hits[0]["id"] == customer.as_str()
                            && !hits[0]["last_engagement"].is_null()
                    },
                )
                .await;
            }
        }
    }
}

/// 2. Failed logins for one account from one client address, sent to both
///    instances, are counted together: after five, the sixth waits, on
///    either instance, although each saw fewer than five.
async fn failed_logins_are_counted_across_instances(cluster: &Cluster, admin: &str) {
    let email = "limits@instances.example";
    cluster
        .a()
        .expect(
            Method::POST,
            "/v1/users",
            admin,
            Some(&json!({"email": email, "name": "Limits", "password": USER_PASSWORD, "role": "agent"})),
            StatusCode::CREATED,
        )
        .await;
    let guesser = "203.0.113.7";
    for n in 0..crm_api::auth::PAIR_FREE {
        let on = if n % 2 == 0 { cluster.a() } else { cluster.b() };
        let (status, body) = on.login(email, "a wrong guess, surely", guesser).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {n}: {body}");
    }
    // B saw two of the five, A three: only shared counts refuse these.
    for on in [cluster.b(), cluster.a()] {
        let (status, body) = on.login(email, USER_PASSWORD, guesser).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "a sixth attempt through {} from the guessing address: {body}",
            on.name
        );
        assert_eq!(body["code"], "rate_limited", "{body}");
    }
    // The owner, from an address of their own, still gets in.
    let (status, body) = cluster
        .b()
        .login(email, USER_PASSWORD, "198.51.100.20")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// 3. A session ended through A, then the user deactivated through A: B
///    refuses each within a second (requests, refresh, a new login), and
///    ends the live stream the user held there.
async fn a_user_deactivated_on_one_is_refused_by_the_other(cluster: &Cluster, admin: &str) {
    let email = "deactivated@instances.example";
    let user = cluster
        .a()
        .expect(
            Method::POST,
            "/v1/users",
            admin,
            Some(&json!({"email": email, "name": "Deactivated", "password": USER_PASSWORD, "role": "agent"})),
            StatusCode::CREATED,
        )
        .await;
    let user_id = user["id"].as_str().unwrap();
    let (status, tokens) = cluster
        .b()
        .login(email, USER_PASSWORD, "198.51.100.30")
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let b = cluster.b();
    b.expect(Method::GET, "/v1/me", access, None, StatusCode::OK)
        .await;

    // A second session, ended through A: B refuses its access token within
    // a second, and still takes the first session's.
    let (status, second) = cluster
        .a()
        .login(email, USER_PASSWORD, "198.51.100.31")
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_access = second["access_token"].as_str().unwrap();
    b.expect(Method::GET, "/v1/me", second_access, None, StatusCode::OK)
        .await;
    cluster
        .a()
        .expect(
            Method::POST,
            "/v1/auth/logout",
            second_access,
            Some(&json!({ "refresh_token": second["refresh_token"] })),
            StatusCode::NO_CONTENT,
        )
        .await;
    let logged_out = Instant::now();
    b.refuses_within(
        "B to refuse the access token of a session ended through A",
        logged_out,
        Method::GET,
        "/v1/me",
        Some(second_access),
        None,
    )
    .await;
    b.expect(Method::GET, "/v1/me", access, None, StatusCode::OK)
        .await;
    // A live stream the user holds on B.
    let stream = listen(b, access).await;

    cluster
        .a()
        .expect(
            Method::PATCH,
            &format!("/v1/users/{user_id}"),
            admin,
            Some(&json!({"active": false})),
            StatusCode::OK,
        )
        .await;
    let deactivated = Instant::now();
    b.refuses_within(
        "B to refuse the access token of a user deactivated through A",
        deactivated,
        Method::GET,
        "/v1/me",
        Some(access),
        None,
    )
    .await;
    b.refuses_within(
        "B to refuse the refresh token of a user deactivated through A",
        deactivated,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(&json!({ "refresh_token": refresh })),
    )
    .await;
    within(
        "B to end the live stream of a user deactivated through A",
        deactivated,
        PROPAGATION,
        || async { stream.names().iter().any(|e| e == "closed") },
    )
    .await;
    let (status, body) = b.login(email, USER_PASSWORD, "198.51.100.30").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

/// 4. A device enrolled through A, used through B, revoked through A: B
///    refuses its token within a second.
async fn a_device_revoked_on_one_is_refused_by_the_other(cluster: &Cluster, admin: &str) {
    let email = "device-owner@instances.example";
    cluster
        .a()
        .expect(
            Method::POST,
            "/v1/users",
            admin,
            Some(&json!({"email": email, "name": "Device Owner", "password": USER_PASSWORD, "role": "agent"})),
            StatusCode::CREATED,
        )
        .await;
    let (status, tokens) = cluster
        .a()
        .login(email, USER_PASSWORD, "198.51.100.40")
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let agent = tokens["access_token"].as_str().unwrap();
    let enrolled = cluster
        .a()
        .expect(
            Method::POST,
            "/v1/devices",
            agent,
            Some(&json!({"name": "Pixel", "default_region": "SG"})),
            StatusCode::CREATED,
        )
        .await;
    let device_id = enrolled["id"].as_str().unwrap();
    let device_token = enrolled["token"].as_str().unwrap();
    let b = cluster.b();
    let lookup = "/v1/mobile/caller-id?number=%2B6587700000";
    let popup = b
        .expect(Method::GET, lookup, device_token, None, StatusCode::OK)
        .await;
    assert_eq!(popup["known"], true, "{popup}");

    cluster
        .a()
        .expect(
            Method::DELETE,
            &format!("/v1/devices/{device_id}"),
            agent,
            None,
            StatusCode::NO_CONTENT,
        )
        .await;
    let revoked = Instant::now();
    b.refuses_within(
        "B to refuse the token of a device revoked through A",
        revoked,
        Method::GET,
        lookup,
        Some(device_token),
        None,
    )
    .await;
}

/// Waits until the relays have published everything the store's log holds;
/// returns the ids the log holds.
async fn everything_relayed(cluster: &Cluster) -> HashSet<String> {
    let events = cluster
        .mongo()
        .await
        .collection::<mongodb::bson::Document>("events");
    let started = Instant::now();
    within(
        "the relays to publish every event",
        started,
        CATCH_UP,
        || {
            let events = events.clone();
            async move {
                events
                    .count_documents(mongodb::bson::doc! { "relayed": { "$ne": true } })
                    .await
                    .unwrap()
                    == 0
            }
        },
    )
    .await;
    use futures::TryStreamExt;
    let all: Vec<mongodb::bson::Document> = events
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    all.iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect()
}

/// 5. Four relays (two instances, two workers) publish each event of the
///    store's log once; the feed is the same through both instances.
async fn each_event_is_published_once(cluster: &Cluster, admin: &str) -> HashSet<String> {
    let logged = everything_relayed(cluster).await;
    let mut redis = Target::parse(&cluster.redis_url)
        .unwrap()
        .connect(LinkConfig::default())
        .await
        .unwrap();
    let stream_key = format!("{}events", cluster.prefix);
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream_key)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut published: HashMap<String, usize> = HashMap::new();
    for entry in &entries.ids {
        let json: String = entry.get("e").expect("an entry holds its event");
        let envelope: Value = serde_json::from_str(&json).unwrap();
        *published
            .entry(envelope["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = published.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let published: HashSet<String> = published.into_keys().collect();
    assert_eq!(
        published, logged,
        "the stream and the store's log hold different events"
    );

    let through_a = feed_ids(cluster.a(), admin).await;
    let through_b = feed_ids(cluster.b(), admin).await;
    assert_eq!(through_a, through_b, "the feed differs between instances");
    let unique: HashSet<String> = through_a.iter().cloned().collect();
    assert_eq!(unique.len(), through_a.len(), "the feed repeats an event");
    assert_eq!(unique, logged, "the feed and the log hold different events");
    logged
}

/// 6. The streams opened before the writes heard every event published
///    since, each once.
async fn every_stream_hears_every_event(
    streams: &[(&str, Heard)],
    before: &HashSet<String>,
    logged: &HashSet<String>,
) {
    let expected: HashSet<&String> = logged.difference(before).collect();
    assert!(
        expected.len() >= 2 * CUSTOMERS,
        "the writes made too few events to check: {}",
        expected.len()
    );
    for (name, heard) in streams {
        let started = Instant::now();
        within(
            &format!("the stream held by {name} to hear every event"),
            started,
            CATCH_UP,
            || async {
                let ids: HashSet<String> = heard.ids().into_iter().collect();
                expected.iter().all(|id| ids.contains(*id))
            },
        )
        .await;
        let ids = heard.ids();
        let unique: HashSet<&String> = ids.iter().filter(|id| !id.is_empty()).collect();
        assert_eq!(
            unique.len(),
            ids.iter().filter(|id| !id.is_empty()).count(),
            "the stream held by {name} sent an event twice"
        );
        assert!(
            !heard.names().iter().any(|e| e == "closed" || e == "reset"),
            "the stream held by {name}: {:?}",
            heard.names()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_and_two_workers_share_one_store_and_one_redis() {
    two_instances_and_two_workers(false).await;
}

/// The same with a Redis Cluster instead of one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_and_two_workers_share_one_store_and_one_redis_cluster() {
    two_instances_and_two_workers(true).await;
}

async fn two_instances_and_two_workers(on_redis_cluster: bool) {
    let dirs = tempfile::tempdir().unwrap();
    let (cluster, _redis, _workers) = Cluster::start(dirs.path(), on_redis_cluster).await;
    let _keys = on_redis_cluster.then(|| redis_cluster::DeleteOnDrop {
        url: cluster.redis_url.clone(),
        prefix: cluster.prefix.clone(),
    });
    let (status, tokens) = cluster
        .a()
        .login(ADMIN_EMAIL, ADMIN_PASSWORD, "198.51.100.10")
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let admin = tokens["access_token"].as_str().unwrap().to_string();

    // Live streams on both, opened before the writes; then what the log
    // holds already.
    let streams = [
        ("A", listen(cluster.a(), &admin).await),
        ("B", listen(cluster.b(), &admin).await),
    ];
    let before = everything_relayed(&cluster).await;

    writes_through_both_are_read_and_found_through_both(&cluster, &admin).await;
    failed_logins_are_counted_across_instances(&cluster, &admin).await;
    a_user_deactivated_on_one_is_refused_by_the_other(&cluster, &admin).await;
    a_device_revoked_on_one_is_refused_by_the_other(&cluster, &admin).await;
    let logged = each_event_is_published_once(&cluster, &admin).await;
    every_stream_hears_every_event(&streams, &before, &logged).await;

    let _ = cluster.mongo().await.drop().await;
}
