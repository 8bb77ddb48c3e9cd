//! Sales analytics: what the staff did, counted per agent, per channel and
//! per day in the deployment's time zone (`CRM_TIMEZONE`, an IANA name;
//! UTC by default).
//!
//! # What is counted
//! Each engagement counts for its **agent**: the user or API key that
//! posted it (`source.user_id`, `user:<id>` or `key:<id>`), else the owner
//! of the device that uploaded it (`user:<owner>`). Its **day** is the
//! calendar day of its `occurred_at` in the zone. The figures ([`Metric`]):
//! calls inbound and outbound, answered (either direction), missed (inbound
//! calls not answered: missed, rejected or voicemail), talk seconds (of
//! answered calls); SMS, WhatsApp and email in and out; web page views
//! (per day, no agent: a visitor's own doing); new customers (per day, no
//! agent: `customer.created`); the distinct customers an agent engaged
//! with on a day (on the agent's row without a channel); and first
//! responses: an outbound engagement answering a customer who has been
//! waiting since an inbound one (the earliest since the last outbound, by
//! anyone) counts for its agent, with its time in a histogram of buckets
//! (30 s, 1, 2, 5, 10, 15, 30 min, 1, 2, 4, 8 h, 1 day, 1 week, more), from
//! which the median and 90th percentile of any set of rows are read (as the
//! upper bound of the bucket they fall in).
//!
//! # How it stays exact
//! Daily rollups live in the store (see
//! [`AnalyticsStore`](crate::store::AnalyticsStore)). A consumer
//! ([`Consumer`]) reads the store's event log in feed order from its own
//! cursor, folds a page of events into increments ([`AnalyticsBatch`]), and
//! the store adds them **and** moves the cursor in one transaction, only
//! when the cursor is still where the consumer read it. So an event is
//! counted exactly once: a page read twice (a crash before the commit, two
//! instances) commits once, and a crash after the commit resumes after it.
//! Distinct customers are kept as `(day, agent, customer)` markers in the
//! same transaction, so one customer counts once per agent and day.
//!
//! # Merges, undo and erasure
//! Counts are about work done, not about customer identity: a merge or an
//! undo moves nothing already counted (the engagement counts for the
//! customer it was recorded on, the envelope's `customer_id`). An erased
//! customer's engagements **stay in the counts**: the rollups carry no
//! personal data (numbers per agent, channel and day), and a wall board
//! whose yesterday shrinks when a customer exercises their right to be
//! forgotten would be wrong about the work the staff did. What does name
//! the customer, the distinct-customer markers, is deleted with the
//! `customer.erased` event. An engagement erased before the consumer read
//! it is not counted (nothing is left to read). A rebuild from the store
//! counts only the engagements the store still has.
//!
//! Nothing here holds a name, a number, an address or a message body.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone};
use serde::{Deserialize, Serialize};

use crate::engagement::{CallStatus, Channel, Direction, Engagement, EngagementDetail};
use crate::event::{DomainEvent, EventEnvelope, EventFilter};
use crate::ids::{CustomerId, DeviceId, UserId};
use crate::store::{Store, StoreResult};
use crate::time::Timestamp;

/// The deployment's time zone: where a day starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(chrono_tz::Tz);

impl Default for Zone {
    fn default() -> Self {
        Zone(chrono_tz::Tz::UTC)
    }
}

impl FromStr for Zone {
    type Err = String;

    /// An IANA zone name (`Asia/Singapore`, `Europe/Berlin`, `UTC`).
    fn from_str(raw: &str) -> Result<Self, String> {
        raw.trim()
            .parse::<chrono_tz::Tz>()
            .map(Zone)
            .map_err(|_| format!("{raw:?} is not an IANA time zone (e.g. Asia/Singapore, UTC)"))
    }
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name())
    }
}

impl Zone {
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The calendar day `t` falls on in this zone.
    pub fn day_of(&self, t: &Timestamp) -> NaiveDate {
        t.with_timezone(&self.0).date_naive()
    }

    /// The day and the hour of the day (0 to 23) `t` falls on in this zone.
    pub fn day_and_hour(&self, t: &Timestamp) -> (NaiveDate, u8) {
        use chrono::Timelike;
        let local = t.with_timezone(&self.0);
        (local.date_naive(), local.hour() as u8)
    }

    /// The first instant of `day` in this zone (a day whose midnight a
    /// clock change skips starts at the first local time that exists).
    pub fn start_of(&self, day: NaiveDate) -> Timestamp {
        let mut local = day.and_time(NaiveTime::MIN);
        for _ in 0..=24 * 4 {
            if let Some(t) = self.0.from_local_datetime(&local).earliest() {
                return t.with_timezone(&chrono::Utc);
            }
            local += Duration::minutes(15);
        }
        // No zone skips a whole day's quarter hours; fall back to UTC midnight.
        day.and_time(NaiveTime::MIN).and_utc()
    }
}

