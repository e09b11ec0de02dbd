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
use crate::store::replace::utc_day;
use chrono::{DateTime, TimeDelta, Utc};
use std::collections::HashSet;
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

/// Rows of the partition read per round trip while packing.
const FETCH: &str = "FETCH 50000 FROM packing";

/// One compacted day written, or merged over the one stored (whose readings were read and merged
/// in first).
const UPSERT_DAY: &str = "
INSERT INTO readings_compact
    (sensor_id, day, count, first_ts, first_value, last_ts, last_value, ms, ts, value, origin)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (sensor_id, day) DO UPDATE SET
    count = excluded.count, first_ts = excluded.first_ts, first_value = excluded.first_value,
    last_ts = excluded.last_ts, last_value = excluded.last_value, ms = excluded.ms,
    ts = excluded.ts, value = excluded.value, origin = excluded.origin";

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
    let (readings, rows) = pack(&tx, &name, range).await?;
    empty(&tx, &name).await?;
    tx.commit().await?;
    Ok(Step::Done(Compacted {
        partition: range.name.clone(),
        readings,
        rows,
        took: started.elapsed(),
    }))
}

/// One sensor's day being packed: its readings in time order.
struct Day {
    sensor_id: String,
    day: DateTime<Utc>,
    ts: Vec<DateTime<Utc>>,
    value: Vec<f64>,
    origin: Vec<Option<Vec<u8>>>,
}

impl Day {
    fn new(sensor_id: &str, day: DateTime<Utc>) -> Self {
        Self {
            sensor_id: sensor_id.to_owned(),
            day,
            ts: Vec::new(),
            value: Vec::new(),
            origin: Vec::new(),
        }
    }

    /// Merges in the readings of the same day stored compacted already: no key is in both.
    fn merge(
        &mut self,
        ts: Vec<DateTime<Utc>>,
        value: Vec<f64>,
        origin: Option<Vec<Option<Vec<u8>>>>,
    ) {
        let n = ts.len();
        let origin = origin.unwrap_or_else(|| vec![None; n]);
        let mut merged: Vec<(DateTime<Utc>, f64, Option<Vec<u8>>)> = ts
            .into_iter()
            .zip(value)
            .zip(origin)
            .map(|((t, v), o)| (t, v, o))
            .chain(
                std::mem::take(&mut self.ts)
                    .into_iter()
                    .zip(std::mem::take(&mut self.value))
                    .zip(std::mem::take(&mut self.origin))
                    .map(|((t, v), o)| (t, v, o)),
            )
            .collect();
        merged.sort_by_key(|(t, _, _)| *t);
        for (t, v, o) in merged {
            self.ts.push(t);
            self.value.push(v);
            self.origin.push(o);
        }
    }
}

/// Reads the partition's rows in key order (a cursor: a day partition of a large site does not fit
/// in memory) and writes a compacted row per sensor and day, merged with the one stored for the
/// same day. Returns the readings read and the rows written. Built here rather than by
/// `array_agg(... ORDER BY ts)` in SQL: the rows come sorted once from the key's index, where the
/// SQL sorts every array again.
async fn pack(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    range: &partition::Range,
) -> Result<(u64, u64), StoreError> {
    let stored: HashSet<(String, DateTime<Utc>)> = tx
        .query(
            "SELECT sensor_id, day FROM readings_compact
             WHERE day > coalesce($1::timestamptz, '-infinity') - interval '24 hours'
               AND day < coalesce($2::timestamptz, 'infinity')",
            &[&range.lower, &range.upper],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    tx.batch_execute(&format!(
        "DECLARE packing NO SCROLL CURSOR FOR
         SELECT sensor_id, ts, value, origin FROM ONLY {name} ORDER BY sensor_id, ts"
    ))
    .await?;
    let upsert = tx.prepare(UPSERT_DAY).await?;
    let (mut readings, mut rows) = (0u64, 0u64);
    let mut current: Option<Day> = None;
    let mut fetched = tx.query(FETCH, &[]).await?;
    while !fetched.is_empty() {
        readings += fetched.len() as u64;
        // The next rows are asked for before these are packed: the server reads them meanwhile.
        let next = async { tx.query(FETCH, &[]).await.map_err(StoreError::from) };
        let pack_these = async {
            for row in &fetched {
                let sensor_id: &str = row.get(0);
                let ts: DateTime<Utc> = row.get(1);
                let day = utc_day(ts);
                let another = current
                    .as_ref()
                    .is_none_or(|d| d.day != day || d.sensor_id != sensor_id);
                if another && let Some(done) = current.replace(Day::new(sensor_id, day)) {
                    rows += write_day(tx, &upsert, &stored, done).await?;
                }
                if let Some(d) = current.as_mut() {
                    d.ts.push(ts);
                    d.value.push(row.get(2));
                    d.origin.push(row.get(3));
                }
            }
            Ok::<_, StoreError>(())
        };
        let (next, ()) = futures_util::try_join!(next, pack_these)?;
        fetched = next;
    }
    if let Some(done) = current {
        rows += write_day(tx, &upsert, &stored, done).await?;
    }
    tx.batch_execute("CLOSE packing").await?;
    Ok((readings, rows))
}

async fn write_day(
    tx: &tokio_postgres::Transaction<'_>,
    upsert: &tokio_postgres::Statement,
    stored: &HashSet<(String, DateTime<Utc>)>,
    mut day: Day,
) -> Result<u64, StoreError> {
    if stored.contains(&(day.sensor_id.clone(), day.day)) {
        // Gone meanwhile when a writer took the day apart into another partition of the same day
        // (hour partitions): its readings are stored there, and packed when that one is.
        let row = tx
            .query_opt(
                "SELECT ARRAY(SELECT u.ts FROM sensorhub_unpack(day, ts, ms, value, NULL) u),
                        value, origin
                 FROM readings_compact WHERE sensor_id = $1 AND day = $2",
                &[&day.sensor_id, &day.day],
            )
            .await?;
        if let Some(row) = row {
            day.merge(row.get(0), row.get(1), row.get(2));
        }
    }
    let (Some(first), Some(last)) = (day.ts.first(), day.ts.last()) else {
        return Ok(0);
    };
    let count = i32::try_from(day.ts.len()).unwrap_or(i32::MAX);
    let origin: Option<Vec<Option<&[u8]>>> = day
        .origin
        .iter()
        .any(Option::is_some)
        .then(|| day.origin.iter().map(|o| o.as_deref()).collect());
    // Whole milliseconds after the day's start (as nearly every device sends) fit an integer.
    let ms: Option<Vec<i32>> = day
        .ts
        .iter()
        .map(|ts| {
            let micros = (*ts - day.day).num_microseconds()?;
            (micros % 1000 == 0).then(|| i32::try_from(micros / 1000).ok())?
        })
        .collect();
    let ts = ms.is_none().then_some(&day.ts);
    tx.execute(
        upsert,
        &[
            &day.sensor_id,
            &day.day,
            &count,
            first,
            &day.value[0],
            last,
            &day.value[day.value.len() - 1],
            &ms,
            &ts,
            &day.value,
            &origin,
        ],
    )
    .await?;
    Ok(1)
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
