//! The operator's way into the running engine: a bounded queue of [`Command`]s that
//! the admin API fills and the engine's thread drains when woken
//! (`engine::control`). The engine stays sans-IO: it sees a queue of values and
//! answers each on the command's oneshot channel; the async side waits on that.
//!
//! Commands are rare (operator calls and one per Prometheus scrape), so one mutex
//! around a `VecDeque` costs the SIP path nothing: the engine looks at the queue only
//! in `handle_wake`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::engine::Stats;

/// Commands waiting at most; more are refused (the engine is not keeping up).
pub const MAX_QUEUED: usize = 64;
/// How long a caller waits for the engine's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Request methods counted by name; anything else counts as `other`.
pub const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
];

/// Traffic counters the engine keeps in `Stats::traffic`: plain integers bumped on
/// the engine's thread, read through [`Command::Stats`].
#[derive(Clone)]
pub struct Traffic {
    /// Requests received by method ([`METHODS`] order, then `other`), retransmissions
    /// included.
    pub requests: [u64; METHODS.len() + 1],
    /// Responses sent (the proxy's own and forwarded ones), by status code 100–699.
    pub responses: Box<[u64; 600]>,
    /// Final responses to INVITEs sent back to the caller: 2xx (a session established)
    /// and 300–699 (an attempt that failed) — RFC 7501 §3.4's session establishment
    /// rate and its failures, as rates of these counters.
    pub sessions_established: u64,
    pub session_failures: u64,
    /// Load queries (RFC 3261 §11) that got no usable answer in time: the call got
    /// 480 or was stored.
    pub query_timeouts: u64,
}

impl Traffic {
    /// Adds another shard's counters.
    pub fn add(&mut self, o: &Traffic) {
        for (a, b) in self.requests.iter_mut().zip(&o.requests) {
            *a += b;
        }
        for (a, b) in self.responses.iter_mut().zip(o.responses.iter()) {
            *a += b;
        }
        self.sessions_established += o.sessions_established;
        self.session_failures += o.session_failures;
        self.query_timeouts += o.query_timeouts;
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            requests: [0; METHODS.len() + 1],
            responses: Box::new([0; 600]),
            sessions_established: 0,
            session_failures: 0,
            query_timeouts: 0,
        }
    }
}

/// Only what was seen: the shutdown log prints the engine's `Stats`.
impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = METHODS.iter().copied().chain(["other"]);
        let requests: Vec<(&str, u64)> = names
            .zip(self.requests.iter().copied())
            .filter(|(_, n)| *n > 0)
            .collect();
        let responses: Vec<(usize, u64)> = (100..)
            .zip(self.responses.iter().copied())
            .filter(|(_, n)| *n > 0)
            .collect();
        f.debug_struct("Traffic")
            .field("requests", &requests)
            .field("responses", &responses)
            .field("sessions_established", &self.sessions_established)
            .field("session_failures", &self.session_failures)
            .field("query_timeouts", &self.query_timeouts)
            .finish()
    }
}

impl Traffic {
    /// Counts a received request.
    pub fn request(&mut self, method: &sip_core::message::Method) {
        use sip_core::message::Method as M;
        let i = match method {
            M::Invite => 0,
            M::Ack => 1,
            M::Bye => 2,
            M::Cancel => 3,
            M::Register => 4,
            M::Options => 5,
            M::Info => 6,
            M::Update => 7,
            M::Prack => 8,
            M::Subscribe => 9,
            M::Notify => 10,
            M::Refer => 11,
            M::Message => 12,
            M::Publish => 13,
            M::Other(_) => METHODS.len(),
        };
        self.requests[i] += 1;
    }

    /// Counts a response sent; `invite` when it answers an INVITE server transaction.
    pub fn response(&mut self, status: u16, invite: bool) {
        if let Some(n) = status
            .checked_sub(100)
            .and_then(|i| self.responses.get_mut(usize::from(i)))
        {
            *n += 1;
        }
        if invite {
            match status {
                200..=299 => self.sessions_established += 1,
                300.. => self.session_failures += 1,
                _ => {}
            }
        }
    }
}

