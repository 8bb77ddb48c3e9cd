//! One live stream: what it replays, what it pushes, when it ends.
//!
//! The stream subscribes to this process's [`LiveHub`] first, then replays
//! the log after the client's last event (`Last-Event-ID` or `?after=`) page
//! by page until a read finds nothing new, then pushes what the hub hears.
//! Events published while it replayed are both in the replay and in its
//! subscription; the ones replayed are skipped live. Feed order is the order
//! the hub hears events in, so the events heard live that were replayed too
//! come first: once a live event was not replayed, no later one was, and the
//! memory of replayed ids is dropped. It holds at most [`RING`] ids (the
//! subscription holds no more than that before it lags).
//!
//! An id the log no longer holds (older than the retention, or unknown) gets
//! `event: reset` (the client reloads what it shows), then the stream goes
//! on live. A stream that falls a whole ring behind the hub gets
//! `event: closed` with `{"reason":"too_slow"}` and ends; the client
//! reconnects with `Last-Event-ID` and replays what it missed. Nothing is
//! buffered beyond one replay page ([`REPLAY_PAGE`]) and the hub's ring.
//!
//! The stream ends (after `event: closed` with a reason) when the server
//! shuts down (`shutdown`), when the session that opened it ends or its user
//! is deactivated or changes role (`session_ended`), or when the log cannot
//! be read (`unavailable`). Sessions and users are checked every few
//! seconds, and at once when the stream hears that its user was
//! deactivated or changed (the event reaches every instance).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event;
use crm_mobile_bridge::CallerIdCustomer;
use crm_models::event::{DomainEvent, EventEnvelope};
use crm_models::ids::{CustomerId, UserId};
use crm_models::live::RING;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::StreamFilter;
use crate::analytics::boards::BoardUpdate;
use crate::auth::StreamSession;
use crate::state::AppState;

/// Events read from the log per replay step.
pub const REPLAY_PAGE: usize = 100;
/// How often a stream asks whether its session has ended (from memory).
const SESSION_CHECK: Duration = Duration::from_secs(2);
/// How often a stream reads its user again (active, same role).
const USER_CHECK: Duration = Duration::from_secs(30);

/// What opening a stream decided.
pub struct StreamStart {
    pub session: StreamSession,
    pub filter: StreamFilter,
    /// The client's last event, to replay after.
    pub after: Option<Uuid>,
}

/// The stream's events, for [`axum::response::Sse`].
pub fn open(state: AppState, start: StreamStart) -> impl Stream<Item = Result<Event, Infallible>> {
    // Subscribe before the first read of the log, so that nothing published
    // in between is missed.
    let live = state.live.subscribe();
    let boards = state.boards.subscribe();
    let shutdown = state.streams.shutdown_signal();
    let now = Instant::now();
    metrics::gauge!("crm_live_streams").increment(1.0);
    let feed = Feed {
        live,
        boards,
        shutdown,
        filter: start.filter,
        session: start.session,
        phase: match start.after {
            Some(after) => Phase::Replay(after),
            None => Phase::Live,
        },
        replayed: Replayed::default(),
        queue: VecDeque::new(),
        session_check_at: now + SESSION_CHECK,
        user_check_at: now + USER_CHECK,
        state,
    };
    futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    })
}

/// What woke a live stream up.
enum Wake {
    Stop,
    Check,
    Heard(Result<Arc<EventEnvelope>, broadcast::error::RecvError>),
    Board(Result<Arc<BoardUpdate>, broadcast::error::RecvError>),
}

/// Resolves when the server shuts down.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

enum Phase {
    /// Replaying the log after this event.
    Replay(Uuid),
    Live,
    /// Sends what is queued, then ends.
    Ending,
}

struct Feed {
    state: AppState,
    live: broadcast::Receiver<Arc<EventEnvelope>>,
    /// Live leaderboard updates (`leaderboard.updated`), for the boards the
    /// filter names.
    boards: broadcast::Receiver<Arc<BoardUpdate>>,
    shutdown: watch::Receiver<bool>,
    filter: StreamFilter,
    session: StreamSession,
    phase: Phase,
    replayed: Replayed,
    /// At most one replay page, or one closing event.
    queue: VecDeque<Event>,
    session_check_at: Instant,
    user_check_at: Instant,
}

