//! The sans-IO user agent: one value that takes received bytes, the time and the
//! user's commands, and hands back what to send, what happened and when to wake.
//!
//! # I/O contract (STYLE.md rule 1)
//!
//! - In: [`Ua::handle_received`] (one datagram or framed stream message),
//!   [`Ua::handle_timeout`], and commands (`register`, `unregister`, `call`,
//!   `answer`, `hangup`, `publish_permits`), each with `now`.
//! - Out: [`Ua::poll_transmit`] (bytes and their destination), [`Ua::poll_event`]
//!   ([`Event`]), [`Ua::poll_timeout`] (when to call `handle_timeout` next).
//! - Randomness (branches, tags, Call-IDs, cnonces, SDP session ids) comes from the
//!   rng handed to [`Ua::new`]. No clock, no socket.
//!
//! Transactions are `sip-core`'s four RFC 3261 §17 machines; this module is the
//! transaction user (§8, §12–§15): it matches responses to client transactions by
//! branch and CSeq method (§17.1.3), requests to server transactions by branch and
//! method (§17.2.3), and keeps registration, calls and list management on top.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use sip_core::message::{HeaderName, Message, Method, ResponseBuilder};
use sip_core::transaction::{
    ClientInvite, ClientNonInvite, ResponseAction, ServerInvite, ServerNonInvite, TimerConfig,
    TransactionEvent,
};
use sip_core::transport::{Received, Transmit, Transport};

use crate::auth::{Authorizer, Challenge, Realm};
use crate::call::Call;
use crate::outcome::CallOutcome;
use crate::permit::Permits;
use crate::policy::{self, Load};
use crate::register::Registration;
use crate::request::{self, Dest, Local, Request};
use crate::sdp::AudioOffer;

/// Methods this UA answers (RFC 3261 §20.5 `Allow`).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, NOTIFY";

/// A call's handle: its Call-ID.
pub type CallId = String;

/// A transaction key: branch and method (RFC 3261 §17.1.3, §17.2.3; CANCEL shares
/// the INVITE's branch).
pub(crate) type TxKey = (String, &'static str);

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct UaConfig {
    pub local: Local,
    /// The bound socket messages leave from (may be unspecified, `0.0.0.0:5070`).
    pub bind: SocketAddr,
    /// The outbound proxy: every out-of-dialog request goes there.
    pub proxy: SocketAddr,
    pub password: Option<String>,
    /// Requested registration lifetime, seconds.
    pub expires: u32,
    /// Simultaneous calls before the UA answers 486 (`--max-calls`).
    pub max_calls: usize,
    /// Keep-alive period towards the proxy while registered.
    pub keepalive: Duration,
    /// An outgoing call that rings longer than this is cancelled (unavailable).
    pub ring_timeout: Duration,
    pub timers: TimerConfig,
    /// Permit mode (docs/profile.md "The UA in permit mode"): an INVITE is accepted
    /// only with a permit token the proxy told us in its load query. Off: any INVITE
    /// is taken, as a stock phone does.
    pub permit: bool,
    /// Wall-clock time at an instant: (`now`, unix seconds then). Token expiries are
    /// unix seconds; the engine reads no clock of its own.
    pub epoch: Option<(Instant, u64)>,
    /// The audio codecs our offers list, in order of preference (`call --codec`).
    pub audio_offer: Vec<crate::media::codec::Codec>,
    /// Our DTLS certificate's fingerprint: offers of DTLS-SRTP (RFC 5763) are
    /// answered only when it is set (the shell makes the certificate).
    pub dtls: Option<crate::media::dtls::Fingerprint>,
    /// Our offers carry DTLS-SRTP instead of `a=crypto` (`call --dtls`).
    pub offer_dtls: bool,
}

impl UaConfig {
    /// Defaults for everything but identity and addresses.
    pub fn new(local: Local, bind: SocketAddr, proxy: SocketAddr) -> Self {
        Self {
            local,
            bind,
            proxy,
            password: None,
            expires: 600,
            max_calls: 1,
            keepalive: Duration::from_secs(30),
            ring_timeout: Duration::from_mins(1),
            timers: TimerConfig::default(),
            permit: false,
            epoch: None,
            audio_offer: crate::media::codec::OFFER.to_vec(),
            dtls: None,
            offer_dtls: false,
        }
    }
}

/// What happened, for the shell and the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// 2xx to our REGISTER; the binding lives `expires` seconds.
    Registered { expires: u32 },
    /// The REGISTER failed: a final status, or `None` for no response at all.
    RegistrationFailed { status: Option<u16> },
    /// Our binding was removed (or the attempt to remove it ended).
    Unregistered,
    /// A provisional response to our INVITE (180 Ringing, 183).
    CallProgress { call: CallId, status: u16 },
    /// An INVITE passed [`policy::accept_invite`]; answer it with [`Ua::answer`].
    IncomingCall {
        call: CallId,
        from: String,
        offer: AudioOffer,
    },
    /// An INVITE was refused with `status`.
    IncomingRefused { status: u16 },
    /// The call is up (UAC: 2xx and ACK sent; UAS: ACK received).
    CallConnected {
        call: CallId,
        remote_media: Option<SocketAddr>,
    },
    /// Our INVITE got no 2xx.
    CallFailed { call: CallId, outcome: CallOutcome },
    /// A connected call ended (BYE from the peer, or ours answered or timed out).
    CallEnded { call: CallId, by_peer: bool },
    /// We answered the proxy's load query (an OPTIONS) with `status`.
    LoadQuery { status: u16 },
    /// The final response to a permit-list PUBLISH.
    PermitList {
        status: u16,
        etag: Option<String>,
        body: String,
    },
    /// The permit-list PUBLISH got no response.
    PermitNoResponse,
    /// The answer to [`Ua::ping`]: a final status, or `None` for none at all.
    ProxyAnswered { status: Option<u16> },
    /// Store and forward ([`crate::inbox`]): the final answer to a request of
    /// [`Ua::store_send`], or an incoming MESSAGE / message-summary NOTIFY.
    Store(crate::inbox::StoreEvent),
}

