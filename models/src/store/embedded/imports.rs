//! Bulk imports ([`ImportStore`]).
//!
//! Tables:
//! - `imports`: id → import JSON.
//! - `imports_by_key`: idempotency key hash → id.
//! - `import_rejected`: (import, row) → rejected row JSON.

use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{db_err, decode, encode, EmbeddedStore};
use crate::import::{Import, RejectedRow};
use crate::store::{ImportStore, StoreError, StoreResult};

const IMPORTS: TableDefinition<u128, &[u8]> = TableDefinition::new("imports");
const IMPORTS_BY_KEY: TableDefinition<&str, u128> = TableDefinition::new("imports_by_key");
const REJECTED: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("import_rejected");

/// Creates the tables (at open, with the others).
pub(super) fn open_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(IMPORTS).map_err(db_err)?;
    txn.open_table(IMPORTS_BY_KEY).map_err(db_err)?;
    txn.open_table(REJECTED).map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl ImportStore for EmbeddedStore {
    async fn insert_import(&self, import: &Import) -> StoreResult<(Import, bool)> {
        let import = import.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut imports = txn.open_table(IMPORTS).map_err(db_err)?;
                let mut by_key = txn.open_table(IMPORTS_BY_KEY).map_err(db_err)?;
                if let Some(key) = &import.idempotency_key {
                    let existing = by_key.get(key.as_str()).map_err(db_err)?.map(|g| g.value());
                    if let Some(id) = existing {
                        if let Some(bytes) = imports.get(id).map_err(db_err)? {
                            return Ok((decode("import", bytes.value())?, false));
                        }
                    }
                    by_key
                        .insert(key.as_str(), import.id.as_u128())
                        .map_err(db_err)?;
                }
                if imports.get(import.id.as_u128()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict("import exists".into()));
                }
                let bytes = encode("import", &import)?;
                imports
                    .insert(import.id.as_u128(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok((import, true))
        })
        .await
    }

    async fn get_import(&self, id: Uuid) -> StoreResult<Option<Import>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let imports = txn.open_table(IMPORTS).map_err(db_err)?;
            match imports.get(id.as_u128()).map_err(db_err)? {
                Some(bytes) => decode("import", bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    async fn save_import_chunk(
        &self,
        import: &Import,
        rejected: &[RejectedRow],
    ) -> StoreResult<()> {
        let import = import.clone();
        let rejected = rejected.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut imports = txn.open_table(IMPORTS).map_err(db_err)?;
                if imports.get(import.id.as_u128()).map_err(db_err)?.is_none() {
                    return Err(StoreError::NotFound);
                }
                let mut rows = txn.open_table(REJECTED).map_err(db_err)?;
                for r in &rejected {
                    let bytes = encode("rejected row", r)?;
                    rows.insert((r.import_id.as_u128(), r.row), bytes.as_slice())
                        .map_err(db_err)?;
                }
                let bytes = encode("import", &import)?;
                imports
                    .insert(import.id.as_u128(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn rejected_rows(
        &self,
        import: Uuid,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<RejectedRow>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let rows = txn.open_table(REJECTED).map_err(db_err)?;
            let id = import.as_u128();
            let start = match after {
                Some(row) if row == u64::MAX => return Ok(Vec::new()),
                Some(row) => row + 1,
                None => 0,
            };
            let mut out = Vec::new();
            for entry in rows.range((id, start)..=(id, u64::MAX)).map_err(db_err)? {
                if out.len() >= limit {
                    break;
                }
                let (_, bytes) = entry.map_err(db_err)?;
                out.push(decode("rejected row", bytes.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn unfinished_imports(&self) -> StoreResult<Vec<Import>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let imports = txn.open_table(IMPORTS).map_err(db_err)?;
            let mut out: Vec<Import> = Vec::new();
            for entry in imports.iter().map_err(db_err)? {
                let (_, bytes) = entry.map_err(db_err)?;
                let import: Import = decode("import", bytes.value())?;
                if !import.state.finished() {
                    out.push(import);
                }
            }
            out.sort_by_key(|i| (i.created_at, i.id));
            Ok(out)
        })
        .await
    }
}
