//! PgBouncer's INI format as its `lib/usual/cfparser.c` reads it, plus the connection
//! strings of `[databases]`, `[users]` and `[peers]` (`src/loader.c`).
//!
//! - A line is blank, a comment (`;` or `#` as its first non-blank character; later in a line
//!   they are ordinary characters), a `[section]`, `key = value`, or `%include FILE`.
//! - A key is letters, digits and `_.-*`, or quoted: `'…'` (cfparser) or `"…"` with `""`
//!   for a quote (the documented SQL-identifier quoting of database names).
//! - The value is the rest of the line, trimmed.
//! - `%include` reads another file in place. Unlike PgBouncer (relative to its working
//!   directory) a relative name is taken relative to the including file. Nesting stops at
//!   [`MAX_INCLUDE_DEPTH`] levels (PgBouncer's `MAX_INCLUDE`), and a file that includes itself,
//!   directly or not, is an error. The current section carries into and out of an included
//!   file, as in PgBouncer (the handler's state is global there).
//!
//! Every [`Line`] keeps its [`Origin`], so the writer can say where a value came from.

use std::path::{Path, PathBuf};

/// PgBouncer's include nesting limit.
pub const MAX_INCLUDE_DEPTH: usize = 10;

/// Where a setting was read: a file (as it is shown) and a 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file's name as shown in comments and messages.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `key = value` line.
#[derive(Debug, Clone)]
pub struct Line {
    /// Where it was read.
    pub origin: Origin,
    /// Directory of the file it was read from (relative paths in values start there).
    pub dir: PathBuf,
    /// The section it belongs to, as written (`pgbouncer`, `databases`…).
    pub section: String,
    /// The key, unquoted.
    pub key: String,
    /// The value, trimmed.
    pub value: String,
}

/// A file that cannot be read as PgBouncer would read it.
#[derive(Debug, thiserror::Error)]
#[error("{place}: {message}")]
pub struct IniError {
    /// `file:line`, or the file alone.
    pub place: String,
    /// What is wrong.
    pub message: String,
}

/// Reads `path` and its includes, in order.
pub fn read(path: &Path) -> Result<Vec<Line>, IniError> {
    let root_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reader = Reader { root_dir, section: None, stack: Vec::new(), lines: Vec::new() };
    let shown =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    reader.file(path, shown, None)?;
    Ok(reader.lines)
}

struct Reader {
    /// Directory of the top file: included files are shown relative to it.
    root_dir: PathBuf,
    section: Option<String>,
    /// Canonical paths of the files being read (cycle detection).
    stack: Vec<PathBuf>,
    lines: Vec<Line>,
}

impl Reader {
    fn file(&mut self, path: &Path, shown: String, from: Option<&Origin>) -> Result<(), IniError> {
        let place = |o: Option<&Origin>| o.map(Origin::to_string).unwrap_or_else(|| path.display().to_string());
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| IniError { place: place(from), message: format!("cannot read {}: {e}", path.display()) })?;
        if self.stack.contains(&canonical) {
            return Err(IniError {
                place: place(from),
                message: format!("%include cycle: {} includes itself", path.display()),
            });
        }
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(IniError {
                place: place(from),
                message: format!("%include nested more than {MAX_INCLUDE_DEPTH} levels deep"),
            });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| IniError { place: place(from), message: format!("cannot read {}: {e}", path.display()) })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.stack.push(canonical);
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin { file: shown.clone(), line: i + 1 };
            let err = |message: String| IniError { place: origin.to_string(), message };
            let l = raw.trim();
            if l.is_empty() || l.starts_with(';') || l.starts_with('#') {
                continue;
            }
            if let Some(rest) = l.strip_prefix("%include") {
                if !rest.starts_with([' ', '\t']) {
                    return Err(err("%include needs a file name".into()));
                }
                let name = rest.trim();
                let target = if Path::new(name).is_absolute() { PathBuf::from(name) } else { dir.join(name) };
                let shown = match target.strip_prefix(&self.root_dir) {
                    Ok(rel) if !self.root_dir.as_os_str().is_empty() => rel.display().to_string(),
                    _ => target.display().to_string(),
                };
                self.file(&target, shown, Some(&origin))?;
                continue;
            }
            if let Some(rest) = l.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(|| err("section header without ']'".into()))?;
                self.section = Some(name.trim().to_string());
                continue;
            }
            let (key, rest) = split_key(l).map_err(err)?;
            let value = rest.trim_start_matches([' ', '\t']);
            let value = value.strip_prefix('=').ok_or_else(|| err(format!("expected '=' after {key:?}")))?.trim();
            let Some(section) = self.section.clone() else {
                return Err(err(format!("{key:?} is outside any [section]")));
            };
            self.lines.push(Line { origin, dir: dir.clone(), section, key, value: value.to_string() });
        }
        self.stack.pop();
        Ok(())
    }
}

