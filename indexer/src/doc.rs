//! What gets indexed for a customer, and the caller-ID summary it answers with.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crm_models::names;
use crm_models::time::{self, Timestamp};
use crm_models::{
    Channel, ChannelCounts, Customer, CustomerId, CustomerStatus, Direction, Email, Engagement,
    EngagementId, Identifier, PhoneNumber,
};

use crate::SUMMARY_ENGAGEMENTS;

/// Most name tokens indexed per customer (a long CJK name has many).
const MAX_NAME_TOKENS: usize = 64;

/// Bumped when what is indexed for the same document changes (the tokenizer,
/// the summary, the layout of the keys), so that verify reports every
/// customer as stale.
pub(crate) const FINGERPRINT_VERSION: &str = "index-v5";

/// A customer as the index sees it: the profile and its latest engagements.
/// Built by the caller from the store; the index never reads the store.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedCustomer {
    pub customer: Customer,
    /// The latest engagements; any order, only the newest
    /// [`SUMMARY_ENGAGEMENTS`] are kept.
    pub last_engagements: Vec<Engagement>,
}

/// One engagement as the caller-ID popup shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EngagementBrief {
    pub id: EngagementId,
    pub channel: Channel,
    /// Absent for web page views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(with = "time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    /// At most 80 characters: SMS body, email subject, call status, page.
    pub preview: String,
}

/// The caller-ID summary: who the customer is and what happened lately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerSummary {
    pub id: CustomerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: CustomerStatus,
    /// The main phone number (the first on the profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<PhoneNumber>,
    /// The main email (the first on the profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    pub phones: Vec<PhoneNumber>,
    pub emails: Vec<Email>,
    pub counts: ChannelCounts,
    #[serde(default, with = "time::rfc3339_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_engagement_at: Option<Timestamp>,
    /// Newest first, at most [`SUMMARY_ENGAGEMENTS`].
    pub last_engagements: Vec<EngagementBrief>,
}

/// A caller-ID summary as the index keeps it: the JSON of a
/// [`CustomerSummary`]. The caller-ID routes answer with it as it is, reading
/// only the fields they reshape ([`SummaryJson::view`]), instead of decoding
/// every engagement and encoding it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryJson {
    pub id: CustomerId,
    pub json: String,
}

impl SummaryJson {
    pub fn of(summary: &CustomerSummary) -> Result<Self, serde_json::Error> {
        Ok(SummaryJson {
            id: summary.id,
            json: serde_json::to_string(summary)?,
        })
    }

    /// The fields `T` names, borrowing from the JSON (`&RawValue` fields copy
    /// nothing). Fails when the JSON is not well formed.
    pub fn view<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    /// The whole summary, decoded.
    pub fn decode(&self) -> Result<CustomerSummary, serde_json::Error> {
        self.view()
    }

    /// The `name` field as written (a JSON string), `None` when absent.
    /// The summary JSON starts `{"id":"<id>","name":` or, without a name,
    /// `{"id":"<id>","status":`: only the name is read then, not the ten
    /// engagements after it. JSON of another shape is read whole.
    pub fn name(&self) -> Result<Option<&RawValue>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Name<'a> {
            #[serde(default, borrow)]
            name: Option<&'a RawValue>,
        }
        let after_id = self
            .json
            .strip_prefix(r#"{"id":""#)
            .and_then(|rest| Some(&rest[rest.find('"')? + 1..]))
            .filter(|_| self.json.ends_with('}'));
        if let Some(rest) = after_id {
            if let Some(value) = rest.strip_prefix(r#","name":"#) {
                let mut de = serde_json::Deserializer::from_str(value);
                return Option::<&RawValue>::deserialize(&mut de);
            }
            if rest.starts_with(r#","status":"#) {
                return Ok(None);
            }
        }
        Ok(self.view::<Name>()?.name)
    }
}

/// The keys a customer is indexed under. Kept with the summary so that a
/// re-upsert removes what the customer no longer has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexEntries {
    /// Name tokens.
    pub tokens: Vec<String>,
    /// The name's words ([`names::words`]): a whole-name match is one that
    /// names every word.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// E.164 numbers.
    pub phones: Vec<String>,
    /// National significant numbers of those phones.
    pub national: Vec<String>,
    /// Normalised emails.
    pub emails: Vec<String>,
}

impl IndexedCustomer {
    pub fn new(customer: Customer, last_engagements: Vec<Engagement>) -> Self {
        IndexedCustomer {
            customer,
            last_engagements,
        }
    }

    pub fn id(&self) -> CustomerId {
        self.customer.id
    }

    /// False for merged customers, which the index drops.
    pub fn is_searchable(&self) -> bool {
        self.customer.status != CustomerStatus::Merged
    }

