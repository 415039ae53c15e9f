//! Throw-away local PostgreSQL clusters from the installed server binaries, for `pgsluice demo` and
//! the integration tests (many clusters at once, from many threads and processes). Blocking, no tokio.
//!
//! # Invariants
//!
//! * 127.0.0.1 only (unix socket in the cluster directory); every `pg_hba.conf` line is SCRAM.
//! * Each cluster has a unique directory `<tmp>/pgsluice-localpg-<euid>/<pid>-<n>-<nanos>` (unless
//!   [`ClusterOptions::base_dir`] is set). A port found taken at start-up is replaced (5 attempts).
//! * `initdb` refuses root, so as root the server binaries run via `runuser` as the system user
//!   `pgsluice_pg` (created on demand), which owns the cluster directory; the base directory is 0755.
//! * **Orphan guard**: clusters may live in `static`s whose `Drop` never runs, so each one has a
//!   detached watchdog shell that stops it (`-m immediate`) and removes its temporary directory once
//!   the owning process is gone. `Drop` does the same directly.
//! * No panics; errors carry the command, its stderr tail and the server log tail.

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

/// Runs the server binaries when this process is root.
const PG_USER: &str = "pgsluice_pg";
const HOST: &str = "127.0.0.1";
const TAIL_LINES: usize = 30;
/// Settings for every primary (replicas inherit them), appended to `postgresql.conf`.
const TUNING: &str = "fsync=off synchronous_commit=off full_page_writes=off max_connections=200 wal_level=replica \
    max_wal_senders=10 hot_standby=on wal_keep_size=256MB shared_buffers=128MB logging_collector=off \
    password_encryption=scram-sha-256";
const HBA: &str = "# written by pgsluice localpg: SCRAM everywhere, TCP on 127.0.0.1 only
local all         all              scram-sha-256
host  all         all 127.0.0.1/32 scram-sha-256
local replication all              scram-sha-256
host  replication all 127.0.0.1/32 scram-sha-256
";
/// `sh -c WATCHDOG name OWNER_PID DATA_DIR RM_DIR PG_CTL...`, as the owner's user (`pgsluice_pg` cannot
/// `kill -0` a root owner), in its own process group (a terminal's Ctrl-C must not end it first).
const WATCHDOG: &str = r#"owner=$1 data=$2 dir=$3; shift 3
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
"$@" -D "$data" -m immediate -w -t 30 stop
[ -z "$dir" ] || for i in 1 2 3 4 5; do rm -rf -- "$dir" 2>/dev/null && break; sleep 1; done"#;

/// Errors from creating or driving a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No directory with `initdb` was found.
    #[error("PostgreSQL server binaries not found; install postgresql-15 (or set PGSLUICE_PG_BINDIR): {0}")]
    BinariesNotFound(String),
    /// A filesystem operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    /// A command could not be spawned or exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status, or why it could not be spawned.
        status: String,
        /// Tail of its stderr (of stdout when stderr was empty).
        stderr: String,
    },
    /// The server did not start, or did not accept connections in time.
    #[error("{what} (`{command}`):\n{stderr}\n--- server log tail ---\n{log_tail}")]
    Server {
        /// What went wrong.
        what: String,
        /// The last command involved.
        command: String,
        /// Tail of that command's stderr, or its error.
        stderr: String,
        /// Tail of the server log written during the attempt.
        log_tail: String,
    },
    /// `pg_authid` has no password for this role, or there is no such role.
    #[error("role {0:?} not found or has no password")]
    RoleNotFound(String),
}

