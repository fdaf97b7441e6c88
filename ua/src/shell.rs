//! The tokio shell of the user agent: binds the SIP sockets (`sip-net`), drives the
//! [`Ua`] engine, runs each call's media and tells the user what happened.
//!
//! The loop is `sip_net::run`'s, with two more inputs the proxy does not have: the
//! user (signals, `--duration`) and the engine's events, which the commands act on
//! (bind a media socket and answer, start and stop audio, print).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use serde_json::{Value, json};
use sip_core::transport::Transport;
use sip_net::{Listen, NetConfig, Network, TlsSettings};
use tokio::sync::mpsc;

use crate::call::user_of;
use crate::engine::{CallId, Event, Ua, UaConfig};
use crate::media::socket::{MediaHandle, MediaReport, MediaSocket};
use crate::media::{g711, wav};
use crate::outcome::{CallOutcome, exit};
use crate::publish::{self, PermitChange};
use crate::request::Local;
use crate::settings::Settings;

/// How long a clean exit (BYE, un-REGISTER) may take before we leave anyway.
const GRACE: Duration = Duration::from_secs(5);
/// The longest a single PUBLISH may take (Timer F is 32 s on UDP).
const PUBLISH_WAIT: Duration = Duration::from_secs(40);

/// Plain words or one JSON object per line (`--json`), on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn say(self, event: &str, text: &str, fields: Value) {
        if self.json {
            let mut obj = json!({ "event": event, "message": text });
            if let (Some(o), Value::Object(f)) = (obj.as_object_mut(), fields) {
                o.extend(f);
            }
            println!("{obj}");
        } else {
            println!("{text}");
        }
    }
}

/// A setup failure: exit code 2 (configuration) or 1 (sockets).
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("{0}")]
    Net(#[from] sip_net::NetError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wav(String),
}

/// What the driver hands the command loop next.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// SIGINT or SIGTERM.
    Signal,
    /// The deadline given to [`Driver::next`] passed.
    Deadline,
}

/// The engine, its sockets and the signal listener.
pub struct Driver {
    pub ua: Ua,
    net: Network,
    signals: mpsc::UnboundedReceiver<()>,
    /// The IP our SDP announces.
    pub media_ip: IpAddr,
}

/// The local IP the kernel would use towards `proxy` (for Via, Contact and SDP when
/// the listener is on an unspecified address).
fn route_ip(proxy: SocketAddr) -> IpAddr {
    let unspecified: SocketAddr = if proxy.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(proxy)
    } else {
        "[::]:0".parse().unwrap_or(proxy)
    };
    std::net::UdpSocket::bind(unspecified)
        .and_then(|s| {
            s.connect(proxy)?;
            s.local_addr()
        })
        .map_or(proxy.ip(), |a| a.ip())
}

impl Driver {
    /// Binds the SIP socket (`--listen`, or an ephemeral port of the proxy's
    /// transport; a TLS proxy is reached over our own connection, with no listener)
    /// and starts listening for SIGINT and SIGTERM.
    pub async fn start(s: &Settings, max_calls: usize) -> Result<Self, ShellError> {
        let transport = s.proxy.transport;
        let ip = match &s.listen {
            Some(l) => l.resolve().map_or(route_ip(s.proxy_addr), |a| a.ip()),
            None => route_ip(s.proxy_addr),
        };
        let want = match &s.listen {
            Some(l) => SocketAddr::new(ip, l.port),
            None => SocketAddr::new(ip, 0),
        };
        let mut cfg = NetConfig::default();
        let mut listen = vec![];
        if transport == Transport::Tls {
            cfg.tls = Some(TlsSettings::client(s.tls_ca.clone()));
        } else {
            listen.push(Listen {
                transport,
                addr: want,
            });
        }
        let net = Network::bind(&listen, cfg).await?;
        let bind = net
            .bound
            .first()
            .map_or(SocketAddr::new(ip, 5061), |l| l.addr);
        let advertised = if bind.ip().is_unspecified() {
            SocketAddr::new(route_ip(s.proxy_addr), bind.port())
        } else {
            bind
        };
        let local = Local {
            user: s.user.clone(),
            domain: s.domain.clone(),
            transport,
            advertised,
        };
        let mut ua_cfg = UaConfig::new(local, bind, s.proxy_addr);
        ua_cfg.password.clone_from(&s.password);
        ua_cfg.expires = s.expires;
        ua_cfg.max_calls = max_calls;
        let ua = Ua::new(ua_cfg, rand::rngs::StdRng::from_os_rng());
        let (tx, signals) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            loop {
                #[cfg(unix)]
                let terminated = async {
                    match term.as_mut() {
                        Some(t) => {
                            t.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let terminated = std::future::pending::<()>();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = terminated => {}
                }
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        tracing::debug!(%advertised, "SIP socket bound");
        Ok(Self {
            ua,
            net,
            signals,
            media_ip: advertised.ip(),
        })
    }

    /// Asks the proxy an OPTIONS and waits for the answer (over TLS this also
    /// teaches the engine our flow's address). `false` if no answer came.
    pub async fn probe(&mut self) -> bool {
        self.ua.ping(Instant::now());
        loop {
            match self.next(None).await {
                Next::Event(Event::ProxyAnswered { status }) => return status.is_some(),
                Next::Event(e) => tracing::debug!(?e, "event before the probe's answer"),
                Next::Signal | Next::Deadline => return false,
            }
        }
    }

    /// Runs the engine until it has an event, a signal arrives or `deadline` passes.
    pub async fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            while let Some(t) = self.ua.poll_transmit() {
                tracing::trace!(dest = %t.dest, message = %redacted(&t.data), "send");
                self.net.sender.send(t).await;
            }
            if let Some(e) = self.ua.poll_event() {
                return Next::Event(e);
            }
            let wake = self.ua.poll_timeout();
            let sleep = |at: Option<Instant>| async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                s = self.signals.recv() => {
                    if s.is_some() {
                        return Next::Signal;
                    }
                }
                () = sleep(deadline) => return Next::Deadline,
                msg = self.net.inbound.recv() => match msg {
                    Some(m) => {
                        tracing::trace!(peer = %m.peer, message = %redacted(&m.data), "received");
                        self.ua.handle_received(Instant::now(), m);
                    }
                    None => return Next::Signal,
                },
                () = sleep(wake) => self.ua.handle_timeout(Instant::now()),
            }
        }
    }
}

