//! Server transactions that only absorb retransmissions (RFC 3261 §17.2.2 Completed,
//! §17.2.1 Confirmed, RFC 6026 §7.1 Accepted), kept compact.
//!
//! A registrar answering 30,000 REGISTER/s holds about a million non-INVITE server
//! transactions in Completed (Timer J, 32 s over UDP), and every answered call an INVITE
//! server transaction in Accepted (Timer L, RFC 6026 §7.1). All such a transaction still
//! does is send its final response again when the request is retransmitted (or pass a
//! further 2xx), so the engine keeps, per transaction, one allocation of exact size
//! holding the key, the reply flow and the final response (Accepted: its response
//! context's id), beside the [`Absorbing`] state (the deadline); the table is
//! keyed by a keyed 64-bit hash of the key, the full key being compared on every match.
//! Deadlines of one timer grow with the order of insertion (the engine's `now` never
//! goes back and every transaction of a lane lingers the same time), so expiry walks a
//! queue per timer instead of the engine's heap, with one heap entry for the table.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Instant;

use bytes::Bytes;
use sip_core::transaction::{Absorbing, AckAction, Retransmitted, State, Timer};
use sip_core::transport::{Transmit, Transport};

use super::tx::{Kind, TxKey};
use super::{Proxy, Wake};
use crate::keyed::Keyed;
use crate::route::Flow;

/// One absorbing transaction: `buf` is the kind, the branch key, the reply flow
/// (`encode_flow`) and the final response, in that order. Accepted keeps no response
/// (the TU sends each 2xx itself, RFC 6026 §7.1); its place holds the id of the
/// response context that serves those 2xx, freed with the transaction at Timer L.
/// When `coded`, the response is kept as edits of its request (engine::delta), after
/// the request's length (4 bytes) and keyed hash (8 bytes) that a retransmission must
/// match to be answered from it.
#[derive(Debug)]
struct Absorbed {
    buf: Box<[u8]>,
    key_len: u32,
    flow_len: u8,
    coded: bool,
    tx: Absorbing,
}

/// The bytes before a coded response: the request's length and hash.
const CHECK_LEN: usize = 12;

impl Absorbed {
    fn is(&self, key: &TxKey) -> bool {
        let k = &self.buf[..self.key_len as usize];
        k.first() == Some(&kind_byte(key.kind)) && k[1..] == key.branch[..]
    }

    fn reply(&self) -> Option<Flow> {
        let at = self.key_len as usize;
        decode_flow(&self.buf[at..at + usize::from(self.flow_len)])
    }

    /// The response as kept: its bytes, or (`coded`) the check and the edits.
    fn response(&self) -> &[u8] {
        &self.buf[self.key_len as usize + usize::from(self.flow_len)..]
    }

    /// The final response to send again for `request`, a retransmission of the
    /// transaction's request; `None` when it was coded against other bytes.
    fn final_for(&self, request: &[u8], hasher: &std::hash::RandomState) -> Option<Bytes> {
        let kept = self.response();
        if !self.coded {
            return Some(Bytes::copy_from_slice(kept));
        }
        let (check, code) = kept.split_at_checked(CHECK_LEN)?;
        if check != request_check(request, hasher) {
            return None;
        }
        super::delta::decode(request, code).map(Bytes::from)
    }

    /// The response context of an Accepted INVITE.
    fn ctx(&self) -> Option<u64> {
        (self.tx.state() == State::Accepted)
            .then(|| <[u8; 8]>::try_from(self.response()).ok())
            .flatten()
            .map(u64::from_be_bytes)
    }
}

/// What a retransmission must match for a coded response: the request's length and
/// keyed hash (a peer cannot aim a collision at a key it does not know; the answer goes
/// to the transaction's own reply flow in any case).
fn request_check(request: &[u8], hasher: &std::hash::RandomState) -> [u8; CHECK_LEN] {
    let mut check = [0; CHECK_LEN];
    check[..4].copy_from_slice(&(request.len() as u32).to_be_bytes());
    check[4..].copy_from_slice(&hasher.hash_one(request).to_be_bytes());
    check
}

