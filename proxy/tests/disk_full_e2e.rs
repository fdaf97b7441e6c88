//! A full disk never costs an answered registration. The proxy runs with every file it
//! writes limited in size (RLIMIT_FSIZE: a write past it fails with EFBIG, as on a
//! full disk); REGISTERs are sent one after another until the store refuses. Each one
//! answered 200 must survive a kill -9 and a restart without the limit; those the full
//! store could not take are answered 5xx, never 200 (issue: storage off the hot path,
//! same promise).
//!
//! Plain UDP sockets, no peer programs: this test needs only `sh` and the binary.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::proxy::{Ports, Proxy};
use common::{DOMAIN, HOST, free_port, workdir};

/// A REGISTER for `user` whose binding carries a 1 KiB Path, so the store fills fast.
fn register(me: u16, user: &str, contact: bool) -> String {
    let path = format!("<sip:{}@edge.invalid;lr>", "p".repeat(1_000));
    let (contact, expires) = if contact {
        (
            format!("Contact: <sip:{user}@{HOST}:40000>\r\nPath: {path}\r\n"),
            "Expires: 3600\r\n",
        )
    } else {
        (String::new(), "")
    };
    let q = if contact.is_empty() { "q" } else { "r" };
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-{q}-{user}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={q}{me}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: {q}-{user}@{HOST}\r\nCSeq: 1 REGISTER\r\nSupported: path\r\n{contact}{expires}Content-Length: 0\r\n\r\n"
    )
}

/// Sends `request` and returns the final response's text.
fn transact(socket: &UdpSocket, port: u16, request: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65_536];
    socket.send_to(request.as_bytes(), (HOST, port)).unwrap();
    let mut last_send = Instant::now();
    loop {
        assert!(Instant::now() < deadline, "no final answer to\n{request}");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !reply.starts_with("SIP/2.0 1") {
                    return reply;
                }
            }
            // RFC 3261 §17.1.2.2: retransmit a request that got nothing.
            Err(_) if last_send.elapsed() > Duration::from_millis(500) => {
                socket.send_to(request.as_bytes(), (HOST, port)).unwrap();
                last_send = Instant::now();
            }
            Err(_) => {}
        }
    }
}

fn status(reply: &str) -> u16 {
    reply
        .get(8..11)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response:\n{reply}"))
}

#[test]
fn a_full_disk_answers_5xx_and_loses_no_answered_binding() {
    let dir = workdir("disk_full");
    let data = dir.join("data");
    let ports = Ports {
        udp: free_port(),
        tcp: None,
        tls: None,
    };
    let socket = UdpSocket::bind((HOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = socket.local_addr().unwrap().port();

    let proxy = Proxy::start_file_limited(&dir, "limited", &data, ports, &["--no-auth"], 384);
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for i in 0..600 {
        let user = format!("u{i}");
        let reply = transact(&socket, ports.udp, &register(me, &user, true));
        match status(&reply) {
            200 => stored.push(user),
            500..=599 => refused.push(user),
            other => panic!("REGISTER for {user} answered {other}:\n{reply}"),
        }
        // Past the limit for a while: enough seen.
        if refused.len() >= 20 {
            break;
        }
    }
    assert!(
        !stored.is_empty(),
        "no REGISTER was stored before the disk filled"
    );
    assert!(
        !refused.is_empty(),
        "the file-size limit never refused a write ({} stored)",
        stored.len()
    );
    proxy.kill_hard();

    // Restart without the limit: every binding that was answered 200 is there.
    let _proxy = Proxy::start(&dir, "restarted", &data, ports, &["--no-auth"]);
    for user in &stored {
        let reply = transact(&socket, ports.udp, &register(me, user, false));
        assert_eq!(status(&reply), 200, "query for {user}:\n{reply}");
        assert!(
            reply.contains(&format!("<sip:{user}@{HOST}:40000>")),
            "{user} was answered 200 but its binding is lost:\n{reply}"
        );
    }
    eprintln!(
        "disk full: {} REGISTERs stored, then {} refused with 5xx; all stored ones survived kill -9",
        stored.len(),
        refused.len()
    );
}
