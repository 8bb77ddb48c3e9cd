//! Webhook endpoints and their deliveries (admins only; see
//! [`crate::webhooks`] for how deliveries are made). An endpoint's secret is
//! shown once, in the answer to its creation (and to a rotation).

use axum::extract::State;
use axum::http::StatusCode;
use crm_models::event::EVENT_TYPES;
use crm_models::service::FieldError;
use crm_models::time::{self, Timestamp};
use crm_models::webhook::{
    Delivery, DeliveryCursor, DeliveryStatus, Requeue, Webhook, WebhookSecret,
};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::pagination::{self, Page};
use crate::auth::AdminOnly;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode, Problem};
use crate::state::AppState;
use crate::webhooks::{guard, signing};

/// How long a rotated-out secret keeps signing.
const ROTATED_SECRET_HOURS: i64 = 24;
const MAX_DESCRIPTION: usize = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(recover))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are posted: `https://` (plain `http://` and private
    /// addresses only with `CRM_WEBHOOK_ALLOW_PRIVATE=true`).
    pub url: String,
    /// Event types to receive (see the catalogue); all when empty or absent.
    #[serde(default)]
    pub types: Vec<String>,
    pub description: Option<String>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// An endpoint as lists show it: never its secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub url: String,
    /// Event types it receives; all when empty.
    pub types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub enabled: bool,
    /// Why the service disabled it (410 Gone, failing too long).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<&Webhook> for WebhookView {
    fn from(w: &Webhook) -> Self {
        WebhookView {
            id: w.id,
            url: w.url.clone(),
            types: w.types.clone(),
            description: w.description.clone(),
            enabled: w.enabled,
            disabled_reason: w.disabled_reason.clone(),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// An endpoint just created, with its signing secret: store it now, it is
/// never shown again.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedWebhookView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub url: String,
    pub types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub enabled: bool,
    /// `whsec_<base64>`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Fields to change; absent fields stay as they are.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchWebhook {
    pub url: Option<String>,
    pub types: Option<Vec<String>>,
    /// An empty text removes it.
    pub description: Option<String>,
    /// Enabling an endpoint the service disabled clears its reason.
    pub enabled: Option<bool>,
}

/// The new secret after a rotation.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// `whsec_<base64>`, signing from now on.
    pub secret: String,
    /// Until then the previous secret signs beside the new one.
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub previous_expires_at: Timestamp,
}

/// One event for one endpoint, with its attempts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// Sent as `webhook-id` on every attempt.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub webhook_id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_attempt_at: Option<Timestamp>,
    /// When a pending delivery is attempted next.
    #[serde(with = "time::rfc3339_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event.id,
            event_type: d.event.name().to_string(),
            status: d.status,
            attempts: d.attempts,
            created_at: d.created_at,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: match d.status {
                DeliveryStatus::Pending => d.next_attempt_at,
                _ => None,
            },
            last_status_code: d.last_status_code,
            last_error: d.last_error,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveries {
    /// 1 to 500, default 50.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// Failed deliveries created at or after this time are queued again.
    pub since: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Recovered {
    /// How many deliveries were queued again.
    pub requeued: u64,
}

// --- validation ---

fn check_types(types: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, t) in types.iter().enumerate() {
        let t = t.trim();
        if !EVENT_TYPES.contains(&t) {
            errors.push(FieldError::new(
                format!("types[{i}]"),
                format!(
                    "unknown event type {t:?}; the types are {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        } else if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    out
}

fn check_description(raw: Option<String>, errors: &mut Vec<FieldError>) -> Option<String> {
    let d = raw
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())?;
    if d.chars().count() > MAX_DESCRIPTION {
        errors.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    Some(d)
}

async fn check_url(state: &AppState, raw: &str, errors: &mut Vec<FieldError>) -> String {
    match guard::check(raw, state.webhooks.config().allow_private).await {
        Ok(url) => url.to_string(),
        Err(e) => {
            errors.push(FieldError::new("url", e));
            String::new()
        }
    }
}

fn webhook_not_found(id: &str) -> ApiError {
    ApiError::not_found(ErrorCode::WebhookNotFound, format!("no webhook {id:?}"))
}

async fn load(state: &AppState, raw: &str) -> Result<Webhook, ApiError> {
    let id: Uuid = raw.parse().map_err(|_| webhook_not_found(raw))?;
    state
        .crm
        .store()
        .get_webhook(id)
        .await?
        .ok_or_else(|| webhook_not_found(raw))
}

// --- routes ---

/// Registers an endpoint. The answer carries its signing secret, once.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "Created; `secret` is shown only now", body = CreatedWebhookView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad or refused URL, an unknown event type", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_webhook(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, ApiJson<CreatedWebhookView>), ApiError> {
    let mut errors = Vec::new();
    let types = check_types(&body.types, &mut errors);
    let description = check_description(body.description, &mut errors);
    let url = check_url(&state, &body.url, &mut errors).await;
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let now = time::now();
    let secret = signing::new_secret();
    let webhook = Webhook {
        id: Uuid::now_v7(),
        url,
        types,
        description,
        enabled: body.enabled.unwrap_or(true),
        disabled_reason: None,
        failing_since: None,
        secrets: vec![WebhookSecret {
            secret: secret.clone(),
            expires_at: None,
        }],
        created_at: now,
        updated_at: now,
    };
    state.crm.store().insert_webhook(&webhook).await?;
    tracing::info!(webhook = %webhook.id, "webhook created");
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedWebhookView {
            id: webhook.id,
            url: webhook.url,
            types: webhook.types,
            description: webhook.description,
            enabled: webhook.enabled,
            secret,
            created_at: webhook.created_at,
        }),
    ))
}

/// Every endpoint, oldest first; never their secrets.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses(
        (status = 200, body = Page<WebhookView>),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_webhooks(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
) -> Result<ApiJson<Page<WebhookView>>, ApiError> {
    let webhooks = state.crm.store().list_webhooks().await?;
    Ok(ApiJson(Page {
        items: webhooks.iter().map(WebhookView::from).collect(),
        next_cursor: None,
    }))
}

#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, body = WebhookView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_webhook(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    Ok(ApiJson(WebhookView::from(&load(&state, &id).await?)))
}

/// Changes an endpoint: its URL, types, description, or whether it is enabled.
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body = PatchWebhook,
    responses(
        (status = 200, body = WebhookView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn patch_webhook(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchWebhook>,
) -> Result<ApiJson<WebhookView>, ApiError> {
    let mut webhook = load(&state, &id).await?;
    let mut errors = Vec::new();
    if let Some(types) = &body.types {
        webhook.types = check_types(types, &mut errors);
    }
    if body.description.is_some() {
        webhook.description = check_description(body.description, &mut errors);
    }
    if let Some(url) = &body.url {
        webhook.url = check_url(&state, url, &mut errors).await;
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if let Some(enabled) = body.enabled {
        if enabled && !webhook.enabled {
            webhook.disabled_reason = None;
            webhook.failing_since = None;
        }
        webhook.enabled = enabled;
    }
    webhook.updated_at = time::now();
    state
        .crm
        .store()
        .update_webhook(&webhook)
        .await
        .map_err(|e| match e {
            crm_models::store::StoreError::NotFound => webhook_not_found(&id),
            other => other.into(),
        })?;
    Ok(ApiJson(WebhookView::from(&webhook)))
}

/// Deletes an endpoint and its deliveries.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_webhook(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let webhook = load(&state, &id).await?;
    if !state.crm.store().delete_webhook(webhook.id).await? {
        return Err(webhook_not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret; the previous one keeps signing beside it for 24 hours.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/secret/rotate", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The new secret, shown only now", body = RotatedSecret),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rotate_secret(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<RotatedSecret>, ApiError> {
    let mut webhook = load(&state, &id).await?;
    let now = time::now();
    let expires = now + chrono::Duration::hours(ROTATED_SECRET_HOURS);
    let secret = signing::new_secret();
    let mut secrets = vec![WebhookSecret {
        secret: secret.clone(),
        expires_at: None,
    }];
    for mut old in webhook.secrets {
        if old.expires_at.is_some_and(|e| e <= now) {
            continue;
        }
        old.expires_at = Some(old.expires_at.map_or(expires, |e| e.min(expires)));
        secrets.push(old);
    }
    webhook.secrets = secrets;
    webhook.updated_at = now;
    state.crm.store().update_webhook(&webhook).await?;
    tracing::info!(webhook = %webhook.id, "webhook secret rotated");
    Ok(ApiJson(RotatedSecret {
        secret,
        previous_expires_at: expires,
    }))
}

/// An endpoint's deliveries, newest first, for 30 days.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), ListDeliveries),
    responses(
        (status = 200, body = Page<DeliveryView>),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_deliveries(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListDeliveries>,
) -> Result<ApiJson<Page<DeliveryView>>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode_position::<Uuid>)
        .transpose()?
        .map(|(created_at, id)| DeliveryCursor { created_at, id });
    let webhook = load(&state, &id).await?;
    let mut items = state
        .crm
        .store()
        .list_deliveries(webhook.id, after, limit + 1)
        .await?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = items
        .last()
        .filter(|_| more)
        .map(|d| pagination::encode_position(&d.created_at, &d.id));
    Ok(ApiJson(Page {
        items: items.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}

/// Queues one delivery again, whatever its status, for an attempt now.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("delivery_id" = String, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Queued", body = DeliveryView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`, `delivery_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: it is being attempted right now", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn retry_delivery(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath((id, delivery_id)): ApiPath<(String, String)>,
) -> Result<(StatusCode, ApiJson<DeliveryView>), ApiError> {
    let webhook = load(&state, &id).await?;
    let not_found = || {
        ApiError::not_found(
            ErrorCode::DeliveryNotFound,
            format!("no delivery {delivery_id:?} of this webhook"),
        )
    };
    let delivery: Uuid = delivery_id.parse().map_err(|_| not_found())?;
    let store = state.crm.store();
    match store.get_delivery(delivery).await? {
        Some(d) if d.webhook_id == webhook.id => {}
        _ => return Err(not_found()),
    }
    let n = store
        .requeue_deliveries(webhook.id, Requeue::One(delivery), time::now())
        .await?;
    if n == 0 {
        return Err(ApiError::conflict(
            ErrorCode::Conflict,
            "the delivery is being attempted right now; try again in a moment",
        ));
    }
    state.webhooks.wake();
    let d = store.get_delivery(delivery).await?.ok_or_else(not_found)?;
    Ok((StatusCode::ACCEPTED, ApiJson(DeliveryView::from(d))))
}

/// Queues again every failed delivery of the endpoint created at or after `since`.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/recover", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body = RecoverRequest,
    responses(
        (status = 202, description = "Queued", body = Recovered),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn recover(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RecoverRequest>,
) -> Result<(StatusCode, ApiJson<Recovered>), ApiError> {
    let since = time::parse_input(&body.since).map_err(|e| ApiError::field("since", e))?;
    let webhook = load(&state, &id).await?;
    let requeued = state
        .crm
        .store()
        .requeue_deliveries(webhook.id, Requeue::FailedSince(since), time::now())
        .await?;
    if requeued > 0 {
        state.webhooks.wake();
    }
    Ok((StatusCode::ACCEPTED, ApiJson(Recovered { requeued })))
}
