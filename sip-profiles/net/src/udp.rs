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

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    UdpSocket::from_std(std)
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
