//! Parser for PgBouncer's `auth_file` (userlist.txt) format.
//!
//! Each line is `"username" "password"`: two double-quoted fields separated by whitespace, where
//! `""` inside a field is an escaped quote. Anything after the second field is ignored. Blank lines
//! and lines whose first non-blank character is `;` or `#` are comments. The password is classified
//! by [`Secret::parse`] (cleartext, `md5...` or `SCRAM-SHA-256$...`). Errors carry the 1-based line
//! number and a static reason, never the line itself (it holds a password).

use super::{Error, Secret};

/// Parse an auth_file; returns `(username, secret)` pairs in file order (duplicates are kept).
pub fn parse(text: &str) -> Result<Vec<(String, Secret)>, Error> {
    let mut users = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with([';', '#']) {
            continue;
        }
        let err = |reason| Error::Userlist { line: index + 1, reason };
        let (user, rest) = quoted(line).ok_or(err("expected quoted username"))?;
        if user.is_empty() {
            return Err(err("empty username"));
        }
        let (password, _ignored) = quoted(rest.trim_start()).ok_or(err("expected quoted password"))?;
        let secret = Secret::parse(&password).map_err(|_| err("malformed SCRAM verifier"))?;
        users.push((user, secret));
    }
    Ok(users)
}

/// Parse one `"..."` field at the start of `s`; returns its unescaped value and the rest of `s`.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut value = String::new();
    loop {
        let (chunk, after) = rest.split_once('"')?;
        value.push_str(chunk);
        match after.strip_prefix('"') {
            Some(after_escape) => {
                value.push('"');
                rest = after_escape;
            }
            None => return Some((value, after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> (usize, &'static str) {
        match parse(text) {
            Err(Error::Userlist { line, reason }) => (line, reason),
            other => panic!("expected a userlist error, got {other:?}"),
        }
    }

    #[test]
    fn parses_pgbouncer_format() {
        let verifier = crate::auth::scram::Verifier::from_password("pw", b"salt", 4096);
        let md5 = format!("md5{}", "0a".repeat(16));
        let text = format!(
            "; comment\n\n   # another\n\"alice\" \"pa\"\"ss word\"\n\t\"bob\"\t\"{md5}\" extra \"fields\"\r\n\
             \"we\"\"ird\" \"{}\"\n\"nopw\" \"\"\n",
            verifier.to_string_form()
        );
        let users = parse(&text).unwrap();
        let names: Vec<_> = users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "we\"ird", "nopw"]);
        assert!(matches!(&users[0].1, Secret::Plain(p) if p == "pa\"ss word"));
        assert!(matches!(&users[1].1, Secret::Md5(h) if *h == md5));
        assert!(matches!(&users[2].1, Secret::Scram(v) if v.to_string_form() == verifier.to_string_form()));
        assert!(matches!(&users[3].1, Secret::Plain(p) if p.is_empty()));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_report_line_number_without_password() {
        let ok = "\"a\" \"b\"\n";
        assert_eq!(reason(&format!("{ok}alice hunter2\n")), (2, "expected quoted username"));
        assert_eq!(reason(&format!("{ok}\n\"alice\" hunter2")), (3, "expected quoted password"));
        assert_eq!(reason("\"alice\" \"hunter2"), (1, "expected quoted password"));
        assert_eq!(reason("\"alice"), (1, "expected quoted username"));
        assert_eq!(reason("\"alice\""), (1, "expected quoted password"));
        assert_eq!(reason("\"\" \"x\""), (1, "empty username"));
        assert_eq!(reason("\"a\" \"SCRAM-SHA-256$hunter2\""), (1, "malformed SCRAM verifier"));
        let msg = parse("\"alice\" \"hunter2").unwrap_err().to_string();
        assert!(!msg.contains("hunter2") && msg.contains("line 1"), "{msg}");
    }
}
