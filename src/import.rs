//! `pgsluice import-pgbouncer`: turns a `pgbouncer.ini` (and its `%include`s) into an
//! equivalent pgsluice TOML config.
//!
//! - [`ini`] reads the file the way PgBouncer does and keeps each line's origin.
//! - [`table`] says what becomes of every PgBouncer 1.25 setting: a pgsluice key, nothing to
//!   set (pgsluice always behaves as the value says), or dropped with a reason.
//! - [`value`] converts values (seconds, `0`/`1`, comma lists, paths, octal modes).
//! - [`write`] renders the TOML, each key preceded by a comment naming its origin.
//!
//! Invariants: every `key = value` read (each connection-string pair counted) yields exactly
//! one [`Entry`] with a [`Fate`], so nothing is ignored silently; a [`Fate::Dropped`] always
//! carries a reason; no password appears in an entry's shown value, a comment or a
//! message. The output is validated with [`Config::from_str`] (what `check-config` does)
//! before anyone is told it is fine. Where PgBouncer's default differs from pgsluice's and
//! pgsluice can express it (`pool_mode`, `auth_type`, `ignore_startup_parameters`,
//! `unix_socket_dir`, `client_tls_sslmode`), the PgBouncer default is written explicitly.
//!
//! Exit codes of [`run`]: 0 = written, everything imported; 2 = written, valid, some settings
//! not imported (each printed to stderr with its reason); 1 = error (unreadable or malformed
//! input, or output that does not pass `check-config`; in the last case the file is still
//! written, for editing).

pub mod ini;
pub mod table;
pub mod value;
mod write;

use std::path::{Path, PathBuf};

use crate::config::Config;
use ini::{IniError, Line, Origin};
use table::{Kind, Rule};
use value::PathCtx;

/// What became of one setting read from the ini.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Written to the output under this key (`general.pool_mode`, `databases.app.hosts`…).
    Mapped(String),
    /// Nothing to write: pgsluice behaves this way anyway (or a later line wins); the reason.
    Same(String),
    /// Not imported; the reason.
    Dropped(String),
}

/// One `key = value` (or connection-string pair) of the ini.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it was read.
    pub origin: Origin,
    /// `pgbouncer`, `databases.NAME`, `users.NAME`, or the section name for a whole line of
    /// `[databases]`/`[users]`/`[peers]` (then `key` is the name).
    pub section: String,
    /// The setting.
    pub key: String,
    /// Its value as read; `<redacted>` for passwords.
    pub value: String,
    /// What became of it.
    pub fate: Fate,
}

/// The result of an import.
#[derive(Debug)]
pub struct Import {
    /// The TOML text.
    pub toml: String,
    /// Every setting read, in order.
    pub entries: Vec<Entry>,
    /// Differences the reader should know about that are not dropped settings.
    pub notes: Vec<String>,
}

impl Import {
    /// The settings that were not imported.
    pub fn dropped(&self) -> impl Iterator<Item = (&Entry, &str)> {
        self.entries.iter().filter_map(|e| match &e.fate {
            Fate::Dropped(why) => Some((e, why.as_str())),
            _ => None,
        })
    }
}

/// An import that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The ini (or an include) cannot be read or parsed.
    #[error(transparent)]
    Ini(#[from] IniError),
    /// A line PgBouncer itself would refuse.
    #[error("{place}: {message}")]
    Line {
        /// `file:line`.
        place: String,
        /// What is wrong.
        message: String,
    },
}

