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

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(EmailError::Empty);
        }
        if raw.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let lower = raw.to_lowercase();
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
