//! The admin console (`pgbouncer` virtual database): PgBouncer 1.24's `SHOW` column sets,
//! values that follow what clients do, access rights, and the control commands (PAUSE,
//! RESUME, KILL, DISABLE, ENABLE, RELOAD, SET, RECONNECT, WAIT_CLOSE).
//!
//! The console speaks the simple query protocol only: everything goes through
//! `simple_query`. Expected column lists are written from PgBouncer's documentation and
//! source (1.24, the newest release), not from pgsluice's code.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

use crate::harness::*;

/// The admin console's database name (the default `admin_database`).
const CONSOLE: &str = "pgbouncer";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A `SHOW` result: column names and rows of text values (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

/// One row of a [`Table`], read by column name.
#[derive(Clone, Copy)]
struct Row<'a> {
    table: &'a Table,
    values: &'a [Option<String>],
}

impl Table {
    fn from_messages(msgs: &[SimpleQueryMessage]) -> Table {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        for m in msgs {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    columns = cols.iter().map(|c| c.name().to_string()).collect();
                }
                SimpleQueryMessage::Row(r) => {
                    if columns.is_empty() {
                        columns = r.columns().iter().map(|c| c.name().to_string()).collect();
                    }
                    rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
                _ => {}
            }
        }
        Table { columns, rows }
    }

    fn col(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {:?}", self.columns))
    }

    fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(move |v| Row { table: self, values: v })
    }

    /// The rows whose columns equal the given values.
    fn rows_where(&self, pairs: &[(&str, &str)]) -> Vec<Row<'_>> {
        self.rows().filter(|r| pairs.iter().all(|(c, v)| r.get(c) == Some(*v))).collect()
    }

    /// The only row whose columns equal the given values (panics if none or several).
    fn row_where(&self, pairs: &[(&str, &str)]) -> Row<'_> {
        let found = self.rows_where(pairs);
        assert_eq!(found.len(), 1, "expected exactly one row with {pairs:?} in {self:#?}");
        found[0]
    }

    /// The first column of every row.
    fn first_column(&self) -> Vec<String> {
        self.rows.iter().map(|r| r[0].clone().unwrap_or_else(|| "NULL".into())).collect()
    }
}

impl<'a> Row<'a> {
    fn get(&self, col: &str) -> Option<&'a str> {
        self.values[self.table.col(col)].as_deref()
    }

    fn text(&self, col: &str) -> &'a str {
        self.get(col).unwrap_or_else(|| panic!("{col} is NULL in {:?}", self.values))
    }

    fn int(&self, col: &str) -> i64 {
        let v = self.text(col);
        v.parse().unwrap_or_else(|_| panic!("{col} = {v:?} is not an integer"))
    }
}

impl std::fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs: Vec<String> = self
            .table
            .columns
            .iter()
            .zip(self.values)
            .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
            .collect();
        write!(f, "{{{}}}", pairs.join(" "))
    }
}

/// Runs a console command that returns a table.
async fn try_show(c: &Client, cmd: &str) -> Result<Table, tokio_postgres::Error> {
    Ok(Table::from_messages(&c.simple_query(cmd).await?))
}

/// Runs a console command that must succeed and returns its table.
async fn show(c: &Client, cmd: &str) -> Table {
    try_show(c, cmd).await.unwrap_or_else(|e| panic!("{cmd}: {}", short(&e)))
}

/// Runs a control command that must succeed.
async fn admin_ok(c: &Client, cmd: &str) {
    c.simple_query(cmd).await.unwrap_or_else(|e| panic!("{cmd}: {}", short(&e)));
}

/// Runs a console command that must fail with an ERROR (not a disconnect); returns
/// (SQLSTATE, message).
async fn admin_err(c: &Client, cmd: &str) -> (String, String) {
    let e = c.simple_query(cmd).await.must_fail(&format!("{cmd} must fail"));
    let code = sqlstate(&e).unwrap_or_else(|| panic!("{cmd}: not a server error: {e}"));
    assert!(!c.is_closed(), "{cmd}: the console session must survive an error");
    (code, message(&e))
}

/// Polls `f` every 50 ms until it returns `Ok`; panics with its last `Err` after `timeout`.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client connection whose notices and end are recorded.
struct Watched {
    client: Client,
    notices: Arc<Mutex<Vec<String>>>,
    end: tokio::sync::oneshot::Receiver<Option<tokio_postgres::Error>>,
}

impl Watched {
    /// The notices received so far (`SQLSTATE message`).
    fn notices(&self) -> Vec<String> {
        self.notices.lock().unwrap().clone()
    }

    /// How the connection ended: the server's terminal error, if it sent one. Panics if it
    /// is still open after `timeout`.
    async fn ended(self, timeout: Duration) -> Option<tokio_postgres::Error> {
        drop(self.client);
        tokio::time::timeout(timeout, self.end).await.expect("connection still open").expect("connection task")
    }
}

