//! Staff accounts: creating, listing and changing users.

use std::str::FromStr;

use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::ids::UserId;
use crm_models::service::FieldError;
use crm_models::staff::{Role, User};
use crm_models::store::{Store, StoreError};
use crm_models::Email;
use serde::{Deserialize, Serialize};

use super::password::{self, NewPassword};
use super::Auth;
use crate::error::ApiError;

/// Longest staff name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// The roles a staff user can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    Admin,
    Agent,
}

impl From<StaffRole> for Role {
    fn from(r: StaffRole) -> Role {
        match r {
            StaffRole::Admin => Role::Admin,
            StaffRole::Agent => Role::Agent,
        }
    }
}

impl FromStr for StaffRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(StaffRole::Admin),
            "agent" => Ok(StaffRole::Agent),
            other => Err(format!("unknown role `{other}`; expected admin or agent")),
        }
    }
}

/// A user to create, checked.
#[derive(Debug)]
pub struct NewUser {
    email: Email,
    name: String,
    role: StaffRole,
    password: NewPassword,
    team: Option<String>,
}

impl NewUser {
    /// Checks every field and reports all that are wrong at once.
    pub fn parse(
        email: &str,
        name: &str,
        role: StaffRole,
        password: String,
    ) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let email = Email::parse(email)
            .map_err(|e| errors.push(FieldError::new("email", e)))
            .ok();
        let name = clean_name(name)
            .map_err(|m| errors.push(FieldError::new("name", m)))
            .ok();
        let password = NewPassword::parse(password)
            .map_err(|m| errors.push(FieldError::new("password", m)))
            .ok();
        match (email, name, password) {
            (Some(email), Some(name), Some(password)) if errors.is_empty() => Ok(NewUser {
                email,
                name,
                role,
                password,
                team: None,
            }),
            _ => Err(ApiError::Validation(errors)),
        }
    }

    /// The user's team (see [`parse_team`]).
    pub fn with_team(mut self, raw: Option<&str>) -> Result<Self, ApiError> {
        self.team = raw.map(parse_team).transpose()?.flatten();
        Ok(self)
    }
}

/// Longest team name accepted, in characters.
pub const MAX_TEAM_CHARS: usize = 100;

/// A team name: trimmed, at most [`MAX_TEAM_CHARS`], no control
/// characters; empty means no team.
pub fn parse_team(raw: &str) -> Result<Option<String>, ApiError> {
    let team = raw.trim();
    if team.chars().count() > MAX_TEAM_CHARS {
        return Err(ApiError::field(
            "team",
            format!("must be at most {MAX_TEAM_CHARS} characters long"),
        ));
    }
    if team.chars().any(char::is_control) {
        return Err(ApiError::field(
            "team",
            "must not contain control characters",
        ));
    }
    Ok((!team.is_empty()).then(|| team.to_string()))
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub role: Option<StaffRole>,
    pub password: Option<NewPassword>,
    pub active: Option<bool>,
    /// `Some(None)` takes the user out of their team.
    pub team: Option<Option<String>>,
}

impl UserPatch {
    pub fn parse(
        name: Option<&str>,
        role: Option<StaffRole>,
        password: Option<String>,
        active: Option<bool>,
    ) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let name = match name.map(clean_name).transpose() {
            Ok(n) => n,
            Err(m) => {
                errors.push(FieldError::new("name", m));
                None
            }
        };
        let password = match password.map(NewPassword::parse).transpose() {
            Ok(p) => p,
            Err(m) => {
                errors.push(FieldError::new("password", m));
                None
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(UserPatch {
            name,
            role,
            password,
            active,
            team: None,
        })
    }
}

/// Trimmed; may be empty (the CLI does not require one); no control characters.
fn clean_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters long"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_string())
}

pub(super) fn email_taken() -> ApiError {
    ApiError::Conflict {
        code: crate::error::ErrorCode::EmailTaken,
        detail: "a user with this email exists already".into(),
        customers: Vec::new(),
    }
}

pub(super) fn user_not_found(id: UserId) -> ApiError {
    ApiError::not_found(
        crate::error::ErrorCode::UserNotFound,
        format!("user {id} not found"),
    )
}

/// Hashes the password and inserts the user; `email_taken` when the email is in use.
pub(super) async fn create_user(store: &dyn Store, new: NewUser) -> Result<User, ApiError> {
    let password_hash = password::hash(new.password).await?;
    let now = crm_models::time::now();
    let user = User {
        id: UserId::new(),
        email: new.email,
        name: new.name,
        role: new.role.into(),
        password_hash,
        active: true,
        team: new.team,
        created_at: now,
        updated_at: now,
    };
    let event = EventEnvelope::new(None, DomainEvent::UserCreated { user_id: user.id });
    match store.insert_user(&user, &[event]).await {
        Ok(()) => {
            tracing::info!(user_id = %user.id, role = user.role.as_str(), "user created");
            Ok(user)
        }
        Err(StoreError::Conflict(_)) => Err(email_taken()),
        Err(e) => Err(e.into()),
    }
}

