//! Server → client scanning: matches each server message to the request at the front of the
//! pipeline queue, relays, drops (answers to pgsluice's own messages) or replaces it, and
//! synthesizes the answers pgsluice owes for messages it did not send on.
//!
//! Only `Z`, `S`, `C` and `E` are read whole; everything else streams.

use super::queue::{Action, Expect, Kind, Undo};
use super::{Ctx, Half};
use crate::prepared::tag_deallocates_all;
use crate::protocol::{self, backend as bmsg, btag, cstr, status, write, Header, HEADER_LEN};

/// PostgreSQL's message for a command in an aborted transaction (25P02).
const ABORTED: &str = "current transaction is aborted, commands ignored until end of transaction block";

/// Largest server message read whole (RowDescription is streamed, so this bounds
/// ErrorResponse, CommandComplete, ParameterStatus).
const MAX_INSPECTED: usize = 1 << 20;

/// Where ParameterStatus values go: the server's list and the client's tracked set.
pub(super) struct ParamSink<'a> {
    pub conn: &'a mut Vec<(String, String)>,
    pub synced: &'a mut Option<std::sync::Arc<crate::params::ParamSet>>,
    pub client: &'a mut crate::params::ClientParams,
}

/// Scans newly received server bytes.
pub(super) fn scan_server(
    s: &mut Half<'_>,
    ctx: &mut Ctx<'_>,
    sink: &mut ParamSink<'_>,
) -> Result<(), protocol::Error> {
    s.pos.need = 0;
    if ctx.x.server_fatal.is_some() && !ctx.x.answered {
        // A server that said it is going away has nothing more to say, and the client gets
        // none of it while the session decides (`holding_back`): what follows is dropped as
        // it arrives, so a hostile server cannot fill memory before it closes.
        // (A message streamed past the FATAL stays unfinished: `skip` is left as it is, so
        // the exchange never counts as resumable with half a message scanned.)
        s.buf.truncate(s.pos.fwd);
        return Ok(());
    }
    loop {
        if ctx.x.txn.opened_transaction {
            // Statement mode: a held-back ReadyForQuery ends the session; read no further.
            return Ok(());
        }
        if s.pos.skip > 0 {
            if !s.stream_owed() {
                return Ok(());
            }
            // A streamed message ended: answers queued behind it may be due.
            advance(s, ctx);
        }
        let rest = &s.buf[s.pos.fwd..];
        let Some(hdr) = Header::parse(rest, protocol::MAX_MESSAGE_LEN)? else {
            return Ok(());
        };
        let tag = hdr.tag;
        let frame_len = hdr.frame_len();
        // Asynchronous messages belong to no request.
        if tag == btag::NOTICE_RESPONSE && hdr.body_len <= MAX_INSPECTED {
            if rest.len() < frame_len {
                s.pos.need = frame_len;
                return Ok(());
            }
            let f = bmsg::parse_error_fields(&rest[HEADER_LEN..frame_len]);
            if f.code.starts_with("57P") {
                // "terminating connection due to immediate shutdown command" (57P01) or
                // "because of crash of another server process" (57P02): a WARNING sent just
                // before the server closes. Like a FATAL, the session decides what the client
                // hears (a read in flight may be sent again elsewhere, unseen).
                ctx.x.server_fatal = Some(format!("{}: {}", f.code, f.message));
                s.drop_frame(&mut ctx.x.to_client, frame_len);
                continue;
            }
        }
        if tag == btag::NOTICE_RESPONSE || tag == btag::NOTIFICATION_RESPONSE {
            s.pass(frame_len);
            continue;
        }
        if ctx
            .x
            .queue
            .front()
            .is_some_and(|h| matches!(h.action, Action::Fake(_) | Action::Local(_) | Action::LocalMissing))
        {
            // Defensive: answers due before this message (normally sent by `advance` already).
            advance(s, ctx);
            continue;
        }
        let head = ctx.x.queue.front();
        let action = head.map_or(Action::Forward, |h| h.action);
        let shape = matches!(tag, b'T' | b'n') && super::retry::records_shape(head);
        let inspect = matches!(tag, btag::READY_FOR_QUERY | btag::PARAMETER_STATUS | btag::COMMAND_COMPLETE)
            || (tag == btag::ERROR_RESPONSE && (action != Action::Forward || hdr.body_len <= MAX_INSPECTED))
            || matches!(action, Action::Swallow | Action::RetryOwn | Action::Restore)
            || shape;
        if inspect {
            if hdr.body_len > MAX_INSPECTED {
                return Err(protocol::Error::TooLarge { tag, len: hdr.body_len as u32 + 4 });
            }
            if rest.len() < frame_len {
                s.pos.need = frame_len;
                return Ok(());
            }
        }
        // One look at an error (a relayed one over MAX_INSPECTED streams without it).
        let mut stale = false;
        if tag == btag::ERROR_RESPONSE && rest.len() >= frame_len {
            let f = bmsg::parse_error_fields(&rest[HEADER_LEN..frame_len]);
            if f.is_fatal() {
                // The server is about to close; the session decides what the client hears.
                ctx.x.server_fatal = Some(format!("{}: {}", f.code, f.message));
                s.drop_frame(&mut ctx.x.to_client, frame_len);
                if !ctx.x.answered {
                    // (Nothing after it counts: see the top of this function.)
                    s.buf.truncate(s.pos.fwd);
                    return Ok(());
                }
                continue;
            }
            match f.code {
                "25006" => ctx.x.read_only_error = true,
                // "cached plan must not change result type": a statement prepared on this
                // connection predates a schema change (see `retry`).
                "0A000" if ctx.track && f.message.starts_with("cached plan must not change result type") => {
                    stale = true;
                }
                _ => {}
            }
        }
        if stale && action != Action::RetryOwn {
            if super::retry::start(s, ctx, frame_len) || super::retry::start_describe(s, ctx, frame_len) {
                // The server now skips the rest of the failed request.
                advance(s, ctx);
                continue;
            }
            // Relayed: pgsluice shares statements by text, so the same text prepared again
            // would land on the same stale copy; the connection is closed at release instead.
            ctx.conn.poisoned = true;
        }
        if shape {
            super::retry::record_shape(ctx, tag, &s.buf[s.pos.fwd + HEADER_LEN..s.pos.fwd + frame_len]);
        }
        // (Taken again: the retry above needed `s` and `ctx` whole.)
        let rest = &s.buf[s.pos.fwd..];
        let head = ctx.x.queue.front();
        if tag == btag::PARAMETER_STATUS {
            let (k, v) = bmsg::parse_parameter_status(&rest[HEADER_LEN..frame_len])?;
            crate::params::set_param(sink.conn, k, v);
            if ctx.x.restore.is_some() && restored(ctx, k) {
                // The `RESET` of a parameter the client chose at startup: the server holds its
                // own default until pgsluice's query behind this request sets the client's
                // value, which the client is told at this request's ReadyForQuery.
                *sink.synced = None;
                s.drop_frame(&mut ctx.x.to_client, frame_len);
                continue;
            }
            // (What the restore reports is passed on only if the client was not told.)
            let known = action == Action::Restore && sink.client.get(k) == Some(v);
            sink.client.observe(k, v);
            *sink.synced = Some(sink.client.shared());
            if known {
                s.drop_frame(&mut ctx.x.to_client, frame_len);
            } else {
                s.pass(frame_len);
            }
            continue;
        }
        let Some(head) = head else {
            if tag != btag::ERROR_RESPONSE {
                // An answer nobody asked for (the asynchronous ones were passed above): the
                // streams are out of step, and the connection cannot be trusted.
                return Err(protocol::Error::UnexpectedTag(tag));
            }
            // E.g. a FATAL error before the server closes the connection.
            s.pass(frame_len);
            continue;
        };
        let kind = head.kind;
        let ends = kind.ends_on(tag);
        if tag == btag::COMMAND_COMPLETE {
            let body = &rest[HEADER_LEN..frame_len];
            let tag = cstr(body).map_or(&b""[..], |(t, _)| t);
            if tag_deallocates_all(tag) {
                // The server dropped every prepared statement of its session. Bookkeeping
                // of requests pipelined behind it was made before: do not trust it.
                ctx.conn.statements.clear();
                ctx.conn.shapes.clear();
                ctx.stmts.clear();
                if ctx.track && ctx.x.queue.len() > 1 {
                    replay_pipelined(ctx);
                    ctx.conn.poisoned = true;
                }
            } else if ctx.track && (tag == b"PREPARE" || tag == b"DEALLOCATE") {
                // SQL-level statements on a shared connection (maybe even pgsluice's names):
                // this connection is not handed to another client.
                ctx.conn.poisoned = true;
            }
        }
        if tag == btag::READY_FOR_QUERY {
            let &[st @ (status::IDLE | status::IN_TRANSACTION | status::FAILED)] = &rest[HEADER_LEN..frame_len] else {
                return Err(protocol::Error::Malformed("ReadyForQuery"));
            };
            if !kind.ends_with_ready() {
                return Err(protocol::Error::UnexpectedTag(tag));
            }
            ctx.pop_front();
            if kind == Kind::Query {
                settle_copy_syncs(ctx);
            }
            ctx.x.skipping = false;
            ctx.x.txn.pending = ctx.x.txn.pending.saturating_sub(1);
            ctx.x.txn.status = st;
            // A ReadyForQuery of pgsluice's own (a retry's) is dropped, not counted.
            let own = matches!(action, Action::Swallow | Action::RetryDecide | Action::Restore);
            if !own && ctx.x.tally.ready(st, ctx.x.txn.pending > 0, ctx.stats) {
                if let Some(stats) = ctx.stats {
                    stats.add(&mut ctx.x.tally);
                }
            }
            if st == status::IDLE {
                ctx.conn.statements.transaction_ended();
            }
            if ctx.statement_mode && st != status::IDLE {
                // Held back: the client gets an error in place of this ReadyForQuery.
                ctx.x.txn.opened_transaction = true;
                return Ok(());
            }
            if own {
                if let (Action::Restore, Some(r)) = (action, &mut ctx.x.restore) {
                    // (A restore ends only here: it follows a Sync or Query, so no skipping
                    // after an error reaches it.)
                    r.queued.pop_front();
                }
                s.drop_frame(&mut ctx.x.to_client, frame_len);
                if action == Action::RetryDecide {
                    super::retry::decide(ctx, st);
                }
            } else {
                if ctx.x.restore.is_some() && ctx.x.queue.front().is_some_and(|e| matches!(e.action, Action::Restore)) {
                    tell_restored(s, ctx, sink);
                }
                s.pass(frame_len);
            }
            super::retry::finished(ctx);
            advance(s, ctx);
            continue;
        }
        let error = tag == btag::ERROR_RESPONSE;
        if error && ctx.x.restore.is_some() && restore_behind(ctx).is_some() {
            if let Some(r) = &mut ctx.x.restore {
                r.failed = true;
            }
        }
        if tag == btag::COPY_IN_RESPONSE && matches!(kind, Kind::Execute | Kind::Query) {
            ctx.x.copy_in = true;
        }
        match action {
            Action::Swallow if !error => s.drop_frame(&mut ctx.x.to_client, frame_len),
            // (An error too: the client's transaction failed, and its rollback undoes the
            // `RESET` as well.)
            Action::Restore => s.drop_frame(&mut ctx.x.to_client, frame_len),
            Action::RetryOwn => super::retry::own_answer(s, ctx, tag, frame_len),
            Action::DescribeAgain if tag == b't' => s.drop_frame(&mut ctx.x.to_client, frame_len),
            Action::Duplicate if error && bmsg::parse_error_fields(&rest[HEADER_LEN..frame_len]).code == "42P05" => {
                let front = ctx.x.queue.front();
                let name = front.and_then(|h| h.undo.as_ref()).and_then(|u| u.name.as_deref()).unwrap_or_default();
                let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name));
                s.drop_frame(&mut ctx.x.to_client, frame_len);
                write::error_response(&mut ctx.x.to_client, write::Severity::Error, "42P05", &message, None);
            }
            Action::Reject if error => {
                let undo = ctx.x.queue.front().and_then(|h| h.undo.as_ref());
                let code = undo.and_then(|u| u.reject_code).unwrap_or("0A000");
                let msg = undo.and_then(|u| u.reject.as_deref());
                s.drop_frame(&mut ctx.x.to_client, frame_len);
                let msg = msg.unwrap_or("pgsluice: statement refused (session_state = \"reject\")");
                if msg == super::retry::STALE_STATEMENT {
                    // As PostgreSQL reports it, routine included: drivers key on it.
                    write::error_response_with(
                        &mut ctx.x.to_client,
                        write::Severity::Error,
                        "0A000",
                        msg,
                        &[(b'F', "plancache.c"), (b'R', "RevalidateCachedQuery")],
                    );
                } else {
                    write::error_response(&mut ctx.x.to_client, write::Severity::Error, code, msg, None);
                }
            }
            _ => s.pass(frame_len),
        }
        if ends {
            let Some(done) = ctx.pop_front() else { continue };
            if kind == Kind::Execute {
                settle_copy_syncs(ctx);
            }
            if tag == b'1' {
                if let (Some(known), Some(key)) = (ctx.known, done.undo.as_ref().and_then(|u| u.prepared)) {
                    known.insert(key);
                }
            }
            if error && !kind.ends_with_ready() {
                // The server now skips to the next Sync.
                undo(ctx, done);
                ctx.x.skipping = true;
            }
            if s.pos.skip == 0 {
                advance(s, ctx);
            }
        }
    }
}

