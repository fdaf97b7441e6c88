//! The relay's tokio shell: every port of the range is bound at start (pre-bound, so a
//! datagram to a port no call holds reaches the table and is counted, and a call never
//! fails because another program took one of its ports); one receive task per port on a
//! thread of its own (the SIP engine keeps its thread); each datagram goes through
//! [`RelayTable::handle_datagram`] under a mutex and is sent on as received, from the
//! other leg's socket, without copying or reading its payload. A send that would block
//! is dropped and counted (`ShellStats`), never queued.

use std::io;
use std::net::UdpSocket as StdSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

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

/// What the shell itself counted.
#[derive(Debug, Default)]
pub struct ShellStats {
    /// Forwards and latch answers not sent (socket buffer full, or an error).
    pub send_failed: AtomicU64,
    /// Datagrams that filled the receive buffer (maybe cut), dropped.
    pub oversize: AtomicU64,
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
    let last = first + (settings.pairs() as u16) * 2 - 1;
    (first..=last)
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

/// Starts the relay thread over sockets from [`bind`] (in port order from the first
/// port of the range). It runs until the process ends.
pub fn spawn(
    relay: SharedRelay,
    sockets: Vec<StdSocket>,
) -> io::Result<(std::thread::JoinHandle<()>, Arc<ShellStats>)> {
    let first = relay.lock().settings().ports.0;
    let stats = Arc::new(ShellStats::default());
    let shell_stats = stats.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tokio_sockets = Vec::with_capacity(sockets.len());
                for s in sockets {
                    match UdpSocket::from_std(s) {
                        Ok(s) => tokio_sockets.push(s),
                        Err(e) => {
                            tracing::error!(error = %e, "relay socket not registered; relay off");
                            return;
                        }
                    }
                }
                let sockets: Arc<Vec<UdpSocket>> = Arc::new(tokio_sockets);
                for i in 0..sockets.len() {
                    let port = first + i as u16;
                    tokio::spawn(receive(
                        relay.clone(),
                        sockets.clone(),
                        (first, port),
                        shell_stats.clone(),
                    ));
                }
                let mut tick = tokio::time::interval(EXPIRY_TICK);
                loop {
                    tick.tick().await;
                    let expired = relay.lock().handle_timeout(Instant::now());
                    if expired > 0 {
                        tracing::debug!(expired, "relay calls freed after inactivity");
                    }
                }
            });
        })?;
    Ok((handle, stats))
}

/// The receive loop of one port.
async fn receive(
    relay: SharedRelay,
    sockets: Arc<Vec<UdpSocket>>,
    (first, port): (u16, u16),
    stats: Arc<ShellStats>,
) {
    let me = &sockets[usize::from(port - first)];
    let mut buf = vec![0u8; BUFFER];
    loop {
        // ICMP errors of earlier sends (Linux reports them on the next receive):
        // nothing to do but go on.
        let Ok((n, source)) = me.recv_from(&mut buf).await else {
            continue;
        };
        if n == BUFFER {
            stats.oversize.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let verdict = relay
            .lock()
            .handle_datagram(Instant::now(), port, source, &buf[..n]);
        let sent = match verdict {
            Verdict::Forward { from, to } => sockets
                .get(usize::from(from.wrapping_sub(first)))
                .map(|s| s.try_send_to(&buf[..n], to)),
            Verdict::Answer { from, to, data } => sockets
                .get(usize::from(from.wrapping_sub(first)))
                .map(|s| s.try_send_to(&data, to)),
            Verdict::Drop(_) => None,
        };
        if matches!(sent, Some(Err(_))) {
            stats.send_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
