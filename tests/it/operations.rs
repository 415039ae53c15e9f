//! Operating the real `pgsluice` binary: the stop signals (SIGTERM waits for clients, SIGINT
//! for transactions, a second signal stops at once), SIGHUP reload (a bad file keeps the
//! running config), JSON logs, and the online restart over `so_reuseport` under pgbench load.
//!
//! Unlike the rest of the suite these tests run the binary Cargo built for this package as a
//! child process (`-c <config>`, stderr to a file in the test's temp dir), on a port of its
//! own, and talk to it over TCP. A [`Proc`] kills its child when dropped, so a failing test
//! leaves no process behind. Signals are sent with `kill(1)` (the crate denies `unsafe`).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::harness::*;

/// Longest the binary may take to start serving logins.
const START_TIMEOUT: Duration = Duration::from_secs(20);

// === impl Proc ===

/// A running `pgsluice` child process; killed (SIGKILL) on drop if still running.
struct Proc {
    child: Child,
    /// Its stderr (the log).
    log: PathBuf,
    port: u16,
    /// Exit status once seen.
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts the binary on `dir/pgsluice.toml`, logging to `dir/<label>.log`.
    fn start(dir: &Path, port: u16, label: &str) -> Proc {
        let log = dir.join(format!("{label}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg("-c")
            .arg(dir.join("pgsluice.toml"))
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the pgsluice binary");
        Proc { child, log, port, status: None }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (`TERM`, `INT`, `HUP`, `QUIT`).
    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -s {sig} {} failed", self.pid());
    }

    /// Everything logged so far.
    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last lines of the log, for failure messages.
    fn tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- pgsluice log ({}) ---\n{}", self.log.display(), lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// The exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits up to `limit` for the process to exit.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts it exits with status 0 within `limit`; returns how long that took.
    async fn assert_exits_ok(&mut self, limit: Duration, what: &str) -> Duration {
        let started = Instant::now();
        let status = self.wait_exit(limit).await;
        let took = started.elapsed();
        match status {
            Some(s) => assert!(s.success(), "{what}: pgsluice exited with {s}\n{}", self.tail()),
            None => panic!("{what}: pgsluice still running after {limit:?}\n{}", self.tail()),
        }
        took
    }

    /// Waits until the log contains `needle`.
    async fn wait_log(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || self.exited().is_some() {
                return self.log_text().contains(needle);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A libpq-style connection string for `db`'s role and database.
    fn connstr(&self, db: &TestDb) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} connect_timeout=10",
            self.port, db.name, db.password, db.name
        )
    }

    /// Logs in as `db`'s role; the connection task's result comes back through the handle.
    async fn try_login(&self, db: &TestDb) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), String> {
        let (client, conn) = tokio_postgres::connect(&self.connstr(db), NoTls).await.map_err(|e| short(&e))?;
        Ok((client, tokio::spawn(conn)))
    }

