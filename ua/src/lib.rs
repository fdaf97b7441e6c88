//! Permit's user agent. For now it holds the request builder the CLI uses to probe a
//! server with OPTIONS (RFC 3261 §11); registration, calls and the permit features are
//! built on the same sans-IO pieces of `sip-core`.

use std::net::SocketAddr;

use bytes::Bytes;
use rand::Rng;
use sip_core::transport::Transport;

/// Builds an out-of-dialog OPTIONS request (RFC 3261 §11.1) to `target`, sent from
/// `local` over `transport`, with fresh branch, tag and Call-ID from `rng`.
pub fn options_request(
    target: &str,
    local: SocketAddr,
    transport: Transport,
    rng: &mut impl Rng,
) -> Bytes {
    let branch: u64 = rng.random();
    let tag: u32 = rng.random();
    let call_id: u128 = rng.random();
    let host = match local {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    format!(
        "OPTIONS {target} SIP/2.0\r\n\
Via: SIP/2.0/{t} {host};branch=z9hG4bK{branch:016x};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:permit-ua@{host}>;tag={tag:08x}\r\n\
To: <{target}>\r\n\
Call-ID: {call_id:032x}\r\n\
CSeq: 1 OPTIONS\r\n\
Accept: application/sdp\r\n\
User-Agent: permit-ua\r\n\
Content-Length: 0\r\n\r\n",
        t = transport.via_token()
    )
    .into()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use sip_core::message::{Message, Method};

    use super::*;

    #[test]
    fn options_request_is_valid_sip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let local = "[::1]:5099".parse().unwrap();
        let m = Message::parse(options_request(
            "sip:localhost",
            local,
            Transport::Tcp,
            &mut rng,
        ))
        .unwrap();
        m.validate().unwrap();
        assert_eq!(m.method(), Some(&Method::Options));
        let via = m.top_via().unwrap();
        assert_eq!(
            (via.transport, via.host, via.port),
            (&b"TCP"[..], &b"[::1]"[..], Some(5099))
        );
        assert!(via.branch().unwrap().starts_with(b"z9hG4bK"));
        assert!(m.from_tag().is_some());
    }
}
