//! `ServerConn`: one logged-in PostgreSQL server connection, and `connect()` which opens it.
//!
//! Invariants: a `ServerConn` handed out by `connect()` has completed authentication and seen
//! `ReadyForQuery`; its read buffer holds no unread server bytes whenever it sits idle in a
//! pool (the relay only checks a connection in after the final `Z`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::auth::require::Method;
use crate::auth::scram::{ChannelBinding, ClientCredential, ClientKeys, ScramClient};
use crate::auth::{md5, Secret};
use crate::config::{BackendAddr, ServerTls, ServerTlsMode};
use crate::net::tls::tls_server_end_point;
use crate::net::{read_message, ReadError, Stream};
use crate::params::ParamSet;
use crate::prepared::{tag_deallocates_all, ServerState};
use crate::protocol::backend::{self as bmsg, AuthRequest};
use crate::protocol::{self, btag, status, write};

/// Largest message accepted from a server during login and internal queries.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Most bytes a server may send during one login (a real one sends well under 2 KiB):
/// beyond, it is refused instead of growing the recorded parameters for as long as
/// `server_connect_timeout` lets it.
const MAX_LOGIN_BYTES: usize = 4 << 20;

/// Longest server error message passed on to a client (PostgreSQL's own are one line).
const MAX_ERROR_MESSAGE: usize = 512;

/// What pgsluice knows to log in as a user.
#[derive(Clone, Default)]
pub struct Credential {
    /// From the auth_file or the database's fixed user.
    pub secret: Option<Secret>,
    /// Recovered from a client's SCRAM login (passthrough).
    pub keys: Option<ClientKeys>,
}

/// Startup parameters sent to the server.
pub struct LoginParams<'a> {
    /// Backend user.
    pub user: &'a str,
    /// Backend database.
    pub database: &'a str,
    /// `application_name` for the server session.
    pub application_name: &'a str,
    /// Enable TCP keepalive on the socket.
    pub keepalive: bool,
    /// TLS toward the server (`server_tls_sslmode`).
    pub tls: &'a crate::config::ServerTls,
    /// What the server may ask for (`server_auth_methods`).
    pub auth: crate::auth::require::ServerAuthMethods,
}

/// Why a server connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP connect or socket I/O failed.
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        /// Target.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Socket error after connecting.
    #[error("server connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// `server_connect_timeout` passed.
    #[error("timeout connecting to server {0}")]
    Timeout(String),
    /// The server sent an ErrorResponse (during login, or to an internal query).
    #[error("server error {code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
    },
    /// The server closed the connection or broke the protocol.
    #[error("server connection lost: {0}")]
    Lost(String),
    /// The server asked for an authentication method we cannot satisfy.
    #[error("cannot log in to server: {0}")]
    Auth(String),
    /// TLS could not be set up as `server_tls_sslmode` requires.
    #[error("{0}")]
    Tls(String),
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Error::Io(e),
            other => Error::Lost(other.to_string()),
        }
    }
}

pub use crate::stats::{CancelAddr, CancelTarget};

/// A logged-in server connection.
pub struct ServerConn {
    /// The socket.
    pub stream: Stream,
    /// Read buffer: bytes received from the server not yet relayed.
    pub buf: BytesMut,
    /// Cancel key of this backend.
    pub cancel: CancelTarget,
    /// ParameterStatus values the server reported, in arrival order, plus the unreported
    /// tracked parameters pgsluice set (`ClientParams::record_synced`): no entry means the
    /// server default, `params::UNKNOWN` means unknown.
    pub params: Vec<(String, String)>,
    /// When the connection was opened.
    pub created: Instant,
    /// When it was last checked in.
    pub last_used: Instant,
    /// The client parameter set this connection was last brought to (`None` once a
    /// parameter changed in a way not attributed to a client).
    pub synced: Option<Arc<ParamSet>>,
    /// What the connection carries from client to client: its prepared statements, and
    /// whether it must be reset or closed before the next one.
    pub state: ServerState,
    /// Its identity in its pool (`SHOW SERVERS`); `None` for probe connections.
    pub meta: Option<Arc<crate::stats::ServerMeta>>,
}

