//! Requests this UA writes (RFC 3261 §8.1.1), its identity (AOR, Contact, Via) and
//! the next-hop resolution of a URI (§8.1.2, RFC 3263 limited to IP literals).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use rand::Rng;
use sip_core::message::SipUri;
use sip_core::transport::Transport;

/// Where a message goes: transport, our local socket and the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Who we are on the wire.
#[derive(Debug, Clone)]
pub struct Local {
    pub user: String,
    pub domain: String,
    pub transport: Transport,
    /// The address written in Via, Contact and SDP (a concrete IP, never unspecified).
    pub advertised: SocketAddr,
    /// Our own TLS listener (`--listen tls:IP:PORT`): the Contact names it, so that a
    /// caller sent to us directly (a 302 in direct mode) can connect to it, while the
    /// proxy keeps reaching us over the connection we registered on.
    pub listener: Option<SocketAddr>,
}

impl Local {
    /// Our address-of-record, `sip:user@domain`.
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    /// `host:port` of the advertised address, IPv6 in brackets (RFC 3261 §25.1).
    pub fn host_port(&self) -> String {
        host_port(self.advertised)
    }

    /// A Via value with a fresh branch (RFC 3261 §8.1.1.7) and `rport` (RFC 3581).
    pub fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport.via_token(),
            self.host_port()
        )
    }

    /// Our Contact URI (§8.1.1.8). On a stream transport it carries `ob` (RFC 5626
    /// §5.4): the proxy reaches us over the connection we opened.
    pub fn contact_uri(&self) -> String {
        if let Some(l) = self.listener {
            return format!("sip:{}@{};transport=tls;ob", self.user, host_port(l));
        }
        match self.transport {
            Transport::Udp => format!("sip:{}@{}", self.user, self.host_port()),
            t => format!(
                "sip:{}@{};transport={};ob",
                self.user,
                self.host_port(),
                t.via_token().to_ascii_lowercase()
            ),
        }
    }

    /// A target given on the command line as an AOR: `bob` (our domain), `bob@host`
    /// or a full `sip:` / `sips:` URI.
    pub fn target_uri(&self, target: &str) -> String {
        if target.starts_with("sip:") || target.starts_with("sips:") {
            target.to_string()
        } else if target.contains('@') {
            format!("sip:{target}")
        } else {
            format!("sip:{target}@{}", self.domain)
        }
    }
}

pub fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Fresh identifiers from the injected rng (STYLE.md rule 3).
pub fn branch(rng: &mut impl Rng) -> String {
    format!("z9hG4bK{:016x}", rng.random::<u64>())
}

pub fn tag(rng: &mut impl Rng) -> String {
    format!("{:08x}", rng.random::<u32>())
}

pub fn call_id(rng: &mut impl Rng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

/// An outgoing request, printed by [`Request::to_bytes`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub uri: String,
    pub via: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<(&'static str, Vec<u8>)>,
}

impl Request {
    /// Prints the request with the mandatory headers of §8.1.1 first.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "{} {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: {} {}\r\n",
            self.method,
            self.uri,
            self.via,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.method
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("User-Agent: permit-ua\r\n");
        let body: &[u8] = match &self.body {
            Some((ct, b)) => {
                // An empty type: the Content-Type is among `headers` (any type, MESSAGE).
                if !ct.is_empty() {
                    let _ = write!(out, "Content-Type: {ct}\r\n");
                }
                b
            }
            None => b"",
        };
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes.into()
    }
}

/// The address a URI leads to (RFC 3261 §8.1.2, RFC 3263 §4 without DNS): an IP
/// literal or `localhost`, the port or the transport's default, the `transport`
/// parameter or `default`. `None` for a name that needs DNS.
pub fn resolve(uri: &str, default: Transport) -> Option<(Transport, SocketAddr)> {
    let u = SipUri::parse(uri.as_bytes())?;
    let transport = match u.transport() {
        Some(t) => Transport::from_token(t)?,
        None if u.secure => Transport::Tls,
        None => default,
    };
    let host = std::str::from_utf8(u.host).ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    let port = u.port.unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    Some((transport, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use sip_core::message::{Message, Method};

    use super::*;

    fn local(transport: Transport) -> Local {
        Local {
            user: "alice".into(),
            domain: "example.org".into(),
            transport,
            advertised: "[::1]:5070".parse().unwrap(),
            listener: None,
        }
    }

    #[test]
    fn printed_request_parses_and_validates() {
        let l = local(Transport::Tcp);
        let req = Request {
            method: "INVITE",
            uri: l.target_uri("bob"),
            via: l.via("z9hG4bKabc"),
            from: format!("<{}>;tag=1", l.aor()),
            to: "<sip:bob@example.org>".into(),
            call_id: "cid".into(),
            cseq: 7,
            headers: vec![("Contact", format!("<{}>", l.contact_uri()))],
            body: Some(("application/sdp", b"v=0\r\n".to_vec())),
        };
        let m = Message::parse(req.to_bytes()).unwrap();
        m.validate().unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri(), Some(&b"sip:bob@example.org"[..]));
        assert_eq!(m.body(), b"v=0\r\n");
        assert_eq!(
            m.header(sip_core::message::HeaderName::Contact),
            Some(&b"<sip:alice@[::1]:5070;transport=tcp;ob>"[..])
        );
        assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKabc"[..]));
    }

    #[test]
    fn targets_and_next_hops() {
        let l = local(Transport::Udp);
        assert_eq!(l.target_uri("bob"), "sip:bob@example.org");
        assert_eq!(l.target_uri("bob@h"), "sip:bob@h");
        assert_eq!(l.target_uri("sips:bob@h"), "sips:bob@h");
        assert_eq!(
            resolve("sip:127.0.0.1:5080;lr;transport=tcp", Transport::Udp),
            Some((Transport::Tcp, "127.0.0.1:5080".parse().unwrap()))
        );
        assert_eq!(
            resolve("sip:bob@[::1]", Transport::Udp),
            Some((Transport::Udp, "[::1]:5060".parse().unwrap()))
        );
        assert_eq!(
            resolve("sips:localhost", Transport::Udp),
            Some((Transport::Tls, "127.0.0.1:5061".parse().unwrap()))
        );
        assert_eq!(resolve("sip:bob@example.org", Transport::Udp), None);
        assert_eq!(resolve("tel:+123", Transport::Udp), None);
    }
}
