//! Protocol 3.2 (PostgreSQL 18) with clients, in raw bytes: the version negotiation as
//! PostgreSQL 18 does it, the cancel-key length each version gets, cancellation with a
//! 32-byte key, and CancelRequests of the wrong shape. (libpq 15, the one installed here,
//! and tokio-postgres only speak 3.0, so no driver can ask for 3.2: raw sockets are the test.)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// CancelRequest code.
const CANCEL_REQUEST: u32 = 80_877_102;
/// How long a cancel that must not work is given to show itself.
const QUIET: Duration = Duration::from_millis(800);

/// A pooler where raw sockets log in without a password, serving `db`.
async fn start(db: &TestDb) -> Pooler {
    pooler().general("auth_type = \"any\"").database_with_login(db, &[]).start().await
}

/// Logs in with protocol `3.minor` and reads through ReadyForQuery.
async fn login(p: &Pooler, db: &TestDb, minor: u32) -> (TcpStream, Vec<Msg>) {
    login_at(p.addr, db, minor).await
}

/// Logs in at `addr` with protocol `3.minor` (no password) and reads through ReadyForQuery.
pub async fn login_at(addr: SocketAddr, db: &TestDb, minor: u32) -> (TcpStream, Vec<Msg>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let params = [("user", db.name.as_str()), ("database", db.name.as_str())];
    s.write_all(&startup_packet(PROTOCOL_3_0 | minor, &params)).await.unwrap();
    let mut msgs = Vec::new();
    loop {
        let m = read_msg_within(&mut s, Duration::from_secs(5)).await.expect("login reply");
        assert_ne!(m.tag, b'E', "login failed: {m:?}");
        let done = m.tag == b'Z';
        msgs.push(m);
        if done {
            return (s, msgs);
        }
    }
}

/// The (pid, secret) of the BackendKeyData in `msgs`.
pub fn key(msgs: &[Msg]) -> (i32, Vec<u8>) {
    let k = msgs.iter().find(|m| m.tag == b'K').unwrap_or_else(|| panic!("no BackendKeyData: {msgs:?}"));
    (k.i32_at(0), k.body[4..].to_vec())
}

/// A CancelRequest for (pid, secret).
pub fn cancel_request(pid: i32, secret: &[u8]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(secret);
    untagged(CANCEL_REQUEST, &body)
}

/// Sends raw `bytes` on a fresh connection and waits until pgsluice closes it.
async fn send_alone(p: &Pooler, bytes: &[u8]) {
    send_to(p.addr, bytes).await
}

/// Sends raw `bytes` on a fresh connection to `addr` and waits until it is closed.
pub async fn send_to(addr: SocketAddr, bytes: &[u8]) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let _ = c.shutdown().await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "pgsluice kept a cancel connection open");
}

/// Starts `pg_sleep(30)` on `s` and waits until its server runs it (a cancel before the
/// client holds a server does nothing, by design).
pub async fn start_sleep(s: &mut TcpStream, db: &TestDb) {
    s.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_active(db, 1).await;
}

/// Waits until `n` of `db`'s sessions run `select pg_sleep(30)` (asked directly of PostgreSQL).
pub async fn wait_active(db: &TestDb, n: i64) {
    let direct =
        format!("host=127.0.0.1 port={} user={} password={} dbname={}", pg().port(), db.name, db.password, db.name);
    let c = connect_str(&direct).await.expect("connect to PostgreSQL directly");
    let sql = "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'";
    let mut got = 0;
    for _ in 0..500 {
        got = c.query_one(sql, &[]).await.expect("pg_stat_activity").get(0);
        if got == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{got} sessions run the query, not {n}");
}

/// Asserts the query's end does not arrive for a while (a RowDescription may).
pub async fn assert_still_running(s: &mut TcpStream, what: &str) {
    let deadline = tokio::time::Instant::now() + QUIET;
    let mut b = [0u8; 1];
    // (Peek first: a whole message is read only once one has begun to arrive.)
    while let Ok(r) = tokio::time::timeout_at(deadline, s.peek(&mut b)).await {
        assert!(matches!(r, Ok(1)), "{what}: the connection closed ({r:?})");
        let m = read_msg_within(s, Duration::from_secs(5)).await.expect("a message");
        assert_eq!(m.tag, b'T', "{what}: the query was interrupted: {m:?}");
    }
}

/// Reads the query's end: an ErrorResponse `57014` (after its RowDescription) then
/// ReadyForQuery.
pub async fn expect_cancelled(s: &mut TcpStream) {
    let mut e = read_msg_within(s, Duration::from_secs(5)).await.expect("an answer");
    if e.tag == b'T' {
        e = read_msg_within(s, Duration::from_secs(5)).await.expect("an answer");
    }
    assert_eq!((e.tag, e.code().as_str()), (b'E', "57014"), "{e:?}");
    let z = read_msg_within(s, Duration::from_secs(5)).await.expect("ReadyForQuery");
    assert_eq!(z.tag, b'Z', "{z:?}");
}

#[tokio::test]
async fn each_version_gets_its_key_length_and_only_newer_ones_are_negotiated() {
    let db = fresh_db("p32_keys");
    let p = start(&db).await;
    // (minor asked for, secret length, NegotiateProtocolVersion's version if one is sent)
    for (minor, len, negotiated) in [(0, 4, None), (1, 4, None), (2, 32, None), (3, 32, Some(2)), (9999, 32, Some(2))] {
        let (_s, msgs) = login(&p, &db, minor).await;
        let v: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'v').collect();
        match negotiated {
            None => assert!(v.is_empty(), "3.{minor}: no NegotiateProtocolVersion expected: {msgs:?}"),
            Some(n) => {
                assert_eq!(v.len(), 1, "3.{minor}: {msgs:?}");
                assert_eq!(msgs[0].tag, b'v', "3.{minor}: it comes first: {msgs:?}");
                assert_eq!((v[0].i32_at(0), v[0].i32_at(4)), ((3 << 16) | n, 0), "3.{minor}: {:?}", v[0]);
            }
        }
        let (pid, secret) = key(&msgs);
        assert_eq!(secret.len(), len, "3.{minor}: {msgs:?}");
        assert!(pid > 0, "3.{minor}: pid {pid}");
    }
    // Two 3.2 keys share nothing but their length.
    let (_a, ma) = login(&p, &db, 2).await;
    let (_b, mb) = login(&p, &db, 2).await;
    assert_ne!(key(&ma).1, key(&mb).1);
}

