//! The bytes of the batch transaction: raw rows in PostgreSQL's binary COPY format, timestamps
//! as the binary protocol sends them, and the arrays of a batch's `sensors` rows.

use bytes::{BufMut as _, BytesMut};
use chrono::{DateTime, Utc};
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};

use crate::domain::{FastState, Origin, Reading, same_id};
use std::collections::HashMap;

/// The start of a binary COPY stream: signature, flags (no OIDs), no header extension. The
/// format is PostgreSQL's own ("COPY", "Binary Format"); `tokio_postgres`'s `BinaryCopyInWriter`
/// writes the same bytes, but through a type check and a future per value, which at full speed
/// cost more than encoding the rows by hand.
pub(super) const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Bytes of COPY data per message to the connection.
pub(super) const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One row of `readings (sensor_id text, ts timestamptz, value float8[, origin bytea])` in binary
/// COPY format: the field count, then each field's length and bytes (text as UTF-8, timestamptz as
/// microseconds since 2000 and float8 as IEEE 754 bits, both big-endian, bytea as it is). The
/// origin only when the COPY names the column (`keep_last`).
pub(super) fn encode_copy_row(reading: &Reading, origin: Option<&Origin>, buf: &mut BytesMut) {
    let id = reading.sensor_id.as_bytes();
    buf.reserve(2 + 4 + id.len() + 4 + 8 + 4 + 8 + 4 + 16);
    buf.put_i16(if origin.is_some() { 4 } else { 3 });
    // Sensor ids are at most a few hundred bytes (`Limits::max_sensor_id_len`).
    buf.put_i32(id.len() as i32);
    buf.put_slice(id);
    buf.put_i32(8);
    buf.put_i64(reading.ts.timestamp_micros() - PG_EPOCH_MICROS);
    buf.put_i32(8);
    buf.put_f64(reading.value);
    if let Some(origin) = origin {
        buf.put_i32(origin.len() as i32);
        buf.put_slice(origin);
    }
}

/// A `timestamptz` as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC. chrono's
/// own `ToSql` works that out per value from a calendar date it builds each time, most of the cost
/// of the aggregate and sensor upserts' arrays, where here it is one subtraction.
#[derive(Clone, Copy, Debug)]
pub(super) struct PgTimestamp(i64);

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

/// The newest-reading summary of one sensor within a batch.
struct SensorSummary<'a> {
    unit: Option<&'a str>,
    unit_ts: DateTime<Utc>,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    last_value: f64,
}

/// The `sensors` rows a batch's readings make, sorted by id: the arrays of [`sql::UPSERT_SENSORS`]
/// and [`sql::CREATE_SENSORS`].
pub(super) struct SensorRows<'a> {
    pub ids: Vec<&'a str>,
    units: Vec<Option<&'a str>>,
    first_seen: Vec<PgTimestamp>,
    last_seen: Vec<PgTimestamp>,
    last_values: Vec<f64>,
}

impl<'a> SensorRows<'a> {
    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [
            &self.ids,
            &self.units,
            &self.first_seen,
            &self.last_seen,
            &self.last_values,
        ]
    }

    /// `None` without readings.
    pub fn of(readings: impl Iterator<Item = &'a Reading>) -> Option<Self> {
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
            return None;
        }
        let mut sorted = sensors;
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(SensorRows {
            ids: sorted.iter().map(|(id, _)| *id).collect(),
            units: sorted.iter().map(|(_, s)| s.unit).collect(),
            first_seen: sorted.iter().map(|(_, s)| s.first_seen.into()).collect(),
            last_seen: sorted.iter().map(|(_, s)| s.last_seen.into()).collect(),
            last_values: sorted.iter().map(|(_, s)| s.last_value).collect(),
        })
    }
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
        encode_copy_row(&reading, None, &mut buf);
        let mut expected = vec![0, 3, 0, 0, 0, 3, b's', b'-', b'1', 0, 0, 0, 8];
        expected.extend_from_slice(&(-1_000_001i64).to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&(-1.5f64).to_be_bytes());
        assert_eq!(&buf[..], &expected[..]);
        // With the stream position: four fields, the last 16 bytes as they are.
        let origin = crate::domain::conflict::origin(1, 2);
        let mut buf = BytesMut::new();
        encode_copy_row(&reading, Some(&origin), &mut buf);
        expected[1] = 4;
        expected.extend_from_slice(&[0, 0, 0, 16]);
        expected.extend_from_slice(&origin);
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