/// How to create a primary with [`LocalCluster::start_primary`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Preferred TCP port on 127.0.0.1, 0 (the default) for any free one. If it turns out to be taken,
    /// up to 4 other free ports are tried, so read [`LocalCluster::port`] afterwards.
    pub port: u16,
    /// Bootstrap superuser name; default `"postgres"`.
    pub superuser: String,
    /// Superuser password: one non-empty line (initdb reads the first line of a file); default `"postgres"`.
    pub superuser_password: String,
    /// Extra `postgresql.conf` settings, appended last as `name = 'value'` (quoting is done here).
    pub extra_conf: Vec<(String, String)>,
    /// Directory for the cluster (`data/`, socket, `postgres.log`); created if missing, chowned to
    /// `pgsluice_pg` when root (whose parents it must be able to traverse), kept on drop.
    /// `None` (the default): a fresh temporary directory, removed on drop.
    pub base_dir: Option<PathBuf>,
    /// `pg_hba.conf` instead of the default (SCRAM on every line).
    pub hba: Option<String>,
    /// Files written into the data directory before the server starts, `(name, contents)`,
    /// mode 0600 and owned by the server's user (certificates and keys for `ssl = on`).
    pub files: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let (port, extra_conf, base_dir, postgres) = (0, Vec::new(), None, String::from("postgres"));
        let (hba, files) = (None, Vec::new());
        ClusterOptions {
            port,
            superuser: postgres.clone(),
            superuser_password: postgres,
            extra_conf,
            base_dir,
            hba,
            files,
        }
    }
}

/// A running postmaster in its own directory. `Drop` stops it (`pg_ctl stop -m immediate`),
/// ends its watchdog and removes the directory if it was a temporary one.
#[derive(Debug)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    superuser: String,
    password: String,
    /// `(uid, gid)` of `pgsluice_pg` when running as root; server binaries then go through `runuser`.
    pg_user: Option<(u32, u32)>,
    remove_on_drop: bool,
    watchdog: Option<Child>,
}

// === impl LocalCluster ===

impl LocalCluster {
    /// Creates a primary: `initdb --auth=scram-sha-256` (password via `--pwfile`); `fsync`, `synchronous_commit`,
    /// `full_page_writes` off; `max_connections=200`, `wal_level=replica`, `max_wal_senders=10`, `hot_standby=on`,
    /// `wal_keep_size=256MB`, `shared_buffers=128MB`; log in `postgres.log` (no collector); scram-sha-256 on every
    /// `pg_hba.conf` line. Then `pg_ctl -w -t 60 start -l logfile` and waits until it accepts connections.
    pub fn start_primary(mut opts: ClusterOptions) -> Result<LocalCluster, Error> {
        let extra_conf = std::mem::take(&mut opts.extra_conf);
        let hba = opts.hba.take();
        let files = std::mem::take(&mut opts.files);
        let c = Self::prepare(find_bin_dir()?, opts)?;
        let pwfile = c.dir.join("pwfile");
        let mut create = OpenOptions::new();
        write_file(&pwfile, create.write(true).create_new(true).mode(0o600), &format!("{}\n", c.password))?;
        chown_to(&pwfile, c.pg_user)?;
        let mut initdb = c.pg_cmd("initdb");
        initdb.arg("-D").arg(&c.data_dir).args(["-U", &c.superuser, "--pwfile"]).arg(&pwfile);
        let result = run(initdb.args(["--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"]));
        let _ = fs::remove_file(&pwfile);
        result?;
        c.append_conf(TUNING.split_whitespace().filter_map(|kv| kv.split_once('=')))?;
        c.append_conf(extra_conf)?;
        // No `create`: truncating the existing file keeps it owned by the server user.
        let hba = hba.as_deref().unwrap_or(HBA);
        write_file(&c.data_dir.join("pg_hba.conf"), OpenOptions::new().write(true).truncate(true), hba)?;
        for (name, contents) in &files {
            let path = c.data_dir.join(name);
            write_file(&path, OpenOptions::new().write(true).create(true).truncate(true).mode(0o600), contents)?;
            chown_to(&path, c.pg_user)?;
        }
        c.start_postmaster()
    }

