//! Payloads of the devices people own: nested JSON objects read whole (the `object` form and the
//! firmware presets built on it) and bare states (the `state` form).
//!
//! An object is flattened into one reading per leaf, named by its key path (`ENERGY.Total`,
//! `temperature.tC`) after the topic's prefix. A leaf is a reading when it is a number, a string
//! holding a number (some firmwares send those), `true`/`false`, or a state word (`ON`/`OFF`,
//! `open`/`closed`, ..., overridable per rule); words that mean "no value" (`unavailable`,
//! `unknown`, `None`, `null`, `nan`) are skipped, and so are other text and arrays (unless asked
//! for): skipped values are counted ([`Skipped`]), never dead-lettered. A time field, by key path
//! and format, is the readings' time; without one, the time of receipt.

use super::text::json_string;
use super::timestamp::{check_range, parse_epoch};
use super::value::check_value;
use super::{
    FieldValue, Outcomes, ParseContext, Reading, Reason, Rejection, excerpt, malformed,
    parse_timestamp_text, validated,
};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use smallvec::smallvec;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;

/// Why a value was not a reading, though the message was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A word that means "no value": `unavailable`, `unknown`, `None`, `null`, `nan`, or empty.
    NoValue,
    /// Text that is neither a number nor a state word.
    Text,
    /// An array, not asked for.
    Array,
    /// A kind of value sensorhub does not read (Sparkplug B datasets, templates, bytes, files).
    Unsupported,
}

impl Skip {
    pub const ALL: [Skip; 4] = [Skip::NoValue, Skip::Text, Skip::Array, Skip::Unsupported];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoValue => "no_value",
            Skip::Text => "text",
            Skip::Array => "array",
            Skip::Unsupported => "unsupported",
        }
    }
}

/// Values skipped while parsing with one [`ParseContext`], by [`Skip`].
#[derive(Debug, Default)]
pub struct Skipped([Cell<u64>; 4]);

impl Skipped {
    pub(super) fn add(&self, skip: Skip) {
        let cell = &self.0[skip as usize];
        cell.set(cell.get() + 1);
    }

    /// How many of each were skipped.
    pub fn counts(&self) -> impl Iterator<Item = (Skip, u64)> + '_ {
        Skip::ALL
            .into_iter()
            .map(|skip| (skip, self.0[skip as usize].get()))
    }
}

/// How a time field is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Any of: RFC 3339, a date and time without offset (in the rule's zone), epoch seconds or
    /// milliseconds (told apart by size), as a number or a string.
    #[default]
    Auto,
    /// RFC 3339 with an offset.
    Rfc3339,
    /// A date and time without offset, `YYYY-MM-DD[T ]HH:MM:SS[.fff]`, in the rule's zone.
    Local,
    /// Seconds since the epoch, fractions allowed.
    EpochS,
    /// Milliseconds since the epoch, fractions allowed.
    EpochMs,
}

impl TimeFormat {
    fn is_auto(&self) -> bool {
        *self == TimeFormat::Auto
    }
}

/// How an object (or a bare state) is read. Kept in each stream entry's form, so a re-read or a
/// replay reads the entry as it was first read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectOptions {
    /// The key path of the object to read, when not the whole payload (`params`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// The key path of the readings' time (under `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "TimeFormat::is_auto")]
    pub time_format: TimeFormat,
    /// The zone of a time without offset; `SENSORHUB_TIMEZONE` when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Key paths read (each with what is under it); every leaf when empty. A `*` level matches
    /// one key, a `**` level any number of keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Key paths not read, as `include` names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Arrays of numbers read, each element by its index (`by_minute.0`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arrays: bool,
    /// State words and their values, beside (or replacing) the default ones; case is ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<String, f64>,
}

/// Options come from a checked configuration: their numbers are finite.
impl Eq for ObjectOptions {}

/// The state words read as numbers unless a rule says otherwise (case is ignored).
pub const DEFAULT_STATES: [(&str, f64); 22] = [
    ("on", 1.0),
    ("off", 0.0),
    ("true", 1.0),
    ("false", 0.0),
    ("yes", 1.0),
    ("no", 0.0),
    ("open", 1.0),
    ("closed", 0.0),
    ("opening", 1.0),
    ("closing", 0.0),
    ("locked", 1.0),
    ("unlocked", 0.0),
    ("home", 1.0),
    ("not_home", 0.0),
    ("detected", 1.0),
    ("clear", 0.0),
    ("occupied", 1.0),
    ("not_occupied", 0.0),
    ("wet", 1.0),
    ("dry", 0.0),
    ("active", 1.0),
    ("inactive", 0.0),
];

