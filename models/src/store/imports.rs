//! [`ImportStore`]: bulk imports' records and rejected rows (see
//! [`crate::import`]).

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreResult;
use crate::import::{Import, RejectedRow};

/// Imports and the rows they rejected.
#[async_trait]
pub trait ImportStore: Send + Sync {
    /// Inserts the import, unless one with the same `idempotency_key`
    /// exists: then that one is answered and nothing is written. `true`
    /// when this call inserted it. `Conflict` when the id exists.
    async fn insert_import(&self, import: &Import) -> StoreResult<(Import, bool)>;

    async fn get_import(&self, id: Uuid) -> StoreResult<Option<Import>>;

    /// Commits a chunk: keeps its rejected rows (a row already kept under
    /// the same (import, row) is replaced, so applying a chunk again
    /// changes nothing) and then replaces the import record with `import`
    /// (its counts and position). `NotFound` when there is no such import.
    async fn save_import_chunk(&self, import: &Import, rejected: &[RejectedRow])
        -> StoreResult<()>;

    /// The import's rejected rows by row number, strictly after `after`, at
    /// most `limit`.
    async fn rejected_rows(
        &self,
        import: Uuid,
        after: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<RejectedRow>>;

    /// Imports that are queued or running (to resume at start-up), oldest first.
    async fn unfinished_imports(&self) -> StoreResult<Vec<Import>>;
}
