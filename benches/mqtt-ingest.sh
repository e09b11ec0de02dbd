#!/usr/bin/env bash
# MQTT ingest, end to end: N readings (one per message, each with its own timestamp) published
# at QoS 1 by 4 mosquitto_pub processes to a Mosquitto of the run's own (no cap on queued
# messages, otherwise defaults), through the release sensorhub on a fresh database and stream,
# until the last reading is committed. Needs Debian's mosquitto and mosquitto-clients, and Redis
# and PostgreSQL up (scripts/services.sh).
#
#   cargo build --release && N=100000 benches/mqtt-ingest.sh
#   SENSORHUB_BINARY=path/to/other/sensorhub N=100000 benches/mqtt-ingest.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
PORT=${PORT:-18840}
HTTP=${HTTP:-18841}
dir=$(mktemp -d)
chmod 777 "$dir"
db=mqtt_ingest_$$
stream=mqtt-ingest:$$
cleanup() {
    kill "${hub:-}" "${broker:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -Atqc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
    redis-cli del "$stream" "$stream:dead" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' \
    "$PORT" >"$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
broker=$!
python3 - "$N" >"$dir/lines" <<'PY'
import datetime, sys
n = int(sys.argv[1])
base = datetime.datetime(2025, 6, 1, tzinfo=datetime.timezone.utc)
for i in range(n):
    ts = base + datetime.timedelta(seconds=i // 1000, microseconds=i % 1000)
    print('{"sensor":"b%d","value":%d,"timestamp":"%s"}' % (i % 1000, i, ts.isoformat().replace("+00:00", "Z")))
PY
split -n l/4 "$dir/lines" "$dir/part."

SENSORHUB_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db SENSORHUB_STREAM=$stream \
SENSORHUB_CHANNEL= SENSORHUB_HTTP_ADDR=127.0.0.1:$HTTP SENSORHUB_LOG=warn \
SENSORHUB_MQTT_URL=mqtt://127.0.0.1:$PORT SENSORHUB_MQTT_TOPICS='bench/#=json' \
SENSORHUB_MQTT_CLIENT_ID=mqtt-ingest-$$ "${SENSORHUB_BINARY:-target/release/sensorhub}" >"$dir/sensorhub.log" 2>&1 &
hub=$!
for _ in $(seq 1 200); do
    curl -s "localhost:$HTTP/metrics" | grep -q '^sensorhub_mqtt_connected 1' && break
    sleep 0.05
done

start=$(date +%s.%N)
publishers=()
for part in "$dir"/part.*; do
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -t bench/x -l <"$part" &
    publishers+=($!)
done
wait "${publishers[@]}"
published=$(date +%s.%N)
while [ "$(psql -h 127.0.0.1 -U postgres -d "$db" -Atc 'select count(*) from readings')" -lt "$N" ]; do
    sleep 0.02
done
done=$(date +%s.%N)
python3 -c "import sys; n, s, p, d = int(sys.argv[1]), *map(float, sys.argv[2:]); print(f'{n} readings: published in {p - s:.2f} s, all committed after {d - s:.2f} s: {n / (d - s):,.0f} readings/s')" \
    "$N" "$start" "$published" "$done"
