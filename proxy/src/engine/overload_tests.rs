//! Overload control on the virtual clock: over the high mark new INVITEs and REGISTERs
//! get 503 with Retry-After, while in-dialog requests, CANCEL, ACK and retransmissions
//! of transactions in progress are still handled; under the low mark everything passes.

use std::net::SocketAddr;
use std::time::Duration;

use sip_core::message::{HeaderName, Message, Method};

use super::tests::{Harness, addr, invite, status};

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The UAS's response to the forwarded request `req` (To tag `b1`).
fn answer(req: &Message, code: u16, reason: &str) -> String {
    let lines = |name, label: &str| {
        req.headers(name)
            .map(|v| format!("{label}: {}\n", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
            .concat()
    };
    let (vias, rr) = (
        lines(HeaderName::Via, "Via"),
        lines(HeaderName::RecordRoute, "Record-Route"),
    );
    let h = |n| String::from_utf8_lossy(req.header(n).unwrap()).into_owned();
    format!(
        "SIP/2.0 {code} {reason}\n{vias}From: {}\nTo: {};tag=b1\nCall-ID: {}\nCSeq: {}\n{rr}Contact: <sip:bob@{BOB}>\nContent-Length: 0\n\n",
        h(HeaderName::From),
        h(HeaderName::To),
        h(HeaderName::CallId),
        h(HeaderName::CSeq),
    )
}

/// The Retry-After header's value (RFC 3261 §20.33), read from the bytes.
fn retry_after(m: &Message) -> Option<String> {
    String::from_utf8_lossy(m.as_bytes())
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: ").map(str::to_owned))
}

/// The ACK of the 503 `resp` to alice's INVITE with branch `branch` (RFC 3261
/// §17.1.1.3: the INVITE's Via and CSeq number, the 503's To tag).
fn ack_of_503(branch: &str, resp: &Message) -> String {
    let tag = String::from_utf8_lossy(resp.to_tag().unwrap()).into_owned();
    invite("bob", branch, 70)
        .replace("INVITE sip", "ACK sip")
        .replace("1 INVITE", "1 ACK")
        .replace(
            "To: <sip:bob@localhost>",
            &format!("To: <sip:bob@localhost>;tag={tag}"),
        )
}

fn cancel_of(invite: &str) -> String {
    invite
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL")
}

fn requests(out: &[(SocketAddr, Message)]) -> Vec<(SocketAddr, Method)> {
    out.iter()
        .filter_map(|(d, m)| m.method().map(|x| (*d, x.clone())))
        .collect()
}

/// The shell reports `wait` now and again once it has lasted the default `sustain`
/// (engine::overload: only a sustained wait is overload).
fn report_wait(h: &mut Harness, wait: Duration) {
    let sustain = crate::engine::OverloadSettings::default().sustain;
    h.proxy.handle_load(h.now, wait);
    h.proxy.handle_load(h.now + sustain, wait);
}

/// Calls alice -> bob up to `code` from bob; returns the INVITE bob got.
fn call(h: &mut Harness, branch: &str, code: u16) -> Message {
    let out = h.recv(ALICE, &invite("bob", branch, 70));
    assert_eq!(
        status(&out),
        vec![100],
        "{branch}: only 100 Trying upstream"
    );
    let fwd = out[1].1.clone();
    let reason = if code == 200 { "OK" } else { "Ringing" };
    let out = h.recv(BOB, &answer(&fwd, code, reason));
    assert_eq!(status(&out), vec![code]);
    fwd
}

#[test]
fn over_the_mark_new_invite_and_register_get_503_with_retry_after() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    report_wait(&mut h, ms(40));
    assert!(h.proxy.overload_state().over);

    let live = h.proxy.live();
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKo1", 70));
    assert_eq!(status(&out), vec![503], "no 100 Trying, no forwarding");
    assert_eq!(out[0].0, addr(ALICE));
    let resp = &out[0].1;
    assert_eq!(retry_after(resp).as_deref(), Some("5"));
    assert!(resp.to_tag().is_some());
    assert_eq!(h.proxy.live(), live, "the 503 keeps no transaction");
    // A retransmission gets the same answer, with the same tag.
    let again = h.recv(ALICE, &invite("bob", "z9hG4bKo1", 70));
    assert_eq!(status(&again), vec![503]);
    assert_eq!(again[0].1.to_tag(), resp.to_tag());
    // Its ACK (hop-by-hop, RFC 3261 §17.1.1.3) is absorbed: nothing sent, nothing
    // counted as a forged dialog.
    assert!(h.recv(ALICE, &ack_of_503("z9hG4bKo1", resp)).is_empty());
    assert_eq!(h.proxy.stats.forged_dialogs, 0);

    // REGISTER: 503 before any store write; the binding is not added.
    let before = h.proxy.location_counts();
    let out = h.register("carol", "127.0.0.1:5090", 600);
    assert_eq!(status(&out), vec![503]);
    assert_eq!(retry_after(&out[0].1).as_deref(), Some("5"));
    assert_eq!(h.proxy.location_counts(), before);
    assert_eq!(h.proxy.stats.overload_refused, 3);
    assert_eq!(h.proxy.stats.overload_episodes, 1);
}

#[test]
fn over_the_mark_work_in_progress_is_still_handled() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    // An established call, a ringing call and an INVITE just sent to bob, all admitted
    // before the proxy went over capacity.
    let est = call(&mut h, "z9hG4bKe1", 200);
    let ringing = call(&mut h, "z9hG4bKr1", 180);
    let pending = h.recv(ALICE, &invite("bob", "z9hG4bKp1", 70));
    assert_eq!(status(&pending), vec![100]);

    report_wait(&mut h, ms(500));

    // In-dialog BYE along the recorded route: forwarded to alice.
    let route: Vec<String> = est
        .list(HeaderName::RecordRoute)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let bye = format!(
        "BYE sip:alice@{ALICE} SIP/2.0
Via: SIP/2.0/UDP {BOB};branch=z9hG4bKbye1
Route: {}
From: <sip:bob@localhost>;tag=b1
To: <sip:alice@localhost>;tag=a1
Call-ID: call-z9hG4bKe1
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

",
        route.join(", ")
    );
    let out = h.recv(BOB, &bye);
    assert_eq!(requests(&out), vec![(addr(ALICE), Method::Bye)]);

    // CANCEL of the ringing call: 200 to alice and the CANCEL to bob.
    let out = h.recv(ALICE, &cancel_of(&invite("bob", "z9hG4bKr1", 70)));
    assert_eq!(status(&out), vec![200]);
    assert_eq!(requests(&out), vec![(addr(BOB), Method::Cancel)]);
    let out = h.recv(BOB, &answer(&ringing, 487, "Request Terminated"));
    assert_eq!(status(&out), vec![487]);

    // The retransmitted INVITE of the transaction in progress: its server transaction
    // answers (the last provisional again), no 503.
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKp1", 70));
    assert_eq!(status(&out), vec![100]);
    // Bob's answer to it still reaches alice.
    let out = h.recv(BOB, &answer(&pending[1].1, 200, "OK"));
    assert_eq!(status(&out), vec![200]);

    // Only a new INVITE is refused.
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKn1", 70));
    assert_eq!(status(&out), vec![503]);
    assert_eq!(h.proxy.stats.overload_refused, 1);
}

