//! API keys for integrations (admins only). The key itself is shown once, in
//! the answer to its creation; lists show its prefix.

use axum::extract::State;
use axum::http::StatusCode;
use crm_models::ids::{ApiKeyId, UserId};
use crm_models::staff::{ApiKey, KeyScope, Role};
use crm_models::time::{self, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::pagination::Page;
use crate::auth::{AdminOnly, NewApiKey};
use crate::error::{ApiError, ApiJson, ApiPath, ErrorCode, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for, e.g. `website`.
    pub name: String,
    /// Only `service` (the default): integrations may ingest, nothing else.
    pub role: Option<Role>,
    /// What the key may write: `track` (page views), `engagements`,
    /// `customers:write`. Default `["track", "engagements"]`. Whatever its
    /// scopes, a key reads nothing: its answers carry ids and statuses only.
    #[schema(value_type = Option<Vec<KeyScope>>)]
    pub scopes: Option<Vec<String>>,
}

/// A key just created, with the secret. Store it now: it is never shown again.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedApiKeyView {
    pub id: ApiKeyId,
    pub name: String,
    pub role: Role,
    pub scopes: Vec<KeyScope>,
    /// The first characters of the key, as lists show them.
    pub prefix: String,
    /// `crm_key_...`: send as `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
    pub key: String,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A key as lists show it: no secret, no hash.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: ApiKeyId,
    pub name: String,
    pub role: Role,
    pub scopes: Vec<KeyScope>,
    pub prefix: String,
    pub created_by: UserId,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Set once the key is revoked.
    #[serde(with = "time::rfc3339_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            name: k.name,
            role: k.role,
            scopes: k.scopes,
            prefix: k.prefix,
            created_by: k.created_by,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// Creates an API key for an integration, with the scopes it may write.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "Created; `key` is shown only now", body = CreatedApiKeyView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_api_key(
    State(state): State<AppState>,
    AdminOnly(caller): AdminOnly,
    ApiJson(body): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, ApiJson<CreatedApiKeyView>), ApiError> {
    let new = NewApiKey::parse(&body.name, body.role)?.with_scopes(body.scopes.as_deref())?;
    let creator = caller.user_id().ok_or(ApiError::Forbidden)?;
    let created = state.auth.create_api_key(creator, new).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedApiKeyView {
            id: created.key.id,
            name: created.key.name,
            role: created.key.role,
            scopes: created.key.scopes,
            prefix: created.key.prefix,
            key: created.secret,
            created_at: created.key.created_at,
        }),
    ))
}

/// Every API key, revoked ones too, oldest first. Never the keys themselves.
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    responses(
        (status = 200, body = Page<ApiKeyView>),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_api_keys(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
) -> Result<ApiJson<Page<ApiKeyView>>, ApiError> {
    let keys = state.auth.list_api_keys().await?;
    Ok(ApiJson(Page {
        items: keys.into_iter().map(ApiKeyView::from).collect(),
        next_cursor: None,
    }))
}

/// Revokes a key; requests with it fail from now on.
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "API key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`api_key_not_found`: unknown or revoked already", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id: ApiKeyId = id.parse().map_err(|_| {
        ApiError::not_found(
            ErrorCode::ApiKeyNotFound,
            format!("no active API key {id:?}"),
        )
    })?;
    state.auth.revoke_api_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
