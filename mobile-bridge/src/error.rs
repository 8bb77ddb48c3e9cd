//! The bridge's one error type, rendered as an RFC 9457 problem document with
//! the same shape and codes as the rest of the API.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use crm_indexer::IndexError;
use crm_models::service::{CrmError, FieldError};
use crm_models::store::StoreError;
use crm_models::CustomerId;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum MobileError {
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// The problem document (the same as `crm-api`'s).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: String,
    /// Per-field errors, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The customers involved, for `identifiers_conflict`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<CustomerId>,
}

impl MobileError {
    pub fn field(field: &str, message: impl ToString) -> Self {
        MobileError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        MobileError::NotFound {
            code,
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            MobileError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            MobileError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            MobileError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            MobileError::NotFound { .. } => StatusCode::NOT_FOUND,
            MobileError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            MobileError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            MobileError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            MobileError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            MobileError::Validation(_) => "validation_failed",
            MobileError::BadRequest { code, .. } | MobileError::NotFound { code, .. } => code,
            MobileError::Unauthorized(_) => "unauthorized",
            MobileError::PayloadTooLarge(_) => "payload_too_large",
            MobileError::UnsupportedMediaType(_) => "unsupported_media_type",
            MobileError::Unavailable(_) => "unavailable",
            MobileError::Internal(_) => "internal",
        }
    }

    pub fn to_problem(&self) -> Problem {
        let status = self.status();
        let code = self.code();
        Problem {
            type_: format!("urn:crm:problem:{code}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_string(),
            errors: match self {
                MobileError::Validation(errors) => errors.clone(),
                _ => Vec::new(),
            },
            customers: Vec::new(),
        }
    }
}

impl IntoResponse for MobileError {
    fn into_response(self) -> Response {
        if let MobileError::Internal(message) = &self {
            tracing::error!(error = %message, "internal error");
        }
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let MobileError::Unauthorized(_) = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"crm-mobile\""),
            );
        }
        response
    }
}

impl From<StoreError> for MobileError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => MobileError::not_found("not_found", "not found"),
            StoreError::Conflict(detail) => MobileError::BadRequest {
                code: "conflict",
                detail,
            },
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                MobileError::Unavailable("the store is unavailable; try again".into())
            }
            StoreError::Contention(m) => MobileError::Unavailable(m),
            StoreError::Internal(m) => MobileError::Internal(m),
        }
    }
}

impl From<CrmError> for MobileError {
    fn from(e: CrmError) -> Self {
        match e {
            CrmError::Store(s) => s.into(),
            CrmError::Invalid(errors) => MobileError::Validation(errors),
            CrmError::CustomerNotFound(id) => {
                MobileError::not_found("customer_not_found", format!("customer {id} not found"))
            }
            other => MobileError::Unavailable(other.to_string()),
        }
    }
}

impl From<IndexError> for MobileError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Unavailable(m) => {
                tracing::warn!(error = %m, "index unavailable");
                MobileError::Unavailable("the caller-ID index is unavailable; try again".into())
            }
            other => MobileError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for MobileError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => MobileError::field(
                "body",
                e.body_text().trim_start_matches(
                    "Failed to deserialize the JSON body into the target type: ",
                ),
            ),
            JsonRejection::JsonSyntaxError(e) => MobileError::BadRequest {
                code: "malformed_json",
                detail: e.body_text(),
            },
            JsonRejection::MissingJsonContentType(_) => MobileError::UnsupportedMediaType(
                "expected `Content-Type: application/json`".into(),
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                MobileError::PayloadTooLarge(format!(
                    "the request body is larger than {} bytes (1 MiB); send fewer events per batch",
                    crate::upload::MAX_BATCH_BYTES
                ))
            }
            other => MobileError::BadRequest {
                code: "bad_request",
                detail: other.body_text(),
            },
        }
    }
}

impl From<QueryRejection> for MobileError {
    fn from(r: QueryRejection) -> Self {
        MobileError::field("query", r.body_text())
    }
}

/// JSON body extractor whose rejections are problem responses.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(MobileError))]
pub struct MobileJson<T>(pub T);

impl<T: Serialize> IntoResponse for MobileJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query extractor whose rejections are problem responses.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(MobileError))]
pub struct MobileQuery<T>(pub T);
