//! What is left of a server transaction once its work is done and only retransmissions
//! remain to be absorbed: RFC 3261 §17.2.2 Completed (non-INVITE, until Timer J),
//! §17.2.1 Confirmed (INVITE after a non-2xx final and its ACK, until Timer I) and RFC
//! 6026 §7.1 Accepted (INVITE after a 2xx, until Timer L).
//!
//! In those states the machine sends nothing on its own and reports nothing but its end:
//! a retransmitted request gets the final response again (Completed) or nothing
//! (Confirmed, Accepted), an ACK is absorbed (Confirmed) or passed to the TU (Accepted),
//! a further 2xx of the TU goes out unkept (Accepted), and the timer frees it.
//! [`Absorbing`] is that state as a type of its own: the deadline and which of the
//! three states it is, nothing else. The final response to re-send is handed to the caller
//! by [`ServerNonInvite::into_absorbing`](super::ServerNonInvite::into_absorbing), so
//! a caller holding many of them can keep each one's key, reply address and response in
//! one allocation of exact size (a registrar at 30,000 REGISTER/s holds about a million
//! for Timer J's 32 s).

use std::time::Instant;

use super::{AckAction, State, Timer, TransactionError};

/// A server transaction that only absorbs retransmissions until its timer ends it.
///
/// Behaves as the full machine does in the same state: see
/// [`handle_request_retransmission`](Self::handle_request_retransmission) and
/// [`handle_ack`](Self::handle_ack). There is no Terminated state: once
/// [`poll_timeout`](Self::poll_timeout) is due the caller drops the value, as it drops a
/// full machine at [`TransactionEvent::Terminated`](super::TransactionEvent::Terminated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Absorbing {
    until: Instant,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Non-INVITE Completed (§17.2.2): the final is re-sent, Timer J ends it.
    Completed,
    /// INVITE Confirmed (§17.2.1): requests and ACKs are absorbed, Timer I ends it.
    Confirmed,
    /// INVITE Accepted (RFC 6026 §7.1): requests are absorbed, ACKs and the TU's 2xx
    /// pass, Timer L ends it.
    Accepted,
}

/// What the caller does with a request retransmission that matched an [`Absorbing`]
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retransmitted {
    /// Send the final response again (§17.2.2 Completed).
    ResendFinal,
    /// Drop it (§17.2.1 Confirmed).
    Absorb,
}

impl Absorbing {
    /// Non-INVITE Completed with Timer J due at `timer_j` (§17.2.2).
    pub(super) fn completed(timer_j: Instant) -> Self {
        Self {
            until: timer_j,
            phase: Phase::Completed,
        }
    }

    /// INVITE Confirmed with Timer I due at `timer_i` (§17.2.1).
    pub(super) fn confirmed(timer_i: Instant) -> Self {
        Self {
            until: timer_i,
            phase: Phase::Confirmed,
        }
    }

    /// INVITE Accepted with Timer L due at `timer_l` (RFC 6026 §7.1).
    pub(super) fn accepted(timer_l: Instant) -> Self {
        Self {
            until: timer_l,
            phase: Phase::Accepted,
        }
    }

    /// The request arrived again. Completed: the final is re-sent (§17.2.2: "the server
    /// transaction MUST pass the final response to the transport layer for
    /// retransmission"). Confirmed, Accepted: absorbed (§17.2.1, RFC 6026 §7.1).
    pub fn handle_request_retransmission(&self) -> Retransmitted {
        match self.phase {
            Phase::Completed => Retransmitted::ResendFinal,
            Phase::Confirmed | Phase::Accepted => Retransmitted::Absorb,
        }
    }

    /// An ACK matched the transaction. Confirmed: a retransmitted ACK, absorbed
    /// (§17.2.1). Accepted: the ACK for a 2xx, passed to the TU (RFC 6026 §7.1). A
    /// non-INVITE transaction has no ACK: [`TransactionError::UnexpectedAck`].
    pub fn handle_ack(&self) -> Result<AckAction, TransactionError> {
        match self.phase {
            Phase::Confirmed => Ok(AckAction::Absorb),
            Phase::Accepted => Ok(AckAction::PassUp),
            Phase::Completed => Err(TransactionError::UnexpectedAck {
                state: State::Completed,
            }),
        }
    }

