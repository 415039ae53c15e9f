#!/usr/bin/env bash
# A streaming replica of service "primary" (localpg's start_replica: pg_basebackup -R as the
# superuser), then the official image's entrypoint, which finds the data directory ready.
# Runs as user postgres (compose `user: postgres`).
set -euo pipefail
until pg_isready -q -h primary -p 5432 -U postgres; do sleep 1; done
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  PGPASSWORD="$POSTGRES_PASSWORD" pg_basebackup -h primary -p 5432 -U postgres -D "$PGDATA" -R -X stream
  chmod 0700 "$PGDATA"
fi
exec docker-entrypoint.sh postgres
