//! The sans-IO user agent on a virtual clock: every message it sends is parsed and
//! checked, every answer is scripted here, and timers are asserted at exact virtual
//! instants (RFC 3261 §17 timers with T1 = 500 ms).

// Virtual instants here only move forward: a subtraction that underflows is a bug
// the panic should show.
#![allow(clippy::unchecked_time_subtraction)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use permit_ua::media::codec::Codec;
use permit_ua::{CallOutcome, Event, Local, Ua, UaConfig};
use sip_core::digest::{self, Algorithm, Credentials, NonceKey, Verifier};
use sip_core::message::{HeaderName, Message, Method, ResponseBuilder};
use sip_core::transport::{Received, Transport};
use sip_testkit::{VirtualClock, seeded_rng};

const PROXY: &str = "127.0.0.1:5060";
const ME: &str = "127.0.0.1:5070";
const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

struct Bench {
    ua: Ua,
    clock: VirtualClock,
}

impl Bench {
    fn new(transport: Transport, max_calls: usize) -> Self {
        let local = Local {
            user: "alice".into(),
            domain: "localhost".into(),
            transport,
            advertised: ME.parse().unwrap(),
            listener: None,
        };
        let mut cfg = UaConfig::new(local, ME.parse().unwrap(), PROXY.parse().unwrap());
        cfg.password = Some("s3cret".into());
        cfg.max_calls = max_calls;
        cfg.keepalive = Duration::from_secs(10);
        Self {
            ua: Ua::new(cfg, seeded_rng(7)),
            clock: VirtualClock::new(),
        }
    }

    /// Everything sent since the last call, parsed, with its destination.
    fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
        let mut out = vec![];
        while let Some(t) = self.ua.poll_transmit() {
            let m = Message::parse(t.data).expect("we send parseable messages");
            if m.is_request() {
                m.validate().expect("our requests validate");
            }
            out.push((t.dest, m));
        }
        out
    }

    fn sent_one(&mut self) -> Message {
        let mut s = self.sent();
        assert_eq!(
            s.len(),
            1,
            "expected one message, got {:?}",
            s.iter().map(|m| m.1.as_bytes().len()).collect::<Vec<_>>()
        );
        s.remove(0).1
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }

    fn receive(&mut self, data: Vec<u8>) {
        let now = self.clock.now();
        self.ua.handle_received(
            now,
            Received {
                transport: Transport::Udp,
                local: ME.parse().unwrap(),
                peer: PROXY.parse().unwrap(),
                data: data.into(),
            },
        );
    }

    /// Runs every timer up to `by` from now; returns what was sent, with the instant
    /// (from the start of the clock) it was sent at.
    fn advance(&mut self, by: Duration) -> Vec<(Duration, Message)> {
        let end = self.clock.now() + by;
        let mut out = vec![];
        while let Some(at) = self.ua.poll_timeout().filter(|&t| t <= end) {
            let now = self.clock.advance_to(at.max(self.clock.now()));
            self.ua.handle_timeout(now);
            let at = self.clock.elapsed();
            out.extend(self.sent().into_iter().map(|(_, m)| (at, m)));
        }
        self.clock.advance_to(end);
        out
    }

    /// Advances to the engine's next timer (which must be at `after` from now).
    fn fire_after(&mut self, after: Duration) {
        let at = self.ua.poll_timeout().expect("a timer is armed");
        assert_eq!(at - self.clock.now(), after, "next timer");
        let now = self.clock.advance_to(at);
        self.ua.handle_timeout(now);
    }
}

fn reply(
    req: &Message,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut b = ResponseBuilder::new(req, status, reason).to_tag(b"srvtag");
    for (n, v) in headers {
        b = b.header(n, v.as_bytes());
    }
    if let Some(body) = body {
        b = b.body(b"application/sdp", body.as_bytes());
    }
    b.to_vec()
}

fn verifier() -> Verifier {
    Verifier::new(
        "localhost".into(),
        NonceKey::new([9; 32]),
        300,
        vec![Algorithm::Md5, Algorithm::Sha256],
    )
}

