//! One error type for the HTTP layer, turned into an RFC 9457
//! `application/problem+json` response in one place. Every problem carries a
//! stable machine `code` (listed in `openapi.yaml`); 500s are logged and hidden.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use crm_models::ids::CustomerId;
use crm_models::service::{CrmError, FieldError};
use crm_models::store::StoreError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("this role may not do that")]
    Forbidden,
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    #[error("{detail}")]
    Conflict {
        code: &'static str,
        detail: String,
        customers: Vec<CustomerId>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many attempts; retry after {retry_after_s} s")]
    TooManyRequests { retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// The problem document. `type` is a URN built from `code`.
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

impl ApiError {
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::NotFound {
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub fn field(field: &str, message: impl ToString) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::BadRequest { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn to_problem(&self) -> Problem {
        let status = self.status();
        let (errors, customers) = match self {
            ApiError::Validation(errors) => (errors.clone(), Vec::new()),
            ApiError::Conflict { customers, .. } => (Vec::new(), customers.clone()),
            _ => (Vec::new(), Vec::new()),
        };
        let code = self.code();
        Problem {
            type_: format!("urn:crm:problem:{code}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_string(),
            errors,
            customers,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(message) = &self {
            tracing::error!(error = %message, "internal error");
        }
        let problem = self.to_problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::TooManyRequests { retry_after_s } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            // RFC 9110: a 401 names the scheme that would work.
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"crm\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not_found", "not found"),
            StoreError::Conflict(detail) => ApiError::Conflict {
                code: "conflict",
                detail,
                customers: Vec::new(),
            },
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                ApiError::Unavailable("the store is unavailable; try again".into())
            }
            StoreError::Contention(detail) => ApiError::Conflict {
                code: "contention",
                detail,
                customers: Vec::new(),
            },
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<CrmError> for ApiError {
    fn from(e: CrmError) -> Self {
        match e {
            CrmError::CustomerNotFound(id) => {
                ApiError::not_found("customer_not_found", format!("customer {id} not found"))
            }
            CrmError::IdentifiersConflict { customers } => ApiError::Conflict {
                code: "identifiers_conflict",
                detail: "the identifiers belong to different customers".into(),
                customers,
            },
            CrmError::Invalid(errors) => ApiError::Validation(errors),
            CrmError::Contention => ApiError::Conflict {
                code: "contention",
                detail: e.to_string(),
                customers: Vec::new(),
            },
            CrmError::MergeNotFound(id) => {
                ApiError::not_found("merge_not_found", format!("merge {id} not found"))
            }
            CrmError::Refused(detail) => ApiError::Conflict {
                code: "merge_refused",
                detail,
                customers: Vec::new(),
            },
            CrmError::Store(s) => s.into(),
        }
    }
}

impl From<crm_mobile_bridge::MobileError> for ApiError {
    fn from(e: crm_mobile_bridge::MobileError) -> Self {
        use crm_mobile_bridge::MobileError as M;
        match e {
            M::Validation(errors) => ApiError::Validation(errors),
            M::BadRequest { code, detail } => ApiError::BadRequest { code, detail },
            M::Unauthorized(m) => ApiError::Unauthorized(m),
            M::NotFound { code, detail } => ApiError::NotFound { code, detail },
            M::PayloadTooLarge(m) => ApiError::PayloadTooLarge(m),
            M::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            M::Unavailable(m) => ApiError::Unavailable(m),
            M::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Validation(vec![FieldError::new(
                "body",
                e.body_text().trim_start_matches(
                    "Failed to deserialize the JSON body into the target type: ",
                ),
            )]),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected `Content-Type: application/json`".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            other => ApiError::bad_request("bad_request", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Validation(vec![FieldError::new("query", r.body_text())])
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::not_found("not_found", r.body_text())
    }
}

/// JSON body extractor whose rejections are problem responses.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query extractor whose rejections are problem responses.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose rejections are problem responses.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
