//! Engine tests of direct mode for data (docs/profile.md "Data with attributes"): a
//! permitted MESSAGE with `Request-Disposition: redirect, queue` to a free callee gets
//! a 302 whose Contact carries a permit token the callee heard of in the load query;
//! to a busy callee it is stored (202) and no token is issued; without `redirect` a
//! MESSAGE gets no token; a stranger gets 403 and no token.

use std::net::SocketAddr;

use sip_core::message::{HeaderName, Message, Method};

use super::auth_tests::{challenges, credentials};
use super::gate_tests::{answer_options, gated_with, register_bob, requests_to};
use super::tests::{Harness, status};
use crate::gate::GateSettings;
use crate::mailbox::memory::MemoryItems;
use crate::mailbox::{Mailbox, Quotas};

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

fn harness() -> (Harness, MemoryItems) {
    let mut h = gated_with(GateSettings::default());
    let items = MemoryItems::default();
    h.proxy.set_mailbox(
        Mailbox::new(Box::new(items.clone()), Quotas::default()),
        true,
    );
    register_bob(&mut h, "");
    (h, items)
}

fn message(n: u32, user: &str, disposition: &str, auth: &str) -> String {
    format!(
        "MESSAGE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKdm{user}{n}
From: <sip:{user}@localhost>;tag=d{n}
To: <sip:bob@localhost>
Call-ID: direct-{user}-{n}
CSeq: {n} MESSAGE
Request-Disposition: {disposition}
{auth}Max-Forwards: 70
Content-Type: text/plain
Content-Length: 5

hello"
    )
}

/// `user`'s MESSAGE, authenticated after its 407; what the second attempt produced.
fn send(
    h: &mut Harness,
    (user, pw): (&str, &str),
    n: u32,
    disposition: &str,
) -> Vec<(SocketAddr, Message)> {
    let out = h.recv(ALICE, &message(n, user, disposition, ""));
    let challenge = out
        .iter()
        .find(|(_, m)| m.status() == Some(407))
        .map(|(_, m)| m.clone())
        .expect("a 407");
    let ch = challenges(&challenge, HeaderName::ProxyAuthenticate);
    let creds = credentials(user, pw, "MD5", &ch[0].1, "MESSAGE", "sip:bob@localhost", 1);
    let auth = format!("Proxy-Authorization: {creds}\n");
    h.recv(ALICE, &message(n + 1, user, disposition, &auth))
}

fn text(v: Option<&[u8]>) -> String {
    String::from_utf8_lossy(v.unwrap_or_default()).into_owned()
}

#[test]
fn free_callee_gets_a_redirect_with_the_token_it_was_told() {
    let (mut h, items) = harness();
    let out = send(&mut h, ("alice", "wonderland"), 10, "redirect, queue");
    let query = requests_to(&out, BOB).remove(0);
    assert_eq!(query.method(), Some(&Method::Options));
    let told = text(query.header(HeaderName::PermitToken));
    let token = told.split(';').next().unwrap().to_owned();
    assert!(told.contains("caller=\"sip:alice@localhost\""), "{told}");
    assert!(told.contains("call-id=\"direct-alice-11\""), "{told}");

    let after = h.recv(BOB, &answer_options(&query, 200));
    let Some(redirect) = after
        .iter()
        .find(|(_, m)| m.status() == Some(302))
        .map(|(_, m)| m.clone())
    else {
        panic!("no 302: {:?}", status(&after));
    };
    let contact = text(redirect.header(HeaderName::Contact));
    assert!(contact.contains(BOB), "{contact}");
    assert!(
        contact.contains(&format!("Permit-Token={token}")),
        "{contact}"
    );
    assert!(
        requests_to(&after, BOB).is_empty(),
        "the MESSAGE is not forwarded"
    );
    assert_eq!(items.all().len(), 0, "nothing stored");
}

#[test]
fn busy_callee_stores_the_data_and_no_redirect_follows() {
    let (mut h, items) = harness();
    let out = send(&mut h, ("alice", "wonderland"), 20, "redirect, queue");
    let query = requests_to(&out, BOB).remove(0);
    let after = h.recv(BOB, &answer_options(&query, 486));
    assert_eq!(status(&after), vec![202], "{after:?}");
    assert!(
        after
            .iter()
            .all(|(_, m)| m.header(HeaderName::Contact).is_none()
                || !text(m.header(HeaderName::Contact)).contains("Permit-Token"))
    );
    assert_eq!(items.all().len(), 1);
}

#[test]
fn without_redirect_a_message_gets_no_token() {
    let (mut h, _items) = harness();
    let out = send(&mut h, ("alice", "wonderland"), 30, "queue");
    let query = requests_to(&out, BOB).remove(0);
    assert!(query.header(HeaderName::PermitToken).is_none());
    let after = h.recv(BOB, &answer_options(&query, 200));
    let forwarded = requests_to(&after, BOB).remove(0);
    assert_eq!(forwarded.method(), Some(&Method::Message));
    assert!(forwarded.header(HeaderName::PermitToken).is_none());
}

#[test]
fn a_stranger_gets_403_and_no_token() {
    let (mut h, items) = harness();
    let out = send(&mut h, ("mallory", "evil"), 40, "redirect, queue");
    assert_eq!(status(&out), vec![403]);
    assert!(requests_to(&out, BOB).is_empty());
    assert_eq!(items.all().len(), 0);
}
