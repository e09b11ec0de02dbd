-- Compaction (SENSORHUB_COMPACT_AFTER): closed partitions rewritten into one row per sensor and
-- UTC day, holding that day's times and values as arrays that TOAST compresses.
--
-- The rows of every reading move to `readings_hot` (the partitioned table, renamed: its
-- partitions, keys and rows stay as they are), and `readings` becomes a view of both stores with
-- the same columns, so SQL written against `readings` keeps working. A `(sensor_id, ts)` is in one
-- of the two stores, never both: compaction moves a partition's rows in one transaction, and a
-- late reading of a compacted day is looked up in both before it is stored beside them.
--
-- Why a day: a sensor reporting once a minute gives 1,440 points a day, enough for TOAST to
-- compress (an hour of it, 60 points, stays under the threshold), while a 1-second sensor's day
-- (86,400 points) is still read whole in milliseconds. Spans follow UTC days whatever the
-- partition width: a partition narrower than a day merges into its day's row.
ALTER TABLE readings RENAME TO readings_hot;

CREATE TABLE readings_compact (
    sensor_id   text COLLATE "C"   NOT NULL,
    day         timestamptz        NOT NULL, -- UTC midnight: the points lie in [day, day + 24h)
    count       integer            NOT NULL,
    first_ts    timestamptz        NOT NULL,
    first_value double precision   NOT NULL,
    last_ts     timestamptz        NOT NULL,
    last_value  double precision   NOT NULL,
    -- The times, ascending: as milliseconds since `day` when every one is a whole millisecond
    -- (half the bytes of a timestamp, and cheaper to compress), else as timestamps.
    ms          integer[],
    ts          timestamptz[],
    value       double precision[] NOT NULL, -- same order
    origin      bytea[],                     -- same order; null when no point has one
    PRIMARY KEY (sensor_id, day),
    CHECK ((ms IS NULL) <> (ts IS NULL))
) WITH (toast_tuple_target = 128); -- compress a sparse sensor's short day too
-- Compression per column, as measured (benches/compaction.sh): lz4 for the millisecond offsets
-- (neither method shrinks them, and pglz spends long trying) and for the values (pglz keeps a
-- 1-second sensor's two-decimal values in about a byte less, at a third of the compaction rate);
-- pglz for timestamps, which it shrinks well.
ALTER TABLE readings_compact ALTER COLUMN ms SET COMPRESSION lz4,
                             ALTER COLUMN ts SET COMPRESSION pglz,
                             ALTER COLUMN value SET COMPRESSION lz4,
                             ALTER COLUMN origin SET COMPRESSION pglz;
CREATE INDEX readings_compact_day ON readings_compact (day);

-- A compacted row's readings. The arrays are unnested in a select list (a ProjectSet, which
-- streams) rather than by unnest() in FROM (a function scan, which first copies every element into
-- a tuple store): a day of a 1-second sensor reads in about half the time. Inlined where it is used.
CREATE FUNCTION sensorhub_unpack(day timestamptz, ts timestamptz[], ms integer[],
                                 value double precision[], origin bytea[])
RETURNS TABLE (ts timestamptz, value double precision, origin bytea)
LANGUAGE sql IMMUTABLE AS $$
    SELECT x.t, x.v, x.o FROM (
        SELECT coalesce(u.t, $1 + u.m * interval '1 millisecond') AS t, u.v, u.o
        FROM (SELECT unnest($2) AS t, unnest($3) AS m, unnest($4) AS v, unnest($5) AS o) u
        OFFSET 0) x -- the time worked out once per reading, not again in each condition on it
$$;

CREATE VIEW readings AS
SELECT sensor_id, ts, value, origin FROM readings_hot
UNION ALL
SELECT c.sensor_id, u.ts, u.value, u.origin
FROM readings_compact c
CROSS JOIN LATERAL sensorhub_unpack(c.day, c.ts, c.ms, c.value, c.origin) u;

