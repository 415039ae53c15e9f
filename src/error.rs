//! `ClientError`: the one type every failure is turned into before the client sees it, at
//! one boundary (the session). It carries the SQLSTATE and message of the `ErrorResponse`,
//! whether the session ends, and whose fault it was (for logs and, later, health counters).

use std::borrow::Cow;

use bytes::BytesMut;

use crate::pool;
use crate::protocol::write::{self, Severity};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client broke the protocol, failed authentication, or asked for something refused.
    Client,
    /// A server failed or refused.
    Server,
    /// pgsluice itself (limits, timeouts, shutdown).
    Internal,
}

/// An error to report to a client as an `ErrorResponse`.
#[derive(Debug, Clone)]
pub struct ClientError {
    /// `ERROR` keeps the session, `FATAL` closes it.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: Cow<'static, str>,
    /// Human-readable message.
    pub message: Cow<'static, str>,
    /// Whose fault.
    pub source: ErrorSource,
}

impl ClientError {
    /// A session-ending error.
    pub fn fatal(code: &'static str, message: impl Into<Cow<'static, str>>, source: ErrorSource) -> ClientError {
        ClientError { severity: Severity::Fatal, code: Cow::Borrowed(code), message: message.into(), source }
    }

    /// A statement-level error; the session continues.
    pub fn error(code: &'static str, message: impl Into<Cow<'static, str>>, source: ErrorSource) -> ClientError {
        ClientError { severity: Severity::Error, code: Cow::Borrowed(code), message: message.into(), source }
    }

    /// The same error, made fatal.
    pub fn into_fatal(mut self) -> ClientError {
        self.severity = Severity::Fatal;
        self
    }

    /// Appends the `ErrorResponse` to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        write::error_response(buf, self.severity, &self.code, &self.message, None);
    }

    /// A protocol violation by the client.
    pub fn protocol(message: impl Into<Cow<'static, str>>) -> ClientError {
        ClientError::fatal("08P01", message, ErrorSource::Client)
    }
}

impl From<&pool::Error> for ClientError {
    fn from(e: &pool::Error) -> ClientError {
        match e {
            // query_canceled: the request was dropped because no server became free in time.
            pool::Error::Timeout(_) => ClientError::error("57014", e.to_string(), ErrorSource::Internal),
            pool::Error::Connect { code, server_code, message } => ClientError {
                severity: Severity::Error,
                code: match server_code {
                    Some(c) => Cow::Owned(c.to_string()),
                    None => Cow::Borrowed(code),
                },
                message: Cow::Owned(format!("pgsluice: could not get a server connection: {message}")),
                source: ErrorSource::Server,
            },
            pool::Error::Closed => {
                ClientError::fatal("57P01", "pgsluice: pool is shutting down", ErrorSource::Internal)
            }
            // connection_failure: the client may retry later; its session stays usable.
            pool::Error::NoPrimary { .. } | pool::Error::SplitBrain(_) | pool::Error::NoReplica(_) => {
                ClientError::error("08006", format!("pgsluice: {e}"), ErrorSource::Server)
            }
        }
    }
}
