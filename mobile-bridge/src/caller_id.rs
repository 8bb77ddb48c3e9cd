//! `GET /v1/mobile/caller-id?number=...`: who is calling, before the second
//! ring. One index read (one Redis round trip: the phone key holds the
//! summaries; the store when the index cannot answer), the same lookup as
//! the staff route's ([`crm_indexer::caller_id::lookup`]); then the lookup is
//! handed to the signal recorder without waiting for it.

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use crm_indexer::caller_id::CallerLookup;
use crm_indexer::{CustomerSummary, EngagementBrief, SummaryJson};
use crm_models::device::{CallSignal, Device};
use crm_models::{ChannelCounts, CustomerId, Email, PhoneNumber};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::MobileBridge;
use crm_models::problem::ApiError;

/// Engagements shown per customer in the popup.
pub const CALLER_ID_ENGAGEMENTS: usize = 5;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CallerIdParams {
    /// The calling number as the phone shows it; without `+` it is read with
    /// the device's region.
    pub number: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CallerId {
    /// Whether any customer has this number.
    pub known: bool,
    /// Most recently engaged first; several when the number is shared.
    pub customers: Vec<CallerIdCustomer>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CallerIdCustomer {
    pub id: CustomerId,
    pub name: Option<String>,
    #[schema(value_type = Option<String>, example = "+6581226418")]
    pub main_phone: Option<PhoneNumber>,
    #[schema(value_type = Option<String>)]
    pub main_email: Option<Email>,
    pub counts: ChannelCounts,
    /// Newest first, at most 5.
    pub last_engagements: Vec<EngagementBrief>,
}

impl From<CustomerSummary> for CallerIdCustomer {
    fn from(mut s: CustomerSummary) -> Self {
        s.last_engagements.truncate(CALLER_ID_ENGAGEMENTS);
        CallerIdCustomer {
            id: s.id,
            name: s.name,
            main_phone: s.phone,
            main_email: s.email,
            counts: s.counts,
            last_engagements: s.last_engagements,
        }
    }
}

/// A [`CallerId`] as sent: each customer written from the summary JSON the
/// index keeps, straight into the body, reading only the fields the popup
/// shows (no engagement is decoded and encoded again).
#[derive(Debug, Clone)]
pub struct CallerIdJson(String);

impl CallerIdJson {
    /// The answer to a lookup that found `found`.
    fn of(found: &[SummaryJson]) -> Result<Self, serde_json::Error> {
        let mut body =
            String::with_capacity(32 + found.iter().map(|s| s.json.len() + 64).sum::<usize>());
        body.push_str(if found.is_empty() {
            r#"{"known":false,"customers":["#
        } else {
            r#"{"known":true,"customers":["#
        });
        for (i, summary) in found.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            push_popup_customer(&mut body, summary)?;
        }
        body.push_str("]}");
        Ok(CallerIdJson(body))
    }

    /// The JSON body.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl IntoResponse for CallerIdJson {
    fn into_response(self) -> Response {
        (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            self.0,
        )
            .into_response()
    }
}

/// The fields of a stored [`CustomerSummary`] the popup shows, borrowed.
#[derive(Deserialize)]
struct PopupView<'a> {
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    phone: Option<&'a RawValue>,
    #[serde(default, borrow)]
    email: Option<&'a RawValue>,
    #[serde(borrow)]
    counts: &'a RawValue,
    #[serde(borrow)]
    last_engagements: Vec<&'a RawValue>,
}

fn raw_or_null(v: Option<&RawValue>) -> &str {
    v.map_or("null", RawValue::get)
}

/// Appends one customer of a [`CallerId`], as [`CallerIdCustomer`]
/// serializes.
fn push_popup_customer(body: &mut String, summary: &SummaryJson) -> Result<(), serde_json::Error> {
    let view: PopupView = summary.view()?;
    body.push_str(r#"{"id":""#);
    body.push_str(&summary.id.to_string());
    body.push_str(r#"","name":"#);
    body.push_str(raw_or_null(view.name));
    body.push_str(r#","main_phone":"#);
    body.push_str(raw_or_null(view.phone));
    body.push_str(r#","main_email":"#);
    body.push_str(raw_or_null(view.email));
    body.push_str(r#","counts":"#);
    body.push_str(view.counts.get());
    body.push_str(r#","last_engagements":["#);
    for (i, e) in view
        .last_engagements
        .iter()
        .take(CALLER_ID_ENGAGEMENTS)
        .enumerate()
    {
        if i > 0 {
            body.push(',');
        }
        body.push_str(e.get());
    }
    body.push_str("]}");
    Ok(())
}

impl MobileBridge {
    /// Who has this number. From the index; from the store when the index
    /// cannot be reached. Each customer found is recorded as an incoming-call
    /// signal for the device's owner; a number nobody has is one signal
    /// about no customer, so that the owner's desktop can offer to create one.
    pub async fn caller_id(&self, device: &Device, number: &str) -> Result<CallerIdJson, ApiError> {
        let CallerLookup { phone, found, .. } =
            crm_indexer::caller_id::lookup(self.projector(), number, self.region_of(device))
                .await
                .map_err(ApiError::from)?;
        let answer = CallerIdJson::of(&found)
            .map_err(|e| ApiError::Internal(format!("index data does not decode: {e}")))?;
        let now = crm_models::time::now();
        let signal = |customer_id| CallSignal {
            id: uuid::Uuid::now_v7(),
            customer_id,
            device_id: device.id,
            user_id: device.user_id,
            number: phone.clone(),
            at: now,
        };
        if found.is_empty() {
            self.signals().record(signal(None));
        }
        for summary in &found {
            self.signals().record(signal(Some(summary.id)));
        }
        Ok(answer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_popup_from_summary_json_is_what_serializing_the_decoded_summaries_gives() {
        let mut summaries: Vec<CustomerSummary> = (0..20)
            .map(|i| crm_indexer::generate::customer(11, i).summary())
            .collect();
        for (i, summary) in summaries.iter_mut().enumerate() {
            match i % 4 {
                0 => summary.name = None,
                1 => summary.email = None,
                2 => summary.phone = None,
                _ => summary.name = Some("Zoë \"Quote\" Tan".into()),
            }
        }
        for n in [0, 1, 3, 20] {
            let found: Vec<SummaryJson> = summaries[..n]
                .iter()
                .map(|s| SummaryJson::of(s).unwrap())
                .collect();
            let fast: serde_json::Value =
                serde_json::from_str(CallerIdJson::of(&found).unwrap().as_str()).unwrap();
            let decoded = CallerId {
                known: n > 0,
                customers: summaries[..n]
                    .iter()
                    .cloned()
                    .map(CallerIdCustomer::from)
                    .collect(),
            };
            assert_eq!(
                fast,
                serde_json::to_value(&decoded).unwrap(),
                "{n} customers"
            );
            for (c, s) in fast["customers"].as_array().unwrap().iter().zip(&summaries) {
                let shown = s.last_engagements.len().min(CALLER_ID_ENGAGEMENTS);
                assert_eq!(c["last_engagements"].as_array().unwrap().len(), shown);
            }
        }
        let broken = SummaryJson {
            id: CustomerId::new(),
            json: r#"{"counts":{}}"#.into(),
        };
        assert!(
            CallerIdJson::of(&[broken]).is_err(),
            "last_engagements is required"
        );
    }
}