macro_rules! metrics {
    ($($(#[$doc:meta])* $variant:ident => $field:ident, $agent:expr;)+) => {
        /// What a day's row holds, per agent and channel. Zero fields are
        /// left out of the stored form.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counts {
            $(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "is_zero")]
                pub $field: u64,
            )+
        }

        /// A figure the API reports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Metric {
            $($(#[$doc])* $variant,)+
            /// Calls, SMS, WhatsApp and emails, both ways.
            Engagements,
            /// The median first-response time, seconds (the upper bound of
            /// its bucket; lower is better).
            FirstResponseMedian,
            /// The 90th percentile of first-response times, seconds.
            FirstResponseP90,
        }

        impl Metric {
            /// Every metric, in the order the API lists them.
            pub const ALL: &'static [Metric] = &[
                $(Metric::$variant,)+
                Metric::Engagements,
                Metric::FirstResponseMedian,
                Metric::FirstResponseP90,
            ];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Metric::$variant => stringify!($field),)+
                    Metric::Engagements => "engagements",
                    Metric::FirstResponseMedian => "first_response_median",
                    Metric::FirstResponseP90 => "first_response_p90",
                }
            }

            /// Whether the figure belongs to an agent (web views and new
            /// customers belong to nobody).
            pub fn per_agent(self) -> bool {
                match self {
                    $(Metric::$variant => $agent,)+
                    Metric::Engagements
                    | Metric::FirstResponseMedian
                    | Metric::FirstResponseP90 => true,
                }
            }

            /// The figure in `c`.
            pub fn of(self, c: &Counts) -> u64 {
                match self {
                    $(Metric::$variant => c.$field,)+
                    Metric::Engagements => {
                        c.calls_inbound + c.calls_outbound + c.sms_inbound + c.sms_outbound
                            + c.whatsapp_inbound + c.whatsapp_outbound
                            + c.email_inbound + c.email_outbound
                    }
                    Metric::FirstResponseMedian => c.response_percentile(50),
                    Metric::FirstResponseP90 => c.response_percentile(90),
                }
            }

            /// Whether the figure is not a sum of the stored fields (it is
            /// read from several; export leaves it out).
            pub fn derived(self) -> bool {
                matches!(
                    self,
                    Metric::Engagements | Metric::FirstResponseMedian | Metric::FirstResponseP90
                )
            }

            /// Whether a lower figure ranks higher (response times), and an
            /// agent with none is not ranked.
            pub fn lower_is_better(self) -> bool {
                matches!(self, Metric::FirstResponseMedian | Metric::FirstResponseP90)
            }
        }

        impl Counts {
            /// Adds `other` field by field.
            pub fn add(&mut self, other: &Counts) {
                $(self.$field += other.$field;)+
            }

            /// The stored fields that are not zero, by name.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                let mut out = Vec::new();
                $(if self.$field != 0 { out.push((stringify!($field), self.$field)); })+
                out
            }

            /// Sets a stored field by name; false when there is no such field.
            pub fn set(&mut self, name: &str, value: u64) -> bool {
                match name {
                    $(stringify!($field) => { self.$field = value; true })+
                    _ => false,
                }
            }
        }
    };
}

metrics! {
    CallsInbound => calls_inbound, true;
    CallsOutbound => calls_outbound, true;
    /// Calls answered, either direction.
    CallsAnswered => calls_answered, true;
    /// Inbound calls not answered (missed, rejected, voicemail).
    CallsMissed => calls_missed, true;
    /// Seconds of answered calls.
    TalkSeconds => talk_seconds, true;
    SmsInbound => sms_inbound, true;
    SmsOutbound => sms_outbound, true;
    WhatsappInbound => whatsapp_inbound, true;
    WhatsappOutbound => whatsapp_outbound, true;
    EmailInbound => email_inbound, true;
    EmailOutbound => email_outbound, true;
    /// Web page views (no agent).
    WebViews => web_views, false;
    /// Customers created (no agent).
    NewCustomers => new_customers, false;
    /// Distinct customers an agent engaged with that day.
    CustomersEngaged => customers_engaged, true;
    /// Outbound engagements that answered a customer waiting since an
    /// inbound one (see [`first_response`]).
    FirstResponses => first_responses, true;
    /// Their response times, in seconds, summed.
    FirstResponseSeconds => first_response_seconds, true;
    /// First responses within 30 seconds (the histogram the median and the
    /// 90th percentile are read from; each bucket counts the responses
    /// longer than the one before and at most its own bound).
    FirstResponseLe30s => first_response_le_30s, true;
    FirstResponseLe1m => first_response_le_1m, true;
    FirstResponseLe2m => first_response_le_2m, true;
    FirstResponseLe5m => first_response_le_5m, true;
    FirstResponseLe10m => first_response_le_10m, true;
    FirstResponseLe15m => first_response_le_15m, true;
    FirstResponseLe30m => first_response_le_30m, true;
    FirstResponseLe1h => first_response_le_1h, true;
    FirstResponseLe2h => first_response_le_2h, true;
    FirstResponseLe4h => first_response_le_4h, true;
    FirstResponseLe8h => first_response_le_8h, true;
    FirstResponseLe1d => first_response_le_1d, true;
    FirstResponseLe7d => first_response_le_7d, true;
    /// Slower than a week.
    FirstResponseGt7d => first_response_gt_7d, true;
}

