//! The CRM's HTTP service (`crm-api`).
//!
//! Owns configuration, telemetry, authentication and the JSON API over the
//! domain service in `crm-models`; mounts the mobile bridge under
//! `/v1/mobile`. Handlers are thin: extract, call [`crm_models::service::Crm`],
//! map the result. It knows which store adapter to open, nothing more of them.
//!
//! # Layout
//! - [`config`], [`telemetry`]: start-up.
//! - [`error`]: the one error type and its problem+json rendering.
//! - [`auth`]: passwords, tokens, API keys, role guards.
//! - [`routes`]: one module per resource; [`openapi`]: the generated contract.
//! - [`console`]: the sales staff's console at `/`; [`cors`]: other origins.

pub mod analytics;
pub mod auth;
pub mod bulk;
pub mod config;
pub mod console;
pub mod cors;
pub mod error;
pub mod openapi;
pub mod request_metrics;
pub mod routes;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::Router;
use crm_indexer::projector::Projector;
use crm_indexer::startup::EventsAndIndex;
use crm_indexer::worker::{default_consumer_name, run_worker, EventHandler, WorkerConfig};
use crm_indexer::SearchIndex;
use crm_models::events::{EventLog, EventStream};
use crm_models::live::{LiveHub, Tee};
use crm_models::relay::Relay;
use crm_models::service::Crm;
use crm_models::store::Store;
use crm_models::Region;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

/// The allocator of every program that links crm-api (the server, its
/// benchmarks and tests). Request handling allocates many small, short-lived
/// buffers on several threads, where glibc's allocator spent about a third
/// of the upload benchmark's CPU time (BENCHMARKS.md). Built with mimalloc's
/// `no_thp` feature: advising transparent huge pages on its memory made the
/// kernel spend 10-14% of ingest's CPU zeroing them (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest JSON body accepted, except where a route says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A built service, bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on its own address (`CRM_METRICS_LISTEN`), unless off.
    metrics_listener: Option<TcpListener>,
    router: Router,
    state: AppState,
    background: Background,
}

/// The index worker and the event relay, stopped after the server.
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Start-up choices beside the configuration.
#[derive(Default)]
pub struct StartOptions {
    /// Awaited by the in-process index's load after it has read every
    /// customer and before searches may use it: tests hold the warm-up there.
    pub hold_index_load: Option<futures::future::BoxFuture<'static, ()>>,
}

impl Application {
    /// Opens the store, binds the listeners and starts the background work.
    /// In embedded mode the memory index is loaded from the store beside the
    /// server: everything but search answers at once (`/readyz` says
    /// `warming_up` meanwhile).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, StartOptions::default()).await
    }

    pub async fn build_with(config: Config, options: StartOptions) -> anyhow::Result<Self> {
        let store = open_store(&config).await?;
        let opened = open_events_and_index(&config).await?;
        let in_process = opened.in_process();
        let state = build_state(config, store, opened.index, opened.memory).await?;
        let mut background = start_background(&state, opened.events, opened.log);
        // Imports a stop or a crash interrupted go on from their last chunk.
        tokio::spawn(bulk::jobs::resume_unfinished(
            state.crm.clone(),
            state.config.data_dir.clone(),
        ));
        if in_process {
            // Not ready from the first request on, until the load completes.
            state.projector.warmup().begin();
            let hold = options
                .hold_index_load
                .unwrap_or_else(|| Box::pin(std::future::ready(())));
            background.tasks.push(tokio::spawn(load_memory_index(
                state.projector.clone(),
                hold,
                background.stop.subscribe(),
            )));
        }
        let router = app(state.clone());
        let listener = TcpListener::bind(state.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", state.config.listen))?;
        let metrics_listener = match state.config.metrics_listen.0 {
            None => None,
            // The API works without metrics: a taken port is logged, not fatal.
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot serve /metrics (CRM_METRICS_LISTEN); serving the API without it");
                    None
                }
            },
        };
        Ok(Application {
            listener,
            metrics_listener,
            router,
            state,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.listen)
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and
    /// lets the index worker finish its batch.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(
            addr = %self.local_addr(),
            metrics = ?self.metrics_addr(),
            store = self.state.crm.store().kind(),
            index = self.state.index.kind(),
            "crm-api listening"
        );
        let mut tasks = self.background.tasks;
        if let Some(listener) = self.metrics_listener {
            let mut stopped = self.background.stop.subscribe();
            let router = routes::health::metrics_router(self.state.clone());
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            }));
        }
        // Open streams never end by themselves: end them when the shutdown
        // begins, so that the graceful shutdown does not wait for them.
        let streams = self.state.streams.clone();
        let shutdown = async move {
            shutdown.await;
            streams.shut_down();
        };
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("server error");
        let _ = self.background.stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        // The index worker has finished its batch: what the index holds now
        // is what the next start-up begins from.
        write_snapshot(&self.state.projector).await;
        served
    }
}

