//! DTLS-SRTP in the sans-IO user agent (RFC 5763 §5): a stock phone's DTLS offer is
//! answered with `a=setup:active` and our fingerprint, without a certificate it is
//! refused with 488; `call --dtls` offers `actpass`, takes an `active` answer as the
//! DTLS server, and hangs up on an answer that does not take DTLS.

use std::net::SocketAddr;

use permit_ua::media::dtls::{Fingerprint, Role};
use permit_ua::{CallOutcome, Event, Local, Ua, UaConfig};
use sip_core::message::{Message, Method, ResponseBuilder};
use sip_core::transport::{Received, Transport};
use sip_testkit::{VirtualClock, seeded_rng};

const PROXY: &str = "127.0.0.1:5060";
const ME: &str = "127.0.0.1:5070";
const PEER_FP: &str = "sha-256 C5:34:9E:FC:1E:C6:72:42:76:08:6C:ED:A9:2F:EB:4A:\
4E:5B:76:A1:5C:95:38:36:FF:01:FB:8C:E7:FB:A5:55";

fn ua(dtls: Option<Fingerprint>) -> Ua {
    let local = Local {
        user: "alice".into(),
        domain: "localhost".into(),
        transport: Transport::Udp,
        advertised: ME.parse().unwrap(),
        listener: None,
    };
    let mut cfg = UaConfig::new(local, ME.parse().unwrap(), PROXY.parse().unwrap());
    cfg.dtls = dtls;
    Ua::new(cfg, seeded_rng(7))
}

fn receive(ua: &mut Ua, clock: &VirtualClock, data: Vec<u8>) {
    ua.handle_received(
        clock.now(),
        Received {
            transport: Transport::Udp,
            local: ME.parse().unwrap(),
            peer: PROXY.parse().unwrap(),
            data: data.into(),
        },
    );
}

fn sent(ua: &mut Ua) -> Vec<Message> {
    std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| Message::parse(t.data).expect("we send parseable messages"))
        .collect()
}

fn events(ua: &mut Ua) -> Vec<Event> {
    std::iter::from_fn(|| ua.poll_event()).collect()
}

/// linphone's offer with `media_encryption=dtls`: no `a=crypto`.
fn linphone_sdp(setup: &str) -> String {
    format!(
        "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=Talk\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 7078 UDP/TLS/RTP/SAVP 0 8\r\na=setup:{setup}\r\na=fingerprint:{PEER_FP}\r\n"
    )
}

fn invite(call_id: &str, sdp: &str) -> Vec<u8> {
    format!(
        "INVITE sip:alice@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{call_id}\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:bob@localhost>;tag=bobtag\r\n\
To: <sip:alice@localhost>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5080>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

fn ok(req: &Message, sdp: &str) -> Vec<u8> {
    ResponseBuilder::new(req, 200, "OK")
        .to_tag(b"srvtag")
        .header("Contact", b"<sip:bob@127.0.0.1:5080>")
        .body(b"application/sdp", sdp.as_bytes())
        .to_vec()
}

#[test]
fn a_dtls_offer_is_answered_active_with_our_fingerprint_or_488_without_a_certificate() {
    let clock = VirtualClock::new();
    let local = Fingerprint([0xAB; 32]);
    let mut with = ua(Some(local));
    receive(&mut with, &clock, invite("d1", &linphone_sdp("actpass")));
    assert!(matches!(
        events(&mut with).as_slice(),
        [Event::IncomingCall { .. }]
    ));
    let media: SocketAddr = "127.0.0.1:30000".parse().unwrap();
    with.answer(clock.now(), "d1", media);
    let answer = sent(&mut with).pop().expect("the 200");
    assert_eq!(answer.status(), Some(200));
    let body = std::str::from_utf8(answer.body()).unwrap();
    assert!(
        body.contains("m=audio 30000 UDP/TLS/RTP/SAVP 0\r\n"),
        "{body}"
    );
    assert!(body.contains("a=setup:active\r\n"), "{body}");
    assert!(
        body.contains(&format!("a=fingerprint:{}\r\n", local.to_attr())),
        "{body}"
    );
    assert!(!body.contains("a=crypto"), "{body}");
    let d = with.media_dtls("d1").expect("a DTLS call");
    assert_eq!(d.role, Role::Client);
    assert_eq!(d.peer[0].to_attr(), PEER_FP.replace("SHA-256", "sha-256"));
    assert!(
        with.media_keys("d1").is_none(),
        "keys come from the handshake"
    );

    let mut without = ua(None);
    receive(&mut without, &clock, invite("d2", &linphone_sdp("actpass")));
    let statuses: Vec<_> = sent(&mut without).iter().map(Message::status).collect();
    assert_eq!(statuses.last(), Some(&Some(488)), "{statuses:?}");
}

#[test]
fn our_dtls_offer_takes_an_active_answer_and_refuses_one_without_dtls() {
    let clock = VirtualClock::new();
    let local = Fingerprint([0x11; 32]);
    for (answer, connects) in [
        (linphone_sdp("active"), true),
        (
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 7078 RTP/AVP 0\r\n".to_string(),
            false,
        ),
    ] {
        let mut alice = ua(Some(local));
        alice.set_offer_dtls(true);
        let call = alice.call(clock.now(), "bob", "127.0.0.1:30000".parse().unwrap());
        let invite = sent(&mut alice).pop().expect("the INVITE");
        let body = std::str::from_utf8(invite.body()).unwrap().to_string();
        assert!(body.contains(" UDP/TLS/RTP/SAVP "), "{body}");
        assert!(body.contains("a=setup:actpass\r\n"), "{body}");
        assert!(!body.contains("a=crypto"), "{body}");
        receive(&mut alice, &clock, ok(&invite, &answer));
        let methods: Vec<_> = sent(&mut alice)
            .iter()
            .filter_map(|m| m.method().cloned())
            .collect();
        let ev = events(&mut alice);
        if connects {
            assert_eq!(methods, [Method::Ack]);
            assert!(
                matches!(ev.as_slice(), [Event::CallConnected { .. }]),
                "{ev:?}"
            );
            assert_eq!(alice.media_dtls(&call).map(|d| d.role), Some(Role::Server));
        } else {
            assert_eq!(methods, [Method::Ack, Method::Bye]);
            assert!(
                matches!(
                    ev.as_slice(),
                    [Event::CallFailed {
                        outcome: CallOutcome::Failed(488),
                        ..
                    }]
                ),
                "{ev:?}"
            );
        }
    }
}
