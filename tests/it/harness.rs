//! Test harness: one real PostgreSQL primary per test binary (started on first use, stopped
//! by its watchdog when the binary exits), a fresh role + database per test, and pgsluice
//! started in-process on 127.0.0.1:0 from a config the test describes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgsluice::cluster::{Cluster, Health, HostSnapshot, Primary, Role};
use pgsluice::config::Config;
use pgsluice::localpg::{ClusterOptions, LocalCluster};
use pgsluice::server::ServerHandle;
use pgsluice::shared::Shared;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Superuser password of the shared cluster.
pub const SU_PASSWORD: &str = "test-superuser-pw";

static PG: OnceLock<LocalCluster> = OnceLock::new();

/// The binary's PostgreSQL primary.
pub fn pg() -> &'static LocalCluster {
    PG.get_or_init(|| {
        let opts = ClusterOptions {
            superuser_password: SU_PASSWORD.into(),
            extra_conf: vec![("max_connections".into(), "300".into())],
            ..ClusterOptions::default()
        };
        LocalCluster::start_primary(opts).unwrap_or_else(|e| panic!("cannot start PostgreSQL for tests: {e}"))
    })
}

/// A role and database owned by one test.
#[derive(Clone)]
pub struct TestDb {
    /// Role and database name.
    pub name: String,
    /// Role password.
    pub password: String,
}

impl TestDb {
    /// The role's SCRAM verifier as pg_authid stores it.
    pub fn verifier(&self) -> String {
        pg().scram_verifier(&self.name).expect("verifier")
    }
}

/// Creates a fresh role + database named after `prefix`.
pub fn fresh_db(prefix: &str) -> TestDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let password = format!("pw-{name}");
    pg().create_user_and_db(&name, &password).expect("create role and database");
    TestDb { name, password }
}

/// Runs SQL as the superuser on `db`.
pub fn su_sql(db: &str, sql: &str) -> String {
    pg().psql(db, sql).unwrap_or_else(|e| panic!("psql failed: {e}"))
}

/// Describes a pgsluice instance to start.
pub struct PoolerBuilder {
    general: Vec<String>,
    sections: Vec<String>,
    users: Vec<(String, String)>,
    files: Vec<(String, String)>,
}

impl Default for PoolerBuilder {
    fn default() -> Self {
        PoolerBuilder {
            general: vec!["auth_type = \"scram-sha-256\"".into(), "auth_file = \"userlist.txt\"".into()],
            sections: Vec::new(),
            users: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// Starts describing a pgsluice instance.
pub fn pooler() -> PoolerBuilder {
    PoolerBuilder::default()
}

impl PoolerBuilder {
    /// Adds a `[general]` line, e.g. `pool_mode = "session"` (later lines override earlier).
    pub fn general(mut self, line: &str) -> Self {
        let key = line.split('=').next().unwrap_or("").trim().to_string();
        self.general.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
        self.general.push(line.into());
        self
    }

    /// Serves `db` (same name on the client side and in PostgreSQL) with extra section lines.
    pub fn database(mut self, db: &TestDb, extra: &[&str]) -> Self {
        self.sections.push(format!(
            "[databases.{}]\nhosts = [\"127.0.0.1:{}\"]\n{}\n",
            db.name,
            pg().port(),
            extra.join("\n")
        ));
        self
    }

    /// Serves `db` with a fixed backend login (its own role and password in the database
    /// section), so clients need no server credentials (trust or md5 client auth).
    pub fn database_with_login(self, db: &TestDb, extra: &[&str]) -> Self {
        let (user, password) = (format!("user = \"{}\"", db.name), format!("password = \"{}\"", db.password));
        let lines: Vec<&str> = [user.as_str(), password.as_str()].into_iter().chain(extra.iter().copied()).collect();
        self.database(db, &lines)
    }

    /// Adds a raw TOML section.
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push(text.into());
        self
    }

    /// Adds an auth_file entry.
    pub fn user(mut self, name: &str, secret: &str) -> Self {
        self.users.push((name.into(), secret.into()));
        self
    }

    /// Puts a file next to the config (certificates...).
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }

    /// The config text this builder produces.
    pub fn config_text(&self) -> String {
        format!("[general]\n{}\n\n{}", self.general.join("\n"), self.sections.join("\n"))
    }

    /// Writes the files, loads the config and starts pgsluice on 127.0.0.1:0.
    pub async fn start(self) -> Pooler {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        pg();
        let dir = tempfile::tempdir().expect("tempdir");
        let userlist: String =
            self.users.iter().map(|(u, s)| format!("\"{u}\" \"{}\"\n", s.replace('"', "\"\""))).collect();
        std::fs::write(dir.path().join("userlist.txt"), userlist).unwrap();
        for (name, contents) in &self.files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let path = dir.path().join("pgsluice.toml");
        let text = self.config_text();
        std::fs::write(&path, &text).unwrap();
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let handle =
            ServerHandle::start(Shared::new(cfg), Some("127.0.0.1:0".parse().unwrap())).await.expect("start pgsluice");
        Pooler { addr: handle.addr, handle: Some(handle), _dir: dir }
    }
}

/// A running in-process pgsluice.
pub struct Pooler {
    /// Listen address.
    pub addr: SocketAddr,
    /// Server handle (taken by `shutdown`).
    pub handle: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl Pooler {
    /// Port pgsluice listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq-style connection string.
    pub fn connstr(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={dbname} connect_timeout=10",
            self.port()
        )
    }

