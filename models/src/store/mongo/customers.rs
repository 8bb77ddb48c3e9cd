//! Customers and identities.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::codec::{collect, from_doc, identity_info, is_duplicate_key, limit_of, map_err, to_doc};
use super::tx::{MongoTx, Work};
use super::MongoStore;
use crate::customer::Customer;
use crate::event::{DomainEvent, EventEnvelope};
use crate::ids::CustomerId;
use crate::linking::IdentityInfo;
use crate::store::{CustomerCursor, CustomerStore, StoreResult, Tx};
use crate::time::{self, Timestamp};

/// [`crate::store::CustomerStore::insert_customer`]: the customer with its
/// `customer.created` event.
struct InsertCustomer<'c>(&'c Customer);

#[async_trait]
impl Work for InsertCustomer<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        let customer = self.0;
        let store = tx.store;
        tx.insert_one(
            &store.customers,
            to_doc(customer, "id")?,
            &format!("customer {} exists", customer.id),
        )
        .await?;
        tx.append_events(&[EventEnvelope::about(
            customer.id,
            DomainEvent::CustomerCreated {},
        )])
        .await
    }
}

/// [`crate::store::CustomerStore::insert_customers_owning`], in one transaction: one
/// read of the customers and one of the keys, then the inserts in batches.
struct InsertOwning<'n> {
    new: &'n [(Customer, Vec<String>)],
    created: Vec<bool>,
}

#[async_trait]
impl Work for InsertOwning<'_> {
    async fn run(&mut self, tx: &mut MongoTx<'_>) -> StoreResult<()> {
        self.created.clear();
        let store = tx.store;
        let ids: Vec<String> = self.new.iter().map(|(c, _)| c.id.to_string()).collect();
        let existing: HashSet<String> = tx
            .find_all(
                &store.customers,
                doc! { "_id": { "$in": &ids } },
                None,
                Some(doc! { "_id": 1 }),
            )
            .await?
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        let all_keys: Vec<&String> = self.new.iter().flat_map(|(_, keys)| keys).collect();
        // Each key's record: `true` when it has an owner, `false` when it
        // is only marked shared.
        let mut owned: HashMap<String, bool> = HashMap::new();
        for d in tx
            .find_all(
                &store.identities,
                doc! { "_id": { "$in": &all_keys } },
                None,
                None,
            )
            .await?
        {
            if let Ok(key) = d.get_str("_id") {
                owned.insert(key.to_string(), identity_info(&d)?.owner.is_some());
            }
        }

        let mut customers = Vec::new();
        let mut identities = Vec::new();
        let mut shared_claims: Vec<(String, String)> = Vec::new();
        let mut events = Vec::new();
        let mut inserted: HashSet<String> = HashSet::new();
        for ((customer, keys), id) in self.new.iter().zip(&ids) {
            let free = !existing.contains(id)
                && !inserted.contains(id)
                && keys.iter().all(|k| owned.get(k) != Some(&true));
            self.created.push(free);
            if !free {
                continue;
            }
            inserted.insert(id.clone());
            customers.push(to_doc(customer, "id")?);
            let mut seen = HashSet::new();
            for key in keys {
                if !seen.insert(key) {
                    continue;
                }
                match owned.insert(key.clone(), true) {
                    None => identities.push(doc! { "_id": key, "customer_id": id }),
                    Some(_) => shared_claims.push((key.clone(), id.clone())),
                }
            }
            events.push(EventEnvelope::about(
                customer.id,
                DomainEvent::CustomerCreated {},
            ));
        }
        for (coll, docs) in [
            (&store.customers, customers),
            (&store.identities, identities),
        ] {
            match tx.insert_many(coll, docs).await {
                Ok(()) => {}
                // Written by a concurrent transaction after this one read.
                Err(e) if is_duplicate_key(&e) => {
                    return Err(tx.rerun("customers or identities inserted concurrently"))
                }
                Err(e) => return Err(tx.fail(e)),
            }
        }
        for (key, id) in shared_claims {
            tx.update_one(
                &store.identities,
                doc! { "_id": key, "customer_id": { "$exists": false } },
                doc! { "$set": { "customer_id": id } },
            )
            .await?;
        }
        tx.append_events(&events).await
    }
}

