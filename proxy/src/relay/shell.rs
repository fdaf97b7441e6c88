//! The relay's I/O shell: every port of the range is bound at start (pre-bound, so a
//! datagram to a port no call holds reaches the table and is counted, and a call never
//! fails because another program took one of its ports); one thread of its own (the
//! SIP engine keeps its thread) waits for readiness on all of them (mio: epoll, no
//! async runtime, no task wake-up per packet) and drains each ready socket; each
//! datagram goes through [`RelayTable::handle_datagram`] under a mutex and is sent on
//! as received, from the other leg's socket, without copying or reading its payload. A
//! send that would block is dropped and counted (`RelayStats::send_failed`), never queued.

use std::io;
use std::net::UdpSocket as StdSocket;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::{
    AllocError, Allocation, CallCounters, MediaRelay, RelayCallId, RelaySettings, RelayStats,
    RelayTable, Verdict,
};

/// Largest datagram forwarded; one that fills the buffer may have been cut and is
/// dropped (RTP over Ethernet stays under 1,500 octets).
const BUFFER: usize = 4096;
/// How often idle calls are looked for.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// The table shared by the engine (allocate/free) and the socket tasks.
#[derive(Debug, Clone)]
pub struct SharedRelay(Arc<Mutex<RelayTable>>);

impl SharedRelay {
    pub fn new(table: RelayTable) -> SharedRelay {
        SharedRelay(Arc::new(Mutex::new(table)))
    }

    /// The table; a panic elsewhere never leaves it half-updated in a way that matters
    /// (counters and plain fields), so a poisoned lock is taken as is.
    pub fn lock(&self) -> MutexGuard<'_, RelayTable> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MediaRelay for SharedRelay {
    fn allocate(
        &mut self,
        now: Instant,
        token: &str,
        streams: usize,
    ) -> Result<Allocation, AllocError> {
        self.lock().allocate(now, token, streams)
    }
    fn free(&mut self, id: RelayCallId) -> Option<CallCounters> {
        self.lock().free(id)
    }
    fn alive(&self, id: RelayCallId) -> bool {
        self.lock().alive(id)
    }
    fn stats(&self) -> RelayStats {
        self.lock().stats()
    }
}

/// Receive buffer asked for on every relay socket: a few milliseconds of a busy stream
/// wait there while the relay thread is descheduled, instead of being dropped (the
/// kernel default, ~208 KiB, holds about 90 datagrams of 1,200 octets). Memory is used
/// only by what is queued; the kernel's `udp_mem` bounds the total.
pub const RECV_BUFFER: usize = 2 << 20;

/// Binds every port of the range on the relay address, non-blocking, each asking for
/// [`RECV_BUFFER`] (past `net.core.rmem_max` with CAP_NET_ADMIN, else up to it). Fails
/// with the port that could not be bound (in use, or the file-descriptor limit: one
/// descriptor per port).
pub fn bind(settings: &RelaySettings) -> io::Result<Vec<StdSocket>> {
    let first = settings.ports.0;
    // 2 × pairs ports from the first (an odd last port stays unbound); first + k never
    // passes the configured last port, so no overflow at the top of the port space.
    let count = settings.pairs() * 2;
    (0..count)
        .map(|k| first + k as u16)
        .map(|port| {
            let addr = std::net::SocketAddr::new(settings.address, port);
            let named = |e: io::Error| io::Error::new(e.kind(), format!("relay port {port}: {e}"));
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .map_err(named)?;
            let forced = nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::RcvBufForce,
                &RECV_BUFFER,
            );
            if forced.is_err() {
                let _ = s.set_recv_buffer_size(RECV_BUFFER);
            }
            s.bind(&addr.into()).map_err(named)?;
            s.set_nonblocking(true)?;
            Ok(s.into())
        })
        .collect()
}

/// Datagrams read from one socket before the others get their turn (a flooded port
/// cannot starve the rest).
const BATCH: usize = 64;

/// Starts the relay thread over sockets from [`bind`] (in port order from the first
/// port of the range). It runs until the process ends.
pub fn spawn(
    relay: SharedRelay,
    sockets: Vec<StdSocket>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let first = relay.lock().settings().ports.0;
    let poll = Poll::new()?;
    let mut sockets: Vec<UdpSocket> = sockets.into_iter().map(UdpSocket::from_std).collect();
    for (i, s) in sockets.iter_mut().enumerate() {
        poll.registry().register(s, Token(i), Interest::READABLE)?;
    }
    let shell = Shell {
        relay,
        sockets,
        first,
    };
    let handle = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || shell.run(poll))?;
    Ok(handle)
}

struct Shell {
    relay: SharedRelay,
    sockets: Vec<UdpSocket>,
    first: u16,
}

impl Shell {
    fn run(self, mut poll: Poll) {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; BUFFER];
        // Sockets that were ready and not drained yet (readiness is edge-triggered).
        let mut ready: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
        let mut queued = vec![false; self.sockets.len()];
        let mut next_expiry = Instant::now() + EXPIRY_TICK;
        loop {
            let now = Instant::now();
            let wait = if ready.is_empty() {
                next_expiry.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "relay poll failed; relay stopped");
                return;
            }
            for ev in &events {
                let i = ev.token().0;
                if i < queued.len() && !queued[i] {
                    queued[i] = true;
                    ready.push_back(i);
                }
            }
            for _ in 0..ready.len() {
                let Some(i) = ready.pop_front() else { break };
                if self.drain(i, &mut buf) {
                    queued[i] = false;
                } else {
                    ready.push_back(i);
                }
            }
            let now = Instant::now();
            if now >= next_expiry {
                let expired = self.relay.lock().handle_timeout(now);
                if expired > 0 {
                    tracing::debug!(expired, "relay calls freed after inactivity");
                }
                next_expiry = now + EXPIRY_TICK;
            }
        }
    }

    /// Up to [`BATCH`] datagrams of socket `i`; `true` once it would block.
    fn drain(&self, i: usize, buf: &mut [u8]) -> bool {
        let port = self.first + i as u16;
        let me = &self.sockets[i];
        for _ in 0..BATCH {
            let (n, source) = match me.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // ICMP errors of earlier sends (Linux reports them on the next
                // receive): nothing to do but go on.
                Err(_) => continue,
            };
            if n == buf.len() {
                self.relay.lock().count_oversize();
                continue;
            }
            let verdict =
                self.relay
                    .lock()
                    .handle_datagram(Instant::now(), port, source, &buf[..n]);
            let sent = match verdict {
                Verdict::Forward { from, to } => {
                    self.socket(from).map(|s| s.send_to(&buf[..n], to))
                }
                Verdict::Answer { from, to, data } => {
                    self.socket(from).map(|s| s.send_to(&data, to))
                }
                Verdict::Drop(_) => None,
            };
            if matches!(sent, Some(Err(_))) {
                self.relay.lock().count_send_failed();
            }
        }
        false
    }

    fn socket(&self, port: u16) -> Option<&UdpSocket> {
        self.sockets.get(usize::from(port.wrapping_sub(self.first)))
    }
}
