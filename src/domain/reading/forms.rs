//! Payload forms other than sensorhub's own JSON, as MQTT devices send them. An MQTT message
//! enters the stream with its payload (`data`), its topic, the form its topic's rule names and the
//! sensor-id prefix that rule gives the topic, so it is read the same way on every re-read and
//! replay. Each form turns a payload into readings that go through the same checks as any other.
//!
//! | form | payload | readings |
//! | --- | --- | --- |
//! | `json` | sensorhub's JSON: a reading object or an array of them | as on the stream |
//! | `fields` | `{"meas1": 0.84, "meas2": 0.84}` | one per numeric field: `<prefix>.meas1`, ... |
//! | `channels:<key>` | `[{"number": 0, "vreq": 0.0}, ...]` | per element and numeric field: `<prefix>.<key value>.vreq` |
//! | `named` | `{"sensor": "room", "measurement": "temperature", "value": 23.4}` | one: `room.temperature` |
//! | `number` | `100` | one: `<prefix>` |
//! | `nodelog` | solar-node log lines, `;`-separated | one per numeric field of each line: `<node>.battery_voltage`, ... |
//! | `line`, `line:<precision>` | InfluxDB line protocol (Telegraf's MQTT output), timestamps in ns or the named precision | one per numeric field of each line: `<measurement>.<tag values>.<field>` |
//!
//! In `fields`, `channels` and `named`, a `timestamp` field is the readings' time (otherwise the
//! time of receipt), and fields that are not numbers (text, booleans, null, nested values) are not
//! readings and are skipped.

use super::json::in_array;
use super::line::{Precision, parse_line_protocol};
use super::object::{ObjectOptions, PRESET_FORMS, parse_object, parse_state, preset_options};
use super::{
    FieldValue, Fields, Outcomes, ParseContext, Reading, Reason, Rejection, check, excerpt,
    malformed, parse_json, too_large,
};
use serde_json::value::RawValue;
use smallvec::smallvec;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// How a payload is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Form {
    Json,
    Fields,
    /// Array elements, each naming its channel in the field `key`.
    Channels {
        key: String,
    },
    Named,
    Number,
    NodeLog,
    /// InfluxDB line protocol, timestamps in the given precision.
    Line(Precision),
    /// A JSON object read whole, every leaf by its key path ([`super::object`]).
    Object(Arc<ObjectOptions>),
    /// A bare value or state word (`21.50`, `ON`).
    State(Arc<ObjectOptions>),
    /// Sparkplug B protobuf, read with its entry's topic and alias names ([`super::sparkplug`]).
    Sparkplug,
}

/// `<form>` alone with default options, else `<form>:<options as JSON>`.
fn with_options(f: &mut fmt::Formatter<'_>, form: &str, options: &ObjectOptions) -> fmt::Result {
    if *options == ObjectOptions::default() {
        return f.write_str(form);
    }
    if form == "object"
        && let Some(name) = PRESET_FORMS
            .iter()
            .find(|name| preset_options(name).as_ref() == Some(options))
    {
        return f.write_str(name);
    }
    let json = serde_json::to_string(options).map_err(|_| fmt::Error)?;
    write!(f, "{form}:{json}")
}

fn options(form: &str, json: &str) -> Result<Arc<ObjectOptions>, String> {
    let options: ObjectOptions = serde_json::from_str(json)
        .map_err(|e| format!("the options of the {form} form are not valid: {e}"))?;
    options.check()?;
    Ok(Arc::new(options))
}

