//! `POST /v1/mobile/events`: a phone's SMS and call log, in batches.
//!
//! Each event is checked on its own, by the one ingest parser
//! ([`crm_models::ingest`], shape [`Shape::Phone`]), and a bad one is
//! rejected with its reasons while the others are stored. The good ones go through the same
//! domain call as every other engagement ([`Crm::record_engagements`]), so
//! the counterpart is resolved by identity linking. `(device,
//! client_event_id)` names the engagement (a UUIDv5 primary key), which is
//! what stores each event once however often, and however concurrently, the
//! phone retries.
//!
//! [`Crm::record_engagements`]: crm_models::service::Crm::record_engagements

use chrono::Duration;
use crm_models::device::Device;
use crm_models::engagement::{CallStatus, Direction};
use crm_models::ids::{CustomerId, EngagementId};
use crm_models::ingest::{self, Item, JsonList, Origin, Shape};
use crm_models::problem::{ApiError, ErrorCode};
use crm_models::service::{CrmError, FieldError, NewEngagement};
use crm_models::time::{self, Timestamp};
use crm_models::Region;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::MobileBridge;

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 500;
/// Largest batch body, in bytes (1 MiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// How stale a device's `last_upload_at` may get before an upload updates it.
const LAST_UPLOAD_PRECISION_S: i64 = 60;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"events": [
    {"client_event_id": "sms-1842", "kind": "sms", "direction": "inbound", "number": "8122 6418",
     "occurred_at": "2026-11-21T09:30:00Z", "body": "Is the flat still available?", "contact_name": "Ann Tan"},
    {"client_event_id": "call-977", "kind": "call", "direction": "outbound", "number": "+65 8122 6418",
     "occurred_at": "2026-11-21T09:41:07Z", "duration_s": 184, "status": "answered"}
]}))]
#[serde(deny_unknown_fields)]
pub struct UploadRequest {
    /// Up to 500 events (and 1 MiB), each a `MobileEvent`. Each event is
    /// read on its own: one that is not a valid event (a field given twice
    /// included) is answered `rejected` with its reasons in its result, and
    /// the others are stored; so any JSON value is accepted here.
    #[schema(value_type = Vec<serde_json::Value>, max_items = 500)]
    pub events: JsonList,
}

/// One event as the phone reports it. Only `client_event_id`, `kind`,
/// `direction`, `number` and `occurred_at` are required.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct MobileEvent {
    /// The phone's own id for the event, unique per device (at most 128
    /// characters): a retry with the same id is stored once.
    pub client_event_id: String,
    pub kind: EventKind,
    pub direction: Direction,
    /// The other party's number, written any way a person would read as
    /// that number (`8122 6418`, `+65 8122 6418`, `tel:` URIs, full-width
    /// digits, an extension or a note after it); numbers without `+` are
    /// read with the device's region.
    pub number: String,
    /// When it happened: RFC 3339, years 1970 to 9999, no leap second, at
    /// most 24 hours ahead. Old events are fine: they land in the timeline
    /// at this time.
    pub occurred_at: String,
    /// sms, whatsapp: the text.
    pub body: Option<String>,
    /// call: seconds (default 0).
    pub duration_s: Option<u32>,
    /// call: default `answered` when it lasted, else `missed`.
    pub status: Option<CallStatus>,
    /// The name in the phone's contacts: names a customer created for an unknown number.
    pub contact_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Sms,
    Call,
    Whatsapp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Created,
    Duplicate,
    Rejected,
}

/// Why an event was rejected.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventError {
    /// `invalid_event`; or a code of the error table, such as `conflict`,
    /// `identifiers_conflict` or `contention` (retry that one later).
    pub code: String,
    /// The HTTP status the event would have had alone: 422 for an invalid
    /// event, 409 for a conflict or contention.
    pub status: u16,
    pub detail: String,
    /// The fields at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventResult {
    /// Position in the batch.
    pub index: usize,
    /// As sent; absent when the event had none.
    pub client_event_id: Option<String>,
    pub status: EventStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engagement_id: Option<EngagementId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UploadResponse {
    /// One result per event, in order.
    pub results: Vec<EventResult>,
}

fn invalid(errors: Vec<FieldError>) -> EventError {
    let detail = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    EventError {
        code: ErrorCode::InvalidEvent.as_str().into(),
        status: ErrorCode::InvalidEvent.status(),
        detail,
        errors,
    }
}

