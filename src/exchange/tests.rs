use super::sim::Sim;
use super::*;
use crate::prepared::{KnownStatements, Limits};
use crate::protocol::split_frame;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    msg(b'B', format!("{portal}\0{stmt}\0\0\0\0\0\0\0").as_bytes())
}

fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The client prepares `name` (`Parse` + `Sync`) and the server accepts it; the bytes
/// exchanged are consumed.
trait Prepare {
    fn prepare(&mut self, name: &str, sql: &str);
}

impl Prepare for Sim {
    fn prepare(&mut self, name: &str, sql: &str) {
        self.client(&cat(&[parse(name, sql), sync()])).unwrap();
        self.sent();
        self.server(&cat(&[msg(b'1', b""), msg(b'Z', b"I")])).unwrap();
        self.received();
    }
}

#[test]
fn fuzz_logic_survives_the_test_messages() {
    // The fuzz target's entry point over inputs built from this file's messages, in both
    // modes: no panic.
    let chunks = [
        cat(&[parse("s1", "select 1"), bind("", "s1"), execute(), sync()]),
        cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")]),
        msg(b'Q', b"select 1\0"),
        cat(&[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")]),
    ];
    for mode in 0..4u8 {
        let mut data = vec![mode];
        for (i, c) in chunks.iter().enumerate() {
            for piece in c.chunks(100) {
                data.push(if i % 2 == 1 { 0x80 } else { 0 } | (piece.len() as u8 - 1));
                data.extend_from_slice(piece);
            }
        }
        super::fuzz_logic(&data);
        // Truncated at every length.
        for n in 0..data.len() {
            super::fuzz_logic(&data[..n]);
        }
    }
}

/// The tags and bodies of a byte stream.
fn frames(mut b: &[u8]) -> Vec<(char, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((tag, body, rest)) = split_frame(b, 1 << 30).unwrap() {
        out.push((tag as char, body.to_vec()));
        b = rest;
    }
    assert!(b.is_empty(), "trailing partial frame");
    out
}

fn tags(b: &[u8]) -> String {
    frames(b).into_iter().map(|(t, _)| t).collect()
}

/// The statement name in a Parse/Bind body (Bind: after the portal).
fn stmt_name(tag: char, body: &[u8]) -> String {
    let body = if tag == 'B' { &body[body.iter().position(|&b| b == 0).unwrap() + 1..] } else { body };
    let end = body.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(body[..end].to_vec()).unwrap()
}

#[test]
fn simple_query_is_one_request() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    assert_eq!(sim.x.st.txn.pending, 1);
    assert_eq!(tags(&sim.sent()), "Q");
    sim.server(&cat(&[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "CZ");
    assert!(sim.releasable());
}

#[test]
fn extended_batch_counts_syncs_and_waits_for_them() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("", "select 1"), bind("", ""), execute()])).unwrap();
    assert!(sim.x.st.txn.unsynced);
    sim.client(&cat(&[sync(), sync()])).unwrap();
    assert_eq!(sim.x.st.txn.pending, 2);
    assert!(!sim.x.st.txn.unsynced);
    assert_eq!(tags(&sim.sent()), "PBESS", "unnamed statements pass untouched");
}

#[test]
fn partial_messages_wait_for_header_and_stream_bodies() {
    let mut sim = Sim::default();
    let big = msg(b'd', &[7u8; 1000]);
    sim.client(&big[..3]).unwrap();
    assert_eq!(sim.x.c.fwd, 0);
    sim.client(&big[3..100]).unwrap();
    assert_eq!((sim.x.c.fwd, sim.x.c.skip), (100, big.len() - 100));
    sim.client(&big[100..]).unwrap();
    assert_eq!((sim.x.c.fwd, sim.x.c.skip), (big.len(), 0));
}

#[test]
fn terminate_is_swallowed_and_ends_scanning() {
    let mut sim = Sim::default();
    let q = msg(b'Q', b"select 1\0");
    sim.client(&cat(&[q.clone(), msg(b'X', b""), msg(b'Q', b"select 2\0")])).unwrap();
    assert!(sim.x.st.txn.terminated);
    assert_eq!((sim.cbuf.len(), sim.x.c.fwd, sim.x.st.txn.pending), (q.len(), q.len(), 1));
}

#[test]
fn rejects_unknown_tags_and_bad_lengths() {
    assert_eq!(Sim::default().client(&msg(b'?', b"")), Err(protocol::Error::UnexpectedTag(b'?')));
    assert!(Sim::default().client(b"Q\0\0\0\x02").is_err());
    assert!(matches!(Sim::default().client(b"Q\x7f\xff\xff\xff"), Err(protocol::Error::TooLarge { .. })));
}

#[test]
fn server_scan_tracks_ready_for_query_and_parameters() {
    let mut sim = Sim { server_params: vec![("TimeZone".to_string(), "UTC".to_string())], ..Sim::default() };
    sim.client(&cat(&[msg(b'Q', b"begin; set timezone = 'Europe/Paris'\0"), msg(b'Q', b"commit\0")])).unwrap();
    let z = msg(b'Z', b"I");
    let bytes = cat(&[
        msg(b'C', b"BEGIN\0"),
        msg(b'S', b"TimeZone\0Europe/Paris\0"),
        msg(b'C', b"SET\0"),
        msg(b'Z', b"T"),
        msg(b'C', b"COMMIT\0"),
        z[..3].to_vec(),
    ]);
    sim.server(&bytes).unwrap();
    assert_eq!((sim.x.st.txn.pending, sim.x.st.txn.status), (1, b'T'));
    assert_eq!(sim.x.s.fwd, bytes.len() - 3);
    sim.server(&z[3..]).unwrap();
    assert!(sim.x.st.txn.server_idle());
    assert_eq!(sim.server_params[0].1, "Europe/Paris");
    assert_eq!(sim.params.get("TimeZone"), Some("Europe/Paris"));
}

#[test]
fn unrequested_ready_for_query_is_a_protocol_error() {
    let mut sim = Sim::default();
    assert!(sim.server(&msg(b'Z', b"I")).is_err());
}

#[test]
fn statement_mode_flags_transaction_blocks() {
    let mut sim = Sim::default();
    sim.rules.statement_mode = true;
    sim.client(&msg(b'Q', b"begin\0")).unwrap();
    sim.server(&cat(&[msg(b'C', b"BEGIN\0"), msg(b'Z', b"T")])).unwrap();
    assert!(sim.x.st.txn.opened_transaction);
}

#[test]
fn extended_copy_in_does_not_count_ignored_syncs() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("", "copy t from stdin"), bind("", ""), execute(), sync()])).unwrap();
    assert_eq!(sim.x.st.txn.pending, 1);
    sim.client(&cat(&[msg(b'd', b"1\n"), msg(b'c', b""), sync()])).unwrap();
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'G', b"\0\0\0"), msg(b'C', b"COPY 1\0")])).unwrap();
    // The COPY started, so the Sync pipelined before its data got no answer: one Z is owed.
    assert_eq!(sim.x.st.txn.pending, 1);
    sim.server(&msg(b'Z', b"I")).unwrap();
    assert!(sim.x.st.txn.server_idle() && sim.x.st.queue.is_empty());
}