/// Checks the credentials in `header` of `req` against the password.
fn assert_authorized(req: &Message, header: HeaderName, alg: Algorithm, nc: u32) {
    let value = req.header(header).expect("credentials sent");
    let creds = Credentials::parse(value).unwrap();
    assert_eq!((creds.algorithm, creds.nc), (alg, Some(nc)));
    assert_eq!(creds.username, "alice");
    let ha1 = digest::ha1(alg, "alice", "localhost", "s3cret");
    let method = req.method().unwrap().as_bytes().to_vec();
    assert!(digest::verify(&creds, &method, &ha1), "response verifies");
}

fn header(m: &Message, name: HeaderName) -> &str {
    std::str::from_utf8(m.header(name).unwrap_or_default()).unwrap()
}

#[test]
fn registers_with_sha256_refreshes_at_half_life_and_keeps_alive() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.ua.register(b.clock.now());
    let first = b.sent_one();
    assert_eq!(first.method(), Some(&Method::Register));
    assert_eq!(first.request_uri(), Some(&b"sip:localhost"[..]));
    assert_eq!(
        header(&first, HeaderName::Contact),
        "<sip:alice@127.0.0.1:5070>"
    );
    assert!(first.header(HeaderName::Authorization).is_none());

    let challenges = verifier().challenges(1_000, 1, false);
    let hs: Vec<(&str, &str)> = challenges
        .iter()
        .map(|c| ("WWW-Authenticate", c.as_str()))
        .collect();
    b.receive(reply(&first, 401, "Unauthorized", &hs, None));
    let second = b.sent_one();
    assert_authorized(&second, HeaderName::Authorization, Algorithm::Sha256, 1);
    assert_eq!(second.cseq().unwrap().seq, first.cseq().unwrap().seq + 1);
    assert_eq!(
        second.call_id(),
        first.call_id(),
        "one Call-ID per registration (§10.2.4)"
    );
    assert_ne!(
        second.top_via().unwrap().branch(),
        first.top_via().unwrap().branch()
    );

    b.receive(reply(
        &second,
        200,
        "OK",
        &[("Contact", "<sip:alice@127.0.0.1:5070>;expires=60")],
        None,
    ));
    assert_eq!(b.events(), [Event::Registered { expires: 60 }]);

    // Keep-alive OPTIONS every 10 s, the refresh at 30 s (half of 60).
    let t0 = b.clock.elapsed();
    for n in 1..=2u64 {
        let sent = b.advance(Duration::from_secs(10));
        assert_eq!(sent.len(), 1);
        let (at, ka) = &sent[0];
        assert_eq!(*at - t0, Duration::from_secs(10 * n));
        assert_eq!(ka.method(), Some(&Method::Options));
        assert_eq!(ka.request_uri(), Some(&b"sip:localhost"[..]));
        b.receive(reply(ka, 200, "OK", &[], None));
    }
    let mut sent = b.advance(Duration::from_secs(10));
    assert_eq!(sent.len(), 1);
    let (at, refresh) = sent.remove(0);
    assert_eq!(at - t0, Duration::from_secs(30));
    assert_eq!(refresh.method(), Some(&Method::Register));
    assert_eq!(refresh.call_id(), first.call_id());
    assert_eq!(refresh.cseq().unwrap().seq, second.cseq().unwrap().seq + 1);
    // The refresh carries credentials at once: same nonce, next count.
    assert_authorized(&refresh, HeaderName::Authorization, Algorithm::Sha256, 2);
    b.receive(reply(&refresh, 200, "OK", &[("Expires", "60")], None));
    assert_eq!(b.events(), [Event::Registered { expires: 60 }]);

    b.ua.unregister(b.clock.now());
    let un = b.sent_one();
    assert_eq!(header(&un, HeaderName::Expires), "0");
    b.receive(reply(&un, 200, "OK", &[], None));
    assert_eq!(b.events(), [Event::Unregistered]);
}

#[test]
fn md5_only_and_a_wrong_password_stops_after_one_retry() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.ua.register(b.clock.now());
    let first = b.sent_one();
    let md5 = Verifier::new(
        "localhost".into(),
        NonceKey::new([9; 32]),
        300,
        vec![Algorithm::Md5],
    );
    let ch = md5.challenges(1_000, 2, false);
    b.receive(reply(
        &first,
        401,
        "Unauthorized",
        &[("WWW-Authenticate", &ch[0])],
        None,
    ));
    let second = b.sent_one();
    assert_authorized(&second, HeaderName::Authorization, Algorithm::Md5, 1);
    // The same nonce refused again: the password is wrong; no third try.
    b.receive(reply(
        &second,
        401,
        "Unauthorized",
        &[("WWW-Authenticate", &ch[0])],
        None,
    ));
    assert!(b.sent().is_empty());
    assert_eq!(
        b.events(),
        [Event::RegistrationFailed { status: Some(401) }]
    );
}

