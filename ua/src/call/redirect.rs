//! Direct mode, the caller's side: the proxy answers our INVITE (which asked
//! `Request-Disposition: redirect`, RFC 3841 §9.1) with `302 Moved Temporarily` whose
//! Contact is the callee's address with the permit token as an embedded header
//! (`<sip:bob@198.51.100.7:5062;transport=tls?Permit-Token=v1...>`, RFC 3261
//! §19.1.5), and the session secret in `Permit-Key` on a TLS hop. We send the INVITE
//! again, straight to that Contact (RFC 3261 §8.1.3.4: a new request to the new
//! target; same Call-ID, From tag and To, CSeq + 1, a new branch), with the embedded
//! header added and our SDP keyed from the secret.

use std::time::Instant;

use sip_core::message::{HeaderName, Message, NameAddr, SipUri};

use super::{Call, CallState};
use crate::engine::{Purpose, Ua};
use crate::keys::Offer;
use crate::permit;
use crate::request::{self, Dest};
use crate::sdp;

/// `%XX` escapes of a URI header value decoded (RFC 3261 §19.1.2, §25.1 `hvalue`);
/// `None` for a bad escape or a result that is not UTF-8.
fn unescape(v: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hex = std::str::from_utf8(v.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The new target of a 3xx and the headers its Contact embeds (RFC 3261 §19.1.5):
/// the URI without its `?headers` part, and each `name=value` decoded.
pub fn redirect_target(msg: &Message) -> Option<(String, Vec<(String, String)>)> {
    let contact = msg.list(HeaderName::Contact).next()?;
    let na = NameAddr::parse(contact)?;
    let uri = SipUri::parse(na.uri)?;
    let bare = match memchr_q(na.uri) {
        Some(q) => &na.uri[..q],
        None => na.uri,
    };
    let mut headers = Vec::new();
    for h in uri.headers.unwrap_or_default().split(|&b| b == b'&') {
        if h.is_empty() {
            continue;
        }
        let eq = h.iter().position(|&b| b == b'=')?;
        headers.push((unescape(&h[..eq])?, unescape(&h[eq + 1..])?));
    }
    Some((String::from_utf8(bare.to_vec()).ok()?, headers))
}

fn memchr_q(uri: &[u8]) -> Option<usize> {
    // The '?' that starts the headers comes after the host part (§19.1.1).
    let at = uri.iter().rposition(|&b| b == b'@').unwrap_or(0);
    uri[at..].iter().position(|&b| b == b'?').map(|p| at + p)
}

impl Ua {
    /// Follows a 3xx in direct mode; `false` when it cannot (no Contact with a
    /// `Permit-Token`, or an address we cannot reach over our transport).
    pub(crate) fn follow_redirect(&mut self, now: Instant, call_id: &str, msg: &Message) -> bool {
        let Some((target, embedded)) = redirect_target(msg) else {
            tracing::debug!("3xx without a usable Contact");
            return false;
        };
        let Some(token) = embedded
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Permit-Token"))
            .map(|(_, v)| v.clone())
        else {
            tracing::debug!("3xx Contact without an embedded Permit-Token");
            return false;
        };
        let transport = self.cfg.local.transport;
        let Some((to_transport, addr)) = request::resolve(&target, transport) else {
            tracing::debug!("3xx Contact needs DNS");
            return false;
        };
        if to_transport != transport {
            tracing::info!(
                "the callee's address is over another transport than ours: cannot call it directly"
            );
            return false;
        }
        let secret = permit::permit_key(msg);
        let branch = self.new_branch();
        let local = self.cfg.local.clone();
        let Some(call) = self.calls.get_mut(call_id) else {
            return false;
        };
        let CallState::Inviting(inv) = &mut call.state else {
            return false;
        };
        // With the secret (it came on the TLS hop), our offer is the caller → callee
        // derivation under RTP/SAVP; without it, as for a routed call.
        let offer = match &secret {
            Some(s) => Offer::new(Some(s), call_id, &mut self.rng),
            None if transport == sip_core::transport::Transport::Tls => {
                Offer::new(None, call_id, &mut self.rng)
            }
            None => Offer::plain(),
        };
        let mut req = inv.req.clone();
        req.uri = target;
        req.via = local.via(&branch);
        req.cseq += 1;
        // Credentials and routes were for the proxy; the redirect was the answer.
        req.headers.retain(|(n, _)| {
            !matches!(
                *n,
                "Request-Disposition" | "Authorization" | "Proxy-Authorization" | "Route"
            )
        });
        req.headers.push(("Permit-Token", token));
        let media = call.local_media;
        if let Some(m) = media {
            req.body = Some((
                "application/sdp",
                (sdp::build(
                    call.session_id,
                    1,
                    m,
                    &offer.attrs,
                    offer.savp,
                    &self.cfg.audio_offer,
                ) + call.video.as_deref().unwrap_or_default())
                .into_bytes(),
            ));
        }
        call.crypto.clone_from(&offer.attrs);
        call.savp = offer.savp;
        inv.offer = offer;
        inv.secret = secret;
        inv.redirected = true;
        inv.provisional = false;
        let dest = Dest {
            transport,
            local: self.cfg.bind,
            remote: addr,
        };
        inv.dest = dest;
        inv.req = req.clone();
        let key = self.send_request(
            now,
            branch,
            req,
            dest,
            Purpose::Invite(call_id.to_string()),
            0,
        );
        if let Some(Call {
            state: CallState::Inviting(inv),
            ..
        }) = self.calls.get_mut(call_id)
        {
            inv.key = key;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn contact_headers_are_split_and_decoded() {
        let m = Message::parse(Bytes::from_static(
            b"SIP/2.0 302 Moved Temporarily\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\n\
From: <sip:a@d>;tag=1\r\nTo: <sip:b@d>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:bob@127.0.0.1:5071;transport=tls;ob?Permit-Token=v1.1.2.x_-y&Subject=a%20b>\r\n\
Content-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let (uri, headers) = redirect_target(&m).unwrap();
        assert_eq!(uri, "sip:bob@127.0.0.1:5071;transport=tls;ob");
        assert_eq!(
            headers,
            vec![
                ("Permit-Token".to_string(), "v1.1.2.x_-y".to_string()),
                ("Subject".to_string(), "a b".to_string())
            ]
        );
        assert_eq!(unescape(b"%zz"), None);
    }
}
