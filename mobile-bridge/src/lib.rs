//! The Android app's side of the CRM: device enrollment and tokens, batch
//! upload of SMS and call logs, and caller-ID lookups. Exposes a [`Router`]
//! that `crm-api` mounts under `/v1/mobile`. It knows the domain service, not
//! the store adapters.

use axum::Router;

/// The routes under `/v1/mobile`. Empty until the mobile bridge is built.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}