impl FromStr for Form {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "json" => Form::Json,
            "fields" => Form::Fields,
            "named" => Form::Named,
            "number" => Form::Number,
            "nodelog" => Form::NodeLog,
            "line" => Form::Line(Precision::Nanoseconds),
            "object" => Form::Object(Arc::default()),
            "state" => Form::State(Arc::default()),
            "sparkplug" => Form::Sparkplug,
            _ if text.starts_with("line:") => Form::Line(text["line:".len()..].parse()?),
            _ if text.starts_with("object:") => Form::Object(options("object", &text[7..])?),
            _ if text.starts_with("state:") => Form::State(options("state", &text[6..])?),
            _ if let Some(options) = preset_options(text) => Form::Object(Arc::new(options)),
            _ => match text.strip_prefix("channels:") {
                Some(key) if !key.is_empty() => Form::Channels {
                    key: key.to_owned(),
                },
                _ => {
                    return Err(format!(
                        "{text:?} is not a payload form: json, fields, channels:<key>, named, \
                         number, nodelog, line[:ns|us|ms|s], object, state, sparkplug, \
                         tasmota, shelly, shelly:rpc or zigbee2mqtt"
                    ));
                }
            },
        })
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Form::Json => f.write_str("json"),
            Form::Fields => f.write_str("fields"),
            Form::Channels { key } => write!(f, "channels:{key}"),
            Form::Named => f.write_str("named"),
            Form::Number => f.write_str("number"),
            Form::NodeLog => f.write_str("nodelog"),
            Form::Line(precision) => write!(f, "line:{precision}"),
            Form::Object(options) => with_options(f, "object", options),
            Form::State(options) => with_options(f, "state", options),
            Form::Sparkplug => f.write_str("sparkplug"),
        }
    }
}

/// Reads `payload` in `form`; ids built from the topic start with `prefix`.
pub fn parse_form(form: &Form, prefix: &str, payload: &[u8], ctx: &ParseContext) -> Outcomes {
    if payload.len() > ctx.limits.max_message_bytes {
        return smallvec![Err(too_large(payload.len(), ctx.limits))];
    }
    if *form == Form::Json {
        return parse_json(payload, ctx);
    }
    if *form == Form::Sparkplug {
        // Binary, and read with its entry's topic and names: `parse_entry_fields` reads it.
        return smallvec![Err(Rejection::new(
            Reason::WrongShape,
            "a Sparkplug B payload is read from its stream entry, with its topic",
        ))];
    }
    let text = match std::str::from_utf8(payload) {
        Ok(text) => text,
        Err(error) => {
            return smallvec![Err(Rejection::new(
                Reason::InvalidUtf8,
                format!("payload is not UTF-8: {error}"),
            ))];
        }
    };
    match form {
        Form::Json => unreachable!("read above"),
        Form::Fields => match object(text) {
            Ok(fields) => numeric_fields(prefix, &fields, ctx),
            Err(rejection) => smallvec![Err(rejection)],
        },
        Form::Channels { key } => channels(prefix, key, text, ctx),
        Form::Named => smallvec![named(text, ctx)],
        Form::Number => smallvec![number(prefix, text, ctx)],
        Form::NodeLog => node_log(text, ctx),
        Form::Line(precision) => parse_line_protocol(text, *precision, ctx),
        Form::Object(options) => parse_object(options, prefix, text, ctx),
        Form::State(options) => parse_state(options, prefix, text, ctx),
        Form::Sparkplug => unreachable!("read above"),
    }
}

/// A JSON object's fields, raw, by name.
type Object<'a> = BTreeMap<&'a str, &'a RawValue>;

fn object(text: &str) -> Result<Object<'_>, Rejection> {
    let value: &RawValue = serde_json::from_str(text).map_err(|e| malformed(&e))?;
    serde_json::from_str(value.get()).map_err(|_| {
        Rejection::new(
            Reason::WrongShape,
            format!("payload is not a JSON object: {}", excerpt(text)),
        )
    })
}

