//! Merge records (written inside merge and undo transactions, see
//! [`super::tx`]) and merge suggestions.

use async_trait::async_trait;
use mongodb::bson::{self, doc, Document};

use super::codec::{collect, from_doc, limit_of, map_err};
use super::MongoStore;
use crate::ids::CustomerId;
use crate::linking::{MergeId, MergeRecord, Suggestion};
use crate::store::{MergeStore, StoreError, StoreResult};
use crate::time::{self, Timestamp};

#[async_trait]
impl MergeStore for MongoStore {
    async fn get_merge(&self, id: MergeId) -> StoreResult<Option<MergeRecord>> {
        let found = self
            .merges
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| from_doc(d, "id")).transpose()
    }

    async fn merges_of(&self, customer: CustomerId) -> StoreResult<Vec<MergeRecord>> {
        let c = customer.to_string();
        let cursor = self
            .merges
            .find(doc! { "$or": [ { "survivor_id": &c }, { "merged_ids": &c } ] })
            .await
            .map_err(map_err)?;
        let mut merges: Vec<MergeRecord> = collect(cursor, "id").await?;
        merges.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        Ok(merges)
    }

    async fn upsert_suggestion(&self, suggestion: &Suggestion) -> StoreResult<()> {
        // `$set` of the new fields only: a dismissal (`dismissed_at`, which
        // a new suggestion does not have) stays.
        let mut fields = bson::to_document(suggestion)
            .map_err(|e| StoreError::Internal(format!("cannot encode a suggestion: {e}")))?;
        fields.remove("dismissed_at");
        self.suggestions
            .update_one(doc! { "_id": suggestion.key() }, doc! { "$set": fields })
            .upsert(true)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn dismiss_suggestion(
        &self,
        a: CustomerId,
        b: CustomerId,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let key = Suggestion::pair_key(a, b);
        let found = self
            .suggestions
            .update_one(
                doc! { "_id": &key, "dismissed_at": null },
                doc! { "$set": { "dismissed_at": time::format(&at) } },
            )
            .await
            .map_err(map_err)?;
        if found.matched_count > 0 {
            return Ok(true);
        }
        // Dismissed before, or no suggestion at all.
        let kept = self
            .suggestions
            .find_one(doc! { "_id": &key })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(map_err)?;
        Ok(kept.is_some())
    }

    async fn list_suggestions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suggestion>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = match after {
            Some(a) => doc! { "_id": { "$gt": a } },
            None => Document::new(),
        };
        let cursor = self
            .suggestions
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?;
        let docs: Vec<Document> = futures::TryStreamExt::try_collect(cursor)
            .await
            .map_err(map_err)?;
        docs.into_iter()
            .map(|mut d| {
                d.remove("_id");
                bson::from_document(d)
                    .map_err(|e| StoreError::Internal(format!("cannot decode a suggestion: {e}")))
            })
            .collect()
    }
}
