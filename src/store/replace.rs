//! `keep_last`: a stored value replaced by one from a later stream position, in the batch's
//! transaction under its sensors' locks.
//!
//! Of a reading whose `(sensor_id, ts)` is stored, the stored reading's position (`origin`) is
//! read: a later position replaces the value (or, for the same value, only the position: a value
//! sent again must not lose to one sent in between); an earlier or equal one is a redelivery or
//! an older value, skipped. Once the batch is stored, the windows (every resolution) of the
//! replaced readings and of the readings after them (whose step changed) are moved from the old
//! values to the new ones by `sensorhub_replace` (migration V11): sum and `increase` by
//! differences, first and last by the new value, min and max by the new value unless an old one
//! was the extreme, when they are recomputed from that window's readings. A correction costs a few
//! index lookups, not a read of its windows.

use crate::domain::{Origin, Reading, Resolution};
use crate::store::StoreError;
use crate::store::encode::PgTimestamp;
use crate::store::sql;
use chrono::{DateTime, Utc};

/// What a batch's stored keys get under `keep_last`.
#[derive(Default)]
pub struct Replacing<'a> {
    /// Readings whose value replaces the stored one, in key order, with the value they replace.
    pub replaced: Vec<(&'a Reading, Origin, f64)>,
    /// Readings whose value is the stored one, from a later position: only the position moves.
    pub moved: Vec<(&'a Reading, Origin)>,
}

impl Replacing<'_> {
    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty() && self.moved.is_empty()
    }
}

/// Sorts the batch's readings stored already (position in the batch, reading, value stored) by
/// the stream position of the stored value.
pub async fn decide<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    stored: &[(usize, &'a Reading, f64)],
    origins: &[Origin],
) -> Result<Replacing<'a>, StoreError> {
    let mut replacing = Replacing::default();
    if stored.is_empty() {
        return Ok(replacing);
    }
    let ids: Vec<&str> = stored.iter().map(|(_, r, _)| &*r.sensor_id).collect();
    let times: Vec<PgTimestamp> = stored.iter().map(|(_, r, _)| r.ts.into()).collect();
    let query = tx.prepare_cached(sql::STORED_ORIGINS).await?;
    let rows = tx.query(&query, &[&ids, &times]).await?;
    let mut stored_origins: Vec<Option<Vec<u8>>> = vec![None; stored.len()];
    for row in rows {
        let position: i64 = row.get(0);
        if let Some(slot) = usize::try_from(position - 1)
            .ok()
            .and_then(|k| stored_origins.get_mut(k))
        {
            *slot = row.get(1);
        }
    }
    for (&(index, reading, value), stored_origin) in stored.iter().zip(stored_origins) {
        let Some(&origin) = origins.get(index) else {
            continue;
        };
        // A value stored without a position (under keep_first, or before positions were
        // kept) is older than every position.
        let later = stored_origin.is_none_or(|stored| origin[..] > stored[..]);
        if !later {
            continue;
        }
        if value == reading.value {
            replacing.moved.push((reading, origin));
        } else {
            replacing.replaced.push((reading, origin, value));
        }
    }
    Ok(replacing)
}

/// Writes the new values and positions, and the sensors' latest values where a replaced reading
/// is the newest.
pub async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    replacing: &Replacing<'_>,
) -> Result<(), StoreError> {
    if replacing.is_empty() {
        return Ok(());
    }
    let all = || {
        replacing
            .replaced
            .iter()
            .map(|(r, o, _)| (*r, o))
            .chain(replacing.moved.iter().map(|(r, o)| (*r, o)))
    };
    let ids: Vec<&str> = all().map(|(r, _)| &*r.sensor_id).collect();
    let times: Vec<PgTimestamp> = all().map(|(r, _)| r.ts.into()).collect();
    let values: Vec<f64> = all().map(|(r, _)| r.value).collect();
    let origins: Vec<&[u8]> = all().map(|(_, o)| &o[..]).collect();
    // A compacted day is taken apart first: its readings change in readings_hot.
    let days: Vec<PgTimestamp> = all().map(|(r, _)| utc_day(r.ts).into()).collect();
    let expand = tx.prepare_cached(sql::EXPAND).await?;
    tx.execute(&expand, &[&ids, &days]).await?;
    let update = tx.prepare_cached(sql::REPLACE_VALUES).await?;
    let updated = tx
        .execute(&update, &[&ids, &times, &values, &origins])
        .await?;
    if updated != ids.len() as u64 {
        // A compaction moved a day between the two statements: redone, the batch finds it.
        return Err(StoreError::Contended);
    }
    let n = replacing.replaced.len();
    if n > 0 {
        let latest = tx.prepare_cached(sql::REPLACE_LAST_VALUES).await?;
        tx.execute(&latest, &[&&ids[..n], &&times[..n], &&values[..n]])
            .await?;
    }
    Ok(())
}

/// Moves the windows the replaced values lie in, and those of the readings after them, from the
/// old values to the new ones; returns the windows updated.
pub async fn move_windows(
    tx: &deadpool_postgres::Transaction<'_>,
    replacing: &Replacing<'_>,
    resolutions: &[Resolution],
) -> Result<u64, StoreError> {
    if replacing.replaced.is_empty() {
        return Ok(0);
    }
    let labels: Vec<String> = resolutions.iter().map(ToString::to_string).collect();
    let ids: Vec<&str> = replacing
        .replaced
        .iter()
        .map(|(r, _, _)| &*r.sensor_id)
        .collect();
    let times: Vec<PgTimestamp> = replacing
        .replaced
        .iter()
        .map(|(r, _, _)| r.ts.into())
        .collect();
    let olds: Vec<f64> = replacing.replaced.iter().map(|&(_, _, old)| old).collect();
    let query = tx.prepare_cached(sql::REPLACE_IN_WINDOWS).await?;
    let row = tx
        .query_one(&query, &[&ids, &times, &olds, &labels])
        .await?;
    Ok(row.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64)
}

/// The UTC midnight starting the day of `ts`: the span of a compacted row.
pub(crate) fn utc_day(ts: DateTime<Utc>) -> DateTime<Utc> {
    let micros = ts.timestamp_micros();
    DateTime::from_timestamp_micros(micros - micros.rem_euclid(86_400_000_000)).unwrap_or(ts)
}
