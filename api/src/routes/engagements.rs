//! Engagements: record one, record a batch, read a customer's timeline.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use crm_models::engagement::{
    CallStatus, Channel, Direction, Engagement, EngagementDetail, PayloadType, Source,
};
use crm_models::ids::{CustomerId, EngagementId};
use crm_models::service::{CrmError, EngagementTarget, FieldError, NewEngagement, Recorded};
use crm_models::store::{EngagementCursor, EngagementFilter};
use crm_models::{time, Identifier, Region};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::customers::parse_customer_id;
use super::input::Fields;
use super::pagination::{self, Page};
use crate::auth::{EngagementWriter, Staff};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Problem};
use crate::state::AppState;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Body limit of the batch route.
pub const BATCH_BODY_LIMIT: usize = 8 * 1024 * 1024;
const MAX_TEXT: usize = 10_000;
const MAX_SHORT: usize = 2_048;
/// Every channel's own fields.
const CHANNEL_FIELDS: [&str; 12] = [
    "direction",
    "url",
    "view",
    "view_desc",
    "category",
    "object_id",
    "duration_s",
    "status",
    "body",
    "payload_type",
    "payload",
    "subject",
];
/// Clock skew tolerated for `occurred_at` in the future.
const MAX_FUTURE_HOURS: i64 = 24;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record_batch))
        .layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT))
        .routes(routes!(record_engagement))
        .routes(routes!(list_engagements))
}

