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

/// A number as it was written: the number, and the extension written after
/// it (`ext. 12`), which is not part of the number's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPhone {
    pub number: PhoneNumber,
    pub extension: Option<String>,
}

/// Longest input, in characters, notes and extension included.
pub const MAX_INPUT_CHARS: usize = 64;
/// Longest extension, in digits.
const MAX_EXTENSION_DIGITS: usize = 10;

impl PhoneNumber {
    /// Parses a number written any way a person would read as that number:
    /// `+65 8122 6418`, `(065) 8122-6418`, `00 65 8122 6418`, `81226418`
    /// with region SG, full-width digits (`８１２２ ６４１８`), non-breaking or
    /// thin spaces, a `tel:` URI (`tel:81226418;phone-context=+65`), an
    /// extension (`ext. 12`, `x12`, `;ext=12`) or a note after it
    /// (`(mobile)`, `/ Ann`). The extension and the note are dropped: see
    /// [`PhoneNumber::parse_written`] for the extension.
    pub fn parse(raw: &str, default_region: Option<Region>) -> Result<Self, PhoneError> {
        Self::parse_written(raw, default_region).map(|w| w.number)
    }

    /// [`PhoneNumber::parse`], keeping the extension.
    pub fn parse_written(
        raw: &str,
        default_region: Option<Region>,
    ) -> Result<WrittenPhone, PhoneError> {
        if raw.chars().count() > MAX_INPUT_CHARS {
            return Err(PhoneError::TooLong);
        }
        let text = crate::ingest::fold_written(raw);
        let text = text.trim();
        if text.is_empty() {
            return Err(PhoneError::Empty);
        }
        let written = match strip_prefix_ignore_case(text, "tel:") {
            Some(uri) => tel_uri(uri)?,
            None => decorated(text)?,
        };
        let number =
            Self::parse_plain(&written.number, written.context.as_deref(), default_region)?;
        Ok(WrittenPhone {
            number,
            extension: written.extension,
        })
    }

    /// The number itself: digits and separators, `+` first or not at all.
    /// `context` is a `tel:` URI's global `phone-context` (`+65`): the
    /// number is local to it.
    fn parse_plain(
        raw: &str,
        context: Option<&str>,
        default_region: Option<Region>,
    ) -> Result<Self, PhoneError> {
        let raw = raw.trim();
        // `+44 (0)20 7946 0018`: the trunk prefix in brackets is not dialled
        // from abroad.
        let without_trunk;
        let raw = if raw.starts_with('+') && raw.contains("(0)") {
            without_trunk = raw.replacen("(0)", "", 1);
            without_trunk.as_str()
        } else {
            raw
        };
        let mut digits = String::with_capacity(raw.len());
        for (i, c) in raw.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => {}
                c if is_separator(c) => {}
                _ => return Err(PhoneError::InvalidCharacters),
            }
        }
        if let Some(context) = context {
            // The local number under a global context: the context's digits
            // (country code and any prefix) come first.
            let mut full: String = context.chars().filter(char::is_ascii_digit).collect();
            full.push_str(digits.trim_start_matches('0'));
            if full.len() < 4 || digits.len() < 4 {
                return Err(PhoneError::TooShort);
            }
            return Self::international(&full).ok_or(PhoneError::Invalid);
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

/// Characters people put between the digits of a number (after
/// [`crate::ingest::fold_written`], which turns other spaces and dashes into
/// these).
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '(' | ')' | '.' | '/')
}

