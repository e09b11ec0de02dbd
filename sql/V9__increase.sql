-- increase: per window, the sum of its readings' steps from the sensor's previous reading (a fall
-- counts as the new value: a counter reset). Kept by the writer like every other aggregate; the
-- windows already stored get theirs here, from the raw readings they were built from.
ALTER TABLE aggregates ADD COLUMN increase double precision NOT NULL DEFAULT 0;

-- A reading's step from the previous one (null: none, the sensor's first reading): the rise, or the
-- value itself after a fall. The one SQL definition: the backfill and sensorhub_windows use it.
CREATE FUNCTION sensorhub_step(previous double precision, value double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN previous IS NULL THEN 0
                WHEN value >= previous THEN value - previous
                ELSE value END
$$;

WITH steps AS (
    SELECT sensor_id, ts, sensorhub_step(previous, value) AS step
    FROM (SELECT sensor_id, ts, value,
                 lag(value) OVER (PARTITION BY sensor_id ORDER BY ts) AS previous
          FROM readings) r
), widths AS (
    SELECT DISTINCT resolution,
           substring(resolution FROM '^[0-9]+')::bigint
             * CASE right(resolution, 1) WHEN 'd' THEN 86400 WHEN 'h' THEN 3600
                                         WHEN 'm' THEN 60 ELSE 1 END AS seconds
    FROM aggregates
), sums AS (
    SELECT s.sensor_id, w.resolution,
           to_timestamp(floor(extract(epoch FROM s.ts) / w.seconds) * w.seconds) AS bucket,
           sum(s.step) AS increase
    FROM steps s CROSS JOIN widths w
    GROUP BY 1, 2, 3
)
UPDATE aggregates a SET increase = sums.increase
FROM sums
WHERE a.sensor_id = sums.sensor_id AND a.resolution = sums.resolution AND a.bucket = sums.bucket
  AND sums.increase <> 0;

CREATE OR REPLACE VIEW aggregate_windows AS
SELECT sensor_id, resolution, bucket, count, sum, min, max,
       sum / count              AS mean,
       first_ts, first_value, last_ts, last_value,
       last_value - first_value AS diff,
       increase
FROM aggregates;
