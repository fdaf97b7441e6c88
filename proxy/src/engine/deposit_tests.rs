//! Engine tests of store-and-forward on the virtual clock: deposits for offline, busy
//! and silent callees (202), 403 for strangers, quotas and a failing disk, expiry,
//! the transfer request with delivery and delete-on-2xx, redelivery after a lost 2xx,
//! bad transfer input, and the message-summary subscription.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::Digest as _;
use sip_core::message::{HeaderName, Message, Method};

use super::auth_tests::{challenges, credentials};
use super::gate_tests::{answer_options, gated_with, register_bob, requests_to};
use super::tests::{Harness, status};
use crate::gate::GateSettings;
use crate::mailbox::memory::{Failure, MemoryItems};
use crate::mailbox::{Mailbox, Quotas, summary};

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

/// A fresh number for each request of a test (branches and Call-IDs stay unique).
fn fresh() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn harness(quotas: Quotas) -> (Harness, MemoryItems) {
    let mut h = gated_with(GateSettings::default());
    let items = MemoryItems::default();
    h.proxy
        .set_mailbox(Mailbox::new(Box::new(items.clone()), quotas), true);
    (h, items)
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.as_bytes()).into_owned()
}

fn header(m: &Message, name: &str) -> Option<String> {
    m.other_headers(name.as_bytes())
        .next()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Sends the request `make(n, auth line)` from `from`, answers its 401/407 with
/// `user`'s credentials and returns what the authenticated attempt produced.
fn authed(
    h: &mut Harness,
    from: &str,
    (user, pw): (&str, &str),
    (method, uri): (&str, &str),
    make: &dyn Fn(u32, &str) -> String,
) -> Vec<(SocketAddr, Message)> {
    let out = h.recv(from, &make(1, ""));
    let Some(challenge) = out
        .iter()
        .find(|(_, m)| matches!(m.status(), Some(401 | 407)))
        .map(|(_, m)| m.clone())
    else {
        panic!("no challenge: {:?}", status(&out));
    };
    let (name, line) = if challenge.status() == Some(401) {
        (HeaderName::WwwAuthenticate, "Authorization")
    } else {
        (HeaderName::ProxyAuthenticate, "Proxy-Authorization")
    };
    let ch = challenges(&challenge, name);
    let creds = credentials(user, pw, "MD5", &ch[0].1, method, uri, 1);
    h.recv(from, &make(2, &format!("{line}: {creds}\n")))
}

/// A MESSAGE from `user` to `to`, asking to be queued unless `queue` is false.
fn message(n: u32, user: &str, to: &str, queue: bool, extra: &str, body: &str) -> String {
    let disposition = if queue {
        "Request-Disposition: queue\n"
    } else {
        ""
    };
    format!(
        "MESSAGE sip:{to}@localhost SIP/2.0
Via: SIP/2.0/UDP {ALICE};branch=z9hG4bKm{user}{to}{n}x{u}
From: <sip:{user}@localhost>;tag=m{n}
To: <sip:{to}@localhost>
Call-ID: msg-{user}-{to}-{n}-{u}
CSeq: {n} MESSAGE
{disposition}{extra}Max-Forwards: 70
Content-Type: text/plain
Content-Length: {}

{body}",
        body.len(),
        u = fresh(),
    )
}

/// alice's authenticated MESSAGE to `to` (password "wonderland").
fn deposit(h: &mut Harness, to: &str, extra: &str, body: &str) -> Vec<(SocketAddr, Message)> {
    deposit_as(h, ("alice", "wonderland"), to, extra, body)
}

fn deposit_as(
    h: &mut Harness,
    (user, pw): (&str, &str),
    to: &str,
    extra: &str,
    body: &str,
) -> Vec<(SocketAddr, Message)> {
    let uri = format!("sip:{to}@localhost");
    let (user_s, to_s, extra_s, body_s) = (
        user.to_owned(),
        to.to_owned(),
        extra.to_owned(),
        body.to_owned(),
    );
    authed(h, ALICE, (user, pw), ("MESSAGE", &uri), &move |n, auth| {
        message(
            n,
            &user_s,
            &to_s,
            true,
            &format!("{auth}{extra_s}"),
            &body_s,
        )
    })
}

/// A response from the UA to a request the proxy sent it (all its Vias copied).
fn respond(req: &Message, code: u16) -> String {
    let vias = req
        .headers(HeaderName::Via)
        .fold(String::new(), |mut out, v| {
            out.push_str("Via: ");
            out.push_str(&String::from_utf8_lossy(v));
            out.push('\n');
            out
        });
    let h = |n| String::from_utf8_lossy(req.header(n).unwrap()).into_owned();
    let to = h(HeaderName::To);
    let to = if to.contains("tag=") {
        to
    } else {
        format!("{to};tag=ua{code}")
    };
    format!(
        "SIP/2.0 {code} Whatever\n{vias}From: {}\nTo: {to}\nCall-ID: {}\nCSeq: {}\nContent-Length: 0\n\n",
        h(HeaderName::From),
        h(HeaderName::CallId),
        h(HeaderName::CSeq),
    )
}

fn of_method(out: &[(SocketAddr, Message)], dest: &str, method: Method) -> Vec<Message> {
    requests_to(out, dest)
        .into_iter()
        .filter(|m| m.method() == Some(&method))
        .collect()
}

fn final_status(out: &[(SocketAddr, Message)]) -> Option<u16> {
    status(out).into_iter().rfind(|s| *s >= 200)
}

#[test]
fn offline_callee_deposit_is_stored_with_its_attributes_and_answered_202() {
    let (mut h, items) = harness(Quotas::default());
    // bob never registered: without the queue directive the caller gets the failure.
    let uri = "sip:bob@localhost";
    let out = authed(
        &mut h,
        ALICE,
        ("alice", "wonderland"),
        ("MESSAGE", uri),
        &|n, auth| message(n, "alice", "bob", false, auth, "hi"),
    );
    assert_eq!(final_status(&out), Some(404));
    assert!(items.all().is_empty());

    let out = deposit(&mut h, "bob", "Permit-Attributes: Secret\n", "hello bob");
    assert_eq!(final_status(&out), Some(202));
    let resp = &out.last().unwrap().1;
    let stored = items.all();
    assert_eq!(stored.len(), 1);
    let item = &stored[0];
    assert_eq!(
        header(resp, "Permit-Item").unwrap(),
        format!("{};expires={}", item.id, item.expires_at)
    );
    assert_eq!(item.owner, "bob@localhost");
    assert_eq!(item.sender, "alice@localhost");
    assert_eq!(item.body, b"hello bob");
    assert_eq!(item.attributes, "secret");
    assert_eq!(item.content_type, "text/plain");
    assert_eq!(
        item.expires_at - item.stored_at,
        7 * 24 * 3600,
        "default expiry"
    );
    assert_eq!(
        item.sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(b"hello bob"))
    );
    assert_eq!(h.proxy.stats.deposits, 1);
}

