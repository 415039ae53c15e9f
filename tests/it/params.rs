//! Tracked session parameters: the built-in six and `track_extra_parameters`, set in the
//! startup packet, inside `options` (`-c name=value`) or (for reported ones) with `SET`,
//! follow each client across the server connections of a transaction-mode pool; clients
//! that did not set an unreported parameter get the server default; `options` items that are
//! not tracked are refused unless ignored.
//!
//! Statements outside explicit transactions use the simple protocol (named prepared
//! statements in transaction mode are another issue's work).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::harness::*;

/// Three schemas with a same-named table `t` whose single row names its schema, so the
/// data proves which `search_path` a query ran under.
fn create_schemas(db: &TestDb) {
    let role = &db.name;
    su_sql(
        &db.name,
        &format!(
            "create schema sa; create schema sb;
             create table sa.t(v text); insert into sa.t values ('from sa');
             create table sb.t(v text); insert into sb.t values ('from sb');
             create table public.t(v text); insert into public.t values ('from public');
             grant usage on schema sa, sb to \"{role}\";
             grant select on all tables in schema sa, sb, public to \"{role}\";"
        ),
    );
}

/// Connects through the pooler with an `options` string and an `application_name`.
async fn connect_with(p: &Pooler, db: &TestDb, options: &str, app: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(p.port())
        .user(&db.name)
        .password(&db.password)
        .dbname(&db.name)
        .connect_timeout(Duration::from_secs(10));
    if !options.is_empty() {
        cfg.options(options);
    }
    if !app.is_empty() {
        cfg.application_name(app);
    }
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The first row of a simple query, all columns as text.
async fn row(c: &Client, sql: &str) -> Vec<String> {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_string()).collect()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// What a client sees of its session: TimeZone, search_path, application_name, the row of
/// `t`, statement_timeout.
const SEEN: &str = "select current_setting('TimeZone'), current_setting('search_path'), \
                    current_setting('application_name'), (select v from t), current_setting('statement_timeout')";

#[tokio::test]
async fn tracked_parameters_follow_each_client_through_one_server() {
    let db = fresh_db("params_follow");
    create_schemas(&db);
    let p = pooler()
        .general("track_extra_parameters = [\"search_path\", \"Statement_Timeout\", \"default_transaction_read_only\"]")
        .database(&db, &["pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let a = connect_with(&p, &db, "-c search_path=sa -c TimeZone=Asia/Tokyo -c statement_timeout=1234ms", "client-a")
        .await
        .expect("client a");
    let b =
        connect_with(&p, &db, "--search-path=sb --statement-timeout=0 -c default_transaction_read_only=on", "client-b")
            .await
            .expect("client b");
    // A reported parameter changed with SET follows its client.
    b.simple_query("set TimeZone = 'America/New_York'").await.unwrap();
    let pid_a = simple_one(&a, "select pg_backend_pid()").await;
    assert_eq!(simple_one(&b, "select pg_backend_pid()").await, pid_a, "pool_size = 1: one server connection");

    let want_a = ["Asia/Tokyo", "sa", "client-a", "from sa", "1234ms"];
    let want_b = ["America/New_York", "sb", "client-b", "from sb", "0"];
    for round in 0..20 {
        assert_eq!(row(&a, SEEN).await, want_a, "client a, round {round}");
        assert_eq!(row(&b, SEEN).await, want_b, "client b, round {round}");
        assert_eq!(simple_one(&a, "show TimeZone").await, "Asia/Tokyo", "round {round}");
        assert_eq!(simple_one(&b, "show default_transaction_read_only").await, "on", "round {round}");
        assert_eq!(simple_one(&a, "show default_transaction_read_only").await, "off", "round {round}");
        // Inside an explicit transaction too.
        let rows = b.simple_query("begin; select v from t; show search_path; commit").await.unwrap();
        assert_eq!(crate::harness::rows(&rows), ["from sb", "sb"], "round {round}");
    }
    // A's SET of a reported parameter later on follows A as well.
    a.simple_query("set TimeZone = 'Europe/Paris'").await.unwrap();
    for round in 0..5 {
        assert_eq!(simple_one(&b, "show TimeZone").await, "America/New_York", "round {round}");
        assert_eq!(simple_one(&a, "show TimeZone").await, "Europe/Paris", "round {round}");
    }
}

#[tokio::test]
async fn clients_without_an_extra_parameter_get_the_server_default() {
    let db = fresh_db("params_default");
    create_schemas(&db);
    let p = pooler()
        .general("track_extra_parameters = [\"search_path\", \"statement_timeout\"]")
        .database(&db, &["pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let a = connect_with(&p, &db, "-c search_path=sa -c statement_timeout=1234ms", "").await.expect("client a");
    let b = connect_with(&p, &db, "", "").await.expect("client b");
    let default_path = "\"$user\", public";
    for round in 0..10 {
        let seen_a = row(&a, SEEN).await;
        assert_eq!(
            (seen_a[1].as_str(), seen_a[3].as_str(), seen_a[4].as_str()),
            ("sa", "from sa", "1234ms"),
            "a, round {round}"
        );
        let seen_b = row(&b, SEEN).await;
        assert_eq!(
            (seen_b[1].as_str(), seen_b[3].as_str(), seen_b[4].as_str()),
            (default_path, "from public", "0"),
            "b must get the server default after a, round {round}"
        );
    }
    // A client arriving later, with nothing set, as well.
    let a_again = row(&a, SEEN).await;
    assert_eq!(a_again[1], "sa");
    let c = connect_with(&p, &db, "", "").await.expect("client c");
    assert_eq!(simple_one(&c, "show search_path").await, default_path);
}

#[tokio::test]
async fn session_mode_reapplies_unreported_parameters_after_the_reset_query() {
    let db = fresh_db("params_session");
    create_schemas(&db);
    let p = pooler()
        .general("pool_mode = \"session\"")
        .general("track_extra_parameters = [\"search_path\"]")
        .database(&db, &["pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    // The same settings each time, so the clients share one interned parameter set, and the
    // single server connection goes through DISCARD ALL between them.
    for round in 0..3 {
        for client in ["a1", "a2"] {
            let a = connect_with(&p, &db, "-c search_path=sa", "").await.expect("client a");
            assert_eq!(simple_one(&a, "select v from t").await, "from sa", "{client}, round {round}");
        }
        let b = connect_with(&p, &db, "", "").await.expect("client b");
        assert_eq!(simple_one(&b, "select v from t").await, "from public", "round {round}");
        drop(b);
    }
}

#[tokio::test]
async fn options_items_must_be_tracked_unless_ignored() {
    let db = fresh_db("params_options");
    create_schemas(&db);
    let strict = pooler()
        .general("track_extra_parameters = [\"search_path\"]")
        .database(&db, &[])
        .user(&db.name, &db.password)
        .start()
        .await;
    let e =
        connect_with(&strict, &db, "-c search_path=sa -c work_mem=64MB", "").await.must_fail("work_mem is not tracked");
    assert_eq!(sqlstate(&e).as_deref(), Some("08P01"), "{e}");
    assert_eq!(message(&e), "unsupported startup parameter in options: work_mem");
    let e = connect_with(&strict, &db, "-B 100", "").await.must_fail("-B is not a setting");
    assert_eq!(sqlstate(&e).as_deref(), Some("08P01"), "{e}");
    assert!(message(&e).contains("only '-c config=val' and '--config=val' are allowed"), "{e}");
    // Escaped spaces reach the value, as in PostgreSQL; the value is the raw list.
    let c = connect_with(&strict, &db, r"-c search_path=sb,\ sa", "").await.expect("escaped options");
    assert_eq!(simple_one(&c, "show search_path").await, "sb, sa");
    assert_eq!(simple_one(&c, "select v from t").await, "from sb");

    let lenient = pooler()
        .general("track_extra_parameters = [\"search_path\"]")
        .general("ignore_startup_parameters = [\"extra_float_digits\", \"options\"]")
        .database(&db, &[])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c =
        connect_with(&lenient, &db, "-c work_mem=64MB -B 100 -c search_path=sa", "").await.expect("options ignored");
    assert_eq!(simple_one(&c, "show work_mem").await, "4MB", "untracked items are ignored, not applied");
    assert_eq!(simple_one(&c, "select v from t").await, "from sa", "tracked items still apply");

    let by_name = pooler()
        .general("ignore_startup_parameters = [\"extra_float_digits\", \"work_mem\"]")
        .database(&db, &[])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = connect_with(&by_name, &db, "-c work_mem=64MB -c TimeZone=Asia/Tokyo", "").await.expect("work_mem ignored");
    assert_eq!(simple_one(&c, "show work_mem").await, "4MB");
    assert_eq!(simple_one(&c, "show TimeZone").await, "Asia/Tokyo");
    let e = connect_with(&by_name, &db, "-c search_path=sa", "").await.must_fail("search_path is not tracked here");
    assert_eq!(message(&e), "unsupported startup parameter in options: search_path");
}

// === raw startup packets (parameters of their own, the login reply) ===

/// Reads one backend message: tag and body.
async fn read_msg(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let m = read_msg_within(s, Duration::from_secs(10)).await.expect("pgsluice closed the connection");
    (m.tag, m.body)
}

/// The NUL-separated strings of a message body.
fn cstrings(body: &[u8]) -> Vec<String> {
    body.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Logs in with raw startup parameters (trust auth) and returns the socket and the
/// ParameterStatus values of the login reply.
async fn raw_login(p: &Pooler, params: &[(&str, &str)]) -> (TcpStream, Vec<(String, String)>) {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup_packet(PROTOCOL_3_0, params)).await.unwrap();
    let mut status = Vec::new();
    loop {
        match read_msg(&mut s).await {
            (b'S', body) => {
                let kv = cstrings(&body);
                status.push((kv[0].clone(), kv.get(1).cloned().unwrap_or_default()));
            }
            (b'E', body) => panic!("login failed: {:?}", cstrings(&body)),
            (b'Z', _) => return (s, status),
            _ => {}
        }
    }
}

/// Runs a simple query on a raw socket; the first column of each DataRow.
async fn raw_query(s: &mut TcpStream, sql: &str) -> Vec<String> {
    s.write_all(&query(sql)).await.unwrap();
    let mut out = Vec::new();
    loop {
        match read_msg(s).await {
            (b'D', body) => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                out.push(String::from_utf8_lossy(&body[6..6 + len.max(0) as usize]).into_owned());
            }
            (b'E', body) => panic!("{sql}: {:?}", cstrings(&body)),
            (b'Z', _) => return out,
            _ => {}
        }
    }
}

/// pgsluice for the raw-protocol tests: `db` (schemas `sa`/`sb` made) on one server
/// connection, any user name, `search_path` tracked.
async fn raw_pooler(db: &TestDb) -> Pooler {
    create_schemas(db);
    pooler()
        .general("auth_type = \"any\"")
        .general("track_extra_parameters = [\"search_path\"]")
        .database_with_login(db, &["pool_size = 1"])
        .start()
        .await
}

#[tokio::test]
async fn startup_parameters_win_over_options_and_show_in_the_login_reply() {
    let db = fresh_db("params_raw");
    let p = raw_pooler(&db).await;
    let (mut s, status) = raw_login(
        &p,
        &[
            ("user", &db.name),
            ("database", &db.name),
            ("options", "-c search_path=sa -c TimeZone=Asia/Tokyo -c DateStyle=German"),
            ("SEARCH_PATH", "sb"),
            ("datestyle", "SQL, DMY"),
        ],
    )
    .await;
    let reported = |k: &str| status.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(reported("TimeZone").as_deref(), Some("Asia/Tokyo"), "{status:?}");
    assert_eq!(reported("DateStyle").as_deref(), Some("SQL, DMY"), "{status:?}");
    // PostgreSQL 18 reports search_path; earlier versions do not.
    if let Some(v) = reported("search_path") {
        assert_eq!(v, "sb");
    }
    for _ in 0..3 {
        assert_eq!(raw_query(&mut s, "select v from t").await, ["from sb"]);
        assert_eq!(raw_query(&mut s, "show DateStyle").await, ["SQL, DMY"]);
        assert_eq!(raw_query(&mut s, "show TimeZone").await, ["Asia/Tokyo"]);
        // Another client on the same server connection, with its own values.
        let (mut o, _) = raw_login(&p, &[("user", &db.name), ("database", &db.name), ("search_path", "sa")]).await;
        assert_eq!(raw_query(&mut o, "select v from t").await, ["from sa"]);
        assert_eq!(raw_query(&mut o, "show DateStyle").await, ["ISO, MDY"]);
    }
}

// === RESET: back to the client's startup values ===

/// What a request's answer held, up to its ReadyForQuery.
#[derive(Debug, Default)]
struct Answer {
    /// First column of each DataRow.
    rows: Vec<String>,
    /// ParameterStatus messages, in order.
    status: Vec<(String, String)>,
    /// SQLSTATEs of the ErrorResponses.
    errors: Vec<String>,
    /// Status byte of the ReadyForQuery that ended it (ParameterStatus after it would count
    /// for the next request).
    ready: u8,
}

impl Answer {
    /// The last value reported for `name`.
    fn reported(&self, name: &str) -> Option<&str> {
        self.status.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `bytes` (one request: a Query, or an extended batch ending with Sync) and reads the
/// answer up to its ReadyForQuery.
async fn raw_request(s: &mut TcpStream, bytes: &[u8]) -> Answer {
    s.write_all(bytes).await.unwrap();
    let mut a = Answer::default();
    loop {
        match read_msg(s).await {
            (b'D', body) => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                a.rows.push(String::from_utf8_lossy(&body[6..6 + len.max(0) as usize]).into_owned());
            }
            (b'S', body) => {
                let kv = cstrings(&body);
                a.status.push((kv[0].clone(), kv.get(1).cloned().unwrap_or_default()));
            }
            (b'E', body) => {
                let code = Msg { tag: b'E', body }.code();
                a.errors.push(code);
            }
            (b'Z', body) => {
                a.ready = body[0];
                return a;
            }
            _ => {}
        }
    }
}

/// A simple query through [`raw_request`]; panics on an error.
async fn ok(s: &mut TcpStream, sql: &str) -> Answer {
    let a = raw_request(s, &query(sql)).await;
    assert!(a.errors.is_empty(), "{sql}: {:?}", a.errors);
    a
}

#[tokio::test]
async fn reset_returns_to_the_values_the_client_chose_at_startup() {
    let db = fresh_db("params_reset");
    let p = raw_pooler(&db).await;
    // DateStyle as a startup parameter, TimeZone and search_path inside `options`.
    let (mut s, _) = raw_login(
        &p,
        &[
            ("user", &db.name),
            ("database", &db.name),
            ("DateStyle", "SQL, DMY"),
            ("options", "-c TimeZone=Asia/Tokyo -c search_path=sa"),
        ],
    )
    .await;
    // Another client of the same server connection that chose nothing.
    let (mut o, _) = raw_login(&p, &[("user", &db.name), ("database", &db.name)]).await;
    let (date, zone) = ("SQL, DMY", "Asia/Tokyo");

    for round in 0..3 {
        // In one Query: PostgreSQL reports a parameter at the end of the Query, and only if
        // it changed (it did not, for the client).
        let a = ok(&mut s, "SET DateStyle = ISO; RESET DateStyle").await;
        assert_eq!(a.reported("DateStyle").unwrap_or(date), date, "round {round}: {a:?}");
        assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, [date]);
        // The other client is unaffected, and its RESET gives the server default.
        assert_eq!(ok(&mut o, "SHOW DateStyle").await.rows, ["ISO, MDY"]);
        assert_ne!(ok(&mut o, "SHOW TimeZone").await.rows, [zone]);
        ok(&mut o, "SET DateStyle = German").await;
        let a = ok(&mut o, "RESET DateStyle").await;
        assert_eq!(a.reported("DateStyle"), Some("ISO, MDY"), "{a:?}");
        assert_eq!(ok(&mut o, "SHOW DateStyle").await.rows, ["ISO, MDY"]);

        // In separate Queries; SET … TO DEFAULT too.
        assert_eq!(ok(&mut s, "SET DateStyle = ISO").await.reported("DateStyle"), Some("ISO, DMY"));
        ok(&mut s, "SET TimeZone = 'UTC'").await;
        let a = ok(&mut s, "RESET DateStyle").await;
        assert_eq!(a.reported("DateStyle"), Some(date), "{a:?}");
        let a = ok(&mut s, "SET TimeZone TO DEFAULT").await;
        assert_eq!(a.reported("TimeZone"), Some(zone), "{a:?}");
        assert_eq!(
            ok(&mut s, "SELECT current_setting('DateStyle') || ' ' || current_setting('TimeZone')").await.rows,
            [format!("{date} {zone}")]
        );

        // RESET ALL, and DISCARD ALL, for both; an unreported tracked parameter too.
        for reset in ["RESET ALL", "DISCARD ALL"] {
            ok(&mut s, "SET DateStyle = ISO; SET TimeZone = 'UTC'").await;
            let a = ok(&mut s, reset).await;
            assert_eq!((a.reported("DateStyle"), a.reported("TimeZone")), (Some(date), Some(zone)), "{reset}: {a:?}");
            assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, [date], "{reset}");
            assert_eq!(ok(&mut s, "SHOW TimeZone").await.rows, [zone], "{reset}");
            assert_eq!(ok(&mut s, "SELECT v FROM t").await.rows, ["from sa"], "{reset}: search_path");
            assert_eq!(ok(&mut o, "SHOW DateStyle").await.rows, ["ISO, MDY"], "{reset}");
            assert_eq!(ok(&mut o, "SELECT v FROM t").await.rows, ["from public"], "{reset}");
        }
        // A SET after the RESET in the same Query wins.
        let a = ok(&mut s, "RESET DateStyle; SET DateStyle = German").await;
        assert_eq!(a.reported("DateStyle"), Some("German, DMY"), "{a:?}");
        assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, ["German, DMY"]);
        ok(&mut s, "RESET DateStyle").await;
    }
}

#[tokio::test]
async fn reset_inside_a_transaction_and_in_the_extended_protocol() {
    let db = fresh_db("params_reset_txn");
    let p = pooler().general("auth_type = \"any\"").database_with_login(&db, &["pool_size = 1"]).start().await;
    let (mut s, _) = raw_login(
        &p,
        &[("user", &db.name), ("database", &db.name), ("DateStyle", "SQL, DMY"), ("options", "-c TimeZone=Asia/Tokyo")],
    )
    .await;
    let (mut o, _) = raw_login(&p, &[("user", &db.name), ("database", &db.name)]).await;
    let date = "SQL, DMY";

    // A statement after the RESET in the same transaction sees the startup value.
    assert_eq!(ok(&mut s, "BEGIN").await.ready, b'T');
    ok(&mut s, "SET DateStyle = ISO; SET TimeZone = 'UTC'").await;
    let a = ok(&mut s, "RESET ALL").await;
    assert_eq!((a.reported("DateStyle"), a.reported("TimeZone"), a.ready), (Some(date), Some("Asia/Tokyo"), b'T'));
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, [date]);
    assert_eq!(ok(&mut s, "SELECT current_setting('TimeZone')").await.rows, ["Asia/Tokyo"]);
    assert_eq!(ok(&mut s, "COMMIT").await.ready, b'I');
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, [date]);
    assert_eq!(ok(&mut o, "SHOW DateStyle").await.rows, ["ISO, MDY"]);

    // A rollback undoes a RESET, as in PostgreSQL.
    ok(&mut s, "SET DateStyle = ISO").await;
    ok(&mut s, "BEGIN").await;
    assert_eq!(ok(&mut s, "RESET DateStyle").await.reported("DateStyle"), Some(date));
    let a = ok(&mut s, "ROLLBACK").await;
    assert_eq!(a.reported("DateStyle"), Some("ISO, DMY"), "{a:?}");
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, ["ISO, DMY"]);

    // A RESET in a failed transaction fails once, and changes nothing.
    ok(&mut s, "BEGIN").await;
    assert_eq!(raw_request(&mut s, &query("SELECT 1/0")).await.errors, ["22012"]);
    let a = raw_request(&mut s, &query("RESET DateStyle")).await;
    assert_eq!((a.errors.as_slice(), a.ready), (&["25P02".to_string()][..], b'E'), "{a:?}");
    ok(&mut s, "ROLLBACK").await;
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, ["ISO, DMY"]);
    // A RESET in a Query that fails outside a transaction block is rolled back with it.
    let a = raw_request(&mut s, &query("RESET DateStyle; SELECT 1/0")).await;
    assert_eq!((a.errors.as_slice(), a.reported("DateStyle")), (&["22012".to_string()][..], None), "{a:?}");
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, ["ISO, DMY"]);

    // Extended protocol: Parse/Bind/Execute/Sync.
    let batch = [parse("RESET DateStyle"), bind(&[]), execute(), sync()].concat();
    let a = raw_request(&mut s, &batch).await;
    assert!(a.errors.is_empty(), "{a:?}");
    assert_eq!(a.reported("DateStyle"), Some(date), "{a:?}");
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, [date]);
    assert_eq!(ok(&mut o, "SHOW DateStyle").await.rows, ["ISO, MDY"]);
    // A RESET when the value is already the startup one reports nothing new, as PostgreSQL.
    let a = ok(&mut s, "RESET DateStyle").await;
    assert_eq!(a.reported("DateStyle"), None, "{a:?}");
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, [date]);
}

#[tokio::test]
async fn reset_returns_to_the_startup_values_in_session_mode_too() {
    let db = fresh_db("params_reset_session");
    let p = pooler()
        .general("auth_type = \"any\"")
        .general("pool_mode = \"session\"")
        .database_with_login(&db, &["pool_size = 1"])
        .start()
        .await;
    let (mut s, _) = raw_login(
        &p,
        &[("user", &db.name), ("database", &db.name), ("options", "-c DateStyle=SQL,\\ DMY -c TimeZone=Asia/Tokyo")],
    )
    .await;
    ok(&mut s, "SET DateStyle = ISO; SET TimeZone = 'UTC'").await;
    let a = ok(&mut s, "RESET ALL").await;
    assert_eq!((a.reported("DateStyle"), a.reported("TimeZone")), (Some("SQL, DMY"), Some("Asia/Tokyo")), "{a:?}");
    assert_eq!(ok(&mut s, "SHOW DateStyle").await.rows, ["SQL, DMY"]);
    assert_eq!(ok(&mut s, "SHOW TimeZone").await.rows, ["Asia/Tokyo"]);
}
