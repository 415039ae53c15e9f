//! A stand-in PostgreSQL server for the cost gates: it trusts every login and answers every
//! request at once with a fixed result, so what is measured is pgsluice's own work, not the
//! server's (a real server's CPU time would only add noise; the integration tests use one).
//!
//! It answers: `Q` with one row (`T D C Z`), `P` `1`, `B` `2`, `D` `t T` (statement) or `T`
//! (portal), `E` `D C`, `C` `3`, `S` `Z`; `X` ends the connection. Runs on its own threads
//! (a current-thread runtime), outside the process valgrind measures.

use bytes::{Buf, BytesMut};
use pgsluice::protocol::write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts the server on 127.0.0.1 (a free port) in a thread of its own; returns the port.
pub fn start() -> u16 {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake server");
    let port = std_listener.local_addr().expect("addr").port();
    std_listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(tcp));
            }
        });
    });
    port
}

async fn serve(mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(4096);
    // Startup: SSLRequest gets 'N', then the StartupMessage.
    loop {
        while buf.len() < 4 || buf.len() < u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize {
            if tcp.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        buf.advance(len);
        match code {
            80877103 => {
                if tcp.write_all(b"N").await.is_err() {
                    return;
                }
            }
            80877102 => return,
            _ => break,
        }
    }
    let mut out = BytesMut::with_capacity(4096);
    write::auth_ok(&mut out);
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        write::parameter_status(&mut out, k, v);
    }
    write::backend_key_data(&mut out, 4242, 99);
    write::ready_for_query(&mut out, b'I');
    if tcp.write_all(&out).await.is_err() {
        return;
    }
    out.clear();
    loop {
        // Whole messages only.
        while let Some((tag, len)) = header(&buf) {
            if buf.len() < 1 + len {
                break;
            }
            let body = buf[5..1 + len].to_vec();
            buf.advance(1 + len);
            match tag {
                b'Q' => {
                    row(&mut out);
                    write::ready_for_query(&mut out, b'I');
                }
                b'P' => write::empty(&mut out, b'1'),
                b'B' => write::empty(&mut out, b'2'),
                b'D' => {
                    if body.first() == Some(&b'S') {
                        parameter_description(&mut out);
                    }
                    write::row_description(&mut out, &[("abalance", 23)]);
                }
                b'E' => {
                    write::data_row(&mut out, [Some("1")].into_iter());
                    write::command_complete(&mut out, "SELECT 1");
                }
                b'C' => write::empty(&mut out, b'3'),
                b'S' => write::ready_for_query(&mut out, b'I'),
                b'X' => return,
                _ => {}
            }
        }
        if !out.is_empty() {
            if tcp.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if tcp.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

/// Tag and length (counting itself) of the message at the front, once 5 bytes are there.
fn header(buf: &[u8]) -> Option<(u8, usize)> {
    (buf.len() >= 5).then(|| (buf[0], u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize))
}

/// What pgbench -S gets: one int4 column, one row.
fn row(out: &mut BytesMut) {
    write::row_description(out, &[("abalance", 23)]);
    write::data_row(out, [Some("1")].into_iter());
    write::command_complete(out, "SELECT 1");
}

/// A ParameterDescription of one int4 parameter.
fn parameter_description(out: &mut BytesMut) {
    out.extend_from_slice(&[b't', 0, 0, 0, 10, 0, 1, 0, 0, 0, 23]);
}
