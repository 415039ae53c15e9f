#!/usr/bin/env bash
# Idle clients: RSS per idle authenticated client, and whether they slow a running load.
#
#   benches/pgbench/idle-clients.sh [N] [TARGET]         # N idle clients (default 10000)
#   LOAD=0 benches/pgbench/idle-clients.sh 2000           # memory only
#   benches/pgbench/idle-clients.sh 10000 pgbouncer       # the same against PgBouncer
#
# TARGET is pgsluice (default; release build of this checkout, or PGSLUICE_BIN) or pgbouncer. With LOAD=1
# (default) it runs `pgbench -S -c LOAD_CLIENTS -j 2 -T LOAD_SECONDS` ROUNDS times without
# idle clients and ROUNDS times while N idle clients are held, interleaved, and reports TPS,
# p95 latency (2 % of transactions logged) and errors for each; then the RSS of the pooler
# with 0 and with N idle clients, and the difference per client.
#
# Uses ../shared/bench (pgcluster.sh for a PostgreSQL 15 primary on PG_PORT, idle_clients.py
# to hold the clients); run as root (PostgreSQL runs as an unprivileged user). Pool 20,
# SCRAM, transaction pooling, 2 worker threads: the same settings as compare.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
N=${1:-10000}
TARGET=${2:-pgsluice}
LOAD=${LOAD:-1}
LOAD_CLIENTS=${LOAD_CLIENTS:-100}
LOAD_SECONDS=${LOAD_SECONDS:-20}
ROUNDS=${ROUNDS:-2}
PG_PORT=${PG_PORT:-55432}
PORT=${PORT:-6440}
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/bench-cluster}
OUT=${OUT:-${TMPDIR:-/tmp}/pgsluice-idle/$(date +%Y%m%d-%H%M%S)}
export PG_HOST=127.0.0.1 PG_PORT PORT POOL_SIZE=${POOL_SIZE:-20} BENCH_USER=bench BENCH_PASSWORD=bench BENCH_DB=bench
export WORKERS=${WORKERS:-2} PGPASSWORD=bench
mkdir -p "$OUT"
ulimit -n $((N * 2 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

"$BENCH/pgcluster.sh" start "$CLUSTER_DIR" "$PG_PORT" 0 >&2
if [ "$(psql -X -h 127.0.0.1 -p "$PG_PORT" -U bench -d bench -tAc 'select count(*) from pgbench_branches' 2>/dev/null || echo 0)" != 10 ]; then
  pgbench -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U bench bench >&2
fi

WORK=$OUT/work
mkdir -p "$WORK"
export WORK
case "$TARGET" in
  pgsluice)
    if [ -z "${PGSLUICE_BIN:-}" ]; then
      cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
      PGSLUICE_BIN="$ROOT/target/release/pgsluice"
    fi
    export PGSLUICE_BIN
    bash -c "exec $ROOT/benches/pgbench/start-pgsluice.sh" >"$OUT/pooler.log" 2>&1 &
    ;;
  pgbouncer)
    cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $((N + 1000))
max_db_connections = $POOL_SIZE
logfile = $WORK/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    verifier=$(runuser -u "${PGCLUSTER_OS_USER:-pgbench_runner}" -- psql -X -q -h "$CLUSTER_DIR/sock" -p "$PG_PORT" -U postgres -d bench -tAc "select rolpassword from pg_authid where rolname = 'bench'")
    printf '"bench" "%s"\n' "$verifier" >"$WORK/userlist.txt"
    chown -R "${PGCLUSTER_OS_USER:-pgbench_runner}" "$WORK"
    setpriv --reuid="${PGCLUSTER_OS_USER:-pgbench_runner}" --regid="${PGCLUSTER_OS_USER:-pgbench_runner}" --init-groups \
      /usr/sbin/pgbouncer "$WORK/pgbouncer.ini" >"$OUT/pooler.log" 2>&1 &
    ;;
  *) echo "unknown target $TARGET" >&2; exit 2 ;;
esac
POOLER=$!
IDLE=
cleanup() {
  [ -n "$IDLE" ] && kill -TERM "$IDLE" 2>/dev/null
  kill -TERM "$POOLER" 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT
for _ in $(seq 100); do
  psql -X -h 127.0.0.1 -p "$PORT" -U bench -d bench -tAc 'select 1' >/dev/null 2>&1 && break
  sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$POOLER/status"; }

run_load() { # label round
  local lf=$OUT/pgbench-$1-$2
  pgbench -n -S -h 127.0.0.1 -p "$PORT" -U bench -c "$LOAD_CLIENTS" -j 2 -T "$LOAD_SECONDS" \
    --log --log-prefix="$lf.tx" --sampling-rate=0.02 bench >"$lf.out" 2>&1 || true
  local tps p95 failed
  tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$lf.out")
  failed=$(awk '/number of failed transactions/ {print $5; exit}' "$lf.out")
  p95=$(cat "$lf".tx.* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR] = $1} END {if (NR) printf "%.2f", a[int(NR * 0.95)] / 1000}')
  rm -f "$lf".tx.*
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${tps:-?}" "${p95:-?}" "${failed:-?}" | tee -a "$OUT/load.tsv"
}

hold_idle() {
  rm -f "$OUT/ready"
  python3 "$BENCH/idle_clients.py" --port "$PORT" -n "$N" --parallel "${PARALLEL:-100}" --hold 3600 --ready-file "$OUT/ready" >"$OUT/idle.log" 2>&1 &
  IDLE=$!
  for _ in $(seq 1200); do [ -s "$OUT/ready" ] && break; sleep 0.5; done
  log "$(cat "$OUT/ready" 2>/dev/null || echo 'idle clients not ready')"
}

release_idle() {
  kill -TERM "$IDLE" 2>/dev/null
  wait "$IDLE" 2>/dev/null || true
  IDLE=
  sleep 2
}

printf 'run\tround\ttps\tp95_ms\tfailed\n' >"$OUT/load.tsv"
RSS0=$(rss)
if [ "$LOAD" = 1 ]; then
  for r in $(seq "$ROUNDS"); do
    log "round $r: pgbench -S -c $LOAD_CLIENTS without idle clients"
    run_load without "$r"
    log "round $r: $N idle clients"
    hold_idle
    [ "$r" = 1 ] && RSS1=$(rss)
    log "round $r: pgbench -S -c $LOAD_CLIENTS with $N idle clients"
    run_load with "$r"
    release_idle
  done
else
  hold_idle
  RSS1=$(rss)
  release_idle
fi
{
  echo "target: $TARGET  idle clients: $N  ($(cat "$OUT/ready" 2>/dev/null))"
  echo "RSS with 0 clients: $RSS0 KiB; with $N idle clients: $RSS1 KiB; per client: $(awk -v a="$RSS0" -v b="$RSS1" -v n="$N" 'BEGIN {printf "%.2f", (b - a) / n}') KiB"
  [ "$LOAD" = 1 ] && column -t "$OUT/load.tsv"
} | tee "$OUT/summary.txt"
