//! The permit token: one-time authentication information for a permitted
//! caller → callee pair (docs/profile.md, "Permit token and session key").
//!
//! Wire form, 101 characters at most, all of them RFC 3261 `token` characters and
//! URI `unreserved` characters (RFC 3261 §25.1), so the string needs no quoting in a
//! header field value or parameter and no escaping as an embedded URI header
//! (RFC 3261 §19.1.5 `hvalue`):
//!
//! ```text
//! v1.<kid>.<exp>.<nonce>.<mac>
//! kid   = key id, decimal u32, no leading zero
//! exp   = expiry, unix seconds, decimal u64, no leading zero
//! nonce = 16 random bytes, base64url without padding (22 characters)
//! mac   = HMAC-SHA256, base64url without padding (43 characters), over
//!         "permit token v1" 0x00 || kid (u32 BE) || exp (u64 BE) || nonce
//!         || len(caller) (u64 BE) || caller || len(callee) (u64 BE) || callee
//!         || len(call-id) (u64 BE) || call-id
//! ```
//!
//! The fixed-width fields come first and every variable field carries its length,
//! so two different claim sets never feed the MAC the same bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::ring::{KeyId, KeyRing, ProxyKey};

/// Domain separation from the other MACs keyed by proxy secrets.
const LABEL: &[u8] = b"permit token v1\0";
const VERSION: &str = "v1";
/// Length of the random nonce, bytes (128 bits).
pub const NONCE_LEN: usize = 16;
/// Length of the MAC, bytes (the full HMAC-SHA256 output).
pub const MAC_LEN: usize = 32;
const NONCE_B64_LEN: usize = 22;
const MAC_B64_LEN: usize = 43;
/// The longest wire form: `v1` + 4 dots + 10-digit kid + 20-digit expiry + 22 + 43.
pub const MAX_TOKEN_LEN: usize = 2 + 4 + 10 + 20 + NONCE_B64_LEN + MAC_B64_LEN;

/// What a token binds: the authenticated caller's AOR, the callee's AOR and the
/// call's Call-ID. The AORs are compared as bytes, so issuer and verifier must use
/// one canonical form (the proxy's, e.g. `sip:alice@example.org`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims<'a> {
    /// The caller's address-of-record (from digest authentication, not From).
    pub caller: &'a str,
    /// The callee's address-of-record.
    pub callee: &'a str,
    /// The Call-ID of the call the token admits.
    pub call_id: &'a str,
}

impl<'a> TokenClaims<'a> {
    pub fn new(caller: &'a str, callee: &'a str, call_id: &'a str) -> Self {
        Self {
            caller,
            callee,
            call_id,
        }
    }
}

/// Why a token was refused. A UA answers every one of them with 403 Forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a `v1.<kid>.<exp>.<nonce>.<mac>` string of the right lengths and alphabet.
    #[error("malformed permit token")]
    Malformed,
    /// Signed under a key id the ring does not hold (never issued, or retired).
    #[error("permit token signed under an unknown key")]
    UnknownKey,
    /// Genuine, but its expiry has passed.
    #[error("permit token expired")]
    Expired,
    /// The MAC does not match the claims: forged, altered, or for another call.
    #[error("permit token does not match")]
    BadMac,
}

impl TokenError {
    /// The SIP status a UA answers an INVITE carrying this token with.
    pub fn status_code(self) -> u16 {
        403
    }
}

