//! Parse, don't validate: the bytes of one stream entry become valid [`Reading`]s or [`Rejection`]s.
//!
//! Two input shapes reach the parser (DESIGN.md, "Input"):
//! - a JSON payload (the `data` field of an entry, or a published message): one reading object or an
//!   array of them;
//! - an entry whose fields are the reading itself: `sensor temperature value 14 timestamp ...`.
//!
//! Both are reduced to the same [`Fields`] and checked by one function, so the rules cannot drift
//! apart. A rejection is an expected outcome with a reason code from a closed set ([`Reason`]), never
//! a panic or an error log line.

use crate::domain::window::FastState;
use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::{SmallVec, smallvec};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

mod common;

/// One valid sensor reading, ready to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The sensor's id: non-empty, at most [`Limits::max_sensor_id_len`] bytes of
    /// `[A-Za-z0-9_.:-]`. Shared: the readings of one sensor parsed together hold one copy
    /// ([`SensorIds`]).
    pub sensor_id: Arc<str>,
    /// Event time, truncated to microseconds (PostgreSQL's `timestamptz` precision) so that the raw
    /// key `(sensor_id, ts)` is the same in memory and in the database.
    pub ts: DateTime<Utc>,
    /// A finite number.
    pub value: f64,
    /// Optional unit, kept in the `sensors` table.
    pub unit: Option<String>,
}

impl Reading {
    /// Whether `other` is of the same sensor: readings parsed together share their id's
    /// allocation, so the comparison of the text is rarely needed.
    pub fn same_sensor(&self, other: &Reading) -> bool {
        same_id(&self.sensor_id, &other.sensor_id)
    }
}

/// Whether two sensor ids are equal, the same allocation answering without a comparison.
pub fn same_id(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Why a message or one reading of it was rejected. The set is closed so that the
/// `sensorhub_readings_rejected_total{reason}` label stays low-cardinality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The message is larger than [`Limits::max_message_bytes`].
    TooLarge,
    /// The message bytes are not UTF-8.
    InvalidUtf8,
    /// The message is not JSON (or nests deeper than the parser allows).
    MalformedJson,
    /// Valid JSON, but neither a reading object nor an array of them (or an empty array).
    WrongShape,
    /// `sensor` or `value` is missing (or null).
    MissingField,
    /// A field has a JSON type that cannot hold it (an object as `value`, a number as `sensor`, ...).
    WrongType,
    /// `value` is a string that is not a decimal number.
    NotANumber,
    /// `value` is NaN, infinite, or out of the range of a double (`1e400`).
    NotFinite,
    /// The sensor id is empty, too long, or has characters outside `[A-Za-z0-9_.:-]`.
    BadSensorId,
    /// `unit` is not a short printable string.
    BadUnit,
    /// `timestamp` has none of the accepted forms, or names a time that does not exist.
    BadTimestamp,
    /// `timestamp` is further in the future than [`Limits::max_future_skew`].
    FutureTimestamp,
    /// `timestamp` is older than [`Limits::max_age`].
    TooOld,
    /// PostgreSQL refused the reading itself (poison data), after bounded retries.
    DatabaseRejected,
}

impl Reason {
    /// Every reason, for tests and for pre-registering metric labels.
    pub const ALL: [Reason; 14] = [
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::MalformedJson,
        Reason::WrongShape,
        Reason::MissingField,
        Reason::WrongType,
        Reason::NotANumber,
        Reason::NotFinite,
        Reason::BadSensorId,
        Reason::BadUnit,
        Reason::BadTimestamp,
        Reason::FutureTimestamp,
        Reason::TooOld,
        Reason::DatabaseRejected,
    ];

    /// The reason code as it appears in metrics and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::MalformedJson => "malformed_json",
            Reason::WrongShape => "wrong_shape",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::NotANumber => "not_a_number",
            Reason::NotFinite => "not_finite",
            Reason::BadSensorId => "bad_sensor_id",
            Reason::BadUnit => "bad_unit",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::TooOld => "too_old",
            Reason::DatabaseRejected => "database_rejected",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message, or one rejected reading of an array.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    /// Human-readable detail naming the bad value.
    pub detail: String,
    /// Position in the array when one element of an array was rejected; `None` for the whole message.
    pub index: Option<usize>,
}

impl Rejection {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            index: None,
        }
    }
}

/// Validation limits; see `config.rs` for the variables that set them and why the defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_sensor_id_len: usize,
    pub max_unit_len: usize,
    pub max_future_skew: Duration,
    pub max_age: Duration,
    /// Zone of naive `YYYY-MM-DD HH:MM:SS` timestamps.
    pub timezone: Tz,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_sensor_id_len: 128,
            max_unit_len: 32,
            max_future_skew: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(10 * 365 * 24 * 3600),
            timezone: Tz::UTC,
        }
    }
}

/// What a parse needs besides the bytes.
#[derive(Clone, Copy, Debug)]
pub struct ParseContext<'a> {
    pub limits: &'a Limits,
    /// Wall-clock now, for the future-skew and age checks.
    pub now: DateTime<Utc>,
    /// Timestamp of a reading that has none, in microseconds since the epoch. It must be the same
    /// on every delivery of the same stream entry (it is derived from the entry id), or a
    /// redelivery would store a second row. Kept as a number: only a reading without a timestamp
    /// makes it a `DateTime`, a calendar conversion most entries never need.
    received_micros: i64,
    /// Newest accepted timestamp: `now` + `max_future_skew`.
    latest: DateTime<Utc>,
    /// Oldest accepted timestamp: `now` − `max_age`.
    earliest: DateTime<Utc>,
    /// Where the sensor ids of the readings parsed with this context are kept once each.
    ids: Option<&'a SensorIds>,
}

/// The sensor ids of readings parsed together (a batch), each kept once: a reading holds a shared
/// reference rather than its own copy. A batch names each sensor many times; with one copy each,
/// the later stages compare, hash and copy ids that sit together in the cache, where a copy per
/// reading was an allocation and, by the time the write stage encoded the rows, cache misses
/// (a tenth of sensorhub's CPU time in comparing and copying ids).
#[derive(Debug, Default)]
pub struct SensorIds(RefCell<HashSet<Arc<str>, FastState>>);

