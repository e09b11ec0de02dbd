#!/usr/bin/env sh
# Creates the stack's secrets under docker/secrets/ when they are missing: the PostgreSQL
# password and the URL that holds it, Grafana's admin password, and sensorhub's three tokens (the
# read API's, ingest's for devices, Telegraf and MQTT-less gateways, and the admin token of
# dead-letter replay and purge). Run once before
# `docker compose up`; safe to run again (existing secrets are kept).
set -eu
cd "$(dirname "$0")"
# The directory keeps other users of this host out; the files stay readable, because Compose
# mounts them into the containers as they are and the services there do not run as this user.
mkdir -p secrets
chmod 700 secrets

new_secret() { # new_secret FILE: 32 hex characters, unless FILE exists
    if [ ! -s "secrets/$1" ]; then
        od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "secrets/$1"
        echo "secrets.sh: created secrets/$1"
    fi
}

new_secret postgres_password
new_secret grafana_admin_password
new_secret api_token
new_secret ingest_token
new_secret admin_token
if [ ! -s secrets/database_url ]; then
    printf 'postgres://postgres:%s@postgres:5432/sensorhub?sslmode=disable\n' \
        "$(cat secrets/postgres_password)" > secrets/database_url
    echo "secrets.sh: created secrets/database_url"
fi
echo "secrets.sh: read API token: secrets/api_token; ingest token: secrets/ingest_token; admin token: secrets/admin_token"
