//! The 49 torture messages of RFC 4475 §3 (and an OPTIONS ping) sent to a running
//! `permit-proxy`, over UDP and over TCP: the status each one gets is asserted against
//! what RFC 4475 §3 describes, and after every message an OPTIONS ping must get 200
//! (the proxy is alive and still serving).
//!
//! The proxy runs on its defaults (digest authentication and the gate on, users alice,
//! bob and carol). The messages are the byte-exact files of
//! `sip-profiles/core/tests/data/rfc4475/`, each sent from a fresh UDP socket or on a
//! fresh TCP connection. What counts as the answer RFC 4475 describes ([`Want`]):
//!
//! - a valid request is *processed*: any response that follows from normal processing,
//!   that is anything but a refusal of the message itself (400, 505); with
//!   authentication on that is mostly 407/401 (challenge), 403/404 (gate, foreign
//!   domain), 416, 483 or 200. An INVITE answered only 100 Trying within the wait is
//!   processed too (a final may take Timer B).
//! - an invalid request gets the exact status RFC 4475 names (400, 505, 420, 416, 483;
//!   501 or 400 for `mismatch02`).
//! - a response sent to the proxy gets nothing (RFC 4475 §3.1.2.5, §3.1.2.19, §3.3.10).
//! - `clerr` over TCP gets nothing: the proxy waits for the rest of the body (RFC 4475
//!   §3.1.2.2 asks for 400 over UDP; on a stream the rest may still come).
//! - `dblreq` over TCP is two requests in one segment: both are answered and the
//!   connection stays open (a ping on it gets 200).
//!
//! The test prints the table and asserts that at least 48 of the 50 are answered as
//! described, on each transport. The proxy's log stays in
//! `target/tmp/rfc4475-e2e/<test>/proxy.log`.

mod common;

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{Bed, ProxyOptions};
use common::{DOMAIN, HOST, Transport, tail};

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

/// How long to wait for a final response.
const FINAL_WAIT: Duration = Duration::from_secs(2);
/// How long silence must last to count as "no answer".
const SILENCE: Duration = Duration::from_millis(700);

/// What RFC 4475 §3 describes for one message.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Normal processing: any response but a refusal of the message (400, 505).
    Processed,
    /// One of these statuses.
    Status(&'static [u16]),
    /// No answer at all.
    Nothing,
    /// Two requests, both processed (TCP `dblreq`).
    TwoProcessed,
}

/// The RFC 4475 §3 answer for `tag` arriving over `transport` (see the module doc).
fn want(tag: &str, transport: Transport) -> Want {
    use Want::{Nothing, Processed, Status, TwoProcessed};
    match tag {
        // §3.1.1.8 dblreq over UDP: the REGISTER only; over TCP the INVITE octets are
        // the next message on the stream.
        "dblreq" if transport == Transport::Tcp => TwoProcessed,
        // §3.1.1 valid messages; §3.1.2.12 baddate ("could ignore this value"); §3.2.1
        // badbranch; §3.3.6, §3.3.7, §3.3.12-15 and §3.4.1.
        "wsinv" | "intmeth" | "esc01" | "escnull" | "esc02" | "lwsdisp" | "longreq" | "dblreq"
        | "semiuri" | "transports" | "mpart01" | "baddate" | "badbranch" | "invut" | "regaut01"
        | "cparam01" | "cparam02" | "regescrt" | "sdp01" | "inv2543" => Processed,
        // Responses: "simply discard it" / "drop".
        "unreason" | "noreason" | "scalarlg" | "bigcode" | "bcast" => Nothing,
        "clerr" if transport == Transport::Tcp => Nothing,
        "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri"
        | "lwsstart" | "trws" | "escruri" | "regbadct" | "badaspec" | "baddn" | "mismatch01"
        | "insuf" | "multi01" | "mcl01" => Status(&[400]),
        "mismatch02" => Status(&[501, 400]),
        "badvers" => Status(&[505]),
        "unkscm" | "novelsc" => Status(&[416]),
        // The To URI is not a SIP URI: a proxy processes it, a registrar answers 400.
        "unksm2" => Status(&[400, 401, 403, 404, 407]),
        "bext01" => Status(&[420]),
        "zeromf" => Status(&[483]),
        other => panic!("no expectation for {other}"),
    }
}

