-- Window aggregates, merged per batch from the readings that batch newly stored.
-- fillfactor 50 leaves room on each page for HOT updates of the same rows, which every batch upserts.
CREATE TABLE aggregates (
    sensor_id   text             NOT NULL,
    resolution  text             NOT NULL,
    bucket      timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    first_ts    timestamptz      NOT NULL,
    first_value double precision NOT NULL,
    last_ts     timestamptz      NOT NULL,
    last_value  double precision NOT NULL,
    PRIMARY KEY (sensor_id, resolution, bucket)
) WITH (fillfactor = 50);

-- The derived columns a dashboard wants, next to the stored ones.
CREATE VIEW aggregate_windows AS
SELECT sensor_id, resolution, bucket, count, sum, min, max,
       sum / count              AS mean,
       first_ts, first_value, last_ts, last_value,
       last_value - first_value AS diff
FROM aggregates;
