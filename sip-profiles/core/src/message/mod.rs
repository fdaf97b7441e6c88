//! Raw-first SIP messages (RFC 3261 §7).
//!
//! [`Message::parse`] indexes the received bytes once: the start line and the name and
//! value span of every header line (folded lines included, compact names classified).
//! Nothing is copied and nothing is re-serialised; typed views ([`Via`], [`NameAddr`],
//! [`CSeq`], [`SipUri`]) are decoded on demand from those spans. A proxy forwards the
//! received bytes plus a list of edits ([`Forward`]).

mod edit;
mod error;
mod header;
mod recover;
mod typed;
mod uri;

use std::ops::Range;

use bytes::Bytes;

pub use edit::{Forward, ResponseBuilder};
pub use error::ParseError;
pub use header::{HeaderName, eq_ignore_case, find_unquoted, param, split_commas, trim};
pub use typed::{CSeq, NameAddr, Via};
pub use uri::SipUri;

/// Largest message accepted (bytes). UDP datagrams are at most 65,535 bytes anyway.
pub const MAX_MESSAGE_SIZE: usize = 65_535;
/// Most header lines accepted in one message; more is a flood, not a phone.
pub const MAX_HEADERS: usize = 256;

/// A request method (RFC 3261 §7.1, §27.4). Extension methods keep their bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(Bytes),
}

impl Method {
    /// Classifies a method token (case-sensitive, RFC 3261 §7.1). `None` if not a token.
    pub fn from_token(token: &[u8], backing: &Bytes) -> Option<Self> {
        if token.is_empty() || !token.iter().all(|&b| header::is_token_char(b)) {
            return None;
        }
        Some(match token {
            b"INVITE" => Self::Invite,
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"REGISTER" => Self::Register,
            b"OPTIONS" => Self::Options,
            b"INFO" => Self::Info,
            b"UPDATE" => Self::Update,
            b"PRACK" => Self::Prack,
            b"SUBSCRIBE" => Self::Subscribe,
            b"NOTIFY" => Self::Notify,
            b"REFER" => Self::Refer,
            b"MESSAGE" => Self::Message,
            b"PUBLISH" => Self::Publish,
            _ => Self::Other(backing.slice_ref(token)),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Invite => b"INVITE",
            Self::Ack => b"ACK",
            Self::Bye => b"BYE",
            Self::Cancel => b"CANCEL",
            Self::Register => b"REGISTER",
            Self::Options => b"OPTIONS",
            Self::Info => b"INFO",
            Self::Update => b"UPDATE",
            Self::Prack => b"PRACK",
            Self::Subscribe => b"SUBSCRIBE",
            Self::Notify => b"NOTIFY",
            Self::Refer => b"REFER",
            Self::Message => b"MESSAGE",
            Self::Publish => b"PUBLISH",
            Self::Other(b) => b,
        }
    }
}

/// The first line, as spans into the message.
#[derive(Debug, Clone)]
enum StartLine {
    Request { method: Method, uri: Range<u32> },
    Response { code: u16, reason: Range<u32> },
}

/// One header line: its classified name and the spans of name, value and whole line.
#[derive(Debug, Clone)]
struct Field {
    name: HeaderName,
    name_span: Range<u32>,
    value: Range<u32>,
    line: Range<u32>,
}

/// A received SIP message: the bytes plus an index of them.
#[derive(Debug, Clone)]
pub struct Message {
    data: Bytes,
    start: StartLine,
    start_line_end: u32,
    fields: Vec<Field>,
    body: Range<u32>,
}

fn span(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

/// Position of the blank line ending the header section (index of its first CR).
fn header_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n")
}

/// Stream framing (RFC 3261 §18.3): the length of the first complete message in `buf`,
/// `Ok(None)` if more bytes are needed. Leading CRLFs (keep-alives, RFC 5626 §4.4.1) are
/// part of nothing: call [`skip_keepalives`] first.
///
/// Content-Length is mandatory on streams (§18.3, §20.14); a header section without one
/// is framed as a message without a body, so that the stream stays in step with a peer
/// that sends none (an RFC 2543 request, stray octets ending in an empty line; RFC 4475
/// `inv2543`, `dblreq`). Lines that are not `name: value` are left to the parser. An
/// invalid or repeated Content-Length is an error (`BadHeader`): where the message ends
/// is unknown, and [`stream_head`] is all that can be read of it. A first line with
/// control octets is `BadStartLine`: not SIP at all.
pub fn stream_frame(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let Some(end) = header_end(buf) else {
        return if buf.len() > MAX_MESSAGE_SIZE {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = &buf[..end + 2];
    let first = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    // A first line with control octets is no SIP start line but another protocol (a TLS
    // record on a TCP port, say): the stream cannot be SIP.
    if head[..first]
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f)
    {
        return Err(ParseError::BadStartLine);
    }
    let mut len = None;
    for line in Lines::new(&head[first..]) {
        let Ok((name, value)) = split_header_line(line) else {
            continue;
        };
        if HeaderName::from_bytes(name) == HeaderName::ContentLength {
            // Two values leave the body length unknown (RFC 4475 `mcl01`).
            if len.is_some() {
                return Err(ParseError::BadHeader("Content-Length"));
            }
            len = Some(parse_content_length(value)?);
        }
    }
    let total = end + 4 + len.unwrap_or(0);
    if total > MAX_MESSAGE_SIZE {
        return Err(ParseError::TooLarge);
    }
    Ok((buf.len() >= total).then_some(total))
}

/// The length of the header section at the front of `buf` (through its empty line), if
/// it is complete: what can be handed to [`Message::parse_for_reply`] when
/// [`stream_frame`] fails.
pub fn stream_head(buf: &[u8]) -> Option<usize> {
    header_end(buf).map(|end| end + 4)
}

/// Number of leading CR/LF bytes (keep-alive pings on a stream, RFC 5626 §3.5.1).
pub fn skip_keepalives(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

fn parse_content_length(value: &[u8]) -> Result<usize, ParseError> {
    let v = trim(value);
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadHeader("Content-Length"));
    }
    Ok(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Iterates logical header lines (continuations joined) of a header block that ends in CRLF.
struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let r = self.next_span()?;
        Some(&self.buf[r])
    }
}

impl Lines<'_> {
    /// Span of the next logical line, without its final CRLF.
    fn next_span(&mut self) -> Option<Range<usize>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let mut at = start;
        loop {
            let nl = memchr::memchr(b'\n', &self.buf[at..]).map_or(self.buf.len(), |i| at + i);
            let next = nl + 1;
            // A following line that starts with SP/HT continues this one (§7.3.1).
            if next < self.buf.len() && matches!(self.buf[next], b' ' | b'\t') {
                at = next;
                continue;
            }
            self.pos = next.min(self.buf.len());
            let mut end = nl.min(self.buf.len());
            if end > start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            return Some(start..end);
        }
    }
}

