//! The client side of Digest authentication (RFC 3261 §22.2, §22.3; RFC 7616 §3.4;
//! RFC 8760 §2.4): read the challenges of a 401 / 407, pick one, and answer it.
//!
//! `sip-core::digest` has the response computation ([`digest::response`]) and the
//! credentials printer; what a UAC also needs, and what lives here, is a reader for
//! `WWW-Authenticate` / `Proxy-Authenticate` values and the nonce-count bookkeeping.

use std::borrow::Cow;

use sip_core::digest::{self, Algorithm, Credentials};
use sip_core::message::{HeaderName, Message};

/// Longest challenge value read; longer ones are ignored (network input is bounded).
const MAX_CHALLENGE_LEN: usize = 4096;

/// One Digest challenge (RFC 7616 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    /// Whether `qop` offers `auth` (then `nc` and `cnonce` are sent, RFC 7616 §3.4).
    pub qop_auth: bool,
    pub opaque: Option<String>,
    /// `stale=true`: the previous response was right but its nonce too old (§3.3).
    pub stale: bool,
}

/// Which header pair a challenge came in: 401 `WWW-Authenticate` → `Authorization`,
/// 407 `Proxy-Authenticate` → `Proxy-Authorization` (RFC 3261 §22.2, §22.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    Server,
    Proxy,
}

impl Realm {
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            401 => Some(Self::Server),
            407 => Some(Self::Proxy),
            _ => None,
        }
    }

    fn challenge_header(self) -> HeaderName {
        match self {
            Self::Server => HeaderName::WwwAuthenticate,
            Self::Proxy => HeaderName::ProxyAuthenticate,
        }
    }

    /// The header name that carries our answer.
    pub fn credentials_header(self) -> &'static str {
        match self {
            Self::Server => "Authorization",
            Self::Proxy => "Proxy-Authorization",
        }
    }
}

impl Challenge {
    /// Reads `Digest realm="..", nonce="..", algorithm=.., qop="auth"`; `None` for
    /// another scheme, a missing realm or nonce, an algorithm not implemented
    /// (`-sess`, SHA-512-256) or a value that is not well-formed.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() > MAX_CHALLENGE_LEN {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?.trim_start();
        let (scheme, mut rest) = text.split_at(text.find(|c: char| c.is_ascii_whitespace())?);
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let (mut realm, mut nonce, mut opaque) = (None, None, None);
        let (mut algorithm, mut qop_auth, mut stale) = (Some(Algorithm::Md5), false, false);
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
            if rest.is_empty() {
                break;
            }
            let eq = rest.find('=')?;
            let name = rest[..eq].trim();
            rest = rest[eq + 1..].trim_start();
            let value;
            (value, rest) = read_value(rest)?;
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "opaque" => opaque = Some(value),
                "algorithm" => algorithm = Algorithm::from_token(value.as_bytes()),
                "qop" => {
                    qop_auth = value
                        .split(',')
                        .any(|q| q.trim().eq_ignore_ascii_case("auth"));
                }
                "stale" => stale = value.eq_ignore_ascii_case("true"),
                _ => {} // RFC 7616 §3.3: unknown parameters are ignored
            }
        }
        Some(Self {
            realm: realm?,
            nonce: nonce?,
            algorithm: algorithm?,
            qop_auth,
            opaque,
            stale,
        })
    }

    /// The challenge to answer in a 401 / 407: SHA-256 over MD5 when both are offered
    /// (RFC 8760 §2.4: the UAC uses the first one it supports, in its own preference);
    /// `None` if no usable Digest challenge is present.
    pub fn pick(response: &Message, realm: Realm) -> Option<Self> {
        let mut best: Option<Self> = None;
        for value in response.headers(realm.challenge_header()) {
            let Some(c) = Self::parse(value) else {
                continue;
            };
            if best.as_ref().is_none_or(|b| c.algorithm > b.algorithm) {
                best = Some(c);
            }
        }
        best
    }
}

