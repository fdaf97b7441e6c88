//! SDES `a=crypto` attributes (RFC 4568 §9.1 grammar, §6 for SRTP), parsed and
//! printed as a pair.
//!
//! ```text
//! a=crypto:<tag> 1*WSP <crypto-suite> 1*WSP <key-params> *(1*WSP <session-param>)
//! key-params = key-param *(";" key-param)          key-param = key-method ":" key-info
//! SRTP inline key-info = key-salt ["|" lifetime] ["|" mki]   (RFC 4568 §9.2)
//! lifetime = ["2^"] 1*DIGIT                          mki = mki-value ":" mki-length
//! ```
//!
//! Printing uses one space between fields and standard base64 with padding for the
//! key-salt, so `print(parse(x)) == x` for lines written that way (RFC 4568's own
//! examples are).

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use zeroize::Zeroize;

use super::session::SrtpKeys;

/// Decodes standard base64 with or without the `=` padding (both occur in the wild).
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An SRTP crypto-suite (RFC 4568 §6.2, RFC 7714 §14.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// `AES_CM_128_HMAC_SHA1_80` (RFC 4568 §6.2.1): 128-bit key, 112-bit salt.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2.2): 128-bit key, 112-bit salt.
    AesCm128HmacSha1_32,
    /// `AEAD_AES_128_GCM` (RFC 7714 §14.2): 128-bit key, 96-bit salt.
    AeadAes128Gcm,
    /// `AEAD_AES_256_GCM` (RFC 7714 §14.2): 256-bit key, 96-bit salt.
    AeadAes256Gcm,
    /// Any other suite name, kept as written.
    Other(String),
}

impl SrtpSuite {
    /// The RFC 4568 name.
    pub fn name(&self) -> &str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpSuite::AeadAes256Gcm => "AEAD_AES_256_GCM",
            SrtpSuite::Other(name) => name,
        }
    }

    /// Reads a suite name (case-sensitive, as RFC 4568 registers them).
    pub fn from_name(name: &str) -> SrtpSuite {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => SrtpSuite::AesCm128HmacSha1_80,
            "AES_CM_128_HMAC_SHA1_32" => SrtpSuite::AesCm128HmacSha1_32,
            "AEAD_AES_128_GCM" => SrtpSuite::AeadAes128Gcm,
            "AEAD_AES_256_GCM" => SrtpSuite::AeadAes256Gcm,
            other => SrtpSuite::Other(other.to_owned()),
        }
    }

    /// (master key length, master salt length) in bytes; `None` for unknown suites.
    pub fn key_salt_len(&self) -> Option<(usize, usize)> {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => Some((16, 14)),
            SrtpSuite::AeadAes128Gcm => Some((16, 12)),
            SrtpSuite::AeadAes256Gcm => Some((32, 12)),
            SrtpSuite::Other(_) => None,
        }
    }
}

/// Why an `a=crypto` line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdesError {
    #[error("not an a=crypto attribute")]
    NotCrypto,
    #[error("a=crypto tag is not 1 to 9 digits")]
    BadTag,
    #[error("a=crypto crypto-suite missing or not letters, digits and '_'")]
    BadSuite,
    #[error("a=crypto key-params missing or malformed")]
    BadKeyParams,
    #[error("a=crypto inline key-salt is not base64")]
    BadBase64,
    #[error("a=crypto key-salt length does not fit the crypto-suite")]
    KeyLength,
    #[error("a=crypto key lifetime malformed")]
    BadLifetime,
    #[error("a=crypto MKI malformed")]
    BadMki,
}

/// SRTP master key lifetime (RFC 4568 §6.1), as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// `2^n` packets.
    PowerOfTwo(u8),
    /// A decimal number of packets.
    Packets(u64),
}

/// Master key identifier (RFC 4568 §6.1 `mki-value ":" mki-length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mki {
    pub value: u64,
    /// Length of the MKI field in SRTP packets, bytes (1 to 128).
    pub length: u8,
}

