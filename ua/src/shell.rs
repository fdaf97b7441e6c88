//! The tokio shell of the user agent: binds the SIP sockets (`sip-net`), drives the
//! [`Ua`] engine, runs each call's media and tells the user what happened.
//!
//! The loop is `sip_net::run`'s, with two more inputs the proxy does not have: the
//! user (signals, `--duration`) and the engine's events, which the commands
//! ([`crate::commands`]) act on (bind a media socket and answer, start and stop
//! audio, print).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use serde_json::{Value, json};
use sip_core::transport::Transport;
use sip_net::{Listen, NetConfig, Network, TlsSettings};
use tokio::sync::mpsc;

use crate::engine::{Event, Ua, UaConfig};
use crate::media::wav;
use crate::request::Local;
use crate::settings::Settings;

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
    /// The self-signed certificate generated for our TLS listener, if one was.
    pub generated_cert: Option<PathBuf>,
}

/// The TLS listener's certificate and key: `--tls-cert`/`--tls-key` when both are
/// given and exist; otherwise a self-signed pair for `ip` is written (into the
/// directory of `--tls-cert`, or a temporary directory of this process). The flag
/// says whether it was generated.
fn listener_identity(s: &Settings, ip: IpAddr) -> Result<(PathBuf, PathBuf, bool), ShellError> {
    if let (Some(c), Some(k)) = (&s.tls_cert, &s.tls_key)
        && c.exists()
        && k.exists()
    {
        return Ok((c.clone(), k.clone(), false));
    }
    let dir = s
        .tls_cert
        .as_deref()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(
            || std::env::temp_dir().join(format!("permit-ua-{}", std::process::id())),
            Path::to_path_buf,
        );
    let (cert, key) = sip_net::self_signed(&dir, &[ip.to_string()])?;
    Ok((cert, key, true))
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
    /// transport; a TLS proxy is reached over our own connection, plus a TLS listener
    /// for direct calls with `--listen tls:IP:PORT`) and starts listening for SIGINT
    /// and SIGTERM. `permit`: permit mode (docs/profile.md "The UA in permit mode").
    // One straight sequence of set-up steps (sockets, TLS, the engine's configuration).
    #[allow(clippy::too_many_lines)]
    pub async fn start(s: &Settings, max_calls: usize, permit: bool) -> Result<Self, ShellError> {
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
        let mut generated_cert = None;
        if transport == Transport::Tls {
            if s.listen.is_some() {
                let named = if ip.is_unspecified() {
                    route_ip(s.proxy_addr)
                } else {
                    ip
                };
                let (cert, key, generated) = listener_identity(s, named)?;
                let mut tls = sip_net::load_tls(&cert, &key)?;
                tls.ca.clone_from(&s.tls_ca);
                cfg.tls = Some(tls);
                listen.push(Listen {
                    transport,
                    addr: want,
                });
                generated_cert = generated.then_some(cert);
            } else {
                cfg.tls = Some(TlsSettings::client(s.tls_ca.clone()));
            }
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
            listener: (transport == Transport::Tls && s.listen.is_some()).then_some(advertised),
        };
        let mut ua_cfg = UaConfig::new(local, bind, s.proxy_addr);
        ua_cfg.password.clone_from(&s.password);
        ua_cfg.dtls = crate::media::dtls::handshake::local_fingerprint();
        ua_cfg.expires = s.expires;
        ua_cfg.max_calls = max_calls;
        ua_cfg.permit = permit;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ua_cfg.epoch = Some((Instant::now(), unix));
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
            generated_cert,
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
/// the response and cnonce are material for an offline guess), and permit tokens,
/// session secrets and SDES keys cut (never logged at any level): `Permit-Token`,
/// `Permit-Key`, `Permit-Upload` and `Permit-Download` values (URLs with tokens), `a=crypto` key parameters, and URI headers (a 302's Contact
/// embeds the token).
fn redacted(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            let name = &line[..line.find(':').unwrap_or(0)];
            if lower.starts_with("authorization:")
                || lower.starts_with("proxy-authorization:")
                || lower.starts_with("permit-token:")
                || lower.starts_with("permit-key:")
                || lower.starts_with("permit-upload:")
                || lower.starts_with("permit-download:")
            {
                format!("{name}: <redacted>")
            } else if lower.starts_with("a=crypto:") {
                let keep: Vec<&str> = line.splitn(3, ' ').take(2).collect();
                format!("{} <redacted>", keep.join(" "))
            } else if lower.contains("permit-token=") || lower.contains("permit-key=") {
                format!("{name}: <redacted: carries a permit token>")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Reads and checks `--play FILE.wav` (16-bit mono, 8/16/48 kHz); the file's bytes
/// are kept as they are, each call encodes them for its codec
/// (`media::codec::AudioEncoder`).
pub fn load_play(path: Option<&Path>) -> Result<Option<Arc<Vec<u8>>>, ShellError> {
    let Some(path) = path else { return Ok(None) };
    let bytes =
        std::fs::read(path).map_err(|e| ShellError::Wav(format!("{}: {e}", path.display())))?;
    wav::read_pcm(&bytes).map_err(|e| ShellError::Wav(format!("{}: {e}", path.display())))?;
    Ok(Some(Arc::new(bytes)))
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

    #[test]
    fn trace_log_hides_tokens_and_keys() {
        let msg = b"SIP/2.0 302 Moved\r\nContact: <sip:b@127.0.0.1:5071?Permit-Token=v1.1.9.SECRETTOKEN>\r\n\
Permit-Token: v1.1.9.SECRETTOKEN;caller=\"sip:a@h\"\r\nPermit-Key: SECRETKEY\r\n\
Permit-Upload: <http://h:8080/upload/ab?t=SECRETUP>\r\npermit-download: <http://h/files/ab?t=SECRETDOWN>\r\n\r\n\
v=0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:SECRETINLINE\r\n";
        let out = super::redacted(msg);
        assert!(!out.contains("SECRET"), "{out}");
        assert!(
            out.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 <redacted>"),
            "{out}"
        );
        assert!(out.contains("Permit-Key: <redacted>"), "{out}");
    }
}
