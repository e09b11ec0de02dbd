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

/// How far back a correction reaches, in seconds of a sensor's readings: past a batch of the
/// default size (20 seconds of 1,000 sensors), so that most corrections meet a stored reading. Not
/// a multiple of any `--replace-percent` period, so a corrected key is never itself a slot that
/// was a correction.
const CORRECTION_LAG: u64 = 25;

/// Whether reading `n` of the run is a correction (`--replace-percent`): one of every
/// `replace_every` seconds of each sensor, from the lag on.
fn is_correction(args: &Args, n: u64) -> bool {
    let (second, sensor) = (n / args.sensors, n % args.sensors);
    args.replace_every > 0
        && second >= CORRECTION_LAG
        && (second + sensor) % args.replace_every == args.replace_every - 1
}

/// Reading `n` of the run's stream: the synthetic reading, or with `--replace-percent` a
/// correction — another value for its sensor's reading `CORRECTION_LAG` seconds before.
pub(crate) fn run_reading(
    args: &Args,
    n: u64,
    base: chrono::DateTime<chrono::Utc>,
) -> (String, chrono::DateTime<chrono::Utc>, f64) {
    if is_correction(args, n) {
        let (sensor, ts, value) = synthetic(n - CORRECTION_LAG * args.sensors, args.sensors, base);
        return (sensor, ts, value + 0.125);
    }
    synthetic(n, args.sensors, base)
}

/// The rows the run's readings leave: every reading but the corrections.
pub(crate) fn distinct_rows(args: &Args) -> u64 {
    (0..args.readings)
        .filter(|&n| !is_correction(args, n))
        .count() as u64
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
            let (sensor, ts, value) = run_reading(args, n, base);
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
