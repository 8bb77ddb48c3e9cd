//! Authentication and authorisation: who is calling, and may they.
//!
//! Staff log in with a password (argon2id) and get a short-lived JWT access
//! token plus a rotating refresh token; integrations use API keys; devices use
//! device tokens (mobile bridge). Handlers state the roles they accept in their
//! argument types: [`Staff`], [`AdminOnly`], [`Ingest`].
//!
//! Every request re-reads the user (or key) from the store, so deactivating a
//! user, changing a role or revoking a key takes effect on the next request.
//! An access token carries its session (the refresh-token family); ending
//! the session (logout, refresh-token reuse, a new password, deactivation)
//! ends its access tokens on every instance within a second.
//! Secrets (passwords, tokens, keys) are never logged and never stored in clear.
//!
//! # Layout
//! - [`password`]: argon2id hashing and verification.
//! - [`tokens`]: access-token JWTs, random secrets, SHA-256 for storage.
//! - `sessions`: login, refresh rotation, logout; `revocations`: the
//!   revoked-sessions set.
//! - `users`, `api_keys`: managing staff accounts and integration keys.
//! - `rate_limit`: login throttling; [`client_addr`]: who the client is
//!   behind trusted proxies.

mod api_keys;
pub mod client_addr;
pub mod password;
mod rate_limit;
mod revocations;
mod sessions;
mod stream_sessions;
pub mod tokens;
mod users;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use crm_mobile_bridge::DEVICE_TOKEN_PREFIX;
use crm_models::ids::{ApiKeyId, UserId};
use crm_models::staff::{ApiKey, Role, User};
use crm_models::store::Store;

pub use api_keys::{
    CreatedApiKey, CustomerWriter, EngagementWriter, EventReader, NewApiKey, TrackWriter,
    KEY_PREFIX,
};
pub use rate_limit::{LoginLimiter, ACCOUNT_FREE, PAIR_FREE, PER_ADDRESS_PER_MINUTE};
pub use sessions::Session;
pub use stream_sessions::StreamSession;
pub use users::{parse_team, NewUser, StaffRole, UserPatch};

use crate::config::Config;
use crate::error::ApiError;
use crate::state::AppState;

/// The header integrations may use instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

const MISSING: &str = "missing credentials: send `Authorization: Bearer <token>`";
const INVALID: &str = "invalid, expired or revoked credentials";
const DEVICE_ONLY: &str = "device tokens work only on /v1/mobile/*";

/// Everything auth needs: keys, settings and the store.
pub struct Auth {
    store: Arc<dyn Store>,
    tokens: tokens::AccessTokens,
    refresh_ttl_s: u64,
    limiter: rate_limit::LoginLimiter,
    revocations: revocations::Revocations,
}

/// The caller as stored, for `GET /v1/me`.
#[derive(Debug, Clone)]
pub enum Caller {
    User(User),
    ApiKey(ApiKey),
}

impl Auth {
    /// Login limits in this process; see [`Auth::with_login_limiter`].
    pub fn new(store: Arc<dyn Store>, jwt_secret: &[u8], config: &Config) -> Self {
        let tokens = tokens::AccessTokens::new(jwt_secret, config.access_token_ttl_s);
        Auth {
            revocations: revocations::Revocations::new(
                store.clone(),
                tokens.ttl_s(),
                tokens::LEEWAY_S,
            ),
            store,
            tokens,
            refresh_ttl_s: config.refresh_token_ttl_s,
            limiter: rate_limit::LoginLimiter::local(),
        }
    }

    /// Uses these login limits (shared through Redis when configured).
    pub fn with_login_limiter(mut self, limiter: LoginLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Creates the first admin from configuration when there is no user yet.
    /// Does nothing once any user exists, so it is safe on every start (and
    /// when several instances start at once: one insert wins, the others
    /// find the email taken).
    pub async fn ensure_first_admin(
        &self,
        email: Option<&str>,
        password: Option<&str>,
    ) -> anyhow::Result<()> {
        if self.store.count_users().await? > 0 {
            return Ok(());
        }
        let (Some(email), Some(password)) = (email, password) else {
            tracing::warn!(
                "there are no users: set CRM_ADMIN_EMAIL and CRM_ADMIN_PASSWORD, or run \
                 `crm-api user create --email <email> --role admin`, to create the first admin"
            );
            return Ok(());
        };
        let new = NewUser::parse(
            email,
            "Administrator",
            StaffRole::Admin,
            password.to_string(),
        )
        .map_err(|e| cli_error(e).context("CRM_ADMIN_EMAIL / CRM_ADMIN_PASSWORD"))?;
        match users::create_user(self.store.as_ref(), new).await {
            Ok(user) => {
                tracing::info!(user_id = %user.id, "created the first admin");
                Ok(())
            }
            Err(ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(cli_error(e)),
        }
    }

    /// Who presented these request headers.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Principal, ApiError> {
        match credential(&parts.headers)? {
            Credential::AccessToken(token) => self.authenticate_token(token).await,
            Credential::ApiKey(key) => self.authenticate_key(key).await,
        }
    }

    async fn authenticate_token(&self, token: &str) -> Result<Principal, ApiError> {
        let claims = self.tokens.verify(token).map_err(|e| {
            tracing::debug!(error = %e, "access token refused");
            ApiError::Unauthorized(INVALID)
        })?;
        let id: UserId = claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized(INVALID))?;
        let user = match self.store.get_user(id).await? {
            Some(user) if user.active => user,
            _ => return Err(ApiError::Unauthorized(INVALID)),
        };
        if self.revocations.is_revoked(&claims.sid).await? {
            tracing::debug!(user_id = %user.id, "access token of an ended session refused");
            return Err(ApiError::Unauthorized(INVALID));
        }
        Ok(Principal {
            subject: Subject::User(user.id),
            role: user.role,
        })
    }

