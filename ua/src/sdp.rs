//! The session descriptions of this UA (RFC 4566, offer/answer per RFC 3264): one
//! audio stream, G.711 μ-law (PCMU, static payload type 0, RFC 3551 §6), 20 ms
//! packets. Every SDP we send is built by [`build`]: the one place where keying
//! attributes (`a=crypto`, RFC 4568) will be added.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use sip_core::permit::CryptoAttr;

/// RTP/AVP payload type of PCMU (RFC 3551 Table 4).
pub const PCMU: u8 = 0;

/// Longest SDP body read (network input is bounded).
const MAX_SDP_LEN: usize = 16 * 1024;

/// The audio stream a peer described: where to send RTP and which payload types it
/// takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioOffer {
    pub addr: SocketAddr,
    pub payload_types: Vec<u8>,
}

impl AudioOffer {
    pub fn accepts_pcmu(&self) -> bool {
        self.payload_types.contains(&PCMU)
    }
}

/// Why a body is not a usable session description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("session description is not UTF-8 or too long")]
    Encoding,
    #[error("no audio stream")]
    NoAudio,
    #[error("audio stream without a connection address")]
    NoConnection,
    #[error("malformed {0} line")]
    Malformed(&'static str),
}

/// Reads the first audio stream (`m=audio`) and its connection address (media-level
/// `c=` over session-level, RFC 4566 §5.7). A port of 0 is a rejected stream
/// (RFC 3264 §6): reported as [`SdpError::NoAudio`].
pub fn parse_audio(body: &[u8]) -> Result<AudioOffer, SdpError> {
    if body.len() > MAX_SDP_LEN {
        return Err(SdpError::Encoding);
    }
    let text = std::str::from_utf8(body).map_err(|_| SdpError::Encoding)?;
    let mut session_c: Option<IpAddr> = None;
    let mut audio: Option<(u16, Vec<u8>, Option<IpAddr>)> = None;
    let mut in_audio = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if audio.is_some() {
                break; // only the first audio stream is used
            }
            let mut f = m.split_ascii_whitespace();
            in_audio = f.next() == Some("audio");
            if in_audio {
                let port = f
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .ok_or(SdpError::Malformed("m="))?;
                let _proto = f.next().ok_or(SdpError::Malformed("m="))?;
                let pts = f.filter_map(|p| p.parse().ok()).collect();
                audio = Some((port, pts, None));
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = parse_connection(c)?;
            match (&mut audio, in_audio) {
                (Some(a), true) => a.2 = Some(ip),
                (None, _) => session_c = Some(ip),
                _ => {}
            }
        }
    }
    let (port, payload_types, media_c) = audio.ok_or(SdpError::NoAudio)?;
    if port == 0 {
        return Err(SdpError::NoAudio);
    }
    let ip = media_c.or(session_c).ok_or(SdpError::NoConnection)?;
    Ok(AudioOffer {
        addr: SocketAddr::new(ip, port),
        payload_types,
    })
}

/// `IN IP4 192.0.2.1` / `IN IP6 ::1` (RFC 4566 §5.7); a multicast TTL suffix is cut.
fn parse_connection(c: &str) -> Result<IpAddr, SdpError> {
    let mut f = c.split_ascii_whitespace();
    let (Some("IN"), Some(_), Some(addr)) = (f.next(), f.next(), f.next()) else {
        return Err(SdpError::Malformed("c="));
    };
    addr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or(SdpError::Malformed("c="))
}

/// Our offer or answer: one `sendrecv` PCMU stream at `rtp` (RFC 3264 §5, §6).
/// `session_id` is random per call; `version` goes up with each change (RFC 4566
/// §5.2). `crypto` are our SDES lines (RFC 4568 §9.1: media-level `a=crypto`, our
/// sending key); `savp` writes the `RTP/SAVP` profile (SRTP required, RFC 3711 §12)
/// instead of `RTP/AVP` (an offer with `a=crypto` under `RTP/AVP` is best-effort SRTP,
/// the form baresip and PJSIP also use, so that a phone without SRTP still answers).
pub fn build(
    session_id: u64,
    version: u64,
    rtp: SocketAddr,
    crypto: &[CryptoAttr],
    savp: bool,
) -> String {
    let (net, ip) = match rtp.ip() {
        IpAddr::V4(a) => ("IP4", a.to_string()),
        IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    let mut s = String::with_capacity(200);
    let _ = write!(
        s,
        "v=0\r\no=permit-ua {session_id} {version} IN {net} {ip}\r\ns=permit-ua\r\n\
c=IN {net} {ip}\r\nt=0 0\r\nm=audio {port} {proto} {PCMU}\r\n\
a=rtpmap:{PCMU} PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        port = rtp.port(),
        proto = if savp { "RTP/SAVP" } else { "RTP/AVP" },
    );
    for c in crypto {
        s.push_str(&c.to_line());
        s.push_str("\r\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_description_reads_back() {
        for rtp in ["127.0.0.1:40000", "[::1]:40002"] {
            let rtp: SocketAddr = rtp.parse().unwrap();
            let sdp = build(1, 2, rtp, &[], false);
            let a = parse_audio(sdp.as_bytes()).unwrap();
            assert_eq!(a.addr, rtp);
            assert_eq!(a.payload_types, vec![PCMU]);
            assert!(a.accepts_pcmu());
        }
    }

    #[test]
    fn our_crypto_lines_read_back() {
        let keys = crate::keys::Offer::new(None, "c", &mut sip_testkit::seeded_rng(1));
        let rtp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let sdp = build(1, 1, rtp, &keys.attrs, true);
        assert!(sdp.contains("m=audio 40000 RTP/SAVP 0\r\n"), "{sdp}");
        let peer = crate::keys::PeerCrypto::of(sdp.as_bytes());
        assert!(peer.savp);
        assert_eq!(peer.attrs, keys.attrs);
        assert_eq!(parse_audio(sdp.as_bytes()).unwrap().addr, rtp);
        let plain = build(1, 1, rtp, &[], false);
        assert!(plain.contains("RTP/AVP 0") && !plain.contains("a=crypto"));
    }

    #[test]
    fn reads_a_softphone_offer() {
        // The shape PJSIP and baresip send: session-level c=, several codecs.
        let offer = "v=0\r\no=- 3912 3912 IN IP4 127.0.0.1\r\ns=pjmedia\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 4000 RTP/AVP 96 9 8 0 101\r\na=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/8000\r\nm=video 4002 RTP/AVP 97\r\nc=IN IP4 10.0.0.1\r\n";
        let a = parse_audio(offer.as_bytes()).unwrap();
        assert_eq!(a.addr, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(a.payload_types, vec![96, 9, 8, 0, 101]);
    }

    #[test]
    fn refuses_unusable_descriptions() {
        let cases: [(&str, SdpError); 4] = [
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\n",
                SdpError::NoAudio,
            ),
            (
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n",
                SdpError::NoAudio,
            ),
            ("v=0\r\nm=audio 5 RTP/AVP 0\r\n", SdpError::NoConnection),
            (
                "v=0\r\nc=IN IP4 nowhere\r\nm=audio 5 RTP/AVP 0\r\n",
                SdpError::Malformed("c="),
            ),
        ];
        for (body, err) in cases {
            assert_eq!(parse_audio(body.as_bytes()), Err(err), "{body}");
        }
        assert_eq!(parse_audio(&[0xff, 0xfe]), Err(SdpError::Encoding));
    }
}
