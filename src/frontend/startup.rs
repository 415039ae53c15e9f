//! Client startup: SSL/GSSENC negotiation, CancelRequest, the StartupMessage (protocol
//! version and parameters), authentication, and the login reply (AuthenticationOk,
//! ParameterStatus set, BackendKeyData, ReadyForQuery) — all within `client_login_timeout`.
//!
//! Protocol versions: 3.0 to 3.2, negotiated as PostgreSQL 18 does (a newer 3.x gets
//! NegotiateProtocolVersion down to 3.2); a 3.2 client gets a 32-byte cancel secret, an
//! older one 4 bytes ([`crate::cancel`]).
//!
//! Startup parameters: `user`, `database`, `_pq_.*` (negotiated away), tracked parameters
//! (the built-in six and `track_extra_parameters`, see [`crate::params`]), given directly or
//! as `-c name=value` inside `options`; anything else is refused with `08P01` before
//! authentication unless `ignore_startup_parameters` lists it.
//!
//! Invariants: wrong password and unknown user fail identically (same SQLSTATE, same
//! message, same SCRAM exchange shape, constant-time comparisons); nothing secret is logged;
//! any malformed input ends in an `ErrorResponse` for this client only; a logged-in client's
//! parameter set names every tracked parameter (`ClientParams::complete_login`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::auth::scram::{ClientKeys, ScramServer, Verifier};
use crate::auth::throttle::Admit;
use crate::auth::{md5, Secret, SecretKind};
use crate::cancel::{CancelHandle, KeyLength};
use crate::config::{AuthType, Config, Database, PoolMode};
use crate::error::{ClientError, ErrorSource};
use crate::net::{self, read_message, ReadError, Stream};
use crate::pool::PoolSet;
use crate::protocol::frontend::{self as fmsg, StartupPacket, LONG_CANCEL_KEYS_MINOR, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use crate::protocol::{ftag, status, write};
use crate::shared::Shared;

use crate::params::{parse_options, ClientParams, StartupOption};

/// Largest authentication message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

/// A logged-in client, ready for its session.
pub struct LoggedIn {
    /// Process-unique client id (logs, admin console, `application_name_add_client_id`).
    pub id: u64,
    /// Client socket.
    pub stream: Stream,
    /// Bytes the client already sent after its login messages.
    pub buf: BytesMut,
    /// The database it connected to.
    pub db: Arc<Database>,
    /// Client user name.
    pub user: String,
    /// Its pools (one per host).
    pub pool: PoolSet,
    /// Effective pool mode.
    pub mode: PoolMode,
    /// Its cancel key registration.
    pub cancel: CancelHandle,
    /// Tracked parameters it asked for.
    pub params: ClientParams,
    /// Its `session_state` policy, from the configuration it logged in under.
    pub session_state: crate::config::SessionState,
    /// The route it chose itself (`pgsluice.route`), over its user's and database's.
    pub route: Option<crate::config::Route>,
}

/// How a connection's startup ended.
pub enum Startup {
    /// Authenticated; run a session.
    LoggedIn(Box<LoggedIn>),
    /// Authenticated to the admin console.
    Admin(Box<crate::admin::AdminLogin>),
    /// A CancelRequest was handled, or the client went away; nothing more to do.
    Done,
}

/// Runs startup on a new connection. Errors are reported to the client here.
pub async fn startup(shared: &Arc<Shared>, stream: Stream, peer: SocketAddr) -> Startup {
    let cfg = shared.config.load_full();
    // Until its first byte: a place among the connections logging in, which a newer one may
    // take (slow-loris: sockets that send nothing cannot lock real clients out).
    // (client_login_timeout covers the whole login, this wait included.)
    let g = cfg.general();
    let first_byte = match (g.client_first_byte_timeout.nonzero(), g.client_login_timeout.nonzero()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(e) = first_byte_wait(shared, &stream, peer, first_byte).await {
        if g.log_pooler_errors {
            tracing::info!(%peer, reason = e, "connection closed before its login began");
        }
        return Startup::Done;
    }
    // Past its first byte, a place among the logins from its address until the login ends.
    let _slot = match stream.is_unix() {
        true => None,
        false => match shared.logins.authenticating(peer.ip()) {
            Some(slot) => Some(slot),
            None => {
                let e = ClientError::fatal(
                    "53300",
                    "too many connections logging in from this address (max_login_clients_per_host)",
                    ErrorSource::Client,
                );
                let mut stream = stream;
                refuse(&cfg, &mut stream, peer, e).await;
                return Startup::Done;
            }
        },
    };
    let mut stream = Some(stream);
    let mut buf = BytesMut::new();
    let run = login(shared, &cfg, &mut stream, &mut buf, peer);
    let res = match cfg.general().client_login_timeout.nonzero() {
        Some(t) => tokio::time::timeout(t, run).await.unwrap_or_else(|_| {
            Err(Some(ClientError::protocol(
                "pgsluice: client_login_timeout (client did not finish logging in in time)",
            )))
        }),
        None => run.await,
    };
    match res {
        Ok(Some(l)) => l,
        Ok(None) => Startup::Done,
        Err(err) => {
            if let (Some(e), Some(s)) = (err, stream.as_mut()) {
                refuse(&cfg, s, peer, e).await;
            }
            Startup::Done
        }
    }
}

/// Ends a login with `e` as a FATAL (logged when `log_pooler_errors`), giving the client a
/// second to take it.
async fn refuse(cfg: &Config, s: &mut Stream, peer: SocketAddr, e: ClientError) {
    if cfg.general().log_pooler_errors {
        tracing::warn!(%peer, code = %e.code, error = %e.message, "login failed");
    }
    let mut out = BytesMut::new();
    e.into_fatal().encode(&mut out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = s.write_all(&out).await;
        let _ = s.shutdown().await;
    })
    .await;
}

/// Waits for the connection's first byte, at most `limit`, as one of the connections that
/// have not sent one yet ([`crate::net::logins`]); `Some(reason)` if it must close first
/// (silent too long, or evicted for a newer connection).
async fn first_byte_wait(
    shared: &Shared,
    stream: &Stream,
    peer: SocketAddr,
    limit: Option<std::time::Duration>,
) -> Option<&'static str> {
    // Most clients have sent their startup packet by the time they are accepted: no wait,
    // no timer, no registration.
    if let Some(tcp) = stream.tcp() {
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if matches!(tcp.poll_peek(&mut cx, &mut buf), std::task::Poll::Ready(Ok(n)) if n > 0) {
            return None;
        }
    }
    let entry = shared.logins.enter(peer.ip());
    let readable = async {
        match stream {
            Stream::Unix(u) => {
                let _ = u.readable().await;
            }
            s => {
                if let Some(tcp) = s.tcp() {
                    let mut byte = [0u8; 1];
                    let _ = tcp.peek(&mut byte).await;
                }
            }
        }
    };
    let timed = async {
        match limit {
            Some(t) => tokio::time::timeout(t, readable).await.is_err(),
            None => {
                readable.await;
                false
            }
        }
    };
    tokio::select! {
        late = timed => late.then_some("no byte within client_first_byte_timeout"),
        _ = entry.pending.evicted() => Some("evicted for a newer connection (max_login_clients_per_host)"),
    }
}

