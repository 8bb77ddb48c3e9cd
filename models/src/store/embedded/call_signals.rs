//! Incoming-call signals in the embedded store: one record per written batch.
//!
//! Every caller-ID lookup that finds a customer writes a signal, so under
//! load thousands a second arrive, in batches from one writer. A redb insert
//! costs about as much as the lookup's own work, so a batch is one record:
//! its signals sorted by (time, id), without repeats, keyed by the newest
//! one's (time, id). A batch whose signals lie more than [`SPAN`] apart (one
//! of them queued long before the rest) is cut into records each spanning at
//! most [`SPAN`]. So every signal of the record keyed `k` lies in
//! `[k - SPAN, k]`, which bounds the reads:
//!
//! - listing from `since` reads the records keyed at or after `since`, and
//!   stops once a record's key is more than [`SPAN`] past the last signal it
//!   would return;
//! - pruning before `before` deletes the records keyed before it and
//!   rewrites those keyed within [`SPAN`] after it without their older
//!   signals.
//!
//! The same signal written twice (a retried batch) is kept once: a retried
//! batch writes the same records again; listing and pruning count each id
//! once however many records hold it.
//!
//! Record forms, told apart by their first byte: [`ONE`] (a single signal,
//! 73 bytes and the number), [`BATCH`] (signals in that form, each preceded
//! by its length), and `{` (a single signal as JSON, written before these
//! forms).

use std::collections::HashSet;

use redb::{ReadableTable, Table};
use uuid::Uuid;

use super::{db_err, decode, time_key};
use crate::device::CallSignal;
use crate::ids::{CustomerId, DeviceId, UserId};
use crate::phone::PhoneNumber;
use crate::store::{StoreError, StoreResult};
use crate::time::Timestamp;

pub(super) type Key = (u64, u128);

/// The longest time between the oldest and newest signal of one record, in
/// microseconds (1 s).
pub(super) const SPAN: u64 = 1_000_000;

/// A record holding one signal.
const ONE: u8 = 1;

/// A record holding several signals.
const BATCH: u8 = 2;

fn key_of(s: &CallSignal) -> Key {
    (time_key(&s.at), s.id.as_u128())
}

/// The records for `signals`: sorted, without repeated ids, cut where a
/// record would span more than [`SPAN`].
pub(super) fn records(mut signals: Vec<CallSignal>) -> Vec<(Key, Vec<u8>)> {
    signals.sort_by_key(key_of);
    // A repeated id keeps its oldest copy.
    let mut seen = HashSet::with_capacity(signals.len());
    signals.retain(|s| seen.insert(s.id));
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=signals.len() {
        let cut =
            i == signals.len() || time_key(&signals[i].at) - time_key(&signals[start].at) > SPAN;
        if cut {
            out.push(record(&signals[start..i]));
            start = i;
        }
    }
    out
}

/// One record for `signals`, sorted, spanning at most [`SPAN`]; not empty.
fn record(signals: &[CallSignal]) -> (Key, Vec<u8>) {
    let newest = &signals[signals.len() - 1];
    if signals.len() == 1 {
        return (key_of(newest), encode_one(newest));
    }
    let mut out = Vec::with_capacity(1 + signals.len() * 100);
    out.push(BATCH);
    for s in signals {
        let one = encode_one(s);
        // A number is at most 16 bytes: a signal is under 100.
        out.extend_from_slice(&(one.len() as u16).to_be_bytes());
        out.extend_from_slice(&one);
    }
    (key_of(newest), out)
}

/// A signal in 73 bytes and the number: the form byte, the four ids (16
/// bytes each; the nil UUID for no customer), the time (microseconds since the epoch, 8 bytes, big
/// endian), then the E.164 number.
pub(super) fn encode_one(s: &CallSignal) -> Vec<u8> {
    let number = s.number.as_str().as_bytes();
    let mut out = Vec::with_capacity(73 + number.len());
    out.push(ONE);
    let customer = s.customer_id.map_or(Uuid::nil(), |c| c.0);
    for id in [s.id, customer, s.device_id.0, s.user_id.0] {
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&s.at.timestamp_micros().to_be_bytes());
    out.extend_from_slice(number);
    out
}

fn corrupt(why: &str) -> StoreError {
    StoreError::Internal(format!("corrupt call signal record: {why}"))
}

