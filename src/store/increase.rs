//! The `increase` steps of a batch, worked out in its transaction (`domain::increase` has the
//! rules): the batch's sensors locked, their newest stored readings read, the readings at or before
//! those looked up, and the steps placed in the batch's partials — or, for stored readings whose
//! step a new one changed, in windows the batch does not otherwise touch.

use crate::domain::increase::{Around, Fate, Point, plan};
use crate::domain::{AggKey, Aggregate, FastState, Origin, Reading, Resolution, same_id};
use crate::store::StoreError;
use crate::store::deletion;
use crate::store::encode::{PgTimestamp, SensorRows};
use crate::store::replace::utc_day;
use crate::store::sql;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use tokio_postgres::types::ToSql;

/// A batch's readings sorted out, with their steps.
pub struct Steps<'a> {
    /// The readings to store, in key order, each with its step.
    pub new: Vec<(&'a Reading, f64)>,
    /// Their positions in the batch.
    pub new_at: Vec<usize>,
    /// Readings a deletion covered (re-read from the stream after it): not stored again.
    pub deleted: u64,
    /// Readings stored already: their position in the batch, and the value stored.
    pub stored: Vec<(usize, &'a Reading, f64)>,
    /// Stored readings whose step changes: sensor, time, change.
    pub changed: Vec<(&'a str, DateTime<Utc>, f64)>,
}

/// Locks the sensors of `sorted` (the batch in key order, with each reading's position in the
/// batch, whose stream position is at the same place of `origins`), leaves out the readings a
/// deletion covered, and works out the others' fates and steps. See `write_batch` for
/// `look_up_all`.
pub async fn work_out<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    sorted: &[(usize, &'a Reading)],
    origins: &[Origin],
    look_up_all: bool,
) -> Result<Steps<'a>, StoreError> {
    let groups = sensor_runs(sorted);
    let ids: Vec<&str> = groups
        .iter()
        .map(|g| &*sorted[g.start].1.sensor_id)
        .collect();
    let lock = tx.prepare_cached(sql::LOCK_SENSORS).await?;
    let rows = tx.query(&lock, &[&ids]).await?;
    // Read under the locks: a deletion holds its sensor's lock until its record is committed.
    let kept = deletion::not_covered(tx, &ids, sorted, origins).await?;
    let deleted = (sorted.len() - kept.len()) as u64;
    let sorted: &[(usize, &'a Reading)] = &kept;
    let groups = if deleted == 0 {
        groups
    } else {
        sensor_runs(sorted)
    };
    let latest: HashMap<&str, Point, FastState> = rows
        .iter()
        .map(|row| {
            let point = Point {
                ts: row.get(1),
                value: row.get(2),
            };
            (row.get::<_, &str>(0), point)
        })
        .collect();
    let unseen: Vec<&Range<usize>> = groups
        .iter()
        .filter(|g| !latest.contains_key(&*sorted[g.start].1.sensor_id))
        .collect();
    if let Some(rows) = SensorRows::of(
        unseen
            .iter()
            .flat_map(|g| sorted[(*g).clone()].iter().map(|(_, r)| *r)),
    ) {
        let create = tx.prepare_cached(sql::CREATE_SENSORS).await?;
        let created = tx.query(&create, &rows.params()).await?;
        if created.len() != rows.ids.len() {
            // Another transaction created one of them after the lock was taken: its readings
            // were not in what this one read. Redone, it finds the row and waits for its lock.
            return Err(StoreError::Contended);
        }
    }
    let wanted: Vec<usize> = groups
        .iter()
        .flat_map(|g| {
            let newest = latest.get(&*sorted[g.start].1.sensor_id).copied();
            g.clone().filter(move |&k| {
                look_up_all || newest.is_some_and(|newest| sorted[k].1.ts <= newest.ts)
            })
        })
        .collect();
    let arounds = neighbours(tx, sorted, &wanted).await?;
    let mut steps = Steps {
        new: Vec::with_capacity(sorted.len()),
        new_at: Vec::with_capacity(sorted.len()),
        deleted,
        stored: Vec::new(),
        changed: Vec::new(),
    };
    for group in groups {
        let run = &sorted[group.clone()];
        let id: &'a str = &run[0].1.sensor_id;
        let points: Vec<Point> = run
            .iter()
            .map(|(_, r)| Point {
                ts: r.ts,
                value: r.value,
            })
            .collect();
        let planned = plan(&points, latest.get(id).copied(), look_up_all, |i| {
            wanted
                .binary_search(&(group.start + i))
                .map_or_else(|_| Around::default(), |at| arounds[at])
        });
        for (&(index, reading), fate) in run.iter().zip(planned.fates) {
            match fate {
                Fate::New { step } => {
                    steps.new.push((reading, step));
                    steps.new_at.push(index);
                }
                Fate::Stored { value } => steps.stored.push((index, reading, value)),
            }
        }
        steps.changed.extend(
            planned
                .changed
                .into_iter()
                .map(|(ts, change)| (id, ts, change)),
        );
    }
    Ok(steps)
}

/// The ranges of `sorted` holding one sensor each.
fn sensor_runs(sorted: &[(usize, &Reading)]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (k, (_, reading)) in sorted.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if sorted[run.start].1.same_sensor(reading) => run.end = k + 1,
            _ => runs.push(k..k + 1),
        }
    }
    runs
}

/// The stored neighbours of the readings at the positions `wanted` of `sorted`, in that order.
async fn neighbours(
    tx: &deadpool_postgres::Transaction<'_>,
    sorted: &[(usize, &Reading)],
    wanted: &[usize],
) -> Result<Vec<Around>, StoreError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = wanted.iter().map(|&k| &*sorted[k].1.sensor_id).collect();
    let times: Vec<PgTimestamp> = wanted.iter().map(|&k| sorted[k].1.ts.into()).collect();
    // The compacted days these readings fall in are taken apart first (a no-op for days not
    // compacted), so that their lookups, and those of the next late readings of the same days,
    // are index probes instead of unpacking a day per reading; the next compaction packs them
    // again. Sent with the lookups, which the server runs after it.
    let mut expand_ids: Vec<&str> = Vec::new();
    let mut days: Vec<PgTimestamp> = Vec::new();
    let mut last: Option<(&str, DateTime<Utc>)> = None;
    for &k in wanted {
        let reading = sorted[k].1;
        let day = utc_day(reading.ts);
        if last != Some((&*reading.sensor_id, day)) {
            last = Some((&*reading.sensor_id, day));
            expand_ids.push(&reading.sensor_id);
            days.push(day.into());
        }
    }
    let (expand, query) = futures_util::try_join!(
        tx.prepare_cached(sql::EXPAND),
        tx.prepare_cached(sql::NEIGHBOURS)
    )?;
    let expand_params: [&(dyn ToSql + Sync); 2] = [&expand_ids, &days];
    let lookup_params: [&(dyn ToSql + Sync); 2] = [&ids, &times];
    let (_, rows) = futures_util::try_join!(
        tx.execute(&expand, &expand_params),
        tx.query(&query, &lookup_params)
    )?;
    let mut arounds = vec![Around::default(); wanted.len()];
    let point = |ts: Option<DateTime<Utc>>, value: Option<f64>| {
        Some(Point {
            ts: ts?,
            value: value?,
        })
    };
    for row in rows {
        let position: i64 = row.get(0);
        if let Some(around) = usize::try_from(position - 1)
            .ok()
            .and_then(|k| arounds.get_mut(k))
        {
            *around = Around {
                before: point(row.get(1), row.get(2)),
                at_or_after: point(row.get(3), row.get(4)),
            };
        }
    }
    Ok(arounds)
}

/// A change of `increase` in a window the batch's partials do not hold.
pub type Elsewhere = BTreeMap<(String, Resolution, DateTime<Utc>), f64>;

/// Places the steps: each new reading's in the partial of its window at every resolution (the
/// `increases`, one per partial), each changed stored step in its windows' partials or, where
/// the batch has none, in `Elsewhere`. `new` and `partials` are both in key order.
pub fn place(
    new: &[(&Reading, f64)],
    changed: &[(&str, DateTime<Utc>, f64)],
    partials: &[(AggKey, Aggregate)],
    resolutions: &[Resolution],
) -> (Vec<f64>, Elsewhere) {
    let mut increases = vec![0.0; partials.len()];
    // Each reading's instant once, not once per resolution: the calendar conversion costs more
    // than the rest of the walk.
    let micros: Vec<i64> = new.iter().map(|(r, _)| r.ts.timestamp_micros()).collect();
    let buckets: Vec<i64> = partials
        .iter()
        .map(|(key, _)| key.bucket.timestamp_micros())
        .collect();
    // Walks the sensors of `new` and their runs of partials side by side: each sensor's readings
    // and each resolution's windows are in time order, so no window is searched for.
    let (mut k, mut p) = (0, 0);
    while k < new.len() {
        let first = new[k].0;
        let end = k + new[k..]
            .iter()
            .take_while(|(r, _)| r.same_sensor(first))
            .count();
        while p < partials.len() && partials[p].0.sensor_id.as_str() < &*first.sensor_id {
            p += 1;
        }
        while p < partials.len() && same_id(&partials[p].0.sensor_id, &first.sensor_id) {
            let resolution = partials[p].0.resolution;
            let run_end = p + partials[p..]
                .iter()
                .take_while(|(key, _)| {
                    key.resolution == resolution && same_id(&key.sensor_id, &first.sensor_id)
                })
                .count();
            let mut w = p;
            for (&(_, step), &at) in new[k..end].iter().zip(&micros[k..end]) {
                let bucket = resolution.bucket_micros(at);
                while w + 1 < run_end && buckets[w] < bucket {
                    w += 1;
                }
                // Partials are folded from exactly these readings: every window is there.
                debug_assert_eq!(buckets[w], bucket);
                increases[w] += step;
            }
            p = run_end;
        }
        k = end;
    }
    let mut elsewhere = Elsewhere::new();
    for &(sensor, ts, change) in changed {
        for &resolution in resolutions {
            let key = AggKey {
                sensor_id: sensor.to_owned(),
                resolution,
                bucket: resolution.bucket(ts),
            };
            match partials.binary_search_by(|(probe, _)| probe.cmp(&key)) {
                Ok(at) => increases[at] += change,
                Err(_) => {
                    *elsewhere
                        .entry((key.sensor_id, resolution, key.bucket))
                        .or_default() += change;
                }
            }
        }
    }
    (increases, elsewhere)
}

/// Adds the changes of `increase` in windows the batch's partials do not hold.
pub async fn add_elsewhere(
    tx: &deadpool_postgres::Transaction<'_>,
    elsewhere: &Elsewhere,
) -> Result<(), StoreError> {
    if elsewhere.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = elsewhere.keys().map(|(id, _, _)| id.as_str()).collect();
    let labels: Vec<String> = elsewhere.keys().map(|(_, r, _)| r.to_string()).collect();
    let buckets: Vec<PgTimestamp> = elsewhere.keys().map(|(_, _, b)| (*b).into()).collect();
    let changes: Vec<f64> = elsewhere.values().copied().collect();
    let add = tx.prepare_cached(sql::ADD_INCREASE).await?;
    tx.execute(&add, &[&ids, &labels, &buckets, &changes])
        .await?;
    Ok(())
}