/// Connects with tokio-postgres, driving the connection by hand to see notices and how it
/// ended.
async fn connect_watched(connstr: &str) -> Result<Watched, tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(connstr, NoTls).await?;
    let notices = Arc::new(Mutex::new(Vec::new()));
    let (tx, end) = tokio::sync::oneshot::channel();
    let seen = notices.clone();
    tokio::spawn(async move {
        let last = loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    seen.lock().unwrap().push(format!("{} {}", n.code().code(), n.message()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        let _ = tx.send(last);
    });
    Ok(Watched { client, notices, end })
}

/// A pooler description with `admin` as the console's admin user and `dbs` served (with
/// their extra section lines); every role is in the auth_file.
fn with_admin(admin: &TestDb, dbs: &[(&TestDb, &[&str])]) -> PoolerBuilder {
    let mut b = pooler().general(&format!("admin_users = [\"{}\"]", admin.name)).user(&admin.name, &admin.password);
    for (db, extra) in dbs {
        b = b.database(db, extra);
        if db.name != admin.name {
            b = b.user(&db.name, &db.password);
        }
    }
    b
}

/// Logs in to the admin console as `user`.
async fn console(p: &Pooler, user: &TestDb) -> Client {
    p.try_connect(&user.name, &user.password, CONSOLE)
        .await
        .unwrap_or_else(|e| panic!("admin console login as {}: {}", user.name, short(&e)))
}

/// Connects as `db`'s role to `db` with an application_name, so SHOW CLIENTS can tell
/// clients apart.
async fn connect_named(p: &Pooler, db: &TestDb, app: &str) -> Client {
    connect_str(&format!("{} application_name={app}", p.connstr(&db.name, &db.password, &db.name)))
        .await
        .unwrap_or_else(|e| panic!("connect {app}: {}", short(&e)))
}

/// The config file the running pooler was loaded from.
fn config_path(p: &Pooler) -> std::path::PathBuf {
    p.handle.as_ref().expect("running pooler").shared.config.load().path.clone()
}

/// `SHOW POOLS`, once it has a row for `db`'s pool (its role is the pool user).
async fn pools_table(admin: &Client, db: &TestDb) -> Option<Table> {
    let t = show(admin, "SHOW POOLS").await;
    let found = t.rows_where(&[("database", &db.name), ("user", &db.name)]).len() == 1;
    found.then_some(t)
}

/// A `SHOW POOLS` value of `db`'s pool.
async fn pool_value(admin: &Client, db: &TestDb, col: &str) -> Result<i64, String> {
    let t = show(admin, "SHOW POOLS").await;
    let r = t.rows_where(&[("database", &db.name), ("user", &db.name)]).first().copied();
    r.map(|r| r.int(col)).ok_or_else(|| format!("no pool row for {} in {t:#?}", db.name))
}

/// (xact_count, query_count) of `db` in SHOW STATS_TOTALS.
async fn xacts_and_queries(admin: &Client, db: &TestDb) -> (i64, i64) {
    let t = show(admin, "SHOW STATS_TOTALS").await;
    let r = t.row_where(&[("database", &db.name)]);
    (r.int("xact_count"), r.int("query_count"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Column sets (PgBouncer 1.24)
// ---------------------------------------------------------------------------------------

/// SHOW CLIENTS / SHOW SERVERS in PgBouncer 1.24 (21 columns).
const SOCKET_COLUMNS: [&str; 21] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// Every SHOW with PgBouncer 1.24's column list, plus pgsluice's own HOSTS and ROUTES.
fn expected_columns() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "SHOW POOLS",
            vec![
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
                // pgsluice's own, after PgBouncer's (issue 8: clients pinned by session state).
                "cl_pinned",
            ],
        ),
        (
            "SHOW STATS",
            vec![
                "database",
                "total_server_assignment_count",
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "total_client_parse_count",
                "total_server_parse_count",
                "total_bind_count",
                "avg_server_assignment_count",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
            ],
        ),
        (
            "SHOW STATS_TOTALS",
            vec![
                "database",
                "server_assignment_count",
                "xact_count",
                "query_count",
                "bytes_received",
                "bytes_sent",
                "xact_time",
                "query_time",
                "wait_time",
                "client_parse_count",
                "server_parse_count",
                "bind_count",
            ],
        ),
        (
            // The avg_ prefix on the newer columns only is PgBouncer's.
            "SHOW STATS_AVERAGES",
            vec![
                "database",
                "server_assignment_count",
                "xact_count",
                "query_count",
                "bytes_received",
                "bytes_sent",
                "xact_time",
                "query_time",
                "wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
            ],
        ),
        (
            "SHOW DATABASES",
            vec![
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ],
        ),
        // PgBouncer's, then pgsluice's route.
        ("SHOW CLIENTS", [&SOCKET_COLUMNS[..], &["route"]].concat()),
        ("SHOW SERVERS", SOCKET_COLUMNS.to_vec()),
        ("SHOW CONFIG", vec!["key", "value", "default", "changeable"]),
        (
            "SHOW USERS",
            vec![
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ],
        ),
        ("SHOW LISTS", vec!["list", "items"]),
        ("SHOW MEM", vec!["name", "size", "used", "free", "memtotal"]),
        ("SHOW VERSION", vec!["version"]),
        ("SHOW STATE", vec!["key", "value"]),
        ("SHOW TOTALS", vec!["name", "value"]),
        // pgsluice's own.
        (
            "SHOW HOSTS",
            vec![
                "database",
                "host",
                "role",
                "state",
                "lag_bytes",
                "lag_seconds",
                "timeline",
                "lsn",
                "breaker",
                "breaker_refused",
                "probes",
                "weight",
                "sv_active",
                "last_probe",
                "last_error",
            ],
        ),
        (
            "SHOW ROUTES",
            vec![
                "database",
                "user",
                "reads_replica",
                "reads_primary",
                "writes",
                "fallbacks",
                "ryw_waits",
                "ryw_scope",
                "ryw_fallbacks",
                "ryw_writes_in_flight",
                "retries",
                "read_resends",
                "failovers",
            ],
        ),
    ]
}

#[tokio::test]
async fn show_columns_match_pgbouncer_1_24() {
    let db = fresh_db("admcols");
    let p = with_admin(&db, &[(&db, &["pool_size = 2"])]).start().await;
    // A client and a server connection, so every table has rows.
    let c = p.connect(&db).await;
    assert_eq!(simple_one(&c, "select 1").await, "1");
    let admin = console(&p, &db).await;

    let mut wrong = Vec::new();
    for (cmd, want) in expected_columns() {
        let t = show(&admin, cmd).await;
        if t.columns != strings(&want) {
            wrong.push(format!("{cmd}:\n  want {want:?}\n  got  {:?}", t.columns));
        }
    }
    // SHOW REPLICAS is SHOW HOSTS.
    let hosts = show(&admin, "SHOW HOSTS").await;
    assert_eq!(show(&admin, "SHOW REPLICAS").await.columns, hosts.columns);
    assert!(hosts.rows_where(&[("database", &db.name)]).len() == 1, "{hosts:#?}");
    assert!(wrong.is_empty(), "column lists differ from PgBouncer 1.24:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn show_lists_totals_and_state_rows_match_pgbouncer() {
    let db = fresh_db("admrows");
    let p = with_admin(&db, &[(&db, &[])]).start().await;
    let admin = console(&p, &db).await;

    let lists = show(&admin, "SHOW LISTS").await;
    assert_eq!(
        lists.first_column(),
        strings(&[
            "databases",
            "users",
            "peers",
            "pools",
            "peer_pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending",
        ])
    );
    // Every value is a number (pgbouncer_exporter parses each one).
    for r in lists.rows() {
        r.int("items");
    }
    assert!(lists.row_where(&[("list", "used_clients")]).int("items") >= 1, "{lists:#?}");

    let names = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
    ];
    let want: Vec<String> =
        ["total_", "avg_"].iter().flat_map(|prefix| names.iter().map(move |n| format!("{prefix}{n}"))).collect();
    assert_eq!(show(&admin, "SHOW TOTALS").await.first_column(), want);

    let state = show(&admin, "SHOW STATE").await;
    assert_eq!(state.first_column(), strings(&["active", "paused", "suspended"]));
    let yes: Vec<&str> = state.rows().filter(|r| r.get("value") == Some("yes")).map(|r| r.text("key")).collect();
    assert_eq!(yes, ["active"], "{state:#?}");

    let version = show(&admin, "SHOW VERSION").await;
    assert_eq!(version.rows.len(), 1, "{version:#?}");
}

#[tokio::test]
async fn commands_are_case_insensitive_with_optional_semicolon() {
    let db = fresh_db("admcase");
    let p = with_admin(&db, &[(&db, &[])]).start().await;
    let admin = console(&p, &db).await;
    let want = show(&admin, "SHOW POOLS").await.columns;
    assert_eq!(want.len(), 18, "PgBouncer's 17 columns and cl_pinned");
    for cmd in ["show pools", "SHOW POOLS;", "Show Pools ;", "  sHoW   pOoLs  "] {
        let t = show(&admin, cmd).await;
        assert_eq!(t.columns, want, "{cmd}");
        assert!(t.rows_where(&[("database", CONSOLE)]).len() == 1, "{cmd}: {t:#?}");
    }
    assert_eq!(show(&admin, "show stats_totals;").await.columns[2], "xact_count");
    assert_eq!(show(&admin, "show databases").await.columns[0], "name");
}

/// Reads one message, within 5 s.
async fn read_msg(s: &mut TcpStream) -> Msg {
    read_msg_within(s, Duration::from_secs(5)).await.expect("pgsluice closed the connection")
}

/// (name, type OID) of each RowDescription field.
fn row_description(m: &Msg) -> Vec<(String, u32)> {
    assert_eq!(m.tag, b'T', "not a RowDescription: {m:?}");
    let n = u16::from_be_bytes([m.body[0], m.body[1]]) as usize;
    let mut off = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = off + m.body[off..].iter().position(|&b| b == 0).expect("field name");
        let name = String::from_utf8_lossy(&m.body[off..end]).into_owned();
        off = end + 1;
        let oid = u32::from_be_bytes(m.body[off + 6..off + 10].try_into().unwrap());
        out.push((name, oid));
        off += 18;
    }
    out
}