/// Imports `ini`. `userlist` replaces the ini's `auth_file`; `out` is where the TOML will be
/// written (paths inside its directory are written relative to it).
pub fn import(ini: &Path, userlist: Option<&Path>, out: Option<&Path>) -> Result<Import, ImportError> {
    let lines = ini::read(ini)?;
    let out_dir = out.map(|o| {
        let dir = o.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir().unwrap_or_default().join(dir)
        }
    });
    let mut b = Builder { out_dir, ..Builder::default() };
    for l in lines.iter().filter(|l| l.section == "pgbouncer") {
        b.general_line(l);
    }
    b.pgbouncer_defaults(&lines, userlist);
    for l in &lines {
        match l.section.as_str() {
            "pgbouncer" => {}
            "databases" => b.database_line(l)?,
            "users" => b.user_line(l)?,
            "peers" => b.peer_line(l)?,
            other => {
                let why = format!("[{other}] is not a PgBouncer section");
                b.push(l, other, &l.key, &l.value, Fate::Dropped(why));
            }
        }
    }
    let source = ini.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let toml = write::render(&b, &source);
    Ok(Import { toml, entries: b.entries, notes: b.notes })
}

/// The port of a `[peers]` entry that names none (PgBouncer's default `listen_port`).
const PGBOUNCER_PEER_PORT: u16 = 6432;
/// The largest `[peers]` name PgBouncer's loader accepts (`strtonum(name, 1, 0xFFFF)`).
const PGBOUNCER_MAX_PEER_NAME: u32 = 0xFFFF;

/// One key of an output section.
struct Item {
    key: String,
    value: toml::Value,
    /// What the comment line above it says.
    comment: String,
    /// The entry it came from, if any (a later duplicate marks it superseded).
    entry: Option<usize>,
}

/// An output section: keys in order of first appearance, a later one replacing an earlier.
#[derive(Default)]
struct Section {
    items: Vec<Item>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&toml::Value> {
        self.items.iter().find(|i| i.key == key).map(|i| &i.value)
    }

    /// Sets `item`; returns the entry it replaces, if any.
    fn set(&mut self, item: Item) -> Option<usize> {
        match self.items.iter_mut().find(|i| i.key == item.key) {
            Some(old) => std::mem::replace(old, item).entry,
            None => {
                self.items.push(item);
                None
            }
        }
    }
}

/// A `[databases.NAME]`, `[users.NAME]` or `[peers.N]` to write.
struct Named {
    name: String,
    comment: String,
    section: Section,
}

#[derive(Default)]
struct Builder {
    out_dir: Option<PathBuf>,
    entries: Vec<Entry>,
    general: Section,
    tls: Section,
    databases: Vec<Named>,
    users: Vec<Named>,
    /// `[peers.N]` sections, each with the entries its line made (a later line for the same
    /// id marks them superseded).
    peers: Vec<(Named, std::ops::Range<usize>)>,
    notes: Vec<String>,
}

impl Builder {
    fn push(&mut self, l: &Line, section: &str, key: &str, value: &str, fate: Fate) -> usize {
        let value = if key == "password" || key == "auth_ldap_options" { "<redacted>" } else { value };
        self.entries.push(Entry {
            origin: l.origin.clone(),
            section: section.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            fate,
        });
        self.entries.len() - 1
    }

    fn ctx<'a>(&'a self, l: &'a Line) -> PathCtx<'a> {
        PathCtx { from: &l.dir, out: self.out_dir.as_deref() }
    }

    /// Sets a key of `[general]` or `[tls]` from line `l`.
    fn set_global(&mut self, tls: bool, target: &str, kind: Kind, l: &Line) {
        let fate = match value::convert(kind, &l.value, &self.ctx(l)) {
            Ok(v) => {
                let at = self.entries.len();
                let item =
                    Item { key: target.into(), value: v, comment: format!("{} {}", l.origin, l.key), entry: Some(at) };
                let replaced = if tls { self.tls.set(item) } else { self.general.set(item) };
                if let Some(old) = replaced {
                    self.entries[old].fate =
                        Fate::Same(format!("superseded by {} (the last line wins, as in PgBouncer)", l.origin));
                }
                Fate::Mapped(format!("{}.{target}", if tls { "tls" } else { "general" }))
            }
            Err(why) => Fate::Dropped(why),
        };
        self.push(l, "pgbouncer", &l.key, &l.value, fate);
    }

