//! Client → server scanning: request accounting, and the rewriting of named prepared
//! statements (transaction and statement mode).
//!
//! For each message: push what the server will owe for it onto the reply queue, and
//! either forward it untouched (in place), or rewrite it into the side buffer, or drop it and
//! let the queue answer for it. Statement names are rewritten in `Parse`, `Bind`,
//! `Describe 'S'` and `Close 'S'`; everything else passes as opaque bytes.
//!
//! A request that resets a tracked parameter the client set at startup (`RESET`, `RESET ALL`,
//! `DISCARD ALL`, `SET … TO DEFAULT`) is followed by pgsluice's own query setting the startup
//! value again ([`restore`], answered by [`Action::Restore`]).

use std::sync::Arc;

use bytes::Buf;

use super::queue::{Action, Expect, Kind, Undo};
use super::{server, Ctx, Half};
use crate::prepared::{parse_deallocate, Key, Stmt};
use crate::protocol::{self, cstr, ftag, status, write, Header, HEADER_LEN};
use crate::sql::session_state;

/// Longest simple query inspected for `DEALLOCATE name`.
const MAX_DEALLOCATE_QUERY: usize = 1024;

/// Scans newly received client bytes. Returns `Err` on an invalid message. Stops early (with
/// `pos.need` set) when a message that must be read whole has not fully arrived, and at a
/// pipeline barrier.
pub fn scan_client(c: &mut Half<'_>, s: &mut Half<'_>, ctx: &mut Ctx<'_>) -> Result<(), protocol::Error> {
    loop {
        let held = scan_messages(c, ctx)?;
        // One write: the scanned prefix follows whatever was rewritten.
        if !ctx.x.to_server.is_empty() {
            c.spill(&mut ctx.x.to_server);
        }
        server::advance(s, ctx);
        // Answers given without the server (DEALLOCATE) may have lifted the barrier.
        if !held || ctx.x.barrier {
            return Ok(());
        }
    }
}

