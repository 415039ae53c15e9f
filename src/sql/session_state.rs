//! Session-state detection (issue 8): which statements leave state on a server connection
//! that a transaction-mode pooler would leak to the next client, and which undo it.
//!
//! [`apply`] walks the statements of a `Query` or `Parse` text with the router's lexer and
//! updates a client's [`PinState`]: a bit per kind of state ([`Reason`]) plus counts of
//! SQL-level prepared statements and `WITH HOLD` cursors. The session keeps a client on its
//! server while any is set ("pinned").
//!
//! What sets state: `SET`/`SET SESSION` of a parameter pgsluice does not track (tracked ones
//! are replayed per client), `SET SESSION CHARACTERISTICS`, `SET ROLE` / `SET SESSION
//! AUTHORIZATION`, `set_config(…, false)` (or a non-literal third argument), `CREATE TEMP …`
//! (unless `ON COMMIT DROP`), `SELECT … INTO TEMP`, a table in `pg_temp`, session-level
//! advisory locks (`pg_advisory_lock*`, `pg_try_advisory_lock*`, not the `_xact_` ones),
//! `LISTEN`, SQL `PREPARE`, `DECLARE … WITH HOLD`.
//! What undoes it: `DISCARD ALL` (everything), `RESET ALL` (parameters, not roles, as in
//! PostgreSQL), `RESET ROLE`, `SET ROLE NONE`, `RESET SESSION AUTHORIZATION`, `DISCARD TEMP`,
//! `pg_advisory_unlock_all()`, `UNLISTEN *`, `DEALLOCATE` (per statement, or `ALL`), `CLOSE`
//! (per cursor, or `ALL`).
//!
//! Invariants: conservative — state that may have been set counts as set (a rolled-back
//! `SET`, an unlock that may not have been the last one keep the pin); never allocates;
//! `SET LOCAL`, `SET TRANSACTION`, `set_config(…, true)` and `pg_advisory_xact_lock` never
//! pin. Statements inside functions or `DO` blocks are not visible (documented).

use super::lexer::{upper, Lexer, Tok};

/// A kind of session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// A parameter pgsluice does not track (`SET search_path …`, `set_config(…, false)`).
    Set = 1,
    /// `SET ROLE`.
    Role = 2,
    /// A temporary table, view or sequence.
    Temp = 4,
    /// A session-level advisory lock.
    Advisory = 8,
    /// `LISTEN`.
    Listen = 16,
    /// SQL-level `PREPARE`.
    Prepare = 32,
    /// A `WITH HOLD` cursor.
    HoldCursor = 64,
    /// `SET SESSION AUTHORIZATION`.
    Authorization = 128,
}

impl Reason {
    /// What the setting names in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Set => "a session parameter pgsluice does not track",
            Reason::Role => "a session role",
            Reason::Temp => "a temporary table",
            Reason::Advisory => "a session-level advisory lock",
            Reason::Listen => "LISTEN",
            Reason::Prepare => "an SQL-level prepared statement",
            Reason::HoldCursor => "a WITH HOLD cursor",
            Reason::Authorization => "a session authorization",
        }
    }
}

/// A client's session state, as far as pgsluice has seen it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PinState {
    mask: u8,
    /// Names (hashed) of the SQL-level prepared statements and `WITH HOLD` cursors it
    /// created and has not closed; allocated only once there is one.
    names: Vec<(Named, u64)>,
}

/// What a tracked name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Prepared,
    Cursor,
}

impl PinState {
    /// Some state is set: the client must keep its server.
    #[inline]
    pub fn is_pinned(&self) -> bool {
        self.mask != 0
    }

    /// Whether `r` is set.
    pub fn has(&self, r: Reason) -> bool {
        self.mask & r as u8 != 0
    }

    fn set(&mut self, r: Reason) {
        self.mask |= r as u8;
    }

    fn clear(&mut self, r: Reason) {
        self.mask &= !(r as u8);
    }

    /// Forgets `name` (or every name, `None`) of `kind`; the reason clears with the last one.
    fn forget(&mut self, kind: Named, name: Option<u64>, r: Reason) {
        match name {
            Some(h) => {
                if let Some(i) = self.names.iter().position(|&(k, n)| k == kind && n == h) {
                    self.names.swap_remove(i);
                }
            }
            None => self.names.retain(|&(k, _)| k != kind),
        }
        if !self.names.iter().any(|&(k, _)| k == kind) {
            self.clear(r);
        }
    }
}