/// What the proxy sent back: every response's status and CSeq method, in order.
#[derive(Debug, Default)]
struct Answer {
    responses: Vec<(u16, String)>,
    /// What else went wrong (a connection that did not stay open).
    note: &'static str,
}

impl Answer {
    fn finals(&self) -> Vec<u16> {
        self.responses
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s >= 200)
            .collect()
    }

    fn shown(&self) -> String {
        if self.responses.is_empty() {
            return format!("no answer{}", self.note);
        }
        let all: Vec<String> = self
            .responses
            .iter()
            .map(|(s, m)| format!("{s} ({m})"))
            .collect();
        format!("{}{}", all.join(", "), self.note)
    }

    /// The response that decides: the first final, else the last provisional.
    fn decisive(&self) -> Option<u16> {
        self.finals()
            .first()
            .copied()
            .or_else(|| self.responses.last().map(|(s, _)| *s))
    }
}

fn processed(status: u16) -> bool {
    !matches!(status, 400 | 505)
}

fn meets(want: Want, answer: &Answer) -> bool {
    match want {
        Want::Processed => answer.decisive().is_some_and(processed),
        Want::Status(codes) => answer.decisive().is_some_and(|s| codes.contains(&s)),
        Want::Nothing => answer.responses.is_empty(),
        Want::TwoProcessed => {
            let finals = answer.finals();
            finals.len() == 2 && finals.iter().all(|&s| processed(s))
        }
    }
}

