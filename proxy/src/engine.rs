//! The registrar/stateful-proxy engine (RFC 3261 §16), sans-IO: received bytes and time
//! in, transmits and the next wake-up out. The only I/O it performs is the synchronous
//! write-through of bindings to the location store before a REGISTER is answered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sip_core::message::{
    Forward, HeaderName, Message, Method, NameAddr, ParseError, ResponseBuilder, SipUri,
};
use sip_core::transaction::{
    AckAction, ClientInvite, ClientNonInvite, ResponseAction, ServerInvite, ServerNonInvite,
    TimerConfig, Transaction, TransactionEvent,
};
use sip_core::transport::{Received, Transmit, Transport};

use crate::auth::{Auth, Decision, Role};
use crate::gate::{Dialogs, GateSettings, QueryOutcome};
use crate::location::{Location, aor_key};
use crate::manage;
use crate::permits::{Aor, Permits};
use crate::registrar::{Registered, RegistrarConfig, handle_register};
use crate::route::{BRANCH_PREFIX, Flow, Identity, branch_for, loop_hash, received_via, resolve};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub identity: Identity,
    pub registrar: RegistrarConfig,
    pub timers: TimerConfig,
    /// Timer C (§16.6 item 11): an INVITE branch without a final response this long
    /// after its last provisional is cancelled.
    pub timer_c: Duration,
    /// How often expired bindings are purged from memory and storage.
    pub purge_interval: Duration,
    pub gate: GateSettings,
    /// Sequential forking: a branch that has not answered even provisionally this long
    /// is given up for the next target (a stale binding must not hold the call for
    /// Timer B). Only while targets remain.
    pub branch_no_answer: Duration,
}

impl ProxyConfig {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            registrar: RegistrarConfig::default(),
            timers: TimerConfig::default(),
            timer_c: Duration::from_mins(3),
            purge_interval: Duration::from_mins(1),
            gate: GateSettings::default(),
            branch_no_answer: Duration::from_secs(4),
        }
    }
}

/// The request was answered by a policy; nothing more to do with it.
#[derive(Debug, Clone, Copy)]
struct Answered;

/// What the engine counted (exposed for logs and metrics).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub received: u64,
    pub unparsable: u64,
    pub bad_requests: u64,
    pub stray_responses: u64,
    pub forwarded_requests: u64,
    pub registrations: u64,
    /// Requests refused by the gate (caller not permitted, or unknown callee).
    pub gate_refused: u64,
    /// Calls answered 486 by the load check (limit reached or callee busy).
    pub busy: u64,
}

/// RFC 3261 §17.2.3 matching: the branch plus INVITE/ACK vs CANCEL vs others.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TxKey {
    branch: Bytes,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Invite,
    Cancel,
    Other,
}

impl Kind {
    fn of(m: &Method) -> Self {
        match m {
            Method::Invite | Method::Ack => Self::Invite,
            Method::Cancel => Self::Cancel,
            _ => Self::Other,
        }
    }
}

