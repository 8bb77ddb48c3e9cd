//! Sales analytics (`/v1/analytics/*`): leaderboards, series for charts,
//! today's overview and the daily rows for BI tools, read from the rollups
//! the analytics consumer keeps in the store (see
//! [`crm_models::analytics`]).
//!
//! Who sees what: staff see the leaderboards (every agent's figure for the
//! one metric ranked) and the overview (totals, nobody's own); an agent's
//! series are their own figures; admins see everyone's, and only admins
//! export. API keys see nothing (they read no figures).
//!
//! Days are calendar days in `CRM_TIMEZONE`; "today" is the day it is there now.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use chrono::{Datelike, Duration, NaiveDate};
use crm_models::analytics::{sum_by, Counts, DailyRow, Metric};
use crm_models::engagement::Channel;
use crm_models::staff::{Role, User};
use crm_models::store::Store;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Staff;
use crate::error::{ApiError, ApiJson, ApiQuery, Problem};
use crate::state::AppState;

/// Longest range a query may span, in days.
pub const MAX_DAYS: i64 = 366;
/// Leaderboard entries unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 10;
/// Most leaderboard entries.
pub const MAX_LIMIT: usize = 200;
/// Days of a series unless `from` says otherwise.
const DEFAULT_SERIES_DAYS: i64 = 30;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(leaderboard))
        .routes(routes!(series))
        .routes(routes!(overview))
        .routes(routes!(export))
}

// --- periods ---

/// Days `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct DayRange {
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
}

impl DayRange {
    fn days(&self) -> i64 {
        (self.to - self.from).num_days() + 1
    }

    fn contains(&self, day: NaiveDate) -> bool {
        self.from <= day && day <= self.to
    }
}

const PERIOD_HELP: &str = "must be today, yesterday, week, month or FROM..TO (dates as YYYY-MM-DD)";

/// `today|yesterday|week|month|FROM..TO` relative to `today`: the period
/// and the one before it (of the same length; for `month`, the same days
/// of the previous month).
pub fn parse_period(raw: &str, today: NaiveDate) -> Result<(DayRange, DayRange), String> {
    let day = |n: i64| today - Duration::days(n);
    let range = |from, to| DayRange { from, to };
    Ok(match raw {
        "today" => (range(today, today), range(day(1), day(1))),
        "yesterday" => (range(day(1), day(1)), range(day(2), day(2))),
        "week" => {
            let monday = day(i64::from(today.weekday().num_days_from_monday()));
            (
                range(monday, today),
                range(monday - Duration::days(7), day(7)),
            )
        }
        "month" => {
            let first = today.with_day(1).unwrap_or(today);
            let before = first.pred_opt().unwrap_or(first);
            let previous_first = before.with_day(1).unwrap_or(before);
            let same_day = previous_first
                .with_day(today.day())
                .unwrap_or(before)
                .min(before);
            (range(first, today), range(previous_first, same_day))
        }
        other => {
            let current = parse_range(other)?;
            let n = Duration::days(current.days());
            (current, range(current.from - n, current.to - n))
        }
    })
}

/// `FROM..TO`: dates, in order, at most [`MAX_DAYS`] days.
fn parse_range(raw: &str) -> Result<DayRange, String> {
    let (from, to) = raw.split_once("..").ok_or(PERIOD_HELP)?;
    let from = parse_day(from).map_err(|_| PERIOD_HELP.to_string())?;
    let to = parse_day(to).map_err(|_| PERIOD_HELP.to_string())?;
    checked(from, to)
}

fn checked(from: NaiveDate, to: NaiveDate) -> Result<DayRange, String> {
    if from > to {
        return Err("the first day must not be after the last".into());
    }
    let range = DayRange { from, to };
    if range.days() > MAX_DAYS {
        return Err(format!("may span at most {MAX_DAYS} days"));
    }
    Ok(range)
}

fn parse_day(raw: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d")
        .map_err(|_| "must be a date as YYYY-MM-DD".to_string())
}

fn metric_help() -> String {
    let names: Vec<&str> = Metric::ALL.iter().map(|m| m.as_str()).collect();
    format!("must be one of {}", names.join(", "))
}