impl SensorIds {
    fn get(&self, id: &str) -> Arc<str> {
        let mut ids = self.0.borrow_mut();
        if let Some(known) = ids.get(id) {
            return Arc::clone(known);
        }
        let id: Arc<str> = Arc::from(id);
        ids.insert(Arc::clone(&id));
        id
    }
}

impl<'a> ParseContext<'a> {
    /// The accepted time range is worked out here, once, rather than for every reading.
    pub fn new(limits: &'a Limits, now: DateTime<Utc>, received_at: DateTime<Utc>) -> Self {
        let skew = TimeDelta::from_std(limits.max_future_skew).unwrap_or(TimeDelta::MAX);
        let age = TimeDelta::from_std(limits.max_age).unwrap_or(TimeDelta::MAX);
        Self {
            limits,
            now,
            received_micros: received_at.timestamp_micros(),
            latest: now
                .checked_add_signed(skew)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            earliest: now
                .checked_sub_signed(age)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            ids: None,
        }
    }

    /// Sets the timestamp of a reading that has none, in microseconds since the epoch.
    pub fn set_received_micros(&mut self, micros: i64) {
        self.received_micros = micros;
    }

    /// The same context, keeping the sensor ids it meets in `ids`.
    pub fn with_ids(self, ids: &'a SensorIds) -> Self {
        Self {
            ids: Some(ids),
            ..self
        }
    }
}

/// One field of a reading as it arrived: JSON text, or plain text.
#[derive(Clone, Copy, Debug)]
enum FieldValue<'a> {
    /// The raw JSON text of the value (a string still in its quotes).
    Json(&'a str),
    /// Text as it is: a stream entry's field, or a JSON string without escapes, between its
    /// quotes. A JSON string is checked as the same text would be in an entry's field.
    Text(&'a str),
}

/// The fields of one reading, not yet checked.
#[derive(Default)]
struct Fields<'a> {
    sensor: Option<FieldValue<'a>>,
    value: Option<FieldValue<'a>>,
    timestamp: Option<FieldValue<'a>>,
    unit: Option<FieldValue<'a>>,
}

/// A reading object on the wire. Unknown fields are ignored (DESIGN.md).
#[derive(Deserialize)]
struct WireReading<'a> {
    #[serde(borrow, default)]
    sensor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unit: Option<&'a RawValue>,
}

impl<'a> From<WireReading<'a>> for Fields<'a> {
    fn from(wire: WireReading<'a>) -> Self {
        Fields {
            sensor: wire.sensor.map(|raw| FieldValue::Json(raw.get())),
            value: wire.value.map(|raw| FieldValue::Json(raw.get())),
            timestamp: wire.timestamp.map(|raw| FieldValue::Json(raw.get())),
            unit: wire.unit.map(|raw| FieldValue::Json(raw.get())),
        }
    }
}

/// One outcome per reading of the message (or one rejection for the whole message). Most
/// messages hold one reading: its outcome is kept inline, with no allocation per message.
pub type Outcomes = SmallVec<[Result<Reading, Rejection>; 1]>;

/// Parses a JSON payload: one reading object or an array of them.
pub fn parse_json(bytes: &[u8], ctx: &ParseContext) -> Outcomes {
    if bytes.len() > ctx.limits.max_message_bytes {
        return smallvec![Err(too_large(bytes.len(), ctx.limits))];
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            return smallvec![Err(Rejection::new(
                Reason::InvalidUtf8,
                format!("message is not UTF-8: {error}"),
            ))];
        }
    };
    // Nearly every message has the common shape, read in one pass; anything else goes to
    // serde_json, which reads it or names what is wrong with it.
    if let Some(fields) = common::object(text) {
        return smallvec![check(fields, ctx)];
    }
    if let Some(items) = common::array(text) {
        return items
            .into_iter()
            .enumerate()
            .map(|(index, fields)| in_array(index, check(fields, ctx)))
            .collect();
    }
    parse_json_text(text, ctx)
}

/// Parses any JSON text with serde_json, whatever its shape.
fn parse_json_text(text: &str, ctx: &ParseContext) -> Outcomes {
    if let Err(rejection) = check_depth(text) {
        return smallvec![Err(rejection)];
    }
    match text.trim_start().as_bytes().first() {
        Some(b'{') => smallvec![parse_object(text, ctx)],
        Some(b'[') => parse_array(text, ctx),
        _ => match serde_json::from_str::<&RawValue>(text) {
            Err(error) => smallvec![Err(malformed(&error))],
            Ok(_) => smallvec![Err(Rejection::new(
                Reason::WrongShape,
                format!(
                    "expected a reading object or an array of them, got {}",
                    excerpt(text.trim())
                ),
            ))],
        },
    }
}

/// Deepest JSON nesting accepted. A reading is an object inside at most an array; unknown fields
/// may nest a little. Deeper input is refused before parsing, whatever the field.
pub const MAX_JSON_DEPTH: usize = 32;