/// The names pgsluice sets back to the client's startup values right after the client's
/// request now answered (an [`Action::Restore`] queued behind the end of that request, see
/// `client::restore`).
fn restore_behind<'a>(ctx: &'a Ctx<'_>) -> Option<&'a [crate::params::ParamName]> {
    let r = ctx.x.restore.as_ref()?;
    let mut q = ctx.x.queue.iter();
    let end = q.find(|e| e.action == Action::Restore || e.kind.ends_with_ready())?;
    if end.action == Action::Restore || q.next()?.action != Action::Restore {
        return None;
    }
    r.queued.front().map(Vec::as_slice)
}

/// Whether a ParameterStatus for `name` answers a client's `RESET` of a parameter that
/// pgsluice sets back to the client's startup value right after ([`restore_behind`]).
fn restored(ctx: &Ctx<'_>, name: &str) -> bool {
    restore_behind(ctx).is_some_and(|n| n.iter().any(|n| n.as_str().eq_ignore_ascii_case(name)))
}

/// Before the ReadyForQuery of a request that reset parameters the client chose at startup
/// (an [`Action::Restore`] is now at the front): tells the client each reported one that
/// now has its startup value again, unless it already holds that value (PostgreSQL reports
/// a parameter only when it changes).
#[cold]
#[inline(never)]
fn tell_restored(s: &mut Half<'_>, ctx: &mut Ctx<'_>, sink: &mut ParamSink<'_>) {
    let Some(r) = ctx.x.restore.as_mut() else { return };
    if std::mem::take(&mut r.failed) || ctx.x.txn.status == status::FAILED {
        // The `RESET` may not have happened: the restore's own ParameterStatus tells.
        return;
    }
    let Some(names) = r.queued.front() else { return };
    for name in names {
        let Some(value) = sink.client.startup_value(name.as_str()) else { continue };
        if !sink.client.is_reported(name.as_str()) || sink.client.get(name.as_str()) == Some(value) {
            continue;
        }
        let value: Box<str> = value.into();
        s.spill(&mut ctx.x.to_client);
        write::parameter_status(&mut ctx.x.to_client, name.as_str(), &value);
        sink.client.observe(name.as_str(), &value);
    }
}

