//! The INVITE client transaction: RFC 3261 §17.1.1 (Figure 5) as updated by RFC 6026
//! §7.2 and §8.4 (Accepted state, Timer M).
//!
//! ```text
//! Calling --1xx--> Proceeding --300-699 (send ACK)--> Completed --Timer D--> Terminated
//!    |  \--------------2xx---------------> Accepted --Timer M--> Terminated
//!    \--Timer B (Timeout)--> Terminated
//! ```

use std::mem;
use std::time::Instant;

use bytes::Bytes;

use super::error::ResponseClass;
use super::timer::{Retransmit, deadline, earliest, linger};
use super::{
    Outbox, ResponseAction, State, Timer, TimerConfig, TransactionError, TransactionEvent,
    impl_transaction,
};

/// An INVITE client transaction (§17.1.1, RFC 6026 §7.2).
#[derive(Debug)]
pub struct ClientInvite {
    state: Inner,
    ctx: Ctx,
}

#[derive(Debug)]
struct Ctx {
    /// The INVITE, while Timer A may retransmit it and the TU may build a CANCEL from
    /// it (Calling, Proceeding); dropped at the final response.
    request: Option<Bytes>,
    reliable: bool,
    cfg: TimerConfig,
    outbox: Outbox,
}

#[derive(Debug)]
enum Inner {
    Calling(Calling),
    Proceeding(Proceeding),
    Completed(Completed),
    Accepted(Accepted),
    Terminated,
}

/// Request sent, nothing heard yet: Timer A retransmits (unreliable only), Timer B
/// gives up (§17.1.1.2).
#[derive(Debug)]
struct Calling {
    timer_a: Option<Retransmit>,
    timer_b: Instant,
}

/// A provisional response arrived: no more retransmissions, no timer (§17.1.1.2).
#[derive(Debug)]
struct Proceeding;

/// A 300–699 final arrived and was acknowledged; its retransmissions are absorbed and
/// re-acknowledged until Timer D (§17.1.1.2, §17.1.1.3).
#[derive(Debug)]
struct Completed {
    status: u16,
    ack: Bytes,
    timer_d: Instant,
}

/// A 2xx arrived: further 2xx (retransmissions, other forks) go to the TU until Timer M
/// (RFC 6026 §7.2).
#[derive(Debug)]
struct Accepted {
    timer_m: Instant,
}

type Step = (Inner, Result<ResponseAction, TransactionError>);

impl ClientInvite {
    /// Starts the transaction in Calling and queues `request` for transmission.
    pub fn new(now: Instant, request: Bytes, reliable: bool, cfg: &TimerConfig) -> Self {
        let mut outbox = Outbox::default();
        outbox.transmit(request.clone());
        let calling = Calling {
            timer_a: Retransmit::start(now, Timer::A, reliable, cfg),
            timer_b: deadline(now, Timer::B, reliable, cfg),
        };
        Self {
            state: Inner::Calling(calling),
            ctx: Ctx {
                request: Some(request),
                reliable,
                cfg: *cfg,
                outbox,
            },
        }
    }

