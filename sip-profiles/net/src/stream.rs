//! TCP: accepted and outgoing connections in one table keyed by the peer's address, so
//! a response or a request towards a peer reuses its open connection (RFC 3261 §18.2.2,
//! §18.3). Each connection has a reader that frames messages by Content-Length and a
//! writer fed by a bounded queue; a connection idle for `tcp_idle` is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sip_core::message::{skip_keepalives, stream_frame};
use sip_core::transport::{Received, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::{NetConfig, NetStats};

/// Messages queued towards one connection before further ones are dropped.
const WRITE_QUEUE: usize = 1024;

/// The set of TCP listeners and connections; cheap to clone.
#[derive(Clone)]
pub struct StreamSet {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NetConfig,
    tx: mpsc::Sender<Received>,
    stats: Arc<NetStats>,
    conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    open: AtomicUsize,
}

impl StreamSet {
    pub(crate) fn new(cfg: NetConfig, tx: mpsc::Sender<Received>, stats: Arc<NetStats>) -> Self {
        let inner = Inner {
            cfg,
            tx,
            stats,
            conns: Mutex::default(),
            open: AtomicUsize::new(0),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) async fn listen(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let set = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "tcp accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if set.inner.open.load(Ordering::Relaxed) >= set.inner.cfg.tcp_max_connections {
                    NetStats::bump(&set.inner.stats.dropped_input);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
                set.lock().insert(peer, writer_tx.clone());
                let (r, w) = stream.into_split();
                set.spawn_connection(local, peer, r, w, writer_tx, writer_rx);
            }
        });
        Ok(local)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, mpsc::Sender<Bytes>>> {
        // A poisoned lock only means a task panicked while holding it; the map is still valid.
        self.inner
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `data` on the connection to `dest`, opening one if there is none.
    pub(crate) fn send(&self, local: SocketAddr, dest: SocketAddr, data: Bytes) {
        let mut conns = self.lock();
        if let Some(w) = conns.get(&dest) {
            match w.try_send(data) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    NetStats::bump(&self.inner.stats.send_errors);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    conns.remove(&dest);
                    drop(conns);
                    return self.connect(local, dest, d);
                }
            }
        }
        drop(conns);
        self.connect(local, dest, data);
    }

    fn connect(&self, local: SocketAddr, dest: SocketAddr, first: Bytes) {
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
        let _ = writer_tx.try_send(first);
        self.lock().insert(dest, writer_tx.clone());
        let set = self.clone();
        tokio::spawn(async move {
            match TcpStream::connect(dest).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    set.spawn_connection(local, dest, r, w, writer_tx, writer_rx);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "tcp connect failed");
                    NetStats::bump(&set.inner.stats.send_errors);
                    set.forget(dest, &writer_tx);
                }
            }
        });
    }

    /// Removes the table entry for `peer` if it is still this connection's.
    fn forget(&self, peer: SocketAddr, mine: &mpsc::Sender<Bytes>) {
        let mut conns = self.lock();
        if conns.get(&peer).is_some_and(|w| w.same_channel(mine)) {
            conns.remove(&peer);
        }
    }

    fn spawn_connection(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        r: OwnedReadHalf,
        mut w: OwnedWriteHalf,
        writer_tx: mpsc::Sender<Bytes>,
        mut writer_rx: mpsc::Receiver<Bytes>,
    ) {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            while let Some(data) = writer_rx.recv().await {
                if w.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
        let set = self.clone();
        tokio::spawn(async move {
            if let Err(why) = set.read_loop(local, peer, r).await {
                tracing::debug!(%why, "tcp connection closed");
            }
            set.forget(peer, &writer_tx);
            set.inner.open.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn read_loop(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        mut r: OwnedReadHalf,
    ) -> Result<(), &'static str> {
        let mut buf = BytesMut::with_capacity(8192);
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
                let _ = buf.split_to(skip);
                match stream_frame(&buf) {
                    Ok(Some(len)) => {
                        let data = buf.split_to(len).freeze();
                        let msg = Received {
                            transport: Transport::Tcp,
                            local,
                            peer,
                            data,
                        };
                        if self.inner.tx.send(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        NetStats::bump(&self.inner.stats.framing_errors);
                        return Err("framing error");
                    }
                }
            }
        }
    }
}
