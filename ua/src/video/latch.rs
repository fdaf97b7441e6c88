//! The UA's side of the relay latch (docs/profile.md "Latch: the datagram that proves
//! the token"): the 48-octet datagram that binds our relay leg to our media socket,
//! and the check of the relay's `latched` answer.
//!
//! ```text
//! 0 magic 0x0B 'P' 'R' 'L' | 4 kind | 5 leg | 6 relay port (BE) | 8 counter (BE)
//! 16 HMAC-SHA256(key = Permit-Token, "permit relay latch v1" || octets 0..16)
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const LATCH_LEN: usize = 48;
pub const MAGIC: [u8; 4] = [0x0B, b'P', b'R', b'L'];
const LABEL: &[u8] = b"permit relay latch v1";
const KIND_LATCH: u8 = 1;
const KIND_LATCHED: u8 = 2;

/// Which leg of the relay call is ours: the offerer's or the answerer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Caller = 0,
    Callee = 1,
}

fn mac(token: &str, head: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length (RFC 2104 §2).
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes())
        .expect("HMAC accepts any key length");
    m.update(LABEL);
    m.update(head);
    m.finalize().into_bytes().into()
}

fn head(kind: u8, leg: Leg, port: u16, counter: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = kind;
    h[5] = leg as u8;
    h[6..8].copy_from_slice(&port.to_be_bytes());
    h[8..].copy_from_slice(&counter.to_be_bytes());
    h
}

/// The latch datagram for our `leg` of relay port `port`, with `counter` (≥ 1, larger
/// for each re-latch).
pub fn latch(token: &str, leg: Leg, port: u16, counter: u64) -> [u8; LATCH_LEN] {
    let h = head(KIND_LATCH, leg, port, counter);
    let mut out = [0u8; LATCH_LEN];
    out[..16].copy_from_slice(&h);
    out[16..].copy_from_slice(&mac(token, &h));
    out
}

/// Whether `data` is the relay's `latched` answer to our latch (same leg, port and
/// counter, its MAC recomputed with kind 2), compared in constant time.
pub fn is_latched(data: &[u8], token: &str, leg: Leg, port: u16, counter: u64) -> bool {
    if data.len() != LATCH_LEN {
        return false;
    }
    let h = head(KIND_LATCHED, leg, port, counter);
    let want = mac(token, &h);
    let mut diff = 0u8;
    for (a, b) in data[..16]
        .iter()
        .zip(&h)
        .chain(data[16..].iter().zip(&want))
    {
        diff |= a ^ b;
    }
    diff == 0
}

/// Whether a datagram is a relay control message rather than media (RFC 7983 §7: the
/// first octet 11 is no RTP, STUN, DTLS or ZRTP).
pub fn looks_like_latch(data: &[u8]) -> bool {
    data.len() == LATCH_LEN && data.starts_with(&MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_answer() {
        let token =
            "v1.1.1700000060.paWlpaWlpaWlpaWlpaWlpQ.6dryj8mb4TB4-11Y12JDerPnQyn3buPrnijLw5Sf_DY";
        let l = latch(token, Leg::Callee, 40003, 1);
        assert_eq!(&l[..8], &[0x0b, b'P', b'R', b'L', 1, 1, 0x9c, 0x43]);
        assert_eq!(&l[8..16], &1u64.to_be_bytes());
        assert!(looks_like_latch(&l));
        // The relay's answer: kind 2, MAC recomputed.
        let mut answer = head(KIND_LATCHED, Leg::Callee, 40003, 1).to_vec();
        answer.extend_from_slice(&mac(token, &answer.clone()));
        assert!(is_latched(&answer, token, Leg::Callee, 40003, 1));
        assert!(!is_latched(&answer, token, Leg::Caller, 40003, 1));
        assert!(!is_latched(&answer, token, Leg::Callee, 40003, 2));
        assert!(!is_latched(&answer, "other", Leg::Callee, 40003, 1));
        assert!(
            !is_latched(&l, token, Leg::Callee, 40003, 1),
            "our own datagram"
        );
    }
}
