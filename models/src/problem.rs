//! The one error table of the HTTP API: every machine `code` a client can
//! get, with its HTTP status, the RFC 9457 problem document that carries it,
//! and [`ApiError`], the error every route (the staff API and the mobile
//! bridge alike) returns.
//!
//! The domain errors ([`CrmError`], [`StoreError`]) are mapped here, once.
//! With the `http` feature, [`ApiError`] is an axum response
//! (`application/problem+json`) and `ApiJson`, `ApiQuery` and `ApiPath` are
//! extractors whose rejections are problem documents with messages written
//! for people.
//!
//! Statuses worth knowing:
//! - conflicts (`identifiers_conflict`, `identifier_taken`, `customer_merged`,
//!   `merge_refused`, `email_taken`, `conflict`) are 409;
//! - `contention` (a transaction kept colliding with concurrent ones) is 409
//!   with `Retry-After: 1`: the same request is expected to succeed when
//!   repeated;
//! - `unavailable` (the store or index cannot be reached) is 503 with
//!   `Retry-After: 5`;
//! - `rate_limited` is 429 with the `Retry-After` of the limit that refused;
//! - `method_not_allowed` is 405 with an `Allow` header.

#[cfg(feature = "http")]
mod http;

#[cfg(feature = "http")]
pub use http::{field_errors_from_json, parse_json, ApiJson, ApiPath, ApiQuery, PROBLEM_JSON};

use serde::{Deserialize, Serialize};

use crate::ids::CustomerId;
use crate::service::{CrmError, FieldError};
use crate::store::StoreError;

/// Seconds a client should wait before repeating a request refused with
/// `contention`.
pub const CONTENTION_RETRY_AFTER_S: u64 = 1;
/// Seconds a client should wait before repeating a request refused with
/// `unavailable`.
pub const UNAVAILABLE_RETRY_AFTER_S: u64 = 5;

