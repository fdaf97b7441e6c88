//! The media relay of the real `permit-proxy` over loopback. Plain test code plays the
//! two UAs: bob registers, alice calls him with a video offer (digest-authenticated,
//! on bob's list), each learns its relay port from `a=permit-relay` and the token from
//! `Permit-Token`, latches with the datagram of docs/profile.md (computed here from
//! the document, not with the proxy's code), and media flows both ways through the
//! relay. A third socket that knows the ports but not the token gets nothing through
//! and hijacks nothing (stray packets, a forged latch, a replayed latch). After the BYE
//! the ports forward nothing. The counters the proxy logs at stop are checked.

mod common;

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::proxy::{Ports, Proxy};
use common::{DOMAIN, HOST, add_permit, add_user, free_port, read_text, workdir};
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

const RELAY_PORTS: u16 = 16;

fn socket() -> UdpSocket {
    let s = UdpSocket::bind((HOST, 0)).expect("bind a loopback UDP socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn port(s: &UdpSocket) -> u16 {
    s.local_addr().unwrap().port()
}

/// `RELAY_PORTS` consecutive loopback ports free for UDP right now, below Linux's
/// ephemeral range (32768 and up), so that no socket another test opens meanwhile
/// takes one before the proxy binds them.
fn free_range() -> u16 {
    let span = u32::from(RELAY_PORTS) * 2;
    let slots = 12_000 / span; // 20000..32000
    let first = std::process::id() % slots;
    for i in 0..slots {
        let base = 20_000 + ((first + i) % slots) * span;
        let base = u16::try_from(base).expect("below 32000");
        let held: Vec<_> = (base..base + RELAY_PORTS)
            .map(|p| UdpSocket::bind((HOST, p)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no free range of {RELAY_PORTS} UDP ports");
}

fn recv_text(s: &UdpSocket) -> String {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s.recv_from(&mut buf).expect("a SIP message within 5 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The next message whose first line starts with `start` (others skipped, at most 20).
fn recv_until(s: &UdpSocket, start: &str) -> String {
    for _ in 0..20 {
        let m = recv_text(s);
        if m.starts_with(start) {
            return m;
        }
    }
    panic!("no {start} message");
}

fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    headers(msg, name)
        .first()
        .unwrap_or_else(|| panic!("no {name} in\n{msg}"))
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Digest credentials (RFC 7616 §3.4, MD5, qop=auth) for the MD5 challenge in `msg`.
fn credentials(
    msg: &str,
    challenge: &str,
    user: &str,
    pw: &str,
    method: &str,
    uri: &str,
) -> String {
    let ch = headers(msg, challenge)
        .into_iter()
        .find(|c| c.contains("algorithm=MD5"))
        .unwrap_or_else(|| panic!("no MD5 challenge in\n{msg}"));
    let param = |name: &str| {
        let at = ch.find(&format!("{name}=\""))? + name.len() + 2;
        Some(ch[at..].split('"').next()?.to_owned())
    };
    let (realm, nonce) = (param("realm").unwrap(), param("nonce").unwrap());
    let ha1 = md5_hex(&format!("{user}:{realm}:{pw}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let opaque = param("opaque").map_or(String::new(), |o| format!(", opaque=\"{o}\""));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"{opaque}"
    )
}

/// The value of the `a=permit-relay` line of the `m=video` section: (IP, port).
fn relay_of(sdp: &str) -> (String, u16) {
    let video = sdp.split("m=video").nth(1).expect("a video section");
    let line = video
        .lines()
        .find_map(|l| l.strip_prefix("a=permit-relay:"))
        .unwrap_or_else(|| panic!("no a=permit-relay in the video section\n{sdp}"));
    let (ip, port) = line.trim().split_once(' ').unwrap();
    (ip.to_owned(), port.parse().unwrap())
}

/// The latch datagram exactly as docs/profile.md describes it.
fn latch_datagram(kind: u8, token: &str, leg: u8, relay_port: u16, counter: u64) -> Vec<u8> {
    let mut d = vec![0x0B, b'P', b'R', b'L', kind, leg];
    d.extend_from_slice(&relay_port.to_be_bytes());
    d.extend_from_slice(&counter.to_be_bytes());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(b"permit relay latch v1");
    mac.update(&d);
    d.extend_from_slice(&mac.finalize().into_bytes());
    d
}

fn rtp(seq: u16, marker: u8) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44]);
    p.extend_from_slice(&[marker; 160]);
    p
}

/// Latches `media` to `relay:relay_port` as `leg` and checks the relay's answer.
fn latch(media: &UdpSocket, relay: SocketAddr, token: &str, leg: u8) -> Vec<u8> {
    let d = latch_datagram(1, token, leg, relay.port(), 1);
    media.send_to(&d, relay).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = media
        .recv_from(&mut buf)
        .expect("the relay answers the latch");
    assert_eq!(from, relay);
    assert_eq!(
        &buf[..n],
        latch_datagram(2, token, leg, relay.port(), 1).as_slice(),
        "the latched answer"
    );
    d
}

/// Every datagram `s` receives until it has been quiet for `quiet` (bounded count).
fn drain(s: &UdpSocket, quiet: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while out.len() < 1000 {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => out.push((from, buf[..n].to_vec())),
            Err(_) => break,
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    out
}

fn sdp(user: &str, media_port: u16) -> String {
    format!(
        "v=0\r\no={user} 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n\
         m=video {media_port} RTP/SAVP 96\r\na=rtpmap:96 H264/90000\r\n"
    )
}

struct Call {
    alice: UdpSocket,
    bob: UdpSocket,
    proxy: u16,
    token: String,
    /// The relay's address for alice (caller's leg) and bob (callee's leg).
    relay_alice: SocketAddr,
    relay_bob: SocketAddr,
    /// The Route set for alice's in-dialog requests, and bob's tag.
    route: String,
}

fn register_bob(bob: &UdpSocket, proxy: u16) {
    let me = port(bob);
    let reg = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-reg{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=bobreg\r\nTo: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: relay-reg-{me}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:bob@{HOST}:{me}>\r\n\
             {auth}Expires: 300\r\nContent-Length: 0\r\n\r\n"
        )
    };
    bob.send_to(reg(1, "").as_bytes(), (HOST, proxy)).unwrap();
    let ch = recv_until(bob, "SIP/2.0 401");
    let creds = credentials(
        &ch,
        "WWW-Authenticate",
        "bob",
        "builder",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    );
    bob.send_to(
        reg(2, &format!("Authorization: {creds}\r\n")).as_bytes(),
        (HOST, proxy),
    )
    .unwrap();
    recv_until(bob, "SIP/2.0 200");
}

/// alice calls bob with a video offer; bob answers 200 with one; alice ACKs.
fn set_up_call(proxy: u16, alice_media: u16, bob_media: u16) -> Call {
    let (alice, bob) = (socket(), socket());
    register_bob(&bob, proxy);
    let me = port(&alice);
    let offer = sdp("alice", alice_media);
    let invite = |cseq: u32, auth: &str| {
        format!(
            "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-inv{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=alice1\r\nTo: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: relay-call-{me}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@{HOST}:{me}>\r\n\
             {auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        )
    };
    alice
        .send_to(invite(1, "").as_bytes(), (HOST, proxy))
        .unwrap();
    let ch = recv_until(&alice, "SIP/2.0 407");
    let ack = format!(
        "ACK sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-inv1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=alice1\r\nTo: {}\r\n\
         Call-ID: relay-call-{me}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        header(&ch, "To")
    );
    alice.send_to(ack.as_bytes(), (HOST, proxy)).unwrap();
    let creds = credentials(
        &ch,
        "Proxy-Authenticate",
        "alice",
        "wonderland",
        "INVITE",
        &format!("sip:bob@{DOMAIN}"),
    );
    alice
        .send_to(
            invite(2, &format!("Proxy-Authorization: {creds}\r\n")).as_bytes(),
            (HOST, proxy),
        )
        .unwrap();

    // bob: the INVITE with the token and the callee's relay port.
    let inv = recv_until(&bob, "INVITE ");
    let token = header(&inv, "Permit-Token").to_owned();
    assert!(token.starts_with("v1."), "{token}");
    let (ip, bob_port) = relay_of(body(&inv));
    assert_eq!(ip, HOST);
    let mut resp = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via", "Record-Route"] {
        for v in headers(&inv, name) {
            resp.push_str(name);
            resp.push_str(": ");
            resp.push_str(v);
            resp.push_str("\r\n");
        }
    }
    let answer = sdp("bob", bob_media);
    let _ = write!(
        resp,
        "From: {}\r\nTo: {};tag=bob1\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:bob@{HOST}:{}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        header(&inv, "From"),
        header(&inv, "To"),
        header(&inv, "Call-ID"),
        header(&inv, "CSeq"),
        port(&bob),
        answer.len()
    );
    bob.send_to(resp.as_bytes(), (HOST, proxy)).unwrap();

    // alice: the 200 with the same token and the caller's relay port.
    let ok = recv_until(&alice, "SIP/2.0 200");
    assert_eq!(header(&ok, "Permit-Token"), token);
    let (ip, alice_port) = relay_of(body(&ok));
    assert_eq!(ip, HOST);
    assert_ne!(alice_port, bob_port);
    let mut rr: Vec<String> = headers(&ok, "Record-Route")
        .iter()
        .flat_map(|v| v.split(", ").map(str::to_owned))
        .collect();
    rr.reverse();
    let route = rr.join(", ");
    let call = Call {
        proxy,
        token,
        relay_alice: format!("{HOST}:{alice_port}").parse().unwrap(),
        relay_bob: format!("{HOST}:{bob_port}").parse().unwrap(),
        route,
        alice,
        bob,
    };
    call.alice
        .send_to(call.in_dialog("ACK", 2).as_bytes(), (HOST, proxy))
        .unwrap();
    call
}

impl Call {
    fn in_dialog(&self, method: &str, cseq: u32) -> String {
        let me = port(&self.alice);
        format!(
            "{method} sip:bob@{HOST}:{} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-{method}{cseq};rport\r\n\
             Max-Forwards: 70\r\nRoute: {}\r\nFrom: <sip:alice@{DOMAIN}>;tag=alice1\r\n\
             To: <sip:bob@{DOMAIN}>;tag=bob1\r\nCall-ID: relay-call-{me}\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            port(&self.bob),
            self.route
        )
    }

    /// BYE from alice; bob answers 200; alice gets it.
    fn hang_up(&self) {
        self.alice
            .send_to(self.in_dialog("BYE", 3).as_bytes(), (HOST, self.proxy))
            .unwrap();
        let bye = recv_until(&self.bob, "BYE ");
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for v in headers(&bye, "Via") {
            let _ = write!(resp, "Via: {v}\r\n");
        }
        let _ = write!(
            resp,
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            header(&bye, "From"),
            header(&bye, "To"),
            header(&bye, "Call-ID"),
            header(&bye, "CSeq")
        );
        self.bob
            .send_to(resp.as_bytes(), (HOST, self.proxy))
            .unwrap();
        recv_until(&self.alice, "SIP/2.0 200");
    }
}

/// The value of `name: N` in the proxy's "media relay" log line.
fn counter(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("media relay") && l.contains("RelayStats"))
        .unwrap_or_else(|| panic!("no relay counters in the log\n{log}"));
    let at = line
        .find(&format!(" {name}: "))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 3..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn two_uas_latch_and_talk_through_the_relay_a_stranger_gets_nothing_through() {
    let dir = workdir("relay");
    let data = dir.join("data");
    add_user(&data, "alice", "wonderland");
    add_user(&data, "bob", "builder");
    add_permit(&data, "bob", "alice");
    let base = free_range();
    let config = dir.join("permit.toml");
    std::fs::write(
        &config,
        format!(
            "[gate]\nload_query = false\n\n[relay]\nenabled = true\nports = \"{base}-{}\"\n\
             address = \"{HOST}\"\ninactivity_s = 60\n",
            base + RELAY_PORTS - 1
        ),
    )
    .unwrap();
    let ports = Ports {
        udp: free_port(),
        tcp: None,
        tls: None,
    };
    let proxy = Proxy::start(
        &dir,
        "proxy",
        &data,
        ports,
        &["--config", &config.display().to_string()],
    );
    let (a_media, b_media, stranger) = (socket(), socket(), socket());
    let call = set_up_call(ports.udp, port(&a_media), port(&b_media));
    for relay in [call.relay_alice, call.relay_bob] {
        assert!((base..base + RELAY_PORTS).contains(&relay.port()));
    }

    // Both UAs latch with the token; the callee's leg first.
    latch(&b_media, call.relay_bob, &call.token, 1);
    let alice_latch = latch(&a_media, call.relay_alice, &call.token, 0);

    // Media both ways: what one sends arrives unchanged at the other, from the relay.
    for seq in 0..10u16 {
        a_media.send_to(&rtp(seq, 0xA1), call.relay_alice).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = b_media
            .recv_from(&mut buf)
            .expect("alice's packet reaches bob");
        assert_eq!(
            (from, &buf[..n]),
            (call.relay_bob, rtp(seq, 0xA1).as_slice())
        );
        b_media.send_to(&rtp(seq, 0xB1), call.relay_bob).unwrap();
        let (n, from) = a_media
            .recv_from(&mut buf)
            .expect("bob's packet reaches alice");
        assert_eq!(
            (from, &buf[..n]),
            (call.relay_alice, rtp(seq, 0xB1).as_slice())
        );
    }

    // The stranger knows both ports but not the token.
    for relay in [call.relay_alice, call.relay_bob] {
        stranger.send_to(&rtp(99, 0x66), relay).unwrap();
    }
    let forged = latch_datagram(1, "v1.0.0.guess.guess", 0, call.relay_alice.port(), 2);
    stranger.send_to(&forged, call.relay_alice).unwrap();
    stranger.send_to(&alice_latch, call.relay_alice).unwrap(); // a replay
    for relay in [call.relay_alice, call.relay_bob] {
        stranger.send_to(&rtp(100, 0x66), relay).unwrap();
    }
    // The latches did not move: the next packets still go to alice and bob.
    b_media.send_to(&rtp(10, 0xB1), call.relay_bob).unwrap();
    a_media.send_to(&rtp(10, 0xA1), call.relay_alice).unwrap();
    let quiet = Duration::from_millis(400);
    assert_eq!(
        drain(&a_media, quiet),
        vec![(call.relay_alice, rtp(10, 0xB1))]
    );
    assert_eq!(
        drain(&b_media, quiet),
        vec![(call.relay_bob, rtp(10, 0xA1))]
    );
    assert!(
        drain(&stranger, quiet).is_empty(),
        "the stranger got packets"
    );

    // After the BYE the ports forward nothing.
    call.hang_up();
    a_media.send_to(&rtp(11, 0xA1), call.relay_alice).unwrap();
    b_media.send_to(&rtp(11, 0xB1), call.relay_bob).unwrap();
    assert!(drain(&b_media, quiet).is_empty(), "forwarded after the BYE");
    assert!(drain(&a_media, quiet).is_empty(), "forwarded after the BYE");

    let log_path = proxy.log.clone();
    proxy.stop_gracefully("TERM");
    let log = read_text(&log_path);
    assert_eq!(counter(&log, "calls_allocated"), 1);
    assert_eq!(counter(&log, "calls_freed"), 1);
    assert_eq!(counter(&log, "latches"), 2);
    assert_eq!(counter(&log, "forwarded_packets"), 22);
    assert_eq!(counter(&log, "forwarded_bytes"), 22 * 172);
    assert_eq!(counter(&log, "dropped_stranger"), 4);
    assert_eq!(counter(&log, "latch_rejected"), 1);
    assert_eq!(counter(&log, "latch_replayed"), 1);
    assert_eq!(counter(&log, "dropped_unallocated"), 2);
    assert!(!log.contains(&call.token), "the token is in the log");
}
