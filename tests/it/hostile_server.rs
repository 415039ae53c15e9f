//! Issue 16, "Hostile servers": a fake PostgreSQL server, scripted per test, that misbehaves
//! at login or in the middle of a query. Each misbehaviour must end with a clear error for
//! the client, within a stated time, and with the bad server connection closed (the fake
//! sees end of stream); the next client of the same pool gets a fresh, clean connection
//! (the fake counts them) or a clean error. No wait in these tests is unbounded.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

// === the fake server ===

/// SSLRequest code.
const SSL_REQUEST: u32 = 80_877_103;
/// CancelRequest code.
const CANCEL_REQUEST: u32 = 80_877_102;
/// Backend pid the fake hands out (connection `n` gets `FAKE_PID + n`).
const FAKE_PID: i32 = 4242;
/// Cancel secret the fake hands out.
const FAKE_SECRET: i32 = 0x5eed;
/// The query text that makes a mid-query script misbehave.
const MARKER: &str = "select 'hostile'";
/// Password in the database section (what pgsluice logs in to the fake with).
const SERVER_PASSWORD: &str = "fake-server-pw";
/// Longest the fake waits for pgsluice to close a connection it misbehaved on.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// What the fake saw of one server connection (CancelRequests are not counted).
#[derive(Debug, Default, Clone)]
struct ConnRecord {
    /// Time from the end of the misbehaviour to pgsluice closing the connection; `None`
    /// while open (or if the script ended without waiting).
    closed_after: Option<Duration>,
    /// The script waited `CLOSE_LIMIT` and the connection stayed open.
    left_open: bool,
    /// Bytes pgsluice sent after the misbehaviour (Terminate, at most).
    sent_after: Vec<u8>,
}

#[derive(Default)]
struct FakeLog {
    conns: Vec<ConnRecord>,
    /// (pid, secret) of each CancelRequest received.
    cancels: Vec<(i32, i32)>,
}

/// A fake PostgreSQL server on 127.0.0.1; each connection runs the script.
struct Fake {
    port: u16,
    log: Arc<Mutex<FakeLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// Listens and runs `script` on every connection that sends a StartupMessage (after
    /// refusing TLS, which pgsluice may ask for first).
    async fn start<F, Fut>(script: F) -> Fake
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake server");
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(FakeLog::default()));
        let script = Arc::new(script);
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else { return };
                    let (log, script) = (log.clone(), script.clone());
                    tokio::spawn(async move {
                        if let Some(peer) = Peer::accept(s, log).await {
                            script(peer).await;
                        }
                    });
                }
            })
        };
        Fake { port, log, task }
    }

    /// Server connections opened so far (with a StartupMessage).
    fn connections(&self) -> usize {
        self.log.lock().unwrap().conns.len()
    }

    /// CancelRequests received so far.
    fn cancels(&self) -> Vec<(i32, i32)> {
        self.log.lock().unwrap().cancels.clone()
    }

    /// Waits until server connection `n` was closed by pgsluice; returns how long after the
    /// misbehaviour that happened. Panics if it stays open.
    async fn closed(&self, n: usize) -> Duration {
        let started = Instant::now();
        loop {
            {
                let log = self.log.lock().unwrap();
                if let Some(r) = log.conns.get(n) {
                    if let Some(d) = r.closed_after {
                        return d;
                    }
                    assert!(!r.left_open, "pgsluice left server connection {n} open: {r:?}");
                }
            }
            assert!(started.elapsed() < CLOSE_LIMIT + Duration::from_secs(5), "server connection {n} never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The record of connection `n`.
    fn record(&self, n: usize) -> ConnRecord {
        self.log.lock().unwrap().conns.get(n).cloned().unwrap_or_default()
    }
}

/// One server connection as the fake's script sees it.
struct Peer {
    /// Index among the fake's connections (0 for the first).
    n: usize,
    s: TcpStream,
    log: Arc<Mutex<FakeLog>>,
    /// Startup parameters pgsluice sent.
    params: Vec<(String, String)>,
}

impl Peer {
    /// Reads the startup packet(s): refuses SSLRequest, records a CancelRequest (`None`).
    async fn accept(mut s: TcpStream, log: Arc<Mutex<FakeLog>>) -> Option<Peer> {
        s.set_nodelay(true).ok()?;
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.ok()?;
            let len = u32::from_be_bytes(len) as usize;
            if !(8..=10_000).contains(&len) {
                return None;
            }
            let mut body = vec![0u8; len - 4];
            s.read_exact(&mut body).await.ok()?;
            let code = u32::from_be_bytes(body[..4].try_into().unwrap());
            match code {
                SSL_REQUEST => s.write_all(b"N").await.ok()?,
                CANCEL_REQUEST if body.len() >= 12 => {
                    let pid = i32::from_be_bytes(body[4..8].try_into().unwrap());
                    let secret = i32::from_be_bytes(body[8..12].try_into().unwrap());
                    log.lock().unwrap().cancels.push((pid, secret));
                    return None;
                }
                _ => {
                    let fields: Vec<String> = body[4..]
                        .split(|&b| b == 0)
                        .filter(|f| !f.is_empty())
                        .map(|f| String::from_utf8_lossy(f).into_owned())
                        .collect();
                    let params =
                        fields.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                    let n = {
                        let mut l = log.lock().unwrap();
                        l.conns.push(ConnRecord::default());
                        l.conns.len() - 1
                    };
                    return Some(Peer { n, s, log, params });
                }
            }
        }
    }

    /// Startup parameter `k`.
    fn param(&self, k: &str) -> Option<&str> {
        self.params.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_str())
    }

    /// Sends bytes (errors ignored: pgsluice may already have closed).
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// Reads one message from pgsluice; `None` at end of stream or after 10 s of silence.
    async fn read_msg(&mut self) -> Option<(u8, Vec<u8>)> {
        let read = async {
            let mut hdr = [0u8; 5];
            self.s.read_exact(&mut hdr).await.ok()?;
            let len = u32::from_be_bytes(hdr[1..5].try_into().unwrap()) as usize;
            if !(4..=1 << 24).contains(&len) {
                return None;
            }
            let mut body = vec![0u8; len - 4];
            self.s.read_exact(&mut body).await.ok()?;
            Some((hdr[0], body))
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.ok().flatten()
    }

    /// A trust login: AuthenticationOk, a few ParameterStatus, BackendKeyData, ReadyForQuery.
    async fn login_ok(&mut self) {
        let mut out = auth(0, &[]);
        out.extend(login_tail(self.n));
        self.send(&out).await;
    }

    /// Answers like a (very small) PostgreSQL until the client sends [`MARKER`] as a simple
    /// query (`true`) or the connection ends (`false`).
    async fn serve_until_marker(&mut self) -> bool {
        while let Some((tag, body)) = self.read_msg().await {
            let mut out = Vec::new();
            match tag {
                b'Q' => {
                    let sql = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).into_owned();
                    if sql.contains(MARKER) {
                        return true;
                    }
                    out.extend(answer(&sql));
                    out.extend(ready(b'I'));
                }
                b'P' => out.extend(frame(b'1', &[])),
                b'B' => out.extend(frame(b'2', &[])),
                b'D' if body.first() == Some(&b'S') => {
                    out.extend(frame(b't', &[0, 0]));
                    out.extend(row_description(&["?column?"]));
                }
                b'D' => out.extend(row_description(&["?column?"])),
                b'E' => {
                    out.extend(data_row(&["1"]));
                    out.extend(command_complete("SELECT 1"));
                }
                b'C' => out.extend(frame(b'3', &[])),
                b'S' => out.extend(ready(b'I')),
                b'X' => return false,
                _ => {}
            }
            self.send(&out).await;
        }
        false
    }

    /// Login, then serves until [`MARKER`]; panics if the client never sends it.
    async fn until_marker(&mut self) {
        self.login_ok().await;
        assert!(self.serve_until_marker().await, "connection {} ended before the marker query", self.n);
    }

    /// The misbehaviour is over: waits (at most `CLOSE_LIMIT`) for pgsluice to close the
    /// connection and records when it did and what it sent meanwhile.
    async fn expect_closed(mut self) {
        let started = Instant::now();
        let mut sent = Vec::new();
        let closed = tokio::time::timeout(CLOSE_LIMIT, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => sent.extend_from_slice(&chunk[..k]),
                }
            }
        })
        .await
        .is_ok();
        let mut log = self.log.lock().unwrap();
        let r = &mut log.conns[self.n];
        r.sent_after = sent;
        if closed {
            r.closed_after = Some(started.elapsed());
        } else {
            r.left_open = true;
        }
    }

    /// Behaves for the rest of the connection.
    async fn serve(mut self) {
        self.login_ok().await;
        while self.serve_until_marker().await {
            let mut out = answer("select 1");
            out.extend(ready(b'I'));
            self.send(&out).await;
        }
    }
}

