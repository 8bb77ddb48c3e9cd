//! Export: every customer, or every engagement, as CSV or NDJSON, read from
//! the store a page at a time (memory stays flat however large the store).
//!
//! Customers come in `(updated_at, id)` order, merged ones left out (their
//! identifiers and engagements are on the survivor). Engagements come
//! customer by customer in id order, each customer's newest first.
//!
//! Every row ends with a `cursor`: an export that broke off resumes with
//! `after=<cursor of the last row received>` and goes on strictly after that
//! row. Rows of an engagement export carry their customer's name, first
//! phone and first email, so that a file imports into another store through
//! identity linking alone.

use std::collections::VecDeque;
use std::sync::Arc;

use crm_models::customer::{Customer, CustomerStatus};
use crm_models::engagement::{Channel, Engagement, EngagementDetail};
use crm_models::ids::{CustomerId, EngagementId};
use crm_models::service::FieldError;
use crm_models::store::{
    CustomerCursor, EngagementCursor, EngagementFilter, Store, StoreError, StoreResult,
};
use crm_models::time::{self, Timestamp};
use futures::Stream;
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Rows read from the store per page.
pub const PAGE: usize = 1000;
/// Customers read per page of an engagement export.
const CUSTOMER_PAGE: usize = 200;

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Customers,
    Engagements,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "customers" => Ok(Kind::Customers),
            "engagements" => Ok(Kind::Engagements),
            _ => Err("must be customers or engagements".into()),
        }
    }
}

/// The file format of an export or an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Ndjson,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            _ => Err("must be ndjson or csv".into()),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// Where an export resumes: strictly after this row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Customer(CustomerCursor),
    Engagement {
        customer: CustomerId,
        at: EngagementCursor,
    },
}

impl Cursor {
    pub fn encode(&self) -> String {
        match self {
            Cursor::Customer(c) => format!("c.{}.{}", c.updated_at.timestamp_micros(), c.id.0),
            Cursor::Engagement { customer, at } => format!(
                "e.{}.{}.{}",
                customer.0,
                at.occurred_at.timestamp_micros(),
                at.id.0
            ),
        }
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let parts: Vec<&str> = raw.split('.').collect();
        let micros = |s: &str| {
            s.parse::<i64>()
                .ok()
                .and_then(chrono::DateTime::from_timestamp_micros)
        };
        match parts.as_slice() {
            ["c", at, id] => Some(Cursor::Customer(CustomerCursor {
                updated_at: micros(at)?,
                id: CustomerId(Uuid::parse_str(id).ok()?),
            })),
            ["e", customer, at, id] => Some(Cursor::Engagement {
                customer: CustomerId(Uuid::parse_str(customer).ok()?),
                at: EngagementCursor {
                    occurred_at: micros(at)?,
                    id: EngagementId(Uuid::parse_str(id).ok()?),
                },
            }),
            _ => None,
        }
    }
}

/// What an export reads.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub kind: Kind,
    pub format: Format,
    /// Customers (or the customers of engagements) changed at or after.
    pub updated_since: Option<Timestamp>,
    /// Engagements only: one channel.
    pub channel: Option<Channel>,
    /// Engagements only: `occurred_at` at or after.
    pub from: Option<Timestamp>,
    /// Engagements only: `occurred_at` before.
    pub to: Option<Timestamp>,
    pub after: Option<Cursor>,
}

/// Query parameters as written, before checking.
#[derive(Debug, Default, Clone)]
pub struct RawExportRequest<'a> {
    pub format: Option<&'a str>,
    pub updated_since: Option<&'a str>,
    pub channel: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub after: Option<&'a str>,
}

