//! UDP: one receive task per socket, datagrams handed to the engine queue as they are.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sip_core::transport::{Received, Transport};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::NetStats;

/// Largest datagram we read (RFC 3261 §18.1.1 lets UDP messages reach 65,535 bytes).
const MAX_DATAGRAM: usize = 65_535;

/// Receive buffer asked for on every UDP socket. The kernel default (~208 KiB) fills in
/// a few milliseconds at 10,000+ datagrams/s whenever the reading thread is descheduled
/// (docs/benchmarks.md); a burst must wait in the socket, not be dropped.
pub(crate) const RECV_BUFFER: usize = 8 << 20;

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    grow_recv_buffer(&sock);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

/// Asks for [`RECV_BUFFER`]: past `net.core.rmem_max` when allowed (SO_RCVBUFFORCE
/// needs CAP_NET_ADMIN), else as much as the limit gives.
fn grow_recv_buffer(sock: &socket2::Socket) {
    let forced =
        nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBufForce, &RECV_BUFFER);
    if forced.is_err() {
        let _ = sock.set_recv_buffer_size(RECV_BUFFER);
    }
    match sock.recv_buffer_size() {
        Ok(n) if n < RECV_BUFFER => tracing::info!(
            bytes = n,
            "UDP receive buffer limited by net.core.rmem_max; raise it for high call rates"
        ),
        Ok(n) => tracing::debug!(bytes = n, "UDP receive buffer"),
        Err(_) => {}
    }
}

pub(crate) fn spawn_receiver(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    tx: mpsc::Sender<Received>,
    stats: Arc<NetStats>,
) {
    tokio::spawn(async move {
        // One reusable buffer; each datagram is copied out at its exact size so a stored
        // message never pins a large receive buffer.
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port unreachable surfaces here on some systems: not fatal.
                    tracing::trace!(error = %e, "udp recv error");
                    continue;
                }
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            let msg = Received {
                transport: Transport::Udp,
                local,
                peer,
                data,
            };
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => NetStats::bump(&stats.dropped_input),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
}
