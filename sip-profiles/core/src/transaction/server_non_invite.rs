//! The non-INVITE server transaction: RFC 3261 §17.2.2 (Figure 8).
//!
//! ```text
//! Trying --1xx from TU--> Proceeding --200-699 from TU--> Completed --Timer J--> Terminated
//!    \--200-699 from TU-----------------------------------^
//! ```

use std::mem;
use std::time::Instant;

use bytes::Bytes;

use super::error::ResponseClass;
use super::timer::linger;
use super::{
    Absorbing, Outbox, State, Timer, TimerConfig, TransactionError, TransactionEvent,
    impl_transaction,
};

/// A non-INVITE server transaction (§17.2.2).
#[derive(Debug)]
pub struct ServerNonInvite {
    state: Inner,
    ctx: Ctx,
}

#[derive(Debug)]
struct Ctx {
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

/// The request was passed to the TU; nothing sent yet, so request retransmissions are
/// discarded (§17.2.2).
#[derive(Debug)]
struct Trying;

/// A provisional was sent; it is re-sent on each request retransmission (§17.2.2).
#[derive(Debug)]
struct Proceeding {
    last_provisional: Bytes,
}

/// The final was sent; it is re-sent on each request retransmission until Timer J
/// (§17.2.2).
#[derive(Debug)]
struct Completed {
    response: Bytes,
    timer_j: Instant,
}

impl ServerNonInvite {
    /// Starts the transaction in Trying for a request the caller has passed to the TU.
    pub fn new(_now: Instant, reliable: bool, cfg: &TimerConfig) -> Self {
        Self {
            state: Inner::Trying(Trying),
            ctx: Ctx {
                reliable,
                cfg: *cfg,
                outbox: Outbox::default(),
            },
        }
    }

    /// The TU sends a response with status `status` (§17.2.2). In Trying or
    /// Proceeding a provisional moves to (or stays in) Proceeding and a final moves to
    /// Completed, or straight to Terminated on reliable transports (Timer J is zero).
    /// In Completed any response is [`TransactionError::ResponseNotAllowed`]: §17.2.2
    /// says the transaction discards it, and the error tells the TU it did.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        response: Bytes,
    ) -> Result<(), TransactionError> {
        let class = ResponseClass::of(status)?;
        let ctx = &mut self.ctx;
        let (next, result) = match mem::replace(&mut self.state, Inner::Terminated) {
            Inner::Trying(_) | Inner::Proceeding(_) => {
                ctx.outbox.transmit(response.clone());
                let next = match class {
                    ResponseClass::Provisional => Inner::Proceeding(Proceeding {
                        last_provisional: response,
                    }),
                    ResponseClass::Success | ResponseClass::NonSuccess => {
                        if let Some(timer_j) = linger(now, Timer::J, ctx.reliable, &ctx.cfg) {
                            Inner::Completed(Completed { response, timer_j })
                        } else {
                            ctx.outbox.terminate(None);
                            Inner::Terminated
                        }
                    }
                };
                (next, Ok(()))
            }
            state @ Inner::Completed(_) => (
                state,
                Err(TransactionError::ResponseNotAllowed {
                    state: State::Completed,
                    status,
                }),
            ),
            Inner::Terminated => (Inner::Terminated, Err(TransactionError::Terminated)),
        };
        self.state = next;
        result
    }

    /// Completed, with everything sent and reported: the transaction from now on only
    /// re-sends its final on each request retransmission until Timer J (§17.2.2), which
    /// [`Absorbing`] and the returned final response do on their own. In any other state,
    /// or with a datagram or event not yet polled, the machine comes back unchanged.
    // The machine itself comes back on `Err`, moved, never copied: boxing it would
    // allocate on a path the caller takes for every transaction not yet done.
    #[allow(clippy::result_large_err)]
    pub fn into_absorbing(self) -> Result<(Absorbing, Bytes), Self> {
        match self.state {
            Inner::Completed(Completed { response, timer_j }) if self.ctx.outbox.is_drained() => {
                Ok((Absorbing::completed(timer_j), response))
            }
            state => Err(Self { state, ..self }),
        }
    }

    /// The request arrived again (§17.2.2). Trying: discarded. Proceeding: the latest
    /// provisional is re-sent. Completed: the final is re-sent.
    pub fn handle_request_retransmission(&mut self, _now: Instant) -> Result<(), TransactionError> {
        match &self.state {
            Inner::Trying(_) => {}
            Inner::Proceeding(Proceeding {
                last_provisional: response,
            })
            | Inner::Completed(Completed { response, .. }) => {
                self.ctx.outbox.transmit(response.clone());
            }
            Inner::Terminated => return Err(TransactionError::Terminated),
        }
        Ok(())
    }

    /// Fires every timer due at or before `now`: Timer J ends Completed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Inner::Completed(s) = &self.state
            && s.timer_j <= now
        {
            self.ctx.outbox.terminate(None);
            self.state = Inner::Terminated;
        }
    }

    /// The transport could not send a response (§17.2.4): terminate and report
    /// [`TransactionEvent::TransportError`]. Absorbed once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if !matches!(self.state, Inner::Terminated) {
            self.ctx
                .outbox
                .terminate(Some(TransactionEvent::TransportError));
            self.state = Inner::Terminated;
        }
    }

    /// The next response to send (first transmission or retransmission).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.ctx.outbox.poll_transmit()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.ctx.outbox.poll_event()
    }

    /// Timer J in Completed; `None` otherwise (a server transaction waits for its TU
    /// without a timer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            Inner::Completed(s) => Some(s.timer_j),
            Inner::Trying(_) | Inner::Proceeding(_) | Inner::Terminated => None,
        }
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
}

impl_transaction!(ServerNonInvite);

#[cfg(test)]
mod tests {
    use super::{ServerNonInvite, State, TimerConfig};
    use bytes::Bytes;
    use sip_testkit::VirtualClock;
    use std::time::Duration;

    #[test]
    fn trying_proceeding_completed() {
        let t0 = VirtualClock::new().now();
        let mut tx = ServerNonInvite::new(t0, false, &TimerConfig::default());
        assert_eq!(tx.state(), State::Trying);
        tx.send_response(t0, 100, Bytes::from_static(b"100"))
            .unwrap();
        assert_eq!(tx.state(), State::Proceeding);
        tx.send_response(t0, 486, Bytes::from_static(b"486"))
            .unwrap();
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "Timer J = 64*T1"
        );
        tx.handle_timeout(t0 + Duration::from_secs(31));
        assert_eq!(tx.state(), State::Completed);
        tx.handle_timeout(t0 + Duration::from_secs(32));
        assert!(tx.is_terminated());
    }
}