pub(crate) enum ClientMachine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

/// What a client transaction is for: who gets its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    Register,
    Unregister,
    Invite(CallId),
    Cancel,
    Bye(CallId),
    Keepalive,
    Ping,
    Publish,
    /// A MESSAGE or SUBSCRIBE of store and forward, by its [`crate::inbox`] id.
    Store(u32),
}

/// What a client transaction sent, kept for its TU: a challenge is answered by
/// re-sending the request (even after a reliable transport terminated the
/// transaction at its final response).
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) req: Request,
    dest: Dest,
    purpose: Purpose,
    /// Challenges answered so far for this request (a second one for the same nonce
    /// means the password is wrong).
    pub(crate) auth_tries: u8,
}

pub(crate) struct ClientTx {
    machine: ClientMachine,
    sent: Sent,
}

enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

struct ServerTx {
    machine: ServerMachine,
    dest: Dest,
}

/// The user agent engine.
pub struct Ua {
    pub(crate) cfg: UaConfig,
    pub(crate) rng: StdRng,
    clients: HashMap<TxKey, ClientTx>,
    servers: HashMap<TxKey, ServerTx>,
    pub(crate) reg: Registration,
    pub(crate) calls: HashMap<CallId, Call>,
    /// Cached answers to the registrar's (401) and the proxy's (407) challenges, reused
    /// with the next nonce count on later requests (RFC 7616 §3.4).
    pub(crate) server_auth: Option<Authorizer>,
    pub(crate) proxy_auth: Option<Authorizer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Tokens and session secrets from the proxy's load queries.
    pub(crate) permits: Permits,
    /// Store and forward: ids of our requests, incoming MESSAGEs awaiting an answer.
    pub(crate) store: crate::inbox::StoreState,
}

/// The transaction-key name of a method (ACK matches its INVITE, §17.2.3).
pub(crate) fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Invite | Method::Ack => "INVITE",
        Method::Register => "REGISTER",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Options => "OPTIONS",
        Method::Publish => "PUBLISH",
        Method::Info => "INFO",
        Method::Update => "UPDATE",
        Method::Message => "MESSAGE",
        Method::Notify => "NOTIFY",
        Method::Subscribe => "SUBSCRIBE",
        Method::Refer => "REFER",
        Method::Prack => "PRACK",
        Method::Other(_) => "OTHER",
    }
}

