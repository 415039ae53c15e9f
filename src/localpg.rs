//! Throw-away local PostgreSQL clusters built from the installed server binaries.
//!
//! Used by `pgsluice demo` (a primary plus replicas until Ctrl-C) and by the integration-test
//! harness (many clusters at once, from many threads and several test binaries). Everything is
//! blocking `std::process::Command`; there is no tokio in here.
//!
//! # Invariants
//!
//! * Every cluster listens on `127.0.0.1` only, with its unix socket inside its own directory, and
//!   uses SCRAM-SHA-256 for every `pg_hba.conf` line (no `trust` anywhere).
//! * Each cluster gets a unique directory (`<tmp>/pgsluice-localpg-<euid>/<pid>-<counter>-<nanos>`)
//!   unless [`ClusterOptions::base_dir`] is given, so parallel creation never collides.
//!   Ports picked automatically (`port = 0`) are retried up to 5 times when the postmaster
//!   reports that the address is already in use.
//! * `initdb` refuses to run as root. When the process runs as root, every server binary runs as
//!   the system user `pgsluice_pg` (created on demand) through `runuser`, and the cluster
//!   directory is owned by that user. Its parents must be traversable by that user, so the base
//!   directory is created with mode 0755 (0700 when not root).
//! * **Orphan guard**: a cluster can live in a `static` whose `Drop` never runs, so each cluster
//!   has a detached watchdog shell that stops the postmaster (`-m immediate`) and removes the
//!   temporary directory as soon as the owning process is gone. [`Drop`] does the same directly.
//! * Nothing here panics; failures carry the command, its stderr tail and the server log tail.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// OS user the server binaries run as when this process is root.
const PG_USER: &str = "pgsluice_pg";
/// The only address clusters listen on.
const HOST: &str = "127.0.0.1";
/// Start attempts when the automatically picked port turns out to be taken.
const START_ATTEMPTS: usize = 5;
/// How long to wait for a started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of stderr / server log kept in errors.
const TAIL_LINES: usize = 30;

/// Watchdog script, run as `sh -c WATCHDOG name OWNER_PID DATA_DIR RM_DIR PG_CTL...`.
/// `kill -0` runs as the owner's user (root may signal anyone; an unprivileged `pgsluice_pg`
/// could not probe a root owner), and `pg_ctl` goes through `runuser` when needed.
const WATCHDOG: &str = r#"owner=$1 data=$2 dir=$3; shift 3
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
"$@" -D "$data" -m immediate -w -t 30 stop
if [ -n "$dir" ]; then rm -rf -- "$dir"; fi"#;

/// Errors from creating or driving a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No directory with `initdb` was found.
    #[error("PostgreSQL server binaries not found; install postgresql-15 (or set PGSLUICE_PG_BINDIR): {0}")]
    BinariesNotFound(String),
    /// The options cannot work (empty superuser, password with a newline, ...).
    #[error("invalid cluster options: {0}")]
    InvalidOptions(String),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command could not be spawned or exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status, or why it could not be spawned.
        status: String,
        /// Tail of its stderr (stdout when stderr was empty).
        stderr: String,
    },
    /// The server did not start, or did not accept connections in time.
    #[error("{what} (`{command}`):\n{stderr}\n--- server log tail ---\n{log_tail}")]
    Server {
        /// What went wrong.
        what: String,
        /// The last command involved.
        command: String,
        /// Tail of that command's stderr or error.
        stderr: String,
        /// Tail of the server log written during the attempt.
        log_tail: String,
    },
    /// `pg_authid` has no password for this role (or no such role).
    #[error("role {0:?} not found or has no password")]
    RoleNotFound(String),
}

