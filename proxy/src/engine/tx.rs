//! Transactions of the engine (RFC 3261 §17): keys by §17.2.3 matching, the server and
//! client machines with their flows, and the one-live-timer-entry scheduling.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{HeaderName, Message, Method};
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
    /// A non-INVITE's request, against which its final response is kept once only
    /// retransmissions are left to answer (engine::absorb).
    pub(super) request: Option<Bytes>,
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

/// What an answered request's context still reads while its INVITE server transaction is
/// in Accepted (a further 2xx of the branch going upstream, §16.7 step 5): the start
/// line and the headers that identify the call and that a response copies (Via, From,
/// To, Call-ID, CSeq, §8.2.6.2). The body and the other headers are left behind, so the
/// context no longer holds the received INVITE. `None` if it does not parse.
fn slim_request(req: &Message) -> Option<Message> {
    let b = req.as_bytes();
    let line = b.iter().position(|&c| c == b'\n')? + 1;
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(&b[..line]);
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        for v in req.headers(name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Message::parse(Bytes::copy_from_slice(&out)).ok()
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
            return self.respond_absorbed(key, status, bytes);
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
        if self.absorb_server(now, key) {
            return;
        }
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
    ///   token, the key and the relay's answer (§16.7 step 5); the targets and the best
    ///   response, which no longer matter, are dropped, and the request is cut down to
    ///   what that forwarding reads (`slim_request`).
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
                    && (c.targets.capacity() > 0
                        || c.best.is_some()
                        || !c.request.body().is_empty())
                {
                    c.targets = VecDeque::new();
                    c.best = None;
                    if let Some(slim) = slim_request(&c.request) {
                        c.request = slim;
                    }
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

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::net::SocketAddr;
    use std::time::Duration;

    use sip_core::message::{HeaderName, Message};

    use super::super::tests::{Harness, addr};
    use crate::auth::AuthSettings;
    use crate::users::MemoryUsers;

    const ALICE: &str = "127.0.0.1:5070";
    const BOB: &str = "127.0.0.1:5080";

    fn statuses(out: &[(SocketAddr, Message)]) -> Vec<u16> {
        out.iter().filter_map(|(_, m)| m.status()).collect()
    }

    /// Bob's response to the request the proxy forwarded to him.
    fn answer(req: &Message, code: u16) -> String {
        let mut s = format!("SIP/2.0 {code} Whatever\n");
        for v in req.headers(HeaderName::Via) {
            let _ = writeln!(s, "Via: {}", String::from_utf8_lossy(v));
        }
        for rr in req.headers(HeaderName::RecordRoute) {
            let _ = writeln!(s, "Record-Route: {}", String::from_utf8_lossy(rr));
        }
        let h = |n| String::from_utf8_lossy(req.header(n).unwrap()).into_owned();
        s + &format!(
            "From: {}\nTo: <sip:bob@localhost>;tag=b1\nCall-ID: {}\nCSeq: {}\nContact: <sip:bob@{BOB}>\nContent-Length: 0\n\n",
            h(HeaderName::From),
            h(HeaderName::CallId),
            h(HeaderName::CSeq)
        )
    }

    fn request(method: &str, ruri: &str, branch: &str, cseq: u32, extra: &str) -> String {
        format!(
            "{method} {ruri} SIP/2.0\nVia: SIP/2.0/UDP {ALICE};branch={branch}\n\
From: <sip:alice@localhost>;tag=a1\nTo: <sip:bob@localhost>{extra}\nCall-ID: shrink-1\n\
CSeq: {cseq} {method}\nMax-Forwards: 70\nContent-Length: 0\n\n"
        )
    }

    /// A proxied BYE that was answered keeps no response context while its server
    /// transaction absorbs retransmissions (RFC 3261 §17.2.2 Completed); the INVITE's
    /// context stays through Accepted (RFC 6026 §7.1), where a retransmitted 2xx still
    /// goes upstream through it; everything is gone after Timers J, L and M.
    #[test]
    fn an_answered_request_frees_its_context_and_still_absorbs() {
        let mut h = Harness::with_auth(
            AuthSettings {
                enabled: false,
                ..AuthSettings::default()
            },
            MemoryUsers::default(),
        );
        let reg = format!(
            "REGISTER sip:localhost SIP/2.0\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bKreg1\n\
From: <sip:bob@localhost>;tag=r1\nTo: <sip:bob@localhost>\nCall-ID: reg-bob\n\
CSeq: 1 REGISTER\nContact: <sip:bob@{BOB}>\nExpires: 600\nMax-Forwards: 70\n\
Content-Length: 0\n\n"
        );
        assert_eq!(statuses(&h.recv(BOB, &reg)), vec![200]);
        let out = h.recv(
            ALICE,
            &request("INVITE", "sip:bob@localhost", "z9hG4bKi1", 1, ""),
        );
        let invite = out[1].1.clone();
        assert_eq!(statuses(&h.recv(BOB, &answer(&invite, 200))), vec![200]);
        let rr =
            String::from_utf8_lossy(invite.header(HeaderName::RecordRoute).unwrap()).into_owned();
        let in_dialog = |method, branch, cseq| {
            request(
                method,
                &format!("sip:bob@{BOB}"),
                branch,
                cseq,
                &format!(";tag=b1\nRoute: {rr}"),
            )
        };
        assert_eq!(h.recv(ALICE, &in_dialog("ACK", "z9hG4bKa1", 1)).len(), 1);
        let out = h.recv(ALICE, &in_dialog("BYE", "z9hG4bKb1", 2));
        assert_eq!(out.len(), 1, "the BYE is forwarded");
        assert_eq!(
            h.proxy.live(),
            (3, 2, 2),
            "both contexts while the BYE is open"
        );
        let out = h.recv(BOB, &answer(&out[0].1, 200));
        assert_eq!(statuses(&out), vec![200]);
        assert_eq!(out[0].0, addr(ALICE));
        assert_eq!(h.proxy.live(), (3, 2, 1), "the BYE's context is freed");
        // A retransmitted BYE gets the same 200 again from the server transaction.
        let again = h.recv(ALICE, &in_dialog("BYE", "z9hG4bKb1", 2));
        assert_eq!(statuses(&again), vec![200]);
        assert_eq!(again[0].1.as_bytes(), out[0].1.as_bytes());
        // A retransmitted 2xx of the INVITE still goes upstream (RFC 6026 §7.1).
        let again = h.recv(BOB, &answer(&invite, 200));
        assert_eq!(statuses(&again), vec![200]);
        assert_eq!(again[0].0, addr(ALICE));
        assert_eq!(again[0].1.vias().count(), 1, "our Via removed");
        h.advance(Duration::from_secs(64));
        assert_eq!(h.proxy.live(), (0, 0, 0));
    }
}
