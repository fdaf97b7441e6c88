//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.
//!
//! I/O contract: nothing here reads a clock or draws randomness. The current time
//! (`unix_now`, seconds since the epoch) and the random salt of a new nonce are
//! arguments; the server secret is handed in once ([`NonceKey::new`]).
//!
//! # The pieces
//!
//! - [`challenge`] prints one `WWW-Authenticate` / `Proxy-Authenticate` value; a
//!   [`Verifier`] prints one per offered algorithm, in the operator's order, which is
//!   how RFC 8760 §2.4 has a UAS offer several algorithms: one header field per
//!   algorithm, the most preferred first.
//! - [`NonceKey`] issues stateless nonces: issue time, salt and an HMAC-SHA-256 tag
//!   over both, so a nonce needs no table to be checked and cannot be forged or
//!   back-dated ([`NonceState`]: fresh, stale, invalid).
//! - [`Credentials::parse`] reads one `Authorization` / `Proxy-Authorization` value
//!   (RFC 3261 §25.1 `credentials`, RFC 7616 §3.4), tolerant of folding and of the
//!   spacing real user agents produce, strict about duplicates, sizes and encoding.
//! - [`verify`] recomputes the `response` (RFC 7616 §3.4.1) and compares it in
//!   constant time: with `qop=auth`,
//!   `response = KD(H(A1), nonce ":" nc ":" cnonce ":" qop ":" H(A2))`, where
//!   `A1 = username ":" realm ":" password` (§3.4.2, kept by the caller as its hash,
//!   see [`ha1`]) and `A2 = Method ":" request-uri` (§3.4.3); without `qop`, the
//!   RFC 2069 form `KD(H(A1), nonce ":" H(A2))` that RFC 3261 §22.4 keeps for
//!   backwards compatibility.
//! - [`NonceCounts`] remembers the highest nonce count seen per nonce in bounded
//!   memory: RFC 3261 §26.4.1 names the nonce count as SIP's replay protection.
//! - [`Verifier::authenticate`] does the whole check and returns an [`Authenticated`]
//!   proof (no other code can make one) or an [`AuthFailure`] saying what to answer.
//!
//! # SIP specifics (RFC 3261 §22.4)
//!
//! The digest-uri is the Request-URI as the UAC sent it; `qop=auth` is always offered
//! (`auth-int` is not); the realm is the proxy's or registrar's domain; credentials
//! for several realms may arrive in several header fields, of which the one for our
//! realm is used (§22.3). Only `MD5` and `SHA-256` are implemented (RFC 8760 §2.1
//! also names SHA-512-256; a client answering with it is told the algorithm was not
//! offered). The `-sess` variants and `userhash` are not offered.

mod credentials;
mod lex;
mod nonce;
mod replay;
mod verify;

pub use credentials::{Credentials, DigestError, MAX_CREDENTIALS_LEN, MAX_VALUE_LEN};
pub use nonce::{MAX_FUTURE_SKEW_SECS, NonceKey, NonceState};
pub use replay::NonceCounts;
pub use verify::{
    AuthFailure, Authenticated, DEFAULT_NONCE_COUNT_CAPACITY, Verifier, response, verify,
};

use md5::Md5;
use sha2::{Digest, Sha256};

/// A digest hash algorithm (RFC 7616 §3.3 `algorithm`, RFC 8760 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `MD5`: the RFC 2617 default, still all that many SIP phones and SIPp know.
    Md5,
    /// `SHA-256` (RFC 7616 §3.3, RFC 8760 §2.1).
    Sha256,
}

impl Algorithm {
    /// The wire token, as printed in challenges.
    pub fn token(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Reads a wire token, ignoring case as HTTP tokens are compared (RFC 7616 §3.3
    /// `algorithm`). `None` for anything not implemented here,
    /// including `MD5-sess`, `SHA-256-sess` and `SHA-512-256`.
    pub fn from_token(token: &[u8]) -> Option<Self> {
        if token.eq_ignore_ascii_case(b"MD5") {
            Some(Self::Md5)
        } else if token.eq_ignore_ascii_case(b"SHA-256") {
            Some(Self::Sha256)
        } else {
            None
        }
    }

    /// Length of the hash in bytes (16 or 32); hex strings are twice as long.
    pub fn output_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha256 => 32,
        }
    }