    /// Feeds a response with status `status` matched to this transaction (§17.1.3).
    ///
    /// `ack` builds the ACK for a 300–699 final (§17.1.1.3); it is called at most once,
    /// for the first such response, and the ACK is re-sent for each retransmission of
    /// it. Absorbed (documented): a provisional response after a final one (reordered),
    /// a retransmission of the non-2xx final. A 2xx after a non-2xx final, a different
    /// final, or a non-2xx after a 2xx is [`TransactionError::UnexpectedResponse`].
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        ack: impl FnOnce() -> Bytes,
    ) -> Result<ResponseAction, TransactionError> {
        let class = ResponseClass::of(status)?;
        let ctx = &mut self.ctx;
        let (next, result) = match mem::replace(&mut self.state, Inner::Terminated) {
            Inner::Calling(_) | Inner::Proceeding(_) => ctx.before_final(now, class, status, ack),
            Inner::Completed(s) => s.handle_response(ctx, class, status),
            Inner::Accepted(s) => s.handle_response(class, status),
            Inner::Terminated => (Inner::Terminated, Err(TransactionError::Terminated)),
        };
        if !matches!(next, Inner::Calling(_) | Inner::Proceeding(_)) {
            self.ctx.request = None;
        }
        self.state = next;
        result
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer() {
            if at > now {
                break;
            }
            self.state = match (mem::replace(&mut self.state, Inner::Terminated), timer) {
                (Inner::Calling(mut s), Timer::A) => {
                    // §17.1.1.2: retransmit, double Timer A.
                    if let Some(request) = &self.ctx.request {
                        self.ctx.outbox.transmit(request.clone());
                    }
                    s.timer_a = s
                        .timer_a
                        .map(|a| a.next(self.ctx.cfg.backoff(Timer::A, a.interval)));
                    Inner::Calling(s)
                }
                (Inner::Calling(_), Timer::B) => {
                    self.ctx.request = None;
                    self.ctx
                        .outbox
                        .terminate(Some(TransactionEvent::Timeout(Timer::B)));
                    Inner::Terminated
                }
                (Inner::Completed(_), Timer::D) | (Inner::Accepted(_), Timer::M) => {
                    self.ctx.outbox.terminate(None);
                    Inner::Terminated
                }
                (state, _) => {
                    unreachable!("next_timer returned a timer of another state: {state:?}")
                }
            };
        }
    }

    /// The transport could not send the request or the ACK (§17.1.4): terminate and
    /// report [`TransactionEvent::TransportError`]. Absorbed once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if !matches!(self.state, Inner::Terminated) {
            self.ctx
                .outbox
                .terminate(Some(TransactionEvent::TransportError));
            self.ctx.request = None;
            self.state = Inner::Terminated;
        }
    }

    /// The next datagram (the request, a retransmission of it, or an ACK).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.ctx.outbox.poll_transmit()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.ctx.outbox.poll_event()
    }

    /// The earliest pending timer; `None` in Proceeding (no timer runs) and Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// The current state's name.
    pub fn state(&self) -> State {
        match self.state {
            Inner::Calling(_) => State::Calling,
            Inner::Proceeding(_) => State::Proceeding,
            Inner::Completed(_) => State::Completed,
            Inner::Accepted(_) => State::Accepted,
            Inner::Terminated => State::Terminated,
        }
    }

    /// Whether the transaction reached Terminated.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, Inner::Terminated)
    }

    /// The request this transaction sends (e.g. for the TU to build a CANCEL), until a
    /// final response arrived; `None` after.
    pub fn request(&self) -> Option<&Bytes> {
        self.ctx.request.as_ref()
    }

    fn next_timer(&self) -> Option<(Instant, Timer)> {
        match &self.state {
            Inner::Calling(s) => Some(earliest(
                s.timer_a.map(|a| (a, Timer::A)),
                (s.timer_b, Timer::B),
            )),
            Inner::Completed(s) => Some((s.timer_d, Timer::D)),
            Inner::Accepted(s) => Some((s.timer_m, Timer::M)),
            Inner::Proceeding(_) | Inner::Terminated => None,
        }
    }
}

impl Ctx {
    /// A response in Calling or Proceeding (§17.1.1.2, RFC 6026 §7.2).
    fn before_final(
        &mut self,
        now: Instant,
        class: ResponseClass,
        status: u16,
        ack: impl FnOnce() -> Bytes,
    ) -> Step {
        let next = match class {
            ResponseClass::Provisional => Inner::Proceeding(Proceeding),
            ResponseClass::Success => Inner::Accepted(Accepted {
                timer_m: deadline(now, Timer::M, self.reliable, &self.cfg),
            }),
            ResponseClass::NonSuccess => {
                let ack = ack();
                self.outbox.transmit(ack.clone());
                if let Some(timer_d) = linger(now, Timer::D, self.reliable, &self.cfg) {
                    Inner::Completed(Completed {
                        status,
                        ack,
                        timer_d,
                    })
                } else {
                    self.outbox.terminate(None);
                    Inner::Terminated
                }
            }
        };
        (next, Ok(ResponseAction::PassUp))
    }
}

