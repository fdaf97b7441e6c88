//! The location service (RFC 3261 §10.3): address-of-record → bindings, held in memory
//! for lookups and made durable in a [`LocationStore`] so that bindings survive a
//! restart or a kill -9.
//!
//! Two ways to the store: written through before `replace` returns ([`Location::open`],
//! engine tests and tools), or handed to a [`WriteBehind`] worker that commits them in
//! groups off the engine's thread ([`Location::open_behind`], the running proxy). Behind,
//! a change is *pending* until its group committed: the registrar already builds on it
//! (a refresh right behind a REGISTER sees it), routing does not, and the engine holds
//! the REGISTER's 200 until [`Location::outcome`] reports the commit (each engine shard
//! asks for its own REGISTERs after [`Location::settle`]).

/// Failed groups remembered for [`Location::outcome`]; consecutive failures merge into
/// one range, so this bounds distinct failure episodes, not writes.
const FAILED_RANGES: usize = 256;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use hashbrown::HashTable;

use sip_core::message::SipUri;
use sip_core::transport::Transport;

use crate::engine::dialog::{PartyHash, party_hash};
use crate::keyed::Keyed;
use crate::store::{LocationStore, StoreError, Write};

/// One registered contact of an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as registered (no angle brackets).
    pub contact: Box<str>,
    /// Unix time (seconds) at which the binding lapses.
    pub expires_at: u64,
    /// q-value in thousandths (RFC 3261 §20.10), 1000 when absent.
    pub q: u16,
    /// The REGISTER's Call-ID, kept as a hash: it is only compared (§10.3 step 7).
    pub call_id: CallIdHash,
    pub cseq: u32,
    /// Path header values from the REGISTER (RFC 3327), in order.
    pub path: PathList,
    /// Where the REGISTER came from (transport and source address).
    pub source: Option<Source>,
    /// Simultaneous calls the UA takes (`max-calls` Contact parameter), if it said.
    pub max_calls: Option<u32>,
    /// Whether the proxy asks this UA with OPTIONS before routing a call to it
    /// (`load-query=0` in the Contact turns it off).
    pub load_query: bool,
}

/// The Path header values of a binding (RFC 3327), in order; a slice through `Deref`.
/// One pointer wide, since most bindings have none: it keeps [`Binding`] at 96 bytes,
/// one allocator size class below the 112 a `Vec` made it (docs/benchmarks.md, "Memory
/// per registration binding").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathList(Option<Box<Box<[String]>>>);

impl From<Vec<String>> for PathList {
    fn from(values: Vec<String>) -> Self {
        if values.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(values.into_boxed_slice())))
        }
    }
}

impl FromIterator<String> for PathList {
    fn from_iter<I: IntoIterator<Item = String>>(values: I) -> Self {
        values.into_iter().collect::<Vec<_>>().into()
    }
}

impl std::ops::Deref for PathList {
    type Target = [String];

    fn deref(&self) -> &[String] {
        self.0.as_deref().map_or(&[], |values| values)
    }
}

/// Where a REGISTER came from: its transport and source address, in 24 bytes. As a
/// `(Transport, SocketAddr)` it took 36 and made [`Binding`] 96 bytes, one allocator size
/// class above the 80 it is now (docs/benchmarks.md, "Memory per registration binding").
/// An IPv6 source keeps its scope (a link-local address needs it), not its flow label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The IPv4 address in the first four bytes, or the IPv6 address.
    ip: [u8; 16],
    scope: u32,
    port: u16,
    transport: Transport,
    v6: bool,
}

impl From<(Transport, SocketAddr)> for Source {
    fn from((transport, addr): (Transport, SocketAddr)) -> Self {
        let mut ip = [0; 16];
        let (scope, v6) = match addr {
            SocketAddr::V4(a) => {
                ip[..4].copy_from_slice(&a.ip().octets());
                (0, false)
            }
            SocketAddr::V6(a) => {
                ip = a.ip().octets();
                (a.scope_id(), true)
            }
        };
        Self {
            ip,
            scope,
            port: addr.port(),
            transport,
            v6,
        }
    }
}

impl Source {
    pub fn addr(self) -> SocketAddr {
        if self.v6 {
            SocketAddrV6::new(Ipv6Addr::from(self.ip), self.port, 0, self.scope).into()
        } else {
            let [a, b, c, d, ..] = self.ip;
            SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), self.port).into()
        }
    }

    /// Both parts, as the transport layer names a peer.
    pub fn get(self) -> (Transport, SocketAddr) {
        (self.transport, self.addr())
    }
}

/// Whether two binding lists hold the same Contacts from the same sources, in order:
/// then they are indexed under the same addresses.
fn same_places(old: &[Binding], new: &[Binding]) -> bool {
    old.len() == new.len()
        && old
            .iter()
            .zip(new)
            .all(|(o, n)| o.contact == n.contact && o.source == n.source)
}

