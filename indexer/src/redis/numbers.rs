//! Searches by phone number: the whole number, the national number and the
//! last digits, all through the `sx:` buckets.
//!
//! Numbers are found by their last digits through buckets: `sx:<dddd>` holds
//! every number ending with the four digits `dddd`, and `sx:<ddddd>` every
//! number ending with those five, one member per customer and number (the
//! id's 16 bytes, then the E.164 number), scored by the customer's last
//! engagement like the name posting lists. Four digits typed read the bucket
//! most recent first; five or more (a whole national number, the usual case)
//! read the bucket of their last five, which holds about ten numbers per
//! million, and keep the numbers ending with all of them. A number whose
//! national number is the digits typed (trunk zeros dropped: `07911 123456`)
//! is a national match, found in the same bucket. A bucket is one small key
//! (about a hundred members per million numbers for four digits), so a
//! query is one command on one key, and only the hits of the page have
//! their summary read.
//!
//! A whole number's owners (caller-ID, a number typed with its country code)
//! are the members of its five-digit bucket with that number: no key per
//! number. (A number of fewer than five digits has a bucket of all of them.)

use std::collections::{HashMap, HashSet};

use ::redis::from_owned_redis_value;

use crm_models::{CustomerId, PhoneNumber};

use super::keys::{id_from, IdBytes, Keys};
use super::search::Reader;
use super::{next_value, RedisIndex};
use crate::number_search::NumberMatches;
use crate::query::{self, Brief, Match, SearchResults};
use crate::ranking::{recency_of, RankKey};
use crate::IndexResult;

/// Most members read from one `sx:` bucket, most recent first. Numbers
/// ending with the digits beyond these are not found (at a million numbers
/// spread evenly a bucket holds about a hundred).
pub const SUFFIX_CANDIDATES: usize = 500;

/// Most members read from each bucket of an inner match (see
/// [`query::INNER_DIGITS`]), most recent first.
pub const INNER_CANDIDATES: usize = 64;

/// Digits a bucket is named by.
const BUCKET_DIGITS: usize = query::MIN_SUFFIX_DIGITS;

/// Digits the bucket of a long ending is named by.
const LONG_BUCKET_DIGITS: usize = 5;

/// The bucket of trailing digits typed: their last [`LONG_BUCKET_DIGITS`]
/// when there are that many, else their last [`BUCKET_DIGITS`]; `None`
/// when there are fewer.
fn bucket(digits: &str) -> Option<&str> {
    let n = digits.trim_start_matches('+').len();
    bucket_of(
        digits,
        if n >= LONG_BUCKET_DIGITS {
            LONG_BUCKET_DIGITS
        } else {
            BUCKET_DIGITS
        },
    )
}

/// The last `len` digits; `None` when there are fewer.
fn bucket_of(digits: &str, len: usize) -> Option<&str> {
    let digits = digits.trim_start_matches('+');
    if digits.len() < len || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(&digits[digits.len() - len..])
}

/// `<id>\0<e164>`: the id first, so that members of one score come in id
/// order (highest first when read in reverse), as the ranking breaks ties.
fn number_member(id: &IdBytes, e164: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(id.len() + e164.len());
    m.extend_from_slice(id);
    m.extend_from_slice(e164.as_bytes());
    m
}

fn split_number_member(m: &[u8]) -> Option<(CustomerId, &str)> {
    let id = id_from(m.get(..16)?)?;
    let e164 = std::str::from_utf8(&m[16..]).ok()?;
    Some((id, e164))
}

/// The digits naming the bucket a whole number is looked up in (caller-ID,
/// a number typed whole): its last [`LONG_BUCKET_DIGITS`], or all its digits
/// when it has fewer; `None` for a number without digits.
pub(super) fn owners_bucket(e164: &str) -> Option<&str> {
    let digits = e164.trim_start_matches('+');
    if digits.is_empty() {
        return None;
    }
    bucket_of(e164, digits.len().min(LONG_BUCKET_DIGITS))
}

/// The ids of the members of a bucket (as `ZRANGE` lists them) whose
/// number is `e164`: the number's owners.
pub(super) fn owners_among<'m>(
    members: impl IntoIterator<Item = &'m [u8]>,
    e164: &str,
) -> Vec<Vec<u8>> {
    members
        .into_iter()
        .filter_map(|m| {
            let (id, number) = split_number_member(m)?;
            (number == e164).then(|| id.0.as_bytes().to_vec())
        })
        .collect()
}

impl Keys {
    /// `sx:<dddd>`: the numbers ending with the digits `dddd`.
    pub(super) fn sx(&self, last_digits: &str) -> String {
        self.key("sx:", last_digits)
    }

