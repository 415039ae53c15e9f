//! The reply queue's entries: what the server owes for each request it was sent, and what
//! to do with the answer.
//!
//! Every client message that the server answers pushes one [`Expect`], in order; pgsluice's
//! own messages (a `Parse` to prepare a statement this server lacks, a `Close` evicting one)
//! push entries whose answers are swallowed, and messages pgsluice answers itself (a `Parse`
//! of a statement the server already has) push entries whose answer is synthesized when the
//! queue reaches them. That is how the client sees exactly the responses PostgreSQL would
//! have sent, in order, though the server saw a different message stream.
//!
//! Invariants:
//! - The queue front is the request whose response the server sends next.
//! - After an ErrorResponse to an extended-protocol message the server ignores everything up
//!   to the next `Sync`; entries it ignores are popped without an answer and their
//!   optimistic statement bookkeeping is undone ([`Undo`]).

use std::sync::Arc;

use crate::prepared::{Key, Stmt};
use crate::protocol::btag;

/// The kind of request, which decides which server message ends its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Parse → `1`.
    Parse,
    /// Bind → `2`.
    Bind,
    /// Describe → `t`? then `T` or `n`.
    Describe,
    /// Execute → `C`, `I` or `s` (after rows or a COPY).
    Execute,
    /// Close → `3`.
    Close,
    /// Sync → `Z`.
    Sync,
    /// Simple Query → `Z`.
    Query,
    /// FunctionCall → `Z`.
    FunctionCall,
}

impl Kind {
    /// Whether the server answers this request with a `ReadyForQuery`.
    #[inline]
    pub fn ends_with_ready(self) -> bool {
        matches!(self, Kind::Sync | Kind::Query | Kind::FunctionCall)
    }

    /// Whether server message `tag` completes the answer to this request. An ErrorResponse
    /// completes any extended-protocol message (the server then skips to Sync).
    #[inline]
    pub fn ends_on(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1' || tag == btag::ERROR_RESPONSE,
            Kind::Bind => tag == b'2' || tag == btag::ERROR_RESPONSE,
            Kind::Close => tag == b'3' || tag == btag::ERROR_RESPONSE,
            Kind::Describe => tag == b'T' || tag == b'n' || tag == btag::ERROR_RESPONSE,
            Kind::Execute => matches!(tag, b'C' | b'I' | b's' | btag::ERROR_RESPONSE),
            Kind::Sync | Kind::Query | Kind::FunctionCall => tag == btag::READY_FOR_QUERY,
        }
    }
}

/// What to do with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Relay it.
    Forward,
    /// pgsluice's own message: drop a successful answer, relay an error.
    Swallow,
    /// A Sync the client sent after the Execute/Query that may have started a COPY FROM
    /// STDIN, before its CopyDone/CopyFail: PostgreSQL ignores it if the COPY started (it
    /// ignores Sync in copy-in mode) and answers it otherwise. Settled when that request ends.
    CopySync,
    /// Not sent to the server: answer with this one-byte-body-less message (`1`
    /// ParseComplete, `3` CloseComplete) when the queue reaches it.
    Fake(u8),
    /// A simple query answered by pgsluice (`DEALLOCATE name`): CommandComplete with this tag
    /// and ReadyForQuery.
    Local(&'static str),
    /// A simple query `DEALLOCATE pgsluice_…` from a client: pgsluice's shared statements are
    /// not the client's, so it gets PostgreSQL's 26000 for a statement it does not have
    /// (name in [`Undo::name`]) and ReadyForQuery.
    LocalMissing,
    /// A client Parse of a name it already uses: the server's 42P05 names pgsluice's
    /// statement, so it is replaced by one naming the client's.
    Duplicate,
    /// Answer to a message pgsluice sent to retry a request after a stale-statement error
    /// (`exchange::retry`): always dropped; an error or a different row description makes the
    /// retry fail.
    RetryOwn,
    /// pgsluice's repeat of a client's statement Describe that failed on a stale copy after
    /// PostgreSQL had sent its ParameterDescription: that message is dropped this time, the
    /// rest relayed.
    DescribeAgain,
    /// The Sync ending pgsluice's statement check of a retry: its ReadyForQuery is dropped
    /// and the retry goes on or fails (`exchange::retry::decide`).
    RetryDecide,
    /// A statement refused by `session_state = "reject"`: pgsluice sent the server a text
    /// that fails to parse (so a transaction fails as PostgreSQL would fail it) and replaces
    /// the server's error by its own ([`Undo::reject`]).
    Reject,
    /// pgsluice's query setting a client's startup values again after its `RESET` (see
    /// `exchange::client::restore`): every answer is dropped, ParameterStatus included.
    Restore,
}

/// Statement bookkeeping to roll back when the server fails or skips the message.
#[derive(Debug, Default)]
pub struct Undo {
    /// Client name and statement that the message defined (`Parse`): forget it.
    pub defined: Option<(Box<[u8]>, Arc<Stmt>)>,
    /// Client name and statement that the message removed (`Close`, `DEALLOCATE`): restore it.
    pub removed: Option<(Box<[u8]>, Arc<Stmt>)>,
    /// Key the message prepared on the server: it is not there.
    pub prepared: Option<Key>,
    /// Key the message closed on the server: it is still there.
    pub closed: Option<Key>,
    /// The client's statement name, for the error of [`Action::Duplicate`] (not an undo).
    pub name: Option<Box<[u8]>>,
    /// The error message of [`Action::Reject`] (not an undo).
    pub reject: Option<Box<str>>,
    /// Its SQLSTATE, if not `0A000` (not an undo).
    pub reject_code: Option<&'static str>,
    /// A client Describe of this statement: its row description is recorded (not an undo).
    pub describe: Option<Arc<Stmt>>,
}

impl Undo {
    /// Whether there is nothing to undo.
    pub fn is_empty(&self) -> bool {
        self.defined.is_none() && self.removed.is_none() && self.prepared.is_none() && self.closed.is_none()
    }
}

/// One outstanding request.
#[derive(Debug)]
pub struct Expect {
    /// Which message ends its answer.
    pub kind: Kind,
    /// What to do with the answer.
    pub action: Action,
    /// Rollback if it fails or is skipped; boxed because it is rare.
    pub undo: Option<Box<Undo>>,
}

impl Expect {
    /// A request whose answer is relayed as is.
    #[inline]
    pub fn forward(kind: Kind) -> Expect {
        Expect { kind, action: Action::Forward, undo: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminators() {
        assert!(Kind::Parse.ends_on(b'1') && Kind::Parse.ends_on(b'E') && !Kind::Parse.ends_on(b'2'));
        assert!(Kind::Describe.ends_on(b'n') && Kind::Describe.ends_on(b'T') && !Kind::Describe.ends_on(b't'));
        assert!(Kind::Execute.ends_on(b's') && !Kind::Execute.ends_on(b'D') && !Kind::Execute.ends_on(b'G'));
        assert!(!Kind::Query.ends_on(b'E') && Kind::Query.ends_on(b'Z') && Kind::Sync.ends_with_ready());
    }
}
