//! The store worker of the running proxy (shell side of [`WriteBehind`]): binding
//! writes leave the engine's thread and are committed in groups, one SQLite
//! transaction for whatever queued up while the previous group was committing.
//!
//! The worker is woken only from its idle state. A write that finds the worker idle
//! rings it and commits at once, so under light load a group is one write. While writes
//! keep coming, the worker does not wait on the queue: after each group it pauses for
//! [`GATHER`] and takes what arrived meanwhile (at most `max_group`). A worker that
//! blocked on the queue after every group had to be woken by the engine's thread for
//! nearly every group, a futex call each time: measured at 30,000 REGISTER/s, this
//! change took the engine's thread from 9.0–9.3 to 8.4–8.6 µs per REGISTER, and the
//! store's from 3.0–3.4 to 2.3–2.4 µs.
//!
//! The engine sends a REGISTER's 200 only after the group holding its write committed
//! (engine `settle_writes`), so kill -9 loses no binding that was answered 200; a group
//! that fails is reported as failed and its REGISTERs get 500.
//!
//! [`PermitWorker`] does the same for the callees' own list changes (management
//! PUBLISH), and [`DepositWorker`] for stored items (deposits): written on their
//! thread, answered by the engine once committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Notify;

use crate::location::{QueueFull, Settled, WriteBehind};
use crate::mailbox::{DepositError, DepositJob, DepositWriter, Mailbox};
use crate::manage::{self, ManageReply, PermitWriter, PublishJob};
use crate::permits::Permits;
use crate::store::{LocationStore, Write};

/// Limits of the store worker.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Writes queued and not yet committed; more are refused (503 to the REGISTER).
    pub queue: usize,
    /// Writes per transaction.
    pub max_group: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            queue: 65_536,
            max_group: 4_096,
        }
    }
}

/// How long the busy worker lets writes gather after a group before it takes the
/// next one: the most a write waits for its group to start, beyond the commit in
/// progress, while writes keep coming.
const GATHER: Duration = Duration::from_micros(200);

/// The engine's handle on the store worker.
pub struct GroupCommit {
    to_worker: Option<SyncSender<(u64, Write)>>,
    done: Receiver<Settled>,
    /// Up while the worker is idle (parked, or about to park): the next write unparks it.
    idle: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the worker thread on `store`; every one of `wake` (one per engine shard)
    /// is notified after every group.
    pub fn spawn(
        store: Box<dyn LocationStore>,
        limits: GroupLimits,
        wake: Vec<Arc<Notify>>,
    ) -> std::io::Result<Self> {
        let (to_worker, from_engine) = mpsc::sync_channel(limits.queue);
        let (to_engine, done) = mpsc::channel();
        let idle = Arc::new(AtomicBool::new(false));
        let bell = idle.clone();
        let thread = std::thread::Builder::new()
            .name("permit-store".into())
            .spawn(move || {
                let queue = Queue {
                    from_engine,
                    idle: bell,
                    max_group: limits.max_group,
                };
                worker(store, &queue, &to_engine, &wake);
            })?;
        Ok(Self {
            to_worker: Some(to_worker),
            done,
            idle,
            thread: Some(thread),
        })
    }
}

impl WriteBehind for GroupCommit {
    fn submit(&mut self, seq: u64, write: Write) -> Result<(), QueueFull> {
        let Some(tx) = &self.to_worker else {
            return Err(QueueFull);
        };
        match tx.try_send((seq, write)) {
            Ok(()) => {
                self.ring();
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }

    fn poll_done(&mut self) -> Option<Settled> {
        self.done.try_recv().ok()
    }
}

impl GroupCommit {
    /// Unparks the worker if it is idle. The queued write and the flag are ordered
    /// against the worker's raising of the flag and its look at the queue (both sides
    /// fence), so either the worker sees the write or this sees the flag.
    ///
    /// Only the worker writes the flag. (When this cleared it, a ring that read the
    /// flag of one idle spell could clear it in the next, after the worker had raised
    /// it again: the worker then slept with the flag down and no write woke it again,
    /// while the queue filled and every REGISTER got 503. Seen in a benchmark after an
    /// overload step.) An unpark of a worker that is not parked costs one atomic
    /// operation, so the few rings between the worker's waking and its lowering of the
    /// flag are cheap.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.idle.load(Ordering::Relaxed)
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
    }
}

impl Drop for GroupCommit {
    /// Commits what is queued, then stops the worker (a clean shutdown loses nothing
    /// that was submitted).
    fn drop(&mut self) {
        self.to_worker = None;
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("store worker panicked");
        }
    }
}

