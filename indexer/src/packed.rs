//! The caller-ID summary as the Redis index stores it: a compact binary
//! encoding (`postcard`) instead of JSON, under a third of the bytes. The
//! customer's id is not kept (the key names it), engagement ids are their
//! 16 bytes, times are seconds and nanoseconds (each engagement's seconds as
//! the difference from the one before it, the last engagement's from the
//! newest brief's), a brief's channel and direction share a byte, a call's
//! preview is its status and duration, and the main phone and email are not
//! repeated (they are the first of the lists). Readers turn it back into a
//! [`CustomerSummary`] (and JSON where an answer needs it); the round trip
//! is exact, so a fingerprint computed from a stored summary equals the one
//! computed from the store.
//!
//! The first byte is the format's version ([`FORMAT`]). Values of the
//! version before ([`FORMAT_V1`], which also held the id) are still read; a
//! value of any other version reads as corrupt (a rebuild rewrites it).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crm_models::time::Timestamp;
use crm_models::{
    Channel, ChannelCounts, CustomerId, CustomerStatus, Direction, Email, EngagementId, PhoneNumber,
};

use crate::doc::{CustomerSummary, EngagementBrief};

/// The version byte every packed summary starts with.
pub(crate) const FORMAT: u8 = 2;

/// The version before: the id included, times whole, one byte each for
/// channel and direction, every preview as text.
const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("not a packed summary: {0}")]
pub(crate) struct PackError(String);

/// What both formats hold first (version 1 after the id), in this order:
/// postcard writes a nested struct as its fields, so the bytes are those of
/// the fields written one by one.
#[derive(Serialize, Deserialize)]
struct Profile<'a> {
    #[serde(borrow)]
    name: Option<&'a str>,
    status: u8,
    #[serde(borrow)]
    phones: Vec<&'a str>,
    #[serde(borrow)]
    emails: Vec<&'a str>,
    counts: [u64; 5],
}

#[derive(Serialize, Deserialize)]
struct Packed<'a> {
    #[serde(borrow)]
    profile: Profile<'a>,
    /// Seconds after the first brief's (or since 1970 when there is none),
    /// and nanoseconds.
    last_engagement_at: Option<(i64, u32)>,
    #[serde(borrow)]
    last_engagements: Vec<Brief<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Brief<'a> {
    id: [u8; 16],
    /// Channel times three plus the direction (0: none, 1: inbound, 2:
    /// outbound).
    kind: u8,
    /// Seconds after the brief before's (since 1970 for the first), and
    /// nanoseconds.
    occurred_at: (i64, u32),
    #[serde(borrow)]
    preview: Preview<'a>,
}

#[derive(Serialize, Deserialize)]
enum Preview<'a> {
    Text(&'a str),
    /// `<status> call, <seconds>s`, as a call's preview reads.
    Call(u8, u32),
}

/// Call statuses as a call's preview names them.
const CALL_STATUSES: [&str; 4] = ["answered", "missed", "rejected", "voicemail"];

impl<'a> Preview<'a> {
    fn of(channel: Channel, text: &'a str) -> Preview<'a> {
        if channel == Channel::Call {
            if let Some(call) = Self::call(text) {
                return call;
            }
        }
        Preview::Text(text)
    }

    /// `text` as a call's status and duration, if it reads back the same.
    fn call(text: &str) -> Option<Preview<'static>> {
        let (status, rest) = text.split_once(" call, ")?;
        let status = CALL_STATUSES.iter().position(|s| *s == status)?;
        let secs: u32 = rest.strip_suffix('s')?.parse().ok()?;
        let call = Preview::Call(status as u8, secs);
        (call.text() == text).then_some(call)
    }

    fn text(&self) -> String {
        match self {
            Preview::Text(t) => (*t).to_string(),
            Preview::Call(status, secs) => {
                let status = CALL_STATUSES.get(usize::from(*status)).unwrap_or(&"");
                let mut text = String::with_capacity(status.len() + 18);
                text.push_str(status);
                text.push_str(" call, ");
                // Writing into a String cannot fail.
                let _ = write!(text, "{secs}s");
                text
            }
        }
    }
}

/// The layout of [`FORMAT_V1`].
#[derive(Serialize, Deserialize)]
struct PackedV1<'a> {
    id: [u8; 16],
    #[serde(borrow)]
    profile: Profile<'a>,
    last_engagement_at: Option<(i64, u32)>,
    #[serde(borrow)]
    last_engagements: Vec<BriefV1<'a>>,
}

