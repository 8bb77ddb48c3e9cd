//! Customers and the identifiers that name them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::email::Email;
use crate::engagement::Channel;
use crate::ids::CustomerId;
use crate::phone::PhoneNumber;
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CustomerStatus {
    #[default]
    Active,
    Inactive,
    Merged,
}

// A counter stored below zero (by versions that raised a customer's counter
// apart from inserting its engagement) decodes as 0 (`count`) instead of
// failing the whole record.

/// Engagement counts per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelCounts {
    #[serde(default, deserialize_with = "count")]
    pub web: u64,
    #[serde(default, deserialize_with = "count")]
    pub call: u64,
    #[serde(default, deserialize_with = "count")]
    pub sms: u64,
    #[serde(default, deserialize_with = "count")]
    pub whatsapp: u64,
    #[serde(default, deserialize_with = "count")]
    pub email: u64,
}

/// A counter, signed or not; below zero reads as 0 (see above).
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Count;
    impl serde::de::Visitor<'_> for Count {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer count")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            Ok(u64::try_from(v).unwrap_or(0))
        }
        fn visit_i32<E: serde::de::Error>(self, v: i32) -> Result<u64, E> {
            self.visit_i64(i64::from(v))
        }
    }
    d.deserialize_i64(Count)
}

impl ChannelCounts {
    pub fn get_mut(&mut self, channel: Channel) -> &mut u64 {
        match channel {
            Channel::Web => &mut self.web,
            Channel::Call => &mut self.call,
            Channel::Sms => &mut self.sms,
            Channel::Whatsapp => &mut self.whatsapp,
            Channel::Email => &mut self.email,
        }
    }

    pub fn total(&self) -> u64 {
        self.web + self.call + self.sms + self.whatsapp + self.email
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Customer {
    pub id: CustomerId,
    pub name: Option<String>,
    #[serde(default)]
    pub emails: Vec<Email>,
    #[serde(default)]
    pub phones: Vec<PhoneNumber>,
    /// Social network ids, e.g. `{"facebook": "123"}`.
    #[serde(default)]
    pub social: BTreeMap<String, String>,
    pub status: CustomerStatus,
    #[serde(default)]
    pub merged_into: Option<CustomerId>,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[serde(default, with = "time::rfc3339_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_engagement_at: Option<Timestamp>,
    #[serde(default)]
    pub counts: ChannelCounts,
}

impl Customer {
    pub fn new(id: CustomerId, name: Option<String>, at: Timestamp) -> Self {
        Customer {
            id,
            name,
            emails: Vec::new(),
            phones: Vec::new(),
            social: BTreeMap::new(),
            status: CustomerStatus::Active,
            merged_into: None,
            created_at: at,
            updated_at: at,
            last_engagement_at: None,
            counts: ChannelCounts::default(),
        }
    }

    /// Every identifier on the profile.
    pub fn identifiers(&self) -> Vec<Identifier> {
        let mut out: Vec<Identifier> = Vec::new();
        out.extend(self.phones.iter().cloned().map(Identifier::Phone));
        out.extend(self.emails.iter().cloned().map(Identifier::Email));
        out.extend(self.social.iter().map(|(network, id)| Identifier::Social {
            network: network.clone(),
            id: id.clone(),
        }));
        out
    }

    /// Adds an identifier to the profile fields; true when it was not there.
    pub fn add_identifier(&mut self, identifier: &Identifier) -> bool {
        match identifier {
            Identifier::Phone(p) if !self.phones.contains(p) => self.phones.push(p.clone()),
            Identifier::Email(e) if !self.emails.contains(e) => self.emails.push(e.clone()),
            Identifier::Social { network, id } if self.social.get(network) != Some(id) => {
                self.social.insert(network.clone(), id.clone());
            }
            _ => return false,
        }
        true
    }
}

/// Something that names a customer on one channel. Its [`key`](Identifier::key)
/// is the `_id` of the `identities` record, so claiming one is an insert.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identifier {
    Phone(PhoneNumber),
    Email(Email),
    Social {
        network: String,
        id: String,
    },
    /// A website's anonymous visitor id.
    Anonymous(String),
}

impl Identifier {
    /// `phone:+6581226418`, `email:ann@example.com`, `facebook:123`, `anon:<id>`.
    pub fn key(&self) -> String {
        match self {
            Identifier::Phone(p) => format!("phone:{p}"),
            Identifier::Email(e) => format!("email:{e}"),
            Identifier::Social { network, id } => format!("{network}:{id}"),
            Identifier::Anonymous(id) => format!("anon:{id}"),
        }
    }

    /// Reads a key back. Phone and email keys are trusted as stored.
    pub fn from_key(key: &str) -> Option<Identifier> {
        let (kind, value) = key.split_once(':')?;
        Some(match kind {
            "phone" => Identifier::Phone(PhoneNumber::from_e164_unchecked(value.to_string())),
            "email" => Identifier::Email(Email::from_normalised_unchecked(value.to_string())),
            "anon" => Identifier::Anonymous(value.to_string()),
            network => Identifier::Social {
                network: network.to_string(),
                id: value.to_string(),
            },
        })
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// Social network names: lowercase letters, digits and `_`, not one of the
/// reserved identifier kinds.
pub fn valid_social_network(network: &str) -> bool {
    !network.is_empty()
        && network.len() <= 32
        && network
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !matches!(network, "phone" | "email" | "anon")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_below_zero_read_as_zero() {
        let c: ChannelCounts =
            serde_json::from_str(r#"{"web":3,"call":-1,"sms":18446744073709551615}"#).unwrap();
        assert_eq!((c.web, c.call, c.sms, c.email), (3, 0, u64::MAX, 0));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ChannelCounts>(&json).unwrap(), c);
        assert!(serde_json::from_str::<ChannelCounts>(r#"{"web":"x"}"#).is_err());
    }

    #[test]
    fn identifier_keys_round_trip() {
        let ids = [
            Identifier::Phone(PhoneNumber::parse("+6581226418", None).unwrap()),
            Identifier::Email(Email::parse("ann@example.com").unwrap()),
            Identifier::Social {
                network: "facebook".into(),
                id: "123".into(),
            },
            Identifier::Anonymous("abc".into()),
        ];
        for id in ids {
            assert_eq!(Identifier::from_key(&id.key()), Some(id.clone()));
        }
        assert_eq!(
            Identifier::Phone(PhoneNumber::parse("+6581226418", None).unwrap()).key(),
            "phone:+6581226418"
        );
    }

    #[test]
    fn add_identifier_is_idempotent() {
        let mut c = Customer::new(CustomerId::new(), None, crate::time::now());
        let e = Identifier::Email(Email::parse("a@b.co").unwrap());
        assert!(c.add_identifier(&e));
        assert!(!c.add_identifier(&e));
        assert_eq!(c.identifiers(), vec![e]);
    }
}