/// The scanning loop of [`scan_client`]; returns whether it stopped at the barrier.
fn scan_messages(c: &mut Half<'_>, ctx: &mut Ctx<'_>) -> Result<bool, protocol::Error> {
    c.pos.need = 0;
    loop {
        if !c.stream_owed() {
            return Ok(false);
        }
        let t = &ctx.x.txn;
        if t.one_request && t.requests > 0 && !t.unsynced && (t.pending > 0 || t.status == status::IDLE) {
            // A read-routed server outside a transaction: the next request is routed anew.
            return Ok(false);
        }
        let rest = &c.buf[c.pos.fwd..];
        let Some(hdr) = Header::parse(rest, ctx.max_body)? else {
            break;
        };
        let frame_len = hdr.frame_len();
        let whole = rest.len() >= frame_len;
        if !whole {
            // Only a named Parse is kept (an unnamed one streams): which is it?
            let first = rest.get(HEADER_LEN).copied();
            if hdr.tag == ftag::PARSE && ctx.track && first.is_none() {
                c.pos.need = HEADER_LEN + 1;
                break;
            }
            // Rewriting needs some messages whole; wait for them, up to a bound: nothing
            // larger than a client's statements may hold is read whole.
            let named = !(hdr.tag == ftag::PARSE && first == Some(0));
            if needs_whole(hdr.tag, frame_len, ctx.track && named, reads_text(ctx)) {
                let limit = super::max_read_whole(ctx.statement_limits);
                if frame_len > limit {
                    let (len, limit) = ((frame_len - 1) as u32, (limit - 1) as u32);
                    return Err(protocol::Error::TooLargeToInspect { tag: hdr.tag, len, limit });
                }
                c.pos.need = frame_len;
                break;
            }
        }
        // Behind a barrier, stop at the first message whose handling reads the statement
        // bookkeeping; COPY data, Sync, Execute and the like go on (the server may be
        // waiting for them).
        if ctx.x.barrier && reads_statements(hdr.tag, &rest[HEADER_LEN..frame_len.min(rest.len())]) {
            return Ok(true);
        }
        // A retry is checking a statement before it sends the request again: later requests
        // wait, so they reach the server after it (`retry`).
        if ctx.x.retry.holds_client() {
            return Ok(true);
        }
        if ctx.track {
            let frame = whole.then(|| &c.buf[c.pos.fwd..c.pos.fwd + frame_len]);
            ctx.x.retry.message(hdr.tag, frame);
        }
        match hdr.tag {
            ftag::QUERY => {
                if whole && reads_text(ctx) && inspect_text(c, ctx, frame_len, false) {
                    continue;
                }
                ctx.x.txn.pending += 1;
                ctx.x.txn.requests += 1;
                ctx.x.copy_data = false;
                if ctx.track && whole && frame_len <= MAX_DEALLOCATE_QUERY && deallocate(c, ctx, frame_len) {
                    boundary(ctx);
                    continue;
                }
                ctx.x.queue.push_back(Expect::forward(Kind::Query));
                boundary(ctx);
                if ctx.x.restore.is_some() && restore(c, ctx, frame_len) {
                    continue;
                }
            }
            ftag::FUNCTION_CALL => {
                ctx.x.txn.pending += 1;
                ctx.x.txn.requests += 1;
                ctx.x.queue.push_back(Expect::forward(Kind::FunctionCall));
                boundary(ctx);
            }
            ftag::SYNC => {
                ctx.x.txn.pending += 1;
                ctx.x.txn.requests += 1;
                ctx.x.txn.unsynced = false;
                ctx.x.txn.flushed = false;
                ctx.x.queue.push_back(Expect::forward(Kind::Sync));
                boundary(ctx);
                if ctx.x.restore.is_some() && restore(c, ctx, frame_len) {
                    continue;
                }
            }
            ftag::EXECUTE => {
                ctx.x.txn.unsynced = true;
                ctx.x.copy_data = false;
                ctx.x.batch_started = true;
                ctx.x.queue.push_back(Expect::forward(Kind::Execute));
            }
            ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::CLOSE => {
                ctx.x.txn.unsynced = true;
                if hdr.tag == ftag::PARSE && whole && reads_text(ctx) && inspect_text(c, ctx, frame_len, true) {
                    continue;
                }
                if ctx.track {
                    match rewrite(c, ctx, hdr)? {
                        Rewrite::Done => {
                            count_client_message(ctx, hdr.tag);
                            continue;
                        }
                        Rewrite::Wait => {
                            c.pos.need = super::READ_AHEAD;
                            break;
                        }
                        Rewrite::Untouched => {}
                    }
                }
                count_client_message(ctx, hdr.tag);
                if hdr.tag == ftag::PARSE {
                    ctx.x.tally.server_parses += 1;
                }
                ctx.x.batch_started = true;
                let kind = match hdr.tag {
                    ftag::PARSE => Kind::Parse,
                    ftag::BIND => Kind::Bind,
                    ftag::DESCRIBE => Kind::Describe,
                    _ => Kind::Close,
                };
                ctx.x.queue.push_back(Expect::forward(kind));
            }
            ftag::FLUSH => {
                // A Flush only matters after unsynced extended-protocol messages; a lone one
                // produces no output and must not pin the server.
                if ctx.x.txn.unsynced {
                    ctx.x.txn.flushed = true;
                }
            }
            ftag::COPY_DONE | ftag::COPY_FAIL => {
                // Syncs pipelined after the Execute/Query that may have started a COPY FROM
                // STDIN get no answer if it did (PostgreSQL ignores Sync in copy-in mode);
                // settled when that request ends (see `server::settle_copy_syncs`). A stray
                // CopyDone outside COPY changes nothing.
                ctx.x.copy_data = false;
                let q = &mut ctx.x.queue;
                let mut i = q.len();
                while i > 0 && q[i - 1].kind == Kind::Sync && q[i - 1].action == Action::Forward {
                    i -= 1;
                }
                if i > 0 && matches!(q[i - 1].kind, Kind::Execute | Kind::Query) {
                    for e in q.iter_mut().skip(i) {
                        e.action = Action::CopySync;
                    }
                }
            }
            ftag::COPY_DATA => ctx.x.copy_data = true,
            ftag::TERMINATE => {
                // Never forwarded: in transaction mode the server is not the client's to end.
                c.buf.truncate(c.pos.fwd);
                ctx.x.txn.terminated = true;
                break;
            }
            other => return Err(protocol::Error::UnexpectedTag(other)),
        }
        c.pass(frame_len);
    }
    Ok(false)
}

