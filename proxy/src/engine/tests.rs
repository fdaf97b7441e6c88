//! Engine tests: the proxy driven as a sans-IO machine on a virtual clock, with
//! the in-memory store as test double.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::message::{HeaderName, Message};
use sip_core::transport::{Received, Transmit, Transport};

use super::{Proxy, ProxyConfig};
use crate::auth::Auth;
use crate::auth::AuthSettings;
use crate::gate::GateSettings;
use crate::location::Location;
use crate::permits::{Aor, MemoryPermitStore, PermitEntry, Permits};
use crate::route::Identity;
use crate::store::MemoryStore;
use crate::users::MemoryUsers;

const PROXY: &str = "127.0.0.1:5060";
const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

/// In-memory permit lists: `(callee, [callers])`.
pub(super) fn permits(lists: &[(&str, &[&str])]) -> Permits {
    use rand::SeedableRng;
    let mut p = Permits::with_store(
        Box::new(MemoryPermitStore::new()),
        rand::rngs::StdRng::seed_from_u64(3),
    )
    .unwrap();
    for (callee, callers) in lists {
        let entries: Vec<PermitEntry> = callers
            .iter()
            .map(|c| PermitEntry::parse(c).unwrap())
            .collect();
        p.replace(&Aor::parse(callee).unwrap(), &entries, None)
            .unwrap();
    }
    p
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) struct Harness {
    pub(super) proxy: Proxy,
    pub(super) now: Instant,
    cseq: u32,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with_auth(
            AuthSettings {
                enabled: false,
                ..AuthSettings::default()
            },
            MemoryUsers::default(),
        )
    }

    pub(super) fn with_auth(settings: AuthSettings, users: MemoryUsers) -> Self {
        let gate = GateSettings {
            enabled: false,
            ..GateSettings::default()
        };
        Self::with(settings, users, gate, permits(&[]))
    }

    pub(super) fn with(
        settings: AuthSettings,
        users: MemoryUsers,
        gate: GateSettings,
        permits: Permits,
    ) -> Self {
        let location = Location::open(Box::new(MemoryStore::default())).unwrap();
        Self::with_location(settings, users, gate, permits, location)
    }

    pub(super) fn with_location(
        settings: AuthSettings,
        users: MemoryUsers,
        gate: GateSettings,
        permits: Permits,
        location: Location,
    ) -> Self {
        let identity = Identity {
            domain: "localhost".into(),
            listeners: vec![
                (Transport::Udp, addr(PROXY)),
                (Transport::Tcp, addr(PROXY)),
                (Transport::Tls, addr("127.0.0.1:5061")),
            ],
        };
        let auth = Auth::new(settings, "localhost".into(), Box::new(users), [9; 32]);
        let now = Instant::now();
        Self {
            proxy: Proxy::new(
                ProxyConfig {
                    gate,
                    ..ProxyConfig::new(identity)
                },
                location,
                auth,
                permits,
                now,
                1_800_000_000,
                7,
            ),
            now,
            cseq: 0,
        }
    }

    pub(super) fn recv(&mut self, from: &str, data: &str) -> Vec<(SocketAddr, Message)> {
        self.recv_over(Transport::Udp, from, data)
            .into_iter()
            .map(|(_, d, m)| (d, m))
            .collect()
    }

    /// Like `recv`, over `transport`; the transmits keep their transport.
    fn recv_over(
        &mut self,
        transport: Transport,
        from: &str,
        data: &str,
    ) -> Vec<(Transport, SocketAddr, Message)> {
        let rx = Received {
            transport,
            local: addr(PROXY),
            peer: addr(from),
            data: Bytes::copy_from_slice(data.replace('\n', "\r\n").as_bytes()),
        };
        self.proxy.handle_received(self.now, rx);
        let mut out = Vec::new();
        while let Some(Transmit {
            transport,
            dest,
            data,
            ..
        }) = self.proxy.poll_transmit()
        {
            out.push((
                transport,
                dest,
                Message::parse(data).expect("proxy sent an unparsable message"),
            ));
        }
        out
    }

    pub(super) fn drain(&mut self) -> Vec<(SocketAddr, Message)> {
        let mut out = Vec::new();
        while let Some(Transmit { dest, data, .. }) = self.proxy.poll_transmit() {
            out.push((
                dest,
                Message::parse(data).expect("proxy sent an unparsable message"),
            ));
        }
        out
    }

    pub(super) fn advance(&mut self, d: Duration) -> Vec<(SocketAddr, Message)> {
        let end = self.now + d;
        let mut out = Vec::new();
        while let Some(at) = self.proxy.poll_timeout().filter(|t| *t <= end) {
            self.now = at.max(self.now);
            self.proxy.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = end;
        out
    }

    /// Another engine shard sharing this one's tables (Proxy::new_shard).
    pub(super) fn shard(&self, index: u8) -> Self {
        Self {
            proxy: self.proxy.new_shard(index, self.now, 7 + u64::from(index)),
            now: self.now,
            cseq: 100 * u32::from(index),
        }
    }

    pub(super) fn register(
        &mut self,
        user: &str,
        contact: &str,
        expires: u32,
    ) -> Vec<(SocketAddr, Message)> {
        self.cseq += 1;
        let cseq = self.cseq;
        self.recv(
            contact,
            &format!(
                "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {contact};branch=z9hG4bKreg{user}{cseq}
From: <sip:{user}@localhost>;tag=r1
To: <sip:{user}@localhost>
Call-ID: reg-{user}
CSeq: {cseq} REGISTER
Contact: <sip:{user}@{contact}>
Expires: {expires}
Max-Forwards: 70
Content-Length: 0

"
            ),
        )
    }
}

