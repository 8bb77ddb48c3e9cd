//! Key names of the Redis index and the encodings of the members and scores
//! written under them.

use ::redis::Pipeline;

use crm_models::time;
use crm_models::CustomerId;

use crate::doc::IndexEntries;
use crate::ranking;

/// Key names of one generation.
#[derive(Clone)]
pub(super) struct Keys {
    /// `crm:g<N>:`
    pub(super) base: String,
    /// On a cluster: a customer's summary is written after its other keys
    /// (see [`defer_summary`](Self::defer_summary)).
    cluster: bool,
}

/// `<prefix>gen`: the live generation (`current`) and the one being built.
pub(super) fn gen_key(prefix: &str) -> String {
    format!("{prefix}gen")
}

impl Keys {
    /// The keys of `generation` under `prefix`.
    pub(super) fn of(prefix: &str, generation: u64) -> Keys {
        Keys {
            base: format!("{prefix}g{generation}:"),
            cluster: false,
        }
    }

    /// The same keys, written on a cluster or not.
    pub(super) fn on_cluster(mut self, cluster: bool) -> Keys {
        self.cluster = cluster;
        self
    }

    /// Before the command writing a customer's summary: on a cluster, where
    /// a pipeline's slots are written at the same time, it then waits for
    /// the customer's other keys (as on one Redis, where a pipeline runs in
    /// order), so that a write cut short leaves the old summary, whose
    /// entries the next write removes.
    pub(super) fn defer_summary(&self, p: &mut Pipeline) {
        if self.cluster {
            crate::redis_link::defer_next(p);
        }
    }

    /// `<base><kind><name>`, without `format!` (a rebuild builds millions).
    pub(super) fn key(&self, kind: &str, name: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + kind.len() + name.len());
        k.push_str(&self.base);
        k.push_str(kind);
        k.push_str(name);
        k
    }
    /// `cust:<id>`, the id as its 16 bytes.
    pub(super) fn cust(&self, id: CustomerId) -> Vec<u8> {
        self.cust_bytes(id.0.as_bytes())
    }
    /// [`cust`](Self::cust) of an id given as its bytes.
    pub(super) fn cust_bytes(&self, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.base.len() + 5 + id.len());
        k.extend_from_slice(self.base.as_bytes());
        k.extend_from_slice(b"cust:");
        k.extend_from_slice(id);
        k
    }
    /// What every `cust:<id>` key of the generation starts with.
    pub(super) fn cust_prefix(&self) -> String {
        self.key("cust:", "")
    }
    pub(super) fn ex(&self) -> String {
        self.key("ex", "")
    }
    pub(super) fn nm(&self, token: &str) -> String {
        self.key("nm:", token)
    }
    pub(super) fn tk(&self) -> String {
        self.key("tk", "")
    }
    pub(super) fn wn(&self, whole_name: &str) -> String {
        self.key("wn:", whole_name)
    }
    /// The customers having all of a set of tokens
    /// ([`ranking::token_sets`]).
    pub(super) fn ns(&self, set: &str) -> String {
        self.key("ns:", set)
    }

    /// The customers whose names have too many tokens for `ns:`.
    pub(super) fn nl(&self) -> String {
        format!("{}nl", self.base)
    }

    /// The token-set lists of a name, or the long-names list.
    pub(super) fn name_sets(&self, tokens: &[String]) -> Vec<String> {
        match ranking::token_sets(tokens) {
            Some(sets) => sets.iter().map(|k| self.ns(k)).collect(),
            None => vec![self.nl()],
        }
    }

    pub(super) fn ty(&self, variant: &str) -> String {
        self.key("ty:", variant)
    }
    /// The vocabulary's version: set to a new random value after each
    /// change to `tk` or the typo table `ty:`, so that a search can keep a
    /// query token's vocabulary and check it with one `GET`.
    pub(super) fn vv(&self) -> String {
        self.key("vv", "")
    }
    /// Marks the vocabulary changed; sent after the commands that change it.
    pub(super) fn vocabulary_changed(&self, p: &mut Pipeline) {
        use std::hash::BuildHasher;
        let version =
            std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
        p.cmd("SET").arg(self.vv()).arg(version).ignore();
    }
    /// Written by the versions that kept every customer id in one sorted
    /// set; only looked for now (see `ever_indexed`).
    pub(super) fn ids(&self) -> String {
        self.key("ids", "")
    }
    pub(super) fn used(&self) -> String {
        self.key("used", "")
    }
}

/// `cust:<id>` is a STRING: a flags byte, then the customer's summary
/// packed ([`crate::packed`]). Nothing else is kept: what the customer is
/// indexed under (to remove what it no longer has) and its fingerprint (for
/// verify) are computed from the summary.
///
/// The flag [`LIVE`] marks a customer written into a generation being built
/// by a live upsert or removal (a removal leaves the flags byte alone): the
/// rebuild leaves such a customer as it is.
pub(super) const LIVE: u8 = 1;

/// The value of `cust:<id>`: the flags, then the packed summary if any.
pub(super) fn cust_value(packed: Option<&[u8]>, live: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + packed.map_or(0, <[u8]>::len));
    v.push(if live { LIVE } else { 0 });
    if let Some(p) = packed {
        v.extend_from_slice(p);
    }
    v
}

