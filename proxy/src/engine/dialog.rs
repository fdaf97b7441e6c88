//! The dialog seal: proof, carried in our own Record-Route URI, that a dialog was set
//! up through the gate. An in-dialog request (it has a To tag) is forwarded only when
//! the Route that names us carries a seal that verifies for the request's Call-ID and
//! one of its tags, and only towards one of the two parties the seal names.
//!
//! RFC 3261 §16.6 item 4 lets a proxy put whatever it wants in its own Record-Route
//! URI, and §12.1.1/§12.1.2 make both UAs copy it into the route set of the dialog, so
//! every in-dialog request that passes through us brings it back in its first Route
//! (§16.4 "the proxy MUST inspect the Request-URI... and the first Route"). The seal is
//! stateless: it verifies after a restart and on any node that holds the same key.
//!
//! Wire form: the URI parameter `pm=` followed by base64url (no padding) of
//! `kid (1) | caller hash (6) | callee hash (6) | mac (12)`, where the hashes are the
//! first 6 bytes of SHA-256 over the parties' AORs and the MAC is HMAC-SHA256 under the
//! route key over the route's `host:port`, the Call-ID, the caller's From tag and both
//! hashes (each field length-prefixed), truncated to 96 bits (RFC 2104 §5 allows
//! truncation to at least half the output; 96 bits is what RFC 4868 deems sufficient).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use subtle::ConstantTimeEq;

use sip_core::message::{Message, NameAddr, SipUri};

use super::Proxy;

/// The Record-Route URI parameter that carries the seal.
pub const SEAL_PARAM: &[u8] = b"pm";

const HASH_LEN: usize = 6;
const MAC_LEN: usize = 12;
const SEAL_LEN: usize = 1 + 2 * HASH_LEN + MAC_LEN;
const CALLER: std::ops::Range<usize> = 1..1 + HASH_LEN;
const CALLEE: std::ops::Range<usize> = CALLER.end..CALLER.end + HASH_LEN;
const MAC: std::ops::RangeFrom<usize> = CALLEE.end..;

/// A short, one-way name of a party (its AOR); compared, never reversed.
pub type PartyHash = [u8; HASH_LEN];

/// The party hash of an AOR (`user@host`, host lowercased by the caller).
pub fn party_hash(aor: &str) -> PartyHash {
    let d = Sha256::digest(aor.as_bytes());
    let mut h = [0; HASH_LEN];
    h.copy_from_slice(&d[..HASH_LEN]);
    h
}

/// The keys that seal and open routes: the current one signs, the current and the
/// previous one verify, so a key can be rotated without breaking dialogs in flight.
#[derive(Clone)]
pub struct RouteKeys {
    current: (u8, [u8; 32]),
    previous: Option<(u8, [u8; 32])>,
}

impl std::fmt::Debug for RouteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("RouteKeys")
            .field("current", &self.current.0)
            .field("previous", &self.previous.map(|p| p.0))
            .finish()
    }
}

/// The two parties a seal was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parties {
    pub caller: PartyHash,
    pub callee: PartyHash,
}

impl Parties {
    pub fn of(caller_aor: &str, callee_aor: &str) -> Self {
        Self {
            caller: party_hash(caller_aor),
            callee: party_hash(callee_aor),
        }
    }

    /// Whether `aor` is one of the two parties.
    pub fn includes(&self, aor: &str) -> bool {
        let h = party_hash(aor);
        h == self.caller || h == self.callee
    }
}

/// Why an in-dialog request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no route through us")]
    Missing,
    #[error("malformed seal")]
    Malformed,
    #[error("unknown route key")]
    UnknownKey,
    #[error("seal does not verify")]
    Forged,
}

impl RouteKeys {
    pub fn new(kid: u8, key: [u8; 32]) -> Self {
        Self {
            current: (kid, key),
            previous: None,
        }
    }

    /// A new current key; the old current one keeps verifying.
    pub fn rotate(&mut self, kid: u8, key: [u8; 32]) {
        self.previous = Some(self.current);
        self.current = (kid, key);
    }

