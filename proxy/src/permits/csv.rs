//! The operator's import format: one `callee,caller` pair a line.
//!
//! ```text
//! # callee,caller          (a line whose first non-blank character is `#` is a comment)
//! bob@example.com,alice@example.com
//! sip:bob@example.com, *@partner.org
//! ```
//!
//! Fields are trimmed; `sip:`/`sips:` prefixes are accepted; blank lines are ignored;
//! CRLF line ends and a UTF-8 byte-order mark are accepted. There is no quoting: an AOR
//! never holds a comma. Every bad line is reported with its number, and a file with any
//! bad line imports nothing.

use std::fmt;
use std::io::BufRead;

use super::PermitError;
use super::aor::{Aor, PermitEntry};

/// Bad lines are reported up to this many; the count covers all of them.
const MAX_REPORTED: usize = 20;

/// The bad lines of an import, by line number (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvErrors {
    /// `(line, reason)` of the first bad lines.
    pub lines: Vec<(usize, String)>,
    /// How many lines were bad in all.
    pub total: usize,
}

impl fmt::Display for CsvErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bad line(s), nothing imported", self.total)?;
        for (line, reason) in &self.lines {
            write!(f, "; line {line}: {reason}")?;
        }
        if self.total > self.lines.len() {
            write!(f, "; ...")?;
        }
        Ok(())
    }
}

/// Reads every pair of `reader`; `PermitError::Csv` if any line is bad.
pub(crate) fn parse(mut reader: impl BufRead) -> Result<Vec<(Aor, PermitEntry)>, PermitError> {
    let mut out = Vec::new();
    let mut bad = CsvErrors {
        lines: Vec::new(),
        total: 0,
    };
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(PermitError::Read)?
            == 0
        {
            break;
        }
        number += 1;
        match parse_line(&buf, number == 1) {
            Ok(Some(pair)) => out.push(pair),
            Ok(None) => {}
            Err(reason) => {
                bad.total += 1;
                if bad.lines.len() < MAX_REPORTED {
                    bad.lines.push((number, reason));
                }
            }
        }
    }
    if bad.total > 0 {
        return Err(PermitError::Csv(bad));
    }
    Ok(out)
}

/// One line: `Ok(None)` for a blank or comment line.
fn parse_line(raw: &[u8], first: bool) -> Result<Option<(Aor, PermitEntry)>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())?;
    let text = if first {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    };
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let mut fields = text.split(',');
    let (Some(callee), Some(caller), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected two fields: callee,caller".to_owned());
    };
    let callee = Aor::parse(callee).map_err(|e| format!("callee: {e}"))?;
    let caller = PermitEntry::parse(caller).map_err(|e| format!("caller: {e}"))?;
    Ok(Some((callee, caller)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_lines_comments_and_blanks() {
        let input = "\u{feff}# callee,caller\r\n\
                     bob@example.com,alice@example.com\r\n\
                     \n\
                     \t # indented comment\n\
                     sip:Bob@EXAMPLE.com , *@Partner.org\n\
                     carol@example.com,sip:dave@example.com";
        let rows = parse(input.as_bytes()).unwrap();
        let text: Vec<(String, String)> = rows
            .iter()
            .map(|(c, e)| (c.to_string(), e.to_string()))
            .collect();
        assert_eq!(
            text,
            [
                ("bob@example.com", "alice@example.com"),
                ("Bob@example.com", "*@partner.org"),
                ("carol@example.com", "dave@example.com"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        let input = b"bob@example.com,alice@example.com\n\
                      bob@example.com\n\
                      # fine\n\
                      bob@example.com,alice@example.com,extra\n\
                      *@example.com,alice@example.com\n\
                      bob@example.com,alice\n\
                      bob@example.com,\xff@x\n";
        let Err(PermitError::Csv(e)) = parse(&input[..]) else {
            panic!("bad input accepted");
        };
        let numbers: Vec<usize> = e.lines.iter().map(|l| l.0).collect();
        assert_eq!(numbers, [2, 4, 5, 6, 7]);
        assert_eq!(e.total, 5);
        assert!(e.lines[2].1.starts_with("callee:"), "{:?}", e.lines[2]);
        assert!(e.lines[3].1.starts_with("caller:"), "{:?}", e.lines[3]);
        assert_eq!(e.lines[4].1, "not UTF-8");
        assert!(e.to_string().contains("line 6: caller:"), "{e}");
    }

    #[test]
    fn reports_are_capped_but_counted() {
        let input = "x\n".repeat(50);
        let Err(PermitError::Csv(e)) = parse(input.as_bytes()) else {
            panic!("bad input accepted");
        };
        assert_eq!((e.lines.len(), e.total), (MAX_REPORTED, 50));
        assert!(e.to_string().ends_with("; ..."));
    }
}
