//! The commands of `permit-ua` as loops over [`Driver::next`]: `call`, `register`
//! and `answer`, `permit`. Each turns the engine's events into media sessions,
//! recordings, plain words or JSON lines, and an exit code.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::call::user_of;
use crate::engine::{CallId, Event};
use crate::keys::MediaKeys;
use crate::media::codec::Codec;
use crate::media::socket::{MediaHandle, MediaReport, MediaSocket};
use crate::media::srtp::SrtpSession;
use crate::media::wav;
use crate::outcome::{CallOutcome, exit};
use crate::publish::{self, PermitChange};
use crate::shell::{Driver, Next, Output};

/// How long a clean exit (BYE, un-REGISTER) may take before we leave anyway.
const GRACE: Duration = Duration::from_secs(5);
/// The longest a single PUBLISH may take (Timer F is 32 s on UDP).
const PUBLISH_WAIT: Duration = Duration::from_secs(40);

/// Writes a call's received audio to `DIR/<call>.wav`.
fn save_recording(dir: &Path, call: &str, report: &MediaReport) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name: String = call
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    let path = dir.join(format!("call-{name}.wav"));
    std::fs::write(&path, wav::write(&report.samples))?;
    Ok(path)
}

fn media_fields(r: &MediaReport) -> Value {
    json!({
        "packets_sent": r.packets_sent,
        "packets_received": r.packets_received,
        "dropped": r.dropped,
        "srtp": r.srtp,
        "srtp_rejected": r.srtp_rejected,
        "codec": r.codec.map(Codec::name),
        "dtls": r.dtls.as_ref().map(|d| d.as_ref().ok()),
        "dtls_error": r.dtls.as_ref().and_then(|d| d.as_ref().err()),
        "not_media": r.not_media,
    })
}

/// Starts a connected call's audio: keyed by DTLS-SRTP on the media path when the
/// call agreed to it (RFC 5763), else by its SDES keys or none; says how.
fn start_media(
    d: &Driver,
    out: Output,
    call: &str,
    socket: MediaSocket,
    remote: Option<std::net::SocketAddr>,
    play: Option<Arc<Vec<u8>>>,
) -> MediaHandle {
    let codec = d.ua.audio_codec(call);
    if let Some(dtls) = d.ua.media_dtls(call) {
        out.say(
            "keys",
            "audio: DTLS-SRTP (keys from the handshake on the media path)",
            json!({ "srtp": "DTLS-SRTP", "dtls": true, "keys_from_secret": false }),
        );
        return socket.start_dtls(remote, play, dtls.clone(), codec);
    }
    let (srtp, text, fields) = srtp_for(d.ua.media_keys(call));
    out.say("keys", &text, fields);
    socket.start_with(remote, play, srtp, codec)
}

/// The SRTP session of a connected call, and how it is keyed in words and JSON
/// fields (never key material).
fn srtp_for(keys: Option<&MediaKeys>) -> (Option<SrtpSession>, String, Value) {
    let Some(k) = keys else {
        return (
            None,
            "audio: plain RTP (the other side offered no SRTP keys)".into(),
            json!({ "srtp": Value::Null }),
        );
    };
    let fields = json!({ "srtp": k.suite().name(), "keys_from_secret": k.from_secret });
    match SrtpSession::new(k) {
        Ok(s) => (Some(s), format!("audio: {}", k.describe()), fields),
        Err(e) => (
            None,
            format!("audio: {e}; plain RTP"),
            json!({ "srtp": Value::Null }),
        ),
    }
}

/// Stops a call's media, saves the recording if asked, and reports.
async fn finish_media(out: Output, call: &str, media: Option<MediaHandle>, record: Option<&Path>) {
    let Some(m) = media else { return };
    let report = m.stop().await;
    let mut fields = media_fields(&report);
    let mut text = format!(
        "audio ({}): {} packets sent, {} received",
        report.codec.map_or("none", |c| c.name()),
        report.packets_sent,
        report.packets_received
    );
    if report.srtp_rejected > 0 {
        let _ = write!(text, ", {} refused by SRTP", report.srtp_rejected);
    }
    if let Some(dir) = record {
        match save_recording(dir, call, &report) {
            Ok(path) => {
                let _ = write!(text, ", recorded to {}", path.display());
                fields["recording"] = json!(path.display().to_string());
            }
            Err(e) => {
                let _ = write!(text, ", recording not saved: {e}");
            }
        }
    }
    out.say("media", &text, fields);
}

