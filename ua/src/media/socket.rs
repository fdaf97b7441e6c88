//! The tokio shell of one call's audio: a UDP socket, a 20 ms pacer that sends the
//! file to play (then silence), and a reader that feeds the [`RtpReceiver`]. With
//! keys, every packet goes through the call's [`SrtpSession`] both ways. With
//! DTLS-SRTP (RFC 5764) the handshake runs on the same socket first: the reader hands
//! DTLS records (first byte 20..=63, RFC 5764 §5.1.2) to [`dtls::handshake`] and
//! nothing is sent or accepted as media until it has given the SRTP keys.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::SAMPLE_RATE;
use super::codec::{AudioEncoder, Codec};
use super::dtls::handshake::{self, DtlsError, Established, MediaPortConn};
use super::dtls::{self, DtlsCall};
use super::rtp::{RtpReceiver, RtpSender};
use super::srtp::SrtpSession;

/// SRTP packets kept while the DTLS handshake finishes on our side: the peer may
/// have its keys first (the last flight is its own) and send at once.
const EARLY_SRTP: usize = 16;
/// How long the DTLS association may take to close at the end of a call.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

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
    /// DTLS-SRTP: the suite the handshake chose, or why it gave no keys.
    pub dtls: Option<Result<String, String>>,
    /// DTLS records dropped because the handshake's queue was full.
    pub dtls_dropped: u64,
    /// DTLS-SRTP calls: datagrams neither DTLS nor RTP (RFC 7983 §7: STUN, 0..=3,
    /// which some phones send without ICE), dropped.
    pub not_media: u64,
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
        let keying = srtp.map_or(Keying::Plain, |s| Keying::Srtp(Box::new(s)));
        self.start(remote, play, keying, codec)
    }

    /// [`MediaSocket::start_with`] keyed by a DTLS-SRTP handshake with `remote`
    /// (RFC 5764 §4): no packet is sent before it gives the keys.
    pub fn start_dtls(
        self,
        remote: Option<SocketAddr>,
        play: Option<Arc<Vec<u8>>>,
        dtls: DtlsCall,
        codec: Codec,
    ) -> MediaHandle {
        self.start(remote, play, Keying::Dtls(dtls), codec)
    }

    fn start(
        self,
        remote: Option<SocketAddr>,
        play: Option<Arc<Vec<u8>>>,
        keying: Keying,
        codec: Codec,
    ) -> MediaHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(self.socket, remote, play, keying, codec, stopped));
        MediaHandle { stop, task }
    }
}

/// How a call's audio is keyed.
enum Keying {
    Plain,
    Srtp(Box<SrtpSession>),
    Dtls(DtlsCall),
}

/// The DTLS side of a call's media: records for the handshake, then the association.
struct DtlsPath {
    records: tokio::sync::mpsc::Sender<Vec<u8>>,
    handshake: Option<JoinHandle<Result<Established, DtlsError>>>,
    established: Option<Established>,
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

#[allow(clippy::too_many_lines)] // one select loop: pacer, reader, handshake
async fn run(
    socket: UdpSocket,
    remote: Option<SocketAddr>,
    play: Option<Arc<Vec<u8>>>,
    keying: Keying,
    codec: Codec,
    mut stopped: oneshot::Receiver<()>,
) -> MediaReport {
    let socket = Arc::new(socket);
    let mut report = MediaReport::default();
    let (mut srtp, mut dtls) = match keying {
        Keying::Plain => (None, None),
        Keying::Srtp(s) => (Some(*s), None),
        Keying::Dtls(call) => {
            let (records, inbox) = tokio::sync::mpsc::channel(handshake::INBOX);
            let handshake = remote.map(|r| {
                let conn = MediaPortConn::new(socket.clone(), r, inbox);
                tokio::spawn(handshake::establish(conn, call))
            });
            (
                None,
                Some(DtlsPath {
                    records,
                    handshake,
                    established: None,
                }),
            )
        }
    };
    let keyed_by_dtls = dtls.is_some();
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
    let mut early: Vec<Vec<u8>> = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            r = async {
                match dtls.as_mut().and_then(|d| d.handshake.as_mut()) {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(d) = dtls.as_mut() else { continue };
                d.handshake = None;
                match r {
                    Ok(Ok(e)) => {
                        tracing::info!(suite = e.suite.name(), "DTLS-SRTP handshake done");
                        report.dtls = Some(Ok(e.suite.name().to_string()));
                        match SrtpSession::new(&e.keys) {
                            Ok(mut s) => {
                                for p in early.drain(..) {
                                    if let Some(plain) = s.unprotect(&p) {
                                        receiver.handle_datagram(&plain);
                                    }
                                }
                                srtp = Some(s);
                            }
                            Err(err) => report.dtls = Some(Err(err.to_string())),
                        }
                        d.established = Some(e);
                    }
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "DTLS-SRTP: no keys, no audio");
                        report.dtls = Some(Err(err.to_string()));
                    }
                    Err(err) => report.dtls = Some(Err(err.to_string())),
                }
            }
            _ = pacer.tick() => {
                let Some(remote) = remote else { continue };
                if keyed_by_dtls && srtp.is_none() {
                    continue; // never plain RTP on a DTLS-SRTP call
                }
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
                    if let Some(d) = dtls.as_ref().filter(|_| dtls::is_dtls(&buf[..n])) {
                        if d.records.try_send(buf[..n].to_vec()).is_err() {
                            report.dtls_dropped += 1;
                        }
                        continue;
                    }
                    if keyed_by_dtls && !matches!(buf[..n].first(), Some(128..=191)) {
                        report.not_media += 1;
                        continue;
                    }
                    match srtp.as_mut() {
                        // Before our keys: kept (bounded) until the handshake ends.
                        None if keyed_by_dtls && early.len() < EARLY_SRTP => {
                            early.push(buf[..n].to_vec());
                        }
                        None if keyed_by_dtls => report.srtp_rejected += 1,
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
    if let Some(d) = dtls {
        if let Some(h) = d.handshake {
            h.abort();
            report.dtls = Some(Err(
                "the handshake had not finished when the call ended".into()
            ));
        }
        if let Some(e) = d.established {
            // RFC 5246 §7.2.1 close_notify, as DTLS does (RFC 6347 §4.1).
            let _ = tokio::time::timeout(CLOSE_LIMIT, e.conn.close()).await;
        }
    }
    report.packets_received = receiver.packets;
    report.dropped = receiver.dropped;
    report.srtp = srtp.is_some();
    report.srtp_rejected += srtp.map_or(0, |s| s.rejected);
    report.samples = receiver.into_samples();
    report
}
