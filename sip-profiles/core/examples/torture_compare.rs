//! The RFC 4475 torture messages through our layer and through `rsip` 0.4, side by side.
//!
//! Reads every `tests/data/rfc4475/*.sip` and prints a Markdown table: the message, the
//! RFC 4475 section it comes from, what `Message::parse(..).and_then(validate)` says,
//! what `rsip::SipMessage::try_from(&[u8])` says, and what rsip says once the same
//! checks `validate()` makes are asked of its typed headers (rsip's parse keeps header
//! values as untyped strings, so its own parse alone checks less than `validate()`).
//! A last column tells whether rsip prints a message it parsed back as the received
//! bytes, which is what a proxy forwarding through rsip would send.
//!
//! Run: `cargo run -p sip-core --example torture_compare`. Results:
//! docs/parser-measurements.md.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use bytes::Bytes;
use rsip::headers::UntypedHeader;
use rsip::headers::untyped::ToTypedHeader;
use rsip::message::HeadersExt;
use rsip::{Header, SipMessage};
use sip_core::message::Message;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475");

/// The group of RFC 4475 a section number belongs to (the RFC's own headings).
fn group(section: &str) -> &'static str {
    match section {
        s if s.starts_with("3.1.1") => "valid",
        s if s.starts_with("3.1.2") => "invalid",
        s if s.starts_with("3.2") => "transaction",
        s if s.starts_with("3.3") => "application",
        s if s.starts_with("3.4") => "backward compat",
        _ => "?",
    }
}

/// `tag -> section` from the `@@ <tag> <section>` lines of `section3.txt`.
fn sections() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(CORPUS).join("section3.txt")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("@@ "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect()
}

fn ours(data: &[u8]) -> Result<(), String> {
    Message::parse(Bytes::copy_from_slice(data))
        .and_then(|m| m.validate())
        .map_err(|e| format!("{e:?}"))
}

/// rsip's parse; a panic inside rsip is reported as such. `SipMessage::try_from` tries
/// a request, then a response, and reports the last failure; the error given here is
/// the one of the kind the start line names, which says where the message broke.
fn rsip_parse(data: &[u8]) -> Result<SipMessage, String> {
    let caught = |f: &dyn Fn() -> Result<(), rsip::Error>| {
        panic::catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(rsip::Error::Unexpected("panic".to_owned())))
    };
    match panic::catch_unwind(AssertUnwindSafe(|| SipMessage::try_from(data))) {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => {
            let cause = if data.starts_with(b"SIP/") {
                caught(&|| rsip::Response::try_from(data).map(drop))
            } else {
                caught(&|| rsip::Request::try_from(data).map(drop))
            };
            Err(cause.err().unwrap_or(e).to_string())
        }
        Err(_) => Err("panic".to_owned()),
    }
}

/// The checks of `Message::validate` asked of rsip's typed headers: CSeq, Call-ID,
/// From, To and every Via decode; a request's CSeq method is its method; Max-Forwards,
/// when present, is a number.
fn rsip_checked(data: &[u8]) -> Result<(), String> {
    let m = rsip_parse(data)?;
    let checks = || -> Result<(), rsip::Error> {
        let cseq = m.cseq_header()?.typed()?;
        if m.call_id_header()?.value().is_empty() {
            return Err(rsip::Error::missing_header("Call-ID"));
        }
        m.from_header()?.typed()?;
        m.to_header()?.typed()?;
        m.via_header()?;
        for h in rsip::message::HasHeaders::headers(&m).iter() {
            if let Header::Via(v) = h {
                v.typed()?;
            }
        }
        if let SipMessage::Request(r) = &m {
            if r.method != cseq.method {
                return Err(rsip::Error::Unexpected("CSeq method mismatch".into()));
            }
            if let Ok(mf) = m.max_forwards_header() {
                mf.num()?;
            }
        }
        Ok(())
    };
    match panic::catch_unwind(AssertUnwindSafe(checks)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("panic".to_owned()),
    }
}

/// A table cell: `ok`, or the error on one line without `|`, its repeated
/// "Tokenizer error:" prefixes dropped, CRLF shown as `⏎`, cut to a readable length.
fn cell<T>(r: &Result<T, String>) -> String {
    const MAX: usize = 64;
    let Err(e) = r else {
        return "ok".to_owned();
    };
    let mut e = e.as_str();
    while let Some(rest) = e
        .strip_prefix("Tokenizer error: ")
        .or_else(|| e.strip_prefix("tokenizer error: "))
    {
        e = rest;
    }
    let one_line: String = e
        .replace("\r\n", "⏎")
        .chars()
        .map(|c| match c {
            '|' => '¦',
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    let mut s: String = one_line.chars().take(MAX).collect();
    if one_line.chars().count() > MAX {
        s.push('…');
    }
    format!("✗ {s}")
}

fn main() {
    let mut files: Vec<_> = std::fs::read_dir(CORPUS)
        .expect("corpus directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sip"))
        .collect();
    files.sort();
    let sections = sections();
    // rsip panics are caught and reported; keep their messages out of the table.
    panic::set_hook(Box::new(|_| {}));

    println!(
        "| message | RFC 4475 § | group | ours: parse + validate | rsip: try_from | rsip: + typed checks | rsip print = received |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    // Per group: (messages, ours ok, rsip parse ok, rsip checked ok).
    let mut totals: Vec<(&str, [usize; 4])> = Vec::new();
    for path in &files {
        let tag = path.file_stem().unwrap_or_default().to_string_lossy();
        let data = std::fs::read(path).expect("readable corpus file");
        let section = sections
            .iter()
            .find(|(t, _)| *t == tag)
            .map_or("?", |(_, s)| s.as_str());
        let group = group(section);
        let verdicts = [
            ours(&data),
            rsip_parse(&data).map(drop),
            rsip_checked(&data),
        ];
        let [ours_cell, parse_cell, checked_cell] = verdicts.each_ref().map(cell);
        let reprint = match rsip_parse(&data).map(Vec::<u8>::from) {
            Ok(printed) if printed == data => "same".to_owned(),
            Ok(printed) => format!("differs ({} → {} B)", data.len(), printed.len()),
            Err(_) => "–".to_owned(),
        };
        println!(
            "| {tag} | {section} | {group} | {ours_cell} | {parse_cell} | {checked_cell} | {reprint} |"
        );
        let row = if let Some(row) = totals.iter().position(|(name, _)| *name == group) {
            row
        } else {
            totals.push((group, [0; 4]));
            totals.len() - 1
        };
        let counts = &mut totals[row].1;
        counts[0] += 1;
        for (count, verdict) in counts[1..].iter_mut().zip(&verdicts) {
            *count += usize::from(verdict.is_ok());
        }
    }
    println!();
    println!(
        "| group | messages | ours accepts | rsip try_from accepts | rsip + typed checks accepts |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (group, [messages, ours, parsed, checked]) in &totals {
        println!("| {group} | {messages} | {ours} | {parsed} | {checked} |");
    }
}
