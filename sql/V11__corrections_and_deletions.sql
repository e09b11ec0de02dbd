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
-- before the window looked up; a window left without readings is removed. What a replaced value
-- or a deletion changes, for every resolution in `labels`.
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
    ), windows AS (
        SELECT DISTINCT l AS resolution,
               to_timestamp(floor(extract(epoch FROM p.ts) / sensorhub_resolution_seconds(l))
                            * sensorhub_resolution_seconds(l)) AS bucket,
               sensorhub_resolution_seconds(l) AS seconds
        FROM points p CROSS JOIN unnest(labels) AS l
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
