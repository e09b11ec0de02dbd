//! The synthetic readings, and preloading them into a stream.

use super::*;

/// The synthetic readings: sensor `n % sensors`, one per sensor per second.
pub(crate) fn synthetic(
    n: u64,
    sensors: u64,
    base: chrono::DateTime<chrono::Utc>,
) -> (String, chrono::DateTime<chrono::Utc>, f64) {
    (
        format!("meter-{}", n % sensors),
        base + chrono::Duration::seconds((n / sensors) as i64),
        (n % 9973) as f64 * 0.25,
    )
}

/// A reading as a device sends it: sensorhub's JSON.
pub(crate) fn reading_payload(
    sensor: &str,
    ts: chrono::DateTime<chrono::Utc>,
    value: f64,
) -> String {
    format!(
        r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{}"}}"#,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Reading objects as stream payloads: each on its own, or `per_entry` of them as one JSON array.
pub(crate) fn grouped(readings: impl Iterator<Item = String>, per_entry: u64) -> Vec<String> {
    if per_entry == 1 {
        return readings.collect();
    }
    let readings: Vec<String> = readings.collect();
    readings
        .chunks(per_entry as usize)
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .collect()
}

/// Preloads the synthetic readings into `stream`; returns the number of stream entries.
pub(crate) async fn preload(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    args: &Args,
    base: chrono::DateTime<chrono::Utc>,
) -> u64 {
    let mut i = 0;
    let mut entries = 0;
    while i < args.readings {
        let payloads = (i..(i + 10_000).min(args.readings)).map(|n| {
            let (sensor, ts, value) = synthetic(n, args.sensors, base);
            reading_payload(&sensor, ts, value)
        });
        let payloads = grouped(payloads, args.per_entry);
        entries += payloads.len() as u64;
        sensorhub::stream::append::append_payloads(redis, stream, payloads)
            .await
            .unwrap();
        i += 10_000;
    }
    entries
}