/// Answers what is due at the front of the queue without the server: synthesized answers
/// once everything before them is relayed, and requests the server skips after an error.
/// Call after the queue or the front of it changed, at a message boundary of the server
/// stream.
pub(super) fn advance(s: &mut Half<'_>, ctx: &mut Ctx<'_>) {
    while let Some(head) = ctx.x.queue.front() {
        if ctx.x.skipping {
            if head.kind == Kind::Sync {
                break;
            }
            let Some(e) = ctx.pop_front() else { break };
            if e.kind.ends_with_ready() {
                // A simple query or function call ignored while skipping gets no answer.
                ctx.x.txn.pending = ctx.x.txn.pending.saturating_sub(1);
            }
            undo(ctx, e);
            continue;
        }
        if s.pos.skip > 0 {
            break;
        }
        match head.action {
            Action::Fake(b'1') if ctx.x.txn.status == status::FAILED => {
                // PostgreSQL refuses a Parse in an aborted transaction, and skips to Sync.
                s.spill(&mut ctx.x.to_client);
                write::error_response(&mut ctx.x.to_client, write::Severity::Error, "25P02", ABORTED, None);
                let Some(e) = ctx.pop_front() else { break };
                undo(ctx, e);
                ctx.x.skipping = true;
            }
            Action::Fake(tag) => {
                s.spill(&mut ctx.x.to_client);
                write::empty(&mut ctx.x.to_client, tag);
                ctx.pop_front();
            }
            Action::Local(_) | Action::LocalMissing => {
                // A simple query pgsluice answers itself: one result, then ReadyForQuery.
                s.spill(&mut ctx.x.to_client);
                let Some(e) = ctx.pop_front() else { break };
                let out = &mut ctx.x.to_client;
                match e.action {
                    _ if ctx.x.txn.status == status::FAILED => {
                        write::error_response(out, write::Severity::Error, "25P02", ABORTED, None);
                        undo(ctx, e);
                    }
                    Action::Local(command) => write::command_complete(out, command),
                    _ => {
                        // `DEALLOCATE pgsluice_…`: not the client's statement.
                        let name = e.undo.as_ref().and_then(|u| u.name.as_deref()).unwrap_or_default();
                        let message =
                            format!("prepared statement \"{}\" does not exist", String::from_utf8_lossy(name));
                        write::error_response(out, write::Severity::Error, "26000", &message, None);
                    }
                }
                write::ready_for_query(&mut ctx.x.to_client, ctx.x.txn.status);
                ctx.x.txn.pending = ctx.x.txn.pending.saturating_sub(1);
                if ctx.x.txn.pending == 0 {
                    // Answered without the server: not a timed query.
                    ctx.x.tally.clear_timers();
                }
            }
            _ => break,
        }
    }
    if ctx.x.queue.is_empty() {
        ctx.x.barrier = false;
        ctx.x.barrier_left = 0;
    }
}

