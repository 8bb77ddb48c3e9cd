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

use crate::doc::{CustomerSummary, EngagementBrief};
use crate::ranking::{recency_of, RankKey, Scored};
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
    /// The newest engagement (channel, direction, time, short preview), so
    /// that a type-ahead list or a popup needs no second request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_engagement: Option<EngagementBrief>,
    pub matched_on: MatchedOn,
    /// In (0, 1]: 1 for an exact match of the whole name (in the order
    /// typed), email or number; prefix matches score about 0.7, one-typo
    /// matches about 0.4, and partial matches at most 0.3.
    pub score: f64,
    /// A name that matches every query word but one (`Narendra Kumar Singh`
    /// finds Narendra Kumar Soni): ranked after every full match.
    #[serde(default)]
    pub partial: bool,
}

impl SearchHit {
    /// Where the hit stands in the ranking (a page cursor).
    pub fn rank_key(&self) -> RankKey {
        RankKey {
            score: self.score,
            recency: recency_of(self.last_engagement_at.as_ref()),
            id: self.id,
        }
    }
}

/// How one query token (or an email, or a number) matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Match {
    Typo,
    /// A phone number with the digits typed inside it, one or two digits
    /// before its end (`812264` in `+65 8122 6418`; see [`INNER_DIGITS`]).
    Inner,
    /// A phone number whose digits end with the digits typed (`6418`).
    Suffix,
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
            Match::Suffix => 0.6,
            Match::Inner => 0.5,
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
    /// Numbers to look up exactly (E.164), a national number, and the
    /// trailing digits of numbers (digits typed without `+`, at least
    /// [`MIN_SUFFIX_DIGITS`]).
    Phone {
        e164: Vec<String>,
        national: Option<String>,
        suffix: Option<String>,
    },
    Nothing,
}