/// `Err(None)`: the connection is gone, do not answer. `Err(Some(e))`: answer `e`.
type LoginResult<T> = Result<T, Option<ClientError>>;

fn read_err(e: ReadError) -> Option<ClientError> {
    match e {
        ReadError::Io(_) | ReadError::Closed => None,
        ReadError::Protocol(p) => Some(ClientError::protocol(format!("invalid message during login: {p}"))),
    }
}

/// Reads one untagged startup-family packet body.
async fn read_startup_packet(s: &mut Stream, buf: &mut BytesMut) -> LoginResult<BytesMut> {
    net::read_startup_packet(s, buf).await.map_err(|e| match e {
        ReadError::Protocol(crate::protocol::Error::BadLength { len, .. }) => {
            Some(ClientError::protocol(format!("invalid length of startup packet ({len} bytes)")))
        }
        other => read_err(other),
    })
}

async fn login(
    shared: &Arc<Shared>,
    cfg: &Arc<Config>,
    slot: &mut Option<Stream>,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> LoginResult<Option<Startup>> {
    // 1. Negotiate encryption until a StartupMessage arrives.
    if let Some(tls) = &cfg.tls {
        direct_tls(tls, slot, buf, peer).await?;
    }
    let (major, minor, params) = loop {
        let s = slot.as_mut().ok_or(None)?;
        let pkt = read_startup_packet(s, buf).await?;
        match fmsg::parse_startup(&pkt) {
            Ok(StartupPacket::SslRequest) => {
                if s.is_tls() {
                    return Err(Some(ClientError::protocol("SSLRequest received on an encrypted connection")));
                }
                if !buf.is_empty() {
                    // Bytes pipelined before the TLS handshake could be injected by a MITM.
                    return Err(Some(ClientError::protocol("received unencrypted data after SSL request")));
                }
                match cfg.tls.as_ref().filter(|_| !s.is_unix()) {
                    Some(tls) => {
                        s.write_all(b"S").await.map_err(|_| None)?;
                        let Some(Stream::Plain(tcp)) = slot.take() else { return Err(None) };
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
                        match acceptor.accept(tcp).await {
                            Ok(t) => *slot = Some(Stream::Tls(Box::new(t))),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return Err(None);
                            }
                        }
                    }
                    None => s.write_all(b"N").await.map_err(|_| None)?,
                }
            }
            Ok(StartupPacket::GssEncRequest) => {
                if !buf.is_empty() {
                    return Err(Some(ClientError::protocol("received unencrypted data after GSSENC request")));
                }
                s.write_all(b"N").await.map_err(|_| None)?;
            }
            Ok(StartupPacket::CancelRequest { pid, secret }) => {
                shared.cancel_request(pid, secret).await;
                return Ok(None);
            }
            Ok(StartupPacket::Startup { major, minor, params }) => {
                let params: Vec<(String, String)> = fmsg::startup_params(params)
                    .map(|r| r.map(|(k, v)| (k.to_string(), v.to_string())))
                    .collect::<Result<_, _>>()
                    .map_err(|_| Some(ClientError::protocol("invalid startup packet layout")))?;
                break (major, minor, params);
            }
            Err(_) => return Err(Some(ClientError::protocol("invalid startup packet"))),
        }
    };
    let stream = slot.as_mut().ok_or(None)?;
    let requested_minor = minor;
    if major != PROTOCOL_MAJOR {
        return Err(Some(ClientError::protocol(format!(
            "unsupported frontend protocol {major}.{minor}: server supports {PROTOCOL_MAJOR}.0 to {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
        ))));
    }
    // (TLS is not spoken over Unix sockets, which never leave the host.)
    if cfg.tls.as_ref().is_some_and(|t| t.mode.requires_tls()) && !stream.is_tls() && !stream.is_unix() {
        return Err(Some(ClientError::fatal("28000", "SSL required", ErrorSource::Client)));
    }

    // 2. Startup parameters.
    let g = cfg.general();
    let mut user = None;
    let mut database = None;
    let mut client_params = ClientParams::default();
    let mut route = None;
    let mut unrecognized = Vec::new();
    // PostgreSQL applies `options` first, so a parameter of its own wins over `-c`.
    for (_, v) in params.iter().filter(|(k, _)| k == "options") {
        apply_options(cfg, v, &mut client_params, &mut route)?;
    }
    for (k, v) in &params {
        match k.as_str() {
            "user" => user = Some(v.clone()),
            "database" => database = Some(v.clone()),
            "options" => {}
            k if k.eq_ignore_ascii_case(ROUTE_PARAMETER) => {
                if !ignored_parameter(cfg, ROUTE_PARAMETER) {
                    route = Some(parse_route(v)?);
                }
            }
            k if k.starts_with("_pq_.") => unrecognized.push(k.to_string()),
            k => match cfg.tracked.lookup(k) {
                Some(name) => client_params.set(name, v),
                None if ignored_parameter(cfg, k) => {}
                None => return Err(Some(ClientError::protocol(format!("unsupported startup parameter: {k}")))),
            },
        }
    }
    // As PostgreSQL 18: the client's minor version, or ours if it asked for a newer one; a
    // NegotiateProtocolVersion (with that version) when it asked for a newer one or for
    // `_pq_` options. 3.2 and up get long cancel keys.
    let minor = minor.min(PROTOCOL_MINOR);
    let mut out = BytesMut::with_capacity(512);
    if requested_minor > PROTOCOL_MINOR || !unrecognized.is_empty() {
        write::negotiate_protocol_version(&mut out, minor, unrecognized.iter().map(String::as_str));
    }
    let key_length = if minor >= LONG_CANCEL_KEYS_MINOR { KeyLength::Long } else { KeyLength::Short };
    let user = user.filter(|u| !u.is_empty()).ok_or_else(|| {
        Some(ClientError::fatal("28000", "no PostgreSQL user name specified in startup packet", ErrorSource::Client))
    })?;
    let database = database.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
    let id = shared.next_client_id();
    if g.application_name_add_host {
        let app = client_params.get("application_name").unwrap_or("").to_string();
        client_params.set("application_name", &format!("{app} - {peer}"));
    }
    if g.application_name_add_client_id {
        let app = client_params.get("application_name").unwrap_or("").to_string();
        client_params.set("application_name", &format!("{app} #{id}"));
    }

    // 3. Authenticate.
    // A user missing from the auth_file may be found with the database's auth_query.
    let looked_up = match cfg.users.get(&user) {
        Some(_) => None,
        None => look_up(shared, cfg, &database, &user).await?,
    };
    // A pair (address, user) with recent failed logins waits its turn first.
    // (No clock read while no pair is tracked: the common login pays one atomic load.)
    let admit =
        if shared.throttle.is_empty() { Admit::Now } else { shared.throttle.admit(peer.ip(), &user, Instant::now()) };
    match admit {
        Admit::Now => {}
        Admit::After(wait) => tokio::time::sleep(wait).await,
        Admit::Refuse(wait) => {
            return Err(Some(ClientError::fatal(
                "28000",
                format!(
                    "too many failed logins for user \"{user}\" from this address: try again in {} s",
                    wait.as_secs().max(1)
                ),
                ErrorSource::Client,
            )))
        }
    }
    let keys =
        match authenticate(shared, cfg, stream, buf, &mut out, (&user, &database, peer), looked_up.as_deref()).await {
            Ok(k) => {
                shared.throttle.succeeded(peer.ip(), &user);
                k
            }
            Err(e) => {
                if e.as_ref().is_some_and(|e| e.code.starts_with("28")) {
                    shared.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    shared.throttle.failed(peer.ip(), &user, Instant::now());
                }
                return Err(e);
            }
        };

    if database == g.admin_database {
        return admin_login(cfg, slot, buf, out, (id, key_length), user, &client_params).await.map(Some);
    }

    // 4. Database and pool.
    let Some(db) = cfg.databases.get(&database).cloned() else {
        return Err(Some(ClientError::fatal(
            "3D000",
            format!("database \"{database}\" does not exist"),
            ErrorSource::Client,
        )));
    };
    if shared.control(&db.name).is_disabled() {
        return Err(Some(ClientError::fatal(
            "55000",
            format!("database \"{database}\" is disabled (admin console DISABLE)"),
            ErrorSource::Internal,
        )));
    }
    let Some(cluster) = shared.cluster(&db.name) else {
        return Err(Some(ClientError::fatal(
            "3D000",
            format!("database \"{database}\" is being reconfigured, try again"),
            ErrorSource::Internal,
        )));
    };
    let pool = shared.pools.get_or_create(cfg, &cluster, &db, &user);
    if let Some(found) = &looked_up {
        // What auth_query found logs the pool in too (an md5 hash; SCRAM learns the keys).
        pool.learn_secret(&found.secret);
    }
    if let Some(k) = keys {
        cluster.learn_probe_keys(&user, &k);
        if db.fixed_user.is_none() {
            pool.learn_scram_keys(k);
        }
    }
    let server_params = pool.server_params().await.map_err(|e| Some(ClientError::from(&e).into_fatal()))?;
    let (cancel, key) = shared.cancel.register_with(key_length);

    // 5. Login reply, one write.
    // Tracked parameters the client did not choose take the server default, so a value
    // another client set on a shared server connection is undone before this one uses it.
    client_params.complete_login(&cfg.tracked, &server_params);
    write::auth_ok(&mut out);
    for (k, v) in server_params.iter() {
        write::parameter_status(&mut out, k, client_params.get(k).unwrap_or(v));
    }
    write::backend_key_data_secret(&mut out, key.pid, key.secret());
    write::ready_for_query(&mut out, status::IDLE);
    stream.write_all(&out).await.map_err(|_| None)?;
    // (TLS: rustls may hold the tail until flushed, and the session then waits to read.)
    stream.flush().await.map_err(|_| None)?;

    client_params.intern(pool.interner());
    let mode = cfg.pool_mode(&db, &user);
    let session_state = cfg.session_state(&database, &user);
    let stream = slot.take().ok_or(None)?;
    Ok(Some(Startup::LoggedIn(Box::new(LoggedIn {
        id,
        stream,
        buf: std::mem::take(buf),
        db,
        user,
        pool,
        mode,
        cancel,
        params: client_params,
        session_state,
        route,
    }))))
}

