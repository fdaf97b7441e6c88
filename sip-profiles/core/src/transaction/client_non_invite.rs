//! The non-INVITE client transaction: RFC 3261 §17.1.2 (Figure 6).
//!
//! ```text
//! Trying --1xx--> Proceeding --200-699--> Completed --Timer K--> Terminated
//!    \--200-699--------------------------^
//! Trying, Proceeding --Timer F (Timeout)--> Terminated
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

/// A non-INVITE client transaction (§17.1.2).
#[derive(Debug)]
pub struct ClientNonInvite {
    state: Inner,
    ctx: Ctx,
}

#[derive(Debug)]
struct Ctx {
    /// The request, while Timer E may retransmit it (Trying, Proceeding); dropped at
    /// the final response (§17.1.2.2: Completed only absorbs).
    request: Option<Bytes>,
    reliable: bool,
    cfg: TimerConfig,
    outbox: Outbox,
}

#[derive(Debug)]
enum Inner {
    Trying(Trying),
    Proceeding(Proceeding),
    Completed(Completed),
    Terminated,
}

/// Request sent: Timer E retransmits with doubling up to T2 (unreliable only), Timer F
/// gives up (§17.1.2.2).
#[derive(Debug)]
struct Trying {
    timer_e: Option<Retransmit>,
    timer_f: Instant,
}

/// A provisional response arrived: Timer E keeps retransmitting, now every T2; Timer F
/// still runs (§17.1.2.2).
#[derive(Debug)]
struct Proceeding {
    timer_e: Option<Retransmit>,
    timer_f: Instant,
}

/// A final response arrived: its retransmissions are absorbed until Timer K
/// (§17.1.2.2).
#[derive(Debug)]
struct Completed {
    status: u16,
    timer_k: Instant,
}

type Step = (Inner, Result<ResponseAction, TransactionError>);

impl ClientNonInvite {
    /// Starts the transaction in Trying and queues `request` for transmission.
    pub fn new(now: Instant, request: Bytes, reliable: bool, cfg: &TimerConfig) -> Self {
        let mut outbox = Outbox::default();
        outbox.transmit(request.clone());
        let trying = Trying {
            timer_e: Retransmit::start(now, Timer::E, reliable, cfg),
            timer_f: deadline(now, Timer::F, reliable, cfg),
        };
        Self {
            state: Inner::Trying(trying),
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
    /// Absorbed (documented): a retransmission of the final response and a provisional
    /// response after it (reordered). A different final response after the first is
    /// [`TransactionError::UnexpectedResponse`].
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
    ) -> Result<ResponseAction, TransactionError> {
        let class = ResponseClass::of(status)?;
        let ctx = &mut self.ctx;
        let (next, result): Step = match mem::replace(&mut self.state, Inner::Terminated) {
            Inner::Trying(Trying { timer_e, timer_f })
            | Inner::Proceeding(Proceeding { timer_e, timer_f }) => match class {
                ResponseClass::Provisional => (
                    Inner::Proceeding(Proceeding { timer_e, timer_f }),
                    Ok(ResponseAction::PassUp),
                ),
                ResponseClass::Success | ResponseClass::NonSuccess => {
                    (ctx.complete(now, status), Ok(ResponseAction::PassUp))
                }
            },
            Inner::Completed(s) => s.handle_response(class, status),
            Inner::Terminated => (Inner::Terminated, Err(TransactionError::Terminated)),
        };
        self.state = next;
        result
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer() {
            if at > now {
                break;
            }
            let ctx = &mut self.ctx;
            self.state = match (mem::replace(&mut self.state, Inner::Terminated), timer) {
                (Inner::Trying(mut s), Timer::E) => {
                    // §17.1.2.2: retransmit, double Timer E up to T2.
                    if let Some(request) = &ctx.request {
                        ctx.outbox.transmit(request.clone());
                    }
                    s.timer_e = s
                        .timer_e
                        .map(|e| e.next(ctx.cfg.backoff(Timer::E, e.interval)));
                    Inner::Trying(s)
                }
                (Inner::Proceeding(mut s), Timer::E) => {
                    // §17.1.2.2: in Proceeding, retransmit and reset Timer E to T2.
                    if let Some(request) = &ctx.request {
                        ctx.outbox.transmit(request.clone());
                    }
                    s.timer_e = s.timer_e.map(|e| e.next(ctx.cfg.proceeding_e()));
                    Inner::Proceeding(s)
                }
                (Inner::Trying(_) | Inner::Proceeding(_), Timer::F) => {
                    ctx.request = None;
                    ctx.outbox
                        .terminate(Some(TransactionEvent::Timeout(Timer::F)));
                    Inner::Terminated
                }
                (Inner::Completed(_), Timer::K) => {
                    ctx.outbox.terminate(None);
                    Inner::Terminated
                }
                (state, _) => {
                    unreachable!("next_timer returned a timer of another state: {state:?}")
                }
            };
        }
    }

    /// The transport could not send the request (§17.1.4): terminate and report
    /// [`TransactionEvent::TransportError`]. Absorbed once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if !matches!(self.state, Inner::Terminated) {
            self.ctx
                .outbox
                .terminate(Some(TransactionEvent::TransportError));
            self.ctx.request = None;
            self.state = Inner::Terminated;
        }
    }

    /// The next datagram (the request or a retransmission of it).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.ctx.outbox.poll_transmit()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.ctx.outbox.poll_event()
    }

    /// The earliest pending timer; `None` once terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// The current state's name.
    pub fn state(&self) -> State {
        match self.state {
            Inner::Trying(_) => State::Trying,
            Inner::Proceeding(_) => State::Proceeding,
            Inner::Completed(_) => State::Completed,
            Inner::Terminated => State::Terminated,
        }
    }

    /// Whether the transaction reached Terminated.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, Inner::Terminated)
    }

    /// The request this transaction sends, until a final response arrived; `None` after.
    pub fn request(&self) -> Option<&Bytes> {
        self.ctx.request.as_ref()
    }

    fn next_timer(&self) -> Option<(Instant, Timer)> {
        match &self.state {
            Inner::Trying(Trying { timer_e, timer_f })
            | Inner::Proceeding(Proceeding { timer_e, timer_f }) => Some(earliest(
                timer_e.map(|e| (e, Timer::E)),
                (*timer_f, Timer::F),
            )),
            Inner::Completed(s) => Some((s.timer_k, Timer::K)),
            Inner::Terminated => None,
        }
    }
}