/// The upper bounds (seconds) of the first-response buckets, in the order
/// of [`Counts::response_buckets`]; the last bucket has none.
pub const RESPONSE_BOUNDS: [u64; 13] = [
    30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400, 604_800,
];

impl Counts {
    fn response_buckets(&self) -> [u64; 14] {
        [
            self.first_response_le_30s,
            self.first_response_le_1m,
            self.first_response_le_2m,
            self.first_response_le_5m,
            self.first_response_le_10m,
            self.first_response_le_15m,
            self.first_response_le_30m,
            self.first_response_le_1h,
            self.first_response_le_2h,
            self.first_response_le_4h,
            self.first_response_le_8h,
            self.first_response_le_1d,
            self.first_response_le_7d,
            self.first_response_gt_7d,
        ]
    }

    /// Records one first response of `seconds`.
    pub fn add_response(&mut self, seconds: u64) {
        self.first_responses += 1;
        self.first_response_seconds += seconds;
        let bucket = RESPONSE_BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(RESPONSE_BOUNDS.len());
        let field = match bucket {
            0 => &mut self.first_response_le_30s,
            1 => &mut self.first_response_le_1m,
            2 => &mut self.first_response_le_2m,
            3 => &mut self.first_response_le_5m,
            4 => &mut self.first_response_le_10m,
            5 => &mut self.first_response_le_15m,
            6 => &mut self.first_response_le_30m,
            7 => &mut self.first_response_le_1h,
            8 => &mut self.first_response_le_2h,
            9 => &mut self.first_response_le_4h,
            10 => &mut self.first_response_le_8h,
            11 => &mut self.first_response_le_1d,
            12 => &mut self.first_response_le_7d,
            _ => &mut self.first_response_gt_7d,
        };
        *field += 1;
    }

    /// The `percent` percentile of the first responses, as the upper bound
    /// of the bucket it falls in (a week and more: the last bound); 0 when
    /// there is none.
    pub fn response_percentile(&self, percent: u64) -> u64 {
        let buckets = self.response_buckets();
        let total: u64 = buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        // The rank of the percentile, 1-based: ceil(total * percent / 100).
        let rank = (total * percent).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, n) in buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return RESPONSE_BOUNDS
                    .get(i)
                    .copied()
                    .unwrap_or(RESPONSE_BOUNDS[RESPONSE_BOUNDS.len() - 1]);
            }
        }
        RESPONSE_BOUNDS[RESPONSE_BOUNDS.len() - 1]
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

impl FromStr for Metric {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.as_str() == s)
            .ok_or(())
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a row's counts belong: a day, an agent (none for web views and new
/// customers) and a channel (none for the per-day figures of an agent:
/// distinct customers; and for new customers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub day: NaiveDate,
    /// `user:<id>` or `key:<id>`.
    pub agent: Option<String>,
    pub channel: Option<Channel>,
}

/// Where a channel sorts: in [`Channel::ALL`]'s order, none last.
fn channel_rank(channel: Option<Channel>) -> usize {
    channel
        .and_then(|c| Channel::ALL.iter().position(|x| *x == c))
        .unwrap_or(Channel::ALL.len())
}

/// Day, then agent (none first), then channel (none last).
impl Ord for RowKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.day, &self.agent, channel_rank(self.channel)).cmp(&(
            other.day,
            &other.agent,
            channel_rank(other.channel),
        ))
    }
}

impl PartialOrd for RowKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One day's counts of one agent on one channel: increments on their way
/// to the store, or a stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyRow {
    pub key: RowKey,
    pub counts: Counts,
}

/// "This agent engaged with this customer on this day": counted once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Engaged {
    pub day: NaiveDate,
    pub agent: String,
    pub customer: CustomerId,
}