pub(super) fn invite(to: &str, branch: &str, mf: u8) -> String {
    format!(
        "INVITE sip:{to}@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch={branch}
From: <sip:alice@localhost>;tag=a1
To: <sip:{to}@localhost>
Call-ID: call-{branch}
CSeq: 1 INVITE
Contact: <sip:alice@{ALICE}>
Max-Forwards: {mf}
Content-Length: 0

"
    )
}

pub(super) fn status(out: &[(SocketAddr, Message)]) -> Vec<u16> {
    out.iter().filter_map(|(_, m)| m.status()).collect()
}

/// A response from `to`'s UAS to the forwarded request `req`.
fn answer(req: &Message, code: u16, reason: &str) -> String {
    let vias: Vec<String> = req
        .headers(HeaderName::Via)
        .map(|v| format!("Via: {}\n", String::from_utf8_lossy(v)))
        .collect();
    let h = |n| String::from_utf8_lossy(req.header(n).unwrap()).into_owned();
    let rr = req
        .header(HeaderName::RecordRoute)
        .map(|v| format!("Record-Route: {}\n", String::from_utf8_lossy(v)));
    format!(
        "SIP/2.0 {code} {reason}\n{}From: {}\nTo: {};tag=b1\nCall-ID: {}\nCSeq: {}\n{}Contact: <sip:bob@{BOB}>\nContent-Length: 0\n\n",
        vias.concat(),
        h(HeaderName::From),
        h(HeaderName::To),
        h(HeaderName::CallId),
        h(HeaderName::CSeq),
        rr.unwrap_or_default()
    )
}

#[test]
fn register_then_invite_is_proxied_and_answered() {
    let mut h = Harness::new();
    let out = h.register("bob", BOB, 600);
    assert_eq!(status(&out), vec![200]);
    let contact = out[0].1.header(HeaderName::Contact).unwrap();
    assert_eq!(contact, format!("<sip:bob@{BOB}>;expires=600").as_bytes());

    let out = h.recv(ALICE, &invite("bob", "z9hG4bKc1", 70));
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].0, out[0].1.status()), (addr(ALICE), Some(100)));
    let (dest, fwd) = &out[1];
    assert_eq!(*dest, addr(BOB));
    assert_eq!(fwd.request_uri(), Some(format!("sip:bob@{BOB}").as_bytes()));
    assert_eq!(fwd.vias().count(), 2);
    assert!(
        fwd.top_via()
            .unwrap()
            .branch()
            .unwrap()
            .starts_with(b"z9hG4bK-pm")
    );
    assert_eq!(fwd.max_forwards().unwrap(), Some(69));
    // Our Record-Route, sealed (engine::dialog).
    let rr = fwd.header(HeaderName::RecordRoute).unwrap();
    assert!(rr.starts_with(b"<sip:127.0.0.1:5060;lr;pm="), "{rr:?}");

    let fwd = fwd.clone();
    let out = h.recv(BOB, &answer(&fwd, 180, "Ringing"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(ALICE));
    assert_eq!(out[0].1.status(), Some(180));
    assert_eq!(out[0].1.vias().count(), 1, "the proxy's Via is removed");
    let out = h.recv(BOB, &answer(&fwd, 200, "OK"));
    assert_eq!(status(&out), vec![200]);
    // A retransmitted 2xx is forwarded again (RFC 6026 Accepted).
    let out = h.recv(BOB, &answer(&fwd, 200, "OK"));
    assert_eq!(status(&out), vec![200]);
    // Everything is cleaned up once Timer L and Timer M have run.
    h.advance(Duration::from_secs(64));
    assert_eq!(h.proxy.live(), (0, 0, 0));
}

