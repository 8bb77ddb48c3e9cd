//! Bulk import (admins): post a CSV or NDJSON file, follow the import, read
//! the rows it rejected. The work runs in the background, a chunk at a
//! time, through the same parsing and linking as live traffic (see
//! [`crate::bulk::import`]).

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use crm_models::import::{Import, ImportFormat, ImportKind, ImportState};
use crm_models::service::FieldError;
use crm_models::Region;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AdminOnly;
use crate::bulk::import::{parse_mapping, ImportError, Job, NewImport, MAX_IMPORT_BYTES};
use crate::bulk::jobs::{self, SpoolError};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode, Problem};
use crate::state::AppState;

/// Rejected rows listed in an import's summary.
const FIRST_REJECTED: usize = 10;
/// Rejected rows read from the store per part of the CSV.
const REJECTED_PAGE: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_import))
        .layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES as usize))
        .routes(routes!(get_import))
        .routes(routes!(rejected_rows))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// `customers` or `engagements`.
    pub kind: String,
    /// `csv` or `ndjson`; by default from `Content-Type` (`text/csv`,
    /// `application/x-ndjson`).
    pub format: Option<String>,
    /// Column (or NDJSON key) to field, as JSON: `{"Mobile": "phones",
    /// "E-mail": "emails"}`. Customer fields: `name`, `phones`, `emails`,
    /// `status`, `social.<network>`, `ignore`; engagement fields are those
    /// of `POST /v1/engagements` with `customer_name`, `customer_phone` and
    /// `customer_email`. An unmapped column is read as the field of its
    /// own name (any case), or left out.
    pub mapping: Option<String>,
    /// ISO country for this file's numbers written without `+`; default
    /// `CRM_DEFAULT_REGION`.
    pub region: Option<String>,
    /// `true`: work out what would happen and write nothing.
    pub dry_run: Option<bool>,
}

/// An import and how far it got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImportView {
    pub id: Uuid,
    pub kind: ImportKind,
    pub format: ImportFormat,
    pub state: ImportState,
    pub dry_run: bool,
    /// Rows read and applied so far.
    pub rows_read: u64,
    /// Customers: rows that created a customer. Engagements: engagements stored.
    pub created: u64,
    /// Customers: rows whose identifiers named an existing customer.
    pub linked: u64,
    /// Customers: rows whose identifiers named several customers, now merged.
    pub merged: u64,
    pub rejected: u64,
    /// Engagements: rows recorded before under the same `client_event_id`.
    pub duplicates: u64,
    /// Engagements: customers created for their identifiers.
    pub customers_created: u64,
    /// 0 to 1: the share of the file applied.
    pub progress: f64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<String>,
    /// Why a failed import stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first rejected rows (all of them: `GET /v1/imports/{id}/rejected`).
    pub first_rejected: Vec<RejectedSummary>,
}

/// A rejected row: its number (1 is the first after the header) and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedSummary {
    pub row: u64,
    /// `field: reason`, one per problem, joined by `; `.
    pub error: String,
}

async fn view(state: &AppState, import: Import) -> Result<ImportView, ApiError> {
    let first = state
        .crm
        .store()
        .rejected_rows(import.id, None, FIRST_REJECTED)
        .await?;
    Ok(ImportView {
        id: import.id,
        kind: import.kind,
        format: import.format,
        state: import.state,
        dry_run: import.dry_run,
        rows_read: import.counts.rows_read,
        created: import.counts.created,
        linked: import.counts.linked,
        merged: import.counts.merged,
        rejected: import.counts.rejected,
        duplicates: import.counts.duplicates,
        customers_created: import.counts.customers_created,
        progress: import.progress(),
        created_at: crm_models::time::format(&import.created_at),
        updated_at: crm_models::time::format(&import.updated_at),
        finished_at: import.finished_at.as_ref().map(crm_models::time::format),
        error: import.error.clone(),
        first_rejected: first
            .into_iter()
            .map(|r| RejectedSummary {
                row: r.row,
                error: r.error,
            })
            .collect(),
    })
}

