//! Deleting readings (`POST /api/v1/delete`, InfluxDB's `/api/v2/delete`, `sensorhub delete`):
//! the windows, the sensors and the partitions follow exactly; a deletion is idempotent, all or
//! nothing through a kill -9, guarded by a token, and what it removed does not come back when the
//! stream is read again.

use crate::helpers::*;
use chrono::{DateTime, Duration as TimeDelta, DurationRound as _, Utc};
use sensorhub::config::Secret;
use serde_json::Value;
use std::time::Duration;

/// Midnight three days ago: three days of readings end before now.
fn day_start() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(3))
        .duration_trunc(TimeDelta::days(1))
        .unwrap()
}

/// `sensor`'s readings every `step` over `span` from `start`, a counter rising by 1.5 with a
/// reset every 100 readings; as entries of 100 readings each. Returns the last entry id.
async fn load(
    t: &mut TestApp,
    sensor: &str,
    start: DateTime<Utc>,
    step: TimeDelta,
    count: usize,
) -> String {
    let mut payloads = Vec::new();
    let readings: Vec<String> = (0..count)
        .map(|i| reading_json(sensor, (i % 100) as f64 * 1.5, start + step * i as i32))
        .collect();
    for chunk in readings.chunks(100) {
        payloads.push(format!("[{}]", chunk.join(",")).into_bytes());
    }
    t.xadd_many(&payloads).await
}

async fn delete(t: &TestApp, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let (status, answer) = http_request(
        t.app().port(),
        "POST",
        "/api/v1/delete",
        &all,
        body.as_bytes(),
    )
    .await;
    let answer = serde_json::from_str(&answer).unwrap_or(Value::String(answer));
    (status, answer)
}

fn range(sensor: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    serde_json::json!({"sensor": sensor, "from": from.to_rfc3339(), "to": to.to_rfc3339()})
        .to_string()
}

async fn count_in(t: &TestApp, sensor: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    t.pg.query_one(
        "SELECT count(*) FROM readings WHERE sensor_id = $1 AND ts >= $2 AND ts < $3",
        &[&sensor, &from, &to],
    )
    .await
    .unwrap()
    .get(0)
}

