//! The INVITE server transaction: RFC 3261 §17.2.1 (Figure 7) as updated by RFC 6026
//! §7.1 and §8.4 (Accepted state, Timer L).
//!
//! ```text
//! Proceeding --300-699 from TU--> Completed --ACK--> Confirmed --Timer I--> Terminated
//!     |                               \--Timer H (Timeout)--> Terminated
//!     \--2xx from TU--> Accepted --Timer L--> Terminated
//! ```
//!
//! The 100 (Trying) that §17.2.1 requires unless the TU answers within 200 ms is the
//! caller's to send through [`ServerInvite::send_response`], like any provisional.

use std::mem;
use std::time::Instant;

use bytes::Bytes;

use super::error::ResponseClass;
use super::timer::{Retransmit, deadline, earliest, linger};
use super::{
    Absorbing, AckAction, Outbox, State, Timer, TimerConfig, TransactionError, TransactionEvent,
    impl_transaction,
};

/// An INVITE server transaction (§17.2.1, RFC 6026 §7.1).
#[derive(Debug)]
pub struct ServerInvite {
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
    Proceeding(Proceeding),
    Completed(Completed),
    Confirmed(Confirmed),
    Accepted(Accepted),
    Terminated,
}

/// The request was passed to the TU; provisional responses are sent, the latest is
/// re-sent on each request retransmission (§17.2.1).
#[derive(Debug)]
struct Proceeding {
    last_provisional: Option<Bytes>,
}

/// A 300–699 final was sent: Timer G retransmits it (unreliable only), Timer H waits
/// for the ACK (§17.2.1).
#[derive(Debug)]
struct Completed {
    response: Bytes,
    timer_g: Option<Retransmit>,
    timer_h: Instant,
}

/// The ACK arrived: further ACKs are absorbed until Timer I (§17.2.1).
#[derive(Debug)]
struct Confirmed {
    timer_i: Instant,
}

/// A 2xx was sent: INVITE retransmissions are absorbed, ACKs and further 2xx from the
/// TU pass through, until Timer L (RFC 6026 §7.1).
#[derive(Debug)]
struct Accepted {
    timer_l: Instant,
}

impl ServerInvite {
    /// Starts the transaction in Proceeding for an INVITE the caller has passed to the
    /// TU (§17.2.1). Nothing is queued: the caller sends 100 (Trying) or a final.
    pub fn new(_now: Instant, reliable: bool, cfg: &TimerConfig) -> Self {
        Self {
            state: Inner::Proceeding(Proceeding {
                last_provisional: None,
            }),
            ctx: Ctx {
                reliable,
                cfg: *cfg,
                outbox: Outbox::default(),
            },
        }
    }

