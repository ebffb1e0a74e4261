#!/usr/bin/env bash
# The one test command: installs the real servers if missing, builds every program, and runs
# every test (unit, property, fixture and end-to-end against real MariaDB, memcached,
# twemproxy and the tansu broker).
#
#   bash tests/run.sh              # everything
#   bash tests/run.sh -- router    # extra arguments go to `cargo test` (here: a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh >/dev/null
cargo build --workspace --bins --quiet
# End-to-end tests start several servers each; two at a time keeps a 2-core machine honest.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
cargo test --workspace "${@}"
