//! Stream transports, TCP and TLS: accepted and outgoing connections in one table keyed
//! by transport and peer address, so a response or a request towards a peer reuses its
//! open connection (RFC 3261 §18.2.2, §18.3; RFC 5626 §5.3 calls this reuse a flow).
//! Each connection has a reader that frames messages by Content-Length and a writer fed
//! by a bounded queue; a connection idle for `tcp_idle` is closed. TLS (RFC 3261 §26.2)
//! is the same machinery with a handshake between the TCP connect or accept and the
//! first byte of SIP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sip_core::message::{ParseError, skip_keepalives, stream_frame, stream_head};
use sip_core::transport::{Received, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Inbound;
use crate::tls::TlsContext;
use crate::{NetConfig, NetStats};

/// Messages queued towards one connection before further ones are dropped.
const WRITE_QUEUE: usize = 1024;

/// A TLS handshake that has not finished by then is abandoned, so that silent peers
/// cannot hold connection slots.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a message whose end cannot be found (an invalid Content-Length), the connection
/// is read and discarded for this long before it is closed, so that the engine's answer
/// to the message's header section can still be written on it.
const LINGER: Duration = Duration::from_secs(2);

/// A connection table key: a TCP and a TLS connection to one address are two flows.
type FlowKey = (Transport, SocketAddr);

/// The set of stream listeners and connections; cheap to clone.
#[derive(Clone)]
pub struct StreamSet {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NetConfig,
    tls: Option<TlsContext>,
    tx: Inbound,
    stats: Arc<NetStats>,
    conns: Mutex<HashMap<FlowKey, mpsc::Sender<Bytes>>>,
    open: AtomicUsize,
}

/// One counted connection slot; released when the connection's reader ends.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamSet {
    pub(crate) fn new(
        cfg: NetConfig,
        tls: Option<TlsContext>,
        tx: Inbound,
        stats: Arc<NetStats>,
    ) -> Self {
        let inner = Inner {
            cfg,
            tls,
            tx,
            stats,
            conns: Mutex::default(),
            open: AtomicUsize::new(0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    fn slot(&self) -> Slot {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        Slot(self.inner.clone())
    }

    /// Listens for `transport` (TCP or TLS) on `addr`. The caller checked that TLS has a
    /// server identity.
    pub(crate) async fn listen(
        &self,
        transport: Transport,
        addr: SocketAddr,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let set = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if set.inner.open.load(Ordering::Relaxed) >= set.inner.cfg.tcp_max_connections {
                    NetStats::bump(&set.inner.stats.dropped_input);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let slot = set.slot();
                if transport == Transport::Tls {
                    set.accept_tls(local, peer, stream, slot);
                } else {
                    let (r, w) = stream.into_split();
                    set.register(transport, local, peer, r, w, slot);
                }
            }
        });
        Ok(local)
    }

    /// Runs the server handshake off the accept loop; the flow enters the table only
    /// once the peer has completed it.
    fn accept_tls(&self, local: SocketAddr, peer: SocketAddr, stream: TcpStream, slot: Slot) {
        let Some(acceptor) = self.inner.tls.as_ref().and_then(TlsContext::acceptor) else {
            return;
        };
        let set = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let (r, w) = tokio::io::split(tls);
                    set.register(Transport::Tls, local, peer, r, w, slot);
                }
                Ok(Err(e)) => {
                    NetStats::bump(&set.inner.stats.handshake_errors);
                    tracing::debug!(error = %e, "tls accept failed");
                }
                Err(_) => {
                    NetStats::bump(&set.inner.stats.handshake_errors);
                    tracing::debug!("tls accept timed out");
                }
            }
        });
    }

    fn register<R, W>(
        &self,
        transport: Transport,
        local: SocketAddr,
        peer: SocketAddr,
        r: R,
        w: W,
        slot: Slot,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
        self.lock().insert((transport, peer), writer_tx.clone());
        self.spawn_connection(transport, local, peer, r, w, writer_tx, writer_rx, slot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowKey, mpsc::Sender<Bytes>>> {
        // A poisoned lock only means a task panicked while holding it; the map is still valid.
        self.inner
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a connection of `transport` to `peer` is open (or being opened).
    pub(crate) fn has_connection(&self, transport: Transport, peer: SocketAddr) -> bool {
        self.lock()
            .get(&(transport, peer))
            .is_some_and(|w| !w.is_closed())
    }

    /// Queues `data` on the `transport` connection to `dest`, opening one if there is none.
    pub(crate) fn send(
        &self,
        transport: Transport,
        local: SocketAddr,
        dest: SocketAddr,
        data: Bytes,
    ) {
        let key = (transport, dest);
        let mut conns = self.lock();
        if let Some(w) = conns.get(&key) {
            match w.try_send(data) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    NetStats::bump(&self.inner.stats.send_errors);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    conns.remove(&key);
                    drop(conns);
                    return self.connect(transport, local, dest, d);
                }
            }
        }
        drop(conns);
        self.connect(transport, local, dest, data);
    }

    fn connect(&self, transport: Transport, local: SocketAddr, dest: SocketAddr, first: Bytes) {
        let connector = if transport == Transport::Tls {
            let Some(tls) = &self.inner.tls else {
                NetStats::bump(&self.inner.stats.send_errors);
                tracing::debug!("tls send without tls settings");
                return;
            };
            Some(tls.connector())
        } else {
            None
        };
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
        let _ = writer_tx.try_send(first);
        self.lock().insert((transport, dest), writer_tx.clone());
        let set = self.clone();
        let slot = self.slot();
        tokio::spawn(async move {
            let stream = match TcpStream::connect(dest).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "tcp connect failed");
                    NetStats::bump(&set.inner.stats.send_errors);
                    set.forget((transport, dest), &writer_tx);
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some(connector) = connector else {
                let (r, w) = stream.into_split();
                set.spawn_connection(transport, local, dest, r, w, writer_tx, writer_rx, slot);
                return;
            };
            // RFC 5922 §7.2 wants the SIP domain as the reference identity; a transmit
            // carries only an address, so the certificate must name that address.
            let name = rustls_pki_types::ServerName::IpAddress(dest.ip().into());
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
                Ok(Ok(tls)) => {
                    let (r, w) = tokio::io::split(tls);
                    set.spawn_connection(transport, local, dest, r, w, writer_tx, writer_rx, slot);
                }
                failed => {
                    if let Ok(Err(e)) = failed {
                        tracing::debug!(error = %e, "tls connect failed");
                    }
                    NetStats::bump(&set.inner.stats.handshake_errors);
                    NetStats::bump(&set.inner.stats.send_errors);
                    set.forget((transport, dest), &writer_tx);
                }
            }
        });
    }

    /// Removes the table entry for `key` if it is still this connection's.
    fn forget(&self, key: FlowKey, mine: &mpsc::Sender<Bytes>) {
        let mut conns = self.lock();
        if conns.get(&key).is_some_and(|w| w.same_channel(mine)) {
            conns.remove(&key);
        }
    }

    #[allow(clippy::too_many_arguments)] // one connection's parts, handed over once
    fn spawn_connection<R, W>(
        &self,
        transport: Transport,
        local: SocketAddr,
        peer: SocketAddr,
        r: R,
        mut w: W,
        writer_tx: mpsc::Sender<Bytes>,
        mut writer_rx: mpsc::Receiver<Bytes>,
        slot: Slot,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            'conn: while let Some(data) = writer_rx.recv().await {
                if w.write_all(&data).await.is_err() {
                    break;
                }
                // Write out whatever else is queued, then flush once (a TLS record
                // layer may hold bytes until flushed).
                while let Ok(more) = writer_rx.try_recv() {
                    if w.write_all(&more).await.is_err() {
                        break 'conn;
                    }
                }
                if w.flush().await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
        let set = self.clone();
        tokio::spawn(async move {
            if let Err(why) = set.read_loop(transport, local, peer, r, &writer_tx).await {
                tracing::debug!(%why, ?transport, "connection closed");
            }
            set.forget((transport, peer), &writer_tx);
            drop(slot);
        });
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        transport: Transport,
        local: SocketAddr,
        peer: SocketAddr,
        mut r: R,
        writer: &mpsc::Sender<Bytes>,
    ) -> Result<(), &'static str> {
        let mut buf = BytesMut::with_capacity(8192);
        // Line feeds seen since the last message or pong, to spot a double-CRLF ping
        // even when it arrives in two reads.
        let mut keepalive_lfs = 0u8;
        loop {
            let read = tokio::time::timeout(self.inner.cfg.tcp_idle, r.read_buf(&mut buf)).await;
            match read {
                Err(_) => return Err("idle"),
                Ok(Err(_)) => return Err("read error"),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
            }
            loop {
                let skip = skip_keepalives(&buf);
                for &b in &buf.split_to(skip)[..] {
                    if b == b'\n' {
                        keepalive_lfs += 1;
                    }
                    if keepalive_lfs == 2 {
                        // RFC 5626 §3.5.1: a CRLFCRLF ping is answered with a CRLF pong.
                        keepalive_lfs = 0;
                        let _ = writer.try_send(Bytes::from_static(b"\r\n"));
                    }
                }
                match stream_frame(&buf) {
                    Ok(Some(len)) => {
                        keepalive_lfs = 0;
                        let data = buf.split_to(len).freeze();
                        let msg = Received {
                            transport,
                            local,
                            peer,
                            data,
                        };
                        if self.inner.tx.send(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        NetStats::bump(&self.inner.stats.framing_errors);
                        // RFC 3261 §18.3, RFC 4475 `ncl`, `mcl01`: the stream is out of
                        // step, but the header section of a message whose length is
                        // unreadable may still be answered (400).
                        if let (ParseError::BadHeader(_), Some(head)) = (e, stream_head(&buf)) {
                            let data = buf.split_to(head).freeze();
                            let msg = Received {
                                transport,
                                local,
                                peer,
                                data,
                            };
                            if self.inner.tx.send(msg).await.is_ok() {
                                linger(&mut r).await;
                            }
                        }
                        return Err("framing error");
                    }
                }
            }
        }
    }
}

/// Reads and discards until the peer closes or [`LINGER`] has passed.
async fn linger<R: AsyncRead + Unpin>(r: &mut R) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
