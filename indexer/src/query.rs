//! Queries, hits, and the ranking both adapters share.
//!
//! An adapter finds *candidates* (customers that may match) from its keys;
//! everything after that, deciding how each query token matched and ordering
//! the hits, happens here, so both adapters rank the same way.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crm_models::names::{self, QueryKind};
use crm_models::time::{self, Timestamp};
use crm_models::{CustomerId, Email, PhoneNumber, Region};

use crate::doc::CustomerSummary;
use crate::MAX_SEARCH_LIMIT;

/// What a person typed, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Whatever they have: an email (or `ann@`), a number, or a name.
    Any(String),
    /// Part of a name: every token must match (whole, prefix, or one typo).
    Name(String),
    /// A whole email, or its beginning.
    Email(String),
    /// A number typed any way; `region` for numbers without a country code.
    Phone { raw: String, region: Option<Region> },
}

/// Which part of the customer the query matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MatchedOn {
    Name,
    Email,
    Phone,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub id: CustomerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub emails: Vec<Email>,
    pub phones: Vec<PhoneNumber>,
    #[serde(default, with = "time::rfc3339_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_engagement_at: Option<Timestamp>,
    pub matched_on: MatchedOn,
    /// In (0, 1]: 1 for an exact match of the whole name, email or number;
    /// prefix matches score about 0.7 and one-typo matches about 0.4.
    pub score: f64,
}

/// How one query token (or an email, or a number) matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Match {
    Typo,
    Prefix,
    /// A phone number found by its national number, without country code.
    National,
    Exact,
}

impl Match {
    pub(crate) fn score(self) -> f64 {
        match self {
            Match::Exact => 1.0,
            Match::National => 0.9,
            Match::Prefix => 0.7,
            Match::Typo => 0.4,
        }
    }
}

/// What to look up, decided from the query before touching any key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Name tokens, all of which must match.
    Name(Vec<String>),
    /// An email prefix; `exact` when it is a whole address.
    Email {
        text: String,
        exact: bool,
    },
    /// Numbers to look up exactly (E.164), and a national number.
    Phone {
        e164: Vec<String>,
        national: Option<String>,
    },
    Nothing,
}

impl Plan {
    pub fn of(query: &Query) -> Plan {
        match query {
            Query::Any(q) => match names::classify(q) {
                QueryKind::Phone {
                    digits,
                    international,
                } => {
                    let raw = if international {
                        format!("+{digits}")
                    } else {
                        digits
                    };
                    phone_plan(&raw, None)
                }
                QueryKind::Email(e) => Plan::Email {
                    text: e.as_str().to_string(),
                    exact: true,
                },
                QueryKind::EmailFragment(f) => email_plan(&f),
                QueryKind::Name(tokens) => name_plan(tokens),
            },
            Query::Name(q) => name_plan(names::tokenize(q)),
            Query::Email(q) => email_plan(q),
            Query::Phone { raw, region } => phone_plan(raw, *region),
        }
    }
}

/// Most name tokens a query uses: each one is a range read, and a pasted
/// paragraph (or a long CJK text, which expands into substrings) must not
/// become hundreds of them. Nobody types more to find a person.
pub const MAX_QUERY_TOKENS: usize = 12;

fn name_plan(mut tokens: Vec<String>) -> Plan {
    tokens.truncate(MAX_QUERY_TOKENS);
    if tokens.is_empty() {
        Plan::Nothing
    } else {
        Plan::Name(tokens)
    }
}

fn email_plan(q: &str) -> Plan {
    match Email::parse(q) {
        Ok(e) => Plan::Email {
            text: e.as_str().to_string(),
            exact: true,
        },
        Err(_) => {
            let text = q.trim().to_lowercase();
            if text.is_empty() {
                Plan::Nothing
            } else {
                Plan::Email { text, exact: false }
            }
        }
    }
}

fn phone_plan(raw: &str, region: Option<Region>) -> Plan {
    let raw = raw.trim();
    let Some((digits, international)) = (match names::classify(raw) {
        QueryKind::Phone {
            digits,
            international,
        } => Some((digits, international)),
        _ => None,
    }) else {
        return Plan::Nothing;
    };
    let mut e164 = Vec::new();
    if let Ok(p) = PhoneNumber::parse(raw, region) {
        e164.push(p.as_str().to_string());
    }
    let mut national = None;
    if !international {
        // `6581226418`: maybe the country code without `+`.
        if let Ok(p) = PhoneNumber::parse(&format!("+{digits}"), None) {
            if !e164.contains(&p.as_str().to_string()) {
                e164.push(p.as_str().to_string());
            }
        }
        // `81226418`, `07911 123456`: the national number, trunk zeros dropped.
        let n = digits.trim_start_matches('0');
        if n.len() >= 4 {
            national = Some(n.to_string());
        }
    }
    if e164.is_empty() && national.is_none() {
        Plan::Nothing
    } else {
        Plan::Phone { e164, national }
    }
}