impl Ua {
    pub fn new(cfg: UaConfig, rng: StdRng) -> Self {
        Self {
            cfg,
            rng,
            clients: HashMap::new(),
            servers: HashMap::new(),
            reg: Registration::default(),
            calls: HashMap::new(),
            server_auth: None,
            proxy_auth: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            permits: Permits::default(),
            store: crate::inbox::StoreState::default(),
        }
    }

    /// Unix seconds at `now` (from [`UaConfig::epoch`]).
    pub(crate) fn unix(&self, now: Instant) -> u64 {
        self.cfg.epoch.map_or(0, |(at, unix)| {
            unix + now.saturating_duration_since(at).as_secs()
        })
    }

    /// Whether a request came from our proxy: its address over our transport (for
    /// TLS, the connection we opened to it). Only the proxy tells us tokens and keys.
    pub(crate) fn is_from_proxy(&self, dest: &Dest) -> bool {
        dest.remote == self.cfg.proxy && dest.transport == self.cfg.local.transport
    }

    /// Permit tokens remembered from load queries.
    pub fn permits_remembered(&self) -> usize {
        self.permits.len()
    }

    pub fn config(&self) -> &UaConfig {
        &self.cfg
    }

    /// Calls in progress (any state), against `max_calls`.
    pub fn load(&self) -> Load {
        Load {
            active: self.calls.len(),
            max: self.cfg.max_calls,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Whether `poll_transmit` has something (for drivers that interleave engines).
    pub fn poll_transmit_pending(&self) -> bool {
        !self.transmits.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Nothing is in flight: no transaction, no call, no timer of the registration.
    pub fn is_idle(&self) -> bool {
        self.clients.is_empty() && self.calls.is_empty() && self.reg.timer().is_none()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self
            .clients
            .values()
            .filter_map(|t| match &t.machine {
                ClientMachine::Invite(m) => m.poll_timeout(),
                ClientMachine::NonInvite(m) => m.poll_timeout(),
            })
            .chain(self.servers.values().filter_map(|t| match &t.machine {
                ServerMachine::Invite(m) => m.poll_timeout(),
                ServerMachine::NonInvite(m) => m.poll_timeout(),
            }));
        tx.chain(self.reg.timer())
            .chain(self.calls.values().filter_map(Call::timer))
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TxKey> = self.clients.keys().cloned().collect();
        for key in due {
            if let Some(tx) = self.clients.get_mut(&key) {
                match &mut tx.machine {
                    ClientMachine::Invite(m) => m.handle_timeout(now),
                    ClientMachine::NonInvite(m) => m.handle_timeout(now),
                }
            }
            self.pump_client(now, &key);
        }
        let due: Vec<TxKey> = self.servers.keys().cloned().collect();
        for key in due {
            if let Some(tx) = self.servers.get_mut(&key) {
                match &mut tx.machine {
                    ServerMachine::Invite(m) => m.handle_timeout(now),
                    ServerMachine::NonInvite(m) => m.handle_timeout(now),
                }
            }
            self.pump_server(&key);
        }
        self.handle_registration_timer(now);
        self.handle_call_timers(now);
    }

    /// One received datagram or stream message. Unparseable input is dropped (and
    /// logged at debug level); nothing here panics on network input.
    pub fn handle_received(&mut self, now: Instant, rcv: Received) {
        let dest = Dest {
            transport: rcv.transport,
            local: rcv.local,
            remote: rcv.peer,
        };
        let msg = match Message::parse(rcv.data) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "dropped unparseable message");
                return;
            }
        };
        if msg.is_request() {
            self.on_request(now, msg, dest);
        } else {
            self.on_response(now, &msg);
        }
    }

    // ------------------------------------------------------------ sending

    pub(crate) fn emit(&mut self, e: Event) {
        self.events.push_back(e);
    }

    pub(crate) fn transmit(&mut self, dest: Dest, data: Bytes) {
        self.transmits.push_back(Transmit {
            transport: dest.transport,
            local: dest.local,
            dest: dest.remote,
            data,
        });
    }

    /// Where out-of-dialog requests go: the outbound proxy.
    pub(crate) fn proxy_dest(&self) -> Dest {
        Dest {
            transport: self.cfg.local.transport,
            local: self.cfg.bind,
            remote: self.cfg.proxy,
        }
    }