/// The lane of a transaction's timer: each lane's deadlines grow with insertion order.
fn lane(timer: Timer) -> usize {
    match timer {
        Timer::I => 1,
        Timer::L => 2,
        _ => 0,
    }
}

/// Sub-tables the entries are spread over, by bits 32..36 of their fingerprint. A hash
/// table grows and shrinks by rehashing all its entries at once: under 80,000
/// REGISTER/s, Timer J (32 s) keeps 2.5 million of them, and the one insert that grows
/// such a table takes 115–118 ms (`examples/rehash_stall.rs`): input waits that long,
/// against the 40 ms (held 100 ms) at which overload control refuses new work. With 16
/// parts it takes 7.2–7.4 ms.
const PARTS: usize = 16;

// The fingerprints are keyed hashes already: the sub-tables use them as they are
// (bucket from the low bits, control byte from the top ones, part from the middle).
type Part = HashMap<u64, Absorbed, Keyed>;

fn part_of(fp: u64) -> usize {
    (fp >> 32) as usize % PARTS
}

/// The absorbing server transactions of an engine.
#[derive(Debug)]
pub(super) struct AbsorbTable {
    parts: Box<[Part; PARTS]>,
    /// Entries over all parts.
    count: usize,
    /// The key of the fingerprint hash (random per engine, so peers cannot aim
    /// collisions at it).
    hasher: std::hash::RandomState,
    /// (deadline, fingerprint) in insertion order: Timer J (Completed), Timer I
    /// (Confirmed), Timer L (Accepted).
    lanes: [VecDeque<(Instant, u64)>; 3],
    /// The instant of the table's live entry in the engine's timer heap.
    scheduled: Option<Instant>,
}

impl Default for AbsorbTable {
    fn default() -> Self {
        Self {
            parts: Box::new(std::array::from_fn(|_| Part::default())),
            count: 0,
            hasher: std::hash::RandomState::default(),
            lanes: Default::default(),
            scheduled: None,
        }
    }
}

impl AbsorbTable {
    pub(super) fn len(&self) -> usize {
        self.count
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.parts.iter().map(HashMap::capacity).sum()
    }

    fn entry(&self, fp: u64) -> Option<&Absorbed> {
        self.parts[part_of(fp)].get(&fp)
    }

    fn fingerprint(&self, key: &TxKey) -> u64 {
        self.hasher.hash_one((kind_byte(key.kind), &key.branch[..]))
    }

    fn get(&self, key: &TxKey) -> Option<&Absorbed> {
        self.entry(self.fingerprint(key)).filter(|a| a.is(key))
    }

    /// Whether `key` can be kept here: its fingerprint is free (two keys of one 64-bit
    /// keyed hash are not told apart by the table, so the second stays a full
    /// transaction) and its length fits.
    fn can_take(&self, key: &TxKey) -> bool {
        key.branch.len() < u32::MAX as usize && self.entry(self.fingerprint(key)).is_none()
    }

    /// Keeps `tx` with its reply flow and final response (the caller checked
    /// `can_take`), the response as edits of `request` when that is given and shorter;
    /// returns the instant at which the table's heap entry must be pushed, if it must.
    fn insert(
        &mut self,
        key: &TxKey,
        tx: Absorbing,
        reply: Flow,
        response: &[u8],
        request: Option<&[u8]>,
    ) -> Option<Instant> {
        let mut buf = Vec::with_capacity(1 + key.branch.len() + 2 * 28 + 1 + response.len());
        buf.push(kind_byte(key.kind));
        buf.extend_from_slice(&key.branch);
        // Both fit: `can_take` bounds the key, a flow encodes in at most 55 bytes.
        let key_len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        encode_flow(&mut buf, reply);
        let flow_len = u8::try_from(buf.len() - key_len as usize).unwrap_or(u8::MAX);
        let head = buf.len();
        let mut coded = false;
        if let Some(request) = request.filter(|r| r.len() < u32::MAX as usize) {
            buf.extend_from_slice(&request_check(request, &self.hasher));
            super::delta::encode(request, response, &mut buf);
            coded = buf.len() - head < response.len();
            if !coded {
                buf.truncate(head);
            }
        }
        if !coded {
            buf.extend_from_slice(response);
        }
        let fp = self.fingerprint(key);
        let until = tx.poll_timeout();
        let lane = lane(tx.timer());
        let old = self.parts[part_of(fp)].insert(
            fp,
            Absorbed {
                buf: buf.into_boxed_slice(),
                key_len,
                flow_len,
                coded,
                tx,
            },
        );
        if old.is_none() {
            self.count += 1;
        }
        self.lanes[lane].push_back((until, fp));
        if self.scheduled.is_some_and(|s| s <= until) {
            return None;
        }
        self.scheduled = Some(until);
        Some(until)
    }