/// PgBouncer's RowDescription type letters: s/T = text, i = int4, N = numeric.
fn oids(letters: &str) -> Vec<u32> {
    letters
        .chars()
        .map(|c| match c {
            's' | 'T' => 25,
            'i' => 23,
            'q' => 20,
            'N' => 1700,
            other => panic!("type letter {other}"),
        })
        .collect()
}

#[tokio::test]
async fn show_column_types_match_pgbouncer_1_24() {
    // Raw protocol (tokio-postgres does not expose column types): trust authentication (of
    // a user the auth_file names).
    let db = fresh_db("admtypes");
    let p = pooler()
        .general("auth_type = \"trust\"")
        .user(&db.name, &db.password)
        .general(&format!("admin_users = [\"{}\"]", db.name))
        .database_with_login(&db, &["pool_size = 2"])
        .start()
        .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup_packet(PROTOCOL_3_0, &[("user", &db.name), ("database", CONSOLE)])).await.unwrap();
    loop {
        let m = read_msg(&mut s).await;
        assert_ne!(m.tag, b'E', "admin login failed: {}", m.message());
        if m.tag == b'Z' {
            break;
        }
    }
    // Type strings of PgBouncer's admin.c / stats.c RowDescriptions.
    let stats_totals = format!("s{}", "N".repeat(11));
    let cases: Vec<(&str, String)> = vec![
        // PgBouncer's 17, then pgsluice's cl_pinned (int4).
        ("SHOW POOLS", "ssiiiiiiiiiiiiissi".into()),
        ("SHOW STATS", format!("s{}", "N".repeat(22))),
        ("SHOW STATS_TOTALS", stats_totals.clone()),
        ("SHOW STATS_AVERAGES", stats_totals),
        ("SHOW TOTALS", "sN".into()),
        ("SHOW DATABASES", "ssissiiiissiiiiii".into()),
        ("SHOW CLIENTS", "ssssssisiTTiiississiis".into()),
        ("SHOW SERVERS", "ssssssisiTTiiississii".into()),
        ("SHOW CONFIG", "ssss".into()),
        ("SHOW USERS", "ssssiiii".into()),
        ("SHOW LISTS", "si".into()),
        ("SHOW MEM", "siiii".into()),
        ("SHOW VERSION", "s".into()),
        ("SHOW STATE", "ss".into()),
    ];
    let mut wrong = Vec::new();
    for (cmd, letters) in cases {
        s.write_all(&query(cmd)).await.unwrap();
        let mut desc = None;
        loop {
            let m = read_msg(&mut s).await;
            match m.tag {
                b'T' => desc = Some(row_description(&m)),
                b'E' => panic!("{cmd}: {}", m.message()),
                b'C' => assert_eq!(String::from_utf8_lossy(&m.body), "SHOW\0", "{cmd}: command tag"),
                b'Z' => break,
                _ => {}
            }
        }
        let desc = desc.unwrap_or_else(|| panic!("{cmd}: no RowDescription"));
        let want = oids(&letters);
        let got: Vec<u32> = desc.iter().map(|(_, o)| *o).collect();
        if got != want {
            let diff: Vec<String> = desc
                .iter()
                .zip(&want)
                .filter(|((_, g), w)| g != *w)
                .map(|((n, g), w)| format!("{n}: oid {g}, PgBouncer {w}"))
                .collect();
            wrong.push(format!(
                "{cmd}: {}",
                if diff.is_empty() { format!("{got:?} vs {want:?}") } else { diff.join(", ") }
            ));
        }
    }
    assert!(wrong.is_empty(), "column types differ from PgBouncer 1.24:\n{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Values follow what clients do
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_shows_in_pools_and_clients() {
    let db = fresh_db("admwait");
    let p = with_admin(&db, &[(&db, &["pool_size = 1"])]).start().await;
    let admin = console(&p, &db).await;
    let a = connect_named(&p, &db, "client_a").await;
    let b = connect_named(&p, &db, "client_b").await;

    // A holds the only server connection.
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiting = tokio::spawn(async move {
        let r = scalar(&b, "select 2").await;
        (b, r)
    });

    wait_until(Duration::from_secs(5), "B counted as waiting", || async {
        match pool_value(&admin, &db, "cl_waiting").await? {
            n if n >= 1 => Ok(()),
            n => Err(format!("cl_waiting = {n}")),
        }
    })
    .await;
    let pools = pools_table(&admin, &db).await.expect("pool row");
    let r = pools.row_where(&[("database", &db.name), ("user", &db.name)]);
    assert_eq!(r.int("cl_waiting"), 1, "{r:?}");
    assert_eq!(r.int("sv_active"), 1, "{r:?}");
    assert_eq!(r.int("cl_active"), 1, "{r:?}");
    assert_eq!(r.text("pool_mode"), "transaction", "{r:?}");
    let first_wait = r.int("maxwait") * 1_000_000 + r.int("maxwait_us");
    wait_until(Duration::from_secs(5), "maxwait grows while B waits", || async {
        let t = pools_table(&admin, &db).await.ok_or("no pool row")?;
        let r = t.row_where(&[("database", &db.name), ("user", &db.name)]);
        let now = r.int("maxwait") * 1_000_000 + r.int("maxwait_us");
        if now > first_wait {
            Ok(())
        } else {
            Err(format!("maxwait {now} µs, first seen {first_wait} µs"))
        }
    })
    .await;

    let clients = show(&admin, "SHOW CLIENTS").await;
    let ra = clients.row_where(&[("application_name", "client_a")]);
    let rb = clients.row_where(&[("application_name", "client_b")]);
    assert_eq!((ra.text("type"), ra.text("database"), ra.text("user")), ("C", db.name.as_str(), db.name.as_str()));
    assert_eq!(ra.text("state"), "active", "{ra:?}");
    assert_eq!(rb.text("state"), "waiting", "{rb:?}");
    assert_eq!(rb.text("link"), "", "a waiting client has no server: {rb:?}");
    let link = ra.text("link");
    assert!(!link.is_empty(), "A holds a server: {ra:?}");
    let servers = show(&admin, "SHOW SERVERS").await;
    let s = servers.row_where(&[("ptr", link)]);
    assert_eq!((s.text("type"), s.text("database"), s.text("state")), ("S", db.name.as_str(), "active"), "{s:?}");
    assert_eq!(s.text("link"), ra.text("ptr"), "the server links back to A: {s:?}");
    assert_ne!(ra.text("ptr"), rb.text("ptr"));
    assert!(s.int("remote_pid") > 0, "{s:?}");
    // The console's own session is a client too.
    assert_eq!(clients.rows_where(&[("database", CONSOLE)]).len(), 1, "{clients:#?}");

    a.batch_execute("COMMIT").await.unwrap();
    let (_b, r) = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("B served after COMMIT").unwrap();
    assert_eq!(r.unwrap().as_deref(), Some("2"));
    wait_until(Duration::from_secs(5), "cl_waiting back to 0", || async {
        match (pool_value(&admin, &db, "cl_waiting").await?, pool_value(&admin, &db, "sv_active").await?) {
            (0, 0) => Ok(()),
            (w, act) => Err(format!("cl_waiting = {w}, sv_active = {act}")),
        }
    })
    .await;
}

#[tokio::test]
async fn stats_totals_count_each_statement() {
    let db = fresh_db("admstats");
    let p = with_admin(&db, &[(&db, &["pool_size = 2"])]).start().await;
    let admin = console(&p, &db).await;
    let (x0, q0) = xacts_and_queries(&admin, &db).await;

    let c = p.connect(&db).await;
    const N: i64 = 7;
    for i in 0..N {
        assert_eq!(simple_one(&c, &format!("SELECT {i}")).await, i.to_string());
    }
    // One explicit transaction of three requests: 1 transaction, 3 queries.
    for sql in ["BEGIN", "SELECT 1", "COMMIT"] {
        c.simple_query(sql).await.unwrap();
    }
    let (want_x, want_q) = (N + 1, N + 3);
    wait_until(Duration::from_secs(5), "statistics folded in", || async {
        let (x, q) = xacts_and_queries(&admin, &db).await;
        if x - x0 >= want_x && q - q0 >= want_q {
            Ok(())
        } else {
            Err(format!("xact_count +{}, query_count +{}", x - x0, q - q0))
        }
    })
    .await;
    let (x, q) = xacts_and_queries(&admin, &db).await;
    assert_eq!((x - x0, q - q0), (want_x, want_q), "(xact_count, query_count) deltas");

    let stats = show(&admin, "SHOW STATS").await;
    let r = stats.row_where(&[("database", &db.name)]);
    assert_eq!((r.int("total_xact_count"), r.int("total_query_count")), (x, q), "{r:?}");
    assert!(r.int("total_received") > 0 && r.int("total_sent") > 0, "{r:?}");
    let totals = show(&admin, "SHOW STATS_TOTALS").await;
    assert!(totals.row_where(&[("database", &db.name)]).int("server_assignment_count") >= want_x, "{totals:#?}");
}

// ---------------------------------------------------------------------------------------
// Access rights and errors
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_user_in_neither_list_is_refused_at_login() {
    let adm = fresh_db("admrefadm");
    let other = fresh_db("admrefoth");
    let p = with_admin(&adm, &[(&adm, &[]), (&other, &[])]).start().await;
    let e = p.try_connect(&other.name, &other.password, CONSOLE).await.must_fail("a plain user must not get in");
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{e}");
    let m = message(&e);
    assert!(m.contains("not allowed") && m.contains(&other.name), "{m}");
    assert_eq!(e.as_db_error().map(|d| d.severity()), Some("FATAL"), "{e}");
    // The same user still reaches its own database.
    let c = p.connect(&other).await;
    assert_eq!(simple_one(&c, "select 1").await, "1");
}

#[tokio::test]
async fn a_stats_user_may_show_but_not_control() {
    let adm = fresh_db("admstatsadm");
    let st = fresh_db("admstatsusr");
    let p = with_admin(&adm, &[(&adm, &[])])
        .general(&format!("stats_users = [\"{}\"]", st.name))
        .user(&st.name, &st.password)
        .start()
        .await;
    let c = console(&p, &st).await;
    let pools = show(&c, "SHOW POOLS").await;
    assert!(pools.rows_where(&[("database", CONSOLE)]).len() == 1, "{pools:#?}");
    for cmd in ["PAUSE", &format!("PAUSE {}", adm.name), &format!("DISABLE {}", adm.name), "RELOAD"] {
        let (code, msg) = admin_err(&c, cmd).await;
        assert_eq!(code, "42501", "{cmd}: {msg}");
        assert!(msg.contains("admin access needed"), "{cmd}: {msg}");
    }
    // Nothing was paused or disabled, and the session goes on.
    let dbs = show(&c, "SHOW DATABASES").await;
    let r = dbs.row_where(&[("name", &adm.name)]);
    assert_eq!((r.int("paused"), r.int("disabled")), (0, 0), "{r:?}");
    assert_eq!(show(&c, "SHOW VERSION").await.rows.len(), 1);
}

#[tokio::test]
async fn unknown_commands_are_42601_and_the_session_goes_on() {
    let db = fresh_db("admunknown");
    let p = with_admin(&db, &[(&db, &[])]).start().await;
    let admin = console(&p, &db).await;
    for cmd in ["FOO", "SHOW FOO", "SHOW POOLS extra", "SELECT 1"] {
        let (code, msg) = admin_err(&admin, cmd).await;
        assert_eq!(code, "42601", "{cmd}: {msg}");
        assert!(msg.contains("SHOW HELP"), "{cmd}: {msg}");
    }
    assert!(show(&admin, "SHOW POOLS").await.rows_where(&[("database", CONSOLE)]).len() == 1);
}

// ---------------------------------------------------------------------------------------
// PAUSE / RESUME / KILL / DISABLE / ENABLE
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_the_running_transaction_and_resume_releases_the_client() {
    let db = fresh_db("admpause");
    let p = with_admin(&db, &[(&db, &["pool_size = 2"])]).start().await;
    let admin = Arc::new(console(&p, &db).await);
    let watcher = console(&p, &db).await;
    let c = Arc::new(p.connect(&db).await);

    // A transaction is running (its statement sleeps, then it stays open).
    c.batch_execute("BEGIN; SELECT pg_sleep(0.2)").await.unwrap();
    let pause = {
        let (admin, name) = (admin.clone(), db.name.clone());
        tokio::spawn(async move {
            admin.simple_query(&format!("PAUSE {name}")).await.map(|_| Instant::now()).map_err(|e| short(&e))
        })
    };
    wait_until(Duration::from_secs(5), "database marked paused", || async {
        let t = show(&watcher, "SHOW DATABASES").await;
        match t.row_where(&[("name", &db.name)]).int("paused") {
            1 => Ok(()),
            n => Err(format!("paused = {n}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE returned while a transaction was still open");

    // The transaction goes on (its server is held) and ends; then PAUSE returns.
    let commit_sent = Instant::now();
    c.batch_execute("SELECT pg_sleep(0.2); COMMIT").await.expect("the open transaction must be able to finish");
    let paused_at = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE must return once the transaction ended")
        .unwrap()
        .expect("PAUSE");
    assert!(paused_at >= commit_sent, "PAUSE returned before the transaction ended");
    // Its server connections are closed.
    wait_until(Duration::from_secs(5), "servers closed by PAUSE", || async {
        let t = show(&watcher, "SHOW SERVERS").await;
        match t.rows_where(&[("database", &db.name)]).len() {
            0 => Ok(()),
            n => Err(format!("{n} servers")),
        }
    })
    .await;

    // A new query waits while paused.
    let q = {
        let c = c.clone();
        tokio::spawn(async move { scalar(&c, "select 42").await.map_err(|e| short(&e)) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!q.is_finished(), "a query ran on a paused database");
    let dbs = show(&watcher, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db.name)]).int("paused"), 1, "{dbs:#?}");
    wait_until(Duration::from_secs(5), "the held client counted as waiting", || async {
        match pool_value(&watcher, &db, "cl_waiting").await? {
            1 => Ok(()),
            n => Err(format!("cl_waiting = {n}")),
        }
    })
    .await;
    let (code, msg) = admin_err(&watcher, &format!("PAUSE {}", db.name)).await;
    assert_eq!(code, "55000", "second PAUSE: {msg}");

    admin_ok(&admin, &format!("RESUME {}", db.name)).await;
    let v = tokio::time::timeout(Duration::from_secs(5), q).await.expect("query must run after RESUME").unwrap();
    assert_eq!(v.unwrap().as_deref(), Some("42"));
    let dbs = show(&watcher, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db.name)]).int("paused"), 0, "{dbs:#?}");
    let (code, msg) = admin_err(&watcher, &format!("RESUME {}", db.name)).await;
    assert_eq!(code, "55000", "RESUME of a running database: {msg}");
}

#[tokio::test]
async fn pause_of_an_unknown_database_is_3d000() {
    let db = fresh_db("admpauseunk");
    let p = with_admin(&db, &[(&db, &[])]).start().await;
    let admin = console(&p, &db).await;
    let (code, msg) = admin_err(&admin, "PAUSE no_such_db_here").await;
    assert_eq!(code, "3D000", "{msg}");
    assert!(msg.contains("no_such_db_here"), "{msg}");
    let (code, msg) = admin_err(&admin, &format!("PAUSE {CONSOLE}")).await;
    assert!(msg.contains("admin"), "{code} {msg}");
    // Nothing paused: the database still works.
    let c = p.connect(&db).await;
    assert_eq!(simple_one(&c, "select 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_the_clients_of_one_database_only() {
    let db1 = fresh_db("admkill1");
    let db2 = fresh_db("admkill2");
    let p = with_admin(&db1, &[(&db1, &["pool_size = 2"]), (&db2, &["pool_size = 2"])]).start().await;
    let admin = console(&p, &db1).await;
    let c1 = connect_watched(&p.connstr(&db1.name, &db1.password, &db1.name)).await.unwrap();
    let c2 = p.connect(&db2).await;
    assert_eq!(simple_one(&c1.client, "select 1").await, "1");
    assert_eq!(simple_one(&c2, "select 2").await, "2");

    admin_ok(&admin, &format!("KILL {}", db1.name)).await;

    let e = c1.client.simple_query("select 1").await.must_fail("a killed client's query must fail");
    assert!(e.is_closed() || sqlstate(&e).as_deref() == Some("57P01"), "{e}");
    let end = c1.ended(Duration::from_secs(5)).await;
    let end = end.expect("pgsluice must say why it closed the connection");
    assert_eq!(sqlstate(&end).as_deref(), Some("57P01"), "{end}");
    // The other database is untouched.
    assert_eq!(simple_one(&c2, "select 3").await, "3");
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert_eq!(clients.rows_where(&[("database", &db1.name)]).len(), 0, "{clients:#?}");
    assert_eq!(clients.rows_where(&[("database", &db2.name)]).len(), 1, "{clients:#?}");

    // A killed database stays paused: a new client's query waits for RESUME.
    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db1.name)]).int("paused"), 1, "{dbs:#?}");
    assert_eq!(dbs.row_where(&[("name", &db2.name)]).int("paused"), 0, "{dbs:#?}");
    let c3 = p.connect(&db1).await;
    let q = tokio::spawn(async move { scalar(&c3, "select 4").await.map_err(|e| short(&e)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!q.is_finished(), "a query ran on a killed (paused) database");
    admin_ok(&admin, &format!("RESUME {}", db1.name)).await;
    let v = tokio::time::timeout(Duration::from_secs(5), q).await.expect("query must run after RESUME").unwrap();
    assert_eq!(v.unwrap().as_deref(), Some("4"));
    assert_eq!(simple_one(&c2, "select 5").await, "5");
}

#[tokio::test]
async fn disable_refuses_new_logins_until_enable() {
    let db = fresh_db("admdisable");
    let p = with_admin(&db, &[(&db, &[])]).start().await;
    let admin = console(&p, &db).await;
    let c = p.connect(&db).await;
    assert_eq!(simple_one(&c, "select 1").await, "1");

    admin_ok(&admin, &format!("DISABLE {}", db.name)).await;
    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("login to a disabled database");
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e}");
    assert!(message(&e).contains("disabled"), "{e}");
    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db.name)]).int("disabled"), 1, "{dbs:#?}");
    // Existing clients go on.
    assert_eq!(simple_one(&c, "select 2").await, "2");

    admin_ok(&admin, &format!("ENABLE {}", db.name)).await;
    let c2 = p.connect(&db).await;
    assert_eq!(simple_one(&c2, "select 3").await, "3");
    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db.name)]).int("disabled"), 0, "{dbs:#?}");
    let (code, msg) = admin_err(&admin, "DISABLE").await;
    assert!(msg.contains("database"), "{code} {msg}");
    let (code, msg) = admin_err(&admin, "ENABLE no_such_db_here").await;
    assert_eq!(code, "3D000", "{msg}");
}