enum ServerTx {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerTx {
    fn machine(&mut self) -> &mut dyn Transaction {
        match self {
            Self::Invite(t) => t,
            Self::NonInvite(t) => t,
        }
    }
}

struct ServerEntry {
    tx: ServerTx,
    flow: Flow,
    ctx: Option<u64>,
    /// The instant of this transaction's live entry in the timer heap.
    scheduled: Option<Instant>,
}

enum ClientTx {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientTx {
    fn machine(&mut self) -> &mut dyn Transaction {
        match self {
            Self::Invite(t) => t,
            Self::NonInvite(t) => t,
        }
    }
}

/// Moves a transaction's transmits to `out` (towards `flow`); returns its events
/// (terminated, failed) and its next wake-up.
fn drain_machine(
    out: &mut VecDeque<Transmit>,
    flow: Flow,
    m: &mut dyn Transaction,
) -> (bool, bool, Option<Instant>) {
    while let Some(data) = m.poll_transmit() {
        out.push_back(Transmit {
            transport: flow.transport,
            local: flow.local,
            dest: flow.remote,
            data,
        });
    }
    let (mut terminated, mut failed) = (false, false);
    while let Some(ev) = m.poll_event() {
        match ev {
            TransactionEvent::Terminated => terminated = true,
            TransactionEvent::Timeout(_) | TransactionEvent::TransportError => failed = true,
        }
    }
    (terminated, failed, m.poll_timeout())
}

struct ClientEntry {
    tx: ClientTx,
    flow: Flow,
    ctx: Option<u64>,
    purpose: Purpose,
    /// The request as sent, parsed lazily for ACK/CANCEL generation.
    sent: Bytes,
    /// The instant of this transaction's live entry in the timer heap.
    scheduled: Option<Instant>,
}

/// Why a client transaction was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A branch of the proxied request.
    Branch,
    /// The load query (OPTIONS) to the callee before routing an INVITE.
    LoadQuery,
    /// A CANCEL of a branch.
    Cancel,
}

/// One forwarding target: the Request-URI to use and the first hop.
#[derive(Debug, Clone)]
struct Target {
    /// New Request-URI (a registered contact); `None` keeps the received one.
    uri: Option<String>,
    /// Route values to prepend (Path of the binding, RFC 3327).
    route: Vec<String>,
    transport: Transport,
    dest: std::net::SocketAddr,
    /// From the binding: the UA's call limit and whether it wants the load query.
    max_calls: Option<u32>,
    load_query: bool,
}

/// The response context of a proxied request (§16.7), serving sequential forking.
struct Context {
    server: TxKey,
    request: Message,
    targets: VecDeque<Target>,
    /// Client transaction of the branch in progress.
    branch: Option<TxKey>,
    branches: u32,
    provisional_seen: bool,
    cancel_pending: bool,
    best: Option<Message>,
    answered: bool,
    cancelled: bool,
    timer_c: Option<Instant>,
    /// The local callee AOR, for gated requests (dialog counting).
    callee: Option<String>,
    /// Load queries still unanswered, while the INVITE waits for them.
    querying: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    Server(TxKey),
    Client(TxKey),
    TimerC(u64),
    /// The load query's deadline.
    Query(u64),
    /// A sequential-forking branch (context, branch number) without any answer.
    Branch(u64, u32),
    Purge,
}

/// The proxy engine.
pub struct Proxy {
    cfg: ProxyConfig,
    location: Location,
    server: HashMap<TxKey, ServerEntry>,
    client: HashMap<TxKey, ClientEntry>,
    contexts: HashMap<u64, Context>,
    heap: BinaryHeap<Reverse<(Instant, Wake)>>,
    out: VecDeque<Transmit>,
    rng: StdRng,
    auth: Auth,
    permits: Permits,
    dialogs: Dialogs,
    /// `now` ↔ Unix time, fixed at start (binding expiry is wall-clock time).
    epoch: (Instant, u64),
    next_id: u64,
    pub stats: Stats,
}

const ALLOW: &[u8] = b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, PUBLISH";

impl Proxy {
    /// `now` and `unix_now` are read once by the shell; the engine never reads a clock.
    pub fn new(
        cfg: ProxyConfig,
        location: Location,
        auth: Auth,
        permits: Permits,
        now: Instant,
        unix_now: u64,
        seed: u64,
    ) -> Self {
        let mut p = Self {
            cfg,
            location,
            auth,
            permits,
            dialogs: Dialogs::default(),
            server: HashMap::new(),
            client: HashMap::new(),
            contexts: HashMap::new(),
            heap: BinaryHeap::new(),
            out: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            epoch: (now, unix_now),
            next_id: 0,
            stats: Stats::default(),
        };
        p.heap
            .push(Reverse((now + p.cfg.purge_interval, Wake::Purge)));
        p
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// Bindings held: (AORs, bindings).
    pub fn location_counts(&self) -> (usize, usize) {
        self.location.counts()
    }

    /// Entries in the timer heap (for tests and metrics): at most a few per live
    /// transaction or context.
    pub fn timers_pending(&self) -> usize {
        self.heap.len()
    }

    /// Transactions and contexts alive (for tests and metrics).
    pub fn live(&self) -> (usize, usize, usize) {
        (self.server.len(), self.client.len(), self.contexts.len())
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn tag(&mut self) -> String {
        format!("{:08x}", self.rng.random::<u32>())
    }

    pub fn handle_received(&mut self, now: Instant, rx: Received) {
        self.stats.received += 1;
        let flow = Flow {
            transport: rx.transport,
            local: rx.local,
            remote: rx.peer,
        };
        if rx.data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return; // keep-alive (RFC 5626 §4.4.1)
        }
        let msg = match Message::parse(rx.data.clone()) {
            Ok(m) => m,
            Err(ParseError::ContentLengthMismatch) if !flow.transport.is_reliable() => {
                // RFC 3261 §18.3: a datagram shorter than its Content-Length gets a 400.
                self.stats.bad_requests += 1;
                if let Ok(m) = Message::parse_truncated(rx.data)
                    && m.is_request()
                    && m.method() != Some(&Method::Ack)
                    && m.top_via().is_ok()
                {
                    self.reply_stateless(&m, flow, 400, "Content-Length Mismatch");
                }
                return;
            }
            Err(e) => {
                self.stats.unparsable += 1;
                tracing::debug!(error = %e, "unparsable message dropped");
                return;
            }
        };
        if msg.is_request() {
            self.handle_request(now, msg, flow);
        } else {
            self.handle_response(now, &msg);
        }
    }

    fn send(&mut self, flow: Flow, data: Bytes) {
        self.out.push_back(Transmit {
            transport: flow.transport,
            local: flow.local,
            dest: flow.remote,
            data,
        });
    }

    /// A response sent without a transaction (to malformed requests, §16.3 / §8.2).
    fn reply_stateless(&mut self, req: &Message, flow: Flow, status: u16, reason: &str) {
        let tag = self.tag();
        let via = received_via(req, flow.remote);
        let mut b = ResponseBuilder::new(req, status, reason).to_tag(tag.as_bytes());
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        let bytes = b.to_vec();
        self.send(flow, bytes.into());
    }

    fn handle_request(&mut self, now: Instant, msg: Message, flow: Flow) {
        if let Err(e) = msg.validate() {
            self.stats.bad_requests += 1;
            if msg.top_via().is_ok() && msg.method() != Some(&Method::Ack) {
                self.reply_stateless(&msg, flow, 400, &e.to_string());
            }
            return;
        }
        let Some(branch) = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .map(|b| msg.bytes().slice_ref(b))
        else {
            self.stats.bad_requests += 1;
            if msg.method() != Some(&Method::Ack) {
                self.reply_stateless(&msg, flow, 400, "Missing Via Branch");
            }
            return;
        };
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let key = TxKey {
            branch,
            kind: Kind::of(&method),
        };
        match method {
            Method::Ack => return self.handle_ack(now, &key, &msg, flow),
            Method::Cancel => return self.handle_cancel(now, key, &msg, flow),
            _ => {}
        }
        if let Some(entry) = self.server.get_mut(&key) {
            let _ = match &mut entry.tx {
                ServerTx::Invite(t) => t.handle_request_retransmission(now),
                ServerTx::NonInvite(t) => t.handle_request_retransmission(now),
            };
            self.drain_server(now, &key);
            return;
        }
        let reliable = flow.transport.is_reliable();
        let tx = if method == Method::Invite {
            ServerTx::Invite(ServerInvite::new(now, reliable, &self.cfg.timers))
        } else {
            ServerTx::NonInvite(ServerNonInvite::new(now, reliable, &self.cfg.timers))
        };
        self.server.insert(
            key.clone(),
            ServerEntry {
                tx,
                flow,
                ctx: None,
                scheduled: None,
            },
        );
        if method == Method::Invite {
            // §16.2: a stateful proxy sends 100 Trying for an INVITE at once.
            let via = received_via(&msg, flow.remote);
            let mut b = ResponseBuilder::new(&msg, 100, "Trying");
            if let Some(v) = &via {
                b = b.top_via(v.as_bytes());
            }
            let trying = b.to_vec();
            self.respond(now, &key, 100, trying.into());
        }
        self.route_request(now, key, msg);
    }

    /// Sends a response through the server transaction `key`.
    fn respond(&mut self, now: Instant, key: &TxKey, status: u16, bytes: Bytes) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let r = match &mut entry.tx {
            ServerTx::Invite(t) => t.send_response(now, status, bytes),
            ServerTx::NonInvite(t) => t.send_response(now, status, bytes),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, status, "response not sent");
        }
        self.drain_server(now, key);
    }

    /// A locally generated final response to the request of server transaction `key`.
    fn reply(
        &mut self,
        now: Instant,
        key: &TxKey,
        req: &Message,
        status: u16,
        reason: &str,
        headers: &[(&str, &[u8])],
    ) {
        let tag = self.tag();
        let via = self
            .server
            .get(key)
            .and_then(|e| received_via(req, e.flow.remote));
        let mut b = ResponseBuilder::new(req, status, reason).to_tag(tag.as_bytes());
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        for (n, v) in headers {
            b = b.header(n, v);
        }
        let bytes = b.to_vec();
        self.respond(now, key, status, bytes.into());
    }