    fn general_line(&mut self, l: &Line) {
        let fate = match table::rule(table::PGBOUNCER, &l.key) {
            Some(Rule::Key(target, kind)) => return self.set_global(false, target, kind, l),
            Some(Rule::Tls(target, kind)) => return self.set_global(true, target, kind, l),
            Some(Rule::Fixed(values, why)) if table::matches_fixed(values, &l.value) => Fate::Same(why.into()),
            Some(Rule::Fixed(_, why) | Rule::Drop(why)) => Fate::Dropped(why.into()),
            None => Fate::Dropped("not a PgBouncer 1.25 setting".into()),
        };
        self.push(l, "pgbouncer", &l.key, &l.value, fate);
    }

    /// PgBouncer defaults that differ from pgsluice's, written out; `--userlist`; the
    /// `[tls]` section's completeness.
    fn pgbouncer_defaults(&mut self, lines: &[Line], userlist: Option<&Path>) {
        let set_in_ini = |key: &str| lines.iter().any(|l| l.section == "pgbouncer" && l.key == key);
        use toml::Value as V;
        let defaults: [(&str, V, &str); 4] = [
            ("pool_mode", V::String("session".into()), "pgsluice's own default is transaction"),
            ("auth_type", V::String("md5".into()), "pgsluice's own default is scram-sha-256"),
            ("ignore_startup_parameters", V::Array(vec![]), "pgsluice's own default is [\"extra_float_digits\"]"),
            ("unix_socket_dir", V::String("/tmp".into()), "pgsluice's own default is \"\", no Unix socket"),
        ];
        for (key, value, why) in defaults {
            if !set_in_ini(key) {
                let comment = format!("PgBouncer's default ({key} is not set in the ini; {why})");
                self.general.set(Item { key: key.into(), value, comment, entry: None });
            }
        }
        if !set_in_ini("listen_addr") {
            self.notes.push(
                "listen_addr is not set: PgBouncer then listens on its Unix socket only; pgsluice always listens on \
                 TCP too (default 127.0.0.1)"
                    .into(),
            );
        }
        if let Some(u) = userlist {
            let cwd = std::env::current_dir().unwrap_or_default();
            let path = value::path(&u.display().to_string(), &PathCtx { from: &cwd, out: self.out_dir.as_deref() });
            let comment = format!("--userlist {}", u.display());
            if let Some(old) =
                self.general.set(Item { key: "auth_file".into(), value: V::String(path), comment, entry: None })
            {
                self.entries[old].fate = Fate::Same(format!("replaced by --userlist {}", u.display()));
            }
        }
        // pgsluice's [tls] needs both files; without them client TLS is off.
        if !self.tls.items.is_empty() && (self.tls.get("cert_file").is_none() || self.tls.get("key_file").is_none()) {
            let off = self.tls.get("client_tls_sslmode").and_then(V::as_str).is_none_or(|m| m == "disable");
            for item in std::mem::take(&mut self.tls.items) {
                if let Some(e) = item.entry {
                    self.entries[e].fate = if off {
                        Fate::Same("client TLS is off, so pgsluice needs no [tls] section".into())
                    } else {
                        Fate::Dropped("client TLS needs both client_tls_key_file and client_tls_cert_file".into())
                    };
                }
            }
        } else if !self.tls.items.is_empty() && self.tls.get("client_tls_sslmode").is_none() {
            let comment = "PgBouncer's default (client_tls_sslmode is not set in the ini; pgsluice's own default with \
                           [tls] is prefer)";
            self.tls.set(Item {
                key: "client_tls_sslmode".into(),
                value: V::String("disable".into()),
                comment: comment.into(),
                entry: None,
            });
        }
    }