/// The words of a name query as typed (a CJK run stays one word), for
/// whole-name lookups; empty for other queries.
pub(crate) fn query_words(query: &Query) -> Vec<String> {
    let mut words = match query {
        Query::Any(q) | Query::Name(q) => names::words(q),
        Query::Email(_) | Query::Phone { .. } => Vec::new(),
    };
    words.truncate(MAX_QUERY_TOKENS);
    words
}

/// What a hit shows of a customer; adapters read only this much.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Brief {
    pub id: CustomerId,
    pub name: Option<String>,
    pub emails: Vec<Email>,
    pub phones: Vec<PhoneNumber>,
    pub last_engagement_at: Option<Timestamp>,
}

impl From<&CustomerSummary> for Brief {
    fn from(s: &CustomerSummary) -> Self {
        Brief {
            id: s.id,
            name: s.name.clone(),
            emails: s.emails.clone(),
            phones: s.phones.clone(),
            last_engagement_at: s.last_engagement_at,
        }
    }
}

/// A customer that may match a name query, and the name tokens it is
/// indexed under.
pub(crate) struct NameCandidate {
    pub brief: Brief,
    pub tokens: Vec<String>,
}

/// Keeps the candidates whose tokens match every query token, scored.
pub(crate) fn rank_names(query: &[String], candidates: Vec<NameCandidate>) -> Vec<SearchHit> {
    let mut hits = Vec::new();
    for c in candidates {
        let words = c
            .brief
            .name
            .as_deref()
            .map(names::words)
            .unwrap_or_default();
        if let Some(score) = name_score(query, &c.tokens, &words) {
            hits.push(hit(c.brief, MatchedOn::Name, score));
        }
    }
    hits
}

/// Taken off the score of a name match unless every word of the name was
/// typed exactly: `ann` finds `Ann` (1.0) before `Ann Tan` (0.95). It stays
/// below the gap between match kinds, so kinds still come first; and it is
/// the same for every partial match, so among those of one kind the most
/// recent engagement decides (which lets an index read its posting lists in
/// recency order and stop early).
pub(crate) const PARTIAL_NAME_PENALTY: f64 = 0.05;

/// The score of a customer with these name `tokens` and `words` for the
/// query tokens, or `None` when some query token matches none of its tokens:
/// the mean of each query token's best match, less
/// [`PARTIAL_NAME_PENALTY`] unless every word is a query token. Rounded as
/// hits show it, so that adapters comparing scores agree with the ranking.
pub(crate) fn name_score(query: &[String], tokens: &[String], words: &[String]) -> Option<f64> {
    name_score_with(query, tokens, words, |i, t| token_match(&query[i], t))
}

/// [`name_score`] with `matches(i, token)` deciding how `query[i]` matches a
/// token (it must agree with [`token_match`]; the Redis index remembers the
/// answers during one search, since typo checks allocate).
pub(crate) fn name_score_with(
    query: &[String],
    tokens: &[String],
    words: &[String],
    mut matches: impl FnMut(usize, &str) -> Option<Match>,
) -> Option<f64> {
    if query.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for i in 0..query.len() {
        total += tokens.iter().filter_map(|t| matches(i, t)).max()?.score();
    }
    let whole = words.iter().all(|w| query.contains(w));
    let penalty = if whole { 0.0 } else { PARTIAL_NAME_PENALTY };
    Some(round_score(total / query.len() as f64 - penalty))
}

/// The best score a partial-name match can reach when one query token
/// matches as `kind` and every other one exactly.
pub(crate) fn best_partial_score(query_tokens: usize, kind: Match) -> f64 {
    let n = query_tokens.max(1) as f64;
    round_score((kind.score() + (n - 1.0)) / n - PARTIAL_NAME_PENALTY)
}

fn round_score(score: f64) -> f64 {
    (score * 1000.0).round() / 1000.0
}

