//! Engine tests of the relay hook: a permitted video call gets `a=permit-relay` on both
//! legs (the callee's port in the INVITE, the caller's in the answer), the proof keyed
//! by the call's token latches, and the relay call is freed at the BYE's 2xx or when the
//! INVITE fails; calls without video or without a grant are untouched.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sip_core::message::{HeaderName, Message, Method};

use super::auth_tests::{challenges, credentials};
use super::gate_tests::{gated_with, register_bob, requests_to};
use super::tests::{Harness, status};
use crate::gate::GateSettings;
use crate::relay::latch::{Kind, Latch, LatchKey, Leg};
use crate::relay::shell::SharedRelay;
use crate::relay::{MediaRelay, RelaySettings, RelayTable, Verdict};

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

const VIDEO_OFFER: &str = "v=0
o=alice 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 7000 RTP/SAVP 0
a=rtpmap:0 PCMU/8000
m=video 7002 RTP/SAVP 96
a=rtpmap:96 H264/90000
a=permit-relay:203.0.113.66 9
";

const VIDEO_ANSWER: &str = "v=0
o=bob 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 8000 RTP/SAVP 0
a=rtpmap:0 PCMU/8000
m=video 8002 RTP/SAVP 96
a=rtpmap:96 H264/90000
a=permit-relay:203.0.113.66 10
";

const AUDIO_OFFER: &str = "v=0
o=alice 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 7000 RTP/AVP 0
m=video 0 RTP/AVP 96
";

fn relay_table() -> SharedRelay {
    SharedRelay::new(RelayTable::new(
        RelaySettings {
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            ports: (40_000, 40_099),
            inactivity: Duration::from_mins(1),
        },
        5,
    ))
}

fn harness(audio: bool) -> (Harness, SharedRelay) {
    let mut h = gated_with(GateSettings {
        load_query: false,
        ..GateSettings::default()
    });
    register_bob(&mut h, "");
    let relay = relay_table();
    h.proxy.set_relay(Box::new(relay.clone()), audio);
    (h, relay)
}

/// Lines of `text` as the harness sends them (LF becomes CRLF).
fn wire_len(text: &str) -> usize {
    text.replace('\n', "\r\n").len()
}

fn invite(n: u32, auth: Option<&str>, body: &str) -> String {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKrl{n}
From: <sip:alice@localhost>;tag=a{n}
To: <sip:bob@localhost>
Call-ID: relay-{n}
CSeq: {n} INVITE
Contact: <sip:alice@{ALICE}>
{auth}Content-Type: application/sdp
Max-Forwards: 70
Content-Length: {}

{body}",
        wire_len(body)
    )
}

/// alice's INVITE with `body`, authenticated; returns what the proxy sent to bob.
fn call(h: &mut Harness, n: u32, body: &str) -> Message {
    let out = h.recv(ALICE, &invite(n, None, body));
    assert_eq!(status(&out), vec![100, 407]);
    let ch = challenges(&out[1].1, HeaderName::ProxyAuthenticate);
    let creds = credentials(
        "alice",
        "wonderland",
        "MD5",
        &ch[0].1,
        "INVITE",
        "sip:bob@localhost",
        1,
    );
    let out = h.recv(ALICE, &invite(n + 1, Some(&creds), body));
    let inv = requests_to(&out, BOB);
    assert_eq!(inv.len(), 1, "one INVITE to bob: {out:?}");
    inv[0].clone()
}

/// bob's response to the forwarded `inv`.
fn response(inv: &Message, code: u16, body: &str) -> String {
    let mut head = String::new();
    for v in inv.headers(HeaderName::Via) {
        let _ = writeln!(head, "Via: {}", String::from_utf8_lossy(v));
    }
    for r in inv.headers(HeaderName::RecordRoute) {
        let _ = writeln!(head, "Record-Route: {}", String::from_utf8_lossy(r));
    }
    let hv = |n| String::from_utf8_lossy(inv.header(n).unwrap()).into_owned();
    let ct = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\n"
    };
    format!(
        "SIP/2.0 {code} Whatever\n{head}From: {}\nTo: {};tag=b1\nCall-ID: {}\nCSeq: {}\nContact: <sip:bob@{BOB}>\n{ct}Content-Length: {}\n\n{body}",
        hv(HeaderName::From),
        hv(HeaderName::To),
        hv(HeaderName::CallId),
        hv(HeaderName::CSeq),
        wire_len(body)
    )
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

