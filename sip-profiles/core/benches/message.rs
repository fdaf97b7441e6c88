//! The raw-first message layer against `rsip` 0.4, on the same bytes.
//!
//! Three operations, each a criterion group with one bench per (parser, message):
//! - `parse`: bytes to a message value (`Message::parse` / `SipMessage::try_from`).
//! - `typed`: parse, then the values a transaction layer and a proxy read first: top Via
//!   branch, Call-ID, CSeq, From tag, To tag (RFC 3261 §17.2.3, §16.3).
//! - `forward`: parse, then what a stateful proxy writes (RFC 3261 §16.6 steps 3, 4, 8
//!   for a request; §16.7 step 3 for a response), ending with the bytes to send.
//!
//! Before measuring, every forwarded output of both parsers is parsed back and checked,
//! so the two sides are known to do the same work. Results and commands:
//! docs/parser-measurements.md.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rsip::headers::UntypedHeader;
use rsip::headers::untyped::ToTypedHeader;
use rsip::message::HeadersExt;
use rsip::{Header, SipMessage};
use sip_core::message::{Forward, HeaderName, Message};

/// The Via value and Record-Route value this proxy adds.
const OUR_VIA: &str = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pm1";
const OUR_RR: &str = "<sip:127.0.0.1:5060;lr>";

/// A message with its body and a Content-Length that counts it.
fn with_body(head: &str, body: &str) -> Bytes {
    let s = head.replace('\n', "\r\n");
    let body = body.replace('\n', "\r\n");
    let len = body.len();
    Bytes::from(format!("{s}Content-Length: {len}\r\n\r\n{body}"))
}

const SDP_OFFER: &str = "v=0
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com
s=-
c=IN IP4 192.0.2.101
t=0 0
m=audio 49172 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
";

/// An INVITE from a UA with an SDP offer, about 1 KB.
fn invite() -> Bytes {
    with_body(
        "INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com:5060;transport=udp>
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, UPDATE
Supported: replaces, timer, 100rel
Accept: application/sdp
Allow-Events: talk, hold, conference, refer
Session-Expires: 1800
Min-SE: 90
User-Agent: Permit-Bench-UA/1.0
Subject: parser measurement
Content-Type: application/sdp
",
        SDP_OFFER,
    )
}

/// A REGISTER with one Contact, about 400 B.
fn register() -> Bytes {
    with_body(
        "REGISTER sip:registrar.biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;rport
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: Bob <sip:bob@biloxi.example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
Contact: <sip:bob@192.0.2.4:5060;transport=udp>;expires=3600
Expires: 7200
User-Agent: Permit-Bench-UA/1.0
",
        "",
    )
}

/// The 200 OK answering the INVITE as it reaches the proxy: two Vias (ours on top),
/// Record-Route, a To tag and an SDP answer.
fn ok_response() -> Bytes {
    with_body(
        "SIP/2.0 200 OK
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-pm1
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.101
Record-Route: <sip:127.0.0.1:5060;lr>
To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:bob@192.0.2.4:5060;transport=udp>
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, UPDATE
Supported: replaces, timer
Content-Type: application/sdp
",
        "v=0
o=bob 2808844564 2808844564 IN IP4 biloxi.example.com
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 3456 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=sendrecv
",
    )
}

/// What the typed bench reads: top Via branch, Call-ID, CSeq number, From tag, To tag.
type Values<'a> = (&'a [u8], &'a [u8], u32, &'a [u8], Option<&'a [u8]>);
type Owned = (Vec<u8>, Vec<u8>, u32, Vec<u8>, Option<Vec<u8>>);

fn owned(v: Values<'_>) -> Owned {
    (
        v.0.to_vec(),
        v.1.to_vec(),
        v.2,
        v.3.to_vec(),
        v.4.map(<[u8]>::to_vec),
    )
}