/// The addresses a binding set is indexed under, sorted, each once.
fn address_set(bindings: &[Binding]) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = bindings.iter().flat_map(Location::addresses).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// An AOR and its bindings. Exact-size slices: a Vec grown by the registrar's push
/// would keep room for four.
struct Aor {
    key: Arc<str>,
    bindings: Box<[Binding]>,
}

/// The by-address index's mark for an address where AORs of more than one hash are
/// bound: they are in [`Location::shared`]. No AOR hashes to it ([`aor_hash`]).
const MANY: u64 = 0;

/// The hash an AOR is kept under in [`Location::aors`] and named by in
/// [`Location::by_addr`]: a keyed hash, never [`MANY`].
fn aor_hash(hasher: &RandomState, aor: &str) -> u64 {
    hasher.hash_one(aor).max(1)
}

/// Bindings by AOR (`user@domain`, host lowercased). Known AORs without live bindings
/// are kept so that "never registered" (404) and "not reachable now" (480) differ.
pub struct Location {
    /// By [`aor_hash`]: the by-address index names an AOR by its hash alone.
    aors: HashTable<Aor>,
    /// Which AORs have a binding at an address (its Contact's or its REGISTER's
    /// source): a request aimed at a registered address, not at the AOR, is still
    /// gated as a request to that AOR.
    ///
    /// Keyed by a keyed hash of the address, valued by the [`aor_hash`] of the AORs
    /// bound there (almost always one), or [`MANY`]: 16 bytes a slot, where an
    /// address and an `Arc<str>` AOR took 24 (docs/benchmarks.md, "Memory per
    /// registration binding"). Candidates are checked against the bindings on lookup,
    /// so a collision of either hash never names a wrong AOR.
    by_addr: HashMap<u64, u64, Keyed>,
    /// The AORs at an address marked [`MANY`] (behind an SBC, a PBX trunk or one NAT
    /// address there may be thousands), by their party hash
    /// (`engine::dialog::party_hash`), so that adding, removing and "is this party
    /// here?" stay O(1) whatever their number.
    shared: HashMap<u64, HashMap<PartyHash, Arc<str>>, Keyed>,
    /// Keys [`aor_hash`] and the address hashes.
    hasher: RandomState,
    sink: Sink,
    /// AORs whose lapsed bindings a purge left in the store (its write failed or found
    /// the queue full); the next purge names them again.
    unpurged: Vec<Arc<str>>,
}

/// Where the location service's changes go.
enum Sink {
    /// Written before `replace` returns.
    Through(Box<dyn LocationStore>),
    Behind(Behind),
}

/// Changes queued to a [`WriteBehind`] worker and not yet settled, oldest first; the
/// n-th has sequence number `first + n`.
struct Behind {
    worker: Box<dyn WriteBehind>,
    first: u64,
    queue: VecDeque<Pending>,
    /// The newest pending bindings of an AOR: its sequence number (the registrar's view).
    newest: HashMap<Arc<str>, u64>,
    /// Settled writes that were not stored (inclusive ranges, oldest first).
    failed: VecDeque<(u64, u64)>,
}

enum Pending {
    Put(Arc<str>, Box<[Binding]>),
    Purge(Box<[Arc<str>]>),
}

/// A store worker that commits writes in groups, off the engine's thread.
pub trait WriteBehind: Send {
    /// Queues write number `seq` (numbers increase by one); `Err(QueueFull)` when the
    /// worker is that far behind.
    fn submit(&mut self, seq: u64, write: Write) -> Result<(), QueueFull>;
    /// The next outcome, if one is ready. Outcomes come in order, each settling every
    /// write up to `through` that an earlier outcome did not.
    fn poll_done(&mut self) -> Option<Settled>;
}

/// The store worker's queue is full: the request that needed the write gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// The outcome of one group of writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub through: u64,
    /// Committed; `false`: none of the group is stored.
    pub ok: bool,
}

/// How a change was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Durable now.
    Now,
    /// Durable when an outcome settles this sequence number.
    Pending(u64),
}

/// Why a change was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storage: write queue full")]
    Backlog,
}

impl Behind {
    fn pending(&self, seq: u64) -> Option<&Pending> {
        self.queue
            .get(usize::try_from(seq.checked_sub(self.first)?).ok()?)
    }
}

/// A Call-ID as the registrar keeps it: the first 64 bits of its SHA-256. The registrar
/// only asks "same Call-ID as the stored binding?" (RFC 3261 §10.3 step 7), and 8 bytes
/// cost less than the string (typically 30–60 bytes plus its allocation). Stable across
/// versions, so it is stored as is (`h:` and 16 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallIdHash(pub u64);