#[test]
fn under_the_mark_everything_passes_and_hysteresis_holds() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    // Under the high mark: not over.
    report_wait(&mut h, ms(39));
    call(&mut h, "z9hG4bKu1", 180);
    assert_eq!(
        status(&h.register("carol", "127.0.0.1:5090", 600)),
        vec![200]
    );

    report_wait(&mut h, ms(45));
    assert_eq!(
        status(&h.recv(ALICE, &invite("bob", "z9hG4bKu2", 70))),
        vec![503]
    );
    // Between the marks the proxy stays over capacity.
    h.advance(Duration::from_secs(1));
    report_wait(&mut h, ms(20));
    assert_eq!(
        status(&h.recv(ALICE, &invite("bob", "z9hG4bKu3", 70))),
        vec![503]
    );
    // At the low mark it is back, and once admission has climbed back (a step per
    // `sustain`), calls and REGISTERs pass again.
    report_wait(&mut h, ms(10));
    assert!(!h.proxy.overload_state().over);
    h.advance(Duration::from_secs(1));
    report_wait(&mut h, ms(10));
    assert_eq!(h.proxy.overload_state().admitted_per_mille, 1000);
    call(&mut h, "z9hG4bKu4", 180);
    assert_eq!(
        status(&h.register("dave", "127.0.0.1:5091", 600)),
        vec![200]
    );
    assert_eq!(h.proxy.stats.overload_refused, 2);
}

