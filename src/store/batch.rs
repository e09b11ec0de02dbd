//! The one batch transaction, the heart of the delivery guarantee: it inserts the raw readings
//! skipping stored `(sensor_id, ts)`, and merges into the aggregates exactly the contribution of
//! the rows that were new. A replayed or concurrently written reading therefore never counts
//! twice.

use crate::domain::{AggKey, Aggregate, FastState, Reading, Resolution, Windows, same_id};
use crate::store::StoreError;
use crate::store::sql;
use bytes::{BufMut as _, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::SinkExt as _;
use std::collections::{HashMap, HashSet};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};

/// What one committed batch did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchOutcome {
    /// Readings newly stored.
    pub inserted: u64,
    /// Readings skipped because their `(sensor_id, ts)` was already stored with the same value.
    pub duplicates: u64,
    /// Readings skipped because their `(sensor_id, ts)` was already stored with another value.
    pub conflicts: Vec<Conflict>,
    /// Aggregate rows inserted or merged into.
    pub aggregate_rows: u64,
}

/// A reading whose `(sensor_id, ts)` is stored with a different value: the stored value stays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conflict {
    /// The reading's position in the batch written.
    pub index: usize,
    /// The value stored under its key.
    pub stored: f64,
}

impl BatchOutcome {
    /// Adds what another part of the same batch did; `offset` is that part's first position in
    /// the batch.
    pub fn add(&mut self, part: BatchOutcome, offset: usize) {
        self.inserted += part.inserted;
        self.duplicates += part.duplicates;
        self.aggregate_rows += part.aggregate_rows;
        self.conflicts
            .extend(part.conflicts.into_iter().map(|c| Conflict {
                index: c.index + offset,
                ..c
            }));
    }
}

/// Writes one batch in one transaction. `readings` hold no two rows with the same
/// `(sensor_id, ts)`; `partials` are their folded aggregates, sorted by key.
///
/// Fast path: binary `COPY` of the raw rows, then the pre-folded partials merged into the
/// aggregates. A reading already stored aborts the COPY (unique violation); the batch is then redone
/// with `INSERT ... ON CONFLICT DO NOTHING RETURNING`, folding only the rows that were new.
pub async fn write_batch(
    client: &mut deadpool_postgres::Client,
    readings: &[Reading],
    partials: &[(AggKey, Aggregate)],
    resolutions: &[Resolution],
) -> Result<BatchOutcome, StoreError> {
    if readings.is_empty() {
        return Ok(BatchOutcome::default());
    }
    match copy_batch(client, readings, partials).await {
        Err(StoreError::Db(error)) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
        other => return other,
    }
    insert_new_only(client, readings, resolutions).await
}

async fn copy_batch(
    client: &mut deadpool_postgres::Client,
    readings: &[Reading],
    partials: &[(AggKey, Aggregate)],
) -> Result<BatchOutcome, StoreError> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in::<_, Bytes>(sql::COPY_READINGS).await?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK_BYTES + 256);
    buf.extend_from_slice(COPY_HEADER);
    for r in readings {
        encode_copy_row(r, &mut buf);
        if buf.len() >= COPY_CHUNK_BYTES {
            sink.send(buf.split().freeze()).await?;
        }
    }
    buf.put_i16(-1); // the trailer
    sink.send(buf.split().freeze()).await?;
    // The end of the COPY and both upserts go out back to back: one round trip instead of three.
    // The connection sends requests in order, so PostgreSQL runs them in this order; after a
    // failed COPY the upserts fail too ("transaction aborted") and the COPY's error is the one
    // returned.
    let (inserted, aggregate_rows, sensors) = futures_util::join!(
        sink.as_mut().finish(),
        upsert_aggregates(&tx, partials),
        upsert_sensors(&tx, readings.iter()),
    );
    let inserted = inserted?;
    let aggregate_rows = aggregate_rows?;
    sensors?;
    tx.commit().await?;
    Ok(BatchOutcome {
        inserted,
        aggregate_rows,
        ..BatchOutcome::default()
    })
}

/// The start of a binary COPY stream: signature, flags (no OIDs), no header extension. The
/// format is PostgreSQL's own ("COPY", "Binary Format"); `tokio_postgres`'s `BinaryCopyInWriter`
/// writes the same bytes, but through a type check and a future per value, which at full speed
/// cost more than encoding the rows by hand.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Bytes of COPY data per message to the connection.
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One row of `readings (sensor_id text, ts timestamptz, value float8)` in binary COPY format:
/// the field count, then each field's length and bytes (text as UTF-8, timestamptz as
/// microseconds since 2000 and float8 as IEEE 754 bits, both big-endian).
fn encode_copy_row(reading: &Reading, buf: &mut BytesMut) {
    let id = reading.sensor_id.as_bytes();
    buf.reserve(2 + 4 + id.len() + 4 + 8 + 4 + 8);
    buf.put_i16(3);
    // Sensor ids are at most a few hundred bytes (`Limits::max_sensor_id_len`).
    buf.put_i32(id.len() as i32);
    buf.put_slice(id);
    buf.put_i32(8);
    buf.put_i64(reading.ts.timestamp_micros() - PG_EPOCH_MICROS);
    buf.put_i32(8);
    buf.put_f64(reading.value);
}

