//! Deleting readings, and remembering what a deletion covered.
//!
//! A deletion removes a sensor's readings in `[from, to)` in one transaction that holds the
//! sensor's lock (the one every batch takes, so no batch of the sensor runs in between): the
//! windows wholly inside the range are removed, the windows it cuts and the window of the first
//! reading after it (whose step changed) are recomputed from the raw readings, and the sensor's
//! row follows its readings (removed when none is left). A kill at any moment leaves it done or
//! not started.
//!
//! The readings deleted are still in the stream until the ledger passes them and the trim removes
//! them, and a dead letter may be replayed: the deletion is recorded (`deletions`) with the last
//! stream position before it, and a batch leaves out every reading that one covers
//! ([`not_covered`]). A reading sent after the deletion comes from a later position and is stored.

use crate::domain::conflict::origin_text;
use crate::domain::{Origin, Reading, Resolution};
use crate::store::StoreError;
use crate::store::encode::PgTimestamp;
use crate::store::sql;
use chrono::{DateTime, TimeDelta, Utc};
use std::borrow::Cow;

/// One deletion: a sensor's readings in `[from, to)` (`None`: unbounded), and the last position
/// of its stream when it was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Deletion {
    pub sensor_id: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub through: Origin,
}

/// What a deletion did, per sensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Deleted {
    pub sensor_id: String,
    /// Readings removed.
    pub readings: u64,
    /// Whether the sensor has no reading left (its row is gone).
    pub emptied: bool,
}

/// What one recorded deletion covered: sensor, from, to (unbounded: `None`), last position.
type Cover<'r> = (
    &'r str,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    &'r [u8],
);

/// The readings of `sorted` (each with its position in the batch, whose stream position is at
/// that place of `origins`) that no deletion of their sensor (`ids`) covered. Runs under the
/// sensors' locks.
pub(super) async fn not_covered<'s, 'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[&str],
    sorted: &'s [(usize, &'a Reading)],
    origins: &[Origin],
) -> Result<Cow<'s, [(usize, &'a Reading)]>, StoreError> {
    let query = tx.prepare_cached(sql::DELETIONS_OF).await?;
    let rows = tx.query(&query, &[&ids]).await?;
    if rows.is_empty() {
        return Ok(Cow::Borrowed(sorted));
    }
    let covers: Vec<Cover> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    let kept = sorted
        .iter()
        .filter(|(index, reading)| {
            let origin = origins.get(*index).map_or(&[][..], |o| &o[..]);
            !covers.iter().any(|&(id, from, to, through)| {
                id == &*reading.sensor_id
                    && from.is_none_or(|from| from <= reading.ts)
                    && to.is_none_or(|to| reading.ts < to)
                    && origin <= through
            })
        })
        .copied()
        .collect();
    Ok(Cow::Owned(kept))
}

/// Deletes the readings `deletions` name, in one transaction: all or none. `resolutions`: the
/// configured ones, whose windows follow. Deletions recorded with a position before `oldest` (the
/// oldest entry the stream and its dead letters still hold) are forgotten: nothing from before
/// them can be read again.
pub async fn delete(
    client: &mut deadpool_postgres::Client,
    deletions: &[Deletion],
    resolutions: &[Resolution],
    oldest: Option<Origin>,
) -> Result<Vec<Deleted>, StoreError> {
    let labels: Vec<String> = resolutions.iter().map(ToString::to_string).collect();
    let mut sorted: Vec<&Deletion> = deletions.iter().collect();
    // The order every batch locks sensors in, so that the two queue instead of deadlocking.
    sorted.sort_by(|a, b| a.sensor_id.as_bytes().cmp(b.sensor_id.as_bytes()));
    let tx = client.transaction().await?;
    let ids: Vec<&str> = sorted.iter().map(|d| d.sensor_id.as_str()).collect();
    tx.query(
        "SELECT 1 FROM sensors WHERE sensor_id = ANY($1::text[])
         ORDER BY sensor_id COLLATE \"C\" FOR UPDATE",
        &[&ids],
    )
    .await?;
    let mut done = Vec::with_capacity(sorted.len());
    for deletion in sorted {
        done.push(delete_one(&tx, deletion, &labels).await?);
    }
    if let Some(oldest) = oldest {
        let forgotten = tx
            .execute("DELETE FROM deletions WHERE through < $1", &[&&oldest[..]])
            .await?;
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                before = %origin_text(&oldest),
                "deletions forgotten: the stream and its dead letters hold nothing from before them"
            );
        }
    }
    tx.commit().await?;
    Ok(done)
}

