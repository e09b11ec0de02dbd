-- sensorhub_windows(sensor, from, to, window, zone, fill): one sensor's windows as people ask
-- for them — calendar days, weeks (from Monday), months and years from local midnight in an IANA
-- time zone, or a stored resolution — with `increase` and `rate`, and the empty windows filled.
-- The read API answers from this function, so SQL and HTTP give the same numbers.
--
-- Calendar windows are built from the coarsest stored resolution whose windows tile every one
-- of them (every boundary a multiple of its width since the epoch: `1h` for whole-hour zones,
-- `1m` for zones at :30 or :45), or from the raw readings where none does; the `source` column
-- says which. Either way every field equals a GROUP BY over the raw readings with the same
-- boundaries: `increase` is a sum of per-reading steps, so it adds up across windows.
--
-- Windows are those whose start lies in [from, to] (null: from the window of the sensor's first
-- reading, to its last reading). fill: 'none' (windows with readings only), 'null' (every window; empty ones with
-- count 0, increase 0 and null values), 'previous' (empty ones carry the value of the reading
-- before them), 'linear' (empty ones take the value interpolated at their start between the
-- readings either side).

CREATE FUNCTION sensorhub_resolution_seconds(label text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT substring(label FROM '^[0-9]+')::bigint
           * CASE right(label, 1) WHEN 'd' THEN 86400 WHEN 'h' THEN 3600
                                  WHEN 'm' THEN 60 ELSE 1 END
    WHERE label ~ '^[0-9]+[smhd]$'
$$;

-- The UTC offset of `zone` at `at`, in seconds east: what an RFC 3339 time in that zone ends with.
CREATE FUNCTION sensorhub_utc_offset(at timestamptz, zone text) RETURNS integer
LANGUAGE sql STABLE STRICT AS $$
    SELECT extract(epoch FROM (at AT TIME ZONE zone) - (at AT TIME ZONE 'UTC'))::integer
$$;

-- The windows whose start lies in [range_from, range_to]: calendar ones (unit and step given) from
-- local midnight in `zone`, or epoch-aligned ones `width` seconds long.
CREATE FUNCTION sensorhub_spans(range_from timestamptz, range_to timestamptz, unit text,
                                step interval, width bigint, zone text)
RETURNS TABLE (start timestamptz, stop timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT t, t + make_interval(secs => width)
    FROM generate_series(to_timestamp(ceil(extract(epoch FROM range_from) / width) * width),
                         range_to, make_interval(secs => width)) t
    WHERE unit IS NULL
    UNION ALL
    SELECT l AT TIME ZONE zone, (l + step) AT TIME ZONE zone
    FROM generate_series(date_trunc(unit, range_from AT TIME ZONE zone),
                         range_to AT TIME ZONE zone, step) l
    WHERE unit IS NOT NULL AND l AT TIME ZONE zone >= range_from
$$;

CREATE FUNCTION sensorhub_windows(
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
                             THEN (SELECT p.value FROM readings p
                                   WHERE p.sensor_id = sensor AND p.ts < lo
                                   ORDER BY p.ts DESC LIMIT 1) END) AS previous
        FROM readings r
        WHERE src = 'raw' AND r.sensor_id = sensor AND r.ts >= lo AND r.ts < hi
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
        SELECT (SELECT p.ts FROM readings p WHERE p.sensor_id = sensor AND p.ts < lo
                ORDER BY p.ts DESC LIMIT 1) AS before_ts,
               (SELECT p.value FROM readings p WHERE p.sensor_id = sensor AND p.ts < lo
                ORDER BY p.ts DESC LIMIT 1) AS before_value,
               (SELECT p.ts FROM readings p WHERE p.sensor_id = sensor AND p.ts >= hi
                ORDER BY p.ts LIMIT 1) AS after_ts,
               (SELECT p.value FROM readings p WHERE p.sensor_id = sensor AND p.ts >= hi
                ORDER BY p.ts LIMIT 1) AS after_value
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