/// Parses with our layer and hands the values to `f` (borrowed: nothing is copied).
fn ours_typed<R>(data: &Bytes, f: impl FnOnce(Values<'_>) -> R) -> R {
    let m = Message::parse(data.clone()).expect("ours parses");
    let via = m.top_via().expect("Via");
    let cseq = m.cseq().expect("CSeq");
    f((
        via.branch().expect("branch"),
        m.call_id().expect("Call-ID"),
        cseq.seq,
        m.from_tag().expect("From tag"),
        m.to_tag(),
    ))
}

/// Parses with rsip and hands the values, borrowed from its typed headers, to `f`.
fn rsip_typed<R>(data: &[u8], f: impl FnOnce(Values<'_>) -> R) -> R {
    let m = SipMessage::try_from(data).expect("rsip parses");
    let via = m.via_header().expect("Via").typed().expect("typed Via");
    let cseq = m.cseq_header().expect("CSeq").typed().expect("typed CSeq");
    let from = m.from_header().expect("From").typed().expect("typed From");
    let to = m.to_header().expect("To").typed().expect("typed To");
    f((
        via.branch().expect("branch").value().as_bytes(),
        m.call_id_header().expect("Call-ID").value().as_bytes(),
        cseq.seq,
        from.tag().expect("From tag").value().as_bytes(),
        to.tag().map(|t| t.value().as_bytes()),
    ))
}

/// Forwarding with our layer: the received bytes plus edits.
fn ours_forward(data: &Bytes) -> Vec<u8> {
    let m = Message::parse(data.clone()).expect("ours parses");
    if m.is_request() {
        let mf = m.max_forwards().expect("Max-Forwards").unwrap_or(70);
        Forward::new(&m)
            .push_via(OUR_VIA.as_bytes())
            .record_route(OUR_RR.as_bytes())
            .max_forwards(mf - 1)
            .to_vec()
    } else {
        Forward::new(&m).drop_top_via().to_vec()
    }
}

/// Forwarding with rsip: edit the header list, then print the message.
fn rsip_forward(data: &[u8]) -> Vec<u8> {
    let mut m = SipMessage::try_from(data).expect("rsip parses");
    let mut list: Vec<Header> = std::mem::take(headers_of(&mut m)).into();
    if m.is_request() {
        list.insert(0, Header::Via(rsip::headers::Via::new(OUR_VIA)));
        list.insert(
            1,
            Header::RecordRoute(rsip::headers::RecordRoute::new(OUR_RR)),
        );
        *headers_of(&mut m) = list.into();
        let mf = m.max_forwards_header_mut().expect("Max-Forwards");
        let n = mf.num().expect("Max-Forwards number");
        *mf = rsip::headers::MaxForwards::from(n - 1);
    } else {
        // The top Via is the first Via line: each Via line of these messages holds one value.
        let top = list
            .iter()
            .position(|h| matches!(h, Header::Via(_)))
            .expect("Via");
        list.remove(top);
        *headers_of(&mut m) = list.into();
    }
    Vec::from(m)
}

fn headers_of(m: &mut SipMessage) -> &mut rsip::Headers {
    match m {
        SipMessage::Request(r) => &mut r.headers,
        SipMessage::Response(r) => &mut r.headers,
    }
}

/// Both parsers read the same values, and both forwarders write messages that read back
/// with the edits made (checked with our parser, which both outputs must satisfy).
fn check_equivalence(name: &str, data: &Bytes) {
    assert_eq!(
        ours_typed(data, owned),
        rsip_typed(data, owned),
        "{name}: typed values differ"
    );
    let before = Message::parse(data.clone()).expect("parses");
    for (who, out) in [("ours", ours_forward(data)), ("rsip", rsip_forward(data))] {
        let m = Message::parse(Bytes::from(out))
            .unwrap_or_else(|e| panic!("{name}: {who} output does not parse: {e}"));
        m.validate()
            .unwrap_or_else(|e| panic!("{name}: {who} output invalid: {e}"));
        assert_eq!(m.body(), before.body(), "{name}: {who} body changed");
        let vias_before = before.list(HeaderName::Via).count();
        let vias_after = m.list(HeaderName::Via).count();
        if before.is_request() {
            assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bK-pm1"[..]));
            assert_eq!(vias_after, vias_before + 1, "{name}: {who} Via count");
            assert_eq!(m.header(HeaderName::RecordRoute), Some(OUR_RR.as_bytes()));
            let mf = before.max_forwards().unwrap().unwrap();
            assert_eq!(m.max_forwards().unwrap(), Some(mf - 1), "{name}: {who} MF");
        } else {
            assert_eq!(vias_after, vias_before - 1, "{name}: {who} Via count");
            assert_eq!(m.top_via().unwrap(), before.vias().nth(1).unwrap().unwrap());
        }
    }
}

fn messages() -> [(&'static str, Bytes); 3] {
    [
        ("invite", invite()),
        ("register", register()),
        ("200ok", ok_response()),
    ]
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, data) in messages() {
        eprintln!("{name}: {} bytes", data.len());
        check_equivalence(name, &data);
        g.bench_function(format!("ours/{name}"), |b| {
            b.iter(|| Message::parse(black_box(&data).clone()).expect("parses"));
        });
        g.bench_function(format!("rsip/{name}"), |b| {
            b.iter(|| SipMessage::try_from(black_box(&data[..])).expect("parses"));
        });
    }
    g.finish();
}

fn bench_typed(c: &mut Criterion) {
    let mut g = c.benchmark_group("typed");
    g.throughput(Throughput::Elements(1));
    for (name, data) in messages() {
        g.bench_function(format!("ours/{name}"), |b| {
            b.iter(|| ours_typed(black_box(&data), |v| black_box(v).2));
        });
        g.bench_function(format!("rsip/{name}"), |b| {
            b.iter(|| rsip_typed(black_box(&data[..]), |v| black_box(v).2));
        });
    }
    g.finish();
}

fn bench_forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Elements(1));
    for (name, data) in messages() {
        g.bench_function(format!("ours/{name}"), |b| {
            b.iter(|| ours_forward(black_box(&data)));
        });
        g.bench_function(format!("rsip/{name}"), |b| {
            b.iter(|| rsip_forward(black_box(&data[..])));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse, bench_typed, bench_forward);
criterion_main!(benches);
