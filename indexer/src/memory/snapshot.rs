//! A snapshot of the memory index written beside the store, so that a
//! restart reads one file instead of every customer's engagements.
//!
//! - Each customer's entry carries a hash of the customer record it was
//!   made from ([`source_of`]). A load takes an entry only when the store's
//!   record hashes the same, and reads the customer again otherwise: the
//!   snapshot can be any age, from any moment, and is never trusted beyond
//!   what the store confirms. Every write that changes what the index holds
//!   of a customer changes its record too (an engagement's insert counts it
//!   and moves `last_engagement_at`; a merge, its undo and an erasure
//!   rewrite the customers they touch).
//! - A snapshot made by another index layout (`FINGERPRINT_VERSION`) or
//!   format, or one that does not end with its trailer (cut short), is not
//!   used; the load then reads the store as without one.
//! - The file is JSON lines: a header, one line per customer, a trailer
//!   with the count. It is written to a temporary file (mode 0600: it holds
//!   names, numbers and emails, as the store does), synced, then renamed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crm_models::{Customer, CustomerId};

use crate::doc::{CustomerSummary, IndexEntries, FINGERPRINT_VERSION};

use super::{MemoryIndex, Prepared};

/// A hash of the customer record an entry was made from.
pub type Source = [u8; 16];

/// The file name of the snapshot in the data directory.
pub const SNAPSHOT_FILE: &str = "search-index.snapshot";

const FORMAT: &str = "crm-search-index-snapshot";
const FORMAT_VERSION: u32 = 1;

/// Customers serialised per read lock while a snapshot is written.
const WRITE_CHUNK: usize = 2_048;

/// The hash of what the store holds of a customer (its JSON), the same for
/// every store and every run.
pub fn source_of(customer: &Customer) -> Source {
    let mut hasher = Sha256::new();
    // Serialising a customer cannot fail (no maps with non-string keys); an
    // empty hash would only make the entry never match.
    if let Ok(json) = serde_json::to_vec(customer) {
        hasher.update(&json);
    }
    let digest = hasher.finalize();
    let mut source = [0u8; 16];
    source.copy_from_slice(&digest[..16]);
    source
}

#[derive(Serialize, Deserialize)]
struct Header {
    snapshot: String,
    format: u32,
    index: String,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: u64,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    source: String,
    summary: &'a CustomerSummary,
    entries: &'a IndexEntries,
}

#[derive(Deserialize)]
struct EntryIn {
    source: String,
    summary: CustomerSummary,
    entries: IndexEntries,
}

/// A snapshot read back: its entries by customer, each taken at most once.
pub struct Snapshot {
    entries: HashMap<CustomerId, (Source, CustomerSummary, IndexEntries)>,
}

/// Why a snapshot file is not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot not usable: {0}")]
    Unusable(String),
}

fn unusable(reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Unusable(reason.into())
}

impl Snapshot {
    /// Reads the snapshot at `path`: `Ok(None)` when there is none.
    /// Blocking.
    pub fn read(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut lines = BufReader::with_capacity(1 << 20, file).lines();
        let header: Header = match lines.next() {
            Some(line) => serde_json::from_str(&line?).map_err(|_| unusable("no header"))?,
            None => return Err(unusable("empty")),
        };
        if header.snapshot != FORMAT
            || header.format != FORMAT_VERSION
            || header.index != FINGERPRINT_VERSION
        {
            return Err(unusable(format!(
                "made by another version ({} {} {})",
                header.snapshot, header.format, header.index
            )));
        }
        let mut entries = HashMap::new();
        let mut count = 0u64;
        for line in lines {
            let line = line?;
            if let Ok(entry) = serde_json::from_str::<EntryIn>(&line) {
                let mut source = [0u8; 16];
                hex::decode_to_slice(&entry.source, &mut source)
                    .map_err(|_| unusable(format!("bad source hash on entry {count}")))?;
                entries.insert(entry.summary.id, (source, entry.summary, entry.entries));
                count += 1;
                continue;
            }
            let trailer: Trailer = serde_json::from_str(&line)
                .map_err(|_| unusable(format!("unreadable entry after {count}")))?;
            if trailer.end != count {
                return Err(unusable(format!(
                    "{count} entries, the trailer says {}",
                    trailer.end
                )));
            }
            return Ok(Some(Snapshot { entries }));
        }
        Err(unusable(format!("cut short after {count} entries")))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The customer's entry, if the snapshot has one made from the record
    /// whose hash is `source` (the entry is removed either way).
    pub(crate) fn take(&mut self, id: CustomerId, source: &Source) -> Option<Prepared> {
        let (made_from, summary, entries) = self.entries.remove(&id)?;
        (made_from == *source).then(|| Prepared::from_parts(summary, entries, made_from))
    }
}

impl MemoryIndex {
    /// Writes the live generation to `path` (through a temporary file
    /// beside it, then a rename); returns the customers written. Takes the
    /// read lock a chunk of customers at a time. Blocking.
    pub fn write_snapshot(&self, path: &Path) -> Result<u64, SnapshotError> {
        let tmp = temporary_beside(path);
        let written = self.write_snapshot_to(&tmp);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let written = written?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself made durable; a failure here leaves the old
            // snapshot or the new one, both usable.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(written)
    }

    fn write_snapshot_to(&self, tmp: &Path) -> Result<u64, SnapshotError> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header = Header {
            snapshot: FORMAT.into(),
            format: FORMAT_VERSION,
            index: FINGERPRINT_VERSION.into(),
        };
        serde_json::to_writer(&mut out, &header).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        let mut written = 0u64;
        let mut after: Bound<CustomerId> = Bound::Unbounded;
        let mut chunk = Vec::with_capacity(WRITE_CHUNK * 1024);
        loop {
            chunk.clear();
            let mut last = None;
            {
                let state = self.state.read();
                for (id, stored) in state
                    .current
                    .customers
                    .range((after, Bound::Unbounded))
                    .take(WRITE_CHUNK)
                {
                    let entry = EntryOut {
                        source: hex::encode(stored.source),
                        summary: &stored.summary,
                        entries: &stored.entries,
                    };
                    serde_json::to_writer(&mut chunk, &entry).map_err(std::io::Error::from)?;
                    chunk.push(b'\n');
                    written += 1;
                    last = Some(*id);
                }
            }
            out.write_all(&chunk)?;
            match last {
                Some(id) => after = Bound::Excluded(id),
                None => break,
            }
        }
        serde_json::to_writer(&mut out, &Trailer { end: written }).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(written)
    }
}

/// One name, so that a write cut short is overwritten by the next.
fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}