    /// The destination of `(transport, addr)` from our socket.
    pub(crate) fn dest_to(&self, hop: Option<(Transport, SocketAddr)>) -> Dest {
        match hop {
            Some((transport, remote)) if transport == self.cfg.local.transport => Dest {
                transport,
                local: self.cfg.bind,
                remote,
            },
            _ => self.proxy_dest(),
        }
    }

    pub(crate) fn new_branch(&mut self) -> String {
        request::branch(&mut self.rng)
    }

    /// Starts a client transaction for `req` towards `dest` (RFC 3261 §17.1).
    pub(crate) fn send_request(
        &mut self,
        now: Instant,
        branch: String,
        req: Request,
        dest: Dest,
        purpose: Purpose,
        auth_tries: u8,
    ) -> TxKey {
        let bytes = req.to_bytes();
        let reliable = dest.transport.is_reliable();
        let timers = self.cfg.timers;
        let machine = if req.method == "INVITE" {
            ClientMachine::Invite(ClientInvite::new(now, bytes, reliable, &timers))
        } else {
            ClientMachine::NonInvite(ClientNonInvite::new(now, bytes, reliable, &timers))
        };
        let key = (branch, req.method);
        let tx = ClientTx {
            machine,
            sent: Sent {
                req,
                dest,
                purpose,
                auth_tries,
            },
        };
        self.clients.insert(key.clone(), tx);
        self.pump_client(now, &key);
        key
    }

    /// Re-sends `tx`'s request with credentials for the challenge in `resp` (RFC 3261
    /// §22.2, §22.3: new branch, CSeq + 1, same Call-ID and tags). `false` when it
    /// cannot: no password, no usable challenge, or the same nonce refused twice.
    pub(crate) fn retry_with_auth(
        &mut self,
        now: Instant,
        tx: &Sent,
        resp: &Message,
        status: u16,
    ) -> Option<(TxKey, Request)> {
        let realm = Realm::of_status(status)?;
        let password = self.cfg.password.clone()?;
        let challenge = Challenge::pick(resp, realm)?;
        let cached = match realm {
            Realm::Server => &self.server_auth,
            Realm::Proxy => &self.proxy_auth,
        };
        let sent_same_nonce = tx.auth_tries > 0
            && cached
                .as_ref()
                .is_some_and(|a| a.challenge.nonce == challenge.nonce);
        if (sent_same_nonce && !challenge.stale) || tx.auth_tries >= 3 {
            return None;
        }
        let mut auth = Authorizer::new(challenge, realm);
        let mut req = tx.req.clone();
        let branch = self.new_branch();
        req.via = self.cfg.local.via(&branch);
        req.cseq += 1;
        req.headers
            .retain(|(n, _)| *n != "Authorization" && *n != "Proxy-Authorization");
        let cnonce = request::tag(&mut self.rng);
        let header = auth.authorize(
            &self.cfg.local.user,
            &password,
            req.method,
            &req.uri,
            &cnonce,
        );
        req.headers.push((header.0, header.1));
        match realm {
            Realm::Server => self.server_auth = Some(auth),
            Realm::Proxy => self.proxy_auth = Some(auth),
        }
        let key = self.send_request(
            now,
            branch,
            req.clone(),
            tx.dest,
            tx.purpose.clone(),
            tx.auth_tries + 1,
        );
        Some((key, req))
    }

    /// Adds cached credentials to a new request (RFC 7616 §3.4: the next nonce count),
    /// so a refresh does not take a challenge round trip. Returns whether it did.
    pub(crate) fn preauthorize(&mut self, req: &mut Request, realm: Realm) -> bool {
        let Some(password) = self.cfg.password.clone() else {
            return false;
        };
        let cnonce = request::tag(&mut self.rng);
        let user = self.cfg.local.user.clone();
        let auth = match realm {
            Realm::Server => self.server_auth.as_mut(),
            Realm::Proxy => self.proxy_auth.as_mut(),
        };
        let Some(auth) = auth else { return false };
        let header = auth.authorize(&user, &password, req.method, &req.uri, &cnonce);
        req.headers.push(header);
        true
    }

