//! Parsing of admin console commands: PgBouncer's grammar, case-insensitive, a trailing `;`
//! optional, database names bare or double-quoted, `SET` values bare or single-quoted.

/// What `SHOW` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// `SHOW POOLS`.
    Pools,
    /// `SHOW STATS`.
    Stats,
    /// `SHOW STATS_TOTALS`.
    StatsTotals,
    /// `SHOW STATS_AVERAGES`.
    StatsAverages,
    /// `SHOW TOTALS`.
    Totals,
    /// `SHOW DATABASES`.
    Databases,
    /// `SHOW CLIENTS`.
    Clients,
    /// `SHOW SERVERS`.
    Servers,
    /// `SHOW CONFIG`.
    Config,
    /// `SHOW USERS`.
    Users,
    /// `SHOW LISTS`.
    Lists,
    /// `SHOW MEM`.
    Mem,
    /// `SHOW VERSION`.
    Version,
    /// `SHOW STATE`.
    State,
    /// `SHOW HELP`.
    Help,
    /// (pgsluice) `SHOW REPLICAS` / `SHOW HOSTS`: every host of every database.
    Hosts,
    /// (pgsluice) `SHOW ROUTES`: routing decisions per database.
    Routes,
    /// (pgsluice) `SHOW LATENCY`: p50/p95/p99 of transaction, query and wait times per pool.
    Latency,
}

pub use crate::shutdown::StopMode;

