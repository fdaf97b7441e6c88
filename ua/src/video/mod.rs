//! Video calls with the MPEG I-frame split (DESIGN item 9, docs/profile.md "Video and
//! the I-frame split"): a clip is packetized (H.264 per RFC 6184, MPEG-2 video per
//! RFC 2250), each RTP packet is classified, the I-packets go SRTP-protected through
//! the proxy's media relay and the others straight to the callee (SRTP too, or plain
//! RTP with `--selective`); one SSRC, one sequence space. The callee latches to the
//! relay, takes both paths, merges them by sequence number and writes the stream back.
//!
//! [`params`], [`sdp`], [`latch`], [`split`], [`join`] and [`report`] are sans-IO (bytes and time
//! in, bytes out); [`socket`] is the thin tokio shell, [`command`] the CLI's loops.

pub mod command;
pub mod join;
pub mod latch;
pub mod params;
pub mod report;
pub mod sdp;
pub mod socket;
pub mod split;

use std::path::Path;

use sip_core::media::rfc6184::Payload;
use sip_core::media::{annexb, rfc2250, rfc6184};

/// RTP payload size: the packetizers' `mtu`, leaving room for the RTP header, an SRTP
/// tag and IPv6/UDP headers under a 1280-byte path MTU.
pub const PAYLOAD_MTU: usize = 1100;
/// RTP clock of video (RFC 6184 §8.2.1, RFC 3551 §4.5.16 for MPV).
pub const CLOCK: u32 = 90_000;
/// The dynamic payload type we give H.264 (RFC 3551 §3).
pub const H264_PT: u8 = 96;
/// MPEG-1/2 video's static payload type (RFC 3551 Table 5).
pub const MPV_PT: u8 = 32;
/// Frame rate when the stream does not say (H.264 without VUI timing, RFC brief:
/// 30 fps; MPEG-2 sequence header with a reserved code: 25 fps).
pub const DEFAULT_FPS_H264: f64 = 30.0;
pub const DEFAULT_FPS_MPV: f64 = 25.0;

/// The two formats, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 Annex B byte stream (`.h264`, `.264`), RFC 6184 `packetization-mode=1`.
    H264,
    /// MPEG-1/2 video elementary stream (`.m2v`), RFC 2250.
    Mpv,
}

impl Codec {
    pub fn of_path(path: &Path) -> Option<Codec> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "h264" | "264" => Some(Codec::H264),
            "m2v" | "mpv" => Some(Codec::Mpv),
            _ => None,
        }
    }

    /// The extension a received stream is written with.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Mpv => "m2v",
        }
    }

    pub fn payload_type(self) -> u8 {
        match self {
            Codec::H264 => H264_PT,
            Codec::Mpv => MPV_PT,
        }
    }
}

/// Why a clip cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{0}: not a .h264, .264 or .m2v file")]
    Extension(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no sequence parameter set (SPS) and picture parameter set (PPS) in the stream")]
    NoParameterSets,
    #[error("the stream holds no pictures")]
    Empty,
}

/// A clip ready to send: its payloads in order and what the SDP says about it.
#[derive(Debug, Clone)]
pub struct Clip {
    pub codec: Codec,
    pub payloads: Vec<Payload>,
    pub fps: f64,
    /// H.264: `profile-level-id` (RFC 6184 §8.1).
    pub profile_level_id: Option<[u8; 3]>,
    /// H.264: the first SPS and PPS NAL units (`sprop-parameter-sets`).
    pub parameter_sets: Vec<Vec<u8>>,
}

impl Clip {
    pub fn load(path: &Path) -> Result<Clip, ClipError> {
        let codec =
            Codec::of_path(path).ok_or_else(|| ClipError::Extension(path.display().to_string()))?;
        Clip::from_bytes(codec, &std::fs::read(path)?)
    }

    pub fn from_bytes(codec: Codec, stream: &[u8]) -> Result<Clip, ClipError> {
        let clip = match codec {
            Codec::H264 => {
                let nals = annexb::nal_units(stream);
                let sps = nals
                    .iter()
                    .find(|n| n.first().is_some_and(|b| b & 0x1f == 7));
                let pps = nals
                    .iter()
                    .find(|n| n.first().is_some_and(|b| b & 0x1f == 8));
                let (Some(sps), Some(pps)) = (sps, pps) else {
                    return Err(ClipError::NoParameterSets);
                };
                let info = params::parse_sps(sps).ok();
                Clip {
                    codec,
                    payloads: rfc6184::packetize(stream, PAYLOAD_MTU),
                    fps: info.and_then(|i| i.fps).unwrap_or(DEFAULT_FPS_H264),
                    profile_level_id: Some(
                        info.map_or([sps[1], sps[2], sps[3]], |i| i.profile_level_id),
                    ),
                    parameter_sets: vec![sps.to_vec(), pps.to_vec()],
                }
            }
            Codec::Mpv => Clip {
                codec,
                payloads: rfc2250::packetize(stream, PAYLOAD_MTU),
                fps: params::mpeg2_fps(stream).unwrap_or(DEFAULT_FPS_MPV),
                profile_level_id: None,
                parameter_sets: Vec::new(),
            },
        };
        if clip.payloads.is_empty() {
            return Err(ClipError::Empty);
        }
        Ok(clip)
    }

    /// RTP timestamp ticks between two pictures.
    pub fn ticks_per_picture(&self) -> u32 {
        // At most 90 000 (fps clamped to 1..=240): fits, and is positive.
        #[allow(clippy::cast_sign_loss)]
        let ticks = (f64::from(CLOCK) / self.fps.clamp(1.0, 240.0)).round() as u32;
        ticks
    }
}

#[cfg(test)]
mod tests;
