-- One row per sensor for the "latest" views. last_seen is the newest reading's timestamp and
-- last_value its value, so a late reading never replaces a newer one.
CREATE TABLE sensors (
    sensor_id  text PRIMARY KEY,
    unit       text,
    first_seen timestamptz      NOT NULL,
    last_seen  timestamptz      NOT NULL,
    last_value double precision NOT NULL
);
CREATE INDEX sensors_last_seen ON sensors (last_seen);