#[test]
fn register_without_answer_retransmits_on_timer_e_and_fails_at_timer_f() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.ua.register(b.clock.now());
    b.sent_one();
    // Timer E retransmits (RFC 3261 §17.1.2.2, sip-core's machine); Timer F gives up
    // at 64·T1 = 32 s and the registration reports no response.
    let start = b.clock.elapsed();
    let sent = b.advance(Duration::from_millis(31_999));
    assert!(sent.len() >= 8, "{} retransmissions", sent.len());
    assert!(
        sent.iter()
            .all(|(_, m)| m.method() == Some(&Method::Register))
    );
    assert!(b.events().is_empty());
    b.advance(Duration::from_millis(1));
    assert_eq!(b.clock.elapsed() - start, Duration::from_secs(32));
    assert_eq!(b.events(), [Event::RegistrationFailed { status: None }]);
}

/// INVITE, 407 (ACKed, answered with Proxy-Authorization), 180, 200 with two
/// Record-Routes: ACK and BYE follow the reversed route set to the first hop.
#[test]
fn outgoing_call_through_407_to_connected_and_bye() {
    let mut b = Bench::new(Transport::Udp, 1);
    let call =
        b.ua.call(b.clock.now(), "bob", "127.0.0.1:30000".parse().unwrap());
    let invite = b.sent_one();
    assert_eq!(invite.request_uri(), Some(&b"sip:bob@localhost"[..]));
    assert!(invite.body().starts_with(b"v=0"));
    assert!(
        std::str::from_utf8(invite.body())
            .unwrap()
            .contains("m=audio 30000 RTP/AVP 111 0\r\n")
    );

    let ch = verifier().challenges(1_000, 3, false);
    b.receive(reply(
        &invite,
        407,
        "Proxy Authentication Required",
        &[("Proxy-Authenticate", &ch[0])],
        None,
    ));
    let mut sent = b.sent();
    assert_eq!(sent.len(), 2, "ACK for the 407 and the new INVITE");
    let (_, ack) = sent.remove(0);
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(
        ack.top_via().unwrap().branch(),
        invite.top_via().unwrap().branch(),
        "§17.1.1.3"
    );
    let (_, invite2) = sent.remove(0);
    assert_authorized(&invite2, HeaderName::ProxyAuthorization, Algorithm::Md5, 1);
    assert_eq!(invite2.cseq().unwrap().seq, 2);
    assert_eq!(invite2.from_tag(), invite.from_tag());

    b.receive(reply(&invite2, 180, "Ringing", &[], None));
    assert_eq!(
        b.events(),
        [Event::CallProgress {
            call: call.clone(),
            status: 180
        }]
    );
    let rr = [
        ("Record-Route", "<sip:127.0.0.1:5062;lr>"),
        ("Record-Route", "<sip:127.0.0.1:5060;lr>"),
        ("Contact", "<sip:bob@127.0.0.1:5080>"),
    ];
    b.receive(reply(&invite2, 200, "OK", &rr, Some(SDP)));
    assert_eq!(
        b.events(),
        [Event::CallConnected {
            call: call.clone(),
            remote_media: Some("127.0.0.1:40000".parse().unwrap())
        }]
    );
    let (dest, ack) = b.sent().remove(0);
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.cseq().unwrap().seq, 2);
    assert_eq!(
        dest,
        "127.0.0.1:5060".parse::<std::net::SocketAddr>().unwrap(),
        "first route of the reversed set"
    );
    assert_eq!(ack.request_uri(), Some(&b"sip:bob@127.0.0.1:5080"[..]));
    let routes: Vec<&[u8]> = ack.list(HeaderName::Route).collect();
    assert_eq!(
        routes,
        [&b"<sip:127.0.0.1:5060;lr>"[..], b"<sip:127.0.0.1:5062;lr>"]
    );

    // A retransmitted 2xx is ACKed again (§13.2.2.4).
    b.receive(reply(&invite2, 200, "OK", &rr, Some(SDP)));
    assert_eq!(b.sent_one().method(), Some(&Method::Ack));

    b.ua.hangup(b.clock.now(), &call);
    let bye = b.sent_one();
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.cseq().unwrap().seq, 3);
    assert_eq!(bye.to_tag(), Some(&b"srvtag"[..]));
    b.receive(reply(&bye, 200, "OK", &[], None));
    assert_eq!(
        b.events(),
        [Event::CallEnded {
            call,
            by_peer: false
        }]
    );
    assert!(b.ua.is_idle() || b.ua.load().active == 0);
}

