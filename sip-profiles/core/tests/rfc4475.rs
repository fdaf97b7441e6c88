//! RFC 4475 torture messages against the raw-first parser, as a proxy meets them.
//!
//! One test per message of RFC 4475 §3 (corpus and provenance: `tests/data/rfc4475/`).
//! Each test opens with the RFC's words on how an element treats the message and asserts
//! the proxy's reading: [`Message::parse`] and [`Message::validate`] accept it and decode
//! the values that matter, or one of them rejects it with the stated [`ParseError`].
//! Corpus-wide properties follow the per-message tests: an accepted message's bytes are
//! the received bytes (raw-first: nothing is re-serialised), and no prefix or seeded
//! mutation of any message makes the parser or a typed view panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use bytes::Bytes;
use sip_core::message::{CSeq, HeaderName, Message, Method, NameAddr, ParseError, SipUri};

/// Every "Message Details" tag of RFC 4475 §3, in the RFC's order.
#[rustfmt::skip]
const TAGS: [&str; 49] = [
    "wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq", "dblreq", "semiuri",
    "transports", "mpart01", "unreason", "noreason", "badinv01", "clerr", "ncl", "scalar02",
    "scalarlg", "quotbal", "ltgtruri", "lwsruri", "lwsstart", "trws", "escruri", "baddate",
    "regbadct", "badaspec", "baddn", "badvers", "mismatch01", "mismatch02", "bigcode",
    "badbranch", "insuf", "unkscm", "novelsc", "unksm2", "bext01", "invut", "regaut01",
    "multi01", "mcl01", "bcast", "zeromf", "cparam01", "cparam02", "regescrt", "sdp01",
    "inv2543",
];

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475")
}

fn corpus(tag: &str) -> Bytes {
    let path = data_dir().join(format!("{tag}.sip"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn b(s: &str) -> &[u8] {
    s.as_bytes()
}

/// `Some(bytes)`, shaped like the accessors it is compared with.
#[allow(clippy::unnecessary_wraps)] // the wrapper is the point: it reads as the expected value
fn some(s: &str) -> Option<&[u8]> {
    Some(s.as_bytes())
}

/// `Ok(CSeq)`, shaped like [`Message::cseq`].
#[allow(clippy::unnecessary_wraps)] // the wrapper is the point: it reads as the expected value
fn cseq(seq: u32, method: Method) -> Result<CSeq, ParseError> {
    Ok(CSeq { seq, method })
}

/// Parses a message whatever `validate()` will say; the bytes must be kept exactly.
fn parsed(tag: &str) -> Message {
    let data = corpus(tag);
    let m = Message::parse(data.clone())
        .unwrap_or_else(|e| panic!("{tag}: parse() rejected it: {e:?}"));
    assert!(
        m.as_bytes() == &data[..],
        "{tag}: as_bytes() is not the received bytes"
    );
    m
}

/// A message a proxy must accept: parse() and validate() succeed, bytes kept exactly.
fn accepted(tag: &str) -> Message {
    let m = parsed(tag);
    if let Err(e) = m.validate() {
        panic!("{tag}: validate() rejected it: {e:?}");
    }
    m
}

/// parse(), or else validate(), rejects the message with an error `expected` allows.
fn rejected(tag: &str, expected: impl Fn(&ParseError) -> bool, want: &str) {
    let err = match Message::parse(corpus(tag)) {
        Err(e) => e,
        Ok(m) => match m.validate() {
            Err(e) => e,
            Ok(()) => panic!("{tag}: accepted; RFC 4475 expects a rejection with {want}"),
        },
    };
    assert!(
        expected(&err),
        "{tag}: rejected with {err:?}; RFC 4475 expects {want}"
    );
}

macro_rules! assert_rejected {
    ($tag:literal, $pat:pat) => {
        rejected($tag, |e| matches!(e, $pat), stringify!($pat))
    };
}

/// (transport, host, branch) of one Via value.
type ViaSummary<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);

/// Every Via value, comma lists split, as (transport, host, branch).
fn vias(m: &Message) -> Vec<ViaSummary<'_>> {
    m.vias()
        .map(|v| {
            let v = v.expect("every Via value decodes");
            (v.transport, v.host, v.branch())
        })
        .collect()
}

fn contact(m: &Message) -> NameAddr<'_> {
    NameAddr::parse(m.header(HeaderName::Contact).expect("Contact present"))
        .expect("Contact decodes")
}

// ---------------------------------------------------------------------------------------
// §3.1.1 Valid messages