impl Drop for Feed {
    fn drop(&mut self) {
        metrics::gauge!("crm_live_streams").decrement(1.0);
    }
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            match self.phase {
                Phase::Ending => return None,
                Phase::Replay(after) => {
                    if *self.shutdown.borrow() {
                        self.end("shutdown");
                    } else if Instant::now() >= self.session_check_at {
                        self.check_session().await;
                    } else {
                        self.replay_page(after).await;
                    }
                }
                Phase::Live => {
                    if self.queue.capacity() > 0 {
                        // Live, the queue is empty: give back the replay's room.
                        self.queue = VecDeque::new();
                    }
                    let check_at = self.session_check_at;
                    let wake = tokio::select! {
                        biased;
                        _ = stopping(&mut self.shutdown) => Wake::Stop,
                        _ = tokio::time::sleep_until(check_at) => Wake::Check,
                        received = self.live.recv() => Wake::Heard(received),
                        update = self.boards.recv() => Wake::Board(update),
                    };
                    match wake {
                        Wake::Stop => self.end("shutdown"),
                        Wake::Check => self.check_session().await,
                        Wake::Heard(Ok(event)) => {
                            if let Some(sse) = self.live_event(&event).await {
                                return Some(sse);
                            }
                        }
                        Wake::Heard(Err(broadcast::error::RecvError::Lagged(missed))) => {
                            tracing::debug!(user_id = %self.session.user_id, missed, "live stream too slow; closed");
                            metrics::counter!("crm_live_streams_too_slow_total").increment(1);
                            self.end("too_slow");
                        }
                        Wake::Heard(Err(broadcast::error::RecvError::Closed)) => {
                            self.end("shutdown")
                        }
                        Wake::Board(Ok(update)) => {
                            if self.filter.allows_board(&update) {
                                if let Ok(data) = serde_json::to_string(update.as_ref()) {
                                    return Some(
                                        Event::default().event("leaderboard.updated").data(data),
                                    );
                                }
                            }
                        }
                        // A missed board update is superseded by the next one.
                        Wake::Board(Err(broadcast::error::RecvError::Lagged(_))) => {}
                        Wake::Board(Err(broadcast::error::RecvError::Closed)) => {
                            self.end("shutdown")
                        }
                    }
                }
            }
        }
    }

    /// Queues the events of the next page after `after`, or the reset when
    /// the log no longer holds it; goes live when nothing new was found.
    async fn replay_page(&mut self, after: Uuid) {
        let read = self
            .state
            .crm
            .store()
            .read_feed(Some(after), &self.filter.store_filter(), REPLAY_PAGE)
            .await;
        match read {
            Ok(None) => {
                self.replayed.clear();
                self.queue.push_back(reset());
                self.phase = Phase::Live;
            }
            Ok(Some(page)) => {
                for event in &page.events {
                    self.replayed.remember(event.id);
                    if self.filter.allows(event) {
                        if let Some(sse) = self.render(event).await {
                            self.queue.push_back(sse);
                        }
                    }
                }
                self.phase = match page.last {
                    Some(last) if last != after => Phase::Replay(last),
                    _ => Phase::Live,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot replay the event log to a live stream");
                self.end("unavailable");
            }
        }
    }

    /// The event heard live, unless the stream does not carry it or
    /// replayed it already. News that the stream's own user was
    /// deactivated or changed role or password, through any instance, makes
    /// the stream check its session and user at once rather than at the
    /// next periodic check.
    async fn live_event(&mut self, event: &EventEnvelope) -> Option<Event> {
        if changes_access_of(event, self.session.user_id) {
            self.state.auth.stream_user_changed();
            let now = Instant::now();
            self.session_check_at = now;
            self.user_check_at = now;
        }
        if !self.filter.allows(event) {
            return None;
        }
        if !self.replayed.is_empty() {
            if self.replayed.contains(&event.id) {
                return None;
            }
            // Past the replay: nothing later was replayed.
            self.replayed.clear();
        }
        self.render(event).await
    }

    /// Ends the stream when the session or its user no longer holds.
    async fn check_session(&mut self) {
        let now = Instant::now();
        self.session_check_at = now + SESSION_CHECK;
        let auth = &self.state.auth;
        let mut open = auth.stream_session_open(&self.session).await;
        if matches!(open, Ok(true)) && now >= self.user_check_at {
            self.user_check_at = now + USER_CHECK;
            open = auth.stream_user_unchanged(&self.session).await;
        }
        match open {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(user_id = %self.session.user_id, "session ended; live stream closed");
                self.end("session_ended");
            }
            // The store is unreachable: keep the stream and ask again later.
            Err(e) => tracing::debug!(error = %e, "cannot check a live stream's session"),
        }
    }

    fn end(&mut self, reason: &str) {
        self.queue.clear();
        self.queue.push_back(closed(reason));
        self.phase = Phase::Ending;
    }

    /// `id`, `event` and `data` of one event: the envelope as the log keeps
    /// it, except that `call.incoming` carries the caller-ID popup. An
    /// unknown caller's has no customer; on its phone owner's own stream
    /// (and only there) it carries the number the phone asked about, read
    /// from the short-lived signal record, never from the event.
    async fn render(&self, event: &EventEnvelope) -> Option<Event> {
        let data = match &event.event {
            DomainEvent::CallIncoming {
                signal_id,
                device_id,
                user_id,
            } => {
                let mut number = Value::Null;
                let customer = match event.customer_id {
                    Some(id) => popup(&self.state, id).await,
                    None if *user_id == self.session.user_id => {
                        number = unknown_number(&self.state, event, *user_id, *signal_id).await;
                        Value::Null
                    }
                    None => Value::Null,
                };
                let mut envelope = serde_json::to_value(event).ok()?;
                envelope["data"] = json!({
                    "signal_id": signal_id,
                    "device_id": device_id,
                    "user_id": user_id,
                    "customer_id": event.customer_id,
                    "customer": customer,
                    "number": number,
                });
                serde_json::to_string(&envelope)
            }
            _ => serde_json::to_string(event),
        };
        match data {
            Ok(data) => Some(
                Event::default()
                    .id(event.id.to_string())
                    .event(event.name())
                    .data(data),
            ),
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "an event does not encode; not pushed");
                None
            }
        }
    }
}