    /// Converts one connection-string pair by `rule` into `section`.
    fn pair(&mut self, l: &Line, sect: &str, (k, v): (&str, &str), rule: Option<Rule>, into: &mut Section) {
        let fate = match rule {
            Some(Rule::Key(target, kind)) => match value::convert(kind, v, &self.ctx(l)) {
                Ok(value) => {
                    let (comment, at) = (format!("{} {k}", l.origin), self.entries.len());
                    if let Some(old) = into.set(Item { key: target.into(), value, comment, entry: Some(at) }) {
                        self.entries[old].fate = Fate::Same(format!("superseded by a later {k} on the same line"));
                    }
                    Fate::Mapped(format!("{sect}.{target}"))
                }
                Err(why) => Fate::Dropped(why),
            },
            Some(Rule::Fixed(values, why)) if table::matches_fixed(values, v) => Fate::Same(why.into()),
            Some(Rule::Fixed(_, why) | Rule::Drop(why)) => Fate::Dropped(why.into()),
            Some(Rule::Tls(..)) | None => Fate::Dropped("not a PgBouncer 1.25 parameter here".into()),
        };
        self.push(l, sect, k, v, fate);
    }

    fn pairs(l: &Line) -> Result<Vec<(String, String)>, ImportError> {
        ini::connstr(&l.value).map_err(|message| ImportError::Line { place: l.origin.to_string(), message })
    }