#[test]
fn unknown_user_404_and_no_binding_480() {
    let mut h = Harness::new();
    assert_eq!(
        status(&h.recv(ALICE, &invite("nobody", "z9hG4bKu1", 70))),
        vec![100, 404]
    );
    h.register("carol", "127.0.0.1:5090", 600);
    h.register("carol", "127.0.0.1:5090", 0);
    assert_eq!(
        status(&h.recv(ALICE, &invite("carol", "z9hG4bKu2", 70))),
        vec![100, 480]
    );
}

#[test]
fn max_forwards_zero_is_483_and_loop_is_482() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    assert_eq!(
        status(&h.recv(ALICE, &invite("bob", "z9hG4bKm1", 0))),
        vec![100, 483]
    );
    // The forwarded INVITE coming back to us unchanged is a loop.
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKm2", 70));
    let looped = String::from_utf8_lossy(out[1].1.as_bytes())
        .replace(&format!("sip:bob@{BOB}"), "sip:bob@localhost");
    let out = h.recv(PROXY, &looped.replace("\r\n", "\n"));
    assert_eq!(status(&out), vec![100, 482]);
}

#[test]
fn invite_timeout_gives_408_at_timer_b() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKt1", 70));
    assert_eq!(out.len(), 2);
    let out = h.advance(Duration::from_millis(31_999));
    assert!(
        out.iter().all(|(d, m)| *d == addr(BOB) && m.is_request()),
        "only retransmissions before Timer B"
    );
    assert_eq!(
        out.len(),
        6,
        "Timer A retransmits at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s"
    );
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(status(&out), vec![408]);
}

#[test]
fn cancel_is_answered_and_propagated() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKx1", 70));
    let fwd = out[1].1.clone();
    h.recv(BOB, &answer(&fwd, 180, "Ringing"));
    let cancel = invite("bob", "z9hG4bKx1", 70)
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let out = h.recv(ALICE, &cancel);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].0, out[0].1.status()), (addr(ALICE), Some(200)));
    let (dest, c) = &out[1];
    assert_eq!(*dest, addr(BOB));
    assert_eq!(c.method(), Some(&sip_core::message::Method::Cancel));
    assert_eq!(
        c.top_via().unwrap().branch(),
        fwd.top_via().unwrap().branch()
    );
    let out = h.recv(BOB, &answer(&fwd, 487, "Request Terminated"));
    // The proxy ACKs the 487 downstream and forwards it upstream.
    let ack = out
        .iter()
        .find(|(_, m)| m.is_request())
        .expect("ACK for 487");
    assert_eq!(ack.0, addr(BOB));
    assert_eq!(ack.1.to_tag(), Some(&b"b1"[..]));
    assert_eq!(status(&out), vec![487]);
}

#[test]
fn cancel_without_transaction_is_481() {
    let mut h = Harness::new();
    let cancel = invite("bob", "z9hG4bKn1", 70)
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    assert_eq!(status(&h.recv(ALICE, &cancel)), vec![481]);
}

