//! API keys for integrations: `crm_key_` + 32 random bytes (base64url). The
//! key is shown once, at creation; the store keeps its SHA-256 and a prefix.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use crm_models::ids::{ApiKeyId, UserId};
use crm_models::staff::{ApiKey, KeyScope, Role};

use super::tokens::{random_secret, sha256_hex};
use super::{credential, Auth, Credential, Principal, Subject};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

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
    scopes: Vec<KeyScope>,
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
                scopes: KeyScope::default_scopes(),
            }),
            _ => Err(ApiError::field(
                "role",
                "API keys can only have the role `service`",
            )),
        }
    }

    /// The scopes asked for (`track`, `engagements`, `customers:write`,
    /// `events:read`);
    /// without any, [`KeyScope::DEFAULT`]. Every unknown one is reported.
    pub fn with_scopes(mut self, scopes: Option<&[String]>) -> Result<Self, ApiError> {
        let Some(raw) = scopes else {
            return Ok(self);
        };
        let known = KeyScope::ALL
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if raw.is_empty() {
            return Err(ApiError::field(
                "scopes",
                format!("name at least one scope: {known}"),
            ));
        }
        let mut errors = Vec::new();
        let mut scopes = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            match KeyScope::ALL.iter().find(|s| s.as_str() == name.trim()) {
                Some(s) if !scopes.contains(s) => scopes.push(*s),
                Some(_) => {}
                None => errors.push(crm_models::service::FieldError::new(
                    format!("scopes[{i}]"),
                    format!("unknown scope; the scopes are {known}"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        scopes.sort();
        self.scopes = scopes;
        Ok(self)
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
    ApiError::not_found(ErrorCode::ApiKeyNotFound, format!("no active API key {id}"))
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
            scopes: new.scopes,
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

    /// The caller, allowed to write with `scope`: staff (admin or agent), or
    /// an API key holding the scope. Anyone else gets `forbidden`, a key
    /// naming the scope it lacks.
    pub async fn authenticate_writer(
        &self,
        parts: &Parts,
        scope: KeyScope,
    ) -> Result<Principal, ApiError> {
        match credential(&parts.headers)? {
            Credential::AccessToken(token) => {
                let principal = self.authenticate_token(token).await?;
                if matches!(principal.role, Role::Admin | Role::Agent) {
                    Ok(principal)
                } else {
                    Err(ApiError::Forbidden)
                }
            }
            // One read of the key gives both who it is and its scopes.
            Credential::ApiKey(secret) => {
                let key = self.live_key(secret).await?;
                if key.role == Role::Service && key.scopes.contains(&scope) {
                    Ok(Principal::of_key(&key))
                } else {
                    Err(missing_scope(scope))
                }
            }
        }
    }
}

impl Auth {
    /// A reader of the event feed: an admin, or an API key holding
    /// `events:read`. Agents and other keys get `forbidden`.
    pub async fn authenticate_event_reader(&self, parts: &Parts) -> Result<Principal, ApiError> {
        match credential(&parts.headers)? {
            Credential::AccessToken(token) => self
                .authenticate_token(token)
                .await?
                .require(&[Role::Admin]),
            Credential::ApiKey(secret) => {
                let key = self.live_key(secret).await?;
                if key.role == Role::Service && key.scopes.contains(&KeyScope::EventsRead) {
                    Ok(Principal::of_key(&key))
                } else {
                    Err(missing_scope(KeyScope::EventsRead))
                }
            }
        }
    }
}

/// `GET /v1/events`: an admin, or a key with `events:read`.
#[derive(Debug, Clone)]
pub struct EventReader(pub Principal);

impl FromRequestParts<AppState> for EventReader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state
            .auth
            .authenticate_event_reader(parts)
            .await
            .map(EventReader)
    }
}

/// `forbidden`, naming the scope a key lacks.
fn missing_scope(scope: KeyScope) -> ApiError {
    ApiError::BadRequest {
        code: ErrorCode::Forbidden,
        detail: format!(
            "this API key lacks the scope `{scope}`; create a key with it \
             (POST /v1/api-keys with \"scopes\")"
        ),
    }
}

/// Writers of evidence, by the scope an API key needs: staff, or a key
/// holding the scope. Keys get ids and statuses back, never profile fields.
macro_rules! writer_guard {
    ($(#[$doc:meta])* $name:ident, $scope:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                state.auth.authenticate_writer(parts, $scope).await.map($name)
            }
        }

        impl $name {
            /// True when an API key (not a staff user) is writing.
            pub fn is_key(&self) -> bool {
                matches!(self.0.subject, Subject::ApiKey(_))
            }
        }
    };
}

writer_guard!(
    /// `POST /v1/track`: staff, or a key with `track`.
    TrackWriter,
    KeyScope::Track
);
writer_guard!(
    /// `POST /v1/engagements[/batch]`: staff, or a key with `engagements`.
    EngagementWriter,
    KeyScope::Engagements
);
writer_guard!(
    /// `POST /v1/customers`: staff, or a key with `customers:write`.
    CustomerWriter,
    KeyScope::CustomersWrite
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_named_known_and_default_to_evidence() {
        let scopes = |raw: Option<&[String]>| {
            NewApiKey::parse("website", None)
                .unwrap()
                .with_scopes(raw)
                .map(|k| k.scopes)
        };
        assert_eq!(
            scopes(None).unwrap(),
            vec![KeyScope::Track, KeyScope::Engagements]
        );
        let asked = [
            "customers:write".to_string(),
            "track".into(),
            "track".into(),
        ];
        assert_eq!(
            scopes(Some(&asked)).unwrap(),
            vec![KeyScope::Track, KeyScope::CustomersWrite]
        );
        assert!(
            matches!(scopes(Some(&[])), Err(ApiError::Validation(e)) if e[0].field == "scopes")
        );
        let bad = ["read".to_string(), "track".into(), "admin".into()];
        match scopes(Some(&bad)) {
            Err(ApiError::Validation(errors)) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["scopes[0]", "scopes[2]"]);
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn only_service_keys_with_a_name() {
        assert_eq!(NewApiKey::parse(" website ", None).unwrap().name, "website");
        assert!(NewApiKey::parse("website", Some(Role::Service)).is_ok());
        assert!(NewApiKey::parse("website", Some(Role::Admin)).is_err());
        assert!(NewApiKey::parse("website", Some(Role::Device)).is_err());
        assert!(NewApiKey::parse("  ", None).is_err());
    }
}