/// Rejects JSON nested deeper than [`MAX_JSON_DEPTH`], with one pass over the bytes.
fn check_depth(text: &str) -> Result<(), Rejection> {
    // Nesting needs an opening bracket per level: a message with few of them (every reading
    // object, most arrays) cannot be too deep, and counting them is one vectorised pass.
    let openers = text.bytes().filter(|&b| b == b'{' || b == b'[').count();
    if openers <= MAX_JSON_DEPTH {
        return Ok(());
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Rejection::new(
                        Reason::MalformedJson,
                        format!("JSON nests deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a stream entry's fields: a `data` field holding JSON, or the reading's own fields.
pub fn parse_entry_fields<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    fields: &[(N, V)],
    ctx: &ParseContext,
) -> Outcomes {
    if let Some((_, data)) = fields.iter().find(|(name, _)| name.as_ref() == b"data") {
        return parse_json(data.as_ref(), ctx);
    }
    let size: usize = fields
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
        .sum();
    if size > ctx.limits.max_message_bytes {
        return smallvec![Err(too_large(size, ctx.limits))];
    }
    let mut reading = Fields::default();
    for (name, value) in fields {
        let (name, value) = (name.as_ref(), value.as_ref());
        let slot = match name {
            b"sensor" => &mut reading.sensor,
            b"value" => &mut reading.value,
            b"timestamp" => &mut reading.timestamp,
            b"unit" => &mut reading.unit,
            _ => continue,
        };
        match std::str::from_utf8(value) {
            Ok(text) => *slot = Some(FieldValue::Text(text)),
            Err(error) => {
                return smallvec![Err(Rejection::new(
                    Reason::InvalidUtf8,
                    format!(
                        "field {:?} is not UTF-8: {error}",
                        String::from_utf8_lossy(name)
                    ),
                ))];
            }
        }
    }
    if reading.sensor.is_none() && reading.value.is_none() {
        let names: Vec<String> = fields
            .iter()
            .map(|(name, _)| String::from_utf8_lossy(name.as_ref()).into_owned())
            .collect();
        return smallvec![Err(Rejection::new(
            Reason::MissingField,
            format!(
                "entry has neither a 'data' field nor 'sensor'/'value' fields (fields: {})",
                names.join(", ")
            ),
        ))];
    }
    smallvec![check(reading, ctx)]
}

fn parse_object(text: &str, ctx: &ParseContext) -> Result<Reading, Rejection> {
    let wire: WireReading = serde_json::from_str(text).map_err(|e| malformed(&e))?;
    check(wire.into(), ctx)
}

fn parse_array(text: &str, ctx: &ParseContext) -> Outcomes {
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(error) => return smallvec![Err(malformed(&error))],
    };
    if items.is_empty() {
        return smallvec![Err(Rejection::new(
            Reason::WrongShape,
            "empty array: no readings",
        ))];
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let outcome = if item.get().starts_with('{') {
                parse_object(item.get(), ctx)
            } else {
                Err(Rejection::new(
                    Reason::WrongShape,
                    format!("array element is not an object: {}", excerpt(item.get())),
                ))
            };
            in_array(index, outcome)
        })
        .collect()
}

/// The outcome of an array's element, a rejection naming the element's index.
fn in_array(index: usize, outcome: Result<Reading, Rejection>) -> Result<Reading, Rejection> {
    outcome.map_err(|rejection| Rejection {
        index: Some(index),
        ..rejection
    })
}

/// The one place every rule of a reading is checked.
fn check(fields: Fields, ctx: &ParseContext) -> Result<Reading, Rejection> {
    let sensor = fields
        .sensor
        .ok_or_else(|| Rejection::new(Reason::MissingField, "missing field 'sensor'"))?;
    let sensor_id = check_sensor_id(text_field("sensor", sensor)?, ctx.limits)?;
    let sensor_id = match ctx.ids {
        Some(ids) => ids.get(&sensor_id),
        None => Arc::from(sensor_id),
    };
    let value = fields
        .value
        .ok_or_else(|| Rejection::new(Reason::MissingField, "missing field 'value'"))?;
    let value = check_value(value)?;
    let ts = match fields.timestamp {
        None => DateTime::from_timestamp_micros(ctx.received_micros).unwrap_or_default(),
        Some(raw) => check_timestamp(raw, ctx)?,
    };
    let unit = fields
        .unit
        .map(|unit| check_unit(unit, ctx.limits))
        .transpose()?;
    Ok(Reading {
        sensor_id,
        ts: truncated_to_micros(ts),
        value,
        unit,
    })
}

/// `ts` without its nanoseconds below the microsecond (chrono's `trunc_subsecs(6)`, which
/// converts to local time and back, a third of the timestamp's cost).
fn truncated_to_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    match ts.timestamp_subsec_nanos() % 1000 {
        0 => ts,
        below => ts - TimeDelta::nanoseconds(i64::from(below)),
    }
}

/// A field that must be a string: JSON strings are unescaped, plain text is taken as it is.
fn text_field<'a>(name: &str, field: FieldValue<'a>) -> Result<Cow<'a, str>, Rejection> {
    match field {
        FieldValue::Text(text) => Ok(Cow::Borrowed(text)),
        FieldValue::Json(raw) => json_string(raw).map_err(|_| {
            Rejection::new(
                Reason::WrongType,
                format!("'{name}' must be a string, got {}", excerpt(raw)),
            )
        }),
    }
}

/// The text of a JSON string. Most have no escapes: then it is the text between the quotes,
/// borrowed (the parser has already checked the string: no raw control characters, valid UTF-8),
/// and only strings with escapes are unescaped into a new one.
fn json_string(raw: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    match raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(raw).map(Cow::Owned),
    }
}

fn check_sensor_id<'a>(id: Cow<'a, str>, limits: &Limits) -> Result<Cow<'a, str>, Rejection> {
    if id.is_empty() {
        return Err(Rejection::new(Reason::BadSensorId, "sensor id is empty"));
    }
    if id.len() > limits.max_sensor_id_len {
        return Err(Rejection::new(
            Reason::BadSensorId,
            format!(
                "sensor id is {} bytes long, more than the limit of {} ({})",
                id.len(),
                limits.max_sensor_id_len,
                excerpt(&id)
            ),
        ));
    }
    // Byte by byte: every allowed character is ASCII, so the first byte refused starts a
    // character.
    if let Some(at) = id
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')))
    {
        let bad = id[at..].chars().next().unwrap_or_default();
        return Err(Rejection::new(
            Reason::BadSensorId,
            format!(
                "sensor id {} has {:?} at byte {at}; allowed are letters, digits, '_', '-', '.', ':'",
                excerpt(&id),
                bad
            ),
        ));
    }
    Ok(id)
}

