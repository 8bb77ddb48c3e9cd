//! Records as documents, and driver errors as [`StoreError`]s.

use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::EventEnvelope;
use crate::linking::IdentityInfo;
use crate::store::{StoreError, StoreResult};
use crate::time;

/// MongoDB's duplicate key error code (11001 is its pre-2.6 spelling).
pub(super) const DUPLICATE_KEY: [i32; 2] = [11000, 11001];

/// Serialises a record with its key field `key` stored as `_id` (first).
pub(super) fn to_doc<T: Serialize>(value: &T, key: &str) -> StoreResult<Document> {
    let mut doc = bson::to_document(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode a record: {e}")))?;
    let id = doc
        .remove(key)
        .ok_or_else(|| StoreError::Internal(format!("record has no `{key}` field")))?;
    let mut out = Document::new();
    out.insert("_id", id);
    out.extend(doc);
    Ok(out)
}

/// Reads a record back, with `_id` as its key field `key`.
pub(super) fn from_doc<T: DeserializeOwned>(mut doc: Document, key: &str) -> StoreResult<T> {
    if let Some(id) = doc.remove("_id") {
        doc.insert(key, id);
    }
    bson::from_document(doc)
        .map_err(|e| StoreError::Internal(format!("cannot decode a record: {e}")))
}

/// An event as the log keeps it: the envelope's JSON form as a document,
/// its id as `_id`, plus `relayed`. Going through JSON keeps the stored form
/// exactly the public envelope (`{id, type, occurred_at, customer_id?, data}`).
pub(super) fn event_to_doc(event: &EventEnvelope) -> StoreResult<Document> {
    let json = serde_json::to_value(event)
        .map_err(|e| StoreError::Internal(format!("cannot encode an event: {e}")))?;
    let Bson::Document(mut fields) = bson::to_bson(&json)
        .map_err(|e| StoreError::Internal(format!("cannot encode an event: {e}")))?
    else {
        return Err(StoreError::Internal(
            "an event did not encode as an object".into(),
        ));
    };
    fields.remove("id");
    let mut out = Document::new();
    out.insert("_id", event.id.to_string());
    out.insert("relayed", false);
    out.extend(fields);
    Ok(out)
}

/// Reads an event back from the log.
pub(super) fn event_from_doc(mut doc: Document) -> StoreResult<EventEnvelope> {
    doc.remove("relayed");
    doc.remove("seq");
    if let Some(id) = doc.remove("_id") {
        doc.insert("id", id);
    }
    let json = Bson::Document(doc).into_relaxed_extjson();
    serde_json::from_value(json)
        .map_err(|e| StoreError::Internal(format!("cannot decode an event: {e}")))
}

/// An identity record: its owner (none when only marked shared) and flag.
pub(super) fn identity_info(d: &Document) -> StoreResult<IdentityInfo> {
    let owner = if d.contains_key("customer_id") {
        Some(parse_id(d, "customer_id")?)
    } else {
        None
    };
    Ok(IdentityInfo {
        owner,
        shared: d.get_bool("shared").unwrap_or(false),
    })
}

pub(super) fn parse_id<I: std::str::FromStr>(doc: &Document, field: &str) -> StoreResult<I> {
    doc.get_str(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Internal(format!("record has no valid `{field}`")))
}

/// The `_id` of a document whose key is a string.
pub(super) fn string_id(doc: &Document) -> StoreResult<String> {
    doc.get_str("_id")
        .map(str::to_string)
        .map_err(|_| StoreError::Internal("a record with a non-string _id".into()))
}

/// A stored timestamp field (fixed-width RFC 3339 text), if present.
pub(super) fn time_field(doc: &Document, field: &str) -> StoreResult<Option<time::Timestamp>> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::String(s)) => time::parse(s)
            .map(Some)
            .map_err(|e| StoreError::Internal(format!("record has an invalid `{field}`: {e}"))),
        Some(_) => Err(StoreError::Internal(format!(
            "record has a non-text `{field}`"
        ))),
    }
}

pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> StoreResult<Bson> {
    bson::to_bson(value).map_err(|e| StoreError::Internal(format!("cannot encode a value: {e}")))
}

/// Mongo treats a limit of 0 as "no limit"; the trait means nothing.
pub(super) fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(super) async fn collect<T: DeserializeOwned>(
    cursor: mongodb::Cursor<Document>,
    key: &str,
) -> StoreResult<Vec<T>> {
    let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
    docs.into_iter().map(|d| from_doc(d, key)).collect()
}

// --- errors ---