/// Words that mean "no value" (case is ignored), skipped rather than refused.
pub const NO_VALUE: [&str; 6] = ["unavailable", "unknown", "none", "null", "nan", ""];

impl ObjectOptions {
    /// Checks what the configuration gave: a zone that exists, finite state values, paths
    /// without empty levels.
    pub fn check(&self) -> Result<(), String> {
        if let Some(zone) = &self.zone {
            zone.parse::<Tz>()
                .map_err(|_| format!("zone {zone:?} is not an IANA time zone name"))?;
        }
        if let Some((word, value)) = self.states.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!(
                "state {word:?} maps to {value}, not a finite number"
            ));
        }
        let paths = self.root.iter().chain(&self.time);
        for path in paths.chain(&self.include).chain(&self.exclude) {
            if path.split('.').any(str::is_empty) {
                return Err(format!("key path {path:?} has an empty level"));
            }
        }
        Ok(())
    }

    /// The value of a state word, if it is one.
    fn state(&self, word: &str) -> Option<f64> {
        let lower = word.trim().to_lowercase();
        if let Some(value) = self.states.get(&lower) {
            return Some(*value);
        }
        DEFAULT_STATES
            .iter()
            .find(|(w, _)| *w == lower)
            .map(|(_, value)| *value)
    }

    fn zone(&self, ctx: &ParseContext) -> Tz {
        self.zone
            .as_deref()
            .and_then(|zone| zone.parse().ok())
            .unwrap_or(ctx.limits.timezone)
    }

    /// Whether the leaf at `path` is read.
    fn reads(&self, path: &str) -> bool {
        if self.include.is_empty() && self.exclude.is_empty() {
            return true;
        }
        let levels: Vec<&str> = path.split('.').collect();
        (self.include.is_empty() || self.include.iter().any(|p| covers(p, &levels)))
            && !self.exclude.iter().any(|p| covers(p, &levels))
    }
}

/// Whether `pattern` names `path` or a key above it: `*` one level, `**` any number of levels.
fn covers(pattern: &str, path: &[&str]) -> bool {
    fn from(pattern: &[&str], path: &[&str]) -> bool {
        match pattern.split_first() {
            None => true,
            Some((&"**", rest)) => (0..=path.len()).any(|skip| from(rest, &path[skip..])),
            Some((level, rest)) => match path.split_first() {
                Some((key, path_rest)) if *level == "*" || level == key => from(rest, path_rest),
                _ => false,
            },
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    from(&pattern, path)
}

/// An object's members, raw, by key: borrowed from the payload, unless a key has escapes.
fn members(raw: &RawValue) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    let text = raw.get();
    match serde_json::from_str::<BTreeMap<&str, &RawValue>>(text) {
        Ok(members) => Some(
            members
                .into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), v))
                .collect(),
        ),
        Err(_) => serde_json::from_str::<BTreeMap<String, &RawValue>>(text)
            .ok()
            .map(|members| {
                members
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k), v))
                    .collect()
            }),
    }
}

/// The value at a key path, under `object`.
fn at<'a>(object: &'a RawValue, path: &str) -> Option<&'a RawValue> {
    path.split('.').try_fold(object, |raw, key| {
        members(raw)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    })
}

/// `<prefix>.<path>`, or `path` alone without a prefix.
fn id(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Reads a JSON object (`text`) as `options` say.
pub(super) fn parse_object(
    options: &ObjectOptions,
    prefix: &str,
    text: &str,
    ctx: &ParseContext,
) -> Outcomes {
    let whole: &RawValue = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(error) => return smallvec![Err(malformed(&error))],
    };
    let root = match &options.root {
        None => Some(whole),
        Some(path) => at(whole, path),
    };
    let Some(root) = root.filter(|raw| raw.get().starts_with('{')) else {
        let what = options
            .root
            .as_deref()
            .map_or(String::new(), |path| format!(" at {path:?}"));
        return smallvec![Err(Rejection::new(
            Reason::WrongShape,
            format!("payload has no JSON object{what}: {}", excerpt(text)),
        ))];
    };
    let ts = match options.time.as_deref().and_then(|path| at(root, path)) {
        None => None,
        Some(raw) => match time(options, raw, ctx) {
            Ok(ts) => Some(ts),
            Err(rejection) => return smallvec![Err(rejection)],
        },
    };
    let mut read = Walk {
        options,
        prefix,
        ts,
        ctx,
        outcomes: Outcomes::new(),
        leaves: 0,
    };
    read.object(root, &mut String::new(), 0);
    if read.leaves == 0 && read.outcomes.is_empty() {
        read.outcomes.push(Err(Rejection::new(
            Reason::MissingField,
            format!("payload has no value to read: {}", excerpt(text)),
        )));
    }
    read.outcomes
}

