//! Identity linking: the records a merge leaves behind (enough to undo it),
//! the suggestions a safeguard or the duplicate finder makes instead, and the
//! policy that decides which identifiers may link customers at all.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::customer::{Customer, Identifier};
use crate::ids::{CustomerId, EngagementId};
use crate::time::{self, Timestamp};

pub use crate::ids::MergeId;

/// Who merged: a staff user, or the linker itself with the identifier that
/// joined the customers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MergeActor {
    User {
        user_id: String,
    },
    Auto {
        /// The identifier key that named two customers (`email:ann@example.com`).
        identifier: String,
    },
}

/// What a merged customer was before the merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedPart {
    /// The profile as it was (status, identifiers, name, counts).
    pub before: Customer,
    /// The identity keys it owned and that moved to the survivor.
    pub identities: Vec<String>,
    /// The engagements that moved to the survivor.
    pub engagements: Vec<EngagementId>,
}

/// A merge: enough to show it in a history and to undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    pub id: MergeId,
    pub survivor_id: CustomerId,
    /// The customers merged into the survivor.
    pub merged_ids: Vec<CustomerId>,
    pub by: MergeActor,
    #[serde(with = "time::rfc3339")]
    pub at: Timestamp,
    /// The survivor's profile before the merge.
    pub survivor_before: Customer,
    pub parts: Vec<MergedPart>,
    #[serde(default, with = "time::rfc3339_option")]
    pub undone_at: Option<Timestamp>,
    #[serde(default)]
    pub undone_by: Option<String>,
    /// Written by a repair, for a merge an older version left without a
    /// record (its parts list what the repair moved).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repaired: bool,
}

impl MergeRecord {
    /// Every customer the merge touched, survivor first.
    pub fn customer_ids(&self) -> Vec<CustomerId> {
        let mut ids = vec![self.survivor_id];
        ids.extend(self.merged_ids.iter().copied());
        ids
    }

    /// True when this undone merge protects the pair from being merged again
    /// automatically.
    pub fn protects(&self, a: CustomerId, b: CustomerId) -> bool {
        self.undone_at.is_some() && {
            let ids = self.customer_ids();
            ids.contains(&a) && ids.contains(&b) && a != b
        }
    }
}

/// Why two customers look like one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuggestionReason {
    /// Same (or one-typo) full name and a shared email domain or phone prefix.
    SimilarProfile,
    /// A merge would pass the cap on phones or emails per customer.
    IdentifierCap,
    /// The pair was un-merged, so the linker no longer merges it on its own.
    UndoneMerge,
}

/// A suggested duplicate that was not merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    /// The pair, smaller id first.
    pub customer_ids: [CustomerId; 2],
    pub reason: SuggestionReason,
    /// Human-readable detail (`same name; both at acme.com`).
    pub detail: String,
    /// 0..=1, higher is more likely the same person.
    pub score: f64,
    #[serde(with = "time::rfc3339")]
    pub at: Timestamp,
    /// When staff dismissed the pair ("not the same person"): it is kept,
    /// so that the pair is not suggested again, but no longer listed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::rfc3339_option"
    )]
    pub dismissed_at: Option<Timestamp>,
}

impl Suggestion {
    pub fn new(
        a: CustomerId,
        b: CustomerId,
        reason: SuggestionReason,
        detail: impl Into<String>,
        score: f64,
    ) -> Self {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        Suggestion {
            customer_ids: [x, y],
            reason,
            detail: detail.into(),
            score,
            at: time::now(),
            dismissed_at: None,
        }
    }

    /// The store key: the pair.
    pub fn key(&self) -> String {
        Self::pair_key(self.customer_ids[0], self.customer_ids[1])
    }

    /// The store key of a pair, in either order.
    pub fn pair_key(a: CustomerId, b: CustomerId) -> String {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        format!("{x}:{y}")
    }
}

/// An identity record: who owns the identifier, and whether it is shared
/// (then it links nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityInfo {
    pub owner: Option<CustomerId>,
    pub shared: bool,
}

/// Which identifiers may link customers, and how big a merged customer may get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPolicy {
    /// Numbers whose national significant number has fewer digits never link.
    pub min_phone_digits: usize,
    /// Email local parts that name a role, not a person (`info`, `noreply`).
    pub role_locals: BTreeSet<String>,
    /// Email domains that are placeholders (`example.com`).
    pub placeholder_domains: BTreeSet<String>,
    /// Identifier keys listed in configuration (`phone:+6561234567`, `email:...`).
    pub blocked: BTreeSet<String>,
    /// Most phones a customer may have after a merge.
    pub max_phones: usize,
    /// Most emails a customer may have after a merge.
    pub max_emails: usize,
}

