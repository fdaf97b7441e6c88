use std::net::SocketAddr;

use bytes::Bytes;
use sip_core::message::Message;
use sip_core::transport::Transport;

use super::{Registered, RegistrarConfig, handle_register};
use crate::location::{Location, Stored};
use crate::store::MemoryStore;

const NOW: u64 = 1_800_000_000;

fn register(cseq: u32, contacts: &str, expires: Option<u32>) -> Message {
    let exp = expires
        .map(|e| format!("Expires: {e}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{cseq}\r\n\
From: <sip:bob@localhost>;tag=1\r\nTo: <sip:bob@localhost>\r\nCall-ID: r1\r\nCSeq: {cseq} REGISTER\r\n\
{contacts}{exp}Path: <sip:edge.example;lr>\r\nContent-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(raw)).unwrap()
}

fn run(loc: &mut Location, msg: &Message, now: u64) -> Registered {
    let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    handle_register(
        &RegistrarConfig::default(),
        loc,
        "bob@localhost",
        msg,
        (Transport::Udp, src),
        now,
    )
}

fn loc() -> Location {
    Location::open(Box::new(MemoryStore::default())).unwrap()
}

#[test]
fn add_refresh_remove() {
    let mut l = loc();
    let r = run(
        &mut l,
        &register(
            1,
            "Contact: <sip:bob@127.0.0.1:5070>;q=0.5, <sip:bob@h2>;expires=100\r\n",
            Some(300),
        ),
        NOW,
    );
    assert_eq!(
        r,
        Registered::Ok(
            vec![
                ("sip:bob@127.0.0.1:5070".into(), 300),
                ("sip:bob@h2".into(), 100)
            ],
            Stored::Now
        )
    );
    let b = &l.bindings("bob@localhost")[0];
    assert_eq!(
        (b.q, b.path.to_vec()),
        (500, vec!["<sip:edge.example;lr>".to_owned()])
    );
    // Refresh one, remove the other with expires=0.
    let r = run(
        &mut l,
        &register(
            2,
            "Contact: <sip:bob@127.0.0.1:5070>\r\nContact: <sip:bob@h2>;expires=0\r\n",
            Some(600),
        ),
        NOW + 10,
    );
    assert_eq!(
        r,
        Registered::Ok(vec![("sip:bob@127.0.0.1:5070".into(), 600)], Stored::Now)
    );
    // A query (no Contact) lists the bindings with their remaining time.
    assert_eq!(
        run(&mut l, &register(3, "", None), NOW + 110),
        Registered::Ok(vec![("sip:bob@127.0.0.1:5070".into(), 500)], Stored::Now)
    );
    // An older CSeq from the same Call-ID is refused.
    assert!(matches!(
        run(
            &mut l,
            &register(2, "Contact: <sip:bob@127.0.0.1:5070>\r\n", None),
            NOW
        ),
        Registered::Reject { status: 500, .. }
    ));
}

#[test]
fn wildcard_rules() {
    let mut l = loc();
    run(&mut l, &register(1, "Contact: <sip:bob@h1>\r\n", None), NOW);
    assert!(matches!(
        run(&mut l, &register(2, "Contact: *\r\n", Some(30)), NOW),
        Registered::Reject { status: 400, .. }
    ));
    assert!(matches!(
        run(
            &mut l,
            &register(3, "Contact: *, <sip:bob@h2>\r\n", Some(0)),
            NOW
        ),
        Registered::Reject { status: 400, .. }
    ));
    assert_eq!(
        run(&mut l, &register(4, "Contact: *\r\n", Some(0)), NOW),
        Registered::Ok(vec![], Stored::Now)
    );
    assert_eq!(l.lookup("bob@localhost", NOW).map(|b| b.len()), Some(0));
}

#[test]
fn too_brief_and_clamped() {
    let mut l = loc();
    assert_eq!(
        run(
            &mut l,
            &register(1, "Contact: <sip:bob@h1>\r\n", Some(10)),
            NOW
        ),
        Registered::Reject {
            status: 423,
            reason: "Interval Too Brief",
            min_expires: Some(60)
        }
    );
    assert_eq!(
        run(
            &mut l,
            &register(2, "Contact: <sip:bob@h1>\r\n", Some(999_999)),
            NOW
        ),
        Registered::Ok(vec![("sip:bob@h1".into(), 7200)], Stored::Now)
    );
    assert!(matches!(
        run(
            &mut l,
            &register(3, "Contact: <sip:bob@h1>;q=2\r\n", None),
            NOW
        ),
        Registered::Reject { status: 400, .. }
    ));
}

#[test]
fn expired_bindings_do_not_route() {
    let mut l = loc();
    run(
        &mut l,
        &register(1, "Contact: <sip:bob@h1>\r\n", Some(60)),
        NOW,
    );
    assert_eq!(
        l.lookup("bob@localhost", NOW + 59).map(|b| b.len()),
        Some(1)
    );
    assert_eq!(
        l.lookup("bob@localhost", NOW + 60).map(|b| b.len()),
        Some(0)
    );
    assert_eq!(l.purge(NOW + 60).unwrap(), 1);
    assert_eq!(l.lookup("unknown@localhost", NOW), None);
}
