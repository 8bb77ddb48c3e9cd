//! A whole generation built at once from prepared documents (a rebuild, the
//! start-up load): each map is made from its entries sorted, which is
//! several times faster than inserting customer by customer into maps of a
//! million entries, and the two halves of the work (name lists; emails,
//! numbers and customers) run on two threads.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use foldhash::HashMapExt;

use crm_models::CustomerId;

use crate::query;
use crate::ranking::{self, typo_keys, NameTerms};

use super::{Generation, Posting, Prepared, Rank, Stored};

type FastMap<K, V> = foldhash::HashMap<K, V>;

/// Where the run of sorted entries that starts at `start` ends (most runs
/// are one or two entries long: a linear walk, not a binary search).
fn run_end<T>(sorted: &[T], start: usize, same: impl Fn(&T) -> bool) -> usize {
    start + sorted[start..].iter().take_while(|e| same(e)).count()
}

/// Posting lists keyed by `K`, built from `(key, rank, terms)` entries.
fn postings<'a, K>(entries: impl Iterator<Item = (&'a str, Rank, &'a Arc<NameTerms>)>) -> K
where
    K: FromIterator<(String, Posting)>,
{
    // Keys repeat (a common token is on a tenth of the names): sort small
    // numbers, not strings.
    let mut numbers: FastMap<&'a str, u32> = FastMap::new();
    let mut keyed: Vec<(u32, Rank, &'a Arc<NameTerms>)> = Vec::new();
    for (key, rank, terms) in entries {
        let next = numbers.len() as u32;
        let n = *numbers.entry(key).or_insert(next);
        keyed.push((n, rank, terms));
    }
    // By list, then rank (most recent first), compared as integers.
    keyed.sort_unstable_by_key(|&(n, Reverse((recency, id)), _)| {
        (n, Reverse(recency), Reverse(id.0.as_u128()))
    });
    let mut names: Vec<&str> = vec![""; numbers.len()];
    for (key, n) in numbers {
        names[n as usize] = key;
    }
    let mut out = Vec::with_capacity(names.len());
    let mut i = 0;
    while i < keyed.len() {
        let n = keyed[i].0;
        let end = run_end(&keyed, i, |e| e.0 == n);
        let posting: Posting = keyed[i..end]
            .iter()
            .map(|(_, rank, terms)| (*rank, Arc::clone(terms)))
            .collect();
        out.push((names[n as usize].to_string(), posting));
        i = end;
    }
    out.into_iter().collect()
}

/// Sets of ids keyed by `K`, built from `(key, id)` entries.
fn id_sets<K>(mut entries: Vec<(&str, CustomerId)>) -> K
where
    K: FromIterator<(String, BTreeSet<CustomerId>)>,
{
    entries.sort_unstable();
    entries.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let key = entries[i].0;
        let end = run_end(&entries, i, |e| e.0 == key);
        out.push((
            key.to_string(),
            entries[i..end].iter().map(|(_, id)| *id).collect(),
        ));
        i = end;
    }
    out.into_iter().collect()
}

/// Sets of ids in a hash map (no order to build: inserted as they come).
fn hashed_id_sets(entries: Vec<(&str, CustomerId)>) -> HashMap<String, BTreeSet<CustomerId>> {
    let mut out: HashMap<String, BTreeSet<CustomerId>> = HashMap::with_capacity(entries.len());
    for (key, id) in entries {
        match out.get_mut(key) {
            Some(ids) => {
                ids.insert(id);
            }
            None => {
                out.insert(key.to_string(), BTreeSet::from([id]));
            }
        }
    }
    out
}

/// The name lists, the typo keys of their tokens.
struct Names {
    names: BTreeMap<String, Posting>,
    whole: HashMap<String, Posting>,
    sets: HashMap<String, Posting>,
    long: Posting,
    typos: HashMap<String, BTreeSet<String>>,
}

fn names(docs: &[(CustomerId, Prepared)]) -> Names {
    let names: BTreeMap<String, Posting> = postings(docs.iter().flat_map(|(_, p)| {
        p.entries
            .tokens
            .iter()
            .map(move |t| (t.as_str(), p.rank, &p.terms))
    }));
    let whole = postings(
        docs.iter()
            .filter_map(|(_, p)| p.whole.as_deref().map(|w| (w, p.rank, &p.terms))),
    );
    let sets = postings(docs.iter().flat_map(|(_, p)| {
        p.sets
            .iter()
            .flatten()
            .map(move |k| (k.as_str(), p.rank, &p.terms))
    }));
    let long = docs
        .iter()
        .filter(|(_, p)| p.sets.is_none())
        .map(|(_, p)| (p.rank, p.terms.clone()))
        .collect();
    let mut typos: HashMap<String, BTreeSet<String>> = HashMap::new();
    for t in names.keys() {
        for v in typo_keys(t) {
            typos.entry(v).or_default().insert(t.clone());
        }
    }
    Names {
        names,
        whole,
        sets,
        long,
        typos,
    }
}

/// Emails, numbers and last digits.
struct Identifiers {
    emails: BTreeMap<String, BTreeSet<CustomerId>>,
    phones: HashMap<String, BTreeSet<CustomerId>>,
    national: HashMap<String, BTreeSet<CustomerId>>,
    suffixes: BTreeMap<String, BTreeMap<CustomerId, f64>>,
}