/// Where an hour's totals belong: a day, an hour of it (0 to 23, local) and a
/// channel (none for new customers); no agent. What "today against
/// yesterday at the same hour" reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HourKey {
    pub day: NaiveDate,
    pub hour: u8,
    pub channel: Option<Channel>,
}

impl HourKey {
    fn rank(&self) -> (NaiveDate, u8, usize) {
        (self.day, self.hour, channel_rank(self.channel))
    }
}

impl Ord for HourKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for HourKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One hour's totals of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourRow {
    pub key: HourKey,
    pub counts: Counts,
}

/// What one engagement adds to its rows.
fn increment(detail: &EngagementDetail) -> Counts {
    let mut c = Counts::default();
    let inbound = detail.direction() == Some(Direction::Inbound);
    match detail {
        EngagementDetail::Web { .. } => c.web_views = 1,
        EngagementDetail::Call {
            duration_s, status, ..
        } => {
            if inbound {
                c.calls_inbound = 1;
            } else {
                c.calls_outbound = 1;
            }
            if *status == CallStatus::Answered {
                c.calls_answered = 1;
                c.talk_seconds = u64::from(*duration_s);
            } else if inbound {
                c.calls_missed = 1;
            }
        }
        EngagementDetail::Sms { .. } if inbound => c.sms_inbound = 1,
        EngagementDetail::Sms { .. } => c.sms_outbound = 1,
        EngagementDetail::Whatsapp { .. } if inbound => c.whatsapp_inbound = 1,
        EngagementDetail::Whatsapp { .. } => c.whatsapp_outbound = 1,
        EngagementDetail::Email { .. } if inbound => c.email_inbound = 1,
        EngagementDetail::Email { .. } => c.email_outbound = 1,
    }
    c
}

/// What a page of events adds, applied in one transaction with the
/// consumer's cursor (see [`AnalyticsStore::apply_analytics`](crate::store::AnalyticsStore::apply_analytics)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnalyticsBatch {
    /// Increments, one per key.
    pub rows: Vec<DailyRow>,
    /// Increments of the hourly totals, one per key.
    pub hours: Vec<HourRow>,
    /// Markers to add; each one new adds one to `customers_engaged` of its
    /// `(day, agent, no channel)` row.
    pub engaged: Vec<Engaged>,
    /// Customers erased: their markers go.
    pub forget: Vec<CustomerId>,
}

impl AnalyticsBatch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.hours.is_empty()
            && self.engaged.is_empty()
            && self.forget.is_empty()
    }
}

/// Folds engagements and events into increments.
#[derive(Debug, Default)]
pub struct Tally {
    zone: Zone,
    rows: BTreeMap<RowKey, Counts>,
    hours: BTreeMap<HourKey, Counts>,
    engaged: BTreeSet<Engaged>,
    forget: BTreeSet<CustomerId>,
}

impl Tally {
    pub fn new(zone: Zone) -> Self {
        Tally {
            zone,
            ..Default::default()
        }
    }

    fn row(
        &mut self,
        day: NaiveDate,
        agent: Option<&str>,
        channel: Option<Channel>,
    ) -> &mut Counts {
        self.rows
            .entry(RowKey {
                day,
                agent: agent.map(str::to_string),
                channel,
            })
            .or_default()
    }

    /// Counts one engagement for `agent`, as recorded on `customer`.
    pub fn engagement(&mut self, e: &Engagement, customer: CustomerId, agent: Option<&str>) {
        let (day, hour) = self.zone.day_and_hour(&e.occurred_at);
        let channel = e.channel();
        let inc = increment(&e.detail);
        let agent = if channel == Channel::Web { None } else { agent };
        self.row(day, agent, Some(channel)).add(&inc);
        self.hour(day, hour, Some(channel)).add(&inc);
        if let (Some(agent), false) = (agent, channel == Channel::Web) {
            self.engaged.insert(Engaged {
                day,
                agent: agent.to_string(),
                customer,
            });
        }
    }

    fn hour(&mut self, day: NaiveDate, hour: u8, channel: Option<Channel>) -> &mut Counts {
        self.hours
            .entry(HourKey { day, hour, channel })
            .or_default()
    }

    /// Counts a first response of `seconds` given by the outbound `e`.
    pub fn response(&mut self, e: &Engagement, agent: Option<&str>, seconds: u64) {
        let day = self.zone.day_of(&e.occurred_at);
        self.row(day, agent, Some(e.channel()))
            .add_response(seconds);
    }

    /// Counts a customer created at `at`.
    pub fn new_customer(&mut self, at: &Timestamp) {
        let (day, hour) = self.zone.day_and_hour(at);
        self.row(day, None, None).new_customers += 1;
        self.hour(day, hour, None).new_customers += 1;
    }

