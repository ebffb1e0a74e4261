#!/usr/bin/env bash
# The README's first command: installs what is missing, builds Squeal, then starts on
# loopback a private MariaDB with its binlog, memcached front-end clusters, squeal and the
# router, runs a short look-aside workload and prints what happened. Everything is stopped
# at the end; `--keep` leaves it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh >/dev/null
echo "quickstart: building (first build takes a few minutes)..." >&2
cargo build --workspace --bins --release --quiet
exec target/release/squeal-demo "$@"
