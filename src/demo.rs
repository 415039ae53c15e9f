//! `pgsluice demo`: a throw-away local PostgreSQL primary (via [`crate::localpg`]), a role
//! and database `app`, an auth_file holding only the role's SCRAM verifier (so SCRAM
//! passthrough is what logs pgsluice in to Postgres), and pgsluice serving it on a port
//! until Ctrl-C. Works as root (Postgres runs as an unprivileged OS user) and as a normal user.

use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::localpg::{ClusterOptions, LocalCluster};
use crate::server::ServerHandle;
use crate::shared::Shared;

/// Demo role, database and password.
pub const DEMO_USER: &str = "app";
/// Demo password.
pub const DEMO_PASSWORD: &str = "app-secret";

/// The demo's config file text, for a primary on `pg_port` and pgsluice on `port`.
pub fn demo_config(port: u16, pg_port: u16) -> String {
    format!(
        r#"# Written by `pgsluice demo`.
[general]
listen_addr = "127.0.0.1"
listen_port = {port}
max_client_conn = 1000
pool_mode = "transaction"
default_pool_size = 10
auth_type = "scram-sha-256"
auth_file = "userlist.txt"

[databases.{DEMO_USER}]
hosts = ["127.0.0.1:{pg_port}"]
"#
    )
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Starting or preparing the local cluster failed.
    #[error("local PostgreSQL: {0}")]
    Cluster(#[from] crate::localpg::Error),
    /// Writing the demo's files failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The generated config did not load (a bug).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The port is taken.
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen {
        /// Requested port.
        port: u16,
        /// Cause.
        source: std::io::Error,
    },
    /// A background task panicked.
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(port: u16) -> Result<(), DemoError> {
    println!("pgsluice demo: starting a local PostgreSQL cluster (this takes a few seconds)...");
    let cluster = tokio::task::spawn_blocking(|| -> Result<LocalCluster, DemoError> {
        let opts = ClusterOptions { superuser_password: format!("su-{:016x}", rand::random::<u64>()), ..ClusterOptions::default() };
        let c = LocalCluster::start_primary(opts)?;
        c.create_user_and_db(DEMO_USER, DEMO_PASSWORD)?;
        c.psql(DEMO_USER, "CREATE TABLE IF NOT EXISTS greetings(id serial primary key, msg text); INSERT INTO greetings(msg) VALUES ('hello from pgsluice'); ALTER TABLE greetings OWNER TO app;")?;
        Ok(c)
    })
    .await??;
    let verifier = cluster.scram_verifier(DEMO_USER)?;
    let dir = cluster
        .data_dir()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
        .join("pgsluice-demo");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("userlist.txt"), format!("\"{DEMO_USER}\" \"{verifier}\"\n"))?;
    let cfg_path = dir.join("pgsluice.toml");
    std::fs::write(&cfg_path, demo_config(port, cluster.port()))?;
    let cfg = Config::load(&cfg_path)?;
    let handle =
        ServerHandle::start(Shared::new(cfg), None).await.map_err(|source| DemoError::Listen { port, source })?;
    println!();
    println!("PostgreSQL primary is on 127.0.0.1:{}; pgsluice serves it on {}.", cluster.port(), handle.addr);
    println!("Config: {}", cfg_path.display());
    println!("Connect with:");
    println!("    psql \"postgres://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{}/{DEMO_USER}\"", handle.addr.port());
    println!(
        "Load test: PGPASSWORD={DEMO_PASSWORD} pgbench -i -h 127.0.0.1 -p {0} -U {DEMO_USER} {DEMO_USER} && PGPASSWORD={DEMO_PASSWORD} pgbench -S -c 20 -T 10 -h 127.0.0.1 -p {0} -U {DEMO_USER} {DEMO_USER}",
        handle.addr.port()
    );
    println!("Press Ctrl-C to stop (the cluster is deleted).");
    crate::shutdown::wait_for_signal().await;
    println!("stopping...");
    handle.shutdown(Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