    fn route_request(&mut self, now: Instant, key: TxKey, msg: Message) {
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let mf = msg.max_forwards().ok().flatten().unwrap_or(70);
        let ruri = msg.request_uri().unwrap_or_default();
        let Some(uri) = SipUri::parse(ruri) else {
            return self.reply(now, &key, &msg, 416, "Unsupported URI Scheme", &[]);
        };
        let ruri_is_us = self.cfg.identity.is_us(&uri);
        let routes: Vec<&[u8]> = msg.list(HeaderName::Route).collect();
        let own_routes = own_routes(&self.cfg.identity, &routes);
        let remaining = &routes[own_routes..];
        let for_proxy_itself = ruri_is_us && uri.user.is_none() && remaining.is_empty();

        if mf == 0 && !(for_proxy_itself && method == Method::Options) {
            return self.reply(now, &key, &msg, 483, "Too Many Hops", &[]);
        }
        // §16.3 item 4: our own Via with this request's loop hash means it came back unchanged.
        let hash = loop_hash(&msg);
        let prefix = branch_for(hash);
        let looped = msg.vias().filter_map(Result::ok).any(|v| {
            v.branch().is_some_and(|b| b.starts_with(prefix.as_bytes()))
                && self.cfg.identity.is_own_sent_by(v.host, v.port)
        });
        if looped {
            return self.reply(now, &key, &msg, 482, "Loop Detected", &[]);
        }
        if for_proxy_itself || (ruri_is_us && method == Method::Register && remaining.is_empty()) {
            return self.handle_local(now, key, msg, &method);
        }
        let gated = ruri_is_us && remaining.is_empty();
        if gated && method == Method::Publish && uri.user.is_some() && manage::is_management(&msg) {
            return self.handle_manage(now, key, &msg, &uri);
        }
        let Ok(callee) = self.admit(now, &key, &msg, &method, &uri, gated) else {
            return;
        };
        let targets = match self.targets(now, &uri, ruri, ruri_is_us, remaining) {
            Ok(t) => t,
            Err((status, reason)) => return self.reply(now, &key, &msg, status, reason, &[]),
        };
        if targets.is_empty() {
            return self.reply(now, &key, &msg, 480, "Temporarily Unavailable", &[]);
        }
        let Ok(query) = self.load_check(now, &key, &msg, callee.as_deref(), &targets) else {
            return;
        };
        let ctx_id = self.id();
        if let Some(e) = self.server.get_mut(&key) {
            e.ctx = Some(ctx_id);
        }
        self.contexts.insert(
            ctx_id,
            Context {
                server: key,
                request: msg,
                targets,
                branch: None,
                branches: 0,
                provisional_seen: false,
                cancel_pending: false,
                best: None,
                answered: false,
                cancelled: false,
                timer_c: None,
                callee,
                querying: None,
            },
        );
        if query {
            self.start_load_query(now, ctx_id);
        } else {
            self.try_next_target(now, ctx_id, hash);
        }
    }

    /// PUBLISH of a callee's own list (docs/profile.md "Managing the list"): the
    /// request is authenticated as for the registrar (401) and only the owner of the
    /// AOR may change it (403 otherwise, and without authentication).
    fn handle_manage(&mut self, now: Instant, key: TxKey, msg: &Message, uri: &SipUri<'_>) {
        let Some(flow) = self.server.get(&key).map(|e| e.flow) else {
            return;
        };
        let Ok(who) = self.authenticate(now, &key, msg, flow, Role::Registrar) else {
            return;
        };
        let user = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or_default();
        let owner = Aor::parse(&format!("{user}@{}", self.cfg.identity.domain));
        let (Some(who), Ok(owner)) = (who, owner) else {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        };
        if who.username != user {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        }
        let r = manage::handle_publish(&mut self.permits, &owner, msg);
        let tag = self.tag();
        let mut b = ResponseBuilder::new(msg, r.status, r.reason).to_tag(tag.as_bytes());
        for (n, v) in &r.headers {
            if *n != "Content-Type" {
                b = b.header(n, v.as_bytes());
            }
        }
        if let Some(body) = &r.body {
            b = b.body(manage::CONTENT_TYPE.as_bytes(), body.as_bytes());
        }
        let bytes = b.to_vec();
        self.respond(now, &key, r.status, bytes.into());
    }

    /// Authentication and the gate, before anything about the callee is looked up:
    /// out-of-dialog requests that would reach a user are authenticated (§22.3), then
    /// INVITE, MESSAGE and SUBSCRIBE to a local callee pass only for a permitted caller
    /// (403 otherwise, the same for an unknown callee). Returns the local callee's AOR
    /// for gated requests.
    fn admit(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        method: &Method,
        uri: &SipUri<'_>,
        local_callee: bool,
    ) -> Result<Option<String>, Answered> {
        let out_of_dialog = msg.to_tag().is_none();
        let challenged = out_of_dialog
            && matches!(
                method,
                Method::Invite
                    | Method::Message
                    | Method::Subscribe
                    | Method::Publish
                    | Method::Refer
                    | Method::Options
            );
        let mut who = None;
        if challenged {
            let flow = self.server.get(key).map(|e| e.flow).ok_or(Answered)?;
            who = self.authenticate(now, key, msg, flow, Role::Proxy)?;
        }
        let gated = out_of_dialog
            && local_callee
            && matches!(method, Method::Invite | Method::Message | Method::Subscribe);
        let domain = self.cfg.identity.domain.to_ascii_lowercase();
        let callee = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .filter(|_| gated)
            .map(|u| format!("{u}@{domain}"));
        if let (Some(callee), Some(who), true) = (&callee, &who, self.cfg.gate.enabled) {
            let from = format!("{}@{domain}", who.username);
            if !self.permits.is_permitted(callee, &from) {
                self.stats.gate_refused += 1;
                tracing::debug!("gate: caller not permitted (or unknown callee)");
                self.reply(now, key, msg, 403, "Forbidden", &[]);
                return Err(Answered);
            }
        }
        Ok(callee)
    }

    /// The load check of a gated INVITE: 486 at once when the callee's advertised call
    /// limit is reached; otherwise whether to ask it with OPTIONS first.
    fn load_check(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        callee: Option<&str>,
        targets: &VecDeque<Target>,
    ) -> Result<bool, Answered> {
        let (Some(callee), true, Some(Method::Invite)) =
            (callee, self.cfg.gate.enabled, msg.method())
        else {
            return Ok(false);
        };
        let limit = targets.iter().filter_map(|t| t.max_calls).min();
        if limit.is_some_and(|l| self.dialogs.active(callee) >= l) {
            self.stats.busy += 1;
            self.reply(now, key, msg, 486, "Busy Here", &[]);
            return Err(Answered);
        }
        Ok(self.cfg.gate.load_query && targets.iter().all(|t| t.load_query))
    }

