//! Liveness, readiness and metrics. Unauthenticated by design: they reveal
//! nothing but whether the service works.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.yaml", get(openapi))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the store answers. The index being down, or the relay unable
/// to publish events, makes it `degraded`: writes still work (their events
/// wait in the store's log), search may be stale.
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
    let status = if index_ok && relaying {
        "ready"
    } else {
        "degraded"
    };
    Ok(Json(json!({
        "status": status,
        "store": store.kind(),
        "index": state.index.kind(),
        "index_reachable": index_ok,
        "events_relaying": relaying,
        "events_pending": pending,
    })))
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
