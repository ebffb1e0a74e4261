#!/usr/bin/env bash
# End-to-end benchmark (release build): commit-to-delete latency, deletes per packet, lag
# and stale keys at three write rates. SQUEAL_BENCH_SECONDS sets the time per rate (10).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/setup.sh >/dev/null
cargo build --release --workspace --bins --quiet
exec target/release/squeal-e2e-bench "$@"
