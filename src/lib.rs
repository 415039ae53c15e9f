//! pgsluice — a PostgreSQL connection pooler.
//!
//! Clients connect to pgsluice as if it were PostgreSQL; pgsluice authenticates them and
//! multiplexes their transactions onto small pools of server connections.
//!
//! # Layout
//! - [`server`]: accept loop, `max_client_conn`, pool upkeep, graceful stop.
//! - [`frontend`]: per-client `startup` (TLS, auth), `session` state machine, `relay` hot path.
//! - [`pool`]: per-(database, user) pools: FIFO waiters, limits, reserve, expiry.
//! - [`backend`]: connecting and logging in to PostgreSQL.
//! - [`auth`]: SCRAM-SHA-256 (both sides, stored verifiers, passthrough), md5, auth_file.
//! - [`protocol`]: wire-format framing, views and encoders; pure and fuzzable.
//! - [`config`]: TOML config, validated once into runtime types.
//! - [`net`]: the plain/TLS `Stream` and rustls setup.
//! - [`notify`]: LISTEN/NOTIFY in transaction mode: one listening server connection per
//!   (database, user) fans notifications out to its clients.
//! - [`params`]: tracked session parameters, shared between identical clients.
//! - [`prepared`], [`pipeline`]: named prepared statements in transaction mode, and the
//!   queue of answers a server owes its current client.
//! - [`cancel`], [`shared`], [`shutdown`], [`error`]: cross-cutting pieces.
//! - [`systemd`]: `sd_notify`, the watchdog and socket activation (used by `main`).
//! - [`import`]: `pgsluice import-pgbouncer`, a pgbouncer.ini turned into a pgsluice config.
//! - [`localpg`]: throw-away local PostgreSQL clusters for `pgsluice demo` and the tests.
//! - [`admin`]: the PgBouncer-compatible admin console (`SHOW POOLS`, `PAUSE`, `RELOAD`…).
//! - [`stats`]: traffic counters and the live client/server registries the console and
//!   `/metrics` read; [`metrics`]: the Prometheus endpoint; [`reload`]: applying a new config.
//!
//! Data flows one way: server → session → relay; pools never call into sessions, and
//! shared state is passed down as `Arc<Shared>` (no global statics).

pub mod admin;
pub mod auth;
pub mod auth_query;
pub mod backend;
#[cfg(test)]
mod budgets;
pub mod cancel;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod exchange;
pub mod frontend;
pub mod import;
pub mod localpg;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod params;

pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod sql;
pub mod stats;
pub mod systemd;

/// pgsluice's version (`SHOW VERSION`, admin `server_version`).
pub const VERSION_NUMBER: &str = env!("CARGO_PKG_VERSION");