/// `auth_query`: the user as the database `database` finds it (`None`: unknown there, or
/// the database has no `auth_user`, or does not exist: the login then fails as for any
/// unknown user). A failed lookup is an error for the client (`08006`), never "unknown".
async fn look_up(
    shared: &Shared,
    cfg: &Config,
    database: &str,
    user: &str,
) -> LoginResult<Option<Arc<crate::config::UserAuth>>> {
    let Some(db) = cfg.databases.get(database).filter(|d| d.auth_lookup.is_some()) else { return Ok(None) };
    let Some(cluster) = shared.cluster(&db.name) else { return Ok(None) };
    let g = cfg.general();
    let ttl = crate::auth_query::Ttl {
        found: g.auth_cache_ttl.0,
        unknown: g.auth_negative_cache_ttl.0,
        timeout: g.server_connect_timeout.0,
    };
    shared.auth_query.lookup(&cluster, db, user, ttl).await.map_err(|e| {
        tracing::warn!(db = %db.name, error = %e, "auth_query lookup failed");
        Some(ClientError::fatal("08006", format!("could not look up the user: {e}"), ErrorSource::Server))
    })
}

/// PostgreSQL 17's direct TLS (`sslnegotiation=direct`): a connection that starts with a TLS
/// ClientHello (record type 22) instead of an SSLRequest is TLS from the first byte. As in
/// PostgreSQL, the client must have negotiated ALPN `postgresql` (else an attacker could
/// relay another protocol's TLS session to the pooler). Anything else is left for the
/// startup packet reader.
async fn direct_tls(
    tls: &crate::config::TlsSettings,
    slot: &mut Option<Stream>,
    buf: &BytesMut,
    peer: SocketAddr,
) -> LoginResult<()> {
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let Some(Stream::Plain(tcp)) = slot.as_ref() else { return Ok(()) };
    let mut first = [0u8; 1];
    if !buf.is_empty() || !matches!(tcp.peek(&mut first).await, Ok(1)) || first[0] != TLS_HANDSHAKE_RECORD {
        return Ok(());
    }
    let Some(Stream::Plain(tcp)) = slot.take() else { return Err(None) };
    let t = match tokio_rustls::TlsAcceptor::from(tls.server_config.clone()).accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "direct TLS handshake failed");
            return Err(None);
        }
    };
    let alpn_ok = t.get_ref().1.alpn_protocol() == Some(b"postgresql");
    *slot = Some(Stream::Tls(Box::new(t)));
    if !alpn_ok {
        return Err(Some(ClientError::protocol(
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )));
    }
    Ok(())
}

