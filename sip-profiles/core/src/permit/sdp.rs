//! `a=crypto` edits on raw SDP bytes (RFC 4566 §5, RFC 4568 §5): read the crypto
//! attributes of each media section, and replace them with ours.
//!
//! Byte-oriented on purpose: every line we do not own is copied as received, in
//! place, with its own line ending, so a body that a stock phone wrote comes out
//! byte-identical apart from our `a=crypto` lines (and `RTP/AVP` → `RTP/SAVP` on the
//! sections we key). The `sdp-types` crate round-trips well, but it parses the whole
//! session first: one line it does not accept (vendor quirks, a bad `b=` line) would
//! stop us from keying a call whose media lines are fine, and it allocates every
//! line to edit two of them. We only need to find `m=` lines and `a=crypto:` lines,
//! which RFC 4566's line format (`<type>=<value>`, one per line) makes safe to do
//! without a full parser.

use super::sdes::{CryptoAttr, SdesError};

/// Why an SDP body could not be edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body does not start with `v=` (RFC 4566 §5: the first line is `v=0`).
    #[error("SDP body does not start with v=")]
    NotSdp,
    /// An `m=` line without media, port and proto (RFC 4566 §5.14).
    #[error("malformed m= line in media section {0}")]
    BadMediaLine(usize),
}

/// What a media section's `m=` line says (RFC 4566 §5.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSection<'a> {
    /// Position among the `m=` lines, from 0.
    pub index: usize,
    /// `audio`, `video`, `application`, ...
    pub media: &'a str,
    /// The port; 0 marks a rejected or disabled stream (RFC 3264 §5.1, §6).
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, ...
    pub proto: &'a str,
}

/// The `a=crypto` attributes of one media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaCrypto {
    pub index: usize,
    pub media: String,
    pub port: u16,
    pub proto: String,
    /// Each `a=crypto` line of the section, in order, parsed or with its fault.
    pub attrs: Vec<Result<CryptoAttr, SdesError>>,
}

/// Splits into lines, each with its line ending (CRLF, or LF that RFC 4566 §5 asks
/// parsers to tolerate).
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split_inclusive(|&b| b == b'\n')
}

/// The line's ending, if it has one.
fn line_ending(line: &[u8]) -> Option<&'static [u8]> {
    if line.ends_with(b"\r\n") {
        Some(b"\r\n")
    } else if line.ends_with(b"\n") {
        Some(b"\n")
    } else {
        None
    }
}

