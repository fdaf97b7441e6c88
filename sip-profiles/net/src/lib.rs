//! The async shell around the sans-IO engines: UDP, TCP and TLS listeners on tokio,
//! stream framing by Content-Length (RFC 3261 §18.3), connection reuse, idle close, and
//! the driver loop that feeds an [`Engine`] with received bytes and timer expiries and
//! sends what it asks to send.
//!
//! # I/O contract
//!
//! - **In**: [`Network::inbound`] yields one [`Received`] per UDP datagram or per framed
//!   stream message, tagged with its transport (`Udp`, `Tcp`, `Tls`), the local address
//!   of the listener (or, for a connection we opened, the `local` of the transmit that
//!   opened it) and the peer's address. Stream bytes are cut by Content-Length; CRLF
//!   keep-alives between messages are dropped and a double-CRLF ping is answered with a
//!   CRLF pong (RFC 5626 §3.5.1). A stream that cannot be framed is closed and counted
//!   in [`NetStats::framing_errors`]. Nothing is parsed beyond framing.
//! - **Out**: [`Sender::send`] takes a [`Transmit`]. On a stream transport an open
//!   connection of that transport to `dest` is reused — an accepted one included, so a
//!   response goes back over the connection its request came on (RFC 3261 §18.2.2) —
//!   and otherwise one is opened. The connection table is keyed by (transport, peer
//!   address): a TCP and a TLS connection to one address are distinct flows
//!   (RFC 5626 §5.3). [`Sender::has_connection`] tells whether such a flow is open.
//! - **Failures** are never returned to the engine: a message that cannot be sent or
//!   queued is counted in [`NetStats`] and logged at debug level, as a lost datagram would
//!   be; the transaction layer's timers handle the rest (RFC 3261 §17.1.4).
//! - **TLS** (RFC 3261 §26.2) needs [`NetConfig::tls`]: a listener presents the
//!   configured certificate; an outgoing connection verifies the server's certificate
//!   against the configured trust anchors for the destination IP address (see
//!   [`TlsSettings`]). [`self_signed`] makes a certificate for labs.
//!
//! Nothing here understands SIP beyond framing: protocol decisions live in the engines.

mod driver;
mod stream;
mod tls;
mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sip_core::transport::{Received, Transmit, Transport};
use tokio::sync::mpsc;

pub use driver::{Engine, run, run_woken};
pub use tls::{TlsSettings, load_tls, self_signed};

use stream::StreamSet;
use tls::TlsContext;

/// Where to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// Transport tuning.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A TCP or TLS connection that receives nothing for this long is closed.
    pub tcp_idle: Duration,
    /// Most simultaneous TCP and TLS connections; more incoming ones are refused.
    pub tcp_max_connections: usize,
    /// Depth of the queue between sockets and the engine; beyond it input is dropped and counted.
    pub queue_depth: usize,
    /// TLS certificate and trust; `None` refuses TLS listeners and TLS sends.
    pub tls: Option<TlsSettings>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            tcp_idle: Duration::from_mins(10),
            tcp_max_connections: 10_000,
            queue_depth: 16_384,
            tls: None,
        }
    }
}

/// Counters of what the shell dropped (bad framing, full queues, send errors, failed
/// TLS handshakes).
#[derive(Debug, Default)]
pub struct NetStats {
    /// Input dropped: engine queue full, or a connection refused at the limit.
    pub dropped_input: AtomicU64,
    /// Stream connections closed because their bytes could not be framed.
    pub framing_errors: AtomicU64,
    /// Messages not sent: no socket, connect or handshake failed, writer queue full.
    pub send_errors: AtomicU64,
    /// TLS handshakes that failed or timed out, incoming and outgoing.
    pub handshake_errors: AtomicU64,
    /// Microseconds the last UDP datagram read had waited in its socket's receive
    /// queue (kernel receive timestamp to the read; [`NetStats::input_wait`]).
    pub input_wait_us: AtomicU64,
}

impl NetStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// How long the last UDP datagram read had waited in the kernel's receive queue.
    /// The queue is first in, first out, so this is the age of the oldest input then
    /// waiting: the queueing delay in front of the engine (overload control's signal).
    /// Zero when the kernel gives no receive timestamps.
    pub fn input_wait(&self) -> Duration {
        Duration::from_micros(self.input_wait_us.load(Ordering::Relaxed))
    }
}

/// Picks the engine shard of a received message: given by the engine's crate (this
/// crate reads no SIP). An index past the last shard means the last one.
pub type Steer = Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// Where received messages go: one bounded queue per engine shard, picked by a
/// [`Steer`] (so every socket reader hands each message to its shard directly).
#[derive(Clone)]
pub(crate) struct Inbound {
    queues: Arc<[mpsc::Sender<Received>]>,
    steer: Option<Steer>,
}

impl Inbound {
    fn queue(&self, data: &[u8]) -> &mpsc::Sender<Received> {
        let last = self.queues.len() - 1;
        let i = match &self.steer {
            Some(s) if last > 0 => s(data).min(last),
            _ => 0,
        };
        &self.queues[i]
    }

    pub(crate) fn try_send(
        &self,
        msg: Received,
    ) -> Result<(), mpsc::error::TrySendError<Received>> {
        self.queue(&msg.data).try_send(msg)
    }

    pub(crate) async fn send(&self, msg: Received) -> Result<(), mpsc::error::SendError<Received>> {
        self.queue(&msg.data).send(msg).await
    }
}