/// The signals of a record, oldest first.
pub(super) fn decode_record(bytes: &[u8]) -> StoreResult<Vec<CallSignal>> {
    match bytes.first() {
        Some(&BATCH) => {
            let mut out = Vec::new();
            let mut rest = &bytes[1..];
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                    return Err(corrupt("truncated batch"));
                };
                let len = usize::from(u16::from_be_bytes(*len));
                if tail.len() < len {
                    return Err(corrupt("truncated batch"));
                }
                let (one, tail) = tail.split_at(len);
                out.push(decode_one(one)?);
                rest = tail;
            }
            if out.is_empty() {
                return Err(corrupt("empty batch"));
            }
            Ok(out)
        }
        _ => Ok(vec![decode_one(bytes)?]),
    }
}

pub(super) fn decode_one(bytes: &[u8]) -> StoreResult<CallSignal> {
    if bytes.first() == Some(&b'{') {
        return decode("call signal", bytes);
    }
    let (head, number) = match bytes.split_first() {
        Some((&ONE, rest)) if rest.len() > 72 => rest.split_at(72),
        Some((&ONE, _)) => return Err(corrupt("too short")),
        _ => return Err(corrupt("unknown format")),
    };
    let id = |i: usize| {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&head[16 * i..16 * (i + 1)]);
        Uuid::from_bytes(raw)
    };
    let mut micros = [0u8; 8];
    micros.copy_from_slice(&head[64..72]);
    let at = Timestamp::from_timestamp_micros(i64::from_be_bytes(micros))
        .ok_or_else(|| corrupt("time out of range"))?;
    let number = std::str::from_utf8(number).map_err(|_| corrupt("number is not text"))?;
    Ok(CallSignal {
        id: id(0),
        customer_id: Some(id(1)).filter(|c| !c.is_nil()).map(CustomerId),
        device_id: DeviceId(id(2)),
        user_id: UserId(id(3)),
        number: PhoneNumber::from_e164_unchecked(number.to_string()),
        at,
    })
}

/// Signals at or after `since`, of `user`'s devices or of all, oldest first
/// (ties by id), at most `limit`.
pub(super) fn list(
    table: &impl ReadableTable<Key, &'static [u8]>,
    user: Option<UserId>,
    since: Timestamp,
    limit: usize,
) -> StoreResult<Vec<CallSignal>> {
    let mut out: Vec<CallSignal> = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let mut seen = HashSet::new();
    for entry in table.range((time_key(&since), 0u128)..).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        // Records further on hold nothing older than what is kept.
        if out.len() >= limit && k.value().0 > time_key(&out[limit - 1].at).saturating_add(SPAN) {
            break;
        }
        for s in decode_record(v.value())? {
            if s.at >= since && user.is_none_or(|u| u == s.user_id) && seen.insert(s.id) {
                out.push(s);
            }
        }
        if out.len() >= limit {
            out.sort_by_key(key_of);
            out.truncate(limit);
        }
    }
    out.sort_by_key(key_of);
    Ok(out)
}

/// Deletes up to `chunk` records holding only signals before `before`;
/// returns how many records it deleted, and adds the ids of their signals
/// to `deleted`.
pub(super) fn delete_whole(
    table: &mut Table<Key, &'static [u8]>,
    before: Timestamp,
    chunk: usize,
    deleted: &mut HashSet<Uuid>,
) -> StoreResult<usize> {
    let mut keys = Vec::new();
    for entry in table.range(..(time_key(&before), 0u128)).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        deleted.extend(decode_record(v.value())?.iter().map(|s| s.id));
        keys.push(k.value());
        if keys.len() == chunk {
            break;
        }
    }
    for key in &keys {
        table.remove(key).map_err(db_err)?;
    }
    Ok(keys.len())
}