#[derive(Serialize, Deserialize)]
struct BriefV1<'a> {
    id: [u8; 16],
    channel: u8,
    /// 0: none, 1: inbound, 2: outbound.
    direction: u8,
    occurred_at: (i64, u32),
    preview: &'a str,
}

fn time_of(t: &Timestamp) -> (i64, u32) {
    (t.timestamp(), t.timestamp_subsec_nanos())
}

fn time_from((secs, nanos): (i64, u32)) -> Result<Timestamp, PackError> {
    Timestamp::from_timestamp(secs, nanos).ok_or_else(|| PackError("time out of range".into()))
}

fn status_code(s: CustomerStatus) -> u8 {
    match s {
        CustomerStatus::Active => 0,
        CustomerStatus::Inactive => 1,
        CustomerStatus::Merged => 2,
    }
}

fn status_from(c: u8) -> Result<CustomerStatus, PackError> {
    Ok(match c {
        0 => CustomerStatus::Active,
        1 => CustomerStatus::Inactive,
        2 => CustomerStatus::Merged,
        _ => return Err(PackError(format!("status {c}"))),
    })
}

fn channel_code(c: Channel) -> u8 {
    match c {
        Channel::Web => 0,
        Channel::Call => 1,
        Channel::Sms => 2,
        Channel::Whatsapp => 3,
        Channel::Email => 4,
    }
}

fn channel_from(c: u8) -> Result<Channel, PackError> {
    Ok(match c {
        0 => Channel::Web,
        1 => Channel::Call,
        2 => Channel::Sms,
        3 => Channel::Whatsapp,
        4 => Channel::Email,
        _ => return Err(PackError(format!("channel {c}"))),
    })
}

fn direction_code(d: Option<Direction>) -> u8 {
    match d {
        None => 0,
        Some(Direction::Inbound) => 1,
        Some(Direction::Outbound) => 2,
    }
}

fn direction_from(c: u8) -> Result<Option<Direction>, PackError> {
    Ok(match c {
        0 => None,
        1 => Some(Direction::Inbound),
        2 => Some(Direction::Outbound),
        _ => return Err(PackError(format!("direction {c}"))),
    })
}

/// `summary` packed, version byte first (its id is not kept: the key names
/// it).
pub(crate) fn pack(summary: &CustomerSummary) -> Vec<u8> {
    let mut before: Option<i64> = None;
    let last_engagements: Vec<Brief<'_>> = summary
        .last_engagements
        .iter()
        .map(|e| {
            let (secs, nanos) = time_of(&e.occurred_at);
            let delta = secs.wrapping_sub(before.unwrap_or(0));
            before = Some(secs);
            Brief {
                id: *e.id.0.as_bytes(),
                kind: channel_code(e.channel) * 3 + direction_code(e.direction),
                occurred_at: (delta, nanos),
                preview: Preview::of(e.channel, &e.preview),
            }
        })
        .collect();
    let first = summary
        .last_engagements
        .first()
        .map(|e| e.occurred_at.timestamp());
    let packed = Packed {
        profile: Profile::of(summary),
        last_engagement_at: summary.last_engagement_at.as_ref().map(|t| {
            let (secs, nanos) = time_of(t);
            (secs.wrapping_sub(first.unwrap_or(0)), nanos)
        }),
        last_engagements,
    };
    let out = vec![FORMAT];
    // Writing plain data into a Vec cannot fail.
    match postcard::to_extend(&packed, out) {
        Ok(v) => v,
        Err(_) => vec![FORMAT],
    }
}

/// A packed summary of the customer `id` read back.
pub(crate) fn unpack(id: CustomerId, bytes: &[u8]) -> Result<CustomerSummary, PackError> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => unpack_v2(id, body),
        Some((&FORMAT_V1, body)) => unpack_v1(body),
        Some((v, _)) => Err(PackError(format!("format {v}"))),
        None => Err(PackError("empty".into())),
    }
}

