//! Import: customers or engagements from a CSV or NDJSON file, through the
//! same parsing and identity linking as live traffic.
//!
//! - A file is read a chunk of [`CHUNK`] rows at a time, and parsed, on a
//!   blocking thread one chunk ahead of the chunk being applied (the next
//!   chunk's parse overlaps the current chunk's store write); nothing holds
//!   the whole file. The HTTP route spools the body to a file beside the
//!   store (readable by its owner only) first; `crm-api import` reads its
//!   file.
//! - Customer rows go through [`Crm::import_customers`] (what an API key's
//!   `POST /v1/customers` does: links to the customer an identifier names,
//!   merges under the same safeguards); engagement rows through the one
//!   ingest parser and [`Crm::record_engagements`], as a batch upload.
//! - After each chunk the import record (counts, last row, bytes read) and
//!   the chunk's rejected rows are committed together
//!   ([`ImportStore::save_import_chunk`]). A restart resumes after the last
//!   committed row: the chunk that was in flight is applied again. Its rows
//!   find the customers (and engagements, by their `client_event_id`) they
//!   made the first time, and each row is counted as its first application
//!   counted it (created, linked or merged; see `replay`).
//! - A row identified only by blocked values is rejected: it could never
//!   be told apart from the next one, nor found again on resume.
//! - A dry run writes no customer or engagement: each row is checked and
//!   its outcome worked out from the store and the file's earlier rows
//!   under the linker's safeguards (see `dry_run`, which bounds what it
//!   keeps); the record and the rejected rows are kept as for an import.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crm_models::customer::{CustomerStatus, Identifier};
use crm_models::import::{
    Import, ImportCounts, ImportFormat, ImportKind, ImportState, RejectedRow,
};
use crm_models::ingest::{self, Json, Origin, Shape};
use crm_models::service::{Crm, CrmError, CustomerInput, FieldError, Resolution};
use crm_models::store::{Store, StoreError};
use crm_models::time::{self, Timestamp};
use crm_models::{Email, PhoneNumber, Region};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::dry_run::{DryRun, DryRunError};
use super::replay;

/// Rows applied and committed together.
pub const CHUNK: usize = 1000;
/// Rejected rows a dry run keeps (the first ones).
pub const DRY_RUN_REJECTED: u64 = 100;
/// Largest file the HTTP route accepts.
pub const MAX_IMPORT_BYTES: u64 = 1 << 30;
/// How often a chunk is tried again after the store failed.
const STORE_RETRIES: u32 = 5;

/// The fields a column can be mapped to.
pub const CUSTOMER_FIELDS: &str =
    "name, phones, emails, status, social.<network> or ignore (phone and email also work)";

/// A mapping or header problem found before any row is applied.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("invalid import")]
    Invalid(Vec<FieldError>),
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The import cannot go on (a dry run of a file too large to follow).
    #[error("{0}")]
    Stopped(String),
}

/// One row as read from the file.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// 1 for the first row after a CSV's header (or an NDJSON's first line).
    pub number: u64,
    pub cells: Vec<String>,
    /// Bytes of the file read up to the end of this row.
    pub end: u64,
}

/// Reads a file's rows a chunk at a time.
pub struct RowReader {
    format: ImportFormat,
    csv: Option<csv::Reader<CountingReader>>,
    lines: Option<BufReader<CountingReader>>,
    counted: Arc<std::sync::atomic::AtomicU64>,
    /// A CSV's header (an NDJSON file: `line`).
    pub columns: Vec<String>,
    next: u64,
}