/// Counts a client's Parse or Bind (`SHOW STATS` `client_parse_count`, `bind_count`).
#[inline]
fn count_client_message(ctx: &mut Ctx<'_>, tag: u8) {
    match tag {
        ftag::PARSE => ctx.x.tally.client_parses += 1,
        ftag::BIND => ctx.x.tally.binds += 1,
        _ => {}
    }
}

/// Queues a Parse pgsluice sends to the server on its own or rewritten.
#[inline]
fn send_parse(ctx: &mut Ctx<'_>, name: &[u8], rest: &[u8]) {
    ctx.x.tally.server_parses += 1;
    write::parse_raw(&mut ctx.x.to_server, name, rest);
}

/// Whether a message with this tag must be buffered whole before it is scanned: when
/// prepared statements are tracked (`track`), and for the session-state rules (`session`:
/// query texts up to `READ_AHEAD`; longer ones stream unexamined).
#[inline]
fn needs_whole(tag: u8, frame_len: usize, track: bool, session: bool) -> bool {
    let text = session && frame_len <= super::READ_AHEAD;
    match tag {
        ftag::PARSE => track || text,
        ftag::DESCRIBE | ftag::CLOSE => track,
        // Only the names at its start are needed; the values stream.
        ftag::BIND => track && frame_len <= super::READ_AHEAD,
        ftag::QUERY => (track && frame_len <= MAX_DEALLOCATE_QUERY) || text,
        _ => false,
    }
}

/// After the client's request at the scan position (a Query, or the Sync ending an
/// extended-protocol batch, `frame_len` bytes) was queued: if its text reset parameters the
/// client chose at startup ([`Restoring::at_sync`](super::Restoring)), passes it and sends
/// pgsluice's own query setting them back to the client's startup values, and returns true.
/// PostgreSQL's `RESET` goes to the value of the startup packet, and the server
/// connection's is pgsluice's, not the client's. The query's answers are dropped
/// ([`Action::Restore`]); the server scan replaces the ParameterStatus the `RESET` caused by
/// the startup value, before the request's ReadyForQuery. The server runs it before anything
/// the client sends next, in the same transaction if there is one (a rollback undoes both,
/// as it undoes a `RESET`).
#[cold]
#[inline(never)]
fn restore(c: &mut Half<'_>, ctx: &mut Ctx<'_>, frame_len: usize) -> bool {
    let Some(r) = ctx.x.restore.as_mut() else { return false };
    let names = std::mem::take(&mut r.at_sync);
    let Some(sql) = ctx.params.and_then(|p| p.restore_sql(&names)) else { return false };
    c.pass(frame_len);
    c.spill(&mut ctx.x.to_server);
    write::query(&mut ctx.x.to_server, &sql);
    ctx.x.txn.pending += 1;
    ctx.conn.statements.next_batch();
    ctx.x.queue.push_back(Expect { kind: Kind::Query, action: Action::Restore, undo: None });
    ctx.x.restore.get_or_insert_with(Default::default).queued.push_back(names);
    true
}

