//! `ServerConn`: one logged-in PostgreSQL server connection, and `connect()` which opens it.
//!
//! Invariants: a `ServerConn` handed out by `connect()` has completed authentication and seen
//! `ReadyForQuery`; its read buffer holds no unread server bytes whenever it sits idle in a
//! pool (the relay only checks a connection in after the final `Z`).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::auth::scram::{ClientCredential, ClientKeys, ScramClient};
use crate::auth::{md5, Secret};
use crate::config::BackendAddr;
use crate::net::{read_message, ReadError, Stream};
use crate::params::ParamSet;
use crate::prepared::{tag_deallocates_all, ServerState};
use crate::protocol::backend::{self as bmsg, AuthRequest};
use crate::protocol::{btag, status, write};

/// Largest message accepted from a server during login and internal queries.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

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
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Error::Io(e),
            other => Error::Lost(other.to_string()),
        }
    }
}

pub use crate::stats::CancelTarget;

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
        let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|source| Error::Connect { addr: addr.to_string(), source })?;
        tcp.set_nodelay(true)?;
        if login.keepalive {
            socket2::SockRef::from(&tcp).set_keepalive(true)?;
        }
        let peer = tcp.peer_addr()?;
        let mut stream = Stream::Plain(tcp);
        let mut out = BytesMut::with_capacity(256);
        write::startup_message(
            &mut out,
            [("user", login.user), ("database", login.database), ("application_name", login.application_name)],
        );
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let mut scram: Option<ScramClient> = None;
        let mut params = Vec::new();
        let mut key: Option<(i32, Arc<[u8]>)> = None;
        loop {
            let (tag, body) = read_message(&mut stream, &mut buf, MAX_LOGIN_MESSAGE).await?;
            out.clear();
            match tag {
                btag::AUTHENTICATION => {
                    let req = bmsg::parse_auth_request(&body).map_err(|e| Error::Lost(e.to_string()))?;
                    authenticate(req, login.user, cred, &mut scram, &mut out)?;
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
                // NoticeResponse and NegotiateProtocolVersion need no answer.
                _ => {}
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

fn server_error(body: &[u8]) -> Error {
    let f = bmsg::parse_error_fields(body);
    Error::Server { code: f.code.to_string(), message: f.message.to_string() }
}

/// Answers one authentication request into `out` (empty when no answer is due).
fn authenticate(
    req: AuthRequest<'_>,
    user: &str,
    cred: &Credential,
    scram: &mut Option<ScramClient>,
    out: &mut BytesMut,
) -> Result<(), Error> {
    match req {
        AuthRequest::Ok => {}
        AuthRequest::Cleartext => match &cred.secret {
            Some(Secret::Plain(p)) => write::password_message(out, p.as_bytes()),
            _ => {
                return Err(Error::Auth(
                    "server asked for a cleartext password, but no plaintext password is configured".into(),
                ))
            }
        },
        AuthRequest::Md5 { salt } => {
            let resp = cred.secret.as_ref().and_then(|s| md5::response(s, user, salt)).ok_or_else(|| {
                Error::Auth("server asked for md5, but only a SCRAM verifier is configured for this user".into())
            })?;
            write::password_message(out, resp.as_bytes());
        }
        AuthRequest::Sasl { mechanisms } => {
            if !bmsg::sasl_has_mechanism(mechanisms, "SCRAM-SHA-256") {
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
            let mut client = ScramClient::new(credential);
            let first = client.client_first();
            write::sasl_initial_response(out, "SCRAM-SHA-256", &first);
            *scram = Some(client);
        }
        AuthRequest::SaslContinue(data) => {
            let client = scram.as_mut().ok_or_else(|| Error::Lost("unexpected SASLContinue".into()))?;
            let fin = client.server_first(data).map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
            write::sasl_response(out, &fin);
        }
        AuthRequest::SaslFinal(data) => {
            let client = scram.as_mut().ok_or_else(|| Error::Lost("unexpected SASLFinal".into()))?;
            client.server_final(data).map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
        }
        AuthRequest::Unsupported(code) => return Err(Error::Auth(format!("unsupported authentication method {code}"))),
    }
    Ok(())
}
