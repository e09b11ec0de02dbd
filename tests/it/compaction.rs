//! Compaction (`SENSORHUB_COMPACT_AFTER`): a million readings compacted answer row for row as
//! before through the `readings` view, the read API, export and windows; late, repeated,
//! conflicting and corrected readings into a compacted day, deletions across one, retention over
//! them and late readings written while it runs stay exact (a kill -9 during it:
//! `compaction_crash.rs`).

use crate::helpers::*;
use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use sensorhub::domain::OnConflict;
use sensorhub::store::compaction::run_once;
use std::time::Duration;

pub(crate) const WEEK: Duration = Duration::from_secs(7 * 86_400);

/// `n` readings of each sensor, `step` apart from `start`, with two-decimal values (a counter
/// that now and then restarts, so `increase` has falls to handle); returns the last entry id.
async fn load(
    t: &mut TestApp,
    sensors: &[String],
    start: DateTime<Utc>,
    step: TimeDelta,
    n: i32,
) -> String {
    let mut payloads = Vec::new();
    for sensor in sensors {
        let readings: Vec<String> = (0..n)
            .map(|i| reading_json(sensor, value_at(i), start + step * i))
            .collect();
        for chunk in readings.chunks(500) {
            payloads.push(format!("[{}]", chunk.join(",")).into_bytes());
        }
    }
    let mut last = String::new();
    for part in payloads.chunks(200) {
        last = t.xadd_many(part).await;
    }
    last
}

fn value_at(i: i32) -> f64 {
    f64::from((i * 37) % 9_000 + (i % 7) * 3) / 100.0
}

/// Every stored reading through the view, in key order.
async fn all_readings(t: &TestApp) -> Vec<(String, DateTime<Utc>, f64)> {
    t.pg.query(
        "SELECT sensor_id, ts, value FROM readings ORDER BY sensor_id, ts",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// What the read API and export answer for `sensor` over the loaded day and around it.
async fn answers(t: &TestApp, sensor: &str, day: DateTime<Utc>) -> Vec<(String, String)> {
    let from = (day + TimeDelta::minutes(50))
        .to_rfc3339()
        .replace('+', "%2B");
    let to = (day + TimeDelta::hours(26))
        .to_rfc3339()
        .replace('+', "%2B");
    let paths = [
        format!("/api/v1/sensors/{sensor}/readings?limit=100000"),
        format!("/api/v1/sensors/{sensor}/readings?limit=777&from={from}&to={to}"),
        format!("/api/v1/sensors/{sensor}/readings?limit=3&to={from}"),
        format!("/api/v1/sensors/{sensor}/aggregates?resolution=1h&limit=100000"),
        format!(
            "/api/v1/sensors/{sensor}/aggregates?resolution=1d&tz=Asia/Kolkata&fill=linear&limit=100000"
        ),
        format!(
            "/api/v1/sensors/{sensor}/aggregates?resolution=1d&from={from}&to={to}&fill=previous"
        ),
        format!("/api/v1/export?sensor={sensor}&format=csv"),
        format!(
            "/api/v1/export?sensor={sensor}&sensor=m-1&from={from}&to={to}&format=ndjson&layout=wide"
        ),
        format!("/api/v1/export?sensor={sensor}&resolution=1d&tz=Asia/Kolkata&format=csv"),
    ];
    let mut out = Vec::new();
    for path in paths {
        let (status, body) = t.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        out.push((path, body));
    }
    out
}

async fn compact(t: &TestApp) -> Vec<sensorhub::store::compaction::Compacted> {
    let mut client = pg_client(t.config.database_url.expose()).await;
    run_once(&mut client, WEEK, Utc::now())
        .await
        .unwrap()
        .expect("no other instance compacts")
}

/// How many readings the hot partitions and the compacted rows hold.
async fn stores(t: &TestApp) -> (i64, i64) {
    let hot = t.count("SELECT count(*) FROM readings_hot").await;
    let compact = t
        .count("SELECT coalesce(sum(count), 0)::int8 FROM readings_compact")
        .await;
    (hot, compact)
}

async fn assert_each_key_once(t: &TestApp) {
    let twice = t
        .count(
            "SELECT count(*) FROM (SELECT sensor_id, ts FROM readings GROUP BY 1, 2
                                   HAVING count(*) > 1) d",
        )
        .await;
    assert_eq!(twice, 0, "a (sensor_id, ts) stored twice");
}

#[actix_web::test]
async fn a_million_readings_compacted_answer_row_for_row_as_before() {
    // Hour windows stored only: calendar days in Asia/Kolkata (+05:30) come from the raw readings.
    let mut t = spawn_app_with(
        |c| c.resolutions = vec!["1h".parse().unwrap()],
        Default::default(),
    )
    .await;
    // 100 sensors, 10,000 readings each a second apart, across midnight ten days ago: two day
    // partitions, two compacted days per sensor.
    let day = (Utc::now() - TimeDelta::days(10))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let start = day - TimeDelta::hours(1);
    let sensors: Vec<String> = (0..100).map(|k| format!("m-{k}")).collect();
    let last = load(&mut t, &sensors, start, TimeDelta::seconds(1), 10_000).await;
    t.wait_drained(&last).await;
    // Today's readings stay hot.
    let recent = vec!["m-1".to_owned()];
    let last = load(
        &mut t,
        &recent,
        Utc::now() - TimeDelta::hours(1),
        TimeDelta::seconds(60),
        30,
    )
    .await;
    t.wait_drained(&last).await;
    assert_eq!(stores(&t).await, (1_000_030, 0));
    let rows_before = all_readings(&t).await;
    let answers_before = answers(&t, "m-1", day).await;

    let done = compact(&t).await;
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done.iter().map(|c| c.readings).sum::<u64>(), 1_000_000);
    assert_eq!(done.iter().map(|c| c.rows).sum::<u64>(), 200);
    assert_eq!(stores(&t).await, (30, 1_000_000));
    assert!(
        all_readings(&t).await == rows_before,
        "the view differs from before"
    );
    for ((path, before), (_, after)) in answers_before.iter().zip(answers(&t, "m-1", day).await) {
        assert!(
            *before == after,
            "{path} differs:\n{before:.300}\n{after:.300}"
        );
    }
    t.assert_aggregates_exact().await;
    assert!(compact(&t).await.is_empty(), "nothing left to compact");
    t.stop().await;
}