/// §3.1.1.1 wsinv: "All elements should treat this as a well-formed request." Folding,
/// LWS around `:` `;` `=` and `/`, compact names, an empty Subject, leading zeros.
#[test]
fn wsinv() {
    let m = accepted("wsinv");
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(
        m.request_uri(),
        some("sip:vivekg@chair-dnrc.example.com;unknownparam")
    );
    assert_eq!(m.to().unwrap().uri, b("sip:vivekg@chair-dnrc.example.com"));
    assert_eq!(m.to_tag(), some("1918181833n"));
    assert_eq!(m.from().unwrap().display, br#""J Rosenberg \\\"""#);
    assert_eq!(m.from_tag(), some("98asjd8"));
    assert_eq!(m.max_forwards(), Ok(Some(68)));
    assert_eq!(m.call_id(), some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(m.cseq(), cseq(9, Method::Invite));
    assert_eq!(
        vias(&m),
        [
            (b("UDP"), b("192.0.2.2"), some("390skdjuw")),
            (b("TCP"), b("spindle.example.com"), some("z9hG4bK9ikj8")),
            (b("UDP"), b("192.168.255.111"), some("z9hG4bK30239")),
        ]
    );
    assert_eq!(m.header(HeaderName::Subject), some(""));
    let fangled: Vec<_> = m.other_headers(b"NewFangledHeader").collect();
    assert_eq!(
        fangled,
        [b("newfangled value\r\n continued newfangled value")]
    );
    let unusual: Vec<_> = m.other_headers(b"UnknownHeaderWithUnusualValue").collect();
    assert_eq!(unusual, [b(";;,,;;,;")]);
    assert_eq!(
        m.header(HeaderName::Route),
        some("<sip:services.example.com;lr;unknownwith=value;unknown-no-value>")
    );
    let c = contact(&m);
    assert_eq!(c.display, br#""Quoted string \"\"""#);
    assert_eq!(c.uri, b("sip:jdrosen@example.com"));
    assert_eq!(c.param(b"newparam"), some("newvalue"));
    assert_eq!(c.param(b"secondparam"), some(""));
    assert_eq!(c.param(b"q"), some("0.33"));
    assert_eq!(m.header(HeaderName::ContentType), some("application/sdp"));
    assert_eq!(m.body().len(), 150);
    assert!(m.body().starts_with(b"v=0\r\n") && m.body().ends_with(b"a=rtpmap:31 LPC\r\n"));
}

const INTMETH_METHOD: &[u8] = b"!interesting-Method0123456789_*+`.%indeed'~";

/// §3.1.1.2 intmeth: "If this unusual URI has been defined at a proxy, the proxy will
/// forward this request normally. Otherwise, a proxy will generate a 404." The method is
/// an extension token ("A method of IN%56ITE is an unknown method"); `?` and `/` are legal
/// in the user part; the Call-ID is a `word`, where % and `"` are ordinary characters.
#[test]
fn intmeth() {
    let m = accepted("intmeth");
    assert!(matches!(m.method(), Some(Method::Other(_))));
    assert_eq!(m.method().map(Method::as_bytes), Some(INTMETH_METHOD));
    assert_eq!(
        m.request_uri(),
        Some(b(concat!(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
            ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
        )))
    );
    assert_eq!(m.top_via().unwrap().branch(), some("z9hG4bK-.!%66*_+`'~"));
    let cseq = m.cseq().unwrap();
    assert_eq!(
        (cseq.seq, cseq.method.as_bytes()),
        (139_122_385, INTMETH_METHOD)
    );
    assert_eq!(m.max_forwards(), Ok(Some(255)));
    assert_eq!(
        m.call_id(),
        Some(&b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"[..])
    );
    let to = m.to().unwrap();
    assert_eq!(to.display, b"\"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\"");
    assert_eq!(
        to.uri,
        b("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com")
    );
    let from = m.from().unwrap();
    assert_eq!(from.display, b("token1~` token2'+_ token3*%!.-"));
    assert_eq!(from.param(b"fromParam''~+*_!.-%"), some("\"работающий\""));
    assert_eq!(m.from_tag(), some("_token~1'+`*%!-."));
    let ext: Vec<_> = m.other_headers(b"extensionHeader-!.%*+_`'~").collect();
    assert_eq!(ext, [b("\u{feff}大停電")]);
}

/// §3.1.1.3 esc01: "A parser must accept this as a well-formed message." Escapes stay
/// escaped in the raw view (the Request-URI is forwarded byte-exact); compact `i:` `C:`.
#[test]
fn esc01() {
    let m = accepted("esc01");
    assert_eq!(
        m.request_uri(),
        some("sip:sips%3Auser%40example.com@example.net")
    );
    let ruri = SipUri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        (ruri.user, ruri.host),
        (some("sips%3Auser%40example.com"), b("example.net"))
    );
    assert_eq!(m.to().unwrap().uri, b("sip:%75se%72@example.com"));
    assert_eq!(
        m.from().unwrap().uri,
        b("sip:I%20have%20spaces@example.net")
    );
    assert_eq!(m.from_tag(), some("938"));
    assert_eq!(m.call_id(), some("esc01.239409asdfakjkn23onasd0-3234"));
    assert_eq!(m.header(HeaderName::ContentType), some("application/sdp"));
    let c = contact(&m);
    assert_eq!(
        c.uri,
        b("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    );
    // "the "name" uri-parameter has a value of "value%41", which is NOT equivalent to "valueA""
    assert_eq!(
        SipUri::parse(c.uri).unwrap().param(b"n%61me"),
        some("v%61lue%25%34%31")
    );
    assert_eq!(m.body().len(), 150);
}

/// §3.1.1.4 escnull: "The message is well formed - parsers must accept this message. ...
/// This request registers two distinct contact URIs."
#[test]
fn escnull() {
    let m = accepted("escnull");
    assert_eq!(m.method(), Some(&Method::Register));
    assert_eq!(m.to().unwrap().uri, b("sip:null-%00-null@example.com"));
    assert_eq!(m.from_tag(), some("839923423"));
    let contacts: Vec<_> = m.headers(HeaderName::Contact).collect();
    assert_eq!(
        contacts,
        [
            b("<sip:%00@host5.example.com>"),
            b("<sip:%00%00@host5.example.com>")
        ]
    );
    assert_eq!(m.header(HeaderName::ContentLength), some("0"));
    assert!(m.body().is_empty());
}

/// §3.1.1.5 esc02: "A parser should accept this message as well formed." The method is
/// "NOT equivalent to REGISTER"; "This message has two Contact header field values, not
/// three. <sip:alias2@host2.example.com> is a C%6Fntact header field value."
#[test]
fn esc02() {
    let m = accepted("esc02");
    assert_eq!(m.method().map(Method::as_bytes), some("RE%47IST%45R"));
    assert_ne!(m.method(), Some(&Method::Register));
    assert_eq!(m.cseq().unwrap().method.as_bytes(), b("RE%47IST%45R"));
    assert_eq!(m.to().unwrap().display, b("\"%Z%45\""));
    assert_eq!(m.top_via().unwrap().branch(), some("z9hG4bK209%fzsnel234"));
    let contacts: Vec<_> = m.headers(HeaderName::Contact).collect();
    assert_eq!(
        contacts,
        [
            b("<sip:alias1@host1.example.com>"),
            b("<sip:alias3@host3.example.com>")
        ]
    );
    let other: Vec<_> = m.other_headers(b"C%6Fntact").collect();
    assert_eq!(other, [b("<sip:alias2@host2.example.com>")]);
}

/// §3.1.1.6 lwsdisp: no LWS between display name and `<`; "Elements should accept this
/// request as well formed."
#[test]
fn lwsdisp() {
    let m = accepted("lwsdisp");
    let from = m.from().unwrap();
    assert_eq!(
        (from.display, from.uri),
        (b("caller"), b("sip:caller@example.com"))
    );
    assert_eq!(m.from_tag(), some("323"));
}

/// §3.1.1.7 longreq: "This well-formed request contains header fields with many values
/// and values that are very long." 34 Via values over 33 lines in every case and form.
#[test]
fn longreq() {
    let m = accepted("longreq");
    let to = m.to().unwrap();
    let display = format!(
        "\"I have a user name of {} proportion\"",
        "extreme".repeat(10)
    );
    assert_eq!(to.display, b(&display));
    let to_uri = format!(
        "sip:user@example.com:6000;unknownparam1=very{}value;longparam{}=shortvalue;very{}ParameterNameWithNoValue",
        "long".repeat(20),
        "name".repeat(25),
        "long".repeat(25)
    );
    assert_eq!(to.uri, b(&to_uri));
    let caller = "amazinglylongcallername".repeat(5);
    assert_eq!(
        m.from().unwrap().uri,
        b(&format!("sip:{caller}@example.net"))
    );
    assert_eq!(m.from_tag(), Some(b(&format!("12{}424", "982".repeat(50)))));
    assert_eq!(
        m.call_id(),
        Some(b(&format!("longreq.one{}longcallid", "really".repeat(20))))
    );
    let unknown_name = format!("Unknown-{}-Name", "Long".repeat(20));
    let unknown: Vec<_> = m.other_headers(b(&unknown_name)).collect();
    assert_eq!(unknown.len(), 1);
    assert!(unknown[0].starts_with(b(&format!("unknown-{}-value;", "long".repeat(20)))));
    let v = vias(&m);
    assert_eq!(v.len(), 34);
    let hosts: Vec<String> = (1..=33)
        .rev()
        .map(|i| format!("sip{i}.example.com"))
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(v[i], (b("TCP"), b(host), None), "Via value {i}");
    }
    let last = m.vias().last().unwrap().unwrap();
    assert_eq!(last.host, b("host.example.com"));
    assert_eq!(last.received(), some("192.0.2.5"));
    assert_eq!(
        last.branch(),
        Some(b(&format!("very{}branchvalue", "long".repeat(50))))
    );
    assert_eq!(
        contact(&m).uri,
        b(&format!("sip:{caller}@host5.example.net"))
    );
    assert_eq!(m.max_forwards(), Ok(Some(70)));
    assert_eq!(m.body().len(), 150);
}

/// §3.1.1.8 dblreq: "A SIP element receiving this datagram would handle the REGISTER
/// request normally and ignore the extra bits that look like an INVITE request. If the
/// element is a proxy choosing to forward the REGISTER, the INVITE octets would not appear
/// in the forwarded request."
#[test]
fn dblreq() {
    let data = corpus("dblreq");
    let m = Message::parse(data.clone()).unwrap();
    m.validate().unwrap();
    let register = memchr_crlf2(&data) + 4;
    assert_eq!(
        m.as_bytes(),
        &data[..register],
        "the INVITE octets are not part of the message"
    );
    assert_eq!(m.method(), Some(&Method::Register));
    assert_eq!(m.call_id(), some("dblreq.0ha0isndaksdj99sdfafnl3lk233412"));
    assert_eq!(m.cseq(), cseq(8, Method::Register));
    assert!(m.body().is_empty());
}

fn memchr_crlf2(data: &[u8]) -> usize {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers")
}

/// §3.1.1.9 semiuri: "The Request-URI will parse so that the user part is
/// "user;par=u@example.net"" (escaped `@` kept raw here).
#[test]
fn semiuri() {
    let m = accepted("semiuri");
    assert_eq!(
        m.request_uri(),
        some("sip:user;par=u%40example.net@example.com")
    );
    let ruri = SipUri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        (ruri.user, ruri.host),
        (some("user;par=u%40example.net"), b("example.com"))
    );
    let accept: Vec<_> = m.list(HeaderName::Accept).collect();
    assert_eq!(accept.len(), 6);
    assert_eq!(accept[5], b("message/sipfrag"));
}

/// §3.1.1.10 transports: "Parsers must accept this message as well formed."
#[test]
fn transports() {
    let m = accepted("transports");
    let t: Vec<_> = vias(&m).into_iter().map(|(t, h, _)| (t, h)).collect();
    assert_eq!(
        t,
        [
            (b("UDP"), b("t1.example.com")),
            (b("SCTP"), b("t2.example.com")),
            (b("TLS"), b("t3.example.com")),
            (b("UNKNOWN"), b("t4.example.com")),
            (b("TCP"), b("t5.example.com")),
        ]
    );
    assert_eq!(m.call_id(), some("transports.kijh4akdnaqjkwendsasfdj"));
}

/// §3.1.1.11 mpart01: "Parsers must accept this message as well formed" — a binary body
/// part with NUL octets, framed by Content-Length.
#[test]
fn mpart01() {
    let m = accepted("mpart01");
    assert_eq!(m.method(), Some(&Method::Message));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.host, via.port, via.rport()),
        (b("127.0.0.1"), Some(5070), Some(None))
    );
    assert_eq!(
        via.branch(),
        some("z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-")
    );
    assert_eq!(
        m.call_id(),
        some("3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..")
    );
    assert_eq!(
        m.header(HeaderName::ContentType),
        some("multipart/mixed;boundary=7a9cbec02ceef655")
    );
    assert_eq!(m.body().len(), 553);
    assert!(m.body().contains(&0));
    assert!(m.body().starts_with(b"--7a9cbec02ceef655\r\n"));
    assert!(m.body().ends_with(b"\r\n--7a9cbec02ceef655--\r\n"));
}

/// §3.1.1.12 unreason: "This response is well formed. A parser must accept this message."
/// The reason phrase holds UTF-8 and is kept byte-exact.
#[test]
fn unreason() {
    let m = accepted("unreason");
    assert_eq!(m.status(), Some(200));
    assert_eq!(
        m.reason(),
        some("= 2**3 * 5**2 но сто девяносто девять - простое")
    );
    assert_eq!(m.cseq(), cseq(35, Method::Invite));
    assert_eq!(m.to_tag(), some("2229"));
    assert_eq!(m.body().len(), 154);
}

/// §3.1.1.13 noreason: "This well-formed response contains no reason phrase. A parser
/// must accept this message."
#[test]
fn noreason() {
    let m = accepted("noreason");
    assert_eq!((m.status(), m.reason()), (Some(100), some("")));
    assert_eq!(m.to_tag(), some("902jndnke3"));
}

// ---------------------------------------------------------------------------------------
// §3.1.2 Invalid messages

/// §3.1.2.1 badinv01: "This message is syntactically invalid. An element receiving this
/// request should respond with a 400 Bad Request error." (empty Via values after `,`)
#[test]
fn badinv01() {
    assert_rejected!("badinv01", ParseError::BadHeader("Via"));
}

/// §3.1.2.2 clerr: "When sent over UDP (as this message ostensibly was), the receiving
/// element should respond with a 400 Bad Request error."
#[test]
fn clerr() {
    assert_rejected!("clerr", ParseError::ContentLengthMismatch);
}

/// §3.1.2.3 ncl: "An element receiving this message should respond with an error."
#[test]
fn ncl() {
    assert_rejected!("ncl", ParseError::BadHeader("Content-Length"));
}

/// §3.1.2.4 scalar02: "An element receiving this request should respond with a 400 Bad
/// Request due to the CSeq error." Max-Forwards 300 is out of range too.
#[test]
fn scalar02() {
    assert_rejected!("scalar02", ParseError::BadHeader("CSeq"));
    assert_eq!(
        parsed("scalar02").max_forwards(),
        Err(ParseError::BadHeader("Max-Forwards"))
    );
}

/// §3.1.2.5 scalarlg: "An element receiving this response will simply discard it."
#[test]
fn scalarlg() {
    assert_rejected!("scalarlg", ParseError::BadHeader("CSeq"));
}

/// §3.1.2.6 quotbal: "An element receiving this request should return a 400 Bad Request
/// error." (unterminated quoted string in the To display name)
#[test]
fn quotbal() {
    assert_rejected!("quotbal", ParseError::BadHeader("To"));
}

/// §3.1.2.7 ltgtruri: "It is reasonable always to reject a request with this error with a
/// 400 Bad Request." A raw-first proxy forwards the Request-URI it received, so it rejects.
#[test]
fn ltgtruri() {
    assert_rejected!("ltgtruri", ParseError::BadRequestUri);
}

/// §3.1.2.8 lwsruri: "This INVITE has illegal LWS within the Request-URI. An element
/// receiving this request should respond with a 400 Bad Request."
#[test]
fn lwsruri() {
    assert_rejected!("lwsruri", ParseError::BadRequestUri);
}

/// §3.1.2.9 lwsstart: "This INVITE has illegal multiple SP characters between elements of
/// the start line. It is acceptable to reject this request as malformed."
#[test]
fn lwsstart() {
    assert_rejected!("lwsstart", ParseError::BadStartLine);
}

/// §3.1.2.10 trws: "SP characters between the SIP-Version field and the CRLF terminating
/// the Request-Line. It is acceptable to reject this request as malformed."
#[test]
fn trws() {
    assert_rejected!("trws", ParseError::BadStartLine);
}

/// §3.1.2.11 escruri: "It is acceptable for an element to reject this request with a 400
/// Bad Request. ... If the element is a proxy, the escaped headers must not appear in the
/// Request-URI of the forwarded request." A proxy forwarding the received bytes rejects.
#[test]
fn escruri() {
    assert_rejected!("escruri", ParseError::BadRequestUri);
}

/// §3.1.2.12 baddate: "An element wishing to be liberal in what it accepts could ignore
/// this value altogether if it wasn't going to use the Date header field anyway." A proxy
/// does not use Date: it accepts and passes the value on unchanged.
#[test]
fn baddate() {
    let m = accepted("baddate");
    let date: Vec<_> = m.other_headers(b"date").collect();
    assert_eq!(date, [b("Fri, 01 Jan 2010 16:00:00 EST")]);
}

/// §3.1.2.13 regbadct: "The SIP URI contained in the Contact Header field has an escaped
/// header, so the field must be in name-addr form ... It is reasonable for an element
/// receiving this request to respond with a 400 Bad Request." A proxy relays Contact
/// untouched; the registrar decodes it, and the name-addr view must refuse it.
#[test]
fn regbadct() {
    let m = accepted("regbadct");
    let value = m.header(HeaderName::Contact).unwrap();
    assert_eq!(
        value,
        b("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    );
    assert_eq!(
        NameAddr::parse(value),
        None,
        "an addr-spec with `?` must be in <>"
    );
}

/// §3.1.2.14 badaspec: "It is reasonable to reject this request with a 400 Bad Request
/// response." (spaces inside `< >` in To)
#[test]
fn badaspec() {
    assert_rejected!("badaspec", ParseError::BadHeader("To"));
}

/// §3.1.2.15 baddn: "the display names in the To and From header fields contain non-token
/// characters but are unquoted. It is reasonable always to reject this kind of error with
/// a 400 Bad Request response." From is checked first.
#[test]
fn baddn() {
    assert_rejected!("baddn", ParseError::BadHeader("From"));
}

/// §3.1.2.16 badvers: "The element should respond to the request with a 505 Version Not
/// Supported error."
#[test]
fn badvers() {
    assert_rejected!("badvers", ParseError::BadVersion);
}

/// §3.1.2.17 mismatch01: "Any element receiving this request will respond with a 400 Bad
/// Request."
#[test]
fn mismatch01() {
    assert_rejected!("mismatch01", ParseError::CSeqMethodMismatch);
}

/// §3.1.2.18 mismatch02: "Any element receiving this response should respond with a 501
/// Not Implemented. A 400 Bad Request is also acceptable".
#[test]
fn mismatch02() {
    assert_rejected!("mismatch02", ParseError::CSeqMethodMismatch);
}

/// §3.1.2.19 bigcode: "An element receiving this response should simply drop it."
#[test]
fn bigcode() {
    assert_rejected!("bigcode", ParseError::BadStatusCode);
}

// ---------------------------------------------------------------------------------------
// §3.2 Transaction layer, §3.3 application layer, §3.4 backward compatibility: the parser
// accepts what the RFC calls well formed and decodes what the upper layers decide on.

/// §3.2.1 badbranch: "A parser must not break when receiving this message." The bare
/// magic cookie reaches the transaction layer as it was sent.
#[test]
fn badbranch() {
    let m = accepted("badbranch");
    assert_eq!(m.top_via().unwrap().branch(), some("z9hG4bK"));
}

/// §3.3.1 insuf: "An element receiving this message must not break because of the missing
/// information. Ideally, it will respond with a 400 Bad Request error."
#[test]
fn insuf() {
    let m = parsed("insuf");
    assert_eq!(m.cseq(), cseq(193_942, Method::Invite));
    assert_eq!(m.top_via().unwrap().branch(), some("z9hG4bKkdj.insuf"));
    let e = m.validate().unwrap_err();
    assert!(
        matches!(e, ParseError::MissingHeader("Call-ID" | "From" | "To")),
        "{e:?}"
    );
}

/// §3.3.2 unkscm: "A parser must accept this as a well-formed SIP request." (416 is the
/// proxy's answer, not the parser's.)
#[test]
fn unkscm() {
    let m = accepted("unkscm");
    assert_eq!(
        m.request_uri(),
        some("nobodyKnowsThisScheme:totallyopaquecontent")
    );
    assert_eq!(SipUri::parse(m.request_uri().unwrap()), None);
}

/// §3.3.3 novelsc: "A parser must accept this as a well-formed SIP request."
#[test]
fn novelsc() {
    let m = accepted("novelsc");
    assert_eq!(m.request_uri(), some("soap.beep://192.0.2.103:3002"));
}

/// §3.3.4 unksm2: "Parsers must not fail when receiving this message. Proxies should treat
/// this message as they would any other request for this URI. A registrar would reject
/// this request with a 400 Bad Request response" (To is not a SIP or SIPS URI).
#[test]
fn unksm2() {
    let m = accepted("unksm2");
    let to = m.to().unwrap();
    assert_eq!(to.uri, b("isbn:2983792873"));
    assert_eq!(SipUri::parse(to.uri), None);
    assert_eq!(m.from().unwrap().uri, b("http://www.example.com"));
    assert_eq!(m.from_tag(), some("3234233"));
    assert_eq!(contact(&m).uri, b("name:John_Smith"));
}

/// §3.3.5 bext01: "Any element receiving this request will respond with a 420 Bad
/// Extension response" — the option tags must be decoded to be listed in Unsupported.
#[test]
fn bext01() {
    let m = accepted("bext01");
    let require: Vec<_> = m.list(HeaderName::Require).collect();
    assert_eq!(
        require,
        [b("nothingSupportsThis"), b("nothingSupportsThisEither")]
    );
    let proxy_require: Vec<_> = m.list(HeaderName::ProxyRequire).collect();
    assert_eq!(
        proxy_require,
        [b("noProxiesSupportThis"), b("norDoAnyProxiesSupportThis")]
    );
    assert_eq!(m.top_via().unwrap().transport, b("TLS"));
}

/// §3.3.6 invut: "A proxy receiving this request would process it just as it would any
/// other INVITE."
#[test]
fn invut() {
    let m = accepted("invut");
    assert_eq!(
        m.header(HeaderName::ContentType),
        some("application/unknownformat")
    );
    assert_eq!(
        m.body(),
        b("<audio>\r\n <pcmu port=\"443\"/>\r\n</audio>\r\n")
    );
}

/// §3.3.7 regaut01: "A proxy will treat this request as it would any other REGISTER. If
/// it forwards the request, it will include this Authorization header field unmodified".
#[test]
fn regaut01() {
    let m = accepted("regaut01");
    assert_eq!(
        m.header(HeaderName::Authorization),
        some("NoOneKnowsThisScheme opaque-data=here")
    );
    assert_eq!(m.header(HeaderName::ContentLength), some("0"));
}

/// §3.3.8 multi01: "An element receiving this request must not break. An element
/// receiving this request would respond with a 400 Bad Request error." (two Call-ID, To,
/// From, Max-Forwards and CSeq values each)
#[test]
fn multi01() {
    let m = parsed("multi01");
    let e = m.validate().unwrap_err();
    assert!(
        matches!(
            e,
            ParseError::BadHeader("Call-ID" | "To" | "From" | "Max-Forwards" | "CSeq")
        ),
        "{e:?}"
    );
}

/// §3.3.9 mcl01: "From a framing perspective, this situation is equivalent to an invalid
/// Content-Length value ... An element receiving this message should respond with an
/// error."
#[test]
fn mcl01() {
    assert_rejected!("mcl01", ParseError::BadHeader("Content-Length"));
}

/// §3.3.10 bcast: "The message is well formed; parsers must not fail when receiving it.
/// ... proxies should drop such responses." The proxy sees the broadcast sent-by.
#[test]
fn bcast() {
    let m = accepted("bcast");
    let hosts: Vec<_> = vias(&m).into_iter().map(|(_, h, _)| h).collect();
    assert_eq!(hosts, [b("192.0.2.198"), b("255.255.255.255")]);
}

/// §3.3.11 zeromf: "A proxy should not forward the request and should respond 483 (Too
/// Many Hops)." — which needs the value 0 decoded.
#[test]
fn zeromf() {
    assert_eq!(accepted("zeromf").max_forwards(), Ok(Some(0)));
}

/// §3.3.12 cparam01: "the 'unknownparam' parameter must be interpreted as a contact-param
/// and not a url-param."
#[test]
fn cparam01() {
    let m = accepted("cparam01");
    let c = contact(&m);
    assert!(!c.bracketed);
    assert_eq!(c.uri, b("sip:+19725552222@gw1.example.net"));
    assert_eq!(c.param(b"unknownparam"), some(""));
    assert_eq!(SipUri::parse(c.uri).unwrap().param(b"unknownparam"), None);
}

/// §3.3.13 cparam02: "a subsequent retrieval of the registration must include
/// "unknownparam" as a url-parameter."
#[test]
fn cparam02() {
    let m = accepted("cparam02");
    let c = contact(&m);
    assert!(c.bracketed);
    assert_eq!(c.uri, b("sip:+19725552222@gw1.example.net;unknownparam"));
    assert_eq!(c.param(b"unknownparam"), None);
    assert_eq!(
        SipUri::parse(c.uri).unwrap().param(b"unknownparam"),
        some("")
    );
}

/// §3.3.14 regescrt: "a subsequent retrieval of the registration must include the escaped
/// Route header in the contact URI for this binding." (compact `M:` and `L:`)
#[test]
fn regescrt() {
    let m = accepted("regescrt");
    let c = contact(&m);
    assert_eq!(
        c.uri,
        b("sip:user@example.com?Route=%3Csip:sip.example.com%3E")
    );
    assert_eq!(
        SipUri::parse(c.uri).unwrap().headers,
        some("Route=%3Csip:sip.example.com%3E")
    );
    assert_eq!(m.header(HeaderName::ContentLength), some("0"));
}

/// §3.3.15 sdp01: "The recipient of this request could respond with a 406 Not Acceptable"
/// — a user agent's decision; a proxy forwards it.
#[test]
fn sdp01() {
    let m = accepted("sdp01");
    assert_eq!(m.header(HeaderName::Accept), some("text/nobodyKnowsThis"));
    assert_eq!(m.body().len(), 150);
}

/// §3.4.1 inv2543: "a legal message per RFC 2543 ... that should be accepted by RFC 3261
/// elements that want to maintain backwards compatibility." No branch, no From tag, no
/// Content-Length ("The body is assumed to be all octets in the datagram after the
/// null-line"), no Max-Forwards.
#[test]
fn inv2543() {
    let data = corpus("inv2543");
    let m = accepted("inv2543");
    let via = m.top_via().unwrap();
    assert_eq!((via.host, via.branch()), (b("iftgw.example.com"), None));
    assert_eq!(m.from_tag(), None);
    assert_eq!(m.max_forwards(), Ok(None));
    assert_eq!(m.header(HeaderName::ContentLength), None);
    assert_eq!(m.body(), &data[memchr_crlf2(&data) + 4..]);
    assert_eq!(
        m.header(HeaderName::RecordRoute),
        some("<sip:UserB@example.com;maddr=ss1.example.com>")
    );
}

// ---------------------------------------------------------------------------------------
// Corpus-wide properties

/// The corpus directory holds exactly the 49 messages of RFC 4475 §3.
#[test]
fn corpus_is_complete() {
    let mut found: Vec<String> = std::fs::read_dir(data_dir())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".sip").map(str::to_owned))
        .collect();
    found.sort();
    let mut tags: Vec<String> = TAGS.iter().map(|t| (*t).to_owned()).collect();
    tags.sort();
    assert_eq!(found, tags);
}

/// Raw-first: whatever parse() accepts, as_bytes() is the received message, not a
/// re-serialisation. The one datagram carrying trailing octets (`dblreq`) yields a prefix.
#[test]
fn accepted_messages_keep_their_bytes() {
    for tag in TAGS {
        let data = corpus(tag);
        if let Ok(m) = Message::parse(data.clone()) {
            let expected = if tag == "dblreq" {
                &data[..memchr_crlf2(&data) + 4]
            } else {
                &data[..]
            };
            assert!(
                m.as_bytes() == expected,
                "{tag}: as_bytes() differs from the received bytes"
            );
        }
    }
}

/// Runs the parser and every typed view on `input`; `Ok` results must stay in bounds.
fn exercise(input: &[u8]) {
    let Ok(m) = Message::parse(Bytes::copy_from_slice(input)) else {
        if let Some(m) = Message::parse_for_reply(Bytes::copy_from_slice(input)) {
            let _ = (m.request_uri(), m.call_id(), m.cseq(), m.from_tag());
            let _ = m.top_via().map(|v| (v.branch(), v.rport()));
        }
        return;
    };
    assert!(
        input.starts_with(m.as_bytes()),
        "as_bytes() is not a prefix of the input"
    );
    let _ = m.validate();
    let _ = (
        m.method(),
        m.request_uri(),
        m.status(),
        m.reason(),
        m.body(),
        m.call_id(),
    );
    let _ = (
        m.cseq(),
        m.from(),
        m.to(),
        m.from_tag(),
        m.to_tag(),
        m.max_forwards(),
        m.expires(),
    );
    let _ = m.top_via().map(|v| (v.branch(), v.received(), v.rport()));
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport());
    }
    for name in [
        HeaderName::Contact,
        HeaderName::Route,
        HeaderName::RecordRoute,
    ] {
        for value in m.list(name) {
            if let Some(na) = NameAddr::parse(value) {
                let _ = SipUri::parse(na.uri).map(|u| u.param(b"lr"));
            }
        }
    }
    let _ = m.request_uri().and_then(SipUri::parse);
}