impl CallIdHash {
    pub fn of(call_id: &str) -> Self {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(call_id.as_bytes());
        Self(u64::from_be_bytes([
            d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
        ]))
    }

    /// The stored form.
    pub fn to_text(self) -> String {
        // By hand: `format!` was a tenth of the store thread's time under REGISTER load.
        let mut s = String::with_capacity(18);
        s.push_str("h:");
        crate::route::push_hex(&mut s, self.0, 16);
        s
    }

    /// From the stored form; a plain Call-ID (stored by an older version) is hashed.
    pub fn from_text(s: &str) -> Self {
        s.strip_prefix("h:")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map_or_else(|| Self::of(s), Self)
    }
}

/// Who is registered at an address, as the gate asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtAddress {
    Nobody,
    /// At most [`SHARED_ADDRESS`] AORs.
    Aors(Vec<Arc<str>>),
    /// More AORs than that share the address (an SBC, a PBX, one NAT address).
    Shared,
}

/// Above this many AORs an address counts as shared.
pub const SHARED_ADDRESS: usize = 32;

/// Canonical AOR key of a SIP URI: `user@host` with the host lowercased (RFC 3261 §10.3
/// step 5 compares AORs as URIs: the user part is case-sensitive, the host is not).
pub fn aor_key(uri: &SipUri<'_>) -> Option<String> {
    let user = std::str::from_utf8(uri.user?).ok()?;
    let host = std::str::from_utf8(uri.host).ok()?;
    Some(format!("{user}@{}", host.to_ascii_lowercase()))
}

impl Location {
    /// Loads every stored binding; changes are written through to `store`.
    pub fn open(mut store: Box<dyn LocationStore>) -> Result<Self, StoreError> {
        let loaded = store.load_all()?;
        Ok(Self::with(loaded, Sink::Through(store)))
    }

    /// Starts from `loaded` (the store's `load_all`); changes go to `worker`.
    pub fn open_behind(loaded: Vec<(String, Vec<Binding>)>, worker: Box<dyn WriteBehind>) -> Self {
        let behind = Behind {
            worker,
            first: 1,
            queue: VecDeque::new(),
            newest: HashMap::new(),
            failed: VecDeque::new(),
        };
        Self::with(loaded, Sink::Behind(behind))
    }

    fn with(loaded: Vec<(String, Vec<Binding>)>, sink: Sink) -> Self {
        let mut l = Self {
            aors: HashTable::with_capacity(loaded.len()),
            by_addr: HashMap::default(),
            shared: HashMap::default(),
            hasher: RandomState::new(),
            sink,
            unpurged: Vec::new(),
        };
        for (aor, bindings) in loaded {
            l.commit(aor.into(), bindings.into_boxed_slice());
        }
        l
    }

    /// The entry of `aor`.
    fn get(&self, aor: &str) -> Option<&Aor> {
        self.aors
            .find(aor_hash(&self.hasher, aor), |e| *e.key == *aor)
    }

    /// The entries whose AOR hashes to `h`: one, but for a collision.
    fn hashed(&self, h: u64) -> impl Iterator<Item = &Aor> {
        self.aors
            .iter_hash(h)
            .filter(move |e| aor_hash(&self.hasher, &e.key) == h)
    }

    /// The addresses a binding can be reached at: its Contact's host:port (an IP
    /// literal or `localhost`) and the source of its REGISTER.
    fn addresses(b: &Binding) -> impl Iterator<Item = SocketAddr> {
        let contact = crate::route::resolve(b.contact.as_bytes()).map(|(_, a)| a);
        let source = b.source.map(Source::addr);
        contact
            .into_iter()
            .chain(source.filter(|s| Some(*s) != contact))
    }

    /// Whether `e` has a binding at an address whose index key is `key`.
    fn keyed_at(&self, e: &Aor, key: u64) -> bool {
        e.bindings
            .iter()
            .flat_map(Self::addresses)
            .any(|a| self.hasher.hash_one(a) == key)
    }

    fn index(&mut self, aor: &Arc<str>, bindings: &[Binding]) {
        let h = aor_hash(&self.hasher, aor);
        for a in bindings.iter().flat_map(Self::addresses) {
            let key = self.hasher.hash_one(a);
            match self.by_addr.get(&key).copied() {
                None => {
                    self.by_addr.insert(key, h);
                }
                Some(named) if named == h => {}
                Some(MANY) => {
                    if let Some(m) = self.shared.get_mut(&key) {
                        m.insert(party_hash(aor), aor.clone());
                    }
                }
                Some(named) => {
                    // A second AOR at the address: from now on they are listed.
                    let mut m: HashMap<PartyHash, Arc<str>> = self
                        .hashed(named)
                        .filter(|e| self.keyed_at(e, key))
                        .map(|e| (party_hash(&e.key), e.key.clone()))
                        .collect();
                    m.insert(party_hash(aor), aor.clone());
                    self.shared.insert(key, m);
                    self.by_addr.insert(key, MANY);
                }
            }
        }
    }

