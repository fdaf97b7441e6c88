//! The CLI's video loops: `permit-ua call AOR --video FILE` (one call that sends the
//! clip split, then hangs up) and the callee's side inside `permit-ua answer`
//! ([`VideoCalls`]: accept the video section, latch, receive, write `DIR/call-<id>.<ext>`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::join::Joiner;
use super::latch::Leg;
use super::report::{PathReport, ReceptionReport};
use super::sdp::{self, SplitMode, VideoOffer};
use super::socket::{ReceiveHandle, RelayLeg, SendReport, VideoSocket};
use super::split::{Splitter, video_keys};
use super::{Clip, Codec};
use crate::call::user_of;
use crate::engine::{CallId, Event};
use crate::media::socket::{MediaHandle, MediaSocket};
use crate::media::srtp::SrtpSession;
use crate::outcome::{CallOutcome, exit};
use crate::shell::{Driver, Next, Output};

/// How long a clean exit (BYE) may take before we leave anyway.
const GRACE: Duration = Duration::from_secs(5);
/// The callee's latch attempts (× 200 ms) before it answers.
const CALLEE_LATCH_TRIES: u32 = 5;
/// How often the call loop looks whether the clip is sent.
const CHECK: Duration = Duration::from_millis(200);

/// What `call --video` was asked.
#[derive(Debug, Clone)]
pub struct VideoOptions {
    pub clip: Arc<Clip>,
    pub fast: bool,
    pub mode: SplitMode,
}

fn send_fields(r: &SendReport, clip: &Clip) -> Value {
    json!({
        "codec": clip.codec.extension(),
        "fps": clip.fps,
        "packets": r.stats.packets,
        "intra": r.stats.intra,
        "relay": r.stats.relay,
        "direct": r.stats.direct,
        "plain": r.stats.plain,
        "srtp_refused": r.stats.refused,
        "latched": r.latched,
        "srtp": r.srtp,
        "send_errors": r.send_errors,
    })
}