    /// The TU sends a response with status `status`. Accepted: a further 2xx (the TU's
    /// retransmission or a 2xx of another fork, RFC 6026 §7.1) is `Ok`, for the caller to
    /// send; the transaction keeps nothing of it. Anything else is
    /// [`TransactionError::ResponseNotAllowed`], as in the full machine.
    pub fn send_response(&self, status: u16) -> Result<(), TransactionError> {
        match self.phase {
            Phase::Accepted if (200..300).contains(&status) => Ok(()),
            _ => Err(TransactionError::ResponseNotAllowed {
                state: self.state(),
                status,
            }),
        }
    }

    /// When the transaction ends: Timer J (Completed), I (Confirmed) or L (Accepted).
    pub fn poll_timeout(&self) -> Instant {
        self.until
    }

    /// Whether the timer has ended the transaction at `now` (the caller then drops it).
    pub fn is_over(&self, now: Instant) -> bool {
        self.until <= now
    }

    /// The timer that ends the transaction.
    pub fn timer(&self) -> Timer {
        match self.phase {
            Phase::Completed => Timer::J,
            Phase::Confirmed => Timer::I,
            Phase::Accepted => Timer::L,
        }
    }

    /// The current state's name: Completed, Confirmed or Accepted.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Completed => State::Completed,
            Phase::Confirmed => State::Confirmed,
            Phase::Accepted => State::Accepted,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use sip_testkit::VirtualClock;

    use super::super::{
        AckAction, ServerInvite, ServerNonInvite, State, Timer, TimerConfig, TransactionError,
    };
    use super::Retransmitted;

    /// A completed non-INVITE transaction and its absorbing form answer the same
    /// retransmissions with the same bytes and end at the same instant (Timer J).
    #[test]
    fn completed_non_invite_absorbs_like_the_machine() {
        let t0 = VirtualClock::new().now();
        let cfg = TimerConfig::default();
        let mut full = ServerNonInvite::new(t0, false, &cfg);
        full.send_response(t0, 200, Bytes::from_static(b"200"))
            .unwrap();
        assert_eq!(
            full.poll_transmit().as_deref(),
            Some(&b"200"[..]),
            "first send"
        );
        let mut twin = ServerNonInvite::new(t0, false, &cfg);
        twin.send_response(t0, 200, Bytes::from_static(b"200"))
            .unwrap();
        let twin = twin.into_absorbing();
        assert!(twin.is_err(), "the first send is still queued");
        let mut twin = twin.unwrap_err();
        assert!(twin.poll_transmit().is_some());
        let (absorbing, response) = twin.into_absorbing().expect("drained and completed");
        assert_eq!(absorbing.state(), State::Completed);
        assert_eq!(absorbing.timer(), Timer::J);
        assert_eq!(&response[..], b"200");

        let t1 = t0 + Duration::from_secs(10);
        full.handle_request_retransmission(t1).unwrap();
        assert_eq!(full.poll_transmit().as_deref(), Some(&response[..]));
        assert_eq!(
            absorbing.handle_request_retransmission(),
            Retransmitted::ResendFinal
        );
        assert_eq!(full.poll_timeout(), Some(absorbing.poll_timeout()));
        let j = absorbing.poll_timeout();
        assert_eq!(j, t0 + Duration::from_secs(32), "Timer J = 64*T1");
        let before_j = t0 + Duration::from_millis(31_999);
        assert!(!absorbing.is_over(before_j));
        full.handle_timeout(before_j);
        assert_eq!(full.state(), State::Completed);
        assert!(absorbing.is_over(j));
        full.handle_timeout(j);
        assert!(full.is_terminated());
        assert!(matches!(
            absorbing.handle_ack(),
            Err(TransactionError::UnexpectedAck { .. })
        ));
    }

