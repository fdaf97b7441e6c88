//! Store and forward in the sans-IO user agent on a virtual clock: an item the proxy
//! delivers is reported and answered only when the command says so (2xx deletes it at
//! the proxy, anything else keeps it); in permit mode a MESSAGE straight from a
//! stranger needs the token the proxy told in its load query (403 otherwise, and a
//! token works once); a message-summary NOTIFY is answered 200 and reported, another
//! event package 489; a deposit answered 407 is re-sent with credentials and its
//! 202 reported with `Permit-Item`; a deposit without any answer is reported after
//! Timer F.

#![allow(clippy::unchecked_time_subtraction)]

use std::net::SocketAddr;
use std::time::Duration;

use permit_ua::inbox::{Outgoing, StoreEvent};
use permit_ua::{Event, Local, Ua, UaConfig};
use sip_core::message::{HeaderName, Message, ResponseBuilder};
use sip_core::permit::{KeyId, KeyRing, ProxyKey, Token, TokenClaims};
use sip_core::transport::{Received, Transport};
use sip_testkit::{VirtualClock, seeded_rng};

const PROXY: &str = "127.0.0.1:5060";
const ME: &str = "127.0.0.1:5070";
const ALICE_UA: &str = "127.0.0.1:5090";
const UNIX: u64 = 1_700_000_000;
const ID: &str = "5be3c7e1a0d94a9f8e1f0c2b3a4d5e6f";

struct Bench {
    ua: Ua,
    clock: VirtualClock,
}

impl Bench {
    fn new(user: &str) -> Self {
        let local = Local {
            user: user.into(),
            domain: "localhost".into(),
            transport: Transport::Udp,
            advertised: ME.parse().unwrap(),
            listener: None,
        };
        let clock = VirtualClock::new();
        let mut cfg = UaConfig::new(local, ME.parse().unwrap(), PROXY.parse().unwrap());
        cfg.permit = true;
        cfg.password = Some("wonderland".into());
        cfg.epoch = Some((clock.now(), UNIX));
        Self {
            ua: Ua::new(cfg, seeded_rng(3)),
            clock,
        }
    }

    fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|t| (t.dest, Message::parse(t.data).expect("parseable")))
            .collect()
    }

    fn store_events(&mut self) -> Vec<StoreEvent> {
        std::iter::from_fn(|| self.ua.poll_event())
            .filter_map(|e| match e {
                Event::Store(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn receive_from(&mut self, peer: &str, data: &[u8]) {
        let now = self.clock.now();
        self.ua.handle_received(
            now,
            Received {
                transport: Transport::Udp,
                local: ME.parse().unwrap(),
                peer: peer.parse().unwrap(),
                data: data.to_vec().into(),
            },
        );
    }

    fn statuses(&mut self) -> Vec<u16> {
        self.sent().iter().filter_map(|(_, m)| m.status()).collect()
    }
}

fn message(n: u32, from: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "MESSAGE sip:bob@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKim{n}\r\n\
Max-Forwards: 70\r\nFrom: <{from}>;tag=m{n}\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: im-{n}\r\nCSeq: 1 MESSAGE\r\n{extra}Content-Type: text/plain\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// [`message`] with its own branch `n` in the call `call_id`.
fn in_call(n: u32, call_id: &str, from: &str, extra: &str) -> Vec<u8> {
    let m = String::from_utf8(message(n, from, extra, "hi")).unwrap();
    m.replace(&format!("Call-ID: im-{n}"), &format!("Call-ID: {call_id}"))
        .into_bytes()
}

#[test]
fn a_delivered_item_is_answered_only_when_the_command_says_so() {
    let mut b = Bench::new("bob");
    let item = format!(
        "Permit-Item: {ID};sha256={};stored=1;expires=2\r\n",
        "0".repeat(64)
    );
    b.receive_from(PROXY, &message(1, "sip:alice@localhost", &item, "hello"));
    assert!(b.sent().is_empty(), "no answer before the command decides");
    let events = b.store_events();
    let [StoreEvent::Message(inc)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert!(inc.from_proxy);
    assert_eq!(inc.from.as_deref(), Some("sip:alice@localhost"));
    assert_eq!(inc.item.as_deref().unwrap().split(';').next(), Some(ID));
    assert_eq!(&inc.body[..], b"hello");
    assert_eq!(b.ua.store_pending(), 1);
    // A retransmission while we decide is absorbed (RFC 3261 §17.2.2).
    b.receive_from(PROXY, &message(1, "sip:alice@localhost", &item, "hello"));
    assert!(b.store_events().is_empty());
    let now = b.clock.now();
    b.ua.store_reply(now, inc.id, 400, "Checksum Mismatch");
    assert_eq!(b.statuses(), vec![400]);
    assert_eq!(b.ua.store_pending(), 0);
    // Once answered, the retransmission gets the same answer again.
    b.receive_from(PROXY, &message(1, "sip:alice@localhost", &item, "hello"));
    assert_eq!(b.statuses(), vec![400]);
}

#[test]
fn in_permit_mode_a_stranger_needs_the_token_of_the_load_query() {
    let mut b = Bench::new("bob");
    b.receive_from(ALICE_UA, &message(2, "sip:alice@localhost", "", "hi"));
    assert_eq!(b.statuses(), vec![403]);
    assert!(b.store_events().is_empty());

    let ring = KeyRing::new(KeyId(1), ProxyKey::from_bytes([0x11; 32]));
    let claims = TokenClaims::new("sip:alice@localhost", "sip:bob@localhost", "im-3");
    let token = Token::issue(&ring, &claims, UNIX, 60, &mut seeded_rng(5)).encode();
    let query = format!(
        "OPTIONS sip:bob@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKlq1\r\n\
Max-Forwards: 70\r\nFrom: <sip:permit@localhost>;tag=lq\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: lq-1\r\nCSeq: 1 OPTIONS\r\n\
Permit-Token: {token};caller=\"sip:alice@localhost\";call-id=\"im-3\"\r\nContent-Length: 0\r\n\r\n"
    );
    b.receive_from(PROXY, query.as_bytes());
    assert_eq!(b.statuses(), vec![200]);
    // Another caller with the token (same Call-ID, its own transaction): refused.
    let with = format!("Permit-Token: {token}\r\n");
    b.receive_from(
        ALICE_UA,
        &in_call(4, "im-3", "sip:mallory@localhost", &with),
    );
    assert_eq!(b.statuses(), vec![403]);
    b.receive_from(ALICE_UA, &in_call(5, "im-3", "sip:alice@localhost", &with));
    let events = b.store_events();
    let [StoreEvent::Message(inc)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert!(!inc.from_proxy);
    let now = b.clock.now();
    b.ua.store_reply(now, inc.id, 200, "OK");
    assert_eq!(b.statuses(), vec![200]);
    // The token was used: a replay (a new transaction) is refused.
    b.receive_from(ALICE_UA, &in_call(6, "im-3", "sip:alice@localhost", &with));
    assert_eq!(b.statuses(), vec![403]);
}

#[test]
fn message_summary_notifies_are_answered_and_reported() {
    let mut b = Bench::new("bob");
    let notify = |n: u32, event: &str| {
        let body = "Messages-Waiting: yes\r\nText-Message: 1/0\r\n";
        format!(
            "NOTIFY sip:bob@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bKn{n}\r\n\
Max-Forwards: 70\r\nFrom: <sip:bob@localhost>;tag=n\r\nTo: <sip:bob@localhost>;tag=s\r\n\
Call-ID: n-{n}\r\nCSeq: 1 NOTIFY\r\nEvent: {event}\r\nSubscription-State: active\r\n\
Content-Type: application/simple-message-summary\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    b.receive_from(PROXY, notify(1, "message-summary").as_bytes());
    assert_eq!(b.statuses(), vec![200]);
    let events = b.store_events();
    assert!(
        matches!(events.as_slice(), [StoreEvent::Summary { body }] if body.contains("Messages-Waiting: yes")),
        "{events:?}"
    );
    b.receive_from(PROXY, notify(2, "presence").as_bytes());
    assert_eq!(b.statuses(), vec![489]);
    assert!(b.store_events().is_empty());
}

fn deposit() -> Outgoing {
    Outgoing {
        method: "MESSAGE",
        uri: "sip:bob@localhost".into(),
        to: "sip:bob@localhost".into(),
        call_id: None,
        headers: vec![("Request-Disposition", "queue".into())],
        body: Some(("text/plain".into(), b"hello".to_vec())),
        direct: false,
    }
}

fn answer(req: &Message, status: u16, reason: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = ResponseBuilder::new(req, status, reason);
    for (n, v) in headers {
        r = r.header(n, v.as_bytes());
    }
    r.to_vec()
}

#[test]
fn a_deposit_is_authenticated_and_its_202_reported() {
    let mut b = Bench::new("alice");
    let now = b.clock.now();
    let id = b.ua.store_send(now, deposit());
    let sent = b.sent();
    let (dest, first) = &sent[0];
    assert_eq!(dest.to_string(), PROXY);
    assert_eq!(
        first.header(HeaderName::RequestDisposition),
        Some(&b"queue"[..])
    );
    assert_eq!(
        first.header(HeaderName::ContentType),
        Some(&b"text/plain"[..])
    );
    assert_eq!(first.body(), b"hello");
    let challenge = r#"Digest realm="localhost", nonce="abc", algorithm=MD5, qop="auth""#;
    b.receive_from(
        PROXY,
        &answer(
            first,
            407,
            "Proxy Authentication Required",
            &[("Proxy-Authenticate", challenge)],
        ),
    );
    assert!(b.store_events().is_empty());
    let sent = b.sent();
    let second = &sent
        .iter()
        .find(|(_, m)| m.is_request())
        .expect("re-sent")
        .1;
    assert!(second.header(HeaderName::ProxyAuthorization).is_some());
    assert_eq!(second.call_id(), first.call_id());
    let item = format!("{ID};expires=1800604800");
    b.receive_from(
        PROXY,
        &answer(second, 202, "Accepted", &[("Permit-Item", &item)]),
    );
    let events = b.store_events();
    let [
        StoreEvent::Answered {
            id: got,
            status,
            headers,
            ..
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}");
    };
    assert_eq!((*got, *status), (id, Some(202)));
    assert_eq!(
        permit_ua::inbox::answered_header(headers, "Permit-Item"),
        Some(item.as_str())
    );
}

#[test]
fn a_deposit_without_an_answer_is_reported_after_timer_f() {
    let mut b = Bench::new("alice");
    let start = b.clock.now();
    let id = b.ua.store_send(start, deposit());
    let mut reported = None;
    for _ in 0..200 {
        let _ = b.sent();
        let Some(t) = b.ua.poll_timeout() else { break };
        b.clock.advance(t.saturating_duration_since(b.clock.now()));
        let now = b.clock.now();
        b.ua.handle_timeout(now);
        if let Some(e) = b.store_events().into_iter().next() {
            reported = Some((e, b.clock.now()));
            break;
        }
    }
    let (e, at) = reported.expect("reported");
    assert!(matches!(e, StoreEvent::Answered { id: got, status: None, .. } if got == id));
    // Timer F = 64·T1 (RFC 3261 §17.1.2.2).
    assert_eq!(at - start, Duration::from_secs(32));
}
