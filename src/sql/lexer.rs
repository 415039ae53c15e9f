//! PostgreSQL's lexical structure (4.1 "Lexical Structure"), reduced to what the router
//! needs: words, punctuation, and opaque literals (`'…'` with `''`, `E'…'`, `"…"`,
//! `$tag$…$tag$`, numbers, `$n`), skipping `--` and nested `/* */` comments. It never
//! allocates, and it assumes `standard_conforming_strings = on`. Shared by the statement
//! classifier ([`super::classify`]) and the session-state detector
//! ([`super::session_state`]).

/// A routing hint comment (`/* pgsluice:primary */`) before the first statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hint {
    /// No hint.
    #[default]
    None,
    /// `/* pgsluice:primary */`
    Primary,
    /// `/* pgsluice:replica */`
    Replica,
}

/// An unterminated comment, string, quoted identifier or dollar quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unterminated;

/// A token of the fast path's lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// An unquoted word (keyword or identifier) at `text[start..end]`.
    Word(usize, usize),
    /// One ASCII punctuation or operator byte.
    Punct(u8),
    /// A string, quoted identifier, dollar-quoted body, number or `$n` parameter.
    Opaque,
    /// End of the text.
    End,
}

/// PostgreSQL's lexer, reduced to what classification needs; never allocates.
#[derive(Clone, Copy)]
pub(crate) struct Lexer<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) pos: usize,
    /// Where the last token returned by `next` starts.
    pub(crate) tok_start: usize,
}

// === impl Lexer ===