fn parse_metric(raw: Option<&str>, errors: &mut Vec<crm_models::service::FieldError>) -> Metric {
    match raw {
        None => Metric::Engagements,
        Some(m) => m.parse().unwrap_or_else(|()| {
            errors.push(field_error("metric", metric_help()));
            Metric::Engagements
        }),
    }
}

fn field_error(field: &str, message: impl ToString) -> crm_models::service::FieldError {
    crm_models::service::FieldError::new(field, message.to_string())
}

/// The days `from..=to` of a query (`to` today and `from`
/// [`DEFAULT_SERIES_DAYS`] before it when absent); `None`, with the
/// errors noted, when either is bad or the range is.
fn query_range(
    state: &AppState,
    from: Option<&str>,
    to: Option<&str>,
    errors: &mut Vec<crm_models::service::FieldError>,
) -> Option<DayRange> {
    let to = match to.map(parse_day).transpose() {
        Ok(t) => t.unwrap_or_else(|| today(state)),
        Err(m) => {
            errors.push(field_error("to", m));
            today(state)
        }
    };
    let from = match from.map(parse_day).transpose() {
        Ok(f) => f.unwrap_or(to - Duration::days(DEFAULT_SERIES_DAYS - 1)),
        Err(m) => {
            errors.push(field_error("from", m));
            to
        }
    };
    checked(from, to)
        .map_err(|m| errors.push(field_error("from", m)))
        .ok()
}

fn today(state: &AppState) -> NaiveDate {
    state
        .config
        .analytics
        .timezone
        .day_of(&crm_models::time::now())
}

// --- agents ---

/// Who a figure belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AgentView {
    /// `user:<id>` or `key:<id>`.
    pub id: String,
    /// The staff user's name, or the API key's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// Staff and keys by agent id (`user:<id>`, `key:<id>`), and the active
/// users (who appear on a board with nothing counted yet).
pub(crate) struct Agents {
    known: HashMap<String, AgentView>,
    active: Vec<String>,
}

impl Agents {
    pub(crate) async fn load(store: &dyn Store) -> Result<Agents, ApiError> {
        let mut known = HashMap::new();
        let mut active = Vec::new();
        let mut after = None;
        loop {
            let page: Vec<User> = store.list_users(after, 500).await?;
            let done = page.len() < 500;
            after = page.last().map(|u| u.id);
            for u in page {
                let id = format!("user:{}", u.id);
                if u.active && u.role == Role::Agent {
                    active.push(id.clone());
                }
                known.insert(
                    id.clone(),
                    AgentView {
                        id,
                        name: Some(u.name),
                        team: u.team,
                    },
                );
            }
            if done {
                break;
            }
        }
        for k in store.list_api_keys().await? {
            let id = format!("key:{}", k.id);
            known.insert(
                id.clone(),
                AgentView {
                    id,
                    name: Some(k.name),
                    team: None,
                },
            );
        }
        Ok(Agents { known, active })
    }

    fn view(&self, id: &str) -> AgentView {
        self.known.get(id).cloned().unwrap_or_else(|| AgentView {
            id: id.to_string(),
            name: None,
            team: None,
        })
    }

    fn team_of(&self, id: &str) -> Option<&str> {
        self.known.get(id).and_then(|a| a.team.as_deref())
    }

    /// Every team a known agent is in.
    pub(crate) fn teams(&self) -> std::collections::BTreeSet<String> {
        self.known.values().filter_map(|a| a.team.clone()).collect()
    }
}

// --- leaderboard ---

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaderboardQuery {
    /// A metric of an agent (default `engagements`): `calls_inbound`,
    /// `calls_outbound`, `calls_answered`, `calls_missed`, `talk_seconds`,
    /// `sms_inbound`, `sms_outbound`, `whatsapp_inbound`,
    /// `whatsapp_outbound`, `email_inbound`, `email_outbound`,
    /// `customers_engaged`, `engagements`, `first_responses`,
    /// `first_response_median` and `first_response_p90` (seconds, lowest
    /// first; agents without responses are left out), and the response
    /// histogram's buckets (`first_response_le_30s` ... `first_response_gt_7d`).
    pub metric: Option<String>,
    /// `today` (default), `yesterday`, `week` (Monday to today), `month`
    /// (the 1st to today) or `FROM..TO` (dates, at most 366 days).
    pub period: Option<String>,
    /// Only the agents of this team.
    pub team: Option<String>,
    /// 1 to 200, default 10.
    pub limit: Option<usize>,
}

