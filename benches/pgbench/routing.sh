#!/usr/bin/env bash
# Read/write routing benchmark (issue 6): interleaved pgbench rounds with ../shared/bench/compare.sh against
# pgsluice on a PostgreSQL 15 primary + NREPLICAS (2) streaming replicas. Targets:
#   sluice-primary   port 6440  hosts = [primary]                   (single host: no routing)
#   sluice-routed    port 6441  hosts = [primary, replica1, replica2], route = "auto", read_your_writes = "lsn"
#   sluice-rywoff    port 6442  the same with read_your_writes = "off"
# plus compare.sh's built-ins (direct, pgbouncer: both against the primary). Knobs are compare.sh's.
#
#   WORKLOADS="S-simple-100" ROUNDS=5 MEM_CLIENTS=0 benches/pgbench/routing.sh sluice-primary sluice-routed
#
# The cluster is started here with its replicas (compare.sh itself starts only the primary) and stopped at
# the end unless KEEP_CLUSTER=1. Each target block's per-node sum(xact_commit) and postmaster CPU at start
# and stop go to $OUT/targets/NAME/nodes.tsv; the read split per block is printed at the end (it includes
# the block's 3 s warm-up of pgbench -S -c 20, the VACUUM/CHECKPOINT and the probes' queries).
# PGSLUICE_BIN=... skips the build (the binary is copied into $OUT either way).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
export CLUSTER_DIR=${CLUSTER_DIR:-/tmp/bench-cluster} PG_PORT=${PG_PORT:-55432} NREPLICAS=${NREPLICAS:-2}
export OUT=${OUT:-${TMPDIR:-/tmp}/pgsluice-bench/routing-$(date +%Y%m%d-%H%M%S)}
export BENCHUTIL=$SHARED/benchutil.py
mkdir -p "$OUT"
if [ -z "${PGSLUICE_BIN:-}" ]; then
  cargo build --release --manifest-path "$ROOT/Cargo.toml"
  PGSLUICE_BIN=$ROOT/target/release/pgsluice
fi
# a private copy, so a rebuild during the run cannot change the binary between rounds
cp "$PGSLUICE_BIN" "$OUT/pgsluice"
export PGSLUICE_BIN=$OUT/pgsluice

# same server settings as compare.sh (they apply when the primary is created); replicas are copies
PGCLUSTER_EXTRA_CONF="shared_buffers = '1GB'
synchronous_commit = off
checkpoint_timeout = '30min'
max_wal_size = '8GB'
autovacuum = off" "$SHARED/pgcluster.sh" start "$CLUSTER_DIR" "$PG_PORT" "$NREPLICAS"
stop_cluster() {
  # compare.sh's own `start DIR PORT 0` rewrote cluster.conf to 0 replicas: restore it, then stop all
  "$SHARED/pgcluster.sh" create "$CLUSTER_DIR" "$PG_PORT" "$NREPLICAS" >/dev/null
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then "$SHARED/pgcluster.sh" stop "$CLUSTER_DIR"; fi
}
trap stop_cluster EXIT

S=$ROOT/benches/pgbench
STOP="$S/node-snap.sh stop \"\$PID\" >> \"\$WORK/nodes.tsv\""
KEEP_CLUSTER=1 "$SHARED/compare.sh" \
  --target sluice-primary 6440 "exec $S/start-pgsluice-routing.sh primary" "$STOP" \
  --target sluice-routed 6441 "exec $S/start-pgsluice-routing.sh routed lsn" "$STOP" \
  --target sluice-rywoff 6442 "exec $S/start-pgsluice-routing.sh routed off" "$STOP" \
  "$@" || true

# read split per target block: xact_commit deltas per node between start and stop
echo
echo "## transactions committed per node during each target block (primary, replica1..N)"
for f in "$OUT"/targets/*/nodes.tsv; do
  [ -f "$f" ] || continue
  awk -v tck="$(getconf CLK_TCK)" -v t="$(basename "$(dirname "$f")")" -F'\t' '
    $1 == "start" { split(substr($3, 6), a, ","); split(substr($4, 5), c, ","); next }
    $1 == "stop" && length(a) {
      split(substr($3, 6), b, ","); split(substr($4, 5), d, ","); n++; tot = 0; line = ""; cl = ""
      for (i = 1; i <= length(b); i++) tot += b[i] - a[i]
      for (i = 1; i <= length(b); i++) line = line sprintf(" %d (%.1f%%)", b[i] - a[i], tot ? 100 * (b[i] - a[i]) / tot : 0)
      for (i = 1; i <= length(d); i++) cl = cl sprintf(" %.1f", (d[i] - c[i]) / tck)
      printf "%s block %d: xacts%s; postmaster CPU s%s\n", t, n, line, cl; delete a
    }' "$f"
done | tee "$OUT/node-split.txt"
