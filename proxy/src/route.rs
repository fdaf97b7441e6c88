//! Where a request goes: "is this URI us?", URI → next-hop address (RFC 3263 reduced to
//! IP literals: no DNS lookups are made), and the loop-detection hash of §16.3 item 4.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use sip_core::message::{Message, SipUri};
use sip_core::transport::Transport;

/// A transport flow: how to reach a peer and from which of our listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Our identity on the wire: the domain we serve and the addresses we listen on.
#[derive(Debug, Clone)]
pub struct Identity {
    pub domain: String,
    pub listeners: Vec<(Transport, SocketAddr)>,
}

fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(host).ok()?;
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    if s.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::from([127, 0, 0, 1]));
    }
    s.parse().ok()
}

impl Identity {
    /// Whether `uri` names this proxy or its domain (§16.4: Route/Request-URI "is us").
    pub fn is_us(&self, uri: &SipUri<'_>) -> bool {
        if uri.host.eq_ignore_ascii_case(self.domain.as_bytes())
            && uri
                .port
                .is_none_or(|p| self.listeners.iter().any(|(_, a)| a.port() == p))
        {
            return true;
        }
        let Some(ip) = parse_ip(uri.host) else {
            return false;
        };
        let port = uri.port.unwrap_or(if uri.secure { 5061 } else { 5060 });
        self.listeners.iter().any(|(_, a)| {
            a.port() == port && (a.ip() == ip || (a.ip().is_unspecified() && ip.is_loopback()))
        })
    }

    /// Whether a Via sent-by (`host`, `port`) is one of our listeners, as we write it
    /// (IP literal and port; a missing port is 5060). No allocation: runs per Via.
    pub fn is_own_sent_by(&self, host: &[u8], port: Option<u16>) -> bool {
        let Some(ip) = parse_ip(host) else {
            return false;
        };
        let port = port.unwrap_or(5060);
        self.listeners
            .iter()
            .any(|(_, a)| a.ip() == ip && a.port() == port)
    }

    /// The listener to send from towards `remote` over `transport`.
    pub fn local_for(&self, transport: Transport, remote: SocketAddr) -> Option<SocketAddr> {
        let same =
            |(t, a): &&(Transport, SocketAddr)| *t == transport && a.is_ipv4() == remote.is_ipv4();
        self.listeners
            .iter()
            .find(same)
            .or_else(|| self.listeners.iter().find(|(t, _)| *t == transport))
            .map(|(_, a)| *a)
    }

    /// `host:port` of a listener as written in Via and Record-Route.
    pub fn sent_by(addr: SocketAddr) -> String {
        match addr.ip() {
            IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
            IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        }
    }
}

/// Resolves a SIP URI to a transport and address. Only IP literals and `localhost`
/// resolve (no DNS, RFC 3263 §4 is out of scope); `None` otherwise.
pub fn resolve(uri: &[u8]) -> Option<(Transport, SocketAddr)> {
    let u = SipUri::parse(uri)?;
    let ip = parse_ip(u.host)?;
    // RFC 5630 §3.1.3: a SIPS URI is reached over TLS.
    let transport = match u.transport() {
        _ if u.secure => Transport::Tls,
        Some(t) => Transport::from_token(t)?,
        None => Transport::Udp,
    };
    let port = u.port.unwrap_or(if u.secure { 5061 } else { 5060 });
    Some((transport, SocketAddr::new(ip, port)))
}

/// The top Via as this server saw the request (RFC 3261 §18.2.1, RFC 3581 §4):
/// `received=<source IP>` when the sent-by host is not that address, and
/// `rport=<source port>` when the client asked with an empty `rport`. `None` when
/// neither applies (the Via stays byte for byte).
pub fn received_via(msg: &Message, source: SocketAddr) -> Option<String> {
    let raw = msg.list(sip_core::message::HeaderName::Via).next()?;
    let via = sip_core::message::Via::parse(raw).ok()?;
    let wants_rport = via.rport() == Some(None);
    let host_is_source = parse_ip(via.host).is_some_and(|ip| ip == source.ip());
    if !wants_rport && host_is_source {
        return None;
    }
    let params_at = via.params.as_ptr() as usize - raw.as_ptr() as usize;
    let head = std::str::from_utf8(&raw[..params_at]).ok()?.trim_end();
    let mut out = head.to_owned();
    for p in std::str::from_utf8(via.params).ok()?.split(';') {
        let p = p.trim();
        let name = p.split('=').next().unwrap_or_default().trim();
        if p.is_empty()
            || name.eq_ignore_ascii_case("received")
            || name.eq_ignore_ascii_case("rport")
        {
            continue;
        }
        out.push(';');
        out.push_str(p);
    }
    out.push_str(";received=");
    out.push_str(&source.ip().to_string());
    if wants_rport {
        out.push_str(";rport=");
        out.push_str(&source.port().to_string());
    }
    Some(out)
}

/// The §16.3 item 4 loop-detection hash over the fields a loop leaves unchanged:
/// Request-URI, From tag, To tag, Call-ID, CSeq number. A spiral (changed
/// Request-URI) hashes differently and is allowed.
pub fn loop_hash(msg: &Message) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    msg.request_uri().hash(&mut h);
    msg.from_tag().hash(&mut h);
    msg.to_tag().hash(&mut h);
    msg.call_id().hash(&mut h);
    msg.cseq().map(|c| c.seq).ok().hash(&mut h);
    h.finish()
}

/// Branch prefix (RFC 3261 §8.1.1.7 magic cookie) of every branch this proxy creates.
pub const BRANCH_PREFIX: &str = "z9hG4bK-pm";