#[tokio::test]
async fn a_32_byte_key_cancels_its_query_and_a_near_miss_does_not() {
    let db = fresh_db("p32_cancel");
    let p = start(&db).await;
    let (mut s, msgs) = login(&p, &db, 2).await;
    let (pid, secret) = key(&msgs);
    start_sleep(&mut s, &db).await;
    // The right length with one bit wrong (first and last byte), and the key's first 4
    // bytes alone (the right head, the wrong length).
    for (what, bad) in [
        ("first byte wrong", {
            let mut k = secret.clone();
            k[0] ^= 1;
            k
        }),
        ("last byte wrong", {
            let mut k = secret.clone();
            k[31] ^= 0x80;
            k
        }),
        ("first 4 bytes only", secret[..4].to_vec()),
        ("padded to 33 bytes", {
            let mut k = secret.clone();
            k.push(0);
            k
        }),
    ] {
        send_alone(&p, &cancel_request(pid, &bad)).await;
        assert_still_running(&mut s, what).await;
    }
    send_alone(&p, &cancel_request(pid ^ 1, &secret)).await;
    assert_still_running(&mut s, "another pid").await;
    send_alone(&p, &cancel_request(pid, &secret)).await;
    expect_cancelled(&mut s).await;
    // The session goes on.
    s.write_all(&query("select 1")).await.unwrap();
    let r = read_msg_within(&mut s, Duration::from_secs(5)).await.expect("a reply");
    assert_eq!(r.tag, b'T', "{r:?}");
}

#[tokio::test]
async fn a_4_byte_key_still_cancels_a_3_0_client() {
    let db = fresh_db("p32_short");
    let p = start(&db).await;
    let (mut s, msgs) = login(&p, &db, 0).await;
    let (pid, secret) = key(&msgs);
    start_sleep(&mut s, &db).await;
    let mut long = secret.clone();
    long.resize(32, 0);
    send_alone(&p, &cancel_request(pid, &long)).await;
    assert_still_running(&mut s, "the 4-byte key padded to 32").await;
    send_alone(&p, &cancel_request(pid, &secret)).await;
    expect_cancelled(&mut s).await;
}

#[tokio::test]
async fn truncated_and_oversized_cancel_requests_are_dropped() {
    let db = fresh_db("p32_bad");
    let p = start(&db).await;
    let (mut s, msgs) = login(&p, &db, 2).await;
    let (pid, secret) = key(&msgs);
    start_sleep(&mut s, &db).await;
    let mut truncated = cancel_request(pid, &secret);
    truncated.truncate(20); // the length word promises 44 bytes; 20 come, then EOF
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("no secret", cancel_request(pid, &[])),
        ("3-byte secret", cancel_request(pid, &secret[..3])),
        ("257-byte secret", cancel_request(pid, &[7; 257])),
        ("no pid", untagged(CANCEL_REQUEST, &[])),
        ("cut short", truncated),
        ("length word of 1 MB", {
            let mut b = cancel_request(pid, &secret);
            b[..4].copy_from_slice(&(1u32 << 20).to_be_bytes());
            b
        }),
    ];
    for (what, bytes) in bad {
        send_alone(&p, &bytes).await;
        assert_still_running(&mut s, what).await;
    }
    // Nothing broke: the real key still works, and new clients log in.
    send_alone(&p, &cancel_request(pid, &secret)).await;
    expect_cancelled(&mut s).await;
    let (_s2, msgs) = login(&p, &db, 2).await;
    assert_eq!(key(&msgs).1.len(), 32);
}

/// PostgreSQL signals a cancelled backend twice (its process and its group); a second signal
/// still in flight when the query has ended cancels the next query on that connection. So
/// pgsluice waits for PostgreSQL to close the cancel connection (as libpq's `PQcancel`
/// does) before closing the client's: 50 cancels in a row, each followed at once by the next
/// query on the same server connection, cancel only their own query. (Without the wait this
/// failed about one run in two, within 50 rounds.)
#[tokio::test]
async fn back_to_back_cancels_never_reach_the_next_query() {
    let db = fresh_db("p32_b2b");
    let p = start(&db).await;
    for i in 0..50 {
        let (mut s, msgs) = login(&p, &db, if i % 2 == 0 { 2 } else { 0 }).await;
        let (pid, secret) = key(&msgs);
        start_sleep(&mut s, &db).await;
        send_alone(&p, &cancel_request(pid, &secret)).await;
        expect_cancelled(&mut s).await;
    }
}