/// Notes in [`Restoring::at_sync`](super::Restoring) the tracked parameters `text` resets
/// that the client chose at startup (applied by [`restore`] at the end of the request).
#[cold]
#[inline(never)]
fn note_resets(ctx: &mut Ctx<'_>, params: &crate::params::ClientParams, text: &str) {
    let mut resets = ctx.x.restore.as_mut().map(|r| std::mem::take(&mut r.at_sync)).unwrap_or_default();
    session_state::param_effects(text, &mut |e| params.note_reset(e, &mut resets));
    if !resets.is_empty() {
        ctx.x.restore.get_or_insert_with(Default::default).at_sync = resets;
    }
}

/// Text a refused statement is replaced with: it fails to parse, so the server answers with
/// an error (aborting a transaction, as the refused statement's error would), which the
/// server scan replaces with pgsluice's own.
const REJECT_SQL: &str = "pgsluice_refused_statement";

/// Whether query texts are read: for the session-state rules, and for `RESET`s of
/// parameters the client chose at startup.
#[inline]
fn reads_text(ctx: &Ctx<'_>) -> bool {
    ctx.session.is_some() || ctx.params.is_some()
}

/// Reads a whole `Query` (or `Parse`, `parse`) at the scan position: notes the tracked
/// parameters it resets that the client chose at startup ([`note_resets`]), and applies the
/// session-state rules. Returns true when the message was refused and replaced (the scan
/// position is past it and its answer is queued).
fn inspect_text(c: &mut Half<'_>, ctx: &mut Ctx<'_>, frame_len: usize, parse: bool) -> bool {
    let body = &c.buf[c.pos.fwd + HEADER_LEN..c.pos.fwd + frame_len];
    let text = if parse { cstr(body).and_then(|(_, rest)| cstr(rest)) } else { cstr(body) };
    // The common statement is decided on its bytes, before any UTF-8 check.
    let Some((text, _)) = text.filter(|(q, _)| !session_state::surely_stateless(q)) else { return false };
    let Ok(text) = std::str::from_utf8(text) else { return false };
    if let Some(params) = ctx.params {
        // (A refused text never runs: it resets nothing.)
        let refused = ctx.session.is_some_and(|r| {
            matches!(r.policy, crate::config::SessionState::Reject)
                && session_state::first_change(text, &|n| r.is_tracked(n)).is_some()
        });
        if !refused {
            note_resets(ctx, params, text);
        }
    }
    let Some(rules) = ctx.session else { return false };
    match rules.policy {
        crate::config::SessionState::Reject => {
            let Some(d) = session_state::first_change(text, &|n| rules.is_tracked(n)) else { return false };
            let message = format!(
                "pgsluice: \"{}\" would leave {} on a pooled server connection, which session_state = \"reject\" refuses (use SET LOCAL, a transaction-level lock, or a session-mode pool)",
                d.statement,
                d.reason.as_str()
            );
            refuse(c, ctx, frame_len, parse, message);
            true
        }
        crate::config::SessionState::Pin => {
            pin_text(ctx, rules, text);
            false
        }
        crate::config::SessionState::Allow => false,
    }
}

/// Pin mode: records what `text` sets or undoes; logs when the client becomes pinned or
/// unpinned.
fn pin_text(ctx: &mut Ctx<'_>, rules: super::SessionRules, text: &str) {
    let was = ctx.x.txn.pin.is_pinned();
    let d = session_state::apply(text, &|n| rules.is_tracked(n), &mut ctx.x.txn.pin);
    let now = ctx.x.txn.pin.is_pinned();
    if now {
        ctx.conn.session_dirty = true;
        // A pinned client keeps its server: nothing is held back to be routed on its own.
        ctx.x.txn.one_request = false;
    }
    let Some(info) = ctx.client.filter(|_| now != was) else { return };
    info.set_pinned(now);
    if now {
        tracing::info!(
            client_id = info.id,
            db = %info.database,
            user = %info.user,
            reason = d.map_or("session state", |d| d.reason.as_str()),
            statement = d.map_or(String::new(), |d| session_state::redact(d.statement)),
            "client pinned to its server connection (session_state = pin)"
        );
    } else {
        tracing::info!(client_id = info.id, "client unpinned: the session state it set was undone");
    }
}