    async fn authenticate_key(&self, key: &str) -> Result<Principal, ApiError> {
        self.live_key(key).await.map(|k| Principal::of_key(&k))
    }

    /// The stored key behind a presented secret, unless it is unknown or revoked.
    async fn live_key(&self, key: &str) -> Result<ApiKey, ApiError> {
        self.store
            .get_api_key_by_hash(&tokens::sha256_hex(key))
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or(ApiError::Unauthorized(INVALID))
    }

    /// The caller's stored record.
    pub async fn caller(&self, principal: &Principal) -> Result<Caller, ApiError> {
        match principal.subject {
            Subject::User(id) => self.get_user(id).await.map(Caller::User),
            Subject::ApiKey(id) => self.get_api_key(id).await.map(Caller::ApiKey),
        }
    }
}

enum Credential<'a> {
    AccessToken(&'a str),
    ApiKey(&'a str),
}

/// `Authorization: Bearer <jwt or crm_key_...>`, else `X-Api-Key: crm_key_...`.
/// Device tokens (`crm_dev_...`) are refused before any lookup: they work on
/// `/v1/mobile/*` only, where the mobile bridge authenticates them.
fn credential(headers: &HeaderMap) -> Result<Credential<'_>, ApiError> {
    let invalid = || ApiError::Unauthorized(INVALID);
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.to_str().map_err(|_| invalid())?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(invalid)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(invalid());
        }
        if token.starts_with(DEVICE_TOKEN_PREFIX) {
            return Err(ApiError::Unauthorized(DEVICE_ONLY));
        }
        return Ok(if token.starts_with(KEY_PREFIX) {
            Credential::ApiKey(token)
        } else {
            Credential::AccessToken(token)
        });
    }
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let key = value.to_str().map_err(|_| invalid())?.trim();
        if !key.starts_with(KEY_PREFIX) {
            return Err(invalid());
        }
        return Ok(Credential::ApiKey(key));
    }
    Err(ApiError::Unauthorized(MISSING))
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
    fn of_key(key: &ApiKey) -> Self {
        Principal {
            subject: Subject::ApiKey(key.id),
            role: key.role,
        }
    }

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

/// `crm-api user create`: creates a staff user directly in the store, with
/// the same checks and hashing as `POST /v1/users`.
pub async fn create_user_cli(
    store: Arc<dyn Store>,
    email: &str,
    name: &str,
    role: &str,
    password: &str,
) -> anyhow::Result<crm_models::staff::User> {
    let role: StaffRole = role.parse().map_err(anyhow::Error::msg)?;
    let new = NewUser::parse(email, name, role, password.to_string()).map_err(cli_error)?;
    users::create_user(store.as_ref(), new)
        .await
        .map_err(cli_error)
}

