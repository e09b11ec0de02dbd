//! The aggregate resolutions every instance keeps, agreed at start, and the windows of a newly
//! added resolution computed from the raw readings.
//!
//! - **Agreed.** The deployment's set is kept in the `deployment` table. An instance whose
//!   `SENSORHUB_RESOLUTIONS` differs from it refuses to start while another instance is connected
//!   to the database (instances with different sets would keep windows that disagree with the raw
//!   data, each missing the other's readings). With no other instance connected, its set becomes
//!   the deployment's, and each resolution it adds is marked for backfill.
//! - **Backfilled, exactly.** A resolution's windows before it was added are computed from the
//!   raw readings, from the oldest stored reading on, one span at a time (an hour, or one window
//!   of a longer resolution) in one transaction each: it locks `aggregates` against writes (the
//!   batch transactions wait, reads go on), replaces the span's windows by a `GROUP BY` over the
//!   readings stored so far, and records how far it got. A batch that committed before the lock
//!   is in the `GROUP BY`; one that commits after adds its readings to the recomputed windows as
//!   always: every window ends equal to the raw data. One instance backfills at a time (an
//!   advisory lock); after a crash the next start goes on from the span recorded.

use crate::domain::Resolution;
use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use deadpool_postgres::Pool;
use std::time::Duration;

/// The deployment's resolutions, as `deployment.value`.
const RESOLUTIONS: &str = "resolutions";
/// A resolution being backfilled: `backfill:<resolution>`, its value the end of the spans done
/// (RFC 3339), or empty before the first.
const BACKFILL: &str = "backfill:";
/// Serializes backfills across instances.
const BACKFILL_LOCK: i64 = 7_358_203_916;
/// How long a backfill waits before trying again after an error.
const RETRY: Duration = Duration::from_secs(5);

