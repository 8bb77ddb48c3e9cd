//! Email addresses, parsed once at the edge and carried normalised.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an email address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is too long")]
    TooLong,
    #[error("email must contain exactly one @")]
    MissingAt,
    #[error("email has an empty or invalid part before the @")]
    InvalidLocalPart,
    #[error("email has an invalid domain")]
    InvalidDomain,
}

/// A trimmed, lowercased email address (`ann@example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

/// Longest input, in characters, display name and URI scheme included.
pub const MAX_INPUT_CHARS: usize = 512;
/// Longest address (RFC 5321).
const MAX_ADDRESS_BYTES: usize = 254;

impl Email {
    /// Parses an address written any way a person would read as that
    /// address: `Ann.Tan@Example.com`, `Ann Tan <ann.tan@example.com>`,
    /// `"Tan, Ann" <ann.tan@example.com>`, `<ann.tan@example.com>`,
    /// `mailto:ann.tan@example.com?subject=Hi`, `ann.tan@example.com (Ann)`,
    /// trailing dots and spaces, full-width characters (`ann.tan＠example.com`).
    /// What is kept is the address, lowercased.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.chars().count() > MAX_INPUT_CHARS {
            return Err(EmailError::TooLong);
        }
        let folded = crate::ingest::fold_written(raw);
        let address = address_of(folded.trim());
        if address.is_empty() {
            return Err(EmailError::Empty);
        }
        if address.len() > MAX_ADDRESS_BYTES {
            return Err(EmailError::TooLong);
        }
        let lower = address.to_lowercase();
        let mut parts = lower.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EmailError::MissingAt);
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        if !local_ok {
            return Err(EmailError::InvalidLocalPart);
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !domain_ok {
            return Err(EmailError::InvalidDomain);
        }
        Ok(Email(lower))
    }

    /// Trusts a value that was normalised before (read back from the store).
    pub fn from_normalised_unchecked(s: String) -> Self {
        Email(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit('@').next().unwrap_or_default()
    }
}

/// The address in what was written: the part in angle brackets of a
/// display-name form, a `mailto:` URI's address (its query dropped,
/// percent-escapes decoded), without a trailing `(comment)`, surrounding
/// quotes, or trailing dots, commas and semicolons.
fn address_of(text: &str) -> String {
    let mut s = text;
    if let Some(inner) = s
        .strip_suffix('>')
        .and_then(|head| head.rfind('<').map(|i| &head[i + 1..]))
    {
        s = inner.trim();
    }
    let mut owned;
    if let Some(uri) = s
        .get(..7)
        .filter(|h| h.eq_ignore_ascii_case("mailto:"))
        .map(|_| &s[7..])
    {
        let uri = uri.split('?').next().unwrap_or_default();
        // Several recipients: only one address is an identifier.
        owned = percent_decode(uri.split(',').next().unwrap_or_default());
    } else {
        owned = s.to_string();
    }
    // `ann@example.com (Ann Tan)`: an RFC 5322 comment after the address.
    if owned.ends_with(')') {
        if let Some(i) = owned.rfind('(') {
            if owned[..i].contains('@') {
                owned.truncate(i);
            }
        }
    }
    let trimmed = owned
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .trim_end_matches(['.', ',', ';', ' '])
        .trim();
    trimmed.to_string()
}

