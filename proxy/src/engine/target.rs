//! Stage 4, route: the next hops of a request (RFC 3261 §16.5): the next Route, the
//! callee's bindings by q, or the Request-URI itself.

use std::collections::VecDeque;
use std::time::Instant;

use sip_core::message::{NameAddr, SipUri};
use sip_core::transport::Transport;

use super::Proxy;
use crate::route::resolve;

/// One forwarding target: the Request-URI to use and the first hop.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// New Request-URI (a registered contact); `None` keeps the received one.
    pub(super) uri: Option<String>,
    /// Route values to prepend (Path of the binding, RFC 3327).
    pub(super) route: Vec<String>,
    pub(super) transport: Transport,
    pub(super) dest: std::net::SocketAddr,
    /// From the binding: the UA's call limit and whether it wants the load query.
    pub(super) max_calls: Option<u32>,
    pub(super) load_query: bool,
}

/// The connection a binding was registered over, when requests must reuse it rather
/// than connect to the Contact (RFC 5626 §5.3 flows; RFC 3261 §18.2.2): always for
/// TLS (a phone has no server certificate and is usually behind NAT), and for TCP
/// when the Contact carries the outbound `ob` parameter.
pub(super) fn registered_flow(
    b: &crate::location::Binding,
) -> Option<(Transport, std::net::SocketAddr)> {
    let (transport, src) = b.source?.get();
    let ob = SipUri::parse(b.contact.as_bytes()).is_some_and(|u| u.param(b"ob").is_some());
    match transport {
        Transport::Tls => Some((transport, src)),
        Transport::Tcp if ob => Some((transport, src)),
        _ => None,
    }
}

impl Proxy {
    /// Resolves a URI to its next hop, reusing a registered flow: a URI that is the
    /// Contact of a binding registered over TLS (or TCP with `ob`) is reached over
    /// the binding's own connection, as the first request of the dialog was — an
    /// in-dialog request to a phone's Contact must not open a new connection to it.
    pub(super) fn resolve_hop(&self, uri: &[u8]) -> Option<(Transport, std::net::SocketAddr)> {
        let (transport, dest) = resolve(uri)?;
        if transport == Transport::Udp {
            return Some((transport, dest)); // flows are reused for TLS and TCP only
        }
        let location = self.location.lock();
        let flow = location.indexed_at(dest).find_map(|aor| {
            location
                .bindings(aor)
                .iter()
                .filter(|b| resolve(b.contact.as_bytes()) == Some((transport, dest)))
                .find_map(registered_flow)
        });
        Some(flow.unwrap_or((transport, dest)))
    }

    /// Next hops of a request (§16.5): the next Route, the callee's bindings by q, or
    /// the Request-URI itself; an error status when there is none.
    pub(super) fn targets(
        &self,
        now: Instant,
        uri: &SipUri<'_>,
        ruri: &[u8],
        ruri_is_us: bool,
        remaining_routes: &[&[u8]],
    ) -> Result<VecDeque<Target>, (u16, &'static str)> {
        let direct = |uri: &[u8]| {
            self.resolve_hop(uri).map(|(transport, dest)| {
                VecDeque::from([Target {
                    uri: None,
                    route: vec![],
                    transport,
                    dest,
                    max_calls: None,
                    load_query: false,
                }])
            })
        };
        if let Some(next) = remaining_routes.first() {
            let hop = NameAddr::parse(next).map(|n| n.uri);
            return hop.and_then(direct).ok_or((404, "Next Hop Not Resolvable"));
        }
        if !ruri_is_us {
            return direct(ruri).ok_or((404, "Not Found"));
        }
        let user = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .ok_or((404, "Not Found"))?;
        let aor = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
        let unix = self.unix(now);
        let location = self.location.lock();
        let bindings = location.lookup(&aor, unix).ok_or((404, "Not Found"))?;
        let targets: VecDeque<Target> = bindings
            .into_iter()
            .filter_map(|b| {
                let first_hop = b
                    .path
                    .first()
                    .and_then(|p| NameAddr::parse(p.as_bytes()))
                    .map(|n| n.uri);
                let (transport, dest) = match (first_hop, registered_flow(b)) {
                    (None, Some(flow)) => flow,
                    _ => resolve(first_hop.unwrap_or(b.contact.as_bytes()))?,
                };
                Some(Target {
                    uri: Some(b.contact.to_string()),
                    route: b.path.to_vec(),
                    transport,
                    dest,
                    max_calls: b.max_calls,
                    load_query: b.load_query,
                })
            })
            .collect();
        if targets.is_empty() {
            return Err((480, "Temporarily Unavailable"));
        }
        Ok(targets)
    }
}
