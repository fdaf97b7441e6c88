//! What the sans-IO engines receive from and hand to the transport shell.

use std::net::SocketAddr;

use bytes::Bytes;

/// A SIP transport (RFC 3261 §18; TLS per §26.2 and RFC 5630).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Reliable transports carry no retransmissions (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// The Via transport token (RFC 3261 §20.42).
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }

    /// Parses a Via transport token or a `transport=` URI parameter, case-insensitively.
    pub fn from_token(t: &[u8]) -> Option<Self> {
        if t.eq_ignore_ascii_case(b"udp") {
            Some(Self::Udp)
        } else if t.eq_ignore_ascii_case(b"tcp") {
            Some(Self::Tcp)
        } else if t.eq_ignore_ascii_case(b"tls") {
            Some(Self::Tls)
        } else {
            None
        }
    }
}

/// Bytes that arrived: one datagram, or one framed message from a stream.
#[derive(Debug, Clone)]
pub struct Received {
    pub transport: Transport,
    /// The local address it arrived on (selects our Via and Record-Route).
    pub local: SocketAddr,
    /// The packet's source address (RFC 3581 `received`/`rport`).
    pub peer: SocketAddr,
    pub data: Bytes,
}

/// Bytes to send. On a stream transport an open connection to `dest` is reused
/// (RFC 3261 §18.2.2: responses go back over the connection the request came on).
#[derive(Debug, Clone)]
pub struct Transmit {
    pub transport: Transport,
    /// Local address to send from (the listener the flow belongs to).
    pub local: SocketAddr,
    pub dest: SocketAddr,
    pub data: Bytes,
}
