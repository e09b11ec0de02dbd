//! Parse, don't validate: the bytes of one stream entry become valid [`Reading`]s or [`Rejection`]s.
//!
//! An entry reaches the parser as sensorhub's JSON in its `data` field (one reading object or an
//! array of them), as fields that are the reading itself (`sensor temperature value 14 timestamp
//! ...`), or as a payload in a form the entry names (`form`: line protocol, the MQTT rules'
//! forms: [`Form`]; README, "Input"). Every form is reduced to the same [`Fields`] and checked by
//! one function, so the rules cannot drift apart. A rejection is an expected outcome with a reason code from a closed set ([`Reason`]), never
//! a panic or an error log line.

use crate::domain::FastState;
use crate::domain::fields;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use smallvec::{SmallVec, smallvec};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

mod fast_json;
mod forms;
mod json;
mod line;
mod object;
mod predicate;
pub mod sparkplug;
mod text;
mod timestamp;
mod value;

#[cfg(test)]
mod tests;

use text::{check_sensor_id, check_unit, text_field};
use timestamp::{check_range, check_timestamp, truncated_to_micros};
use value::check_value;

pub use forms::{Form, parse_form};
pub use json::{MAX_JSON_DEPTH, parse_json};
pub use line::{Precision, parse_line_protocol};
pub use object::{
    DEFAULT_STATES, NO_VALUE, ObjectOptions, PRESET_FORMS, Skip, Skipped, TimeFormat,
    preset_options,
};
pub use predicate::Predicate;
pub use timestamp::parse_timestamp_text;

/// One valid sensor reading, ready to be stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The sensor's id: non-empty, at most [`Limits::max_sensor_id_len`] bytes of letters and
    /// digits of any script and a few marks (see `text::first_refused`). Shared: the readings
    /// of one sensor parsed together hold one copy ([`SensorIds`]).
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
    /// A line of InfluxDB line protocol that cannot be parsed.
    MalformedLine,
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
    /// The sensor id is empty, too long, or has a character ids may not hold (control characters,
    /// quotes, backslashes, semicolons, ...).
    BadSensorId,
    /// `unit` is not a short printable string.
    BadUnit,
    /// `timestamp` has none of the accepted forms, or names a time that does not exist.
    BadTimestamp,
    /// `timestamp` is further in the future than [`Limits::max_future_skew`].
    FutureTimestamp,
    /// `timestamp` is older than [`Limits::max_age`].
    TooOld,
    /// The reading has no timestamp and its stream entry cannot give it a time of its own: more
    /// entries fell in one millisecond of stream time than there are microseconds in it.
    NoUniqueTime,
    /// PostgreSQL refused the reading itself (poison data), after bounded retries.
    DatabaseRejected,
    /// A reading of the same sensor and timestamp is stored with a different value; the value
    /// committed first stays.
    ConflictingValue,
}

impl Reason {
    /// Every reason, for tests and for pre-registering metric labels.
    pub const ALL: [Reason; 17] = [
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::MalformedJson,
        Reason::MalformedLine,
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
        Reason::NoUniqueTime,
        Reason::DatabaseRejected,
        Reason::ConflictingValue,
    ];

    /// The reason code as it appears in metrics and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::MalformedJson => "malformed_json",
            Reason::MalformedLine => "malformed_line",
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
            Reason::NoUniqueTime => "no_unique_time",
            Reason::DatabaseRejected => "database_rejected",
            Reason::ConflictingValue => "conflicting_value",
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
    /// Position in the array when one element of an array was rejected, or the line number
    /// (from 0) in a payload of lines; `None` for the whole message.
    pub index: Option<usize>,
    /// The bytes of the payload the rejection is about, when it is one line of several: the
    /// dead letter keeps that line rather than the whole payload.
    pub part: Option<Range<usize>>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            index: None,
            part: None,
        }
    }
}