    /// `H(parts[0] || parts[1] || ...)`.
    pub(crate) fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Self::Md5 => run::<Md5>(parts),
            Self::Sha256 => run::<Sha256>(parts),
        }
    }

    /// Lowercase hex of [`Self::hash`] (RFC 7616 §3.4: hashes travel as LHEX).
    pub(crate) fn hash_hex(self, parts: &[&[u8]]) -> String {
        to_hex(&self.hash(parts))
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.token())
    }
}

/// `H(A1)` as lowercase hex, with `A1 = username ":" realm ":" password`
/// (RFC 7616 §3.4.2). This is what a credential store keeps instead of the password.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_hex(&[
        username.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        password.as_bytes(),
    ])
}

/// One challenge value for `WWW-Authenticate` (401) or `Proxy-Authenticate` (407)
/// (RFC 3261 §22.1, RFC 7616 §3.3):
/// `Digest realm="..", nonce="..", algorithm=SHA-256, qop="auth"` and, when the
/// previous nonce was stale but the response right, `, stale=true`.
///
/// `realm` and `nonce` are printed as quoted strings (`"` and `\` escaped). ASCII
/// control characters other than HT, which a quoted string cannot carry, are printed
/// as spaces, so that a misconfigured realm cannot inject header lines.
pub fn challenge(realm: &str, alg: Algorithm, nonce: &str, stale: bool) -> String {
    let mut out = String::with_capacity(64 + realm.len() + nonce.len());
    out.push_str("Digest realm=");
    push_quoted(&mut out, realm);
    out.push_str(", nonce=");
    push_quoted(&mut out, nonce);
    out.push_str(", algorithm=");
    out.push_str(alg.token());
    out.push_str(", qop=\"auth\"");
    if stale {
        out.push_str(", stale=true");
    }
    out
}

/// Appends `s` as an RFC 3261 §25.1 quoted-string.
fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Hex (either case) to bytes; `None` on odd length or a non-hex digit.
pub(crate) fn from_hex(hex: &[u8]) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Algorithm, challenge, from_hex, ha1, to_hex};

    #[test]
    fn tokens_round_trip_case_insensitively() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            assert_eq!(Algorithm::from_token(alg.token().as_bytes()), Some(alg));
            let lower = alg.token().to_ascii_lowercase();
            assert_eq!(Algorithm::from_token(lower.as_bytes()), Some(alg));
        }
        for other in [
            &b"MD5-sess"[..],
            b"SHA-256-sess",
            b"SHA-512-256",
            b"",
            b"MD",
        ] {
            assert_eq!(Algorithm::from_token(other), None);
        }
    }

    #[test]
    fn ha1_of_the_rfc_2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / "Circle Of Life".
        assert_eq!(
            ha1(
                Algorithm::Md5,
                "Mufasa",
                "testrealm@host.com",
                "Circle Of Life"
            ),
            "939e7578ed9e3c518a452acee763bce9"
        );
        assert_eq!(ha1(Algorithm::Sha256, "a", "b", "c").len(), 64);
    }

    #[test]
    fn challenge_prints_rfc_7616_syntax() {
        assert_eq!(
            challenge("example.com", Algorithm::Sha256, "abc", false),
            r#"Digest realm="example.com", nonce="abc", algorithm=SHA-256, qop="auth""#
        );
        assert_eq!(
            challenge("a\"b\\c\r\nX: y", Algorithm::Md5, "n", true),
            r#"Digest realm="a\"b\\c  X: y", nonce="n", algorithm=MD5, qop="auth", stale=true"#
        );
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(to_hex(&bytes), "000fa5ff");
        assert_eq!(from_hex(b"000FA5ff").as_deref(), Some(&bytes[..]));
        assert_eq!(from_hex(b"abc"), None);
        assert_eq!(from_hex(b"zz"), None);
    }
}