/// The `a=permit-relay` values of each media section of `sdp`, by section.
fn relay_attrs(sdp: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            out.push(Vec::new());
        } else if let (Some(v), Some(last)) = (line.strip_prefix("a=permit-relay:"), out.last_mut())
        {
            last.push(v.to_owned());
        }
    }
    out
}

fn token(m: &Message) -> String {
    String::from_utf8_lossy(m.header(HeaderName::PermitToken).unwrap()).into_owned()
}

fn latch(tok: &str, leg: Leg, port: u16) -> [u8; 48] {
    Latch {
        kind: Kind::Latch,
        leg,
        port,
        counter: 1,
    }
    .encode(&LatchKey::new(tok.as_bytes()))
}

#[test]
fn video_call_gets_the_relay_on_both_legs_and_frees_it_at_bye() {
    let (mut h, relay) = harness(false);
    let inv = call(&mut h, 1, VIDEO_OFFER);
    // The callee's leg: the video section names the relay, the audio section does not,
    // and the caller's own a=permit-relay is gone.
    let offer = body(&inv);
    let attrs = relay_attrs(&offer);
    assert_eq!(attrs.len(), 2);
    assert!(attrs[0].is_empty(), "{offer}");
    assert_eq!(attrs[1].len(), 1, "{offer}");
    let (ip, port) = attrs[1][0].split_once(' ').unwrap();
    assert_eq!(ip, "192.0.2.1");
    let callee_port: u16 = port.parse().unwrap();
    assert!(!offer.contains("203.0.113.66"));
    assert_eq!(
        inv.header(HeaderName::ContentLength),
        Some(inv.body().len().to_string().as_bytes())
    );
    assert_eq!(relay.stats().live_calls, 1);

    // The caller's leg, in a 183 and the 200 with SDP; bob's own attribute is gone.
    let caller_port = callee_port - 1;
    for code in [183, 200] {
        let out = h.recv(BOB, &response(&inv, code, VIDEO_ANSWER));
        assert_eq!(status(&out), vec![code]);
        let answer = body(&out[0].1);
        assert_eq!(
            relay_attrs(&answer),
            vec![vec![], vec![format!("192.0.2.1 {caller_port}")]],
            "{answer}"
        );
        assert_eq!(
            out[0].1.header(HeaderName::ContentLength),
            Some(out[0].1.body().len().to_string().as_bytes())
        );
    }

    // The token that reached both sides latches the ports; a proof under another
    // token does not.
    let tok = token(&inv);
    let ua: SocketAddr = "127.0.0.1:7002".parse().unwrap();
    let now = std::time::Instant::now();
    let mut t = relay.lock();
    assert!(matches!(
        t.handle_datagram(
            now,
            callee_port,
            ua,
            &latch(&tok, Leg::Answerer, callee_port)
        ),
        Verdict::Answer { .. }
    ));
    assert!(matches!(
        t.handle_datagram(
            now,
            caller_port,
            ua,
            &latch("v1.x", Leg::Offerer, caller_port)
        ),
        Verdict::Drop(_)
    ));
    drop(t);

    // BYE from alice along the route set; bob's 200 frees the relay call.
    let rr = String::from_utf8_lossy(inv.header(HeaderName::RecordRoute).unwrap()).into_owned();
    let bye = format!(
        "BYE sip:bob@{BOB} SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKrlbye
From: <sip:alice@localhost>;tag=a2
To: <sip:bob@localhost>;tag=b1
Call-ID: relay-2
CSeq: 3 BYE
Route: {rr}
Max-Forwards: 70
Content-Length: 0

"
    );
    let out = h.recv(ALICE, &bye);
    let fwd = requests_to(&out, BOB);
    assert_eq!(fwd.len(), 1, "BYE reaches bob: {out:?}");
    assert_eq!(fwd[0].method(), Some(&Method::Bye));
    assert_eq!(relay.stats().live_calls, 1, "not before the BYE's 2xx");
    let out = h.recv(BOB, &response(&fwd[0], 200, ""));
    assert_eq!(status(&out), vec![200]);
    let s = relay.stats();
    assert_eq!((s.live_calls, s.calls_freed), (0, 1));
    assert_eq!(h.proxy.relay_stats().unwrap().1.freed, 1);
}

