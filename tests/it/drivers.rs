//! Driver fidelity (issue 4): real client drivers through pgsluice in transaction mode, with
//! many more clients than server connections, using named prepared statements the way
//! applications do.
//!
//! * asyncpg and psycopg 3 run the Python scripts in `tests/drivers/`, which check every answer
//!   themselves and exit non-zero on any mismatch or unexpected error. The interpreter is
//!   `PGSLUICE_PYTHON` (`scripts/test` builds the venv `target/pyenv` from
//!   `tests/drivers/requirements.txt` and exports it), else `target/pyenv/bin/python` if it
//!   exists. Without a Python that can import the drivers these tests fail; they never skip.
//! * pgbench (PostgreSQL's own client, `-M prepared` and `-M extended`) must report 0 failed
//!   transactions.
//!
//! Every client runs under a time limit, so a hang fails the test with the client's output.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::harness::*;

/// Longest a client program may run before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of a client's stdout and stderr shown when it fails.
const SHOWN_LINES: usize = 150;

/// pgsluice for a driver test: `db` with `pool_size` server connections, room for 200
/// clients, the role's SCRAM verifier in the auth_file.
pub(crate) async fn driver_pooler(db: &TestDb, pool_size: u32) -> Pooler {
    pooler()
        .general("max_client_conn = 200")
        .database(db, &[&format!("pool_size = {pool_size}")])
        .user(&db.name, &db.verifier())
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_100_tasks_pool_5() {
    let db = fresh_db("drv_asyncpg");
    let p = driver_pooler(&db, 5).await;
    let mut cmd = Command::new(python());
    cmd.arg(driver_script("asyncpg_mixed.py")).arg(uri(&p, &db)).args(["100", "5"]);
    let out = run_client("asyncpg_mixed.py", &mut cmd).await;
    out.assert_success();
    assert!(out.stdout.contains("tasks=100 ") && out.stdout.contains("errors=0"), "{}", out.report());
    assert_server_connections_at_most(&db, 5);
}

/// Issue 8: asyncpg keeps working across `ALTER TABLE … ADD COLUMN` on a table its cached
/// statement selects `*` from, with server copies of the statement shared by 6 connections
/// over 2 server connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_across_a_schema_change() {
    let db = fresh_db("drv_schema");
    let p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.verifier()).start().await;
    let mut cmd = Command::new(python());
    cmd.arg(driver_script("asyncpg_schema_change.py")).arg(uri(&p, &db)).args(["6", "5"]);
    let out = run_client("asyncpg_schema_change.py", &mut cmd).await;
    out.assert_success();
    assert!(out.stdout.contains("errors=0"), "{}", out.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_prepare_threshold_0() {
    let db = fresh_db("drv_psycopg");
    let p = driver_pooler(&db, 3).await;
    let mut cmd = Command::new(python());
    cmd.arg(driver_script("psycopg_prepared.py")).arg(p.connstr(&db.name, &db.password, &db.name)).args(["8", "10"]);
    let out = run_client("psycopg_prepared.py", &mut cmd).await;
    out.assert_success();
    assert!(out.stdout.contains("threads=8 ") && out.stdout.contains("errors=0"), "{}", out.report());
    assert_server_connections_at_most(&db, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_and_extended_c100_pool20() {
    let db = fresh_db("drv_pgbench");
    // Tables straight on PostgreSQL, as the test role (which owns the database).
    let mut init = pgbench(&db, pg().port());
    init.args(["-i", "-s", "1", "-q"]).arg(&db.name);
    run_client("pgbench -i", &mut init).await.assert_success();

    let p = driver_pooler(&db, 20).await;
    // `-M prepared` prepares each command with a blocking PQprepare (Parse + Sync) on first
    // use, the first one before BEGIN, while the same thread's other clients hold servers in
    // open transactions. pgsluice answers a Parse + Sync of a statement the pool already knows
    // without a server, so two threads for 100 clients over 20 servers do not deadlock.
    for mode in ["prepared", "extended"] {
        let mut run = pgbench(&db, p.port());
        run.args(["-M", mode, "-c", "100", "-j", "2", "-T", "5"]).arg(&db.name);
        let out = run_client(&format!("pgbench -M {mode}"), &mut run).await;
        // Exit status 2 for aborted clients, which "failed transactions" does not count.
        out.assert_success();
        let field = |name: &str| {
            let line = out.stdout.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| {
                panic!("pgbench -M {mode} printed no {name:?}\n{}", out.report());
            });
            let number = line.trim().split(['/', ' ']).next().unwrap_or("");
            number.parse::<u64>().unwrap_or_else(|e| panic!("{name:?} {line:?}: {e}\n{}", out.report()))
        };
        let processed = field("number of transactions actually processed:");
        let failed = field("number of failed transactions:");
        assert!(out.stdout.contains(&format!("query mode: {mode}")), "{}", out.report());
        assert_eq!(failed, 0, "pgbench -M {mode}: failed transactions\n{}", out.report());
        assert!(processed > 0, "pgbench -M {mode}: nothing processed\n{}", out.report());
        println!("pgbench -M {mode} through pgsluice: {processed} transactions, 0 failed");
    }
    assert_server_connections_at_most(&db, 20);
}

/// The Python interpreter for the driver scripts, checked to import them (see the module docs).
pub(crate) fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    let python = match std::env::var_os("PGSLUICE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None if venv.is_file() => venv,
        None => panic!(
            "PGSLUICE_PYTHON is not set and {} does not exist. Run the tests with scripts/test, which builds that \
             venv from tests/drivers/requirements.txt, or set PGSLUICE_PYTHON to a Python that has those packages.",
            venv.display()
        ),
    };
    let check = std::process::Command::new(&python).args(["-c", "import asyncpg, psycopg"]).output();
    match check {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} cannot import asyncpg and psycopg; install tests/drivers/requirements.txt into it (scripts/test \
             does):\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run the driver Python {} (PGSLUICE_PYTHON): {e}", python.display()),
    }
}

