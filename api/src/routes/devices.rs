//! Staff's side of the mobile bridge: enrolling and revoking their Android
//! devices, and reading the incoming-call signals those devices' caller-ID
//! lookups leave (for a desktop popup). The devices' own routes are under
//! `/v1/mobile`, served by `crm-mobile-bridge`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Duration;
use crm_mobile_bridge::{DeviceView, EnrolledDevice, NewDevice};
use crm_models::device::CallSignal;
use crm_models::staff::Role;
use crm_models::time;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::pagination::{self, Page};
use crate::auth::{Principal, Staff};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Problem};
use crate::state::AppState;

/// How far back `GET /v1/calls/incoming` looks without `since`.
const DEFAULT_INCOMING_MINUTES: i64 = 10;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enroll_device, list_devices))
        .routes(routes!(revoke_device))
        .routes(routes!(incoming_calls))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollDevice {
    /// What the device is, e.g. `Ann's Pixel 8`.
    pub name: String,
    /// ISO region for numbers the phone reports without `+` (default `CRM_DEFAULT_REGION`).
    pub default_region: Option<String>,
}

/// The caller's user id: staff tokens always have one.
fn user_of(caller: &Principal) -> Result<crm_models::UserId, ApiError> {
    caller.user_id().ok_or(ApiError::Forbidden)
}

/// Admins see and manage every device; agents their own.
fn owner_scope(caller: &Principal) -> Result<Option<crm_models::UserId>, ApiError> {
    if caller.role == Role::Admin {
        Ok(None)
    } else {
        user_of(caller).map(Some)
    }
}

/// Enrolls an Android device for the calling user. The answer holds the
/// device token, shown only now: put it on the phone.
#[utoipa::path(
    post, path = "/v1/devices", tag = "devices",
    request_body = EnrollDevice,
    responses(
        (status = 201, description = "Enrolled; `token` is shown only now", body = EnrolledDevice),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: staff only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn enroll_device(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiJson(body): ApiJson<EnrollDevice>,
) -> Result<(StatusCode, ApiJson<EnrolledDevice>), ApiError> {
    let new = NewDevice::parse(&body.name, body.default_region.as_deref())?;
    let enrolled = state.mobile.enroll(user_of(&caller)?, new).await?;
    Ok((StatusCode::CREATED, ApiJson(enrolled)))
}

/// The caller's devices (admins: every device), revoked ones too, oldest
/// first. Never the tokens.
#[utoipa::path(
    get, path = "/v1/devices", tag = "devices",
    responses(
        (status = 200, body = Page<DeviceView>),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: staff only", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_devices(
    State(state): State<AppState>,
    Staff(caller): Staff,
) -> Result<ApiJson<Page<DeviceView>>, ApiError> {
    let items = state.mobile.devices(owner_scope(&caller)?).await?;
    Ok(ApiJson(Page {
        items,
        next_cursor: None,
    }))
}

/// Revokes a device: its token is refused from the next request on. Agents
/// revoke their own devices, admins any.
#[utoipa::path(
    delete, path = "/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`device_not_found`: unknown, someone else's, or revoked already", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_device(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.mobile.revoke(&id, owner_scope(&caller)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncomingQuery {
    /// Signals at or after this time (RFC 3339); default: the last 10 minutes.
    pub since: Option<String>,
    /// 1 to 500, default 50.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IncomingCalls {
    /// Oldest first. Poll again with `since` set to the last `at`; a signal
    /// at exactly that time comes again (match on `id`).
    pub items: Vec<CallSignal>,
}

/// Incoming-call signals: caller-ID lookups (with no `customer_id` for a
/// number nobody has), made by the caller's devices (admins: every device), for a desktop popup.
#[utoipa::path(
    get, path = "/v1/calls/incoming", tag = "devices",
    params(IncomingQuery),
    responses(
        (status = 200, body = IncomingCalls),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn incoming_calls(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiQuery(query): ApiQuery<IncomingQuery>,
) -> Result<ApiJson<IncomingCalls>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let since = match query.since.as_deref() {
        Some(raw) => time::parse_input(raw).map_err(|e| ApiError::field("since", e))?,
        None => time::now() - Duration::minutes(DEFAULT_INCOMING_MINUTES),
    };
    let items = state
        .mobile
        .incoming_calls(owner_scope(&caller)?, since, limit)
        .await?;
    Ok(ApiJson(IncomingCalls { items }))
}