#[test]
fn callee_busy_by_the_load_query_gets_a_notify_and_not_the_message() {
    let (mut h, items) = harness(Quotas::default());
    register_bob(&mut h, "");
    let out = deposit(&mut h, "bob", "", "are you there");
    let to_bob = requests_to(&out, BOB);
    assert_eq!(to_bob.len(), 1);
    assert_eq!(
        to_bob[0].method(),
        Some(&Method::Options),
        "the load query first"
    );
    assert!(status(&out).iter().all(|s| *s < 200), "the caller waits");
    let out = h.recv(BOB, &answer_options(&to_bob[0], 486));
    assert_eq!(final_status(&out), Some(202));
    assert_eq!(items.all().len(), 1);
    assert!(
        of_method(&out, BOB, Method::Message).is_empty(),
        "the MESSAGE is not forwarded"
    );
    // The lamp: an unsolicited NOTIFY to bob's binding listing the item.
    let notify = of_method(&out, BOB, Method::Notify);
    assert_eq!(notify.len(), 1);
    let n = &notify[0];
    assert_eq!(n.header(HeaderName::Event), Some(&b"message-summary"[..]));
    assert_eq!(
        n.header(HeaderName::ContentType),
        Some(summary::CONTENT_TYPE.as_bytes())
    );
    let body = String::from_utf8_lossy(n.body()).into_owned();
    assert!(
        body.starts_with(
            "Messages-Waiting: yes\r\nMessage-Account: sip:bob@localhost\r\nText-Message: 1/0\r\n"
        ),
        "{body}"
    );
    assert_eq!(
        summary::listed_ids(&body),
        vec![items.all()[0].id.to_string()]
    );
    assert!(body.contains("From: <sip:alice@localhost>"));
}

