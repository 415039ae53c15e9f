#!/usr/bin/env bash
# START_CMD for ../shared/bench/compare.sh, used by benches/pgbench/routing.sh.
#   start-pgsluice-routing.sh primary        hosts = [primary]              (no routing: single host)
#   start-pgsluice-routing.sh routed [RYW]   hosts = [primary, replica1..N] (route = "auto", probes as
#                                            bench/bench, read_your_writes = RYW, default "lsn")
# Same settings as start-pgsluice.sh otherwise (transaction pooling, POOL_SIZE per host, SCRAM clients,
# 2 workers). Replica K listens on PG_PORT+K (pgcluster.sh); NREPLICAS (default 2) of them.
# Before exec it appends one "start" line of per-node counters to $WORK/nodes.tsv (see node-snap.sh).
set -euo pipefail
MODE=${1:?primary or routed}
RYW=${2:-lsn}
HERE=$(cd "$(dirname "$0")" && pwd)
hosts="\"$PG_HOST:$PG_PORT\""
probe=""
if [ "$MODE" = routed ]; then
  for ((k = 1; k <= ${NREPLICAS:-2}; k++)); do hosts+=", \"$PG_HOST:$((PG_PORT + k))\""; done
  probe="health_check_user = \"$BENCH_USER\"
health_check_password = \"$BENCH_PASSWORD\"
route = \"auto\"
read_your_writes = \"$RYW\""
fi
"$HERE/node-snap.sh" start >> "$WORK/nodes.tsv" || true
HOSTS=$hosts EXTRA_GENERAL=$probe exec "$HERE/start-pgsluice.sh"
