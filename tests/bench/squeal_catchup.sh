#!/usr/bin/env bash
# squeal catch-up and live benchmark. Usage: bash tests/bench/squeal_catchup.sh [ROWS]
# Installs its peer (PyPI mysql-replication) if missing, builds release binaries, starts a
# private MariaDB and memcached, loads ROWS (default 1000000) row changes, and prints
# squeal's catch-up rows/s and keys/s (debug and memcache sinks) next to mysql-replication
# reading the same binlog in the same run, then keys-per-packet medians at a few write rates.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/setup.sh >/dev/null
python3 -c 'import pymysqlreplication' 2>/dev/null || python3 -m pip install -q mysql-replication
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null 2>&1 || true; }
cargo build --release -q -p squeal -p squeal-tests --bin squeal --bin squeal-bench
exec target/release/squeal-bench "${1:-1000000}"
