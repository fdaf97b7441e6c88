//! End-to-end encryption of secret data for the callee (docs/profile.md "Data with
//! attributes"): the callee's X25519 key pair (RFC 7748 §5) is its identity; a sender
//! seals for the public key with a fresh ephemeral key, HKDF-SHA256 (RFC 5869) and
//! AES-256-GCM (NIST SP 800-38D). Only the callee's private key opens the result, so
//! the proxy that stores and forwards it holds ciphertext only.
//!
//! Sealed envelope (`application/permit-sealed`):
//! `0x01 ‖ ephemeral public key (32) ‖ AES-256-GCM(plaintext) ‖ tag (16)`, with
//! key and nonce = HKDF-SHA256(ikm = X25519(eph, recipient), salt = eph_pub ‖
//! recipient_pub, info = "permit-sealed v1"), 32 + 12 bytes, and the version byte as
//! associated data. Plaintext: `len (u16, big-endian) ‖ {"type","name"} JSON ‖ data`,
//! so the type and file name are sealed too.

use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

/// The content type of sealed data.
pub const SEALED_TYPE: &str = "application/permit-sealed";
const VERSION: u8 = 1;
const INFO: &[u8] = b"permit-sealed v1";
const OVERHEAD: usize = 1 + 32 + 16;

/// Why sealed data could not be opened, or a key not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("not sealed data (too short or unknown version)")]
    Malformed,
    #[error("sealed for another key, or altered on the way")]
    Open,
    #[error("not an X25519 public key (43 base64url characters)")]
    BadPublicKey,
    #[error("the sealed contents are malformed")]
    Contents,
    #[error("identity file: {0}")]
    Identity(String),
}

/// The callee's key pair. Debug prints the public half only.
pub struct Identity {
    secret: StaticSecret,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public_text())
    }
}

impl Identity {
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(secret),
        }
    }

    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// The public key as 43 base64url characters (what senders are given).
    pub fn public_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public())
    }

    /// Reads the identity file (base64url of the private key), or creates it with
    /// `fresh` (owner-only permissions) when it does not exist.
    pub fn load_or_create(path: &Path, fresh: [u8; 32]) -> Result<Self, SealError> {
        let io = |e: std::io::Error| SealError::Identity(format!("{}: {e}", path.display()));
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let bytes = URL_SAFE_NO_PAD
                .decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| SealError::Identity(format!("{}: not a key", path.display())))?;
            return Ok(Self::from_bytes(bytes));
        }
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(io)?;
        std::io::Write::write_all(&mut f, URL_SAFE_NO_PAD.encode(fresh).as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Self::from_bytes(fresh))
    }

    /// Opens sealed data: (content type, file name, data).
    pub fn open(&self, sealed: &[u8]) -> Result<(String, Option<String>, Vec<u8>), SealError> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(SealError::Malformed);
        }
        let eph: [u8; 32] = sealed[1..33].try_into().map_err(|_| SealError::Malformed)?;
        let eph = PublicKey::from(eph);
        let shared = self.secret.diffie_hellman(&eph);
        if !shared.was_contributory() {
            return Err(SealError::Open);
        }
        let (key, nonce) = derive(shared.as_bytes(), eph.as_bytes(), &self.public());
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| SealError::Open)?;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed[33..],
                    aad: &[VERSION],
                },
            )
            .map_err(|_| SealError::Open)?;
        let len = usize::from(u16::from_be_bytes(
            plain
                .get(..2)
                .and_then(|b| b.try_into().ok())
                .ok_or(SealError::Contents)?,
        ));
        let meta = plain.get(2..2 + len).ok_or(SealError::Contents)?;
        let meta: serde_json::Value =
            serde_json::from_slice(meta).map_err(|_| SealError::Contents)?;
        let ctype = meta["type"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_string();
        let name = meta["name"].as_str().map(str::to_string);
        Ok((ctype, name, plain[2 + len..].to_vec()))
    }
}

/// Reads a public key given as 43 base64url characters.
pub fn parse_public(text: &str) -> Result<[u8; 32], SealError> {
    URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(SealError::BadPublicKey)
}

