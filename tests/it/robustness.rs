//! Robustness: hostile or broken clients (garbage, huge lengths, wrong protocol versions,
//! invalid message types and sizes, clients that never finish logging in), SSL/GSSENC
//! refusal and protocol-minor negotiation, clients and servers dying mid-transaction or
//! mid-query, unreachable servers, and large traffic (10 MB values, 100k-row results, COPY,
//! pipelining). Protocol-level tests speak raw bytes over a `TcpStream`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::harness::*;

// === raw protocol helpers ===

/// Longest any single raw read may wait before the test fails.
const READ_LIMIT: Duration = Duration::from_secs(5);
/// SSLRequest code.
const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest code.
const GSSENC_REQUEST: u32 = 80_877_104;

/// The usual StartupMessage (3.0) for `db`'s role and database, plus `extra` parameters.
fn startup_for(db: &TestDb, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut params = vec![("user", db.name.as_str()), ("database", db.name.as_str())];
    params.extend_from_slice(extra);
    startup_packet(PROTOCOL_3_0, &params)
}

/// Connects a raw socket to the pooler.
async fn raw(p: &Pooler) -> TcpStream {
    let s = TcpStream::connect(p.addr).await.expect("connect to pgsluice");
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one message; `None` once the pooler closed the connection (EOF or reset).
async fn read_msg(s: &mut TcpStream) -> Option<Msg> {
    read_msg_within(s, READ_LIMIT).await
}

/// Reads one message that must be there.
async fn expect_msg(s: &mut TcpStream) -> Msg {
    read_msg(s).await.expect("pgsluice closed the connection unexpectedly")
}

/// Reads until the pooler closes the connection; everything it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<Msg> {
    let mut msgs = Vec::new();
    while let Some(m) = read_msg(s).await {
        msgs.push(m);
        assert!(msgs.len() < 1000, "pgsluice keeps talking: {:?}", &msgs[..10]);
    }
    msgs
}

/// Reads until the pooler closes; it must have sent exactly one FATAL ErrorResponse with
/// `code`. Returns its message.
async fn expect_fatal(s: &mut TcpStream, code: &str) -> String {
    let msgs = read_to_close(s).await;
    let errors: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1, "expected one ErrorResponse, then close; got {msgs:?}");
    let f = errors[0].fields();
    assert_eq!(f.get(&b'C').map(String::as_str), Some(code), "{f:?}");
    assert_eq!(f.get(&b'S').map(String::as_str), Some("FATAL"), "{f:?}");
    errors[0].message()
}

/// Reads messages up to and including the `count`-th ReadyForQuery.
async fn read_until_ready_n(s: &mut TcpStream, count: usize) -> Vec<Msg> {
    let mut msgs = Vec::new();
    let mut seen = 0;
    while seen < count {
        let Some(m) = read_msg(s).await else {
            panic!("connection closed before ReadyForQuery #{}: {msgs:?}", seen + 1);
        };
        seen += usize::from(m.tag == b'Z');
        msgs.push(m);
    }
    msgs
}

/// Reads messages up to and including the next ReadyForQuery.
async fn read_until_ready(s: &mut TcpStream) -> Vec<Msg> {
    read_until_ready_n(s, 1).await
}

/// First-column values of the DataRows in `msgs`.
fn data_values(msgs: &[Msg]) -> Vec<Option<String>> {
    msgs.iter().filter(|m| m.tag == b'D').map(Msg::first_column).collect()
}

/// A pooler with `auth_type = "any"` serving `db` through a fixed server user, so raw
/// sockets can log in without a SCRAM client.
fn trust_pooler(db: &TestDb) -> PoolerBuilder {
    pooler().general("auth_type = \"any\"").database_with_login(db, &[])
}

/// Logs in on a raw socket (trust auth) and reads through the first ReadyForQuery.
async fn raw_login(p: &Pooler, db: &TestDb, extra: &[(&str, &str)]) -> TcpStream {
    let mut s = raw(p).await;
    s.write_all(&startup_for(db, extra)).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert_eq!((msgs[0].tag, msgs[0].i32_at(0)), (b'R', 0), "expected AuthenticationOk first: {msgs:?}");
    assert!(msgs.iter().any(|m| m.tag == b'S'), "no ParameterStatus: {msgs:?}");
    assert!(msgs.iter().any(|m| m.tag == b'K'), "no BackendKeyData: {msgs:?}");
    assert!(!msgs.iter().any(|m| m.tag == b'E'), "login failed: {msgs:?}");
    assert_eq!(msgs.last().map(|m| m.body.as_slice()), Some(&b"I"[..]));
    s
}

// === client helpers ===

/// A new tokio-postgres client runs a query through the pooler.
async fn assert_serves(p: &Pooler, db: &TestDb) {
    let c = p.connect(db).await;
    let v = rows(&c.simple_query("select 40 + 2").await.expect("query after the incident"));
    assert_eq!(v, ["42"], "pgsluice must keep serving");
}