pub const DEFAULT_ROLE_LOCALS: &[&str] = &[
    "test",
    "noreply",
    "no-reply",
    "donotreply",
    "do-not-reply",
    "info",
    "admin",
    "support",
    "sales",
    "contact",
    "office",
    "enquiries",
    "hello",
    "null",
    "none",
    "na",
];

/// None by default: `example.com` is what documentation and tests use, and
/// `test@example.com` is caught by its local part.
pub const DEFAULT_PLACEHOLDER_DOMAINS: &[&str] = &[];

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            min_phone_digits: 6,
            role_locals: DEFAULT_ROLE_LOCALS.iter().map(|s| s.to_string()).collect(),
            placeholder_domains: DEFAULT_PLACEHOLDER_DOMAINS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            blocked: BTreeSet::new(),
            max_phones: 10,
            max_emails: 10,
        }
    }
}

impl LinkPolicy {
    /// Why this identifier must never link two customers, if it must not.
    pub fn blocked_reason(&self, identifier: &Identifier) -> Option<&'static str> {
        if self.blocked.contains(&identifier.key()) {
            return Some("listed as blocked in configuration");
        }
        match identifier {
            Identifier::Phone(p) => {
                let national = p
                    .national_number()
                    .unwrap_or_else(|| p.digits().to_string());
                if national.len() < self.min_phone_digits {
                    return Some("too few digits to identify a person");
                }
                let mut chars = national.chars();
                if let Some(first) = chars.next() {
                    if chars.all(|c| c == first) {
                        return Some("all digits are the same");
                    }
                }
                None
            }
            Identifier::Email(e) => {
                let local = e.as_str().split('@').next().unwrap_or_default();
                if self.placeholder_domains.contains(e.domain()) {
                    return Some("a placeholder domain");
                }
                if self.role_locals.contains(local) {
                    return Some("a role address, not a person");
                }
                None
            }
            Identifier::Social { .. } | Identifier::Anonymous(_) => None,
        }
    }

    /// True when a customer with these identifiers stays within the caps.
    pub fn within_caps(&self, phones: usize, emails: usize) -> bool {
        phones <= self.max_phones && emails <= self.max_emails
    }
}

/// Mail providers whose domain says nothing about who someone works for.
pub const FREE_MAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "yahoo.com.sg",
    "yahoo.co.in",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "qq.com",
    "163.com",
    "126.com",
    "singnet.com.sg",
    "rediffmail.com",
    "gmx.com",
    "mail.com",
];

/// Digits a phone prefix leaves out: numbers that differ only in their last
/// four digits share a prefix (one company's extensions, one family's lines).
const PHONE_SUFFIX_DIGITS: usize = 4;

/// How alike two names are: `Some(true)` for the same words in any order,
/// `Some(false)` for the same words but one a typo away, `None` otherwise.
/// Names of one word never count (too many people share one).
pub fn names_alike(a: &str, b: &str) -> Option<bool> {
    let mut wa = crate::names::words(a);
    let mut wb = crate::names::words(b);
    if wa.len() < 2 || wa.len() != wb.len() {
        return None;
    }
    wa.sort();
    wb.sort();
    if wa == wb {
        return Some(true);
    }
    // One word differs by one typo; match the rest exactly.
    let mut rest_b = wb.clone();
    let mut unmatched = Vec::new();
    for w in &wa {
        match rest_b.iter().position(|x| x == w) {
            Some(i) => {
                rest_b.remove(i);
            }
            None => unmatched.push(w.clone()),
        }
    }
    match (unmatched.as_slice(), rest_b.as_slice()) {
        ([x], [y]) if crate::names::one_typo_apart(x, y) => Some(false),
        _ => None,
    }
}

