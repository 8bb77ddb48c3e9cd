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
        }
    }

    /// The store key: the pair.
    pub fn key(&self) -> String {
        format!("{}:{}", self.customer_ids[0], self.customer_ids[1])
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

    #[test]
    fn suggestions_order_their_pair() {
        let a = CustomerId::new();
        let b = CustomerId::new();
        let s1 = Suggestion::new(a, b, SuggestionReason::SimilarProfile, "", 0.5);
        let s2 = Suggestion::new(b, a, SuggestionReason::SimilarProfile, "", 0.5);
        assert_eq!(s1.key(), s2.key());
    }
}
