#!/usr/bin/env bash
# node-snap.sh LABEL [PID]  — STOP_CMD helper for benches/pgbench/routing.sh.
# With PID: SIGTERM it and wait until it has exited (so its server connections are closed and their
# backends have flushed their statistics). Then print one line:
#   LABEL <epoch> xact:<primary>,<replica1>,... cpu:<primary>,<replica1>,...
# xact = sum(xact_commit) over pg_stat_database of each node (via TCP as bench), cpu = CPU ticks of each
# node's postmaster process tree (shared benchutil.py). Needs CLUSTER_DIR, PG_PORT, NREPLICAS, PGPASSWORD.
set -uo pipefail
LABEL=$1 PID=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
UTIL=${BENCHUTIL:-$HERE/../../../shared/bench/benchutil.py}
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/bench-cluster}
if [ -n "$PID" ]; then
  kill -TERM "$PID" 2>/dev/null
  for ((i = 0; i < 50; i++)); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
  sleep 1.5
fi
xs=() pids=()
for ((k = 0; k <= ${NREPLICAS:-2}; k++)); do
  n=primary; [ "$k" -gt 0 ] && n=replica$k
  xs+=("$(psql -X -h 127.0.0.1 -p $((PG_PORT + k)) -U "${BENCH_USER:-bench}" -d "${BENCH_DB:-bench}" -tAc \
    'select sum(xact_commit) from pg_stat_database' 2>/dev/null || echo NA)")
  pids+=("$(head -1 "$CLUSTER_DIR/$n/postmaster.pid" 2>/dev/null || echo 0)")
done
cpu=$(python3 "$UTIL" snap "${pids[@]}" | awk '$1 != "sys" {print $2}' | paste -sd,)
printf '%s\t%s\txact:%s\tcpu:%s\n' "$LABEL" "$(date +%s.%N)" "$(IFS=,; echo "${xs[*]}")" "$cpu"