/// Validation limits; see the `config` module for the variables that set them and why the defaults.
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
    /// redelivery would store a second row; `Err` names why the entry cannot give one. Kept as a
    /// number: only a reading without a timestamp makes it a `DateTime`, a calendar conversion
    /// most entries never need.
    received_micros: Result<i64, NoUniqueTime>,
    /// Newest accepted timestamp: `now` + `max_future_skew`.
    latest: DateTime<Utc>,
    /// Oldest accepted timestamp: `now` − `max_age`.
    earliest: DateTime<Utc>,
    /// Where the sensor ids of the readings parsed with this context are kept once each.
    ids: Option<&'a SensorIds>,
    /// Where values that are not readings (states meaning "no value", text) are counted.
    skipped: Option<&'a Skipped>,
}

/// Why a stream entry cannot give a reading without a timestamp a time of its own.
#[derive(Clone, Copy, Debug)]
struct NoUniqueTime {
    ms: u64,
    seq: u64,
}

/// The time of a reading without a timestamp: its entry's, checked against the accepted range
/// like any timestamp.
fn received_time(ctx: &ParseContext) -> Result<DateTime<Utc>, Rejection> {
    let micros = ctx.received_micros.map_err(|NoUniqueTime { ms, seq }| {
        Rejection::new(
            Reason::NoUniqueTime,
            format!(
                "the reading has no timestamp and its stream entry {ms}-{seq} cannot give it one \
                 of its own: an entry's time is its millisecond plus its sequence number in \
                 microseconds, distinct for the first 1000 entries of a millisecond only; give \
                 the reading a timestamp"
            ),
        )
    })?;
    let ts = DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MAX_UTC);
    check_range(
        ts,
        ctx,
        "the stream entry's time (the reading has no timestamp)",
    )
}