    fn database_line(&mut self, l: &Line) -> Result<(), ImportError> {
        let pairs = Self::pairs(l)?;
        let sect = format!("databases.{}", l.key);
        let refuse = |b: &mut Builder, why: String| {
            b.push(l, "databases", &l.key, "", Fate::Dropped(why.clone()));
            for (k, v) in &pairs {
                b.push(l, &sect, k, v, Fate::Dropped(format!("database {} not imported: {why}", l.key)));
            }
        };
        if l.key == "*" {
            refuse(self, "pgsluice has no `*` fallback database yet: add a [databases.NAME] per database".into());
            return Ok(());
        }
        if l.key == "pgbouncer" {
            refuse(self, "the name is the admin console's (PgBouncer refuses it too)".into());
            return Ok(());
        }
        let last = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let port = match last("port") {
            None => 5432,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| ImportError::Line {
                place: l.origin.to_string(),
                message: format!("database {}: invalid port {p:?}", l.key),
            })?,
        };
        let unix_dir = self.general.get("unix_socket_dir").and_then(toml::Value::as_str).unwrap_or("/tmp").to_string();
        let host_spec = last("host").map(str::to_string);
        let hosts: Vec<String> = match &host_spec {
            Some(h) => h.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect(),
            None if unix_dir.is_empty() => {
                refuse(self, "it names no host, and unix_socket_dir is empty (no Unix socket to use)".into());
                return Ok(());
            }
            None => vec![unix_dir.clone()],
        };
        if let Some(h) = hosts.iter().find(|h| h.starts_with('@')) {
            refuse(self, format!("host {h}: pgsluice has no abstract-namespace Unix sockets"));
            return Ok(());
        }
        if hosts.is_empty() {
            refuse(self, "its host list is empty".into());
            return Ok(());
        }
        self.push(l, "databases", &l.key, "", Fate::Mapped(sect.clone()));
        let mut section = Section::default();
        let addrs: Vec<toml::Value> = hosts
            .iter()
            .map(|h| {
                toml::Value::String(if h.contains(':') && !h.starts_with('/') {
                    format!("[{h}]:{port}")
                } else {
                    format!("{h}:{port}")
                })
            })
            .collect();
        let hosts_comment = match &host_spec {
            Some(_) => format!("{} host, port", l.origin),
            None => format!("{} no host: PgBouncer's Unix socket in unix_socket_dir", l.origin),
        };
        section.set(Item {
            key: "hosts".into(),
            value: toml::Value::Array(addrs),
            comment: hosts_comment,
            entry: None,
        });
        if hosts.len() > 1 {
            self.notes.push(format!(
                "databases.{}: PgBouncer spreads connections over its {} hosts round-robin; pgsluice treats them as \
                 one replication cluster (probes find the primary, writes go there, reads may go to replicas; \
                 docs/failover.md) and needs a probe login (its fixed user, or health_check_user)",
                l.key,
                hosts.len()
            ));
        }
        for (k, v) in &pairs {
            if k == "host" || k == "port" {
                self.push(l, &sect, k, v, Fate::Mapped(format!("{sect}.hosts")));
                continue;
            }
            self.pair(l, &sect, (k, v), table::rule(table::DATABASE, k), &mut section);
        }
        self.databases.push(Named {
            name: l.key.clone(),
            comment: format!("{} [databases] {}", l.origin, l.key),
            section,
        });
        Ok(())
    }

    /// A `[peers]` line, `N = host=… port=… pool_size=…`, becomes `[peers.N]` with
    /// `host = "host:port"` (a Unix socket directory as `"/dir:port"`; PgBouncer's port
    /// default is 6432, as pgsluice's) and `pool_size`. What PgBouncer's loader refuses (a name
    /// that is no id, no host, a bad port) is an error; what pgsluice cannot express drops the
    /// peer with its reason.
    fn peer_line(&mut self, l: &Line) -> Result<(), ImportError> {
        let pairs = Self::pairs(l)?;
        let refused = |message: String| ImportError::Line { place: l.origin.to_string(), message };
        let id =
            l.key.parse::<u32>().ok().filter(|id| (1..=PGBOUNCER_MAX_PEER_NAME).contains(id)).ok_or_else(|| {
                refused(format!("peer {:?}: ids of peers must be a number from 1 to {PGBOUNCER_MAX_PEER_NAME}", l.key))
            })?;
        let last = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.trim());
        let host = last("host").filter(|h| !h.is_empty());
        let host = host.ok_or_else(|| refused(format!("host was not provided for peer {id}")))?;
        let port = match last("port") {
            None => PGBOUNCER_PEER_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| refused(format!("peer {id}: invalid port {p:?}")))?,
        };
        // A later line for the same id replaces the earlier one, as in PgBouncer.
        let name = id.to_string();
        if let Some(at) = self.peers.iter().position(|(p, _)| p.name == name) {
            let (_, old) = self.peers.remove(at);
            for e in old {
                if matches!(self.entries[e].fate, Fate::Mapped(_)) {
                    self.entries[e].fate =
                        Fate::Same(format!("superseded by {} (the last line wins, as in PgBouncer)", l.origin));
                }
            }
        }
        let sect = format!("peers.{}", l.key);
        let first = self.entries.len();
        let max = u32::from(crate::config::MAX_PEER_ID);
        let why = if id > max {
            Some(format!("peer id {id} is above {max}, the largest peer_id, so no instance can have it"))
        } else if host.starts_with('@') {
            Some(format!("host {host}: pgsluice has no abstract-namespace Unix sockets"))
        } else if host.contains(',') {
            Some(format!("host {host}: pgsluice takes one address per peer, not a list"))
        } else {
            None
        };
        if let Some(why) = why {
            self.push(l, "peers", &l.key, "", Fate::Dropped(why.clone()));
            for (k, v) in &pairs {
                self.push(l, &sect, k, v, Fate::Dropped(format!("peer {} not imported: {why}", l.key)));
            }
            return Ok(());
        }
        let target = format!("peers.{id}");
        self.push(l, "peers", &l.key, "", Fate::Mapped(target.clone()));
        let mut section = Section::default();
        let address = if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let comment = match last("port") {
            Some(_) => format!("{} host, port", l.origin),
            None => format!("{} host; port: PgBouncer's default, 6432", l.origin),
        };
        section.set(Item { key: "host".into(), value: toml::Value::String(address), comment, entry: None });
        for (k, v) in &pairs {
            let fate = match k.as_str() {
                "host" | "port" => Fate::Mapped(format!("{target}.host")),
                "pool_size" => match value::int(v) {
                    // PgBouncer's atoi: a negative size means default_pool_size, as no size.
                    Ok(n) if n < 0 => {
                        Fate::Same("a negative pool_size is default_pool_size, pgsluice's default too".into())
                    }
                    Ok(n) if n == 0 || n > i64::from(u32::MAX) => Fate::Dropped(format!(
                        "pool_size {n}: pgsluice needs 1 to {} (without it, default_pool_size applies)",
                        u32::MAX
                    )),
                    Ok(n) => {
                        let (comment, at) = (format!("{} pool_size", l.origin), self.entries.len());
                        let item =
                            Item { key: "pool_size".into(), value: toml::Value::Integer(n), comment, entry: Some(at) };
                        if let Some(old) = section.set(item) {
                            self.entries[old].fate =
                                Fate::Same("superseded by a later pool_size on the same line".into());
                        }
                        Fate::Mapped(format!("{target}.pool_size"))
                    }
                    Err(why) => Fate::Dropped(why),
                },
                _ => Fate::Dropped("not a PgBouncer 1.25 parameter here".into()),
            };
            self.push(l, &sect, k, v, fate);
        }
        self.peers.push((
            Named { name, comment: format!("{} [peers] {}", l.origin, l.key), section },
            first..self.entries.len(),
        ));
        Ok(())
    }

    fn user_line(&mut self, l: &Line) -> Result<(), ImportError> {
        let pairs = Self::pairs(l)?;
        let sect = format!("users.{}", l.key);
        self.push(l, "users", &l.key, "", Fate::Mapped(sect.clone()));
        let mut section = Section::default();
        for (k, v) in &pairs {
            self.pair(l, &sect, (k, v), table::rule(table::USER, k), &mut section);
        }
        self.users.push(Named { name: l.key.clone(), comment: format!("{} [users] {}", l.origin, l.key), section });
        Ok(())
    }
}