/// Reads one event with the one ingest parser; every problem is reported,
/// with its field.
pub fn parse_event(
    item: &Item<'_>,
    device: &Device,
    region: Option<Region>,
    now: Timestamp,
) -> Result<NewEngagement, Vec<FieldError>> {
    let origin = Origin {
        region,
        device_id: Some(device.id),
        user_id: format!("user:{}", device.user_id),
        now,
    };
    ingest::parse_engagement(item, "", Shape::Phone, &origin)
}

/// One event's failure in its result (a conflict or contention is 409 for
/// that event); `Err` when the store cannot be written at all, which fails
/// the batch (503) so that the phone retries it.
fn event_error(e: CrmError) -> Result<EventError, ApiError> {
    let e = ApiError::from(e);
    if matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Internal) {
        return Err(e);
    }
    let problem = e.to_problem();
    Ok(EventError {
        code: problem.code.as_str().into(),
        status: problem.status,
        detail: problem.detail,
        errors: problem.errors,
    })
}

fn client_event_id_of(value: &Value) -> Option<String> {
    value
        .get("client_event_id")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(ingest::MAX_CLIENT_ID_CHARS).collect())
}

impl MobileBridge {
    /// Records a batch from `device`: one result per event, in order. Fails
    /// as a whole only when the store cannot be written (the phone retries;
    /// nothing is stored twice).
    pub async fn upload(
        &self,
        device: &Device,
        events: JsonList,
    ) -> Result<UploadResponse, ApiError> {
        if events.len() > MAX_BATCH_EVENTS {
            return Err(ApiError::PayloadTooLarge(format!(
                "a batch holds at most {MAX_BATCH_EVENTS} events; this one has {}: split it",
                events.len()
            )));
        }
        let region = self.region_of(device);
        let now = time::now();
        let mut results: Vec<EventResult> = Vec::with_capacity(events.len());
        let mut parsed = Vec::new();
        let mut slots = Vec::new();
        for (index, item) in events.items().enumerate() {
            let client_event_id = client_event_id_of(item.value);
            match parse_event(&item, device, region, now) {
                Ok(item) => {
                    parsed.push(item);
                    slots.push(index);
                    results.push(EventResult {
                        index,
                        client_event_id,
                        status: EventStatus::Rejected,
                        engagement_id: None,
                        customer_id: None,
                        error: None,
                    });
                }
                Err(errors) => results.push(EventResult {
                    index,
                    client_event_id,
                    status: EventStatus::Rejected,
                    engagement_id: None,
                    customer_id: None,
                    error: Some(invalid(errors)),
                }),
            }
        }
        let rejected = results.len() - parsed.len();
        let outcomes = self.crm().record_engagements(parsed).await;
        for (slot, outcome) in slots.into_iter().zip(outcomes) {
            let result = &mut results[slot];
            match outcome {
                Ok(r) => {
                    result.status = if r.duplicate {
                        EventStatus::Duplicate
                    } else {
                        EventStatus::Created
                    };
                    result.engagement_id = Some(r.id);
                    result.customer_id = Some(r.customer_id);
                }
                Err(CrmError::Invalid(errors)) => result.error = Some(invalid(errors)),
                Err(e) => result.error = Some(event_error(e)?),
            }
        }
        // To the minute: a write per batch would double the store commits of
        // a busy device.
        let stale = device
            .last_upload_at
            .is_none_or(|t| now - t >= Duration::seconds(LAST_UPLOAD_PRECISION_S));
        if !events.is_empty() && stale {
            if let Err(e) = self.store().set_device_last_upload(device.id, now).await {
                tracing::warn!(device_id = %device.id, error = %e, "cannot record the device's last upload");
            }
        }
        tracing::info!(
            device_id = %device.id,
            events = events.len(),
            rejected,
            "mobile events uploaded"
        );
        Ok(UploadResponse { results })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crm_models::engagement::EngagementDetail;
    use crm_models::ids::{DeviceId, UserId};
    use crm_models::service::EngagementTarget;
    use serde_json::json;

    fn device() -> Device {
        Device {
            id: DeviceId::new(),
            user_id: UserId::new(),
            name: "phone".into(),
            default_region: Some("SG".into()),
            token_hash: "h".into(),
            token_prefix: "crm_dev_".into(),
            created_at: time::now(),
            revoked_at: None,
            last_upload_at: None,
        }
    }

    fn sg() -> Option<Region> {
        Some(Region::parse("SG").unwrap())
    }

    fn parse(
        value: &Value,
        d: &Device,
        region: Option<Region>,
    ) -> Result<NewEngagement, Vec<FieldError>> {
        parse_event(&Item::plain(value), d, region, time::now())
    }

    fn fields(r: Result<NewEngagement, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_national_number_is_read_with_the_device_region() {
        let d = device();
        let e = parse(
            &json!({"client_event_id": "1", "kind": "call", "direction": "inbound",
                    "number": "8122 6418", "occurred_at": "2026-01-02T03:04:05Z",
                    "duration_s": 0, "contact_name": " Ann "}),
            &d,
            sg(),
        )
        .unwrap();
        match e.target {
            EngagementTarget::Identify { name, identifiers } => {
                assert_eq!(name.as_deref(), Some("Ann"));
                assert_eq!(identifiers[0].key(), "phone:+6581226418");
            }
            other => panic!("unexpected target {other:?}"),
        }
        assert_eq!(
            e.detail,
            EngagementDetail::Call {
                direction: Direction::Inbound,
                duration_s: 0,
                status: CallStatus::Missed
            }
        );
        assert_eq!(e.source.device_id, Some(d.id));
        assert_eq!(e.source.user_id, Some(format!("user:{}", d.user_id)));
        assert!(e.source.idempotent_id().is_some());
    }

    #[test]
    fn a_conflict_is_409_for_its_event_and_an_unwritable_store_fails_the_batch() {
        use crm_models::store::StoreError;
        for (error, code) in [
            (
                CrmError::Store(StoreError::Conflict("taken".into())),
                "conflict",
            ),
            (
                CrmError::Store(StoreError::Contention("busy".into())),
                "contention",
            ),
            (CrmError::Contention, "contention"),
            (
                CrmError::IdentifiersConflict {
                    customers: vec![crm_models::CustomerId::new()],
                },
                "identifiers_conflict",
            ),
        ] {
            let e = event_error(error).unwrap();
            assert_eq!((e.code.as_str(), e.status), (code, 409));
        }
        let batch = event_error(CrmError::Store(StoreError::Unavailable("down".into())));
        assert_eq!(batch.unwrap_err().status_code(), 503);
        assert_eq!(invalid(vec![FieldError::new("kind", "x")]).status, 422);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let d = device();
        assert_eq!(
            fields(parse(
                &json!({"kind": "fax", "direction": "sideways", "number": "not a number",
                        "occurred_at": "yesterday", "extra": 1}),
                &d,
                sg()
            )),
            [
                "client_event_id",
                "kind",
                "direction",
                "number",
                "occurred_at",
                "extra"
            ]
        );
        assert_eq!(
            fields(parse(
                &json!({"client_event_id": "2", "kind": "sms", "direction": "inbound",
                        "number": "81226418", "occurred_at": "2026-01-02T03:04:05Z"}),
                &d,
                None
            )),
            ["number"],
            "a national number needs a region"
        );
        assert_eq!(
            fields(parse(
                &json!({"client_event_id": "3", "kind": "sms", "direction": "inbound",
                        "number": "+6581226418", "occurred_at": "2026-01-02T03:04:05Z",
                        "duration_s": 3}),
                &d,
                None
            )),
            ["duration_s"]
        );
        assert_eq!(
            fields(parse(
                &json!({"client_event_id": "4", "kind": "sms", "direction": "inbound",
                        "number": "+6581226418", "occurred_at": "2026-01-02T03:04:60Z",
                        "contact_name": "Ann\u{202e}Tan"}),
                &d,
                None
            )),
            ["contact_name", "occurred_at"]
        );
        assert_eq!(fields(parse(&json!("text"), &d, None)), ["event"]);
    }

    #[test]
    fn an_event_that_repeats_a_field_is_rejected_alone() {
        let list: JsonList = serde_json::from_str(
            r#"[{"client_event_id": "1", "kind": "sms", "direction": "inbound",
                 "number": "+6581226418", "occurred_at": "2026-01-02T03:04:05Z"},
                {"client_event_id": "2", "kind": "sms", "direction": "inbound",
                 "number": "+6581226418", "number": "+6591234567",
                 "occurred_at": "2026-01-02T03:04:05Z"}]"#,
        )
        .unwrap();
        let d = device();
        let outcomes: Vec<Result<NewEngagement, Vec<FieldError>>> = list
            .items()
            .map(|item| parse_event(&item, &d, None, time::now()))
            .collect();
        assert!(outcomes[0].is_ok());
        assert_eq!(
            outcomes[1].as_ref().unwrap_err(),
            &[FieldError::new(
                "number",
                "is given more than once; give it once"
            )]
        );
    }
}
