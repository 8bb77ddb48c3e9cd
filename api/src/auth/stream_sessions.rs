//! The staff session behind a live stream (`GET /v1/stream`).
//!
//! A stream outlives the request that opened it, so it keeps who opened it
//! and in which session (the access token's `sid`, which a stream ticket
//! carries too), and asks again every few seconds whether that session and
//! its user still hold: a logout, a deactivation or a new password ends the
//! stream as it ends the session's access tokens. The expiry of the access
//! token that opened the stream does not end it; the session does.

use axum::http::HeaderMap;
use crm_models::ids::UserId;
use crm_models::staff::Role;

use super::{credential, Auth, Credential, INVALID};
use crate::error::ApiError;

/// Who holds a live stream, and in which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSession {
    pub user_id: UserId,
    /// The stored role when the stream was opened.
    pub role: Role,
    /// The session (refresh-token family) the stream belongs to.
    pub sid: String,
}

impl Auth {
    /// The staff session of an `Authorization: Bearer <access token>`
    /// header. API keys and device tokens cannot hold a stream.
    pub async fn stream_session(&self, headers: &HeaderMap) -> Result<StreamSession, ApiError> {
        let token = match credential(headers)? {
            Credential::AccessToken(token) => token,
            Credential::ApiKey(_) => return Err(ApiError::Forbidden),
        };
        let principal = self.authenticate_token(token).await?;
        let claims = self
            .tokens
            .verify(token)
            .map_err(|_| ApiError::Unauthorized(INVALID))?;
        let user_id = principal.user_id().ok_or(ApiError::Unauthorized(INVALID))?;
        staff_session(user_id, principal.role, claims.sid)
    }

    /// The session `sid` of user `user_id` (named by a stream ticket), if
    /// the user is active staff and the session has not ended.
    pub async fn resume_stream_session(
        &self,
        user_id: UserId,
        sid: String,
    ) -> Result<StreamSession, ApiError> {
        let user = match self.store.get_user(user_id).await? {
            Some(user) if user.active => user,
            _ => return Err(ApiError::Unauthorized(INVALID)),
        };
        if self.revocations.is_revoked(&sid).await? {
            return Err(ApiError::Unauthorized(INVALID));
        }
        staff_session(user.id, user.role, sid)
    }

    /// The stream's user was deactivated or changed, maybe through another
    /// instance, which ended their sessions: the next session check reads
    /// the ended sessions from the store.
    pub fn stream_user_changed(&self) {
        self.revocations.changed_here();
    }

    /// Whether the session has not ended (from memory, at most half a second
    /// old; see `revocations`).
    pub async fn stream_session_open(&self, session: &StreamSession) -> Result<bool, ApiError> {
        Ok(!self.revocations.is_revoked(&session.sid).await?)
    }

    /// Whether the stored user is still active with the role the stream
    /// was opened with (one store read).
    pub async fn stream_user_unchanged(&self, session: &StreamSession) -> Result<bool, ApiError> {
        Ok(self
            .store
            .get_user(session.user_id)
            .await?
            .is_some_and(|u| u.active && u.role == session.role))
    }
}

fn staff_session(user_id: UserId, role: Role, sid: String) -> Result<StreamSession, ApiError> {
    if !matches!(role, Role::Admin | Role::Agent) {
        return Err(ApiError::Forbidden);
    }
    if sid.is_empty() {
        return Err(ApiError::Unauthorized(INVALID));
    }
    Ok(StreamSession { user_id, role, sid })
}