#[async_trait]
impl CustomerStore for MongoStore {
    async fn insert_customer(&self, customer: &Customer) -> StoreResult<()> {
        self.run(&mut InsertCustomer(customer)).await
    }

    async fn get_customer(&self, id: CustomerId) -> StoreResult<Option<Customer>> {
        let found = self
            .customers
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn get_customers(&self, ids: &[CustomerId]) -> StoreResult<Vec<Customer>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let cursor = self
            .customers
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
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
        let mut clauses = Vec::new();
        if let Some(since) = updated_since {
            clauses.push(doc! { "updated_at": { "$gte": time::format(&since) } });
        }
        if let Some(c) = after {
            let at = time::format(&c.updated_at);
            clauses.push(doc! { "$or": [
                { "updated_at": { "$gt": &at } },
                { "updated_at": &at, "_id": { "$gt": c.id.to_string() } },
            ] });
        }
        let filter = if clauses.is_empty() {
            Document::new()
        } else {
            doc! { "$and": clauses }
        };
        let cursor = self
            .customers
            .find(filter)
            .sort(doc! { "updated_at": 1, "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    // --- identities ---

    async fn customers_with_phone(&self, phone: &crate::PhoneNumber) -> StoreResult<Vec<Customer>> {
        let cursor = self
            .customers
            .find(doc! { "phones": phone.as_str(), "status": { "$ne": "merged" } })
            .await
            .map_err(map_err)?;
        collect(cursor, "id").await
    }

    async fn identity_owner(&self, key: &str) -> StoreResult<Option<CustomerId>> {
        Ok(self.identity(key).await?.and_then(|i| i.owner))
    }

    async fn identities_of(&self, customer: CustomerId) -> StoreResult<Vec<String>> {
        let cursor = self
            .identities
            .find(doc! { "customer_id": customer.to_string() })
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(map_err)?;
        let mut keys = docs
            .iter()
            .map(super::codec::string_id)
            .collect::<StoreResult<Vec<String>>>()?;
        // The server sorts already; make "sorted" not depend on its collation.
        keys.sort();
        Ok(keys)
    }

    async fn identity(&self, key: &str) -> StoreResult<Option<IdentityInfo>> {
        let found = self
            .identities
            .find_one(doc! { "_id": key })
            .await
            .map_err(map_err)?;
        found.as_ref().map(identity_info).transpose()
    }

    async fn set_identity_shared(&self, key: &str, shared: bool) -> StoreResult<()> {
        self.identities
            .update_one(doc! { "_id": key }, doc! { "$set": { "shared": shared } })
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn identities(&self, keys: &[String]) -> StoreResult<Vec<Option<IdentityInfo>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cursor = self
            .identities
            .find(doc! { "_id": { "$in": keys } })
            .await
            .map_err(map_err)?;
        let mut found: HashMap<String, IdentityInfo> = HashMap::with_capacity(keys.len());
        while let Some(d) = cursor.try_next().await.map_err(map_err)? {
            let Ok(key) = d.get_str("_id").map(str::to_string) else {
                continue;
            };
            found.insert(key, identity_info(&d)?);
        }
        Ok(keys.iter().map(|k| found.get(k).copied()).collect())
    }

    async fn insert_customers_owning(
        &self,
        new: &[(Customer, Vec<String>)],
    ) -> StoreResult<Vec<bool>> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut work = InsertOwning {
            new,
            created: Vec::with_capacity(new.len()),
        };
        self.run(&mut work).await?;
        Ok(work.created)
    }
}
