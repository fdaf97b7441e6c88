//! Engine tests of the grant stage: the permit token and the session secret for a
//! permitted INVITE, where they travel (load query, INVITE, responses upstream, 302 in
//! direct mode), that a refused caller gets none, and that the secret stays off hops
//! that are not TLS unless the operator allows it.

use std::net::SocketAddr;

use sip_core::message::{HeaderName, Message, Method};
use sip_core::permit::{SessionSecret, Token, TokenClaims};

use super::gate_tests::{
    answer_options, authed_invite_with, gated_with, register_bob, requests_to,
};
use super::tests::{Harness, status};
use crate::gate::GateSettings;

const BOB: &str = "127.0.0.1:5080";

fn header(m: &Message, h: HeaderName) -> Option<String> {
    m.header(h).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn harness(insecure_keys: bool) -> Harness {
    let mut h = gated_with(GateSettings {
        insecure_keys,
        ..GateSettings::default()
    });
    register_bob(&mut h, "");
    h
}

/// alice calls bob with `extra` headers; returns (load query, what followed its 200).
fn call(h: &mut Harness, extra: &str) -> (Message, Vec<(SocketAddr, Message)>) {
    let out = authed_invite_with(h, "alice", "wonderland", "bob", 1, extra);
    let q = requests_to(&out, BOB).remove(0);
    assert_eq!(q.method(), Some(&Method::Options));
    let after = h.recv(BOB, &answer_options(&q, 200));
    (q, after)
}

#[test]
fn permitted_call_carries_one_token_everywhere_and_no_key_on_udp() {
    let mut h = harness(false);
    let (q, after) = call(&mut h, "Permit-Token: forged\nPermit-Key: forged\n");
    // The callee hears of the call in the load query: token, caller, Call-ID.
    let qt = header(&q, HeaderName::PermitToken).expect("token in the load query");
    let token = qt.split(';').next().unwrap().to_owned();
    assert!(qt.contains(";caller=\"sip:alice@localhost\""), "{qt}");
    assert!(qt.contains(";call-id=\"gate-alice-1001\""), "{qt}");
    assert!(
        header(&q, HeaderName::PermitKey).is_none(),
        "no secret on UDP"
    );
    // It verifies for exactly this pair and call.
    let t = Token::parse(&token).unwrap();
    let claims = TokenClaims::new(
        "sip:alice@localhost",
        "sip:bob@localhost",
        "gate-alice-1001",
    );
    h.proxy
        .token_ring()
        .verify(&t, &claims, 1_800_000_000)
        .unwrap();
    let other = TokenClaims::new(
        "sip:mallory@localhost",
        "sip:bob@localhost",
        "gate-alice-1001",
    );
    assert!(
        h.proxy
            .token_ring()
            .verify(&t, &other, 1_800_000_000)
            .is_err()
    );
    // The INVITE carries the same token, and none of what the caller put there.
    let inv = requests_to(&after, BOB).remove(0);
    assert_eq!(inv.method(), Some(&Method::Invite));
    let tokens: Vec<&[u8]> = inv.headers(HeaderName::PermitToken).collect();
    assert_eq!(tokens, vec![token.as_bytes()]);
    assert!(inv.header(HeaderName::PermitKey).is_none());
    // The caller learns it in the responses that route the call.
    let ringing = answer(&inv, 180);
    let out = h.recv(BOB, &ringing);
    assert_eq!(status(&out), vec![180]);
    assert_eq!(
        header(&out[0].1, HeaderName::PermitToken),
        Some(token.clone())
    );
    assert!(out[0].1.header(HeaderName::PermitKey).is_none());
    assert_eq!(h.proxy.stats.grants, 1);
}

#[test]
fn insecure_keys_send_one_secret_to_both_sides() {
    let mut h = harness(true);
    let (q, after) = call(&mut h, "");
    let k1 = header(&q, HeaderName::PermitKey).expect("secret in the load query");
    SessionSecret::parse(&k1).unwrap();
    let inv = requests_to(&after, BOB).remove(0);
    assert_eq!(header(&inv, HeaderName::PermitKey), Some(k1.clone()));
    let out = h.recv(BOB, &answer(&inv, 200));
    assert_eq!(status(&out), vec![200]);
    assert_eq!(header(&out[0].1, HeaderName::PermitKey), Some(k1));
}

#[test]
fn direct_mode_answers_302_with_the_token_in_the_contact() {
    let mut h = harness(false);
    let (q, after) = call(&mut h, "Request-Disposition: redirect\n");
    let token = header(&q, HeaderName::PermitToken).unwrap();
    let token = token.split(';').next().unwrap();
    assert!(
        requests_to(&after, BOB).is_empty(),
        "no INVITE to the callee"
    );
    assert_eq!(status(&after), vec![302]);
    let r = &after[0].1;
    assert_eq!(
        header(r, HeaderName::Contact),
        Some(format!("<sip:bob@{BOB}?Permit-Token={token}>"))
    );
    assert_eq!(h.proxy.stats.redirects, 1);
}

#[test]
fn refused_and_busy_calls_get_no_token() {
    let mut h = harness(true);
    let out = authed_invite_with(&mut h, "mallory", "evil", "bob", 1, "");
    assert_eq!(status(&out), vec![100, 403]);
    assert!(
        out.iter()
            .all(|(_, m)| m.header(HeaderName::PermitToken).is_none()
                && m.header(HeaderName::PermitKey).is_none())
    );
    assert_eq!(h.proxy.stats.grants, 0);
    let out = authed_invite_with(&mut h, "alice", "wonderland", "bob", 5, "");
    let q = requests_to(&out, BOB).remove(0);
    let out = h.recv(BOB, &answer_options(&q, 486));
    assert_eq!(status(&out), vec![486]);
    assert!(out[0].1.header(HeaderName::PermitToken).is_none());
}

fn answer(inv: &Message, code: u16) -> String {
    let mut vias = String::new();
    for v in inv.headers(HeaderName::Via) {
        vias.push_str("Via: ");
        vias.push_str(&String::from_utf8_lossy(v));
        vias.push('\n');
    }
    let hv = |n| String::from_utf8_lossy(inv.header(n).unwrap()).into_owned();
    format!(
        "SIP/2.0 {code} X\n{vias}From: {}\nTo: {};tag=b1\nCall-ID: {}\nCSeq: {}\nContact: <sip:bob@{BOB}>\nPermit-Key: from-callee\nContent-Length: 0\n\n",
        hv(HeaderName::From),
        hv(HeaderName::To),
        hv(HeaderName::CallId),
        hv(HeaderName::CSeq)
    )
}
