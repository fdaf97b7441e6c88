//! The `Authorization` / `Proxy-Authorization` value: parser and printer
//! (RFC 3261 §25.1 `credentials` / `digest-response`, RFC 7616 §3.4).

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use super::{Algorithm, push_quoted};
use crate::digest::lex::{Cursor, is_token};

/// Longest credentials value accepted, in bytes; longer is [`DigestError::Malformed`].
pub const MAX_CREDENTIALS_LEN: usize = 8 * 1024;
/// Longest single parameter value accepted, as written on the wire (quotes excluded).
pub const MAX_VALUE_LEN: usize = 1024;

/// Why a credentials value could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Bad syntax, a duplicate or missing parameter, an oversized value or non-UTF-8
    /// text: the request is answered 400 with this reason (RFC 3261 §21.4.1).
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// A Digest `algorithm` this crate does not implement (RFC 8760 §2.1 lists
    /// SHA-512-256 and the `-sess` variants).
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// Another authentication scheme (`Basic`, `Bearer`, ...): not ours to judge.
    #[error("authorization scheme is not Digest")]
    NotDigest,
}

/// One Digest `Authorization` / `Proxy-Authorization` value (RFC 7616 §3.4).
///
/// Text fields borrow from the header bytes unless the wire form held quoted-pairs
/// or a folded line, which are undone ("unq()" in RFC 7616 §3.4), making them owned.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    /// The digest-uri: the Request-URI as the UAC sent it (RFC 3261 §22.4).
    pub uri: Cow<'a, str>,
    /// The hex digest the UAC computed (RFC 7616 §3.4.1).
    pub response: Cow<'a, str>,
    /// `MD5` when the parameter is absent (RFC 7616 §3.4).
    pub algorithm: Algorithm,
    pub cnonce: Option<Cow<'a, str>>,
    /// The nonce count, sent as exactly 8 lowercase hex digits (RFC 3261 §25.1
    /// `nc-value = 8LHEX`).
    pub nc: Option<u32>,
    pub qop: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
}

/// The parameters this module reads; unrecognised ones are ignored, as RFC 2617
/// §3.2.2 requires and RFC 7616 §3.4 keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Param {
    Username,
    Realm,
    Nonce,
    Uri,
    Response,
    Algorithm,
    Cnonce,
    Nc,
    Qop,
    Opaque,
    Userhash,
}

const PARAMS: [(&str, Param); 11] = [
    ("username", Param::Username),
    ("realm", Param::Realm),
    ("nonce", Param::Nonce),
    ("uri", Param::Uri),
    ("response", Param::Response),
    ("algorithm", Param::Algorithm),
    ("cnonce", Param::Cnonce),
    ("nc", Param::Nc),
    ("qop", Param::Qop),
    ("opaque", Param::Opaque),
    ("userhash", Param::Userhash),
];