/// Whether `event` may have taken `user`'s right to a stream away.
fn changes_access_of(event: &EventEnvelope, user: UserId) -> bool {
    match &event.event {
        DomainEvent::UserDeactivated { user_id } => *user_id == user,
        DomainEvent::UserUpdated { user_id, fields } => {
            *user_id == user
                && fields
                    .iter()
                    .any(|f| matches!(f.as_str(), "active" | "role" | "password"))
        }
        _ => false,
    }
}

/// The customer as the caller-ID answer shows it (name, main phone and
/// email, counts, the last five engagements): from the index, else from the
/// store; `null` when the customer is gone.
async fn popup(state: &AppState, id: CustomerId) -> Value {
    let summary = match state.projector.summary(id).await {
        Ok(summary) => summary,
        Err(e) => {
            tracing::warn!(customer_id = %id, error = %e, "no caller-ID popup for a pushed call");
            None
        }
    };
    summary
        .map(CallerIdCustomer::from)
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(Value::Null)
}

/// The number an unknown caller's signal holds, for its owner's popup;
/// `null` when the signal is gone (past its retention) or unreadable.
async fn unknown_number(
    state: &AppState,
    event: &EventEnvelope,
    user: UserId,
    signal: Uuid,
) -> Value {
    match state
        .mobile
        .incoming_call(user, signal, event.occurred_at)
        .await
    {
        Ok(Some(s)) => json!(s.number),
        Ok(None) => Value::Null,
        Err(e) => {
            tracing::warn!(signal_id = %signal, error = %e, "no number for an unknown caller's popup");
            Value::Null
        }
    }
}

fn reset() -> Event {
    Event::default().event("reset").data(
        json!({
            "reason": "cursor_expired",
            "detail": "the event log no longer holds the last event you saw: reload, then follow the stream from now",
        })
        .to_string(),
    )
}

fn closed(reason: &str) -> Event {
    Event::default()
        .event("closed")
        .data(json!({ "reason": reason }).to_string())
}

/// The ids of the last [`RING`] events replayed.
#[derive(Default)]
struct Replayed {
    order: VecDeque<Uuid>,
    ids: HashSet<Uuid>,
}

impl Replayed {
    fn remember(&mut self, id: Uuid) {
        if self.order.len() >= RING {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(id) {
            self.order.push_back(id);
        }
    }

    fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn clear(&mut self) {
        self.order = VecDeque::new();
        self.ids = HashSet::new();
    }
}
