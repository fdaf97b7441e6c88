//! UDP: one receive task per socket, datagrams handed to the engine queue as they are.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sockopt};
use nix::sys::time::TimeSpec;
use sip_core::transport::{Received, Transport};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::{Inbound, NetStats};

/// Largest datagram we read (RFC 3261 §18.1.1 lets UDP messages reach 65,535 bytes).
const MAX_DATAGRAM: usize = 65_535;

/// Receive buffer asked for on every UDP socket. The kernel default (~208 KiB) fills in
/// a few milliseconds at 10,000+ datagrams/s whenever the reading thread is descheduled
/// (docs/benchmarks.md); a burst must wait in the socket, not be dropped.
pub(crate) const RECV_BUFFER: usize = 8 << 20;

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    grow_recv_buffer(&sock);
    // Receive timestamps tell how long each datagram waited in the queue
    // (NetStats::input_wait); without them the wait reads as zero. Linux stamps
    // datagrams on arrival shortly after the first socket asks for it; until then a
    // datagram is stamped when read (a wait of zero).
    if let Err(e) = nix::sys::socket::setsockopt(&sock, sockopt::ReceiveTimestampns, &true) {
        tracing::debug!(error = %e, "no UDP receive timestamps");
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
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
    tx: Inbound,
    stats: Arc<NetStats>,
) {
    tokio::spawn(async move {
        // One reusable buffer; each datagram is copied out at its exact size so a stored
        // message never pins a large receive buffer.
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut cmsg = nix::cmsg_space!(TimeSpec);
        loop {
            let read = sock
                .async_io(Interest::READABLE, || {
                    recv_stamped(&sock, &mut buf, &mut cmsg)
                })
                .await;
            let (n, peer, stamp) = match read {
                Ok(r) => r,
                Err(e) => {
                    // ICMP port unreachable surfaces here on some systems: not fatal.
                    tracing::trace!(error = %e, "udp recv error");
                    continue;
                }
            };
            if let Some(at) = stamp {
                let waited = SystemTime::now().duration_since(at).unwrap_or_default();
                let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
                stats.input_wait_us.store(us, Ordering::Relaxed);
            }
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

/// One datagram: its length, its source and the kernel's receive timestamp (when the
/// socket gives one, `SO_TIMESTAMPNS`).
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let peer = msg.address.as_ref().and_then(std_addr).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "datagram without a source address",
        )
    })?;
    let mut stamp = None;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec()), u32::try_from(ts.tv_nsec()))
            else {
                continue;
            };
            stamp = Some(UNIX_EPOCH + Duration::new(secs, nanos));
        }
    }
    Ok((msg.bytes, peer, stamp))
}

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}
