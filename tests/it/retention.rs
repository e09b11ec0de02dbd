//! Retention: expired partitions dropped while the writer is under load, nothing else lost,
//! aggregates of the kept periods exact; a reading older than the horizon refused, changing no
//! aggregate; aggregates kept per resolution.

use crate::helpers::*;
use chrono::{DurationRound as _, TimeDelta, Utc};
use sensorhub::store::retention::{Retention, run_once};
use std::time::Duration;

#[actix_web::test]
async fn expired_partitions_go_under_load_and_a_reading_beyond_the_horizon_changes_nothing() {
    let mut t = spawn_app().await;
    let day = TimeDelta::days(1);
    let now = Utc::now();
    // Old periods, as a system running for weeks has them (accepted: no retention yet).
    let mut old = Vec::new();
    for (age, sensor) in [(40, "a"), (35, "b"), (20, "c")] {
        for i in 0..10 {
            let ts = now - day * age + TimeDelta::minutes(i);
            old.push(reading_json(&format!("old-{sensor}"), f64::from(i as i32), ts).into_bytes());
        }
    }
    let last = t.xadd_many(&old).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 30);

    // A producer of current readings, and retention of 30 days applied while it runs.
    let stream = t.stream().to_owned();
    let producer = tokio::spawn(async move {
        let mut redis = redis_conn(REDIS_URL).await;
        let mut last = String::new();
        for round in 0..20 {
            let payloads: Vec<Vec<u8>> = (0..250)
                .map(|i| {
                    let ts = Utc::now() - TimeDelta::seconds(round * 250 + i);
                    reading_json(&format!("live-{}", i % 50), i as f64, ts).into_bytes()
                })
                .collect();
            let ids = sensorhub::stream::append::append_payloads(&mut redis, &stream, payloads)
                .await
                .unwrap();
            last = ids.last().unwrap().to_string();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = pg_client(t.config.database_url.expose()).await;
    let retention = Retention {
        raw: Some(Duration::from_secs(30 * 86_400)),
        aggregates: Vec::new(),
    };
    let report = run_once(&mut client, &retention, Utc::now())
        .await
        .unwrap()
        .expect("no other instance runs retention");
    let last = producer.await.unwrap();
    t.wait_drained(&last).await;
    assert_eq!(
        report.dropped.len(),
        2,
        "the 40- and 35-day-old partitions: {report:?}"
    );
    let horizon = report.horizon.unwrap();
    let expected_horizon = (now - day * 35).duration_trunc(day).unwrap() + day;
    assert_eq!(
        horizon, expected_horizon,
        "the end of the last dropped partition"
    );
    assert_eq!(
        t.readings().await,
        10 + 5000,
        "only the expired readings went; nothing of the load was lost"
    );
    assert_eq!(
        t.metrics().database_errors.get(),
        0,
        "the writer saw no error"
    );
    let since = horizon.to_rfc3339();
    assert_aggregates_exact_since(&t.pg, &t.config.resolutions, &since).await;

    // A repeat of a dropped reading: refused as older than the horizon, no aggregate changes.
    let aggregates = "SELECT count(*), sum(count)::bigint FROM aggregates";
    let before = t.pg.query_one(aggregates, &[]).await.unwrap();
    let repeat = reading_json("old-b", 3.0, now - day * 35 + TimeDelta::minutes(3));
    let last = t.xadd_data(repeat.as_bytes()).await;
    t.wait_drained(&last).await;
    let after = t.pg.query_one(aggregates, &[]).await.unwrap();
    assert_eq!(
        (before.get::<_, i64>(0), before.get::<_, i64>(1)),
        (after.get::<_, i64>(0), after.get::<_, i64>(1)),
        "no aggregate changed"
    );
    let letters = t.dead_letters().await;
    let letter = letters.ids.last().expect("the repeat is a dead letter");
    assert_eq!(letter.get::<String>("reason").unwrap(), "too_old");
    assert!(
        letter
            .get::<String>("detail")
            .unwrap()
            .contains("retention horizon")
    );
    assert_eq!(t.readings().await, 10 + 5000);

    // Aggregates kept per resolution: the minute windows older than 30 days go, the hours stay.
    let per_resolution = Retention {
        raw: None,
        aggregates: vec![("1m".parse().unwrap(), Duration::from_secs(30 * 86_400))],
    };
    let old_windows = "SELECT count(*) FROM aggregates WHERE bucket < now() - interval '30 days' AND resolution = ";
    assert!(t.count(&format!("{old_windows}'1m'")).await > 0);
    let report = run_once(&mut client, &per_resolution, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert!(report.aggregates_deleted[0].1 > 0, "{report:?}");
    assert_eq!(t.count(&format!("{old_windows}'1m'")).await, 0);
    assert!(t.count(&format!("{old_windows}'1h'")).await > 0);
    t.stop().await;
}
