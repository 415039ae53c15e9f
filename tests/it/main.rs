//! Integration tests: real PostgreSQL, pgsluice in-process, real clients.

// Not every test file uses every helper.
#[allow(dead_code)]
mod harness;

mod auth;
mod lifecycle;
mod pooling;
mod robustness;
