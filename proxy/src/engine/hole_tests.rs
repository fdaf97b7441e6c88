//! Engine tests of the gate's former holes, tried as an attacker would: every method out
//! of dialog is gated (not a list of methods), a registered address is no way around
//! the list, the proxy is no open relay, and in-dialog requests pass only with the
//! dialog seal of a dialog the gate let through, towards one of its parties.

use std::fmt::Write as _;
use std::net::SocketAddr;

use sip_core::message::{HeaderName, Message, Method};

use super::auth_tests::{challenges, credentials, register};
use super::gate_tests::gate_users;
use super::tests::{Harness, addr, permits, status};
use crate::auth::AuthSettings;
use crate::gate::GateSettings;

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";
const MALLORY: &str = "127.0.0.1:5090";

/// alice, bob and mallory; bob's list holds alice, alice's list holds mallory.
fn harness() -> Harness {
    let users = gate_users();
    let gate = GateSettings {
        load_query: false,
        ..GateSettings::default()
    };
    let mut h = Harness::with(
        AuthSettings::default(),
        users,
        gate,
        permits(&[
            ("bob@localhost", &["alice@localhost"]),
            ("alice@localhost", &["mallory@localhost"]),
        ]),
    );
    register_as(&mut h, "bob", "builder", BOB);
    register_as(&mut h, "alice", "wonderland", ALICE);
    h
}

fn register_as(h: &mut Harness, user: &str, pw: &str, at: &str) {
    let reg = |cseq, auth: Option<&str>| {
        register(user, cseq, auth)
            .replace(ALICE, at)
            .replace("auth-reg-", &format!("auth-reg-{at}-"))
            .replace("z9hG4bKra", &format!("z9hG4bKra{user}"))
    };
    let out = h.recv(at, &reg(1, None));
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let creds = credentials(user, pw, "MD5", &ch[0].1, "REGISTER", "sip:localhost", 1);
    assert_eq!(status(&h.recv(at, &reg(2, Some(&creds)))), vec![200]);
}

/// A request `method ruri` from `user` at MALLORY's address, with `extra` headers.
fn request(method: &str, ruri: &str, user: &str, n: u32, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP {MALLORY};branch=z9hG4bKh{user}{method}{n}
From: <sip:{user}@localhost>;tag=m{n}
To: <sip:target@localhost>
Call-ID: hole-{user}-{n}
CSeq: {n} {method}
Contact: <sip:{user}@{MALLORY}>
{extra}Max-Forwards: 70
Content-Length: 0

"
    )
}

/// Sends `method ruri` as `user` (password `pw`), answering the 407; returns what the
/// proxy sent for the authenticated attempt.
fn authed(
    h: &mut Harness,
    (user, pw): (&str, &str),
    method: &str,
    ruri: &str,
    n: u32,
) -> Vec<(SocketAddr, Message)> {
    let out = h.recv(MALLORY, &request(method, ruri, user, n, ""));
    let last = out.last().expect("an answer");
    assert_eq!(last.1.status(), Some(407), "{method} {ruri} is challenged");
    let ch = challenges(&last.1, HeaderName::ProxyAuthenticate);
    let creds = credentials(user, pw, "MD5", &ch[0].1, method, ruri, 1);
    let extra = format!("Proxy-Authorization: {creds}\n");
    h.recv(MALLORY, &request(method, ruri, user, n + 1000, &extra))
}

fn reached(out: &[(SocketAddr, Message)], who: &str) -> bool {
    out.iter().any(|(d, m)| *d == addr(who) && m.is_request())
}

fn leaks(out: &[(SocketAddr, Message)], address: &str) -> bool {
    let port = address.rsplit(':').next().unwrap();
    out.iter().any(|(_, m)| {
        m.as_bytes()
            .windows(port.len())
            .any(|w| w == port.as_bytes())
    })
}

const MALLORY_PW: (&str, &str) = ("mallory", "evil");

