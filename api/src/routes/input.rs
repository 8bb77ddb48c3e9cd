//! Reading request bodies: the field-by-field reader lives with the one
//! ingest parser in [`crm_models::ingest`]; here are the list helpers of the
//! customer routes.

pub use crm_models::ingest::Fields;
use crm_models::service::FieldError;
use crm_models::{Email, Identifier, PhoneNumber, Region};

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
        } else if id.is_empty()
            || id.len() > 128
            || crm_models::ingest::check_text(id, crm_models::ingest::TextKind::Line).is_err()
        {
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