/// Replaces a refused `Query`/`Parse` by [`REJECT_SQL`] and queues its error (`code`, or
/// `0A000`).
fn refuse(c: &mut Half<'_>, ctx: &mut Ctx<'_>, frame_len: usize, parse: bool, message: String) {
    refuse_with(c, ctx, frame_len, parse, None, message)
}

fn refuse_with(
    c: &mut Half<'_>,
    ctx: &mut Ctx<'_>,
    frame_len: usize,
    parse: bool,
    code: Option<&'static str>,
    message: String,
) {
    c.drop_frame(&mut ctx.x.to_server, frame_len);
    let undo = Some(Box::new(Undo { reject: Some(message.into()), reject_code: code, ..Undo::default() }));
    if parse {
        let mut rest = Vec::with_capacity(REJECT_SQL.len() + 3);
        rest.extend_from_slice(REJECT_SQL.as_bytes());
        rest.extend_from_slice(&[0, 0, 0]);
        send_parse(ctx, b"", &rest);
        ctx.x.batch_started = true;
        ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Reject, undo });
    } else {
        write::query(&mut ctx.x.to_server, REJECT_SQL);
        ctx.x.txn.pending += 1;
        ctx.x.txn.requests += 1;
        ctx.x.queue.push_back(Expect { kind: Kind::Query, action: Action::Reject, undo });
        boundary(ctx);
    }
}

/// Whether handling this message consults the statement bookkeeping (a prepared-statement
/// message, or a simple query that is a `DEALLOCATE`).
fn reads_statements(tag: u8, body: &[u8]) -> bool {
    match tag {
        ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::CLOSE => true,
        ftag::QUERY => {
            body.len() <= MAX_DEALLOCATE_QUERY && parse_deallocate(body.strip_suffix(b"\0").unwrap_or(body)).is_some()
        }
        _ => false,
    }
}

/// End of a request (`Sync`, simple query, FunctionCall): if its batch changed statement
/// bookkeeping that a failure would roll back, hold later requests until it is answered.
#[inline]
fn boundary(ctx: &mut Ctx<'_>) {
    ctx.x.tally.request_sent();
    ctx.conn.statements.next_batch();
    if ctx.x.batch_dirty {
        ctx.x.set_barrier();
    }
    ctx.x.batch_dirty = false;
    ctx.x.batch_started = false;
}

/// What [`rewrite`] did.
enum Rewrite {
    /// Nothing: forward the message as is.
    Untouched,
    /// Rewritten or answered; the scan position is past it.
    Done,
    /// More bytes are needed to read the names at the start of a large Bind.
    Wait,
}