#[test]
fn disabled_refuses_nothing() {
    let mut h = Harness::new();
    h.proxy.cfg.overload.enabled = false;
    h.register("bob", BOB, 600);
    report_wait(&mut h, Duration::from_secs(3));
    call(&mut h, "z9hG4bKd1", 180);
    assert_eq!(h.proxy.stats.overload_refused, 0);
}

/// With authentication on, the refusal comes before the digest stage: a new REGISTER and
/// a new INVITE get 503, not a 401/407 challenge, and no authentication is counted.
#[test]
fn over_the_mark_refusal_comes_before_the_challenge() {
    let mut h = Harness::with_auth(
        crate::auth::AuthSettings::default(),
        super::auth_tests::users(),
    );
    // Under the mark the same REGISTER is challenged.
    assert_eq!(status(&h.register("alice", ALICE, 600)), vec![401]);
    report_wait(&mut h, ms(100));
    let out = h.register("alice", ALICE, 600);
    assert_eq!(status(&out), vec![503]);
    assert!(out[0].1.header(HeaderName::WwwAuthenticate).is_none());
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKa1", 70));
    assert_eq!(status(&out), vec![503]);
    assert!(out[0].1.header(HeaderName::ProxyAuthenticate).is_none());
    assert_eq!(h.proxy.auth.lock().failures, 0);
    assert_eq!(h.proxy.stats.overload_refused, 2);
}

/// Refusals take a short path (no validation of every header), but only for requests
/// a 503 can answer: one without a Call-ID still gets the full path's 400, and the
/// ACK of a refusal is dropped without reaching the dialog checks.
#[test]
fn over_the_mark_the_short_path_keeps_to_what_a_503_can_answer() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    report_wait(&mut h, ms(40));
    let no_call_id: String = invite("bob", "z9hG4bKo7", 70)
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("Call-ID:"))
        .collect();
    let out = h.recv(ALICE, &no_call_id);
    assert_eq!(status(&out), vec![400]);
    assert_eq!(h.proxy.stats.overload_refused, 0);
    let out = h.recv(ALICE, &invite("bob", "z9hG4bKo8", 70));
    assert_eq!(status(&out), vec![503]);
    let before = h.proxy.stats.clone();
    assert!(
        h.recv(ALICE, &ack_of_503("z9hG4bKo8", &out[0].1))
            .is_empty()
    );
    assert_eq!(h.proxy.stats.received, before.received + 1);
    assert_eq!(h.proxy.stats.bad_requests, before.bad_requests);
    assert_eq!(h.proxy.stats.forged_dialogs, 0);
    assert_eq!(h.proxy.stats.overload_refused, 1);
}

/// After an episode, admission climbs back by an eighth per `sustain` rather than
/// letting in at once everything refused meanwhile: right after the low mark one new
/// INVITE in eight passes, after four steps one in two, after eight all.
#[test]
fn after_an_episode_admission_climbs_back_in_steps() {
    let mut h = Harness::new();
    h.register("bob", BOB, 600);
    report_wait(&mut h, ms(40));
    assert!(h.proxy.overload_state().over);
    h.proxy.handle_load(h.now, ms(5));
    assert!(!h.proxy.overload_state().over);
    let passed = |h: &mut Harness, tag: &str, n: usize| {
        (0..n)
            .filter(|i| {
                let out = h.recv(ALICE, &invite("bob", &format!("z9hG4bK{tag}{i}"), 70));
                status(&out) == vec![100]
            })
            .count()
    };
    assert_eq!(passed(&mut h, "r0x", 16), 2, "an eighth");
    let sustain = crate::engine::OverloadSettings::default().sustain;
    h.advance(sustain * 3);
    h.proxy.handle_load(h.now, ms(5));
    assert_eq!(passed(&mut h, "r3x", 16), 8, "a half");
    h.advance(sustain * 4);
    h.proxy.handle_load(h.now, ms(5));
    assert_eq!(passed(&mut h, "r7x", 16), 16, "all");
    assert_eq!(h.proxy.stats.overload_refused, 14 + 8);
}
