//! The session key: a 256-bit secret the proxy draws per permitted call and gives to
//! both sides, and the per-direction SRTP master keys the UAs derive from it.
//!
//! Derivation (HKDF-SHA256, RFC 5869 §2):
//!
//! ```text
//! PRK  = HKDF-Extract(salt = Call-ID bytes, IKM = session secret)
//! OKM  = HKDF-Expand(PRK, info = "permit srtp " || direction || " " || suite, L)
//! direction = "caller->callee" / "callee->caller"
//! suite     = the RFC 4568 crypto-suite name, e.g. "AES_CM_128_HMAC_SHA1_80"
//! L         = master key length + master salt length of the suite
//! master key = OKM[..key length], master salt = OKM[key length..]
//! ```
//!
//! For AES_CM_128_HMAC_SHA1_80 (RFC 4568 §6.2.1, RFC 3711 §8.2) that is a 16-byte
//! master key and a 14-byte master salt (L = 30). The suite name is in `info` so
//! that two suites never share key bytes. Each direction has its own key, so the
//! two SRTP senders never encrypt under the same key stream (RFC 3711 §9.1).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroize;

use super::sdes::SrtpSuite;

/// Length of a session secret in bytes.
pub const SESSION_SECRET_LEN: usize = 32;
/// Length of the base64url wire form of a session secret.
pub const SESSION_SECRET_B64_LEN: usize = 43;

/// HKDF-SHA256 (RFC 5869): extract with `salt` from `ikm`, expand with `info` into
/// `okm`. Fails only when `okm` is longer than 255 × 32 bytes (RFC 5869 §2.3).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], okm: &mut [u8]) -> Result<(), OkmTooLong> {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, okm)
        .map_err(|_| OkmTooLong)
}

/// HKDF output longer than RFC 5869 §2.3 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HKDF output longer than 255 hash lengths")]
pub struct OkmTooLong;

/// A session secret in a header parameter was not 43 base64url characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a session key is 32 bytes written as 43 base64url characters without padding")]
pub struct BadSessionSecret;

/// Which way media flows. The caller is the side that sent the INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Media the caller sends and the callee receives.
    CallerToCallee,
    /// Media the callee sends and the caller receives.
    CalleeToCaller,
}

impl Direction {
    /// The label in the HKDF `info`.
    pub fn label(self) -> &'static str {
        match self {
            Direction::CallerToCallee => "caller->callee",
            Direction::CalleeToCaller => "callee->caller",
        }
    }

    /// The other direction.
    #[must_use]
    pub fn reverse(self) -> Direction {
        match self {
            Direction::CallerToCallee => Direction::CalleeToCaller,
            Direction::CalleeToCaller => Direction::CallerToCallee,
        }
    }
}

/// The per-call secret. `Debug` shows nothing of it, there is no `Display`, and it
/// is zeroed on drop. Wire form: [`SessionSecret::encode`].
#[derive(Clone)]
pub struct SessionSecret {
    bytes: [u8; SESSION_SECRET_LEN],
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

impl Drop for SessionSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl PartialEq for SessionSecret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl Eq for SessionSecret {}

impl SessionSecret {
    /// A fresh secret from `rng` (the proxy, once per permitted call).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; SESSION_SECRET_LEN];
        rng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    pub fn from_bytes(bytes: [u8; SESSION_SECRET_LEN]) -> Self {
        Self { bytes }
    }

    /// The secret as 43 base64url characters without padding: RFC 3261 `token`
    /// characters, usable as a header parameter value without quotes. Never log it.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    /// Reads [`SessionSecret::encode`]'s form (canonical base64url, no padding).
    pub fn parse(text: &str) -> Result<Self, BadSessionSecret> {
        if text.len() != SESSION_SECRET_B64_LEN {
            return Err(BadSessionSecret);
        }
        let mut bytes = [0u8; SESSION_SECRET_LEN];
        if let Ok(SESSION_SECRET_LEN) = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(Self { bytes })
        } else {
            bytes.zeroize();
            Err(BadSessionSecret)
        }
    }

    /// The SRTP master key and salt for media flowing in `direction` of the call
    /// `call_id`, for `suite`. `None` for a suite whose key sizes are unknown
    /// ([`SrtpSuite::Other`]).
    pub fn srtp_keys(
        &self,
        call_id: &str,
        direction: Direction,
        suite: &SrtpSuite,
    ) -> Option<SrtpKeys> {
        let (key_len, salt_len) = suite.key_salt_len()?;
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(b"permit srtp ");
        info.extend_from_slice(direction.label().as_bytes());
        info.push(b' ');
        info.extend_from_slice(suite.name().as_bytes());
        let mut okm = vec![0u8; key_len + salt_len];
        hkdf_sha256(call_id.as_bytes(), &self.bytes, &info, &mut okm)
            .expect("SRTP key material is far below the HKDF limit");
        Some(SrtpKeys {
            suite: suite.clone(),
            key_len,
            material: okm,
        })
    }
}

/// An SRTP master key and master salt (RFC 3711 §8.2) for one suite. `Debug` shows
/// the suite only; `==` compares the key bytes in constant time (a UA compares the
/// peer's offered key with its own derivation); zeroed on drop.
#[derive(Clone)]
pub struct SrtpKeys {
    suite: SrtpSuite,
    key_len: usize,
    /// master key || master salt
    material: Vec<u8>,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SrtpKeys {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.suite == other.suite
            && self.key_len == other.key_len
            && bool::from(self.material.ct_eq(&other.material))
    }
}