/// A `timestamptz` as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC. chrono's
/// own `ToSql` works that out per value from a calendar date it builds each time, most of the cost
/// of the aggregate and sensor upserts' arrays, where here it is one subtraction.
#[derive(Clone, Copy, Debug)]
struct PgTimestamp(i64);

impl From<DateTime<Utc>> for PgTimestamp {
    fn from(ts: DateTime<Utc>) -> Self {
        PgTimestamp(ts.timestamp_micros() - PG_EPOCH_MICROS)
    }
}

impl ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }

    accepts!(TIMESTAMPTZ);
    to_sql_checked!();
}

async fn insert_new_only(
    client: &mut deadpool_postgres::Client,
    readings: &[Reading],
    resolutions: &[Resolution],
) -> Result<BatchOutcome, StoreError> {
    let sensor_ids: Vec<&str> = readings.iter().map(|r| &*r.sensor_id).collect();
    let timestamps: Vec<DateTime<Utc>> = readings.iter().map(|r| r.ts).collect();
    let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
    let tx = client.transaction().await?;
    let insert = tx.prepare_cached(sql::INSERT_READINGS_RETURNING).await?;
    let rows = tx
        .query(&insert, &[&sensor_ids, &timestamps, &values])
        .await?;
    let new_keys: HashSet<(&str, DateTime<Utc>), FastState> = rows
        .iter()
        .map(|row| (row.get::<_, &str>(0), row.get::<_, DateTime<Utc>>(1)))
        .collect();
    let (new_readings, skipped): (Vec<Indexed>, Vec<Indexed>) = readings
        .iter()
        .enumerate()
        .partition(|(_, r)| new_keys.contains(&(&*r.sensor_id, r.ts)));
    let conflicts = conflicts(&tx, &skipped).await?;
    let new_readings: Vec<&Reading> = new_readings.into_iter().map(|(_, r)| r).collect();
    let new_partials = Windows::fold(resolutions, new_readings.iter().copied());
    let aggregate_rows = upsert_aggregates(&tx, &new_partials).await?;
    upsert_sensors(&tx, new_readings.iter().copied()).await?;
    tx.commit().await?;
    let inserted = new_readings.len() as u64;
    Ok(BatchOutcome {
        inserted,
        duplicates: (skipped.len() - conflicts.len()) as u64,
        conflicts,
        aggregate_rows,
    })
}

/// A reading and its position in the batch.
type Indexed<'a> = (usize, &'a Reading);

/// Of the readings whose key was already stored, those stored with another value. Read in the
/// transaction that skipped them: the rows it conflicted with are committed and visible.
async fn conflicts(
    tx: &deadpool_postgres::Transaction<'_>,
    skipped: &[Indexed<'_>],
) -> Result<Vec<Conflict>, StoreError> {
    if skipped.is_empty() {
        return Ok(Vec::new());
    }
    let sensor_ids: Vec<&str> = skipped.iter().map(|(_, r)| &*r.sensor_id).collect();
    let timestamps: Vec<DateTime<Utc>> = skipped.iter().map(|(_, r)| r.ts).collect();
    let rows = tx
        .query(sql::STORED_VALUES, &[&sensor_ids, &timestamps])
        .await?;
    let stored: HashMap<(&str, DateTime<Utc>), f64, FastState> = rows
        .iter()
        .map(|row| {
            (
                (row.get::<_, &str>(0), row.get::<_, DateTime<Utc>>(1)),
                row.get::<_, f64>(2),
            )
        })
        .collect();
    Ok(skipped
        .iter()
        .filter_map(|&(index, reading)| {
            let stored = *stored.get(&(&*reading.sensor_id, reading.ts))?;
            // The same value is a redelivery; another value is a second, different reading.
            (stored != reading.value).then_some(Conflict { index, stored })
        })
        .collect())
}

async fn upsert_aggregates(
    tx: &deadpool_postgres::Transaction<'_>,
    partials: &[(AggKey, Aggregate)],
) -> Result<u64, StoreError> {
    if partials.is_empty() {
        return Ok(0);
    }
    let n = partials.len();
    // Each resolution's label made once, not once per row.
    let mut labels: Vec<(Resolution, String)> = Vec::new();
    for (key, _) in partials {
        if !labels
            .iter()
            .any(|(resolution, _)| *resolution == key.resolution)
        {
            labels.push((key.resolution, key.resolution.to_string()));
        }
    }
    let label = |resolution: Resolution| -> &str {
        labels
            .iter()
            .find(|(known, _)| *known == resolution)
            .map_or("", |(_, label)| label.as_str())
    };
    let mut sensor_ids = Vec::with_capacity(n);
    let mut resolutions = Vec::with_capacity(n);
    let mut buckets = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut sums = Vec::with_capacity(n);
    let mut mins = Vec::with_capacity(n);
    let mut maxs = Vec::with_capacity(n);
    let mut first_ts = Vec::with_capacity(n);
    let mut first_values = Vec::with_capacity(n);
    let mut last_ts = Vec::with_capacity(n);
    let mut last_values = Vec::with_capacity(n);
    for (key, agg) in partials {
        sensor_ids.push(key.sensor_id.as_str());
        resolutions.push(label(key.resolution));
        buckets.push(PgTimestamp::from(key.bucket));
        counts.push(agg.count);
        sums.push(agg.sum);
        mins.push(agg.min);
        maxs.push(agg.max);
        first_ts.push(PgTimestamp::from(agg.first_ts));
        first_values.push(agg.first_value);
        last_ts.push(PgTimestamp::from(agg.last_ts));
        last_values.push(agg.last_value);
    }
    let upsert = tx.prepare_cached(sql::UPSERT_AGGREGATES).await?;
    let rows = tx
        .execute(
            &upsert,
            &[
                &sensor_ids,
                &resolutions,
                &buckets,
                &counts,
                &sums,
                &mins,
                &maxs,
                &first_ts,
                &first_values,
                &last_ts,
                &last_values,
            ],
        )
        .await?;
    Ok(rows)
}

/// The newest-reading summary of one sensor within a batch.
struct SensorSummary<'a> {
    unit: Option<&'a str>,
    unit_ts: DateTime<Utc>,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    last_value: f64,
}