impl Plan {
    pub fn of(query: &Query) -> Plan {
        match query {
            Query::Any(q) => match names::classify(q) {
                QueryKind::Phone { .. } => phone_plan(q, None),
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
    // `0065 8122 6418`, or `6581226418`: maybe the country code without `+`.
    if let Ok(p) = PhoneNumber::parse(&format!("+{digits}"), None) {
        if !e164.contains(&p.as_str().to_string()) {
            e164.push(p.as_str().to_string());
        }
    }
    let mut national = None;
    // `6418`: the last digits of numbers, kept as typed (`0418` too). Digits
    // starting `00` are an international number, unless they are none
    // (`0012`: the last digits of a number).
    let typed_00 = international && !raw.starts_with('+');
    let suffix = if !international {
        Some(digits.clone())
    } else if typed_00 && e164.is_empty() {
        Some(format!("00{digits}"))
    } else {
        None
    }
    .filter(|s| s.len() >= MIN_SUFFIX_DIGITS);
    if !international {
        // `81226418`, `07911 123456`: the national number, trunk zeros dropped.
        let n = digits.trim_start_matches('0');
        if n.len() >= 4 {
            national = Some(n.to_string());
        }
    }
    if e164.is_empty() && national.is_none() && suffix.is_none() {
        Plan::Nothing
    } else {
        Plan::Phone {
            e164,
            national,
            suffix,
        }
    }
}

/// Fewest digits that find numbers by their last digits: fewer match too
/// many numbers to mean anything.
pub const MIN_SUFFIX_DIGITS: usize = 4;

/// How many digits typed are also looked for inside numbers (as well as at
/// their end): five to seven, the start or the middle of a number as people
/// remember it (`8122 64`, `12264`). Eight or more are a whole national
/// number, and four match too many numbers.
pub const INNER_DIGITS: std::ops::RangeInclusive<usize> = 5..=7;

/// Most digits a number may have after the digits typed for an inner match.
/// Each adapter reads the numbers ending with the digits typed and every
/// tail of one or two digits (110 last-digit ranges or buckets), which
/// stays cheap; three would be a thousand. An eight-digit number is found
/// from any six or seven of its digits.
pub const INNER_TAIL: usize = 2;

/// The digits typed, when they are also looked for inside numbers.
pub(crate) fn inner_digits(suffix: Option<&str>) -> Option<&str> {
    suffix.filter(|s| INNER_DIGITS.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
}

/// The endings a number with an inner match has after the digits typed:
/// `0`-`9`, then `00`-`99`.
pub(crate) fn inner_tails() -> impl Iterator<Item = String> {
    (1..=INNER_TAIL).flat_map(|k| (0..10u32.pow(k as u32)).map(move |n| format!("{n:0k$}")))
}

/// Whether the E.164 number `e164` has `digits` one or two digits before
/// its end.
pub(crate) fn has_inner_digits(e164: &str, digits: &str) -> bool {
    let d = e164.trim_start_matches('+');
    (1..=INNER_TAIL).any(|k| {
        d.len() >= digits.len() + k && d[d.len() - k - digits.len()..d.len() - k] == *digits
    })
}

/// The digits of `number`, last first: the memory index keys numbers by
/// them, so that a range finds the numbers ending with some digits.
pub(crate) fn reversed_digits(number: &str) -> String {
    number.chars().rev().filter(char::is_ascii_digit).collect()
}

/// Whether the E.164 number `e164` ends with `digits`.
pub(crate) fn ends_with_digits(e164: &str, digits: &str) -> bool {
    e164.trim_start_matches('+').ends_with(digits)
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
    pub last_engagement: Option<EngagementBrief>,
}

impl From<&CustomerSummary> for Brief {
    fn from(s: &CustomerSummary) -> Self {
        Brief {
            id: s.id,
            name: s.name.clone(),
            emails: s.emails.clone(),
            phones: s.phones.clone(),
            last_engagement_at: s.last_engagement_at,
            last_engagement: s.last_engagements.first().cloned(),
        }
    }
}

/// The hits of a page of name matches: each scored customer with its brief
/// (a customer whose brief is gone, removed meanwhile, is left out).
pub(crate) fn name_hits(top: Vec<Scored>, briefs: Vec<Brief>) -> Vec<SearchHit> {
    let mut by_id: HashMap<CustomerId, Brief> = briefs.into_iter().map(|b| (b.id, b)).collect();
    top.into_iter()
        .filter_map(|s| {
            let brief = by_id.remove(&s.id)?;
            let mut h = hit(brief, MatchedOn::Name, s.score);
            h.partial = s.partial;
            Some(h)
        })
        .collect()
}

/// Taken off the score of a name match unless every word of the name was
/// typed exactly: `ann` finds `Ann` (1.0) before `Ann Tan` (0.95). It stays
/// below the gap between match kinds, so kinds still come first; and it is
/// the same for every partial match, so among those of one kind the most
/// recent engagement decides (which lets an index read its posting lists in
/// recency order and stop early).
pub(crate) const PARTIAL_NAME_PENALTY: f64 = 0.05;

/// Taken off the score of a whole-name match whose words are not the words
/// typed, in that order: `Xin Priya Nair` finds Xin Priya Nair (1.0) before
/// Priya Xin Nair (0.99).
pub(crate) const ORDER_PENALTY: f64 = 0.01;

/// A partial match (every query token but one matches) scores this share of
/// the mean of its matches: at most 0.3, below every full match (0.35 or
/// more).
pub(crate) const PARTIAL_WEIGHT: f64 = 0.3;

/// How a name matches a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NameScore {
    pub score: f64,
    /// One query token matched nothing.
    pub partial: bool,
}

/// The score of a customer with these name `tokens` and `words` for the
/// query `tokens` typed as `query_words`, or `None` when more than one
/// query token (or the only one) matches none of its tokens: the mean of
/// each query token's best match, less [`PARTIAL_NAME_PENALTY`] unless every
/// word is a query token, less [`ORDER_PENALTY`] when it is but the words
/// are not those typed in that order; with one query token unmatched, a
/// partial match scoring [`PARTIAL_WEIGHT`] of the mean. Rounded as hits
/// show it, so that adapters comparing scores agree with the ranking.
pub(crate) fn name_score(
    query: &[String],
    query_words: &[String],
    tokens: &[String],
    words: &[String],
) -> Option<NameScore> {
    name_score_with(query, query_words, tokens, words, |i, t| {
        token_match(&query[i], t)
    })
}

/// [`name_score`] with `matches(i, token)` deciding how `query[i]` matches a
/// token (it must agree with [`token_match`]; a search remembers the answers,
/// since typo checks allocate).
pub(crate) fn name_score_with(
    query: &[String],
    query_words: &[String],
    tokens: &[String],
    words: &[String],
    mut matches: impl FnMut(usize, &str) -> Option<Match>,
) -> Option<NameScore> {
    if query.is_empty() {
        return None;
    }
    let n = query.len() as f64;
    let mut total = 0.0;
    let mut missed = 0;
    for i in 0..query.len() {
        match tokens.iter().filter_map(|t| matches(i, t)).max() {
            Some(m) => total += m.score(),
            None => missed += 1,
        }
    }
    match missed {
        0 => {
            let whole = words.iter().all(|w| query.contains(w));
            let penalty = if !whole {
                PARTIAL_NAME_PENALTY
            } else if words != query_words {
                ORDER_PENALTY
            } else {
                0.0
            };
            Some(NameScore {
                score: round_score(total / n - penalty),
                partial: false,
            })
        }
        1 if partial_allowed(query) => Some(NameScore {
            score: round_score(PARTIAL_WEIGHT * total / n),
            partial: true,
        }),
        _ => None,
    }
}

/// Whether a name missing one of these query tokens is a partial match:
/// with two tokens or more, none CJK (a CJK word's tokens are its
/// substrings, and a name with only some of them is another name).
pub(crate) fn partial_allowed(query: &[String]) -> bool {
    query.len() >= 2 && !query.iter().any(|t| t.chars().any(names::is_cjk))
}

fn round_score(score: f64) -> f64 {
    (score * 1000.0).round() / 1000.0
}

pub(crate) fn token_match(query: &str, token: &str) -> Option<Match> {
    if token == query {
        Some(Match::Exact)
    } else if token.starts_with(query) {
        Some(Match::Prefix)
    } else if names::one_typo_from(query, token) {
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
        last_engagement: s.last_engagement,
        matched_on,
        score: round_score(score),
        partial: false,
    }
}

/// Best first, ties by most recent engagement, then by id, highest first
/// (ids are time-ordered, so the newest customer), so the order is stable.
/// The indexes keep their posting lists in the same order.
pub(crate) fn best_first(mut hits: Vec<SearchHit>) -> Vec<SearchHit> {
    hits.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| b.last_engagement_at.cmp(&a.last_engagement_at))
            .then_with(|| b.id.cmp(&a.id))
    });
    hits
}

