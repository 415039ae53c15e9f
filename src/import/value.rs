//! Converting one PgBouncer value to a TOML value by its [`Kind`]. An `Err` is the reason the
//! value cannot be imported; it never contains the value of a password.

use std::path::{Path, PathBuf};

use super::table::Kind;

/// What a path conversion needs: the directory of the file the value came from, and of the
/// output file (paths under it are written relative to it, as pgsluice reads them).
pub struct PathCtx<'a> {
    /// Directory of the ini file the line is in.
    pub from: &'a Path,
    /// Directory of the TOML file written, if any.
    pub out: Option<&'a Path>,
}

/// A relative path taken from the ini's directory, written relative to the output's
/// directory when it is inside it, else absolute.
pub fn path(value: &str, ctx: &PathCtx<'_>) -> String {
    let p = Path::new(value);
    let abs: PathBuf = if p.is_absolute() {
        normalize(p)
    } else {
        let base = if ctx.from.is_absolute() {
            ctx.from.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(ctx.from)
        };
        normalize(&base.join(p))
    };
    if let Some(out) = ctx.out {
        if let Ok(rel) = abs.strip_prefix(normalize(out)) {
            return rel.display().to_string();
        }
    }
    abs.display().to_string()
}

/// Removes `.` and `a/..` components without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// An integer in decimal (PgBouncer's `atoi`/`strtol` accept more; a value that is not a
/// plain non-negative decimal is refused rather than guessed).
pub fn int(value: &str) -> Result<i64, String> {
    value.trim().parse::<i64>().map_err(|_| format!("{value:?} is not an integer"))
}

/// Seconds as PgBouncer writes them (`30`, `0.5`).
pub fn seconds(value: &str) -> Result<toml::Value, String> {
    let s: f64 = value.trim().parse().map_err(|_| format!("{value:?} is not a number of seconds"))?;
    if !s.is_finite() || s < 0.0 {
        return Err(format!("{value:?} is not a non-negative number of seconds"));
    }
    Ok(if s.fract() == 0.0 && s < 1e15 { toml::Value::Integer(s as i64) } else { toml::Value::Float(s) })
}

