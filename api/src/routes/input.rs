//! Reading JSON objects field by field, collecting every problem with its
//! path, so that a client learns all that is wrong with a request at once.

use std::collections::BTreeSet;

use crm_models::service::FieldError;
use crm_models::time::{self, Timestamp};
use crm_models::{Email, Identifier, PhoneNumber, Region};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    seen: BTreeSet<&'a str>,
    pub errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// `prefix` is prepended to field names in errors (`items[3].`).
    pub fn new(value: &'a Value, prefix: &str) -> Result<Self, FieldError> {
        let object = value.as_object().ok_or_else(|| {
            let field = if prefix.is_empty() {
                "body".to_string()
            } else {
                prefix.trim_end_matches('.').to_string()
            };
            FieldError::new(field, "must be a JSON object")
        })?;
        Ok(Fields {
            object,
            prefix: prefix.to_string(),
            seen: BTreeSet::new(),
            errors: Vec::new(),
        })
    }

    pub fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn error(&mut self, key: &str, message: impl ToString) {
        let path = self.path(key);
        self.errors.push(FieldError::new(path, message));
    }

    /// The raw value, absent and `null` alike as `None`.
    pub fn value(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.insert(key);
        self.object.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.object.get(key).is_some_and(|v| !v.is_null())
    }

    /// A string of at most `max` characters; `required` reports absence.
    pub fn string(&mut self, key: &'a str, required: bool, max: usize) -> Option<String> {
        match self.value(key) {
            None => {
                if required {
                    self.error(key, "is required");
                }
                None
            }
            Some(Value::String(s)) => {
                if s.chars().count() > max {
                    self.error(key, format!("at most {max} characters"));
                    None
                } else if required && s.trim().is_empty() {
                    self.error(key, "must not be empty");
                    None
                } else {
                    Some(s.clone())
                }
            }
            Some(_) => {
                self.error(key, "must be a string");
                None
            }
        }
    }

    /// A value of an enum or other serde type.
    pub fn typed<T: DeserializeOwned>(
        &mut self,
        key: &'a str,
        required: bool,
        expected: &str,
    ) -> Option<T> {
        match self.value(key) {
            None => {
                if required {
                    self.error(key, "is required");
                }
                None
            }
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(t) => Some(t),
                Err(_) => {
                    self.error(key, format!("must be {expected}"));
                    None
                }
            },
        }
    }

    pub fn timestamp(&mut self, key: &'a str, required: bool) -> Option<Timestamp> {
        let raw = self.string(key, required, 64)?;
        match time::parse(&raw) {
            Ok(t) => Some(t),
            Err(_) => {
                self.error(key, "must be an RFC 3339 time, e.g. 2026-01-31T09:30:00Z");
                None
            }
        }
    }

    pub fn phone(&mut self, key: &'a str, region: Option<Region>) -> Option<PhoneNumber> {
        let raw = self.string(key, false, 64)?;
        match PhoneNumber::parse(&raw, region) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    pub fn email(&mut self, key: &'a str) -> Option<Email> {
        let raw = self.string(key, false, 254)?;
        match Email::parse(&raw) {
            Ok(e) => Some(e),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    /// Reports every key that no accessor asked for.
    pub fn deny_unknown(&mut self) {
        let unknown: Vec<String> = self
            .object
            .keys()
            .filter(|k| !self.seen.contains(k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            self.error(&key, "unknown field");
        }
    }
}

/// Parses a list of phone numbers (field `phones`) with per-item errors.
pub fn phones(
    raw: &[String],
    region: Option<Region>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<PhoneNumber> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, p)| match PhoneNumber::parse(p, region) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(FieldError::new(format!("{field}[{i}]"), e));
                None
            }
        })
        .collect()
}

/// Parses a list of emails (field `emails`) with per-item errors.
pub fn emails(raw: &[String], field: &str, errors: &mut Vec<FieldError>) -> Vec<Email> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, e)| match Email::parse(e) {
            Ok(e) => Some(e),
            Err(err) => {
                errors.push(FieldError::new(format!("{field}[{i}]"), err));
                None
            }
        })
        .collect()
}

/// Checks social network ids (`{"facebook": "123"}`).
pub fn social(
    raw: &std::collections::BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) -> Vec<Identifier> {
    let mut out = Vec::new();
    for (network, id) in raw {
        let id = id.trim();
        if !crm_models::customer::valid_social_network(network) {
            errors.push(FieldError::new(
                format!("social.{network}"),
                "network names are lowercase letters, digits and _ (not phone, email or anon)",
            ));
        } else if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            errors.push(FieldError::new(
                format!("social.{network}"),
                "must be 1 to 128 printable characters",
            ));
        } else {
            out.push(Identifier::Social {
                network: network.clone(),
                id: id.to_string(),
            });
        }
    }
    out
}
