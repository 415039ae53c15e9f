//! Size budgets (issue 21): the types every client or every server connection carries, each
//! checked against a committed size. A change that grows one fails here with the old and
//! new size; raising a budget is allowed, in the same commit, with the reason in its message.
//! The session's own futures are budgeted in `frontend::session`'s tests; instructions per
//! transaction and RSS per idle client in `benches/cost` (`.ci/run`).
//!
//! Sizes are those of the test (debug) build on x86_64.

use std::mem::size_of;

/// `Exchange`: the protocol state of one attachment (scan positions, the transaction
/// bookkeeping, the reply queue's header, two side buffers, the retry capture, the tally).
/// One per server connection, not per client. (+8: the startup values to set again after a
/// client's `RESET`, boxed.)
const EXCHANGE: usize = 416;
/// `ServerConn`: socket, read buffer, cancel key, parameter list, timestamps, lasting state
/// (statements, shapes, flags). One per server connection.
const SERVER_CONN: usize = 304;
/// `ClientInfo`: what the console and cancellation see of every logged-in client.
const CLIENT_INFO: usize = 208;
/// `ClientStatements`: a client's named statements, one word until it names one.
const CLIENT_STATEMENTS: usize = 8;

fn check(name: &str, size: usize, budget: usize) -> Option<String> {
    (size > budget).then(|| format!("{name}: {size} bytes, budget {budget}"))
}

#[test]
fn per_client_and_per_connection_types_fit_their_budgets() {
    let over: Vec<String> = [
        check("Exchange", size_of::<crate::exchange::Exchange>(), EXCHANGE),
        check("ServerConn", size_of::<crate::backend::ServerConn>(), SERVER_CONN),
        check("ClientInfo", size_of::<crate::stats::ClientInfo>(), CLIENT_INFO),
        check("ClientStatements", size_of::<crate::prepared::ClientStatements>(), CLIENT_STATEMENTS),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(over.is_empty(), "over budget: {}", over.join("; "));
}