    /// Frees every transaction whose timer is due at `now`, adding the response contexts
    /// they held to `freed`; returns the next deadline.
    fn expire(&mut self, now: Instant, freed: &mut Vec<u64>) -> Option<Instant> {
        for lane in &mut self.lanes {
            while let Some(&(until, fp)) = lane.front() {
                if until > now {
                    break;
                }
                lane.pop_front();
                // Only if its own timer is due: the fingerprint may belong to a later
                // transaction by now (the same request again, after its first one ended).
                let part = &mut self.parts[part_of(fp)];
                if part.get(&fp).is_some_and(|a| a.tx.is_over(now))
                    && let Some(a) = part.remove(&fp)
                {
                    self.count -= 1;
                    freed.extend(a.ctx());
                }
            }
            if lane.capacity() > 64 && lane.len() < lane.capacity() / 4 {
                lane.shrink_to(lane.len() * 2);
            }
        }
        // After a burst the table gives its memory back as it empties (amortised: a
        // shrink halves the capacity at least, and comes after a quarter is left).
        for part in self.parts.iter_mut() {
            if part.capacity() > 64 && part.len() < part.capacity() / 4 {
                part.shrink_to(part.len() * 2);
            }
        }
        self.lanes
            .iter()
            .filter_map(|l| l.front().map(|f| f.0))
            .min()
    }
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Invite => 0,
        Kind::Cancel => 1,
        Kind::Other => 2,
    }
}

fn encode_addr(buf: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(a) => {
            buf.push(4);
            buf.extend_from_slice(&a.ip().octets());
            buf.extend_from_slice(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            buf.push(6);
            buf.extend_from_slice(&a.ip().octets());
            buf.extend_from_slice(&a.port().to_be_bytes());
            buf.extend_from_slice(&a.flowinfo().to_be_bytes());
            buf.extend_from_slice(&a.scope_id().to_be_bytes());
        }
    }
}

fn decode_addr(b: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&family, rest) = b.split_first()?;
    let port = |p: &[u8]| u16::from_be_bytes([p[0], p[1]]);
    let u32_at = |p: &[u8]| u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    match family {
        4 if rest.len() >= 6 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            Some((
                SocketAddr::new(IpAddr::V4(ip), port(&rest[4..])),
                &rest[6..],
            ))
        }
        6 if rest.len() >= 26 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?);
            let a = SocketAddrV6::new(
                ip,
                port(&rest[16..]),
                u32_at(&rest[18..]),
                u32_at(&rest[22..]),
            );
            Some((SocketAddr::V6(a), &rest[26..]))
        }
        _ => None,
    }
}

fn encode_flow(buf: &mut Vec<u8>, f: Flow) {
    buf.push(match f.transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    });
    encode_addr(buf, f.local);
    encode_addr(buf, f.remote);
}

fn decode_flow(b: &[u8]) -> Option<Flow> {
    let (&t, rest) = b.split_first()?;
    let transport = match t {
        0 => Transport::Udp,
        1 => Transport::Tcp,
        2 => Transport::Tls,
        _ => return None,
    };
    let (local, rest) = decode_addr(rest)?;
    let (remote, _) = decode_addr(rest)?;
    Some(Flow {
        transport,
        local,
        remote,
    })
}

