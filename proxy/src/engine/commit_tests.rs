//! The registrar with its writes behind (commit.rs): a REGISTER's 200 goes out only
//! after the group holding its write committed, a failed group answers 500, a full
//! queue 503, and routing sees a binding only once it is stored; with two engine
//! shards, each releases its own REGISTERs by their write's outcome, whichever shard
//! took the outcome from the worker, and a binding one shard wrote routes the other's
//! calls.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::tests::{Harness, addr, invite};
use crate::auth::AuthSettings;
use crate::gate::GateSettings;
use crate::location::{Location, QueueFull, Settled, WriteBehind};
use crate::store::Write;
use crate::users::MemoryUsers;

const BOB: &str = "127.0.0.1:5080";
const ALICE: &str = "127.0.0.1:5070";

/// A store worker the test drives by hand.
#[derive(Clone, Default)]
struct Manual {
    submitted: Arc<Mutex<Vec<(u64, Write)>>>,
    outcomes: Arc<Mutex<VecDeque<Settled>>>,
    /// Writes it takes before its queue is full.
    room: Arc<Mutex<usize>>,
}

impl WriteBehind for Manual {
    fn submit(&mut self, seq: u64, write: Write) -> Result<(), QueueFull> {
        let mut room = self.room.lock().unwrap();
        if *room == 0 {
            return Err(QueueFull);
        }
        *room -= 1;
        self.submitted.lock().unwrap().push((seq, write));
        Ok(())
    }
    fn poll_done(&mut self) -> Option<Settled> {
        self.outcomes.lock().unwrap().pop_front()
    }
}

fn harness(room: usize) -> (Harness, Manual) {
    let worker = Manual::default();
    *worker.room.lock().unwrap() = room;
    let location = Location::open_behind(Vec::new(), Box::new(worker.clone()));
    let h = Harness::with_location(
        AuthSettings {
            enabled: false,
            ..AuthSettings::default()
        },
        MemoryUsers::default(),
        GateSettings {
            enabled: false,
            ..GateSettings::default()
        },
        super::tests::permits(&[]),
        location,
    );
    (h, worker)
}

fn settle(h: &mut Harness, w: &Manual, through: u64, ok: bool) -> Vec<u16> {
    w.outcomes
        .lock()
        .unwrap()
        .push_back(Settled { through, ok });
    h.proxy.handle_wake(h.now);
    h.drain()
        .into_iter()
        .map(|(_, m)| m.status().unwrap())
        .collect()
}

fn invite_status(h: &mut Harness, branch: &str) -> Vec<(String, Option<u16>)> {
    h.recv(ALICE, &invite("bob", branch, 70))
        .into_iter()
        .map(|(to, m)| (to.to_string(), m.status()))
        .collect()
}

#[test]
fn register_is_answered_only_after_its_write_commits() {
    let (mut h, w) = harness(100);
    assert!(
        h.register("bob", BOB, 600).is_empty(),
        "no 200 before the commit"
    );
    {
        let sub = w.submitted.lock().unwrap();
        assert_eq!(sub.len(), 1);
        let (seq, Write::Put { aor, bindings, .. }) = &sub[0] else {
            panic!("a put expected, got {:?}", sub[0]);
        };
        assert_eq!((*seq, &**aor, bindings.len()), (1, "bob@localhost", 1));
    }
    // Not stored yet: routing does not know bob.
    let early = invite_status(&mut h, "z9hG4bKearly");
    assert!(early.iter().all(|(to, _)| to == ALICE), "{early:?}");
    assert!(early.iter().any(|(_, s)| *s == Some(404)), "{early:?}");
    assert_eq!(h.proxy.writes_pending(), (1, 1));

    assert_eq!(settle(&mut h, &w, 1, true), vec![200]);
    assert_eq!(h.proxy.writes_pending(), (0, 0));
    let routed = invite_status(&mut h, "z9hG4bKlate");
    assert!(
        routed
            .iter()
            .any(|(to, s)| *to == addr(BOB).to_string() && s.is_none()),
        "the INVITE reaches bob once his binding is stored: {routed:?}"
    );
}

#[test]
fn a_failed_group_answers_500_and_nothing_becomes_visible() {
    let (mut h, w) = harness(100);
    assert!(h.register("bob", BOB, 600).is_empty());
    assert!(h.register("carol", "127.0.0.1:5090", 600).is_empty());
    assert_eq!(settle(&mut h, &w, 2, false), vec![500, 500]);
    assert_eq!(h.proxy.location_counts(), (0, 0));
    assert_eq!(h.proxy.writes_pending(), (0, 0));
    // The registrar's view fell back to what is stored: a new REGISTER writes one
    // binding, not one on top of the lost one.
    assert!(h.register("bob", "127.0.0.1:5081", 600).is_empty());
    let sub = w.submitted.lock().unwrap();
    let Some((3, Write::Put { bindings, .. })) = sub.last() else {
        panic!("third write expected: {sub:?}");
    };
    assert_eq!(bindings.len(), 1);
}

