//! The tokio shell of a call's video: one UDP socket per side (the address in our
//! `m=video`, RFC 3264), which latches to our relay leg (docs/profile.md "Latch"),
//! then sends the split stream (caller) or receives both paths (callee).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Clip;
use super::join::{JoinStats, Joiner};
use super::latch::{self, Leg};
use super::report::ReceptionReport;
use super::split::{Path, SplitStats, Splitter};

/// Latch retransmission (docs/profile.md: "e.g. every 200 ms, a few times").
const LATCH_EVERY: Duration = Duration::from_millis(200);
const LATCH_TRIES: u32 = 25;
/// `--fast`: packets sent back to back before a 1 ms pause (a bounded rate, so that a
/// loopback receiver's socket buffer is not overrun).
const FAST_BURST: u64 = 4;
/// After the last packet, how long the sender waits before it reports done (the
/// relayed packets' extra hop and the receiver's merge).
const DRAIN: Duration = Duration::from_secs(1);

/// Our relay leg: where to latch, with which token, as which leg.
#[derive(Clone)]
pub struct RelayLeg {
    pub addr: SocketAddr,
    pub token: String,
    pub leg: Leg,
}

impl std::fmt::Debug for RelayLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("RelayLeg")
            .field("leg", &self.leg)
            .finish_non_exhaustive()
    }
}

/// A bound video socket, before the call is answered.
pub struct VideoSocket {
    socket: UdpSocket,
    pub local: SocketAddr,
}

impl VideoSocket {
    pub async fn bind(ip: IpAddr) -> std::io::Result<VideoSocket> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        Ok(VideoSocket { socket, local })
    }

    /// Caller: latch (if relayed), then send `clip` through `splitter`.
    pub fn send(
        self,
        clip: Arc<Clip>,
        splitter: Splitter,
        direct: SocketAddr,
        relay: Option<RelayLeg>,
        fast: bool,
    ) -> JoinHandle<SendReport> {
        tokio::spawn(send(self.socket, clip, splitter, direct, relay, fast))
    }

    /// Latches `relay` and waits for the answer, at most `tries` × 200 ms.
    pub async fn latch(&self, relay: &RelayLeg, tries: u32) -> bool {
        latch_and_wait(&self.socket, relay, tries).await
    }

    /// Callee: latch (if relayed and not `latched` yet) and receive until stopped.
    pub fn receive(self, joiner: Joiner, relay: Option<RelayLeg>, latched: bool) -> ReceiveHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(receive(self.socket, joiner, relay, latched, stopped));
        ReceiveHandle { stop, task }
    }
}

/// What the sender did.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    pub stats: SplitStats,
    /// `None`: not relayed; else whether the relay answered our latch.
    pub latched: Option<bool>,
    pub srtp: bool,
    pub send_errors: u64,
}

async fn send_latch(socket: &UdpSocket, relay: &RelayLeg, counter: u64) {
    let d = latch::latch(&relay.token, relay.leg, relay.addr.port(), counter);
    let _ = socket.send_to(&d, relay.addr).await;
}

/// Latches and waits for the relay's answer (bounded).
async fn latch_and_wait(socket: &UdpSocket, relay: &RelayLeg, tries: u32) -> bool {
    let mut buf = vec![0u8; 2048];
    for _ in 0..tries {
        send_latch(socket, relay, 1).await;
        let until = tokio::time::Instant::now() + LATCH_EVERY;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await
        {
            if from == relay.addr
                && latch::is_latched(&buf[..n], &relay.token, relay.leg, relay.addr.port(), 1)
            {
                return true;
            }
        }
    }
    false
}

async fn send(
    socket: UdpSocket,
    clip: Arc<Clip>,
    mut splitter: Splitter,
    direct: SocketAddr,
    relay: Option<RelayLeg>,
    fast: bool,
) -> SendReport {
    let mut report = SendReport {
        srtp: splitter.protected(),
        ..SendReport::default()
    };
    if let Some(r) = &relay {
        let ok = latch_and_wait(&socket, r, LATCH_TRIES).await;
        report.latched = Some(ok);
        if !ok {
            // I-packets still go to the relay (never to the direct path): the
            // receiver sees gaps, nothing is leaked.
            tracing::warn!("the media relay did not answer our latch");
        }
    }
    let start = tokio::time::Instant::now();
    let per_picture = Duration::from_secs_f64(1.0 / clip.fps.clamp(1.0, 240.0));
    for p in &clip.payloads {
        if fast {
            if splitter.stats.packets > 0 && splitter.stats.packets.is_multiple_of(FAST_BURST) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            let due = start + per_picture * u32::try_from(p.unit).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due).await;
        }
        let Some((path, datagram)) = splitter.packet(p) else {
            continue;
        };
        let to = match (path, &relay) {
            (Path::Relay, Some(r)) => r.addr,
            _ => direct,
        };
        if socket.send_to(&datagram, to).await.is_err() {
            report.send_errors += 1;
        }
    }
    tokio::time::sleep(DRAIN).await;
    report.stats = splitter.stats;
    report
}

/// A running video receiver.
pub struct ReceiveHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ReceiveReport>,
}

/// What the receiver got.
#[derive(Debug, Clone, Default)]
pub struct ReceiveReport {
    pub stream: Vec<u8>,
    pub stats: JoinStats,
    /// Per-path counts and jitter (RFC 3550 §6.4.1).
    pub reception: ReceptionReport,
    pub latched: Option<bool>,
}

impl ReceiveHandle {
    pub async fn stop(self) -> ReceiveReport {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

async fn receive(
    socket: UdpSocket,
    mut joiner: Joiner,
    relay: Option<RelayLeg>,
    already: bool,
    mut stopped: oneshot::Receiver<()>,
) -> ReceiveReport {
    let mut buf = vec![0u8; 2048];
    let mut latched = relay.as_ref().map(|_| already);
    let mut tries = 0u32;
    let mut next_latch = relay.as_ref().filter(|_| !already).map(|_| Instant::now());
    loop {
        let wake = [joiner.poll_timeout(), next_latch]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => break,
            () = sleep => {
                let now = Instant::now();
                joiner.handle_timeout(now);
                if let (Some(r), Some(at)) = (&relay, next_latch)
                    && at <= now
                {
                    send_latch(&socket, r, 1).await;
                    tries += 1;
                    next_latch = (tries < LATCH_TRIES).then(|| now + LATCH_EVERY);
                }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let data = &buf[..n];
                if let Some(r) = &relay
                    && from == r.addr
                    && latch::looks_like_latch(data)
                {
                    if latch::is_latched(data, &r.token, r.leg, r.addr.port(), 1) {
                        latched = Some(true);
                        next_latch = None;
                    }
                    continue;
                }
                joiner.handle_datagram(Instant::now(), from, data);
            }
        }
    }
    let (stream, stats, reception) = joiner.finish(Instant::now());
    ReceiveReport {
        stream,
        stats,
        reception,
        latched,
    }
}
