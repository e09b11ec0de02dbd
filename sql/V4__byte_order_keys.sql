-- Sensor ids are ASCII (the validator allows [A-Za-z0-9_.:-] only), so byte order loses nothing,
-- and it makes every key comparison a memcmp instead of a locale-aware strcoll: the primary-key
-- B-trees of readings and aggregates are compared on every row a batch writes. It is also the order
-- sensorhub sorts keys in before upserting them.
DROP VIEW aggregate_windows;

ALTER TABLE readings   ALTER COLUMN sensor_id  TYPE text COLLATE "C";
ALTER TABLE aggregates ALTER COLUMN sensor_id  TYPE text COLLATE "C",
                       ALTER COLUMN resolution TYPE text COLLATE "C";
ALTER TABLE sensors    ALTER COLUMN sensor_id  TYPE text COLLATE "C";

CREATE VIEW aggregate_windows AS
SELECT sensor_id, resolution, bucket, count, sum, min, max,
       sum / count              AS mean,
       first_ts, first_value, last_ts, last_value,
       last_value - first_value AS diff
FROM aggregates;
