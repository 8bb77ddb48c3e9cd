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
//! - The file is a JSON header line, then one record per customer (its
//!   length as 4 bytes little-endian, then the record in `postcard`, a
//!   compact binary serde format: decoding is a few times faster than
//!   JSON's, and a restart decodes every record), then a trailer (a length
//!   of `u32::MAX` and the count as 8 bytes). It is written to a temporary
//!   file (mode 0600: it holds names, numbers and emails, as the store
//!   does), synced, then renamed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crm_models::customer::{ChannelCounts, CustomerStatus};
use crm_models::engagement::{Channel, Direction};
use crm_models::store::{customer_record_hash, RecordHash};
use crm_models::time::Timestamp;
use crm_models::{Customer, CustomerId, Email, EngagementId, PhoneNumber};

use crate::doc::{CustomerSummary, EngagementBrief, IndexEntries, FINGERPRINT_VERSION};

use super::{MemoryIndex, Prepared};

/// A hash of the customer record an entry was made from.
pub type Source = RecordHash;

/// The file name of the snapshot in the data directory.
pub const SNAPSHOT_FILE: &str = "search-index.snapshot";

const FORMAT: &str = "crm-search-index-snapshot";
const FORMAT_VERSION: u32 = 2;

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

/// A record's length that marks the trailer instead.
const TRAILER: u32 = u32::MAX;

/// One customer's record as written; [`RecordIn`] reads the same layout.
/// The summary's and the entries' fields, spelled out: `postcard` needs
/// every field present (the JSON types skip empty ones).
#[derive(Serialize)]
struct RecordOut<'a> {
    source: Source,
    id: CustomerId,
    name: Option<&'a str>,
    status: CustomerStatus,
    phone: Option<&'a str>,
    email: Option<&'a str>,
    phones: Vec<&'a str>,
    emails: Vec<&'a str>,
    counts: [u64; 5],
    last_engagement_at: Option<i64>,
    last_engagements: Vec<BriefOut<'a>>,
    tokens: &'a [String],
    words: &'a [String],
    entry_phones: &'a [String],
    national: &'a [String],
    entry_emails: &'a [String],
}

#[derive(Serialize)]
struct BriefOut<'a> {
    id: EngagementId,
    channel: Channel,
    direction: Option<Direction>,
    occurred_at: i64,
    preview: &'a str,
}

#[derive(Deserialize)]
struct RecordIn {
    source: Source,
    id: CustomerId,
    name: Option<String>,
    status: CustomerStatus,
    phone: Option<String>,
    email: Option<String>,
    phones: Vec<String>,
    emails: Vec<String>,
    counts: [u64; 5],
    last_engagement_at: Option<i64>,
    last_engagements: Vec<BriefIn>,
    tokens: Vec<String>,
    words: Vec<String>,
    entry_phones: Vec<String>,
    national: Vec<String>,
    entry_emails: Vec<String>,
}

#[derive(Deserialize)]
struct BriefIn {
    id: EngagementId,
    channel: Channel,
    direction: Option<Direction>,
    occurred_at: i64,
    preview: String,
}

impl<'a> RecordOut<'a> {
    fn of(source: Source, summary: &'a CustomerSummary, entries: &'a IndexEntries) -> Self {
        let c = &summary.counts;
        RecordOut {
            source,
            id: summary.id,
            name: summary.name.as_deref(),
            status: summary.status,
            phone: summary.phone.as_ref().map(|p| p.as_str()),
            email: summary.email.as_ref().map(|e| e.as_str()),
            phones: summary.phones.iter().map(|p| p.as_str()).collect(),
            emails: summary.emails.iter().map(|e| e.as_str()).collect(),
            counts: [c.web, c.call, c.sms, c.whatsapp, c.email],
            last_engagement_at: summary.last_engagement_at.map(|t| t.timestamp_micros()),
            last_engagements: summary
                .last_engagements
                .iter()
                .map(|e| BriefOut {
                    id: e.id,
                    channel: e.channel,
                    direction: e.direction,
                    occurred_at: e.occurred_at.timestamp_micros(),
                    preview: &e.preview,
                })
                .collect(),
            tokens: &entries.tokens,
            words: &entries.words,
            entry_phones: &entries.phones,
            national: &entries.national,
            entry_emails: &entries.emails,
        }
    }
}

