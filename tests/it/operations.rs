//! What an operator relies on: metrics that pass promtool and agree with the database, a graceful
//! stop that loses nothing, a stream that stays bounded, clear configuration errors, healthcheck.

use crate::helpers::cluster::key_slot;
use crate::helpers::*;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

#[actix_web::test]
async fn metrics_pass_promtool_and_agree_with_the_database() {
    let mut t = spawn_app().await;
    let base: chrono::DateTime<chrono::Utc> = "2025-02-01T00:00:00Z".parse().unwrap();
    let mut payloads: Vec<Vec<u8>> = (0..500)
        .map(|i| {
            reading_json(
                &format!("m{}", i % 9),
                f64::from(i),
                base + chrono::Duration::seconds(i64::from(i) * 7),
            )
            .into_bytes()
        })
        .collect();
    payloads.extend((0..50).map(|_| b"not json".to_vec()));
    payloads.extend(payloads[..100].to_vec());
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    let metrics = t.metrics();
    wait_for("the group metrics refreshed", Duration::from_secs(10), || {
        let m = metrics.clone();
        async move { (m.entries_acked.get() == 650 && m.group_pending.get() == 0).then_some(()) }
    })
    .await;

    let (status, body) = t.get("/metrics").await;
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/services.sh --tools)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let rows = t.readings().await as f64;
    assert_eq!(value("sensorhub_readings_written_total"), rows);
    assert_eq!(value("sensorhub_readings_duplicate_total"), 100.0);
    assert_eq!(
        value("sensorhub_readings_rejected_total{reason=\"malformed_json\"}"),
        50.0
    );
    let dead: i64 = redis::cmd("XLEN")
        .arg(t.dead_stream())
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert_eq!(dead, 50);
    assert_eq!(
        value("sensorhub_messages_received_total{source=\"stream\"}"),
        650.0
    );
    assert!(
        value("sensorhub_aggregate_rows_upserted_total")
            >= t.count("SELECT count(*) FROM aggregates").await as f64
    );
    assert_eq!(value("sensorhub_batches_in_flight"), 0.0);
    assert_eq!(value("sensorhub_consumer_group_pending"), 0.0);
    assert!(value("sensorhub_batch_write_duration_seconds_count") >= 1.0);
    assert_eq!(value("sensorhub_end_to_end_latency_seconds_count"), 650.0);
    assert!(body.contains("sensorhub_build_info{version=\""));
    assert!(body.contains("sensorhub_actor_restarts_total{actor=\"write\"} 0"));
    t.stop().await;
}

#[actix_web::test]
async fn graceful_stop_under_load_loses_nothing() {
    let mut t = spawn_app_with(|c| c.batch_size = 300, Default::default()).await;
    let stream = t.stream().to_owned();
    let producer = tokio::spawn(async move {
        let mut redis = redis_conn(REDIS_URL).await;
        let base: chrono::DateTime<chrono::Utc> = "2025-04-01T00:00:00Z".parse().unwrap();
        let mut last = String::new();
        for chunk in 0..40 {
            let mut pipe = redis::pipe();
            for i in 0..500 {
                let n = chunk * 500 + i;
                let payload = reading_json(
                    &format!("load-{}", n % 100),
                    f64::from(n),
                    base + chrono::Duration::milliseconds(i64::from(n) * 250),
                );
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("data")
                    .arg(payload);
            }
            let ids: Vec<String> = pipe.query_async(&mut redis).await.unwrap();
            last = ids.last().unwrap().clone();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    });
    let metrics = t.metrics();
    wait_for("the load to be flowing", Duration::from_secs(20), || {
        let n = metrics.readings_written.get();
        async move { (n > 2000).then_some(()) }
    })
    .await;
    let stopping = std::time::Instant::now();
    t.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        stopping.elapsed()
    );
    // Everything the stopped instance committed was acknowledged: nothing of it is pending.
    let (pending, _) = group_state(&mut t.redis, &t.config.stream, &t.config.group).await;
    assert_eq!(
        pending, 0,
        "committed entries left pending after a graceful stop"
    );
    let stored_at_stop = t.readings().await;
    assert!(stored_at_stop > 0 && stored_at_stop == metrics.readings_written.get() as i64);

    let last = producer.await.unwrap();
    t.restart(Default::default()).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 20_000);
    assert_eq!(
        t.metrics().readings_duplicate.get(),
        0,
        "nothing was written twice"
    );
    t.assert_aggregates_exact().await;
    t.stop().await;
}

