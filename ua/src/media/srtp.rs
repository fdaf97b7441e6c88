//! SRTP for one call's audio (RFC 3711; AEAD suites RFC 7714) with the SDES keys of
//! [`crate::keys::MediaKeys`]: one `webrtc-srtp` context per direction. Sans-IO: bytes
//! in, bytes out.

use bytes::Bytes;
use sip_core::permit::{SrtpKeys, SrtpSuite};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::srtp_replay_protection;
use webrtc_srtp::protection_profile::ProtectionProfile;

use crate::keys::MediaKeys;

/// Packets remembered by the replay check (RFC 3711 §3.3.2: at least 64).
const REPLAY_WINDOW: usize = 128;

/// A suite webrtc-srtp has no profile for, or keys of the wrong size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SRTP suite {0} cannot be used")]
pub struct SrtpSetupError(pub String);

fn profile(suite: &SrtpSuite) -> Option<ProtectionProfile> {
    Some(match suite {
        SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpSuite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpSuite::Other(_) => return None,
    })
}

fn context(keys: &SrtpKeys, replay: bool) -> Result<Context, SrtpSetupError> {
    let fail = || SrtpSetupError(keys.suite().name().to_string());
    let p = profile(keys.suite()).ok_or_else(fail)?;
    let opt = replay.then(|| srtp_replay_protection(REPLAY_WINDOW));
    Context::new(keys.master_key(), keys.master_salt(), p, opt, None).map_err(|_| fail())
}

/// Protects what we send and unprotects what we receive.
pub struct SrtpSession {
    tx: Context,
    rx: Context,
    /// Received packets that failed authentication or the replay check.
    pub rejected: u64,
}

impl std::fmt::Debug for SrtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpSession")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl SrtpSession {
    pub fn new(keys: &MediaKeys) -> Result<Self, SrtpSetupError> {
        Ok(Self {
            tx: context(&keys.send, false)?,
            rx: context(&keys.recv, true)?,
            rejected: 0,
        })
    }

    /// One RTP packet → SRTP (RFC 3711 §3.3). `None` only for a packet that is not RTP.
    pub fn protect(&mut self, rtp: &[u8]) -> Option<Bytes> {
        self.tx.encrypt_rtp(rtp).ok()
    }

    /// One SRTP packet → RTP; `None` when authentication or the replay check fails
    /// (RFC 3711 §3.3.2: such packets are dropped).
    pub fn unprotect(&mut self, srtp: &[u8]) -> Option<Bytes> {
        let out = self.rx.decrypt_rtp(srtp).ok();
        self.rejected += u64::from(out.is_none());
        out
    }
}

#[cfg(test)]
mod tests {
    use sip_testkit::seeded_rng;

    use super::*;
    use crate::keys::random_keys;
    use crate::media::rtp::RtpSender;

    fn pair(suite: &SrtpSuite) -> (SrtpSession, SrtpSession) {
        let a = random_keys(suite, &mut seeded_rng(1));
        let b = random_keys(suite, &mut seeded_rng(2));
        let mine = MediaKeys {
            send: a.clone(),
            recv: b.clone(),
            from_secret: false,
        };
        let theirs = MediaKeys {
            send: b,
            recv: a,
            from_secret: false,
        };
        (
            SrtpSession::new(&mine).unwrap(),
            SrtpSession::new(&theirs).unwrap(),
        )
    }

    #[test]
    fn round_trip_hides_the_payload_and_refuses_replays_and_tampering() {
        for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm] {
            let (mut me, mut peer) = pair(&suite);
            let mut tx = RtpSender::new(&mut seeded_rng(3));
            let payload = [0x55u8; 160];
            let plain = tx.packet(&payload);
            let protected = me.protect(&plain).unwrap();
            assert!(protected.len() > plain.len(), "{suite:?}: tag added");
            assert_eq!(&protected[..12], &plain[..12], "header stays clear");
            assert!(
                !protected.windows(16).any(|w| w == &payload[..16]),
                "{suite:?}: payload encrypted"
            );
            assert_eq!(peer.unprotect(&protected).unwrap(), plain);
            assert!(peer.unprotect(&protected).is_none(), "replay refused");
            let mut bad = me.protect(&tx.packet(&payload)).unwrap().to_vec();
            bad[20] ^= 1;
            assert!(peer.unprotect(&bad).is_none(), "tampering refused");
            assert_eq!(peer.rejected, 2);
            // Our own packets do not decrypt with our receive key.
            let mine = me.protect(&tx.packet(&payload)).unwrap();
            assert!(me.unprotect(&mine).is_none());
        }
    }
}