/// One key-param. `Debug` does not show key bytes; zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyParam {
    /// `inline:<key-salt>[|lifetime][|mki]`.
    Inline {
        key_salt: Vec<u8>,
        lifetime: Option<Lifetime>,
        mki: Option<Mki>,
    },
    /// Another key method, kept as written.
    Other { method: String, info: String },
}

impl std::fmt::Debug for KeyParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyParam::Inline { lifetime, mki, .. } => f
                .debug_struct("Inline")
                .field("lifetime", lifetime)
                .field("mki", mki)
                .finish_non_exhaustive(),
            KeyParam::Other { method, .. } => f
                .debug_struct("Other")
                .field("method", method)
                .finish_non_exhaustive(),
        }
    }
}

impl Drop for KeyParam {
    fn drop(&mut self) {
        match self {
            KeyParam::Inline { key_salt, .. } => key_salt.zeroize(),
            KeyParam::Other { info, .. } => info.zeroize(),
        }
    }
}

/// One `a=crypto` attribute. No `Display` (it carries keys): print with
/// [`CryptoAttr::to_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttr {
    /// 1 to 9 decimal digits (RFC 4568 §4.1).
    pub tag: u32,
    pub suite: SrtpSuite,
    /// At least one.
    pub key_params: Vec<KeyParam>,
    /// Session parameters (e.g. `KDR=1`, `UNENCRYPTED_SRTCP`), kept as written.
    pub session_params: Vec<String>,
}

impl CryptoAttr {
    /// An attribute offering `keys` inline, without lifetime or MKI.
    pub fn inline(tag: u32, keys: &SrtpKeys) -> CryptoAttr {
        CryptoAttr {
            tag,
            suite: keys.suite().clone(),
            key_params: vec![KeyParam::Inline {
                key_salt: keys.key_salt().to_vec(),
                lifetime: None,
                mki: None,
            }],
            session_params: Vec::new(),
        }
    }

    /// The SRTP keys of the first inline key-param, when the suite is known.
    pub fn srtp_keys(&self) -> Option<SrtpKeys> {
        self.key_params.iter().find_map(|p| match p {
            KeyParam::Inline { key_salt, .. } => {
                SrtpKeys::from_key_salt(self.suite.clone(), key_salt)
            }
            KeyParam::Other { .. } => None,
        })
    }

    /// Parses a whole line `a=crypto:...` (a trailing CR/LF is ignored).
    pub fn parse_line(line: &str) -> Result<CryptoAttr, SdesError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let value = line.strip_prefix("a=crypto:").ok_or(SdesError::NotCrypto)?;
        Self::parse(value)
    }

    /// Parses the attribute value (what follows `a=crypto:`).
    pub fn parse(value: &str) -> Result<CryptoAttr, SdesError> {
        let mut fields = value.split([' ', '\t']).filter(|f| !f.is_empty());
        let tag = fields.next().ok_or(SdesError::BadTag)?;
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SdesError::BadTag);
        }
        let tag: u32 = tag.parse().map_err(|_| SdesError::BadTag)?;
        let suite = fields.next().ok_or(SdesError::BadSuite)?;
        if !suite
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(SdesError::BadSuite);
        }
        let suite = SrtpSuite::from_name(suite);
        let params = fields.next().ok_or(SdesError::BadKeyParams)?;
        let key_params = params
            .split(';')
            .map(|p| parse_key_param(p, &suite))
            .collect::<Result<Vec<_>, _>>()?;
        let session_params = fields.map(str::to_owned).collect();
        Ok(CryptoAttr {
            tag,
            suite,
            key_params,
            session_params,
        })
    }

    /// The attribute value: `<tag> <suite> <key-params>[ <session-param>...]`.
    pub fn to_value(&self) -> String {
        let mut out = format!("{} {} ", self.tag, self.suite.name());
        for (i, param) in self.key_params.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            match param {
                KeyParam::Inline {
                    key_salt,
                    lifetime,
                    mki,
                } => {
                    out.push_str("inline:");
                    STANDARD.encode_string(key_salt, &mut out);
                    match lifetime {
                        Some(Lifetime::PowerOfTwo(n)) => {
                            let _ = write!(out, "|2^{n}");
                        }
                        Some(Lifetime::Packets(n)) => {
                            let _ = write!(out, "|{n}");
                        }
                        None => {}
                    }
                    if let Some(mki) = mki {
                        let _ = write!(out, "|{}:{}", mki.value, mki.length);
                    }
                }
                KeyParam::Other { method, info } => {
                    out.push_str(method);
                    out.push(':');
                    out.push_str(info);
                }
            }
        }
        for session_param in &self.session_params {
            out.push(' ');
            out.push_str(session_param);
        }
        out
    }

    /// The whole line `a=crypto:<value>`, without line ending.
    pub fn to_line(&self) -> String {
        format!("a=crypto:{}", self.to_value())
    }
}