    fn unindex_addr(&mut self, a: SocketAddr, aor: &str) {
        let key = self.hasher.hash_one(a);
        match self.by_addr.get(&key).copied() {
            Some(MANY) => {
                let Some(m) = self.shared.get_mut(&key) else {
                    return;
                };
                let p = party_hash(aor);
                if m.get(&p).is_some_and(|a| **a == *aor) {
                    m.remove(&p);
                }
                if m.len() > 1 {
                    return;
                }
                let only = m.values().next().cloned();
                self.shared.remove(&key);
                match only {
                    Some(only) => self.by_addr.insert(key, aor_hash(&self.hasher, &only)),
                    None => self.by_addr.remove(&key),
                };
            }
            Some(named) if named == aor_hash(&self.hasher, aor) => {
                // Another AOR of the same hash may still be bound there.
                let others = self
                    .hashed(named)
                    .any(|e| *e.key != *aor && self.keyed_at(e, key));
                if !others {
                    self.by_addr.remove(&key);
                }
            }
            // Not indexed there, or under another AOR.
            None | Some(_) => {}
        }
    }

    fn unindex(&mut self, aor: &str, bindings: &[Binding]) {
        for a in bindings.iter().flat_map(Self::addresses) {
            self.unindex_addr(a, aor);
        }
    }

    /// Whether `e` has a binding at `addr` (the index is keyed by hashes, so its
    /// candidates are checked against the bindings).
    fn bound_at(e: &Aor, addr: SocketAddr) -> bool {
        e.bindings
            .iter()
            .flat_map(Self::addresses)
            .any(|x| x == addr)
    }

    /// The entries indexed at `addr` (candidates, unchecked) and how many AORs the
    /// index lists there.
    fn candidates(&self, addr: SocketAddr) -> (impl Iterator<Item = &Aor>, usize) {
        let key = self.hasher.hash_one(addr);
        let (one, many) = match self.by_addr.get(&key).copied() {
            None => (None, None),
            Some(MANY) => (None, self.shared.get(&key)),
            Some(h) => (Some(h), None),
        };
        let n = many.map_or(usize::from(one.is_some()), HashMap::len);
        let listed = many
            .into_iter()
            .flat_map(HashMap::values)
            .filter_map(|aor| self.get(aor));
        (
            one.into_iter().flat_map(|h| self.hashed(h)).chain(listed),
            n,
        )
    }

    /// The AORs with a binding (live or not yet purged) at `addr`, or `Shared` when
    /// more than [`SHARED_ADDRESS`] share it.
    pub fn at_address(&self, addr: SocketAddr) -> AtAddress {
        let (candidates, n) = self.candidates(addr);
        if n > SHARED_ADDRESS {
            return AtAddress::Shared;
        }
        let aors: Vec<Arc<str>> = candidates
            .filter(|e| Self::bound_at(e, addr))
            .map(|e| e.key.clone())
            .collect();
        if aors.is_empty() {
            AtAddress::Nobody
        } else {
            AtAddress::Aors(aors)
        }
    }

    /// Whether anyone is registered at `addr`.
    pub fn anyone_at(&self, addr: SocketAddr) -> bool {
        self.candidates(addr).0.any(|e| Self::bound_at(e, addr))
    }

    /// Whether the AOR with party hash `h` is registered at `addr`. O(1).
    pub fn party_at(&self, addr: SocketAddr, h: PartyHash) -> bool {
        let key = self.hasher.hash_one(addr);
        match self.by_addr.get(&key).copied() {
            None => false,
            Some(MANY) => self
                .shared
                .get(&key)
                .and_then(|m| m.get(&h))
                .and_then(|aor| self.get(aor))
                .is_some_and(|e| Self::bound_at(e, addr)),
            Some(named) => self
                .hashed(named)
                .any(|e| party_hash(&e.key) == h && Self::bound_at(e, addr)),
        }
    }

    /// The AORs indexed at `addr` (candidates, unchecked), for a lookup that stops at
    /// its first match.
    pub fn indexed_at(&self, addr: SocketAddr) -> impl Iterator<Item = &Arc<str>> {
        self.candidates(addr).0.map(|e| &e.key)
    }

