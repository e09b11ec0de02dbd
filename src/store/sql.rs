//! The SQL of the batch transaction, as named constants (migrations live in `sql/`; the
//! partitions, retention, backfill, deployment and the read API write their own statements beside
//! their code).

/// Raw readings, as a binary COPY: only readings found not stored under the batch's sensor locks,
/// so a unique violation (SQLSTATE 23505) means a writer that does not take them.
pub const COPY_READINGS: &str =
    "COPY readings_hot (sensor_id, ts, value) FROM STDIN (FORMAT binary)";

/// [`COPY_READINGS`] with each reading's stream position (`keep_last`).
pub const COPY_READINGS_WITH_ORIGIN: &str =
    "COPY readings_hot (sensor_id, ts, value, origin) FROM STDIN (FORMAT binary)";

/// What deletions of a batch's sensors covered: a reading in one of the ranges from a stream
/// position up to `through` was deleted, and is not stored again when re-read.
pub const DELETIONS_OF: &str = "
SELECT sensor_id, from_ts, to_ts, through FROM deletions WHERE sensor_id = ANY($1::text[])";

/// The stream positions of stored readings (`keep_last`), by the position in the arrays, from
/// both stores (`sql/V12__compaction.sql`).
pub const STORED_ORIGINS: &str = "
SELECT k.position, r.origin
FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS k(sensor_id, ts, position)
CROSS JOIN LATERAL sensorhub_span(k.sensor_id, k.ts, k.ts + interval '1 microsecond') r";

/// The compacted days of the given sensors taken apart into `readings_hot` before their
/// readings are changed there (`sql/V12__compaction.sql`): sensors, days.
pub const EXPAND: &str = "SELECT sensorhub_expand($1::text[], $2::timestamptz[])";

/// Stored readings given a value from a later stream position (or the same value, with the later
/// position: a value sent again must not lose to one sent between).
pub const REPLACE_VALUES: &str = "
UPDATE readings_hot r SET value = u.value, origin = u.origin
FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::bytea[]) AS u(sensor_id, ts, value, origin)
WHERE r.sensor_id = u.sensor_id AND r.ts = u.ts";

/// A sensor's latest value, when the reading replaced is its newest.
pub const REPLACE_LAST_VALUES: &str = "
UPDATE sensors s SET last_value = u.value
FROM unnest($1::text[], $2::timestamptz[], $3::float8[]) AS u(sensor_id, ts, value)
WHERE s.sensor_id = u.sensor_id AND s.last_seen = u.ts";

/// One sensor's windows around the given instants, recomputed from the raw readings
/// (`sql/V11__corrections_and_deletions.sql`): what a deletion changes.
pub const RECOMPUTE: &str = "SELECT sensorhub_recompute($1, $2, $3)";

/// The windows moved from the replaced readings' old values to their new ones
/// (`sql/V11__corrections_and_deletions.sql`): sensors, times, old values, resolutions.
pub const REPLACE_IN_WINDOWS: &str = "SELECT sensorhub_replace($1, $2, $3, $4)";

/// Locks the rows of a batch's sensors, in one order for every writer, and gives each one's newest
/// reading. Two transactions writing one sensor's readings therefore run one after the other: the
/// steps of `increase` are worked out against everything committed before.
pub const LOCK_SENSORS: &str = "
SELECT sensor_id, last_seen, last_value
FROM sensors
WHERE sensor_id = ANY($1::text[])
ORDER BY sensor_id COLLATE \"C\"
FOR NO KEY UPDATE";

/// Creates the rows of sensors seen for the first time, which locks them like [`LOCK_SENSORS`];
/// returns those it created (one another transaction created meanwhile is not among them).
pub const CREATE_SENSORS: &str = "
INSERT INTO sensors (sensor_id, unit, first_seen, last_seen, last_value)
SELECT sensor_id, unit, first_seen, last_seen, last_value
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::float8[])
     WITH ORDINALITY AS p(sensor_id, unit, first_seen, last_seen, last_value, position)
ORDER BY position
ON CONFLICT (sensor_id) DO NOTHING
RETURNING sensor_id";

/// The stored readings around each given `(sensor_id, ts)`: the latest before it and the earliest
/// at or after it (at it: stored already), by the position in the arrays; hot and compacted.
pub const NEIGHBOURS: &str = "
SELECT k.position, b.ts, b.value, a.ts, a.value
FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS k(sensor_id, ts, position)
LEFT JOIN LATERAL sensorhub_before(k.sensor_id, k.ts) b ON true
LEFT JOIN LATERAL sensorhub_after(k.sensor_id, k.ts) a ON true";

/// Adds to the `increase` of stored windows: those of stored readings whose step a new reading
/// before them changed. A window not stored yet (of a resolution still being backfilled) is
/// computed from the raw readings when the backfill reaches it.
pub const ADD_INCREASE: &str = "
UPDATE aggregates a SET increase = a.increase + d.increase
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
     AS d(sensor_id, resolution, bucket, increase)
WHERE a.sensor_id = d.sensor_id AND a.resolution = d.resolution AND a.bucket = d.bucket";

/// Merges partial aggregates into the stored rows with the rules of `Aggregate::merge`. Rows arrive
/// sorted by key (`WITH ORDINALITY ... ORDER BY`), so concurrent writers lock rows in one order.
pub const UPSERT_AGGREGATES: &str = "
INSERT INTO aggregates AS a
    (sensor_id, resolution, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value,
     increase)
SELECT sensor_id, resolution, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value,
       increase
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::float8[], $6::float8[],
            $7::float8[], $8::timestamptz[], $9::float8[], $10::timestamptz[], $11::float8[],
            $12::float8[])
     WITH ORDINALITY AS p(sensor_id, resolution, bucket, count, sum, min, max, first_ts,
                          first_value, last_ts, last_value, increase, position)
ORDER BY position
ON CONFLICT (sensor_id, resolution, bucket) DO UPDATE SET
    count       = a.count + excluded.count,
    increase    = a.increase + excluded.increase,
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

/// Raw readings of a sensor, newest first, `from` and `to` inclusive (null: unbounded), reading
/// only the compacted days that can hold them.
pub const SENSOR_READINGS: &str = "
SELECT ts, value FROM sensorhub_newest($1, coalesce($2::timestamptz, '-infinity'),
                                       coalesce($3::timestamptz, 'infinity') + interval '1 microsecond',
                                       $4)";

/// A sensor's windows from `sensorhub_windows` (sensor, from, to, window, zone, fill), newest
/// first, with the zone's UTC offset in seconds at each window's start and end.
pub const SENSOR_WINDOWS: &str = "
SELECT w.bucket, w.bucket_end, w.count, w.sum, w.min, w.max, w.mean, w.first_ts, w.first_value,
       w.last_ts, w.last_value, w.diff, w.increase, w.rate, w.source,
       sensorhub_utc_offset(w.bucket, $5), sensorhub_utc_offset(w.bucket_end, $5)
FROM sensorhub_windows($1, $2, $3, $4, $5, $6) w
ORDER BY w.bucket DESC
LIMIT $7";
