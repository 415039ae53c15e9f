//! Connecting and logging in to PostgreSQL servers. Used by the pools (and later by the
//! health probes), so that `pool/` and `cluster/` never import each other.

pub mod conn;

pub use conn::{Credential, Error, LoginParams, ServerConn};
