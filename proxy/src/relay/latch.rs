//! The latch datagram (docs/profile.md "Media relay"): how a UA proves to a relay port
//! that it knows the call's permit token before the relay sends it anything or
//! forwards anything from it. Sans-IO, fixed 48 octets:
//!
//! ```text
//! 0      4  magic 0x0B 0x50 0x52 0x4C ("\x0bPRL")
//! 4      1  kind: 1 = latch (UA → relay), 2 = latched (relay → UA, the answer)
//! 5      1  leg: 0 = the caller (offerer), 1 = the callee (answerer)
//! 6      2  the relay port the datagram is sent to (latch) or from (latched), big-endian
//! 8      8  counter, big-endian, ≥ 1; a new latch of the same leg must use a larger one
//! 16    32  HMAC-SHA256(key = the permit token's ASCII bytes,
//!                       data = "permit relay latch v1" ‖ octets 0..16)
//! ```
//!
//! The first octet, 11, lies in 4..=15, a range RFC 7983 §7 leaves unassigned: it is
//! never the first octet of RTP/RTCP (128..=191), STUN (0..=3), ZRTP (16..=19), DTLS
//! (20..=63) or TURN channel data (64..=79), so a latched party's media is never taken
//! for a latch and the relay can tell them apart by one comparison.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Length of a latch or latched datagram.
pub const LATCH_LEN: usize = 48;
/// The first four octets of every latch datagram.
pub const MAGIC: [u8; 4] = [0x0B, b'P', b'R', b'L'];
/// The fixed label the MAC covers before the header.
pub const LABEL: &[u8] = b"permit relay latch v1";

/// Which side of the call a relay port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The caller, who sent the INVITE with the offer.
    Offerer = 0,
    /// The callee, who answers it.
    Answerer = 1,
}

impl Leg {
    #[must_use]
    pub fn other(self) -> Leg {
        match self {
            Leg::Offerer => Leg::Answerer,
            Leg::Answerer => Leg::Offerer,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn from_octet(b: u8) -> Option<Leg> {
        match b {
            0 => Some(Leg::Offerer),
            1 => Some(Leg::Answerer),
            _ => None,
        }
    }
}

/// The two kinds of latch datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UA → relay: "send me this leg's media here".
    Latch = 1,
    /// Relay → UA: the latch was accepted (same counter).
    Latched = 2,
}

/// The fields of a latch datagram, before its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latch {
    pub kind: Kind,
    pub leg: Leg,
    pub port: u16,
    pub counter: u64,
}

/// Why a datagram that starts with [`MAGIC`] was not accepted as a latch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LatchError {
    #[error("latch datagram of {0} octets, expected 48")]
    Length(usize),
    #[error("unknown latch kind or leg")]
    Malformed,
    #[error("latch MAC does not verify with this call's token")]
    BadProof,
}

/// The HMAC key of one call: the permit token. Never printed.
#[derive(Clone)]
pub struct LatchKey(Hmac<Sha256>);

impl std::fmt::Debug for LatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatchKey(..)")
    }
}

impl LatchKey {
    /// The key is the token's wire form (`v1.<kid>.<exp>.<nonce>.<mac>`) as ASCII.
    pub fn new(token: &[u8]) -> LatchKey {
        // HMAC accepts keys of any length (RFC 2104 §2).
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        LatchKey(mac)
    }

    fn mac(&self, head: &[u8]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(LABEL);
        m.update(head);
        m.finalize().into_bytes().into()
    }
}

/// Whether `data` claims to be a latch datagram (its magic), whatever its length.
pub fn looks_like_latch(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() && data[..MAGIC.len()] == MAGIC
}

impl Latch {
    /// The 48 octets on the wire, MAC included.
    pub fn encode(&self, key: &LatchKey) -> [u8; LATCH_LEN] {
        let mut out = [0u8; LATCH_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.leg as u8;
        out[6..8].copy_from_slice(&self.port.to_be_bytes());
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
        let mac = key.mac(&out[..16]);
        out[16..].copy_from_slice(&mac);
        out
    }

    /// Reads and verifies a datagram (constant-time MAC comparison).
    pub fn verify(data: &[u8], key: &LatchKey) -> Result<Latch, LatchError> {
        if data.len() != LATCH_LEN {
            return Err(LatchError::Length(data.len()));
        }
        if data[..4] != MAGIC {
            return Err(LatchError::Malformed);
        }
        let kind = match data[4] {
            1 => Kind::Latch,
            2 => Kind::Latched,
            _ => return Err(LatchError::Malformed),
        };
        let leg = Leg::from_octet(data[5]).ok_or(LatchError::Malformed)?;
        let expected = key.mac(&data[..16]);
        if !bool::from(expected.ct_eq(&data[16..])) {
            return Err(LatchError::BadProof);
        }
        let port = u16::from_be_bytes([data[6], data[7]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&data[8..16]);
        Ok(Latch {
            kind,
            leg,
            port,
            counter: u64::from_be_bytes(c),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] =
        b"v1.1.1767225600.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    #[test]
    fn encodes_the_documented_layout() {
        let key = LatchKey::new(TOKEN);
        let l = Latch {
            kind: Kind::Latch,
            leg: Leg::Answerer,
            port: 40_001,
            counter: 7,
        };
        let d = l.encode(&key);
        assert_eq!(&d[..8], &[0x0B, b'P', b'R', b'L', 1, 1, 0x9C, 0x41]);
        assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0, 7]);
        // The MAC is HMAC-SHA256(token, label ‖ header), computed independently here.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(TOKEN).unwrap();
        m.update(b"permit relay latch v1");
        m.update(&d[..16]);
        assert_eq!(&d[16..], m.finalize().into_bytes().as_slice());
        assert_eq!(Latch::verify(&d, &key), Ok(l));
    }

    #[test]
    fn another_token_or_a_changed_octet_fails() {
        let key = LatchKey::new(TOKEN);
        let l = Latch {
            kind: Kind::Latch,
            leg: Leg::Offerer,
            port: 40_000,
            counter: 1,
        };
        let d = l.encode(&key);
        let other = LatchKey::new(b"v1.1.1767225600.other");
        assert_eq!(Latch::verify(&d, &other), Err(LatchError::BadProof));
        for i in 4..LATCH_LEN {
            let mut bad = d;
            bad[i] ^= 0x01;
            assert!(Latch::verify(&bad, &key).is_err(), "octet {i} flipped");
        }
        assert_eq!(Latch::verify(&d[..47], &key), Err(LatchError::Length(47)));
        assert!(looks_like_latch(&d) && !looks_like_latch(&[0x80, 0, 0, 0]));
        assert_eq!(format!("{key:?}"), "LatchKey(..)");
    }
}