/// After the Execute/Query that a client's CopyDone/CopyFail followed has ended: the Syncs
/// sent in between got no answer if that request started a COPY FROM STDIN, else they are
/// ordinary Syncs. A COPY the server failed while the client was still sending its data
/// (no CopyDone/CopyFail scanned yet, so nothing is marked [`Action::CopySync`]): the Syncs
/// the client sent since the Execute/Query were read in copy-in mode and got no answer
/// either (tokio-postgres sends Bind + Execute + Sync before the data); those it sends from
/// now on, its CopyDone's included, are answered.
fn settle_copy_syncs(ctx: &mut Ctx<'_>) {
    let copied = std::mem::take(&mut ctx.x.copy_in);
    if copied && ctx.x.copy_data {
        while ctx.x.queue.front().is_some_and(|e| e.kind == Kind::Sync && e.action == Action::Forward) {
            ctx.pop_front();
            ctx.x.txn.pending = ctx.x.txn.pending.saturating_sub(1);
        }
    }
    while ctx.x.queue.front().is_some_and(|e| e.action == Action::CopySync) {
        if copied {
            ctx.pop_front();
            ctx.x.txn.pending = ctx.x.txn.pending.saturating_sub(1);
        } else if let Some(e) = ctx.x.queue.iter_mut().find(|e| e.action == Action::CopySync) {
            e.action = Action::Forward;
        }
    }
}

