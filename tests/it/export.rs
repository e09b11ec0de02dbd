//! Export: raw readings and windows as CSV and NDJSON, long and wide, streamed with flat memory.

use crate::helpers::*;
use std::process::Command;

fn scratch() -> RemovedOnDrop {
    let dir = std::env::temp_dir().join(unique_name("sensorhub-export"));
    std::fs::create_dir_all(&dir).unwrap();
    RemovedOnDrop(dir)
}

/// `curl`'s download of `path` from the hub into `file`: its HTTP status.
fn download(hub: &Sensorhub, path: &str, file: &std::path::Path) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o"])
        .arg(file)
        .args(["-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}{path}", hub.port))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Ten million readings of ten sensors, written straight to PostgreSQL, exported through the API:
/// the server's peak RSS stays under 100 MiB, and the CSV read back by a CSV library holds every
/// stored row once, in order, with its value.
#[actix_web::test]
async fn ten_million_readings_export_in_flat_memory_and_read_back_equal() {
    const N: i64 = 10_000_000;
    let resources = Resources::new();
    let hub = Sensorhub::spawn(&resources.hub_env()).await;
    wait_ready_status(hub.port, 200, std::time::Duration::from_secs(30)).await;
    let pg = pg_client(&resources.database_url).await;
    pg.batch_execute(&format!(
        "CREATE TABLE readings_export_test PARTITION OF readings_hot
             FOR VALUES FROM ('2026-01-05T00:00:00Z') TO ('2026-01-06T00:00:00Z');
         INSERT INTO readings_hot
         SELECT 'big-' || (i % 10), '2026-01-05T00:00:00Z'::timestamptz + (i / 10) * interval '8 ms',
                (i % 100000)::float8
         FROM generate_series(0, {} - 1) i;
         INSERT INTO sensors SELECT 'big-' || k, NULL, '2026-01-05', '2026-01-05', 0
         FROM generate_series(0, 9) k;",
        N
    ))
    .await
    .unwrap();
    let dir = scratch();
    let file = dir.0.join("export.csv");
    let sensors: String = (0..10).map(|k| format!("sensor=big-{k}&")).collect();
    let started = std::time::Instant::now();
    let status = download(&hub, &format!("/api/v1/export?{sensors}format=csv"), &file);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(status, 200);
    let peak = hub.peak_rss_mib();
    eprintln!("exported {N} rows in {seconds:.1} s; sensorhub peak RSS {peak:.1} MiB");
    assert!(peak < 100.0, "peak RSS {peak:.1} MiB");

    let mut reader = csv::Reader::from_path(&file).unwrap();
    assert_eq!(
        reader.headers().unwrap(),
        &csv::StringRecord::from(vec!["sensor_id", "ts", "value"])
    );
    let (mut rows, mut sum) = (0i64, 0f64);
    let mut previous: Option<(String, String)> = None;
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).unwrap() {
        let (sensor, ts, value) = (&record[0], &record[1], record[2].parse::<f64>().unwrap());
        // Strictly increasing (sensor, time): no row twice, none out of order.
        if let Some((s, t)) = &previous {
            assert!(
                (s.as_str(), t.as_str()) < (sensor, ts),
                "{s} {t} then {sensor} {ts}"
            );
        }
        if rows % 9973 == 0 {
            // A sample checked against the row stored.
            let at: chrono::DateTime<chrono::Utc> = ts.parse().unwrap();
            let stored: f64 = pg
                .query_one(
                    "SELECT value FROM readings WHERE sensor_id = $1 AND ts = $2",
                    &[&sensor, &at],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(stored, value, "{sensor} {ts}");
        }
        previous = Some((sensor.to_owned(), ts.to_owned()));
        sum += value;
        rows += 1;
    }
    assert_eq!(rows, N);
    let stored_sum: f64 = pg
        .query_one("SELECT sum(value) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, stored_sum);
}

/// The layouts and formats, windows with a zone, the CLI, and refusals naming the bad value.
#[actix_web::test]
async fn layouts_formats_windows_and_the_command_line() {
    let resources = Resources::new();
    let hub = Sensorhub::spawn(&resources.hub_env()).await;
    wait_ready_status(hub.port, 200, std::time::Duration::from_secs(30)).await;
    let mut redis = redis_conn(REDIS_URL).await;
    let base = chrono::Utc::now() - chrono::Duration::hours(3);
    let mut pipe = redis::pipe();
    for i in 0..120i64 {
        for (sensor, scale) in [("a,b", 1.0), ("c d", 2.0)] {
            let ts = base + chrono::Duration::minutes(i);
            pipe.cmd("XADD")
                .arg(&resources.stream)
                .arg("*")
                .arg("data")
                .arg(reading_json(sensor, scale * i as f64, ts));
        }
    }
    let _: () = pipe.query_async(&mut redis).await.unwrap();
    let pg = pg_client(&resources.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        240,
        std::time::Duration::from_secs(30),
    )
    .await;
    let dir = scratch();
    let sensors = "sensor=a%2Cb&sensor=c%20d";

    // Long CSV: an id with a comma comes back whole.
    let file = dir.0.join("long.csv");
    assert_eq!(
        download(&hub, &format!("/api/v1/export?{sensors}"), &file),
        200
    );
    let mut reader = csv::Reader::from_path(&file).unwrap();
    let ids: Vec<String> = reader.records().map(|r| r.unwrap()[0].to_owned()).collect();
    assert_eq!(ids.len(), 240);
    assert_eq!(ids[0], "a,b");
    assert_eq!(ids[239], "c d");

    // Wide NDJSON: a line per time with both sensors.
    let file = dir.0.join("wide.ndjson");
    assert_eq!(
        download(
            &hub,
            &format!("/api/v1/export?{sensors}&format=ndjson&layout=wide"),
            &file
        ),
        200
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 120);
    assert_eq!(
        lines[5]["c d"].as_f64().unwrap(),
        2.0 * lines[5]["a,b"].as_f64().unwrap()
    );

    // Hour windows, wide CSV of increase, in Berlin time.
    let file = dir.0.join("hours.csv");
    let path = format!(
        "/api/v1/export?{sensors}&resolution=1h&tz=Europe/Berlin&layout=wide&field=increase"
    );
    assert_eq!(download(&hub, &path, &file), 200);
    let mut reader = csv::Reader::from_path(&file).unwrap();
    assert_eq!(reader.headers().unwrap().len(), 3);
    let mut total = 0.0;
    for record in reader.records() {
        let record = record.unwrap();
        assert!(
            record[0].ends_with("+01:00") || record[0].ends_with("+02:00"),
            "{record:?}"
        );
        total += record[1].parse::<f64>().unwrap();
    }
    assert_eq!(total, 119.0, "a's increase over all hours: 0 → 119");

    // Refusals name what is wrong.
    for (query, names) in [
        ("", "sensor="),
        ("sensor=a%2Cb&format=xml", "format="),
        ("sensor=a%2Cb&layout=tall", "layout="),
        ("sensor=a%2Cb&resolution=5m", "resolution="),
        ("sensor=a%2Cb&tz=Europe/Berlin", "tz"),
        ("sensor=a%2Cb&resolution=1h&field=median", "field="),
    ] {
        let (status, body) = http_get(hub.port, &format!("/api/v1/export?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(names), "{query}: {body}");
    }
    let (status, body) = http_get(hub.port, "/api/v1/export?sensor=nope").await;
    assert_eq!(status, 404, "{body}");

    // The command line writes the same rows, with a progress line.
    let file = dir.0.join("cli.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_sensorhub"))
        .env_clear()
        .envs(resources.hub_env())
        .args(["export", "--sensor", "a,b", "--sensor", "c d", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 240 rows"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(dir.0.join("long.csv")).unwrap()
    );
}

/// A client that goes away in the middle of an export leaves no connection behind in its
/// transaction: the next requests of the read pool answer, and no session of the database stays
/// idle in a transaction.
#[actix_web::test]
async fn a_client_leaving_mid_export_leaves_no_transaction_open() {
    use std::io::{Read as _, Write as _};
    let resources = Resources::new();
    let hub = Sensorhub::spawn(&resources.hub_env()).await;
    wait_ready_status(hub.port, 200, std::time::Duration::from_secs(30)).await;
    let pg = pg_client(&resources.database_url).await;
    pg.batch_execute(
        "CREATE TABLE readings_export_test PARTITION OF readings_hot
             FOR VALUES FROM ('2026-01-05T00:00:00Z') TO ('2026-01-06T00:00:00Z');
         INSERT INTO readings_hot
         SELECT 'left', '2026-01-05T00:00:00Z'::timestamptz + i * interval '100 ms', i
         FROM generate_series(0, 499999) i;
         INSERT INTO sensors VALUES ('left', NULL, '2026-01-05', '2026-01-05', 0);",
    )
    .await
    .unwrap();
    for _ in 0..4 {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
        socket
            .write_all(b"GET /api/v1/export?sensor=left HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        let n = socket.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        drop(socket); // gone with most of the export unread
    }
    wait_for_count(
        &pg,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        0,
        std::time::Duration::from_secs(20),
    )
    .await;
    // The pool still answers, export included.
    for _ in 0..6 {
        let (status, body) = http_get(hub.port, "/api/v1/sensors/left/readings?limit=1").await;
        assert_eq!(status, 200, "{body}");
    }
    let dir = scratch();
    let file = dir.0.join("after.csv");
    assert_eq!(download(&hub, "/api/v1/export?sensor=left", &file), 200);
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(lines, 500_001);
}