/// The sensor ids of readings parsed together (a batch), each kept once: a reading holds a shared
/// reference rather than its own copy. A batch names each sensor many times; with one copy each,
/// the later stages compare, hash and copy ids that sit together in the cache, where a copy per
/// reading was an allocation and, by the time the write stage encoded the rows, cache misses.
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
            received_micros: Ok(received_at.timestamp_micros()),
            latest: now
                .checked_add_signed(skew)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            earliest: now
                .checked_sub_signed(age)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            ids: None,
            skipped: None,
        }
    }

    /// Sets the timestamp of a reading that has none from its stream entry's id `<ms>-<seq>`:
    /// the millisecond plus the sequence number as microseconds, so entries of one millisecond
    /// get distinct times, the same on every delivery. An entry numbered 1,000 or more within its
    /// millisecond (Redis pins ids to one millisecond when its clock steps back, or after an
    /// explicit id) has no such time: its readings without a timestamp are rejected with
    /// [`Reason::NoUniqueTime`] rather than collide with another entry's.
    pub fn set_received_entry(&mut self, ms: u64, seq: u64) {
        self.received_micros = match i64::try_from(ms) {
            Ok(ms) if seq < 1000 && ms < i64::MAX / 1000 => Ok(ms * 1000 + seq as i64),
            _ => Err(NoUniqueTime { ms, seq }),
        };
    }

    /// The same context, counting the values it skips in `skipped`.
    pub fn with_skipped(self, skipped: &'a Skipped) -> Self {
        Self {
            skipped: Some(skipped),
            ..self
        }
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

/// One outcome per reading of the message (or one rejection for the whole message). Most
/// messages hold one reading: its outcome is kept inline, with no allocation per message.
pub type Outcomes = SmallVec<[Result<Reading, Rejection>; 1]>;

/// Parses a stream entry's fields: a `data` field holding JSON (or, with a `form` field, a
/// payload in that form: [`parse_form`]), or the reading's own fields.
pub fn parse_entry_fields<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    fields: &[(N, V)],
    ctx: &ParseContext,
) -> Outcomes {
    let field = |wanted: &[u8]| {
        fields
            .iter()
            .find(|(name, _)| name.as_ref() == wanted)
            .map(|(_, value)| value.as_ref())
    };
    if let Some(data) = field(fields::DATA.as_bytes()) {
        // A message from a source that names its payload's form (MQTT): read in that form.
        if let Some(form) = field(fields::FORM.as_bytes()) {
            if form == b"sparkplug" {
                // As every form: a payload over the limit (the source cuts it just past) is
                // refused for its size, not for the bytes cut off.
                if data.len() > ctx.limits.max_message_bytes {
                    return smallvec![Err(too_large(data.len(), ctx.limits))];
                }
                let text = |name: &str| {
                    field(name.as_bytes()).and_then(|value| std::str::from_utf8(value).ok())
                };
                return sparkplug::parse_sparkplug(
                    text(fields::TOPIC).unwrap_or_default(),
                    text(fields::PREFIX).unwrap_or_default(),
                    text(fields::NAMES).unwrap_or_default(),
                    text(fields::UNREAD),
                    data,
                    ctx,
                );
            }
            let form = match std::str::from_utf8(form).map_err(|e| e.to_string()) {
                Ok(text) => text.parse::<Form>(),
                Err(error) => Err(error),
            };
            return match form {
                Ok(form) => {
                    let prefix = field(fields::PREFIX.as_bytes()).unwrap_or_default();
                    let prefix = std::str::from_utf8(prefix).unwrap_or_default();
                    parse_form(&form, prefix, data, ctx)
                }
                Err(error) => smallvec![Err(Rejection::new(
                    Reason::WrongShape,
                    format!("entry names no known payload form: {error}")
                ))],
            };
        }
        return parse_json(data, ctx);
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

/// The one place every rule of a reading is checked.
fn check(fields: Fields, ctx: &ParseContext) -> Result<Reading, Rejection> {
    let sensor = fields
        .sensor
        .ok_or_else(|| Rejection::new(Reason::MissingField, "missing field 'sensor'"))?;
    let sensor_id = shared_id(text_field("sensor", sensor)?, ctx)?;
    let value = fields
        .value
        .ok_or_else(|| Rejection::new(Reason::MissingField, "missing field 'value'"))?;
    let value = check_value(value)?;
    let ts = match fields.timestamp {
        None => received_time(ctx)?,
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

/// The checked id, shared with the other readings of the sensor parsed with `ctx`.
fn shared_id(id: Cow<str>, ctx: &ParseContext) -> Result<Arc<str>, Rejection> {
    let id = check_sensor_id(id, ctx.limits)?;
    Ok(match ctx.ids {
        Some(ids) => ids.get(&id),
        None => Arc::from(id),
    })
}

/// A reading whose value is already a number: the same checks as [`check`] makes of the id, the
/// value and the time (`None`: the time of receipt).
fn validated(
    sensor: &str,
    value: f64,
    ts: Option<DateTime<Utc>>,
    ctx: &ParseContext,
) -> Result<Reading, Rejection> {
    let sensor_id = shared_id(Cow::Borrowed(sensor), ctx)?;
    if !value.is_finite() {
        return Err(Rejection::new(
            Reason::NotFinite,
            format!("value of {} is not a finite double", excerpt(sensor)),
        ));
    }
    let ts = match ts {
        None => received_time(ctx)?,
        Some(ts) => check_range(ts, ctx, "timestamp")?,
    };
    Ok(Reading {
        sensor_id,
        ts: truncated_to_micros(ts),
        value,
        unit: None,
    })
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

/// Whether `id` passes the id rules, so that it could name a stored sensor: the read API answers
/// 404 for any other without asking the database (which refuses some, such as a NUL byte).
pub fn could_be_sensor_id(id: &str, limits: &Limits) -> bool {
    check_sensor_id(Cow::Borrowed(id), limits).is_ok()
}

/// A bounded, printable excerpt of a bad value for a rejection's detail (or an error answer).
pub fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = text.chars().take(MAX_CHARS).collect();
    if text.chars().count() > MAX_CHARS {
        out.push('…');
    }
    format!("{out:?}")
}
