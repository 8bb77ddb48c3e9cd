//! Searches by name and email, and what a hit shows (numbers: `numbers`).

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::{from_owned_redis_value, Pipeline, Value};
use async_trait::async_trait;

use crm_models::time;
use crm_models::{CustomerId, Email, PhoneNumber};

use super::keys::{parse_name_member, split_member, Keys, SUMMARY_FIELD};
use super::{corrupt, next_value, RedisIndex, CANDIDATES};
use crate::doc::EngagementBrief;
use crate::query::{self, Brief, Match, MatchedOn, SearchHit, SearchResults};
use crate::ranking::{
    self, query_typo_keys, Entry, List, NameLists, NameTerms, RankKey, Read, Vocabulary,
    MAX_EXPANSIONS,
};
use crate::{IndexError, IndexResult};

impl RedisIndex {
    /// Reads the brief of each id (one round trip); ids without a summary
    /// (stale entries) are left out.
    pub(super) async fn briefs(&self, keys: &Keys, ids: &[CustomerId]) -> IndexResult<Vec<Brief>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HGET").arg(keys.cust(*id)).arg(SUMMARY_FIELD);
        }
        let mut out = Vec::with_capacity(ids.len());
        for v in self.read_query(&pipe).await? {
            let json: Option<Vec<u8>> = from_owned_redis_value(v)?;
            if let Some(json) = json {
                out.push(brief_of_json(&json)?);
            }
        }
        Ok(out)
    }

    /// A page of name hits ([`ranking::name_page`] over this index's
    /// lists), then the briefs of the hits (one `HGET` each).
    pub(crate) async fn search_names(
        &self,
        tokens: &[String],
        words: &[String],
        limit: usize,
        after: Option<RankKey>,
    ) -> IndexResult<SearchResults> {
        let lists = Lists {
            index: self,
            keys: parking_lot::Mutex::new(None),
        };
        ranking::name_page(&lists, tokens, words, limit, after).await
    }

    pub(super) async fn search_emails(
        &self,
        text: &str,
        exact: bool,
    ) -> IndexResult<Vec<SearchHit>> {
        let (keys, values) = self
            .read(|k, p| {
                if exact {
                    p.cmd("SMEMBERS").arg(k.em(text));
                }
                zrange_prefix(p, &k.ex(), text.as_bytes());
            })
            .await?;
        let mut matches: HashMap<CustomerId, Match> = HashMap::new();
        let mut values = values.into_iter();
        if exact {
            let ids: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
            for id in ids.iter().filter_map(|s| s.parse().ok()) {
                matches.insert(id, Match::Exact);
            }
        }
        let members: Vec<Vec<u8>> = from_owned_redis_value(next_value(&mut values)?)?;
        for (email, id) in members.iter().filter_map(|m| split_member(m)) {
            let m = if exact && email == text {
                Match::Exact
            } else {
                Match::Prefix
            };
            let entry = matches.entry(id).or_insert(m);
            *entry = (*entry).max(m);
        }
        self.rank_found(&keys, MatchedOn::Email, matches).await
    }

    async fn rank_found(
        &self,
        keys: &Keys,
        on: MatchedOn,
        matches: HashMap<CustomerId, Match>,
    ) -> IndexResult<Vec<SearchHit>> {
        let ids: Vec<CustomerId> = matches.keys().copied().collect();
        let found = self
            .briefs(keys, &ids)
            .await?
            .into_iter()
            .filter_map(|brief| matches.get(&brief.id).map(|m| (brief, *m)))
            .collect::<Vec<_>>();
        Ok(query::rank_matches(on, found))
    }
}

/// The name lists of one generation of the Redis index, for
/// [`ranking::search_names`]: the first call reads the live generation
/// along with its data, the later ones use it.
struct Lists<'a> {
    index: &'a RedisIndex,
    keys: parking_lot::Mutex<Option<Keys>>,
}

impl Lists<'_> {
    fn keys(&self) -> IndexResult<Keys> {
        self.keys
            .lock()
            .clone()
            .ok_or_else(|| IndexError::Internal("name lists read before the vocabulary".into()))
    }
}

