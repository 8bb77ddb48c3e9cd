//! `crm-api import` and `crm-api export`: the same import and export as the
//! HTTP routes, against the configured store, with a progress bar on
//! standard error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use crm_models::import::{Import, ImportFormat, ImportKind};
use crm_models::service::Crm;
use crm_models::Region;
use indicatif::{ProgressBar, ProgressStyle};

use super::export::{Export, ExportRequest, Kind, RawExportRequest};
use super::import::{parse_mapping, ImportError, Job, NewImport};
use crate::config::Config;

/// What `crm-api export` was asked for.
pub struct ExportArgs {
    pub kind: String,
    pub format: String,
    pub out: Option<PathBuf>,
    pub updated_since: Option<String>,
    pub channel: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub after: Option<String>,
}

/// Creates the file readable by its owner only (replacing one that exists).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

pub async fn export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let kind: Kind = args.kind.parse().map_err(anyhow::Error::msg)?;
    let request = ExportRequest::parse(
        kind,
        &RawExportRequest {
            format: Some(&args.format),
            updated_since: args.updated_since.as_deref(),
            channel: args.channel.as_deref(),
            from: args.from.as_deref(),
            to: args.to.as_deref(),
            after: args.after.as_deref(),
        },
    )
    .map_err(|errors| {
        anyhow::anyhow!(errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; "))
    })?;
    let store = crate::open_store(config).await?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            create_private(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {human_pos} rows exported ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut export = Export::new(store, request);
    let mut rows = 0u64;
    while let Some(part) = export.next_part().await? {
        out.write_all(&part.bytes)?;
        rows += part.rows;
        bar.set_position(rows);
    }
    out.flush()?;
    bar.finish();
    eprintln!("exported {rows} rows");
    Ok(())
}

/// What `crm-api import` was asked for.
pub struct ImportArgs {
    pub file: PathBuf,
    pub kind: String,
    pub format: Option<String>,
    pub mapping: Option<String>,
    pub region: Option<String>,
    pub dry_run: bool,
    /// The id of a stopped import of this file to go on with.
    pub resume: Option<String>,
}

/// The format a file's name says.
pub fn format_of(path: &Path) -> Option<ImportFormat> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "csv" => Some(ImportFormat::Csv),
        "ndjson" | "jsonl" => Some(ImportFormat::Ndjson),
        _ => None,
    }
}

/// The stopped import `id` of this file, ready to go on: made by this
/// command, not finished, of the same kind and a file of the same size. A
/// dry run starts over (what it worked out was kept in memory only).
async fn resumable(
    store: &std::sync::Arc<dyn crm_models::store::Store>,
    id: &str,
    kind: ImportKind,
    bytes_total: u64,
    file: &Path,
) -> anyhow::Result<Import> {
    let id: uuid::Uuid = id
        .parse()
        .map_err(|_| anyhow::anyhow!("--resume takes the import's id (a UUID)"))?;
    let mut import = store
        .get_import(id)
        .await?
        .with_context(|| format!("there is no import {id}"))?;
    anyhow::ensure!(
        import.created_by == "cli",
        "import {id} was posted over HTTP: crm-api resumes it when it starts"
    );
    anyhow::ensure!(
        !import.state.finished(),
        "import {id} is already {}",
        serde_json::to_value(import.state)?
            .as_str()
            .unwrap_or("finished")
    );
    anyhow::ensure!(import.kind == kind, "import {id} is of another --kind");
    anyhow::ensure!(
        import.bytes_total == Some(bytes_total),
        "{} is not the file import {id} read (its size differs)",
        file.display()
    );
    if import.dry_run {
        import.counts = Default::default();
        import.bytes_read = 0;
        import.state = crm_models::import::ImportState::Queued;
    }
    Ok(import)
}

/// The summary both the command and the route answer.
pub fn summary(import: &Import) -> serde_json::Value {
    serde_json::json!({
        "id": import.id,
        "kind": import.kind,
        "state": import.state,
        "dry_run": import.dry_run,
        "rows_read": import.counts.rows_read,
        "created": import.counts.created,
        "linked": import.counts.linked,
        "merged": import.counts.merged,
        "rejected": import.counts.rejected,
        "duplicates": import.counts.duplicates,
        "customers_created": import.counts.customers_created,
    })
}

pub async fn import(config: &Config, args: ImportArgs) -> anyhow::Result<()> {
    let kind = match args.kind.as_str() {
        "customers" => ImportKind::Customers,
        _ => ImportKind::Engagements,
    };
    let format = match args.format.as_deref() {
        Some("csv") => ImportFormat::Csv,
        Some(_) => ImportFormat::Ndjson,
        None => format_of(&args.file)
            .context("say --format csv or --format ndjson (the file's extension does not)")?,
    };
    let mapping: BTreeMap<String, String> =
        parse_mapping(args.mapping.as_deref()).map_err(|_| {
            anyhow::anyhow!("--mapping must be a JSON object of column names to field names")
        })?;
    let region = args
        .region
        .clone()
        .or_else(|| config.default_region.clone());
    let parsed_region = region
        .as_deref()
        .map(Region::parse)
        .transpose()
        .context("--region (or CRM_DEFAULT_REGION)")?;
    let bytes_total = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let store = crate::open_store(config).await?;
    let crm = Crm::new(store.clone()).with_policy(config.link_policy(parsed_region)?);
    let record = match &args.resume {
        Some(id) => resumable(&store, id, kind, bytes_total, &args.file).await?,
        None => {
            let record = NewImport {
                kind,
                format,
                dry_run: args.dry_run,
                mapping,
                region,
                created_by: "cli".into(),
                idempotency_key: None,
                bytes_total: Some(bytes_total),
            }
            .record(uuid::Uuid::now_v7());
            store.insert_import(&record).await?;
            record
        }
    };
    let id = record.id;
    let resume_hint =
        format!("to go on from the last committed row, run the same command with --resume {id}");
    eprintln!("import {id}; if it stops before the end, {resume_hint}");
    let job = match Job::open(crm, record, args.file.clone()).await {
        Ok(job) => job,
        Err(ImportError::Invalid(errors)) => anyhow::bail!(
            "{}",
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => return Err(e.into()),
    };
    let bar = ProgressBar::new(bytes_total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {percent}% {msg} {elapsed} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(job.import.bytes_read);
    let run = job.run(|i| {
        bar.set_position(i.bytes_read);
        bar.set_message(format!(
            "{} rows, {} rejected",
            i.counts.rows_read, i.counts.rejected
        ));
    });
    // Interrupted, the import stops between two of its writes: every
    // committed chunk is kept, and --resume applies the chunk in flight again.
    let done = tokio::select! {
        done = run => match done {
            Ok(done) => done,
            Err(e) => {
                bar.abandon();
                return Err(anyhow::Error::from(e).context(format!("import {id} stopped; {resume_hint}")));
            }
        },
        _ = tokio::signal::ctrl_c() => {
            bar.abandon();
            anyhow::bail!("import {id} interrupted; {resume_hint}");
        }
    };
    bar.finish();
    println!("{}", serde_json::to_string_pretty(&summary(&done))?);
    let rejected = store.rejected_rows(done.id, None, 20).await?;
    for r in &rejected {
        eprintln!("row {}: {}", r.row, r.error);
    }
    if done.counts.rejected > rejected.len() as u64 {
        eprintln!(
            "... {} more rejected rows: GET /v1/imports/{}/rejected",
            done.counts.rejected - rejected.len() as u64,
            done.id
        );
    }
    Ok(())
}