/// How to create a primary with [`LocalCluster::start_primary`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// TCP port on 127.0.0.1; 0 (the default) picks a free one and retries on collisions.
    pub port: u16,
    /// Bootstrap superuser name; default `"postgres"`.
    pub superuser: String,
    /// Superuser password (SCRAM everywhere, so it must not be empty); default `"postgres"`.
    pub superuser_password: String,
    /// Extra `postgresql.conf` settings, appended last as `name = 'value'` (value quoted for you).
    pub extra_conf: Vec<(String, String)>,
    /// Directory to hold the cluster (`data/`, socket, log); created if missing, kept on drop
    /// (chowned to `pgsluice_pg` when root; its parents must be traversable by that user).
    /// `None` (the default) makes a fresh temporary directory that is removed on drop.
    pub base_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            port: 0,
            superuser: "postgres".to_owned(),
            superuser_password: "postgres".to_owned(),
            extra_conf: Vec::new(),
            base_dir: None,
        }
    }
}

/// A running postmaster in its own directory. `Drop` stops it (`pg_ctl stop -m immediate`),
/// ends its watchdog and removes its directory if it was a temporary one.
pub struct LocalCluster {
    bin_dir: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    superuser: String,
    password: String,
    /// `(uid, gid)` of `pgsluice_pg` when running as root; binaries then go through `runuser`.
    pg_user: Option<(u32, u32)>,
    remove_on_drop: bool,
    watchdog: Option<Child>,
}

// === impl LocalCluster ===

impl LocalCluster {
    /// Creates and starts a primary: `initdb --auth=scram-sha-256` (superuser and password via
    /// `--pwfile`), listen on 127.0.0.1 only with the unix socket in the cluster directory,
    /// durability off (`fsync`, `synchronous_commit`, `full_page_writes`), `max_connections=200`,
    /// replication enabled (`wal_level=replica`, `max_wal_senders=10`, `hot_standby=on`,
    /// `wal_keep_size=256MB`), `shared_buffers=128MB`, no logging collector (the server log is
    /// `postgres.log` in the cluster directory), and a `pg_hba.conf` with scram-sha-256 for local
    /// and 127.0.0.1/32 connections, replication included. Then starts it
    /// (`pg_ctl -w -t 60 start -l logfile`) and waits until it accepts connections.
    pub fn start_primary(opts: ClusterOptions) -> Result<LocalCluster, Error> {
        let retry_port = opts.port == 0;
        Self::start_primary_inner(opts, retry_port)
    }

