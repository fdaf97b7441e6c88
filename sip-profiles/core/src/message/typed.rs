//! Typed views decoded on demand from a header value: Via (RFC 3261 §20.42), name-addr
//! headers such as From/To/Contact/Route (§20.10, §20.20, §20.39), and CSeq (§20.16).

use bytes::Bytes;

use super::header::{find_unquoted, is_lws, is_token_char, param, trim};
use super::{Method, ParseError};

/// One Via value: `SIP/2.0/UDP host:port;branch=...;rport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport token as received (`UDP`, `tcp`, `TLS`, `SCTP`, extension).
    pub transport: &'a [u8],
    /// Host of the sent-by, brackets kept for IPv6 references.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// Everything from the first `;` on.
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    /// Parses one Via value (one element of a comma list), LWS allowed around `/` (§20.42).
    pub fn parse(v: &'a [u8]) -> Result<Self, ParseError> {
        const BAD: ParseError = ParseError::BadHeader("Via");
        let (proto, rest) = split_slash(v).ok_or(BAD)?;
        if !proto.eq_ignore_ascii_case(b"SIP") {
            return Err(BAD);
        }
        let (version, rest) = split_slash(rest).ok_or(BAD)?;
        if version != b"2.0" {
            return Err(BAD);
        }
        let rest = skip_lws(rest);
        let t_end = rest
            .iter()
            .position(|&b| !is_token_char(b))
            .unwrap_or(rest.len());
        let transport = &rest[..t_end];
        if transport.is_empty() {
            return Err(BAD);
        }
        let rest = &rest[t_end..];
        if rest.first().is_none_or(|&b| !is_lws(b)) {
            return Err(BAD);
        }
        let rest = skip_lws(rest);
        let p = find_unquoted(rest, b';').unwrap_or(rest.len());
        let sent_by = trim(&rest[..p]);
        let params = &rest[p..];
        let (host, port) = split_host_port(sent_by).ok_or(BAD)?;
        Ok(Self {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&'a [u8]> {
        param(self.params, b"branch").filter(|b| !b.is_empty())
    }

    pub fn received(&self) -> Option<&'a [u8]> {
        param(self.params, b"received")
    }

    /// `rport` (RFC 3581): `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        param(self.params, b"rport").map(parse_u16)
    }

    pub fn is_reliable(&self) -> bool {
        !self.transport.eq_ignore_ascii_case(b"UDP")
    }
}

fn skip_lws(s: &[u8]) -> &[u8] {
    let i = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
    &s[i..]
}

fn split_slash(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = memchr::memchr(b'/', s)?;
    Some((trim(&s[..i]), &s[i + 1..]))
}

fn parse_u16(v: &[u8]) -> Option<u16> {
    if v.is_empty() || v.len() > 5 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok()
}

/// `host[:port]` with IPv6 references in brackets (RFC 3261 §25.1 hostport).
pub(super) fn split_host_port(s: &[u8]) -> Option<(&[u8], Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    let (host, port) = if s[0] == b'[' {
        let close = memchr::memchr(b']', s)?;
        let host = &s[..=close];
        match &s[close + 1..] {
            [] => (host, None),
            [b':', p @ ..] => (host, Some(p)),
            _ => return None,
        }
    } else {
        match memchr::memchr(b':', s) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        }
    };
    let valid =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':');
    if host.is_empty() || !host.iter().all(|&b| valid(b)) {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(p) => Some((host, Some(parse_u16(p)?))),
    }
}

/// A name-addr or addr-spec value with its header parameters (From, To, Contact, Route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as received (quotes kept), possibly empty.
    pub display: &'a [u8],
    /// The URI, without angle brackets.
    pub uri: &'a [u8],
    /// Header parameters from the first `;` after the URI on (`;tag=..;expires=..`).
    pub params: &'a [u8],
    /// Whether the URI was in angle brackets.
    pub bracketed: bool,
}

