//! The relay's two scanners together (`pgsluice::exchange`, through its [`Sim`]), driven as
//! the relay drives them, by arbitrary interleavings. The client and the server each write
//! messages (built from the input: the tags the scanners look into, names and texts that
//! repeat, large bodies, or raw bytes) into their socket; the input decides which socket
//! the relay reads next and how much (respecting `may_read_client` / `may_read_server`,
//! the backpressure the relay obeys), how much of what is due it writes each way (partial
//! writes), when it gives the server back and takes it again, and when the server dies.
//!
//! Checked after every step:
//! - buffers stay bounded: a read buffer never holds more than twice the read-ahead, one
//!   read and the largest message a peer sent (except the server's once it sent a FATAL);
//! - whenever the exchange is clean (`is_clean`: the server may go to another client), it
//!   owes nothing (`pending() == 0`), reports `Activity::Idle`, and both written streams
//!   end on a message boundary;
//! - with no feature that rewrites (no statement tracking, session rules or statement
//!   mode), what reaches the server is exactly what the client sent, and what reaches the
//!   client exactly what the server sent (until the server sends a FATAL);
//! - when the server dies: a request reported resendable was not answered at all, and
//!   what `salvage` hands the client completes whole messages.
#![no_main]
use std::collections::VecDeque;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsluice::config::SessionState;
use pgsluice::exchange::{Activity, Rules, SessionRules, Sim, Verdict, READ_AHEAD, READ_CHUNK};
use pgsluice::prepared::Limits;
use pgsluice::protocol::{split_frame, status};

/// Most bytes the two peers write in one run (large bodies are cheap to ask for).
const MAX_TRAFFIC: usize = 1 << 20;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte().unwrap_or(0)) % from.len()]
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

const NAMES: [&[u8]; 4] = [b"", b"s1", b"s2", b"S1"];
const SQL: [&[u8]; 16] = [
    b"select 1",
    b"select $1",
    b"begin",
    b"commit",
    b"rollback",
    b"set search_path = x",
    b"set timezone = 'UTC'",
    b"discard all",
    b"deallocate s1",
    b"deallocate all",
    b"prepare p as select 1",
    b"copy t from stdin",
    b"listen x",
    b"select pg_advisory_lock(1)",
    b"insert into t values (1); select 2",
    b"",
];

/// One client message (or a few bytes of one) from the input.
fn client_msg(inp: &mut Input<'_>) -> Vec<u8> {
    let k = inp.byte().unwrap_or(0);
    let name = inp.pick(&NAMES);
    let sql = inp.pick(&SQL);
    match k % 18 {
        0 => msg(b'Q', &cstrs(&[sql])),
        1 => msg(b'P', &[cstrs(&[name, sql]), vec![0, 0]].concat()),
        2 => msg(b'B', &[cstrs(&[b"", name]), vec![0, 0, 0, 0, 0, 0]].concat()),
        3 => msg(b'E', b"\0\0\0\0\0"),
        4 => msg(b'S', b""),
        5 => msg(b'D', &[b"S", name, b"\0"].concat()),
        6 => msg(b'D', b"P\0"),
        7 => msg(b'C', &[b"S", name, b"\0"].concat()),
        8 => msg(b'H', b""),
        9 => msg(b'd', b"1\t2\n"),
        10 => msg(b'c', b""),
        11 => msg(b'f', b"bad\0"),
        12 => msg(b'F', b"\0\0\0\x01\0\0\0\0\0\0"),
        13 => msg(b'X', b""),
        14 => {
            let n = usize::from(inp.byte().unwrap_or(0));
            msg(b'Q', &cstrs(&[inp.take(n)]))
        }
        15 => {
            let n = usize::from(inp.byte().unwrap_or(0));
            let text = inp.take(n);
            msg(b'P', &[cstrs(&[name, text]), vec![0, 0]].concat())
        }
        // A large message, ~2-64 KiB: a query padded with a comment, a Parse, COPY data.
        _ => {
            let v = inp.byte().unwrap_or(0);
            let len = (usize::from(v) % 32 + 1) * 2048;
            let mut text = sql.to_vec();
            text.extend_from_slice(b" -- ");
            text.resize(len, b'x');
            match (v >> 5) % 3 {
                0 => msg(b'Q', &cstrs(&[&text])),
                1 => msg(b'P', &[cstrs(&[name, &text]), vec![0, 0]].concat()),
                _ => msg(b'd', &text),
            }
        }
    }
}

fn error(severity: &[u8], code: &[u8], message: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        body.push(k);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    body
}

