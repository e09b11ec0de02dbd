//! Phase 4b: the answers people ask of the stored data, timed on the load run's own database
//! while sensorhub serves it: a year of one meter's `1h` windows as Berlin days, through the API
//! and through `sensorhub_windows` in SQL; and an export of raw readings through the API.

use std::process::Command;
use std::time::Instant;

/// Median of `runs` timings of `f`, in milliseconds.
async fn median_ms<F, Fut>(runs: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

pub(crate) async fn answers_phase(db_url: &str, port: u16, sensors: u64) {
    let pg = crate::connect(db_url).await;
    // A year of hour windows of one meter, as the writer keeps them.
    pg.batch_execute(
        "INSERT INTO sensors VALUES ('year-meter', 'kWh', '2025-01-01', '2025-12-31T23:00:00Z', 8760);
         INSERT INTO aggregates (sensor_id, resolution, bucket, count, sum, min, max, first_ts,
                                 first_value, last_ts, last_value, increase)
         SELECT 'year-meter', '1h', t, 60, 60 * h, h, h + 1, t, h, t + interval '59 min', h + 1, 1
         FROM generate_series('2025-01-01T00:00:00Z'::timestamptz, '2025-12-31T23:00:00Z', '1 hour')
              WITH ORDINALITY AS g(t, h)",
    )
    .await
    .expect("a year of hour windows");
    let query = "SELECT count(*) FROM sensorhub_windows('year-meter', '2025-01-01T00:00:00+01', \
                 '2025-12-31T00:00:00+01', '1d', 'Europe/Berlin')";
    let days: i64 = pg.query_one(query, &[]).await.unwrap().get(0);
    let sql_ms = median_ms(21, || async {
        pg.query_one(query, &[]).await.unwrap();
    })
    .await;
    let path = "/api/v1/sensors/year-meter/aggregates?resolution=1d&tz=Europe/Berlin\
                &from=2025-01-01T00:00:00%2B01:00&to=2025-12-31T00:00:00%2B01:00&limit=400";
    let api_ms = median_ms(21, || async {
        let out = curl(port, path, "/dev/null");
        assert!(out.starts_with("200"), "{path}: {out}");
    })
    .await;
    println!(
        "answers: a year of 1h windows as {days} Berlin days: {sql_ms:.1} ms in SQL, {api_ms:.1} ms through the API (median of 21)"
    );

    // Export: the raw readings of the first sensors (the URL holds their ids), long CSV.
    let take = sensors.min(200);
    let ids: Vec<String> = (0..take).map(|k| format!("meter-{k}")).collect();
    let rows: i64 = pg
        .query_one(
            "SELECT count(*) FROM readings WHERE sensor_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    let query: String = ids.iter().map(|id| format!("sensor={id}&")).collect();
    let started = Instant::now();
    let out = curl(
        port,
        &format!("/api/v1/export?{query}format=csv"),
        "/dev/null",
    );
    let seconds = started.elapsed().as_secs_f64();
    assert!(out.starts_with("200"), "export: {out}");
    // The year's windows have no raw readings: gone before the run's exactness check.
    pg.batch_execute(
        "DELETE FROM aggregates WHERE sensor_id = 'year-meter';
         DELETE FROM sensors WHERE sensor_id = 'year-meter'",
    )
    .await
    .expect("the year's windows removed");
    println!(
        "answers: export of {rows} readings of {take} sensors as CSV through the API: {:.0} rows/s ({} bytes)",
        rows as f64 / seconds,
        out.split_whitespace().nth(1).unwrap_or("?")
    );
}

/// `curl`'s status and downloaded size for `path`, the body written to `file`.
fn curl(port: u16, path: &str, file: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", file, "-w", "%{http_code} %{size_download}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
