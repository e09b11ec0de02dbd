//! Aggregates equal a GROUP BY over the stored readings: many sensors, out of order, late readings.

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};

#[actix_web::test]
async fn aggregates_equal_group_by_with_out_of_order_and_late_readings() {
    let mut t = spawn_app_with(|c| c.batch_size = 200, Default::default()).await;
    let mut rng = Rng::new(0x5e45_0a11);
    let base: DateTime<Utc> = "2025-03-01T10:00:00Z".parse().unwrap();
    let sensors: Vec<String> = (0..40)
        .map(|i| format!("site-{}:sensor.{i}", i % 4))
        .collect();

    // ~4,000 readings over three hours, values in quarter steps, sent shuffled: single objects and
    // gateway arrays of up to 20 readings.
    let mut readings: Vec<String> = Vec::new();
    for sensor in &sensors {
        let mut offset = 0i64;
        for _ in 0..100 {
            offset += 1 + rng.below(200) as i64;
            let value = (rng.below(4000) as f64 - 2000.0) * 0.25;
            readings.push(reading_json(
                sensor,
                value,
                base + Duration::milliseconds(offset * 1000 + rng.below(1000) as i64),
            ));
        }
    }
    rng.shuffle(&mut readings);
    let late: Vec<String> = readings.split_off(readings.len() - 300);
    let mut payloads = Vec::new();
    let mut rest = readings.as_slice();
    while !rest.is_empty() {
        let n = (1 + rng.below(20) as usize).min(rest.len());
        let (group, tail) = rest.split_at(n);
        payloads.push(if n == 1 {
            group[0].clone().into_bytes()
        } else {
            format!("[{}]", group.join(",")).into_bytes()
        });
        rest = tail;
    }
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    t.assert_aggregates_exact().await;

    // Late readings, after their windows were already written: stored, and the windows corrected.
    let late: Vec<Vec<u8>> = late.into_iter().map(String::into_bytes).collect();
    let last = t.xadd_many(&late).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 4000);
    t.assert_aggregates_exact().await;

    // The sensors table holds the newest reading of each sensor, whatever the arrival order.
    let wrong = t
        .count(
            "SELECT count(*) FROM sensors s JOIN LATERAL (
                 SELECT ts, value FROM readings r WHERE r.sensor_id = s.sensor_id ORDER BY ts DESC LIMIT 1) newest ON true
             WHERE s.last_seen <> newest.ts OR s.last_value <> newest.value
                OR s.first_seen <> (SELECT min(ts) FROM readings r WHERE r.sensor_id = s.sensor_id)",
        )
        .await;
    assert_eq!(wrong, 0);
    assert_eq!(t.count("SELECT count(*) FROM sensors").await, 40);
    let metrics = t.metrics();
    assert_eq!(metrics.readings_written.get(), 4000);
    assert!(
        metrics.aggregate_rows_upserted.get() as i64
            >= t.count("SELECT count(*) FROM aggregates").await
    );
    t.stop().await;
}

/// Every batch rewrites the "latest" row of each of its sensors. Those updates must stay HOT
/// (heap-only: no index entry, no dead version left for vacuum), or a busy table grows by megabytes
/// a minute and each update costs twice as much.
#[actix_web::test]
async fn latest_rows_of_sensors_are_updated_in_place() {
    let mut t = spawn_app_with(|c| c.batch_size = 20, Default::default()).await;
    let base: DateTime<Utc> = "2025-03-01T10:00:00Z".parse().unwrap();
    for round in 0..30i64 {
        let payloads: Vec<Vec<u8>> = (0..20)
            .map(|s| {
                reading_json(
                    &format!("hot-{s}"),
                    round as f64,
                    base + Duration::seconds(round),
                )
                .into_bytes()
            })
            .collect();
        let last = t.xadd_many(&payloads).await;
        t.wait_drained(&last).await;
    }
    assert_eq!(t.readings().await, 600);
    // Table statistics reach pg_stat_user_tables within a second or so of each transaction.
    let pg = &t.pg;
    let (updated, hot) = wait_for("sensors update statistics", Duration::seconds(30).to_std().unwrap(), || async {
        let row = pg
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'sensors'",
                &[],
            )
            .await
            .unwrap();
        let (updated, hot): (i64, i64) = (row.get(0), row.get(1));
        (updated >= 20 * 29).then_some((updated, hot))
    })
    .await;
    assert!(
        hot * 10 >= updated * 9,
        "only {hot} of {updated} updates of sensors were HOT"
    );
    t.stop().await;
}

