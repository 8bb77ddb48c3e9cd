//! The HTTP side of the error table: [`ApiError`] as an axum response and
//! the extractors whose rejections are problem documents.
//!
//! A JSON body that does not fit its type is reported field by field, in
//! words a person can act on (`role: must be one of admin, agent, service`),
//! never with serde's positions or Rust type names; as many bad fields as can
//! be found are listed at once, not only the first.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, ErrorCode};
use crate::service::FieldError;

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Bodies up to this size are re-read to find every bad field, not only the
/// first; larger ones report the first.
const COLLECT_MAX_BYTES: usize = 64 * 1024;
/// At most this many fields are reported for one body.
const COLLECT_MAX_ERRORS: usize = 20;

impl ErrorCode {
    /// The HTTP status, as the `http` crate spells it.
    pub fn http_status(self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(message) = &self {
            tracing::error!(error = %message, "internal error");
        }
        let problem = self.to_problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (problem.code.http_status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // RFC 9110: a 401 names the scheme that would work.
        if let ApiError::Unauthorized(_) = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"crm\""),
            );
        }
        response
    }
}

/// JSON body extractor: `Content-Type: application/json` (or `+json`),
/// one JSON value, of type `T`. Its rejections are problem documents:
/// 415 `unsupported_media_type`, 413 `payload_too_large`, 400
/// `malformed_json`, 422 `validation_failed` with every bad field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the request body is too large".into())
            } else {
                ApiError::bad_request(ErrorCode::BadRequest, "the request body cannot be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query extractor whose rejections are 422 `validation_failed` naming the
/// parameter.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose rejections are 404 `not_found`.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let text = r.body_text();
        let text = text
            .strip_prefix("Failed to deserialize query string")
            .map(|t| t.trim_start_matches(':').trim_start())
            .unwrap_or(&text);
        let (path, message) = split_path(text);
        let issue = Issue::new(path, message);
        ApiError::Validation(vec![issue.field_error("query")])
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        match r {
            PathRejection::FailedToDeserializePathParams(_) => {
                ApiError::not_found(ErrorCode::NotFound, "nothing has this id")
            }
            other => ApiError::Internal(other.body_text()),
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, or any
/// `application/*+json`, with or without parameters).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

/// Reads one JSON value of type `T` from `bytes`, as [`ApiJson`] does.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(value) => match de.end() {
            Ok(()) => Ok(value),
            Err(e) => Err(malformed(&e)),
        },
        Err(e) => {
            if !matches!(e.inner().classify(), serde_json::error::Category::Data) {
                return Err(malformed(e.inner()));
            }
            // A body that is not one JSON value is malformed, whatever else
            // is wrong with its fields.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                return Err(malformed(&syntax));
            }
            Err(ApiError::Validation(collect::<T>(
                bytes,
                Some(Issue::from_error(&e)),
            )))
        }
    }
}

/// `malformed_json`, saying where: `... (line 1, column 9)`.
fn malformed(e: &serde_json::Error) -> ApiError {
    let message = e.to_string();
    let what = strip_position(&message);
    let detail = if e.line() > 0 {
        format!(
            "the body is not valid JSON: {what} (line {}, column {})",
            e.line(),
            e.column()
        )
    } else {
        format!("the body is not valid JSON: {what}")
    };
    ApiError::bad_request(ErrorCode::MalformedJson, detail)
}

/// Every field of `bytes` that does not fit `T`, in words for people; empty
/// when `bytes` is a `T`.
pub fn field_errors_from_json<T: DeserializeOwned>(bytes: &[u8]) -> Vec<FieldError> {
    collect::<T>(bytes, None)
}

