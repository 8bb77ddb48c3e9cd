//! Merge records (written by merge and undo transactions, see [`super::tx`])
//! and merge suggestions ([`MergeStore`]).

use std::ops::Bound;

use async_trait::async_trait;
use redb::ReadableTable;

use super::{db_err, decode, encode, EmbeddedStore, MERGES, MERGES_BY_CUSTOMER, SUGGESTIONS};
use crate::ids::CustomerId;
use crate::linking::{MergeId, MergeRecord, Suggestion};
use crate::store::{MergeStore, StoreResult};
use crate::time::Timestamp;

#[async_trait]
impl MergeStore for EmbeddedStore {
    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let merges = txn.open_table(MERGES).map_err(db_err)?;
            match merges.get(id.0.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("merge", bytes.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        self.run(move |db| {
            let c = customer.0.as_u128();
            let txn = db.begin_read().map_err(db_err)?;
            let by_customer = txn.open_table(MERGES_BY_CUSTOMER).map_err(db_err)?;
            let merges = txn.open_table(MERGES).map_err(db_err)?;
            let mut out: Vec<MergeRecord> = Vec::new();
            for entry in by_customer
                .range((c, 0u128)..=(c, u128::MAX))
                .map_err(db_err)?
            {
                let (k, _) = entry.map_err(db_err)?;
                if let Some(bytes) = merges.get(k.value().1).map_err(db_err)? {
                    out.push(decode("merge", bytes.value())?);
                }
            }
            out.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
            Ok(out)
        })
        .await
    }

    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()> {
        self.upsert_suggestions(std::slice::from_ref(suggestion))
            .await
    }

    async fn upsert_suggestions(&self, suggestions: &[Suggestion]) -> StoreResult<()> {
        if suggestions.is_empty() {
            return Ok(());
        }
        let suggestions = suggestions.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(SUGGESTIONS).map_err(db_err)?;
                for mut suggestion in suggestions {
                    let key = suggestion.key();
                    // A pair dismissed before stays dismissed.
                    if let Some(old) = table.get(key.as_str()).map_err(db_err)? {
                        let old = decode::<Suggestion>("suggestion", old.value())?;
                        suggestion.dismissed_at = suggestion.dismissed_at.or(old.dismissed_at);
                    }
                    let bytes = encode("suggestion", &suggestion)?;
                    table
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn dismiss_suggestion(
        &self,
        a: CustomerId,
        b: CustomerId,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let key = Suggestion::pair_key(a, b);
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let found = {
                let mut table = txn.open_table(SUGGESTIONS).map_err(db_err)?;
                let old = match table.get(key.as_str()).map_err(db_err)? {
                    Some(bytes) => Some(decode::<Suggestion>("suggestion", bytes.value())?),
                    None => None,
                };
                let found = old.is_some();
                if let Some(mut s) = old.filter(|s| s.dismissed_at.is_none()) {
                    s.dismissed_at = Some(at);
                    let bytes = encode("suggestion", &s)?;
                    table
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
                found
            };
            txn.commit().map_err(db_err)?;
            Ok(found)
        })
        .await
    }

    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>> {
        let after = after.map(str::to_string);
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(SUGGESTIONS).map_err(db_err)?;
            let start: Bound<&str> = match &after {
                Some(a) => Bound::Excluded(a.as_str()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for entry in table
                .range::<&str>((start, Bound::Unbounded))
                .map_err(db_err)?
                .take(limit)
            {
                let (_, v) = entry.map_err(db_err)?;
                out.push(decode("suggestion", v.value())?);
            }
            Ok(out)
        })
        .await
    }
}
