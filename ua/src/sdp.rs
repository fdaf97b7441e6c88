//! The session descriptions of this UA (RFC 4566, offer/answer per RFC 3264): one
//! audio stream, 20 ms packets; we offer Opus (RFC 7587 §7) then G.711 μ-law (PCMU,
//! static payload type 0, RFC 3551 §6) and answer with the first of the offer's
//! codecs that we have ([`AudioOffer::codec`]). Every SDP we send is built by [`build`]: the one place where keying
//! attributes (`a=crypto`, RFC 4568) will be added.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use sip_core::permit::CryptoAttr;

use crate::media::codec::Codec;
use crate::media::dtls::{self, DtlsCall, Fingerprint};

/// RTP/AVP payload type of PCMU (RFC 3551 Table 4).
pub const PCMU: u8 = 0;

/// Longest SDP body read (network input is bounded).
const MAX_SDP_LEN: usize = 16 * 1024;

/// The audio stream a peer described: where to send RTP, which payload types it
/// takes, and the first of them in its order that we have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioOffer {
    pub addr: SocketAddr,
    pub payload_types: Vec<u8>,
    /// RFC 3264 §6.1: the answer takes the offer's codecs in the offer's order of
    /// preference; so does the media path of the offerer reading the answer.
    pub codec: Option<Codec>,
}

impl AudioOffer {
    pub fn accepts_pcmu(&self) -> bool {
        self.payload_types.contains(&PCMU)
    }
}