impl Eq for SrtpKeys {}

impl Drop for SrtpKeys {
    fn drop(&mut self) {
        self.material.zeroize();
    }
}

impl SrtpKeys {
    /// Keys from an `inline:` key‖salt of a known suite; `None` when the length does
    /// not fit the suite (RFC 4568 §6.1: the key and salt lengths are the suite's).
    pub fn from_key_salt(suite: SrtpSuite, key_salt: &[u8]) -> Option<SrtpKeys> {
        let (key_len, salt_len) = suite.key_salt_len()?;
        (key_salt.len() == key_len + salt_len).then(|| SrtpKeys {
            suite,
            key_len,
            material: key_salt.to_vec(),
        })
    }

    pub fn suite(&self) -> &SrtpSuite {
        &self.suite
    }

    /// The master key (16 bytes for AES_CM_128_HMAC_SHA1_80).
    pub fn master_key(&self) -> &[u8] {
        &self.material[..self.key_len]
    }

    /// The master salt (14 bytes for AES_CM_128_HMAC_SHA1_80).
    pub fn master_salt(&self) -> &[u8] {
        &self.material[self.key_len..]
    }

    /// master key || master salt, as carried in `inline:`.
    pub fn key_salt(&self) -> &[u8] {
        &self.material
    }

    /// The `inline:` key-salt text: standard base64 with padding (RFC 4568 §6.1,
    /// RFC 4648 §4). Never log it.
    pub fn inline_base64(&self) -> String {
        STANDARD.encode(&self.material)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869 Appendix A.1 (test case 1), through our wrapper.
    #[test]
    fn rfc5869_test_case_1() {
        let ikm = hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let mut okm = [0u8; 42];
        hkdf_sha256(&salt, &ikm, &info, &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            hex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
        let mut too_long = vec![0u8; 255 * 32 + 1];
        assert_eq!(
            hkdf_sha256(&salt, &ikm, &info, &mut too_long),
            Err(OkmTooLong)
        );
    }

    #[test]
    fn directions_and_calls_give_different_keys() {
        let secret = SessionSecret::from_bytes([9; 32]);
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let a = secret
            .srtp_keys("call-1", Direction::CallerToCallee, &suite)
            .unwrap();
        let b = secret
            .srtp_keys("call-1", Direction::CalleeToCaller, &suite)
            .unwrap();
        let c = secret
            .srtp_keys("call-2", Direction::CallerToCallee, &suite)
            .unwrap();
        assert_eq!(a.master_key().len(), 16);
        assert_eq!(a.master_salt().len(), 14);
        assert_ne!(a.key_salt(), b.key_salt());
        assert_ne!(a.key_salt(), c.key_salt());
        // Deterministic: both sides derive the same bytes.
        let again = secret
            .srtp_keys("call-1", Direction::CallerToCallee, &suite)
            .unwrap();
        assert_eq!(a, again);
        // The suite is part of the derivation.
        let gcm = secret
            .srtp_keys(
                "call-1",
                Direction::CallerToCallee,
                &SrtpSuite::AeadAes128Gcm,
            )
            .unwrap();
        assert_eq!(gcm.key_salt().len(), 28);
        assert_ne!(&a.key_salt()[..28], gcm.key_salt());
        assert!(
            secret
                .srtp_keys(
                    "call-1",
                    Direction::CallerToCallee,
                    &SrtpSuite::Other("X".into())
                )
                .is_none()
        );
    }

    #[test]
    fn derivation_matches_hkdf_spelled_out() {
        let secret = SessionSecret::from_bytes([1; 32]);
        let keys = secret
            .srtp_keys(
                "abc@host",
                Direction::CalleeToCaller,
                &SrtpSuite::AesCm128HmacSha1_80,
            )
            .unwrap();
        let mut okm = [0u8; 30];
        hkdf_sha256(
            b"abc@host",
            &[1; 32],
            b"permit srtp callee->caller AES_CM_128_HMAC_SHA1_80",
            &mut okm,
        )
        .unwrap();
        assert_eq!(keys.key_salt(), &okm);
    }

    #[test]
    fn secret_wire_form_round_trips_and_is_redacted() {
        let secret = SessionSecret::generate(&mut sip_testkit::seeded_rng(3));
        let wire = secret.encode();
        assert_eq!(wire.len(), SESSION_SECRET_B64_LEN);
        assert!(
            wire.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(SessionSecret::parse(&wire), Ok(secret.clone()));
        assert_eq!(format!("{secret:?}"), "SessionSecret(..)");
        assert_eq!(SessionSecret::parse(&wire[1..]), Err(BadSessionSecret));
        assert_eq!(
            SessionSecret::parse(&format!("{}=", &wire[1..])),
            Err(BadSessionSecret)
        );
        let keys = secret
            .srtp_keys(
                "x",
                Direction::CallerToCallee,
                &SrtpSuite::AesCm128HmacSha1_80,
            )
            .unwrap();
        assert!(!format!("{keys:?}").contains(&keys.inline_base64()));
    }
}