/// Connects with tokio-postgres, returning the connection task so a test can kill it.
async fn connect_killable(p: &Pooler, db: &TestDb) -> (Client, JoinHandle<()>) {
    let (client, conn) =
        tokio_postgres::connect(&p.connstr(&db.name, &db.password, &db.name), NoTls).await.expect("connect");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

/// Backends of `role` in state `idle in transaction` (or `... (aborted)`).
fn idle_in_transaction(role: &str) -> i64 {
    su_sql(
        "postgres",
        &format!(
            "select count(*) from pg_stat_activity where usename = '{role}' and state like 'idle in transaction%'"
        ),
    )
    .parse()
    .expect("count")
}

// === 1-3: malformed first packets ===

#[tokio::test]
async fn garbage_first_packet_is_refused_and_pooler_keeps_serving() {
    let db = fresh_db("rob_garbage");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    let inputs: [(&str, &[u8]); 3] = [
        ("HTTP request", b"GET / HTTP/1.1\r\n\r\n"),
        // Plausible length, nonsense code, parameter list without terminator.
        ("bad code", &[0, 0, 0, 12, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]),
        // A TLS ClientHello (direct SSL) start.
        ("TLS hello", &[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]),
    ];
    for (what, bytes) in inputs {
        let mut s = raw(&p).await;
        s.write_all(bytes).await.unwrap();
        let msgs = read_to_close(&mut s).await;
        // An ErrorResponse 08P01, or just a close; nothing else.
        assert!(msgs.len() <= 1, "{what}: {msgs:?}");
        if let Some(m) = msgs.first() {
            assert_eq!((m.tag, m.code().as_str()), (b'E', "08P01"), "{what}: {:?}", m.fields());
        }
    }
    assert_serves(&p, &db).await;
}

#[tokio::test]
async fn startup_packet_with_huge_or_tiny_length_is_08p01() {
    let db = fresh_db("rob_hugelen");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    for len in [0x7fff_ffffu32, 0xffff_ffff, 10_001, 4, 0] {
        let mut s = raw(&p).await;
        let mut pkt = len.to_be_bytes().to_vec();
        pkt.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        s.write_all(&pkt).await.unwrap();
        let m = expect_fatal(&mut s, "08P01").await;
        assert!(m.contains("length"), "length {len}: {m}");
    }
    assert_serves(&p, &db).await;
}

#[tokio::test]
async fn wrong_protocol_major_version_is_refused() {
    let db = fresh_db("rob_major");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    // (1234.5678 would be the CancelRequest code.)
    for (major, minor) in [(2u32, 0u32), (4, 0), (1, 0), (0x7fff, 1)] {
        let mut s = raw(&p).await;
        let pkt = startup_packet(major << 16 | minor, &[("user", &db.name), ("database", &db.name)]);
        s.write_all(&pkt).await.unwrap();
        let m = expect_fatal(&mut s, "08P01").await;
        assert!(m.contains("unsupported frontend protocol"), "{major}.{minor}: {m}");
    }
    assert_serves(&p, &db).await;
}

// === 4-6: negotiation and startup parameters ===

#[tokio::test]
async fn pq_options_and_newer_minors_get_negotiate_protocol_version() {
    let db = fresh_db("rob_minor");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    // As PostgreSQL 18: the version answered is the one asked for, or 3.2 if newer; the
    // unknown `_pq_` options are listed.
    for minor in [0, 2, 9999] {
        let mut s = raw(&p).await;
        let params = [("user", db.name.as_str()), ("database", db.name.as_str()), ("_pq_.test_option", "on")];
        s.write_all(&startup_packet(PROTOCOL_3_0 | minor, &params)).await.unwrap();
        let v = expect_msg(&mut s).await;
        assert_eq!(v.tag, b'v', "3.{minor}: expected NegotiateProtocolVersion, got {v:?}");
        assert_eq!(v.i32_at(0), (PROTOCOL_3_0 | minor.min(2)) as i32, "3.{minor}: {v:?}");
        assert_eq!(v.i32_at(4), 1, "one unrecognised option: {v:?}");
        assert_eq!(&v.body[8..], b"_pq_.test_option\0");
        let r = expect_msg(&mut s).await;
        assert_eq!((r.tag, r.i32_at(0)), (b'R', 10), "expected AuthenticationSASL after negotiation: {r:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("SCRAM-SHA-256"), "{r:?}");
    }
    // A newer minor alone (no options) is negotiated down to 3.2, up to libpq 19's test
    // version 3.9999; 3.2 itself is not negotiated (tests/it/protocol32.rs has the rest).
    for (minor, negotiated) in [(2, false), (3, true), (9999, true)] {
        let mut s = raw(&p).await;
        let params = [("user", db.name.as_str()), ("database", db.name.as_str())];
        s.write_all(&startup_packet(PROTOCOL_3_0 | minor, &params)).await.unwrap();
        let mut r = expect_msg(&mut s).await;
        if negotiated {
            assert_eq!((r.tag, r.i32_at(0), r.i32_at(4)), (b'v', (PROTOCOL_3_0 | 2) as i32, 0), "3.{minor}: {r:?}");
            r = expect_msg(&mut s).await;
        }
        assert_eq!((r.tag, r.i32_at(0)), (b'R', 10), "3.{minor}: {r:?}");
    }
}

#[tokio::test]
async fn ssl_and_gssenc_requests_get_n_without_tls() {
    let db = fresh_db("rob_sslreq");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    // (requests sent before the startup packet, each answered with one byte)
    for requests in [&[SSL_REQUEST][..], &[GSSENC_REQUEST], &[GSSENC_REQUEST, SSL_REQUEST]] {
        let mut s = raw(&p).await;
        for &code in requests {
            s.write_all(&untagged(code, &[])).await.unwrap();
            let mut b = [0u8; 1];
            tokio::time::timeout(READ_LIMIT, s.read_exact(&mut b)).await.expect("answer in time").expect("one byte");
            assert_eq!(b[0], b'N', "request {code} must be refused with 'N'");
        }
        s.write_all(&startup_for(&db, &[])).await.unwrap();
        let r = expect_msg(&mut s).await;
        assert_eq!((r.tag, r.i32_at(0)), (b'R', 10), "after {requests:?}: {r:?}");
    }
}

#[tokio::test]
async fn unsupported_startup_parameters_are_refused_but_extra_float_digits_is_ignored() {
    let db = fresh_db("rob_params");
    let p = trust_pooler(&db).start().await;
    for (k, v) in [("options", "-c foo=bar"), ("bogus_param", "1")] {
        let mut s = raw(&p).await;
        s.write_all(&startup_for(&db, &[(k, v)])).await.unwrap();
        let m = expect_fatal(&mut s, "08P01").await;
        assert!(m.contains("unsupported startup parameter"), "{k}: {m}");
        assert!(m.contains(k), "the message should name the parameter: {m}");
    }
    let mut s = raw_login(&p, &db, &[("extra_float_digits", "3"), ("DateStyle", "ISO, MDY")]).await;
    s.write_all(&query("select 1.5::float8")).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert_eq!(data_values(&msgs), [Some("1.5".to_string())], "{msgs:?}");
    assert_serves(&p, &db).await;
}

// === 7: login timeout ===

#[tokio::test]
async fn client_login_timeout_disconnects_stalled_clients() {
    let db = fresh_db("rob_logintimeout");
    let p =
        pooler().general("client_login_timeout = \"1s\"").database(&db, &[]).user(&db.name, &db.password).start().await;
    let silent = async {
        let mut s = raw(&p).await;
        let t0 = Instant::now();
        (read_to_close(&mut s).await, t0.elapsed(), "silent")
    };
    let half_startup = async {
        let mut s = raw(&p).await;
        let pkt = startup_for(&db, &[]);
        s.write_all(&pkt[..pkt.len() / 2]).await.unwrap();
        let t0 = Instant::now();
        (read_to_close(&mut s).await, t0.elapsed(), "half a startup packet")
    };
    let mid_auth = async {
        let mut s = raw(&p).await;
        s.write_all(&startup_for(&db, &[])).await.unwrap();
        let t0 = Instant::now();
        let r = expect_msg(&mut s).await;
        assert_eq!((r.tag, r.i32_at(0)), (b'R', 10), "{r:?}");
        (read_to_close(&mut s).await, t0.elapsed(), "stalled in SCRAM")
    };
    let (a, b, c) = tokio::join!(silent, half_startup, mid_auth);
    for (msgs, waited, what) in [a, b, c] {
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
            "{what}: closed after {waited:?}"
        );
        assert!(msgs.len() <= 1, "{what}: {msgs:?}");
        if let Some(m) = msgs.first() {
            assert_eq!(m.tag, b'E', "{what}: {msgs:?}");
            assert!(m.code().starts_with("08"), "{what}: {:?}", m.fields());
        }
    }
    assert_serves(&p, &db).await;
}

// === 8: invalid messages after login ===

#[tokio::test]
async fn invalid_messages_after_login_are_08p01() {
    let db = fresh_db("rob_badmsg");
    let p = trust_pooler(&db).general("max_packet_size = 65536").start().await;
    let mut too_large = vec![b'Q'];
    too_large.extend_from_slice(&100_004u32.to_be_bytes());
    too_large.extend_from_slice(b"select ");
    let cases: [(&str, Vec<u8>); 4] = [
        ("invalid message type", frame(b'?', b"")),
        ("length < 4", b"Q\0\0\0\x03".to_vec()),
        ("negative length", b"Q\xff\xff\xff\xf0".to_vec()),
        ("longer than max_packet_size", too_large),
    ];
    for in_transaction in [false, true] {
        for (what, bytes) in &cases {
            let mut s = raw_login(&p, &db, &[]).await;
            if in_transaction {
                // The session holds a server while the bad message arrives.
                s.write_all(&query("begin; select 1")).await.unwrap();
                let msgs = read_until_ready(&mut s).await;
                assert_eq!(msgs.last().map(|m| m.body.as_slice()), Some(&b"T"[..]), "{msgs:?}");
            }
            s.write_all(bytes).await.unwrap();
            let m = expect_fatal(&mut s, "08P01").await;
            assert!(!m.is_empty(), "{what} (in transaction: {in_transaction})");
        }
    }
    // The servers that held those transactions were not kept open in them.
    assert!(
        eventually(Duration::from_secs(3), || idle_in_transaction(&db.name) == 0).await,
        "a server is still idle in transaction after its client was thrown out"
    );
    // Just under max_packet_size is fine.
    let mut s = raw_login(&p, &db, &[]).await;
    s.write_all(&query(&format!("select length('{}')", "x".repeat(60_000)))).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert_eq!(data_values(&msgs), [Some("60000".to_string())], "{msgs:?}");
    assert_serves(&p, &db).await;
}

// === 9-11: clients and servers failing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_inside_a_transaction_releases_its_locks() {
    let db = fresh_db("rob_killtx");
    let p = pooler().database(&db, &["pool_size = 3"]).user(&db.name, &db.password).start().await;
    let setup = p.connect(&db).await;
    setup.batch_execute("create table t(id int primary key, v int); insert into t values (1, 0)").await.unwrap();

    // Abruptly: the socket just goes away (no Terminate).
    let (a, task) = connect_killable(&p, &db).await;
    a.batch_execute("begin; update t set v = v + 1 where id = 1").await.unwrap();
    assert_eq!(idle_in_transaction(&db.name), 1);
    task.abort();
    drop(a);
    assert!(
        eventually(Duration::from_secs(2), || idle_in_transaction(&db.name) == 0).await,
        "the killed client's server is still idle in transaction"
    );
    let b = p.connect(&db).await;
    b.batch_execute("begin; set local lock_timeout = '2s'; update t set v = v + 10 where id = 1; commit")
        .await
        .unwrap_or_else(|e| panic!("row lock of the killed client still held: {e}"));

    // Politely: the client is dropped (tokio-postgres sends Terminate).
    let c = p.connect(&db).await;
    c.batch_execute("begin; update t set v = v + 100 where id = 1").await.unwrap();
    drop(c);
    assert!(
        eventually(Duration::from_secs(2), || idle_in_transaction(&db.name) == 0).await,
        "the dropped client's server is still idle in transaction"
    );
    b.batch_execute("begin; set local lock_timeout = '2s'; update t set v = v + 1000 where id = 1; commit")
        .await
        .unwrap_or_else(|e| panic!("row lock of the dropped client still held: {e}"));
    // Only the committed updates happened.
    assert_eq!(rows(&b.simple_query("select v from t where id = 1").await.unwrap()), ["1010"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_terminated_mid_query_fails_only_that_client() {
    let db = fresh_db("rob_serverdies");
    let p = pooler().database(&db, &["pool_size = 3"]).user(&db.name, &db.password).start().await;
    let b = p.connect(&db).await;
    assert_eq!(rows(&b.simple_query("select 1").await.unwrap()), ["1"]);
    let a = p.connect(&db).await;
    let started = Instant::now();
    let q = tokio::spawn(async move {
        let r = a.simple_query("select pg_sleep(5)").await.map(|_| ());
        (a, r)
    });
    let kill = format!(
        "select count(pg_terminate_backend(pid, 3000)) from pg_stat_activity \
         where usename = '{}' and state = 'active' and query like '%pg_sleep(5)%'",
        db.name
    );
    assert!(eventually(Duration::from_secs(3), || su_sql("postgres", &kill) == "1").await, "query never seen running");
    let (a, res) = tokio::time::timeout(Duration::from_secs(3), q).await.expect("client A must not hang").unwrap();
    let e = res.expect_err("A's query must fail when its server is terminated");
    let code = sqlstate(&e);
    assert!(
        code.as_deref().is_some_and(|c| c.starts_with("08") || c == "57P01"),
        "unexpected error for A: {e} (sqlstate {code:?})"
    );
    assert!(started.elapsed() < Duration::from_millis(4500), "A waited for the whole sleep");
    // A was not inside a transaction: its session survives and gets another server.
    assert_eq!(rows(&a.simple_query("select 42").await.expect("A after losing its server")), ["42"]);
    // B (connected before) and a new client are fine.
    for i in 0..3 {
        let v = rows(&b.simple_query(&format!("select {i}")).await.expect("B after the incident"));
        assert_eq!(v, [i.to_string()]);
    }
    assert_serves(&p, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_servers_terminated_are_replaced_transparently() {
    let db = fresh_db("rob_idlekilled");
    let p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.password).start().await;
    let c = p.connect(&db).await;
    assert_eq!(rows(&c.simple_query("select 1").await.unwrap()), ["1"]);
    let killed = su_sql(
        "postgres",
        &format!("select count(pg_terminate_backend(pid, 3000)) from pg_stat_activity where usename = '{}'", db.name),
    );
    assert_ne!(killed, "0", "there was an idle pooled server to terminate");
    // The client was idle (no server held): its next queries must simply work.
    for i in 0..3 {
        let v = rows(&c.simple_query(&format!("select {i}")).await.unwrap_or_else(|e| panic!("query {i}: {e}")));
        assert_eq!(v, [i.to_string()]);
    }
}

#[tokio::test]
async fn unreachable_server_fails_login_quickly_and_other_databases_work() {
    let good = fresh_db("rob_connfail");
    let dead = format!("{}_dead", good.name);
    let dead_port = pgsluice::localpg::free_port();
    let p = pooler()
        .general("server_connect_timeout = \"1s\"")
        .general("query_wait_timeout = \"3s\"")
        .database(&good, &[])
        .section(&format!("[databases.{dead}]\nhosts = [\"127.0.0.1:{dead_port}\"]\ndbname = \"{}\"\n", good.name))
        .user(&good.name, &good.password)
        .start()
        .await;
    for attempt in 0..2 {
        let started = Instant::now();
        let e = p.try_connect(&good.name, &good.password, &dead).await.must_fail("login to a dead server must fail");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "attempt {attempt}: took {took:?}");
        let m = message(&e);
        assert!(m.contains("server") && m.contains("connect"), "attempt {attempt}: {m}");
        assert!(sqlstate(&e).is_some_and(|c| c.starts_with("08")), "attempt {attempt}: {e:?}");
    }
    assert_serves(&p, &good).await;
}

#[tokio::test]
async fn server_that_never_answers_hits_server_connect_timeout() {
    let good = fresh_db("rob_connsilent");
    let dead = format!("{}_silent", good.name);
    // Accepts TCP connections (backlog) but never says anything.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let p = pooler()
        .general("server_connect_timeout = \"1s\"")
        .general("query_wait_timeout = \"3s\"")
        .database(&good, &[])
        .section(&format!("[databases.{dead}]\nhosts = [\"127.0.0.1:{silent_port}\"]\ndbname = \"{}\"\n", good.name))
        .user(&good.name, &good.password)
        .start()
        .await;
    let started = Instant::now();
    let e = p.try_connect(&good.name, &good.password, &dead).await.must_fail("login to a silent server must fail");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "took {took:?}");
    let m = message(&e);
    assert!(m.contains("server") && (m.contains("timeout") || m.contains("connect")), "{m}");
    assert_serves(&p, &good).await;
    drop(silent);
}

// === 12-14: large traffic, COPY, pipelining ===

#[tokio::test]
async fn ten_megabyte_values_and_large_results_round_trip() {
    let db = fresh_db("rob_bigvalues");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    let mut c = p.connect(&db).await;
    c.batch_execute("create table big(id int, v text)").await.unwrap();
    let payload: String = (0..10_000_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    {
        let tx = c.transaction().await.unwrap();
        let s: String = tx.query_one("select repeat('x', 10000000)", &[]).await.unwrap().get(0);
        assert_eq!(s.len(), 10_000_000);
        assert!(s.bytes().all(|b| b == b'x'));
        let n = tx.execute("insert into big values (1, $1)", &[&payload]).await.unwrap();
        assert_eq!(n, 1);
        let back: String = tx.query_one("select v from big where id = 1", &[]).await.unwrap().get(0);
        assert!(back == payload, "10 MB parameter came back different (len {})", back.len());
        tx.commit().await.unwrap();
    }
    // Simple protocol: 10 MB in the query text and in the result, outside a transaction.
    let sql = format!("select length('{payload}'), md5('{payload}') = md5(v) from big where id = 1");
    let msgs = c.simple_query(&sql).await.unwrap();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0).map(str::to_string), r.get(1).map(str::to_string))),
            _ => None,
        })
        .expect("one row");
    assert_eq!(row, (Some("10000000".into()), Some("t".into())));
    let v = rows(&c.simple_query("select repeat('y', 10000000)").await.unwrap());
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].len(), 10_000_000);
    // 100,000 rows arrive complete and in order.
    let v = rows(&c.simple_query("select g from generate_series(1, 100000) g").await.unwrap());
    assert_eq!(v.len(), 100_000);
    assert!(v.iter().enumerate().all(|(i, s)| *s == (i + 1).to_string()), "rows out of order or corrupted");
    assert_serves(&p, &db).await;
}