    /// Sends OPTIONS (RFC 3261 §11) to every target of the context: its own Call-ID,
    /// tag and branch, and nothing about the caller. The INVITE waits for the answers
    /// until the query deadline.
    fn start_load_query(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let targets: Vec<Target> = ctx.targets.iter().cloned().collect();
        ctx.querying = Some(u32::try_from(targets.len()).unwrap_or(u32::MAX));
        let deadline = now + self.cfg.gate.query_timeout;
        self.heap.push(Reverse((deadline, Wake::Query(ctx_id))));
        for t in targets {
            let Some(local) = self.cfg.identity.local_for(t.transport, t.dest) else {
                continue;
            };
            let branch = format!("{BRANCH_PREFIX}q{:016x}", self.rng.random::<u64>());
            let tag = self.tag();
            let call_id = format!("{:032x}@permit", self.rng.random::<u128>());
            let uri = t
                .uri
                .clone()
                .unwrap_or_else(|| format!("sip:{}", Identity::sent_by(t.dest)));
            let domain = &self.cfg.identity.domain;
            let mut req = format!(
                "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:permit@{domain}>;tag={tag}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n",
                t.transport.via_token(),
                Identity::sent_by(local)
            );
            for r in &t.route {
                req.push_str("Route: ");
                req.push_str(r);
                req.push_str("\r\n");
            }
            req.push_str("Accept: application/sdp\r\nContent-Length: 0\r\n\r\n");
            let bytes = Bytes::from(req);
            let flow = Flow {
                transport: t.transport,
                local,
                remote: t.dest,
            };
            let key = TxKey {
                branch: Bytes::from(branch),
                kind: Kind::Other,
            };
            let tx = ClientTx::NonInvite(ClientNonInvite::new(
                now,
                bytes.clone(),
                flow.transport.is_reliable(),
                &self.cfg.timers,
            ));
            self.client.insert(
                key.clone(),
                ClientEntry {
                    tx,
                    flow,
                    ctx: Some(ctx_id),
                    purpose: Purpose::LoadQuery,
                    sent: bytes,
                    scheduled: None,
                },
            );
            self.drain_client(now, &key);
        }
    }