/// Rewrites the records keyed within [`SPAN`] from `before` without their
/// signals older than it, adding those signals' ids to `deleted`.
pub(super) fn trim_straddling(
    table: &mut Table<Key, &'static [u8]>,
    before: Timestamp,
    deleted: &mut HashSet<Uuid>,
) -> StoreResult<()> {
    let from = time_key(&before);
    let mut rewrites = Vec::new();
    for entry in table
        .range((from, 0u128)..=(from.saturating_add(SPAN), u128::MAX))
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        let signals = decode_record(v.value())?;
        let (old, kept): (Vec<_>, Vec<_>) = signals.into_iter().partition(|s| s.at < before);
        if !old.is_empty() {
            deleted.extend(old.iter().map(|s| s.id));
            // Not empty: the newest signal, the key's, is not older.
            rewrites.push((k.value(), kept));
        }
    }
    for (key, kept) in rewrites {
        if kept.is_empty() {
            table.remove(&key).map_err(db_err)?;
        } else {
            table
                .insert(key, record(&kept).1.as_slice())
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Removes every signal about the customer (an erasure): records holding
/// only its signals go, the others are rewritten without them. Reads the
/// whole table, which an erasure may. Returns how many signals went.
pub(super) fn erase_customer(
    txn: &redb::WriteTransaction,
    customer: CustomerId,
) -> StoreResult<u64> {
    let mut table = txn.open_table(super::CALL_SIGNALS).map_err(db_err)?;
    let mut rewrites = Vec::new();
    let mut gone: HashSet<Uuid> = HashSet::new();
    for entry in table.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let signals = decode_record(v.value())?;
        if signals.iter().any(|s| s.customer_id == Some(customer)) {
            let (theirs, kept): (Vec<_>, Vec<_>) = signals
                .into_iter()
                .partition(|s| s.customer_id == Some(customer));
            gone.extend(theirs.iter().map(|s| s.id));
            rewrites.push((k.value(), kept));
        }
    }
    for (key, kept) in rewrites {
        table.remove(&key).map_err(db_err)?;
        // The rest keep their own keys (a record is keyed by its newest).
        for (k, bytes) in records(kept) {
            table.insert(k, bytes.as_slice()).map_err(db_err)?;
        }
    }
    Ok(gone.len() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn signal_at(micros: i64) -> CallSignal {
        CallSignal {
            id: Uuid::now_v7(),
            customer_id: Some(CustomerId::new()),
            device_id: DeviceId::new(),
            user_id: UserId::new(),
            number: PhoneNumber::parse("+447911123456", None).unwrap(),
            at: Timestamp::from_timestamp_micros(1_790_000_000_000_000 + micros).unwrap(),
        }
    }

    #[test]
    fn call_signals_read_back_in_every_stored_form() {
        let s = signal_at(0);
        let bytes = encode_one(&s);
        assert_eq!(bytes.len(), 73 + "+447911123456".len());
        assert_eq!(decode_record(&bytes).unwrap(), std::slice::from_ref(&s));
        // Signals stored as JSON before the binary form still read.
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(decode_record(&json).unwrap(), std::slice::from_ref(&s));
        // An unknown caller's signal names no customer, in both forms.
        let unknown = CallSignal {
            customer_id: None,
            ..signal_at(1)
        };
        assert_eq!(decode_one(&encode_one(&unknown)).unwrap(), unknown);
        let json = serde_json::to_vec(&unknown).unwrap();
        assert_eq!(decode_one(&json).unwrap(), unknown);
        let (t, u) = (signal_at(5), signal_at(-5));
        let batch = records(vec![t.clone(), s.clone(), u.clone(), s.clone()]);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].0, key_of(&t), "keyed by the newest");
        assert_eq!(decode_record(&batch[0].1).unwrap(), [u, s, t]);
    }

    #[test]
    fn a_batch_spanning_more_than_the_span_is_cut() {
        let span = SPAN as i64;
        let signals: Vec<CallSignal> = [0, 10, span + 11, span + 12, 3 * span]
            .into_iter()
            .map(signal_at)
            .collect();
        let recs = records(signals.iter().rev().cloned().collect());
        let keys: Vec<Key> = recs.iter().map(|r| r.0).collect();
        assert_eq!(
            keys,
            [
                key_of(&signals[1]),
                key_of(&signals[3]),
                key_of(&signals[4])
            ]
        );
        let read: Vec<CallSignal> = recs
            .iter()
            .flat_map(|r| decode_record(&r.1).unwrap())
            .collect();
        assert_eq!(read, signals);
        for (key, bytes) in &recs {
            for s in decode_record(bytes).unwrap() {
                assert!(key.0 - time_key(&s.at) <= SPAN);
            }
        }
    }

    #[test]
    fn a_damaged_call_signal_is_an_error_not_a_panic() {
        let bytes = encode_one(&signal_at(0));
        let batch = records(vec![signal_at(0), signal_at(1)]).remove(0).1;
        for bad in [
            &bytes[..72],
            &bytes[..0],
            &[9u8, 1, 2][..],
            &batch[..batch.len() - 1],
            &batch[..2],
            &[BATCH][..],
        ] {
            let err = decode_record(bad).unwrap_err();
            assert!(err.to_string().contains("corrupt call signal"), "{err}");
        }
        let mut not_text = bytes.clone();
        not_text.truncate(73);
        not_text.push(0xff);
        assert!(decode_record(&not_text).is_err());
    }
}