/// One admin console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW ...`.
    Show(Show),
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RECONNECT [db]`.
    Reconnect(Option<String>),
    /// `WAIT_CLOSE [db]`.
    WaitClose(Option<String>),
    /// `DISABLE db`.
    Disable(String),
    /// `ENABLE db`.
    Enable(String),
    /// `KILL db`.
    Kill(String),
    /// `KILL_CLIENT id`.
    KillClient(u64),
    /// `RELOAD`.
    Reload,
    /// `SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]`.
    Shutdown(StopMode),
    /// `SET key = value`.
    Set(String, String),
}

/// Why a command was not understood (the client gets it as the error message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// Parses one command.
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let text = text.trim().trim_end_matches(';').trim_end();
    let (word, rest) = split_word(text);
    let err = || ParseError(format!("invalid command '{}', use SHOW HELP;", text));
    let word = word.to_ascii_uppercase();
    let db_arg = |rest: &str| -> Result<Option<String>, ParseError> {
        let (name, tail) = split_name(rest)?;
        if !tail.trim().is_empty() {
            return Err(err());
        }
        Ok(name)
    };
    let need_db = |rest: &str, cmd: &str| -> Result<String, ParseError> {
        db_arg(rest)?.ok_or_else(|| ParseError(format!("{cmd} needs a database name")))
    };
    Ok(match word.as_str() {
        "SHOW" => {
            let (what, tail) = split_word(rest);
            if !tail.trim().is_empty() {
                return Err(err());
            }
            let show = match what.to_ascii_uppercase().as_str() {
                "POOLS" => Show::Pools,
                "STATS" => Show::Stats,
                "STATS_TOTALS" => Show::StatsTotals,
                "STATS_AVERAGES" => Show::StatsAverages,
                "TOTALS" => Show::Totals,
                "DATABASES" => Show::Databases,
                "CLIENTS" => Show::Clients,
                "SERVERS" => Show::Servers,
                "CONFIG" => Show::Config,
                "USERS" => Show::Users,
                "LISTS" => Show::Lists,
                "MEM" => Show::Mem,
                "VERSION" => Show::Version,
                "STATE" => Show::State,
                "HELP" | "" => Show::Help,
                "REPLICAS" | "HOSTS" => Show::Hosts,
                "ROUTES" => Show::Routes,
                "LATENCY" => Show::Latency,
                _ => return Err(err()),
            };
            Command::Show(show)
        }
        "PAUSE" => Command::Pause(db_arg(rest)?),
        "RESUME" => Command::Resume(db_arg(rest)?),
        "RECONNECT" => Command::Reconnect(db_arg(rest)?),
        "WAIT_CLOSE" => Command::WaitClose(db_arg(rest)?),
        "DISABLE" => Command::Disable(need_db(rest, "DISABLE")?),
        "ENABLE" => Command::Enable(need_db(rest, "ENABLE")?),
        "KILL" => Command::Kill(need_db(rest, "KILL")?),
        "KILL_CLIENT" => {
            let (id, tail) = split_word(rest);
            // The `id` column of SHOW CLIENTS (decimal, as PgBouncer), or its `ptr` (0x…).
            let id = match id.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => id.parse().ok(),
            };
            let id =
                id.ok_or_else(|| ParseError("KILL_CLIENT needs a client id (the id column of SHOW CLIENTS)".into()))?;
            if !tail.trim().is_empty() {
                return Err(err());
            }
            Command::KillClient(id)
        }
        "RELOAD" if rest.trim().is_empty() => Command::Reload,
        "SHUTDOWN" => match rest.trim().to_ascii_uppercase().as_str() {
            "" => Command::Shutdown(StopMode::Immediate),
            "WAIT_FOR_SERVERS" => Command::Shutdown(StopMode::WaitForServers),
            "WAIT_FOR_CLIENTS" => Command::Shutdown(StopMode::WaitForClients),
            _ => return Err(err()),
        },
        "SET" => {
            let (key, value) = rest.split_once('=').ok_or_else(err)?;
            let key = key.trim();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err());
            }
            Command::Set(key.to_ascii_lowercase(), unquote_value(value.trim()).ok_or_else(err)?)
        }
        _ => return Err(err()),
    })
}

/// Whether `cmd` only reads (allowed to `stats_users`).
pub fn is_read_only(cmd: &Command) -> bool {
    matches!(cmd, Command::Show(_))
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// A database name: bare (case kept, as PgBouncer) or `"quoted"` (`""` is a quote).
fn split_name(s: &str) -> Result<(Option<String>, &str), ParseError> {
    let s = s.trim_start();
    if s.is_empty() {
        return Ok((None, s));
    }
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if body[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                    continue;
                }
                return Ok((Some(out), &body[i + 1..]));
            }
            out.push(c);
        }
        return Err(ParseError("unterminated quoted name".into()));
    }
    let (w, rest) = split_word(s);
    Ok((Some(w.to_string()), rest))
}

/// A `SET` value: `'quoted'` (`''` is a quote) or bare.
fn unquote_value(v: &str) -> Option<String> {
    match v.strip_prefix('\'') {
        Some(body) => {
            let inner = body.strip_suffix('\'')?;
            Some(inner.replace("''", "'"))
        }
        None if v.is_empty() => None,
        None => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_with_optional_semicolon() {
        assert_eq!(parse("show pools;").unwrap(), Command::Show(Show::Pools));
        assert_eq!(parse("  SHOW   STATS_TOTALS  ").unwrap(), Command::Show(Show::StatsTotals));
        assert_eq!(parse("Show Replicas").unwrap(), Command::Show(Show::Hosts));
        assert_eq!(parse("pause").unwrap(), Command::Pause(None));
        assert_eq!(parse("PAUSE app;").unwrap(), Command::Pause(Some("app".into())));
        assert_eq!(parse("resume \"My Db\"").unwrap(), Command::Resume(Some("My Db".into())));
        assert_eq!(parse("kill app").unwrap(), Command::Kill("app".into()));
        assert_eq!(parse("KILL_CLIENT 31").unwrap(), Command::KillClient(31));
        assert_eq!(parse("KILL_CLIENT 0x1f").unwrap(), Command::KillClient(31));
        assert_eq!(parse("shutdown wait_for_clients").unwrap(), Command::Shutdown(StopMode::WaitForClients));
        assert_eq!(parse("SHUTDOWN;").unwrap(), Command::Shutdown(StopMode::Immediate));
        assert_eq!(parse("set default_pool_size = 30").unwrap(), Command::Set("default_pool_size".into(), "30".into()));
        assert_eq!(
            parse("SET server_check_query = 'select ''x'''").unwrap(),
            Command::Set("server_check_query".into(), "select 'x'".into())
        );
        assert_eq!(parse("RELOAD").unwrap(), Command::Reload);
    }

    #[test]
    fn bad_commands_are_refused_with_a_hint() {
        for bad in
            ["SHOW FOO", "FOO", "KILL", "DISABLE", "SET = 1", "SET a b", "PAUSE a b", "SHOW POOLS x", "RELOAD now"]
        {
            let e = parse(bad).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
        assert!(parse("FOO").unwrap_err().0.contains("SHOW HELP"));
        assert!(parse("KILL").unwrap_err().0.contains("database"));
        assert!(!is_read_only(&parse("PAUSE").unwrap()));
        assert!(is_read_only(&parse("SHOW CLIENTS").unwrap()));
    }
}
