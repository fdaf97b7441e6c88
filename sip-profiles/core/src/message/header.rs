//! Header names (RFC 3261 §7.3.3 compact forms, §20) and the small lexical helpers every
//! typed view shares: LWS skipping (folded lines included), comma lists, parameters.

/// A header name, with compact forms folded onto their long form. Unknown names are
/// [`HeaderName::Other`]; compare those with [`eq_ignore_case`] on the raw name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Accept,
    Allow,
    Authorization,
    CallId,
    Contact,
    ContentEncoding,
    ContentLength,
    ContentType,
    CSeq,
    Event,
    Expires,
    From,
    MaxForwards,
    MinExpires,
    Path,
    ProxyAuthenticate,
    ProxyAuthorization,
    ProxyRequire,
    RecordRoute,
    ReferTo,
    Require,
    Route,
    Server,
    Subject,
    Supported,
    To,
    Unsupported,
    UserAgent,
    Via,
    WwwAuthenticate,
    /// RFC 3841 §9.1 (compact `d`).
    RequestDisposition,
    /// The proxy's one-time permit token (docs/profile.md).
    PermitToken,
    /// The call's session secret (docs/profile.md).
    PermitKey,
    Other,
}

/// Long names, lowercase, most frequent first.
const TABLE: &[(&[u8], HeaderName)] = &[
    (b"via", HeaderName::Via),
    (b"from", HeaderName::From),
    (b"to", HeaderName::To),
    (b"call-id", HeaderName::CallId),
    (b"cseq", HeaderName::CSeq),
    (b"contact", HeaderName::Contact),
    (b"content-length", HeaderName::ContentLength),
    (b"max-forwards", HeaderName::MaxForwards),
    (b"route", HeaderName::Route),
    (b"record-route", HeaderName::RecordRoute),
    (b"expires", HeaderName::Expires),
    (b"content-type", HeaderName::ContentType),
    (b"authorization", HeaderName::Authorization),
    (b"proxy-authorization", HeaderName::ProxyAuthorization),
    (b"www-authenticate", HeaderName::WwwAuthenticate),
    (b"proxy-authenticate", HeaderName::ProxyAuthenticate),
    (b"user-agent", HeaderName::UserAgent),
    (b"server", HeaderName::Server),
    (b"allow", HeaderName::Allow),
    (b"supported", HeaderName::Supported),
    (b"require", HeaderName::Require),
    (b"proxy-require", HeaderName::ProxyRequire),
    (b"unsupported", HeaderName::Unsupported),
    (b"min-expires", HeaderName::MinExpires),
    (b"path", HeaderName::Path),
    (b"accept", HeaderName::Accept),
    (b"event", HeaderName::Event),
    (b"subject", HeaderName::Subject),
    (b"refer-to", HeaderName::ReferTo),
    (b"content-encoding", HeaderName::ContentEncoding),
    (b"request-disposition", HeaderName::RequestDisposition),
    (b"permit-token", HeaderName::PermitToken),
    (b"permit-key", HeaderName::PermitKey),
];

impl HeaderName {
    /// Classifies a raw header name, case-insensitively, compact forms included.
    pub fn from_bytes(name: &[u8]) -> Self {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'i' => Self::CallId,
                b'm' => Self::Contact,
                b'd' => Self::RequestDisposition,
                b'e' => Self::ContentEncoding,
                b'l' => Self::ContentLength,
                b'c' => Self::ContentType,
                b'o' => Self::Event,
                b'f' => Self::From,
                b'r' => Self::ReferTo,
                b's' => Self::Subject,
                b'k' => Self::Supported,
                b't' => Self::To,
                b'v' => Self::Via,
                _ => Self::Other,
            };
        }
        TABLE
            .iter()
            .find(|(n, _)| eq_ignore_case(n, name))
            .map_or(Self::Other, |(_, h)| *h)
    }

    /// The long form as it is written when we add a header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Allow => "Allow",
            Self::Authorization => "Authorization",
            Self::CallId => "Call-ID",
            Self::Contact => "Contact",
            Self::ContentEncoding => "Content-Encoding",
            Self::ContentLength => "Content-Length",
            Self::ContentType => "Content-Type",
            Self::CSeq => "CSeq",
            Self::Event => "Event",
            Self::Expires => "Expires",
            Self::From => "From",
            Self::MaxForwards => "Max-Forwards",
            Self::MinExpires => "Min-Expires",
            Self::Path => "Path",
            Self::ProxyAuthenticate => "Proxy-Authenticate",
            Self::ProxyAuthorization => "Proxy-Authorization",
            Self::ProxyRequire => "Proxy-Require",
            Self::RecordRoute => "Record-Route",
            Self::ReferTo => "Refer-To",
            Self::Require => "Require",
            Self::Route => "Route",
            Self::Server => "Server",
            Self::Subject => "Subject",
            Self::Supported => "Supported",
            Self::To => "To",
            Self::Unsupported => "Unsupported",
            Self::UserAgent => "User-Agent",
            Self::Via => "Via",
            Self::WwwAuthenticate => "WWW-Authenticate",
            Self::RequestDisposition => "Request-Disposition",
            Self::PermitToken => "Permit-Token",
            Self::PermitKey => "Permit-Key",
            Self::Other => "X-Unknown",
        }
    }
}

