-- Corrections and deletions (SENSORHUB_ON_CONFLICT=keep_last, POST /api/v1/delete).
--
-- readings.origin: the stream position a reading's value came from, 16 bytes big-endian (the
-- entry id's milliseconds, then its sequence number), so that byte order is stream order. Written
-- under keep_last only; null (older than every position) for readings stored under keep_first or
-- before this migration. A value replaces the stored one only when it comes from a later position:
-- a reading re-read after a crash or a replayed dead letter never rolls a newer correction back.
-- Adding a nullable column without a default rewrites nothing.
ALTER TABLE readings ADD COLUMN origin bytea;

-- What each deletion covered: the readings of `sensor_id` in [from_ts, to_ts) (null: unbounded)
-- that came from
-- stream positions up to `through` (the last entry of the sensor's stream when the deletion
-- was made). A re-read of such an entry (a replay, a crash before the ledger moved) is skipped;
-- a reading sent after the deletion is stored. Kept until neither the stream nor its dead letters
-- hold an entry from before it.
CREATE TABLE deletions (
    sensor_id  text COLLATE "C" NOT NULL,
    from_ts    timestamptz,
    to_ts      timestamptz,
    through    bytea            NOT NULL,
    deleted_at timestamptz      NOT NULL DEFAULT now(),
    deleted    bigint           NOT NULL
);
CREATE INDEX deletions_sensor ON deletions (sensor_id);

-- One sensor's windows recomputed from the raw readings: those holding the given instants and
-- those holding the first reading after each (whose step from its previous reading changed).
-- Every field as a GROUP BY over the readings gives it, `increase` from lag() with the reading
-- before the window looked up; a window left without readings is removed. What a deletion
-- changes, for every resolution in `labels`.
CREATE FUNCTION sensorhub_recompute(sensor text, instants timestamptz[], labels text[])
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH points AS (
        SELECT i AS ts FROM unnest(instants) AS i
        UNION
        SELECT n.ts FROM unnest(instants) AS i
        CROSS JOIN LATERAL (SELECT r.ts FROM readings r
                            WHERE r.sensor_id = sensor AND r.ts > i
                            ORDER BY r.ts LIMIT 1) n
    ), resolutions AS MATERIALIZED (
        SELECT l AS resolution, sensorhub_resolution_seconds(l) AS seconds
        FROM unnest(labels) AS l
    ), windows AS (
        SELECT DISTINCT r.resolution,
               to_timestamp(floor(extract(epoch FROM p.ts) / r.seconds) * r.seconds) AS bucket,
               r.seconds
        FROM points p CROSS JOIN resolutions r
    ), computed AS (
        SELECT w.resolution, w.bucket, s.*
        FROM windows w
        CROSS JOIN LATERAL (
            SELECT count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
                   (array_agg(ts ORDER BY ts))[1] AS first_ts,
                   (array_agg(value ORDER BY ts))[1] AS first_value,
                   (array_agg(ts ORDER BY ts DESC))[1] AS last_ts,
                   (array_agg(value ORDER BY ts DESC))[1] AS last_value,
                   coalesce(sum(sensorhub_step(previous, value)), 0) AS increase
            FROM (SELECT ts, value,
                         coalesce(lag(value) OVER (ORDER BY ts),
                                  (SELECT p.value FROM readings p
                                   WHERE p.sensor_id = sensor AND p.ts < w.bucket
                                   ORDER BY p.ts DESC LIMIT 1)) AS previous
                  FROM readings r
                  WHERE r.sensor_id = sensor AND r.ts >= w.bucket
                    AND r.ts < w.bucket + make_interval(secs => w.seconds)) inside
        ) s
    ), kept AS (
        INSERT INTO aggregates AS a
            (sensor_id, resolution, bucket, count, sum, min, max, first_ts, first_value, last_ts,
             last_value, increase)
        SELECT sensor, resolution, bucket, count, sum, min, max, first_ts, first_value, last_ts,
               last_value, increase
        FROM computed WHERE count > 0
        ORDER BY resolution, bucket
        ON CONFLICT (sensor_id, resolution, bucket) DO UPDATE SET
            count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
            first_ts = excluded.first_ts, first_value = excluded.first_value,
            last_ts = excluded.last_ts, last_value = excluded.last_value,
            increase = excluded.increase
        RETURNING 1
    ), removed AS (
        DELETE FROM aggregates a USING computed c
        WHERE c.count = 0 AND a.sensor_id = sensor AND a.resolution = c.resolution
          AND a.bucket = c.bucket
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM kept) + (SELECT count(*) FROM removed)
$$;