#[test]
fn silent_callee_and_failed_forwarding_store_too_but_a_free_callee_gets_the_message() {
    let (mut h, items) = harness(Quotas::default());
    register_bob(&mut h, "");
    // No answer to the load query before its deadline: stored.
    let out = deposit(&mut h, "bob", "", "one");
    assert_eq!(requests_to(&out, BOB).len(), 1);
    let out = h.advance(Duration::from_secs(3));
    assert_eq!(final_status(&out), Some(202));
    assert_eq!(items.all().len(), 1);
    // Available, but the forwarded MESSAGE is answered 480: stored instead of 480.
    let out = deposit(&mut h, "bob", "", "two");
    let out = h.recv(BOB, &answer_options(&requests_to(&out, BOB)[0], 200));
    let fwd = of_method(&out, BOB, Method::Message);
    assert_eq!(fwd.len(), 1);
    let out = h.recv(BOB, &respond(&fwd[0], 480));
    assert_eq!(final_status(&out), Some(202));
    assert_eq!(items.all().len(), 2);
    // A free callee takes it: its 200 goes up, nothing is stored.
    let out = deposit(&mut h, "bob", "", "three");
    let out = h.recv(BOB, &answer_options(&requests_to(&out, BOB)[0], 200));
    let fwd = of_method(&out, BOB, Method::Message);
    let out = h.recv(BOB, &respond(&fwd[0], 200));
    assert_eq!(final_status(&out), Some(200));
    assert_eq!(items.all().len(), 2);
    // A refusal that is not "unavailable" (603 Decline) is passed up, not stored.
    let out = deposit(&mut h, "bob", "", "four");
    let out = h.recv(BOB, &answer_options(&requests_to(&out, BOB)[0], 200));
    let fwd = of_method(&out, BOB, Method::Message);
    let out = h.recv(BOB, &respond(&fwd[0], 603));
    assert_eq!(final_status(&out), Some(603));
    assert_eq!(items.all().len(), 2);
}

#[test]
fn a_stranger_gets_403_and_stores_nothing() {
    let (mut h, items) = harness(Quotas::default());
    let out = deposit_as(&mut h, ("mallory", "evil"), "bob", "", "spam");
    assert_eq!(final_status(&out), Some(403));
    let out = deposit_as(&mut h, ("mallory", "evil"), "nobody", "", "spam");
    assert_eq!(final_status(&out), Some(403));
    assert!(items.all().is_empty());
    assert_eq!(h.proxy.stats.deposits, 0);
}

#[test]
fn quotas_size_and_a_failing_disk_refuse_without_storing() {
    let (mut h, items) = harness(Quotas {
        max_item_bytes: 10,
        callee_items: 2,
        caller_items: 3,
        ..Quotas::default()
    });
    assert_eq!(
        final_status(&deposit(&mut h, "bob", "", "12345678901")),
        Some(413)
    );
    assert_eq!(final_status(&deposit(&mut h, "bob", "", "a")), Some(202));
    assert_eq!(final_status(&deposit(&mut h, "bob", "", "b")), Some(202));
    let out = deposit(&mut h, "bob", "", "c");
    assert_eq!(final_status(&out), Some(486));
    assert_eq!(out.last().unwrap().1.reason(), Some(&b"Mailbox Full"[..]));
    assert_eq!(items.all().len(), 2);
    // A full disk (507) and a broken one (503), both with Retry-After, store nothing.
    let (mut h2, items2) = harness(Quotas::default());
    items2.fail_writes(Some(Failure::Full));
    let out = deposit(&mut h2, "bob", "", "x");
    assert_eq!(final_status(&out), Some(507));
    assert_eq!(
        header(&out.last().unwrap().1, "Retry-After").as_deref(),
        Some("600")
    );
    items2.fail_writes(Some(Failure::Unavailable));
    let out = deposit(&mut h2, "bob", "", "x");
    assert_eq!(final_status(&out), Some(503));
    assert!(header(&out.last().unwrap().1, "Retry-After").is_some());
    assert!(items2.all().is_empty());
    let out = deposit(&mut h2, "bob", "Permit-Attributes: a=b=c\n", "x");
    assert_eq!(final_status(&out), Some(400), "bad attributes");
}

#[test]
fn sender_quota_is_507() {
    let mut h = Harness::with(
        crate::auth::AuthSettings::default(),
        super::auth_tests::users(),
        GateSettings::default(),
        super::tests::permits(&[
            ("bob@localhost", &["alice@localhost"]),
            ("carol@localhost", &["alice@localhost"]),
        ]),
    );
    let items = MemoryItems::default();
    h.proxy.set_mailbox(
        Mailbox::new(
            Box::new(items.clone()),
            Quotas {
                caller_items: 1,
                ..Quotas::default()
            },
        ),
        true,
    );
    assert_eq!(final_status(&deposit(&mut h, "bob", "", "a")), Some(202));
    let out = deposit(&mut h, "carol", "", "b");
    assert_eq!(final_status(&out), Some(507));
    assert_eq!(
        out.last().unwrap().1.reason(),
        Some(&b"Sender Quota Exceeded"[..])
    );
    assert_eq!(items.all().len(), 1);
}

