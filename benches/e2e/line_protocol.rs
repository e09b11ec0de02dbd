//! Phase 7, InfluxDB line protocol.

use super::*;

/// Readings in the line-protocol phase.
pub(crate) const LINE_PROTOCOL_READINGS: u64 = 500_000;
/// Lines per request: Telegraf sends `metric_batch_size` (1,000 by default) metrics of several
/// fields each; a few thousand readings per request.
pub(crate) const LINES_PER_REQUEST: u64 = 5_000;
/// Requests in flight at once, as from several Telegraf agents.
pub(crate) const LINE_PROTOCOL_WRITERS: usize = 4;

/// The line-protocol phase: readings as InfluxDB line protocol (one numeric field per line,
/// nanosecond timestamps), posted to `/api/v2/write` by four concurrent writers through a fresh
/// sensorhub: readings/s from the first request to the last commit.
pub(crate) async fn line_protocol_phase(
    args: &Args,
    admin: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    base: chrono::DateTime<chrono::Utc>,
) -> f64 {
    let readings = args.readings.min(LINE_PROTOCOL_READINGS);
    println!(
        "line protocol: {readings} readings in requests of {LINES_PER_REQUEST} lines, \
         {LINE_PROTOCOL_WRITERS} writers"
    );
    let bodies: Vec<String> = (0..readings)
        .collect::<Vec<u64>>()
        .chunks(LINES_PER_REQUEST as usize)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&n| {
                    let (sensor, ts, value) = synthetic(n, args.sensors, base);
                    format!(
                        "{sensor},site=bench value={value} {}\n",
                        ts.timestamp_nanos_opt().unwrap()
                    )
                })
                .collect()
        })
        .collect();
    let stream = format!("bench:{name}");
    let port = free_port();
    let hub = spawn_sensorhub(
        args,
        &format!("postgres://postgres@127.0.0.1:5432/{name}"),
        &stream,
        port,
    );
    wait_ready(port).await;
    let url = format!("http://127.0.0.1:{port}/api/v2/write?org=bench&bucket=bench&precision=ns");
    let start = Instant::now();
    // awc, actix's client, runs on a local task set.
    tokio::task::LocalSet::new()
        .run_until(async {
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .finish();
            let next = std::cell::Cell::new(0usize);
            let writers = (0..LINE_PROTOCOL_WRITERS).map(|_| async {
                loop {
                    let i = next.get();
                    let Some(body) = bodies.get(i) else { break };
                    next.set(i + 1);
                    let response = client.post(&url).send_body(body.clone()).await;
                    let status = response.map(|r| r.status().as_u16());
                    assert_eq!(status.ok(), Some(204), "a write was refused");
                }
            });
            futures_util::future::join_all(writers).await;
        })
        .await;
    let posted = start.elapsed().as_secs_f64();
    let elapsed = until_stored(port, readings, start).await;
    drop(hub);
    let (rows, mismatches) = exactness(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await;
    drop_run(admin, redis, name).await;
    let rate = readings as f64 / elapsed;
    println!(
        "  posted in {posted:.2} s; the last committed {elapsed:.2} s after the first \
         request: {rate:.0} readings/s; exact: {}",
        rows as u64 == readings && mismatches == 0
    );
    assert_eq!(rows as u64, readings, "line-protocol readings stored");
    assert_eq!(
        mismatches, 0,
        "line-protocol aggregates differ from GROUP BY"
    );
    rate
}