#[test]
fn every_method_to_a_callee_is_gated() {
    let mut h = harness();
    for (i, method) in [
        "OPTIONS", "INFO", "NOTIFY", "REFER", "PUBLISH", "FOO", "MESSAGE",
    ]
    .into_iter()
    .enumerate()
    {
        let out = authed(
            &mut h,
            MALLORY_PW,
            method,
            "sip:bob@localhost",
            i as u32 * 10,
        );
        assert_eq!(
            out.last().and_then(|(_, m)| m.status()),
            Some(403),
            "{method}"
        );
        assert!(!reached(&out, BOB), "{method} reached bob");
        assert!(!leaks(&out, BOB), "{method} leaked bob's address");
    }
    // The permitted caller's OPTIONS goes through.
    let out = authed(
        &mut h,
        ("alice", "wonderland"),
        "OPTIONS",
        "sip:bob@localhost",
        500,
    );
    assert!(reached(&out, BOB));
}

#[test]
fn a_registered_address_is_no_way_around_the_list() {
    let mut h = harness();
    for (i, ruri) in [
        format!("sip:bob@{BOB}"),
        format!("sip:{BOB}"),
        "sip:bob@localhost:5080".to_owned(),
        "sip:anyone@127.0.0.1:5080;transport=udp".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let out = authed(&mut h, MALLORY_PW, "INVITE", ruri, i as u32 * 10 + 100);
        assert_eq!(status(&out).last(), Some(&403), "{ruri}");
        assert!(!reached(&out, BOB), "{ruri} reached bob");
    }
    assert!(h.proxy.stats.gate_refused >= 4);
}

#[test]
fn no_open_relay_for_foreign_domains() {
    let mut h = harness();
    let out = h.recv(
        MALLORY,
        &request("INVITE", "sip:x@127.0.0.9:5099", "nobody", 1, ""),
    );
    assert_eq!(status(&out), vec![100, 407]);
    assert!(!out.iter().any(|(d, _)| *d == addr("127.0.0.9:5099")));
    let out = h.recv(
        MALLORY,
        &request("MESSAGE", "sip:x@127.0.0.9:5099", "nobody", 2, ""),
    );
    assert_eq!(status(&out), vec![407]);
}

/// The INVITE the proxy forwarded and a 200 for it from `callee` with To tag `tag`.
fn ok_for(inv: &Message, contact: &str, tag: &str) -> String {
    let mut head = String::new();
    for v in inv.headers(HeaderName::Via) {
        let _ = writeln!(head, "Via: {}", String::from_utf8_lossy(v));
    }
    for r in inv.headers(HeaderName::RecordRoute) {
        let _ = writeln!(head, "Record-Route: {}", String::from_utf8_lossy(r));
    }
    let hv = |n| String::from_utf8_lossy(inv.header(n).unwrap()).into_owned();
    format!(
        "SIP/2.0 200 OK\n{head}From: {}\nTo: {};tag={tag}\nCall-ID: {}\nCSeq: {}\nContact: <sip:x@{contact}>\nContent-Length: 0\n\n",
        hv(HeaderName::From),
        hv(HeaderName::To),
        hv(HeaderName::CallId),
        hv(HeaderName::CSeq)
    )
}

/// An in-dialog request.
#[allow(clippy::too_many_arguments)]
fn in_dialog(
    method: &str,
    ruri: &str,
    from: (&str, &str),
    to: (&str, &str),
    call_id: &str,
    route: &str,
    cseq: u32,
    via: &str,
) -> String {
    let route = if route.is_empty() {
        String::new()
    } else {
        format!("Route: {route}\n")
    };
    format!(
        "{method} {ruri} SIP/2.0
Via: SIP/2.0/UDP {via};branch=z9hG4bKd{method}{cseq}{call_id}
From: <sip:{}@localhost>;tag={}
To: <sip:{}@localhost>;tag={}
Call-ID: {call_id}
CSeq: {cseq} {method}
{route}Max-Forwards: 70
Content-Length: 0

",
        from.0, from.1, to.0, to.1
    )
}