/// Handles `Parse`/`Bind`/`Describe`/`Close` when they name a client statement.
fn rewrite(c: &mut Half<'_>, ctx: &mut Ctx<'_>, hdr: Header) -> Result<Rewrite, protocol::Error> {
    let frame_len = hdr.frame_len();
    let avail = (c.buf.len() - c.pos.fwd).min(frame_len);
    let body = &c.buf[c.pos.fwd + HEADER_LEN..c.pos.fwd + avail];
    match hdr.tag {
        ftag::PARSE => {
            let Some((name, rest)) = cstr(body) else { return Ok(Rewrite::Untouched) };
            if name.is_empty() {
                return Ok(Rewrite::Untouched);
            }
            let name: Box<[u8]> = name.into();
            if let Some(existing) = ctx.stmts.get(&name).cloned() {
                // PostgreSQL answers 42P05 (after parsing the query). Send the Parse under
                // the existing statement's server name, which is sure to exist there, and
                // put the client's name back into the error.
                c.spill(&mut ctx.x.to_server);
                ensure_prepared(ctx, &existing);
                let server_name = existing.name;
                let rest = &c.buf[HEADER_LEN + name.len() + 1..frame_len];
                send_parse(ctx, &server_name, rest);
                c.buf.advance(frame_len);
                ctx.x.batch_started = true;
                let undo = Undo { name: Some(name), ..Undo::default() };
                ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Duplicate, undo: Some(undo.into()) });
                return Ok(Rewrite::Done);
            }
            if let Some(message) = ctx.stmts.refusal(1, name.len() + rest.len(), ctx.statement_limits) {
                // pgsluice keeps every client statement: a bound on them is a bound on the
                // client's memory. The Parse fails as PostgreSQL fails a request over a limit.
                if frame_len > avail {
                    return Ok(Rewrite::Wait);
                }
                refuse_with(c, ctx, frame_len, true, Some("53400"), message);
                return Ok(Rewrite::Done);
            }
            let stmt = Stmt::new(rest);
            ctx.stmts.insert(&name, stmt.clone());
            if ctx.x.txn.status == protocol::status::FAILED {
                // In an aborted transaction PostgreSQL refuses a Parse (25P02) unless it is a
                // ROLLBACK/COMMIT: let the server decide, on the unnamed statement, so the
                // shared statements stay as they are.
                c.spill(&mut ctx.x.to_server);
                send_parse(ctx, b"", &stmt.rest);
                c.buf.advance(frame_len);
                ctx.x.batch_started = true;
                ctx.x.batch_dirty = true;
                let undo = Undo { defined: Some((name, stmt)), ..Undo::default() };
                ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Forward, undo: Some(undo.into()) });
            } else if ctx.conn.statements.touch(&stmt.key) {
                // Already prepared on this server: answer the Parse ourselves.
                c.drop_frame(&mut ctx.x.to_server, frame_len);
                if ctx.x.batch_started {
                    ctx.x.batch_dirty = true;
                }
                let undo = Undo { defined: Some((name, stmt)), ..Undo::default() };
                ctx.x.queue.push_back(Expect {
                    kind: Kind::Parse,
                    action: Action::Fake(b'1'),
                    undo: Some(undo.into()),
                });
            } else {
                c.spill(&mut ctx.x.to_server);
                evict_for(ctx, &stmt);
                send_parse(ctx, &stmt.name, &stmt.rest);
                c.buf.advance(frame_len);
                ctx.x.batch_started = true;
                ctx.x.batch_dirty = true;
                let undo = Undo { prepared: Some(stmt.key), defined: Some((name, stmt)), ..Undo::default() };
                ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Forward, undo: Some(undo.into()) });
            }
            Ok(Rewrite::Done)
        }
        ftag::BIND => {
            let names = cstr(body).and_then(|(portal, after)| Some((portal.len(), cstr(after)?.0)));
            let Some((portal_len, name)) = names else {
                return bind_names_missing(avail, frame_len);
            };
            if name.is_empty() {
                return Ok(Rewrite::Untouched);
            }
            let name_len = name.len();
            let Some(stmt) = ctx.stmts.get(name) else { return Ok(Rewrite::Untouched) };
            // A prepared statement that sets session state does so at each execution (its
            // Parse may have been answered without a server).
            if let Some(rules) = ctx.session.filter(|r| r.policy == crate::config::SessionState::Pin) {
                if *stmt
                    .session_effect
                    .get_or_init(|| session_state::has_effect(stmt.query(), &|n| rules.is_tracked(n)))
                {
                    let stmt = stmt.clone();
                    pin_text(ctx, rules, stmt.query());
                }
            }
            let Some(stmt) = ctx.stmts.get(name) else { return Ok(Rewrite::Untouched) };
            if avail == frame_len && super::retry::client_is_stale(ctx, stmt) {
                // PostgreSQL would refuse this execution: so does pgsluice.
                refuse(c, ctx, frame_len, true, super::retry::STALE_STATEMENT.to_string());
                return Ok(Rewrite::Done);
            }
            let (key, server_name) = (stmt.key, stmt.name);
            // A request that may be retried after a stale-statement error (`retry`).
            let fresh = !ctx.x.batch_started && ctx.x.queue.is_empty() && ctx.x.txn.status == protocol::status::IDLE;
            let captured = fresh.then(|| stmt.clone());
            if !ctx.conn.statements.touch(&key) {
                let stmt = stmt.clone();
                if avail == frame_len && super::retry::stale_for_new_copy(ctx, &stmt) {
                    refuse(c, ctx, frame_len, true, super::retry::STALE_STATEMENT.to_string());
                    return Ok(Rewrite::Done);
                }
                c.spill(&mut ctx.x.to_server);
                ensure_prepared(ctx, &stmt);
            }
            c.spill(&mut ctx.x.to_server);
            trim_excess(ctx);
            let prefix = HEADER_LEN + portal_len + 1 + name_len + 1;
            let rest_len = frame_len - prefix;
            let portal = &c.buf[HEADER_LEN..HEADER_LEN + portal_len];
            let at = ctx.x.to_server.len();
            write::bind_prefix(&mut ctx.x.to_server, portal, &server_name, rest_len);
            c.buf.advance(prefix);
            if let Some(stmt) = &captured {
                let params = c.buf.get(..rest_len);
                ctx.x.retry.bind(true, stmt, &ctx.x.to_server[at..], params);
            }
            ctx.x.batch_started = true;
            ctx.x.queue.push_back(Expect::forward(Kind::Bind));
            // Parameter values follow unchanged (streamed if large).
            c.pass(rest_len);
            Ok(Rewrite::Done)
        }
        ftag::DESCRIBE | ftag::CLOSE => {
            let Some((&kind, name)) = body.split_first() else { return Ok(Rewrite::Untouched) };
            let Some((name, [])) = cstr(name) else { return Ok(Rewrite::Untouched) };
            if kind != b'S' || name.is_empty() {
                return Ok(Rewrite::Untouched);
            }
            if hdr.tag == ftag::DESCRIBE {
                let Some(stmt) = ctx.stmts.get(name).cloned() else { return Ok(Rewrite::Untouched) };
                c.spill(&mut ctx.x.to_server);
                ensure_prepared(ctx, &stmt);
                write::describe(&mut ctx.x.to_server, b'S', &stmt.name);
                c.buf.advance(frame_len);
                ctx.x.batch_started = true;
                // The row description the client gets is recorded (see `retry`).
                ctx.x.queue.push_back(Expect {
                    kind: Kind::Describe,
                    action: Action::Forward,
                    undo: super::retry::describe_undo(&stmt),
                });
            } else {
                let name: Box<[u8]> = name.into();
                let Some(stmt) = ctx.stmts.remove(&name) else {
                    if !name.starts_with(b"pgsluice_") {
                        return Ok(Rewrite::Untouched);
                    }
                    // Not the client's: pgsluice's statement shared with other clients stays.
                    // (Closing a statement one does not have is not an error.)
                    c.drop_frame(&mut ctx.x.to_server, frame_len);
                    ctx.x.queue.push_back(Expect { kind: Kind::Close, action: Action::Fake(b'3'), undo: None });
                    return Ok(Rewrite::Done);
                };
                // The server statement stays (other clients share it); answer ourselves.
                c.drop_frame(&mut ctx.x.to_server, frame_len);
                if ctx.x.batch_started {
                    ctx.x.batch_dirty = true;
                }
                let undo = Undo { removed: Some((name, stmt)), ..Undo::default() };
                ctx.x.queue.push_back(Expect {
                    kind: Kind::Close,
                    action: Action::Fake(b'3'),
                    undo: Some(undo.into()),
                });
            }
            Ok(Rewrite::Done)
        }
        _ => Ok(Rewrite::Untouched),
    }
}

