//! Stateless nonces (RFC 7616 §3.3 `nonce`, §5.4 "Limited-Use Nonce Values").
//!
//! A nonce is `base64url(time || salt || tag)`: the issue time (unix seconds, 8 bytes
//! big-endian), a caller-supplied random salt (8 bytes) and the first 16 bytes of
//! HMAC-SHA-256(secret, label || time || salt). RFC 7616 §3.3 suggests exactly this
//! shape ("time-stamp H(time-stamp ":" ETag ":" secret-data)"); a keyed MAC instead
//! of a bare hash keeps the secret out of reach of length-extension and guessing.
//! Checking needs no table: the tag proves we issued it, the time says how old it is.
//! The 43-character result uses `A-Z a-z 0-9 - _` only, so it never needs escaping
//! inside a quoted string.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far in the future a nonce's issue time may lie and still be accepted, for
/// servers of one cluster sharing a key with slightly different clocks.
pub const MAX_FUTURE_SKEW_SECS: u64 = 10;

/// Domain separation: the same secret may key other MACs in the project.
const LABEL: &[u8] = b"sip-core digest nonce v1\0";
const TAG_LEN: usize = 16;
const RAW_LEN: usize = 8 + 8 + TAG_LEN;
/// base64 without padding of `RAW_LEN` (32) bytes.
const ENCODED_LEN: usize = 43;

/// What [`NonceKey::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Issued by us, within its lifetime.
    Fresh,
    /// Issued by us, but older than the lifetime: if the response is right, answer
    /// with a new challenge carrying `stale=true` (RFC 7616 §3.3 `stale`).
    Stale,
    /// Not ours: bad tag, wrong length, not base64url, or issued further in the
    /// future than [`MAX_FUTURE_SKEW_SECS`].
    Invalid,
}

/// The server secret that issues and checks nonces. `Debug` does not show it.
#[derive(Clone)]
pub struct NonceKey {
    secret: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// `secret` must come from a cryptographic random source; servers that share it
    /// accept each other's nonces.
    pub fn new(secret: [u8; 32]) -> Self {
        Self { secret }
    }

    fn mac(&self, issued: u64, salt: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC accepts keys of any length");
        mac.update(LABEL);
        mac.update(&issued.to_be_bytes());
        mac.update(&salt.to_be_bytes());
        mac
    }

    /// A nonce issued at `unix_now`. `salt` should be fresh randomness, so that two
    /// challenges in the same second differ (RFC 7616 §3.3: "uniquely generated each
    /// time a 401 response is made").
    pub fn issue(&self, unix_now: u64, salt: u64) -> String {
        let tag = self.mac(unix_now, salt).finalize().into_bytes();
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&unix_now.to_be_bytes());
        raw[8..16].copy_from_slice(&salt.to_be_bytes());
        raw[16..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce received in credentials: [`NonceState::Fresh`] when we issued
    /// it at most `ttl_secs` before `unix_now`. The tag is compared in constant time.
    pub fn check(&self, nonce: &str, unix_now: u64, ttl_secs: u64) -> NonceState {
        if nonce.len() != ENCODED_LEN {
            return NonceState::Invalid;
        }
        // The engine refuses non-canonical trailing bits, so each nonce has exactly
        // one accepted spelling.
        let raw = match URL_SAFE_NO_PAD.decode(nonce) {
            Ok(raw) if raw.len() == RAW_LEN => raw,
            _ => return NonceState::Invalid,
        };
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let (issued, salt) = (word(0), word(8));
        if self
            .mac(issued, salt)
            .verify_truncated_left(&raw[16..])
            .is_err()
        {
            return NonceState::Invalid;
        }
        if issued > unix_now.saturating_add(MAX_FUTURE_SKEW_SECS) {
            return NonceState::Invalid;
        }
        if unix_now.saturating_sub(issued) > ttl_secs {
            NonceState::Stale
        } else {
            NonceState::Fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ENCODED_LEN, MAX_FUTURE_SKEW_SECS, NonceKey, NonceState};

    const T0: u64 = 1_700_000_000;

    fn key() -> NonceKey {
        NonceKey::new([7; 32])
    }

    #[test]
    fn issue_then_check_round_trips_through_its_lifetime() {
        let n = key().issue(T0, 42);
        assert_eq!(n.len(), ENCODED_LEN);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{n}"
        );
        assert_eq!(key().check(&n, T0, 300), NonceState::Fresh);
        assert_eq!(key().check(&n, T0 + 300, 300), NonceState::Fresh);
        assert_eq!(key().check(&n, T0 + 301, 300), NonceState::Stale);
        assert_eq!(key().check(&n, u64::MAX, 300), NonceState::Stale);
    }

    #[test]
    fn salt_and_time_make_nonces_unique() {
        assert_ne!(key().issue(T0, 1), key().issue(T0, 2));
        assert_ne!(key().issue(T0, 1), key().issue(T0 + 1, 1));
    }

    #[test]
    fn another_key_does_not_accept_it() {
        let n = key().issue(T0, 1);
        assert_eq!(
            NonceKey::new([8; 32]).check(&n, T0, 300),
            NonceState::Invalid
        );
    }

    #[test]
    fn future_issue_time_beyond_the_skew_is_invalid() {
        let n = key().issue(T0 + MAX_FUTURE_SKEW_SECS, 1);
        assert_eq!(key().check(&n, T0, 300), NonceState::Fresh);
        let n = key().issue(T0 + MAX_FUTURE_SKEW_SECS + 1, 1);
        assert_eq!(key().check(&n, T0, 300), NonceState::Invalid);
    }

    #[test]
    fn every_single_character_change_is_invalid() {
        let n = key().issue(T0, 99);
        for i in 0..n.len() {
            for replacement in ['A', 'z', '0', '-', '_'] {
                let mut m = n.clone().into_bytes();
                if char::from(m[i]) == replacement {
                    continue;
                }
                m[i] = replacement as u8;
                let m = String::from_utf8(m).unwrap();
                assert_eq!(key().check(&m, T0, 300), NonceState::Invalid, "{m}");
            }
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        assert_eq!(format!("{:?}", key()), "NonceKey(..)");
    }
}