#[test]
fn simple_copy_in_keeps_its_ready_for_query() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"copy t from stdin\0")).unwrap();
    sim.client(&cat(&[msg(b'd', b"1\n"), msg(b'c', b"")])).unwrap();
    assert_eq!(sim.x.st.txn.pending, 1);
}

#[test]
fn lone_flush_does_not_pin_the_server() {
    let mut sim = Sim::default();
    sim.client(&msg(b'H', b"")).unwrap();
    assert!(!sim.x.st.txn.unsynced && !sim.x.st.txn.flushed);
    let b = inspect_idle(&msg(b'H', b""), 1 << 20).unwrap();
    assert!(!b.ready);
}

#[test]
fn inspect_idle_finds_requests() {
    let q = msg(b'Q', b"select 1\0");
    let b = inspect_idle(&q, 1 << 20).unwrap();
    assert_eq!(b, Buffered { ready: true, requests: 1, end: q.len(), terminate: false });
    let batch = cat(&[parse("", "x"), bind("", ""), execute()]);
    assert!(!inspect_idle(&batch, 1 << 20).unwrap().ready);
    let flushed = cat(&[batch.clone(), msg(b'H', b"")]);
    let b = inspect_idle(&flushed, 1 << 20).unwrap();
    assert!(b.ready && b.requests == 0 && b.end == flushed.len());
    let two = cat(&[batch, sync(), msg(b'Q', b"select 2\0")[..7].to_vec()]);
    let b = inspect_idle(&two, 1 << 20).unwrap();
    assert_eq!((b.ready, b.requests), (true, 1));
    assert!(inspect_idle(&msg(b'X', b""), 1 << 20).unwrap().terminate);
    assert!(inspect_idle(&msg(b'p', b""), 1 << 20).is_err());
}