impl ServerConn {
    /// Opens a TCP connection to `addr` and logs in, all within `timeout`.
    pub async fn connect(
        addr: &BackendAddr,
        login: &LoginParams<'_>,
        cred: &Credential,
        timeout: Duration,
    ) -> Result<ServerConn, Error> {
        match tokio::time::timeout(timeout, Self::connect_inner(addr, login, cred)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(addr.to_string())),
        }
    }

    async fn connect_inner(
        addr: &BackendAddr,
        login: &LoginParams<'_>,
        cred: &Credential,
    ) -> Result<ServerConn, Error> {
        let mode = login.tls.mode;
        let tls_first = !matches!(mode, ServerTlsMode::Disable | ServerTlsMode::Allow);
        match Self::open(addr, login, cred, tls_first).await {
            // `allow`: plain first, TLS when the server refuses the plain login (hostssl).
            Err(Error::Server { code, .. }) if mode == ServerTlsMode::Allow && code == "28000" => {
                Self::open(addr, login, cred, true).await
            }
            r => r,
        }
    }

    /// One connection attempt: TCP, TLS if `tls` (as `login.tls` says), then the login.
    async fn open(
        addr: &BackendAddr,
        login: &LoginParams<'_>,
        cred: &Credential,
        tls: bool,
    ) -> Result<ServerConn, Error> {
        let (mut stream, binding, peer) = if addr.is_unix_socket() {
            // A co-located server: no TLS over the socket, as libpq.
            let path = addr.unix_socket_path();
            let u = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|source| Error::Connect { addr: path.clone(), source })?;
            (Stream::Unix(Box::new(u)), None, CancelAddr::Unix(Arc::new(path)))
        } else {
            let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
                .await
                .map_err(|source| Error::Connect { addr: addr.to_string(), source })?;
            tcp.set_nodelay(true)?;
            if login.keepalive {
                socket2::SockRef::from(&tcp).set_keepalive(true)?;
            }
            let peer = tcp.peer_addr()?;
            let (stream, binding) =
                if tls { negotiate_tls(tcp, addr, login.tls).await? } else { (Stream::Plain(tcp), None) };
            (stream, binding, CancelAddr::Tcp(peer))
        };
        let mut out = BytesMut::with_capacity(256);
        write::startup_message(
            &mut out,
            [("user", login.user), ("database", login.database), ("application_name", login.application_name)],
        );
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let mut auth = AuthState { binding, ..AuthState::default() };
        let mut params = Vec::new();
        let mut key: Option<(i32, Arc<[u8]>)> = None;
        let mut received = 0usize;
        loop {
            let (tag, body) = read_message(&mut stream, &mut buf, MAX_LOGIN_MESSAGE).await?;
            received += protocol::HEADER_LEN + body.len();
            if received > MAX_LOGIN_BYTES {
                return Err(Error::Lost(format!("server sent more than {} MiB during login", MAX_LOGIN_BYTES >> 20)));
            }
            // After AuthenticationOk only ParameterStatus, BackendKeyData and ReadyForQuery
            // (and notices, errors) come; none of them before it (a server skipping
            // authentication must still say so, for `server_auth_methods` to judge).
            if matches!(tag, btag::PARAMETER_STATUS | btag::BACKEND_KEY_DATA | btag::READY_FOR_QUERY)
                && !auth.authenticated
            {
                return Err(Error::Lost(format!("server sent {} before AuthenticationOk", login_message_name(tag))));
            }
            out.clear();
            match tag {
                btag::AUTHENTICATION => {
                    let req = bmsg::parse_auth_request(&body).map_err(|e| Error::Lost(e.to_string()))?;
                    match req {
                        AuthRequest::SaslContinue(data)
                            if auth.scram.as_ref().is_some_and(ScramClient::derives_keys) =>
                        {
                            // PBKDF2 (up to MAX_SERVER_ITERATIONS rounds) off the async workers.
                            let (mut client, data) = (auth.scram.take(), data.to_vec());
                            let (client, fin) = tokio::task::spawn_blocking(move || {
                                let fin = client.as_mut().map(|c| c.server_first(&data));
                                (client, fin)
                            })
                            .await
                            .map_err(|e| Error::Lost(format!("SCRAM key derivation failed: {e}")))?;
                            auth.scram = client;
                            let fin = fin.ok_or_else(|| Error::Lost("unexpected SASLContinue".into()))?;
                            write::sasl_response(&mut out, &fin.map_err(|e| Error::Auth(format!("SCRAM: {e}")))?);
                        }
                        req => authenticate(req, login, cred, stream.is_tls(), &mut auth, &mut out)?,
                    }
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                    }
                }
                btag::PARAMETER_STATUS => {
                    let (k, v) = bmsg::parse_parameter_status(&body).map_err(|e| Error::Lost(e.to_string()))?;
                    params.push((k.to_string(), v.to_string()));
                }
                btag::BACKEND_KEY_DATA => {
                    let (pid, secret) = bmsg::parse_backend_key_data(&body).map_err(|e| Error::Lost(e.to_string()))?;
                    key = Some((pid, secret.into()));
                }
                btag::ERROR_RESPONSE => return Err(server_error(&body)),
                btag::READY_FOR_QUERY => break,
                btag::NOTICE_RESPONSE => {}
                // pgsluice asks for protocol 3.0 with no `_pq_` options: there is nothing a
                // server could legitimately negotiate down (libpq fails the login too).
                btag::NEGOTIATE_PROTOCOL_VERSION => return Err(negotiate_error(&body)),
                other => {
                    return Err(Error::Lost(format!(
                        "server sent an unexpected message ({}) during login",
                        login_message_name(other)
                    )))
                }
            }
        }
        let (pid, secret) = key.ok_or_else(|| Error::Lost("server sent no BackendKeyData".into()))?;
        let now = Instant::now();
        Ok(ServerConn {
            stream,
            buf,
            cancel: CancelTarget { addr: peer, pid, secret },
            params,
            created: now,
            last_used: now,
            synced: None,
            state: ServerState::default(),
            meta: None,
        })
    }

    /// Runs `sql` as a simple query, discarding its results; succeeds only if the server
    /// ends idle (`Z I`) without an error. Used for `server_reset_query` and health checks.
    pub async fn run_discard(&mut self, sql: &str) -> Result<(), Error> {
        self.run_discard_until(sql, status::IDLE).await
    }

    /// Like [`ServerConn::run_discard`], but the server must end with transaction status
    /// `want` (e.g. `T` after a deferred `BEGIN`).
    pub async fn run_discard_until(&mut self, sql: &str, want: u8) -> Result<(), Error> {
        self.simple_query(sql, Some(want), false).await.map(drop)
    }

    /// Runs `sql` as a simple query and returns its first row as text values (`None` for
    /// NULL); an empty result is an empty vector. Used by the health probes.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, Error> {
        self.simple_query(sql, None, true).await
    }

    /// The one loop behind the internal queries: sends `sql`, keeps the first row if
    /// `keep_row`, records ParameterStatus and `DEALLOCATE ALL`, and fails on an error or,
    /// with `want`, on another final transaction status.
    async fn simple_query(
        &mut self,
        sql: &str,
        want: Option<u8>,
        keep_row: bool,
    ) -> Result<Vec<Option<String>>, Error> {
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        write::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        let mut failed = None;
        let mut row = None;
        loop {
            let (tag, body) = read_message(&mut self.stream, &mut self.buf, MAX_LOGIN_MESSAGE).await?;
            match tag {
                btag::ERROR_RESPONSE => failed = Some(server_error(&body)),
                btag::DATA_ROW if keep_row && row.is_none() => {
                    row = Some(bmsg::parse_data_row(&body).ok_or_else(|| Error::Lost("malformed DataRow".into()))?);
                }
                btag::COMMAND_COMPLETE if crate::protocol::cstr(&body).is_some_and(|(t, _)| tag_deallocates_all(t)) => {
                    self.state.statements.clear();
                }
                btag::PARAMETER_STATUS => {
                    if let Ok((k, v)) = bmsg::parse_parameter_status(&body) {
                        self.set_param(k, v);
                        self.synced = None;
                    }
                }
                btag::READY_FOR_QUERY => {
                    return match (failed, body.first()) {
                        (Some(e), _) => Err(e),
                        (None, Some(&s)) if want.is_none_or(|w| w == s) => Ok(row.unwrap_or_default()),
                        _ => Err(Error::Lost("server in an unexpected transaction state after internal query".into())),
                    };
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` through the extended protocol with text parameters `params` (never spliced
    /// into the text) and returns up to `max_rows` rows as text (`None` for NULL); more rows
    /// are an error. Used by `auth_query`.
    pub async fn query_params(
        &mut self,
        sql: &str,
        params: &[&str],
        max_rows: usize,
    ) -> Result<Vec<Vec<Option<String>>>, Error> {
        use postgres_protocol::message::frontend;
        let mut out = BytesMut::with_capacity(sql.len() + 64);
        let encode = |e: std::io::Error| Error::Lost(format!("cannot encode the query: {e}"));
        frontend::parse("", sql, std::iter::empty(), &mut out).map_err(encode)?;
        let bound = frontend::bind(
            "",
            "",
            std::iter::empty(),
            params.iter(),
            |v, buf| {
                buf.extend_from_slice(v.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            std::iter::empty(),
            &mut out,
        );
        bound.map_err(|_| Error::Lost("cannot encode the query's parameters".into()))?;
        frontend::execute("", 0, &mut out).map_err(encode)?;
        frontend::sync(&mut out);
        self.stream.write_all(&out).await?;
        let mut failed = None;
        let mut rows = Vec::new();
        loop {
            let (tag, body) = read_message(&mut self.stream, &mut self.buf, MAX_LOGIN_MESSAGE).await?;
            match tag {
                btag::ERROR_RESPONSE => failed = Some(server_error(&body)),
                btag::DATA_ROW if rows.len() < max_rows => {
                    rows.push(bmsg::parse_data_row(&body).ok_or_else(|| Error::Lost("malformed DataRow".into()))?);
                }
                btag::DATA_ROW => {
                    failed.get_or_insert(Error::Server {
                        code: "21000".into(),
                        message: format!("the query returned more than {max_rows} row(s)"),
                    });
                }
                btag::READY_FOR_QUERY => {
                    return match failed {
                        Some(e) => Err(e),
                        None if body.first() == Some(&status::IDLE) => Ok(rows),
                        None => Err(Error::Lost("server in a transaction after an internal query".into())),
                    };
                }
                _ => {}
            }
        }
    }

    /// Records a ParameterStatus value.
    pub fn set_param(&mut self, name: &str, value: &str) {
        crate::params::set_param(&mut self.params, name, value);
    }

    /// Sends Terminate and closes, best effort (used when discarding a healthy connection).
    pub async fn terminate(mut self) {
        let mut out = BytesMut::with_capacity(5);
        write::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// The server's ErrorResponse as an error for the client. What a client is shown must be
/// valid: a SQLSTATE that is not five digits or capital letters becomes `08P01`
/// (protocol_violation), and the message is one line of bounded length.
fn server_error(body: &[u8]) -> Error {
    let f = bmsg::parse_error_fields(body);
    let valid = f.code.len() == 5 && f.code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    let message = sanitize_message(f.message);
    if !valid {
        let message = if message.is_empty() { "(no message)".to_string() } else { message };
        return Error::Server {
            code: "08P01".into(),
            message: format!("server sent an ErrorResponse without a valid SQLSTATE: {message}"),
        };
    }
    let message = if message.is_empty() { format!("server error {} (no message)", f.code) } else { message };
    Error::Server { code: f.code.to_string(), message }
}

/// `m` with control characters replaced by spaces, cut to [`MAX_ERROR_MESSAGE`] bytes.
fn sanitize_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len().min(MAX_ERROR_MESSAGE + 4));
    for c in m.chars() {
        if out.len() + c.len_utf8() > MAX_ERROR_MESSAGE {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// A NegotiateProtocolVersion (`Int32` newest minor version, `Int32` count, option names)
/// as a login error naming what the server said.
fn negotiate_error(body: &[u8]) -> Error {
    let int = |at: usize| body.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let minor = int(0).map_or_else(|| "?".to_string(), |m| m.to_string());
    let options: Vec<String> = body
        .get(8..)
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|o| !o.is_empty())
        .take(8)
        .map(|o| sanitize_message(&String::from_utf8_lossy(&o[..o.len().min(64)])))
        .collect();
    Error::Lost(format!(
        "server sent NegotiateProtocolVersion (newest minor version 3.{minor}, unrecognized options [{}]) although pgsluice asked for protocol 3.0 without options",
        options.join(", ")
    ))
}

/// A server message type for an error message.
fn login_message_name(tag: u8) -> String {
    match tag {
        btag::PARAMETER_STATUS => "ParameterStatus".into(),
        btag::BACKEND_KEY_DATA => "BackendKeyData".into(),
        btag::READY_FOR_QUERY => "ReadyForQuery".into(),
        btag::DATA_ROW => "DataRow".into(),
        btag::COMMAND_COMPLETE => "CommandComplete".into(),
        t if t.is_ascii_graphic() => format!("type '{}'", t as char),
        t => format!("type byte {t:#04x}"),
    }
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks the server for TLS and performs the handshake; returns the stream and the SCRAM
/// channel-binding data of its certificate. A server that declines gets plain TCP under
/// `prefer` and an error otherwise. Exactly one byte is read before the handshake (a server
/// cannot slip unencrypted bytes in front of it).
async fn negotiate_tls(
    mut tcp: TcpStream,
    addr: &BackendAddr,
    tls: &ServerTls,
) -> Result<(Stream, Option<Vec<u8>>), Error> {
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let config = tls.config.clone().ok_or_else(|| Error::Tls(format!("no TLS configuration for {addr}")))?;
            let name = rustls_pki_types::ServerName::try_from(addr.host.clone())
                .map_err(|_| Error::Tls(format!("{:?} is not a valid TLS server name", addr.host)))?;
            let s = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Tls(format!("TLS handshake with server {addr} failed: {e}")))?;
            let binding =
                s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| tls_server_end_point(c));
            Ok((Stream::ServerTls(Box::new(s)), binding))
        }
        b'N' if tls.mode == ServerTlsMode::Prefer => Ok((Stream::Plain(tcp), None)),
        b'N' => Err(Error::Tls(format!(
            "server {addr} does not accept TLS, which server_tls_sslmode = \"{}\" requires",
            tls.mode.as_str()
        ))),
        other => Err(Error::Lost(format!("server {addr} answered SSLRequest with {other:#04x}"))),
    }
}

/// What the login has negotiated so far.
#[derive(Default)]
struct AuthState {
    /// The SCRAM exchange under way.
    scram: Option<ScramClient>,
    /// `tls-server-end-point` data of the server's certificate (TLS only).
    binding: Option<Vec<u8>>,
    /// The server asked for some authentication (`AuthenticationOk` alone means none).
    asked: bool,
    /// The SCRAM exchange ended with the server's signature verified.
    scram_verified: bool,
    /// AuthenticationOk was received.
    authenticated: bool,
    /// A method (cleartext, md5, SASL) was asked for: PostgreSQL asks once per login.
    method_asked: bool,
}

/// Answers one authentication request into `out` (empty when no answer is due), within
/// what `server_auth_methods` allows (`tls`: the connection is encrypted).
fn authenticate(
    req: AuthRequest<'_>,
    login: &LoginParams<'_>,
    cred: &Credential,
    tls: bool,
    st: &mut AuthState,
    out: &mut BytesMut,
) -> Result<(), Error> {
    let allow = |m: Method| login.auth.check(m, tls).map_err(Error::Auth);
    let user = login.user;
    if !matches!(req, AuthRequest::Ok) {
        st.asked = true;
    }
    if st.authenticated {
        return Err(Error::Lost("server sent an authentication request after AuthenticationOk".into()));
    }
    if matches!(req, AuthRequest::Cleartext | AuthRequest::Md5 { .. } | AuthRequest::Sasl { .. }) {
        // A second request would make pgsluice start over, e.g. run PBKDF2 again for each
        // SCRAM exchange the server begins (libpq: "duplicate SASL authentication request").
        if st.method_asked {
            return Err(Error::Lost("server sent a second authentication request during one login".into()));
        }
        st.method_asked = true;
    }
    match req {
        AuthRequest::Ok if !st.asked => {
            allow(Method::None)?;
            st.authenticated = true;
        }
        // A SCRAM server proves it knows the password in SASLFinal, before AuthenticationOk;
        // one that skips the proof may be an impostor (libpq refuses it too).
        AuthRequest::Ok if st.scram.is_some() && !st.scram_verified => {
            return Err(Error::Auth(
                "server sent AuthenticationOk before completing the SCRAM exchange (it did not prove that it knows the password)"
                    .into(),
            ))
        }
        AuthRequest::Ok => st.authenticated = true,
        AuthRequest::Cleartext => {
            allow(Method::Password)?;
            match &cred.secret {
                Some(Secret::Plain(p)) => write::password_message(out, p.as_bytes()),
                _ => {
                    return Err(Error::Auth(
                        "server asked for a cleartext password, but no plaintext password is configured".into(),
                    ))
                }
            }
        }
        AuthRequest::Md5 { salt } => {
            allow(Method::Md5)?;
            let resp = cred.secret.as_ref().and_then(|s| md5::response(s, user, salt)).ok_or_else(|| {
                Error::Auth("server asked for md5, but only a SCRAM verifier is configured for this user".into())
            })?;
            write::password_message(out, resp.as_bytes());
        }
        AuthRequest::Sasl { mechanisms } => {
            allow(Method::Scram)?;
            let plus = bmsg::sasl_has_mechanism(mechanisms, "SCRAM-SHA-256-PLUS");
            if !plus && !bmsg::sasl_has_mechanism(mechanisms, "SCRAM-SHA-256") {
                return Err(Error::Auth("server offers no SASL mechanism we support".into()));
            }
            let credential = match (&cred.secret, &cred.keys) {
                (Some(Secret::Plain(p)), _) => ClientCredential::Password(p.clone()),
                (_, Some(k)) => ClientCredential::Keys(k.clone()),
                _ => {
                    return Err(Error::Auth(
                        "server asked for SCRAM, but there is no plaintext password and no client has logged in with SCRAM yet to pass through"
                            .into(),
                    ))
                }
            };
            // Over TLS, bind the exchange to the connection (the proof is computed from the
            // ClientKey, which passthrough keys carry too).
            let binding = match (&st.binding, plus) {
                (Some(data), true) => ChannelBinding::TlsServerEndPoint(data.clone()),
                (Some(_), false) => ChannelBinding::Unused,
                (None, _) if tls => ChannelBinding::Unused,
                (None, _) => ChannelBinding::None,
            };
            let mut client = ScramClient::new(credential).with_channel_binding(binding);
            let first = client.client_first();
            write::sasl_initial_response(out, client.mechanism(), &first);
            st.scram = Some(client);
        }
        AuthRequest::SaslContinue(data) => {
            let client = st.scram.as_mut().ok_or_else(|| Error::Lost("unexpected SASLContinue".into()))?;
            let fin = client.server_first(data).map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
            write::sasl_response(out, &fin);
        }
        AuthRequest::SaslFinal(data) => {
            let client = st.scram.as_mut().ok_or_else(|| Error::Lost("unexpected SASLFinal".into()))?;
            client.server_final(data).map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
            st.scram_verified = true;
        }
        AuthRequest::Unsupported(code) => return Err(Error::Auth(format!("unsupported authentication method {code}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (t, v) in fields {
            b.push(*t);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn server_errors_reach_clients_with_a_valid_sqlstate_and_a_bounded_message() {
        let e =
            server_error(&error_body(&[(b'S', "FATAL"), (b'C', "28P01"), (b'M', "password authentication failed")]));
        assert!(
            matches!(&e, Error::Server { code, message } if code == "28P01" && message == "password authentication failed")
        );
        for bad in ["", "2800", "28P011", "28p01", "28\u{1}01"] {
            let e = server_error(&error_body(&[(b'C', bad), (b'M', "m")]));
            assert!(matches!(&e, Error::Server { code, .. } if code == "08P01"), "{bad:?}: {e}");
        }
        let e = server_error(&error_body(&[(b'C', "XX000")]));
        assert!(matches!(&e, Error::Server { message, .. } if message.contains("no message")), "{e}");
        // Cut at a character boundary, control characters gone.
        let long = format!("a\nb{}", "é".repeat(1000));
        let m = sanitize_message(&long);
        assert!(m.len() <= MAX_ERROR_MESSAGE + '…'.len_utf8() && m.ends_with('…') && m.starts_with("a b"), "{m}");
    }

    #[test]
    fn negotiate_protocol_version_is_described() {
        let mut body = 2i32.to_be_bytes().to_vec();
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(b"_pq_.x\0");
        let e = negotiate_error(&body).to_string();
        assert!(e.contains("3.2") && e.contains("_pq_.x"), "{e}");
        // Truncated: still an error, no panic.
        assert!(negotiate_error(&[0, 0]).to_string().contains("3.?"));
    }
}
