//! SIP and SIPS URIs (RFC 3261 §19.1), viewed in place.

use super::header::param;
use super::typed::split_host_port;

/// `sip:user:password@host:port;uri-parameters?headers`, as spans of the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    /// The user part, still %-escaped (compare escaped forms, §19.1.4).
    pub user: Option<&'a [u8]>,
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// From the first `;` after the host to `?` or the end.
    pub params: &'a [u8],
    /// After `?`, without it (§19.1.5 embedded headers).
    pub headers: Option<&'a [u8]>,
}

impl<'a> SipUri<'a> {
    /// Parses a `sip:` or `sips:` URI; `None` for other schemes or a malformed URI.
    pub fn parse(u: &'a [u8]) -> Option<Self> {
        let (secure, rest) = if u.len() > 4 && u[..4].eq_ignore_ascii_case(b"sip:") {
            (false, &u[4..])
        } else if u.len() > 5 && u[..5].eq_ignore_ascii_case(b"sips:") {
            (true, &u[5..])
        } else {
            return None;
        };
        // userinfo may contain ';', '?' and more (RFC 4475 `semiuri`, `intmeth`): it ends
        // at the last '@' before any '?' that follows the host.
        let at = memchr::memrchr(b'@', rest);
        let (user, hostpart) = match at {
            Some(at)
                if !rest[at..].contains(&b'?')
                    || memchr::memchr(b'?', rest).is_some_and(|q| q > at) =>
            {
                let userinfo = &rest[..at];
                let user = memchr::memchr(b':', userinfo).map_or(userinfo, |c| &userinfo[..c]);
                (Some(user), &rest[at + 1..])
            }
            _ => (None, rest),
        };
        let (hostpart, headers) = match memchr::memchr(b'?', hostpart) {
            Some(q) => (&hostpart[..q], Some(&hostpart[q + 1..])),
            None => (hostpart, None),
        };
        let p = memchr::memchr(b';', hostpart).unwrap_or(hostpart.len());
        let (host, port) = split_host_port(&hostpart[..p])?;
        Some(Self {
            secure,
            user,
            host,
            port,
            params: &hostpart[p..],
            headers,
        })
    }

    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        param(self.params, name)
    }

    /// Loose routing marker (RFC 3261 §19.1.1 `lr`).
    pub fn is_loose_route(&self) -> bool {
        self.param(b"lr").is_some()
    }

    /// `transport=` parameter, if any.
    pub fn transport(&self) -> Option<&'a [u8]> {
        self.param(b"transport")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let u =
            SipUri::parse(b"sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=x").unwrap();
        assert!(u.secure);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, b"[2001:db8::1]");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport(), Some(&b"tcp"[..]));
        assert!(u.is_loose_route());
        assert_eq!(u.headers, Some(&b"subject=x"[..]));
    }

    #[test]
    fn semicolon_in_user() {
        let u = SipUri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, b"example.com");
    }

    #[test]
    fn rejects_other_schemes_and_bad_hosts() {
        assert!(SipUri::parse(b"tel:+1234").is_none());
        assert!(SipUri::parse(b"sip:").is_none());
        assert!(SipUri::parse(b"sip:bob@host:port").is_none());
    }
}
