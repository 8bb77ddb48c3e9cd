//! Single-step transactions for the suite: the store primitives the service
//! composes into its transactions, each run alone so that a test can check
//! one at a time.

use async_trait::async_trait;
use futures::future::BoxFuture;

use crm_models::customer::{Customer, Identifier};
use crm_models::ids::{CustomerId, EngagementId};
use crm_models::linking::{MergeId, MergeRecord};
use crm_models::store::{Claim, Store, StoreError, StoreResult, Tx, TxWork};
use crm_models::time::{self, Timestamp};

struct OneStep<T, F> {
    step: F,
    out: Option<T>,
}

#[async_trait]
impl<T, F> TxWork for OneStep<T, F>
where
    T: Send,
    F: for<'a> FnMut(&'a mut dyn Tx) -> BoxFuture<'a, StoreResult<T>> + Send,
{
    async fn run(&mut self, tx: &mut dyn Tx) -> StoreResult<()> {
        self.out = Some((self.step)(tx).await?);
        Ok(())
    }
}

/// Runs `step` as one transaction and returns what it returned.
pub async fn in_tx<T, F>(store: &dyn Store, step: F) -> StoreResult<T>
where
    T: Send,
    F: for<'a> FnMut(&'a mut dyn Tx) -> BoxFuture<'a, StoreResult<T>> + Send,
{
    let mut work = OneStep { step, out: None };
    store.transaction(&mut work).await?;
    work.out
        .ok_or_else(|| StoreError::Internal("the step did not run".into()))
}

#[async_trait]
pub trait TxOps {
    async fn claim_identity(&self, key: &str, customer: CustomerId) -> StoreResult<Claim>;
    async fn release_identity(&self, key: &str, customer: CustomerId) -> StoreResult<()>;
    async fn update_profile(&self, customer: &Customer) -> StoreResult<()>;
    async fn add_identifiers(
        &self,
        id: CustomerId,
        identifiers: &[Identifier],
        at: Timestamp,
    ) -> StoreResult<Customer>;
    async fn delete_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>>;
    async fn move_identities(
        &self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>>;
    async fn move_engagements(
        &self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
    ) -> StoreResult<Vec<EngagementId>>;
    async fn insert_merge(&self, merge: &MergeRecord) -> StoreResult<()>;
    async fn mark_merge_undone(&self, id: MergeId, at: Timestamp, by: &str) -> StoreResult<bool>;
}

#[async_trait]
impl<S: Store + AsDynStore + ?Sized> TxOps for S {
    async fn claim_identity(&self, key: &str, customer: CustomerId) -> StoreResult<Claim> {
        let key = key.to_string();
        in_tx(self.as_dyn(), move |tx| {
            let key = key.clone();
            Box::pin(async move { tx.claim(&key, customer).await })
        })
        .await
    }

    async fn release_identity(&self, key: &str, customer: CustomerId) -> StoreResult<()> {
        let key = key.to_string();
        in_tx(self.as_dyn(), move |tx| {
            let key = key.clone();
            Box::pin(async move { tx.release(&key, customer).await })
        })
        .await
    }

    async fn update_profile(&self, customer: &Customer) -> StoreResult<()> {
        let customer = customer.clone();
        in_tx(self.as_dyn(), move |tx| {
            let customer = customer.clone();
            Box::pin(async move {
                if tx.customer(customer.id).await?.is_none() {
                    return Err(StoreError::NotFound);
                }
                tx.put_customer(&customer).await
            })
        })
        .await
    }

    async fn add_identifiers(
        &self,
        id: CustomerId,
        identifiers: &[Identifier],
        at: Timestamp,
    ) -> StoreResult<Customer> {
        let identifiers = identifiers.to_vec();
        in_tx(self.as_dyn(), move |tx| {
            let identifiers = identifiers.clone();
            Box::pin(async move {
                let mut c = tx.customer(id).await?.ok_or(StoreError::NotFound)?;
                for i in &identifiers {
                    c.add_identifier(i);
                }
                c.updated_at = at;
                tx.put_customer(&c).await?;
                tx.customer(id).await?.ok_or(StoreError::NotFound)
            })
        })
        .await
    }

    async fn delete_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        in_tx(self.as_dyn(), move |tx| {
            Box::pin(async move {
                let before = tx.customer(id).await?;
                tx.erase_customer(id).await?;
                Ok(before)
            })
        })
        .await
    }

    async fn move_identities(
        &self,
        from: CustomerId,
        to: CustomerId,
        keys: Option<&[String]>,
    ) -> StoreResult<Vec<String>> {
        let keys = keys.map(<[String]>::to_vec);
        in_tx(self.as_dyn(), move |tx| {
            let keys = keys.clone();
            Box::pin(async move { tx.move_identities(from, to, keys.as_deref()).await })
        })
        .await
    }

    async fn move_engagements(
        &self,
        from: CustomerId,
        to: CustomerId,
        ids: Option<&[EngagementId]>,
    ) -> StoreResult<Vec<EngagementId>> {
        let ids = ids.map(<[EngagementId]>::to_vec);
        in_tx(self.as_dyn(), move |tx| {
            let ids = ids.clone();
            Box::pin(async move {
                tx.move_engagements(from, to, ids.as_deref(), time::now())
                    .await
            })
        })
        .await
    }

    async fn insert_merge(&self, merge: &MergeRecord) -> StoreResult<()> {
        let merge = merge.clone();
        in_tx(self.as_dyn(), move |tx| {
            let merge = merge.clone();
            Box::pin(async move { tx.put_merge(&merge).await })
        })
        .await
    }

    async fn mark_merge_undone(&self, id: MergeId, at: Timestamp, by: &str) -> StoreResult<bool> {
        let by = by.to_string();
        in_tx(self.as_dyn(), move |tx| {
            let by = by.clone();
            Box::pin(async move {
                let Some(mut m) = tx.merge(id).await? else {
                    return Ok(false);
                };
                if m.undone_at.is_some() {
                    return Ok(false);
                }
                m.undone_at = Some(at);
                m.undone_by = Some(by);
                tx.put_merge(&m).await?;
                Ok(true)
            })
        })
        .await
    }
}

/// `&dyn Store` from any store, sized or not.
pub trait AsDynStore {
    fn as_dyn(&self) -> &dyn Store;
}

impl AsDynStore for dyn Store {
    fn as_dyn(&self) -> &dyn Store {
        self
    }
}

impl<S: Store> AsDynStore for S {
    fn as_dyn(&self) -> &dyn Store {
        self
    }
}