fn corpus(tag: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sip-profiles/core/tests/data/rfc4475")
        .join(format!("{tag}.sip"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An OPTIONS to the proxy itself (RFC 3261 §11), which it answers 200 unchallenged.
fn ping(seq: u32, transport: Transport, local_port: u16) -> Vec<u8> {
    let t = if transport == Transport::Tcp {
        "TCP"
    } else {
        "UDP"
    };
    format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{t} {HOST}:{local_port};branch=z9hG4bK-ping-{seq}-{local_port}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:ping@{DOMAIN}>;tag=ping{seq}\r\nTo: <sip:{DOMAIN}>\r\n\
         Call-ID: ping-{seq}-{local_port}@{HOST}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Status and CSeq method of one response.
fn summary(msg: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(msg);
    let status = text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
    let method = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("CSeq")
                .then(|| value.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    Some((status, method))
}

/// Whether `answer` is complete: `finals` final responses arrived.
fn complete(answer: &Answer, finals: usize) -> bool {
    finals > 0 && answer.finals().len() >= finals
}

/// A fresh UDP socket on [`HOST`] and its port.
fn udp_socket() -> (UdpSocket, u16) {
    let socket = UdpSocket::bind((HOST, 0)).expect("bind a UDP socket");
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// The datagram `msg` from `socket`; responses until `finals` finals arrived, or until
/// `wait` passed (`finals == 0`: listen for the whole of `wait`).
fn exchange_udp(
    socket: &UdpSocket,
    port: u16,
    msg: &[u8],
    finals: usize,
    wait: Duration,
) -> Answer {
    socket.send_to(msg, (HOST, port)).expect("send a datagram");
    let deadline = Instant::now() + wait;
    let mut answer = Answer::default();
    let mut buf = vec![0u8; 65_535];
    while !complete(&answer, finals) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => answer.responses.extend(summary(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    answer
}

/// Cuts complete messages (by Content-Length) off the front of `buf`.
fn take_messages(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let lead = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.drain(..lead);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return out;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                let name = name.trim();
                (name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l"))
                    .then(|| value.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            return out;
        }
        out.push(buf.drain(..end + 4 + len).collect());
    }
}

/// Like [`exchange_udp`] on the TCP connection `stream`.
fn exchange_tcp(stream: &mut TcpStream, msg: &[u8], finals: usize, wait: Duration) -> Answer {
    stream.write_all(msg).expect("write on the connection");
    let deadline = Instant::now() + wait;
    let mut answer = Answer::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !complete(&answer, finals) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                for m in take_messages(&mut buf) {
                    answer.responses.extend(summary(&m));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    answer
}

fn connect(port: u16) -> TcpStream {
    TcpStream::connect((HOST, port)).expect("connect to the proxy")
}

/// One row of the table.
struct Row {
    tag: &'static str,
    want: Want,
    answer: Answer,
    ok: bool,
}

/// A ping from a fresh socket or connection.
fn ping_once(transport: Transport, port: u16, seq: u32) -> Answer {
    if transport == Transport::Udp {
        let (s, me) = udp_socket();
        exchange_udp(&s, port, &ping(seq, transport, me), 1, FINAL_WAIT)
    } else {
        let mut s = connect(port);
        let me = s.local_addr().unwrap().port();
        exchange_tcp(&mut s, &ping(seq, transport, me), 1, FINAL_WAIT)
    }
}

const NO_PONG: &str = "; no pong on the same connection";

/// Sends one corpus message from a fresh socket or connection. For
/// [`Want::TwoProcessed`] a ping follows on the same connection; the answer's note says
/// so if it got no 200 (the connection did not stay open).
fn send_message(transport: Transport, port: u16, msg: &[u8], want: Want) -> Answer {
    let (finals, wait) = match want {
        Want::Nothing => (0, SILENCE),
        Want::TwoProcessed => (2, FINAL_WAIT),
        Want::Processed | Want::Status(_) => (1, FINAL_WAIT),
    };
    if transport == Transport::Udp {
        return exchange_udp(&udp_socket().0, port, msg, finals, wait);
    }
    let mut s = connect(port);
    let mut answer = exchange_tcp(&mut s, msg, finals, wait);
    if matches!(want, Want::TwoProcessed) {
        let me = s.local_addr().unwrap().port();
        let pong = exchange_tcp(&mut s, &ping(9999, transport, me), 1, FINAL_WAIT);
        if pong.decisive() != Some(200) {
            answer.note = NO_PONG;
        }
    }
    answer
}

/// Sends every message and the ping over `transport`, checking after each message that
/// the proxy still answers a ping with 200. Returns the table.
fn run(bed: &mut Bed, transport: Transport) -> Vec<Row> {
    let port = bed.proxy.port(transport);
    let mut rows = Vec::new();
    for (seq, tag) in (1..).zip(TAGS) {
        let want = want(tag, transport);
        let answer = send_message(transport, port, &corpus(tag), want);
        let ok = meets(want, &answer) && answer.note != NO_PONG;
        rows.push(Row {
            tag,
            want,
            answer,
            ok,
        });
        bed.proxy.assert_alive();
        let pong = ping_once(transport, port, seq);
        assert_eq!(
            pong.decisive(),
            Some(200),
            "{transport:?}: the ping after {tag} got {}\n{}",
            pong.shown(),
            tail(&bed.proxy.log, 3000)
        );
    }
    // The 50th: the ping itself, on a fresh socket or connection.
    let answer = ping_once(transport, port, 0);
    let ok = answer.decisive() == Some(200);
    rows.push(Row {
        tag: "ping",
        want: Want::Status(&[200]),
        answer,
        ok,
    });
    rows
}

fn table(transport: Transport, rows: &[Row]) -> String {
    let mut out = String::new();
    let score = rows.iter().filter(|r| r.ok).count();
    let _ = writeln!(out, "RFC 4475 over {transport:?}: {score}/{}", rows.len());
    for r in rows {
        let want = match r.want {
            Want::Processed => "processed".to_owned(),
            Want::Status(s) => format!("{s:?}"),
            Want::Nothing => "nothing".to_owned(),
            Want::TwoProcessed => "two processed".to_owned(),
        };
        let mark = if r.ok { "ok" } else { "MISS" };
        let _ = writeln!(
            out,
            "  {:<10} want {:<22} got {:<40} {mark}",
            r.tag,
            want,
            r.answer.shown()
        );
    }
    out
}

fn check(test: &str, transport: Transport) {
    let options = ProxyOptions {
        users: vec![
            ("alice", "alice-pw"),
            ("bob", "bob-pw"),
            ("carol", "carol-pw"),
        ],
        permits: vec![("bob", "alice")],
        ..ProxyOptions::default()
    };
    let mut bed = Bed::new(test, &options);
    let rows = run(&mut bed, transport);
    let report = table(transport, &rows);
    println!("{report}");
    let score = rows.iter().filter(|r| r.ok).count();
    assert!(
        score >= 48,
        "{report}\nfewer than 48 of 50 answered as RFC 4475 describes\n{}",
        tail(&bed.proxy.log, 3000)
    );
    bed.proxy.assert_alive();
}

#[test]
fn rfc4475_over_udp() {
    check("udp", Transport::Udp);
}

#[test]
fn rfc4475_over_tcp() {
    check("tcp", Transport::Tcp);
}
