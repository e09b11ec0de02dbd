//! Sparkplug B payloads (Eclipse Sparkplug 3.0, the protobuf of industrial gateways): the
//! messages of the `sparkplug` form, its topics, and the readings a BIRTH, DATA or DEATH gives.
//!
//! A DATA message names its metrics by alias; the names come from the node's BIRTH, which the MQTT
//! source keeps ([`crate::sources::mqtt`]) and puts into each entry it appends (the field
//! [`crate::domain::fields::NAMES`]), so an entry is read alone, the same on every re-read. An
//! entry the source could not name (an alias no BIRTH gave, a `seq` gap) carries why
//! ([`crate::domain::fields::UNREAD`]) and is refused, kept with its bytes as a dead letter to be
//! replayed once the BIRTH is known.

use super::object::Skip;
use super::{Outcomes, ParseContext, Reason, Rejection, validated};
use chrono::DateTime;
use smallvec::smallvec;
use std::collections::HashMap;

/// A Sparkplug B payload (`org.eclipse.tahu.protobuf.Payload`), the fields sensorhub reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
}

/// One metric of a payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15")]
    pub value: Option<Value>,
}

/// A metric's value, the kinds sensorhub reads (others are skipped by their datatype).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(uint32, tag = "10")]
    Int(u32),
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
}

/// Sparkplug's datatypes that are numbers or booleans.
const INT8: u32 = 1;
const INT16: u32 = 2;
const INT32: u32 = 3;
const INT64: u32 = 4;
const BOOLEAN: u32 = 11;
const STRING: u32 = 12;
const TEXT: u32 = 14;
const UUID: u32 = 15;

/// The message types of the topic namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    NBirth,
    NDeath,
    DBirth,
    DDeath,
    NData,
    DData,
    NCmd,
    DCmd,
}

/// A topic `spBv1.0/<group>/<type>/<node>[/<device>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topic<'a> {
    pub group: &'a str,
    pub kind: Kind,
    pub node: &'a str,
    pub device: Option<&'a str>,
}

impl<'a> Topic<'a> {
    /// `None` for a topic outside the namespace (and `STATE`, a host application's).
    pub fn parse(topic: &'a str) -> Option<Self> {
        let mut levels = topic.split('/');
        if levels.next()? != "spBv1.0" {
            return None;
        }
        let group = levels.next()?;
        let kind = match levels.next()? {
            "NBIRTH" => Kind::NBirth,
            "NDEATH" => Kind::NDeath,
            "DBIRTH" => Kind::DBirth,
            "DDEATH" => Kind::DDeath,
            "NDATA" => Kind::NData,
            "DDATA" => Kind::DData,
            "NCMD" => Kind::NCmd,
            "DCMD" => Kind::DCmd,
            _ => return None,
        };
        let node = levels.next()?;
        let device = levels.next();
        let is_device = matches!(kind, Kind::DBirth | Kind::DDeath | Kind::DData | Kind::DCmd);
        if levels.next().is_some() || device.is_some() != is_device {
            return None;
        }
        Some(Self {
            group,
            kind,
            node,
            device,
        })
    }

    /// The prefix of its sensors' ids: `<group>.<node>[.<device>]`.
    pub fn prefix(&self) -> String {
        match self.device {
            Some(device) => format!("{}.{}.{device}", self.group, self.node),
            None => format!("{}.{}", self.group, self.node),
        }
    }
}

/// The metric names that are the protocol's own, not measurements.
pub fn is_control(name: &str) -> bool {
    name == "bdSeq" || name.starts_with("Node Control/") || name.starts_with("Device Control/")
}

/// What a BIRTH said of one metric, for the DATA that names it by alias or leaves out its
/// datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known<'a> {
    pub alias: Option<u64>,
    pub datatype: u32,
    pub name: &'a str,
}

/// The `names` field: a line `<alias>:<datatype>=<name>` per metric (`:<datatype>=<name>`
/// without an alias).
pub fn encode_names<'a>(known: impl IntoIterator<Item = Known<'a>>) -> String {
    known
        .into_iter()
        .map(|k| match k.alias {
            Some(alias) => format!("{alias}:{}={}\n", k.datatype, k.name),
            None => format!(":{}={}\n", k.datatype, k.name),
        })
        .collect()
}

/// The lines of a `names` field.
pub fn decode_names(names: &str) -> impl Iterator<Item = Known<'_>> {
    names.lines().filter_map(|line| {
        let (key, name) = line.split_once('=')?;
        let (alias, datatype) = key.split_once(':')?;
        Some(Known {
            alias: if alias.is_empty() {
                None
            } else {
                Some(alias.parse().ok()?)
            },
            datatype: datatype.parse().ok()?,
            name,
        })
    })
}