/// A Bind whose leading names have not fully arrived: wait for more unless the whole frame
/// is there (then it is malformed, and the server will say so).
fn bind_names_missing(avail: usize, frame_len: usize) -> Result<Rewrite, protocol::Error> {
    if avail >= frame_len {
        Ok(Rewrite::Untouched)
    } else if avail < super::READ_AHEAD {
        Ok(Rewrite::Wait)
    } else {
        Err(protocol::Error::Malformed("Bind (portal and statement names longer than 64 KiB)"))
    }
}

/// Queues pgsluice's own `Parse` of `stmt` (and a `Close` to make room) when the server lacks
/// it. The caller has spilled the client's scanned bytes.
fn ensure_prepared(ctx: &mut Ctx<'_>, stmt: &Arc<Stmt>) {
    if ctx.conn.statements.touch(&stmt.key) {
        return;
    }
    evict_for(ctx, stmt);
    send_parse(ctx, &stmt.name, &stmt.rest);
    ctx.x.batch_started = true;
    ctx.x.batch_dirty = true;
    let undo = Undo { prepared: Some(stmt.key), ..Undo::default() };
    ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Swallow, undo: Some(undo.into()) });
}

/// Records `stmt` as prepared on the server, queueing a `Close` of the least recently used
/// statement when the server is at `max_prepared_statements`.
/// After a transaction that used more statements than `max_prepared_statements`, closes the
/// least recently used ones beyond it (not the ones used in the current transaction). The
/// caller has spilled the client's scanned bytes.
fn trim_excess(ctx: &mut Ctx<'_>) {
    if !ctx.conn.statements.over_capacity() {
        return;
    }
    let keep = ctx.conn.statements.capacity();
    while let Some(old) = ctx.conn.statements.evict_above(keep) {
        queue_close(ctx, old);
    }
}