fn derive(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut okm = [0u8; 44];
    // 44 bytes is far below HKDF-SHA256's 255 × 32 limit (RFC 5869 §2.3).
    let _ = hk.expand(INFO, &mut okm);
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    key.copy_from_slice(&okm[..32]);
    nonce.copy_from_slice(&okm[32..]);
    (key, nonce)
}

/// Seals `data` (with its type and name) for `recipient`; `ephemeral` is 32 fresh
/// random bytes, never reused.
pub fn seal(
    recipient: &[u8; 32],
    ephemeral: [u8; 32],
    content_type: &str,
    name: Option<&str>,
    data: &[u8],
) -> Vec<u8> {
    let eph = StaticSecret::from(ephemeral);
    let eph_pub = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(*recipient));
    let (key, nonce) = derive(shared.as_bytes(), &eph_pub, recipient);
    let meta = serde_json::json!({ "type": content_type, "name": name }).to_string();
    let meta = &meta.as_bytes()[..meta.len().min(usize::from(u16::MAX))];
    let mut plain = Vec::with_capacity(2 + meta.len() + data.len());
    plain.extend_from_slice(&(meta.len() as u16).to_be_bytes());
    plain.extend_from_slice(meta);
    plain.extend_from_slice(data);
    let Ok(cipher) = Aes256Gcm::new_from_slice(&key) else {
        unreachable!("a 32-byte key is a valid AES-256 key")
    };
    let sealed = cipher.encrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: &plain,
            aad: &[VERSION],
        },
    );
    let Ok(sealed) = sealed else {
        unreachable!("AES-GCM encrypts any input below 64 GiB")
    };
    let mut out = Vec::with_capacity(33 + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&eph_pub);
    out.extend_from_slice(&sealed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_recipient_key() {
        let bob = Identity::from_bytes([7; 32]);
        let eve = Identity::from_bytes([9; 32]);
        let data = b"the launch code is 0000";
        let sealed = seal(&bob.public(), [3; 32], "text/plain", Some("code.txt"), data);
        let meta = r#"{"name":"code.txt","type":"text/plain"}"#;
        assert_eq!(sealed.len(), OVERHEAD + 2 + meta.len() + data.len());
        assert!(
            !sealed.windows(6).any(|w| w == b"launch" || w == b"code.t"),
            "plaintext or name visible"
        );
        let (ctype, name, plain) = bob.open(&sealed).unwrap();
        assert_eq!(
            (ctype.as_str(), name.as_deref()),
            ("text/plain", Some("code.txt"))
        );
        assert_eq!(plain, data);
        assert_eq!(eve.open(&sealed), Err(SealError::Open));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(bob.open(&altered), Err(SealError::Open));
        assert_eq!(bob.open(&sealed[..10]), Err(SealError::Malformed));
        // A fresh ephemeral key gives other bytes for the same data.
        assert_ne!(
            seal(&bob.public(), [4; 32], "text/plain", None, data),
            sealed
        );
    }

    #[test]
    fn low_order_ephemeral_keys_are_refused() {
        let bob = Identity::from_bytes([7; 32]);
        let mut sealed = vec![VERSION];
        sealed.extend_from_slice(&[0; 32]);
        sealed.extend_from_slice(&[0; 40]);
        assert_eq!(bob.open(&sealed), Err(SealError::Open));
    }

    #[test]
    fn public_keys_and_identity_files() {
        let dir = std::env::temp_dir().join(format!("permit-seal-{}", std::process::id()));
        let path = dir.join("id.key");
        let _ = std::fs::remove_file(&path);
        let a = Identity::load_or_create(&path, [5; 32]).unwrap();
        let b = Identity::load_or_create(&path, [6; 32]).unwrap();
        assert_eq!(a.public(), b.public(), "an existing file is kept");
        assert_eq!(parse_public(&a.public_text()).unwrap(), a.public());
        assert!(!format!("{a:?}").contains(&URL_SAFE_NO_PAD.encode([5u8; 32])));
        assert_eq!(parse_public("short"), Err(SealError::BadPublicKey));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
