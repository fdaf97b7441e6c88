//! The async shell around the sans-IO engines: UDP and TCP listeners on tokio, stream
//! framing by Content-Length (RFC 3261 §18.3), connection reuse (responses and requests
//! to a peer go over its open connection), idle close, and the driver loop that feeds an
//! [`Engine`] with received bytes and timer expiries and sends what it asks to send.
//!
//! Nothing here understands SIP beyond framing: protocol decisions live in the engines.

mod driver;
mod stream;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sip_core::transport::{Received, Transmit, Transport};
use tokio::sync::mpsc;

pub use driver::{Engine, run};
pub use stream::StreamSet;

/// Where to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Transport tuning.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A TCP connection with no traffic for this long is closed.
    pub tcp_idle: Duration,
    /// Most simultaneous TCP connections; more are refused.
    pub tcp_max_connections: usize,
    /// Depth of the queue between sockets and the engine; beyond it input is dropped and counted.
    pub queue_depth: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            tcp_idle: Duration::from_mins(10),
            tcp_max_connections: 10_000,
            queue_depth: 16_384,
        }
    }
}

/// Counters of what the shell dropped (bad framing, full queues, send errors).
#[derive(Debug, Default)]
pub struct NetStats {
    pub dropped_input: AtomicU64,
    pub framing_errors: AtomicU64,
    pub send_errors: AtomicU64,
}

impl NetStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The bound sockets: an inbound queue and a way to send.
pub struct Network {
    pub inbound: mpsc::Receiver<Received>,
    pub sender: Sender,
    /// Addresses actually bound (port 0 resolved), in the order given.
    pub bound: Vec<Listen>,
}

/// Sends transmits; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    udp: Arc<Vec<(SocketAddr, Arc<tokio::net::UdpSocket>)>>,
    tcp: StreamSet,
    pub stats: Arc<NetStats>,
}

/// Transport-shell errors: binding failed (local misconfiguration) or I/O.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind {transport:?} {addr}: {source}")]
    Bind {
        transport: Transport,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Network {
    /// Binds every listener and starts the receive tasks. Must run inside a tokio runtime.
    pub async fn bind(listen: &[Listen], cfg: NetConfig) -> Result<Self, NetError> {
        let (tx, rx) = mpsc::channel(cfg.queue_depth);
        let stats = Arc::new(NetStats::default());
        let mut bound = Vec::new();
        let mut udp = Vec::new();
        let tcp = StreamSet::new(cfg.clone(), tx.clone(), stats.clone());
        for l in listen {
            let err = |source| NetError::Bind {
                transport: l.transport,
                addr: l.addr,
                source,
            };
            match l.transport {
                Transport::Udp => {
                    let sock = Arc::new(udp::bind(l.addr).map_err(err)?);
                    let local = sock.local_addr().map_err(err)?;
                    udp::spawn_receiver(sock.clone(), local, tx.clone(), stats.clone());
                    udp.push((local, sock));
                    bound.push(Listen {
                        transport: Transport::Udp,
                        addr: local,
                    });
                }
                Transport::Tcp => {
                    let local = tcp.listen(l.addr).await.map_err(err)?;
                    bound.push(Listen {
                        transport: Transport::Tcp,
                        addr: local,
                    });
                }
                Transport::Tls => {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "TLS listener not configured",
                    )));
                }
            }
        }
        Ok(Self {
            inbound: rx,
            sender: Sender {
                udp: Arc::new(udp),
                tcp,
                stats,
            },
            bound,
        })
    }
}

impl Sender {
    /// Sends one message. UDP goes out of the socket bound to `t.local` (or the first one
    /// of the same address family); TCP reuses the connection to `t.dest` or opens one.
    pub async fn send(&self, t: Transmit) {
        match t.transport {
            Transport::Udp => {
                let sock = self.udp.iter().find(|(a, _)| *a == t.local).or_else(|| {
                    self.udp
                        .iter()
                        .find(|(a, _)| a.is_ipv4() == t.dest.is_ipv4())
                });
                let Some((_, sock)) = sock else {
                    NetStats::bump(&self.stats.send_errors);
                    return;
                };
                let sent = match sock.try_send_to(&t.data, t.dest) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        sock.send_to(&t.data, t.dest).await
                    }
                    r => r,
                };
                if let Err(e) = sent {
                    NetStats::bump(&self.stats.send_errors);
                    tracing::debug!(error = %e, "udp send failed");
                }
            }
            Transport::Tcp => self.tcp.send(t.local, t.dest, t.data),
            Transport::Tls => NetStats::bump(&self.stats.send_errors),
        }
    }
}
