//! A snapshot of the memory index written beside the store, so that a
//! restart reads one file instead of every customer's engagements.
//!
//! - Each customer's entry carries a hash of the customer record it was
//!   made from ([`source_of`]). A load takes an entry only when the store's
//!   record hashes the same (the store answers the hashes; the embedded one
//!   hashes its records' JSON as stored, without decoding them), and reads
//!   the customer again otherwise: the
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

use crm_models::store::{customer_record_hash, RecordHash};
use crm_models::{Customer, CustomerId};

use crate::doc::{CustomerSummary, IndexEntries, FINGERPRINT_VERSION};

use super::{MemoryIndex, Prepared};

/// A hash of the customer record an entry was made from.
pub type Source = RecordHash;

/// The file name of the snapshot in the data directory.
pub const SNAPSHOT_FILE: &str = "search-index.snapshot";

const FORMAT: &str = "crm-search-index-snapshot";
const FORMAT_VERSION: u32 = 1;

/// Customers serialised per read lock while a snapshot is written.
const WRITE_CHUNK: usize = 2_048;

/// The hash of what the store holds of a customer (its JSON), the same for
/// every store and every run: what
/// [`customer_record_hashes`](crm_models::store::EngagementStore::customer_record_hashes)
/// answers.
pub fn source_of(customer: &Customer) -> Source {
    customer_record_hash(customer)
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
    entries: HashMap<CustomerId, (Source, Prepared)>,
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
    /// Blocking: this thread reads blocks of lines, decoders (one per core)
    /// turn them into entries ready for the index.
    pub fn read(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        let header: Header = serde_json::from_slice(&line).map_err(|_| unusable("no header"))?;
        if header.snapshot != FORMAT
            || header.format != FORMAT_VERSION
            || header.index != FINGERPRINT_VERSION
        {
            return Err(unusable(format!(
                "made by another version ({} {} {})",
                header.snapshot, header.format, header.index
            )));
        }
        let decoders = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (blocks, received) = std::sync::mpsc::sync_channel::<Vec<u8>>(decoders * 2);
        let received = parking_lot::Mutex::new(received);
        let (read, decoded) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..decoders)
                .map(|_| scope.spawn(|| decode_blocks(&received)))
                .collect();
            let read = read_blocks(&mut reader, &blocks);
            drop(blocks);
            let decoded: Vec<_> = workers
                .into_iter()
                .map(|w| match w.join() {
                    Ok(d) => d,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect();
            (read, decoded)
        });
        let count = read?;
        let mut entries = HashMap::with_capacity(count as usize);
        for part in decoded {
            for (id, source, prepared) in part? {
                entries.insert(id, (source, prepared));
            }
        }
        if entries.len() as u64 != count {
            return Err(unusable(format!(
                "{count} entries for {} customers",
                entries.len()
            )));
        }
        Ok(Some(Snapshot { entries }))
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
        let (made_from, prepared) = self.entries.remove(&id)?;
        (made_from == *source).then_some(prepared)
    }
}

/// Lines per block handed to a decoder (about 4 MB).
const BLOCK_LINES: usize = 3_000;

