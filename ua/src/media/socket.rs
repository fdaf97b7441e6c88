//! The tokio shell of one call's audio: a UDP socket, a 20 ms pacer that sends the
//! file to play (then silence), and a reader that feeds the [`RtpReceiver`]. With
//! keys, every packet goes through the call's [`SrtpSession`] both ways.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::SAMPLE_RATE;
use super::codec::{AudioEncoder, Codec};
use super::rtp::{RtpReceiver, RtpSender};
use super::srtp::SrtpSession;

/// At most this much received audio is kept per call (one hour at 8 kHz).
const MAX_RECORD_SAMPLES: usize = SAMPLE_RATE as usize * 3600;

/// What a call's media did.
#[derive(Debug, Clone, Default)]
pub struct MediaReport {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub dropped: u64,
    /// Received packets refused by SRTP (authentication, replay).
    pub srtp_rejected: u64,
    /// Whether the audio was SRTP.
    pub srtp: bool,
    /// The codec both ways (`None`: the codec could not be set up, nothing was sent).
    pub codec: Option<Codec>,
    /// What was received, at 8 kHz ([`super::codec`]).
    pub samples: Vec<i16>,
}

/// A bound RTP socket waiting for its peer's address.
pub struct MediaSocket {
    socket: UdpSocket,
    pub local: SocketAddr,
}

impl MediaSocket {
    /// Binds an ephemeral UDP port on `ip` (the address our SDP announces).
    pub async fn bind(ip: IpAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        Ok(Self { socket, local })
    }

    /// Starts sending `codec` to `remote` (when known) and receiving it. `play` is a
    /// WAV file (`shell::load_play`) sent once, then silence keeps the stream going.
    /// With `srtp`, packets are protected and unprotected with the call's keys
    /// (RFC 3711; SRTP does not depend on the codec).
    pub fn start_with(
        self,
        remote: Option<SocketAddr>,
        play: Option<Arc<Vec<u8>>>,
        srtp: Option<SrtpSession>,
        codec: Codec,
    ) -> MediaHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(self.socket, remote, play, srtp, codec, stopped));
        MediaHandle { stop, task }
    }
}

/// A running media session.
pub struct MediaHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<MediaReport>,
}

impl MediaHandle {
    /// Stops the session and returns what it did.
    pub async fn stop(self) -> MediaReport {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

async fn run(
    socket: UdpSocket,
    remote: Option<SocketAddr>,
    play: Option<Arc<Vec<u8>>>,
    mut srtp: Option<SrtpSession>,
    codec: Codec,
    mut stopped: oneshot::Receiver<()>,
) -> MediaReport {
    let mut report = MediaReport::default();
    let (mut encoder, mut receiver) = match (
        AudioEncoder::new(codec, play.as_deref().map(Vec::as_slice)),
        RtpReceiver::for_codec(codec, MAX_RECORD_SAMPLES),
    ) {
        (Ok(e), Ok(r)) => (e, r),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot set up the call's audio codec");
            let _ = stopped.await;
            return report;
        }
    };
    report.codec = Some(codec);
    let mut sender = RtpSender::for_codec(&mut rand::rngs::StdRng::from_os_rng(), codec);
    let mut pacer = tokio::time::interval(Duration::from_millis(20));
    pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = pacer.tick() => {
                let Some(remote) = remote else { continue };
                let Ok((frame, ticks)) = encoder.next_frame() else { continue };
                let mut packet = sender.packet_of(&frame, ticks);
                if let Some(s) = srtp.as_mut() {
                    match s.protect(&packet) {
                        Some(p) => packet = p,
                        None => continue,
                    }
                }
                if socket.send_to(&packet, remote).await.is_ok() {
                    report.packets_sent += 1;
                }
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    match srtp.as_mut() {
                        Some(s) => {
                            if let Some(plain) = s.unprotect(&buf[..n]) {
                                receiver.handle_datagram(&plain);
                            }
                        }
                        None => {
                            receiver.handle_datagram(&buf[..n]);
                        }
                    }
                }
            }
        }
    }
    report.packets_received = receiver.packets;
    report.dropped = receiver.dropped;
    report.srtp = srtp.is_some();
    report.srtp_rejected = srtp.map_or(0, |s| s.rejected);
    report.samples = receiver.into_samples();
    report
}