/// ASCII case-insensitive equality.
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Linear whitespace inside a header value: SP, HT, and the CRLF of a folded line
/// (RFC 3261 §7.3.1: a folded line is equivalent to one SP).
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `s` without leading and trailing LWS.
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_lws(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// RFC 3261 §25.1 `token` characters.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Splits a header value at top-level commas: commas inside quoted strings and inside
/// `<...>` do not split (RFC 3261 §7.3.1). Empty elements are yielded as empty slices.
pub fn split_commas(value: &[u8]) -> CommaSplit<'_> {
    CommaSplit { rest: Some(value) }
}

/// Iterator returned by [`split_commas`].
pub struct CommaSplit<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let at = find_unquoted(s, b',');
        if let Some(i) = at {
            self.rest = Some(&s[i + 1..]);
            Some(trim(&s[..i]))
        } else {
            self.rest = None;
            Some(trim(s))
        }
    }
}

/// First position of `needle` outside quoted strings and angle brackets.
///
/// Jumps with `memchr` from one byte that matters to the next (the needle, a quote, a
/// bracket, a backslash in a quoted string): header values are mostly plain bytes, and
/// this runs several times for every header list and parameter a message is asked for.
/// Inside brackets a quote still opens a quoted string (a `>` in it closes nothing);
/// an unclosed quote or bracket hides the rest.
pub fn find_unquoted(s: &[u8], needle: u8) -> Option<usize> {
    let mut i = 0;
    let mut in_angle = false;
    loop {
        let at = if in_angle {
            i + memchr::memchr2(b'"', b'>', &s[i..])?
        } else {
            i + memchr::memchr3(needle, b'"', b'<', &s[i..])?
        };
        match s[at] {
            b if b == needle && !in_angle => return Some(at),
            b'"' => i = at + 1 + end_of_quoted(&s[at + 1..])? + 1,
            b'<' => {
                in_angle = true;
                i = at + 1;
            }
            _ => {
                // `>`
                in_angle = false;
                i = at + 1;
            }
        }
    }
}

/// The position of the quote that ends a quoted string, `s` starting after its opening
/// quote (RFC 3261 §25.1: a backslash escapes the next byte).
fn end_of_quoted(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let at = i + memchr::memchr2(b'\\', b'"', &s[i..])?;
        if s[at] == b'"' {
            return Some(at);
        }
        i = at + 2;
        if i > s.len() {
            return None;
        }
    }
}

/// Looks up `name` in a `;`-separated generic-param list (`;a=1;b ; c = "x"`), with LWS
/// allowed around `;` and `=` (RFC 3261 §25.1 SEMI/EQUAL). `Some(b"")` for a flag param.
pub fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = params;
    loop {
        let start = rest.iter().position(|&b| b == b';')?;
        rest = &rest[start + 1..];
        let end = find_unquoted(rest, b';').unwrap_or(rest.len());
        let item = &rest[..end];
        let (k, v) = match item.iter().position(|&b| b == b'=') {
            Some(eq) => (trim(&item[..eq]), trim(&item[eq + 1..])),
            None => (trim(item), &b""[..]),
        };
        if eq_ignore_case(k, name) {
            return Some(v);
        }
        rest = &rest[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_names() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"Call-ID"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"d"), HeaderName::RequestDisposition);
        for h in [
            HeaderName::PermitToken,
            HeaderName::PermitKey,
            HeaderName::RequestDisposition,
        ] {
            assert_eq!(HeaderName::from_bytes(h.as_str().as_bytes()), h);
        }
    }

    #[test]
    fn commas_respect_quotes_and_brackets() {
        let v: Vec<_> = split_commas(b"\"a,b\" <sip:x@y;p=1,2>;q=1 , <sip:z@w>").collect();
        assert_eq!(v, vec![&b"\"a,b\" <sip:x@y;p=1,2>;q=1"[..], b"<sip:z@w>"]);
    }

    /// The byte-by-byte scan `find_unquoted` replaced: the oracle for the one that
    /// jumps.
    fn find_unquoted_bytewise(s: &[u8], needle: u8) -> Option<usize> {
        let (mut in_quote, mut in_angle, mut i) = (false, false, 0);
        while i < s.len() {
            let b = s[i];
            if in_quote {
                if b == b'\\' {
                    i += 1;
                } else if b == b'"' {
                    in_quote = false;
                }
            } else if b == needle && !in_angle {
                return Some(i);
            } else if b == b'"' {
                in_quote = true;
            } else if b == b'<' {
                in_angle = true;
            } else if b == b'>' {
                in_angle = false;
            }
            i += 1;
        }
        None
    }

    #[test]
    fn find_unquoted_agrees_with_a_bytewise_scan() {
        use rand_core::RngCore;
        let mut rng = sip_testkit::seeded_rng(7);
        let mut below = |n: usize| rng.next_u32() as usize % n;
        let alphabet = b"ab,;\"<>\\ =";
        for _ in 0..50_000 {
            let len = below(24);
            let s: Vec<u8> = (0..len).map(|_| alphabet[below(alphabet.len())]).collect();
            for needle in [b',', b';', b'=', b'"', b'<', b'>', b'\\'] {
                assert_eq!(
                    find_unquoted(&s, needle),
                    find_unquoted_bytewise(&s, needle),
                    "{:?} {:?}",
                    String::from_utf8_lossy(&s),
                    needle as char
                );
            }
        }
    }

    #[test]
    fn params_with_lws() {
        let p = b";tag = 98asjd8 ;lr; q=0.5";
        assert_eq!(param(p, b"tag"), Some(&b"98asjd8"[..]));
        assert_eq!(param(p, b"LR"), Some(&b""[..]));
        assert_eq!(param(p, b"q"), Some(&b"0.5"[..]));
        assert_eq!(param(p, b"x"), None);
    }
}