fn unpack_v2(id: CustomerId, body: &[u8]) -> Result<CustomerSummary, PackError> {
    let p: Packed<'_> = postcard::from_bytes(body).map_err(|e| PackError(e.to_string()))?;
    let mut before: Option<i64> = None;
    let mut first: Option<i64> = None;
    let last_engagements = p
        .last_engagements
        .into_iter()
        .map(|b| {
            let (delta, nanos) = b.occurred_at;
            let secs = before.unwrap_or(0).wrapping_add(delta);
            before = Some(secs);
            first.get_or_insert(secs);
            Ok(EngagementBrief {
                id: EngagementId(uuid::Uuid::from_bytes(b.id)),
                channel: channel_from(b.kind / 3)?,
                direction: direction_from(b.kind % 3)?,
                occurred_at: time_from((secs, nanos))?,
                preview: b.preview.text(),
            })
        })
        .collect::<Result<Vec<_>, PackError>>()?;
    let last_engagement_at = p
        .last_engagement_at
        .map(|(delta, nanos)| time_from((first.unwrap_or(0).wrapping_add(delta), nanos)))
        .transpose()?;
    p.profile.summary(id, last_engagement_at, last_engagements)
}

fn unpack_v1(body: &[u8]) -> Result<CustomerSummary, PackError> {
    let p: PackedV1<'_> = postcard::from_bytes(body).map_err(|e| PackError(e.to_string()))?;
    let last_engagements = p
        .last_engagements
        .into_iter()
        .map(|b| {
            Ok(EngagementBrief {
                id: EngagementId(uuid::Uuid::from_bytes(b.id)),
                channel: channel_from(b.channel)?,
                direction: direction_from(b.direction)?,
                occurred_at: time_from(b.occurred_at)?,
                preview: b.preview.to_string(),
            })
        })
        .collect::<Result<Vec<_>, PackError>>()?;
    let last_engagement_at = p.last_engagement_at.map(time_from).transpose()?;
    p.profile.summary(
        CustomerId(uuid::Uuid::from_bytes(p.id)),
        last_engagement_at,
        last_engagements,
    )
}

