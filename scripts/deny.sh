#!/usr/bin/env bash
# Checks the dependency tree (deny.toml) with cargo-deny: known vulnerabilities, licenses, banned
# crates and sources. Advisories come from a local copy of the RustSec database when there is one
# (SENSORHUB_ADVISORY_DB, else ../shared/advisory-db beside the checkout): CI reaches the crate
# registry, not the database's origin. Without a copy, cargo-deny fetches the database itself.
# Vulnerabilities fail the check unless deny.toml records why sensorhub cannot reach them;
# unmaintained crates are warnings. How to handle a new advisory: docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
    echo "deny: installing cargo-deny $DENY_VERSION" >&2
    cargo install --quiet --locked cargo-deny --version "$DENY_VERSION"
fi
config=deny.toml
offline=()
db=${SENSORHUB_ADVISORY_DB:-../shared/advisory-db}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -d "$db/crates" ]; then
    # cargo-deny reads its database as a git checkout named after the database's URL (the
    # default one's) under db-path, and dates it by the checkout's last commit: the copy becomes
    # one commit dated as its snapshot, so a stale copy shows as stale.
    copy="$work/advisory-db-3157b0e258782691"
    cp -r "$db" "$copy"
    stamp=$(awk '{print $2, $3, $4, $5, $6, $7}' "$copy/SNAPSHOT" 2>/dev/null || true)
    git -C "$copy" init -q
    git -C "$copy" add -A
    GIT_AUTHOR_DATE="${stamp:-now}" GIT_COMMITTER_DATE="${stamp:-now}" \
        git -C "$copy" -c user.name=snapshot -c user.email=snapshot@localhost commit -qm snapshot
    sed "s|^\[advisories\]|[advisories]\ndb-path = \"$work\"|" deny.toml > "$work/deny.toml"
    config="$work/deny.toml"
    # --offline keeps cargo-deny from fetching the database; cargo's own metadata then needs
    # every crate of the lock file at hand.
    cargo fetch --locked --quiet
    offline=(--offline)
    echo "deny: advisories from $db ($(cat "$copy/SNAPSHOT" 2>/dev/null || echo 'no SNAPSHOT'))" >&2
fi
exec cargo deny "${offline[@]}" --locked --config "$config" check --warn unmaintained "$@"