    /// The customers' markers go (they were erased).
    pub fn forget(&mut self, ids: impl IntoIterator<Item = CustomerId>) {
        self.forget.extend(ids);
    }

    pub fn into_batch(self) -> AnalyticsBatch {
        AnalyticsBatch {
            hours: self
                .hours
                .into_iter()
                .filter(|(_, c)| !c.is_empty())
                .map(|(key, counts)| HourRow { key, counts })
                .collect(),
            rows: self
                .rows
                .into_iter()
                .filter(|(_, c)| !c.is_empty())
                .map(|(key, counts)| DailyRow { key, counts })
                .collect(),
            engaged: self.engaged.into_iter().collect(),
            forget: self.forget.into_iter().collect(),
        }
    }
}

/// Engagements a first response looks back over.
const LOOK_BACK: usize = 100;
/// Engagements it reads first.
const FIRST_LOOK: usize = 8;

/// The first response an outbound engagement gives: the seconds from the
/// earliest inbound engagement of its customer since the last outbound one
/// before it (by any agent, on any channel but the web) to it; `None`
/// when nobody was waiting. Read from what the store holds when it is
/// counted (the [`LOOK_BACK`] engagements before it).
pub async fn first_response(store: &dyn Store, e: &Engagement) -> StoreResult<Option<u64>> {
    if e.channel() == Channel::Web || e.detail.direction() != Some(Direction::Outbound) {
        return Ok(None);
    }
    let filter = crate::store::EngagementFilter {
        channel: None,
        since: None,
        until: Some(e.occurred_at),
    };
    // Most answers are settled by the last few engagements: read those
    // first, and the whole look-back only when they are all inbound.
    let mut before = store
        .list_engagements(e.customer_id, &filter, None, FIRST_LOOK)
        .await?;
    let (mut waiting, settled) = waiting_since(&before);
    if !settled && before.len() == FIRST_LOOK {
        before = store
            .list_engagements(e.customer_id, &filter, None, LOOK_BACK)
            .await?;
        waiting = waiting_since(&before).0;
    }
    Ok(waiting.map(|t| u64::try_from((e.occurred_at - t).num_seconds()).unwrap_or(0)))
}

/// Of engagements newest first: the earliest inbound one since the last
/// outbound one (the web aside), and whether an outbound one was met.
fn waiting_since(before: &[Engagement]) -> (Option<Timestamp>, bool) {
    let mut waiting = None;
    for b in before.iter().filter(|b| b.channel() != Channel::Web) {
        match b.detail.direction() {
            Some(Direction::Outbound) => return (waiting, true),
            Some(Direction::Inbound) => waiting = Some(b.occurred_at),
            None => {}
        }
    }
    (waiting, false)
}

/// The agent of an engagement: who posted it, else the owner of the device
/// that uploaded it (`owner`).
pub fn agent_of(e: &Engagement, owner: Option<UserId>) -> Option<String> {
    e.source
        .user_id
        .clone()
        .or_else(|| owner.map(|u| format!("user:{u}")))
}

/// What one consumer step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The increments of the events up to `to` are in the store; `full`:
    /// more may follow at once.
    Moved {
        to: uuid::Uuid,
        full: bool,
        batch: AnalyticsBatch,
    },
    /// Nothing new in the log.
    Idle,
    /// Another consumer moved the cursor first: read it again.
    Lost,
    /// The cursor is not in the log any more (pruned past the retention).
    Expired,
}

/// The analytics consumer of the event log (see the module documentation).
/// Remembers device owners (a device never changes hands).
#[derive(Debug, Default)]
pub struct Consumer {
    zone: Zone,
    owners: parking_lot::Mutex<HashMap<DeviceId, Option<UserId>>>,
}

/// An engagement read back to be counted, with the customer it was
/// recorded on, its agent and the first response it gives.
type Counted = (Engagement, Option<CustomerId>, Option<String>, Option<u64>);

/// Engagements read at once while folding a page.
const READS_AT_ONCE: usize = 16;

