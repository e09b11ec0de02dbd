#!/usr/bin/env bash
# Brings Redis, PostgreSQL and Mosquitto up on 127.0.0.1 (6379, 5432, 1883) when they do not
# answer, installing Debian's packages when they are missing, and creates the `sensorhub` database.
# Safe to run again: whatever already answers is left alone.
#
#   scripts/services.sh            # Redis + PostgreSQL + Mosquitto
#   scripts/services.sh --tools    # also the test tools (promtool, chromium, nft, Python clients in .tools/)
set -euo pipefail

REDIS_PORT=6379
PG_PORT=5432
MQTT_PORT=1883
DATABASE=sensorhub
with_tools=no
[ "${1:-}" = "--tools" ] && with_tools=yes

log() { printf 'services: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; exit 1; fi
}

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        log "apt-get update"
        as_root apt-get update -qq
        apt_updated=yes
    fi
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

wait_for() { # wait_for DESCRIPTION COMMAND...
    local what=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "$what did not come up within 30 s"; exit 1
}

# --- Redis -------------------------------------------------------------------------------------
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
fi
if ! redis_up; then
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    mkdir -p /tmp/sensorhub-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /tmp/sensorhub-redis --logfile /tmp/sensorhub-redis/redis.log
    wait_for "redis" redis_up
fi
log "redis answers on 127.0.0.1:$REDIS_PORT"

# --- PostgreSQL --------------------------------------------------------------------------------
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] || ! command -v psql >/dev/null; then
    apt_install postgresql postgresql-client
fi
pg_up() { "$(pg_bin)/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q; }
if ! pg_up; then
    version=$(basename "$(dirname "$(pg_bin)")")
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
        log "creating PostgreSQL $version cluster 'main'"
        as_root pg_createcluster "$version" main -p "$PG_PORT" >/dev/null
    fi
    log "starting PostgreSQL $version on 127.0.0.1:$PG_PORT"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for "postgresql" pg_up
fi
psql_postgres() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atq "$@"; }
if ! psql_postgres -c 'select 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for a password over TCP. For a local development and test
    # database, let the postgres user in from loopback without one.
    log "allowing the postgres user from 127.0.0.1 without a password (local development)"
    hba=$(as_root su postgres -c "psql -Atc 'show hba_file'")
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    as_root su postgres -c "psql -Atqc 'select pg_reload_conf()'" >/dev/null
    wait_for "postgresql login" psql_postgres -c 'select 1'
fi
if [ "$(psql_postgres -c "select 1 from pg_database where datname = '$DATABASE'")" != 1 ]; then
    log "creating database $DATABASE"
    psql_postgres -c "create database $DATABASE"
fi
log "postgresql answers on 127.0.0.1:$PG_PORT (database $DATABASE)"

# --- Mosquitto (MQTT) ---------------------------------------------------------------------------
mqtt_up() { (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null; }
if ! command -v mosquitto >/dev/null; then
    apt_install mosquitto
fi
if ! mqtt_up; then
    log "starting mosquitto on 127.0.0.1:$MQTT_PORT"
    mkdir -p /tmp/sensorhub-mosquitto
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" \
        > /tmp/sensorhub-mosquitto/mosquitto.conf
    mosquitto -d -c /tmp/sensorhub-mosquitto/mosquitto.conf
    wait_for "mosquitto" mqtt_up
fi
log "mosquitto answers on 127.0.0.1:$MQTT_PORT"

# --- Test tools --------------------------------------------------------------------------------
if [ "$with_tools" = yes ]; then
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then apt_install prometheus; fi
    log "prometheus: $(command -v prometheus), promtool: $(command -v promtool)"
    if ! command -v chromium >/dev/null; then apt_install chromium; fi
    log "chromium: $(command -v chromium)"
    # Network namespaces and packet filters for the silent-network tests.
    if ! command -v ip >/dev/null; then apt_install iproute2; fi
    if ! command -v nft >/dev/null; then apt_install nftables; fi
    log "ip: $(command -v ip), nft: $(command -v nft)"
    # Python programs the tests drive sensorhub with (InfluxDB's own client library,
    # schemathesis, which fuzzes the API from its OpenAPI document, and pysparkplug, a Sparkplug B
    # edge node), in a venv of the checkout's own so that nothing outside it changes.
    venv="$(cd "$(dirname "$0")/.." && pwd)/.tools/python"
    if ! "$venv/bin/python" -c 'import influxdb_client, schemathesis, pysparkplug' >/dev/null 2>&1; then
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then apt_install python3-venv; python3 -m venv "$venv"; fi
        log "installing influxdb-client, schemathesis and pysparkplug into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check 'influxdb-client==1.50.0' \
            'schemathesis==4.32.5' 'pysparkplug==0.6.1' 'paho-mqtt==1.6.1'
    fi
    log "python test clients: $venv"
fi