/// Whether the error is (or, for a batch, contains) a duplicate key error.
pub(super) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => DUPLICATE_KEY.contains(&w.code),
        ErrorKind::Command(c) => DUPLICATE_KEY.contains(&c.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .any(|w| DUPLICATE_KEY.contains(&w.code)),
        ErrorKind::BulkWrite(b) => b
            .write_errors
            .values()
            .any(|w| DUPLICATE_KEY.contains(&w.code)),
        _ => false,
    }
}

/// Server error codes that mean "not now, this server cannot serve": host
/// unreachable or not found, network timeout, shutting down, not (or no
/// longer) primary.
const UNAVAILABLE_CODES: [i32; 10] = [6, 7, 89, 91, 189, 10107, 11600, 11602, 13435, 13436];

/// Connection, server selection and "not primary" errors are `Unavailable`;
/// everything else is `Internal`.
pub(super) fn map_err(e: mongodb::error::Error) -> StoreError {
    let unavailable = match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => UNAVAILABLE_CODES.contains(&c.code),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(format!("MongoDB: {e}"))
    } else {
        StoreError::Internal(format!("MongoDB: {e}"))
    }
}

/// `Conflict` for a duplicate key, else the usual mapping.
pub(super) fn map_conflict(e: mongodb::error::Error, what: &str) -> StoreError {
    if is_duplicate_key(&e) {
        StoreError::Conflict(what.to_string())
    } else {
        map_err(e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::customer::Customer;
    use crate::engagement::{Direction, Engagement, EngagementDetail, Source};
    use crate::event::DomainEvent;
    use crate::ids::{CustomerId, DeviceId, EngagementId};

    fn engagement(customer: CustomerId) -> Engagement {
        Engagement {
            id: EngagementId::new(),
            customer_id: customer,
            occurred_at: time::now(),
            recorded_at: time::now(),
            source: Source {
                device_id: Some(DeviceId::new()),
                client_event_id: Some("7".into()),
                user_id: None,
                via: None,
            },
            detail: EngagementDetail::Call {
                direction: Direction::Inbound,
                duration_s: 42,
                status: crate::engagement::CallStatus::Answered,
            },
        }
    }

    #[test]
    fn records_keep_their_key_as_id_and_round_trip() {
        let mut c = Customer::new(CustomerId::new(), Some("Ann".into()), time::now());
        c.social.insert("facebook".into(), "123".into());
        let doc = to_doc(&c, "id").unwrap();
        assert_eq!(doc.keys().next().map(String::as_str), Some("_id"));
        assert_eq!(doc.get_str("_id").unwrap(), c.id.to_string());
        assert!(doc.get("id").is_none());
        assert_eq!(from_doc::<Customer>(doc, "id").unwrap(), c);

        let e = engagement(c.id);
        let doc = to_doc(&e, "id").unwrap();
        assert_eq!(doc.get_str("channel").unwrap(), "call");
        assert_eq!(doc.get_str("customer_id").unwrap(), c.id.to_string());
        assert_eq!(from_doc::<Engagement>(doc, "id").unwrap(), e);
    }

    #[test]
    fn events_are_stored_flat_and_round_trip() {
        let c = CustomerId::new();
        let e = EventEnvelope::about(c, DomainEvent::engagement_recorded(&engagement(c)));
        let doc = event_to_doc(&e).unwrap();
        assert_eq!(doc.get_str("_id").unwrap(), e.id.to_string());
        assert!(!doc.get_bool("relayed").unwrap());
        assert_eq!(doc.get_str("type").unwrap(), "engagement.recorded");
        assert_eq!(
            doc.get_str("occurred_at").unwrap(),
            time::format(&e.occurred_at)
        );
        assert_eq!(doc.get_str("customer_id").unwrap(), c.to_string());
        assert!(doc.get_document("data").is_ok());
        assert_eq!(event_from_doc(doc).unwrap(), e);

        let bare = EventEnvelope::new(None, DomainEvent::CustomerCreated {});
        assert_eq!(event_from_doc(event_to_doc(&bare).unwrap()).unwrap(), bare);
    }

    /// A counter caught below zero (written by older versions, which moved
    /// engagements and their counts in separate steps) reads as zero.
    #[test]
    fn a_counter_caught_below_zero_reads_as_zero() {
        let mut c = Customer::new(CustomerId::new(), None, time::now());
        c.counts.sms = 2;
        let mut doc = to_doc(&c, "id").unwrap();
        let counts = doc.get_document_mut("counts").unwrap();
        counts.insert("call", Bson::Int64(-1));
        counts.insert("web", Bson::Int32(-2));
        let read = from_doc::<Customer>(doc, "id").unwrap();
        assert_eq!(read.counts.call, 0);
        assert_eq!(read.counts.web, 0);
        assert_eq!(read.counts.sms, 2);
    }
}
