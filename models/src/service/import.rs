//! Creating customers for a chunk of an import's rows.
//!
//! Each row is what `POST /v1/customers` with an API key does (evidence:
//! [`LinkMode::Auto`]), in file order. Most rows of a first import name
//! nobody the store knows and no other row of the chunk: those need no
//! linking, and are created together with one identity read and one store
//! write ([`CustomerStore::insert_customers_owning`], which claims their
//! identifiers race-free as a single create does). Every other row (an
//! identifier another row of the chunk or a stored customer holds, a
//! blocked or shared value) goes through [`Crm::create_customer_with`]
//! one by one, in order.
//!
//! [`CustomerStore::insert_customers_owning`]: crate::store::CustomerStore::insert_customers_owning

use std::collections::HashMap;

use super::{
    clean_name, new_customer, Crm, CrmError, CustomerInput, FieldError, LinkMode, Resolution,
};
use crate::customer::{Customer, CustomerStatus, Identifier};

impl Crm {
    /// Creates or links a customer for each input, in order, with each
    /// one's outcome (the customer as it is after that row).
    pub async fn import_customers(
        &self,
        inputs: Vec<CustomerInput>,
    ) -> Vec<Result<(Customer, Resolution), CrmError>> {
        let mut outcomes: Vec<Option<Result<(Customer, Resolution), CrmError>>> =
            (0..inputs.len()).map(|_| None).collect();
        // How many rows of the chunk name each identifier.
        let mut rows_of: HashMap<String, usize> = HashMap::new();
        let keys: Vec<Vec<String>> = inputs
            .iter()
            .map(|input| {
                let mut keys: Vec<String> = input.identifiers.iter().map(Identifier::key).collect();
                keys.sort();
                keys.dedup();
                for k in &keys {
                    *rows_of.entry(k.clone()).or_default() += 1;
                }
                keys
            })
            .collect();
        // Rows that may be created in bulk: every identifier linkable and
        // named by no other row, a valid name and status.
        let mut candidates: Vec<usize> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let alone = !keys[i].is_empty() && keys[i].iter().all(|k| rows_of.get(k) == Some(&1));
            let linkable = input
                .identifiers
                .iter()
                .all(|id| self.policy.blocked_reason(id).is_none());
            let valid = input.status != Some(CustomerStatus::Merged)
                && clean_name(input.name.as_deref(), "name").is_ok();
            if alone && linkable && valid {
                candidates.push(i);
            }
        }
        if !candidates.is_empty() {
            let all_keys: Vec<String> = candidates.iter().flat_map(|i| keys[*i].clone()).collect();
            match self.store.identities(&all_keys).await {
                Ok(infos) => {
                    let known: HashMap<&str, bool> = all_keys
                        .iter()
                        .map(String::as_str)
                        .zip(infos.iter().map(Option::is_some))
                        .collect();
                    let free: Vec<usize> = candidates
                        .into_iter()
                        .filter(|i| {
                            keys[*i]
                                .iter()
                                .all(|k| known.get(k.as_str()) == Some(&false))
                        })
                        .collect();
                    let new: Vec<(Customer, Vec<String>)> = free
                        .iter()
                        .map(|i| {
                            let input = &inputs[*i];
                            let name = clean_name(input.name.as_deref(), "name").ok().flatten();
                            let c = new_customer(
                                name.as_deref(),
                                input.identifiers.iter(),
                                input.status,
                            );
                            (c, keys[*i].clone())
                        })
                        .collect();
                    if !new.is_empty() {
                        match self.store.insert_customers_owning(&new).await {
                            Ok(created) => {
                                for ((i, (c, _)), ok) in free.iter().zip(new).zip(created) {
                                    if ok {
                                        outcomes[*i] = Some(Ok((c, Resolution::Created)));
                                    }
                                }
                                self.wake_relay();
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "bulk create failed; creating one by one");
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "import identity read failed; creating one by one");
                }
            }
        }
        let mut out = Vec::with_capacity(inputs.len());
        for (input, outcome) in inputs.into_iter().zip(outcomes) {
            out.push(match outcome {
                Some(done) => done,
                None if input.identifiers.is_empty() => {
                    Err(CrmError::Invalid(vec![FieldError::new(
                        "identifiers",
                        "a row needs a phone, an email or a social id",
                    )]))
                }
                None => self.create_customer_with(input, LinkMode::Auto).await,
            });
        }
        out
    }
}