/// One object being flattened.
struct Walk<'o, 'c> {
    options: &'o ObjectOptions,
    prefix: &'o str,
    ts: Option<DateTime<Utc>>,
    ctx: &'o ParseContext<'c>,
    outcomes: Outcomes,
    /// Leaves met (read or skipped): an object with none has nothing to read.
    leaves: usize,
}

impl Walk<'_, '_> {
    fn object(&mut self, raw: &RawValue, path: &mut String, depth: usize) {
        if depth > super::json::MAX_JSON_DEPTH {
            self.outcomes.push(Err(Rejection::new(
                Reason::MalformedJson,
                format!("payload nests deeper than {}", super::json::MAX_JSON_DEPTH),
            )));
            return;
        }
        let Some(members) = members(raw) else {
            return;
        };
        for (key, value) in members {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            if self.options.time.as_deref() != Some(path.as_str()) {
                self.value(value, path, depth);
            }
            path.truncate(len);
        }
    }

    fn value(&mut self, raw: &RawValue, path: &mut String, depth: usize) {
        let text = raw.get();
        if text.starts_with('{') {
            return self.object(raw, path, depth + 1);
        }
        if !self.options.reads(path) {
            return;
        }
        self.leaves += 1;
        match text.as_bytes().first() {
            Some(b'[') if self.options.arrays => self.array(raw, path),
            Some(b'[') => self.skip(Skip::Array),
            Some(b'-' | b'0'..=b'9') => {
                let outcome =
                    check_value(FieldValue::Json(text)).and_then(|value| self.reading(path, value));
                self.outcomes.push(outcome);
            }
            Some(b'"') => match json_string(text) {
                Ok(word) => self.word(&word, path),
                Err(error) => self.outcomes.push(Err(malformed(&error))),
            },
            _ => self.word(text, path),
        }
    }

    /// A bare word or a string's text: a number, a state, no value, or other text.
    fn word(&mut self, word: &str, path: &str) {
        match read_word(self.options, word) {
            Ok(value) => {
                let outcome = self.reading(path, value);
                self.outcomes.push(outcome);
            }
            Err(skip) => self.skip(skip),
        }
    }

    fn array(&mut self, raw: &RawValue, path: &str) {
        let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
            return self.skip(Skip::Array);
        };
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}.{index}");
            match item.get().as_bytes().first() {
                Some(b'-' | b'0'..=b'9') => {
                    let outcome = check_value(FieldValue::Json(item.get()))
                        .and_then(|value| self.reading(&item_path, value));
                    self.outcomes.push(outcome);
                }
                _ => self.skip(Skip::Array),
            }
        }
    }

    fn reading(&self, path: &str, value: f64) -> Result<Reading, Rejection> {
        validated(&id(self.prefix, path), value, self.ts, self.ctx)
    }

    fn skip(&self, skip: Skip) {
        if let Some(skipped) = self.ctx.skipped {
            skipped.add(skip);
        }
    }
}

/// Firmware presets of the object and state forms: the name is what an entry's form says.
pub const PRESET_FORMS: [&str; 4] = ["tasmota", "shelly", "shelly:rpc", "zigbee2mqtt"];

/// The options of a preset form, by name.
pub fn preset_options(name: &str) -> Option<ObjectOptions> {
    // Shelly's component ids, its per-minute energy arrays and their start times are not
    // measurements.
    let shelly_exclude = || {
        ["**.id", "**.minute_ts", "**.by_minute"]
            .map(String::from)
            .to_vec()
    };
    Some(match name {
        // Tasmota's `Time` is the device's local time without offset.
        "tasmota" => ObjectOptions {
            time: Some("Time".into()),
            ..ObjectOptions::default()
        },
        "shelly" => ObjectOptions {
            exclude: shelly_exclude(),
            ..ObjectOptions::default()
        },
        // `NotifyStatus`/`NotifyFullStatus` on `<prefix>/events/rpc`: components under `params`,
        // the device's time in `params.ts`.
        "shelly:rpc" => ObjectOptions {
            root: Some("params".into()),
            time: Some("ts".into()),
            time_format: TimeFormat::EpochS,
            exclude: shelly_exclude(),
            ..ObjectOptions::default()
        },
        // `last_seen` when Zigbee2MQTT is set to send it (ISO 8601 or epoch milliseconds);
        // `update` describes firmware updates, not the device's measurements.
        "zigbee2mqtt" => ObjectOptions {
            time: Some("last_seen".into()),
            exclude: vec!["update".into(), "update_available".into()],
            ..ObjectOptions::default()
        },
        _ => return None,
    })
}

