-- Raw readings. The primary key is the raw key of the delivery guarantee: a reading with the same
-- sensor and timestamp as a stored one is a duplicate and is skipped.
CREATE TABLE readings (
    sensor_id text             NOT NULL,
    ts        timestamptz      NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (sensor_id, ts)
);
