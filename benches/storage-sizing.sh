#!/usr/bin/env bash
# Bytes per reading in PostgreSQL: today's layout (a row per reading in `readings`, primary key
# (sensor_id, ts)) against one row per sensor and span holding its timestamps and values as
# arrays (TOAST-compressed with pglz or lz4; a span of an hour or a day), for the sensors people
# run: regular 1 s and 1 min with two-decimal values, noisy full-precision values, and counters.
# Also the time to read a day of one sensor from each layout (median of 11, EXPLAIN ANALYZE's
# execution time). The measurements behind the compaction design (issue: closed partitions stored
# compactly); nothing in sensorhub uses the array layout yet.
#
#   benches/storage-sizing.sh              # 100 sensors at 1 s for a day, the others alike
#   SENSORS=20 benches/storage-sizing.sh   # smaller
#
# Needs PostgreSQL up (scripts/services.sh); works in a scratch database it drops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SENSORS=${SENSORS:-100}
db=storage_sizing_$$
psql() { command psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -Atq "$@"; }
cleanup() { psql -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
psql -c "create database $db"

python3 - "$db" "$SENSORS" <<'PY'
import statistics, subprocess, sys

db, sensors = sys.argv[1], int(sys.argv[2])

def sql(text):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", text],
        check=True, capture_output=True, text=True)
    return out.stdout.strip()

# (name, step, points per sensor, value expression over sensor s and point number n)
kinds = [
    ("1 s, two decimals", "1 second", 86400,
     "round((20 + 5 * sin(n / 3600.0 + s) + (random() - 0.5) * 0.2)::numeric, 2)::float8"),
    ("1 min, two decimals", "1 minute", 7 * 1440,
     "round((20 + 5 * sin(n / 60.0 + s) + (random() - 0.5) * 0.2)::numeric, 2)::float8"),
    ("1 s, noisy", "1 second", 86400, "random() * 1000"),
    ("1 min, counter", "1 minute", 7 * 1440, "(n * 3 + (n * 7919 + s) % 5)::float8"),
]

print(f"{sensors} sensors per kind; bytes per reading (heap, TOAST and indexes); a day of one sensor, median ms")
print("| kind | rows (today) | arrays per hour, pglz | arrays per hour, lz4 | arrays per day, lz4 | day read: rows | day read: hour arrays (lz4) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, step, points, value in kinds:
    sql("drop table if exists rows_t, hour_pglz, hour_lz4, day_lz4")
    sql('create table rows_t (sensor_id text collate "C" not null, ts timestamptz not null, '
        'value double precision not null, origin bytea, primary key (sensor_id, ts))')
    sql(f"insert into rows_t (sensor_id, ts, value) "
        f"select 'sensor-' || s, '2025-06-01'::timestamptz + (n * interval '{step}'), {value} "
        f"from generate_series(1, {sensors}) s, generate_series(0, {points - 1}) n")
    for table, span, method in [("hour_pglz", "hour", "pglz"), ("hour_lz4", "hour", "lz4"), ("day_lz4", "day", "lz4")]:
        sql(f'create table {table} (sensor_id text collate "C" not null, span timestamptz not null, '
            f'ts timestamptz[] compression {method} not null, value float8[] compression {method} not null, '
            f'primary key (sensor_id, span))')
        # From the rows each time, so that every table compresses its own values.
        sql(f"insert into {table} select sensor_id, date_trunc('{span}', ts), array_agg(ts order by ts), "
            f"array_agg(value order by ts) from rows_t group by 1, 2")
    sql("vacuum analyze")
    n = int(sql("select count(*) from rows_t"))
    size = {t: int(sql(f"select pg_total_relation_size('{t}')")) / n
            for t in ["rows_t", "hour_pglz", "hour_lz4", "day_lz4"]}

    def median_ms(query):
        times = []
        for _ in range(11):
            plan = sql(f"explain (analyze, timing off, summary on, format text) {query}")
            times.append(float(plan.split("Execution Time:")[1].split()[0]))
        return statistics.median(times)

    day = "ts >= '2025-06-01' and ts < '2025-06-02'"
    rows_ms = median_ms(f"select ts, value from rows_t where sensor_id = 'sensor-1' and {day}")
    arrays_ms = median_ms(
        "select u.ts, u.value from hour_lz4 h, unnest(h.ts, h.value) as u(ts, value) "
        "where h.sensor_id = 'sensor-1' and h.span >= '2025-06-01' and h.span < '2025-06-02' "
        "and u.ts >= '2025-06-01' and u.ts < '2025-06-02'")
    print(f"| {name} | {size['rows_t']:.1f} | {size['hour_pglz']:.1f} | {size['hour_lz4']:.1f} | "
          f"{size['day_lz4']:.1f} | {rows_ms:.2f} | {arrays_ms:.2f} |")
PY
