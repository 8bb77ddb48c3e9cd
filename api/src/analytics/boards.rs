//! Live leaderboards: `leaderboard.updated` on the SSE stream.
//!
//! Every crm-api instance watches the events it hears (its
//! [`LiveHub`](crm_models::live::LiveHub): with Redis, every instance hears
//! every event). After an engagement it reads today's rollups again every
//! [`RECOMPUTE`] for a few seconds (the analytics consumer, on any
//! instance, counts it meanwhile), ranks every agent metric overall and per
//! team, and publishes each board whose top changed, at most once a second
//! per metric and team ([`MIN_INTERVAL`]), to the streams of this process
//! that asked for it (`GET /v1/stream?leaderboard=<metric>&team=<team>`).
//! An update carries the top [`TOP`] of the board, like
//! `GET /v1/analytics/leaderboard?period=today`; it is not in the event log
//! (no `id:`, nothing to replay: a board reads the route when it connects).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Days;
use crm_models::analytics::Metric;
use crm_models::event::DomainEvent;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::routes::analytics::{rank, Agents, DayRange, LeaderboardEntry};
use crate::state::AppState;

/// The shortest time between two updates of one board.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the boards are ranked again while engagements arrive.
const RECOMPUTE: Duration = Duration::from_millis(200);
/// How long after the last engagement heard the boards are still ranked
/// again (the consumer may count it a moment later).
const SETTLE: Duration = Duration::from_secs(3);
/// Entries an update carries.
pub const TOP: usize = 10;
/// Updates a slow stream may fall behind before it misses some (they are
/// superseded by the next ones anyway).
const CAPACITY: usize = 256;

/// One board's new top.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardUpdate {
    pub metric: String,
    /// `null` for the board of every agent.
    pub team: Option<String>,
    /// Today, in `CRM_TIMEZONE`.
    pub period: DayRange,
    pub items: Vec<LeaderboardEntry>,
}

/// Where this process's streams hear board updates.
#[derive(Clone)]
pub struct Boards {
    sender: broadcast::Sender<Arc<BoardUpdate>>,
}