fn time_of(micros: i64) -> Result<Timestamp, SnapshotError> {
    Timestamp::from_timestamp_micros(micros).ok_or_else(|| unusable("a time out of range"))
}

impl RecordIn {
    /// The summary and entries as written (the numbers and emails were
    /// checked when the index took them).
    fn into_parts(self) -> Result<(Source, CustomerSummary, IndexEntries), SnapshotError> {
        let [web, call, sms, whatsapp, email] = self.counts;
        let last_engagements = self
            .last_engagements
            .into_iter()
            .map(|e| {
                Ok(EngagementBrief {
                    id: e.id,
                    channel: e.channel,
                    direction: e.direction,
                    occurred_at: time_of(e.occurred_at)?,
                    preview: e.preview,
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        let summary = CustomerSummary {
            id: self.id,
            name: self.name,
            status: self.status,
            phone: self.phone.map(PhoneNumber::from_e164_unchecked),
            email: self.email.map(Email::from_normalised_unchecked),
            phones: self
                .phones
                .into_iter()
                .map(PhoneNumber::from_e164_unchecked)
                .collect(),
            emails: self
                .emails
                .into_iter()
                .map(Email::from_normalised_unchecked)
                .collect(),
            counts: ChannelCounts {
                web,
                call,
                sms,
                whatsapp,
                email,
            },
            last_engagement_at: self.last_engagement_at.map(time_of).transpose()?,
            last_engagements,
        };
        let entries = IndexEntries {
            tokens: self.tokens,
            words: self.words,
            phones: self.entry_phones,
            national: self.national,
            emails: self.entry_emails,
        };
        Ok((self.source, summary, entries))
    }
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

/// Records per block handed to a decoder (about 2 MB).
const BLOCK_RECORDS: usize = 3_000;

/// Sends the records to the decoders a block at a time (each record with
/// its length), up to the trailer; returns how many records the trailer
/// counts, once it has checked that this is how many were sent.
fn read_blocks(
    reader: &mut impl BufRead,
    blocks: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> Result<u64, SnapshotError> {
    let mut count = 0u64;
    loop {
        let mut block = Vec::with_capacity(BLOCK_RECORDS * 700);
        let mut records = 0usize;
        let mut trailer = None;
        while records < BLOCK_RECORDS {
            let mut len = [0u8; 4];
            if let Err(e) = reader.read_exact(&mut len) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    break;
                }
                return Err(e.into());
            }
            let n = u32::from_le_bytes(len);
            if n == TRAILER {
                let mut end = [0u8; 8];
                reader
                    .read_exact(&mut end)
                    .map_err(|_| unusable("unreadable trailer"))?;
                trailer = Some(u64::from_le_bytes(end));
                break;
            }
            let start = block.len();
            block.extend_from_slice(&len);
            block.resize(start + 4 + n as usize, 0);
            reader.read_exact(&mut block[start + 4..]).map_err(|_| {
                unusable(format!(
                    "cut short after {} entries",
                    count + records as u64
                ))
            })?;
            records += 1;
        }
        count += records as u64;
        // A decoder that met a bad entry says so when it is joined.
        if !block.is_empty() && blocks.send(block).is_err() {
            return Err(unusable("decoding stopped"));
        }
        match trailer {
            Some(end) if end == count => return Ok(count),
            Some(end) => return Err(unusable(format!("{count} entries, the trailer says {end}"))),
            None if records < BLOCK_RECORDS => {
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

fn decode_block(mut block: &[u8], out: &mut Decoded) -> Result<(), SnapshotError> {
    while let Some((len, rest)) = block.split_first_chunk::<4>() {
        let n = u32::from_le_bytes(*len) as usize;
        let (record, rest) = rest
            .split_at_checked(n)
            .ok_or_else(|| unusable("a record cut short"))?;
        block = rest;
        let record: RecordIn =
            postcard::from_bytes(record).map_err(|_| unusable("unreadable entry"))?;
        let (source, summary, entries) = record.into_parts()?;
        let id = summary.id;
        out.push((id, source, Prepared::from_parts(summary, entries, source)));
    }
    if !block.is_empty() {
        return Err(unusable("a record cut short"));
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
                    let record = RecordOut::of(stored.source, &stored.summary, &stored.entries);
                    let start = chunk.len();
                    chunk.extend_from_slice(&[0; 4]);
                    let chunk_out = std::mem::take(&mut chunk);
                    chunk = postcard::to_extend(&record, chunk_out)
                        .map_err(|e| std::io::Error::other(format!("encoding an entry: {e}")))?;
                    let len = u32::try_from(chunk.len() - start - 4)
                        .ok()
                        .filter(|n| *n != TRAILER)
                        .ok_or_else(|| std::io::Error::other("an entry too large"))?;
                    chunk[start..start + 4].copy_from_slice(&len.to_le_bytes());
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
        out.write_all(&TRAILER.to_le_bytes())?;
        out.write_all(&written.to_le_bytes())?;
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

    /// Several blocks of records, read back whole; a bad entry in a later
    /// block, a missing block or a file cut short makes the snapshot
    /// unusable (and the reader does not wait for a decoder that gave up).
    #[tokio::test]
    async fn a_snapshot_of_several_blocks_reads_back_and_a_bad_block_is_refused() {
        let index = MemoryIndex::new();
        let docs: Vec<_> = generate::customers(11, BLOCK_RECORDS * 2 + 500).collect();
        for doc in &docs {
            index.upsert(doc).await.unwrap();
        }
        let searchable: Vec<_> = docs.iter().filter(|d| d.is_searchable()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let written = index.write_snapshot(&path).unwrap();
        assert_eq!(written, searchable.len() as u64);
        assert!(written > 2 * BLOCK_RECORDS as u64, "more than two blocks");

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

        // The file cut into its header line, its records and its trailer.
        let whole = std::fs::read(&path).unwrap();
        let header_end = whole.iter().position(|b| *b == b'\n').unwrap() + 1;
        let mut records: Vec<&[u8]> = Vec::new();
        let mut at = header_end;
        loop {
            let n = u32::from_le_bytes(whole[at..at + 4].try_into().unwrap());
            if n == TRAILER {
                break;
            }
            records.push(&whole[at..at + 4 + n as usize]);
            at += 4 + n as usize;
        }
        let trailer = &whole[at..];
        assert_eq!(records.len() as u64, written);
        assert_eq!(trailer.len(), 12);
        let file_of = |records: &[&[u8]], trailer: &[u8]| {
            let mut out = whole[..header_end].to_vec();
            for r in records {
                out.extend_from_slice(r);
            }
            out.extend_from_slice(trailer);
            out
        };
        std::fs::write(&path, file_of(&records, trailer)).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap().unwrap().len(), records.len());

        // A record in a later block that does not decode.
        let mut bad = records.clone();
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        bad[BLOCK_RECORDS + 10] = &garbage;
        std::fs::write(&path, file_of(&bad, trailer)).unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Unusable(_))
        ));
        // A block's worth of records missing.
        let mut missing = records.clone();
        missing.drain(10..10 + BLOCK_RECORDS);
        std::fs::write(&path, file_of(&missing, trailer)).unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Unusable(_))
        ));
        // Cut short: no trailer, or a record's end missing.
        std::fs::write(&path, file_of(&records, &[])).unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Unusable(_))
        ));
        let mut cut = file_of(&records, &[]);
        cut.truncate(cut.len() - 5);
        std::fs::write(&path, cut).unwrap();
        assert!(matches!(
            Snapshot::read(&path),
            Err(SnapshotError::Unusable(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(Snapshot::read(&path).unwrap().is_none());
    }
}
