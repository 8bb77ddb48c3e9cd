//! Engagements: record one, record a batch, record a web page view
//! (`/v1/track`), read a customer's timeline. Every ingest route reads its
//! body with the one parser in [`crm_models::ingest`].

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crm_models::engagement::{CallStatus, Channel, Direction, Engagement, PayloadType};
use crm_models::ids::{CustomerId, EngagementId};
use crm_models::ingest::{self, Json, JsonList, Origin, Shape};
use crm_models::service::{CrmError, Recorded};
use crm_models::store::{EngagementCursor, EngagementFilter};
use crm_models::time;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::customers::parse_customer_id;
use super::pagination::{self, Page};
use crate::auth::{EngagementWriter, Staff, TrackWriter};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode, Problem};
use crate::state::AppState;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Body limit of the batch route.
pub const BATCH_BODY_LIMIT: usize = 8 * 1024 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record_batch))
        .layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT))
        .routes(routes!(record_engagement))
        .routes(routes!(track))
        .routes(routes!(list_engagements))
}

/// The context the ingest parser reads a caller's engagements in.
fn origin(state: &AppState, actor: String) -> Origin {
    Origin {
        region: state.default_region,
        device_id: None,
        user_id: actor,
        now: time::now(),
    }
}

/// An engagement as posted. Exactly one of `customer_id` and `customer`; the
/// channel decides which other fields apply. Unknown fields, fields of
/// another channel and fields given twice are refused. Texts hold no control
/// characters (message texts may hold newlines and tabs) and no
/// bidirectional controls (U+202A to U+202E, U+2066 to U+2069, U+200E,
/// U+200F, U+061C).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"customer": {"phone": "+65 8122 6418", "name": "Ann Tan"}, "channel": "sms", "direction": "inbound", "occurred_at": "2026-11-21T09:30:00Z", "body": "Is the flat still available?", "client_event_id": "sms-1842"}))]
pub struct EngagementRequest {
    pub customer_id: Option<String>,
    /// Resolve the customer by phone or email, creating one when none matches.
    pub customer: Option<CustomerRef>,
    pub channel: Channel,
    /// Required except for `web`, where it is not allowed.
    pub direction: Option<Direction>,
    /// When it happened: RFC 3339 (`2026-11-21T09:30:00Z`), years 1970 to
    /// 9999, no leap second, at most 24 hours ahead; default: now.
    pub occurred_at: Option<String>,
    /// The client's own id for the event (1 to 128 characters): a retry with
    /// the same id is stored once.
    pub client_event_id: Option<String>,
    /// web, required (at most 2,048 characters)
    pub url: Option<String>,
    /// web, required (at most 200 characters)
    pub view: Option<String>,
    /// web
    pub view_desc: Option<String>,
    /// web
    pub category: Option<String>,
    /// web
    pub object_id: Option<String>,
    /// call: seconds (default 0)
    pub duration_s: Option<u32>,
    /// call: default `answered` when it lasted, else `missed`
    pub status: Option<CallStatus>,
    /// sms, required (at most 10,000 characters)
    pub body: Option<String>,
    /// whatsapp, required
    pub payload_type: Option<PayloadType>,
    /// whatsapp, required (at most 10,000 characters)
    pub payload: Option<String>,
    /// email, required (at most 998 characters)
    pub subject: Option<String>,
}

/// A phone or an email (or both), and a name for a customer created for them.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CustomerRef {
    /// Written any way a person would read as the number: `+65 8122 6418`,
    /// `(065) 8122-6418`, `8122 6418` (with the server's default region),
    /// `tel:+65-8122-6418`, full-width digits, an extension (`ext. 12`,
    /// `x12`) or a note (`(mobile)`) after it. The extension and the note
    /// are not part of the key.
    pub phone: Option<String>,
    /// Written any way a person would read as the address: `Ann Tan
    /// <ann.tan@example.com>`, `mailto:` URIs, full-width `＠`.
    pub email: Option<String>,
    /// At most 200 characters.
    pub name: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordedEngagement {
    pub id: EngagementId,
    pub customer_id: CustomerId,
    pub customer_created: bool,
    /// The same `client_event_id` was recorded before; nothing changed.
    pub duplicate: bool,
}

impl From<Recorded> for RecordedEngagement {
    fn from(r: Recorded) -> Self {
        RecordedEngagement {
            id: r.id,
            customer_id: r.customer_id,
            customer_created: r.customer_created,
            duplicate: r.duplicate,
        }
    }
}