    fn mac(key: &[u8; 32], route: &[u8], call_id: &[u8], tag: &[u8], p: &Parties) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        for field in [
            &b"permit-rr-1"[..],
            route,
            call_id,
            tag,
            &p.caller,
            &p.callee,
        ] {
            m.update(&(field.len() as u32).to_be_bytes());
            m.update(field);
        }
        m.finalize().into_bytes().into()
    }

    /// The `pm` parameter value for our Record-Route `route` (`host:port` as written)
    /// in the dialog of `call_id` whose caller's From tag is `caller_tag`.
    pub fn seal(&self, route: &[u8], call_id: &[u8], caller_tag: &[u8], p: &Parties) -> String {
        let (kid, key) = &self.current;
        let mac = Self::mac(key, route, call_id, caller_tag, p);
        let mut raw = [0u8; SEAL_LEN];
        raw[0] = *kid;
        raw[CALLER].copy_from_slice(&p.caller);
        raw[CALLEE].copy_from_slice(&p.callee);
        raw[MAC].copy_from_slice(&mac[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Opens a seal: `tags` are the request's From and To tags (the caller's tag is the
    /// From tag of requests from the caller and the To tag of requests from the callee).
    pub fn open(
        &self,
        seal: &[u8],
        route: &[u8],
        call_id: &[u8],
        tags: [Option<&[u8]>; 2],
    ) -> Result<Parties, SealError> {
        let mut raw = [0u8; SEAL_LEN];
        match URL_SAFE_NO_PAD.decode(seal) {
            Ok(v) if v.len() == SEAL_LEN => raw.copy_from_slice(&v),
            _ => return Err(SealError::Malformed),
        }
        let key = [Some(self.current), self.previous]
            .into_iter()
            .flatten()
            .find(|(kid, _)| *kid == raw[0])
            .map(|(_, k)| k)
            .ok_or(SealError::UnknownKey)?;
        let mut p = Parties {
            caller: [0; HASH_LEN],
            callee: [0; HASH_LEN],
        };
        p.caller.copy_from_slice(&raw[CALLER]);
        p.callee.copy_from_slice(&raw[CALLEE]);
        let presented = &raw[MAC];
        for tag in tags.into_iter().flatten() {
            let mac = Self::mac(&key, route, call_id, tag, &p);
            if bool::from(mac[..MAC_LEN].ct_eq(presented)) {
                return Ok(p);
            }
        }
        Err(SealError::Forged)
    }
}

/// The bytes of a route that the seal covers: `host:port` of our Record-Route URI, as
/// the UAs copy it back into Route (RFC 3261 §12.1.1: the URIs are copied verbatim).
pub fn route_id(uri: &SipUri<'_>) -> Vec<u8> {
    let mut v = uri.host.to_ascii_lowercase();
    v.push(b':');
    v.extend_from_slice(uri.port.unwrap_or(5060).to_string().as_bytes());
    v
}

/// Dialogs established through us, by Call-ID, for UAs that ignore Record-Route and
/// send in-dialog requests to the proxy without the route set (SIPp's built-in
/// scenarios do): such a request passes when its Call-ID and both tags are those of a
/// dialog we saw established. Bounded: at most `capacity` dialogs are remembered (the
/// seal needs no memory; this is only the fallback), each until its BYE or `max_age`.
#[derive(Debug)]
pub struct Remembered {
    by_call_id: HashMap<Bytes, (Parties, Bytes, Bytes, Instant)>,
    capacity: usize,
}

impl Remembered {
    pub fn new(capacity: usize) -> Self {
        Self {
            by_call_id: HashMap::new(),
            capacity,
        }
    }

    /// A 2xx to an INVITE established the dialog `call_id` between `tags`
    /// (caller's From tag, callee's To tag).
    pub fn established(&mut self, call_id: Bytes, tags: (Bytes, Bytes), p: Parties, now: Instant) {
        if self.by_call_id.len() < self.capacity || self.by_call_id.contains_key(&call_id) {
            self.by_call_id.insert(call_id, (p, tags.0, tags.1, now));
        }
    }

    pub fn ended(&mut self, call_id: &[u8]) {
        self.by_call_id.remove(call_id);
    }

    /// The parties of the dialog with this Call-ID whose two tags are `tags` (in
    /// either order: the request may come from either side).
    pub fn parties(&self, call_id: &[u8], tags: [Option<&[u8]>; 2]) -> Option<Parties> {
        let (parties, caller_tag, callee_tag, _) = self.by_call_id.get(call_id)?;
        let [Some(from), Some(to)] = tags else {
            return None;
        };
        let same = |u: &[u8], v: &[u8]| bool::from(u.ct_eq(v));
        let from_caller = same(from, caller_tag) && same(to, callee_tag);
        let from_callee = same(from, callee_tag) && same(to, caller_tag);
        (from_caller || from_callee).then_some(*parties)
    }

    pub fn expire(&mut self, now: Instant, max_age: Duration) {
        self.by_call_id
            .retain(|_, (_, _, _, since)| now.saturating_duration_since(*since) <= max_age);
    }

    pub fn len(&self) -> usize {
        self.by_call_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_call_id.is_empty()
    }
}

impl Proxy {
    /// Opens the seal of an in-dialog request: the one in its first Route that names
    /// us (`own` are those Route values). Without any seal, a dialog remembered by
    /// Call-ID and tags stands in (see [`Remembered`]).
    pub(super) fn open_seal(&self, msg: &Message, own: &[&[u8]]) -> Result<Parties, SealError> {
        let call_id = msg.call_id().unwrap_or_default();
        let tags = [msg.from_tag(), msg.to_tag()];
        let remembered = || {
            self.remembered
                .lock()
                .parties(call_id, tags)
                .ok_or(SealError::Missing)
        };
        let Some(first) = own.first() else {
            return remembered();
        };
        let uri = NameAddr::parse(first)
            .and_then(|n| SipUri::parse(n.uri))
            .ok_or(SealError::Malformed)?;
        let Some(seal) = uri.param(SEAL_PARAM) else {
            return remembered();
        };
        self.route_keys.open(seal, &route_id(&uri), call_id, tags)
    }

    /// Whether an in-dialog request goes only where its dialog's parties are: the
    /// Request-URI's AOR when it is one of ours, and every next-hop address at which a
    /// user is registered must belong to one of the two parties. Other addresses (an
    /// unregistered caller, a peer proxy) are the dialog's own remote targets.
    pub(super) fn towards_party(
        &self,
        parties: &Parties,
        ruri_aor: Option<&str>,
        hops: impl IntoIterator<Item = SocketAddr>,
    ) -> bool {
        if ruri_aor.is_some_and(|a| !parties.includes(a)) {
            return false;
        }
        let location = self.location.lock();
        hops.into_iter().all(|addr| {
            !location.anyone_at(addr)
                || location.party_at(addr, parties.caller)
                || location.party_at(addr, parties.callee)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> RouteKeys {
        RouteKeys::new(1, [7; 32])
    }

    const ROUTE: &[u8] = b"127.0.0.1:5060";

    #[test]
    fn seal_opens_from_either_side() {
        let p = Parties::of("alice@localhost", "bob@localhost");
        let s = keys().seal(ROUTE, b"cid-1", b"alice-tag", &p);
        assert_eq!(s.len(), 34);
        // From the caller: the caller's tag is the From tag.
        let from_caller = [Some(&b"alice-tag"[..]), Some(&b"bob-tag"[..])];
        assert_eq!(
            keys().open(s.as_bytes(), ROUTE, b"cid-1", from_caller),
            Ok(p)
        );
        // From the callee: it is the To tag.
        let from_callee = [Some(&b"bob-tag"[..]), Some(&b"alice-tag"[..])];
        assert_eq!(
            keys().open(s.as_bytes(), ROUTE, b"cid-1", from_callee),
            Ok(p)
        );
        assert!(p.includes("alice@localhost") && p.includes("bob@localhost"));
        assert!(!p.includes("carol@localhost"));
    }

    #[test]
    fn any_change_is_a_forgery() {
        let p = Parties::of("carol@localhost", "dave@localhost");
        let k = keys();
        let s = k.seal(ROUTE, b"cid-1", b"t1", &p);
        let tags = [Some(&b"t1"[..]), Some(&b"x"[..])];
        assert_eq!(
            k.open(s.as_bytes(), ROUTE, b"cid-2", tags),
            Err(SealError::Forged)
        );
        assert_eq!(
            k.open(s.as_bytes(), b"127.0.0.1:5061", b"cid-1", tags),
            Err(SealError::Forged)
        );
        let other_tags = [Some(&b"t2"[..]), None];
        assert_eq!(
            k.open(s.as_bytes(), ROUTE, b"cid-1", other_tags),
            Err(SealError::Forged)
        );
        // Swapping in another party's hash (to aim the dialog at bob) breaks the MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        raw[CALLEE].copy_from_slice(&party_hash("bob@localhost"));
        let swapped = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            k.open(swapped.as_bytes(), ROUTE, b"cid-1", tags),
            Err(SealError::Forged)
        );
        // Every single bit flipped is refused.
        let good = URL_SAFE_NO_PAD.decode(&s).unwrap();
        for i in 1..good.len() * 8 {
            let mut raw = good.clone();
            raw[i / 8] ^= 1 << (i % 8);
            let bad = URL_SAFE_NO_PAD.encode(&raw);
            assert!(k.open(bad.as_bytes(), ROUTE, b"cid-1", tags).is_err());
        }
        assert_eq!(
            k.open(b"short", ROUTE, b"cid-1", tags),
            Err(SealError::Malformed)
        );
        assert_eq!(
            k.open(b"!!!!", ROUTE, b"cid-1", tags),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn another_key_cannot_open_and_rotation_keeps_dialogs() {
        let p = Parties::of("a@x", "b@x");
        let old = keys();
        let s = old.seal(ROUTE, b"c", b"t", &p);
        let stranger = RouteKeys::new(1, [8; 32]);
        let tags = [Some(&b"t"[..]), None];
        assert_eq!(
            stranger.open(s.as_bytes(), ROUTE, b"c", tags),
            Err(SealError::Forged)
        );
        let mut rotated = old.clone();
        rotated.rotate(2, [9; 32]);
        assert_eq!(rotated.open(s.as_bytes(), ROUTE, b"c", tags), Ok(p));
        let fresh = rotated.seal(ROUTE, b"c", b"t", &p);
        assert_eq!(rotated.open(fresh.as_bytes(), ROUTE, b"c", tags), Ok(p));
        rotated.rotate(3, [10; 32]);
        assert_eq!(
            rotated.open(s.as_bytes(), ROUTE, b"c", tags),
            Err(SealError::UnknownKey)
        );
        assert!(!format!("{rotated:?}").contains("10"));
    }
}