/// A number split from what was written around it.
struct Written {
    number: String,
    /// A `tel:` URI's global `phone-context` (`+65`).
    context: Option<String>,
    extension: Option<String>,
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// RFC 3966: `tel:+65-8122-6418`, `tel:81226418;phone-context=+65`,
/// `tel:+6581226418;ext=12`. Other parameters are ignored.
fn tel_uri(uri: &str) -> Result<Written, PhoneError> {
    let uri = uri.trim_start_matches('/');
    let mut parts = uri.split(';');
    let number = parts.next().unwrap_or_default().trim();
    let mut context = None;
    let mut extension = None;
    for param in parts {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = key.trim();
        if key.eq_ignore_ascii_case("ext") {
            extension = Some(extension_digits(value.trim())?);
        } else if key.eq_ignore_ascii_case("phone-context") && value.trim().starts_with('+') {
            // A domain name as context says nothing about the country.
            context = Some(value.trim().to_string());
        }
    }
    if number.starts_with('+') {
        context = None;
    }
    Ok(Written {
        number: number.to_string(),
        context,
        extension,
    })
}

/// A number followed by an extension or a note: `+65 8122 6418 ext. 12`,
/// `+65 8122 6418 x12`, `+65 8122 6418;ext=12`, `+65 8122 6418 (mobile)`,
/// `+65-8122-6418 / Ann`. A note needs a letter and a space or bracket
/// between it and the number (`81226418abc` is refused); digits after the
/// number that are not an extension are not a note (`8122 6418 / 9123 4567`
/// is two numbers, refused).
fn decorated(text: &str) -> Result<Written, PhoneError> {
    let run_end = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || is_separator(c) || (c == '+' && i == 0)))
        .map_or(text.len(), |(i, _)| i);
    let number_end = text[..run_end]
        .rfind(|c: char| c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    if number_end == 0 {
        return Err(PhoneError::InvalidCharacters);
    }
    let number = text[..number_end].to_string();
    let mut rest = &text[number_end..];
    let mut extension = None;
    if let Some((digits, after)) = extension_of(rest.trim_start()) {
        extension = Some(digits);
        rest = after;
    }
    if !rest.trim().is_empty() {
        let separated = rest.starts_with(|c: char| c.is_whitespace() || "([{/,;-".contains(c));
        let has_letter = rest.chars().any(char::is_alphabetic);
        if !separated || !has_letter {
            return Err(PhoneError::InvalidCharacters);
        }
    }
    Ok(Written {
        number,
        context: None,
        extension,
    })
}

/// `ext. 12`, `ext 12`, `extension 12`, `x12`, `#12`, `;ext=12` at the start
/// of `text`: the digits and what follows them.
fn extension_of(text: &str) -> Option<(String, &str)> {
    const MARKERS: [&str; 8] = [";ext=", "extension", "ext.", "ext:", "ext", "x.", "x", "#"];
    let after = MARKERS
        .iter()
        .find_map(|m| strip_prefix_ignore_case(text, m))?;
    let after = after.trim_start_matches([' ', ':', '.', '=']);
    let end = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    let digits = extension_digits(&after[..end]).ok()?;
    Some((digits, &after[end..]))
}