impl ExportRequest {
    /// Reads the parameters, with an error per bad field.
    pub fn parse(kind: Kind, raw: &RawExportRequest<'_>) -> Result<ExportRequest, Vec<FieldError>> {
        let mut errors = Vec::new();
        let format = match raw.format.unwrap_or("ndjson").parse::<Format>() {
            Ok(f) => f,
            Err(e) => {
                errors.push(FieldError::new("format", e));
                Format::Ndjson
            }
        };
        let mut when = |field: &str, value: Option<&str>| {
            value.and_then(|v| match time::parse(v) {
                Ok(t) => Some(t),
                Err(_) => {
                    errors.push(FieldError::new(field, "must be an RFC 3339 time"));
                    None
                }
            })
        };
        let updated_since = when("updated_since", raw.updated_since);
        let from = when("from", raw.from);
        let to = when("to", raw.to);
        let channel = raw.channel.and_then(|c| match c.parse::<Channel>() {
            Ok(c) => Some(c),
            Err(()) => {
                errors.push(FieldError::new(
                    "channel",
                    "must be web, call, sms, whatsapp or email",
                ));
                None
            }
        });
        if kind == Kind::Customers {
            for (field, given) in [("channel", raw.channel), ("from", raw.from), ("to", raw.to)] {
                if given.is_some() {
                    errors.push(FieldError::new(field, "applies to engagements only"));
                }
            }
        }
        let after = raw.after.and_then(|a| match Cursor::decode(a) {
            Some(c @ Cursor::Customer(_)) if kind == Kind::Customers => Some(c),
            Some(c @ Cursor::Engagement { .. }) if kind == Kind::Engagements => Some(c),
            _ => {
                errors.push(FieldError::new(
                    "after",
                    "must be the cursor of a row of this export",
                ));
                None
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ExportRequest {
            kind,
            format,
            updated_since,
            channel,
            from,
            to,
            after,
        })
    }
}

/// One part of an export: encoded rows and how many.
pub struct Part {
    pub bytes: Vec<u8>,
    pub rows: u64,
}

const CUSTOMER_COLUMNS: &[&str] = &[
    "id",
    "name",
    "status",
    "phones",
    "emails",
    "social",
    "created_at",
    "updated_at",
    "last_engagement_at",
    "cursor",
];

const ENGAGEMENT_COLUMNS: &[&str] = &[
    "id",
    "customer_id",
    "customer_name",
    "customer_phone",
    "customer_email",
    "channel",
    "direction",
    "occurred_at",
    "recorded_at",
    "client_event_id",
    "url",
    "view",
    "view_desc",
    "category",
    "object_id",
    "duration_s",
    "status",
    "body",
    "payload_type",
    "payload",
    "subject",
    "cursor",
];

/// A text cell a spreadsheet would read as a formula gets a leading `'`
/// (the import takes it off again).
fn text_cell(raw: &str) -> String {
    if raw.starts_with(['=', '+', '-', '@']) {
        format!("'{raw}")
    } else {
        raw.to_string()
    }
}

fn csv_line(cells: &[String]) -> StoreResult<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(cells)
        .map_err(|e| StoreError::Internal(format!("cannot write a csv row: {e}")))?;
    w.into_inner()
        .map_err(|e| StoreError::Internal(format!("cannot write a csv row: {e}")))
}

fn header(kind: Kind) -> StoreResult<Vec<u8>> {
    let columns = match kind {
        Kind::Customers => CUSTOMER_COLUMNS,
        Kind::Engagements => ENGAGEMENT_COLUMNS,
    };
    csv_line(&columns.iter().map(|c| c.to_string()).collect::<Vec<_>>())
}

fn customer_cursor(c: &Customer) -> Cursor {
    Cursor::Customer(CustomerCursor {
        updated_at: c.updated_at,
        id: c.id,
    })
}

fn customer_row(format: Format, c: &Customer, out: &mut Vec<u8>) -> StoreResult<()> {
    let cursor = customer_cursor(c).encode();
    match format {
        Format::Ndjson => {
            let mut v = serde_json::to_value(c)
                .map_err(|e| StoreError::Internal(format!("cannot encode a customer: {e}")))?;
            if let Value::Object(m) = &mut v {
                m.insert("cursor".into(), cursor.into());
            }
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
        Format::Csv => {
            let join = |items: Vec<String>| items.join("; ");
            let cells = vec![
                c.id.to_string(),
                text_cell(c.name.as_deref().unwrap_or("")),
                match c.status {
                    CustomerStatus::Active => "active",
                    CustomerStatus::Inactive => "inactive",
                    CustomerStatus::Merged => "merged",
                }
                .to_string(),
                join(c.phones.iter().map(|p| p.to_string()).collect()),
                join(c.emails.iter().map(|e| e.to_string()).collect()),
                join(c.social.iter().map(|(n, id)| format!("{n}:{id}")).collect()),
                time::format(&c.created_at),
                time::format(&c.updated_at),
                c.last_engagement_at
                    .as_ref()
                    .map(time::format)
                    .unwrap_or_default(),
                cursor,
            ];
            out.extend_from_slice(&csv_line(&cells)?);
        }
    }
    Ok(())
}

fn engagement_cursor(customer: &Customer, e: &Engagement) -> Cursor {
    Cursor::Engagement {
        customer: customer.id,
        at: EngagementCursor {
            occurred_at: e.occurred_at,
            id: e.id,
        },
    }
}

/// An engagement as its import reads it: the fields of `POST /v1/engagements`
/// (the customer by name, phone and email), with its ids, `recorded_at` and
/// the cursor beside them.
fn engagement_object(customer: &Customer, e: &Engagement) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), e.id.to_string().into());
    m.insert("customer_id".into(), customer.id.to_string().into());
    let mut who = Map::new();
    if let Some(name) = &customer.name {
        who.insert("name".into(), name.clone().into());
    }
    if let Some(p) = customer.phones.first() {
        who.insert("phone".into(), p.to_string().into());
    }
    if let Some(em) = customer.emails.first() {
        who.insert("email".into(), em.to_string().into());
    }
    m.insert("customer".into(), Value::Object(who));
    m.insert("channel".into(), e.channel().as_str().into());
    m.insert("occurred_at".into(), time::format(&e.occurred_at).into());
    m.insert("recorded_at".into(), time::format(&e.recorded_at).into());
    let client_event_id = e
        .source
        .client_event_id
        .clone()
        .unwrap_or_else(|| e.id.to_string());
    m.insert("client_event_id".into(), client_event_id.into());
    let detail = match &e.detail {
        EngagementDetail::Web {
            url,
            view,
            view_desc,
            category,
            object_id,
        } => {
            json!({"url": url, "view": view, "view_desc": view_desc, "category": category, "object_id": object_id})
        }
        EngagementDetail::Call {
            direction,
            duration_s,
            status,
        } => json!({"direction": direction, "duration_s": duration_s, "status": status}),
        EngagementDetail::Sms { direction, body } => json!({"direction": direction, "body": body}),
        EngagementDetail::Whatsapp {
            direction,
            payload_type,
            payload,
        } => json!({"direction": direction, "payload_type": payload_type, "payload": payload}),
        EngagementDetail::Email { direction, subject } => {
            json!({"direction": direction, "subject": subject})
        }
    };
    if let Value::Object(d) = detail {
        m.extend(d.into_iter().filter(|(_, v)| !v.is_null()));
    }
    m
}

