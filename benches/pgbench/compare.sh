#!/usr/bin/env bash
# Reproduces the benchmark in the closing notes: interleaved pgbench rounds against direct
# PostgreSQL, PgBouncer and pgsluice with ../shared/bench/compare.sh (2 worker threads,
# pool 20, SCRAM, transaction pooling). Needs `apt-get install -y pgbouncer` for the
# PgBouncer target. Knobs are compare.sh's (ROUNDS, DURATION, WORKLOADS, MEM_CLIENTS, ...).
#
#   benches/pgbench/compare.sh                       # all workloads, 3 rounds
#   WORKLOADS="S-simple-10 S-simple-100" ROUNDS=3 benches/pgbench/compare.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench/compare.sh}
cargo build --release --manifest-path "$ROOT/Cargo.toml"
export PGSLUICE_BIN="$ROOT/target/release/pgsluice"
# compare.sh runs START_CMD from $WORK with PORT, PG_HOST, PG_PORT, POOL_SIZE, BENCH_* and
# WORKERS set; benches/pgbench/start-pgsluice.sh writes an equivalent config and execs.
exec "$HARNESS" --target pgsluice 6440 "exec $ROOT/benches/pgbench/start-pgsluice.sh" '' "$@"