    /// The TU sends a response with status `status` (§17.2.1, RFC 6026 §7.1).
    ///
    /// Proceeding: a provisional is sent and remembered; a 2xx is sent and the
    /// transaction moves to Accepted; a 300–699 is sent and the transaction moves to
    /// Completed. Accepted: further 2xx (the TU's retransmissions, §13.3.1.4, or a
    /// proxy's 2xx from another fork) are sent. Anything else is
    /// [`TransactionError::ResponseNotAllowed`].
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        response: Bytes,
    ) -> Result<(), TransactionError> {
        let class = ResponseClass::of(status)?;
        let ctx = &mut self.ctx;
        let (next, result) = match (mem::replace(&mut self.state, Inner::Terminated), class) {
            (Inner::Proceeding(_), ResponseClass::Provisional) => {
                ctx.outbox.transmit(response.clone());
                (
                    Inner::Proceeding(Proceeding {
                        last_provisional: Some(response),
                    }),
                    Ok(()),
                )
            }
            (Inner::Proceeding(_), ResponseClass::Success) => {
                ctx.outbox.transmit(response);
                let timer_l = deadline(now, Timer::L, ctx.reliable, &ctx.cfg);
                (Inner::Accepted(Accepted { timer_l }), Ok(()))
            }
            (Inner::Proceeding(_), ResponseClass::NonSuccess) => {
                ctx.outbox.transmit(response.clone());
                let completed = Completed {
                    response,
                    timer_g: Retransmit::start(now, Timer::G, ctx.reliable, &ctx.cfg),
                    timer_h: deadline(now, Timer::H, ctx.reliable, &ctx.cfg),
                };
                (Inner::Completed(completed), Ok(()))
            }
            (Inner::Accepted(s), ResponseClass::Success) => {
                ctx.outbox.transmit(response);
                (Inner::Accepted(s), Ok(()))
            }
            (Inner::Terminated, _) => (Inner::Terminated, Err(TransactionError::Terminated)),
            (state @ (Inner::Accepted(_) | Inner::Completed(_) | Inner::Confirmed(_)), _) => {
                let err = TransactionError::ResponseNotAllowed {
                    state: state.name(),
                    status,
                };
                (state, Err(err))
            }
        };
        self.state = next;
        result
    }

    /// Confirmed or Accepted, with everything sent and reported: the transaction from
    /// now on only absorbs INVITE and ACK retransmissions until Timer I (§17.2.1), or
    /// absorbs INVITEs and lets ACKs and the TU's further 2xx pass until Timer L (RFC
    /// 6026 §7.1), which [`Absorbing`] does on its own. In any other state (Proceeding;
    /// Completed still retransmits its final with Timer G and waits for the ACK), or
    /// with a datagram or event not yet polled, the machine comes back unchanged.
    // The machine itself comes back on `Err`, moved, never copied: boxing it would
    // allocate on a path the caller takes for every transaction not yet done.
    #[allow(clippy::result_large_err)]
    pub fn into_absorbing(self) -> Result<Absorbing, Self> {
        match self.state {
            Inner::Confirmed(Confirmed { timer_i }) if self.ctx.outbox.is_drained() => {
                Ok(Absorbing::confirmed(timer_i))
            }
            Inner::Accepted(Accepted { timer_l }) if self.ctx.outbox.is_drained() => {
                Ok(Absorbing::accepted(timer_l))
            }
            state => Err(Self { state, ..self }),
        }
    }

    /// The INVITE arrived again (§17.2.1). Proceeding: the latest provisional is re-sent
    /// (nothing if the TU has sent none yet). Completed: the final is re-sent.
    /// Confirmed and Accepted: absorbed (RFC 6026 §7.1).
    pub fn handle_request_retransmission(&mut self, _now: Instant) -> Result<(), TransactionError> {
        match &self.state {
            Inner::Proceeding(Proceeding {
                last_provisional: Some(response),
            })
            | Inner::Completed(Completed { response, .. }) => {
                self.ctx.outbox.transmit(response.clone());
            }
            Inner::Proceeding(_) | Inner::Confirmed(_) | Inner::Accepted(_) => {}
            Inner::Terminated => return Err(TransactionError::Terminated),
        }
        Ok(())
    }

    /// An ACK matched this transaction (§17.2.1, §17.2.3).
    ///
    /// Completed: the ACK for the non-2xx final; move to Confirmed (Timer I) and absorb.
    /// Confirmed: a retransmitted ACK, absorbed. Accepted: the ACK for a 2xx, passed to
    /// the TU (RFC 6026 §7.1). Proceeding: [`TransactionError::UnexpectedAck`].
    pub fn handle_ack(&mut self, now: Instant) -> Result<AckAction, TransactionError> {
        let ctx = &mut self.ctx;
        let (next, result) = match mem::replace(&mut self.state, Inner::Terminated) {
            Inner::Completed(_) => {
                let next = if let Some(timer_i) = linger(now, Timer::I, ctx.reliable, &ctx.cfg) {
                    Inner::Confirmed(Confirmed { timer_i })
                } else {
                    ctx.outbox.terminate(None);
                    Inner::Terminated
                };
                (next, Ok(AckAction::Absorb))
            }
            state @ Inner::Confirmed(_) => (state, Ok(AckAction::Absorb)),
            state @ Inner::Accepted(_) => (state, Ok(AckAction::PassUp)),
            state @ Inner::Proceeding(_) => (
                state,
                Err(TransactionError::UnexpectedAck {
                    state: State::Proceeding,
                }),
            ),
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
                (Inner::Completed(mut s), Timer::G) => {
                    // §17.2.1: retransmit the final, double Timer G up to T2.
                    ctx.outbox.transmit(s.response.clone());
                    s.timer_g = s
                        .timer_g
                        .map(|g| g.next(ctx.cfg.backoff(Timer::G, g.interval)));
                    Inner::Completed(s)
                }
                (Inner::Completed(_), Timer::H) => {
                    // §17.2.1: the ACK never came; report a transaction failure.
                    ctx.outbox
                        .terminate(Some(TransactionEvent::Timeout(Timer::H)));
                    Inner::Terminated
                }
                (Inner::Confirmed(_), Timer::I) | (Inner::Accepted(_), Timer::L) => {
                    ctx.outbox.terminate(None);
                    Inner::Terminated
                }
                (state, _) => {
                    unreachable!("next_timer returned a timer of another state: {state:?}")
                }
            };
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

    /// The earliest pending timer; `None` in Proceeding (no timer runs) and Terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// The current state's name.
    pub fn state(&self) -> State {
        self.state.name()
    }

    /// Whether the transaction reached Terminated.
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, Inner::Terminated)
    }

    fn next_timer(&self) -> Option<(Instant, Timer)> {
        match &self.state {
            Inner::Completed(s) => Some(earliest(
                s.timer_g.map(|g| (g, Timer::G)),
                (s.timer_h, Timer::H),
            )),
            Inner::Confirmed(s) => Some((s.timer_i, Timer::I)),
            Inner::Accepted(s) => Some((s.timer_l, Timer::L)),
            Inner::Proceeding(_) | Inner::Terminated => None,
        }
    }
}