/// A page of search hits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResults {
    /// Best first.
    pub hits: Vec<SearchHit>,
    /// How many hits the query has in all: exact for emails and numbers and
    /// for names when every candidate was read; otherwise extrapolated from
    /// what was read.
    pub total_estimate: u64,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<RankKey>,
}

impl SearchResults {
    /// The page of `limit` after `after` from every hit of a query (emails
    /// and numbers, whose hits are few).
    pub(crate) fn page_of(hits: Vec<SearchHit>, limit: usize, after: Option<RankKey>) -> Self {
        let total_estimate = hits.len() as u64;
        let hits = best_first(hits)
            .into_iter()
            .filter(|h| after.is_none_or(|a| a.before(&h.rank_key())));
        Self::first(hits, limit, total_estimate)
    }

    /// The first `limit` of `hits` (best first), with a cursor when more follow.
    pub(crate) fn first(
        hits: impl IntoIterator<Item = SearchHit>,
        limit: usize,
        total_estimate: u64,
    ) -> Self {
        let limit = limit.clamp(1, MAX_SEARCH_LIMIT);
        let mut hits: Vec<SearchHit> = hits.into_iter().take(limit + 1).collect();
        let next = if hits.len() > limit {
            hits.truncate(limit);
            hits.last().map(SearchHit::rank_key)
        } else {
            None
        };
        SearchResults {
            hits,
            total_estimate,
            next,
        }
    }
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
                national: None,
                suffix: None
            }
        );
        assert_eq!(
            Plan::of(&Query::Any("8122 6418".into())),
            Plan::Phone {
                e164: vec![],
                national: Some("81226418".into()),
                suffix: Some("81226418".into())
            }
        );
        assert_eq!(
            Plan::of(&Query::Phone {
                raw: "8122 6418".into(),
                region: Some(Region::parse("SG").unwrap())
            }),
            Plan::Phone {
                e164: vec!["+6581226418".into()],
                national: Some("81226418".into()),
                suffix: Some("81226418".into())
            }
        );
        assert_eq!(
            Plan::of(&Query::Any("6581226418".into())),
            Plan::Phone {
                e164: vec!["+6581226418".into()],
                national: Some("6581226418".into()),
                suffix: Some("6581226418".into())
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
    fn trailing_digits_plan_a_suffix_search() {
        let phone = |e164: Vec<&str>, national: Option<&str>, suffix: Option<&str>| Plan::Phone {
            e164: e164.into_iter().map(String::from).collect(),
            national: national.map(String::from),
            suffix: suffix.map(String::from),
        };
        // Four digits: a national number too short to be one, and a suffix.
        assert_eq!(
            Plan::of(&Query::Any("6418".into())),
            phone(vec![], Some("6418"), Some("6418"))
        );
        assert_eq!(
            Plan::of(&Query::Any("812 264".into())),
            phone(vec![], Some("812264"), Some("812264"))
        );
        // Leading zeros stay in the suffix (`0418` ends numbers), not in the
        // national number.
        assert_eq!(
            Plan::of(&Query::Any("0418".into())),
            phone(vec![], None, Some("0418"))
        );
        // `00` starts an international number, unless the digits are none.
        assert_eq!(
            Plan::of(&Query::Any("0000".into())),
            phone(vec![], None, Some("0000"))
        );
        assert_eq!(
            Plan::of(&Query::Any("0012".into())),
            phone(vec![], None, Some("0012"))
        );
        assert_eq!(
            Plan::of(&Query::Phone {
                raw: "6418".into(),
                region: None
            }),
            phone(vec![], Some("6418"), Some("6418"))
        );
        // With `+` (or `00`) the digits are a whole international number.
        assert_eq!(
            Plan::of(&Query::Any("+6581226418".into())),
            phone(vec!["+6581226418"], None, None)
        );
        assert_eq!(
            Plan::of(&Query::Any("0065 8122 6418".into())),
            phone(vec!["+6581226418"], None, None)
        );
        // Fewer than four digits are not a number at all.
        assert_eq!(
            Plan::of(&Query::Any("418".into())),
            Plan::Name(vec!["418".into()])
        );
        assert_eq!(
            Plan::of(&Query::Phone {
                raw: "418".into(),
                region: None
            }),
            Plan::Nothing
        );
        assert_eq!(reversed_digits("+6581226418"), "8146221856");
        assert!(ends_with_digits("+6581226418", "6418"));
        assert!(ends_with_digits("+6581226418", "6581226418"));
        assert!(!ends_with_digits("+6581226418", "+6418"));
        assert!(!ends_with_digits("+6581226419", "6418"));
        assert!(Match::National > Match::Suffix && Match::Suffix > Match::Inner);
        assert!(Match::Inner > Match::Typo && Match::Inner.score() > Match::Typo.score());
        assert!(Match::Inner.score() < Match::Suffix.score());
        assert!(has_inner_digits("+6581226418", "812264"));
        assert!(has_inner_digits("+6581226418", "8122641"));
        assert!(
            !has_inner_digits("+6581226418", "226418"),
            "an ending is a suffix match"
        );
        assert!(
            !has_inner_digits("+6581226418", "58122"),
            "too far from the end"
        );
        assert!(!has_inner_digits("+18", "12345"));
        let tails: Vec<String> = inner_tails().collect();
        assert_eq!(tails.len(), 110);
        assert_eq!(
            (tails[0].as_str(), tails[10].as_str(), tails[109].as_str()),
            ("0", "00", "99")
        );
        assert_eq!(inner_digits(Some("6418")), None);
        assert_eq!(inner_digits(Some("812264")), Some("812264"));
        assert_eq!(inner_digits(Some("81226418")), None);
        assert!(Match::Suffix.score() < Match::National.score());
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