#[test]
fn named_statement_gets_the_servers_name_and_is_shared() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("s1", "select $1"), bind("", "s1"), execute(), sync()])).unwrap();
    let sent = frames(&sim.sent());
    assert_eq!(sent.iter().map(|f| f.0).collect::<String>(), "PBES");
    let server_name = stmt_name('P', &sent[0].1);
    assert!(server_name.starts_with("pgsluice_"), "{server_name}");
    assert_eq!(stmt_name('B', &sent[1].1), server_name);
    assert_eq!(&sent[0].1[server_name.len() + 1..], b"select $1\0\0\0", "query and types unchanged");
    // Held back until this batch is answered (the Parse might fail).
    assert!(sim.x.st.barrier);
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "12CZ");
    assert!(sim.releasable() && !sim.x.st.barrier);

    // Another client (same server) prepares the same statement under another name: the
    // server is not asked again, pgsluice answers the Parse itself.
    let mut other = ClientStatements::default();
    std::mem::swap(&mut other, &mut sim.stmts);
    sim.client(&cat(&[parse("other", "select $1"), bind("", "other"), execute(), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "BES");
    assert_eq!(tags(&sim.received()), "1", "ParseComplete synthesized at once");
    sim.server(&cat(&[msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "2CZ");
    assert!(sim.releasable());
}

#[test]
fn statement_is_prepared_on_a_server_that_lacks_it() {
    let mut sim = Sim::default();
    sim.prepare("s1", "select 1");
    // The client's next transaction runs on a fresh server connection.
    sim.conn = ServerState::default();
    sim.x.attach(&mut sim.conn, status::IDLE, false, 200);
    sim.client(&cat(&[bind("", "s1"), execute(), sync()])).unwrap();
    let sent = frames(&sim.sent());
    assert_eq!(sent.iter().map(|f| f.0).collect::<String>(), "PBES");
    assert_eq!(stmt_name('P', &sent[0].1), stmt_name('B', &sent[1].1));
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "2CZ", "pgsluice's ParseComplete is not relayed");
    assert!(sim.releasable());
}

#[test]
fn close_is_answered_without_closing_the_shared_statement() {
    let mut sim = Sim::default();
    sim.prepare("s1", "select 1");
    sim.client(&cat(&[msg(b'C', b"Ss1\0"), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "S");
    assert_eq!(tags(&sim.received()), "3");
    sim.server(&msg(b'Z', b"I")).unwrap();
    assert_eq!(tags(&sim.received()), "Z");
    assert!(sim.stmts.is_empty() && sim.conn.statements.len() == 1);
    // The name is free again.
    sim.client(&cat(&[parse("s1", "select 2"), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "PS");
}

#[test]
fn failed_parse_is_forgotten() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("s1", "selec 1"), bind("", "s1"), execute(), sync()])).unwrap();
    sim.sent();
    let err = msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0");
    sim.server(&cat(&[err, msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "EZ");
    assert!(sim.stmts.is_empty() && sim.conn.statements.is_empty());
    assert!(sim.releasable());
    // Defining the name again is not a duplicate.
    sim.client(&cat(&[parse("s1", "select 1"), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "PS");
}

#[test]
fn answers_after_an_error_are_skipped_like_the_server_does() {
    let mut sim = Sim::default();
    // s1 is on the server already.
    sim.prepare("s1", "select 1");
    sim.stmts.clear();
    // A failing Bind, then a Parse pgsluice would answer itself and a Close: PostgreSQL skips
    // both, so no ParseComplete/CloseComplete may appear, and neither takes effect.
    sim.client(&cat(&[bind("", "nope"), parse("s2", "select 1"), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "BS");
    assert_eq!(tags(&sim.received()), "");
    let err = msg(b'E', b"SERROR\0C26000\0Mprepared statement \"nope\" does not exist\0\0");
    sim.server(&cat(&[err, msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "EZ");
    assert!(sim.stmts.get(b"s2").is_none(), "skipped Parse is undone");
    assert!(sim.releasable());
}

#[test]
fn duplicate_name_fails_with_the_clients_name() {
    let mut sim = Sim::default();
    sim.prepare("s1", "select 1");
    sim.client(&cat(&[parse("s1", "select 2"), sync()])).unwrap();
    let sent = frames(&sim.sent());
    assert_eq!(sent.iter().map(|f| f.0).collect::<String>(), "PS");
    let err = msg(b'E', b"SERROR\0C42P05\0Mprepared statement \"pgsluice_x\" already exists\0\0");
    sim.server(&cat(&[err, msg(b'Z', b"I")])).unwrap();
    let got = frames(&sim.received());
    assert_eq!(got.len(), 2);
    let f = crate::protocol::backend::parse_error_fields(&got[0].1);
    assert_eq!((f.code, f.message), ("42P05", "prepared statement \"s1\" already exists"));
    assert!(sim.stmts.get(b"s1").is_some(), "the first definition stays");
}

#[test]
fn deallocate_of_a_client_statement_is_answered_locally() {
    let mut sim = Sim::default();
    sim.prepare("s1", "select 1");
    sim.client(&msg(b'Q', b"DEALLOCATE s1;\0")).unwrap();
    assert_eq!(tags(&sim.sent()), "");
    let got = frames(&sim.received());
    assert_eq!(got.iter().map(|f| f.0).collect::<String>(), "CZ");
    assert_eq!(got[0].1, b"DEALLOCATE\0");
    assert!(sim.stmts.is_empty() && sim.releasable());
    // A request pipelined behind it is not held back.
    sim.client(&cat(&[parse("s2", "select 2"), sync(), msg(b'Q', b"deallocate s2\0"), bind("", "x"), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "PS");
    sim.server(&cat(&[msg(b'1', b""), msg(b'Z', b"I")])).unwrap();
    sim.client(&[]).unwrap();
    assert_eq!(tags(&sim.sent()), "BS");
    assert_eq!(tags(&sim.received()), "1ZCZ");
    assert!(!sim.x.st.barrier);
    // Unknown names go to the server (which reports the error).
    sim.client(&msg(b'Q', b"DEALLOCATE s9\0")).unwrap();
    assert_eq!(tags(&sim.sent()), "Q");
}

#[test]
fn discard_all_forgets_every_statement() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("s1", "select 1"), sync()])).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'1', b""), msg(b'Z', b"I")])).unwrap();
    sim.client(&msg(b'Q', b"DISCARD ALL\0")).unwrap();
    sim.server(&cat(&[msg(b'C', b"DISCARD ALL\0"), msg(b'Z', b"I")])).unwrap();
    assert!(sim.stmts.is_empty() && sim.conn.statements.is_empty());
}

#[test]
fn barrier_holds_the_next_batch_until_the_parse_is_confirmed() {
    let mut sim = Sim::default();
    let next = cat(&[bind("", "s1"), execute(), sync()]);
    sim.client(&cat(&[parse("s1", "select 1"), sync(), next.clone()])).unwrap();
    assert_eq!(tags(&sim.sent()), "PS");
    assert_eq!(sim.cbuf.len(), next.len(), "next batch not scanned yet");
    sim.server(&cat(&[msg(b'1', b""), msg(b'Z', b"I")])).unwrap();
    assert!(!sim.x.st.barrier);
    sim.client(&[]).unwrap();
    assert_eq!(tags(&sim.sent()), "BES");
}

#[test]
fn least_recently_used_statement_is_closed_at_capacity() {
    let mut sim = Sim::default();
    sim.conn.statements.set_capacity(2);
    for (i, sql) in ["select 1", "select 2", "select 3"].iter().enumerate() {
        sim.client(&cat(&[parse(&format!("s{i}"), sql), sync()])).unwrap();
        let sent = tags(&sim.sent());
        let expect = if i == 2 { "CPS" } else { "PS" };
        assert_eq!(sent, expect, "statement {i}");
        let answer = if i == 2 {
            vec![msg(b'3', b""), msg(b'1', b""), msg(b'Z', b"I")]
        } else {
            vec![msg(b'1', b""), msg(b'Z', b"I")]
        };
        sim.server(&cat(&answer)).unwrap();
        assert_eq!(tags(&sim.received()), "1Z", "pgsluice's Close is not relayed");
    }
    assert_eq!(sim.conn.statements.len(), 2);
    // s0 was evicted from the server; using it prepares it again.
    sim.client(&cat(&[bind("", "s0"), execute(), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "CPBES");
}

#[test]
fn large_bind_is_renamed_and_its_values_stream() {
    let mut sim = Sim::default();
    sim.prepare("s1", "select $1::bytea");
    let value = vec![9u8; 200_000];
    let mut body = b"\0s1\0\0\0\0\x01".to_vec();
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(&value);
    body.extend_from_slice(b"\0\0");
    let b = msg(b'B', &body);
    let whole = cat(&[b.clone(), execute(), sync()]);
    let mut sent = Vec::new();
    for chunk in whole.chunks(16 * 1024) {
        sim.client(chunk).unwrap();
        sent.extend(sim.sent());
        assert!(sim.cbuf.len() < 64 * 1024, "never buffers the whole value");
    }
    let f = frames(&sent);
    assert_eq!(f.iter().map(|f| f.0).collect::<String>(), "BES");
    assert!(stmt_name('B', &f[0].1).starts_with("pgsluice_"));
    assert!(f[0].1.ends_with(&[&value[value.len() - 4..], b"\0\0"].concat()));
    assert_eq!(f[0].1.len(), body.len() - 3 + 42);
}

#[test]
fn untracked_mode_forwards_names_untouched() {
    let mut sim = Sim::default();
    sim.rules.track = false;
    let batch = cat(&[parse("s1", "select 1"), bind("", "s1"), execute(), msg(b'C', b"Ss1\0"), sync()]);
    sim.client(&batch).unwrap();
    assert_eq!(sim.sent(), batch);
    assert!(sim.stmts.is_empty());
}

#[test]
fn barrier_lets_copy_data_through() {
    // asyncpg's copy_records_to_table: Parse + Describe + Flush of a named statement, then
    // a simple COPY query with its data pipelined behind it.
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("s1", "select * from t"), msg(b'D', b"Ss1\0"), msg(b'H', b"")])).unwrap();
    assert_eq!(tags(&sim.sent()), "PDH");
    sim.server(&cat(&[msg(b'1', b""), msg(b't', b"\0\0"), msg(b'n', b"")])).unwrap();
    assert_eq!(tags(&sim.received()), "1tn");
    sim.client(&cat(&[msg(b'Q', b"copy t from stdin\0"), msg(b'd', b"1\n"), msg(b'c', b"")])).unwrap();
    assert!(sim.x.st.barrier);
    assert_eq!(tags(&sim.sent()), "Qdc", "COPY data passes the barrier");
    sim.client(&cat(&[bind("", "s1"), execute(), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "", "statement messages wait behind it");
    sim.server(&cat(&[msg(b'G', b"\0\0\0"), msg(b'C', b"COPY 1\0"), msg(b'Z', b"I")])).unwrap();
    sim.client(&[]).unwrap();
    assert_eq!(tags(&sim.sent()), "BES");
}

#[test]
fn prepare_and_close_of_known_statements_need_no_server() {
    let known = KnownStatements::default();
    let mut stmts = ClientStatements::default();
    let p = parse("P_0", "select 1");
    let req = cat(&[p.clone(), sync()]);
    let mut buf = BytesMut::from(&req[..]);
    assert!(
        answer_without_server(&mut buf, &mut stmts, &known, 1 << 20, Limits::default()).is_none(),
        "unknown statement"
    );
    assert_eq!(buf.len(), req.len());
    known.insert(crate::prepared::Key::of(b"select 1\0\0\0"));
    let out = answer_without_server(&mut buf, &mut stmts, &known, 1 << 20, Limits::default()).expect("answered");
    assert_eq!(tags(&out), "1Z");
    assert!(buf.is_empty() && stmts.get(b"P_0").is_some());
    // A duplicate needs the server (for its error).
    let mut buf = BytesMut::from(&req[..]);
    assert!(answer_without_server(&mut buf, &mut stmts, &known, 1 << 20, Limits::default()).is_none());
    // Close + Sync; a Bind after it is left for the server.
    let mut buf = BytesMut::from(&cat(&[msg(b'C', b"SP_0\0"), sync(), bind("", "x")])[..]);
    let out = answer_without_server(&mut buf, &mut stmts, &known, 1 << 20, Limits::default()).expect("answered");
    assert_eq!(tags(&out), "3Z");
    assert!(stmts.is_empty());
    assert_eq!(tags(&buf), "B");
    // Anything else in the request needs a server.
    let mut buf = BytesMut::from(&cat(&[p, bind("", "P_0"), sync()])[..]);
    assert!(answer_without_server(&mut buf, &mut stmts, &known, 1 << 20, Limits::default()).is_none());
}

#[test]
fn parse_in_an_aborted_transaction_is_checked_by_the_server() {
    let mut sim = Sim::default();
    sim.prepare("a", "select 1");
    sim.x.st.txn.status = b'E';
    sim.client(&cat(&[parse("b", "select 1"), sync()])).unwrap();
    let sent = frames(&sim.sent());
    assert_eq!(sent.iter().map(|f| f.0).collect::<String>(), "PS");
    assert_eq!(stmt_name('P', &sent[0].1), "", "the unnamed statement, not the shared one");
    let err = msg(b'E', b"SERROR\0C25P02\0Mcurrent transaction is aborted\0\0");
    sim.server(&cat(&[err, msg(b'Z', b"E")])).unwrap();
    assert_eq!(tags(&sim.received()), "EZ");
    assert!(sim.stmts.get(b"b").is_none(), "not defined");
}

#[test]
fn clients_cannot_deallocate_pgsluice_statements() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"DEALLOCATE \"pgsluice_0123\"\0")).unwrap();
    assert_eq!(tags(&sim.sent()), "");
    let got = frames(&sim.received());
    assert_eq!(got.iter().map(|f| f.0).collect::<String>(), "EZ");
    assert_eq!(crate::protocol::backend::parse_error_fields(&got[0].1).code, "26000");
    assert!(sim.releasable());
}

#[test]
fn statements_beyond_the_limit_are_closed_after_a_big_transaction() {
    let mut sim = Sim::default();
    sim.conn.statements.set_capacity(2);
    sim.client(&msg(b'Q', b"begin\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'C', b"BEGIN\0"), msg(b'Z', b"T")])).unwrap();
    for i in 0..4 {
        sim.client(&cat(&[parse(&format!("s{i}"), &format!("select {i}")), sync()])).unwrap();
        assert_eq!(tags(&sim.sent()), "PS", "nothing used in the transaction is closed");
        sim.server(&cat(&[msg(b'1', b""), msg(b'Z', b"T")])).unwrap();
    }
    sim.client(&msg(b'Q', b"commit\0")).unwrap();
    sim.server(&cat(&[msg(b'C', b"COMMIT\0"), msg(b'Z', b"I")])).unwrap();
    sim.sent();
    sim.received();
    assert_eq!(sim.conn.statements.len(), 4);
    // The next use shrinks the set back to the limit.
    sim.client(&cat(&[bind("", "s3"), execute(), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "CCBES");
    assert_eq!(sim.conn.statements.len(), 2);
}

// Regressions found in review.

/// A stray CopyDone (PostgreSQL ignores c/f outside COPY) pops a Sync whose Z is still owed:
/// the server looks releasable while a ReadyForQuery is in flight.
#[test]
fn stray_copy_done_pops_a_live_sync() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("", "select 1"), bind("", ""), execute(), sync(), msg(b'c', b"")])).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'C', b"SELECT 1\0")])).unwrap();
    sim.received();
    // PostgreSQL still owes the Z of the Sync.
    assert!(!sim.releasable(), "a ReadyForQuery is still owed");
}

