//! The location service (RFC 3261 §10.3): address-of-record → bindings, held in memory
//! for lookups and written through to a [`LocationStore`] so that bindings survive a
//! restart or a kill -9.

use std::collections::HashMap;
use std::net::SocketAddr;

use sip_core::message::SipUri;
use sip_core::transport::Transport;

use crate::store::{LocationStore, StoreError};

/// One registered contact of an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as registered (no angle brackets).
    pub contact: String,
    /// Unix time (seconds) at which the binding lapses.
    pub expires_at: u64,
    /// q-value in thousandths (RFC 3261 §20.10), 1000 when absent.
    pub q: u16,
    pub call_id: String,
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
    aors: HashMap<String, Vec<Binding>>,
    /// Which AORs have a binding at an address (its Contact's or its REGISTER's
    /// source): a request aimed at a registered address, not at the AOR, is still
    /// gated as a request to that AOR.
    by_addr: HashMap<SocketAddr, Vec<String>>,
    store: Box<dyn LocationStore>,
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
    pub fn open(mut store: Box<dyn LocationStore>) -> Result<Self, StoreError> {
        let aors: HashMap<String, Vec<Binding>> = store.load_all()?.into_iter().collect();
        let mut l = Self {
            aors: HashMap::new(),
            by_addr: HashMap::new(),
            store,
        };
        for (aor, bindings) in aors {
            l.index(&aor, &bindings);
            l.aors.insert(aor, bindings);
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

    fn index(&mut self, aor: &str, bindings: &[Binding]) {
        for a in bindings.iter().flat_map(Self::addresses) {
            let list = self.by_addr.entry(a).or_default();
            if !list.iter().any(|x| x == aor) {
                list.push(aor.to_owned());
            }
        }
    }

    fn unindex(&mut self, aor: &str, bindings: &[Binding]) {
        for a in bindings.iter().flat_map(Self::addresses) {
            if let Some(list) = self.by_addr.get_mut(&a) {
                list.retain(|x| x != aor);
                if list.is_empty() {
                    self.by_addr.remove(&a);
                }
            }
        }
    }

    /// AORs with a binding (live or not yet purged) at `addr`.
    pub fn aors_at(&self, addr: SocketAddr) -> &[String] {
        self.by_addr.get(&addr).map_or(&[], Vec::as_slice)
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
        self.aors.get(aor).map_or(&[], Vec::as_slice)
    }

    /// Replaces the bindings of `aor`; written to the store before it is visible.
    pub fn replace(&mut self, aor: &str, bindings: Vec<Binding>) -> Result<(), StoreError> {
        self.store.put(aor, &bindings)?;
        if let Some(old) = self.aors.remove(aor) {
            self.unindex(aor, &old);
        }
        self.index(aor, &bindings);
        self.aors.insert(aor.to_owned(), bindings);
        Ok(())
    }

    /// Drops expired bindings from memory and from the store.
    pub fn purge(&mut self, unix_now: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        let mut gone = Vec::new();
        for (aor, list) in &mut self.aors {
            let before = list.len();
            list.retain(|b| {
                let live = b.expires_at > unix_now;
                if !live {
                    gone.push((aor.clone(), b.clone()));
                }
                live
            });
            n += before - list.len();
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
                if let Some(list) = self.by_addr.get_mut(&a) {
                    list.retain(|x| *x != aor);
                    if list.is_empty() {
                        self.by_addr.remove(&a);
                    }
                }
            }
        }
        self.store.purge_expired(unix_now)?;
        Ok(n)
    }

    /// Number of AORs and of bindings held.
    pub fn counts(&self) -> (usize, usize) {
        (self.aors.len(), self.aors.values().map(Vec::len).sum())
    }
}