fn list_key(keys: &Keys, list: &List) -> String {
    match list {
        List::Token(t) => keys.nm(t),
        List::Whole(w) => keys.wn(w),
        List::Set(k) => keys.ns(k),
        List::Long => keys.nl(),
    }
}

fn add_read(keys: &Keys, p: &mut Pipeline, r: &Read) {
    let key = list_key(keys, &r.list);
    p.cmd("ZRANGE")
        .arg(key)
        .arg(r.start)
        .arg(r.start + r.count.max(1) - 1)
        .arg("REV")
        .arg("WITHSCORES");
}

/// A posting list's entries; one that does not parse ends the chunk (the
/// list then counts as read to its end).
fn entries_of(v: Value) -> IndexResult<Vec<Entry>> {
    let raw: Vec<(Vec<u8>, f64)> = from_owned_redis_value(v)?;
    let mut out = Vec::with_capacity(raw.len());
    for (m, recency) in raw {
        let Some((id, tokens, words)) = parse_name_member(&m) else {
            break;
        };
        out.push(Entry {
            id,
            recency,
            terms: Arc::new(NameTerms { tokens, words }),
        });
    }
    Ok(out)
}

#[async_trait]
impl NameLists for Lists<'_> {
    async fn vocabulary_and_read(
        &self,
        tokens: &[String],
        reads: &[Read],
    ) -> IndexResult<(Vec<Vocabulary>, Vec<Vec<Entry>>)> {
        let (keys, values) = self
            .index
            .read(|k, p| {
                for q in tokens {
                    p.cmd("ZRANGEBYLEX")
                        .arg(k.tk())
                        .arg(lex_from(q.as_bytes()))
                        .arg(lex_to(q.as_bytes()))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(MAX_EXPANSIONS);
                    for v in query_typo_keys(q) {
                        p.cmd("SMEMBERS").arg(k.ty(&v));
                    }
                }
                for r in reads {
                    add_read(k, p, r);
                }
            })
            .await?;
        *self.keys.lock() = Some(keys);
        let mut values = values.into_iter();
        let mut vocabulary = Vec::with_capacity(tokens.len());
        for q in tokens {
            let prefixed: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
            let mut near = Vec::new();
            for _ in query_typo_keys(q) {
                let found: Vec<String> = from_owned_redis_value(next_value(&mut values)?)?;
                near.extend(found);
            }
            vocabulary.push(Vocabulary { prefixed, near });
        }
        let mut out = Vec::with_capacity(reads.len());
        for _ in reads {
            out.push(entries_of(next_value(&mut values)?)?);
        }
        Ok((vocabulary, out))
    }

    async fn sizes_and_read(
        &self,
        lists: &[List],
        reads: &[Read],
    ) -> IndexResult<(Vec<u64>, Vec<Vec<Entry>>)> {
        if lists.is_empty() && reads.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let keys = self.keys()?;
        let mut pipe = ::redis::pipe();
        for l in lists {
            pipe.cmd("ZCARD").arg(list_key(&keys, l));
        }
        for r in reads {
            add_read(&keys, &mut pipe, r);
        }
        let mut values = self.index.read_query(&pipe).await?.into_iter();
        let mut sizes = Vec::with_capacity(lists.len());
        for _ in lists {
            sizes.push(from_owned_redis_value::<u64>(next_value(&mut values)?)?);
        }
        let mut out = Vec::with_capacity(reads.len());
        for _ in reads {
            out.push(entries_of(next_value(&mut values)?)?);
        }
        Ok((sizes, out))
    }

    async fn briefs(&self, ids: &[CustomerId]) -> IndexResult<Vec<Brief>> {
        self.index.briefs(&self.keys()?, ids).await
    }
}

pub(super) fn lex_from(prefix: &[u8]) -> Vec<u8> {
    let mut from = Vec::with_capacity(prefix.len() + 1);
    from.push(b'[');
    from.extend_from_slice(prefix);
    from
}