/// A name as PostgreSQL folds it: an unquoted identifier in lower case, a quoted one as is.
fn name_hash(raw: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let quoted = raw.first() == Some(&b'"');
    for &b in raw {
        h ^= u64::from(if quoted { b } else { b.to_ascii_lowercase() });
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The first statement of a text that sets state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected<'a> {
    /// What it sets.
    pub reason: Reason,
    /// The statement (up to 200 bytes).
    pub statement: &'a str,
}

/// One statement's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Pin(Reason),
    Unpin(Reason),
    UnpinAll,
    ResetAll,
    Prepare(u64),
    Deallocate(u64),
    DeallocateAll,
    DeclareHold(u64),
    Close(u64),
    CloseAll,
}

/// Applies every statement of `text` to `state` in order; `tracked` says whether a parameter
/// name is tracked (replayed per client). Returns the first statement that set state.
pub fn apply<'a>(text: &'a str, tracked: &dyn Fn(&str) -> bool, state: &mut PinState) -> Option<Detected<'a>> {
    if surely_stateless(text.as_bytes()) {
        return None;
    }
    let mut first = None;
    let functions = mentions_state_function(text.as_bytes());
    let mut lx = Lexer::new(text.as_bytes());
    let mut effects = [None; 4];
    while let Ok(Some((start, end))) = statement(&mut lx, tracked, functions, &mut effects) {
        for e in effects.iter_mut().filter_map(Option::take) {
            let set = apply_effect(e, state);
            if let (Some(r), None) = (set, first) {
                first = Some(Detected { reason: r, statement: snippet(text, start, end) });
            }
        }
    }
    first
}

/// Whether any statement of `text` sets or undoes session state.
pub fn has_effect(text: &str, tracked: &dyn Fn(&str) -> bool) -> bool {
    if surely_stateless(text.as_bytes()) {
        return false;
    }
    let functions = mentions_state_function(text.as_bytes());
    let mut lx = Lexer::new(text.as_bytes());
    let mut effects = [None; 4];
    while let Ok(Some(_)) = statement(&mut lx, tracked, functions, &mut effects) {
        if effects.iter().any(Option::is_some) {
            return true;
        }
    }
    false
}

/// The first statement of `text` that would set state, without changing anything.
pub fn first_change<'a>(text: &'a str, tracked: &dyn Fn(&str) -> bool) -> Option<Detected<'a>> {
    apply(text, tracked, &mut PinState::default())
}

/// A statement for a log line: its leading keywords and names, cut before anything that may
/// be a value — a literal (`'…'`, `$…`, a number), `=`, `(`, or the word after `TO`,
/// `ROLE`, `AUTHORIZATION` or `SCHEMA` — so what a client sets never reaches the log.
pub fn redact(statement: &str) -> String {
    let b = statement.as_bytes();
    let mut cut = b.len();
    let mut i = 0;
    let mut last_word: &[u8] = b"";
    while i < b.len() {
        let c = b[i];
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if matches!(c, b'\'' | b'$' | b'=' | b'(' | b'"') || (c.is_ascii_digit() && word_start) {
            cut = i;
            break;
        }
        if c.is_ascii_alphabetic() && word_start {
            if ["TO", "ROLE", "AUTHORIZATION", "SCHEMA"].iter().any(|k| last_word.eq_ignore_ascii_case(k.as_bytes())) {
                cut = i;
                break;
            }
            let end = b[i..]
                .iter()
                .position(|x| !(x.is_ascii_alphanumeric() || *x == b'_' || *x == b'.'))
                .map_or(b.len(), |n| i + n);
            last_word = &b[i..end];
            i = end;
            continue;
        }
        i += 1;
    }
    let kept = statement[..cut].trim_end();
    if cut < b.len() {
        format!("{kept} …")
    } else {
        kept.to_string()
    }
}

