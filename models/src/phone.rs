//! Phone numbers, parsed once at the edge and carried as E.164.
//!
//! Built on `rlibphonenumber`: `models/benches/phone_parse.rs` measured it at
//! about nine times the parses per CPU-second of `phonenumber` 0.3 (whose
//! regex cache also serialises threads), with the same E.164 result on every
//! one of 100,000 mixed inputs.

use std::fmt;

use rlibphonenumber::{PhoneNumberFormat, PHONE_NUMBER_UTIL};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 3166-1 alpha-2 region (`SG`, `GB`, `US`) used for numbers typed without `+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(rlibphonenumber::Region);

impl Region {
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let code = raw.trim().to_ascii_uppercase();
        rlibphonenumber::Region::from_code(&code)
            .ok()
            .filter(|r| PHONE_NUMBER_UTIL.get_country_code_for_region(*r).is_some())
            .map(Region)
            .ok_or_else(|| PhoneError::UnknownRegion(raw.trim().chars().take(8).collect()))
    }

    /// The country calling code, e.g. 65 for SG.
    pub fn calling_code(self) -> Option<u16> {
        PHONE_NUMBER_UTIL
            .get_country_code_for_region(self.0)
            .and_then(|c| u16::try_from(c).ok())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number is too long")]
    TooLong,
    #[error("phone number contains characters that are not digits or separators")]
    InvalidCharacters,
    #[error("phone number has too few digits")]
    TooShort,
    #[error("phone number has no country code and no default region was given")]
    NoRegion,
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("not a valid phone number")]
    Invalid,
}

/// A phone number in E.164 form (`+6581226418`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

const MAX_INPUT_CHARS: usize = 40;

impl PhoneNumber {
    /// Parses a number typed any way: `+65 8122 6418`, `(065) 8122-6418`,
    /// `0065 81226418`, or `81226418` with region SG.
    pub fn parse(raw: &str, default_region: Option<Region>) -> Result<Self, PhoneError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PhoneError::Empty);
        }
        if raw.chars().count() > MAX_INPUT_CHARS {
            return Err(PhoneError::TooLong);
        }
        let mut digits = String::with_capacity(raw.len());
        for (i, c) in raw.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => {}
                ' ' | '-' | '(' | ')' | '.' | '/' | '\u{a0}' => {}
                _ => return Err(PhoneError::InvalidCharacters),
            }
        }
        if digits.len() < 4 {
            return Err(PhoneError::TooShort);
        }
        if raw.starts_with('+') {
            return Self::international(&digits).ok_or(PhoneError::Invalid);
        }
        if let Some(rest) = digits.strip_prefix("00") {
            if let Some(p) = Self::international(rest) {
                return Ok(p);
            }
        }
        let Some(region) = default_region else {
            return Err(PhoneError::NoRegion);
        };
        if let Some(p) = Self::national(&digits, region) {
            return Ok(p);
        }
        // `(065) 8122-6418`: the country code written with a leading zero, or
        // `6581226418`: the country code without the `+`.
        if let Some(cc) = region.calling_code().map(|c| c.to_string()) {
            let without_zero = digits.strip_prefix('0').unwrap_or(&digits);
            if without_zero.starts_with(&cc) {
                if let Some(p) = Self::international(without_zero) {
                    return Ok(p);
                }
            }
        }
        Err(PhoneError::Invalid)
    }

    /// The E.164 form `raw` has if it is written internationally (`+65 8122
    /// 6418`, `0065 81226418`), without checking it against the numbering
    /// plan: a key to look up before paying for [`PhoneNumber::parse`]. Only
    /// a key found among stored (hence parsed) numbers is known to be one.
    pub fn international_form(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let rest = raw.strip_prefix('+').or_else(|| raw.strip_prefix("00"))?;
        Self::key_with_digits(String::from("+"), rest)
    }

    /// The E.164 form `raw` has if it is a national number of `region`
    /// written without trunk prefix (`8122 6418` in SG): `+`, the region's
    /// calling code, the digits. Like [`PhoneNumber::international_form`], a
    /// key to look up before paying for [`PhoneNumber::parse`], not checked
    /// against the numbering plan. `None` for digits starting with 0 (the
    /// trunk prefix of most plans), which only parsing reads right.
    pub fn national_form(raw: &str, region: Region) -> Option<Self> {
        let cc = region.calling_code()?;
        Self::key_with_digits(format!("+{cc}"), raw.trim())
    }

    /// `head` followed by the digits of `rest` (separators skipped): `None`
    /// when `rest` holds anything else, has fewer than 4 digits or starts
    /// with 0, or the whole is longer than E.164 allows.
    fn key_with_digits(mut head: String, rest: &str) -> Option<Self> {
        let start = head.len();
        for c in rest.chars() {
            match c {
                '0'..='9' => head.push(c),
                ' ' | '-' | '(' | ')' | '.' | '/' | '\u{a0}' => {}
                _ => return None,
            }
            if head.len() > 16 {
                return None;
            }
        }
        let digits = &head[start..];
        (digits.len() >= 4 && !digits.starts_with('0')).then_some(PhoneNumber(head))
    }

    fn international(digits: &str) -> Option<Self> {
        let n = PHONE_NUMBER_UTIL.parse(format!("+{digits}"), None).ok()?;
        Self::from_valid(&n)
    }

    fn national(digits: &str, region: Region) -> Option<Self> {
        let n = PHONE_NUMBER_UTIL.parse(digits, Some(region.0)).ok()?;
        Self::from_valid(&n)
    }

    fn from_valid(n: &rlibphonenumber::PhoneNumber) -> Option<Self> {
        if !PHONE_NUMBER_UTIL.is_valid_number(n) {
            return None;
        }
        Some(PhoneNumber(
            PHONE_NUMBER_UTIL
                .format(n, PhoneNumberFormat::E164)
                .into_owned(),
        ))
    }

    /// Trusts a value that is already E.164 (read back from the store).
    pub fn from_e164_unchecked(e164: String) -> Self {
        PhoneNumber(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without the `+`.
    pub fn digits(&self) -> &str {
        self.0.trim_start_matches('+')
    }

    /// The national significant number (`81226418` for `+6581226418`,
    /// `7911123456` for `+447911123456`): what people dial at home, without
    /// country code, trunk prefix or leading zeros. `None` when the stored
    /// value is not a number the metadata knows.
    pub fn national_number(&self) -> Option<String> {
        let n = PHONE_NUMBER_UTIL.parse(&self.0, None).ok()?;
        Some(n.get_national_significant_number())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Reads what this crate wrote (the store, the index, the event stream):
/// a value already in E.164 form is taken as it is, since validating it
/// again through the number metadata costs more than the rest of decoding a
/// customer; anything else is parsed like input. Request bodies never
/// deserialize a `PhoneNumber`: the routes parse strings with a region.
impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        if looks_e164(&raw) {
            return Ok(PhoneNumber(raw));
        }
        PhoneNumber::parse(&raw, None).map_err(serde::de::Error::custom)
    }
}

/// `+`, then 4 to 15 digits, the first not zero: the shape of
/// [`PhoneNumber::as_str`].
fn looks_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (4..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
}

impl utoipa::PartialSchema for PhoneNumber {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("E.164 phone number"))
            .examples([serde_json::json!("+6581226418")])
            .into()
    }
}
impl utoipa::ToSchema for PhoneNumber {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sg() -> Option<Region> {
        Some(Region::parse("SG").unwrap())
    }