impl Consumer {
    pub fn new(zone: Zone) -> Self {
        Consumer {
            zone,
            owners: Default::default(),
        }
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// The owner of a device, from memory or the store.
    pub async fn owner(&self, store: &dyn Store, device: DeviceId) -> StoreResult<Option<UserId>> {
        if let Some(known) = self.owners.lock().get(&device) {
            return Ok(*known);
        }
        let owner = store.get_device(device).await?.map(|d| d.user_id);
        self.owners.lock().insert(device, owner);
        Ok(owner)
    }

    /// The agent of a stored engagement.
    pub async fn agent(&self, store: &dyn Store, e: &Engagement) -> StoreResult<Option<String>> {
        let owner = match (&e.source.user_id, e.source.device_id) {
            (None, Some(device)) => self.owner(store, device).await?,
            _ => None,
        };
        Ok(agent_of(e, owner))
    }

    /// Folds the events after `cursor` (at most `page`) into increments and
    /// commits them with the cursor.
    pub async fn step(
        &self,
        store: &dyn Store,
        cursor: Option<uuid::Uuid>,
        page: usize,
    ) -> StoreResult<Step> {
        self.step_reading(store, cursor, cursor, page).await
    }

    /// After [`Step::Expired`]: counts from the oldest event the log still
    /// holds, moving the cursor on from the stale `cursor`.
    pub async fn restart(
        &self,
        store: &dyn Store,
        cursor: Option<uuid::Uuid>,
        page: usize,
    ) -> StoreResult<Step> {
        self.step_reading(store, cursor, None, page).await
    }

    async fn step_reading(
        &self,
        store: &dyn Store,
        cursor: Option<uuid::Uuid>,
        after: Option<uuid::Uuid>,
        page: usize,
    ) -> StoreResult<Step> {
        let Some(read) = store
            .read_feed(after, &EventFilter::default(), page)
            .await?
        else {
            return Ok(Step::Expired);
        };
        let Some(last) = read.last.filter(|l| Some(*l) != after) else {
            return Ok(Step::Idle);
        };
        let batch = self.fold(store, &read.events).await?;
        if !store.apply_analytics(cursor, last, &batch).await? {
            return Ok(Step::Lost);
        }
        Ok(Step::Moved {
            to: last,
            full: read.events.len() >= page,
            batch,
        })
    }

    /// Counts everything again from the store: every customer's creation
    /// and every engagement the store holds, as the consumer would have
    /// (except that an engagement counts for the customer it is on now,
    /// after merges). `progress` hears the customers walked so far.
    pub async fn recount(
        &self,
        store: &dyn Store,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> StoreResult<Recount> {
        use crate::store::{CustomerCursor, EngagementCursor, EngagementFilter};
        const PAGE: usize = 500;
        // The head first: what is written meanwhile is the consumer's (an
        // engagement recorded after the head's event is left to it).
        let mut head = None;
        let mut head_at = None;
        loop {
            let page = store
                .read_feed(head, &EventFilter::default(), 5_000)
                .await?
                .unwrap_or_default();
            if let Some(last) = page.events.last() {
                head_at = Some(last.occurred_at);
            }
            match page.last {
                Some(last) if Some(last) != head => head = Some(last),
                _ => break,
            }
        }
        let counts = |e: &Engagement| head_at.is_some_and(|at| e.recorded_at <= at);
        let mut tally = Tally::new(self.zone);
        let (mut customers, mut engagements) = (0u64, 0u64);
        let mut after = None;
        loop {
            let page = store.list_customers(None, after, PAGE).await?;
            after = page.last().map(|c| CustomerCursor {
                updated_at: c.updated_at,
                id: c.id,
            });
            for c in &page {
                if head_at.is_some_and(|at| c.created_at <= at) {
                    tally.new_customer(&c.created_at);
                }
                let mut cursor = None;
                loop {
                    let items = store
                        .list_engagements(c.id, &EngagementFilter::default(), cursor, PAGE)
                        .await?;
                    cursor = items.last().map(|e| EngagementCursor {
                        occurred_at: e.occurred_at,
                        id: e.id,
                    });
                    for e in items.iter().filter(|e| counts(e)) {
                        let agent = self.agent(store, e).await?;
                        tally.engagement(e, e.customer_id, agent.as_deref());
                        if let Some(seconds) = first_response(store, e).await? {
                            tally.response(e, agent.as_deref(), seconds);
                        }
                        engagements += 1;
                    }
                    if items.len() < PAGE {
                        break;
                    }
                }
                customers += 1;
            }
            progress(customers);
            if page.len() < PAGE {
                break;
            }
        }
        Ok(Recount {
            head,
            batch: tally.into_batch(),
            customers,
            engagements,
        })
    }

    /// The increments of these events (reads each engagement from the store).
    pub async fn fold(
        &self,
        store: &dyn Store,
        events: &[EventEnvelope],
    ) -> StoreResult<AnalyticsBatch> {
        use futures::StreamExt;
        let recorded: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.event {
                DomainEvent::EngagementRecorded { engagement_id, .. } => {
                    Some((*engagement_id, e.customer_id))
                }
                _ => None,
            })
            .collect();
        let read: Vec<StoreResult<Option<Counted>>> = futures::stream::iter(recorded)
            .map(|(id, customer)| async move {
                let Some(e) = store.get_engagement(id).await? else {
                    return Ok(None);
                };
                let agent = self.agent(store, &e).await?;
                let response = first_response(store, &e).await?;
                Ok(Some((e, customer, agent, response)))
            })
            .buffered(READS_AT_ONCE)
            .collect()
            .await;
        let mut tally = Tally::new(self.zone);
        for found in read {
            if let Some((e, customer, agent, response)) = found? {
                let customer = customer.unwrap_or(e.customer_id);
                tally.engagement(&e, customer, agent.as_deref());
                if let Some(seconds) = response {
                    tally.response(&e, agent.as_deref(), seconds);
                }
            }
        }
        for e in events {
            match &e.event {
                DomainEvent::CustomerCreated {} => tally.new_customer(&e.occurred_at),
                DomainEvent::CustomerErased { .. } => tally.forget(e.customer_ids()),
                _ => {}
            }
        }
        Ok(tally.into_batch())
    }
}

/// What a recount from the store found (see [`Consumer::recount`]).
#[derive(Debug, Clone, Default)]
pub struct Recount {
    /// The last event of the log when the recount began: the consumer goes
    /// on after it once the recount replaces the rollups.
    pub head: Option<uuid::Uuid>,
    pub batch: AnalyticsBatch,
    pub customers: u64,
    pub engagements: u64,
}

impl Recount {
    /// The daily rows the recount gives, distinct customers included.
    pub fn rows(&self) -> BTreeMap<RowKey, Counts> {
        let mut rows: BTreeMap<RowKey, Counts> = self
            .batch
            .rows
            .iter()
            .map(|r| (r.key.clone(), r.counts))
            .collect();
        for m in &self.batch.engaged {
            rows.entry(RowKey {
                day: m.day,
                agent: Some(m.agent.clone()),
                channel: None,
            })
            .or_default()
            .customers_engaged += 1;
        }
        rows
    }

