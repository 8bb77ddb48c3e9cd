//! Caller ID: who has this number. One path for every route that asks (the
//! staff lookup `GET /v1/lookup/phone/{number}` and the phone's popup
//! `GET /v1/mobile/caller-id`): the index first, in one round trip; the store
//! when the index cannot answer. Both give every customer with the number
//! (several when it is shared), most recently engaged first, so the two
//! routes name the same customers whether the index is up or not.

use crm_models::{PhoneError, PhoneNumber, Region};

use crate::projector::Projector;
use crate::{lookup_typed_phone, IndexError, SummaryJson};

/// The answer to one lookup.
#[derive(Debug, Clone)]
pub struct CallerLookup {
    /// The number as read (E.164).
    pub phone: PhoneNumber,
    /// Each customer's caller-ID summary as the index keeps it (JSON, not
    /// decoded: the routes write their answer around it), most recently
    /// engaged first.
    pub found: Vec<SummaryJson>,
    /// Whether the answer came from the store (the index could not answer).
    pub from_store: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerIdError {
    /// What was typed is not a phone number (or needs a region).
    #[error("{0}")]
    Number(#[from] PhoneError),
    /// Neither the index nor the store could answer.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; the message is for logs.
    #[error("{0}")]
    Internal(String),
}

impl From<IndexError> for CallerIdError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Unavailable(m) => CallerIdError::Unavailable(m),
            other => CallerIdError::Internal(other.to_string()),
        }
    }
}

/// A failed lookup as both caller-ID routes report it: 422 for what is not
/// a number, 503 `unavailable` when neither the index nor the store can
/// answer, else 500.
impl From<CallerIdError> for crm_models::problem::ApiError {
    fn from(e: CallerIdError) -> Self {
        use crm_models::problem::ApiError;
        match e {
            CallerIdError::Number(e) => ApiError::field("number", e),
            CallerIdError::Unavailable(m) => {
                tracing::warn!(error = %m, "caller-ID unavailable");
                ApiError::Unavailable("caller-ID is unavailable; try again".into())
            }
            CallerIdError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// Who has the number `raw`, typed any way (`region` reads one without
/// country code). The index answers ([`lookup_typed_phone`]); when it fails,
/// or while it is still loading after a start (its misses prove nothing
/// then: [`Projector::index_ready`]), the store does
/// ([`Projector::lookup_phone`]: every customer whose profile lists the
/// number, as the index holds them).
pub async fn lookup(
    projector: &Projector,
    raw: &str,
    region: Option<Region>,
) -> Result<CallerLookup, CallerIdError> {
    if !projector.index_ready() {
        let phone = PhoneNumber::parse(raw, region)?;
        return from_store(projector, phone).await;
    }
    let (phone, found) = lookup_typed_phone(projector.index().as_ref(), raw, region).await?;
    match found {
        Ok(found) => Ok(CallerLookup {
            phone,
            found,
            from_store: false,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "index cannot answer; caller-ID from the store");
            from_store(projector, phone).await
        }
    }
}

async fn from_store(
    projector: &Projector,
    phone: PhoneNumber,
) -> Result<CallerLookup, CallerIdError> {
    let found = projector
        .lookup_phone(&phone)
        .await?
        .iter()
        .map(SummaryJson::of)
        .collect::<Result<_, _>>()
        .map_err(|e| CallerIdError::Internal(e.to_string()))?;
    Ok(CallerLookup {
        phone,
        found,
        from_store: true,
    })
}
