//! Statement classification for read/write splitting (issue 6): may this text run on a
//! streaming replica?
//!
//! # Role
//!
//! [`Classifier::classify`] looks at the text of a `Query` message (possibly several
//! statements) or of a `Parse` message and reports a [`Class`]: whether every statement is
//! read-only, whether the text opens a transaction block (and in which access mode), and
//! any routing hint comment (`/* pgsluice:primary */`, `/* pgsluice:replica */`) that
//! precedes the first statement. One `Classifier` is shared by all sessions.
//!
//! # Invariants
//!
//! * **Conservative.** Sending a write to a replica is a correctness bug; sending a read to
//!   the primary only costs capacity. Whenever the classifier is unsure (unknown first
//!   keyword, lexical error, parse error, text or nesting too large for the parser, a
//!   function it does not know) it answers `read_only: false`.
//! * **Cheap first** (STYLE.md hot-path rule 7). A hand-written lexer that does not
//!   allocate splits the text into statements and reads the first keyword of each. Writes
//!   (`INSERT`, `UPDATE`, DDL, `SET`, …) and plain reads (`SELECT`/`VALUES`/`TABLE`/`SHOW`/
//!   `EXPLAIN` without `(`, `INTO`, `FOR` or, for `EXPLAIN`, `ANALYZE`) are decided there.
//!   Only the rest (`WITH`, function calls, `FOR UPDATE`, `SELECT … INTO`, `COPY (…) TO`,
//!   `EXPLAIN ANALYZE`) reaches `sqlparser`, one statement at a time.
//! * **Bounded parser path.** Statements longer than `max_parse_length` bytes or with more
//!   than [`MAX_PARSE_TOKENS`] tokens are not parsed (→ primary); the parser's recursion
//!   limit turns deep nesting into a parse error (→ primary) rather than a stack overflow.
//!   A panic inside the parser is caught and also means primary.
//! * **Exact cache keys.** Parser-path results are cached by the exact statement text (never
//!   by a hash alone: a collision would misroute), in a sharded concurrent cache bounded to
//!   `cache_size` entries and `cache_size` KiB of text ([`ENTRY_WEIGHT`]), so there is no
//!   global lock on the hot path and no client can make it hold more. The key is one
//!   statement without the comments before it and its `;`, so a hint does not split entries.
//! * **Multi-statement text** is read-only only if every statement is; the fast path stops
//!   at the first write without parsing anything. `begin` comes from the first statement
//!   only (and from `SET TRANSACTION` right after a plain `BEGIN`).
//!
//! The lexer follows PostgreSQL's rules (4.1 "Lexical Structure"): `--` and nested `/* */`
//! comments, `'…'` with `''`, `E'…'` with backslash escapes, `"…"` identifiers, `$tag$…$tag$`
//! dollar quotes and `$1` parameters. It assumes `standard_conforming_strings = on` (the
//! default since 9.1), as `sqlparser` does.
//!
//! # The function allowlist
//!
//! A function call may run on a replica only if its name is in
//! [`DEFAULT_READ_ONLY_FUNCTIONS`] or in [`ClassifierSettings::read_only_functions`]. The
//! default list holds built-ins that neither write, nor touch sequences or session state
//! (`nextval`, `setval`, `set_config`, advisory locks, `txid_current`), nor fail on a hot
//! standby (`pg_current_wal_lsn`, `pg_switch_wal`, `lo_*`, `pg_notify`, …). Anything else,
//! including every user-defined function, is assumed to write. A name qualified with
//! `pg_catalog.` also matches its bare form; any other qualified name must be listed
//! qualified. What the classifier cannot see — views or operators that call writing
//! functions — is out of scope.
//!
//! # Deliberately conservative corners
//!
//! * `BEGIN … ISOLATION LEVEL SERIALIZABLE` is reported with its access mode but with
//!   `read_only: false`: a hot standby refuses serializable transactions. So a transaction
//!   block may go to a replica only when `begin == ReadOnly && read_only`.
//! * `COMMIT PREPARED` / `ROLLBACK PREPARED`, `COPY … TO` a file or program, `EXPLAIN
//!   EXECUTE` (SQL-level prepared statements live on the primary) and `EXPLAIN (ANALYZE
//!   false)` are not read-only; neither is anything `sqlparser` cannot parse (`FOR NO KEY
//!   UPDATE`, `JSON_TABLE`, `ROWS FROM`, …).

