//! What every handler can reach.

use std::sync::Arc;

use crm_indexer::projector::Projector;
use crm_indexer::SearchIndex;
use crm_mobile_bridge::MobileBridge;
use crm_models::service::Crm;
use crm_models::Region;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Auth;
use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub crm: Crm,
    /// Search and caller-ID reads.
    pub index: Arc<dyn SearchIndex>,
    /// Reads a customer's index document from the store when the index misses.
    pub projector: Arc<Projector>,
    pub auth: Arc<Auth>,
    pub config: Arc<Config>,
    /// Region for phone numbers typed without `+`.
    pub default_region: Option<Region>,
    pub metrics: PrometheusHandle,
    /// Devices, their uploads and caller-ID (`/v1/mobile`, `/v1/devices`).
    pub mobile: MobileBridge,
    /// False while the relay cannot publish events (for `/readyz`).
    pub relay_healthy: Arc<std::sync::atomic::AtomicBool>,
    /// Published events for the live streams this process holds.
    pub live: crm_models::live::LiveHub,
    /// Live leaderboard updates for the streams of this process.
    pub boards: crate::analytics::boards::Boards,
    /// Webhook settings, HTTP client and the worker's wake-up.
    pub webhooks: crate::webhooks::Webhooks,
    /// Stream tickets and the shutdown of open streams (`/v1/stream`).
    pub streams: Arc<crate::stream::Streams>,
    /// Keys search cursors to their query (derived from the JWT secret, so
    /// every instance accepts every other's cursors).
    pub cursor_key: Arc<[u8; 32]>,
}
