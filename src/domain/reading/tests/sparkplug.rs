//! Tests of Sparkplug B entries, as the MQTT source appends them.

use super::super::sparkplug::{Metric, Payload, Value};
use super::super::*;
use chrono::{DateTime, Utc};
use prost::Message as _;

const NOW: &str = "2026-01-01T00:00:00Z";
const AT_MS: u64 = 1_767_182_400_000; // 2025-12-31T12:00:00Z

/// A reading's id with its value and time, or a rejection's detail with its reason.
type Outcome = (String, Result<(f64, DateTime<Utc>), Reason>);

fn metric(name: Option<&str>, alias: Option<u64>, datatype: u32, value: Option<Value>) -> Metric {
    Metric {
        name: name.map(String::from),
        alias,
        timestamp: None,
        datatype: Some(datatype),
        is_null: None,
        value,
    }
}

fn read(
    topic: &str,
    names: &str,
    unread: Option<&str>,
    metrics: Vec<Metric>,
    skipped: &Skipped,
) -> Vec<Outcome> {
    let payload = Payload {
        timestamp: Some(AT_MS),
        metrics,
        seq: Some(0),
    }
    .encode_to_vec();
    let prefix = sparkplug::Topic::parse(topic).unwrap().prefix();
    let mut fields: Vec<(&str, Vec<u8>)> = vec![
        ("data", payload),
        ("form", b"sparkplug".to_vec()),
        ("topic", topic.as_bytes().to_vec()),
        ("prefix", prefix.into_bytes()),
        ("names", names.as_bytes().to_vec()),
    ];
    if let Some(why) = unread {
        fields.push(("unread", why.as_bytes().to_vec()));
    }
    let limits = Limits::default();
    let now: DateTime<Utc> = NOW.parse().unwrap();
    let ctx = ParseContext::new(&limits, now, now).with_skipped(skipped);
    parse_entry_fields(&fields, &ctx)
        .into_iter()
        .map(|o| match o {
            Ok(r) => (r.sensor_id.to_string(), Ok((r.value, r.ts))),
            Err(e) => (e.detail, Err(e.reason)),
        })
        .collect()
}

#[test]
fn a_birth_names_its_metrics_and_reads_numbers_and_booleans_by_datatype() {
    let skipped = Skipped::default();
    let at: DateTime<Utc> = DateTime::from_timestamp_millis(AT_MS as i64).unwrap();
    let mut own_time = metric(Some("Temp"), Some(1), 9, Some(Value::Float(21.3)));
    own_time.timestamp = Some(AT_MS - 1000);
    let null = Metric {
        is_null: Some(true),
        ..metric(Some("Level"), Some(9), 10, None)
    };
    let outcomes = read(
        "spBv1.0/plant/NBIRTH/edge1",
        "",
        None,
        vec![
            metric(Some("bdSeq"), None, 4, Some(Value::Long(3))),
            metric(
                Some("Node Control/Rebirth"),
                None,
                11,
                Some(Value::Boolean(false)),
            ),
            own_time,
            metric(Some("Offset"), Some(2), 1, Some(Value::Int(0xFE))),
            metric(Some("Delta"), Some(3), 3, Some(Value::Int(u32::MAX))),
            metric(Some("Count"), Some(4), 4, Some(Value::Long(u64::MAX))),
            metric(Some("Running"), Some(5), 11, Some(Value::Boolean(true))),
            metric(Some("Label"), Some(6), 12, Some(Value::String("x".into()))),
            metric(Some("Table"), Some(7), 16, None),
            metric(Some("Pressure"), Some(8), 10, Some(Value::Double(1.5))),
            null,
        ],
        &skipped,
    );
    let ok = |id: &str, v: f64, ts: DateTime<Utc>| (id.to_owned(), Ok((v, ts)));
    assert_eq!(
        outcomes,
        vec![
            ok("plant.edge1.online", 1.0, at),
            ok("plant.edge1.Temp", 21.3, at - chrono::Duration::seconds(1)),
            ok("plant.edge1.Offset", -2.0, at),
            ok("plant.edge1.Delta", -1.0, at),
            ok("plant.edge1.Count", -1.0, at),
            ok("plant.edge1.Running", 1.0, at),
            ok("plant.edge1.Pressure", 1.5, at),
        ]
    );
    let counts: Vec<(Skip, u64)> = skipped.counts().collect();
    assert_eq!(
        counts,
        [
            (Skip::NoValue, 1),
            (Skip::Text, 1),
            (Skip::Array, 0),
            (Skip::Unsupported, 1)
        ]
    );
}

#[test]
fn data_is_named_by_the_entrys_names_and_what_the_source_could_not_read_is_refused() {
    let skipped = Skipped::default();
    let data = vec![
        metric(None, Some(1), 10, Some(Value::Double(2.5))),
        metric(None, Some(7), 10, Some(Value::Double(3.5))),
    ];
    let outcomes = read(
        "spBv1.0/plant/DDATA/edge1/pump",
        "1:10=Flow\n",
        None,
        data.clone(),
        &skipped,
    );
    assert_eq!(outcomes[0].0, "plant.edge1.pump.Flow");
    assert_eq!(outcomes[1].1, Err(Reason::MissingField), "alias 7 unnamed");
    let refused = read(
        "spBv1.0/plant/DDATA/edge1/pump",
        "1:10=Flow\n",
        Some("Sparkplug B seq 3 where 2 was next"),
        data,
        &skipped,
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].1, Err(Reason::WrongShape));
    assert!(refused[0].0.contains("seq 3"));
    let death = read(
        "spBv1.0/plant/DDEATH/edge1/pump",
        "",
        None,
        vec![],
        &skipped,
    );
    assert_eq!(death.len(), 1);
    assert_eq!(death[0].0, "plant.edge1.pump.online");
    assert_eq!(death[0].1.as_ref().unwrap().0, 0.0);
}

#[test]
fn topics_outside_the_namespace_are_not_sparkplug() {
    use sparkplug::Topic;
    assert!(Topic::parse("spBv1.0/g/NDATA/n").is_some());
    assert!(Topic::parse("spBv1.0/g/DDATA/n/d").is_some());
    for bad in [
        "spBv1.0/g/NDATA/n/d",
        "spBv1.0/g/DDATA/n",
        "spBv1.0/STATE/host",
        "spAv1.0/g/NDATA/n",
        "spBv1.0/g/NDATA",
    ] {
        assert!(Topic::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn a_payload_over_the_limit_is_refused_for_its_size() {
    let big = Metric {
        value: Some(Value::String(
            "x".repeat(Limits::default().max_message_bytes),
        )),
        ..metric(Some("Blob"), None, 12, None)
    };
    let outcomes = read(
        "spBv1.0/plant/NDATA/edge1",
        "",
        None,
        vec![big],
        &Skipped::default(),
    );
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].1, Err(Reason::TooLarge));
}
