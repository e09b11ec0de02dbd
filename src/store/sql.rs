//! The SQL of the batch transaction, as named constants (migrations live in `sql/`; the
//! partitions, retention, backfill, deployment and the read API write their own statements beside
//! their code).

/// The fast path for raw readings: a binary COPY. A reading already stored makes it fail with a
/// unique violation (SQLSTATE 23505), and the batch is redone with [`INSERT_READINGS_RETURNING`].
pub const COPY_READINGS: &str = "COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT binary)";

/// Inserts a batch of raw readings skipping `(sensor_id, ts)` already stored, returning the rows
/// that were new: used when a batch held duplicates, so that only new rows contribute to the
/// aggregates.
pub const INSERT_READINGS_RETURNING: &str = "
INSERT INTO readings (sensor_id, ts, value)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::float8[])
ON CONFLICT DO NOTHING
RETURNING sensor_id, ts";

/// The stored values of the given keys (readings skipped as already stored), to tell a
/// redelivery (the same value) from a conflict (another value).
pub const STORED_VALUES: &str = "
SELECT r.sensor_id, r.ts, r.value
FROM readings r
JOIN unnest($1::text[], $2::timestamptz[]) AS k(sensor_id, ts) USING (sensor_id, ts)";

/// Merges partial aggregates into the stored rows with the rules of `Aggregate::merge`. Rows arrive
/// sorted by key (`WITH ORDINALITY ... ORDER BY`), so concurrent writers lock rows in one order.
pub const UPSERT_AGGREGATES: &str = "
INSERT INTO aggregates AS a
    (sensor_id, resolution, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value)
SELECT sensor_id, resolution, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::float8[], $6::float8[],
            $7::float8[], $8::timestamptz[], $9::float8[], $10::timestamptz[], $11::float8[])
     WITH ORDINALITY AS p(sensor_id, resolution, bucket, count, sum, min, max, first_ts,
                          first_value, last_ts, last_value, position)
ORDER BY position
ON CONFLICT (sensor_id, resolution, bucket) DO UPDATE SET
    count       = a.count + excluded.count,
    sum         = a.sum + excluded.sum,
    min         = least(a.min, excluded.min),
    max         = greatest(a.max, excluded.max),
    first_ts    = CASE WHEN excluded.first_ts < a.first_ts THEN excluded.first_ts ELSE a.first_ts END,
    first_value = CASE WHEN excluded.first_ts < a.first_ts THEN excluded.first_value ELSE a.first_value END,
    last_ts     = CASE WHEN excluded.last_ts > a.last_ts THEN excluded.last_ts ELSE a.last_ts END,
    last_value  = CASE WHEN excluded.last_ts > a.last_ts THEN excluded.last_value ELSE a.last_value END";

/// Updates the "latest" row of each sensor; a late reading never replaces a newer one.
pub const UPSERT_SENSORS: &str = "
INSERT INTO sensors AS s (sensor_id, unit, first_seen, last_seen, last_value)
SELECT sensor_id, unit, first_seen, last_seen, last_value
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::float8[])
     WITH ORDINALITY AS p(sensor_id, unit, first_seen, last_seen, last_value, position)
ORDER BY position
ON CONFLICT (sensor_id) DO UPDATE SET
    unit       = coalesce(excluded.unit, s.unit),
    first_seen = least(s.first_seen, excluded.first_seen),
    last_value = CASE WHEN excluded.last_seen > s.last_seen THEN excluded.last_value ELSE s.last_value END,
    last_seen  = greatest(s.last_seen, excluded.last_seen)";

/// Serializes concurrent migration runs of several instances starting at once.
pub const MIGRATION_LOCK: &str = "SELECT pg_advisory_lock(7358203915)";
pub const MIGRATION_UNLOCK: &str = "SELECT pg_advisory_unlock(7358203915)";

/// Sensors seen since `$2` (or all when `$1`), for the read API.
pub const LIST_SENSORS: &str = "
SELECT sensor_id, unit, first_seen, last_seen, last_value
FROM sensors
WHERE $1::bool OR last_seen >= $2
ORDER BY sensor_id";

/// One sensor's latest state.
pub const GET_SENSOR: &str = "
SELECT sensor_id, unit, first_seen, last_seen, last_value FROM sensors WHERE sensor_id = $1";

/// Raw readings of a sensor, newest first, `from` and `to` inclusive (null: unbounded).
pub const SENSOR_READINGS: &str = "
SELECT ts, value FROM readings
WHERE sensor_id = $1
  AND ts >= coalesce($2::timestamptz, '-infinity')
  AND ts <= coalesce($3::timestamptz, 'infinity')
ORDER BY ts DESC
LIMIT $4";

/// Window aggregates of a sensor at one resolution, newest window first.
pub const SENSOR_AGGREGATES: &str = "
SELECT bucket, count, sum, min, max, mean, first_ts, first_value, last_ts, last_value, diff
FROM aggregate_windows
WHERE sensor_id = $1 AND resolution = $2
  AND bucket >= coalesce($3::timestamptz, '-infinity')
  AND bucket <= coalesce($4::timestamptz, 'infinity')
ORDER BY bucket DESC
LIMIT $5";
