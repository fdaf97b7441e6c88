//! The registrar/stateful-proxy engine (RFC 3261 §16), sans-IO: received bytes and time
//! in, transmits and the next wake-up out. The only I/O it performs is the synchronous
//! write-through of bindings to the location store before a REGISTER is answered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sip_core::message::{HeaderName, Message, Method, NameAddr, ResponseBuilder, SipUri};
use sip_core::transaction::{ResponseAction, ServerInvite, ServerNonInvite, TimerConfig};
use sip_core::transport::{Received, Transmit};

use crate::auth::Auth;
use crate::gate::{Dialogs, GateSettings};
use crate::location::Location;
use crate::manage;
use crate::permits::Permits;
use crate::registrar::RegistrarConfig;
use crate::route::{BRANCH_PREFIX, Flow, Identity, branch_for, loop_hash, received_via};

/// How often a shard copies its counters for `/metrics` when there are several.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Dialogs remembered for UAs that ignore Record-Route (engine::dialog::Remembered).
const REMEMBERED_DIALOGS: usize = 100_000;

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
    /// The keys of the dialog seal in our Record-Route (`engine::dialog`); a random
    /// key from the engine's rng when `None` (then dialogs do not survive a restart).
    pub route_keys: Option<RouteKeys>,
    /// Responses go back to the source of the request, on its flow (RFC 3581 §4, the
    /// default); `false` follows the top Via as RFC 3261 §18.2.2 does
    /// (`validate::reply_flow`).
    pub symmetric_responses: bool,
    /// The permit-token key ring (engine::permit); a random key from the engine's rng
    /// when `None`.
    pub token_keys: Option<KeyRing>,
    /// When new INVITEs and REGISTERs are refused for load (engine::overload).
    pub overload: OverloadSettings,
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
            route_keys: None,
            symmetric_responses: true,
            token_keys: None,
            overload: OverloadSettings::default(),
        }
    }
}

/// A table every engine shard uses (location, users, permits, dialogs, mailbox): one
/// lock each, held for one call at a time and never across another table's lock
/// (engine::shard explains the split).
pub(crate) struct Shared<T>(Arc<Mutex<T>>);

impl<T> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Arc::new(Mutex::new(value)))
    }

    /// A panic on another shard while it held the lock leaves the table as that call
    /// left it; every table stays consistent between its own calls, so it is used on.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
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
    /// In-dialog requests refused because their route carried no valid dialog seal, or
    /// aimed at someone who is not a party of the sealed dialog.
    pub forged_dialogs: u64,
    /// Permit tokens and session secrets issued (permitted INVITEs).
    pub grants: u64,
    /// Permitted INVITEs answered in direct mode (302 with the token).
    pub redirects: u64,
    /// Items stored for a busy or offline callee (202), delivered and deleted after
    /// the callee's 2xx, and message-summary NOTIFYs sent (engine::deposit, mwi).
    pub deposits: u64,
    pub delivered: u64,
    pub notifies: u64,
    /// New INVITEs and REGISTERs answered 503 because the proxy was over capacity,
    /// and the times it went over (engine::overload).
    pub overload_refused: u64,
    pub overload_episodes: u64,
    /// Requests that carried the branch of a completed transaction but other bytes
    /// than its request (not retransmissions): dropped (engine::absorb).
    pub branch_reused: u64,
    /// Requests by method, responses by status, session outcomes (`/metrics`).
    pub traffic: crate::control::Traffic,
}

impl Stats {
    /// Adds another shard's counters.
    pub fn add(&mut self, o: &Stats) {
        self.received += o.received;
        self.unparsable += o.unparsable;
        self.bad_requests += o.bad_requests;
        self.stray_responses += o.stray_responses;
        self.forwarded_requests += o.forwarded_requests;
        self.registrations += o.registrations;
        self.gate_refused += o.gate_refused;
        self.busy += o.busy;
        self.forged_dialogs += o.forged_dialogs;
        self.grants += o.grants;
        self.redirects += o.redirects;
        self.deposits += o.deposits;
        self.delivered += o.delivered;
        self.notifies += o.notifies;
        self.overload_refused += o.overload_refused;
        self.overload_episodes += o.overload_episodes;
        self.branch_reused += o.branch_reused;
        self.traffic.add(&o.traffic);
    }
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
    /// The parties the dialog seal names (out-of-dialog requests only).
    parties: Option<Parties>,
    /// The token and secret issued for a permitted INVITE.
    grant: Option<Grant>,
    /// A MESSAGE that asked to be queued: its sender, when it is stored instead of
    /// failing (engine::deposit).
    deposit: Option<String>,
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
    /// Absorbing server transactions due (engine::absorb).
    Absorbing,
    /// Time to copy this shard's counters to the board (shards other than the first).
    Report,
}

