//! The admin API's listener: at most [`MAX_CONNECTIONS`] connections at once (more
//! wait in the kernel's backlog), each closed after [`IDLE`] without a byte read or
//! written, so a peer that opens connections and sends nothing holds neither memory
//! nor a task for long.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection without traffic this long is closed (long enough for a large import
/// to be answered).
pub const IDLE: Duration = Duration::from_mins(2);

/// A TCP listener with a connection cap.
pub struct Capped {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl Capped {
    /// [`MAX_CONNECTIONS`] and [`IDLE`].
    pub fn new(listener: TcpListener) -> Self {
        Self::with_limits(listener, MAX_CONNECTIONS, IDLE)
    }

    pub fn with_limits(listener: TcpListener, connections: usize, idle: Duration) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(connections)),
            idle,
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("admin connection slots");
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let io = Guarded {
                        stream,
                        idle: self.idle,
                        deadline: Box::pin(tokio::time::sleep(self.idle)),
                        _slot: permit,
                    };
                    return (io, addr);
                }
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection holding its slot until dropped.
pub struct Guarded {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    /// Progress: the idle deadline moves on.
    fn progressed(&mut self) {
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    /// Nothing moved: `TimedOut` once the idle deadline has passed.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                me.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => me.stalled(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                me.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => me.stalled(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;

    /// The cap holds: the next connection is accepted only when one ends; an idle
    /// connection ends by itself.
    #[tokio::test]
    async fn connections_are_capped_and_idle_ones_close() {
        use tokio::io::AsyncReadExt;
        const CAP: usize = 2;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut capped = Capped::with_limits(listener, CAP, Duration::from_millis(300));
        let mut clients = Vec::new();
        for _ in 0..=CAP {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut held = Vec::new();
        for _ in 0..CAP {
            held.push(capped.accept().await.0);
        }
        let over = tokio::time::timeout(Duration::from_millis(500), capped.accept()).await;
        assert!(over.is_err(), "a connection past the cap was accepted");
        let mut first = held.remove(0);
        let mut buf = [0u8; 8];
        let idle = first.read(&mut buf).await;
        assert_eq!(idle.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(first);
        let next = tokio::time::timeout(Duration::from_secs(5), capped.accept()).await;
        assert!(next.is_ok(), "the freed slot takes the waiting connection");
    }
}
