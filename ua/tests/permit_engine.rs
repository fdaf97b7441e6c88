//! Permit mode of the sans-IO user agent on a virtual clock: the callee accepts an
//! INVITE only with a token the proxy told it in its load query (for that caller and
//! Call-ID, unexpired, once), keys SRTP from the session secret and checks the
//! caller's key on a direct INVITE; the caller follows a 302 in direct mode and checks
//! the callee's key. Tokens are issued here with the proxy's own `sip_core::permit`.

#![allow(clippy::unchecked_time_subtraction)]

use std::net::SocketAddr;
use std::time::Duration;

use permit_ua::keys::{Offer, PeerCrypto};
use permit_ua::{CallOutcome, Event, Local, Ua, UaConfig};
use sip_core::message::{HeaderName, Message, ResponseBuilder};
use sip_core::permit::{
    CryptoAttr, Direction, KeyId, KeyRing, ProxyKey, SessionSecret, SrtpSuite, Token, TokenClaims,
};
use sip_core::transport::{Received, Transport};
use sip_testkit::{VirtualClock, seeded_rng};

const PROXY: &str = "127.0.0.1:5060";
const ME: &str = "127.0.0.1:5070";
const STRANGER: &str = "192.0.2.66:5060";
const UNIX: u64 = 1_700_000_000;
const ALICE: &str = "sip:alice@localhost";
const BOB: &str = "sip:bob@localhost";

struct Bench {
    ua: Ua,
    clock: VirtualClock,
    transport: Transport,
}

impl Bench {
    fn new(user: &str, transport: Transport, permit: bool) -> Self {
        let local = Local {
            user: user.into(),
            domain: "localhost".into(),
            transport,
            advertised: ME.parse().unwrap(),
            listener: None,
        };
        let clock = VirtualClock::new();
        let mut cfg = UaConfig::new(local, ME.parse().unwrap(), PROXY.parse().unwrap());
        cfg.permit = permit;
        cfg.max_calls = 4;
        cfg.epoch = Some((clock.now(), UNIX));
        Self {
            ua: Ua::new(cfg, seeded_rng(11)),
            clock,
            transport,
        }
    }

    fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|t| (t.dest, Message::parse(t.data).expect("parseable")))
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }

    fn receive_from(&mut self, peer: &str, data: &[u8]) {
        let now = self.clock.now();
        self.ua.handle_received(
            now,
            Received {
                transport: self.transport,
                local: ME.parse().unwrap(),
                peer: peer.parse().unwrap(),
                data: data.to_vec().into(),
            },
        );
    }

    /// Final statuses of what we answered, in order.
    fn finals(&mut self) -> Vec<(u16, Message)> {
        self.sent()
            .into_iter()
            .filter_map(|(_, m)| m.status().filter(|&s| s >= 200).map(|s| (s, m)))
            .collect()
    }
}

struct Proxy {
    ring: KeyRing,
}

impl Proxy {
    fn new() -> Self {
        Self {
            ring: KeyRing::new(KeyId(1), ProxyKey::from_bytes([0x11; 32])),
        }
    }

    fn token(&self, caller: &str, call_id: &str, unix_now: u64) -> String {
        let claims = TokenClaims::new(caller, BOB, call_id);
        Token::issue(&self.ring, &claims, unix_now, 60, &mut seeded_rng(5)).encode()
    }
}

fn secret() -> SessionSecret {
    SessionSecret::from_bytes([0x42; 32])
}

fn load_query(token: &str, caller: &str, call_id: &str, key: Option<&SessionSecret>) -> Vec<u8> {
    let key = key.map_or(String::new(), |k| format!("Permit-Key: {}\r\n", k.encode()));
    format!(
        "OPTIONS sip:bob@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKlq{n}\r\n\
Max-Forwards: 70\r\nFrom: <sip:permit@localhost>;tag=lq\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: lq-{n}\r\nCSeq: 1 OPTIONS\r\n\
Permit-Token: {token};caller=\"{caller}\";call-id=\"{call_id}\"\r\n{key}Content-Length: 0\r\n\r\n",
        n = call_id.len() + token.len()
    )
    .into_bytes()
}

fn sdp_with(attrs: &[CryptoAttr], proto: &str) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 {proto} 0\r\n"
    );
    for a in attrs {
        s.push_str(&a.to_line());
        s.push_str("\r\n");
    }
    s
}