#[test]
fn items_expire_after_seven_days_by_default() {
    let (mut h, items) = harness(Quotas::default());
    assert_eq!(final_status(&deposit(&mut h, "bob", "", "old")), Some(202));
    h.advance(Duration::from_hours(7 * 24) - Duration::from_mins(2));
    assert_eq!(items.all().len(), 1, "still there a little before 7 days");
    h.advance(Duration::from_mins(4));
    assert!(items.all().is_empty(), "purged after 7 days");
}

/// bob's transfer request (MESSAGE to his own AOR, `Event: permit-transfer`).
fn transfer(h: &mut Harness, user: &str, pw: &str, body: &str) -> Vec<(SocketAddr, Message)> {
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/permit-transfer+json\n".to_owned()
    };
    let body = body.to_owned();
    authed(
        h,
        BOB,
        (user, pw),
        ("MESSAGE", "sip:bob@localhost"),
        &move |n, auth| {
            format!(
                "MESSAGE sip:bob@localhost SIP/2.0
Via: SIP/2.0/UDP {BOB};branch=z9hG4bKt{n}x{u}
From: <sip:bob@localhost>;tag=t{n}
To: <sip:bob@localhost>
Call-ID: transfer-{n}-{u}
CSeq: {n} MESSAGE
Event: permit-transfer
Contact: <sip:bob@{BOB}>
{auth}{ct}Max-Forwards: 70
Content-Length: {}

{body}",
                body.len(),
                u = fresh(),
            )
        },
    )
}

#[test]
fn transfer_delivers_each_item_and_deletes_it_only_on_2xx() {
    let (mut h, items) = harness(Quotas::default());
    assert_eq!(
        final_status(&deposit(
            &mut h,
            "bob",
            "Permit-Attributes: secret\n",
            "first"
        )),
        Some(202)
    );
    assert_eq!(
        final_status(&deposit(&mut h, "bob", "", "second")),
        Some(202)
    );
    // bob registers with items waiting: his contact gets the summary.
    let mut reg_out = Vec::new();
    {
        let out = h.recv(
            BOB,
            &super::auth_tests::register("bob", 1, None).replace(ALICE, BOB),
        );
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
        reg_out.extend(h.recv(
            BOB,
            &super::auth_tests::register("bob", 2, Some(&creds)).replace(ALICE, BOB),
        ));
    }
    assert_eq!(status(&reg_out), vec![200]);
    let notify = of_method(&reg_out, BOB, Method::Notify);
    assert_eq!(notify.len(), 1, "a NOTIFY after the REGISTER");
    assert_eq!(
        summary::listed_ids(&String::from_utf8_lossy(notify[0].body())).len(),
        2
    );

    let out = transfer(&mut h, "bob", "builder", "");
    let ok = out
        .iter()
        .find(|(_, m)| m.status() == Some(200))
        .expect("200")
        .1
        .clone();
    assert_eq!(header(&ok, "Permit-Items").as_deref(), Some("2"));
    let msgs = of_method(&out, BOB, Method::Message);
    assert_eq!(msgs.len(), 2);
    let stored = items.all();
    for m in &msgs {
        let id = header(m, "Permit-Item").unwrap();
        let id = id.split(';').next().unwrap();
        let item = stored
            .iter()
            .find(|i| i.id.to_string() == id)
            .expect("a stored id");
        assert_eq!(m.body(), &item.body[..]);
        assert_eq!(m.from().unwrap().uri, b"sip:alice@localhost");
        assert_eq!(m.header(HeaderName::ContentType), Some(&b"text/plain"[..]));
        assert_eq!(m.request_uri(), Some(format!("sip:bob@{BOB}").as_bytes()));
        assert_eq!(
            header(m, "Permit-Attributes").is_some(),
            item.attributes == "secret"
        );
        assert!(text(m).contains(&format!("sha256={}", crate::mailbox::hex(&item.sha256))));
    }
    // A transfer request while both are under way sends nothing twice.
    let again = transfer(&mut h, "bob", "builder", "");
    assert!(of_method(&again, BOB, Method::Message).is_empty());
    let again_ok = again.iter().find(|(_, m)| m.status() == Some(200));
    let again_ok = text(&again_ok.unwrap().1);
    assert!(again_ok.contains("\"pending\":[\""), "{again_ok}");
    // 2xx for the first: deleted (and the lamp updated); 500 for the second: kept.
    h.recv(BOB, &respond(&msgs[0], 200));
    h.recv(BOB, &respond(&msgs[1], 500));
    let left = items.all();
    assert_eq!(left.len(), 1);
    let second = header(&msgs[1], "Permit-Item").unwrap();
    assert!(second.starts_with(&left[0].id.to_string()));
    assert_eq!(h.proxy.stats.delivered, 1);
    // The next transfer brings the kept one again, under the same id; its 2xx is
    // lost: the transaction times out and the item stays.
    let out = transfer(&mut h, "bob", "builder", "");
    let redo = of_method(&out, BOB, Method::Message);
    assert_eq!(redo.len(), 1);
    assert_eq!(header(&redo[0], "Permit-Item"), Some(second.clone()));
    h.advance(Duration::from_secs(40));
    assert_eq!(items.all().len(), 1, "no 2xx arrived: kept");
    // Delivered once more (the UA acknowledges its duplicate with 2xx again): gone.
    let out = transfer(&mut h, "bob", "builder", "");
    let redo = of_method(&out, BOB, Method::Message);
    assert_eq!(header(&redo[0], "Permit-Item"), Some(second));
    h.recv(BOB, &respond(&redo[0], 200));
    h.recv(BOB, &respond(&redo[0], 200));
    assert!(items.all().is_empty());
    assert_eq!(h.proxy.stats.delivered, 2);
}

