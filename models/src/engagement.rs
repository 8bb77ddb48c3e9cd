//! Engagements: one record per page view, call, SMS, WhatsApp message or email.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{CustomerId, DeviceId, EngagementId};
use crate::time::{self, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Web,
    Call,
    Sms,
    Whatsapp,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Web,
        Channel::Call,
        Channel::Sms,
        Channel::Whatsapp,
        Channel::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::Call => "call",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Email => "email",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s).ok_or(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Answered,
    Missed,
    Rejected,
    Voicemail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadType {
    Text,
    Image,
    File,
}

/// The channel and its own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "channel", rename_all = "lowercase")]
pub enum EngagementDetail {
    Web {
        url: String,
        view: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view_desc: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        category: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object_id: Option<String>,
    },
    Call {
        direction: Direction,
        duration_s: u32,
        status: CallStatus,
    },
    Sms {
        direction: Direction,
        body: String,
    },
    Whatsapp {
        direction: Direction,
        payload_type: PayloadType,
        payload: String,
    },
    Email {
        direction: Direction,
        subject: String,
    },
}

impl EngagementDetail {
    pub fn channel(&self) -> Channel {
        match self {
            EngagementDetail::Web { .. } => Channel::Web,
            EngagementDetail::Call { .. } => Channel::Call,
            EngagementDetail::Sms { .. } => Channel::Sms,
            EngagementDetail::Whatsapp { .. } => Channel::Whatsapp,
            EngagementDetail::Email { .. } => Channel::Email,
        }
    }

    pub fn direction(&self) -> Option<Direction> {
        match self {
            EngagementDetail::Web { .. } => None,
            EngagementDetail::Call { direction, .. }
            | EngagementDetail::Sms { direction, .. }
            | EngagementDetail::Whatsapp { direction, .. }
            | EngagementDetail::Email { direction, .. } => Some(*direction),
        }
    }

    /// A short preview for summaries (never logged).
    pub fn preview(&self) -> String {
        let text = match self {
            EngagementDetail::Web { view, url, .. } => format!("{view} {url}"),
            EngagementDetail::Call {
                status, duration_s, ..
            } => {
                format!("{} call, {duration_s}s", serde_plain(status))
            }
            EngagementDetail::Sms { body, .. } => body.clone(),
            EngagementDetail::Whatsapp {
                payload_type,
                payload,
                ..
            } => match payload_type {
                PayloadType::Text => payload.clone(),
                other => format!("[{}]", serde_plain(other)),
            },
            EngagementDetail::Email { subject, .. } => subject.clone(),
        };
        text.chars().take(80).collect()
    }
}

fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where an engagement came from. `(device_id, client_event_id)` is unique.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_event_id: Option<String>,
    /// The staff user or API key that recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The identifier key that named the customer (`phone:+65...`), when the
    /// writer gave identifiers rather than a customer id. Undoing a merge
    /// sends the engagement to whichever customer owns it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl Source {
    /// A deterministic engagement id for a client-supplied event id, so that a
    /// retried upload collides with the first one on the primary key.
    pub fn idempotent_id(&self) -> Option<EngagementId> {
        let client = self.client_event_id.as_deref()?;
        let origin = match (&self.device_id, &self.user_id) {
            (Some(d), _) => format!("device:{d}"),
            (None, Some(u)) => format!("user:{u}"),
            (None, None) => "anonymous".to_string(),
        };
        let name = format!("{origin}\u{0}{client}");
        Some(EngagementId(Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            name.as_bytes(),
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Engagement {
    pub id: EngagementId,
    pub customer_id: CustomerId,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: Timestamp,
    #[serde(default)]
    pub source: Source,
    #[serde(flatten)]
    pub detail: EngagementDetail,
}

impl Engagement {
    pub fn channel(&self) -> Channel {
        self.detail.channel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_flat_with_the_channel_tag() {
        let e = Engagement {
            id: EngagementId::new(),
            customer_id: CustomerId::new(),
            occurred_at: time::now(),
            recorded_at: time::now(),
            source: Source::default(),
            detail: EngagementDetail::Sms {
                direction: Direction::Inbound,
                body: "hi".into(),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["channel"], "sms");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["body"], "hi");
        let back: Engagement = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn idempotent_ids_depend_on_origin_and_client_id() {
        let d = DeviceId::new();
        let a = Source {
            device_id: Some(d),
            client_event_id: Some("1".into()),
            user_id: None,
            via: None,
        };
        let b = Source {
            device_id: Some(d),
            client_event_id: Some("2".into()),
            user_id: None,
            via: None,
        };
        let c = Source {
            device_id: Some(DeviceId::new()),
            ..a.clone()
        };
        assert_eq!(a.idempotent_id(), a.clone().idempotent_id());
        assert_ne!(a.idempotent_id(), b.idempotent_id());
        assert_ne!(a.idempotent_id(), c.idempotent_id());
        assert_eq!(Source::default().idempotent_id(), None);
    }
}
