//! Cursor pagination: `?limit=&cursor=` → `{items, next_cursor}`. A cursor is
//! opaque to clients: base64url of the position after which the next page starts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// A page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Checks `limit` (1 to 500, default 50).
pub fn limit(raw: Option<usize>) -> Result<usize, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

pub fn encode(parts: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

/// Decodes a cursor into exactly `n` parts.
pub fn decode(cursor: &str, n: usize) -> Result<Vec<String>, ApiError> {
    let invalid = || ApiError::field("cursor", "not a cursor this API issued");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts: Vec<String> = text.split('\n').map(str::to_string).collect();
    if parts.len() != n {
        return Err(invalid());
    }
    Ok(parts)
}

/// A position `(time, id)` as a cursor.
pub fn encode_position(at: &crm_models::time::Timestamp, id: &impl std::fmt::Display) -> String {
    encode(&[&crm_models::time::format(at), &id.to_string()])
}

/// Reads a cursor made by [`encode_position`].
pub fn decode_position<I: std::str::FromStr>(
    cursor: &str,
) -> Result<(crm_models::time::Timestamp, I), ApiError> {
    let parts = decode(cursor, 2)?;
    let bad = || ApiError::field("cursor", "not a cursor this API issued");
    let at = crm_models::time::parse(&parts[0]).map_err(|_| bad())?;
    let id = parts[1].parse().map_err(|_| bad())?;
    Ok((at, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = encode(&["2026-01-01T00:00:00.000000Z", "abc"]);
        assert_eq!(
            decode(&c, 2).unwrap(),
            vec!["2026-01-01T00:00:00.000000Z", "abc"]
        );
        assert!(decode(&c, 3).is_err());
        assert!(decode("%%%", 2).is_err());
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(501)).is_err());
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
    }
}