/// Finishes the login of an authenticated admin console user: users in neither
/// `admin_users` nor `stats_users` are refused (as PgBouncer does, at login).
async fn admin_login(
    cfg: &Config,
    slot: &mut Option<Stream>,
    buf: &mut BytesMut,
    mut out: BytesMut,
    (id, key_length): (u64, KeyLength),
    user: String,
    params: &ClientParams,
) -> LoginResult<Startup> {
    if cfg.general().auth_type == crate::config::AuthType::Any {
        // Anyone can claim any name: nobody gets the console.
        return Err(Some(ClientError::fatal(
            "28000",
            "not allowed: the admin console is closed under auth_type = \"any\"",
            ErrorSource::Client,
        )));
    }
    let Some(role) = crate::admin::role_of(cfg, &user) else {
        return Err(Some(ClientError::fatal(
            "28000",
            format!("not allowed: user \"{user}\" is in neither admin_users nor stats_users"),
            ErrorSource::Client,
        )));
    };
    write::auth_ok(&mut out);
    for (k, v) in crate::admin::login_params(cfg) {
        write::parameter_status(&mut out, k, &v);
    }
    // (A key of the client's length that names nothing: the console has nothing to cancel.)
    let secret: [u8; crate::cancel::LONG_SECRET] = rand::random();
    let len = if key_length == KeyLength::Long { secret.len() } else { 4 };
    write::backend_key_data_secret(&mut out, rand::random::<i32>() & 0x7fff_ffff, &secret[..len]);
    write::ready_for_query(&mut out, status::IDLE);
    let mut stream = slot.take().ok_or(None)?;
    stream.write_all(&out).await.map_err(|_| None)?;
    stream.flush().await.map_err(|_| None)?;
    Ok(Startup::Admin(Box::new(crate::admin::AdminLogin {
        id,
        stream,
        buf: std::mem::take(buf),
        user,
        role,
        application_name: params.get("application_name").unwrap_or("").to_string(),
    })))
}