/// alice calls bob through the gate; returns (Call-ID, alice's tag, Record-Route).
fn alice_calls_bob(h: &mut Harness) -> (String, String, String) {
    let out = authed(
        h,
        ("alice", "wonderland"),
        "INVITE",
        "sip:bob@localhost",
        700,
    );
    let inv = out
        .iter()
        .find(|(d, m)| *d == addr(BOB) && m.method() == Some(&Method::Invite))
        .map(|(_, m)| m.clone())
        .expect("INVITE reached bob");
    let rr = String::from_utf8_lossy(inv.header(HeaderName::RecordRoute).unwrap()).into_owned();
    assert!(rr.contains(";pm="), "sealed Record-Route: {rr}");
    let out = h.recv(BOB, &ok_for(&inv, BOB, "b1"));
    assert_eq!(status(&out), vec![200]);
    let cid = String::from_utf8_lossy(inv.call_id().unwrap()).into_owned();
    let tag = String::from_utf8_lossy(inv.from_tag().unwrap()).into_owned();
    (cid, tag, rr)
}

#[test]
fn real_dialogs_keep_working_both_ways() {
    let mut h = harness();
    let (cid, atag, rr) = alice_calls_bob(&mut h);
    let bob_contact = format!("sip:x@{BOB}");
    // ACK and BYE from alice along the route set.
    let ack = in_dialog(
        "ACK",
        &bob_contact,
        ("alice", &atag),
        ("bob", "b1"),
        &cid,
        &rr,
        1700,
        ALICE,
    );
    assert!(reached(&h.recv(ALICE, &ack), BOB), "ACK reaches bob");
    // A re-INVITE from bob towards alice (the callee's side, To tag = alice's tag).
    let reinvite = in_dialog(
        "INVITE",
        &format!("sip:alice@{ALICE}"),
        ("bob", "b1"),
        ("alice", &atag),
        &cid,
        &rr,
        1,
        BOB,
    );
    assert!(
        reached(&h.recv(BOB, &reinvite), ALICE),
        "re-INVITE reaches alice"
    );
    let bye = in_dialog(
        "BYE",
        &bob_contact,
        ("alice", &atag),
        ("bob", "b1"),
        &cid,
        &rr,
        1701,
        ALICE,
    );
    assert!(reached(&h.recv(ALICE, &bye), BOB), "BYE reaches bob");
    assert_eq!(h.proxy.stats.forged_dialogs, 0);
}

#[test]
fn forged_in_dialog_requests_reach_nobody() {
    let mut h = harness();
    let (cid, atag, rr) = alice_calls_bob(&mut h);
    let bare_route = "<sip:127.0.0.1:5060;lr>";
    let bob_contact = format!("sip:x@{BOB}");
    let cases = [
        // Invented To tag, our Route without a seal, to bob's AOR and to his address.
        (
            "INVITE",
            "sip:bob@localhost",
            "hole-1",
            bare_route.to_owned(),
        ),
        ("BYE", bob_contact.as_str(), "hole-2", bare_route.to_owned()),
        ("MESSAGE", bob_contact.as_str(), "hole-3", String::new()),
        // A real dialog's Record-Route copied into another Call-ID.
        ("INVITE", "sip:bob@localhost", "hole-4", rr.clone()),
        ("BYE", bob_contact.as_str(), "hole-5", rr.clone()),
    ];
    for (i, (method, ruri, call_id, route)) in cases.iter().enumerate() {
        let req = in_dialog(
            method,
            ruri,
            ("mallory", "m1"),
            ("bob", "forged"),
            call_id,
            route,
            i as u32 + 1,
            MALLORY,
        );
        let out = h.recv(MALLORY, &req);
        assert!(!reached(&out, BOB), "{method} {call_id} reached bob");
        assert!(!leaks(&out, BOB), "{method} {call_id} leaked bob's address");
        assert_eq!(status(&out).last(), Some(&403), "{method} {call_id}");
    }
    // A forged ACK is dropped without an answer.
    let ack = in_dialog(
        "ACK",
        &bob_contact,
        ("mallory", "m1"),
        ("bob", "forged"),
        "hole-6",
        &rr,
        9,
        MALLORY,
    );
    let out = h.recv(MALLORY, &ack);
    assert!(out.is_empty(), "{out:?}");
    let _ = (cid, atag);
    assert_eq!(h.proxy.stats.forged_dialogs, 6);
}

