//! Imports posted over HTTP: the body is spooled to a file in
//! `<data dir>/imports/` (the directory 0700, the file 0600, never held in
//! memory), the import runs as a background task a chunk at a time, and an
//! import left unfinished by a stop or a crash resumes when crm-api starts
//! again (from its spooled file, which is removed once the import is done).
//! The spool is on the instance's disk: with several instances behind a
//! load balancer, the one that accepted an import resumes it. Another
//! instance starting meanwhile leaves it alone unless it has made no
//! progress for [`ORPHANED_AFTER`] (its instance gone for good).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use crm_models::import::{Import, ImportState};
use crm_models::service::Crm;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::import::{fail, ImportError, Job, MAX_IMPORT_BYTES};

/// Where spooled bodies go.
pub fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("imports")
}

pub fn spool_path(data_dir: &Path, id: uuid::Uuid) -> PathBuf {
    spool_dir(data_dir).join(format!("{id}.spool"))
}

/// Why a body could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the body is larger than {MAX_IMPORT_BYTES} bytes")]
    TooLarge,
    #[error("the body could not be read: {0}")]
    Body(String),
    #[error("cannot write the spool file: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the body to `path` (created 0600, in a 0700 directory); its size.
/// A partial file is removed.
pub async fn spool(body: Body, path: &Path) -> Result<u64, SpoolError> {
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let written = async {
        let mut total: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| SpoolError::Body(e.to_string()))?;
            total += chunk.len() as u64;
            if total > MAX_IMPORT_BYTES {
                return Err(SpoolError::TooLarge);
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.get_ref().sync_all().await?;
        Ok(total)
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    written
}

/// Opens the import's file and runs it in the background (see [`run`]).
pub fn start(crm: Crm, import: Import, path: PathBuf) {
    tokio::spawn(async move {
        let store = crm.store().clone();
        match Job::open(crm, import.clone(), path.clone()).await {
            Ok(job) => run(job, path),
            Err(e) => {
                fail(&store, import, describe(&e)).await;
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
    });
}

/// Runs an opened import in the background; the spool file is removed
/// when it is done (completed or failed), and kept while it may resume.
pub fn run(job: Job, path: PathBuf) {
    let id = job.import.id;
    let store = job.store().clone();
    tokio::spawn(async move {
        match job.run(|_| {}).await {
            Ok(done) => {
                tracing::info!(import = %id, rows = done.counts.rows_read, created = done.counts.created, linked = done.counts.linked, merged = done.counts.merged, rejected = done.counts.rejected, "import completed");
                let _ = tokio::fs::remove_file(&path).await;
            }
            Err(ImportError::Store(e)) => {
                // Left running: it resumes at the next start.
                tracing::error!(import = %id, error = %e, "import stopped: the store failed");
            }
            Err(e) => {
                if let Ok(Some(current)) = store.get_import(id).await {
                    fail(&store, current, describe(&e)).await;
                }
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
    });
}

pub fn describe(e: &ImportError) -> String {
    match e {
        ImportError::Invalid(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// How long an unfinished import whose spooled file is not on this
/// instance may go without a committed chunk before this instance, starting,
/// takes it for orphaned and marks it failed. The instance running it
/// commits a chunk every second or so; one that stopped resumes it when it
/// starts again, which is usually sooner.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(10 * 60);

/// Whether an unfinished import whose spooled file is not here is to be
/// marked failed at `now`: posted over HTTP (an import of `crm-api import`
/// runs only as long as that command, which resumes it itself), and
/// without progress for [`ORPHANED_AFTER`].
pub fn orphaned(import: &Import, now: crm_models::time::Timestamp) -> bool {
    let idle = (now - import.updated_at).to_std().unwrap_or_default();
    import.created_by != "cli"
        && matches!(import.state, ImportState::Queued | ImportState::Running)
        && idle >= ORPHANED_AFTER
}

/// Resumes every unfinished import whose spooled file is here. One whose
/// file is not here is another instance's, or was removed by hand: it is
/// marked failed once it is [`orphaned`]. A dry run starts over (what it
/// worked out is kept in memory only).
pub async fn resume_unfinished(crm: Crm, data_dir: PathBuf) {
    let store = crm.store().clone();
    let unfinished = match store.unfinished_imports().await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list unfinished imports");
            return;
        }
    };
    for mut import in unfinished {
        let path = spool_path(&data_dir, import.id);
        if !path.exists() {
            if orphaned(&import, crm_models::time::now()) {
                fail(
                    &store,
                    import,
                    "the spooled file is gone; post it again".into(),
                )
                .await;
            }
            continue;
        }
        if import.dry_run {
            import.counts = Default::default();
            import.bytes_read = 0;
            import.state = ImportState::Queued;
        }
        tracing::info!(import = %import.id, from_row = import.counts.rows_read, "resuming import");
        start(crm.clone(), import, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_models::import::{ImportCounts, ImportFormat, ImportKind};
    use crm_models::time;

    fn import(state: ImportState, created_by: &str, idle: Duration) -> Import {
        let now = time::now();
        let updated = now - chrono::Duration::from_std(idle).unwrap();
        Import {
            id: uuid::Uuid::now_v7(),
            kind: ImportKind::Customers,
            format: ImportFormat::Csv,
            state,
            dry_run: false,
            idempotency_key: None,
            mapping: Default::default(),
            region: None,
            created_by: created_by.into(),
            created_at: updated,
            updated_at: updated,
            finished_at: None,
            bytes_total: Some(1000),
            bytes_read: 0,
            columns: Vec::new(),
            counts: ImportCounts::default(),
            error: None,
        }
    }

    #[test]
    fn only_an_import_idle_for_the_grace_period_counts_as_orphaned() {
        let now = time::now();
        let minute = Duration::from_secs(60);
        // Another instance's import, running or about to: left alone.
        for state in [ImportState::Queued, ImportState::Running] {
            assert!(!orphaned(&import(state, "user:1", minute), now));
            assert!(orphaned(
                &import(state, "user:1", ORPHANED_AFTER + minute),
                now
            ));
        }
        // The command line resumes its own; finished ones are finished.
        let idle = ORPHANED_AFTER + minute;
        assert!(!orphaned(&import(ImportState::Running, "cli", idle), now));
        assert!(!orphaned(
            &import(ImportState::Completed, "user:1", idle),
            now
        ));
        assert!(!orphaned(&import(ImportState::Failed, "user:1", idle), now));
    }
}