/// `%40` and the like in a URI; malformed escapes are kept as written.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Email {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Email::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Email {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Email,
            )))
            .into()
    }
}
impl utoipa::ToSchema for Email {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trims_and_lowercases() {
        assert_eq!(
            Email::parse("  Ann.Tan@Example.COM ").unwrap().as_str(),
            "ann.tan@example.com"
        );
        assert_eq!(Email::parse("a+b@x.io").unwrap().domain(), "x.io");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Email::parse(""), Err(EmailError::Empty));
        assert_eq!(Email::parse("ann"), Err(EmailError::MissingAt));
        assert_eq!(Email::parse("a@b@c.com"), Err(EmailError::MissingAt));
        assert_eq!(
            Email::parse("@example.com"),
            Err(EmailError::InvalidLocalPart)
        );
        assert_eq!(
            Email::parse("a b@example.com"),
            Err(EmailError::InvalidLocalPart)
        );
        assert_eq!(
            Email::parse("ann@localhost"),
            Err(EmailError::InvalidDomain)
        );
        assert_eq!(Email::parse("ann@-x.com"), Err(EmailError::InvalidDomain));
        assert_eq!(Email::parse("ann@x..com"), Err(EmailError::InvalidDomain));
    }

    #[test]
    fn accepts_the_ways_addresses_arrive_from_mail_headers_and_exports() {
        for raw in [
            "ann.tan@example.com",
            "Ann.Tan@Example.com",
            "mailto:ann.tan@example.com",
            "MAILTO:Ann.Tan@Example.com?subject=Flat%20viewing",
            "mailto:ann.tan%40example.com",
            "Ann Tan <Ann.Tan@Example.com>",
            "\"Tan, Ann\" <ann.tan@example.com>",
            "<ann.tan@example.com>",
            " <ann.tan@example.com> ",
            "ann.tan@example.com.",
            "ann.tan@example.com. ",
            "ann.tan@example.com,",
            "ann.tan＠example.com",
            "ａｎｎ.ｔａｎ＠ｅｘａｍｐｌｅ.ｃｏｍ",
            "\u{a0}ann.tan@example.com\u{3000}",
            "ann.tan@example.com (Ann Tan)",
            "'ann.tan@example.com'",
            "\u{200e}ann.tan@example.com",
        ] {
            assert_eq!(
                Email::parse(raw).map(|e| e.to_string()),
                Ok("ann.tan@example.com".to_string()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for raw in [
            "Ann Tan",
            "Ann Tan <>",
            "mailto:",
            "<ann.tan>",
            "ann tan@example.com",
            "ann@example",
            "ann@@example.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?}");
        }
        assert_eq!(
            Email::parse(&format!("{}@example.com", "a".repeat(600))),
            Err(EmailError::TooLong)
        );
        assert_eq!(
            Email::parse(&format!("x@{}.com", "a".repeat(260))),
            Err(EmailError::TooLong)
        );
    }

    /// Ways a plain address is written.
    fn decorate(style: usize, local: &str, domain: &str) -> String {
        let wide = |s: &str| -> String {
            s.chars()
                .map(|c| char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c))
                .collect()
        };
        let upper = format!("{}@{}", local.to_uppercase(), domain.to_uppercase());
        match style {
            0 => format!("{local}@{domain}"),
            1 => format!("mailto:{local}@{domain}"),
            2 => format!("mailto:{local}@{domain}?subject=Hello"),
            3 => format!("Ann Tan <{upper}>"),
            4 => format!("\"Tan, Ann\" <{local}@{domain}>"),
            5 => format!("<{local}@{domain}>"),
            6 => format!("{local}@{domain}. "),
            7 => format!("  {upper}  "),
            8 => format!("{local}＠{domain}"),
            9 => format!("{}＠{}", wide(local), wide(domain)),
            10 => format!("{local}@{domain} (Ann)"),
            _ => format!("\u{a0}{local}@{domain}\u{2009}"),
        }
    }

    proptest! {
        #[test]
        fn every_accepted_spelling_has_the_key_of_the_plain_address(
            local in "[a-z0-9]{1,10}([._+-][a-z0-9]{1,8}){0,2}",
            domain in "[a-z0-9]{1,10}(-[a-z0-9]{1,5})?\\.[a-z]{2,6}",
            style in 0usize..12,
        ) {
            let plain = Email::parse(&format!("{local}@{domain}"));
            prop_assert!(plain.is_ok());
            let written = decorate(style, &local, &domain);
            prop_assert_eq!(Email::parse(&written), plain, "{}", written);
        }
    }

    proptest! {
        #[test]
        fn any_printable_input_is_parsed_or_refused(raw in "\\PC{0,80}") {
            let _ = Email::parse(&raw);
        }

        #[test]
        fn normalising_twice_is_the_same_as_once(raw in "[ A-Za-z0-9._+-]{1,20}@[A-Za-z0-9-]{1,10}\\.[A-Za-z]{2,6} ?") {
            if let Ok(e) = Email::parse(&raw) {
                prop_assert_eq!(Email::parse(e.as_str()), Ok(e.clone()));
                prop_assert_eq!(e.as_str(), e.as_str().to_lowercase());
            }
        }
    }
}