/// Whether `ignore_startup_parameters` lists `name` (case-insensitively).
fn ignored_parameter(cfg: &Config, name: &str) -> bool {
    cfg.general().ignore_startup_parameters.iter().any(|i| i.eq_ignore_ascii_case(name))
}

/// The startup parameter (or `-c` item of `options`) by which a client chooses its route.
const ROUTE_PARAMETER: &str = "pgsluice.route";

/// A client's `pgsluice.route` value; anything but `primary`, `replica` or `auto` is a FATAL
/// as PostgreSQL answers an invalid parameter value at startup.
fn parse_route(value: &str) -> LoginResult<crate::config::Route> {
    crate::config::Route::parse(value).ok_or_else(|| {
        Some(ClientError::fatal(
            "22023",
            format!(
                "invalid value for parameter \"{ROUTE_PARAMETER}\": \"{value}\" (expected primary, replica or auto)"
            ),
            ErrorSource::Client,
        ))
    })
}

/// Applies the `options` startup parameter: `-c name=value` items of tracked parameters
/// are taken like startup parameters, `-c pgsluice.route=…` chooses the route. Anything
/// else is refused as PgBouncer does, unless ignored: by name, or all of it when `options`
/// itself is in `ignore_startup_parameters`.
fn apply_options(
    cfg: &Config,
    options: &str,
    client_params: &mut ClientParams,
    route: &mut Option<crate::config::Route>,
) -> LoginResult<()> {
    let ignore_all = ignored_parameter(cfg, "options");
    for item in parse_options(options) {
        match item {
            StartupOption::Set { name, value } if name.eq_ignore_ascii_case(ROUTE_PARAMETER) => {
                // (An operator who lists it in ignore_startup_parameters keeps clients on
                // their configured route.)
                if !ignore_all && !ignored_parameter(cfg, ROUTE_PARAMETER) {
                    *route = Some(parse_route(&value)?);
                }
            }
            StartupOption::Set { name, value } => match cfg.tracked.lookup(&name) {
                Some(tracked) => client_params.set(tracked, &value),
                None if ignore_all || ignored_parameter(cfg, &name) => {}
                None => {
                    return Err(Some(ClientError::protocol(format!(
                        "unsupported startup parameter in options: {name}"
                    ))))
                }
            },
            StartupOption::Unsupported(_) if ignore_all => {}
            StartupOption::Unsupported(arg) => {
                return Err(Some(ClientError::protocol(format!(
                    "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed (got {arg:?})"
                ))))
            }
        }
    }
    Ok(())
}