-- Stored values replaced (keep_last), once the readings hold the new values: the windows of every
-- resolution in `labels` moved from what the old values gave to what the new ones give, without
-- reading the windows whole. count stays; sum moves by the difference; first and last take the
-- new value where the replaced reading is the window's first or last; min and max take the new
-- value when it is beyond them, and are recomputed from the window's readings only when an old
-- value was the extreme; increase moves by the change of the steps that changed: the replaced
-- readings' own and their next readings' (a step is from the previous reading, with its old value
-- where that one was replaced too). Returns the windows updated.
CREATE FUNCTION sensorhub_replace(ids text[], times timestamptz[], olds double precision[],
                                  labels text[])
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH replaced AS (
        SELECT * FROM unnest(ids, times, olds) AS r(sensor_id, ts, old)
    ), affected AS (
        SELECT sensor_id, ts FROM replaced
        UNION
        SELECT r.sensor_id, n.ts FROM replaced r
        CROSS JOIN LATERAL (SELECT x.ts FROM readings x
                            WHERE x.sensor_id = r.sensor_id AND x.ts > r.ts
                            ORDER BY x.ts LIMIT 1) n
    ), changes AS MATERIALIZED (
        SELECT x.sensor_id, x.ts, x.value AS new, coalesce(rx.old, x.value) AS old,
               sensorhub_step(p.value, x.value)
                 - sensorhub_step(coalesce(rp.old, p.value), coalesce(rx.old, x.value)) AS step
        FROM affected a
        JOIN readings x ON x.sensor_id = a.sensor_id AND x.ts = a.ts
        LEFT JOIN LATERAL (SELECT y.ts, y.value FROM readings y
                           WHERE y.sensor_id = x.sensor_id AND y.ts < x.ts
                           ORDER BY y.ts DESC LIMIT 1) p ON true
        LEFT JOIN replaced rx ON rx.sensor_id = x.sensor_id AND rx.ts = x.ts
        LEFT JOIN replaced rp ON rp.sensor_id = x.sensor_id AND rp.ts = p.ts
    ), resolutions AS MATERIALIZED (
        -- Each width worked out once: the function is called per label, not per row.
        SELECT l AS resolution, sensorhub_resolution_seconds(l) AS seconds
        FROM unnest(labels) AS l
    ), windows AS (
        SELECT c.sensor_id, r.resolution,
               to_timestamp(floor(extract(epoch FROM c.ts) / r.seconds) * r.seconds) AS bucket,
               make_interval(secs => r.seconds) AS width,
               sum(c.new - c.old) AS sum_change,
               sum(c.step) AS increase_change,
               min(c.new) AS min_new, max(c.new) AS max_new,
               coalesce(array_agg(c.old) FILTER (WHERE c.old <> c.new), '{}') AS gone,
               array_agg(c.ts) FILTER (WHERE c.old <> c.new) AS times
        FROM changes c CROSS JOIN resolutions r
        GROUP BY 1, 2, 3, 4
    ), updated AS (
        UPDATE aggregates a SET
            sum = a.sum + w.sum_change,
            increase = a.increase + w.increase_change,
            min = CASE WHEN a.min = ANY (w.gone)
                       THEN (SELECT min(value) FROM readings r
                             WHERE r.sensor_id = a.sensor_id AND r.ts >= a.bucket
                               AND r.ts < a.bucket + w.width)
                       ELSE least(a.min, w.min_new) END,
            max = CASE WHEN a.max = ANY (w.gone)
                       THEN (SELECT max(value) FROM readings r
                             WHERE r.sensor_id = a.sensor_id AND r.ts >= a.bucket
                               AND r.ts < a.bucket + w.width)
                       ELSE greatest(a.max, w.max_new) END,
            first_value = CASE WHEN a.first_ts = ANY (w.times)
                               THEN (SELECT value FROM readings r
                                     WHERE r.sensor_id = a.sensor_id AND r.ts = a.first_ts)
                               ELSE a.first_value END,
            last_value = CASE WHEN a.last_ts = ANY (w.times)
                              THEN (SELECT value FROM readings r
                                    WHERE r.sensor_id = a.sensor_id AND r.ts = a.last_ts)
                              ELSE a.last_value END
        FROM windows w
        WHERE a.sensor_id = w.sensor_id AND a.resolution = w.resolution AND a.bucket = w.bucket
        RETURNING 1
    )
    SELECT count(*) FROM updated
$$;