// ---------------------------------------------------------------------------------------
// RELOAD and SET
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_resizes_a_busy_pool_without_failing_queries() {
    let db = fresh_db("admresize");
    let builder = |size: u32| with_admin(&db, &[(&db, &[&format!("pool_size = {size}")])]);
    let p = Arc::new(builder(4).start().await);
    let admin = connect_watched(&p.connstr(&db.name, &db.password, CONSOLE)).await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (p, db, stop) = (p.clone(), db.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = p.connect(&db).await;
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.simple_query("select pg_sleep(0.01)").await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(short(&e)),
                }
            }
            (ok, failed)
        }));
    }
    wait_until(Duration::from_secs(5), "4 servers busy", || async {
        match pool_value(&admin.client, &db, "sv_active").await? {
            n if n >= 3 => Ok(()),
            n => Err(format!("sv_active = {n}")),
        }
    })
    .await;

    std::fs::write(config_path(&p), builder(2).config_text()).unwrap();
    admin_ok(&admin.client, "RELOAD").await;
    let notices = admin.notices();
    assert!(
        notices.iter().any(|n| n.contains("resized") && n.contains(&db.name)),
        "RELOAD must report the resized pool: {notices:?}"
    );
    let dbs = show(&admin.client, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db.name)]).int("pool_size"), 2, "{dbs:#?}");

    let open = |t: &Table| {
        let r = t.row_where(&[("database", &db.name), ("user", &db.name)]);
        ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"].iter().map(|c| r.int(c)).sum::<i64>()
    };
    wait_until(Duration::from_secs(5), "pool shrunk to 2", || async {
        let t = pools_table(&admin.client, &db).await.ok_or("no pool row")?;
        match open(&t) {
            n if n <= 2 => Ok(()),
            n => Err(format!("{n} servers open")),
        }
    })
    .await;
    for _ in 0..10 {
        let t = pools_table(&admin.client, &db).await.expect("pool row");
        let r = t.row_where(&[("database", &db.name), ("user", &db.name)]);
        assert!(r.int("sv_active") <= 2 && open(&t) <= 2, "over the new size: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        let (ok, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "queries failed across the reload: {failed:?}");
        total += ok;
    }
    assert!(total > 0);
    let backends: i64 =
        su_sql("postgres", &format!("select count(*) from pg_stat_activity where usename = '{}'", db.name))
            .parse()
            .unwrap();
    assert!(backends <= 2, "{backends} server connections after shrinking the pool to 2");
}

