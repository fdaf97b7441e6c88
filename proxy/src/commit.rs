//! The store worker of the running proxy (shell side of [`WriteBehind`]): binding
//! writes leave the engine's thread and are committed in groups, one SQLite
//! transaction for whatever queued up while the previous group was committing. No
//! timer batches them: under light load a group is one write and commits at once,
//! under heavy load a group grows to what arrived meanwhile (at most `max_group`).
//!
//! The engine sends a REGISTER's 200 only after the group holding its write committed
//! (engine `settle_writes`), so kill -9 loses no binding that was answered 200; a group
//! that fails is reported as failed and its REGISTERs get 500.
//!
//! [`PermitWorker`] does the same for the callees' own list changes (management
//! PUBLISH): written on its thread, answered by the engine once committed.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use tokio::sync::Notify;

use crate::location::{QueueFull, Settled, WriteBehind};
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

/// The engine's handle on the store worker.
pub struct GroupCommit {
    to_worker: Option<SyncSender<(u64, Write)>>,
    done: Receiver<Settled>,
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
        let thread = std::thread::Builder::new()
            .name("permit-store".into())
            .spawn(move || worker(store, &from_engine, &to_engine, &wake, limits.max_group))?;
        Ok(Self {
            to_worker: Some(to_worker),
            done,
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
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }

    fn poll_done(&mut self) -> Option<Settled> {
        self.done.try_recv().ok()
    }
}

impl Drop for GroupCommit {
    /// Commits what is queued, then stops the worker (a clean shutdown loses nothing
    /// that was submitted).
    fn drop(&mut self) {
        self.to_worker = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("store worker panicked");
        }
    }
}

fn worker(
    mut store: Box<dyn LocationStore>,
    from_engine: &Receiver<(u64, Write)>,
    to_engine: &mpsc::Sender<Settled>,
    wake: &[Arc<Notify>],
    max_group: usize,
) {
    let mut group: Vec<Write> = Vec::with_capacity(max_group);
    // Blocks for the first write of a group, then takes what is already queued.
    while let Ok((mut through, first)) = from_engine.recv() {
        group.push(first);
        while group.len() < max_group {
            match from_engine.try_recv() {
                Ok((seq, w)) => {
                    through = seq;
                    group.push(w);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
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
    }
}

/// The permit writer of the running proxy (shell side of [`PermitWriter`]): one
/// thread that applies management PUBLISHes to the permit lists through its own
/// connection (a `Permits` opened for administration, as the CLI's), one at a time,
/// each committed before its reply goes back. The engine's table learns of the change
/// through the store's change log (`Permits::refresh_now`) before the engine answers.
pub struct PermitWorker {
    to_worker: SyncSender<PermitJob>,
}

struct PermitJob {
    publish: PublishJob,
    reply: mpsc::Sender<(u64, ManageReply)>,
    wake: Arc<Notify>,
}

/// PUBLISHes queued for the permit writer (all shards together); more get 503.
const PERMIT_QUEUE: usize = 1_024;

impl PermitWorker {
    /// Starts the writer thread on `permits`.
    pub fn spawn(mut permits: Permits) -> std::io::Result<Self> {
        let (to_worker, jobs) = mpsc::sync_channel::<PermitJob>(PERMIT_QUEUE);
        std::thread::Builder::new()
            .name("permit-lists".into())
            .spawn(move || {
                while let Ok(job) = jobs.recv() {
                    let PublishJob { id, owner, msg } = job.publish;
                    let r = manage::handle_publish(&mut permits, &owner, &msg);
                    if job.reply.send((id, r)).is_ok() {
                        job.wake.notify_one();
                    }
                }
            })?;
        Ok(Self { to_worker })
    }

    /// A handle for one engine shard, woken through `wake` when a reply is ready.
    pub fn handle(&self, wake: Arc<Notify>) -> PermitHandle {
        let (reply, done) = mpsc::channel();
        PermitHandle {
            to_worker: self.to_worker.clone(),
            reply,
            done,
            wake,
        }
    }
}

/// One shard's [`PermitWriter`].
pub struct PermitHandle {
    to_worker: SyncSender<PermitJob>,
    reply: mpsc::Sender<(u64, ManageReply)>,
    done: Receiver<(u64, ManageReply)>,
    wake: Arc<Notify>,
}

impl PermitWriter for PermitHandle {
    fn submit(&mut self, publish: PublishJob) -> Result<(), QueueFull> {
        let job = PermitJob {
            publish,
            reply: self.reply.clone(),
            wake: self.wake.clone(),
        };
        self.to_worker.try_send(job).map_err(|_| QueueFull)
    }

    fn poll_done(&mut self) -> Option<(u64, ManageReply)> {
        self.done.try_recv().ok()
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
        let fail = Arc::new(Mutex::new(false));
        let groups = Arc::new(Mutex::new(Vec::new()));
        let store = Flaky {
            inner: MemoryStore::default(),
            fail: fail.clone(),
            groups: groups.clone(),
        };
        let mut gc = GroupCommit::spawn(
            Box::new(store),
            GroupLimits {
                queue: 1_000,
                max_group: 64,
            },
            vec![Arc::new(Notify::new())],
        )
        .unwrap();
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
}