/// `name HCOLON value` (RFC 3261 §7.3.1): token name, optional WS before the colon.
fn split_header_line(line: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let colon = memchr::memchr(b':', line).ok_or(ParseError::BadHeaderLine)?;
    let name = trim(&line[..colon]);
    if name.is_empty() || !name.iter().all(|&b| header::is_token_char(b)) {
        return Err(ParseError::BadHeaderLine);
    }
    Ok((name, &line[colon + 1..]))
}

impl Message {
    /// Parses one complete message (a datagram, or a frame cut by [`stream_frame`]).
    ///
    /// Syntax only: see [`Message::validate`] for the checks a proxy makes before it acts.
    /// Bytes beyond Content-Length are ignored; a Content-Length larger than what was
    /// received is an error (RFC 3261 §18.3). Without Content-Length the body runs to the end.
    pub fn parse(data: Bytes) -> Result<Self, ParseError> {
        Self::parse_with(data, false)
    }

    /// Parses a datagram whose Content-Length exceeds what arrived, keeping the body
    /// short, so that its sender can be told why with a 400 (RFC 3261 §18.3). `Ok` only
    /// for such a message: use it after [`Message::parse`] failed with
    /// [`ParseError::ContentLengthMismatch`].
    pub fn parse_truncated(data: Bytes) -> Result<Self, ParseError> {
        Self::parse_with(data, true)
    }

