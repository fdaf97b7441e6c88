//! What this UA accepts: the decision on an incoming INVITE and the answer to the
//! proxy's load query. Every incoming INVITE goes through [`accept_invite`], the one
//! place where further checks (a permit token issued by the proxy) plug in.

use sip_core::message::{HeaderName, Message};

use crate::sdp::{self, AudioOffer};

/// The UA's load: calls in progress against its limit (`--max-calls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub active: usize,
    pub max: usize,
}

impl Load {
    pub fn busy(self) -> bool {
        self.active >= self.max
    }
}

/// A refused INVITE: the status, its reason phrase and an optional header that
/// explains it (RFC 3261 §21.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub header: Option<(&'static str, &'static str)>,
}

impl Refusal {
    fn new(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            header: None,
        }
    }
}

/// Option tags we support (RFC 3261 §19.2): none beyond the base protocol.
fn supported(tag: &[u8]) -> bool {
    tag.eq_ignore_ascii_case(b"outbound")
}

/// Decides on a new incoming INVITE (out of dialog):
/// - `Require` with an extension we lack → 420 with `Unsupported` (RFC 3261 §8.2.2.3);
/// - at the call limit → 486 Busy Here (§21.4.24);
/// - no SDP offer, or none with Opus or PCMU → 488 Not Acceptable Here (RFC 3264 §6);
///
/// and returns the caller's audio stream otherwise.
pub fn accept_invite(msg: &Message, load: Load) -> Result<AudioOffer, Refusal> {
    if msg.list(HeaderName::Require).any(|t| !supported(t)) {
        return Err(Refusal {
            status: 420,
            reason: "Bad Extension",
            header: Some(("Unsupported", "*")),
        });
    }
    if load.busy() {
        return Err(Refusal::new(486, "Busy Here"));
    }
    let is_sdp = msg
        .header(HeaderName::ContentType)
        .is_some_and(|ct| ct.len() >= 15 && ct[..15].eq_ignore_ascii_case(b"application/sdp"));
    if !is_sdp {
        return Err(Refusal::new(488, "Not Acceptable Here"));
    }
    match sdp::parse_audio(msg.body()) {
        Ok(offer) if offer.codec.is_some() => Ok(offer),
        _ => Err(Refusal::new(488, "Not Acceptable Here")),
    }
}

/// The answer to an OPTIONS (RFC 3261 §11.2: a UAS answers as it would an INVITE, so
/// a busy one answers 486). The proxy's load query reads exactly this.
pub fn answer_options(load: Load) -> (u16, &'static str) {
    if load.busy() {
        (486, "Busy Here")
    } else {
        (200, "OK")
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn invite(extra: &str, body: &str) -> Message {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        Message::parse(Bytes::from(format!(
            "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:bob@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}{ct}\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        )))
        .unwrap()
    }

    const OFFER: &str = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 8 0\r\n";
    const FREE: Load = Load { active: 0, max: 1 };

    #[test]
    fn accepts_a_pcmu_offer_when_free() {
        let offer = accept_invite(&invite("", OFFER), FREE).unwrap();
        assert_eq!(
            offer.addr,
            "127.0.0.1:4000".parse::<std::net::SocketAddr>().unwrap()
        );
    }

    #[test]
    fn refusals_carry_their_status() {
        let busy = Load { active: 1, max: 1 };
        let cases = [
            (invite("", OFFER), busy, 486),
            (invite("Require: 100rel\r\n", OFFER), FREE, 420),
            (invite("", ""), FREE, 488),
            (
                invite("", "v=0\r\nc=IN IP4 1.1.1.1\r\nm=audio 4000 RTP/AVP 8\r\n"),
                FREE,
                488,
            ),
        ];
        for (msg, load, status) in cases {
            assert_eq!(accept_invite(&msg, load).unwrap_err().status, status);
        }
        assert_eq!(answer_options(busy), (486, "Busy Here"));
        assert_eq!(answer_options(FREE).0, 200);
    }
}
