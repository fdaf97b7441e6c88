//! Engine tests of management PUBLISH through a permit writer (the running proxy's
//! writes off the engine thread): no answer before the write is done, the answer after
//! it, retransmissions absorbed meanwhile, the gate at once seeing the list the other
//! connection wrote, and 503 when the writer's queue is full.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sip_core::message::Message;

use super::gate_tests::{authed_invite, gate_users, register_bob, requests_to, signed_publish};
use super::tests::{Harness, status};
use crate::auth::AuthSettings;
use crate::gate::GateSettings;
use crate::location::QueueFull;
use crate::manage::{self, ManageReply, PermitWriter, PublishJob};
use crate::permits::{
    Aor, Changes, ETag, PermitEntry, PermitError, PermitStore, Permits, SqlitePermitStore,
    StoredList,
};
use crate::store::Durability;

const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";

/// A writer that holds its jobs until the test releases them, then writes them through
/// its own `Permits` (another SQLite connection, as the running proxy's writer).
#[derive(Clone)]
struct Deferred(Arc<Mutex<State>>);

struct State {
    permits: Permits,
    capacity: usize,
    waiting: VecDeque<PublishJob>,
    done: VecDeque<(u64, ManageReply)>,
}

impl Deferred {
    fn waiting(&self) -> usize {
        self.0.lock().unwrap().waiting.len()
    }

    fn release(&self) {
        let mut s = self.0.lock().unwrap();
        while let Some(job) = s.waiting.pop_front() {
            let r = manage::handle_publish(&mut s.permits, &job.owner, &job.msg);
            s.done.push_back((job.id, r));
        }
    }
}

impl PermitWriter for Deferred {
    fn submit(&mut self, job: PublishJob) -> Result<(), QueueFull> {
        let mut s = self.0.lock().unwrap();
        if s.waiting.len() >= s.capacity {
            return Err(QueueFull);
        }
        s.waiting.push_back(job);
        Ok(())
    }

    fn poll_done(&mut self) -> Option<(u64, ManageReply)> {
        self.0.lock().unwrap().done.pop_front()
    }
}

/// The engine's SQLite store as a PostgreSQL node sees its own: other connections'
/// changes are not noticed by the per-lookup poll until a notice arrives (here never),
/// only by `poll_changes_now`.
struct Unheard(SqlitePermitStore);

impl PermitStore for Unheard {
    fn load_all(
        &mut self,
        sink: &mut dyn FnMut(StoredList) -> Result<(), PermitError>,
    ) -> Result<(), PermitError> {
        self.0.load_all(sink)
    }
    fn load(&mut self, callee: &Aor) -> Result<Option<StoredList>, PermitError> {
        self.0.load(callee)
    }
    fn replace(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<(), PermitError> {
        self.0.replace(callee, entries, if_match, etag)
    }
    fn edit(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<usize, PermitError> {
        self.0.edit(callee, add, remove, if_match, etag)
    }
    fn import(&mut self, groups: &[(Aor, Vec<PermitEntry>, ETag)]) -> Result<(), PermitError> {
        self.0.import(groups)
    }
    fn poll_changes(&mut self) -> Result<Changes, PermitError> {
        Ok(Changes::None)
    }
    fn poll_changes_now(&mut self) -> Result<Changes, PermitError> {
        self.0.poll_changes()
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("permit-publish-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A gated proxy whose lists live in SQLite under `dir` (bob permits alice) and who
/// learns of other connections' changes only when it asks (`Unheard`), with a deferred
/// writer on a second connection to the same file.
fn harness(dir: &Path, capacity: usize) -> (Harness, Deferred) {
    use rand::SeedableRng;
    let store = Unheard(SqlitePermitStore::open(dir, Durability::Normal).unwrap());
    let mut permits =
        Permits::with_store(Box::new(store), rand::rngs::StdRng::seed_from_u64(5)).unwrap();
    let alice = PermitEntry::parse("alice@localhost").unwrap();
    permits
        .replace(&Aor::parse("bob@localhost").unwrap(), &[alice], None)
        .unwrap();
    let users = gate_users();
    let gate = GateSettings {
        load_query: false,
        ..GateSettings::default()
    };
    let mut h = Harness::with(AuthSettings::default(), users, gate, permits);
    let writer = Deferred(Arc::new(Mutex::new(State {
        permits: Permits::open_admin(dir, Durability::Normal).unwrap(),
        capacity,
        waiting: VecDeque::new(),
        done: VecDeque::new(),
    })));
    h.proxy.set_permit_writer(Box::new(writer.clone()));
    (h, writer)
}

/// Bob's PUBLISH number `n` of `body` to his own list, signed after its 401.
fn bob_signed(h: &mut Harness, n: u32, body: &str) -> String {
    signed_publish(h, ("bob", "builder"), "bob", n, "", body)
}

fn woken(h: &mut Harness) -> Vec<(std::net::SocketAddr, Message)> {
    h.proxy.handle_wake(h.now);
    h.drain()
}

#[test]
fn a_publish_is_answered_only_once_its_write_is_done_and_the_gate_sees_it() {
    let dir = scratch("answered");
    let (mut h, writer) = harness(&dir, 8);
    register_bob(&mut h, "");
    assert_eq!(
        status(&authed_invite(&mut h, "mallory", "evil", "bob", 1)),
        vec![100, 403]
    );

    let signed = bob_signed(&mut h, 10, r#"{"add":["mallory@localhost"]}"#);
    assert!(
        h.recv(ALICE, &signed).is_empty(),
        "no answer before the write"
    );
    // A retransmission while the write waits is absorbed, not written twice.
    assert!(h.recv(ALICE, &signed).is_empty());
    assert_eq!(writer.waiting(), 1);
    assert!(woken(&mut h).is_empty(), "nothing is done yet");

    writer.release();
    let out = woken(&mut h);
    assert_eq!(status(&out), vec![200]);
    assert!(out[0].1.other_headers(b"SIP-ETag").next().is_some());
    // The gate reads the table the engine holds: it took in the other connection's
    // write before the 200 went out, with no notice of the change needed.
    let out = authed_invite(&mut h, "mallory", "evil", "bob", 20);
    assert_eq!(requests_to(&out, BOB).len(), 1, "mallory is now permitted");
    // A read (no body) writes nothing: the engine answers it from that table at once.
    let read = bob_signed(&mut h, 30, "");
    let out = h.recv(ALICE, &read);
    assert_eq!(status(&out), vec![200]);
    assert!(String::from_utf8_lossy(out[0].1.body()).contains("mallory@localhost"));
    assert_eq!(writer.waiting(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_writer_queue_answers_503_and_writes_nothing() {
    let dir = scratch("full");
    let (mut h, writer) = harness(&dir, 1);
    let first = bob_signed(&mut h, 10, r#"{"add":["mallory@localhost"]}"#);
    assert!(h.recv(ALICE, &first).is_empty());
    let second = bob_signed(&mut h, 20, r#"{"replace":[]}"#);
    let out = h.recv(ALICE, &second);
    assert_eq!(status(&out), vec![503]);
    assert_eq!(
        out[0].1.other_headers(b"Retry-After").next(),
        Some(&b"1"[..])
    );
    writer.release();
    assert_eq!(status(&woken(&mut h)), vec![200]);
    // Only the first change was written: alice and mallory, not an emptied list.
    let mut reread = Permits::open(&dir, Durability::Normal).unwrap();
    assert!(reread.is_permitted("bob@localhost", "alice@localhost"));
    assert!(reread.is_permitted("bob@localhost", "mallory@localhost"));
    let _ = std::fs::remove_dir_all(&dir);
}
