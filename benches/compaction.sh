#!/usr/bin/env bash
# Compaction (SENSORHUB_COMPACT_AFTER) measured through sensorhub itself: for each kind of sensor,
# days of readings written into partitions of `readings_hot`, then `sensorhub compact`; bytes per
# reading before and after (heap, TOAST and indexes of every partition and of readings_compact),
# the compaction rate, and the time to read a day and a year of one sensor, raw and as windows
# (calendar days from the raw readings), before and after (median of 11, EXPLAIN ANALYZE's
# execution time). Then the other path the issue asked about: appending new readings straight
# into a day's compacted row, against inserting rows.
#
#   benches/compaction.sh                  # 12 sensors per kind: a million readings at 1 s a day
#   SENSORS=100 DAYS=3 benches/compaction.sh
#
# Needs PostgreSQL up (scripts/services.sh) and a release build (it builds one); works in a
# scratch database it drops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SENSORS=${SENSORS:-12}
DAYS=${DAYS:-1}
cargo build --release --quiet --bin sensorhub
db=compaction_bench_$$
psql() { command psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -Atq "$@"; }
cleanup() { psql -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
psql -c "create database $db"

python3 - "$db" "$SENSORS" "$DAYS" <<'PY'
import os, statistics, subprocess, sys, time

db, sensors, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
url = f"postgres://postgres@127.0.0.1:5432/{db}"

def sql(text):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atq", "-c", text],
        check=True, capture_output=True, text=True)
    return out.stdout.strip()

def compact():
    env = {"PATH": os.environ["PATH"], "SENSORHUB_DATABASE_URL": url, "SENSORHUB_COMPACT_AFTER": "1d",
           "SENSORHUB_LOG": "warn"}
    started = time.monotonic()
    out = subprocess.run(["target/release/sensorhub", "compact"], env=env, check=True,
                         capture_output=True, text=True).stdout
    took = time.monotonic() - started
    rows = [line.split("\t") for line in out.splitlines() if line]
    return sum(int(r[1]) for r in rows), sum(float(r[3]) for r in rows), took

def median_ms(query):
    times = []
    for _ in range(11):
        plan = sql(f"explain (analyze, timing off, summary on, format text) {query}")
        times.append(float(plan.split("Execution Time:")[1].split()[0]))
    return statistics.median(times)

def stored_bytes():
    return int(sql("select sum(pg_total_relation_size(c.oid)) from pg_class c "
                   "where c.oid in (select inhrelid from pg_inherits where inhparent = 'readings_hot'::regclass) "
                   "or c.relname = 'readings_compact'"))

