//! Parser/printer pairs on literal bytes (STYLE.md: every parser has its printer).

use bytes::Bytes;

use super::*;

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.com>\r\n\
From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.com>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

fn parse(b: &[u8]) -> Result<Message, ParseError> {
    Message::parse(Bytes::copy_from_slice(b))
}

#[test]
fn invite_decodes() {
    let m = parse(INVITE).unwrap();
    m.validate().unwrap();
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.request_uri(), Some(&b"sip:bob@biloxi.com"[..]));
    assert_eq!(m.call_id(), Some(&b"a84b4c76e66710@pc33.atlanta.com"[..]));
    assert_eq!(
        m.cseq().unwrap(),
        CSeq {
            seq: 314_159,
            method: Method::Invite
        }
    );
    assert_eq!(m.from_tag(), Some(&b"1928301774"[..]));
    assert_eq!(m.to_tag(), None);
    assert_eq!(m.max_forwards().unwrap(), Some(70));
    assert_eq!(
        m.top_via().unwrap().branch(),
        Some(&b"z9hG4bK776asdhds"[..])
    );
    assert_eq!(m.body(), b"v=0\n");
    assert_eq!(m.as_bytes(), INVITE);
}

#[test]
fn forward_with_no_edits_is_identity() {
    let m = parse(INVITE).unwrap();
    assert_eq!(Forward::new(&m).to_vec(), INVITE);
}

