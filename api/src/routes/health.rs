//! Liveness, readiness and metrics. Liveness and readiness are
//! unauthenticated by design: they reveal nothing but whether the service
//! works. Metrics say more (routes, volumes, timings): they are served on a
//! listener of their own (`CRM_METRICS_LISTEN`, loopback by default), and on
//! the API's port only to requests carrying `CRM_METRICS_TOKEN`.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use crm_indexer::warmup::WarmupStatus;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_with_token))
        .route("/openapi.yaml", get(openapi))
}

/// `GET /metrics` alone, for the metrics listener.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers. The index being down, or the relay unable
/// to publish events, makes it `degraded`: writes still work (their events
/// wait in the store's log), search may be stale. While the in-process index
/// loads after a start it is `warming_up`, still 200: everything but search
/// answers (logins, reads, writes, caller-ID from the store), and the only
/// instance of an embedded deployment must not be taken out of service for
/// it; `search` says `warming_up` with the customers loaded so far, and the
/// search routes answer 503 with `Retry-After` until it is `ready`.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let store = state.crm.store();
    store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "store not ready");
        ApiError::Unavailable(format!("the {} store is not ready", store.kind()))
    })?;
    let index_ok = state.index.ping().await.is_ok();
    let pending = state.crm.pending_events().await.unwrap_or(0);
    let relaying = state
        .relay_healthy
        .load(std::sync::atomic::Ordering::Relaxed);
    let warmup = state.projector.warmup().status();
    let status = match warmup {
        _ if !index_ok || !relaying => "degraded",
        WarmupStatus::WarmingUp { .. } => "warming_up",
        WarmupStatus::Ready => "ready",
    };
    let mut body = json!({
        "status": status,
        "store": store.kind(),
        "index": state.index.kind(),
        "index_reachable": index_ok,
        "events_relaying": relaying,
        "events_pending": pending,
        "search": "ready",
    });
    if let WarmupStatus::WarmingUp { loaded, elapsed } = warmup {
        body["search"] = json!("warming_up");
        body["search_customers_loaded"] = json!(loaded);
        body["search_warming_seconds"] = json!(elapsed.as_secs());
    }
    Ok(Json(body))
}

/// `/metrics` on the API's port: only with `CRM_METRICS_TOKEN` configured
/// and sent as a bearer token; a route that does not exist otherwise.
async fn metrics_with_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let Some(expected) = state.config.metrics_token.as_deref() else {
        return Err(ApiError::not_found(
            crate::error::ErrorCode::RouteNotFound,
            "no such route",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if same_secret(token, expected) => Ok(metrics(State(state)).await),
        _ => Err(ApiError::Unauthorized(
            "send `Authorization: Bearer <CRM_METRICS_TOKEN>` for /metrics",
        )),
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn openapi() -> Result<impl IntoResponse, ApiError> {
    let yaml = crate::openapi::yaml().map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/yaml")], yaml))
}