/// Windows of one resolution that differ from a `GROUP BY` over the readings.
async fn windows_off(pg: &tokio_postgres::Client, resolution: &str, secs: i64) -> i64 {
    pg.query_one(
        &format!(
            "WITH expected AS (
               SELECT sensor_id, to_timestamp(floor(extract(epoch FROM ts) / {secs}) * {secs}) AS bucket,
                      count(*) AS count, sum(value) AS sum
               FROM readings GROUP BY 1, 2),
             kept AS (SELECT * FROM aggregates WHERE resolution = '{resolution}')
             SELECT count(*) FROM expected e FULL OUTER JOIN kept a USING (sensor_id, bucket)
             WHERE a.count IS DISTINCT FROM e.count
                OR abs(a.sum - e.sum) > 1e-9 * greatest(1, abs(e.sum))"
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// `1h` added to a deployment that kept `1m` only, while readings keep arriving: its windows are
/// backfilled from the raw readings and end equal to a `GROUP BY` (they held only what arrived
/// after the change); an instance started with another set while one runs refuses to start,
/// naming the variable. Through the binary, so an older build can be tried.
#[actix_web::test]
async fn a_resolution_added_under_load_is_backfilled_exactly() {
    let res = Resources::new();
    let env = |resolutions: &str, consumer: &str| {
        let mut env = res.hub_env();
        env.extend([
            ("SENSORHUB_RESOLUTIONS", resolutions.to_owned()),
            ("SENSORHUB_CONSUMER", consumer.to_owned()),
        ]);
        env
    };
    let mut redis = redis_conn(REDIS_URL).await;
    let base = Utc::now() - Duration::hours(10);
    let xadd = |from: i64, to: i64| {
        let mut pipe = redis::pipe();
        for i in from..to {
            let ts = base + Duration::seconds(i * 7);
            let payload = reading_json(&format!("s{}", i % 5), (i % 97) as f64, ts);
            pipe.cmd("XADD")
                .arg(&res.stream)
                .arg("*")
                .arg("data")
                .arg(payload)
                .ignore();
        }
        pipe
    };
    let mut old = crate::helpers::Sensorhub::spawn(&env("1m", "a")).await;
    let _: () = xadd(0, 2000).query_async(&mut redis).await.unwrap();
    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        2000,
        std::time::Duration::from_secs(30),
    )
    .await;
    old.terminate(std::time::Duration::from_secs(20)).await;

    // Readings arrive while the new set starts and backfills.
    let producing = {
        let mut redis = redis.clone();
        let pipes: Vec<redis::Pipeline> = (0..20)
            .map(|k| xadd(2000 + k * 100, 2100 + k * 100))
            .collect();
        tokio::spawn(async move {
            for pipe in pipes {
                let _: () = pipe.query_async(&mut redis).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let new = crate::helpers::Sensorhub::spawn(&env("1m,1h", "b")).await;
    producing.await.unwrap();
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        4000,
        std::time::Duration::from_secs(30),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let off = windows_off(&pg, "1h", 3600).await;
        if off == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{off} 1h windows differ from the raw readings:\n{}",
            new.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_aggregates_exact(&pg, &["1m".parse().unwrap(), "1h".parse().unwrap()]).await;

    // Another set while an instance runs: refused at start, naming the variable.
    let printed = crate::helpers::Sensorhub::refused(&env("1m", "c")).await;
    assert!(printed.contains("SENSORHUB_RESOLUTIONS"), "{printed}");
}
