//! Lexing of auth-params: tokens, quoted strings, linear white space with folding
//! (RFC 3261 §25.1: `LWS = [*WSP CRLF] 1*WSP`, `quoted-string`, `quoted-pair`).

use std::borrow::Cow;

use super::credentials::{DigestError, MAX_VALUE_LEN};

use DigestError::Malformed;

/// A position in a header value already checked to be UTF-8. Every stop is at an
/// ASCII byte, so every slice taken is on a character boundary.
pub(crate) struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes().get(self.pos + offset).copied()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// Consumes `b` if it is next.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek_at(0) == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Length of a line break at the cursor (`CRLF`, or a bare `LF` from a lenient
    /// sender), or 0.
    fn line_break(&self) -> usize {
        match (self.peek_at(0), self.peek_at(1)) {
            (Some(b'\r'), Some(b'\n')) => 2,
            (Some(b'\n'), _) => 1,
            _ => 0,
        }
    }

    /// Skips linear white space, folded lines included, and a line break that ends
    /// the value. Returns whether anything was skipped. A line break followed by
    /// anything but white space would start a new header line: malformed.
    pub(crate) fn skip_lws(&mut self) -> Result<bool, DigestError> {
        let start = self.pos;
        loop {
            match self.peek_at(0) {
                Some(b) if is_wsp(b) => self.pos += 1,
                Some(b'\r' | b'\n') => {
                    let n = self.line_break();
                    if n == 0 {
                        return Err(Malformed("bare CR in credentials"));
                    }
                    match self.peek_at(n) {
                        None => self.pos += n,
                        Some(b) if is_wsp(b) => self.pos += n,
                        Some(_) => return Err(Malformed("line break without folding")),
                    }
                }
                _ => return Ok(self.pos > start),
            }
        }
    }

    /// The longest run of token characters (possibly empty).
    pub(crate) fn token(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek_at(0).is_some_and(is_token) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    /// A parameter value: a quoted string, or a bare run of visible characters up to
    /// white space or `,` (a superset of `token`, tolerating unquoted URIs and
    /// base64 nonces some user agents send).
    pub(crate) fn value(&mut self) -> Result<Cow<'a, str>, DigestError> {
        if self.eat(b'"') {
            return self.quoted_rest();
        }
        let start = self.pos;
        while self
            .peek_at(0)
            .is_some_and(|b| b > b' ' && b != 0x7f && b != b',' && b != b'"')
        {
            self.pos += 1;
        }
        let len = self.pos - start;
        if len == 0 {
            return Err(Malformed("empty parameter value"));
        }
        if len > MAX_VALUE_LEN {
            return Err(Malformed("parameter value too long"));
        }
        Ok(Cow::Borrowed(&self.text[start..self.pos]))
    }

    /// The rest of a quoted string after its opening `"`. Quoted-pairs are undone; a
    /// folded line becomes one space (RFC 3261 §7.3.1). Borrowed when neither occurs.
    fn quoted_rest(&mut self) -> Result<Cow<'a, str>, DigestError> {
        let start = self.pos;
        // Set at the first escape or fold: the unquoted bytes so far, then the rest.
        let mut owned: Option<Vec<u8>> = None;
        loop {
            if self.pos - start > MAX_VALUE_LEN {
                return Err(Malformed("parameter value too long"));
            }
            let Some(b) = self.peek_at(0) else {
                return Err(Malformed("unterminated quoted string"));
            };
            match b {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    return match owned {
                        None => Ok(Cow::Borrowed(&self.text[start..end])),
                        Some(v) => String::from_utf8(v)
                            .map(Cow::Owned)
                            .map_err(|_| Malformed("quoted string not UTF-8")),
                    };
                }
                b'\\' => {
                    let escaped = match self.peek_at(1) {
                        Some(b'\r' | b'\n') | None => {
                            return Err(Malformed("bad quoted-pair"));
                        }
                        Some(e) => e,
                    };
                    owned
                        .get_or_insert_with(|| self.bytes()[start..self.pos].to_vec())
                        .push(escaped);
                    self.pos += 2;
                }
                b'\r' | b'\n' => {
                    let n = self.line_break();
                    if n == 0 || !self.peek_at(n).is_some_and(is_wsp) {
                        return Err(Malformed("line break inside quoted string"));
                    }
                    owned
                        .get_or_insert_with(|| self.bytes()[start..self.pos].to_vec())
                        .push(b' ');
                    self.pos += n;
                    while self.peek_at(0).is_some_and(is_wsp) {
                        self.pos += 1;
                    }
                }
                b if (b < b' ' && b != b'\t') || b == 0x7f => {
                    return Err(Malformed("control character in quoted string"));
                }
                b => {
                    if let Some(v) = owned.as_mut() {
                        v.push(b);
                    }
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::Cursor;
    use crate::digest::DigestError::Malformed;

    fn quoted(s: &str) -> Result<Cow<'_, str>, crate::digest::DigestError> {
        let mut c = Cursor::new(s);
        assert!(c.eat(b'"'));
        c.quoted_rest()
    }

    #[test]
    fn quoted_strings_borrow_unless_escaped_or_folded() {
        assert!(matches!(quoted("\"plain\""), Ok(Cow::Borrowed("plain"))));
        assert_eq!(quoted(r#""a\"b\\c""#).unwrap(), "a\"b\\c");
        assert!(matches!(quoted(r#""a\"b""#), Ok(Cow::Owned(_))));
        assert_eq!(quoted("\"one\r\n \t two\"").unwrap(), "one two");
        assert_eq!(quoted("\"ünï\\cödé\"").unwrap(), "ünïcödé");
    }

    #[test]
    fn broken_quoted_strings_are_malformed() {
        for bad in [
            "\"open",
            "\"a\r\nb\"",
            "\"a\\",
            "\"nul\0\"",
            "\"a\\\r\n b\"",
        ] {
            assert!(matches!(quoted(bad), Err(Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn lws_folds_and_stops_at_a_new_line() {
        let mut c = Cursor::new(" \t\r\n  x");
        assert_eq!(c.skip_lws(), Ok(true));
        assert_eq!(c.token(), "x");
        let mut c = Cursor::new("\r\n");
        assert_eq!(c.skip_lws(), Ok(true));
        assert!(c.at_end());
        assert!(Cursor::new("\r\nX").skip_lws().is_err());
        assert!(Cursor::new("\rX").skip_lws().is_err());
        assert_eq!(Cursor::new("x").skip_lws(), Ok(false));
    }
}
