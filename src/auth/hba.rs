//! `auth_hba_file`: client authentication rules in pg_hba.conf format, the subset PgBouncer
//! supports. Pure: parsing (with `@file` includes read through a callback) and matching.
//!
//! Invariants: rules are kept in file order and the first rule whose connection type,
//! database, user and address match decides; a file that does not parse is refused whole,
//! with the line number of the first error.

use std::net::IpAddr;

/// How a matching connection authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No password.
    Trust,
    /// Refused.
    Reject,
    /// MD5 (SCRAM for users whose secret is a SCRAM verifier, as with `auth_type = md5`).
    Md5,
    /// Cleartext password.
    Password,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// A TLS client certificate whose common name is the user name.
    Cert,
    /// The operating-system user of a Unix-socket client (`local` lines only).
    Peer,
}

/// The connection a rule is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// A Unix-domain socket.
    Local,
    /// TCP from `addr`, with or without TLS.
    Host {
        /// The client's address.
        addr: IpAddr,
        /// TLS was negotiated.
        tls: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    All,
    /// Databases only: the database named like the user.
    SameUser,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Addr {
    All,
    Net { base: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone)]
struct Rule {
    kind: Kind,
    databases: Vec<Name>,
    users: Vec<Name>,
    addr: Addr,
    method: Method,
}

/// A parsed file.
#[derive(Debug, Clone, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

impl Hba {
    /// Parses `text`. `include(name)` returns the contents of an `@name` file (names in it
    /// separated by whitespace or commas; `#` comments allowed). `Err`: `line N: problem`.
    pub fn parse(text: &str, include: &dyn Fn(&str) -> Result<String, String>) -> Result<Hba, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = strip_comment(raw);
            let words = split_words(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            if words.is_empty() {
                continue;
            }
            let rule = parse_rule(&words, include).map_err(|e| format!("line {}: {e}", i + 1))?;
            rules.push(rule);
        }
        Ok(Hba { rules })
    }

    /// The method of the first rule that matches, or `None` (no rule: refused).
    pub fn method(&self, conn: Conn, database: &str, user: &str) -> Option<Method> {
        self.rules.iter().find(|r| r.matches(conn, database, user)).map(|r| r.method)
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the file has no rule (everything is refused).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    fn matches(&self, conn: Conn, database: &str, user: &str) -> bool {
        let conn_ok = match (self.kind, conn) {
            (Kind::Local, Conn::Local) => true,
            (Kind::Host, Conn::Host { addr, .. }) => self.addr.contains(addr),
            (Kind::HostSsl, Conn::Host { addr, tls: true }) => self.addr.contains(addr),
            (Kind::HostNoSsl, Conn::Host { addr, tls: false }) => self.addr.contains(addr),
            _ => false,
        };
        conn_ok
            && self.databases.iter().any(|d| match d {
                Name::All => true,
                Name::SameUser => database == user,
                Name::Exact(n) => n == database,
            })
            && self.users.iter().any(|u| match u {
                Name::All => true,
                Name::SameUser => false,
                Name::Exact(n) => n == user,
            })
    }
}

impl Addr {
    fn contains(&self, ip: IpAddr) -> bool {
        let Addr::Net { base, prefix } = self else { return true };
        // An IPv4 client seen through an IPv6 socket (::ffff:a.b.c.d) matches IPv4 rules.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn strip_comment(line: &str) -> &str {
    // (A '#' inside double quotes is part of a name.)
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Splits a line into fields; a field keeps its quotes (quoted `"all"` is a name, not the
/// keyword). Commas inside a field separate list items and are kept.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                // "a, b" is one list: a field may not end with a comma.
                if !cur.is_empty() && !cur.ends_with(',') {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted name".into());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// The items of a comma list, each with its quoting.
fn list_items(field: &str) -> Result<Vec<(String, bool)>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    for c in field.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => items.push((std::mem::take(&mut cur), std::mem::take(&mut was_quoted))),
            c => cur.push(c),
        }
    }
    items.push((cur, was_quoted));
    if items.iter().any(|(n, q)| n.is_empty() && !q) {
        return Err(format!("empty name in list {field:?}"));
    }
    Ok(items)
}

fn names(field: &str, databases: bool, include: &dyn Fn(&str) -> Result<String, String>) -> Result<Vec<Name>, String> {
    let mut out = Vec::new();
    for (item, quoted) in list_items(field)? {
        if quoted {
            out.push(Name::Exact(item));
            continue;
        }
        match item.as_str() {
            "all" => out.push(Name::All),
            "sameuser" if databases => out.push(Name::SameUser),
            "samerole" | "samegroup" | "replication" if databases => {
                return Err(format!("{item:?} is not supported by pgsluice"))
            }
            s if s.starts_with('+') => {
                return Err(format!(
                    "group membership ({item:?}) is not supported: pgsluice does not know roles' groups"
                ))
            }
            s if s.starts_with('@') => {
                let text = include(&s[1..])?;
                for line in text.lines() {
                    for n in strip_comment(line).split([',', ' ', '\t']).filter(|n| !n.is_empty()) {
                        out.push(Name::Exact(n.trim_matches('"').to_string()));
                    }
                }
            }
            s => out.push(Name::Exact(s.to_string())),
        }
    }
    Ok(out)
}

fn parse_addr(words: &[String]) -> Result<(Addr, usize), String> {
    let a = words.first().ok_or("missing address")?;
    if a == "all" {
        return Ok((Addr::All, 1));
    }
    if matches!(a.as_str(), "samehost" | "samenet") || a.starts_with('.') {
        return Err(format!("address {a:?} is not supported (use a CIDR address or all)"));
    }
    if let Some((ip, prefix)) = a.split_once('/') {
        let base: IpAddr = ip.parse().map_err(|_| format!("invalid IP address {ip:?}"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix: u8 =
            prefix.parse().ok().filter(|&p| p <= max).ok_or_else(|| format!("invalid CIDR mask in {a:?}"))?;
        return Ok((Addr::Net { base, prefix }, 1));
    }
    // An address and a separate mask column.
    let base: IpAddr = a.parse().map_err(|_| format!("invalid IP address {a:?}"))?;
    let mask = words.get(1).ok_or_else(|| format!("address {a:?} needs a CIDR mask or a mask column"))?;
    let mask: IpAddr = mask.parse().map_err(|_| format!("invalid IP mask {mask:?}"))?;
    let bits = match mask {
        IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) => u128::from(m),
    };
    let prefix = bits.leading_ones() as u8;
    if bits.checked_shl(u32::from(prefix)).unwrap_or(0) != 0 || mask.is_ipv4() != base.is_ipv4() {
        return Err(format!("invalid IP mask {mask}"));
    }
    let prefix = if base.is_ipv4() { prefix.min(32) } else { prefix };
    Ok((Addr::Net { base, prefix }, 2))
}

fn parse_rule(words: &[String], include: &dyn Fn(&str) -> Result<String, String>) -> Result<Rule, String> {
    let kind = match words[0].as_str() {
        "local" => Kind::Local,
        "host" => Kind::Host,
        "hostssl" => Kind::HostSsl,
        "hostnossl" => Kind::HostNoSsl,
        other => return Err(format!("unknown connection type {other:?} (local, host, hostssl, hostnossl)")),
    };
    let databases = names(words.get(1).ok_or("missing database")?, true, include)?;
    let users = names(words.get(2).ok_or("missing user")?, false, include)?;
    let (addr, used) = if kind == Kind::Local { (Addr::All, 0) } else { parse_addr(&words[3..])? };
    let rest = &words[3 + used..];
    let method = match rest.first().map(String::as_str) {
        Some("trust") => Method::Trust,
        Some("reject") => Method::Reject,
        Some("md5") => Method::Md5,
        Some("password") => Method::Password,
        Some("scram-sha-256") => Method::ScramSha256,
        Some("cert") => Method::Cert,
        Some("peer") if kind == Kind::Local => Method::Peer,
        Some("peer") => return Err("method \"peer\" is only for local (Unix socket) connections".into()),
        Some(m) => {
            return Err(format!("unknown method {m:?} (trust, reject, md5, password, scram-sha-256, cert, peer)"))
        }
        None => return Err("missing authentication method".into()),
    };
    if let Some(opt) = rest.get(1) {
        return Err(format!("authentication options ({opt:?}) are not supported"));
    }
    Ok(Rule { kind, databases, users, addr, method })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_files(name: &str) -> Result<String, String> {
        Err(format!("no file {name}"))
    }

    fn host(ip: &str, tls: bool) -> Conn {
        Conn::Host { addr: ip.parse().unwrap(), tls }
    }

    #[test]
    fn first_match_wins_and_no_match_is_none() {
        let hba = Hba::parse(
            "# comment\n\
             hostssl all     admin   0.0.0.0/0      scram-sha-256\n\
             host    all     admin   all            reject   # no admin without TLS\n\
             host    app,\"All\" alice,bob 10.0.0.0/8 md5\n\
             host    sameuser all    192.168.1.0 255.255.255.0 password\n\
             host    all     all     ::1/128        trust\n\
             local   all     all                    trust\n",
            &no_files,
        )
        .unwrap();
        assert_eq!(hba.len(), 6);
        assert_eq!(hba.method(host("1.2.3.4", true), "app", "admin"), Some(Method::ScramSha256));
        assert_eq!(hba.method(host("1.2.3.4", false), "app", "admin"), Some(Method::Reject));
        assert_eq!(hba.method(host("10.1.2.3", false), "app", "alice"), Some(Method::Md5));
        assert_eq!(hba.method(host("10.1.2.3", false), "All", "bob"), Some(Method::Md5), "quoted: a name");
        assert_eq!(hba.method(host("10.1.2.3", false), "other", "bob"), None);
        assert_eq!(hba.method(host("11.1.2.3", false), "app", "alice"), None);
        assert_eq!(hba.method(host("192.168.1.9", false), "carol", "carol"), Some(Method::Password));
        assert_eq!(hba.method(host("192.168.1.9", false), "app", "carol"), None, "sameuser");
        assert_eq!(hba.method(host("::1", true), "x", "y"), Some(Method::Trust));
        assert_eq!(hba.method(Conn::Local, "x", "y"), Some(Method::Trust));
        // IPv4 through an IPv6 socket.
        assert_eq!(hba.method(host("::ffff:10.0.0.1", false), "app", "alice"), Some(Method::Md5));
    }

    #[test]
    fn includes_and_errors_name_the_line() {
        let files = |name: &str| match name {
            "admins" => Ok("# admins\nalice, bob\ncarol\n".to_string()),
            other => Err(format!("cannot read {other}")),
        };
        let hba = Hba::parse("host all @admins 0.0.0.0/0 trust\n", &files).unwrap();
        assert_eq!(hba.method(host("1.1.1.1", false), "db", "carol"), Some(Method::Trust));
        assert_eq!(hba.method(host("1.1.1.1", false), "db", "dave"), None);
        for (text, want) in [
            ("hostgssenc all all all trust", "line 1: unknown connection type"),
            ("\nhost all all 1.2.3.4/33 trust", "line 2: invalid CIDR mask"),
            ("host all all 1.2.3.4 255.0.255.0 trust", "invalid IP mask"),
            ("host all all 1.2.3.4/32", "missing authentication method"),
            ("host all all 1.2.3.4/32 ident", "unknown method"),
            ("host all all all peer", "only for local"),
            ("host all +staff all trust", "group membership"),
            ("host all all samenet trust", "not supported"),
            ("host all all all md5 clientcert=verify-full", "options"),
            ("host all @missing all trust", "cannot read missing"),
            ("host \"all all trust", "unterminated"),
            ("host all all", "missing address"),
        ] {
            let e = Hba::parse(text, &files).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
