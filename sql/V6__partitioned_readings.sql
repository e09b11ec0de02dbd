-- readings partitioned by time (RANGE on ts), so that retention drops whole partitions instead of
-- deleting rows one by one. sensorhub creates the partitions, ahead of time and on demand for late
-- and backfilled readings (src/store/partition.rs); there is no default partition, so no reading
-- ever lands in one partition that grows without bound.
--
-- An existing table keeps its rows where they are: it becomes the one partition of everything up
-- to the end of the day of its newest row (a CHECK constraint added first spares the attach a
-- second scan). No row is copied, and the service comes back as soon as the migration commits.
ALTER TABLE readings RENAME TO readings_before_partitioning;
ALTER TABLE readings_before_partitioning
    RENAME CONSTRAINT readings_pkey TO readings_before_partitioning_pkey;

CREATE TABLE readings (
    sensor_id text COLLATE "C"  NOT NULL,
    ts        timestamptz      NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (sensor_id, ts)
) PARTITION BY RANGE (ts);

DO $$
DECLARE
    upper_bound timestamptz;
BEGIN
    SELECT date_trunc('day', max(ts) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day'
      INTO upper_bound
      FROM readings_before_partitioning;
    IF upper_bound IS NULL THEN
        DROP TABLE readings_before_partitioning;
    ELSE
        EXECUTE format(
            'ALTER TABLE readings_before_partitioning ADD CONSTRAINT readings_before_partitioning_range CHECK (ts < %L)',
            upper_bound);
        EXECUTE format(
            'ALTER TABLE readings ATTACH PARTITION readings_before_partitioning FOR VALUES FROM (MINVALUE) TO (%L)',
            upper_bound);
    END IF;
END
$$;