#[test]
fn hangup_while_ringing_cancels_and_487_ends_the_attempt() {
    let mut b = Bench::new(Transport::Udp, 1);
    let call =
        b.ua.call(b.clock.now(), "bob", "127.0.0.1:30000".parse().unwrap());
    let invite = b.sent_one();
    // Before any provisional, CANCEL must wait (§9.1).
    b.ua.hangup(b.clock.now(), &call);
    assert!(b.sent().is_empty());
    b.receive(reply(&invite, 180, "Ringing", &[], None));
    let cancel = b.sent_one();
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        invite.top_via().unwrap().branch()
    );
    assert_eq!(cancel.cseq().unwrap().seq, invite.cseq().unwrap().seq);
    b.receive(reply(&cancel, 200, "OK", &[], None));
    b.receive(reply(&invite, 487, "Request Terminated", &[], None));
    assert_eq!(b.sent_one().method(), Some(&Method::Ack));
    let events = b.events();
    assert!(
        events.contains(&Event::CallFailed {
            call,
            outcome: CallOutcome::Cancelled
        }),
        "{events:?}"
    );
}

#[test]
fn refusals_become_outcomes() {
    for (status, outcome) in [
        (403, CallOutcome::Refused),
        (486, CallOutcome::Busy(486)),
        (480, CallOutcome::Unavailable(480)),
    ] {
        let mut b = Bench::new(Transport::Udp, 1);
        let call =
            b.ua.call(b.clock.now(), "bob", "127.0.0.1:30000".parse().unwrap());
        let invite = b.sent_one();
        b.receive(reply(&invite, status, "No", &[], None));
        assert_eq!(b.sent_one().method(), Some(&Method::Ack));
        assert_eq!(b.events(), [Event::CallFailed { call, outcome }]);
    }
}

#[test]
fn invite_without_any_answer_is_no_response_at_timer_b() {
    let mut b = Bench::new(Transport::Tcp, 1);
    let call =
        b.ua.call(b.clock.now(), "bob", "127.0.0.1:30000".parse().unwrap());
    b.sent_one();
    // Reliable transport: no retransmission, Timer B = 64·T1 = 32 s.
    b.fire_after(Duration::from_secs(32));
    assert_eq!(
        b.events(),
        [Event::CallFailed {
            call,
            outcome: CallOutcome::NoResponse
        }]
    );
}

fn incoming_invite(branch: &str, call_id: &str) -> Vec<u8> {
    incoming_invite_with(branch, call_id, SDP)
}

