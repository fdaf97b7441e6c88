//! Registration (RFC 3261 §10.2): REGISTER with Digest credentials, refresh before
//! the binding expires, keep-alives towards the proxy, removal with `Expires: 0`.

use std::time::{Duration, Instant};

use sip_core::message::{HeaderName, Message, NameAddr};

use crate::auth::Realm;
use crate::engine::{Event, Purpose, Sent, Ua, seen_address};
use crate::request::{self, Request};

/// After a failure of a registration that once succeeded, try again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where the registration stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing asked, or given up.
    #[default]
    Idle,
    /// A REGISTER is in flight.
    Pending,
    /// Bound; refresh at `refresh_at`, next keep-alive at `keepalive_at`.
    Registered {
        refresh_at: Instant,
        keepalive_at: Instant,
    },
    /// A refresh failed; try again then.
    RetryAt(Instant),
    /// The `Expires: 0` REGISTER is in flight.
    Unregistering,
}

/// The registration's dialog-like state: one Call-ID and a rising CSeq for every
/// REGISTER of this UA (RFC 3261 §10.2.4).
#[derive(Debug, Clone, Default)]
pub struct Registration {
    call_id: Option<String>,
    from_tag: String,
    cseq: u32,
    /// Lifetime asked for (raised by a 423's Min-Expires).
    expires: u32,
    pub phase: Phase,
    /// Whether a REGISTER ever succeeded: then failures are retried.
    ever: bool,
    /// A Contact to remove with the next REGISTER (our address changed).
    stale_contact: Option<String>,
    /// The REGISTER in flight followed an address change: accept its answer as it is
    /// (a NAT that changes the mapping on every request must not make a loop).
    moved: bool,
}

impl Registration {
    /// When the registration needs `handle_timeout`.
    pub fn timer(&self) -> Option<Instant> {
        match self.phase {
            Phase::Registered {
                refresh_at,
                keepalive_at,
            } => Some(refresh_at.min(keepalive_at)),
            Phase::RetryAt(t) => Some(t),
            Phase::Idle | Phase::Pending | Phase::Unregistering => None,
        }
    }
}

/// The lifetime the registrar granted our Contact: its `expires` parameter, else the
/// Expires header (RFC 3261 §10.2.4), else what we asked for.
fn granted(msg: &Message, contact: &str, asked: u32) -> u32 {
    let ours = msg.list(HeaderName::Contact).find_map(|c| {
        let na = NameAddr::parse(c)?;
        if !na.uri.eq_ignore_ascii_case(contact.as_bytes()) {
            return None;
        }
        std::str::from_utf8(na.param(b"expires")?)
            .ok()?
            .parse()
            .ok()
    });
    ours.or_else(|| msg.expires().ok().flatten())
        .unwrap_or(asked)
}

impl Ua {
    /// Registers our Contact with the registrar (and keeps it registered).
    pub fn register(&mut self, now: Instant) {
        if self.reg.expires == 0 {
            self.reg.expires = self.cfg.expires;
        }
        self.send_register(now, self.reg.expires, Purpose::Register);
    }

    /// Removes our binding (`Expires: 0`, RFC 3261 §10.2.2). [`Event::Unregistered`]
    /// follows, at once if nothing was registered.
    pub fn unregister(&mut self, now: Instant) {
        if matches!(self.reg.phase, Phase::Idle | Phase::Unregistering) && !self.reg.ever {
            self.reg.phase = Phase::Idle;
            self.emit(Event::Unregistered);
            return;
        }
        self.send_register(now, 0, Purpose::Unregister);
    }

    fn send_register(&mut self, now: Instant, expires: u32, purpose: Purpose) {
        let local = self.cfg.local.clone();
        let call_id = if let Some(c) = &self.reg.call_id {
            c.clone()
        } else {
            let c = request::call_id(&mut self.rng);
            self.reg.from_tag = request::tag(&mut self.rng);
            self.reg.call_id = Some(c.clone());
            c
        };
        self.reg.cseq += 1;
        let branch = self.new_branch();
        let aor = local.aor();
        let mut headers = vec![
            ("Contact", format!("<{}>", local.contact_uri())),
            ("Expires", expires.to_string()),
        ];
        if let Some(old) = self.reg.stale_contact.take() {
            headers.push(("Contact", format!("<{old}>;expires=0")));
        }
        let mut req = Request {
            method: "REGISTER",
            uri: format!("sip:{}", local.domain),
            via: local.via(&branch),
            from: format!("<{aor}>;tag={}", self.reg.from_tag),
            to: format!("<{aor}>"),
            call_id,
            cseq: self.reg.cseq,
            headers,
            body: None,
        };
        let tries = u8::from(self.preauthorize(&mut req, Realm::Server));
        self.reg.phase = if purpose == Purpose::Unregister {
            Phase::Unregistering
        } else {
            Phase::Pending
        };
        let dest = self.proxy_dest();
        self.send_request(now, branch, req, dest, purpose, tries);
    }