    /// Moves what a client transaction queued to the outbox and reacts to its events.
    fn pump_client(&mut self, now: Instant, key: &TxKey) {
        let Some(tx) = self.clients.get_mut(key) else {
            return;
        };
        let mut out = Vec::new();
        let mut events = Vec::new();
        match &mut tx.machine {
            ClientMachine::Invite(m) => {
                while let Some(d) = m.poll_transmit() {
                    out.push(d);
                }
                while let Some(e) = m.poll_event() {
                    events.push(e);
                }
            }
            ClientMachine::NonInvite(m) => {
                while let Some(d) = m.poll_transmit() {
                    out.push(d);
                }
                while let Some(e) = m.poll_event() {
                    events.push(e);
                }
            }
        }
        let dest = tx.sent.dest;
        for d in out {
            self.transmit(dest, d);
        }
        for e in events {
            match e {
                TransactionEvent::Timeout(_) | TransactionEvent::TransportError => {
                    if let Some(tx) = self.clients.remove(key) {
                        self.on_client_timeout(now, key, tx.sent.purpose);
                    }
                }
                TransactionEvent::Terminated => {
                    self.clients.remove(key);
                }
            }
        }
    }

    fn pump_server(&mut self, key: &TxKey) {
        let Some(tx) = self.servers.get_mut(key) else {
            return;
        };
        let mut out = Vec::new();
        let mut done = false;
        match &mut tx.machine {
            ServerMachine::Invite(m) => {
                while let Some(d) = m.poll_transmit() {
                    out.push(d);
                }
                while let Some(e) = m.poll_event() {
                    done |= e == TransactionEvent::Terminated;
                }
            }
            ServerMachine::NonInvite(m) => {
                while let Some(d) = m.poll_transmit() {
                    out.push(d);
                }
                while let Some(e) = m.poll_event() {
                    done |= e == TransactionEvent::Terminated;
                }
            }
        }
        let dest = tx.dest;
        for d in out {
            self.transmit(dest, d);
        }
        if done {
            self.servers.remove(key);
        }
    }

    fn on_client_timeout(&mut self, now: Instant, key: &TxKey, purpose: Purpose) {
        tracing::debug!(method = key.1, "client transaction timed out");
        match purpose {
            Purpose::Register => self.on_register_timeout(now),
            Purpose::Unregister => self.on_unregister_done(),
            Purpose::Invite(call) => self.on_invite_timeout(&call),
            Purpose::Bye(call) => self.on_bye_done(&call),
            Purpose::Publish => self.emit(Event::PermitNoResponse),
            Purpose::Ping => self.emit(Event::ProxyAnswered { status: None }),
            Purpose::Store(id) => self.on_store_timeout(id),
            Purpose::Cancel | Purpose::Keepalive => {}
        }
    }

    /// Over TLS we have no listener: the proxy reaches us over the connection we
    /// opened, whose local port only the proxy's `received`/`rport` tell us
    /// (RFC 3581 §4). Via and Contact then name that flow, so that a request sent to
    /// our Contact reuses it (RFC 3261 §18.2.2 connection reuse, RFC 5626 §5.3).
    fn learn_flow(&mut self, via: &sip_core::message::Via<'_>) {
        let Some(addr) = seen_address(via) else {
            return;
        };
        if addr != self.cfg.local.advertised {
            tracing::debug!(%addr, "our TLS flow's address");
            self.cfg.local.advertised = addr;
        }
    }

    /// An OPTIONS to the proxy (RFC 3261 §11): whether it answers, and over TLS the
    /// address of our flow. Outcome: [`Event::ProxyAnswered`].
    pub fn ping(&mut self, now: Instant) {
        self.send_options_to_proxy(now, Purpose::Ping);
    }

    /// `OPTIONS sip:DOMAIN` to the proxy, which answers it itself.
    pub(crate) fn send_options_to_proxy(&mut self, now: Instant, purpose: Purpose) {
        let local = self.cfg.local.clone();
        let branch = self.new_branch();
        let req = Request {
            method: "OPTIONS",
            uri: format!("sip:{}", local.domain),
            via: local.via(&branch),
            from: format!("<{}>;tag={}", local.aor(), request::tag(&mut self.rng)),
            to: format!("<sip:{}>", local.domain),
            call_id: request::call_id(&mut self.rng),
            cseq: 1,
            headers: vec![],
            body: None,
        };
        let dest = self.proxy_dest();
        self.send_request(now, branch, req, dest, purpose, 0);
    }

    // ------------------------------------------------------------ responses