/// The codec of a payload type, from its `a=rtpmap` (RFC 4566 §6: `encoding
/// name/clock rate[/channels]`, names case-insensitive) or, for static types without
/// one, RFC 3551 Table 4. Opus must be `opus/48000/2` (RFC 7587 §7).
fn codec_of(pt: u8, rtpmaps: &[(u8, &str)]) -> Option<Codec> {
    match rtpmaps.iter().find(|(p, _)| *p == pt).map(|(_, m)| *m) {
        Some(map) => {
            let mut f = map.split('/');
            let (name, rate, channels) = (f.next()?, f.next()?, f.next());
            if name.eq_ignore_ascii_case("opus") && rate == "48000" && channels == Some("2") {
                Some(Codec::Opus { pt })
            } else if name.eq_ignore_ascii_case("PCMU") && rate == "8000" && pt == PCMU {
                Some(Codec::Pcmu)
            } else {
                None
            }
        }
        None if pt == PCMU => Some(Codec::Pcmu),
        None => None,
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
    let mut rtpmaps: Vec<(u8, &str)> = Vec::new();
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
        } else if let Some(map) = line.strip_prefix("a=rtpmap:").filter(|_| in_audio) {
            let mut f = map.split_ascii_whitespace();
            if let (Some(Ok(pt)), Some(enc)) = (f.next().map(str::parse), f.next()) {
                rtpmaps.push((pt, enc));
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
    let codec = payload_types.iter().find_map(|&pt| codec_of(pt, &rtpmaps));
    Ok(AudioOffer {
        addr: SocketAddr::new(ip, port),
        payload_types,
        codec,
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

/// Our offer or answer: one `sendrecv` stream at `rtp` of `codecs` in order of
/// preference (RFC 3264 §5.1; an answer lists the one codec chosen, §6.1).
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
    codecs: &[Codec],
) -> String {
    let (net, ip) = match rtp.ip() {
        IpAddr::V4(a) => ("IP4", a.to_string()),
        IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    let mut s = String::with_capacity(300);
    let _ = write!(
        s,
        "v=0\r\no=permit-ua {session_id} {version} IN {net} {ip}\r\ns=permit-ua\r\n\
c=IN {net} {ip}\r\nt=0 0\r\nm=audio {port} {proto}",
        port = rtp.port(),
        proto = if savp { "RTP/SAVP" } else { "RTP/AVP" },
    );
    for c in codecs {
        let _ = write!(s, " {}", c.payload_type());
    }
    s.push_str("\r\n");
    for c in codecs {
        s.push_str(&c.sdp_lines());
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    for c in crypto {
        s.push_str(&c.to_line());
        s.push_str("\r\n");
    }
    s
}

/// A description from [`build`] keyed with DTLS-SRTP (RFC 5763 §5): the audio `m=`
/// line takes the offer's transport protocol (RFC 3264 §6: the answer's matches the
/// offer's; `UDP/TLS/RTP/SAVP` by default, RFC 5764 §8) and the stream gains
/// `a=setup` and `a=fingerprint`.
pub fn with_dtls(sdp: &str, dtls: &DtlsCall) -> String {
    with_dtls_lines(sdp, &dtls.proto, &dtls.sdp_lines())
}

/// Our offer from [`build`], with DTLS-SRTP when `local` (our certificate) is given:
/// `UDP/TLS/RTP/SAVP` (RFC 5764 §8), `a=setup:actpass`, `a=fingerprint`.
pub fn with_dtls_offer(sdp: String, local: Option<Fingerprint>) -> String {
    match local {
        Some(fp) => with_dtls_lines(&sdp, "", &dtls::offer_lines(fp)),
        None => sdp,
    }
}

fn with_dtls_lines(sdp: &str, proto: &str, lines: &str) -> String {
    let proto = if proto.is_empty() {
        "UDP/TLS/RTP/SAVP"
    } else {
        proto
    };
    let mut out = String::with_capacity(sdp.len() + 120);
    for line in sdp.split_inclusive("\r\n") {
        match line.strip_prefix("m=audio ") {
            Some(rest) => {
                let mut f = rest.splitn(3, ' ');
                let (port, _old, fmts) = (f.next(), f.next(), f.next());
                let _ = write!(
                    out,
                    "m=audio {} {proto} {}",
                    port.unwrap_or("0"),
                    fmts.unwrap_or("\r\n")
                );
            }
            None => out.push_str(line),
        }
    }
    out.push_str(lines);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{OFFER, OPUS_PT};

    #[test]
    fn dtls_answers_echo_the_proto_and_add_setup_and_fingerprint() {
        use crate::media::dtls::{Fingerprint, Role};
        let rtp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let d = DtlsCall {
            role: Role::Client,
            peer: vec![Fingerprint([2; 32])],
            local: Fingerprint([0xAB; 32]),
            proto: "UDP/TLS/RTP/SAVP".into(),
        };
        let sdp = with_dtls(&build(1, 1, rtp, &[], false, &[Codec::Pcmu]), &d);
        assert!(
            sdp.contains("m=audio 40000 UDP/TLS/RTP/SAVP 0\r\n"),
            "{sdp}"
        );
        assert!(
            sdp.contains("a=sendrecv\r\na=setup:active\r\na=fingerprint:sha-256 AB:AB:"),
            "{sdp}"
        );
        assert!(!sdp.contains("a=crypto"));
        let back = crate::media::dtls::PeerDtls::of(sdp.as_bytes()).unwrap();
        assert_eq!(back.fingerprints, vec![d.local]);
        assert_eq!(back.proto, "UDP/TLS/RTP/SAVP");
        assert_eq!(parse_audio(sdp.as_bytes()).unwrap().addr, rtp);
        let offer = with_dtls_offer(build(1, 1, rtp, &[], false, &OFFER), Some(d.local));
        assert!(
            offer.contains("m=audio 40000 UDP/TLS/RTP/SAVP 111 0\r\n"),
            "{offer}"
        );
        assert!(offer.contains("a=setup:actpass\r\n"), "{offer}");
        let plain = build(1, 1, rtp, &[], false, &OFFER);
        assert_eq!(with_dtls_offer(plain.clone(), None), plain);
    }

    #[test]
    fn our_description_reads_back() {
        for rtp in ["127.0.0.1:40000", "[::1]:40002"] {
            let rtp: SocketAddr = rtp.parse().unwrap();
            let sdp = build(1, 2, rtp, &[], false, &OFFER);
            let a = parse_audio(sdp.as_bytes()).unwrap();
            assert_eq!(a.addr, rtp);
            assert_eq!(a.payload_types, vec![OPUS_PT, PCMU]);
            assert!(a.accepts_pcmu());
            assert_eq!(a.codec, Some(Codec::Opus { pt: OPUS_PT }));
            let answer = build(1, 2, rtp, &[], false, &[Codec::Pcmu]);
            assert_eq!(
                parse_audio(answer.as_bytes()).unwrap().codec,
                Some(Codec::Pcmu)
            );
        }
    }

    #[test]
    fn our_crypto_lines_read_back() {
        let keys = crate::keys::Offer::new(None, "c", &mut sip_testkit::seeded_rng(1));
        let rtp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let sdp = build(1, 1, rtp, &keys.attrs, true, &OFFER);
        assert!(sdp.contains("m=audio 40000 RTP/SAVP 111 0\r\n"), "{sdp}");
        let peer = crate::keys::PeerCrypto::of(sdp.as_bytes());
        assert!(peer.savp);
        assert_eq!(peer.attrs, keys.attrs);
        assert_eq!(parse_audio(sdp.as_bytes()).unwrap().addr, rtp);
        let plain = build(1, 1, rtp, &[], false, &[Codec::Pcmu]);
        assert!(plain.contains("RTP/AVP 0\r\n") && !plain.contains("a=crypto"));
    }

    #[test]
    fn reads_a_softphone_offer() {
        // The shape PJSIP and baresip send: session-level c=, several codecs.
        let offer = "v=0\r\no=- 3912 3912 IN IP4 127.0.0.1\r\ns=pjmedia\r\nc=IN IP4 127.0.0.1\r\n\
t=0 0\r\nm=audio 4000 RTP/AVP 96 9 8 0 101\r\na=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/8000\r\nm=video 4002 RTP/AVP 97\r\nc=IN IP4 10.0.0.1\r\n";
        let a = parse_audio(offer.as_bytes()).unwrap();
        assert_eq!(a.addr, "127.0.0.1:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(a.payload_types, vec![96, 9, 8, 0, 101]);
        assert_eq!(a.codec, Some(Codec::Opus { pt: 96 }), "the offer's number");
    }

    /// Our offer lists Opus first, then PCMU, with the lines of RFC 7587 §7.
    #[test]
    fn our_offer_lists_opus_then_pcmu() {
        let rtp: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let sdp = build(7, 1, rtp, &[], false, &OFFER);
        assert!(
            sdp.contains(
                "m=audio 40000 RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            ),
            "{sdp}"
        );
    }

    /// The answer takes the first codec of the offer that we have, in the offer's
    /// order (RFC 3264 §6.1), whatever our own preference.
    #[test]
    fn picks_the_first_common_codec_of_the_offer() {
        let offer = |m: &str, maps: &str| {
            format!("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP {m}\r\n{maps}")
        };
        let opus96 = "a=rtpmap:96 OPUS/48000/2\r\n";
        let cases: [(String, Option<Codec>); 8] = [
            (offer("0 96", opus96), Some(Codec::Pcmu)),
            (offer("96 0", opus96), Some(Codec::Opus { pt: 96 })),
            (offer("8 96", opus96), Some(Codec::Opus { pt: 96 })),
            (offer("8 0", ""), Some(Codec::Pcmu)),
            (offer("8 9", ""), None),
            // Opus at another clock or channel count is not RFC 7587's: not Opus.
            (offer("96 8", "a=rtpmap:96 opus/16000/1\r\n"), None),
            // A dynamic type without an rtpmap is unknown.
            (offer("111", ""), None),
            // An rtpmap of another section does not count.
            (
                "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 5 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n\
m=audio 4000 RTP/AVP 96 0\r\n"
                    .to_string(),
                Some(Codec::Pcmu),
            ),
        ];
        for (sdp, want) in cases {
            assert_eq!(parse_audio(sdp.as_bytes()).unwrap().codec, want, "{sdp}");
        }
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