    /// The hourly totals the recount gives.
    pub fn hours(&self) -> BTreeMap<HourKey, Counts> {
        self.batch
            .hours
            .iter()
            .map(|h| (h.key.clone(), h.counts))
            .collect()
    }
}

/// A figure the store holds that a recount does not give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `2026-11-21 user:<id> call`, or `2026-11-21 09h call` for an hour's totals.
    pub row: String,
    pub metric: &'static str,
    pub stored: u64,
    pub recounted: u64,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: stored {}, recounted {}",
            self.row, self.metric, self.stored, self.recounted
        )
    }
}

/// The days every stored figure falls in (the years the API accepts).
fn all_days() -> (NaiveDate, NaiveDate) {
    (
        NaiveDate::from_ymd_opt(crate::time::MIN_YEAR - 1, 1, 1).unwrap_or(NaiveDate::MIN),
        NaiveDate::from_ymd_opt(crate::time::MAX_YEAR, 12, 31).unwrap_or(NaiveDate::MAX),
    )
}

fn compare<K: Ord>(
    stored: BTreeMap<K, Counts>,
    recounted: BTreeMap<K, Counts>,
    name: impl Fn(&K) -> String,
    out: &mut Vec<Difference>,
) {
    let keys: BTreeSet<&K> = stored.keys().chain(recounted.keys()).collect();
    for k in keys {
        let (a, b) = (
            stored.get(k).copied().unwrap_or_default(),
            recounted.get(k).copied().unwrap_or_default(),
        );
        for m in Metric::ALL.iter().copied().filter(|m| !m.derived()) {
            if m.of(&a) != m.of(&b) {
                out.push(Difference {
                    row: name(k),
                    metric: m.as_str(),
                    stored: m.of(&a),
                    recounted: m.of(&b),
                });
            }
        }
    }
}

/// Compares the stored rollups with a recount: every figure that differs.
pub async fn verify(store: &dyn Store, recount: &Recount) -> StoreResult<Vec<Difference>> {
    let (from, to) = all_days();
    let stored: BTreeMap<RowKey, Counts> = store
        .analytics_rows(from, to)
        .await?
        .into_iter()
        .map(|r| (r.key, r.counts))
        .collect();
    let hours: BTreeMap<HourKey, Counts> = store
        .analytics_hours(from, to)
        .await?
        .into_iter()
        .map(|h| (h.key, h.counts))
        .collect();
    let mut out = Vec::new();
    compare(
        stored,
        recount.rows(),
        |k| {
            format!(
                "{} {} {}",
                k.day,
                k.agent.as_deref().unwrap_or("-"),
                k.channel.map_or("-", Channel::as_str)
            )
        },
        &mut out,
    );
    compare(
        hours,
        recount.hours(),
        |k| {
            format!(
                "{} {:02}h {}",
                k.day,
                k.hour,
                k.channel.map_or("-", Channel::as_str)
            )
        },
        &mut out,
    );
    Ok(out)
}