    fn on_response(&mut self, now: Instant, msg: &Message) {
        let (Some(status), Ok(via), Ok(cseq)) = (msg.status(), msg.top_via(), msg.cseq()) else {
            return;
        };
        let (Some(branch), method) = (via.branch(), method_name(&cseq.method)) else {
            return;
        };
        let key: TxKey = (String::from_utf8_lossy(branch).into_owned(), method);
        if self.cfg.local.transport == Transport::Tls && self.clients.contains_key(&key) {
            self.learn_flow(&via);
        }
        let Some(tx) = self.clients.get_mut(&key) else {
            // A 2xx retransmission after the INVITE transaction ended: ACK again.
            if method == "INVITE" && (200..300).contains(&status) {
                self.on_stray_2xx(msg);
            }
            return;
        };
        let action = match &mut tx.machine {
            ClientMachine::Invite(m) => {
                let req = &tx.sent.req;
                m.handle_response(now, status, || ack_for_failure(req, msg))
            }
            ClientMachine::NonInvite(m) => m.handle_response(now, status),
        };
        let sent = tx.sent.clone();
        let purpose = sent.purpose.clone();
        self.pump_client(now, &key);
        if action != Ok(ResponseAction::PassUp) {
            return;
        }
        match purpose {
            Purpose::Register => self.on_register_response(now, &sent, msg, status),
            Purpose::Unregister => {
                if status >= 200 {
                    self.on_unregister_done();
                }
            }
            Purpose::Invite(call) => self.on_invite_response(now, &call, &key, &sent, msg, status),
            Purpose::Bye(call) => {
                if status >= 200 {
                    self.on_bye_done(&call);
                }
            }
            Purpose::Publish => self.on_publish_response(now, &sent, msg, status),
            Purpose::Ping => {
                if status >= 200 {
                    self.emit(Event::ProxyAnswered {
                        status: Some(status),
                    });
                }
            }
            Purpose::Store(id) => self.on_store_response(now, &sent, msg, status, id),
            Purpose::Cancel | Purpose::Keepalive => {}
        }
    }

    // ------------------------------------------------------------ requests