/// Splits a line into its (unquoted) key and the rest.
fn split_key(l: &str) -> Result<(String, &str), String> {
    if let Some(rest) = l.strip_prefix('\'') {
        let end = rest.find('\'').ok_or("unterminated quoted key")?;
        if end == 0 {
            return Err("empty key".into());
        }
        return Ok((rest[..end].to_string(), &rest[end + 1..]));
    }
    if let Some(rest) = l.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    key.push('"');
                    chars.next();
                    continue;
                }
                if key.is_empty() {
                    return Err("empty key".into());
                }
                return Ok((key, &rest[i + 1..]));
            }
            key.push(c);
        }
        return Err("unterminated quoted key".into());
    }
    let end = l.find(|c: char| !(c.is_ascii_alphanumeric() || "_.-*".contains(c))).unwrap_or(l.len());
    if end == 0 {
        return Err(format!("expected a key at {:?}", l.chars().take(20).collect::<String>()));
    }
    Ok((l[..end].to_string(), &l[end..]))
}

/// Parses a connection string (`host=a port=5 dbname='x y'`) into its pairs, in order:
/// values are unquoted words or single-quoted with `''` for a quote; empty values are an
/// error, as in PgBouncer's `cstr_get_pair`.
pub fn connstr(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let eq = rest.find(['=', ' ']).ok_or_else(|| format!("expected key=value at {rest:?}"))?;
        let key = &rest[..eq];
        let after = rest[eq..].trim_start();
        let after = after.strip_prefix('=').filter(|_| !key.is_empty());
        let after = after.ok_or_else(|| format!("expected key=value at {rest:?}"))?.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('\'') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if q[i + 1..].starts_with('\'') {
                        v.push('\'');
                        chars.next();
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
                v.push(c);
            }
            let end = end.ok_or_else(|| format!("unterminated quote in the value of {key}"))?;
            (v, &q[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if value.is_empty() {
            return Err(format!("empty value for {key}"));
        }
        out.push((key.to_string(), value));
        rest = next.trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_sections_keys_comments_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "pgbouncer.ini",
            "; comment\n# another\n[databases]\n'my db' = host=a\n\"we\"\"ird\" = host=b\n* = host=c\n\n[pgbouncer]\n  listen_port = 6433  \nlogfile = /var/log/x.log ; not a comment\nempty =\n",
        );
        let lines = read(&p).unwrap();
        let got: Vec<(String, String, String, usize)> =
            lines.iter().map(|l| (l.section.clone(), l.key.clone(), l.value.clone(), l.origin.line)).collect();
        assert_eq!(
            got,
            vec![
                ("databases".into(), "my db".into(), "host=a".into(), 4),
                ("databases".into(), "we\"ird".into(), "host=b".into(), 5),
                ("databases".into(), "*".into(), "host=c".into(), 6),
                ("pgbouncer".into(), "listen_port".into(), "6433".into(), 9),
                ("pgbouncer".into(), "logfile".into(), "/var/log/x.log ; not a comment".into(), 10),
                ("pgbouncer".into(), "empty".into(), "".into(), 11),
            ]
        );
        assert_eq!(lines[0].origin.file, "pgbouncer.ini");
    }

    #[test]
    fn refuses_syntax_errors_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        for (text, needle) in [
            ("[pgbouncer\n", "pgbouncer.ini:1: section header"),
            ("[pgbouncer]\nlisten_port 6432\n", "pgbouncer.ini:2: expected '='"),
            ("listen_port = 1\n", "pgbouncer.ini:1: \"listen_port\" is outside"),
            ("[databases]\n'x = host=a\n", "unterminated quoted key"),
            ("[pgbouncer]\n%include\n", "needs a file name"),
        ] {
            let p = write(dir.path(), "pgbouncer.ini", text);
            let e = read(&p).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn includes_are_relative_to_the_including_file_and_keep_the_section() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "conf.d/pools.ini", "default_pool_size = 7\n%include more/last.ini\n");
        write(dir.path(), "conf.d/more/last.ini", "[users]\nbob = pool_mode=session\n");
        let p = write(dir.path(), "pgbouncer.ini", "[pgbouncer]\n%include conf.d/pools.ini\nmax_client_conn = 9\n");
        let lines = read(&p).unwrap();
        let got: Vec<String> =
            lines.iter().map(|l| format!("{} [{}] {}={}", l.origin, l.section, l.key, l.value)).collect();
        assert_eq!(
            got,
            vec![
                "conf.d/pools.ini:1 [pgbouncer] default_pool_size=7",
                "conf.d/more/last.ini:2 [users] bob=pool_mode=session",
                // The included file's section stays in force, as in PgBouncer.
                "pgbouncer.ini:3 [users] max_client_conn=9",
            ]
        );
        assert_eq!(lines[1].dir, dir.path().join("conf.d/more"));
    }

    #[test]
    fn include_cycles_and_depth_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.ini", "[pgbouncer]\n%include b.ini\n");
        write(dir.path(), "b.ini", "%include a.ini\n");
        let e = read(&dir.path().join("a.ini")).unwrap_err().to_string();
        assert!(e.contains("b.ini:1") && e.contains("cycle"), "{e}");

        let selfish = write(dir.path(), "self.ini", "%include self.ini\n");
        assert!(read(&selfish).unwrap_err().to_string().contains("cycle"));

        // A chain of distinct files: 11 levels of includes below the top is too deep.
        for i in 0..12 {
            write(dir.path(), &format!("d{i}.ini"), &format!("%include d{}.ini\n", i + 1));
        }
        write(dir.path(), "d12.ini", "[pgbouncer]\nlisten_port = 1\n");
        let e = read(&dir.path().join("d0.ini")).unwrap_err().to_string();
        assert!(e.contains("nested more than 10"), "{e}");
        // Ten levels are fine.
        let lines = read(&dir.path().join("d2.ini")).unwrap();
        assert_eq!(lines.len(), 1);

        let e = read(&dir.path().join("missing.ini")).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        write(dir.path(), "m.ini", "%include nope.ini\n");
        let e = read(&dir.path().join("m.ini")).unwrap_err().to_string();
        assert!(e.starts_with("m.ini:1: cannot read"), "{e}");
    }

    #[test]
    fn connection_strings() {
        assert_eq!(
            connstr("host=a,b  port=5433 dbname='it''s x' user=u").unwrap(),
            vec![
                ("host".to_string(), "a,b".to_string()),
                ("port".into(), "5433".into()),
                ("dbname".into(), "it's x".into()),
                ("user".into(), "u".into()),
            ]
        );
        assert_eq!(connstr("").unwrap(), vec![]);
        assert_eq!(connstr("host = a").unwrap(), vec![("host".to_string(), "a".to_string())]);
        for bad in ["host", "=a", "host='a", "host=''", "host= "] {
            assert!(connstr(bad).is_err(), "{bad:?}");
        }
    }
}
