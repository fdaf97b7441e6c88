//! A clock that moves only when told to.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The one real clock read of a test process: every [`VirtualClock::new`] starts here,
/// so instants from different clocks in one test are comparable.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Virtual time for engine tests: `now()` returns the same `Instant` until the test
/// calls [`advance`](Self::advance) or [`advance_to`](Self::advance_to).
#[derive(Debug, Clone)]
pub struct VirtualClock {
    start: Instant,
    now: Instant,
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtualClock {
    /// A clock at the process-wide epoch (an `Instant` captured once).
    pub fn new() -> Self {
        Self::starting_at(epoch())
    }

    /// A clock starting at `start`.
    pub fn starting_at(start: Instant) -> Self {
        Self { start, now: start }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The instant this clock started at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Virtual time elapsed since the start: what tests assert timer instants against.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves the clock forward by `by` and returns the new instant.
    pub fn advance(&mut self, by: Duration) -> Instant {
        self.now += by;
        self.now
    }

    /// Moves the clock to `to`, which must not be in the past: virtual time never goes
    /// backwards, and a test that asks for it has a bug.
    pub fn advance_to(&mut self, to: Instant) -> Instant {
        assert!(
            to >= self.now,
            "virtual time cannot go backwards ({:?} before now)",
            self.now - to
        );
        self.now = to;
        self.now
    }
}

/// The earliest of some optional deadlines, e.g. the `poll_timeout` of several engines
/// and of a [`SimNetwork`](crate::SimNetwork).
pub fn earliest(deadlines: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::{VirtualClock, earliest};
    use std::time::Duration;

    #[test]
    fn advances_only_when_told() {
        let mut clock = VirtualClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_millis(500));
        assert_eq!(clock.elapsed(), Duration::from_millis(500));
        let t = clock.start() + Duration::from_secs(3);
        clock.advance_to(t);
        assert_eq!(clock.now(), t);
        assert_eq!(clock.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn clocks_share_the_epoch() {
        assert_eq!(VirtualClock::new().start(), VirtualClock::default().start());
    }

    #[test]
    #[should_panic(expected = "backwards")]
    fn refuses_to_go_backwards() {
        let mut clock = VirtualClock::new();
        clock.advance(Duration::from_secs(1));
        let past = clock.start();
        clock.advance_to(past);
    }

    #[test]
    fn earliest_skips_none() {
        let clock = VirtualClock::new();
        let a = clock.now() + Duration::from_secs(2);
        let b = clock.now() + Duration::from_secs(1);
        assert_eq!(earliest([Some(a), None, Some(b)]), Some(b));
        assert_eq!(earliest([None, None]), None);
    }
}