fn parse_key_param(param: &str, suite: &SrtpSuite) -> Result<KeyParam, SdesError> {
    let (method, info) = param.split_once(':').ok_or(SdesError::BadKeyParams)?;
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || info.is_empty()
        || !info.bytes().all(|b| b.is_ascii_graphic() && b != b';')
    {
        return Err(SdesError::BadKeyParams);
    }
    if method != "inline" {
        return Ok(KeyParam::Other {
            method: method.to_owned(),
            info: info.to_owned(),
        });
    }
    let mut parts = info.split('|');
    let key_salt = parts.next().unwrap_or_default();
    let key_salt = LENIENT_STANDARD
        .decode(key_salt)
        .map_err(|_| SdesError::BadBase64)?;
    if let Some((key_len, salt_len)) = suite.key_salt_len()
        && key_salt.len() != key_len + salt_len
    {
        return Err(SdesError::KeyLength);
    }
    let mut lifetime = None;
    let mut mki = None;
    for part in parts {
        // RFC 4568 §9.2: lifetime before MKI; an MKI contains ':', a lifetime never.
        if let Some((value, length)) = part.split_once(':') {
            if mki.is_some() {
                return Err(SdesError::BadMki);
            }
            mki = Some(parse_mki(value, length)?);
        } else {
            if lifetime.is_some() || mki.is_some() {
                return Err(SdesError::BadLifetime);
            }
            lifetime = Some(parse_lifetime(part)?);
        }
    }
    Ok(KeyParam::Inline {
        key_salt,
        lifetime,
        mki,
    })
}