/// The worker's side of the queue.
struct Queue {
    from_engine: Receiver<(u64, Write)>,
    idle: Arc<AtomicBool>,
    max_group: usize,
}

/// What one look at the queue found.
enum Took {
    /// Writes through this sequence number are in the group.
    Through(u64),
    Nothing,
    /// The engine's handle is gone and the queue is empty.
    Closed,
}

impl Queue {
    /// Moves what is queued into `group`, up to `max_group` writes.
    fn take(&self, group: &mut Vec<Write>) -> Took {
        let mut took = Took::Nothing;
        while group.len() < self.max_group {
            match self.from_engine.try_recv() {
                Ok((seq, w)) => {
                    group.push(w);
                    took = Took::Through(seq);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if matches!(took, Took::Nothing) {
                        took = Took::Closed;
                    }
                    break;
                }
            }
        }
        took
    }

    /// Blocks until there is a write or the engine's handle is gone: raises the idle
    /// flag, looks at the queue once more (a write that came before the flag was up did
    /// not ring), then parks until a write rings.
    fn wait(&self, group: &mut Vec<Write>) -> Took {
        loop {
            self.idle.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            match self.take(group) {
                Took::Nothing => std::thread::park(),
                took => {
                    self.idle.store(false, Ordering::Relaxed);
                    return took;
                }
            }
        }
    }
}

fn worker(
    mut store: Box<dyn LocationStore>,
    queue: &Queue,
    to_engine: &mpsc::Sender<Settled>,
    wake: &[Arc<Notify>],
) {
    let mut group: Vec<Write> = Vec::with_capacity(queue.max_group);
    loop {
        let through = match queue.take(&mut group) {
            Took::Through(seq) => seq,
            Took::Closed => return,
            Took::Nothing => match queue.wait(&mut group) {
                Took::Through(seq) => seq,
                Took::Closed | Took::Nothing => return,
            },
        };
        let full = group.len() >= queue.max_group;
        let ok = match store.apply(&group) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "binding writes not stored");
                false
            }
        };
        group.clear();
        if to_engine.send(Settled { through, ok }).is_err() {
            return;
        }
        for w in wake {
            w.notify_one();
        }
        if !full {
            std::thread::sleep(GATHER);
        }
    }
}

/// A thread that runs the jobs of every shard one at a time, each written (committed)
/// before its outcome goes back to the shard that sent it, woken through its `Notify`.
/// The shell side of [`PermitWriter`] ([`PermitWorker`]) and of [`DepositWriter`]
/// ([`DepositWorker`]).
pub struct JobWorker<J, R> {
    to_worker: SyncSender<Queued<J, R>>,
}

struct Queued<J, R> {
    work: J,
    reply: mpsc::Sender<R>,
    wake: Arc<Notify>,
}

/// Jobs queued for one worker (all shards together); more get 503.
const JOB_QUEUE: usize = 1_024;

impl<J: Send + 'static, R: Send + 'static> JobWorker<J, R> {
    /// Starts the thread `name`, which runs each job through `run`.
    fn start(name: &str, mut run: impl FnMut(J) -> R + Send + 'static) -> std::io::Result<Self> {
        let (to_worker, jobs) = mpsc::sync_channel::<Queued<J, R>>(JOB_QUEUE);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(queued) = jobs.recv() {
                    let r = run(queued.work);
                    if queued.reply.send(r).is_ok() {
                        queued.wake.notify_one();
                    }
                }
            })?;
        Ok(Self { to_worker })
    }

    /// A handle for one engine shard, woken through `wake` when an outcome is ready.
    pub fn handle(&self, wake: Arc<Notify>) -> JobHandle<J, R> {
        let (reply, done) = mpsc::channel();
        JobHandle {
            to_worker: self.to_worker.clone(),
            reply,
            done,
            wake,
        }
    }
}

