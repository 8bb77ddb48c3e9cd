//! API keys for integrations: `crm_key_` + 32 random bytes (base64url). The
//! key is shown once, at creation; the store keeps its SHA-256 and a prefix.

use crm_models::ids::{ApiKeyId, UserId};
use crm_models::staff::{ApiKey, Role};

use super::tokens::{random_secret, sha256_hex};
use super::Auth;
use crate::error::ApiError;

/// Every API key starts with this, so a bearer value is recognisable as one.
pub const KEY_PREFIX: &str = "crm_key_";
/// Characters of the key kept in clear (`crm_key_` and 8 random ones).
const SHOWN_PREFIX_CHARS: usize = KEY_PREFIX.len() + 8;
/// Longest key name accepted, in characters.
pub const MAX_KEY_NAME_CHARS: usize = 100;

/// A key to create, checked.
#[derive(Debug)]
pub struct NewApiKey {
    name: String,
    role: Role,
}

impl NewApiKey {
    /// Keys get role `service` (ingest only); no other role may be asked for.
    pub fn parse(name: &str, role: Option<Role>) -> Result<Self, ApiError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ApiError::field("name", "must not be empty"));
        }
        if name.chars().count() > MAX_KEY_NAME_CHARS {
            return Err(ApiError::field(
                "name",
                format!("must be at most {MAX_KEY_NAME_CHARS} characters long"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::field(
                "name",
                "must not contain control characters",
            ));
        }
        match role.unwrap_or(Role::Service) {
            Role::Service => Ok(NewApiKey {
                name: name.to_string(),
                role: Role::Service,
            }),
            _ => Err(ApiError::field(
                "role",
                "API keys can only have the role `service`",
            )),
        }
    }
}

/// A key just created, with its secret: the only time the secret exists outside the caller.
pub struct CreatedApiKey {
    pub key: ApiKey,
    pub secret: String,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub(super) fn api_key_not_found(id: ApiKeyId) -> ApiError {
    ApiError::not_found("api_key_not_found", format!("no active API key {id}"))
}

impl Auth {
    pub async fn create_api_key(
        &self,
        created_by: UserId,
        new: NewApiKey,
    ) -> Result<CreatedApiKey, ApiError> {
        let secret = format!("{KEY_PREFIX}{}", random_secret());
        let key = ApiKey {
            id: ApiKeyId::new(),
            name: new.name,
            key_hash: sha256_hex(&secret),
            prefix: secret.chars().take(SHOWN_PREFIX_CHARS).collect(),
            role: new.role,
            created_by,
            created_at: crm_models::time::now(),
            revoked_at: None,
        };
        self.store.insert_api_key(&key).await?;
        tracing::info!(api_key_id = %key.id, created_by = %created_by, "api key created");
        Ok(CreatedApiKey { key, secret })
    }

    /// Every key, revoked ones too, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, ApiError> {
        Ok(self.store.list_api_keys().await?)
    }

    pub(super) async fn get_api_key(&self, id: ApiKeyId) -> Result<ApiKey, ApiError> {
        self.list_api_keys()
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| api_key_not_found(id))
    }

    /// Revokes a key at once; `api_key_not_found` when unknown or revoked already.
    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<(), ApiError> {
        if !self
            .store
            .revoke_api_key(id, crm_models::time::now())
            .await?
        {
            return Err(api_key_not_found(id));
        }
        tracing::info!(api_key_id = %id, "api key revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_keys_with_a_name() {
        assert_eq!(NewApiKey::parse(" website ", None).unwrap().name, "website");
        assert!(NewApiKey::parse("website", Some(Role::Service)).is_ok());
        assert!(NewApiKey::parse("website", Some(Role::Admin)).is_err());
        assert!(NewApiKey::parse("website", Some(Role::Device)).is_err());
        assert!(NewApiKey::parse("  ", None).is_err());
    }
}