/// `auth_type = "hba"`: the method of the first `auth_hba_file` rule that matches this
/// connection, as an `auth_type`; no rule, or `reject`, refuses it with PostgreSQL's words.
fn hba_method(cfg: &Config, s: &Stream, peer: SocketAddr, database: &str, user: &str) -> LoginResult<AuthType> {
    use crate::auth::hba::{Conn, Method};
    let tls = s.is_tls();
    let ip = peer.ip();
    let conn = if s.is_unix() { Conn::Local } else { Conn::Host { addr: ip, tls } };
    let method = cfg.hba.as_ref().and_then(|h| h.method(conn, database, user));
    let refuse = |what: &str| {
        let text = match conn {
            Conn::Local => format!("{what} for host \"[local]\", user \"{user}\", database \"{database}\""),
            Conn::Host { .. } => {
                let encryption = if tls { "SSL encryption" } else { "no encryption" };
                format!("{what} for host \"{ip}\", user \"{user}\", database \"{database}\", {encryption}")
            }
        };
        Some(ClientError::fatal("28000", text, ErrorSource::Client))
    };
    match method {
        None => Err(refuse("no pg_hba.conf entry")),
        Some(Method::Reject) => Err(refuse("pg_hba.conf rejects connection")),
        Some(Method::Trust) => Ok(AuthType::Trust),
        Some(Method::Md5) => Ok(AuthType::Md5),
        Some(Method::Password) => Ok(AuthType::Plain),
        Some(Method::ScramSha256) => Ok(AuthType::ScramSha256),
        Some(Method::Cert) => Ok(AuthType::Cert),
        Some(Method::Peer) => Ok(AuthType::Peer),
    }
}

