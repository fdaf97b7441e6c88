//! The video media section of our offer and answer (RFC 4566, RFC 3264), and what we
//! read from the peer's: where its video goes (the direct path), the relay port the
//! proxy wrote (`a=permit-relay`, docs/profile.md "Media relay") and how the sender
//! splits (`a=permit-split`).
//!
//! Ours, appended after the audio section (the session-level `c=` applies):
//!
//! ```text
//! m=video 40002 RTP/AVP 96
//! a=rtpmap:96 H264/90000
//! a=fmtp:96 packetization-mode=1;profile-level-id=64001f;sprop-parameter-sets=Z2QAH6zZ...,aOvjyyLA
//! a=framerate:30
//! a=rtcp-mux
//! a=permit-split:srtp
//! a=sendonly
//! ```
//!
//! MPEG-2 is `m=video PORT RTP/AVP 32` with `a=rtpmap:32 MPV/90000` (RFC 3551 §6).
//! The answer mirrors the payload type with `a=recvonly`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{Clip, Codec, MPV_PT};

/// How the sender treats the direct path (`a=permit-split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SplitMode {
    /// Both paths SRTP (the default).
    #[default]
    Srtp,
    /// I-packets SRTP through the relay, the others plain RTP (`--selective`).
    Selective,
}

impl SplitMode {
    fn name(self) -> &'static str {
        match self {
            SplitMode::Srtp => "srtp",
            SplitMode::Selective => "selective",
        }
    }
}

/// The offer's video section for `clip` at `port`.
pub fn offer_section(clip: &Clip, port: u16, mode: SplitMode) -> String {
    let pt = clip.codec.payload_type();
    let mut s = format!("m=video {port} RTP/AVP {pt}\r\n");
    match clip.codec {
        Codec::H264 => {
            let _ = write!(s, "a=rtpmap:{pt} H264/90000\r\n");
            let _ = write!(s, "a=fmtp:{pt} packetization-mode=1");
            if let Some([a, b, c]) = clip.profile_level_id {
                let _ = write!(s, ";profile-level-id={a:02x}{b:02x}{c:02x}");
            }
            if !clip.parameter_sets.is_empty() {
                // RFC 6184 §8.1: base64 of each NAL unit, comma-separated.
                let sets: Vec<String> = clip
                    .parameter_sets
                    .iter()
                    .map(|p| STANDARD.encode(p))
                    .collect();
                let _ = write!(s, ";sprop-parameter-sets={}", sets.join(","));
            }
            s.push_str("\r\n");
        }
        Codec::Mpv => {
            let _ = write!(s, "a=rtpmap:{pt} MPV/90000\r\n");
        }
    }
    let _ = write!(
        s,
        "a=framerate:{}\r\na=rtcp-mux\r\na=permit-split:{}\r\na=sendonly\r\n",
        (clip.fps * 100.0).round() / 100.0,
        mode.name()
    );
    s
}

/// Our answer's video section: the offered codec at `port`, receive only.
pub fn answer_section(offer: &VideoOffer, port: u16) -> String {
    let pt = offer.payload_type;
    let name = match offer.codec {
        Codec::H264 => "H264",
        Codec::Mpv => "MPV",
    };
    let mut s = format!("m=video {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/90000\r\n");
    if offer.codec == Codec::H264 {
        let _ = write!(s, "a=fmtp:{pt} packetization-mode=1\r\n");
    }
    s.push_str("a=rtcp-mux\r\na=recvonly\r\n");
    s
}

/// The peer's first active video section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoOffer {
    /// Where the peer takes (and sends) its video: the direct path.
    pub addr: SocketAddr,
    pub codec: Codec,
    pub payload_type: u8,
    /// `a=permit-relay`: our relay port, when the proxy relays this call.
    pub relay: Option<SocketAddr>,
    pub mode: SplitMode,
}