    /// Connects with tokio-postgres.
    pub async fn try_connect(&self, user: &str, password: &str, dbname: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.connstr(user, password, dbname), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Connects as the test's role to its database, panicking on failure.
    pub async fn connect(&self, db: &TestDb) -> Client {
        self.try_connect(&db.name, &db.password, &db.name).await.unwrap_or_else(|e| panic!("connect via pgsluice: {e}"))
    }

    /// Graceful stop; returns whether all sessions finished within `timeout`.
    pub async fn shutdown(&mut self, timeout: Duration) -> bool {
        match self.handle.take() {
            Some(h) => h.shutdown(timeout).await,
            None => true,
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pgsluice) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// The server-side message of a tokio-postgres error (or its Display).
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// Short form of a client-side error: SQLSTATE and message.
pub fn short(e: &tokio_postgres::Error) -> String {
    format!("{} {}", sqlstate(e).unwrap_or_else(|| "-----".into()), message(e))
}

/// Connects with tokio-postgres and a libpq-style connection string.
pub async fn connect_str(connstr: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(connstr, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `expect_err` for results whose success type has no `Debug` (tokio-postgres `Client`).
pub trait MustFail<E> {
    /// The error, or a panic with `why`.
    fn must_fail(self, why: &str) -> E;
}

impl<T, E> MustFail<E> for Result<T, E> {
    fn must_fail(self, why: &str) -> E {
        match self {
            Ok(_) => panic!("{why}"),
            Err(e) => e,
        }
    }
}

/// First column of the first row of a simple query (`None`: no row, or NULL).
pub async fn scalar(c: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    scalar_col(c, sql, 0).await
}

/// Column `col` of the first row of a simple query.
pub async fn scalar_col(c: &Client, sql: &str, col: usize) -> Result<Option<String>, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(col).map(str::to_string),
        _ => None,
    }))
}

/// First-column values of all rows of a simple query's messages (`"NULL"` for NULL).
pub fn rows(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

/// First column of the first row of `sql`, over the simple protocol (safe outside
/// transactions in transaction mode); panics if the query fails or returns no value.
pub async fn simple_one(c: &Client, sql: &str) -> String {
    scalar(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or_else(|| panic!("{sql}: no row"))
}

// === replication topologies ===
//
// Tests of several hosts (topology, routing) start their own primary and replicas: promotion
// and `stop -m immediate` are destructive, so the binary's shared cluster is not used.

/// One PostgreSQL server of a test topology.
pub type Node = Arc<LocalCluster>;

/// Runs a blocking closure (the `LocalCluster` calls run `pg_ctl`, `psql`, ...) off the async
/// worker threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task panicked")
}

/// Starts a primary whose superuser password is `su_password`, with role and database `db`
/// (password `db_password`), runs `setup` as the superuser in `db` (one transaction), then
/// starts `replicas` streaming replicas of it in parallel. Node 0 is the primary. Blocking:
/// call it through [`blocking`] from async code.
pub fn start_replication(su_password: &str, db: &str, db_password: &str, setup: &str, replicas: usize) -> Vec<Node> {
    let opts = ClusterOptions {
        superuser_password: su_password.into(),
        extra_conf: vec![("shared_buffers".into(), "32MB".into())],
        ..ClusterOptions::default()
    };
    let primary = LocalCluster::start_primary(opts).unwrap_or_else(|e| panic!("start primary: {e}"));
    primary.create_user_and_db(db, db_password).unwrap_or_else(|e| panic!("create {db}: {e}"));
    if !setup.is_empty() {
        primary.psql(db, setup).unwrap_or_else(|e| panic!("setup of {db}: {e}\n{}", primary.log_tail(20)));
    }
    let replicas: Vec<LocalCluster> = std::thread::scope(|s| {
        let started: Vec<_> = (0..replicas).map(|_| s.spawn(|| LocalCluster::start_replica(&primary, 0))).collect();
        started
            .into_iter()
            .map(|h| h.join().expect("replica thread").unwrap_or_else(|e| panic!("start replica: {e}")))
            .collect()
    });
    std::iter::once(primary).chain(replicas).map(Arc::new).collect()
}

/// A `hosts` entry (TOML string) for `node`.
pub fn host_entry(node: &LocalCluster) -> String {
    format!("\"127.0.0.1:{}\"", node.port())
}

/// `psql` as the superuser in `db` on `node`, panicking with the server log on failure.
/// Blocking: see [`node_psql_async`].
pub fn node_psql(node: &LocalCluster, db: &str, sql: &str) -> String {
    node.psql(db, sql).unwrap_or_else(|e| panic!("psql on port {}: {e}\n{}", node.port(), node.log_tail(20)))
}

/// [`node_psql`] off the async worker threads.
pub async fn node_psql_async(node: &Node, db: &str, sql: &str) -> String {
    let (node, db, sql) = (node.clone(), db.to_string(), sql.to_string());
    blocking(move || node_psql(&node, &db, &sql)).await
}

/// Everything about a topology, for assertion messages.
pub fn describe_cluster(c: &Cluster) -> String {
    format!("primary {:?}, failovers {}, hosts {:#?}", c.primary(), c.failovers(), c.snapshot())
}

/// Host `i` is a replica pgsluice considers healthy and eligible for reads.
pub fn healthy_replica(hosts: &[HostSnapshot], i: usize) -> bool {
    let h = &hosts[i];
    h.status.role == Role::Replica && h.status.up && h.status.eligible && h.health == Health::Up
}

/// Waits until `pred(primary, hosts)` holds; panics with the topology after `timeout`.
/// Returns how long it took.
pub async fn wait_topology(
    c: &Cluster,
    timeout: Duration,
    what: &str,
    pred: impl Fn(Primary, &[HostSnapshot]) -> bool,
) -> Duration {
    let started = Instant::now();
    let ok = eventually(timeout, || pred(c.primary(), &c.snapshot())).await;
    assert!(ok, "{what}: not within {timeout:?}; {}", describe_cluster(c));
    started.elapsed()
}

/// Waits (10 s at most) until host `primary` is the primary and every other host a healthy
/// replica. Returns how long it took.
pub async fn wait_settled(c: &Cluster, primary: usize) -> Duration {
    wait_topology(c, Duration::from_secs(10), "initial topology", |p, hosts| {
        p == Primary::Host(primary)
            && hosts[primary].status.role == Role::Primary
            && hosts[primary].health == Health::Up
            && (0..hosts.len()).filter(|&i| i != primary).all(|i| healthy_replica(hosts, i))
    })
    .await
}

// === raw protocol ===
//
// Tests that speak the frontend/backend protocol in raw bytes over a `TcpStream`.

/// StartupMessage protocol 3.0.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// One message as read off a raw socket.
pub struct Msg {
    /// Message type byte.
    pub tag: u8,
    /// Everything after the length.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.body[..self.body.len().min(160)];
        write!(f, "{}({:?})", self.tag as char, String::from_utf8_lossy(shown))
    }
}

impl Msg {
    /// ErrorResponse / NoticeResponse fields by field type.
    pub fn fields(&self) -> HashMap<u8, String> {
        self.body
            .split(|&b| b == 0)
            .filter_map(|f| f.split_first())
            .map(|(&t, v)| (t, String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn code(&self) -> String {
        self.fields().remove(&b'C').unwrap_or_default()
    }

    /// Primary message of an ErrorResponse.
    pub fn message(&self) -> String {
        self.fields().remove(&b'M').unwrap_or_default()
    }

    /// Big-endian Int32 at `off` in the body.
    pub fn i32_at(&self, off: usize) -> i32 {
        i32::from_be_bytes(self.body[off..off + 4].try_into().expect("4 bytes"))
    }

    /// First column of a DataRow, as text (`None` for NULL).
    pub fn first_column(&self) -> Option<String> {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        let len = self.i32_at(2);
        (len >= 0).then(|| String::from_utf8_lossy(&self.body[6..6 + len as usize]).into_owned())
    }
}

/// Reads one message; `None` once pgsluice closed the connection (EOF or reset). Panics if
/// neither happens within `limit`.
pub async fn read_msg_within(s: &mut TcpStream, limit: Duration) -> Option<Msg> {
    let read = async {
        let mut hdr = [0u8; 5];
        s.read_exact(&mut hdr).await.ok()?;
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        assert!((4..=64 << 20).contains(&len), "pgsluice sent a message {:?} with length {len}", hdr[0] as char);
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.ok()?;
        Some(Msg { tag: hdr[0], body })
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| panic!("pgsluice neither answered nor closed within {limit:?}"))
}

/// A tagged message.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An untagged startup-family packet: length, code, body.
pub fn untagged(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32 + 8).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A StartupMessage for protocol `version` (`major << 16 | minor`).
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    untagged(version, &body)
}

/// Simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// Parse of the unnamed statement, no parameter types.
pub fn parse(sql: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    frame(b'P', &body)
}

/// Bind of the unnamed portal to the unnamed statement, text parameters and results.
pub fn bind(params: &[&str]) -> Vec<u8> {
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as u32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&[0, 0]);
    frame(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    frame(b'E', &[0, 0, 0, 0, 0])
}

/// Sync.
pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

// === pgbench ===

/// pgbench as `user` against 127.0.0.1:`port`.
pub fn pgbench(user: &str, password: &str, port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/usr/lib/postgresql/15/bin/pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user]);
    cmd.env("PGPASSWORD", password).env("PGSSLMODE", "disable").env("PGCONNECT_TIMEOUT", "10");
    cmd.env_remove("PGSERVICE").env_remove("PGOPTIONS").env("LC_ALL", "C");
    cmd
}

/// What a pgbench run printed.
pub struct Bench {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Bench {
    pub fn report(&self) -> String {
        format!("--- pgbench stdout ---\n{}\n--- pgbench stderr ---\n{}", self.stdout, self.stderr)
    }

    /// The number after `name` in its summary (`N` of `N/M` or `N (x%)`).
    pub fn field(&self, name: &str) -> u64 {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("pgbench printed no {name:?}\n{}", self.report()));
        let number = line.trim().split(['/', ' ']).next().unwrap_or("");
        number.parse().unwrap_or_else(|e| panic!("{name:?} {line:?}: {e}\n{}", self.report()))
    }
}

/// Runs pgbench for at most `limit` (killed after it), capturing its output.
pub async fn run_pgbench(cmd: &mut tokio::process::Command, limit: Duration) -> Bench {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start pgbench: {e}"));
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Bench {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for pgbench: {e}"),
        Err(_) => panic!("pgbench still running after {limit:?}"),
    }
}

/// Runs `/usr/bin/psql` on `conninfo` with `args` (no psqlrc, unaligned, tuples only, stop on
/// error) and `password`; returns (success, stdout, stderr).
pub async fn run_psql(conninfo: &str, password: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("/usr/bin/psql")
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("HOME", "/nonexistent")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSERVICE")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out).await.expect("psql hung").expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
