//! `pgsluice demo`: a throw-away local PostgreSQL primary with two streaming replicas (via
//! [`crate::localpg`]), a role and database `app`, an auth_file holding only the role's SCRAM
//! verifier (so SCRAM passthrough is what logs pgsluice in to Postgres), a `pg_monitor` role
//! for the health probes, and pgsluice serving the three hosts as one database until Ctrl-C.
//! It prints the commands that promote a replica and stop the primary, to watch a failover.
//! With `--tls` the servers accept only TLS for the demo roles (`hostssl`, a CA made at start
//! with the `openssl` command) and pgsluice connects with `server_tls_sslmode = verify-full`.
//! Works as root (Postgres runs as an unprivileged OS user) and as a normal user.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::localpg::{ClusterOptions, LocalCluster};
use crate::server::ServerHandle;
use crate::shared::Shared;

/// Demo role, database and password.
pub const DEMO_USER: &str = "app";
/// Demo password.
pub const DEMO_PASSWORD: &str = "app-secret";
/// Role the health probes log in as: a member of `pg_monitor`, so that probes of a replica
/// can read its timeline from `pg_stat_wal_receiver`.
pub const DEMO_MONITOR: &str = "pgsluice_monitor";
/// Streaming replicas the demo starts next to the primary.
pub const DEMO_REPLICAS: usize = 2;
/// OS user that [`crate::localpg`] runs the server binaries as when this process is root.
const PG_OS_USER: &str = "pgsluice_pg";

/// The demo's config file text: pgsluice on `port`, database `app` over the hosts on
/// `pg_ports` (primary first), probed as [`DEMO_MONITOR`] with `monitor_password`.
pub fn demo_config(port: u16, pg_ports: &[u16], monitor_password: &str, tls: bool) -> String {
    let host = if tls { "localhost" } else { "127.0.0.1" };
    let hosts: Vec<String> = pg_ports.iter().map(|p| format!("\"{host}:{p}\"")).collect();
    let tls_lines = if tls {
        "# The servers accept the demo roles over TLS only (hostssl); their certificate is for\n\
         # localhost, signed by the demo's CA.\n\
         server_tls_sslmode = \"verify-full\"\n\
         server_tls_ca_file = \"ca.pem\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"# Written by `pgsluice demo`.
[general]
listen_addr = "127.0.0.1"
listen_port = {port}
max_client_conn = 1000
pool_mode = "transaction"
default_pool_size = 10
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
admin_users = ["{DEMO_USER}"]      # may use the admin console (database "pgbouncer")
# Failover settings at their defaults:
# health_check_interval = "1s"
# health_check_fail_threshold = 3
# health_check_success_threshold = 2
# failover_wait_timeout = "10s"

[databases.{DEMO_USER}]
# The primary is found by the health probes; the order does not matter.
hosts = [{hosts}]
health_check_user = "{DEMO_MONITOR}"
health_check_password = "{monitor_password}"
"#,
        hosts = hosts.join(", ")
    );
    text.replace("# failover_wait_timeout = \"10s\"\n", &format!("# failover_wait_timeout = \"10s\"\n{tls_lines}"))
}

/// A CA and a server certificate for `localhost` it signs, made with the `openssl` command
/// in `dir`: (CA PEM, certificate PEM, key PEM).
fn demo_certificates(dir: &Path) -> Result<(String, String, String), DemoError> {
    let openssl = |args: &[&str]| -> Result<(), DemoError> {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(DemoError::Io(std::io::Error::other(format!("openssl {}: {err}", args.join(" ")))));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "7", "-subj", "/CN=pgsluice demo CA"],
        ]
        .concat(),
    )?;
    openssl(&[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat())?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n")?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "7",
        "-extfile",
        "san.ext",
    ])?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    Ok((read("ca.pem")?, read("server.crt")?, read("server.key")?))
}

/// The servers' pg_hba.conf with `--tls`: the superuser (the demo's own tooling, replication)
/// may use plain TCP, every other role only TLS.
const TLS_HBA: &str = "local all all scram-sha-256\n\
hostnossl all postgres 127.0.0.1/32 scram-sha-256\n\
hostnossl replication postgres 127.0.0.1/32 scram-sha-256\n\
hostssl all all 127.0.0.1/32 scram-sha-256\n\
hostssl all all ::1/128 scram-sha-256\n";

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Starting or preparing the local clusters failed.
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

/// The primary (first) and its replicas. Dropping it stops and deletes them all.
struct Clusters(Vec<LocalCluster>);

