//! Engine tests of the gate: 403 for strangers and unknown callees alike, the load
//! query (OPTIONS) before a permitted INVITE, 486 for a busy or full callee, and no
//! byte of the callee's address in any answer to a refused caller.

use std::net::SocketAddr;
use std::time::Duration;

use sip_core::message::{HeaderName, Message, Method};

use super::auth_tests::{challenges, credentials, register, users};
use super::tests::{Harness, addr, permits, status};
use crate::auth::AuthSettings;
use crate::gate::GateSettings;

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

fn gated(load_query: bool) -> Harness {
    gated_with(GateSettings {
        load_query,
        ..GateSettings::default()
    })
}

/// alice and bob (`users()`), and mallory (password `evil`).
pub(super) fn gate_users() -> crate::users::MemoryUsers {
    let mut users = users();
    users.users.insert(
        "mallory".into(),
        crate::users::UserRecord::new("mallory", "localhost", "evil"),
    );
    users
}

pub(super) fn gated_with(gate: GateSettings) -> Harness {
    Harness::with(
        AuthSettings::default(),
        gate_users(),
        gate,
        permits(&[("bob@localhost", &["alice@localhost"])]),
    )
}

/// Registers bob (authenticated) at BOB with extra Contact parameters.
pub(super) fn register_bob(h: &mut Harness, contact_params: &str) {
    let reg = |cseq, auth: Option<&str>| {
        register("bob", cseq, auth).replace(ALICE, BOB).replace(
            &format!("<sip:bob@{BOB}>"),
            &format!("<sip:bob@{BOB}>{contact_params}"),
        )
    };
    let out = h.recv(BOB, &reg(1, None));
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let creds = credentials(
        "bob",
        "builder",
        "MD5",
        &ch[0].1,
        "REGISTER",
        "sip:localhost",
        1,
    );
    assert_eq!(status(&h.recv(BOB, &reg(2, Some(&creds)))), vec![200]);
}

fn invite_with(from: &str, to: &str, n: u32, auth: Option<&str>, extra: &str) -> String {
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\n"))
        .unwrap_or_default();
    format!(
        "INVITE sip:{to}@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKg{from}{n}
From: <sip:{from}@localhost>;tag=f{n}
To: <sip:{to}@localhost>
Call-ID: gate-{from}-{n}
CSeq: {n} INVITE
Contact: <sip:{from}@{ALICE}>
{auth}{extra}Max-Forwards: 70
Content-Length: 0

"
    )
}

/// An INVITE from `user` (password `pw`) to `to`, authenticated after its 407.
pub(super) fn authed_invite(
    h: &mut Harness,
    user: &str,
    pw: &str,
    to: &str,
    n: u32,
) -> Vec<(SocketAddr, Message)> {
    authed_invite_with(h, user, pw, to, n, "")
}

/// Like `authed_invite`, with `extra` header lines in both attempts.
pub(super) fn authed_invite_with(
    h: &mut Harness,
    user: &str,
    pw: &str,
    to: &str,
    n: u32,
    extra: &str,
) -> Vec<(SocketAddr, Message)> {
    let out = h.recv(ALICE, &invite_with(user, to, n, None, extra));
    assert_eq!(status(&out), vec![100, 407]);
    let ch = challenges(&out[1].1, HeaderName::ProxyAuthenticate);
    let creds = credentials(
        user,
        pw,
        "MD5",
        &ch[0].1,
        "INVITE",
        &format!("sip:{to}@localhost"),
        1,
    );
    h.recv(ALICE, &invite_with(user, to, n + 1000, Some(&creds), extra))
}

pub(super) fn answer_options(query: &Message, code: u16) -> String {
    let h = |n| String::from_utf8_lossy(query.header(n).unwrap()).into_owned();
    format!(
        "SIP/2.0 {code} Whatever\nVia: {}\nFrom: {}\nTo: {};tag=q1\nCall-ID: {}\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        h(HeaderName::Via),
        h(HeaderName::From),
        h(HeaderName::To),
        h(HeaderName::CallId)
    )
}

