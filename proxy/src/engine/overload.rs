//! Overload control: when input waits too long before the engine gets it, new work is
//! refused cheaply so that the work already admitted finishes (RFC 6357 §3, §5).
//!
//! The shell measures how long the input the engine is about to handle waited in the
//! kernel's receive queue and passes that number in (`Proxy::handle_load`); the engine
//! decides with two marks (hysteresis): over capacity once the wait has stayed at `high`
//! or above for `sustain` (a scheduling stall of the proxy's thread makes one burst of
//! old datagrams that drains in a few milliseconds; overload keeps the wait up), until
//! it falls to `low` or under. While over, a new out-of-dialog INVITE and a
//! REGISTER are answered 503 Service Unavailable with Retry-After (RFC 3261 §21.5.4,
//! §20.33), statelessly, before digest verification and before any store write. What is
//! never refused here: in-dialog requests (a To tag), ACK, CANCEL, responses, and
//! retransmissions of requests whose server transaction exists (they finish work that
//! was already admitted). docs/architecture.md "Overload" says why the wait, and not
//! the length of the engine's queue, is the signal.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::message::{HeaderName, Message, Method, ResponseBuilder};

use super::Proxy;
use super::tx::{Kind, TxKey};
use crate::route::{Flow, received_via};

/// The To tag of our overload 503s starts with this, so that the ACK of such a 503 is
/// recognised and absorbed without a transaction (RFC 3261 §17.1.1.3: a non-2xx ACK is
/// hop-by-hop). Our transactions' tags are 8 hex digits, so they never start with it.
const TAG_PREFIX: &str = "ovl-";

/// `[overload]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadSettings {
    /// Off: nothing is refused for load.
    pub enabled: bool,
    /// Over capacity once input waits this long before the engine gets it.
    pub high: Duration,
    /// Back under capacity once the wait is this short or shorter.
    pub low: Duration,
    /// How long the wait must stay at `high` or above before the proxy is over capacity.
    pub sustain: Duration,
    /// The Retry-After of the 503 (RFC 3261 §20.33), whole seconds.
    pub retry_after: Duration,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            high: Duration::from_millis(40),
            low: Duration::from_millis(10),
            sustain: Duration::from_millis(100),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// After an episode the admitted share of new work climbs back one step per `sustain`:
/// eighths.
const RAMP_STEPS: u8 = 8;

/// The detector: the last wait the shell reported and the state it put us in.
#[derive(Debug)]
pub(super) struct Overload {
    over: bool,
    /// The wait last reported by the shell.
    waited: Duration,
    /// Since when every reported wait was at `high` or above (while not over).
    high_since: Option<Instant>,
    /// The share of new work admitted, in `RAMP_STEPS`ths: none while over; after an
    /// episode it climbs back a step per `sustain` (from `ramp_at`), so that the work
    /// refused meanwhile does not all come in at once and fill the queue again.
    admit: u8,
    ramp_at: Option<Instant>,
    /// Admission credit while `admit` is short of all: a request is admitted each time
    /// it reaches `RAMP_STEPS` (deterministic, evenly spread).
    credit: u8,
}

impl Default for Overload {
    fn default() -> Self {
        Self {
            over: false,
            waited: Duration::ZERO,
            high_since: None,
            admit: RAMP_STEPS,
            ramp_at: None,
            credit: 0,
        }
    }
}

impl Overload {
    /// A wait reported by the shell; returns whether the state changed.
    fn handle_wait(&mut self, s: &OverloadSettings, now: Instant, waited: Duration) -> bool {
        self.waited = waited;
        let over = if self.over {
            waited > s.low
        } else if s.enabled && waited >= s.high {
            let since = *self.high_since.get_or_insert(now);
            now.saturating_duration_since(since) >= s.sustain
        } else {
            self.high_since = None;
            false
        };
        if over {
            self.high_since = None;
            (self.admit, self.ramp_at) = (0, None);
        } else if self.admit < RAMP_STEPS {
            self.ramp(s, now);
        }
        let changed = over != self.over;
        self.over = over;
        changed
    }

