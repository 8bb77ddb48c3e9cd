//! Customers and identities ([`CustomerStore`]).

use std::ops::Bound;

use async_trait::async_trait;
use redb::{Database, ReadableTable};

use super::{
    customer_id, db_err, read_customer, time_key, tx, write_claim, write_customer, EmbeddedStore,
    CUSTOMERS, CUSTOMERS_BY_UPDATED, IDENTITIES, IDENTITIES_BY_CUSTOMER, IDENTITIES_SHARED,
};
use crate::customer::Customer;
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::CustomerId;
use crate::linking::IdentityInfo;
use crate::store::{CustomerCursor, CustomerStore, StoreError, StoreResult};
use crate::time::Timestamp;

/// The identity records of `keys`, in order (see [`CustomerStore::identity`]).
fn read_identities<K: AsRef<str>>(
    db: &Database,
    keys: &[K],
) -> StoreResult<Vec<Option<IdentityInfo>>> {
    let txn = db.begin_read().map_err(db_err)?;
    let owners = txn.open_table(IDENTITIES).map_err(db_err)?;
    let shared = txn.open_table(IDENTITIES_SHARED).map_err(db_err)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let key = key.as_ref();
        let owner = owners
            .get(key)
            .map_err(db_err)?
            .map(|g| customer_id(g.value()));
        let shared = shared.get(key).map_err(db_err)?.is_some();
        out.push((owner.is_some() || shared).then_some(IdentityInfo { owner, shared }));
    }
    Ok(out)
}

#[async_trait]
impl CustomerStore for EmbeddedStore {
    // --- customers ---

    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()> {
        let customer = customer.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
                if customers
                    .get(customer.id.0.as_u128())
                    .map_err(db_err)?
                    .is_some()
                {
                    return Err(StoreError::Conflict(format!(
                        "customer {} exists",
                        customer.id
                    )));
                }
            }
            write_customer(&txn, None, &customer)?;
            tx::append_events(
                &txn,
                &[EventEnvelope::about(
                    customer.id,
                    DomainEvent::CustomerCreated {},
                )],
            )?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        // A point read: resolving an identifier makes one per owner.
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            read_customer(&customers, id.0.as_u128())
        })
    }

    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>> {
        let ids = ids.to_vec();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.extend(read_customer(&customers, id.0.as_u128())?);
            }
            Ok(found)
        })
        .await
    }

    async fn list_customers(
        &self,
        updated_since: Option<Timestamp>,
        after: Option<CustomerCursor>,
        limit: usize,
    ) -> StoreResult<Vec<Customer>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |db| {
            let since = updated_since.map(|t| (time_key(&t), 0u128));
            let cursor = after.map(|c| (time_key(&c.updated_at), c.id.0.as_u128()));
            let start: Bound<(u64, u128)> = match (since, cursor) {
                (Some(s), Some(c)) if c >= s => Bound::Excluded(c),
                (Some(s), _) => Bound::Included(s),
                (None, Some(c)) => Bound::Excluded(c),
                (None, None) => Bound::Unbounded,
            };
            let txn = db.begin_read().map_err(db_err)?;
            let by_updated = txn.open_table(CUSTOMERS_BY_UPDATED).map_err(db_err)?;
            let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in by_updated
                .range::<(u64, u128)>((start, Bound::Unbounded))
                .map_err(db_err)?
            {
                let (k, _) = entry.map_err(db_err)?;
                let (_, id) = k.value();
                // The index and the records change in one transaction, so a
                // miss would be corruption; skip it rather than fail the list.
                if let Some(c) = read_customer(&customers, id)? {
                    out.push(c);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    // --- identities ---

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let identities = txn.open_table(IDENTITIES).map_err(db_err)?;
            let owner = identities
                .get(key.as_str())
                .map_err(db_err)?
                .map(|g| g.value());
            Ok(owner.map(customer_id))
        })
        .await
    }

    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>> {
        self.run(move |db| {
            let cid = customer.0.as_u128();
            let txn = db.begin_read().map_err(db_err)?;
            let by_customer = txn.open_table(IDENTITIES_BY_CUSTOMER).map_err(db_err)?;
            let mut keys = Vec::new();
            for entry in by_customer.range((cid, "")..).map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (owner, key) = k.value();
                if owner != cid {
                    break;
                }
                keys.push(key.to_string());
            }
            Ok(keys)
        })
        .await
    }

    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        // A point read: every identifier of every write is looked up.
        self.read_now(|db| Ok(read_identities(db, &[key])?.pop().flatten()))
    }

    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>> {
        let keys = keys.to_vec();
        self.run(move |db| read_identities(db, &keys)).await
    }

    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let new = new.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut created = Vec::with_capacity(new.len());
            for (customer, keys) in &new {
                let cid = customer.id.0.as_u128();
                let free = {
                    let customers = txn.open_table(CUSTOMERS).map_err(db_err)?;
                    let identities = txn.open_table(IDENTITIES).map_err(db_err)?;
                    let mut free = customers.get(cid).map_err(db_err)?.is_none();
                    for key in keys {
                        free = free && identities.get(key.as_str()).map_err(db_err)?.is_none();
                    }
                    free
                };
                if free {
                    write_customer(&txn, None, customer)?;
                    for key in keys {
                        write_claim(&txn, key, cid)?;
                    }
                    tx::append_events(
                        &txn,
                        &[EventEnvelope::about(
                            customer.id,
                            DomainEvent::CustomerCreated {},
                        )],
                    )?;
                }
                created.push(free);
            }
            txn.commit().map_err(db_err)?;
            Ok(created)
        })
        .await
    }

    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(IDENTITIES_SHARED).map_err(db_err)?;
                if shared {
                    table.insert(key.as_str(), ()).map_err(db_err)?;
                } else {
                    table.remove(key.as_str()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}
