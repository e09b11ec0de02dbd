//! The answers people ask of meter data: `increase` across resets and late readings, calendar
//! days, weeks, months and years in a time zone, filled gaps and `resolution=auto` — each checked
//! against a GROUP BY over the raw readings with the same local boundaries.

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

async fn get_json(t: &TestApp, path: &str) -> (u16, Value) {
    let (status, body) = http_request(t.app().port(), "GET", path, &[], b"").await;
    let body = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"));
    (status, body)
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

async fn send(t: &mut TestApp, readings: &[(&str, DateTime<Utc>, f64)]) {
    let payloads: Vec<Vec<u8>> = readings
        .iter()
        .map(|(sensor, ts, value)| reading_json(sensor, *value, *ts).into_bytes())
        .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
}

/// Windows from the API against a GROUP BY over the raw readings with local boundaries in `tz`,
/// `increase` from `lag()` over all of the sensor's readings.
async fn assert_calendar_exact(t: &TestApp, sensor: &str, window: &str, tz: &str) -> Value {
    let unit = match window {
        "1d" => "day",
        "1w" => "week",
        "1mo" => "month",
        "1y" => "year",
        other => panic!("{other}"),
    };
    let path =
        format!("/api/v1/sensors/{sensor}/aggregates?resolution={window}&tz={tz}&limit=100000");
    let (status, body) = get_json(t, &path).await;
    assert_eq!(status, 200, "{path}: {body}");
    let expected =
        t.pg.query(
            "SELECT local AT TIME ZONE $3,
                    count(*), sum(value), min(value), max(value),
                    (array_agg(value ORDER BY ts))[1], (array_agg(value ORDER BY ts DESC))[1],
                    sum(CASE WHEN previous IS NULL THEN 0 WHEN value >= previous
                             THEN value - previous ELSE value END),
                    extract(epoch FROM (local + ('1 ' || $2)::interval) AT TIME ZONE $3
                                       - local AT TIME ZONE $3)::float8
             FROM (SELECT date_trunc($2, ts AT TIME ZONE $3) AS local, ts, value,
                          lag(value) OVER (ORDER BY ts) AS previous
                   FROM readings WHERE sensor_id = $1) r
             GROUP BY local ORDER BY local DESC",
            &[&sensor, &unit, &tz],
        )
        .await
        .unwrap();
    let windows = body["aggregates"].as_array().unwrap();
    assert_eq!(windows.len(), expected.len(), "{path}: {body}");
    for (w, e) in windows.iter().zip(&expected) {
        let start: DateTime<Utc> = e.get(0);
        let bucket = DateTime::parse_from_rfc3339(w["bucket"].as_str().unwrap()).unwrap();
        assert_eq!(bucket, start, "{path}: {w}");
        assert_eq!(w["count"].as_i64().unwrap(), e.get::<_, i64>(1), "{w}");
        let close = |field: &str, expected: f64| {
            let got = w[field].as_f64().unwrap();
            assert!(
                (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
                "{path} {field}: {got} != {expected} in {w}"
            );
        };
        close("sum", e.get(2));
        close("min", e.get(3));
        close("max", e.get(4));
        close("first_value", e.get(5));
        close("last_value", e.get(6));
        close("increase", e.get(7));
        let seconds: f64 = e.get(8);
        close("rate", e.get::<_, f64>(7) / seconds);
    }
    body
}

/// A gas meter's counter with resets, late readings in the middle of a step and at window edges,
/// redeliveries and conflicts: every window's increase is the sum of `lag()` steps, and the
/// increases of consecutive windows add up to the counter's rise with nothing lost between them.
#[actix_web::test]
async fn increase_follows_resets_late_readings_and_window_edges() {
    let mut t = spawn_app_with(|c| c.batch_size = 7, Default::default()).await;
    let base = at("2026-11-02T10:00:00Z");
    let m = |minutes: i64| base + Duration::minutes(minutes);
    // In order: 100 → 155 by 10:55, 160 at 11:02, a reset to 3 (a meter replaced), on to 40.
    let mut first: Vec<(&str, DateTime<Utc>, f64)> = Vec::new();
    for i in 0..12 {
        first.push(("gas", m(i * 5), 100.0 + 5.0 * i as f64));
    }
    first.push(("gas", m(62), 160.0));
    first.push(("gas", m(65), 3.0));
    first.push(("gas", m(70), 20.0));
    first.push(("gas", m(80), 40.0));
    send(&mut t, &first).await;
    t.assert_aggregates_exact().await;
    let hour_total: f64 =
        t.pg.query_one(
            "SELECT sum(increase) FROM aggregates WHERE sensor_id = 'gas' AND resolution = '1m'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        hour_total,
        55.0 + 5.0 + 3.0 + 17.0 + 20.0,
        "a reset counts as the new value"
    );

    // Late: in the middle of a step (between 10:20 and 10:25), exactly at a window edge (11:00:00,
    // which starts an hour window, between 10:55 and 11:02), just before it (10:59:59.999), before
    // the first reading (its step is 0, the old first's becomes real) and a fall inside the reset.
    send(
        &mut t,
        &[
            ("gas", m(22), 121.0),
            ("gas", m(60), 158.0),
            (
                "gas",
                base + Duration::milliseconds(59 * 60_000 + 59_999),
                157.0,
            ),
            ("gas", m(-30), 90.0),
            ("gas", m(67), 1.0),
        ],
    )
    .await;
    t.assert_aggregates_exact().await;

    // Redeliveries change nothing; a conflicting value is refused and changes nothing either.
    send(
        &mut t,
        &[
            ("gas", m(22), 121.0),
            ("gas", m(70), 20.0),
            ("gas", m(80), 41.0),
        ],
    )
    .await;
    t.assert_aggregates_exact().await;
    assert_eq!(t.count("SELECT count(*) FROM readings").await, 21);

    // The increases add up over any span: the hour windows' sum is the counter's whole rise.
    let (minutes, hours): (f64, f64) = {
        let row =
            t.pg.query_one(
                "SELECT sum(increase) FILTER (WHERE resolution = '1m'),
                        sum(increase) FILTER (WHERE resolution = '1h')
                 FROM aggregates WHERE sensor_id = 'gas'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(minutes, hours);
    // 90 → 155 (65), 157, 158, 160 (5), reset to 3, a fall to 1 (1), 20 (19), 40 (20).
    assert_eq!(hours, 70.0 + 3.0 + 1.0 + 19.0 + 20.0);
    let (status, body) = get_json(&t, "/api/v1/sensors/gas/aggregates?resolution=1h").await;
    assert_eq!(status, 200);
    let api_total: f64 = body["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["increase"].as_f64().unwrap())
        .sum();
    assert_eq!(api_total, hours);
    let view_total: f64 = t
        .pg
        .query_one(
            "SELECT sum(increase) FROM aggregate_windows WHERE sensor_id = 'gas' AND resolution = '1h'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(view_total, hours);
    t.stop().await;
}

/// Readings every 10 minutes across both of Berlin's 2026 clock changes: local days of 23 and 25
/// hours, weeks from Monday, months and years, each equal to a GROUP BY with local boundaries;
/// days in a zone at +05:30 are built from the minute windows, and from the raw readings where no
/// stored resolution tiles them.
#[actix_web::test]
async fn calendar_windows_in_a_zone_equal_group_by_with_local_boundaries() {
    let mut t = spawn_app_with(
        |c| {
            c.batch_size = 500;
            c.limits.max_age = std::time::Duration::from_secs(3 * 365 * 86_400);
        },
        Default::default(),
    )
    .await;
    let mut readings: Vec<(&str, DateTime<Utc>, f64)> = Vec::new();
    let mut counter = 0.0;
    for (start, days) in [
        ("2025-12-30T12:00:00Z", 3),
        ("2026-03-27T00:00:00Z", 4),
        ("2026-10-23T00:00:00Z", 4),
    ] {
        let start = at(start);
        for i in 0..days * 144 {
            counter += f64::from((i % 7) as u8);
            if i == 300 {
                counter = 2.0; // a reset
            }
            readings.push(("meter", start + Duration::minutes(10 * i), counter));
        }
    }
    send(&mut t, &readings).await;
    t.assert_aggregates_exact().await;

    let days = assert_calendar_exact(&t, "meter", "1d", "Europe/Berlin").await;
    assert_eq!(
        days["source"], "1h",
        "whole-hour zone: from the hour windows"
    );
    let lengths: Vec<i64> = days["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let start = DateTime::parse_from_rfc3339(w["bucket"].as_str().unwrap()).unwrap();
            let end = DateTime::parse_from_rfc3339(w["bucket_end"].as_str().unwrap()).unwrap();
            (end - start).num_hours()
        })
        .collect();
    assert!(
        lengths.contains(&23) && lengths.contains(&25),
        "{lengths:?}"
    );
    let spring = days["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["bucket"].as_str().unwrap().starts_with("2026-03-29"))
        .expect("the spring change day");
    assert_eq!(spring["bucket"], "2026-03-29T00:00:00+01:00");
    assert_eq!(spring["bucket_end"], "2026-03-30T00:00:00+02:00");

    for window in ["1w", "1mo", "1y"] {
        assert_calendar_exact(&t, "meter", window, "Europe/Berlin").await;
    }
    let kolkata = assert_calendar_exact(&t, "meter", "1d", "Asia/Kolkata").await;
    assert_eq!(
        kolkata["source"], "1m",
        "a :30 zone: from the minute windows"
    );
    assert!(
        kolkata["aggregates"][0]["bucket"]
            .as_str()
            .unwrap()
            .ends_with("+05:30")
    );
    assert_calendar_exact(&t, "meter", "1d", "UTC").await;

    // Stored windows over decades answer at once: none is made where none is stored.
    let (status, body) = get_json(
        &t,
        "/api/v1/sensors/meter/aggregates?resolution=1m&from=2000-01-01T00:00:00Z&limit=5",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aggregates"].as_array().unwrap().len(), 5);

    // The SQL function answers as the API does.
    let sql_total: f64 = t
        .pg
        .query_one(
            "SELECT sum(increase) FROM sensorhub_windows('meter', NULL, NULL, '1d', 'Europe/Berlin')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let api_total: f64 = days["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["increase"].as_f64().unwrap())
        .sum();
    assert!((sql_total - api_total).abs() < 1e-6);

    for (query, names) in [
        ("tz=Mars/Olympus", "tz="),
        ("tz=UTC%2B3", "tz="),
        ("fill=zero", "fill="),
        ("resolution=2d", "resolution="),
        ("resolution=auto", "points"),
        ("points=5", "points"),
        (
            "resolution=1m&fill=null&from=2000-01-01T00:00:00Z",
            "windows of 1m",
        ),
        ("resolution=1d&from=0001-01-01T00:00:00Z", "windows of 1d"),
    ] {
        let (status, body) =
            get_json(&t, &format!("/api/v1/sensors/meter/aggregates?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
    t.stop().await;
}

/// With only hour windows stored, days at +05:30 come from the raw readings, still exact.
#[actix_web::test]
async fn days_no_stored_resolution_tiles_come_from_the_raw_readings() {
    let mut t = spawn_app_with(
        |c| c.resolutions = vec!["1h".parse().unwrap()],
        Default::default(),
    )
    .await;
    let start = Utc::now() - Duration::days(3);
    let readings: Vec<(&str, DateTime<Utc>, f64)> = (0..3 * 96)
        .map(|i| ("meter", start + Duration::minutes(15 * i), (i % 50) as f64))
        .collect();
    send(&mut t, &readings).await;
    let days = assert_calendar_exact(&t, "meter", "1d", "Asia/Kolkata").await;
    assert_eq!(days["source"], "raw");
    t.stop().await;
}

/// A sensor offline for two days: every fill mode returns every day, the empty ones with count 0
/// and increase 0, values null, carried or interpolated; `resolution=auto` names what it picked.
#[actix_web::test]
async fn gaps_are_filled_and_auto_picks_the_resolution() {
    let mut t = spawn_app_with(|_| {}, Default::default()).await;
    let day = |d: i64, h: i64| at("2026-11-01T00:00:00Z") + Duration::days(d) + Duration::hours(h);
    // Days 0 and 3 have readings; days 1 and 2 none.
    send(
        &mut t,
        &[
            ("t", day(0, 6), 10.0),
            ("t", day(0, 18), 12.0),
            ("t", day(3, 0), 42.0),
            ("t", day(3, 12), 44.0),
        ],
    )
    .await;
    let range = "from=2026-11-01T00:00:00Z&to=2026-11-04T00:00:00Z";
    let fetch = |fill: &'static str| {
        let path = format!("/api/v1/sensors/t/aggregates?resolution=1d&{range}&fill={fill}");
        let t = &t;
        async move {
            let (status, body) = get_json(t, &path).await;
            assert_eq!(status, 200, "{body}");
            let mut windows = body["aggregates"].as_array().unwrap().clone();
            windows.reverse(); // oldest first
            windows
        }
    };
    let none = fetch("none").await;
    assert_eq!(none.len(), 2);
    let null = fetch("null").await;
    assert_eq!(null.len(), 4, "every day from from to to");
    for empty in &null[1..3] {
        assert_eq!(empty["count"], 0);
        assert_eq!(empty["increase"], 0.0);
        assert!(empty["mean"].is_null() && empty["last_value"].is_null());
    }
    assert_eq!(
        null[3]["increase"], 32.0,
        "the step over the gap is the next reading's"
    );
    let previous = fetch("previous").await;
    assert_eq!(previous[1]["mean"], 12.0);
    assert_eq!(previous[2]["last_value"], 12.0);
    let linear = fetch("linear").await;
    // From 12 at day 0 18:00 to 42 at day 3 00:00 (54 hours): at day 1 00:00 (6 h) and day 2.
    let at_day = |hours: f64| 12.0 + 30.0 * hours / 54.0;
    assert!((linear[1]["mean"].as_f64().unwrap() - at_day(6.0)).abs() < 1e-9);
    assert!((linear[2]["mean"].as_f64().unwrap() - at_day(30.0)).abs() < 1e-9);
    assert_eq!(
        linear[0]["mean"], 11.0,
        "a window with readings keeps its own"
    );

    let (status, body) = get_json(
        &t,
        &format!("/api/v1/sensors/t/aggregates?resolution=auto&points=100&{range}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resolution"], "1h",
        "72 hours: 73 hour windows, 4321 minutes"
    );
    let (_, fine) = get_json(
        &t,
        "/api/v1/sensors/t/aggregates?resolution=auto&points=100&from=2026-11-01T05:30:00Z&to=2026-11-01T06:30:00Z",
    )
    .await;
    assert_eq!(fine["resolution"], "1m");
    assert_eq!(fine["aggregates"].as_array().unwrap().len(), 1);
    t.stop().await;
}