/// One shard's handle on a [`JobWorker`].
pub struct JobHandle<J, R> {
    to_worker: SyncSender<Queued<J, R>>,
    reply: mpsc::Sender<R>,
    done: Receiver<R>,
    wake: Arc<Notify>,
}

impl<J, R> JobHandle<J, R> {
    fn queue(&self, work: J) -> Result<(), QueueFull> {
        let queued = Queued {
            work,
            reply: self.reply.clone(),
            wake: self.wake.clone(),
        };
        self.to_worker.try_send(queued).map_err(|_| QueueFull)
    }

    fn next_done(&self) -> Option<R> {
        self.done.try_recv().ok()
    }
}

/// The permit writer of the running proxy: management PUBLISHes applied to the permit
/// lists through its own connection (a `Permits` opened for administration, as the
/// CLI's), one at a time, each committed before its reply goes back. The engine's table
/// learns of the change through the store's change log (`Permits::refresh_now`) before
/// the engine answers.
pub type PermitWorker = JobWorker<PublishJob, (u64, ManageReply)>;

/// One shard's [`PermitWriter`].
pub type PermitHandle = JobHandle<PublishJob, (u64, ManageReply)>;

impl PermitWorker {
    /// Starts the writer thread on `permits`.
    pub fn spawn(mut permits: Permits) -> std::io::Result<Self> {
        Self::start("permit-lists", move |job: PublishJob| {
            let PublishJob { id, owner, msg } = job;
            (id, manage::handle_publish(&mut permits, &owner, &msg))
        })
    }
}

impl PermitWriter for PermitHandle {
    fn submit(&mut self, publish: PublishJob) -> Result<(), QueueFull> {
        self.queue(publish)
    }

    fn poll_done(&mut self) -> Option<(u64, ManageReply)> {
        self.next_done()
    }
}

/// The deposit writer of the running proxy: stored items (store-and-forward deposits)
/// written through its own connection to the store (a `Mailbox` of its own, with the
/// same quotas, as the CLI's), one at a time, each durable (SQLite commits it with an
/// fsync) before its outcome goes back. It takes no lock of the engine's: the engine's
/// own connection goes on reading (every REGISTER asks whether items wait) while it
/// writes. Its quota check sees what the engine's connection committed.
pub type DepositWorker = JobWorker<DepositJob, (u64, Result<(), DepositError>)>;

/// One shard's [`DepositWriter`].
pub type DepositHandle = JobHandle<DepositJob, (u64, Result<(), DepositError>)>;

impl DepositWorker {
    /// Starts the writer thread on `mailbox`, a connection of its own.
    pub fn spawn(mut mailbox: Mailbox) -> std::io::Result<Self> {
        Self::start("mailbox-writer", move |job: DepositJob| {
            let outcome = mailbox.deposit(&job.item, job.unix_now);
            (job.ticket, outcome)
        })
    }
}

impl DepositWriter for DepositHandle {
    fn submit(&mut self, job: DepositJob) -> Result<(), QueueFull> {
        self.queue(job)
    }