impl Inner {
    fn name(&self) -> State {
        match self {
            Self::Proceeding(_) => State::Proceeding,
            Self::Completed(_) => State::Completed,
            Self::Confirmed(_) => State::Confirmed,
            Self::Accepted(_) => State::Accepted,
            Self::Terminated => State::Terminated,
        }
    }
}

impl_transaction!(ServerInvite);

#[cfg(test)]
mod tests {
    use super::{AckAction, ServerInvite, State, TimerConfig};
    use bytes::Bytes;
    use sip_testkit::VirtualClock;
    use std::time::Duration;

    #[test]
    fn proceeding_completed_confirmed() {
        let t0 = VirtualClock::new().now();
        let mut tx = ServerInvite::new(t0, false, &TimerConfig::default());
        assert_eq!(
            (tx.state(), tx.poll_timeout(), tx.poll_transmit()),
            (State::Proceeding, None, None)
        );
        tx.send_response(t0, 180, Bytes::from_static(b"180"))
            .unwrap();
        assert_eq!(tx.state(), State::Proceeding);
        tx.send_response(t0, 404, Bytes::from_static(b"404"))
            .unwrap();
        assert_eq!(tx.state(), State::Completed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_millis(500)),
            "Timer G = T1"
        );
        assert_eq!(tx.handle_ack(t0), Ok(AckAction::Absorb));
        assert_eq!(tx.state(), State::Confirmed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(5)),
            "Timer I = T4"
        );
    }

    #[test]
    fn proceeding_accepted() {
        let t0 = VirtualClock::new().now();
        let mut tx = ServerInvite::new(t0, true, &TimerConfig::default());
        tx.send_response(t0, 200, Bytes::from_static(b"200"))
            .unwrap();
        assert_eq!(tx.state(), State::Accepted);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "Timer L = 64*T1"
        );
        assert_eq!(tx.handle_ack(t0), Ok(AckAction::PassUp));
    }
}
