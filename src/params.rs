//! Session parameters a client may set, and that pgsluice keeps consistent across the server
//! connections it lends the client.
//!
//! # What is tracked
//! PgBouncer's built-in set ([`TRACKED`]: client_encoding, DateStyle, TimeZone, IntervalStyle,
//! standard_conforming_strings, application_name) plus the names listed in
//! `track_extra_parameters` ([`Tracked`]). A client sets them in its startup packet, either as
//! parameters of their own or inside `options` (`-c name=value`, see [`parse_options`]).
//!
//! # Reported and unreported parameters
//! - A parameter the server *reports* (ParameterStatus; the built-in six, and e.g.
//!   `default_transaction_read_only` since PostgreSQL 14) is learned from the server: its
//!   value at login fills in what the client did not choose, and a later `SET` by the client
//!   comes back as ParameterStatus ([`ClientParams::observe`]) and follows the client.
//! - A parameter the server does *not* report (e.g. `search_path` before PostgreSQL 18,
//!   `statement_timeout`) is known only from the startup packet. A client that did not set it
//!   wants the server default, so a server connection last set to another client's value gets
//!   `RESET`. Since the server does not report these either, the session records what it set
//!   in the server connection's parameter list ([`ClientParams::record_synced`]). There,
//!   an absent name means "server default" and [`UNKNOWN`] means "may hold anything" (after
//!   `server_reset_query`, see [`ClientParams::forget_unreported`]). A `SET` of such a
//!   parameter inside a session is invisible to pgsluice and stays on the server connection.
//!
//! # RESET
//! PostgreSQL's reset value of a parameter is the startup packet's, and a server connection's
//! startup packet is pgsluice's. The login set marks the values the client chose at startup
//! ([`ClientParams::startup_value`]); the exchange notes a `RESET` of one
//! ([`ClientParams::note_reset`]) and sets it again right after the request
//! ([`ClientParams::restore_sql`]). A client's set keeps its login set (one pointer) once a
//! chosen value changes, so the startup values stay known without a copy per client.
//!
//! # Cost
//! A client's wanted values are an immutable, shared [`ParamSet`] (`Arc`, copy-on-write):
//! clients with identical settings share one allocation (interned per pool), and a server
//! connection remembers the set it was last brought to, so the per-transaction check is one
//! pointer comparison and allocates nothing. Only on a mismatch are values compared, and one
//! query (`SELECT pg_catalog.set_config(…)` and/or `RESET …`) is sent.
//!
//! # Invariants
//! - After login ([`ClientParams::complete_login`]) a client's set names every tracked
//!   parameter: with a value if the client chose one or the server reports it, as "server
//!   default" otherwise. Entries are sorted by name, so equal settings intern to one set.
//! - Names are kept in canonical spelling (the built-in ones as the server spells them,
//!   extra ones in lower case) and compared ASCII-case-insensitively.
//! - Names that reach SQL come only from [`TRACKED`] or from validated configuration
//!   ([`validate_extra_name`]), never from a client; values are always quoted literals.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

/// Parameters tracked per client, as the server spells them in ParameterStatus.
pub const TRACKED: [&str; 6] =
    ["client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings", "application_name"];

/// The value recorded in a server connection's parameter list for an unreported parameter
/// whose value is unknown. Protocol strings cannot contain NUL, so no client value equals it.
pub const UNKNOWN: &str = "\0unknown";

/// Names that may not be listed in `track_extra_parameters`: startup keys with their own
/// meaning, and `all` (which would turn `RESET name` into `RESET ALL`).
const RESERVED: [&str; 5] = ["user", "database", "options", "replication", "all"];

/// The canonical spelling of a built-in tracked parameter name (startup keys are
/// case-insensitive).
pub fn canonical(name: &str) -> Option<&'static str> {
    TRACKED.iter().copied().find(|t| t.eq_ignore_ascii_case(name))
}

/// Checks a `track_extra_parameters` entry: a (possibly dotted, as in `myext.setting`)
/// identifier, not a reserved startup key.
pub fn validate_extra_name(name: &str) -> Result<(), String> {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if name.is_empty() {
        return Err("names must not be empty".into());
    }
    if !name.split('.').all(ident) {
        return Err(format!("{name:?} is not a parameter name (letters, digits, _ and $, dot-separated)"));
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!("{name:?} cannot be tracked"));
    }
    Ok(())
}

