//! Events out: the public event feed (`GET /v1/events`) and live push to
//! desktops over Server-Sent Events (`GET /v1/stream`, with single-use
//! tickets from `POST /v1/stream/tickets` for browsers).
//!
//! Both carry the envelope the log keeps, version 1:
//! `{id, type, occurred_at, customer_id?, data}`, ids and types only (no
//! name, number, address or message body). The one exception is
//! `call.incoming` on the stream, whose `data` carries the caller-ID popup
//! (the customer as the phone's caller-ID answer shows it), so that a
//! desktop shows it without another request.

use std::borrow::Cow;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use crm_models::event::{EventEnvelope, EventFilter, EVENT_TYPES};
use crm_models::staff::Role;
use serde::Serialize;
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{EventReader, StreamSession};
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorCode, Problem};
use crate::state::AppState;
use crate::stream::filter::{parse_customers, parse_types};
use crate::stream::{StreamFilter, StreamStart};

/// Events per feed page unless `limit` says otherwise.
pub const DEFAULT_FEED_LIMIT: usize = 100;
/// Most events per feed page.
pub const MAX_FEED_LIMIT: usize = 1000;
/// A comment on an idle stream this often, so that proxies keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(read_events))
        .routes(routes!(create_stream_ticket))
        .routes(routes!(stream))
}

/// Documents `GET /v1/events`'s query (read by hand: `types` may repeat).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FeedQuery {
    /// The `next_cursor` of the previous page (an event id); from the
    /// start of the log's retention without it.
    #[param(format = Uuid)]
    after: Option<String>,
    /// Event types to keep, comma-separated or repeated (default: all).
    types: Option<Vec<String>>,
    /// Only events about this customer (the envelope's `customer_id`).
    #[param(format = Uuid)]
    customer_id: Option<String>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// In feed order (the order events became visible, which is the order
    /// of the live stream; not always the order of their ids).
    #[schema(value_type = Vec<EventV1>)]
    pub items: Vec<EventEnvelope>,
    /// The last event this page examined (matching the filter or not): pass
    /// it as `after` for the next page. A page with no items and a cursor
    /// means nothing more yet: poll again later with the same cursor.
    /// Absent only when the log is empty and no `after` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The event log in feed order, within its retention (admins, and API keys
/// with the scope `events:read`). Envelopes hold ids, never personal data.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(FeedQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: agents, and keys without `events:read`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`cursor_expired`: `after` is not in the log (older than its retention, or never an event); start again without it", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown type, a bad id or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn read_events(
    State(state): State<AppState>,
    EventReader(_reader): EventReader,
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
) -> Result<ApiJson<EventPage>, ApiError> {
    let mut after = None;
    let mut types = Vec::new();
    let mut customers = Vec::new();
    let mut limit = None;
    for (name, value) in &query {
        match name.as_str() {
            "after" => after = Some(parse_event_id("after", value)?),
            "types" => types.push(value.as_str()),
            "customer_id" => customers.push(value.as_str()),
            "limit" => {
                limit = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_FEED_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::field(
                                "limit",
                                format!("must be between 1 and {MAX_FEED_LIMIT}"),
                            )
                        })?,
                )
            }
            other => return Err(unknown_parameter(other)),
        }
    }
    let types = parse_types("types", types)?;
    let customer_id = match parse_customers("customer_id", customers)?.as_slice() {
        [] => None,
        [one] => Some(*one),
        _ => return Err(ApiError::field("customer_id", "name one customer")),
    };
    let filter = EventFilter {
        types: types.iter().map(|t| t.to_string()).collect(),
        customer_id,
    };
    let page = state
        .crm
        .store()
        .read_feed(after, &filter, limit.unwrap_or(DEFAULT_FEED_LIMIT))
        .await?
        .ok_or_else(cursor_expired)?;
    Ok(ApiJson(EventPage {
        items: page.events,
        next_cursor: page.last.map(|id| id.to_string()),
    }))
}