impl<'a> NameAddr<'a> {
    /// Parses `[display] <uri> *(;param)` or `uri *(;param)` (§20.10: without brackets,
    /// parameters after the URI are header parameters). `None` if malformed.
    pub fn parse(v: &'a [u8]) -> Option<Self> {
        let v = trim(v);
        if let Some(lt) = find_unquoted(v, b'<') {
            let close = lt + memchr::memchr(b'>', &v[lt..])?;
            let uri = &v[lt + 1..close];
            if uri.is_empty() || uri.iter().any(|&b| is_lws(b)) {
                return None; // RFC 4475 `badaspec`: no LWS inside <>
            }
            let params = trim(&v[close + 1..]);
            if !params.is_empty() && params[0] != b';' {
                return None;
            }
            let display = trim(&v[..lt]);
            // §25.1 display-name = *(token LWS) / quoted-string (RFC 4475 `baddn`).
            let quoted =
                display.len() >= 2 && display[0] == b'"' && display[display.len() - 1] == b'"';
            if !quoted && !display.iter().all(|&b| is_token_char(b) || is_lws(b)) {
                return None;
            }
            Some(Self {
                display,
                uri,
                params,
                bracketed: true,
            })
        } else {
            let end = v
                .iter()
                .position(|&b| b == b';' || is_lws(b))
                .unwrap_or(v.len());
            let uri = &v[..end];
            let params = trim(&v[end..]);
            // §20: an addr-spec with ',', '?' or ';' must be in <> (RFC 4475 `regbadct`).
            if uri.is_empty()
                || uri.contains(&b'?')
                || uri.contains(&b',')
                || (!params.is_empty() && params[0] != b';')
            {
                return None;
            }
            Some(Self {
                display: b"",
                uri,
                params,
                bracketed: false,
            })
        }
    }

    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        param(self.params, name)
    }
}

/// `CSeq: 4711 INVITE` (RFC 3261 §20.16): sequence number below 2^31.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(v: &[u8], backing: &Bytes) -> Result<Self, ParseError> {
        const BAD: ParseError = ParseError::BadHeader("CSeq");
        let v = trim(v);
        let sp = v.iter().position(|&b| is_lws(b)).ok_or(BAD)?;
        let num = &v[..sp];
        if num.is_empty() || num.len() > 10 || !num.iter().all(u8::is_ascii_digit) {
            return Err(BAD);
        }
        let seq = num.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if seq >= 1 << 31 {
            return Err(BAD);
        }
        let method = Method::from_token(trim(&v[sp..]), backing).ok_or(BAD)?;
        Ok(Self {
            seq: seq as u32,
            method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_and_params() {
        let v = Via::parse(b"SIP / 2.0 / UDP 192.0.2.2:5060 ;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some(&b"z9hG4bK1"[..]));
        assert_eq!(v.rport(), Some(None));
        assert!(!v.is_reliable());
    }

    #[test]
    fn via_ipv6() {
        let v = Via::parse(b"SIP/2.0/TCP [2001:db8::9]:5061;branch=x").unwrap();
        assert_eq!(v.host, b"[2001:db8::9]");
        assert_eq!(v.port, Some(5061));
        assert!(v.is_reliable());
    }

    #[test]
    fn via_rejects_garbage() {
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"HTTP/1.1/UDP host").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host:99999").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(b"\"Bob <b>\" <sip:bob@biloxi.com>;tag=a6c85cf").unwrap();
        assert_eq!(n.uri, b"sip:bob@biloxi.com");
        assert_eq!(n.param(b"tag"), Some(&b"a6c85cf"[..]));
        let n = NameAddr::parse(b"sip:alice@atlanta.com;tag=1928301774").unwrap();
        assert_eq!(n.uri, b"sip:alice@atlanta.com");
        assert_eq!(n.param(b"tag"), Some(&b"1928301774"[..]));
        assert!(NameAddr::parse(b"< sip:x@y >").is_none());
    }

    #[test]
    fn cseq_bounds() {
        let b = Bytes::new();
        assert_eq!(CSeq::parse(b"314159 INVITE", &b).unwrap().seq, 314_159);
        assert!(CSeq::parse(b"2147483648 INVITE", &b).is_err());
        assert!(CSeq::parse(b"36893488147419103232 INVITE", &b).is_err());
        assert!(CSeq::parse(b"1", &b).is_err());
    }
}
