//! `readings` partitioned by time: partitions for future, late and years-old readings, none by
//! default, queries that prune, and the upgrade of an unpartitioned table of a million rows.

use crate::helpers::*;
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Instant;

/// A partition of `readings`: name, lower and upper bound (`None`: unbounded).
type Partition = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The partitions of `readings`, by lower bound.
async fn partitions(pg: &tokio_postgres::Client) -> Vec<Partition> {
    pg.query(
        "SELECT c.relname::text,
                nullif(trim(both '''' from b[1]), 'MINVALUE')::timestamptz,
                nullif(trim(both '''' from b[2]), 'MAXVALUE')::timestamptz
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                         'FROM \\((.*)\\) TO \\((.*)\\)') AS b
         WHERE i.inhparent = 'readings_hot'::regclass
         ORDER BY 2 NULLS FIRST",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn covering(parts: &[Partition], ts: DateTime<Utc>) -> Option<String> {
    parts
        .iter()
        .find(|(_, lower, upper)| lower.is_none_or(|l| l <= ts) && upper.is_none_or(|u| ts < u))
        .map(|(name, _, _)| name.clone())
}

#[actix_web::test]
async fn partitions_are_made_for_future_late_and_years_old_readings_and_queries_prune() {
    let mut t = spawn_app().await;
    let now = Utc::now();
    let before = partitions(&t.pg).await;
    assert!(
        covering(&before, now).is_some() && covering(&before, now + TimeDelta::days(1)).is_some(),
        "today's and tomorrow's made at start: {before:?}"
    );
    let times = [
        now,
        now + TimeDelta::minutes(2),
        now - TimeDelta::days(3),
        now - TimeDelta::days(400),
        now - TimeDelta::days(9 * 365),
    ];
    let payloads: Vec<Vec<u8>> = times
        .iter()
        .enumerate()
        .map(|(i, ts)| reading_json("part", i as f64, *ts).into_bytes())
        .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    assert_eq!(
        t.readings().await,
        5,
        "every reading stored, years-old included"
    );
    let parts = partitions(&t.pg).await;
    for ts in times {
        let name = covering(&parts, ts).unwrap_or_else(|| panic!("no partition for {ts}"));
        let day = ts.format("%Y%m%d").to_string();
        assert!(name.contains(&day), "{ts} in its day's partition {name}");
    }
    let default: i64 = t
        .count("SELECT count(*) FROM pg_partitioned_table WHERE partdefid <> 0")
        .await;
    assert_eq!(default, 0, "no default partition");
    t.assert_aggregates_exact().await;

    // The read API's query reads one partition for a day's range.
    let from = now - TimeDelta::days(3) - TimeDelta::hours(1);
    let to = now - TimeDelta::days(3) + TimeDelta::hours(1);
    let plan: Vec<String> =
        t.pg.query(
            &format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {}",
                sensorhub::store::sql::SENSOR_READINGS
            ),
            &[&"part", &Some(from), &Some(to), &10_i64],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    let scanned = parts
        .iter()
        .filter(|(name, _, _)| {
            plan.contains(&format!(" {name} ")) || plan.contains(&format!(" on {name}"))
        })
        .count();
    assert!(parts.len() >= 5, "{parts:?}");
    assert_eq!(scanned, 1, "one partition of {} read:\n{plan}", parts.len());
    let (status, body) = t
        .get(&format!(
            "/api/v1/sensors/part/readings?from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"value\":2.0"), "{body}");
    t.stop().await;
}

#[actix_web::test]
async fn an_unpartitioned_table_of_a_million_rows_is_upgraded_in_place() {
    let res = Resources::new();
    // The schema before partitioning, with a million readings of the last days in it.
    let pool = sensorhub::store::connect(&res.database_url, 2)
        .await
        .unwrap();
    sensorhub::store::migrate_to(&pool, Some(5)).await.unwrap();
    let newest = Utc::now() - TimeDelta::hours(2);
    {
        let client = pool.get().await.unwrap();
        client
            .execute(
                "INSERT INTO readings (sensor_id, ts, value)
                 SELECT 'old-' || (n % 1000), $1::timestamptz - (n / 1000) * interval '1 second', n
                 FROM generate_series(0, 999999) AS n",
                &[&newest],
            )
            .await
            .unwrap();
    }
    let started = Instant::now();
    sensorhub::store::migrate(&pool).await.unwrap();
    eprintln!("upgrade of 1,000,000 rows: {:?}", started.elapsed());
    drop(pool);

    let mut t = spawn_app_on(res, |_| {}, Default::default()).await;
    assert_eq!(t.readings().await, 1_000_000, "not a row lost");
    let parts = partitions(&t.pg).await;
    assert_eq!(parts[0].0, "readings_before_partitioning", "{parts:?}");
    assert_eq!(parts[0].1, None);
    let legacy_upper = parts[0].2.unwrap();
    assert!(legacy_upper > newest && legacy_upper <= newest + TimeDelta::days(1));
    // A repeat of an old reading is a duplicate across the upgrade; a late one and a new one
    // are stored, each in its partition.
    let payloads = vec![
        reading_json("old-7", 999_007.0, newest - TimeDelta::seconds(999)).into_bytes(),
        reading_json("late", 1.0, newest - TimeDelta::minutes(30)).into_bytes(),
        reading_json("new", 2.0, Utc::now()).into_bytes(),
    ];
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 1_000_002);
    assert_eq!(t.metrics().readings_duplicate.get(), 1);
    let late: i64 = t
        .count("SELECT count(*) FROM readings_before_partitioning WHERE sensor_id = 'late'")
        .await;
    assert_eq!(late, 1, "a late reading goes to the attached table");
    let (status, _) = t.get("/api/v1/sensors/new").await;
    assert_eq!(status, 200);
    let old7: i64 = t
        .count("SELECT count(*) FROM readings WHERE sensor_id = 'old-7'")
        .await;
    assert_eq!(old7, 1000);
    t.stop().await;
}