    /// Only Completed becomes absorbing: Trying and Proceeding still wait for the TU,
    /// and a reliable transport ends the transaction at once (Timer J is zero).
    #[test]
    fn only_a_drained_completed_transaction_is_absorbing() {
        let t0 = VirtualClock::new().now();
        let cfg = TimerConfig::default();
        let tx = ServerNonInvite::new(t0, false, &cfg);
        let mut tx = tx.into_absorbing().expect_err("Trying");
        tx.send_response(t0, 100, Bytes::from_static(b"100"))
            .unwrap();
        let _ = tx.poll_transmit();
        let tx = tx.into_absorbing().expect_err("Proceeding");
        assert_eq!(tx.state(), State::Proceeding);
        let mut tcp = ServerNonInvite::new(t0, true, &cfg);
        tcp.send_response(t0, 200, Bytes::from_static(b"200"))
            .unwrap();
        let _ = tcp.poll_transmit();
        assert!(tcp.into_absorbing().is_err(), "terminated, not absorbing");
    }

    /// An INVITE answered with a non-2xx becomes absorbing once its ACK moved it to
    /// Confirmed: further INVITEs and ACKs are absorbed until Timer I, as in the machine.
    #[test]
    fn confirmed_invite_absorbs_like_the_machine() {
        let t0 = VirtualClock::new().now();
        let cfg = TimerConfig::default();
        let mut tx = ServerInvite::new(t0, false, &cfg);
        tx.send_response(t0, 486, Bytes::from_static(b"486"))
            .unwrap();
        let _ = tx.poll_transmit();
        let mut tx = tx
            .into_absorbing()
            .expect_err("Completed still retransmits");
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(tx.handle_ack(t1), Ok(AckAction::Absorb));
        assert_eq!(tx.state(), State::Confirmed);
        let timer_i = tx.poll_timeout();
        let absorbing = tx.into_absorbing().expect("Confirmed");
        assert_eq!(Some(absorbing.poll_timeout()), timer_i);
        assert_eq!(absorbing.poll_timeout(), t1 + cfg.t4, "Timer I = T4");
        assert_eq!(
            (absorbing.state(), absorbing.timer()),
            (State::Confirmed, Timer::I)
        );
        assert_eq!(absorbing.handle_ack(), Ok(AckAction::Absorb));
        assert_eq!(
            absorbing.handle_request_retransmission(),
            Retransmitted::Absorb
        );
        assert!(absorbing.send_response(200).is_err());
    }

    /// An INVITE answered 2xx is absorbing at once in Accepted: INVITEs absorbed, ACKs
    /// and further 2xx passed, anything else refused, until Timer L, as in the machine.
    #[test]
    fn accepted_invite_absorbs_like_the_machine() {
        let t0 = VirtualClock::new().now();
        let cfg = TimerConfig::default();
        let mut full = ServerInvite::new(t0, false, &cfg);
        full.send_response(t0, 200, Bytes::from_static(b"200"))
            .unwrap();
        let _ = full.poll_transmit();
        let mut twin = ServerInvite::new(t0, false, &cfg);
        twin.send_response(t0, 200, Bytes::from_static(b"200"))
            .unwrap();
        let _ = twin.poll_transmit();
        let absorbing = twin.into_absorbing().expect("Accepted");
        assert_eq!(
            (absorbing.state(), absorbing.timer()),
            (State::Accepted, Timer::L)
        );
        assert_eq!(full.poll_timeout(), Some(absorbing.poll_timeout()));
        assert_eq!(
            absorbing.poll_timeout(),
            t0 + 64 * cfg.t1,
            "Timer L = 64*T1"
        );
        let t1 = t0 + Duration::from_secs(1);
        full.handle_request_retransmission(t1).unwrap();
        assert_eq!(full.poll_transmit(), None);
        assert_eq!(
            absorbing.handle_request_retransmission(),
            Retransmitted::Absorb
        );
        assert_eq!(full.handle_ack(t1), Ok(AckAction::PassUp));
        assert_eq!(absorbing.handle_ack(), Ok(AckAction::PassUp));
        for status in [200, 180, 486] {
            assert_eq!(
                full.send_response(t1, status, Bytes::from_static(b"x"))
                    .is_ok(),
                absorbing.send_response(status).is_ok(),
                "{status}"
            );
        }
    }
}
