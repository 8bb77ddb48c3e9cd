//! The HTTP errors. The error-code table, the problem document and the
//! error type live in `crm_models::problem`, shared with the mobile bridge;
//! this module gives them the names the routes use.
//!
//! - [`ApiError`]: what every handler returns; its status comes from its
//!   [`ErrorCode`], and it answers `application/problem+json`.
//! - [`ApiJson`], [`ApiQuery`], [`ApiPath`]: the extractors whose
//!   rejections are problem documents (`validation_failed` listing every bad
//!   field in words for people, `malformed_json`, `unsupported_media_type`,
//!   `payload_too_large`, `not_found`).

pub use crm_models::problem::{
    ApiError, ApiJson, ApiPath, ApiQuery, ErrorCode, Problem, PROBLEM_JSON,
};