#[test]
fn forward_with_a_new_body_fixes_content_length_in_place() {
    let m = parse(INVITE).unwrap();
    let out = Forward::new(&m).body(b"v=0\r\ns=-\r\n").to_vec();
    let expected = [
        &INVITE[..INVITE.len() - 4 - "Content-Length: 4\r\n\r\n".len()],
        b"Content-Length: 10\r\n\r\nv=0\r\ns=-\r\n",
    ]
    .concat();
    assert_eq!(out, expected);
    let again = parse(&out).unwrap();
    assert_eq!(again.body(), b"v=0\r\ns=-\r\n");
    // Without a Content-Length line one is added, for the new body.
    let bare = parse(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: c\r\n\r\n").unwrap();
    let out = Forward::new(&bare).body(b"ab").to_vec();
    assert_eq!(
        out,
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: c\r\nContent-Length: 2\r\n\r\nab"
    );
}

#[test]
fn forward_edits() {
    let m = parse(INVITE).unwrap();
    let out = Forward::new(&m)
        .request_uri(b"sip:bob@192.0.2.4:5062")
        .push_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp1")
        .record_route(b"<sip:127.0.0.1:5060;lr>")
        .max_forwards(69)
        .to_vec();
    let f = Message::parse(Bytes::from(out)).unwrap();
    f.validate().unwrap();
    assert_eq!(f.request_uri(), Some(&b"sip:bob@192.0.2.4:5062"[..]));
    assert_eq!(f.top_via().unwrap().branch(), Some(&b"z9hG4bKp1"[..]));
    assert_eq!(f.vias().count(), 2);
    assert_eq!(
        f.header(HeaderName::RecordRoute),
        Some(&b"<sip:127.0.0.1:5060;lr>"[..])
    );
    assert_eq!(f.max_forwards().unwrap(), Some(69));
    assert_eq!(f.headers(HeaderName::MaxForwards).count(), 1);
    assert_eq!(f.body(), b"v=0\n");
}

#[test]
fn response_drops_top_via_from_comma_list() {
    let r =
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n\
v: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n\
Call-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
    let m = parse(r).unwrap();
    assert_eq!(m.vias().count(), 3);
    let f = Message::parse(Bytes::from(Forward::new(&m).drop_top_via().to_vec())).unwrap();
    let hosts: Vec<_> = f.vias().map(|v| v.unwrap().host.to_vec()).collect();
    assert_eq!(hosts, vec![b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(f.reason(), Some(&b"OK"[..]));
    assert_eq!(f.body(), b"");
}

#[test]
fn generated_response_copies_dialog_headers() {
    let m = parse(INVITE).unwrap();
    let out = ResponseBuilder::new(&m, 404, "Not Found")
        .to_tag(b"abc")
        .to_vec();
    let r = Message::parse(Bytes::from(out)).unwrap();
    r.validate().unwrap();
    assert_eq!(r.status(), Some(404));
    assert_eq!(r.reason(), Some(&b"Not Found"[..]));
    assert_eq!(r.to_tag(), Some(&b"abc"[..]));
    assert_eq!(r.from_tag(), Some(&b"1928301774"[..]));
    assert_eq!(r.call_id(), m.call_id());
    assert_eq!(r.header(HeaderName::ContentLength), Some(&b"0"[..]));
    assert!(r.header(HeaderName::Contact).is_none());
}

#[test]
fn folded_and_compact_headers() {
    let raw = b"OPTIONS sip:x@y SIP/2.0\r\nv: SIP/2.0/TCP h\r\n ;branch=z9hG4bKa\r\n\
f: <sip:a@b>\r\n\t;tag = t1\r\nt: sip:x@y\r\ni: cid\r\nCSeq: 8\r\n   OPTIONS\r\nl: 0\r\n\r\n";
    let m = parse(raw).unwrap();
    m.validate().unwrap();
    assert_eq!(m.top_via().unwrap().branch(), Some(&b"z9hG4bKa"[..]));
    assert_eq!(m.from_tag(), Some(&b"t1"[..]));
    assert_eq!(m.cseq().unwrap().method, Method::Options);
    assert_eq!(Forward::new(&m).to_vec(), raw);
}

#[test]
fn rejects_with_reasons() {
    let cases: &[(&[u8], ParseError)] = &[
        (b"INVITE sip:x@y SIP/7.0\r\n\r\n", ParseError::BadVersion),
        (b"INVITE  sip:x@y SIP/2.0\r\n\r\n", ParseError::BadStartLine),
        (
            b"INVITE <sip:x@y> SIP/2.0\r\n\r\n",
            ParseError::BadRequestUri,
        ),
        (b"IN VITE\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/2.0 4294967301 OK\r\n\r\n", ParseError::BadStatusCode),
        (b"SIP/2.0 099 Low\r\n\r\n", ParseError::BadStatusCode),
        (
            b"OPTIONS sip:x@y SIP/2.0\r\nno colon here\r\n\r\n",
            ParseError::BadHeaderLine,
        ),
        (
            b"OPTIONS sip:x@y SIP/2.0\r\nl: 10\r\n\r\nabc",
            ParseError::ContentLengthMismatch,
        ),
        (
            b"OPTIONS sip:x@y SIP/2.0\r\nl: -1\r\n\r\n",
            ParseError::BadHeader("Content-Length"),
        ),
        (
            b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h",
            ParseError::Incomplete,
        ),
        (b"\x00\x01\x02", ParseError::Incomplete),
    ];
    for (raw, want) in cases {
        assert_eq!(
            parse(raw).err(),
            Some(*want),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn validate_catches_semantics() {
    let base = "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:x@y>\r\nCall-ID: c\r\n";
    let with = |extra: &str| {
        parse(format!("{base}{extra}\r\n").as_bytes())
            .unwrap()
            .validate()
    };
    assert_eq!(with("CSeq: 1 OPTIONS\r\n"), Ok(()));
    assert_eq!(
        with("CSeq: 1 INVITE\r\n"),
        Err(ParseError::CSeqMethodMismatch)
    );
    assert_eq!(with(""), Err(ParseError::MissingHeader("CSeq")));
    assert_eq!(
        with("CSeq: 1 OPTIONS\r\nMax-Forwards: 300\r\n"),
        Err(ParseError::BadHeader("Max-Forwards"))
    );
}

#[test]
fn stream_framing() {
    let mut buf = INVITE.to_vec();
    buf.extend_from_slice(b"OPTIONS sip:x");
    assert_eq!(stream_frame(&buf), Ok(Some(INVITE.len())));
    assert_eq!(stream_frame(&INVITE[..INVITE.len() - 1]), Ok(None));
    assert_eq!(stream_frame(&INVITE[..40]), Ok(None));
    assert_eq!(skip_keepalives(b"\r\n\r\nOPT"), 4);
}

/// RFC 4475 `inv2543` and `dblreq` on a stream: a header section without Content-Length
/// once closed the connection; it is framed without a body, what follows is the next
/// message.
#[test]
fn stream_framing_without_content_length() {
    let head = b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: a\r\n\r\n";
    let mut buf = head.to_vec();
    buf.extend_from_slice(b"C\r\n\r\n");
    assert_eq!(stream_frame(&buf), Ok(Some(head.len())));
    assert_eq!(stream_frame(&buf[head.len()..]), Ok(Some(5)));
    assert_eq!(stream_head(&buf), Some(head.len()));
    // Another protocol on the port is not framed at all.
    assert_eq!(
        stream_frame(b"\x16\x03garbage\r\n\r\n"),
        Err(ParseError::BadStartLine)
    );
}

/// RFC 4475 `ncl`, `mcl01` on a stream: where the message ends is unknown, but its header
/// section can still be read for a 400.
#[test]
fn stream_framing_with_a_bad_content_length() {
    for bad in [
        "l: -999\r\n",
        "l: 1\r\nContent-Length: 1\r\n",
        "l: 99999999999\r\n",
    ] {
        let raw =
            format!("OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n{bad}\r\nxx");
        let buf = raw.as_bytes();
        assert_eq!(
            stream_frame(buf),
            Err(ParseError::BadHeader("Content-Length")),
            "{bad}"
        );
        let head = stream_head(buf).unwrap();
        assert_eq!(head, raw.len() - 2);
        let m = Message::parse_for_reply(Bytes::copy_from_slice(&buf[..head])).unwrap();
        assert!(m.top_via().is_ok());
    }
}

#[test]
fn truncated_datagram_can_still_be_answered() {
    let raw = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 10\r\n\r\nabc";
    assert_eq!(parse(raw).err(), Some(ParseError::ContentLengthMismatch));
    let m = Message::parse_truncated(Bytes::copy_from_slice(raw)).unwrap();
    assert_eq!(m.body(), b"abc");
    assert!(m.top_via().is_ok());
}