#[test]
fn options_to_proxy_and_bad_input() {
    let mut h = Harness::new();
    let opts = "OPTIONS sip:localhost SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKo1
From: <sip:alice@localhost>;tag=a1
To: <sip:localhost>
Call-ID: o1
CSeq: 1 OPTIONS
Max-Forwards: 0
Content-Length: 0

";
    let out = h.recv(ALICE, opts);
    assert_eq!(status(&out), vec![200]);
    assert!(out[0].1.header(HeaderName::Allow).is_some());
    // A request with a mismatched CSeq gets a 400 naming the fault.
    let out = h.recv(
        ALICE,
        &opts.replace("1 OPTIONS", "1 INVITE").replace("o1", "o2"),
    );
    assert_eq!(status(&out), vec![400]);
    assert_eq!(out[0].1.reason(), Some(&b"CSeq Method Mismatch"[..]));
    // Garbage is dropped and counted.
    assert!(h.recv(ALICE, "\u{1}\u{2}garbage").is_empty());
    assert!(h.recv(ALICE, "\n\n").is_empty());
    assert_eq!(h.proxy.stats.unparsable, 1);
}

#[test]
fn sequential_forking_by_q() {
    let mut h = Harness::new();
    let reg = |h: &mut Harness, contact: &str, q: &str, cseq: u32| {
        h.recv(
            contact,
            &format!(
                "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {contact};branch=z9hG4bKq{cseq}
From: <sip:dave@localhost>;tag=r1
To: <sip:dave@localhost>
Call-ID: reg-dave
CSeq: {cseq} REGISTER
Contact: <sip:dave@{contact}>;q={q}
Expires: 600
Content-Length: 0

"
            ),
        )
    };
    assert_eq!(status(&reg(&mut h, "127.0.0.1:6001", "0.2", 1)), vec![200]);
    let out = reg(&mut h, "127.0.0.1:6002", "0.9", 2);
    assert_eq!(out[0].1.headers(HeaderName::Contact).count(), 2);
    let out = h.recv(ALICE, &invite("dave", "z9hG4bKf1", 70));
    assert_eq!(out[1].0, addr("127.0.0.1:6002"), "highest q first");
    let first = out[1].1.clone();
    let out = h.recv("127.0.0.1:6002", &answer(&first, 486, "Busy Here"));
    let next = out
        .iter()
        .find(|(d, m)| *d == addr("127.0.0.1:6001") && m.is_request())
        .expect("next target tried");
    let second = next.1.clone();
    assert_ne!(
        first.top_via().unwrap().branch(),
        second.top_via().unwrap().branch()
    );
    let out = h.recv("127.0.0.1:6001", &answer(&second, 404, "Not Found"));
    // Best response: both are 4xx, the first one (486) is kept.
    assert_eq!(status(&out), vec![486]);
}

/// Regression: a callee answering with only the proxy's Via made the proxy forward a
/// response without any Via (RFC 3261 §16.7 step 3 forbids it).
#[test]
fn final_response_without_caller_via_is_regenerated() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKv1", 70));
    let fwd = out[1].1.clone();
    let full = answer(&fwd, 486, "Busy Here");
    let mut seen = false;
    let mut own_via_only = String::new();
    for l in full.lines() {
        if !l.starts_with("Via:") || !std::mem::replace(&mut seen, true) {
            own_via_only.push_str(l);
            own_via_only.push('\n');
        }
    }
    let out = h.recv(BOB, &own_via_only);
    let up: Vec<_> = out.iter().filter(|(d, _)| *d == addr(ALICE)).collect();
    assert_eq!(up.len(), 1);
    let resp = &up[0].1;
    assert_eq!(resp.status(), Some(486));
    assert_eq!(resp.top_via().unwrap().branch(), Some(&b"z9hG4bKv1"[..]));
}