/// [`field_errors_from_json`] after `first` was found. A bad field is set
/// aside (a value of the expected kind put in its place) and the body read
/// again, so one request reports several fields.
fn collect<T: DeserializeOwned>(bytes: &[u8], first: Option<Issue>) -> Vec<FieldError> {
    let value: Option<Value> = if bytes.len() <= COLLECT_MAX_BYTES {
        serde_json::from_slice(bytes).ok()
    } else {
        None
    };
    let Some(mut value) = value else {
        return first
            .map(|i| vec![i.field_error("body")])
            .unwrap_or_default();
    };
    let mut issue = match first {
        Some(issue) => issue,
        None => match try_value::<T>(&value) {
            Some(issue) => issue,
            None => return Vec::new(),
        },
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..COLLECT_MAX_ERRORS {
        issue.refine(&value);
        let error = issue.field_error("body");
        if !seen.insert(error.field.clone()) {
            break;
        }
        out.push(error);
        match set_aside::<T>(&mut value, &issue) {
            Some(Some(next)) => issue = next,
            // Fits now, or cannot be set aside: done.
            Some(None) | None => break,
        }
    }
    out
}

fn try_value<T: DeserializeOwned>(value: &Value) -> Option<Issue> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(_) => None,
        Err(e) => Some(Issue::from_error(&e)),
    }
}

/// Puts a value of the expected kind where `issue` is (or removes an unknown
/// field) and reads `value` again: `Some(next issue or None)`, or `None` when
/// nothing put there helps.
fn set_aside<T: DeserializeOwned>(value: &mut Value, issue: &Issue) -> Option<Option<Issue>> {
    match &issue.kind {
        Kind::UnknownField { name } => {
            at_mut(value, &issue.path)?
                .as_object_mut()?
                .remove(name.as_str())?;
            Some(try_value::<T>(value))
        }
        Kind::DuplicateField { .. } => Some(try_value::<T>(value)),
        Kind::MissingField { name } => {
            let mut path = issue.path.clone();
            path.push(Seg::Key(name.clone()));
            for candidate in candidates(None) {
                at_mut(value, &issue.path)?
                    .as_object_mut()?
                    .insert(name.clone(), candidate);
                let next = try_value::<T>(value);
                if !within(&next, &path) {
                    return Some(next);
                }
            }
            None
        }
        Kind::UnknownVariant { expected } => {
            let here = issue.location();
            let (_, parent) = here.split_last()?;
            let names = match expected {
                Expected::Names(names) => names.clone(),
                Expected::Phrase(_) => Vec::new(),
            };
            for candidate in candidates(Some(expected)) {
                *at_mut(value, &here)? = candidate.clone();
                let next = try_value::<T>(value);
                if within(&next, &here) {
                    continue;
                }
                // An internally tagged enum: what its object lacks depends on
                // the variant put in, so it says nothing about the request.
                if let (Some(n), [_, second, ..]) = (&next, names.as_slice()) {
                    if n.path == parent {
                        *at_mut(value, &here)? = Value::String(second.clone());
                        let other = try_value::<T>(value);
                        *at_mut(value, &here)? = candidate;
                        if other.as_ref().map(|o| (o.location(), &o.kind))
                            != Some((n.location(), &n.kind))
                        {
                            return None;
                        }
                    }
                }
                return Some(next);
            }
            None
        }
        Kind::Invalid { expected, .. } => {
            if issue.path.is_empty() {
                return None;
            }
            let here = issue.location();
            for candidate in candidates(Some(expected)) {
                *at_mut(value, &here)? = candidate;
                let next = try_value::<T>(value);
                if !within(&next, &here) {
                    return Some(next);
                }
            }
            None
        }
        Kind::Other { .. } => {
            if issue.path.is_empty() {
                return None;
            }
            let here = issue.location();
            for candidate in candidates(None) {
                *at_mut(value, &here)? = candidate;
                let next = try_value::<T>(value);
                if !within(&next, &here) {
                    return Some(next);
                }
            }
            None
        }
    }
}

/// Whether `issue` is at `location` or inside it (so caused by what was put there).
fn within(issue: &Option<Issue>, location: &[Seg]) -> bool {
    issue
        .as_ref()
        .is_some_and(|i| i.location().starts_with(location))
}