/// Reads a quoted-string (RFC 3261 §25.1, quoted-pairs undone) or a token, and what
/// follows it.
fn read_value(s: &str) -> Option<(String, &str)> {
    if let Some(body) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                '"' => return Some((out, &body[i + 1..])),
                _ => out.push(c),
            }
        }
        None
    } else {
        let end = s.find([',', ' ', '\t', '\r', '\n']).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// The answer to one challenge, with its nonce count (RFC 7616 §3.4: `nc` counts the
/// requests sent with this nonce, so a later request may reuse it without a new
/// round trip).
#[derive(Debug, Clone)]
pub struct Authorizer {
    pub challenge: Challenge,
    pub realm: Realm,
    nc: u32,
}

impl Authorizer {
    pub fn new(challenge: Challenge, realm: Realm) -> Self {
        Self {
            challenge,
            realm,
            nc: 0,
        }
    }

    /// The header value for `method` to `uri` (the Request-URI, RFC 3261 §22.4), as
    /// `(header name, value)`. `cnonce` comes from the caller's rng.
    pub fn authorize(
        &mut self,
        user: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> (&'static str, String) {
        self.nc += 1;
        let c = &self.challenge;
        let ha1 = digest::ha1(c.algorithm, user, &c.realm, password);
        let mut creds = Credentials {
            username: Cow::Borrowed(user),
            realm: Cow::Borrowed(&c.realm),
            nonce: Cow::Borrowed(&c.nonce),
            uri: Cow::Borrowed(uri),
            response: Cow::Borrowed(""),
            algorithm: c.algorithm,
            cnonce: c.qop_auth.then_some(Cow::Borrowed(cnonce)),
            nc: c.qop_auth.then_some(self.nc),
            qop: c.qop_auth.then_some(Cow::Borrowed("auth")),
            opaque: c.opaque.as_deref().map(Cow::Borrowed),
        };
        // `response` is None only for a qop other than auth, which is never set here.
        let response = digest::response(&creds, method.as_bytes(), &ha1).unwrap_or_default();
        creds.response = Cow::Owned(response);
        (self.realm.credentials_header(), creds.to_string())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sip_core::digest::{NonceKey, Verifier};

    use super::*;

    #[test]
    fn reads_the_proxy_challenge_form() {
        let c = Challenge::parse(
            b"Digest realm=\"localhost\", nonce=\"abc\\\"d\", algorithm=SHA-256, qop=\"auth,auth-int\", stale=true",
        )
        .unwrap();
        assert_eq!(c.realm, "localhost");
        assert_eq!(c.nonce, "abc\"d");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.qop_auth && c.stale);
        assert_eq!(c.opaque, None);
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        for bad in [
            &b"Basic realm=\"x\""[..],
            b"Digest nonce=\"n\"",
            b"Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256",
            b"Digest realm=\"r, nonce=\"n\"",
            b"Digest",
        ] {
            assert_eq!(
                Challenge::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // No algorithm: MD5 (RFC 7616 §3.3); no qop: RFC 2069 form.
        let c = Challenge::parse(b"Digest realm=r,nonce=n").unwrap();
        assert_eq!((c.algorithm, c.qop_auth), (Algorithm::Md5, false));
    }

    /// Our answers verify with the server-side verifier the proxy uses, for both
    /// algorithms, and the nonce count goes up by one per request.
    #[test]
    fn answers_verify_with_the_proxy_verifier() {
        let key = NonceKey::new([7; 32]);
        let verifier = Verifier::new(
            "localhost".into(),
            key,
            300,
            vec![Algorithm::Md5, Algorithm::Sha256],
        );
        for challenge in verifier.challenges(1_000, 42, false) {
            let parsed = Challenge::parse(challenge.as_bytes()).unwrap();
            let mut auth = Authorizer::new(parsed, Realm::Server);
            for nc in 1..=2u32 {
                let (name, value) =
                    auth.authorize("alice", "s3cret", "REGISTER", "sip:localhost", "c0ffee");
                assert_eq!(name, "Authorization");
                let creds = Credentials::parse(value.as_bytes()).unwrap();
                assert_eq!(creds.nc, Some(nc));
                let ha1 = digest::ha1(creds.algorithm, "alice", "localhost", "s3cret");
                assert!(digest::verify(&creds, b"REGISTER", &ha1), "{value}");
                let wrong = digest::ha1(creds.algorithm, "alice", "localhost", "guess");
                assert!(!digest::verify(&creds, b"REGISTER", &wrong));
            }
        }
    }

    #[test]
    fn picks_sha256_over_md5() {
        let resp = Message::parse(Bytes::from_static(
            b"SIP/2.0 407 Proxy Authentication Required\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Proxy-Authenticate: Digest realm=\"h\", nonce=\"n\", algorithm=MD5, qop=\"auth\"\r\n\
Proxy-Authenticate: Digest realm=\"h\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\"\r\n\
Content-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let c = Challenge::pick(&resp, Realm::Proxy).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(Challenge::pick(&resp, Realm::Server), None);
    }
}