#[tokio::test]
async fn copy_in_and_out_of_megabytes() {
    let db = fresh_db("rob_copy");
    // Trust auth so a raw socket can run COPY TO STDOUT (tokio-postgres' CopyOutStream needs
    // the futures traits, which are not a dependency here).
    let p = trust_pooler(&db).start().await;
    let mut c = p.connect(&db).await;
    c.batch_execute("create table t(id int, v text)").await.unwrap();
    let pad = "p".repeat(100);
    const ROWS: i32 = 50_000; // ~5.5 MB each way
    {
        let tx = c.transaction().await.unwrap();
        let sink = tx.copy_in("copy t from stdin (format binary)").await.unwrap();
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT]);
        let mut writer = std::pin::pin!(writer);
        for i in 0..ROWS {
            let v = format!("{i}-{pad}");
            writer.as_mut().write(&[&i, &v]).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), ROWS as u64);
        tx.commit().await.unwrap();
    }
    // Text COPY FROM STDIN on a raw socket, simple protocol, outside a transaction.
    let mut s = raw_login(&p, &db, &[]).await;
    s.write_all(&query("copy t from stdin")).await.unwrap();
    let g = expect_msg(&mut s).await;
    assert_eq!(g.tag, b'G', "expected CopyInResponse: {g:?}");
    let mut chunk = String::new();
    for i in ROWS..2 * ROWS {
        chunk.push_str(&format!("{i}\t{i}-{pad}\n"));
        if chunk.len() > 60_000 {
            s.write_all(&frame(b'd', chunk.as_bytes())).await.unwrap();
            chunk.clear();
        }
    }
    s.write_all(&frame(b'd', chunk.as_bytes())).await.unwrap();
    s.write_all(&frame(b'c', b"")).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    let done = msgs.iter().find(|m| m.tag == b'C').unwrap_or_else(|| panic!("no CommandComplete: {msgs:?}"));
    assert_eq!(done.body, format!("COPY {ROWS}\0").as_bytes());
    assert_eq!(msgs.last().unwrap().body, b"I");

    // COPY TO STDOUT: every row arrives.
    s.write_all(&query("copy t to stdout")).await.unwrap();
    let h = expect_msg(&mut s).await;
    assert_eq!(h.tag, b'H', "expected CopyOutResponse: {h:?}");
    let (mut data, mut bytes, mut ids) = (0, 0, 0i64);
    loop {
        let m = expect_msg(&mut s).await;
        match m.tag {
            b'd' => {
                data += 1;
                bytes += m.body.len();
                let line = String::from_utf8(m.body).unwrap();
                ids += line.split('\t').next().unwrap().parse::<i64>().unwrap();
            }
            b'c' => break,
            _ => panic!("unexpected message during COPY OUT: {m:?}"),
        }
    }
    let rest = read_until_ready(&mut s).await;
    assert_eq!(rest[0].body, format!("COPY {}\0", 2 * ROWS).as_bytes(), "{rest:?}");
    assert_eq!(data, 2 * ROWS);
    let n = 2 * ROWS as i64;
    assert_eq!(ids, n * (n - 1) / 2, "some row ids missing or duplicated");
    assert!(bytes > 10_000_000, "copied {bytes} bytes");

    // CopyFail aborts the COPY and the session goes on.
    s.write_all(&query("copy t from stdin")).await.unwrap();
    assert_eq!(expect_msg(&mut s).await.tag, b'G');
    s.write_all(&frame(b'd', b"1\tone\n")).await.unwrap();
    s.write_all(&frame(b'f', b"client gave up\0")).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert!(msgs.iter().any(|m| m.tag == b'E' && m.message().contains("client gave up")), "{msgs:?}");
    assert_eq!(msgs.last().unwrap().body, b"I");

    let total = rows(&c.simple_query("select count(*) from t").await.unwrap());
    assert_eq!(total, [(2 * ROWS).to_string()]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let db = fresh_db("rob_pipeline");
    let p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.password).start().await;
    let mut c = p.connect(&db).await;
    {
        let tx = c.transaction().await.unwrap();
        let (a, b, d, e, f) = tokio::join!(
            tx.query_one("select $1::int4 + 1", &[&1i32]),
            tx.query("select g from generate_series(1, $1::int4) g", &[&1000i32]),
            tx.query_one("select $1::text || '!'", &[&"hi"]),
            tx.query_one("select pg_backend_pid()", &[]),
            tx.query_one("select pg_backend_pid()", &[]),
        );
        assert_eq!(a.unwrap().get::<_, i32>(0), 2);
        let b = b.unwrap();
        assert_eq!(b.len(), 1000);
        assert!(b.iter().enumerate().all(|(i, r)| r.get::<_, i32>(0) == i as i32 + 1));
        assert_eq!(d.unwrap().get::<_, String>(0), "hi!");
        assert_eq!(e.unwrap().get::<_, i32>(0), f.unwrap().get::<_, i32>(0), "one server for the transaction");
        tx.commit().await.unwrap();
    }
    // Outside a transaction: pipelined simple queries.
    let (r1, r2, r3, r4) = tokio::join!(
        c.simple_query("select 1"),
        c.simple_query("select 2; select 3"),
        c.simple_query("select count(*) from generate_series(1, 50000)"),
        c.simple_query("select 4"),
    );
    assert_eq!(rows(&r1.unwrap()), ["1"]);
    assert_eq!(rows(&r2.unwrap()), ["2", "3"]);
    assert_eq!(rows(&r3.unwrap()), ["50000"]);
    assert_eq!(rows(&r4.unwrap()), ["4"]);
    // The session is still in step afterwards.
    assert_eq!(rows(&c.simple_query("select 5").await.unwrap()), ["5"]);
}