// === server messages ===

/// An Authentication message: `code`, then `extra`.
fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    frame(b'R', &body)
}

fn parameter_status(k: &str, v: &str) -> Vec<u8> {
    frame(b'S', format!("{k}\0{v}\0").as_bytes())
}

fn ready(status: u8) -> Vec<u8> {
    frame(b'Z', &[status])
}

/// What follows AuthenticationOk: ParameterStatus, BackendKeyData, ReadyForQuery.
fn login_tail(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in [
        ("server_version", "15.0 (fake)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        out.extend(parameter_status(k, v));
    }
    let mut key = (FAKE_PID + n as i32).to_be_bytes().to_vec();
    key.extend_from_slice(&FAKE_SECRET.to_be_bytes());
    out.extend(frame(b'K', &key));
    out.extend(ready(b'I'));
    out
}

/// RowDescription of text columns.
fn row_description(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        b.extend_from_slice(c.as_bytes());
        b.push(0);
        b.extend_from_slice(&0u32.to_be_bytes()); // table
        b.extend_from_slice(&0u16.to_be_bytes()); // column
        b.extend_from_slice(&25u32.to_be_bytes()); // text
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes()); // text format
    }
    frame(b'T', &b)
}

fn data_row(vals: &[&str]) -> Vec<u8> {
    let mut b = (vals.len() as u16).to_be_bytes().to_vec();
    for v in vals {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    frame(b'D', &b)
}

fn command_complete(tag: &str) -> Vec<u8> {
    frame(b'C', format!("{tag}\0").as_bytes())
}

/// ErrorResponse with severity `severity`, SQLSTATE `code` and message `msg`.
fn error_response(severity: &str, code: &str, msg: &str) -> Vec<u8> {
    frame(b'E', format!("S{severity}\0V{severity}\0C{code}\0M{msg}\0\0").as_bytes())
}

/// A well-formed answer to a simple query (without the ReadyForQuery): one row `1` for a
/// SELECT, a command tag otherwise.
fn answer(sql: &str) -> Vec<u8> {
    let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    match first.as_str() {
        "SELECT" => [row_description(&["?column?"]), data_row(&["1"]), command_complete("SELECT 1")].concat(),
        "" => frame(b'I', &[]),
        "DISCARD" => command_complete("DISCARD ALL"),
        other => command_complete(other),
    }
}

// === the pooler and its clients ===

/// Client-side role (trust: in the auth_file, no password asked).
const CLIENT: &str = "alice";
/// Client-visible database served by the fake.
const DB: &str = "hostile";

/// A pgsluice serving [`DB`] from `fake` (trust for clients, a fixed server login with a
/// plaintext password, no TLS to the fake), with `general` and `db_extra` lines.
async fn pooler_for(fake: &Fake, general: &[&str], db_extra: &[&str]) -> Pooler {
    let mut b = pooler()
        .general("auth_type = \"trust\"")
        .general("server_connect_timeout = \"3s\"")
        .general("query_wait_timeout = \"5s\"")
        .general("circuit_breaker_threshold = 100")
        .user(CLIENT, "unused");
    for g in general {
        b = b.general(g);
    }
    b.section(&format!(
        "[databases.{DB}]\nhosts = [\"127.0.0.1:{}\"]\nuser = \"fakeuser\"\npassword = \"{SERVER_PASSWORD}\"\nserver_tls_sslmode = \"disable\"\npool_size = 2\n{}\n",
        fake.port,
        db_extra.join("\n")
    ))
    .start()
    .await
}

/// Runs `f` for at most `limit`; returns its output and how long it took.
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(limit, f).await {
        Ok(v) => (v, started.elapsed()),
        Err(_) => panic!("{what}: nothing within {limit:?} (a hang)"),
    }
}