    /// A final answer to a load query (RFC 3261 §11.2).
    fn handle_query_response(&mut self, now: Instant, ctx_id: u64, status: u16) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(pending) = ctx.querying else { return };
        match QueryOutcome::of(status) {
            QueryOutcome::Available | QueryOutcome::Unknown => {
                ctx.querying = None;
                let hash = loop_hash(&ctx.request);
                self.try_next_target(now, ctx_id, hash);
            }
            QueryOutcome::Busy if pending > 1 => ctx.querying = Some(pending - 1),
            QueryOutcome::Busy => {
                ctx.querying = None;
                ctx.answered = true;
                let (server, req) = (ctx.server.clone(), ctx.request.clone());
                self.stats.busy += 1;
                self.reply(now, &server, &req, 486, "Busy Here", &[]);
            }
        }
    }

    /// Next hops of a request (§16.5): the next Route, the callee's bindings by q, or
    /// the Request-URI itself; an error status when there is none.
    fn targets(
        &self,
        now: Instant,
        uri: &SipUri<'_>,
        ruri: &[u8],
        ruri_is_us: bool,
        remaining_routes: &[&[u8]],
    ) -> Result<VecDeque<Target>, (u16, &'static str)> {
        let direct = |uri: &[u8]| {
            resolve(uri).map(|(transport, dest)| {
                VecDeque::from([Target {
                    uri: None,
                    route: vec![],
                    transport,
                    dest,
                    max_calls: None,
                    load_query: false,
                }])
            })
        };
        if let Some(next) = remaining_routes.first() {
            let hop = NameAddr::parse(next).map(|n| n.uri);
            return hop.and_then(direct).ok_or((404, "Next Hop Not Resolvable"));
        }
        if !ruri_is_us {
            return direct(ruri).ok_or((404, "Not Found"));
        }
        let user = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .ok_or((404, "Not Found"))?;
        let aor = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
        let bindings = self
            .location
            .lookup(&aor, self.unix(now))
            .ok_or((404, "Not Found"))?;
        let targets: VecDeque<Target> = bindings
            .into_iter()
            .filter_map(|b| {
                let first_hop = b
                    .path
                    .first()
                    .and_then(|p| NameAddr::parse(p.as_bytes()))
                    .map(|n| n.uri);
                let (transport, dest) = match (first_hop, registered_flow(b)) {
                    (None, Some(flow)) => flow,
                    _ => resolve(first_hop.unwrap_or(b.contact.as_bytes()))?,
                };
                Some(Target {
                    uri: Some(b.contact.clone()),
                    route: b.path.clone(),
                    transport,
                    dest,
                    max_calls: b.max_calls,
                    load_query: b.load_query,
                })
            })
            .collect();
        if targets.is_empty() {
            return Err((480, "Temporarily Unavailable"));
        }
        Ok(targets)
    }

    /// Runs the authentication policy: `Err(Answered)` when it answered the request
    /// itself, `Ok(None)` when authentication is off, `Ok(Some(proof))` otherwise.
    fn authenticate(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        flow: Flow,
        role: Role,
    ) -> Result<Option<sip_core::digest::Authenticated>, Answered> {
        let unix = self.unix(now);
        let salt = self.rng.random::<u64>();
        match self
            .auth
            .check(now, unix, salt, flow.remote.ip(), role, msg)
        {
            Decision::Open => Ok(None),
            Decision::Authenticated(who) => Ok(Some(who)),
            Decision::Reply(r) => {
                let headers: Vec<(&str, &[u8])> =
                    r.headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
                self.reply(now, key, msg, r.status, r.reason, &headers);
                Err(Answered)
            }
        }
    }

    /// Requests addressed to the proxy itself: REGISTER and OPTIONS.
    fn handle_local(&mut self, now: Instant, key: TxKey, msg: Message, method: &Method) {
        match method {
            Method::Options => self.reply(
                now,
                &key,
                &msg,
                200,
                "OK",
                &[
                    ("Allow", ALLOW),
                    ("Accept", b"application/sdp"),
                    ("Supported", b"path"),
                ],
            ),
            Method::Register => self.handle_register(now, key, &msg),
            _ => self.reply(
                now,
                &key,
                &msg,
                405,
                "Method Not Allowed",
                &[("Allow", ALLOW)],
            ),
        }
    }

    fn handle_register(&mut self, now: Instant, key: TxKey, msg: &Message) {
        self.stats.registrations += 1;
        // RFC 3261 §10.3 step 3: unknown extensions in Require get 420.
        if let Some(req) = msg
            .list(HeaderName::Require)
            .find(|t| !t.eq_ignore_ascii_case(b"path"))
        {
            let unsupported = req.to_vec();
            return self.reply(
                now,
                &key,
                msg,
                420,
                "Bad Extension",
                &[("Unsupported", &unsupported)],
            );
        }
        let to = msg.to().ok().and_then(|t| SipUri::parse(t.uri));
        let Some(to) = to.filter(|u| self.cfg.identity.is_us(u)) else {
            return self.reply(now, &key, msg, 404, "Not Found", &[]);
        };
        let Some(user) = to.user.and_then(|u| std::str::from_utf8(u).ok()) else {
            return self.reply(now, &key, msg, 400, "Missing User In To", &[]);
        };
        let aor = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
        debug_assert!(aor_key(&to).is_some());
        let flow = self.server.get(&key).map(|e| e.flow);
        let Some(flow) = flow else { return };
        // §10.3 step 2 and §26.1.1: only the owner of an AOR changes its bindings.
        match self.authenticate(now, &key, msg, flow, Role::Registrar) {
            Err(Answered) => return,
            Ok(Some(who)) if who.username != user => {
                return self.reply(now, &key, msg, 403, "Forbidden", &[]);
            }
            Ok(_) => {}
        }
        let unix = self.unix(now);
        match handle_register(
            &self.cfg.registrar,
            &mut self.location,
            &aor,
            msg,
            (flow.transport, flow.remote),
            unix,
        ) {
            Registered::Ok(contacts) => {
                let lines: Vec<(String, Vec<u8>)> = contacts
                    .into_iter()
                    .map(|(c, left)| {
                        (
                            "Contact".to_owned(),
                            format!("<{c}>;expires={left}").into_bytes(),
                        )
                    })
                    .collect();
                let headers: Vec<(&str, &[u8])> = lines
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_slice()))
                    .collect();
                self.reply(now, &key, msg, 200, "OK", &headers);
            }
            Registered::Reject {
                status,
                reason,
                min_expires,
            } => {
                let me = min_expires.map(|m| m.to_string());
                let headers: Vec<(&str, &[u8])> =
                    me.iter().map(|m| ("Min-Expires", m.as_bytes())).collect();
                self.reply(now, &key, msg, status, reason, &headers);
            }
        }
    }

    /// Forwards the context's request to its next target (sequential forking by q).
    fn try_next_target(&mut self, now: Instant, ctx_id: u64, hash: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(target) = ctx.targets.pop_front() else {
            return self.finish(now, ctx_id);
        };
        ctx.branches += 1;
        ctx.provisional_seen = false;
        let branch = format!("{}.{}", branch_for(hash), ctx.branches);
        let msg = &ctx.request;
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let Some(local) = self.cfg.identity.local_for(target.transport, target.dest) else {
            ctx.best.get_or_insert_with(|| msg.clone());
            return self.finish(now, ctx_id);
        };
        let server_flow = self.server.get(&ctx.server).map(|e| e.flow);
        let bytes = branch_request(
            &self.cfg.identity,
            self.auth.enabled(),
            msg,
            &target,
            (local, server_flow),
            &branch,
        );
        let flow = Flow {
            transport: target.transport,
            local,
            remote: target.dest,
        };
        let key = TxKey {
            branch: Bytes::from(branch),
            kind: Kind::of(&method),
        };
        let reliable = flow.transport.is_reliable();
        if !ctx.targets.is_empty() {
            let at = now + self.cfg.branch_no_answer;
            self.heap
                .push(Reverse((at, Wake::Branch(ctx_id, ctx.branches))));
        }
        let tx = if method == Method::Invite {
            ctx.timer_c = Some(now + self.cfg.timer_c);
            self.heap
                .push(Reverse((now + self.cfg.timer_c, Wake::TimerC(ctx_id))));
            ClientTx::Invite(ClientInvite::new(
                now,
                bytes.clone(),
                reliable,
                &self.cfg.timers,
            ))
        } else {
            ClientTx::NonInvite(ClientNonInvite::new(
                now,
                bytes.clone(),
                reliable,
                &self.cfg.timers,
            ))
        };
        ctx.branch = Some(key.clone());
        self.stats.forwarded_requests += 1;
        self.client.insert(
            key.clone(),
            ClientEntry {
                tx,
                flow,
                ctx: Some(ctx_id),
                purpose: Purpose::Branch,
                sent: bytes,
                scheduled: None,
            },
        );
        self.drain_client(now, &key);
    }

    /// All targets are done: forward the best final response (§16.7 step 6) or 408/480.
    fn finish(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.answered {
            return;
        }
        ctx.answered = true;
        let server = ctx.server.clone();
        match ctx.best.take() {
            Some(best) if best.status().is_some() => {
                let status = best.status().unwrap_or(500);
                if status == 503 {
                    // §16.7 step 6: a 503 is not passed upstream as such.
                    let req = ctx.request.clone();
                    return self.reply(now, &server, &req, 500, "Server Internal Error", &[]);
                }
                let bytes = Forward::new(&best).drop_top_via().to_vec();
                self.respond(now, &server, status, bytes.into());
            }
            _ => {
                let req = ctx.request.clone();
                self.reply(now, &server, &req, 408, "Request Timeout", &[]);
            }
        }
    }

    fn handle_ack(&mut self, now: Instant, key: &TxKey, msg: &Message, flow: Flow) {
        if let Some(entry) = self.server.get_mut(key)
            && let ServerTx::Invite(t) = &mut entry.tx
            && let Ok(AckAction::Absorb) = t.handle_ack(now)
        {
            self.drain_server(now, key);
            return;
        }
        // ACK for a 2xx is its own transaction-less request (§13.2.2.4): forward statelessly.
        let _ = flow;
        let Some(uri) = msg.request_uri().and_then(SipUri::parse) else {
            return;
        };
        let routes: Vec<&[u8]> = msg.list(HeaderName::Route).collect();
        let own_routes = own_routes(&self.cfg.identity, &routes);
        let remaining = &routes[own_routes..];
        let (new_uri, hop) = if let Some(next) = remaining.first() {
            (None, NameAddr::parse(next).and_then(|n| resolve(n.uri)))
        } else if self.cfg.identity.is_us(&uri) {
            let Some(user) = uri.user.and_then(|u| std::str::from_utf8(u).ok()) else {
                return;
            };
            let aor = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
            let unix = self.unix(now);
            let Some(b) = self
                .location
                .lookup(&aor, unix)
                .and_then(|b| b.first().map(|b| b.contact.clone()))
            else {
                return;
            };
            let hop = resolve(b.as_bytes());
            (Some(b), hop)
        } else {
            (None, resolve(msg.request_uri().unwrap_or_default()))
        };
        let Some((transport, dest)) = hop else { return };
        let Some(local) = self.cfg.identity.local_for(transport, dest) else {
            return;
        };
        let branch = format!("{}.ack", branch_for(loop_hash(msg)));
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            transport.via_token(),
            Identity::sent_by(local)
        );
        let mf = msg
            .max_forwards()
            .ok()
            .flatten()
            .unwrap_or(70)
            .saturating_sub(1);
        let mut fwd = Forward::new(msg).push_via(via.as_bytes()).max_forwards(mf);
        fwd = fwd.drop_routes(own_routes);
        if let Some(u) = &new_uri {
            fwd = fwd.request_uri(u.as_bytes());
        }
        let bytes = fwd.to_vec();
        self.send(
            Flow {
                transport,
                local,
                remote: dest,
            },
            bytes.into(),
        );
    }

    /// CANCEL (§16.10): answered 200 here, then the pending branch is cancelled.
    fn handle_cancel(&mut self, now: Instant, key: TxKey, msg: &Message, flow: Flow) {
        let invite_key = TxKey {
            branch: key.branch.clone(),
            kind: Kind::Invite,
        };
        let ctx_id = self.server.get(&invite_key).and_then(|e| e.ctx);
        if !self.server.contains_key(&invite_key) {
            return self.reply_stateless(msg, flow, 481, "Call/Transaction Does Not Exist");
        }
        if let Some(entry) = self.server.get_mut(&key) {
            if let ServerTx::NonInvite(t) = &mut entry.tx {
                let _ = t.handle_request_retransmission(now);
            }
            return self.drain_server(now, &key);
        }
        let tx = ServerTx::NonInvite(ServerNonInvite::new(
            now,
            flow.transport.is_reliable(),
            &self.cfg.timers,
        ));
        self.server.insert(
            key.clone(),
            ServerEntry {
                tx,
                flow,
                ctx: None,
                scheduled: None,
            },
        );
        self.reply(now, &key, msg, 200, "OK", &[]);
        let Some(ctx_id) = ctx_id else { return };
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.answered {
            return;
        }
        ctx.cancelled = true;
        ctx.targets.clear();
        if ctx.provisional_seen {
            self.cancel_branch(now, ctx_id);
        } else {
            // §9.1: CANCEL only after a provisional response arrived on the branch.
            ctx.cancel_pending = true;
        }
    }

    /// Sends CANCEL for the context's current INVITE branch (§9.1).
    fn cancel_branch(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        ctx.cancel_pending = false;
        let Some(branch) = ctx.branch.clone() else {
            return;
        };
        let Some(entry) = self.client.get(&branch) else {
            return;
        };
        let flow = entry.flow;
        let Ok(sent) = Message::parse(entry.sent.clone()) else {
            return;
        };
        let cancel = build_cancel_or_ack(&sent, b"CANCEL", None);
        let key = TxKey {
            branch: branch.branch.clone(),
            kind: Kind::Cancel,
        };
        if self.client.contains_key(&key) {
            return;
        }
        let tx = ClientTx::NonInvite(ClientNonInvite::new(
            now,
            cancel.clone(),
            flow.transport.is_reliable(),
            &self.cfg.timers,
        ));
        self.client.insert(
            key.clone(),
            ClientEntry {
                tx,
                flow,
                ctx: None,
                purpose: Purpose::Cancel,
                sent: cancel,
                scheduled: None,
            },
        );
        self.drain_client(now, &key);
    }

    fn handle_response(&mut self, now: Instant, msg: &Message) {
        let (Ok(via), Some(status), Ok(cseq)) = (msg.top_via(), msg.status(), msg.cseq()) else {
            self.stats.stray_responses += 1;
            return;
        };
        let Some(branch) = via
            .branch()
            .filter(|b| b.starts_with(BRANCH_PREFIX.as_bytes()))
        else {
            self.stats.stray_responses += 1;
            return;
        };
        let key = TxKey {
            branch: msg.bytes().slice_ref(branch),
            kind: Kind::of(&cseq.method),
        };
        let Some(entry) = self.client.get_mut(&key) else {
            return self.forward_stateless_response(msg);
        };
        let action = match &mut entry.tx {
            ClientTx::Invite(t) => {
                let sent = entry.sent.clone();
                t.handle_response(now, status, || match Message::parse(sent) {
                    Ok(req) => build_cancel_or_ack(&req, b"ACK", Some(msg)),
                    Err(_) => Bytes::new(),
                })
            }
            ClientTx::NonInvite(t) => t.handle_response(now, status),
        };
        let (ctx_id, purpose) = (entry.ctx, entry.purpose);
        self.drain_client(now, &key);
        if !matches!(action, Ok(ResponseAction::PassUp)) {
            return;
        }
        match (ctx_id, purpose) {
            (Some(ctx_id), Purpose::LoadQuery) => {
                if status >= 200 {
                    self.handle_query_response(now, ctx_id, status);
                }
            }
            (Some(ctx_id), Purpose::Branch) if self.contexts.contains_key(&ctx_id) => {
                self.handle_branch_response(now, ctx_id, &key, msg, status);
            }
            (Some(_), Purpose::Branch) => self.forward_stateless_response(msg),
            (None, _) | (_, Purpose::Cancel) => {}
        }
    }

    /// A response on a branch, passed up by its client transaction (§16.7).
    fn handle_branch_response(
        &mut self,
        now: Instant,
        ctx_id: u64,
        branch: &TxKey,
        msg: &Message,
        status: u16,
    ) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        // §16.7 step 3: a response with no Via left after ours is not forwarded. A final
        // one still ends the branch, as if we had generated it from the request.
        let local;
        let msg = if msg.vias().nth(1).is_some() {
            msg
        } else if status >= 300 {
            let reason = String::from_utf8_lossy(msg.reason().unwrap_or_default()).into_owned();
            let built = ResponseBuilder::new(&ctx.request, status, &reason).to_vec();
            // Stand-in for our own Via, which forwarding removes again.
            let line_end = built.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            let mut bytes = built[..line_end].to_vec();
            bytes.extend_from_slice(b"Via: SIP/2.0/UDP 0.0.0.0;branch=z9hG4bK-pm-local\r\n");
            bytes.extend_from_slice(&built[line_end..]);
            let Ok(m) = Message::parse(bytes.into()) else {
                return;
            };
            local = m;
            &local
        } else {
            self.stats.stray_responses += 1;
            return;
        };
        let server = ctx.server.clone();
        if status < 200 {
            ctx.provisional_seen = true;
            if ctx.timer_c.is_some() {
                ctx.timer_c = Some(now + self.cfg.timer_c);
                self.heap
                    .push(Reverse((now + self.cfg.timer_c, Wake::TimerC(ctx_id))));
            }
            let cancel = ctx.cancel_pending;
            let answered = ctx.answered;
            if cancel {
                self.cancel_branch(now, ctx_id);
            }
            if status > 100 && !answered {
                let bytes = Forward::new(msg).drop_top_via().to_vec();
                self.respond(now, &server, status, bytes.into());
            }
            return;
        }
        ctx.timer_c = None;
        if (200..300).contains(&status) {
            ctx.answered = true;
            // Dialog accounting for the callee's call limit: a gated INVITE's 2xx
            // opens a dialog, a BYE's 2xx closes it.
            match (ctx.request.method(), &ctx.callee, ctx.request.call_id()) {
                (Some(Method::Invite), Some(callee), Some(cid)) => {
                    let cid = ctx.request.bytes().slice_ref(cid);
                    self.dialogs.established(cid, callee, now);
                }
                (Some(Method::Bye), _, Some(cid)) => self.dialogs.ended(cid),
                _ => {}
            }
            let bytes = Forward::new(msg).drop_top_via().to_vec();
            return self.respond(now, &server, status, bytes.into());
        }
        if ctx.branch.as_ref() != Some(branch) || ctx.answered {
            return;
        }
        let better = ctx
            .best
            .as_ref()
            .and_then(Message::status)
            .is_none_or(|b| rank(status) < rank(b));
        if better {
            ctx.best = Some(msg.clone());
        }
        if status >= 600 || ctx.cancelled {
            ctx.targets.clear();
        }
        let hash = loop_hash(&ctx.request);
        self.try_next_target(now, ctx_id, hash);
    }

    /// A response matching no transaction (e.g. a 2xx retransmission after ours ended):
    /// forwarded statelessly to the next Via if the top Via is ours (§16.7 / §16.11).
    fn forward_stateless_response(&mut self, msg: &Message) {
        let mut vias = msg.vias();
        let (Some(Ok(top)), Some(Ok(next))) = (vias.next(), vias.next()) else {
            return;
        };
        if !self.cfg.identity.is_own_sent_by(top.host, top.port) {
            self.stats.stray_responses += 1;
            return;
        }
        let transport = Transport::from_token(next.transport).unwrap_or(Transport::Udp);
        let host = next.received().unwrap_or(next.host);
        let port = next.rport().flatten().or(next.port).unwrap_or(5060);
        let uri = [b"sip:", host, b":", port.to_string().as_bytes()].concat();
        let Some((_, dest)) = resolve(&uri) else {
            return;
        };
        let Some(local) = self.cfg.identity.local_for(transport, dest) else {
            return;
        };
        let bytes = Forward::new(msg).drop_top_via().to_vec();
        self.send(
            Flow {
                transport,
                local,
                remote: dest,
            },
            bytes.into(),
        );
    }

    fn drain_server(&mut self, now: Instant, key: &TxKey) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let flow = entry.flow;
        let (terminated, _, wake) = drain_machine(&mut self.out, flow, entry.tx.machine());
        if terminated {
            if let Some(e) = self.server.remove(key)
                && let Some(c) = e.ctx
            {
                self.contexts.remove(&c);
            }
            return;
        }
        // One live heap entry per transaction: a later wake-up is found when the
        // earlier entry fires (see `handle_timeout`), so the heap stays bounded.
        if let Some(at) = wake
            && entry_needs_push(&mut self.server.get_mut(key).map(|e| &mut e.scheduled), at)
        {
            self.heap
                .push(Reverse((at.max(now), Wake::Server(key.clone()))));
        }
    }

    fn drain_client(&mut self, now: Instant, key: &TxKey) {
        let Some(entry) = self.client.get_mut(key) else {
            return;
        };
        let flow = entry.flow;
        let (terminated, timed_out, wake) = drain_machine(&mut self.out, flow, entry.tx.machine());
        let ctx = entry.ctx;
        if terminated {
            self.client.remove(key);
        } else if let Some(at) = wake
            && entry_needs_push(&mut Some(&mut entry.scheduled), at)
        {
            self.heap
                .push(Reverse((at.max(now), Wake::Client(key.clone()))));
        }
        if timed_out {
            // No final response on this branch: it counts as a 408 (§16.7 step 1 / §16.8).
            if let Some(ctx_id) = ctx
                && let Some(c) = self.contexts.get(&ctx_id)
                && c.branch.as_ref() == Some(key)
                && !c.answered
            {
                let hash = loop_hash(&c.request);
                self.try_next_target(now, ctx_id, hash);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, wake))) = self.heap.pop() else {
                break;
            };
            match wake {
                Wake::Server(key) => {
                    let Some(e) = self.server.get_mut(&key) else {
                        continue;
                    };
                    match fire(&mut e.scheduled, e.tx.machine(), at, now) {
                        Fired::Ran => self.drain_server(now, &key),
                        Fired::Later(due) => self.heap.push(Reverse((due, Wake::Server(key)))),
                        Fired::Stale => {}
                    }
                }
                Wake::Client(key) => {
                    let Some(e) = self.client.get_mut(&key) else {
                        continue;
                    };
                    match fire(&mut e.scheduled, e.tx.machine(), at, now) {
                        Fired::Ran => self.drain_client(now, &key),
                        Fired::Later(due) => self.heap.push(Reverse((due, Wake::Client(key)))),
                        Fired::Stale => {}
                    }
                }
                Wake::TimerC(ctx_id) => {
                    let fire = self
                        .contexts
                        .get(&ctx_id)
                        .is_some_and(|c| c.timer_c.is_some_and(|t| t <= now) && !c.answered);
                    if fire {
                        if let Some(c) = self.contexts.get_mut(&ctx_id) {
                            c.timer_c = None;
                            c.cancelled = true;
                            c.targets.clear();
                        }
                        self.cancel_branch(now, ctx_id);
                    }
                }
                Wake::Branch(ctx_id, n) => {
                    // Still the same branch, no provisional, more targets: move on. A
                    // late final on the abandoned branch is ignored; a late 2xx is
                    // still forwarded (§16.7 step 5).
                    let give_up = self.contexts.get(&ctx_id).is_some_and(|c| {
                        c.branches == n
                            && !c.provisional_seen
                            && !c.answered
                            && !c.targets.is_empty()
                    });
                    if give_up && let Some(c) = self.contexts.get(&ctx_id) {
                        let hash = loop_hash(&c.request);
                        self.try_next_target(now, ctx_id, hash);
                    }
                }
                Wake::Query(ctx_id) => {
                    // No usable answer in time: the callee is not reachable now.
                    let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
                        continue;
                    };
                    if ctx.querying.take().is_some() && !ctx.answered {
                        ctx.answered = true;
                        let (server, req) = (ctx.server.clone(), ctx.request.clone());
                        self.reply(now, &server, &req, 480, "Temporarily Unavailable", &[]);
                    }
                }
                Wake::Purge => {
                    self.dialogs.expire(now, self.cfg.gate.dialog_max_age);
                    let unix = self.unix(now);
                    if let Err(e) = self.location.purge(unix) {
                        tracing::warn!(error = %e, "purging expired bindings failed");
                    }
                    self.heap
                        .push(Reverse((now + self.cfg.purge_interval, Wake::Purge)));
                }
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
}

