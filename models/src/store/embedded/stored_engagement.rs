//! Decoding a stored engagement without serde's `flatten`.
//!
//! [`Engagement`] keeps its channel's fields flat beside the common ones
//! (`#[serde(flatten)]` of an internally tagged enum), which serde decodes
//! by buffering every field of the record and reading it a second time.
//! Loading the index decodes millions of stored engagements, so the store
//! reads its own records through [`StoredEngagement`], every field at once,
//! and builds the engagement from it. A record this reader cannot build
//! (a field missing for its channel) is decoded by serde as before, so the
//! result and the error are always serde's.

use std::borrow::Cow;

use serde::Deserialize;

use crate::engagement::{
    CallStatus, Channel, Direction, Engagement, EngagementDetail, PayloadType, Source,
};
use crate::ids::{CustomerId, EngagementId};
use crate::time;

/// Every field an engagement of any channel may have.
#[derive(Deserialize)]
struct StoredEngagement<'a> {
    id: EngagementId,
    customer_id: CustomerId,
    #[serde(borrow)]
    occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    recorded_at: Cow<'a, str>,
    #[serde(default)]
    source: Source,
    channel: Channel,
    #[serde(default)]
    direction: Option<Direction>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    view: Option<String>,
    #[serde(default)]
    view_desc: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    object_id: Option<String>,
    #[serde(default)]
    duration_s: Option<u32>,
    #[serde(default)]
    status: Option<CallStatus>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    payload_type: Option<PayloadType>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    subject: Option<String>,
}

impl StoredEngagement<'_> {
    /// The engagement, or `None` when a field its channel needs is missing
    /// or a time does not parse.
    fn build(self) -> Option<Engagement> {
        let detail = match self.channel {
            Channel::Web => EngagementDetail::Web {
                url: self.url?,
                view: self.view?,
                view_desc: self.view_desc,
                category: self.category,
                object_id: self.object_id,
            },
            Channel::Call => EngagementDetail::Call {
                direction: self.direction?,
                duration_s: self.duration_s?,
                status: self.status?,
            },
            Channel::Sms => EngagementDetail::Sms {
                direction: self.direction?,
                body: self.body?,
            },
            Channel::Whatsapp => EngagementDetail::Whatsapp {
                direction: self.direction?,
                payload_type: self.payload_type?,
                payload: self.payload?,
            },
            Channel::Email => EngagementDetail::Email {
                direction: self.direction?,
                subject: self.subject?,
            },
        };
        Some(Engagement {
            id: self.id,
            customer_id: self.customer_id,
            occurred_at: time::parse(&self.occurred_at).ok()?,
            recorded_at: time::parse(&self.recorded_at).ok()?,
            source: self.source,
            detail,
        })
    }
}

/// An engagement's JSON as the store writes it; `None` when it must be
/// decoded by serde instead (see the module documentation).
pub(super) fn decode(json: &[u8]) -> Option<Engagement> {
    serde_json::from_slice::<StoredEngagement<'_>>(json)
        .ok()
        .and_then(StoredEngagement::build)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engagement::EngagementDetail as D;

    fn with(detail: EngagementDetail, source: Source) -> Engagement {
        Engagement {
            id: EngagementId::new(),
            customer_id: CustomerId::new(),
            occurred_at: time::parse("2026-02-03T04:05:06.789012Z").unwrap(),
            recorded_at: time::parse("2026-02-03T04:05:07Z").unwrap(),
            source,
            detail,
        }
    }

    #[test]
    fn reads_every_channel_as_serde_does() {
        let source = Source {
            device_id: Some(crate::ids::DeviceId::new()),
            client_event_id: Some("c-1".into()),
            user_id: Some("u \"quoted\" \u{e9}".into()),
            via: Some("phone:+6581226418".into()),
        };
        let details = [
            D::Web {
                url: "https://example.com/a?b=c".into(),
                view: "product".into(),
                view_desc: Some("Shoes \\ sale".into()),
                category: Some("retail".into()),
                object_id: Some("42".into()),
            },
            D::Web {
                url: "https://example.com/".into(),
                view: "home".into(),
                view_desc: None,
                category: None,
                object_id: None,
            },
            D::Call {
                direction: Direction::Inbound,
                duration_s: 61,
                status: CallStatus::Missed,
            },
            D::Sms {
                direction: Direction::Outbound,
                body: "line\nbreak \u{1F600}".into(),
            },
            D::Whatsapp {
                direction: Direction::Inbound,
                payload_type: PayloadType::Image,
                payload: "img".into(),
            },
            D::Email {
                direction: Direction::Outbound,
                subject: "Re: order".into(),
            },
        ];
        for detail in details {
            for source in [Source::default(), source.clone()] {
                let e = with(detail.clone(), source);
                let json = serde_json::to_vec(&e).unwrap();
                let by_serde: Engagement = serde_json::from_slice(&json).unwrap();
                assert_eq!(decode(&json), Some(by_serde.clone()));
                assert_eq!(by_serde, e);
            }
        }
    }

    #[test]
    fn leaves_what_it_cannot_build_to_serde() {
        let e = with(
            D::Sms {
                direction: Direction::Inbound,
                body: "hi".into(),
            },
            Source::default(),
        );
        let mut value = serde_json::to_value(&e).unwrap();
        value.as_object_mut().unwrap().remove("body");
        let json = serde_json::to_vec(&value).unwrap();
        assert_eq!(decode(&json), None);
        assert!(serde_json::from_slice::<Engagement>(&json).is_err());
        assert_eq!(decode(b"{not json"), None);
    }
}