/// `permit-ua call AOR`: one call, until it ends, `duration` passes or a signal.
pub async fn run_call(
    mut d: Driver,
    out: Output,
    target: &str,
    play: Option<Arc<Vec<u8>>>,
    record: Option<PathBuf>,
    duration: Option<Duration>,
    direct: bool,
) -> u8 {
    let callee = user_of(&d.ua.config().local.target_uri(target));
    let socket = match MediaSocket::bind(d.media_ip).await {
        Ok(s) => s,
        Err(e) => {
            out.say("error", &format!("cannot bind an RTP port: {e}"), json!({}));
            return exit::FAILED;
        }
    };
    let call = d.ua.call_with(Instant::now(), target, socket.local, direct);
    out.say(
        "calling",
        &format!("calling {callee}"),
        json!({ "callee": callee, "local_media": socket.local.to_string() }),
    );
    let mut socket = Some(socket);
    let mut media: Option<MediaHandle> = None;
    let mut deadline = None;
    let mut connected_at: Option<Instant> = None;
    let mut hanging_up = false;
    loop {
        match d.next(deadline).await {
            Next::Event(Event::CallProgress { status, .. }) => {
                let text = if status == 180 {
                    format!("{callee} is ringing")
                } else {
                    format!("progress ({status})")
                };
                out.say("progress", &text, json!({ "status": status }));
            }
            Next::Event(Event::CallConnected { remote_media, .. }) => {
                connected_at = Some(Instant::now());
                out.say(
                    "connected",
                    &CallOutcome::Connected.describe(&callee),
                    json!({ "callee": callee, "status": 200, "exit_code": 0 }),
                );
                if let Some(s) = socket.take() {
                    media = Some(start_media(&d, out, &call, s, remote_media, play.clone()));
                }
                if hanging_up {
                    deadline = Some(Instant::now() + GRACE);
                } else {
                    deadline = duration.map(|t| Instant::now() + t);
                }
            }
            Next::Event(Event::CallFailed { outcome, .. }) => {
                finish_media(out, &call, media.take(), record.as_deref()).await;
                out.say(
                    &outcome.to_string(),
                    &outcome.describe(&callee),
                    json!({ "callee": callee, "status": outcome.status(), "exit_code": outcome.exit_code() }),
                );
                return outcome.exit_code();
            }
            Next::Event(Event::CallEnded { by_peer, .. }) => {
                let secs = connected_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
                finish_media(out, &call, media.take(), record.as_deref()).await;
                let text = if by_peer {
                    format!("{callee} hung up after {secs:.1} s")
                } else {
                    format!("call ended after {secs:.1} s")
                };
                out.say(
                    "ended",
                    &text,
                    json!({ "by_peer": by_peer, "seconds": secs, "exit_code": 0 }),
                );
                return exit::CONNECTED;
            }
            Next::Event(e) => tracing::debug!(?e, "event"),
            Next::Signal | Next::Deadline if !hanging_up => {
                hanging_up = true;
                d.ua.hangup(Instant::now(), &call);
                deadline = Some(Instant::now() + GRACE);
            }
            Next::Signal | Next::Deadline => {
                finish_media(out, &call, media.take(), record.as_deref()).await;
                out.say("ended", "left without a clean end", json!({}));
                return if connected_at.is_some() {
                    exit::CONNECTED
                } else {
                    exit::FAILED
                };
            }
        }
    }
}

/// Why the first registration failed, in words, and the exit code.
fn registration_failure(status: Option<u16>) -> (String, u8) {
    match status {
        None => (
            "no answer from the proxy".into(),
            exit::NO_ANSWER_FROM_PROXY,
        ),
        Some(s @ (401 | 407)) => (format!("wrong user or password ({s})"), exit::REFUSED),
        Some(403) => ("registration refused (403)".into(), exit::REFUSED),
        Some(s) => (format!("registration failed ({s})"), exit::FAILED),
    }
}

