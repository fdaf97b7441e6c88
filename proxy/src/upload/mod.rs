//! Large deposits over HTTP (docs/profile.md "Store and forward", "Large files"): a
//! permitted caller announces the file with a MESSAGE (`application/permit-upload+json`)
//! and gets an upload URL whose token the proxy signed; the file goes up in resumable
//! chunks (`PUT` with `Content-Range`, `HEAD` for the offset reached), is checked
//! against the announced SHA-256 and only then becomes an item. The callee downloads it
//! with the URL in the delivering MESSAGE's `Permit-Download` header.
//!
//! This module holds what needs no I/O: tokens, the announcement, `Content-Range`
//! and `Range` parsing. [`http`] is the tokio shell.

pub mod http;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::mailbox::ItemId;

/// The body type of an upload announcement (a MESSAGE with `Request-Disposition: queue`).
pub const ANNOUNCE_TYPE: &str = "application/permit-upload+json";
/// The body type of the item that stands for an uploaded file.
pub const FILE_TYPE: &str = "application/permit-file+json";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Upload,
    Download,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Upload => b"permit-upload",
            Self::Download => b"permit-download",
        }
    }
}

/// Signs and checks the tokens of upload and download URLs: `<expiry>.<mac>` with the
/// MAC HMAC-SHA256(key, label ‖ 0 ‖ id ‖ expiry as 8 bytes), first 16 bytes, base64url.
#[derive(Clone)]
pub struct Tokens {
    key: [u8; 32],
    /// `http://host:port` of the upload listener, as callers reach it.
    pub base: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(key: [u8; 32], base: String) -> Self {
        Self { key, base }
    }

    fn mac(&self, purpose: Purpose, id: &ItemId, expiry: u64) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        m.update(purpose.label());
        m.update(&[0]);
        m.update(&id.0);
        m.update(&expiry.to_be_bytes());
        URL_SAFE_NO_PAD.encode(&m.finalize().into_bytes()[..16])
    }

    pub fn token(&self, purpose: Purpose, id: &ItemId, expiry: u64) -> String {
        format!("{expiry}.{}", self.mac(purpose, id, expiry))
    }

    /// Whether `token` was issued for `purpose` and `id` and is still valid at `unix`.
    pub fn check(&self, purpose: Purpose, id: &ItemId, token: &str, unix: u64) -> bool {
        let Some((expiry, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(expiry) = expiry.parse::<u64>() else {
            return false;
        };
        let want = self.mac(purpose, id, expiry);
        expiry > unix && subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac.as_bytes()).into()
    }

    /// The URL of an upload slot or of a stored file.
    pub fn url(&self, purpose: Purpose, id: &ItemId, expiry: u64) -> String {
        let path = match purpose {
            Purpose::Upload => "upload",
            Purpose::Download => "files",
        };
        let t = self.token(purpose, id, expiry);
        format!("{}/{path}/{id}?t={t}", self.base)
    }
}

/// The caller's announcement of a file (body of the MESSAGE).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    pub size: u64,
    pub sha256: String,
    #[serde(rename = "type")]
    pub content_type: Option<String>,
    pub name: Option<String>,
}

impl Announce {
    /// Parses and checks an announcement: a size, 64 hex digits, a sane type and name.
    pub fn parse(body: &[u8]) -> Option<(Self, [u8; 32])> {
        let a: Self = serde_json::from_slice(body).ok()?;
        let digest = parse_sha256(&a.sha256)?;
        let sane = |s: &Option<String>, max: usize| {
            s.as_ref()
                .is_none_or(|s| s.len() <= max && !s.chars().any(char::is_control))
        };
        (sane(&a.content_type, 128) && sane(&a.name, 255)).then_some((a, digest))
    }
}

/// The body of the item standing for an uploaded file (`application/permit-file+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub file: String,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// 64 hex digits.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// `Content-Range: bytes FIRST-LAST/TOTAL` of a chunk (RFC 9110 §14.4): `(first,
/// last, total)`, `None` when malformed or inconsistent.
pub fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (
        first.trim().parse::<u64>().ok()?,
        last.trim().parse::<u64>().ok()?,
        total.trim().parse::<u64>().ok()?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

/// `Range: bytes=FIRST-` or `bytes=FIRST-LAST` (RFC 9110 §14.2), one range only:
/// `(first, last)` clamped to `size`; `None` when absent or unsatisfiable.
pub fn range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse::<u64>().ok()?;
    let last = match last.trim() {
        "" => size.checked_sub(1)?,
        l => l.parse::<u64>().ok()?.min(size.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_purpose_id_and_expiry() {
        let t = Tokens::new([7; 32], "http://127.0.0.1:8080".into());
        let id = ItemId([1; 16]);
        let tok = t.token(Purpose::Upload, &id, 1000);
        assert!(t.check(Purpose::Upload, &id, &tok, 999));
        assert!(!t.check(Purpose::Upload, &id, &tok, 1000), "expired");
        assert!(!t.check(Purpose::Download, &id, &tok, 999), "other purpose");
        assert!(
            !t.check(Purpose::Upload, &ItemId([2; 16]), &tok, 999),
            "other id"
        );
        let forged = tok.replacen("1000.", "2000.", 1);
        assert!(!t.check(Purpose::Upload, &id, &forged, 999), "other expiry");
        assert!(!t.check(Purpose::Upload, &id, "garbage", 0));
        let other = Tokens::new([8; 32], String::new());
        assert!(!other.check(Purpose::Upload, &id, &tok, 999), "other key");
        assert_eq!(
            t.url(Purpose::Download, &id, 5),
            format!(
                "http://127.0.0.1:8080/files/{id}?t={}",
                t.token(Purpose::Download, &id, 5)
            )
        );
    }

    #[test]
    fn announcements_ranges_and_digests() {
        let ok = format!(
            "{{\"size\":10,\"sha256\":\"{}\",\"type\":\"image/png\",\"name\":\"a.png\"}}",
            "ab".repeat(32)
        );
        let (a, d) = Announce::parse(ok.as_bytes()).unwrap();
        assert_eq!((a.size, d), (10, [0xab; 32]));
        assert!(Announce::parse(b"{\"size\":1,\"sha256\":\"xy\"}").is_none());
        let bad_name = ok.replace("a.png", "a\\n.png");
        assert!(Announce::parse(bad_name.as_bytes()).is_none());
        assert_eq!(content_range("bytes 0-9/10"), Some((0, 9, 10)));
        assert_eq!(content_range("bytes 5-4/10"), None);
        assert_eq!(content_range("bytes 0-10/10"), None);
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(range("bytes=4-100", 10), Some((4, 9)));
        assert_eq!(range("bytes=10-", 10), None);
        assert_eq!(range("bytes=0-", 0), None);
    }
}