#[tokio::test]
async fn raw_pipeline_of_simple_and_extended_requests_in_one_write() {
    let db = fresh_db("rob_rawpipe");
    let p = trust_pooler(&db).start().await;
    let mut s = raw_login(&p, &db, &[]).await;
    let mut batch = Vec::new();
    batch.extend(query("select 1"));
    batch.extend(query("select 2; select 3"));
    for (sql, param) in [("select $1::int4 * 10", "4"), ("select 1 / $1::int4", "0"), ("select $1::int4 * 10", "6")] {
        batch.extend(parse(sql));
        batch.extend(bind(&[param]));
        batch.extend(execute());
        batch.extend(sync());
    }
    batch.extend(query("select 7"));
    s.write_all(&batch).await.unwrap();
    let msgs = read_until_ready_n(&mut s, 6).await;
    let values: Vec<String> = data_values(&msgs).into_iter().flatten().collect();
    assert_eq!(values, ["1", "2", "3", "40", "60", "7"], "{msgs:?}");
    let errors: Vec<String> = msgs.iter().filter(|m| m.tag == b'E').map(Msg::code).collect();
    assert_eq!(errors, ["22012"], "{msgs:?}");
    let statuses: Vec<&[u8]> = msgs.iter().filter(|m| m.tag == b'Z').map(|m| m.body.as_slice()).collect();
    assert_eq!(statuses, [b"I"; 6]);
    // Nothing more is pending: a further request gets exactly its own answer.
    s.write_all(&query("select 8")).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert_eq!(data_values(&msgs), [Some("8".to_string())], "{msgs:?}");
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let db = fresh_db("rob_fragments");
    let p = trust_pooler(&db).start().await;
    // Startup packet one byte at a time.
    let mut s = raw(&p).await;
    for b in startup_for(&db, &[]) {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let msgs = read_until_ready(&mut s).await;
    assert_eq!((msgs[0].tag, msgs[0].i32_at(0)), (b'R', 0), "{msgs:?}");
    // A simple query and an extended request, one byte at a time.
    let mut bytes = query("select 11");
    bytes.extend(parse("select $1::int4 + 1"));
    bytes.extend(bind(&["11"]));
    bytes.extend(execute());
    bytes.extend(sync());
    for b in bytes {
        s.write_all(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let msgs = read_until_ready_n(&mut s, 2).await;
    assert_eq!(data_values(&msgs), [Some("11".to_string()), Some("12".to_string())], "{msgs:?}");
    // A request, plus the first bytes of the next one: the first is answered (and its server
    // released in transaction mode) while the second is incomplete.
    for split in [1, 3, 5, 8] {
        let (q1, q2) = (query("select 21"), query("select 22"));
        let mut first = q1.clone();
        first.extend_from_slice(&q2[..split]);
        s.write_all(&first).await.unwrap();
        if split < 5 {
            // Header incomplete: the first query is answered on its own.
            let msgs = read_until_ready(&mut s).await;
            assert_eq!(data_values(&msgs), [Some("21".to_string())], "split {split}: {msgs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(&q2[split..]).await.unwrap();
            let msgs = read_until_ready(&mut s).await;
            assert_eq!(data_values(&msgs), [Some("22".to_string())], "split {split}: {msgs:?}");
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(&q2[split..]).await.unwrap();
            let msgs = read_until_ready_n(&mut s, 2).await;
            let want = [Some("21".to_string()), Some("22".to_string())];
            assert_eq!(data_values(&msgs), want, "split {split}: {msgs:?}");
        }
    }
}

#[tokio::test]
async fn request_pipelined_with_terminate_is_still_executed() {
    let db = fresh_db("rob_terminate");
    let p = trust_pooler(&db).start().await;
    let c = p.connect(&db).await;
    c.batch_execute("create table t(id int)").await.unwrap();
    let ids = || async { rows(&c.simple_query("select id from t order by id").await.unwrap()) };
    // As PostgreSQL does: messages are processed in order, so the request runs, its answer is
    // sent, and then the connection closes.
    let mut problems = Vec::new();
    // Inside a transaction (a server is held when the Terminate arrives).
    let mut s = raw_login(&p, &db, &[]).await;
    s.write_all(&query("begin")).await.unwrap();
    read_until_ready(&mut s).await;
    let mut bytes = query("insert into t values (1)");
    bytes.extend(query("commit"));
    bytes.extend(frame(b'X', b""));
    s.write_all(&bytes).await.unwrap();
    let msgs = read_to_close(&mut s).await;
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    if tags != "CZCZ" {
        problems.push(format!("in a transaction: answers before close were {tags:?}, not \"CZCZ\""));
    }
    if ids().await != ["1"] {
        problems.push("in a transaction: the insert + commit sent just before Terminate were lost".into());
    }
    // Outside a transaction (no server held: the session is idle when both arrive).
    let mut s = raw_login(&p, &db, &[]).await;
    let mut bytes = query("insert into t values (2)");
    bytes.extend(frame(b'X', b""));
    s.write_all(&bytes).await.unwrap();
    let msgs = read_to_close(&mut s).await;
    let tags: String = msgs.iter().map(|m| m.tag as char).collect();
    if tags != "CZ" {
        problems.push(format!("idle session: answers before close were {tags:?}, not \"CZ\""));
    }
    if ids().await != ["1", "2"] {
        problems.push("idle session: the insert sent just before Terminate was never executed".into());
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_terminated_while_client_idle_in_transaction() {
    let db = fresh_db("rob_idletxdies");
    let p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.password).start().await;
    let a = p.connect(&db).await;
    a.batch_execute("begin; select 1").await.unwrap();
    let kill = format!(
        "select count(pg_terminate_backend(pid, 3000)) from pg_stat_activity \
         where usename = '{}' and state = 'idle in transaction'",
        db.name
    );
    assert_eq!(su_sql("postgres", &kill), "1");
    let e = tokio::time::timeout(Duration::from_secs(5), a.simple_query("select 2"))
        .await
        .expect("A must not hang")
        .expect_err("A's server is gone: its transaction cannot go on");
    if let Some(code) = sqlstate(&e) {
        assert!(code.starts_with("08") || code == "57P01", "{e}");
    }
    // Its transaction is gone: pgsluice disconnects it rather than pretend it goes on.
    assert!(a.simple_query("select 3").await.is_err(), "a client whose transaction was lost must be disconnected");
    // Nobody else is handed the dead connection.
    for _ in 0..3 {
        assert_serves(&p, &db).await;
    }
}

#[tokio::test]
async fn copy_with_a_bad_row_midstream_fails_cleanly() {
    let db = fresh_db("rob_copybad");
    let p = trust_pooler(&db).start().await;
    let c = p.connect(&db).await;
    c.batch_execute("create table t(id int, v text)").await.unwrap();
    let mut s = raw_login(&p, &db, &[]).await;
    s.write_all(&query("copy t from stdin")).await.unwrap();
    assert_eq!(expect_msg(&mut s).await.tag, b'G');
    // ~3 MB; row 1000 is bad, so the server fails early while the client keeps streaming.
    let pad = "q".repeat(100);
    let mut chunk = String::new();
    for i in 0..30_000 {
        if i == 1000 {
            chunk.push_str("not-a-number\tx\n");
        } else {
            chunk.push_str(&format!("{i}\t{pad}\n"));
        }
        if chunk.len() > 30_000 {
            s.write_all(&frame(b'd', chunk.as_bytes())).await.unwrap();
            chunk.clear();
        }
    }
    s.write_all(&frame(b'd', chunk.as_bytes())).await.unwrap();
    s.write_all(&frame(b'c', b"")).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    let errors: Vec<String> = msgs.iter().filter(|m| m.tag == b'E').map(Msg::code).collect();
    assert_eq!(errors, ["22P02"], "{msgs:?}");
    assert_eq!(msgs.last().unwrap().body, b"I");
    // The session goes on (stray CopyData after the error are ignored, as by PostgreSQL).
    s.write_all(&query("select count(*) from t")).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert_eq!(data_values(&msgs), [Some("0".to_string())], "{msgs:?}");
    assert_serves(&p, &db).await;
}

// === found in review ===

/// COPY FROM STDIN through the extended protocol (Parse/Bind/Execute/Sync, data, CopyDone,
/// Sync — libpq's PQexecParams): the server ignores the Sync sent during copy-in, so only one
/// ReadyForQuery comes. The server must still be released afterwards: with a pool of one,
/// another client gets served.
#[tokio::test]
async fn extended_protocol_copy_in_releases_the_server() {
    let db = fresh_db("extcopy");
    su_sql(&db.name, &format!("create table t (v int); alter table t owner to {}", db.name));
    let p = pooler()
        .general("auth_type = \"any\"")
        .general("query_wait_timeout = \"3s\"")
        .database_with_login(&db, &["pool_size = 1"])
        .start()
        .await;
    let mut s = raw_login(&p, &db, &[]).await;
    let mut req = parse("copy t from stdin");
    req.extend(bind(&[]));
    req.extend(execute());
    req.extend(sync());
    s.write_all(&req).await.unwrap();
    let g = expect_msg(&mut s).await;
    assert_eq!(g.tag, b'1', "ParseComplete expected: {g:?}");
    assert_eq!(expect_msg(&mut s).await.tag, b'2');
    assert_eq!(expect_msg(&mut s).await.tag, b'G');
    let mut data = frame(b'd', b"1\n2\n3\n");
    data.extend(frame(b'c', b""));
    data.extend(sync());
    s.write_all(&data).await.unwrap();
    let msgs = read_until_ready(&mut s).await;
    assert!(msgs.iter().any(|m| m.tag == b'C'), "{msgs:?}");
    // The single server connection must be free now.
    let other = p.try_connect(&db.name, "x", &db.name).await.expect("second client");
    assert_eq!(simple_one(&other, "select count(*) from t").await, "3");
}

/// A request pipelined right behind the startup packet (trust auth needs no round trip) is
/// answered, not left unread.
#[tokio::test]
async fn request_pipelined_with_the_startup_packet_is_answered() {
    let db = fresh_db("pipelogin");
    let p = trust_pooler(&db).start().await;
    let mut s = raw(&p).await;
    let mut bytes = startup_for(&db, &[]);
    bytes.extend(query("select 41 + 1"));
    s.write_all(&bytes).await.unwrap();
    let login = read_until_ready(&mut s).await;
    assert!(!login.iter().any(|m| m.tag == b'E'), "{login:?}");
    let msgs = tokio::time::timeout(Duration::from_secs(5), read_until_ready(&mut s)).await.expect("answer");
    assert_eq!(data_values(&msgs), vec![Some("42".to_string())]);
}

/// When a request is rejected (query_wait_timeout), a partly received next message survives.
#[tokio::test]
async fn rejected_request_keeps_the_partial_next_message() {
    let db = fresh_db("rejectpartial");
    let p = pooler()
        .general("auth_type = \"any\"")
        .general("query_wait_timeout = \"1s\"")
        .database_with_login(&db, &["pool_size = 1"])
        .start()
        .await;
    let holder = p.try_connect(&db.name, "x", &db.name).await.unwrap();
    holder.batch_execute("begin").await.unwrap();
    let mut s = raw_login(&p, &db, &[]).await;
    let q2 = query("select 2");
    let mut bytes = query("select 1");
    bytes.extend(&q2[..3]);
    s.write_all(&bytes).await.unwrap();
    let first = read_until_ready(&mut s).await;
    assert_eq!(first.first().map(|m| m.code()), Some("57014".to_string()), "{first:?}");
    holder.batch_execute("commit").await.unwrap();
    s.write_all(&q2[3..]).await.unwrap();
    let second = read_until_ready(&mut s).await;
    assert_eq!(data_values(&second), vec![Some("2".to_string())], "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_out_a_real_client() {
    let db = fresh_db("loris");
    let p = pooler()
        .general("max_client_conn = 50")
        .general("max_login_clients_per_host = 20")
        // (Long: what frees the places here is the eviction, not this deadline.)
        .general("client_first_byte_timeout = \"60s\"")
        .database(&db, &[])
        .user(&db.name, &db.password)
        .start()
        .await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(p.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let c = p.try_connect(&db.name, &db.password, &db.name).await.expect("a real client gets in");
    let took = started.elapsed();
    assert_eq!(simple_one(&c, "select 'in'").await, "in");
    // Silent sockets older than a second were closed to make room for it (the others keep
    // their places until client_first_byte_timeout).
    let mut closed = 0;
    for s in &mut silent {
        let mut b = [0u8; 64];
        if matches!(tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await, Ok(Ok(_) | Err(_))) {
            closed += 1;
        }
    }
    println!(
        "SLOW-LORIS: real login after 100 silent sockets took {} ms; {closed} of 100 silent sockets closed",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(closed >= 1, "{closed} closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_sends_nothing_is_closed_after_client_first_byte_timeout() {
    let db = fresh_db("firstbyte");
    let p = pooler().general("client_first_byte_timeout = \"500ms\"").database(&db, &[]).start().await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let started = Instant::now();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer: {n:?}");
    assert!(started.elapsed() >= Duration::from_millis(400) && started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_stalled_after_their_first_byte_are_capped_per_address() {
    let db = fresh_db("stalled");
    let p = pooler()
        .general("max_login_clients_per_host = 5")
        .database(&db, &[])
        .user(&db.name, &db.password)
        .start()
        .await;
    // Five logins from 127.0.0.1 that stop answering once asked for a password.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&startup_for(&db, &[])).await.unwrap();
        let m = expect_msg(&mut s).await;
        assert_eq!((m.tag, m.i32_at(0)), (b'R', 10), "{m:?}");
        stalled.push(s);
    }
    // A sixth from that address is refused at once, with a reason...
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup_for(&db, &[])).await.unwrap();
    let started = Instant::now();
    let m = expect_fatal(&mut s, "53300").await;
    assert!(m.contains("max_login_clients_per_host"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // ... while another address logs in.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = sock.connect(p.addr).await.unwrap();
    let (c, conn) = tokio_postgres::Config::new()
        .user(&db.name)
        .password(&db.password)
        .dbname(&db.name)
        .connect_raw(tcp, NoTls)
        .await
        .expect("another address gets in");
    tokio::spawn(conn);
    assert_eq!(simple_one(&c, "select 'in'").await, "in");
    // Once a stalled login goes, its address has a place again.
    drop(stalled.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = p.try_connect(&db.name, &db.password, &db.name).await.expect("a place was given back");
    assert_eq!(simple_one(&c, "select 'in'").await, "in");
}
