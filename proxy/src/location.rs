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
        let aors = store.load_all()?.into_iter().collect();
        Ok(Self { aors, store })
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
        self.aors.insert(aor.to_owned(), bindings);
        Ok(())
    }

    /// Drops expired bindings from memory and from the store.
    pub fn purge(&mut self, unix_now: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for list in self.aors.values_mut() {
            let before = list.len();
            list.retain(|b| b.expires_at > unix_now);
            n += before - list.len();
        }
        self.store.purge_expired(unix_now)?;
        Ok(n)
    }

    /// Number of AORs and of bindings held.
    pub fn counts(&self) -> (usize, usize) {
        (self.aors.len(), self.aors.values().map(Vec::len).sum())
    }
}