/// Values to try in place of a bad one: the first allowed name, then one of
/// each JSON kind.
fn candidates(expected: Option<&Expected>) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(Expected::Names(names)) = expected {
        out.extend(names.iter().take(1).map(|n| Value::String(n.clone())));
    }
    out.extend([
        Value::String(String::new()),
        Value::from(0),
        Value::Bool(false),
        Value::Array(Vec::new()),
        Value::Object(Default::default()),
        Value::String("00000000-0000-0000-0000-000000000000".into()),
        Value::String("1970-01-01T00:00:00Z".into()),
        Value::Null,
    ]);
    out
}

fn at_mut<'a>(mut value: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    for seg in path {
        value = match seg {
            Seg::Key(k) => value.get_mut(k.as_str())?,
            Seg::Index(i) => value.get_mut(*i)?,
            Seg::Unknown => return None,
        };
    }
    Some(value)
}

/// One step of the path to a field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
    Unknown,
}

/// What expected value a message names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Allowed names (enum variants, fields).
    Names(Vec<String>),
    /// A phrase for people: "a string", "an array".
    Phrase(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    UnknownField {
        name: String,
    },
    MissingField {
        name: String,
    },
    DuplicateField {
        name: String,
    },
    UnknownVariant {
        expected: Expected,
    },
    Invalid {
        expected: Expected,
        /// What was there instead, for people ("a number").
        got: Option<&'static str>,
    },
    Other {
        message: String,
    },
}

/// One bad field found while reading a JSON body or a query string.
#[derive(Debug, Clone)]
struct Issue {
    path: Vec<Seg>,
    /// For an unknown variant found inside an object (an internally tagged
    /// enum): the key of the tag that named it.
    tag: Option<String>,
    /// The value that was not allowed, for an unknown variant.
    got_variant: Option<String>,
    kind: Kind,
}

impl Issue {
    fn from_error(e: &serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = e
            .path()
            .iter()
            .map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
                serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Seg::Key(variant.clone()),
                serde_path_to_error::Segment::Unknown => Seg::Unknown,
            })
            .collect();
        let message = e.inner().to_string();
        let mut issue = Issue::parse(strip_position(&message));
        issue.path = path;
        issue.normalise();
        issue
    }

    /// The path of a field-naming issue is the object's: serde names the
    /// field in the message, and sometimes in the path too.
    fn normalise(&mut self) {
        if let Kind::UnknownField { name }
        | Kind::MissingField { name }
        | Kind::DuplicateField { name } = &self.kind
        {
            if self.path.last() == Some(&Seg::Key(name.clone())) {
                self.path.pop();
            }
        }
    }

    /// From a path written `a.b[0].c` and a serde message.
    fn new(path: &str, message: &str) -> Self {
        let mut issue = Issue::parse(strip_position(message));
        issue.path = parse_path(path);
        issue.normalise();
        issue
    }

    fn parse(message: &str) -> Self {
        let names = backticked(message);
        let kind = if let Some(rest) = message.strip_prefix("unknown field ") {
            Kind::UnknownField {
                name: first_backticked(rest).unwrap_or_default(),
            }
        } else if let Some(rest) = message.strip_prefix("missing field ") {
            Kind::MissingField {
                name: first_backticked(rest).unwrap_or_default(),
            }
        } else if let Some(rest) = message.strip_prefix("duplicate field ") {
            Kind::DuplicateField {
                name: first_backticked(rest).unwrap_or_default(),
            }
        } else if message.starts_with("unknown variant ") {
            Kind::UnknownVariant {
                expected: Expected::Names(names.iter().skip(1).cloned().collect()),
            }
        } else if let Some(rest) = message
            .strip_prefix("invalid type: ")
            .or_else(|| message.strip_prefix("invalid value: "))
            .or_else(|| message.strip_prefix("invalid length "))
        {
            let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            Kind::Invalid {
                expected: expected_of(expected),
                got: if message.starts_with("invalid type") {
                    got_phrase(got)
                } else {
                    None
                },
            }
        } else {
            Kind::Other {
                message: other_message(message),
            }
        };
        let got_variant = match kind {
            Kind::UnknownVariant { .. } => names.first().cloned(),
            _ => None,
        };
        Issue {
            path: Vec::new(),
            tag: None,
            got_variant,
            kind,
        }
    }

    /// An unknown variant reported at an object came from one of its
    /// string fields (an internally tagged enum): name that field.
    fn refine(&mut self, value: &Value) {
        let (Kind::UnknownVariant { .. }, Some(got), None) =
            (&self.kind, &self.got_variant, &self.tag)
        else {
            return;
        };
        let Some(obj) = at_ref(value, &self.path).and_then(Value::as_object) else {
            return;
        };
        self.tag = obj
            .iter()
            .find(|(_, v)| v.as_str() == Some(got.as_str()))
            .map(|(k, _)| k.clone());
    }

    /// Where the issue is: the path, and the field it names.
    fn location(&self) -> Vec<Seg> {
        let mut path = self.path.clone();
        match &self.kind {
            Kind::UnknownField { name }
            | Kind::MissingField { name }
            | Kind::DuplicateField { name } => path.push(Seg::Key(name.clone())),
            _ => {
                if let Some(tag) = &self.tag {
                    path.push(Seg::Key(tag.clone()));
                }
            }
        }
        path
    }

    /// The issue as a field error; `root` names the whole document.
    fn field_error(&self, root: &str) -> FieldError {
        let field = display_path(&self.location(), root);
        let message = match &self.kind {
            Kind::UnknownField { .. } => "is not a known field".to_string(),
            Kind::MissingField { .. } => "is required".to_string(),
            Kind::DuplicateField { .. } => "appears more than once".to_string(),
            Kind::UnknownVariant { expected } => format!("must be {}", expected.phrase()),
            Kind::Invalid { expected, got } => match got {
                Some(got) => format!("must be {}, not {got}", expected.phrase()),
                None => format!("must be {}", expected.phrase()),
            },
            Kind::Other { message } => message.clone(),
        };
        FieldError::new(field, message)
    }
}

