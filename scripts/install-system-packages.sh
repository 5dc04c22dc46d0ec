#!/usr/bin/env bash
# Install the system packages Esper needs (servers the tests start on loopback, the data `make run` trains on), only
# when missing.
# Idempotent: packages already installed are skipped with `dpkg -s`; apt runs only when something is missing.
# Uses sudo when not root. Called by `make venv` and `make test` (CI runs `make test` on a fresh machine).
set -euo pipefail

PACKAGES=(
    redis-server          # Oona's Redis Streams backend: tests start redis-server on 127.0.0.1 (esper_core.testing.servers)
    dataset-fashion-mnist # the fashion-mnist task's IDX files, in /usr/share/datasets/fashion-mnist
    prometheus            # Nissa's metrics and dashboard queries are tested against a real Prometheus (and promtool)
)

if ! command -v dpkg >/dev/null 2>&1; then
    echo "install-system-packages: no dpkg here (not Debian/Ubuntu); install these yourself: ${PACKAGES[*]}" >&2
    exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg -s "$package" >/dev/null 2>&1; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-system-packages: missing ${missing[*]}, and not root with no sudo; install them as root:" >&2
        echo "  apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi

echo "install-system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
