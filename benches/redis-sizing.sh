#!/usr/bin/env bash
# Bytes of Redis memory one stream entry takes, per form, as docs/delivery.md's sizing table
# gives them: a private redis-server on a free port, 100,000 entries (20,000 arrays) appended
# through redis-cli --pipe, INFO's used_memory before and after. Needs redis-server, redis-cli
# and python3.
set -euo pipefail
port=${PORT:-16398}
dir=$(mktemp -d)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
redis-server --port "$port" --save "" --appendonly no --daemonize yes --dir "$dir" >/dev/null
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
used() { redis-cli -p "$port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }
measure() { # measure LABEL ENTRIES READINGS_PER_ENTRY PYTHON
    local before after
    before=$(used)
    python3 -c "$4" | redis-cli -p "$port" --pipe >/dev/null
    after=$(used)
    printf '| %s | %d | %d |\n' "$1" $(((after - before) / $2)) $(((after - before) / ($2 * $3)))
    redis-cli -p "$port" flushall >/dev/null
}
resp='
import sys
def xadd(fields):
    args = ["XADD", "s", "*"] + [x for kv in fields for x in kv]
    sys.stdout.write("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a.encode()), a) for a in args))
'
echo '| form | bytes per entry | bytes per reading |'
echo '| --- | --- | --- |'
measure 'JSON reading with a timestamp' 100000 1 "$resp
for i in range(100000):
    xadd([('data', '{\"sensor\":\"station-%d.temperature\",\"value\":%d.25,\"timestamp\":\"2026-12-07T10:%02d:%02d.%03dZ\"}' % (i % 1000, i % 40, (i // 60) % 60, i % 60, i % 1000))])"
measure 'JSON reading without a timestamp' 100000 1 "$resp
for i in range(100000):
    xadd([('data', '{\"sensor\":\"station-%d.temperature\",\"value\":%d.25}' % (i % 1000, i % 40))])"
measure 'JSON array of 10 readings' 20000 10 "$resp
for i in range(20000):
    xadd([('data', '[' + ','.join('{\"sensor\":\"station-%d.t%d\",\"value\":%d.25,\"timestamp\":\"2026-12-07T10:00:%02dZ\"}' % (i % 1000, k, k, i % 60) for k in range(10)) + ']')])"
measure 'MQTT message of one reading' 100000 1 "$resp
for i in range(100000):
    xadd([('data', '{\"sensor\":\"t\",\"value\":%d.25}' % (i % 40)), ('topic', 'sensors/station-%d/temperature' % (i % 1000)), ('form', 'json'), ('prefix', 'station-%d' % (i % 1000))])"