fn extension_digits(raw: &str) -> Result<String, PhoneError> {
    let digits: String = raw.chars().filter(|c| *c != '-' && *c != '.').collect();
    if digits.is_empty()
        || digits.len() > MAX_EXTENSION_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(PhoneError::InvalidCharacters);
    }
    Ok(digits)
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

    #[test]
    fn accepts_the_ways_numbers_arrive_from_phones_mail_and_exports() {
        for raw in [
            "tel:+65-8122-6418",
            "TEL:+6581226418",
            "tel:81226418;phone-context=+65",
            "tel:8122-6418;phone-context=example.com",
            "+65 8122 6418 ext. 12",
            "+65 8122 6418 x12",
            "+65 8122 6418;ext=12",
            "tel:+65-8122-6418;ext=12",
            "８１２２ ６４１８",
            "＋６５ ８１２２ ６４１８",
            "+65 8122 6418 (mobile)",
            "+65-8122-6418 / Ann",
            "00 65 8122 6418",
            "(065) 8122-6418",
            "+65\u{a0}8122\u{a0}6418",
            "+65\u{2009}8122\u{2009}6418",
            "+65\u{202f}8122\u{202f}6418",
            "+65.8122.6418",
            "+65\u{2013}8122\u{2013}6418",
            "\u{202a}+65 8122 6418\u{202c}",
            "\u{200e}+65 8122 6418",
            " +65 8122 6418 ",
            "+65 (0) 8122 6418",
            "81226418 mobile",
        ] {
            assert_eq!(
                PhoneNumber::parse(raw, sg()).map(|p| p.to_string()),
                Ok("+6581226418".to_string()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn an_extension_stays_out_of_the_key() {
        for raw in [
            "+65 8122 6418 ext. 12",
            "+65 8122 6418 Ext 12",
            "+65 8122 6418 extension 12",
            "+65 8122 6418 x12",
            "+65 8122 6418 X 12",
            "+65 8122 6418 #12",
            "+65 8122 6418;ext=12",
            "tel:+6581226418;ext=12",
            "+65 8122 6418 ext. 12 (office)",
        ] {
            let w = PhoneNumber::parse_written(raw, None).unwrap();
            assert_eq!(w.number.as_str(), "+6581226418", "{raw}");
            assert_eq!(w.extension.as_deref(), Some("12"), "{raw}");
        }
        let plain = PhoneNumber::parse_written("+65 8122 6418 (mobile)", None).unwrap();
        assert_eq!(plain.extension, None);
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        for raw in [
            "call me",
            "81226418abc",
            "+65 8122 6418 / 9123 4567",
            "mobile",
            "tel:",
            "tel:+65-abc",
        ] {
            assert!(PhoneNumber::parse(raw, sg()).is_err(), "{raw:?}");
        }
        assert_eq!(
            PhoneNumber::parse(&"8".repeat(65), sg()),
            Err(PhoneError::TooLong)
        );
        assert_eq!(PhoneNumber::parse("\u{a0} ", sg()), Err(PhoneError::Empty));
        assert_eq!(
            PhoneNumber::parse("tel:81226418", None),
            Err(PhoneError::NoRegion)
        );
    }

    /// Ways a plain national number (8 digits) is written, each a function
    /// of the number's two halves and the country code.
    fn decorate(style: usize, cc: &str, a: &str, b: &str) -> String {
        let wide = |s: &str| -> String {
            s.chars()
                .map(|c| char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c))
                .collect()
        };
        match style {
            0 => format!("+{cc} {a} {b}"),
            1 => format!("tel:+{cc}-{a}-{b}"),
            2 => format!("tel:{a}{b};phone-context=+{cc}"),
            3 => format!("+{cc} {a} {b} ext. 12"),
            4 => format!("+{cc} {a} {b} x12"),
            5 => format!("+{cc} {a} {b};ext=12"),
            6 => format!("{} {}", wide(a), wide(b)),
            7 => format!("+{cc} {a} {b} (mobile)"),
            8 => format!("+{cc}-{a}-{b} / Ann"),
            9 => format!("00 {cc} {a} {b}"),
            10 => format!("(0{cc}) {a}-{b}"),
            11 => format!("+{cc}\u{a0}{a}\u{a0}{b}"),
            12 => format!("+{cc}\u{2009}{a}\u{2009}{b}"),
            13 => format!("+{cc}.{a}.{b}"),
            14 => format!("{a}{b}"),
            15 => format!("\u{202a}+{cc} {a} {b}\u{202c}"),
            16 => format!("＋{} {} {}", wide(cc), wide(a), wide(b)),
            _ => format!("{a} {b} (home)"),
        }
    }

    proptest! {
        #[test]
        fn every_accepted_spelling_has_the_key_of_the_plain_number(
            first in 8u32..=9,
            rest in 0u32..10_000_000,
            style in 0usize..18,
        ) {
            let national = format!("{first}{rest:07}");
            let (a, b) = national.split_at(4);
            let plain = PhoneNumber::parse(&format!("+65{national}"), None);
            prop_assume!(plain.is_ok());
            let written = decorate(style, "65", a, b);
            prop_assert_eq!(PhoneNumber::parse(&written, sg()), plain, "{}", written);
        }

        #[test]
        fn a_decorated_foreign_number_keeps_its_own_country(
            rest in 0u32..1_000_000_000,
            style in 0usize..14,
        ) {
            // UK mobiles: 7xxx xxxxxx, read from Singapore.
            let national = format!("7{rest:09}");
            let (a, b) = national.split_at(4);
            prop_assume!(style != 6 && style != 10 && style != 14);
            let plain = PhoneNumber::parse(&format!("+44{national}"), None);
            prop_assume!(plain.is_ok());
            let written = decorate(style, "44", a, b);
            prop_assert_eq!(PhoneNumber::parse(&written, sg()), plain, "{}", written);
        }
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
