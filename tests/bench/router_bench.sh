#!/usr/bin/env bash
# squeal-router vs twemproxy vs memcached direct, one run, same memcached server.
# Usage: bash tests/bench/router_bench.sh [--seconds 5] [--rounds 3] [--conns 50] [--sizes 32,4096]
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/setup.sh >/dev/null
cargo build --release -p squeal-router --bin squeal-router
cargo build --release -p squeal-tests --bin router_bench
exec target/release/router_bench "$@"