fn incoming_invite_with(branch: &str, call_id: &str, sdp: &str) -> Vec<u8> {
    format!(
        "INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:bob@localhost>;tag=bobtag\r\n\
To: <sip:alice@localhost>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5080>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

fn in_dialog(method: &str, branch: &str, call_id: &str, to_tag: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n\
Max-Forwards: 69\r\nFrom: <sip:bob@localhost>;tag=bobtag\r\nTo: <sip:alice@localhost>;tag={to_tag}\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn options(branch: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nFrom: <sip:permit@localhost>;tag=q\r\nTo: <sip:alice@127.0.0.1:5070>\r\n\
Call-ID: lq-{branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// INVITE → 100, IncomingCall; answer → 200 with SDP and the Record-Route; the 2xx is
/// re-sent at T1, 2·T1 … until the ACK; BYE from the peer ends the call. Meanwhile
/// the proxy's load query gets 486 (one call at max-calls 1), then 200 again.
#[test]
fn incoming_call_answer_retransmit_ack_bye_and_load_query() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.receive(options("z9hG4bKq1"));
    assert_eq!(b.sent_one().status(), Some(200));
    assert_eq!(b.events(), [Event::LoadQuery { status: 200 }]);

    b.receive(incoming_invite("z9hG4bKinv", "c1"));
    assert_eq!(b.sent_one().status(), Some(100));
    let events = b.events();
    let [Event::IncomingCall { call, from, offer }] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!((call.as_str(), from.as_str()), ("c1", "sip:bob@localhost"));
    assert_eq!(
        offer.addr,
        "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap()
    );

    b.receive(options("z9hG4bKq2"));
    assert_eq!(b.sent_one().status(), Some(486), "RFC 3261 §11.2: busy");
    assert_eq!(b.events(), [Event::LoadQuery { status: 486 }]);

    b.ua.answer(b.clock.now(), "c1", "127.0.0.1:30002".parse().unwrap());
    let ok = b.sent_one();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        header(&ok, HeaderName::RecordRoute),
        "<sip:127.0.0.1:5060;lr>"
    );
    assert_eq!(
        header(&ok, HeaderName::Contact),
        "<sip:alice@127.0.0.1:5070>"
    );
    assert!(
        std::str::from_utf8(ok.body())
            .unwrap()
            .contains("m=audio 30002 RTP/AVP 0")
    );
    let tag = String::from_utf8(ok.to_tag().unwrap().to_vec()).unwrap();

    // §13.3.1.4: 2xx again at 0.5 s, then 1 s, 2 s later.
    for gap in [500, 1000, 2000] {
        b.fire_after(Duration::from_millis(gap));
        assert_eq!(b.sent_one().status(), Some(200));
    }
    b.receive(in_dialog("ACK", "z9hG4bKack", "c1", &tag, 1));
    assert!(b.sent().is_empty());
    assert_eq!(
        b.events(),
        [Event::CallConnected {
            call: "c1".into(),
            remote_media: Some("127.0.0.1:40000".parse().unwrap())
        }]
    );
    // No more retransmissions after the ACK.
    assert!(
        b.ua.poll_timeout()
            .is_none_or(|t| t - b.clock.now() > Duration::from_secs(4))
    );

    // UPDATE in the dialog: not taken (405 with Allow); outside it: 481.
    b.receive(in_dialog("UPDATE", "z9hG4bKupd", "c1", &tag, 2));
    let resp = b.sent_one();
    assert_eq!(resp.status(), Some(405));
    assert!(header(&resp, HeaderName::Allow).contains("BYE"));
    b.receive(in_dialog("UPDATE", "z9hG4bKupd2", "c1", "nottag", 2));
    assert_eq!(b.sent_one().status(), Some(481));

    // A BYE with the wrong tag is not ours (481); the right one ends the call.
    b.receive(in_dialog("BYE", "z9hG4bKbye0", "c1", "nottag", 2));
    assert_eq!(b.sent_one().status(), Some(481));
    b.receive(in_dialog("BYE", "z9hG4bKbye", "c1", &tag, 2));
    assert_eq!(b.sent_one().status(), Some(200));
    assert_eq!(
        b.events(),
        [Event::CallEnded {
            call: "c1".into(),
            by_peer: true
        }]
    );
    b.receive(options("z9hG4bKq3"));
    assert_eq!(b.sent_one().status(), Some(200));
}

#[test]
fn unacknowledged_2xx_ends_with_bye_at_64_t1() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.receive(incoming_invite("z9hG4bKinv", "c2"));
    b.sent();
    b.events();
    b.ua.answer(b.clock.now(), "c2", "127.0.0.1:30002".parse().unwrap());
    b.sent();
    let start = b.clock.now();
    let mut byes = 0;
    while b.clock.now() - start < Duration::from_secs(40) && byes == 0 {
        let Some(at) = b.ua.poll_timeout() else { break };
        let now = b.clock.advance_to(at);
        b.ua.handle_timeout(now);
        byes += b
            .sent()
            .iter()
            .filter(|(_, m)| m.method() == Some(&Method::Bye))
            .count();
    }
    assert_eq!(byes, 1);
    assert_eq!(b.clock.now() - start, Duration::from_secs(32), "64·T1");
}

#[test]
fn busy_invite_gets_486_and_cancel_before_answer_gets_487() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.receive(incoming_invite("z9hG4bKa", "c3"));
    b.sent();
    b.events();
    b.receive(incoming_invite("z9hG4bKb", "c4"));
    let sent = b.sent();
    assert_eq!(
        sent.iter().map(|(_, m)| m.status()).collect::<Vec<_>>(),
        [Some(100), Some(486)]
    );
    assert_eq!(b.events(), [Event::IncomingRefused { status: 486 }]);
    // CANCEL of the first, still unanswered: 200 for the CANCEL, 487 for the INVITE.
    let cancel = String::from_utf8(incoming_invite("z9hG4bKa", "c3"))
        .unwrap()
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let cancel = cancel
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .replace("Content-Type: application/sdp\r\n", "");
    let cancel = cancel
        .lines()
        .map(|l| {
            if l.starts_with("Content-Length") {
                "Content-Length: 0"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n\r\n";
    b.receive(cancel.into_bytes());
    let statuses: Vec<_> = b.sent().iter().map(|(_, m)| m.status()).collect();
    assert_eq!(statuses, [Some(200), Some(487)]);
    assert_eq!(
        b.events(),
        [Event::CallEnded {
            call: "c3".into(),
            by_peer: true
        }]
    );
}

/// Network input never panics: truncations of real messages and random bytes.
#[test]
fn garbage_is_dropped_or_answered_never_a_panic() {
    use sip_testkit::rand::Rng;
    let mut b = Bench::new(Transport::Udp, 1);
    let samples = [
        incoming_invite("z9hG4bKg", "g1"),
        options("z9hG4bKg2"),
        in_dialog("BYE", "z9hG4bKg3", "g1", "x", 2),
    ];
    for s in &samples {
        for cut in 0..s.len() {
            b.receive(s[..cut].to_vec());
        }
    }
    let mut rng = seeded_rng(11);
    for _ in 0..2000 {
        let n = rng.random_range(0..300);
        let mut v: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            let mut s = samples[rng.random_range(0..samples.len())].clone();
            let at = rng.random_range(0..s.len());
            s.splice(at..at, v.drain(..));
            v = s;
        }
        b.receive(v);
        b.sent();
        b.events();
    }
    let _ = Bytes::new();
}

/// Over TLS (no listener) the engine learns its flow's address from the proxy's
/// `received`/`rport` (RFC 3581) and names it in Via and Contact afterwards.
#[test]
fn tls_flow_address_is_learnt_from_rport() {
    let mut b = Bench::new(Transport::Tls, 1);
    b.ua.ping(b.clock.now());
    let ping = b.sent_one();
    assert_eq!(ping.method(), Some(&Method::Options));
    let via = "SIP/2.0/TLS 127.0.0.1:5070;branch=".to_string()
        + std::str::from_utf8(ping.top_via().unwrap().branch().unwrap()).unwrap()
        + ";received=127.0.0.1;rport=40001";
    let resp = ResponseBuilder::new(&ping, 200, "OK")
        .top_via(via.as_bytes())
        .to_vec();
    b.receive(resp);
    assert_eq!(b.events(), [Event::ProxyAnswered { status: Some(200) }]);
    b.ua.register(b.clock.now());
    let reg = b.sent_one();
    assert_eq!(
        header(&reg, HeaderName::Contact),
        "<sip:alice@127.0.0.1:40001;transport=tls;ob>"
    );
    assert_eq!(reg.top_via().unwrap().port, Some(40001));
}

/// The registrar sees us at another address (a NAT): the UA registers that one and
/// removes the old binding in the same REGISTER, once.
#[test]
fn address_change_seen_by_the_registrar_re_registers() {
    let mut b = Bench::new(Transport::Udp, 1);
    b.ua.register(b.clock.now());
    let first = b.sent_one();
    let natted = |req: &Message, port: u16| {
        let via = "SIP/2.0/UDP 127.0.0.1:5070;branch=".to_string()
            + std::str::from_utf8(req.top_via().unwrap().branch().unwrap()).unwrap()
            + &format!(";received=192.0.2.7;rport={port}");
        ResponseBuilder::new(req, 200, "OK")
            .to_tag(b"r")
            .top_via(via.as_bytes())
            .header("Expires", b"600")
            .to_vec()
    };
    b.receive(natted(&first, 41000));
    assert!(b.events().is_empty(), "not registered at the old address");
    let again = b.sent_one();
    let contacts: Vec<&[u8]> = again.headers(HeaderName::Contact).collect();
    assert_eq!(
        contacts,
        [
            &b"<sip:alice@192.0.2.7:41000>"[..],
            b"<sip:alice@127.0.0.1:5070>;expires=0"
        ]
    );
    assert_eq!(again.top_via().unwrap().port, Some(41000));
    // Even if the mapping moves again, the answer is taken: no loop.
    b.receive(natted(&again, 41002));
    assert_eq!(b.events(), [Event::Registered { expires: 600 }]);
    assert!(b.sent().is_empty());
}

/// Regression: over TCP a client transaction ends at its final response (Timer K is
/// zero), and the 401 was once dropped with it instead of being answered.
#[test]
fn challenge_over_a_reliable_transport_is_answered() {
    let mut b = Bench::new(Transport::Tcp, 1);
    b.ua.publish_permits(b.clock.now(), &permit_ua::PermitChange::Read, None);
    let first = b.sent_one();
    assert_eq!(header(&first, HeaderName::Event), "permit-list");
    let ch = verifier().challenges(1_000, 4, false);
    b.receive(reply(
        &first,
        401,
        "Unauthorized",
        &[("WWW-Authenticate", &ch[0])],
        None,
    ));
    let second = b.sent_one();
    assert_authorized(&second, HeaderName::Authorization, Algorithm::Md5, 1);
    b.receive(reply(
        &second,
        200,
        "OK",
        &[("SIP-ETag", "00112233aabbccdd")],
        None,
    ));
    assert_eq!(
        b.events(),
        [Event::PermitList {
            status: 200,
            etag: Some("00112233aabbccdd".into()),
            body: String::new()
        }]
    );
}

/// Two engines call each other directly over a simulated link that loses 20 % of
/// the datagrams, duplicates 5 % and reorders with jitter: for every seed the call
/// connects and ends on both sides, by retransmission alone.
#[test]
fn direct_call_over_a_lossy_link_connects_and_ends() {
    use sip_testkit::{Endpoint, LinkConfig, SimNetwork};

    const BOB: &str = "127.0.0.1:5080";
    let engine = |user: &str, me: &str, peer: &str, seed: u64| {
        let local = Local {
            user: user.into(),
            domain: "localhost".into(),
            transport: Transport::Udp,
            advertised: me.parse().unwrap(),
            listener: None,
        };
        Ua::new(
            UaConfig::new(local, me.parse().unwrap(), peer.parse().unwrap()),
            seeded_rng(seed),
        )
    };
    for seed in 0..20 {
        let link = LinkConfig::perfect(Duration::from_millis(20))
            .with_loss(0.2)
            .with_duplication(0.05)
            .with_jitter(Duration::from_millis(30));
        let mut net = SimNetwork::symmetric(seed, link);
        let mut clock = VirtualClock::new();
        let mut alice = engine("alice", ME, BOB, seed);
        let mut bob = engine("bob", BOB, ME, seed + 100);
        let (mut a_events, mut b_events) = (vec![], vec![]);
        let call = alice.call(
            clock.now(),
            "sip:bob@127.0.0.1:5080",
            "127.0.0.1:30000".parse().unwrap(),
        );
        let mut hung_up = false;
        for _ in 0..10_000 {
            let now = clock.now();
            for (ua, from) in [(&mut alice, Endpoint::A), (&mut bob, Endpoint::B)] {
                while let Some(t) = ua.poll_transmit() {
                    net.send(now, from, t.data);
                }
            }
            while let Some(d) = net.poll_deliver(now) {
                let (ua, peer, local) = match d.to {
                    Endpoint::A => (&mut alice, BOB, ME),
                    Endpoint::B => (&mut bob, ME, BOB),
                };
                ua.handle_received(
                    now,
                    Received {
                        transport: Transport::Udp,
                        local: local.parse().unwrap(),
                        peer: peer.parse().unwrap(),
                        data: d.payload,
                    },
                );
            }
            while let Some(e) = bob.poll_event() {
                if let Event::IncomingCall { call, .. } = &e {
                    bob.answer(now, call, "127.0.0.1:30002".parse().unwrap());
                }
                b_events.push(e);
            }
            while let Some(e) = alice.poll_event() {
                if matches!(e, Event::CallConnected { .. }) && !hung_up {
                    hung_up = true;
                    alice.hangup(now, &call);
                }
                a_events.push(e);
            }
            if alice.poll_transmit_pending() || bob.poll_transmit_pending() {
                continue;
            }
            let next = [net.poll_timeout(), alice.poll_timeout(), bob.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { break };
            let now = clock.advance_to(next.max(clock.now()));
            alice.handle_timeout(now);
            bob.handle_timeout(now);
        }
        let ended = |events: &[Event], by_peer: bool| {
            events
                .iter()
                .any(|e| matches!(e, Event::CallEnded { by_peer: b, .. } if *b == by_peer))
        };
        let connected = |events: &[Event]| {
            events
                .iter()
                .filter(|e| matches!(e, Event::CallConnected { .. }))
                .count()
        };
        assert_eq!(connected(&a_events), 1, "seed {seed}: alice {a_events:?}");
        // Bob may see the BYE before any ACK (lost or overtaken): the call ends unconfirmed.
        assert!(connected(&b_events) <= 1, "seed {seed}: bob {b_events:?}");
        assert!(
            matches!(b_events[0], Event::IncomingCall { .. }),
            "seed {seed}: bob {b_events:?}"
        );
        assert!(ended(&a_events, false), "seed {seed}: alice {a_events:?}");
        assert!(ended(&b_events, true), "seed {seed}: bob {b_events:?}");
        assert_eq!(alice.load().active + bob.load().active, 0, "seed {seed}");
    }
}

/// RFC 3264 §5.1, §6.1: our offer lists Opus (RFC 7587 §7) then PCMU, and the call
/// takes the codec of the answer; as the answerer we take the first codec of the
/// offer that we have, under the offer's payload type, and refuse an offer with none
/// (488).
#[test]
fn audio_codec_negotiation_both_ways() {
    let mut b = Bench::new(Transport::Udp, 4);
    let call =
        b.ua.call(b.clock.now(), "bob", "127.0.0.1:30000".parse().unwrap());
    let invite = b.sent_one();
    let body = std::str::from_utf8(invite.body()).unwrap().to_string();
    assert!(
        body.contains(
            "m=audio 30000 RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\n"
        ),
        "{body}"
    );
    let answer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let contact = [("Contact", "<sip:bob@127.0.0.1:5080>")];
    b.receive(reply(&invite, 200, "OK", &contact, Some(answer)));
    assert!(matches!(
        b.events().as_slice(),
        [Event::CallConnected { .. }]
    ));
    assert_eq!(b.ua.audio_codec(&call), Codec::Opus { pt: 111 });
    assert_eq!(b.sent_one().method(), Some(&Method::Ack));

    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8 96 0\r\na=rtpmap:96 opus/48000/2\r\n";
    b.receive(incoming_invite_with("z9hG4bKo1", "o1", offer));
    assert_eq!(b.sent_one().status(), Some(100));
    assert!(matches!(
        b.events().as_slice(),
        [Event::IncomingCall { .. }]
    ));
    b.ua.answer(b.clock.now(), "o1", "127.0.0.1:30002".parse().unwrap());
    let ok = b.sent_one();
    assert_eq!(ok.status(), Some(200));
    let body = std::str::from_utf8(ok.body()).unwrap().to_string();
    assert!(
        body.contains(
            "m=audio 30002 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n"
        ) && !body.contains("PCMU"),
        "{body}"
    );
    assert_eq!(b.ua.audio_codec("o1"), Codec::Opus { pt: 96 });

    let pcmu_first = offer.replace("8 96 0", "0 96");
    b.receive(incoming_invite_with("z9hG4bKo2", "o2", &pcmu_first));
    b.sent_one();
    b.events();
    b.ua.answer(b.clock.now(), "o2", "127.0.0.1:30004".parse().unwrap());
    let ok = b.sent_one();
    let body = std::str::from_utf8(ok.body()).unwrap().to_string();
    assert!(
        body.contains("m=audio 30004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"),
        "{body}"
    );
    assert_eq!(b.ua.audio_codec("o2"), Codec::Pcmu);

    let none = offer.replace("8 96 0", "8 9");
    b.receive(incoming_invite_with("z9hG4bKo3", "o3", &none));
    let sent = b.sent();
    assert_eq!(
        sent.last().map(|(_, m)| m.status()),
        Some(Some(488)),
        "RFC 3264 §6"
    );
}
