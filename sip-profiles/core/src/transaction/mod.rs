//! The four transaction state machines of RFC 3261 §17, with RFC 6026's Accepted
//! states, sans-IO.
//!
//! # I/O contract
//!
//! A transaction never touches a socket or a clock. Time is the `now` argument of every
//! `handle_*` call. Messages are opaque [`Bytes`]: the caller parses and classifies them
//! (method, status code) and hands the transaction only what it needs to decide, the
//! status code. The transaction stores what it must retransmit (the request, the last
//! response, the ACK) and hands it back through `poll_transmit`; the destination is the
//! caller's, since one transaction talks to one peer over one transport.
//!
//! After every `handle_*` call the caller drains the machine:
//!
//! 1. `poll_transmit()` until `None`: send each datagram to the peer;
//! 2. `poll_event()` until `None`: [`TransactionEvent::Timeout`],
//!    [`TransactionEvent::TransportError`], then [`TransactionEvent::Terminated`],
//!    after which the transaction must be dropped (§17.1.1.2 "MUST be destroyed");
//! 3. `poll_timeout()`: the instant at which to call `handle_timeout(now)` next
//!    (`None` once terminated). `handle_timeout` fires every timer due at or before
//!    `now`; timers re-arm from their own deadlines, so a late caller does not shift
//!    the retransmission schedule.
//!
//! # Per machine
//!
//! - [`ClientInvite`] (§17.1.1, RFC 6026 §7.2): `new(now, request, reliable, &cfg)`
//!   queues the request. `handle_response(now, status, ack)` returns
//!   [`ResponseAction`]; for the first 300–699 response it calls `ack()` once, sends
//!   the ACK (§17.1.1.3) and re-sends that same ACK for every retransmission of the
//!   final response. A 2xx moves to Accepted, where 2xx retransmissions and 2xx from
//!   other forks are [`ResponseAction::PassUp`]; the TU acknowledges 2xx itself.
//! - [`ClientNonInvite`] (§17.1.2): `new(now, request, reliable, &cfg)`,
//!   `handle_response(now, status)`.
//! - [`ServerInvite`] (§17.2.1, RFC 6026 §7.1): `new(now, reliable, &cfg)` starts in
//!   Proceeding. The 100 (Trying) that §17.2.1 requires within 200 ms is the caller's:
//!   the proxy and UA send it (or a final) at once through `send_response`.
//!   `send_response(now, status, bytes)`, `handle_request_retransmission(now)`,
//!   `handle_ack(now)` returning [`AckAction`].
//! - [`ServerNonInvite`] (§17.2.2): `new(now, reliable, &cfg)` starts in Trying;
//!   `send_response`, `handle_request_retransmission`.
//!
//! All four also offer `handle_transport_error(now)` (§17.1.4, §17.2.4), `state()` and
//! `is_terminated()`, and implement [`Transaction`] for generic drivers.
//!
//! # Invalid input
//!
//! An input that is not valid in the current state returns a [`TransactionError`]
//! and leaves the machine untouched. Inputs the RFC says to absorb are documented
//! where they happen: a retransmitted final response at the client, a late provisional
//! response after a final one (reordering), a retransmitted request in Trying,
//! Confirmed or Accepted, a retransmitted ACK in Confirmed.
//!
//! # Cost
//!
//! Timers are plain `Instant`s inside the state structs; a tick allocates nothing
//! beyond cloning `Bytes` (a reference count). One datagram waiting for `poll_transmit`
//! takes no allocation; a longer queue allocates and gives its memory back once drained.
//! A client transaction drops its request once a final response arrived (nothing
//! retransmits it any more, §17.1.1.2, §17.1.2.2), so a completed transaction keeps
//! only what absorbing retransmissions needs: its timers, the last response (server,
//! §17.2.1, §17.2.2) or the ACK (INVITE client, §17.1.1.3). A server transaction that
//! only absorbs retransmissions (non-INVITE Completed, INVITE Confirmed and Accepted)
//! can be turned into an [`Absorbing`] value of a few bytes, the final response handed
//! back to the caller to keep as it likes (`into_absorbing`).

mod absorbing;
mod client_invite;
mod client_non_invite;
mod error;
mod server_invite;
mod server_non_invite;
mod timer;

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use bytes::Bytes;

pub use absorbing::{Absorbing, Retransmitted};
pub use client_invite::ClientInvite;
pub use client_non_invite::ClientNonInvite;
pub use error::{Fault, TransactionError};
pub use server_invite::ServerInvite;
pub use server_non_invite::ServerNonInvite;
pub use timer::{Timer, TimerConfig};