/// A message for the trace log, with our digest credentials cut (STYLE.md rule 11:
/// the response and cnonce are material for an offline guess).
fn redacted(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("authorization:") || lower.starts_with("proxy-authorization:") {
                let name = &line[..line.find(':').unwrap_or(0)];
                format!("{name}: <redacted>")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Reads `--play FILE.wav` as μ-law.
pub fn load_play(path: Option<&Path>) -> Result<Option<Arc<Vec<u8>>>, ShellError> {
    let Some(path) = path else { return Ok(None) };
    let bytes =
        std::fs::read(path).map_err(|e| ShellError::Wav(format!("{}: {e}", path.display())))?;
    let samples =
        wav::read(&bytes).map_err(|e| ShellError::Wav(format!("{}: {e}", path.display())))?;
    Ok(Some(Arc::new(g711::encode_all(&samples))))
}

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
    })
}

/// Stops a call's media, saves the recording if asked, and reports.
async fn finish_media(out: Output, call: &str, media: Option<MediaHandle>, record: Option<&Path>) {
    let Some(m) = media else { return };
    let report = m.stop().await;
    let mut fields = media_fields(&report);
    let mut text = format!(
        "audio: {} packets sent, {} received",
        report.packets_sent, report.packets_received
    );
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
) -> u8 {
    let callee = user_of(&d.ua.config().local.target_uri(target));
    let socket = match MediaSocket::bind(d.media_ip).await {
        Ok(s) => s,
        Err(e) => {
            out.say("error", &format!("cannot bind an RTP port: {e}"), json!({}));
            return exit::FAILED;
        }
    };
    let call = d.ua.call(Instant::now(), target, socket.local);
    out.say(
        "calling",
        &format!("calling {callee}"),
        json!({ "callee": callee }),
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
                    media = Some(s.start(remote_media, play.clone()));
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
    let mut calls = Answering {
        out,
        opts,
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
    sockets: HashMap<CallId, MediaSocket>,
    media: HashMap<CallId, MediaHandle>,
    peers: HashMap<CallId, String>,
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
                            json!({ "from": from, "remote_media": offer.addr.to_string() }),
                        );
                        d.ua.answer(Instant::now(), &call, s.local);
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
                    self.media
                        .insert(call, s.start(remote_media, self.opts.play.clone()));
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
                let text = if by_peer {
                    format!("{who} hung up")
                } else {
                    format!("call with {who} ended")
                };
                self.out.say("ended", &text, json!({ "by_peer": by_peer }));
            }
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

#[cfg(test)]
mod tests {
    #[test]
    fn trace_log_hides_credentials() {
        let msg = b"REGISTER sip:h SIP/2.0\r\nAuthorization: Digest username=\"a\", response=\"0123\"\r\n\
proxy-authorization: Digest x\r\nTo: <sip:a@h>\r\n\r\n";
        let out = super::redacted(msg);
        assert!(!out.contains("0123") && !out.contains("Digest"), "{out}");
        assert!(out.contains("Authorization: <redacted>") && out.contains("To: <sip:a@h>"));
    }
}
