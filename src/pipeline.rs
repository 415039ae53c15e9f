//! What a server connection owes its current client: the queue of requests sent and not yet
//! answered, plus the relay's side buffers. Lives in the `ServerConn` (reused by every client
//! that borrows the connection, so no per-transaction allocation) and is empty whenever the
//! connection sits idle in a pool.
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
//!   to the next `Sync` ([`Pipeline::skipping`]); entries it ignores are popped without an
//!   answer and their optimistic statement bookkeeping is undone ([`Undo`]).
//! - `barrier`: when a batch changed statement bookkeeping that a failure could undo, the
//!   client's next batch is not scanned until the server has answered this one, so the
//!   bookkeeping it is scanned against is confirmed.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::prepared::{Key, ServerStatements, Stmt};
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
    /// (`relay::retry`): always dropped; an error or a different row description makes the
    /// retry fail.
    RetryOwn,
    /// pgsluice's repeat of a client's statement Describe that failed on a stale copy after
    /// PostgreSQL had sent its ParameterDescription: that message is dropped this time, the
    /// rest relayed.
    DescribeAgain,
    /// The Sync ending pgsluice's statement check of a retry: its ReadyForQuery is dropped
    /// and the retry goes on or fails (`relay::retry::decide`).
    RetryDecide,
    /// A statement refused by `session_state = "reject"`: pgsluice sent the server a text
    /// that fails to parse (so a transaction fails as PostgreSQL would fail it) and replaces
    /// the server's error by its own ([`Undo::reject`]).
    Reject,
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

/// Relay state that belongs to a server connection while a client holds it.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Outstanding requests, oldest first.
    pub queue: VecDeque<Expect>,
    /// The server is skipping messages until the next Sync after an error.
    pub skipping: bool,
    /// Do not scan further statement messages until the requests outstanding when it was
    /// set (`barrier_left` of them) are answered.
    pub barrier: bool,
    /// Requests still to be answered before the barrier lifts.
    pub barrier_left: usize,
    /// The request at the front of the queue started a COPY FROM STDIN (CopyInResponse seen).
    pub copy_in: bool,
    /// Bookkeeping may no longer match the server (a client ran SQL `PREPARE`/`DEALLOCATE`,
    /// or `DEALLOCATE ALL` with more pipelined behind it): close the connection at release.
    pub poisoned: bool,
    /// The current batch (since the last Sync) changed statement bookkeeping.
    pub batch_dirty: bool,
    /// The server answered `25006 read_only_sql_transaction`: if it is believed to be the
    /// primary, the topology should be probed again (it may have been demoted).
    pub read_only_error: bool,
    /// A FATAL/PANIC error the server sent before closing (`SQLSTATE: message`): held back
    /// from the client, which gets pgsluice's own error about the lost connection instead
    /// (carrying this text), so a session pgsluice keeps never sees a FATAL.
    pub server_fatal: Option<String>,
    /// The current batch has sent something the server may answer with an error.
    pub batch_started: bool,
    /// Rewritten client bytes, sent before the client buffer's scanned prefix.
    pub to_server: BytesMut,
    /// Rewritten server bytes, sent before the server buffer's scanned prefix.
    pub to_client: BytesMut,
    /// pgsluice statements prepared on this connection.
    pub statements: ServerStatements,
    /// Requests ending with ReadyForQuery (one per client batch) that are done — answered,
    /// skipped or ignored — since the connection opened; compared with
    /// `ServerStatements`' batch numbers.
    pub completed: u64,
    /// Traffic counted since the last fold into the pool's statistics.
    pub tally: crate::stats::Tally,
    /// The request captured for a retry after a stale-statement error.
    pub retry: crate::frontend::relay::retry::Capture,
    /// Row descriptions of this connection's copies of statements, where seen (a client's
    /// Describe, a retry): a client whose own description differs gets PostgreSQL's `0A000`
    /// instead of rows of a shape it does not expect. Survives [`Pipeline::reset`].
    pub shapes:
        std::collections::HashMap<crate::prepared::Key, u64, std::hash::BuildHasherDefault<crate::prepared::KeyHasher>>,
    /// A client pinned this connection by setting session state: it is reset
    /// (`server_reset_query`) before another client gets it. Survives [`Pipeline::reset`].
    pub session_dirty: bool,
}

impl Pipeline {
    /// Removes the front request (answered or skipped), counting it toward the barrier.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Expect> {
        let e = self.queue.pop_front()?;
        if e.kind.ends_with_ready() {
            self.completed += 1;
        }
        if self.barrier {
            self.barrier_left = self.barrier_left.saturating_sub(1);
            if self.barrier_left == 0 {
                self.barrier = false;
            }
        }
        Some(e)
    }

    /// Holds back statement messages until everything queued so far is answered.
    pub fn set_barrier(&mut self) {
        if !self.queue.is_empty() {
            self.barrier = true;
            self.barrier_left = self.queue.len();
        }
    }

    /// Nothing outstanding and nothing waiting to be written.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.to_server.is_empty() && self.to_client.is_empty()
    }

    /// Forgets the state of an abandoned exchange (the connection is being discarded or
    /// was reset); statement bookkeeping is kept.
    pub fn reset(&mut self) {
        // Abandoned requests still count as done batches (see `completed`).
        self.completed += self.queue.iter().filter(|e| e.kind.ends_with_ready()).count() as u64;
        self.queue.clear();
        self.skipping = false;
        self.barrier = false;
        self.barrier_left = 0;
        self.copy_in = false;
        self.batch_dirty = false;
        self.batch_started = false;
        self.read_only_error = false;
        self.server_fatal = None;
        self.to_server.clear();
        self.to_client.clear();
        self.tally.clear_timers();
        self.retry.reset();
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
