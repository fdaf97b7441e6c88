//! Transactions of the engine (RFC 3261 §17): keys by §17.2.3 matching, the server and
//! client machines with their flows, and the one-live-timer-entry scheduling.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::Method;
use sip_core::transaction::{
    ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, Transaction, TransactionEvent,
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
    pub(super) fn respond(&mut self, now: Instant, key: &TxKey, status: u16, bytes: Bytes) {
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        self.stats
            .traffic
            .response(status, matches!(entry.tx, ServerTx::Invite(_)));
        let r = match &mut entry.tx {
            ServerTx::Invite(t) => t.send_response(now, status, bytes),
            ServerTx::NonInvite(t) => t.send_response(now, status, bytes),
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
        // One live heap entry per transaction: a later wake-up is found when the
        // earlier entry fires (see `handle_timeout`), so the heap stays bounded.
        if let Some(at) = wake
            && entry_needs_push(&mut self.server.get_mut(key).map(|e| &mut e.scheduled), at)
        {
            self.heap
                .push(Reverse((at.max(now), Wake::Server(key.clone()))));
        }
    }

    pub(super) fn drain_client(&mut self, now: Instant, key: &TxKey) {
        let Some(entry) = self.client.get_mut(key) else {
            return;
        };
        let flow = entry.flow;
        let (terminated, timed_out, wake) = drain_machine(&mut self.out, flow, entry.tx.machine());
        let ctx = entry.ctx;
        if terminated {
            self.client.remove(key);
        } else if let Some(at) = wake
            && entry_needs_push(&mut Some(&mut entry.scheduled), at)
        {
            self.heap
                .push(Reverse((at.max(now), Wake::Client(key.clone()))));
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