pub(crate) fn token_match(query: &str, token: &str) -> Option<Match> {
    if token == query {
        Some(Match::Exact)
    } else if token.starts_with(query) {
        Some(Match::Prefix)
    } else if names::one_typo_apart(query, token) {
        Some(Match::Typo)
    } else {
        None
    }
}

/// Email and phone candidates: each customer with how it matched; the best
/// match per customer counts.
pub(crate) fn rank_matches(
    matched_on: MatchedOn,
    candidates: impl IntoIterator<Item = (Brief, Match)>,
) -> Vec<SearchHit> {
    let mut best: HashMap<CustomerId, (Brief, Match)> = HashMap::new();
    for (summary, m) in candidates {
        match best.get_mut(&summary.id) {
            Some(entry) if entry.1 >= m => {}
            Some(entry) => entry.1 = m,
            None => {
                best.insert(summary.id, (summary, m));
            }
        }
    }
    best.into_values()
        .map(|(s, m)| hit(s, matched_on, m.score()))
        .collect()
}

fn hit(s: Brief, matched_on: MatchedOn, score: f64) -> SearchHit {
    SearchHit {
        id: s.id,
        name: s.name,
        emails: s.emails,
        phones: s.phones,
        last_engagement_at: s.last_engagement_at,
        matched_on,
        score: round_score(score),
    }
}

/// Best first, ties by most recent engagement, then by id, highest first
/// (ids are time-ordered, so the newest customer), so the order is stable.
/// The Redis index keeps its posting lists in the same order.
pub(crate) fn best_first(mut hits: Vec<SearchHit>, limit: usize) -> Vec<SearchHit> {
    hits.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| b.last_engagement_at.cmp(&a.last_engagement_at))
            .then_with(|| b.id.cmp(&a.id))
    });
    hits.truncate(limit.min(MAX_SEARCH_LIMIT));
    hits
}

/// Caller-ID answers: most recently engaged first.
pub(crate) fn most_recent_first(mut summaries: Vec<CustomerSummary>) -> Vec<CustomerSummary> {
    summaries.sort_by(|a, b| {
        b.last_engagement_at
            .cmp(&a.last_engagement_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    summaries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_what_was_typed() {
        assert_eq!(
            Plan::of(&Query::Any("+65 8122 6418".into())),
            Plan::Phone {
                e164: vec!["+6581226418".into()],
                national: None
            }
        );
        assert_eq!(
            Plan::of(&Query::Any("8122 6418".into())),
            Plan::Phone {
                e164: vec![],
                national: Some("81226418".into())
            }
        );
        assert_eq!(
            Plan::of(&Query::Phone {
                raw: "8122 6418".into(),
                region: Some(Region::parse("SG").unwrap())
            }),
            Plan::Phone {
                e164: vec!["+6581226418".into()],
                national: Some("81226418".into())
            }
        );
        assert_eq!(
            Plan::of(&Query::Any("6581226418".into())),
            Plan::Phone {
                e164: vec!["+6581226418".into()],
                national: Some("6581226418".into())
            }
        );
        assert_eq!(
            Plan::of(&Query::Any("ann@".into())),
            Plan::Email {
                text: "ann@".into(),
                exact: false
            }
        );
        assert_eq!(
            Plan::of(&Query::Email("ann".into())),
            Plan::Email {
                text: "ann".into(),
                exact: false
            }
        );
        assert_eq!(
            Plan::of(&Query::Name("Tan, Ann".into())),
            Plan::Name(vec!["tan".into(), "ann".into()])
        );
        assert_eq!(Plan::of(&Query::Any(" ,. ".into())), Plan::Nothing);
        let pasted: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
        let pasted = pasted.join(" ");
        match Plan::of(&Query::Any(pasted)) {
            Plan::Name(tokens) => assert_eq!(tokens.len(), MAX_QUERY_TOKENS),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Plan::of(&Query::Phone {
                raw: "ann".into(),
                region: None
            }),
            Plan::Nothing
        );
    }

    #[test]
    fn token_matches_rank_exact_prefix_typo() {
        assert_eq!(token_match("ann", "ann"), Some(Match::Exact));
        assert_eq!(token_match("an", "ann"), Some(Match::Prefix));
        assert_eq!(token_match("narendar", "narendra"), Some(Match::Typo));
        assert_eq!(token_match("bob", "ann"), None);
        assert!(Match::Exact > Match::National && Match::Prefix > Match::Typo);
    }
}