/// Sums rows by a key of the caller's choice.
pub fn sum_by<'a, K: Ord>(
    rows: impl IntoIterator<Item = &'a DailyRow>,
    mut key: impl FnMut(&'a DailyRow) -> Option<K>,
) -> BTreeMap<K, Counts> {
    let mut out: BTreeMap<K, Counts> = BTreeMap::new();
    for r in rows {
        if let Some(k) = key(r) {
            out.entry(k).or_default().add(&r.counts);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engagement::Source;
    use crate::ids::EngagementId;

    fn call(at: &str, direction: Direction, status: CallStatus, secs: u32) -> Engagement {
        Engagement {
            id: EngagementId::new(),
            customer_id: CustomerId::new(),
            occurred_at: crate::time::parse(at).unwrap(),
            recorded_at: crate::time::parse(at).unwrap(),
            source: Source::default(),
            detail: EngagementDetail::Call {
                direction,
                duration_s: secs,
                status,
            },
        }
    }

    #[test]
    fn days_are_calendar_days_of_the_zone() {
        let sg: Zone = "Asia/Singapore".parse().unwrap();
        let t = crate::time::parse("2026-11-21T16:30:00Z").unwrap();
        assert_eq!(sg.day_of(&t).to_string(), "2026-11-22");
        assert_eq!(Zone::default().day_of(&t).to_string(), "2026-11-21");
        let day = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        assert_eq!(
            crate::time::format(&sg.start_of(day)),
            "2026-11-21T16:00:00.000000Z"
        );
        assert!("Mars/Olympus".parse::<Zone>().is_err());
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_at_the_first_local_time() {
        // Santiago moved its clocks from 00:00 to 01:00 on 2022-09-11.
        let zone: Zone = "America/Santiago".parse().unwrap();
        let day = NaiveDate::from_ymd_opt(2022, 9, 11).unwrap();
        assert_eq!(
            crate::time::format(&zone.start_of(day)),
            "2022-09-11T04:00:00.000000Z"
        );
    }

    #[test]
    fn calls_count_by_direction_and_status() {
        let mut tally = Tally::new(Zone::default());
        let at = "2026-11-21T09:00:00Z";
        for e in [
            call(at, Direction::Inbound, CallStatus::Answered, 60),
            call(at, Direction::Inbound, CallStatus::Missed, 0),
            call(at, Direction::Inbound, CallStatus::Voicemail, 20),
            call(at, Direction::Outbound, CallStatus::Answered, 30),
            call(at, Direction::Outbound, CallStatus::Missed, 0),
        ] {
            tally.engagement(&e, e.customer_id, Some("user:a"));
        }
        let batch = tally.into_batch();
        assert_eq!(batch.rows.len(), 1);
        let c = batch.rows[0].counts;
        assert_eq!(
            (
                c.calls_inbound,
                c.calls_outbound,
                c.calls_answered,
                c.calls_missed,
                c.talk_seconds
            ),
            (3, 2, 2, 2, 90)
        );
        assert_eq!(batch.engaged.len(), 5);
        assert_eq!(Metric::Engagements.of(&c), 5);
    }

    #[test]
    fn response_times_fall_in_buckets_and_percentiles_read_their_bounds() {
        let mut c = Counts::default();
        assert_eq!(c.response_percentile(50), 0);
        for secs in [10, 30, 31, 200, 200, 590, 3_000, 90_000, 700_000, 5] {
            c.add_response(secs);
        }
        assert_eq!((c.first_responses, c.first_response_seconds), (10, 794_066));
        assert_eq!(
            (
                c.first_response_le_30s,
                c.first_response_le_1m,
                c.first_response_le_5m
            ),
            (3, 1, 2)
        );
        assert_eq!((c.first_response_le_1d, c.first_response_gt_7d), (0, 1));
        // Sorted: 5 10 30 | 31 | 200 200 | 590 | 3000 | 90000 | 700000.
        assert_eq!(Metric::FirstResponseMedian.of(&c), 300);
        assert_eq!(Metric::FirstResponseP90.of(&c), 604_800);
        assert_eq!(c.response_percentile(30), 30);
        assert!(Metric::FirstResponseMedian.lower_is_better());
        assert!(Metric::FirstResponseMedian.derived() && !Metric::FirstResponses.derived());
    }

    #[test]
    fn metric_names_round_trip_and_counts_keep_only_non_zero_fields() {
        for m in Metric::ALL {
            assert_eq!(m.as_str().parse::<Metric>(), Ok(*m));
        }
        let mut c = Counts::default();
        assert!(c.set("sms_inbound", 3));
        assert!(!c.set("engagements", 1));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"sms_inbound":3}"#);
        assert_eq!(c.fields(), vec![("sms_inbound", 3)]);
    }
}