// === impl ParamName ===

/// The name of a tracked parameter, in canonical spelling. Cloning never allocates.
#[derive(Clone)]
pub struct ParamName(NameRepr);

#[derive(Clone)]
enum NameRepr {
    Builtin(&'static str),
    Extra(Arc<str>),
}

impl ParamName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            NameRepr::Builtin(s) => s,
            NameRepr::Extra(s) => s,
        }
    }

    /// Whether this is one of the built-in [`TRACKED`] names.
    pub fn is_builtin(&self) -> bool {
        matches!(self.0, NameRepr::Builtin(_))
    }

    fn is(&self, other: &str) -> bool {
        self.as_str().eq_ignore_ascii_case(other)
    }
}

impl From<&'static str> for ParamName {
    /// A built-in name (use [`canonical`] first for client input).
    fn from(s: &'static str) -> Self {
        ParamName(NameRepr::Builtin(s))
    }
}

impl PartialEq for ParamName {
    fn eq(&self, other: &Self) -> bool {
        self.is(other.as_str())
    }
}

impl Eq for ParamName {}

impl fmt::Debug for ParamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ParamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Tracked ===

/// The set of tracked parameter names: [`TRACKED`] plus `track_extra_parameters`. Built once
/// per configuration.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    extra: Vec<ParamName>,
}

impl Tracked {
    /// From `track_extra_parameters` (already validated). Built-in names and duplicates are
    /// dropped, the others lower-cased.
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Tracked {
        let mut t = Tracked::default();
        for name in extra.iter().map(AsRef::as_ref) {
            if canonical(name).is_none() && t.lookup(name).is_none() {
                t.extra.push(ParamName(NameRepr::Extra(name.to_ascii_lowercase().into())));
            }
        }
        t
    }

    /// The canonical name if `name` (any case) is tracked.
    pub fn lookup(&self, name: &str) -> Option<ParamName> {
        match canonical(name) {
            Some(c) => Some(ParamName::from(c)),
            None => self.extra.iter().find(|n| n.is(name)).cloned(),
        }
    }

    /// The names tracked beyond the built-in six, in canonical spelling.
    pub fn extra(&self) -> &[ParamName] {
        &self.extra
    }

    fn all(&self) -> impl Iterator<Item = ParamName> + '_ {
        TRACKED.iter().map(|&n| ParamName::from(n)).chain(self.extra.iter().cloned())
    }
}

// === impl ParamSet ===

/// Values of tracked parameters one or more clients want.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParamSet {
    entries: Vec<Entry>,
    /// Some entry was chosen at startup (a `RESET` of it must give the client's value).
    restorable: bool,
    /// The set as it was at login, once a chosen value changed: the startup values.
    login: Option<Arc<ParamSet>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: ParamName,
    /// `None`: the server default (only for parameters the server does not report).
    value: Option<Box<str>>,
    /// Whether the server reports this parameter (ParameterStatus).
    reported: bool,
    /// The client chose it at startup (its reset value is the client's, not the server's).
    chosen: bool,
}

impl ParamSet {
    /// The value for `name`, if one is set (`None` also for "server default").
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(name).and_then(|e| e.value.as_deref())
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name.is(name))
    }

    fn put(&mut self, name: ParamName, value: Option<&str>, reported: bool) {
        match self.entries.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.value = value.map(Into::into);
                e.reported = reported;
            }
            None => self.entries.push(Entry { name, value: value.map(Into::into), reported, chosen: false }),
        }
    }

    /// The value the client chose at startup for `name`, if it chose one.
    fn chosen(&self, name: &str) -> Option<&Entry> {
        self.find(name).filter(|e| e.chosen && e.value.is_some())
    }
}

// === impl ClientParams ===

/// One client's wanted values.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    set: Arc<ParamSet>,
}

impl ClientParams {
    /// Sets a tracked parameter (copy-on-write: a shared set is cloned first).
    pub fn set(&mut self, name: impl Into<ParamName>, value: &str) {
        let name = name.into();
        let reported = self.set.find(name.as_str()).map_or(name.is_builtin(), |e| e.reported);
        self.put(name, Some(value), reported);
    }

