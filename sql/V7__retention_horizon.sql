-- The retention horizon: raw readings before it have been dropped (whole partitions), so a
-- reading older than it could no longer be told from a duplicate and is refused. One row; it only
-- moves forward, set by the retention run in the transaction that drops the partitions.
CREATE TABLE retention_horizon (
    only_row boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    horizon  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO retention_horizon DEFAULT VALUES;
