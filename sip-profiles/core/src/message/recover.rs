//! What can be read of a request that [`Message::parse`] refused, so that its sender
//! can be told why (RFC 3261 §16.3 item 1, §21.4.1; RFC 4475 §3.1.2): the header lines a
//! response copies (Via, From, To, Call-ID, CSeq, §8.2.6.2) are indexed leniently and
//! the start line is taken apart word by word. Only the error path runs this; valid
//! messages never do.

use bytes::Bytes;

use super::{
    Field, HeaderName, Lines, MAX_HEADERS, MAX_MESSAGE_SIZE, Message, Method, StartLine,
    eq_ignore_case, header_end, offset, split_header_line, trim,
};

impl Message {
    /// Reads a request that [`Message::parse`] refused, for a reply only: `Some` when
    /// the first line holds a method token and at least one header line can be read.
    ///
    /// The result is not the request: its start line is split on any run of SP or HT,
    /// its Request-URI is whatever lies between the method and the last word, header
    /// lines that do not read as `name: value` are left out, Content-Length is not
    /// checked and the body is empty. It serves [`super::ResponseBuilder`] (which copies
    /// Via, From, To, Call-ID and CSeq) and the checks made before answering (a top Via
    /// to answer along, not an ACK). Never forward it. Responses (a first line starting
    /// with `SIP/`) give `None`: a malformed response is dropped (RFC 3261 §18.1.2,
    /// RFC 4475 §3.1.2.19).
    pub fn parse_for_reply(data: Bytes) -> Option<Self> {
        if data.len() > MAX_MESSAGE_SIZE {
            return None;
        }
        let buf = &data[..];
        // Where the header section ends: the blank line, or the end of what arrived.
        let head_end = header_end(buf).unwrap_or(buf.len());
        let first_nl = memchr::memchr(b'\n', &buf[..head_end])?;
        let line_end = if first_nl > 0 && buf[first_nl - 1] == b'\r' {
            first_nl - 1
        } else {
            first_nl
        };
        let start = lenient_request_line(&data, &buf[..line_end])?;
        let mut fields = Vec::with_capacity(16);
        let head = &buf[..(head_end + 2).min(buf.len())];
        let mut lines = Lines::new(head);
        lines.pos = first_nl + 1;
        while let Some(line) = lines.next_span() {
            if fields.len() == MAX_HEADERS {
                break;
            }
            let Ok((name_bytes, value)) = split_header_line(&buf[line.clone()]) else {
                continue;
            };
            let name = HeaderName::from_bytes(name_bytes);
            let name_start = offset(buf, name_bytes);
            let value = trim(value);
            let value_start = offset(buf, value);
            fields.push(Field {
                name,
                name_span: name_start as u32..(name_start + name_bytes.len()) as u32,
                value: value_start as u32..(value_start + value.len()) as u32,
                line: line.start as u32..line.end as u32,
            });
        }
        if fields.is_empty() {
            return None;
        }
        let body = (head_end + 4).min(buf.len()) as u32;
        Some(Self {
            start,
            start_line_end: line_end as u32,
            fields,
            body: body..body,
            data,
        })
    }
}

/// `Method <anything> <last word>`: the method must be a token; the words are split on
/// any run of SP or HT (RFC 4475 `lwsstart`, `trws`, `lwsruri`, `ltgtruri`).
fn lenient_request_line(data: &Bytes, line: &[u8]) -> Option<StartLine> {
    if line.len() >= 4 && eq_ignore_case(&line[..4], b"SIP/") {
        return None;
    }
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t');
    let words: Vec<&[u8]> = line
        .split(is_ws)
        .filter(|w| !w.is_empty())
        .take(64)
        .collect();
    let method = Method::from_token(words.first()?, data)?;
    let uri = match words.as_slice() {
        [_, only] => *only,
        [_, first, .., last] => {
            let from = offset(line, first);
            let to = offset(line, last);
            trim(&line[from..to])
        }
        _ => &line[line.len()..],
    };
    let start = offset(data, uri);
    Some(StartLine::Request {
        method,
        uri: start as u32..(start + uri.len()) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ParseError;

    const HEAD: &str = "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
To: <sip:bob@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\n";

    fn recovered(start: &str, extra: &str) -> (Result<Message, ParseError>, Option<Message>) {
        let data = Bytes::from(format!("{start}\r\n{HEAD}{extra}\r\n"));
        (Message::parse(data.clone()), Message::parse_for_reply(data))
    }

    #[test]
    fn bad_start_lines_keep_the_headers_a_reply_copies() {
        for (line, err) in [
            (
                "INVITE  sip:bob@example.com  SIP/2.0",
                ParseError::BadStartLine,
            ),
            (
                "INVITE sip:bob@example.com SIP/2.0  ",
                ParseError::BadStartLine,
            ),
            (
                "INVITE sip:bob@example.com; lr SIP/2.0",
                ParseError::BadRequestUri,
            ),
            (
                "INVITE <sip:bob@example.com> SIP/2.0",
                ParseError::BadRequestUri,
            ),
            ("INVITE sip:bob@example.com SIP/7.0", ParseError::BadVersion),
        ] {
            let (parsed, m) = recovered(line, "Content-Length: 0\r\n");
            assert_eq!(parsed.err(), Some(err), "{line}");
            let m = m.unwrap_or_else(|| panic!("{line}: nothing recovered"));
            assert_eq!(m.method(), Some(&Method::Invite));
            assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK1"[..]));
            assert_eq!(m.call_id(), Some(&b"c1"[..]));
            assert_eq!(m.from_tag(), Some(&b"1"[..]));
            assert!(m.body().is_empty());
        }
        let (_, m) = recovered("INVITE  sip:bob@example.com  SIP/2.0", "");
        assert_eq!(m.unwrap().request_uri(), Some(&b"sip:bob@example.com"[..]));
    }

    #[test]
    fn bad_content_length_and_header_lines_are_skipped() {
        for extra in [
            "Content-Length: -999\r\n",
            "l: 1\r\nl: 2\r\n",
            "no colon here\r\n",
        ] {
            let (parsed, m) = recovered("INVITE sip:bob@example.com SIP/2.0", extra);
            assert!(parsed.is_err(), "{extra}");
            let m = m.unwrap();
            assert!(m.top_via().is_ok() && m.cseq().is_ok(), "{extra}");
        }
    }

    #[test]
    fn responses_and_garbage_give_nothing() {
        for data in [
            "SIP/2.0 4294967301 big\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
            "hello world",
            "\"quoted\" sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
            "INVITE sip:x SIP/2.0\r\n\r\n",
            "",
        ] {
            assert!(
                Message::parse_for_reply(Bytes::from(data)).is_none(),
                "{data:?}"
            );
        }
    }

    #[test]
    fn every_prefix_is_safe() {
        let data =
            format!("INVITE  sip:bob@example.com SIP/2.0\r\n{HEAD}Content-Length: -1\r\n\r\nbody");
        for n in 0..=data.len() {
            let _ = Message::parse_for_reply(Bytes::copy_from_slice(&data.as_bytes()[..n]));
        }
    }
}