use quick_cache::sync::Cache;
use sqlparser::ast::{CopySource, CopyTarget, Expr, ObjectName, Query, Select, Statement, TableFactor, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};

pub use super::lexer::Hint;
use super::lexer::{upper, Lexer, Tok, Unterminated};

#[cfg(test)]
mod tests;

/// How a statement (or all statements of a simple-query string) may be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Class {
    /// Nothing in it writes or needs the primary: it may run on a replica.
    pub read_only: bool,
    /// It starts a transaction block (BEGIN / START TRANSACTION), and in which access mode.
    pub begin: Begin,
    /// A routing hint comment at the start of the text.
    pub hint: Hint,
}

/// Whether the text starts a transaction block, and its access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Begin {
    /// The first statement is not `BEGIN` / `START TRANSACTION`.
    #[default]
    None,
    /// `BEGIN` without an access mode.
    Plain,
    /// `BEGIN … READ ONLY` (or a plain `BEGIN` followed by `SET TRANSACTION READ ONLY`).
    /// With `SERIALIZABLE` the [`Class`] is still not `read_only`: a standby refuses it.
    ReadOnly,
    /// `BEGIN … READ WRITE`.
    ReadWrite,
}

/// How the [`Classifier`] is set up.
pub struct ClassifierSettings {
    /// Functions (lower-case, optionally schema-qualified "myschema.f") that may be called on a replica, IN ADDITION to the built-in default allowlist.
    pub read_only_functions: Vec<String>,
    /// Longest text handed to the SQL parser; longer → primary (read_only false) without parsing.
    pub max_parse_length: usize,
    /// Parser-path results kept (bounded LRU-like concurrent cache, exact query text as key — no hash-only keys: a collision would misroute).
    /// Memory is bounded too: an entry weighs its text's length, at least [`ENTRY_WEIGHT`]
    /// bytes, and the cache holds at most `cache_size` × [`ENTRY_WEIGHT`] bytes.
    pub cache_size: usize,
}

/// Most tokens in one statement handed to the parser; more → primary without parsing.
///
/// The parser bounds its own recursion, but an operator chain (`a OR a OR …`) is parsed in
/// a loop into a left-deep tree, and walking and dropping that tree recurses once per
/// operator. Each level takes at least two tokens, so the depth stays under 4096; measured,
/// a 2 MiB worker stack overflows only beyond ~18 000 levels (debug and release builds).
pub const MAX_PARSE_TOKENS: usize = 8192;

/// The least weight of a cache entry, in bytes, and the average the cache allows: with
/// statements up to `max_parse_length` (16 KiB by default) long, the default 4096 entries
/// would otherwise hold 64 MiB; weighted, they hold at most 4 MiB.
pub const ENTRY_WEIGHT: u64 = 1024;

/// An entry's weight: its text plus the table's share, at least [`ENTRY_WEIGHT`].
#[derive(Debug, Clone, Copy)]
struct TextWeight;

impl quick_cache::Weighter<Box<str>, bool> for TextWeight {
    fn weight(&self, key: &Box<str>, _: &bool) -> u64 {
        (key.len() as u64 + 64).max(ENTRY_WEIGHT)
    }
}

/// `sqlparser`'s recursion limit: deeper nesting is a parse error, so → primary.
const PARSE_RECURSION_LIMIT: usize = 50;