    /// Live bindings of `aor`, highest q first; `None` if the AOR was never registered.
    pub fn lookup(&self, aor: &str, unix_now: u64) -> Option<Vec<&Binding>> {
        let all = &self.get(aor)?.bindings;
        let mut live: Vec<&Binding> = all.iter().filter(|b| b.expires_at > unix_now).collect();
        live.sort_by_key(|b| std::cmp::Reverse(b.q));
        Some(live)
    }

    /// All bindings of `aor`, expired ones included, pending changes applied (the
    /// registrar's view).
    pub fn bindings(&self, aor: &str) -> &[Binding] {
        if let Sink::Behind(b) = &self.sink
            && let Some(seq) = b.newest.get(aor)
            && let Some(Pending::Put(_, list)) = b.pending(*seq)
        {
            return list;
        }
        self.get(aor).map_or(&[], |e| &e.bindings)
    }

    /// Replaces the bindings of `aor`. Visible to routing once stored: at once when
    /// written through, after [`Location::poll_settled`] reports it when behind.
    pub fn replace(&mut self, aor: &str, bindings: Vec<Binding>) -> Result<Stored, ReplaceError> {
        let found = self
            .aors
            .find(aor_hash(&self.hasher, aor), |e| *e.key == *aor);
        let (key, stored) = match found {
            Some(e) => (e.key.clone(), Some(&e.bindings)),
            None => (Arc::from(aor), None),
        };
        match &mut self.sink {
            Sink::Through(store) => store.put(aor, &bindings)?,
            Sink::Behind(b) => {
                let list = bindings.into_boxed_slice();
                let seq = b.first + b.queue.len() as u64;
                // Same Contacts as stored, and nothing pending for the AOR that could
                // fail and leave the store holding other rows than `aors` says.
                let in_place = !b.newest.contains_key(aor)
                    && stored.is_some_and(|stored| {
                        stored.len() == list.len()
                            && list
                                .iter()
                                .all(|n| stored.iter().any(|s| s.contact == n.contact))
                    });
                let write = Write::Put {
                    aor: key.clone(),
                    bindings: list.clone(),
                    in_place,
                };
                b.worker
                    .submit(seq, write)
                    .map_err(|QueueFull| ReplaceError::Backlog)?;
                b.newest.insert(key.clone(), seq);
                b.queue.push_back(Pending::Put(key, list));
                return Ok(Stored::Pending(seq));
            }
        }
        self.commit(key, bindings.into_boxed_slice());
        Ok(Stored::Now)
    }

    /// Makes bindings that another node stored visible as they are, writing nothing
    /// (PostgreSQL backend: read after that node committed them). A change of this
    /// node's own still pending for the AOR stays the registrar's view and is made
    /// visible over this one when it settles.
    pub fn apply_stored(&mut self, aor: &str, bindings: Vec<Binding>) {
        let key = self
            .get(aor)
            .map_or_else(|| Arc::from(aor), |e| e.key.clone());
        self.commit(key, bindings.into_boxed_slice());
    }

    /// Makes stored bindings visible.
    fn commit(&mut self, key: Arc<str>, bindings: Box<[Binding]>) {
        // A refresh (the same Contacts from the same sources) replaces the list in
        // place: one lookup, and no Contact parsed to compare address sets.
        let h = aor_hash(&self.hasher, &key);
        if let Some(e) = self.aors.find_mut(h, |e| e.key == key)
            && same_places(&e.bindings, &bindings)
        {
            e.bindings = bindings;
            return;
        }
        let old = self
            .aors
            .find_entry(h, |e| e.key == key)
            .ok()
            .map(|e| e.remove().0.bindings);
        // A refresh keeps its addresses: the index is right as it is (with thousands
        // of AORs behind one address, re-indexing is a removal and an insertion in a
        // large table per REGISTER).
        let same = old
            .as_deref()
            .is_some_and(|old| address_set(old) == address_set(&bindings));
        if !same {
            if let Some(old) = &old {
                self.unindex(&key, old);
            }
            self.index(&key, &bindings);
        }
        let hasher = &self.hasher;
        self.aors
            .insert_unique(h, Aor { key, bindings }, |e| aor_hash(hasher, &e.key));
    }