/// A reader that counts the bytes read through it.
struct CountingReader {
    inner: File,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl RowReader {
    pub fn open(path: &Path, format: ImportFormat) -> std::io::Result<RowReader> {
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let inner = CountingReader {
            inner: File::open(path)?,
            count: Arc::clone(&counted),
        };
        let mut reader = RowReader {
            format,
            csv: None,
            lines: None,
            counted,
            columns: vec!["line".into()],
            next: 1,
        };
        match format {
            ImportFormat::Csv => {
                let mut csv = csv::ReaderBuilder::new()
                    .flexible(true)
                    .has_headers(true)
                    .from_reader(inner);
                let header = csv.byte_headers().map_err(std::io::Error::other)?;
                reader.columns = header
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let text = String::from_utf8_lossy(c);
                        let text = if i == 0 {
                            text.trim_start_matches('\u{feff}')
                        } else {
                            &text
                        };
                        text.trim().to_string()
                    })
                    .collect();
                reader.csv = Some(csv);
            }
            ImportFormat::Ndjson => reader.lines = Some(BufReader::new(inner)),
        }
        Ok(reader)
    }

    /// Up to `n` rows; fewer at the end of the file. A row that is not UTF-8
    /// is read as one cell holding the error, which the row's parse rejects.
    pub fn read(&mut self, n: usize) -> std::io::Result<Vec<RawRow>> {
        let mut rows = Vec::with_capacity(n);
        if let Some(csv) = &mut self.csv {
            let mut record = csv::ByteRecord::new();
            while rows.len() < n {
                if !csv
                    .read_byte_record(&mut record)
                    .map_err(std::io::Error::other)?
                {
                    break;
                }
                let cells = record
                    .iter()
                    .map(|c| match std::str::from_utf8(c) {
                        Ok(s) => s.to_string(),
                        Err(_) => "\u{fffd}".to_string(),
                    })
                    .collect();
                rows.push(RawRow {
                    number: self.next,
                    cells,
                    end: record.position().map_or(0, |p| p.byte()) + record.as_slice().len() as u64,
                });
                self.next += 1;
            }
            // The position read up to is exact only at the end of the file.
            if rows.len() < n {
                let all = self.counted.load(std::sync::atomic::Ordering::Relaxed);
                if let Some(last) = rows.last_mut() {
                    last.end = all;
                }
            }
        } else if let Some(lines) = &mut self.lines {
            let mut at = self.counted.load(std::sync::atomic::Ordering::Relaxed)
                - lines.buffer().len() as u64;
            let mut line = Vec::new();
            while rows.len() < n {
                line.clear();
                let read = lines.read_until(b'\n', &mut line)?;
                if read == 0 {
                    break;
                }
                at += read as u64;
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_start_matches('\u{feff}').trim();
                if text.is_empty() {
                    continue;
                }
                rows.push(RawRow {
                    number: self.next,
                    cells: vec![text.to_string()],
                    end: at,
                });
                self.next += 1;
            }
        }
        Ok(rows)
    }

    pub fn format(&self) -> ImportFormat {
        self.format
    }
}

/// How an import reads its rows: the mapping checked against the header.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: ImportKind,
    pub format: ImportFormat,
    /// The CSV's header.
    headers: Vec<String>,
    /// The field of each CSV column.
    fields: Vec<String>,
    mapping: BTreeMap<String, String>,
    region: Option<Region>,
}

fn known_customer_field(field: &str) -> bool {
    matches!(
        field,
        "name" | "phones" | "phone" | "emails" | "email" | "status" | "ignore"
    ) || field
        .strip_prefix("social.")
        .is_some_and(crm_models::customer::valid_social_network)
}

/// Reads a mapping given as JSON (`{"Mobile": "phones"}`).
pub fn parse_mapping(raw: Option<&str>) -> Result<BTreeMap<String, String>, Vec<FieldError>> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_str::<BTreeMap<String, String>>(raw).map_err(|_| {
        vec![FieldError::new(
            "mapping",
            "must be a JSON object of column names to field names",
        )]
    })
}