/// One server message from the input.
fn server_msg(inp: &mut Input<'_>) -> Vec<u8> {
    let k = inp.byte().unwrap_or(0);
    match k % 24 {
        0 => msg(b'1', b""),
        1 => msg(b'2', b""),
        2 => msg(b'3', b""),
        3 => msg(b'n', b""),
        4 => msg(b's', b""),
        5 => msg(b'I', b""),
        6 => msg(
            b'C',
            &cstrs(&[inp.pick(&[
                &b"SELECT 1"[..],
                b"BEGIN",
                b"COMMIT",
                b"DEALLOCATE",
                b"DEALLOCATE ALL",
                b"SET",
                b"DISCARD ALL",
            ])]),
        ),
        7..=9 => msg(b'Z', &[inp.pick(&[status::IDLE, status::IN_TRANSACTION, status::FAILED])]),
        10 => msg(b'E', &error(b"ERROR", b"42P01", b"relation does not exist")),
        11 => msg(b'E', &error(b"ERROR", b"0A000", b"cached plan must not change result type")),
        12 => msg(b'E', &error(b"ERROR", b"25006", b"cannot execute INSERT in a read-only transaction")),
        13 => msg(b'E', &error(b"ERROR", b"26000", b"prepared statement \"s1\" does not exist")),
        14 => msg(b'E', &error(b"FATAL", b"57P01", b"terminating connection due to administrator command")),
        15 => msg(b'N', &error(b"WARNING", inp.pick(&[&b"57P01"[..], b"01000"]), b"notice")),
        16 => msg(b'S', &cstrs(&[inp.pick(&[&b"TimeZone"[..], b"application_name", b"search_path"]), b"x"])),
        17 => msg(b'T', b"\0\x01a\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"),
        18 => msg(b'D', b"\0\x01\0\0\0\x011"),
        19 => msg(b't', b"\0\0"),
        20 => msg(b'G', b"\0\0\0"),
        21 => msg(b'H', b"\0\0\0"),
        22 => msg(b'A', b"\0\0\0\x01x\0y\0"),
        // A large DataRow (streamed).
        _ => {
            let len = (usize::from(inp.byte().unwrap_or(0)) % 32 + 1) * 2048;
            msg(b'D', &vec![b'x'; len])
        }
    }
}

/// Read sizes the relay may get from a socket.
const READS: [usize; 16] = [1, 2, 3, 5, 8, 13, 21, 64, 100, 256, 1000, 1024, 4096, 8192, READ_CHUNK, READ_CHUNK];

/// The bytes written one way, and how far they are known to be whole messages.
#[derive(Default)]
struct Written {
    bytes: Vec<u8>,
    whole: usize,
}

