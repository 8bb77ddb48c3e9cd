//! Timestamps: RFC 3339 UTC with exactly six fractional digits.
//!
//! A fixed width means the text sorts in time order, so the MongoDB adapter can
//! store and range-query it as a string and the embedded adapter can use it in keys.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// A point in time, UTC, truncated to microseconds.
pub type Timestamp = DateTime<Utc>;

/// Now, truncated to microseconds so that it survives a round trip through text.
pub fn now() -> Timestamp {
    Utc::now().trunc_subsecs(6)
}

/// Formats a timestamp in the fixed-width form used everywhere.
pub fn format(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses RFC 3339 (any offset) into UTC, truncated to microseconds.
pub fn parse(raw: &str) -> Result<Timestamp, chrono::ParseError> {
    Ok(DateTime::parse_from_rfc3339(raw)?
        .with_timezone(&Utc)
        .trunc_subsecs(6))
}

/// `#[serde(with = "crate::time::rfc3339")]`
pub mod rfc3339 {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let raw = String::deserialize(d)?;
        super::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::time::rfc3339_option")]`
pub mod rfc3339_option {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(raw) => super::parse(&raw)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_text_sorts_in_time_order() {
        let a = parse("2026-01-02T03:04:05Z").unwrap();
        let b = parse("2026-01-02T03:04:05.5+00:00").unwrap();
        assert_eq!(format(&a), "2026-01-02T03:04:05.000000Z");
        assert_eq!(format(&b), "2026-01-02T03:04:05.500000Z");
        assert!(format(&a) < format(&b));
    }

    #[test]
    fn offsets_become_utc() {
        let t = parse("2026-01-02T11:00:00+08:00").unwrap();
        assert_eq!(format(&t), "2026-01-02T03:00:00.000000Z");
    }
}