fn at_ref<'a>(mut value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    for seg in path {
        value = match seg {
            Seg::Key(k) => value.get(k.as_str())?,
            Seg::Index(i) => value.get(*i)?,
            Seg::Unknown => return None,
        };
    }
    Some(value)
}

/// `items[2].channel`; `root` for the whole document.
fn display_path(path: &[Seg], root: &str) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                if out.is_empty() {
                    out.push_str(root);
                }
                out.push_str(&format!("[{i}]"));
            }
            Seg::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        root.to_string()
    } else {
        out
    }
}

/// The inverse of [`display_path`] for simple paths (`a.b[0]`); `.` is the root.
fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    if path == "." || path.is_empty() {
        return out;
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key == "?" {
            out.push(Seg::Unknown);
        } else if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            match inner[..end].parse() {
                Ok(i) => out.push(Seg::Index(i)),
                Err(_) => out.push(Seg::Unknown),
            }
            rest = &inner[end + 1..];
        }
    }
    out
}

/// Splits `path: message` as serde_path_to_error writes it (no path for
/// the root).
fn split_path(text: &str) -> (&str, &str) {
    const ROOT_MESSAGES: [&str; 7] = [
        "unknown field",
        "missing field",
        "duplicate field",
        "unknown variant",
        "invalid type",
        "invalid value",
        "invalid length",
    ];
    if ROOT_MESSAGES.iter().any(|m| text.starts_with(m)) {
        return (".", text);
    }
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => (path, message),
        _ => (".", text),
    }
}

/// Drops serde_json's ` at line 1 column 47`.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => &message[..i],
        _ => message,
    }
}