fn snippet(text: &str, start: usize, end: usize) -> &str {
    let s = text.get(start..end.min(text.len())).unwrap_or("").trim();
    if s.len() <= 200 {
        return s;
    }
    let mut cut = 200;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Applies one effect; returns the reason if it set state.
fn apply_effect(e: Effect, st: &mut PinState) -> Option<Reason> {
    match e {
        Effect::Pin(r) => {
            st.set(r);
            return Some(r);
        }
        Effect::Unpin(r) => st.clear(r),
        Effect::UnpinAll => *st = PinState::default(),
        // (PostgreSQL's RESET ALL leaves SET ROLE and SET SESSION AUTHORIZATION alone.)
        Effect::ResetAll => st.clear(Reason::Set),
        Effect::Prepare(h) => {
            st.names.push((Named::Prepared, h));
            st.set(Reason::Prepare);
            return Some(Reason::Prepare);
        }
        // A name never seen (a protocol-level statement, a cursor without WITH HOLD) unpins
        // nothing.
        Effect::Deallocate(h) => st.forget(Named::Prepared, Some(h), Reason::Prepare),
        Effect::DeallocateAll => st.forget(Named::Prepared, None, Reason::Prepare),
        Effect::DeclareHold(h) => {
            st.names.push((Named::Cursor, h));
            st.set(Reason::HoldCursor);
            return Some(Reason::HoldCursor);
        }
        Effect::Close(h) => st.forget(Named::Cursor, Some(h), Reason::HoldCursor),
        Effect::CloseAll => st.forget(Named::Cursor, None, Reason::HoldCursor),
    }
    None
}

/// A statement's effect on the value of a session parameter, as far as restoring a
/// client's startup values after `RESET` needs it ([`param_effects`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamEffect<'a> {
    /// `SET [SESSION] name {TO | =} value` (also `SET TIME ZONE value`, `SET NAMES value`).
    Set(&'a str),
    /// `RESET name`, `SET [SESSION] name {TO | =} DEFAULT` (also `RESET TIME ZONE`,
    /// `SET TIME ZONE {DEFAULT | LOCAL}`, `SET NAMES DEFAULT`).
    Reset(&'a str),
    /// `RESET ALL`, `DISCARD ALL`.
    ResetAll,
}

/// Reports, in order, each statement of `text` that sets or resets a session parameter
/// (names as written; `TIME ZONE` as `TimeZone`, `NAMES` as `client_encoding`). `SET LOCAL`
/// and `set_config` calls are not reported; neither are statements inside functions.
/// Never allocates. Callers skip texts that [`surely_stateless`] clears.
pub fn param_effects<'a>(text: &'a str, on: &mut dyn FnMut(ParamEffect<'a>)) {
    let mut lx = Lexer::new(text.as_bytes());
    loop {
        let mut toks = [Tok::End; 5];
        let mut k = 0;
        let mut depth = 0u32;
        let last = loop {
            let Ok(t) = lx.next() else { return };
            match t {
                Tok::End => break true,
                Tok::Punct(b';') if depth == 0 => break false,
                Tok::Punct(b'(') => depth += 1,
                Tok::Punct(b')') => depth = depth.saturating_sub(1),
                _ => {}
            }
            if let Some(slot) = toks.get_mut(k) {
                *slot = t;
                k += 1;
            }
        };
        if let Some(e) = param_effect(text, &toks[..k]) {
            on(e);
        }
        if last {
            return;
        }
    }
}

/// The effect of one statement (its first tokens) for [`param_effects`].
fn param_effect<'a>(text: &'a str, toks: &[Tok]) -> Option<ParamEffect<'a>> {
    let word = |i: usize| -> &'a str {
        match toks.get(i) {
            Some(&Tok::Word(s, e)) => text.get(s..e).unwrap_or(""),
            _ => "",
        }
    };
    let is = |i: usize, kw: &str| word(i).eq_ignore_ascii_case(kw);
    // A value that means "the reset value": `DEFAULT` (and `LOCAL` for the time zone).
    let default_at = |i: usize, local: bool| (is(i, "DEFAULT") || (local && is(i, "LOCAL"))) && toks.len() == i + 1;
    if is(0, "DISCARD") && is(1, "ALL") {
        return Some(ParamEffect::ResetAll);
    }
    if is(0, "RESET") {
        return Some(if is(1, "ALL") {
            ParamEffect::ResetAll
        } else if is(1, "TIME") && is(2, "ZONE") {
            ParamEffect::Reset("TimeZone")
        } else if !word(1).is_empty() && toks.len() == 2 && !is(1, "ROLE") {
            ParamEffect::Reset(word(1))
        } else {
            return None;
        });
    }
    if !is(0, "SET") {
        return None;
    }
    let i = if is(1, "SESSION") { 2 } else { 1 };
    if is(i, "LOCAL") || is(i, "ROLE") || is(i, "AUTHORIZATION") || is(i, "CHARACTERISTICS") {
        return None;
    }
    if is(i, "TIME") && is(i + 1, "ZONE") {
        return Some(if default_at(i + 2, true) {
            ParamEffect::Reset("TimeZone")
        } else {
            ParamEffect::Set("TimeZone")
        });
    }
    if is(i, "NAMES") {
        let name = "client_encoding";
        return Some(if default_at(i + 1, false) { ParamEffect::Reset(name) } else { ParamEffect::Set(name) });
    }
    let name = word(i);
    // A dotted (extension) name, or no name: nothing tracked.
    if name.is_empty() || matches!(toks.get(i + 1), Some(Tok::Punct(b'.'))) {
        return None;
    }
    let to = is(i + 1, "TO") || matches!(toks.get(i + 1), Some(Tok::Punct(b'=')));
    Some(if to && default_at(i + 2, false) { ParamEffect::Reset(name) } else { ParamEffect::Set(name) })
}

