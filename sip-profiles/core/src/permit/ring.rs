//! The proxy's token keys: a current key that signs and a previous key that still
//! verifies, so a key can be rotated without refusing tokens of calls in flight.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::CryptoRng;
use zeroize::Zeroize;

use super::token::{Token, TokenClaims, TokenError};

/// Length of a proxy key in bytes (HMAC-SHA256 wants at least the hash length,
/// RFC 2104 §3).
pub const PROXY_KEY_LEN: usize = 32;

/// A key identifier: a small number printed in decimal in the token (`v1.<kid>...`).
/// Operators number their keys (1, 2, 3, ...); the id is not secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 256-bit proxy secret. `Debug` shows nothing of it, there is no `Display`, and
/// its bytes are overwritten with zeros when it is dropped.
#[derive(Clone)]
pub struct ProxyKey {
    bytes: [u8; PROXY_KEY_LEN],
}

impl std::fmt::Debug for ProxyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyKey(..)")
    }
}

impl Drop for ProxyKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// A proxy key given in configuration was not 43 base64url characters (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a proxy key is 32 bytes written as 43 base64url characters without padding")]
pub struct BadProxyKey;

impl ProxyKey {
    /// `bytes` must come from a cryptographic random source.
    pub fn from_bytes(bytes: [u8; PROXY_KEY_LEN]) -> Self {
        Self { bytes }
    }

    /// A fresh key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; PROXY_KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    /// Reads a key written by [`ProxyKey::to_base64url`] (configuration files).
    pub fn from_base64url(text: &str) -> Result<Self, BadProxyKey> {
        let text = text.trim();
        if text.len() != 43 {
            return Err(BadProxyKey);
        }
        let mut bytes = [0u8; PROXY_KEY_LEN];
        if let Ok(PROXY_KEY_LEN) = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(Self { bytes })
        } else {
            bytes.zeroize();
            Err(BadProxyKey)
        }
    }

    /// The key as 43 base64url characters, for writing a configuration file. Never
    /// log the result.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; PROXY_KEY_LEN] {
        &self.bytes
    }
}

/// Rotation was asked with the id the current key already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("key id {0} is already the current key's id")]
pub struct KeyIdInUse(pub KeyId);

/// The keys a proxy signs and verifies permit tokens with: the current key signs,
/// the current and the previous key verify. Rotation: [`KeyRing::rotate`] makes a
/// new key current and the old current key previous (dropping the older previous
/// one); once every token signed under the previous key has expired (the token
/// lifetime after the rotation), [`KeyRing::drop_previous`] retires it.
/// Servers of one cluster share the ring.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: (KeyId, ProxyKey),
    previous: Option<(KeyId, ProxyKey)>,
}

impl KeyRing {
    /// A ring with one key.
    pub fn new(id: KeyId, key: ProxyKey) -> Self {
        Self {
            current: (id, key),
            previous: None,
        }
    }

    /// A ring with a current and a previous key (e.g. read back from configuration
    /// after a restart in the middle of a rotation).
    pub fn with_previous(
        current: (KeyId, ProxyKey),
        previous: (KeyId, ProxyKey),
    ) -> Result<Self, KeyIdInUse> {
        if current.0 == previous.0 {
            return Err(KeyIdInUse(current.0));
        }
        Ok(Self {
            current,
            previous: Some(previous),
        })
    }

    /// `key` becomes current under `id`; the current key becomes previous; the
    /// previous key is dropped.
    pub fn rotate(&mut self, id: KeyId, key: ProxyKey) -> Result<(), KeyIdInUse> {
        if id == self.current.0 {
            return Err(KeyIdInUse(id));
        }
        let old = std::mem::replace(&mut self.current, (id, key));
        self.previous = Some(old);
        Ok(())
    }

    /// Retires the previous key: tokens signed under it fail with
    /// [`TokenError::UnknownKey`] from now on.
    pub fn drop_previous(&mut self) {
        self.previous = None;
    }

    /// The id of the signing key.
    pub fn current_id(&self) -> KeyId {
        self.current.0
    }

    /// The id of the key that still verifies, if any.
    pub fn previous_id(&self) -> Option<KeyId> {
        self.previous.as_ref().map(|(id, _)| *id)
    }

    pub(crate) fn current(&self) -> (KeyId, &ProxyKey) {
        (self.current.0, &self.current.1)
    }

    /// The key with id `id`, if the ring still holds it.
    pub(crate) fn key(&self, id: KeyId) -> Option<&ProxyKey> {
        if self.current.0 == id {
            return Some(&self.current.1);
        }
        match &self.previous {
            Some((pid, key)) if *pid == id => Some(key),
            _ => None,
        }
    }

    /// Checks `token` for `claims` at `unix_now`: the key id must be in the ring,
    /// the MAC must match (compared in constant time), and the token must not have
    /// expired (`unix_now < expires`). The MAC is checked before the expiry, so an
    /// expiry that was tampered with reports [`TokenError::BadMac`].
    ///
    /// This proves the proxy issued the token for exactly these claims; it does not
    /// remember use. One-time use is the callee's [`TokenBook`](super::TokenBook)
    /// (or a proxy-side replay set keyed by [`Verified::nonce`]).
    pub fn verify(
        &self,
        token: &Token,
        claims: &TokenClaims<'_>,
        unix_now: u64,
    ) -> Result<Verified, TokenError> {
        let key = self.key(token.key_id()).ok_or(TokenError::UnknownKey)?;
        if !token.mac_matches(key, claims) {
            return Err(TokenError::BadMac);
        }
        if unix_now >= token.expires() {
            return Err(TokenError::Expired);
        }
        Ok(Verified {
            key_id: token.key_id(),
            expires: token.expires(),
            nonce: *token.nonce(),
            by_previous_key: token.key_id() != self.current.0,
        })
    }
}

/// Proof that a token was issued by this ring's keys for the claims it was checked
/// against, and had not expired when checked. Only [`KeyRing::verify`] makes one.
/// `Debug` leaves the nonce out.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    key_id: KeyId,
    expires: u64,
    nonce: [u8; 16],
    by_previous_key: bool,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("key_id", &self.key_id)
            .field("expires", &self.expires)
            .field("by_previous_key", &self.by_previous_key)
            .finish_non_exhaustive()
    }
}

impl Verified {
    /// The id of the key that signed the token.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The token's expiry, unix seconds.
    pub fn expires(&self) -> u64 {
        self.expires
    }

    /// The token's random nonce: a unique id for a proxy-side replay set.
    pub fn nonce(&self) -> &[u8; 16] {
        &self.nonce
    }

    /// True when the previous (not the current) key signed the token.
    pub fn by_previous_key(&self) -> bool {
        self.by_previous_key
    }
}
