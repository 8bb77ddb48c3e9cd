//! The caller-ID summary as the Redis index stores it: a compact binary
//! encoding (`postcard`) instead of JSON, about a third of the bytes. Ids are
//! their 16 bytes, times seconds and nanoseconds, enums one byte each, and
//! the main phone and email are not repeated (they are the first of the
//! lists). Readers turn it back into a [`CustomerSummary`] (and JSON where an
//! answer needs it); the round trip is exact, so a fingerprint computed from
//! a stored summary equals the one computed from the store.
//!
//! The first byte is the format's version ([`FORMAT`]); a value of another
//! version reads as corrupt (a rebuild rewrites it).

use serde::{Deserialize, Serialize};

use crm_models::time::Timestamp;
use crm_models::{
    Channel, ChannelCounts, CustomerId, CustomerStatus, Direction, Email, EngagementId, PhoneNumber,
};

use crate::doc::{CustomerSummary, EngagementBrief};

/// The version byte every packed summary starts with.
pub(crate) const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("not a packed summary: {0}")]
pub(crate) struct PackError(String);

#[derive(Serialize, Deserialize)]
struct Packed<'a> {
    id: [u8; 16],
    #[serde(borrow)]
    name: Option<&'a str>,
    status: u8,
    #[serde(borrow)]
    phones: Vec<&'a str>,
    #[serde(borrow)]
    emails: Vec<&'a str>,
    counts: [u64; 5],
    last_engagement_at: Option<(i64, u32)>,
    #[serde(borrow)]
    last_engagements: Vec<Brief<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Brief<'a> {
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

/// `summary` packed, version byte first.
pub(crate) fn pack(summary: &CustomerSummary) -> Vec<u8> {
    let c = &summary.counts;
    let packed = Packed {
        id: *summary.id.0.as_bytes(),
        name: summary.name.as_deref(),
        status: status_code(summary.status),
        phones: summary.phones.iter().map(PhoneNumber::as_str).collect(),
        emails: summary.emails.iter().map(Email::as_str).collect(),
        counts: [c.web, c.call, c.sms, c.whatsapp, c.email],
        last_engagement_at: summary.last_engagement_at.as_ref().map(time_of),
        last_engagements: summary
            .last_engagements
            .iter()
            .map(|e| Brief {
                id: *e.id.0.as_bytes(),
                channel: channel_code(e.channel),
                direction: direction_code(e.direction),
                occurred_at: time_of(&e.occurred_at),
                preview: &e.preview,
            })
            .collect(),
    };
    let out = vec![FORMAT];
    // Writing plain data into a Vec cannot fail.
    match postcard::to_extend(&packed, out) {
        Ok(v) => v,
        Err(_) => vec![FORMAT],
    }
}

/// A packed summary read back.
pub(crate) fn unpack(bytes: &[u8]) -> Result<CustomerSummary, PackError> {
    let body = match bytes.split_first() {
        Some((&FORMAT, body)) => body,
        Some((v, _)) => return Err(PackError(format!("format {v}"))),
        None => return Err(PackError("empty".into())),
    };
    let p: Packed<'_> = postcard::from_bytes(body).map_err(|e| PackError(e.to_string()))?;
    let phones: Vec<PhoneNumber> = p
        .phones
        .iter()
        .map(|s| PhoneNumber::from_e164_unchecked((*s).to_string()))
        .collect();
    let emails: Vec<Email> = p
        .emails
        .iter()
        .map(|s| Email::from_normalised_unchecked((*s).to_string()))
        .collect();
    let [web, call, sms, whatsapp, email] = p.counts;
    Ok(CustomerSummary {
        id: CustomerId(uuid::Uuid::from_bytes(p.id)),
        name: p.name.map(str::to_string),
        status: status_from(p.status)?,
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
        last_engagement_at: p.last_engagement_at.map(time_from).transpose()?,
        last_engagements: p
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
            .collect::<Result<_, PackError>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    #[test]
    fn packed_summaries_read_back_equal_and_take_a_third_of_the_json() {
        let (mut packed_bytes, mut json_bytes) = (0usize, 0usize);
        for doc in generate::customers(7, 500) {
            let summary = doc.summary();
            let packed = pack(&summary);
            assert_eq!(packed[0], FORMAT);
            let back = unpack(&packed).unwrap();
            assert_eq!(back, summary);
            assert_eq!(
                crate::doc::fingerprint_of(&back),
                doc.fingerprint(),
                "a fingerprint from the packed summary equals the store's"
            );
            packed_bytes += packed.len();
            json_bytes += serde_json::to_vec(&summary).unwrap().len();
        }
        assert!(
            packed_bytes * 2 < json_bytes,
            "packed {packed_bytes} bytes, JSON {json_bytes}"
        );
    }

    #[test]
    fn other_versions_and_garbage_read_as_errors() {
        let summary = generate::customer(7, 1).summary();
        let mut packed = pack(&summary);
        assert!(unpack(&[]).is_err());
        assert!(unpack(&packed[..packed.len() / 2]).is_err());
        packed[0] = FORMAT + 1;
        assert!(unpack(&packed).is_err());
    }
}
