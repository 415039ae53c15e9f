//! A minimal PostgreSQL client for the cost gates: log in (trust or SCRAM-SHA-256), send the
//! three kinds of select-only request pgbench sends, read to ReadyForQuery.

use bytes::{Buf, BytesMut};
use pgsluice::protocol::write;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// pgbench's select-only statement.
const SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// One logged-in client connection.
pub struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

/// Error text (the harness fails with it).
pub type Result<T> = std::result::Result<T, String>;

impl Conn {
    /// Connects to `port` as `user` on `db` and logs in (SCRAM with `password` if asked).
    pub async fn login(port: u16, user: &str, password: &str, db: &str) -> Result<Conn> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut c = Conn { tcp, buf: BytesMut::with_capacity(4096), out: BytesMut::with_capacity(512) };
        write::startup_message(&mut c.out, [("user", user), ("database", db)]);
        c.flush().await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = c.message().await?;
            match tag {
                b'R' => {
                    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    match code {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                            write::sasl_initial_response(&mut c.out, "SCRAM-SHA-256", s.message());
                            scram = Some(s);
                            c.flush().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or("SASLContinue without SASL")?;
                            s.update(&body[4..]).map_err(|e| format!("SCRAM: {e}"))?;
                            write::sasl_response(&mut c.out, s.message());
                            c.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or("SASLFinal without SASL")?;
                            s.finish(&body[4..]).map_err(|e| format!("SCRAM final: {e}"))?;
                        }
                        other => return Err(format!("authentication method {other} not supported")),
                    }
                }
                b'E' => return Err(format!("login refused: {}", String::from_utf8_lossy(&body))),
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    /// `pgbench -S -M simple`: one Query.
    pub async fn simple(&mut self) -> Result<()> {
        write::query(&mut self.out, "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;");
        self.round_trip().await
    }

    /// `pgbench -S -M extended`: the unnamed statement parsed, bound, described, executed.
    pub async fn extended(&mut self) -> Result<()> {
        write::parse_raw(&mut self.out, b"", &parse_rest());
        self.bind(b"");
        write::describe(&mut self.out, b'P', b"");
        self.execute_sync();
        self.round_trip().await
    }

    /// `pgbench -S -M prepared`, first transaction of a client: its statement prepared.
    pub async fn prepare(&mut self) -> Result<()> {
        write::parse_raw(&mut self.out, b"P0_1", &parse_rest());
        write::empty(&mut self.out, b'S');
        self.round_trip().await
    }

    /// `pgbench -S -M prepared`: Bind of the named statement, Execute, Sync.
    pub async fn prepared(&mut self) -> Result<()> {
        self.bind(b"P0_1");
        self.execute_sync();
        self.round_trip().await
    }

    /// Sends Terminate and closes.
    pub async fn terminate(mut self) {
        write::terminate(&mut self.out);
        let _ = self.flush().await;
    }

    /// Writes what is queued (without waiting for an answer).
    pub async fn send_simple(&mut self) -> Result<()> {
        write::query(&mut self.out, "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;");
        self.flush().await
    }

    /// Reads up to a ReadyForQuery; an ErrorResponse is an error.
    pub async fn until_ready(&mut self) -> Result<()> {
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'Z' => return Ok(()),
                b'E' => return Err(format!("error: {}", String::from_utf8_lossy(&body))),
                _ => {}
            }
        }
    }

    fn bind(&mut self, stmt: &[u8]) {
        // No parameter formats, one text parameter "4242", no result formats.
        let mut rest = Vec::new();
        rest.extend_from_slice(&0u16.to_be_bytes());
        rest.extend_from_slice(&1u16.to_be_bytes());
        rest.extend_from_slice(&4u32.to_be_bytes());
        rest.extend_from_slice(b"4242");
        rest.extend_from_slice(&0u16.to_be_bytes());
        write::bind_prefix(&mut self.out, b"", stmt, rest.len());
        self.out.extend_from_slice(&rest);
    }

    fn execute_sync(&mut self) {
        self.out.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
        write::empty(&mut self.out, b'S');
    }

    async fn round_trip(&mut self) -> Result<()> {
        self.flush().await?;
        self.until_ready().await
    }

    async fn flush(&mut self) -> Result<()> {
        self.tcp.write_all(&self.out).await.map_err(|e| format!("write: {e}"))?;
        self.out.clear();
        Ok(())
    }

    async fn message(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.advance(1 + len);
                    return Ok((tag, body));
                }
            }
            if self.tcp.read_buf(&mut self.buf).await.map_err(|e| format!("read: {e}"))? == 0 {
                return Err("connection closed".into());
            }
        }
    }
}

/// The Parse body after the statement name: the text and one int4 parameter type.
fn parse_rest() -> Vec<u8> {
    let mut rest = SQL.as_bytes().to_vec();
    rest.push(0);
    rest.extend_from_slice(&1u16.to_be_bytes());
    rest.extend_from_slice(&23u32.to_be_bytes());
    rest
}