/// A range cutting windows at both ends and crossing two day partitions, the newest readings of
/// a sensor, and a whole sensor: each time the windows equal a GROUP BY over what is left, the
/// sensor's first, last and latest value follow, a repeat deletes nothing, and a sensor left
/// without readings is gone from the API.
#[actix_web::test]
async fn ranges_whole_sensors_and_partitions_follow_exactly() {
    let mut t = spawn_app_with(
        |c| c.ingest_token = Some(Secret::new("in-token")),
        Default::default(),
    )
    .await;
    let start = day_start();
    let step = TimeDelta::seconds(450);
    let n = 3 * 24 * 8; // three days
    load(&mut t, "d1", start, step, n).await;
    let last = load(&mut t, "d2", start, step, n).await;
    t.wait_drained(&last).await;
    let partitions_before = t
        .count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings_hot'::regclass")
        .await;
    assert!(partitions_before >= 3, "{partitions_before} partitions");

    let auth = [("Authorization", "Token in-token")];
    // Day 0 at 10:05 to day 2 at 13:07: no window edge, two partition edges.
    let (from, to) = (
        start + TimeDelta::minutes(10 * 60 + 5),
        start + TimeDelta::days(2) + TimeDelta::minutes(13 * 60 + 7),
    );
    let expected = count_in(&t, "d1", from, to).await;
    assert!(expected > 300);
    let (status, answer) = delete(&t, &auth, &range("d1", from, to)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted"], expected, "{answer}");
    assert_eq!(answer["sensor_removed"], false);
    assert_eq!(count_in(&t, "d1", from, to).await, 0);
    t.assert_aggregates_exact().await;
    // Idempotent.
    let (status, answer) = delete(&t, &auth, &range("d1", from, to)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted"], 0, "{answer}");

    // The newest readings: the latest value follows.
    let tail_from = start + step * (n as i32 - 10);
    let (status, _) = delete(
        &t,
        &auth,
        &serde_json::json!({"sensor": "d1", "from": tail_from.to_rfc3339()}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let row =
        t.pg.query_one(
            "SELECT first_seen, last_seen, last_value FROM sensors WHERE sensor_id = 'd1'",
            &[],
        )
        .await
        .unwrap();
    let newest =
        t.pg.query_one(
            "SELECT ts, value FROM readings WHERE sensor_id = 'd1' ORDER BY ts DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, DateTime<Utc>>(0), start);
    assert_eq!(
        row.get::<_, DateTime<Utc>>(1),
        newest.get::<_, DateTime<Utc>>(0)
    );
    assert_eq!(row.get::<_, f64>(2), newest.get::<_, f64>(1));
    t.assert_aggregates_exact().await;

    // The whole sensor.
    let (status, answer) = delete(&t, &auth, r#"{"sensor": "d2"}"#).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted"], n, "{answer}");
    assert_eq!(answer["sensor_removed"], true);
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'd2'")
            .await,
        0
    );
    assert_eq!(
        t.count("SELECT count(*) FROM aggregates WHERE sensor_id = 'd2'")
            .await,
        0
    );
    let (status, _) = t.get("/api/v1/sensors/d2").await;
    assert_eq!(status, 404);
    let (_, sensors) = t.get("/api/v1/sensors?all=true").await;
    assert!(!sensors.contains("\"d2\""), "{sensors}");
    t.assert_aggregates_exact().await;
    assert_eq!(
        t.metrics().readings_deleted.get(),
        expected as u64 + 10 + n as u64
    );
    // A deletion is recorded each time, for the stream's re-reads.
    assert_eq!(t.count("SELECT count(*) FROM deletions").await, 4);

    // Refusals name what is wrong; the ingest or the admin token, nothing else, opens it.
    for (body, needle) in [
        ("{", "not a deletion"),
        (r#"{"sensor": ""}"#, "not a sensor id"),
        (r#"{"sensor": "d1", "from": "yesterday"}"#, "not a deletion"),
        (r#"{"sensor": "d1", "sensors": ["d2"]}"#, "unknown field"),
    ] {
        let (status, answer) = delete(&t, &auth, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    let (status, answer) = delete(&t, &auth, &range("d1", to, from)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("is not after"),
        "{answer}"
    );
    // Oversized: refused before it is read whole, nothing deleted.
    let huge = format!(r#"{{"sensor": "d1", "pad": "{}"}}"#, "x".repeat(1 << 20));
    let (status, _) = delete(&t, &auth, &huge).await;
    assert_eq!(status, 413);
    let (status, _) = delete(&t, &[], r#"{"sensor": "d1"}"#).await;
    assert_eq!(status, 401);
    let (status, _) = delete(
        &t,
        &[("Authorization", "Token wrong")],
        r#"{"sensor": "d1"}"#,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'd1'")
            .await
            > 0
    );
    t.stop().await;
}

/// What a deletion removed does not come back when its entries are read again — the whole
/// stream re-read from its start (the group moved back, the ledger gone), or an entry marked
/// with an older position (as a replayed dead letter is) — while a reading sent after the
/// deletion into the same range is stored.
#[actix_web::test]
async fn a_deleted_range_re_read_from_the_stream_stays_deleted() {
    let mut t = spawn_app_with(|c| c.stream_tail = 100_000, Default::default()).await;
    let start = day_start();
    let step = TimeDelta::seconds(60);
    let last = load(&mut t, "rr", start, step, 600).await;
    t.wait_drained(&last).await;
    let (from, to) = (
        start + TimeDelta::minutes(100),
        start + TimeDelta::minutes(300),
    );
    let (status, answer) = delete(&t, &[], &range("rr", from, to)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted"], 200);

    // Every entry read again.
    t.stop().await;
    let stream = t.stream().to_owned();
    let group = t.config.group.clone();
    let _: () = redis::cmd("DEL")
        .arg(sensorhub::stream::ledger::ranges_key(&stream, &group))
        .arg(sensorhub::stream::ledger::through_key(&stream, &group))
        .arg(sensorhub::stream::ledger::in_flight_key(&stream, &group))
        .query_async(&mut t.redis)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .query_async(&mut t.redis)
        .await
        .unwrap();
    t.restart(std::sync::Arc::new(Default::default())).await;
    t.wait_drained(&last).await;
    wait_for("the re-read counted", Duration::from_secs(20), || async {
        (t.metrics().readings_duplicate.get() >= 600).then_some(())
    })
    .await;
    assert_eq!(
        count_in(&t, "rr", from, to).await,
        0,
        "the deleted range came back"
    );
    assert_eq!(t.readings().await, 400);

    // An entry that says it first came in as the first one (a replay's mark): still deleted.
    let first = t.first_entry().await;
    let data = reading_json("rr", 42.0, from + TimeDelta::minutes(1));
    let replayed = t
        .xadd_fields(&[("data", data.as_bytes()), ("received", first.as_bytes())])
        .await;
    t.wait_drained(&replayed).await;
    assert_eq!(count_in(&t, "rr", from, to).await, 0);
    // Sent after the deletion: stored.
    let new = t
        .xadd_many(&[reading_json("rr", 7.0, from + TimeDelta::minutes(2)).into_bytes()])
        .await;
    t.wait_drained(&new).await;
    assert_eq!(count_in(&t, "rr", from, to).await, 1);
    t.assert_aggregates_exact().await;

    // Once the stream holds nothing from before it, a deletion is forgotten (by the next one).
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg(&new)
        .query_async(&mut t.redis)
        .await
        .unwrap();
    let (status, _) = delete(&t, &[], &range("other", from, to)).await;
    assert_eq!(status, 200);
    let kept: Vec<String> =
        t.pg.query("SELECT sensor_id FROM deletions", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
    assert_eq!(kept, ["other"]);
    t.stop().await;
}

/// `sensorhub delete` killed with SIGKILL in the middle of a large deletion: the readings are
/// all there or all gone, never half, and the windows match; run again, it finishes.
#[actix_web::test]
async fn kill_9_in_the_middle_of_a_deletion_leaves_it_done_or_not_started() {
    let mut t = spawn_app().await;
    let start = day_start();
    let n = 150_000;
    let last = load(&mut t, "big", start, TimeDelta::seconds(1), n).await;
    let last_small = load(&mut t, "small", start, TimeDelta::minutes(1), 100).await;
    t.wait_drained(&last).await;
    t.wait_drained(&last_small).await;
    let env = [
        ("SENSORHUB_REDIS_URL", REDIS_URL.to_owned()),
        (
            "SENSORHUB_DATABASE_URL",
            t.config.database_url.expose().to_owned(),
        ),
        ("SENSORHUB_STREAM", t.stream().to_owned()),
    ];
    let binary = std::env::var("SENSORHUB_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sensorhub").to_owned());
    let mut child = std::process::Command::new(&binary)
        .args(["delete", "--sensor", "big"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the deletion runs", Duration::from_secs(30), || async {
        let running = t
            .count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'active'
                   AND (query LIKE 'DELETE FROM readings%' OR query LIKE 'SELECT sensorhub_recompute%')",
            )
            .await;
        (running > 0).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(
        "the killed deletion's session ends",
        Duration::from_secs(60),
        || async {
            let left = t
                .count(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND query LIKE 'DELETE%' AND state <> 'idle'",
                )
                .await;
            (left == 0).then_some(())
        },
    )
    .await;
    let left = t
        .count("SELECT count(*) FROM readings WHERE sensor_id = 'big'")
        .await;
    assert!(
        left == 0 || left == n as i64,
        "half a deletion: {left} of {n} left"
    );
    eprintln!("killed deletion: {left} of {n} readings left");
    t.assert_aggregates_exact().await;

    let out = std::process::Command::new(&binary)
        .args(["delete", "--sensor", "big"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("big\t{left} deleted\tno reading left")
    );
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'big'")
            .await,
        0
    );
    t.assert_aggregates_exact().await;
    // The command refuses an empty range, naming it.
    let out = std::process::Command::new(&binary)
        .args([
            "delete",
            "--sensor",
            "small",
            "--from",
            "2024-01-02T00:00:00Z",
            "--to",
            "2024-01-01T00:00:00Z",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--to 2024-01-01T00:00:00+00:00 is not after")
    );
    t.stop().await;
}

const INFLUX_DELETE_SCRIPT: &str = r#"
import sys
from datetime import datetime, timezone
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

url, token, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
with InfluxDBClient(url=url, token=token, org="home") as client:
    lines = []
    for i in range(60):
        for station in ("roof", "cellar"):
            lines.append(f"weather,station={station} temp={20 + i / 10},hum={50 + i} {start + i * 60}")
    client.write_api(write_options=SYNCHRONOUS).write(bucket="meters", record=lines, write_precision=WritePrecision.S)
    print("written")
    sys.stdout.flush()
    input()
    delete = client.delete_api()
    t0 = datetime.fromtimestamp(start + 10 * 60, tz=timezone.utc)
    t1 = datetime.fromtimestamp(start + 19 * 60, tz=timezone.utc)
    delete.delete(t0, t1, '_measurement="weather" AND station="roof"', bucket="meters", org="home")
    print("deleted")
    try:
        delete.delete(t0, t1, '_measurement="weather" OR station="roof"', bucket="meters", org="home")
        print("bad predicate accepted")
    except ApiException as e:
        print("refused", e.status)
"#;

/// InfluxDB's own Python client deletes through `/api/v2/delete`: the series its predicate names,
/// `start` and `stop` both inclusive as in InfluxDB, every field of them; the others stay.
#[actix_web::test]
async fn influxdbs_python_client_deletes_by_measurement_and_tags() {
    let mut t = spawn_app_with(
        |c| c.ingest_token = Some(Secret::new("py-token")),
        Default::default(),
    )
    .await;
    let start = crate::line_protocol::an_hour_yesterday();
    let python = tools_python();
    let mut child = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(INFLUX_DELETE_SCRIPT)
        .arg(format!("http://127.0.0.1:{}", t.app().port()))
        .arg("py-token")
        .arg(start.timestamp().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} runs ({e}); scripts/services.sh --tools installs it",
                python.display()
            )
        });
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next_line().await.unwrap();
    assert_eq!(
        first.as_deref(),
        Some("written"),
        "{:?}",
        child.wait_with_output().await
    );
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(t.readings().await, 240);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\n").await.unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    while let Some(line) = stdout.next_line().await.unwrap() {
        rest.push(line);
    }
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{rest:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rest, ["deleted", "refused 400"]);
    // Minutes 10 to 19, both ends: ten readings of each of the roof's two fields.
    assert_eq!(t.readings().await, 220);
    let roof = t
        .count("SELECT count(*) FROM readings WHERE sensor_id LIKE 'weather,station=roof.%'")
        .await;
    assert_eq!(roof, 100);
    let gap = t
        .count(&format!(
            "SELECT count(*) FROM readings WHERE sensor_id LIKE 'weather,station=roof.%'
             AND ts BETWEEN '{}' AND '{}'",
            (start + TimeDelta::minutes(10)).to_rfc3339(),
            (start + TimeDelta::minutes(19)).to_rfc3339()
        ))
        .await;
    assert_eq!(gap, 0);
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// With Redis gone (its positions cannot be read, so the deletion could not be recorded against
/// the stream), a deletion is refused with a 503 that says nothing was deleted, and nothing is.
#[actix_web::test]
async fn without_redis_a_deletion_is_refused_whole() {
    let server = PrivateRedis::start(false);
    let url = server.url();
    let mut t = spawn_app_with(
        |c| c.redis_url = Secret::new(url.clone()),
        Default::default(),
    )
    .await;
    let mut redis = redis_conn(&url).await;
    let start = day_start();
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("XADD")
            .arg(t.stream())
            .arg("*")
            .arg("data")
            .arg(reading_json(
                "gone",
                f64::from(i),
                start + TimeDelta::minutes(i.into()),
            ));
    }
    let ids: Vec<String> = pipe.query_async(&mut redis).await.unwrap();
    wait_drained(&redis, t.stream(), &t.config.group, ids.last().unwrap()).await;
    assert_eq!(t.readings().await, 50);
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async(&mut redis)
        .await;
    let (status, answer) = delete(&t, &[], r#"{"sensor": "gone"}"#).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("nothing was deleted"),
        "{answer}"
    );
    assert_eq!(t.readings().await, 50);
    assert_eq!(t.count("SELECT count(*) FROM deletions").await, 0);
    t.stop().await;
}