/// A word's value: a number (also in a string), a state; else why it is skipped.
fn read_word(options: &ObjectOptions, word: &str) -> Result<f64, Skip> {
    let trimmed = word.trim();
    if let Some(value) = options.state(trimmed) {
        return Ok(value);
    }
    if NO_VALUE.iter().any(|w| trimmed.eq_ignore_ascii_case(w)) {
        return Err(Skip::NoValue);
    }
    match trimmed.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(Skip::Text),
    }
}

/// The readings' time from the time field's raw JSON.
fn time(
    options: &ObjectOptions,
    raw: &RawValue,
    ctx: &ParseContext,
) -> Result<DateTime<Utc>, Rejection> {
    let text = raw.get();
    let (value, quoted) = match text.as_bytes().first() {
        Some(b'"') => (
            json_string(text).map_err(|e| malformed(&e))?.into_owned(),
            true,
        ),
        Some(b'-' | b'0'..=b'9') => (text.to_owned(), false),
        _ => {
            return Err(Rejection::new(
                Reason::WrongType,
                format!(
                    "time field {:?} must be a string or a number, got {}",
                    options.time.as_deref().unwrap_or_default(),
                    excerpt(text)
                ),
            ));
        }
    };
    let bad = |expected: &str| {
        Rejection::new(
            Reason::BadTimestamp,
            format!(
                "time field {:?} = {} is not {expected}",
                options.time.as_deref().unwrap_or_default(),
                excerpt(&value)
            ),
        )
    };
    let epoch = |scale: f64| -> Result<DateTime<Utc>, Rejection> {
        let number: f64 = value.trim().parse().map_err(|_| bad("a number"))?;
        let micros = number * scale;
        if !micros.is_finite() || micros.abs() > i64::MAX as f64 / 2.0 {
            return Err(bad("a time in range"));
        }
        DateTime::from_timestamp_micros(micros.round() as i64).ok_or_else(|| bad("a time in range"))
    };
    let ts = match options.time_format {
        TimeFormat::Auto if !quoted => parse_epoch(&value)?,
        TimeFormat::Auto | TimeFormat::Local => parse_timestamp_text(&value, options.zone(ctx))?,
        TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(value.trim())
            .map_err(|_| bad("RFC 3339 with an offset"))?
            .with_timezone(&Utc),
        TimeFormat::EpochS => epoch(1e6)?,
        TimeFormat::EpochMs => epoch(1e3)?,
    };
    check_range(ts, ctx, "time field")
}

/// Reads a bare state (`21.50`, `ON`, `unavailable`) as the reading `prefix`: a number or a state
/// word is a reading; "no value" and other text are skipped and counted. An object (a light's
/// state) is read as the object form reads it.
pub(super) fn parse_state(
    options: &ObjectOptions,
    prefix: &str,
    text: &str,
    ctx: &ParseContext,
) -> Outcomes {
    if prefix.is_empty() {
        return smallvec![Err(Rejection::new(
            Reason::BadSensorId,
            "the topic gives no sensor id for a bare state",
        ))];
    }
    // ESPHome publishes lights' and fans' states as objects.
    if text.trim_start().starts_with('{') {
        return parse_object(options, prefix, text, ctx);
    }
    let unquoted = match text.trim() {
        quoted if quoted.starts_with('"') => match json_string(quoted) {
            Ok(word) => word.into_owned(),
            Err(error) => return smallvec![Err(malformed(&error))],
        },
        plain => plain.to_owned(),
    };
    match read_word(options, &unquoted) {
        Ok(value) => smallvec![validated(prefix, value, None, ctx)],
        Err(skip) => {
            if let Some(skipped) = ctx.skipped {
                skipped.add(skip);
            }
            Outcomes::new()
        }
    }
}