/// Classifies statements; `Send + Sync`, one per process, shared by all sessions.
pub struct Classifier {
    /// Allowlisted function names: the defaults plus the configured ones, lower-case.
    functions: HashSet<Box<str>>,
    max_parse_length: usize,
    /// Parser-path results by exact statement text; `None` when `cache_size` is 0.
    cache: Option<Cache<Box<str>, bool, TextWeight>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

// === impl Classifier ===

impl Classifier {
    /// Builds a classifier; `settings.read_only_functions` are lower-cased.
    pub fn new(settings: ClassifierSettings) -> Classifier {
        let functions = DEFAULT_READ_ONLY_FUNCTIONS
            .iter()
            .map(|f| Box::<str>::from(*f))
            .chain(settings.read_only_functions.iter().map(|f| f.trim().to_ascii_lowercase().into_boxed_str()))
            .collect();
        Classifier {
            functions,
            max_parse_length: settings.max_parse_length,
            cache: (settings.cache_size > 0).then(|| {
                Cache::with_weighter(settings.cache_size, settings.cache_size as u64 * ENTRY_WEIGHT, TextWeight)
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Classifies query text (a Query message's text or a Parse's query). Never panics on any input (fuzz it with random bytes → str).
    pub fn classify(&self, sql: &str) -> Class {
        let mut lx = Lexer::new(sql.as_bytes());
        let mut hint = Hint::None;
        if lx.skip_trivia(Some(&mut hint)).is_err() {
            return Class { hint, ..Class::default() };
        }
        let (mut read_only, begin, needs_parse) = match fast_path(&mut lx) {
            Ok(Fast { read_only, begin, needs_parse }) => (read_only, begin, needs_parse),
            Err(Unterminated) => (false, Begin::None, false),
        };
        if read_only && needs_parse {
            read_only = self.parse_pieces(sql);
        }
        Class { read_only, begin, hint }
    }

    /// (hits, misses) of the parser-path cache. Every parse counts as a miss, so with the
    /// cache disabled `misses` is the number of parser runs.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Entries in the parser-path cache.
    #[cfg(test)]
    fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// Bytes the parser-path cache holds, as weighed.
    #[cfg(test)]
    fn cache_weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, Cache::weight)
    }

    /// Second pass over a text the fast path found read-only so far: parses each statement
    /// it could not decide, stopping at the first that is not read-only.
    fn parse_pieces(&self, sql: &str) -> bool {
        let mut lx = Lexer::new(sql.as_bytes());
        if lx.skip_trivia(None).is_err() {
            return false;
        }
        loop {
            match lx.next_statement() {
                Ok(None) => return true,
                Ok(Some(st)) if st.verdict == Verdict::Parse => {
                    let ok =
                        sql.get(st.start..st.end).is_some_and(|piece| self.parse_cached(piece.trim_end(), st.tokens));
                    if !ok {
                        return false;
                    }
                }
                Ok(Some(_)) => {}
                Err(Unterminated) => return false,
            }
        }
    }

    /// The parser path for one statement, through the cache.
    fn parse_cached(&self, piece: &str, tokens: usize) -> bool {
        if piece.len() > self.max_parse_length || tokens > MAX_PARSE_TOKENS {
            return false;
        }
        if let Some(cache) = &self.cache {
            if let Some(read_only) = cache.get(piece) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return read_only;
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let read_only = self.parse(piece);
        if let Some(cache) = &self.cache {
            cache.insert(piece.into(), read_only);
        }
        read_only
    }

    /// Parses one statement with `sqlparser` and walks it; any error or panic → false.
    fn parse(&self, piece: &str) -> bool {
        catch_unwind(AssertUnwindSafe(|| {
            let dialect = PostgreSqlDialect {};
            let parsed = Parser::new(&dialect)
                .with_recursion_limit(PARSE_RECURSION_LIMIT)
                .try_with_sql(piece)
                .and_then(|mut p| p.parse_statements());
            match parsed {
                Ok(stmts) => !stmts.is_empty() && stmts.iter().all(|s| self.statement_read_only(s)),
                Err(_) => false,
            }
        }))
        .unwrap_or(false)
    }

    /// Whether a parsed top-level statement may run on a replica.
    fn statement_read_only(&self, stmt: &Statement) -> bool {
        match stmt {
            Statement::Query(q) => self.query_read_only(q),
            Statement::Explain { analyze, statement, options, .. } => {
                // `EXPLAIN (ANALYZE false)` counts as ANALYZE: conservative and rare.
                let analyze = *analyze
                    || options.iter().flatten().any(|o| {
                        let n = &o.name.value;
                        n.eq_ignore_ascii_case("analyze") || n.eq_ignore_ascii_case("analyse")
                    });
                // A prepared statement made by SQL `PREPARE` lives on the primary.
                let execute = matches!(**statement, Statement::Execute { .. });
                !execute && (!analyze || self.statement_read_only(statement))
            }
            // COPY TO a server file or program writes on whichever host runs it: primary.
            Statement::Copy { source, to: true, target: CopyTarget::Stdout, .. } => match source {
                CopySource::Table { .. } => true,
                CopySource::Query(q) => self.query_read_only(q),
            },
            Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => true,
            _ => false,
        }
    }

    /// Walks a query: no nested data-modifying statement, no row locks, no `SELECT … INTO`,
    /// and only allowlisted functions.
    fn query_read_only(&self, q: &Query) -> bool {
        q.visit(&mut ReadOnlyCheck { classifier: self }).is_continue()
    }

    /// Whether a called function is on the allowlist.
    fn function_allowed(&self, name: &ObjectName) -> bool {
        let mut qualified = String::new();
        let mut parts = 0;
        let mut bare_from = 0;
        for part in &name.0 {
            let Some(ident) = part.as_ident() else { return false };
            if parts > 0 {
                qualified.push('.');
            }
            bare_from = qualified.len();
            if ident.quote_style.is_some() {
                qualified.push_str(&ident.value);
            } else {
                qualified.extend(ident.value.chars().map(|c| c.to_ascii_lowercase()));
            }
            parts += 1;
        }
        self.functions.contains(qualified.as_str())
            || (parts == 2
                && &qualified[..bare_from] == "pg_catalog."
                && self.functions.contains(&qualified[bare_from..]))
    }
}

/// The AST walk of [`Classifier::query_read_only`]; breaks at the first thing that writes.
struct ReadOnlyCheck<'a> {
    classifier: &'a Classifier,
}

// === impl ReadOnlyCheck ===

impl Visitor for ReadOnlyCheck<'_> {
    type Break = ();

    /// A statement inside a query is a data-modifying CTE (`WITH d AS (DELETE …)`).
    fn pre_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
        ControlFlow::Break(())
    }