fn format_of(query: Option<&str>, headers: &HeaderMap) -> Result<ImportFormat, FieldError> {
    let given = match query {
        Some(f) => f.to_string(),
        None => headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                match essence.as_str() {
                    "text/csv" => "csv".to_string(),
                    "application/x-ndjson" | "application/jsonl" | "application/ndjson" => {
                        "ndjson".to_string()
                    }
                    other => other.to_string(),
                }
            })
            .unwrap_or_default(),
    };
    match given.as_str() {
        "csv" => Ok(ImportFormat::Csv),
        "ndjson" => Ok(ImportFormat::Ndjson),
        _ => Err(FieldError::new(
            "format",
            "must be csv or ndjson (or send Content-Type text/csv or application/x-ndjson)",
        )),
    }
}

/// Starts an import of the body (a CSV with a header line, or one JSON
/// object per line; at most 1 GiB). The body is kept on the server's disk
/// until the import is done, and the rows are applied in the background:
/// follow `GET /v1/imports/{id}`. Customer rows link to the customer a
/// phone, email or social id names (merging customers several name), as
/// evidence from a channel does; rows of the file naming one person
/// become one customer; a row named only by blocked values is rejected.
/// With an `Idempotency-Key`, posting again with the same key answers the
/// first import (200) and starts nothing.
#[utoipa::path(
    post, path = "/v1/imports", tag = "imports",
    params(
        ImportQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "Posting again with the same key answers the same import and changes nothing"),
    ),
    request_body(content = String, description = "The file: CSV (`text/csv`) or NDJSON (`application/x-ndjson`)",
        content_type = "text/csv"),
    responses(
        (status = 202, description = "Accepted: the import runs in the background", body = ImportView),
        (status = 200, description = "The import posted before with this `Idempotency-Key`", body = ImportView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: more than 1 GiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad kind, format, region or mapping (a column the file does not have, an unknown field)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_import(
    State(state): State<AppState>,
    AdminOnly(caller): AdminOnly,
    ApiQuery(query): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let kind = match query.kind.as_str() {
        "customers" => Some(ImportKind::Customers),
        "engagements" => Some(ImportKind::Engagements),
        _ => {
            errors.push(FieldError::new("kind", "must be customers or engagements"));
            None
        }
    };
    let format = format_of(query.format.as_deref(), &headers)
        .map_err(|e| errors.push(e))
        .ok();
    let mapping = parse_mapping(query.mapping.as_deref())
        .map_err(|e| errors.extend(e))
        .ok();
    let region = match &query.region {
        Some(r) => match Region::parse(r) {
            Ok(_) => Some(r.clone()),
            Err(e) => {
                errors.push(FieldError::new("region", e));
                None
            }
        },
        None => state.config.default_region.clone(),
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => {
            let digest = Sha256::digest(format!("{}\u{0}{k}", caller.actor()).as_bytes());
            Some(hex::encode(digest))
        }
        Some(_) => {
            errors.push(FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
            None
        }
    };
    let (Some(kind), Some(format), Some(mapping), true) =
        (kind, format, mapping, errors.is_empty())
    else {
        return Err(ApiError::Validation(errors));
    };
    let id = Uuid::now_v7();
    let path = jobs::spool_path(&state.config.data_dir, id);
    let size = match jobs::spool(body, &path).await {
        Ok(size) => size,
        Err(SpoolError::TooLarge) => {
            return Err(ApiError::PayloadTooLarge(
                "an import is at most 1 GiB".into(),
            ))
        }
        Err(SpoolError::Body(e)) => {
            tracing::info!(error = %e, "import body could not be read");
            return Err(ApiError::Validation(vec![FieldError::new(
                "body",
                "the body could not be read to its end",
            )]));
        }
        Err(SpoolError::Io(e)) => {
            return Err(ApiError::Internal(format!("cannot spool an import: {e}")))
        }
    };
    let record = NewImport {
        kind,
        format,
        dry_run: query.dry_run.unwrap_or(false),
        mapping,
        region,
        created_by: caller.actor(),
        idempotency_key: key,
        bytes_total: Some(size),
    }
    .record(id);
    let remove_spool = || async {
        let _ = tokio::fs::remove_file(&path).await;
    };
    // The header and the mapping are checked before anything is kept.
    let job = match Job::open(state.crm.clone(), record.clone(), path.clone()).await {
        Ok(job) => job,
        Err(ImportError::Invalid(errors)) => {
            remove_spool().await;
            return Err(ApiError::Validation(errors));
        }
        Err(e) => {
            remove_spool().await;
            return Err(ApiError::Validation(vec![FieldError::new(
                "body",
                format!(
                    "cannot be read as {}: {}",
                    match format {
                        ImportFormat::Csv => "csv",
                        ImportFormat::Ndjson => "ndjson",
                    },
                    jobs::describe(&e)
                ),
            )]));
        }
    };
    let (stored, created) = match state.crm.store().insert_import(&job.import).await {
        Ok(done) => done,
        Err(e) => {
            remove_spool().await;
            return Err(e.into());
        }
    };
    if !created {
        remove_spool().await;
        return Ok((StatusCode::OK, ApiJson(view(&state, stored).await?)).into_response());
    }
    tracing::info!(import = %id, kind = ?kind, bytes = size, dry_run = stored.dry_run, "import accepted");
    jobs::run(job, path);
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, format!("/v1/imports/{id}"))],
        ApiJson(view(&state, stored).await?),
    )
        .into_response())
}