/// One agent's place on a board.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LeaderboardEntry {
    /// 1 for the highest value; equal values share a rank.
    pub rank: usize,
    pub agent: AgentView,
    pub value: u64,
    /// The value in the previous period.
    pub previous: u64,
    /// `value - previous`.
    pub change: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Leaderboard {
    pub metric: String,
    pub period: DayRange,
    /// The period before, of the same length (`change` is against it).
    pub previous_period: DayRange,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Highest first (lowest for response times); ties by name.
    pub items: Vec<LeaderboardEntry>,
}

/// Agents ranked by one metric over a period (staff).
#[utoipa::path(
    get, path = "/v1/analytics/leaderboard", tag = "analytics",
    params(LeaderboardQuery),
    responses(
        (status = 200, body = Leaderboard),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: API keys and devices", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown metric or one without an agent, a bad period or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn leaderboard(
    State(state): State<AppState>,
    Staff(_caller): Staff,
    ApiQuery(query): ApiQuery<LeaderboardQuery>,
) -> Result<ApiJson<Leaderboard>, ApiError> {
    let mut errors = Vec::new();
    let metric = parse_metric(query.metric.as_deref(), &mut errors);
    if !metric.per_agent() {
        errors.push(field_error(
            "metric",
            format!("{metric} belongs to no agent, so it has no leaderboard"),
        ));
    }
    let periods = parse_period(query.period.as_deref().unwrap_or("today"), today(&state))
        .map_err(|m| errors.push(field_error("period", m)))
        .ok();
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        errors.push(field_error(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let team = query
        .team
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some((period, previous)) = periods.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let store = state.crm.store();
    let blocks = store.analytics_row_blocks(previous.from, period.to).await?;
    let agents = Agents::load(store.as_ref()).await?;
    let rows = blocks.iter().flat_map(|b| b.iter());
    let items = rank(rows, &agents, metric, period, previous, team, limit);
    Ok(ApiJson(Leaderboard {
        metric: metric.to_string(),
        period,
        previous_period: previous,
        team: team.map(str::to_string),
        items,
    }))
}

/// The top `limit` agents (of `team`, when given) by `metric` over
/// `period`, with their values over `previous` (`rows` must cover both).
pub(crate) fn rank<'a>(
    rows: impl IntoIterator<Item = &'a DailyRow>,
    agents: &Agents,
    metric: Metric,
    period: DayRange,
    previous: DayRange,
    team: Option<&str>,
    limit: usize,
) -> Vec<LeaderboardEntry> {
    let in_team = |id: &str| team.is_none_or(|t| agents.team_of(id) == Some(t));
    // Each agent's counts in both periods, summed before the metric is
    // read (a percentile is not a sum).
    let mut totals: BTreeMap<&str, (Counts, Counts)> = BTreeMap::new();
    for id in &agents.active {
        if in_team(id) {
            totals.entry(id.as_str()).or_default();
        }
    }
    for r in rows {
        let Some(agent) = r.key.agent.as_deref().filter(|a| in_team(a)) else {
            continue;
        };
        let entry = totals.entry(agent).or_default();
        if period.contains(r.key.day) {
            entry.0.add(&r.counts);
        }
        if previous.contains(r.key.day) {
            entry.1.add(&r.counts);
        }
    }
    let lower = metric.lower_is_better();
    let mut ranked: Vec<(AgentView, u64, u64)> = totals
        .into_iter()
        // A response time needs responses: agents with none are not ranked.
        .filter(|(_, (now, _))| !lower || now.first_responses > 0)
        .map(|(id, (now, before))| (agents.view(id), metric.of(&now), metric.of(&before)))
        .collect();
    ranked.sort_by(|a, b| {
        let by_value = if lower { a.1.cmp(&b.1) } else { b.1.cmp(&a.1) };
        by_value
            .then_with(|| a.0.name.cmp(&b.0.name))
            .then_with(|| a.0.id.cmp(&b.0.id))
    });
    let mut items = Vec::new();
    let mut rank = 0;
    let mut last = None;
    for (i, (agent, value, before)) in ranked.into_iter().take(limit).enumerate() {
        if last != Some(value) {
            rank = i + 1;
            last = Some(value);
        }
        items.push(LeaderboardEntry {
            rank,
            agent,
            value,
            previous: before,
            change: signed(value) - signed(before),
        });
    }
    items
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// --- series ---

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Day,
    Agent,
    Team,
    Channel,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Default `engagements` (see the leaderboard for the names; also
    /// `web_views` and `new_customers`, admins only).
    pub metric: Option<String>,
    /// `day` (default: one point per day, zeros included), `agent`,
    /// `team` or `channel` (one total each over the range).
    pub group_by: Option<String>,
    /// First day (YYYY-MM-DD); default 29 days before `to`.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD); default today. At most 366 days in all.
    #[param(format = Date)]
    pub to: Option<String>,
    /// Only this agent (`user:<id>` or `key:<id>`). Agents see only their own.
    pub agent: Option<String>,
    /// Only the agents of this team (admins).
    pub team: Option<String>,
    /// Only this channel.
    pub channel: Option<String>,
}

/// One point of a series.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesPoint {
    /// The day (YYYY-MM-DD), the agent id, the team or the channel; null
    /// for figures of no agent, or agents of no team.
    pub key: Option<String>,
    /// The agent's name, when grouped by agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub value: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    pub metric: String,
    /// `day`, `agent`, `team` or `channel`.
    pub group_by: String,
    pub range: DayRange,
    pub items: Vec<SeriesPoint>,
}

/// A metric over days, or per agent, team or channel over a range: an
/// agent's own figures; admins everyone's.
#[utoipa::path(
    get, path = "/v1/analytics/series", tag = "analytics",
    params(SeriesQuery),
    responses(
        (status = 200, body = Series),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: API keys and devices; an agent asking for another agent's figures, a team's, or figures of no agent", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown metric, grouping or channel, a bad day or range", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn series(
    State(state): State<AppState>,
    Staff(caller): Staff,
    ApiQuery(query): ApiQuery<SeriesQuery>,
) -> Result<ApiJson<Series>, ApiError> {
    let mut errors = Vec::new();
    let metric = parse_metric(query.metric.as_deref(), &mut errors);
    let group_by = match query.group_by.as_deref().unwrap_or("day") {
        "day" => GroupBy::Day,
        "agent" => GroupBy::Agent,
        "team" => GroupBy::Team,
        "channel" => GroupBy::Channel,
        _ => {
            errors.push(field_error(
                "group_by",
                "must be day, agent, team or channel",
            ));
            GroupBy::Day
        }
    };
    if !metric.per_agent() && matches!(group_by, GroupBy::Agent | GroupBy::Team) {
        errors.push(field_error(
            "group_by",
            format!("{metric} belongs to no agent: group it by day or channel"),
        ));
    }
    let channel = match query.channel.as_deref() {
        None => None,
        Some(c) => match c.parse::<Channel>() {
            Ok(c) => Some(c),
            Err(()) => {
                errors.push(field_error(
                    "channel",
                    "must be web, call, sms, whatsapp or email",
                ));
                None
            }
        },
    };
    let range = query_range(
        &state,
        query.from.as_deref(),
        query.to.as_deref(),
        &mut errors,
    );
    let Some(range) = range.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let team = query
        .team
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    // An agent's own figures only.
    let agent = if caller.role == Role::Admin {
        query.agent.clone()
    } else {
        let own = caller.actor();
        if query.agent.as_deref().is_some_and(|a| a != own) || team.is_some() || !metric.per_agent()
        {
            return Err(ApiError::Forbidden);
        }
        Some(own)
    };
    let store = state.crm.store();
    let blocks = store.analytics_row_blocks(range.from, range.to).await?;
    let agents = Agents::load(store.as_ref()).await?;
    let keep = |r: &DailyRow| {
        channel.is_none_or(|c| r.key.channel == Some(c))
            && agent
                .as_deref()
                .is_none_or(|a| r.key.agent.as_deref() == Some(a))
            && team.is_none_or(|t| {
                r.key
                    .agent
                    .as_deref()
                    .is_some_and(|a| agents.team_of(a) == Some(t))
            })
    };
    let rows: Vec<&DailyRow> = blocks
        .iter()
        .flat_map(|b| b.iter())
        .filter(|r| keep(r))
        .collect();
    let items = match group_by {
        GroupBy::Day => {
            let by_day = sum_by(rows.iter().copied(), |r| Some(r.key.day));
            let mut items = Vec::new();
            let mut day = range.from;
            while day <= range.to {
                items.push(SeriesPoint {
                    key: Some(day.format("%Y-%m-%d").to_string()),
                    name: None,
                    value: by_day.get(&day).map_or(0, |c| metric.of(c)),
                });
                day += Duration::days(1);
            }
            items
        }
        GroupBy::Agent => points(
            sum_by(rows.iter().copied(), |r| r.key.agent.as_deref()),
            metric,
            |id| (Some(id.to_string()), agents.view(id).name),
        ),
        GroupBy::Team => points(
            sum_by(rows.iter().copied(), |r| {
                r.key.agent.as_deref().map(|a| agents.team_of(a))
            }),
            metric,
            |team| (team.map(str::to_string), None),
        ),
        GroupBy::Channel => points(
            sum_by(rows.iter().copied(), |r| {
                Some(r.key.channel.map(|c| c.as_str()))
            }),
            metric,
            |c| (c.map(str::to_string), None),
        ),
    };
    Ok(ApiJson(Series {
        metric: metric.to_string(),
        group_by: query.group_by.unwrap_or_else(|| "day".into()),
        range,
        items,
    }))
}

/// Totals as points, highest first, leaving out groups that count nothing.
fn points<K: Ord>(
    totals: BTreeMap<K, Counts>,
    metric: Metric,
    label: impl Fn(&K) -> (Option<String>, Option<String>),
) -> Vec<SeriesPoint> {
    let mut items: Vec<SeriesPoint> = totals
        .iter()
        .map(|(k, c)| (k, metric.of(c)))
        .filter(|(_, v)| *v > 0)
        .map(|(k, value)| {
            let (key, name) = label(k);
            SeriesPoint { key, name, value }
        })
        .collect();
    items.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.key.cmp(&b.key)));
    items
}