    fn put(&mut self, name: ParamName, value: Option<&str>, reported: bool) {
        let unchanged =
            self.set.find(name.as_str()).is_some_and(|e| e.value.as_deref() == value && e.reported == reported);
        if !unchanged {
            if self.set.restorable && self.set.login.is_none() {
                // The first change after login: the login set (shared, interned) keeps the
                // startup values, at the cost of a pointer.
                let login = self.set.clone();
                Arc::make_mut(&mut self.set).login = Some(login);
            }
            Arc::make_mut(&mut self.set).put(name, value, reported);
        }
    }

    /// Records a ParameterStatus the server sent while this client held it: a tracked
    /// parameter the client changed with `SET` follows it to its next server. Parameters
    /// that are neither built-in nor in this client's set are not tracked and are ignored.
    pub fn observe(&mut self, name: &str, value: &str) {
        let name = match canonical(name) {
            Some(c) => ParamName::from(c),
            None => match self.set.find(name) {
                Some(e) => e.name.clone(),
                None => return,
            },
        };
        self.put(name, Some(value), true);
    }

    /// The value the client wants for `name`, if it is not the server default.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.set.get(name)
    }

    /// Completes the set at login, given the parameters the pool's servers report: every
    /// tracked parameter the client did not choose takes the reported value, or "server
    /// default" if the server does not report it. Then sorts the set (for interning).
    pub fn complete_login(&mut self, tracked: &Tracked, server_params: &[(String, String)]) {
        let set = Arc::make_mut(&mut self.set);
        for e in &mut set.entries {
            e.chosen = true;
            set.restorable |= e.value.is_some();
        }
        for name in tracked.all() {
            let reported = lookup(server_params, name.as_str());
            match set.entries.iter_mut().find(|e| e.name == name) {
                Some(e) => e.reported = reported.is_some(),
                None => set.entries.push(Entry {
                    name,
                    value: reported.map(Into::into),
                    reported: reported.is_some(),
                    chosen: false,
                }),
            }
        }
        let folded = |e: &Entry| e.name.as_str().bytes().map(|b| b.to_ascii_lowercase()).collect::<Vec<u8>>();
        set.entries.sort_by_cached_key(folded);
    }

    /// Shares an identical set already in use by another client of `interner`.
    pub fn intern(&mut self, interner: &Interner) {
        let mut sets = interner.0.lock();
        if let Some(s) = sets.iter().find(|s| ***s == *self.set) {
            self.set = s.clone();
        } else if sets.len() < Interner::MAX {
            sets.push(self.set.clone());
        }
    }

    /// Whether the client chose any tracked value at startup (only then can a `RESET`
    /// differ from the server's).
    #[inline]
    pub fn has_startup(&self) -> bool {
        self.set.restorable
    }

    /// The set as it was at login.
    fn login(&self) -> &ParamSet {
        self.set.login.as_deref().unwrap_or(&self.set)
    }

    /// The value the client chose at startup for `name` (its reset value), if it chose one.
    pub fn startup_value(&self, name: &str) -> Option<&str> {
        self.login().chosen(name).and_then(|e| e.value.as_deref())
    }

    /// Applies a statement's effect on tracked parameters to `restore`, the names whose
    /// startup value must be set again after a `RESET` (PostgreSQL's reset value is the
    /// startup packet's, a server connection's is pgsluice's): `RESET name`, `SET name TO
    /// DEFAULT` add `name` if the client chose it at startup, `RESET ALL` (and `DISCARD ALL`)
    /// every name it chose, and a later `SET name` removes it again.
    pub fn note_reset(&self, effect: crate::sql::session_state::ParamEffect<'_>, restore: &mut Vec<ParamName>) {
        use crate::sql::session_state::ParamEffect;
        if !self.set.restorable {
            return;
        }
        let startup = self.login();
        match effect {
            ParamEffect::ResetAll => {
                for e in startup.entries.iter().filter(|e| e.chosen && e.value.is_some()) {
                    if !restore.contains(&e.name) {
                        restore.push(e.name.clone());
                    }
                }
            }
            ParamEffect::Reset(name) => {
                if let Some(e) = startup.chosen(name) {
                    if !restore.contains(&e.name) {
                        restore.push(e.name.clone());
                    }
                }
            }
            ParamEffect::Set(name) => restore.retain(|n| !n.is(name)),
        }
    }

    /// The query that sets `names` back to this client's startup values, or `None` if there
    /// is none. Each is set (`pg_catalog.set_config(…, false)`) only if the server's value
    /// does not come from the session (`pg_settings.source`): a `RESET` that failed with its
    /// Query, or a `SET` after it, leaves the value alone.
    pub fn restore_sql(&self, names: &[ParamName]) -> Option<String> {
        let mut values = String::new();
        for name in names {
            let Some(v) = self.startup_value(name.as_str()) else { continue };
            values.push_str(if values.is_empty() { "(" } else { ", (" });
            push_literal(&mut values, name.as_str());
            values.push_str(", ");
            push_literal(&mut values, v);
            values.push(')');
        }
        if values.is_empty() {
            return None;
        }
        Some(format!(
            "SELECT pg_catalog.set_config(v.n, v.v, false) FROM (VALUES {values}) AS v(n, v) WHERE NOT EXISTS \
             (SELECT FROM pg_catalog.pg_settings s WHERE pg_catalog.lower(s.name) = pg_catalog.lower(v.n) \
             AND s.source = 'session')"
        ))
    }

    /// Whether the server reports `name` (ParameterStatus), as far as this client's set
    /// knows.
    pub fn is_reported(&self, name: &str) -> bool {
        self.set.find(name).map_or(canonical(name).is_some(), |e| e.reported)
    }

    /// The query that brings a server (parameter list `server_params`, last synced to
    /// `synced`) to this client's values, or `None` when it already matches. Parameters with
    /// a value are set with `set_config` (which, like the startup packet, takes the raw
    /// string: `search_path = 'a, b'` is two schemas), "server default" ones are `RESET`.
    ///
    /// After the query succeeded, call [`ClientParams::record_synced`].
    pub fn sync_sql(&self, server_params: &[(String, String)], synced: Option<&Arc<ParamSet>>) -> Option<String> {
        if synced.is_some_and(|s| Arc::ptr_eq(s, &self.set)) {
            return None;
        }
        let mut sets = String::new();
        let mut resets = String::new();
        for e in &self.set.entries {
            let current = lookup(server_params, e.name.as_str());
            match &e.value {
                Some(v) if current != Some(&**v) => {
                    sets.push_str(if sets.is_empty() { "SELECT " } else { ", " });
                    sets.push_str("pg_catalog.set_config(");
                    push_literal(&mut sets, e.name.as_str());
                    sets.push_str(", ");
                    push_literal(&mut sets, v);
                    sets.push_str(", false)");
                }
                None if current.is_some() => {
                    resets.push_str("RESET ");
                    resets.push_str(e.name.as_str());
                    resets.push(';');
                }
                _ => {}
            }
        }
        if sets.is_empty() && resets.is_empty() {
            return None;
        }
        if !sets.is_empty() {
            sets.push(';');
        }
        sets.push_str(&resets);
        Some(sets)
    }

    /// Records in a server's parameter list what a successful [`ClientParams::sync_sql`]
    /// query did: the values set, and "server default" (no entry) for the parameters reset.
    /// Without this, the next sync could not know that an unreported parameter (which no
    /// ParameterStatus reveals) now holds this client's value.
    pub fn record_synced(&self, server_params: &mut Vec<(String, String)>) {
        for e in &self.set.entries {
            match &e.value {
                Some(v) => put(server_params, e.name.as_str(), v),
                None => server_params.retain(|(k, _)| !e.name.is(k)),
            }
        }
    }

    /// Marks every unreported tracked parameter of a server as [`UNKNOWN`] and clears its
    /// `synced` set, so that the next client's sync sets or resets them all. For after
    /// `server_reset_query` (e.g. `DISCARD ALL` resets them without any ParameterStatus).
    pub fn forget_unreported(&self, server_params: &mut Vec<(String, String)>, synced: &mut Option<Arc<ParamSet>>) {
        for e in self.set.entries.iter().filter(|e| !e.reported) {
            put(server_params, e.name.as_str(), UNKNOWN);
        }
        *synced = None;
    }

    /// Whether `other` is this client's current set (pointer equality).
    pub fn is_same(&self, other: &Arc<ParamSet>) -> bool {
        Arc::ptr_eq(&self.set, other)
    }

    /// The shared set, to remember on the server connection after syncing.
    pub fn shared(&self) -> Arc<ParamSet> {
        self.set.clone()
    }
}

