#!/usr/bin/env bash
# Runs once, when the primary's data directory is created (/docker-entrypoint-initdb.d).
# The same objects as `pgsluice demo` (src/demo.rs, start_clusters): role and database app
# with table greetings, the monitor role for the health probes, and replication for the
# superuser (the replicas' base backups are taken as postgres, as localpg does).
set -euo pipefail
# app's password is "app-secret", stored as the SCRAM verifier docker/userlist.txt holds, so
# pgsluice logs in to PostgreSQL with the client's own SCRAM proof (passthrough).
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE app LOGIN PASSWORD 'SCRAM-SHA-256$4096:cGdzbHVpY2UtY29tcG9zZQ==$Or6uHXXNhSwJXpTnBfhMsdr0bp6akUyni8slO8PKDN8=:GHnwQeWDVQhl6fyZpYaIQvw/ASGMbM+zdwPS5x4kd0w=';
CREATE DATABASE app OWNER app;
CREATE ROLE pgsluice_monitor LOGIN PASSWORD 'monitor-secret' IN ROLE pg_monitor;
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname app <<'SQL'
CREATE TABLE IF NOT EXISTS greetings(id serial primary key, msg text);
INSERT INTO greetings(msg) VALUES ('hello from pgsluice');
ALTER TABLE greetings OWNER TO app;
SQL
echo "host replication postgres all scram-sha-256" >> "$PGDATA/pg_hba.conf"
