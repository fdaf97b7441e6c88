//! Writing messages: a forwarded message is the received bytes plus edits (RFC 3261
//! §16.6), a locally generated response copies the request's headers (§8.2.6.2).

use super::header::split_commas;
use super::{Field, HeaderName, Message, span};

/// Edits applied while copying a received message to the wire. Header lines that are
/// not edited are copied byte for byte (folding and compact names included).
#[derive(Debug, Clone)]
pub struct Forward<'a> {
    msg: &'a Message,
    request_uri: Option<&'a [u8]>,
    push_via: Option<&'a [u8]>,
    record_route: Option<&'a [u8]>,
    top_via: ViaEdit<'a>,
    drop_routes: usize,
    drop_headers: Vec<HeaderName>,
    max_forwards: Option<u8>,
    extra: Vec<(&'a str, &'a [u8])>,
    body: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy)]
enum ViaEdit<'a> {
    Keep,
    Drop,
    Replace(&'a [u8]),
}

impl<'a> Forward<'a> {
    pub fn new(msg: &'a Message) -> Self {
        Self {
            msg,
            request_uri: None,
            push_via: None,
            record_route: None,
            top_via: ViaEdit::Keep,
            drop_routes: 0,
            drop_headers: Vec::new(),
            max_forwards: None,
            extra: Vec::new(),
            body: None,
        }
    }

    /// Replaces the Request-URI (§16.6 step 2).
    #[must_use]
    pub fn request_uri(mut self, uri: &'a [u8]) -> Self {
        self.request_uri = Some(uri);
        self
    }

    /// Inserts our Via value above all others (§16.6 step 8).
    #[must_use]
    pub fn push_via(mut self, value: &'a [u8]) -> Self {
        self.push_via = Some(value);
        self
    }

    /// Inserts a Record-Route value above all others (§16.6 step 4).
    #[must_use]
    pub fn record_route(mut self, value: &'a [u8]) -> Self {
        self.record_route = Some(value);
        self
    }

    /// Removes the topmost Via value (a response travelling back, §16.7 step 3).
    #[must_use]
    pub fn drop_top_via(mut self) -> Self {
        self.top_via = ViaEdit::Drop;
        self
    }

    /// Rewrites the topmost Via value, e.g. to add `received`/`rport` (RFC 3581 §4).
    #[must_use]
    pub fn replace_top_via(mut self, value: &'a [u8]) -> Self {
        self.top_via = ViaEdit::Replace(value);
        self
    }

    /// Removes the first Route value (it named us, §16.4).
    #[must_use]
    pub fn drop_first_route(self) -> Self {
        self.drop_routes(1)
    }

    /// Removes every line of a header (e.g. credentials consumed here, RFC 3261 §22.3).
    #[must_use]
    pub fn drop_header(mut self, name: HeaderName) -> Self {
        self.drop_headers.push(name);
        self
    }

    /// Removes the first `n` Route values (ours: one, or two after double
    /// record-routing, RFC 5658 §3.2).
    #[must_use]
    pub fn drop_routes(mut self, n: usize) -> Self {
        self.drop_routes = n;
        self
    }

    /// Sets Max-Forwards (decremented by the caller, §16.6 step 3); added if absent.
    #[must_use]
    pub fn max_forwards(mut self, n: u8) -> Self {
        self.max_forwards = Some(n);
        self
    }

    /// Adds a header line after the edited ones.
    #[must_use]
    pub fn header(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.extra.push((name, value));
        self
    }

    /// Replaces the body (e.g. an SDP edit); Content-Length follows it (RFC 3261
    /// §20.14), in place of the first Content-Length line.
    #[must_use]
    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    /// Appends the edited message to `out`. Content-Length is added when the original
    /// had none, so the result is valid on a stream transport too.
    pub fn write(&self, out: &mut Vec<u8>) {
        let m = self.msg;
        match (self.request_uri, m.method()) {
            (Some(uri), Some(method)) => {
                out.extend_from_slice(method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri);
                out.extend_from_slice(b" SIP/2.0");
            }
            _ => out.extend_from_slice(m.start_line()),
        }
        out.extend_from_slice(b"\r\n");
        if let Some(v) = self.push_via {
            put(out, "Via", v);
        }
        if let Some(v) = self.record_route {
            put(out, "Record-Route", v);
        }
        let mut seen_via = false;
        let mut routes_to_drop = self.drop_routes;
        let mut seen_mf = false;
        let mut seen_cl = false;
        for f in m.fields() {
            if self.drop_headers.contains(&f.name) {
                continue;
            }
            match f.name {
                HeaderName::Via if !seen_via => {
                    seen_via = true;
                    match self.top_via {
                        ViaEdit::Keep => copy_line(out, m, f),
                        ViaEdit::Drop => rewrite_first(out, m, f, "Via", None),
                        ViaEdit::Replace(v) => rewrite_first(out, m, f, "Via", Some(v)),
                    }
                }
                HeaderName::Route if routes_to_drop > 0 => {
                    routes_to_drop -= rewrite_list(out, m, f, "Route", routes_to_drop, None);
                }
                HeaderName::MaxForwards if self.max_forwards.is_some() => {
                    if !seen_mf {
                        put_num(
                            out,
                            "Max-Forwards",
                            u32::from(self.max_forwards.unwrap_or(0)),
                        );
                    }
                    seen_mf = true;
                }
                HeaderName::ContentLength => {
                    match self.body {
                        Some(b) if !seen_cl => put_num(out, "Content-Length", b.len() as u32),
                        Some(_) => {}
                        None => copy_line(out, m, f),
                    }
                    seen_cl = true;
                }
                _ => copy_line(out, m, f),
            }
        }
        if let (Some(n), false) = (self.max_forwards, seen_mf) {
            put_num(out, "Max-Forwards", u32::from(n));
        }
        for (name, value) in &self.extra {
            put(out, name, value);
        }
        let body = self.body.unwrap_or(m.body());
        if !seen_cl {
            put_num(out, "Content-Length", body.len() as u32);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.msg.as_bytes().len() + 256);
        self.write(&mut out);
        out
    }
}

fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_num(out: &mut Vec<u8>, name: &str, n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(out, name, &buf[i..]);
}

fn copy_line(out: &mut Vec<u8>, m: &Message, f: &Field) {
    out.extend_from_slice(&m.data[span(&f.line)]);
    out.extend_from_slice(b"\r\n");
}

/// Writes a list header with its first element replaced (`Some`) or removed (`None`);
/// the line disappears when nothing is left.
fn rewrite_first(out: &mut Vec<u8>, m: &Message, f: &Field, name: &str, first: Option<&[u8]>) {
    rewrite_list(out, m, f, name, 1, first);
}

/// Writes a list header without its first `skip` elements, `first` put in their place;
/// returns how many elements were skipped (fewer when the line has fewer).
fn rewrite_list(
    out: &mut Vec<u8>,
    m: &Message,
    f: &Field,
    name: &str,
    skip: usize,
    first: Option<&[u8]>,
) -> usize {
    let value = &m.data[span(&f.value)];
    let mut elems = split_commas(value);
    let skipped = elems.by_ref().take(skip).count();
    let mut wrote = false;
    let mut sep = |out: &mut Vec<u8>| {
        if wrote {
            out.extend_from_slice(b", ");
        } else {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            wrote = true;
        }
    };
    if let Some(v) = first {
        sep(out);
        out.extend_from_slice(v);
    }
    for e in elems {
        sep(out);
        out.extend_from_slice(e);
    }
    if wrote {
        out.extend_from_slice(b"\r\n");
    }
    skipped
}

/// A response generated here to a received request (RFC 3261 §8.2.6): Via, From, To,
/// Call-ID and CSeq are copied, a To tag is added when given and absent.
#[derive(Debug, Clone)]
pub struct ResponseBuilder<'a> {
    req: &'a Message,
    status: u16,
    reason: &'a str,
    to_tag: Option<&'a [u8]>,
    top_via: Option<&'a [u8]>,
    headers: Vec<(&'a str, &'a [u8])>,
    body: Option<(&'a [u8], &'a [u8])>,
}

impl<'a> ResponseBuilder<'a> {
    pub fn new(req: &'a Message, status: u16, reason: &'a str) -> Self {
        Self {
            req,
            status,
            reason,
            to_tag: None,
            top_via: None,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Tag to add to To when the request's To has none (§8.2.6.2; not on 100).
    #[must_use]
    pub fn to_tag(mut self, tag: &'a [u8]) -> Self {
        self.to_tag = Some(tag);
        self
    }

    /// The top Via as the server transport saw it (with `received`/`rport`, RFC 3581).
    #[must_use]
    pub fn top_via(mut self, value: &'a [u8]) -> Self {
        self.top_via = Some(value);
        self
    }

    #[must_use]
    pub fn header(mut self, name: &'a str, value: &'a [u8]) -> Self {
        self.headers.push((name, value));
        self
    }

    #[must_use]
    pub fn body(mut self, content_type: &'a [u8], body: &'a [u8]) -> Self {
        self.body = Some((content_type, body));
        self
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"SIP/2.0 ");
        let code = self.status.to_string();
        out.extend_from_slice(code.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        let m = self.req;
        let mut seen_via = false;
        for f in m.fields() {
            match f.name {
                HeaderName::Via if !seen_via => {
                    seen_via = true;
                    match self.top_via {
                        Some(v) => rewrite_first(out, m, f, "Via", Some(v)),
                        None => copy_line(out, m, f),
                    }
                }
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    copy_line(out, m, f);
                }
                HeaderName::To => {
                    copy_line(out, m, f);
                    if let (Some(tag), None, true) = (self.to_tag, m.to_tag(), self.status > 100) {
                        out.truncate(out.len() - 2);
                        out.extend_from_slice(b";tag=");
                        out.extend_from_slice(tag);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                _ => {}
            }
        }
        for (name, value) in &self.headers {
            put(out, name, value);
        }
        let body: &[u8] = match self.body {
            Some((ct, body)) => {
                put(out, "Content-Type", ct);
                body
            }
            None => b"",
        };
        put_num(out, "Content-Length", body.len() as u32);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write(&mut out);
        out
    }
}