    fn parse_with(data: Bytes, truncated: bool) -> Result<Self, ParseError> {
        if data.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::TooLarge);
        }
        let buf = &data[..];
        let head_end = match header_end(buf) {
            Some(e) => e,
            None if buf.ends_with(b"\r\n") => buf.len() - 2,
            None => return Err(ParseError::Incomplete),
        };
        let first_nl = memchr::memchr(b'\n', buf).ok_or(ParseError::BadStartLine)?;
        if first_nl == 0 || buf[first_nl - 1] != b'\r' {
            return Err(ParseError::BadStartLine);
        }
        let start_line_end = first_nl - 1;
        let start = parse_start_line(&data, &buf[..start_line_end])?;

        let head_start = first_nl + 1;
        let mut fields = Vec::with_capacity(16);
        let mut content_length = None;
        if head_start <= head_end {
            let mut lines = Lines::new(&buf[..head_end + 2]);
            lines.pos = head_start;
            while let Some(line) = lines.next_span() {
                if fields.len() == MAX_HEADERS {
                    return Err(ParseError::TooLarge);
                }
                let (name_bytes, value) = split_header_line(&buf[line.clone()])?;
                let name = HeaderName::from_bytes(name_bytes);
                let name_start = offset(buf, name_bytes);
                let value = trim(value);
                let value_start = offset(buf, value);
                if name == HeaderName::ContentLength {
                    // Two Content-Length headers leave the body length unknown (RFC 4475 `mcl01`).
                    if content_length.is_some() {
                        return Err(ParseError::BadHeader("Content-Length"));
                    }
                    content_length = Some(parse_content_length(value)?);
                }
                fields.push(Field {
                    name,
                    name_span: name_start as u32..(name_start + name_bytes.len()) as u32,
                    value: value_start as u32..(value_start + value.len()) as u32,
                    line: line.start as u32..line.end as u32,
                });
            }
        }
        let body_start = (head_end + 4).min(buf.len());
        let body_end = match content_length {
            Some(n) if body_start + n > buf.len() && !truncated => {
                return Err(ParseError::ContentLengthMismatch);
            }
            Some(_) if truncated => buf.len(),
            Some(n) => body_start + n,
            None => buf.len(),
        };
        Ok(Self {
            start,
            start_line_end: start_line_end as u32,
            fields,
            body: body_start as u32..body_end as u32,
            data,
        })
    }

    /// The received bytes, exactly (up to the end of the body).
    pub fn as_bytes(&self) -> &[u8] {
        &self.data[..self.body.end as usize]
    }

    /// The backing buffer, for zero-copy slicing.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(&self.data[span(uri)]),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase, byte-exact (it may be UTF-8, RFC 4475 `unreason`, or empty).
    pub fn reason(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(&self.data[span(reason)]),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of a header, trimmed; folded lines keep their inner CRLF.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.headers(name).next()
    }

    /// The value of every header line with this name, in received order.
    pub fn headers(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(move |f| f.name == name)
            .map(|f| &self.data[span(&f.value)])
    }

    /// Values of an unknown (extension) header, matched case-insensitively by name.
    pub fn other_headers<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.fields
            .iter()
            .filter(move |f| {
                f.name == HeaderName::Other && eq_ignore_case(&self.data[span(&f.name_span)], name)
            })
            .map(|f| &self.data[span(&f.value)])
    }

    /// Every element of a comma-list header across all its lines (Via, Route, Contact…).
    pub fn list(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> {
        self.headers(name).flat_map(split_commas)
    }

    pub fn body(&self) -> &[u8] {
        &self.data[span(&self.body)]
    }

    pub fn call_id(&self) -> Option<&[u8]> {
        self.header(HeaderName::CallId)
    }

    pub fn top_via(&self) -> Result<Via<'_>, ParseError> {
        let v = self
            .list(HeaderName::Via)
            .next()
            .ok_or(ParseError::MissingHeader("Via"))?;
        Via::parse(v)
    }

    /// Every Via value (comma lists split), parsed.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, ParseError>> {
        self.list(HeaderName::Via).map(Via::parse)
    }

    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        let v = self
            .header(HeaderName::CSeq)
            .ok_or(ParseError::MissingHeader("CSeq"))?;
        CSeq::parse(v, &self.data)
    }

    pub fn from(&self) -> Result<NameAddr<'_>, ParseError> {
        let v = self
            .header(HeaderName::From)
            .ok_or(ParseError::MissingHeader("From"))?;
        NameAddr::parse(v).ok_or(ParseError::BadHeader("From"))
    }

    pub fn to(&self) -> Result<NameAddr<'_>, ParseError> {
        let v = self
            .header(HeaderName::To)
            .ok_or(ParseError::MissingHeader("To"))?;
        NameAddr::parse(v).ok_or(ParseError::BadHeader("To"))
    }

    pub fn from_tag(&self) -> Option<&[u8]> {
        self.from().ok()?.param(b"tag")
    }

    pub fn to_tag(&self) -> Option<&[u8]> {
        self.to().ok()?.param(b"tag")
    }

    /// Max-Forwards (RFC 3261 §20.22): `Ok(None)` when absent.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        let Some(v) = self.header(HeaderName::MaxForwards) else {
            return Ok(None);
        };
        // Leading zeros are allowed (RFC 4475 `wsinv` has `0068`); the value is 0..=255.
        parse_u32(trim(v))
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or(ParseError::BadHeader("Max-Forwards"))
    }

    /// Expires header (RFC 3261 §20.19) as seconds, if present and numeric.
    pub fn expires(&self) -> Result<Option<u32>, ParseError> {
        let Some(v) = self.header(HeaderName::Expires) else {
            return Ok(None);
        };
        parse_u32(trim(v))
            .map(Some)
            .ok_or(ParseError::BadHeader("Expires"))
    }

    /// The checks a proxy or registrar makes before acting (RFC 3261 §8.2, §16.3):
    /// mandatory headers present and decodable, CSeq method equal to the request method,
    /// Max-Forwards in range, a topmost Via with a sent-by.
    pub fn validate(&self) -> Result<(), ParseError> {
        // Headers that carry one value (§7.3.1, §20): a second one is malformed (RFC 4475 `multi01`).
        for (name, text) in [
            (HeaderName::CallId, "Call-ID"),
            (HeaderName::CSeq, "CSeq"),
            (HeaderName::From, "From"),
            (HeaderName::To, "To"),
            (HeaderName::MaxForwards, "Max-Forwards"),
        ] {
            if self.headers(name).nth(1).is_some() {
                return Err(ParseError::BadHeader(text));
            }
        }
        let cseq = self.cseq()?;
        self.call_id()
            .filter(|c| !c.is_empty())
            .ok_or(ParseError::MissingHeader("Call-ID"))?;
        let from = self.from()?;
        let to = self.to()?;
        if SipUri::parse(from.uri).is_none() && !is_absolute_uri(from.uri) {
            return Err(ParseError::BadHeader("From"));
        }
        if SipUri::parse(to.uri).is_none() && !is_absolute_uri(to.uri) {
            return Err(ParseError::BadHeader("To"));
        }
        for via in self.vias() {
            via?;
        }
        self.top_via()?;
        if let Some(method) = self.method() {
            if *method != cseq.method {
                return Err(ParseError::CSeqMethodMismatch);
            }
            self.max_forwards()?;
        }
        Ok(())
    }

    /// Spans used by the edit writer.
    fn start_line(&self) -> &[u8] {
        &self.data[..self.start_line_end as usize]
    }

    fn fields(&self) -> &[Field] {
        &self.fields
    }
}