    fn start_primary_inner(opts: ClusterOptions, retry_port: bool) -> Result<Self, Error> {
        if opts.superuser.is_empty() || opts.superuser_password.is_empty() {
            return Err(Error::InvalidOptions("superuser and password must be non-empty".into()));
        }
        if opts.superuser_password.contains(['\n', '\r']) {
            return Err(Error::InvalidOptions("password must be a single line".into()));
        }
        let bin_dir = find_bin_dir()?;
        let port = if opts.port == 0 { free_port() } else { opts.port };
        let mut c = Self::prepare(bin_dir, opts.superuser, opts.superuser_password, opts.base_dir, port)?;
        let pwfile = c.dir.join("pwfile");
        c.write_private(&pwfile, format!("{}\n", c.password).as_bytes())?;
        let mut initdb = c.pg_cmd("initdb");
        initdb.arg("-D").arg(&c.data_dir).arg("-U").arg(&c.superuser).arg("--pwfile").arg(&pwfile);
        initdb.args(["--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"]);
        let result = run(&mut initdb);
        let _ = fs::remove_file(&pwfile);
        result?;
        let mut conf = c.own_conf();
        for (k, v) in [
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "200"),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("hot_standby", "on"),
            ("wal_keep_size", "256MB"),
            ("shared_buffers", "128MB"),
            ("logging_collector", "off"),
            ("password_encryption", "scram-sha-256"),
        ] {
            conf.push((k.to_owned(), v.to_owned()));
        }
        conf.extend(opts.extra_conf);
        c.append_conf(&conf)?;
        let hba = "# written by pgsluice localpg: SCRAM everywhere, TCP on 127.0.0.1 only\n\
                   local all         all              scram-sha-256\n\
                   host  all         all 127.0.0.1/32 scram-sha-256\n\
                   local replication all              scram-sha-256\n\
                   host  replication all 127.0.0.1/32 scram-sha-256\n";
        let path = c.data_dir.join("pg_hba.conf");
        // No `create`: truncating the existing file keeps it owned by the server user.
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(hba.as_bytes()))
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        c.start_postmaster(retry_port)?;
        Ok(c)
    }

    /// Creates a streaming replica of `primary`: `pg_basebackup -R -X stream` as the primary's
    /// superuser (password via `PGPASSWORD`, which `-R` records in `primary_conninfo`), on `port`
    /// (0 = pick a free one, retried on collisions), then starts it and waits until it accepts
    /// connections in recovery.
    pub fn start_replica(primary: &LocalCluster, port: u16) -> Result<LocalCluster, Error> {
        let chosen = if port == 0 { free_port() } else { port };
        let (su, pw) = (primary.superuser.clone(), primary.password.clone());
        let mut c = Self::prepare(primary.bin_dir.clone(), su, pw, None, chosen)?;
        let mut cmd = c.pg_cmd("pg_basebackup");
        cmd.arg("-D").arg(&c.data_dir).args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        cmd.args(["-h", HOST, "-p", &primary.port.to_string(), "-U", &c.superuser]);
        c.client_env(&mut cmd);
        run(&mut cmd)?;
        // postgresql.conf came from the primary: override what is per-cluster.
        c.append_conf(&c.own_conf())?;
        c.start_postmaster(port == 0)?;
        match c.psql("postgres", "select pg_is_in_recovery()")?.as_str() {
            "t" => Ok(c),
            other => Err(c.server_error(format!("replica is not in recovery ({other:?})"), "", String::new(), 0)),
        }
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Bootstrap superuser name.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// Bootstrap superuser password.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// Runs `sql` with `psql -X -q -v ON_ERROR_STOP=1 -At -h 127.0.0.1 -p PORT -U superuser -d db
    /// -c sql` (password via `PGPASSWORD` on the child) and returns stdout, trimmed. Several
    /// statements in one call run in one transaction, so `CREATE DATABASE` needs its own call.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", HOST]);
        cmd.args(["-p", &self.port.to_string(), "-U", &self.superuser, "-d", db, "-c", sql]);
        self.client_env(&mut cmd);
        run(&mut cmd)
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password'` (SCRAM-hashed) and
    /// `CREATE DATABASE name OWNER name`. Fails if either already exists.
    pub fn create_user_and_db(&self, name: &str, password: &str) -> Result<(), Error> {
        let (ident, lit) = (quote_ident(name), quote_literal(password));
        let role = format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE {ident} LOGIN PASSWORD {lit}");
        self.psql("postgres", &role)?;
        self.psql("postgres", &format!("CREATE DATABASE {ident} OWNER {ident}"))?;
        Ok(())
    }

    /// The stored SCRAM verifier of `role` (`SELECT rolpassword FROM pg_authid WHERE rolname = ...`),
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn scram_verifier(&self, role: &str) -> Result<String, Error> {
        let sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = {}", quote_literal(role));
        let verifier = self.psql("postgres", &sql)?;
        if verifier.is_empty() {
            return Err(Error::RoleNotFound(role.to_owned()));
        }
        Ok(verifier)
    }

    /// Promotes a replica: `pg_ctl promote -w`, which returns once it has left recovery.
    pub fn promote(&self) -> Result<(), Error> {
        let mut cmd = self.pg_cmd("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(["-w", "-t", "60", "promote"]);
        run(&mut cmd).map(drop)
    }

    /// Stops the server with `pg_ctl stop -m fast`, or `-m immediate` (crash-like) when
    /// `immediate`. The cluster stays usable for [`LocalCluster::start_again`].
    pub fn stop(&self, immediate: bool) -> Result<(), Error> {
        let mode = if immediate { "immediate" } else { "fast" };
        let mut cmd = self.pg_cmd("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args(["-m", mode, "-w", "-t", "60", "stop"]);
        run(&mut cmd).map(drop)
    }

    /// Starts a stopped server again on the same port and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), Error> {
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    /// The last `lines` lines of the server log, for test failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log_file) {
            Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
            Err(e) => format!("<could not read {}: {e}>", self.log_file.display()),
        }
    }

    /// Makes the cluster directory and its watchdog; the returned value cleans up on drop, so
    /// every later failure in the constructors just returns.
    fn prepare(
        bin_dir: PathBuf,
        superuser: String,
        password: String,
        base_dir: Option<PathBuf>,
        port: u16,
    ) -> Result<Self, Error> {
        let pg_user = if is_root() { Some(ensure_pg_user()?) } else { None };
        let (dir, remove_on_drop) = match base_dir {
            Some(dir) => {
                fs::create_dir_all(&dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
                chown_to(&dir, pg_user)?;
                (dir, false)
            }
            None => (temp_cluster_dir(pg_user)?, true),
        };
        let mut c = LocalCluster {
            bin_dir,
            data_dir: dir.join("data"),
            log_file: dir.join("postgres.log"),
            dir,
            port,
            superuser,
            password,
            pg_user,
            remove_on_drop,
            watchdog: None,
        };
        c.watchdog = Some(c.spawn_watchdog()?);
        Ok(c)
    }

    fn spawn_watchdog(&self) -> Result<Child, Error> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", WATCHDOG, "pgsluice-localpg-watchdog", &std::process::id().to_string()]);
        cmd.arg(&self.data_dir).arg(if self.remove_on_drop { self.dir.as_os_str() } else { std::ffi::OsStr::new("") });
        if self.pg_user.is_some() {
            cmd.args(["runuser", "-u", PG_USER, "--"]);
        }
        cmd.arg(self.bin_dir.join("pg_ctl"));
        // Own process group: a terminal Ctrl-C must not kill the guard before the owner.
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).current_dir("/").process_group(0);
        let command = describe(&cmd);
        cmd.spawn().map_err(|e| Error::Command {
            command,
            status: format!("could not spawn: {e}"),
            stderr: String::new(),
        })
    }

    /// Settings that differ per cluster (a replica inherits the rest from its primary).
    fn own_conf(&self) -> Vec<(String, String)> {
        vec![
            ("listen_addresses".to_owned(), HOST.to_owned()),
            ("port".to_owned(), self.port.to_string()),
            ("unix_socket_directories".to_owned(), self.dir.display().to_string()),
        ]
    }

    fn append_conf(&self, settings: &[(String, String)]) -> Result<(), Error> {
        let mut text = String::from("\n# added by pgsluice localpg\n");
        for (k, v) in settings {
            text.push_str(&format!("{k} = '{}'\n", v.replace('\\', "\\\\").replace('\'', "''")));
        }
        let path = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| io_err(format!("appending to {}", path.display()), e))
    }

    /// Starts the postmaster, moving to another free port when `retry_port` and the port is taken.
    fn start_postmaster(&mut self, retry_port: bool) -> Result<(), Error> {
        let mut attempt = 1;
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return self.wait_ready(),
                Err(Error::Server { ref log_tail, .. })
                    if retry_port
                        && attempt < START_ATTEMPTS
                        && (log_tail.contains("could not bind") || log_tail.contains("Address already in use")) =>
                {
                    attempt += 1;
                    self.port = free_port();
                    self.append_conf(&[("port".to_owned(), self.port.to_string())])?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        let offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.pg_cmd("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file);
        // Own process group (inherited by the postmaster): Ctrl-C in `pgsluice demo` reaches only
        // pgsluice, which then shuts the clusters down in order.
        cmd.args(["-w", "-t", "60", "start"]).process_group(0);
        match run(&mut cmd) {
            Ok(_) => Ok(()),
            Err(Error::Command { command, status, stderr }) => Err(self.server_error(
                format!("server failed to start on port {} ({status})", self.port),
                &command,
                stderr,
                offset,
            )),
            Err(e) => Err(e),
        }
    }

    /// Polls with psql until the server accepts a login (or is gone, or the timeout passes).
    fn wait_ready(&self) -> Result<(), Error> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let err = match self.psql("postgres", "select 1") {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let gone = !self.data_dir.join("postmaster.pid").exists();
            if gone || Instant::now() > deadline {
                let what = if gone {
                    "server exited before accepting connections"
                } else {
                    "server did not accept connections in time"
                };
                return Err(self.server_error(what.to_owned(), "psql -c 'select 1'", err.to_string(), 0));
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn server_error(&self, what: String, command: &str, stderr: String, log_offset: u64) -> Error {
        let log = fs::read(&self.log_file).unwrap_or_default();
        let from = usize::try_from(log_offset).unwrap_or(0).min(log.len());
        let log_tail = tail(&String::from_utf8_lossy(&log[from..]), TAIL_LINES);
        Error::Server { what, command: command.to_owned(), stderr, log_tail }
    }

    /// A command for a server binary, run as `pgsluice_pg` via `runuser` when we are root.
    fn pg_cmd(&self, bin: &str) -> Command {
        let path = self.bin_dir.join(bin);
        let mut cmd = if self.pg_user.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // "/" so that a root-only cwd does not trip up the unprivileged binaries.
        cmd.current_dir("/").env("LC_ALL", "C");
        cmd
    }

    /// Connection environment for libpq clients; env survives `runuser` (no `--login`).
    fn client_env(&self, cmd: &mut Command) {
        cmd.env("PGPASSWORD", &self.password).env("PGSSLMODE", "disable").env("PGCONNECT_TIMEOUT", "10");
        cmd.env_remove("PGSERVICE").env_remove("PGOPTIONS").env("LC_ALL", "C");
    }

    /// Writes a 0600 file owned by the server user.
    fn write_private(&self, path: &Path, contents: &[u8]) -> Result<(), Error> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(contents))
            .map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        chown_to(path, self.pg_user)
    }

    /// Last resort when `pg_ctl stop` fails: SIGKILL the postmaster named in postmaster.pid.
    fn kill_postmaster(&self) {
        let pid = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok();
        if let Some(pid) = pid.as_deref().and_then(|s| s.lines().next()).and_then(|l| l.trim().parse::<u32>().ok()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() && self.stop(true).is_err() {
            self.kill_postmaster();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if self.remove_on_drop {
            for _ in 0..5 {
                match fs::remove_dir_all(&self.dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => sleep(Duration::from_millis(200)),
                    _ => break,
                }
            }
        }
    }
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("superuser", &self.superuser)
            .finish_non_exhaustive()
    }
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the socket). Another process may
/// grab it before the server binds it; cluster start-up retries for that case.
pub fn free_port() -> u16 {
    match TcpListener::bind((HOST, 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        // Practically unreachable; a pseudo-random high port still goes through the retry.
        Err(_) => {
            20_000 + (SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) % 30_000) as u16
        }
    }
}

/// `PGSLUICE_PG_BINDIR`, else the highest `/usr/lib/postgresql/<version>/bin` with `initdb`,
/// else `pg_config --bindir`.
fn find_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("PGSLUICE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
        return Err(Error::BinariesNotFound(format!("PGSLUICE_PG_BINDIR={} has no initdb", dir.display())));
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        let Some(version) = parse_version(&entry.file_name().to_string_lossy()) else { continue };
        let bin = entry.path().join("bin");
        let better = match &best {
            Some((v, _)) => version > *v,
            None => true,
        };
        if better && bin.join("initdb").is_file() {
            best = Some((version, bin));
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    if let Ok(out) = run(Command::new("pg_config").arg("--bindir")) {
        let bin = PathBuf::from(out);
        if bin.join("initdb").is_file() {
            return Ok(bin);
        }
    }
    Err(Error::BinariesNotFound(
        "searched PGSLUICE_PG_BINDIR, /usr/lib/postgresql/*/bin and `pg_config --bindir`".into(),
    ))
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|p| p.parse().ok()).collect()
}

/// `<tmp>/pgsluice-localpg-<euid>/<pid>-<counter>-<nanos>`, 0700, owned by the server user.
fn temp_cluster_dir(pg_user: Option<(u32, u32)>) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let euid = current_euid();
    let mut root = std::env::temp_dir();
    if pg_user.is_some() && !world_traversable(&root) {
        root = PathBuf::from("/tmp");
    }
    let base = root.join(format!("pgsluice-localpg-{euid}"));
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    match fs::DirBuilder::new().mode(0o700).create(&base) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(ctx("creating", &base), e)),
        _ => {}
    }
    let meta = fs::symlink_metadata(&base).map_err(|e| io_err(ctx("inspecting", &base), e))?;
    if !meta.is_dir() || meta.uid() != euid {
        let e = io::Error::new(io::ErrorKind::PermissionDenied, "not a directory owned by this user");
        return Err(io_err(ctx("refusing base directory", &base), e));
    }
    // Explicit mode (not subject to umask): the server user must be able to traverse it.
    let mode = if pg_user.is_some() { 0o755 } else { 0o700 };
    fs::set_permissions(&base, fs::Permissions::from_mode(mode)).map_err(|e| io_err(ctx("chmod", &base), e))?;
    for _ in 0..100 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{}-{n}-{nanos}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                if let Err(e) = chown_to(&dir, pg_user) {
                    let _ = fs::remove_dir(&dir);
                    return Err(e);
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(ctx("creating", &dir), e)),
        }
    }
    Err(io_err(ctx("no unique directory name under", &base), io::ErrorKind::AlreadyExists.into()))
}

