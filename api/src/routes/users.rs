//! Staff accounts (admins only): create, list, read, change, deactivate.

use axum::extract::State;
use axum::http::StatusCode;
use crm_models::ids::UserId;
use crm_models::staff::{Role, User};
use crm_models::time::{self, Timestamp};
use crm_models::Email;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::pagination::{self, Page};
use crate::auth::{parse_team, AdminOnly, NewUser, StaffRole, UserPatch};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user, patch_user))
}

/// A staff user as the API shows it: never the password hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub email: Email,
    pub name: String,
    pub role: Role,
    /// Inactive users cannot log in, and their tokens stop working.
    pub active: bool,
    /// The sales team (analytics group by it); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            name: u.name,
            role: u.role,
            active: u.active,
            team: u.team,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    #[serde(default)]
    pub name: String,
    /// At least 12 characters.
    pub password: String,
    pub role: StaffRole,
    /// The sales team, at most 100 characters.
    #[serde(default)]
    pub team: Option<String>,
}

/// Creates a staff user.
#[utoipa::path(
    post, path = "/v1/users", tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_user(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, ApiJson<UserView>), ApiError> {
    let new = NewUser::parse(&body.email, &body.name, body.role, body.password)?
        .with_team(body.team.as_deref())?;
    let user = state.auth.create_user(new).await?;
    Ok((StatusCode::CREATED, ApiJson(user.into())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsers {
    /// 1 to 500, default 50.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// Staff users by id (oldest first).
#[utoipa::path(
    get, path = "/v1/users", tag = "users",
    params(ListUsers),
    responses(
        (status = 200, body = Page<UserView>),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_users(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiQuery(query): ApiQuery<ListUsers>,
) -> Result<ApiJson<Page<UserView>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(|c| {
            let parts = pagination::decode(c, 1)?;
            parts[0]
                .parse::<UserId>()
                .map_err(|_| ApiError::field("cursor", "not a cursor this API issued"))
        })
        .transpose()?;
    let (users, more) = state.auth.list_users(after, limit).await?;
    let next_cursor = users
        .last()
        .filter(|_| more)
        .map(|u| pagination::encode(&[&u.id.to_string()]));
    Ok(ApiJson(Page {
        items: users.into_iter().map(UserView::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, body = UserView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`user_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_user(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<UserView>, ApiError> {
    let id = parse_user_id(&id)?;
    Ok(ApiJson(state.auth.get_user(id).await?.into()))
}

/// Fields to change; absent fields stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    pub name: Option<String>,
    pub role: Option<StaffRole>,
    /// A new password (at least 12 characters); ends the user's sessions.
    pub password: Option<String>,
    /// `false` deactivates the user: sessions end, tokens stop working at once.
    pub active: Option<bool>,
    /// The sales team; `""` takes the user out of their team.
    pub team: Option<String>,
}

/// Changes a user. Admins cannot deactivate or demote themselves.
#[utoipa::path(
    patch, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    request_body = PatchUser,
    responses(
        (status = 200, body = UserView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`user_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_user(
    State(state): State<AppState>,
    AdminOnly(caller): AdminOnly,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchUser>,
) -> Result<ApiJson<UserView>, ApiError> {
    let id = parse_user_id(&id)?;
    let mut patch = UserPatch::parse(body.name.as_deref(), body.role, body.password, body.active)?;
    patch.team = body.team.as_deref().map(parse_team).transpose()?;
    let user = state.auth.update_user(caller.user_id(), id, patch).await?;
    Ok(ApiJson(user.into()))
}

fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::not_found(
            crate::error::ErrorCode::UserNotFound,
            format!("user {raw:?} not found"),
        )
    })
}
