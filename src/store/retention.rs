//! Retention: raw readings older than `SENSORHUB_RETENTION_RAW` go by whole partitions (a
//! partition is dropped once all of it is older), aggregates of a resolution older than its
//! `SENSORHUB_RETENTION_AGGREGATES` entry by batched deletes. One instance at a time (an
//! advisory lock; the others skip the run), logged and counted.
//!
//! Exactly-once at the horizon: once raw rows are gone, a redelivered or late reading of their
//! period could not be recognised as a duplicate and would count twice in a kept aggregate. So
//! the run that drops partitions moves the retention horizon (a row in PostgreSQL) to their end,
//! under the lock that partition creation takes: no partition is made before the horizon again,
//! and the writer refuses (dead-letters) a reading older than it. Validation refuses them
//! earlier still, as `SENSORHUB_MAX_AGE` is at most the shortest retention (checked at start).

pub use crate::config::Retention;
use crate::store::StoreError;
use crate::store::partition::{self, CREATE_LOCK};
use chrono::{DateTime, TimeDelta, Utc};

/// Held by the instance running retention; the others skip their run.
const RETENTION_LOCK: i64 = 7_358_203_917;

/// Aggregate rows deleted per statement: short statements, so the writer never waits long.
const DELETE_BATCH: i64 = 10_000;

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Partitions of `readings` dropped.
    pub dropped: Vec<String>,
    /// The horizon after the run: raw readings before it are gone.
    pub horizon: Option<DateTime<Utc>>,
    /// Aggregate rows deleted, by resolution.
    pub aggregates_deleted: Vec<(String, u64)>,
    /// Compacted rows (a sensor's day) deleted or cut at the horizon with the partitions.
    pub compacted_rows_deleted: u64,
}

/// Applies `retention` as of `now`. `None` when another instance is running it.
pub async fn run_once(
    client: &mut tokio_postgres::Client,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Result<Option<Report>, StoreError> {
    let mut report = Report::default();
    let tx = client.transaction().await?;
    let held: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
        .await?
        .get(0);
    if !held {
        return Ok(None);
    }
    if let Some(keep) = retention.raw {
        let cutoff = now - TimeDelta::from_std(keep).unwrap_or(TimeDelta::MAX);
        // Partition creation waits while partitions are dropped and the horizon moves.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
            .await?;
        let expired: Vec<partition::Range> = partition::load(&tx)
            .await?
            .into_iter()
            .filter(|range| range.upper.is_some_and(|upper| upper <= cutoff))
            .collect();
        if let Some(horizon) = expired.iter().filter_map(|r| r.upper).max() {
            tx.execute(
                "UPDATE retention_horizon SET horizon = greatest(horizon, $1)",
                &[&horizon],
            )
            .await?;
            for range in &expired {
                tx.batch_execute(&format!("DROP TABLE \"{}\"", range.name))
                    .await?;
                report.dropped.push(range.name.clone());
            }
            report.compacted_rows_deleted = drop_compacted(&tx, horizon).await?;
        }
        report.horizon = Some(partition::load_horizon(&tx).await?);
    }
    tx.commit().await?;
    for (resolution, keep) in &retention.aggregates {
        // A window is deleted once all of it is older than the retention, with a window of room
        // for a reading validated just before the run.
        let width = TimeDelta::seconds(i64::from(resolution.seconds()));
        let cutoff = now - TimeDelta::from_std(*keep).unwrap_or(TimeDelta::MAX) - width * 2;
        let label = resolution.to_string();
        let mut deleted = 0u64;
        loop {
            let n = client
                .execute(
                    "DELETE FROM aggregates WHERE ctid = ANY(ARRAY(
                         SELECT ctid FROM aggregates
                         WHERE resolution = $1 AND bucket < $2 LIMIT $3))",
                    &[&label, &cutoff, &DELETE_BATCH],
                )
                .await?;
            deleted += n;
            if n < DELETE_BATCH as u64 {
                break;
            }
        }
        report.aggregates_deleted.push((label, deleted));
    }
    Ok(Some(report))
}

/// The compacted days before `horizon` go with the partitions: wholly before it, the row; cut by
/// it (a partition narrower than a day), the points before it.
async fn drop_compacted(
    tx: &tokio_postgres::Transaction<'_>,
    horizon: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let whole = tx
        .execute(
            "DELETE FROM readings_compact WHERE day < $1 AND last_ts < $1",
            &[&horizon],
        )
        .await?;
    let cut = tx
        .execute(
            "WITH kept AS (
                 SELECT c.sensor_id, c.day, array_agg(u.ts ORDER BY u.ts) AS ts,
                        array_agg(u.value ORDER BY u.ts) AS value,
                        CASE WHEN count(u.origin) > 0 THEN array_agg(u.origin ORDER BY u.ts) END AS origin
                 FROM readings_compact c
                 CROSS JOIN LATERAL sensorhub_unpack(c.day, c.ts, c.ms, c.value, c.origin) u
                 WHERE c.day > $1::timestamptz - interval '24 hours' AND c.day < $1
                   AND c.first_ts < $1 AND u.ts >= $1
                 GROUP BY 1, 2
             )
             UPDATE readings_compact c
             SET count = cardinality(k.ts), first_ts = k.ts[1], first_value = k.value[1],
                 last_ts = k.ts[cardinality(k.ts)], last_value = k.value[cardinality(k.ts)],
                 ts = k.ts, ms = NULL, value = k.value, origin = k.origin
             FROM kept k
             WHERE c.sensor_id = k.sensor_id AND c.day = k.day",
            &[&horizon],
        )
        .await?;
    Ok(whole + cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_shortest_retention_bounds_what_may_be_accepted() {
        let day = Duration::from_secs(86_400);
        let r = Retention {
            raw: Some(day * 90),
            aggregates: vec![("1m".parse().unwrap(), day * 400)],
        };
        assert_eq!(r.shortest(), Some(day * 90));
        assert!(Retention::default().is_forever());
        assert_eq!(Retention::default().shortest(), None);
    }
}