/// HBA `peer`: the operating-system user at the other end of the Unix socket must be the
/// user the client logs in as.
fn peer_login(s: &Stream, user: &str) -> LoginResult<Option<ClientKeys>> {
    let os_user = match s {
        Stream::Unix(u) => u.peer_cred().ok().and_then(|c| crate::net::user_name(c.uid())),
        _ => None,
    };
    if os_user.as_deref() == Some(user) {
        return Ok(None);
    }
    tracing::info!(user, os_user = ?os_user, "peer authentication failed");
    Err(Some(ClientError::fatal(
        "28000",
        format!("Peer authentication failed for user \"{user}\""),
        ErrorSource::Client,
    )))
}

/// `auth_type = "cert"`: the client's certificate (verified during the TLS handshake against
/// `client_tls_ca_file`) must name the user as its common name.
fn certificate_login(s: &Stream, user: &str) -> LoginResult<Option<ClientKeys>> {
    let Some(cert) = s.client_certificate() else {
        return Err(Some(ClientError::fatal(
            "28000",
            "connection requires a valid client certificate",
            ErrorSource::Client,
        )));
    };
    match crate::net::tls::common_name(cert) {
        Some(cn) if cn == user => Ok(None),
        cn => {
            tracing::info!(user, certificate_cn = ?cn, "certificate authentication failed: the user name is not the certificate's common name");
            Err(Some(ClientError::fatal(
                "28000",
                format!("certificate authentication failed for user \"{user}\""),
                ErrorSource::Client,
            )))
        }
    }
}

fn auth_failed(user: &str) -> Option<ClientError> {
    Some(ClientError::fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
        ErrorSource::Client,
    ))
}

/// Reads the client's next `p` message.
async fn read_password_message(s: &mut Stream, buf: &mut BytesMut) -> LoginResult<BytesMut> {
    let (tag, body) = read_message(s, buf, MAX_AUTH_MESSAGE).await.map_err(read_err)?;
    if tag != ftag::PASSWORD {
        return Err(Some(ClientError::protocol(format!(
            "expected password response, got message type {:?}",
            tag as char
        ))));
    }
    Ok(body)
}

/// Sends what is in `out` and clears it.
async fn flush(s: &mut Stream, out: &mut BytesMut) -> LoginResult<()> {
    s.write_all(out).await.map_err(|_| None)?;
    s.flush().await.map_err(|_| None)?;
    out.clear();
    Ok(())
}

