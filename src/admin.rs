//! The admin console: the virtual database `admin_database` (`pgbouncer` by default),
//! reached over the normal listener and authentication by `admin_users` (every command) and
//! `stats_users` (`SHOW` only).
//!
//! It speaks the simple query protocol only, as PgBouncer's does: each `Query` is one
//! command ([`parse`]), answered with RowDescription/DataRow/CommandComplete (text format)
//! or CommandComplete, then ReadyForQuery. Extended-protocol messages get an `08P01` error
//! (once per batch) and are skipped up to the `Sync`. A bad command is an `ERROR`, and the
//! session goes on; only a protocol violation closes it.
//!
//! Invariants: nothing here holds a lock across an `.await`; commands that wait (PAUSE,
//! WAIT_CLOSE) poll the state they wait for, so a dropped admin session leaves nothing
//! behind.

pub mod control;
pub mod parse;
pub mod show;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::error::{ClientError, ErrorSource};
use crate::net::{read_message, ReadError, Stream};
use crate::protocol::{ftag, status, write};
use crate::shared::Shared;
use crate::shutdown::{DrainToken, Shutdown};
use crate::stats::ClientInfo;

pub use parse::{Command, Show};
pub use table::Table;

/// Largest admin console message accepted.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

/// What an admin console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `admin_users`: everything.
    Admin,
    /// `stats_users`: `SHOW` only.
    Stats,
}

/// A client logged in to the admin console.
pub struct AdminLogin {
    /// Process-unique client id (assigned at login).
    pub id: u64,
    /// Client socket.
    pub stream: Stream,
    /// Bytes already received after the login.
    pub buf: BytesMut,
    /// User name.
    pub user: String,
    /// Its rights.
    pub role: Role,
    /// `application_name` it gave.
    pub application_name: String,
}

/// The role of `user` in the console, if any.
pub fn role_of(cfg: &crate::config::Config, user: &str) -> Option<Role> {
    let g = cfg.general();
    if g.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if g.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    }
}

/// The ParameterStatus set sent at admin login.
pub fn login_params(cfg: &crate::config::Config) -> [(&'static str, String); 7] {
    [
        ("server_version", format!("{} (pgsluice)", crate::VERSION_NUMBER)),
        ("server_encoding", "UTF8".into()),
        ("client_encoding", "UTF8".into()),
        ("DateStyle", "ISO".into()),
        ("TimeZone", "UTC".into()),
        ("standard_conforming_strings", "on".into()),
        ("application_name", cfg.general().admin_database.clone()),
    ]
}

/// Serves one admin console session until the client leaves or pgsluice stops.
pub async fn serve(
    shared: Arc<Shared>,
    login: AdminLogin,
    peer: SocketAddr,
    mut shutdown: Shutdown,
    _drain: DrainToken,
) {
    let AdminLogin { id, mut stream, mut buf, user, role, application_name } = login;
    let cfg = shared.config.load_full();
    let reg = shared.clients.register(ClientInfo::new(
        id,
        cfg.general().admin_database.as_str().into(),
        user.as_str().into(),
        user.as_str().into(),
        peer,
        stream.local_addr(),
        stream.is_tls(),
        &application_name,
        shared.clock.now_us(),
        true,
    ));
    drop(cfg);
    let mut out = BytesMut::with_capacity(4096);
    // An extended-protocol batch was refused: skip to its Sync.
    let mut skipping = false;
    loop {
        let msg = tokio::select! {
            m = read_message(&mut stream, &mut buf, MAX_ADMIN_MESSAGE) => m,
            _ = shutdown.wait() => {
                let e = ClientError::fatal("57P01", "terminating connection due to administrator command (pgsluice is shutting down)", ErrorSource::Internal);
                return close_with(&mut stream, e).await;
            }
            _ = reg.info.killed() => return close_with(&mut stream, ClientError::fatal("57P01", "terminating connection due to administrator command (KILL_CLIENT)", ErrorSource::Internal)).await,
        };
        let (tag, body) = match msg {
            Ok(m) => m,
            Err(ReadError::Io(_) | ReadError::Closed) => return,
            Err(ReadError::Protocol(e)) => {
                return close_with(&mut stream, ClientError::protocol(format!("invalid message from client: {e}")))
                    .await
            }
        };
        out.clear();
        match tag {
            ftag::QUERY => {
                skipping = false;
                let text = crate::protocol::cstr(&body).and_then(|(q, _)| std::str::from_utf8(q).ok());
                match text {
                    Some(t) if t.trim().trim_end_matches(';').trim().is_empty() => write::empty(&mut out, b'I'),
                    Some(t) => {
                        tracing::info!(user = %user, command = %loggable(t), "admin console command");
                        if let Err(e) = run(&shared, role, t, &mut out).await {
                            e.encode(&mut out);
                        }
                    }
                    None => ClientError::error("22021", "query text is not valid UTF-8", ErrorSource::Client)
                        .encode(&mut out),
                }
                write::ready_for_query(&mut out, status::IDLE);
            }
            ftag::TERMINATE => return,
            ftag::SYNC => {
                skipping = false;
                write::ready_for_query(&mut out, status::IDLE);
            }
            ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::EXECUTE | ftag::CLOSE | ftag::FLUSH => {
                if !skipping {
                    skipping = true;
                    ClientError::error(
                        "08P01",
                        "the admin console supports only the simple query protocol",
                        ErrorSource::Client,
                    )
                    .encode(&mut out);
                }
            }
            other => {
                let e =
                    ClientError::protocol(format!("unexpected message type {:?} on the admin console", other as char));
                return close_with(&mut stream, e).await;
            }
        }
        if !out.is_empty() && (stream.write_all(&out).await.is_err() || stream.flush().await.is_err()) {
            return;
        }
    }
}

/// Parses, checks and runs one command, appending its answer to `out`.
async fn run(shared: &Arc<Shared>, role: Role, text: &str, out: &mut BytesMut) -> Result<(), ClientError> {
    let cmd = parse::parse(text).map_err(|e| ClientError::error("42601", e.0, ErrorSource::Client))?;
    if role == Role::Stats && !parse::is_read_only(&cmd) {
        return Err(ClientError::error(
            "42501",
            "admin access needed: this user is in stats_users, which allows only SHOW commands",
            ErrorSource::Client,
        ));
    }
    match cmd {
        Command::Show(what) => {
            let table = show::show(shared, what);
            table.encode(out, "SHOW");
            Ok(())
        }
        other => control::run(shared, other, out).await,
    }
}

/// The command as it may be logged: a `SET` of a password shows no value.
fn loggable(text: &str) -> std::borrow::Cow<'_, str> {
    match parse::parse(text) {
        Ok(Command::Set(key, _)) if key.contains("password") => format!("SET {key} = <redacted>").into(),
        // Not understood, but it may still carry one (`SET x TO '…'`).
        _ if text.to_ascii_lowercase().contains("password") => "<a command naming a password, not logged>".into(),
        _ => text.trim().into(),
    }
}

async fn close_with(stream: &mut Stream, e: ClientError) {
    let mut out = BytesMut::with_capacity(128);
    e.into_fatal().encode(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_set_on_the_console_are_not_logged() {
        assert_eq!(loggable("SET health_check_password = 'hunter2'"), "SET health_check_password = <redacted>");
        assert_eq!(loggable(" SHOW POOLS; "), "SHOW POOLS;");
        assert!(!loggable("SET health_check_password TO 'hunter2'").contains("hunter2"));
    }
}