impl Proxy {
    /// A request that matches an absorbing transaction: the final is sent again
    /// (§17.2.2) or the request dropped (§17.2.1 Confirmed). `false` if none matches.
    /// A request that carries the branch of a completed transaction but not its bytes
    /// (not a retransmission, §17.1.1.3) gets nothing and is counted.
    pub(super) fn absorb_request(&mut self, key: &TxKey, request: &[u8]) -> bool {
        let Some(a) = self.absorbing.get(key) else {
            return false;
        };
        if a.tx.handle_request_retransmission() == Retransmitted::ResendFinal
            && let Some(flow) = a.reply()
        {
            match a.final_for(request, &self.absorbing.hasher) {
                Some(data) => self.out.push_back(Transmit {
                    transport: flow.transport,
                    local: flow.local,
                    dest: flow.remote,
                    data,
                }),
                None => self.stats.branch_reused += 1,
            }
        }
        true
    }

    /// An ACK that matches an absorbing INVITE transaction (Confirmed, §17.2.1): absorbed.
    pub(super) fn absorb_ack(&self, key: &TxKey) -> bool {
        self.absorbing
            .get(key)
            .is_some_and(|a| a.tx.handle_ack() == Ok(AckAction::Absorb))
    }

    /// Whether `key` names an absorbing transaction (a CANCEL's INVITE, §9.2).
    pub(super) fn absorbs(&self, key: &TxKey) -> bool {
        self.absorbing.get(key).is_some()
    }

    /// The transport an absorbing transaction's request came over.
    pub(super) fn absorbed_transport(&self, key: &TxKey) -> Option<Transport> {
        self.absorbing
            .get(key)
            .and_then(Absorbed::reply)
            .map(|f| f.transport)
    }

    /// A response for an absorbing transaction: a further 2xx of an Accepted INVITE is
    /// sent to its reply flow, unkept (RFC 6026 §7.1); anything else is dropped, as the
    /// full machine refuses it.
    pub(super) fn respond_absorbed(&mut self, key: &TxKey, status: u16, bytes: Bytes) {
        let Some(a) = self.absorbing.get(key) else {
            return;
        };
        // Counted as `respond` counts a response for a full transaction.
        self.stats
            .traffic
            .response(status, key.kind == Kind::Invite);
        if let Err(e) = a.tx.send_response(status) {
            tracing::debug!(error = %e, status, "response not sent");
            return;
        }
        let Some(flow) = a.reply() else { return };
        self.out.push_back(Transmit {
            transport: flow.transport,
            local: flow.local,
            dest: flow.remote,
            data: bytes,
        });
    }

    /// Moves a server transaction that only absorbs retransmissions from the full table
    /// to the absorbing one: non-INVITE Completed and INVITE Confirmed without a response
    /// context (one whose branch still waits for a final keeps it, and stays in full),
    /// INVITE Accepted with its context (still serving the branch's further 2xx). Kept
    /// in full: INVITE Completed, which still retransmits its final and waits for the
    /// ACK. `true` if it moved.
    pub(super) fn absorb_server(&mut self, now: Instant, key: &TxKey) -> bool {
        use super::tx::ServerTx;
        let movable = self.server.get(key).is_some_and(|e| match &e.tx {
            ServerTx::NonInvite(t) => e.ctx.is_none() && t.state() == State::Completed,
            ServerTx::Invite(t) => match t.state() {
                State::Confirmed => e.ctx.is_none(),
                State::Accepted => true,
                _ => false,
            },
        });
        if !movable || !self.absorbing.can_take(key) {
            return false;
        }
        let Some((stored, entry)) = self.server.remove_entry(key) else {
            return false;
        };
        let absorbed = match entry.tx {
            ServerTx::NonInvite(t) => t.into_absorbing().map_err(ServerTx::NonInvite),
            ServerTx::Invite(t) => t.into_absorbing().map_err(ServerTx::Invite).map(|a| {
                let ctx = entry.ctx.filter(|_| a.state() == State::Accepted);
                (
                    a,
                    ctx.map_or_else(Bytes::new, |c| Bytes::copy_from_slice(&c.to_be_bytes())),
                )
            }),
        };
        let (tx, response) = match absorbed {
            Ok(a) => a,
            Err(tx) => {
                self.server
                    .insert(stored, super::tx::ServerEntry { tx, ..entry });
                return false;
            }
        };
        let request = entry.request.as_deref();
        if let Some(at) = self
            .absorbing
            .insert(&stored, tx, entry.reply, &response, request)
        {
            self.heap.push(Reverse((at.max(now), Wake::Absorbing)));
        }
        true
    }