impl Completed {
    fn handle_response(self, ctx: &mut Ctx, class: ResponseClass, status: u16) -> Step {
        match class {
            // A provisional response overtaken by the final one: nothing to do.
            ResponseClass::Provisional => (Inner::Completed(self), Ok(ResponseAction::Absorb)),
            // §17.1.1.2: a retransmitted final is re-acknowledged, not passed up.
            ResponseClass::NonSuccess if status == self.status => {
                ctx.outbox.transmit(self.ack.clone());
                (Inner::Completed(self), Ok(ResponseAction::Absorb))
            }
            ResponseClass::Success | ResponseClass::NonSuccess => (
                Inner::Completed(self),
                Err(TransactionError::UnexpectedResponse {
                    state: State::Completed,
                    status,
                }),
            ),
        }
    }
}

impl Accepted {
    fn handle_response(self, class: ResponseClass, status: u16) -> Step {
        match class {
            // RFC 6026 §7.2: every 2xx, retransmitted or from another fork, goes up.
            ResponseClass::Success => (Inner::Accepted(self), Ok(ResponseAction::PassUp)),
            // A provisional response overtaken by the 2xx: nothing to do.
            ResponseClass::Provisional => (Inner::Accepted(self), Ok(ResponseAction::Absorb)),
            ResponseClass::NonSuccess => (
                Inner::Accepted(self),
                Err(TransactionError::UnexpectedResponse {
                    state: State::Accepted,
                    status,
                }),
            ),
        }
    }
}

impl_transaction!(ClientInvite);

#[cfg(test)]
mod tests {
    use super::{ClientInvite, ResponseAction, State, TimerConfig};
    use bytes::Bytes;
    use sip_testkit::VirtualClock;
    use std::time::Duration;

    fn ack() -> Bytes {
        Bytes::from_static(b"ACK")
    }

    #[test]
    fn calling_proceeding_accepted() {
        let t0 = VirtualClock::new().now();
        let mut tx = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            false,
            &TimerConfig::default(),
        );
        assert_eq!(tx.poll_transmit().as_deref(), Some(&b"INVITE"[..]));
        assert_eq!(tx.state(), State::Calling);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_millis(500)),
            "Timer A = T1"
        );
        assert_eq!(tx.handle_response(t0, 100, ack), Ok(ResponseAction::PassUp));
        assert_eq!((tx.state(), tx.poll_timeout()), (State::Proceeding, None));
        assert_eq!(
            tx.request().map(|r| &r[..]),
            Some(&b"INVITE"[..]),
            "for a CANCEL"
        );
        assert_eq!(tx.handle_response(t0, 200, ack), Ok(ResponseAction::PassUp));
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(tx.request(), None, "Accepted keeps no request");
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "Timer M = 64*T1"
        );
        assert_eq!(tx.poll_transmit(), None);
    }

    #[test]
    fn calling_straight_to_completed_sends_the_ack() {
        let t0 = VirtualClock::new().now();
        let mut tx = ClientInvite::new(
            t0,
            Bytes::from_static(b"INVITE"),
            false,
            &TimerConfig::default(),
        );
        tx.poll_transmit();
        assert_eq!(tx.handle_response(t0, 503, ack), Ok(ResponseAction::PassUp));
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(tx.request(), None, "Completed keeps only the ACK");
        assert_eq!(tx.poll_transmit(), Some(ack()));
        // §17.1.1.2: a retransmitted final is acknowledged again from the kept ACK.
        assert_eq!(tx.handle_response(t0, 503, ack), Ok(ResponseAction::Absorb));
        assert_eq!(tx.poll_transmit(), Some(ack()));
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "Timer D = 32 s"
        );
    }
}