/// `permit-ua call AOR --video FILE`: audio as usual (`--play`), the clip as video;
/// hangs up once the clip is sent (or at `duration`).
#[allow(clippy::too_many_lines)] // one call's story, in order
pub async fn run_video_call(
    mut d: Driver,
    out: Output,
    target: &str,
    play: Option<Arc<Vec<u8>>>,
    duration: Option<Duration>,
    direct: bool,
    video: VideoOptions,
) -> u8 {
    let callee = user_of(&d.ua.config().local.target_uri(target));
    let (audio, vsock) = match (
        MediaSocket::bind(d.media_ip).await,
        VideoSocket::bind(d.media_ip).await,
    ) {
        (Ok(a), Ok(v)) => (a, v),
        (Err(e), _) | (_, Err(e)) => {
            out.say("error", &format!("cannot bind an RTP port: {e}"), json!({}));
            return exit::FAILED;
        }
    };
    let section = sdp::offer_section(&video.clip, vsock.local.port(), video.mode);
    let call =
        d.ua.call_with_video(Instant::now(), target, audio.local, direct, Some(section));
    out.say(
        "calling",
        &format!("calling {callee} with video"),
        json!({
            "callee": callee,
            "local_media": audio.local.to_string(),
            "local_video": vsock.local.to_string(),
        }),
    );
    let mut audio = Some(audio);
    let mut vsock = Some(vsock);
    let mut media: Option<MediaHandle> = None;
    let mut sending: Option<tokio::task::JoinHandle<SendReport>> = None;
    let mut deadline = None;
    let mut hang_up_at: Option<Instant> = None;
    let mut connected = false;
    let mut hanging_up = false;
    loop {
        match d.next(deadline).await {
            Next::Event(Event::CallConnected { remote_media, .. }) => {
                connected = true;
                out.say(
                    "connected",
                    &CallOutcome::Connected.describe(&callee),
                    json!({ "callee": callee, "status": 200, "exit_code": 0 }),
                );
                let keys = d.ua.media_keys(&call).cloned();
                let srtp = keys.as_ref().and_then(|k| SrtpSession::new(k).ok());
                if let Some(s) = audio.take() {
                    let codec = d.ua.audio_codec(&call);
                    media = Some(s.start_with(remote_media, play.clone(), srtp, codec));
                }
                let (answer, token) = d.ua.remote_description(&call).unwrap_or_default();
                let peer = sdp::parse(&answer);
                match (peer, vsock.take()) {
                    (Some(peer), Some(sock)) => {
                        let vkeys = keys.as_ref().and_then(video_keys);
                        let relay = peer.relay.zip(token).map(|(addr, token)| RelayLeg {
                            addr,
                            token,
                            leg: Leg::Caller,
                        });
                        let splitter = Splitter::new(
                            video.clip.codec,
                            peer.payload_type,
                            video.clip.ticks_per_picture(),
                            vkeys.as_ref().map(|k| &k.send),
                            video.mode,
                            relay.is_some(),
                            &mut rand::rng(),
                        );
                        out.say(
                            "video-start",
                            &format!(
                                "video: {} packets at {} fps, {}; I-packets {}",
                                video.clip.payloads.len(),
                                video.clip.fps,
                                if vkeys.is_some() {
                                    "SRTP"
                                } else {
                                    "plain RTP (no keys)"
                                },
                                if relay.is_some() {
                                    "through the media relay"
                                } else {
                                    "direct (the call is not relayed)"
                                }
                            ),
                            json!({ "relayed": relay.is_some(), "srtp": vkeys.is_some() }),
                        );
                        sending = Some(sock.send(
                            video.clip.clone(),
                            splitter,
                            peer.addr,
                            relay,
                            video.fast,
                        ));
                    }
                    _ => out.say(
                        "video-refused",
                        "video: the callee did not accept the video stream",
                        json!({}),
                    ),
                }
                hang_up_at = duration.map(|t| Instant::now() + t);
                deadline = Some(Instant::now() + CHECK);
                if hanging_up {
                    deadline = Some(Instant::now() + GRACE);
                }
            }
            Next::Event(Event::CallProgress { status, .. }) => {
                out.say(
                    "progress",
                    &format!("progress ({status})"),
                    json!({ "status": status }),
                );
            }
            Next::Event(Event::CallFailed { outcome, .. }) => {
                if let Some(m) = media.take() {
                    m.stop().await;
                }
                out.say(
                    &outcome.to_string(),
                    &outcome.describe(&callee),
                    json!({ "callee": callee, "status": outcome.status(), "exit_code": outcome.exit_code() }),
                );
                return outcome.exit_code();
            }
            Next::Event(Event::CallEnded { by_peer, .. }) => {
                finish(out, media.take(), sending.take(), &video.clip).await;
                out.say(
                    "ended",
                    if by_peer {
                        "the callee hung up"
                    } else {
                        "call ended"
                    },
                    json!({ "by_peer": by_peer, "exit_code": 0 }),
                );
                return exit::CONNECTED;
            }
            Next::Event(e) => tracing::debug!(?e, "event"),
            Next::Deadline if !hanging_up => {
                let sent = sending
                    .as_ref()
                    .is_none_or(tokio::task::JoinHandle::is_finished);
                let timed_out = hang_up_at.is_some_and(|t| Instant::now() >= t);
                if (sent && duration.is_none()) || timed_out {
                    hanging_up = true;
                    d.ua.hangup(Instant::now(), &call);
                    deadline = Some(Instant::now() + GRACE);
                } else {
                    deadline = Some(Instant::now() + CHECK);
                }
            }
            Next::Signal if !hanging_up => {
                hanging_up = true;
                d.ua.hangup(Instant::now(), &call);
                deadline = Some(Instant::now() + GRACE);
            }
            Next::Signal | Next::Deadline => {
                finish(out, media.take(), sending.take(), &video.clip).await;
                out.say("ended", "left without a clean end", json!({}));
                return if connected {
                    exit::CONNECTED
                } else {
                    exit::FAILED
                };
            }
        }
    }
}

async fn finish(
    out: Output,
    media: Option<MediaHandle>,
    sending: Option<tokio::task::JoinHandle<SendReport>>,
    clip: &Clip,
) {
    if let Some(m) = media {
        let r = m.stop().await;
        out.say(
            "media",
            &format!("audio: {} packets sent, {} received", r.packets_sent, r.packets_received),
            json!({ "packets_sent": r.packets_sent, "packets_received": r.packets_received, "srtp": r.srtp }),
        );
    }
    if let Some(task) = sending {
        if !task.is_finished() {
            task.abort();
        }
        if let Ok(r) = task.await {
            out.say(
                "video",
                &format!(
                    "video: {} packets sent, {} I-packets: {} through the relay, {} direct ({} plain RTP)",
                    r.stats.packets, r.stats.intra, r.stats.relay, r.stats.direct, r.stats.plain
                ),
                send_fields(&r, clip),
            );
        }
    }
}

/// The callee's video calls inside `permit-ua answer`.
#[derive(Default)]
pub struct VideoCalls {
    running: HashMap<CallId, (ReceiveHandle, Codec)>,
}