fn parse_u32(v: &[u8]) -> Option<u32> {
    let first = v
        .iter()
        .position(|&b| b != b'0')
        .unwrap_or(v.len().saturating_sub(1));
    let v = &v[first.min(v.len())..];
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n).ok()
}

/// RFC 3261 §25.1 absoluteURI (scheme ":" ...), for non-SIP URIs in From/To (e.g. tel:).
fn is_absolute_uri(u: &[u8]) -> bool {
    match memchr::memchr(b':', u) {
        Some(i) if i > 0 => {
            u[0].is_ascii_alphabetic()
                && u[..i]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                && !u[i + 1..].iter().any(|&b| is_lws(b))
        }
        _ => false,
    }
}

use header::is_lws;

fn offset(buf: &[u8], sub: &[u8]) -> usize {
    sub.as_ptr() as usize - buf.as_ptr() as usize
}

const SIP_VERSION: &[u8] = b"SIP/2.0";

fn parse_start_line(data: &Bytes, line: &[u8]) -> Result<StartLine, ParseError> {
    if line.len() >= 4 && eq_ignore_case(&line[..4], b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (§7.2)
        let sp = memchr::memchr(b' ', line).ok_or(ParseError::BadStartLine)?;
        if !eq_ignore_case(&line[..sp], SIP_VERSION) {
            return Err(ParseError::BadVersion);
        }
        let rest = &line[sp + 1..];
        let code_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let code = &rest[..code_end];
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(ParseError::BadStatusCode);
        }
        let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatusCode);
        }
        let reason_start = offset(data, rest) + (code_end + 1).min(rest.len());
        let reason_end = offset(data, line) + line.len();
        return Ok(StartLine::Response {
            code,
            reason: reason_start as u32..reason_end as u32,
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version (§7.1): single SPs, no LWS.
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Whitespace inside the Request-URI (RFC 4475 `lwsruri`) vs a broken line.
        let words = line.split(|&b| b == b' ').filter(|w| !w.is_empty()).count();
        let version_last = line.len() >= 7 && eq_ignore_case(&line[line.len() - 7..], SIP_VERSION);
        return Err(
            if words > 3
                && version_last
                && !line.contains(&b'\t')
                && !line.windows(2).any(|w| w == b"  ")
            {
                ParseError::BadRequestUri
            } else {
                ParseError::BadStartLine
            },
        );
    };
    let method = Method::from_token(method, data).ok_or(ParseError::BadMethod)?;
    if !eq_ignore_case(version, SIP_VERSION) {
        return Err(ParseError::BadVersion);
    }
    if !is_absolute_uri(uri) || uri.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return Err(ParseError::BadRequestUri);
    }
    if uri.starts_with(b"sip:") || uri.starts_with(b"sips:") {
        // §19.1.5: escaped headers are not allowed in a Request-URI (RFC 4475 `escruri`).
        match SipUri::parse(uri) {
            Some(u) if u.headers.is_none() => {}
            _ => return Err(ParseError::BadRequestUri),
        }
    }
    let start = offset(data, uri);
    Ok(StartLine::Request {
        method,
        uri: start as u32..(start + uri.len()) as u32,
    })
}

#[cfg(test)]
mod tests;