impl Ctx {
    /// A final response in Trying or Proceeding: Completed with Timer K, or Terminated
    /// at once when K is zero (reliable transports, §17.1.2.2).
    fn complete(&mut self, now: Instant, status: u16) -> Inner {
        self.request = None;
        if let Some(timer_k) = linger(now, Timer::K, self.reliable, &self.cfg) {
            Inner::Completed(Completed { status, timer_k })
        } else {
            self.outbox.terminate(None);
            Inner::Terminated
        }
    }
}

impl Completed {
    fn handle_response(self, class: ResponseClass, status: u16) -> Step {
        match class {
            // A provisional response overtaken by the final one: nothing to do.
            ResponseClass::Provisional => (Inner::Completed(self), Ok(ResponseAction::Absorb)),
            // §17.1.2.2: retransmissions of the final response are absorbed.
            _ if status == self.status => (Inner::Completed(self), Ok(ResponseAction::Absorb)),
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

impl_transaction!(ClientNonInvite);

#[cfg(test)]
mod tests {
    use super::{ClientNonInvite, State, TimerConfig, TransactionEvent};
    use crate::transaction::Timer;
    use bytes::Bytes;
    use sip_testkit::VirtualClock;
    use std::time::Duration;

    #[test]
    fn trying_proceeding_completed() {
        let t0 = VirtualClock::new().now();
        let mut tx = ClientNonInvite::new(
            t0,
            Bytes::from_static(b"OPTIONS"),
            false,
            &TimerConfig::default(),
        );
        assert_eq!(tx.state(), State::Trying);
        tx.handle_response(t0, 180).unwrap();
        assert_eq!(tx.state(), State::Proceeding);
        assert!(tx.request().is_some(), "Proceeding still retransmits");
        tx.handle_response(t0, 200).unwrap();
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(tx.request(), None, "Completed keeps no request");
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(5)),
            "Timer K = T4"
        );
    }

    #[test]
    fn timer_f_wins_a_tie_with_timer_e() {
        // With T2 = T1, Timer E fires every T1 and meets Timer F at 64*T1: the
        // transaction times out without a last retransmission.
        let cfg = TimerConfig {
            t2: Duration::from_millis(500),
            ..TimerConfig::default()
        };
        let t0 = VirtualClock::new().now();
        let mut tx = ClientNonInvite::new(t0, Bytes::from_static(b"OPTIONS"), false, &cfg);
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(std::iter::from_fn(|| tx.poll_transmit()).count(), 64);
        assert_eq!(tx.poll_event(), Some(TransactionEvent::Timeout(Timer::F)));
    }
}