    #[test]
    fn stored_e164_is_read_as_is_and_other_text_is_parsed() {
        let read = |s: &str| serde_json::from_value::<PhoneNumber>(serde_json::json!(s));
        assert_eq!(read("+6581226418").unwrap().as_str(), "+6581226418");
        // Not in stored form: parsed (and normalised) like input.
        assert_eq!(read("+65 8122 6418").unwrap().as_str(), "+6581226418");
        assert_eq!(read("0065 81226418").unwrap().as_str(), "+6581226418");
        // Not a number at all, or one without a country: refused.
        assert!(read("+65-abc").is_err());
        assert!(read("81226418").is_err());
        assert!(read("+0123456").is_err());
        for s in [
            "+123",
            "+1234567890123456",
            "+06581226418",
            "6581226418",
            "+65 8122",
        ] {
            assert!(!looks_e164(s), "{s}");
        }
        assert!(looks_e164("+6581226418"));
    }

    #[test]
    fn accepts_the_ways_people_type_a_singapore_number() {
        for raw in [
            "+65 8122 6418",
            "(065) 8122-6418",
            "0065 81226418",
            "81226418",
            "+6581226418",
            "65 8122 6418",
        ] {
            assert_eq!(
                PhoneNumber::parse(raw, sg()).map(|p| p.to_string()),
                Ok("+6581226418".to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn international_form_is_a_key_to_try_not_a_verdict() {
        let form = |raw: &str| PhoneNumber::international_form(raw).map(|p| p.0);
        for raw in [
            "+65 8122 6418",
            "0065 81226418",
            "+65-8122-6418",
            " +6581226418 ",
        ] {
            assert_eq!(form(raw).as_deref(), Some("+6581226418"), "{raw}");
            assert_eq!(PhoneNumber::parse(raw, None).unwrap().0, "+6581226418");
        }
        // Not written internationally, or not digits: no key.
        for raw in [
            "8122 6418",
            "(065) 8122-6418",
            "+65 8122 64x8",
            "+0123456",
            "+12",
            "+1234567890123456",
        ] {
            assert_eq!(form(raw), None, "{raw}");
        }
        // A key, but not a number: only parsing says so.
        assert_eq!(form("+65 0000").as_deref(), Some("+650000"));
        assert!(PhoneNumber::parse("+65 0000", None).is_err());
    }

    #[test]
    fn national_form_prefixes_the_calling_code_and_leaves_trunk_zeros_to_parsing() {
        let sg = Region::parse("SG").unwrap();
        let gb = Region::parse("GB").unwrap();
        let form = |raw: &str, r| PhoneNumber::national_form(raw, r).map(|p| p.0);
        for (raw, region, e164) in [
            ("8122 6418", sg, "+6581226418"),
            (" 8122-6418 ", sg, "+6581226418"),
            ("7911 123456", gb, "+447911123456"),
        ] {
            assert_eq!(form(raw, region).as_deref(), Some(e164), "{raw}");
            assert_eq!(PhoneNumber::parse(raw, Some(region)).unwrap().0, e164);
        }
        for (raw, region) in [
            ("07911 123456", gb),
            ("(065) 8122-6418", sg),
            ("+65 8122 6418", sg),
            ("8122 64x8", sg),
            ("812", sg),
            ("1234567890123456", sg),
        ] {
            assert_eq!(form(raw, region), None, "{raw}");
        }
    }

    #[test]
    fn national_number_drops_country_code_and_trunk_prefix() {
        let sg = PhoneNumber::parse("+65 8122 6418", None).unwrap();
        assert_eq!(sg.national_number().as_deref(), Some("81226418"));
        let gb = PhoneNumber::parse("+44 7911 123456", None).unwrap();
        assert_eq!(gb.national_number().as_deref(), Some("7911123456"));
    }

    #[test]
    fn national_trunk_prefix_is_dropped() {
        let gb = Some(Region::parse("gb").unwrap());
        assert_eq!(
            PhoneNumber::parse("07911 123456", gb).unwrap().as_str(),
            "+447911123456"
        );
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!(PhoneNumber::parse("", sg()), Err(PhoneError::Empty));
        assert_eq!(
            PhoneNumber::parse("call me", sg()),
            Err(PhoneError::InvalidCharacters)
        );
        assert_eq!(PhoneNumber::parse("12", sg()), Err(PhoneError::TooShort));
        assert_eq!(
            PhoneNumber::parse("81226418", None),
            Err(PhoneError::NoRegion)
        );
        assert_eq!(
            PhoneNumber::parse("+999 1234 5678", sg()),
            Err(PhoneError::Invalid)
        );
        assert_eq!(
            PhoneNumber::parse("12345678", sg()),
            Err(PhoneError::Invalid)
        );
        assert!(Region::parse("XX").is_err());
    }

    proptest! {
        #[test]
        fn any_printable_input_is_parsed_or_refused(raw in "\\PC{0,50}") {
            let _ = PhoneNumber::parse(&raw, sg());
        }

        #[test]
        fn normalising_twice_is_the_same_as_once(raw in "[+(]?[0-9 ()-]{4,20}") {
            if let Ok(p) = PhoneNumber::parse(&raw, sg()) {
                prop_assert_eq!(PhoneNumber::parse(p.as_str(), None), Ok(p.clone()));
                prop_assert_eq!(PhoneNumber::parse(p.as_str(), sg()), Ok(p));
            }
        }

        #[test]
        fn formatting_does_not_change_the_number(sub in 0u32..10_000_000, sep in "[ .-]?") {
            let national = format!("8{sub:07}");
            let typed = format!("{}{}{}", &national[..4], sep, &national[4..]);
            let a = PhoneNumber::parse(&national, sg());
            let b = PhoneNumber::parse(&typed, sg());
            prop_assert_eq!(a, b);
        }
    }
}