/// The command: imports, prints what was not imported to stderr, writes `out` (or stdout),
/// validates the result as `check-config` does, and returns the exit code (see the module
/// header).
pub fn run(ini: &Path, userlist: Option<&Path>, out: Option<&Path>) -> i32 {
    use std::io::Write;
    let imported = match import(ini, userlist, out) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("pgsluice: import-pgbouncer: {e}");
            return 1;
        }
    };
    for (e, why) in imported.dropped() {
        let shown = if e.value.is_empty() { String::new() } else { format!(" = {}", e.value) };
        eprintln!("{}: not imported: [{}] {}{shown}: {why}", e.origin, e.section, e.key);
    }
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    let check_path = match out {
        Some(o) => o.to_path_buf(),
        None => std::env::current_dir().unwrap_or_default().join("pgsluice.toml"),
    };
    let check = Config::from_str(&imported.toml, &check_path);
    match out {
        Some(o) => {
            if let Err(e) = std::fs::write(o, &imported.toml) {
                eprintln!("pgsluice: import-pgbouncer: cannot write {}: {e}", o.display());
                return 1;
            }
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(imported.toml.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return 1;
            }
        }
    }
    let written = out.map(|o| o.display().to_string()).unwrap_or_else(|| "stdout".into());
    if let Err(e) = check {
        eprintln!("pgsluice: import-pgbouncer: written to {written}, but it does not pass check-config: {e}");
        return 1;
    }
    let dropped = imported.dropped().count();
    let mapped = imported.entries.iter().filter(|e| matches!(e.fate, Fate::Mapped(_))).count();
    eprintln!(
        "{}: {mapped} settings imported to {written}, {dropped} not imported{}",
        ini.display(),
        if dropped > 0 { " (listed above)" } else { "" }
    );
    if dropped > 0 {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