impl<'a> Credentials<'a> {
    /// Parses `Digest k=v, k="quoted", ...` (the header value, without the name).
    ///
    /// Accepts linear white space and folded lines between and inside elements,
    /// parameter names in any case, empty list elements, quoted or bare values
    /// (bare `username` is common in the field). Refuses (as
    /// [`DigestError::Malformed`]) duplicate parameters, missing `username`, `realm`,
    /// `nonce`, `uri` or `response`, `qop` without `nc` and `cnonce`, an `nc` that is
    /// not 8 lowercase hex digits, `userhash=true` (never offered), non-UTF-8 text,
    /// a value longer than [`MAX_VALUE_LEN`] and a whole value longer than
    /// [`MAX_CREDENTIALS_LEN`].
    pub fn parse(value: &'a [u8]) -> Result<Self, DigestError> {
        use DigestError::Malformed;
        if value.len() > MAX_CREDENTIALS_LEN {
            return Err(Malformed("credentials too long"));
        }
        let text = std::str::from_utf8(value).map_err(|_| Malformed("credentials not UTF-8"))?;
        let mut cur = Cursor::new(text);
        cur.skip_lws()?;
        let scheme = cur.token();
        if scheme.is_empty() {
            return Err(Malformed("missing authorization scheme"));
        }
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        if !cur.skip_lws()? && !cur.at_end() {
            return Err(Malformed("bad authorization scheme"));
        }
        let mut fields: [Option<Cow<'a, str>>; PARAMS.len()] = Default::default();
        loop {
            cur.skip_lws()?;
            if cur.at_end() {
                break;
            }
            if cur.eat(b',') {
                continue; // an empty list element (RFC 3261 §7.3.1 tolerance)
            }
            let name = cur.token();
            if name.is_empty() {
                return Err(Malformed("expected a parameter name"));
            }
            cur.skip_lws()?;
            if !cur.eat(b'=') {
                return Err(Malformed("expected '=' after a parameter name"));
            }
            cur.skip_lws()?;
            let value = cur.value()?;
            if let Some(i) = PARAMS
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                if fields[i].is_some() {
                    return Err(Malformed("duplicate parameter"));
                }
                fields[i] = Some(value);
            }
            cur.skip_lws()?;
            if !cur.at_end() && !cur.eat(b',') {
                return Err(Malformed("expected ',' between parameters"));
            }
        }
        Self::from_fields(fields)
    }

    fn from_fields(mut fields: [Option<Cow<'a, str>>; PARAMS.len()]) -> Result<Self, DigestError> {
        use DigestError::Malformed;
        let mut take = |p: Param| {
            let i = PARAMS.iter().position(|(_, q)| *q == p).unwrap_or_default();
            fields[i].take()
        };
        let algorithm = match take(Param::Algorithm) {
            None => Algorithm::Md5,
            Some(token) => {
                Algorithm::from_token(token.as_bytes()).ok_or(DigestError::UnsupportedAlgorithm)?
            }
        };
        let username = take(Param::Username).ok_or(Malformed("missing username"))?;
        let realm = take(Param::Realm).ok_or(Malformed("missing realm"))?;
        let nonce = take(Param::Nonce).ok_or(Malformed("missing nonce"))?;
        let uri = take(Param::Uri).ok_or(Malformed("missing uri"))?;
        let response = take(Param::Response).ok_or(Malformed("missing response"))?;
        let nc = match take(Param::Nc) {
            None => None,
            Some(nc) => Some(parse_nc(&nc).ok_or(Malformed("nc is not 8 lowercase hex digits"))?),
        };
        let cnonce = take(Param::Cnonce);
        let qop = take(Param::Qop);
        if qop.is_some() && cnonce.is_none() {
            return Err(Malformed("qop without cnonce"));
        }
        if qop.is_some() && nc.is_none() {
            return Err(Malformed("qop without nc"));
        }
        match take(Param::Userhash) {
            Some(v) if v.eq_ignore_ascii_case("true") => {
                return Err(Malformed("userhash was not offered"));
            }
            Some(v) if !v.eq_ignore_ascii_case("false") => {
                return Err(Malformed("userhash is neither true nor false"));
            }
            _ => {}
        }
        Ok(Self {
            username,
            realm,
            nonce,
            uri,
            response,
            algorithm,
            cnonce,
            nc,
            qop,
            opaque: take(Param::Opaque),
        })
    }
}

/// `nc-value = 8LHEX` (RFC 3261 §25.1, RFC 7616 §3.4). Strict: the count enters the
/// hash as sent, so an upper-case count could not be verified from a `u32` anyway.
fn parse_nc(nc: &str) -> Option<u32> {
    let lhex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if nc.len() != 8 || !nc.as_bytes().iter().all(lhex) {
        return None;
    }
    u32::from_str_radix(nc, 16).ok()
}

/// The printer paired with [`Credentials::parse`], for a UAC answering a challenge:
/// `Digest username="..", realm="..", nonce="..", uri="..", response="..",
/// algorithm=.., cnonce="..", qop=.., nc=........, opaque=".."` (RFC 7616 §3.4:
/// `algorithm`, `qop` and `nc` are never quoted).
impl fmt::Display for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(256);
        for (name, value) in [
            ("Digest username=", &self.username),
            (", realm=", &self.realm),
            (", nonce=", &self.nonce),
            (", uri=", &self.uri),
            (", response=", &self.response),
        ] {
            out.push_str(name);
            push_quoted(&mut out, value);
        }
        out.push_str(", algorithm=");
        out.push_str(self.algorithm.token());
        if let Some(cnonce) = &self.cnonce {
            out.push_str(", cnonce=");
            push_quoted(&mut out, cnonce);
        }
        if let Some(qop) = &self.qop {
            out.push_str(", qop=");
            if !qop.is_empty() && qop.bytes().all(is_token) {
                out.push_str(qop);
            } else {
                push_quoted(&mut out, qop); // not a token: only a quoted string keeps it
            }
        }
        if let Some(nc) = self.nc {
            let _ = write!(out, ", nc={nc:08x}"); // writing to a String cannot fail
        }
        if let Some(opaque) = &self.opaque {
            out.push_str(", opaque=");
            push_quoted(&mut out, opaque);
        }
        f.write_str(&out)
    }
}

