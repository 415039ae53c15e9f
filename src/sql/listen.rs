//! `LISTEN` / `UNLISTEN` requests that pgsluice answers itself in transaction mode (issue
//! 17, `crate::notify`): a query text made only of such statements is parsed into the
//! channel operations it asks for; anything else is left to the server.
//!
//! Channel names follow PostgreSQL (4.1.1 "Identifiers and Key Words"): an unquoted name is
//! folded to lower case (ASCII, as PostgreSQL does in UTF-8), a quoted one keeps its case
//! (`""` is a quote), and both are truncated to 63 bytes (`NAMEDATALEN - 1`) at a character
//! boundary. `U&"…"` names are not parsed (the request goes to the server).
//!
//! Invariant: [`parse`] returns `Some` only when every statement of the text is a `LISTEN`
//! or `UNLISTEN` it understood, so what pgsluice answers is exactly what was asked.

use super::lexer::{Lexer, Tok};

/// Longest channel name PostgreSQL keeps (`NAMEDATALEN - 1`).
pub const MAX_CHANNEL_LEN: usize = 63;

/// One statement of a LISTEN-only request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `LISTEN channel`.
    Listen(Box<str>),
    /// `UNLISTEN channel`.
    Unlisten(Box<str>),
    /// `UNLISTEN *`.
    UnlistenAll,
}

/// Whether `text` may start with `LISTEN` or `UNLISTEN` (or a comment): the cheap test done
/// before [`parse`] on every request of an idle client.
#[inline]
pub fn may_be_listen(text: &[u8]) -> bool {
    let first = text.iter().copied().find(|c| !c.is_ascii_whitespace());
    matches!(first, Some(b'l' | b'L' | b'u' | b'U' | b'-' | b'/'))
}

/// Whether `text` is `DISCARD ALL` (which drops the session's LISTENs in PostgreSQL).
pub fn is_discard_all(text: &[u8]) -> bool {
    let mut lx = Lexer::new(text);
    let mut word = |kw: &[u8]| matches!(lx.next(), Ok(t @ Tok::Word(..)) if lx.word(t).eq_ignore_ascii_case(kw));
    word(b"DISCARD") && word(b"ALL")
}

/// The operations of a text made only of `LISTEN` / `UNLISTEN` statements (at least one),
/// in order; `None` for anything else.
pub fn parse(text: &[u8]) -> Option<Vec<Op>> {
    if !may_be_listen(text) {
        return None;
    }
    let mut lx = Lexer::new(text);
    let mut ops = Vec::new();
    loop {
        let mut t = lx.next().ok()?;
        while t == Tok::Punct(b';') {
            t = lx.next().ok()?;
        }
        if t == Tok::End {
            break;
        }
        let Tok::Word(..) = t else { return None };
        let kw = lx.word(t);
        let listen = if kw.eq_ignore_ascii_case(b"LISTEN") {
            true
        } else if kw.eq_ignore_ascii_case(b"UNLISTEN") {
            false
        } else {
            return None;
        };
        let name = lx.next().ok()?;
        let start = lx.tok_start;
        let op = match name {
            Tok::Punct(b'*') if !listen => Op::UnlistenAll,
            Tok::Word(s, e) => {
                let folded = std::str::from_utf8(&text[s..e]).ok()?.to_ascii_lowercase();
                channel_op(listen, truncate(folded))
            }
            Tok::Opaque if text[start] == b'"' => {
                let inner = std::str::from_utf8(&text[start + 1..lx.pos - 1]).ok()?;
                if inner.is_empty() {
                    return None; // a zero-length delimited identifier: the server's error
                }
                channel_op(listen, truncate(inner.replace("\"\"", "\"")))
            }
            _ => return None,
        };
        ops.push(op);
        match lx.next().ok()? {
            Tok::Punct(b';') => {}
            Tok::End => break,
            _ => return None,
        }
    }
    (!ops.is_empty()).then_some(ops)
}

fn channel_op(listen: bool, name: String) -> Op {
    if listen {
        Op::Listen(name.into())
    } else {
        Op::Unlisten(name.into())
    }
}

/// Cuts `s` to [`MAX_CHANNEL_LEN`] bytes at a character boundary, as PostgreSQL truncates
/// identifiers.
fn truncate(mut s: String) -> String {
    if s.len() > MAX_CHANNEL_LEN {
        let mut cut = MAX_CHANNEL_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `name` as a quoted identifier for the server (`"` doubled).
pub fn quote_channel(name: &str, out: &mut String) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(text: &str) -> Option<Vec<Op>> {
        parse(text.as_bytes())
    }

    #[test]
    fn listen_only_requests_are_parsed_with_postgres_case_folding() {
        assert_eq!(ops("LISTEN Foo"), Some(vec![Op::Listen("foo".into())]));
        assert_eq!(ops("listen \"Foo\";"), Some(vec![Op::Listen("Foo".into())]));
        assert_eq!(ops("LISTEN \"a\"\"b\""), Some(vec![Op::Listen("a\"b".into())]));
        assert_eq!(
            ops("/* c */ LISTEN a; unlisten B ;UNLISTEN *"),
            Some(vec![Op::Listen("a".into()), Op::Unlisten("b".into()), Op::UnlistenAll])
        );
        let long = "x".repeat(70);
        assert_eq!(ops(&format!("LISTEN {long}")), Some(vec![Op::Listen("x".repeat(63).into())]));
    }

    #[test]
    fn anything_else_goes_to_the_server() {
        for text in [
            "",
            ";",
            "SELECT 1",
            "LISTEN a; SELECT 1",
            "LISTEN",
            "LISTEN *",
            "LISTEN a b",
            "LISTEN 'a'",
            "LISTEN \"\"",
            "LISTEN U&\"a\"",
            "LISTEN \"unterminated",
            "BEGIN; LISTEN a; COMMIT",
        ] {
            assert_eq!(ops(text), None, "{text:?}");
        }
    }

    #[test]
    fn discard_all_is_recognised() {
        assert!(is_discard_all(b"discard  ALL"));
        assert!(is_discard_all(b"/* x */ DISCARD ALL;"));
        assert!(!is_discard_all(b"DISCARD TEMP"));
        assert!(!is_discard_all(b"SELECT 'DISCARD ALL'"));
    }

    #[test]
    fn channels_are_quoted_for_the_server() {
        let mut s = String::new();
        quote_channel("a\"B", &mut s);
        assert_eq!(s, "\"a\"\"B\"");
    }
}
