//! Identity linking over HTTP: merge by hand, history, undo, suggested
//! duplicates and shared identifiers. (Web page views, `/v1/track`, which
//! stitch an anonymous visitor to the customer who logs in, are recorded
//! beside the other engagements.)

use axum::extract::State;
use crm_models::customer::{Customer, Identifier};
use crm_models::ids::{CustomerId, MergeId};
use crm_models::linking::{Suggestion, SuggestionReason};
use crm_models::service::HistoryEntry;
use crm_models::{time, Email, PhoneNumber};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::customers::parse_customer_id;
use crate::auth::{AdminOnly, Staff};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode, Problem};
use crate::state::AppState;

/// Most customers one merge request may name.
const MAX_MERGE_IDS: usize = 50;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(merge_customers))
        .routes(routes!(customer_history))
        .routes(routes!(undo_merge))
        .routes(routes!(list_duplicates))
        .routes(routes!(dismiss_duplicate))
        .routes(routes!(mark_shared))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The customers to merge into the one in the path (1 to 50).
    pub ids: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeResponse {
    pub merge_id: MergeId,
    /// The customer after the merge.
    pub customer: Customer,
    pub merged_ids: Vec<CustomerId>,
}

/// Merges customers into this one by hand. Its own values win; its empty
/// fields are filled from the others; their identities and engagements move to
/// it. Undo with `POST /v1/merges/{merge_id}/undo`.
#[utoipa::path(
    post, path = "/v1/customers/{id}/merge", tag = "linking",
    params(("id" = String, Path, description = "The customer that stays")),
    request_body = MergeRequest,
    responses(
        (status = 200, body = MergeResponse),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`merge_refused`: nothing left to merge. `customer_merged`: an id (in the path or `ids`) was merged into `merged_into`; merge that one", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn merge_customers(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MergeRequest>,
) -> Result<ApiJson<MergeResponse>, ApiError> {
    let survivor = parse_customer_id(&id)?;
    if body.ids.is_empty() || body.ids.len() > MAX_MERGE_IDS {
        return Err(ApiError::field(
            "ids",
            format!("give 1 to {MAX_MERGE_IDS} customer ids"),
        ));
    }
    let mut ids = Vec::with_capacity(body.ids.len());
    for (i, raw) in body.ids.iter().enumerate() {
        match raw.parse::<CustomerId>() {
            Ok(id) => ids.push(id),
            Err(_) => return Err(ApiError::field(&format!("ids[{i}]"), "must be a UUID")),
        }
    }
    let (record, customer) = state
        .crm
        .merge_customers(survivor, &ids, &caller.actor())
        .await?;
    tracing::info!(merge = %record.id, survivor = %customer.id, actor = %caller.actor(), "customers merged by hand");
    Ok(ApiJson(MergeResponse {
        merge_id: record.id,
        merged_ids: record.merged_ids,
        customer,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    pub items: Vec<HistoryEntry>,
}

/// Merges and un-merges that touched this customer, oldest first: when, by
/// whom (a user, or `auto` with the identifier that linked them), which ids.
#[utoipa::path(
    get, path = "/v1/customers/{id}/history", tag = "linking",
    params(("id" = String, Path, description = "Customer id (a merged one too)")),
    responses(
        (status = 200, body = HistoryPage),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn customer_history(
    State(state): State<AppState>,
    _caller: Staff,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<HistoryPage>, ApiError> {
    let id = parse_customer_id(&id)?;
    Ok(ApiJson(HistoryPage {
        items: state.crm.history(id).await?,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UndoResponse {
    pub merge_id: MergeId,
    /// The customers as they are again, the merge's survivor first.
    pub customers: Vec<Customer>,
}

/// Undoes a merge: the merged customers come back with the identities, profile
/// fields and engagements they had; engagements recorded since go to
/// whichever of them owns the identifier they came through. The same
/// identifiers no longer merge them automatically (a merge by hand still can).
#[utoipa::path(
    post, path = "/v1/merges/{merge_id}/undo", tag = "linking",
    params(("merge_id" = String, Path, description = "The merge, from a history or a merge response")),
    responses(
        (status = 200, body = UndoResponse),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`merge_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`merge_refused`: undone already", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn undo_merge(
    State(state): State<AppState>,
    AdminOnly(caller): AdminOnly,
    ApiPath(raw): ApiPath<String>,
) -> Result<ApiJson<UndoResponse>, ApiError> {
    let merge_id: MergeId = raw.parse().map_err(|_| {
        ApiError::not_found(ErrorCode::MergeNotFound, format!("merge {raw:?} not found"))
    })?;
    let customers = state.crm.undo_merge(merge_id, &caller.actor()).await?;
    tracing::info!(merge = %merge_id, actor = %caller.actor(), "merge undone");
    Ok(ApiJson(UndoResponse {
        merge_id,
        customers,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DuplicatesQuery {
    /// 1 to 200, default 50.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DuplicateItem {
    pub customer_ids: Vec<CustomerId>,
    pub reason: SuggestionReason,
    pub detail: String,
    /// 0 to 1; higher is more likely one person.
    pub score: f64,
    #[schema(value_type = String, format = DateTime)]
    pub suggested_at: String,
}

impl From<Suggestion> for DuplicateItem {
    fn from(s: Suggestion) -> Self {
        DuplicateItem {
            customer_ids: s.customer_ids.to_vec(),
            reason: s.reason,
            detail: s.detail,
            score: s.score,
            suggested_at: time::format(&s.at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DuplicatesPage {
    pub items: Vec<DuplicateItem>,
}

/// Suggested duplicates that were not merged, most likely first: the same or
/// a one-typo full name with a shared email domain or phone prefix
/// (`similar_profile`), a merge the cap on identifiers stopped
/// (`identifier_cap`), or a pair whose merge was undone (`undone_merge`).
#[utoipa::path(
    get, path = "/v1/duplicates", tag = "linking",
    params(DuplicatesQuery),
    responses(
        (status = 200, body = DuplicatesPage),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_duplicates(
    State(state): State<AppState>,
    _caller: Staff,
    ApiQuery(query): ApiQuery<DuplicatesQuery>,
) -> Result<ApiJson<DuplicatesPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 200"));
    }
    let items = state.crm.duplicates(limit).await?;
    Ok(ApiJson(DuplicatesPage {
        items: items.into_iter().map(DuplicateItem::from).collect(),
    }))
}

/// Dismisses a suggested pair: they are not the same person. The pair is
/// no longer listed, and not suggested again. Either order of the two ids;
/// dismissing a pair again changes nothing.
#[utoipa::path(
    delete, path = "/v1/duplicates/{a}/{b}", tag = "linking",
    params(
        ("a" = String, Path, description = "One customer of the pair"),
        ("b" = String, Path, description = "The other"),
    ),
    responses(
        (status = 204, description = "Dismissed"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: staff only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`customer_not_found`: an id is not a customer id. `not_found`: the pair was never suggested", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: the same customer twice", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dismiss_duplicate(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiPath((a, b)): ApiPath<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let (a, b) = (parse_customer_id(&a)?, parse_customer_id(&b)?);
    if a == b {
        return Err(ApiError::field("b", "must be another customer than a"));
    }
    if !state.crm.dismiss_duplicate(a, b).await? {
        return Err(ApiError::not_found(
            ErrorCode::NotFound,
            "this pair was never suggested as duplicates",
        ));
    }
    tracing::info!(actor = %caller.actor(), "suggested duplicates dismissed");
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedRequest {
    /// `false` makes it link again. Default `true`.
    pub shared: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SharedResponse {
    /// The normalised identifier key (`phone:+6563388888`).
    pub identifier: String,
    pub shared: bool,
}

/// Marks an identifier shared (e.g. a hotel switchboard): it never links
/// customers, and new customers may list it too; lookups still find all of
/// them. The path is `phone:<number>`, `email:<address>`, or a bare number or
/// address.
#[utoipa::path(
    post, path = "/v1/identities/{identifier}/shared", tag = "linking",
    params(("identifier" = String, Path, description = "`phone:+6563388888`, `email:front@hotel.com`, or the bare value")),
    request_body(content = Option<SharedRequest>, description = "Optional; `{\"shared\": false}` to undo"),
    responses(
        (status = 200, body = SharedResponse),
        (status = 403, description = "Admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: not a phone or an email", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn mark_shared(
    State(state): State<AppState>,
    AdminOnly(caller): AdminOnly,
    ApiPath(raw): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<ApiJson<SharedResponse>, ApiError> {
    let request: SharedRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SharedRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                ApiError::field("body", e)
            } else {
                ApiError::bad_request(ErrorCode::MalformedJson, e.to_string())
            }
        })?
    };
    let identifier = parse_identifier(&raw, &state)?;
    let shared = request.shared.unwrap_or(true);
    state.crm.set_shared(&identifier, shared).await?;
    tracing::info!(shared, actor = %caller.actor(), "identifier sharing changed");
    Ok(ApiJson(SharedResponse {
        identifier: identifier.key(),
        shared,
    }))
}

fn parse_identifier(raw: &str, state: &AppState) -> Result<Identifier, ApiError> {
    let (kind, value) = match raw.split_once(':') {
        Some((k @ ("phone" | "email"), v)) => (k, v),
        _ if raw.contains('@') => ("email", raw),
        _ => ("phone", raw),
    };
    match kind {
        "email" => Email::parse(value)
            .map(Identifier::Email)
            .map_err(|e| ApiError::field("identifier", e)),
        _ => PhoneNumber::parse(value, state.default_region)
            .map(Identifier::Phone)
            .map_err(|e| ApiError::field("identifier", e)),
    }
}