/// Every machine-readable `code` of the API, with its HTTP status. The
/// serialized form is the snake_case name (`validation_failed`).
///
/// | status | codes |
/// | --- | --- |
/// | 400 | `malformed_json`, `bad_request` |
/// | 401 | `unauthorized` |
/// | 403 | `forbidden` |
/// | 404 | `not_found`, `route_not_found`, `customer_not_found`, `merge_not_found`, `user_not_found`, `api_key_not_found`, `device_not_found`, `webhook_not_found`, `delivery_not_found` |
/// | 405 | `method_not_allowed` (with `Allow`) |
/// | 410 | `cursor_expired` (the event log no longer holds the cursor: start again) |
/// | 409 | `identifiers_conflict`, `identifier_taken`, `customer_merged`, `merge_refused`, `email_taken`, `conflict`; `contention` with `Retry-After: 1` (repeat the request) |
/// | 413 | `payload_too_large` |
/// | 415 | `unsupported_media_type` |
/// | 422 | `validation_failed`; `invalid_event` (in a mobile upload's result) |
/// | 429 | `rate_limited` (with `Retry-After`) |
/// | 500 | `internal` |
/// | 503 | `unavailable` with `Retry-After: 5` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 422: fields are missing or invalid; `errors` lists every one.
    ValidationFailed,
    /// 422: one event of a mobile upload was refused (in its result, not as
    /// the response).
    InvalidEvent,
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: a request the server cannot read otherwise.
    BadRequest,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 413: the body (or the batch) is too large.
    PayloadTooLarge,
    /// 401: no credentials, or credentials that are not valid here.
    Unauthorized,
    /// 403: the caller's role may not do this.
    Forbidden,
    /// 404: the record does not exist.
    NotFound,
    /// 404: no route has this path.
    RouteNotFound,
    /// 405: the route exists but not with this method (see `Allow`).
    MethodNotAllowed,
    /// 404
    CustomerNotFound,
    /// 404
    MergeNotFound,
    /// 404
    UserNotFound,
    /// 404
    ApiKeyNotFound,
    /// 404
    DeviceNotFound,
    /// 404
    WebhookNotFound,
    /// 404
    DeliveryNotFound,
    /// 410: the cursor (`after`, `Last-Event-ID`) is older than the event
    /// log's retention; start again from the beginning of the log.
    CursorExpired,
    /// 409: the identifiers belong to different customers (`customers`).
    IdentifiersConflict,
    /// 409: an identifier of a staff edit belongs to another customer
    /// (`customers`); merge through `POST /v1/customers/{id}/merge`.
    IdentifierTaken,
    /// 409: the customer was merged into another (`merged_into`); write to
    /// that one.
    CustomerMerged,
    /// 409: the merge or undo cannot be carried out in the current state.
    MergeRefused,
    /// 409: a staff user with this email exists.
    EmailTaken,
    /// 409: a unique value is taken.
    Conflict,
    /// 409: too many concurrent changes to the same records; repeat the
    /// request after `Retry-After` seconds.
    Contention,
    /// 429: too many attempts; repeat after `Retry-After` seconds.
    RateLimited,
    /// 503: the store or the index cannot be reached; repeat after
    /// `Retry-After` seconds.
    Unavailable,
    /// 500: a bug or an unexpected failure, logged on the server.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the table.
    pub const ALL: [ErrorCode; 29] = [
        ErrorCode::ValidationFailed,
        ErrorCode::InvalidEvent,
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RouteNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::CustomerNotFound,
        ErrorCode::MergeNotFound,
        ErrorCode::UserNotFound,
        ErrorCode::ApiKeyNotFound,
        ErrorCode::DeviceNotFound,
        ErrorCode::WebhookNotFound,
        ErrorCode::DeliveryNotFound,
        ErrorCode::CursorExpired,
        ErrorCode::IdentifiersConflict,
        ErrorCode::IdentifierTaken,
        ErrorCode::CustomerMerged,
        ErrorCode::MergeRefused,
        ErrorCode::EmailTaken,
        ErrorCode::Conflict,
        ErrorCode::Contention,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status of a response with this code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedJson | BadRequest => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound | RouteNotFound | CustomerNotFound | MergeNotFound | UserNotFound
            | ApiKeyNotFound | DeviceNotFound | WebhookNotFound | DeliveryNotFound => 404,
            MethodNotAllowed => 405,
            CursorExpired => 410,
            IdentifiersConflict | IdentifierTaken | CustomerMerged | MergeRefused | EmailTaken
            | Conflict | Contention => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            ValidationFailed | InvalidEvent => 422,
            RateLimited => 429,
            Internal => 500,
            Unavailable => 503,
        }
    }

    /// The code as it appears in `code` (`validation_failed`).
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            ValidationFailed => "validation_failed",
            InvalidEvent => "invalid_event",
            MalformedJson => "malformed_json",
            BadRequest => "bad_request",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not_found",
            RouteNotFound => "route_not_found",
            MethodNotAllowed => "method_not_allowed",
            CustomerNotFound => "customer_not_found",
            MergeNotFound => "merge_not_found",
            UserNotFound => "user_not_found",
            ApiKeyNotFound => "api_key_not_found",
            DeviceNotFound => "device_not_found",
            WebhookNotFound => "webhook_not_found",
            DeliveryNotFound => "delivery_not_found",
            CursorExpired => "cursor_expired",
            IdentifiersConflict => "identifiers_conflict",
            IdentifierTaken => "identifier_taken",
            CustomerMerged => "customer_merged",
            MergeRefused => "merge_refused",
            EmailTaken => "email_taken",
            Conflict => "conflict",
            Contention => "contention",
            RateLimited => "rate_limited",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }

    /// The problem's `title`: the same for every occurrence of the code.
    pub fn title(self) -> &'static str {
        use ErrorCode::*;
        match self {
            ValidationFailed => "Invalid fields",
            InvalidEvent => "Invalid event",
            MalformedJson => "The body is not valid JSON",
            BadRequest => "Bad request",
            UnsupportedMediaType => "Unsupported media type",
            PayloadTooLarge => "Payload too large",
            Unauthorized => "Unauthorized",
            Forbidden => "Forbidden",
            NotFound => "Not found",
            RouteNotFound => "No such route",
            MethodNotAllowed => "Method not allowed",
            CustomerNotFound => "Customer not found",
            MergeNotFound => "Merge not found",
            UserNotFound => "User not found",
            ApiKeyNotFound => "API key not found",
            DeviceNotFound => "Device not found",
            WebhookNotFound => "Webhook not found",
            DeliveryNotFound => "Delivery not found",
            CursorExpired => "Cursor expired",
            IdentifiersConflict => "The identifiers belong to different customers",
            IdentifierTaken => "The identifier belongs to another customer",
            CustomerMerged => "The customer was merged",
            MergeRefused => "Merge refused",
            EmailTaken => "Email taken",
            Conflict => "Conflict",
            Contention => "Too many concurrent changes",
            RateLimited => "Too many requests",
            Unavailable => "Service unavailable",
            Internal => "Internal error",
        }
    }

    /// `Retry-After` in seconds for codes whose request should simply be
    /// repeated (`rate_limited` carries its own).
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            ErrorCode::Contention => Some(CONTENTION_RETRY_AFTER_S),
            ErrorCode::Unavailable => Some(UNAVAILABLE_RETRY_AFTER_S),
            _ => None,
        }
    }

    /// The problem's `type` URI.
    pub fn type_uri(self) -> String {
        format!("urn:crm:problem:{}", self.as_str())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:crm:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the code, the same for every occurrence.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time, for people.
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: ErrorCode,
    /// Every invalid field, for `validation_failed` and `invalid_event`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The customers involved: for `identifiers_conflict` and
    /// `identifier_taken` their owners, for `customer_merged` the survivor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<CustomerId>,
    /// The surviving customer, for `customer_merged`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<CustomerId>,
}