/// Same with a COPY that failed to start (Execute -> ErrorResponse, not G) while the client
/// had pipelined CopyFail + Sync (tokio-postgres drops its CopyInSink this way).
#[test]
fn copy_fail_after_failed_copy_start_loses_a_ready_for_query() {
    let mut sim = Sim::default();
    sim.client(&cat(&[bind("", ""), execute(), sync()])).unwrap();
    sim.sent();
    let err = msg(b'E', b"SERROR\x0042501\0Mpermission denied\0\0");
    // Server: BindComplete, the Execute fails (no CopyInResponse); its Z not read yet.
    sim.server(&cat(&[msg(b'2', b""), err])).unwrap();
    // Client reacts to the error: CopyFail + Sync (PostgreSQL ignores the f, answers the Sync).
    sim.client(&cat(&[msg(b'f', b"x\0"), sync()])).unwrap();
    sim.sent();
    sim.server(&msg(b'Z', b"I")).unwrap();
    sim.received();
    // PostgreSQL sends a second Z for the second Sync.
    assert!(!sim.releasable(), "the second ReadyForQuery is still owed");
}

/// Barrier + an unflushed Execute pipelined behind the dirty batch: the barrier only lifts
/// when the whole queue is empty, but the Execute's answer stays in PostgreSQL's output
/// buffer until a Flush/Sync, which sits behind the held Bind -> hang.
#[test]
fn barrier_never_lifts_behind_an_unflushed_execute() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"begin\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'C', b"BEGIN\0"), msg(b'Z', b"T")])).unwrap();
    sim.received();
    // Batch 1: named Parse (dirty), Bind to portal p, Execute 1 row, Sync -> barrier.
    // Batch 2: Execute p (another row, no Flush), then Bind s1 / Execute / Sync.
    let exec_p = msg(b'E', b"p\0\0\0\0\x01");
    sim.client(&cat(&[
        parse("s1", "select generate_series(1,10)"),
        bind("p", "s1"),
        exec_p.clone(),
        sync(),
        exec_p,
        bind("", "s1"),
        execute(),
        sync(),
    ]))
    .unwrap();
    assert_eq!(tags(&sim.sent()), "PBESE");
    // Server answers batch 1; the second Execute's output is buffered server-side (no Flush/Sync).
    sim.server(&cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b's', b""),
        msg(b'Z', b"T"),
    ]))
    .unwrap();
    sim.client(&[]).unwrap();
    // Nothing more will ever come from the server until the Sync is sent.
    assert_eq!(tags(&sim.sent()), "BES", "the barrier lifts once the first batch is answered");
}

