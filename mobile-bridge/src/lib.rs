//! The Android app's side of the CRM: device enrollment and tokens, batch
//! upload of SMS and call logs, and caller-ID lookups, with the incoming-call
//! signals those leave for the desktop.
//!
//! [`MobileBridge`] is the service; [`router`] serves `/v1/mobile/*` over it
//! for devices only, and `crm-api` mounts that router and calls the bridge
//! from its staff routes (`/v1/devices`, `/v1/calls/incoming`). The bridge
//! knows the domain service, the store trait and the search index trait; it
//! knows nothing of staff authentication, and `crm-api` nothing of device
//! tokens beyond their prefix.
//!
//! # Layout
//! - [`devices`]: enrollment, tokens (SHA-256 at rest), the [`DeviceCaller`] extractor.
//! - [`upload`]: `POST /v1/mobile/events`, per-event checks and results.
//! - [`caller_id`]: `GET /v1/mobile/caller-id`.
//! - `signals`: the background writer of incoming-call signals.
//! - [`sim`]: simulated devices, for `crm-device-sim` and the benchmarks.
//!
//! The device simulator `crm-device-sim` (`src/bin`) is a client of all this,
//! used by the benchmarks.

pub mod caller_id;
pub mod devices;
mod signals;
pub mod sim;
pub mod upload;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use crm_indexer::projector::Projector;
use crm_models::device::{CallSignal, Device};
use crm_models::service::Crm;
use crm_models::store::Store;
use crm_models::time::Timestamp;
use crm_models::{Region, UserId};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use caller_id::{CallerId, CallerIdCustomer, CallerIdJson};
pub use crm_models::problem::{ApiError, Problem};
pub use devices::{DeviceCaller, DeviceView, EnrolledDevice, NewDevice, DEVICE_TOKEN_PREFIX};
pub use upload::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};

use crate::caller_id::CallerIdParams;
use crate::signals::SignalRecorder;
use crate::upload::{UploadRequest, UploadResponse};
use crm_models::problem::{ApiJson, ApiQuery};

/// The mobile bridge: cheap to clone.
#[derive(Clone)]
pub struct MobileBridge {
    inner: Arc<Inner>,
}

struct Inner {
    crm: Crm,
    /// The index and the store (caller ID reads both).
    projector: Arc<Projector>,
    default_region: Option<Region>,
    signals: SignalRecorder,
}

impl MobileBridge {
    /// Must be called on a tokio runtime: it starts the signal writer.
    /// `default_region` (`CRM_DEFAULT_REGION`) applies to devices enrolled
    /// without one.
    pub fn new(crm: Crm, projector: Arc<Projector>, default_region: Option<Region>) -> Self {
        let signals = SignalRecorder::start(crm.clone());
        MobileBridge {
            inner: Arc::new(Inner {
                crm,
                projector,
                default_region,
                signals,
            }),
        }
    }

    fn crm(&self) -> &Crm {
        &self.inner.crm
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.inner.crm.store()
    }

    fn projector(&self) -> &Projector {
        &self.inner.projector
    }

    fn signals(&self) -> &SignalRecorder {
        &self.inner.signals
    }

    /// The region for the device's numbers without `+`: its own, else the CRM's.
    fn region_of(&self, device: &Device) -> Option<Region> {
        device
            .default_region
            .as_deref()
            .and_then(|r| Region::parse(r).ok())
            .or(self.inner.default_region)
    }

    /// Incoming-call signals at or after `since`, of one user's devices or of
    /// all (`None`), oldest first, at most `limit`.
    pub async fn incoming_calls(
        &self,
        user: Option<UserId>,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CallSignal>, ApiError> {
        Ok(self.store().list_call_signals(user, since, limit).await?)
    }

    /// One of `user`'s incoming-call signals by id, stored at most a minute
    /// before `by` (its event's time); `None` when it is not (or no longer)
    /// kept.
    pub async fn incoming_call(
        &self,
        user: UserId,
        id: uuid::Uuid,
        by: Timestamp,
    ) -> Result<Option<CallSignal>, ApiError> {
        let since = by - chrono::Duration::seconds(60);
        let signals = self
            .store()
            .list_call_signals(Some(user), since, 1_000)
            .await?;
        Ok(signals.into_iter().find(|s| s.id == id))
    }
}

/// The device routes under `/v1/mobile`, with their documentation.
pub fn routes() -> OpenApiRouter<MobileBridge> {
    OpenApiRouter::new()
        .routes(routes!(upload_events))
        .routes(routes!(caller_id))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
}

/// The `/v1/mobile` routes, with their full paths, ready to merge into any
/// router (merged, not nested: a nested router costs every request a prefix
/// strip and a second route lookup).
pub fn router<S: Clone + Send + Sync + 'static>(bridge: MobileBridge) -> axum::Router<S> {
    routes().split_for_parts().0.with_state(bridge)
}

/// The contract of the `/v1/mobile` routes, with their full paths.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().split_for_parts().1;
    // An upload's events are any JSON (each is read on its own); the
    // schema of a good one is documented beside them.
    let components = doc.components.get_or_insert_with(Default::default);
    let mut schemas = vec![(
        <upload::MobileEvent as utoipa::ToSchema>::name().into_owned(),
        <upload::MobileEvent as utoipa::PartialSchema>::schema(),
    )];
    <upload::MobileEvent as utoipa::ToSchema>::schemas(&mut schemas);
    for (name, schema) in schemas {
        components.schemas.entry(name).or_insert(schema);
    }
    doc
}

/// Uploads a batch of the phone's SMS, calls and WhatsApp messages. Each
/// event gets its own result; a bad one never fails the batch. A retried or
/// overlapping batch reports `duplicate` for what was stored before.
/// Device tokens only.
#[utoipa::path(
    post, path = "/v1/mobile/events", tag = "mobile",
    request_body = UploadRequest,
    responses(
        (status = 200, description = "One result per event", body = UploadResponse),
        (status = 401, description = "`unauthorized`: not a valid device token (staff tokens and API keys do not work here)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: more than 500 events or 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: no `events` array", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the store cannot be written; retry the batch after `Retry-After` seconds. A conflict or contention on one event is reported in that event's result (`status` 409), not here", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn upload_events(
    State(bridge): State<MobileBridge>,
    DeviceCaller(device): DeviceCaller,
    body: Result<ApiJson<UploadRequest>, ApiError>,
) -> Result<ApiJson<UploadResponse>, ApiError> {
    let ApiJson(body) = body.map_err(|e| match e {
        ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(format!(
            "the request body is larger than {MAX_BATCH_BYTES} bytes (1 MiB); send fewer events per batch"
        )),
        other => other,
    })?;
    bridge.upload(&device, body.events).await.map(ApiJson)
}

/// Caller ID: who has this number, with counts and the last five
/// engagements. `known: false` for an unknown number. Device tokens only.
#[utoipa::path(
    get, path = "/v1/mobile/caller-id", tag = "mobile",
    params(CallerIdParams),
    responses(
        (status = 200, body = CallerId),
        (status = 401, description = "`unauthorized`: not a valid device token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: not a phone number", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn caller_id(
    State(bridge): State<MobileBridge>,
    DeviceCaller(device): DeviceCaller,
    ApiQuery(params): ApiQuery<CallerIdParams>,
) -> Result<CallerIdJson, ApiError> {
    bridge.caller_id(&device, &params.number).await
}