/// Whether every ancestor of `path` is searchable by other users.
fn world_traversable(path: &Path) -> bool {
    path.ancestors().all(|p| fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0))
}

fn chown_to(path: &Path, pg_user: Option<(u32, u32)>) -> Result<(), Error> {
    match pg_user {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| io_err(format!("chown {} to {PG_USER}", path.display()), e)),
        None => Ok(()),
    }
}

/// Looks up `pgsluice_pg`, creating it if missing. Several processes may race here: `useradd`
/// then fails with "already exists" (exit 9) or cannot lock /etc/passwd (exit 10), so retry
/// until the user is visible.
fn ensure_pg_user() -> Result<(u32, u32), Error> {
    let mut last = None;
    for attempt in 0..50u64 {
        if let Some(ids) = lookup_user(PG_USER) {
            return Ok(ids);
        }
        let mut cmd = Command::new("useradd");
        cmd.args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER]);
        match run(&mut cmd) {
            Ok(_) => continue,
            Err(e) => last = Some(e),
        }
        sleep(Duration::from_millis(20 + 20 * (attempt % 5)));
    }
    Err(last.unwrap_or_else(|| Error::InvalidOptions(format!("user {PG_USER} could not be created"))))
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let line = run(Command::new("getent").args(["passwd", name])).ok()?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[allow(unsafe_code)]
fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn is_root() -> bool {
    current_euid() == 0
}