/// The branch prefix of engine shard `shard` carrying `hash`; branches are
/// `{prefix}.{n}`. Every branch the proxy creates starts with [`BRANCH_PREFIX`] and two
/// hex digits naming the shard that sent it, so that its responses are steered back to
/// that shard ([`crate::shard::Steering`]).
pub fn branch_for(shard: u8, hash: u64) -> String {
    // Room for the `.{n}` the caller adds.
    let mut s = String::with_capacity(BRANCH_PREFIX.len() + 2 + 16 + 4);
    s.push_str(BRANCH_PREFIX);
    push_hex(&mut s, u64::from(shard), 2);
    push_hex(&mut s, hash, 16);
    s
}

/// A branch of shard `shard` for a request the proxy makes itself: `tag` tells the
/// use apart (`q` the load query, `s` NOTIFYs and deliveries), `n` makes it unique.
pub fn own_branch_for(shard: u8, tag: char, n: u64) -> String {
    let mut s = String::with_capacity(BRANCH_PREFIX.len() + 2 + 1 + 16);
    s.push_str(BRANCH_PREFIX);
    push_hex(&mut s, u64::from(shard), 2);
    s.push(tag);
    push_hex(&mut s, n, 16);
    s
}

/// Appends the low `digits` hex digits of `value`, lowercase, zero-padded: what
/// `{:0digits$x}` writes, without the formatting machinery (a few per cent of the
/// engine's time per message when it went through `format!`).
pub fn push_hex(out: &mut String, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        let nibble = value.checked_shr(i * 4).unwrap_or(0) & 0xf;
        out.push(char::from(HEX[nibble as usize]));
    }
}

/// The shard named by a branch of ours (see [`branch_for`], [`own_branch_for`]).
pub fn branch_shard(branch: &[u8]) -> Option<u8> {
    let digits = branch.strip_prefix(BRANCH_PREFIX.as_bytes())?.get(..2)?;
    u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            domain: "example.org".into(),
            listeners: vec![(Transport::Udp, "127.0.0.1:5070".parse().unwrap())],
        }
    }

    #[test]
    fn hex_texts_are_the_formatted_forms() {
        for v in [0u64, 1, 0xab, 0x1234_5678_9abc_def0, u64::MAX] {
            let mut s = String::new();
            push_hex(&mut s, v, 16);
            assert_eq!(s, format!("{v:016x}"));
            let mut s = String::new();
            push_hex(&mut s, v & 0xffff_ffff, 8);
            assert_eq!(s, format!("{:08x}", v & 0xffff_ffff));
        }
        assert_eq!(
            branch_for(3, 0xbeef),
            format!("{BRANCH_PREFIX}03{:016x}", 0xbeef)
        );
        assert_eq!(
            own_branch_for(0x1f, 'q', 7),
            format!("{BRANCH_PREFIX}1fq{:016x}", 7)
        );
    }

    #[test]
    fn recognises_itself() {
        let id = me();
        let us = |u: &[u8]| id.is_us(&SipUri::parse(u).unwrap());
        assert!(us(b"sip:example.org"));
        assert!(us(b"sip:bob@EXAMPLE.org"));
        assert!(us(b"sip:127.0.0.1:5070;lr"));
        assert!(!us(b"sip:127.0.0.1"));
        assert!(!us(b"sip:bob@192.0.2.1:5070"));
        assert!(!us(b"sip:bob@example.com"));
        assert!(id.is_own_sent_by(b"127.0.0.1", Some(5070)));
        assert!(!id.is_own_sent_by(b"127.0.0.1", None));
        assert!(!id.is_own_sent_by(b"example.org", Some(5070)));
    }

    #[test]
    fn received_and_rport() {
        let msg = |via: &str| {
            let raw = format!("OPTIONS sip:x@y SIP/2.0\r\nVia: {via}\r\nCall-ID: c\r\n\r\n");
            Message::parse(bytes::Bytes::from(raw)).unwrap()
        };
        let src: SocketAddr = "192.0.2.9:40000".parse().unwrap();
        assert_eq!(
            received_via(&msg("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport"), src).as_deref(),
            Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;received=192.0.2.9;rport=40000")
        );
        assert_eq!(
            received_via(&msg("SIP/2.0/UDP phone.example ;branch=z9hG4bK2"), src).as_deref(),
            Some("SIP/2.0/UDP phone.example;branch=z9hG4bK2;received=192.0.2.9")
        );
        assert_eq!(
            received_via(&msg("SIP/2.0/UDP 192.0.2.9:40000;branch=z9hG4bK3"), src),
            None
        );
        // Only the top Via of a comma list is rewritten.
        let m = msg("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK4, SIP/2.0/UDP h2;branch=z9hG4bK5");
        assert_eq!(
            received_via(&m, src).as_deref(),
            Some("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK4;received=192.0.2.9;rport=40000")
        );
    }

    #[test]
    fn resolves_literals_only() {
        assert_eq!(
            resolve(b"sip:bob@127.0.0.1:5062;transport=TCP"),
            Some((Transport::Tcp, "127.0.0.1:5062".parse().unwrap()))
        );
        assert_eq!(
            resolve(b"sip:[::1]"),
            Some((Transport::Udp, "[::1]:5060".parse().unwrap()))
        );
        assert_eq!(resolve(b"sip:bob@example.com"), None);
        assert_eq!(
            resolve(b"sips:bob@127.0.0.1"),
            Some((Transport::Tls, "127.0.0.1:5061".parse().unwrap()))
        );
        assert_eq!(
            resolve(b"sip:bob@127.0.0.1:5071;transport=tls"),
            Some((Transport::Tls, "127.0.0.1:5071".parse().unwrap()))
        );
        assert_eq!(resolve(b"sip:bob@127.0.0.1;transport=sctp"), None);
    }
}
