//! Running the service's multi-record changes as store transactions.
//!
//! A change is a [`TxWork`] whose domain answer (`Ok` value or a
//! [`CrmError`] such as "nothing to merge") is kept in the work itself: a
//! work that decides to refuse either writes nothing and returns `Ok`, or,
//! when it already wrote, returns [`abort`] so that the store rolls back.

use async_trait::async_trait;

use super::{Crm, CrmError};
use crate::customer::{Customer, CustomerStatus};
use crate::event::EventEnvelope;
use crate::ids::{CustomerId, EngagementId};
use crate::linking::{IdentityInfo, MergeId, MergeRecord};
use crate::store::{Claim, EngagementRef, Erased, StoreError, StoreResult, Tx, TxWork};
use crate::time::Timestamp;

/// Longest `merged_into` chain followed before giving up (a chain only grows
/// when a survivor is merged again).
pub(super) const MAX_CHAIN: usize = 32;

/// A work's answer: set by every run (a rerun replaces it).
pub(super) type Answer<T> = Option<Result<T, CrmError>>;

/// The error a work returns to roll back after it set a refusal as its answer.
pub(super) fn abort() -> StoreError {
    StoreError::Conflict("the change was refused and rolled back".into())
}

/// The customer, or the one it was merged into, as the transaction sees it;
/// `None` when erased.
pub(super) async fn current_in(
    tx: &mut dyn Tx,
    id: CustomerId,
) -> Result<Option<Customer>, CrmError> {
    let mut at = id;
    for _ in 0..MAX_CHAIN {
        let Some(c) = tx.customer(at).await? else {
            return Ok(None);
        };
        match (c.status, c.merged_into) {
            (CustomerStatus::Merged, Some(next)) if next != at => at = next,
            _ => return Ok(Some(c)),
        }
    }
    // A chain this long is a cycle an older version left: `repair` mends it.
    Err(CrmError::Contention)
}

/// Domain answers from inside a work: `CrmError`s other than store errors
/// become the work's answer and a rollback.
pub(super) fn settle_answer<T>(
    answer: &mut Answer<T>,
    result: Result<T, CrmError>,
) -> StoreResult<()> {
    match result {
        Ok(v) => {
            *answer = Some(Ok(v));
            Ok(())
        }
        Err(CrmError::Store(e)) => Err(e),
        Err(e) => {
            *answer = Some(Err(e));
            Err(abort())
        }
    }
}

impl Crm {
    /// Runs a work in one transaction and returns its answer. A refusal the
    /// work chose is returned as it is; any other failure rolled everything
    /// back.
    pub(super) async fn run_tx<T, W>(
        &self,
        work: &mut W,
        answer: fn(&mut W) -> Answer<T>,
    ) -> Result<T, CrmError>
    where
        W: TxWork,
    {
        let result = match self.fault.take_after() {
            Some((after, error)) => {
                let mut faulty = WithFault { work, after, error };
                self.store.transaction(&mut faulty).await
            }
            None => self.store.transaction(work).await,
        };
        let kept = answer(work);
        match (result, kept) {
            (Ok(()), Some(answer)) => {
                self.wake_relay();
                answer
            }
            (Ok(()), None) => Err(CrmError::Store(StoreError::Internal(
                "a transaction ended without an answer".into(),
            ))),
            (Err(_), Some(Err(refusal))) => Err(refusal),
            (Err(StoreError::Contention(_)), _) => Err(CrmError::Contention),
            (Err(e), _) => Err(e.into()),
        }
    }
}

/// A test hook: the next transaction fails at its N-th store operation,
/// which must leave the store exactly as it was.
#[derive(Debug, Default)]
pub struct FaultInjection(std::sync::Mutex<Option<(usize, StoreError)>>);

impl FaultInjection {
    fn take_after(&self) -> Option<(usize, StoreError)> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }

    pub fn fail_next_transaction_at(&self, step: usize) {
        self.fail_next_transaction_with(step, StoreError::Internal("injected fault".into()));
    }

    /// Like [`Self::fail_next_transaction_at`], with this error (a conflict,
    /// contention).
    pub fn fail_next_transaction_with(&self, step: usize, error: StoreError) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some((step, error));
        }
    }
}

struct WithFault<'w, W: ?Sized> {
    work: &'w mut W,
    after: usize,
    error: StoreError,
}

#[async_trait]
impl<W: TxWork + ?Sized> TxWork for WithFault<'_, W> {
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        let mut faulty = FaultyTx {
            inner: tx,
            left: self.after,
            error: &self.error,
        };
        self.work.run(&mut faulty).await
    }
}

/// Counts operations and fails the one the hook names.
struct FaultyTx<'t> {
    inner: &'t mut dyn Tx,
    left: usize,
    error: &'t StoreError,
}

impl FaultyTx<'_> {
    fn step(&mut self) -> StoreResult<()> {
        if self.left == 0 {
            return Err(self.error.clone());
        }
        self.left -= 1;
        Ok(())
    }
}

#[async_trait]
impl Tx for FaultyTx<'_> {
    async fn customer(&mut self, id: CustomerId) -> StoreResult<Option<Customer>> {
        self.step()?;
        self.inner.customer(id).await
    }
    async fn put_customer(&mut self, customer: &Customer) -> StoreResult<()> {
        self.step()?;
        self.inner.put_customer(customer).await
    }
    async fn identity(&mut self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        self.step()?;
        self.inner.identity(key).await
    }
    async fn claim(&mut self, key: &str, customer: CustomerId) -> StoreResult<Claim> {
        self.step()?;
        self.inner.claim(key, customer).await
    }
    async fn release(&mut self, key: &str, customer: CustomerId) -> StoreResult<()> {
        self.step()?;
        self.inner.release(key, customer).await
    }
    async fn identities_of(&mut self, customer: CustomerId) -> StoreResult<Vec<String>> {
        self.step()?;
        self.inner.identities_of(customer).await
    }
    async fn move_identities(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>> {
        self.step()?;
        self.inner.move_identities(from, to, keys).await
    }
    async fn move_engagements(
        &mut self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
        at: Timestamp,
    ) -> StoreResult<Vec<EngagementId>> {
        self.step()?;
        self.inner.move_engagements(from, to, ids, at).await
    }
    async fn engagement_refs(&mut self, customer: CustomerId) -> StoreResult<Vec<EngagementRef>> {
        self.step()?;
        self.inner.engagement_refs(customer).await
    }
    async fn merge(&mut self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        self.step()?;
        self.inner.merge(id).await
    }
    async fn put_merge(&mut self, merge: &MergeRecord) -> StoreResult<()> {
        self.step()?;
        self.inner.put_merge(merge).await
    }
    async fn merges_of(&mut self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        self.step()?;
        self.inner.merges_of(customer).await
    }
    async fn delete_merge(&mut self, id: MergeId) -> StoreResult<()> {
        self.step()?;
        self.inner.delete_merge(id).await
    }
    async fn erase_customer(&mut self, id: CustomerId) -> StoreResult<Option<Erased>> {
        self.step()?;
        self.inner.erase_customer(id).await
    }
    async fn append_events(&mut self, events: &[EventEnvelope]) -> StoreResult<()> {
        self.step()?;
        self.inner.append_events(events).await
    }
}