/// The name of a transaction's state (RFC 3261 Figures 5–8, RFC 6026 Figures 4–5), for
/// tests and logs. The machines keep the per-state data in private types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
    Terminated,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a transaction reports to its TU besides responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionEvent {
    /// Timer B, F or H fired: no final response (client) or no ACK (server) in time
    /// (§17.1.1.2, §17.1.2.2, §17.2.1). `Terminated` follows.
    Timeout(Timer),
    /// The caller reported a transport error (§17.1.4, §17.2.4). `Terminated` follows.
    TransportError,
    /// The transaction reached Terminated and should be dropped.
    Terminated,
}

/// What the caller does with a response a client transaction accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAction {
    /// Hand the response to the TU.
    PassUp,
    /// A retransmission (or a late provisional) the transaction absorbed: drop it.
    Absorb,
}

/// What the caller does with an ACK an INVITE server transaction accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckAction {
    /// The ACK for a 2xx (Accepted, RFC 6026 §7.1): hand it to the TU.
    PassUp,
    /// The ACK for a non-2xx final, consumed by the transaction (§17.2.1): drop it.
    Absorb,
}

/// The operations every transaction shares, for drivers that hold any of the four.
pub trait Transaction {
    /// The next datagram to send to the peer.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// The next event for the TU.
    fn poll_event(&mut self) -> Option<TransactionEvent>;
    /// When `handle_timeout` is next due; `None` once terminated.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Fires every timer due at or before `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The transport failed to send (§17.1.4, §17.2.4): terminate and tell the TU.
    fn handle_transport_error(&mut self, now: Instant);
    /// The current state's name.
    fn state(&self) -> State;
    /// Whether the transaction reached Terminated.
    fn is_terminated(&self) -> bool {
        self.state() == State::Terminated
    }
}

/// Implements [`Transaction`] by delegating to the inherent methods of the same names.
macro_rules! impl_transaction {
    ($machine:ty) => {
        impl $crate::transaction::Transaction for $machine {
            fn poll_transmit(&mut self) -> Option<bytes::Bytes> {
                <$machine>::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<$crate::transaction::TransactionEvent> {
                <$machine>::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<std::time::Instant> {
                <$machine>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: std::time::Instant) {
                <$machine>::handle_timeout(self, now);
            }
            fn handle_transport_error(&mut self, now: std::time::Instant) {
                <$machine>::handle_transport_error(self, now);
            }
            fn state(&self) -> $crate::transaction::State {
                <$machine>::state(self)
            }
        }
    };
}
use impl_transaction;

/// Datagrams waiting for `poll_transmit` and events waiting for `poll_event`.
#[derive(Debug, Default)]
struct Outbox {
    /// The oldest datagram waiting: one at a time is the common case and allocates nothing.
    first: Option<Bytes>,
    /// Datagrams queued behind `first` (a late `handle_timeout` firing several times).
    more: VecDeque<Bytes>,
    failure: Option<TransactionEvent>,
    terminated: bool,
}

impl Outbox {
    fn transmit(&mut self, datagram: Bytes) {
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(datagram);
        } else {
            self.more.push_back(datagram);
        }
    }

    /// Records the move to Terminated, after `failure` if the transaction failed.
    fn terminate(&mut self, failure: Option<TransactionEvent>) {
        self.failure = failure;
        self.terminated = true;
    }

    /// Nothing waits for `poll_transmit` or `poll_event`.
    fn is_drained(&self) -> bool {
        self.first.is_none() && self.more.is_empty() && self.failure.is_none() && !self.terminated
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(d) = self.first.take() {
            return Some(d);
        }
        let d = self.more.pop_front();
        if self.more.is_empty() && self.more.capacity() > 0 {
            // Drained: give the queue's memory back, a transaction lives on for 32 s.
            self.more = VecDeque::new();
        }
        d
    }

    fn poll_event(&mut self) -> Option<TransactionEvent> {
        if let Some(failure) = self.failure.take() {
            return Some(failure);
        }
        std::mem::take(&mut self.terminated).then_some(TransactionEvent::Terminated)
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;
    use bytes::Bytes;

    #[test]
    fn outbox_keeps_order_and_gives_its_queue_back() {
        let mut o = Outbox::default();
        o.transmit(Bytes::from_static(b"1"));
        o.transmit(Bytes::from_static(b"2"));
        assert_eq!(o.poll_transmit().as_deref(), Some(&b"1"[..]));
        o.transmit(Bytes::from_static(b"3"));
        assert!(o.more.capacity() > 0);
        assert_eq!(o.poll_transmit().as_deref(), Some(&b"2"[..]));
        assert_eq!(o.poll_transmit().as_deref(), Some(&b"3"[..]));
        assert_eq!(o.more.capacity(), 0, "a drained queue holds no memory");
        assert_eq!(o.poll_transmit(), None);
        o.transmit(Bytes::from_static(b"4"));
        assert_eq!((o.first.is_some(), o.more.capacity()), (true, 0));
    }
}