/// Records one engagement, resolving or creating its customer.
#[utoipa::path(
    post, path = "/v1/engagements", tag = "engagements",
    request_body = EngagementRequest,
    responses(
        (status = 201, description = "Recorded", body = RecordedEngagement),
        (status = 200, description = "Already recorded under this `client_event_id`", body = RecordedEngagement),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`identifiers_conflict`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with per-field `errors`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn record_engagement(
    State(state): State<AppState>,
    EngagementWriter(caller): EngagementWriter,
    ApiJson(body): ApiJson<Json>,
) -> Result<Response, ApiError> {
    let item = ingest::parse_engagement(
        &body.item(),
        "",
        Shape::Engagement,
        &origin(&state, caller.actor()),
    )
    .map_err(ApiError::Validation)?;
    let recorded = state.crm.record_engagement(item).await?;
    let status = if recorded.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ApiJson(RecordedEngagement::from(recorded))).into_response())
}

/// Unknown fields are refused.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1,000 engagements, each an `EngagementRequest` (as for
    /// `POST /v1/engagements`). Each item is read on its own: one that is not
    /// a valid engagement is answered `rejected` with its reasons in its
    /// result, and the others are stored; so any JSON value is accepted here.
    #[schema(value_type = Vec<serde_json::Value>, min_items = 1, max_items = 1000)]
    pub items: JsonList,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    Created,
    Duplicate,
    Rejected,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchItemResult {
    pub index: usize,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<EngagementId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_created: Option<bool>,
    /// Why the item was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    pub created: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// One result per item, in order.
    pub results: Vec<BatchItemResult>,
}

/// Records up to 1,000 engagements. A bad item is rejected with its reason;
/// the good ones are stored.
#[utoipa::path(
    post, path = "/v1/engagements/batch", tag = "engagements",
    request_body = BatchRequest,
    responses(
        (status = 200, body = BatchResponse),
        (status = 413, description = "`payload_too_large`: more than 1,000 items or 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: no items, a field other than `items`, or `items` given twice", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn record_batch(
    State(state): State<AppState>,
    EngagementWriter(caller): EngagementWriter,
    ApiJson(body): ApiJson<BatchRequest>,
) -> Result<ApiJson<BatchResponse>, ApiError> {
    if body.items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::PayloadTooLarge(format!(
            "a batch holds at most {MAX_BATCH_ITEMS} items; this one has {}",
            body.items.len()
        )));
    }
    if body.items.is_empty() {
        return Err(ApiError::field(
            "items",
            format!("give 1 to {MAX_BATCH_ITEMS} engagements"),
        ));
    }
    let origin = origin(&state, caller.actor());
    let mut results: Vec<Option<BatchItemResult>> = Vec::with_capacity(body.items.len());
    let mut parsed = Vec::new();
    let mut parsed_index = Vec::new();
    for (index, item) in body.items.items().enumerate() {
        let prefix = format!("items[{index}].");
        match ingest::parse_engagement(&item, &prefix, Shape::Engagement, &origin) {
            Ok(item) => {
                parsed.push(item);
                parsed_index.push(index);
                results.push(None);
            }
            Err(errors) => results.push(Some(rejected(index, ApiError::Validation(errors)))),
        }
    }
    let outcomes = state.crm.record_engagements(parsed).await;
    for (index, outcome) in parsed_index.into_iter().zip(outcomes) {
        results[index] = Some(match outcome {
            Ok(r) => BatchItemResult {
                index,
                status: if r.duplicate {
                    ItemStatus::Duplicate
                } else {
                    ItemStatus::Created
                },
                id: Some(r.id),
                customer_id: Some(r.customer_id),
                customer_created: Some(r.customer_created),
                error: None,
            },
            Err(CrmError::Store(e)) => return Err(e.into()),
            Err(e) => rejected(index, e.into()),
        });
    }
    let results: Vec<BatchItemResult> = results.into_iter().flatten().collect();
    let count = |s: fn(&ItemStatus) -> bool| results.iter().filter(|r| s(&r.status)).count();
    Ok(ApiJson(BatchResponse {
        created: count(|s| matches!(s, ItemStatus::Created)),
        duplicates: count(|s| matches!(s, ItemStatus::Duplicate)),
        rejected: count(|s| matches!(s, ItemStatus::Rejected)),
        results,
    }))
}

fn rejected(index: usize, error: ApiError) -> BatchItemResult {
    BatchItemResult {
        index,
        status: ItemStatus::Rejected,
        id: None,
        customer_id: None,
        customer_created: None,
        error: Some(error.to_problem()),
    }
}

