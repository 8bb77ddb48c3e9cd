//! Search and caller-ID: reads from the index, with the store as the fallback
//! where an answer must not depend on the index being up.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use crm_indexer::ranking::RankKey;
use crm_indexer::warmup::WarmupStatus;
use crm_indexer::{CustomerSummary, IndexError, Query, SearchHit, SummaryJson, MAX_SEARCH_LIMIT};
use crm_models::{CustomerId, Region};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::customers::parse_customer_id;
use super::pagination;
use crate::auth::Staff;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(summary))
        .routes(routes!(lookup_phone))
}

fn index_err(e: IndexError) -> ApiError {
    match e {
        IndexError::Unavailable(m) => {
            tracing::warn!(error = %m, "index unavailable");
            ApiError::Unavailable("the search index is unavailable; try again".into())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

fn region(raw: Option<&str>, default: Option<Region>) -> Result<Option<Region>, ApiError> {
    match raw {
        Some(r) => Region::parse(r)
            .map(Some)
            .map_err(|e| ApiError::field("region", e)),
        None => Ok(default),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Anything: a name fragment, an email (or its beginning, `ann@`), or a
    /// phone number typed any way; classified automatically.
    pub q: Option<String>,
    /// Part of a name.
    pub name: Option<String>,
    /// An email or its beginning.
    pub email: Option<String>,
    /// A phone number typed any way.
    pub phone: Option<String>,
    /// ISO country for a number without `+` (default `CRM_DEFAULT_REGION`).
    pub region: Option<String>,
    /// 1 to 100, default 20.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page, with the same query. A cursor
    /// keeps its place however the index changes meanwhile: customers
    /// written since may move between pages, none is shown twice on a page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    /// Best first: exact, then prefix, then one-typo matches, then partial
    /// names; ties by the most recent engagement, then the newest customer.
    pub items: Vec<SearchHit>,
    /// Pass as `cursor` (with the same query) for the next page; absent on
    /// the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many customers the query finds in all: exact for emails and
    /// numbers, and for names when every candidate was read; otherwise an
    /// estimate from the candidates read.
    pub total_estimate: u64,
}

/// The key of search cursors' query tags, derived from the JWT secret.
pub fn cursor_key(jwt_secret: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"crm-api search cursors v1\0")
        .chain_update(jwt_secret)
        .finalize()
        .into()
}

/// A search cursor: which query it belongs to, and the rank of the last
/// hit shown.
fn encode_cursor(key: &[u8; 32], query: &Query, after: &RankKey) -> String {
    pagination::encode(&[
        &query_tag(key, query),
        &after.score.to_string(),
        &after.recency.to_string(),
        &after.id.to_string(),
    ])
}

fn decode_cursor(key: &[u8; 32], query: &Query, cursor: &str) -> Result<RankKey, ApiError> {
    let parts = pagination::decode(cursor, 4)?;
    let bad = || ApiError::field("cursor", "not a cursor this API issued");
    if parts[0] != query_tag(key, query) {
        return Err(ApiError::field(
            "cursor",
            "this cursor belongs to another query; search again without it",
        ));
    }
    let score: f64 = parts[1].parse().map_err(|_| bad())?;
    let recency: f64 = parts[2].parse().map_err(|_| bad())?;
    if !score.is_finite() || !recency.is_finite() {
        return Err(bad());
    }
    Ok(RankKey {
        score,
        recency,
        id: parts[3].parse().map_err(|_| bad())?,
    })
}

/// A short tag of the query, keyed with a secret so that a cursor seen in a
/// URL or a log does not let anyone test guesses of what was searched.
fn query_tag(key: &[u8; 32], query: &Query) -> String {
    use sha2::{Digest, Sha256};
    let tag = Sha256::new()
        .chain_update(key)
        .chain_update(format!("{query:?}").as_bytes())
        .finalize();
    hex::encode(&tag[..12])
}

/// Finds customers from whatever the user has.
#[utoipa::path(
    get, path = "/v1/search", tag = "search",
    params(SearchParams),
    responses(
        (status = 200, body = SearchResults),
        (status = 422, description = "`validation_failed`: give exactly one of q, name, email, phone", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the index cannot be reached, or is still loading after a restart (`Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn search(
    State(state): State<AppState>,
    _caller: Staff,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<ApiJson<SearchResults>, ApiError> {
    let limit = match params.limit {
        None => 20,
        Some(n) if (1..=MAX_SEARCH_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::field(
                "limit",
                format!("must be between 1 and {MAX_SEARCH_LIMIT}"),
            ))
        }
    };
    let given = [&params.q, &params.name, &params.email, &params.phone]
        .iter()
        .filter(|p| p.as_deref().is_some_and(|v| !v.trim().is_empty()))
        .count();
    if given != 1 {
        return Err(ApiError::field(
            "q",
            "give exactly one of q, name, email or phone",
        ));
    }
    let too_long = [&params.q, &params.name, &params.email, &params.phone]
        .iter()
        .any(|p| p.as_deref().is_some_and(|v| v.chars().count() > 200));
    if too_long {
        return Err(ApiError::field("q", "at most 200 characters"));
    }
    let region = region(params.region.as_deref(), state.default_region)?;
    let query = if let Some(q) = params.q {
        match (region, q.trim_start().starts_with('+') || q.contains('@')) {
            // A number with the caller's region is a phone query; the index
            // also finds national numbers without one.
            (Some(region), false) if looks_like_phone(&q) => Query::Phone {
                raw: q,
                region: Some(region),
            },
            _ => Query::Any(q),
        }
    } else if let Some(name) = params.name {
        Query::Name(name)
    } else if let Some(email) = params.email {
        Query::Email(email)
    } else {
        Query::Phone {
            raw: params.phone.unwrap_or_default(),
            region,
        }
    };
    let after = params
        .cursor
        .as_deref()
        .map(|c| decode_cursor(&state.cursor_key, &query, c))
        .transpose()?;
    warmed_up(&state)?;
    let page = state
        .index
        .search_page(&query, limit, after)
        .await
        .map_err(index_err)?;
    Ok(ApiJson(SearchResults {
        next_cursor: page
            .next
            .as_ref()
            .map(|k| encode_cursor(&state.cursor_key, &query, k)),
        total_estimate: page.total_estimate,
        items: page.hits,
    }))
}

/// 503 `unavailable` (with `Retry-After`) while the in-process index is
/// still loading after a start: it would miss customers not loaded yet.
fn warmed_up(state: &AppState) -> Result<(), ApiError> {
    match state.projector.warmup().status() {
        WarmupStatus::Ready => Ok(()),
        WarmupStatus::WarmingUp { loaded, .. } => Err(ApiError::Unavailable(format!(
            "search is warming up after a restart ({loaded} customers loaded so far); try again shortly"
        ))),
    }
}

fn looks_like_phone(q: &str) -> bool {
    let digits = q.chars().filter(char::is_ascii_digit).count();
    digits >= 6
        && q.chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
}

/// The customer's caller-ID summary: name, main phone and email, counts per
/// channel and the last engagements. From the index; from the store when the
/// index has no entry.
#[utoipa::path(
    get, path = "/v1/customers/{id}/summary", tag = "search",
    params(("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, body = CustomerSummary),
        (status = 404, description = "`customer_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn summary(
    State(state): State<AppState>,
    _caller: Staff,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<CustomerSummary>, ApiError> {
    let id = parse_customer_id(&id)?;
    if let Some(summary) = state.projector.summary(id).await.map_err(index_err)? {
        return Ok(ApiJson(summary));
    }
    // A merged customer answers with the one it was merged into.
    let current = state.crm.get_customer(id).await?.id;
    state
        .projector
        .summary(current)
        .await
        .map_err(index_err)?
        .map(ApiJson)
        .ok_or_else(|| {
            ApiError::not_found(
                crate::error::ErrorCode::CustomerNotFound,
                format!("customer {id} not found"),
            )
        })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LookupParams {
    /// ISO country for a number without `+` (default `CRM_DEFAULT_REGION`).
    pub region: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallerMatch {
    pub id: CustomerId,
    pub name: Option<String>,
    pub summary: CustomerSummary,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallerLookup {
    /// Zero, one, or several customers (several when a number is shared).
    pub matches: Vec<CallerMatch>,
}

/// Caller ID: who has this number (every customer, when it is shared).
/// Served from the index in one round trip; from the store when the index
/// cannot be reached. The same customers as `GET /v1/mobile/caller-id`.
#[utoipa::path(
    get, path = "/v1/lookup/phone/{number}", tag = "search",
    params(("number" = String, Path, description = "A phone number typed any way"), LookupParams),
    responses(
        (status = 200, body = CallerLookup),
        (status = 422, description = "`validation_failed`: not a phone number", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn lookup_phone(
    State(state): State<AppState>,
    _caller: Staff,
    ApiPath(number): ApiPath<String>,
    ApiQuery(params): ApiQuery<LookupParams>,
) -> Result<Response, ApiError> {
    let region = region(params.region.as_deref(), state.default_region)?;
    let found = crm_indexer::caller_id::lookup(&state.projector, &number, region)
        .await
        .map_err(ApiError::from)?
        .found;
    let body = caller_lookup_json(&found).map_err(|e| {
        index_err(IndexError::Internal(format!(
            "index data does not decode: {e}"
        )))
    })?;
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}

/// A [`CallerLookup`] written around the summaries' JSON as the index keeps
/// it: only each name is read out of it; nothing is decoded and encoded
/// again.
fn caller_lookup_json(found: &[SummaryJson]) -> Result<String, serde_json::Error> {
    let mut body =
        String::with_capacity(16 + found.iter().map(|s| s.json.len() + 80).sum::<usize>());
    body.push_str(r#"{"matches":["#);
    for (i, summary) in found.iter().enumerate() {
        let name = summary.name()?;
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"id":""#);
        body.push_str(&summary.id.to_string());
        body.push_str(r#"","name":"#);
        body.push_str(name.map_or("null", RawValue::get));
        body.push_str(r#","summary":"#);
        body.push_str(&summary.json);
        body.push('}');
    }
    body.push_str("]}");
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caller_lookup_json_is_what_serializing_the_decoded_summaries_gives() {
        let mut summaries: Vec<CustomerSummary> = (0..3)
            .map(|i| crm_indexer::generate::customer(7, i).summary())
            .collect();
        summaries[1].name = None;
        summaries[2].name = Some("Zoë \"Quote\" Tan".into());
        for n in 0..=summaries.len() {
            let found: Vec<SummaryJson> = summaries[..n]
                .iter()
                .map(|s| SummaryJson::of(s).unwrap())
                .collect();
            let fast: serde_json::Value =
                serde_json::from_str(&caller_lookup_json(&found).unwrap()).unwrap();
            let decoded = CallerLookup {
                matches: summaries[..n]
                    .iter()
                    .map(|s| CallerMatch {
                        id: s.id,
                        name: s.name.clone(),
                        summary: s.clone(),
                    })
                    .collect(),
            };
            assert_eq!(fast, serde_json::to_value(&decoded).unwrap(), "{n} matches");
        }
        let broken = [SummaryJson {
            id: summaries[0].id,
            json: r#"{"name":"Ann""#.into(),
        }];
        assert!(caller_lookup_json(&broken).is_err());
    }
}
