//! The location service (RFC 3261 §10.3): address-of-record → bindings, held in memory
//! for lookups and written through to a [`LocationStore`] so that bindings survive a
//! restart or a kill -9.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;

use sip_core::message::SipUri;
use sip_core::transport::Transport;

use crate::store::{LocationStore, StoreError};

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
    pub path: Vec<String>,
    /// Where the REGISTER came from (transport and source address).
    pub source: Option<(Transport, SocketAddr)>,
    /// Simultaneous calls the UA takes (`max-calls` Contact parameter), if it said.
    pub max_calls: Option<u32>,
    /// Whether the proxy asks this UA with OPTIONS before routing a call to it
    /// (`load-query=0` in the Contact turns it off).
    pub load_query: bool,
}

/// Bindings by AOR (`user@domain`, host lowercased). Known AORs without live bindings
/// are kept so that "never registered" (404) and "not reachable now" (480) differ.
pub struct Location {
    /// Exact-size slices: a Vec grown by the registrar's push would keep room for four.
    aors: HashMap<Arc<str>, Box<[Binding]>>,
    /// Which AORs have a binding at an address (its Contact's or its REGISTER's
    /// source): a request aimed at a registered address, not at the AOR, is still
    /// gated as a request to that AOR.
    /// Keyed by a keyed hash of the address (8 bytes, not 32): candidates are checked
    /// against the bindings on lookup, so a collision never names a wrong AOR.
    by_addr: HashMap<u64, AddrAors>,
    addr_hasher: RandomState,
    store: Box<dyn LocationStore>,
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
        format!("h:{:016x}", self.0)
    }

    /// From the stored form; a plain Call-ID (stored by an older version) is hashed.
    pub fn from_text(s: &str) -> Self {
        s.strip_prefix("h:")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map_or_else(|| Self::of(s), Self)
    }
}

/// The AORs bound at one address: almost always one, kept without a second allocation.
#[derive(Debug)]
enum AddrAors {
    One(Arc<str>),
    Many(Vec<Arc<str>>),
}

impl AddrAors {
    fn as_slice(&self) -> &[Arc<str>] {
        match self {
            Self::One(a) => std::slice::from_ref(a),
            Self::Many(v) => v,
        }
    }

    fn add(&mut self, aor: &Arc<str>) {
        if self.as_slice().iter().any(|x| **x == **aor) {
            return;
        }
        match self {
            Self::One(a) => *self = Self::Many(vec![a.clone(), aor.clone()]),
            Self::Many(v) => v.push(aor.clone()),
        }
    }

    /// Removes `aor`; `true` when none is left.
    fn remove(&mut self, aor: &str) -> bool {
        match self {
            Self::One(a) => **a == *aor,
            Self::Many(v) => {
                v.retain(|x| **x != *aor);
                let empty = v.is_empty();
                if let [only] = v.as_slice() {
                    let only = only.clone();
                    *self = Self::One(only);
                }
                empty
            }
        }
    }
}

/// Canonical AOR key of a SIP URI: `user@host` with the host lowercased (RFC 3261 §10.3
/// step 5 compares AORs as URIs: the user part is case-sensitive, the host is not).
pub fn aor_key(uri: &SipUri<'_>) -> Option<String> {
    let user = std::str::from_utf8(uri.user?).ok()?;
    let host = std::str::from_utf8(uri.host).ok()?;
    Some(format!("{user}@{}", host.to_ascii_lowercase()))
}

impl Location {
    /// Loads every stored binding.
    pub fn open(store: Box<dyn LocationStore>) -> Result<Self, StoreError> {
        let mut l = Self {
            aors: HashMap::new(),
            by_addr: HashMap::new(),
            addr_hasher: RandomState::new(),
            store,
        };
        for (aor, bindings) in l.store.load_all()? {
            let aor: Arc<str> = aor.into();
            l.index(&aor, &bindings);
            l.aors.insert(aor, bindings.into_boxed_slice());
        }
        Ok(l)
    }