    fn on_request(&mut self, now: Instant, msg: Message, dest: Dest) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        if let Err(e) = msg.validate() {
            if method != Method::Ack {
                let reason = e.to_string();
                let resp = ResponseBuilder::new(&msg, 400, &reason).to_vec();
                self.transmit(dest, resp.into());
            }
            return;
        }
        let branch = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let name = method_name(&method);
        let key: TxKey = (branch, name);
        if method == Method::Ack {
            self.on_ack(now, &key, &msg);
            return;
        }
        if let Some(tx) = self.servers.get_mut(&key) {
            // A retransmission (RFC 3261 §17.2.1, §17.2.2).
            let _ = match &mut tx.machine {
                ServerMachine::Invite(m) => m.handle_request_retransmission(now),
                ServerMachine::NonInvite(m) => m.handle_request_retransmission(now),
            };
            self.pump_server(&key);
            return;
        }
        let reliable = dest.transport.is_reliable();
        let timers = self.cfg.timers;
        let machine = if method == Method::Invite {
            ServerMachine::Invite(ServerInvite::new(now, reliable, &timers))
        } else {
            ServerMachine::NonInvite(ServerNonInvite::new(now, reliable, &timers))
        };
        self.servers.insert(key.clone(), ServerTx { machine, dest });
        match method {
            Method::Invite if msg.to_tag().is_none() => self.on_invite(now, &key, msg),
            Method::Invite => self.on_reinvite(now, &key, &msg),
            Method::Bye => self.on_bye(now, &key, &msg),
            Method::Cancel => self.on_cancel(now, &key, &msg),
            Method::Options => {
                let (status, reason) = if msg.to_tag().is_some() {
                    (200, "OK")
                } else {
                    policy::answer_options(self.load())
                };
                // The load query tells us the token (and key) of the call to come;
                // only the proxy may (a stranger's OPTIONS would mint its own).
                if status == 200 && msg.to_tag().is_none() {
                    if self.is_from_proxy(&dest) {
                        let unix = self.unix(now);
                        self.permits.handle_load_query(&msg, unix);
                    } else if msg.header(HeaderName::PermitToken).is_some() {
                        tracing::info!(
                            source = %crate::permit::redact(dest.remote),
                            "Permit-Token in an OPTIONS not from the proxy: ignored"
                        );
                    }
                }
                let resp = ResponseBuilder::new(&msg, status, reason)
                    .header("Allow", ALLOW.as_bytes())
                    .header("Accept", b"application/sdp")
                    .to_vec();
                self.respond(now, &key, status, resp.into());
                if msg.to_tag().is_none() {
                    self.emit(Event::LoadQuery { status });
                }
            }
            Method::Message | Method::Notify => self.on_store_request(now, &key, msg, dest),
            // In a dialog of ours, a method we do not take (UPDATE, INFO, …): 405 with
            // Allow (RFC 3261 §8.2.1); outside any dialog of ours, 481 (§12.2.2).
            _ if msg.to_tag().is_some() && self.call_of(&msg).is_none() => {
                let resp = ResponseBuilder::new(&msg, 481, "Call/Transaction Does Not Exist");
                self.respond(now, &key, 481, resp.to_vec().into());
            }
            _ => {
                let resp = ResponseBuilder::new(&msg, 405, "Method Not Allowed")
                    .header("Allow", ALLOW.as_bytes());
                self.respond(now, &key, 405, resp.to_vec().into());
            }
        }
    }

    /// Sends a response through the server transaction `key`.
    pub(crate) fn respond(&mut self, now: Instant, key: &TxKey, status: u16, resp: Bytes) {
        let Some(tx) = self.servers.get_mut(key) else {
            return;
        };
        let result = match &mut tx.machine {
            ServerMachine::Invite(m) => m.send_response(now, status, resp),
            ServerMachine::NonInvite(m) => m.send_response(now, status, resp),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, status, "response not sent");
        }
        self.pump_server(key);
    }

    /// Where the responses of server transaction `key` go.
    pub(crate) fn server_dest(&self, key: &TxKey) -> Option<Dest> {
        self.servers.get(key).map(|t| t.dest)
    }

    /// Whether the INVITE server transaction `key` is still there (for CANCEL, §9.2).
    pub(crate) fn has_server(&self, key: &TxKey) -> bool {
        self.servers.contains_key(key)
    }

    fn on_ack(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        if let Some(tx) = self.servers.get_mut(key)
            && let ServerMachine::Invite(m) = &mut tx.machine
        {
            let pass = m.handle_ack(now);
            self.pump_server(key);
            if pass != Ok(sip_core::transaction::AckAction::PassUp) {
                return; // the ACK of a non-2xx final, absorbed (§17.2.1)
            }
        }
        // The ACK for a 2xx is its own transaction (§13.3.1.4, §17.1.1.3).
        self.on_dialog_ack(msg);
    }
}

/// Our address as the peer saw it: `received` (or the sent-by host) and `rport`
/// (or the sent-by port) of our top Via in a response (RFC 3581 §4).
pub(crate) fn seen_address(via: &sip_core::message::Via<'_>) -> Option<SocketAddr> {
    let ip_of = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    };
    let ip = match via.received() {
        Some(r) => ip_of(r)?,
        None => ip_of(via.host)?,
    };
    let port = via.rport().flatten().or(via.port)?;
    Some(SocketAddr::new(ip, port))
}

/// The ACK for a 300–699 final response (RFC 3261 §17.1.1.3): the INVITE's
/// Request-URI, top Via, From, Call-ID, CSeq number and Route, the response's To.
fn ack_for_failure(req: &Request, resp: &Message) -> Bytes {
    let to = resp.header(HeaderName::To).map_or_else(
        || req.to.clone(),
        |t| String::from_utf8_lossy(t).into_owned(),
    );
    Request {
        method: "ACK",
        uri: req.uri.clone(),
        via: req.via.clone(),
        from: req.from.clone(),
        to,
        call_id: req.call_id.clone(),
        cseq: req.cseq,
        headers: req
            .headers
            .iter()
            .filter(|(n, _)| *n == "Route")
            .cloned()
            .collect(),
        body: None,
    }
    .to_bytes()
}

impl sip_net::Engine for Ua {
    fn handle_received(&mut self, now: Instant, msg: Received) {
        Ua::handle_received(self, now, msg);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Ua::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Ua::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Ua::poll_timeout(self)
    }
}