/// Runs `cmd` with stdin null; on success returns stdout trimmed.
fn run(cmd: &mut Command) -> Result<String, Error> {
    let command = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| Error::Command {
        command: command.clone(),
        status: format!("could not spawn: {e}"),
        stderr: String::new(),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    Err(Error::Command { command, status: out.status.to_string(), stderr: tail(&text, TAIL_LINES) })
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            s.push_str(&format!(" {arg:?}"));
        } else {
            s.push(' ');
            s.push_str(&arg);
        }
    }
    s
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn io_err(context: String, source: io::Error) -> Error {
    Error::Io { context, source }
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on by default).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    //! These start real servers (a few seconds each); they run in parallel with each other.
    use super::*;

    fn ok<T>(r: Result<T, Error>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// PIDs of processes whose command line mentions `dir`.
    fn processes_mentioning(dir: &Path) -> Vec<u32> {
        let needle = dir.display().to_string();
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            // The watchdog shell mentions the dir too, but belongs to this process and dies in drop.
            if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }

    fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn quoting_and_versions() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert!(parse_version("16").unwrap() > parse_version("9.6").unwrap());
        assert_eq!(parse_version("main"), None);
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn primary_replica_lifecycle() {
        let primary = ok(LocalCluster::start_primary(ClusterOptions::default()));
        assert_eq!(primary.host(), "127.0.0.1");
        ok(primary.create_user_and_db("app", "it's a \\ secret"));
        assert_eq!(ok(primary.psql("app", "select 1")), "1");
        assert!(ok(primary.scram_verifier("app")).starts_with("SCRAM-SHA-256$"));
        assert!(matches!(primary.scram_verifier("nobody"), Err(Error::RoleNotFound(_))));
        let err = primary.psql("app", "select nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");

        let replica = ok(LocalCluster::start_replica(&primary, 0));
        assert_ne!(replica.port(), primary.port());
        assert_eq!(ok(replica.psql("postgres", "select pg_is_in_recovery()")), "t");
        ok(primary.psql("app", "create table t (x int); insert into t values (42)"));
        wait_until("replication of t", Duration::from_secs(10), || {
            replica.psql("app", "select x from t").is_ok_and(|s| s == "42")
        });
        ok(replica.promote());
        assert_eq!(ok(replica.psql("postgres", "select pg_is_in_recovery()")), "f");
        ok(replica.psql("app", "insert into t values (43)"));

        ok(primary.stop(false));
        assert!(primary.psql("postgres", "select 1").is_err());
        ok(primary.start_again());
        assert_eq!(ok(primary.psql("app", "select count(*) from t")), "1");
        ok(primary.stop(true));
        ok(primary.start_again());
        assert!(primary.log_tail(5).lines().count() <= 5);

        let dirs = [primary.dir.clone(), replica.dir.clone()];
        drop(replica);
        drop(primary);
        for dir in &dirs {
            assert!(!dir.exists(), "{} still exists", dir.display());
            assert_eq!(processes_mentioning(dir), Vec::<u32>::new(), "left behind for {}", dir.display());
        }
    }

    #[test]
    fn parallel_primaries() {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                std::thread::spawn(move || {
                    let opts = ClusterOptions {
                        superuser: format!("su{i}"),
                        superuser_password: format!("pw {i}'"),
                        extra_conf: vec![("cluster_name".into(), format!("it's {i}"))],
                        ..ClusterOptions::default()
                    };
                    let c = ok(LocalCluster::start_primary(opts));
                    assert_eq!(ok(c.psql("postgres", "show cluster_name")), format!("it's {i}"));
                    c
                })
            })
            .collect();
        let clusters: Vec<LocalCluster> = handles.into_iter().map(|h| h.join().expect("thread panicked")).collect();
        let mut ports: Vec<u16> = clusters.iter().map(LocalCluster::port).collect();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        let dirs: Vec<PathBuf> = clusters.iter().map(|c| c.dir.clone()).collect();
        drop(clusters);
        assert!(dirs.iter().all(|d| !d.exists() && processes_mentioning(d).is_empty()));
    }

    #[test]
    fn port_in_use_is_reported_or_retried() {
        let taken = TcpListener::bind((HOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let opts = ClusterOptions { port, ..ClusterOptions::default() };
        let err = LocalCluster::start_primary(opts.clone()).unwrap_err().to_string();
        assert!(err.contains("could not bind") || err.contains("already in use"), "{err}");
        // Same collision with an automatically picked port: moves to another one.
        let c = ok(LocalCluster::start_primary_inner(opts, true));
        assert_ne!(c.port(), port);
        assert_eq!(ok(c.psql("postgres", "select 1")), "1");
    }

    const ORPHAN_ENV: &str = "PGSLUICE_LOCALPG_ORPHAN_CHILD";

    /// Helper for `orphan_guard_cleans_up`: leaks a cluster and exits.
    #[test]
    #[ignore = "helper run by orphan_guard_cleans_up"]
    fn orphan_child() {
        if std::env::var_os(ORPHAN_ENV).is_none() {
            return;
        }
        let c = ok(LocalCluster::start_primary(ClusterOptions::default()));
        println!("ORPHAN_DIR={}", c.dir.display());
        std::mem::forget(c);
    }

    #[test]
    fn orphan_guard_cleans_up() {
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let out = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", &format!("{module}::orphan_child"), "--ignored", "--nocapture", "--test-threads=1"])
            .env(ORPHAN_ENV, "1")
            .output()
            .expect("run child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let dir =
            stdout.lines().find_map(|l| l.split_once("ORPHAN_DIR=").map(|(_, d)| d)).expect("child printed its dir");
        let dir = PathBuf::from(dir);
        wait_until("orphan cleanup", Duration::from_secs(20), || {
            !dir.exists() && processes_mentioning(&dir).is_empty()
        });
    }
}