#[test]
fn bad_transfer_requests_change_nothing() {
    let mut h = Harness::with(
        crate::auth::AuthSettings::default(),
        super::auth_tests::users(),
        GateSettings::default(),
        super::tests::permits(&[
            ("bob@localhost", &["alice@localhost"]),
            ("alice@localhost", &["bob@localhost"]),
        ]),
    );
    let items = MemoryItems::default();
    h.proxy.set_mailbox(
        Mailbox::new(Box::new(items.clone()), Quotas::default()),
        true,
    );
    assert_eq!(
        final_status(&deposit(&mut h, "bob", "", "for bob")),
        Some(202)
    );
    // bob deposits for alice (offline): alice's item.
    let out = authed(
        &mut h,
        BOB,
        ("bob", "builder"),
        ("MESSAGE", "sip:alice@localhost"),
        &|n, auth| message(n, "bob", "alice", true, auth, "for alice").replace(ALICE, BOB),
    );
    assert_eq!(final_status(&out), Some(202));
    let all = items.all();
    let alices = all
        .iter()
        .find(|i| i.owner == "alice@localhost")
        .unwrap()
        .id;
    let bobs = all.iter().find(|i| i.owner == "bob@localhost").unwrap().id;
    let cases = [
        (format!("{{\"items\":[\"{alices}\"]}}"), 403),
        (
            format!("{{\"items\":[\"{bobs}\",\"{}\"]}}", "0".repeat(32)),
            404,
        ),
        ("{\"items\":[\"xyz\"]}".to_owned(), 400),
        ("{\"itemz\":[]}".to_owned(), 400),
        ("not json".to_owned(), 400),
        (format!("{{\"items\":[\"{}\"]}}", "a".repeat(20_000)), 413),
    ];
    for (body, code) in cases {
        let out = transfer(&mut h, "bob", "builder", &body);
        assert_eq!(final_status(&out), Some(code), "{body:.60}");
        assert!(
            of_method(&out, BOB, Method::Message).is_empty(),
            "nothing delivered"
        );
    }
    // alice may not fetch bob's mailbox.
    let out = transfer(&mut h, "alice", "wonderland", "");
    assert_eq!(final_status(&out), Some(403));
    assert!(of_method(&out, BOB, Method::Message).is_empty());
    assert_eq!(items.all().len(), 2, "nothing changed");
    // A good one by id delivers exactly that item.
    let out = transfer(
        &mut h,
        "bob",
        "builder",
        &format!("{{\"items\":[\"{bobs}\"]}}"),
    );
    assert_eq!(
        final_status(&out),
        Some(200),
        "{:?}",
        out.last().map(|(_, m)| text(m))
    );
    assert_eq!(of_method(&out, BOB, Method::Message).len(), 1);
}

/// A SUBSCRIBE for message-summary from BOB to `user`'s AOR.
fn subscribe(n: u32, user: &str, to_tag: Option<&str>, expires: u32, auth: &str) -> String {
    let tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "SUBSCRIBE sip:{user}@localhost SIP/2.0
Via: SIP/2.0/UDP {BOB};branch=z9hG4bKs{n}x{}
From: <sip:bob@localhost>;tag=sub1
To: <sip:{user}@localhost>{tag}
Call-ID: mwi-1
CSeq: {n} SUBSCRIBE
Event: message-summary
Accept: application/simple-message-summary
Contact: <sip:bob@{BOB}>
Expires: {expires}
{auth}Max-Forwards: 70
Content-Length: 0

",
        fresh()
    )
}

