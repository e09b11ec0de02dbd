//! `SENSORHUB_ON_CONFLICT=keep_last`: a value from a later stream position replaces the stored
//! one, and every window and the sensor's latest value follow exactly; a value from an earlier
//! position (a re-read after a crash, a replayed dead letter, a slow instance) never rolls a
//! newer correction back.

use crate::helpers::*;
use chrono::{DateTime, Duration as TimeDelta, DurationRound as _, Utc};
use sensorhub::domain::OnConflict;
use std::collections::BTreeMap;
use std::time::Duration;

fn base() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(1))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap()
}

async fn value_at(t: &TestApp, sensor: &str, ts: DateTime<Utc>) -> f64 {
    t.pg.query_one(
        "SELECT value FROM readings WHERE sensor_id = $1 AND ts = $2",
        &[&sensor, &ts],
    )
    .await
    .unwrap()
    .get(0)
}

/// Sends each reading as its own entry and waits until it is committed: one batch each.
async fn send_one_by_one(t: &mut TestApp, readings: &[(&str, DateTime<Utc>, f64)]) {
    for (sensor, ts, value) in readings {
        let last = t
            .xadd_many(&[reading_json(sensor, *value, *ts).into_bytes()])
            .await;
        t.wait_drained(&last).await;
    }
}