fn backticked(message: &str) -> Vec<String> {
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn first_backticked(message: &str) -> Option<String> {
    backticked(message).into_iter().next()
}

impl Expected {
    fn phrase(&self) -> String {
        match self {
            Expected::Names(names) if names.is_empty() => "a known value".into(),
            Expected::Names(names) if names.len() == 1 => names[0].clone(),
            Expected::Names(names) if names.len() == 2 => format!("{} or {}", names[0], names[1]),
            Expected::Names(names) => format!("one of {}", names.join(", ")),
            Expected::Phrase(p) => p.clone(),
        }
    }
}

/// Serde's "expected ..." in words for people, without Rust type names.
fn expected_of(expected: &str) -> Expected {
    let e = expected.trim();
    if e.contains('`') {
        return Expected::Names(backticked(e));
    }
    let phrase = match e {
        "a string" | "a borrowed string" | "string" | "a string or bytes" => "a string",
        "a boolean" | "bool" => "true or false",
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" | "a tuple" | "an array" => "an array",
        "a map" | "an object" => "an object",
        "unit" | "null" => "null",
        "a character" | "char" => "a single character",
        "" => "a valid value",
        _ if e.starts_with("struct ") || e.starts_with("a struct") => "an object",
        _ if e.starts_with("tuple") || e.starts_with("a tuple") || e.starts_with("an array") => {
            "an array"
        }
        _ if e.contains("enum ") => "one of the allowed values",
        _ if e.contains("::") || e.contains('<') => "a valid value",
        _ if e.starts_with("a ") || e.starts_with("an ") => e,
        _ => "a valid value",
    };
    Expected::Phrase(phrase.to_string())
}

/// Serde's "invalid type: <this>" in words for people.
fn got_phrase(got: &str) -> Option<&'static str> {
    let got = got.trim();
    if got.starts_with("integer") || got.starts_with("floating point") {
        Some("a number")
    } else if got.starts_with("string") {
        Some("a string")
    } else if got.starts_with("boolean") {
        Some("true or false")
    } else if got == "null" || got == "unit value" {
        Some("null")
    } else if got == "map" {
        Some("an object")
    } else if got == "sequence" {
        Some("an array")
    } else {
        None
    }
}