#[actix_web::test]
async fn stream_is_trimmed_to_the_tail_and_nothing_stays_pending() {
    let mut t = spawn_app_with(|c| c.stream_tail = 100, Default::default()).await;
    let base: chrono::DateTime<chrono::Utc> = "2025-05-01T00:00:00Z".parse().unwrap();
    let payloads: Vec<Vec<u8>> = (0..10_000)
        .map(|i| {
            reading_json(
                &format!("t{}", i % 50),
                1.0,
                base + chrono::Duration::seconds(i64::from(i)),
            )
            .into_bytes()
        })
        .collect();
    let mut last = String::new();
    for chunk in payloads.chunks(2500) {
        last = t.xadd_many(chunk).await;
    }
    t.wait_drained(&last).await;
    let stream = t.stream().to_owned();
    let redis = t.redis.clone();
    wait_for(
        "the stream trimmed to its tail",
        Duration::from_secs(10),
        || {
            let (stream, mut redis) = (stream.clone(), redis.clone());
            async move {
                let len: i64 = redis::cmd("XLEN")
                    .arg(&stream)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                (len <= 100).then_some(())
            }
        },
    )
    .await;
    let len: i64 = redis::cmd("XLEN")
        .arg(t.stream())
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert_eq!(len, 100, "the configured tail is kept for inspection");
    let (pending, _) = group_state(&mut t.redis, &t.config.stream, &t.config.group).await;
    assert_eq!(pending, 0);
    assert_eq!(t.readings().await, 10_000);
    t.stop().await;
}

#[test]
fn invalid_configuration_stops_start_up_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_sensorhub"))
        .env("SENSORHUB_BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        r#"sensorhub: invalid SENSORHUB_BATCH_SIZE="lots": expected a whole number from 1 to 100000"#
    );
}

#[actix_web::test]
async fn healthcheck_command_exits_zero_only_when_ready() {
    let t = spawn_app().await;
    // Async: a blocking wait here would stall this thread's runtime, which drives the
    // application's own Redis and PostgreSQL connections.
    let run = |port: u16| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
            .arg("healthcheck")
            .env("SENSORHUB_HTTP_ADDR", format!("0.0.0.0:{port}"))
            .output()
            .await
            .unwrap()
    };
    let out = run(t.app().port()).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(closed).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
}