/// Reads a Sparkplug B entry: its payload's metrics as readings `<prefix>.<metric name>` at each
/// metric's own time (else the payload's, else receipt); a DEATH as `<prefix>.online` = 0 and a
/// BIRTH adds `<prefix>.online` = 1. `names` names the aliases; `unread` is why the source could
/// not read it, which refuses it whole.
pub(super) fn parse_sparkplug(
    topic: &str,
    prefix: &str,
    names: &str,
    unread: Option<&str>,
    payload: &[u8],
    ctx: &ParseContext,
) -> Outcomes {
    if let Some(why) = unread {
        return smallvec![Err(Rejection::new(Reason::WrongShape, why.to_owned()))];
    }
    let Some(topic) = Topic::parse(topic) else {
        return smallvec![Err(Rejection::new(
            Reason::WrongShape,
            format!(
                "{topic:?} is not a Sparkplug B topic spBv1.0/<group>/<type>/<node>[/<device>]"
            ),
        ))];
    };
    let payload = match <Payload as prost::Message>::decode(payload) {
        Ok(payload) => payload,
        Err(error) => {
            return smallvec![Err(Rejection::new(
                Reason::WrongShape,
                format!("not a Sparkplug B payload: {error}"),
            ))];
        }
    };
    let time = |ms: Option<u64>| {
        ms.or(payload.timestamp)
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(DateTime::from_timestamp_millis)
    };
    // Looked up once per metric: a message may name a thousand metrics by alias.
    let by_alias: HashMap<u64, Known> = decode_names(names)
        .filter_map(|k| Some((k.alias?, k)))
        .collect();
    let by_name: HashMap<&str, u32> = decode_names(names).map(|k| (k.name, k.datatype)).collect();
    let mut outcomes = Outcomes::new();
    let online = match topic.kind {
        Kind::NBirth | Kind::DBirth => Some(1.0),
        Kind::NDeath | Kind::DDeath => Some(0.0),
        _ => None,
    };
    if let Some(online) = online {
        outcomes.push(validated(
            &format!("{prefix}.online"),
            online,
            time(None),
            ctx,
        ));
    }
    if matches!(topic.kind, Kind::NDeath | Kind::DDeath) {
        return outcomes;
    }
    for metric in &payload.metrics {
        let name = match (&metric.name, metric.alias) {
            (Some(name), _) => name.as_str(),
            (None, Some(alias)) => match by_alias.get(&alias) {
                Some(known) => known.name,
                None => {
                    outcomes.push(Err(Rejection::new(
                        Reason::MissingField,
                        format!("metric alias {alias} has no name: no BIRTH gave it"),
                    )));
                    continue;
                }
            },
            (None, None) => {
                outcomes.push(Err(Rejection::new(
                    Reason::MissingField,
                    "a metric has neither name nor alias",
                )));
                continue;
            }
        };
        if is_control(name) {
            continue;
        }
        // DATA may leave the datatype out: its BIRTH's.
        let datatype = metric
            .datatype
            .unwrap_or_else(|| by_name.get(name).copied().unwrap_or(0));
        let value = match (metric.is_null, &metric.value) {
            (Some(true), _) => Err(Skip::NoValue),
            (_, Some(value)) => number(datatype, value),
            // A value of a kind not declared above (dataset, template, bytes, file, arrays).
            (_, None) if datatype >= 16 => Err(Skip::Unsupported),
            (_, None) => Err(Skip::NoValue),
        };
        match value {
            Ok(value) => outcomes.push(validated(
                &format!("{prefix}.{name}"),
                value,
                time(metric.timestamp),
                ctx,
            )),
            Err(skip) => {
                if let Some(skipped) = ctx.skipped {
                    skipped.add(skip);
                }
            }
        }
    }
    outcomes
}

/// A metric's value as a number, by its datatype: signed integers are two's complement in their
/// width; strings and the kinds not read (datasets, templates, bytes, files, arrays) are skipped.
fn number(datatype: u32, value: &Value) -> Result<f64, Skip> {
    Ok(match (datatype, value) {
        (INT8, Value::Int(v)) => f64::from(*v as u8 as i8),
        (INT16, Value::Int(v)) => f64::from(*v as u16 as i16),
        (INT32, Value::Int(v)) => f64::from(*v as i32),
        (INT64, Value::Long(v)) => *v as i64 as f64,
        (STRING | TEXT | UUID, _) | (_, Value::String(_)) => return Err(Skip::Text),
        (BOOLEAN, Value::Boolean(b)) | (_, Value::Boolean(b)) => f64::from(u8::from(*b)),
        (_, Value::Int(v)) => f64::from(*v),
        (_, Value::Long(v)) => *v as f64,
        // The float's shortest decimal, as the device wrote it (21.3, not 21.299999237060547).
        (_, Value::Float(v)) => v.to_string().parse().map_err(|_| Skip::Unsupported)?,
        (_, Value::Double(v)) => *v,
    })
}
