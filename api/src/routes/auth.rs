//! Sessions: log in, refresh, log out, and who am I.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use crm_models::staff::Role;
use crm_models::Email;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::client_addr::client_address;
use crate::auth::{Caller, Principal, Session, Staff};
use crate::error::{ApiError, ApiJson, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A new session: a short-lived access token and the refresh token that renews it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Single use: `POST /v1/auth/refresh` exchanges it for a new pair.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl From<Session> for TokenResponse {
    fn from(s: Session) -> Self {
        TokenResponse {
            access_token: s.access_token,
            refresh_token: s.refresh_token,
            token_type: "Bearer",
            expires_in: s.expires_in,
        }
    }
}

/// The client's address, for login throttling: the socket's peer, or behind
/// a proxy listed in `CRM_TRUSTED_PROXIES` the address it forwarded
/// (`X-Forwarded-For`). Without connection info (an in-process test router)
/// every client shares one budget.
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(ClientAddr(client_address(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// Logs a staff user in. Unknown email, wrong password and inactive user get
/// the same answer. Failed attempts slow down, they never lock the owner
/// out: after 5 failures for one account from one client address, each
/// further attempt from there waits 2 s, 4 s, 8 s, ... (at most 15 min);
/// after 10 for one account from anywhere, 1 s, 2 s, 4 s, ... (at most
/// 60 s); a client address gets 20 attempts a minute. A 429 says how long in
/// `Retry-After`.
#[utoipa::path(
    post, path = "/v1/auth/login", tag = "auth",
    security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "`unauthorized`: invalid email or password", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: too many attempts; see `Retry-After`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    let session = state.auth.login(&body.email, body.password, client).await?;
    Ok(ApiJson(session.into()))
}

/// Exchanges a refresh token for a new access token and refresh token. Each
/// refresh token works once; presenting one again ends its whole session.
#[utoipa::path(
    post, path = "/v1/auth/refresh", tag = "auth",
    security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "Renewed", body = TokenResponse),
        (status = 401, description = "`unauthorized`: invalid, expired, used or revoked refresh token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    let session = state.auth.refresh(&body.refresh_token).await?;
    Ok(ApiJson(session.into()))
}

/// Ends the session of this refresh token: every refresh token of its
/// family, and the access tokens issued with them (on every instance within
/// a second). Does nothing for a token that is not the caller's.
#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not a staff user", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn logout(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    state.auth.logout(&caller, &body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller: a staff user (with email) or an API key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    #[schema(format = Uuid)]
    pub id: String,
    /// Staff users only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    pub name: String,
    pub role: Role,
}

/// Who the credentials belong to.
#[utoipa::path(
    get, path = "/v1/me", tag = "auth",
    responses(
        (status = 200, body = Me),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn me(State(state): State<AppState>, caller: Principal) -> Result<ApiJson<Me>, ApiError> {
    Ok(ApiJson(match state.auth.caller(&caller).await? {
        Caller::User(u) => Me {
            id: u.id.to_string(),
            email: Some(u.email),
            name: u.name,
            role: u.role,
        },
        Caller::ApiKey(k) => Me {
            id: k.id.to_string(),
            email: None,
            name: k.name,
            role: k.role,
        },
    }))
}