    /// `FOR UPDATE` / `FOR SHARE` take row locks, which a standby refuses.
    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        go_on(q.locks.is_empty() && q.for_clause.is_none())
    }

    /// `SELECT … INTO t` creates a table.
    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        go_on(s.into.is_none())
    }

    /// Any call (select list, WHERE, ORDER BY, window, argument, …) must be allowlisted.
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        go_on(!matches!(e, Expr::Function(f) if !self.classifier.function_allowed(&f.name)))
    }

    /// Set-returning functions in FROM (`generate_series(1, 3)`, `LATERAL f(x)`).
    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        let ok = match t {
            TableFactor::Table { name, args, .. } => args.is_none() || self.classifier.function_allowed(name),
            TableFactor::Function { name, .. } => self.classifier.function_allowed(name),
            TableFactor::Derived { .. }
            | TableFactor::TableFunction { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::NestedJoin { .. } => true,
            _ => false,
        };
        go_on(ok)
    }
}

/// Continue the walk if `ok`, else stop it: not read-only.
fn go_on(ok: bool) -> ControlFlow<()> {
    if ok {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}

/// What the fast path concluded about the whole text.
struct Fast {
    /// Read-only as far as the fast path can tell (parser pieces pending).
    read_only: bool,
    begin: Begin,
    /// Some statement needs the parser path.
    needs_parse: bool,
}

/// Access mode and isolation of `BEGIN` / `START TRANSACTION` / `SET TRANSACTION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    access: Begin,
    serializable: bool,
    /// Something the mode parser did not recognise.
    unknown: bool,
}