fn invite(from: &str, call_id: &str, branch: &str, token: Option<&str>, sdp: &str) -> Vec<u8> {
    let token = token.map_or(String::new(), |t| format!("Permit-Token: {t}\r\n"));
    format!(
        "INVITE sip:bob@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bK{branch}\r\n\
Max-Forwards: 70\r\nFrom: <{from}>;tag=ft{branch}\r\nTo: <{BOB}>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:5099>\r\n{token}\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

const PLAIN: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

/// The status the callee gives `msg` (after its 100 Trying), and its events.
fn status_of(b: &mut Bench, from: &str, msg: &[u8]) -> u16 {
    b.receive_from(from, msg);
    let finals = b.finals();
    assert_eq!(finals.len(), 1, "one final answer");
    finals[0].0
}

#[test]
fn a_token_from_the_load_query_admits_its_call_once() {
    let proxy = Proxy::new();
    let mut bob = Bench::new("bob", Transport::Udp, true);
    let token = proxy.token(ALICE, "call-1", UNIX);
    assert_eq!(
        status_of(&mut bob, PROXY, &load_query(&token, ALICE, "call-1", None)),
        200
    );
    assert_eq!(bob.ua.permits_remembered(), 1);
    bob.events();
    bob.receive_from(PROXY, &invite(ALICE, "call-1", "i1", Some(&token), PLAIN));
    assert!(bob.finals().is_empty(), "offered, not answered yet");
    let events = bob.events();
    assert!(
        matches!(&events[..], [Event::IncomingCall { call, .. }] if call == "call-1"),
        "{events:?}"
    );
    // Declined (the call is gone), then the same INVITE again on a new branch: the
    // token was used.
    let now = bob.clock.now();
    bob.ua.hangup(now, "call-1");
    assert_eq!(bob.finals()[0].0, 603);
    bob.events();
    let replay = invite(ALICE, "call-1", "i2", Some(&token), PLAIN);
    assert_eq!(status_of(&mut bob, PROXY, &replay), 403, "replayed token");
    assert_eq!(bob.events(), vec![Event::IncomingRefused { status: 403 }]);
}

#[test]
fn no_forged_expired_foreign_or_strangers_token_gets_in() {
    let proxy = Proxy::new();
    let forger = Proxy {
        ring: KeyRing::new(KeyId(1), ProxyKey::from_bytes([0x22; 32])),
    };
    let mut bob = Bench::new("bob", Transport::Udp, true);
    for (call, caller) in [("c-ok", ALICE), ("c-exp", ALICE)] {
        let t = proxy.token(caller, call, UNIX);
        assert_eq!(
            status_of(&mut bob, PROXY, &load_query(&t, caller, call, None)),
            200
        );
    }
    // A stranger's load query does not seed the book, token and all.
    let minted = proxy.token("sip:mallory@localhost", "c-stranger", UNIX);
    assert_eq!(
        status_of(
            &mut bob,
            STRANGER,
            &load_query(&minted, "sip:mallory@localhost", "c-stranger", None)
        ),
        200
    );
    assert_eq!(bob.ua.permits_remembered(), 2, "only the proxy's tokens");
    let ok = proxy.token(ALICE, "c-ok", UNIX);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no token", invite(ALICE, "c-ok", "n1", None, PLAIN)),
        (
            "forged token",
            invite(
                ALICE,
                "c-ok",
                "n2",
                Some(&forger.token(ALICE, "c-ok", UNIX)),
                PLAIN,
            ),
        ),
        (
            "another caller",
            invite("sip:carol@localhost", "c-ok", "n3", Some(&ok), PLAIN),
        ),
        (
            "another Call-ID",
            invite(ALICE, "c-other", "n4", Some(&ok), PLAIN),
        ),
        (
            "stranger's token",
            invite(
                "sip:mallory@localhost",
                "c-stranger",
                "n5",
                Some(&minted),
                PLAIN,
            ),
        ),
        ("garbage", invite(ALICE, "c-ok", "n6", Some("v1.x"), PLAIN)),
    ];
    bob.events();
    for (what, msg) in cases {
        assert_eq!(status_of(&mut bob, STRANGER, &msg), 403, "{what}");
        assert_eq!(
            bob.events(),
            vec![Event::IncomingRefused { status: 403 }],
            "{what}"
        );
    }
    // None of the refusals used up the good token.
    bob.receive_from(PROXY, &invite(ALICE, "c-ok", "n8", Some(&ok), PLAIN));
    assert!(bob.finals().is_empty());
    assert!(matches!(&bob.events()[..], [Event::IncomingCall { .. }]));
    // Expired: the token lives 60 s.
    bob.clock.advance(Duration::from_secs(61));
    let expired = proxy.token(ALICE, "c-exp", UNIX);
    assert_eq!(
        status_of(
            &mut bob,
            PROXY,
            &invite(ALICE, "c-exp", "n7", Some(&expired), PLAIN)
        ),
        403,
        "expired"
    );
}

#[test]
fn without_permit_mode_any_invite_is_offered() {
    let mut bob = Bench::new("bob", Transport::Udp, false);
    bob.receive_from(STRANGER, &invite(ALICE, "free", "f1", None, PLAIN));
    assert!(bob.finals().is_empty());
    assert!(matches!(&bob.events()[..], [Event::IncomingCall { .. }]));
}

fn derived(dir: Direction, call: &str) -> CryptoAttr {
    let k = secret()
        .srtp_keys(call, dir, &SrtpSuite::AesCm128HmacSha1_80)
        .unwrap();
    CryptoAttr::inline(1, &k)
}

#[test]
fn direct_invite_must_carry_the_derived_key_and_gets_ours() {
    let proxy = Proxy::new();
    let mut bob = Bench::new("bob", Transport::Tls, true);
    for call in ["d-good", "d-bad"] {
        let t = proxy.token(ALICE, call, UNIX);
        assert_eq!(
            status_of(
                &mut bob,
                PROXY,
                &load_query(&t, ALICE, call, Some(&secret()))
            ),
            200
        );
    }
    // A caller holding the secret: its key is the caller → callee derivation.
    let good = sdp_with(&[derived(Direction::CallerToCallee, "d-good")], "RTP/SAVP");
    let t = proxy.token(ALICE, "d-good", UNIX);
    bob.receive_from(STRANGER, &invite(ALICE, "d-good", "d1", Some(&t), &good));
    assert!(bob.finals().is_empty());
    bob.events();
    let now = bob.clock.now();
    bob.ua
        .answer(now, "d-good", "127.0.0.1:41000".parse().unwrap());
    let finals = bob.finals();
    assert_eq!(finals[0].0, 200);
    let answer = PeerCrypto::of(finals[0].1.body());
    assert!(answer.savp);
    assert_eq!(
        answer.attrs,
        vec![derived(Direction::CalleeToCaller, "d-good")]
    );
    let keys = bob.ua.media_keys("d-good").expect("SRTP");
    assert!(keys.from_secret);
    // In-dialog requests of a direct call go back over the caller's connection (its
    // Contact, 127.0.0.1:5099, names no listener we could reach).
    let now = bob.clock.now();
    bob.ua.hangup(now, "d-good");
    let sent = bob.sent();
    let bye = sent
        .iter()
        .find(|(_, m)| m.method() == Some(&sip_core::message::Method::Bye))
        .expect("a BYE");
    assert_eq!(bye.0, STRANGER.parse::<std::net::SocketAddr>().unwrap());

    // Keys of its own (it does not hold the secret): refused.
    let foreign = Offer::new(None, "d-bad", &mut seeded_rng(3));
    let bad = sdp_with(&foreign.attrs, "RTP/AVP");
    let t = proxy.token(ALICE, "d-bad", UNIX);
    assert_eq!(
        status_of(
            &mut bob,
            STRANGER,
            &invite(ALICE, "d-bad", "d2", Some(&t), &bad)
        ),
        488
    );
}

fn reply(req: &Message, status: u16, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut b = ResponseBuilder::new(req, status, "X").to_tag(b"bobtag");
    for (n, v) in headers {
        b = b.header(n, v.as_bytes());
    }
    if let Some(body) = body {
        b = b.body(b"application/sdp", body.as_bytes());
    }
    b.to_vec()
}

/// The caller in direct mode: INVITE with `Request-Disposition: redirect`, the 302
/// followed to the Contact with the embedded token (same Call-ID and From tag, CSeq
/// + 1, RTP/SAVP keyed from the secret), and the callee's key checked.
fn direct_call(answer_key: Option<CryptoAttr>) -> (Bench, String, Vec<Event>, Vec<Message>) {
    let mut alice = Bench::new("alice", Transport::Tls, true);
    let now = alice.clock.now();
    let call = alice
        .ua
        .call_with(now, "bob", "127.0.0.1:42000".parse().unwrap(), true);
    let sent = alice.sent();
    let first = &sent[0].1;
    assert_eq!(
        first.header(HeaderName::RequestDisposition),
        Some(&b"redirect"[..])
    );
    let token = Proxy::new().token(ALICE, &call, UNIX);
    let contact = format!("<sip:bob@127.0.0.1:5071;transport=tls;ob?Permit-Token={token}>");
    let key = secret().encode();
    alice.receive_from(
        PROXY,
        &reply(
            first,
            302,
            &[
                ("Contact", &contact),
                ("Permit-Token", &token),
                ("Permit-Key", &key),
            ],
            None,
        ),
    );
    let sent = alice.sent();
    let (ack, invite) = (&sent[0], &sent[1]);
    assert_eq!(ack.1.method(), Some(&sip_core::message::Method::Ack));
    assert_eq!(
        ack.0,
        PROXY.parse::<std::net::SocketAddr>().unwrap(),
        "the 302 is ACKed to the proxy"
    );
    assert_eq!(
        invite.0,
        "127.0.0.1:5071".parse::<std::net::SocketAddr>().unwrap(),
        "straight to bob"
    );
    let inv = &invite.1;
    assert_eq!(
        inv.request_uri(),
        Some(&b"sip:bob@127.0.0.1:5071;transport=tls;ob"[..])
    );
    assert_eq!(inv.header(HeaderName::PermitToken), Some(token.as_bytes()));
    assert_eq!(inv.call_id(), first.call_id());
    assert_eq!(inv.cseq().unwrap().seq, first.cseq().unwrap().seq + 1);
    assert_eq!(
        inv.from().unwrap().param(b"tag"),
        first.from().unwrap().param(b"tag")
    );
    assert!(inv.header(HeaderName::RequestDisposition).is_none());
    assert_ne!(
        inv.top_via().unwrap().branch(),
        first.top_via().unwrap().branch()
    );
    let offer = PeerCrypto::of(inv.body());
    assert!(offer.savp);
    assert_eq!(offer.attrs[0], derived(Direction::CallerToCallee, &call));
    let body = sdp_with(&answer_key.into_iter().collect::<Vec<_>>(), "RTP/SAVP");
    let ok = reply(
        inv,
        200,
        &[("Contact", "<sip:bob@127.0.0.1:5071;transport=tls>")],
        Some(&body),
    );
    alice.receive_from("127.0.0.1:5071", &ok);
    let events = alice.events();
    let sent = alice.sent().into_iter().map(|(_, m)| m).collect();
    (alice, call, events, sent)
}

#[test]
fn caller_follows_the_302_and_checks_the_callees_key() {
    let call_id = {
        let mut probe = Bench::new("alice", Transport::Tls, true);
        let now = probe.clock.now();
        // The same seed gives the same Call-ID in direct_call.
        probe
            .ua
            .call_with(now, "bob", "127.0.0.1:42000".parse().unwrap(), true)
    };
    let (alice, call, events, sent) =
        direct_call(Some(derived(Direction::CalleeToCaller, &call_id)));
    assert_eq!(call, call_id);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::CallConnected { .. })),
        "{events:?}"
    );
    assert_eq!(sent.len(), 1, "the ACK");
    let keys = alice.ua.media_keys(&call).expect("SRTP");
    assert!(keys.from_secret);
}

#[test]
fn caller_hangs_up_on_a_callee_whose_key_is_not_the_derivation() {
    let forged = CryptoAttr::inline(
        1,
        &permit_ua::keys::random_keys(&SrtpSuite::AesCm128HmacSha1_80, &mut seeded_rng(8)),
    );
    let (_, call, events, sent) = direct_call(Some(forged));
    assert!(
        events.contains(&Event::CallFailed {
            call,
            outcome: CallOutcome::Failed(488)
        }),
        "{events:?}"
    );
    let methods: Vec<_> = sent.iter().filter_map(|m| m.method().cloned()).collect();
    assert_eq!(
        methods,
        [
            sip_core::message::Method::Ack,
            sip_core::message::Method::Bye
        ]
    );
}
