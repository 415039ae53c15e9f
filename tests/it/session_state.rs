//! Session state in transaction mode (issue 8, docs/session-state.md).
//!
//! `session_state = "pin"` (the default) keeps a client that set session state on its
//! server connection and resets the connection (`server_reset_query`) before another client
//! gets it; `reject` refuses such statements with `0A000`, the server failing the request as
//! PostgreSQL fails a statement; `allow` lets the state leak (PgBouncer). Also: the latency
//! histograms of `SHOW LATENCY`, and shutdown with a pinned client.
//!
//! Almost every pool here has one server connection: "another client can (not) get a
//! server" is the observable difference between unpinned and pinned, and "the next client
//! has the same backend pid" shows the connection was reset and reused, not replaced.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;

/// The admin console's database name.
const CONSOLE: &str = "pgbouncer";

/// How long a poll waits for something that should happen (the machine is shared and slow).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long a query that must wait for a pinned server is watched not finishing.
const BLOCKED_FOR: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// pgsluice serving `db` in transaction mode with a pool of one server connection (unless
/// `extra` database lines say otherwise) and `general` lines; `db`'s role is also an admin
/// user.
async fn start(db: &TestDb, general: &[&str], extra: &[&str]) -> Pooler {
    let mut lines = vec!["pool_size = 1"];
    if extra.iter().any(|l| l.starts_with("pool_size")) {
        lines.clear();
    }
    lines.extend_from_slice(extra);
    let mut b =
        pooler().general(&format!("admin_users = [\"{}\"]", db.name)).database(db, &lines).user(&db.name, &db.password);
    for g in general {
        b = b.general(g);
    }
    b.start().await
}

/// Logs in to the admin console as `db`'s role.
async fn console(p: &Pooler, db: &TestDb) -> Client {
    p.try_connect(&db.name, &db.password, CONSOLE).await.unwrap_or_else(|e| panic!("console login: {}", short(&e)))
}

/// Column `col` of the row of (`database`, `user`) in the console's `cmd`.
async fn show_value(admin: &Client, cmd: &str, database: &str, user: &str, col: &str) -> Result<String, String> {
    let msgs = admin.simple_query(cmd).await.map_err(|e| format!("{cmd}: {}", short(&e)))?;
    let mut seen = Vec::new();
    for m in &msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get("database") == Some(database) && r.get("user") == Some(user) {
                return Ok(r.get(col).unwrap_or("NULL").to_string());
            }
            seen.push(format!("({:?}, {:?})", r.get("database"), r.get("user")));
        }
    }
    Err(format!("{cmd}: no row for ({database}, {user}) among {seen:?}"))
}

/// A `SHOW POOLS` integer of the pool of `db` used by `user`.
async fn pool_int_of(admin: &Client, db: &TestDb, user: &str, col: &str) -> i64 {
    let v = show_value(admin, "SHOW POOLS", &db.name, user, col).await.unwrap_or_else(|e| panic!("{e}"));
    v.parse().unwrap_or_else(|_| panic!("SHOW POOLS {col} = {v:?} is not an integer"))
}

/// A `SHOW POOLS` integer of `db`'s pool (its own role).
async fn pool_int(admin: &Client, db: &TestDb, col: &str) -> i64 {
    pool_int_of(admin, db, &db.name, col).await
}

/// Polls `SHOW POOLS` until `col` of `db`'s pool is `want`.
async fn wait_pool(admin: &Client, db: &TestDb, col: &str, want: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = pool_int(admin, db, col).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "SHOW POOLS {col}: {got}, not {want} within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first-column values of every row of `sql` (one simple query), and the client back.
type Answer = (Client, Result<Vec<String>, tokio_postgres::Error>);

/// Runs `sql` on `c` in a task of its own (it may have to wait for a server).
fn spawn_query(c: Client, sql: &'static str) -> JoinHandle<Answer> {
    tokio::spawn(async move {
        let r = c.simple_query(sql).await.map(|m| rows(&m));
        (c, r)
    })
}

/// Asserts that the spawned query waits for a server: `db`'s pool shows a waiting client,
/// and the query has not finished `BLOCKED_FOR` later.
async fn assert_waits(admin: &Client, db: &TestDb, q: &JoinHandle<Answer>) {
    wait_pool(admin, db, "cl_waiting", 1).await;
    tokio::time::sleep(BLOCKED_FOR).await;
    assert!(!q.is_finished(), "the other client got the (single) server while a pinned client holds it");
    assert_eq!(pool_int(admin, db, "cl_waiting").await, 1, "the other client still waits");
}

/// Waits for a spawned query; panics if it fails or takes longer than `PATIENCE`.
async fn finish(q: JoinHandle<Answer>) -> (Client, Vec<String>) {
    let (c, r) = tokio::time::timeout(PATIENCE, q).await.expect("the waiting query never got a server").unwrap();
    (c, r.unwrap_or_else(|e| panic!("the waiting query failed: {}", short(&e))))
}

/// Runs `sql` on `c`, which must not have to wait for a server (none is pinned).
async fn promptly(c: &Client, sql: &str) -> Vec<String> {
    match tokio::time::timeout(PATIENCE, c.simple_query(sql)).await {
        Ok(r) => rows(&r.unwrap_or_else(|e| panic!("{sql}: {}", short(&e)))),
        Err(_) => panic!("{sql}: no server within {PATIENCE:?} (is another client pinned?)"),
    }
}

/// Runs `sql` (simple protocol), which must succeed.
async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", short(&e)));
}