/// Whether the text may call a state-changing function (an ASCII case-insensitive search,
/// so that statements without one are not scanned token by token).
fn mentions_state_function(b: &[u8]) -> bool {
    contains_ci(b, b"advisory") || contains_ci(b, b"set_config")
}

/// Whether `hay` contains `needle` (lower-case, starting with a letter), ignoring ASCII case.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    let (Some(&first), n) = (needle.first(), needle.len()) else { return true };
    if hay.len() < n {
        return false;
    }
    (0..=hay.len() - n).any(|i| hay[i] | 0x20 == first && hay[i..i + n].eq_ignore_ascii_case(needle))
}

/// The common case, decided without scanning the statement: one statement (no `;` but
/// one at the end, as pgbench and many drivers send it) whose first keyword never sets or
/// undoes state, calling no state function (none without a `(`), and for a `SELECT`-like
/// one no `INTO`. Byte searches (`memchr`) over the text; no lexing past the first word.
pub fn surely_stateless(b: &[u8]) -> bool {
    let body = b.trim_ascii_end();
    let body = body.strip_suffix(b";").unwrap_or(body);
    if memchr::memchr(b';', body).is_some() || (memchr::memchr(b'(', body).is_some() && mentions_state_function(body)) {
        return false;
    }
    let mut lx = Lexer::new(b);
    let Ok(t) = lx.next() else { return false };
    let mut buf = [0u8; 12];
    match upper(lx.word(t), &mut buf) {
        b"SET" | b"RESET" | b"CREATE" | b"LISTEN" | b"UNLISTEN" | b"PREPARE" | b"DEALLOCATE" | b"DECLARE"
        | b"CLOSE" | b"DISCARD" | b"" => false,
        b"SELECT" | b"WITH" | b"EXPLAIN" | b"VALUES" | b"TABLE" => !memchr::memchr2_iter(b'i', b'I', body)
            .any(|i| body.get(i..i + 4).is_some_and(|w| w.eq_ignore_ascii_case(b"into"))),
        _ => true,
    }
}

