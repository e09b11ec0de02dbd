//! Deleting readings, for the API and `sensorhub delete` alike: the deletion is recorded with
//! stream positions ([`crate::store::deletion`] does the rest) — the last entry of each sensor's
//! stream when it is made (what it covers: a re-read of an entry up to there is not stored again),
//! and the oldest entry the streams and their dead letters still hold (deletions from before that
//! are forgotten: nothing they covered can be read again).

use crate::domain::conflict::origin;
use crate::domain::shard::shard_of;
use crate::domain::{Origin, Resolution};
use crate::redis::entry::EntryId;
use crate::store::deletion::{Deleted, Deletion};
use crate::stream::shards::Streams;
use crate::telemetry::Metrics;
use chrono::{DateTime, Utc};
use redis::RedisResult;
use redis::aio::ConnectionLike;

/// What deleting the readings of `sensors` is recorded with: the last position of each one's
/// stream (same index), and the oldest position still held anywhere (`None`: nothing is).
pub async fn deletion_marks(
    conn: &mut impl ConnectionLike,
    streams: &Streams,
    sensors: &[&str],
) -> RedisResult<(Vec<Origin>, Option<Origin>)> {
    let mut last = Vec::with_capacity(streams.len());
    let mut oldest: Option<EntryId> = None;
    for stream in streams.all() {
        last.push(end(conn, stream, "XREVRANGE", "+", "-").await?);
        for key in [stream.clone(), format!("{stream}:dead")] {
            if let Some(first) = end(conn, &key, "XRANGE", "-", "+").await? {
                oldest = Some(oldest.map_or(first, |o| o.min(first)));
            }
        }
    }
    let through = sensors
        .iter()
        .map(|sensor| {
            let id = last[shard_of(sensor, streams.len())].unwrap_or(EntryId::ZERO);
            origin(id.ms, id.seq)
        })
        .collect();
    Ok((through, oldest.map(|id| origin(id.ms, id.seq))))
}

/// The id of the first entry of `key` in the direction `command` reads (`None`: empty or missing).
async fn end(
    conn: &mut impl ConnectionLike,
    key: &str,
    command: &str,
    start: &str,
    stop: &str,
) -> RedisResult<Option<EntryId>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd(command)
        .arg(key)
        .arg(start)
        .arg(stop)
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply
        .ids
        .first()
        .and_then(|entry| EntryId::parse_ascii(entry.id.as_bytes())))
}

/// Why a deletion was not made.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("reading the stream positions from Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("deleting in PostgreSQL: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("connecting to PostgreSQL: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Deletes the readings of `sensors` in `[from, to)` (`None`: unbounded), in one transaction;
/// logs and counts what it removed.
pub async fn delete(
    conn: &mut impl ConnectionLike,
    pool: &deadpool_postgres::Pool,
    streams: &Streams,
    resolutions: &[Resolution],
    metrics: Option<&Metrics>,
    sensors: &[&str],
    range: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
) -> Result<Vec<Deleted>, DeleteError> {
    let (through, oldest) = deletion_marks(conn, streams, sensors).await?;
    let deletions: Vec<Deletion> = sensors
        .iter()
        .zip(through)
        .map(|(sensor, through)| Deletion {
            sensor_id: (*sensor).to_owned(),
            from: range.0,
            to: range.1,
            through,
        })
        .collect();
    let mut client = pool.get().await?;
    let done = crate::store::deletion::delete(&mut client, &deletions, resolutions, oldest).await?;
    for deleted in &done {
        tracing::info!(
            sensor = %deleted.sensor_id,
            from = ?range.0.map(|t| t.to_rfc3339()),
            to = ?range.1.map(|t| t.to_rfc3339()),
            readings = deleted.readings,
            sensor_removed = deleted.emptied,
            "readings deleted"
        );
        if let Some(metrics) = metrics {
            metrics.readings_deleted.inc_by(deleted.readings);
        }
    }
    Ok(done)
}