#[test]
fn a_failed_video_call_frees_its_relay() {
    let (mut h, relay) = harness(false);
    let inv = call(&mut h, 1, VIDEO_OFFER);
    assert_eq!(relay.stats().live_calls, 1);
    let out = h.recv(BOB, &response(&inv, 486, ""));
    assert_eq!(status(&out), vec![486]);
    assert_eq!(relay.stats().live_calls, 0);
    assert_eq!(relay.stats().calls_freed, 1);
}

#[test]
fn audio_is_relayed_too_when_configured() {
    let (mut h, relay) = harness(true);
    let inv = call(&mut h, 1, VIDEO_OFFER);
    let attrs = relay_attrs(&body(&inv));
    assert_eq!(attrs.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1]);
    assert_ne!(attrs[0], attrs[1]);
    assert_eq!(relay.stats().live_calls, 1);
}

#[test]
fn a_call_without_video_is_forwarded_as_it_came() {
    let (mut h, relay) = harness(true);
    let inv = call(&mut h, 1, AUDIO_OFFER);
    assert_eq!(body(&inv), AUDIO_OFFER.replace('\n', "\r\n"));
    assert_eq!(relay.stats().calls_allocated, 0);
    let out = h.recv(BOB, &response(&inv, 200, VIDEO_ANSWER));
    // No relay: the answer's attribute is still not the callee's to give.
    assert!(!body(&out[0].1).contains("permit-relay"));
}

#[test]
fn a_full_relay_lets_the_call_through_without_it() {
    let mut h = gated_with(GateSettings {
        load_query: false,
        ..GateSettings::default()
    });
    register_bob(&mut h, "");
    let relay = SharedRelay::new(RelayTable::new(
        RelaySettings {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: (40_000, 40_000), // no pair at all
            inactivity: Duration::from_mins(1),
        },
        1,
    ));
    h.proxy.set_relay(Box::new(relay.clone()), false);
    let inv = call(&mut h, 1, VIDEO_OFFER);
    assert!(!body(&inv).contains("permit-relay"));
    assert!(body(&inv).contains("m=video 7002"));
    assert_eq!(relay.stats().allocation_failures, 1);
    assert_eq!(h.proxy.relay_stats().unwrap().1.unrelayed, 1);
}

#[test]
fn without_a_relay_a_forged_attribute_is_still_removed() {
    let mut h = gated_with(GateSettings {
        load_query: false,
        ..GateSettings::default()
    });
    register_bob(&mut h, "");
    let inv = call(&mut h, 1, VIDEO_OFFER);
    let offer = body(&inv);
    assert!(!offer.contains("permit-relay"), "{offer}");
    assert_eq!(
        offer.len(),
        wire_len(VIDEO_OFFER) - "a=permit-relay:203.0.113.66 9\r\n".len()
    );
}

#[test]
fn expired_relay_calls_are_forgotten_at_purge() {
    let (mut h, relay) = harness(false);
    let _inv = call(&mut h, 1, VIDEO_OFFER);
    assert_eq!(h.proxy.relay_stats().unwrap().1.tracked, 1);
    let later = std::time::Instant::now() + Duration::from_secs(61);
    assert_eq!(relay.lock().handle_timeout(later), 1);
    h.advance(Duration::from_secs(61));
    assert_eq!(relay.stats().calls_expired, 1);
    assert_eq!(relay.stats().calls_freed, 0);
    assert_eq!(h.proxy.relay_stats().unwrap().1.tracked, 0);
}