/// Sends the entry lines to the decoders a block at a time, up to the
/// trailer; returns how many entries the trailer counts, once it has
/// checked that this is how many lines were sent.
fn read_blocks(
    reader: &mut impl BufRead,
    blocks: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<u64, SnapshotError> {
    let mut count = 0u64;
    loop {
        let mut block = Vec::with_capacity(BLOCK_LINES * 1_500);
        let mut lines = 0usize;
        let mut trailer = None;
        while lines < BLOCK_LINES {
            let start = block.len();
            if reader.read_until(b'\n', &mut block)? == 0 {
                break;
            }
            if block[start..].starts_with(b"{\"end\":") {
                let t: Trailer = serde_json::from_slice(&block[start..])
                    .map_err(|_| unusable("unreadable trailer"))?;
                block.truncate(start);
                trailer = Some(t.end);
                break;
            }
            lines += 1;
        }
        count += lines as u64;
        // A decoder that met a bad entry says so when it is joined.
        if !block.is_empty() && blocks.send(block).is_err() {
            return Err(unusable("decoding stopped"));
        }
        match trailer {
            Some(end) if end == count => return Ok(count),
            Some(end) => return Err(unusable(format!("{count} entries, the trailer says {end}"))),
            None if lines < BLOCK_LINES => {
                return Err(unusable(format!("cut short after {count} entries")))
            }
            None => {}
        }
    }
}

type Decoded = Vec<(CustomerId, Source, Prepared)>;

/// Decodes blocks until there are no more: each entry made ready for the
/// index ([`Prepared::from_parts`]). After a bad entry it still takes (and
/// drops) the blocks sent, so that the reader never waits on it.
fn decode_blocks(
    blocks: &parking_lot::Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
) -> Result<Decoded, SnapshotError> {
    let mut out = Vec::new();
    let mut failed = None;
    loop {
        let block = match blocks.lock().recv() {
            Ok(block) => block,
            Err(_) => return failed.map_or(Ok(out), Err),
        };
        if failed.is_some() {
            continue;
        }
        if let Err(e) = decode_block(&block, &mut out) {
            failed = Some(e);
        }
    }
}

fn decode_block(block: &[u8], out: &mut Decoded) -> Result<(), SnapshotError> {
    for line in block.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let entry: EntryIn =
            serde_json::from_slice(line).map_err(|_| unusable("unreadable entry"))?;
        let mut source = [0u8; 16];
        hex::decode_to_slice(&entry.source, &mut source)
            .map_err(|_| unusable("bad source hash"))?;
        let id = entry.summary.id;
        out.push((
            id,
            source,
            Prepared::from_parts(entry.summary, entry.entries, source),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{generate, SearchIndex};

    /// Several blocks of lines, read back whole; a bad entry in a later
    /// block, or a missing block, makes the snapshot unusable (and the
    /// reader does not wait for a decoder that gave up).
    #[tokio::test]
    async fn a_snapshot_of_several_blocks_reads_back_and_a_bad_block_is_refused() {
        let index = MemoryIndex::new();
        let docs: Vec<_> = generate::customers(11, BLOCK_LINES * 2 + 500).collect();
        for doc in &docs {
            index.upsert(doc).await.unwrap();
        }
        let searchable: Vec<_> = docs.iter().filter(|d| d.is_searchable()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let written = index.write_snapshot(&path).unwrap();
        assert_eq!(written, searchable.len() as u64);
        assert!(written > 2 * BLOCK_LINES as u64, "more than two blocks");

        let mut snapshot = Snapshot::read(&path).unwrap().unwrap();
        assert_eq!(snapshot.len(), searchable.len());
        let first = searchable[0];
        let mut other = first.customer.clone();
        other.name = Some("Someone Else".into());
        assert!(
            snapshot.take(first.id(), &source_of(&other)).is_none(),
            "a changed record does not take its entry"
        );
        for doc in &searchable[1..] {
            let p = snapshot
                .take(doc.id(), &source_of(&doc.customer))
                .expect("an unchanged record takes its entry");
            assert_eq!(p.summary, doc.summary());
            assert_eq!(p.entries, doc.entries());
        }
        assert!(snapshot.is_empty());

        let whole = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = whole.lines().collect();
        let mut bad = lines.clone();
        let late = BLOCK_LINES + 10;
        let broken = bad[late].replacen("\"entries\"", "\"entriez\"", 1);
        bad[late] = &broken;
        std::fs::write(&path, bad.join("\n") + "\n").unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Unusable(_))
        ));
        let mut missing = lines.clone();
        missing.drain(10..10 + BLOCK_LINES);
        std::fs::write(&path, missing.join("\n") + "\n").unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Unusable(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(Snapshot::read(&path).unwrap().is_none());
    }
}