    /// The next outcome of the write-behind worker, applied: committed changes become
    /// visible, failed ones are dropped (the registrar's view falls back to what is
    /// stored). `None` when nothing settled (or when writing through).
    pub fn poll_settled(&mut self) -> Option<Settled> {
        let Sink::Behind(b) = &mut self.sink else {
            return None;
        };
        let settled = b.worker.poll_done()?;
        if !settled.ok && b.first <= settled.through {
            match b.failed.back_mut() {
                Some((_, hi)) if *hi + 1 == b.first => *hi = settled.through,
                _ => {
                    if b.failed.len() == FAILED_RANGES {
                        b.failed.pop_front();
                    }
                    b.failed.push_back((b.first, settled.through));
                }
            }
        }
        let mut committed = Vec::new();
        while b.first <= settled.through {
            let Some(p) = b.queue.pop_front() else { break };
            let seq = b.first;
            b.first += 1;
            match p {
                Pending::Put(aor, list) => {
                    if b.newest.get(&aor) == Some(&seq) {
                        b.newest.remove(&aor);
                    }
                    if settled.ok {
                        committed.push((aor, list));
                    }
                }
                Pending::Purge(aors) if !settled.ok => self.unpurged.extend(aors),
                Pending::Purge(_) => {}
            }
        }
        for (aor, list) in committed {
            self.commit(aor, list);
        }
        Some(settled)
    }

    /// Applies every outcome the worker has ready.
    pub fn settle(&mut self) {
        while self.poll_settled().is_some() {}
    }

