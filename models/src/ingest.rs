//! One parser for engagements, whichever route they arrive by.
//!
//! `/v1/engagements` (and its batch), `/v1/track` and `/v1/mobile/events`
//! each keep their own wire shape ([`Shape`]), but every one of them is read
//! here, by [`parse_engagement`], with one set of limits: field lengths, how
//! far in the future `occurred_at` may be, control and bidirectional
//! characters, a non-empty `client_event_id`, keys given twice, strict RFC
//! 3339 times, and phone numbers and email addresses written any way a
//! person would recognise them. A new channel is a new [`EngagementDetail`]
//! variant and a branch of `read_detail` here; the routes do not change.
//!
//! Every problem is reported with its field, one message per field, so that
//! a client learns all that is wrong with a request at once.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use chrono::Duration;
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Number, Value};
use unicode_normalization::UnicodeNormalization;

use crate::customer::Identifier;
use crate::email::{self, Email};
use crate::engagement::{CallStatus, Channel, Direction, EngagementDetail, PayloadType, Source};
use crate::ids::{CustomerId, DeviceId};
use crate::phone::{self, PhoneNumber, Region};
use crate::service::{EngagementTarget, FieldError, NewEngagement, MAX_NAME_CHARS};
use crate::time::{self, Timestamp};

/// Longest SMS, WhatsApp or other message text, in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Longest URL or description, in characters.
pub const MAX_URL_CHARS: usize = 2_048;
/// Longest label (`view`, `category`, `object_id`), in characters.
pub const MAX_LABEL_CHARS: usize = 200;
/// Longest email subject, in characters (RFC 5322's line length).
pub const MAX_SUBJECT_CHARS: usize = 998;
/// Longest `client_event_id` or `anonymous_id`, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;
/// How far in the future `occurred_at` may be (clock skew), in hours.
pub const MAX_FUTURE_HOURS: i64 = 24;
/// Longest time text, in characters.
const MAX_TIME_CHARS: usize = 64;

/// Every channel's own fields, as `/v1/engagements` names them.
const CHANNEL_FIELDS: [&str; 12] = [
    "direction",
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
];
/// The channel fields of a phone's log entry.
const PHONE_CHANNEL_FIELDS: [&str; 4] = ["direction", "body", "duration_s", "status"];

// ---------------------------------------------------------------------------
// Text as people and systems write it
// ---------------------------------------------------------------------------

/// Bidirectional controls: they reorder how text is shown (U+202E makes
/// `gpj.exe` read `exe.jpg`), so names and texts may not carry them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// What a piece of text may hold besides printable characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Names, labels, ids, URLs: one line, no control characters.
    Line,
    /// Message texts and subjects: newlines, tabs and bidirectional marks too.
    Body,
}

/// Checks `text` for control characters (C0, DEL, C1; a body may hold
/// newlines, carriage returns before them, and tabs) and, in one-line text,
/// bidirectional controls. The message names the first offending character.
pub fn check_text(text: &str, kind: TextKind) -> Result<(), String> {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let allowed = match c {
            '\n' | '\t' => kind == TextKind::Body,
            '\r' => kind == TextKind::Body && chars.peek() == Some(&'\n'),
            _ => false,
        };
        // Bidirectional controls can disguise a name or a label (U+202E
        // shows `gpj.exe` as `exe.jpg`); in a message they are part of
        // how Arabic and Hebrew text is written, so a body keeps them.
        if is_bidi_control(c) && kind == TextKind::Line {
            return Err(format!(
                "must not contain U+{:04X}, a character that reorders how text is displayed",
                u32::from(c)
            ));
        }
        if c.is_control() && !allowed {
            let what = match (c, kind) {
                ('\n' | '\r', TextKind::Line) => "a line break",
                ('\t', TextKind::Line) => "a tab",
                _ => "a control character",
            };
            return Err(format!("must not contain {what} (U+{:04X})", u32::from(c)));
        }
    }
    Ok(())
}

