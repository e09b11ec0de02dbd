//! A kill -9 during compaction leaves each partition whole or compacted, never both nor half.

use crate::compaction::WEEK;
use crate::helpers::*;
use chrono::{DurationRound as _, TimeDelta, Utc};
use sensorhub::store::compaction::run_once;
use std::time::Duration;

/// `sensorhub compact` killed with SIGKILL at different moments of compacting two partitions of
/// half a million readings each: every partition is whole or compacted, never both nor half, and
/// a run afterwards compacts what is left with nothing lost.
#[actix_web::test]
async fn a_kill_9_during_compaction_leaves_each_partition_whole_or_compacted() {
    let res = Resources::new();
    let pool = sensorhub::store::connect(&res.database_url, 1)
        .await
        .unwrap();
    sensorhub::store::migrate(&pool).await.unwrap();
    drop(pool);
    let pg = pg_client(&res.database_url).await;
    let day = (Utc::now() - TimeDelta::days(12))
        .duration_trunc(TimeDelta::days(1))
        .unwrap();
    for d in 0..2 {
        let lower = day + TimeDelta::days(d);
        pg.batch_execute(&format!(
            "CREATE TABLE \"readings_k{d}\" PARTITION OF readings_hot
                 FOR VALUES FROM ('{}') TO ('{}')",
            lower.to_rfc3339(),
            (lower + TimeDelta::days(1)).to_rfc3339()
        ))
        .await
        .unwrap();
        pg.execute(
            "INSERT INTO readings_hot (sensor_id, ts, value)
             SELECT 'k-' || (i % 50), $1::timestamptz + (i / 50) * interval '150 ms', (i % 1000) / 100.0
             FROM generate_series(0, 499999) i",
            &[&lower],
        )
        .await
        .unwrap();
    }
    // Numeric sums: the same whatever order the stores give the rows in.
    let checksum = "SELECT count(*), sum(value::numeric)::text, sum(extract(epoch FROM ts))::text
                    FROM readings";
    let expected = pg.query_one(checksum, &[]).await.unwrap();
    let sums = |row: &tokio_postgres::Row| {
        (
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        )
    };
    let mut env = res.hub_env();
    env.push(("SENSORHUB_COMPACT_AFTER", "7d".into()));
    let mut outcomes = Vec::new();
    for delay in [0u64, 300, 800, 1_500, 2_500, 4_000] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
            .arg("compact")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed once it packs, and later.
        wait_for("the compaction to run", Duration::from_secs(30), || async {
            let running = pg
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND (query LIKE '%packing%' OR query LIKE '%readings_compact%')
                       AND state <> 'idle'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            (running > 0).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
        // The server ends the transaction of the dead client.
        wait_for("the backend to end", Duration::from_secs(60), || async {
            let left = pg
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND state <> 'idle'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            (left == 0).then_some(())
        })
        .await;
        let mut states = Vec::new();
        for d in 0..2 {
            let lower = day + TimeDelta::days(d);
            let hot: i64 = pg
                .query_one(&format!("SELECT count(*) FROM \"readings_k{d}\""), &[])
                .await
                .unwrap()
                .get(0);
            let packed: i64 = pg
                .query_one(
                    "SELECT coalesce(sum(count), 0)::int8 FROM readings_compact WHERE day = $1",
                    &[&lower],
                )
                .await
                .unwrap()
                .get(0);
            assert!(
                (hot, packed) == (500_000, 0) || (hot, packed) == (0, 500_000),
                "partition {d} after a kill at +{delay} ms: {hot} hot, {packed} compacted"
            );
            states.push(hot == 0);
        }
        outcomes.push(states);
        assert_eq!(
            sums(&pg.query_one(checksum, &[]).await.unwrap()),
            sums(&expected)
        );
        if outcomes.last().is_some_and(|s| s.iter().all(|c| *c)) {
            break; // all compacted: nothing left to kill
        }
        // Start over with both partitions whole, to be killed later next time.
        pg.batch_execute(
            "INSERT INTO readings_hot SELECT c.sensor_id, u.ts, u.value, u.origin
             FROM readings_compact c, sensorhub_unpack(c.day, c.ts, c.ms, c.value, c.origin) u;
             TRUNCATE readings_compact;",
        )
        .await
        .unwrap();
    }
    eprintln!("compacted partitions after each kill: {outcomes:?}");
    let mut client = pg_client(&res.database_url).await;
    run_once(&mut client, WEEK, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pg.query_one("SELECT count(*) FROM readings_hot", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    assert_eq!(
        sums(&pg.query_one(checksum, &[]).await.unwrap()),
        sums(&expected)
    );
}