fn check_value(field: FieldValue) -> Result<f64, Rejection> {
    let (text, quoted) = match field {
        FieldValue::Text(text) => (Cow::Borrowed(text), true),
        FieldValue::Json(raw) => match raw.as_bytes().first() {
            Some(b'"') => (json_string(raw).map_err(|e| malformed(&e))?, true),
            Some(b'-' | b'0'..=b'9') => (Cow::Borrowed(raw), false),
            _ => {
                return Err(Rejection::new(
                    Reason::WrongType,
                    format!("'value' must be a number, got {}", excerpt(raw)),
                ));
            }
        },
    };
    let value = match plain_decimal(&text) {
        Some(value) => value,
        None => text.trim().parse().map_err(|_| {
            Rejection::new(
                Reason::NotANumber,
                format!("'value' {} is not a decimal number", excerpt(&text)),
            )
        })?,
    };
    if !value.is_finite() {
        let form = if quoted { "string " } else { "" };
        return Err(Rejection::new(
            Reason::NotFinite,
            format!(
                "'value' {form}{} is not a finite double (NaN, infinite, or beyond ±1.8e308)",
                excerpt(&text)
            ),
        ));
    }
    Ok(value)
}

/// A plain decimal, `-?digits[.digits]` with at most 15 digits in all (what nearly every sensor
/// sends), as the nearest double; `None` for anything else, which the standard parser reads.
/// Exact: the digits as an integer and the power of ten for the point are both exactly doubles
/// (below 2^53 and at most 10^15), so one division, rounded to nearest as every IEEE 754 operation
/// is, gives the double nearest the decimal, as the standard parser does (Clinger's fast path).
/// It costs a tenth of the standard parser's general algorithm.
fn plain_decimal(text: &str) -> Option<f64> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let bytes = text.as_bytes();
    let (negative, body) = match bytes.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, bytes),
    };
    let (mut mantissa, mut digits, mut decimals, mut point) = (0u64, 0usize, 0usize, false);
    for &byte in body {
        match byte {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                digits += 1;
                decimals += usize::from(point);
                if digits > 15 {
                    return None;
                }
            }
            b'.' if !point => point = true,
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let magnitude = mantissa as f64 / POWERS[decimals];
    Some(if negative { -magnitude } else { magnitude })
}

fn check_unit(field: FieldValue, limits: &Limits) -> Result<String, Rejection> {
    let unit = match field {
        FieldValue::Text(text) => text.to_owned(),
        FieldValue::Json(raw) => json_string(raw).map(Cow::into_owned).map_err(|_| {
            Rejection::new(
                Reason::BadUnit,
                format!("'unit' must be a string, got {}", excerpt(raw)),
            )
        })?,
    };
    if unit.len() > limits.max_unit_len || unit.chars().any(char::is_control) {
        return Err(Rejection::new(
            Reason::BadUnit,
            format!(
                "'unit' {} must be at most {} bytes of printable text",
                excerpt(&unit),
                limits.max_unit_len
            ),
        ));
    }
    Ok(unit)
}

fn check_timestamp(field: FieldValue, ctx: &ParseContext) -> Result<DateTime<Utc>, Rejection> {
    let ts = match field {
        FieldValue::Text(text) => parse_timestamp_text(text, ctx.limits.timezone)?,
        FieldValue::Json(raw) => match raw.as_bytes().first() {
            Some(b'"') => {
                let text = json_string(raw).map_err(|e| malformed(&e))?;
                parse_timestamp_text(&text, ctx.limits.timezone)?
            }
            Some(b'-' | b'0'..=b'9') => parse_epoch(raw)?,
            _ => {
                return Err(Rejection::new(
                    Reason::WrongType,
                    format!(
                        "'timestamp' must be a string or a number, got {}",
                        excerpt(raw)
                    ),
                ));
            }
        },
    };
    if ts > ctx.latest {
        return Err(Rejection::new(
            Reason::FutureTimestamp,
            format!(
                "timestamp {} is more than {} ahead of now ({})",
                ts.to_rfc3339(),
                humantime::format_duration(ctx.limits.max_future_skew),
                ctx.now.to_rfc3339()
            ),
        ));
    }
    if ts < ctx.earliest {
        return Err(Rejection::new(
            Reason::TooOld,
            format!(
                "timestamp {} is older than the limit of {}",
                ts.to_rfc3339(),
                humantime::format_duration(ctx.limits.max_age)
            ),
        ));
    }
    Ok(ts)
}

/// RFC 3339 with offset, naive `YYYY-MM-DD HH:MM:SS[.fff]` (space or `T`) in `tz`, or epoch digits.
pub fn parse_timestamp_text(text: &str, tz: Tz) -> Result<DateTime<Utc>, Rejection> {
    // The usual shape first: it has no space around it and is not epoch digits.
    if let Some(ts) = common_rfc3339(text.as_bytes()) {
        return Ok(ts);
    }
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_epoch(text);
    }
    if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        return Ok(ts.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|_| {
            Rejection::new(
                Reason::BadTimestamp,
                format!(
                    "timestamp {} is none of: RFC 3339 with offset, 'YYYY-MM-DD HH:MM:SS[.fff]', epoch seconds or milliseconds",
                    excerpt(text)
                ),
            )
        })?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(ts) | LocalResult::Ambiguous(ts, _) => Ok(ts.with_timezone(&Utc)),
        LocalResult::None => Err(Rejection::new(
            Reason::BadTimestamp,
            format!(
                "timestamp {} does not exist in time zone {tz} (a daylight-saving gap)",
                excerpt(text)
            ),
        )),
    }
}