/// Re-applies the bookkeeping of requests queued behind the front one (after a `DEALLOCATE
/// ALL` wiped it); answers pgsluice made up for them assumed statements that may be gone, so
/// the caller also poisons the connection.
fn replay_pipelined(ctx: &mut Ctx<'_>) {
    for e in ctx.x.queue.iter().skip(1) {
        let Some(u) = &e.undo else { continue };
        if let Some((name, stmt)) = &u.defined {
            ctx.stmts.insert(name, stmt.clone());
        }
        if let Some((name, _)) = &u.removed {
            ctx.stmts.remove(name);
        }
        if let Some(k) = u.prepared {
            ctx.conn.statements.restore(k);
        }
        if let Some(k) = &u.closed {
            ctx.conn.statements.remove(k);
        }
    }
}

/// Rolls back the statement bookkeeping of a request the server failed or skipped.
fn undo(ctx: &mut Ctx<'_>, e: Expect) {
    let Some(u) = e.undo else { return };
    let Undo { defined, removed, prepared, closed, name: _, reject: _, reject_code: _, describe: _ } = *u;
    if let Some((name, stmt)) = defined {
        ctx.stmts.remove_if(&name, &stmt);
    }
    if let Some((name, stmt)) = removed {
        ctx.stmts.insert(&name, stmt);
    }
    if let Some(k) = prepared {
        ctx.conn.statements.remove(&k);
    }
    if let Some(k) = closed {
        ctx.conn.statements.restore(k);
    }
}

#[cfg(test)]
mod restore_tests {
    //! The restore after a client's `RESET` (issue 17), through [`crate::exchange::Sim`].

