//! Device enrollment, device tokens and the extractor that authenticates them.
//!
//! A device token is `crm_dev_` + 32 random bytes (base64url), shown once at
//! enrollment. The store keeps its SHA-256, and every request looks the hash
//! up again, so revoking a device (or deactivating its owner) refuses its
//! token from the next request on.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use crm_models::device::Device;
use crm_models::ids::{DeviceId, UserId};
use crm_models::time::{self, Timestamp};
use crm_models::Region;
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::MobileBridge;
use crm_models::problem::{ApiError, ErrorCode};

/// Every device token starts with this, so a bearer value is recognisable as one.
pub const DEVICE_TOKEN_PREFIX: &str = "crm_dev_";
/// Characters of the token kept in clear (`crm_dev_` and 8 random ones).
const SHOWN_PREFIX_CHARS: usize = DEVICE_TOKEN_PREFIX.len() + 8;
/// Longest device name accepted, in characters.
pub const MAX_DEVICE_NAME_CHARS: usize = 100;

const MISSING: &str =
    "missing credentials: send `Authorization: Bearer <device token>` (crm_dev_...)";
const NOT_A_DEVICE: &str = "the mobile routes take a device token (crm_dev_...); staff tokens and API keys do not work here";
const INVALID: &str = "invalid or revoked device token";

/// How the token is stored and looked up: SHA-256, lowercase hex. A plain
/// hash suffices: the token is 256 random bits, not a guessable password.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{DEVICE_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// A device to enroll, checked.
#[derive(Debug)]
pub struct NewDevice {
    name: String,
    default_region: Option<String>,
}

impl NewDevice {
    pub fn parse(name: &str, default_region: Option<&str>) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let name = name.trim();
        if name.is_empty() {
            errors.push(("name", "must not be empty".to_string()));
        } else if name.chars().count() > MAX_DEVICE_NAME_CHARS {
            errors.push((
                "name",
                format!("must be at most {MAX_DEVICE_NAME_CHARS} characters long"),
            ));
        } else if name.chars().any(char::is_control) {
            errors.push(("name", "must not contain control characters".to_string()));
        }
        let default_region = match default_region.map(str::trim) {
            None | Some("") => None,
            Some(raw) => match Region::parse(raw) {
                Ok(_) => Some(raw.to_ascii_uppercase()),
                Err(e) => {
                    errors.push(("default_region", e.to_string()));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(
                errors
                    .into_iter()
                    .map(|(f, m)| crm_models::service::FieldError::new(f, m))
                    .collect(),
            ));
        }
        Ok(NewDevice {
            name: name.to_string(),
            default_region,
        })
    }
}

/// A device as lists show it: no token, no hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub id: DeviceId,
    /// The staff user whose phone it is.
    pub user_id: UserId,
    pub name: String,
    /// ISO region for numbers the phone reports without `+`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// The first characters of the token, to recognise it.
    pub token_prefix: String,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Set once the device is revoked.
    #[serde(with = "time::rfc3339_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
    /// When the device last uploaded events (to the minute).
    #[serde(with = "time::rfc3339_option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_upload_at: Option<Timestamp>,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        DeviceView {
            id: d.id,
            user_id: d.user_id,
            name: d.name,
            default_region: d.default_region,
            token_prefix: d.token_prefix,
            created_at: d.created_at,
            revoked_at: d.revoked_at,
            last_upload_at: d.last_upload_at,
        }
    }
}

/// A device just enrolled, with its token: the only time the token exists
/// outside the phone.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EnrolledDevice {
    #[serde(flatten)]
    pub device: DeviceView,
    /// `crm_dev_...`: send as `Authorization: Bearer <token>` on `/v1/mobile/*`.
    pub token: String,
}

impl std::fmt::Debug for EnrolledDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolledDevice")
            .field("device", &self.device)
            .field("token", &"<redacted>")
            .finish()
    }
}