/// Queues pgsluice's own `Close` of server statement `key` (its answer is dropped).
fn queue_close(ctx: &mut Ctx<'_>, key: Key) {
    write::close(&mut ctx.x.to_server, b'S', &key.server_name());
    ctx.x.batch_started = true;
    ctx.x.batch_dirty = true;
    let undo = Undo { closed: Some(key), ..Undo::default() };
    ctx.x.queue.push_back(Expect { kind: Kind::Close, action: Action::Swallow, undo: Some(undo.into()) });
}

fn evict_for(ctx: &mut Ctx<'_>, stmt: &Stmt) {
    // Usually one; more after a transaction that used more statements than the limit.
    while let Some(old) = ctx.conn.statements.evict_one() {
        queue_close(ctx, old);
    }
    if let Some(old) = ctx.conn.statements.insert(stmt.key) {
        queue_close(ctx, old);
    }
}

/// A simple query that is exactly `DEALLOCATE name` of a client statement is answered by
/// pgsluice (the shared server statement stays). Returns whether it was handled.
fn deallocate(c: &mut Half<'_>, ctx: &mut Ctx<'_>, frame_len: usize) -> bool {
    let body = &c.buf[c.pos.fwd + HEADER_LEN..c.pos.fwd + frame_len];
    let sql = body.strip_suffix(b"\0").unwrap_or(body);
    let Some(name) = parse_deallocate(sql) else { return false };
    let Some(stmt) = ctx.stmts.remove(&name) else {
        // Only outside a transaction with nothing in flight: inside one, the server would
        // have to fail the transaction too (then the DEALLOCATE goes through, see
        // docs/prepared-statements.md).
        let idle = ctx.x.txn.status == protocol::status::IDLE && ctx.x.queue.is_empty();
        if !name.starts_with(b"pgsluice_") || !idle {
            return false;
        }
        // pgsluice's own server statement, shared with other clients: not this client's.
        c.drop_frame(&mut ctx.x.to_server, frame_len);
        let undo = Undo { name: Some(name.into()), ..Undo::default() };
        ctx.x.queue.push_back(Expect { kind: Kind::Query, action: Action::LocalMissing, undo: Some(undo.into()) });
        return true;
    };
    c.drop_frame(&mut ctx.x.to_server, frame_len);
    ctx.x.batch_dirty = true;
    let undo = Undo { removed: Some((name.into(), stmt)), ..Undo::default() };
    ctx.x.queue.push_back(Expect { kind: Kind::Query, action: Action::Local("DEALLOCATE"), undo: Some(undo.into()) });
    true
}