// --- overview ---

/// One channel's figures today and yesterday until the same hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelOverview {
    /// `web`, `call`, `sms`, `whatsapp`, `email`, or null for new customers.
    pub channel: Option<String>,
    /// The figures that are not zero, by metric name.
    pub today: BTreeMap<String, u64>,
    pub yesterday_same_hour: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    #[schema(value_type = String, format = Date)]
    pub today: NaiveDate,
    /// The hour of the day now (0 to 23, in `CRM_TIMEZONE`): both days are
    /// counted up to the end of this hour.
    pub hour: u8,
    pub channels: Vec<ChannelOverview>,
    /// Every channel together.
    pub total: ChannelOverview,
}

/// Today's totals per channel against yesterday's until the same hour (staff).
#[utoipa::path(
    get, path = "/v1/analytics/overview", tag = "analytics",
    responses(
        (status = 200, body = Overview),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: API keys and devices", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn overview(
    State(state): State<AppState>,
    Staff(_caller): Staff,
) -> Result<ApiJson<Overview>, ApiError> {
    let zone = state.config.analytics.timezone;
    let (today, hour) = zone.day_and_hour(&crm_models::time::now());
    let yesterday = today - Duration::days(1);
    let hours = state.crm.store().analytics_hours(yesterday, today).await?;
    let mut today_by: BTreeMap<Option<usize>, Counts> = BTreeMap::new();
    let mut before_by: BTreeMap<Option<usize>, Counts> = BTreeMap::new();
    for h in hours.iter().filter(|h| h.key.hour <= hour) {
        let slot = h
            .key
            .channel
            .and_then(|c| Channel::ALL.iter().position(|x| *x == c));
        let into = if h.key.day == today {
            &mut today_by
        } else {
            &mut before_by
        };
        into.entry(slot).or_default().add(&h.counts);
    }
    let figures = |c: Option<&Counts>| -> BTreeMap<String, u64> {
        c.map(|c| {
            c.fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
        .unwrap_or_default()
    };
    let mut channels = Vec::new();
    let slots = Channel::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| (Some(i), Some(c.as_str().to_string())))
        .chain(std::iter::once((None, None)));
    for (slot, name) in slots {
        channels.push(ChannelOverview {
            channel: name,
            today: figures(today_by.get(&slot)),
            yesterday_same_hour: figures(before_by.get(&slot)),
        });
    }
    let total = |by: &BTreeMap<Option<usize>, Counts>| {
        let mut all = Counts::default();
        for c in by.values() {
            all.add(c);
        }
        all
    };
    Ok(ApiJson(Overview {
        today,
        hour,
        channels,
        total: ChannelOverview {
            channel: None,
            today: figures(Some(&total(&today_by))),
            yesterday_same_hour: figures(Some(&total(&before_by))),
        },
    }))
}

// --- export ---

/// Days read from the store per part of an export.
const EXPORT_DAYS: i64 = 7;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// First day (YYYY-MM-DD); default 29 days before `to`.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD); default today. At most 366 days in all.
    #[param(format = Date)]
    pub to: Option<String>,
    /// `csv` (default) or `ndjson`.
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// The stored metrics, in the order of the export's columns.
fn export_metrics() -> impl Iterator<Item = Metric> {
    Metric::ALL.iter().copied().filter(|m| !m.derived())
}

/// A CSV field, quoted when it holds a comma, a quote or a line break,
/// and with a leading `'` when a spreadsheet would read it as a formula.
fn csv_field(raw: &str) -> String {
    let text = if raw.starts_with(['=', '+', '-', '@']) {
        format!("'{raw}")
    } else {
        raw.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn csv_header() -> String {
    let mut line = String::from("day,agent,team,channel");
    for m in export_metrics() {
        line.push(',');
        line.push_str(m.as_str());
    }
    line.push('\n');
    line
}

fn export_line(format: Format, row: &DailyRow, team: Option<&str>) -> String {
    let day = row.key.day.format("%Y-%m-%d").to_string();
    let agent = row.key.agent.as_deref();
    let channel = row.key.channel.map(Channel::as_str);
    match format {
        Format::Csv => {
            let mut line = format!(
                "{day},{},{},{}",
                csv_field(agent.unwrap_or("")),
                csv_field(team.unwrap_or("")),
                channel.unwrap_or("")
            );
            for m in export_metrics() {
                line.push(',');
                line.push_str(&m.of(&row.counts).to_string());
            }
            line.push('\n');
            line
        }
        Format::Ndjson => {
            let mut object = serde_json::Map::new();
            object.insert("day".into(), day.into());
            object.insert("agent".into(), agent.into());
            object.insert("team".into(), team.into());
            object.insert("channel".into(), channel.into());
            for m in export_metrics() {
                object.insert(m.as_str().into(), m.of(&row.counts).into());
            }
            let mut line = serde_json::Value::Object(object).to_string();
            line.push('\n');
            line
        }
    }
}

/// Daily rows per agent and channel over a range, for BI tools (admins):
/// CSV with a header line, or one JSON object per line; streamed a week
/// at a time. Rows with no agent hold page views and new customers; the
/// row of an agent with no channel holds the distinct customers engaged.
#[utoipa::path(
    get, path = "/v1/analytics/export", tag = "analytics",
    params(ExportQuery),
    responses(
        (status = 200, description = "`day,agent,team,channel,` then one column per metric (`format=csv`), or one object per line with the same fields (`format=ndjson`)",
         content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: admins only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad day, range or format", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn export(
    State(state): State<AppState>,
    crate::auth::AdminOnly(_): crate::auth::AdminOnly,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let mut errors = Vec::new();
    let format = match query.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "ndjson" => Format::Ndjson,
        _ => {
            errors.push(field_error("format", "must be csv or ndjson"));
            Format::Csv
        }
    };
    let range = query_range(
        &state,
        query.from.as_deref(),
        query.to.as_deref(),
        &mut errors,
    );
    let Some(range) = range.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let store = state.crm.store().clone();
    let teams: HashMap<String, String> = Agents::load(store.as_ref())
        .await?
        .known
        .into_values()
        .filter_map(|a| a.team.map(|t| (a.id, t)))
        .collect();
    let header = (format == Format::Csv).then(csv_header);
    // One part per week of days: a long range is never held in memory whole.
    let parts = futures::stream::unfold(Some(range.from), move |next| {
        let store = store.clone();
        let teams = teams.clone();
        async move {
            let start = next?;
            let end = (start + Duration::days(EXPORT_DAYS - 1)).min(range.to);
            let after = end.succ_opt().filter(|d| *d <= range.to);
            let part = match store.analytics_rows(start, end).await {
                Ok(rows) => Ok(rows
                    .iter()
                    .map(|r| {
                        let team = r.key.agent.as_deref().and_then(|a| teams.get(a));
                        export_line(format, r, team.map(String::as_str))
                    })
                    .collect::<String>()),
                Err(e) => {
                    // The status is sent already: end the body with an error.
                    tracing::warn!(error = %e, "analytics export: cannot read the rollups");
                    Err(std::io::Error::other("the store cannot be read"))
                }
            };
            let stop = part.is_err();
            Some((part, if stop { None } else { after }))
        }
    });
    let body = futures::StreamExt::chain(
        futures::stream::iter(header.map(Ok::<String, std::io::Error>)),
        parts,
    );
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let disposition = format!(
        "attachment; filename=\"analytics-{}-{}.{extension}\"",
        range.from, range.to
    );
    Ok((
        [
            (CONTENT_TYPE, content_type.to_string()),
            (CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(raw: &str) -> NaiveDate {
        parse_day(raw).unwrap()
    }

    fn r(from: &str, to: &str) -> DayRange {
        DayRange {
            from: d(from),
            to: d(to),
        }
    }

    #[test]
    fn periods_and_the_ones_before_them() {
        // A Wednesday.
        let today = d("2026-12-09");
        assert_eq!(
            parse_period("today", today).unwrap(),
            (r("2026-12-09", "2026-12-09"), r("2026-12-08", "2026-12-08"))
        );
        assert_eq!(
            parse_period("yesterday", today).unwrap(),
            (r("2026-12-08", "2026-12-08"), r("2026-12-07", "2026-12-07"))
        );
        assert_eq!(
            parse_period("week", today).unwrap(),
            (r("2026-12-07", "2026-12-09"), r("2026-11-30", "2026-12-02"))
        );
        assert_eq!(
            parse_period("month", today).unwrap(),
            (r("2026-12-01", "2026-12-09"), r("2026-11-01", "2026-11-09"))
        );
        // The 31st against a month of 30 days.
        assert_eq!(
            parse_period("month", d("2026-12-31")).unwrap().1,
            r("2026-11-01", "2026-11-30")
        );
        assert_eq!(
            parse_period("2026-11-01..2026-11-10", today).unwrap(),
            (r("2026-11-01", "2026-11-10"), r("2026-10-22", "2026-10-31"))
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("North"), "North");
        assert_eq!(csv_field("North, East"), "\"North, East\"");
        assert_eq!(csv_field("the \"A\" team"), "\"the \"\"A\"\" team\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert!(csv_header().starts_with("day,agent,team,channel,calls_inbound,"));
        assert!(!csv_header().contains("engagements"));
    }

    #[test]
    fn bad_periods_say_what_is_expected() {
        let today = d("2026-12-09");
        assert_eq!(parse_period("fortnight", today).unwrap_err(), PERIOD_HELP);
        assert_eq!(
            parse_period("2026-11-10..2026-11-01", today).unwrap_err(),
            "the first day must not be after the last"
        );
        assert_eq!(
            parse_period("2025-01-01..2026-12-31", today).unwrap_err(),
            "may span at most 366 days"
        );
        assert_eq!(
            parse_period("2026-02-30..2026-03-01", today).unwrap_err(),
            PERIOD_HELP
        );
    }
}