/// The error of every HTTP route. The status of each value is the status of
/// its [`ErrorCode`]; the variants only say what else the problem carries.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `validation_failed` with every bad field.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// A 4xx with a code and a detail only (`malformed_json`, `bad_request`).
    #[error("{detail}")]
    BadRequest { code: ErrorCode, detail: String },
    /// `unauthorized`, with what was wrong with the credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// `forbidden`.
    #[error("this role may not do that")]
    Forbidden,
    /// A 404 code (`customer_not_found`, ...).
    #[error("{detail}")]
    NotFound { code: ErrorCode, detail: String },
    /// `method_not_allowed`.
    #[error("this route does not accept that method")]
    MethodNotAllowed,
    /// A 409 code, with the customers involved if any.
    #[error("{detail}")]
    Conflict {
        code: ErrorCode,
        detail: String,
        customers: Vec<CustomerId>,
    },
    /// `customer_merged`: writes go to `merged_into`.
    #[error("customer {id} was merged into {merged_into}")]
    CustomerMerged {
        id: CustomerId,
        merged_into: CustomerId,
    },
    /// `payload_too_large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// `rate_limited`.
    #[error("too many attempts; retry after {retry_after_s} s")]
    TooManyRequests { retry_after_s: u64 },
    /// `unavailable`: the detail is for the client (say what, not why).
    #[error("{0}")]
    Unavailable(String),
    /// `internal`: the message is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError::NotFound {
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub fn conflict(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            detail: detail.into(),
            customers: Vec::new(),
        }
    }

    /// `validation_failed` for one field.
    pub fn field(field: &str, message: impl ToString) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Validation(_) => ErrorCode::ValidationFailed,
            ApiError::BadRequest { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. } => *code,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden => ErrorCode::Forbidden,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::CustomerMerged { .. } => ErrorCode::CustomerMerged,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::TooManyRequests { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status, from the table.
    pub fn status_code(&self) -> u16 {
        self.code().status()
    }

    /// `Retry-After` in seconds, when repeating the request is the remedy.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::TooManyRequests { retry_after_s } => Some(*retry_after_s),
            other => other.code().retry_after_s(),
        }
    }

    pub fn to_problem(&self) -> Problem {
        let code = self.code();
        let (errors, customers, merged_into) = match self {
            ApiError::Validation(errors) => (errors.clone(), Vec::new(), None),
            ApiError::Conflict { customers, .. } => (Vec::new(), customers.clone(), None),
            ApiError::CustomerMerged { merged_into, .. } => {
                (Vec::new(), vec![*merged_into], Some(*merged_into))
            }
            _ => (Vec::new(), Vec::new(), None),
        };
        let detail = match self {
            ApiError::Validation(errors) => validation_detail(errors),
            other => other.to_string(),
        };
        Problem {
            type_: code.type_uri(),
            title: code.title().to_string(),
            status: code.status(),
            detail,
            code,
            errors,
            customers,
            merged_into,
        }
    }
}

/// `name: is required; role: must be one of admin, agent`.
fn validation_detail(errors: &[FieldError]) -> String {
    if errors.is_empty() {
        return "the request has invalid fields".into();
    }
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found(ErrorCode::NotFound, "not found"),
            StoreError::Conflict(detail) => ApiError::conflict(ErrorCode::Conflict, detail),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                ApiError::Unavailable("the store is unavailable; try again".into())
            }
            StoreError::Contention(m) => {
                tracing::warn!(error = %m, "store contention");
                ApiError::conflict(
                    ErrorCode::Contention,
                    "too many concurrent changes to the same records; try again",
                )
            }
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl From<CrmError> for ApiError {
    fn from(e: CrmError) -> Self {
        match e {
            CrmError::CustomerNotFound(id) => ApiError::not_found(
                ErrorCode::CustomerNotFound,
                format!("customer {id} not found"),
            ),
            CrmError::IdentifiersConflict { customers } => ApiError::Conflict {
                code: ErrorCode::IdentifiersConflict,
                detail: "the identifiers belong to different customers".into(),
                customers,
            },
            CrmError::Invalid(errors) => ApiError::Validation(errors),
            CrmError::Contention => ApiError::conflict(ErrorCode::Contention, e.to_string()),
            CrmError::MergeNotFound(id) => {
                ApiError::not_found(ErrorCode::MergeNotFound, format!("merge {id} not found"))
            }
            CrmError::Refused(detail) => ApiError::conflict(ErrorCode::MergeRefused, detail),
            CrmError::IdentifierTaken { customers } => ApiError::Conflict {
                code: ErrorCode::IdentifierTaken,
                detail: identifier_taken_detail(&customers),
                customers,
            },
            CrmError::CustomerMerged { id, merged_into } => {
                ApiError::CustomerMerged { id, merged_into }
            }
            CrmError::Store(s) => s.into(),
        }
    }
}