impl<'a> Lexer<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Lexer<'a> {
        Lexer { b, pos: 0, tok_start: 0 }
    }

    pub(crate) fn peek_at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments; with `hint`, records the first routing hint comment.
    pub(crate) fn skip_trivia(&mut self, mut hint: Option<&mut Hint>) -> Result<(), Unterminated> {
        loop {
            while CLASSES[usize::from(self.peek_at(self.pos))] & SPACE != 0 {
                self.pos += 1;
            }
            match (self.peek_at(self.pos), self.peek_at(self.pos + 1)) {
                (b'-', b'-') => {
                    while self.pos < self.b.len() && !matches!(self.b[self.pos], b'\n' | b'\r') {
                        self.pos += 1;
                    }
                }
                (b'/', b'*') => {
                    let body = self.pos + 2;
                    self.pos = body;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.peek_at(self.pos), self.peek_at(self.pos + 1)) {
                            _ if self.pos >= self.b.len() => return Err(Unterminated),
                            (b'/', b'*') => (depth, self.pos) = (depth + 1, self.pos + 2),
                            (b'*', b'/') => (depth, self.pos) = (depth - 1, self.pos + 2),
                            _ => self.pos += 1,
                        }
                    }
                    if let Some(h) = hint.as_deref_mut() {
                        if *h == Hint::None {
                            *h = parse_hint(&self.b[body..self.pos - 2]);
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// The next token, skipping trivia before it.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Result<Tok, Unterminated> {
        // Inline the common case (single spaces between tokens); comments take the long way.
        while CLASSES[usize::from(self.peek_at(self.pos))] & SPACE != 0 {
            self.pos += 1;
        }
        if matches!(self.peek_at(self.pos), b'-' | b'/') {
            self.skip_trivia(None)?;
        }
        let start = self.pos;
        self.tok_start = start;
        let Some(&c) = self.b.get(start) else { return Ok(Tok::End) };
        match c {
            b'\'' => self.quoted(b'\'', false).map(|()| Tok::Opaque),
            b'"' => self.quoted(b'"', false).map(|()| Tok::Opaque),
            b'$' if self.peek_at(start + 1).is_ascii_digit() => {
                self.pos += 1;
                while self.peek_at(self.pos).is_ascii_digit() {
                    self.pos += 1;
                }
                Ok(Tok::Opaque)
            }
            b'$' => self.dollar_quoted(),
            b'0'..=b'9' => {
                self.number();
                Ok(Tok::Opaque)
            }
            c if is_ident_start(c) => {
                self.pos += 1;
                while is_ident_cont(self.peek_at(self.pos)) {
                    self.pos += 1;
                }
                if self.pos == start + 1 && matches!(c, b'e' | b'E') && self.peek_at(self.pos) == b'\'' {
                    return self.quoted(b'\'', true).map(|()| Tok::Opaque);
                }
                Ok(Tok::Word(start, self.pos))
            }
            c => {
                self.pos += 1;
                Ok(Tok::Punct(c))
            }
        }
    }

    /// A quoted string or identifier starting at `pos`; a doubled quote is an escaped one,
    /// and with `backslash` (`E'…'`) so is a backslash-escaped one.
    pub(crate) fn quoted(&mut self, q: u8, backslash: bool) -> Result<(), Unterminated> {
        let mut i = self.pos + 1;
        while let Some(&c) = self.b.get(i) {
            if (backslash && c == b'\\') || (c == q && self.peek_at(i + 1) == q) {
                i += 2;
            } else if c == q {
                self.pos = i + 1;
                return Ok(());
            } else {
                i += 1;
            }
        }
        self.pos = self.b.len();
        Err(Unterminated)
    }

    /// `$tag$ … $tag$` (tag empty or an identifier without `$`) starting at `pos`; a lone
    /// `$` is punctuation.
    pub(crate) fn dollar_quoted(&mut self) -> Result<Tok, Unterminated> {
        let start = self.pos;
        let mut i = start + 1;
        if is_ident_start(self.peek_at(i)) {
            while is_ident_cont(self.peek_at(i)) && self.peek_at(i) != b'$' {
                i += 1;
            }
        }
        if self.peek_at(i) != b'$' {
            self.pos = start + 1;
            return Ok(Tok::Punct(b'$'));
        }
        let delim = &self.b[start..=i];
        let body = i + 1;
        let close = self.b[body.min(self.b.len())..].windows(delim.len()).position(|w| w == delim);
        match close {
            Some(at) => {
                self.pos = body + at + delim.len();
                Ok(Tok::Opaque)
            }
            None => {
                self.pos = self.b.len();
                Err(Unterminated)
            }
        }
    }

    /// Digits, `_` separators, a fraction and an exponent. Letters after a number start a
    /// new word, as in PostgreSQL before 15 (`1FOR UPDATE` is `1 FOR UPDATE` there).
    pub(crate) fn number(&mut self) {
        while matches!(self.peek_at(self.pos), b'0'..=b'9' | b'_' | b'.') {
            self.pos += 1;
        }
        if matches!(self.peek_at(self.pos), b'e' | b'E') {
            let sign = usize::from(matches!(self.peek_at(self.pos + 1), b'+' | b'-'));
            if self.peek_at(self.pos + 1 + sign).is_ascii_digit() {
                self.pos += 1 + sign;
                while self.peek_at(self.pos).is_ascii_digit() {
                    self.pos += 1;
                }
            }
        }
    }

    pub(crate) fn word(&self, t: Tok) -> &'a [u8] {
        match t {
            Tok::Word(s, e) => &self.b[s..e],
            _ => b"",
        }
    }

    pub(crate) fn is(&self, t: Tok, kw: &[u8]) -> bool {
        self.word(t).eq_ignore_ascii_case(kw)
    }

    /// Consumes the next token if it is the keyword `kw`.
    pub(crate) fn eat(&mut self, kw: &[u8]) -> Result<bool, Unterminated> {
        let mut ahead = *self;
        let t = ahead.next()?;
        let found = ahead.is(t, kw);
        if found {
            *self = ahead;
        }
        Ok(found)
    }
}

/// `w` in upper case in `buf`, or empty if longer than any keyword of interest.
pub(crate) fn upper<'b>(w: &[u8], buf: &'b mut [u8; 12]) -> &'b [u8] {
    let Some(up) = buf.get_mut(..w.len()) else { return b"" };
    for (d, s) in up.iter_mut().zip(w) {
        *d = s.to_ascii_uppercase();
    }
    up
}

/// Byte classes for the lexer's inner loops: one table load per byte.
const IDENT_START: u8 = 1;
const IDENT_CONT: u8 = 2;
const SPACE: u8 = 4;
static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            IDENT_START | IDENT_CONT
        } else if c.is_ascii_digit() || c == b'$' {
            IDENT_CONT
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            SPACE
        } else {
            0
        };
        i += 1;
    }
    t
};

pub(crate) fn is_ident_start(c: u8) -> bool {
    CLASSES[usize::from(c)] & IDENT_START != 0
}

pub(crate) fn is_ident_cont(c: u8) -> bool {
    CLASSES[usize::from(c)] & IDENT_CONT != 0
}

/// `pgsluice:primary` / `pgsluice:replica`, case-insensitive, whitespace anywhere between.
pub(crate) fn parse_hint(body: &[u8]) -> Hint {
    let body = body.trim_ascii();
    let Some((tag, target)) = body.split_at_checked(8) else { return Hint::None };
    let Some(target) = target.trim_ascii_start().strip_prefix(b":") else { return Hint::None };
    if !tag.eq_ignore_ascii_case(b"pgsluice") {
        return Hint::None;
    }
    let target = target.trim_ascii();
    if target.eq_ignore_ascii_case(b"primary") {
        Hint::Primary
    } else if target.eq_ignore_ascii_case(b"replica") {
        Hint::Replica
    } else {
        Hint::None
    }
}