impl Drop for Clusters {
    fn drop(&mut self) {
        // Replicas first, so they do not log the primary's disappearance.
        while let Some(c) = self.0.pop() {
            drop(c);
        }
    }
}

/// Starts the primary, creates `app` (role, database, table) and the monitor role, then
/// takes the replicas' base backups (which therefore contain both roles).
fn start_clusters(monitor_password: &str, tls: Option<&(String, String, String)>) -> Result<Clusters, DemoError> {
    let su_password = format!("su-{:016x}", rand::random::<u64>());
    let mut opts = ClusterOptions { superuser_password: su_password, ..ClusterOptions::default() };
    if let Some((_, cert, key)) = tls {
        opts.extra_conf = vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), "server.crt".into()),
            ("ssl_key_file".into(), "server.key".into()),
        ];
        opts.hba = Some(TLS_HBA.into());
        opts.files = vec![("server.crt".into(), cert.clone()), ("server.key".into(), key.clone())];
    }
    let primary = LocalCluster::start_primary(opts)?;
    primary.create_user_and_db(DEMO_USER, DEMO_PASSWORD)?;
    primary.psql(DEMO_USER, "CREATE TABLE IF NOT EXISTS greetings(id serial primary key, msg text); INSERT INTO greetings(msg) VALUES ('hello from pgsluice'); ALTER TABLE greetings OWNER TO app;")?;
    // The password is hex digits: nothing to quote.
    primary.psql(
        "postgres",
        &format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE {DEMO_MONITOR} LOGIN PASSWORD '{monitor_password}' IN ROLE pg_monitor"
        ),
    )?;
    let mut clusters = Clusters(vec![primary]);
    for _ in 0..DEMO_REPLICAS {
        let replica = LocalCluster::start_replica(&clusters.0[0], 0)?;
        clusters.0.push(replica);
    }
    Ok(clusters)
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(port: u16, tls: bool) -> Result<(), DemoError> {
    println!(
        "pgsluice demo: starting a local PostgreSQL primary and {DEMO_REPLICAS} streaming replicas{} (this takes a few seconds)...",
        if tls { " that accept only TLS" } else { "" }
    );
    let monitor_password = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    let pw = monitor_password.clone();
    let certs_dir = std::env::temp_dir().join(format!("pgsluice-demo-certs-{}", std::process::id()));
    let certs = if tls {
        std::fs::create_dir_all(&certs_dir)?;
        let dir = certs_dir.clone();
        Some(tokio::task::spawn_blocking(move || demo_certificates(&dir)).await??)
    } else {
        None
    };
    let c = certs.clone();
    let clusters = tokio::task::spawn_blocking(move || start_clusters(&pw, c.as_ref())).await??;
    let _ = std::fs::remove_dir_all(&certs_dir);
    let primary = &clusters.0[0];
    let verifier = primary.scram_verifier(DEMO_USER)?;
    let bin_dir = primary.psql("postgres", "SELECT setting FROM pg_config WHERE name = 'BINDIR'")?;
    let dir =
        primary.data_dir().parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir).join("pgsluice-demo");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("userlist.txt"), format!("\"{DEMO_USER}\" \"{verifier}\"\n"))?;
    let cfg_path = dir.join("pgsluice.toml");
    let pg_ports: Vec<u16> = clusters.0.iter().map(LocalCluster::port).collect();
    if let Some((ca, _, _)) = &certs {
        std::fs::write(dir.join("ca.pem"), ca)?;
    }
    std::fs::write(&cfg_path, demo_config(port, &pg_ports, &monitor_password, certs.is_some()))?;
    let cfg = Config::load(&cfg_path)?;
    let handle =
        ServerHandle::start(Shared::new(cfg), None).await.map_err(|source| DemoError::Listen { port, source })?;
    print!("{}", instructions(&clusters.0, &bin_dir, &cfg_path, handle.addr.port()));
    crate::shutdown::wait_for_signal().await;
    println!("stopping...");
    handle.shutdown(Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(move || drop(clusters)).await?;
    Ok(())
}