/// A permit token (parsed or issued). `Debug` shows the key id and expiry only;
/// there is no `Display`: [`Token::encode`] gives the wire form, which must never
/// be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    key_id: KeyId,
    expires: u64,
    nonce: [u8; NONCE_LEN],
    mac: [u8; MAC_LEN],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("key_id", &self.key_id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Issues a token for `claims` under the ring's current key, valid from
    /// `unix_now` for `ttl_secs` seconds (it expires at `unix_now + ttl_secs`).
    /// The nonce comes from `rng`.
    pub fn issue<R: CryptoRng + ?Sized>(
        ring: &KeyRing,
        claims: &TokenClaims<'_>,
        unix_now: u64,
        ttl_secs: u64,
        rng: &mut R,
    ) -> Token {
        let (key_id, key) = ring.current();
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let expires = unix_now.saturating_add(ttl_secs);
        let mac = compute_mac(key, key_id, expires, &nonce, claims);
        Token {
            key_id,
            expires,
            nonce,
            mac,
        }
    }

    /// Reads the wire form. Strict: exactly five dot-separated fields, decimal
    /// numbers without sign or leading zero, canonical base64url without padding.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut fields = text.split('.');
        let (Some(version), Some(kid), Some(exp), Some(nonce), Some(mac), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        if version != VERSION {
            return Err(TokenError::Malformed);
        }
        let key_id = KeyId(
            parse_decimal(kid)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(TokenError::Malformed)?,
        );
        let expires = parse_decimal(exp).ok_or(TokenError::Malformed)?;
        let nonce: [u8; NONCE_LEN] = decode_fixed(nonce, NONCE_B64_LEN)?;
        let mac: [u8; MAC_LEN] = decode_fixed(mac, MAC_B64_LEN)?;
        Ok(Token {
            key_id,
            expires,
            nonce,
            mac,
        })
    }

    /// The wire form `v1.<kid>.<exp>.<nonce>.<mac>`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(MAX_TOKEN_LEN);
        out.push_str(VERSION);
        out.push('.');
        out.push_str(&self.key_id.0.to_string());
        out.push('.');
        out.push_str(&self.expires.to_string());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(self.nonce, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(self.mac, &mut out);
        out
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Expiry, unix seconds: the token is refused from this second on.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The random nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Constant-time comparison of the carried MAC with the one `key` gives for
    /// `claims` (RFC 2104 §5 leaves the comparison to the user; a short-circuiting
    /// compare would leak how many leading bytes of a forgery were right).
    pub(crate) fn mac_matches(&self, key: &ProxyKey, claims: &TokenClaims<'_>) -> bool {
        let expected = compute_mac(key, self.key_id, self.expires, &self.nonce, claims);
        expected.ct_eq(&self.mac).into()
    }
}

fn compute_mac(
    key: &ProxyKey,
    key_id: KeyId,
    expires: u64,
    nonce: &[u8; NONCE_LEN],
    claims: &TokenClaims<'_>,
) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(LABEL);
    mac.update(&key_id.0.to_be_bytes());
    mac.update(&expires.to_be_bytes());
    mac.update(nonce);
    for field in [claims.caller, claims.callee, claims.call_id] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac.finalize().into_bytes().into()
}

/// A decimal number without sign or leading zero ("0" itself is allowed), so each
/// value has one spelling.
fn parse_decimal(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    text.parse().ok()
}

fn decode_fixed<const N: usize>(text: &str, encoded_len: usize) -> Result<[u8; N], TokenError> {
    if text.len() != encoded_len {
        return Err(TokenError::Malformed);
    }
    let mut out = [0u8; N];
    // The engine rejects padding and non-zero trailing bits, so the encoding is
    // canonical: one byte string, one spelling.
    match URL_SAFE_NO_PAD.decode_slice(text, &mut out) {
        Ok(n) if n == N => Ok(out),
        _ => Err(TokenError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::new(KeyId(7), ProxyKey::from_bytes([0x42; 32]))
    }

    #[test]
    fn encode_parse_round_trip_and_shape() {
        let mut rng = sip_testkit::seeded_rng(1);
        let claims = TokenClaims::new(
            "sip:alice@example.org",
            "sip:bob@example.org",
            "a84b4c76e66710",
        );
        let token = Token::issue(&ring(), &claims, 1_700_000_000, 60, &mut rng);
        let wire = token.encode();
        assert!(wire.starts_with("v1.7.1700000060."), "{wire}");
        assert!(wire.len() <= MAX_TOKEN_LEN);
        assert!(
            wire.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{wire}"
        );
        assert_eq!(Token::parse(&wire), Ok(token.clone()));
        assert_eq!(
            ring()
                .verify(&token, &claims, 1_700_000_059)
                .map(|v| v.key_id()),
            Ok(KeyId(7))
        );
        assert_eq!(
            ring().verify(&token, &claims, 1_700_000_060),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn debug_does_not_show_nonce_or_mac() {
        let t = Token::parse(
            "v1.1.5.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("AAAA") && !shown.contains("[0"), "{shown}");
    }

    #[test]
    fn non_canonical_numbers_are_malformed() {
        let nonce = "AAAAAAAAAAAAAAAAAAAAAA";
        let mac = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for bad in [
            format!("v1.01.5.{nonce}.{mac}"),
            format!("v1.1.+5.{nonce}.{mac}"),
            format!("v1.1..{nonce}.{mac}"),
            format!("v1.4294967296.5.{nonce}.{mac}"),
            format!("v1.1.5.{nonce}.{mac}."),
            format!("V1.1.5.{nonce}.{mac}"),
            format!("v1.1.5.{nonce}={mac}"),
            // trailing bits set in the last base64 character
            format!("v1.1.5.AAAAAAAAAAAAAAAAAAAAAB.{mac}"),
        ] {
            assert_eq!(Token::parse(&bad), Err(TokenError::Malformed), "{bad}");
        }
        assert!(Token::parse(&format!("v1.0.0.{nonce}.{mac}")).is_ok());
    }
}