#[test]
fn a_sealed_dialog_cannot_be_aimed_at_a_third_party() {
    let mut h = harness();
    // mallory may call alice: a real, sealed dialog.
    let out = authed(&mut h, MALLORY_PW, "INVITE", "sip:alice@localhost", 800);
    let inv = out
        .iter()
        .find(|(d, m)| *d == addr(ALICE) && m.method() == Some(&Method::Invite))
        .map(|(_, m)| m.clone())
        .expect("INVITE reached alice");
    let rr = String::from_utf8_lossy(inv.header(HeaderName::RecordRoute).unwrap()).into_owned();
    let cid = String::from_utf8_lossy(inv.call_id().unwrap()).into_owned();
    let mtag = String::from_utf8_lossy(inv.from_tag().unwrap()).into_owned();
    h.recv(ALICE, &ok_for(&inv, ALICE, "a9"));
    // Same Call-ID, tags and seal, but aimed at bob (by address, by AOR, by Route).
    let bob_route = format!("{rr}, <sip:{BOB};lr>");
    for (i, (ruri, route)) in [
        (format!("sip:x@{BOB}"), rr.clone()),
        ("sip:bob@localhost".to_owned(), rr.clone()),
        (format!("sip:alice@{ALICE}"), bob_route),
    ]
    .iter()
    .enumerate()
    {
        let req = in_dialog(
            "INFO",
            ruri,
            ("mallory", &mtag),
            ("alice", "a9"),
            &cid,
            route,
            i as u32 + 2,
            MALLORY,
        );
        let out = h.recv(MALLORY, &req);
        assert!(!reached(&out, BOB), "{ruri} reached bob");
        assert_eq!(status(&out).last(), Some(&403), "{ruri}");
    }
    // The dialog itself still works towards alice.
    let req = in_dialog(
        "INFO",
        &format!("sip:alice@{ALICE}"),
        ("mallory", &mtag),
        ("alice", "a9"),
        &cid,
        &rr,
        9,
        MALLORY,
    );
    assert!(reached(&h.recv(MALLORY, &req), ALICE));
}

/// UAs that ignore Record-Route (SIPp's built-in scenarios) send in-dialog requests to
/// the proxy without the route set: they pass only for a dialog established here, with
/// its Call-ID and both tags.
#[test]
fn route_less_requests_pass_only_for_a_remembered_dialog() {
    let mut h = harness();
    let (cid, atag, _rr) = alice_calls_bob(&mut h);
    let bye = |to_tag: &str, call_id: &str, n| {
        in_dialog(
            "BYE",
            "sip:bob@localhost",
            ("alice", &atag),
            ("bob", to_tag),
            call_id,
            "",
            n,
            ALICE,
        )
    };
    let out = h.recv(ALICE, &bye("guess", &cid, 5));
    assert_eq!(status(&out), vec![403], "wrong To tag");
    let out = h.recv(ALICE, &bye("b1", "other-call", 6));
    assert_eq!(status(&out), vec![403], "wrong Call-ID");
    let out = h.recv(ALICE, &bye("b1", &cid, 7));
    assert!(reached(&out, BOB), "the real dialog's BYE passes");
}