/// A counter with a reading a minute over two hours, then three values for one of its keys, each
/// in a batch of its own, and three for another key in one message: the third stays each time,
/// and the windows (min, max, first, last, increase) equal a GROUP BY over what is stored.
#[actix_web::test]
async fn the_third_of_three_values_stays_and_the_windows_follow() {
    let mut t = spawn_app_with(|c| c.on_conflict = OnConflict::KeepLast, Default::default()).await;
    let start = base();
    let series: Vec<Vec<u8>> = (0..120)
        .map(|i| reading_json("meter", i as f64 * 10.0, start + TimeDelta::minutes(i)).into_bytes())
        .collect();
    let last = t.xadd_many(&series).await;
    t.wait_drained(&last).await;
    t.assert_aggregates_exact().await;

    // In the middle of an hour: first the window's new maximum (a counter reset follows it),
    // then a value below its neighbours, then the one that stays.
    let key = start + TimeDelta::minutes(30);
    send_one_by_one(
        &mut t,
        &[
            ("meter", key, 5000.0),
            ("meter", key, 1.0),
            ("meter", key, 301.0),
        ],
    )
    .await;
    assert_eq!(value_at(&t, "meter", key).await, 301.0);
    t.assert_aggregates_exact().await;

    // In one message: consecutive stored readings replaced (the window's new maximum and
    // minimum), late new readings between them, and in the next message the extremes replaced
    // again, so that min and max must be found anew among the window's readings.
    let at = |m: i64, s: i64| start + TimeDelta::minutes(m) + TimeDelta::seconds(s);
    let body = format!(
        "[{},{},{},{},{}]",
        reading_json("meter", 99_999.0, at(40, 0)),
        reading_json("meter", 4.0, at(40, 30)),
        reading_json("meter", -5.0, at(41, 0)),
        reading_json("meter", 415.0, at(41, 30)),
        reading_json("meter", 0.5, at(42, 0))
    );
    let last = t.xadd_many(&[body.into_bytes()]).await;
    t.wait_drained(&last).await;
    t.assert_aggregates_exact().await;
    let body = format!(
        "[{},{}]",
        reading_json("meter", 400.0, at(40, 0)),
        reading_json("meter", 410.0, at(41, 0))
    );
    let last = t.xadd_many(&[body.into_bytes()]).await;
    t.wait_drained(&last).await;
    t.assert_aggregates_exact().await;

    // Three values of one key in one message: the last of them.
    let other = start + TimeDelta::minutes(61);
    let body = format!(
        "[{},{},{}]",
        reading_json("meter", 7.0, other),
        reading_json("meter", 8.0, other),
        reading_json("meter", 611.0, other)
    );
    let last = t.xadd_many(&[body.into_bytes()]).await;
    t.wait_drained(&last).await;
    assert_eq!(value_at(&t, "meter", other).await, 611.0);

    // The newest reading corrected: the sensor's latest value follows.
    let newest = start + TimeDelta::minutes(119);
    send_one_by_one(&mut t, &[("meter", newest, 2.5)]).await;
    let latest: f64 =
        t.pg.query_one(
            "SELECT last_value FROM sensors WHERE sensor_id = 'meter'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(latest, 2.5);
    // The same value again is a duplicate: nothing changes, nothing is dead-lettered.
    send_one_by_one(&mut t, &[("meter", newest, 2.5)]).await;
    t.assert_aggregates_exact().await;
    assert_eq!(t.readings().await, 122);
    let metrics = t.metrics();
    // Three replacements of the stored 300, three in the mixed message and two after it, two
    // values of the message and the stored 610, and the newest reading's.
    assert_eq!(metrics.readings_replaced.get(), 12);
    assert_eq!(metrics.readings_conflicting.get(), 0);
    assert_eq!(t.count("SELECT count(*) FROM sensors").await, 1);
    let (_, body) = t.get("/metrics").await;
    assert_eq!(
        metric_value(&body, "sensorhub_readings_replaced_total"),
        Some(12.0)
    );
    t.stop().await;
}

/// A dead letter of an older value replayed after a correction, and an entry that says it comes
/// from an older position (as a replay's does), leave the newest value: last by the stream's
/// order, not by arrival at the database.
#[actix_web::test]
async fn an_older_position_never_rolls_a_correction_back() {
    let mut t = spawn_app().await;
    let key = base();
    // keep_first: the second value is a conflict, kept as a dead letter of its entry.
    send_one_by_one(&mut t, &[("gauge", key, 1.0), ("gauge", key, 2.0)]).await;
    assert_eq!(t.metrics().readings_conflicting.get(), 1);
    let faults = std::sync::Arc::new(Default::default());
    t.config.on_conflict = OnConflict::KeepLast;
    t.restart(faults).await;
    send_one_by_one(&mut t, &[("gauge", key, 3.0)]).await;
    assert_eq!(value_at(&t, "gauge", key).await, 3.0);

    let (status, answer) = http_request(
        t.app().port(),
        "POST",
        "/api/v1/dead-letters/replay",
        &[("Content-Type", "application/json")],
        br#"{"reason": "conflicting_value"}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"replayed\":1"), "{answer}");
    let last = t.last_entry().await;
    t.wait_drained(&last).await;
    assert_eq!(
        value_at(&t, "gauge", key).await,
        3.0,
        "the replayed letter's value came before the correction in the stream"
    );

    // An entry marked as coming from the first one's position (the letters' own mark).
    let first = t.first_entry().await;
    let data = reading_json("gauge", 9.0, key);
    let last = t
        .xadd_fields(&[("data", data.as_bytes()), ("received", first.as_bytes())])
        .await;
    t.wait_drained(&last).await;
    assert_eq!(value_at(&t, "gauge", key).await, 3.0);
    // A value sent now is later than everything: it replaces.
    send_one_by_one(&mut t, &[("gauge", key, 4.0)]).await;
    assert_eq!(value_at(&t, "gauge", key).await, 4.0);
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// Corrections of a few hundred keys, each key written three to five times, appended in small
/// entries; the value of each key's last entry is what must be stored.
struct Corrections {
    expected: BTreeMap<(String, i64), f64>,
    last_id: String,
}

async fn produce_corrections(stream: String, seed: u64, rounds: usize) -> Corrections {
    let mut redis = redis_conn(REDIS_URL).await;
    let start = base();
    let mut rng = Rng::new(seed);
    let mut expected = BTreeMap::new();
    let mut last_id = String::new();
    for round in 0..rounds {
        let mut pipe = redis::pipe();
        for _ in 0..50 {
            let sensor = format!("c{}", rng.below(8));
            let minute = rng.below(90) as i64;
            let value = (round * 1000) as f64 + rng.below(1000) as f64;
            let ts = start + TimeDelta::minutes(minute);
            expected.insert((sensor.clone(), ts.timestamp_micros()), value);
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("data")
                .arg(reading_json(&sensor, value, ts));
        }
        let ids: Vec<String> = pipe.query_async(&mut redis).await.unwrap();
        last_id = ids.last().unwrap().clone();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Corrections { expected, last_id }
}

async fn assert_latest_values(
    pg: &tokio_postgres::Client,
    expected: &BTreeMap<(String, i64), f64>,
) {
    let rows = pg
        .query(
            "SELECT sensor_id, (extract(epoch FROM ts) * 1000000)::bigint, value FROM readings",
            &[],
        )
        .await
        .unwrap();
    let stored: BTreeMap<(String, i64), f64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, value)| stored.get(*key) != Some(value))
        .take(5)
        .map(|(key, value)| format!("{key:?}: expected {value}, stored {:?}", stored.get(key)))
        .collect();
    assert!(
        wrong.is_empty(),
        "not the last value of the stream: {wrong:?}"
    );
    assert_eq!(stored.len(), expected.len());
}

/// Once the group has processed every entry `produced`: each key holds its latest value, and
/// the `1m` and `1h` windows (the tests' resolutions) are exact.
async fn assert_drained_to_latest_values(res: &Resources, produced: &Corrections) {
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    let pg = pg_client(&res.database_url).await;
    assert_latest_values(&pg, &produced.expected).await;
    let resolutions: Vec<sensorhub::domain::Resolution> =
        vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    assert_aggregates_exact(&pg, &resolutions).await;
}

/// kill -9 at random moments while corrections arrive: entries committed before the ledger moved
/// are re-read after each restart, and never roll a later value back.
#[actix_web::test]
async fn kill_9_while_corrections_arrive_leaves_the_last_value_of_each_key() {
    let res = Resources::new();
    let mut env = crate::resilience::hub_env(REDIS_URL, &res.database_url, &res.stream, "victim");
    env.push(("SENSORHUB_ON_CONFLICT", "keep_last".into()));
    env.push(("SENSORHUB_BATCH_SIZE", "40".into()));
    let mut hub = Sensorhub::spawn(&env).await;
    let producer = tokio::spawn(produce_corrections(res.stream.clone(), 0x5eed, 150));
    hub.kill_and_restart(&env, 4, &mut Rng::new(0xdead_beef), 700)
        .await;
    let produced = producer.await.unwrap();
    assert_drained_to_latest_values(&res, &produced).await;
    drop(hub);
}

/// Two instances in one group take turns on the same sensors' corrections (small batches, so
/// that each holds entries of the other's range): each key ends with the value of its latest
/// stream position, whichever instance committed last.
#[actix_web::test]
async fn two_instances_end_with_the_value_of_the_latest_stream_position() {
    let res = Resources::new();
    let env_of = |name: &str| {
        let mut env = crate::resilience::hub_env(REDIS_URL, &res.database_url, &res.stream, name);
        env.push(("SENSORHUB_ON_CONFLICT", "keep_last".into()));
        env.push(("SENSORHUB_BATCH_SIZE", "25".into()));
        env
    };
    let first = Sensorhub::spawn(&env_of("turn-a")).await;
    let second = Sensorhub::spawn(&env_of("turn-b")).await;
    let produced = produce_corrections(res.stream.clone(), 0x7a7e, 120).await;
    assert_drained_to_latest_values(&res, &produced).await;
    let replaced = first.metric("sensorhub_readings_replaced_total").await
        + second.metric("sensorhub_readings_replaced_total").await;
    assert!(replaced > 0.0, "corrections were made");
    drop((first, second));
}

/// Line protocol with its own policy (`SENSORHUB_LINE_PROTOCOL_ON_CONFLICT=keep_last`, the rest
/// `keep_first`): a point written again replaces the stored value, as in InfluxDB, even one first
/// sent as JSON; a JSON reading of another value is still refused as a conflict.
#[actix_web::test]
async fn line_protocol_writes_win_by_their_own_policy() {
    let mut t = spawn_app_with(
        |c| c.line_protocol_on_conflict = Some(OnConflict::KeepLast),
        Default::default(),
    )
    .await;
    let ts = base();
    let seconds = ts.timestamp();
    let write = |value: f64| format!("meter,site=a kwh={value} {seconds}");
    for value in [1.0, 2.0, 3.0] {
        let (status, _) = crate::line_protocol::post(
            &t,
            "/api/v2/write?precision=s",
            &[],
            write(value).as_bytes(),
        )
        .await;
        assert_eq!(status, 204);
        let entry = t.last_entry().await;
        t.wait_drained(&entry).await;
    }
    let sensor = "meter,site=a.kwh";
    assert_eq!(value_at(&t, sensor, ts).await, 3.0);
    // JSON keeps the first value: refused, dead-lettered.
    send_one_by_one(&mut t, &[(sensor, ts, 4.0)]).await;
    assert_eq!(value_at(&t, sensor, ts).await, 3.0);
    assert_eq!(t.metrics().readings_conflicting.get(), 1);
    // A JSON reading first, then line protocol for its key: replaced.
    let other = ts + TimeDelta::minutes(1);
    send_one_by_one(&mut t, &[(sensor, other, 10.0)]).await;
    let body = format!("meter,site=a kwh=11 {}", other.timestamp());
    let (status, _) =
        crate::line_protocol::post(&t, "/api/v2/write?precision=s", &[], body.as_bytes()).await;
    assert_eq!(status, 204);
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(value_at(&t, sensor, other).await, 11.0);
    assert_eq!(t.metrics().readings_replaced.get(), 3);
    t.assert_aggregates_exact().await;
    t.stop().await;
}