/// A login through `p` that must fail: the client gets `code` with a human message naming
/// `words`, within `within`; the fake sees its connection closed; the next client is served
/// by a new, well-behaved connection.
async fn refused_at_login(p: &Pooler, fake: &Fake, code: &str, words: &[&str], within: Duration) {
    let (got, msg, took) = login_fails(p, within + Duration::from_secs(1)).await;
    assert_eq!(got, code, "{msg}");
    assert_human(&msg, words);
    assert!(took < within, "took {took:?}");
    fake.closed(0).await;
    next_client_is_served(p, fake, 1).await;
}

/// A client login that must fail within `limit`: its SQLSTATE and message.
async fn login_fails(p: &Pooler, limit: Duration) -> (String, String, Duration) {
    let (r, took) = within(limit, "login through pgsluice", p.try_connect(CLIENT, "x", DB)).await;
    let e = r.must_fail("the login must fail");
    let code = sqlstate(&e).unwrap_or_else(|| panic!("no ErrorResponse, only {e}"));
    (code, message(&e), took)
}

/// A human message: says what pgsluice could not do and is plain text.
fn assert_human(msg: &str, words: &[&str]) {
    assert!(msg.starts_with("pgsluice") || msg.contains("server"), "not pgsluice's error: {msg:?}");
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not say {w:?}");
    }
    assert!(msg.len() < 1024, "message of {} bytes", msg.len());
    assert!(!msg.chars().any(|c| c.is_control()), "control characters in {msg:?}");
}

/// A second client on the same pool gets a fresh connection (connection `n` of the fake,
/// which must behave) and a correct answer.
async fn next_client_is_served(p: &Pooler, fake: &Fake, n: usize) {
    // (Past the pool's connect backoff after a failure: 100 ms.)
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (c, _) = within(Duration::from_secs(5), "second client login", p.try_connect(CLIENT, "x", DB)).await;
    let c = c.unwrap_or_else(|e| panic!("second client: {}", short(&e)));
    let (v, _) = within(Duration::from_secs(5), "second client query", scalar(&c, "select 1")).await;
    assert_eq!(v.unwrap_or_else(|e| panic!("second client query: {}", short(&e))).as_deref(), Some("1"));
    assert_eq!(fake.connections(), n + 1, "the second client got a fresh server connection, not the bad one");
}

// === login ===

/// Script: connection 0 runs `bad` (then must be closed), later ones behave.
fn first_misbehaves<B, Fut>(bad: B) -> impl Fn(Peer) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    B: Fn(Peer) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    move |peer: Peer| {
        let bad = bad.clone();
        Box::pin(async move {
            if peer.n == 0 {
                bad(peer).await
            } else {
                peer.serve().await
            }
        })
    }
}

