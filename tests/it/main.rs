//! Integration tests: real PostgreSQL, pgsluice in-process, real clients.

// Not every test file uses every helper.
#[allow(dead_code)]
mod harness;

mod admin;
mod auth;
mod auth_query;
mod drivers;
mod hostile_server;
mod lifecycle;
mod login_errors;
mod metrics;
mod notify;
mod operations;
mod params;
mod pooling;
mod prepared;
mod replica_faults;
mod review;
mod robustness;
mod routing;
mod server_tls;
mod session_state;
mod topology;
mod unix_sockets;
