#!/usr/bin/env bash
# The 1,000-client run of issue 14: `pgbench -S -c 1000 -j 2`, pool 20, SCRAM, 3 interleaved
# rounds of 30 s against PgBouncer and pgsluice (../shared/bench/compare.sh; TPS, p95 latency,
# pooler CPU per transaction). Knobs are compare.sh's; e.g. ROUNDS=5 DURATION=60.
#
#   benches/pgbench/clients-1000.sh                  # pgbouncer and pgsluice
#   benches/pgbench/clients-1000.sh direct pgsluice  # other targets
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export WORKLOADS=${WORKLOADS:-S-simple-1000} ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-30} MEM_CLIENTS=${MEM_CLIENTS:-0}
[ $# -gt 0 ] || set -- pgbouncer pgsluice
exec "$ROOT/benches/pgbench/compare.sh" "$@"