pub(crate) fn driver_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers").join(name)
}

/// `postgresql://` URI for the test role through pgsluice (asyncpg takes no keyword strings).
pub(crate) fn uri(p: &Pooler, db: &TestDb) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!("postgresql://{}:{}@127.0.0.1:{}/{}", enc(&db.name), enc(&db.password), p.port(), enc(&db.name))
}

/// pgbench as the test role against 127.0.0.1:`port`.
fn pgbench(db: &TestDb, port: u16) -> Command {
    let mut cmd = Command::new(pg_client_bin("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", &db.name]);
    cmd.env("PGPASSWORD", &db.password).env("PGSSLMODE", "disable").env("PGCONNECT_TIMEOUT", "10");
    cmd.env_remove("PGSERVICE").env_remove("PGOPTIONS").env("LC_ALL", "C");
    cmd
}

/// A PostgreSQL client binary from the same place `pgsluice::localpg` takes the server from:
/// `PGSLUICE_PG_BINDIR`, else the newest `/usr/lib/postgresql/<version>/bin`, else `PATH`.
fn pg_client_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PGSLUICE_PG_BINDIR") {
        return Path::new(&dir).join(name);
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten();
    let newest = versions
        .filter_map(|e| {
            let version: Vec<u32> =
                e.file_name().to_str()?.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
            let bin = e.path().join("bin").join(name);
            bin.is_file().then_some((version, bin))
        })
        .max();
    newest.map_or_else(|| PathBuf::from(name), |(_, bin)| bin)
}

/// Fails if the pool used more server connections than `pool_size`.
pub(crate) fn assert_server_connections_at_most(db: &TestDb, pool_size: i64) {
    let sql = format!("select count(*) from pg_stat_activity where usename = '{}'", db.name);
    let backends: i64 = su_sql("postgres", &sql).parse().expect("count");
    assert!(backends <= pool_size, "pool of {pool_size} used {backends} server connections");
}

/// What a client program did.
pub(crate) struct Finished {
    what: String,
    /// `None`: killed after [`CLIENT_TIMEOUT`].
    status: Option<ExitStatus>,
    pub(crate) stdout: String,
    stderr: String,
}

impl Finished {
    pub(crate) fn report(&self) -> String {
        let status = match self.status {
            Some(s) => format!("exited with {s}"),
            None => format!("timed out after {CLIENT_TIMEOUT:?} and was killed"),
        };
        format!(
            "{} {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            last_lines(&self.stdout),
            last_lines(&self.stderr)
        )
    }

    pub(crate) fn assert_success(&self) {
        assert!(self.status.is_some_and(|s| s.success()), "{}", self.report());
    }
}

/// Runs `cmd` with stdin closed, capturing its output, for at most [`CLIENT_TIMEOUT`].
pub(crate) async fn run_client(what: &str, cmd: &mut Command) -> Finished {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
    let stdout = tokio::spawn(read_all(child.stdout.take()));
    let stderr = tokio::spawn(read_all(child.stderr.take()));
    let status = match tokio::time::timeout(CLIENT_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.unwrap_or_else(|e| panic!("waiting for {what}: {e}"))),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let collect = |h: tokio::task::JoinHandle<String>| async move {
        tokio::time::timeout(Duration::from_secs(5), h).await.map_or(String::new(), |r| r.unwrap_or_default())
    };
    Finished { what: what.to_string(), status, stdout: collect(stdout).await, stderr: collect(stderr).await }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skipped = lines.len().saturating_sub(SHOWN_LINES);
    let shown = lines[skipped..].join("\n");
    if skipped == 0 {
        shown
    } else {
        format!("[{skipped} earlier lines not shown]\n{shown}")
    }
}
