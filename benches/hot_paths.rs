//! Criterion benchmarks of the pure hot paths: parsing and validating messages, folding readings
//! into windows, and the window stage's batch building (in-batch dedup, fold, split into write
//! shards in key order).
//!
//!     cargo bench --bench hot_paths

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sensorhub::domain::reading::{parse_entry_fields, parse_json};
use sensorhub::domain::{Limits, ParseContext, Reading, Resolution, Windows};
use sensorhub::pipeline::window::prepare;
use sensorhub::streams::EntryId;
use std::hint::black_box;

fn context(limits: &Limits) -> ParseContext<'_> {
    let now = Utc::now();
    ParseContext::new(limits, now, now)
}

fn readings(n: usize, sensors: usize) -> Vec<Reading> {
    let base: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    (0..n)
        .map(|i| Reading {
            sensor_id: format!("sensor-{}", i % sensors),
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
            |(readings, origins)| prepare(readings, origins, &resolutions, 2),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, parse, windows);
criterion_main!(benches);
