//! Staff users, their refresh tokens, and integrations' API keys.
//! Secrets are never stored: passwords as argon2id hashes, tokens and keys as SHA-256.

use serde::{Deserialize, Serialize};

use crate::email::Email;
use crate::ids::{ApiKeyId, UserId};
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Agent,
    /// An Android device; only `/v1/mobile/*`.
    Device,
    /// An integration (the website backend); only ingest.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Device => "device",
            Role::Service => "service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: String,
    pub role: Role,
    /// PHC string of an argon2id hash.
    pub password_hash: String,
    pub active: bool,
    /// The sales team the user belongs to (analytics group by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    pub updated_at: Timestamp,
}

/// One refresh token, stored by the SHA-256 of its value. Rotation marks it
/// used; presenting a used one revokes the whole family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub token_hash: String,
    pub user_id: UserId,
    pub family_id: String,
    pub used: bool,
    pub revoked: bool,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    /// SHA-256 of the key, hex.
    pub key_hash: String,
    /// The first characters of the key, to recognise it in a list.
    pub prefix: String,
    pub role: Role,
    /// What the key may write. Keys stored before scopes existed have
    /// [`KeyScope::DEFAULT`].
    #[serde(default = "KeyScope::default_scopes")]
    pub scopes: Vec<KeyScope>,
    pub created_by: UserId,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(default, with = "time::rfc3339_option")]
    pub revoked_at: Option<Timestamp>,
}

/// What an API key may do. Keys write evidence and read no profile field,
/// whatever their scopes: `events:read` reads the event feed, which holds
/// ids only.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum KeyScope {
    /// `POST /v1/track`: web page views.
    #[serde(rename = "track")]
    Track,
    /// `POST /v1/engagements` and `/v1/engagements/batch`.
    #[serde(rename = "engagements")]
    Engagements,
    /// `POST /v1/customers`: create or link customers by identifier.
    #[serde(rename = "customers:write")]
    CustomersWrite,
    /// `GET /v1/events`: the event feed (ids, types and times; no profile
    /// fields).
    #[serde(rename = "events:read")]
    EventsRead,
}

impl KeyScope {
    pub const ALL: [KeyScope; 4] = [
        KeyScope::Track,
        KeyScope::Engagements,
        KeyScope::CustomersWrite,
        KeyScope::EventsRead,
    ];
    /// The scopes of a key created without any named, and of keys stored
    /// before scopes existed: evidence only (`track`, `engagements`).
    pub const DEFAULT: [KeyScope; 2] = [KeyScope::Track, KeyScope::Engagements];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Track => "track",
            KeyScope::Engagements => "engagements",
            KeyScope::CustomersWrite => "customers:write",
            KeyScope::EventsRead => "events:read",
        }
    }

    pub fn default_scopes() -> Vec<KeyScope> {
        KeyScope::DEFAULT.to_vec()
    }
}

impl std::fmt::Display for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