    /// The `sx:` keys (its last four digits, and its last five, or all its
    /// digits when it has fewer) and the member of a customer's number, for
    /// `ZADD` with the customer's recency or `ZREM`.
    pub(super) fn suffix_entries(&self, id: &IdBytes, e164: &str) -> Vec<(String, Vec<u8>)> {
        let mut buckets: Vec<&str> = bucket_of(e164, BUCKET_DIGITS).into_iter().collect();
        if let Some(b) = owners_bucket(e164) {
            if !buckets.contains(&b) {
                buckets.push(b);
            }
        }
        buckets
            .into_iter()
            .map(|b| (self.sx(b), number_member(id, e164)))
            .collect()
    }
}

impl RedisIndex {
    /// A page of the customers with a number that is one of `e164`, has the
    /// national number `national`, or ends with the digits `suffix`: one
    /// round trip, then one for the briefs of the page. (One more before
    /// that for whole or national matches whose number is not in the
    /// bucket, to learn their recency; and one when four digits' first
    /// read of the bucket held too few customers.)
    pub(super) async fn search_numbers(
        &self,
        e164: &[String],
        national: Option<&str>,
        suffix: Option<&str>,
        limit: usize,
        after: Option<RankKey>,
    ) -> IndexResult<SearchResults> {
        let suffix = suffix.and_then(|s| Some((s, bucket(s)?)));
        // Four digits match every member of their bucket: the first page
        // needs only the bucket's first entries (twice the page, for
        // customers with two numbers in it); more digits filter the bucket.
        let first_read = match suffix {
            Some((digits, _)) if digits.len() == BUCKET_DIGITS && after.is_none() => {
                (2 * (limit + 1)).min(SUFFIX_CANDIDATES)
            }
            _ => SUFFIX_CANDIDATES,
        };
        // Digits inside numbers: the buckets of the digits followed by each
        // tail of one or two digits.
        let inner = query::inner_digits(suffix.map(|(digits, _)| digits));
        let inner_buckets: Vec<String> = match inner {
            Some(digits) => {
                let mut buckets: Vec<String> = query::inner_tails()
                    .filter_map(|tail| Some(bucket(&format!("{digits}{tail}"))?.to_string()))
                    .collect();
                buckets.sort();
                buckets.dedup();
                buckets
            }
            None => Vec::new(),
        };
        // Whole numbers: their owners are the members of their bucket with
        // that number.
        let exact: Vec<(&str, &str)> = e164
            .iter()
            .filter_map(|n| Some((n.as_str(), owners_bucket(n)?)))
            .collect();
        let reader = Reader::new(self).await;
        let (keys, values) = reader
            .read_live(|k, p| {
                for (_, bucket) in &exact {
                    p.cmd("ZRANGE")
                        .arg(k.sx(bucket))
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES");
                }
                if let Some((_, b)) = suffix {
                    let key = k.sx(b);
                    zrange_rev(p, &key, 0, first_read);
                    p.cmd("ZCARD").arg(&key);
                }
                for b in &inner_buckets {
                    zrange_rev(p, &k.sx(b), 0, INNER_CANDIDATES);
                }
            })
            .await?;
        let mut values = values.into_iter();
        let mut found = NumberMatches::default();
        // The recency of every customer read from a bucket.
        let mut recency: HashMap<CustomerId, f64> = HashMap::new();
        for (number, _) in &exact {
            let entries: Vec<(Vec<u8>, f64)> = from_owned_redis_value(next_value(&mut values)?)?;
            for (member, score) in entries {
                if let Some((id, n)) = split_number_member(&member) {
                    if n == *number {
                        found.add(id, Match::Exact);
                        recency.insert(id, score);
                    }
                }
            }
        }
        let mut beyond_read = 0u64;
        if let Some((digits, b)) = suffix {
            let mut entries: Vec<(Vec<u8>, f64)> =
                from_owned_redis_value(next_value(&mut values)?)?;
            let in_bucket: usize = from_owned_redis_value(next_value(&mut values)?)?;
            let mut read = entries.len();
            let mut matched = Bucket::default();
            matched.take(entries, digits, national, &mut found, &mut recency);
            let inner_entries = (0..inner_buckets.len())
                .map(|_| from_owned_redis_value(next_value(&mut values)?).map_err(Into::into))
                .collect::<IndexResult<Vec<Vec<(Vec<u8>, f64)>>>>()?;
            if read == first_read && read < in_bucket && matched.customers.len() < limit + 1 {
                // Too few customers in the first entries: read on.
                let mut pipe = ::redis::pipe();
                zrange_rev(&mut pipe, &keys.sx(b), read, SUFFIX_CANDIDATES - read);
                entries =
                    from_owned_redis_value(next_value(&mut reader.run(&pipe).await?.into_iter())?)?;
                read += entries.len();
                matched.take(entries, digits, national, &mut found, &mut recency);
            }
            if read < in_bucket && read > 0 {
                // The bucket was read in part: as many matches per member
                // in the rest as in what was read.
                let rest = (in_bucket - read) as f64 * matched.members as f64 / read as f64;
                beyond_read = rest.round() as u64;
            }
            if let Some(digits) = inner {
                for entries in inner_entries {
                    for (member, score) in entries {
                        let Some((id, number)) = split_number_member(&member) else {
                            continue;
                        };
                        if query::has_inner_digits(number, digits) {
                            found.add(id, Match::Inner);
                            recency.entry(id).or_insert(score);
                        }
                    }
                }
            }
        }
        let total_estimate = found.len() as u64 + beyond_read;

        // Whole or national matches the bucket did not give a recency:
        // their briefs tell it.
        let unknown: Vec<CustomerId> = found
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !recency.contains_key(id))
            .collect();
        let mut briefs: HashMap<CustomerId, Brief> = reader
            .briefs(&keys, &unknown)
            .await?
            .into_iter()
            .map(|b| (b.id, b))
            .collect();
        for b in briefs.values() {
            recency.insert(b.id, recency_of(b.last_engagement_at.as_ref()));
        }
        let page = found.page(limit, after, |id| recency.get(&id).copied());
        let missing: Vec<CustomerId> = page
            .iter()
            .map(|k| k.id)
            .filter(|id| !briefs.contains_key(id))
            .collect();
        briefs.extend(
            reader
                .briefs(&keys, &missing)
                .await?
                .into_iter()
                .map(|b| (b.id, b)),
        );
        Ok(found.results(&page, briefs, limit, total_estimate))
    }
}