#[test]
fn the_owner_subscribes_to_message_summary_and_is_notified_of_each_change() {
    let (mut h, items) = harness(Quotas::default());
    register_bob(&mut h, "");
    let out = authed(
        &mut h,
        BOB,
        ("bob", "builder"),
        ("SUBSCRIBE", "sip:bob@localhost"),
        &|n, a| subscribe(n, "bob", None, 600, a),
    );
    let ok = out
        .iter()
        .find(|(_, m)| m.status() == Some(200))
        .expect("200")
        .1
        .clone();
    assert_eq!(ok.expires().unwrap(), Some(600));
    let tag = String::from_utf8_lossy(ok.to_tag().expect("a To tag")).into_owned();
    let n = of_method(&out, BOB, Method::Notify);
    assert_eq!(n.len(), 1, "an immediate NOTIFY (RFC 6665 §4.2.2)");
    assert_eq!(n[0].to_tag(), Some(&b"sub1"[..]));
    assert_eq!(n[0].from_tag(), Some(tag.as_bytes()));
    assert_eq!(n[0].call_id(), Some(&b"mwi-1"[..]));
    assert!(text(&n[0]).contains("Subscription-State: active;expires=600"));
    assert!(String::from_utf8_lossy(n[0].body()).starts_with("Messages-Waiting: no"));
    h.recv(BOB, &respond(&n[0], 200));
    // A deposit: an in-dialog NOTIFY, and no second, unsolicited one to the same UA.
    let out = deposit(&mut h, "bob", "", "lamp on");
    let out = h.recv(BOB, &answer_options(&requests_to(&out, BOB)[0], 486));
    assert_eq!(final_status(&out), Some(202));
    let n2 = of_method(&out, BOB, Method::Notify);
    assert_eq!(n2.len(), 1);
    assert_eq!(n2[0].call_id(), Some(&b"mwi-1"[..]));
    assert!(n2[0].cseq().unwrap().seq > n[0].cseq().unwrap().seq);
    assert!(String::from_utf8_lossy(n2[0].body()).starts_with("Messages-Waiting: yes"));
    assert_eq!(items.all().len(), 1);
    // mallory may not watch bob's mailbox; a refresh with a wrong tag is 481.
    let out = authed(
        &mut h,
        BOB,
        ("mallory", "evil"),
        ("SUBSCRIBE", "sip:bob@localhost"),
        &|n, a| subscribe(n + 10, "bob", None, 600, a),
    );
    assert_eq!(final_status(&out), Some(403));
    let out = authed(
        &mut h,
        BOB,
        ("bob", "builder"),
        ("SUBSCRIBE", "sip:bob@localhost"),
        &|n, a| subscribe(n + 20, "bob", Some("wrong"), 600, a),
    );
    assert_eq!(final_status(&out), Some(481));
    let out = authed(
        &mut h,
        BOB,
        ("bob", "builder"),
        ("SUBSCRIBE", "sip:bob@localhost"),
        &|n, a| subscribe(n + 30, "bob", None, 5, a),
    );
    assert_eq!(final_status(&out), Some(423));
    // Unsubscribe: 200 and a final NOTIFY.
    let out = authed(
        &mut h,
        BOB,
        ("bob", "builder"),
        ("SUBSCRIBE", "sip:bob@localhost"),
        &|n, a| subscribe(n + 40, "bob", Some(&tag), 0, a),
    );
    assert_eq!(final_status(&out), Some(200));
    let n3 = of_method(&out, BOB, Method::Notify);
    assert_eq!(n3.len(), 1);
    assert!(text(&n3[0]).contains("Subscription-State: terminated"));
    assert_eq!(h.proxy.sf.subs.len(), 0);
}

#[test]
fn with_the_store_off_a_queued_message_fails_as_usual() {
    let mut h = gated_with(GateSettings::default());
    let items = MemoryItems::default();
    h.proxy.set_mailbox(
        Mailbox::new(Box::new(items.clone()), Quotas::default()),
        false,
    );
    let out = deposit(&mut h, "bob", "", "nobody home");
    assert_eq!(final_status(&out), Some(404), "bob never registered");
    assert!(items.all().is_empty());
}