/// Leaves out the nonce, cnonce, opaque and response: logs show who and what, not
/// the material of a guessing attack (STYLE.md rule 11).
impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("uri", &self.uri)
            .field("algorithm", &self.algorithm)
            .field("qop", &self.qop)
            .field("nc", &self.nc)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{Credentials, DigestError, parse_nc};
    use crate::digest::Algorithm;

    const RFC_7616_MD5: &str = "Digest username=\"Mufasa\",\r\n realm=\"http-auth@example.org\",\r\n uri=\"/dir/index.html\",\r\n algorithm=MD5,\r\n nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n nc=00000001,\r\n cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n qop=auth,\r\n response=\"8ca523f5e9506fed4657c9700eebdbec\",\r\n opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

    #[test]
    fn reads_the_rfc_7616_example_as_folded_on_the_page() {
        let c = Credentials::parse(RFC_7616_MD5.as_bytes()).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.realm, "http-auth@example.org");
        assert_eq!(c.uri, "/dir/index.html");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.nc, Some(1));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.response, "8ca523f5e9506fed4657c9700eebdbec");
        assert_eq!(
            c.opaque.as_deref(),
            Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
        );
    }

    #[test]
    fn printer_and_parser_are_a_pair() {
        let c = Credentials::parse(RFC_7616_MD5.as_bytes()).unwrap();
        let printed = c.to_string();
        assert_eq!(Credentials::parse(printed.as_bytes()).unwrap(), c);
        assert!(
            printed.contains(", algorithm=MD5, cnonce=\"f2/"),
            "{printed}"
        );
        assert!(
            printed.contains(", qop=auth, nc=00000001, opaque="),
            "{printed}"
        );
        // Escapes survive the round trip too.
        let tricky =
            b"Digest username=\"a\\\"b\\\\c\", realm=r, nonce=n, uri=\"sip:x\", response=0";
        let c = Credentials::parse(tricky).unwrap();
        assert_eq!(c.username, "a\"b\\c");
        assert_eq!(Credentials::parse(c.to_string().as_bytes()).unwrap(), c);
    }

    #[test]
    fn nc_is_strictly_8_lowercase_hex() {
        assert_eq!(parse_nc("00000001"), Some(1));
        assert_eq!(parse_nc("ffffffff"), Some(u32::MAX));
        for bad in ["0000000A", "1", "000000001", "+0000001", "0000 001", ""] {
            assert_eq!(parse_nc(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_response() {
        let c = Credentials::parse(RFC_7616_MD5.as_bytes()).unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("Mufasa"));
        assert!(!shown.contains("8ca523f5"), "{shown}");
        assert!(!shown.contains("7ypf"), "{shown}");
    }

    #[test]
    fn other_schemes_are_not_digest() {
        assert_eq!(
            Credentials::parse(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Credentials::parse(b"Digestive x=y"),
            Err(DigestError::NotDigest)
        );
    }
}