impl Written {
    /// Whether everything written ends on a message boundary.
    fn aligned(&mut self) -> bool {
        while let Ok(Some((_, _, rest))) = split_frame(&self.bytes[self.whole..], usize::MAX >> 1) {
            self.whole = self.bytes.len() - rest.len();
        }
        self.whole == self.bytes.len()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some(mode) = inp.byte() else { return };
    let session = match (mode >> 2) & 3 {
        1 => Some(SessionRules { policy: SessionState::Pin }),
        2 => Some(SessionRules { policy: SessionState::Reject }),
        _ => None,
    };
    let rules = Rules {
        track: mode & 1 != 0,
        statement_mode: mode & 2 != 0,
        max_body: if mode & 16 != 0 { 300 } else { 1 << 16 },
        session,
        statements: if mode & 64 != 0 {
            Limits { count: 2, bytes: 4096 }
        } else {
            Limits { count: 64, bytes: 1 << 20 }
        },
    };
    let one_request = mode & 32 != 0;
    let passthrough = !rules.track && !rules.statement_mode && rules.session.is_none() && !one_request;
    // A read buffer holds at most the read-ahead, one read, and one message read whole
    // (bounded by the largest message a peer sent, or by what it sent raw).
    let bound = |largest: usize, raw: usize| 2 * READ_AHEAD + READ_CHUNK + largest + raw;
    let (mut client_largest, mut server_largest, mut client_raw, mut server_raw) = (0, 0, 0, 0);
    let mut sim = Sim::new(rules);
    let max_prepared = if mode & 128 != 0 { 2 } else { 100 };
    sim.x.attach(&mut sim.conn, status::IDLE, one_request, max_prepared);

    // What each peer has written and the relay not yet read.
    let mut from_client = VecDeque::new();
    let mut from_server = VecDeque::new();
    let mut traffic = 0;
    // Everything the relay read from each peer, and wrote to each.
    let (mut read_client, mut read_server) = (Vec::new(), Vec::new());
    let (mut to_server, mut to_client) = (Written::default(), Written::default());
    // A server's FATAL (dropped: the session says what the client hears) ends the byte-for-byte
    // match of server and client streams for good, also across a later attachment.
    let mut fatal_seen = false;
    // How much the client had been sent when the current attachment began.
    let mut to_client_at_attach = 0;

    while let Some(op) = inp.byte() {
        match op >> 5 {
            0 | 1 => {
                let m = client_msg(&mut inp);
                traffic += m.len();
                client_largest = client_largest.max(m.len());
                from_client.extend(m);
            }
            2 => {
                let m = server_msg(&mut inp);
                traffic += m.len();
                server_largest = server_largest.max(m.len());
                from_server.extend(m);
            }
            3 => {
                // Raw bytes from one side.
                let n = usize::from(op & 15) + 1;
                let raw = inp.take(n);
                traffic += raw.len();
                if op & 16 == 0 {
                    client_raw += raw.len();
                    from_client.extend(raw);
                } else {
                    server_raw += raw.len();
                    from_server.extend(raw);
                }
            }
            4 => {
                // The relay reads the client.
                if !sim.x.may_read_client(&sim.cbuf) || from_client.is_empty() {
                    continue;
                }
                let n = READS[usize::from(op & 15)].min(from_client.len());
                let chunk: Vec<u8> = from_client.drain(..n).collect();
                read_client.extend_from_slice(&chunk);
                if sim.client(&chunk).is_err() {
                    return;
                }
                let max = bound(client_largest, client_raw);
                assert!(sim.cbuf.len() <= max, "client read buffer grew to {} (bound {max})", sim.cbuf.len());
            }
            5 => {
                // The relay reads the server.
                if !sim.x.may_read_server(&sim.sbuf) || from_server.is_empty() {
                    continue;
                }
                let n = READS[usize::from(op & 15)].min(from_server.len());
                let chunk: Vec<u8> = from_server.drain(..n).collect();
                read_server.extend_from_slice(&chunk);
                if sim.server(&chunk).is_err() {
                    return;
                }
                fatal_seen |= sim.x.server_fatal().is_some();
                // (Also once the server said it is dying: what follows is dropped as it arrives.)
                let max = bound(server_largest, server_raw);
                assert!(sim.sbuf.len() <= max, "server read buffer grew to {} (bound {max})", sim.sbuf.len());
            }
            6 => {
                // The relay writes up to n bytes one way (a socket that takes only part).
                let mut budget = READS[usize::from(op & 15)];
                let to_srv = op & 16 == 0;
                loop {
                    let out = if to_srv { sim.x.server_bound(&sim.cbuf) } else { sim.x.client_bound(&sim.sbuf) };
                    let n = out.len().min(budget);
                    if n == 0 {
                        break;
                    }
                    if to_srv {
                        to_server.bytes.extend_from_slice(&out[..n]);
                        sim.x.sent_to_server(&mut sim.cbuf, n);
                    } else {
                        to_client.bytes.extend_from_slice(&out[..n]);
                        sim.x.sent_to_client(&mut sim.sbuf, n);
                    }
                    budget -= n;
                }
            }
            _ => {
                if op & 16 == 0 {
                    // The session asks whether the attachment is over.
                    match sim.x.verdict(&sim.cbuf, &sim.sbuf, op & 1 != 0, from_client.is_empty() && op & 2 != 0) {
                        Some(Verdict::Released) => {
                            assert!(sim.releasable());
                            sim.x.attach(&mut sim.conn, status::IDLE, one_request, max_prepared);
                            to_client_at_attach = to_client.bytes.len();
                        }
                        Some(_) => return,
                        None => {}
                    }
                } else {
                    // The server connection dies.
                    if sim.x.resumable() {
                        if sim.x.resendable() {
                            // (Of this attachment: earlier ones answered earlier requests.)
                            let answered = to_client.bytes.len() - to_client_at_attach;
                            assert_eq!(answered, 0, "a resendable request was partly answered");
                        }
                        let mut out = BytesMut::new();
                        sim.x.salvage(&mut sim.cbuf, &sim.sbuf, &mut out);
                        to_client.bytes.extend_from_slice(&out);
                        assert!(to_client.aligned(), "salvage left the client inside a message");
                    }
                    return;
                }
            }
        }
        if traffic > MAX_TRAFFIC {
            return;
        }
        if sim.releasable() {
            assert_eq!(sim.x.pending(), 0, "a clean exchange owes an answer");
            assert_eq!(sim.x.activity(), Activity::Idle, "a clean exchange is busy");
            assert!(to_server.aligned(), "clean, but the server got part of a message");
            assert!(to_client.aligned(), "clean, but the client got part of a message");
        }
        if passthrough {
            assert!(read_client.starts_with(&to_server.bytes), "the server got bytes the client did not send");
            if !fatal_seen {
                assert!(read_server.starts_with(&to_client.bytes), "the client got bytes the server did not send");
            }
        }
    }
});