impl Mode {
    /// Whether the transaction block may run on a replica.
    fn read_only(self) -> bool {
        self.access == Begin::ReadOnly && !self.serializable && !self.unknown
    }
}

/// The fast path's verdict on one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Read,
    Write,
    /// The parser has to decide.
    Parse,
    Begin(Mode),
    SetTransaction(Mode),
}

/// One statement as the fast path saw it.
struct Stmt {
    verdict: Verdict,
    /// `text[start..end]` is the statement without leading trivia and terminator.
    start: usize,
    end: usize,
    /// Tokens in the statement (bounds the parser's work).
    tokens: usize,
}

/// Splits the text into statements and combines their verdicts; returns at the first write.
fn fast_path(lx: &mut Lexer<'_>) -> Result<Fast, Unterminated> {
    let mut fast = Fast { read_only: true, begin: Begin::None, needs_parse: false };
    let mut first: Option<Mode> = None;
    let mut index = 0;
    while let Some(st) = lx.next_statement()? {
        match st.verdict {
            Verdict::Read => {}
            Verdict::Parse => fast.needs_parse = true,
            Verdict::Write => {
                fast.read_only = false;
                return Ok(fast);
            }
            Verdict::Begin(mode) if index == 0 => {
                first = Some(mode);
                fast.begin = mode.access;
            }
            Verdict::Begin(mode) => fast.read_only &= mode.read_only(),
            // `BEGIN; SET TRANSACTION READ ONLY; …` sets the mode of the block just opened.
            Verdict::SetTransaction(set) if index == 1 => match first {
                Some(m) if m.access == Begin::Plain && !m.unknown => {
                    let merged = Mode {
                        access: if set.access == Begin::Plain { m.access } else { set.access },
                        serializable: m.serializable || set.serializable,
                        unknown: set.unknown,
                    };
                    first = Some(merged);
                    fast.begin = merged.access;
                }
                _ => {
                    fast.read_only = false;
                    return Ok(fast);
                }
            },
            Verdict::SetTransaction(_) => {
                fast.read_only = false;
                return Ok(fast);
            }
        }
        index += 1;
    }
    if index == 0 {
        // Empty or only comments and semicolons: nothing to route to a replica.
        fast.read_only = false;
    }
    if let Some(m) = first {
        fast.read_only &= m.read_only();
    }
    Ok(fast)
}

impl<'a> Lexer<'a> {
    /// Reads one statement (trivia before it already skipped, or skipped here), up to and
    /// including its `;`. `None` at the end of the text. A `Write` verdict may return
    /// before the end of its statement: the caller stops there.
    fn next_statement(&mut self) -> Result<Option<Stmt>, Unterminated> {
        let mut t = self.next()?;
        while t == Tok::Punct(b';') {
            t = self.next()?;
        }
        if t == Tok::End {
            return Ok(None);
        }
        let start = self.tok_start;
        let mut st = Stmt { verdict: Verdict::Write, start, end: start, tokens: 1 };
        let mut buf = [0u8; 12];
        st.verdict = match upper(self.word(t), &mut buf) {
            _ if t == Tok::Punct(b'(') => self.rest(&mut st, Verdict::Parse, false)?,
            b"SELECT" | b"VALUES" | b"TABLE" | b"SHOW" => self.rest(&mut st, Verdict::Read, false)?,
            b"EXPLAIN" => self.rest(&mut st, Verdict::Read, true)?,
            b"WITH" => self.rest(&mut st, Verdict::Parse, false)?,
            b"COPY" => self.copy(&mut st)?,
            b"BEGIN" => Verdict::Begin(self.modes(&mut st, true)?),
            kw @ (b"START" | b"SET") => {
                if !self.eat(b"TRANSACTION")? {
                    return Ok(Some(st));
                }
                let mode = self.modes(&mut st, false)?;
                if kw == b"START" {
                    Verdict::Begin(mode)
                } else {
                    Verdict::SetTransaction(mode)
                }
            }
            b"COMMIT" | b"END" | b"ROLLBACK" | b"ABORT" | b"SAVEPOINT" | b"RELEASE" => {
                // COMMIT PREPARED / ROLLBACK PREPARED fail on a standby.
                let mut prepared = false;
                self.until_end(&mut st, |lx, t| prepared |= lx.is(t, b"PREPARED"))?;
                if prepared {
                    Verdict::Write
                } else {
                    Verdict::Read
                }
            }
            // INSERT, UPDATE, DELETE, MERGE, DDL, VACUUM, LOCK, CALL, DO, SET, … and anything
            // unknown.
            _ => Verdict::Write,
        };
        Ok(Some(st))
    }