impl VideoCalls {
    /// An incoming call: when its offer has a video stream we take, binds a socket,
    /// starts latching and receiving, and returns our answer's video section.
    pub async fn on_incoming(&mut self, d: &mut Driver, call: &CallId) -> Option<String> {
        let (offer, token) = d.ua.remote_description(call)?;
        let peer: VideoOffer = sdp::parse(&offer)?;
        let sock = match VideoSocket::bind(d.media_ip).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot bind a video port: video refused");
                return None;
            }
        };
        let section = sdp::answer_section(&peer, sock.local.port());
        let vkeys = d.ua.media_keys(call).and_then(video_keys);
        let relay = peer.relay.zip(token).map(|(addr, token)| RelayLeg {
            addr,
            token,
            leg: Leg::Callee,
        });
        let joiner = Joiner::new(
            peer.codec,
            peer.payload_type,
            vkeys.as_ref().map(|k| &k.recv),
            peer.mode,
            peer.addr,
            relay.as_ref().map(|r| r.addr),
        );
        // The relay drops what reaches a leg not latched yet: our leg is latched
        // before we answer, so the caller's first I-packets find it (bounded wait;
        // the receiver keeps trying if the relay is slow).
        let latched = match &relay {
            Some(r) => sock.latch(r, CALLEE_LATCH_TRIES).await,
            None => false,
        };
        self.running.insert(
            call.clone(),
            (sock.receive(joiner, relay, latched), peer.codec),
        );
        Some(section)
    }

    /// The call ended: stops its video and writes what arrived to `DIR/call-<id>.<ext>`.
    pub async fn on_ended(&mut self, out: Output, call: &str, record: Option<&Path>) {
        let Some((handle, codec)) = self.running.remove(call) else {
            return;
        };
        let r = handle.stop().await;
        let s = r.stats;
        let mut fields = json!({
            "codec": codec.extension(),
            "bytes": r.stream.len(),
            "from_relay": s.from_relay,
            "direct": s.direct,
            "direct_plain": s.direct_plain,
            "refused": s.refused,
            "lost": s.lost,
            "late_or_duplicate": s.late_or_duplicate,
            "depacketize_errors": s.depacketize_errors,
            "latched": r.latched,
            "reception": reception_fields(&r.reception),
        });
        let mut text = format!(
            "video: {} bytes, {} packets through the relay, {} direct ({} plain), {} lost, {} refused; {}",
            r.stream.len(),
            s.from_relay,
            s.direct + s.direct_plain,
            s.direct_plain,
            s.lost,
            s.refused,
            reception_text(&r.reception)
        );
        if let Some(dir) = record {
            match save(dir, call, codec, &r.stream) {
                Ok(path) => {
                    let _ = write!(text, ", recorded to {}", path.display());
                    fields["recording"] = json!(path.display().to_string());
                }
                Err(e) => {
                    let _ = write!(text, ", recording not saved: {e}");
                }
            }
        }
        out.say("video", &text, fields);
    }

    pub async fn stop_all(&mut self, out: Output, record: Option<&Path>) {
        let calls: Vec<CallId> = self.running.keys().cloned().collect();
        for c in calls {
            self.on_ended(out, &c, record).await;
        }
    }
}

fn path_fields(p: &PathReport) -> Value {
    json!({
        "packets": p.packets,
        "duplicates": p.duplicates,
        "jitter": p.jitter,
        "jitter_ms": p.jitter_ms(),
    })
}

/// The report's JSON: the merged stream's loss (RFC 3550 §A.3), each path's counts and
/// jitter (§A.8; `jitter` in RTP timestamp units at `clock` Hz).
fn reception_fields(r: &ReceptionReport) -> Value {
    json!({
        "clock": super::CLOCK,
        "expected": r.expected,
        "received": r.received,
        "lost": r.lost,
        "relay": path_fields(&r.relay),
        "direct": path_fields(&r.direct),
    })
}

fn reception_text(r: &ReceptionReport) -> String {
    let path = |name: &str, p: &PathReport| {
        format!(
            "{name} path {} packets, {} duplicates, jitter {:.2} ms",
            p.packets,
            p.duplicates,
            p.jitter_ms()
        )
    };
    format!(
        "{}; {}; {} of {} sequence numbers missing (both paths together)",
        path("relay", &r.relay),
        path("direct", &r.direct),
        r.lost,
        r.expected
    )
}

fn save(dir: &Path, call: &str, codec: Codec, stream: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name: String = call
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    let path = dir.join(format!("call-{name}.{}", codec.extension()));
    std::fs::write(&path, stream)?;
    Ok(path)
}

/// `permit-ua call AOR --video FILE [--fast] [--selective]`: loads the clip, then
/// [`run_video_call`]. Exit 2 for a file that is not a clip we send.
#[allow(clippy::too_many_arguments)] // the CLI's flags, passed through
pub async fn run(
    d: Driver,
    out: Output,
    target: &str,
    play: Option<Arc<Vec<u8>>>,
    duration: Option<Duration>,
    direct: bool,
    path: &Path,
    fast: bool,
    selective: bool,
) -> u8 {
    let clip = match Clip::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("permit-ua: --video: {e}");
            return exit::USAGE;
        }
    };
    let mode = if selective {
        SplitMode::Selective
    } else {
        SplitMode::Srtp
    };
    let video = VideoOptions {
        clip: Arc::new(clip),
        fast,
        mode,
    };
    run_video_call(d, out, target, play, duration, direct, video).await
}