/// What the engine reports for `/metrics` (read at scrape time, nothing on the hot
/// path).
#[derive(Debug, Clone, Default)]
pub struct EngineSnapshot {
    pub stats: Stats,
    /// Server and client transactions, and proxy response contexts, alive.
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub contexts: usize,
    /// Registered AORs and their bindings (RFC 3261 §10).
    pub aors: usize,
    pub bindings: usize,
    /// Timer entries, transmits not yet taken by the network, REGISTERs waiting for
    /// their write and location writes not yet settled.
    pub timers: usize,
    pub outbound_queue: usize,
    pub held_registers: usize,
    pub pending_writes: usize,
    /// Authentications that failed, and requests the failure limiter refused (503).
    pub auth_failures: u64,
    pub limiter_refused: u64,
    /// The media relay's counters, when a relay is configured, and the engine's
    /// count of calls it gave a relay and of video calls that got none.
    pub relay: Option<crate::relay::RelayStats>,
    pub relayed_calls: u64,
    pub unrelayed_calls: u64,
    /// Over capacity or not, and the input wait last measured (engine::overload).
    pub overload: crate::engine::OverloadState,
}

/// One binding as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BindingInfo {
    pub contact: String,
    /// Seconds left (0: expired, purged soon).
    pub expires_in: u64,
    pub q: u16,
}

/// One stored item as the admin API shows it (no body).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItemInfo {
    pub id: String,
    pub sender: String,
    pub content_type: String,
    pub size: u64,
    pub stored_at: u64,
    pub expires_at: u64,
}

impl From<crate::mailbox::ItemMeta> for ItemInfo {
    fn from(m: crate::mailbox::ItemMeta) -> Self {
        Self {
            id: m.id.to_string(),
            sender: m.sender,
            content_type: m.content_type,
            size: m.size,
            stored_at: m.stored_at,
            expires_at: m.expires_at,
        }
    }
}

/// Why the engine did not do what a command asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Malformed input (an AOR or an id that cannot be one).
    #[error("{0}")]
    BadInput(String),
    /// Nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// The engine could not store the change.
    #[error("{0}")]
    Store(String),
    /// The queue is full, or the engine did not answer in time.
    #[error("the engine is busy; try again")]
    Busy,
    /// The engine is gone (shutting down).
    #[error("the engine has stopped")]
    Stopped,
}

impl ControlError {
    /// The HTTP status for this failure.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadInput(_) => 400,
            Self::NotFound(_) => 404,
            Self::Store(_) => 500,
            Self::Busy | Self::Stopped => 503,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// A command for the engine, carrying the channel of its answer.
#[derive(Debug)]
pub enum Command {
    Stats(Reply<EngineSnapshot>),
    /// The bindings of an AOR.
    Bindings {
        aor: String,
        reply: Reply<Vec<BindingInfo>>,
    },
    /// Removes one binding of an AOR (its Contact URI as listed); the AOR's other
    /// bindings stay.
    Expire {
        aor: String,
        contact: String,
        reply: Reply<()>,
    },
    /// The unexpired items waiting for an AOR.
    Items {
        owner: String,
        reply: Reply<Vec<ItemInfo>>,
    },
    /// Deletes one stored item.
    DeleteItem {
        id: String,
        reply: Reply<()>,
    },
    /// Bindings another node committed to the shared store (PostgreSQL backend,
    /// `pg::listen`): each AOR's list as stored, to be made visible as it is, without
    /// writing it back.
    RemoteBindings(Vec<(String, Vec<crate::location::Binding>)>),
    /// Another node changed permit lists: the engine refreshes its table now rather
    /// than at its next lookup.
    ReloadPermits,
}

/// The queue and the signal that wakes the engine's driver
/// (`sip_net::run_woken`); cloned by every user.
#[derive(Clone)]
pub struct Control {
    queue: Arc<Mutex<VecDeque<Command>>>,
    wake: Arc<Notify>,
}

impl Control {
    /// A queue whose commands are signalled on `wake` (the driver's wake signal).
    pub fn new(wake: Arc<Notify>) -> Self {
        Self {
            queue: Arc::new(Mutex::new(VecDeque::new())),
            wake,
        }
    }