/// A stream ticket.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamTicket {
    /// For `GET /v1/stream?ticket=`: once, within 60 seconds.
    pub ticket: String,
    /// When it expires (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: String,
}

/// A single-use ticket, valid for 60 seconds, that opens one live stream
/// as the caller (for `EventSource`, which cannot send an `Authorization`
/// header). Staff only, with an access token.
#[utoipa::path(
    post, path = "/v1/stream/tickets", tag = "events",
    responses(
        (status = 200, body = StreamTicket),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: staff access tokens only", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_stream_ticket(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<ApiJson<StreamTicket>, ApiError> {
    let session = state.auth.stream_session(&headers).await?;
    let ticket = state.streams.tickets.issue(&session)?;
    let expires_at = chrono::DateTime::from_timestamp(ticket.expires_at, 0)
        .map(|t| crm_models::time::format(&t))
        .ok_or_else(|| ApiError::Internal("a ticket expiry out of range".into()))?;
    Ok(ApiJson(StreamTicket {
        ticket: ticket.ticket,
        expires_at,
    }))
}

/// Documents `GET /v1/stream`'s query (read by hand: `customer` repeats).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StreamQuery {
    /// Event types to receive, comma-separated or repeated (default: all
    /// the caller may receive).
    types: Option<Vec<String>>,
    /// A customer whose events to receive (repeat, at most 50). Agents
    /// receive customer and engagement events only for these; admins
    /// narrow their stream to them.
    customer: Option<Vec<String>>,
    /// The last event seen, to replay after (the `Last-Event-ID` header
    /// wins when both are sent).
    #[param(format = Uuid)]
    after: Option<String>,
    /// A ticket from `POST /v1/stream/tickets`, instead of an
    /// `Authorization` header. Access tokens are never accepted here.
    ticket: Option<String>,
    /// Live leaderboards to receive as `leaderboard.updated` (today's top
    /// ten, at most once a second per board): agent metrics,
    /// comma-separated or repeated, or `all`.
    leaderboard: Option<Vec<String>>,
    /// With `leaderboard`: the boards of this team (default: of every agent).
    team: Option<String>,
}