/// The value of `name` in a server parameter list.
fn lookup<'a>(server_params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    server_params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Sets `name` in a server parameter list (no allocation when it is there and the value fits).
fn put(server_params: &mut Vec<(String, String)>, name: &str, value: &str) {
    match server_params.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
        Some((_, v)) => {
            if v != value {
                v.clear();
                v.push_str(value);
            }
        }
        None => server_params.push((name.to_string(), value.to_string())),
    }
}

/// Appends `s` as an `E''` literal, which reads the same whatever
/// `standard_conforming_strings` is on the server.
fn push_literal(sql: &mut String, s: &str) {
    sql.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => sql.push_str("\\\\"),
            '\'' => sql.push_str("''"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

// === impl Interner ===

/// A small per-pool cache of parameter sets, so identical clients share one.
#[derive(Default)]
pub struct Interner(Mutex<Vec<Arc<ParamSet>>>);

impl Interner {
    const MAX: usize = 64;
}

// === options ===

/// One item of the `options` startup parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupOption {
    /// `-c name=value`, `-cname=value` or `--name=value`. As in PostgreSQL, dashes in the
    /// name are read as underscores (`--search-path=x` sets `search_path`).
    Set {
        /// Parameter name (not yet checked against the tracked set).
        name: String,
        /// Its value, unescaped.
        value: String,
    },
    /// Any other argument (another server switch, or `-c` without `name=value`).
    Unsupported(String),
}

/// Parses the `options` startup parameter (libpq `options`, `PGOPTIONS`) the way PostgreSQL
/// does (`pg_split_opts`, then `-c`/`--` switches): arguments are separated by whitespace,
/// and a backslash makes the next character literal (`\ ` is a space, `\\` a backslash).
/// Never fails: anything it does not understand comes back as
/// [`StartupOption::Unsupported`].
pub fn parse_options(options: &str) -> Vec<StartupOption> {
    let mut out = Vec::new();
    let mut args = split_options(options).into_iter();
    while let Some(arg) = args.next() {
        let setting = if arg == "-c" {
            match args.next() {
                Some(next) => next,
                None => {
                    out.push(StartupOption::Unsupported(arg));
                    continue;
                }
            }
        } else if let Some(rest) = arg.strip_prefix("--").or_else(|| arg.strip_prefix("-c")) {
            rest.to_string()
        } else {
            out.push(StartupOption::Unsupported(arg));
            continue;
        };
        match setting.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                out.push(StartupOption::Set { name: name.replace('-', "_"), value: value.to_string() })
            }
            _ => out.push(StartupOption::Unsupported(arg)),
        }
    }
    out
}

/// Splits `options` into arguments (PostgreSQL's `pg_split_opts`).
fn split_options(options: &str) -> Vec<String> {
    // C `isspace` in the C locale.
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r');
    let mut args = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|&c| space(c)).is_some() {}
        if chars.peek().is_none() {
            return args;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next_if(|&c| !space(c)) {
            if c == '\\' {
                // A trailing lone backslash is dropped, as in PostgreSQL.
                if let Some(escaped) = chars.next() {
                    arg.push(escaped);
                }
            } else {
                arg.push(c);
            }
        }
        args.push(arg);
    }
}

/// Records a ParameterStatus value in a server's parameter list (no allocation when the
/// parameter is known and its value fits).
pub fn set_param(params: &mut Vec<(String, String)>, name: &str, value: &str) {
    match params.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => {
            if v != value {
                v.clear();
                v.push_str(value);
            }
        }
        None => params.push((name.to_string(), value.to_string())),
    }
}

#[cfg(test)]
mod tests;