fn text(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Byte range of the proto field inside an `m=` line, and the parsed section.
fn media_line(line: &[u8], index: usize) -> Result<(MediaSection<'_>, (usize, usize)), SdpError> {
    let bad = SdpError::BadMediaLine(index);
    let line = text(line);
    let value = line.strip_prefix(b"m=").ok_or(bad)?;
    let value = std::str::from_utf8(value).map_err(|_| bad)?;
    let mut fields = value.split(' ');
    let media = fields.next().filter(|f| !f.is_empty()).ok_or(bad)?;
    let port_field = fields.next().ok_or(bad)?;
    let port = port_field.split_once('/').map_or(port_field, |(p, _)| p);
    let port: u16 = port.parse().map_err(|_| bad)?;
    let proto = fields.next().filter(|f| !f.is_empty()).ok_or(bad)?;
    // Offset of proto: "m=" media SP port-field SP.
    let start = 2 + media.len() + 1 + port_field.len() + 1;
    Ok((
        MediaSection {
            index,
            media,
            port,
            proto,
        },
        (start, start + proto.len()),
    ))
}

fn check_version(body: &[u8]) -> Result<(), SdpError> {
    if body.starts_with(b"v=") {
        Ok(())
    } else {
        Err(SdpError::NotSdp)
    }
}

/// The `a=crypto` attributes of every media section (session-level ones are not
/// meaningful, RFC 4568 §5, and are not reported).
pub fn crypto_lines(body: &[u8]) -> Result<Vec<MediaCrypto>, SdpError> {
    check_version(body)?;
    let mut out: Vec<MediaCrypto> = Vec::new();
    for line in lines(body) {
        if line.starts_with(b"m=") {
            let (section, _) = media_line(line, out.len())?;
            out.push(MediaCrypto {
                index: section.index,
                media: section.media.to_owned(),
                port: section.port,
                proto: section.proto.to_owned(),
                attrs: Vec::new(),
            });
        } else if let Some(current) = out.last_mut()
            && line.starts_with(b"a=crypto:")
        {
            let parsed = std::str::from_utf8(text(line))
                .map_err(|_| SdesError::BadKeyParams)
                .and_then(CryptoAttr::parse_line);
            current.attrs.push(parsed);
        }
    }
    Ok(out)
}

/// Replaces the `a=crypto` lines of the media sections `choose` picks. For each
/// section `choose` returns `None` (leave the section as it is) or the attributes to
/// offer: they replace all of the section's `a=crypto` lines, where the first one
/// stood, or go at the end of the section when it had none (attribute lines end a
/// media description, RFC 4566 §5). A section that gets attributes and says
/// `RTP/AVP` or `RTP/AVPF` is switched to `RTP/SAVP` / `RTP/SAVPF`, the profiles
/// a=crypto is defined for (RFC 4568 §3.1.4, RFC 5124). New lines take the line
/// ending of their section's `m=` line (of the body's first line when the `m=` line
/// ends the body without one).
pub fn set_crypto<F>(body: &[u8], mut choose: F) -> Result<Vec<u8>, SdpError>
where
    F: FnMut(&MediaSection<'_>) -> Option<Vec<CryptoAttr>>,
{
    check_version(body)?;
    // For a last line without an ending: the body's first line says which it uses.
    let body_eol = lines(body).next().and_then(line_ending).unwrap_or(b"\r\n");
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut index = 0;
    // The attributes still to write for the current section, and its line ending.
    let mut pending: Option<(Vec<CryptoAttr>, &[u8])> = None;
    // Whether the current section is being edited (its a=crypto lines are dropped).
    let mut editing = false;
    for line in lines(body) {
        if line.starts_with(b"m=") {
            flush(&mut out, &mut pending);
            let (section, (start, end)) = media_line(line, index)?;
            index += 1;
            let chosen = choose(&section);
            editing = chosen.is_some();
            let eol = line_ending(line).unwrap_or(body_eol);
            let secure = match section.proto {
                "RTP/AVP" => Some(&b"RTP/SAVP"[..]),
                "RTP/AVPF" => Some(&b"RTP/SAVPF"[..]),
                _ => None,
            };
            match (&chosen, secure) {
                (Some(attrs), Some(proto)) if !attrs.is_empty() => {
                    out.extend_from_slice(&line[..start]);
                    out.extend_from_slice(proto);
                    out.extend_from_slice(&line[end..]);
                }
                _ => out.extend_from_slice(line),
            }
            pending = chosen.map(|attrs| (attrs, eol));
        } else if editing && line.starts_with(b"a=crypto:") {
            flush(&mut out, &mut pending);
        } else {
            out.extend_from_slice(line);
        }
    }
    flush(&mut out, &mut pending);
    Ok(out)
}

/// [`set_crypto`] for every active (`port` ≠ 0) `m=audio` and `m=video` section,
/// each getting `attrs`.
pub fn set_crypto_audio_video(body: &[u8], attrs: &[CryptoAttr]) -> Result<Vec<u8>, SdpError> {
    set_crypto(body, |section| {
        (matches!(section.media, "audio" | "video") && section.port != 0).then(|| attrs.to_vec())
    })
}

fn flush(out: &mut Vec<u8>, pending: &mut Option<(Vec<CryptoAttr>, &[u8])>) {
    if let Some((attrs, eol)) = pending.take() {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        for attr in attrs {
            out.extend_from_slice(attr.to_line().as_bytes());
            out.extend_from_slice(eol);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permit::SrtpSuite;

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=sendrecv\r\n\
m=video 51372 RTP/SAVP 96\r\n\
a=rtpmap:96 H264/90000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n\
a=fmtp:96 packetization-mode=1\r\n\
m=application 0 UDP/BFCP *\r\n";

    fn ours() -> CryptoAttr {
        CryptoAttr::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5",
        )
        .unwrap()
    }

    #[test]
    fn replaces_and_inserts_keeping_other_bytes() {
        let ours = ours();
        let edited = set_crypto_audio_video(OFFER.as_bytes(), std::slice::from_ref(&ours)).unwrap();
        let edited = String::from_utf8(edited).unwrap();
        let line = ours.to_line();
        let expected = OFFER
            .replace("m=audio 49170 RTP/AVP 0 8", "m=audio 49170 RTP/SAVP 0 8")
            .replace("a=sendrecv\r\n", &format!("a=sendrecv\r\n{line}\r\n"))
            .replace(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32",
                &line,
            );
        assert_eq!(edited, expected);
        let found = crypto_lines(edited.as_bytes()).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].attrs, vec![Ok(ours.clone())]);
        assert_eq!(found[1].attrs, vec![Ok(ours.clone())]);
        assert!(found[2].attrs.is_empty());
        assert_eq!(found[2].port, 0);
    }

    #[test]
    fn lf_only_and_missing_final_newline() {
        let body = "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nt=0 0\nm=audio 4000 RTP/AVPF 0\na=rtpmap:0 PCMU/8000";
        let ours = ours();
        let edited = set_crypto_audio_video(body.as_bytes(), std::slice::from_ref(&ours)).unwrap();
        let expected = format!(
            "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nt=0 0\nm=audio 4000 RTP/SAVPF 0\na=rtpmap:0 PCMU/8000\n{}\n",
            ours.to_line()
        );
        assert_eq!(String::from_utf8(edited).unwrap(), expected);
    }

    #[test]
    fn several_attrs_untouched_sections_and_errors() {
        let gcm = CryptoAttr {
            tag: 2,
            suite: SrtpSuite::AeadAes128Gcm,
            ..ours()
        };
        // Choosing only the video section leaves audio alone, several lines replace one.
        let edited = set_crypto(OFFER.as_bytes(), |s| {
            (s.media == "video").then(|| vec![ours(), gcm.clone()])
        })
        .unwrap();
        let found = crypto_lines(&edited).unwrap();
        assert!(found[0].attrs.is_empty());
        assert_eq!(found[0].proto, "RTP/AVP");
        assert_eq!(found[1].attrs.len(), 2);
        assert_eq!(found[1].attrs[1], Err(SdesError::KeyLength));
        // Nothing chosen: byte-identical.
        assert_eq!(
            set_crypto(OFFER.as_bytes(), |_| None).unwrap(),
            OFFER.as_bytes()
        );
        assert_eq!(crypto_lines(b"o=x\r\n"), Err(SdpError::NotSdp));
        assert_eq!(
            set_crypto(b"v=0\r\nm=audio\r\n", |_| None),
            Err(SdpError::BadMediaLine(0))
        );
        assert_eq!(
            crypto_lines(b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n"),
            Err(SdpError::BadMediaLine(0))
        );
    }
}