    fn poll_done(&mut self) -> Option<(u64, Result<(), DepositError>)> {
        self.next_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::Binding;
    use crate::store::{MemoryStore, StoreError};
    use std::sync::Mutex;

    /// A store that fails while `fail` is set and records committed groups.
    struct Flaky {
        inner: MemoryStore,
        fail: Arc<Mutex<bool>>,
        groups: Arc<Mutex<Vec<usize>>>,
    }

    impl LocationStore for Flaky {
        fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
            self.inner.load_all()
        }
        fn put(&mut self, aor: &str, bindings: &[Binding]) -> Result<(), StoreError> {
            self.inner.put(aor, bindings)
        }
        fn purge_expired(&mut self, unix_now: u64, aors: &[Arc<str>]) -> Result<(), StoreError> {
            self.inner.purge_expired(unix_now, aors)
        }
        fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
            if *self.fail.lock().unwrap() {
                return Err(StoreError::Sqlite(rusqlite::Error::InvalidQuery));
            }
            self.groups.lock().unwrap().push(writes.len());
            for w in writes {
                if let Write::Put { aor, bindings, .. } = w {
                    self.inner.put(aor, bindings)?;
                }
            }
            Ok(())
        }
    }

    fn put(aor: &str) -> Write {
        Write::Put {
            aor: Arc::from(aor),
            bindings: Box::new([]),
            in_place: false,
        }
    }

    type Switch = Arc<Mutex<bool>>;
    type Groups = Arc<Mutex<Vec<usize>>>;

    /// A worker on a [`Flaky`] store (queue 1,000, groups of at most 64), with the
    /// store's failure switch and its record of committed group sizes.
    fn flaky_worker() -> (GroupCommit, Switch, Groups) {
        let fail = Arc::new(Mutex::new(false));
        let groups = Arc::new(Mutex::new(Vec::new()));
        let store = Flaky {
            inner: MemoryStore::default(),
            fail: fail.clone(),
            groups: groups.clone(),
        };
        let limits = GroupLimits {
            queue: 1_000,
            max_group: 64,
        };
        let gc =
            GroupCommit::spawn(Box::new(store), limits, vec![Arc::new(Notify::new())]).unwrap();
        (gc, fail, groups)
    }

    fn wait(gc: &mut GroupCommit) -> Settled {
        for _ in 0..5_000 {
            if let Some(s) = gc.poll_done() {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the worker settled nothing in 5 s");
    }

    #[test]
    fn every_write_is_settled_in_order_and_a_failed_group_says_so() {
        let (mut gc, fail, groups) = flaky_worker();
        for seq in 1..=500 {
            gc.submit(seq, put(&format!("u{seq}@x"))).unwrap();
        }
        let mut through = 0;
        while through < 500 {
            let s = wait(&mut gc);
            assert!(s.ok);
            assert!(s.through > through, "outcomes come in order");
            through = s.through;
        }
        let g = groups.lock().unwrap().clone();
        assert_eq!(g.iter().sum::<usize>(), 500, "each write committed once");
        assert!(g.iter().all(|n| *n <= 64), "groups are bounded: {g:?}");
        *fail.lock().unwrap() = true;
        gc.submit(501, put("late@x")).unwrap();
        assert_eq!(
            wait(&mut gc),
            Settled {
                through: 501,
                ok: false
            }
        );
    }

    /// The worker parks when the queue is empty; every write that comes after must wake
    /// it, whether it lands before, during or after the worker raising its idle flag.
    #[test]
    fn a_write_after_the_worker_went_idle_is_committed() {
        let (mut gc, _, groups) = flaky_worker();
        for seq in 1..=300u64 {
            // Pauses around GATHER and beyond it: the write meets the worker gathering,
            // raising its flag, or parked.
            std::thread::sleep(std::time::Duration::from_micros((seq % 7) * 60));
            gc.submit(seq, put(&format!("u{seq}@x"))).unwrap();
            let s = wait(&mut gc);
            assert_eq!(
                s,
                Settled {
                    through: seq,
                    ok: true
                }
            );
        }
        assert_eq!(groups.lock().unwrap().iter().sum::<usize>(), 300);
    }

    /// Many idle spells in a row, as fast as the worker goes idle: no write is left
    /// waiting in the queue by a lost ring.
    #[test]
    fn rapid_idle_spells_lose_no_write() {
        let (mut gc, _, _) = flaky_worker();
        let started = std::time::Instant::now();
        for seq in 1..=3_000u64 {
            gc.submit(seq, put("a@x")).unwrap();
            loop {
                match gc.poll_done() {
                    Some(s) if s.through == seq => break,
                    Some(_) => {}
                    None => {
                        assert!(
                            started.elapsed() < std::time::Duration::from_mins(1),
                            "write {seq} never settled"
                        );
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// A store whose groups wait for a lock the test holds.
    struct Blocked(Arc<Mutex<bool>>);
    impl LocationStore for Blocked {
        fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
            Ok(Vec::new())
        }
        fn put(&mut self, _: &str, _: &[Binding]) -> Result<(), StoreError> {
            Ok(())
        }
        fn purge_expired(&mut self, _: u64, _: &[Arc<str>]) -> Result<(), StoreError> {
            Ok(())
        }
        fn apply(&mut self, _: &[Write]) -> Result<(), StoreError> {
            drop(self.0.lock().unwrap());
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        // The store blocks on its lock: the worker stays busy while we fill the queue.
        let block = Arc::new(Mutex::new(false));
        let held = block.lock().unwrap();
        let mut gc = GroupCommit::spawn(
            Box::new(Blocked(block.clone())),
            GroupLimits {
                queue: 8,
                max_group: 4,
            },
            vec![Arc::new(Notify::new())],
        )
        .unwrap();
        let mut refused = 0;
        for seq in 1..=100 {
            if gc.submit(seq, put("x@x")).is_err() {
                refused += 1;
            }
        }
        // The worker holds at most one group (4) in hand and 8 in its queue.
        assert!(refused >= 100 - 12, "refused {refused}");
        drop(held);
        let s = wait(&mut gc);
        assert!(s.ok);
    }

    #[test]
    fn the_permit_worker_commits_a_publish_then_replies_and_wakes_its_shard() {
        use crate::permits::Aor;
        use crate::store::Durability;
        use sip_core::message::Message;

        let dir = std::env::temp_dir().join(format!("permit-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let worker =
            PermitWorker::spawn(Permits::open_admin(&dir, Durability::Normal).unwrap()).unwrap();
        let wake = Arc::new(Notify::new());
        let mut handle = worker.handle(wake.clone());
        let body = r#"{"add":["alice@localhost"]}"#;
        let publish = format!(
            "PUBLISH sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKw1\r\n\
From: <sip:bob@localhost>;tag=1\r\nTo: <sip:bob@localhost>\r\nCall-ID: w1\r\n\
CSeq: 1 PUBLISH\r\nEvent: permit-list\r\nContent-Type: application/permit-list+json\r\n\
Max-Forwards: 70\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let msg = Message::parse(bytes::Bytes::from(publish)).unwrap();
        let owner = Aor::parse("bob@localhost").unwrap();
        handle.submit(PublishJob { id: 7, owner, msg }).unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let woken = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified()).await
        });
        assert!(woken.is_ok(), "the shard was not woken");
        let (id, reply) = handle.poll_done().expect("a reply once woken");
        assert_eq!((id, reply.status), (7, 200));
        // Committed before the reply: a fresh connection reads it.
        let mut reread = Permits::open(&dir, Durability::Normal).unwrap();
        assert!(reread.is_permitted("bob@localhost", "alice@localhost"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_deposit_worker_stores_an_item_then_replies_and_wakes_its_shard() {
        use crate::mailbox::sqlite::SqliteItems;
        use crate::mailbox::{Item, ItemId, Quotas, StoredItems};

        let dir = std::env::temp_dir().join(format!("deposit-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let items = SqliteItems::open(&dir, u64::MAX).unwrap();
        let quotas = Quotas {
            callee_items: 1,
            ..Quotas::default()
        };
        let worker = DepositWorker::spawn(Mailbox::new(Box::new(items), quotas)).unwrap();
        let wake = Arc::new(Notify::new());
        let mut handle = worker.handle(wake.clone());
        let item = |n: u8| {
            let body = vec![b'x'; 10];
            Item::new(
                ItemId([n; 16]),
                "bob@localhost",
                "alice@localhost",
                "text/plain",
                "",
                body,
                1_000,
                2_000,
            )
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let outcome = |handle: &mut DepositHandle, ticket: u64, n: u8| {
            let job = DepositJob {
                ticket,
                item: item(n),
                unix_now: 1_000,
            };
            handle.submit(job).unwrap();
            let woken = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified()).await
            });
            assert!(woken.is_ok(), "the shard was not woken");
            let (t, r) = handle.poll_done().expect("an outcome once woken");
            assert_eq!(t, ticket);
            r
        };
        assert!(outcome(&mut handle, 7, 1).is_ok());
        // Durable before the reply: a fresh connection reads it.
        let mut reread = SqliteItems::open(&dir, u64::MAX).unwrap();
        assert_eq!(
            reread.get(&ItemId([1; 16])).unwrap().map(|i| i.body),
            Some(vec![b'x'; 10])
        );
        // The quotas are the mailbox's: a second item for bob is refused.
        assert!(matches!(
            outcome(&mut handle, 8, 2),
            Err(DepositError::Refused(_))
        ));
        assert!(reread.get(&ItemId([2; 16])).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