async fn find(state: &AppState, id: &str) -> Result<Import, ApiError> {
    let id = Uuid::parse_str(id)
        .map_err(|_| ApiError::not_found(ErrorCode::NotFound, "no such import"))?;
    state
        .crm
        .store()
        .get_import(id)
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::NotFound, "no such import"))
}

/// An import: its state, the counts so far, its progress and its first
/// rejected rows.
#[utoipa::path(
    get, path = "/v1/imports/{id}", tag = "imports",
    params(("id" = String, Path, description = "The import's id")),
    responses(
        (status = 200, description = "The import", body = ImportView),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_import(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<ImportView>, ApiError> {
    let import = find(&state, &id).await?;
    Ok(ApiJson(view(&state, import).await?))
}

fn csv_line(cells: &[String]) -> Result<Vec<u8>, std::io::Error> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(cells).map_err(std::io::Error::other)?;
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The rows an import rejected, as CSV: `row`, the file's own columns (an
/// NDJSON import: `line`), then `error` naming each field and the reason.
/// A dry run keeps its first 100.
#[utoipa::path(
    get, path = "/v1/imports/{id}/rejected", tag = "imports",
    params(("id" = String, Path, description = "The import's id")),
    responses(
        (status = 200, description = "`row,<the file's columns>,error`", content_type = "text/csv", body = String),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn rejected_rows(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let import = find(&state, &id).await?;
    let mut columns = vec!["row".to_string()];
    columns.extend(import.columns.iter().cloned());
    columns.push("error".into());
    let width = import.columns.len();
    let header = csv_line(&columns).map_err(|e| ApiError::Internal(e.to_string()))?;
    let store = state.crm.store().clone();
    let import_id = import.id;
    let parts = futures::stream::try_unfold(Some(None), move |after: Option<Option<u64>>| {
        let store = store.clone();
        async move {
            let Some(after) = after else {
                return Ok(None);
            };
            let page = store
                .rejected_rows(import_id, after, REJECTED_PAGE)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "rejected rows: cannot read the store");
                    std::io::Error::other("the store cannot be read")
                })?;
            let mut bytes = Vec::new();
            for r in &page {
                let mut cells = vec![r.row.to_string()];
                cells.extend(r.cells.iter().cloned());
                cells.resize(width + 1, String::new());
                cells.push(r.error.clone());
                bytes.extend(csv_line(&cells)?);
            }
            let next = (page.len() == REJECTED_PAGE).then(|| page.last().map(|r| r.row));
            Ok::<_, std::io::Error>(Some((bytes, next)))
        }
    });
    let body = futures::StreamExt::chain(
        futures::stream::iter([Ok::<Vec<u8>, std::io::Error>(header)]),
        parts,
    );
    Ok((
        [
            (CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"import-{import_id}-rejected.csv\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