/// Why two customers look like one person: the same (or a one-typo) full
/// name and a shared company email domain or phone prefix. A score in 0..1
/// and a human-readable reason, or `None`.
pub fn similar_profiles(a: &Customer, b: &Customer) -> Option<(f64, String)> {
    let (Some(na), Some(nb)) = (a.name.as_deref(), b.name.as_deref()) else {
        return None;
    };
    let exact = names_alike(na, nb)?;
    let mut score: f64 = if exact { 0.6 } else { 0.45 };
    let mut why = vec![if exact {
        "same name".to_string()
    } else {
        "names one typo apart".to_string()
    }];
    let domains = |c: &Customer| -> BTreeSet<String> {
        c.emails
            .iter()
            .map(|e| e.domain().to_string())
            .filter(|d| !FREE_MAIL_DOMAINS.contains(&d.as_str()))
            .collect()
    };
    let shared_domain = domains(a).intersection(&domains(b)).next().cloned();
    let prefixes = |c: &Customer| -> BTreeSet<String> {
        c.phones
            .iter()
            .filter_map(|p| {
                let s = p.as_str();
                (s.len() > PHONE_SUFFIX_DIGITS + 4)
                    .then(|| s[..s.len() - PHONE_SUFFIX_DIGITS].to_string())
            })
            .collect()
    };
    let shared_prefix = prefixes(a).intersection(&prefixes(b)).next().cloned();
    if shared_domain.is_none() && shared_prefix.is_none() {
        return None;
    }
    if let Some(d) = shared_domain {
        score += 0.2;
        why.push(format!("both at {d}"));
    }
    if let Some(p) = shared_prefix {
        score += 0.15;
        why.push(format!("phones both start {p}"));
    }
    Some((score.min(0.95), why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::Email;
    use crate::phone::{PhoneNumber, Region};

    fn phone(raw: &str) -> Identifier {
        Identifier::Phone(PhoneNumber::parse(raw, Some(Region::parse("SG").unwrap())).unwrap())
    }

    fn email(raw: &str) -> Identifier {
        Identifier::Email(Email::parse(raw).unwrap())
    }

    #[test]
    fn blocks_placeholders_roles_and_listed_values() {
        let mut policy = LinkPolicy::default();
        assert_eq!(policy.blocked_reason(&phone("+6581226418")), None);
        assert_eq!(policy.blocked_reason(&email("ann@acme.com")), None);
        assert!(policy.blocked_reason(&email("test@example.com")).is_some());
        assert_eq!(policy.blocked_reason(&email("ann@example.com")), None);
        policy.placeholder_domains.insert("example.com".into());
        assert!(policy.blocked_reason(&email("ann@example.com")).is_some());
        assert!(policy.blocked_reason(&email("info@acme.com")).is_some());
        assert!(policy.blocked_reason(&phone("+6588888888")).is_some());
        policy.blocked.insert("phone:+6581226418".into());
        assert!(policy.blocked_reason(&phone("8122 6418")).is_some());
    }

    #[test]
    fn short_numbers_are_blocked() {
        let policy = LinkPolicy::default();
        // A number the metadata does not know falls back to its digits.
        let short = Identifier::Phone(PhoneNumber::from_e164_unchecked("+6512345".into()));
        assert!(policy.blocked_reason(&short).is_some());
    }

    fn person(name: &str, emails: &[&str], phones: &[&str]) -> Customer {
        let mut c = Customer::new(CustomerId::new(), Some(name.into()), time::now());
        c.emails = emails.iter().map(|e| Email::parse(e).unwrap()).collect();
        c.phones = phones
            .iter()
            .map(|p| PhoneNumber::parse(p, None).unwrap())
            .collect();
        c
    }

    #[test]
    fn similar_profiles_need_a_name_and_a_shared_domain_or_prefix() {
        let a = person("Tan Wei Ming", &["weiming@acme.com"], &[]);
        let b = person("Wei Ming Tan", &["wm@acme.com"], &[]);
        let (score, why) = similar_profiles(&a, &b).unwrap();
        assert!(score > 0.7, "{score}");
        assert!(why.contains("acme.com"), "{why}");
        let typo = person("Tan Wei Mingg", &["x@acme.com"], &[]);
        let (typo_score, _) = similar_profiles(&a, &typo).unwrap();
        assert!(typo_score < score);
        // Free mail says nothing; a phone prefix does.
        let g1 = person("Ann Lee", &["ann@gmail.com"], &["+6581226418"]);
        let g2 = person("Ann Lee", &["ann.lee@gmail.com"], &["+6591234567"]);
        assert_eq!(similar_profiles(&g1, &g2), None);
        let g3 = person("Ann Lee", &["lee.ann@gmail.com"], &["+6581220000"]);
        assert!(similar_profiles(&g1, &g3).unwrap().1.contains("+658122"));
        // Other names, or one-word names, never.
        let other = person("Tan Wei Jie", &["wj@acme.com"], &[]);
        assert_eq!(similar_profiles(&a, &other), None);
        let mono = person("Ann", &["a@acme.com"], &[]);
        let mono2 = person("Ann", &["b@acme.com"], &[]);
        assert_eq!(similar_profiles(&mono, &mono2), None);
    }

    #[test]
    fn suggestions_order_their_pair() {
        let a = CustomerId::new();
        let b = CustomerId::new();
        let s1 = Suggestion::new(a, b, SuggestionReason::SimilarProfile, "", 0.5);
        let s2 = Suggestion::new(b, a, SuggestionReason::SimilarProfile, "", 0.5);
        assert_eq!(s1.key(), s2.key());
    }
}