/// What `answer` does with calls.
pub struct AnswerOptions {
    /// Auto-answer (false for `register`: calls are declined).
    pub answer: bool,
    pub play: Option<Arc<Vec<u8>>>,
    pub record: Option<PathBuf>,
    /// Fetch stored items by itself into this inbox (`answer`).
    pub inbox: Option<crate::inbox::fetch::InboxContext>,
}

/// `permit-ua register` and `permit-ua answer`: stay registered until a signal;
/// answer calls when asked to.
pub async fn run_registered(mut d: Driver, out: Output, opts: AnswerOptions) -> u8 {
    d.ua.register(Instant::now());
    let aor = format!(
        "{}@{}",
        d.ua.config().local.user,
        d.ua.config().local.domain
    );
    let mut registered = false;
    let mut leaving: Option<Instant> = None;
    let fetcher = opts
        .inbox
        .clone()
        .map(|c| crate::inbox::fetch::AutoFetch::new(c, out));
    let mut calls = Answering {
        out,
        opts,
        fetcher,
        video: crate::video::command::VideoCalls::default(),
        sockets: HashMap::new(),
        media: HashMap::new(),
        peers: HashMap::new(),
    };
    loop {
        match d.next(leaving.map(|t| t + GRACE)).await {
            Next::Event(Event::Registered { expires }) => {
                if !registered {
                    out.say(
                        "registered",
                        &format!("registered as {aor} (expires in {expires} s)"),
                        json!({ "aor": aor, "expires": expires }),
                    );
                }
                registered = true;
            }
            Next::Event(Event::RegistrationFailed { status }) => {
                let (text, code) = registration_failure(status);
                if registered {
                    out.say(
                        "warning",
                        &format!("refresh failed: {text}; retrying"),
                        json!({ "status": status }),
                    );
                } else {
                    out.say(
                        "failed",
                        &text,
                        json!({ "status": status, "exit_code": code }),
                    );
                    return code;
                }
            }
            Next::Event(Event::Unregistered) if leaving.is_some() => {
                out.say("unregistered", "unregistered", json!({}));
                return exit::CONNECTED;
            }
            Next::Event(e) => calls.handle(&mut d, e, leaving.is_some()).await,
            Next::Signal if leaving.is_none() => {
                let now = Instant::now();
                leaving = Some(now);
                d.ua.hangup_all(now);
                d.ua.unregister(now);
            }
            Next::Signal | Next::Deadline => {
                calls.stop_all().await;
                out.say(
                    "unregistered",
                    "left without waiting for the registrar",
                    json!({}),
                );
                return exit::CONNECTED;
            }
        }
    }
}

/// The calls of `permit-ua answer`: media sockets bound before answering, media
/// sessions while connected, the peer's name for messages.
struct Answering {
    out: Output,
    opts: AnswerOptions,
    video: crate::video::command::VideoCalls,
    sockets: HashMap<CallId, MediaSocket>,
    media: HashMap<CallId, MediaHandle>,
    peers: HashMap<CallId, String>,
    fetcher: Option<crate::inbox::fetch::AutoFetch>,
}