impl Default for Boards {
    fn default() -> Self {
        Boards {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Boards {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BoardUpdate>> {
        self.sender.subscribe()
    }

    fn publish(&self, update: BoardUpdate) {
        // An error only means nobody listens right now.
        let _ = self.sender.send(Arc::new(update));
    }

    fn listened(&self) -> bool {
        self.sender.receiver_count() > 0
    }
}

/// Which boards a stream asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardFilter {
    /// Empty: every agent metric.
    pub metrics: HashSet<Metric>,
    /// `None`: the board of every agent.
    pub team: Option<String>,
}

impl BoardFilter {
    /// From the stream's `leaderboard` values (metric names, comma-separated
    /// or repeated; `all` for every one) and `team`; `None` when no board
    /// was asked for.
    pub fn parse<'a>(
        values: impl IntoIterator<Item = &'a str>,
        team: Option<&str>,
    ) -> Result<Option<BoardFilter>, crate::error::ApiError> {
        let mut metrics = HashSet::new();
        let mut asked = false;
        let mut errors = Vec::new();
        for name in values.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
            if name.is_empty() {
                continue;
            }
            asked = true;
            if name == "all" {
                continue;
            }
            match name.parse::<Metric>() {
                Ok(m) if m.per_agent() => {
                    metrics.insert(m);
                }
                _ => errors.push(crm_models::service::FieldError::new(
                    "leaderboard",
                    format!("`{name}` is not a metric of agents (or `all`)"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(crate::error::ApiError::Validation(errors));
        }
        let team = team.map(str::trim).filter(|t| !t.is_empty());
        if !asked {
            if team.is_some() {
                return Err(crate::error::ApiError::field(
                    "team",
                    "name the boards with `leaderboard` (a metric, or `all`)",
                ));
            }
            return Ok(None);
        }
        Ok(Some(BoardFilter {
            metrics,
            team: team.map(str::to_string),
        }))
    }

    pub fn allows(&self, update: &BoardUpdate) -> bool {
        update.team == self.team
            && (self.metrics.is_empty()
                || update
                    .metric
                    .parse::<Metric>()
                    .is_ok_and(|m| self.metrics.contains(&m)))
    }
}

type BoardKey = (Metric, Option<String>);

/// What the watcher remembers of each board.
#[derive(Default)]
struct Sent {
    items: Vec<LeaderboardEntry>,
    at: Option<Instant>,
}

/// Watches the events this process hears and publishes the boards they
/// change, until `stop` turns true.
pub async fn run_watcher(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut heard = state.live.subscribe();
    let mut sent: HashMap<BoardKey, Sent> = HashMap::new();
    let mut primed = false;
    // When to rank next (none: when an engagement is heard; first at once,
    // to know the boards as they are), and until when to go on ranking.
    let mut next_rank: Option<Instant> = Some(Instant::now());
    let mut busy_until = Instant::now();
    loop {
        let due = async {
            match next_rank {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            received = heard.recv() => {
                let relevant = match received {
                    Ok(event) => matches!(
                        event.event,
                        DomainEvent::EngagementRecorded { .. } | DomainEvent::UserUpdated { .. }
                    ),
                    // Missed some: any of them may have changed a board.
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if relevant {
                    busy_until = Instant::now() + SETTLE;
                    next_rank.get_or_insert_with(Instant::now);
                }
                continue;
            }
            _ = due => {}
        }
        let now = Instant::now();
        let mut held = false;
        if state.boards.listened() || !primed {
            match rank_all(&state).await {
                Ok((period, boards)) => {
                    for (key, items) in boards {
                        let last = sent.entry(key.clone()).or_default();
                        if last.items == items {
                            continue;
                        }
                        if !primed {
                            last.items = items;
                            continue;
                        }
                        if last.at.is_some_and(|at| now < at + MIN_INTERVAL) {
                            // Changed again within the second: sent at a later round.
                            held = true;
                            continue;
                        }
                        last.items = items.clone();
                        last.at = Some(now);
                        state.boards.publish(BoardUpdate {
                            metric: key.0.to_string(),
                            team: key.1,
                            period,
                            items,
                        });
                    }
                    primed = true;
                }
                Err(e) => tracing::warn!(error = %e, "analytics: cannot rank the live boards"),
            }
        }
        next_rank = if !primed {
            // The store did not answer: try again later.
            Some(now + MIN_INTERVAL)
        } else {
            (held || now < busy_until).then(|| now + RECOMPUTE)
        };
    }
}

/// Every agent metric's board of today, overall and per team.
async fn rank_all(
    state: &AppState,
) -> Result<(DayRange, Vec<(BoardKey, Vec<LeaderboardEntry>)>), crate::error::ApiError> {
    let zone = state.config.analytics.timezone;
    let today = zone.day_of(&crm_models::time::now());
    let period = DayRange {
        from: today,
        to: today,
    };
    let previous = DayRange {
        from: today - Days::days(1),
        to: today - Days::days(1),
    };
    let store = state.crm.store();
    let blocks = store.analytics_row_blocks(previous.from, period.to).await?;
    let agents = Agents::load(store.as_ref()).await?;
    let teams: Vec<Option<String>> = std::iter::once(None)
        .chain(agents.teams().into_iter().map(Some))
        .collect();
    let mut boards = Vec::new();
    for metric in Metric::ALL.iter().copied().filter(|m| m.per_agent()) {
        for team in &teams {
            let items = rank(
                blocks.iter().flat_map(|b| b.iter()),
                &agents,
                metric,
                period,
                previous,
                team.as_deref(),
                TOP,
            );
            boards.push(((metric, team.clone()), items));
        }
    }
    Ok((period, boards))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn update(metric: &str, team: Option<&str>) -> BoardUpdate {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        BoardUpdate {
            metric: metric.into(),
            team: team.map(str::to_string),
            period: DayRange { from: day, to: day },
            items: Vec::new(),
        }
    }

    #[test]
    fn streams_get_the_boards_they_named() {
        assert_eq!(BoardFilter::parse([], None).unwrap(), None);
        assert!(BoardFilter::parse([], Some("North")).is_err());
        let every = BoardFilter::parse(["all"], None).unwrap().unwrap();
        assert!(every.allows(&update("talk_seconds", None)));
        assert!(!every.allows(&update("talk_seconds", Some("North"))));
        let north = BoardFilter::parse(["sms_outbound,engagements"], Some(" North "))
            .unwrap()
            .unwrap();
        assert!(north.allows(&update("engagements", Some("North"))));
        assert!(!north.allows(&update("calls_inbound", Some("North"))));
        assert!(!north.allows(&update("engagements", None)));
        assert!(BoardFilter::parse(["web_views"], None).is_err());
        assert!(BoardFilter::parse(["revenue"], None).is_err());
    }
}