/// Messages of other parsers (UUIDs, times, the project's own types).
fn other_message(message: &str) -> String {
    const TIME: [&str; 7] = [
        "input contains invalid characters",
        "premature end of input",
        "input is out of range",
        "trailing input",
        "input is not enough for unique date and time",
        "no possible date and time matching input",
        "bad or unsupported format string",
    ];
    if message.starts_with("UUID parsing failed") || message.starts_with("invalid UUID") {
        "must be a UUID".into()
    } else if TIME.contains(&message) {
        "must be an RFC 3339 time".into()
    } else if message == "invalid digit found in string"
        || message == "cannot parse integer from empty string"
    {
        "must be a whole number".into()
    } else if message == "number too large to fit in target type" {
        "is too large".into()
    } else if message == "provided string was not `true` or `false`" {
        "must be true or false".into()
    } else {
        message.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Role {
        Admin,
        Agent,
        Service,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct NewUser {
        email: String,
        role: Role,
        age: Option<u32>,
        tags: Vec<String>,
        address: Option<Address>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Address {
        city: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "channel", rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Item {
        Sms { body: String },
        Call { duration_s: u32 },
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Batch {
        items: Vec<Item>,
    }

    fn errors<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> Vec<(String, String)> {
        match parse_json::<T>(body.as_bytes()) {
            Err(ApiError::Validation(errors)) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, m)| (f.to_string(), m.to_string()))
            .collect()
    }

    #[test]
    fn every_bad_field_is_listed_in_words_for_people() {
        assert_eq!(
            errors::<NewUser>(
                r#"{"email": 5, "role": "boss", "age": -1, "tags": "x", "address": {"town": "SG"}}"#
            ),
            pairs(&[
                ("email", "must be a string, not a number"),
                ("role", "must be one of admin, agent, service"),
                ("age", "must be a whole number from 0 to 4294967295"),
                ("tags", "must be an array, not a string"),
                ("address.town", "is not a known field"),
                ("address.city", "is required"),
            ])
        );
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        assert_eq!(
            errors::<NewUser>(r#"{"role": "agent", "extra": true}"#),
            pairs(&[
                ("extra", "is not a known field"),
                ("email", "is required"),
                ("tags", "is required"),
            ])
        );
    }

    #[test]
    fn an_unknown_tag_names_the_tag_field_and_ends_the_list() {
        assert_eq!(
            errors::<Batch>(
                r#"{"items": [{"channel": "sms", "body": "hi"}, {"channel": "fax"}, {"channel": "call", "duration_s": "long"}]}"#
            ),
            // What else an item with an unknown tag lacks depends on the tag
            // it was meant to have: the list stops there.
            pairs(&[("items[1].channel", "must be sms or call")])
        );
        assert_eq!(
            errors::<Batch>(r#"{"items": [{"channel": "call", "duration_s": "long"}]}"#),
            pairs(&[(
                "items[0]",
                "must be a whole number from 0 to 4294967295, not a string"
            )])
        );
    }

    #[test]
    fn no_position_and_no_rust_names_leak() {
        for body in [
            r#"{"email": "a", "role": "boss", "tags": []}"#,
            r#"{"email": "a", "role": "agent", "tags": [], "address": 7}"#,
        ] {
            for (field, message) in errors::<NewUser>(body) {
                assert!(!message.contains("line"), "{field}: {message}");
                assert!(!message.contains("struct"), "{field}: {message}");
                assert!(!message.contains("Address"), "{field}: {message}");
            }
        }
        assert_eq!(
            errors::<NewUser>(r#""text""#),
            pairs(&[("body", "must be an object, not a string")])
        );
    }

    #[test]
    fn syntax_errors_are_malformed_json_and_a_good_body_parses() {
        // Also when the fields read so far are wrong already.
        for body in [&br#"{"extra": 1, "#[..], br#"{"email": "a"} []"#, b""] {
            match parse_json::<NewUser>(body) {
                Err(e) => assert_eq!(e.code(), ErrorCode::MalformedJson, "{e}"),
                Ok(v) => panic!("parsed {v:?}"),
            }
        }
        match parse_json::<NewUser>(b"{\n  \"email\": ") {
            Err(e) => assert_eq!(
                e.to_string(),
                "the body is not valid JSON: EOF while parsing a value (line 2, column 11)"
            ),
            Ok(v) => panic!("parsed {v:?}"),
        }
        match parse_json::<NewUser>(br#"{"email": "#) {
            Err(e) => assert_eq!(e.code(), ErrorCode::MalformedJson),
            Ok(v) => panic!("parsed {v:?}"),
        }
        match parse_json::<NewUser>(br#"{"email": "a", "role": "agent", "tags": []} x"#) {
            Err(e) => assert_eq!(e.code(), ErrorCode::MalformedJson),
            Ok(v) => panic!("parsed {v:?}"),
        }
        let user =
            parse_json::<NewUser>(br#"{"email": "a", "role": "agent", "tags": ["x"]}"#).unwrap();
        assert_eq!(user.tags, ["x"]);
    }

    #[test]
    fn duplicate_keys_are_reported() {
        assert_eq!(
            errors::<NewUser>(r#"{"email": "a", "email": "b", "role": "agent", "tags": []}"#),
            pairs(&[("email", "appears more than once")])
        );
    }

    #[test]
    fn query_messages_name_the_parameter() {
        let issue = Issue::new("limit", "invalid digit found in string");
        assert_eq!(
            issue.field_error("query"),
            FieldError::new("limit", "must be a whole number")
        );
        let (path, message) = split_path("missing field `number`");
        assert_eq!(
            Issue::new(path, message).field_error("query"),
            FieldError::new("number", "is required")
        );
        assert_eq!(
            parse_path("items[2].channel"),
            vec![
                Seg::Key("items".into()),
                Seg::Index(2),
                Seg::Key("channel".into())
            ]
        );
    }

    #[test]
    fn json_content_types() {
        let ok = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            json_content_type(&h)
        };
        assert!(ok("application/json"));
        assert!(ok("application/json; charset=utf-8"));
        assert!(ok("Application/JSON"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/json"));
        assert!(!ok("text/plain"));
        assert!(!json_content_type(&HeaderMap::new()));
    }
}