/// Live events (Server-Sent Events) for staff: each event has `id:` (the
/// event id), `event:` (its type) and `data:` (the envelope as JSON); a
/// comment every 15 s keeps the connection open. After a disconnect, send
/// `Last-Event-ID` (or `?after=`): what was missed is replayed first, once
/// and in order. `event: reset` says the last event seen is no longer in
/// the log (reload, then follow from now); `event: closed` ends the stream
/// with a reason (`too_slow`: reconnect with `Last-Event-ID`;
/// `session_ended`; `shutdown`: reconnect; `unavailable`).
///
/// Filtered on the server: agents receive `call.incoming` for their own
/// phones (with the caller-ID popup in `data.customer`), their own devices'
/// events, and customer and engagement events for the customers they name
/// in `customer`; never `user.*` or `webhook.*`. Admins receive everything
/// unless they narrow it.
///
/// With `leaderboard`, staff also receive `event: leaderboard.updated`
/// (no `id:`: it is not in the log) whenever the named boards of today
/// change, with `data` as `{metric, team, period, items}`, the items as
/// `GET /v1/analytics/leaderboard` lists them.
#[utoipa::path(
    get, path = "/v1/stream", tag = "events",
    params(StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The last event received, to replay after"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`", body = String, content_type = "text/event-stream"),
        (status = 401, description = "`unauthorized`: no valid access token or ticket", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: staff only", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: an unknown or forbidden type, a bad id, more than 50 customers, an unknown leaderboard metric", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ticket = query
        .iter()
        .find(|(name, _)| name == "ticket")
        .map(|(_, value)| value.as_str());
    let session = match ticket {
        Some(ticket) => {
            let (user, sid) = state.streams.tickets.redeem(ticket).await?;
            state.auth.resume_stream_session(user, sid).await?
        }
        None => state.auth.stream_session(&headers).await?,
    };
    let mut after = None;
    let mut types = Vec::new();
    let mut customers = Vec::new();
    let mut boards = Vec::new();
    let mut team = None;
    for (name, value) in &query {
        match name.as_str() {
            "ticket" => {}
            "after" => after = Some(value.as_str()),
            "types" => types.push(value.as_str()),
            "customer" => customers.push(value.as_str()),
            "leaderboard" => boards.push(value.as_str()),
            "team" => team = Some(value.as_str()),
            other => return Err(unknown_parameter(other)),
        }
    }
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("").trim())
        .filter(|v| !v.is_empty());
    let after = match last_event_id {
        Some(id) => Some(parse_event_id("Last-Event-ID", id)?),
        None => after.map(|a| parse_event_id("after", a)).transpose()?,
    };
    let filter = stream_filter(&session, &types, &customers)?
        .with_boards(crate::analytics::boards::BoardFilter::parse(boards, team)?);
    if *state.streams.shutdown_signal().borrow() {
        return Err(ApiError::Unavailable(
            "the server is shutting down; reconnect".into(),
        ));
    }
    tracing::debug!(user_id = %session.user_id, replay = after.is_some(), "live stream opened");
    let events = crate::stream::open(
        state,
        StreamStart {
            session,
            filter,
            after,
        },
    );
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    Ok((
        [(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        sse,
    )
        .into_response())
}

fn stream_filter(
    session: &StreamSession,
    types: &[&str],
    customers: &[&str],
) -> Result<StreamFilter, ApiError> {
    let types = parse_types("types", types.iter().copied())?;
    let customers = parse_customers("customer", customers.iter().copied())?;
    match session.role {
        Role::Admin => StreamFilter::admin(types, customers),
        _ => StreamFilter::agent(session.user_id, types, customers),
    }
}

fn parse_event_id(field: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    raw.trim()
        .parse()
        .map_err(|_| ApiError::field(field, "not an event id"))
}

fn unknown_parameter(name: &str) -> ApiError {
    ApiError::field("query", format!("unknown parameter `{name}`"))
}

fn cursor_expired() -> ApiError {
    ApiError::bad_request(
        ErrorCode::CursorExpired,
        "the event log no longer holds this cursor (older than its retention, or never an event); \
         read again from the start, without `after`",
    )
}

/// An event as the feed and the stream carry it, version 1 of the
/// envelope: one schema per type, told apart by `type`.
pub struct EventV1;

impl PartialSchema for EventV1 {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new().description(Some(
            "Version 1 of the event envelope: `{id, type, occurred_at, customer_id?, data}`. \
             Ids and types only, never personal data; consumers read current state from the API. \
             New types may be added: ignore the ones you do not know.",
        ));
        for name in EVENT_TYPES {
            one_of = one_of.item(Ref::from_schema_name(schema_name(name)));
        }
        let mut discriminator = utoipa::openapi::Discriminator::new("type");
        for name in EVENT_TYPES {
            discriminator.mapping.insert(
                name.to_string(),
                format!("#/components/schemas/{}", schema_name(name)),
            );
        }
        one_of.discriminator(Some(discriminator)).into()
    }
}

impl ToSchema for EventV1 {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Event")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for name in EVENT_TYPES {
            schemas.push((schema_name(name), event_schema(name)));
        }
        schemas.push((
            crm_mobile_bridge::CallerIdCustomer::name().into_owned(),
            crm_mobile_bridge::CallerIdCustomer::schema(),
        ));
        let mut nested = Vec::new();
        <crm_mobile_bridge::CallerIdCustomer as ToSchema>::schemas(&mut nested);
        schemas.extend(nested);
    }
}

/// `customer.created` -> `CustomerCreatedEvent`.
fn schema_name(event_type: &str) -> String {
    let mut name = String::new();
    for part in event_type.split(['.', '_']) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name.push_str("Event");
    name
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn uuid() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
}

fn nullable_uuid() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
}

fn date_time() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

fn list(items: ObjectBuilder) -> ArrayBuilder {
    ArrayBuilder::new().items(items)
}