impl Answering {
    async fn handle(&mut self, d: &mut Driver, e: Event, leaving: bool) {
        match e {
            Event::IncomingCall { call, from, offer } => {
                let who = user_of(&from);
                if !self.opts.answer || leaving {
                    d.ua.hangup(Instant::now(), &call);
                    return;
                }
                match MediaSocket::bind(d.media_ip).await {
                    Ok(s) => {
                        self.out.say(
                            "incoming",
                            &format!("call from {who}"),
                            json!({
                                "from": from,
                                "remote_media": offer.addr.to_string(),
                                "local_media": s.local.to_string(),
                            }),
                        );
                        let video = self.video.on_incoming(d, &call).await;
                        d.ua.answer_with_video(Instant::now(), &call, s.local, video);
                        self.sockets.insert(call.clone(), s);
                        self.peers.insert(call, who);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot bind an RTP port");
                        d.ua.hangup(Instant::now(), &call);
                    }
                }
            }
            Event::CallConnected { call, remote_media } => {
                let who = self.peers.get(&call).cloned().unwrap_or_default();
                self.out.say(
                    "connected",
                    &format!("connected to {who}"),
                    json!({ "from": who }),
                );
                if let Some(s) = self.sockets.remove(&call) {
                    let play = self.opts.play.clone();
                    let m = start_media(d, self.out, &call, s, remote_media, play);
                    self.media.insert(call, m);
                }
            }
            Event::CallEnded { call, by_peer } => {
                self.sockets.remove(&call);
                let who = self.peers.remove(&call).unwrap_or_default();
                finish_media(
                    self.out,
                    &call,
                    self.media.remove(&call),
                    self.opts.record.as_deref(),
                )
                .await;
                self.video
                    .on_ended(self.out, &call, self.opts.record.as_deref())
                    .await;
                let text = if by_peer {
                    format!("{who} hung up")
                } else {
                    format!("call with {who} ended")
                };
                self.out.say("ended", &text, json!({ "by_peer": by_peer }));
                if let Some(f) = self.fetcher.as_mut() {
                    f.call_ended(d);
                }
            }
            Event::Store(s) => match self.fetcher.as_mut() {
                Some(f) => f.handle(d, s).await,
                None => crate::inbox::fetch::refuse_unwanted(d, &s),
            },
            Event::IncomingRefused { status } => {
                self.out.say(
                    "refused",
                    &format!("refused an incoming call ({status})"),
                    json!({ "status": status }),
                );
            }
            Event::LoadQuery { status } => {
                let text = if status == 486 {
                    "told the proxy: busy (486)"
                } else {
                    "told the proxy: free (200)"
                };
                self.out
                    .say("load-query", text, json!({ "status": status }));
            }
            e => tracing::debug!(?e, "event"),
        }
    }

    async fn stop_all(&mut self) {
        for (call, m) in self.media.drain() {
            finish_media(self.out, &call, Some(m), self.opts.record.as_deref()).await;
        }
        self.video
            .stop_all(self.out, self.opts.record.as_deref())
            .await;
    }
}

/// `permit-ua permit list|add|remove|set`: one PUBLISH, its answer in words.
pub async fn run_permit(
    mut d: Driver,
    out: Output,
    change: &PermitChange,
    if_match: Option<&str>,
) -> u8 {
    d.ua.publish_permits(Instant::now(), change, if_match);
    let deadline = Instant::now() + PUBLISH_WAIT;
    loop {
        match d.next(Some(deadline)).await {
            Next::Event(Event::PermitList { status, etag, body }) => {
                let etag_text = etag.clone().unwrap_or_default();
                let (text, code) = match status {
                    200..=299 if *change == PermitChange::Read => {
                        let entries = publish::entries(&body);
                        let mut text = if entries.is_empty() {
                            "your list is empty: nobody may call you".to_string()
                        } else {
                            format!("your list ({} entries):", entries.len())
                        };
                        for e in &entries {
                            text.push_str("\n  ");
                            text.push_str(e);
                        }
                        let _ = write!(text, "\netag {etag_text}");
                        out.say(
                            "list",
                            &text,
                            json!({ "entries": entries, "etag": etag, "status": status }),
                        );
                        return exit::CONNECTED;
                    }
                    200..=299 => (format!("list updated (etag {etag_text})"), exit::CONNECTED),
                    401 | 407 => (format!("wrong user or password ({status})"), exit::REFUSED),
                    403 => (
                        "you may only change your own list (403)".to_string(),
                        exit::REFUSED,
                    ),
                    412 => (
                        "the list changed since you read it: read it again (412)".to_string(),
                        exit::FAILED,
                    ),
                    400 => (
                        "the proxy did not accept these entries (400)".to_string(),
                        exit::FAILED,
                    ),
                    s => (format!("the proxy answered {s}"), exit::FAILED),
                };
                out.say(
                    "permit",
                    &text,
                    json!({ "status": status, "etag": etag, "exit_code": code }),
                );
                return code;
            }
            Next::Event(Event::PermitNoResponse) | Next::Deadline => {
                out.say(
                    "failed",
                    "no answer from the proxy",
                    json!({ "exit_code": exit::NO_ANSWER_FROM_PROXY }),
                );
                return exit::NO_ANSWER_FROM_PROXY;
            }
            Next::Event(e) => tracing::debug!(?e, "event"),
            Next::Signal => return exit::FAILED,
        }
    }
}