/// Reads the first `m=video` section with a port and a codec we take (H.264 with
/// `packetization-mode=1`, or MPV); `None` when there is none (the call goes on as
/// audio only). Bounded input: the engine read the body already (16 KiB at most).
pub fn parse(body: &[u8]) -> Option<VideoOffer> {
    let text = std::str::from_utf8(body).ok()?;
    let mut session_c: Option<IpAddr> = None;
    let mut section: Option<Section> = None;
    let mut done: Option<Section> = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if let Some(s) = section.take()
                && s.usable()
            {
                done = Some(s);
                break;
            }
            let mut f = m.split_ascii_whitespace();
            if f.next() == Some("video") {
                let port = f.next().and_then(|p| p.split('/').next()?.parse().ok())?;
                let _proto = f.next()?;
                section = Some(Section {
                    port,
                    pts: f.filter_map(|p| p.parse().ok()).collect(),
                    ..Section::default()
                });
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = connection(c);
            match &mut section {
                Some(s) => s.c = ip,
                None => session_c = ip.or(session_c),
            }
        } else if let (Some(s), Some(a)) = (&mut section, line.strip_prefix("a=")) {
            s.attribute(a);
        }
    }
    let s = done.or(section.filter(Section::usable))?;
    let (codec, payload_type) = s.codec()?;
    let ip = s.c.or(session_c)?;
    Some(VideoOffer {
        addr: SocketAddr::new(ip, s.port),
        codec,
        payload_type,
        relay: s.relay,
        mode: s.mode,
    })
}

#[derive(Debug, Default)]
struct Section {
    port: u16,
    pts: Vec<u8>,
    c: Option<IpAddr>,
    h264: Vec<u8>,
    relay: Option<SocketAddr>,
    mode: SplitMode,
}

impl Section {
    fn usable(&self) -> bool {
        self.port != 0 && self.codec().is_some()
    }

    fn codec(&self) -> Option<(Codec, u8)> {
        self.pts.iter().find_map(|&pt| {
            if self.h264.contains(&pt) {
                Some((Codec::H264, pt))
            } else if pt == MPV_PT {
                Some((Codec::Mpv, MPV_PT))
            } else {
                None
            }
        })
    }

    fn attribute(&mut self, a: &str) {
        if let Some(v) = a.strip_prefix("rtpmap:") {
            let mut f = v.split_ascii_whitespace();
            let pt = f.next().and_then(|p| p.parse::<u8>().ok());
            let name = f.next().unwrap_or_default().to_ascii_uppercase();
            if let Some(pt) = pt
                && name.starts_with("H264/90000")
            {
                self.h264.push(pt);
            }
        } else if let Some(v) = a.strip_prefix("fmtp:") {
            // RFC 6184 §8.1: packetization-mode 0 (the default) has no FU-A or
            // STAP-A, which we send: such a payload type is not usable.
            let (pt, params) = v.split_once(' ').unwrap_or((v, ""));
            let mode = params
                .split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("packetization-mode"))
                .map(|(_, v)| v.trim());
            if mode != Some("1")
                && let Ok(pt) = pt.parse::<u8>()
            {
                self.h264.retain(|&p| p != pt);
            }
        } else if let Some(v) = a.strip_prefix("permit-relay:") {
            let mut f = v.split_ascii_whitespace();
            let ip = f.next().and_then(|i| i.parse::<IpAddr>().ok());
            let port = f.next().and_then(|p| p.parse::<u16>().ok());
            if let (Some(ip), Some(port)) = (ip, port)
                && port != 0
            {
                self.relay = Some(SocketAddr::new(ip, port));
            }
        } else if let Some(v) = a.strip_prefix("permit-split:") {
            self.mode = if v.trim() == "selective" {
                SplitMode::Selective
            } else {
                SplitMode::Srtp
            };
        }
    }
}

fn connection(c: &str) -> Option<IpAddr> {
    let mut f = c.split_ascii_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (f.next(), f.next(), f.next()) else {
        return None;
    };
    addr.split('/').next()?.parse().ok()
}