/// A `cust:<id>` value read back: whether it is marked live, and the packed
/// summary (`None` for the mark a removal leaves).
pub(super) fn split_cust(value: &[u8]) -> (bool, Option<&[u8]>) {
    match value.split_first() {
        Some((flags, rest)) => (flags & LIVE != 0, (!rest.is_empty()).then_some(rest)),
        None => (false, None),
    }
}

/// A customer id as members and fields hold it: its 16 bytes.
pub(super) type IdBytes = [u8; 16];

pub(super) fn id_bytes(id: CustomerId) -> IdBytes {
    *id.0.as_bytes()
}

/// The id of 16 bytes; `None` for any other length.
pub(super) fn id_from(bytes: &[u8]) -> Option<CustomerId> {
    Some(CustomerId(uuid::Uuid::from_slice(bytes).ok()?))
}

/// A posting-list entry: the id's 16 bytes, then `<tokens>`, and
/// `\0<words>` when the words differ from the tokens (CJK substrings),
/// space-separated (neither has spaces). It carries what scoring needs, so
/// no summary is read for candidates that are not answered.
pub(super) fn name_member(id: CustomerId, entries: &IndexEntries) -> Vec<u8> {
    name_member_of(&id_bytes(id), entries)
}

/// [`name_member`] with the id as bytes.
pub(super) fn name_member_of(id: &IdBytes, entries: &IndexEntries) -> Vec<u8> {
    let joined = |words: &[String], m: &mut Vec<u8>| {
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                m.push(b' ');
            }
            m.extend_from_slice(w.as_bytes());
        }
    };
    let mut m = Vec::with_capacity(id.len() + 48);
    m.extend_from_slice(id);
    joined(&entries.tokens, &mut m);
    if entries.words != entries.tokens {
        m.push(0);
        joined(&entries.words, &mut m);
    }
    m
}

pub(super) fn parse_name_member(m: &[u8]) -> Option<(CustomerId, Vec<String>, Vec<String>)> {
    let id = id_from(m.get(..16)?)?;
    let text = std::str::from_utf8(&m[16..]).ok()?;
    let mut parts = text.split('\0');
    let split = |s: &str| -> Vec<String> {
        s.split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    };
    let tokens = split(parts.next()?);
    let words = match parts.next() {
        Some(w) => split(w),
        None => tokens.clone(),
    };
    Some((id, tokens, words))
}

/// The `wn:` key name of a whole name: its words in order
/// ([`ranking::whole_name_key`]).
pub(super) fn whole_name(words: &[String]) -> Option<String> {
    ranking::whole_name_key(words)
}

/// A posting list's score: the last engagement in microseconds, so that the
/// list's order is the ranking's tie-break ([`ranking::recency_of`]).
pub(super) fn recency_score(at: Option<&time::Timestamp>) -> f64 {
    ranking::recency_of(at)
}

/// `<value>\0<id>` (the id's 16 bytes): a sorted-set member for prefix
/// search. A value's members sort together and before those of any longer
/// value it is a prefix of (the 0 byte sorts first), so a prefix range lists
/// exact matches first.
pub(super) fn member(value: &str, id: CustomerId) -> Vec<u8> {
    member_of(value, &id_bytes(id))
}

/// [`member`] with the id as bytes.
pub(super) fn member_of(value: &str, id: &IdBytes) -> Vec<u8> {
    let mut m = Vec::with_capacity(value.len() + 1 + id.len());
    m.extend_from_slice(value.as_bytes());
    m.push(0);
    m.extend_from_slice(id);
    m
}

pub(super) fn split_member(m: &[u8]) -> Option<(&str, CustomerId)> {
    let at = m.len().checked_sub(17)?;
    if m[at] != 0 {
        return None;
    }
    let value = std::str::from_utf8(&m[..at]).ok()?;
    Some((value, id_from(&m[at + 1..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        let id = CustomerId::new();
        let m = member("ann", id);
        assert_eq!(m.len(), 3 + 1 + 16);
        assert_eq!(split_member(&m), Some(("ann", id)));
        assert_eq!(split_member(b"no-separator-and-far-too-long"), None);
        assert_eq!(split_member(b"short"), None);
    }

    #[test]
    fn name_members_round_trip() {
        let id = CustomerId::new();
        let latin = IndexEntries {
            tokens: vec!["ann".into(), "tan".into()],
            words: vec!["ann".into(), "tan".into()],
            ..IndexEntries::default()
        };
        let m = name_member(id, &latin);
        assert_eq!(m, [id.0.as_bytes().as_slice(), b"ann tan"].concat());
        assert_eq!(
            parse_name_member(&m),
            Some((id, latin.tokens.clone(), latin.words.clone()))
        );
        let cjk = IndexEntries {
            tokens: vec!["陈大".into(), "陈".into(), "大".into()],
            words: vec!["陈大".into()],
            ..IndexEntries::default()
        };
        let m = name_member(id, &cjk);
        assert_eq!(
            parse_name_member(&m),
            Some((id, cjk.tokens.clone(), cjk.words.clone()))
        );
        assert_eq!(parse_name_member(b"too short"), None);
    }

    #[test]
    fn cust_values_say_live_and_hold_the_summary() {
        assert_eq!(
            split_cust(&cust_value(Some(b"xy"), false)),
            (false, Some(&b"xy"[..]))
        );
        assert_eq!(
            split_cust(&cust_value(Some(b"xy"), true)),
            (true, Some(&b"xy"[..]))
        );
        assert_eq!(split_cust(&cust_value(None, true)), (true, None));
        assert_eq!(split_cust(b""), (false, None));
    }
}