impl<'a> Profile<'a> {
    fn of(summary: &'a CustomerSummary) -> Profile<'a> {
        let c = &summary.counts;
        Profile {
            name: summary.name.as_deref(),
            status: status_code(summary.status),
            phones: summary.phones.iter().map(PhoneNumber::as_str).collect(),
            emails: summary.emails.iter().map(Email::as_str).collect(),
            counts: [c.web, c.call, c.sms, c.whatsapp, c.email],
        }
    }

    /// The summary of the customer `id` with this profile and these
    /// engagements.
    fn summary(
        self,
        id: CustomerId,
        last_engagement_at: Option<Timestamp>,
        last_engagements: Vec<EngagementBrief>,
    ) -> Result<CustomerSummary, PackError> {
        let phones: Vec<PhoneNumber> = self
            .phones
            .iter()
            .map(|s| PhoneNumber::from_e164_unchecked((*s).to_string()))
            .collect();
        let emails: Vec<Email> = self
            .emails
            .iter()
            .map(|s| Email::from_normalised_unchecked((*s).to_string()))
            .collect();
        let [web, call, sms, whatsapp, email] = self.counts;
        Ok(CustomerSummary {
            id,
            name: self.name.map(str::to_string),
            status: status_from(self.status)?,
            phone: phones.first().cloned(),
            email: emails.first().cloned(),
            phones,
            emails,
            counts: ChannelCounts {
                web,
                call,
                sms,
                whatsapp,
                email,
            },
            last_engagement_at,
            last_engagements,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;
    use crm_models::time;

    /// `summary` as the version before packed it.
    fn pack_v1(summary: &CustomerSummary) -> Vec<u8> {
        let v1 = PackedV1 {
            id: *summary.id.0.as_bytes(),
            profile: Profile::of(summary),
            last_engagement_at: summary.last_engagement_at.as_ref().map(time_of),
            last_engagements: summary
                .last_engagements
                .iter()
                .map(|e| BriefV1 {
                    id: *e.id.0.as_bytes(),
                    channel: channel_code(e.channel),
                    direction: direction_code(e.direction),
                    occurred_at: time_of(&e.occurred_at),
                    preview: &e.preview,
                })
                .collect(),
        };
        postcard::to_extend(&v1, vec![FORMAT_V1]).unwrap()
    }

    #[test]
    fn packed_summaries_read_back_equal_and_take_under_a_third_of_the_json() {
        let (mut packed_bytes, mut v1_bytes, mut json_bytes) = (0usize, 0usize, 0usize);
        for doc in generate::customers(7, 500) {
            let summary = doc.summary();
            let packed = pack(&summary);
            assert_eq!(packed[0], FORMAT);
            let back = unpack(summary.id, &packed).unwrap();
            assert_eq!(back, summary);
            assert_eq!(
                crate::doc::fingerprint_of(&back),
                doc.fingerprint(),
                "a fingerprint from the packed summary equals the store's"
            );
            // The version before still reads, to the same summary.
            let v1 = pack_v1(&summary);
            assert_eq!(unpack(CustomerId::new(), &v1).unwrap(), summary);
            packed_bytes += packed.len();
            v1_bytes += v1.len();
            json_bytes += serde_json::to_vec(&summary).unwrap().len();
        }
        assert!(
            packed_bytes * 3 < json_bytes,
            "packed {packed_bytes} bytes, JSON {json_bytes}"
        );
        assert!(
            packed_bytes * 10 < v1_bytes * 9,
            "packed {packed_bytes} bytes, the version before {v1_bytes}"
        );
    }

    /// A value of version 1 as it was written (the summary of
    /// `generate::customer(7, 1)` with its two newest engagements).
    const V1_BYTES: &str = "01a95d9b2b1dc44b038c4814fc421c0c7e011541697368776172796120476f76696e646173616d7900010b2b3635383833363837393402216169736877617279612e676f76696e646173616d7940686f746d61696c2e636f6d1561697368776172796132373333406462732e636f6d020103000101c6aa93920d00021ac77a1dad1e4d2d99887d51c13f275a0202c6aa93920d004e4869204169736877617279612c20596f7572206f7264657220686173206265656e207368697070656420616e642077696c6c2061727269766520696e20322d3320776f726b696e6720646179732e23378af2f30542b594170f590e5316560202bef180900d003d596f7572204f54502069732076616c696420666f722035206d696e757465732e20446f206e6f74207368617265206974207769746820616e796f6e652e";

    #[test]
    fn values_written_in_version_1_read_back() {
        let mut summary = generate::customer(7, 1).summary();
        summary.last_engagements.truncate(2);
        let bytes: Vec<u8> = (0..V1_BYTES.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&V1_BYTES[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(pack_v1(&summary), bytes);
        assert_eq!(unpack(CustomerId::new(), &bytes).unwrap(), summary);
    }

    #[test]
    fn unusual_summaries_read_back_exactly() {
        let mut summary = generate::customer(7, 3).summary();
        let at = |s: &str| time::parse(s).unwrap();
        let brief = |channel, preview: &str, when: &str| EngagementBrief {
            id: EngagementId::new(),
            channel,
            direction: Some(Direction::Inbound),
            occurred_at: at(when),
            preview: preview.to_string(),
        };
        summary.last_engagements = vec![
            // Out of order, before 1970, with nanoseconds.
            brief(
                Channel::Call,
                "answered call, 12s",
                "2026-01-01T00:00:00.123456789Z",
            ),
            brief(Channel::Call, "answered call, 012s", "1960-05-01T00:00:00Z"),
            brief(Channel::Call, "missed call, 0s", "2030-01-01T00:00:00Z"),
            brief(Channel::Call, "Answered call, 5s", "2030-01-01T00:00:00Z"),
            brief(
                Channel::Call,
                "answered call, 99999999999s",
                "2030-01-01T00:00:00Z",
            ),
            brief(Channel::Sms, "answered call, 12s", "2030-01-01T00:00:00Z"),
            brief(Channel::Web, "", "2030-01-01T00:00:00Z"),
        ];
        summary.last_engagements[6].direction = None;
        for last in [None, Some(at("1999-12-31T23:59:59.5Z"))] {
            summary.last_engagement_at = last;
            let back = unpack(summary.id, &pack(&summary)).unwrap();
            assert_eq!(back, summary);
        }
        summary.last_engagements.clear();
        summary.last_engagement_at = Some(at("2026-01-01T00:00:00Z"));
        assert_eq!(unpack(summary.id, &pack(&summary)).unwrap(), summary);
        // A call's preview is its status and duration.
        assert_eq!(
            Preview::call("voicemail call, 0s").map(|p| p.text()),
            Some("voicemail call, 0s".to_string())
        );
        assert!(Preview::call("answered call, 1.5s").is_none());
    }

    #[test]
    fn other_versions_and_garbage_read_as_errors() {
        let summary = generate::customer(7, 1).summary();
        let mut packed = pack(&summary);
        assert!(unpack(summary.id, &[]).is_err());
        assert!(unpack(summary.id, &packed[..packed.len() / 2]).is_err());
        packed[0] = FORMAT + 1;
        assert!(unpack(summary.id, &packed).is_err());
    }
}