#[test]
fn subscriptions_end_at_their_expiry() {
    let (mut h, _items) = harness(Quotas::default());
    let out = authed(
        &mut h,
        BOB,
        ("bob", "builder"),
        ("SUBSCRIBE", "sip:bob@localhost"),
        &|n, a| subscribe(n, "bob", None, 60, a),
    );
    assert_eq!(final_status(&out), Some(200));
    assert_eq!(h.proxy.sf.subs.len(), 1);
    // Still there just before, gone after the next purge past its expiry.
    h.advance(Duration::from_secs(59));
    assert_eq!(h.proxy.sf.subs.len(), 1);
    h.advance(Duration::from_mins(2));
    assert_eq!(h.proxy.sf.subs.len(), 0);
    // A deposit now sends no in-dialog NOTIFY (bob has no binding either).
    let out = deposit(&mut h, "bob", "", "later");
    assert_eq!(final_status(&out), Some(202));
    assert!(of_method(&out, BOB, Method::Notify).is_empty());
}

/// alice announces a file for bob (`application/permit-upload+json`).
fn announce(h: &mut Harness, body: &str) -> Vec<(SocketAddr, Message)> {
    let body = body.to_owned();
    authed(
        h,
        ALICE,
        ("alice", "wonderland"),
        ("MESSAGE", "sip:bob@localhost"),
        &move |n, auth| {
            message(n, "alice", "bob", true, auth, &body).replace(
                "Content-Type: text/plain",
                "Content-Type: application/permit-upload+json",
            )
        },
    )
}

#[test]
fn an_upload_gets_a_signed_url_and_once_complete_is_announced_and_delivered_as_a_link() {
    use crate::mailbox::{Item, StoredItems as _};
    use crate::upload::{FILE_TYPE, FileRef, Purpose, Tokens};
    let (mut h, items) = harness(Quotas::default());
    let digest = crate::mailbox::hex(&sha2::Sha256::digest(b"file bytes"));
    let ok = format!(
        "{{\"size\":10,\"sha256\":\"{digest}\",\"type\":\"image/png\",\"name\":\"p.png\"}}"
    );
    assert_eq!(
        final_status(&announce(&mut h, &ok)),
        Some(501),
        "no listener"
    );
    let tokens = Tokens::new([5; 32], "http://127.0.0.1:8080".into());
    h.proxy.set_uploads(tokens.clone(), 3600);
    let bad = ok.replace(&digest, "xyz");
    assert_eq!(final_status(&announce(&mut h, &bad)), Some(400));
    let huge = ok.replace("\"size\":10", "\"size\":52428801");
    assert_eq!(final_status(&announce(&mut h, &huge)), Some(413));
    let stranger = authed(
        &mut h,
        ALICE,
        ("mallory", "evil"),
        ("MESSAGE", "sip:bob@localhost"),
        &|n, auth| {
            message(n, "mallory", "bob", true, auth, "{}").replace(
                "Content-Type: text/plain",
                "Content-Type: application/permit-upload+json",
            )
        },
    );
    assert_eq!(final_status(&stranger), Some(403));
    assert!(items.slots().is_empty());

    let out = announce(&mut h, &ok);
    assert_eq!(final_status(&out), Some(202));
    let resp = &out.last().unwrap().1;
    let slots = items.slots();
    assert_eq!(slots.len(), 1);
    let slot = &slots[0];
    assert_eq!((slot.size, slot.name.as_deref()), (10, Some("p.png")));
    assert!(
        items.all().is_empty(),
        "no item before the upload is complete"
    );
    let url = header(resp, "Permit-Upload").unwrap();
    let prefix = format!("<http://127.0.0.1:8080/upload/{}?t=", slot.id);
    assert!(url.starts_with(&prefix), "{url}");
    let token = url[prefix.len()..].trim_end_matches('>');
    assert!(tokens.check(Purpose::Upload, &slot.id, token, slot.created_at));
    assert!(!tokens.check(Purpose::Download, &slot.id, token, slot.created_at));

    // The listener completes it (as crate::upload::http does): bob is told at the
    // next purge, and his transfer gets the link with a download URL.
    register_bob(&mut h, "");
    let body = serde_json::to_vec(&FileRef {
        file: slot.id.to_string(),
        name: slot.name.clone(),
        content_type: slot.content_type.clone(),
        size: 10,
        sha256: digest.clone(),
    })
    .unwrap();
    let mut item = Item::new(
        slot.id,
        &slot.owner,
        &slot.sender,
        FILE_TYPE,
        "",
        body.clone(),
        slot.created_at,
        slot.created_at + 600_000,
    );
    item.sha256 = slot.sha256;
    assert!(items.clone().complete_slot(&item).unwrap());
    let out = h.advance(Duration::from_mins(1));
    let mut notify = of_method(&out, BOB, Method::Notify);
    // One NOTIFY, retransmitted over UDP while bob does not answer.
    notify.dedup_by(|a, b| a.call_id() == b.call_id());
    assert_eq!(notify.len(), 1, "bob hears of the complete upload");
    let listed = String::from_utf8_lossy(notify[0].body()).into_owned();
    assert!(
        listed.contains(&format!(
            "Permit-Item: {};type=\"{FILE_TYPE}\";size=10;sha256={digest}",
            slot.id
        )),
        "{listed}"
    );
    let out = transfer(&mut h, "bob", "builder", "");
    let msgs = of_method(&out, BOB, Method::Message);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body(), &body[..]);
    let download = header(&msgs[0], "Permit-Download").unwrap();
    let prefix = format!("<http://127.0.0.1:8080/files/{}?t=", slot.id);
    assert!(download.starts_with(&prefix), "{download}");
    let token = download[prefix.len()..].trim_end_matches('>');
    assert!(tokens.check(Purpose::Download, &slot.id, token, slot.created_at));
}