pub(super) fn requests_to(out: &[(SocketAddr, Message)], dest: &str) -> Vec<Message> {
    out.iter()
        .filter(|(d, m)| *d == addr(dest) && m.is_request())
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn permitted_caller_reaches_callee_after_the_load_query() {
    let mut h = gated(true);
    register_bob(&mut h, "");
    let out = authed_invite(&mut h, "alice", "wonderland", "bob", 1);
    let to_bob = requests_to(&out, BOB);
    assert_eq!(to_bob.len(), 1);
    let q = &to_bob[0];
    assert_eq!(
        q.method(),
        Some(&Method::Options),
        "the callee is asked first"
    );
    // Only the Permit-Token header names the caller (the callee's UA needs it to
    // check the INVITE); nothing else of the caller's request is in the query.
    let without_token: Vec<&str> = std::str::from_utf8(q.as_bytes())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("Permit-Token:"))
        .collect();
    assert!(
        !without_token.concat().contains("alice"),
        "the query carries nothing else of the caller's"
    );
    assert_ne!(
        q.call_id(),
        Some(&b"gate-alice-1001"[..]),
        "own Call-ID (RFC 3261 §11)"
    );
    let out = h.recv(BOB, &answer_options(q, 200));
    let to_bob = requests_to(&out, BOB);
    assert_eq!(to_bob.len(), 1);
    assert_eq!(to_bob[0].method(), Some(&Method::Invite));
    assert_eq!(to_bob[0].call_id(), Some(&b"gate-alice-1001"[..]));
}

