//! Integration tests: real PostgreSQL, pgsluice in-process, real clients.

// Not every test file uses every helper.
#[allow(dead_code)]
mod harness;

mod admin;
mod auth;
mod auth_query;
mod causal;
mod drivers;
mod hostile_server;
mod import;
mod lifecycle;
mod login_errors;
mod metrics;
mod notify;
mod operations;
mod params;
mod peering;
mod pooling;
mod prepared;
mod protocol32;
mod replica_faults;
mod review;
mod robustness;
mod routing;
mod server_tls;
mod service;
mod session_state;
mod topology;
mod unix_sockets;