/// Folds the compatibility forms people's keyboards and apps produce into
/// the plain ones, for reading identifiers: full-width characters
/// (`８１２２`, `＠`) become ASCII (Unicode NFKC), every kind of space
/// (non-breaking, thin, ideographic) becomes a space, dashes and minus signs
/// become `-`, Arabic-Indic digits become ASCII digits, and invisible
/// formatting characters (bidirectional marks that WhatsApp puts around
/// numbers, zero-width spaces, byte order marks) are dropped. ASCII input is
/// returned as it is.
pub fn fold_written(raw: &str) -> Cow<'_, str> {
    if raw.is_ascii() {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.nfkc() {
        match c {
            c if is_bidi_control(c) => {}
            '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' => {}
            c if c.is_whitespace() => out.push(' '),
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' => out.push('-'),
            '\u{0660}'..='\u{0669}' => out.push(shift_digit(c, 0x0660)),
            '\u{06F0}'..='\u{06F9}' => out.push(shift_digit(c, 0x06F0)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn shift_digit(c: char, zero: u32) -> char {
    char::from_digit(u32::from(c) - zero, 10).unwrap_or(c)
}

// ---------------------------------------------------------------------------
// JSON with its repeated keys
// ---------------------------------------------------------------------------

/// Where a key was given twice: the path of its object (as in field errors,
/// `items[2].customer`; empty for the top) and the key.
pub type Repeated = (String, String);

/// A JSON value as a client sent it, with every key it gave more than once
/// in an object. (Plain `serde_json` keeps the last of a repeated key without
/// a word, so `{"email": "a@x.io", "email": "b@x.io"}` would mean whichever
/// the parser in between happened to keep.) The value keeps the last one;
/// the parsers refuse the field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Json {
    pub value: Value,
    repeated: Vec<Repeated>,
}

impl Json {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// A value known to have no repeated keys (built in code).
    pub fn from_value(value: Value) -> Self {
        Json {
            value,
            repeated: Vec::new(),
        }
    }

    /// Every repeated key, paths from the top.
    pub fn repeated(&self) -> &[Repeated] {
        &self.repeated
    }

    /// The repeated keys at or below `path`, paths relative to it.
    pub fn repeated_under(&self, path: &str) -> Vec<Repeated> {
        under(&self.repeated, path)
    }

    /// The whole value as one item to parse.
    pub fn item(&self) -> Item<'_> {
        Item {
            value: &self.value,
            repeated: self.repeated.clone(),
        }
    }
}

fn under(repeated: &[Repeated], path: &str) -> Vec<Repeated> {
    repeated
        .iter()
        .filter_map(|(parent, key)| {
            if path.is_empty() {
                return Some((parent.clone(), key.clone()));
            }
            let rest = parent.strip_prefix(path)?;
            if rest.is_empty() {
                Some((String::new(), key.clone()))
            } else if let Some(r) = rest.strip_prefix('.') {
                Some((r.to_string(), key.clone()))
            } else if rest.starts_with('[') {
                Some((rest.to_string(), key.clone()))
            } else {
                None
            }
        })
        .collect()
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repeated = RefCell::new(Vec::new());
        let value = d.deserialize_any(Node {
            path: String::new(),
            repeated: &repeated,
        })?;
        Ok(Json {
            value,
            repeated: repeated.into_inner(),
        })
    }
}

/// Reads one JSON node at `path`, noting repeated keys.
struct Node<'a> {
    path: String,
    repeated: &'a RefCell<Vec<Repeated>>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let node = Node {
                path: format!("{}[{}]", self.path, out.len()),
                repeated: self.repeated,
            };
            match seq.next_element_seed(node)? {
                Some(v) => out.push(v),
                None => break,
            }
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            let value = map.next_value_seed(Node {
                path,
                repeated: self.repeated,
            })?;
            if out.insert(key.clone(), value).is_some() {
                self.repeated.borrow_mut().push((self.path.clone(), key));
            }
        }
        Ok(Value::Object(out))
    }
}

/// A JSON list of items (a batch), each read with its repeated keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonList(Json);

impl JsonList {
    pub fn len(&self) -> usize {
        self.0.value.as_array().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, in order.
    pub fn items(&self) -> impl Iterator<Item = Item<'_>> {
        self.0
            .value
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, value)| Item {
                value,
                repeated: self.0.repeated_under(&format!("[{i}]")),
            })
    }

    /// A list known to have no repeated keys (built in code).
    pub fn from_values(values: Vec<Value>) -> Self {
        JsonList(Json::from_value(Value::Array(values)))
    }
}

impl<'de> Deserialize<'de> for JsonList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Json::deserialize(d)?;
        if !json.value.is_array() {
            return Err(serde::de::Error::custom("must be a list"));
        }
        Ok(JsonList(json))
    }
}

/// One object to parse, with the keys it repeats (paths relative to it).
#[derive(Debug, Clone)]
pub struct Item<'a> {
    pub value: &'a Value,
    pub repeated: Vec<Repeated>,
}

