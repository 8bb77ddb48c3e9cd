//! Android devices enrolled by staff, and the incoming-call signals their
//! caller-ID lookups leave for the desktop. A device's token is never stored:
//! only its SHA-256.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{CustomerId, DeviceId, UserId};
use crate::phone::PhoneNumber;
use crate::time::{self, Timestamp};

/// One enrolled phone. Revoked devices are kept (with `revoked_at`) so that
/// engagements they uploaded still name a known device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    /// The staff user who enrolled it and whose phone it is.
    pub user_id: UserId,
    pub name: String,
    /// ISO region (`SG`) for numbers the phone reports without `+`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// SHA-256 of the device token, hex.
    pub token_hash: String,
    /// The first characters of the token, to recognise it in a list.
    pub token_prefix: String,
    #[serde(with = "time::rfc3339")]
    pub created_at: Timestamp,
    #[serde(default, with = "time::rfc3339_option")]
    pub revoked_at: Option<Timestamp>,
    /// When the device last uploaded a batch (to the minute).
    #[serde(default, with = "time::rfc3339_option")]
    pub last_upload_at: Option<Timestamp>,
}

/// A caller-ID lookup: "this customer (or an unknown number) is calling
/// this user's phone now", for a desktop popup. Kept for a few days only;
/// the number is here and never in the signal's event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallSignal {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// The customer the lookup found; `null` when nobody has the number (the
    /// desktop then offers to create one).
    #[serde(default)]
    pub customer_id: Option<CustomerId>,
    pub device_id: DeviceId,
    /// The device's owner.
    pub user_id: UserId,
    #[schema(value_type = String, example = "+6581226418")]
    pub number: PhoneNumber,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

impl CallSignal {
    /// The signal's `call.incoming` event (ids only, never the number; a
    /// desktop stream adds the popup when it pushes it). About no customer
    /// when the number is unknown.
    pub fn incoming_event(&self) -> crate::event::EventEnvelope {
        crate::event::EventEnvelope::new(
            self.customer_id,
            crate::event::DomainEvent::CallIncoming {
                signal_id: self.id,
                device_id: self.device_id,
                user_id: self.user_id,
            },
        )
    }
}