/// One sensor's day ten days ago, every 10 s, compacted.
async fn compacted_day(t: &mut TestApp, sensor: &str) -> DateTime<Utc> {
    let day = (Utc::now() - TimeDelta::days(10))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let last = load(t, &[sensor.to_owned()], day, TimeDelta::seconds(10), 8_640).await;
    t.wait_drained(&last).await;
    // And the next days' first readings, so that steps cross days.
    let next = vec![reading_json(sensor, 5.0, day + TimeDelta::days(1)).into_bytes()];
    let last = t.xadd_many(&next).await;
    t.wait_drained(&last).await;
    let done = compact(t).await;
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(stores(t).await, (0, 8_641));
    day
}

#[actix_web::test]
async fn late_repeated_and_conflicting_readings_into_a_compacted_day_are_stored_once() {
    let mut t = spawn_app().await;
    let day = compacted_day(&mut t, "late").await;
    let at = |s: i64| day + TimeDelta::seconds(s);
    // Repeats of compacted readings, a conflicting value, and late readings between compacted
    // ones, before the day's first and in the last minute of the day.
    let payloads: Vec<Vec<u8>> = [
        reading_json("late", value_at(0), at(0)),
        reading_json("late", value_at(100), at(1000)),
        reading_json("late", 1234.5, at(2000)),
        reading_json("late", 7.25, at(5)),
        reading_json("late", 3.5, at(86_395)),
        reading_json("late", 1.0, day - TimeDelta::seconds(1)),
        // Microseconds: the day's times no longer fit whole milliseconds once it holds this one.
        reading_json("late", 2.5, at(7) + TimeDelta::microseconds(250)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    let m = t.metrics();
    assert_eq!(m.readings_duplicate.get(), 2, "the repeats");
    assert_eq!(m.readings_conflicting.get(), 1, "the conflicting value");
    assert_eq!(t.readings().await, 8_641 + 4);
    assert_each_key_once(&t).await;
    let stored: f64 =
        t.pg.query_one(
            "SELECT value FROM readings WHERE sensor_id = 'late' AND ts = $1",
            &[&at(2000)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        value_at(200),
        "keep_first: the compacted value stays"
    );
    t.assert_aggregates_exact().await;

    // The same again (a client retrying): nothing changes.
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 8_641 + 4);
    // The day was taken apart for the lookups (the next day's row stays packed); the next run
    // packs it again with the late readings.
    assert_eq!(stores(&t).await, (8_640 + 4, 1));
    let done = compact(&t).await;
    assert_eq!(
        done.iter().map(|c| c.readings).sum::<u64>(),
        8_644,
        "{done:?}"
    );
    assert_eq!(stores(&t).await, (0, 8_645));
    assert_eq!(
        t.count("SELECT count(*) FROM readings_compact WHERE ts IS NOT NULL")
            .await,
        1,
        "the day with a time in microseconds keeps timestamps, the others milliseconds"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM readings_compact").await,
        3,
        "merged into the day's row, plus the row of the day before"
    );
    assert_each_key_once(&t).await;
    t.assert_aggregates_exact().await;
    t.stop().await;
}

#[actix_web::test]
async fn corrections_and_deletions_reach_into_compacted_days() {
    let mut t = spawn_app_with(|c| c.on_conflict = OnConflict::KeepLast, Default::default()).await;
    let day = compacted_day(&mut t, "fix").await;
    let at = |s: i64| day + TimeDelta::seconds(s);
    let corrections: Vec<Vec<u8>> = [
        reading_json("fix", 99.5, at(3000)),
        reading_json("fix", -4.0, at(86_390)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let last = t.xadd_many(&corrections).await;
    t.wait_drained(&last).await;
    assert_eq!(t.metrics().readings_replaced.get(), 2);
    let value = |ts: DateTime<Utc>| {
        let pg = &t.pg;
        async move {
            pg.query_one(
                "SELECT value FROM readings WHERE sensor_id = 'fix' AND ts = $1",
                &[&ts],
            )
            .await
            .unwrap()
            .get::<_, f64>(0)
        }
    };
    assert_eq!(value(at(3000)).await, 99.5);
    assert_eq!(value(at(86_390)).await, -4.0);
    assert_eq!(t.readings().await, 8_641);
    assert_each_key_once(&t).await;
    t.assert_aggregates_exact().await;

    // A deletion cutting the compacted day and ending in the next one.
    let (from, to) = (at(40_005), day + TimeDelta::days(1) + TimeDelta::seconds(1));
    let body =
        serde_json::json!({"sensor": "fix", "from": from.to_rfc3339(), "to": to.to_rfc3339()});
    let (status, answer) = http_request(
        t.app().port(),
        "POST",
        "/api/v1/delete",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let expected_left = 4_001; // 0 s to 40,000 s
    assert_eq!(t.readings().await, expected_left, "{answer}");
    assert_each_key_once(&t).await;
    t.assert_aggregates_exact().await;
    // Compacted again, the same.
    compact(&t).await;
    assert_eq!(stores(&t).await, (0, expected_left));
    t.assert_aggregates_exact().await;
    t.stop().await;
}

#[actix_web::test]
async fn retention_drops_compacted_days_with_their_partitions() {
    let mut t = spawn_app().await;
    let now = Utc::now();
    for (age, sensor) in [(40, "r-old"), (20, "r-kept")] {
        let start = (now - TimeDelta::days(age))
            .duration_trunc(TimeDelta::days(1))
            .unwrap();
        let last = load(
            &mut t,
            &[sensor.to_owned()],
            start,
            TimeDelta::minutes(1),
            1_440,
        )
        .await;
        t.wait_drained(&last).await;
    }
    compact(&t).await;
    assert_eq!(stores(&t).await, (0, 2 * 1_440));
    let mut client = pg_client(t.config.database_url.expose()).await;
    let retention = sensorhub::store::retention::Retention {
        raw: Some(Duration::from_secs(30 * 86_400)),
        aggregates: Vec::new(),
    };
    let report = sensorhub::store::retention::run_once(&mut client, &retention, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.compacted_rows_deleted, 1, "{report:?}");
    assert_eq!(stores(&t).await, (0, 1_440));
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'r-old'")
            .await,
        0
    );
    let since = report.horizon.unwrap().to_rfc3339();
    assert_aggregates_exact_since(&t.pg, &t.config.resolutions, &since).await;
    t.stop().await;
}

/// Late readings of a day, new ones and repeats, written while the day's partition is compacted
/// again and again: each stored once, the aggregates exact, and at the end all of them packed.
#[actix_web::test]
async fn late_readings_written_while_their_partition_is_compacted_are_stored_once() {
    let mut t = spawn_app().await;
    let day = (Utc::now() - TimeDelta::days(10))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let step = TimeDelta::seconds(20);
    let sensors: Vec<String> = (0..20).map(|k| format!("busy-{k}")).collect();
    let last = load(&mut t, &sensors, day, step, 4_320).await;
    t.wait_drained(&last).await;
    compact(&t).await;
    let stream = t.stream().to_owned();
    let producer = tokio::spawn(async move {
        let mut redis = redis_conn(REDIS_URL).await;
        let mut last = String::new();
        for round in 0..40 {
            let mut payloads = Vec::new();
            for sensor in &sensors {
                let readings: Vec<String> = (round * 100..round * 100 + 100)
                    .flat_map(|i| {
                        let at = day + step * i;
                        [
                            reading_json(sensor, value_at(i), at), // a repeat
                            reading_json(sensor, 0.5, at + TimeDelta::seconds(10)), // late
                        ]
                    })
                    .collect();
                payloads.push(format!("[{}]", readings.join(",")).into_bytes());
            }
            let ids = sensorhub::stream::append::append_payloads(&mut redis, &stream, payloads)
                .await
                .unwrap();
            last = ids.last().unwrap().to_string();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        last
    });
    let mut runs = 0;
    while !producer.is_finished() {
        runs += compact(&t).await.len();
    }
    let last = producer.await.unwrap();
    t.wait_drained(&last).await;
    compact(&t).await;
    eprintln!("compactions while writing: {runs}");
    assert!(runs > 1, "compacted {runs} times while late readings came");
    assert_eq!(stores(&t).await, (0, 20 * (4_320 + 4_000)));
    assert_eq!(t.metrics().readings_duplicate.get(), 20 * 4_000);
    assert_each_key_once(&t).await;
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// A reader holding the partition (a long export, say) does not hold compaction up, nor does
/// compaction queue the partition's readers behind it for long: the partition is emptied by a
/// delete instead of waiting to truncate it.
#[actix_web::test]
async fn a_reader_holding_the_partition_does_not_hold_compaction_up() {
    let mut t = spawn_app().await;
    let day = (Utc::now() - TimeDelta::days(10))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    let last = load(
        &mut t,
        &["held".to_owned()],
        day,
        TimeDelta::seconds(30),
        2_880,
    )
    .await;
    t.wait_drained(&last).await;
    let reader = pg_client(t.config.database_url.expose()).await;
    reader.batch_execute("BEGIN").await.unwrap();
    let seen: i64 = reader
        .query_one(
            "SELECT count(*) FROM readings_hot WHERE ts >= $1 AND ts < $1 + interval '1 day'",
            &[&day],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 2_880);
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(30), compact(&t))
        .await
        .expect("compaction waits for the reader");
    assert_eq!(done.iter().map(|c| c.readings).sum::<u64>(), 2_880);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stores(&t).await, (0, 2_880));
    // The reader's transaction still sees what it saw.
    reader.batch_execute("COMMIT").await.unwrap();
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// Hour partitions: each merges into its day's compacted row; retention then cuts a day at the
/// horizon, an hour boundary inside the readings.
#[actix_web::test]
async fn hour_partitions_merge_into_their_day_and_retention_cuts_it_at_the_horizon() {
    let mut t = spawn_app_with(
        |c| c.partition = Duration::from_secs(3_600),
        Default::default(),
    )
    .await;
    let now = Utc::now();
    // 24 hours of readings whose middle is where a 30-day retention will cut.
    let cut = (now - TimeDelta::days(30))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap();
    let start = cut - TimeDelta::hours(12);
    let last = load(
        &mut t,
        &["hourly".to_owned()],
        start,
        TimeDelta::minutes(1),
        1_440,
    )
    .await;
    t.wait_drained(&last).await;
    let done = compact(&t).await;
    assert_eq!(done.len(), 24, "{done:?}");
    assert_eq!(stores(&t).await, (0, 1_440));
    let days = if start.duration_trunc(TimeDelta::days(1)).unwrap() == start {
        1
    } else {
        2
    };
    assert_eq!(
        t.count("SELECT count(*) FROM readings_compact").await,
        days,
        "one row per day"
    );
    assert_each_key_once(&t).await;
    t.assert_aggregates_exact().await;

    let mut client = pg_client(t.config.database_url.expose()).await;
    let retention = sensorhub::store::retention::Retention {
        raw: Some(Duration::from_secs(30 * 86_400)),
        aggregates: Vec::new(),
    };
    let report = sensorhub::store::retention::run_once(&mut client, &retention, now)
        .await
        .unwrap()
        .unwrap();
    let horizon = report.horizon.unwrap();
    assert_eq!(horizon, cut, "the end of the last hour partition dropped");
    assert_eq!(stores(&t).await, (0, 720), "cut at {horizon}");
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE ts < (SELECT horizon FROM retention_horizon)")
            .await,
        0
    );
    let since = horizon.to_rfc3339();
    assert_aggregates_exact_since(&t.pg, &t.config.resolutions, &since).await;
    t.stop().await;
}