fn actor() -> ObjectBuilder {
    ObjectBuilder::new()
        .description(Some(
            "Who made the change: `{kind: user, id}`, `{kind: device, id}` or `{kind: auto}` (linking on evidence)",
        ))
        .property(
            "kind",
            string().enum_values(Some(["user", "device", "auto"])),
        )
        .required("kind")
        .property("id", string())
}

/// The `data` of one event type.
fn data_schema(event_type: &str) -> ObjectBuilder {
    let data = ObjectBuilder::new();
    match event_type {
        "customer.created" => data,
        "customer.updated" => data
            .property(
                "fields",
                list(string()).description(Some(
                    "Profile fields that changed: `name`, `phones`, `emails`, `social`, `status`",
                )),
            )
            .required("fields"),
        "customer.erased" => data.property(
            "merged_ids",
            list(uuid()).description(Some("Customers merged into it, erased with it")),
        ),
        "customers.merged" => data
            .property("merge_id", nullable_uuid())
            .property("survivor_id", uuid())
            .property("merged_ids", list(uuid()))
            .property("by", actor())
            .required("survivor_id")
            .required("merged_ids")
            .required("by"),
        "customers.unmerged" => data
            .property("merge_id", uuid())
            .property("customer_ids", list(uuid()))
            .property("by", actor())
            .required("merge_id")
            .required("customer_ids")
            .required("by"),
        "engagement.recorded" => data
            .property("engagement_id", uuid())
            .property(
                "channel",
                string().enum_values(Some(["web", "call", "sms", "whatsapp", "email"])),
            )
            .property(
                "direction",
                string().enum_values(Some(["inbound", "outbound"])),
            )
            .property("occurred_at", date_time())
            .property("device_id", uuid())
            .property(
                "user_id",
                string().description(Some("Who recorded it: `user:<id>` or `key:<id>`")),
            )
            .required("engagement_id")
            .required("channel")
            .required("occurred_at"),
        "call.incoming" => data
            .description(Some(
                "In the feed: ids only; about no customer when the number is unknown. On the \
                 live stream also `customer_id` and `customer`, the caller-ID popup (null when \
                 the number is unknown or the customer is gone), and `number`: for an unknown \
                 caller, on the phone owner's own stream only, the number the phone asked \
                 about (null otherwise).",
            ))
            .property("signal_id", uuid())
            .property("device_id", uuid())
            .property("user_id", uuid().description(Some("The phone's owner")))
            .property("customer_id", uuid())
            .property("number", string().description(Some("E.164")))
            .property(
                "customer",
                RefOr::Ref(Ref::from_schema_name(
                    crm_mobile_bridge::CallerIdCustomer::name(),
                )),
            )
            .required("signal_id")
            .required("device_id")
            .required("user_id"),
        "device.enrolled" | "device.revoked" => data
            .property("device_id", uuid())
            .property("user_id", uuid())
            .required("device_id")
            .required("user_id"),
        "user.created" | "user.deactivated" => data.property("user_id", uuid()).required("user_id"),
        "user.updated" => data
            .property("user_id", uuid())
            .property("fields", list(string()))
            .required("user_id")
            .required("fields"),
        "webhook.disabled" => data
            .property("webhook_id", string())
            .property("reason", string())
            .required("webhook_id")
            .required("reason"),
        _ => data,
    }
}

fn event_schema(event_type: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .title(Some(event_type))
        .description(Some(format!("`{event_type}`, envelope version 1")))
        .property(
            "id",
            uuid().description(Some(
                "The event id (a UUIDv7); `Last-Event-ID` and the feed's cursor",
            )),
        )
        .property("type", string().enum_values(Some([event_type])))
        .property("occurred_at", date_time())
        .property(
            "customer_id",
            uuid().description(Some("The customer the event is about, when there is one")),
        )
        .property("data", data_schema(event_type))
        .required("id")
        .required("type")
        .required("occurred_at")
        .required("data")
        .into()
}