/// Runs `sql` (simple protocol), which must fail; returns (SQLSTATE, message).
async fn fails(c: &Client, sql: &str) -> (String, String) {
    let e = c.batch_execute(sql).await.must_fail(&format!("{sql}: must fail"));
    assert!(!c.is_closed(), "{sql}: the session must survive the error ({})", short(&e));
    (sqlstate(&e).unwrap_or_else(|| panic!("{sql}: not a server error: {e}")), message(&e))
}

/// Asserts that `(code, message)` is pgsluice's refusal of `statement` for `reason`.
#[track_caller]
fn assert_refused(got: &(String, String), statement: &str, reason: &str) {
    let (code, msg) = got;
    assert_eq!(code, "0A000", "{msg}");
    assert!(msg.contains(&format!("\"{statement}\"")), "the message must name {statement:?}: {msg}");
    assert!(msg.contains(reason), "the message must give the reason {reason:?}: {msg}");
    assert!(msg.contains("session_state = \"reject\""), "the message must name the setting: {msg}");
}

/// The backend pid holding session-level advisory lock `key` in `db` ("" if none), seen by
/// the superuser directly (not through pgsluice).
async fn advisory_holder(db: &TestDb, key: u32) -> String {
    let (name, sql) = (
        db.name.clone(),
        format!(
            "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_locks WHERE locktype = 'advisory' \
             AND objid = {key} AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    );
    blocking(move || su_sql(&name, &sql)).await.trim().to_string()
}

/// A `SHOW LATENCY` value of `db`'s pool.
async fn latency(admin: &Client, db: &TestDb, col: &str) -> Option<u64> {
    let v = show_value(admin, "SHOW LATENCY", &db.name, &db.name, col).await.unwrap_or_else(|e| panic!("{e}"));
    (v != "NULL").then(|| v.parse().unwrap_or_else(|_| panic!("SHOW LATENCY {col} = {v:?} is not an integer")))
}

// ---------------------------------------------------------------------------------------
// pin (the default)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_keeps_its_server_and_the_next_client_gets_it_reset() {
    let db = fresh_db("ss_pin");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    // (150 ms rather than 1 ms: A's own statements, and the DISCARD ALL that resets its
    // server, run under it on a loaded machine; B's 0.5 s sleep would still be cancelled if
    // the setting leaked.)
    exec(&a, "SET statement_timeout = '150ms'").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "an untracked SET pins");
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    for _ in 0..3 {
        assert_eq!(simple_one(&a, "SHOW statement_timeout").await, "150ms", "kept across A's transactions");
        exec(&a, "BEGIN").await;
        assert_eq!(simple_one(&a, "SHOW statement_timeout").await, "150ms");
        exec(&a, "COMMIT").await;
        assert_eq!(simple_one(&a, "SELECT pg_backend_pid()").await, pid_a, "A stays on its server");
    }
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1);

    // B needs the only server, which A keeps between its transactions.
    let q = spawn_query(b, "SELECT pg_sleep(0.5); SHOW statement_timeout; SELECT pg_backend_pid()");
    assert_waits(&admin, &db, &q).await;
    assert_eq!(simple_one(&a, "SHOW statement_timeout").await, "150ms", "A is served meanwhile");

    // A leaves: its server is reset, then B gets it (the same backend) without A's setting.
    drop(a);
    let (b, got) = finish(q).await;
    assert_eq!(got[1..], ["0".to_string(), pid_a.clone()], "B on A's backend, reset: {got:?}");
    wait_pool(&admin, &db, "cl_pinned", 0).await;
    assert_eq!(simple_one(&b, "SHOW statement_timeout").await, "0");
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "B never pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_table_lives_across_transactions_and_never_reaches_the_next_client() {
    let db = fresh_db("ss_temp");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    exec(&a, "CREATE TEMP TABLE t(a int); INSERT INTO t VALUES (1), (2)").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "a temp table pins");
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(simple_one(&a, "SELECT count(*) FROM t").await, "2");
    exec(&a, "BEGIN").await;
    exec(&a, "INSERT INTO t VALUES (3)").await;
    exec(&a, "COMMIT").await;
    assert_eq!(simple_one(&a, "SELECT count(*) FROM t").await, "3");
    assert_eq!(simple_one(&a, "SELECT pg_backend_pid()").await, pid_a);

    let q = spawn_query(b, "SELECT to_regclass('pg_temp.t'); SELECT pg_backend_pid()");
    assert_waits(&admin, &db, &q).await;
    drop(a);
    let (b, got) = finish(q).await;
    assert_eq!(got, ["NULL".to_string(), pid_a.clone()], "B on A's backend, without A's temp table");
    let e = b.simple_query("SELECT count(*) FROM t").await.must_fail("t must be gone");
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"), "{}", short(&e));
    wait_pool(&admin, &db, "cl_pinned", 0).await;

    // A temp table dropped at commit pins nothing.
    exec(&b, "BEGIN; CREATE TEMP TABLE u(a int) ON COMMIT DROP; INSERT INTO u VALUES (1); COMMIT").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "ON COMMIT DROP does not pin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_advisory_lock_pins_until_pg_advisory_unlock_all() {
    let db = fresh_db("ss_lock");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    exec(&a, "SELECT pg_advisory_lock(4242)").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "a session-level advisory lock pins");
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(advisory_holder(&db, 4242).await, pid_a, "A's backend holds the lock");
    for _ in 0..3 {
        exec(&a, "BEGIN; SELECT 1; COMMIT").await;
        assert_eq!(simple_one(&a, "SELECT 2").await, "2");
    }
    assert_eq!(simple_one(&a, "SELECT pg_backend_pid()").await, pid_a);
    assert_eq!(advisory_holder(&db, 4242).await, pid_a, "still held across A's transactions");

    // Unlocking one lock keeps the pin: it may not have been the last one.
    exec(&a, "SELECT pg_advisory_lock(4243)").await;
    assert_eq!(simple_one(&a, "SELECT pg_advisory_unlock(4243)").await, "t");
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "pg_advisory_unlock of one lock keeps the pin");
    assert_eq!(advisory_holder(&db, 4242).await, pid_a);

    let q = spawn_query(b, "SELECT pg_try_advisory_xact_lock(4242); SELECT pg_backend_pid()");
    assert_waits(&admin, &db, &q).await;
    exec(&a, "SELECT pg_advisory_unlock_all()").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "pg_advisory_unlock_all unpins");
    let (_b, got) = finish(q).await;
    assert_eq!(got, ["t".to_string(), pid_a.clone()], "B gets A's backend, and the lock is free");
    assert_eq!(advisory_holder(&db, 4242).await, "", "the lock is gone");
    // A is an ordinary client again.
    assert_eq!(promptly(&a, "SELECT 3").await, ["3"]);
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_the_state_unpins_and_frees_the_server() {
    let db = fresh_db("ss_undo");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let mut b = p.connect(&db).await;
    let set_role = format!("SET ROLE {}", db.name);
    // (statement that sets state, a query showing it on A's later transactions, its answer,
    // statement that undoes it)
    let cases: [(&str, &str, &str, &str); 6] = [
        ("SET search_path = public", "SHOW search_path", "public", "RESET ALL"),
        (&set_role, "SHOW role", &db.name, "RESET ROLE"),
        // (A LISTEN of its own is answered by pgsluice and does not pin: issue 17.)
        ("BEGIN; LISTEN jobs; COMMIT", "SELECT count(*) FROM pg_listening_channels()", "1", "UNLISTEN *"),
        ("PREPARE q AS SELECT 41 + 1", "EXECUTE q", "42", "DEALLOCATE q"),
        ("CREATE TEMP TABLE tt(a int)", "SELECT count(*) FROM tt", "0", "DISCARD TEMP"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "SELECT count(*) FROM pg_cursors WHERE name = 'c'", "1", "CLOSE c"),
    ];
    // As in PostgreSQL, RESET ALL leaves a role in place: the client stays pinned.
    exec(&a, &set_role).await;
    exec(&a, "RESET ALL").await;
    assert_eq!(simple_one(&a, "SHOW role").await, db.name);
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "RESET ALL does not undo SET ROLE");
    exec(&a, "RESET ROLE").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0);
    for (set, check, want, undo) in cases {
        exec(&a, set).await;
        assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "{set} must pin");
        assert_eq!(simple_one(&a, check).await, want, "{set}: state kept for A's next transaction");
        let q = spawn_query(b, "SELECT pg_backend_pid()");
        assert_waits(&admin, &db, &q).await;
        exec(&a, undo).await;
        assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "{undo} must unpin (after {set})");
        let (c, _) = finish(q).await;
        b = c;
        assert_eq!(promptly(&b, "SELECT 1").await, ["1"], "after {undo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_scoped_settings_and_locks_do_not_pin() {
    let db = fresh_db("ss_local");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    exec(&a, "BEGIN").await;
    exec(&a, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await;
    exec(&a, "SET LOCAL statement_timeout = '45s'").await;
    assert_eq!(simple_one(&a, "SHOW statement_timeout").await, "45s");
    assert_eq!(simple_one(&a, "SELECT set_config('search_path', 'x', true)").await, "x");
    assert_eq!(simple_one(&a, "SHOW search_path").await, "x");
    exec(&a, "SELECT pg_advisory_xact_lock(7)").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "nothing outlives this transaction");
    exec(&a, "COMMIT").await;
    exec(&a, "SELECT set_config('search_path', 'x', true)").await;
    exec(&a, "SELECT pg_advisory_xact_lock(7)").await;
    exec(&a, "SET LOCAL work_mem = '1234kB'").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0);

    // B gets the only server at once, and nothing of A's is on it.
    let got = promptly(&b, "SHOW statement_timeout; SHOW search_path; SHOW work_mem; SELECT pg_backend_pid()").await;
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(got[..2], ["0".to_string(), "\"$user\", public".to_string()], "{got:?}");
    assert_ne!(got[2], "1234kB");
    assert_eq!(got[3], pid_a, "one server for both");
    assert_eq!(advisory_holder(&db, 7).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_parameters_do_not_pin_and_follow_their_client() {
    let db = fresh_db("ss_tracked");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    for set in ["SET application_name = 'pinless'", "SET TIME ZONE 'Asia/Tokyo'", "SET DateStyle = 'German'"] {
        exec(&a, set).await;
        assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "{set}: tracked parameters never pin");
    }

    let got = promptly(&b, "SHOW application_name; SHOW TimeZone; SHOW DateStyle").await;
    assert_ne!(got[0], "pinless", "{got:?}");
    assert_ne!(got[1], "Asia/Tokyo", "{got:?}");
    assert!(!got[2].starts_with("German"), "{got:?}");
    // A gets its values back on the server B just used.
    assert_eq!(simple_one(&a, "SHOW application_name").await, "pinless");
    assert_eq!(simple_one(&a, "SHOW TimeZone").await, "Asia/Tokyo");
    assert!(simple_one(&a, "SHOW DateStyle").await.starts_with("German"));
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_an_unreported_extra_tracked_parameter_pins_so_it_cannot_leak() {
    // `track_extra_parameters` values are replayed from the startup packet, but PostgreSQL
    // does not report a later `SET lock_timeout`: pgsluice cannot make it follow the client,
    // so it pins (src/frontend/relay.rs `SessionRules::is_tracked`).
    let db = fresh_db("ss_extra");
    let p = start(&db, &["track_extra_parameters = [\"lock_timeout\"]"], &[]).await;
    let admin = console(&p, &db).await;
    // Both want lock_timeout = 5s from their startup packet.
    let with_option = format!("{} options='-c lock_timeout=5s'", p.connstr(&db.name, &db.password, &db.name));
    let a = connect_str(&with_option).await.unwrap_or_else(|e| panic!("connect A: {}", short(&e)));
    let b = connect_str(&with_option).await.unwrap_or_else(|e| panic!("connect B: {}", short(&e)));
    assert_eq!(simple_one(&a, "SHOW lock_timeout").await, "5s");

    exec(&a, "SET lock_timeout = '3s'").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "an unreported parameter's SET pins");
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(simple_one(&a, "SHOW lock_timeout").await, "3s", "kept for A's next transaction");
    let q = spawn_query(b, "SHOW lock_timeout; SELECT pg_backend_pid()");
    assert_waits(&admin, &db, &q).await;
    drop(a);
    // The reset (DISCARD ALL) put lock_timeout back to the server default; B still gets its 5s.
    let (_b, got) = finish(q).await;
    assert_eq!(got, ["5s".to_string(), pid_a], "B on A's backend, with its own lock_timeout");
    wait_pool(&admin, &db, "cl_pinned", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_statements_pin_at_parse_and_at_each_bind() {
    let db = fresh_db("ss_ext");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let mut b = p.connect(&db).await;

    a.execute("SET search_path TO public", &[]).await.unwrap();
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "an extended-protocol SET pins");
    let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "public");
    a.execute("RESET ALL", &[]).await.unwrap();
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "an extended-protocol RESET ALL unpins");

    // A prepared statement that sets state pins each time it runs.
    let st = a.prepare("SET search_path TO public").await.unwrap();
    for round in 0..2 {
        a.execute(&st, &[]).await.unwrap();
        assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "round {round}: running a prepared SET pins");
        let q = spawn_query(b, "SHOW search_path");
        assert_waits(&admin, &db, &q).await;
        exec(&a, "RESET ALL").await;
        assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "round {round}");
        let (c, got) = finish(q).await;
        assert_eq!(got, ["\"$user\", public"], "round {round}: the server was reset before B got it");
        b = c;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_that_may_remain_keeps_the_pin_until_discard_all() {
    // Conservative: a rolled-back SET, RESET of one name, UNLISTEN of one channel and
    // DEALLOCATE of one of two statements all leave the client pinned.
    let db = fresh_db("ss_partial");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;

    exec(&a, "BEGIN; SET search_path = x; ROLLBACK").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "a rolled-back SET still pins");
    exec(&a, "RESET search_path").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "RESET name does not unpin");
    exec(&a, "RESET ALL").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0);

    exec(&a, "BEGIN; LISTEN one; LISTEN two; UNLISTEN one; COMMIT").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "UNLISTEN of one channel does not unpin");
    exec(&a, "PREPARE p1 AS SELECT 1; PREPARE p2 AS SELECT 2; DEALLOCATE p1").await;
    assert_eq!(simple_one(&a, "EXECUTE p2").await, "2");
    exec(&a, "CREATE TEMP TABLE t(a int); SELECT pg_advisory_lock(99)").await;
    assert_eq!(advisory_holder(&db, 99).await, simple_one(&a, "SELECT pg_backend_pid()").await);
    exec(&a, "DISCARD ALL").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "DISCARD ALL undoes everything");
    assert_eq!(advisory_holder(&db, 99).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_use_up_the_pool_and_others_get_query_wait_timeout() {
    let db = fresh_db("ss_full");
    let p = start(&db, &["query_wait_timeout = \"1s\""], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    exec(&a, "SET work_mem = '1234kB'").await;
    let started = Instant::now();
    let (code, msg) = fails(&b, "SELECT 1").await;
    assert_eq!(code, "57014", "{msg}");
    assert!(msg.contains("query_wait_timeout"), "{msg}");
    assert!(started.elapsed() >= Duration::from_millis(900), "waited only {:?}", started.elapsed());
    // A is served as ever; once it unpins, B is too.
    assert_eq!(simple_one(&a, "SHOW work_mem").await, "1234kB");
    exec(&a, "RESET ALL").await;
    assert_eq!(promptly(&b, "SHOW work_mem").await, ["4MB"]);
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_reset_query_a_pinned_clients_server_is_closed_not_reused() {
    let db = fresh_db("ss_noreset");
    let p = start(&db, &["server_reset_query = \"\""], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    // Unpinned: the connection is reused as is.
    let pid_first = simple_one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(simple_one(&b, "SELECT pg_backend_pid()").await, pid_first);
    exec(&a, "SET work_mem = '1234kB'").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1);
    let q = spawn_query(b, "SHOW work_mem; SELECT pg_backend_pid()");
    assert_waits(&admin, &db, &q).await;
    drop(a);
    let (_b, got) = finish(q).await;
    assert_eq!(got[0], "4MB", "B never sees A's setting: {got:?}");
    assert_ne!(got[1], pid_first, "nothing can reset A's server: it is closed, B gets a new one");
    wait_pool(&admin, &db, "cl_pinned", 0).await;
}

/// Connects to `db` through `p`, recording how the connection ends (the last error).
async fn connect_recording(p: &Pooler, db: &TestDb) -> (Client, tokio::sync::oneshot::Receiver<String>) {
    let (client, conn) =
        tokio_postgres::connect(&p.connstr(&db.name, &db.password, &db.name), tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let end = match conn.await {
            Ok(()) => "closed without an error".to_string(),
            Err(e) => short(&e),
        };
        let _ = tx.send(end);
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_is_disconnected_when_its_server_dies() {
    let db = fresh_db("ss_died");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let (a, a_end) = connect_recording(&p, &db).await;
    let b = p.connect(&db).await;

    exec(&a, "SET work_mem = '1234kB'").await;
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1);
    let sql = format!("SELECT pg_terminate_backend({pid_a})");
    assert_eq!(blocking(move || su_sql("postgres", &sql)).await.trim(), "t");
    // The session state is gone with the server: A is told so and disconnected.
    let end = tokio::time::timeout(PATIENCE, a_end).await.expect("A still connected").unwrap();
    assert!(end.starts_with("08006") && end.contains("state on it is lost"), "A ended with: {end}");
    assert!(a.simple_query("SELECT 1").await.is_err());
    wait_pool(&admin, &db, "cl_pinned", 0).await;
    // Others go on.
    assert_eq!(promptly(&b, "SELECT 1").await, ["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_mode_pins_and_session_mode_ignores_session_state() {
    let stmt = fresh_db("ss_stmtmode");
    let session = fresh_db("ss_sessmode");
    let p = pooler()
        .general(&format!("admin_users = [\"{}\"]", stmt.name))
        .database(&stmt, &["pool_size = 1", "pool_mode = \"statement\""])
        .database(&session, &["pool_size = 1", "pool_mode = \"session\"", "session_state = \"reject\""])
        .user(&stmt.name, &stmt.password)
        .user(&session.name, &session.password)
        .start()
        .await;
    let admin = console(&p, &stmt).await;

    let a = p.connect(&stmt).await;
    let b = p.connect(&stmt).await;
    exec(&a, "SET work_mem = '1234kB'").await;
    assert_eq!(pool_int(&admin, &stmt, "cl_pinned").await, 1, "statement mode pins too");
    assert_eq!(simple_one(&a, "SHOW work_mem").await, "1234kB");
    let q = spawn_query(b, "SHOW work_mem");
    assert_waits(&admin, &stmt, &q).await;
    drop(a);
    let (_b, got) = finish(q).await;
    assert_eq!(got, ["4MB"]);

    // Session mode: the client keeps its server anyway; `reject` does not apply.
    let s = p.connect(&session).await;
    exec(&s, "SET work_mem = '1234kB'; CREATE TEMP TABLE t(a int)").await;
    assert_eq!(simple_one(&s, "SHOW work_mem").await, "1234kB");
    assert_eq!(pool_int(&admin, &session, "cl_pinned").await, 0, "session mode never counts as pinned");
}

// ---------------------------------------------------------------------------------------
// reject, allow, and which policy applies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_refuses_state_statements_as_postgresql_fails_a_statement() {
    let db = fresh_db("ss_reject");
    let p = start(&db, &["session_state = \"reject\""], &[]).await;
    let admin = console(&p, &db).await;
    let mut a = p.connect(&db).await;

    let got = fails(&a, "SET statement_timeout = '1ms'").await;
    assert_refused(&got, "SET statement_timeout = '1ms'", "a session parameter pgsluice does not track");
    assert_eq!(simple_one(&a, "SHOW statement_timeout").await, "0", "the refused SET did not run");
    let set_role = format!("SET ROLE {}", db.name);
    for (sql, reason) in [
        ("SELECT pg_advisory_lock(1)", "a session-level advisory lock"),
        ("CREATE TEMP TABLE t(a int)", "a temporary table"),
        ("PREPARE q AS SELECT 1", "an SQL-level prepared statement"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "a WITH HOLD cursor"),
        (set_role.as_str(), "a session role"),
        ("SELECT set_config('search_path', 'x', false)", "a session parameter pgsluice does not track"),
    ] {
        assert_refused(&fails(&a, sql).await, sql, reason);
    }
    assert_eq!(advisory_holder(&db, 1).await, "", "the refused lock was not taken");
    assert_eq!(simple_one(&a, "SELECT count(*) FROM pg_listening_channels()").await, "0");
    assert_eq!(simple_one(&a, "SELECT to_regclass('pg_temp.t') IS NULL").await, "t");

    // A multi-statement string is refused whole: its first statement did not run either.
    let got = fails(&a, "BEGIN; SELECT 1; SET work_mem = '64MB'").await;
    assert_refused(&got, "SET work_mem = '64MB'", "a session parameter pgsluice does not track");
    assert_eq!(simple_one(&a, "SELECT 5").await, "5", "not inside a transaction: BEGIN did not run");

    // Inside a transaction block the refusal aborts the transaction, as an error would.
    exec(&a, "CREATE TABLE kept(a int)").await;
    exec(&a, "BEGIN").await;
    exec(&a, "INSERT INTO kept VALUES (1)").await;
    assert_refused(&fails(&a, "SET search_path = x").await, "SET search_path = x", "session parameter");
    let (code, msg) = fails(&a, "SELECT 1").await;
    assert_eq!(code, "25P02", "{msg}");
    assert!(msg.contains("current transaction is aborted"), "{msg}");
    let end = a.simple_query("COMMIT").await.unwrap();
    let tag = end.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(_) => Some(()),
        _ => None,
    });
    assert!(tag.is_some(), "COMMIT of the aborted transaction completes (as ROLLBACK)");
    assert_eq!(simple_one(&a, "SELECT count(*) FROM kept").await, "0", "the transaction was rolled back");
    exec(&a, "BEGIN; SELECT 1").await;
    let _ = fails(&a, "SET search_path = x").await;
    exec(&a, "ROLLBACK").await;
    assert_eq!(simple_one(&a, "SHOW search_path").await, "\"$user\", public");

    // Extended protocol: the Parse is refused.
    let e = a.query("SET search_path = x", &[]).await.must_fail("a Parse of SET must be refused");
    assert_refused(&(sqlstate(&e).unwrap_or_default(), message(&e)), "SET search_path = x", "session parameter");
    let e = a.prepare("SELECT pg_advisory_lock($1)").await.must_fail("a Parse of an advisory lock must be refused");
    assert_refused(&(sqlstate(&e).unwrap_or_default(), message(&e)), "SELECT pg_advisory_lock($1)", "advisory");
    let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session goes on");
    let tx = a.transaction().await.unwrap();
    let e = tx.query("SET search_path = x", &[]).await.must_fail("refused inside a transaction");
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{}", short(&e));
    let e = tx.query("SELECT 1", &[]).await.must_fail("the transaction is aborted");
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"), "{}", short(&e));
    tx.rollback().await.unwrap();
    let two: i32 = a.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);

    // What reject lets through: transaction-scoped state, tracked parameters, undoing.
    exec(&a, "BEGIN; SET LOCAL search_path = x").await;
    assert_eq!(simple_one(&a, "SHOW search_path").await, "x");
    exec(&a, "SELECT set_config('work_mem', '2MB', true); SELECT pg_advisory_xact_lock(1); COMMIT").await;
    assert_eq!(simple_one(&a, "SHOW search_path").await, "\"$user\", public");
    exec(&a, "SET application_name = 'fine'").await;
    assert_eq!(simple_one(&a, "SHOW application_name").await, "fine");
    for undo in ["RESET ALL", "UNLISTEN *", "DEALLOCATE ALL", "CLOSE ALL", "SELECT pg_advisory_unlock_all()"] {
        exec(&a, undo).await;
    }
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "reject never pins");
}

/// Logs in on a raw socket (trust authentication) as `db`'s role.
async fn raw_login(p: &Pooler, db: &TestDb) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup_packet(PROTOCOL_3_0, &[("user", &db.name), ("database", &db.name)])).await.unwrap();
    loop {
        let m = read_msg_within(&mut s, PATIENCE).await.expect("pgsluice closed the login");
        assert_ne!(m.tag, b'E', "login failed: {}", m.message());
        if m.tag == b'Z' {
            return s;
        }
    }
}

