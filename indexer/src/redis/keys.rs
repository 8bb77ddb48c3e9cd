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
    pub(super) fn cust(&self, id: CustomerId) -> String {
        self.key("cust:", &id.to_string())
    }
    /// What every `cust:<id>` key of the generation starts with.
    pub(super) fn cust_prefix(&self) -> String {
        self.key("cust:", "")
    }
    pub(super) fn ph(&self, e164: &str) -> String {
        self.key("ph:", e164)
    }
    pub(super) fn pn(&self, national: &str) -> String {
        self.key("pn:", national)
    }
    pub(super) fn em(&self, email: &str) -> String {
        self.key("em:", email)
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

/// The field of `cust:<id>` that marks a customer written into a generation
/// being built by a live upsert or removal (a removal leaves a `cust:<id>`
/// holding only this field, which readers take for no summary): the rebuild
/// leaves such a customer as it is.
pub(super) const LIVE_FIELD: &str = "live";

/// The field of `cust:<id>` holding the caller-ID summary as JSON.
pub(super) const SUMMARY_FIELD: &str = "summary";

/// A posting-list entry: `<id>\0<tokens>`, and `\0<words>` when the words
/// differ from the tokens (CJK substrings), space-separated (neither has
/// spaces). It carries what scoring needs, so no summary is read for
/// candidates that are not answered.
pub(super) fn name_member(id: CustomerId, entries: &IndexEntries) -> String {
    name_member_of(&id.to_string(), entries)
}

/// [`name_member`] with the id as text.
pub(super) fn name_member_of(id: &str, entries: &IndexEntries) -> String {
    let joined = |words: &[String], m: &mut String| {
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                m.push(' ');
            }
            m.push_str(w);
        }
    };
    let mut m = String::with_capacity(id.len() + 64);
    m.push_str(id);
    m.push('\0');
    joined(&entries.tokens, &mut m);
    if entries.words != entries.tokens {
        m.push('\0');
        joined(&entries.words, &mut m);
    }
    m
}

pub(super) fn parse_name_member(m: &[u8]) -> Option<(CustomerId, Vec<String>, Vec<String>)> {
    let text = std::str::from_utf8(m).ok()?;
    let mut parts = text.split('\0');
    let id = parts.next()?.parse().ok()?;
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

/// `<value>\0<id>`: a sorted-set member for prefix search.
pub(super) fn member(value: &str, id: CustomerId) -> String {
    member_of(value, &id.to_string())
}

/// [`member`] with the id as text.
pub(super) fn member_of(value: &str, id: &str) -> String {
    let mut m = String::with_capacity(value.len() + 1 + id.len());
    m.push_str(value);
    m.push('\0');
    m.push_str(id);
    m
}

pub(super) fn split_member(m: &[u8]) -> Option<(&str, CustomerId)> {
    let at = m.iter().position(|b| *b == 0)?;
    let value = std::str::from_utf8(&m[..at]).ok()?;
    let id = std::str::from_utf8(&m[at + 1..]).ok()?.parse().ok()?;
    Some((value, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        let id = CustomerId::new();
        let m = member("ann", id);
        assert_eq!(split_member(m.as_bytes()), Some(("ann", id)));
        assert_eq!(split_member(b"no-separator"), None);
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
        assert_eq!(m, format!("{id}\0ann tan"));
        assert_eq!(
            parse_name_member(m.as_bytes()),
            Some((id, latin.tokens.clone(), latin.words.clone()))
        );
        let cjk = IndexEntries {
            tokens: vec!["陈大".into(), "陈".into(), "大".into()],
            words: vec!["陈大".into()],
            ..IndexEntries::default()
        };
        let m = name_member(id, &cjk);
        assert_eq!(
            parse_name_member(m.as_bytes()),
            Some((id, cjk.tokens.clone(), cjk.words.clone()))
        );
        assert_eq!(parse_name_member(b"not-an-id\0ann"), None);
    }

    #[test]
    fn name_members_with_text_ids_match() {
        let id = CustomerId::new();
        let entries = IndexEntries {
            tokens: vec!["陈大".into(), "陈".into()],
            words: vec!["陈大".into()],
            ..IndexEntries::default()
        };
        assert_eq!(
            name_member_of(&id.to_string(), &entries),
            format!("{id}\0陈大 陈\0陈大")
        );
        assert_eq!(
            member("ann@example.com", id),
            format!("ann@example.com\0{id}")
        );
    }
}