    pub(crate) fn on_register_response(
        &mut self,
        now: Instant,
        sent: &Sent,
        msg: &Message,
        status: u16,
    ) {
        match status {
            100..=199 => {}
            200..=299 if self.address_changed(msg) => {
                // The registrar sees us at another address (a NAT, a new interface):
                // bind that one and remove the old binding in one REGISTER.
                self.reg.cseq = self.reg.cseq.max(sent.req.cseq);
                if let Some(addr) = msg.top_via().ok().as_ref().and_then(seen_address) {
                    let old = self.cfg.local.contact_uri();
                    self.cfg.local.advertised = addr;
                    self.reg.stale_contact = Some(old);
                    self.reg.moved = true;
                    tracing::info!("our address changed: registering again");
                    self.send_register(now, self.reg.expires, Purpose::Register);
                }
            }
            200..=299 => {
                self.reg.moved = false;
                let expires = granted(msg, &self.cfg.local.contact_uri(), self.reg.expires);
                self.reg.cseq = self.reg.cseq.max(sent.req.cseq);
                // Refresh at half the lifetime (RFC 3261 §10.2.4 leaves the margin to us).
                let half = Duration::from_secs(u64::from(expires.max(2)) / 2);
                self.reg.phase = Phase::Registered {
                    refresh_at: now + half,
                    keepalive_at: now + self.cfg.keepalive,
                };
                self.reg.ever = true;
                self.emit(Event::Registered { expires });
            }
            401 | 407 => match self.retry_with_auth(now, sent, msg, status) {
                Some((_, req)) => self.reg.cseq = req.cseq,
                None => self.registration_failed(now, Some(status)),
            },
            423 => {
                // Interval Too Brief: ask again with Min-Expires (§10.2.8).
                let min = msg
                    .header(HeaderName::MinExpires)
                    .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
                match min {
                    Some(min) if min > self.reg.expires => {
                        self.reg.expires = min;
                        self.send_register(now, min, Purpose::Register);
                    }
                    _ => self.registration_failed(now, Some(status)),
                }
            }
            _ => self.registration_failed(now, Some(status)),
        }
    }

    /// Over UDP, whether the REGISTER's response shows an address other than ours
    /// (RFC 3581 §4). Over TCP our Contact names our listener, and over TLS the flow
    /// was learnt before the first REGISTER.
    fn address_changed(&self, msg: &Message) -> bool {
        self.cfg.local.transport == sip_core::transport::Transport::Udp
            && !self.reg.moved
            && msg
                .top_via()
                .ok()
                .as_ref()
                .and_then(seen_address)
                .is_some_and(|a| a != self.cfg.local.advertised)
    }

    fn registration_failed(&mut self, now: Instant, status: Option<u16>) {
        self.reg.phase = if self.reg.ever {
            Phase::RetryAt(now + RETRY_AFTER)
        } else {
            Phase::Idle
        };
        self.emit(Event::RegistrationFailed { status });
    }

    pub(crate) fn on_register_timeout(&mut self, now: Instant) {
        if self.reg.phase == Phase::Pending {
            self.registration_failed(now, None);
        }
    }

    pub(crate) fn on_unregister_done(&mut self) {
        if self.reg.phase == Phase::Unregistering {
            self.reg.phase = Phase::Idle;
            self.reg.ever = false;
            self.emit(Event::Unregistered);
        }
    }

    /// Refreshes, retries and keep-alives that are due.
    pub(crate) fn handle_registration_timer(&mut self, now: Instant) {
        match self.reg.phase {
            Phase::Registered {
                refresh_at,
                keepalive_at,
            } => {
                if refresh_at <= now {
                    self.send_register(now, self.reg.expires, Purpose::Register);
                } else if keepalive_at <= now {
                    self.reg.phase = Phase::Registered {
                        refresh_at,
                        keepalive_at: now + self.cfg.keepalive,
                    };
                    self.send_keepalive(now);
                }
            }
            Phase::RetryAt(t) if t <= now => {
                self.send_register(now, self.reg.expires, Purpose::Register);
            }
            _ => {}
        }
    }

    /// A keep-alive towards the proxy: a CRLF pair on a stream (RFC 5626 §3.5.1), an
    /// OPTIONS to the proxy on UDP (RFC 3261 §11: the proxy answers it itself).
    fn send_keepalive(&mut self, now: Instant) {
        let dest = self.proxy_dest();
        if dest.transport.is_reliable() {
            self.transmit(dest, bytes::Bytes::from_static(b"\r\n\r\n"));
            return;
        }
        self.send_options_to_proxy(now, Purpose::Keepalive);
    }
}