    /// The addresses a binding can be reached at: its Contact's host:port (an IP
    /// literal or `localhost`) and the source of its REGISTER.
    fn addresses(b: &Binding) -> impl Iterator<Item = SocketAddr> {
        let contact = crate::route::resolve(b.contact.as_bytes()).map(|(_, a)| a);
        let source = b.source.map(|(_, a)| a);
        contact
            .into_iter()
            .chain(source.filter(|s| Some(*s) != contact))
    }

    fn index(&mut self, aor: &Arc<str>, bindings: &[Binding]) {
        for a in bindings.iter().flat_map(Self::addresses) {
            match self.by_addr.entry(self.addr_hasher.hash_one(a)) {
                Entry::Vacant(v) => {
                    v.insert(AddrAors::One(aor.clone()));
                }
                Entry::Occupied(mut o) => o.get_mut().add(aor),
            }
        }
    }

    fn unindex_addr(&mut self, a: SocketAddr, aor: &str) {
        let key = self.addr_hasher.hash_one(a);
        if let Some(list) = self.by_addr.get_mut(&key)
            && list.remove(aor)
        {
            self.by_addr.remove(&key);
        }
    }

    fn unindex(&mut self, aor: &str, bindings: &[Binding]) {
        for a in bindings.iter().flat_map(Self::addresses) {
            self.unindex_addr(a, aor);
        }
    }

    /// AORs with a binding (live or not yet purged) at `addr`.
    pub fn aors_at(&self, addr: SocketAddr) -> Vec<Arc<str>> {
        let key = self.addr_hasher.hash_one(addr);
        let Some(candidates) = self.by_addr.get(&key) else {
            return Vec::new();
        };
        candidates
            .as_slice()
            .iter()
            .filter(|aor| {
                self.aors
                    .get(&***aor)
                    .is_some_and(|bs| bs.iter().flat_map(Self::addresses).any(|x| x == addr))
            })
            .cloned()
            .collect()
    }

    /// Live bindings of `aor`, highest q first; `None` if the AOR was never registered.
    pub fn lookup(&self, aor: &str, unix_now: u64) -> Option<Vec<&Binding>> {
        let all = self.aors.get(aor)?;
        let mut live: Vec<&Binding> = all.iter().filter(|b| b.expires_at > unix_now).collect();
        live.sort_by_key(|b| std::cmp::Reverse(b.q));
        Some(live)
    }

    /// All bindings of `aor`, expired ones included (the registrar's view).
    pub fn bindings(&self, aor: &str) -> &[Binding] {
        self.aors.get(aor).map_or(&[], |b| b)
    }

    /// Replaces the bindings of `aor`; written to the store before it is visible.
    pub fn replace(&mut self, aor: &str, bindings: Vec<Binding>) -> Result<(), StoreError> {
        self.store.put(aor, &bindings)?;
        let key = match self.aors.remove_entry(aor) {
            Some((key, old)) => {
                self.unindex(aor, &old);
                key
            }
            None => Arc::from(aor),
        };
        self.index(&key, &bindings);
        self.aors.insert(key, bindings.into_boxed_slice());
        Ok(())
    }

    /// Drops expired bindings from memory and from the store.
    pub fn purge(&mut self, unix_now: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut gone = Vec::new();
        for (aor, list) in &mut self.aors {
            if list.iter().all(|b| b.expires_at > unix_now) {
                continue;
            }
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
                .aors
                .get(&aor)
                .into_iter()
                .flatten()
                .flat_map(Self::addresses)
                .collect();
            for a in Self::addresses(&b).filter(|a| !kept.contains(a)) {
                self.unindex_addr(a, &aor);
            }
        }
        self.store.purge_expired(unix_now)?;
        Ok(n)
    }

    /// Number of AORs and of bindings held.
    pub fn counts(&self) -> (usize, usize) {
        (self.aors.len(), self.aors.values().map(|b| b.len()).sum())
    }
}
