//! Imports posted over HTTP: the body is spooled to a file in
//! `<data dir>/imports/` (the directory 0700, the file 0600, never held in
//! memory), the import runs as a background task a chunk at a time, and an
//! import left unfinished by a stop or a crash resumes when crm-api starts
//! again (from its spooled file, which is removed once the import is done).
//! The spool is on the instance's disk: with several instances behind a
//! load balancer, the one that accepted an import resumes it.

use std::path::{Path, PathBuf};

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

/// Resumes every unfinished import whose spooled file is here; one whose
/// file is gone is marked failed. A dry run starts over (what it worked
/// out is kept in memory only).
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
            // Another instance's spool, or a file removed by hand; an import
            // of `crm-api import` runs only as long as that command.
            if import.created_by != "cli" && import.state == ImportState::Running {
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