/// What the demo prints once pgsluice is listening on `port`: the hosts, how to connect, and
/// the commands for a failover.
fn instructions(clusters: &[LocalCluster], bin_dir: &str, cfg_path: &Path, port: u16) -> String {
    let url = format!("postgres://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/{DEMO_USER}");
    let admin_url = format!("postgres://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/pgbouncer");
    let pg_ctl = |c: &LocalCluster, args: &str| pg_ctl_line(bin_dir, c.data_dir(), args, running_as_root());
    let hosts: String = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let role = if i == 0 { "primary" } else { "replica" };
            format!("PostgreSQL {role} on 127.0.0.1:{}, data directory {}\n", c.port(), c.data_dir().display())
        })
        .collect();
    let (primary, replica) = (&clusters[0], &clusters[1]);
    format!(
        r#"
{hosts}pgsluice serves them as database {DEMO_USER} on 127.0.0.1:{port}; config {cfg}.
Its log (stderr) says "primary found", "primary changed (failover)", "host is down", ...

Connect with:
    psql "{url}"
Reads go to the replicas (least busy first), writes to the primary; see which server answered:
    for i in 1 2 3 4; do psql -XAtc "SELECT inet_server_port()" "{url}"; done
Write twice a second and show which server took each write:
    while sleep 0.5; do psql -XAtc "INSERT INTO greetings(msg) VALUES ('tick') RETURNING id, inet_server_port()" "{url}"; done

Fail over to the first replica. A planned switchover: stop the primary cleanly (it sends
its last WAL to the replicas), then promote:
    {stop_fast}
    {promote}
A crash: the same with "-m immediate" instead of "-m fast". Until the promoted replica is
seen (up to health_check_interval = 1s after the promotion), writes wait; each waits at
most failover_wait_timeout = 10s. Promoting while the primary still runs instead shows
fencing: the old primary gets no traffic once the promoted replica is seen, but writes it
took in the meantime are not on the new primary.
The other replica keeps following the old primary: pgsluice does not repoint replicas.

Admin console (PgBouncer's commands, plus SHOW HOSTS and SHOW ROUTES):
    psql "{admin_url}" -c "SHOW POOLS" -c "SHOW HOSTS"

Load test: PGPASSWORD={DEMO_PASSWORD} pgbench -i -h 127.0.0.1 -p {port} -U {DEMO_USER} {DEMO_USER} && PGPASSWORD={DEMO_PASSWORD} pgbench -S -c 20 -T 10 -h 127.0.0.1 -p {port} -U {DEMO_USER} {DEMO_USER}
Press Ctrl-C to stop (the three servers are stopped and deleted).
"#,
        cfg = cfg_path.display(),
        promote = pg_ctl(replica, "-w promote"),
        stop_fast = pg_ctl(primary, "-m fast -w stop"),
    )
}

/// A shell command line running `pg_ctl -D DATA ARGS`. As root the servers belong to
/// [`PG_OS_USER`], so the command goes through `runuser`, from `/` (the unprivileged user may
/// not be able to enter the current directory).
fn pg_ctl_line(bin_dir: &str, data_dir: &Path, args: &str, root: bool) -> String {
    let pg_ctl = shell_quote(&Path::new(bin_dir).join("pg_ctl").display().to_string());
    let data = shell_quote(&data_dir.display().to_string());
    if root {
        format!("(cd / && runuser -u {PG_OS_USER} -- {pg_ctl} -D {data} {args})")
    } else {
        format!("{pg_ctl} -D {data} {args}")
    }
}

/// `s` as one shell word: unchanged if it is made of safe characters, else single-quoted.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether this process runs as root (then [`crate::localpg`] runs the servers as
/// [`PG_OS_USER`]). `/proc/self` belongs to the effective user.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_loads_with_three_probed_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("userlist.txt"), "\"app\" \"app-secret\"\n").expect("userlist");
        let path = dir.path().join("pgsluice.toml");
        std::fs::write(&path, demo_config(7432, &[5001, 5002, 5003], "0123abcd", false)).expect("config");
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let db = &cfg.databases[DEMO_USER];
        assert_eq!(db.hosts.iter().map(|h| h.port).collect::<Vec<_>>(), [5001, 5002, 5003]);
        let probe = db.probe.as_ref().expect("probed");
        assert_eq!(probe.user, DEMO_MONITOR);
        assert!(probe.secret.is_some());
        assert_eq!(cfg.listen.port(), 7432);
    }

    #[test]
    fn pg_ctl_lines() {
        let data = Path::new("/tmp/pgsluice-localpg-0/1-0-2/data");
        assert_eq!(
            pg_ctl_line("/usr/lib/postgresql/15/bin", data, "-w promote", false),
            "/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgsluice-localpg-0/1-0-2/data -w promote"
        );
        assert_eq!(
            pg_ctl_line("/opt/pg bin", data, "-w promote", true),
            "(cd / && runuser -u pgsluice_pg -- '/opt/pg bin/pg_ctl' -D /tmp/pgsluice-localpg-0/1-0-2/data -w promote)"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