/// An engagement as posted. Exactly one of `customer_id` and `customer`; the
/// channel decides which other fields apply. Unknown fields are refused.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"customer": {"phone": "+65 8122 6418", "name": "Ann Tan"}, "channel": "sms", "direction": "inbound", "occurred_at": "2026-11-21T09:30:00Z", "body": "Is the flat still available?", "client_event_id": "sms-1842"}))]
pub struct EngagementRequest {
    pub customer_id: Option<String>,
    /// Resolve the customer by phone or email, creating one when none matches.
    pub customer: Option<CustomerRef>,
    pub channel: Channel,
    /// Required except for `web`, where it is not allowed.
    pub direction: Option<Direction>,
    /// When it happened (RFC 3339); default: now.
    pub occurred_at: Option<String>,
    /// The client's own id for the event: a retry with the same id is stored once.
    pub client_event_id: Option<String>,
    /// web
    pub url: Option<String>,
    /// web
    pub view: Option<String>,
    /// web
    pub view_desc: Option<String>,
    /// web
    pub category: Option<String>,
    /// web
    pub object_id: Option<String>,
    /// call
    pub duration_s: Option<u32>,
    /// call
    pub status: Option<CallStatus>,
    /// sms
    pub body: Option<String>,
    /// whatsapp
    pub payload_type: Option<PayloadType>,
    /// whatsapp
    pub payload: Option<String>,
    /// email
    pub subject: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CustomerRef {
    pub phone: Option<String>,
    pub email: Option<String>,
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

/// Parses one engagement object; every problem is reported with its path.
pub fn parse_engagement(
    value: &Value,
    prefix: &str,
    region: Option<Region>,
    actor: &str,
) -> Result<NewEngagement, Vec<FieldError>> {
    let mut f = Fields::new(value, prefix).map_err(|e| vec![e])?;
    let channel: Option<Channel> =
        f.typed("channel", true, "one of web, call, sms, whatsapp, email");
    let target = parse_target(&mut f, region);
    let occurred_at = f.timestamp("occurred_at", false).unwrap_or_else(time::now);
    if occurred_at > time::now() + Duration::hours(MAX_FUTURE_HOURS) {
        f.error(
            "occurred_at",
            format!("must not be more than {MAX_FUTURE_HOURS} hours in the future"),
        );
    }
    let client_event_id = f.string("client_event_id", false, 128);
    if client_event_id
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        f.error("client_event_id", "must not be empty");
    }
    let detail = match channel {
        Some(c) => parse_detail(&mut f, c),
        None => {
            // Without a channel the channel fields cannot be judged; do not call them unknown.
            for key in CHANNEL_FIELDS {
                f.value(key);
            }
            None
        }
    };
    f.deny_unknown();
    match (target, detail) {
        (Some(target), Some(detail)) if f.errors.is_empty() => Ok(NewEngagement {
            target,
            occurred_at,
            source: Source {
                device_id: None,
                client_event_id,
                user_id: Some(actor.to_string()),
                via: None,
            },
            detail,
        }),
        _ => Err(f.errors),
    }
}

fn parse_target(f: &mut Fields<'_>, region: Option<Region>) -> Option<EngagementTarget> {
    let by_id = f.string("customer_id", false, 64);
    let by_ref = f.value("customer");
    match (by_id, by_ref) {
        (Some(id), None) => match id.parse::<CustomerId>() {
            Ok(id) => Some(EngagementTarget::Customer(id)),
            Err(_) => {
                f.error("customer_id", "must be a UUID");
                None
            }
        },
        (None, Some(reference)) => {
            let prefix = f.path("customer.");
            let mut r = match Fields::new(reference, &prefix) {
                Ok(r) => r,
                Err(e) => {
                    f.errors.push(e);
                    return None;
                }
            };
            let phone = r.phone("phone", region);
            let email = r.email("email");
            let name = r.string("name", false, crm_models::service::MAX_NAME_CHARS);
            let had_phone = r.has("phone");
            let had_email = r.has("email");
            r.deny_unknown();
            let mut identifiers = Vec::new();
            identifiers.extend(phone.map(Identifier::Phone));
            identifiers.extend(email.map(Identifier::Email));
            if !had_phone && !had_email {
                r.error("phone", "give a phone or an email to identify the customer");
            }
            let ok = r.errors.is_empty();
            f.errors.append(&mut r.errors);
            ok.then_some(EngagementTarget::Identify { name, identifiers })
        }
        (Some(_), Some(_)) => {
            f.error("customer", "give either customer_id or customer, not both");
            None
        }
        (None, None) => {
            f.error(
                "customer_id",
                "give customer_id, or customer with a phone or email",
            );
            None
        }
    }
}

fn parse_detail(f: &mut Fields<'_>, channel: Channel) -> Option<EngagementDetail> {
    let direction: Option<Direction> = if channel == Channel::Web {
        if f.has("direction") {
            f.error("direction", "web engagements have no direction");
        }
        f.value("direction");
        None
    } else {
        f.typed("direction", true, "inbound or outbound")
    };
    let detail = match channel {
        Channel::Web => {
            // Read every field before giving up, so that all problems are reported.
            let url = f.string("url", true, MAX_SHORT);
            let view = f.string("view", true, 200);
            EngagementDetail::Web {
                view_desc: f.string("view_desc", false, MAX_SHORT),
                category: f.string("category", false, 200),
                object_id: f.string("object_id", false, 200),
                url: url?,
                view: view?,
            }
        }
        Channel::Call => {
            let duration_s: Option<u32> = f.typed("duration_s", true, "a whole number of seconds");
            let status: Option<CallStatus> = f.typed(
                "status",
                true,
                "one of answered, missed, rejected, voicemail",
            );
            EngagementDetail::Call {
                direction: direction?,
                duration_s: duration_s?,
                status: status?,
            }
        }
        Channel::Sms => EngagementDetail::Sms {
            direction: direction?,
            body: f.string("body", true, MAX_TEXT)?,
        },
        Channel::Whatsapp => {
            let payload_type: Option<PayloadType> =
                f.typed("payload_type", true, "one of text, image, file");
            let payload = f.string("payload", true, MAX_TEXT);
            EngagementDetail::Whatsapp {
                direction: direction?,
                payload_type: payload_type?,
                payload: payload?,
            }
        }
        Channel::Email => EngagementDetail::Email {
            direction: direction?,
            subject: f.string("subject", true, 998)?,
        },
    };
    Some(detail)
}

/// Records one engagement, resolving or creating its customer.
#[utoipa::path(
    post, path = "/v1/engagements", tag = "engagements",
    request_body = EngagementRequest,
    responses(
        (status = 201, description = "Recorded", body = RecordedEngagement),
        (status = 200, description = "Already recorded under this `client_event_id`", body = RecordedEngagement),
        (status = 403, description = "`forbidden`: an API key without the scope `engagements`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`identifiers_conflict`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, with per-field `errors`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn record_engagement(
    State(state): State<AppState>,
    EngagementWriter(caller): EngagementWriter,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let item = parse_engagement(&body, "", state.default_region, &caller.actor())
        .map_err(ApiError::Validation)?;
    let recorded = state.crm.record_engagement(item).await?;
    let status = if recorded.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, ApiJson(RecordedEngagement::from(recorded))).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BatchRequest {
    /// Up to 1,000 engagements.
    #[schema(value_type = Vec<EngagementRequest>)]
    pub items: Vec<Value>,
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
        (status = 403, description = "`forbidden`: an API key without the scope `engagements`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: more than 1,000 items or 8 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
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
    let actor = caller.actor();
    let mut results: Vec<Option<BatchItemResult>> = Vec::with_capacity(body.items.len());
    let mut parsed = Vec::new();
    let mut parsed_index = Vec::new();
    for (index, value) in body.items.iter().enumerate() {
        match parse_engagement(
            value,
            &format!("items[{index}]."),
            state.default_region,
            &actor,
        ) {
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
            .map(|r| time::parse(r).map_err(|_| ApiError::field(field, "must be an RFC 3339 time")))
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