/// Reads messages up to the `n`th ReadyForQuery, each as its tag followed by the SQLSTATE
/// (ErrorResponse), the status (ReadyForQuery) or the first column (DataRow).
async fn raw_answers(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut ready = 0;
    while ready < n {
        let m = read_msg_within(s, PATIENCE).await.unwrap_or_else(|| panic!("pgsluice closed after {out:?}"));
        out.push(match m.tag {
            b'E' => format!("E {}", m.code()),
            b'Z' => {
                ready += 1;
                format!("Z {}", m.body[0] as char)
            }
            b'D' => format!("D {}", m.first_column().unwrap_or_default()),
            t => (t as char).to_string(),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_keeps_pipelined_requests_in_step() {
    let db = fresh_db("ss_rawreject");
    let p = pooler()
        .general("auth_type = \"any\"")
        .database_with_login(&db, &["pool_size = 1", "session_state = \"reject\""])
        .start()
        .await;
    let mut s = raw_login(&p, &db).await;

    // An extended batch whose Parse is refused (the server skips to its Sync), then a query.
    let mut batch = [parse("SET search_path = x"), bind(&[]), execute(), sync()].concat();
    batch.extend(query("SELECT 7"));
    s.write_all(&batch).await.unwrap();
    assert_eq!(raw_answers(&mut s, 2).await, ["E 0A000", "Z I", "T", "D 7", "C", "Z I"]);

    // Simple queries pipelined through a transaction the refusal aborts.
    let batch = [query("BEGIN"), query("SET work_mem = '1MB'"), query("SELECT 1"), query("ROLLBACK")].concat();
    s.write_all(&batch).await.unwrap();
    let got = raw_answers(&mut s, 4).await;
    assert_eq!(got, ["C", "Z T", "E 0A000", "Z E", "E 25P02", "Z E", "C", "Z I"]);

    // A refused statement among pipelined extended batches.
    let mut batch = [parse("SELECT 1"), bind(&[]), execute(), sync()].concat();
    batch.extend([parse("CREATE TEMP TABLE x (a int)"), bind(&[]), execute(), sync()].concat());
    batch.extend([parse("SELECT 2"), bind(&[]), execute(), sync()].concat());
    s.write_all(&batch).await.unwrap();
    let got = raw_answers(&mut s, 3).await;
    assert_eq!(got, ["1", "2", "D 1", "C", "Z I", "E 0A000", "Z I", "1", "2", "D 2", "C", "Z I"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_named_temp_is_not_a_temporary_table() {
    // `temp` is an unreserved keyword in PostgreSQL, a common column name (sensor data), and
    // may name a table.
    // None of these statements leaves session state; under `reject` they must run, under
    // `pin` they must not pin.
    let rejecting = fresh_db("ss_tempcol_r");
    let pinning = fresh_db("ss_tempcol_p");
    let p = pooler()
        .general(&format!("admin_users = [\"{}\"]", pinning.name))
        .database(&rejecting, &["pool_size = 1", "session_state = \"reject\""])
        .database(&pinning, &["pool_size = 1"])
        .user(&rejecting.name, &rejecting.password)
        .user(&pinning.name, &pinning.password)
        .start()
        .await;
    let admin = console(&p, &pinning).await;
    let statements = [
        "CREATE TABLE weather (city text, temp int)",
        "CREATE INDEX weather_temp ON weather (temp)",
        "CREATE VIEW hot AS SELECT city FROM weather WHERE temp > 30",
        "CREATE TABLE \"temp\" (a int)",
        "WITH s AS (SELECT 1 AS a) INSERT INTO temp SELECT a FROM s",
    ];
    let r = p.connect(&rejecting).await;
    let mut refused = Vec::new();
    for sql in statements {
        if let Err(e) = r.batch_execute(sql).await {
            refused.push(format!("{sql}: {}", short(&e)));
        }
    }
    let c = p.connect(&pinning).await;
    let mut pinned = Vec::new();
    for sql in statements {
        exec(&c, sql).await;
        if pool_int(&admin, &pinning, "cl_pinned").await != 0 {
            pinned.push(sql);
            exec(&c, "DISCARD TEMP").await;
        }
    }
    assert!(
        refused.is_empty() && pinned.is_empty(),
        "refused under reject: {refused:#?}\npinned under pin: {pinned:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_taken_from_the_user_then_the_database_then_general() {
    let general = fresh_db("ss_general");
    let pinned = fresh_db("ss_dbpin");
    let user = fresh_db("ss_user");
    let p = pooler()
        .general("session_state = \"reject\"")
        .general(&format!("admin_users = [\"{}\"]", general.name))
        .database(&general, &["pool_size = 1"])
        .database(&pinned, &["pool_size = 1", "session_state = \"pin\""])
        .section(&format!("[users.{}]\nsession_state = \"allow\"\n", user.name))
        .user(&general.name, &general.password)
        .user(&pinned.name, &pinned.password)
        .user(&user.name, &user.password)
        .start()
        .await;
    let admin = console(&p, &general).await;

    let g = p.connect(&general).await;
    assert_refused(&fails(&g, "SET work_mem = '2MB'").await, "SET work_mem = '2MB'", "session parameter");

    let d = p.connect(&pinned).await;
    exec(&d, "SET work_mem = '2MB'").await;
    assert_eq!(pool_int(&admin, &pinned, "cl_pinned").await, 1, "[databases] pin overrides [general] reject");

    let connect_user = || async {
        p.try_connect(&user.name, &user.password, &pinned.name)
            .await
            .unwrap_or_else(|e| panic!("connect as {}: {}", user.name, short(&e)))
    };
    let u1 = connect_user().await;
    let u2 = connect_user().await;
    exec(&u1, "SET work_mem = '3MB'").await;
    assert_eq!(pool_int_of(&admin, &pinned, &user.name, "cl_pinned").await, 0, "[users] allow: no pin");
    // (A pool of 1 per (database, user): u2 gets u1's server, and u1's setting with it.)
    assert_eq!(promptly(&u2, "SHOW work_mem").await, ["3MB"], "allow lets the setting leak");
    assert_eq!(pool_int(&admin, &pinned, "cl_pinned").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_set_of_session_state_applies_to_clients_that_log_in_afterwards() {
    let db = fresh_db("ss_console");
    let p = start(&db, &[], &["pool_size = 2"]).await;
    let admin = console(&p, &db).await;
    let before = p.connect(&db).await;

    admin.simple_query("SET session_state = reject").await.unwrap_or_else(|e| panic!("SET: {}", short(&e)));
    let config = admin.simple_query("SHOW CONFIG").await.unwrap();
    let value = config.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get(0) == Some("session_state") => r.get(1).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("reject"), "SHOW CONFIG session_state");
    let after = p.connect(&db).await;

    exec(&before, "SET work_mem = '2MB'").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1, "a client logged in before keeps `pin`");
    let got = fails(&after, "SET work_mem = '2MB'").await;
    assert_refused(&got, "SET work_mem = '2MB'", "session parameter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lets_session_state_leak_to_the_next_client_like_pgbouncer() {
    // Why `pin` is the default: under `allow` the next client of a server connection gets
    // whatever the previous one left on it.
    let db = fresh_db("ss_allow");
    let p = start(&db, &["session_state = \"allow\""], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;

    exec(&a, "SET work_mem = '1234kB'; CREATE TEMP TABLE leak(a int)").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 0, "allow never pins");
    let pid_a = simple_one(&a, "SELECT pg_backend_pid()").await;
    let got =
        promptly(&b, "SHOW work_mem; SELECT to_regclass('pg_temp.leak') IS NOT NULL; SELECT pg_backend_pid()").await;
    assert_eq!(got, ["1234kB".to_string(), "t".to_string(), pid_a], "B inherits A's setting and temp table");
}

// ---------------------------------------------------------------------------------------
// Latency histograms, shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_latency_counts_every_transaction_and_slow_queries_move_the_upper_quantiles() {
    let db = fresh_db("ss_latency");
    let p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let c = p.connect(&db).await;
    let bounds = pgsluice::stats::LATENCY_BUCKETS_US;

    for _ in 0..20 {
        exec(&c, "SELECT 1").await;
    }
    // Recorded when pgsluice reads the ReadyForQuery, before the client gets it.
    for col in ["xact_count", "query_count", "wait_count"] {
        assert_eq!(latency(&admin, &db, col).await, Some(20), "{col} after 20 autocommit queries");
    }
    let p50 = latency(&admin, &db, "query_p50_us").await.expect("query_p50_us");
    assert!(p50 < 100_000, "SELECT 1 takes well under 100 ms: p50 {p50}");

    for _ in 0..5 {
        exec(&c, "SELECT pg_sleep(0.1)").await;
    }
    // 25 transactions of one query each; one server assignment per transaction.
    for col in ["xact_count", "query_count", "wait_count"] {
        assert_eq!(latency(&admin, &db, col).await, Some(25), "{col} after 25 autocommit queries");
    }
    for h in ["xact", "query"] {
        let q = |s: &str| format!("{h}_{s}_us");
        let (p50, p95, p99) = (
            latency(&admin, &db, &q("p50")).await.expect("p50"),
            latency(&admin, &db, &q("p95")).await.expect("p95"),
            latency(&admin, &db, &q("p99")).await.expect("p99"),
        );
        assert!(p50 < 100_000, "{h}: 20 of 25 are fast: p50 {p50}");
        assert!(p95 >= 100_000 && p99 >= 100_000, "{h}: the 5 sleeps (of 25) are the top 20 %: p95 {p95}, p99 {p99}");
        for v in [p50, p95, p99] {
            assert!(bounds.contains(&v), "{h}: quantile {v} is not a bucket bound {bounds:?}");
        }
    }
    assert!(latency(&admin, &db, "wait_p99_us").await.is_some(), "waits were recorded");

    // A pinned client keeps its server: 12 transactions, one assignment.
    exec(&c, "SET work_mem = '1234kB'").await;
    for _ in 0..10 {
        exec(&c, "SELECT 1").await;
    }
    exec(&c, "RESET ALL").await;
    assert_eq!(latency(&admin, &db, "xact_count").await, Some(37));
    assert_eq!(latency(&admin, &db, "query_count").await, Some(37));
    assert_eq!(latency(&admin, &db, "wait_count").await, Some(26), "a pinned client is not assigned again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_a_pinned_idle_client_promptly() {
    let db = fresh_db("ss_shutdown");
    let mut p = start(&db, &[], &[]).await;
    let admin = console(&p, &db).await;
    let a = p.connect(&db).await;
    exec(&a, "SET work_mem = '1234kB'").await;
    assert_eq!(pool_int(&admin, &db, "cl_pinned").await, 1);

    let started = Instant::now();
    let finished = p.shutdown(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(finished, "sessions still open 20 s after shutdown began");
    assert!(took < Duration::from_secs(10), "shutdown with a pinned idle client took {took:?}");
    let e = a.simple_query("SELECT 1").await.must_fail("the pinned client must have been closed");
    assert!(sqlstate(&e).as_deref() == Some("57P01") || e.is_closed(), "{}", short(&e));
}

// ---------------------------------------------------------------------------------------
// LISTEN (issue 17): answered by pgsluice, no longer session state
// ---------------------------------------------------------------------------------------

/// A `LISTEN` of its own neither pins (`pin`) nor is refused (`reject`): another client gets
/// the only server connection at once. One inside a transaction block still goes to the
/// server and is session state.
#[tokio::test]
async fn a_listen_of_its_own_neither_pins_nor_is_refused() {
    for policy in ["pin", "reject"] {
        let db = fresh_db("ss_listen");
        let setting = format!("session_state = \"{policy}\"");
        let p = start(&db, &[&setting], &[]).await;
        let a = p.connect(&db).await;
        a.batch_execute("LISTEN jobs").await.unwrap_or_else(|e| panic!("{policy}: {}", message(&e)));
        let b = p.connect(&db).await;
        let got = tokio::time::timeout(Duration::from_secs(5), scalar(&b, "select 1")).await;
        assert!(matches!(got, Ok(Ok(Some(ref v))) if v == "1"), "{policy}: the pool's only server is free");
        let in_block = a.batch_execute("BEGIN; LISTEN other; COMMIT").await;
        match policy {
            "reject" => assert_eq!(in_block.map_err(|e| sqlstate(&e)), Err(Some("0A000".into()))),
            _ => assert!(in_block.is_ok(), "pin runs it on the server"),
        }
    }
}