/// The proxy engine.
pub struct Proxy {
    cfg: ProxyConfig,
    /// This engine's place among the shards (engine::shard): it names the branches of
    /// the requests it sends, so their responses are steered back to it.
    shard: u8,
    location: Shared<Location>,
    server: HashMap<TxKey, ServerEntry>,
    /// Server transactions that only absorb retransmissions, compact (engine::absorb).
    absorbing: absorb::AbsorbTable,
    client: HashMap<TxKey, ClientEntry>,
    contexts: HashMap<u64, Context>,
    heap: BinaryHeap<Reverse<(Instant, Wake)>>,
    out: VecDeque<Transmit>,
    rng: StdRng,
    auth: Shared<Auth>,
    /// Whether digest authentication is on (fixed at start).
    auth_enabled: bool,
    permits: Shared<Permits>,
    dialogs: Shared<Dialogs>,
    route_keys: RouteKeys,
    remembered: Shared<Remembered>,
    token_ring: KeyRing,
    /// Store-and-forward: the item store, message-summary subscriptions, deliveries.
    sf: deposit::StoreForward,
    /// The media relay for permitted video calls (engine::relay), when configured.
    relay: Option<relay::RelayHook>,
    /// REGISTERs whose 200 waits for the store worker (oldest first).
    held: VecDeque<local::HeldRegister>,
    /// Where management PUBLISHes are written (`None`: on this thread, at once).
    publisher: Option<Box<dyn crate::manage::PermitWriter>>,
    /// Management PUBLISHes waiting for their write, by job id.
    publishing: HashMap<u64, (TxKey, Message)>,
    /// The operator's commands (engine::control), when an admin API runs.
    control: Option<crate::control::Control>,
    /// Over capacity or not, from the shell's measure of how long input waits.
    overload: overload::Overload,
    /// What every shard last reported for `/metrics` (slot = shard), when there are
    /// several (engine::control sums them).
    board: Shared<Vec<Option<crate::control::EngineSnapshot>>>,
    /// `now` ↔ Unix time, fixed at start (binding expiry is wall-clock time).
    epoch: (Instant, u64),
    next_id: u64,
    pub stats: Stats,
}

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
        let mut rng = StdRng::seed_from_u64(seed);
        let route_keys = cfg
            .route_keys
            .clone()
            .unwrap_or_else(|| RouteKeys::new(0, rng.random()));
        let token_ring = cfg.token_keys.clone().unwrap_or_else(|| {
            KeyRing::new(
                sip_core::permit::KeyId(0),
                ProxyKey::from_bytes(rng.random()),
            )
        });
        let mut p = Self {
            token_ring,
            cfg,
            route_keys,
            remembered: Shared::new(Remembered::new(REMEMBERED_DIALOGS)),
            shard: 0,
            location: Shared::new(location),
            auth_enabled: auth.enabled(),
            auth: Shared::new(auth),
            permits: Shared::new(permits),
            dialogs: Shared::default(),
            sf: deposit::StoreForward::default(),
            relay: None,
            server: HashMap::new(),
            absorbing: absorb::AbsorbTable::default(),
            client: HashMap::new(),
            contexts: HashMap::new(),
            heap: BinaryHeap::new(),
            out: VecDeque::new(),
            held: VecDeque::new(),
            publisher: None,
            publishing: HashMap::new(),
            rng,
            control: None,
            overload: overload::Overload::default(),
            board: Shared::new(vec![None]),
            epoch: (now, unix_now),
            next_id: 0,
            stats: Stats::default(),
        };
        p.heap
            .push(Reverse((now + p.cfg.purge_interval, Wake::Purge)));
        p
    }

    /// Another engine shard (crate::shard): its own transactions, contexts, timers and
    /// counters, the same configuration, keys and tables (location, users, permits,
    /// dialogs, the mailbox). Its branches carry `index`. The relay and the operator's
    /// control queue are given to each shard by the shell.
    #[must_use]
    pub fn new_shard(&self, index: u8, now: Instant, seed: u64) -> Self {
        let mut board = self.board.lock();
        let slot = usize::from(index);
        if board.len() <= slot {
            board.resize(slot + 1, None);
        }
        drop(board);
        let mut p = Self {
            cfg: self.cfg.clone(),
            shard: index,
            location: self.location.clone(),
            server: HashMap::new(),
            absorbing: absorb::AbsorbTable::default(),
            client: HashMap::new(),
            contexts: HashMap::new(),
            heap: BinaryHeap::new(),
            out: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            auth: self.auth.clone(),
            auth_enabled: self.auth_enabled,
            permits: self.permits.clone(),
            dialogs: self.dialogs.clone(),
            route_keys: self.route_keys.clone(),
            remembered: self.remembered.clone(),
            token_ring: self.token_ring.clone(),
            sf: self.sf.for_shard(),
            relay: None,
            held: VecDeque::new(),
            publisher: None,
            publishing: HashMap::new(),
            control: None,
            overload: overload::Overload::default(),
            board: self.board.clone(),
            epoch: self.epoch,
            next_id: 0,
            stats: Stats::default(),
        };
        p.heap
            .push(Reverse((now + p.cfg.purge_interval, Wake::Purge)));
        p.heap.push(Reverse((now + REPORT_EVERY, Wake::Report)));
        p
    }

    /// Which shard this engine is.
    pub fn shard_index(&self) -> u8 {
        self.shard
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// Bindings held: (AORs, bindings).
    pub fn location_counts(&self) -> (usize, usize) {
        self.location.lock().counts()
    }

    /// Entries in the timer heap (for tests and metrics): at most a few per live
    /// transaction or context.
    pub fn timers_pending(&self) -> usize {
        self.heap.len()
    }

    /// Transactions and contexts alive (for tests and metrics).
    pub fn live(&self) -> (usize, usize, usize) {
        (
            self.server.len() + self.absorbing.len(),
            self.client.len(),
            self.contexts.len(),
        )
    }

    /// The permit-token key ring (tests verify issued tokens with it).
    #[cfg(test)]
    pub(crate) fn token_ring(&self) -> &KeyRing {
        &self.token_ring
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn tag(&mut self) -> String {
        let mut s = String::with_capacity(8);
        crate::route::push_hex(&mut s, u64::from(self.rng.random::<u32>()), 8);
        s
    }

    pub fn handle_received(&mut self, now: Instant, rx: Received) {
        self.stats.received += 1;
        if !self.held.is_empty() {
            self.settle_writes(now);
        }
        if !self.publishing.is_empty() {
            self.settle_publishes(now);
        }
        if self.deposits_writing() {
            self.settle_deposits(now);
        }
        let flow = Flow {
            transport: rx.transport,
            local: rx.local,
            remote: rx.peer,
        };
        if self.refuse_early(&rx.data, flow) {
            return;
        }
        match validate::inspect(rx.data, &flow) {
            Inspected::KeepAlive => {}
            Inspected::Request { msg, branch } => self.handle_request(now, msg, branch, flow),
            Inspected::Response(msg) => self.handle_response(now, &msg),
            Inspected::Dropped(fault) => {
                self.count(fault);
                tracing::debug!(?fault, "message dropped");
            }
            Inspected::Answer {
                request,
                status,
                reason,
                unsupported,
                fault,
            } => {
                self.count(fault);
                let unsupported = unsupported.as_deref();
                self.reply_stateless_with(&request, flow, status, &reason, unsupported);
            }
        }
    }

    fn count(&mut self, fault: Fault) {
        match fault {
            Fault::Unparsable => self.stats.unparsable += 1,
            Fault::BadRequest => self.stats.bad_requests += 1,
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

    /// A request that passed the validate stage, with its top Via branch.
    fn handle_request(&mut self, now: Instant, msg: Message, branch: Bytes, flow: Flow) {
        let method = msg.method().cloned().unwrap_or(Method::Options);
        self.stats.traffic.request(&method);
        let key = TxKey {
            branch,
            kind: Kind::of(&method),
        };
        match method {
            Method::Ack if Self::is_overload_ack(&msg) => return,
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
        if self.absorb_request(&key, msg.bytes()) {
            return;
        }
        // New work only, before any transaction, digest check or store write
        // (engine::overload).
        if self.refuses_for_load(&method, &msg) {
            return self.refuse_for_load(&msg, flow);
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
                reply: validate::reply_flow(&msg, flow, self.cfg.symmetric_responses),
                ctx: None,
                request: (method != Method::Invite).then(|| msg.bytes().clone()),
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

    /// `503 Service Unavailable` with `Retry-After: <retry_after>` seconds (RFC 3261
    /// §21.5.4, §20.33): a queue or a table of the proxy is full for now.
    fn unavailable(&mut self, now: Instant, key: &TxKey, req: &Message, retry_after: &[u8]) {
        let headers: [(&str, &[u8]); 1] = [("Retry-After", retry_after)];
        self.reply(now, key, req, 503, "Service Unavailable", &headers);
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

    /// §16.3 item 4: our own Via with this request's loop hash means it came back
    /// unchanged. The hash is taken only for a Via of ours: a request straight from a
    /// UA (every REGISTER to us) has none.
    fn looped(&self, msg: &Message) -> bool {
        msg.vias().filter_map(Result::ok).any(|v| {
            v.branch().is_some_and(|b| {
                b.starts_with(BRANCH_PREFIX.as_bytes())
                    && self.cfg.identity.is_own_sent_by(v.host, v.port)
                    && b.starts_with(branch_for(self.shard, loop_hash(msg)).as_bytes())
            })
        })
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
        if self.looped(&msg) {
            return self.reply(now, &key, &msg, 482, "Loop Detected", &[]);
        }
        if for_proxy_itself || (ruri_is_us && method == Method::Register && remaining.is_empty()) {
            return self.handle_local(now, key, msg, &method);
        }
        if ruri_is_us && remaining.is_empty() && deposit::answered_here(&msg, &uri) {
            return self.handle_store_request(now, key, &msg, &uri);
        }
        let gated = ruri_is_us && remaining.is_empty();
        let in_dialog = msg.to_tag().is_some();
        let (callee, parties, caller, depositor) = if in_dialog {
            // §12.2: an in-dialog request comes back along the route set we
            // record-routed; without our valid seal it belongs to no dialog we set up.
            match self.open_seal(&msg, &routes[..own_routes]) {
                Ok(p) => (None, p, None, None),
                Err(e) => return self.refuse_in_dialog(now, &key, &msg, e),
            }
        } else {
            if gated
                && method == Method::Publish
                && uri.user.is_some()
                && manage::is_management(&msg)
            {
                return self.handle_manage(now, key, &msg, &uri);
            }
            let next_hop = remaining
                .first()
                .and_then(|r| NameAddr::parse(r))
                .map_or(ruri, |n| n.uri);
            let Ok(a) = self.admit(now, &key, &msg, &uri, gated, next_hop) else {
                return;
            };
            let depositor = self.depositor(&msg, &a);
            (a.callee, a.parties, a.caller, depositor)
        };
        let to = (&uri, ruri, ruri_is_us, remaining);
        let deposit = depositor.as_deref().zip(callee.as_deref());
        let Some(targets) = self.targets_or_answer(now, &key, &msg, to, deposit) else {
            return;
        };
        if in_dialog {
            let ruri_aor = self.local_aor(&uri).filter(|_| gated);
            let hops = targets.iter().map(|t| t.dest);
            if !self.towards_party(&parties, ruri_aor.as_deref(), hops) {
                return self.refuse_in_dialog(now, &key, &msg, SealError::Forged);
            }
        }
        let Ok(query) = self.load_check(now, &key, &msg, callee.as_deref(), &targets) else {
            return;
        };
        let grant = self.grant_for(now, (caller.as_deref(), callee.as_deref()), &msg, query);
        let hash = loop_hash(&msg);
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
                parties: (!in_dialog).then_some(parties),
                grant,
                deposit: depositor,
            },
        );
        if query {
            self.start_load_query(now, ctx_id);
        } else {
            self.try_next_target(now, ctx_id, hash);
        }
    }

    /// `user@domain` of a URI that names us (our domain or one of our addresses).
    fn local_aor(&self, uri: &SipUri<'_>) -> Option<String> {
        let user = std::str::from_utf8(uri.user?).ok()?;
        self.cfg
            .identity
            .is_us(uri)
            .then(|| format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase()))
    }

    /// An in-dialog request that no dialog of ours explains: 403, reaching nobody.
    fn refuse_in_dialog(&mut self, now: Instant, key: &TxKey, msg: &Message, e: SealError) {
        self.stats.forged_dialogs += 1;
        tracing::debug!(error = %e, "in-dialog request refused");
        self.reply(now, key, msg, 403, "Forbidden", &[]);
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
            (_, Purpose::Own) => self.handle_own_response(now, &key, status),
            (None, _) | (_, Purpose::Cancel) => {}
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
                        self.stats.traffic.query_timeouts += 1;
                        if self.deposit_instead(now, ctx_id) {
                            continue;
                        }
                        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
                            continue;
                        };
                        ctx.answered = true;
                        let (server, req) = (ctx.server.clone(), ctx.request.clone());
                        self.reply(now, &server, &req, 480, "Temporarily Unavailable", &[]);
                    }
                }
                Wake::Absorbing => self.handle_absorbing_timeout(now, at),
                Wake::Report => {
                    self.report();
                    self.heap.push(Reverse((now + REPORT_EVERY, Wake::Report)));
                }
                Wake::Purge => {
                    // The shared tables are purged by the first shard only.
                    if self.shard == 0 {
                        let max_age = self.cfg.gate.dialog_max_age;
                        self.dialogs.lock().expire(now, max_age);
                        self.remembered.lock().expire(now, max_age);
                        let unix = self.unix(now);
                        if let Err(e) = self.location.lock().purge(unix) {
                            tracing::warn!(error = %e, "purging expired bindings failed");
                        }
                        self.purge_mailbox(now);
                    }
                    self.purge_store(now);
                    self.relay_purge();
                    self.heap
                        .push(Reverse((now + self.cfg.purge_interval, Wake::Purge)));
                }
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Work finished outside the engine: the store worker settled writes, the permit
    /// or the deposit writer finished a job.
    pub fn handle_wake(&mut self, now: Instant) {
        self.settle_writes(now);
        self.settle_publishes(now);
        self.settle_deposits(now);
        self.handle_control(now);
    }

    /// REGISTERs waiting for their write, and location writes not yet settled.
    pub fn writes_pending(&self) -> (usize, usize) {
        (self.held.len(), self.location.lock().pending())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
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
    fn handle_wake(&mut self, now: Instant) {
        Proxy::handle_wake(self, now);
    }
    fn handle_load(&mut self, now: Instant, waited: Duration) {
        Proxy::handle_load(self, now, waited);
    }
}

mod absorb;
mod admit;
mod control;
mod delta;
mod deposit;
pub mod dialog;
mod forward;
mod local;
mod mwi;
mod overload;
mod permit;
mod relay;
mod target;
mod tx;
mod validate;

use dialog::{Parties, Remembered, RouteKeys, SealError};
use forward::{build_cancel_or_ack, own_routes};
pub use overload::{OverloadSettings, OverloadState};
use permit::Grant;
use sip_core::permit::{KeyRing, ProxyKey};
use target::Target;
use tx::{ClientEntry, ClientTx, Fired, Kind, Purpose, ServerEntry, ServerTx, TxKey, fire};
use validate::{Fault, Inspected};

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod commit_tests;
#[cfg(test)]
mod deposit_tests;
#[cfg(test)]
mod direct_message_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod hole_tests;
#[cfg(test)]
mod overload_tests;
#[cfg(test)]
mod permit_tests;
#[cfg(test)]
mod publish_tests;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod tests;