fn engagement_row(
    format: Format,
    customer: &Customer,
    e: &Engagement,
    out: &mut Vec<u8>,
) -> StoreResult<()> {
    let mut m = engagement_object(customer, e);
    let cursor = engagement_cursor(customer, e).encode();
    match format {
        Format::Ndjson => {
            m.insert("cursor".into(), cursor.into());
            out.extend_from_slice(Value::Object(m).to_string().as_bytes());
            out.push(b'\n');
        }
        Format::Csv => {
            let who = m.remove("customer");
            let who_field = |f: &str| {
                who.as_ref()
                    .and_then(|w| w.get(f))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let cells: Vec<String> = ENGAGEMENT_COLUMNS
                .iter()
                .map(|col| match *col {
                    "customer_name" => text_cell(&who_field("name")),
                    "customer_phone" => who_field("phone"),
                    "customer_email" => who_field("email"),
                    "cursor" => cursor.clone(),
                    other => match m.get(other) {
                        Some(Value::String(s)) => text_cell(s),
                        Some(Value::Null) | None => String::new(),
                        Some(v) => v.to_string(),
                    },
                })
                .collect();
            out.extend_from_slice(&csv_line(&cells)?);
        }
    }
    Ok(())
}

/// Where a running export is.
enum Position {
    Start,
    Customers(Option<CustomerCursor>),
    Engagements {
        /// Customers read and not exported yet.
        queue: VecDeque<Customer>,
        /// The customer being exported, and its last engagement sent.
        current: Option<Box<(Customer, Option<EngagementCursor>)>>,
        /// The last customer read from the store.
        read_after: Option<CustomerId>,
        /// No more customers to read.
        read_all: bool,
    },
    Done,
}

/// A running export: call [`Export::next_part`] until it answers `None`.
pub struct Export {
    store: Arc<dyn Store>,
    request: ExportRequest,
    position: Position,
}

impl Export {
    pub fn new(store: Arc<dyn Store>, request: ExportRequest) -> Self {
        Export {
            store,
            request,
            position: Position::Start,
        }
    }

    /// The next part (the CSV header first), or `None` at the end.
    pub async fn next_part(&mut self) -> StoreResult<Option<Part>> {
        loop {
            match std::mem::replace(&mut self.position, Position::Done) {
                Position::Done => return Ok(None),
                Position::Start => {
                    self.position = self.start().await?;
                    if self.request.format == Format::Csv {
                        return Ok(Some(Part {
                            bytes: header(self.request.kind)?,
                            rows: 0,
                        }));
                    }
                }
                Position::Customers(after) => {
                    let page = self
                        .store
                        .list_customers(self.request.updated_since, after, PAGE)
                        .await?;
                    if page.len() == PAGE {
                        self.position = Position::Customers(page.last().map(|c| CustomerCursor {
                            updated_at: c.updated_at,
                            id: c.id,
                        }));
                    }
                    let mut part = Part {
                        bytes: Vec::new(),
                        rows: 0,
                    };
                    for c in page.iter().filter(|c| c.status != CustomerStatus::Merged) {
                        customer_row(self.request.format, c, &mut part.bytes)?;
                        part.rows += 1;
                    }
                    if part.rows > 0 {
                        return Ok(Some(part));
                    }
                }
                Position::Engagements {
                    mut queue,
                    current,
                    mut read_after,
                    mut read_all,
                } => {
                    if let Some(current) = current {
                        let (customer, after) = *current;
                        let filter = EngagementFilter {
                            channel: self.request.channel,
                            since: self.request.from,
                            until: self.request.to,
                        };
                        let page = self
                            .store
                            .list_engagements(customer.id, &filter, after, PAGE)
                            .await?;
                        let mut part = Part {
                            bytes: Vec::new(),
                            rows: 0,
                        };
                        for e in &page {
                            engagement_row(self.request.format, &customer, e, &mut part.bytes)?;
                            part.rows += 1;
                        }
                        let next = page.last().map(|e| EngagementCursor {
                            occurred_at: e.occurred_at,
                            id: e.id,
                        });
                        let current = (page.len() == PAGE).then(|| Box::new((customer, next)));
                        self.position = Position::Engagements {
                            queue,
                            current,
                            read_after,
                            read_all,
                        };
                        if part.rows > 0 {
                            return Ok(Some(part));
                        }
                        continue;
                    }
                    if queue.is_empty() && !read_all {
                        let page = self
                            .store
                            .customers_with_latest_engagements(read_after, CUSTOMER_PAGE, 0)
                            .await?;
                        read_all = page.len() < CUSTOMER_PAGE;
                        read_after = page.last().map(|(c, _)| c.id).or(read_after);
                        let since = self.request.updated_since;
                        queue.extend(page.into_iter().map(|(c, _)| c).filter(|c| {
                            c.status != CustomerStatus::Merged
                                && since.is_none_or(|s| c.updated_at >= s)
                        }));
                    }
                    match queue.pop_front() {
                        Some(next) => {
                            self.position = Position::Engagements {
                                queue,
                                current: Some(Box::new((next, None))),
                                read_after,
                                read_all,
                            };
                        }
                        None if read_all => return Ok(None),
                        None => {
                            self.position = Position::Engagements {
                                queue,
                                current: None,
                                read_after,
                                read_all,
                            };
                        }
                    }
                }
            }
        }
    }

    async fn start(&self) -> StoreResult<Position> {
        Ok(match (self.request.kind, self.request.after) {
            (Kind::Customers, Some(Cursor::Customer(c))) => Position::Customers(Some(c)),
            (Kind::Customers, _) => Position::Customers(None),
            (Kind::Engagements, Some(Cursor::Engagement { customer, at })) => {
                // The customer the export broke off in: finish it first.
                let current = self
                    .store
                    .get_customer(customer)
                    .await?
                    .filter(|c| c.status != CustomerStatus::Merged)
                    .map(|c| Box::new((c, Some(at))));
                Position::Engagements {
                    queue: VecDeque::new(),
                    current,
                    read_after: Some(customer),
                    read_all: false,
                }
            }
            (Kind::Engagements, _) => Position::Engagements {
                queue: VecDeque::new(),
                current: None,
                read_after: None,
                read_all: false,
            },
        })
    }

    /// The export as a stream of parts.
    pub fn into_stream(self) -> impl Stream<Item = StoreResult<Part>> + Send {
        futures::stream::try_unfold(self, |mut export| async move {
            Ok(export.next_part().await?.map(|part| (part, export)))
        })
    }
}
