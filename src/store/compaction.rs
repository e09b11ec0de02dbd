//! Compaction (`SENSORHUB_COMPACT_AFTER`): a partition of `readings_hot` whose whole range is
//! older than the setting is rewritten into `readings_compact`, one row per sensor and UTC day
//! holding the day's timestamps and values as arrays TOAST compresses
//! (`sql/V12__compaction.sql`). The `readings` view shows both stores, so SQL, the read API and
//! export answer as before.
//!
//! One transaction per partition: it locks the partition against writers (readers go on), packs
//! its rows with the compacted rows of the same sensors and days (a partition narrower than a
//! day, or late readings stored after an earlier compaction, merge into their day's row), and
//! empties the partition. A crash at any point leaves the partition as it was or compacted, never
//! both. The partition itself is kept, empty: a late reading of its range is stored there beside
//! the compacted rows, and the next run packs it in. One instance at a time (an advisory lock;
//! the others skip).

use crate::store::StoreError;
use crate::store::partition;
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// Held by the instance compacting; the others skip their run.
const COMPACT_LOCK: i64 = 7_358_203_918;

/// How long a compaction waits for a lock (writers of the partition, readers at the end) before
/// it gives up this run, so that it never queues readers and writers behind it for long.
const LOCK_TIMEOUT: &str = "10s";

/// How long emptying the partition waits for its readers before it deletes instead: past the
/// server's usual `deadlock_timeout` (1 s), so that a writer waiting on this one shows as a
/// deadlock first.
const TRUNCATE_WAIT: &str = "2s";

/// Packs the rows of the partition named in the statement with the compacted rows of the same
/// sensors and days (`$1`, `$2`: the partition's bounds) and returns the partition's readings and
/// the compacted rows written.
const PACK: &str = "
WITH moved AS (
    SELECT r.sensor_id, r.ts, r.value, r.origin, 1 AS fresh FROM ONLY {partition} r
    UNION ALL
    SELECT c.sensor_id, u.ts, u.value, u.origin, 0
    FROM readings_compact c
    CROSS JOIN LATERAL unnest(c.ts, c.value, c.origin) AS u(ts, value, origin)
    WHERE c.day > coalesce($1::timestamptz, '-infinity') - interval '24 hours'
      AND c.day < coalesce($2::timestamptz, 'infinity')
      AND c.sensor_id IN (SELECT DISTINCT sensor_id FROM ONLY {partition})
), packed AS (
    SELECT sensor_id, date_trunc('day', ts, 'UTC') AS day, sum(fresh) AS fresh,
           array_agg(ts ORDER BY ts) AS ts, array_agg(value ORDER BY ts) AS value,
           CASE WHEN count(origin) > 0 THEN array_agg(origin ORDER BY ts) END AS origin
    FROM moved
    GROUP BY 1, 2
), written AS (
    INSERT INTO readings_compact AS c
        (sensor_id, day, count, first_ts, first_value, last_ts, last_value, ts, value, origin)
    SELECT sensor_id, day, cardinality(ts), ts[1], value[1], ts[cardinality(ts)],
           value[cardinality(ts)], ts, value, origin
    FROM packed
    ORDER BY sensor_id, day
    ON CONFLICT (sensor_id, day) DO UPDATE SET
        count = excluded.count, first_ts = excluded.first_ts, first_value = excluded.first_value,
        last_ts = excluded.last_ts, last_value = excluded.last_value, ts = excluded.ts,
        value = excluded.value, origin = excluded.origin
    RETURNING 1
)
SELECT (SELECT coalesce(sum(fresh), 0) FROM packed)::int8, (SELECT count(*) FROM written)";

/// One partition compacted.
#[derive(Clone, Debug, PartialEq)]
pub struct Compacted {
    pub partition: String,
    /// Readings moved out of the partition.
    pub readings: u64,
    /// Compacted rows written (one per sensor and day).
    pub rows: u64,
    pub took: Duration,
}

/// Compacts, oldest first, every partition whose range ended before `now - after` and that holds
/// rows. `None` when another instance is compacting.
pub async fn run_once(
    client: &mut tokio_postgres::Client,
    after: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Vec<Compacted>>, StoreError> {
    let cutoff = now - TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX);
    let mut closed: Vec<partition::Range> = partition::load(&*client)
        .await?
        .into_iter()
        .filter(|range| range.upper.is_some_and(|upper| upper <= cutoff))
        .collect();
    closed.sort_by_key(|range| range.lower);
    let mut done = Vec::new();
    for range in closed {
        match compact(client, &range).await? {
            Step::Busy => return Ok(None),
            Step::Empty => {}
            Step::Done(compacted) => {
                tracing::info!(
                    partition = %compacted.partition,
                    readings = compacted.readings,
                    rows = compacted.rows,
                    seconds = compacted.took.as_secs_f64(),
                    "compacted a partition of readings"
                );
                done.push(compacted);
            }
        }
    }
    Ok(Some(done))
}

enum Step {
    Busy,
    Empty,
    Done(Compacted),
}

/// Compacts one partition in one transaction.
async fn compact(
    client: &mut tokio_postgres::Client,
    range: &partition::Range,
) -> Result<Step, StoreError> {
    let started = std::time::Instant::now();
    let name = quoted(&range.name);
    let tx = client.transaction().await?;
    let held: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&COMPACT_LOCK])
        .await?
        .get(0);
    if !held {
        return Ok(Step::Busy);
    }
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; LOCK TABLE ONLY {name} IN EXCLUSIVE MODE"
    ))
    .await?;
    let any: bool = tx
        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM ONLY {name})"), &[])
        .await?
        .get(0);
    if !any {
        return Ok(Step::Empty);
    }
    let row = tx
        .query_one(
            &PACK.replace("{partition}", &name),
            &[&range.lower, &range.upper],
        )
        .await?;
    empty(&tx, &name).await?;
    tx.commit().await?;
    Ok(Step::Done(Compacted {
        partition: range.name.clone(),
        readings: row.get::<_, i64>(0) as u64,
        rows: row.get::<_, i64>(1) as u64,
        took: started.elapsed(),
    }))
}

/// Empties the partition packed: by `TRUNCATE`, which gives its disk back at once, when the
/// partition's readers let it have the lock soon; otherwise by `DELETE` (the space goes back to
/// free space, for vacuum). A writer with a late reading for the partition holds it for reading
/// and waits for this transaction to write it: `TRUNCATE` would wait for that writer forever, so
/// the lock is only tried for a moment, and a deadlock is taken as the same answer.
async fn empty(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    tx.batch_execute(&format!(
        "SAVEPOINT truncating; SET LOCAL lock_timeout = '{TRUNCATE_WAIT}'"
    ))
    .await?;
    match tx
        .batch_execute(&format!("LOCK TABLE ONLY {name} IN ACCESS EXCLUSIVE MODE"))
        .await
    {
        Ok(()) => tx.batch_execute(&format!("TRUNCATE ONLY {name}")).await?,
        Err(error)
            if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                || error.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
        {
            tracing::info!(partition = %name, "partition in use: its compacted rows are deleted instead of truncated");
            tx.batch_execute(&format!(
                "ROLLBACK TO SAVEPOINT truncating; DELETE FROM ONLY {name}"
            ))
            .await?;
        }
        Err(error) => return Err(error.into()),
    }
    Ok(())
}

/// A partition's name as an identifier: names come from the catalog.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