/// What a staff client does about `identifier_taken`: the owners, and the
/// two ways to merge.
pub fn identifier_taken_detail(customers: &[CustomerId]) -> String {
    let owners = customers
        .iter()
        .map(CustomerId::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "an identifier belongs to another customer ({owners}); nothing was changed. \
         To make them one, merge with POST /v1/customers/{{id}}/merge, or repeat the \
         request with \"merge\": true"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_as_its_name_and_has_a_client_or_server_error_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
            let back: ErrorCode = serde_json::from_value(serde_json::json!(code.as_str())).unwrap();
            assert_eq!(back, code);
            assert!((400..600).contains(&code.status()), "{code}");
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
    }

    #[test]
    fn the_documented_table_says_what_status_gives() {
        let mut listed = std::collections::HashSet::new();
        let rows = include_str!("problem.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("/// | "))
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()));
        for row in rows {
            let (status, codes) = row.split_once('|').unwrap();
            let status: u16 = status.trim().parse().unwrap();
            for name in codes.split('`').skip(1).step_by(2) {
                if let Ok(code) = serde_json::from_value::<ErrorCode>(serde_json::json!(name)) {
                    assert_eq!(code.status(), status, "{name}");
                    listed.insert(code);
                }
            }
        }
        assert_eq!(listed.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn conflicts_and_contention_are_409_and_only_transient_codes_say_retry() {
        for code in [
            ErrorCode::IdentifiersConflict,
            ErrorCode::IdentifierTaken,
            ErrorCode::CustomerMerged,
            ErrorCode::Conflict,
            ErrorCode::Contention,
        ] {
            assert_eq!(code.status(), 409, "{code}");
        }
        assert_eq!(ErrorCode::Contention.retry_after_s(), Some(1));
        assert_eq!(ErrorCode::Unavailable.retry_after_s(), Some(5));
        assert_eq!(ErrorCode::Conflict.retry_after_s(), None);
        assert_eq!(ErrorCode::MethodNotAllowed.status(), 405);
    }

    #[test]
    fn store_and_domain_errors_map_to_the_table() {
        let cases: Vec<(ApiError, ErrorCode, u16)> = vec![
            (
                StoreError::Conflict("x".into()).into(),
                ErrorCode::Conflict,
                409,
            ),
            (
                StoreError::Contention("x".into()).into(),
                ErrorCode::Contention,
                409,
            ),
            (
                StoreError::Unavailable("x".into()).into(),
                ErrorCode::Unavailable,
                503,
            ),
            (
                StoreError::Internal("x".into()).into(),
                ErrorCode::Internal,
                500,
            ),
            (StoreError::NotFound.into(), ErrorCode::NotFound, 404),
            (CrmError::Contention.into(), ErrorCode::Contention, 409),
            (
                CrmError::IdentifiersConflict {
                    customers: vec![CustomerId::new()],
                }
                .into(),
                ErrorCode::IdentifiersConflict,
                409,
            ),
            (
                CrmError::CustomerNotFound(CustomerId::new()).into(),
                ErrorCode::CustomerNotFound,
                404,
            ),
            (
                CrmError::Refused("no".into()).into(),
                ErrorCode::MergeRefused,
                409,
            ),
        ];
        for (error, code, status) in cases {
            assert_eq!(error.code(), code);
            assert_eq!(error.status_code(), status);
            let problem = error.to_problem();
            assert_eq!(problem.status, status);
            assert_eq!(problem.type_, format!("urn:crm:problem:{code}"));
        }
    }

    #[test]
    fn a_problem_carries_what_its_code_needs_and_hides_internal_messages() {
        let survivor = CustomerId::new();
        let merged = ApiError::CustomerMerged {
            id: CustomerId::new(),
            merged_into: survivor,
        }
        .to_problem();
        let json = serde_json::to_value(&merged).unwrap();
        assert_eq!(json["code"], "customer_merged");
        assert_eq!(json["merged_into"], survivor.to_string());
        assert!(json.get("errors").is_none());

        let invalid = ApiError::Validation(vec![
            FieldError::new("email", "is required"),
            FieldError::new("role", "must be one of admin, agent, service"),
        ])
        .to_problem();
        assert_eq!(invalid.errors.len(), 2);
        assert_eq!(
            invalid.detail,
            "email: is required; role: must be one of admin, agent, service"
        );

        let internal = ApiError::Internal("secret path /var/x".into()).to_problem();
        assert_eq!(internal.detail, "internal error");
    }
}