compact()  # migrates the empty database
# (name, step, days, value expression over sensor s and point number n)
kinds = [
    ("1 s, two decimals", "1 second", 86400, days,
     "round((20 + 5 * sin(n / 3600.0 + s) + (random() - 0.5) * 0.2)::numeric, 2)::float8"),
    ("1 min, two decimals", "1 minute", 1440, 20 * days,
     "round((20 + 5 * sin(n / 60.0 + s) + (random() - 0.5) * 0.2)::numeric, 2)::float8"),
    ("1 s, noisy", "1 second", 86400, days, "random() * 1000"),
    ("1 min, counter", "1 minute", 1440, 20 * days, "(n * 3 + (n * 7919 + s) % 5)::float8"),
]
start = "2025-06-01"
print(f"{sensors} sensors per kind; bytes per reading (heap, TOAST and indexes); reads of sensor-1, median ms")
print("| kind | readings | bytes before | bytes after | compaction, readings/s | day read: rows / compacted | day as hour windows: rows / compacted |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, step, per_day, span, value in kinds:
    sql("truncate readings_compact")
    for old in sql("select inhrelid::regclass::text from pg_inherits where inhparent = 'readings_hot'::regclass").split():
        sql(f"drop table {old}")
    for d in range(span):
        sql(f"create table p{d} partition of readings_hot for values from "
            f"('{start}'::timestamptz + {d} * interval '1 day') to ('{start}'::timestamptz + {d + 1} * interval '1 day')")
    sql(f"insert into readings_hot (sensor_id, ts, value) "
        f"select 'sensor-' || s, '{start}'::timestamptz + (n * interval '{step}'), {value} "
        f"from generate_series(1, {sensors}) s, generate_series(0, {per_day * span - 1}) n")
    sql("vacuum analyze")
    n = int(sql("select count(*) from readings_hot"))
    before = stored_bytes() / n
    day = f"'{start}'::timestamptz"
    raw_day = f"select ts, value from sensorhub_span('sensor-1', {day}, {day} + interval '1 day')"
    windows_day = (f"select * from sensorhub_windows('sensor-1', {day}, {day} + interval '23 hours', "
                   f"'1d', 'Asia/Kolkata', 'none')")
    hot_ms = median_ms(raw_day), median_ms(windows_day)
    moved, pack_seconds, took = compact()
    sql("vacuum analyze")
    after = stored_bytes() / n
    cold_ms = median_ms(raw_day), median_ms(windows_day)
    print(f"| {name} | {n:,} | {before:.1f} | {after:.1f} | {moved / pack_seconds:,.0f} ({moved / took:,.0f} with start-up) | "
          f"{hot_ms[0]:.1f} / {cold_ms[0]:.1f} | {hot_ms[1]:.1f} / {cold_ms[1]:.1f} |")

# A year of one 1-minute sensor, read raw and as calendar months, hot and compacted.
sql("truncate readings_compact")
for old in sql("select inhrelid::regclass::text from pg_inherits where inhparent = 'readings_hot'::regclass").split():
    sql(f"drop table {old}")
sql(f"create table year_p partition of readings_hot for values from ('{start}') to ('{start}'::timestamptz + interval '365 days')")
sql(f"insert into readings_hot (sensor_id, ts, value) select 'year', '{start}'::timestamptz + n * interval '1 minute', "
    f"round((20 + 5 * sin(n / 60.0)) ::numeric, 2)::float8 from generate_series(0, 365 * 1440 - 1) n")
sql("vacuum analyze")
year_raw = f"select ts, value from sensorhub_span('year', '{start}', '{start}'::timestamptz + interval '365 days')"
year_windows = f"select * from sensorhub_windows('year', '{start}', '{start}'::timestamptz + interval '364 days', '1mo', 'Asia/Kolkata', 'none')"
year_hot = median_ms(year_raw), median_ms(year_windows)
compact()
year_cold = median_ms(year_raw), median_ms(year_windows)
print()
print(f"A year of one 1-minute sensor (525,600 readings), median ms, rows / compacted: raw "
      f"{year_hot[0]:.0f} / {year_cold[0]:.0f}, calendar months from the raw readings {year_hot[1]:.0f} / {year_cold[1]:.0f}")

# New readings straight into the compacted form: each batch (a sensor's 10 new readings, as a
# batch of 1,000 readings over 100 sensors brings) appended to the day's row, against the same
# readings inserted as rows.
sql("truncate readings_compact")
sql("create table append_rows (sensor_id text collate \"C\", ts timestamptz, value float8, primary key (sensor_id, ts))")
sql("insert into readings_compact (sensor_id, day, count, first_ts, first_value, last_ts, last_value, ts, value, origin) select 'a-' || s, '2025-06-01', 43200, '2025-06-01', 0, '2025-06-01'::timestamptz + interval '43199 s', 0, "
    "array(select '2025-06-01'::timestamptz + n * interval '1 s' from generate_series(0, 43199) n), "
    "array(select round(random()::numeric * 100, 2)::float8 from generate_series(0, 43199) n), null from generate_series(1, 100) s")
batches = 20
append = ("update readings_compact c set ts = c.ts || array(select c.last_ts + k * interval '1 s' from generate_series(1, 10) k), "
          "value = c.value || array(select round(random()::numeric * 100, 2)::float8 from generate_series(1, 10) k), "
          "count = c.count + 10, last_ts = c.last_ts + interval '10 s' where c.day = '2025-06-01'")
rows = ("insert into append_rows select 'a-' || s, '2025-06-01'::timestamptz + ({i} * 10 + k) * interval '1 s', random() "
        "from generate_series(1, 100) s, generate_series(1, 10) k")
started = time.monotonic()
for i in range(batches):
    sql(append)
appended = batches * 1000 / (time.monotonic() - started)
started = time.monotonic()
for i in range(batches):
    sql(rows.format(i=i))
inserted = batches * 1000 / (time.monotonic() - started)
print()
print(f"New readings into a half-full day (43,200 points per sensor, 100 sensors), {batches} batches of 1,000: "
      f"appended to the compacted rows {appended:,.0f} readings/s, inserted as rows {inserted:,.0f} readings/s "
      f"(one psql per batch in both)")
PY