fn exercise_or_report(tag: &str, what: &str, input: &[u8]) {
    let outcome = catch_unwind(AssertUnwindSafe(|| exercise(input)));
    assert!(
        outcome.is_ok(),
        "{tag}: parser panicked on {what}: {:?}",
        String::from_utf8_lossy(input)
    );
}

/// RFC 4475 §3.1.2: every request that `parse()` refuses can still be answered: its
/// method, Via (raw: `badvers` has `SIP/7.0/UDP`), Call-ID and CSeq are read by
/// [`Message::parse_for_reply`]. No response is ever recovered.
#[test]
fn refused_requests_can_be_answered() {
    for tag in TAGS {
        let data = corpus(tag);
        if Message::parse(data.clone()).is_ok() {
            continue;
        }
        let m = Message::parse_for_reply(data.clone());
        if data.starts_with(b"SIP/") {
            assert!(m.is_none(), "{tag}: a response was recovered");
            continue;
        }
        let m = m.unwrap_or_else(|| panic!("{tag}: nothing recovered"));
        assert!(m.method().is_some(), "{tag}");
        assert!(
            m.header(HeaderName::Via).is_some(),
            "{tag}: no Via to answer along"
        );
        assert!(m.call_id().is_some() && m.cseq().is_ok(), "{tag}");
    }
}

/// RFC 4475 §4: "Parsers must carefully consider edge conditions and malicious input".
/// Every prefix of every message is parsed without a panic.
#[test]
fn no_panic_on_any_truncation() {
    for tag in TAGS {
        let data = corpus(tag);
        for len in 0..=data.len() {
            exercise_or_report(tag, &format!("the first {len} bytes"), &data[..len]);
        }
    }
}

/// Seeded byte mutations (bounded: 300 per message) never make the parser panic.
#[test]
fn no_panic_on_byte_mutations() {
    const INTERESTING: &[u8] = b" \t\r\n:;,=\"\\<>@?%/0019\x00\x7f\xff";
    let mut rng = SplitMix64(0x4475_2006);
    for tag in TAGS {
        let data = corpus(tag);
        for round in 0..300 {
            let mut input = data.to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(input.len());
                input[at] = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next_u64() as u8
                };
            }
            if rng.below(4) == 0 {
                input.truncate(rng.below(input.len() + 1));
            }
            exercise_or_report(tag, &format!("mutation {round}"), &input);
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a seeded generator small enough to inline here.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