/// A page view from the website. Fields as in `EngagementRequest` for `web`,
/// plus who: `anonymous_id` (the site's visitor id), `customer_id`, `email`,
/// `phone`, at least one of them. Views under an `anonymous_id` are kept on a
/// customer of their own until an event carries that `anonymous_id` with an
/// email, a phone or a `customer_id`: then that history joins the customer.
/// With a `customer_id`, an `email` or `phone` must be new or already that
/// customer's. Unknown fields, and fields given twice, are refused.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"anonymous_id": "v-7f3a", "email": "ann@example.com", "url": "https://shop.example/p/42", "view": "product", "view_desc": "Blue shoes", "category": "shoes", "object_id": "42", "occurred_at": "2026-11-21T09:30:00Z", "client_event_id": "pv-20261121-0001"}))]
pub struct TrackRequest {
    /// The site's visitor id (at most 128 characters).
    pub anonymous_id: Option<String>,
    pub customer_id: Option<String>,
    /// Written any way (`Ann Tan <ann@example.com>`, `mailto:`).
    pub email: Option<String>,
    /// Written any way (`+65 8122 6418`, `tel:` URIs, an extension).
    pub phone: Option<String>,
    pub url: String,
    pub view: String,
    pub view_desc: Option<String>,
    pub category: Option<String>,
    pub object_id: Option<String>,
    /// RFC 3339, years 1970 to 9999, no leap second; default: now.
    pub occurred_at: Option<String>,
    /// Retries with the same id are stored once; not empty when given.
    pub client_event_id: Option<String>,
}

/// Records a web page view and stitches the visitor's identity.
#[utoipa::path(
    post, path = "/v1/track", tag = "engagements",
    request_body = TrackRequest,
    responses(
        (status = 201, description = "Recorded", body = RecordedEngagement),
        (status = 200, description = "Already recorded under this `client_event_id`", body = RecordedEngagement),
        (status = 403, description = "`forbidden`: an API key without the scope `track`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`identifier_taken`: with a `customer_id`, an `email`, `phone` or `anonymous_id` that belongs to another customer; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with per-field `errors`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn track(
    State(state): State<AppState>,
    TrackWriter(caller): TrackWriter,
    ApiJson(body): ApiJson<Json>,
) -> Result<Response, ApiError> {
    let item = ingest::parse_engagement(
        &body.item(),
        "",
        Shape::Track,
        &origin(&state, caller.actor()),
    )
    .map_err(ApiError::Validation)?;
    let recorded = state
        .crm
        .record_engagement(item)
        .await
        .map_err(|e| match e {
            // A key reads nothing, not even who owns an address: the answer
            // says only that it is someone else's.
            CrmError::IdentifierTaken { .. } => ApiError::Conflict {
                code: ErrorCode::IdentifierTaken,
                detail: "an identifier in this page view belongs to another customer than \
                         `customer_id`; nothing was recorded"
                    .into(),
                customers: Vec::new(),
            },
            other => other.into(),
        })?;
    let status = if recorded.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ApiJson(RecordedEngagement::from(recorded))).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {
    pub channel: Option<Channel>,
    /// Engagements at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Engagements before this time (RFC 3339).
    pub until: Option<String>,
    /// 1 to 500, default 50.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The customer's timeline across every channel, newest first.
#[utoipa::path(
    get, path = "/v1/customers/{id}/engagements", tag = "engagements",
    params(("id" = String, Path, description = "Customer id"), TimelineQuery),
    responses(
        (status = 200, body = Page<Engagement>),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_engagements(
    State(state): State<AppState>,
    _caller: Staff,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<TimelineQuery>,
) -> Result<ApiJson<Page<Engagement>>, ApiError> {
    let id = parse_customer_id(&id)?;
    let limit = pagination::limit(query.limit)?;
    let time_param = |raw: &Option<String>, field: &str| {
        raw.as_deref()
            .map(|r| time::parse_input(r).map_err(|e| ApiError::field(field, e)))
            .transpose()
    };
    let filter = EngagementFilter {
        channel: query.channel,
        since: time_param(&query.since, "since")?,
        until: time_param(&query.until, "until")?,
    };
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode_position)
        .transpose()?
        .map(|(occurred_at, id)| EngagementCursor { occurred_at, id });
    let items = state
        .crm
        .list_engagements(id, &filter, after, limit)
        .await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last())
        .flatten()
        .map(|e| pagination::encode_position(&e.occurred_at, &e.id));
    Ok(ApiJson(Page { items, next_cursor }))
}