#[tokio::test]
async fn cleartext_password_request_is_refused_without_tls() {
    // Default server_auth_methods: pgsluice has the password (plaintext in the database
    // section), but a server without TLS asking for it in clear is refused (libpq's
    // require_auth, PgBouncer would send it): the password never crosses the wire.
    let fake = Fake::start(first_misbehaves(|mut peer: Peer| async move {
        peer.send(&auth(3, &[])).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let (code, msg, took) = login_fails(&p, Duration::from_secs(2)).await;
    assert_eq!(code, "28000", "{msg}");
    assert_human(&msg, &["cleartext password", "without TLS", "server_auth_methods"]);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    fake.closed(0).await;
    let rec = fake.record(0);
    assert!(!rec.sent_after.contains(&b'p'), "pgsluice answered the cleartext request: {:?}", rec.sent_after);
    assert!(!String::from_utf8_lossy(&rec.sent_after).contains(SERVER_PASSWORD));
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn cleartext_password_is_sent_when_allowed() {
    // With `password` in server_auth_methods the server gets exactly the configured password.
    let seen = Arc::new(Mutex::new(None::<String>));
    let fake = {
        let seen = seen.clone();
        Fake::start(move |mut peer: Peer| {
            let seen = seen.clone();
            async move {
                peer.send(&auth(3, &[])).await;
                let Some((b'p', body)) = peer.read_msg().await else { return };
                let pw = String::from_utf8_lossy(&body[..body.len().saturating_sub(1)]).into_owned();
                let ok = pw == SERVER_PASSWORD;
                *seen.lock().unwrap() = Some(pw);
                if ok {
                    peer.serve_after_auth().await;
                } else {
                    peer.send(&error_response("FATAL", "28P01", "password authentication failed")).await;
                }
            }
        })
        .await
    };
    let p = pooler_for(&fake, &[], &["server_auth_methods = \"password\""]).await;
    let (c, _) = within(Duration::from_secs(5), "login", p.try_connect(CLIENT, "x", DB)).await;
    let c = c.unwrap_or_else(|e| panic!("login: {}", short(&e)));
    assert_eq!(simple_one(&c, "select 1").await, "1");
    assert_eq!(seen.lock().unwrap().as_deref(), Some(SERVER_PASSWORD));
}

impl Peer {
    /// After the authentication exchange: AuthenticationOk and the rest of a good login,
    /// then behaves.
    async fn serve_after_auth(mut self) {
        let mut out = auth(0, &[]);
        out.extend(login_tail(self.n));
        self.send(&out).await;
        while self.serve_until_marker().await {
            let mut out = answer("select 1");
            out.extend(ready(b'I'));
            self.send(&out).await;
        }
    }

    /// Offers SCRAM-SHA-256 and reads the SASLInitialResponse; returns the client nonce.
    async fn start_scram(&mut self) -> Option<String> {
        self.send(&auth(10, b"SCRAM-SHA-256\0\0")).await;
        let (tag, body) = self.read_msg().await?;
        assert_eq!(tag, b'p', "expected SASLInitialResponse");
        let text = String::from_utf8_lossy(&body).into_owned();
        let nonce = text.split(",r=").nth(1)?.to_string();
        Some(nonce)
    }
}

#[tokio::test]
async fn scram_iteration_count_of_u32_max_is_refused_at_once() {
    // 4,294,967,295 PBKDF2 rounds would take pgsluice hours of CPU per attempt. The SCRAM
    // client refuses any count above MAX_SERVER_ITERATIONS (1,000,000) before the first round.
    let fake = Fake::start(first_misbehaves(|mut peer: Peer| async move {
        let Some(nonce) = peer.start_scram().await else { return };
        let first = format!("r={nonce}fakeservernonce,s=c2FsdHNhbHRzYWx0c2FsdA==,i=4294967295");
        peer.send(&auth(11, first.as_bytes())).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let (code, msg, took) = login_fails(&p, Duration::from_secs(2)).await;
    assert_eq!(code, "28000", "{msg}");
    assert_human(&msg, &["SCRAM", "4294967295"]);
    assert!(took < Duration::from_millis(500), "refusing took {took:?}");
    assert!(fake.closed(0).await < Duration::from_millis(500));
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn scram_iteration_count_at_the_cap_is_still_computed() {
    // The cap's cost: 1,000,000 rounds (what a hostile server can make pgsluice spend per
    // connection attempt, off the async workers) are computed, then the server's missing
    // proof ends the login.
    let answered = Arc::new(Mutex::new(None::<Duration>));
    let fake = {
        let answered = answered.clone();
        Fake::start(move |mut peer: Peer| {
            let answered = answered.clone();
            async move {
                let Some(nonce) = peer.start_scram().await else { return };
                let first = format!("r={nonce}fakeservernonce,s=c2FsdHNhbHRzYWx0c2FsdA==,i=1000000");
                peer.send(&auth(11, first.as_bytes())).await;
                let started = Instant::now();
                if let Some((b'p', _)) = peer.read_msg().await {
                    *answered.lock().unwrap() = Some(started.elapsed());
                }
                peer.send(&error_response("FATAL", "28P01", "password authentication failed")).await;
                peer.expect_closed().await;
            }
        })
        .await
    };
    let p = pooler_for(&fake, &["server_connect_timeout = \"20s\"", "query_wait_timeout = \"25s\""], &[]).await;
    let (code, msg, _) = login_fails(&p, Duration::from_secs(25)).await;
    assert_eq!(code, "28P01", "{msg}");
    let took = answered.lock().unwrap().expect("pgsluice answered the server-first-message");
    eprintln!("PBKDF2 with 1,000,000 iterations took {took:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn error_response_in_the_middle_of_sasl_reaches_the_client() {
    let fake = Fake::start(first_misbehaves(|mut peer: Peer| async move {
        if peer.start_scram().await.is_none() {
            return;
        }
        peer.send(&error_response("FATAL", "28P01", "password authentication failed for user \"fakeuser\"")).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    refused_at_login(&p, &fake, "28P01", &["password authentication failed"], Duration::from_secs(1)).await;
}

#[tokio::test]
async fn malformed_error_response_at_login_gets_a_valid_sqlstate() {
    // An ErrorResponse with no SQLSTATE, or one that is not five digits/capitals, must not
    // reach the client as its SQLSTATE; an empty or huge message is replaced/bounded.
    for (n, body) in [
        b"SFATAL\0\0".to_vec(),
        format!("SFATAL\0Cnot-a-sqlstate\0M{}\0\0", "x".repeat(100_000)).into_bytes(),
        b"SFATAL\0C28\x01\x02\0Mbad\nline\0\0".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let fake = Fake::start(move |mut peer: Peer| {
            let body = body.clone();
            async move {
                peer.send(&frame(b'E', &body)).await;
                peer.expect_closed().await;
            }
        })
        .await;
        let p = pooler_for(&fake, &[], &[]).await;
        let (code, msg, took) = login_fails(&p, Duration::from_secs(2)).await;
        assert_eq!(code, "08P01", "case {n}: {msg}");
        assert_human(&msg, &[]);
        assert!(took < Duration::from_secs(1), "case {n}: took {took:?}");
        fake.closed(0).await;
    }
}

#[tokio::test]
async fn authentication_ok_before_the_server_proved_itself_is_refused() {
    // A SCRAM server must prove it knows the password (SASLFinal, verified by pgsluice)
    // before AuthenticationOk; one that skips it may be an impostor that never had the
    // verifier (libpq refuses this too).
    use pgsluice::auth::scram::{ScramServer, Verifier};
    // (Derived once, before any login is timed.)
    let verifier = Verifier::from_password(SERVER_PASSWORD, b"0123456789abcdef", 4096);
    let fake = Fake::start(first_misbehaves(move |mut peer: Peer| {
        let verifier = verifier.clone();
        async move {
            let mut server = ScramServer::from_verifier(verifier);
            peer.send(&auth(10, b"SCRAM-SHA-256\0\0")).await;
            let Some((b'p', body)) = peer.read_msg().await else { return };
            // mechanism\0, Int32 length, data.
            let Some(at) = body.iter().position(|&b| b == 0) else { return };
            let (mechanism, data) = (String::from_utf8_lossy(&body[..at]).into_owned(), &body[at + 5..]);
            let Ok(first) = server.client_first(&mechanism, data) else { return };
            peer.send(&auth(11, &first)).await;
            let Some((b'p', _final)) = peer.read_msg().await else { return };
            // No SASLFinal: straight to AuthenticationOk.
            let mut out = auth(0, &[]);
            out.extend(login_tail(peer.n));
            peer.send(&out).await;
            peer.expect_closed().await;
        }
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    refused_at_login(&p, &fake, "28000", &["SCRAM"], Duration::from_secs(2)).await;
}

#[tokio::test]
async fn negotiate_protocol_version_from_the_server_is_refused() {
    // pgsluice asks for protocol 3.0 with no `_pq_` options: a NegotiateProtocolVersion has
    // nothing legitimate to say (libpq fails the connection on it too).
    let fake = Fake::start(first_misbehaves(|mut peer: Peer| async move {
        let mut body = 0i32.to_be_bytes().to_vec();
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(b"_pq_.hostile\0");
        let mut out = frame(b'v', &body);
        out.extend(auth(0, &[]));
        out.extend(login_tail(peer.n));
        peer.send(&out).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    refused_at_login(&p, &fake, "08006", &["NegotiateProtocolVersion", "_pq_.hostile"], Duration::from_secs(1)).await;
}

#[tokio::test]
async fn garbage_during_login_fails_fast() {
    // server_connect_timeout is 3 s: each case must fail well before it (no waiting out a
    // timer for bytes that will never make sense).
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        // A web server: 'H' then a length of 0x54_54_50_2f.
        ("http", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(), false),
        // A length below the header's own 4 bytes.
        ("short length", vec![b'R', 0, 0, 0, 2], false),
        // A well-framed message of a type no server sends at login.
        ("unknown type", frame(b'!', b"junk"), false),
        // A DataRow before authentication.
        ("data row", data_row(&["1"]), false),
        // A ReadyForQuery before authentication.
        ("early ready", ready(b'I'), false),
        // An authentication request of an unknown method.
        ("unknown auth", auth(99, &[]), false),
        // The server closes as soon as it has read the StartupMessage.
        ("closed at once", Vec::new(), true),
        // Half an Authentication message, then the server closes.
        ("truncated, closed", auth(0, &[])[..6].to_vec(), true),
        // AuthenticationOk then a BackendKeyData of 3 bytes.
        ("short key", [auth(0, &[]), frame(b'K', &[1, 2, 3])].concat(), false),
        // No Authentication message at all: straight to ParameterStatus, key, ready (which
        // would slip past server_auth_methods' judgement of "none").
        ("no authentication", login_tail(0), false),
        // SCRAM offered twice (each exchange would cost a PBKDF2 run); then silence.
        ("sasl twice", [auth(10, b"SCRAM-SHA-256\0\0"), auth(10, b"SCRAM-SHA-256\0\0")].concat(), false),
        // md5 asked twice.
        ("md5 twice", [auth(5, b"salt"), auth(5, b"salt")].concat(), false),
        // An authentication request after AuthenticationOk.
        ("auth after ok", [auth(0, &[]), auth(3, &[])].concat(), false),
    ];
    let mut failed = Vec::new();
    for (name, bytes, close) in cases {
        let fake = Fake::start(move |mut peer: Peer| {
            let bytes = bytes.clone();
            async move {
                if peer.n > 0 {
                    return peer.serve().await;
                }
                peer.send(&bytes).await;
                if close {
                    let _ = peer.s.shutdown().await;
                }
                peer.expect_closed().await;
            }
        })
        .await;
        let p = pooler_for(&fake, &[], &[]).await;
        let (r, took) = within(Duration::from_secs(5), name, p.try_connect(CLIENT, "x", DB)).await;
        let Err(e) = r else {
            failed.push(format!("{name}: the login succeeded"));
            continue;
        };
        let (code, msg) = (sqlstate(&e).unwrap_or_default(), message(&e));
        if !(code == "08006" || code == "28000") || took >= Duration::from_secs(1) {
            failed.push(format!("{name}: {code:?} {msg:?} after {took:?}"));
            continue;
        }
        assert_human(&msg, &[]);
        fake.closed(0).await;
        next_client_is_served(&p, &fake, 1).await;
    }
    assert!(failed.is_empty(), "cases that did not fail fast with 08006/28000:\n{}", failed.join("\n"));
}

#[tokio::test]
async fn a_flood_of_parameter_status_at_login_is_cut_off() {
    // 8 MiB of distinct ParameterStatus messages (each well under the 1 MiB message limit),
    // then a normal end of login: pgsluice stops reading at 4 MiB instead of recording them
    // all (for as long as server_connect_timeout lets the server go on).
    let fake = Fake::start(first_misbehaves(|mut peer: Peer| async move {
        let value = "v".repeat(1000);
        let mut out = auth(0, &[]);
        for i in 0..8_000 {
            out.extend(parameter_status(&format!("flood_{i}"), &value));
        }
        out.extend(login_tail(peer.n));
        peer.send(&out).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    refused_at_login(&p, &fake, "08006", &["during login"], Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_server_that_never_answers_the_login_times_out() {
    // Accepts the connection, reads the StartupMessage, and then says nothing (or stops half
    // way through the login): server_connect_timeout (1 s here) bounds the whole login.
    for partial in [false, true] {
        let fake = Fake::start(first_misbehaves(move |mut peer: Peer| async move {
            if partial {
                peer.send(&[auth(0, &[]), parameter_status("server_version", "15")].concat()).await;
                peer.send(&frame(b'K', &[0; 8])[..7]).await;
            }
            peer.expect_closed().await;
        }))
        .await;
        let p = pooler_for(&fake, &["server_connect_timeout = \"1s\""], &[]).await;
        let (code, msg, took) = login_fails(&p, Duration::from_secs(4)).await;
        assert_eq!(code, "08006", "{msg}");
        assert_human(&msg, &["timeout"]);
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(2), "took {took:?}");
        assert!(fake.closed(0).await < Duration::from_secs(2));
        next_client_is_served(&p, &fake, 1).await;
    }
}

// === mid-query ===

/// Script: connection 0 logs in, serves until the marker query, then runs `bad`; later
/// connections behave.
fn misbehaves_mid_query<B, Fut>(bad: B) -> impl Fn(Peer) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    B: Fn(Peer) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    first_misbehaves(move |mut peer: Peer| {
        let bad = bad.clone();
        async move {
            peer.until_marker().await;
            bad(peer).await
        }
    })
}

/// A client whose marker query must fail within `limit`: SQLSTATE, message, time.
async fn marker_fails(p: &Pooler, limit: Duration, case: &str) -> (String, String, Duration) {
    let (c, _) = within(Duration::from_secs(5), "login", p.try_connect(CLIENT, "x", DB)).await;
    let c = c.unwrap_or_else(|e| panic!("login: {}", short(&e)));
    assert_eq!(simple_one(&c, "select 1").await, "1", "the fake behaves before the marker");
    let (r, took) = within(limit, "the marker query", c.simple_query(MARKER)).await;
    let e = r.must_fail(&format!("{case}: the marker query must fail"));
    let code = sqlstate(&e).unwrap_or_else(|| panic!("no ErrorResponse, only {e}"));
    (code, message(&e), took)
}

#[tokio::test]
async fn garbage_in_the_middle_of_a_result_ends_with_an_error() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad length", [row_description(&["x"]), vec![b'D', 0, 0, 0, 1]].concat()),
        ("over 1 GiB", [row_description(&["x"]), vec![b'D', 0x7f, 0xff, 0xff, 0xff]].concat()),
        ("ready, 3-byte status", [row_description(&["x"]), frame(b'Z', b"III")].concat()),
        ("two readys", [command_complete("SELECT 0"), ready(b'I'), ready(b'I')].concat()),
    ];
    for (name, bytes) in cases {
        let fake = Fake::start(misbehaves_mid_query(move |mut peer: Peer| {
            let bytes = bytes.clone();
            async move {
                peer.send(&bytes).await;
                peer.expect_closed().await;
            }
        }))
        .await;
        let p = pooler_for(&fake, &[], &[]).await;
        let (code, msg, took) = marker_fails(&p, Duration::from_secs(3), name).await;
        assert_eq!(code, "08006", "{name}: {msg}");
        assert_human(&msg, &["server"]);
        assert!(took < Duration::from_secs(1), "{name}: took {took:?}");
        assert!(fake.closed(0).await < Duration::from_secs(1), "{name}");
        next_client_is_served(&p, &fake, 1).await;
    }
}

#[tokio::test]
async fn a_ready_for_query_with_an_invalid_status_is_a_protocol_error() {
    let fake = Fake::start(misbehaves_mid_query(|mut peer: Peer| async move {
        peer.send(&[command_complete("SELECT 0"), ready(b'?')].concat()).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let (code, msg, took) = marker_fails(&p, Duration::from_secs(3), "status '?'").await;
    assert_eq!(code, "08006", "{msg}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(fake.closed(0).await < Duration::from_secs(1));
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn garbage_after_ready_for_query_never_reaches_the_next_client() {
    // The server answers correctly, then sends bytes nobody asked for while idle in the
    // pool (transaction mode). The next check-out must not take it.
    let fake = Fake::start(misbehaves_mid_query(|mut peer: Peer| async move {
        let mut out = answer("select 1");
        out.extend(ready(b'I'));
        peer.send(&out).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        peer.send(&data_row(&["stale"])).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let c = p.try_connect(CLIENT, "x", DB).await.unwrap_or_else(|e| panic!("login: {}", short(&e)));
    assert_eq!(simple_one(&c, "select 1").await, "1");
    let (v, _) = within(Duration::from_secs(3), "marker", scalar(&c, MARKER)).await;
    assert_eq!(v.unwrap().as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same client and a new one: both served by a fresh connection.
    let (v, _) = within(Duration::from_secs(3), "query after the garbage", scalar(&c, "select 1")).await;
    assert_eq!(v.unwrap_or_else(|e| panic!("{}", short(&e))).as_deref(), Some("1"));
    assert_eq!(fake.connections(), 2, "a fresh connection replaced the one that sent garbage");
    assert!(fake.closed(0).await < Duration::from_secs(2));
    let c2 = p.try_connect(CLIENT, "x", DB).await.unwrap_or_else(|e| panic!("login: {}", short(&e)));
    assert_eq!(simple_one(&c2, "select 1").await, "1");
    assert_eq!(fake.connections(), 2);
}

/// A raw client logged in to [`DB`] through `p` (trust), after its ReadyForQuery.
async fn raw_client(p: &Pooler) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&startup_packet(PROTOCOL_3_0, &[("user", CLIENT), ("database", DB)])).await.unwrap();
    loop {
        let m = read_msg_within(&mut s, Duration::from_secs(5)).await.expect("pgsluice closed during login");
        assert_ne!(m.tag, b'E', "login failed: {m:?}");
        if m.tag == b'Z' {
            return s;
        }
    }
}

/// Reads what pgsluice sends until it closes the connection (at most `limit`).
async fn read_to_end(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got.extend_from_slice(&chunk[..k]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "pgsluice did not close the client within {limit:?} ({} bytes so far)", got.len());
    got
}

#[tokio::test]
async fn a_server_closing_half_way_through_a_data_row() {
    // The client has the first 10 bytes of a 40-byte DataRow when the server goes away. No
    // ErrorResponse can be placed inside a message: pgsluice must close the client without
    // sending anything the client would read as the rest of the row.
    let row = data_row(&["0123456789012345678901234567890"]);
    let cut = 10;
    let sent = [row_description(&["x"]), row[..cut].to_vec()].concat();
    let fake = {
        let sent = sent.clone();
        Fake::start(misbehaves_mid_query(move |mut peer: Peer| {
            let sent = sent.clone();
            async move {
                peer.send(&sent).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(peer);
            }
        }))
        .await
    };
    let p = pooler_for(&fake, &[], &[]).await;
    let mut s = raw_client(&p).await;
    s.write_all(&query(MARKER)).await.unwrap();
    let started = Instant::now();
    let got = read_to_end(&mut s, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(got, sent, "the client must get exactly what the server sent, then the end of the connection");
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn a_server_closing_between_messages_of_a_result_gives_an_error() {
    // At a message boundary the client gets a clean 08006 (its transaction outcome is
    // unknown), and its session goes on (transaction mode, no transaction open).
    let fake = Fake::start(misbehaves_mid_query(|mut peer: Peer| async move {
        peer.send(&[row_description(&["x"]), data_row(&["1"])].concat()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(peer);
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let (code, msg, took) = marker_fails(&p, Duration::from_secs(3), "").await;
    assert_eq!(code, "08006", "{msg}");
    assert_human(&msg, &["server"]);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn a_huge_row_description_is_streamed_not_buffered() {
    // A RowDescription declaring 256 MiB: pgsluice relays it as it arrives (the relay reads
    // ahead at most READ_AHEAD per direction) instead of holding it whole. The fake sends
    // 4 MiB of it and waits: the client must receive nearly all of that before any more
    // exists; then the server goes away and the client is closed.
    const DECLARED: u32 = 256 << 20;
    const SENT: usize = 4 << 20;
    let fake = Fake::start(misbehaves_mid_query(|mut peer: Peer| async move {
        let mut head = vec![b'T'];
        head.extend_from_slice(&DECLARED.to_be_bytes());
        head.extend_from_slice(&u16::MAX.to_be_bytes());
        head.resize(SENT, b'a');
        peer.send(&head).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(peer);
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let mut s = raw_client(&p).await;
    s.write_all(&query(MARKER)).await.unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let (_, took) = within(Duration::from_secs(2), "the streamed RowDescription", async {
        while got < SENT {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
    })
    .await;
    assert_eq!(got, SENT, "all the server sent so far reached the client");
    assert!(took < Duration::from_millis(1500), "relayed while the server still held the rest: {took:?}");
    // (What pgsluice writes after the torn message: see
    // `a_server_closing_half_way_through_a_data_row`.)
    read_to_end(&mut s, Duration::from_secs(4)).await;
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn a_row_description_larger_than_the_inspection_limit_is_refused() {
    // When pgsluice must read a RowDescription whole (the answer to a Describe of a named
    // statement it tracks, whose shape it records), it refuses one over 1 MiB: the client
    // gets 08006 at a message boundary, the connection is closed.
    let fake = Fake::start(first_misbehaves(|mut peer: Peer| async move {
        peer.login_ok().await;
        while let Some((tag, body)) = peer.read_msg().await {
            match tag {
                b'Q' => {
                    let sql = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned();
                    peer.send(&[answer(&sql), ready(b'I')].concat()).await;
                }
                b'P' => peer.send(&frame(b'1', &[])).await,
                b'D' => {
                    // 40,000 fields of ~40 bytes: ~1.6 MiB.
                    let cols: Vec<String> = (0..40_000).map(|i| format!("col_{i:012}")).collect();
                    let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
                    peer.send(&[frame(b't', &[0, 0]), row_description(&cols)].concat()).await;
                    return peer.expect_closed().await;
                }
                b'S' => peer.send(&ready(b'I')).await,
                _ => {}
            }
        }
    }))
    .await;
    let p = pooler_for(&fake, &[], &[]).await;
    let (c, _) = within(Duration::from_secs(5), "login", p.try_connect(CLIENT, "x", DB)).await;
    let c = c.unwrap_or_else(|e| panic!("login: {}", short(&e)));
    let (r, took) = within(Duration::from_secs(3), "prepare", c.prepare("select 1")).await;
    let e = r.must_fail("the oversized RowDescription must be refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{}", short(&e));
    assert_human(&message(&e), &["server"]);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(fake.closed(0).await < Duration::from_secs(1));
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn a_server_that_stops_answering_mid_query_hits_query_timeout() {
    // Silence after the query, or after part of its result: query_timeout (1 s) ends it
    // with 57014, the fake gets a CancelRequest for its backend, and the connection closes.
    for partial in [false, true] {
        let fake = Fake::start(misbehaves_mid_query(move |mut peer: Peer| async move {
            if partial {
                peer.send(&[row_description(&["x"]), data_row(&["1"])].concat()).await;
            }
            peer.expect_closed().await;
        }))
        .await;
        let p = pooler_for(&fake, &["query_timeout = \"1s\""], &[]).await;
        let (code, msg, took) = marker_fails(&p, Duration::from_secs(4), "").await;
        assert_eq!(code, "57014", "{msg}");
        assert!(msg.contains("query_timeout"), "{msg}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(2), "took {took:?}");
        assert!(fake.closed(0).await < Duration::from_secs(2));
        let cancelled = eventually(Duration::from_secs(2), || fake.cancels().contains(&(FAKE_PID, FAKE_SECRET))).await;
        assert!(cancelled, "CancelRequest for the stuck backend: {:?}", fake.cancels());
        next_client_is_served(&p, &fake, 1).await;
    }
}

#[tokio::test]
async fn startup_parameters_are_what_pgsluice_asked_for() {
    // Sanity of the fake itself: pgsluice logs in as the fixed user, to the database name.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let fake = {
        let seen = seen.clone();
        Fake::start(move |peer: Peer| {
            seen.lock()
                .unwrap()
                .push((peer.param("user").map(str::to_string), peer.param("database").map(str::to_string)));
            peer.serve()
        })
        .await
    };
    let p = pooler_for(&fake, &[], &[]).await;
    let c = p.try_connect(CLIENT, "x", DB).await.unwrap_or_else(|e| panic!("login: {}", short(&e)));
    assert_eq!(simple_one(&c, "select 1").await, "1");
    assert_eq!(seen.lock().unwrap()[0], (Some("fakeuser".to_string()), Some(DB.to_string())));
}

#[tokio::test]
async fn a_bad_answer_to_the_reset_query_keeps_the_server_out_of_the_pool() {
    // Session mode: when a client leaves, pgsluice runs `DISCARD ALL` before the server may
    // serve another client. A server that answers it still inside a transaction, or not at
    // all (server_connect_timeout, 1 s here, bounds the wait), is closed instead.
    for silent in [false, true] {
        let fake = Fake::start(first_misbehaves(move |mut peer: Peer| async move {
            peer.login_ok().await;
            while let Some((tag, body)) = peer.read_msg().await {
                if tag != b'Q' {
                    continue;
                }
                let sql = String::from_utf8_lossy(&body[..body.len() - 1]).into_owned();
                if sql.to_ascii_uppercase().starts_with("DISCARD") {
                    if !silent {
                        peer.send(&[command_complete("DISCARD ALL"), ready(b'T')].concat()).await;
                    }
                    return peer.expect_closed().await;
                }
                peer.send(&[answer(&sql), ready(b'I')].concat()).await;
            }
        }))
        .await;
        let p = pooler_for(&fake, &["pool_mode = \"session\"", "server_connect_timeout = \"1s\""], &[]).await;
        let c = p.try_connect(CLIENT, "x", DB).await.unwrap_or_else(|e| panic!("login: {}", short(&e)));
        assert_eq!(simple_one(&c, "select 1").await, "1");
        drop(c);
        let closed = fake.closed(0).await;
        assert!(closed < Duration::from_millis(if silent { 2000 } else { 500 }), "silent {silent}: {closed:?}");
        next_client_is_served(&p, &fake, 1).await;
    }
}

#[tokio::test]
async fn a_message_while_no_request_is_pending_closes_the_server() {
    // Session mode: the client holds the server between requests. A DataRow out of the blue
    // is a protocol violation: the client gets 08006, the server is closed (not reset and
    // pooled), and the next client gets a fresh one.
    let fake = Fake::start(misbehaves_mid_query(|mut peer: Peer| async move {
        peer.send(&[answer("select 1"), ready(b'I')].concat()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        peer.send(&data_row(&["stray"])).await;
        peer.expect_closed().await;
    }))
    .await;
    let p = pooler_for(&fake, &["pool_mode = \"session\""], &[]).await;
    let mut s = raw_client(&p).await;
    s.write_all(&query(MARKER)).await.unwrap();
    let mut tags = Vec::new();
    let error = loop {
        let m = read_msg_within(&mut s, Duration::from_secs(3)).await.expect("pgsluice closed without an error");
        if m.tag == b'E' {
            break m;
        }
        tags.push(m.tag);
    };
    assert_eq!(tags, b"TDCZ", "the answer, then the error");
    assert_eq!(error.code(), "08006", "{error:?}");
    assert!(fake.closed(0).await < Duration::from_secs(1));
    next_client_is_served(&p, &fake, 1).await;
}

#[tokio::test]
async fn query_timeout_half_way_through_a_data_row_closes_without_a_word() {
    // As `a_server_closing_half_way_through_a_data_row`, but the server goes silent instead
    // of closing: query_timeout (1 s) ends it, and no ErrorResponse may follow the torn row.
    let row = data_row(&["0123456789012345678901234567890"]);
    let sent = [row_description(&["x"]), row[..10].to_vec()].concat();
    let fake = {
        let sent = sent.clone();
        Fake::start(misbehaves_mid_query(move |mut peer: Peer| {
            let sent = sent.clone();
            async move {
                peer.send(&sent).await;
                peer.expect_closed().await;
            }
        }))
        .await
    };
    let p = pooler_for(&fake, &["query_timeout = \"1s\""], &[]).await;
    let mut s = raw_client(&p).await;
    s.write_all(&query(MARKER)).await.unwrap();
    let started = Instant::now();
    let got = read_to_end(&mut s, Duration::from_secs(4)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(got, sent, "the client must get exactly what the server sent, then the end of the connection");
    assert!(fake.closed(0).await < Duration::from_secs(2));
    next_client_is_served(&p, &fake, 1).await;
}