/// Opens MongoDB when a URI is configured, otherwise the embedded store
/// (as `crm-indexer` does: [`crm_indexer::startup::open_store`]).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    crm_indexer::startup::open_store(config).await
}

/// The Redis stream and index when `CRM_REDIS_URL` is set; otherwise an
/// in-process log and index ([`crm_indexer::startup::open_events_and_index`]).
pub async fn open_events_and_index(config: &Config) -> anyhow::Result<EventsAndIndex> {
    crm_indexer::startup::open_events_and_index(config).await
}

/// The in-process index starts empty: fill it from the store, beside the
/// running server and the index worker (which applies new writes meanwhile:
/// [`Projector::load`]). A failed load is tried again until it succeeds or
/// the server stops; searches answer 503 until then.
async fn load_memory_index(
    projector: Arc<Projector>,
    hold: futures::future::BoxFuture<'static, ()>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut hold = Some(hold);
    let mut wait = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let this_hold = hold
            .take()
            .unwrap_or_else(|| Box::pin(std::future::ready(())));
        let loaded = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            loaded = projector.load(this_hold) => loaded,
        };
        match loaded {
            Ok(report) => {
                tracing::info!(
                    customers = report.rebuild.customers,
                    from_snapshot = report.from_snapshot,
                    from_store = report.from_store,
                    seconds = started.elapsed().as_secs_f64(),
                    "search index loaded"
                );
                // The next start-up reads the snapshot instead.
                if report.snapshot_is_stale() {
                    write_snapshot(&projector).await;
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot load the search index from the store; search stays unavailable");
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Writes the in-process index's snapshot (if it has one); a failure is
/// logged: the next start-up then reads more from the store.
async fn write_snapshot(projector: &Projector) {
    let started = Instant::now();
    match projector.write_snapshot().await {
        Ok(Some(customers)) => tracing::info!(
            customers,
            seconds = started.elapsed().as_secs_f64(),
            "search index snapshot written"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot write the search index snapshot"),
    }
}

fn start_background(
    state: &AppState,
    events: Arc<dyn EventStream>,
    log: Arc<dyn EventLog>,
) -> Background {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    if state.config.index_worker {
        let handler: Arc<dyn EventHandler> = state.projector.clone();
        let mut stopped = stopped.clone();
        let config = WorkerConfig::new(default_consumer_name());
        tasks.push(tokio::spawn(async move {
            run_worker(log, handler, config, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        }));
    }
    // Live push: this process's streams hear what the relay published, from
    // the Redis stream (published by whichever instance relays) or, in one
    // process, straight from the relay.
    let events: Arc<dyn EventStream> = match state.config.redis() {
        Some(url) => {
            // A write here wakes the relay of whichever instance holds the lease.
            let mut wake_stopped = stopped.clone();
            tasks.push(tokio::spawn(crm_indexer::live_tail::relay_wake_bridge(
                url.to_string(),
                format!("{}relay:wake", state.config.redis_prefix),
                state.crm.remote_wake(),
                state.crm.relay_wake(),
                async move {
                    let _ = wake_stopped.wait_for(|s| *s).await;
                },
            )));
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(crm_indexer::live_tail::tail_into_hub(
                url.to_string(),
                format!("{}events", state.config.redis_prefix),
                state.live.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )));
            events
        }
        None => Arc::new(Tee::new(events, state.live.clone())),
    };
    if state.config.webhooks.worker {
        let store = state.crm.store().clone();
        tasks.push(tokio::spawn(webhooks::run_dispatcher(
            store.clone(),
            state.webhooks.clone(),
            state.live.clone(),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(webhooks::run_worker(
            store,
            state.webhooks.clone(),
            stopped.clone(),
        )));
    }
    if state.config.analytics.worker {
        tasks.push(tokio::spawn(analytics::run_consumer(
            state.crm.store().clone(),
            Arc::new(crm_models::analytics::Consumer::new(
                state.config.analytics.timezone,
            )),
            state.live.clone(),
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(analytics::boards::run_watcher(
        state.clone(),
        stopped.clone(),
    )));
    let relay = Relay::new(state.crm.store().clone(), events, state.crm.relay_wake())
        .with_retention(state.config.event_retention())
        .sharing_health(state.relay_healthy.clone());
    let mut relay_stopped = stopped.clone();
    tasks.push(tokio::spawn(relay.run(async move {
        let _ = relay_stopped.wait_for(|s| *s).await;
    })));
    // Mends what older versions left of half-applied merges; reads every
    // customer once, so it runs beside the server rather than before it.
    let crm = state.crm.clone();
    let mut stopped = stopped;
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => {}
            report = crm.repair() => match report {
                Ok(r) if r.is_clean() => tracing::debug!(customers = r.customers, "repair found nothing to mend"),
                Ok(r) => tracing::warn!(report = ?r, "repair mended half-applied merges"),
                Err(e) => tracing::warn!(error = %e, "repair at start-up failed; run `crm-api repair`"),
            },
        }
    }));
    Background { stop, tasks }
}

/// Wires the state: auth (and the first admin), the domain service, the
/// index, metrics.
pub async fn build_state(
    config: Config,
    store: Arc<dyn Store>,
    index: Arc<dyn SearchIndex>,
    memory: Option<Arc<crm_indexer::MemoryIndex>>,
) -> anyhow::Result<AppState> {
    let secret = jwt_secret(&config)?;
    let default_region = config
        .default_region
        .as_deref()
        .map(Region::parse)
        .transpose()
        .context("CRM_DEFAULT_REGION")?;
    let policy = config.link_policy(default_region)?;
    let mut auth = Auth::new(store.clone(), &secret, &config);
    if let Some(url) = config.redis() {
        let limiter = auth::LoginLimiter::shared(url, &config.redis_prefix)
            .await
            .context("cannot reach Redis (CRM_REDIS_URL) for the login limits")?;
        auth = auth.with_login_limiter(limiter);
    }
    let auth = Arc::new(auth);
    let streams = stream::Streams::new(&secret, config.redis(), &config.redis_prefix)
        .await
        .context("cannot reach Redis (CRM_REDIS_URL) for the stream tickets")?;
    auth.ensure_first_admin(
        config.admin_email.as_deref(),
        config.admin_password.as_deref(),
    )
    .await?;
    let crm = Crm::new(store.clone()).with_policy(policy);
    let mut projector = Projector::new(store, index.clone());
    if let Some(memory) = memory {
        // The in-process index keeps a snapshot beside the store, so that
        // a restart need not read every customer's engagements.
        let path = config
            .data_dir
            .join(crm_indexer::memory::snapshot::SNAPSHOT_FILE);
        projector = projector.with_snapshot(memory, path);
    }
    let projector = Arc::new(projector);
    let mobile =
        crm_mobile_bridge::MobileBridge::new(crm.clone(), projector.clone(), default_region);
    let webhooks = webhooks::Webhooks::new(config.webhooks.clone())?;
    Ok(AppState {
        crm,
        projector,
        index,
        mobile,
        auth,
        config: Arc::new(config),
        default_region,
        metrics: telemetry::metrics_handle(),
        relay_healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        live: LiveHub::default(),
        boards: analytics::boards::Boards::default(),
        webhooks,
        streams: Arc::new(streams),
        cursor_key: Arc::new(routes::search::cursor_key(&secret)),
    })
}

/// The JWT secret: configured (at least 32 bytes), or in embedded mode one
/// created at random on first start and kept in the data directory.
fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        anyhow::ensure!(
            secret.len() >= 32,
            "CRM_JWT_SECRET must be at least 32 bytes"
        );
        return Ok(secret.as_bytes().to_vec());
    }
    anyhow::ensure!(
        config.store().mongodb_uri.is_none(),
        "CRM_JWT_SECRET is required with CRM_MONGODB_URI: every crm-api instance must share it"
    );
    secret_file(&config.data_dir.join("jwt-secret"))
}

fn secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    if let Ok(existing) = std::fs::read_to_string(path) {
        let secret = existing.trim().as_bytes().to_vec();
        anyhow::ensure!(
            secret.len() >= 32,
            "{} is shorter than 32 bytes",
            path.display()
        );
        return Ok(secret);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut raw = [0u8; 48];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut file, secret.as_bytes())?;
    file.sync_all()?;
    Ok(secret.into_bytes())
}

/// The whole HTTP surface, shared by `main` and the tests.
pub fn app(state: AppState) -> Router {
    let (api, _) = routes::api_router().split_for_parts();
    let request_id = HeaderName::from_static("x-request-id");
    let mobile = crm_mobile_bridge::router(state.mobile.clone());
    let cors = cors::layer(&state.config.cors_origins);
    let router = api
        .merge(mobile)
        .merge(routes::health::router())
        .merge(console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One stack, applied once: each `layer` call would box and clone
        // the route's service once more on every request. Outermost first.
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(axum::middleware::from_fn(request_timeout))
                .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
                .layer(request_metrics::RequestMetricsLayer),
        );
    // Outside the rest: a preflight is answered before anything else runs.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
    .with_state(state)
}

/// A request that takes longer than [`REQUEST_TIMEOUT`] is answered 503
/// `unavailable` (a problem document with `Retry-After`), like any other
/// moment the service cannot finish the work.
async fn request_timeout(request: Request, next: axum::middleware::Next) -> Response {
    // An import's body (up to 1 GiB) is read before the answer: its
    // upload may take longer than any other request.
    if request.method() == axum::http::Method::POST && request.uri().path() == "/v1/imports" {
        return next.run(request).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(seconds = REQUEST_TIMEOUT.as_secs(), "request timed out");
            ApiError::Unavailable("the request took too long; try again".into()).into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found(crate::error::ErrorCode::RouteNotFound, "no such route")
}

/// 405 `method_not_allowed`; axum adds the `Allow` header with the route's
/// methods.
async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Resolves on Ctrl-C or SIGTERM (as `crm-indexer`'s does).
pub use crm_indexer::startup::shutdown_signal;
