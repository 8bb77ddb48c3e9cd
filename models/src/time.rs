//! Timestamps: RFC 3339 UTC with exactly six fractional digits.
//!
//! A fixed width means the text sorts in time order, so the MongoDB adapter can
//! store and range-query it as a string and the embedded adapter can use it in keys.
//!
//! Times from clients go through [`parse_input`]: strict RFC 3339, no leap
//! second, years 1970 to 9999, so that every time the API stores it can also
//! echo in a form JavaScript's `Date` and Python's `datetime` read.

use chrono::{DateTime, Datelike, SecondsFormat, SubsecRound, Timelike, Utc};

/// A point in time, UTC, truncated to microseconds.
pub type Timestamp = DateTime<Utc>;

/// Now, truncated to microseconds so that it survives a round trip through text.
pub fn now() -> Timestamp {
    Utc::now().trunc_subsecs(6)
}

/// Formats a timestamp in the fixed-width form used everywhere. A leap
/// second (which older versions stored) is written as the last microsecond
/// of the minute before, since `:60` is not read by most clients.
pub fn format(t: &Timestamp) -> String {
    without_leap_second(*t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses RFC 3339 (any offset) into UTC, truncated to microseconds: how
/// stored values are read back. Client input goes through [`parse_input`].
pub fn parse(raw: &str) -> Result<Timestamp, chrono::ParseError> {
    Ok(without_leap_second(
        DateTime::parse_from_rfc3339(raw)?
            .with_timezone(&Utc)
            .trunc_subsecs(6),
    ))
}

/// Why a client's time was refused; the messages are for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("must be an RFC 3339 time, e.g. 2026-01-31T09:30:00Z")]
    Format,
    #[error("has second 60 (a leap second), which is not accepted; write :59")]
    LeapSecond,
    #[error("must be between the years {MIN_YEAR} and {MAX_YEAR} (UTC)")]
    OutOfRange,
}

/// Earliest year a client may give.
pub const MIN_YEAR: i32 = 1970;
/// Latest year a client may give.
pub const MAX_YEAR: i32 = 9999;

/// Parses a time from a client: strictly `YYYY-MM-DDThh:mm:ss[.frac](Z|±hh:mm)`
/// (`t` and `z` in lower case too), no second 60, and in the years 1970 to
/// 9999 once in UTC. The result is UTC, truncated to microseconds.
pub fn parse_input(raw: &str) -> Result<Timestamp, TimeError> {
    let b = raw.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    let shape_ok = digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19);
    if !shape_ok {
        return Err(TimeError::Format);
    }
    let mut i = 19;
    if at(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(TimeError::Format);
        }
    }
    let zone_ok = match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3) && at(i + 3, b":") && digits(i + 4..i + 6) && i + 6 == b.len()
        }
        _ => false,
    };
    if !zone_ok {
        return Err(TimeError::Format);
    }
    if &b[17..19] == b"60" {
        return Err(TimeError::LeapSecond);
    }
    let t = DateTime::parse_from_rfc3339(raw)
        .map_err(|_| TimeError::Format)?
        .with_timezone(&Utc)
        .trunc_subsecs(6);
    if !(MIN_YEAR..=MAX_YEAR).contains(&t.year()) {
        return Err(TimeError::OutOfRange);
    }
    Ok(t)
}

/// chrono keeps a leap second as a nanosecond count past one second.
fn without_leap_second(t: Timestamp) -> Timestamp {
    if t.nanosecond() >= 1_000_000_000 {
        t.with_nanosecond(999_999_000).unwrap_or(t)
    } else {
        t
    }
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
    fn client_times_are_strict_rfc_3339() {
        let ok = |raw: &str| parse_input(raw).map(|t| format(&t));
        assert_eq!(
            ok("2026-01-31T09:30:59Z").as_deref(),
            Ok("2026-01-31T09:30:59.000000Z")
        );
        assert_eq!(
            ok("2026-01-31t17:30:00.1234567+08:00").as_deref(),
            Ok("2026-01-31T09:30:00.123456Z")
        );
        assert_eq!(
            ok("1970-01-01T00:00:00z").as_deref(),
            Ok("1970-01-01T00:00:00.000000Z")
        );
        assert_eq!(
            ok("9999-12-31T23:59:59.999999Z").as_deref(),
            Ok("9999-12-31T23:59:59.999999Z")
        );
        for raw in [
            "2026-01-31 09:30:00Z",
            "2026-01-31T09:30Z",
            "2026-01-31T09:30:00",
            "2026-01-31T09:30:00.Z",
            "2026-01-31T09:30:00+0800",
            "2026-1-31T09:30:00Z",
            "2026-02-30T09:30:00Z",
            "2026-01-31T24:00:00Z",
            "2026-01-31T09:30:00Z ",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_input(raw), Err(TimeError::Format), "{raw:?}");
        }
        assert_eq!(
            parse_input("2026-01-31T09:30:60Z"),
            Err(TimeError::LeapSecond)
        );
        assert_eq!(
            parse_input("2016-12-31T23:59:60Z"),
            Err(TimeError::LeapSecond)
        );
        for raw in [
            "0000-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "9999-12-31T23:00:00-05:00",
        ] {
            assert_eq!(parse_input(raw), Err(TimeError::OutOfRange), "{raw}");
        }
    }

    #[test]
    fn a_stored_leap_second_is_echoed_as_the_end_of_its_minute() {
        let leap = DateTime::parse_from_rfc3339("2016-12-31T23:59:60.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format(&leap), "2016-12-31T23:59:59.999999Z");
        assert_eq!(
            format(&parse("2016-12-31T23:59:60Z").unwrap()),
            "2016-12-31T23:59:59.999999Z"
        );
    }

    proptest::proptest! {
        #[test]
        fn what_is_echoed_is_read_back_strictly_as_the_same_time(
            secs in 0i64..253_402_300_799,
            micros in 0u32..1_000_000,
            offset_min in -(14 * 60)..=(14 * 60i32),
        ) {
            let t = DateTime::from_timestamp(secs, micros * 1000).unwrap();
            let offset = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let written = t.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Micros, false);
            match parse_input(&written) {
                Ok(read) => {
                    proptest::prop_assert_eq!(read, t);
                    proptest::prop_assert_eq!(parse_input(&format(&read)), Ok(t));
                    proptest::prop_assert!(format(&read).ends_with('Z'));
                }
                // Only a time written in a year outside the range is refused.
                Err(e) => {
                    proptest::prop_assert_eq!(e, TimeError::Format);
                    proptest::prop_assert!(!written.starts_with(|c: char| c.is_ascii_digit()));
                }
            }
        }
    }

    #[test]
    fn offsets_become_utc() {
        let t = parse("2026-01-02T11:00:00+08:00").unwrap();
        assert_eq!(format(&t), "2026-01-02T03:00:00.000000Z");
    }
}
