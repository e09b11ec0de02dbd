//! Criterion benchmarks of the pure hot paths: parsing and validating messages (JSON, stream
//! fields, InfluxDB line protocol, the MQTT payload forms and firmware presets), folding readings
//! into windows, and the window stage's batch building (in-batch dedup, fold, split into write
//! shards in key order), and the reader's finding and parsing of an `XREADGROUP` reply.
//!
//!     cargo bench --bench hot_paths

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensorhub::domain::reading::sparkplug::{Metric, Payload, Value};
use sensorhub::domain::reading::{
    Form, Precision, parse_entry_fields, parse_form, parse_json, parse_line_protocol,
};
use sensorhub::domain::{Limits, ParseContext, Reading, Resolution, Windows};
use sensorhub::pipeline::aggregate::prepare;
use sensorhub::redis::entry::EntryId;
use sensorhub::redis::wire::{ReplyParser, parse_read_reply};
use std::hint::black_box;

fn context(limits: &Limits) -> ParseContext<'_> {
    let now = Utc::now();
    ParseContext::new(limits, now, now)
}

/// Readings as a batch's parse gives them: each sensor's id shared by its readings.
fn readings(n: usize, sensors: usize) -> Vec<Reading> {
    let base: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    let ids: Vec<std::sync::Arc<str>> =
        (0..sensors).map(|s| format!("sensor-{s}").into()).collect();
    (0..n)
        .map(|i| Reading {
            sensor_id: ids[i % sensors].clone(),
            // Every sensor reports once a second, as in the load run.
            ts: base + Duration::seconds((i / sensors) as i64),
            value: i as f64 * 0.5,
            unit: None,
        })
        .collect()
}

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let object = br#"{"sensor": "temperature", "value": 14.25, "timestamp": "2024-12-01T12:00:00Z", "unit": "C"}"#;
    let array = format!(
        "[{}]",
        (0..100)
            .map(|i| format!(
                r#"{{"sensor":"s{i}","value":"{i}.5","timestamp":"2024-12-01 12:00:{:02}"}}"#,
                i % 60
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"sensor".to_vec(), b"temperature".to_vec()),
        (b"value".to_vec(), b"14.25".to_vec()),
        (b"timestamp".to_vec(), b"2024-12-01T12:00:00Z".to_vec()),
    ];
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("object", |b| {
        b.iter(|| parse_json(black_box(object), &context(&limits)))
    });
    group.bench_function("stream_fields", |b| {
        b.iter(|| parse_entry_fields(black_box(&fields), &context(&limits)))
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("array_of_100", |b| {
        b.iter(|| parse_json(black_box(array.as_bytes()), &context(&limits)))
    });
    // A Telegraf-style request: cpu lines of ten hosts, four fields each (one a string, skipped),
    // nanosecond timestamps: 1,000 lines, 3,000 readings.
    let now_ns = Utc::now().timestamp_nanos_opt().unwrap();
    let lines: String = (0..1000)
        .map(|i| {
            format!(
                "cpu,cpu=cpu{},host=node-{} usage_idle={}.25,usage_user={}i,usage_system=1.5,state=\"ok\" {}\n",
                i % 4,
                i % 10,
                90 + i % 7,
                i,
                now_ns - 1_000_000_000 + i
            )
        })
        .collect();
    group.throughput(Throughput::Elements(3000));
    group.bench_function("line_protocol_1000_lines", |b| {
        b.iter(|| parse_line_protocol(black_box(&lines), Precision::Nanoseconds, &context(&limits)))
    });
    group.finish();
}

/// The MQTT payload forms, each on a payload its firmware documents: rates per message, with the
/// readings each gives as the throughput.
fn forms(c: &mut Criterion) {
    let limits = Limits::default();
    let now = Utc::now();
    let local = now.format("%Y-%m-%dT%H:%M:%S");
    let cases: Vec<(&str, &str, String, u64)> = vec![
        ("fields", "sensor_1", r#"{"meas1": 0.84, "meas2": 0.5, "timestamp": "2024-12-01T12:00:00Z"}"#.to_owned(), 2),
        ("number", "hv.cmd.setv.3", "100".to_owned(), 1),
        ("state", "livingroom.binary_sensor.motion", "ON".to_owned(), 1),
        (
            "tasmota",
            "plug1",
            format!(r#"{{"Time":"{local}","ENERGY":{{"Total":79.788,"Yesterday":0.312,"Today":0.101,"Power":1,"Voltage":230,"Current":"0.012"}},"AM2301":{{"Temperature":21.5,"Humidity":40.1}},"TempUnit":"C"}}"#),
            8,
        ),
        (
            "shelly:rpc",
            "shellyplus1pm-a8",
            format!(r#"{{"src":"shellyplus1pm-a8","method":"NotifyStatus","params":{{"ts":{}.12,"switch:0":{{"id":0,"apower":12.5,"voltage":229.8,"aenergy":{{"by_minute":[3.2,0,0],"minute_ts":1733054400,"total":1205.1}},"temperature":{{"tC":41.2}}}}}}}}"#, now.timestamp()),
            4,
        ),
        (
            "zigbee2mqtt",
            "kitchen/fridge",
            r#"{"temperature":21.3,"humidity":44.7,"battery":90,"linkquality":120,"occupancy":true,"state":"ON"}"#.to_owned(),
            6,
        ),
    ];
    let mut group = c.benchmark_group("forms");
    for (form, prefix, payload, readings) in &cases {
        let parsed: Form = form.parse().unwrap();
        let outcomes = parse_form(&parsed, prefix, payload.as_bytes(), &context(&limits));
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count() as u64,
            *readings,
            "{form}: {outcomes:?}"
        );
        group.throughput(Throughput::Elements(*readings));
        group.bench_function(*form, |b| {
            b.iter(|| {
                parse_form(
                    &parsed,
                    prefix,
                    black_box(payload.as_bytes()),
                    &context(&limits),
                )
            })
        });
    }
    // A stream entry as the MQTT source appends it: the form (with a rule's options) is read
    // from the entry each time.
    let entry: Vec<(&[u8], Vec<u8>)> = vec![
        (b"data", cases[3].2.clone().into_bytes()),
        (
            b"form",
            br#"object:{"time":"Time","zone":"Europe/Berlin"}"#.to_vec(),
        ),
        (b"prefix", b"plug1".to_vec()),
    ];
    group.throughput(Throughput::Elements(8));
    group.bench_function("tasmota_entry_with_zone", |b| {
        b.iter(|| parse_entry_fields(black_box(&entry), &context(&limits)))
    });
    // A Sparkplug B NDATA of 10 doubles named by alias, as the MQTT source appends it.
    let ms = u64::try_from(now.timestamp_millis()).unwrap();
    let metrics = (0..10)
        .map(|alias| Metric {
            name: None,
            alias: Some(alias),
            timestamp: Some(ms),
            datatype: None,
            is_null: None,
            value: Some(Value::Double(20.0 + alias as f64 / 4.0)),
        })
        .collect();
    let payload = Payload {
        timestamp: Some(ms),
        metrics,
        seq: Some(1),
    };
    let names: String = (0..10)
        .map(|alias| format!("{alias}:10=Temperature {alias}\n"))
        .collect();
    let ndata: Vec<(&[u8], Vec<u8>)> = vec![
        (b"data", prost::Message::encode_to_vec(&payload)),
        (b"form", b"sparkplug".to_vec()),
        (b"topic", b"spBv1.0/plant/NDATA/edge1".to_vec()),
        (b"prefix", b"plant.edge1".to_vec()),
        (b"names", names.into_bytes()),
    ];
    assert_eq!(
        parse_entry_fields(&ndata, &context(&limits))
            .iter()
            .filter(|o| o.is_ok())
            .count(),
        10
    );
    group.throughput(Throughput::Elements(10));
    group.bench_function("sparkplug_ndata_10_aliases", |b| {
        b.iter(|| parse_entry_fields(black_box(&ndata), &context(&limits)))
    });
    group.finish();
}

fn windows(c: &mut Criterion) {
    let resolutions: Vec<Resolution> = vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    let batch = readings(10_000, 1000);
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("fold_10k_readings_1000_sensors_2_resolutions", |b| {
        b.iter(|| Windows::fold(&resolutions, black_box(&batch)))
    });
    // What the window stage does: in-batch dedup, fold, split into 2 write shards in key order.
    let origins: Vec<EntryId> = (0..batch.len() as u64)
        .map(|seq| EntryId { ms: 1, seq })
        .collect();
    group.bench_function("build_write_batch_10k", |b| {
        b.iter_batched(
            || (batch.clone(), origins.clone()),
            |(readings, origins)| {
                let replaces = vec![false; readings.len()];
                prepare(readings, origins, replaces, &resolutions, 2)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The reader's share of a batch: parsing a 20,000-entry `XREADGROUP` reply into entries, with
/// payloads like the load run's, whole and as the reader does, as it arrives in 64 KiB reads.
fn reply(c: &mut Criterion) {
    let entries = 20_000;
    let mut reply = format!("*1\r\n*2\r\n$6\r\nstream\r\n*{entries}\r\n");
    for n in 0..entries {
        let id = format!("1764547200000-{n}");
        let payload = format!(
            r#"{{"sensor":"meter-{}","value":{},"timestamp":"2025-12-01T00:00:{:02}Z"}}"#,
            n % 1000,
            n as f64 * 0.25,
            n / 1000
        );
        reply.push_str(&format!(
            "*2\r\n${}\r\n{id}\r\n*2\r\n$4\r\ndata\r\n${}\r\n{payload}\r\n",
            id.len(),
            payload.len()
        ));
    }
    let reply = bytes::Bytes::from(reply);
    let mut group = c.benchmark_group("reply");
    group.throughput(Throughput::Elements(entries as u64));
    group.bench_function("parse_20k_entries", |b| {
        b.iter(|| parse_read_reply(black_box(&reply)).unwrap())
    });
    group.bench_function("parse_20k_entries_in_64k_reads", |b| {
        b.iter(|| {
            let mut parser = ReplyParser::default();
            let mut buf = bytes::BytesMut::with_capacity(reply.len() + 16 * 1024);
            for read in reply.chunks(64 * 1024) {
                buf.extend_from_slice(black_box(read));
                if let Some(entries) = parser.advance(&mut buf).unwrap() {
                    return entries;
                }
            }
            unreachable!("the reply is whole")
        })
    });
    group.finish();
}

criterion_group!(benches, parse, forms, windows, reply);
criterion_main!(benches);