    /// How change `seq` ([`Stored::Pending`]) ended, as far as [`Location::settle`] has
    /// seen: `None` while pending, `Some(true)` stored, `Some(false)` its group failed.
    pub fn outcome(&self, seq: u64) -> Option<bool> {
        match &self.sink {
            Sink::Through(_) => Some(true),
            Sink::Behind(b) => {
                (seq < b.first).then(|| !b.failed.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq)))
            }
        }
    }

    /// Changes queued and not yet settled.
    pub fn pending(&self) -> usize {
        match &self.sink {
            Sink::Through(_) => 0,
            Sink::Behind(b) => b.queue.len(),
        }
    }

    /// Drops expired bindings from memory and from the store.
    pub fn purge(&mut self, unix_now: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut gone = Vec::new();
        let mut lapsed: Vec<Arc<str>> = Vec::new();
        for Aor {
            key: aor,
            bindings: list,
        } in &mut self.aors
        {
            if list.iter().all(|b| b.expires_at > unix_now) {
                continue;
            }
            lapsed.push(aor.clone());
            let (live, dead): (Vec<Binding>, Vec<Binding>) = std::mem::take(list)
                .into_iter()
                .partition(|b| b.expires_at > unix_now);
            n += dead.len();
            gone.extend(dead.into_iter().map(|b| (aor.clone(), b)));
            *list = live.into_boxed_slice();
        }
        for (aor, b) in gone {
            // An address still used by another live binding of the same AOR stays.
            let kept: Vec<SocketAddr> = self
                .get(&aor)
                .into_iter()
                .flat_map(|e| &e.bindings)
                .flat_map(Self::addresses)
                .collect();
            for a in Self::addresses(&b).filter(|a| !kept.contains(a)) {
                self.unindex_addr(a, &aor);
            }
        }
        lapsed.append(&mut self.unpurged);
        if lapsed.is_empty() {
            return Ok(n);
        }
        lapsed.sort_unstable();
        lapsed.dedup();
        let aors = lapsed.into_boxed_slice();
        match &mut self.sink {
            Sink::Through(store) => {
                if let Err(e) = store.purge_expired(unix_now, &aors) {
                    self.unpurged = aors.into_vec();
                    return Err(e);
                }
            }
            // Nothing waits for this one: what it does not store, the next one names again.
            Sink::Behind(b) => {
                let seq = b.first + b.queue.len() as u64;
                let write = Write::PurgeExpired {
                    unix_now,
                    aors: aors.clone(),
                };
                if b.worker.submit(seq, write).is_ok() {
                    b.queue.push_back(Pending::Purge(aors));
                } else {
                    self.unpurged = aors.into_vec();
                }
            }
        }
        Ok(n)
    }

    /// Number of AORs and of bindings held.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.aors.len(),
            self.aors.iter().map(|e| e.bindings.len()).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn binding(contact: &str, source: &str) -> Binding {
        Binding {
            contact: contact.into(),
            expires_at: 2_000,
            q: 1000,
            call_id: CallIdHash::of("c"),
            cseq: 1,
            path: PathList::default(),
            source: Some((Transport::Udp, source.parse().unwrap()).into()),
            max_calls: None,
            load_query: true,
        }
    }

    #[test]
    fn a_binding_and_an_index_slot_are_small() {
        assert_eq!(std::mem::size_of::<Binding>(), 80);
        assert_eq!(std::mem::size_of::<Option<Source>>(), 24);
    }

    #[test]
    fn a_source_keeps_its_address_and_transport() {
        for (t, a) in [
            (Transport::Udp, "192.0.2.1:5060"),
            (Transport::Tls, "[2001:db8::1]:5061"),
            (Transport::Tcp, "[fe80::1%3]:5060"),
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(Source::from((t, addr)).get(), (t, addr), "{a}");
        }
        let v4: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:5060".parse().unwrap();
        assert_ne!(
            Source::from((Transport::Udp, v4)),
            Source::from((Transport::Udp, mapped))
        );
    }

    #[test]
    fn one_address_shared_by_many_aors_stays_cheap_and_exact() {
        let mut l = Location::open(Box::new(MemoryStore::default())).unwrap();
        let sbc = "192.0.2.1:5060";
        let addr: SocketAddr = sbc.parse().unwrap();
        for i in 0..200 {
            let aor = format!("u{i}@x");
            l.replace(&aor, vec![binding(&format!("sip:u{i}@{sbc}"), sbc)])
                .unwrap();
        }
        assert_eq!(l.at_address(addr), AtAddress::Shared);
        assert!(l.anyone_at(addr));
        assert!(l.party_at(addr, party_hash("u7@x")));
        assert!(!l.party_at(addr, party_hash("stranger@x")));
        // u7 moves away: it is no longer a party at the shared address.
        l.replace(
            "u7@x",
            vec![binding("sip:u7@198.51.100.9:5060", "198.51.100.9:5060")],
        )
        .unwrap();
        assert!(!l.party_at(addr, party_hash("u7@x")));
        let new: SocketAddr = "198.51.100.9:5060".parse().unwrap();
        assert_eq!(l.at_address(new), AtAddress::Aors(vec![Arc::from("u7@x")]));
        // All but two leave: the address is no longer shared, and lists them exactly.
        for i in 2..200 {
            l.replace(&format!("u{i}@x"), Vec::new()).unwrap();
        }
        let AtAddress::Aors(mut left) = l.at_address(addr) else {
            panic!("two AORs expected");
        };
        left.sort();
        assert_eq!(left, vec![Arc::from("u0@x"), Arc::from("u1@x")]);
        // One left, then a second one back: the index names one, then lists both.
        l.replace("u0@x", Vec::new()).unwrap();
        assert_eq!(l.at_address(addr), AtAddress::Aors(vec![Arc::from("u1@x")]));
        assert!(l.party_at(addr, party_hash("u1@x")));
        assert!(!l.party_at(addr, party_hash("u0@x")));
        l.replace("u0@x", vec![binding(&format!("sip:u0@{sbc}"), sbc)])
            .unwrap();
        let AtAddress::Aors(mut back) = l.at_address(addr) else {
            panic!("two AORs expected");
        };
        back.sort();
        assert_eq!(back, vec![Arc::from("u0@x"), Arc::from("u1@x")]);
        assert!(l.party_at(addr, party_hash("u0@x")));
        l.replace("u0@x", Vec::new()).unwrap();
        l.replace("u1@x", Vec::new()).unwrap();
        assert_eq!(l.at_address(addr), AtAddress::Nobody);
        assert!(!l.anyone_at(addr));
    }

    /// A refresh at the same addresses leaves the index as it is; one that moves the
    /// contact or the source re-indexes the AOR under the new addresses only.
    #[test]
    fn a_refresh_keeps_or_moves_the_address_index() {
        let mut l = Location::open(Box::new(MemoryStore::default())).unwrap();
        let (a, b, nat) = ("192.0.2.5:5070", "192.0.2.6:5070", "203.0.113.1:40000");
        let at = |l: &Location, x: &str| l.at_address(x.parse().unwrap());
        let bob = || AtAddress::Aors(vec![Arc::from("bob@x")]);
        l.replace("bob@x", vec![binding(&format!("sip:bob@{a}"), a)])
            .unwrap();
        l.replace("bob@x", vec![binding(&format!("sip:bob@{a}"), a)])
            .unwrap();
        assert_eq!(at(&l, a), bob());
        // Same contact, new source (a NAT binding changed): both addresses, then only
        // the contact's once the source is the contact's again.
        l.replace("bob@x", vec![binding(&format!("sip:bob@{a}"), nat)])
            .unwrap();
        assert_eq!((at(&l, a), at(&l, nat)), (bob(), bob()));
        l.replace("bob@x", vec![binding(&format!("sip:bob@{b}"), b)])
            .unwrap();
        assert_eq!(at(&l, a), AtAddress::Nobody);
        assert_eq!(at(&l, nat), AtAddress::Nobody);
        assert_eq!(at(&l, b), bob());
        // Two bindings at one address, then one of them gone: still indexed there.
        l.replace(
            "bob@x",
            vec![
                binding(&format!("sip:bob@{b}"), b),
                binding(&format!("sip:bob2@{b}"), b),
            ],
        )
        .unwrap();
        l.replace("bob@x", vec![binding(&format!("sip:bob2@{b}"), b)])
            .unwrap();
        assert_eq!(at(&l, b), bob());
        l.replace("bob@x", Vec::new()).unwrap();
        assert_eq!(at(&l, b), AtAddress::Nobody);
    }

    /// A worker that settles each write as it comes: failed while `fail`, refused
    /// while `full`.
    #[derive(Clone, Default)]
    struct Scripted {
        writes: Arc<std::sync::Mutex<Vec<Write>>>,
        done: Arc<std::sync::Mutex<VecDeque<Settled>>>,
        fail: Arc<std::sync::Mutex<bool>>,
        full: Arc<std::sync::Mutex<bool>>,
    }

    impl WriteBehind for Scripted {
        fn submit(&mut self, seq: u64, write: Write) -> Result<(), QueueFull> {
            if *self.full.lock().unwrap() {
                return Err(QueueFull);
            }
            self.writes.lock().unwrap().push(write);
            let ok = !*self.fail.lock().unwrap();
            self.done
                .lock()
                .unwrap()
                .push_back(Settled { through: seq, ok });
            Ok(())
        }
        fn poll_done(&mut self) -> Option<Settled> {
            self.done.lock().unwrap().pop_front()
        }
    }

    /// A refresh of the stored Contacts with nothing pending for its AOR may be
    /// updated in place; a new AOR, other Contacts or a pending change may not.
    #[test]
    fn only_a_refresh_of_what_is_stored_is_marked_in_place() {
        let w = Scripted::default();
        let mut l = Location::open_behind(Vec::new(), Box::new(w.clone()));
        let last_in_place = |w: &Scripted| match w.writes.lock().unwrap().last() {
            Some(Write::Put { in_place, .. }) => *in_place,
            _ => panic!("no put"),
        };
        let b1 = || binding("sip:bob@192.0.2.5:5070", "192.0.2.5:5070");
        let b2 = || binding("sip:bob@192.0.2.6:5070", "192.0.2.6:5070");
        l.replace("bob@x", vec![b1()]).unwrap();
        assert!(!last_in_place(&w), "a new AOR");
        l.replace("bob@x", vec![b1()]).unwrap();
        assert!(!last_in_place(&w), "the first is still pending");
        l.settle();
        l.replace("bob@x", vec![b1()]).unwrap();
        assert!(last_in_place(&w), "a refresh of what is stored");
        l.settle();
        l.replace("bob@x", vec![b2()]).unwrap();
        assert!(!last_in_place(&w), "another Contact");
        l.settle();
        l.replace("bob@x", vec![b2(), b1()]).unwrap();
        assert!(!last_in_place(&w), "one more Contact");
    }

    /// A purge the store did not take (its group failed, or the queue was full) is
    /// named again by the next one, although memory no longer holds what lapsed.
    #[test]
    fn a_purge_that_was_not_stored_is_named_again() {
        let w = Scripted::default();
        let loaded = vec![(
            "bob@x".to_owned(),
            vec![binding("sip:bob@192.0.2.5:5070", "192.0.2.5:5070")],
        )];
        let mut l = Location::open_behind(loaded, Box::new(w.clone()));
        // The AORs of the purge `purge` submits, if it submits one.
        let named = |l: &mut Location| {
            let before = w.writes.lock().unwrap().len();
            l.purge(3_000).unwrap();
            let writes = w.writes.lock().unwrap();
            match writes.last() {
                Some(Write::PurgeExpired { aors, .. }) if writes.len() > before => aors.to_vec(),
                _ => Vec::new(),
            }
        };
        let bob = vec![Arc::<str>::from("bob@x")];
        *w.fail.lock().unwrap() = true;
        assert_eq!(named(&mut l), bob);
        l.settle();
        *w.fail.lock().unwrap() = false;
        assert_eq!(
            named(&mut l),
            bob,
            "memory holds nothing lapsed, the store may"
        );
        l.settle();
        assert_eq!(named(&mut l), Vec::new(), "stored: not named again");

        l.replace(
            "bob@x",
            vec![binding("sip:bob@192.0.2.5:5070", "192.0.2.5:5070")],
        )
        .unwrap();
        l.settle();
        *w.full.lock().unwrap() = true;
        assert_eq!(named(&mut l), Vec::new(), "the queue was full");
        *w.full.lock().unwrap() = false;
        assert_eq!(named(&mut l), bob);
    }

    #[test]
    fn purge_unindexes_expired_bindings() {
        let mut l = Location::open(Box::new(MemoryStore::default())).unwrap();
        let a = "192.0.2.5:5070";
        l.replace("bob@x", vec![binding(&format!("sip:bob@{a}"), a)])
            .unwrap();
        assert!(l.anyone_at(a.parse().unwrap()));
        assert_eq!(l.purge(3_000).unwrap(), 1);
        assert!(!l.anyone_at(a.parse().unwrap()));
        assert_eq!(l.counts(), (1, 0));
    }
}