impl Auth {
    pub async fn create_user(&self, new: NewUser) -> Result<User, ApiError> {
        create_user(self.store.as_ref(), new).await
    }

    pub async fn get_user(&self, id: UserId) -> Result<User, ApiError> {
        self.store
            .get_user(id)
            .await?
            .ok_or_else(|| user_not_found(id))
    }

    /// Up to `limit` users after `after`, by id, and whether more follow.
    pub async fn list_users(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), ApiError> {
        let mut users = self
            .store
            .list_users(after, limit.saturating_add(1))
            .await?;
        let more = users.len() > limit;
        users.truncate(limit);
        Ok((users, more))
    }

    /// Applies `patch` to user `id` on behalf of `actor`. Deactivating a user
    /// or setting a password ends the user's sessions: their refresh tokens
    /// and the access tokens issued with them, on every instance within a
    /// second (a role change applies at once: authentication reads `active`
    /// and `role` from the store). Admins cannot deactivate or demote
    /// themselves, so that the last admin cannot lock everybody out by mistake.
    pub async fn update_user(
        &self,
        actor: Option<UserId>,
        id: UserId,
        patch: UserPatch,
    ) -> Result<User, ApiError> {
        let mut user = self.get_user(id).await?;
        if actor == Some(id) {
            let mut errors = Vec::new();
            if patch.active == Some(false) {
                errors.push(FieldError::new(
                    "active",
                    "you cannot deactivate your own account",
                ));
            }
            if patch.role.is_some_and(|r| Role::from(r) != user.role) {
                errors.push(FieldError::new("role", "you cannot change your own role"));
            }
            if !errors.is_empty() {
                return Err(ApiError::Validation(errors));
            }
        }
        let ends_sessions = patch.active == Some(false) || patch.password.is_some();
        let before = user.clone();
        if let Some(name) = patch.name {
            user.name = name;
        }
        if let Some(role) = patch.role {
            user.role = role.into();
        }
        if let Some(active) = patch.active {
            user.active = active;
        }
        if let Some(team) = patch.team {
            user.team = team;
        }
        if let Some(password) = patch.password {
            user.password_hash = password::hash(password).await?;
        }
        user.updated_at = crm_models::time::now();
        let event = if patch.active == Some(false) && before.active {
            DomainEvent::UserDeactivated { user_id: id }
        } else {
            DomainEvent::UserUpdated {
                user_id: id,
                fields: user_fields(&before, &user),
            }
        };
        match self
            .store
            .update_user(&user, &[EventEnvelope::new(None, event)])
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(user_not_found(id)),
            Err(StoreError::Conflict(_)) => return Err(email_taken()),
            Err(e) => return Err(e.into()),
        }
        if ends_sessions {
            self.store.revoke_user_refresh_tokens(id).await?;
            self.revocations.changed_here();
        }
        tracing::info!(user_id = %id, role = user.role.as_str(), active = user.active, "user updated");
        Ok(user)
    }
}

/// Which of a user's fields changed (for `user.updated`; no values).
fn user_fields(before: &User, after: &User) -> Vec<String> {
    let mut fields = Vec::new();
    if before.name != after.name {
        fields.push("name");
    }
    if before.role != after.role {
        fields.push("role");
    }
    if before.active != after.active {
        fields.push("active");
    }
    if before.password_hash != after.password_hash {
        fields.push("password");
    }
    if before.team != after.team {
        fields.push("team");
    }
    fields.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_names(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn new_users_report_every_bad_field() {
        let ok = NewUser::parse(
            " Ann@Example.com ",
            " Ann Tan ",
            StaffRole::Agent,
            "twelve chars".into(),
        )
        .unwrap();
        assert_eq!(ok.email.as_str(), "ann@example.com");
        assert_eq!(ok.name, "Ann Tan");
        let bad = NewUser::parse("nope", "a\u{7}b", StaffRole::Admin, "short".into()).unwrap_err();
        assert_eq!(field_names(bad), ["email", "name", "password"]);
        assert!(
            NewUser::parse("a@example.com", "", StaffRole::Admin, "long enough!".into()).is_ok()
        );
    }

    #[test]
    fn patches_check_what_they_change() {
        assert!(UserPatch::parse(None, None, None, Some(false)).is_ok());
        let bad =
            UserPatch::parse(Some(&"x".repeat(201)), None, Some("short".into()), None).unwrap_err();
        assert_eq!(field_names(bad), ["name", "password"]);
    }

    #[test]
    fn staff_roles_parse_from_the_cli() {
        assert_eq!("admin".parse::<StaffRole>(), Ok(StaffRole::Admin));
        assert_eq!(
            Role::from("agent".parse::<StaffRole>().unwrap()),
            Role::Agent
        );
        assert!("service".parse::<StaffRole>().is_err());
    }
}