/// The connection a binding was registered over, when requests must reuse it rather
/// than connect to the Contact (RFC 5626 §5.3 flows; RFC 3261 §18.2.2): always for
/// TLS (a phone has no server certificate and is usually behind NAT), and for TCP
/// when the Contact carries the outbound `ob` parameter.
fn registered_flow(b: &crate::location::Binding) -> Option<(Transport, std::net::SocketAddr)> {
    let (transport, src) = b.source?;
    let ob = SipUri::parse(b.contact.as_bytes()).is_some_and(|u| u.param(b"ob").is_some());
    match transport {
        Transport::Tls => Some((transport, src)),
        Transport::Tcp if ob => Some((transport, src)),
        _ => None,
    }
}

/// The request of one branch (§16.6): the received bytes plus our Via (with the
/// client's `received`/`rport`), Max-Forwards − 1, the target's Request-URI and Path
/// routes, our own Route values removed, our credentials consumed (§22.3), and
/// Record-Route on dialog-creating requests (twice across transports, RFC 5658).
fn branch_request(
    identity: &Identity,
    consume_credentials: bool,
    msg: &Message,
    target: &Target,
    (local, server_flow): (std::net::SocketAddr, Option<Flow>),
    branch: &str,
) -> Bytes {
    let method = msg.method().cloned().unwrap_or(Method::Options);
    let sent_by = Identity::sent_by(local);
    let via = format!(
        "SIP/2.0/{} {sent_by};branch={branch}",
        target.transport.via_token()
    );
    let dialog_creating = matches!(method, Method::Invite | Method::Subscribe | Method::Refer)
        && msg.to_tag().is_none();
    let mf = msg
        .max_forwards()
        .ok()
        .flatten()
        .unwrap_or(70)
        .saturating_sub(1);
    let received = server_flow.and_then(|f| received_via(msg, f.remote));
    let mut fwd = Forward::new(msg).push_via(via.as_bytes()).max_forwards(mf);
    if let Some(v) = &received {
        fwd = fwd.replace_top_via(v.as_bytes());
    }
    if consume_credentials {
        // Our credentials are consumed here (RFC 3261 §22.3); none go downstream.
        fwd = fwd.drop_header(HeaderName::ProxyAuthorization);
    }
    if let Some(uri) = &target.uri {
        fwd = fwd.request_uri(uri.as_bytes());
    }
    let routes: Vec<&[u8]> = msg.list(HeaderName::Route).collect();
    fwd = fwd.drop_routes(own_routes(identity, &routes));
    let rr;
    if dialog_creating {
        let inbound = server_flow.map_or((target.transport, local), |f| (f.transport, f.local));
        let outbound = (target.transport, local);
        // RFC 5658 §3.2: when the two sides differ in transport or interface, one
        // Record-Route per side; the callee's side on top.
        rr = if inbound == outbound {
            record_route(inbound)
        } else {
            format!("{}, {}", record_route(outbound), record_route(inbound))
        };
        fwd = fwd.record_route(rr.as_bytes());
    }
    for r in &target.route {
        fwd = fwd.header("Route", r.as_bytes());
    }
    fwd.to_vec().into()
}