/// An HTTP-shaped error as a message for a terminal or a start-up failure.
fn cli_error(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::Validation(errors) => anyhow::anyhow!(
            "invalid {}",
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        ApiError::Internal(message) => anyhow::anyhow!(message),
        other => anyhow::anyhow!(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use axum::http::Request;

    use super::*;
    use crm_models::store::embedded::EmbeddedStore;
    use crm_models::store::prelude::*;

    /// A fresh embedded store; the directory lives as long as the test.
    fn fresh_store() -> Arc<EmbeddedStore> {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // The store keeps its file open; the directory may go when the test ends.
        std::mem::forget(dir);
        Arc::new(store)
    }

    const ADMIN: &str = "admin@example.com";
    const PASSWORD: &str = "correct horse battery";
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn auth() -> (Arc<EmbeddedStore>, Auth) {
        let store = fresh_store();
        let config = Config::for_data_dir("unused".into());
        let auth = Auth::new(store.clone(), b"0123456789abcdef0123456789abcdef", &config);
        auth.ensure_first_admin(Some(ADMIN), Some(PASSWORD))
            .await
            .unwrap();
        (store, auth)
    }

    fn parts(header: &str, value: &str) -> Parts {
        Request::builder()
            .header(header, value)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn bearer(token: &str) -> Parts {
        parts("authorization", &format!("Bearer {token}"))
    }

    fn is_unauthorized<T: std::fmt::Debug>(r: Result<T, ApiError>) -> bool {
        matches!(r, Err(ApiError::Unauthorized(_)))
    }

    #[tokio::test]
    async fn the_first_admin_is_created_once() {
        let (store, auth) = auth().await;
        assert_eq!(store.count_users().await.unwrap(), 1);
        auth.ensure_first_admin(Some("other@example.com"), Some(PASSWORD))
            .await
            .unwrap();
        assert_eq!(store.count_users().await.unwrap(), 1);
        let admin = store
            .get_user_by_email(&crm_models::Email::parse(ADMIN).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert!(admin.password_hash.starts_with("$argon2id$"));

        let empty = Auth::new(
            fresh_store(),
            b"0123456789abcdef0123456789abcdef",
            &Config::for_data_dir("unused".into()),
        );
        empty.ensure_first_admin(None, None).await.unwrap();
        assert!(empty
            .ensure_first_admin(Some("not an email"), Some(PASSWORD))
            .await
            .is_err());
        assert!(empty
            .ensure_first_admin(Some(ADMIN), Some("short"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn login_gives_a_token_that_authenticates_with_the_stored_role() {
        let (store, auth) = auth().await;
        let session = auth.login(ADMIN, PASSWORD.into(), CLIENT).await.unwrap();
        let who = auth
            .authenticate(&bearer(&session.access_token))
            .await
            .unwrap();
        assert_eq!(who.role, Role::Admin);
        let id = who.user_id().unwrap();

        // Demoted in the store: the old token now carries the new role.
        let mut user = store.get_user(id).await.unwrap().unwrap();
        user.role = Role::Agent;
        store.update_user(&user, &[]).await.unwrap();
        let who = auth
            .authenticate(&bearer(&session.access_token))
            .await
            .unwrap();
        assert_eq!(who.role, Role::Agent);

        // Deactivated: refused at once.
        user.active = false;
        store.update_user(&user, &[]).await.unwrap();
        assert!(is_unauthorized(
            auth.authenticate(&bearer(&session.access_token)).await
        ));
    }

    #[tokio::test]
    async fn failed_logins_look_alike() {
        let (_, auth) = auth().await;
        let wrong = auth.login(ADMIN, "wrong password!".into(), CLIENT).await;
        let unknown = auth
            .login("nobody@example.com", PASSWORD.into(), CLIENT)
            .await;
        let garbage = auth.login("not an email", PASSWORD.into(), CLIENT).await;
        let texts: Vec<String> = [wrong, unknown, garbage]
            .into_iter()
            .map(|r| r.unwrap_err().to_string())
            .collect();
        assert_eq!(texts, vec!["invalid email or password"; 3]);
    }

    #[tokio::test]
    async fn refresh_rotates_and_reuse_revokes_the_family() {
        let (store, auth) = auth().await;
        let first = auth.login(ADMIN, PASSWORD.into(), CLIENT).await.unwrap();
        let second = auth.refresh(&first.refresh_token).await.unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        let stored = |token: &str| {
            let store = store.clone();
            let hash = tokens::sha256_hex(token);
            async move { store.get_refresh_token(&hash).await.unwrap().unwrap() }
        };
        let (a, b) = (
            stored(&first.refresh_token).await,
            stored(&second.refresh_token).await,
        );
        assert_eq!(a.family_id, b.family_id);
        // Nothing stored in clear.
        assert!(store
            .get_refresh_token(&first.refresh_token)
            .await
            .unwrap()
            .is_none());
        assert_eq!(a.token_hash.len(), 64);

        assert!(is_unauthorized(auth.refresh(&first.refresh_token).await));
        assert!(is_unauthorized(auth.refresh(&second.refresh_token).await));
        assert!(stored(&first.refresh_token).await.revoked);
        assert!(stored(&second.refresh_token).await.revoked);
        assert!(is_unauthorized(auth.refresh("made-up").await));
    }

    #[tokio::test]
    async fn expired_refresh_tokens_and_inactive_users_cannot_refresh() {
        let store = fresh_store();
        let mut config = Config::for_data_dir("unused".into());
        config.refresh_token_ttl_s = 0;
        let auth = Auth::new(store.clone(), b"0123456789abcdef0123456789abcdef", &config);
        auth.ensure_first_admin(Some(ADMIN), Some(PASSWORD))
            .await
            .unwrap();
        let s = auth.login(ADMIN, PASSWORD.into(), CLIENT).await.unwrap();
        assert!(is_unauthorized(auth.refresh(&s.refresh_token).await));

        let (store, auth) = self::auth().await;
        let s = auth.login(ADMIN, PASSWORD.into(), CLIENT).await.unwrap();
        let id = auth
            .authenticate(&bearer(&s.access_token))
            .await
            .unwrap()
            .user_id()
            .unwrap();
        let mut user = store.get_user(id).await.unwrap().unwrap();
        user.active = false;
        store.update_user(&user, &[]).await.unwrap();
        assert!(is_unauthorized(auth.refresh(&s.refresh_token).await));
    }

    #[tokio::test]
    async fn api_keys_authenticate_until_revoked() {
        let (_, auth) = auth().await;
        let new = NewApiKey::parse("website", None).unwrap();
        let created = auth.create_api_key(UserId::new(), new).await.unwrap();
        assert!(created.secret.starts_with(KEY_PREFIX));
        assert_eq!(created.secret.len(), KEY_PREFIX.len() + 43);
        assert!(created.secret.starts_with(&created.key.prefix));
        assert_ne!(created.key.key_hash, created.secret);

        let via_bearer = auth.authenticate(&bearer(&created.secret)).await.unwrap();
        let via_header = auth
            .authenticate(&parts(API_KEY_HEADER, &created.secret))
            .await
            .unwrap();
        assert_eq!(via_bearer, via_header);
        assert_eq!(via_bearer.subject, Subject::ApiKey(created.key.id));
        assert_eq!(via_bearer.role, Role::Service);
        assert_eq!(via_bearer.actor(), format!("key:{}", created.key.id));

        auth.revoke_api_key(created.key.id).await.unwrap();
        assert!(is_unauthorized(
            auth.authenticate(&bearer(&created.secret)).await
        ));
        assert!(matches!(
            auth.revoke_api_key(created.key.id).await,
            Err(ApiError::NotFound {
                code: crate::error::ErrorCode::ApiKeyNotFound,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn malformed_or_missing_credentials_are_refused() {
        let (_, auth) = auth().await;
        let none = Request::builder().body(()).unwrap().into_parts().0;
        for p in [
            none,
            parts("authorization", "Basic YWRtaW46cGFzcw=="),
            parts("authorization", "Bearer"),
            parts("authorization", "Bearer not.a.jwt"),
            parts("authorization", "Bearer crm_key_unknown"),
            parts("authorization", "Bearer crm_dev_anything"),
            parts(API_KEY_HEADER, "not-a-key"),
        ] {
            assert!(is_unauthorized(auth.authenticate(&p).await));
        }
    }

    #[tokio::test]
    async fn deactivating_ends_sessions_and_admins_cannot_lock_themselves_out() {
        let (store, auth) = auth().await;
        let me = auth.login(ADMIN, PASSWORD.into(), CLIENT).await.unwrap();
        let admin_id = auth
            .authenticate(&bearer(&me.access_token))
            .await
            .unwrap()
            .user_id();
        let agent = auth
            .create_user(
                NewUser::parse(
                    "agent@example.com",
                    "Agent",
                    StaffRole::Agent,
                    PASSWORD.into(),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let session = auth
            .login("agent@example.com", PASSWORD.into(), CLIENT)
            .await
            .unwrap();
        let patch = UserPatch::parse(None, None, None, Some(false)).unwrap();
        let updated = auth.update_user(admin_id, agent.id, patch).await.unwrap();
        assert!(!updated.active);
        let token = store
            .get_refresh_token(&tokens::sha256_hex(&session.refresh_token))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(token.user_id, agent.id);
        assert!(token.revoked);
        assert!(is_unauthorized(auth.refresh(&session.refresh_token).await));

        let self_lockout =
            UserPatch::parse(None, Some(StaffRole::Agent), None, Some(false)).unwrap();
        match auth
            .update_user(admin_id, admin_id.unwrap(), self_lockout)
            .await
        {
            Err(ApiError::Validation(errors)) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["active", "role"]);
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_cli_refuses_a_taken_email_without_panicking() {
        let (store, _) = auth().await;
        let err = create_user_cli(store.clone(), ADMIN, "Again", "agent", PASSWORD)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exists already"), "{err}");
        let err = create_user_cli(store.clone(), "x@example.com", "", "service", PASSWORD)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown role"), "{err}");
        let user = create_user_cli(store, "x@example.com", "", "agent", PASSWORD)
            .await
            .unwrap();
        assert_eq!(user.role, Role::Agent);
    }
}