/// Converts `value` of `kind`.
pub fn convert(kind: Kind, value: &str, ctx: &PathCtx<'_>) -> Result<toml::Value, String> {
    use toml::Value as V;
    let v = value.trim();
    Ok(match kind {
        Kind::Int => {
            let n = int(v)?;
            if !(0..=i64::from(u32::MAX)).contains(&n) {
                return Err(format!("{v} is out of range (0 … {})", u32::MAX));
            }
            V::Integer(n)
        }
        Kind::Bool => V::Boolean(match v.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => true,
            "off" | "false" | "no" => false,
            n => int(n)? != 0,
        }),
        Kind::Secs => seconds(v)?,
        Kind::Str => V::String(v.to_string()),
        Kind::List => {
            V::Array(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| V::String(s.into())).collect())
        }
        Kind::Path => {
            if v.is_empty() {
                return Err("an empty file name".into());
            }
            V::String(path(v, ctx))
        }
        Kind::Octal => {
            let mode = if v.len() > 1 && v.starts_with('0') {
                i64::from_str_radix(&v[1..], 8).map_err(|_| format!("{v:?} is not an octal mode"))?
            } else {
                int(v)?
            };
            if !(0..=0o777).contains(&mode) {
                return Err(format!("{v:?} is not a file mode (0 … 0777)"));
            }
            V::String(format!("0{mode:o}"))
        }
        Kind::OneOf(allowed) => {
            let lower = v.to_ascii_lowercase();
            if !allowed.contains(&lower.as_str()) {
                return Err(format!("{v:?} is not one of pgsluice's values ({})", allowed.join(", ")));
            }
            V::String(lower)
        }
        Kind::PacketSize => {
            let n = int(v)?;
            let max = crate::protocol::MAX_MESSAGE_LEN as i64;
            if !(1024..=max).contains(&n) {
                return Err(format!(
                    "{v} is outside 1024 … {max}; pgsluice's maximum (and default) is PostgreSQL's own limit, {max}"
                ));
            }
            V::Integer(n)
        }
        Kind::TlsProtocols => {
            crate::net::tls::protocol_versions(v)?;
            V::String(v.to_string())
        }
        // `<empty>` makes PgBouncer send an empty query; `select 1` checks the same.
        Kind::CheckQuery if v.eq_ignore_ascii_case("<empty>") => V::String("select 1".into()),
        Kind::CheckQuery => V::String(v.to_string()),
        Kind::SocketDir => {
            if v.starts_with('@') {
                return Err("pgsluice has no abstract-namespace Unix sockets".into());
            }
            V::String(v.to_string())
        }
        Kind::PeerId => {
            let (n, max) = (int(v)?, crate::config::MAX_PEER_ID);
            if !(0..=i64::from(max)).contains(&n) {
                return Err(format!("{v} is out of range (0 = off, 1 … {max})"));
            }
            V::Integer(n)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value as V;

    fn conv(kind: Kind, v: &str) -> Result<V, String> {
        convert(kind, v, &PathCtx { from: Path::new("/etc/pgbouncer"), out: Some(Path::new("/etc/pgsluice")) })
    }

    #[test]
    fn converts_each_kind() {
        assert_eq!(conv(Kind::Int, "20"), Ok(V::Integer(20)));
        assert!(conv(Kind::Int, "-1").is_err() && conv(Kind::Int, "twenty").is_err());
        assert_eq!(conv(Kind::Bool, "1"), Ok(V::Boolean(true)));
        assert_eq!(conv(Kind::Bool, "0"), Ok(V::Boolean(false)));
        assert_eq!(conv(Kind::Bool, "off"), Ok(V::Boolean(false)));
        assert!(conv(Kind::Bool, "maybe").is_err());
        assert_eq!(conv(Kind::Secs, "600"), Ok(V::Integer(600)));
        assert_eq!(conv(Kind::Secs, "2.5"), Ok(V::Float(2.5)));
        assert_eq!(conv(Kind::Secs, "30.0"), Ok(V::Integer(30)));
        assert!(conv(Kind::Secs, "-3").is_err() && conv(Kind::Secs, "5m").is_err());
        assert_eq!(
            conv(Kind::List, " a, b ,,c"),
            Ok(V::Array(vec![V::String("a".into()), V::String("b".into()), V::String("c".into())]))
        );
        assert_eq!(conv(Kind::List, ""), Ok(V::Array(vec![])));
        assert_eq!(conv(Kind::Octal, "0777"), Ok(V::String("0777".into())));
        assert_eq!(conv(Kind::Octal, "0700"), Ok(V::String("0700".into())));
        assert_eq!(conv(Kind::Octal, "511"), Ok(V::String("0777".into())));
        assert!(conv(Kind::Octal, "0999").is_err() && conv(Kind::Octal, "01777").is_err());
        assert_eq!(conv(Kind::OneOf(&["session", "transaction"]), "Session"), Ok(V::String("session".into())));
        assert!(conv(Kind::OneOf(&["md5"]), "pam").unwrap_err().contains("\"pam\" is not one of"));
        assert_eq!(conv(Kind::PacketSize, "65536"), Ok(V::Integer(65536)));
        assert!(conv(Kind::PacketSize, "2147483647").unwrap_err().contains("1073741823"));
        assert_eq!(conv(Kind::TlsProtocols, "tlsv1.2,tlsv1.3"), Ok(V::String("tlsv1.2,tlsv1.3".into())));
        assert!(conv(Kind::TlsProtocols, "tlsv1.0").is_err());
        assert_eq!(conv(Kind::CheckQuery, "<empty>"), Ok(V::String("select 1".into())));
        assert_eq!(conv(Kind::CheckQuery, ""), Ok(V::String("".into())));
        assert!(conv(Kind::SocketDir, "@pgb").is_err());
        assert_eq!(conv(Kind::PeerId, "0"), Ok(V::Integer(0)));
        assert_eq!(conv(Kind::PeerId, "16383"), Ok(V::Integer(16383)));
        assert!(conv(Kind::PeerId, "16384").unwrap_err().contains("out of range"));
        assert!(conv(Kind::PeerId, "-1").is_err() && conv(Kind::PeerId, "one").is_err());
    }

    #[test]
    fn paths_are_resolved_from_the_ini_and_written_relative_to_the_output() {
        assert_eq!(conv(Kind::Path, "userlist.txt"), Ok(V::String("/etc/pgbouncer/userlist.txt".into())));
        assert_eq!(conv(Kind::Path, "../pgsluice/ca.pem"), Ok(V::String("ca.pem".into())));
        assert_eq!(conv(Kind::Path, "/etc/pgsluice/./tls/x.pem"), Ok(V::String("tls/x.pem".into())));
        assert_eq!(conv(Kind::Path, "/srv/x.pem"), Ok(V::String("/srv/x.pem".into())));
        assert!(conv(Kind::Path, "").is_err());
    }
}