-- One sensor's readings in [lo, hi) from both stores, reading only the compacted days that
-- overlap the range: what sensorhub's own queries use instead of filtering the view.
CREATE FUNCTION sensorhub_span(sensor text, lo timestamptz, hi timestamptz)
RETURNS TABLE (ts timestamptz, value double precision, origin bytea)
LANGUAGE sql STABLE AS $$
    SELECT r.ts, r.value, r.origin FROM readings_hot r
    WHERE r.sensor_id = sensor AND r.ts >= lo AND r.ts < hi
    UNION ALL
    SELECT u.ts, u.value, u.origin
    FROM readings_compact c
    CROSS JOIN LATERAL sensorhub_unpack(c.day, c.ts, c.ms, c.value, c.origin) u
    WHERE c.sensor_id = sensor AND c.day > lo - interval '24 hours' AND c.day < hi
      AND c.last_ts >= lo AND c.first_ts < hi AND u.ts >= lo AND u.ts < hi
$$;

-- Every sensor's readings in [lo, hi) from both stores (the backfill of a resolution).
CREATE FUNCTION sensorhub_range(lo timestamptz, hi timestamptz)
RETURNS TABLE (sensor_id text, ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT r.sensor_id, r.ts, r.value FROM readings_hot r
    WHERE r.ts >= lo AND r.ts < hi
    UNION ALL
    SELECT c.sensor_id, u.ts, u.value
    FROM readings_compact c
    CROSS JOIN LATERAL sensorhub_unpack(c.day, c.ts, c.ms, c.value, NULL) u
    WHERE c.day > lo - interval '24 hours' AND c.day < hi
      AND c.last_ts >= lo AND c.first_ts < hi AND u.ts >= lo AND u.ts < hi
$$;

-- One sensor's latest reading before `at`, from both stores: a compacted day is unpacked only when
-- `at` falls inside it; otherwise its last point is a column.
CREATE FUNCTION sensorhub_before(sensor text, at timestamptz)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT x.ts, x.value FROM (
        (SELECT r.ts, r.value FROM readings_hot r
         WHERE r.sensor_id = sensor AND r.ts < at ORDER BY r.ts DESC LIMIT 1)
        UNION ALL
        (SELECT u.ts, u.value
         FROM readings_compact c CROSS JOIN LATERAL sensorhub_unpack(c.day, c.ts, c.ms, c.value, NULL) u
         WHERE c.sensor_id = sensor AND c.day > at - interval '24 hours' AND c.day < at
           AND c.first_ts < at AND c.last_ts >= at AND u.ts < at
         ORDER BY u.ts DESC LIMIT 1)
        UNION ALL
        (SELECT c.last_ts, c.last_value FROM readings_compact c
         WHERE c.sensor_id = sensor AND c.day < at AND c.last_ts < at
         ORDER BY c.day DESC LIMIT 1)
    ) x
    ORDER BY x.ts DESC LIMIT 1
$$;

-- One sensor's earliest reading at or after `at`, from both stores.
CREATE FUNCTION sensorhub_after(sensor text, at timestamptz)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT x.ts, x.value FROM (
        (SELECT r.ts, r.value FROM readings_hot r
         WHERE r.sensor_id = sensor AND r.ts >= at ORDER BY r.ts LIMIT 1)
        UNION ALL
        (SELECT u.ts, u.value
         FROM readings_compact c CROSS JOIN LATERAL sensorhub_unpack(c.day, c.ts, c.ms, c.value, NULL) u
         WHERE c.sensor_id = sensor AND c.day > at - interval '24 hours' AND c.day <= at
           AND c.first_ts < at AND c.last_ts >= at AND u.ts >= at
         ORDER BY u.ts LIMIT 1)
        UNION ALL
        (SELECT c.first_ts, c.first_value FROM readings_compact c
         WHERE c.sensor_id = sensor AND c.day > at - interval '24 hours' AND c.first_ts >= at
         ORDER BY c.day LIMIT 1)
    ) x
    ORDER BY x.ts LIMIT 1
$$;

-- One sensor's newest `n` readings in [lo, hi), newest first: the hot ones by the index, and of
-- the compacted days only as many, newest first, as can hold them (a day is skipped once the days
-- after it, but the newest, which may reach past `hi`, hold `n` readings).
CREATE FUNCTION sensorhub_newest(sensor text, lo timestamptz, hi timestamptz, n bigint)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT x.ts, x.value FROM (
        (SELECT r.ts, r.value FROM readings_hot r
         WHERE r.sensor_id = sensor AND r.ts >= lo AND r.ts < hi
         ORDER BY r.ts DESC LIMIT n)
        UNION ALL
        (SELECT u.ts, u.value
         FROM (SELECT c.day, c.ts, c.ms, c.value,
                      coalesce(sum(c.count) OVER (ORDER BY c.day DESC
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 2 PRECEDING), 0) AS newer
               FROM readings_compact c
               WHERE c.sensor_id = sensor AND c.day > lo - interval '24 hours' AND c.day < hi
                 AND c.last_ts >= lo AND c.first_ts < hi) d
         CROSS JOIN LATERAL sensorhub_unpack(d.day, d.ts, d.ms, d.value, NULL) u
         WHERE d.newer < n AND u.ts >= lo AND u.ts < hi)
    ) x
    ORDER BY x.ts DESC LIMIT n
$$;

-- The given sensors' compacted days taken apart again: their points moved back into readings_hot
-- (a compacted partition is kept, empty), where a correction or a deletion can change them; the
-- next compaction packs them again. Returns the points moved.
CREATE FUNCTION sensorhub_expand(sensors text[], days timestamptz[])
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH gone AS (
        DELETE FROM readings_compact c
        USING unnest(sensors, days) AS k(sensor_id, day)
        WHERE c.sensor_id = k.sensor_id AND c.day = k.day
        RETURNING c.sensor_id, c.day, c.ts, c.ms, c.value, c.origin
    ), moved AS (
        INSERT INTO readings_hot (sensor_id, ts, value, origin)
        SELECT g.sensor_id, u.ts, u.value, u.origin
        FROM gone g CROSS JOIN LATERAL sensorhub_unpack(g.day, g.ts, g.ms, g.value, g.origin) u
        RETURNING 1
    )
    SELECT count(*) FROM moved
$$;

-- The functions below are those of V10 and V11, reading through sensorhub_span, _before and
-- _after instead of filtering `readings`: the same answers without unpacking a sensor's
-- compacted days outside the range asked for.
CREATE OR REPLACE FUNCTION sensorhub_windows(
    sensor      text,
    range_from  timestamptz DEFAULT NULL,
    range_to    timestamptz DEFAULT NULL,
    window_size text DEFAULT '1d',
    zone        text DEFAULT 'UTC',
    fill        text DEFAULT 'none')
RETURNS TABLE (
    bucket      timestamptz,
    bucket_end  timestamptz,
    count       bigint,
    sum         double precision,
    min         double precision,
    max         double precision,
    mean        double precision,
    first_ts    timestamptz,
    first_value double precision,
    last_ts     timestamptz,
    last_value  double precision,
    diff        double precision,
    increase    double precision,
    rate        double precision,
    source      text)
LANGUAGE plpgsql STABLE AS $fn$
#variable_conflict use_column
DECLARE
    unit      text;        -- day, week, month or year; null for a stored resolution
    step      interval;
    width     bigint;      -- seconds of a stored resolution
    src       text;        -- the stored resolution the windows are built from, or 'raw'
    first_at  timestamptz;
    last_at   timestamptz;
    lo        timestamptz; -- readings in [lo, hi) make the windows
    hi        timestamptz;
    configured text[];
BEGIN
    IF fill IS NULL OR fill NOT IN ('none', 'null', 'previous', 'linear') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('fill=%s is not one of none, null, previous, linear', fill);
    END IF;
    PERFORM now() AT TIME ZONE zone; -- an unknown zone is refused here, naming it
    SELECT string_to_array(d.value, ',') INTO configured
    FROM deployment d WHERE d.name = 'resolutions';
    -- A resolution still being backfilled lacks its older windows.
    configured := ARRAY(SELECT c FROM unnest(configured) c
                        WHERE NOT EXISTS (SELECT 1 FROM deployment d
                                          WHERE d.name = 'backfill:' || c));
    CASE window_size
        WHEN '1d' THEN unit := 'day';   step := interval '1 day';
        WHEN '1w' THEN unit := 'week';  step := interval '1 week';
        WHEN '1mo' THEN unit := 'month'; step := interval '1 month';
        WHEN '1y' THEN unit := 'year';  step := interval '1 year';
        ELSE
            width := sensorhub_resolution_seconds(window_size);
            IF width IS NULL OR NOT window_size = ANY (configured) THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('window %s is neither 1d, 1w, 1mo, 1y nor a stored resolution (%s)',
                                     window_size, array_to_string(configured, ', '));
            END IF;
            src := window_size;
    END CASE;

    SELECT s.first_seen, s.last_seen INTO first_at, last_at FROM sensors s WHERE s.sensor_id = sensor;
    IF first_at IS NULL AND (range_from IS NULL OR range_to IS NULL) THEN
        RETURN; -- no readings, and no range to fill
    END IF;
    -- Unbounded: from the window holding the first reading.
    range_from := coalesce(range_from,
        CASE WHEN unit IS NULL THEN to_timestamp(floor(extract(epoch FROM first_at) / width) * width)
             ELSE date_trunc(unit, first_at AT TIME ZONE zone) AT TIME ZONE zone END);
    range_to := coalesce(range_to, last_at);

    IF unit IS NULL AND fill = 'none' THEN
        -- The stored windows as they are: no window to make, however long the range.
        RETURN QUERY
        SELECT a.bucket, a.bucket + make_interval(secs => width), a.count, a.sum, a.min, a.max,
               a.sum / a.count, a.first_ts, a.first_value, a.last_ts, a.last_value,
               a.last_value - a.first_value, a.increase, a.increase / width, src
        FROM aggregates a
        WHERE a.sensor_id = sensor AND a.resolution = src
          AND a.bucket >= range_from AND a.bucket <= range_to
        ORDER BY a.bucket;
        RETURN;
    END IF;
    IF unit IS NOT NULL THEN
        -- The coarsest stored resolution that every boundary is a multiple of.
        SELECT c INTO src
        FROM unnest(configured) c
        WHERE sensorhub_resolution_seconds(c) IS NOT NULL
          AND NOT EXISTS (
              SELECT 1
              FROM sensorhub_spans(range_from, range_to, unit, step, width, zone) s,
                   LATERAL (VALUES (s.start), (s.stop)) b(at)
              WHERE extract(epoch FROM b.at) % sensorhub_resolution_seconds(c) <> 0)
        ORDER BY sensorhub_resolution_seconds(c) DESC
        LIMIT 1;
        src := coalesce(src, 'raw');
    END IF;
    SELECT min(s.start), max(s.stop) INTO lo, hi
    FROM sensorhub_spans(range_from, range_to, unit, step, width, zone) s;
    IF lo IS NULL THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH spans AS (
        SELECT * FROM sensorhub_spans(range_from, range_to, unit, step, width, zone)
    ), stored AS (
        SELECT CASE WHEN unit IS NULL THEN a.bucket
                    ELSE date_trunc(unit, a.bucket AT TIME ZONE zone) AT TIME ZONE zone END AS start,
               sum(a.count)::bigint AS count, sum(a.sum) AS sum, min(a.min) AS min, max(a.max) AS max,
               (array_agg(a.first_ts ORDER BY a.first_ts))[1] AS first_ts,
               (array_agg(a.first_value ORDER BY a.first_ts))[1] AS first_value,
               (array_agg(a.last_ts ORDER BY a.last_ts DESC))[1] AS last_ts,
               (array_agg(a.last_value ORDER BY a.last_ts DESC))[1] AS last_value,
               sum(a.increase) AS increase
        FROM aggregates a
        WHERE src <> 'raw' AND a.sensor_id = sensor AND a.resolution = src
          AND a.bucket >= lo AND a.bucket < hi
        GROUP BY 1
    ), steps AS (
        SELECT r.ts, r.value,
               coalesce(lag(r.value) OVER (ORDER BY r.ts),
                        CASE WHEN row_number() OVER (ORDER BY r.ts) = 1
                             THEN (SELECT b.value FROM sensorhub_before(sensor, lo) b) END) AS previous
        FROM sensorhub_span(sensor, lo, hi) r
        WHERE src = 'raw'
    ), raw AS (
        SELECT date_trunc(unit, s.ts AT TIME ZONE zone) AT TIME ZONE zone AS start,
               count(*) AS count, sum(s.value) AS sum, min(s.value) AS min, max(s.value) AS max,
               (array_agg(s.ts ORDER BY s.ts))[1] AS first_ts,
               (array_agg(s.value ORDER BY s.ts))[1] AS first_value,
               (array_agg(s.ts ORDER BY s.ts DESC))[1] AS last_ts,
               (array_agg(s.value ORDER BY s.ts DESC))[1] AS last_value,
               sum(sensorhub_step(s.previous, s.value)) AS increase
        FROM steps s
        GROUP BY 1
    ), joined AS (
        SELECT w.start, w.stop, d.count, d.sum, d.min, d.max, d.first_ts, d.first_value,
               d.last_ts, d.last_value, d.increase,
               count(d.count) OVER (ORDER BY w.start) AS before_group,
               count(d.count) OVER (ORDER BY w.start DESC) AS after_group
        FROM spans w
        LEFT JOIN (SELECT * FROM stored UNION ALL SELECT * FROM raw) d ON d.start = w.start
    ), edges AS (
        SELECT b.ts AS before_ts, b.value AS before_value, a.ts AS after_ts, a.value AS after_value
        FROM (SELECT 1) one
        LEFT JOIN sensorhub_before(sensor, lo) b ON true
        LEFT JOIN sensorhub_after(sensor, hi) a ON true
        WHERE fill IN ('previous', 'linear')
    ), neighbours AS (
        SELECT j.*,
               coalesce(first_value(j.last_ts) OVER (PARTITION BY j.before_group ORDER BY j.start),
                        CASE WHEN j.before_group = 0 THEN e.before_ts END) AS prev_ts,
               coalesce(first_value(j.last_value) OVER (PARTITION BY j.before_group ORDER BY j.start),
                        CASE WHEN j.before_group = 0 THEN e.before_value END) AS prev_value,
               coalesce(first_value(j.first_ts) OVER (PARTITION BY j.after_group ORDER BY j.start DESC),
                        CASE WHEN j.after_group = 0 THEN e.after_ts END) AS next_ts,
               coalesce(first_value(j.first_value) OVER (PARTITION BY j.after_group ORDER BY j.start DESC),
                        CASE WHEN j.after_group = 0 THEN e.after_value END) AS next_value
        FROM joined j LEFT JOIN edges e ON true
    ), filled AS (
        SELECT n.*,
               CASE WHEN n.count IS NOT NULL THEN NULL
                    WHEN fill = 'previous' THEN n.prev_value
                    WHEN fill = 'linear' AND n.next_ts > n.prev_ts THEN
                        n.prev_value + (n.next_value - n.prev_value)
                            * extract(epoch FROM n.start - n.prev_ts)::float8
                            / extract(epoch FROM n.next_ts - n.prev_ts)::float8
               END AS carried
        FROM neighbours n
    )
    SELECT f.start, f.stop, coalesce(f.count, 0)::bigint, f.sum,
           coalesce(f.min, f.carried), coalesce(f.max, f.carried),
           coalesce(f.sum / f.count, f.carried),
           f.first_ts, coalesce(f.first_value, f.carried),
           f.last_ts, coalesce(f.last_value, f.carried),
           coalesce(f.last_value - f.first_value, f.carried - f.carried),
           coalesce(f.increase, 0),
           coalesce(f.increase, 0) / extract(epoch FROM f.stop - f.start)::float8,
           src
    FROM filled f
    WHERE fill <> 'none' OR f.count IS NOT NULL
    ORDER BY f.start;
END
$fn$;

-- One sensor's windows recomputed from the raw readings: those holding the given instants and
-- those holding the first reading after each (whose step from its previous reading changed).
-- Every field as a GROUP BY over the readings gives it, `increase` from lag() with the reading
-- before the window looked up; a window left without readings is removed. What a deletion
-- changes, for every resolution in `labels`.
CREATE OR REPLACE FUNCTION sensorhub_recompute(sensor text, instants timestamptz[], labels text[])
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH points AS (
        SELECT i AS ts FROM unnest(instants) AS i
        UNION
        SELECT n.ts FROM unnest(instants) AS i
        CROSS JOIN LATERAL sensorhub_after(sensor, i + interval '1 microsecond') n
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
                                  (SELECT p.value FROM sensorhub_before(sensor, w.bucket) p)) AS previous
                  FROM sensorhub_span(sensor, w.bucket,
                                      w.bucket + make_interval(secs => w.seconds)) r) inside
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
CREATE OR REPLACE FUNCTION sensorhub_replace(ids text[], times timestamptz[], olds double precision[],
                                  labels text[])
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH replaced AS (
        SELECT * FROM unnest(ids, times, olds) AS r(sensor_id, ts, old)
    ), affected AS (
        SELECT sensor_id, ts FROM replaced
        UNION
        SELECT r.sensor_id, n.ts FROM replaced r
        CROSS JOIN LATERAL sensorhub_after(r.sensor_id, r.ts + interval '1 microsecond') n
    ), changes AS MATERIALIZED (
        SELECT a.sensor_id, x.ts, x.value AS new, coalesce(rx.old, x.value) AS old,
               sensorhub_step(p.value, x.value)
                 - sensorhub_step(coalesce(rp.old, p.value), coalesce(rx.old, x.value)) AS step
        FROM affected a
        CROSS JOIN LATERAL sensorhub_span(a.sensor_id, a.ts, a.ts + interval '1 microsecond') x
        LEFT JOIN LATERAL sensorhub_before(a.sensor_id, x.ts) p ON true
        LEFT JOIN replaced rx ON rx.sensor_id = a.sensor_id AND rx.ts = x.ts
        LEFT JOIN replaced rp ON rp.sensor_id = a.sensor_id AND rp.ts = p.ts
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
                       THEN (SELECT min(r.value)
                             FROM sensorhub_span(a.sensor_id, a.bucket, a.bucket + w.width) r)
                       ELSE least(a.min, w.min_new) END,
            max = CASE WHEN a.max = ANY (w.gone)
                       THEN (SELECT max(r.value)
                             FROM sensorhub_span(a.sensor_id, a.bucket, a.bucket + w.width) r)
                       ELSE greatest(a.max, w.max_new) END,
            first_value = CASE WHEN a.first_ts = ANY (w.times)
                               THEN (SELECT r.value FROM sensorhub_span(a.sensor_id, a.first_ts,
                                     a.first_ts + interval '1 microsecond') r)
                               ELSE a.first_value END,
            last_value = CASE WHEN a.last_ts = ANY (w.times)
                              THEN (SELECT r.value FROM sensorhub_span(a.sensor_id, a.last_ts,
                                     a.last_ts + interval '1 microsecond') r)
                              ELSE a.last_value END
        FROM windows w
        WHERE a.sensor_id = w.sensor_id AND a.resolution = w.resolution AND a.bucket = w.bucket
        RETURNING 1
    )
    SELECT count(*) FROM updated
$$;