fn digits(text: &str, max_len: usize) -> Option<u64> {
    if text.is_empty() || text.len() > max_len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_lifetime(text: &str) -> Result<Lifetime, SdesError> {
    if let Some(exp) = text.strip_prefix("2^") {
        let n = digits(exp, 2).ok_or(SdesError::BadLifetime)?;
        // SRTP counts packets with 48 bits (RFC 3711 §3.3.1); RFC 4568 §6.1 caps
        // the lifetime at 2^48 for AES-CM, 2^64 is the outer limit of the field.
        if n > 64 {
            return Err(SdesError::BadLifetime);
        }
        Ok(Lifetime::PowerOfTwo(n as u8))
    } else {
        digits(text, 20)
            .map(Lifetime::Packets)
            .ok_or(SdesError::BadLifetime)
    }
}

fn parse_mki(value: &str, length: &str) -> Result<Mki, SdesError> {
    let value = digits(value, 20).ok_or(SdesError::BadMki)?;
    let length = digits(length, 3).ok_or(SdesError::BadMki)?;
    // RFC 4568 §6.1: the MKI length is 1 to 128 bytes.
    if !(1..=128).contains(&length) {
        return Err(SdesError::BadMki);
    }
    Ok(Mki {
        value,
        length: length as u8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4568 §4 example line (also in §6.1's discussion of lifetime and MKI).
    const RFC4568_EXAMPLE: &str = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32";

    #[test]
    fn rfc4568_example_round_trips() {
        let attr = CryptoAttr::parse_line(RFC4568_EXAMPLE).unwrap();
        assert_eq!(attr.tag, 1);
        assert_eq!(attr.suite, SrtpSuite::AesCm128HmacSha1_80);
        let KeyParam::Inline {
            key_salt,
            lifetime,
            mki,
        } = &attr.key_params[0]
        else {
            panic!("inline expected");
        };
        assert_eq!(key_salt.len(), 30);
        assert_eq!(&key_salt[..4], b"=-n@");
        assert_eq!(*lifetime, Some(Lifetime::PowerOfTwo(20)));
        assert_eq!(
            *mki,
            Some(Mki {
                value: 1,
                length: 32
            })
        );
        assert_eq!(attr.to_line(), RFC4568_EXAMPLE);
        let keys = attr.srtp_keys().unwrap();
        assert_eq!(keys.master_key(), &key_salt[..16]);
        assert_eq!(keys.master_salt(), &key_salt[16..]);
        assert!(!format!("{attr:?}").contains("PS1u"));
    }

    #[test]
    fn several_keys_session_params_and_other_methods() {
        let line = "a=crypto:22 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:4;inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:4 FEC_ORDER=FEC_SRTP";
        let attr = CryptoAttr::parse_line(line).unwrap();
        assert_eq!(attr.key_params.len(), 2);
        assert_eq!(attr.session_params, vec!["FEC_ORDER=FEC_SRTP".to_owned()]);
        assert_eq!(attr.to_line(), line);
        let other = CryptoAttr::parse("3 SOME_SUITE mikey:abc|def KDR=1").unwrap();
        assert_eq!(other.suite, SrtpSuite::Other("SOME_SUITE".into()));
        assert_eq!(other.to_value(), "3 SOME_SUITE mikey:abc|def KDR=1");
        assert!(other.srtp_keys().is_none());
        // Lifetime as a plain number, extra whitespace tolerated, padding optional.
        let gcm = CryptoAttr::parse(
            "1\tAEAD_AES_128_GCM  inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA|1000",
        )
        .unwrap();
        assert_eq!(
            gcm.to_value(),
            "1 AEAD_AES_128_GCM inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==|1000"
        );
    }

    #[test]
    fn malformed_lines_get_their_error() {
        let key = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        for (line, err) in [
            ("a=rtpmap:0 PCMU/8000".to_owned(), SdesError::NotCrypto),
            ("a=crypto:".to_owned(), SdesError::BadTag),
            (
                "a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:x".to_owned(),
                SdesError::BadTag,
            ),
            (
                "a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:x".to_owned(),
                SdesError::BadTag,
            ),
            ("a=crypto:1".to_owned(), SdesError::BadSuite),
            ("a=crypto:1 AES-CM inline:x".to_owned(), SdesError::BadSuite),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80".to_owned(),
                SdesError::BadKeyParams,
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline".to_owned(),
                SdesError::BadKeyParams,
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:".to_owned(),
                SdesError::BadKeyParams,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key};"),
                SdesError::BadKeyParams,
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!".to_owned(),
                SdesError::BadBase64,
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA".to_owned(),
                SdesError::KeyLength,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^65"),
                SdesError::BadLifetime,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^"),
                SdesError::BadLifetime,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:4|2^20"),
                SdesError::BadLifetime,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:0"),
                SdesError::BadMki,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:129"),
                SdesError::BadMki,
            ),
            (
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:4|2:4"),
                SdesError::BadMki,
            ),
        ] {
            assert_eq!(CryptoAttr::parse_line(&line), Err(err), "{line}");
        }
    }
}