/// DEALLOCATE ALL's CommandComplete clears bookkeeping made by messages scanned after it
/// (pipelined): pgsluice_X is on the server but forgotten -> the next ensure_prepared fails
/// with 42P05 for whatever client uses this connection.
#[test]
fn deallocate_all_clears_later_pipelined_parse() {
    let mut sim = Sim::default();
    sim.client(&cat(&[msg(b'Q', b"DEALLOCATE ALL\0"), parse("s1", "select 1"), bind("", "s1"), execute(), sync()]))
        .unwrap();
    assert_eq!(tags(&sim.sent()), "QPBES");
    sim.server(&cat(&[msg(b'C', b"DEALLOCATE ALL\0"), msg(b'Z', b"I")])).unwrap();
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    sim.received();
    // PostgreSQL: s1 exists now, and pgsluice_X exists on the server.
    assert!(sim.stmts.get(b"s1").is_some(), "s1 was defined after the DEALLOCATE ALL");
    assert_eq!(sim.conn.statements.len(), 1, "and prepared on the server");
    assert!(sim.conn.poisoned, "the connection is not reused after such a pipeline");
}

/// A pipelined Parse of a statement the server already has, behind a batch that aborts the
/// transaction: PostgreSQL answers 25P02, pgsluice synthesizes ParseComplete.
#[test]
fn fake_parse_complete_in_aborted_transaction() {
    let mut sim = Sim::default();
    sim.prepare("a", "select 1");
    sim.client(&msg(b'Q', b"begin\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'C', b"BEGIN\0"), msg(b'Z', b"T")])).unwrap();
    sim.received();
    sim.client(&cat(&[parse("", "select 1/0"), bind("", ""), execute(), sync(), parse("b", "select 1"), sync()]))
        .unwrap();
    assert_eq!(tags(&sim.sent()), "PBESS");
    let err = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
    let err2 = msg(b'E', b"SERROR\0C25P02\0Mcurrent transaction is aborted\0\0");
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), err, msg(b'Z', b"E"), msg(b'Z', b"E")])).unwrap();
    let _ = err2;
    // PostgreSQL: 1 2 E Z E(25P02) Z
    assert_eq!(tags(&sim.received()), "12EZEZ", "25P02, not a made-up ParseComplete");
}

/// Close 'S' of a name the client never defined is forwarded untouched; a name of
/// pgsluice's own closes the statement shared by every client of this connection.
#[test]
fn close_of_pgsluice_name_reaches_server() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("s1", "select 1"), sync()])).unwrap();
    let sent = frames(&sim.sent());
    let server_name = stmt_name('P', &sent[0].1);
    sim.server(&cat(&[msg(b'1', b""), msg(b'Z', b"I")])).unwrap();
    sim.received();
    let mut other = ClientStatements::default();
    std::mem::swap(&mut other, &mut sim.stmts);
    sim.client(&cat(&[msg(b'C', format!("S{server_name}\0").as_bytes()), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "S", "pgsluice's shared statement is not the client's to close");
    assert_eq!(tags(&sim.received()), "3");
}

/// Statement mode holds the `Z T` unscanned after popping its entry; a later server read
/// re-scans the same Z against the next queue entry.
#[test]
fn statement_mode_rescans_held_ready_for_query() {
    let mut sim = Sim::default();
    sim.rules.statement_mode = true;
    sim.client(&cat(&[msg(b'Q', b"begin\0"), parse("", "select 1"), bind("", ""), execute(), sync()])).unwrap();
    sim.server(&cat(&[msg(b'C', b"BEGIN\0"), msg(b'Z', b"T")])).unwrap();
    assert!(sim.x.st.txn.opened_transaction);
    // The client is slow to read, the server's next bytes arrive (a notice suffices).
    let r = sim.server(&msg(b'N', b"SNOTICE\0\0"));
    assert!(r.is_ok(), "held Z re-scanned: {r:?}");
}

/// A stray CopyDone behind a failing Execute must not make the server releasable before the
/// ReadyForQuery of its Sync (the next client would get it as its own answer).
#[test]
fn stray_copy_done_behind_an_error_keeps_the_server() {
    let mut sim = Sim::default();
    sim.client(&cat(&[parse("", "select 1/0"), bind("", ""), execute(), sync(), msg(b'c', b"")])).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'1', b""), msg(b'2', b""), msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0")])).unwrap();
    sim.received();
    assert!(!sim.releasable(), "the Sync's ReadyForQuery is still owed");
    sim.server(&msg(b'Z', b"I")).unwrap();
    sim.received();
    assert!(sim.releasable());
}

#[test]
fn fuzz_client_parsers_are_total() {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let tags_ = b"QPBDECSHdcfFX";
    let known = KnownStatements::default();
    known.insert(crate::prepared::Key::of(b"select 1\0\0\0"));
    for _ in 0..200_000 {
        let mut bytes = Vec::new();
        let n = rnd() % 6 + 1;
        for _ in 0..n {
            let tag = tags_[(rnd() % tags_.len() as u64) as usize];
            let choice = rnd() % 8;
            let body: Vec<u8> = match choice {
                0 => b"s1\0select 1\0\0\0".to_vec(),
                1 => b"\0s1\0\0\0\0\0\0\0".to_vec(),
                2 => b"Ss1\0".to_vec(),
                3 => b"DEALLOCATE \"s1\0".to_vec(),
                4 => b"s1".to_vec(),
                5 => vec![],
                6 => b"S\0".to_vec(),
                _ => (0..rnd() % 12).map(|_| [0u8, b's', b'1', b'"', b'S'][(rnd() % 5) as usize]).collect(),
            };
            let mut m = msg(tag, &body);
            if rnd() % 10 == 0 {
                let cut = (rnd() as usize) % m.len();
                m.truncate(cut);
            }
            bytes.extend(m);
        }
        let mut sim = Sim::default();
        if rnd() % 2 == 0 {
            sim.stmts.insert(b"s1", crate::prepared::Stmt::new(b"select 1\0\0\0"));
        }
        if rnd() % 3 == 0 {
            sim.conn.statements.insert(crate::prepared::Key::of(b"select 1\0\0\0"));
        }
        if rnd() % 4 == 0 {
            sim.x.st.txn.status = b'E';
        }
        // Feed in random chunks.
        let mut off = 0;
        while off < bytes.len() {
            let k = 1 + (rnd() as usize) % (bytes.len() - off);
            let _ = sim.client(&bytes[off..off + k]);
            off += k;
            sim.sent();
        }
        let _ = inspect_idle(&bytes, 1 << 20);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut st = ClientStatements::default();
        let _ = answer_without_server(&mut buf, &mut st, &known, 1 << 20, Limits::default());
    }
}