#[tokio::test]
async fn reload_adds_a_database() {
    let db1 = fresh_db("admadd1");
    let db2 = fresh_db("admadd2");
    let p = with_admin(&db1, &[(&db1, &[])]).user(&db2.name, &db2.password).start().await;
    let admin = connect_watched(&p.connstr(&db1.name, &db1.password, CONSOLE)).await.unwrap();
    let e = p.try_connect(&db2.name, &db2.password, &db2.name).await.must_fail("not served yet");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");

    let both = with_admin(&db1, &[(&db1, &[]), (&db2, &["pool_size = 3"])]);
    std::fs::write(config_path(&p), both.config_text()).unwrap();
    admin_ok(&admin.client, "RELOAD").await;
    let notices = admin.notices();
    assert!(notices.iter().any(|n| n.contains("added") && n.contains(&db2.name)), "{notices:?}");

    let c2 = p.connect(&db2).await;
    assert_eq!(simple_one(&c2, "select current_database()").await, db2.name);
    let dbs = show(&admin.client, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db2.name)]).int("pool_size"), 3, "{dbs:#?}");
    let c1 = p.connect(&db1).await;
    assert_eq!(simple_one(&c1, "select 1").await, "1");
}

#[tokio::test]
async fn reload_of_an_invalid_file_keeps_the_running_config() {
    let db = fresh_db("admbadreload");
    let good = with_admin(&db, &[(&db, &["pool_size = 3"])]);
    let good_text = good.config_text();
    let p = good.start().await;
    let admin = console(&p, &db).await;
    let c = p.connect(&db).await;
    assert_eq!(simple_one(&c, "select 1").await, "1");
    let config_before = show(&admin, "SHOW CONFIG").await;
    let path = config_path(&p);

    // An unknown setting, then broken TOML.
    let unknown = good_text.replacen("[general]\n", "[general]\nbogus_setting_xyz = 1\n", 1);
    std::fs::write(&path, unknown).unwrap();
    let (code, msg) = admin_err(&admin, "RELOAD").await;
    assert_eq!(code, "F0000", "{msg}");
    assert!(msg.contains("RELOAD failed") && msg.contains("bogus_setting_xyz"), "{msg}");

    std::fs::write(&path, format!("{good_text}\n[databases.broken\nhosts = \n")).unwrap();
    let (code, msg) = admin_err(&admin, "RELOAD").await;
    assert_eq!(code, "F0000", "{msg}");
    assert!(msg.starts_with("RELOAD failed") && msg.len() > "RELOAD failed: ".len(), "{msg}");

    // Nothing changed.
    assert_eq!(simple_one(&c, "select 2").await, "2");
    let c2 = p.connect(&db).await;
    assert_eq!(simple_one(&c2, "select 3").await, "3");
    assert_eq!(show(&admin, "SHOW CONFIG").await, config_before);
    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.row_where(&[("name", &db.name)]).int("pool_size"), 3, "{dbs:#?}");

    // A fixed file reloads.
    std::fs::write(&path, &good_text).unwrap();
    admin_ok(&admin, "RELOAD").await;
}

