//! The engine's video hooks, sans-IO: the caller's INVITE carries the video section
//! after the audio one, and the 2xx's description and permit token come back for the
//! relay latch; the callee sees the offer's video section, the proxy's
//! `a=permit-relay` and the INVITE's token before answering, and its 200 answers both
//! sections in order (RFC 3264 §6).

use std::net::SocketAddr;

use permit_ua::video::sdp::{self as vsdp, SplitMode};
use permit_ua::video::{Clip, Codec};
use permit_ua::{Event, Local, Ua, UaConfig};
use sip_core::message::{Message, ResponseBuilder};
use sip_core::transport::{Received, Transport};
use sip_testkit::{VirtualClock, seeded_rng};

const PROXY: &str = "127.0.0.1:5060";
const ME: &str = "127.0.0.1:5070";
const TOKEN: &str =
    "v1.1.1700000060.paWlpaWlpaWlpaWlpaWlpQ.6dryj8mb4TB4-11Y12JDerPnQyn3buPrnijLw5Sf_DY";
const M2V: &[u8] = include_bytes!("../../sip-profiles/core/tests/data/media/small.m2v");

fn ua(user: &str) -> (Ua, VirtualClock) {
    let local = Local {
        user: user.into(),
        domain: "localhost".into(),
        transport: Transport::Udp,
        advertised: ME.parse().unwrap(),
        listener: None,
    };
    let clock = VirtualClock::new();
    let cfg = UaConfig::new(local, ME.parse().unwrap(), PROXY.parse().unwrap());
    (Ua::new(cfg, seeded_rng(7)), clock)
}

fn sent(ua: &mut Ua) -> Vec<Message> {
    std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| Message::parse(t.data).expect("parseable"))
        .collect()
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

fn invite(call_id: &str, offer: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@{ME} SIP/2.0\r\nVia: SIP/2.0/UDP {PROXY};branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5099>\r\n\
Permit-Token: {TOKEN}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    )
    .into_bytes()
}

fn clip() -> Clip {
    Clip::from_bytes(Codec::Mpv, M2V).unwrap()
}

#[test]
fn the_callers_offer_carries_the_video_and_the_answer_brings_the_relay_and_token() {
    let (mut alice, clock) = ua("alice");
    let audio: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let section = vsdp::offer_section(&clip(), 40002, SplitMode::Srtp);
    let call = alice.call_with_video(clock.now(), "bob", audio, false, Some(section.clone()));
    let invite = sent(&mut alice).pop().unwrap();
    let body = std::str::from_utf8(invite.body()).unwrap();
    let (a, v) = (body.find("m=audio").unwrap(), body.find("m=video").unwrap());
    assert!(a < v, "audio first: {body}");
    assert!(body.ends_with(&section), "{body}");
    assert!(
        alice.remote_description(&call).is_none(),
        "nothing before the answer"
    );

    let answer = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 41000 RTP/AVP 0\r\nm=video 41002 RTP/AVP 32\r\na=rtpmap:32 MPV/90000\r\n\
a=recvonly\r\na=permit-relay:127.0.0.1 40010\r\n";
    let ok = ResponseBuilder::new(&invite, 200, "OK")
        .to_tag(b"bobtag")
        .header("Contact", b"<sip:bob@127.0.0.1:5080>")
        .header("Permit-Token", TOKEN.as_bytes())
        .body(b"application/sdp", answer.as_bytes())
        .to_vec();
    receive(&mut alice, &clock, ok);
    let events: Vec<Event> = std::iter::from_fn(|| alice.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::CallConnected { .. })),
        "{events:?}"
    );
    let (body, token) = alice.remote_description(&call).unwrap();
    assert_eq!(token.as_deref(), Some(TOKEN));
    let peer = vsdp::parse(&body).unwrap();
    assert_eq!(
        peer.addr,
        "127.0.0.1:41002".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(peer.relay, Some("127.0.0.1:40010".parse().unwrap()));
    assert_eq!(peer.codec, Codec::Mpv);
}

#[test]
fn the_callee_sees_the_video_offer_and_answers_both_sections_in_order() {
    let (mut bob, clock) = ua("bob");
    let section = vsdp::offer_section(&clip(), 40002, SplitMode::Selective);
    let offer = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\n{section}a=permit-relay:127.0.0.1 40011\r\n"
    );
    receive(&mut bob, &clock, invite("video-1", &offer));
    let events: Vec<Event> = std::iter::from_fn(|| bob.poll_event()).collect();
    let Some(Event::IncomingCall { call, .. }) = events.first() else {
        panic!("{events:?}");
    };
    let (body, token) = bob.remote_description(call).unwrap();
    assert_eq!(token.as_deref(), Some(TOKEN));
    let peer = vsdp::parse(&body).unwrap();
    assert_eq!(peer.relay, Some("127.0.0.1:40011".parse().unwrap()));
    assert_eq!(peer.mode, SplitMode::Selective);
    let answer = vsdp::answer_section(&peer, 41002);
    sent(&mut bob);
    bob.answer_with_video(
        clock.now(),
        call,
        "127.0.0.1:41000".parse().unwrap(),
        Some(answer),
    );
    let ok = sent(&mut bob)
        .into_iter()
        .find(|m| m.status() == Some(200))
        .expect("200");
    let body = std::str::from_utf8(ok.body()).unwrap();
    assert!(body.contains("m=audio 41000 RTP/AVP 0\r\n"), "{body}");
    assert!(
        body.ends_with(
            "m=video 41002 RTP/AVP 32\r\na=rtpmap:32 MPV/90000\r\na=rtcp-mux\r\na=recvonly\r\n"
        ),
        "{body}"
    );
    // Without video the answer is the audio section alone, as before.
    let (mut carol, clock) = ua("carol");
    let audio_only = offer
        .replace(&section, "")
        .replace("a=permit-relay:127.0.0.1 40011\r\n", "");
    receive(&mut carol, &clock, invite("audio-1", &audio_only));
    sent(&mut carol);
    carol.answer(clock.now(), "audio-1", "127.0.0.1:42000".parse().unwrap());
    let ok = sent(&mut carol)
        .into_iter()
        .find(|m| m.status() == Some(200));
    let body = ok
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .unwrap_or_default();
    assert!(
        !body.contains("m=video") && body.contains("m=audio 42000"),
        "{body}"
    );
}