#[test]
fn eviction_spares_statements_of_a_pipelined_transaction() {
    let mut sim = Sim::default();
    sim.conn.statements.set_capacity(2);
    for (name, sql) in [("s0", "select 0"), ("s1", "select 1")] {
        sim.prepare(name, sql);
    }
    let s1_name = crate::prepared::Key::of(b"select 1\0\0\0").server_name();
    // Batch A uses s0; B opens a transaction; C binds portal p from s1 — all pipelined.
    sim.client(&cat(&[
        bind("", "s0"),
        execute(),
        sync(),
        msg(b'Q', b"begin\0"),
        bind("p", "s1"),
        msg(b'E', b"p\0\0\0\0\x01"),
        sync(),
    ]))
    .unwrap();
    sim.sent();
    // Only A is answered (Z I) when the client's next batch needs room for s2.
    sim.server(&cat(&[msg(b'2', b""), msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    sim.client(&cat(&[parse("s2", "select 2"), sync()])).unwrap();
    let sent = frames(&sim.sent());
    assert_eq!(sent.iter().map(|f| f.0).collect::<String>(), "CPS");
    assert_ne!(&sent[0].1[1..1 + s1_name.len()], &s1_name[..], "s1 has a portal open in the transaction");
}

#[test]
fn resendable_requests_are_one_query_or_one_batch_without_named_statements() {
    let q = msg(b'Q', b"select 1\0");
    let m = 1 << 20;
    assert_eq!(resendable_request(&q, m), Some(q.len()));
    // Only the first request counts; a partial one is not resendable yet.
    assert_eq!(resendable_request(&cat(&[q.clone(), q.clone()]), m), Some(q.len()));
    assert_eq!(resendable_request(&q[..q.len() - 1], m), None);
    let batch = cat(&[parse("", "select 1"), bind("", ""), msg(b'D', b"P\0"), execute(), sync()]);
    assert_eq!(resendable_request(&batch, m), Some(batch.len()));
    // A Bind of a named statement is fine (pgsluice prepares it on the next server).
    let named = cat(&[bind("", "s1"), execute(), sync()]);
    assert_eq!(resendable_request(&named, m), Some(named.len()));
    // Defining or closing a named statement, Flush, an unfinished batch, COPY, too long: no.
    for no in [
        cat(&[parse("s1", "select 1"), bind("", "s1"), execute(), sync()]),
        cat(&[bind("", "s1"), execute(), msg(b'C', b"Ss1\0"), sync()]),
        cat(&[bind("", "s1"), execute(), msg(b'H', b""), sync()]),
        cat(&[bind("", "s1"), execute()]),
        msg(b'd', b"x"),
        msg(b'F', b"\0\0\0\0"),
        sync(),
        msg(b'Q', format!("select '{}'\0", "x".repeat(MAX_RESEND)).as_bytes()),
    ] {
        assert_eq!(resendable_request(&no, m), None, "{no:?}");
    }
}

#[test]
fn a_request_is_resendable_until_a_byte_reaches_the_client() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    assert!(sim.x.resumable() && sim.x.resendable());
    // Answers received but not relayed do not count.
    sim.server(&msg(b'T', b"\0\0")).unwrap();
    assert!(sim.x.resendable());
    sim.received();
    assert!(!sim.x.resendable(), "part of the answer reached the client");

    // Two requests in one attachment: not the one-request case.
    let mut sim = Sim::default();
    sim.client(&cat(&[msg(b'Q', b"select 1\0"), msg(b'Q', b"select 2\0")])).unwrap();
    sim.sent();
    assert!(!sim.x.resendable());
    // A new attachment forgets what the last one relayed.
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")])).unwrap();
    sim.received();
    sim.attach();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    assert!(sim.x.resendable());
}

#[test]
fn a_shutdown_warning_is_held_back_like_a_fatal_error() {
    let notice = |code: &str, text: &str| msg(b'N', format!("SWARNING\0VWARNING\0C{code}\0M{text}\0\0").as_bytes());
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    // An ordinary warning reaches the client.
    sim.server(&notice("01000", "careful")).unwrap();
    assert_eq!(sim.received(), notice("01000", "careful"));
    // The one PostgreSQL sends before an immediate shutdown does not: the server is dying.
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    sim.server(&notice("57P01", "terminating connection due to immediate shutdown command")).unwrap();
    assert!(sim.received().is_empty());
    assert_eq!(sim.x.server_fatal(), Some("57P01: terminating connection due to immediate shutdown command"));
    assert!(sim.x.resendable(), "nothing reached the client");
}

#[test]
fn an_answer_flushed_with_a_dying_servers_warning_is_held_back() {
    // SIGQUIT: the backend flushes what it had buffered, then the WARNING, then closes.
    let notice =
        msg(b'N', b"SWARNING\0VWARNING\0C57P01\0Mterminating connection due to immediate shutdown command\0\0");
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'T', b"\0\0"), msg(b'D', b"\0\0"), notice])).unwrap();
    assert!(sim.received().is_empty(), "nothing of the unfinished answer is relayed");
    assert!(sim.x.resumable() && sim.x.resendable(), "the read can go elsewhere");
    let mut cbuf = BytesMut::new();
    let mut out = BytesMut::new();
    sim.x.salvage(&mut cbuf, &sim.sbuf, &mut out);
    assert_eq!(&out[..], &cat(&[msg(b'T', b"\0\0"), msg(b'D', b"\0\0")])[..], "or is delivered whole");
}

#[test]
fn a_dying_servers_answer_is_relayed_once_part_of_it_reached_the_client() {
    let notice =
        msg(b'N', b"SWARNING\0VWARNING\0C57P01\0Mterminating connection due to immediate shutdown command\0\0");
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    sim.server(&msg(b'T', b"\0\0")).unwrap();
    assert_eq!(sim.received(), msg(b'T', b"\0\0"));
    // Not resendable any more: holding the rest back would only stall the client.
    sim.server(&cat(&[msg(b'D', b"\0\0"), notice])).unwrap();
    assert_eq!(sim.received(), msg(b'D', b"\0\0"));
    assert!(!sim.x.resendable());
}