/// RFC 5658: a UDP caller and a TCP callee get one Record-Route per side, and an
/// in-dialog request carrying both comes through with neither left.
#[test]
fn double_record_route_across_transports() {
    let mut h = Harness::new();
    h.recv(
        BOB,
        &format!(
            "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/TCP {BOB};branch=z9hG4bKrt1
From: <sip:bob@localhost>;tag=r1
To: <sip:bob@localhost>
Call-ID: reg-bob-tcp
CSeq: 1 REGISTER
Contact: <sip:bob@{BOB};transport=tcp>
Content-Length: 0

"
        ),
    );
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKd1", 70));
    let fwd = &out[1].1;
    let rrs: Vec<String> = fwd
        .list(HeaderName::RecordRoute)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert_eq!(rrs.len(), 2);
    assert!(rrs[0].starts_with("<sip:127.0.0.1:5060;transport=tcp;lr;pm="));
    assert!(rrs[1].starts_with("<sip:127.0.0.1:5060;lr;pm="));
    let route = rrs.join(", ");
    let bye = format!(
        "BYE sip:alice@{ALICE} SIP/2.0
Via: SIP/2.0/TCP {BOB};branch=z9hG4bKbye1
Route: {route}
From: <sip:bob@localhost>;tag=b1
To: <sip:alice@localhost>;tag=a1
Call-ID: call-z9hG4bKd1
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

"
    );
    let out = h.recv(BOB, &bye);
    let (dest, fwd_bye) = out
        .iter()
        .find(|(_, m)| m.is_request())
        .expect("BYE forwarded");
    assert_eq!(*dest, addr(ALICE));
    assert_eq!(fwd_bye.header(HeaderName::Route), None);
    assert_eq!(
        fwd_bye.request_uri(),
        Some(format!("sip:alice@{ALICE}").as_bytes())
    );
}

/// A phone registered over TLS is reached over its registered connection (the source
/// address of its REGISTER), not at its Contact, which it cannot serve over TLS.
#[test]
fn tls_binding_is_reached_over_its_flow() {
    let mut h = Harness::new();
    let flow = "127.0.0.1:40123";
    let out = h.recv_over(
        Transport::Tls,
        flow,
        "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bKtls1
From: <sip:bob@localhost>;tag=r1
To: <sip:bob@localhost>
Call-ID: reg-tls
CSeq: 1 REGISTER
Contact: <sip:bob@127.0.0.1:5099;transport=tls>
Content-Length: 0

",
    );
    assert_eq!(out[0].2.status(), Some(200));
    assert_eq!(out[0].0, Transport::Tls, "the 200 goes back over TLS");
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKtlsinv", 70));
    let fwd: Vec<_> = out.iter().filter(|(_, m)| m.is_request()).collect();
    assert_eq!(fwd.len(), 1);
    assert_eq!(fwd[0].0, addr(flow), "sent to the registered connection");
    let via = fwd[0].1.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.port),
        (&b"TLS"[..], &b"127.0.0.1"[..], Some(5061))
    );
    assert!(
        fwd[0]
            .1
            .list(HeaderName::RecordRoute)
            .next()
            .unwrap()
            .starts_with(b"<sip:127.0.0.1:5061;transport=tls;lr;pm="),
        "double Record-Route: the TLS side on top"
    );
    // An in-dialog request to bob's Contact (his TLS listening port, which has no
    // certificate) goes over his registered connection too, not a new one.
    let route: Vec<String> = fwd[0]
        .1
        .list(HeaderName::RecordRoute)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let route = route.into_iter().rev().collect::<Vec<_>>().join(", ");
    let reinvite = format!(
        "INVITE sip:bob@127.0.0.1:5099;transport=tls SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKtlsre
Route: {route}
From: <sip:alice@localhost>;tag=a1
To: <sip:bob@localhost>;tag=b1
Call-ID: call-z9hG4bKtlsinv
CSeq: 2 INVITE
Max-Forwards: 70
Content-Length: 0

"
    );
    let out = h.recv(ALICE, &reinvite);
    let fwd: Vec<_> = out.iter().filter(|(_, m)| m.is_request()).collect();
    assert_eq!(fwd.len(), 1, "{out:?}");
    assert_eq!(
        fwd[0].0,
        addr(flow),
        "the re-INVITE reuses the registered connection"
    );
}