#[tokio::test]
async fn reload_removing_a_database_ends_its_idle_clients_with_3d000() {
    let db1 = fresh_db("admrm1");
    let db2 = fresh_db("admrm2");
    // A short query_wait_timeout bounds the test if the client is left waiting for a server.
    let config = |dbs: &[(&TestDb, &[&str])]| with_admin(&db1, dbs).general("query_wait_timeout = \"3s\"");
    let p = config(&[(&db1, &[]), (&db2, &[])]).start().await;
    let admin = console(&p, &db1).await;
    let c2 = p.connect(&db2).await;
    assert_eq!(simple_one(&c2, "select 1").await, "1");
    let c1 = p.connect(&db1).await;

    std::fs::write(config_path(&p), config(&[(&db1, &[])]).config_text()).unwrap();
    admin_ok(&admin, "RELOAD").await;

    let e = tokio::time::timeout(Duration::from_secs(8), c2.simple_query("select 2"))
        .await
        .expect("the removed database's client must get an answer")
        .must_fail("the database was removed");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{}", short(&e));
    assert_eq!(e.as_db_error().map(|d| d.severity()), Some("FATAL"), "{e}");
    let e = p.try_connect(&db2.name, &db2.password, &db2.name).await.must_fail("no longer served");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");
    assert_eq!(simple_one(&c1, "select 3").await, "3");
    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.rows_where(&[("name", &db2.name)]).len(), 0, "{dbs:#?}");
}