/// Reads one statement and records its effects (at most 4: the statement's own, then
/// function calls). Returns its byte range, `None` at the end of the text.
fn statement(
    lx: &mut Lexer<'_>,
    tracked: &dyn Fn(&str) -> bool,
    functions: bool,
    effects: &mut [Option<Effect>; 4],
) -> Result<Option<(usize, usize)>, super::lexer::Unterminated> {
    let mut t = lx.next()?;
    while t == Tok::Punct(b';') {
        t = lx.next()?;
    }
    if t == Tok::End {
        return Ok(None);
    }
    let start = lx.tok_start;
    let mut n = 0;
    let mut push = |e: Effect| {
        if let Some(slot) = effects.get_mut(n) {
            *slot = Some(e);
            n += 1;
        }
    };
    let mut buf = [0u8; 12];
    let first = upper(lx.word(t), &mut buf);
    // Tokens of the statement after the keyword, as the per-keyword rules need them.
    let mut toks: [Tok; 6] = [Tok::End; 6];
    // Byte ranges of the first two tokens (statement and cursor names may be quoted).
    let mut ranges = [(0usize, 0usize); 2];
    let mut k = 0;
    let mut temp_seen = false;
    let mut on_commit_drop = 0u8;
    let mut into_temp = 0u8;
    let mut with_hold = false;
    let mut prev_with = false;
    let mut prev_pg_temp = false;
    let mut prev_insert = false;
    let mut set_config_arg: Option<u32> = None;
    let mut depth = 0u32;
    let end = loop {
        let t = lx.next()?;
        match t {
            Tok::End => break lx.b.len(),
            Tok::Punct(b';') if depth == 0 => break lx.pos - 1,
            _ => {}
        }
        if k < toks.len() {
            if let Some(r) = ranges.get_mut(k) {
                *r = (lx.tok_start, lx.pos);
            }
            toks[k] = t;
            k += 1;
        }
        match t {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth = depth.saturating_sub(1),
            _ => {}
        }
        // `pg_temp.name` anywhere: an object in the session's temporary schema. (A bare
        // `temp` may be a column or table name.)
        if t == Tok::Punct(b'.') && prev_pg_temp {
            temp_seen = true;
        }
        prev_pg_temp = lx.is(t, b"pg_temp");
        // `SELECT … INTO TEMP [TABLE] name` (not `INSERT`/`MERGE INTO temp …`).
        if into_temp == 1 && (lx.is(t, b"TEMP") || lx.is(t, b"TEMPORARY")) {
            into_temp = 2;
        } else if into_temp == 1 {
            into_temp = 0;
        }
        if into_temp == 0 && lx.is(t, b"INTO") && !prev_insert {
            into_temp = 1;
        }
        prev_insert = lx.is(t, b"INSERT") || lx.is(t, b"MERGE");
        on_commit_drop = match (on_commit_drop, lx.word(t)) {
            (0, w) if w.eq_ignore_ascii_case(b"ON") => 1,
            (1, w) if w.eq_ignore_ascii_case(b"COMMIT") => 2,
            (2, w) if w.eq_ignore_ascii_case(b"DROP") => 3,
            (3, _) => 3,
            _ => 0,
        };
        if prev_with && lx.is(t, b"HOLD") {
            with_hold = true;
        }
        prev_with = lx.is(t, b"WITH");
        if functions {
            if let Tok::Word(..) = t {
                let w = lx.word(t);
                if is_one_of(
                    w,
                    &[
                        b"pg_advisory_lock",
                        b"pg_advisory_lock_shared",
                        b"pg_try_advisory_lock",
                        b"pg_try_advisory_lock_shared",
                    ],
                ) {
                    push(Effect::Pin(Reason::Advisory));
                } else if w.eq_ignore_ascii_case(b"pg_advisory_unlock_all") {
                    push(Effect::Unpin(Reason::Advisory));
                } else if w.eq_ignore_ascii_case(b"set_config") {
                    set_config_arg = Some(0);
                }
            }
            // set_config(name, value, is_local): pins unless the third argument is `true`.
            if let Some(commas) = set_config_arg {
                match t {
                    Tok::Punct(b',') => set_config_arg = Some(commas + 1),
                    Tok::Punct(b')') if commas >= 2 => set_config_arg = None,
                    _ if commas == 2 && !matches!(t, Tok::Punct(b'(')) => {
                        if !(lx.is(t, b"true") || lx.is(t, b"TRUE")) {
                            push(Effect::Pin(Reason::Set));
                        }
                        set_config_arg = None;
                    }
                    _ => {}
                }
            }
        }
    };
    let word = |i: usize| -> &[u8] { toks.get(i).map_or(b"", |&t| lx.word(t)) };
    let is = |i: usize, kw: &[u8]| word(i).eq_ignore_ascii_case(kw);
    let name = |i: usize| ranges.get(i).map_or(0, |&(s, e)| name_hash(lx.b.get(s..e).unwrap_or(b"")));
    let own = match first {
        b"SET" => {
            let mut i = 0;
            if is(0, b"SESSION") {
                i = 1;
                if is(1, b"AUTHORIZATION") {
                    return finish(
                        push,
                        Some(if is(2, b"DEFAULT") {
                            Effect::Unpin(Reason::Authorization)
                        } else {
                            Effect::Pin(Reason::Authorization)
                        }),
                        start,
                        end,
                    );
                }
                if is(1, b"CHARACTERISTICS") {
                    return finish(push, Some(Effect::Pin(Reason::Set)), start, end);
                }
            }
            if i == 0 && (is(0, b"LOCAL") || is(0, b"TRANSACTION") || is(0, b"CONSTRAINTS")) {
                None
            } else if is(i, b"ROLE") {
                Some(if is(i + 1, b"NONE") { Effect::Unpin(Reason::Role) } else { Effect::Pin(Reason::Role) })
            } else if is(i, b"TIME") {
                (!tracked("timezone")).then_some(Effect::Pin(Reason::Set))
            } else if is(i, b"NAMES") {
                (!tracked("client_encoding")).then_some(Effect::Pin(Reason::Set))
            } else if is(i, b"SCHEMA") {
                (!tracked("search_path")).then_some(Effect::Pin(Reason::Set))
            } else {
                // A parameter name; a dotted (extension) name is never tracked.
                let dotted = matches!(toks.get(i + 1), Some(Tok::Punct(b'.')));
                match std::str::from_utf8(word(i)) {
                    Ok(name) if !name.is_empty() && !dotted && tracked(name) => None,
                    _ => Some(Effect::Pin(Reason::Set)),
                }
            }
        }
        b"RESET" => {
            if is(0, b"ALL") {
                Some(Effect::ResetAll)
            } else if is(0, b"ROLE") {
                Some(Effect::Unpin(Reason::Role))
            } else if is(0, b"SESSION") && is(1, b"AUTHORIZATION") {
                Some(Effect::Unpin(Reason::Authorization))
            } else {
                None
            }
        }
        b"CREATE" => {
            // CREATE [OR REPLACE] [GLOBAL | LOCAL] {TEMP | TEMPORARY} …
            let mut i = 0;
            while i < toks.len() && ["OR", "REPLACE", "GLOBAL", "LOCAL"].iter().any(|k| is(i, k.as_bytes())) {
                i += 1;
            }
            let temp = temp_seen || is(i, b"TEMP") || is(i, b"TEMPORARY");
            (temp && on_commit_drop != 3).then_some(Effect::Pin(Reason::Temp))
        }
        b"SELECT" | b"WITH" | b"EXPLAIN" if into_temp == 2 => Some(Effect::Pin(Reason::Temp)),
        b"LISTEN" => Some(Effect::Pin(Reason::Listen)),
        b"UNLISTEN" => matches!(toks[0], Tok::Punct(b'*')).then_some(Effect::Unpin(Reason::Listen)),
        b"PREPARE" if !is(0, b"TRANSACTION") => Some(Effect::Prepare(name(0))),
        b"DEALLOCATE" => {
            let i = usize::from(is(0, b"PREPARE"));
            Some(if is(i, b"ALL") { Effect::DeallocateAll } else { Effect::Deallocate(name(i)) })
        }
        b"DECLARE" if with_hold => Some(Effect::DeclareHold(name(0))),
        b"CLOSE" => Some(if is(0, b"ALL") { Effect::CloseAll } else { Effect::Close(name(0)) }),
        b"DISCARD" => {
            if is(0, b"ALL") {
                Some(Effect::UnpinAll)
            } else if is(0, b"TEMP") || is(0, b"TEMPORARY") {
                Some(Effect::Unpin(Reason::Temp))
            } else {
                None
            }
        }
        _ => None,
    };
    finish(push, own, start, end)
}