/// tokio-postgres' binary COPY: Bind + Execute + Sync, then the data, CopyDone + Sync. The
/// server fails the COPY half way (23505) and its ErrorResponse reaches pgsluice before the
/// client's CopyDone (the client is still sending data): the Sync pipelined before the data
/// was ignored by PostgreSQL (copy-in mode), so only one ReadyForQuery is owed. If it is
/// counted, the next request's answers are matched against a Sync the server never answers:
/// a ParseComplete pgsluice makes up for a statement the server has is sent late, after the
/// server's own answers (tokio-postgres: UnexpectedMessage), and the server is never clean.
#[test]
fn copy_in_failing_before_the_clients_copy_done_owes_one_ready_for_query() {
    let mut sim = Sim::default();
    sim.prepare("s0", "select count(*) from t");
    sim.prepare("s1", "copy t from stdin (format binary)");
    sim.client(&cat(&[bind("", "s1"), execute(), sync()])).unwrap();
    sim.client(&msg(b'd', b"PGCOPY\n\xff\r\n\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'2', b""), msg(b'G', b"\x01\0\x02\0\x01\0\x01")])).unwrap();
    assert_eq!(tags(&sim.received()), "2G");
    // The COPY fails while the client is still sending data.
    let dup = msg(b'E', b"SERROR\0C23505\0Mduplicate key value violates unique constraint\0\0");
    sim.server(&dup).unwrap();
    assert_eq!(tags(&sim.received()), "E");
    // The client goes on, then ends the COPY; the server discards up to that Sync.
    sim.client(&cat(&[msg(b'd', b"rows"), msg(b'c', b""), sync()])).unwrap();
    sim.sent();
    sim.server(&msg(b'Z', b"I")).unwrap();
    assert_eq!(tags(&sim.received()), "Z");
    assert_eq!(sim.x.pending(), 0, "one ReadyForQuery was owed");
    assert!(sim.releasable(), "the server is idle");
    // The client's next request: Parse of a statement the server has (answered by pgsluice).
    sim.client(&cat(&[parse("s2", "select count(*) from t"), msg(b'D', b"Ss2\0"), sync()])).unwrap();
    assert_eq!(tags(&sim.sent()), "DS");
    sim.server(&cat(&[msg(b't', b"\0\0"), msg(b'T', b"\0\0"), msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "1tTZ", "answers in the order of the requests");
    assert!(sim.releasable());
}

/// The same COPY failing after pgsluice scanned the client's CopyDone (the usual order).
#[test]
fn copy_in_failing_after_the_clients_copy_done_owes_one_ready_for_query() {
    let mut sim = Sim::default();
    sim.prepare("s1", "copy t from stdin (format binary)");
    sim.client(&cat(&[bind("", "s1"), execute(), sync(), msg(b'd', b"rows"), msg(b'c', b""), sync()])).unwrap();
    sim.sent();
    let dup = msg(b'E', b"SERROR\0C23505\0Mduplicate key value violates unique constraint\0\0");
    sim.server(&cat(&[msg(b'2', b""), msg(b'G', b"\x01\0\x02\0\x01\0\x01"), dup, msg(b'Z', b"I")])).unwrap();
    assert_eq!(tags(&sim.received()), "2GEZ");
    assert_eq!(sim.x.pending(), 0);
    assert!(sim.releasable());
}

#[test]
fn named_statements_per_client_are_bounded() {
    let rules = Rules {
        track: true,
        statement_mode: false,
        max_body: 1 << 20,
        session: None,
        statements: Limits { count: 2, ..Limits::default() },
    };
    let mut sim = Sim::new(rules);
    sim.prepare("s1", "select 1");
    sim.prepare("s2", "select 2");
    assert_eq!(sim.stmts.len(), 2);
    sim.client(&cat(&[parse("s3", "select 3"), sync()])).unwrap();
    let sent = sim.sent();
    assert!(String::from_utf8_lossy(&sent).contains("pgsluice_refused_statement"), "the Parse is not sent as is");
    sim.server(&cat(&[msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0"), msg(b'Z', b"I")])).unwrap();
    let got = sim.received();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(tags(&got), "EZ", "the refusal, then ReadyForQuery");
    assert!(text.contains("C53400") && text.contains("too many prepared statements"), "{text}");
    assert_eq!(sim.stmts.len(), 2, "s3 was not kept");
    // The existing ones still work, and closing one makes room.
    sim.client(&cat(&[msg(b'C', b"Ss1\0"), sync()])).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'3', b""), msg(b'Z', b"I")])).unwrap();
    sim.received();
    sim.prepare("s3", "select 3");
    assert_eq!(sim.stmts.len(), 2);
}

#[test]
fn statement_bytes_per_client_are_bounded_and_huge_named_parses_are_not_read_whole() {
    let limits = Limits { count: 100, bytes: 100 };
    let rules = Rules { track: true, max_body: 1 << 20, statements: limits, ..Rules::default() };
    let mut sim = Sim::new(rules);
    sim.prepare("s1", &format!("select '{}'", "x".repeat(60)));
    assert!(sim.stmts.bytes() > 60);
    // Another 60-byte statement would pass the 100 bytes: refused, the session goes on.
    sim.client(&cat(&[parse("s2", &format!("select '{}'", "y".repeat(60))), sync()])).unwrap();
    assert!(String::from_utf8_lossy(&sim.sent()).contains("pgsluice_refused_statement"));
    sim.server(&cat(&[msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0"), msg(b'Z', b"I")])).unwrap();
    let text = String::from_utf8_lossy(&sim.received()).into_owned();
    assert!(text.contains("C53400") && text.contains("max_client_prepared_bytes"), "{text}");
    assert_eq!(sim.stmts.len(), 1);
    // A named Parse declaring more than a client may hold (here more than READ_AHEAD) is
    // refused at its header, before its body is buffered.
    let mut huge = parse("s3", &"z".repeat(READ_AHEAD + 100));
    huge.truncate(64);
    assert!(matches!(sim.client(&huge), Err(protocol::Error::TooLargeToInspect { tag: b'P', .. })));
    // The same while the client holds no server.
    let max_whole = crate::exchange::max_read_whole(limits);
    let refused = IdleScan::default().inspect(&huge, 1 << 30, max_whole);
    assert!(matches!(refused, Err(protocol::Error::TooLargeToInspect { tag: b'P', .. })), "{refused:?}");
    assert!(IdleScan::default().inspect(&huge[..5], 1 << 30, max_whole).is_ok(), "named or not is not known yet");
    let unnamed = parse("", &"z".repeat(READ_AHEAD + 100));
    assert!(IdleScan::default().inspect(&unnamed[..64], 1 << 30, max_whole).is_ok(), "an unnamed one streams");
}

#[test]
fn an_unnamed_parse_streams_through_without_being_held_whole() {
    let mut sim = Sim::new(Rules { track: true, max_body: 1 << 30, statements: Limits::default(), ..Rules::default() });
    let text = "select 1 -- ".to_string() + &"z".repeat(4 * READ_AHEAD);
    let whole = parse("", &text);
    // Its first bytes alone: the header and the start of the body go on at once.
    sim.client(&whole[..1000]).unwrap();
    assert_eq!(sim.sent().len(), 1000, "streamed, not waiting for the whole message");
    sim.client(&whole[1000..]).unwrap();
    assert_eq!(sim.sent().len(), whole.len() - 1000);
    // A header alone: which Parse it is is not known yet, so nothing is decided.
    let named = parse("big", &text);
    sim.client(&named[..5]).unwrap();
    assert_eq!(sim.sent().len(), 0);
}

#[test]
fn resumed_idle_inspection_matches_a_full_walk() {
    // Byte by byte, a resumed walk agrees with a walk of the whole buffer at every length.
    let req = cat(&[parse("", "select 1"), bind("", ""), msg(b'D', b"P\0"), execute(), msg(b'H', b""), sync()]);
    let mut scan = IdleScan::default();
    for n in 0..=req.len() {
        let full = inspect_idle(&req[..n], 1 << 20).unwrap();
        let resumed = scan.inspect(&req[..n], 1 << 20, usize::MAX).unwrap();
        assert_eq!(resumed, full, "at {n} bytes");
        if full.ready {
            scan = IdleScan::default();
        }
    }
}

#[test]
fn many_parses_of_known_statements_are_answered_within_the_limits() {
    let known = KnownStatements::default();
    known.insert(crate::prepared::Key::of(b"select 1\0\0\0"));
    let batch = |from: usize, n: usize| {
        let mut parts: Vec<Vec<u8>> = (from..from + n).map(|i| parse(&format!("s{i}"), "select 1")).collect();
        parts.push(sync());
        BytesMut::from(&cat(&parts)[..])
    };
    // 5,000 Parses in one request: one pass over them (a set of names, not a rescan).
    let mut stmts = ClientStatements::default();
    let limits = Limits { count: 6000, ..Limits::default() };
    let out = answer_without_server(&mut batch(0, 5000), &mut stmts, &known, 1 << 20, limits).expect("answered");
    assert_eq!(out.len(), 5000 * 5 + 6);
    assert_eq!(stmts.len(), 5000);
    // Past the count: the server path refuses them, with its error.
    assert!(answer_without_server(&mut batch(5000, 1001), &mut stmts, &known, 1 << 20, limits).is_none());
    assert!(answer_without_server(&mut batch(5000, 1000), &mut stmts, &known, 1 << 20, limits).is_some());
    // Past the bytes: the same.
    let mut stmts = ClientStatements::default();
    let small = Limits { count: 6000, bytes: 100 };
    assert!(answer_without_server(&mut batch(0, 10), &mut stmts, &known, 1 << 20, small).is_none());
    assert!(answer_without_server(&mut batch(0, 5), &mut stmts, &known, 1 << 20, small).is_some());
}

/// Feeds `bytes` to one side in 16 KiB reads while the exchange allows reading that side,
/// never writing anything out (the other peer does not read); returns how many were taken.
fn feed_while_allowed(sim: &mut Sim, bytes: &[u8], client: bool) -> usize {
    let mut taken = 0;
    while taken < bytes.len() {
        let allowed = if client { sim.x.may_read_client(&sim.cbuf) } else { sim.x.may_read_server(&sim.sbuf) };
        if !allowed {
            break;
        }
        let n = (bytes.len() - taken).min(READ_CHUNK);
        let chunk = &bytes[taken..taken + n];
        if client {
            sim.client(chunk).unwrap();
        } else {
            sim.server(chunk).unwrap();
        }
        taken += n;
    }
    taken
}

#[test]
fn read_ahead_stays_bounded_when_the_peer_does_not_read() {
    // 16 Queries of 60 KiB, each read whole (session-state rules look into them), to a
    // server that takes nothing: before, each one raised the limit by its own length.
    let rules = Rules {
        track: true,
        max_body: 1 << 20,
        session: Some(SessionRules { policy: crate::config::SessionState::Pin }),
        ..Rules::default()
    };
    let mut sim = Sim::new(rules);
    let q = msg(b'Q', format!("select '{}'\0", "x".repeat(60 * 1024)).as_bytes());
    let all: Vec<u8> = (0..16).flat_map(|_| q.clone()).collect();
    let mut taken = feed_while_allowed(&mut sim, &all, true);
    assert!(taken < all.len(), "reading paused");
    let bound = 2 * READ_AHEAD + q.len() + READ_CHUNK;
    assert!(sim.cbuf.len() <= bound, "client read buffer {} bytes, bound {bound}", sim.cbuf.len());
    // Once the server takes what was scanned, the rest arrives.
    let mut sent = 0;
    for _ in 0..64 {
        sent += sim.sent().len();
        taken += feed_while_allowed(&mut sim, &all[taken..], true);
    }
    sent += sim.sent().len();
    assert_eq!(sent, all.len(), "every byte reached the server");

    // Notices to a client that reads nothing.
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    let notice = msg(b'N', format!("SNOTICE\0C00000\0M{}\0\0", "n".repeat(60 * 1024)).as_bytes());
    let all: Vec<u8> = (0..16).flat_map(|_| notice.clone()).collect();
    feed_while_allowed(&mut sim, &all, false);
    let bound = 2 * READ_AHEAD + notice.len() + READ_CHUNK;
    assert!(sim.sbuf.len() <= bound, "server read buffer {} bytes, bound {bound}", sim.sbuf.len());
}

#[test]
fn a_server_out_of_step_is_a_protocol_error() {
    // A ReadyForQuery whose status is not I, T or E.
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    assert!(sim.server(&cat(&[msg(b'C', b"SELECT 0\0"), msg(b'Z', b"?")])).is_err());
    // An answer while no request is pending (asynchronous messages and errors are fine).
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    sim.server(&cat(&[msg(b'C', b"SELECT 0\0"), msg(b'Z', b"I")])).unwrap();
    sim.server(&msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0")).unwrap();
    sim.server(&msg(b'S', b"TimeZone\0UTC\0")).unwrap();
    assert!(matches!(sim.server(&msg(b'D', b"\0\x01\0\0\0\x01x")), Err(protocol::Error::UnexpectedTag(b'D'))));
}

#[test]
fn a_message_torn_by_the_server_is_known() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    let row = msg(b'D', b"\0\x01\0\0\0\x1e012345678901234567890123456789");
    sim.server(&cat(&[msg(b'T', b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0"), row[..10].to_vec()]))
        .unwrap();
    assert!(sim.x.torn_to_client(), "10 bytes of a 36-byte DataRow");
    let mut out = BytesMut::new();
    sim.x.unsent_to_client(&sim.sbuf, &mut out);
    assert!(out.ends_with(&row[..10]));
    sim.server(&row[10..]).unwrap();
    assert!(!sim.x.torn_to_client());
}

#[test]
fn what_a_dying_server_sends_after_its_fatal_is_dropped() {
    let mut sim = Sim::default();
    sim.client(&msg(b'Q', b"select 1\0")).unwrap();
    sim.sent();
    sim.server(&msg(b'E', b"SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0")).unwrap();
    assert!(sim.x.server_fatal().is_some());
    // However much more it sends, none of it is kept.
    for _ in 0..100 {
        sim.server(&msg(b'D', &[b'x'; 4096])).unwrap();
    }
    assert!(sim.sbuf.len() <= 4096 + 5, "{} bytes kept", sim.sbuf.len());
}