    pub fn summary(&self) -> CustomerSummary {
        let c = &self.customer;
        let mut recent: Vec<&Engagement> = self.last_engagements.iter().collect();
        recent.sort_by_key(|e| std::cmp::Reverse((e.occurred_at, e.id)));
        recent.dedup_by_key(|e| e.id);
        recent.truncate(SUMMARY_ENGAGEMENTS);
        let newest = recent.first().map(|e| e.occurred_at);
        CustomerSummary {
            id: c.id,
            name: c.name.clone(),
            status: c.status,
            phone: c.phones.first().cloned(),
            email: c.emails.first().cloned(),
            phones: c.phones.clone(),
            emails: c.emails.clone(),
            counts: c.counts,
            last_engagement_at: match (c.last_engagement_at, newest) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            last_engagements: recent
                .into_iter()
                .map(|e| EngagementBrief {
                    id: e.id,
                    channel: e.channel(),
                    direction: e.detail.direction(),
                    occurred_at: e.occurred_at,
                    preview: e.detail.preview(),
                })
                .collect(),
        }
    }

    /// A short hash of what the index holds for this document. Verify
    /// compares it with [`SearchIndex::fingerprints`](crate::SearchIndex::fingerprints).
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.summary())
    }

    pub(crate) fn entries(&self) -> IndexEntries {
        let c = &self.customer;
        entries_of(c.name.as_deref(), &c.phones, &c.emails)
    }
}

impl CustomerSummary {
    /// What the customer it sums up is indexed under: the same as
    /// [`IndexedCustomer::entries`] of the document it was made from.
    pub(crate) fn entries(&self) -> IndexEntries {
        entries_of(self.name.as_deref(), &self.phones, &self.emails)
    }
}

fn entries_of(name: Option<&str>, phones: &[PhoneNumber], emails: &[Email]) -> IndexEntries {
    let mut tokens = name.map(names::tokenize).unwrap_or_default();
    tokens.truncate(MAX_NAME_TOKENS);
    let mut words = name.map(names::words).unwrap_or_default();
    words.truncate(MAX_NAME_TOKENS);
    IndexEntries {
        tokens,
        words,
        phones: phones.iter().map(|p| p.as_str().to_string()).collect(),
        national: national_numbers(phones),
        emails: emails.iter().map(|e| e.as_str().to_string()).collect(),
    }
}

pub(crate) fn fingerprint_of(summary: &CustomerSummary) -> String {
    // Serialising these plain structs cannot fail; an empty body would still
    // give a stable (if useless) fingerprint.
    fingerprint_of_json(&serde_json::to_vec(summary).unwrap_or_default())
}

/// [`fingerprint_of`] the summary serialised as `json` (by `serde_json`).
pub(crate) fn fingerprint_of_json(json: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(FINGERPRINT_VERSION.as_bytes());
    hasher.update(b"\n");
    hasher.update(json);
    hex::encode(&hasher.finalize()[..16])
}

