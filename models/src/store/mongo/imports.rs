//! Bulk imports ([`ImportStore`]).
//!
//! Collections: `imports` (one document per import: the record's JSON as a
//! string in `json`, with `idempotency_key`, `finished` and `created_at`
//! beside it for the queries; a unique index on the key where present)
//! and `import_rejected` (one document per rejected row, `_id`
//! `<import>:<row>`, so that keeping a row again replaces it).
//!
//! A chunk writes its rejected rows first and the import record last: a
//! crash between the two leaves rows that the chunk, applied again on
//! resume, writes again identically.

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::{IndexOptions, ReplaceOptions};
use mongodb::{Collection, IndexModel};
use uuid::Uuid;

use super::codec::{is_duplicate_key, limit_of, map_err};
use super::MongoStore;
use crate::import::{Import, RejectedRow};
use crate::store::{ImportStore, StoreError, StoreResult};

const IMPORTS: &str = "imports";
const REJECTED: &str = "import_rejected";

impl MongoStore {
    fn imports(&self) -> Collection<Document> {
        self.db.collection(IMPORTS)
    }

    fn import_rejected(&self) -> Collection<Document> {
        self.db.collection(REJECTED)
    }
}

/// Creates the collections and their indexes (at connect, with the others).
pub(super) async fn create_indexes(store: &MongoStore) -> StoreResult<()> {
    store
        .imports()
        .create_indexes([
            IndexModel::builder()
                .keys(doc! { "idempotency_key": 1 })
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .partial_filter_expression(
                            doc! { "idempotency_key": { "$type": "string" } },
                        )
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! { "finished": 1, "created_at": 1 })
                .build(),
        ])
        .await
        .map_err(map_err)?;
    store
        .import_rejected()
        .create_indexes([IndexModel::builder()
            .keys(doc! { "import_id": 1, "row": 1 })
            .build()])
        .await
        .map_err(map_err)?;
    Ok(())
}

fn import_doc(import: &Import) -> StoreResult<Document> {
    let json = serde_json::to_string(import)
        .map_err(|e| StoreError::Internal(format!("cannot encode import: {e}")))?;
    let mut d = doc! {
        "_id": import.id.to_string(),
        "json": json,
        "finished": import.state.finished(),
        "created_at": crate::time::format(&import.created_at),
    };
    if let Some(key) = &import.idempotency_key {
        d.insert("idempotency_key", key.clone());
    }
    Ok(d)
}

fn json_of<T: serde::de::DeserializeOwned>(d: &Document, what: &str) -> StoreResult<T> {
    let json = d
        .get_str("json")
        .map_err(|_| StoreError::Internal(format!("corrupt {what} record: no json")))?;
    serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("corrupt {what} record: {e}")))
}

fn row_id(import: Uuid, row: u64) -> String {
    format!("{import}:{row:020}")
}

fn row_number(row: u64) -> i64 {
    i64::try_from(row).unwrap_or(i64::MAX)
}

#[async_trait]
impl ImportStore for MongoStore {
    async fn insert_import(&self, import: &Import) -> StoreResult<(Import, bool)> {
        match self.imports().insert_one(import_doc(import)?).await {
            Ok(_) => Ok((import.clone(), true)),
            Err(e) if is_duplicate_key(&e) => {
                if let Some(key) = &import.idempotency_key {
                    let found = self
                        .imports()
                        .find_one(doc! { "idempotency_key": key })
                        .await
                        .map_err(map_err)?;
                    if let Some(d) = found {
                        return Ok((json_of(&d, "import")?, false));
                    }
                }
                Err(StoreError::Conflict("import exists".into()))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get_import(&self, id: Uuid) -> StoreResult<Option<Import>> {
        let found = self
            .imports()
            .find_one(doc! { "_id": id.to_string() })
            .await
            .map_err(map_err)?;
        found.map(|d| json_of(&d, "import")).transpose()
    }

    async fn save_import_chunk(
        &self,
        import: &Import,
        rejected: &[RejectedRow],
    ) -> StoreResult<()> {
        let exists = self
            .imports()
            .find_one(doc! { "_id": import.id.to_string() })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        for r in rejected {
            let json = serde_json::to_string(r)
                .map_err(|e| StoreError::Internal(format!("cannot encode rejected row: {e}")))?;
            let id = row_id(r.import_id, r.row);
            self.import_rejected()
                .replace_one(
                    doc! { "_id": &id },
                    doc! {
                        "_id": &id,
                        "import_id": r.import_id.to_string(),
                        "row": row_number(r.row),
                        "json": json,
                    },
                )
                .with_options(ReplaceOptions::builder().upsert(true).build())
                .await
                .map_err(map_err)?;
        }
        let replaced = self
            .imports()
            .replace_one(doc! { "_id": import.id.to_string() }, import_doc(import)?)
            .await
            .map_err(map_err)?;
        if replaced.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn rejected_rows(
        &self,
        import: Uuid,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<RejectedRow>> {
        let mut filter = doc! { "import_id": import.to_string() };
        if let Some(after) = after {
            filter.insert("row", doc! { "$gt": row_number(after) });
        }
        let docs: Vec<Document> = self
            .import_rejected()
            .find(filter)
            .sort(doc! { "row": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| json_of(d, "rejected row")).collect()
    }

    async fn unfinished_imports(&self) -> StoreResult<Vec<Import>> {
        let docs: Vec<Document> = self
            .imports()
            .find(doc! { "finished": false })
            .sort(doc! { "created_at": 1, "_id": 1 })
            .await
            .map_err(map_err)?
            .try_collect()
            .await
            .map_err(map_err)?;
        docs.iter().map(|d| json_of(d, "import")).collect()
    }
}