    /// Logs in, panicking with the log on failure.
    async fn login(&self, db: &TestDb) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
        match self.try_login(db).await {
            Ok(c) => c,
            Err(e) => panic!("login to {} via pgsluice: {e}\n{}", db.name, self.tail()),
        }
    }

    /// Polls until a login to `db` works and answers a query (panics after [`START_TIMEOUT`]
    /// or if the process exits).
    async fn wait_ready(&mut self, db: &TestDb) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                panic!("pgsluice exited with {s} before serving\n{}", self.tail());
            }
            match self.try_login(db).await {
                Ok((c, _)) => match c.simple_query("select 1").await {
                    Ok(_) => return,
                    Err(e) => last = short(&e),
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pgsluice did not serve logins within {START_TIMEOUT:?} (last error: {last})\n{}", self.tail());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// === setup ===

/// A config directory and the port written into it.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
}

impl Setup {
    /// A fresh directory and a port nobody listens on (bound to 127.0.0.1:0 and released).
    fn new() -> Setup {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        Setup { dir: tempfile::tempdir().expect("tempdir"), port }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `pgsluice.toml` (serving `dbs`, with the extra `[general]` lines) and a userlist
    /// holding each database role's SCRAM verifier.
    fn write(&self, general: &[&str], dbs: &[&TestDb]) {
        let mut b = pooler()
            .general("listen_addr = \"127.0.0.1\"")
            .general(&format!("listen_port = {}", self.port))
            .general("shutdown_timeout = \"15s\"");
        for line in general {
            b = b.general(line);
        }
        for db in dbs {
            b = b.database(db, &[]);
        }
        self.write_userlist(dbs);
        self.write_raw(&b.config_text());
    }

    /// Writes `userlist.txt` with each database role's SCRAM verifier.
    fn write_userlist(&self, dbs: &[&TestDb]) {
        let users: String = dbs.iter().map(|db| format!("\"{}\" \"{}\"\n", db.name, db.verifier())).collect();
        std::fs::write(self.path().join("userlist.txt"), users).expect("write userlist");
    }

    /// Replaces `pgsluice.toml` (write + rename, so a reload never sees half a file).
    fn write_raw(&self, text: &str) {
        let tmp = self.path().join("pgsluice.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.path().join("pgsluice.toml")).expect("rename config");
    }

    fn start(&self, label: &str) -> Proc {
        Proc::start(self.path(), self.port, label)
    }
}

/// `su_sql` off the async worker threads.
async fn su(db: &str, sql: &str) -> String {
    let (db, sql) = (db.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || su_sql(&db, &sql)).await.expect("su_sql task")
}

/// Polls until a plain TCP connect to the port is refused (the listener is closed).
async fn wait_refused(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ if Instant::now() >= deadline => return false,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The connection task's outcome within `limit`: `Some(Ok)` when it ended cleanly, `Some(Err)`
/// with the error pgsluice closed it with, `None` if it is still open.
async fn conn_outcome(
    conn: &mut JoinHandle<Result<(), tokio_postgres::Error>>,
    limit: Duration,
) -> Option<Result<(), tokio_postgres::Error>> {
    tokio::time::timeout(limit, conn).await.ok().map(|r| r.expect("connection task"))
}

// === stop signals ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_transaction_commit() {
    let db = fresh_db("ops_term");
    let s = Setup::new();
    s.write(&[], &[&db]);
    let mut p = s.start("pgsluice");
    p.wait_ready(&db).await;

    let (c, mut conn) = p.login(&db).await;
    c.batch_execute("create table ops (id int)").await.expect("create table");
    c.batch_execute("begin; insert into ops values (1)").await.expect("first insert");
    let signalled = Instant::now();
    p.signal("TERM");

    // The listener closes: new connections are refused (no SO_REUSEPORT sibling here).
    assert!(wait_refused(p.port, Duration::from_secs(5)).await, "still accepting after SIGTERM\n{}", p.tail());
    let refused = p.try_login(&db).await;
    assert!(refused.is_err(), "a login after SIGTERM succeeded\n{}", p.tail());

    // The client goes on: its transaction commits a second later, and it stays served.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(signalled.elapsed())).await;
    c.batch_execute("insert into ops values (2)").await.unwrap_or_else(|e| panic!("insert after SIGTERM: {e}"));
    c.batch_execute("commit").await.unwrap_or_else(|e| panic!("commit after SIGTERM: {e}"));
    assert_eq!(simple_one(&c, "select count(*) from ops").await, "2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.exited().is_none(), "pgsluice exited while a client was still connected\n{}", p.tail());
    assert!(conn_outcome(&mut conn, Duration::ZERO).await.is_none(), "the client was disconnected");

    // Once it leaves, the process ends on its own.
    drop(c);
    let took = p.assert_exits_ok(Duration::from_secs(5), "after the last client left").await;
    println!("SIGTERM: pgsluice exited {took:?} after the last client disconnected");
    assert_eq!(su(&db.name, "select string_agg(id::text, ',' order by id) from ops").await, "1,2");
}

/// Asserts that the connection ends within `within` with FATAL 57P01 (`what` names the
/// client; `late` is the failure message when it is still connected).
async fn assert_closed_57p01(
    conn: &mut JoinHandle<Result<(), tokio_postgres::Error>>,
    within: Duration,
    what: &str,
    late: &str,
    p: &Proc,
) {
    match conn_outcome(conn, within).await {
        Some(Err(e)) => assert_eq!(sqlstate(&e).as_deref(), Some("57P01"), "{what} closed with {e}"),
        Some(Ok(())) => panic!("{what}'s connection ended without an error\n{}", p.tail()),
        None => panic!("{late}\n{}", p.tail()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_idle_clients_and_waits_for_transactions() {
    let db = fresh_db("ops_int");
    let s = Setup::new();
    s.write(&[], &[&db]);
    let mut p = s.start("pgsluice");
    p.wait_ready(&db).await;

    let (idle, mut idle_conn) = p.login(&db).await;
    let (busy, mut busy_conn) = p.login(&db).await;
    idle.batch_execute("create table ops (id int)").await.expect("create table");
    busy.batch_execute("begin; insert into ops values (1)").await.expect("insert");
    p.signal("INT");

    // The idle client is closed at once with 57P01.
    assert_closed_57p01(
        &mut idle_conn,
        Duration::from_secs(5),
        "idle client",
        "idle client still connected 5 s after SIGINT",
        &p,
    )
    .await;
    let e = idle.simple_query("select 1").await.must_fail("the idle client could still query after SIGINT");
    assert!(e.is_closed(), "idle client's query after SIGINT: {e}");
    assert!(wait_refused(p.port, Duration::from_secs(5)).await, "still accepting after SIGINT\n{}", p.tail());

    // The one inside a transaction finishes it, then is closed.
    assert!(conn_outcome(&mut busy_conn, Duration::from_millis(500)).await.is_none(), "busy client closed early");
    assert!(p.exited().is_none(), "pgsluice exited with a transaction open\n{}", p.tail());
    busy.batch_execute("insert into ops values (2)").await.unwrap_or_else(|e| panic!("insert after SIGINT: {e}"));
    busy.batch_execute("commit").await.unwrap_or_else(|e| panic!("commit after SIGINT: {e}"));
    assert_closed_57p01(
        &mut busy_conn,
        Duration::from_secs(5),
        "busy client",
        "busy client still connected 5 s after its COMMIT",
        &p,
    )
    .await;
    let took = p.assert_exits_ok(Duration::from_secs(5), "after the last transaction ended").await;
    println!("SIGINT: pgsluice exited {took:?} after the last transaction ended");
    assert_eq!(su(&db.name, "select count(*) from ops").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_stops_at_once() {
    let db = fresh_db("ops_twice");
    let s = Setup::new();
    s.write(&[], &[&db]);
    let mut p = s.start("pgsluice");
    p.wait_ready(&db).await;

    let (c, mut conn) = p.login(&db).await;
    c.batch_execute("create table ops (id int)").await.expect("create table");
    c.batch_execute("begin; insert into ops values (1)").await.expect("insert");
    p.signal("TERM");
    // Let the first signal be handled (two pending signals would be delivered as one).
    assert!(
        p.wait_log("waiting for all clients to disconnect", Duration::from_secs(5)).await,
        "SIGTERM not handled\n{}",
        p.tail()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(p.exited().is_none(), "pgsluice exited on the first SIGTERM with a client in a transaction");

    p.signal("TERM");
    let took = p.assert_exits_ok(Duration::from_secs(2), "after the second SIGTERM").await;
    println!("second SIGTERM: pgsluice exited after {took:?}");
    assert!(p.log_text().contains("second stop signal"), "{}", p.tail());
    assert!(conn_outcome(&mut conn, Duration::from_secs(5)).await.is_some(), "client still connected");
    // The open transaction never committed.
    assert_eq!(su(&db.name, "select count(*) from ops").await, "0");
}

// === reload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_bad_config_is_kept() {
    let first = fresh_db("ops_hup_a");
    let second = fresh_db("ops_hup_b");
    let s = Setup::new();
    s.write(&[], &[&first]);
    // Both roles are known from the start: what the reload adds is the database.
    s.write_userlist(&[&first, &second]);
    let mut p = s.start("pgsluice");
    p.wait_ready(&first).await;
    let e = p.try_login(&second).await.must_fail("a database not configured yet served a login");
    assert!(e.starts_with("3D000"), "login to a database not configured yet: {e}");

    // A second database: served once the reload is through.
    s.write(&[], &[&first, &second]);
    p.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = match p.try_login(&second).await {
            Ok((c, _)) => {
                assert_eq!(simple_one(&c, "select current_database()").await, second.name);
                break;
            }
            Err(e) => e,
        };
        assert!(Instant::now() < deadline, "new database not served after SIGHUP: {last}\n{}", p.tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(p.log_text().contains(&format!("databases added: {}", second.name)), "{}", p.tail());
    let (kept, _) = p.login(&first).await;

    // Garbage: the reload fails, the running config stays.
    s.write_raw("[general\nthis is = not toml ]]\n");
    p.signal("HUP");
    assert!(p.wait_log("reload failed", Duration::from_secs(10)).await, "no 'reload failed' in the log\n{}", p.tail());
    for db in [&first, &second] {
        let (c, _) = p.login(db).await;
        assert_eq!(simple_one(&c, "select current_database()").await, db.name);
    }
    assert_eq!(simple_one(&kept, "select 1").await, "1", "an existing client after the failed reload");
    assert!(p.exited().is_none(), "pgsluice exited after a bad reload\n{}", p.tail());

    p.signal("QUIT");
    p.assert_exits_ok(Duration::from_secs(5), "after SIGQUIT").await;
}

// === logs ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_client_id() {
    let db = fresh_db("ops_json");
    let s = Setup::new();
    s.write(&["log_format = \"json\""], &[&db]);
    let mut p = s.start("pgsluice");
    p.wait_ready(&db).await;
    // Wait for the readiness probe's session to be logged as gone, so its lines come first.
    assert!(p.wait_log("client disconnected", Duration::from_secs(5)).await, "{}", p.tail());
    let before = p.log_text().lines().count();

    let (c, _) = p.login(&db).await;
    assert_eq!(simple_one(&c, "select 41 + 1").await, "42");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.log_text().lines().skip(before).all(|l| !l.contains("client disconnected")) {
        assert!(Instant::now() < deadline, "no disconnect line for the client\n{}", p.tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.signal("TERM");
    p.assert_exits_ok(Duration::from_secs(5), "SIGTERM with no clients").await;

    let text = p.log_text();
    assert!(!text.contains(&db.password), "the log contains the role's password\n{text}");
    let mut parsed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v = parse_json(line).unwrap_or_else(|e| panic!("log line {} is not JSON ({e}): {line}", i + 1));
        assert!(matches!(v, Json::Obj(_)), "log line {} is not an object: {line}", i + 1);
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "line {} lacks level/timestamp: {line}",
            i + 1
        );
        parsed.push((i, v));
    }
    let find = |what: &str| -> &Json {
        parsed
            .iter()
            .filter(|(i, _)| *i >= before)
            .map(|(_, v)| v)
            .find(|v| v.get("message").and_then(Json::as_str) == Some(what))
            .unwrap_or_else(|| panic!("no {what:?} line for the client\n{text}"))
    };
    let (login, gone) = (find("client logged in"), find("client disconnected"));
    let id =
        login.get("client_id").and_then(Json::as_num).unwrap_or_else(|| panic!("login line: no client_id\n{text}"));
    assert_eq!(gone.get("client_id").and_then(Json::as_num), Some(id), "disconnect line's client_id\n{text}");
    // The session span carries it too, on both lines.
    for line in [login, gone] {
        let span = line.get("span").unwrap_or_else(|| panic!("no span on a session line\n{text}"));
        assert_eq!(span.get("client_id").and_then(Json::as_num), Some(id), "span client_id\n{text}");
        assert_eq!(span.get("db").and_then(Json::as_str), Some(db.name.as_str()), "span db\n{text}");
    }
    assert_eq!(login.get("user").and_then(Json::as_str), Some(db.name.as_str()), "login line user\n{text}");
    println!("JSON log: {} lines, client_id {id} on the login and the disconnect line", parsed.len());
}

// === online restart ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_restart_with_so_reuseport_loses_no_transaction() {
    online_restart("ops_swap", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_restart_with_a_connection_per_transaction_loses_none() {
    online_restart("ops_swap_c", true).await;
}

/// The documented online restart under pgbench: process A serves port P; B starts on the
/// same port (both `so_reuseport`); A gets SIGTERM, closes its listener and drains while new
/// connections land on B. `reconnect`: pgbench `-C` (a new connection per transaction), so
/// connections keep arriving throughout the swap.
async fn online_restart(prefix: &str, reconnect: bool) {
    let db = fresh_db(prefix);
    let s = Setup::new();
    s.write(&["so_reuseport = true", "pool_mode = \"transaction\"", "max_client_conn = 200"], &[&db]);
    let mut a = s.start("a");
    a.wait_ready(&db).await;

    let mut init = pgbench(&db.name, &db.password, s.port);
    init.args(["-i", "-s", "1", "-q"]).arg(&db.name);
    let out = run_pgbench(&mut init, Duration::from_secs(60)).await;
    assert!(out.ok, "pgbench -i through pgsluice failed\n{}\n{}", out.report(), a.tail());

    let mut run = pgbench(&db.name, &db.password, s.port);
    run.args(["-c", "4", "-j", "2", "-T", "10", "-P", "1"]);
    if reconnect {
        run.arg("-C");
    }
    run.arg(&db.name);
    let bench = tokio::spawn(async move { run_pgbench(&mut run, Duration::from_secs(60)).await });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut b = s.start("b");
    assert!(b.wait_log("pgsluice listening", START_TIMEOUT).await, "B did not start\n{}", b.tail());
    a.signal("TERM");
    let swapped = Instant::now();
    assert!(a.wait_log("listener stopped", Duration::from_secs(5)).await, "A kept its listener\n{}", a.tail());

    // A drains while pgbench runs (with -C its clients leave after each transaction).
    let mut a_exited = None;
    while !bench.is_finished() {
        if a_exited.is_none() && a.exited().is_some() {
            a_exited = Some(swapped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = bench.await.expect("pgbench task");
    let bench_ended = swapped.elapsed();
    a.assert_exits_ok(Duration::from_secs(10), "A after pgbench ended").await;
    let a_exited = a_exited.unwrap_or_else(|| swapped.elapsed());
    let processed = out.field("number of transactions actually processed:");
    let failed = out.field("number of failed transactions:");
    let logins = |p: &Proc| p.log_text().matches("client logged in").count();
    println!(
        "online restart{}: pgbench {processed} transactions, {failed} failed, exit ok {}; logins on A {} (with \
         readiness and pgbench -i), on B {}; after A's SIGTERM: A exited at {a_exited:?}, pgbench ended at \
         {bench_ended:?}",
        if reconnect { " (-C)" } else { "" },
        out.ok,
        logins(&a),
        logins(&b),
    );
    println!("{}", out.stderr.lines().filter(|l| l.starts_with("progress:")).collect::<Vec<_>>().join("\n"));
    let context = format!("{}\n{}\n{}", out.report(), a.tail(), b.tail());
    assert!(out.ok, "pgbench exited with an error (aborted clients?)\n{context}");
    assert_eq!(failed, 0, "failed transactions across the swap\n{context}");
    assert!(processed > 0, "nothing processed\n{context}");
    if reconnect {
        // Connections made after the swap landed on B.
        assert!(logins(&b) > 0, "B served none of pgbench's connections\n{context}");
    }

    // B serves new logins on the same port.
    let (c, _) = b.login(&db).await;
    assert_eq!(simple_one(&c, "select count(*) from pgbench_branches").await, "1");
    drop(c);
    b.signal("TERM");
    b.assert_exits_ok(Duration::from_secs(5), "B after SIGTERM").await;
}

// === a minimal JSON reader (serde_json is not a dev-dependency) ===

/// A JSON value, as much as checking log lines needs.
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    /// The number's text.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_num(&self) -> Option<&str> {
        match self {
            Json::Num(n) => Some(n),
            _ => None,
        }
    }
}

/// Parses one complete JSON text (RFC 8259), or says where it is not JSON.
fn parse_json(text: &str) -> Result<Json, String> {
    let mut p = JsonReader { b: text.as_bytes(), i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(format!("trailing characters at byte {}", p.i));
    }
    Ok(v)
}

struct JsonReader<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonReader<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deep");
        }
        self.ws();
        match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    if self.b.get(self.i) != Some(&b':') {
                        return self.err("expected ':'");
                    }
                    self.i += 1;
                    fields.push((key, self.value(depth + 1)?));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(fields));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(self.b.get(self.i), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.b[start..self.i]).expect("ASCII");
                let well_formed = {
                    let digits = t.strip_prefix('-').unwrap_or(t);
                    let int = digits.split(['.', 'e', 'E']).next().unwrap_or("");
                    !int.is_empty() && (int == "0" || !int.starts_with('0')) && !t.ends_with(['.', 'e', 'E', '+', '-'])
                };
                if !well_formed || t.parse::<f64>().is_err() {
                    return self.err(&format!("bad number {t:?}"));
                }
                Ok(Json::Num(t.to_string()))
            }
            _ => self.err("expected a value"),
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.b[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.b.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.b.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).or_else(|_| self.err("invalid UTF-8"));
                }
                Some(b'\\') => {
                    let c = match self.b.get(self.i + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6).and_then(|h| std::str::from_utf8(h).ok());
                            let Some(code) = hex.and_then(|h| u32::from_str_radix(h, 16).ok()) else {
                                return self.err("bad \\u escape");
                            };
                            self.i += 4;
                            // (A surrogate half stands for itself; only validity matters here.)
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return self.err("bad escape"),
                    };
                    self.i += 2;
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                Some(&c) if c < 0x20 => return self.err("control character in a string"),
                Some(&c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

#[test]
fn json_reader_accepts_json_and_rejects_the_rest() {
    let v = parse_json(r#" {"a": [1, -2.5e3, true, null], "b": {"c": "x\"\u00e9\n"}, "d": 0} "#).expect("valid");
    assert_eq!(v.get("b").and_then(|b| b.get("c")).and_then(Json::as_str), Some("x\"é\n"));
    assert_eq!(v.get("d").and_then(Json::as_num), Some("0"));
    for bad in ["", "{", "{\"a\":1,}", "{a:1}", "[1 2]", "\"x", "01", "1.", "{\"a\":1} x", "\"a\tb\"", "tru"] {
        assert!(parse_json(bad).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_user_name_cannot_forge_a_log_line() {
    let db = fresh_db("logforge");
    let s = Setup::new();
    let text = pooler()
        .general("listen_addr = \"127.0.0.1\"")
        .general(&format!("listen_port = {}", s.port))
        .general("auth_type = \"any\"")
        .general("log_connections = true")
        .database_with_login(&db, &[])
        .config_text();
    std::fs::write(s.path().join("userlist.txt"), "").unwrap();
    s.write_raw(&text);
    let mut p = s.start("forge");
    assert!(p.wait_log("pgsluice listening", START_TIMEOUT).await, "did not start\n{}", p.tail());
    let evil = "mallory\nERROR forged: database dropped\r\nINFO also forged";
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&startup_packet(
        PROTOCOL_3_0,
        &[("user", evil), ("database", &db.name), ("application_name", "x\ny")],
    ))
    .await
    .unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'R', "logged in");
    assert!(p.wait_log("client logged in", Duration::from_secs(5)).await, "{}", p.tail());
    let log = p.log_text();
    let line = log.lines().find(|l| l.contains("client logged in")).unwrap().to_string();
    println!("LOG FORGING: {line}");
    assert!(line.contains(r"mallory\nERROR forged: database dropped\r\nINFO also forged"), "{line}");
    assert!(!log.lines().any(|l| l.starts_with("ERROR forged") || l.starts_with("INFO also")), "{log}");
    drop(raw);
    p.signal("TERM");
    p.assert_exits_ok(Duration::from_secs(10), "after SIGTERM").await;
}