#[tokio::test]
async fn reload_replacing_a_pool_keeps_its_idle_clients_working() {
    // A changed server-side setting (here query_wait_timeout) replaces the pools: clients
    // idle at the time move to the new pool at their next request.
    let db = fresh_db("admreplace");
    let config =
        |wait: &str| with_admin(&db, &[(&db, &["pool_size = 2"])]).general(&format!("query_wait_timeout = \"{wait}\""));
    let p = config("3s").start().await;
    let admin = connect_watched(&p.connstr(&db.name, &db.password, CONSOLE)).await.unwrap();
    let c = p.connect(&db).await;
    let pid_before = simple_one(&c, "select pg_backend_pid()").await;

    std::fs::write(config_path(&p), config("4s").config_text()).unwrap();
    admin_ok(&admin.client, "RELOAD").await;
    let notices = admin.notices();
    assert!(notices.iter().any(|n| n.contains("replaced") && n.contains(&db.name)), "{notices:?}");

    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(8), scalar(&c, "select pg_backend_pid()"))
        .await
        .expect("the idle client's next query must get an answer");
    let pid_after = r.unwrap_or_else(|e| {
        panic!("idle client's query after RELOAD failed after {:?}: {}", started.elapsed(), short(&e))
    });
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_ne!(pid_after.as_deref(), Some(pid_before.as_str()), "the old pool's server must not be reused");
    let c2 = p.connect(&db).await;
    assert_eq!(simple_one(&c2, "select 1").await, "1");
}