/// What a popped timer-heap entry did to its transaction.
enum Fired {
    /// Superseded by an earlier entry: nothing to do.
    Stale,
    /// Timers ran: drain the transaction.
    Ran,
    /// The transaction's next timer is later: re-queue at that instant.
    Later(Instant),
}

/// Handles the heap entry at `at` for a transaction whose live entry is `scheduled`.
fn fire(
    scheduled: &mut Option<Instant>,
    m: &mut dyn Transaction,
    at: Instant,
    now: Instant,
) -> Fired {
    if *scheduled != Some(at) {
        return Fired::Stale;
    }
    *scheduled = None;
    match m.poll_timeout() {
        Some(due) if due <= now => {
            m.handle_timeout(now);
            Fired::Ran
        }
        Some(due) => {
            *scheduled = Some(due);
            Fired::Later(due)
        }
        None => Fired::Stale,
    }
}

/// Records `at` as the transaction's scheduled wake-up if it is earlier than the one
/// already in the heap (or there is none); `true` when a heap entry must be pushed.
fn entry_needs_push(scheduled: &mut Option<&mut Option<Instant>>, at: Instant) -> bool {
    let Some(slot) = scheduled else { return false };
    if slot.is_some_and(|s| s <= at) {
        return false;
    }
    **slot = Some(at);
    true
}