impl Plan {
    /// Checks the mapping against the file's columns and the kind's fields.
    pub fn new(
        kind: ImportKind,
        format: ImportFormat,
        headers: &[String],
        mapping: &BTreeMap<String, String>,
        region: Option<Region>,
    ) -> Result<Plan, Vec<FieldError>> {
        let mut errors = Vec::new();
        for (column, field) in mapping {
            if kind == ImportKind::Customers && !known_customer_field(field) {
                errors.push(FieldError::new(
                    format!("mapping.{column}"),
                    format!("unknown field {field:?}: one of {CUSTOMER_FIELDS}"),
                ));
            }
            if format == ImportFormat::Csv && !headers.iter().any(|c| c == column) {
                errors.push(FieldError::new(
                    format!("mapping.{column}"),
                    "the file has no such column",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let fields = headers
            .iter()
            .map(|c| {
                mapping
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| c.to_ascii_lowercase())
            })
            .collect();
        Ok(Plan {
            kind,
            format,
            headers: headers.to_vec(),
            fields,
            mapping: mapping.clone(),
            region,
        })
    }

    /// The row as (source name, field, value) triples.
    fn cells(&self, row: &RawRow) -> Result<Vec<(String, String, Value)>, String> {
        match self.format {
            ImportFormat::Csv => Ok(row
                .cells
                .iter()
                .enumerate()
                .filter_map(|(i, cell)| {
                    let field = self.fields.get(i)?.clone();
                    let name = self.headers.get(i)?.clone();
                    Some((name, field, Value::String(cell.clone())))
                })
                .collect()),
            ImportFormat::Ndjson => {
                let line = row.cells.first().map(String::as_str).unwrap_or("");
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(m)) => Ok(m
                        .into_iter()
                        .map(|(k, v)| {
                            let field = self.mapping.get(&k).cloned().unwrap_or_else(|| k.clone());
                            (k, field, v)
                        })
                        .collect()),
                    Ok(_) => Err("line: must be a JSON object".into()),
                    Err(_) => Err("line: not valid JSON".into()),
                }
            }
        }
    }

    /// A customer row: the same parsers as `POST /v1/customers`. The error
    /// names the source column and the reason.
    fn customer(&self, row: &RawRow, crm: &Crm) -> Result<CustomerInput, String> {
        let mut errors: Vec<String> = Vec::new();
        let mut name: Option<String> = None;
        let mut status: Option<CustomerStatus> = None;
        let mut identifiers: Vec<Identifier> = Vec::new();
        let mut blocked: Vec<String> = Vec::new();
        for (source, field, value) in self.cells(row)? {
            let texts: Vec<String> = match &value {
                Value::Null => Vec::new(),
                Value::String(s) => split_list(&field, s),
                Value::Array(items) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Value::Object(m) if field == "social" => {
                    for (network, id) in m {
                        match id.as_str() {
                            Some(id) => {
                                push_social(network, id, &source, &mut identifiers, &mut errors)
                            }
                            None => errors.push(format!("{source}.{network}: must be a string")),
                        }
                    }
                    continue;
                }
                other => vec![other.to_string()],
            };
            match field.as_str() {
                "name" => name = texts.into_iter().next().map(|t| unescape(&t)),
                "status" => {
                    for t in texts {
                        match t.trim() {
                            "" => {}
                            "active" => status = Some(CustomerStatus::Active),
                            "inactive" => status = Some(CustomerStatus::Inactive),
                            _ => errors.push(format!("{source}: must be active or inactive")),
                        }
                    }
                }
                "phones" | "phone" => {
                    for t in texts {
                        match PhoneNumber::parse(&t, self.region) {
                            Ok(p) => {
                                let id = Identifier::Phone(p);
                                if let Some(reason) = crm.policy().blocked_reason(&id) {
                                    blocked.push(format!("{source}: {reason}"));
                                }
                                identifiers.push(id);
                            }
                            Err(e) => errors.push(format!("{source}: {e}")),
                        }
                    }
                }
                "emails" | "email" => {
                    for t in texts {
                        match Email::parse(&t) {
                            Ok(e) => {
                                let id = Identifier::Email(e);
                                if let Some(reason) = crm.policy().blocked_reason(&id) {
                                    blocked.push(format!("{source}: {reason}"));
                                }
                                identifiers.push(id);
                            }
                            Err(e) => errors.push(format!("{source}: {e}")),
                        }
                    }
                }
                f if f.starts_with("social.") => {
                    let network = &f["social.".len()..];
                    for t in texts {
                        push_social(network, &t, &source, &mut identifiers, &mut errors);
                    }
                }
                "social" => {
                    // A CSV cell as the export writes it: `facebook:123; twitter:ann`.
                    for t in texts {
                        match t.split_once(':') {
                            Some((network, id)) => push_social(
                                network.trim(),
                                id,
                                &source,
                                &mut identifiers,
                                &mut errors,
                            ),
                            None => errors.push(format!("{source}: must be network:id")),
                        }
                    }
                }
                // Columns of no field (an export's ids and times) are left out.
                _ => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let linkable = identifiers
            .iter()
            .any(|id| crm.policy().blocked_reason(id).is_none());
        if !linkable {
            if blocked.is_empty() {
                return Err("phones: a row needs a phone, an email or a social id".into());
            }
            blocked.push("no other phone, email or social id names the customer".into());
            return Err(blocked.join("; "));
        }
        Ok(CustomerInput {
            name,
            identifiers,
            status,
        })
    }

    /// An engagement row: the object `POST /v1/engagements` reads, through
    /// the one ingest parser.
    fn engagement(
        &self,
        row: &RawRow,
        import: &ImportRef,
    ) -> Result<crm_models::service::NewEngagement, String> {
        let mut object = Map::new();
        let mut customer = Map::new();
        for (_, field, value) in self.cells(row)? {
            let value = match value {
                Value::String(s) if s.is_empty() => continue,
                Value::String(s) => Value::String(unescape(&s)),
                Value::Null => continue,
                v => v,
            };
            match field.as_str() {
                // What an export adds beside the engagement's fields.
                "id" | "customer_id" | "recorded_at" | "cursor" | "source" | "ignore" => {}
                "customer_name" => {
                    customer.insert("name".into(), value);
                }
                "customer_phone" => {
                    customer.insert("phone".into(), value);
                }
                "customer_email" => {
                    customer.insert("email".into(), value);
                }
                "duration_s" => {
                    let n = match &value {
                        Value::String(s) => s
                            .trim()
                            .parse::<u64>()
                            .map(Value::from)
                            .unwrap_or(value.clone()),
                        _ => value,
                    };
                    object.insert(field, n);
                }
                _ => {
                    object.insert(field, value);
                }
            }
        }
        if !customer.is_empty() {
            let entry = object
                .entry("customer")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = entry {
                for (k, v) in customer {
                    m.entry(k).or_insert(v);
                }
            }
        }
        object
            .entry("client_event_id")
            .or_insert_with(|| Value::String(format!("import-{}-{}", import.id, row.number)));
        let origin = Origin {
            region: self.region,
            device_id: None,
            user_id: import.created_by.clone(),
            now: time::now(),
        };
        let json = Json::from_value(Value::Object(object));
        ingest::parse_engagement(&json.item(), "", Shape::Engagement, &origin)
            .map_err(|errors| field_errors(&errors))
    }
}

fn push_social(
    network: &str,
    id: &str,
    source: &str,
    identifiers: &mut Vec<Identifier>,
    errors: &mut Vec<String>,
) {
    let id = id.trim();
    if id.is_empty() {
        return;
    }
    let mut problems = Vec::new();
    let found = super::super::routes::input::social(
        &[(network.to_string(), id.to_string())].into(),
        &mut problems,
    );
    identifiers.extend(found);
    errors.extend(
        problems
            .into_iter()
            .map(|p| format!("{source}: {}", p.message)),
    );
}

/// A list cell: items separated by `;`, `,` or `|` (a phone's own spaces
/// and brackets stay). Other fields are one value.
fn split_list(field: &str, cell: &str) -> Vec<String> {
    let list = matches!(field, "phones" | "phone" | "emails" | "email" | "social")
        || field.starts_with("social.");
    if !list {
        return vec![cell.to_string()];
    }
    cell.split([';', ',', '|', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Takes off the `'` an export puts before a text a spreadsheet would read
/// as a formula.
fn unescape(text: &str) -> String {
    match text.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@']) => rest.to_string(),
        _ => text.to_string(),
    }
}

fn field_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A row's refusal by the service, as its error; `None` when the failure is
/// the store's (the chunk is tried again).
fn crm_error(e: &CrmError) -> Option<String> {
    match e {
        CrmError::Invalid(errors) => Some(field_errors(errors)),
        CrmError::Store(_) | CrmError::Contention => None,
        other => Some(format!("row: {other}")),
    }
}

/// Why a chunk was not applied.
enum ChunkError {
    /// The store failed: the chunk is tried again.
    Store(StoreError),
    /// The import cannot go on (the reason).
    Stop(String),
}

impl From<StoreError> for ChunkError {
    fn from(e: StoreError) -> Self {
        ChunkError::Store(e)
    }
}

/// What a running import keeps between chunks.
#[derive(Default)]
struct Session {
    /// Dry run: what the file's earlier rows would have made.
    dry_run: DryRun,
    /// The chunk is applied again (after a restart or a store failure):
    /// customers created at or after this time count as this chunk's.
    replay_since: Option<Timestamp>,
}

/// What an engagement row's parse needs of its import.
#[derive(Clone)]
struct ImportRef {
    id: Uuid,
    created_by: String,
}

/// A chunk's rows as read, and each one parsed (or why not).
struct Chunk {
    rows: Vec<RawRow>,
    parsed: Parsed,
}

enum Parsed {
    Customers(Vec<Result<CustomerInput, String>>),
    Engagements(Vec<Result<crm_models::service::NewEngagement, String>>),
}

impl Plan {
    /// Parses every row of a chunk (no I/O).
    fn parse(&self, rows: &[RawRow], crm: &Crm, import: &ImportRef) -> Parsed {
        match self.kind {
            ImportKind::Customers => {
                Parsed::Customers(rows.iter().map(|r| self.customer(r, crm)).collect())
            }
            ImportKind::Engagements => {
                Parsed::Engagements(rows.iter().map(|r| self.engagement(r, import)).collect())
            }
        }
    }
}

/// Reads and parses the file's chunks on a blocking thread, one chunk ahead
/// of the one being applied: the next chunk's parse overlaps the current
/// chunk's store write. The last chunk sent is an empty one (the end of the
/// file) or a read error; the thread stops then, or when the job is dropped.
fn read_ahead(
    mut reader: RowReader,
    plan: Arc<Plan>,
    crm: Crm,
    import: ImportRef,
) -> tokio::sync::mpsc::Receiver<std::io::Result<Chunk>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::task::spawn_blocking(move || loop {
        let rows = match reader.read(CHUNK) {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let end = rows.is_empty();
        let parsed = plan.parse(&rows, &crm, &import);
        if tx.blocking_send(Ok(Chunk { rows, parsed })).is_err() || end {
            return;
        }
    });
    rx
}

/// The job's file: opened (rows already committed skipped), then read ahead
/// from the first step on.
enum Rows {
    Opened(Box<RowReader>),
    Reading(tokio::sync::mpsc::Receiver<std::io::Result<Chunk>>),
    Done,
}

/// A running import: the record, the file and the service.
pub struct Job {
    crm: Crm,
    pub import: Import,
    plan: Arc<Plan>,
    rows: Rows,
    session: Session,
}

impl Job {
    /// Opens the file and checks the mapping; skips the rows already
    /// committed (a resumed import).
    pub async fn open(crm: Crm, import: Import, path: PathBuf) -> Result<Job, ImportError> {
        let format = import.format;
        let committed = import.counts.rows_read;
        let mut reader = tokio::task::spawn_blocking(move || -> std::io::Result<RowReader> {
            let mut reader = RowReader::open(&path, format)?;
            let mut left = committed;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                if reader.read(n)?.len() < n {
                    break;
                }
                left -= n as u64;
            }
            Ok(reader)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        let region = match import.region.as_deref() {
            Some(r) => Some(
                Region::parse(r)
                    .map_err(|e| ImportError::Invalid(vec![FieldError::new("region", e)]))?,
            ),
            None => None,
        };
        let plan = Plan::new(
            import.kind,
            import.format,
            &reader.columns,
            &import.mapping,
            region,
        )
        .map_err(ImportError::Invalid)?;
        let mut import = import;
        import.columns = std::mem::take(&mut reader.columns);
        let replay_since =
            (committed > 0 || import.state == ImportState::Running).then_some(import.updated_at);
        Ok(Job {
            crm,
            import,
            plan: Arc::new(plan),
            rows: Rows::Opened(Box::new(reader)),
            session: Session {
                replay_since,
                ..Session::default()
            },
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.crm.store()
    }

    /// Marks a queued import running (saved): from then on, a restart
    /// treats its first uncommitted chunk as possibly half-applied.
    pub async fn begin(&mut self) -> Result<(), ImportError> {
        if self.import.state == ImportState::Queued {
            self.import.state = ImportState::Running;
            self.import.updated_at = time::now();
            self.crm
                .store()
                .save_import_chunk(&self.import, &[])
                .await?;
        }
        Ok(())
    }

    /// Reads, applies and commits the next chunk; false at the end of the
    /// file (the import is then completed and saved).
    pub async fn step(&mut self) -> Result<bool, ImportError> {
        if let Rows::Opened(_) = self.rows {
            if let Rows::Opened(reader) = std::mem::replace(&mut self.rows, Rows::Done) {
                let import = ImportRef {
                    id: self.import.id,
                    created_by: self.import.created_by.clone(),
                };
                self.rows = Rows::Reading(read_ahead(
                    *reader,
                    Arc::clone(&self.plan),
                    self.crm.clone(),
                    import,
                ));
            }
        }
        let Rows::Reading(chunks) = &mut self.rows else {
            return Ok(false);
        };
        let chunk = chunks
            .recv()
            .await
            .ok_or_else(|| std::io::Error::other("the file's reader stopped"))??;
        if chunk.rows.is_empty() {
            self.rows = Rows::Done;
            self.import.state = ImportState::Completed;
            self.import.finished_at = Some(time::now());
            self.import.updated_at = time::now();
            if let Some(total) = self.import.bytes_total {
                self.import.bytes_read = total;
            }
            self.crm
                .store()
                .save_import_chunk(&self.import, &[])
                .await?;
            return Ok(false);
        }
        let Chunk { rows, parsed } = chunk;
        let mut attempt = 0;
        let (counts, rejected) = loop {
            match self.apply(&rows, &parsed).await {
                Ok(done) => break done,
                Err(ChunkError::Stop(reason)) => return Err(ImportError::Stopped(reason)),
                Err(ChunkError::Store(e)) if attempt < STORE_RETRIES => {
                    attempt += 1;
                    tracing::warn!(import = %self.import.id, error = %e, attempt, "import chunk failed; trying it again");
                    // Some of the chunk may have been written: count it as a replay.
                    self.session
                        .replay_since
                        .get_or_insert(self.import.updated_at);
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(ChunkError::Store(e)) => return Err(e.into()),
            }
        };
        self.session.replay_since = None;
        let mut counts = counts;
        counts.rows_read = rows.len() as u64;
        self.import.counts.add(&counts);
        self.import.state = ImportState::Running;
        self.import.updated_at = time::now();
        if let Some(last) = rows.last() {
            self.import.bytes_read = last.end;
        }
        let rejected: Vec<RejectedRow> = if self.import.dry_run {
            let kept = self.import.counts.rejected - counts.rejected;
            let room = DRY_RUN_REJECTED.saturating_sub(kept) as usize;
            rejected.into_iter().take(room).collect()
        } else {
            rejected
        };
        self.crm
            .store()
            .save_import_chunk(&self.import, &rejected)
            .await?;
        Ok(true)
    }

    /// Applies one chunk; a store failure fails the whole chunk.
    async fn apply(
        &mut self,
        rows: &[RawRow],
        parsed: &Parsed,
    ) -> Result<(ImportCounts, Vec<RejectedRow>), ChunkError> {
        match (parsed, self.import.dry_run) {
            (Parsed::Customers(parsed), false) => Ok(self.apply_customers(rows, parsed).await?),
            (Parsed::Customers(parsed), true) => self.simulate_customers(rows, parsed).await,
            (Parsed::Engagements(parsed), dry_run) => {
                Ok(self.apply_engagements(rows, parsed, dry_run).await?)
            }
        }
    }

    fn reject(&self, row: &RawRow, error: String) -> RejectedRow {
        RejectedRow {
            import_id: self.import.id,
            row: row.number,
            cells: row.cells.clone(),
            error,
        }
    }

    async fn apply_customers(
        &mut self,
        rows: &[RawRow],
        parsed: &[Result<CustomerInput, String>],
    ) -> Result<(ImportCounts, Vec<RejectedRow>), StoreError> {
        let mut counts = ImportCounts::default();
        let mut rejected = Vec::new();
        let mut inputs = Vec::new();
        let mut of_input = Vec::new();
        for (row, input) in rows.iter().zip(parsed) {
            match input {
                Ok(input) => {
                    inputs.push(input.clone());
                    of_input.push((row, input));
                }
                Err(e) => rejected.push(self.reject(row, e.clone())),
            }
        }
        let outcomes = self.crm.import_customers(inputs).await;
        // Applied again: each row's outcome is the one its first application had.
        let first = match self.session.replay_since {
            Some(since) => {
                let applied: Vec<&[Identifier]> = of_input
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| outcome.is_ok())
                    .map(|((_, input), _)| input.identifiers.as_slice())
                    .collect();
                Some(
                    replay::first_outcomes(
                        self.crm.store().as_ref(),
                        self.crm.policy(),
                        since,
                        &applied,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let mut first = first.map(Vec::into_iter);
        for ((row, _), outcome) in of_input.into_iter().zip(outcomes) {
            match outcome {
                Ok((_, how)) => {
                    let how = first.as_mut().and_then(Iterator::next).unwrap_or(how);
                    match how {
                        Resolution::Created => counts.created += 1,
                        Resolution::Linked => counts.linked += 1,
                        Resolution::Merged => counts.merged += 1,
                    }
                }
                Err(e) => match crm_error(&e) {
                    Some(message) => rejected.push(self.reject(row, message)),
                    None => return Err(store_failure(e)),
                },
            }
        }
        counts.rejected = rejected.len() as u64;
        Ok((counts, rejected))
    }

    /// A dry run of customer rows: the outcome each would have (see
    /// [`DryRun`]); nothing is written.
    async fn simulate_customers(
        &mut self,
        rows: &[RawRow],
        inputs: &[Result<CustomerInput, String>],
    ) -> Result<(ImportCounts, Vec<RejectedRow>), ChunkError> {
        let mut counts = ImportCounts::default();
        let mut rejected = Vec::new();
        let mut parsed = Vec::new();
        for (row, input) in rows.iter().zip(inputs) {
            match input {
                Ok(input) => match crm_models::service::clean_name(input.name.as_deref(), "name") {
                    Ok(_) => parsed.push((row.number, input)),
                    Err(e) => rejected.push(self.reject(row, crm_error(&e).unwrap_or_default())),
                },
                Err(e) => rejected.push(self.reject(row, e.clone())),
            }
        }
        let outcomes = match self.session.dry_run.chunk(&self.crm, &parsed).await {
            Ok(outcomes) => outcomes,
            Err(DryRunError::Store(e)) => return Err(ChunkError::Store(e)),
            Err(e) => return Err(ChunkError::Stop(e.to_string())),
        };
        for how in outcomes {
            match how {
                Resolution::Created => counts.created += 1,
                Resolution::Linked => counts.linked += 1,
                Resolution::Merged => counts.merged += 1,
            }
        }
        counts.rejected = rejected.len() as u64;
        Ok((counts, rejected))
    }

    async fn apply_engagements(
        &mut self,
        rows: &[RawRow],
        parsed: &[Result<crm_models::service::NewEngagement, String>],
        dry_run: bool,
    ) -> Result<(ImportCounts, Vec<RejectedRow>), StoreError> {
        let mut counts = ImportCounts::default();
        let mut rejected = Vec::new();
        let mut items = Vec::new();
        let mut of_item = Vec::new();
        for (row, item) in rows.iter().zip(parsed) {
            match item {
                Ok(item) => {
                    items.push(item.clone());
                    of_item.push(row);
                }
                Err(e) => rejected.push(self.reject(row, e.clone())),
            }
        }
        if dry_run {
            counts.created = items.len() as u64;
            counts.rejected = rejected.len() as u64;
            return Ok((counts, rejected));
        }
        let outcomes = self.crm.record_engagements(items).await;
        for (row, outcome) in of_item.into_iter().zip(outcomes) {
            match outcome {
                Ok(r) if r.duplicate => {
                    // Replayed: stored by the interrupted run of this chunk?
                    let ours = match self.session.replay_since {
                        Some(since) => self
                            .crm
                            .store()
                            .get_engagement(r.id)
                            .await?
                            .is_some_and(|e| e.recorded_at >= since),
                        None => false,
                    };
                    if ours {
                        counts.created += 1;
                    } else {
                        counts.duplicates += 1;
                    }
                }
                Ok(r) => {
                    counts.created += 1;
                    if r.customer_created {
                        counts.customers_created += 1;
                    }
                }
                Err(e) => match crm_error(&e) {
                    Some(message) => rejected.push(self.reject(row, message)),
                    None => return Err(store_failure(e)),
                },
            }
        }
        counts.rejected = rejected.len() as u64;
        Ok((counts, rejected))
    }

    /// Runs every chunk; `progress` is told after each one.
    pub async fn run(mut self, mut progress: impl FnMut(&Import)) -> Result<Import, ImportError> {
        self.begin().await?;
        loop {
            match self.step().await {
                Ok(true) => progress(&self.import),
                Ok(false) => {
                    progress(&self.import);
                    return Ok(self.import);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn store_failure(e: CrmError) -> StoreError {
    match e {
        CrmError::Store(e) => e,
        other => StoreError::Contention(other.to_string()),
    }
}

/// A new import record.
pub struct NewImport {
    pub kind: ImportKind,
    pub format: ImportFormat,
    pub dry_run: bool,
    pub mapping: BTreeMap<String, String>,
    pub region: Option<String>,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub bytes_total: Option<u64>,
}

impl NewImport {
    pub fn record(self, id: Uuid) -> Import {
        let now = time::now();
        Import {
            id,
            kind: self.kind,
            format: self.format,
            state: ImportState::Queued,
            dry_run: self.dry_run,
            idempotency_key: self.idempotency_key,
            mapping: self.mapping,
            region: self.region,
            created_by: self.created_by,
            created_at: now,
            updated_at: now,
            finished_at: None,
            bytes_total: self.bytes_total,
            bytes_read: 0,
            columns: Vec::new(),
            counts: ImportCounts::default(),
            error: None,
        }
    }
}

/// Marks an import failed (a file that cannot be read on).
pub async fn fail(store: &Arc<dyn Store>, mut import: Import, error: String) {
    import.state = ImportState::Failed;
    import.error = Some(error);
    import.finished_at = Some(time::now());
    import.updated_at = time::now();
    if let Err(e) = store.save_import_chunk(&import, &[]).await {
        tracing::warn!(import = %import.id, error = %e, "cannot record the import's failure");
    }
}
