#!/usr/bin/env bash
# START_CMD for ../shared/bench/compare.sh: writes a pgsluice config equivalent to the
# harness's PgBouncer one (transaction pooling, POOL_SIZE servers, SCRAM client auth with a
# plaintext auth_file, >= 2,500 clients) into $WORK and execs pgsluice in the foreground.
# HOSTS (default: the primary) and EXTRA_GENERAL (more [general] lines) let
# start-pgsluice-routing.sh reuse it.
set -euo pipefail
cat > "$WORK/userlist.txt" <<EOT
"$BENCH_USER" "$BENCH_PASSWORD"
EOT
cat > "$WORK/pgsluice.toml" <<EOT
[general]
listen_addr = "127.0.0.1"
listen_port = $PORT
max_client_conn = ${MAX_CLIENT_CONN:-20000}
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
worker_threads = ${WORKERS:-2}
query_wait_timeout = "120s"
# As compare.sh's PgBouncer config: no log line per connection.
log_connections = false
log_disconnections = false
${EXTRA_GENERAL:-}

[databases.$BENCH_DB]
hosts = [${HOSTS:-"\"$PG_HOST:$PG_PORT\""}]
EOT
exec "${PGSLUICE_BIN:-pgsluice}" --config "$WORK/pgsluice.toml"