pub(super) fn lex_to(prefix: &[u8]) -> Vec<u8> {
    let mut to = Vec::with_capacity(prefix.len() + 2);
    to.push(b'(');
    to.extend_from_slice(prefix);
    to.push(0xff);
    to
}

/// `ZRANGEBYLEX key [prefix (prefix\xff LIMIT 0 CANDIDATES`: members that
/// start with `prefix` (UTF-8 never contains 0xff).
fn zrange_prefix(p: &mut Pipeline, key: &str, prefix: &[u8]) {
    p.cmd("ZRANGEBYLEX")
        .arg(key)
        .arg(lex_from(prefix))
        .arg(lex_to(prefix))
        .arg("LIMIT")
        .arg(0)
        .arg(CANDIDATES);
}

/// What a search hit shows, read from a summary's JSON (the rest of it is
/// skipped). Its values were normalised before they were written, so they
/// are trusted.
fn brief_of_json(json: &[u8]) -> IndexResult<Brief> {
    #[derive(serde::Deserialize)]
    struct Stored {
        id: CustomerId,
        #[serde(default)]
        name: Option<String>,
        phones: Vec<String>,
        emails: Vec<String>,
        #[serde(default, with = "time::rfc3339_option")]
        last_engagement_at: Option<time::Timestamp>,
        #[serde(default)]
        last_engagements: FirstEngagement,
    }
    let s: Stored = serde_json::from_slice(json).map_err(corrupt)?;
    Ok(Brief {
        id: s.id,
        name: s.name,
        phones: s
            .phones
            .into_iter()
            .map(PhoneNumber::from_e164_unchecked)
            .collect(),
        emails: s
            .emails
            .into_iter()
            .map(Email::from_normalised_unchecked)
            .collect(),
        last_engagement_at: s.last_engagement_at,
        last_engagement: s.last_engagements.0,
    })
}

/// The first of a list of engagements (the newest); the others are skipped
/// unread.
#[derive(Default)]
struct FirstEngagement(Option<EngagementBrief>);

impl<'de> serde::Deserialize<'de> for FirstEngagement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct First;
        impl<'de> serde::de::Visitor<'de> for First {
            type Value = FirstEngagement;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of engagements")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FirstEngagement, A::Error> {
                let first = seq.next_element::<EngagementBrief>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstEngagement(first))
            }
        }
        d.deserialize_seq(First)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::CustomerSummary;
    use crm_models::{Channel, EngagementId};

    #[test]
    fn briefs_are_read_from_the_summary_json() {
        let mut summary = CustomerSummary {
            id: CustomerId::new(),
            name: Some("Ann \"phones\":[] Tan".into()),
            status: crm_models::CustomerStatus::Active,
            phone: None,
            email: None,
            phones: vec![PhoneNumber::parse("+6581226418", None).unwrap()],
            emails: vec![Email::parse("ann@example.com").unwrap()],
            counts: crm_models::ChannelCounts::default(),
            last_engagement_at: Some(time::now()),
            last_engagements: vec![EngagementBrief {
                id: EngagementId::new(),
                channel: Channel::Sms,
                direction: None,
                occurred_at: time::now(),
                preview: "{\"emails\":[\"x@y.z\"]}".into(),
            }],
        };
        let json = serde_json::to_vec(&summary).unwrap();
        assert_eq!(brief_of_json(&json).unwrap(), Brief::from(&summary));
        summary.name = None;
        summary.last_engagement_at = None;
        let json = serde_json::to_vec(&summary).unwrap();
        assert_eq!(brief_of_json(&json).unwrap(), Brief::from(&summary));
        assert!(brief_of_json(b"{\"id\":1}").is_err());
    }

    #[test]
    fn engagement_ids_survive_the_summary_json() {
        let brief = EngagementBrief {
            id: EngagementId::new(),
            channel: Channel::Sms,
            direction: None,
            occurred_at: time::now(),
            preview: "hi".into(),
        };
        let json = serde_json::to_string(&vec![brief.clone()]).unwrap();
        let back: Vec<EngagementBrief> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![brief]);
    }
}
