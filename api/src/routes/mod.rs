//! One module per resource. Each returns an `OpenApiRouter` so that the
//! contract in `openapi.yaml` is generated from the same routes that serve.

pub mod analytics;
pub mod api_keys;
pub mod auth;
pub mod customers;
pub mod devices;
pub mod engagements;
pub mod events;
pub mod exports;
pub mod health;
pub mod imports;
pub mod input;
pub mod linking;
pub mod pagination;
pub mod search;
pub mod users;
pub mod webhooks;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Every documented route under `/v1`.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .merge(auth::router())
        .merge(users::router())
        .merge(api_keys::router())
        .merge(customers::router())
        .merge(engagements::router())
        .merge(search::router())
        .merge(linking::router())
        .merge(devices::router())
        .merge(webhooks::router())
        .merge(events::router())
        .merge(analytics::router())
        .merge(exports::router())
        .merge(imports::router())
}
