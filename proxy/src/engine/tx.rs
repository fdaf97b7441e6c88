//! Transactions of the engine (RFC 3261 §17): keys by §17.2.3 matching, the server and
//! client machines with their flows, and the one-live-timer-entry scheduling.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::Method;
use sip_core::transaction::{
    ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, State, Transaction,
    TransactionEvent,
};
use sip_core::transport::Transmit;

use super::{Proxy, Wake};
use crate::route::{Flow, loop_hash};

/// RFC 3261 §17.2.3 matching: the branch plus INVITE/ACK vs CANCEL vs others.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct TxKey {
    pub(super) branch: Bytes,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Kind {
    Invite,
    Cancel,
    Other,
}

impl Kind {
    pub(super) fn of(m: &Method) -> Self {
        match m {
            Method::Invite | Method::Ack => Self::Invite,
            Method::Cancel => Self::Cancel,
            _ => Self::Other,
        }
    }
}

pub(super) enum ServerTx {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerTx {
    pub(super) fn machine(&mut self) -> &mut dyn Transaction {
        match self {
            Self::Invite(t) => t,
            Self::NonInvite(t) => t,
        }
    }
}

pub(super) struct ServerEntry {
    pub(super) tx: ServerTx,
    /// The flow the request arrived on.
    pub(super) flow: Flow,
    /// Where its responses go (`validate::reply_flow`).
    pub(super) reply: Flow,
    pub(super) ctx: Option<u64>,
    /// The instant of this transaction's live entry in the timer heap.
    pub(super) scheduled: Option<Instant>,
}

pub(super) enum ClientTx {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientTx {
    pub(super) fn machine(&mut self) -> &mut dyn Transaction {
        match self {
            Self::Invite(t) => t,
            Self::NonInvite(t) => t,
        }
    }
}

/// Moves a transaction's transmits to `out` (towards `flow`); returns its events
/// (terminated, failed) and its next wake-up.
pub(super) fn drain_machine(
    out: &mut VecDeque<Transmit>,
    flow: Flow,
    m: &mut dyn Transaction,
) -> (bool, bool, Option<Instant>) {
    while let Some(data) = m.poll_transmit() {
        out.push_back(Transmit {
            transport: flow.transport,
            local: flow.local,
            dest: flow.remote,
            data,
        });
    }
    let (mut terminated, mut failed) = (false, false);
    while let Some(ev) = m.poll_event() {
        match ev {
            TransactionEvent::Terminated => terminated = true,
            TransactionEvent::Timeout(_) | TransactionEvent::TransportError => failed = true,
        }
    }
    (terminated, failed, m.poll_timeout())
}

pub(super) struct ClientEntry {
    pub(super) tx: ClientTx,
    pub(super) flow: Flow,
    pub(super) ctx: Option<u64>,
    pub(super) purpose: Purpose,
    /// The request as sent, parsed lazily for ACK/CANCEL generation.
    pub(super) sent: Bytes,
    /// The instant of this transaction's live entry in the timer heap.
    pub(super) scheduled: Option<Instant>,
}

/// Why a client transaction was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A branch of the proxied request.
    Branch,
    /// The load query (OPTIONS) to the callee before routing an INVITE.
    LoadQuery,
    /// A CANCEL of a branch.
    Cancel,
    /// A request of the proxy's own: NOTIFY message-summary or a delivering MESSAGE
    /// (engine::deposit).
    Own,
}

/// What a popped timer-heap entry did to its transaction.
pub(super) enum Fired {
    /// Superseded by an earlier entry: nothing to do.
    Stale,
    /// Timers ran: drain the transaction.
    Ran,
    /// The transaction's next timer is later: re-queue at that instant.
    Later(Instant),
}

/// Handles the heap entry at `at` for a transaction whose live entry is `scheduled`.
pub(super) fn fire(
    scheduled: &mut Option<Instant>,
    m: &mut dyn Transaction,
    at: Instant,
    now: Instant,
) -> Fired {
    if *scheduled != Some(at) {
        return Fired::Stale;
    }
    *scheduled = None;
    match m.poll_timeout() {
        Some(due) if due <= now => {
            m.handle_timeout(now);
            Fired::Ran
        }
        Some(due) => {
            *scheduled = Some(due);
            Fired::Later(due)
        }
        None => Fired::Stale,
    }
}

/// Records `at` as the transaction's scheduled wake-up if it is earlier than the one
/// already in the heap (or there is none); `true` when a heap entry must be pushed.
pub(super) fn entry_needs_push(scheduled: &mut Option<&mut Option<Instant>>, at: Instant) -> bool {
    let Some(slot) = scheduled else { return false };
    if slot.is_some_and(|s| s <= at) {
        return false;
    }
    **slot = Some(at);
    true
}

impl Proxy {
    /// Sends a response through the server transaction `key`.
    ///
    /// Every response but an INVITE's 2xx is kept by the transaction for
    /// retransmissions (§17.2.1, §17.2.2): it is copied to its exact size first, so a
    /// completed transaction does not keep the spare capacity of the buffer it was
    /// written into, nor a received datagram it was sliced from.
    pub(super) fn respond(&mut self, now: Instant, key: &TxKey, status: u16, bytes: Bytes) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        self.stats
            .traffic
            .response(status, matches!(entry.tx, ServerTx::Invite(_)));
        let r = match &mut entry.tx {
            ServerTx::Invite(t) if (200..300).contains(&status) => {
                t.send_response(now, status, bytes)
            }
            ServerTx::Invite(t) => t.send_response(now, status, Bytes::copy_from_slice(&bytes)),
            ServerTx::NonInvite(t) => t.send_response(now, status, Bytes::copy_from_slice(&bytes)),
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, status, "response not sent");
        }
        self.drain_server(now, key);
    }

    pub(super) fn drain_server(&mut self, now: Instant, key: &TxKey) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let flow = entry.reply;
        let (terminated, _, wake) = drain_machine(&mut self.out, flow, entry.tx.machine());
        if terminated {
            if let Some(e) = self.server.remove(key)
                && let Some(c) = e.ctx
            {
                self.contexts.remove(&c);
            }
            return;
        }
        self.shrink_context(key);
        // One live heap entry per transaction: a later wake-up is found when the
        // earlier entry fires (see `handle_timeout`), so the heap stays bounded. The
        // entry holds the map's own key, never a slice of a received message.
        if let Some(at) = wake
            && entry_needs_push(&mut self.server.get_mut(key).map(|e| &mut e.scheduled), at)
            && let Some((stored, _)) = self.server.get_key_value(key)
        {
            self.heap
                .push(Reverse((at.max(now), Wake::Server(stored.clone()))));
        }
    }

    /// Once the server transaction has sent its final response, its response context
    /// (the request, the targets, the best response so far) is no longer needed for the
    /// transaction's remaining job, absorbing retransmissions (RFC 3261 §17.2.1 Completed
    /// and Confirmed, §17.2.2 Completed).
    ///
    /// - Completed, Confirmed: the context is freed, unless its branch still waits for a
    ///   final response. A response that finds no context afterwards is handled as a
    ///   stateless proxy would (§16.7: "If none is found, the element MUST process the
    ///   response ... as a stateless proxy").
    /// - Accepted (RFC 6026 §7.1, a 2xx was sent): the context stays until Timer L,
    ///   since every further 2xx of the branch is forwarded through it with the
    ///   token, the key and the relay's answer (§16.7 step 5); only the targets and
    ///   the best response, which no longer matter, are dropped.
    fn shrink_context(&mut self, key: &TxKey) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let Some(ctx_id) = entry.ctx else { return };
        match entry.tx.machine().state() {
            State::Completed | State::Confirmed => {
                let pending = self
                    .contexts
                    .get(&ctx_id)
                    .and_then(|c| c.branch.as_ref())
                    .and_then(|b| self.client.get_mut(b))
                    .is_some_and(|c| {
                        matches!(
                            c.tx.machine().state(),
                            State::Calling | State::Trying | State::Proceeding
                        )
                    });
                if !pending {
                    entry.ctx = None;
                    self.contexts.remove(&ctx_id);
                }
            }
            State::Accepted => {
                if let Some(c) = self.contexts.get_mut(&ctx_id)
                    && (c.targets.capacity() > 0 || c.best.is_some())
                {
                    c.targets = VecDeque::new();
                    c.best = None;
                }
            }
            _ => {}
        }
    }

    pub(super) fn drain_client(&mut self, now: Instant, key: &TxKey) {
        let Some(entry) = self.client.get_mut(key) else {
            return;
        };
        let flow = entry.flow;
        let (terminated, timed_out, wake) = drain_machine(&mut self.out, flow, entry.tx.machine());
        let ctx = entry.ctx;
        if !matches!(
            entry.tx.machine().state(),
            State::Calling | State::Trying | State::Proceeding
        ) && !entry.sent.is_empty()
        {
            // The final response arrived: the request is neither retransmitted nor
            // cancelled any more (§17.1.1.2, §17.1.2.2, §9.1); the machine dropped its
            // copy too, and the ACK of a non-2xx final is already built.
            entry.sent = Bytes::new();
        }
        if terminated {
            self.client.remove(key);
        } else if let Some(at) = wake
            && entry_needs_push(&mut Some(&mut entry.scheduled), at)
            && let Some((stored, _)) = self.client.get_key_value(key)
        {
            // The map's own key: `key` may be a slice of the received response.
            self.heap
                .push(Reverse((at.max(now), Wake::Client(stored.clone()))));
        }
        if timed_out {
            // No final response on this branch: it counts as a 408 (§16.7 step 1 / §16.8).
            if let Some(ctx_id) = ctx
                && let Some(c) = self.contexts.get(&ctx_id)
                && c.branch.as_ref() == Some(key)
                && !c.answered
            {
                let hash = loop_hash(&c.request);
                self.try_next_target(now, ctx_id, hash);
            }
        }
    }
}