#[test]
fn stranger_and_unknown_callee_get_the_same_403_and_learn_nothing() {
    let mut h = gated(true);
    register_bob(&mut h, "");
    let refused = authed_invite(&mut h, "mallory", "evil", "bob", 1);
    let unknown = authed_invite(&mut h, "mallory", "evil", "nobody", 10);
    assert_eq!(status(&refused), vec![100, 403]);
    assert_eq!(status(&unknown), vec![100, 403]);
    assert!(
        requests_to(&refused, BOB).is_empty(),
        "nothing reaches the callee"
    );
    // Byte for byte the same apart from per-request fields.
    let normalise = |m: &Message| {
        let text = String::from_utf8_lossy(m.as_bytes()).into_owned();
        text.lines()
            .filter(|l| {
                !l.starts_with("Via:")
                    && !l.starts_with("From:")
                    && !l.starts_with("Call-ID:")
                    && !l.starts_with("CSeq:")
            })
            .map(|l| {
                if l.starts_with("To:") {
                    l.split(";tag=").next().unwrap().replace("nobody", "bob")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(normalise(&refused[1].1), normalise(&unknown[1].1));
    // No byte of any response to the refused caller carries the callee's address.
    for (_, m) in refused.iter().chain(&unknown) {
        let bytes = m.as_bytes();
        assert!(
            !bytes.windows(BOB.len()).any(|w| w == BOB.as_bytes()),
            "{}",
            String::from_utf8_lossy(bytes)
        );
        assert!(!bytes.windows(4).any(|w| w == b"5080"));
        assert!(m.header(HeaderName::Contact).is_none());
    }
    assert_eq!(h.proxy.stats.gate_refused, 2);
}

#[test]
fn busy_answer_to_the_query_gives_486_and_no_invite() {
    let mut h = gated(true);
    register_bob(&mut h, "");
    let out = authed_invite(&mut h, "alice", "wonderland", "bob", 1);
    let q = requests_to(&out, BOB).remove(0);
    let out = h.recv(BOB, &answer_options(&q, 486));
    assert_eq!(status(&out), vec![486]);
    assert!(requests_to(&out, BOB).is_empty());
}

#[test]
fn silent_callee_gives_480_at_the_query_deadline() {
    let mut h = gated(true);
    register_bob(&mut h, "");
    let out = authed_invite(&mut h, "alice", "wonderland", "bob", 1);
    assert_eq!(requests_to(&out, BOB).len(), 1);
    // (The 407 of the first attempt is retransmitted meanwhile: it was never ACKed.)
    let out = h.advance(Duration::from_millis(1999));
    assert!(!status(&out).contains(&480));
    assert_eq!(h.proxy.stats.traffic.query_timeouts, 0);
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(status(&out), vec![480]);
    assert_eq!(h.proxy.stats.traffic.query_timeouts, 1);
}

#[test]
fn full_callee_gets_486_without_a_query() {
    let mut h = gated(true);
    register_bob(&mut h, ";max-calls=1;load-query=0");
    // First call: no query (load-query=0), answered 200: one active dialog.
    let out = authed_invite(&mut h, "alice", "wonderland", "bob", 1);
    let inv = requests_to(&out, BOB).remove(0);
    assert_eq!(inv.method(), Some(&Method::Invite));
    let mut vias = String::new();
    for v in inv.headers(HeaderName::Via) {
        vias.push_str("Via: ");
        vias.push_str(&String::from_utf8_lossy(v));
        vias.push('\n');
    }
    let h_ = |n| String::from_utf8_lossy(inv.header(n).unwrap()).into_owned();
    let ok = format!(
        "SIP/2.0 200 OK\n{vias}From: {}\nTo: {};tag=b1\nCall-ID: {}\nCSeq: {}\nContact: <sip:bob@{BOB}>\nContent-Length: 0\n\n",
        h_(HeaderName::From),
        h_(HeaderName::To),
        h_(HeaderName::CallId),
        h_(HeaderName::CSeq)
    );
    assert_eq!(status(&h.recv(BOB, &ok)), vec![200]);
    // Second call: the limit is reached, 486 at once and nothing sent to bob.
    let out = authed_invite(&mut h, "alice", "wonderland", "bob", 2);
    assert_eq!(status(&out), vec![100, 486]);
    assert!(requests_to(&out, BOB).is_empty(), "no OPTIONS, no INVITE");
    assert_eq!(h.proxy.stats.busy, 1);
}

pub(super) fn publish(
    user: &str,
    owner: &str,
    n: u32,
    auth: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let auth = auth
        .map(|a| format!("Authorization: {a}\n"))
        .unwrap_or_default();
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/permit-list+json\n".to_owned()
    };
    format!(
        "PUBLISH sip:{owner}@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKpub{user}{n}
From: <sip:{user}@localhost>;tag=p{n}
To: <sip:{owner}@localhost>
Call-ID: pub-{user}-{n}
CSeq: {n} PUBLISH
Event: permit-list
{auth}{extra}{ct}Max-Forwards: 70
Content-Length: {}

{body}",
        body.len()
    )
}

/// PUBLISH as `user` (password `pw`) to `owner`'s list, authenticated after its 401.
fn authed_publish(
    h: &mut Harness,
    user: &str,
    pw: &str,
    owner: &str,
    n: u32,
    extra: &str,
    body: &str,
) -> Message {
    let signed = signed_publish(h, (user, pw), owner, n, extra, body);
    let out = h.recv(ALICE, &signed);
    assert_eq!(out.len(), 1);
    out[0].1.clone()
}

/// PUBLISH number `n` as `user` to `owner`'s list: sent once for its 401, then
/// returned with credentials (number `n + 1`), not yet sent.
pub(super) fn signed_publish(
    h: &mut Harness,
    (user, pw): (&str, &str),
    owner: &str,
    n: u32,
    extra: &str,
    body: &str,
) -> String {
    let out = h.recv(ALICE, &publish(user, owner, n, None, extra, body));
    assert_eq!(status(&out), vec![401]);
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let creds = credentials(
        user,
        pw,
        "MD5",
        &ch[0].1,
        "PUBLISH",
        &format!("sip:{owner}@localhost"),
        1,
    );
    publish(user, owner, n + 1, Some(&creds), extra, body)
}

#[test]
fn callee_manages_its_own_list_over_sip() {
    let mut h = gated(false);
    register_bob(&mut h, "");
    // Mallory is not on bob's list yet.
    assert_eq!(
        status(&authed_invite(&mut h, "mallory", "evil", "bob", 1)),
        vec![100, 403]
    );
    // Bob adds mallory; the 200 carries a fresh entity-tag.
    let r = authed_publish(
        &mut h,
        "bob",
        "builder",
        "bob",
        10,
        "",
        r#"{"add":["mallory@localhost"]}"#,
    );
    assert_eq!(r.status(), Some(200));
    let etag = String::from_utf8(r.other_headers(b"SIP-ETag").next().unwrap().to_vec()).unwrap();
    let out = authed_invite(&mut h, "mallory", "evil", "bob", 20);
    assert_eq!(
        requests_to(&out, BOB).len(),
        1,
        "now permitted (no load query configured)"
    );
    // Reading the list: PUBLISH without body.
    let r = authed_publish(&mut h, "bob", "builder", "bob", 30, "", "");
    assert_eq!(r.status(), Some(200));
    let listed = String::from_utf8_lossy(r.body()).into_owned();
    assert!(
        listed.contains("alice@localhost") && listed.contains("mallory@localhost"),
        "{listed}"
    );
    // A stale SIP-If-Match is refused with 412 and changes nothing.
    let r = authed_publish(
        &mut h,
        "bob",
        "builder",
        "bob",
        40,
        "SIP-If-Match: 0000000000000001\n",
        r#"{"replace":[]}"#,
    );
    assert_eq!(r.status(), Some(412));
    // The current tag works: bob replaces his list with alice only.
    let hdr = format!("SIP-If-Match: {etag}\n");
    let r = authed_publish(
        &mut h,
        "bob",
        "builder",
        "bob",
        50,
        &hdr,
        r#"{"replace":["alice@localhost"]}"#,
    );
    assert_eq!(r.status(), Some(200));
    assert_ne!(
        r.other_headers(b"SIP-ETag").next().unwrap(),
        etag.as_bytes()
    );
    assert_eq!(
        status(&authed_invite(&mut h, "mallory", "evil", "bob", 60)),
        vec![100, 403]
    );
}

#[test]
fn only_the_owner_changes_a_list_and_bad_bodies_are_refused() {
    let mut h = gated(false);
    let r = authed_publish(
        &mut h,
        "mallory",
        "evil",
        "bob",
        1,
        "",
        r#"{"add":["mallory@localhost"]}"#,
    );
    assert_eq!(r.status(), Some(403));
    let r = authed_publish(&mut h, "bob", "builder", "bob", 10, "", "{not json");
    assert_eq!(r.status(), Some(400));
    let r = authed_publish(
        &mut h,
        "bob",
        "builder",
        "bob",
        20,
        "",
        r#"{"add":["not an aor"]}"#,
    );
    assert_eq!(r.status(), Some(400));
    let wrong_type = publish("bob", "bob", 30, None, "", "x")
        .replace("application/permit-list+json", "text/plain");
    let out = h.recv(ALICE, &wrong_type);
    let ch = challenges(&out[0].1, HeaderName::WwwAuthenticate);
    let creds = credentials(
        "bob",
        "builder",
        "MD5",
        &ch[0].1,
        "PUBLISH",
        "sip:bob@localhost",
        1,
    );
    let signed = publish("bob", "bob", 31, Some(&creds), "", "x")
        .replace("application/permit-list+json", "text/plain");
    let out = h.recv(ALICE, &signed);
    assert_eq!(status(&out), vec![415]);
    assert_eq!(
        out[0].1.header(HeaderName::Accept),
        Some(&b"application/permit-list+json"[..])
    );
}
