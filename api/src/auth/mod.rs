//! Authentication and authorisation: who is calling, and may they.
//!
//! Staff log in with a password (argon2id) and get a short-lived JWT access
//! token plus a rotating refresh token; integrations use API keys; devices use
//! device tokens (mobile bridge). Handlers state the roles they accept in their
//! argument types: [`Staff`], [`AdminOnly`], [`Ingest`].

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use crm_models::ids::{ApiKeyId, UserId};
use crm_models::staff::Role;
use crm_models::store::Store;

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

/// Everything auth needs: keys, settings and the store.
pub struct Auth {
    store: Arc<dyn Store>,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, _jwt_secret: &[u8], _config: &Config) -> Self {
        Auth { store }
    }

    /// Creates the first admin from configuration when there is no user yet.
    pub async fn ensure_first_admin(
        &self,
        _email: Option<&str>,
        _password: Option<&str>,
    ) -> anyhow::Result<()> {
        let _ = self.store.count_users().await?;
        Ok(())
    }

    /// Who presented these request headers.
    pub async fn authenticate(&self, _parts: &Parts) -> Result<Principal, ApiError> {
        Err(ApiError::Unauthorized("missing or invalid credentials"))
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(UserId),
    ApiKey(ApiKeyId),
}

/// An authenticated caller and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: Subject,
    pub role: Role,
}

impl Principal {
    /// How engagements record who wrote them: `user:<id>` or `key:<id>`.
    pub fn actor(&self) -> String {
        match &self.subject {
            Subject::User(id) => format!("user:{id}"),
            Subject::ApiKey(id) => format!("key:{id}"),
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self.subject {
            Subject::User(id) => Some(id),
            Subject::ApiKey(_) => None,
        }
    }

    fn require(self, roles: &[Role]) -> Result<Self, ApiError> {
        if roles.contains(&self.role) {
            Ok(self)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.auth.authenticate(parts).await
    }
}

macro_rules! role_guard {
    ($(#[$doc:meta])* $name:ident, [$($role:expr),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                let principal = Principal::from_request_parts(parts, state).await?;
                principal.require(&[$($role),+]).map($name)
            }
        }
    };
}

role_guard!(
    /// Sales staff: `admin` or `agent`.
    Staff,
    [Role::Admin, Role::Agent]
);
role_guard!(
    /// Admins only.
    AdminOnly,
    [Role::Admin]
);
role_guard!(
    /// Writers of customer data: staff and integrations (`service` API keys).
    Ingest,
    [Role::Admin, Role::Agent, Role::Service]
);

/// `crm-api user create`: creates a staff user directly in the store.
pub async fn create_user_cli(
    _store: Arc<dyn Store>,
    _email: &str,
    _name: &str,
    _role: &str,
    _password: &str,
) -> anyhow::Result<crm_models::staff::User> {
    anyhow::bail!("not available yet")
}
