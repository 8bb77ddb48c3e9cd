//! `GET /v1/mobile/caller-id?number=...`: who is calling, before the second
//! ring. One index read (one Redis round trip: the phone key holds the
//! summaries), then the lookup is handed to the signal recorder without
//! waiting for it.

use crm_indexer::{CustomerSummary, EngagementBrief, IndexError};
use crm_models::device::{CallSignal, Device};
use crm_models::{ChannelCounts, CustomerId, Email, Identifier, PhoneNumber};
use serde::{Deserialize, Serialize};

use crate::error::MobileError;
use crate::MobileBridge;

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

impl MobileBridge {
    /// Who has this number. From the index; from the store when the index
    /// cannot be reached. Each customer found is recorded as an incoming-call
    /// signal for the device's owner.
    pub async fn caller_id(&self, device: &Device, number: &str) -> Result<CallerId, MobileError> {
        let phone = PhoneNumber::parse(number, self.region_of(device))
            .map_err(|e| MobileError::field("number", e))?;
        let summaries = match self.index().lookup_phone(&phone).await {
            Ok(found) => found,
            Err(IndexError::Unavailable(e)) => {
                tracing::warn!(error = %e, "index unavailable; caller-ID from the store");
                self.owners_from_store(&phone).await?
            }
            Err(e) => return Err(e.into()),
        };
        let now = crm_models::time::now();
        for summary in &summaries {
            self.signals().record(CallSignal {
                id: uuid::Uuid::now_v7(),
                customer_id: summary.id,
                device_id: device.id,
                user_id: device.user_id,
                number: phone.clone(),
                at: now,
            });
        }
        Ok(CallerId {
            known: !summaries.is_empty(),
            customers: summaries.into_iter().map(CallerIdCustomer::from).collect(),
        })
    }

    async fn owners_from_store(
        &self,
        phone: &PhoneNumber,
    ) -> Result<Vec<CustomerSummary>, MobileError> {
        let key = Identifier::Phone(phone.clone()).key();
        let Some(owner) = self.store().identity_owner(&key).await? else {
            return Ok(Vec::new());
        };
        let doc = self
            .projector()
            .document(owner)
            .await
            .map_err(MobileError::from)?;
        Ok(doc
            .filter(|d| d.is_searchable())
            .map(|d| d.summary())
            .into_iter()
            .collect())
    }
}