/// The part of a sharded [`Network`] that another engine shard takes to its own
/// thread: its inbound queue, and clones of the UDP sockets to read and send on
/// (registered with that thread's runtime by [`ShardNet::start`]). TCP and TLS
/// connections are shared: their readers steer into every shard's queue.
pub struct ShardNet {
    inbound: mpsc::Receiver<Received>,
    udp: Vec<(SocketAddr, std::net::UdpSocket)>,
    to_shards: Inbound,
    streams: StreamSet,
    stats: Arc<NetStats>,
    bound: Vec<Listen>,
}

impl ShardNet {
    /// This shard's [`Network`]: its UDP readers started on the running runtime (each
    /// reads the shared sockets and steers), its queue, a sender of its own.
    pub fn start(self) -> Result<Network, NetError> {
        let mut udp = Vec::new();
        for (local, sock) in self.udp {
            let err = |source| NetError::Bind {
                transport: Transport::Udp,
                addr: local,
                source,
            };
            let sock = Arc::new(tokio::net::UdpSocket::from_std(sock).map_err(err)?);
            udp::spawn_receiver(
                sock.clone(),
                local,
                self.to_shards.clone(),
                self.stats.clone(),
            );
            udp.push((local, sock));
        }
        Ok(Network {
            inbound: self.inbound,
            sender: Sender {
                udp: Arc::new(udp),
                streams: self.streams,
                stats: self.stats,
            },
            bound: self.bound,
        })
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
    streams: StreamSet,
    pub stats: Arc<NetStats>,
}

/// Transport-shell errors, all local: binding failed, or TLS material is missing,
/// unreadable or inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot bind {transport:?} {addr}: {source}")]
    Bind {
        transport: Transport,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on TLS {addr}: no certificate configured")]
    TlsNotConfigured { addr: SocketAddr },
    #[error("cannot read PEM file {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    CertGen(#[from] rcgen::Error),
}

impl Network {
    /// Binds every listener and starts the receive tasks. Must run inside a tokio runtime.
    pub async fn bind(listen: &[Listen], cfg: NetConfig) -> Result<Self, NetError> {
        let (net, _) = Self::bind_sharded(listen, cfg, 1, None).await?;
        Ok(net)
    }

    /// Binds every listener for `shards` engine shards: this runtime's [`Network`] for
    /// the first, a [`ShardNet`] for each other one to start on its own thread. Every
    /// socket reader (one per UDP socket and shard, one per stream connection) hands a
    /// message to the queue of the shard `steer` names; with one shard, `steer` is
    /// not consulted.
    pub async fn bind_sharded(
        listen: &[Listen],
        cfg: NetConfig,
        shards: usize,
        steer: Option<Steer>,
    ) -> Result<(Self, Vec<ShardNet>), NetError> {
        let (mut queues, mut receivers) = (Vec::new(), Vec::new());
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(cfg.queue_depth);
            queues.push(tx);
            receivers.push(rx);
        }
        let tx = Inbound {
            queues: queues.into(),
            steer,
        };
        let mut receivers = receivers.into_iter();
        let rx = receivers.next().expect("at least one shard");
        let mut clones: Vec<Vec<(SocketAddr, std::net::UdpSocket)>> =
            (1..shards.max(1)).map(|_| Vec::new()).collect();
        let stats = Arc::new(NetStats::default());
        let mut bound = Vec::new();
        let mut udp = Vec::new();
        let tls = cfg.tls.as_ref().map(TlsContext::new).transpose()?;
        let tls_listener = tls.as_ref().is_some_and(|t| t.acceptor().is_some());
        let streams = StreamSet::new(cfg.clone(), tls, tx.clone(), stats.clone());
        for l in listen {
            let err = |source| NetError::Bind {
                transport: l.transport,
                addr: l.addr,
                source,
            };
            match l.transport {
                Transport::Udp => {
                    let std_sock = udp::bind(l.addr).map_err(err)?;
                    let local = std_sock.local_addr().map_err(err)?;
                    for c in &mut clones {
                        c.push((local, std_sock.try_clone().map_err(err)?));
                    }
                    let sock = Arc::new(tokio::net::UdpSocket::from_std(std_sock).map_err(err)?);
                    udp::spawn_receiver(sock.clone(), local, tx.clone(), stats.clone());
                    udp.push((local, sock));
                    bound.push(Listen {
                        transport: Transport::Udp,
                        addr: local,
                    });
                }
                Transport::Tls if !tls_listener => {
                    return Err(NetError::TlsNotConfigured { addr: l.addr });
                }
                Transport::Tcp | Transport::Tls => {
                    let local = streams.listen(l.transport, l.addr).await.map_err(err)?;
                    bound.push(Listen {
                        transport: l.transport,
                        addr: local,
                    });
                }
            }
        }
        let others = receivers
            .zip(clones)
            .map(|(inbound, udp)| ShardNet {
                inbound,
                udp,
                to_shards: tx.clone(),
                streams: streams.clone(),
                stats: stats.clone(),
                bound: bound.clone(),
            })
            .collect();
        let net = Self {
            inbound: rx,
            sender: Sender {
                udp: Arc::new(udp),
                streams,
                stats,
            },
            bound,
        };
        Ok((net, others))
    }
}

impl Sender {
    /// Sends one message. UDP goes out of the socket bound to `t.local` (or the first one
    /// of the same address family); TCP and TLS reuse the connection of that transport
    /// to `t.dest` or open one (RFC 3261 §18.2.2, §26.2).
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
            Transport::Tcp | Transport::Tls => {
                self.streams.send(t.transport, t.local, t.dest, t.data);
            }
        }
    }

    /// Whether a `transport` connection to `addr` is open or being opened, so that a
    /// message sent there now reuses that flow (RFC 5626 §5.3). Always `false` for UDP.
    pub fn has_connection(&self, transport: Transport, addr: SocketAddr) -> bool {
        transport.is_reliable() && self.streams.has_connection(transport, addr)
    }
}
