//! Dialogs (RFC 3261 §12): the state a UAC builds from a 2xx and a UAS from the
//! INVITE it accepts, and the in-dialog requests built from it, with the route set
//! taken from Record-Route.

use sip_core::message::{HeaderName, Message, NameAddr, SipUri};
use sip_core::transport::Transport;

use crate::request::{Local, Request, resolve};

/// Why a dialog could not be made from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("no Contact")]
    NoContact,
    #[error("no remote tag")]
    NoTag,
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// One confirmed dialog (RFC 3261 §12: Call-ID, local and remote tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// The From (UAC) or To (UAS) URI of our side, and of the peer's, in brackets.
    pub local_uri: String,
    pub remote_uri: String,
    /// Our CSeq: the next request gets `local_seq + 1` (§12.2.1.1).
    pub local_seq: u32,
    /// The Contact of the peer (§12.1.1, §12.1.2).
    pub remote_target: String,
    /// Route set: Record-Route as received at the UAS, reversed at the UAC.
    pub route_set: Vec<String>,
}

fn text(b: &[u8], what: &'static str) -> Result<String, DialogError> {
    String::from_utf8(b.to_vec()).map_err(|_| DialogError::Malformed(what))
}

fn contact_uri(msg: &Message) -> Result<String, DialogError> {
    let c = msg
        .list(HeaderName::Contact)
        .next()
        .ok_or(DialogError::NoContact)?;
    let na = NameAddr::parse(c).ok_or(DialogError::Malformed("Contact"))?;
    text(na.uri, "Contact")
}

fn uri_of(
    value: Result<NameAddr<'_>, sip_core::message::ParseError>,
    what: &'static str,
) -> Result<String, DialogError> {
    let na = value.map_err(|_| DialogError::Malformed(what))?;
    Ok(format!("<{}>", text(na.uri, what)?))
}

fn record_route(msg: &Message) -> Result<Vec<String>, DialogError> {
    msg.list(HeaderName::RecordRoute)
        .map(|v| text(v, "Record-Route"))
        .collect()
}

impl Dialog {
    /// The UAC side, from the 2xx to our INVITE (§12.1.2): the route set is the
    /// Record-Route in reverse order, the remote target the 2xx's Contact.
    pub fn uac(local_seq: u32, local_tag: &str, response: &Message) -> Result<Self, DialogError> {
        let mut route_set = record_route(response)?;
        route_set.reverse();
        Ok(Self {
            call_id: text(response.call_id().unwrap_or_default(), "Call-ID")?,
            local_tag: local_tag.to_string(),
            remote_tag: text(response.to_tag().ok_or(DialogError::NoTag)?, "To")?,
            local_uri: uri_of(response.from(), "From")?,
            remote_uri: uri_of(response.to(), "To")?,
            local_seq,
            remote_target: contact_uri(response)?,
            route_set,
        })
    }

    /// The UAS side, from the INVITE we answer with 2xx (§12.1.1): the route set is
    /// the Record-Route in order, the remote target the INVITE's Contact.
    pub fn uas(request: &Message, local_tag: &str, local_seq: u32) -> Result<Self, DialogError> {
        Ok(Self {
            call_id: text(request.call_id().unwrap_or_default(), "Call-ID")?,
            local_tag: local_tag.to_string(),
            remote_tag: text(request.from_tag().ok_or(DialogError::NoTag)?, "From")?,
            local_uri: uri_of(request.to(), "To")?,
            remote_uri: uri_of(request.from(), "From")?,
            local_seq,
            remote_target: contact_uri(request)?,
            route_set: record_route(request)?,
        })
    }

    /// Whether an in-dialog request belongs here (§12.2.2: Call-ID, To tag = ours,
    /// From tag = the peer's).
    pub fn matches_request(&self, msg: &Message) -> bool {
        msg.call_id() == Some(self.call_id.as_bytes())
            && msg.to_tag() == Some(self.local_tag.as_bytes())
            && msg.from_tag() == Some(self.remote_tag.as_bytes())
    }

    /// Whether the first route is a loose router (§12.2.1.1; RFC 3261 proxies are).
    fn loose(&self) -> bool {
        self.route_set.first().is_none_or(|r| {
            NameAddr::parse(r.as_bytes())
                .and_then(|na| SipUri::parse(na.uri))
                .is_some_and(|u| u.is_loose_route())
        })
    }

