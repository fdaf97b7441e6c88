//! The sender's split (DESIGN item 9): each RTP packet of the clip is classified
//! (`sip_core::media::h264::H264Classifier`, `mpeg2::classify`); I-packets are
//! SRTP-protected and go to the relay, the others straight to the callee, SRTP too or
//! plain RTP in [`SplitMode::Selective`]. One SSRC and one sequence space across both
//! paths (RFC 3550 §5.1), one SRTP context for both (RFC 3711 §3.2: the index is the
//! sequence number and its rollover counter, shared). Sans-IO: a payload in, a
//! datagram and its path out.
//!
//! Keys: the video stream is keyed from the call's audio SDES keys, one derivation per
//! direction (HKDF-SHA256, RFC 5869: salt `"permit srtp video"`, IKM the audio master
//! key and salt of that direction, info the suite name): both permit-ua ends hold both
//! audio keys, and the video never shares a key stream with the audio (RFC 3711 §9.1).

use bytes::Bytes;
use rand::Rng;
use sip_core::media::Class;
use sip_core::media::h264::H264Classifier;
use sip_core::media::mpeg2;
use sip_core::media::rfc6184::Payload;
use sip_core::permit::{SrtpKeys, SrtpSuite, hkdf_sha256};
use webrtc_srtp::context::Context;
use webrtc_srtp::option::srtp_replay_protection;
use webrtc_srtp::protection_profile::ProtectionProfile;

use super::Codec;
use super::sdp::SplitMode;
use crate::keys::MediaKeys;

/// HKDF salt of the video keys.
const VIDEO_SALT: &[u8] = b"permit srtp video";
/// Packets remembered by each receive context's replay check (RFC 3711 §3.3.2).
const REPLAY_WINDOW: usize = 512;

/// The video key of one direction, from that direction's audio key.
pub fn video_key(audio: &SrtpKeys) -> Option<SrtpKeys> {
    let suite = audio.suite().clone();
    let (k, s) = suite.key_salt_len()?;
    let mut okm = vec![0u8; k + s];
    hkdf_sha256(
        VIDEO_SALT,
        audio.key_salt(),
        suite.name().as_bytes(),
        &mut okm,
    )
    .ok()?;
    SrtpKeys::from_key_salt(suite, &okm)
}

/// Both directions' video keys of a call.
pub fn video_keys(audio: &MediaKeys) -> Option<MediaKeys> {
    Some(MediaKeys {
        send: video_key(&audio.send)?,
        recv: video_key(&audio.recv)?,
        from_secret: audio.from_secret,
    })
}

fn profile(suite: &SrtpSuite) -> Option<ProtectionProfile> {
    Some(match suite {
        SrtpSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpSuite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        SrtpSuite::Other(_) => return None,
    })
}

/// An SRTP context for `keys`; with the replay check when it receives.
pub(crate) fn context(keys: &SrtpKeys, receive: bool) -> Option<Context> {
    let opt = receive.then(|| srtp_replay_protection(REPLAY_WINDOW));
    Context::new(
        keys.master_key(),
        keys.master_salt(),
        profile(keys.suite())?,
        opt,
        None,
    )
    .ok()
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the proxy's media relay (I-packets).
    Relay,
    /// Straight to the callee's media address.
    Direct,
}

/// What the sender did, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitStats {
    pub packets: u64,
    pub intra: u64,
    pub relay: u64,
    pub direct: u64,
    /// Packets sent as plain RTP (the direct path in selective mode, or no keys).
    pub plain: u64,
    /// Packets SRTP refused to protect (not sent).
    pub refused: u64,
}

/// The split of one video stream.
pub struct Splitter {
    codec: Codec,
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    ts_base: u32,
    ticks: u32,
    classifier: H264Classifier,
    srtp: Option<Context>,
    mode: SplitMode,
    /// Whether a relay takes the I-packets (else every packet goes direct).
    relayed: bool,
    pub stats: SplitStats,
}

impl std::fmt::Debug for Splitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splitter")
            .field("codec", &self.codec)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Splitter {
    /// `keys`: the video send key (`None`: plain RTP on both paths, no SRTP in the
    /// call). `ticks`: RTP timestamp units per picture.
    pub fn new(
        codec: Codec,
        payload_type: u8,
        ticks: u32,
        keys: Option<&SrtpKeys>,
        mode: SplitMode,
        relayed: bool,
        rng: &mut impl Rng,
    ) -> Splitter {
        Splitter {
            codec,
            payload_type,
            ssrc: rng.random(),
            seq: rng.random(),
            ts_base: rng.random(),
            ticks,
            classifier: H264Classifier::new(),
            srtp: keys.and_then(|k| context(k, false)),
            mode,
            relayed,
            stats: SplitStats::default(),
        }
    }

    /// Whether the stream is SRTP-protected at all.
    pub fn protected(&self) -> bool {
        self.srtp.is_some()
    }

    /// The class of a payload, in stream order (the H.264 classifier follows
    /// fragmented NAL units across packets).
    pub fn classify(&mut self, payload: &[u8]) -> Class {
        match self.codec {
            Codec::H264 => self.classifier.classify(payload),
            Codec::Mpv => mpeg2::classify(payload),
        }
    }

    /// The RTP packet (RFC 3550 §5.1) of the next payload, protected as its path
    /// requires, and the path; `None` (counted) when SRTP refuses it: a packet meant
    /// to be protected never leaves in the clear.
    pub fn packet(&mut self, p: &Payload) -> Option<(Path, Bytes)> {
        let class = self.classify(&p.data);
        let path = if class == Class::Intra && self.relayed {
            Path::Relay
        } else {
            Path::Direct
        };
        let ts = self
            .ts_base
            .wrapping_add((p.unit as u32).wrapping_mul(self.ticks));
        let mut rtp = Vec::with_capacity(12 + p.data.len());
        rtp.push(0x80);
        rtp.push((u8::from(p.marker) << 7) | (self.payload_type & 0x7f));
        rtp.extend_from_slice(&self.seq.to_be_bytes());
        rtp.extend_from_slice(&ts.to_be_bytes());
        rtp.extend_from_slice(&self.ssrc.to_be_bytes());
        rtp.extend_from_slice(&p.data);
        self.seq = self.seq.wrapping_add(1);
        self.stats.packets += 1;
        self.stats.intra += u64::from(class == Class::Intra);
        // Selective mode leaves only the direct path's non-intra packets plain: when
        // the call is not relayed, its I-packets go direct but still as SRTP.
        let plain = class == Class::Inter && self.mode == SplitMode::Selective;
        let out = match &mut self.srtp {
            Some(ctx) if !plain => {
                let Ok(b) = ctx.encrypt_rtp(&rtp) else {
                    self.stats.refused += 1;
                    return None;
                };
                b
            }
            _ => {
                // Plain RTP. The context infers the rollover counter from the
                // sequence numbers it protects (RFC 3711 §3.3.1), so the packets it
                // skips do not put it out of step.
                self.stats.plain += 1;
                Bytes::from(rtp)
            }
        };
        match path {
            Path::Relay => self.stats.relay += 1,
            Path::Direct => self.stats.direct += 1,
        }
        Some((path, out))
    }
}
