//! Transaction timers as data: RFC 3261 Table 4 (§17, Appendix A) plus RFC 6026 §8.4.
//!
//! | timer | value (unreliable / reliable) | section | meaning |
//! |---|---|---|---|
//! | A | T1, doubling / not used | §17.1.1.2 | INVITE request retransmit interval |
//! | B | 64*T1 | §17.1.1.2 | INVITE transaction timeout |
//! | D | 32 s / 0 | §17.1.1.2 | wait for response retransmits after a non-2xx final |
//! | E | T1, doubling up to T2; T2 in Proceeding / not used | §17.1.2.2 | non-INVITE request retransmit interval |
//! | F | 64*T1 | §17.1.2.2 | non-INVITE transaction timeout |
//! | G | T1, doubling up to T2 / not used | §17.2.1 | INVITE non-2xx final response retransmit interval |
//! | H | 64*T1 | §17.2.1 | wait for ACK |
//! | I | T4 / 0 | §17.2.1 | wait for ACK retransmits |
//! | J | 64*T1 / 0 | §17.2.2 | wait for non-INVITE request retransmits |
//! | K | T4 / 0 | §17.1.2.2 | wait for non-INVITE response retransmits |
//! | L | 64*T1 | RFC 6026 §7.1, §8.4 | wait for INVITE retransmits after a 2xx (Accepted) |
//! | M | 64*T1 | RFC 6026 §7.2, §8.4 | wait for 2xx retransmits and forked 2xx (Accepted) |
//!
//! A zero duration means "fires at once": the machines then move on in the same call
//! instead of arming a timer.

use std::time::{Duration, Instant};

/// The transaction timers of RFC 3261 §17 (Table 4) and RFC 6026 §8.4 (L, M).
/// Timer C belongs to the proxy TU (§16.6), not to the transaction layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
}

/// T1, T2, T4 and Timer D (RFC 3261 §17.1.1.1, Table 4). `Default` gives the RFC's
/// values: T1 = 500 ms (RTT estimate), T2 = 4 s (maximum retransmit interval for
/// non-INVITE requests and INVITE responses), T4 = 5 s (maximum time a message stays in
/// the network), Timer D = 32 s ("at least 32 seconds", §17.1.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    pub timer_d: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
        }
    }
}

impl TimerConfig {
    /// The initial duration of `timer` (RFC 3261 Table 4, RFC 6026 §8.4).
    ///
    /// `None`: the timer is not started on this transport (the retransmission timers A,
    /// E and G on reliable transports, §17.1.1.2, §17.1.2.2, §17.2.1).
    /// `Some(Duration::ZERO)`: D, I, J and K on reliable transports, which fire at once.
    pub fn duration(&self, timer: Timer, reliable: bool) -> Option<Duration> {
        let unreliable_or_zero = |d: Duration| if reliable { Duration::ZERO } else { d };
        match timer {
            Timer::A | Timer::E | Timer::G => (!reliable).then_some(self.t1),
            Timer::B | Timer::F | Timer::H | Timer::L | Timer::M => Some(self.t1 * 64),
            Timer::D => Some(unreliable_or_zero(self.timer_d)),
            Timer::I | Timer::K => Some(unreliable_or_zero(self.t4)),
            Timer::J => Some(unreliable_or_zero(self.t1 * 64)),
        }
    }

    /// The next interval of a retransmission timer that just fired after `interval`.
    ///
    /// Timer A doubles without bound (§17.1.1.2); E and G double up to T2 (§17.1.2.2,
    /// §17.2.1). Timer E in Proceeding is reset to T2 instead: see [`Self::proceeding_e`].
    /// Other timers do not repeat and keep `interval`.
    pub fn backoff(&self, timer: Timer, interval: Duration) -> Duration {
        match timer {
            Timer::A => interval * 2,
            Timer::E | Timer::G => (interval * 2).min(self.t2),
            _ => interval,
        }
    }

    /// Timer E's interval after it fires in the non-INVITE Proceeding state: T2
    /// (§17.1.2.2).
    pub fn proceeding_e(&self) -> Duration {
        self.t2
    }
}

/// A retransmission timer (A, E, G): when it fires next and the interval it was armed
/// with, from which the next interval is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retransmit {
    pub(crate) at: Instant,
    pub(crate) interval: Duration,
}