    /// The next command (the engine, in `handle_wake`).
    pub fn pop(&self) -> Option<Command> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    fn push(&self, cmd: Command) -> Result<(), (ControlError, Command)> {
        {
            let mut q = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if q.len() >= MAX_QUEUED {
                return Err((ControlError::Busy, cmd));
            }
            q.push_back(cmd);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Queues the command `make` builds around a reply channel and waits for the
    /// answer, at most [`ANSWER_WITHIN`].
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.push(make(tx)).map_err(|(e, _)| e)?;
        match tokio::time::timeout(ANSWER_WITHIN, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ControlError::Stopped),
            Err(_) => Err(ControlError::Busy),
        }
    }

    /// Queues bindings other nodes stored; the batch comes back when the queue is full.
    #[allow(clippy::type_complexity)] // the batch handed back as it was given
    pub fn remote_bindings(
        &self,
        batch: Vec<(String, Vec<crate::location::Binding>)>,
    ) -> Result<(), (ControlError, Vec<(String, Vec<crate::location::Binding>)>)> {
        self.push(Command::RemoteBindings(batch))
            .map_err(|(e, cmd)| match cmd {
                Command::RemoteBindings(b) => (e, b),
                _ => (e, Vec::new()),
            })
    }

    /// Queues a refresh of the permit table (no answer awaited).
    pub fn reload_permits(&self) -> Result<(), ControlError> {
        self.push(Command::ReloadPermits).map_err(|(e, _)| e)
    }

    pub async fn stats(&self) -> Result<EngineSnapshot, ControlError> {
        self.ask(Command::Stats).await
    }

    pub async fn bindings(&self, aor: String) -> Result<Vec<BindingInfo>, ControlError> {
        self.ask(|reply| Command::Bindings { aor, reply }).await
    }

    pub async fn expire(&self, aor: String, contact: String) -> Result<(), ControlError> {
        self.ask(|reply| Command::Expire {
            aor,
            contact,
            reply,
        })
        .await
    }

    pub async fn items(&self, owner: String) -> Result<Vec<ItemInfo>, ControlError> {
        self.ask(|reply| Command::Items { owner, reply }).await
    }

    pub async fn delete_item(&self, id: String) -> Result<(), ControlError> {
        self.ask(|reply| Command::DeleteItem { id, reply }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_is_bounded_and_answers_travel_back() {
        let c = Control::new(Arc::new(Notify::new()));
        let asking = tokio::spawn({
            let c = c.clone();
            async move { c.delete_item("x".into()).await }
        });
        let cmd = loop {
            if let Some(cmd) = c.pop() {
                break cmd;
            }
            tokio::task::yield_now().await;
        };
        let Command::DeleteItem { id, reply } = cmd else {
            panic!("unexpected command {cmd:?}");
        };
        assert_eq!(id, "x");
        reply
            .send(Err(ControlError::NotFound("no item x".into())))
            .unwrap();
        assert_eq!(
            asking.await.unwrap(),
            Err(ControlError::NotFound("no item x".into()))
        );
        let mut kept = Vec::new();
        for _ in 0..MAX_QUEUED {
            let (tx, rx) = oneshot::channel();
            c.push(Command::Stats(tx)).unwrap();
            kept.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            c.push(Command::Stats(tx)),
            Err((ControlError::Busy, Command::Stats(_)))
        ));
        // A command whose reply channel is dropped unanswered reads as a stopped engine.
        drop(c.pop());
        assert!(kept.remove(0).await.is_err());
    }

    #[test]
    fn traffic_debug_shows_only_what_was_seen() {
        let mut t = Traffic::default();
        t.request(&sip_core::message::Method::Bye);
        t.response(487, true);
        t.response(700, false);
        assert_eq!(
            format!("{t:?}"),
            "Traffic { requests: [(\"BYE\", 1)], responses: [(487, 1)], \
             sessions_established: 0, session_failures: 1, query_timeouts: 0 }"
        );
    }
}