#[test]
fn groups_settle_in_order_and_a_refresh_builds_on_a_pending_write() {
    let (mut h, w) = harness(100);
    assert!(h.register("bob", BOB, 600).is_empty());
    // A second contact for bob before the first write committed keeps the first.
    assert!(h.register("bob", "127.0.0.1:5081", 600).is_empty());
    assert!(h.register("carol", "127.0.0.1:5090", 600).is_empty());
    {
        let sub = w.submitted.lock().unwrap();
        let Some((2, Write::Put { bindings, .. })) = sub.get(1) else {
            panic!("second write expected: {sub:?}");
        };
        assert_eq!(bindings.len(), 2, "the refresh saw the pending binding");
    }
    // The first group holds writes 1 and 2, the second write 3.
    assert_eq!(settle(&mut h, &w, 2, true), vec![200, 200]);
    assert_eq!(h.proxy.location_counts(), (1, 2));
    assert_eq!(h.proxy.writes_pending(), (1, 1));
    assert_eq!(settle(&mut h, &w, 3, true), vec![200]);
    assert_eq!(h.proxy.location_counts(), (2, 3));
}

#[test]
fn a_full_store_queue_answers_503_with_retry_after() {
    let (mut h, w) = harness(1);
    assert!(h.register("bob", BOB, 600).is_empty());
    let out = h.register("carol", "127.0.0.1:5090", 600);
    assert_eq!(out.len(), 1, "{out:?}");
    let (_, m) = &out[0];
    assert_eq!(m.status(), Some(503));
    assert_eq!(m.other_headers(b"Retry-After").next(), Some(&b"1"[..]));
    assert_eq!(w.submitted.lock().unwrap().len(), 1);
    assert_eq!(settle(&mut h, &w, 1, true), vec![200]);
}

#[test]
fn two_shards_release_their_own_registers_and_share_bindings() {
    let (mut h0, w) = harness(100);
    let mut h1 = h0.shard(1);
    assert!(h0.register("bob", BOB, 600).is_empty());
    assert!(h1.register("carol", "127.0.0.1:5090", 600).is_empty());
    assert!(h1.register("dave", "127.0.0.1:5091", 600).is_empty());
    let seqs: Vec<u64> = w
        .submitted
        .lock()
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3], "one sequence for both shards");
    // The worker commits writes 1 and 2 and fails 3; shard 0 takes both outcomes.
    {
        let mut o = w.outcomes.lock().unwrap();
        o.push_back(Settled {
            through: 2,
            ok: true,
        });
        o.push_back(Settled {
            through: 3,
            ok: false,
        });
    }
    h0.proxy.handle_wake(h0.now);
    let statuses = |h: &mut Harness| -> Vec<u16> {
        h.drain()
            .into_iter()
            .map(|(_, m)| m.status().unwrap())
            .collect()
    };
    assert_eq!(statuses(&mut h0), vec![200], "bob's REGISTER, on shard 0");
    assert_eq!(
        h1.proxy.writes_pending().0,
        2,
        "shard 1 still holds its two"
    );
    h1.proxy.handle_wake(h1.now);
    assert_eq!(
        statuses(&mut h1),
        vec![200, 500],
        "carol stored, dave's group failed"
    );
    assert_eq!(h1.proxy.writes_pending(), (0, 0));
    assert_eq!(h0.proxy.location_counts(), (2, 2));

    // Shard 1 routes a call to bob, whose binding shard 0 wrote; its branch names
    // shard 1, so bob's answer is steered back to it.
    let out = h1.recv(ALICE, &invite("bob", "z9hG4bKcross", 70));
    let (_, fwd) = out
        .iter()
        .find(|(to, m)| *to == addr(BOB) && m.is_request())
        .unwrap_or_else(|| panic!("the INVITE reaches bob: {out:?}"));
    let via = fwd.top_via().unwrap();
    let branch = via.branch().unwrap();
    assert_eq!(crate::route::branch_shard(branch), Some(1), "{via:?}");
    let steering = crate::shard::Steering::new(2);
    let mut answer = String::from("SIP/2.0 180 Ringing\r\n");
    for v in fwd.headers(sip_core::message::HeaderName::Via) {
        answer.push_str("Via: ");
        answer.push_str(&String::from_utf8_lossy(v));
        answer.push_str("\r\n");
    }
    answer.push_str("To: <sip:bob@localhost>;tag=b\r\nCall-ID: x\r\n\r\n");
    assert_eq!(steering.shard_of(answer.as_bytes()), 1);
}