fn national_numbers(phones: &[PhoneNumber]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in phones.iter().filter_map(PhoneNumber::national_number) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

impl IndexEntries {
    /// What identifier keys (`phone:+65...`, `email:...`) say a customer is
    /// indexed under; name tokens are not identifiers.
    pub fn from_identifier_keys(keys: &[String]) -> Self {
        let mut phones = Vec::new();
        let mut emails = Vec::new();
        for key in keys {
            match Identifier::from_key(key) {
                Some(Identifier::Phone(p)) => phones.push(p),
                Some(Identifier::Email(e)) => emails.push(e.as_str().to_string()),
                _ => {}
            }
        }
        IndexEntries {
            tokens: Vec::new(),
            words: Vec::new(),
            national: national_numbers(&phones),
            phones: phones.iter().map(|p| p.as_str().to_string()).collect(),
            emails,
        }
    }

    /// Everything in `self` or `other`, each once.
    pub fn union(mut self, other: &IndexEntries) -> Self {
        fn add(into: &mut Vec<String>, from: &[String]) {
            for v in from {
                if !into.contains(v) {
                    into.push(v.clone());
                }
            }
        }
        add(&mut self.tokens, &other.tokens);
        add(&mut self.phones, &other.phones);
        add(&mut self.national, &other.national);
        add(&mut self.emails, &other.emails);
        self
    }

    /// What is in `self` but not in `newer`: the keys to remove.
    pub fn minus(&self, newer: &IndexEntries) -> IndexEntries {
        fn diff(a: &[String], b: &[String]) -> Vec<String> {
            a.iter().filter(|v| !b.contains(v)).cloned().collect()
        }
        IndexEntries {
            tokens: diff(&self.tokens, &newer.tokens),
            words: Vec::new(),
            phones: diff(&self.phones, &newer.phones),
            national: diff(&self.national, &newer.national),
            emails: diff(&self.emails, &newer.emails),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_models::{EngagementDetail, Source};

    #[test]
    fn the_name_is_read_as_the_whole_json_would_give_it() {
        #[derive(Deserialize)]
        struct Name<'a> {
            #[serde(borrow)]
            name: Option<&'a RawValue>,
        }
        let mut c = Customer::new(CustomerId::new(), None, time::now());
        let last = vec![sms(c.id, "2026-01-01T00:00:00Z", r#"{"name":"not me"}"#)];
        for name in [None, Some("Ann Tan"), Some("Zoë \"Q\" 陈\\"), Some("")] {
            c.name = name.map(str::to_string);
            let summary =
                SummaryJson::of(&IndexedCustomer::new(c.clone(), last.clone()).summary()).unwrap();
            let fast = summary.name().unwrap().map(RawValue::get);
            let whole = summary.view::<Name>().unwrap().name.map(RawValue::get);
            assert_eq!(fast, whole, "{name:?}");
            let read: Option<String> = fast.map(|raw| serde_json::from_str(raw).unwrap());
            assert_eq!(read.as_deref(), name);
        }
        // Another field order is read whole; broken JSON fails.
        let other = |json: &str| SummaryJson {
            id: c.id,
            json: json.into(),
        };
        let reordered = other(r#"{"status":"active","name":"Bo","id":"x"}"#);
        assert_eq!(
            reordered.name().unwrap().map(RawValue::get),
            Some(r#""Bo""#)
        );
        assert!(other(r#"{"id":"x","name":"Bo"#).name().is_err());
        assert!(other(r#"{"id":"x","name":Bo}"#).name().is_err());
    }

    fn sms(customer: CustomerId, at: &str, body: &str) -> Engagement {
        Engagement {
            id: EngagementId::new(),
            customer_id: customer,
            occurred_at: time::parse(at).unwrap(),
            recorded_at: time::parse(at).unwrap(),
            source: Source::default(),
            detail: EngagementDetail::Sms {
                direction: Direction::Inbound,
                body: body.into(),
            },
        }
    }

    #[test]
    fn summary_keeps_the_newest_ten_newest_first() {
        let mut c = Customer::new(CustomerId::new(), Some("Ann Tan".into()), time::now());
        c.phones
            .push(PhoneNumber::parse("+6581226418", None).unwrap());
        let engagements: Vec<Engagement> = (0..12)
            .map(|i| sms(c.id, &format!("2026-01-01T00:00:{i:02}Z"), &format!("m{i}")))
            .collect();
        let s = IndexedCustomer::new(c, engagements).summary();
        assert_eq!(s.last_engagements.len(), SUMMARY_ENGAGEMENTS);
        assert_eq!(s.last_engagements[0].preview, "m11");
        assert_eq!(s.last_engagements[9].preview, "m2");
        assert_eq!(
            s.last_engagement_at,
            Some(time::parse("2026-01-01T00:00:11Z").unwrap())
        );
        assert_eq!(s.phone.unwrap().as_str(), "+6581226418");
    }

    #[test]
    fn summary_json_decodes_to_the_summary_and_orders_like_the_decoded_ones() {
        let summaries: Vec<CustomerSummary> = (0..6)
            .map(|i| {
                let mut c = Customer::new(CustomerId::new(), Some(format!("C{i}")), time::now());
                c.phones
                    .push(PhoneNumber::parse("+6581226418", None).unwrap());
                // Two never engaged; the others at different times.
                let engagements = match i % 3 {
                    0 => vec![],
                    n => vec![sms(c.id, &format!("2026-01-0{}T00:00:00Z", n + i), "hi")],
                };
                IndexedCustomer::new(c, engagements).summary()
            })
            .collect();
        let json: Vec<SummaryJson> = summaries
            .iter()
            .map(|s| SummaryJson::of(s).unwrap())
            .collect();
        for (j, s) in json.iter().zip(&summaries) {
            assert_eq!(&j.decode().unwrap(), s);
        }
    }

    #[test]
    fn fingerprint_follows_the_summary() {
        let c = Customer::new(CustomerId::new(), Some("Ann".into()), time::now());
        let a = IndexedCustomer::new(c.clone(), vec![]);
        let mut renamed = c;
        renamed.name = Some("Anne".into());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(
            a.fingerprint(),
            IndexedCustomer::new(renamed, vec![]).fingerprint()
        );
    }

    #[test]
    fn entries_diff() {
        let old = IndexEntries {
            tokens: vec!["ann".into(), "tan".into()],
            phones: vec!["+6581226418".into()],
            national: vec!["81226418".into()],
            emails: vec![],
            ..IndexEntries::default()
        };
        let new = IndexEntries {
            tokens: vec!["ann".into(), "lee".into()],
            ..IndexEntries::default()
        };
        let gone = old.minus(&new);
        assert_eq!(gone.tokens, vec!["tan"]);
        assert_eq!(gone.phones, vec!["+6581226418"]);
        let keys = IndexEntries::from_identifier_keys(&[
            "phone:+6581226418".into(),
            "email:ann@example.com".into(),
            "facebook:1".into(),
        ]);
        assert_eq!(keys.national, vec!["81226418"]);
        assert_eq!(keys.emails, vec!["ann@example.com"]);
    }
}