/// The shape nearly every device sends, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, read in one
/// pass; `None` for anything else, which chrono then parses and judges (other separators, a leap
/// second, more than nine fraction digits, an impossible date). chrono's general parser and the
/// calendar conversions around it were a tenth of the validate stage's CPU.
fn common_rfc3339(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8], from: usize, count: usize) -> Option<i64> {
        let mut n = 0;
        for &d in text.get(from..from + count)? {
            let digit = d.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            n = n * 10 + i64::from(digit);
        }
        Some(n)
    }
    let Some(
        &[
            _,
            _,
            _,
            _,
            b'-',
            _,
            _,
            b'-',
            _,
            _,
            b'T',
            _,
            _,
            b':',
            _,
            _,
            b':',
            _,
            _,
            _,
        ],
    ) = text.get(..20)
    else {
        return None;
    };
    let (year, month, day) = (
        digits(text, 0, 4)?,
        digits(text, 5, 2)?,
        digits(text, 8, 2)?,
    );
    let (hour, minute, second) = (
        digits(text, 11, 2)?,
        digits(text, 14, 2)?,
        digits(text, 17, 2)?,
    );
    // The date's and time's ranges are checked where they become a `NaiveDateTime`, below; a
    // leap second (60) is left to chrono's parser.
    if second > 59 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if text[at] == b'.' {
        let fraction = text[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if fraction == 0 || fraction > 9 {
            return None;
        }
        nanos = digits(text, at + 1, fraction)? * 10i64.pow((9 - fraction) as u32);
        at += 1 + fraction;
    }
    let offset_seconds = match &text[at..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(text, at + 1, 2)?, digits(text, at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    // chrono's calendar straight from the fields: a count of seconds since the epoch would have
    // it divide its way back to them (`from_timestamp`), twice the cost.
    let local = NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32)?.and_hms_nano_opt(
        hour as u32,
        minute as u32,
        second as u32,
        nanos as u32,
    )?;
    let utc = match offset_seconds {
        0 => local,
        offset => local.checked_sub_signed(TimeDelta::seconds(offset))?,
    };
    Some(utc.and_utc())
}

/// Epoch seconds, or milliseconds when the number is too large to be seconds (>= 1e11, which as
/// seconds would be the year 5138).
fn parse_epoch(text: &str) -> Result<DateTime<Utc>, Rejection> {
    let bad = || {
        Rejection::new(
            Reason::BadTimestamp,
            format!("timestamp {} is not a valid epoch time", excerpt(text)),
        )
    };
    let number: f64 = text.trim().parse().map_err(|_| bad())?;
    if !number.is_finite() {
        return Err(bad());
    }
    let micros = if number.abs() >= 1e11 {
        number * 1e3
    } else {
        number * 1e6
    };
    if micros.abs() > i64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    DateTime::from_timestamp_micros(micros.round() as i64).ok_or_else(bad)
}

fn too_large(size: usize, limits: &Limits) -> Rejection {
    Rejection::new(
        Reason::TooLarge,
        format!(
            "message is {size} bytes, more than the limit of {} bytes",
            limits.max_message_bytes
        ),
    )
}

fn malformed(error: &serde_json::Error) -> Rejection {
    Rejection::new(Reason::MalformedJson, format!("malformed JSON: {error}"))
}

/// A bounded, printable excerpt of a bad value for a rejection's detail.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().count() > MAX_CHARS {
        out.push('…');
    }
    format!("{out:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(limits: &Limits) -> ParseContext<'_> {
        ParseContext::new(
            limits,
            "2026-01-01T00:00:00Z".parse().unwrap(),
            "2025-12-31T23:59:59.123Z".parse().unwrap(),
        )
    }

    fn one(bytes: &[u8]) -> Result<Reading, Rejection> {
        let limits = Limits::default();
        let mut outcomes = parse_json(bytes, &ctx(&limits));
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        outcomes.pop().unwrap()
    }

    fn reason(bytes: &[u8]) -> Reason {
        one(bytes).expect_err("should be rejected").reason
    }

    #[test]
    fn design_example_naive_timestamp_is_utc_by_default() {
        let r =
            one(br#"{"sensor": "temperature", "value": 14, "timestamp": "2024-12-01 12:00:00"}"#)
                .unwrap();
        assert_eq!(&*r.sensor_id, "temperature");
        assert_eq!(r.value, 14.0);
        assert_eq!(
            r.ts,
            "2024-12-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn naive_timestamp_in_configured_zone() {
        let limits = Limits {
            timezone: "Europe/Berlin".parse().unwrap(),
            ..Limits::default()
        };
        let out = parse_json(
            br#"{"sensor":"t","value":1,"timestamp":"2024-12-01 12:00:00.5"}"#,
            &ctx(&limits),
        );
        let r = out[0].as_ref().unwrap();
        assert_eq!(
            r.ts,
            "2024-12-01T11:00:00.5Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn timestamp_forms() {
        let expected: DateTime<Utc> = "2024-12-01T12:00:00Z".parse().unwrap();
        for ts in [
            r#""2024-12-01T12:00:00Z""#,
            r#""2024-12-01T13:00:00+01:00""#,
            r#""2024-12-01T12:00:00""#,
            "1733054400",
            "1733054400000",
            r#""1733054400""#,
            "1733054400.0",
        ] {
            let msg = format!(r#"{{"sensor":"t","value":1,"timestamp":{ts}}}"#);
            assert_eq!(one(msg.as_bytes()).unwrap().ts, expected, "{ts}");
        }
    }

    #[test]
    fn missing_timestamp_is_the_receive_time() {
        let r = one(br#"{"sensor":"t","value":1}"#).unwrap();
        assert_eq!(
            r.ts,
            "2025-12-31T23:59:59.123Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn timestamps_are_truncated_to_microseconds() {
        let r = one(br#"{"sensor":"t","value":1,"timestamp":"2024-12-01T12:00:00.123456789Z"}"#)
            .unwrap();
        assert_eq!(r.ts.timestamp_subsec_nanos(), 123_456_000);
    }

    #[test]
    fn numeric_strings_are_numbers() {
        assert_eq!(
            one(br#"{"sensor":"t","value":"12.5"}"#).unwrap().value,
            12.5
        );
        assert_eq!(
            one(br#"{"sensor":"t","value":" -3 "}"#).unwrap().value,
            -3.0
        );
    }

    #[test]
    fn escaped_strings_are_unescaped_plain_ones_taken_as_they_are() {
        let r = one(
            br#"{"sensor":"me\u0074er-1","value":"\u0031.5","timestamp":"2024-12-01T12:00:00\u005a","unit":"k\u0057h"}"#,
        )
        .unwrap();
        assert_eq!(&*r.sensor_id, "meter-1");
        assert_eq!(r.value, 1.5);
        assert_eq!(r.ts.to_rfc3339(), "2024-12-01T12:00:00+00:00");
        assert_eq!(r.unit.as_deref(), Some("kWh"));
        // An escaped quote or control character is unescaped, then judged by the rules.
        assert_eq!(
            reason(br#"{"sensor":"a\"b","value":1}"#),
            Reason::BadSensorId
        );
        assert_eq!(
            reason(br#"{"sensor":"a","value":1,"unit":"\u0007"}"#),
            Reason::BadUnit
        );
        assert_eq!(
            one(br#"{"sensor":"a","value":1,"unit":"\"C\""}"#)
                .unwrap()
                .unit
                .as_deref(),
            Some("\"C\"")
        );
    }

    #[test]
    fn arrays_give_one_outcome_per_element() {
        let limits = Limits::default();
        let out = parse_json(
            br#"[{"sensor":"a","value":1},{"sensor":"","value":2},7,{"sensor":"c","value":3,"unit":"kWh"}]"#,
            &ctx(&limits),
        );
        assert_eq!(out.len(), 4);
        assert!(out[0].is_ok());
        assert_eq!(out[1].as_ref().unwrap_err().reason, Reason::BadSensorId);
        assert_eq!(out[1].as_ref().unwrap_err().index, Some(1));
        assert_eq!(out[2].as_ref().unwrap_err().reason, Reason::WrongShape);
        assert_eq!(out[3].as_ref().unwrap().unit.as_deref(), Some("kWh"));
    }

    #[test]
    fn stream_fields_form() {
        let limits = Limits::default();
        let fields = vec![
            (b"sensor".to_vec(), b"temperature".to_vec()),
            (b"value".to_vec(), b"14".to_vec()),
            (b"timestamp".to_vec(), b"2024-12-01T12:00:00Z".to_vec()),
        ];
        let out = parse_entry_fields(&fields, &ctx(&limits));
        let r = out[0].as_ref().unwrap();
        assert_eq!((&*r.sensor_id, r.value), ("temperature", 14.0));
        let data = vec![(b"data".to_vec(), br#"{"sensor":"x","value":1}"#.to_vec())];
        assert!(parse_entry_fields(&data, &ctx(&limits))[0].is_ok());
        let none = vec![(b"foo".to_vec(), b"bar".to_vec())];
        assert_eq!(
            parse_entry_fields(&none, &ctx(&limits))[0]
                .as_ref()
                .unwrap_err()
                .reason,
            Reason::MissingField
        );
    }

    #[test]
    fn rejection_reasons() {
        let cases: &[(&[u8], Reason)] = &[
            (b"\xff\xfe", Reason::InvalidUtf8),
            (b"{\"sensor\": ", Reason::MalformedJson),
            (b"42", Reason::WrongShape),
            (b"[]", Reason::WrongShape),
            (br#"{"value":1}"#, Reason::MissingField),
            (br#"{"sensor":"t"}"#, Reason::MissingField),
            (br#"{"sensor":"t","value":null}"#, Reason::MissingField),
            (br#"{"sensor":1,"value":1}"#, Reason::WrongType),
            (br#"{"sensor":"t","value":{}}"#, Reason::WrongType),
            (br#"{"sensor":"t","value":true}"#, Reason::WrongType),
            (br#"{"sensor":"t","value":"abc"}"#, Reason::NotANumber),
            (br#"{"sensor":"t","value":1e400}"#, Reason::NotFinite),
            (br#"{"sensor":"t","value":"NaN"}"#, Reason::NotFinite),
            (br#"{"sensor":"t","value":"-inf"}"#, Reason::NotFinite),
            (br#"{"sensor":"","value":1}"#, Reason::BadSensorId),
            (br#"{"sensor":"a\u0000b","value":1}"#, Reason::BadSensorId),
            (
                br#"{"sensor":"x'; DROP TABLE readings;--","value":1}"#,
                Reason::BadSensorId,
            ),
            (br#"{"sensor":"t","value":1,"unit":5}"#, Reason::BadUnit),
            (
                br#"{"sensor":"t","value":1,"timestamp":"99999-01-01T00:00:00Z"}"#,
                Reason::BadTimestamp,
            ),
            (
                br#"{"sensor":"t","value":1,"timestamp":"yesterday"}"#,
                Reason::BadTimestamp,
            ),
            (
                br#"{"sensor":"t","value":1,"timestamp":true}"#,
                Reason::WrongType,
            ),
            (
                br#"{"sensor":"t","value":1,"timestamp":"2026-01-03T00:00:00Z"}"#,
                Reason::FutureTimestamp,
            ),
            (
                br#"{"sensor":"t","value":1,"timestamp":"1990-01-01T00:00:00Z"}"#,
                Reason::TooOld,
            ),
            (
                br#"{"sensor":"t","value":1,"timestamp":1e300}"#,
                Reason::BadTimestamp,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                reason(bytes),
                *expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn deeply_nested_json_is_rejected_not_a_stack_overflow() {
        let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_value = format!(
            r#"{{"sensor":"t","value":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let deep_unknown = format!(
            r#"{{"sensor":"t","value":1,"x":{}1{}}}"#,
            "{\"a\":".repeat(5_000),
            "}".repeat(5_000)
        );
        for deep in [deep_array, deep_value, deep_unknown] {
            let rejection = one(deep.as_bytes()).unwrap_err();
            assert_eq!(rejection.reason, Reason::MalformedJson);
            assert!(
                rejection.detail.contains("deeper than 32"),
                "{}",
                rejection.detail
            );
        }
        let brackets_in_strings = format!(
            r#"{{"sensor":"t","value":1,"note":"{}\"{}"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(one(brackets_in_strings.as_bytes()).is_ok());
        // The object is one level: 31 arrays inside it make 32 (accepted), 32 make 33.
        let nested = |levels: usize| {
            format!(
                r#"{{"sensor":"t","value":1,"x":{}1{}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(one(nested(30).as_bytes()).is_ok());
        assert!(one(nested(31).as_bytes()).is_ok());
        assert_eq!(
            one(nested(32).as_bytes()).unwrap_err().reason,
            Reason::MalformedJson
        );
    }

    #[test]
    fn oversize_is_rejected_before_parsing() {
        let limits = Limits {
            max_message_bytes: 16,
            ..Limits::default()
        };
        let out = parse_json(br#"{"sensor":"t","value":1}"#, &ctx(&limits));
        assert_eq!(out[0].as_ref().unwrap_err().reason, Reason::TooLarge);
    }

    #[test]
    fn the_common_shape_is_read_in_one_pass() {
        for text in [
            r#"{"sensor":"t","value":14,"timestamp":"2024-12-01 12:00:00"}"#,
            r#" { "sensor" : "t" , "value" : "12.5" , "unit": null, "x": [] } "#,
            "{\"sensor\":\"t\",\n\t\"value\":-1.5e3,\"ok\":true,\"no\":false}\r\n",
            r#"{}"#,
        ] {
            let via_serde = text.contains('[');
            assert_eq!(common::object(text).is_some(), !via_serde, "{text}");
        }
        let array =
            r#"[{"sensor":"a","value":1}, {"sensor":"b","value":2,"timestamp":1700000000}]"#;
        assert_eq!(common::array(array).map(|items| items.len()), Some(2));
        // Left to serde_json: escapes, repeated fields, bad numbers, trailing text, empty arrays.
        for text in [
            r#"{"sensor":"t\u00e9","value":1}"#,
            r#"{"sensor":"t","sensor":"u","value":1}"#,
            r#"{"sensor":"t","value":01}"#,
            r#"{"sensor":"t","value":1.}"#,
            r#"{"sensor":"t","value":1}x"#,
            r#"{"sensor":"t","value":1,}"#,
            "[]",
            r#"[{"sensor":"t","value":1},]"#,
        ] {
            assert!(
                common::object(text).is_none() && common::array(text).is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn readings_parsed_together_share_their_sensor_id() {
        let limits = Limits::default();
        let ids = SensorIds::default();
        let shared = ctx(&limits).with_ids(&ids);
        let first = parse_json(br#"{"sensor":"t","value":1}"#, &shared);
        let more = parse_entry_fields(
            &[(
                "data",
                r#"[{"sensor":"t","value":2},{"sensor":"u","value":3}]"#,
            )],
            &shared,
        );
        let id = |outcome: &Result<Reading, Rejection>| outcome.as_ref().unwrap().sensor_id.clone();
        assert!(Arc::ptr_eq(&id(&first[0]), &id(&more[0])));
        assert_eq!(&*id(&more[1]), "u");
        // Without a shared set each reading has its own.
        let alone = parse_json(br#"{"sensor":"t","value":1}"#, &ctx(&limits));
        assert!(!Arc::ptr_eq(&id(&first[0]), &id(&alone[0])));
        assert_eq!(id(&first[0]), id(&alone[0]));
    }

    #[test]
    fn a_refused_sensor_id_names_the_character_and_where() {
        for (text, names) in [
            (r#"{"sensor":"café-1","value":1}"#, "'é' at byte 3"),
            (r#"{"sensor":"a b","value":1}"#, "' ' at byte 1"),
            (r#"{"sensor":"x;DROP","value":1}"#, "';' at byte 1"),
        ] {
            let rejection = one(text.as_bytes()).unwrap_err();
            assert_eq!(rejection.reason, Reason::BadSensorId);
            assert!(rejection.detail.contains(names), "{}", rejection.detail);
        }
    }

    #[test]
    fn sensor_id_length_limit() {
        let long = format!(r#"{{"sensor":"{}","value":1}}"#, "a".repeat(129));
        assert_eq!(reason(long.as_bytes()), Reason::BadSensorId);
        let ok = format!(r#"{{"sensor":"{}","value":1}}"#, "a".repeat(128));
        assert!(one(ok.as_bytes()).is_ok());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// An object's field name: one of a reading's, or another.
        fn field_name() -> impl Strategy<Value = String> + Clone {
            prop_oneof![
                Just("sensor".to_string()),
                Just("value".to_string()),
                Just("timestamp".to_string()),
                Just("unit".to_string()),
                "[a-z]{1,6}"
            ]
        }

        /// A JSON scalar of any kind: null, a boolean, an integer, a double, printable text.
        fn plain_scalar() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                "[ -~]{0,20}".prop_map(serde_json::Value::String),
            ]
        }

        /// Arbitrary JSON values, nested a few levels, with the reading's field names likely.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                5 => plain_scalar(),
                1 => prop_oneof![
                    Just("NaN"),
                    Just("inf"),
                    Just("1e400"),
                    Just("12.5"),
                    Just("2024-12-01 12:00:00"),
                    Just("99999-01-01T00:00:00Z")
                ]
                .prop_map(|s| serde_json::Value::String(s.into())),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                    prop::collection::vec((field_name(), inner), 0..6)
                        .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect())),
                ]
            })
        }

        /// Messages of the common shape: flat objects of scalars with the reading's field names
        /// likely, alone or in arrays.
        fn flat_message() -> impl Strategy<Value = serde_json::Value> {
            let scalar = prop_oneof![
                5 => plain_scalar(),
                1 => "[a-z]{1,8}".prop_map(serde_json::Value::String),
                1 => Just(serde_json::Value::String("2024-12-01T12:00:00Z".into())),
                1 => (1_500_000_000i64..1_800_000_000).prop_map(serde_json::Value::from),
            ];
            let object = prop::collection::vec((field_name(), scalar), 0..6)
                .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect()));
            prop_oneof![
                object.clone(),
                prop::collection::vec(object, 1..4).prop_map(serde_json::Value::Array),
            ]
        }

        fn check_outcomes(outcomes: &Outcomes) -> Result<(), TestCaseError> {
            prop_assert!(
                !outcomes.is_empty(),
                "every message gives at least one outcome"
            );
            for outcome in outcomes {
                match outcome {
                    Ok(reading) => {
                        prop_assert!(reading.value.is_finite());
                        prop_assert!(!reading.sensor_id.is_empty());
                        prop_assert_eq!(reading.ts.timestamp_subsec_nanos() % 1000, 0);
                    }
                    Err(rejection) => prop_assert!(!rejection.detail.is_empty()),
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// The plain-decimal reader gives the standard parser's double, to the bit, whenever it
            /// answers, and answers for every plain decimal of up to 15 digits; anything else
            /// (exponents, signs, spaces, more digits, `inf`) is left to the standard parser.
            #[test]
            fn plain_decimal_agrees_with_the_standard_parser(
                text in prop_oneof![
                    "-?[0-9]{1,15}",
                    "-?[0-9]{0,8}\\.[0-9]{0,8}",
                    "-?[0-9]{1,20}(\\.[0-9]{1,20})?",
                    "[-+0-9.eE ]{0,20}",
                    any::<f64>().prop_map(|x| x.to_string()),
                    prop::sample::select(vec!["inf", "-NaN", "1e5", "+1", ".", "-", "-.5", "5."])
                        .prop_map(str::to_owned),
                ],
            ) {
                let ours = plain_decimal(&text);
                let standard = text.trim().parse::<f64>().ok();
                if let Some(ours) = ours {
                    prop_assert_eq!(Some(ours.to_bits()), standard.map(f64::to_bits), "{}", text);
                }
                let digits = text.bytes().filter(u8::is_ascii_digit).count();
                let plain = text.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    && text.matches('.').count() <= 1
                    && text.matches('-').count() <= 1
                    && (1..=15).contains(&digits);
                prop_assert_eq!(ours.is_some(), plain, "{}", text);
            }

            /// The one-pass reader of the common RFC 3339 shape gives chrono's instant whenever it
            /// answers, and answers for every date chrono accepts in that shape; impossible dates,
            /// leap seconds, other separators and long fractions are left to chrono.
            #[test]
            fn common_rfc3339_agrees_with_chrono(
                // Month ends and February often: where calendars go wrong.
                (year, month, day) in (
                    0u32..=9999,
                    prop_oneof![0u32..=13, Just(2)],
                    prop_oneof![0u32..=32, 28u32..=31],
                ),
                (hour, minute, second) in (0u32..=24, 0u32..=60, 0u32..=60),
                fraction in prop::collection::vec(0u8..10, 0..=11),
                separator in prop::sample::select(vec!['T', 'T', 'T', 't', ' ']),
                offset in prop::option::of((any::<bool>(), 0u32..=24, 0u32..=60)),
                lowercase_z in any::<bool>(),
            ) {
                let mut text = format!(
                    "{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}"
                );
                if !fraction.is_empty() {
                    text.push('.');
                    text.extend(fraction.iter().map(|d| char::from(b'0' + d)));
                }
                match offset {
                    None => text.push(if lowercase_z { 'z' } else { 'Z' }),
                    Some((east, h, m)) => {
                        text.push_str(&format!("{}{h:02}:{m:02}", if east { '+' } else { '-' }))
                    }
                }
                let fast = common_rfc3339(text.as_bytes());
                let chrono = DateTime::parse_from_rfc3339(&text).map(|ts| ts.with_timezone(&Utc));
                if let Some(fast) = fast {
                    prop_assert_eq!(Ok(fast), chrono, "{}", text);
                }
                let common_shape = separator == 'T'
                    && second < 60
                    && fraction.len() <= 9
                    && (offset.is_some() || !lowercase_z);
                if common_shape && chrono.is_ok() {
                    prop_assert_eq!(fast, chrono.ok(), "{}", text);
                }
            }

            /// The one-pass reader of the common shape gives serde_json's outcome whenever it
            /// answers: on arbitrary JSON, laid out compactly or with whitespace, and on that JSON
            /// with a character of JSON's syntax put in, taken out or replaced.
            #[test]
            fn common_shape_reader_agrees_with_serde_json(
                value in prop_oneof![flat_message(), json_value()],
                pretty in any::<bool>(),
                edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b"{}[],:\" \\\t\n0123456789-+.eEnulltruefalse\x01\xc3\xa9".to_vec())), 0..3),
            ) {
                let limits = Limits::default();
                let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
                let mut bytes = text.into_bytes();
                for (at, edit, byte) in edits {
                    let at = at.index(bytes.len() + 1);
                    match edit {
                        0 => bytes.insert(at, byte),
                        1 if at < bytes.len() => { bytes.remove(at); }
                        _ if at < bytes.len() => bytes[at] = byte,
                        _ => {}
                    }
                }
                let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
                if common::object(text).is_some() || common::array(text).is_some() {
                    prop_assert_eq!(parse_json(&bytes, &ctx(&limits)), parse_json_text(text, &ctx(&limits)), "{}", text);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let limits = Limits::default();
                check_outcomes(&parse_json(&bytes, &ctx(&limits)))?;
                let fields = vec![(b"sensor".to_vec(), bytes.clone()), (b"value".to_vec(), bytes.clone()), (b"timestamp".to_vec(), bytes)];
                check_outcomes(&parse_entry_fields(&fields, &ctx(&limits)))?;
            }

            #[test]
            fn arbitrary_json_never_panics_nor_accepts_non_finite(value in json_value()) {
                let limits = Limits::default();
                let text = serde_json::to_vec(&value).unwrap();
                check_outcomes(&parse_json(&text, &ctx(&limits)))?;
            }

            #[test]
            fn arbitrary_readings_are_accepted_exactly_when_valid(
                sensor in "[a-z0-9_.:-]{1,20}",
                value in any::<f64>(),
                seconds in 1_500_000_000i64..1_800_000_000,
            ) {
                let limits = Limits::default();
                let text = format!(r#"{{"sensor":"{sensor}","value":{value:e},"timestamp":{seconds}}}"#);
                let outcomes = parse_json(text.as_bytes(), &ctx(&limits));
                check_outcomes(&outcomes)?;
                let in_range = DateTime::from_timestamp(seconds, 0).unwrap() <= ctx(&limits).now + TimeDelta::minutes(5)
                    && ctx(&limits).now.signed_duration_since(DateTime::from_timestamp(seconds, 0).unwrap()) <= TimeDelta::days(3650);
                prop_assert_eq!(outcomes[0].is_ok(), value.is_finite() && in_range, "{}", text);
            }
        }
    }
}