#[actix_web::test]
async fn simulate_feeds_a_running_instance_every_way() {
    let t = spawn_app().await;
    t.wait_for_bridge().await;
    let simulate = |args: &'static [&'static str]| {
        let (stream, channel) = (t.config.stream.clone(), t.config.channel.clone().unwrap());
        let http = format!("127.0.0.1:{}", t.app().port());
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
                .arg("simulate")
                .args(args)
                .env("SENSORHUB_STREAM", stream)
                .env("SENSORHUB_CHANNEL", channel)
                .env("SENSORHUB_HTTP_ADDR", http)
                .output()
                .await
                .unwrap()
        }
    };
    let out = simulate(&["--sensors", "6", "--rate", "3000", "--count", "600"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("done, 600 readings sent"),
        "progress and summary lines: {stderr}"
    );
    let out = simulate(&[
        "--sensors",
        "3",
        "--rate",
        "1000",
        "--count",
        "90",
        "--via",
        "publish",
        "--prefix",
        "pub",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = simulate(&[
        "--sensors",
        "4",
        "--rate",
        "2000",
        "--count",
        "120",
        "--via",
        "line-protocol",
        "--prefix",
        "lp",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pg = &t.pg;
    wait_for(
        "the simulated readings stored",
        Duration::from_secs(20),
        || async move {
            let sim: i64 = pg
                .query_one(
                    "SELECT count(*) FROM readings WHERE sensor_id LIKE 'sim-%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let published: i64 = pg
                .query_one(
                    "SELECT count(*) FROM readings WHERE sensor_id LIKE 'pub-%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            let lines: i64 = pg
                .query_one(
                    "SELECT count(*) FROM readings WHERE sensor_id LIKE 'lp-%.value'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (sim == 600 && published == 90 && lines == 120).then_some(())
        },
    )
    .await;
    let units: Vec<(String, Option<String>)> =
        t.pg.query(
            "SELECT sensor_id, unit FROM sensors WHERE sensor_id LIKE 'sim-%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(units.len(), 6);
    assert!(
        units
            .iter()
            .any(|(id, unit)| id.contains("energy") && unit.as_deref() == Some("kWh"))
    );
    let decreasing = t
        .count(
            "SELECT count(*) FROM (SELECT value < lag(value) OVER (PARTITION BY sensor_id ORDER BY ts) AS down
             FROM readings WHERE sensor_id LIKE 'sim-energy-%') m WHERE down",
        )
        .await;
    assert_eq!(decreasing, 0, "energy meters only increase");
    t.assert_aggregates_exact().await;

    let bad = simulate(&["--rate", "0"]).await;
    assert!(!bad.status.success());
}

/// Deletes keys when the test ends, however it ends.
struct DeleteKeys(Vec<String>);

impl Drop for DeleteKeys {
    fn drop(&mut self) {
        if let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.0).query(&mut conn);
        }
    }
}

#[actix_web::test]
async fn a_stream_renamed_to_a_hash_tag_keeps_its_ledger_and_every_key_shares_one_slot() {
    let mut t = spawn_app().await;
    let now = chrono::Utc::now();
    let first: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            reading_json(
                &format!("r{}", i % 10),
                f64::from(i),
                now - chrono::Duration::seconds(i64::from(i)),
            )
            .into_bytes()
        })
        .collect();
    t.xadd_many(&first).await;
    let last = t.xadd_data(br#"{"sensor":"bad","value":"12,5"}"#).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 100);
    t.stop().await;

    let old = t.config.stream.clone();
    let new = format!("{{{old}}}");
    let mut keys: Vec<String> = [
        "",
        ":dead",
        ":committed:sensorhub",
        ":committed-through:sensorhub",
    ]
    .iter()
    .map(|suffix| format!("{new}{suffix}"))
    .collect();
    keys.push(format!("{new}:in-flight:sensorhub"));
    let _cleanup = DeleteKeys(keys.clone());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
        .args(["rename-stream", "--to", &new])
        .env("SENSORHUB_STREAM", &old)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The ranges' sorted set exists only while some range waits above the watermark.
    let must_exist = [&keys[0], &keys[1], &keys[3]];
    for key in must_exist {
        assert!(
            printed.contains(&format!("-> {key}")),
            "{key} renamed:\n{printed}"
        );
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut t.redis)
            .await
            .unwrap();
        assert!(exists, "{key}");
    }
    let old_left: bool = redis::cmd("EXISTS")
        .arg(&old)
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert!(!old_left, "the old stream is gone");
    let slot = key_slot(&new);
    assert!(
        keys.iter().all(|k| key_slot(k) == slot),
        "one slot for every key"
    );
    assert_ne!(
        key_slot(&old),
        key_slot(&format!("{old}:dead")),
        "without a tag they differ"
    );

    // A second rename to the same name is refused: nothing is overwritten.
    let again = tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
        .args(["rename-stream", "--to", &new])
        .env("SENSORHUB_STREAM", &old)
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());

    // Restarted on the new name: the ledger came along, so nothing is read twice.
    t.config.stream = new.clone();
    t.restart(Default::default()).await;
    let second: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            reading_json(
                &format!("s{}", i % 10),
                f64::from(i),
                now - chrono::Duration::seconds(i64::from(i)),
            )
            .into_bytes()
        })
        .collect();
    let last = t.xadd_many(&second).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 200);
    assert_eq!(t.metrics().readings_duplicate.get(), 0, "no entry re-read");
    assert_eq!(
        t.dead_letters().await.ids.len(),
        1,
        "the dead letter came along"
    );
    t.assert_aggregates_exact().await;
    t.stop().await;
}