fn identifiers(docs: &[(CustomerId, Prepared)]) -> Identifiers {
    let pairs = |of: fn(&Prepared) -> &Vec<String>| -> Vec<(&str, CustomerId)> {
        docs.iter()
            .flat_map(|(id, p)| of(p).iter().map(move |k| (k.as_str(), *id)))
            .collect()
    };
    let emails = id_sets(pairs(|p| &p.entries.emails));
    let phones = hashed_id_sets(pairs(|p| &p.entries.phones));
    let national = hashed_id_sets(pairs(|p| &p.entries.national));
    let mut reversed: Vec<(String, CustomerId, f64)> = docs
        .iter()
        .flat_map(|(id, p)| {
            let recency = ranking::recency_of(p.summary.last_engagement_at.as_ref());
            p.entries
                .phones
                .iter()
                .map(move |ph| (query::reversed_digits(ph), *id, recency))
        })
        .collect();
    reversed.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut suffixes = BTreeMap::new();
    let mut i = 0;
    while i < reversed.len() {
        let end = run_end(&reversed, i, |e| e.0 == reversed[i].0);
        let ids: BTreeMap<CustomerId, f64> = reversed[i..end]
            .iter()
            .map(|(_, id, r)| (*id, *r))
            .collect();
        suffixes.insert(std::mem::take(&mut reversed[i].0), ids);
        i = end;
    }
    Identifiers {
        emails,
        phones,
        national,
        suffixes,
    }
}

impl Generation {
    /// The generation holding `docs` (ids need not be in order; the last of
    /// an id's documents wins).
    pub(super) fn bulk(mut docs: Vec<(CustomerId, Prepared)>) -> Generation {
        if !docs.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: of one id's documents the last stays last.
            docs.sort_by_key(|(id, _)| *id);
            let mut kept: Vec<(CustomerId, Prepared)> = Vec::with_capacity(docs.len());
            for doc in docs {
                match kept.last_mut() {
                    Some(last) if last.0 == doc.0 => *last = doc,
                    _ => kept.push(doc),
                }
            }
            docs = kept;
        }
        let (names, ids) = std::thread::scope(|s| {
            let names = s.spawn(|| names(&docs));
            let ids = identifiers(&docs);
            (names.join(), ids)
        });
        let names = match names {
            Ok(n) => n,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let customers = docs
            .into_iter()
            .map(|(id, p)| (id, Stored::from(p)))
            .collect();
        Generation {
            customers,
            names: names.names,
            whole: names.whole,
            sets: names.sets,
            long: names.long,
            typos: names.typos,
            emails: ids.emails,
            phones: ids.phones,
            national: ids.national,
            suffixes: ids.suffixes,
            live: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::generate;

    /// Everything a generation holds, in a comparable form.
    fn contents(g: &Generation) -> String {
        type Lists = Vec<(String, Vec<(Rank, Vec<String>)>)>;
        let postings = |m: Vec<(&String, &Posting)>| -> Lists {
            let mut v: Vec<_> = m
                .into_iter()
                .map(|(k, p)| {
                    (
                        k.clone(),
                        p.iter().map(|(r, t)| (*r, t.tokens.clone())).collect(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let sorted =
            |m: &HashMap<String, BTreeSet<CustomerId>>| -> BTreeMap<String, BTreeSet<CustomerId>> {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            };
        let typos: BTreeMap<_, _> = g.typos.iter().collect();
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{typos:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            g.customers
                .iter()
                .map(|(id, s)| (
                    *id,
                    s.summary.clone(),
                    s.entries.clone(),
                    s.rank,
                    s.whole.clone(),
                    s.sets.clone()
                ))
                .collect::<Vec<_>>(),
            postings(g.names.iter().collect()),
            postings(g.whole.iter().collect()),
            postings(g.sets.iter().collect()),
            g.long
                .iter()
                .map(|(r, t)| (*r, t.tokens.clone()))
                .collect::<Vec<_>>(),
            g.emails,
            sorted(&g.phones),
            sorted(&g.national),
            g.suffixes,
        )
    }

    #[test]
    fn a_bulk_built_generation_equals_one_built_by_upserts() {
        let docs: Vec<(CustomerId, Prepared)> = generate::customers(7, 400)
            .filter_map(|doc| Prepared::of(&doc).map(|p| (doc.id(), p)))
            .collect();
        assert!(docs.len() > 300, "the generator makes searchable customers");
        let mut upserted = Generation::default();
        for (id, p) in &docs {
            upserted.upsert(*id, Some(p.clone()));
        }
        // Out of order, with a document repeated: the later one wins.
        let mut shuffled = docs.clone();
        shuffled.reverse();
        let (first_id, first) = docs[0].clone();
        let mut older = first.clone();
        older.entries.emails = vec!["older@example.com".into()];
        shuffled.insert(0, (first_id, older));
        let bulk = Generation::bulk(shuffled);
        assert_eq!(contents(&bulk), contents(&upserted));
        assert!(!bulk.names.is_empty() && !bulk.sets.is_empty() && !bulk.suffixes.is_empty());
        assert!(!bulk.emails.contains_key("older@example.com"));
    }
}
