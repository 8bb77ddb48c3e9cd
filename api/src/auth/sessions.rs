//! Staff sessions: login, refresh-token rotation with reuse detection, logout.
//!
//! A login starts a *family* of refresh tokens. Each refresh marks the token
//! used and issues the next one in the same family. A used token presented
//! again means two parties hold it (one of them stole it), so the whole
//! family is revoked and both must log in again.
//!
//! The family id is the session id (`sid`) of every access token issued in
//! it: revoking the family ends those access tokens too (`revocations`).

use std::net::IpAddr;

use crm_models::staff::{RefreshToken, User};
use crm_models::Email;

use super::password;
use super::tokens::{random_secret, sha256_hex, MAX_TTL_S};
use super::{Auth, Principal};
use crate::error::ApiError;

/// The one answer for unknown email, wrong password and inactive user.
const LOGIN_FAILED: &str = "invalid email or password";
const REFRESH_FAILED: &str = "invalid, expired or revoked refresh token";

/// What a login or refresh hands out. `Debug` hides the tokens.
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Checks the password of an active user and starts a session. Rate
    /// limited per account and per client address before any other work.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client: IpAddr,
    ) -> Result<Session, ApiError> {
        self.limiter.check(email, client).await?;
        let user = match Email::parse(email) {
            Ok(email) => self.store.get_user_by_email(&email).await?,
            Err(_) => None,
        };
        // Always verify, against a dummy hash when there is no user, so that
        // the time taken does not reveal whether the email has an account.
        let matches =
            password::verify(password, user.as_ref().map(|u| u.password_hash.clone())).await?;
        match user {
            Some(user) if matches && user.active => {
                self.limiter.succeeded(email, client).await;
                let session = self
                    .start_session(&user, uuid::Uuid::new_v4().to_string())
                    .await?;
                tracing::info!(user_id = %user.id, "login");
                Ok(session)
            }
            Some(user) => {
                let reason = if matches {
                    "inactive user"
                } else {
                    "wrong password"
                };
                tracing::info!(user_id = %user.id, reason, "login refused");
                Err(ApiError::Unauthorized(LOGIN_FAILED))
            }
            None => {
                tracing::info!(reason = "unknown email", "login refused");
                Err(ApiError::Unauthorized(LOGIN_FAILED))
            }
        }
    }

    /// Exchanges a refresh token for a new access token and the next refresh
    /// token of its family. Reuse of a used token revokes the family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, ApiError> {
        let refused = || ApiError::Unauthorized(REFRESH_FAILED);
        let hash = sha256_hex(refresh_token);
        let Some(stored) = self.store.get_refresh_token(&hash).await? else {
            return Err(refused());
        };
        if stored.revoked {
            return Err(refused());
        }
        if stored.used {
            self.revoke_family_on_reuse(&stored).await?;
            return Err(refused());
        }
        if stored.expires_at <= crm_models::time::now() {
            return Err(refused());
        }
        // A token rotated in while its family was being revoked escapes the
        // revocation; the session's record does not.
        if self.revocations.is_revoked(&stored.family_id).await? {
            return Err(refused());
        }
        let user = match self.store.get_user(stored.user_id).await? {
            Some(user) if user.active => user,
            _ => return Err(refused()),
        };
        // Of two concurrent refreshes with one token exactly one wins; the
        // other is treated as reuse.
        if !self.store.use_refresh_token(&hash).await? {
            self.revoke_family_on_reuse(&stored).await?;
            return Err(refused());
        }
        let session = self.start_session(&user, stored.family_id.clone()).await?;
        // A revocation that committed between the checks above and the new
        // token's insert did not see the new token: look again, in the
        // store, and end the family once more if so. (One that commits after
        // the insert revokes the new token itself.) Without this, the new
        // token would outlive the revocation's record.
        let since = crm_models::time::now() - chrono::Duration::minutes(5);
        let revoked = self.store.revoked_sessions(since).await?;
        if revoked.contains(&stored.family_id) {
            self.store.revoke_refresh_family(&stored.family_id).await?;
            self.revocations.revoked_here(&stored.family_id);
            return Err(refused());
        }
        Ok(session)
    }

    /// Ends the session the refresh token belongs to (its whole family, and
    /// the access tokens issued in it). Does nothing for a token that is
    /// unknown or not the caller's.
    pub async fn logout(&self, caller: &Principal, refresh_token: &str) -> Result<(), ApiError> {
        let hash = sha256_hex(refresh_token);
        if let Some(stored) = self.store.get_refresh_token(&hash).await? {
            if caller.user_id() == Some(stored.user_id) {
                self.store.revoke_refresh_family(&stored.family_id).await?;
                self.revocations.revoked_here(&stored.family_id);
                tracing::info!(user_id = %stored.user_id, "logout");
            }
        }
        Ok(())
    }

    async fn revoke_family_on_reuse(&self, stored: &RefreshToken) -> Result<(), ApiError> {
        tracing::warn!(
            user_id = %stored.user_id,
            family_id = %stored.family_id,
            "refresh token reused; revoking its family"
        );
        self.store.revoke_refresh_family(&stored.family_id).await?;
        self.revocations.revoked_here(&stored.family_id);
        Ok(())
    }

    async fn start_session(&self, user: &User, family_id: String) -> Result<Session, ApiError> {
        let access_token = self.tokens.issue(user, &family_id)?;
        let refresh_token = random_secret();
        let now = crm_models::time::now();
        let ttl = i64::try_from(self.refresh_ttl_s)
            .unwrap_or(MAX_TTL_S)
            .min(MAX_TTL_S);
        self.store
            .insert_refresh_token(&RefreshToken {
                token_hash: sha256_hex(&refresh_token),
                user_id: user.id,
                family_id,
                used: false,
                revoked: false,
                created_at: now,
                expires_at: now + chrono::Duration::seconds(ttl),
            })
            .await?;
        Ok(Session {
            access_token,
            refresh_token,
            expires_in: self.tokens.ttl_s(),
        })
    }
}