    /// Reads tokens to the end of the statement, calling `f` on each; sets `st.end`.
    fn until_end(&mut self, st: &mut Stmt, mut f: impl FnMut(&Self, Tok)) -> Result<(), Unterminated> {
        loop {
            let t = self.next()?;
            match t {
                Tok::End | Tok::Punct(b';') => {
                    st.end = if t == Tok::End { self.b.len() } else { self.pos - 1 };
                    return Ok(());
                }
                _ => {
                    st.tokens += 1;
                    f(self, t);
                }
            }
        }
    }

    /// The rest of a SELECT-like statement: a read unless it has `(`, `INTO`, `FOR` or
    /// (for EXPLAIN) `ANALYZE` or `EXECUTE`, which only the parser can judge.
    fn rest(&mut self, st: &mut Stmt, v: Verdict, explain: bool) -> Result<Verdict, Unterminated> {
        let mut parse = v == Verdict::Parse;
        self.until_end(st, |lx, t| {
            parse |= match t {
                Tok::Punct(b'(') => true,
                Tok::Word(s, e) => {
                    let w = &lx.b[s..e];
                    match w.len() {
                        3 => w.eq_ignore_ascii_case(b"FOR"),
                        4 => w.eq_ignore_ascii_case(b"INTO"),
                        7 => {
                            explain
                                && (w.eq_ignore_ascii_case(b"ANALYZE")
                                    || w.eq_ignore_ascii_case(b"ANALYSE")
                                    || w.eq_ignore_ascii_case(b"EXECUTE"))
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        })?;
        Ok(if parse { Verdict::Parse } else { v })
    }

    /// `COPY (query) TO` → parser; `COPY t … TO STDOUT` → read; anything else → write.
    fn copy(&mut self, st: &mut Stmt) -> Result<Verdict, Unterminated> {
        let mut t = self.next()?;
        if t == Tok::Punct(b'(') {
            return self.rest(st, Verdict::Parse, false);
        }
        // Column names cannot be the reserved words FROM / TO unquoted, so the first of them
        // is the direction.
        loop {
            match t {
                Tok::End | Tok::Punct(b';') => return Ok(Verdict::Write),
                _ if self.is(t, b"FROM") => return Ok(Verdict::Write),
                _ if self.is(t, b"TO") => {
                    let target = self.next()?;
                    if !self.is(target, b"STDOUT") {
                        return Ok(Verdict::Write);
                    }
                    self.until_end(st, |_, _| {})?;
                    return Ok(Verdict::Read);
                }
                _ => t = self.next()?,
            }
        }
    }

    /// Transaction modes after `BEGIN [WORK | TRANSACTION]`, `START TRANSACTION` or
    /// `SET TRANSACTION`, in any order, commas optional; the last access mode wins.
    fn modes(&mut self, st: &mut Stmt, begin: bool) -> Result<Mode, Unterminated> {
        let mut m = Mode { access: Begin::Plain, serializable: false, unknown: false };
        let mut first = true;
        loop {
            let t = self.next()?;
            if matches!(t, Tok::End | Tok::Punct(b';')) {
                st.end = if t == Tok::End { self.b.len() } else { self.pos - 1 };
                return Ok(m);
            }
            st.tokens += 1;
            let ok = if self.is(t, b"READ") {
                if self.eat(b"ONLY")? {
                    m.access = Begin::ReadOnly;
                    true
                } else if self.eat(b"WRITE")? {
                    m.access = Begin::ReadWrite;
                    true
                } else {
                    false
                }
            } else if self.is(t, b"ISOLATION") {
                self.eat(b"LEVEL")?
                    && if self.eat(b"SERIALIZABLE")? {
                        m.serializable = true;
                        true
                    } else if self.eat(b"REPEATABLE")? {
                        self.eat(b"READ")?
                    } else if self.eat(b"READ")? {
                        self.eat(b"COMMITTED")? || self.eat(b"UNCOMMITTED")?
                    } else {
                        false
                    }
            } else if self.is(t, b"NOT") {
                self.eat(b"DEFERRABLE")?
            } else {
                t == Tok::Punct(b',')
                    || self.is(t, b"DEFERRABLE")
                    || (begin && first && (self.is(t, b"WORK") || self.is(t, b"TRANSACTION")))
            };
            m.unknown |= !ok;
            first = false;
        }
    }
}

/// The built-in read-only function allowlist.
///
/// Built-ins without side effects that also work on a hot standby (see the module docs);
/// SQL keywords `sqlparser` turns into calls (`CURRENT_TIMESTAMP`, `COALESCE`, `ARRAY(…)`)
/// are included. Never add anything that writes, uses a sequence, sets session state, takes
/// an advisory lock or needs the primary.
#[rustfmt::skip]
pub const DEFAULT_READ_ONLY_FUNCTIONS: &[&str] = &[
    // aggregates
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or", "every", "bit_and", "bit_or",
    "bit_xor", "json_agg", "jsonb_agg", "json_agg_strict", "jsonb_agg_strict", "json_object_agg", "jsonb_object_agg",
    "json_objectagg", "json_arrayagg", "xmlagg", "range_agg", "range_intersect_agg", "any_value", "stddev",
    "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy",
    "percentile_cont", "percentile_disc", "mode", "grouping",
    // window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value",
    "last_value", "nth_value",
    // strings and binary strings
    "lower", "upper", "length", "char_length", "character_length", "octet_length", "bit_length", "substr", "substring",
    "concat", "concat_ws", "format", "trim", "btrim", "ltrim", "rtrim", "replace", "split_part", "position", "strpos",
    "left", "right", "lpad", "rpad", "repeat", "reverse", "md5", "sha224", "sha256", "sha384", "sha512", "encode",
    "decode", "to_hex", "initcap", "regexp_replace", "regexp_matches", "regexp_match", "regexp_split_to_array",
    "regexp_split_to_table", "regexp_count", "regexp_instr", "regexp_like", "regexp_substr", "starts_with", "translate",
    "quote_ident", "quote_literal", "quote_nullable", "ascii", "chr", "convert_from", "convert_to", "normalize",
    "overlay", "unistr", "string_to_table", "parse_ident", "get_byte", "set_byte", "to_ascii", "digest", "hmac",
    "crypt", "gen_salt",
    // math
    "abs", "round", "floor", "ceil", "ceiling", "trunc", "mod", "div", "power", "pow", "sqrt", "cbrt", "exp", "ln",
    "log", "log10", "sign", "random", "random_normal", "greatest", "least", "width_bucket", "degrees", "radians", "pi",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "gcd", "lcm", "factorial", "scale",
    "min_scale", "trim_scale",
    // date and time
    "now", "current_timestamp", "current_date", "current_time", "localtime", "localtimestamp", "clock_timestamp",
    "statement_timestamp", "transaction_timestamp", "timeofday", "date_trunc", "date_part", "date_bin", "extract",
    "age", "to_char", "to_date", "to_timestamp", "to_number", "make_date", "make_time", "make_timestamp",
    "make_timestamptz", "make_interval", "justify_days", "justify_hours", "justify_interval", "isfinite", "timezone",
    "date_add", "date_subtract",
    // json and jsonb
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object", "jsonb_build_object",
    "json_build_array", "jsonb_build_array", "json_object", "jsonb_object", "json_array", "json_scalar",
    "json_serialize", "jsonb_set", "jsonb_set_lax", "jsonb_insert", "jsonb_extract_path", "jsonb_extract_path_text",
    "json_extract_path", "json_extract_path_text", "jsonb_array_elements", "jsonb_array_elements_text",
    "json_array_elements", "json_array_elements_text", "jsonb_each", "jsonb_each_text", "json_each", "json_each_text",
    "jsonb_object_keys", "json_object_keys", "jsonb_typeof", "json_typeof", "jsonb_array_length", "json_array_length",
    "jsonb_pretty", "jsonb_strip_nulls", "json_strip_nulls", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_first", "jsonb_path_exists", "jsonb_path_match", "jsonb_to_record", "jsonb_to_recordset",
    "json_to_record", "json_to_recordset", "jsonb_populate_record", "json_populate_record", "jsonb_populate_recordset",
    "json_populate_recordset",
    // arrays and ranges
    "array", "array_length", "array_position", "array_positions", "array_to_string", "string_to_array", "array_append",
    "array_prepend", "array_cat", "array_remove", "array_replace", "unnest", "cardinality", "array_upper",
    "array_lower", "array_ndims", "array_dims", "array_fill", "trim_array", "array_sample", "array_shuffle",
    "generate_series", "generate_subscripts", "isempty", "lower_inc", "upper_inc", "lower_inf", "upper_inf",
    "range_merge", "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange",
    // text search
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery", "websearch_to_tsquery", "ts_rank", "ts_rank_cd",
    "ts_headline", "setweight",
    // conversions written as calls
    "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar", "bool", "date",
    // conditionals, rows
    "coalesce", "nullif", "num_nulls", "num_nonnulls", "row", "exists",
    // system information that works on a standby
    "pg_is_in_recovery", "pg_last_wal_replay_lsn", "pg_last_wal_receive_lsn", "pg_last_xact_replay_timestamp",
    "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state", "pg_wal_lsn_diff", "version", "current_setting",
    "current_database", "current_catalog", "current_schema", "current_schemas", "current_user", "current_role",
    "session_user", "system_user", "user", "pg_backend_pid", "inet_server_addr", "inet_server_port", "inet_client_addr",
    "inet_client_port", "pg_postmaster_start_time", "pg_conf_load_time", "pg_typeof", "pg_column_size",
    "pg_size_pretty", "pg_size_bytes", "pg_database_size", "pg_relation_size", "pg_total_relation_size",
    "pg_table_size", "pg_indexes_size", "has_table_privilege", "has_schema_privilege", "has_database_privilege",
    "has_column_privilege", "has_function_privilege", "has_sequence_privilege", "pg_has_role", "pg_get_userbyid",
    "obj_description", "col_description", "shobj_description", "format_type", "pg_get_expr", "pg_get_indexdef",
    "pg_get_constraintdef", "pg_get_viewdef", "pg_get_functiondef", "pg_get_function_arguments",
    "pg_get_function_result", "pg_get_triggerdef", "pg_get_ruledef", "pg_get_serial_sequence", "to_regclass",
    "to_regtype", "to_regproc", "to_regprocedure", "to_regnamespace", "to_regrole", "pg_table_is_visible",
    "pg_type_is_visible", "pg_function_is_visible", "pg_encoding_to_char", "pg_client_encoding",
    "pg_tablespace_location", "pg_sleep", "gen_random_uuid", "uuid_generate_v4", "uuidv4", "uuidv7",
];
