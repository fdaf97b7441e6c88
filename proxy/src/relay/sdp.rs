//! `a=permit-relay` edits on raw SDP bytes (RFC 4566 §5): which media sections of an
//! offer the relay carries, and the attribute that tells each UA where to send them.
//!
//! ```text
//! permit-relay-attr = "a=permit-relay:" unicast-address SP port   ; one per relayed m= section
//! ```
//!
//! `unicast-address` as in a `c=` line (RFC 4566 §9: dotted IPv4, or IPv6 without
//! brackets). Only the proxy writes the attribute: every `a=permit-relay` line of a
//! body it edits is removed first, wherever it stood. Lines we do not own are copied
//! as received, with their own line endings.

use std::net::IpAddr;

/// The attribute's line prefix.
pub const ATTR: &[u8] = b"a=permit-relay:";

fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split_inclusive(|&b| b == b'\n')
}

fn eol(line: &[u8]) -> Option<&'static [u8]> {
    if line.ends_with(b"\r\n") {
        Some(b"\r\n")
    } else if line.ends_with(b"\n") {
        Some(b"\n")
    } else {
        None
    }
}

/// `m=<media> <port>[/n] ...`: the media and port, if the line reads.
fn media_line(line: &[u8]) -> Option<(&[u8], u16)> {
    let text = line.strip_prefix(b"m=")?;
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut fields = text.split(|&b| b == b' ');
    let media = fields.next().filter(|m| !m.is_empty())?;
    let port = fields.next()?;
    let port = port.split(|&b| b == b'/').next()?;
    let port = std::str::from_utf8(port).ok()?.parse().ok()?;
    Some((media, port))
}

/// The media sections of an offer the relay should carry: every active (port ≠ 0)
/// `m=video`, and `m=audio` too when `audio`; `None` when the body is not SDP or
/// offers no active video (such a call is not relayed).
pub fn relayed_sections(body: &[u8], audio: bool) -> Option<Vec<usize>> {
    if !body.starts_with(b"v=") {
        return None;
    }
    let mut out = Vec::new();
    let mut video = false;
    for (i, (media, port)) in lines(body).filter_map(media_line).enumerate() {
        let wanted = port != 0 && (media == b"video" || (audio && media == b"audio"));
        video |= port != 0 && media == b"video";
        if wanted {
            out.push(i);
        }
    }
    video.then_some(out)
}

/// Whether the body holds an `a=permit-relay` line (someone else's: to be removed).
pub fn has_attr(body: &[u8]) -> bool {
    lines(body).any(|l| l.starts_with(ATTR))
}

/// The body with every `a=permit-relay` line removed and ours appended at the end of
/// the media sections listed in `ports` (section index, port), when those are active in
/// this body (an answer may reject a section with port 0, RFC 3264 §6).
pub fn set_relay(body: &[u8], address: IpAddr, ports: &[(usize, u16)]) -> Vec<u8> {
    let body_eol = lines(body).next().and_then(eol).unwrap_or(b"\r\n");
    let mut out = Vec::with_capacity(body.len() + 48 * ports.len());
    let mut pending: Option<(u16, &[u8])> = None;
    let mut index = 0usize;
    let flush = |out: &mut Vec<u8>, pending: &mut Option<(u16, &[u8])>| {
        if let Some((port, end)) = pending.take() {
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.extend_from_slice(end);
            }
            out.extend_from_slice(ATTR);
            out.extend_from_slice(format!("{address} {port}").as_bytes());
            out.extend_from_slice(end);
        }
    };
    for line in lines(body) {
        if line.starts_with(b"m=") {
            flush(&mut out, &mut pending);
            let active = media_line(line).is_some_and(|(_, p)| p != 0);
            let port = ports.iter().find(|(i, _)| *i == index).map(|(_, p)| *p);
            pending = port
                .filter(|_| active)
                .map(|p| (p, eol(line).unwrap_or(body_eol)));
            index += 1;
            out.extend_from_slice(line);
        } else if !line.starts_with(ATTR) {
            out.extend_from_slice(line);
        }
    }
    flush(&mut out, &mut pending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const OFFER: &str = "v=0\r\n\
o=alice 1 1 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/SAVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n\
m=video 51372 RTP/SAVP 96\r\n\
a=rtpmap:96 H264/90000\r\n\
a=permit-relay:203.0.113.66 9\r\n\
m=video 0 RTP/AVP 97\r\n";

    const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn picks_active_video_and_audio_on_request() {
        assert_eq!(relayed_sections(OFFER.as_bytes(), false), Some(vec![1]));
        assert_eq!(relayed_sections(OFFER.as_bytes(), true), Some(vec![0, 1]));
        let audio_only = "v=0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";
        assert_eq!(relayed_sections(audio_only.as_bytes(), true), None);
        assert_eq!(relayed_sections(b"", true), None);
        assert_eq!(relayed_sections(b"<xml/>", false), None);
    }

    #[test]
    fn writes_ours_at_the_end_of_each_section_and_drops_others() {
        let out = set_relay(OFFER.as_bytes(), ADDR, &[(0, 40_001), (1, 40_003), (2, 9)]);
        let expected = OFFER
            .replace("a=permit-relay:203.0.113.66 9\r\n", "")
            .replace(
                "a=rtpmap:0 PCMU/8000\r\n",
                "a=rtpmap:0 PCMU/8000\r\na=permit-relay:192.0.2.1 40001\r\n",
            )
            .replace(
                "a=rtpmap:96 H264/90000\r\n",
                "a=rtpmap:96 H264/90000\r\na=permit-relay:192.0.2.1 40003\r\n",
            );
        // Section 2 has port 0: no attribute.
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert!(has_attr(OFFER.as_bytes()));
        let stripped = set_relay(OFFER.as_bytes(), ADDR, &[]);
        assert!(!has_attr(&stripped));
        assert_eq!(
            stripped.len(),
            OFFER.len() - "a=permit-relay:203.0.113.66 9\r\n".len()
        );
    }

    #[test]
    fn keeps_lf_endings_and_a_last_line_without_one() {
        let body = b"v=0\nm=video 5000 RTP/AVP 96\na=sendrecv";
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let out = set_relay(body, v6, &[(0, 40_000)]);
        assert_eq!(
            out,
            b"v=0\nm=video 5000 RTP/AVP 96\na=sendrecv\na=permit-relay:::1 40000\n"
        );
    }
}