impl<'a> Item<'a> {
    /// A value known to have no repeated keys.
    pub fn plain(value: &'a Value) -> Self {
        Item {
            value,
            repeated: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Reading an object field by field
// ---------------------------------------------------------------------------

/// Reads a JSON object field by field, collecting every problem with its
/// path (`items[3].occurred_at`), one message per field.
pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    seen: BTreeSet<&'a str>,
    pub errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// `prefix` is prepended to field names in errors (`items[3].`). A value
    /// that is not an object is reported as `body` (or the prefix's field).
    pub fn new(value: &'a Value, prefix: &str) -> Result<Self, FieldError> {
        Self::named(value, prefix, "body")
    }

    /// [`Fields::new`], naming a top-level value that is not an object `whole`.
    pub fn named(value: &'a Value, prefix: &str, whole: &str) -> Result<Self, FieldError> {
        let object = value.as_object().ok_or_else(|| {
            let field = if prefix.is_empty() {
                whole.to_string()
            } else {
                prefix.trim_end_matches('.').to_string()
            };
            FieldError::new(field, "must be a JSON object")
        })?;
        Ok(Fields {
            object,
            prefix: prefix.to_string(),
            seen: BTreeSet::new(),
            errors: Vec::new(),
        })
    }

    pub fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Reports a problem with `key`, unless it has one already.
    pub fn error(&mut self, key: &str, message: impl ToString) {
        let path = self.path(key);
        if !self.errors.iter().any(|e| e.field == path) {
            self.errors.push(FieldError::new(path, message));
        }
    }

    /// Reports every key given twice (paths relative to this object).
    pub fn refuse_repeated(&mut self, repeated: &[Repeated]) {
        for (parent, key) in repeated {
            let field = if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            };
            self.error(&field, "is given more than once; give it once");
        }
    }

    /// The raw value, absent and `null` alike as `None`.
    pub fn value(&mut self, key: &'a str) -> Option<&'a Value> {
        self.seen.insert(key);
        self.object.get(key).filter(|v| !v.is_null())
    }

    /// Whether the field is there and not `null`.
    pub fn has(&self, key: &str) -> bool {
        self.object.get(key).is_some_and(|v| !v.is_null())
    }

    fn seen(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    /// A string of at most `max` characters, as it was sent.
    fn raw_string(&mut self, key: &'a str, required: bool, max: usize) -> Option<String> {
        match self.value(key) {
            None => {
                if required {
                    self.error(key, "is required");
                }
                None
            }
            Some(Value::String(s)) => {
                if s.chars().count() > max {
                    self.error(key, format!("must be at most {max} characters long"));
                    None
                } else if required && s.trim().is_empty() {
                    self.error(key, "must not be empty");
                    None
                } else {
                    Some(s.clone())
                }
            }
            Some(_) => {
                self.error(key, "must be a string");
                None
            }
        }
    }

    /// One line of text of at most `max` characters, without control or
    /// bidirectional characters; `required` also refuses blank text.
    pub fn string(&mut self, key: &'a str, required: bool, max: usize) -> Option<String> {
        self.checked(key, required, max, TextKind::Line)
    }

    /// A message text: [`Fields::string`] that may hold newlines and tabs.
    pub fn text(&mut self, key: &'a str, required: bool, max: usize) -> Option<String> {
        self.checked(key, required, max, TextKind::Body)
    }

    fn checked(
        &mut self,
        key: &'a str,
        required: bool,
        max: usize,
        kind: TextKind,
    ) -> Option<String> {
        let s = self.raw_string(key, required, max)?;
        match check_text(&s, kind) {
            Ok(()) => Some(s),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    /// An id chosen by the client (`client_event_id`, `anonymous_id`): not
    /// blank even when optional, trimmed.
    pub fn client_id(&mut self, key: &'a str, required: bool) -> Option<String> {
        let raw = self.string(key, required, MAX_CLIENT_ID_CHARS)?;
        let id = raw.trim();
        if id.is_empty() {
            self.error(key, "must not be empty");
            return None;
        }
        Some(id.to_string())
    }

    /// A person's name: one line of at most [`MAX_NAME_CHARS`], trimmed;
    /// blank is none.
    pub fn name(&mut self, key: &'a str) -> Option<String> {
        let raw = self.string(key, false, MAX_NAME_CHARS)?;
        let name = raw.trim();
        (!name.is_empty()).then(|| name.to_string())
    }

    /// A value of an enum or other serde type.
    pub fn typed<T: DeserializeOwned>(
        &mut self,
        key: &'a str,
        required: bool,
        expected: &str,
    ) -> Option<T> {
        match self.value(key) {
            None => {
                if required {
                    self.error(key, "is required");
                }
                None
            }
            Some(v) => match T::deserialize(v) {
                Ok(t) => Some(t),
                Err(_) => {
                    self.error(key, format!("must be {expected}"));
                    None
                }
            },
        }
    }

    /// A client's time ([`time::parse_input`]).
    pub fn timestamp(&mut self, key: &'a str, required: bool) -> Option<Timestamp> {
        let raw = self.raw_string(key, required, MAX_TIME_CHARS)?;
        match time::parse_input(&raw) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    /// When something happened: a client's time, at most
    /// [`MAX_FUTURE_HOURS`] after `now`.
    pub fn occurred_at(
        &mut self,
        key: &'a str,
        required: bool,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let t = self.timestamp(key, required)?;
        if t > now + Duration::hours(MAX_FUTURE_HOURS) {
            self.error(
                key,
                format!("must not be more than {MAX_FUTURE_HOURS} hours in the future"),
            );
            return None;
        }
        Some(t)
    }

    /// A phone number written any way ([`PhoneNumber::parse`]).
    pub fn phone(
        &mut self,
        key: &'a str,
        required: bool,
        region: Option<Region>,
    ) -> Option<PhoneNumber> {
        let raw = self.raw_string(key, required, phone::MAX_INPUT_CHARS)?;
        match PhoneNumber::parse(&raw, region) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    /// An email address written any way ([`Email::parse`]).
    pub fn email(&mut self, key: &'a str, required: bool) -> Option<Email> {
        let raw = self.raw_string(key, required, email::MAX_INPUT_CHARS)?;
        match Email::parse(&raw) {
            Ok(e) => Some(e),
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    /// A customer id (a UUID).
    pub fn customer_id(&mut self, key: &'a str, required: bool) -> Option<CustomerId> {
        let raw = self.raw_string(key, required, 64)?;
        match raw.trim().parse::<CustomerId>() {
            Ok(id) => Some(id),
            Err(_) => {
                self.error(key, "must be a customer id (a UUID)");
                None
            }
        }
    }

    /// Reports every key that no accessor asked for.
    pub fn deny_unknown(&mut self) {
        let unknown: Vec<String> = self
            .object
            .keys()
            .filter(|k| !self.seen.contains(k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            self.error(&key, "is not a known field");
        }
    }

    /// Ends the reading: the value when there was no problem.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldError>> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(vec![FieldError::new(
                self.prefix.trim_end_matches('.').to_string(),
                "is not valid",
            )]),
            _ => Err(self.errors),
        }
    }
}

// ---------------------------------------------------------------------------
// The engagement parser
// ---------------------------------------------------------------------------

/// How a route writes an engagement. Each maps into [`parse_engagement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `POST /v1/engagements` and each item of its batch: `channel` and the
    /// channel's fields; the customer as `customer_id` or as `customer`
    /// (`phone`, `email`, `name`), not both.
    Engagement,
    /// `POST /v1/track`: a web page view (`url`, `view`, ...); the visitor as
    /// any of `anonymous_id`, `customer_id`, `email`, `phone`.
    Track,
    /// `POST /v1/mobile/events`, one event: a phone's SMS, call or WhatsApp
    /// log entry (`kind`, `direction`, `body`, `duration_s`, `status`); the
    /// other party as `number` and `contact_name`; `client_event_id` and
    /// `occurred_at` required.
    Phone,
}

/// Who sends the engagements, and the context they are read in.
#[derive(Debug, Clone)]
pub struct Origin {
    /// For numbers written without a country code.
    pub region: Option<Region>,
    /// The phone that uploaded them.
    pub device_id: Option<DeviceId>,
    /// The staff user or API key (`Source::user_id`).
    pub user_id: String,
    /// The time `occurred_at` defaults to and is checked against.
    pub now: Timestamp,
}

/// Reads one engagement written in `shape`; every problem is reported with
/// its path (`prefix` first, e.g. `items[3].`).
pub fn parse_engagement(
    item: &Item<'_>,
    prefix: &str,
    shape: Shape,
    origin: &Origin,
) -> Result<NewEngagement, Vec<FieldError>> {
    let whole = if shape == Shape::Phone {
        "event"
    } else {
        "body"
    };
    let mut f = Fields::named(item.value, prefix, whole).map_err(|e| vec![e])?;
    f.refuse_repeated(&item.repeated);
    let phone = shape == Shape::Phone;
    let client_event_id = f.client_id("client_event_id", phone);
    let channel = read_channel(&mut f, shape);
    let direction = read_direction(&mut f, channel, shape);
    let target = read_target(&mut f, shape, origin.region);
    let occurred_at = f.occurred_at("occurred_at", phone, origin.now);
    let detail = channel.and_then(|c| read_detail(&mut f, c, direction, shape));
    // Channel fields that do not fit the channel, or that could not be
    // judged without one.
    let channel_fields: &[&'static str] = match shape {
        Shape::Engagement => &CHANNEL_FIELDS,
        Shape::Phone => &PHONE_CHANNEL_FIELDS,
        Shape::Track => &[],
    };
    for &key in channel_fields {
        if !f.seen(key) {
            if let (Some(c), true) = (channel, f.has(key)) {
                f.error(key, format!("does not apply to {c} engagements"));
            }
            f.value(key);
        }
    }
    f.deny_unknown();
    let engagement = match (target, detail) {
        (Some(target), Some(detail)) => Some(NewEngagement {
            target,
            occurred_at: occurred_at.unwrap_or(origin.now),
            source: Source {
                device_id: origin.device_id,
                client_event_id,
                user_id: Some(origin.user_id.clone()),
                via: None,
            },
            detail,
        }),
        _ => None,
    };
    f.finish(engagement)
}

fn read_channel(f: &mut Fields<'_>, shape: Shape) -> Option<Channel> {
    match shape {
        Shape::Engagement => f.typed("channel", true, "one of web, call, sms, whatsapp, email"),
        Shape::Track => Some(Channel::Web),
        Shape::Phone => {
            const EXPECTED: &str = "one of sms, call, whatsapp";
            match f.typed::<Channel>("kind", true, EXPECTED)? {
                c @ (Channel::Sms | Channel::Call | Channel::Whatsapp) => Some(c),
                Channel::Web | Channel::Email => {
                    f.error("kind", format!("must be {EXPECTED}"));
                    None
                }
            }
        }
    }
}

fn read_target(
    f: &mut Fields<'_>,
    shape: Shape,
    region: Option<Region>,
) -> Option<EngagementTarget> {
    match shape {
        Shape::Engagement => read_customer(f, region),
        Shape::Track => read_visitor(f, region),
        Shape::Phone => {
            let number = f.phone("number", true, region);
            let name = f.name("contact_name");
            Some(EngagementTarget::Identify {
                name,
                identifiers: vec![Identifier::Phone(number?)],
            })
        }
    }
}

/// `customer_id`, or `customer` with a phone or an email (and a name).
fn read_customer(f: &mut Fields<'_>, region: Option<Region>) -> Option<EngagementTarget> {
    let has_id = f.has("customer_id");
    let reference = f.value("customer");
    match (has_id, reference) {
        (true, None) => f
            .customer_id("customer_id", true)
            .map(EngagementTarget::Customer),
        (false, Some(reference)) => {
            f.value("customer_id");
            let prefix = f.path("customer.");
            let mut r = match Fields::new(reference, &prefix) {
                Ok(r) => r,
                Err(e) => {
                    f.errors.push(e);
                    return None;
                }
            };
            let phone = r.phone("phone", false, region);
            let email = r.email("email", false);
            let name = r.name("name");
            if !r.has("phone") && !r.has("email") {
                r.error("phone", "give a phone or an email to identify the customer");
            }
            r.deny_unknown();
            let mut identifiers = Vec::new();
            identifiers.extend(phone.map(Identifier::Phone));
            identifiers.extend(email.map(Identifier::Email));
            let ok = r.errors.is_empty();
            for e in r.errors {
                if !f.errors.iter().any(|x| x.field == e.field) {
                    f.errors.push(e);
                }
            }
            ok.then_some(EngagementTarget::Identify { name, identifiers })
        }
        (true, Some(_)) => {
            f.value("customer_id");
            f.error("customer", "give either customer_id or customer, not both");
            None
        }
        (false, None) => {
            f.value("customer_id");
            f.error(
                "customer_id",
                "give customer_id, or customer with a phone or email",
            );
            None
        }
    }
}

/// A web visitor: `anonymous_id`, `customer_id`, `email`, `phone`, at
/// least one. A `customer_id` with identifiers attaches them to it.
fn read_visitor(f: &mut Fields<'_>, region: Option<Region>) -> Option<EngagementTarget> {
    const WHO: [&str; 4] = ["anonymous_id", "customer_id", "email", "phone"];
    let given = WHO.iter().any(|k| f.has(k));
    let anonymous = f.client_id("anonymous_id", false);
    let customer_id = f.customer_id("customer_id", false);
    let email = f.email("email", false);
    let phone = f.phone("phone", false, region);
    if !given {
        f.error(
            "anonymous_id",
            "give anonymous_id, customer_id, email or phone",
        );
        return None;
    }
    let mut identifiers = Vec::new();
    identifiers.extend(anonymous.map(Identifier::Anonymous));
    identifiers.extend(email.map(Identifier::Email));
    identifiers.extend(phone.map(Identifier::Phone));
    let read_all = WHO
        .iter()
        .all(|k| !f.errors.iter().any(|e| e.field == f.path(k)));
    if !read_all {
        return None;
    }
    Some(match customer_id {
        Some(id) if identifiers.is_empty() => EngagementTarget::Customer(id),
        Some(id) => EngagementTarget::CustomerWith { id, identifiers },
        None => EngagementTarget::Identify {
            name: None,
            identifiers,
        },
    })
}

/// Every channel but the web has a direction. Without a channel, a
/// direction is still judged if one is given (or required, for a phone).
fn read_direction(f: &mut Fields<'_>, channel: Option<Channel>, shape: Shape) -> Option<Direction> {
    match channel {
        Some(Channel::Web) if shape == Shape::Track => None,
        Some(Channel::Web) => {
            if f.has("direction") {
                f.error("direction", "web engagements have no direction");
            }
            f.value("direction");
            None
        }
        Some(_) => f.typed("direction", true, "inbound or outbound"),
        None => f.typed("direction", shape == Shape::Phone, "inbound or outbound"),
    }
}

/// The channel's own fields. Every field is read before giving up, so that
/// all problems are reported.
fn read_detail(
    f: &mut Fields<'_>,
    channel: Channel,
    direction: Option<Direction>,
    shape: Shape,
) -> Option<EngagementDetail> {
    // A phone's log may hold an empty message (a picture without text).
    let text_required = shape != Shape::Phone;
    let detail = match channel {
        Channel::Web => {
            let url = f.string("url", true, MAX_URL_CHARS);
            let view = f.string("view", true, MAX_LABEL_CHARS);
            EngagementDetail::Web {
                view_desc: f.string("view_desc", false, MAX_URL_CHARS),
                category: f.string("category", false, MAX_LABEL_CHARS),
                object_id: f.string("object_id", false, MAX_LABEL_CHARS),
                url: url?,
                view: view?,
            }
        }
        Channel::Call => {
            let duration_s: Option<u32> = f.typed("duration_s", false, "a whole number of seconds");
            let status: Option<CallStatus> = f.typed(
                "status",
                false,
                "one of answered, missed, rejected, voicemail",
            );
            if f.has("duration_s") && duration_s.is_none() || f.has("status") && status.is_none() {
                return None;
            }
            let duration_s = duration_s.unwrap_or(0);
            EngagementDetail::Call {
                direction: direction?,
                duration_s,
                // A call log says whether it connected by its length.
                status: status.unwrap_or(if duration_s > 0 {
                    CallStatus::Answered
                } else {
                    CallStatus::Missed
                }),
            }
        }
        Channel::Sms => {
            let body = f.text("body", text_required, MAX_TEXT_CHARS);
            if f.has("body") && body.is_none() {
                return None;
            }
            EngagementDetail::Sms {
                direction: direction?,
                body: body.unwrap_or_default(),
            }
        }
        Channel::Whatsapp if shape == Shape::Phone => {
            let body = f.text("body", false, MAX_TEXT_CHARS);
            if f.has("body") && body.is_none() {
                return None;
            }
            EngagementDetail::Whatsapp {
                direction: direction?,
                payload_type: PayloadType::Text,
                payload: body.unwrap_or_default(),
            }
        }
        Channel::Whatsapp => {
            let payload_type: Option<PayloadType> =
                f.typed("payload_type", true, "one of text, image, file");
            let payload = f.text("payload", true, MAX_TEXT_CHARS);
            EngagementDetail::Whatsapp {
                direction: direction?,
                payload_type: payload_type?,
                payload: payload?,
            }
        }
        Channel::Email => {
            let subject = f.text("subject", true, MAX_SUBJECT_CHARS);
            EngagementDetail::Email {
                direction: direction?,
                subject: subject?,
            }
        }
    };
    Some(detail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin() -> Origin {
        Origin {
            region: Some(Region::parse("SG").unwrap()),
            device_id: None,
            user_id: "key:test".into(),
            now: time::parse("2026-11-21T12:00:00Z").unwrap(),
        }
    }

    fn errors(value: Value, shape: Shape) -> Vec<(String, String)> {
        parse_engagement(&Item::plain(&value), "", shape, &origin())
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    fn fields(value: Value, shape: Shape) -> Vec<String> {
        errors(value, shape).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn repeated_keys_are_found_at_every_depth() {
        let json = Json::from_slice(
            br#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 3, "items": [{"x": 1}, {"x": 1, "x": 2}]}"#,
        )
        .unwrap();
        assert_eq!(json.value["a"], 3);
        assert_eq!(
            json.repeated(),
            [
                ("b".to_string(), "c".to_string()),
                (String::new(), "a".to_string()),
                ("items[1]".to_string(), "x".to_string()),
            ]
        );
        assert_eq!(
            json.repeated_under("items[1]"),
            [(String::new(), "x".to_string())]
        );
        assert!(json.repeated_under("items[0]").is_empty());
        let list: JsonList = serde_json::from_str(r#"[{"a": 1}, {"a": 1, "a": 1}]"#).unwrap();
        let repeated: Vec<usize> = list.items().map(|i| i.repeated.len()).collect();
        assert_eq!(repeated, [0, 1]);
        assert!(serde_json::from_str::<JsonList>(r#"{"a": 1}"#).is_err());
    }

    #[test]
    fn a_repeated_key_is_refused_on_every_shape() {
        for (raw, shape, field) in [
            (
                r#"{"channel": "sms", "direction": "inbound", "body": "a", "body": "b",
                    "customer": {"phone": "81226418"}}"#,
                Shape::Engagement,
                "body",
            ),
            (
                r#"{"channel": "sms", "direction": "inbound", "body": "a",
                    "customer": {"phone": "81226418", "phone": "91234567"}}"#,
                Shape::Engagement,
                "customer.phone",
            ),
            (
                r#"{"anonymous_id": "v1", "url": "/a", "view": "home", "email": "a@x.io", "email": "b@x.io"}"#,
                Shape::Track,
                "email",
            ),
            (
                r#"{"client_event_id": "1", "kind": "sms", "direction": "inbound", "number": "81226418",
                    "number": "91234567", "occurred_at": "2026-11-21T09:30:00Z"}"#,
                Shape::Phone,
                "number",
            ),
        ] {
            let json = Json::from_slice(raw.as_bytes()).unwrap();
            let errors = parse_engagement(&json.item(), "", shape, &origin()).unwrap_err();
            assert_eq!(
                errors,
                [FieldError::new(
                    field,
                    "is given more than once; give it once"
                )],
                "{raw}"
            );
        }
    }

    #[test]
    fn the_same_bad_value_gets_the_same_message_on_every_shape() {
        let bad = [
            ("occurred_at", json!("2026-11-21T09:30:60Z")),
            ("occurred_at", json!("0000-01-01T00:00:00Z")),
            ("occurred_at", json!("2026-11-25T00:00:00Z")),
            ("client_event_id", json!("  ")),
            ("client_event_id", json!("a\u{7}b")),
            ("client_event_id", json!("x".repeat(129))),
        ];
        for (key, value) in bad {
            let mut engagement = json!({"channel": "web", "url": "/a", "view": "home",
                "customer": {"email": "ann@example.com"}});
            let mut track = json!({"anonymous_id": "v1", "url": "/a", "view": "home"});
            let mut phone = json!({"client_event_id": "1", "kind": "sms", "direction": "inbound",
                "number": "81226418", "occurred_at": "2026-11-21T09:30:00Z"});
            for v in [&mut engagement, &mut track, &mut phone] {
                v[key] = value.clone();
            }
            let a = errors(engagement, Shape::Engagement);
            let b = errors(track, Shape::Track);
            let c = errors(phone, Shape::Phone);
            assert_eq!(a.len(), 1, "{key} {value}: {a:?}");
            assert_eq!(a[0].0, key);
            assert_eq!(a, b, "{key} {value}");
            assert_eq!(a, c, "{key} {value}");
        }
    }

    #[test]
    fn names_with_bidi_controls_are_refused() {
        for c in ['\u{202E}', '\u{2066}', '\u{200F}', '\u{061C}'] {
            let name = format!("Ann{c}Tan");
            let message = format!(
                "must not contain U+{:04X}, a character that reorders how text is displayed",
                u32::from(c)
            );
            assert_eq!(
                errors(
                    json!({"channel": "web", "url": "/a", "view": "home",
                           "customer": {"email": "ann@example.com", "name": name}}),
                    Shape::Engagement
                ),
                [("customer.name".to_string(), message.clone())]
            );
            assert_eq!(
                errors(
                    json!({"client_event_id": "1", "kind": "call", "direction": "inbound",
                           "number": "81226418", "occurred_at": "2026-11-21T09:30:00Z",
                           "contact_name": name}),
                    Shape::Phone
                ),
                [("contact_name".to_string(), message)]
            );
        }
    }

    #[test]
    fn bodies_may_hold_newlines_and_tabs_but_not_other_controls() {
        assert_eq!(check_text("a\r\nb\tc\n", TextKind::Body), Ok(()));
        assert!(check_text("a\nb", TextKind::Line).is_err());
        assert!(check_text("a\rb", TextKind::Body).is_err());
        assert!(check_text("a\u{1b}[31m", TextKind::Body).is_err());
        assert!(check_text("a\u{85}", TextKind::Body).is_err());
        assert!(check_text("a\u{202E}", TextKind::Line).is_err());
        assert_eq!(
            check_text("\u{200F}שלום\u{200F} 42", TextKind::Body),
            Ok(())
        );
        assert_eq!(check_text("Tan Wei Ming 陈伟明 ☎", TextKind::Line), Ok(()));
    }

    #[test]
    fn each_shape_maps_into_the_same_engagement() {
        let o = origin();
        let e = parse_engagement(
            &Item::plain(
                &json!({"client_event_id": " c1 ", "kind": "call", "direction": "inbound",
                "number": "８１２２ ６４１８", "occurred_at": "2026-11-21T17:30:00+08:00",
                "contact_name": " Ann Tan "}),
            ),
            "",
            Shape::Phone,
            &o,
        )
        .unwrap();
        match &e.target {
            EngagementTarget::Identify { name, identifiers } => {
                assert_eq!(name.as_deref(), Some("Ann Tan"));
                assert_eq!(identifiers[0].key(), "phone:+6581226418");
            }
            other => panic!("unexpected target {other:?}"),
        }
        assert_eq!(e.source.client_event_id.as_deref(), Some("c1"));
        assert_eq!(time::format(&e.occurred_at), "2026-11-21T09:30:00.000000Z");
        assert_eq!(
            e.detail,
            EngagementDetail::Call {
                direction: Direction::Inbound,
                duration_s: 0,
                status: CallStatus::Missed
            }
        );

        let t = parse_engagement(
            &Item::plain(
                &json!({"customer_id": "0191a5f0-0000-7000-8000-000000000001",
                "email": "Ann Tan <Ann.Tan@Example.com>", "url": "/p/42", "view": "product"}),
            ),
            "",
            Shape::Track,
            &o,
        )
        .unwrap();
        match &t.target {
            EngagementTarget::CustomerWith { identifiers, .. } => {
                assert_eq!(identifiers[0].key(), "email:ann.tan@example.com");
            }
            other => panic!("unexpected target {other:?}"),
        }
        assert_eq!(t.occurred_at, o.now);
        assert_eq!(t.source.user_id.as_deref(), Some("key:test"));
    }

    /// The identifier key each shape reads from a number or an address.
    fn keys_of(phone: Option<&str>, email: Option<&str>) -> Vec<String> {
        let o = origin();
        let mut customer = json!({});
        let mut track = json!({"url": "/a", "view": "home"});
        if let Some(p) = phone {
            customer["phone"] = json!(p);
            track["phone"] = json!(p);
        }
        if let Some(e) = email {
            customer["email"] = json!(e);
            track["email"] = json!(e);
        }
        let mut shapes = vec![
            (
                json!({"channel": "web", "url": "/a", "view": "home", "customer": customer}),
                Shape::Engagement,
            ),
            (track, Shape::Track),
        ];
        if let Some(p) = phone {
            shapes.push((
                json!({"client_event_id": "1", "kind": "sms", "direction": "inbound",
                       "number": p, "occurred_at": "2026-11-21T09:30:00Z"}),
                Shape::Phone,
            ));
        }
        shapes
            .into_iter()
            .map(|(v, shape)| {
                match parse_engagement(&Item::plain(&v), "", shape, &o).map(|e| e.target) {
                    Ok(EngagementTarget::Identify { identifiers, .. }) => identifiers
                        .iter()
                        .map(Identifier::key)
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => format!("{other:?}"),
                }
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn every_route_reads_a_decorated_number_or_address_as_its_plain_form(
            number in 80_000_000u32..100_000_000,
            phone_style in 0usize..8,
            local in "[a-z]{1,8}(\\.[a-z]{1,8})?",
            email_style in 0usize..6,
        ) {
            let n = number.to_string();
            let (a, b) = n.split_at(4);
            let plain = PhoneNumber::parse(&format!("+65{n}"), None);
            proptest::prop_assume!(plain.is_ok());
            let phone = match phone_style {
                0 => format!("tel:+65-{a}-{b}"),
                1 => format!("tel:{n};phone-context=+65"),
                2 => format!("+65 {a} {b} ext. 12"),
                3 => format!("{a}\u{a0}{b} (mobile)"),
                4 => format!("00 65 {a} {b}"),
                5 => format!("(065) {a}-{b}"),
                6 => format!("+65-{a}-{b} / Ann"),
                _ => n.chars().map(|c| char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c)).collect(),
            };
            let address = format!("{local}@example.com");
            let email = match email_style {
                0 => format!("mailto:{address}"),
                1 => format!("Ann Tan <{}>", address.to_uppercase()),
                2 => format!("\"Tan, Ann\" <{address}>"),
                3 => format!("<{address}>"),
                4 => format!("{address}. "),
                _ => address.replace('@', "＠"),
            };
            let phone_key = format!("phone:+65{n}");
            let email_key = format!("email:{address}");
            proptest::prop_assert_eq!(keys_of(Some(&phone), None), vec![phone_key.clone(); 3]);
            proptest::prop_assert_eq!(keys_of(None, Some(&email)), vec![email_key.clone(); 2]);
        }
    }

    #[test]
    fn fields_of_another_channel_are_named() {
        assert_eq!(
            errors(
                json!({"client_event_id": "3", "kind": "sms", "direction": "inbound",
                       "number": "+6581226418", "occurred_at": "2026-11-21T09:30:00Z",
                       "duration_s": 3}),
                Shape::Phone
            ),
            [(
                "duration_s".to_string(),
                "does not apply to sms engagements".to_string()
            )]
        );
        assert_eq!(
            fields(
                json!({"channel": "web", "url": "/a", "view": "v", "direction": "inbound",
                       "subject": "x", "customer_id": "0191a5f0-0000-7000-8000-000000000001"}),
                Shape::Engagement
            ),
            ["direction", "subject"]
        );
        // Track is always web: a channel field of another is unknown.
        assert_eq!(
            fields(
                json!({"anonymous_id": "v", "url": "/a", "view": "v", "channel": "web"}),
                Shape::Track
            ),
            ["channel"]
        );
    }

    #[test]
    fn every_problem_is_reported_once_with_its_field() {
        assert_eq!(
            fields(
                json!({"kind": "fax", "direction": "sideways", "number": "not a number",
                       "occurred_at": "yesterday", "extra": 1}),
                Shape::Phone
            ),
            [
                "client_event_id",
                "kind",
                "direction",
                "number",
                "occurred_at",
                "extra"
            ]
        );
        assert_eq!(
            fields(
                json!({"kind": "email", "direction": "inbound", "number": "81226418",
                       "client_event_id": "1", "occurred_at": "2026-11-21T09:30:00Z"}),
                Shape::Phone
            ),
            ["kind"]
        );
        assert_eq!(fields(json!("text"), Shape::Phone), ["event"]);
        assert_eq!(fields(json!([]), Shape::Engagement), ["body"]);
        assert_eq!(
            fields(json!({"url": "/a", "view": "v"}), Shape::Track),
            ["anonymous_id"]
        );
        assert_eq!(
            fields(
                json!({"channel": "call", "customer": {"name": "Ann"}}),
                Shape::Engagement
            ),
            ["direction", "customer.phone"]
        );
    }
}