    /// Creates a streaming replica of `primary` with `pg_basebackup -R -X stream` as its superuser
    /// (password via `PGPASSWORD`, which `-R` records in `primary_conninfo`), listening on `port`
    /// (as [`ClusterOptions::port`]), starts it and waits until it accepts connections in recovery.
    pub fn start_replica(primary: &LocalCluster, port: u16) -> Result<LocalCluster, Error> {
        let (superuser, superuser_password) = (primary.superuser.clone(), primary.password.clone());
        let opts = ClusterOptions { port, superuser, superuser_password, ..ClusterOptions::default() };
        let c = Self::prepare(primary.bin_dir.clone(), opts)?;
        let mut cmd = c.pg_cmd("pg_basebackup");
        cmd.arg("-D").arg(&c.data_dir).args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-h", HOST]);
        run(c.client_env(cmd.args(["-p", &primary.port.to_string(), "-U", &c.superuser])))?;
        let c = c.start_postmaster()?;
        match c.psql("postgres", "select pg_is_in_recovery()")?.as_str() {
            "t" => Ok(c),
            other => Err(c.server_error(format!("replica not in recovery ({other:?})"), "psql", String::new(), 0)),
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

    /// Runs `psql -X -q -v ON_ERROR_STOP=1 -At -h 127.0.0.1 -p PORT -U superuser -d db -c sql`
    /// (password via `PGPASSWORD` on the child) and returns stdout, trimmed. Several statements in
    /// one call run in one transaction, so `CREATE DATABASE` needs a call of its own.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", HOST, "-p", &self.port.to_string()]);
        run(self.client_env(cmd.args(["-U", &self.superuser, "-d", db, "-c", sql])))
    }

    /// `CREATE ROLE name LOGIN PASSWORD 'password'` (SCRAM-hashed) and `CREATE DATABASE name OWNER
    /// name`, with proper quoting. Fails if either already exists.
    pub fn create_user_and_db(&self, name: &str, password: &str) -> Result<(), Error> {
        let (ident, lit) = (quote_ident(name), quote_literal(password));
        let role = format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE {ident} LOGIN PASSWORD {lit}");
        self.psql("postgres", &role)?;
        self.psql("postgres", &format!("CREATE DATABASE {ident} OWNER {ident}")).map(drop)
    }

    /// The stored verifier of `role` (`SELECT rolpassword FROM pg_authid WHERE rolname = ...`):
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn scram_verifier(&self, role: &str) -> Result<String, Error> {
        let sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = {}", quote_literal(role));
        Some(self.psql("postgres", &sql)?).filter(|v| !v.is_empty()).ok_or_else(|| Error::RoleNotFound(role.to_owned()))
    }

    /// Promotes a replica: `pg_ctl promote -w`, which returns once it has left recovery.
    pub fn promote(&self) -> Result<(), Error> {
        run(self.pg_cmd("pg_ctl").arg("-D").arg(&self.data_dir).args(["-w", "-t", "60", "promote"])).map(drop)
    }

    /// Stops the server: `pg_ctl stop -m fast`, or `-m immediate` (crash-like) when `immediate`.
    /// The cluster stays usable for [`LocalCluster::start_again`].
    pub fn stop(&self, immediate: bool) -> Result<(), Error> {
        let mode = if immediate { "immediate" } else { "fast" };
        run(self.pg_cmd("pg_ctl").arg("-D").arg(&self.data_dir).args(["-m", mode, "-w", "-t", "60", "stop"])).map(drop)
    }

    /// Starts a stopped server again on the same port and waits until it accepts connections.
    pub fn start_again(&self) -> Result<(), Error> {
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    /// The last `lines` lines of the server log (empty if unreadable), for test failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&String::from_utf8_lossy(&fs::read(&self.log_file).unwrap_or_default()), lines)
    }

    /// Makes the cluster directory and its watchdog. From here on the value cleans up on drop, so
    /// later failures in the constructors just return.
    fn prepare(bin_dir: PathBuf, opts: ClusterOptions) -> Result<Self, Error> {
        let root = current_euid() == 0;
        let base = temp_base_dir(root)?;
        let pg_user = if root { Some(ensure_pg_user(&base)?) } else { None };
        let (dir, remove_on_drop) = match opts.base_dir {
            Some(dir) => {
                fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
                chown_to(&dir, pg_user)?;
                (dir, false)
            }
            None => (unique_dir(&base, pg_user)?, true),
        };
        let port = if opts.port == 0 { free_port() } else { opts.port };
        let mut c = LocalCluster {
            data_dir: dir.join("data"),
            log_file: dir.join("postgres.log"),
            superuser: opts.superuser,
            password: opts.superuser_password,
            dir,
            bin_dir,
            port,
            pg_user,
            remove_on_drop,
            watchdog: None,
        };
        let mut cmd = Command::new("sh");
        cmd.args(["-c", WATCHDOG, "pgsluice-localpg-watchdog", &std::process::id().to_string()]);
        cmd.arg(&c.data_dir).arg(if remove_on_drop { c.dir.as_os_str() } else { "".as_ref() });
        if root {
            cmd.args(["runuser", "-u", PG_USER, "--"]);
        }
        cmd.arg(c.bin_dir.join("pg_ctl")).stdout(Stdio::null()).stderr(Stdio::null()).current_dir("/").process_group(0);
        let spawned = cmd.stdin(Stdio::null()).spawn();
        c.watchdog = Some(spawned.map_err(|e| spawn_err(&cmd, e))?);
        Ok(c)
    }

    /// Appends `name = 'value'` lines to `postgresql.conf`; later lines win.
    fn append_conf(&self, settings: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>) -> Result<(), Error> {
        let mut text = String::from("\n# added by pgsluice localpg\n");
        for (k, v) in settings {
            let value = v.as_ref().replace('\\', "\\\\").replace('\'', "''");
            text.push_str(&format!("{} = '{value}'\n", k.as_ref()));
        }
        write_file(&self.data_dir.join("postgresql.conf"), OpenOptions::new().append(true), &text)
    }

    /// Sets the per-cluster settings (a replica's `postgresql.conf` is the primary's), starts the
    /// postmaster and waits for it; moves to another free port when the port is taken.
    fn start_postmaster(mut self) -> Result<Self, Error> {
        let socket_dir = self.dir.display().to_string();
        self.append_conf([("listen_addresses", HOST), ("unix_socket_directories", &socket_dir)])?;
        let mut attempt = 1;
        loop {
            self.append_conf([("port", self.port.to_string())])?;
            match self.pg_ctl_start() {
                // "could not bind IPv4 address "127.0.0.1": Address already in use"
                Err(Error::Server { log_tail, .. }) if attempt < 5 && log_tail.contains("could not bind") => {
                    (attempt, self.port) = (attempt + 1, free_port());
                }
                started => return started.and_then(|()| self.wait_ready()).map(|()| self),
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        let offset = fs::metadata(&self.log_file).map_or(0, |m| m.len() as usize);
        let mut cmd = self.pg_cmd("pg_ctl");
        // Own process group, inherited by the postmaster: a terminal's Ctrl-C reaches only pgsluice.
        cmd.arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file).args(["-w", "-t", "60", "start"]);
        match run(cmd.process_group(0)) {
            Err(Error::Command { command, status, stderr }) => {
                let what = format!("server failed to start on port {} ({status})", self.port);
                Err(self.server_error(what, &command, stderr, offset))
            }
            other => other.map(drop),
        }
    }

    /// Polls with psql until the server accepts a login, is gone, or 60 s have passed.
    fn wait_ready(&self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let Err(err) = self.psql("postgres", "select 1") else { return Ok(()) };
            let gone = !self.data_dir.join("postmaster.pid").exists();
            if gone || Instant::now() > deadline {
                let what = format!("server {}", if gone { "exited" } else { "not accepting connections after 60 s" });
                return Err(self.server_error(what, "psql -c 'select 1'", err.to_string(), 0));
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn server_error(&self, what: String, command: &str, stderr: String, log_offset: usize) -> Error {
        let log = fs::read(&self.log_file).unwrap_or_default();
        let log_tail = tail(&String::from_utf8_lossy(log.get(log_offset..).unwrap_or(&log)), TAIL_LINES);
        Error::Server { what, command: command.to_owned(), stderr, log_tail }
    }

    /// A server binary, run as `pgsluice_pg` via `runuser` when we are root. Its cwd is "/" so that
    /// an unreadable cwd (such as /root) does not trip up the unprivileged binaries.
    fn pg_cmd(&self, bin: &str) -> Command {
        let path = self.bin_dir.join(bin);
        let mut cmd = Command::new(if self.pg_user.is_some() { Path::new("runuser") } else { &path });
        if self.pg_user.is_some() {
            cmd.args(["-u", PG_USER, "--"]).arg(&path);
        }
        cmd.current_dir("/").env("LC_ALL", "C");
        cmd
    }

    /// libpq settings for a client child; they survive `runuser` (no `--login`).
    fn client_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("PGPASSWORD", &self.password).env("PGSSLMODE", "disable").env("PGCONNECT_TIMEOUT", "10");
        cmd.env_remove("PGSERVICE").env_remove("PGOPTIONS").env("LC_ALL", "C")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.data_dir.join("postmaster.pid").exists().then(|| self.stop(true));
        let _ = self.watchdog.take().map(|mut watchdog| (watchdog.kill(), watchdog.wait()));
        let _ = self.remove_on_drop.then(|| fs::remove_dir_all(&self.dir));
    }
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, drop the socket), or 0 if nothing can be
/// bound. Someone may take it before the server binds it; clusters started with port 0 retry then.
pub fn free_port() -> u16 {
    TcpListener::bind((HOST, 0)).and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

/// `PGSLUICE_PG_BINDIR`, else the highest `/usr/lib/postgresql/<version>/bin` with `initdb`, else
/// `pg_config --bindir`.
fn find_bin_dir() -> Result<PathBuf, Error> {
    let has_initdb = |dir: &PathBuf| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PGSLUICE_PG_BINDIR").map(PathBuf::from) {
        let err = format!("PGSLUICE_PG_BINDIR={} has no initdb", dir.display());
        return Some(dir).filter(has_initdb).ok_or(Error::BinariesNotFound(err));
    }
    let entries = fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten();
    // "15" -> [15], "9.6" -> [9, 6]; other names are not versions.
    let version = |name: &str| name.split('.').map(|p| p.parse::<u32>().ok()).collect::<Option<Vec<_>>>();
    let versions = entries.filter_map(|e| Some((version(e.file_name().to_str()?)?, e.path().join("bin"))));
    let newest = versions.filter(|(_, bin)| has_initdb(bin)).max().map(|(_, bin)| bin);
    newest
        .or_else(|| run(Command::new("pg_config").arg("--bindir")).ok().map(PathBuf::from).filter(has_initdb))
        .ok_or_else(|| Error::BinariesNotFound("searched /usr/lib/postgresql/*/bin and `pg_config --bindir`".into()))
}

/// `<tmp>/pgsluice-localpg-<euid>` (per euid, so root and normal users never share it), owned by
/// us, 0755 when root so that `pgsluice_pg` can traverse it, else 0700.
fn temp_base_dir(root: bool) -> Result<PathBuf, Error> {
    let euid = current_euid();
    let base = std::env::temp_dir().join(format!("pgsluice-localpg-{euid}"));
    let _ = fs::DirBuilder::new().mode(0o700).create(&base); // usually exists already; checked next
    let meta = fs::symlink_metadata(&base).map_err(|e| io_err("creating", &base, e))?;
    if !meta.is_dir() || meta.uid() != euid {
        return Err(io_err("refusing", &base, io::Error::other("not a directory owned by this user")));
    }
    // Explicitly, since DirBuilder's mode is subject to the umask.
    let mode = fs::Permissions::from_mode(if root { 0o755 } else { 0o700 });
    fs::set_permissions(&base, mode).map_err(|e| io_err("chmod", &base, e))?;
    Ok(base)
}

/// `<base>/<pid>-<counter>-<nanos>`, 0700, owned by the server user.
fn unique_dir(base: &Path, pg_user: Option<(u32, u32)>) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{}-{n}-{nanos}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return chown_to(&dir, pg_user).map(|()| dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1_000_000 => continue,
            Err(e) => return Err(io_err("creating", &dir, e)),
        }
    }
}

fn chown_to(path: &Path, pg_user: Option<(u32, u32)>) -> Result<(), Error> {
    let Some((uid, gid)) = pg_user else { return Ok(()) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| io_err("chown", path, e))
}

/// Looks up `pgsluice_pg`, creating it if missing. `useradd` checks the name before it locks /etc/passwd and
/// then replaces a same-named entry, so concurrent calls all "succeed" with different UIDs (seen here: initdb
/// "could not look up effective user ID"). Hence `flock` across processes, in our root-owned base directory.
fn ensure_pg_user(base: &Path) -> Result<(u32, u32), Error> {
    if let Some(ids) = lookup_user() {
        return Ok(ids);
    }
    let script = r#"getent passwd "$1" >/dev/null || useradd --system --no-create-home --shell /usr/sbin/nologin "$1""#;
    let mut cmd = Command::new("flock");
    run(cmd.args(["-w", "60"]).arg(base.join(".useradd.lock")).args(["sh", "-c", script, "sh", PG_USER]))?;
    lookup_user().ok_or_else(|| spawn_err(&cmd, io::Error::other(format!("{PG_USER} still unknown after useradd"))))
}

fn lookup_user() -> Option<(u32, u32)> {
    let line = run(Command::new("getent").args(["passwd", PG_USER])).ok()?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[allow(unsafe_code)]
fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Runs `cmd` with stdin null; on success returns stdout, trimmed.
fn run(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_err(cmd, e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let text = if out.stderr.trim_ascii().is_empty() { &out.stdout } else { &out.stderr };
    let stderr = tail(&String::from_utf8_lossy(text), TAIL_LINES);
    Err(Error::Command { command: describe(cmd), status: out.status.to_string(), stderr })
}

fn spawn_err(cmd: &Command, e: io::Error) -> Error {
    Error::Command { command: describe(cmd), status: format!("could not spawn: {e}"), stderr: String::new() }
}

fn describe(cmd: &Command) -> String {
    let args = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy());
    let words: Vec<_> =
        args.map(|a| if a.contains(' ') || a.is_empty() { format!("{a:?}") } else { a.into() }).collect();
    words.join(" ")
}

fn write_file(path: &Path, options: &mut OpenOptions, text: &str) -> Result<(), Error> {
    options.open(path).and_then(|mut f| f.write_all(text.as_bytes())).map_err(|e| io_err("writing", path, e))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn io_err(what: &str, path: &Path, source: io::Error) -> Error {
    Error::Io(format!("{what} {}", path.display()), source)
}

/// `"name"`, embedded quotes doubled.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'`, embedded quotes doubled (standard_conforming_strings is on by default).
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
    fn helpers_and_bin_dir() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LocalCluster>();
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(find_bin_dir().is_ok_and(|dir| dir.join("postgres").is_file()));
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
            wait_until(&format!("the processes of {} to exit", dir.display()), Duration::from_secs(10), || {
                processes_mentioning(dir).is_empty()
            });
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
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        let dirs: Vec<PathBuf> = clusters.iter().map(|c| c.dir.clone()).collect();
        drop(clusters);
        assert!(dirs.iter().all(|d| !d.exists() && processes_mentioning(d).is_empty()));
    }

    #[test]
    fn taken_port_is_replaced() {
        let taken = TcpListener::bind((HOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let c = ok(LocalCluster::start_primary(ClusterOptions { port, ..ClusterOptions::default() }));
        assert_ne!(c.port(), port);
        assert_eq!(ok(c.psql("postgres", "select 1")), "1");
        assert!(c.log_tail(1000).contains("could not bind"), "{}", c.log_tail(20));
    }

    #[test]
    fn base_dir_is_kept() {
        let base = std::env::temp_dir().join(format!("localpg-base-dir-test-{}", std::process::id()));
        let opts = ClusterOptions { base_dir: Some(base.clone()), ..ClusterOptions::default() };
        let c = ok(LocalCluster::start_primary(opts));
        assert_eq!(c.data_dir(), base.join("data"));
        drop(c);
        assert!(base.join("data/PG_VERSION").exists());
        assert!(!base.join("data/postmaster.pid").exists());
        // (The watchdog shell exits just after the drop; on a loaded machine it may take a
        // moment.)
        wait_until("the cluster's processes to exit", Duration::from_secs(10), || {
            processes_mentioning(&base).is_empty()
        });
        fs::remove_dir_all(&base).expect("remove base_dir");
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