fn is_number(raw: &RawValue) -> bool {
    matches!(raw.get().as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// `<prefix>.<name>`, or `name` alone without a prefix.
fn sensor_id(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// One reading per numeric field of `fields`, but `timestamp`, the readings' time, and `skip`.
fn numeric_fields_but(prefix: &str, fields: &Object, skip: &str, ctx: &ParseContext) -> Outcomes {
    let timestamp = fields
        .get("timestamp")
        .map(|raw| FieldValue::Json(raw.get()));
    let mut outcomes = Outcomes::new();
    for (&name, raw) in fields {
        if name == "timestamp" || name == skip || !is_number(raw) {
            continue;
        }
        let id = sensor_id(prefix, name);
        outcomes.push(check(
            Fields {
                sensor: Some(FieldValue::Text(&id)),
                value: Some(FieldValue::Json(raw.get())),
                timestamp,
                unit: None,
            },
            ctx,
        ));
    }
    if outcomes.is_empty() {
        outcomes.push(Err(Rejection::new(
            Reason::MissingField,
            "payload has no numeric field to read",
        )));
    }
    outcomes
}

fn numeric_fields(prefix: &str, fields: &Object, ctx: &ParseContext) -> Outcomes {
    numeric_fields_but(prefix, fields, "", ctx)
}

fn channels(prefix: &str, key: &str, text: &str, ctx: &ParseContext) -> Outcomes {
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(error) if error.is_syntax() || error.is_eof() => {
            return smallvec![Err(malformed(&error))];
        }
        Err(_) => {
            return smallvec![Err(Rejection::new(
                Reason::WrongShape,
                format!("payload is not a JSON array: {}", excerpt(text)),
            ))];
        }
    };
    let mut outcomes = Outcomes::new();
    for (index, item) in items.iter().enumerate() {
        let fields = match object(item.get()) {
            Ok(fields) => fields,
            Err(rejection) => {
                outcomes.push(in_array(index, Err(rejection)));
                continue;
            }
        };
        let channel = match fields.get(key) {
            Some(raw) => raw.get().trim_matches('"').to_owned(),
            None => {
                outcomes.push(in_array(
                    index,
                    Err(Rejection::new(
                        Reason::MissingField,
                        format!("element has no channel field {key:?}"),
                    )),
                ));
                continue;
            }
        };
        let prefix = sensor_id(prefix, &channel);
        outcomes.extend(
            numeric_fields_but(&prefix, &fields, key, ctx)
                .into_iter()
                .map(|outcome| in_array(index, outcome)),
        );
    }
    if outcomes.is_empty() {
        outcomes.push(Err(Rejection::new(Reason::WrongShape, "empty array")));
    }
    outcomes
}

fn named(text: &str, ctx: &ParseContext) -> Result<Reading, Rejection> {
    let fields = object(text)?;
    let text_of = |name: &str| -> Result<Option<String>, Rejection> {
        fields
            .get(name)
            .map(|raw| {
                serde_json::from_str::<String>(raw.get()).map_err(|_| {
                    Rejection::new(
                        Reason::WrongType,
                        format!("'{name}' must be a string, got {}", excerpt(raw.get())),
                    )
                })
            })
            .transpose()
    };
    let sensor = text_of("sensor")?
        .ok_or_else(|| Rejection::new(Reason::MissingField, "missing field 'sensor'"))?;
    let id = match text_of("measurement")? {
        Some(measurement) => sensor_id(&sensor, &measurement),
        None => sensor,
    };
    check(
        Fields {
            sensor: Some(FieldValue::Text(&id)),
            value: fields.get("value").map(|raw| FieldValue::Json(raw.get())),
            timestamp: fields
                .get("timestamp")
                .map(|raw| FieldValue::Json(raw.get())),
            unit: fields.get("unit").map(|raw| FieldValue::Json(raw.get())),
        },
        ctx,
    )
}

fn number(prefix: &str, text: &str, ctx: &ParseContext) -> Result<Reading, Rejection> {
    if prefix.is_empty() {
        return Err(Rejection::new(
            Reason::BadSensorId,
            "the topic gives no sensor id for a bare number",
        ));
    }
    check(
        Fields {
            sensor: Some(FieldValue::Text(prefix)),
            value: Some(FieldValue::Text(text.trim())),
            timestamp: None,
            unit: None,
        },
        ctx,
    )
}

/// The fields of a solar node's log line, in order; `None` for those that are not readings.
const NODE_LOG_FIELDS: [Option<&str>; 18] = [
    None, // node id: the sensor id's first part
    None, // packet format revision
    None, // Unix time in seconds: the readings' time
    None, // firmware version (text)
    Some("minutes_to_shutdown"),
    Some("power_save"),
    Some("open_circuit_voltage"),
    Some("mpp_voltage"),
    Some("battery_voltage"),
    Some("battery_charge"),
    Some("battery_health"),
    Some("battery_temperature"),
    Some("low_voltage_disconnect"),
    Some("charge_end_voltage"),
    Some("battery_capacity"),
    Some("solar_power"),
    Some("latitude"),
    Some("longitude"),
];

/// Semicolon-separated node log lines, one per line: 18 fields, or 19 with the status bits as a
/// hex string. A line that cannot be read whole is rejected on its own (its line number as the
/// index); the other lines are read.
fn node_log(text: &str, ctx: &ParseContext) -> Outcomes {
    let mut outcomes = Outcomes::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let start = line.as_ptr() as usize - text.as_ptr() as usize;
        let in_line = |outcome: Result<Reading, Rejection>| {
            outcome.map_err(|rejection| Rejection {
                index: Some(index),
                part: Some(start..start + line.len()),
                ..rejection
            })
        };
        match node_line(line) {
            Ok(NodeLine { node, time, values }) => {
                let line_outcomes: Vec<_> = values
                    .into_iter()
                    .map(|(name, value)| {
                        let id = sensor_id(node, name);
                        let value = value.to_string();
                        in_line(check(
                            Fields {
                                sensor: Some(FieldValue::Text(&id)),
                                value: Some(FieldValue::Text(&value)),
                                timestamp: Some(FieldValue::Text(time)),
                                unit: None,
                            },
                            ctx,
                        ))
                    })
                    .collect();
                // The line's time refused: one rejection for the line, not one per field, each
                // holding the same line.
                let time_refused = !line_outcomes.is_empty()
                    && line_outcomes.iter().all(|o| {
                        o.as_ref().is_err_and(|r| {
                            matches!(
                                r.reason,
                                Reason::BadTimestamp | Reason::FutureTimestamp | Reason::TooOld
                            )
                        })
                    });
                let mut line_outcomes = line_outcomes.into_iter();
                if time_refused {
                    outcomes.extend(line_outcomes.next());
                } else {
                    outcomes.extend(line_outcomes);
                }
            }
            Err(rejection) => outcomes.push(in_line(Err(rejection))),
        }
    }
    if outcomes.is_empty() {
        outcomes.push(Err(Rejection::new(
            Reason::WrongShape,
            "no log line in the payload",
        )));
    }
    outcomes
}

/// One log line read: the node id, the time, and the readings by field name.
struct NodeLine<'a> {
    node: &'a str,
    time: &'a str,
    values: Vec<(&'static str, f64)>,
}

/// A log line read, or why it cannot be.
fn node_line(line: &str) -> Result<NodeLine<'_>, Rejection> {
    let fields: Vec<&str> = line.split(';').map(str::trim).collect();
    if fields.len() != 18 && fields.len() != 19 {
        return Err(Rejection::new(
            Reason::WrongShape,
            format!(
                "node log line has {} fields, expected 18 or 19: {}",
                fields.len(),
                excerpt(line)
            ),
        ));
    }
    let mut values = Vec::with_capacity(16);
    for (name, text) in NODE_LOG_FIELDS.iter().zip(&fields) {
        let Some(name) = name else { continue };
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => values.push((*name, value)),
            _ => {
                return Err(Rejection::new(
                    Reason::NotANumber,
                    format!("node log field {name} is not a number: {}", excerpt(text)),
                ));
            }
        }
    }
    if let Some(status) = fields.get(18) {
        let bits = u64::from_str_radix(status, 16).map_err(|_| {
            Rejection::new(
                Reason::NotANumber,
                format!("node log status {} is not a hex number", excerpt(status)),
            )
        })?;
        values.push(("status", bits as f64));
    }
    Ok(NodeLine {
        node: fields[0],
        time: fields[2],
        values,
    })
}