/// The set as stored: labels joined by commas, in the configured order.
fn label(resolutions: &[Resolution]) -> String {
    resolutions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Agrees on the resolution set (see the module docs): `Ok` once this instance's set is the
/// deployment's. `application_name` is this instance's own, so that its connections are not
/// counted as another instance's.
pub async fn agree(
    pool: &Pool,
    resolutions: &[Resolution],
    application_name: &str,
) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    let tx = client.transaction().await?;
    // One instance at a time decides; the lock ends with the transaction.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BACKFILL_LOCK])
        .await?;
    let ours = label(resolutions);
    let stored: Option<String> = tx
        .query_opt(
            "SELECT value FROM deployment WHERE name = $1",
            &[&RESOLUTIONS],
        )
        .await?
        .map(|row| row.get(0));
    let Some(stored) = stored else {
        tx.execute(
            "INSERT INTO deployment (name, value) VALUES ($1, $2)",
            &[&RESOLUTIONS, &ours],
        )
        .await?;
        // A deployment from before the set was recorded may hold windows of other
        // resolutions: the configured ones are taken as they are.
        tx.commit().await?;
        return Ok(());
    };
    if stored == ours {
        tx.commit().await?;
        return Ok(());
    }
    let others: Vec<String> = tx
        .query(
            "SELECT DISTINCT application_name FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'sensorhub%'
               AND application_name <> $1",
            &[&application_name],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !others.is_empty() {
        anyhow::bail!(
            "SENSORHUB_RESOLUTIONS={ours} differs from the deployment's {stored}, which {} running \
             instance(s) keep ({}); instances with different sets would keep windows that \
             disagree with the raw readings. Stop every instance, then start them with the new \
             set: resolutions added are backfilled from the raw readings",
            others.len(),
            others.join(", ")
        );
    }
    let had: Vec<&str> = stored.split(',').collect();
    for added in resolutions
        .iter()
        .filter(|r| !had.contains(&r.to_string().as_str()))
    {
        tx.execute(
            "INSERT INTO deployment (name, value) VALUES ($1, '')
             ON CONFLICT (name) DO UPDATE SET value = ''",
            &[&format!("{BACKFILL}{added}")],
        )
        .await?;
        tracing::info!(resolution = %added, "resolution added: its windows will be backfilled from the raw readings");
    }
    // A resolution removed stops being backfilled; its windows stay until retention.
    for kept in had {
        if !resolutions.iter().any(|r| r.to_string() == kept) {
            tx.execute(
                "DELETE FROM deployment WHERE name = $1",
                &[&format!("{BACKFILL}{kept}")],
            )
            .await?;
        }
    }
    tx.execute(
        "UPDATE deployment SET value = $2 WHERE name = $1",
        &[&RESOLUTIONS, &ours],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Backfills every resolution marked for it, in the background, until each is done; returns
/// when there is nothing left (or another instance holds the backfill).
pub async fn run(pool: Pool, resolutions: Vec<Resolution>, max_future_skew: Duration) {
    loop {
        match backfill_pending(&pool, &resolutions, max_future_skew).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "backfilling a resolution failed, retrying"
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn backfill_pending(
    pool: &Pool,
    resolutions: &[Resolution],
    max_future_skew: Duration,
) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&BACKFILL_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(());
    }
    let result = async {
        for resolution in resolutions {
            let name = format!("{BACKFILL}{resolution}");
            let Some(row) = client
                .query_opt("SELECT value FROM deployment WHERE name = $1", &[&name])
                .await?
            else {
                continue;
            };
            let done: String = row.get(0);
            let from = match DateTime::parse_from_rfc3339(&done) {
                Ok(done) => Some(done.with_timezone(&Utc)),
                Err(_) => None,
            };
            backfill(&mut client, *resolution, &name, from, max_future_skew).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&BACKFILL_LOCK])
        .await;
    result
}

/// The span one transaction recomputes: an hour, or one window of a longer resolution (a
/// multiple of the resolution, so no window straddles two spans).
fn span_of(resolution: Resolution) -> i64 {
    let width = i64::from(resolution.seconds());
    if width >= 3600 {
        width
    } else {
        width * (3600 / width)
    }
}

/// Recomputes `resolution`'s windows span by span, from `from` (or the oldest reading) through
/// the newest reading, skipping spans without readings.
async fn backfill(
    client: &mut deadpool_postgres::Client,
    resolution: Resolution,
    name: &str,
    from: Option<DateTime<Utc>>,
    max_future_skew: Duration,
) -> anyhow::Result<()> {
    let span = span_of(resolution);
    let start = match from {
        Some(from) => from.timestamp(),
        None => {
            let oldest: Option<DateTime<Utc>> = client
                .query_one(
                    "SELECT least((SELECT min(ts) FROM readings_hot),
                                  (SELECT min(first_ts) FROM readings_compact))",
                    &[],
                )
                .await?
                .get(0);
            match oldest {
                Some(oldest) => oldest.timestamp().div_euclid(span) * span,
                None => Utc::now().timestamp().div_euclid(span) * span,
            }
        }
    };
    tracing::info!(%resolution, from = %at(start), "backfilling windows from the raw readings");
    let mut spans = 0u64;
    let mut begin = start;
    loop {
        let end = begin + span;
        recompute(client, resolution, name, begin, end).await?;
        spans += 1;
        // On to the span of the next stored reading: spans without readings hold no windows.
        let next: Option<DateTime<Utc>> = client.query_one(NEXT_READING, &[&at(end)]).await?.get(0);
        let horizon = Utc::now() + TimeDelta::from_std(max_future_skew).unwrap_or_default();
        match next {
            Some(next) if next <= horizon => begin = next.timestamp().div_euclid(span) * span,
            _ => break,
        }
    }
    client
        .execute("DELETE FROM deployment WHERE name = $1", &[&name])
        .await?;
    tracing::info!(%resolution, spans, "backfill done: every window equals the raw readings");
    Ok(())
}

/// The time of the next stored reading at or after `$1`, or of the compacted day holding it (at
/// most a day early: the span found is then recomputed without finding a reading, which is
/// harmless), so that spans without readings are skipped without unpacking compacted days.
const NEXT_READING: &str = "
SELECT least((SELECT min(ts) FROM readings_hot WHERE ts >= $1),
             (SELECT greatest(min(day), $1) FROM readings_compact
              WHERE day > $1 - interval '24 hours' AND last_ts >= $1))";

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_default()
}

/// One span's windows of `resolution`, replaced by a `GROUP BY` over the readings, in one
/// transaction that holds writes to `aggregates` back meanwhile.
async fn recompute(
    client: &mut deadpool_postgres::Client,
    resolution: Resolution,
    name: &str,
    begin: i64,
    end: i64,
) -> anyhow::Result<()> {
    let label = resolution.to_string();
    let width = i64::from(resolution.seconds());
    let (begin, end) = (at(begin), at(end));
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE aggregates IN EXCLUSIVE MODE")
        .await?;
    tx.execute(
        "DELETE FROM aggregates WHERE resolution = $1 AND bucket >= $2 AND bucket < $3",
        &[&label, &begin, &end],
    )
    .await?;
    tx.execute(
        // A step is from the sensor's previous reading wherever it lies: for the first reading
        // of the span, the latest one before it (looked up for that reading alone).
        "INSERT INTO aggregates
             (sensor_id, resolution, bucket, count, sum, min, max, first_ts, first_value,
              last_ts, last_value, increase)
         SELECT sensor_id, $1, to_timestamp(floor(extract(epoch FROM ts) / $4::int8) * $4::int8),
                count(*), sum(value), min(value), max(value),
                (array_agg(ts ORDER BY ts))[1], (array_agg(value ORDER BY ts))[1],
                (array_agg(ts ORDER BY ts DESC))[1], (array_agg(value ORDER BY ts DESC))[1],
                sum(sensorhub_step(previous, value))
         FROM (SELECT sensor_id, ts, value,
                      coalesce(lag(value) OVER (PARTITION BY sensor_id ORDER BY ts),
                               CASE WHEN row_number() OVER (PARTITION BY sensor_id ORDER BY ts) = 1
                                    THEN (SELECT p.value FROM sensorhub_before(r.sensor_id, $2) p)
                               END) AS previous
               FROM sensorhub_range($2, $3) r) spanned
         GROUP BY sensor_id, 3",
        &[&label, &begin, &end, &width],
    )
    .await?;
    tx.execute(
        "UPDATE deployment SET value = $2 WHERE name = $1",
        &[&name, &end.to_rfc3339()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_hold_whole_windows() {
        for (resolution, span) in [("1m", 3600), ("1h", 3600), ("7m", 3360), ("1d", 86400)] {
            let resolution: Resolution = resolution.parse().unwrap();
            assert_eq!(span_of(resolution), span, "{resolution}");
            assert_eq!(span % i64::from(resolution.seconds()), 0);
        }
    }
}