    /// The table's heap entry at `at` fired: free what is due, re-arm for the rest.
    pub(super) fn handle_absorbing_timeout(&mut self, now: Instant, at: Instant) {
        if self.absorbing.scheduled != Some(at) {
            return;
        }
        self.absorbing.scheduled = None;
        let mut freed = Vec::new();
        let next = self.absorbing.expire(now, &mut freed);
        for ctx in freed {
            self.contexts.remove(&ctx);
        }
        if let Some(next) = next {
            self.absorbing.scheduled = Some(next);
            self.heap.push(Reverse((next.max(now), Wake::Absorbing)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sip_core::message::HeaderName;

    use super::super::tests::{Harness, invite, status};
    use super::{Flow, PARTS, Part, decode_flow, encode_flow};
    use sip_core::transport::Transport;

    const ALICE: &str = "127.0.0.1:5070";

    /// An INVITE answered 2xx is kept compact in Accepted with its response context: a
    /// retransmitted INVITE is absorbed, a retransmitted 2xx still goes upstream (RFC
    /// 6026 §7.1), and Timer L frees the transaction and the context together.
    #[test]
    fn an_accepted_invite_keeps_its_context_until_timer_l() {
        use sip_core::message::Message;
        use std::fmt::Write as _;
        const BOB: &str = "127.0.0.1:5080";
        let mut h = Harness::new();
        h.register("bob", BOB, 600);
        h.advance(Duration::from_secs(33));
        assert_eq!(h.proxy.live(), (0, 0, 0), "the REGISTER is gone");
        let out = h.recv(ALICE, &invite("bob", "z9hG4bKacc1", 70));
        let fwd: Message = out[1].1.clone();
        let h_ = |n| String::from_utf8_lossy(fwd.header(n).unwrap()).into_owned();
        let mut vias = String::new();
        for v in fwd.headers(HeaderName::Via) {
            let _ = writeln!(vias, "Via: {}", String::from_utf8_lossy(v));
        }
        let ok = format!(
            "SIP/2.0 200 OK\n{vias}Record-Route: {}\nFrom: {}\nTo: <sip:bob@localhost>;tag=b1\n\
Call-ID: {}\nCSeq: 1 INVITE\nContact: <sip:bob@{BOB}>\nContent-Length: 0\n\n",
            h_(HeaderName::RecordRoute),
            h_(HeaderName::From),
            h_(HeaderName::CallId)
        );
        assert_eq!(status(&h.recv(BOB, &ok)), vec![200]);
        assert_eq!(h.proxy.absorbing.len(), 1, "Accepted is compact");
        assert_eq!(h.proxy.live(), (1, 1, 1), "its context stays");
        assert!(
            h.recv(ALICE, &invite("bob", "z9hG4bKacc1", 70)).is_empty(),
            "a retransmitted INVITE is absorbed"
        );
        let again = h.recv(BOB, &ok);
        assert_eq!(
            status(&again),
            vec![200],
            "a retransmitted 2xx goes upstream"
        );
        assert_eq!(again[0].0, super::super::tests::addr(ALICE));
        h.advance(Duration::from_millis(31_999));
        assert_eq!(h.proxy.live(), (1, 1, 1));
        h.advance(Duration::from_millis(1));
        assert_eq!(h.proxy.live(), (0, 0, 0), "Timers L and M: all freed");
    }

    /// A burst's table gives its memory back while its transactions end.
    #[test]
    fn the_table_shrinks_as_it_empties() {
        use super::AbsorbTable;
        use crate::engine::tx::{Kind, TxKey};
        use sip_core::transaction::{ServerNonInvite, TimerConfig};
        use sip_testkit::VirtualClock;

        let t0 = VirtualClock::new().now();
        let cfg = TimerConfig::default();
        let flow = Flow {
            transport: Transport::Udp,
            local: "192.0.2.1:5060".parse().unwrap(),
            remote: "198.51.100.7:5060".parse().unwrap(),
        };
        let mut table = AbsorbTable::default();
        for i in 0..10_000u32 {
            let at = t0 + Duration::from_millis(u64::from(i));
            let mut tx = ServerNonInvite::new(at, false, &cfg);
            tx.send_response(at, 200, bytes::Bytes::from_static(b"SIP/2.0 200 OK"))
                .unwrap();
            while tx.poll_transmit().is_some() {}
            let (a, response) = tx.into_absorbing().unwrap();
            let key = TxKey {
                branch: bytes::Bytes::from(format!("z9hG4bK{i}")),
                kind: Kind::Other,
            };
            assert!(table.can_take(&key));
            table.insert(&key, a, flow, &response, None);
            assert!(!table.can_take(&key), "one transaction per fingerprint");
        }
        let full = table.capacity();
        assert!(full >= 10_000);
        // Spread over every part (a part rehashes alone), none holding most of them.
        assert!(
            table
                .parts
                .iter()
                .all(|p| p.len() > 10_000 / PARTS / 2 && p.len() < 10_000 / 4),
            "{:?}",
            table.parts.iter().map(Part::len).collect::<Vec<_>>()
        );
        // Timer J of the first 9,500 (inserted 1 ms apart) has fired.
        let mut freed = Vec::new();
        let next = table.expire(t0 + Duration::from_millis(32_000 + 9_499), &mut freed);
        assert_eq!(table.len(), 500);
        assert_eq!(next, Some(t0 + Duration::from_millis(32_000 + 9_500)));
        // Each part shrinks on its own to about twice what it holds (500 in all).
        assert!(
            table.capacity() <= full / 3,
            "{} of {full}",
            table.capacity()
        );
        assert!(table.lanes[0].capacity() < 10_000 / 8);
        assert_eq!(table.expire(t0 + Duration::from_mins(1), &mut freed), None);
        assert!(freed.is_empty(), "no context held");
        assert_eq!((table.len(), table.capacity() <= PARTS * 64), (0, true));
    }

    #[test]
    fn flows_round_trip() {
        for (t, local, remote) in [
            (Transport::Udp, "192.0.2.1:5060", "198.51.100.7:40123"),
            (Transport::Tls, "[2001:db8::1]:5061", "[fe80::2%3]:50000"),
            (Transport::Tcp, "192.0.2.1:5060", "[2001:db8::9]:1"),
        ] {
            let f = Flow {
                transport: t,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
            };
            let mut buf = vec![7];
            encode_flow(&mut buf, f);
            assert_eq!(decode_flow(&buf[1..]), Some(f));
        }
        assert_eq!(decode_flow(&[0, 4, 1, 2]), None, "truncated");
        assert_eq!(decode_flow(&[9]), None, "unknown transport");
    }

    /// An answered REGISTER is kept in the compact table: a retransmission gets the
    /// very same 200 (RFC 3261 §17.2.2) until Timer J (64*T1 = 32 s), which frees it.
    #[test]
    fn an_answered_register_absorbs_until_timer_j() {
        let mut h = Harness::new();
        let reg = "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabs1
From: <sip:alice@localhost>;tag=r1
To: <sip:alice@localhost>
Call-ID: reg-abs
CSeq: 1 REGISTER
Contact: <sip:alice@127.0.0.1:5070>
Expires: 600
Max-Forwards: 70
Content-Length: 0

";
        let first = h.recv(ALICE, reg);
        assert_eq!(status(&first), vec![200]);
        assert_eq!(h.proxy.absorbing.len(), 1, "moved to the compact table");
        assert_eq!(h.proxy.live(), (1, 0, 0));
        let kept = h
            .proxy
            .absorbing
            .parts
            .iter()
            .find_map(|p| p.values().next())
            .unwrap();
        assert!(kept.coded, "kept as edits of the REGISTER");
        let ok_len = first[0].1.as_bytes().len();
        assert!(
            kept.response().len() * 2 < ok_len,
            "{} bytes for a 200 of {ok_len}",
            kept.response().len()
        );
        h.advance(Duration::from_millis(31_999));
        let again = h.recv(ALICE, reg);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, first[0].0);
        assert_eq!(again[0].1.as_bytes(), first[0].1.as_bytes(), "the same 200");
        assert_eq!(h.proxy.stats.registrations, 1, "not registered twice");
        // Another request under the same branch is no retransmission (§17.1.1.3):
        // it gets no answer built from bytes it does not carry, and is counted.
        let other = reg.replace("Expires: 600", "Expires: 900");
        assert!(h.recv(ALICE, &other).is_empty());
        assert_eq!(h.proxy.stats.branch_reused, 1);
        assert_eq!(h.proxy.stats.registrations, 1);
        h.advance(Duration::from_millis(1));
        assert_eq!(h.proxy.live(), (0, 0, 0), "freed at Timer J");
        assert_eq!(h.proxy.timers_pending(), 1, "only the purge timer is left");
    }

    /// An INVITE answered 404 here is kept in full until its ACK (Timer G still
    /// retransmits the 404), then in the compact table in Confirmed: further ACKs and
    /// INVITEs are absorbed and a CANCEL still finds the INVITE (200, RFC 3261 §9.2)
    /// until Timer I (T4 = 5 s); then the CANCEL finds nothing (481).
    #[test]
    fn a_confirmed_invite_absorbs_until_timer_i() {
        let mut h = Harness::new();
        let out = h.recv(ALICE, &invite("nobody", "z9hG4bKabs2", 70));
        let last = out.last().expect("a final").1.clone();
        let code = last.status().unwrap();
        assert!(code >= 300, "refused: {code}");
        assert_eq!(h.proxy.absorbing.len(), 0, "Completed waits for the ACK");
        let to = String::from_utf8_lossy(last.header(HeaderName::To).unwrap()).into_owned();
        let req = |method: &str| {
            format!(
                "{method} sip:nobody@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKabs2
From: <sip:alice@localhost>;tag=a1
To: {to}
Call-ID: call-z9hG4bKabs2
CSeq: 1 {method}
Max-Forwards: 70
Content-Length: 0

"
            )
        };
        assert!(h.recv(ALICE, &req("ACK")).is_empty());
        assert_eq!(h.proxy.absorbing.len(), 1, "Confirmed is compact");
        assert!(h.recv(ALICE, &req("ACK")).is_empty(), "ACK absorbed");
        assert!(
            h.recv(ALICE, &invite("nobody", "z9hG4bKabs2", 70))
                .is_empty(),
            "INVITE absorbed"
        );
        h.advance(Duration::from_millis(4_999));
        let cancel = req("CANCEL").replace(&format!("To: {to}"), "To: <sip:nobody@localhost>");
        assert_eq!(status(&h.recv(ALICE, &cancel)), vec![200]);
        assert_eq!(h.proxy.live(), (2, 0, 0), "the INVITE and the CANCEL");
        h.advance(Duration::from_millis(1));
        assert_eq!(h.proxy.live(), (1, 0, 0), "the INVITE freed at Timer I");
        assert_eq!(
            status(&h.recv(ALICE, &cancel)),
            vec![481],
            "the CANCEL again: its INVITE is gone"
        );
    }
}