/// Regression: a stale binding (no answer at all) held the call until Timer B
/// (32 s) before the next, live binding was tried.
#[test]
fn silent_branch_is_abandoned_for_the_next_target() {
    let mut h = Harness::new();
    let reg = |h: &mut Harness, contact: &str, q: &str, cseq: u32| {
        h.recv(
            contact,
            &format!(
                "REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/UDP {contact};branch=z9hG4bKs{cseq}
From: <sip:erin@localhost>;tag=r1
To: <sip:erin@localhost>
Call-ID: reg-erin
CSeq: {cseq} REGISTER
Contact: <sip:erin@{contact}>;q={q}
Content-Length: 0

"
            ),
        )
    };
    reg(&mut h, "127.0.0.1:6101", "1.0", 1);
    reg(&mut h, "127.0.0.1:6102", "0.5", 2);
    let out = h.recv(ALICE, &invite("erin", "z9hG4bKs9", 70));
    assert_eq!(out[1].0, addr("127.0.0.1:6101"));
    let out = h.advance(Duration::from_millis(3999));
    assert!(
        out.iter().all(|(d, _)| *d == addr("127.0.0.1:6101")),
        "only retransmissions to the silent one"
    );
    let out = h.advance(Duration::from_millis(1));
    assert!(
        out.iter()
            .any(|(d, m)| *d == addr("127.0.0.1:6102") && m.is_request()),
        "the next target after 4 s"
    );
}

/// RFC 3581: a client asking with `rport` learns its source address in every answer,
/// and the forwarded request carries it downstream.
#[test]
fn rport_and_received_are_filled() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    let natted = invite("bob", "z9hG4bKn1", 70).replace(
        &format!("Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKn1"),
        "Via: SIP/2.0/UDP 10.1.1.1:5060;rport;branch=z9hG4bKn1",
    );
    let out = h.recv(ALICE, &natted);
    let trying = &out[0].1;
    assert_eq!(trying.status(), Some(100));
    let v = trying.top_via().unwrap();
    assert_eq!(v.received(), Some(&b"127.0.0.1"[..]));
    assert_eq!(v.rport(), Some(Some(5070)));
    let fwd = &out[1].1;
    let client_via = fwd.vias().nth(1).unwrap().unwrap();
    assert_eq!(client_via.rport(), Some(Some(5070)));
    assert_eq!(client_via.branch(), Some(&b"z9hG4bKn1"[..]));
}

/// RFC 3261 §18.3: a datagram shorter than its Content-Length is answered 400.
#[test]
fn short_datagram_gets_400() {
    let mut h = Harness::new();
    let short =
        invite("bob", "z9hG4bKshort", 70).replace("Content-Length: 0", "Content-Length: 500");
    let out = h.recv(ALICE, &short);
    assert_eq!(status(&out), vec![400]);
    assert_eq!(out[0].1.reason(), Some(&b"Content-Length Mismatch"[..]));
}

/// Regression: every drain pushed a timer-heap entry, so the heap grew with every
/// message until the entries' instants passed (millions at 8,000 CPS).
#[test]
fn timer_heap_stays_bounded_by_live_transactions() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    for i in 0..200 {
        let out = h.recv(ALICE, &invite("bob", &format!("z9hG4bKheap{i}"), 70));
        let fwd = out[1].1.clone();
        h.recv(BOB, &answer(&fwd, 180, "Ringing"));
        h.recv(BOB, &answer(&fwd, 200, "OK"));
        h.recv(BOB, &answer(&fwd, 200, "OK"));
    }
    let (server, client, contexts) = h.proxy.live();
    assert!(
        server >= 200 && client >= 200,
        "transactions still in their RFC 6026 timers"
    );
    assert!(
        h.proxy.timers_pending() <= server + client + 2 * contexts + 2,
        "{} heap entries for {server} + {client} transactions and {contexts} contexts",
        h.proxy.timers_pending()
    );
}

/// SIPp's built-in uac ignores Record-Route: its ACK and BYE come to the proxy by the
/// Request-URI, without Route; they belong to a dialog established here and pass.
#[test]
fn route_less_bye_of_an_established_dialog_passes() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKr1", 70));
    let fwd = out[1].1.clone();
    assert_eq!(status(&h.recv(BOB, &answer(&fwd, 200, "OK"))), vec![200]);
    let to = String::from_utf8_lossy(
        answer(&fwd, 200, "OK")
            .lines()
            .find(|l| l.starts_with("To:"))
            .unwrap()
            .as_bytes(),
    )
    .into_owned();
    let bye = format!(
        "BYE sip:bob@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKrbye
From: <sip:alice@localhost>;tag=a1
{to}
Call-ID: call-z9hG4bKr1
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

"
    );
    let out = h.recv(ALICE, &bye);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].0,
        addr(BOB),
        "{}",
        String::from_utf8_lossy(out[0].1.as_bytes())
    );
}