/// A deposit writer that holds jobs until released (the running proxy's is a thread):
/// each released job is written into `mailbox` as the thread would.
#[derive(Clone)]
struct DeferredDeposits(std::sync::Arc<std::sync::Mutex<Deferring>>);

struct Deferring {
    mailbox: Mailbox,
    capacity: usize,
    waiting: std::collections::VecDeque<crate::mailbox::DepositJob>,
    done: std::collections::VecDeque<(u64, Result<(), crate::mailbox::DepositError>)>,
}

impl DeferredDeposits {
    fn release(&self) {
        let mut s = self.0.lock().unwrap();
        while let Some(job) = s.waiting.pop_front() {
            let outcome = s.mailbox.deposit(&job.item, job.unix_now);
            s.done.push_back((job.ticket, outcome));
        }
    }
}

impl crate::mailbox::DepositWriter for DeferredDeposits {
    fn submit(
        &mut self,
        job: crate::mailbox::DepositJob,
    ) -> Result<(), crate::location::QueueFull> {
        let mut s = self.0.lock().unwrap();
        if s.waiting.len() >= s.capacity {
            return Err(crate::location::QueueFull);
        }
        s.waiting.push_back(job);
        Ok(())
    }

    fn poll_done(&mut self) -> Option<(u64, Result<(), crate::mailbox::DepositError>)> {
        self.0.lock().unwrap().done.pop_front()
    }
}

/// With a deposit writer (the running proxy), a deposit is answered only once its
/// write is done: 202 when stored, the storage failure when not, and 503 while the
/// writer's queue is full. Nothing is written on the engine's thread.
#[test]
fn a_deposit_is_answered_only_once_the_writer_stored_it() {
    let mut h = gated_with(GateSettings::default());
    let items = MemoryItems::default();
    h.proxy.set_mailbox(
        Mailbox::new(Box::new(MemoryItems::default()), Quotas::default()),
        true,
    );
    let writer = DeferredDeposits(std::sync::Arc::new(std::sync::Mutex::new(Deferring {
        mailbox: Mailbox::new(Box::new(items.clone()), Quotas::default()),
        capacity: 1,
        waiting: std::collections::VecDeque::new(),
        done: std::collections::VecDeque::new(),
    })));
    h.proxy.set_deposit_writer(Box::new(writer.clone()));
    let woken = |h: &mut Harness| {
        h.proxy.handle_wake(h.now);
        h.drain()
    };

    let out = deposit(&mut h, "bob", "", "hello bob");
    assert_eq!(final_status(&out), None, "no answer before the write");
    assert!(items.all().is_empty());
    // The queue holds one: the next deposit is refused for now.
    let out = deposit(&mut h, "bob", "", "second");
    assert_eq!(final_status(&out), Some(503));
    assert!(header(&out.last().unwrap().1, "Retry-After").is_some());
    assert!(woken(&mut h).is_empty(), "nothing is done yet");

    writer.release();
    let out = woken(&mut h);
    assert_eq!(final_status(&out), Some(202));
    let stored = items.all();
    assert_eq!(stored.len(), 1, "the writer's store, not the engine's");
    assert_eq!(stored[0].body, b"hello bob");
    assert_eq!(
        header(&out.last().unwrap().1, "Permit-Item").unwrap(),
        format!("{};expires={}", stored[0].id, stored[0].expires_at)
    );
    assert_eq!(h.proxy.stats.deposits, 1);

    // A write that fails is answered with the failure, and stores nothing.
    items.fail_writes(Some(Failure::Full));
    assert_eq!(final_status(&deposit(&mut h, "bob", "", "x")), None);
    writer.release();
    assert_eq!(final_status(&woken(&mut h)), Some(507));
    assert_eq!(items.all().len(), 1);
    assert_eq!(h.proxy.stats.deposits, 1);
}