/// Records the statement's own effect (after the effects of functions it calls: a statement
/// with both, e.g. `DISCARD ALL` and a function, does not exist).
fn finish(
    mut push: impl FnMut(Effect),
    own: Option<Effect>,
    start: usize,
    end: usize,
) -> Result<Option<(usize, usize)>, super::lexer::Unterminated> {
    if let Some(e) = own {
        push(e);
    }
    Ok(Some((start, end)))
}

fn is_one_of(w: &[u8], names: &[&[u8]]) -> bool {
    names.iter().any(|n| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(name: &str) -> bool {
        matches!(
            name.to_ascii_lowercase().as_str(),
            "application_name"
                | "timezone"
                | "client_encoding"
                | "datestyle"
                | "intervalstyle"
                | "standard_conforming_strings"
        )
    }

    fn pins(sql: &str) -> Option<Reason> {
        first_change(sql, &tracked).map(|d| d.reason)
    }

    fn effects(sql: &str) -> Vec<ParamEffect<'_>> {
        let mut v = Vec::new();
        param_effects(sql, &mut |e| v.push(e));
        v
    }

    #[test]
    fn parameter_resets_are_reported_in_order() {
        use ParamEffect::{Reset, ResetAll, Set};
        assert_eq!(effects("RESET DateStyle"), [Reset("DateStyle")]);
        assert_eq!(effects("reset all; discard all"), [ResetAll, ResetAll]);
        assert_eq!(
            effects("SET DateStyle = ISO; RESET timezone; set session DateStyle to default"),
            [Set("DateStyle"), Reset("timezone"), Reset("DateStyle")]
        );
        assert_eq!(effects("RESET TIME ZONE; SET TIME ZONE LOCAL"), [Reset("TimeZone"), Reset("TimeZone")]);
        assert_eq!(effects("SET TIME ZONE 'UTC'; SET NAMES DEFAULT"), [Set("TimeZone"), Reset("client_encoding")]);
        assert_eq!(effects("SET DateStyle = 'default'"), [Set("DateStyle")], "a quoted 'default' is a value");
        assert!(effects("SET LOCAL DateStyle TO DEFAULT; RESET ROLE; SELECT 1; DISCARD TEMP").is_empty());
        assert!(effects("SET SESSION AUTHORIZATION DEFAULT; SET myext.x = DEFAULT").is_empty());
        assert_eq!(effects("SELECT ';'; RESET DateStyle"), [Reset("DateStyle")]);
    }

    #[test]
    fn statements_that_set_session_state() {
        assert_eq!(pins("SET statement_timeout = '1ms'"), Some(Reason::Set));
        assert_eq!(pins("set session lock_timeout to 5"), Some(Reason::Set));
        assert_eq!(pins("SET search_path TO a, b"), Some(Reason::Set));
        assert_eq!(pins("SET SCHEMA 'a'"), Some(Reason::Set));
        assert_eq!(pins("SET myext.flag = on"), Some(Reason::Set));
        assert_eq!(pins("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"), Some(Reason::Set));
        assert_eq!(pins("SET ROLE admin"), Some(Reason::Role));
        assert_eq!(pins("SET SESSION AUTHORIZATION bob"), Some(Reason::Authorization));
        assert_eq!(pins("SELECT set_config('search_path', 'x', false)"), Some(Reason::Set));
        assert_eq!(pins("select set_config('a.b', $1, $2)"), Some(Reason::Set));
        assert_eq!(pins("CREATE TEMP TABLE t (a int)"), Some(Reason::Temp));
        assert_eq!(pins("create global temporary table t (a int)"), Some(Reason::Temp));
        assert_eq!(pins("CREATE TABLE pg_temp.t (a int)"), Some(Reason::Temp));
        assert_eq!(pins("CREATE OR REPLACE TEMP VIEW v AS SELECT 1"), Some(Reason::Temp));
        assert_eq!(pins("create local temp sequence s"), Some(Reason::Temp));
        assert_eq!(pins("SELECT 1 AS a INTO TEMP t"), Some(Reason::Temp));
        assert_eq!(pins("SELECT pg_advisory_lock(42)"), Some(Reason::Advisory));
        assert_eq!(pins("SELECT PG_TRY_ADVISORY_LOCK_SHARED(1, 2)"), Some(Reason::Advisory));
        assert_eq!(pins("LISTEN jobs"), Some(Reason::Listen));
        assert_eq!(pins("PREPARE q AS SELECT 1"), Some(Reason::Prepare));
        assert_eq!(pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), Some(Reason::HoldCursor));
        assert_eq!(pins("SELECT 1; SET work_mem = '64MB'").unwrap(), Reason::Set);
        let d = first_change("SELECT 1; SET work_mem = '64MB'; SELECT 2", &tracked).unwrap();
        assert_eq!(d.statement, "SET work_mem = '64MB'");
    }

    #[test]
    fn statements_that_do_not() {
        for sql in [
            "SET LOCAL statement_timeout = '1ms'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET application_name = 'x'",
            "SET TIME ZONE 'UTC'",
            "SET NAMES 'UTF8'",
            "SELECT set_config('search_path', 'x', true)",
            "SELECT pg_advisory_xact_lock(1)",
            "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
            "CREATE TABLE t (a int)",
            "SELECT 'SET x = 1', 'pg_advisory_lock(1)' FROM t",
            "SELECT a INTO t2 FROM t",
            "DECLARE c CURSOR FOR SELECT 1",
            "PREPARE TRANSACTION 'x'",
            "INSERT INTO temp_log VALUES (1)",
            "CREATE TABLE weather (city text, temp int)",
            "CREATE INDEX ON weather (temp)",
            "CREATE VIEW hot AS SELECT * FROM weather WHERE temp > 30",
            "WITH s AS (SELECT 1) INSERT INTO temp SELECT * FROM s",
            "SELECT temp FROM weather",
            "-- SET x = 1\nSELECT 1",
            "SELECT $$ LISTEN x $$",
        ] {
            assert_eq!(pins(sql), None, "{sql}");
        }
    }

    #[test]
    fn undoing_statements_unpin() {
        let mut st = PinState::default();
        let t = &tracked;
        apply("SET search_path = x; SET ROLE r", t, &mut st);
        assert!(st.has(Reason::Set) && st.has(Reason::Role));
        apply("RESET ALL", t, &mut st);
        assert!(!st.has(Reason::Set) && st.has(Reason::Role), "RESET ALL keeps the role, as in PostgreSQL");
        apply("RESET ROLE", t, &mut st);
        assert!(!st.is_pinned());
        apply("SET SESSION AUTHORIZATION bob; SET ROLE r", t, &mut st);
        apply("SET ROLE NONE", t, &mut st);
        assert!(st.has(Reason::Authorization));
        apply("RESET SESSION AUTHORIZATION", t, &mut st);
        assert!(!st.is_pinned());
        apply("SELECT pg_advisory_lock(1)", t, &mut st);
        apply("SELECT pg_advisory_unlock(1)", t, &mut st);
        assert!(st.is_pinned(), "an unlock may not be the last one");
        apply("SELECT pg_advisory_unlock_all()", t, &mut st);
        assert!(!st.is_pinned());
        apply("LISTEN a; LISTEN b", t, &mut st);
        apply("UNLISTEN a", t, &mut st);
        assert!(st.is_pinned());
        apply("UNLISTEN *", t, &mut st);
        assert!(!st.is_pinned());
        apply("PREPARE a AS SELECT 1; PREPARE b AS SELECT 2", t, &mut st);
        apply("DEALLOCATE a", t, &mut st);
        assert!(st.has(Reason::Prepare));
        apply("DEALLOCATE PREPARE b", t, &mut st);
        assert!(!st.is_pinned());
        apply("DECLARE c CURSOR WITH HOLD FOR SELECT 1", t, &mut st);
        apply("CLOSE other", t, &mut st);
        assert!(st.is_pinned(), "a cursor that is not c (e.g. without WITH HOLD) does not unpin");
        apply("DEALLOCATE never_prepared", t, &mut st);
        apply("CLOSE C", t, &mut st);
        assert!(!st.is_pinned(), "names fold to lower case");
        apply("DECLARE \"Mixed\" CURSOR WITH HOLD FOR SELECT 1", t, &mut st);
        apply("CLOSE mixed", t, &mut st);
        assert!(st.is_pinned(), "a quoted name keeps its case");
        apply("CLOSE ALL", t, &mut st);
        assert!(!st.is_pinned());
        apply("CREATE TEMP TABLE x (a int)", t, &mut st);
        apply("DISCARD TEMP", t, &mut st);
        assert!(!st.is_pinned());
        apply("SET ROLE r; CREATE TEMP TABLE y (a int); LISTEN z", t, &mut st);
        apply("DISCARD ALL", t, &mut st);
        assert!(!st.is_pinned());
        apply("SET ROLE r", t, &mut st);
        apply("SET ROLE NONE", t, &mut st);
        assert!(!st.is_pinned());
    }

    #[test]
    fn the_common_case_is_decided_without_a_scan() {
        assert!(surely_stateless(b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"));
        assert!(surely_stateless(b"UPDATE t SET a = 1 WHERE b = 2"));
        assert!(surely_stateless(b"insert into t values (1)"));
        assert!(!surely_stateless(b"SELECT 1 INTO TEMP t"));
        assert!(!surely_stateless(b"select pg_advisory_lock(1)"));
        assert!(!surely_stateless(b"SET x = 1"));
        assert!(!surely_stateless(b"SELECT 1; SET x = 1"));
        assert!(
            surely_stateless(b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;"),
            "a final ; is one statement"
        );
        assert!(surely_stateless(b"select 1 ;\n  "));
        assert!(!surely_stateless(b"SELECT 1;;"), "two ; are scanned");
        assert!(!surely_stateless(b"SET x = 1;"));
        assert!(!surely_stateless(b"(SELECT 1)"), "no keyword first: scanned");
        assert!(contains_ci(b"xx SET_CONFIG(", b"set_config"));
        assert!(!contains_ci(b"se", b"set_config"));
    }

    #[test]
    fn logged_statements_carry_no_values() {
        assert_eq!(redact("SET app.secret = 'hunter2'"), "SET app.secret …");
        assert_eq!(redact("SET app.tenant = acme"), "SET app.tenant …");
        assert_eq!(redact("set search_path to tenant_42"), "set search_path to …");
        assert_eq!(redact("SET ROLE admin"), "SET ROLE …");
        assert_eq!(redact("SET SESSION AUTHORIZATION bob"), "SET SESSION AUTHORIZATION …");
        assert_eq!(redact("SELECT pg_advisory_lock(42)"), "SELECT pg_advisory_lock …");
        assert_eq!(redact("LISTEN jobs2"), "LISTEN jobs2");
        assert!(has_effect("DISCARD ALL", &tracked));
        assert!(!has_effect("SELECT 1", &tracked));
    }

    #[test]
    fn unterminated_or_odd_text_does_not_panic() {
        for sql in
            ["SET", "SET SESSION", "SELECT set_config(", "CREATE", "'unterminated", "DEALLOCATE", "UNLISTEN", ";;;", ""]
        {
            let _ = pins(sql);
        }
        assert_eq!(pins("SET"), Some(Reason::Set), "conservative");
    }
}