    use crate::exchange::Sim;
    use crate::params::{ClientParams, Tracked};

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', format!("{sql}\0").as_bytes())
    }

    fn status(k: &str, v: &str) -> Vec<u8> {
        msg(b'S', format!("{k}\0{v}\0").as_bytes())
    }

    /// The tags of the messages in `bytes`, and the ParameterStatus bodies.
    fn tags(bytes: &[u8]) -> (String, Vec<String>) {
        let (mut tags, mut statuses, mut i) = (String::new(), Vec::new(), 0);
        while i + 5 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
            tags.push(bytes[i] as char);
            if bytes[i] == b'S' {
                statuses.push(String::from_utf8_lossy(&bytes[i + 5..i + 1 + len]).replace('\0', "|"));
            }
            i += 1 + len;
        }
        (tags, statuses)
    }

    fn client_with_date_style() -> Sim {
        let tracked = Tracked::default();
        let mut params = ClientParams::default();
        params.set("DateStyle", "SQL, DMY");
        params.complete_login(&tracked, &[("DateStyle".into(), "ISO, MDY".into())]);
        Sim { params, ..Sim::default() }
    }

    /// The answer to pgsluice's restore query, with the ParameterStatus it causes.
    fn restore_answer(reported: Option<&str>) -> Vec<u8> {
        let mut v = msg(b'T', b"\0\x01set_config\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\0\0");
        v.extend(msg(b'D', b"\0\x01\0\0\0\x08SQL, DMY"));
        v.extend(msg(b'C', b"SELECT 1\0"));
        if let Some(r) = reported {
            v.extend(status("DateStyle", r));
        }
        v.extend(msg(b'Z', b"I"));
        v
    }

    #[test]
    fn a_reset_is_followed_by_the_startup_value_and_the_client_sees_only_it() {
        let mut sim = client_with_date_style();
        sim.client(&[query("SET DateStyle = ISO"), query("RESET DateStyle")].concat()).unwrap();
        let sent = sim.sent();
        let (t, _) = tags(&sent);
        assert_eq!(t, "QQQ", "the client's two queries, then pgsluice's");
        let text = String::from_utf8_lossy(&sent);
        assert!(text.contains("RESET DateStyle\0Q"), "the restore right after the RESET: {text:?}");
        assert!(text.contains("E'SQL, DMY'"), "{text:?}");

        let set = [status("DateStyle", "ISO, DMY"), msg(b'C', b"SET\0"), msg(b'Z', b"I")].concat();
        let reset = [status("DateStyle", "ISO, MDY"), msg(b'C', b"RESET\0"), msg(b'Z', b"I")].concat();
        sim.server(&[set, reset].concat()).unwrap();
        assert!(!sim.releasable(), "the restore is still owed");
        let (t, s) = tags(&sim.received());
        assert_eq!(t, "SCZCSZ", "the RESET's own status dropped, the startup value told before its ReadyForQuery");
        assert_eq!(s, ["DateStyle|ISO, DMY|", "DateStyle|SQL, DMY|"], "the RESET's status is the startup value");
        assert_eq!(sim.params.get("DateStyle"), Some("SQL, DMY"));

        sim.server(&restore_answer(Some("SQL, DMY"))).unwrap();
        assert_eq!(tags(&sim.received()).0, "", "the restore's answers are dropped");
        assert!(sim.releasable());
        assert_eq!(sim.server_params, [("DateStyle".to_string(), "SQL, DMY".to_string())]);
        assert!(sim.synced.as_ref().is_some_and(|s| sim.params.is_same(s)));
    }

    #[test]
    fn a_failed_reset_tells_the_client_only_what_the_restore_reports() {
        let mut sim = client_with_date_style();
        sim.client(&query("RESET ALL; SELECT 1/0")).unwrap();
        assert_eq!(tags(&sim.sent()).0, "QQ");
        let error = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
        sim.server(&[error, msg(b'Z', b"I")].concat()).unwrap();
        assert_eq!(tags(&sim.received()).0, "EZ", "no ParameterStatus: the RESET was rolled back");
        // The restore set nothing (the value came from the session): no report.
        sim.server(&restore_answer(None)).unwrap();
        assert_eq!(tags(&sim.received()).0, "");
        assert!(sim.releasable());
    }

    #[test]
    fn clients_that_chose_nothing_and_sets_after_the_reset_get_no_restore() {
        let mut sim = Sim::default();
        sim.client(&query("RESET ALL")).unwrap();
        assert_eq!(tags(&sim.sent()).0, "Q");
        let mut sim = client_with_date_style();
        sim.client(&query("RESET DateStyle; SET DateStyle = German")).unwrap();
        sim.client(&query("RESET TimeZone")).unwrap();
        assert_eq!(tags(&sim.sent()).0, "QQ", "German wins; TimeZone was not chosen at startup");
    }
}
