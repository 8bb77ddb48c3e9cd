//! Bulk export (admins): every customer or every engagement as CSV or NDJSON,
//! streamed from the store a page at a time (see [`crate::bulk::export`]).

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminOnly;
use crate::bulk::export::{Export, ExportRequest, Kind, RawExportRequest};
use crate::error::{ApiError, ApiQuery, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(export_customers))
        .routes(routes!(export_engagements))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `ndjson` (default) or `csv` (a header line, then one row per record).
    pub format: Option<String>,
    /// Only customers changed at or after this time (RFC 3339); for
    /// engagements, the engagements of those customers.
    #[param(format = DateTime)]
    pub updated_since: Option<String>,
    /// Engagements only: one channel (`web`, `call`, `sms`, `whatsapp`, `email`).
    pub channel: Option<String>,
    /// Engagements only: `occurred_at` at or after (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Engagements only: `occurred_at` before (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Resume an export that broke off: the `cursor` of the last row received.
    pub after: Option<String>,
}

async fn export(state: AppState, kind: Kind, query: ExportQuery) -> Result<Response, ApiError> {
    let request = ExportRequest::parse(
        kind,
        &RawExportRequest {
            format: query.format.as_deref(),
            updated_since: query.updated_since.as_deref(),
            channel: query.channel.as_deref(),
            from: query.from.as_deref(),
            to: query.to.as_deref(),
            after: query.after.as_deref(),
        },
    )
    .map_err(ApiError::Validation)?;
    let format = request.format;
    let export = Export::new(state.crm.store().clone(), request);
    let body = export.into_stream().map(|part| match part {
        Ok(part) => Ok(part.bytes),
        Err(e) => {
            // The status is sent already: the body ends with an error, and
            // the client resumes after the last row it received.
            tracing::warn!(error = %e, "export: cannot read the store");
            Err(std::io::Error::other("the store cannot be read"))
        }
    });
    let name = match kind {
        Kind::Customers => "customers",
        Kind::Engagements => "engagements",
    };
    Ok((
        [
            (CONTENT_TYPE, format.content_type().to_string()),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.{}\"", format.extension()),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Every customer (merged ones left out), oldest change first: NDJSON (the
/// customer as `GET /v1/customers/{id}` answers it) or CSV (`phones`,
/// `emails` and `social` as `; `-separated lists). Every row ends with its
/// `cursor`; `after=<cursor>` resumes after that row.
#[utoipa::path(
    get, path = "/v1/export/customers", tag = "export",
    params(ExportQuery),
    responses(
        (status = 200, description = "One customer per line (`format=ndjson`) or a CSV with the columns `id,name,status,phones,emails,social,created_at,updated_at,last_engagement_at,cursor`",
         content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad format, time, channel or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn export_customers(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    export(state, Kind::Customers, query).await
}

/// Every engagement, customer by customer (newest first within one): the
/// fields of `POST /v1/engagements`, with the customer's name, first phone
/// and first email, so that the file imports into another store
/// (`POST /v1/imports?kind=engagements`). Every row ends with its
/// `cursor`; `after=<cursor>` resumes after that row.
#[utoipa::path(
    get, path = "/v1/export/engagements", tag = "export",
    params(ExportQuery),
    responses(
        (status = 200, description = "One engagement per line (`format=ndjson`) or a CSV with the columns `id,customer_id,customer_name,customer_phone,customer_email,channel,direction,occurred_at,recorded_at,client_event_id,url,view,view_desc,category,object_id,duration_s,status,body,payload_type,payload,subject,cursor`",
         content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad format, time, channel or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn export_engagements(
    State(state): State<AppState>,
    AdminOnly(_): AdminOnly,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    export(state, Kind::Engagements, query).await
}