    /// Out of an episode: the admitted share climbs one step per `sustain`.
    fn ramp(&mut self, s: &OverloadSettings, now: Instant) {
        let Some(at) = self.ramp_at else {
            (self.admit, self.ramp_at) = (1, Some(now));
            return;
        };
        let steps = now.saturating_duration_since(at).as_nanos() / s.sustain.as_nanos().max(1);
        if steps > 0 {
            let steps = u8::try_from(steps).unwrap_or(RAMP_STEPS);
            self.admit = self.admit.saturating_add(steps).min(RAMP_STEPS);
            self.ramp_at = (self.admit < RAMP_STEPS).then_some(now);
        }
    }

    /// Whether a new piece of work is refused now: all while over, a share while the
    /// admission climbs back, none after.
    fn refuses(&mut self) -> bool {
        if self.over {
            return true;
        }
        if self.admit >= RAMP_STEPS {
            return false;
        }
        self.credit += self.admit;
        if self.credit >= RAMP_STEPS {
            self.credit -= RAMP_STEPS;
            return false;
        }
        true
    }
}

/// What `/metrics` reports of overload control.
#[derive(Debug, Clone, Copy)]
pub struct OverloadState {
    pub over: bool,
    /// The share of new work admitted, per 1,000 (1,000 but while over or climbing
    /// back after an episode).
    pub admitted_per_mille: u16,
    /// The last input wait the shell reported.
    pub waited: Duration,
}

impl Default for OverloadState {
    fn default() -> Self {
        Self {
            over: false,
            admitted_per_mille: 1000,
            waited: Duration::ZERO,
        }
    }
}

impl Proxy {
    /// How long the input about to be handled waited before the engine got it (the
    /// shell's measure, `sip_net::Engine::handle_load`).
    pub fn handle_load(&mut self, now: Instant, waited: Duration) {
        if self.overload.handle_wait(&self.cfg.overload, now, waited) {
            if self.overload.over {
                self.stats.overload_episodes += 1;
                tracing::warn!(
                    waited_ms = waited.as_millis(),
                    "over capacity: new INVITEs and REGISTERs get 503"
                );
            } else {
                tracing::info!(waited_ms = waited.as_millis(), "back under capacity");
            }
        }
    }

    pub fn overload_state(&self) -> OverloadState {
        OverloadState {
            over: self.overload.over,
            admitted_per_mille: u16::from(self.overload.admit) * 1000 / u16::from(RAMP_STEPS),
            waited: self.overload.waited,
        }
    }

    /// Whether `msg` is new work to refuse now: an out-of-dialog INVITE or a REGISTER
    /// while over capacity, or beyond the admitted share while the proxy climbs back
    /// after an episode. Called once per request, only for requests that match no
    /// server transaction.
    pub(super) fn refuses_for_load(&mut self, method: &Method, msg: &Message) -> bool {
        is_new_work(method, msg) && self.overload.refuses()
    }

    /// The 503 for new work while over capacity, sent without a transaction (as a
    /// stateless proxy would, RFC 3261 §16.11): nothing is kept for it. A retransmission
    /// of the request gets the same tag (it is derived from the request), and the ACK of
    /// an INVITE's 503 is absorbed by [`Proxy::is_overload_ack`].
    pub(super) fn refuse_for_load(&mut self, msg: &Message, flow: Flow) {
        self.stats.overload_refused += 1;
        let mut h = std::hash::DefaultHasher::new();
        msg.header(HeaderName::CallId).hash(&mut h);
        msg.header(HeaderName::From).hash(&mut h);
        let tag = format!("{TAG_PREFIX}{:016x}", h.finish());
        let retry = self.cfg.overload.retry_after.as_secs().max(1).to_string();
        let mut b = ResponseBuilder::new(msg, 503, "Service Unavailable")
            .to_tag(tag.as_bytes())
            .header("Retry-After", retry.as_bytes());
        let via = received_via(msg, flow.remote);
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        let invite = msg.method() == Some(&Method::Invite);
        self.stats.traffic.response(503, invite);
        let dest = super::validate::reply_flow(msg, flow, self.cfg.symmetric_responses);
        self.send(dest, b.to_vec().into());
    }