/// Authenticates per `auth_type`. Returns SCRAM keys when the client used SCRAM (they let
/// pgsluice log in to servers that hold the same verifier).
async fn authenticate(
    shared: &Shared,
    cfg: &Config,
    s: &mut Stream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    (user, database, peer): (&str, &str, SocketAddr),
    looked_up: Option<&crate::config::UserAuth>,
) -> LoginResult<Option<ClientKeys>> {
    let entry = cfg.users.get(user).map(|e| &**e).or(looked_up);
    let auth_type = match cfg.general().auth_type {
        AuthType::Hba => hba_method(cfg, s, peer, database, user)?,
        t => t,
    };
    let use_scram = match auth_type {
        // Only the users the auth_file names (an unknown name fails as a wrong password would).
        AuthType::Trust if entry.is_some() => return Ok(None),
        AuthType::Trust => return Err(auth_failed(user)),
        AuthType::Any => return Ok(None),
        AuthType::Cert => return certificate_login(s, user),
        AuthType::Peer => return peer_login(s, user),
        AuthType::ScramSha256 => true,
        // (An unknown user gets the exchange most users get: the method offered tells nothing.)
        AuthType::Md5 => match entry {
            Some(e) => matches!(e.secret, Secret::Scram(_)),
            None => cfg.mock_secret.kind == SecretKind::Scram,
        },
        AuthType::Plain => false,
        // (Resolved above.)
        AuthType::Hba => return Err(auth_failed(user)),
    };
    if use_scram {
        // Unknown users and md5-only secrets get a mock verifier: the exchange looks the same
        // and fails at the end with the same error.
        let real = entry.and_then(|e| e.scram_verifier()).cloned();
        let known = real.is_some();
        let verifier = real.unwrap_or_else(|| shared.mock_verifier(user, cfg.mock_secret.iterations));
        // Over TLS, SCRAM-SHA-256-PLUS is offered too (bound to pgsluice's certificate).
        let binding = if s.is_tls() { cfg.tls.as_ref().and_then(|t| t.end_point.clone()) } else { None };
        let mut server = ScramServer::from_verifier(verifier).with_channel_binding(binding);
        write::auth_sasl(out, server.mechanisms());
        flush(s, out).await?;
        let body = read_password_message(s, buf).await?;
        let (mech, data) = fmsg::parse_sasl_initial_response(&body)
            .map_err(|_| Some(ClientError::protocol("malformed SASLInitialResponse")))?;
        let first = server.client_first(mech, data).map_err(|e| Some(sasl_error(e)))?;
        write::auth_sasl_continue(out, &first);
        flush(s, out).await?;
        let body = read_password_message(s, buf).await?;
        let (fin, keys) = match server.client_final(&body) {
            Ok(r) if known => r,
            _ => return Err(auth_failed(user)),
        };
        write::auth_sasl_final(out, &fin);
        return Ok(Some(keys));
    }
    let secret = entry.map(|e| &e.secret);
    if auth_type == AuthType::Md5 {
        let salt = md5::random_salt();
        write::auth_md5(out, salt);
        flush(s, out).await?;
        let body = read_password_message(s, buf).await?;
        let resp =
            fmsg::parse_password(&body).map_err(|_| Some(ClientError::protocol("malformed password message")))?;
        return match secret {
            Some(sec) if md5::verify(sec, user, salt, resp) => Ok(None),
            Some(_) => Err(auth_failed(user)),
            None => {
                // (The same hashing as for a user that exists.)
                let mock = Secret::Md5(format!("md5{:032x}", rand::random::<u128>()));
                std::hint::black_box(md5::verify(&mock, user, salt, resp));
                Err(auth_failed(user))
            }
        };
    }
    // Plain.
    write::auth_cleartext(out);
    flush(s, out).await?;
    let body = read_password_message(s, buf).await?;
    let pw = fmsg::parse_password(&body).map_err(|_| Some(ClientError::protocol("malformed password message")))?;
    let ok = match secret {
        Some(sec) => plain_matches(sec, user, pw),
        None => {
            // An unknown user costs what a known one does (no timing tells them apart).
            std::hint::black_box(plain_matches(&mock_secret(shared, cfg, user), user, pw));
            false
        }
    };
    if ok {
        Ok(None)
    } else {
        Err(auth_failed(user))
    }
}

/// A secret of the kind most users have, that no password matches.
fn mock_secret(shared: &Shared, cfg: &Config, user: &str) -> Secret {
    let unmatched = || format!("{:032x}", rand::random::<u128>());
    match cfg.mock_secret.kind {
        SecretKind::Scram => Secret::Scram(shared.mock_verifier(user, cfg.mock_secret.iterations)),
        SecretKind::Md5 => Secret::Md5(format!("md5{}", unmatched())),
        SecretKind::Plain => Secret::Plain(unmatched()),
    }
}

fn sasl_error(e: crate::auth::Error) -> ClientError {
    match e {
        crate::auth::Error::UnsupportedMechanism => {
            ClientError::fatal("28000", "client selected an invalid SASL authentication mechanism", ErrorSource::Client)
        }
        crate::auth::Error::ChannelBindingNotSupported => {
            ClientError::protocol("channel binding is not supported by pgsluice (SCRAM-SHA-256-PLUS not offered)")
        }
        other => ClientError::protocol(format!("malformed SCRAM message: {other}")),
    }
}

/// Checks a cleartext password against any stored secret form, in constant time.
fn plain_matches(secret: &Secret, user: &str, pw: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(pw) = std::str::from_utf8(pw) else { return false };
    match secret {
        Secret::Plain(p) => p.as_bytes().ct_eq(pw.as_bytes()).into(),
        Secret::Md5(h) => {
            let computed = postgres_protocol::password::md5(pw.as_bytes(), user);
            h.as_bytes().ct_eq(computed.as_bytes()).into()
        }
        Secret::Scram(v) => {
            let candidate = Verifier::from_password(pw, &v.salt, v.iterations);
            candidate.stored_key.ct_eq(&v.stored_key).into()
        }
    }
}