impl Retransmit {
    /// Arms `timer` at `now` if the transport retransmits at all.
    pub(crate) fn start(
        now: Instant,
        timer: Timer,
        reliable: bool,
        cfg: &TimerConfig,
    ) -> Option<Self> {
        cfg.duration(timer, reliable).map(|interval| Self {
            at: now + interval,
            interval,
        })
    }

    /// The timer after it fired: re-armed from its own deadline (not from the caller's
    /// `now`), so retransmissions happen at exact multiples whatever the caller's lag.
    #[must_use]
    pub(crate) fn next(self, interval: Duration) -> Self {
        Self {
            at: self.at + interval,
            interval,
        }
    }
}

/// The deadline of a one-shot timer started at `now`.
pub(crate) fn deadline(now: Instant, timer: Timer, reliable: bool, cfg: &TimerConfig) -> Instant {
    now + cfg.duration(timer, reliable).unwrap_or(Duration::ZERO)
}

/// The deadline of a timer that is zero on reliable transports (D, I, J, K), or `None`
/// when it is zero and so fires at once: the caller moves to Terminated directly.
pub(crate) fn linger(
    now: Instant,
    timer: Timer,
    reliable: bool,
    cfg: &TimerConfig,
) -> Option<Instant> {
    cfg.duration(timer, reliable)
        .filter(|d| !d.is_zero())
        .map(|d| now + d)
}

/// The earlier of a retransmission timer and a deadline timer; on a tie the deadline
/// wins, so a transaction that ends does not retransmit at its last instant.
pub(crate) fn earliest(
    retransmit: Option<(Retransmit, Timer)>,
    deadline: (Instant, Timer),
) -> (Instant, Timer) {
    match retransmit {
        Some((r, timer)) if r.at < deadline.0 => (r.at, timer),
        _ => deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::{Timer, TimerConfig};
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn table_4_defaults_unreliable() {
        let cfg = TimerConfig::default();
        let d = |t| cfg.duration(t, false).unwrap();
        assert_eq!(d(Timer::A), 500 * MS);
        assert_eq!(d(Timer::E), 500 * MS);
        assert_eq!(d(Timer::G), 500 * MS);
        for t in [Timer::B, Timer::F, Timer::H, Timer::J, Timer::L, Timer::M] {
            assert_eq!(d(t), Duration::from_secs(32), "{t:?} = 64*T1");
        }
        assert_eq!(d(Timer::D), Duration::from_secs(32));
        assert_eq!(d(Timer::I), Duration::from_secs(5));
        assert_eq!(d(Timer::K), Duration::from_secs(5));
    }

    #[test]
    fn reliable_transports_do_not_retransmit_and_do_not_linger() {
        let cfg = TimerConfig::default();
        for t in [Timer::A, Timer::E, Timer::G] {
            assert_eq!(cfg.duration(t, true), None, "{t:?}");
        }
        for t in [Timer::D, Timer::I, Timer::J, Timer::K] {
            assert_eq!(cfg.duration(t, true), Some(Duration::ZERO), "{t:?}");
        }
        for t in [Timer::B, Timer::F, Timer::H, Timer::L, Timer::M] {
            assert_eq!(
                cfg.duration(t, true),
                Some(Duration::from_secs(32)),
                "{t:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_caps_at_t2_except_timer_a() {
        let cfg = TimerConfig::default();
        let mut a = cfg.t1;
        let mut e = cfg.t1;
        let mut seen_e = Vec::new();
        for _ in 0..5 {
            a = cfg.backoff(Timer::A, a);
            e = cfg.backoff(Timer::E, e);
            seen_e.push(e.as_millis());
        }
        assert_eq!(a, 32 * cfg.t1);
        assert_eq!(seen_e, [1000, 2000, 4000, 4000, 4000]);
        assert_eq!(cfg.backoff(Timer::G, 5 * cfg.t1), cfg.t2);
        assert_eq!(cfg.proceeding_e(), cfg.t2);
    }

    #[test]
    fn configurable_t1_scales_the_64_t1_timers() {
        let cfg = TimerConfig {
            t1: 100 * MS,
            ..TimerConfig::default()
        };
        assert_eq!(cfg.duration(Timer::B, false), Some(6400 * MS));
        assert_eq!(cfg.duration(Timer::L, true), Some(6400 * MS));
    }
}