async fn delete_one(
    tx: &deadpool_postgres::Transaction<'_>,
    deletion: &Deletion,
    labels: &[String],
) -> Result<Deleted, StoreError> {
    let id = deletion.sensor_id.as_str();
    let from = deletion.from.map(PgTimestamp::from);
    let to = deletion.to.map(PgTimestamp::from);
    let readings = delete_readings(tx, id, from, to).await?;
    // Windows wholly inside the range go; the ones it cuts, and the one of the first reading
    // after it, are recomputed.
    tx.execute(
        "DELETE FROM aggregates a USING unnest($4::text[]) AS l(label)
         WHERE a.sensor_id = $1 AND a.resolution = l.label
           AND a.bucket >= coalesce($2::timestamptz, '-infinity')
           AND a.bucket + make_interval(secs => sensorhub_resolution_seconds(l.label))
               <= coalesce($3::timestamptz, 'infinity')",
        &[&id, &from, &to, &labels],
    )
    .await?;
    let instants: Vec<PgTimestamp> = deletion
        .from
        .into_iter()
        .chain(deletion.to.map(|to| to - TimeDelta::microseconds(1)))
        .map(PgTimestamp::from)
        .collect();
    if !instants.is_empty() {
        tx.query(sql::RECOMPUTE, &[&id, &instants, &labels]).await?;
    }
    let left = tx
        .execute(
            "UPDATE sensors s SET first_seen = f.ts, last_seen = l.ts, last_value = l.value
             FROM sensorhub_after($1, '-infinity') f, sensorhub_before($1, 'infinity') l
             WHERE s.sensor_id = $1",
            &[&id],
        )
        .await?;
    let emptied = left == 0;
    if emptied {
        tx.execute("DELETE FROM sensors WHERE sensor_id = $1", &[&id])
            .await?;
    }
    tx.execute(
        "INSERT INTO deletions (sensor_id, from_ts, to_ts, through, deleted)
         VALUES ($1, $2, $3, $4, $5)",
        &[&id, &from, &to, &&deletion.through[..], &(readings as i64)],
    )
    .await?;
    Ok(Deleted {
        sensor_id: deletion.sensor_id.clone(),
        readings,
        emptied,
    })
}

/// Deletes one sensor's readings in `[from, to)` from both stores: compacted days wholly inside
/// the range as rows, the (at most two) it cuts taken apart first, then the hot rows. Counted
/// again until nothing of the range is left, as a compaction running meanwhile may have moved
/// readings from one store to the other between two statements.
async fn delete_readings(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    from: Option<PgTimestamp>,
    to: Option<PgTimestamp>,
) -> Result<u64, StoreError> {
    const RANGE: &str =
        "coalesce($2::timestamptz, '-infinity'), coalesce($3::timestamptz, 'infinity')";
    let mut deleted = 0u64;
    for _ in 0..5 {
        let whole: i64 = tx
            .query_one(
                "WITH gone AS (
                     DELETE FROM readings_compact
                     WHERE sensor_id = $1 AND day >= coalesce($2::timestamptz, '-infinity')
                       AND day + interval '24 hours' <= coalesce($3::timestamptz, 'infinity')
                     RETURNING count)
                 SELECT coalesce(sum(count), 0)::int8 FROM gone",
                &[&id, &from, &to],
            )
            .await?
            .get(0);
        tx.execute(
            &format!(
                "SELECT sensorhub_expand(array_agg(sensor_id), array_agg(day))
                 FROM readings_compact c, (SELECT {RANGE}) AS r(lo, hi)
                 WHERE c.sensor_id = $1 AND c.day > r.lo - interval '24 hours' AND c.day < r.hi"
            ),
            &[&id, &from, &to],
        )
        .await?;
        let hot = tx
            .execute(
                "DELETE FROM readings_hot WHERE sensor_id = $1
                   AND ts >= coalesce($2::timestamptz, '-infinity')
                   AND ts < coalesce($3::timestamptz, 'infinity')",
                &[&id, &from, &to],
            )
            .await?;
        deleted += whole as u64 + hot;
        let left: bool = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM sensorhub_span($1, {RANGE}))"),
                &[&id, &from, &to],
            )
            .await?
            .get(0);
        if !left {
            return Ok(deleted);
        }
    }
    Err(StoreError::Contended)
}