#[tokio::test]
async fn set_changes_a_setting_and_refuses_bad_ones() {
    let db = fresh_db("admset");
    let p = with_admin(&db, &[(&db, &[])]).start().await;
    let admin = console(&p, &db).await;
    let config_value = |t: &Table, key: &str| t.row_where(&[("key", key)]).get("value").map(str::to_string);

    admin_ok(&admin, "SET default_pool_size = 7").await;
    let cfg = show(&admin, "SHOW CONFIG").await;
    assert_eq!(config_value(&cfg, "default_pool_size").as_deref(), Some("7"), "{cfg:#?}");
    assert_eq!(cfg.row_where(&[("key", "default_pool_size")]).text("changeable"), "yes");

    let (code, msg) = admin_err(&admin, "SET listen_port = 1").await;
    assert_eq!(code, "22023", "{msg}");
    assert!(msg.contains("listen_port"), "{msg}");
    assert_eq!(cfg.row_where(&[("key", "listen_port")]).text("changeable"), "no");
    let (code, msg) = admin_err(&admin, "SET nosuch = 1").await;
    assert!(!code.is_empty() && msg.contains("nosuch"), "{code} {msg}");
    let (code, msg) = admin_err(&admin, "SET default_pool_size = abc").await;
    assert_eq!(code, "22023", "{msg}");

    let after = show(&admin, "SHOW CONFIG").await;
    assert_eq!(config_value(&after, "default_pool_size").as_deref(), Some("7"));
    assert_eq!(config_value(&after, "listen_port"), config_value(&cfg, "listen_port"));
    assert_eq!(after.rows_where(&[("key", "nosuch")]).len(), 0);
    let c = p.connect(&db).await;
    assert_eq!(simple_one(&c, "select 1").await, "1");
}

// ---------------------------------------------------------------------------------------
// RECONNECT / WAIT_CLOSE
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_then_wait_close_replaces_the_server_connections() {
    let db = fresh_db("admreconnect");
    let p = with_admin(&db, &[(&db, &["pool_size = 2"])]).start().await;
    let admin = Arc::new(console(&p, &db).await);
    let watcher = console(&p, &db).await;
    let a = connect_named(&p, &db, "holder").await;
    let b = connect_named(&p, &db, "idler").await;

    // Two servers: A holds one in a transaction, B's is idle.
    a.batch_execute("BEGIN").await.unwrap();
    let pid_a = simple_one(&a, "select pg_backend_pid()").await;
    let pid_b = simple_one(&b, "select pg_backend_pid()").await;
    assert_ne!(pid_a, pid_b);
    let before = show(&watcher, "SHOW SERVERS").await;
    let old: Vec<(String, String)> = before
        .rows_where(&[("database", &db.name)])
        .into_iter()
        .map(|r| (r.text("ptr").to_string(), r.text("remote_pid").to_string()))
        .collect();
    assert_eq!(old.len(), 2, "{before:#?}");
    for r in before.rows_where(&[("database", &db.name)]) {
        assert_eq!(r.int("close_needed"), 0, "{r:?}");
    }

    admin_ok(&admin, &format!("RECONNECT {}", db.name)).await;
    let after = show(&watcher, "SHOW SERVERS").await;
    for (ptr, _) in &old {
        if let Some(r) = after.rows_where(&[("ptr", ptr)]).first().copied() {
            assert_eq!(r.int("close_needed"), 1, "RECONNECT must mark every old server: {r:?}");
        }
    }
    assert!(after.rows_where(&[("remote_pid", &pid_a)]).len() == 1, "A's server stays while in use: {after:#?}");

    let wait = {
        let (admin, name) = (admin.clone(), db.name.clone());
        tokio::spawn(async move { admin.simple_query(&format!("WAIT_CLOSE {name}")).await.map_err(|e| short(&e)) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!wait.is_finished(), "WAIT_CLOSE returned while A still holds a marked server");
    assert_eq!(simple_one(&a, "select 'still in the transaction'").await, "still in the transaction");
    a.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("WAIT_CLOSE must return once the marked servers closed")
        .unwrap()
        .expect("WAIT_CLOSE");

    let gone = show(&watcher, "SHOW SERVERS").await;
    for (ptr, pid) in &old {
        assert_eq!(gone.rows_where(&[("ptr", ptr)]).len(), 0, "server {ptr} still listed: {gone:#?}");
        assert_eq!(gone.rows_where(&[("remote_pid", pid)]).len(), 0, "backend {pid} still listed: {gone:#?}");
    }
    // Queries go on, on new server connections.
    let new_a = simple_one(&a, "select pg_backend_pid()").await;
    let new_b = simple_one(&b, "select pg_backend_pid()").await;
    for pid in [&new_a, &new_b] {
        assert!(old.iter().all(|(_, o)| o != pid), "backend {pid} should have been replaced");
    }
    let (code, msg) = admin_err(&watcher, "RECONNECT no_such_db_here").await;
    assert_eq!(code, "3D000", "{msg}");
}