fn device_not_found(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(ErrorCode::DeviceNotFound, format!("no active device {id}"))
}

impl MobileBridge {
    /// Enrolls a device for `user` and creates its token.
    pub async fn enroll(&self, user: UserId, new: NewDevice) -> Result<EnrolledDevice, ApiError> {
        let token = new_token();
        let device = Device {
            id: DeviceId::new(),
            user_id: user,
            name: new.name,
            default_region: new.default_region,
            token_hash: token_hash(&token),
            token_prefix: token.chars().take(SHOWN_PREFIX_CHARS).collect(),
            created_at: time::now(),
            revoked_at: None,
            last_upload_at: None,
        };
        self.store().insert_device(&device).await?;
        tracing::info!(device_id = %device.id, user_id = %user, "device enrolled");
        Ok(EnrolledDevice {
            device: device.into(),
            token,
        })
    }

    /// The user's devices, or every device for `None`; revoked ones too.
    pub async fn devices(&self, user: Option<UserId>) -> Result<Vec<DeviceView>, ApiError> {
        Ok(self
            .store()
            .list_devices(user)
            .await?
            .into_iter()
            .map(DeviceView::from)
            .collect())
    }

    /// Revokes a device. `owner` limits it to that user's devices (agents
    /// revoke their own; admins pass `None`). `device_not_found` when
    /// unknown, someone else's, or revoked already.
    pub async fn revoke(&self, id: &str, owner: Option<UserId>) -> Result<(), ApiError> {
        let id: DeviceId = id
            .parse()
            .map_err(|_| device_not_found(format!("{id:?}")))?;
        let device = self
            .store()
            .get_device(id)
            .await?
            .filter(|d| owner.is_none_or(|u| u == d.user_id))
            .ok_or_else(|| device_not_found(id))?;
        if !self.store().revoke_device(device.id, time::now()).await? {
            return Err(device_not_found(id));
        }
        tracing::info!(device_id = %id, "device revoked");
        Ok(())
    }

    /// The active device presenting this token whose owner is still active.
    pub async fn authenticate(&self, token: &str) -> Result<Device, ApiError> {
        let device = self
            .store()
            .get_device_by_token_hash(&token_hash(token))
            .await?
            .filter(|d| d.revoked_at.is_none())
            .ok_or(ApiError::Unauthorized(INVALID))?;
        match self.store().get_user(device.user_id).await? {
            Some(user) if user.active => Ok(device),
            _ => Err(ApiError::Unauthorized(INVALID)),
        }
    }
}

/// The authenticated device on a `/v1/mobile/*` route. Staff tokens and API
/// keys are refused here.
#[derive(Debug, Clone)]
pub struct DeviceCaller(pub Device);

impl FromRequestParts<MobileBridge> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        bridge: &MobileBridge,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            if parts.headers.contains_key("x-api-key") {
                return Err(ApiError::Unauthorized(NOT_A_DEVICE));
            }
            return Err(ApiError::Unauthorized(MISSING));
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized(INVALID))?;
        let token = match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(ApiError::Unauthorized(INVALID)),
        };
        if !token.starts_with(DEVICE_TOKEN_PREFIX) {
            return Err(ApiError::Unauthorized(NOT_A_DEVICE));
        }
        bridge.authenticate(token).await.map(DeviceCaller)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert!(a.starts_with(DEVICE_TOKEN_PREFIX));
        assert_eq!(a.len(), DEVICE_TOKEN_PREFIX.len() + 43);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn new_devices_need_a_name_and_a_known_region() {
        let d = NewDevice::parse(" Ann's Pixel ", Some("sg")).unwrap();
        assert_eq!(d.name, "Ann's Pixel");
        assert_eq!(d.default_region.as_deref(), Some("SG"));
        assert_eq!(NewDevice::parse("x", None).unwrap().default_region, None);
        match NewDevice::parse(" ", Some("XX")) {
            Err(ApiError::Validation(errors)) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["name", "default_region"]);
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }
}