    /// A request inside the dialog (§12.2.1.1). Loose routing: Request-URI = remote
    /// target, Route = route set. Strict: Request-URI = first route, Route = the rest
    /// followed by the remote target. `cseq` is given for ACK (the INVITE's number)
    /// and taken from `local_seq + 1` otherwise.
    pub fn request(
        &mut self,
        method: &'static str,
        local: &Local,
        branch: &str,
        cseq: Option<u32>,
    ) -> Request {
        let cseq = cseq.unwrap_or_else(|| {
            self.local_seq += 1;
            self.local_seq
        });
        let (uri, routes) = if self.loose() {
            (self.remote_target.clone(), self.route_set.clone())
        } else {
            let first = NameAddr::parse(self.route_set[0].as_bytes()).map_or_else(
                || self.route_set[0].clone(),
                |na| String::from_utf8_lossy(na.uri).into_owned(),
            );
            let mut rest = self.route_set[1..].to_vec();
            rest.push(format!("<{}>", self.remote_target));
            (first, rest)
        };
        let mut headers: Vec<(&'static str, String)> =
            routes.into_iter().map(|r| ("Route", r)).collect();
        if method != "ACK" && method != "BYE" {
            headers.push(("Contact", format!("<{}>", local.contact_uri())));
        }
        Request {
            method,
            uri,
            via: local.via(branch),
            from: format!("{};tag={}", self.local_uri, self.local_tag),
            to: format!("{};tag={}", self.remote_uri, self.remote_tag),
            call_id: self.call_id.clone(),
            cseq,
            headers,
            body: None,
        }
    }

    /// Where an in-dialog request goes first (§8.1.2): the first route, or the remote
    /// target without one; `None` when it needs DNS, and the caller uses its proxy.
    pub fn next_hop(&self, default: Transport) -> Option<(Transport, std::net::SocketAddr)> {
        let uri = match self.route_set.first() {
            Some(r) => {
                let na = NameAddr::parse(r.as_bytes())?;
                String::from_utf8_lossy(na.uri).into_owned()
            }
            None => self.remote_target.clone(),
        };
        resolve(&uri, default)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn local() -> Local {
        Local {
            user: "alice".into(),
            domain: "localhost".into(),
            transport: Transport::Udp,
            advertised: "127.0.0.1:5070".parse().unwrap(),
            listener: None,
        }
    }

    const OK: &[u8] = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
Record-Route: <sip:127.0.0.1:5062;lr>, <sip:10.0.0.9;lr>\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\n\
From: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>;tag=b2\r\nCall-ID: c1\r\n\
CSeq: 2 INVITE\r\nContact: <sip:bob@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn uac_route_set_is_reversed_and_bye_follows_it() {
        let resp = Message::parse(Bytes::from_static(OK)).unwrap();
        let mut d = Dialog::uac(2, "a1", &resp).unwrap();
        assert_eq!(
            d.route_set,
            [
                "<sip:127.0.0.1:5060;lr>",
                "<sip:10.0.0.9;lr>",
                "<sip:127.0.0.1:5062;lr>"
            ]
        );
        assert_eq!(
            d.next_hop(Transport::Udp),
            Some((Transport::Udp, "127.0.0.1:5060".parse().unwrap()))
        );
        let bye = Message::parse(d.request("BYE", &local(), "z9hG4bK9", None).to_bytes()).unwrap();
        bye.validate().unwrap();
        assert_eq!(bye.request_uri(), Some(&b"sip:bob@127.0.0.1:5080"[..]));
        assert_eq!(bye.cseq().unwrap().seq, 3);
        assert_eq!(bye.list(HeaderName::Route).count(), 3);
        assert_eq!(bye.to_tag(), Some(&b"b2"[..]));
        assert_eq!(bye.from_tag(), Some(&b"a1"[..]));
        let ack = d.request("ACK", &local(), "z9hG4bKa", Some(2));
        assert_eq!(ack.cseq, 2);
        assert_eq!(d.local_seq, 3);
    }

    #[test]
    fn uas_keeps_order_and_matches_requests() {
        let invite = Message::parse(Bytes::from_static(
            b"INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK2\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:bob@localhost>;tag=b2\r\nTo: <sip:alice@localhost>\r\n\
Call-ID: c9\r\nCSeq: 5 INVITE\r\nContact: <sip:bob@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n",
        ))
        .unwrap();
        let d = Dialog::uas(&invite, "a7", 0).unwrap();
        assert_eq!(d.route_set, ["<sip:127.0.0.1:5060;lr>"]);
        assert_eq!(d.remote_tag, "b2");
        let bye = Message::parse(Bytes::from_static(
            b"BYE sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK3\r\n\
From: <sip:bob@localhost>;tag=b2\r\nTo: <sip:alice@localhost>;tag=a7\r\nCall-ID: c9\r\nCSeq: 6 BYE\r\n\
Content-Length: 0\r\n\r\n",
        ))
        .unwrap();
        assert!(d.matches_request(&bye));
        assert!(
            !Dialog {
                local_tag: "zz".into(),
                ..d.clone()
            }
            .matches_request(&bye)
        );
    }

    #[test]
    fn strict_router_gets_the_request_uri() {
        let mut d = Dialog {
            call_id: "c".into(),
            local_tag: "l".into(),
            remote_tag: "r".into(),
            local_uri: "<sip:a@h>".into(),
            remote_uri: "<sip:b@h>".into(),
            local_seq: 1,
            remote_target: "sip:b@127.0.0.1:5080".into(),
            route_set: vec!["<sip:127.0.0.1:5060>".into()],
        };
        let r = d.request("BYE", &local(), "z9hG4bKs", None);
        assert_eq!(r.uri, "sip:127.0.0.1:5060");
        assert_eq!(
            r.headers[0],
            ("Route", "<sip:b@127.0.0.1:5080>".to_string())
        );
    }
}
