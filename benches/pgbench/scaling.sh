#!/usr/bin/env bash
# Scaling: pooler CPU µs per transaction, p95 latency and RSS as the number of clients grows
# (`pgbench -S`, simple protocol, -j 2), for pgsluice and PgBouncer in interleaved rounds.
#
#   benches/pgbench/scaling.sh                     # c = 10 100 1000 5000, 2 rounds of 15 s
#   CLIENTS="100 1000" ROUNDS=3 DURATION=30 benches/pgbench/scaling.sh
#
# Pool 20, SCRAM, transaction pooling, 2 worker threads: the settings of compare.sh. RSS is
# sampled in the middle of each run. pgbench's own clock includes connecting its clients
# (SCRAM, ~1 ms each): give c = 5000 a DURATION of 60 s or more. Output: a table on stdout
# and $OUT/scaling.tsv.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
CLIENTS=${CLIENTS:-"10 100 1000 5000"}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-15}
TARGETS=${TARGETS:-"pgbouncer pgsluice"}
PG_PORT=${PG_PORT:-55432}
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/bench-cluster}
OUT=${OUT:-${TMPDIR:-/tmp}/pgsluice-scaling/$(date +%Y%m%d-%H%M%S)}
OS_USER=${PGCLUSTER_OS_USER:-pgbench_runner}
export PGPASSWORD=bench
mkdir -p "$OUT"
ulimit -n 30000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
TCK=$(getconf CLK_TCK)
"$BENCH/pgcluster.sh" start "$CLUSTER_DIR" "$PG_PORT" 0 >&2
if [ "$(psql -X -h 127.0.0.1 -p "$PG_PORT" -U bench -d bench -tAc 'select count(*) from pgbench_branches' 2>/dev/null || echo 0)" != 10 ]; then
  pgbench -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U bench bench >&2
fi
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2

start() { # target -> sets PID, PORT
  local w=$OUT/work-$1
  mkdir -p "$w"
  case "$1" in
    pgsluice)
      PORT=6440
      WORK=$w PORT=$PORT PG_HOST=127.0.0.1 PG_PORT=$PG_PORT POOL_SIZE=20 BENCH_USER=bench BENCH_PASSWORD=bench \
        BENCH_DB=bench WORKERS=${WORKERS:-2} PGSLUICE_BIN="$ROOT/target/release/pgsluice" \
        setsid bash "$ROOT/benches/pgbench/start-pgsluice.sh" >"$w/log" 2>&1 </dev/null &
      ;;
    pgbouncer)
      PORT=6411
      cat >"$w/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $w/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 20000
max_db_connections = 20
logfile = $w/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
      printf '"bench" "%s"\n' "$(runuser -u "$OS_USER" -- psql -X -q -h "$CLUSTER_DIR/sock" -p "$PG_PORT" -U postgres -d bench -tAc "select rolpassword from pg_authid where rolname = 'bench'")" >"$w/userlist.txt"
      chown -R "$OS_USER" "$w"
      setsid setpriv --reuid="$OS_USER" --regid="$OS_USER" --init-groups /usr/sbin/pgbouncer "$w/pgbouncer.ini" >"$w/log" 2>&1 </dev/null &
      ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    psql -X -h 127.0.0.1 -p "$PORT" -U bench -d bench -tAc 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  # setsid + exec: the pooler is the started process or its only child.
  PID=$(pgrep -P "$PID" | head -1 || true)
  [ -n "$PID" ] || PID=$!
}

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf 'round\ttarget\tclients\ttps\tp95_ms\tcpu_us_per_tx\trss_kib\tfailed\n' >"$OUT/scaling.tsv"
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    start "$t"
    for c in $CLIENTS; do
      lf=$OUT/r$r-$t-$c
      c0=$(cpu "$PID")
      ( sleep $((DURATION / 2)); awk '/VmRSS/ {print $2}' "/proc/$PID/status" >"$lf.rss" ) &
      sampler=$!
      pgbench -n -S -h 127.0.0.1 -p "$PORT" -U bench -c "$c" -j 2 -T "$DURATION" \
        --log --log-prefix="$lf.tx" --sampling-rate=0.02 bench >"$lf.out" 2>&1 || true
      wait "$sampler"
      c1=$(cpu "$PID")
      tx=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]; exit}' "$lf.out")
      tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$lf.out")
      failed=$(awk '/number of failed transactions/ {print $5; exit}' "$lf.out")
      p95=$(cat "$lf".tx.* 2>/dev/null | awk '{print $3}' | sort -n | awk '{a[NR] = $1} END {if (NR) printf "%.2f", a[int(NR * 0.95)] / 1000}')
      rm -f "$lf".tx.*
      us=$(awk -v a="$c0" -v b="$c1" -v t="$TCK" -v n="${tx:-0}" 'BEGIN {if (n > 0) printf "%.1f", (b - a) / t * 1e6 / n}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$c" "${tps:-?}" "${p95:-?}" "${us:-?}" "$(cat "$lf.rss")" "${failed:-?}" | tee -a "$OUT/scaling.tsv" >&2
    done
    kill -TERM "$PID" 2>/dev/null || true
    sleep 2
  done
done
echo "median over $ROUNDS rounds ($OUT/scaling.tsv):"
python3 - "$OUT/scaling.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = sorted({(r["target"], int(r["clients"])) for r in rows}, key=lambda k: (k[1], k[0]))
print("| clients | target | TPS | p95 ms | pooler CPU µs/txn | RSS KiB |")
print("|---|---|---|---|---|---|")
for t, c in keys:
    rs = [r for r in rows if r["target"] == t and int(r["clients"]) == c]
    def med(f):
        v = [float(r[f]) for r in rs if r[f] not in ("?", "")]
        return statistics.median(v) if v else float("nan")
    print(f"| {c} | {t} | {med('tps'):,.0f} | {med('p95_ms'):.1f} | {med('cpu_us_per_tx'):.1f} | {med('rss_kib'):,.0f} |")
PY