    /// While over capacity, what overload control answers itself takes a short path
    /// from the parsed header lines, before the validation of every header that
    /// admitted requests get (RFC 6357 §5: refusing has to cost far less than serving):
    /// the ACK of one of our 503s is dropped, a new INVITE or REGISTER refused. `false`
    /// hands the message to the full path: any other message, a request that matches a
    /// transaction (a retransmission) or carries a To tag (in-dialog), and one without
    /// the Via, From, To, Call-ID and CSeq a 503 echoes.
    pub(super) fn refuse_early(&mut self, data: &Bytes, flow: Flow) -> bool {
        const CANDIDATES: [&[u8]; 3] = [b"ACK ", b"INVITE ", b"REGISTER "];
        if !self.overload.over || !CANDIDATES.iter().any(|m| data.starts_with(m)) {
            return false;
        }
        let Ok(msg) = Message::parse(data.clone()) else {
            return false;
        };
        let Some(method) = msg.method().cloned() else {
            return false;
        };
        if method == Method::Ack {
            if Self::is_overload_ack(&msg) {
                self.stats.traffic.request(&method);
                return true;
            }
            return false;
        }
        if !is_new_work(&method, &msg)
            || msg.top_via().is_err()
            || msg.cseq().is_err()
            || [HeaderName::CallId, HeaderName::From, HeaderName::To]
                .into_iter()
                .any(|h| msg.header(h).is_none())
        {
            return false;
        }
        let key = TxKey {
            branch: super::validate::tx_key(&msg, &flow),
            kind: Kind::of(&method),
        };
        if self.server.contains_key(&key) || self.absorbs(&key) {
            return false;
        }
        self.stats.traffic.request(&method);
        self.refuse_for_load(&msg, flow);
        true
    }

    /// The ACK of one of our overload 503s (its To tag is ours): nothing to do.
    pub(super) fn is_overload_ack(msg: &Message) -> bool {
        msg.to_tag()
            .is_some_and(|t| t.starts_with(TAG_PREFIX.as_bytes()))
    }
}

/// New work overload control may refuse: an out-of-dialog INVITE, a REGISTER.
fn is_new_work(method: &Method, msg: &Message) -> bool {
    match method {
        Method::Invite => msg.to_tag().is_none(),
        Method::Register => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn hysteresis_between_the_marks() {
        let s = OverloadSettings {
            high: ms(40),
            low: ms(10),
            sustain: ms(0),
            ..OverloadSettings::default()
        };
        let t = Instant::now();
        let mut o = Overload::default();
        assert!(!o.handle_wait(&s, t, ms(39)));
        assert!(!o.over);
        assert!(o.handle_wait(&s, t, ms(40)));
        assert!(o.over);
        // Between the marks: the state stays what it was.
        assert!(!o.handle_wait(&s, t, ms(20)));
        assert!(o.over);
        assert!(o.handle_wait(&s, t, ms(10)));
        assert!(!o.over);
        assert!(!o.handle_wait(&s, t, ms(20)));
        assert!(!o.over);
    }

    /// A stall's burst (waits that fall back under the mark) is not overload; waits
    /// that stay at the mark for `sustain` are.
    #[test]
    fn only_a_sustained_wait_is_overload() {
        let s = OverloadSettings::default();
        let t = Instant::now();
        let mut o = Overload::default();
        // A 66 ms stall: the backlog drains within 20 ms, the waits fall.
        assert!(!o.handle_wait(&s, t, ms(66)));
        assert!(!o.handle_wait(&s, t + ms(10), ms(45)));
        assert!(!o.handle_wait(&s, t + ms(20), ms(3)));
        assert!(!o.over);
        // A wait that stays up: over once it has been up for `sustain`.
        let t = t + ms(500);
        assert!(!o.handle_wait(&s, t, ms(60)));
        assert!(!o.handle_wait(&s, t + ms(99), ms(120)));
        assert!(o.handle_wait(&s, t + ms(100), ms(150)));
        assert!(o.over);
    }

    #[test]
    fn disabled_never_goes_over() {
        let s = OverloadSettings {
            enabled: false,
            ..OverloadSettings::default()
        };
        let (mut o, t) = (Overload::default(), Instant::now());
        assert!(!o.handle_wait(&s, t, Duration::from_secs(10)));
        assert!(!o.handle_wait(&s, t + Duration::from_secs(1), Duration::from_secs(10)));
        assert!(!o.over);
    }
}