async fn upsert_sensors<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    readings: impl Iterator<Item = &'a Reading>,
) -> Result<(), StoreError> {
    // Summaries in order of first appearance, found by id; a reading of the same sensor as the one
    // before (batches arrive in key order) skips the lookup.
    let mut sensors: Vec<(&str, SensorSummary)> = Vec::new();
    let mut index: HashMap<&str, usize, FastState> = HashMap::default();
    for r in readings {
        let at = match sensors.last() {
            Some((id, _)) if same_id(id, &r.sensor_id) => sensors.len() - 1,
            _ => *index.entry(&r.sensor_id).or_insert_with(|| {
                sensors.push((
                    &r.sensor_id,
                    SensorSummary {
                        unit: None,
                        unit_ts: r.ts,
                        first_seen: r.ts,
                        last_seen: r.ts,
                        last_value: r.value,
                    },
                ));
                sensors.len() - 1
            }),
        };
        let summary = &mut sensors[at].1;
        summary.first_seen = summary.first_seen.min(r.ts);
        if r.ts >= summary.last_seen {
            summary.last_seen = r.ts;
            summary.last_value = r.value;
        }
        if r.unit.is_some() && (summary.unit.is_none() || r.ts >= summary.unit_ts) {
            summary.unit = r.unit.as_deref();
            summary.unit_ts = r.ts;
        }
    }
    if sensors.is_empty() {
        return Ok(());
    }
    let mut sorted = sensors;
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let ids: Vec<&str> = sorted.iter().map(|(id, _)| *id).collect();
    let units: Vec<Option<&str>> = sorted.iter().map(|(_, s)| s.unit).collect();
    let first_seen: Vec<PgTimestamp> = sorted.iter().map(|(_, s)| s.first_seen.into()).collect();
    let last_seen: Vec<PgTimestamp> = sorted.iter().map(|(_, s)| s.last_seen.into()).collect();
    let last_values: Vec<f64> = sorted.iter().map(|(_, s)| s.last_value).collect();
    let upsert = tx.prepare_cached(sql::UPSERT_SENSORS).await?;
    tx.execute(
        &upsert,
        &[&ids, &units, &first_seen, &last_seen, &last_values],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_are_postgres_binary_format() {
        assert_eq!(COPY_HEADER.len(), 19);
        assert!(COPY_HEADER.starts_with(b"PGCOPY\n\xff\r\n\0"));
        let reading = Reading {
            sensor_id: "s-1".into(),
            // One second and one microsecond before PostgreSQL's epoch: a negative count.
            ts: "1999-12-31T23:59:58.999999Z".parse().unwrap(),
            value: -1.5,
            unit: None,
        };
        let mut buf = BytesMut::new();
        encode_copy_row(&reading, &mut buf);
        let mut expected = vec![0, 3, 0, 0, 0, 3, b's', b'-', b'1', 0, 0, 0, 8];
        expected.extend_from_slice(&(-1_000_001i64).to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&(-1.5f64).to_be_bytes());
        assert_eq!(&buf[..], &expected[..]);
    }

    proptest::proptest! {
        /// Any timestamp a reading may carry (microseconds, years 1 to 9999, before and after
        /// PostgreSQL's epoch) is sent as the same bytes as chrono's own encoding would send.
        #[test]
        fn timestamps_are_encoded_as_chrono_encodes_them(
            micros in -62_135_596_800_000_000i64..253_402_300_799_999_999,
        ) {
            let ts = DateTime::from_timestamp_micros(micros).unwrap();
            let (mut ours, mut chronos) = (BytesMut::new(), BytesMut::new());
            PgTimestamp::from(ts).to_sql(&Type::TIMESTAMPTZ, &mut ours).unwrap();
            ts.to_sql(&Type::TIMESTAMPTZ, &mut chronos).unwrap();
            proptest::prop_assert_eq!(&ours[..], &chronos[..]);
        }
    }
}