/// `ZRANGE key <start> <start + count - 1> REV WITHSCORES`: most recent first.
fn zrange_rev(p: &mut ::redis::Pipeline, key: &str, start: usize, count: usize) {
    p.cmd("ZRANGE")
        .arg(key)
        .arg(start)
        .arg(start + count.max(1) - 1)
        .arg("REV")
        .arg("WITHSCORES");
}

/// What was read from a bucket.
#[derive(Default)]
struct Bucket {
    /// Members whose number ends with the digits.
    members: usize,
    /// Customers those are (a customer may have two numbers in a bucket).
    customers: HashSet<CustomerId>,
}

impl Bucket {
    /// Takes bucket entries (most recent first): each customer's recency,
    /// a suffix match for those whose number ends with `digits`, and a
    /// national match for those whose national number is `national`.
    fn take(
        &mut self,
        entries: Vec<(Vec<u8>, f64)>,
        digits: &str,
        national: Option<&str>,
        found: &mut NumberMatches,
        recency: &mut HashMap<CustomerId, f64>,
    ) {
        for (member, score) in entries {
            let Some((id, number)) = split_number_member(&member) else {
                continue;
            };
            recency.insert(id, score);
            if let Some(n) = national {
                if query::ends_with_digits(number, n)
                    && PhoneNumber::from_e164_unchecked(number.to_string())
                        .national_number()
                        .is_some_and(|own| own == n)
                {
                    found.add(id, Match::National);
                }
            }
            if query::ends_with_digits(number, digits) {
                self.members += 1;
                self.customers.insert(id);
                found.add(id, Match::Suffix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_go_to_the_bucket_of_their_last_four_digits() {
        assert_eq!(bucket("+6581226418"), Some("26418"));
        assert_eq!(bucket_of("+6581226418", BUCKET_DIGITS), Some("6418"));
        assert_eq!(bucket("812264"), Some("12264"));
        assert_eq!(bucket("2264"), Some("2264"));
        assert_eq!(bucket("0418"), Some("0418"));
        assert_eq!(bucket("418"), None);
        assert_eq!(bucket("+65-8122"), None);
        let keys = Keys::of("crm:", 3);
        let id = CustomerId::new();
        let entries = keys.suffix_entries(id.0.as_bytes(), "+6581226418");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, "crm:g3:sx:26418");
        let (key, member) = entries[0].clone();
        assert_eq!(key, "crm:g3:sx:6418");
        assert_eq!(
            member,
            [id.0.as_bytes().as_slice(), b"+6581226418"].concat()
        );
        assert_eq!(split_number_member(&member), Some((id, "+6581226418")));
        assert_eq!(split_number_member(b"short"), None);
    }
}