/// How many leading Route values name us (§16.4; two after double record-routing).
fn own_routes(identity: &Identity, routes: &[&[u8]]) -> usize {
    routes
        .iter()
        .take_while(|r| {
            NameAddr::parse(r)
                .and_then(|n| SipUri::parse(n.uri))
                .is_some_and(|u| identity.is_us(&u))
        })
        .count()
}

/// Our Record-Route value for one side (RFC 3261 §16.6 item 4; `lr`, RFC 3261 §19.1.1).
fn record_route((transport, addr): (Transport, std::net::SocketAddr)) -> String {
    let param = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    format!("<sip:{}{param};lr>", Identity::sent_by(addr))
}

/// §16.7 step 6 preference: 6xx first, then the lowest class; 503 counts as 5xx.
fn rank(status: u16) -> u16 {
    if status >= 600 { 0 } else { status / 100 * 100 }
}

/// CANCEL (§9.1) or ACK for a non-2xx (§17.1.1.3) from the request as sent: same
/// Request-URI, top Via, Route, From, Call-ID and CSeq number; the ACK takes the
/// response's To (with its tag).
fn build_cancel_or_ack(sent: &Message, method: &[u8], response: Option<&Message>) -> Bytes {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(sent.request_uri().unwrap_or_default());
    out.extend_from_slice(b" SIP/2.0\r\n");
    let line = |out: &mut Vec<u8>, name: &str, v: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(v) = sent.list(HeaderName::Via).next() {
        line(&mut out, "Via", v);
    }
    for r in sent.headers(HeaderName::Route) {
        line(&mut out, "Route", r);
    }
    line(&mut out, "Max-Forwards", b"70");
    line(
        &mut out,
        "From",
        sent.header(HeaderName::From).unwrap_or_default(),
    );
    let to = response
        .and_then(|r| r.header(HeaderName::To))
        .or_else(|| sent.header(HeaderName::To));
    line(&mut out, "To", to.unwrap_or_default());
    line(&mut out, "Call-ID", sent.call_id().unwrap_or_default());
    let seq = sent.cseq().map_or(1, |c| c.seq);
    line(
        &mut out,
        "CSeq",
        format!("{seq} {}", String::from_utf8_lossy(method)).as_bytes(),
    );
    line(&mut out, "Content-Length", b"0");
    out.extend_from_slice(b"\r\n");
    out.into()
}

impl sip_net::Engine for Proxy {
    fn handle_received(&mut self, now: Instant, msg: Received) {
        Proxy::handle_received(self, now, msg);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Proxy::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Proxy::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Proxy::poll_timeout(self)
    }
}

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod tests;
